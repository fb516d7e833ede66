"""The synchronous client.

It connects to a list of endpoints, sends each call to the node it believes leads (learned
from NOT_LEADER answers and from the ``x-lockstep-leader`` header a follower puts on a write
it forwarded), and retries calls that may not have happened with capped, jittered backoff and
the *same* request id, so a retried write is applied at most once. Refusals raise
:class:`~lockstep.errors.Refused` subclasses; answers are the dataclasses of
:mod:`lockstep.models`.

Every write takes an optional ``request_id``; without one the client makes a UUID v4 and
reuses it on every retry. Pass your own to retry a write across restarts of your program
(an :class:`~lockstep.errors.Unavailable` names the id it used).
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Callable, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Type, TypeVar

import grpc

from . import _requests as rq
from . import models, names
from ._transport import (
    Attempts,
    Credentials,
    Endpoint,
    Endpoints,
    Identity,
    Options,
    channel_options,
    header,
    parse_endpoints,
    request_metadata,
    traced,
    request_id as new_request_id,
    retryable,
    wire_status,
)
from .errors import WireStatus, from_status
from .models import (
    AppliedDefinition,
    AuditRecord,
    AuditVerification,
    ClusterStatus,
    Definition,
    Heartbeat,
    Instance,
    InboxPage,
    InstanceActions,
    InstanceChange,
    InstancePage,
    InstanceTarget,
    LeasedTask,
    MigrationBatch,
    Provenance,
    SecurityLog,
    Schedule,
    Subscription,
    TaskLease,
    TimerPolicy,
    WorkflowPage,
)
from .v1 import lockstep_pb2_grpc as rpc

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")


class _Node:
    """One endpoint's channel and service stubs."""

    def __init__(self, endpoint: Endpoint, credentials: Credentials) -> None:
        options = channel_options(credentials.tls)
        if endpoint.secure:
            assert credentials.tls is not None, "parse_endpoints refuses https without TLS"
            creds = credentials.tls.channel_credentials()
            self.channel = grpc.secure_channel(endpoint.address, creds, options)
        else:
            self.channel = grpc.insecure_channel(endpoint.address, options)
        self.definitions = rpc.DefinitionsStub(self.channel)
        self.instances = rpc.InstancesStub(self.channel)
        self.audit = rpc.AuditStub(self.channel)
        self.tasks = rpc.TasksStub(self.channel)
        self.cluster = rpc.ClusterStub(self.channel)
        self.subscriptions = rpc.SubscriptionsStub(self.channel)
        self.schedules = rpc.SchedulesStub(self.channel)


class Client:
    """A synchronous Lockstep client; thread-safe. Use it as a context manager or call
    :meth:`close`.

    ``endpoints`` are host:port (any nodes of the cluster: writes reach the leader);
    ``identity`` names the caller to a development-mode cluster; ``credentials`` carry TLS
    settings and a bearer token for a secure one.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        identity: Optional[Identity] = None,
        credentials: Optional[Credentials] = None,
        options: Optional[Options] = None,
    ) -> None:
        credentials = credentials or Credentials()
        self._options = options or Options()
        self._endpoints = Endpoints(parse_endpoints(endpoints, credentials.tls))
        self._metadata = request_metadata(identity, credentials, self._options.forward)
        self._nodes = [_Node(e, credentials) for e in self._endpoints.endpoints]

    def close(self) -> None:
        for node in self._nodes:
            node.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        kind: Optional[Type[BaseException]],
        value: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        self.close()

    @property
    def endpoints(self) -> Sequence[str]:
        return self._endpoints.addresses()

    @property
    def current_endpoint(self) -> str:
        """Where the next call goes first: the leader, once the client has learned it."""
        return self._endpoints.addresses()[self._endpoints.current % len(self._nodes)]

    # Definitions

    def apply_definition(
        self, source: str, *, provenance: Optional[Provenance] = None, request_id: Optional[str] = None
    ) -> AppliedDefinition:
        """Validates and applies a workflow definition (YAML); applying the same content
        again is a no-op (``created`` is False)."""
        rid = request_id or new_request_id()
        request = rq.apply_definition(rid, source, provenance)
        return models.applied_definition(self._unary(lambda n: n.definitions.Apply, request, rid))

    def get_definition(self, workflow: str, version: Optional[str] = None, *, stale: bool = False) -> Definition:
        """The latest version of a workflow, or the given one."""
        request = rq.get_definition(workflow, version, stale)
        return models.definition(self._unary(lambda n: n.definitions.Get, request))

    def list_definition_versions(self, workflow: str, *, stale: bool = False) -> List[Definition]:
        """Every version of a workflow, oldest first."""
        request = rq.list_definition_versions(workflow, stale)
        answer = self._unary(lambda n: n.definitions.ListVersions, request)
        return [models.definition(d) for d in answer.versions]

    def list_workflows(
        self, page_size: int = 0, page_token: Optional[str] = None, *, stale: bool = False
    ) -> WorkflowPage:
        """One page of the workflows that have a definition, by name, each with its latest
        version (without its source) and how many versions were applied; pass the answer's
        ``next_page_token`` for the next page."""
        request = rq.list_workflows(page_size, page_token, stale)
        return models.workflow_page(self._unary(lambda n: n.definitions.List, request))

    # Instances

    def create_instance(
        self,
        workflow: str,
        data: Mapping[str, Any],
        *,
        key: Optional[str] = None,
        request_id: Optional[str] = None,
    ) -> InstanceChange:
        """Starts an instance of ``workflow`` with ``data`` (a JSON object) and an optional
        business key, unique per workflow."""
        rid = request_id or new_request_id()
        request = rq.create_instance(rid, workflow, data, key)
        return models.instance_change(self._unary(lambda n: n.instances.Create, request, rid))

    def transition(
        self,
        instance: InstanceTarget,
        transition: str,
        payload: Optional[Mapping[str, Any]] = None,
        *,
        expected_version: Optional[int] = None,
        request_id: Optional[str] = None,
    ) -> InstanceChange:
        """Takes a transition; a ``data`` object in the payload is merged into the instance
        data. With ``expected_version``, refused (VersionConflict) unless the instance is at
        that version."""
        rid = request_id or new_request_id()
        request = rq.transition(rid, instance, transition, payload, expected_version)
        return models.instance_change(self._unary(lambda n: n.instances.Transition, request, rid))

    def send_event(
        self,
        instance: InstanceTarget,
        event: str,
        payload: Optional[Mapping[str, Any]] = None,
        *,
        request_id: Optional[str] = None,
    ) -> InstanceChange:
        """Delivers an event; the instance takes the transition declared with ``on:``."""
        rid = request_id or new_request_id()
        request = rq.send_event(rid, instance, event, payload)
        return models.instance_change(self._unary(lambda n: n.instances.SendEvent, request, rid))

    def get_instance(self, instance: InstanceTarget, *, stale: bool = False) -> Instance:
        """An instance by id or ``by_key(workflow, key)``; linearizable unless ``stale``."""
        answer = self._unary(lambda n: n.instances.Get, rq.get_instance(instance, stale))
        return models.instance(answer.instance, models.read_info(answer.read))

    def list_instances(
        self,
        workflow: str,
        *,
        state: Optional[str] = None,
        sla_status: Optional[str] = None,
        updated_since: Optional[datetime] = None,
        open_incidents: bool = False,
        page_size: int = 0,
        page_token: Optional[str] = None,
        stale: bool = False,
        where: Sequence[Tuple[str, str, Any]] = (),
    ) -> InstancePage:
        """One page of a workflow's instances (``page_size`` at most 500; 0 means 100),
        optionally only those whose indexed data fields meet every ``where`` condition, each
        ``(field, op, value)`` with ``op`` one of ``=``, ``<``, ``<=``, ``>``, ``>=``, ``^=``
        (a string prefix), on fields the definition declares under ``index:``;
        :meth:`iter_instances` walks every page."""
        request = rq.list_instances(
            workflow,
            state=state,
            sla_status=sla_status,
            updated_since=updated_since,
            open_incidents=open_incidents,
            page_size=page_size,
            page_token=page_token,
            stale=stale,
            where=where,
        )
        return models.instance_page(self._unary(lambda n: n.instances.List, request))

    def iter_instances(
        self, workflow: str, *, state: Optional[str] = None, open_incidents: bool = False, page_size: int = 0
    ) -> Iterator[Instance]:
        """Every instance of a workflow (optionally in ``state``), page by page."""
        token: Optional[str] = None
        while True:
            page = self.list_instances(
                workflow, state=state, open_incidents=open_incidents, page_size=page_size, page_token=token
            )
            yield from page.instances
            if page.next_page_token is None:
                return
            token = page.next_page_token

    def history(
        self, instance: InstanceTarget, *, limit: int = 0, stale: bool = False, commands: bool = False
    ) -> List[AuditRecord]:
        """The instance's audit records, oldest first; at most ``limit`` (0: the node's
        default, 1000; at most 10000). With ``commands``, each record also carries the command
        that made it (``journal``), which needs the cluster policy's ``read_audit``."""
        answer = self._unary(lambda n: n.instances.History, rq.history(instance, limit, stale, commands))
        return [models.audit_record(r) for r in answer.records]

    def actions(self, instance: InstanceTarget, *, stale: bool = False) -> InstanceActions:
        """What the caller may do with the instance now: the transitions it may take, and the
        gated ones with the time they open (decided by the engine, read-only)."""
        answer = self._unary(lambda n: n.instances.Actions, rq.actions(instance, stale))
        return models.instance_actions(answer)

    def inbox(
        self,
        workflows: Sequence[str],
        *,
        states: Optional[Sequence[str]] = None,
        page_size: int = 0,
        page_token: Optional[str] = None,
        stale: bool = False,
    ) -> InboxPage:
        """One page of the caller's inbox: instances of ``workflows`` (1 to 16; optionally in
        ``states``) on which it has an action. ``page_size`` at most 100 (0 means 20); a page
        may be short and ``truncated`` when the server's scan bound was reached."""
        request = rq.inbox(workflows, states, page_size, page_token, stale)
        return models.inbox_page(self._unary(lambda n: n.instances.Inbox, request))

    def migrate(
        self,
        workflow: str,
        from_version: str,
        to_version: str,
        *,
        timer_policy: TimerPolicy,
        state_mapping: Optional[Mapping[str, str]] = None,
        instances: Optional[Iterable[InstanceTarget]] = None,
        page_token: Optional[str] = None,
        request_id: Optional[str] = None,
    ) -> MigrationBatch:
        """Moves instances to another applied version: the listed ones (at most 64), or with
        ``instances=None`` the next batch of every instance at ``from_version`` (call again
        with ``next_page_token``, and a new request id, while ``more``)."""
        rid = request_id or new_request_id()
        request = rq.migrate(
            rid,
            workflow,
            from_version,
            to_version,
            timer_policy=timer_policy,
            state_mapping=state_mapping,
            instances=instances,
            page_token=page_token,
        )
        return models.migration_batch(self._unary(lambda n: n.instances.Migrate, request, rid))

    # Audit

    def tail(self, from_seq: int = 1, *, follow: bool = False) -> SyncAuditFeed:
        """The global change feed from ``from_seq``, in order. Without ``follow`` it ends at
        the head; with it, it waits for new records. A broken connection is resumed (on this
        or another node) from the record after the last one delivered."""
        return SyncAuditFeed(self, from_seq, follow)

    def verify_audit(self, *, at_seq: int = 0, node: Optional[int] = None) -> AuditVerification:
        """Recomputes the hash chains on a node (``node``: an index into the endpoint list;
        default: any). With ``at_seq``, also the chain hash of that record."""
        answer = self._unary(lambda n: n.audit.Verify, rq.verify_audit(at_seq), node=node)
        return models.audit_verification(answer)

    def security_log(self, *, after_seq: int = 0, limit: int = 0, node: int = 0) -> SecurityLog:
        """Refused attempts the node at index ``node`` saw, oldest first (per node)."""
        answer = self._unary(lambda n: n.audit.SecurityLog, rq.security_log(after_seq, limit), node=node)
        return models.security_log(answer)

    # Tasks

    def poll_tasks(self, queue: str, *, max_tasks: int = 1, wait: float = 0.0) -> List[LeasedTask]:
        """Leases up to ``max_tasks`` (at most 32) ready tasks of ``queue``, waiting up to
        ``wait`` seconds (at most 30) for one. Not idempotent: should an answer be lost, its
        tasks come back when their leases expire. Callers are actors of kind worker."""
        request = rq.poll_tasks(queue, max_tasks, wait)
        answer = self._unary(lambda n: n.tasks.Poll, request, timeout=wait + self._options.attempt_timeout)
        return [models.leased_task(t) for t in answer.tasks]

    def heartbeat_task(self, lease: TaskLease, *, request_id: Optional[str] = None) -> Heartbeat:
        """Extends a lease by the task's timeout."""
        rid = request_id or new_request_id()
        return models.heartbeat(self._unary(lambda n: n.tasks.Heartbeat, rq.heartbeat_task(rid, lease), rid, trace=lease.traceparent))

    def complete_task(
        self, lease: TaskLease, result: Optional[Mapping[str, Any]] = None, *, request_id: Optional[str] = None
    ) -> InstanceChange:
        """Completes a leased task; its ``on_complete`` transition is taken with the worker as
        actor and ``result`` as payload (``{"data": {...}}`` merges into the instance data)."""
        rid = request_id or new_request_id()
        request = rq.complete_task(rid, lease, result)
        return models.instance_change(self._unary(lambda n: n.tasks.Complete, request, rid, trace=lease.traceparent))

    def fail_task(
        self, lease: TaskLease, error: str, *, retryable: bool, request_id: Optional[str] = None
    ) -> InstanceChange:
        """Fails an attempt: a retryable failure is retried per the task's policy; a
        non-retryable one (or an exhausted policy) takes ``on_exhausted`` or opens an
        incident."""
        rid = request_id or new_request_id()
        request = rq.fail_task(rid, lease, error, retryable)
        return models.instance_change(self._unary(lambda n: n.tasks.Fail, request, rid, trace=lease.traceparent))

    def redact(
        self, instance: InstanceTarget, fields: Sequence[str], *, request_id: Optional[str] = None
    ) -> InstanceChange:
        """Erasure: replaces the named data fields (dotted paths) by digests of their values,
        in the instance's data and its command journal; needs the policy's ``redact_data``."""
        rid = request_id or new_request_id()
        request = rq.redact(rid, instance, fields)
        return models.instance_change(self._unary(lambda n: n.instances.Redact, request, rid))

    def release_task(self, lease: TaskLease, *, request_id: Optional[str] = None) -> InstanceChange:
        """Hands a leased task back unfinished (a worker stopping): it is ready again at once
        and the attempt does not count against its retry policy; the lease is stale from then
        on. Raises :class:`~lockstep.errors.StaleLease` for a lease that is no longer held."""
        rid = request_id or new_request_id()
        request = rq.release_task(rid, lease)
        return models.instance_change(self._unary(lambda n: n.tasks.Release, request, rid, trace=lease.traceparent))

    def resolve_incident(
        self,
        instance: InstanceTarget,
        incident_id: str,
        *,
        retry_task: bool = False,
        request_id: Optional[str] = None,
    ) -> InstanceChange:
        """Resolves an open incident (operators only), optionally making its task ready for a
        fresh attempt."""
        rid = request_id or new_request_id()
        request = rq.resolve_incident(rid, instance, incident_id, retry_task)
        return models.instance_change(self._unary(lambda n: n.tasks.ResolveIncident, request, rid))

    # Subscriptions (webhooks). Every call needs the cluster policy's ``manage_subscriptions``.

    def create_subscription(
        self,
        name: str,
        url: str,
        *,
        secret: str,
        workflows: Sequence[str] = (),
        kinds: Sequence[str] = (),
        events: Sequence[str] = (),
        start_after: Optional[int] = None,
        request_id: Optional[str] = None,
    ) -> Subscription:
        """Subscribes ``url`` to the audit records that match the filter (``workflows``,
        record ``kinds`` and ``emit`` ``events``; empty lists match everything, the three
        combine with "and"): the leader POSTs each one, in global sequence order and at least
        once, signed with the secret the nodes hold under the name ``secret``. Delivery starts
        after the global sequence ``start_after`` (0: every record), or without it with the
        records written from now on.

        Needs the cluster policy's ``manage_subscriptions``. The node refuses
        (:class:`~lockstep.errors.InvalidArgument`) a target not on its webhook allow-list or
        a secret name it does not hold (both set in each node's ``--webhooks`` file); a name
        already taken raises :class:`~lockstep.errors.AlreadyExists`."""
        rid = request_id or new_request_id()
        request = rq.create_subscription(
            rid,
            name,
            url,
            secret=secret,
            workflows=workflows,
            kinds=kinds,
            events=events,
            start_after=start_after,
        )
        return models.subscription(self._unary(lambda n: n.subscriptions.Create, request, rid))

    def subscriptions(self) -> List[Subscription]:
        """Every webhook subscription, with its cursor and lag behind the answering node's
        audit head. Needs the cluster policy's ``manage_subscriptions``."""
        answer = self._unary(lambda n: n.subscriptions.List, rq.subscriptions())
        return [models.subscription(s) for s in answer.subscriptions]

    def subscription(self, name: str) -> Subscription:
        """One webhook subscription; raises :class:`~lockstep.errors.UnknownSubscription`
        when none has this name. Needs the cluster policy's ``manage_subscriptions``."""
        return models.subscription(self._unary(lambda n: n.subscriptions.Get, rq.subscription(name)))

    def pause_subscription(
        self, name: str, reason: str = "", *, request_id: Optional[str] = None
    ) -> Subscription:
        """Stops delivering to a subscription; its cursor stays, so a resume loses and
        reorders nothing (without a ``reason`` the node records "paused by <actor>"). Needs
        the cluster policy's ``manage_subscriptions``."""
        rid = request_id or new_request_id()
        request = rq.pause_subscription(rid, name, reason)
        return models.subscription(self._unary(lambda n: n.subscriptions.Pause, request, rid))

    def resume_subscription(self, name: str, *, request_id: Optional[str] = None) -> Subscription:
        """Delivers again from the cursor, clearing the pause and the last error. Needs the
        cluster policy's ``manage_subscriptions``."""
        rid = request_id or new_request_id()
        request = rq.resume_subscription(rid, name)
        return models.subscription(self._unary(lambda n: n.subscriptions.Resume, request, rid))

    def delete_subscription(self, name: str, *, request_id: Optional[str] = None) -> Subscription:
        """Deletes a subscription (no more deliveries) and answers it as it was. Needs the
        cluster policy's ``manage_subscriptions``."""
        rid = request_id or new_request_id()
        request = rq.delete_subscription(rid, name)
        return models.subscription(self._unary(lambda n: n.subscriptions.Delete, request, rid))

    # Schedules. Every call needs the cluster policy's ``manage_schedules``.

    def create_schedule(
        self,
        name: str,
        *,
        workflow: str,
        cron: str,
        time_zone: str = "UTC",
        calendar: Optional[str] = None,
        data: Optional[Mapping[str, Any]] = None,
        key: Optional[str] = None,
        overlap: str = "skip",
        catch_up: str = "one",
        catch_up_max: int = 10,
        catch_up_window: timedelta = timedelta(minutes=1),
        request_id: Optional[str] = None,
    ) -> Schedule:
        """Makes the cluster create an instance of ``workflow`` at every tick of ``cron`` (five
        fields, six with seconds first, or ``@daily``...) read in ``time_zone``, once per tick
        even across a leader failover. ``data`` and ``key`` are templates: their strings may
        hold ``{tick}``, ``{date}``, ``{year}``, ``{quarter}``, ``{schedule}``... Ticks on
        the closed days of ``calendar`` (of the workflow's definition) are skipped; ``overlap``
        ``skip`` skips a tick while the previous tick's instance is open (``allow``: one
        beside it); ``catch_up`` says what fires of the ticks missed by more than
        ``catch_up_window`` (``skip``, ``one``: the latest, ``all``: at most
        ``catch_up_max``). A bad expression, zone, template or calendar raises
        :class:`~lockstep.errors.InvalidArgument` saying what to write."""
        rid = request_id or new_request_id()
        request = rq.create_schedule(
            rid,
            name,
            workflow=workflow,
            cron=cron,
            time_zone=time_zone,
            calendar=calendar,
            data=data,
            key=key,
            overlap=overlap,
            catch_up=catch_up,
            catch_up_max=catch_up_max,
            catch_up_window=catch_up_window,
        )
        return models.schedule(self._unary(lambda n: n.schedules.Create, request, rid))

    def schedules(self) -> List[Schedule]:
        """Every schedule, with its next tick and what its last tick did."""
        answer = self._unary(lambda n: n.schedules.List, rq.schedules())
        return [models.schedule(s) for s in answer.schedules]

    def schedule(self, name: str) -> Schedule:
        """One schedule; raises :class:`~lockstep.errors.UnknownSchedule` when none has
        this name."""
        return models.schedule(self._unary(lambda n: n.schedules.Get, rq.schedule(name)))

    def pause_schedule(self, name: str, reason: str = "", *, request_id: Optional[str] = None) -> Schedule:
        """Stops a schedule firing; ticks that fall while it is paused are not caught up."""
        rid = request_id or new_request_id()
        request = rq.pause_schedule(rid, name, reason)
        return models.schedule(self._unary(lambda n: n.schedules.Pause, request, rid))

    def resume_schedule(self, name: str, *, request_id: Optional[str] = None) -> Schedule:
        """Fires again, from the first tick after now."""
        rid = request_id or new_request_id()
        request = rq.resume_schedule(rid, name)
        return models.schedule(self._unary(lambda n: n.schedules.Resume, request, rid))

    def delete_schedule(self, name: str, *, request_id: Optional[str] = None) -> Schedule:
        """Deletes a schedule (the instances it created stay) and answers it as it was."""
        rid = request_id or new_request_id()
        request = rq.delete_schedule(rid, name)
        return models.schedule(self._unary(lambda n: n.schedules.Delete, request, rid))

    # Cluster

    def status(self, *, include_digest: bool = False, node: Optional[int] = None) -> ClusterStatus:
        """A node's view of the cluster: of the node at index ``node`` (no retry elsewhere), or
        of any node that answers."""
        request = rq.status(include_digest)
        return models.cluster_status(self._unary(lambda n: n.cluster.Status, request, node=node))

    # The call loop

    def _unary(
        self,
        pick: Callable[[_Node], grpc.UnaryUnaryMultiCallable[_Req, _Resp]],
        request: _Req,
        request_id: Optional[str] = None,
        *,
        timeout: Optional[float] = None,
        node: Optional[int] = None,
        trace: Optional[str] = None,
    ) -> _Resp:
        timeout = timeout or self._options.attempt_timeout
        metadata = traced(self._metadata, trace)
        if node is not None:
            # A question to one node: one attempt, no retry elsewhere.
            try:
                return pick(self._node(node)).with_call(request, timeout=timeout, metadata=metadata)[0]
            except grpc.RpcError as error:
                raise from_status(wire_status(error)) from error
        attempts = Attempts(self._endpoints, self._options, request_id)
        while True:
            index = attempts.node()
            try:
                response, call = pick(self._nodes[index]).with_call(
                    request, timeout=timeout, metadata=metadata
                )
            except grpc.RpcError as error:
                failure = wire_status(error)
            else:
                leader = header(call.initial_metadata(), names.LEADER_HEADER)
                attempts.succeeded(index, leader if isinstance(leader, str) else None)
                return response
            # Outside the except block: an error raised here is the call's, not a second one.
            time.sleep(attempts.failed(index, failure))

    def _node(self, index: int) -> _Node:
        if not 0 <= index < len(self._nodes):
            raise ValueError(f"no endpoint #{index}: the client has {len(self._nodes)}")
        return self._nodes[index]


class SyncAuditFeed(Iterator[AuditRecord]):
    """The change feed as an iterator of :class:`~lockstep.models.AuditRecord`, in global
    sequence order (:meth:`Client.tail`). After a broken connection it reconnects (to the next
    node after a backoff) and resumes from ``next_seq``, the record after the last one
    delivered; it gives up with :class:`~lockstep.errors.Unavailable` after
    ``Options.total_timeout`` without delivering a record. Stop a followed feed with
    :meth:`close` (from another thread too) or a ``with`` block."""

    def __init__(self, client: Client, from_seq: int, follow: bool) -> None:
        rq.tail(from_seq, follow)  # checks the arguments now, not at the first next()
        self._client = client
        self._follow = follow
        self.next_seq = from_seq
        self._stream: Optional[Iterator[Any]] = None
        self._call: Optional[grpc.Call] = None
        self._attempts: Optional[Attempts] = None
        self._index = 0
        self._closed = False
        # How often the feed reconnected after a broken stream.
        self.reconnects = 0

    def __next__(self) -> AuditRecord:
        while True:
            if self._closed:
                raise StopIteration
            if self._stream is None:
                self._open()
            assert self._stream is not None
            try:
                message = next(self._stream)
            except StopIteration:
                if not self._follow or self._call is None:
                    self.close()
                    raise
                # A followed feed ends only when its node stops: resume elsewhere.
                self._stream = None
                status = WireStatus(grpc.StatusCode.UNAVAILABLE, "the node ended the feed")
                time.sleep(self._retry_budget().failed(self._index, status))
                continue
            except grpc.RpcError as error:
                self._stream = None
                status = wire_status(error)
                if self._closed:
                    raise StopIteration from None
                if not retryable(status):
                    raise from_status(status) from error
                time.sleep(self._retry_budget().failed(self._index, status))
                continue
            record = models.audit_record(message)
            self.next_seq = record.global_seq + 1
            # Progress: the retry budget starts again at the next failure.
            self._attempts = None
            return record

    def _retry_budget(self) -> Attempts:
        """The retries since the last record delivered (total_timeout without progress)."""
        self.reconnects += 1
        if self._attempts is None:
            self._attempts = Attempts(self._client._endpoints, self._client._options)
        return self._attempts

    def _open(self) -> None:
        client = self._client
        self._index = client._endpoints.current % len(client._nodes)
        timeout = None if self._follow else client._options.total_timeout
        call = client._nodes[self._index].audit.Tail(
            rq.tail(self.next_seq, self._follow), timeout=timeout, metadata=client._metadata
        )
        self._call, self._stream = call, call

    def close(self) -> None:
        """Stops the feed (the iterator then ends)."""
        self._closed = True
        call, self._call, self._stream = self._call, None, iter(())
        if call is not None:
            call.cancel()

    def __enter__(self) -> SyncAuditFeed:
        return self

    def __exit__(
        self,
        kind: Optional[Type[BaseException]],
        value: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        self.close()

