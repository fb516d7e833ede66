//! The security log: refused attempts seen by this node (DESIGN §5), kept apart from the
//! audit trail, which records only changes.
//!
//! Each node keeps the newest [`SECURITY_LOG_ENTRIES_MAX`] refusals in memory (a ring: the
//! oldest entry goes when a new one arrives) and also writes each one to its log through
//! `tracing` (target `lockstep::security`), where a log pipeline can keep them for longer.
//! `Audit/SecurityLog` (`lockstep audit security`) reads the ring.
//!
//! What is recorded:
//! - `authentication`: a public call without valid credentials (no or bad token, a node
//!   certificate used as a client identity).
//! - `authorization`: the cluster policy refused an authenticated actor, or a call needs an
//!   actor of another kind (tasks are for workers).
//! - `engine`: the engine refused a command this node received for a trust reason
//!   (`FORBIDDEN`, `SYSTEM_ONLY`) or a time gate (`GATE_NOT_YET_OPEN`, `GATE_EXPIRED`).
//! - `peer`: a Raft or forwarding message from a caller that is not a member node with a
//!   certificate naming it. (A certificate from another CA never gets that far: the TLS
//!   handshake fails.)

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::Serialize;

use crate::cluster::wall_clock;

/// Most entries a node keeps; older ones are dropped first.
pub const SECURITY_LOG_ENTRIES_MAX: usize = 1024;
/// Largest text kept for a refusal's reason (longer reasons are cut).
const REASON_BYTES_MAX: usize = 1024;

/// What kind of refusal an entry records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalKind {
    Authentication,
    Authorization,
    Engine,
    Peer,
    /// A connection whose TLS handshake failed (no certificate chain to the cluster CA, a
    /// protocol error): nothing of it reached a service.
    Tls,
}

impl RefusalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalKind::Authentication => "authentication",
            RefusalKind::Authorization => "authorization",
            RefusalKind::Engine => "engine",
            RefusalKind::Peer => "peer",
            RefusalKind::Tls => "tls",
        }
    }
}

/// One refused attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SecurityEvent {
    /// Position in this node's log, from 1; gaps mean nothing (numbers are never reused).
    pub seq: u64,
    /// This node's wall clock (RFC 3339).
    pub at: String,
    pub kind: RefusalKind,
    /// The gRPC method, e.g. `/lockstep.v1.Definitions/Apply`, or the refused command.
    pub method: String,
    /// Who: the authenticated actor id, `node <id>` for peers, or empty when unknown.
    pub actor: String,
    /// The caller's address, when known.
    pub remote: String,
    /// A refusal code (`FORBIDDEN`, `GATE_EXPIRED`, …) or the gRPC code name.
    pub code: String,
    pub reason: String,
}

/// A bounded, in-memory log of refusals; cheap to append to from any task.
#[derive(Debug)]
pub struct SecurityLog {
    capacity: usize,
    inner: Mutex<Ring>,
}

#[derive(Debug, Default)]
struct Ring {
    entries: VecDeque<SecurityEvent>,
    next_seq: u64,
}

/// What a read of the log returns.
#[derive(Debug)]
pub struct Page {
    pub entries: Vec<SecurityEvent>,
    /// Entries recorded so far on this node, including those no longer kept.
    pub total: u64,
}

impl Default for SecurityLog {
    fn default() -> Self {
        SecurityLog::with_capacity(SECURITY_LOG_ENTRIES_MAX)
    }
}

impl SecurityLog {
    pub fn with_capacity(capacity: usize) -> SecurityLog {
        SecurityLog {
            capacity: capacity.max(1),
            inner: Mutex::new(Ring::default()),
        }
    }

    /// Records a refusal here and in the node's log.
    pub fn record(
        &self,
        kind: RefusalKind,
        method: &str,
        actor: &str,
        remote: &str,
        code: &str,
        reason: &str,
    ) {
        let reason = truncate(reason, REASON_BYTES_MAX);
        tracing::warn!(
            target: "lockstep::security",
            kind = kind.as_str(),
            method,
            actor,
            remote,
            code,
            reason = %reason,
            "refused"
        );
        let mut ring = self.inner.lock().expect("security log lock");
        ring.next_seq += 1;
        let event = SecurityEvent {
            seq: ring.next_seq,
            at: wall_clock().to_string(),
            kind,
            method: truncate(method, REASON_BYTES_MAX),
            actor: truncate(actor, REASON_BYTES_MAX),
            remote: remote.to_string(),
            code: code.to_string(),
            reason,
        };
        if ring.entries.len() == self.capacity {
            ring.entries.pop_front();
        }
        ring.entries.push_back(event);
    }

    /// Up to `limit` kept entries with `seq > after`, oldest first.
    pub fn read(&self, after: u64, limit: usize) -> Page {
        let ring = self.inner.lock().expect("security log lock");
        Page {
            entries: ring
                .entries
                .iter()
                .filter(|e| e.seq > after)
                .take(limit)
                .cloned()
                .collect(),
            total: ring.next_seq,
        }
    }

    pub fn len(&self) -> usize {
        self.inner.lock().expect("security log lock").entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_entries_up_to_its_capacity() {
        let log = SecurityLog::with_capacity(3);
        for i in 0..5 {
            log.record(
                RefusalKind::Authentication,
                "/lockstep.v1.Instances/Create",
                "",
                "127.0.0.1:1",
                "UNAUTHENTICATED",
                &format!("attempt {i}"),
            );
        }
        assert_eq!(log.len(), 3);
        let page = log.read(0, 100);
        assert_eq!(page.total, 5);
        let seqs: Vec<u64> = page.entries.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![3, 4, 5]);
        assert_eq!(page.entries[0].reason, "attempt 2");
        // Reading after a cursor and with a limit.
        let page = log.read(3, 1);
        assert_eq!(page.entries.len(), 1);
        assert_eq!(page.entries[0].seq, 4);
    }

    #[test]
    fn the_default_log_is_bounded_by_the_constant() {
        let log = SecurityLog::default();
        for _ in 0..SECURITY_LOG_ENTRIES_MAX + 10 {
            log.record(
                RefusalKind::Peer,
                "m",
                "node 9",
                "",
                "PERMISSION_DENIED",
                "x",
            );
        }
        assert_eq!(log.len(), SECURITY_LOG_ENTRIES_MAX);
        assert_eq!(
            log.read(0, usize::MAX).entries[0].seq,
            11,
            "the oldest entries went first"
        );
    }

    #[test]
    fn long_reasons_are_cut_on_a_character_boundary() {
        let log = SecurityLog::with_capacity(1);
        let reason = "é".repeat(REASON_BYTES_MAX);
        log.record(RefusalKind::Engine, "m", "a", "", "FORBIDDEN", &reason);
        let kept = &log.read(0, 1).entries[0].reason;
        assert!(kept.len() <= REASON_BYTES_MAX + "…".len());
        assert!(kept.ends_with('…'));
    }
}
