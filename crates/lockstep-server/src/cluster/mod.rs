//! The cluster: the Raft runtime's vocabulary shared by every part of the write path, and the
//! parts of it that depend on nothing above them: [`batcher`] (group commit, lanes) and
//! [`read_index`] (shared quorum rounds for linearizable reads).
//!
//! Nothing here imports the rest of the server (metrics, trust, the security log, timers,
//! the API): those are built on the cluster, never the other way round
//! (`tests/import_graph.rs` keeps it so).

use std::time::Duration;

use lockstep_core::Timestamp;
use lockstep_raft::{Body, NodeId, Response};
use serde::{Deserialize, Serialize};

pub mod batcher;
pub mod read_index;

pub use batcher::Lane;

/// How long a write may take, retries and forwarding included, before the caller is told the
/// outcome is unknown (and should retry with the same request id).
pub const WRITE_DEADLINE: Duration = Duration::from_secs(10);
/// Pause between attempts while no leader is known.
pub(crate) const NO_LEADER_BACKOFF: Duration = Duration::from_millis(50);

/// What a follower asks of the leader.
// Built once per forwarded call and serialized at once: the size of `Write` costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Serialize, Deserialize)]
pub enum ForwardRequest {
    Write {
        request_id: Option<String>,
        body: Body,
    },
    ReadIndex,
    AddLearner {
        id: NodeId,
        addr: String,
    },
    Promote {
        ids: Vec<NodeId>,
    },
    Remove {
        id: NodeId,
    },
    /// The highest log format the node's build reads (`format_gate.rs`). Last, so that older
    /// builds, which cannot decode it, refuse it (and so are never counted as ready).
    LogFormat,
    /// The node's wall clock now, in microseconds (the clock offset guard, `clock.rs`). After
    /// `LogFormat`, for the same reason: builds that cannot answer it refuse to decode it.
    Clock,
    /// Name this node's audit chain head and, when `verify`, verify the chain from its first
    /// record (O(records)): the console's audit page shows every node's side by side. Last:
    /// older builds refuse to decode it.
    CheckChain {
        verify: bool,
    },
    /// The node's role, term, log indexes, disk and (when asked, an O(state) read) state
    /// digest: the console's cluster page shows every member's side by side. Last, as above.
    Describe {
        digest: bool,
    },
}

/// How one member sees itself (`ForwardRequest::Describe`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    pub node_id: NodeId,
    pub role: String,
    pub term: u64,
    pub leader_id: Option<NodeId>,
    pub last_log_index: u64,
    pub applied_index: u64,
    /// Empty unless asked for.
    pub digest: String,
    /// The space alarm's refusal, when raised.
    pub space_alarm: Option<String>,
    pub free_bytes: u64,
}

/// One node's audit chain head, and its verification when asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainCheck {
    pub node_id: NodeId,
    /// Whether the chain was verified; then the records verified from the first, and the
    /// first broken one and why, if any.
    pub verified: bool,
    pub checked: u64,
    pub broken: Option<(u64, String)>,
    pub head_seq: u64,
    pub head_hash: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum ForwardReply {
    Written(Response),
    ReadIndex(u64),
    Membership(Vec<(NodeId, String, bool)>),
    LogFormat(u32),
    Clock(i64),
    ChainChecked(ChainCheck),
    Described(MemberView),
}

/// Why a write or membership change did not produce a response.
#[derive(Clone, Debug, Serialize, Deserialize, thiserror::Error)]
pub enum WriteError {
    #[error("this node is not the leader (leader: {leader_id:?} at {leader_addr:?})")]
    NotLeader {
        leader_id: Option<NodeId>,
        leader_addr: Option<String>,
    },
    #[error(
        "no leader could be reached within {0:?}; the write may or may not have been applied: retry with the same request id"
    )]
    Timeout(Duration),
    #[error("{0}")]
    Invalid(String),
    #[error("the node is shutting down or failed: {0}")]
    Fatal(String),
    /// Refused for now by a condition that clears by itself (retry later). Last, so the
    /// forwarding wire encoding of the older variants stays the same across versions.
    #[error("{0}")]
    Busy(String),
    /// Refused before it was proposed because the node is at its admission limit
    /// (`admission.rs`): nothing changed; retry after the hint with the same request id.
    #[error("{message}")]
    Overloaded {
        message: String,
        retry_after_ms: u64,
    },
    /// Refused before it was proposed because the caller is over its quota (`quota.rs`).
    #[error("{message}")]
    QuotaExceeded {
        message: String,
        retry_after_ms: u64,
        quota: String,
    },
    /// Refused before it was proposed because the node is short of disk space (`space.rs`):
    /// nothing changed; retry once space returns, with the same request id.
    #[error("{message}")]
    NoSpace {
        message: String,
        retry_after_ms: u64,
    },
}

/// What a write was answered: the applied response and, when a follower forwarded it, the
/// leader's address (the API puts it in the answer's `x-lockstep-leader` header).
#[derive(Debug)]
pub struct Written {
    pub response: Response,
    pub forwarded_to: Option<String>,
}

/// The leader's wall clock, the only clock in the write path (apply never reads one).
pub fn wall_clock() -> Timestamp {
    Timestamp::from_jiff(jiff::Timestamp::now())
}

/// The leader named by `id` and `addr`, if both are known and it is not node `me`.
pub(crate) fn other_leader(
    me: NodeId,
    id: Option<NodeId>,
    addr: Option<String>,
) -> Option<(NodeId, String)> {
    id.zip(addr).filter(|(id, _)| *id != me)
}
