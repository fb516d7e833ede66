"""The request messages of every wrapped RPC, built the same way for both clients.

``RPCS`` maps each RPC (``Service/Method``) the SDK wraps to the client method that calls it;
tests/test_stubs.py checks that every RPC of the services the SDK covers is in it and that
both clients have the method, so an RPC added to lockstep.proto fails the tests until the SDK
wraps it.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any, Iterable, Mapping, Optional, Sequence, Tuple

from ._time import format_time
from .models import (
    InstanceTarget,
    Provenance,
    TaskLease,
    TimerPolicy,
    consistency,
    instance_ref,
    lease_message,
    to_json,
)
from .v1 import lockstep_pb2 as pb

# The services the SDK wraps whole, and the single RPCs it wraps of the others.
SERVICES = ("Definitions", "Instances", "Tasks", "Audit", "Subscriptions", "Schedules")
SINGLE_RPCS = ("Cluster/Status",)

RPCS = {
    "Definitions/Apply": "apply_definition",
    "Definitions/Get": "get_definition",
    "Definitions/ListVersions": "list_definition_versions",
    "Definitions/List": "list_workflows",
    "Instances/Create": "create_instance",
    "Instances/Transition": "transition",
    "Instances/SendEvent": "send_event",
    "Instances/Get": "get_instance",
    "Instances/List": "list_instances",
    "Instances/History": "history",
    "Instances/Migrate": "migrate",
    "Instances/Actions": "actions",
    "Instances/Inbox": "inbox",
    "Instances/Redact": "redact",
    "Audit/Tail": "tail",
    "Audit/Verify": "verify_audit",
    "Audit/SecurityLog": "security_log",
    "Tasks/Poll": "poll_tasks",
    "Tasks/Heartbeat": "heartbeat_task",
    "Tasks/Complete": "complete_task",
    "Tasks/Fail": "fail_task",
    "Tasks/Release": "release_task",
    "Tasks/ResolveIncident": "resolve_incident",
    "Subscriptions/Create": "create_subscription",
    "Subscriptions/List": "subscriptions",
    "Subscriptions/Get": "subscription",
    "Subscriptions/Pause": "pause_subscription",
    "Subscriptions/Resume": "resume_subscription",
    "Subscriptions/Delete": "delete_subscription",
    "Schedules/Create": "create_schedule",
    "Schedules/List": "schedules",
    "Schedules/Get": "schedule",
    "Schedules/Pause": "pause_schedule",
    "Schedules/Resume": "resume_schedule",
    "Schedules/Delete": "delete_schedule",
    "Cluster/Status": "status",
}

# The server's bounds (proto/lockstep/v1/lockstep.proto), checked here so that a caller learns
# of a bad argument before a round trip.
PAGE_SIZE_MAX = 500
HISTORY_LIMIT_MAX = 10_000
POLL_TASKS_MAX = 32
POLL_WAIT_MS_MAX = 30_000
MIGRATE_INSTANCES_MAX = 64
INBOX_WORKFLOWS_MAX = 16
INBOX_STATES_MAX = 32
INBOX_PAGE_MAX = 100
DATA_FILTERS_MAX = 8
CATCH_UP_MAX = 100


def apply_definition(
    request_id: str, source: str, provenance: Optional[Provenance]
) -> pb.ApplyDefinitionRequest:
    p = provenance or Provenance()
    return pb.ApplyDefinitionRequest(
        request_id=request_id,
        source=source,
        provenance=pb.Provenance(repository=p.repository, commit=p.commit, path=p.path),
    )


def get_definition(workflow: str, version: Optional[str], stale: bool) -> pb.GetDefinitionRequest:
    return pb.GetDefinitionRequest(
        workflow=workflow, version=version or "", consistency=consistency(stale)
    )


def list_definition_versions(workflow: str, stale: bool) -> pb.ListDefinitionVersionsRequest:
    return pb.ListDefinitionVersionsRequest(workflow=workflow, consistency=consistency(stale))


def list_workflows(page_size: int, page_token: Optional[str], stale: bool) -> pb.ListDefinitionsRequest:
    return pb.ListDefinitionsRequest(
        page_size=page_size, page_token=page_token or "", consistency=consistency(stale)
    )


def create_instance(
    request_id: str, workflow: str, data: Mapping[str, Any], key: Optional[str]
) -> pb.CreateInstanceRequest:
    return pb.CreateInstanceRequest(
        request_id=request_id, workflow=workflow, key=key or "", data_json=to_json(data)
    )


def transition(
    request_id: str,
    target: InstanceTarget,
    name: str,
    payload: Optional[Mapping[str, Any]],
    expected_version: Optional[int],
) -> pb.TransitionRequest:
    request = pb.TransitionRequest(
        request_id=request_id,
        instance=instance_ref(target),
        transition=name,
        payload_json=to_json(payload),
    )
    if expected_version is not None:
        request.expected_version = expected_version
    return request


def send_event(
    request_id: str, target: InstanceTarget, event: str, payload: Optional[Mapping[str, Any]]
) -> pb.SendEventRequest:
    return pb.SendEventRequest(
        request_id=request_id, instance=instance_ref(target), event=event, payload_json=to_json(payload)
    )


def get_instance(target: InstanceTarget, stale: bool) -> pb.GetInstanceRequest:
    return pb.GetInstanceRequest(instance=instance_ref(target), consistency=consistency(stale))


def list_instances(
    workflow: str,
    *,
    state: Optional[str],
    sla_status: Optional[str],
    updated_since: Optional[datetime],
    open_incidents: bool,
    page_size: int,
    page_token: Optional[str],
    stale: bool,
    where: Sequence[Tuple[str, str, Any]] = (),
) -> pb.ListInstancesRequest:
    _bounded("page_size", page_size, PAGE_SIZE_MAX)
    _bounded("the number of where conditions", len(where), DATA_FILTERS_MAX)
    filters = []
    for condition in where:
        if isinstance(condition, str) or len(condition) != 3:
            raise TypeError(
                f"a where condition is a (field, op, value) tuple such as ('amount', '>=', 10000), not {condition!r}"
            )
        field, op, value = condition
        filters.append(pb.DataFilter(field=field, op=op, value_json=json.dumps(value)))
    return pb.ListInstancesRequest(
        where=filters,
        workflow=workflow,
        state=state or "",
        sla_status=sla_status or "",
        updated_since=format_time(updated_since) if updated_since is not None else "",
        page_size=page_size,
        page_token=page_token or "",
        consistency=consistency(stale),
        open_incidents=open_incidents,
    )


def history(target: InstanceTarget, limit: int, stale: bool, commands: bool = False) -> pb.HistoryRequest:
    _bounded("limit", limit, HISTORY_LIMIT_MAX)
    return pb.HistoryRequest(
        instance=instance_ref(target), consistency=consistency(stale), limit=limit, commands=commands
    )


def actions(target: InstanceTarget, stale: bool) -> pb.ActionsRequest:
    return pb.ActionsRequest(instance=instance_ref(target), consistency=consistency(stale))


def inbox(
    workflows: Sequence[str],
    states: Optional[Sequence[str]],
    page_size: int,
    page_token: Optional[str],
    stale: bool,
) -> pb.InboxRequest:
    if isinstance(workflows, str):
        raise TypeError("workflows is a list of workflow names, not one string")
    _bounded("the number of workflows", len(workflows), INBOX_WORKFLOWS_MAX, low=1)
    _bounded("the number of states", len(states or ()), INBOX_STATES_MAX)
    _bounded("page_size", page_size, INBOX_PAGE_MAX)
    return pb.InboxRequest(
        workflows=list(workflows),
        states=list(states or ()),
        page_size=page_size,
        page_token=page_token or "",
        consistency=consistency(stale),
    )


def migrate(
    request_id: str,
    workflow: str,
    from_version: str,
    to_version: str,
    *,
    timer_policy: TimerPolicy,
    state_mapping: Optional[Mapping[str, str]],
    instances: Optional[Iterable[InstanceTarget]],
    page_token: Optional[str],
) -> pb.MigrateInstancesRequest:
    targets = [instance_ref(t) for t in instances] if instances is not None else []
    if len(targets) > MIGRATE_INSTANCES_MAX:
        raise ValueError(
            f"{len(targets)} instances: a migration names at most {MIGRATE_INSTANCES_MAX}; "
            "pass instances=None to migrate every instance at from_version, a batch per call"
        )
    return pb.MigrateInstancesRequest(
        request_id=request_id,
        workflow=workflow,
        from_version=from_version,
        to_version=to_version,
        state_mapping=dict(state_mapping or {}),
        timer_policy=timer_policy.value,
        instances=targets,
        all=instances is None,
        page_token=page_token or "",
    )


def tail(from_seq: int, follow: bool) -> pb.TailAuditRequest:
    if from_seq < 1:
        raise ValueError("from_seq counts from 1 (the first audit record)")
    return pb.TailAuditRequest(from_seq=from_seq, follow=follow)


def verify_audit(at_seq: int) -> pb.VerifyAuditRequest:
    return pb.VerifyAuditRequest(at_seq=at_seq)


def security_log(after_seq: int, limit: int) -> pb.SecurityLogRequest:
    return pb.SecurityLogRequest(after_seq=after_seq, limit=limit)


def status(include_digest: bool) -> pb.ClusterStatusRequest:
    return pb.ClusterStatusRequest(include_digest=include_digest)


def poll_tasks(queue: str, max_tasks: int, wait: float) -> pb.PollTasksRequest:
    _bounded("max_tasks", max_tasks, POLL_TASKS_MAX, low=1)
    wait_ms = int(wait * 1000)
    _bounded("wait (in ms)", wait_ms, POLL_WAIT_MS_MAX)
    return pb.PollTasksRequest(queue=queue, max_tasks=max_tasks, wait_ms=wait_ms)


def heartbeat_task(request_id: str, lease: TaskLease) -> pb.HeartbeatTaskRequest:
    return pb.HeartbeatTaskRequest(request_id=request_id, lease=lease_message(lease))


def complete_task(
    request_id: str, lease: TaskLease, result: Optional[Mapping[str, Any]]
) -> pb.CompleteTaskRequest:
    return pb.CompleteTaskRequest(
        request_id=request_id, lease=lease_message(lease), result_json=to_json(result if result is not None else {})
    )


def fail_task(request_id: str, lease: TaskLease, error: str, retryable: bool) -> pb.FailTaskRequest:
    return pb.FailTaskRequest(
        request_id=request_id, lease=lease_message(lease), error=error, retryable=retryable
    )


def redact(request_id: str, target: InstanceTarget, fields: Sequence[str]) -> pb.RedactInstanceRequest:
    return pb.RedactInstanceRequest(request_id=request_id, instance=instance_ref(target), fields=list(fields))


def release_task(request_id: str, lease: TaskLease) -> pb.ReleaseTaskRequest:
    return pb.ReleaseTaskRequest(request_id=request_id, lease=lease_message(lease))


def resolve_incident(
    request_id: str, target: InstanceTarget, incident_id: str, retry_task: bool
) -> pb.ResolveIncidentRequest:
    return pb.ResolveIncidentRequest(
        request_id=request_id, instance=instance_ref(target), incident_id=incident_id, retry_task=retry_task
    )


def create_subscription(
    request_id: str,
    name: str,
    url: str,
    *,
    secret: str,
    workflows: Sequence[str],
    kinds: Sequence[str],
    events: Sequence[str],
    start_after: Optional[int],
) -> pb.CreateSubscriptionRequest:
    for what, entries in (("workflows", workflows), ("kinds", kinds), ("events", events)):
        if isinstance(entries, str):
            raise TypeError(f"{what} is a list of names, not one string")
    request = pb.CreateSubscriptionRequest(
        request_id=request_id,
        name=name,
        url=url,
        filter=pb.SubscriptionFilter(workflows=list(workflows), kinds=list(kinds), events=list(events)),
        secret=secret,
    )
    if start_after is not None:
        if start_after < 0:
            raise ValueError(f"start_after is {start_after}: it is a global audit sequence (0: every record)")
        request.start_after = start_after
    return request


def subscriptions() -> pb.ListSubscriptionsRequest:
    return pb.ListSubscriptionsRequest()


def subscription(name: str) -> pb.GetSubscriptionRequest:
    return pb.GetSubscriptionRequest(name=name)


def pause_subscription(request_id: str, name: str, reason: str) -> pb.PauseSubscriptionRequest:
    return pb.PauseSubscriptionRequest(request_id=request_id, name=name, reason=reason)


def resume_subscription(request_id: str, name: str) -> pb.ResumeSubscriptionRequest:
    return pb.ResumeSubscriptionRequest(request_id=request_id, name=name)


def delete_subscription(request_id: str, name: str) -> pb.DeleteSubscriptionRequest:
    return pb.DeleteSubscriptionRequest(request_id=request_id, name=name)


def create_schedule(
    request_id: str,
    name: str,
    *,
    workflow: str,
    cron: str,
    time_zone: str,
    calendar: Optional[str],
    data: Optional[Mapping[str, Any]],
    key: Optional[str],
    overlap: str,
    catch_up: str,
    catch_up_max: int,
    catch_up_window: timedelta,
) -> pb.CreateScheduleRequest:
    _bounded("catch_up_max", catch_up_max, CATCH_UP_MAX, low=1)
    window_ms = int(catch_up_window.total_seconds() * 1000)
    if window_ms <= 0:
        raise ValueError(f"catch_up_window is {catch_up_window}: it must be more than 0")
    return pb.CreateScheduleRequest(
        request_id=request_id,
        name=name,
        cron=cron,
        time_zone=time_zone,
        calendar=calendar or "",
        workflow=workflow,
        data_json=to_json(data or {}),
        key=key or "",
        overlap=overlap,
        catch_up=catch_up,
        catch_up_max=catch_up_max,
        catch_up_window_ms=window_ms,
    )


def schedules() -> pb.ListSchedulesRequest:
    return pb.ListSchedulesRequest()


def schedule(name: str) -> pb.GetScheduleRequest:
    return pb.GetScheduleRequest(name=name)


def pause_schedule(request_id: str, name: str, reason: str) -> pb.PauseScheduleRequest:
    return pb.PauseScheduleRequest(request_id=request_id, name=name, reason=reason)


def resume_schedule(request_id: str, name: str) -> pb.ResumeScheduleRequest:
    return pb.ResumeScheduleRequest(request_id=request_id, name=name)


def delete_schedule(request_id: str, name: str) -> pb.DeleteScheduleRequest:
    return pb.DeleteScheduleRequest(request_id=request_id, name=name)


def _bounded(what: str, value: int, high: int, *, low: int = 0) -> None:
    if not low <= value <= high:
        raise ValueError(f"{what} is {value}: it must be between {low} and {high}")
