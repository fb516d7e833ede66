//! Timers, in cluster time (the audit records' times): every state expiry that fell due while
//! the instance was still `open` fired exactly once, not early, and none acted after the
//! instance had left `open`; the `work` SLA was breached exactly for the instances that stayed
//! in `working` past their budget (at most one breach, never early, never after leaving).
//!
//! A timer and a client command can race: a `start` proposed after the expiry fell due but
//! before the timer service proposed the fire wins, and the timer is then correctly stale.
//! Such races are notes, unless the timer service was late by more than [`BOUND_US`] while the
//! cluster was healthy (or [`RACE_SLACK_US`] during faults), which would mean it stopped
//! firing.
//!
//! Every timer-driven record (state expiry, SLA, task lease expiry, task retry) carries its
//! due and fire times: none fired early, and once the cluster is healthy (no fault, nor within
//! [`super::RECOVERY_US`] after one, all through `[due, due + BOUND_US]`) every one fired
//! within [`BOUND_US`] of its due time: a correctness bound with a wide margin, not a speed
//! target. At the end, after a sentinel write and a quiet, healed period, no armed timer is
//! overdue by more than [`END_SLACK_US`], and every leased task has its lease-expiry timer and
//! every task in backoff its retry timer.

use super::{AuditEntry, CheckReport, Observation, fmt_time};
use crate::workflow::{EXPIRES_MS, SLA_WITHIN_MS};

pub const RACE_SLACK_US: i64 = 10_000_000;
pub const END_SLACK_US: i64 = 3_000_000;
/// Once the cluster is healthy, a timer fires within this long of its due time.
pub const BOUND_US: i64 = 5_000_000;

/// How long after its due time a timer may still be unfired: [`BOUND_US`] while the cluster
/// was healthy, [`RACE_SLACK_US`] during or just after a fault.
fn slack_us(obs: &Observation, due_us: i64) -> i64 {
    match obs.healthy_between(due_us, due_us + BOUND_US) {
        Some(true) => BOUND_US,
        _ => RACE_SLACK_US,
    }
}

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
                Some(t) if t > due + slack_us(obs, due) => report.problems.push(format!(
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
                    Some(l) if l > sla_due + slack_us(obs, sla_due) => report.problems.push(format!(
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
    let (bounded, task_timers) = every_timer_on_time(obs, &mut report);
    overdue_at_the_end(obs, &mut report);
    report.notes.push(format!(
        "{fired} expiries fired, {breached} SLA breaches, {task_timers} task lease expiries and retries; {raced_expiry} expiries and {raced_sla} SLA timers lost a race with a client command proposed after they fell due; {bounded} fires due while the cluster was healthy, each within {} s",
        BOUND_US / 1_000_000
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

/// Every timer-driven record of the checked workflow: never early; within [`BOUND_US`] when
/// the cluster was healthy. Returns how many fell in healthy periods and how many were task
/// timers (lease expiries, retries).
fn every_timer_on_time(obs: &Observation, report: &mut CheckReport) -> (u64, u64) {
    let keys = obs.key_of();
    let (mut bounded, mut task_timers) = (0, 0);
    for records in obs.by_instance().values() {
        for r in records {
            let Some(t) = &r.timer else { continue };
            if r.kind.starts_with("task_") {
                task_timers += 1;
            }
            let name = keys
                .get(r.instance_id.as_str())
                .map_or(r.instance_id.clone(), |k| {
                    format!("{k} ({})", r.instance_id)
                });
            // Expiries have their own early check above.
            if !is_expiry(r) && (t.fired_us < t.due_us || r.at_us < t.due_us) {
                report.problems.push(format!(
                    "{name}: timer {} ({}) fired early: at {} before its due time {}",
                    t.timer_id,
                    r.kind,
                    fmt_time(r.at_us),
                    fmt_time(t.due_us)
                ));
            }
            if obs.healthy_between(t.due_us, t.due_us + BOUND_US) == Some(true) {
                bounded += 1;
                let late = r.at_us - t.due_us;
                if late > BOUND_US {
                    report.problems.push(format!(
                        "{name}: timer {} ({}) fired {:.1} s after its due time {} while the cluster was healthy (bound {} s)",
                        t.timer_id,
                        r.kind,
                        late as f64 / 1e6,
                        fmt_time(t.due_us),
                        BOUND_US / 1_000_000
                    ));
                }
            }
        }
    }
    (bounded, task_timers)
}

/// After the final heal and the sentinel write: no armed timer overdue, and no task that
/// waits on a timer without one.
fn overdue_at_the_end(obs: &Observation, report: &mut CheckReport) {
    for f in obs.finals.values() {
        for (id, due) in &f.timers {
            if *due < obs.end_cluster_us - END_SLACK_US {
                report.problems.push(format!(
                    "{} ({}): timer {id} due at {} is still armed at the end ({})",
                    f.key,
                    f.id,
                    fmt_time(*due),
                    fmt_time(obs.end_cluster_us)
                ));
            }
        }
        for (task, status) in &f.tasks {
            let needs = match status.as_str() {
                "leased" => format!("{task}:lease"),
                "backoff" => format!("{task}:retry"),
                _ => continue,
            };
            if !f.timers.iter().any(|(id, _)| *id == needs) {
                report.problems.push(format!(
                    "{} ({}): task {task} is {status} but timer {needs} is not armed: it would wait forever",
                    f.key, f.id
                ));
            }
        }
    }
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

    /// A task lease expiry of k1 (i1), due at `due_ms`, fired at `at_ms`.
    fn lease_expiry(seq: u64, due_ms: i64, at_ms: i64) -> AuditEntry {
        let mut r = record(
            seq,
            "i1",
            seq,
            "task_failed",
            None,
            (None, None),
            at_ms,
            None,
        );
        r.task_id = Some("i1/2/0".into());
        r.timer = Some(TimerFire {
            timer_id: "i1/2/0:lease".into(),
            due_us: T0 + due_ms * 1000,
            fired_us: T0 + at_ms * 1000,
        });
        r
    }

    #[test]
    fn a_task_timer_late_while_the_cluster_was_healthy_fails() {
        let mut obs = good();
        obs.start_wall_us = T0;
        obs.audit.push(lease_expiry(3, 1_000, 7_000));
        let r = check(&obs);
        assert!(
            r.problems
                .iter()
                .any(|p| p.contains("fired 6.0 s after its due time") && p.contains("healthy")),
            "{:?}",
            r.problems
        );
        // The same lateness while a node was down is not the timer service's fault.
        obs.faults.push(crate::history::FaultWindow {
            name: "kill-leader".into(),
            detail: String::new(),
            start_us: 500_000,
            end_us: 4_000_000,
        });
        assert!(check(&obs).ok(), "{:?}", check(&obs).problems);
        // And an early one fails whatever the faults.
        obs.audit[2] = lease_expiry(3, 1_000, 900);
        assert!(check(&obs).problems[0].contains("fired early"));
    }

    #[test]
    fn an_expiry_that_lost_a_race_long_after_its_due_time_while_healthy_fails() {
        let mut obs = good();
        obs.end_cluster_us = T0 + 12_000_000;
        obs.start_wall_us = T0;
        // Created at 5 ms, due at 3.005 s, started at 25 ms in good(): move the start late.
        obs.audit[1].at_us = T0 + 9_000_000;
        let r = check(&obs);
        assert!(
            r.problems
                .iter()
                .any(|p| p.contains("had not fired when the instance left open")),
            "{:?}",
            r.problems
        );
        // Without the fault map (an old observation) the 10 s race slack applies.
        obs.start_wall_us = 0;
        assert!(check(&obs).ok(), "{:?}", check(&obs).problems);
    }

    #[test]
    fn an_armed_timer_overdue_at_the_end_fails() {
        let mut obs = expired();
        let f = obs.finals.get_mut("k1").unwrap();
        f.timers
            .push(("i1:sla:work:breach".into(), T0 + 10_000_000));
        assert!(check(&obs).problems[0].contains("is still armed at the end"));
        let f = obs.finals.get_mut("k1").unwrap();
        f.timers[0].1 = T0 + 18_000_000;
        assert!(check(&obs).ok(), "{:?}", check(&obs).problems);
    }

    #[test]
    fn a_leased_task_without_its_lease_timer_fails() {
        let mut obs = expired();
        let f = obs.finals.get_mut("k1").unwrap();
        f.tasks.push(("i1/2/0".into(), "leased".into()));
        assert!(check(&obs).problems[0].contains("timer i1/2/0:lease is not armed"));
        let f = obs.finals.get_mut("k1").unwrap();
        f.timers.push(("i1/2/0:lease".into(), T0 + 19_000_000));
        f.tasks.push(("i1/3/0".into(), "ready".into()));
        assert!(check(&obs).ok(), "{:?}", check(&obs).problems);
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
