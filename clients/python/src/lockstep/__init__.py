"""Lockstep's Python SDK.

- :class:`Client` (sync) and :class:`AsyncClient` (asyncio) call every RPC of the
  Definitions, Instances, Tasks, Audit, Subscriptions (webhooks) and Schedules services and the cluster
  status, follow the leader, and retry what may not have happened with the same request id;
- answers are the dataclasses of :mod:`lockstep.models`; refusals raise the exceptions of
  :mod:`lockstep.errors` (``Forbidden``, ``GateNotYetOpen``, ... all ``Refused``);
- :class:`lockstep.worker.Worker` runs task handlers registered per queue and task type;
- :mod:`lockstep.v1` holds the generated protobuf and gRPC stubs.

::

    from lockstep import Client, Identity, by_key

    with Client(["127.0.0.1:7101"], identity=Identity("alice")) as client:
        created = client.create_instance("purchase-order", {"amount": 500, "requester": "alice"}, key="PO-1")
        client.transition(by_key("purchase-order", "PO-1"), "submit")
"""

from ._transport import Credentials, Identity, Options, Tls, request_id
from .aio import AsyncClient, AuditFeed
from .client import Client, SyncAuditFeed
from .errors import (
    AlreadyExists,
    DefinitionInvalid,
    EventUnmatched,
    Forbidden,
    GateExpired,
    GateNotYetOpen,
    GuardFalse,
    IncidentNotFound,
    InvalidArgument,
    LimitExceeded,
    LockstepError,
    MalformedAnswer,
    MigrationInvalid,
    NotAllowedFromState,
    NotFound,
    Overloaded,
    PayloadInvalid,
    PermissionDenied,
    PredicateError,
    Refused,
    RequestIdReused,
    RpcFailed,
    StaleLease,
    SystemOnly,
    TaskNotFound,
    TaskNotReady,
    TimerNotArmed,
    Unauthenticated,
    Unavailable,
    UnknownInstance,
    UnknownSchedule,
    UnknownSubscription,
    UnknownTransition,
    UnknownVersion,
    UnknownWorkflow,
    VersionConflict,
    WrongWorkflow,
)
from .models import (
    AuditRecord,
    Instance,
    InstanceChange,
    InstanceKey,
    LeasedTask,
    Provenance,
    Schedule,
    ScheduleTick,
    Subscription,
    TimerPolicy,
    WorkflowPage,
    WorkflowSummary,
    by_key,
)

__version__ = "0.1.0"

__all__ = [
    "AlreadyExists",
    "AsyncClient",
    "AuditFeed",
    "AuditRecord",
    "Client",
    "Credentials",
    "DefinitionInvalid",
    "EventUnmatched",
    "Forbidden",
    "GateExpired",
    "GateNotYetOpen",
    "GuardFalse",
    "Identity",
    "IncidentNotFound",
    "Instance",
    "InstanceChange",
    "InstanceKey",
    "InvalidArgument",
    "LeasedTask",
    "LimitExceeded",
    "LockstepError",
    "MalformedAnswer",
    "MigrationInvalid",
    "NotAllowedFromState",
    "NotFound",
    "Options",
    "Overloaded",
    "PayloadInvalid",
    "PermissionDenied",
    "PredicateError",
    "Provenance",
    "Refused",
    "RequestIdReused",
    "RpcFailed",
    "StaleLease",
    "Schedule",
    "ScheduleTick",
    "Subscription",
    "SyncAuditFeed",
    "SystemOnly",
    "TaskNotFound",
    "TaskNotReady",
    "TimerNotArmed",
    "TimerPolicy",
    "WorkflowPage",
    "WorkflowSummary",
    "Tls",
    "Unauthenticated",
    "Unavailable",
    "UnknownInstance",
    "UnknownSchedule",
    "UnknownSubscription",
    "UnknownTransition",
    "UnknownVersion",
    "UnknownWorkflow",
    "VersionConflict",
    "WrongWorkflow",
    "by_key",
    "request_id",
]
