"""The names both sides of the wire spell: request and response headers, the keys of the
``google.rpc.ErrorInfo`` metadata a refusal carries, and the refusal codes.

They mirror ``names`` in crates/lockstep-proto/src/lib.rs and ``RefusalCode`` in
crates/lockstep-core/src/engine/types.rs; tests/test_names.py reads both files and fails
when a name here drifts from the server's.
"""

from __future__ import annotations

# Development mode (``lockstepd --dev``): the caller's actor id, its kind (human, service,
# worker) and its roles (comma-separated). A secure cluster takes the actor from credentials.
ACTOR_HEADER = "x-lockstep-actor"
ACTOR_KIND_HEADER = "x-lockstep-actor-kind"
ROLES_HEADER = "x-lockstep-roles"
# "1": a follower answers UNAVAILABLE / NOT_LEADER with the leader's address instead of
# forwarding the write.
NO_FORWARD_HEADER = "x-lockstep-no-forward"
# Response header: the leader's address, on a write a follower forwarded.
LEADER_HEADER = "x-lockstep-leader"
# Bearer tokens (JWTs) of a secure cluster.
AUTHORIZATION_HEADER = "authorization"
# Where gRPC carries a status's google.rpc.Status (with its ErrorInfo and RetryInfo details).
STATUS_DETAILS_HEADER = "grpc-status-details-bin"

# The ErrorInfo domain of every Lockstep error, and its metadata keys.
ERROR_DOMAIN = "lockstep.dev"
PREDICATE = "predicate"
EARLIEST_AT = "earliest_at"
LEADER_ID = "leader_id"
LEADER_ADDR = "leader_addr"
RETRY_AFTER_MS = "retry_after_ms"
QUOTA = "quota"

# ErrorInfo reasons that are not refusals (crates/lockstep-server/src/status.rs).
NOT_LEADER = "NOT_LEADER"
OUTCOME_UNKNOWN = "OUTCOME_UNKNOWN"
BUSY = "BUSY"
BAD_REQUEST = "BAD_REQUEST"
# Nothing was done: the node was at its admission limit, the caller over a quota, or the
# node short of disk space. Retry after the hint with the same request id.
OVERLOADED = "OVERLOADED"
QUOTA_EXCEEDED = "QUOTA_EXCEEDED"
NO_SPACE = "NO_SPACE"
RESOURCE_REASONS = frozenset({OVERLOADED, QUOTA_EXCEEDED, NO_SPACE})

# The engine's refusal codes, in the order of crates/lockstep-core/src/engine/types.rs.
REFUSAL_CODES = (
    "NOT_ALLOWED_FROM_STATE",
    "UNKNOWN_TRANSITION",
    "GUARD_FALSE",
    "FORBIDDEN",
    "SYSTEM_ONLY",
    "PREDICATE_ERROR",
    "GATE_NOT_YET_OPEN",
    "GATE_EXPIRED",
    "PAYLOAD_INVALID",
    "VERSION_CONFLICT",
    "LIMIT_EXCEEDED",
    "EVENT_UNMATCHED",
    "TIMER_NOT_ARMED",
    "TASK_NOT_FOUND",
    "TASK_NOT_READY",
    "STALE_LEASE",
    "INCIDENT_NOT_FOUND",
    "WRONG_WORKFLOW",
    "ALREADY_EXISTS",
    "UNKNOWN_WORKFLOW",
    "UNKNOWN_INSTANCE",
    "DEFINITION_INVALID",
    "UNKNOWN_VERSION",
    "MIGRATION_INVALID",
    "REQUEST_ID_REUSED",
    "UNKNOWN_SUBSCRIPTION",
    "UNKNOWN_SCHEDULE",
)
