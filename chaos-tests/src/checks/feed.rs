//! The change feed as a consumer read it: it resumed from `last seq + 1` on whatever node it
//! could reach after every disconnection, and must have received every record exactly once,
//! in order (no gap, no duplicate), identical to the log after healing, up to its head.

use super::{CheckReport, Observation};

pub fn check(obs: &Observation) -> CheckReport {
    let mut report = CheckReport::new("change feed");
    report.checked = obs.feed.len() as u64;
    let mut expected = 1u64;
    let mut reported = 0;
    for (seq, hash) in &obs.feed {
        if reported >= 5 {
            report
                .problems
                .push("… (further feed problems not listed)".into());
            break;
        }
        if *seq < expected {
            report.problems.push(format!(
                "record #{seq} delivered again after #{} (a duplicate)",
                expected - 1
            ));
            reported += 1;
            continue;
        }
        if *seq > expected {
            report.problems.push(format!(
                "records #{expected}..#{} never delivered (a gap before #{seq})",
                seq - 1
            ));
            reported += 1;
        }
        match obs.audit.get((*seq - 1) as usize) {
            Some(r) if r.seq == *seq && r.hash == *hash => {}
            Some(r) => {
                report.problems.push(format!(
                    "record #{seq} delivered with hash {hash}, the healed log has #{} {}",
                    r.seq, r.hash
                ));
                reported += 1;
            }
            None => {
                report.problems.push(format!(
                    "record #{seq} delivered but the healed log ends at #{}",
                    obs.audit.len()
                ));
                reported += 1;
            }
        }
        expected = seq + 1;
    }
    let head = obs.audit.len() as u64;
    if reported == 0 && expected <= head {
        report.problems.push(format!(
            "the consumer stopped at #{} of {head} records",
            expected - 1
        ));
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::testkit::*;

    #[test]
    fn a_complete_feed_passes() {
        let r = check(&good());
        assert!(r.ok(), "{:?}", r.problems);
        assert_eq!(r.checked, 2);
    }

    #[test]
    fn a_gap_in_the_feed_fails() {
        let mut obs = good();
        obs.audit.push(record(
            3,
            "i1",
            3,
            "transition",
            None,
            (None, None),
            60,
            None,
        ));
        obs.feed = vec![(1, "h1".into()), (3, "h3".into())];
        let r = check(&obs);
        assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
        assert!(r.problems[0].contains("gap before #3"));
    }

    #[test]
    fn a_duplicate_fails() {
        let mut obs = good();
        obs.feed = vec![(1, "h1".into()), (2, "h2".into()), (2, "h2".into())];
        assert!(check(&obs).problems[0].contains("duplicate"));
    }

    #[test]
    fn a_different_record_fails() {
        let mut obs = good();
        obs.feed[1].1 = "forged".into();
        assert!(check(&obs).problems[0].contains("hash forged"));
    }

    #[test]
    fn a_consumer_that_fell_behind_fails() {
        let mut obs = good();
        obs.feed.pop();
        assert!(check(&obs).problems[0].contains("stopped at #1 of 2"));
    }
}
