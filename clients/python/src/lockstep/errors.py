"""What a call raises.

Every exception is a :class:`LockstepError`. A refusal by the engine (nothing changed) is a
:class:`Refused`, or rather the subclass for its code: :class:`Forbidden`,
:class:`GateNotYetOpen`, :class:`VersionConflict`, ... (``Refused.for_code`` maps a code to its
class). The code is read from the ``google.rpc.ErrorInfo`` the server attaches to the gRPC
status (domain ``lockstep.dev``), with its metadata: the predicate that refused and, for a
closed gate, when it opens (``earliest_at``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import ClassVar, Mapping, Optional

import grpc

from . import names
from ._time import parse_time


@dataclass(frozen=True)
class WireStatus:
    """A failed call's gRPC status as the SDK reads it (built by ``_transport.wire_status``)."""

    code: grpc.StatusCode
    message: str
    # The google.rpc.ErrorInfo of domain lockstep.dev, if any: its reason and metadata.
    reason: Optional[str] = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    # google.rpc.RetryInfo's delay, or the retry_after_ms metadata, in seconds.
    retry_after: Optional[float] = None
    # The x-lockstep-leader header: a follower forwarded the write to this leader.
    leader: Optional[str] = None


class LockstepError(Exception):
    """Base of every error the SDK raises.

    ``status_code`` is the gRPC status code (``None`` for errors the SDK finds itself), and
    ``metadata`` the ErrorInfo metadata the server attached.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: Optional[grpc.StatusCode] = None,
        metadata: Optional[Mapping[str, str]] = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.metadata: Mapping[str, str] = dict(metadata or {})


class Refused(LockstepError):
    """The engine refused the request; nothing changed.

    ``code`` is the refusal code (``FORBIDDEN``, ``GATE_NOT_YET_OPEN``, ...), ``reason`` says
    why in words, ``predicate`` names the predicate that refused (``FORBIDDEN``,
    ``GUARD_FALSE``) and ``earliest_at`` when a closed gate opens (``GATE_NOT_YET_OPEN``).
    Retrying the same request gives the same answer until the instance or the clock moves on.
    """

    CODE: ClassVar[str] = ""

    def __init__(
        self,
        code: str,
        reason: str,
        *,
        status_code: Optional[grpc.StatusCode] = None,
        metadata: Optional[Mapping[str, str]] = None,
    ) -> None:
        super().__init__(f"{code}: {reason}", status_code=status_code, metadata=metadata)
        self.code = code
        self.reason = reason
        self.predicate: Optional[str] = self.metadata.get(names.PREDICATE)
        earliest = self.metadata.get(names.EARLIEST_AT)
        self.earliest_at: Optional[datetime] = parse_time(earliest) if earliest else None

    @staticmethod
    def for_code(code: str) -> type[Refused]:
        """The exception class of a refusal code (``Refused`` itself for a code this SDK does
        not know: a newer server)."""
        return _REFUSALS.get(code, Refused)


class NotAllowedFromState(Refused):
    """The definition does not allow this transition from the instance's current state."""

    CODE = "NOT_ALLOWED_FROM_STATE"


class UnknownTransition(Refused):
    CODE = "UNKNOWN_TRANSITION"


class GuardFalse(Refused):
    """The transition's ``guard`` predicate is false (``predicate`` names it)."""

    CODE = "GUARD_FALSE"


class Forbidden(Refused):
    """The ``allow`` predicate is false for this actor (``predicate`` names it)."""

    CODE = "FORBIDDEN"


class SystemOnly(Refused):
    """A ``system: true`` transition asked by a non-system actor, or the reverse."""

    CODE = "SYSTEM_ONLY"


class PredicateError(Refused):
    """A predicate failed to evaluate."""

    CODE = "PREDICATE_ERROR"


class GateNotYetOpen(Refused):
    """A ``not_before`` gate is closed; ``earliest_at`` says when it opens."""

    CODE = "GATE_NOT_YET_OPEN"


class GateExpired(Refused):
    """A ``not_after`` gate has closed for good."""

    CODE = "GATE_EXPIRED"


class PayloadInvalid(Refused):
    CODE = "PAYLOAD_INVALID"


class VersionConflict(Refused):
    """The instance is not at the ``expected_version`` the request named."""

    CODE = "VERSION_CONFLICT"


class LimitExceeded(Refused):
    CODE = "LIMIT_EXCEEDED"


class EventUnmatched(Refused):
    CODE = "EVENT_UNMATCHED"


class TimerNotArmed(Refused):
    CODE = "TIMER_NOT_ARMED"


class TaskNotFound(Refused):
    CODE = "TASK_NOT_FOUND"


class TaskNotReady(Refused):
    CODE = "TASK_NOT_READY"


class StaleLease(Refused):
    """The lease expired and the task was leased again: this token no longer holds it."""

    CODE = "STALE_LEASE"


class IncidentNotFound(Refused):
    CODE = "INCIDENT_NOT_FOUND"


class WrongWorkflow(Refused):
    CODE = "WRONG_WORKFLOW"


class AlreadyExists(Refused):
    """An instance with this business key exists already."""

    CODE = "ALREADY_EXISTS"


class UnknownWorkflow(Refused):
    CODE = "UNKNOWN_WORKFLOW"


class UnknownInstance(Refused):
    CODE = "UNKNOWN_INSTANCE"


class DefinitionInvalid(Refused):
    CODE = "DEFINITION_INVALID"


class UnknownVersion(Refused):
    CODE = "UNKNOWN_VERSION"


class MigrationInvalid(Refused):
    CODE = "MIGRATION_INVALID"


class RequestIdReused(Refused):
    """The request id was used before by a different request: make a new one."""

    CODE = "REQUEST_ID_REUSED"


class UnknownSubscription(Refused):
    """No webhook subscription has this name (``lockstep subscriptions list`` shows them)."""

    CODE = "UNKNOWN_SUBSCRIPTION"


class UnknownSchedule(Refused):
    """No schedule has this name (``lockstep schedules list`` shows them)."""

    CODE = "UNKNOWN_SCHEDULE"


_REFUSALS: dict[str, type[Refused]] = {
    cls.CODE: cls
    for cls in (
        NotAllowedFromState,
        UnknownTransition,
        GuardFalse,
        Forbidden,
        SystemOnly,
        PredicateError,
        GateNotYetOpen,
        GateExpired,
        PayloadInvalid,
        VersionConflict,
        LimitExceeded,
        EventUnmatched,
        TimerNotArmed,
        TaskNotFound,
        TaskNotReady,
        StaleLease,
        IncidentNotFound,
        WrongWorkflow,
        AlreadyExists,
        UnknownWorkflow,
        UnknownInstance,
        DefinitionInvalid,
        UnknownVersion,
        MigrationInvalid,
        RequestIdReused,
        UnknownSubscription,
        UnknownSchedule,
    )
}
assert set(_REFUSALS) == set(names.REFUSAL_CODES), "one exception class per refusal code"


class Overloaded(LockstepError):
    """Refused before anything was done: the node was at its admission limit (``OVERLOADED``),
    the caller over a quota (``QUOTA_EXCEEDED``, ``quota`` names it) or the node short of disk
    space (``NO_SPACE``). Retry after ``retry_after`` seconds with the same request id.

    Raised when retries are off (``Options.retry_overloaded``) or ran out of time, and only
    when no earlier attempt may have taken effect; otherwise the call ends in
    :class:`Unavailable` (outcome unknown).
    """

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        retry_after: Optional[float],
        metadata: Optional[Mapping[str, str]] = None,
    ) -> None:
        super().__init__(
            f"{reason}: {message}",
            status_code=grpc.StatusCode.RESOURCE_EXHAUSTED,
            metadata=metadata,
        )
        self.reason = reason
        self.retry_after = retry_after
        self.quota: Optional[str] = self.metadata.get(names.QUOTA)


class Unavailable(LockstepError):
    """No node answered in time. A write may or may not have been applied: retry it with the
    same ``request_id`` (the cluster applies a request id at most once)."""

    def __init__(self, message: str, *, request_id: Optional[str]) -> None:
        super().__init__(message, status_code=grpc.StatusCode.UNAVAILABLE)
        self.request_id = request_id


class NotFound(LockstepError):
    """No such thing (not an engine refusal: e.g. no definition of that workflow version)."""


class InvalidArgument(LockstepError):
    """The request is malformed; the message says what to fix."""


class Unauthenticated(LockstepError):
    """The cluster does not know who is calling: check the token or client certificate."""


class PermissionDenied(LockstepError):
    """The cluster policy does not let this actor make the call (not an ``allow`` refusal)."""


class MalformedAnswer(LockstepError):
    """The node answered something this SDK cannot read (a time that is not RFC 3339, data
    that is not JSON): most likely the node runs another version of the API. Whether a write
    took effect is unknown from this answer alone; read the instance to find out."""


class RpcFailed(LockstepError):
    """Any other gRPC failure (``status_code`` says which)."""


_BY_STATUS: dict[grpc.StatusCode, type[LockstepError]] = {
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
}


def from_status(status: WireStatus) -> LockstepError:
    """The exception for a failed call that will not be retried."""
    if status.reason in names.RESOURCE_REASONS and status.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return Overloaded(
            status.reason or "",
            status.message,
            retry_after=status.retry_after,
            metadata=status.metadata,
        )
    if status.reason is not None and is_refusal(status):
        cls = Refused.for_code(status.reason)
        return cls(status.reason, status.message, status_code=status.code, metadata=status.metadata)
    kind = _BY_STATUS.get(status.code, RpcFailed)
    text = status.message if kind is not RpcFailed else f"{status.code.name}: {status.message}"
    return kind(text, status_code=status.code, metadata=status.metadata)


def is_refusal(status: WireStatus) -> bool:
    """Whether the status is the engine's refusal: a known refusal code, or an unknown code of
    the lockstep.dev domain that is none of the transport's reasons (a newer server's)."""
    if status.reason is None:
        return False
    if status.reason in _REFUSALS:
        return True
    transport = {names.NOT_LEADER, names.OUTCOME_UNKNOWN, names.BUSY, names.BAD_REQUEST}
    return status.reason not in transport and status.reason not in names.RESOURCE_REASONS
