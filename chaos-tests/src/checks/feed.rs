//! The change feed as a consumer read it: it resumed from `last seq + 1` on whatever node it
//! could reach after every disconnection, and must have received every record exactly once,
//! in order (no gap, no duplicate), identical to the log after healing, up to its head.

use super::{CheckReport, Observation};

pub fn check(obs: &Observation) -> CheckReport {
    let mut report = CheckReport::new("change feed");
    report.checked = obs.feed.len() as u64;
    let mut expected = 1u64;
    let mut reported = 0;
    let head = obs.audit.len() as u64;
    for (i, (seq, hash)) in obs.feed.iter().enumerate() {
        if *seq == head + 1 && expected == *seq {
            // Everything up to the healed log's end arrived in order; the rest was applied
            // after the harness read the log (a timer fired meanwhile): beyond the window.
            report.notes.push(format!(
                "{} records delivered after the healed log was read (from #{seq}), not checked",
                obs.feed.len() - i
            ));
            break;
        }
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

    /// Seed 25 once: a timer fired after the harness read the log, and the consumer, still
    /// following, received it.
    #[test]
    fn records_applied_after_the_log_was_read_are_beyond_the_window() {
        let mut obs = good();
        obs.feed.push((3, "h3".into()));
        obs.feed.push((4, "h4".into()));
        let r = check(&obs);
        assert!(r.ok(), "{:?}", r.problems);
        assert!(r.notes[0].contains("2 records delivered after the healed log was read"));
        // A gap up to them is still a gap.
        obs.feed.remove(1);
        assert!(!check(&obs).ok());
    }

    #[test]
    fn a_consumer_that_fell_behind_fails() {
        let mut obs = good();
        obs.feed.pop();
        assert!(check(&obs).problems[0].contains("stopped at #1 of 2"));
    }
}
