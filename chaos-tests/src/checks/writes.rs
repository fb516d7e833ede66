//! Acknowledged writes are present after healing, exactly once and as acknowledged; writes
//! reported failed are absent; writes with an unknown outcome happened at most once.
//!
//! A write is found in the audit log by the digest of its tagged payload (creation data,
//! transition payload, task result): every client write carries a unique tag.
//!
//! The other way round, nothing in the log goes unexplained: every record of the checked
//! workflow that carries a payload was sent by some operation (else it is a write nobody
//! asked for), and each instance's records make versions 1, 2, 3, … in log order (a repeated
//! or missing version is a fork or a lost record, not something to skip).

use std::collections::{HashMap, HashSet};

use super::{CheckReport, Observation};
use crate::history::{OpKind, Outcome, tag_digest};
use crate::workflow;

pub fn check(obs: &Observation) -> CheckReport {
    let mut report = CheckReport::new("writes");
    let mut by_digest: HashMap<&str, Vec<&super::AuditEntry>> = HashMap::new();
    for r in &obs.audit {
        if let Some(d) = &r.payload_digest {
            by_digest.entry(d.as_str()).or_default().push(r);
        }
    }
    let (mut unknown_applied, mut unknown_absent) = (0, 0);
    for op in obs.ops.iter().filter(|o| o.is_write()) {
        let Some(tag) = &op.tag else { continue };
        report.checked += 1;
        let found = by_digest
            .get(tag_digest(tag).as_str())
            .cloned()
            .unwrap_or_default();
        let instance = obs.finals.get(&op.key).map(|f| f.id.as_str());
        let what = format!(
            "op {} ({:?}{} on {}, process {}, {:.3}s..{:.3}s)",
            op.id,
            op.kind,
            op.transition
                .as_ref()
                .map(|t| format!(" {t}"))
                .unwrap_or_default(),
            op.key,
            op.process,
            op.invoke_us as f64 / 1e6,
            op.complete_us as f64 / 1e6
        );
        if found.len() > 1 {
            report.problems.push(format!(
                "{what} applied {} times (audit records {:?}): a retry was not deduplicated",
                found.len(),
                found.iter().map(|r| r.seq).collect::<Vec<_>>()
            ));
            continue;
        }
        match (op.outcome, found.first()) {
            (Outcome::Ok, None) => report.problems.push(format!(
                "{what} was acknowledged (version {:?}) but is not in the audit log after healing: a lost write",
                op.version
            )),
            (Outcome::Ok, Some(r)) => {
                // A record without `to` left the state as it was (e.g. a task completed
                // after its instance moved on: its on_complete opened an incident).
                if Some(r.version) != op.version
                    || op
                        .state
                        .as_deref()
                        .is_some_and(|s| r.to.as_deref().is_some_and(|to| to != s))
                {
                    report.problems.push(format!(
                        "{what} was acknowledged as {:?} v{:?}, but its audit record #{} says {:?} v{}",
                        op.state, op.version, r.seq, r.to, r.version
                    ));
                }
                if instance.is_some_and(|i| i != r.instance_id) {
                    report.problems.push(format!(
                        "{what} landed on instance {}, not on the instance of key {}",
                        r.instance_id, op.key
                    ));
                }
                if op.kind == OpKind::Create && !obs.finals.contains_key(&op.key) {
                    report.problems.push(format!(
                        "{what}: the created instance cannot be read by its key after healing"
                    ));
                }
            }
            (Outcome::Fail, Some(r)) => report.problems.push(format!(
                "{what} was reported failed ({}) but took effect: audit record #{}",
                op.code.as_deref().or(op.error.as_deref()).unwrap_or("?"),
                r.seq
            )),
            (Outcome::Fail, None) => {}
            (Outcome::Unknown, Some(_)) => unknown_applied += 1,
            (Outcome::Unknown, None) => unknown_absent += 1,
        }
    }
    unclaimed(obs, &mut report);
    if unknown_applied + unknown_absent > 0 {
        report.notes.push(format!(
            "{unknown_applied} writes with unknown outcome took effect, {unknown_absent} did not"
        ));
    }
    report
}

/// Records that no operation claims, and instance versions that do not go up by one.
fn unclaimed(obs: &Observation, report: &mut CheckReport) {
    let sent: HashSet<String> = obs
        .ops
        .iter()
        .filter_map(|o| o.tag.as_deref().map(tag_digest))
        .collect();
    let mut last: HashMap<&str, (u64, u64)> = HashMap::new();
    for r in &obs.audit {
        // Definition records belong to no instance.
        if r.instance_id.is_empty() {
            continue;
        }
        let checked = r.workflow.is_empty() || r.workflow == workflow::NAME;
        if checked
            && let Some(d) = &r.payload_digest
            && !sent.contains(d)
        {
            report.problems.push(format!(
                "audit record #{} ({}{} on instance {}, v{}) carries a payload that no client operation sent: a write nobody asked for",
                r.seq,
                r.kind,
                r.transition
                    .as_ref()
                    .map(|t| format!(" {t}"))
                    .unwrap_or_default(),
                r.instance_id,
                r.version
            ));
        }
        let (seq, version) = last.get(r.instance_id.as_str()).copied().unwrap_or((0, 0));
        if r.version != version + 1 {
            report.problems.push(format!(
                "audit record #{} makes instance {} v{}, but its previous record{} made v{version}: versions must go up by one",
                r.seq,
                r.instance_id,
                r.version,
                if seq == 0 {
                    " (none)".to_string()
                } else {
                    format!(" #{seq}")
                }
            ));
        }
        last.insert(&r.instance_id, (r.seq, r.version));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::testkit::*;

    #[test]
    fn acknowledged_writes_present_pass() {
        let r = check(&good());
        assert!(r.ok(), "{:?}", r.problems);
        assert_eq!(r.checked, 2);
    }

    #[test]
    fn a_lost_write_fails() {
        let mut obs = good();
        obs.audit.pop();
        let r = check(&obs);
        assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
        assert!(r.problems[0].contains("lost write"));
    }

    #[test]
    fn a_failed_write_that_happened_fails() {
        let mut obs = good();
        obs.ops[1].outcome = Outcome::Fail;
        obs.ops[1].code = Some("NOT_ALLOWED_FROM_STATE".into());
        let r = check(&obs);
        assert!(
            r.problems[0].contains("reported failed"),
            "{:?}",
            r.problems
        );
    }

    #[test]
    fn a_write_applied_twice_fails() {
        let mut obs = good();
        let mut again = obs.audit[1].clone();
        again.seq = 3;
        again.version = 3;
        obs.audit.push(again);
        let r = check(&obs);
        assert!(
            r.problems[0].contains("applied 2 times"),
            "{:?}",
            r.problems
        );
    }

    #[test]
    fn an_acknowledgement_that_lies_about_the_version_fails() {
        let mut obs = good();
        obs.ops[1].version = Some(3);
        assert!(!check(&obs).ok());
    }

    #[test]
    fn a_record_that_moved_nothing_matches_any_acknowledged_state() {
        // A task completed after its instance was cancelled: the record has no `to`.
        let mut obs = good();
        obs.audit[1].to = None;
        obs.audit[1].from = None;
        assert!(check(&obs).ok());
    }

    #[test]
    fn unknown_writes_may_or_may_not_have_happened() {
        let mut obs = good();
        obs.ops[1].outcome = Outcome::Unknown;
        obs.ops.push(transition(
            7,
            "k1",
            "cancel",
            (60, 70),
            Outcome::Unknown,
            None,
        ));
        let r = check(&obs);
        assert!(r.ok(), "{:?}", r.problems);
        assert_eq!(
            r.notes,
            vec!["1 writes with unknown outcome took effect, 1 did not"]
        );
    }

    #[test]
    fn a_record_no_operation_sent_fails() {
        let mut obs = good();
        obs.ops.remove(1);
        obs.ops.pop();
        let r = check(&obs);
        assert!(
            r.problems
                .iter()
                .any(|p| p.contains("audit record #2 (transition start")
                    && p.contains("no client operation sent")),
            "{:?}",
            r.problems
        );
        // Records of other workflows (the bursts, the sentinel) are not the workload's.
        let mut obs = good();
        obs.ops.remove(1);
        obs.audit[1].workflow = crate::workflow::BURST_NAME.into();
        obs.audit[1].instance_id = "b1".into();
        obs.audit[1].version = 1;
        assert!(check(&obs).ok(), "{:?}", check(&obs).problems);
    }

    #[test]
    fn instance_versions_that_do_not_go_up_by_one_fail() {
        let mut obs = good();
        obs.audit[1].version = 1;
        let r = check(&obs);
        assert!(
            r.problems
                .iter()
                .any(|p| p.contains("#2 makes instance i1 v1, but its previous record #1 made v1")),
            "{:?}",
            r.problems
        );
        let mut obs = good();
        obs.audit.remove(0);
        let r = check(&obs);
        assert!(
            r.problems
                .iter()
                .any(|p| p.contains("v2, but its previous record (none) made v0")),
            "{:?}",
            r.problems
        );
    }
}
