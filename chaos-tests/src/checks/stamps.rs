//! Stamped times (DESIGN §3: cluster time is the leader's wall clock, monotonic across
//! leaders): in global order, no audit record's cluster time goes back; and no record made
//! by an acknowledged write carries a time further ahead of the harness's clock, when that
//! write was answered, than the nodes' clock offsets allow. A leader whose clock jumped
//! (`clock-jump`) and stamped with it fails the second, which is what the clock offset guard
//! (`crates/lockstep-server/src/clock.rs`) prevents.

use std::collections::HashMap;

use super::{CheckReport, Observation, fmt_time};
use crate::history::{Outcome, tag_digest};

/// How far ahead of the harness's clock (beyond the largest skew) a stamp may be: the
/// guard's default bound (500 ms), its jump threshold (half of it) and scheduling slack.
pub const AHEAD_SLACK_US: i64 = 2_000_000;

pub fn check(obs: &Observation) -> CheckReport {
    let mut report = CheckReport::new("stamps");
    let mut last: Option<(u64, i64)> = None;
    for r in &obs.audit {
        report.checked += 1;
        if let Some((seq, at)) = last
            && r.at_us < at
        {
            report.problems.push(format!(
                "record {} is stamped {} , before record {seq}'s {}: cluster time went back",
                r.seq,
                fmt_time(r.at_us),
                fmt_time(at)
            ));
        }
        last = Some((r.seq, r.at_us));
    }
    if obs.start_wall_us == 0 {
        report
            .notes
            .push("no start time recorded: stamps not compared with real time".into());
        return report;
    }
    let by_digest: HashMap<&str, i64> = obs
        .audit
        .iter()
        .filter_map(|r| Some((r.payload_digest.as_deref()?, r.at_us)))
        .collect();
    let allowed = obs.clock_offset_us + AHEAD_SLACK_US;
    let mut worst = i64::MIN;
    for op in obs.ops.iter().filter(|o| o.outcome == Outcome::Ok) {
        let Some(at) = op
            .tag
            .as_ref()
            .and_then(|t| by_digest.get(tag_digest(t).as_str()).copied())
        else {
            continue;
        };
        let answered = obs.start_wall_us + op.complete_us as i64;
        let ahead = at - answered;
        worst = worst.max(ahead);
        if ahead > allowed {
            report.problems.push(format!(
                "op {} on {} was answered at {} but its record is stamped {}, {:.1} s ahead (at most {:.1} s allowed): a node stamped with a clock that was off",
                op.id,
                op.key,
                fmt_time(answered),
                fmt_time(at),
                ahead as f64 / 1e6,
                allowed as f64 / 1e6
            ));
        }
    }
    if worst > i64::MIN {
        report.notes.push(format!(
            "largest stamp ahead of the answer: {:.3} s",
            worst as f64 / 1e6
        ));
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::testkit::{T0, good};

    #[test]
    fn a_consistent_run_passes() {
        let mut obs = good();
        obs.start_wall_us = T0;
        let r = check(&obs);
        assert!(r.ok(), "{:?}", r.problems);
    }

    #[test]
    fn a_stamp_from_a_jumped_clock_fails() {
        let mut obs = good();
        obs.start_wall_us = T0;
        // The start was stamped 30 s ahead of when it was answered.
        obs.audit[1].at_us += 30_000_000;
        let r = check(&obs);
        assert!(!r.ok());
        assert!(r.problems[0].contains("30.0 s ahead"), "{:?}", r.problems);
    }

    #[test]
    fn time_going_back_fails() {
        let mut obs = good();
        obs.audit[1].at_us = obs.audit[0].at_us - 1;
        let r = check(&obs);
        assert!(r.problems.iter().any(|p| p.contains("went back")), "{r:?}");
    }

    #[test]
    fn a_skewed_clock_is_allowed_its_offset() {
        let mut obs = good();
        obs.start_wall_us = T0;
        obs.audit[1].at_us += 4_000_000;
        obs.clock_offset_us = 5_000_000;
        assert!(check(&obs).ok());
    }
}
