//! Audit records: the structured proof of one state change (DESIGN §5).
//!
//! The engine produces an [`AuditRecord`] for every applied command. The replicated state
//! machine wraps it in a [`ChainedRecord`] with the global and per-instance sequence numbers,
//! the Raft term and index and the two hash chains, and writes it in the same batch as the
//! change itself.

use serde::{Deserialize, Serialize};

use crate::canonical::{canonical_json, chain_hash};
use crate::time::Timestamp;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditKind {
    Created,
    Transition,
    EventIgnored,
    TimerFired,
    SlaWarning,
    SlaBreach,
    TaskLeased,
    TaskHeartbeat,
    TaskCompleted,
    TaskFailed,
    TaskRetryDue,
    TaskExhausted,
    IncidentResolved,
    /// A definition version was applied to the cluster (not tied to an instance).
    DefinitionApplied,
    /// An operator moved the instance to another definition version (explicit migration).
    Migration,
    /// A worker handed its leased task back (`Tasks/Release`): ready again, the attempt not
    /// counted. Appended last: older records keep their variant indexes.
    TaskReleased,
    /// Named data fields were replaced by digests of their values (`lockstep redact`).
    Redacted,
    /// A webhook subscription was created, paused, resumed or deleted (by an operator, or
    /// paused by delivery giving up). Not tied to an instance, like `DefinitionApplied`.
    /// Appended last.
    SubscriptionChanged,
    /// A schedule was created, paused, resumed or deleted, or the create of one of its ticks
    /// was refused (`lockstep_core::schedule`). Not tied to an instance. Appended last.
    ScheduleChanged,
}

/// The actor as recorded: identity and how it was authenticated, not its raw claims.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActorRecord {
    pub id: String,
    pub kind: String,
    pub roles: Vec<String>,
    pub authn: String,
}

/// One predicate evaluated while deciding the command, and its result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PredicateTrace {
    /// `allow`, `guard`, `create.allow` or `sla.<name>.when`.
    pub role: String,
    pub expression: String,
    pub result: bool,
}

/// What a fired timer records: when it was due, when it fired and how late that was.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerFiring {
    pub timer_id: String,
    pub due_at: Timestamp,
    pub fired_at: Timestamp,
    pub lateness_ms: u64,
}

/// The engine's part of an audit record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub kind: AuditKind,
    pub workflow: String,
    pub instance_id: String,
    pub definition_version: String,
    pub transition: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub actor: ActorRecord,
    pub at: Timestamp,
    /// The instance version after the change.
    pub instance_version: u64,
    /// Hex SHA-256 of the canonical payload, if the command carried one.
    pub payload_digest: Option<String>,
    pub predicates: Vec<PredicateTrace>,
    pub timer: Option<TimerFiring>,
    pub task_id: Option<String>,
    pub sla: Option<String>,
    /// Anything else worth knowing, in one sentence (e.g. why a breach action did not apply).
    pub note: Option<String>,
}

/// An audit record as stored: sequenced, located in the Raft log and hash-chained.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChainedRecord {
    pub global_seq: u64,
    pub instance_seq: u64,
    pub raft_term: u64,
    pub raft_index: u64,
    pub record: AuditRecord,
    /// Hex hash of the previous record in the global chain (zeros for the first).
    pub prev_hash: String,
    /// Hex hash of the previous record of the same instance (zeros for the first).
    pub instance_prev_hash: String,
    /// Hex hash of this record in the global chain.
    pub hash: String,
    /// Hex hash of this record in the instance chain.
    pub instance_hash: String,
}

/// The bytes both chains hash: everything but the hashes themselves.
fn chained_body(
    global_seq: u64,
    instance_seq: u64,
    raft_term: u64,
    raft_index: u64,
    record: &AuditRecord,
) -> Vec<u8> {
    canonical_json(&(global_seq, instance_seq, raft_term, raft_index, record))
}

impl ChainedRecord {
    /// Links `record` after the given chain heads.
    pub fn link(
        record: AuditRecord,
        global_seq: u64,
        instance_seq: u64,
        raft_term: u64,
        raft_index: u64,
        prev: [u8; 32],
        instance_prev: [u8; 32],
    ) -> ChainedRecord {
        let body = chained_body(global_seq, instance_seq, raft_term, raft_index, &record);
        ChainedRecord {
            global_seq,
            instance_seq,
            raft_term,
            raft_index,
            hash: hex::encode(chain_hash(&prev, &body)),
            instance_hash: hex::encode(chain_hash(&instance_prev, &body)),
            prev_hash: hex::encode(prev),
            instance_prev_hash: hex::encode(instance_prev),
            record,
        }
    }

    /// Recomputes both hashes from the record's content and the given previous hashes;
    /// true if they match what is stored.
    pub fn verify(&self, prev: &[u8; 32], instance_prev: &[u8; 32]) -> bool {
        let body = chained_body(
            self.global_seq,
            self.instance_seq,
            self.raft_term,
            self.raft_index,
            &self.record,
        );
        self.prev_hash == hex::encode(prev)
            && self.instance_prev_hash == hex::encode(instance_prev)
            && self.hash == hex::encode(chain_hash(prev, &body))
            && self.instance_hash == hex::encode(chain_hash(instance_prev, &body))
    }
}

/// Decodes a hex hash as stored in a record.
pub fn decode_hash(text: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(text).ok()?;
    bytes.try_into().ok()
}
