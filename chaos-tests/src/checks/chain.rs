//! The audit log, checked by the harness itself rather than taken from the server's
//! `Audit/Verify` (DESIGN §5): the healed change feed is every sequence from 1 with none
//! missing; each record's hashes are what hashing its own content gives (recomputed from
//! `record_json` when it was read, [`super::AuditEntry::rehashed_ok`]); each links to the
//! previous record of the global chain and of its instance's chain; the last one is the head
//! every replica reports; and every instance's final (state, version), read after healing,
//! is what the audit record that made that version says (the feed is read after the final
//! reads, so later records may follow; deleting the last record is seen all the same).

use std::collections::BTreeMap;

use super::{CheckReport, Observation};

/// The previous hash of a chain's first record.
const ZEROS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

pub fn check(obs: &Observation) -> CheckReport {
    let mut report = CheckReport::new("audit chain");
    report.checked = obs.audit.len() as u64;
    let mut prev_hash = ZEROS;
    // Per instance: (last instance sequence, its instance hash).
    let mut chains: BTreeMap<&str, (u64, &str)> = BTreeMap::new();
    // Per instance: the state after each version its records produced.
    let mut versions: BTreeMap<&str, BTreeMap<u64, Option<&str>>> = BTreeMap::new();
    for (i, r) in obs.audit.iter().enumerate() {
        let want = i as u64 + 1;
        if r.seq != want {
            report.problems.push(format!(
                "the feed's record #{want} is #{}: the log has a gap or a reordering there",
                r.seq
            ));
            break;
        }
        if !r.rehashed_ok {
            report.problems.push(format!(
                "record #{}: its hashes are not those of its own content (recomputed by the harness)",
                r.seq
            ));
        }
        if r.prev_hash != prev_hash {
            report.problems.push(format!(
                "record #{} links to {} but record #{} hashed to {}",
                r.seq,
                short(&r.prev_hash),
                r.seq - 1,
                short(prev_hash)
            ));
        }
        prev_hash = &r.hash;
        if r.instance_seq > 0 {
            let (n, hash) = chains
                .get(r.instance_id.as_str())
                .copied()
                .unwrap_or((0, ZEROS));
            if r.instance_seq != n + 1 || r.instance_prev_hash != hash {
                report.problems.push(format!(
                    "record #{}: instance {} chain place {} after {n}, linked to {} after {}",
                    r.seq,
                    r.instance_id,
                    r.instance_seq,
                    short(&r.instance_prev_hash),
                    short(hash)
                ));
            }
            chains.insert(&r.instance_id, (r.instance_seq, &r.instance_hash));
            let seen = versions.entry(&r.instance_id).or_default();
            let before = seen.values().next_back().copied().flatten();
            seen.insert(r.version, r.to.as_deref().or(before));
        }
    }
    if let (Some(tail), Some(replica)) = (obs.audit.last(), obs.replicas.first())
        && replica.head_seq == tail.seq
        && replica.head_hash != tail.hash
    {
        report.problems.push(format!(
            "node {} reports head #{} as {}, the feed's record #{} hashes to {}",
            replica.node,
            replica.head_seq,
            short(&replica.head_hash),
            tail.seq,
            short(&tail.hash)
        ));
    }
    // The final reads came before the feed was read, so later records may follow them; the
    // record that made the version read must be there, saying the same state.
    for f in obs.finals.values() {
        let seen = versions.get(f.id.as_str());
        match seen.and_then(|v| v.get(&f.version)) {
            None => report.problems.push(format!(
                "instance {} ({}) is {} v{}, but no audit record made v{}{}",
                f.id,
                f.key,
                f.state,
                f.version,
                f.version,
                seen.and_then(|v| v.keys().next_back())
                    .map(|v| format!(" (its last record made v{v})"))
                    .unwrap_or_else(|| ": it has no audit record".into())
            )),
            Some(state) if *state != Some(f.state.as_str()) => report.problems.push(format!(
                "instance {} ({}) is {} v{}, but its audit records say {} at v{}",
                f.id,
                f.key,
                f.state,
                f.version,
                state.unwrap_or("?"),
                f.version
            )),
            Some(_) => {}
        }
    }
    report.notes.push(format!(
        "{} records, {} instance chains",
        obs.audit.len(),
        chains.len()
    ));
    report
}

fn short(s: &str) -> &str {
    &s[..s.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::testkit::*;

    /// `good()` with its records chained as the server chains them.
    fn linked() -> Observation {
        let mut obs = good();
        let mut prev = ZEROS.to_string();
        let mut instance_prev: BTreeMap<String, (u64, String)> = BTreeMap::new();
        for r in &mut obs.audit {
            r.prev_hash = prev.clone();
            let (n, h) = instance_prev
                .get(&r.instance_id)
                .cloned()
                .unwrap_or((0, ZEROS.to_string()));
            r.instance_seq = n + 1;
            r.instance_prev_hash = h;
            r.instance_hash = format!("ih{}", r.seq);
            instance_prev.insert(r.instance_id.clone(), (n + 1, r.instance_hash.clone()));
            prev = r.hash.clone();
        }
        obs
    }

    #[test]
    fn a_whole_chain_that_ends_at_the_head_and_the_final_state_passes() {
        let r = check(&linked());
        assert!(r.ok(), "{:?}", r.problems);
        assert_eq!(r.checked, 2);
    }

    #[test]
    fn a_deleted_last_record_is_seen_in_the_final_state() {
        let mut obs = linked();
        obs.audit.pop();
        let r = check(&obs);
        assert!(
            r.problems
                .iter()
                .any(|p| p.contains("no audit record made v2 (its last record made v1)")),
            "{:?}",
            r.problems
        );
    }

    #[test]
    fn swapped_records_fail() {
        let mut obs = linked();
        obs.audit.swap(0, 1);
        assert!(check(&obs).problems[0].contains("a gap or a reordering"));
        // The same swap with the sequences renumbered breaks the links instead.
        obs.audit[0].seq = 1;
        obs.audit[1].seq = 2;
        let r = check(&obs);
        assert!(
            r.problems.iter().any(|p| p.contains("links to")),
            "{:?}",
            r.problems
        );
    }

    #[test]
    fn a_record_whose_content_was_changed_fails() {
        let mut obs = linked();
        obs.audit[1].rehashed_ok = false;
        assert!(check(&obs).problems[0].contains("not those of its own content"));
    }

    #[test]
    fn a_head_that_is_not_the_last_record_fails() {
        let mut obs = linked();
        obs.replicas[0].head_hash = "elsewhere".into();
        assert!(check(&obs).problems[0].contains("reports head #2"));
    }
}
