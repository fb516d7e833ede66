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
//! The same fencing holds for every acknowledged heartbeat and failure, found by the audit
//! sequence its answer named (a missing or mismatched record fails the run too).

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
    let by_seq: BTreeMap<u64, &super::AuditEntry> = obs.audit.iter().map(|r| (r.seq, r)).collect();
    let mut acked: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    let mut fenced = BTreeMap::<OpKind, u64>::new();
    for op in &obs.ops {
        if op.outcome != Outcome::Ok {
            continue;
        }
        let Some(t) = &op.task_id else { continue };
        let record = match op.kind {
            OpKind::Complete => {
                acked.entry(t).or_default().push(op.id);
                // A completion missing from the log is the writes checker's finding.
                match op
                    .tag
                    .as_deref()
                    .and_then(|tag| by_digest.get(tag_digest(tag).as_str()))
                {
                    Some(r) => *r,
                    None => continue,
                }
            }
            OpKind::Heartbeat | OpKind::Fail => {
                let kind = if op.kind == OpKind::Heartbeat {
                    "task_heartbeat"
                } else {
                    "task_failed"
                };
                let Some(seq) = op.seq else {
                    report.problems.push(format!(
                        "op {}: an acknowledged {kind} of task {t} named no audit record",
                        op.id
                    ));
                    continue;
                };
                match by_seq.get(&seq) {
                    Some(r)
                        if r.kind == kind
                            && r.task_id.as_deref().unwrap_or(&r.instance_id) == t =>
                    {
                        *r
                    }
                    Some(r) => {
                        report.problems.push(format!(
                            "op {}: the acknowledged {kind} of task {t} names audit record {seq}, which is a {} of {}",
                            op.id,
                            r.kind,
                            r.task_id.as_deref().unwrap_or(&r.instance_id)
                        ));
                        continue;
                    }
                    None => {
                        report.problems.push(format!(
                            "op {}: the acknowledged {kind} of task {t} (audit record {seq}) is not in the log after healing: a lost write",
                            op.id
                        ));
                        continue;
                    }
                }
            }
            OpKind::Create | OpKind::Transition | OpKind::Read => continue,
        };
        *fenced.entry(op.kind).or_default() += 1;
        let held = before.get(&record.seq).copied().flatten();
        if let Some(problem) = unfenced(op, t, record, held) {
            report.problems.push(problem);
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
    let count = |k: OpKind| fenced.get(&k).copied().unwrap_or(0);
    if granted == 0 || count(OpKind::Complete) == 0 {
        report.problems.insert(
            0,
            format!(
                "no task work to check: {granted} leases granted, {} acknowledged completions found in the log; a run without task work proves nothing about fencing",
                count(OpKind::Complete)
            ),
        );
    }
    report.notes.push(format!(
        "{} tasks, {granted} leases, {} completed; fenced: {} acknowledged completions, {} heartbeats, {} failures",
        leases.len(),
        completed.len(),
        count(OpKind::Complete),
        count(OpKind::Heartbeat),
        count(OpKind::Fail)
    ));
    report
}

/// Why the acknowledged task operation `op` on task `t`, written as `record`, was not fenced
/// by `held` (the lease current just before the record), if it was not.
fn unfenced(
    op: &crate::history::Op,
    t: &str,
    record: &super::AuditEntry,
    held: Option<Lease>,
) -> Option<String> {
    let what = match op.kind {
        OpKind::Heartbeat => "heartbeat",
        OpKind::Fail => "failure",
        _ => "completion",
    };
    match (op.token, held) {
        (None, _) => Some(format!(
            "op {}: an acknowledged {what} of task {t} recorded no lease token",
            op.id
        )),
        (Some(token), None) => Some(format!(
            "op {}: the {what} of task {t} with token term {} attempt {} was accepted (audit record {}) while nobody held a lease on it",
            op.id, token.term, token.attempt, record.seq
        )),
        (Some(token), Some(lease)) if token != lease.token => Some(format!(
            "op {}: the {what} of task {t} with the stale token term {} attempt {} was accepted (audit record {}), though the current lease was term {} attempt {}",
            op.id, token.term, token.attempt, record.seq, lease.token.term, lease.token.attempt
        )),
        (Some(token), Some(lease)) if record.at_us >= lease.expires_us => Some(format!(
            "op {}: the {what} of task {t} (term {} attempt {}) was accepted at {} (audit record {}), after its lease expired at {}",
            op.id,
            token.term,
            token.attempt,
            fmt_time(record.at_us),
            record.seq,
            fmt_time(lease.expires_us)
        )),
        _ => None,
    }
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

    /// An acknowledged heartbeat of task-1 (op 8, token term 1 attempt `attempt`) that wrote
    /// audit record 5 at `at_ms`, between the lease at 30 ms and the completion.
    fn with_heartbeat(at_ms: i64, attempt: u32) -> Observation {
        let mut obs = with_task();
        let mut beat = record(
            5,
            "i1",
            4,
            "task_heartbeat",
            None,
            (None, None),
            at_ms,
            None,
        );
        beat.task_id = Some("task-1".into());
        obs.audit.insert(3, beat);
        let mut op = completion(8, (32, 38), attempt);
        op.kind = OpKind::Heartbeat;
        op.tag = None;
        op.seq = Some(5);
        obs.ops.push(op);
        obs
    }

    #[test]
    fn an_acknowledged_heartbeat_under_the_current_lease_passes() {
        let r = check(&with_heartbeat(35, 1));
        assert!(r.ok(), "{:?}", r.problems);
        assert!(r.notes[0].contains("1 heartbeats"), "{:?}", r.notes);
    }

    #[test]
    fn an_acknowledged_heartbeat_with_a_stale_token_or_after_expiry_fails() {
        let r = check(&with_heartbeat(35, 2));
        assert!(
            r.problems
                .iter()
                .any(|p| p.contains("the heartbeat of task task-1 with the stale token")),
            "{:?}",
            r.problems
        );
        let r = check(&with_heartbeat(2_100, 1));
        assert!(
            r.problems
                .iter()
                .any(|p| p.contains("heartbeat") && p.contains("after its lease expired")),
            "{:?}",
            r.problems
        );
    }

    #[test]
    fn an_acknowledged_heartbeat_whose_record_is_missing_or_another_fails() {
        let mut obs = with_heartbeat(35, 1);
        obs.audit.remove(3);
        let r = check(&obs);
        assert!(
            r.problems.iter().any(|p| p.contains("a lost write")),
            "{:?}",
            r.problems
        );
        let mut obs = with_heartbeat(35, 1);
        obs.ops.last_mut().unwrap().seq = Some(3);
        let r = check(&obs);
        assert!(
            r.problems
                .iter()
                .any(|p| p.contains("names audit record 3, which is a task_leased")),
            "{:?}",
            r.problems
        );
        obs.ops.last_mut().unwrap().seq = None;
        assert!(check(&obs).problems[0].contains("named no audit record"));
    }

    /// A failure accepted from a worker whose lease had already gone to another: the stale
    /// token fails the run even though the task later completes once.
    #[test]
    fn an_acknowledged_failure_with_a_stale_token_fails() {
        let mut obs = with_task();
        let mut failed = record(5, "i1", 4, "task_failed", None, (None, None), 35, None);
        failed.task_id = Some("task-1".into());
        obs.audit.insert(3, failed);
        let mut op = completion(8, (32, 38), 1);
        op.kind = OpKind::Fail;
        op.tag = None;
        op.seq = Some(5);
        obs.ops.push(op);
        // Under the lease it held, the failure passes (the completion after it is then the
        // one accepted while nobody held a lease).
        let r = check(&obs);
        assert!(
            !r.problems.iter().any(|p| p.contains("failure")),
            "{:?}",
            r.problems
        );
        obs.ops.last_mut().unwrap().token = Some(Token {
            term: 3,
            attempt: 1,
        });
        let r = check(&obs);
        assert!(
            r.problems
                .iter()
                .any(|p| p.contains("the failure of task task-1 with the stale token term 3")),
            "{:?}",
            r.problems
        );
    }
}
