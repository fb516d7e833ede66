//! Limits every replica applies identically.
//!
//! Each bound here decides what apply writes (which dedup entries expire, whether a lease is
//! refused, how many instances a migration moves, how many outbox items an acknowledgement
//! removes), so every replica must use the same value at the same log index. **Changing one
//! is a log-format change**: add a format in [`crate::format`], keep the old value for
//! entries before it, and apply the new one only from [`crate::format::LogFormat::at_least`]
//! on; a rolling upgrade would otherwise leave replicas that disagree about the same entry.
//! Node-local bounds (caches, queues, in-flight limits) live with the code they bound.
//!
//! The definition limits of [`lockstep_core::Limits`] are replicated too: apply compiles every
//! definition with [`apply_limits`], and evaluation checks payloads and data against them, so
//! the same rule holds for their defaults.

/// How long a request id is remembered, in cluster time. A retry after this is a new request.
pub const DEDUP_RETENTION_MS: u64 = 24 * 3600 * 1000;
/// Most expired dedup entries removed per applied proposal, so cleanup never stalls apply.
pub const DEDUP_EXPIRE_BATCH_MAX: usize = 16;
/// Most tasks one worker may hold leased at once, across every queue and instance; a lease
/// beyond it is refused with LIMIT_EXCEEDED until the worker completes or fails one.
pub const LEASES_PER_WORKER_MAX: u32 = 256;
/// Most outbox items one acknowledgement removes, so an ack never makes a huge batch.
pub const OUTBOX_ACK_BATCH_MAX: usize = 1024;
/// Most instances one `Migrate` command moves: the length of an explicit list, and the batch
/// of an all-instances migration (which then answers where to resume).
pub const MIGRATION_INSTANCES_MAX: usize = 64;
/// Most entries of the workflow's state index one all-instances migration examines, so a
/// workflow with many instances at other versions never makes one huge apply.
pub const MIGRATION_SCAN_MAX: usize = 1024;
/// How many audit records back the trace of a traced record is kept (family `AuditTraces`,
/// log format 9): a webhook delivery of a record within it joins the trace of the write that
/// made the record; one further behind starts its own.
pub const AUDIT_TRACES_KEPT: u64 = 65_536;
/// Most traces older than [`AUDIT_TRACES_KEPT`] removed per traced record written, so the
/// family stays within the window plus leftovers that shrink with every traced record.
pub const AUDIT_TRACES_EXPIRE_MAX: usize = 16;

/// The definition and evaluation limits apply compiles every definition with.
pub fn apply_limits() -> lockstep_core::Limits {
    lockstep_core::Limits::default()
}
