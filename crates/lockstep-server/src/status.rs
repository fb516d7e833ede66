//! Refusals and node errors as gRPC statuses with `google.rpc.ErrorInfo` details.

use lockstep_core::{Refusal, RefusalCode};
use lockstep_proto::names;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::cluster::WriteError;

/// The ErrorInfo domain of every Lockstep error.
pub const DOMAIN: &str = names::ERROR_DOMAIN;

/// The gRPC code for each refusal: what a generic client should make of it.
pub fn code_for(refusal: RefusalCode) -> Code {
    use RefusalCode::*;
    match refusal {
        NotAllowedFromState | GuardFalse | GateNotYetOpen | GateExpired | TimerNotArmed
        | TaskNotReady | StaleLease | MigrationInvalid => Code::FailedPrecondition,
        Forbidden | SystemOnly => Code::PermissionDenied,
        PredicateError | PayloadInvalid | DefinitionInvalid | UnknownTransition
        | EventUnmatched | WrongWorkflow => Code::InvalidArgument,
        VersionConflict => Code::Aborted,
        LimitExceeded => Code::ResourceExhausted,
        UnknownInstance | UnknownWorkflow | UnknownVersion | TaskNotFound | IncidentNotFound
        | UnknownSubscription | UnknownSchedule => Code::NotFound,
        AlreadyExists | RequestIdReused => Code::AlreadyExists,
    }
}

pub fn refusal(r: &Refusal) -> Status {
    let mut metadata = std::collections::HashMap::new();
    if let Some(p) = &r.predicate {
        metadata.insert(names::PREDICATE.to_string(), p.clone());
    }
    if let Some(t) = r.earliest_at {
        metadata.insert(names::EARLIEST_AT.to_string(), t.to_string());
    }
    let details = ErrorDetails::with_error_info(r.code.as_str(), DOMAIN, metadata);
    Status::with_error_details(code_for(r.code), r.message.clone(), details)
}

pub fn write_error(e: WriteError) -> Status {
    match e {
        WriteError::NotLeader {
            leader_id,
            leader_addr,
        } => {
            let mut metadata = std::collections::HashMap::new();
            if let Some(id) = leader_id {
                metadata.insert(names::LEADER_ID.to_string(), id.to_string());
            }
            if let Some(addr) = &leader_addr {
                metadata.insert(names::LEADER_ADDR.to_string(), addr.clone());
            }
            let message = match &leader_addr {
                Some(addr) => format!("this node is not the leader; send writes to {addr} or allow forwarding"),
                None => "no leader is known yet (an election may be in progress); retry shortly with the same request id".to_string(),
            };
            Status::with_error_details(
                Code::Unavailable,
                message,
                ErrorDetails::with_error_info("NOT_LEADER", DOMAIN, metadata),
            )
        }
        WriteError::Timeout(_) => Status::with_error_details(
            Code::Unavailable,
            e.to_string(),
            ErrorDetails::with_error_info(
                "OUTCOME_UNKNOWN",
                DOMAIN,
                std::collections::HashMap::new(),
            ),
        ),
        WriteError::Invalid(m) => Status::invalid_argument(m),
        WriteError::Fatal(m) => Status::internal(m),
        // Aborted with a reason that is not a refusal code: clients retry it.
        WriteError::Busy(m) => Status::with_error_details(
            Code::Aborted,
            m,
            ErrorDetails::with_error_info("BUSY", DOMAIN, std::collections::HashMap::new()),
        ),
        WriteError::Overloaded {
            message,
            retry_after_ms,
        } => overloaded(OVERLOADED, message, retry_after_ms, None),
        WriteError::QuotaExceeded {
            message,
            retry_after_ms,
            quota,
        } => overloaded(QUOTA_EXCEEDED, message, retry_after_ms, Some(&quota)),
        WriteError::NoSpace {
            message,
            retry_after_ms,
        } => overloaded(NO_SPACE, message, retry_after_ms, None),
    }
}

/// The reason of a refusal by admission control: the node is at its limit.
pub const OVERLOADED: &str = "OVERLOADED";
/// The reason of a refusal by a quota of the cluster policy.
pub const QUOTA_EXCEEDED: &str = "QUOTA_EXCEEDED";
/// The reason of a refusal by the space alarm: the node is short of disk space.
pub const NO_SPACE: &str = "NO_SPACE";

/// `RESOURCE_EXHAUSTED` with `reason` (OVERLOADED, QUOTA_EXCEEDED, NO_SPACE), the hint as ErrorInfo
/// metadata `retry_after_ms` and as `google.rpc.RetryInfo`, and a `quota` named, if any.
pub fn overloaded(
    reason: &str,
    message: String,
    retry_after_ms: u64,
    quota: Option<&str>,
) -> Status {
    let mut metadata = std::collections::HashMap::new();
    metadata.insert(
        names::RETRY_AFTER_MS.to_string(),
        retry_after_ms.to_string(),
    );
    if let Some(q) = quota {
        metadata.insert(names::QUOTA.to_string(), q.to_string());
    }
    let mut details = ErrorDetails::with_error_info(reason, DOMAIN, metadata);
    details.set_retry_info(Some(std::time::Duration::from_millis(retry_after_ms)));
    Status::with_error_details(Code::ResourceExhausted, message, details)
}

pub fn store_error(e: lockstep_store::Error) -> Status {
    Status::internal(format!("storage: {e}"))
}

pub fn bad_request(message: impl Into<String>) -> Status {
    Status::with_error_details(
        Code::InvalidArgument,
        message.into(),
        ErrorDetails::with_error_info("BAD_REQUEST", DOMAIN, std::collections::HashMap::new()),
    )
}
