//! No task was completed twice: at most one `task_completed` record per task in the audit
//! log, and at most one acknowledged completion per task among the workers' operations
//! (two acknowledged completions with different leases would mean the fencing failed).
//!
//! Task records carry no task id today (the engine sets `task_id` only on timer records), so
//! records without one count per instance: the chaos workflow has one task per instance.

use std::collections::BTreeMap;

use super::{CheckReport, Observation};
use crate::history::{OpKind, Outcome};

pub fn check(obs: &Observation) -> CheckReport {
    let mut report = CheckReport::new("tasks");
    let mut completed: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    let mut tasks: BTreeMap<&str, ()> = BTreeMap::new();
    for r in &obs.audit {
        if !r.kind.starts_with("task_") {
            continue;
        }
        let t = r.task_id.as_deref().unwrap_or(r.instance_id.as_str());
        tasks.insert(t, ());
        if r.kind == "task_completed" {
            completed.entry(t).or_default().push(r.seq);
        }
    }
    report.checked = tasks.len() as u64;
    for (task, seqs) in &completed {
        if seqs.len() > 1 {
            report.problems.push(format!(
                "task {task} was completed {} times (audit records {seqs:?})",
                seqs.len()
            ));
        }
    }
    let mut acked: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for op in &obs.ops {
        if op.kind == OpKind::Complete
            && op.outcome == Outcome::Ok
            && let Some(t) = &op.task_id
        {
            acked.entry(t).or_default().push(op.id);
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
    report.notes.push(format!(
        "{} tasks, {} completed",
        tasks.len(),
        completed.len()
    ));
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::testkit::*;
    use crate::history::OpKind;

    fn with_task() -> Observation {
        let mut obs = good();
        let mut leased = record(3, "i1", 3, "task_leased", None, (None, None), 30, None);
        leased.task_id = Some("task-1".into());
        obs.audit.push(leased);
        let mut done = record(
            3,
            "i1",
            3,
            "task_completed",
            Some("finish"),
            (Some("working"), Some("done")),
            40,
            Some(4),
        );
        done.task_id = Some("task-1".into());
        done.seq = 4;
        obs.audit.push(done);
        let mut c = op(4, OpKind::Complete, "k1", (35, 45), Outcome::Ok);
        c.task_id = Some("task-1".into());
        obs.ops.push(c);
        obs
    }

    #[test]
    fn one_completion_passes() {
        let r = check(&with_task());
        assert!(r.ok(), "{:?}", r.problems);
        assert_eq!(r.checked, 1);
    }

    #[test]
    fn a_task_completed_twice_fails() {
        let mut obs = with_task();
        let mut again = obs.audit[3].clone();
        again.seq = 5;
        obs.audit.push(again);
        let mut c = op(5, OpKind::Complete, "k1", (50, 60), Outcome::Ok);
        c.task_id = Some("task-1".into());
        obs.ops.push(c);
        let r = check(&obs);
        assert_eq!(r.problems.len(), 2, "{:?}", r.problems);
    }

    #[test]
    fn records_without_a_task_id_count_per_instance() {
        let mut obs = with_task();
        for r in &mut obs.audit {
            r.task_id = None;
        }
        assert!(check(&obs).ok());
        let mut again = obs.audit[3].clone();
        again.seq = 5;
        obs.audit.push(again);
        assert!(check(&obs).problems[0].contains("task i1 was completed 2 times"));
    }

    #[test]
    fn a_refused_second_completion_passes() {
        let mut obs = with_task();
        let mut c = op(5, OpKind::Complete, "k1", (50, 60), Outcome::Fail);
        c.task_id = Some("task-1".into());
        c.code = Some("STALE_LEASE".into());
        obs.ops.push(c);
        assert!(check(&obs).ok());
    }
}
