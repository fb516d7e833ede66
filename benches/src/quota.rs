//! The `quota` scenario: does a greedy actor, offered far above its write quota, move another
//! actor's latency?
//!
//! The bench starts its cluster with a policy that gives actor `bench-greedy` a write quota
//! (`--quota-rate`, writes per second, with one second's burst) and nobody else one. Then it runs
//! `--rounds` rounds of two open-loop phases of `--duration` each (after `--warmup`):
//!
//! - `alone`: the victim (`alice`, no quota) at `--rate` transition units per second (a create
//!   and a `submit`, as in the `transitions` scenario);
//! - `greedy`: the victim at the same rate beside the greedy actor offering
//!   [`GREEDY_FACTOR`] times its quota in creates.
//!
//! Phases alternate (alone, greedy, alone, greedy, ...) so that drift of the shared machine
//! falls on both; the verdict is the median of the victim's p99 with the greedy actor over the
//! median alone.

use std::sync::Arc;

use crate::load::{self, Level, Window};
use crate::scenarios::{Clients, Creates, Transitions};

/// The greedy actor offers this many times its quota.
pub(crate) const GREEDY_FACTOR: f64 = 10.0;
/// The actor with the quota.
pub(crate) const GREEDY_ACTOR: &str = "bench-greedy";
/// The actor without one, whose latency is watched.
pub(crate) const VICTIM_ACTOR: &str = "alice";
/// Most rounds of a run.
pub(crate) const ROUNDS_MAX: usize = 50;

/// The cluster policy of a quota run: the victim may apply the bench's workflows (a policy
/// file replaces the development node's allow-all), the greedy actor has a write quota.
pub(crate) fn policy(quota_per_second: f64) -> String {
    format!(
        "[apply_definitions]\nactors = [\"{VICTIM_ACTOR}\"]\n\n\
         [quotas.actors.{GREEDY_ACTOR}]\nwrites_per_second = {quota_per_second}\n"
    )
}

/// One phase of a round.
#[derive(Debug, serde::Serialize)]
pub(crate) struct Phase {
    pub(crate) round: usize,
    /// `alone` or `greedy`.
    pub(crate) phase: &'static str,
    pub(crate) victim: Level,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) greedy: Option<Level>,
}

/// What a quota run measured.
#[derive(Debug, serde::Serialize)]
pub(crate) struct Report {
    pub(crate) quota_writes_per_second: f64,
    pub(crate) greedy_offered_writes_per_second: f64,
    pub(crate) victim_offered_units_per_second: f64,
    pub(crate) phases: Vec<Phase>,
    pub(crate) victim_p99_alone_median_us: u64,
    pub(crate) victim_p99_greedy_median_us: u64,
    /// Median p99 beside the greedy actor over the median alone: at most 1.5 is the aim.
    pub(crate) p99_ratio: f64,
}

pub(crate) struct QuotaRun {
    pub(crate) victim_rate: f64,
    pub(crate) quota_per_second: f64,
    pub(crate) rounds: usize,
    pub(crate) connections: usize,
    pub(crate) window: Window,
}

fn median(mut values: Vec<u64>) -> u64 {
    values.sort_unstable();
    values.get(values.len() / 2).copied().unwrap_or(0)
}

pub(crate) async fn run(endpoints: &[String], run: QuotaRun) -> anyhow::Result<Report> {
    anyhow::ensure!(
        (1..=ROUNDS_MAX).contains(&run.rounds),
        "--rounds must be from 1 to {ROUNDS_MAX}, not {}",
        run.rounds
    );
    let victim = Arc::new(Transitions {
        clients: Clients::new(endpoints, VICTIM_ACTOR, 1, run.connections)?,
    });
    let greedy = Arc::new(Creates {
        clients: Clients::new(endpoints, GREEDY_ACTOR, 1, run.connections)?,
    });
    let greedy_rate = run.quota_per_second * GREEDY_FACTOR;
    let mut phases = Vec::with_capacity(run.rounds * 2);
    for round in 1..=run.rounds {
        let bar = load::progress_bar(
            run.window,
            format!("round {round}/{}: victim alone", run.rounds),
        );
        let alone = load::open(Arc::clone(&victim), run.victim_rate, run.window, &bar, None).await;
        bar.finish_and_clear();
        phases.push(Phase {
            round,
            phase: "alone",
            victim: alone,
            greedy: None,
        });
        let bar = load::progress_bar(
            run.window,
            format!(
                "round {round}/{}: victim beside the greedy actor",
                run.rounds
            ),
        );
        let quiet = load::progress_bar(run.window, String::new());
        quiet.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        let (with, greedy_level) = tokio::join!(
            load::open(Arc::clone(&victim), run.victim_rate, run.window, &bar, None),
            load::open(Arc::clone(&greedy), greedy_rate, run.window, &quiet, None),
        );
        bar.finish_and_clear();
        phases.push(Phase {
            round,
            phase: "greedy",
            victim: with,
            greedy: Some(greedy_level),
        });
    }
    let p99s = |which: &str| {
        median(
            phases
                .iter()
                .filter(|p| p.phase == which)
                .map(|p| p.victim.p99_us)
                .collect(),
        )
    };
    let (alone, with) = (p99s("alone"), p99s("greedy"));
    Ok(Report {
        quota_writes_per_second: run.quota_per_second,
        greedy_offered_writes_per_second: greedy_rate,
        victim_offered_units_per_second: run.victim_rate,
        phases,
        victim_p99_alone_median_us: alone,
        victim_p99_greedy_median_us: with,
        p99_ratio: with as f64 / alone.max(1) as f64,
    })
}

/// The report as Markdown tables.
pub(crate) fn print(report: &Report) {
    let ms = |us: u64| us as f64 / 1000.0;
    println!(
        "\nquota: the greedy actor `{GREEDY_ACTOR}` has {:.0} writes/s and is offered {:.0} creates/s; the victim `{VICTIM_ACTOR}` (no quota) is offered {:.0} create+submit units/s\n",
        report.quota_writes_per_second,
        report.greedy_offered_writes_per_second,
        report.victim_offered_units_per_second
    );
    println!(
        "| round | phase | victim ops/s | victim p50 ms | victim p99 ms | victim errors | victim refused | greedy committed/s | greedy refused | greedy refusal p50/p99 ms |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for p in &report.phases {
        let v = &p.victim;
        let greedy = p.greedy.as_ref().map_or("| – | – | – |".to_string(), |g| {
            format!(
                "| {:.0} | {} | {:.2}/{:.2} |",
                g.ops_per_second,
                g.refused,
                ms(g.refused_p50_us),
                ms(g.refused_p99_us)
            )
        });
        println!(
            "| {} | {} | {:.0} | {:.1} | {:.1} | {} | {} {greedy}",
            p.round,
            p.phase,
            v.ops_per_second,
            ms(v.p50_us),
            ms(v.p99_us),
            v.errors,
            v.refused
        );
    }
    println!(
        "\nvictim p99, median of rounds: alone {:.1} ms, beside the greedy actor {:.1} ms: ratio {:.2} (aim: at most 1.5)",
        ms(report.victim_p99_alone_median_us),
        ms(report.victim_p99_greedy_median_us),
        report.p99_ratio
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_names_the_greedy_actor_and_lets_the_victim_apply() {
        let p = policy(50.0);
        assert!(p.contains("[quotas.actors.bench-greedy]\nwrites_per_second = 50\n"));
        assert!(p.contains("actors = [\"alice\"]"));
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![5, 1, 3]), 3);
        assert_eq!(median(vec![4, 1, 3, 2]), 3);
        assert_eq!(median(vec![]), 0);
    }
}
