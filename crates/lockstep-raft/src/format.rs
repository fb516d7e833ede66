//! Log formats and the cluster-version gate.
//!
//! A log entry is read by every member, including members that still run an older build
//! during a rolling upgrade. So a new kind of entry, or a new way of applying an old one, is
//! used only once the whole cluster reads it: every build knows the highest format it reads
//! ([`LOG_FORMAT_CURRENT`]); the leader asks every member for theirs and, once all of them
//! read a higher format than the replicated one, proposes [`crate::Body::SetLogFormat`].
//! Applying that entry raises the replicated format (family `Meta`, key
//! [`lockstep_store::schema::meta::LOG_FORMAT`]) on every replica at the same log index, so behaviour
//! that depends on it stays deterministic. Later format changes reuse the same gate: add a
//! constant, raise [`LOG_FORMAT_CURRENT`], and make the new behaviour conditional on
//! [`LogFormat::at_least`].
//!
//! Downgrades are not supported: once the format is raised, a build that does not read it
//! refuses the log with an envelope-version error naming the upgrade.

use serde::{Deserialize, Serialize};

/// The format of commit 4410ace and earlier: one request per entry.
pub const LOG_FORMAT_INITIAL: u32 = 1;
/// Group commit (`Body::Batch`), request digests in dedup entries (`REQUEST_ID_REUSED`), and
/// instance ids with the request's position in its batch (`i-<index>-<position>`).
pub const LOG_FORMAT_BATCHES: u32 = 2;
/// The lease-expiry guard (`lockstep_core::Rules::lease_expiry_guard`): a task command whose
/// lease expired at its cluster time is refused `STALE_LEASE` even before the lease-expiry
/// timer fired. Entries before it are decided as format 2 decided them.
pub const LOG_FORMAT_LEASE_GUARD: u32 = 3;
/// List indexes: instances by SLA status and open incident (family `IndexFlags`) and
/// counts per state and per flag, kept by apply (`crate::apply::index`). The entry that
/// raises the format builds them for the instances already stored.
pub const LOG_FORMAT_INDEXES: u32 = 4;
/// The command journal (family `Journal`, `lockstep_core::journal`): beside every instance
/// audit record apply writes the command that made it, so that `lockstep replay` can run an
/// instance's history through another definition version. Instances created before it have
/// no journal (their payloads were never kept) and are reported as not replayable.
pub const LOG_FORMAT_JOURNAL: u32 = 5;
/// `Tasks/Release` (`crate::TaskOp::Release`, `lockstep_core::Command::ReleaseTask`): a
/// worker hands a leased task back, ready again, the attempt not counted. A build before it
/// cannot decode the entry, so the API refuses a release until the format is raised.
pub const LOG_FORMAT_RELEASE: u32 = 6;
/// Erasure (`crate::Body::Redact`, `lockstep_core::Command::Redact`): named data fields
/// replaced by digests, in the instance and in its command journal. Refused by the API until
/// the format is raised, as `Release` is.
pub const LOG_FORMAT_REDACT: u32 = 7;
/// Webhook subscriptions (`crate::Body::Subscriptions`, family `Subscriptions`) and the
/// events each audit record's change emitted (family `Emitted`), which subscription filters
/// on event names read. Refused by the API until the format is raised, as `Release` is.
pub const LOG_FORMAT_WEBHOOKS: u32 = 8;
/// Traces through the log (`crate::Body::Traced`, family `TaskTraces`): a proposal made in
/// an exported trace carries its W3C `traceparent`, so every replica's apply joins the
/// caller's trace and the tasks it creates hand the trace on to their workers. A build
/// before it cannot decode the entry, so a leader wraps proposals only from this format on.
pub const LOG_FORMAT_TRACES: u32 = 9;
/// Schedules (`crate::Body::Schedules`, family `Schedules`, audit kind `schedule_changed`):
/// recurring instance creation fired by the leader. Refused by the API until the format is
/// raised, as `Release` is.
pub const LOG_FORMAT_SCHEDULES: u32 = 10;
/// Indexed search (family `IndexData`): apply keeps an entry per data field a definition
/// declares under `index:`. A definition with `index:` is refused below it (an older build
/// cannot read the key), so the entry that raises the format has nothing to build.
pub const LOG_FORMAT_SEARCH: u32 = 11;
/// The highest log format this build reads and writes.
pub const LOG_FORMAT_CURRENT: u32 = LOG_FORMAT_SEARCH;

/// A replicated log format, as applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LogFormat(pub u32);

impl Default for LogFormat {
    fn default() -> Self {
        LogFormat(LOG_FORMAT_INITIAL)
    }
}

impl LogFormat {
    pub fn at_least(self, version: u32) -> bool {
        self.0 >= version
    }

    /// The engine's rules from this format on: those it has switched on.
    /// A debug build run with `LOCKSTEP_MUTATION` adds its deliberate bug ([`crate::mutation`]).
    pub fn rules(self) -> lockstep_core::Rules {
        let rules = if self.at_least(LOG_FORMAT_LEASE_GUARD) {
            lockstep_core::Rules::CURRENT
        } else {
            lockstep_core::Rules::BEFORE_LEASE_GUARD
        };
        lockstep_core::Rules {
            mutation: crate::mutation::active(),
            ..rules
        }
    }
}
