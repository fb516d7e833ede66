//! The checkers: each takes what a run observed ([`Observation`]) and returns a
//! [`CheckReport`] saying what it checked and every violation it found.

use std::collections::BTreeMap;

use lockstep_client::{AuditRecord, Named};
use lockstep_core::Timestamp;
use lockstep_core::audit::ChainedRecord;
use serde::{Deserialize, Serialize};

use crate::history::Op;

pub mod chain;
pub mod convergence;
pub mod feed;
pub mod linear;
pub mod stamps;
pub mod tasks;
pub mod timers;
pub mod writes;

/// A timer firing as recorded in an audit record (cluster time, µs since the epoch).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerFire {
    pub timer_id: String,
    pub due_us: i64,
    pub fired_us: i64,
}

/// The facts of one audit record the checkers use.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    pub hash: String,
    /// The Raft term of the entry that wrote it (a lease's term, for `task_leased`).
    #[serde(default)]
    pub raft_term: u64,
    /// The chain links as the record carries them (hex): the previous record's hash in the
    /// global chain, its place and the previous hash in its instance's chain, and its own
    /// instance hash.
    #[serde(default)]
    pub prev_hash: String,
    #[serde(default)]
    pub instance_seq: u64,
    #[serde(default)]
    pub instance_prev_hash: String,
    #[serde(default)]
    pub instance_hash: String,
    /// Whether hashing the record's own content again (by the harness, not the server) gives
    /// the hashes it carries.
    #[serde(default = "yes")]
    pub rehashed_ok: bool,
    pub instance_id: String,
    /// The instance's workflow (empty for records that name none, and in observations saved
    /// before it was recorded, which held the checked workflow only).
    #[serde(default)]
    pub workflow: String,
    /// The instance version after the change.
    pub version: u64,
    /// `created`, `transition`, `timer_fired`, `sla_breach`, `task_leased`, …
    pub kind: String,
    pub transition: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    /// Cluster time, µs since the epoch.
    pub at_us: i64,
    pub payload_digest: Option<String>,
    pub task_id: Option<String>,
    pub timer: Option<TimerFire>,
    pub sla: Option<String>,
}

fn yes() -> bool {
    true
}

impl AuditEntry {
    /// The entry of a record read from the feed. The hashes are recomputed from the record's
    /// complete JSON (`record_json`, the canonical form the chains cover), not taken on trust.
    pub fn from_record(r: &AuditRecord) -> anyhow::Result<AuditEntry> {
        let c: ChainedRecord = serde_json::from_str(&r.record_json)
            .map_err(|e| anyhow::anyhow!("audit record {}: {e}", r.global_seq))?;
        let rec = &c.record;
        let hash = |h: &str| lockstep_core::audit::decode_hash(h);
        let rehashed_ok = match (hash(&c.prev_hash), hash(&c.instance_prev_hash)) {
            (Some(prev), Some(instance_prev)) => {
                let again = ChainedRecord::link(
                    c.record.clone(),
                    c.global_seq,
                    c.instance_seq,
                    c.raft_term,
                    c.raft_index,
                    prev,
                    instance_prev,
                );
                again.hash == c.hash && again.instance_hash == c.instance_hash
            }
            _ => false,
        };
        Ok(AuditEntry {
            seq: c.global_seq,
            hash: c.hash.clone(),
            raft_term: c.raft_term,
            prev_hash: c.prev_hash.clone(),
            instance_seq: c.instance_seq,
            instance_prev_hash: c.instance_prev_hash.clone(),
            instance_hash: c.instance_hash.clone(),
            rehashed_ok,
            instance_id: rec.instance_id.clone(),
            workflow: rec.workflow.clone(),
            version: rec.instance_version,
            kind: r.record.kind.name(),
            transition: rec.transition.clone(),
            from: rec.from.clone(),
            to: rec.to.clone(),
            at_us: rec.at.as_micros(),
            payload_digest: rec.payload_digest.clone(),
            task_id: rec.task_id.clone(),
            timer: rec.timer.as_ref().map(|t| TimerFire {
                timer_id: t.timer_id.clone(),
                due_us: t.due_at.as_micros(),
                fired_us: t.fired_at.as_micros(),
            }),
            sla: rec.sla.clone(),
        })
    }
}

/// An instance as read (linearizably) after the cluster healed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalInstance {
    pub key: String,
    pub id: String,
    pub state: String,
    pub version: u64,
    /// The `work` SLA: (breached, consumed ms), if the instance has one.
    pub sla: Option<(bool, u64)>,
    /// Its armed timers: (id, due µs).
    #[serde(default)]
    pub timers: Vec<(String, i64)>,
    /// Its tasks: (id, status as the engine names it: `ready`, `leased`, `backoff`, …).
    #[serde(default)]
    pub tasks: Vec<(String, String)>,
}

/// One replica after healing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replica {
    pub node: u64,
    pub applied_index: u64,
    pub digest: String,
    pub audit_ok: bool,
    pub audit_reason: String,
    pub head_seq: u64,
    pub head_hash: String,
}

/// Everything a run observed, as the checkers see it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Observation {
    pub ops: Vec<Op>,
    /// The whole change feed after healing, in global order.
    pub audit: Vec<AuditEntry>,
    /// Final state by business key.
    pub finals: BTreeMap<String, FinalInstance>,
    pub replicas: Vec<Replica>,
    /// (seq, hash) of every record the change-feed consumer received during the run, in the
    /// order received (across reconnections to other nodes).
    pub feed: Vec<(u64, String)>,
    /// Cluster time at the end (µs).
    pub end_cluster_us: i64,
    /// The fault windows (µs since the run started), to tell when the cluster was healthy.
    #[serde(default)]
    pub faults: Vec<crate::history::FaultWindow>,
    /// Wall-clock time (µs since the epoch) at which the run started, mapping cluster times
    /// to the fault windows; 0 in observations saved before it was recorded.
    #[serde(default)]
    pub start_wall_us: i64,
    /// The largest clock offset of any node (µs): cluster time may be that far off the
    /// harness's clock.
    #[serde(default)]
    pub clock_offset_us: i64,
}

/// How long after a fault heals the cluster may still be recovering (elections, restarts,
/// a log replayed after a power cut) before it counts as healthy again.
pub const RECOVERY_US: i64 = 3_000_000;

impl Observation {
    /// Whether the cluster was healthy (no fault, nor within [`RECOVERY_US`] after one) all
    /// through `[from, to]` (cluster time, µs); `None` when the run did not record the
    /// mapping of cluster time to its fault windows.
    pub fn healthy_between(&self, from_us: i64, to_us: i64) -> Option<bool> {
        if self.start_wall_us == 0 {
            return None;
        }
        let margin = self.clock_offset_us;
        let (from, to) = (
            from_us - self.start_wall_us - margin,
            to_us - self.start_wall_us + margin,
        );
        Some(self.faults.iter().all(|f| {
            let (start, end) = (f.start_us as i64, f.end_us as i64 + RECOVERY_US);
            to < start || from > end
        }))
    }
}

impl Observation {
    /// Audit records of the checked workflow's instances ([`crate::workflow::NAME`]) by
    /// instance id, in order. Instances of other workflows (the overload bursts') have none
    /// of its timers, SLAs or tasks.
    pub fn by_instance(&self) -> BTreeMap<&str, Vec<&AuditEntry>> {
        let mut out: BTreeMap<&str, Vec<&AuditEntry>> = BTreeMap::new();
        for r in &self.audit {
            let checked = r.workflow.is_empty() || r.workflow == crate::workflow::NAME;
            if !r.instance_id.is_empty() && checked {
                out.entry(r.instance_id.as_str()).or_default().push(r);
            }
        }
        out
    }

    /// Business key by instance id.
    pub fn key_of(&self) -> BTreeMap<&str, &str> {
        self.finals
            .values()
            .map(|f| (f.id.as_str(), f.key.as_str()))
            .collect()
    }
}

/// What one checker found.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CheckReport {
    pub name: String,
    /// How many things it checked (instances, operations, records, replicas).
    pub checked: u64,
    pub problems: Vec<String>,
    /// Things worth knowing that are not violations.
    pub notes: Vec<String>,
}

impl CheckReport {
    pub fn new(name: &str) -> CheckReport {
        CheckReport {
            name: name.into(),
            ..CheckReport::default()
        }
    }

    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Runs every checker.
pub fn run_all(obs: &Observation) -> Vec<CheckReport> {
    vec![
        linear::check(obs),
        writes::check(obs),
        convergence::check(obs),
        timers::check(obs),
        tasks::check(obs),
        feed::check(obs),
        chain::check(obs),
        stamps::check(obs),
    ]
}

pub fn fmt_time(us: i64) -> String {
    Timestamp::from_micros(us).to_string()
}

/// Builders for the checkers' unit tests.
#[cfg(test)]
pub(crate) mod testkit {
    use super::*;
    use crate::history::{OpKind, Outcome, tag_digest};

    pub const T0: i64 = 1_800_000_000_000_000;

    pub fn op(id: u64, kind: OpKind, key: &str, t: (u64, u64), outcome: Outcome) -> Op {
        Op {
            id,
            process: (id % 3) as u32,
            kind,
            key: key.into(),
            transition: None,
            tag: if kind == OpKind::Read {
                None
            } else {
                Some(format!("t{id}"))
            },
            task_id: None,
            token: None,
            instance: None,
            invoke_us: t.0,
            complete_us: t.1,
            outcome,
            state: None,
            version: None,
            seq: None,
            code: None,
            error: None,
        }
    }

    pub fn create(id: u64, key: &str, t: (u64, u64)) -> Op {
        Op {
            state: Some("open".into()),
            version: Some(1),
            ..op(id, OpKind::Create, key, t, Outcome::Ok)
        }
    }

    pub fn transition(
        id: u64,
        key: &str,
        name: &str,
        t: (u64, u64),
        outcome: Outcome,
        result: Option<(&str, u64)>,
    ) -> Op {
        Op {
            transition: Some(name.into()),
            state: result.map(|r| r.0.into()),
            version: result.map(|r| r.1),
            code: (outcome == Outcome::Fail).then(|| "NOT_ALLOWED_FROM_STATE".into()),
            ..op(id, OpKind::Transition, key, t, outcome)
        }
    }

    pub fn read(id: u64, key: &str, t: (u64, u64), state: &str, version: u64) -> Op {
        Op {
            state: Some(state.into()),
            version: Some(version),
            ..op(id, OpKind::Read, key, t, Outcome::Ok)
        }
    }

    /// An audit record; `by` is the op whose tag it carries.
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        seq: u64,
        instance: &str,
        version: u64,
        kind: &str,
        transition: Option<&str>,
        from_to: (Option<&str>, Option<&str>),
        at_ms: i64,
        by: Option<u64>,
    ) -> AuditEntry {
        AuditEntry {
            seq,
            hash: format!("h{seq}"),
            raft_term: 1,
            prev_hash: String::new(),
            instance_seq: 0,
            instance_prev_hash: String::new(),
            instance_hash: String::new(),
            rehashed_ok: true,
            instance_id: instance.into(),
            workflow: crate::workflow::NAME.into(),
            version,
            kind: kind.into(),
            transition: transition.map(Into::into),
            from: from_to.0.map(Into::into),
            to: from_to.1.map(Into::into),
            at_us: T0 + at_ms * 1000,
            payload_digest: by.map(|id| tag_digest(&format!("t{id}"))),
            task_id: None,
            timer: None,
            sla: None,
        }
    }

    pub fn fin(key: &str, id: &str, state: &str, version: u64) -> FinalInstance {
        FinalInstance {
            key: key.into(),
            id: id.into(),
            state: state.into(),
            version,
            sla: None,
            timers: Vec::new(),
            tasks: Vec::new(),
        }
    }

    /// A small consistent run: create k1 (op 1), start it (op 2), read it (op 3).
    pub fn good() -> Observation {
        let ops = vec![
            create(1, "k1", (0, 10)),
            transition(
                2,
                "k1",
                "start",
                (20, 30),
                Outcome::Ok,
                Some(("working", 2)),
            ),
            read(3, "k1", (40, 50), "working", 2),
        ];
        let audit = vec![
            record(
                1,
                "i1",
                1,
                "created",
                None,
                (None, Some("open")),
                5,
                Some(1),
            ),
            record(
                2,
                "i1",
                2,
                "transition",
                Some("start"),
                (Some("open"), Some("working")),
                25,
                Some(2),
            ),
        ];
        let mut finals = BTreeMap::new();
        finals.insert("k1".to_string(), fin("k1", "i1", "working", 2));
        let replicas = (1..=3)
            .map(|n| Replica {
                node: n,
                applied_index: 9,
                digest: "d".into(),
                audit_ok: true,
                audit_reason: String::new(),
                head_seq: 2,
                head_hash: "h2".into(),
            })
            .collect();
        Observation {
            ops,
            feed: audit.iter().map(|r| (r.seq, r.hash.clone())).collect(),
            audit,
            finals,
            replicas,
            end_cluster_us: T0 + 1_000_000,
            ..Observation::default()
        }
    }
}
