"""What the clients answer: small typed dataclasses, converted from the protobuf messages as
they arrive, so that callers never read wire fields.

Times are timezone-aware ``datetime``s, instance data, task inputs and results are parsed JSON
(``dict``s), and an empty wire string that means "none" is ``None``. Conversions read the
typed fields, never the deprecated ``*_json`` strings (``tasks_json``, ``incidents_json``,
``kind_json``). A message that does not convert (a time that is not RFC 3339, data that is
not JSON) raises :class:`~lockstep.errors.MalformedAnswer`.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Dict, Iterator, Mapping, Optional, Tuple, Union

from ._time import parse_time
from .errors import MalformedAnswer
from .v1 import lockstep_pb2 as pb

# A JSON object as the SDK hands it over: instance data, payloads, task inputs and results.
JsonObject = Dict[str, Any]


@dataclass(frozen=True)
class InstanceKey:
    """Names an instance by its workflow and business key (see :func:`by_key`)."""

    workflow: str
    key: str


# An instance: its id, or its workflow and business key.
InstanceTarget = Union[str, InstanceKey]


def by_key(workflow: str, key: str) -> InstanceKey:
    """Addresses an instance by workflow and business key (a plain ``str`` is an id)."""
    return InstanceKey(workflow, key)


class TimerPolicy(enum.Enum):
    """How a migration re-arms state expiry and SLA timers (task timers are kept)."""

    KEEP_DEADLINE = pb.TIMER_POLICY_KEEP_DEADLINE
    KEEP_REMAINING = pb.TIMER_POLICY_KEEP_REMAINING
    RESTART = pb.TIMER_POLICY_RESTART


@dataclass(frozen=True)
class ReadInfo:
    """How a read was served: ``stale`` when from the node's replica without a quorum check."""

    stale: bool
    node_id: int
    applied_index: int


@dataclass(frozen=True)
class InstanceChange:
    """The result of an applied change."""

    instance_id: str
    version: int
    state: str
    # Global sequence of the audit record written with the change.
    audit_seq: int


@dataclass(frozen=True)
class Sla:
    name: str
    # running, paused or stopped.
    status: str
    breached: bool
    # Highest warning threshold reached, in percent (0 if none).
    warned_percent: int
    remaining_ms: int
    consumed_ms: int


@dataclass(frozen=True)
class Timer:
    """An armed timer. ``kind`` is state_expiry, sla_warning, sla_breach, task_lease or
    task_retry; the other fields are set for the kinds they belong to."""

    id: str
    due_at: datetime
    kind: str
    # state_expiry: the state that expires and the transition its expiry takes.
    state: Optional[str] = None
    transition: Optional[str] = None
    # sla_warning and sla_breach: the SLA; sla_warning: the percent of its budget.
    sla: Optional[str] = None
    percent: Optional[int] = None
    # task_lease and task_retry: the task and its attempt.
    task_id: Optional[str] = None
    attempt: Optional[int] = None


@dataclass(frozen=True)
class LeaseToken:
    """The fencing token of a lease: the Raft term it was granted in and the attempt."""

    term: int
    attempt: int


@dataclass(frozen=True)
class Task:
    """A task of an instance: created by a transition's ``task`` effect, leased by workers."""

    id: str
    queue: str
    task_type: str
    # The transition whose effect created the task.
    origin: str
    # ready, leased, backoff, completed or exhausted.
    status: str
    # Attempts started so far (0 before the first lease).
    attempt: int
    timeout_ms: int
    input: Any
    created_version: int
    created_effect: int
    # The lease, while leased: its token, the worker holding it and its expiry.
    lease: Optional[LeaseToken] = None
    worker: Optional[str] = None
    lease_expires_at: Optional[datetime] = None
    first_attempt_at: Optional[datetime] = None
    on_complete: Optional[str] = None
    on_exhausted: Optional[str] = None
    last_error: Optional[str] = None
    # Once completed, the worker's result.
    result: Any = None


@dataclass(frozen=True)
class Incident:
    """Something that needs an operator: a task whose retries are exhausted with no path out."""

    id: str
    reason: str
    opened_at: datetime
    task_id: Optional[str] = None
    resolved_at: Optional[datetime] = None

    @property
    def open(self) -> bool:
        return self.resolved_at is None


@dataclass(frozen=True)
class Instance:
    """An instance as read, with how the read was served (``read``)."""

    id: str
    workflow: str
    definition_version: str
    key: Optional[str]
    state: str
    data: JsonObject
    created_by: str
    created_at: datetime
    entered_at: datetime
    updated_at: datetime
    version: int
    slas: Mapping[str, Sla]
    timers: Tuple[Timer, ...]
    tasks: Tuple[Task, ...]
    incidents: Tuple[Incident, ...]
    read: Optional[ReadInfo] = None

    def task(self, task_id: str) -> Optional[Task]:
        return next((t for t in self.tasks if t.id == task_id), None)

    def open_incidents(self) -> Iterator[Incident]:
        return (i for i in self.incidents if i.open)


@dataclass(frozen=True)
class InstancePage:
    instances: Tuple[Instance, ...]
    # None on the last page.
    next_page_token: Optional[str]
    read: ReadInfo
    # How many instances match, from the counts the cluster keeps; None when the filters
    # combine more than one of state, SLA status and incidents, use updated_since, or the
    # cluster's log format is older than 4.
    total: Optional[int] = None
    # With ``where`` conditions: the workflow's versions that do not index every filtered
    # field, whose instances this page cannot include (migrate them to one that does).
    uncovered_versions: Tuple[str, ...] = ()


@dataclass(frozen=True)
class Action:
    """A transition the caller may take now, or once its ``not_before`` gate opens."""

    transition: str
    # The state it leads to.
    to_state: str
    # None: available now; otherwise when its gate opens (its guard is decided when taken).
    opens_at: Optional[datetime]
    # Its allow or guard reads the payload: only an attempt with a payload can decide it.
    depends_on_payload: bool

    @property
    def available_now(self) -> bool:
        return self.opens_at is None


@dataclass(frozen=True)
class InstanceActions:
    """What the caller may do with one instance now (``Instances/Actions``)."""

    instance_id: str
    workflow: str
    state: str
    version: int
    actions: Tuple[Action, ...]
    # The cluster time the actions were decided at.
    at: datetime
    read: ReadInfo


@dataclass(frozen=True)
class InboxItem:
    """An instance on which the caller has at least one action."""

    instance_id: str
    workflow: str
    key: Optional[str]
    state: str
    version: int
    updated_at: datetime
    actions: Tuple[Action, ...]


@dataclass(frozen=True)
class InboxPage:
    """One page of the caller's inbox (``Instances/Inbox``)."""

    items: Tuple[InboxItem, ...]
    # None when every named workflow and state was read to the end.
    next_page_token: Optional[str]
    # The scan stopped at the server's bound before the page was full: ask again with
    # next_page_token for more.
    truncated: bool
    # Instances read to answer.
    scanned: int
    at: datetime
    read: ReadInfo


@dataclass(frozen=True)
class Actor:
    """Who made a change, as recorded: id, kind, roles and how it was authenticated."""

    id: str
    kind: str
    roles: Tuple[str, ...]
    authn: str


@dataclass(frozen=True)
class PredicateTrace:
    # allow, guard, create.allow or sla.<name>.when.
    role: str
    expression: str
    result: bool


@dataclass(frozen=True)
class TimerFiring:
    timer_id: str
    due_at: datetime
    fired_at: datetime
    lateness_ms: int


@dataclass(frozen=True)
class AuditRecord:
    """A stored audit record: what happened, where it sits in the hash chains and the Raft log,
    and its complete canonical JSON (``record_json``, what the chain hashes cover)."""

    global_seq: int
    instance_seq: int
    raft_term: int
    raft_index: int
    # created, transition, timer_fired, task_completed, task_failed, ...
    kind: str
    workflow: str
    actor: Actor
    at: datetime
    prev_hash: str
    hash: str
    record_json: str
    # The instance version after the change (0 for records of no instance).
    instance_version: int
    predicates: Tuple[PredicateTrace, ...] = ()
    instance_id: Optional[str] = None
    definition_version: Optional[str] = None
    transition: Optional[str] = None
    from_state: Optional[str] = None
    to_state: Optional[str] = None
    payload_digest: Optional[str] = None
    timer: Optional[TimerFiring] = None
    task_id: Optional[str] = None
    sla: Optional[str] = None
    note: Optional[str] = None
    # With ``history(..., commands=True)``: the command that made the record, as the cluster's
    # command journal keeps it (payloads, creation data and token claims; log format 5 on).
    journal: Optional[JsonObject] = None

    @property
    def record(self) -> JsonObject:
        """``record_json`` parsed."""
        value: JsonObject = json.loads(self.record_json)
        return value


@dataclass(frozen=True)
class Provenance:
    """Where a definition came from (repository, commit, path)."""

    repository: str = ""
    commit: str = ""
    path: str = ""


@dataclass(frozen=True)
class Definition:
    workflow: str
    # The SHA-256 of the definition's canonical form.
    version: str
    source: str
    provenance: Provenance
    applied_by: str
    applied_at: datetime


@dataclass(frozen=True)
class WorkflowSummary:
    """A workflow and its latest definition version (``Definitions/List``; ``source`` is empty)."""

    workflow: str
    latest: Definition
    # How many versions of the workflow were applied.
    versions: int


@dataclass(frozen=True)
class WorkflowPage:
    """One page of the workflows that have a definition, by name."""

    workflows: Tuple[WorkflowSummary, ...]
    # None on the last page.
    next_page_token: Optional[str]


@dataclass(frozen=True)
class AppliedDefinition:
    workflow: str
    version: str
    # False when this exact version was applied before.
    created: bool


@dataclass(frozen=True)
class MigratedInstance:
    instance_id: str
    from_state: str
    to_state: str
    version: int
    audit_seq: int


@dataclass(frozen=True)
class MigrationBatch:
    instances: Tuple[MigratedInstance, ...]
    migrated: int
    # With all=True: more instances may remain; call again with next_page_token.
    more: bool
    next_page_token: Optional[str]
    from_version: str
    to_version: str


@dataclass(frozen=True)
class TaskLease:
    """A task held by a worker, named by its instance and id, with the lease token."""

    instance_id: str
    task_id: str
    token: LeaseToken
    # The W3C trace the task was created in (set by a poll): the client sends it as
    # ``traceparent`` with the lease's heartbeats, completion, failure and release.
    traceparent: Optional[str] = None


@dataclass(frozen=True)
class LeasedTask:
    """A task a poll leased to this worker."""

    lease: TaskLease
    workflow: str
    queue: str
    task_type: str
    input: Any
    # Cluster time after which the lease expires unless extended by a heartbeat.
    lease_expires_at: datetime
    # The transition whose effect created the task.
    origin: str


@dataclass(frozen=True)
class Heartbeat:
    lease_expires_at: datetime
    audit_seq: int


@dataclass(frozen=True)
class AuditVerification:
    """A node's recomputation of the global and per-instance hash chains."""

    ok: bool
    records_checked: int
    head_seq: int
    head_hash: str
    # The first broken record and why, when not ok.
    broken_seq: Optional[int] = None
    reason: Optional[str] = None
    # The requested at_seq and the chain hash there (None beyond the head or when broken).
    at_seq: int = 0
    at_hash: Optional[str] = None


@dataclass(frozen=True)
class SecurityEvent:
    """A refused attempt a node saw."""

    seq: int
    # The node's wall clock.
    at: datetime
    # authentication, authorization, engine, peer or tls.
    kind: str
    method: str
    code: str
    reason: str
    actor: Optional[str] = None
    remote: Optional[str] = None


@dataclass(frozen=True)
class SecurityLog:
    events: Tuple[SecurityEvent, ...]
    # Entries the node recorded since it started, including those no longer kept.
    total: int
    node_id: int
    capacity: int


@dataclass(frozen=True)
class Member:
    id: int
    addr: str
    voter: bool


@dataclass(frozen=True)
class ClusterStatus:
    """One node's view of the cluster."""

    node_id: int
    term: int
    last_log_index: int
    applied_index: int
    snapshot_index: int
    # Leader, Follower, Candidate or Learner.
    role: str
    members: Tuple[Member, ...]
    data_dir_free_bytes: int
    store_bytes: int
    # The replicated log format the node applied, and the highest its build reads (the
    # cluster-version gate raises the first once every member's second reaches it).
    log_format: int = 0
    log_format_readable: int = 0
    # None when no leader is known.
    leader_id: Optional[int] = None
    leader_addr: Optional[str] = None
    # SHA-256 over the state families at applied_index, when asked for.
    digest: Optional[str] = None
    cluster_time: Optional[datetime] = None
    # Why this node refuses client writes for lack of disk space, if it does.
    space_alarm: Optional[str] = None

    @property
    def is_leader(self) -> bool:
        return self.leader_id is not None and self.leader_id == self.node_id


@dataclass(frozen=True)
class Subscription:
    """A webhook subscription: the leader POSTs each audit record that matches its filter to
    ``url``, in global sequence order and at least once, signed with the secret the nodes hold
    under the name ``secret`` (Standard Webhooks headers)."""

    name: str
    url: str
    # The filter: empty tuples match everything; the three combine with "and".
    workflows: Tuple[str, ...]
    # Record kinds (created, transition, timer, task, incident, ...).
    kinds: Tuple[str, ...]
    # ``emit`` event names: only records whose change emitted one.
    events: Tuple[str, ...]
    # The name of the signing secret each node reads from its --webhooks file (not the secret).
    secret: str
    # The last global audit sequence delivered or filtered out.
    cursor: int
    # The answering node's audit head when it answered.
    audit_head: int
    # Records not delivered yet: audit_head - cursor, never negative.
    lag: int
    paused: bool
    # Set while paused: who paused it, why and when (None otherwise).
    paused_by: Optional[str]
    paused_reason: Optional[str]
    paused_at: Optional[datetime]
    # The last delivery failure, if any (a resume clears it).
    last_error: Optional[str]
    created_by: str
    created_at: datetime


@dataclass(frozen=True)
class ScheduleTick:
    """A tick of a schedule: the instant, and the local time it fires at."""

    at: datetime
    # The local date and time in the schedule's zone, e.g. 2027-01-01T09:00:00.
    local: str


@dataclass(frozen=True)
class Schedule:
    """A schedule: the cluster creates an instance of ``workflow`` at each tick of ``cron``
    read in ``time_zone``, once per tick even across a leader failover."""

    name: str
    cron: str
    # The expression in words, e.g. "At 09:00 on Monday".
    description: str
    time_zone: str
    calendar: Optional[str]
    workflow: str
    # The data template (strings may hold {tick}, {date}, {year}, {quarter}, ...).
    data: Mapping[str, Any]
    key: Optional[str]
    overlap: str
    catch_up: str
    catch_up_max: int
    catch_up_window: timedelta
    # None once the expression matches no later time.
    next: Optional[ScheduleTick]
    last: Optional[ScheduleTick]
    last_acted_at: Optional[datetime]
    # created, refused or skipped (None before the first tick).
    last_outcome: Optional[str]
    # The created instance, the refusal code and message, or why the tick was skipped.
    last_detail: Optional[str]
    fired: int
    skipped: int
    refused: int
    paused: bool
    paused_by: Optional[str]
    paused_reason: Optional[str]
    paused_at: Optional[datetime]
    created_by: str
    created_at: datetime


# Conversions from the wire. Each raises MalformedAnswer for what does not convert.


def _none(text: str) -> Optional[str]:
    return text or None


def _time(what: str, text: str) -> datetime:
    try:
        return parse_time(text)
    except ValueError as error:
        raise MalformedAnswer(f"the node sent a malformed {what}: {error}; is this SDK as new as the cluster?") from None


def _maybe_time(what: str, text: str) -> Optional[datetime]:
    return _time(what, text) if text else None


def _json(what: str, text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as error:
        raise MalformedAnswer(f"the node sent {what} that is not JSON: {error}") from None


def _object(what: str, text: str) -> JsonObject:
    value = _json(what, text) if text else {}
    if not isinstance(value, dict):
        raise MalformedAnswer(f"the node sent {what} that is not a JSON object: {text[:80]!r}")
    return value


def read_info(m: pb.ReadInfo) -> ReadInfo:
    return ReadInfo(stale=m.stale, node_id=m.node_id, applied_index=m.applied_index)


def instance_change(m: pb.InstanceChange) -> InstanceChange:
    return InstanceChange(
        instance_id=m.instance_id, version=m.version, state=m.state, audit_seq=m.audit_seq
    )


def timer(m: pb.Timer) -> Timer:
    kind = m.kind
    return Timer(
        id=m.id,
        due_at=_time("timer due_at", m.due_at),
        kind=kind,
        state=_none(m.state),
        transition=_none(m.transition),
        sla=_none(m.sla),
        percent=m.percent if kind == "sla_warning" else None,
        task_id=_none(m.task_id),
        attempt=m.attempt if kind in ("task_lease", "task_retry") else None,
    )


def task(m: pb.Task) -> Task:
    return Task(
        id=m.id,
        queue=m.queue,
        task_type=m.task_type,
        origin=m.origin,
        status=m.status,
        attempt=m.attempt,
        timeout_ms=m.timeout_ms,
        input=_json("a task input", m.input_json) if m.input_json else None,
        created_version=m.created_version,
        created_effect=m.created_effect,
        lease=LeaseToken(m.lease.term, m.lease.attempt) if m.HasField("lease") else None,
        worker=_none(m.worker),
        lease_expires_at=_maybe_time("task lease_expires_at", m.lease_expires_at),
        first_attempt_at=_maybe_time("task first_attempt_at", m.first_attempt_at),
        on_complete=_none(m.on_complete),
        on_exhausted=_none(m.on_exhausted),
        last_error=_none(m.last_error),
        result=_json("a task result", m.result_json) if m.result_json else None,
    )


def incident(m: pb.Incident) -> Incident:
    return Incident(
        id=m.id,
        reason=m.reason,
        opened_at=_time("incident opened_at", m.opened_at),
        task_id=_none(m.task_id),
        resolved_at=_maybe_time("incident resolved_at", m.resolved_at),
    )


def sla(m: pb.Sla) -> Sla:
    return Sla(
        name=m.name,
        status=m.status,
        breached=m.breached,
        warned_percent=m.warned_percent,
        remaining_ms=m.remaining_ms,
        consumed_ms=m.consumed_ms,
    )


def instance(m: pb.Instance, read: Optional[ReadInfo]) -> Instance:
    return Instance(
        id=m.id,
        workflow=m.workflow,
        definition_version=m.definition_version,
        key=_none(m.key),
        state=m.state,
        data=_object("instance data", m.data_json),
        created_by=m.created_by,
        created_at=_time("instance created_at", m.created_at),
        entered_at=_time("instance entered_at", m.entered_at),
        updated_at=_time("instance updated_at", m.updated_at),
        version=m.version,
        slas={s.name: sla(s) for s in m.slas},
        timers=tuple(timer(t) for t in m.timers),
        tasks=tuple(task(t) for t in m.tasks),
        incidents=tuple(incident(i) for i in m.incidents),
        read=read,
    )


def instance_page(m: pb.ListInstancesResponse) -> InstancePage:
    read = read_info(m.read)
    return InstancePage(
        instances=tuple(instance(i, read) for i in m.instances),
        next_page_token=_none(m.next_page_token),
        read=read,
        total=m.total if m.HasField("total") else None,
        uncovered_versions=tuple(m.uncovered_versions),
    )


def action(m: pb.Action) -> Action:
    return Action(
        transition=m.transition,
        to_state=m.to,
        opens_at=_maybe_time("action opens_at", m.opens_at),
        depends_on_payload=m.depends_on_payload,
    )


def instance_actions(m: pb.ActionsResponse) -> InstanceActions:
    return InstanceActions(
        instance_id=m.instance_id,
        workflow=m.workflow,
        state=m.state,
        version=m.version,
        actions=tuple(action(a) for a in m.actions),
        at=_time("actions time", m.at),
        read=read_info(m.read),
    )


def inbox_page(m: pb.InboxResponse) -> InboxPage:
    return InboxPage(
        items=tuple(
            InboxItem(
                instance_id=i.instance_id,
                workflow=i.workflow,
                key=_none(i.key),
                state=i.state,
                version=i.version,
                updated_at=_time("inbox item updated_at", i.updated_at),
                actions=tuple(action(a) for a in i.actions),
            )
            for i in m.items
        ),
        next_page_token=_none(m.next_page_token),
        truncated=m.truncated,
        scanned=m.scanned,
        at=_time("inbox time", m.at),
        read=read_info(m.read),
    )


def audit_record(m: pb.AuditRecord) -> AuditRecord:
    return AuditRecord(
        global_seq=m.global_seq,
        instance_seq=m.instance_seq,
        raft_term=m.raft_term,
        raft_index=m.raft_index,
        kind=m.kind,
        workflow=m.workflow,
        actor=Actor(m.actor_id, m.actor_kind, tuple(m.actor_roles), m.actor_authn),
        at=_time("audit record time", m.at),
        prev_hash=m.prev_hash,
        hash=m.hash,
        record_json=m.record_json,
        instance_version=m.instance_version,
        predicates=tuple(PredicateTrace(p.role, p.expression, p.result) for p in m.predicates),
        instance_id=_none(m.instance_id),
        definition_version=_none(m.definition_version),
        transition=_none(m.transition),
        from_state=_none(getattr(m, "from")),
        to_state=_none(m.to),
        payload_digest=_none(m.payload_digest),
        timer=(
            TimerFiring(
                timer_id=m.timer.timer_id,
                due_at=_time("timer firing due_at", m.timer.due_at),
                fired_at=_time("timer firing fired_at", m.timer.fired_at),
                lateness_ms=m.timer.lateness_ms,
            )
            if m.HasField("timer")
            else None
        ),
        task_id=_none(m.task_id),
        sla=_none(m.sla),
        note=_none(m.note),
        journal=_object("a journal entry", m.journal_json) if m.journal_json else None,
    )


def provenance(m: pb.Provenance) -> Provenance:
    return Provenance(repository=m.repository, commit=m.commit, path=m.path)


def definition(m: pb.Definition) -> Definition:
    return Definition(
        workflow=m.workflow,
        version=m.version,
        source=m.source,
        provenance=provenance(m.provenance),
        applied_by=m.applied_by,
        applied_at=_time("definition applied_at", m.applied_at),
    )


def workflow_page(m: pb.ListDefinitionsResponse) -> WorkflowPage:
    return WorkflowPage(
        workflows=tuple(
            WorkflowSummary(workflow=w.workflow, latest=definition(w.latest), versions=w.versions)
            for w in m.workflows
        ),
        next_page_token=_none(m.next_page_token),
    )


def applied_definition(m: pb.ApplyDefinitionResponse) -> AppliedDefinition:
    return AppliedDefinition(workflow=m.workflow, version=m.version, created=m.created)


def migration_batch(m: pb.MigrateInstancesResponse) -> MigrationBatch:
    return MigrationBatch(
        instances=tuple(
            MigratedInstance(i.instance_id, i.from_state, i.to_state, i.version, i.audit_seq)
            for i in m.instances
        ),
        migrated=m.migrated,
        more=m.more,
        next_page_token=_none(m.next_page_token),
        from_version=m.from_version,
        to_version=m.to_version,
    )


def leased_task(m: pb.LeasedTask) -> LeasedTask:
    lease = m.lease
    return LeasedTask(
        lease=TaskLease(
            instance_id=lease.instance_id,
            task_id=lease.task_id,
            token=LeaseToken(lease.token.term, lease.token.attempt),
            traceparent=m.traceparent or None,
        ),
        workflow=m.workflow,
        queue=m.queue,
        task_type=m.task_type,
        input=_json("a task input", m.input_json) if m.input_json else None,
        lease_expires_at=_time("lease_expires_at", m.lease_expires_at),
        origin=m.origin,
    )


def heartbeat(m: pb.HeartbeatTaskResponse) -> Heartbeat:
    return Heartbeat(
        lease_expires_at=_time("lease_expires_at", m.lease_expires_at), audit_seq=m.audit_seq
    )


def audit_verification(m: pb.VerifyAuditResponse) -> AuditVerification:
    return AuditVerification(
        ok=m.ok,
        records_checked=m.records_checked,
        head_seq=m.head_seq,
        head_hash=m.head_hash,
        broken_seq=None if m.ok else m.broken_seq,
        reason=_none(m.reason),
        at_seq=m.at_seq,
        at_hash=_none(m.at_hash),
    )


def security_log(m: pb.SecurityLogResponse) -> SecurityLog:
    return SecurityLog(
        events=tuple(
            SecurityEvent(
                seq=e.seq,
                at=_time("security event time", e.at),
                kind=e.kind,
                method=e.method,
                code=e.code,
                reason=e.reason,
                actor=_none(e.actor),
                remote=_none(e.remote),
            )
            for e in m.events
        ),
        total=m.total,
        node_id=m.node_id,
        capacity=m.capacity,
    )


def cluster_status(m: pb.ClusterStatus) -> ClusterStatus:
    return ClusterStatus(
        node_id=m.node_id,
        term=m.term,
        last_log_index=m.last_log_index,
        applied_index=m.applied_index,
        snapshot_index=m.snapshot_index,
        role=m.role,
        members=tuple(Member(x.id, x.addr, x.voter) for x in m.members),
        data_dir_free_bytes=m.data_dir_free_bytes,
        store_bytes=m.store_bytes,
        log_format=m.log_format,
        log_format_readable=m.log_format_readable,
        leader_id=m.leader_id or None,
        leader_addr=_none(m.leader_addr),
        digest=_none(m.digest),
        cluster_time=_maybe_time("cluster_time", m.cluster_time),
        space_alarm=_none(m.space_alarm),
    )


def subscription(m: pb.Subscription) -> Subscription:
    return Subscription(
        name=m.name,
        url=m.url,
        workflows=tuple(m.filter.workflows),
        kinds=tuple(m.filter.kinds),
        events=tuple(m.filter.events),
        secret=m.secret,
        cursor=m.cursor,
        audit_head=m.audit_head,
        lag=max(0, m.audit_head - m.cursor),
        paused=m.paused,
        paused_by=_none(m.paused_by),
        paused_reason=_none(m.paused_reason),
        paused_at=_maybe_time("subscription paused_at", m.paused_at),
        last_error=_none(m.last_error),
        created_by=m.created_by,
        created_at=_time("subscription created_at", m.created_at),
    )


def _tick(what: str, m: pb.ScheduleTick) -> ScheduleTick:
    return ScheduleTick(at=_time(what, m.at), local=m.local)


def schedule(m: pb.Schedule) -> Schedule:
    data = _object("schedule data", m.data_json)
    return Schedule(
        name=m.name,
        cron=m.cron,
        description=m.description,
        time_zone=m.time_zone,
        calendar=_none(m.calendar),
        workflow=m.workflow,
        data=data,
        key=_none(m.key),
        overlap=m.overlap,
        catch_up=m.catch_up,
        catch_up_max=m.catch_up_max,
        catch_up_window=timedelta(milliseconds=m.catch_up_window_ms),
        next=_tick("schedule next", m.next) if m.HasField("next") else None,
        last=_tick("schedule last", m.last) if m.HasField("last") else None,
        last_acted_at=_maybe_time("schedule last_acted_at", m.last_acted_at),
        last_outcome=_none(m.last_outcome),
        last_detail=_none(m.last_detail),
        fired=m.fired,
        skipped=m.skipped,
        refused=m.refused,
        paused=m.paused,
        paused_by=_none(m.paused_by),
        paused_reason=_none(m.paused_reason),
        paused_at=_maybe_time("schedule paused_at", m.paused_at),
        created_by=m.created_by,
        created_at=_time("schedule created_at", m.created_at),
    )


# Requests: the parts both clients build the same way.


def instance_ref(target: InstanceTarget) -> pb.InstanceRef:
    if isinstance(target, InstanceKey):
        return pb.InstanceRef(key=pb.BusinessKey(workflow=target.workflow, key=target.key))
    if not target:
        raise ValueError("an instance id is empty: pass an id or by_key(workflow, key)")
    return pb.InstanceRef(id=target)


def consistency(stale: bool) -> pb.ReadConsistency.ValueType:
    return pb.READ_CONSISTENCY_STALE if stale else pb.READ_CONSISTENCY_LINEARIZABLE


def to_json(value: Optional[Mapping[str, Any]]) -> str:
    """A payload, data or result as the wire's JSON text ("" for none)."""
    if value is None:
        return ""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def lease_message(lease: TaskLease) -> pb.TaskLease:
    return pb.TaskLease(
        instance_id=lease.instance_id,
        task_id=lease.task_id,
        token=pb.LeaseToken(term=lease.token.term, attempt=lease.token.attempt),
    )


__all__ = [
    "Action",
    "Actor",
    "AppliedDefinition",
    "AuditRecord",
    "AuditVerification",
    "ClusterStatus",
    "Definition",
    "Heartbeat",
    "InboxItem",
    "InboxPage",
    "Incident",
    "Instance",
    "InstanceActions",
    "InstanceChange",
    "InstanceKey",
    "InstancePage",
    "InstanceTarget",
    "JsonObject",
    "LeaseToken",
    "LeasedTask",
    "Member",
    "MigratedInstance",
    "MigrationBatch",
    "PredicateTrace",
    "Provenance",
    "ReadInfo",
    "SecurityEvent",
    "SecurityLog",
    "Sla",
    "Subscription",
    "Task",
    "TaskLease",
    "Timer",
    "TimerFiring",
    "TimerPolicy",
    "by_key",
]
