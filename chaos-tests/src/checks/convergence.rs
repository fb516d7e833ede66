//! Replicas converge: after healing every node has applied the same index, holds the same
//! state digest, and its audit chain verifies and ends at the same head (sequence and hash).

use super::{CheckReport, Observation};

pub fn check(obs: &Observation) -> CheckReport {
    let mut report = CheckReport::new("convergence");
    report.checked = obs.replicas.len() as u64;
    let Some(first) = obs.replicas.first() else {
        report
            .problems
            .push("no replica answered after healing".into());
        return report;
    };
    for r in &obs.replicas {
        if !r.audit_ok {
            report.problems.push(format!(
                "node {}: audit chain does not verify: {}",
                r.node, r.audit_reason
            ));
        }
        if r.applied_index != first.applied_index || r.digest != first.digest {
            report.problems.push(format!(
                "node {} applied {} with digest {}, node {} applied {} with digest {}",
                r.node,
                r.applied_index,
                short(&r.digest),
                first.node,
                first.applied_index,
                short(&first.digest)
            ));
        }
        if (r.head_seq, &r.head_hash) != (first.head_seq, &first.head_hash) {
            report.problems.push(format!(
                "node {} audit head #{} {} differs from node {} head #{} {}",
                r.node,
                r.head_seq,
                short(&r.head_hash),
                first.node,
                first.head_seq,
                short(&first.head_hash)
            ));
        }
    }
    if obs.audit.len() as u64 != first.head_seq {
        report.problems.push(format!(
            "the change feed read after healing has {} records, the audit head is #{}",
            obs.audit.len(),
            first.head_seq
        ));
    }
    report
}

fn short(s: &str) -> &str {
    &s[..s.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::testkit::*;

    #[test]
    fn equal_replicas_pass() {
        let r = check(&good());
        assert!(r.ok(), "{:?}", r.problems);
        assert_eq!(r.checked, 3);
    }

    #[test]
    fn a_diverged_digest_fails() {
        let mut obs = good();
        obs.replicas[2].digest = "other".into();
        let r = check(&obs);
        assert_eq!(r.problems.len(), 1);
        assert!(r.problems[0].contains("node 3"));
    }

    #[test]
    fn a_broken_chain_fails() {
        let mut obs = good();
        obs.replicas[1].audit_ok = false;
        obs.replicas[1].audit_reason = "record 2: hash mismatch".into();
        obs.replicas[1].head_hash = "x".into();
        assert_eq!(check(&obs).problems.len(), 2);
    }

    #[test]
    fn no_replica_fails() {
        let mut obs = good();
        obs.replicas.clear();
        assert!(!check(&obs).ok());
    }
}
