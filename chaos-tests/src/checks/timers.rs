//! Timers, in cluster time (the audit records' times): every state expiry that fell due while
//! the instance was still `open` fired exactly once, not early, and none acted after the
//! instance had left `open`; the `work` SLA was breached exactly for the instances that stayed
//! in `working` past their budget (at most one breach, never early, never after leaving).
//!
//! A timer and a client command can race: a `start` proposed after the expiry fell due but
//! before the timer service proposed the fire wins, and the timer is then correctly stale.
//! Such races are notes, unless the timer service was late by more than [`RACE_SLACK_US`],
//! which would mean it stopped firing. At the end (after a quiet, healed period) nothing may
//! be overdue by more than [`END_SLACK_US`].

use super::{AuditEntry, CheckReport, Observation, fmt_time};
use crate::workflow::{EXPIRES_MS, SLA_WITHIN_MS};

pub const RACE_SLACK_US: i64 = 10_000_000;
pub const END_SLACK_US: i64 = 3_000_000;

/// A fire of the state expiry: the engine records it as `timer_fired` whether or not it took
/// the `expire` transition (one that took none acted on an instance no longer `open`).
fn is_expiry(r: &AuditEntry) -> bool {
    r.timer.is_some() && r.kind == "timer_fired"
}

fn is_breach(r: &AuditEntry) -> bool {
    r.kind == "sla_breach"
}

pub fn check(obs: &Observation) -> CheckReport {
    let mut report = CheckReport::new("timers");
    let keys = obs.key_of();
    let (mut raced_expiry, mut raced_sla, mut fired, mut breached) = (0, 0, 0, 0);
    // How late each expiry and breach acted after its due time (µs), for the notes.
    let mut lateness: Vec<i64> = Vec::new();
    for (id, records) in obs.by_instance() {
        let Some(created) = records.first().filter(|r| r.kind == "created") else {
            continue;
        };
        report.checked += 1;
        let name = keys
            .get(id)
            .map_or(id.to_string(), |k| format!("{k} ({id})"));
        let due = created.at_us + EXPIRES_MS * 1000;
        let mut state = created.to.clone().unwrap_or_default();
        let mut left_open: Option<i64> = None;
        let mut entered_working: Option<i64> = None;
        let mut left_working: Option<i64> = None;
        let mut expiries = 0;
        let mut breaches = 0;
        for r in records.iter().skip(1) {
            if is_expiry(r) {
                expiries += 1;
                fired += 1;
                let t = r.timer.as_ref().expect("is_expiry");
                if expiries > 1 {
                    report.problems.push(format!(
                        "{name}: state expiry fired again (audit #{} at {}): a double timer fire",
                        r.seq,
                        fmt_time(r.at_us)
                    ));
                }
                if state != "open" {
                    report.problems.push(format!(
                        "{name}: state expiry acted at {} (audit #{}) after the instance had left open for {state}",
                        fmt_time(r.at_us),
                        r.seq
                    ));
                }
                if t.due_us != due {
                    report.problems.push(format!(
                        "{name}: expiry due at {}, expected creation + {EXPIRES_MS} ms = {}",
                        fmt_time(t.due_us),
                        fmt_time(due)
                    ));
                }
                lateness.push(r.at_us - t.due_us);
                if r.at_us < t.due_us || t.fired_us < t.due_us {
                    report.problems.push(format!(
                        "{name}: expiry fired early: at {} before its due time {}",
                        fmt_time(r.at_us),
                        fmt_time(t.due_us)
                    ));
                }
            }
            if is_breach(r) {
                breaches += 1;
                breached += 1;
                if breaches > 1 {
                    report.problems.push(format!(
                        "{name}: SLA breached again (audit #{}): a double timer fire",
                        r.seq
                    ));
                }
                match entered_working {
                    Some(t) if state == "working" => {
                        lateness.push(r.at_us - (t + SLA_WITHIN_MS * 1000));
                        if r.at_us < t + SLA_WITHIN_MS * 1000 {
                            report.problems.push(format!(
                                "{name}: SLA breach at {} is earlier than entering working ({}) + {SLA_WITHIN_MS} ms",
                                fmt_time(r.at_us),
                                fmt_time(t)
                            ));
                        }
                    }
                    _ => report.problems.push(format!(
                        "{name}: SLA breach (audit #{}) while the instance was {state}, not working",
                        r.seq
                    )),
                }
            }
            if let Some(to) = &r.to
                && *to != state
            {
                if state == "open" {
                    left_open = Some(r.at_us);
                }
                if state == "working" {
                    left_working = Some(r.at_us);
                }
                if to == "working" {
                    entered_working = Some(r.at_us);
                }
                state = to.clone();
            }
        }
        if expiries == 0 {
            match left_open {
                None if due < obs.end_cluster_us - END_SLACK_US => {
                    report.problems.push(format!(
                        "{name}: state expiry due at {} never fired; the instance is still {state} at {}",
                        fmt_time(due),
                        fmt_time(obs.end_cluster_us)
                    ));
                }
                Some(t) if t > due + RACE_SLACK_US => report.problems.push(format!(
                    "{name}: state expiry due at {} had not fired when the instance left open at {}",
                    fmt_time(due),
                    fmt_time(t)
                )),
                Some(t) if t >= due => raced_expiry += 1,
                _ => {}
            }
        }
        if let Some(t) = entered_working {
            let sla_due = t + SLA_WITHIN_MS * 1000;
            if breaches == 0 {
                match left_working {
                    None if sla_due < obs.end_cluster_us - END_SLACK_US => {
                        report.problems.push(format!(
                            "{name}: SLA due at {} never breached; still working at {}",
                            fmt_time(sla_due),
                            fmt_time(obs.end_cluster_us)
                        ));
                    }
                    Some(l) if l > sla_due + RACE_SLACK_US => report.problems.push(format!(
                        "{name}: SLA due at {} had not breached when the instance left working at {}",
                        fmt_time(sla_due),
                        fmt_time(l)
                    )),
                    Some(l) if l >= sla_due => raced_sla += 1,
                    _ => {}
                }
            }
            if let Some(f) = obs.finals.values().find(|f| f.id == id)
                && let Some((flag, _)) = f.sla
                && flag != (breaches > 0)
            {
                report.problems.push(format!(
                    "{name}: the instance says breached = {flag}, the audit log has {breaches} breach records"
                ));
            }
        }
    }
    report.notes.push(format!(
        "{fired} expiries fired, {breached} SLA breaches; {raced_expiry} expiries and {raced_sla} SLA timers lost a race with a client command proposed after they fell due"
    ));
    if !lateness.is_empty() {
        lateness.sort_unstable();
        let at = |q: f64| lateness[((lateness.len() - 1) as f64 * q).round() as usize] / 1000;
        report.notes.push(format!(
            "lateness of fires after their due time: p50 {} ms, p99 {} ms, max {} ms",
            at(0.5),
            at(0.99),
            at(1.0)
        ));
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::TimerFire;
    use crate::checks::testkit::*;

    fn expiry(seq: u64, version: u64, at_ms: i64, from: &str) -> AuditEntry {
        let mut r = record(
            seq,
            "i1",
            version,
            "timer_fired",
            Some("expire"),
            (Some(from), Some("expired")),
            at_ms,
            None,
        );
        r.timer = Some(TimerFire {
            timer_id: "x".into(),
            due_us: T0 + 5_000 + EXPIRES_MS * 1000,
            fired_us: T0 + at_ms * 1000,
        });
        r
    }

    /// k1 created at 5 ms and never started: it expires at 3.005 s.
    fn expired() -> Observation {
        let mut obs = good();
        obs.audit.truncate(1);
        obs.audit.push(expiry(2, 2, 3_100, "open"));
        obs.end_cluster_us = T0 + 20_000_000;
        obs
    }

    #[test]
    fn a_timely_single_fire_passes() {
        let r = check(&expired());
        assert!(r.ok(), "{:?}", r.problems);
        assert_eq!(r.checked, 1);
        // Due at 3.005 s, fired at 3.1 s.
        assert!(
            r.notes[1].contains("p50 95 ms, p99 95 ms, max 95 ms"),
            "{:?}",
            r.notes
        );
    }

    #[test]
    fn a_double_timer_fire_fails() {
        let mut obs = expired();
        obs.audit.push(expiry(3, 3, 3_200, "expired"));
        let r = check(&obs);
        assert!(
            r.problems.iter().any(|p| p.contains("double timer fire")),
            "{:?}",
            r.problems
        );
        assert!(
            r.problems
                .iter()
                .any(|p| p.contains("after the instance had left open"))
        );
    }

    /// Found by the `timer-fires-twice` mutation: a second fire of the expiry takes no
    /// transition (the instance is no longer open), and the checker used to find expiries by
    /// their `expire` transition only.
    #[test]
    fn a_second_fire_that_took_no_transition_fails() {
        let mut obs = expired();
        let mut again = expiry(3, 3, 3_200, "expired");
        again.transition = None;
        again.from = None;
        again.to = None;
        obs.audit.push(again);
        let r = check(&obs);
        assert!(
            r.problems.iter().any(|p| p.contains("double timer fire")),
            "{:?}",
            r.problems
        );
    }

    #[test]
    fn an_early_fire_fails() {
        let mut obs = expired();
        obs.audit[1] = expiry(2, 2, 2_000, "open");
        assert!(check(&obs).problems[0].contains("fired early"));
    }

    #[test]
    fn a_lost_timer_fails() {
        let mut obs = expired();
        obs.audit.truncate(1);
        assert!(check(&obs).problems[0].contains("never fired"));
    }

    /// The overload bursts create instances of `chaos-burst`, which has no expiry: they are
    /// not the checked workflow's (seed 10 with `--bursts` reported ~100 of them as lost
    /// expiries before the checker looked at the workflow).
    #[test]
    fn instances_of_other_workflows_have_no_expiry_to_check() {
        let burst = |workflow: &str| {
            let mut obs = expired();
            let mut r = record(
                3,
                "b1",
                1,
                "created",
                None,
                (None, Some("created")),
                10,
                None,
            );
            r.workflow = workflow.into();
            obs.audit.push(r);
            check(&obs)
        };
        let r = burst(crate::workflow::BURST_NAME);
        assert!(r.ok(), "{:?}", r.problems);
        assert_eq!(r.checked, 1);
        let r = burst(crate::workflow::NAME);
        assert!(
            r.problems[0].contains("never fired; the instance is still created"),
            "{:?}",
            r.problems
        );
    }

    #[test]
    fn a_started_instance_needs_no_expiry_but_an_sla_breach() {
        // good(): started at 25 ms, still working at the end (20 s later) without a breach.
        let mut obs = good();
        obs.end_cluster_us = T0 + 20_000_000;
        let r = check(&obs);
        assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
        assert!(r.problems[0].contains("never breached"));
        let mut breach = record(3, "i1", 3, "sla_breach", None, (None, None), 2_100, None);
        breach.sla = Some("work".into());
        obs.audit.push(breach);
        let r = check(&obs);
        assert!(r.ok(), "{:?}", r.problems);
    }

    #[test]
    fn a_start_that_raced_the_expiry_is_a_note() {
        let mut obs = good();
        obs.audit[1].at_us = T0 + 3_500_000;
        obs.audit.push(record(
            3,
            "i1",
            3,
            "transition",
            Some("cancel"),
            (Some("working"), Some("cancelled")),
            3_600,
            None,
        ));
        let r = check(&obs);
        assert!(r.ok(), "{:?}", r.problems);
        assert!(r.notes[0].contains("1 expiries"), "{:?}", r.notes);
    }
}
