//! Fencing (DESIGN §6): a task's work is accepted only from the worker holding its current,
//! unexpired lease, and at most once.
//!
//! From the healed audit log alone the checker rebuilds every task's leases: the n-th
//! `task_leased` record of a task is attempt n, granted in the Raft term of the entry that
//! wrote it, expiring [`LEASE_TIMEOUT_MS`] after it (or after its last `task_heartbeat`); a
//! `task_completed` or `task_failed` record ends it. Then:
//! - no task is completed twice, in the log or among acknowledged completions;
//! - every acknowledged completion's audit record (found by its tagged result) was accepted
//!   under the token the worker presented, while that lease was current and unexpired at the
//!   record's cluster time (a stale token accepted before the current holder completes, or a
//!   completion after the lease expired, fails the run even if nothing completes twice);
//! - a run in which workers completed no task fails: it would prove nothing about fencing.
//!
//! The chaos workers only lease and complete (no heartbeats, no explicit failures), so those
//! are the operations checked; heartbeat records extend the lease all the same.

use std::collections::BTreeMap;

use super::{CheckReport, Observation, fmt_time};
use crate::history::{OpKind, Outcome, Token, tag_digest};
use crate::workflow::LEASE_TIMEOUT_MS;

/// A task's lease as the log granted it.
#[derive(Clone, Copy, Debug)]
struct Lease {
    token: Token,
    /// When it expires unless extended (cluster time, µs).
    expires_us: i64,
}

pub fn check(obs: &Observation) -> CheckReport {
    let mut report = CheckReport::new("tasks");
    let mut completed: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    let mut leases: BTreeMap<&str, (u32, Option<Lease>)> = BTreeMap::new();
    // The lease that was current just before each task record, by the record's sequence.
    let mut before: BTreeMap<u64, Option<Lease>> = BTreeMap::new();
    let mut granted = 0u64;
    for r in &obs.audit {
        if !r.kind.starts_with("task_") {
            continue;
        }
        let t = r.task_id.as_deref().unwrap_or(r.instance_id.as_str());
        let (count, current) = leases.entry(t).or_default();
        before.insert(r.seq, *current);
        match r.kind.as_str() {
            "task_leased" => {
                *count += 1;
                granted += 1;
                *current = Some(Lease {
                    token: Token {
                        term: r.raft_term,
                        attempt: *count,
                    },
                    expires_us: r.at_us + LEASE_TIMEOUT_MS * 1000,
                });
            }
            "task_heartbeat" => {
                if let Some(l) = current {
                    l.expires_us = r.at_us + LEASE_TIMEOUT_MS * 1000;
                }
            }
            "task_completed" => {
                completed.entry(t).or_default().push(r.seq);
                *current = None;
            }
            "task_failed" => *current = None,
            _ => {}
        }
    }
    report.checked = leases.len() as u64;
    for (task, seqs) in &completed {
        if seqs.len() > 1 {
            report.problems.push(format!(
                "task {task} was completed {} times (audit records {seqs:?})",
                seqs.len()
            ));
        }
    }
    let by_digest: BTreeMap<&str, &super::AuditEntry> = obs
        .audit
        .iter()
        .filter(|r| r.kind.starts_with("task_"))
        .filter_map(|r| r.payload_digest.as_deref().map(|d| (d, r)))
        .collect();
    let mut acked: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    let mut fenced = 0u64;
    for op in &obs.ops {
        if op.kind != OpKind::Complete || op.outcome != Outcome::Ok {
            continue;
        }
        let Some(t) = &op.task_id else { continue };
        acked.entry(t).or_default().push(op.id);
        // A completion missing from the log is the writes checker's finding.
        let Some(record) = op
            .tag
            .as_deref()
            .and_then(|tag| by_digest.get(tag_digest(tag).as_str()))
        else {
            continue;
        };
        fenced += 1;
        let held = before.get(&record.seq).copied().flatten();
        match (op.token, held) {
            (None, _) => report.problems.push(format!(
                "op {}: an acknowledged completion of task {t} recorded no lease token",
                op.id
            )),
            (Some(token), None) => report.problems.push(format!(
                "op {}: the completion of task {t} with token term {} attempt {} was accepted (audit record {}) while nobody held a lease on it",
                op.id, token.term, token.attempt, record.seq
            )),
            (Some(token), Some(lease)) if token != lease.token => {
                report.problems.push(format!(
                    "op {}: the completion of task {t} with the stale token term {} attempt {} was accepted (audit record {}), though the current lease was term {} attempt {}",
                    op.id, token.term, token.attempt, record.seq, lease.token.term, lease.token.attempt
                ))
            }
            (Some(token), Some(lease)) if record.at_us >= lease.expires_us => {
                report.problems.push(format!(
                    "op {}: the completion of task {t} (term {} attempt {}) was accepted at {} (audit record {}), after its lease expired at {}",
                    op.id,
                    token.term,
                    token.attempt,
                    fmt_time(record.at_us),
                    record.seq,
                    fmt_time(lease.expires_us)
                ))
            }
            _ => {}
        }
    }
    for (task, ops) in &acked {
        if ops.len() > 1 {
            report.problems.push(format!(
                "task {task}: {} completions were acknowledged (ops {ops:?})",
                ops.len()
            ));
        }
    }
    if granted == 0 || fenced == 0 {
        report.problems.insert(
            0,
            format!(
                "no task work to check: {granted} leases granted, {fenced} acknowledged completions found in the log; a run without task work proves nothing about fencing"
            ),
        );
    }
    report.notes.push(format!(
        "{} tasks, {granted} leases, {} completed, {fenced} acknowledged completions fenced",
        leases.len(),
        completed.len()
    ));
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::testkit::*;
    use crate::history::OpKind;

    /// Task 1 of i1 leased (term 1, attempt 1) at 30 ms and completed by op 4 at 40 ms.
    fn with_task() -> Observation {
        let mut obs = good();
        let mut leased = record(3, "i1", 3, "task_leased", None, (None, None), 30, None);
        leased.task_id = Some("task-1".into());
        obs.audit.push(leased);
        let mut done = record(
            4,
            "i1",
            4,
            "task_completed",
            Some("finish"),
            (Some("working"), Some("done")),
            40,
            Some(4),
        );
        done.task_id = Some("task-1".into());
        obs.audit.push(done);
        obs.ops.push(completion(4, (35, 45), 1));
        obs
    }

    fn completion(id: u64, t: (u64, u64), attempt: u32) -> crate::history::Op {
        let mut c = op(id, OpKind::Complete, "k1", t, Outcome::Ok);
        c.task_id = Some("task-1".into());
        c.token = Some(Token { term: 1, attempt });
        c
    }

    #[test]
    fn one_completion_under_the_current_lease_passes() {
        let r = check(&with_task());
        assert!(r.ok(), "{:?}", r.problems);
        assert_eq!(r.checked, 1);
    }

    #[test]
    fn a_task_completed_twice_fails() {
        let mut obs = with_task();
        let mut again = obs.audit[3].clone();
        again.seq = 5;
        again.payload_digest = None;
        obs.audit.push(again);
        obs.ops.push(completion(5, (50, 60), 1));
        let r = check(&obs);
        assert!(
            r.problems.iter().any(|p| p.contains("completed 2 times")),
            "{:?}",
            r.problems
        );
        assert!(
            r.problems
                .iter()
                .any(|p| p.contains("2 completions were acknowledged"))
        );
    }

    #[test]
    fn records_without_a_task_id_count_per_instance() {
        let mut obs = with_task();
        for r in &mut obs.audit {
            r.task_id = None;
        }
        for o in &mut obs.ops {
            o.task_id = o.task_id.as_ref().map(|_| "i1".into());
        }
        assert!(check(&obs).ok(), "{:?}", check(&obs).problems);
        let mut again = obs.audit[3].clone();
        again.seq = 5;
        again.payload_digest = None;
        obs.audit.push(again);
        assert!(check(&obs).problems[0].contains("task i1 was completed 2 times"));
    }

    #[test]
    fn a_refused_second_completion_passes() {
        let mut obs = with_task();
        let mut c = completion(5, (50, 60), 1);
        c.outcome = Outcome::Fail;
        c.code = Some("STALE_LEASE".into());
        obs.ops.push(c);
        assert!(check(&obs).ok());
    }

    /// The bug the old checker could not see: the lease expired and went to another worker
    /// (attempt 2), the first worker's late completion was accepted, and the second holder's
    /// completion was then refused, so nothing completed twice.
    #[test]
    fn a_stale_token_accepted_before_the_current_holder_completes_fails() {
        let mut obs = with_task();
        obs.audit[3].kind = "task_failed".into();
        obs.audit[3].payload_digest = None;
        obs.ops.pop();
        let mut again = record(5, "i1", 5, "task_leased", None, (None, None), 2_100, None);
        again.task_id = Some("task-1".into());
        obs.audit.push(again);
        let mut done = record(
            6,
            "i1",
            6,
            "task_completed",
            None,
            (None, None),
            2_200,
            Some(7),
        );
        done.task_id = Some("task-1".into());
        obs.audit.push(done);
        obs.ops.push(completion(7, (2_150, 2_250), 1));
        let r = check(&obs);
        assert!(
            r.problems
                .iter()
                .any(|p| p.contains("stale token term 1 attempt 1")
                    && p.contains("current lease was term 1 attempt 2")),
            "{:?}",
            r.problems
        );
        // The same completion under the current token passes.
        obs.ops.last_mut().unwrap().token = Some(Token {
            term: 1,
            attempt: 2,
        });
        assert!(check(&obs).ok(), "{:?}", check(&obs).problems);
    }

    #[test]
    fn a_completion_after_the_lease_expired_fails() {
        let mut obs = with_task();
        obs.audit[3].at_us = T0 + 2_100_000;
        let r = check(&obs);
        assert!(
            r.problems
                .iter()
                .any(|p| p.contains("after its lease expired")),
            "{:?}",
            r.problems
        );
        // A heartbeat in between extends it.
        let mut beat = record(
            5,
            "i1",
            4,
            "task_heartbeat",
            None,
            (None, None),
            1_000,
            None,
        );
        beat.task_id = Some("task-1".into());
        obs.audit.insert(3, beat);
        obs.audit[4].seq = 6;
        assert!(check(&obs).ok(), "{:?}", check(&obs).problems);
    }

    #[test]
    fn a_run_without_task_work_fails() {
        let r = check(&good());
        assert!(
            r.problems[0].contains("no task work to check"),
            "{:?}",
            r.problems
        );
    }
}
