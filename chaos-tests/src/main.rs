//! `lockstep-chaos`: runs seeded fault schedules against real `lockstepd` clusters and checks
//! every invariant afterwards. See chaos-tests/README.md.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use lockstep_chaos::checks::{self, Observation};
use lockstep_chaos::cluster::libfaketime;
use lockstep_chaos::mutations;
use lockstep_chaos::run::{RunConfig, RunSummary, default_lockstepd, run};
use lockstep_chaos::schedule::{Schedule, smoke_schedules};
use lockstep_chaos::{parse_duration_ms, report};

#[derive(Debug, Parser)]
#[command(name = "lockstep-chaos", version, about)]
struct Cli {
    /// The lockstepd binary (default: next to this one).
    #[arg(long, global = true)]
    lockstepd: Option<PathBuf>,
    /// Where run folders go (a folder per seed; kept only for failed runs unless --keep).
    #[arg(long, global = true, default_value = "target/chaos-results")]
    results: PathBuf,
    /// Client processes creating, transitioning and reading instances.
    #[arg(long, global = true, default_value_t = 4)]
    clients: u32,
    /// Worker processes completing tasks.
    #[arg(long, global = true, default_value_t = 2)]
    workers: u32,
    /// Keep every run's folder, passed or not.
    #[arg(long, global = true)]
    keep: bool,
    /// Never skew clocks (even if libfaketime is installed).
    #[arg(long, global = true)]
    no_skew: bool,
    /// Overload bursts: about 3 in 10 faults also get a burst of client writes far above
    /// capacity (256 writers), drawn from the seed; the checkers must hold all the same.
    /// The CI smoke suite runs with them (`scripts/test`).
    #[arg(long, global = true)]
    bursts: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one seed's schedule.
    Run {
        #[arg(long)]
        seed: u64,
        /// 3 or 5 (default: the seed decides).
        #[arg(long)]
        nodes: Option<usize>,
        #[arg(long, default_value = "20s", value_parser = parse_duration_ms)]
        duration: u64,
    },
    /// The CI suite: ten fixed 3-node schedules without clock skew that together apply
    /// every fault kind, one 5-node and one skewed schedule (about 4 minutes).
    Smoke {
        #[arg(long, default_value = "14s", value_parser = parse_duration_ms)]
        duration: u64,
    },
    /// Many schedules, then a summary table.
    Long {
        #[arg(long, default_value_t = 200)]
        schedules: u64,
        #[arg(long, default_value_t = 1000)]
        first_seed: u64,
        #[arg(long, default_value = "20s", value_parser = parse_duration_ms)]
        duration: u64,
        /// Stop starting new schedules after this long (e.g. 10m); the table covers those run.
        #[arg(long, value_parser = parse_duration_ms)]
        budget: Option<u64>,
    },
    /// The mutation smoke: one short run per deliberate bug (a debug lockstepd with
    /// LOCKSTEP_MUTATION), each of which a checker named for it must catch; exit 0 only if
    /// every mutation was caught (about 2 minutes).
    Mutations {
        /// Run only these mutations (by name; repeatable).
        #[arg(long)]
        only: Vec<String>,
    },
    /// Re-run the checkers on a run folder's observation.json.
    Check { folder: PathBuf },
    /// Print a seed's schedule without running it.
    Show {
        #[arg(long)]
        seed: u64,
        #[arg(long)]
        nodes: Option<usize>,
        #[arg(long, default_value = "20s", value_parser = parse_duration_ms)]
        duration: u64,
    },
}

fn spinner() -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {prefix} {wide_msg}")
            .expect("valid template"),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Runs `schedules` one after another; with `--bursts`, each gets its overload bursts (as
/// `run` does).
async fn run_many(cli: &Cli, mut schedules: Vec<Schedule>, budget: Option<u64>) -> Vec<RunSummary> {
    if cli.bursts {
        for s in &mut schedules {
            s.add_bursts();
        }
    }
    let config = RunConfig {
        lockstepd: cli.lockstepd.clone().unwrap_or_else(default_lockstepd),
        results: cli.results.clone(),
        clients: cli.clients,
        workers: cli.workers,
        keep: cli.keep,
    };
    let total = schedules.len() as u64;
    let overall = ProgressBar::new(total);
    overall.set_style(
        ProgressStyle::with_template(
            "[{elapsed_precise}] {bar:30} {pos}/{len} schedules, {prefix} {wide_msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    overall.enable_steady_tick(Duration::from_millis(500));
    let started = std::time::Instant::now();
    let mut failures = 0;
    let mut out = Vec::new();
    for s in schedules {
        if budget.is_some_and(|b| started.elapsed() >= Duration::from_millis(b)) {
            say(
                &overall,
                format!("time budget reached after {} schedules", out.len()),
            );
            break;
        }
        overall.set_prefix(format!("{failures} failed; seed {}", s.seed));
        let bar = overall.clone();
        let summary = run(&config, &s, |m| bar.set_message(m.to_string())).await;
        if !summary.passed {
            failures += 1;
        }
        say(&overall, line(&summary));
        overall.inc(1);
        out.push(summary);
    }
    overall.finish_and_clear();
    out
}

/// Prints above the progress bar, or plainly when there is no terminal to draw it on (CI).
fn say(bar: &ProgressBar, text: String) {
    if bar.is_hidden() {
        eprintln!("{text}");
    } else {
        bar.println(text);
    }
}

fn line(s: &RunSummary) -> String {
    let verdict = if s.passed {
        "pass".to_string()
    } else if let Some(e) = &s.error {
        format!("ERROR {e}")
    } else {
        let failed: Vec<&str> = s
            .checks
            .iter()
            .filter(|c| !c.ok())
            .map(|c| c.name.as_str())
            .collect();
        format!("FAIL {}", failed.join(", "))
    };
    format!(
        "seed {:>5}  {:>5.1}s  {} ops ({} ok, {} fail, {} unknown)  {}{}\n    {}",
        s.seed,
        s.seconds,
        s.ops,
        s.ok,
        s.fail,
        s.unknown,
        verdict,
        s.folder
            .as_ref()
            .map(|f| format!("  → {}", f.display()))
            .unwrap_or_default(),
        s.schedule
    )
}

fn table(runs: &[RunSummary]) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "{:>6} {:>5} {:>6} {:>6} {:>6} {:>6} {:>7} {:>7}  {}\n",
        "seed", "nodes", "faults", "ops", "ok", "fail", "unknown", "secs", "result"
    ));
    for s in runs {
        let result = if s.passed {
            "pass".to_string()
        } else if s.error.is_some() {
            "error".to_string()
        } else {
            format!(
                "FAIL: {}",
                s.checks
                    .iter()
                    .filter(|c| !c.ok())
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        out.push_str(&format!(
            "{:>6} {:>5} {:>6} {:>6} {:>6} {:>6} {:>7} {:>7.1}  {}\n",
            s.seed, s.nodes, s.faults, s.ops, s.ok, s.fail, s.unknown, s.seconds, result
        ));
    }
    let mut by_fault: std::collections::BTreeMap<String, usize> = Default::default();
    for s in runs {
        for f in s.schedule.split(": ").nth(1).unwrap_or("").split(", ") {
            if let Some(name) = f.split('@').next().filter(|n| !n.is_empty()) {
                let name = if name.starts_with("delay-") {
                    "delay"
                } else if name.starts_with("slow-disk-") {
                    "slow-disk"
                } else {
                    name
                };
                *by_fault.entry(name.to_string()).or_default() += 1;
            }
        }
    }
    let mut invariants: std::collections::BTreeMap<String, (u64, usize)> = Default::default();
    for s in runs {
        for c in &s.checks {
            let e = invariants.entry(c.name.clone()).or_default();
            e.0 += c.checked;
            e.1 += usize::from(!c.ok());
        }
    }
    out.push_str(&format!(
        "\n{} schedules: {} passed, {} failed, {} could not run; {} operations; {} faults; {} with skewed clocks\n",
        runs.len(),
        runs.iter().filter(|s| s.passed).count(),
        runs.iter().filter(|s| !s.passed && s.error.is_none()).count(),
        runs.iter().filter(|s| s.error.is_some()).count(),
        runs.iter().map(|s| s.ops).sum::<usize>(),
        runs.iter().map(|s| s.faults).sum::<usize>(),
        runs.iter().filter(|s| s.schedule.contains("clocks [")).count(),
    ));
    out.push_str("faults: ");
    out.push_str(
        &by_fault
            .iter()
            .map(|(k, v)| format!("{k} ×{v}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    out.push_str("\ninvariants (items checked over all runs, runs failing):\n");
    for (name, (checked, failed)) in invariants {
        out.push_str(&format!(
            "  {name:<13} {checked:>8} checked, {failed} runs failed\n"
        ));
    }
    out
}

/// Runs every mutation's schedule; exit 0 only if each was caught by one of its checkers.
async fn mutation_smoke(cli: &Cli, only: &[String]) -> ExitCode {
    for name in only {
        if let Err(e) = lockstep_core::mutation::Mutation::parse(name) {
            eprintln!("--only: {e}");
            return ExitCode::from(2);
        }
    }
    let config = RunConfig {
        lockstepd: cli.lockstepd.clone().unwrap_or_else(default_lockstepd),
        results: cli.results.join("mutations"),
        clients: cli.clients,
        workers: cli.workers,
        keep: cli.keep,
    };
    let mut missed = Vec::new();
    let mut rows = Vec::new();
    for m in mutations::runs() {
        let name = m.mutation.name();
        if !only.is_empty() && !only.iter().any(|o| o == name) {
            continue;
        }
        println!("mutation {name}: {}", m.why);
        let bar = spinner();
        bar.set_prefix(name.to_string());
        let summary = run(&config, &m.schedule, |msg| bar.set_message(msg.to_string())).await;
        bar.finish_and_clear();
        let failed: Vec<&str> = summary
            .checks
            .iter()
            .filter(|c| !c.ok())
            .map(|c| c.name.as_str())
            .collect();
        let caught = failed.iter().any(|c| m.caught_by.contains(c));
        let verdict = match (&summary.error, caught) {
            (Some(e), _) => format!("NOT CAUGHT: the run could not be carried out: {e}"),
            (None, true) => format!("caught by {}", failed.join(", ")),
            (None, false) if failed.is_empty() => "NOT CAUGHT: every check passed".to_string(),
            (None, false) => format!(
                "NOT CAUGHT by {} (only by {})",
                m.caught_by.join(" or "),
                failed.join(", ")
            ),
        };
        for c in summary.checks.iter().filter(|c| !c.ok()) {
            for p in c.problems.iter().take(2) {
                println!("    {}: {p}", c.name);
            }
        }
        println!(
            "  → {verdict} ({} ops, {:.1}s)",
            summary.ops, summary.seconds
        );
        if summary.error.is_some() || !caught {
            missed.push(name);
        }
        rows.push((name, verdict));
    }
    println!();
    for (name, verdict) in &rows {
        println!("{name:<24} {verdict}");
    }
    if missed.is_empty() {
        println!(
            "every mutation was caught ({} of {})",
            rows.len(),
            rows.len()
        );
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "the harness missed {}: a checker has a blind spot (run folders under {})",
            missed.join(", "),
            config.results.display()
        );
        ExitCode::FAILURE
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let skew = !cli.no_skew && libfaketime().is_some();
    let runs = match &cli.command {
        Command::Show {
            seed,
            nodes,
            duration,
        } => {
            let s = Schedule::generate(*seed, *nodes, *duration, skew);
            println!("{}", s.describe());
            println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
            return ExitCode::SUCCESS;
        }
        Command::Check { folder } => {
            let text = match std::fs::read_to_string(folder.join("observation.json")) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("{}: {e}", folder.join("observation.json").display());
                    return ExitCode::from(2);
                }
            };
            let obs: Observation = match serde_json::from_str(&text) {
                Ok(o) => o,
                Err(e) => {
                    eprintln!("observation.json: {e}");
                    return ExitCode::from(2);
                }
            };
            let reports = checks::run_all(&obs);
            print!(
                "{}",
                report::timeline(&folder.display().to_string(), &[], &[], &reports)
            );
            return if reports.iter().all(|r| r.ok()) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
        }
        Command::Run {
            seed,
            nodes,
            duration,
        } => {
            let mut s = Schedule::generate(*seed, *nodes, *duration, skew);
            if cli.bursts {
                s.add_bursts();
            }
            let config = RunConfig {
                lockstepd: cli.lockstepd.clone().unwrap_or_else(default_lockstepd),
                results: cli.results.clone(),
                clients: cli.clients,
                workers: cli.workers,
                keep: cli.keep,
            };
            println!("seed {}: {}", s.seed, s.describe());
            let bar = spinner();
            bar.set_prefix(format!("seed {}", s.seed));
            let summary = run(&config, &s, |m| bar.set_message(m.to_string())).await;
            bar.finish_and_clear();
            for c in &summary.checks {
                println!(
                    "  {:<13} {} ({} checked){}",
                    c.name,
                    if c.ok() { "ok" } else { "FAILED" },
                    c.checked,
                    if c.notes.is_empty() {
                        String::new()
                    } else {
                        format!("; {}", c.notes.join("; "))
                    }
                );
                for p in &c.problems {
                    println!("    - {p}");
                }
            }
            vec![summary]
        }
        Command::Mutations { only } => return mutation_smoke(&cli, only).await,
        Command::Smoke { duration } => run_many(&cli, smoke_schedules(*duration), None).await,
        Command::Long {
            schedules,
            first_seed,
            duration,
            budget,
        } => {
            let list = (*first_seed..first_seed + schedules)
                .map(|seed| Schedule::generate(seed, None, *duration, skew))
                .collect();
            run_many(&cli, list, *budget).await
        }
    };
    println!("{}", table(&runs));
    if runs.iter().all(|r| r.passed) {
        ExitCode::SUCCESS
    } else {
        for r in runs.iter().filter(|r| !r.passed) {
            if let Some(f) = &r.folder {
                eprintln!(
                    "seed {} failed: see {}/timeline.txt and latency.svg",
                    r.seed,
                    f.display()
                );
            }
        }
        ExitCode::FAILURE
    }
}
