//! lockstep-bench: load-test a Lockstep cluster.
//!
//! It starts a local cluster of durable `lockstepd` processes on loopback (or targets given
//! endpoints), applies the purchase-order workflow, and runs a closed loop of N concurrent
//! clients. Each client repeats: create an instance, then take `submit` (two audited,
//! replicated writes). Latencies go into an HdrHistogram; the report gives throughput and
//! p50/p90/p99/p99.9/max, as a table and as JSON.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use hdrhistogram::Histogram;
use lockstep_client::{Client, Identity, Options, by_id, pb, request_id};
use lockstep_core::ActorKind;

/// Load-test Lockstep: N concurrent clients taking audited transitions.
///
/// Example: lockstep-bench --nodes 3 --concurrency 1,16,64 --duration 10s
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Start a local cluster of this many nodes (1, 3 or 5); ignored with --endpoints.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Target an existing cluster instead (comma separated host:port; dev mode).
    #[arg(long, value_delimiter = ',')]
    endpoints: Vec<String>,
    /// Concurrent clients; a comma separated list runs a sweep.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    concurrency: Vec<usize>,
    /// Measured time per concurrency level, e.g. 10s.
    #[arg(long, default_value = "10s")]
    duration: String,
    /// Warm-up time per level (not measured).
    #[arg(long, default_value = "2s")]
    warmup: String,
    /// The lockstepd binary (defaults to the one next to this binary).
    #[arg(long)]
    lockstepd: Option<PathBuf>,
    /// Write the JSON report here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// What to measure: `transitions` (create + submit) or `tasks` (poll -> complete round
    /// trips by N workers, and the latency from a transition to its task's delivery).
    #[arg(long, default_value = "transitions", value_parser = ["transitions", "tasks", "timers"])]
    scenario: String,
    /// `timers` scenario: how many timers to arm (one state-expiry timer per instance).
    #[arg(long, default_value_t = 10_000)]
    timers: usize,
}

mod timers;

mod tasks;

pub(crate) struct LocalCluster {
    _dir: tempfile::TempDir,
    pub(crate) children: Vec<Child>,
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start_cluster(nodes: usize, binary: &PathBuf) -> anyhow::Result<(LocalCluster, Vec<String>)> {
    let dir = tempfile::tempdir()?;
    let ports: Vec<u16> = (0..nodes)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").map(|l| l.local_addr().unwrap().port()))
        .collect::<Result<_, _>>()?;
    let endpoints: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let members = endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| format!("{}={e}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut children = Vec::new();
    for (i, e) in endpoints.iter().enumerate() {
        let log = std::fs::File::create(dir.path().join(format!("node{}.log", i + 1)))?;
        children.push(
            Command::new(binary)
                .args([
                    "--id",
                    &(i + 1).to_string(),
                    "--listen",
                    e,
                    "--initial-members",
                    &members,
                    "--dev",
                ])
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
        },
        endpoints,
    ))
}

pub(crate) fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    lockstep_core::duration::Duration::parse(text)
        .map(|d| Duration::from_millis(d.as_ms()))
        .map_err(anyhow::Error::msg)
}

#[derive(serde::Serialize)]
struct Level {
    concurrency: usize,
    operations: u64,
    errors: u64,
    seconds: f64,
    ops_per_second: f64,
    p50_us: u64,
    p90_us: u64,
    p99_us: u64,
    p999_us: u64,
    max_us: u64,
}

async fn run_level(
    client: Arc<Client>,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
    bar: &indicatif::ProgressBar,
) -> Level {
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let client = Arc::clone(&client);
        tasks.push(tokio::spawn(async move {
            let mut h =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
            let mut errors = 0u64;
            while Instant::now() < end {
                let t0 = Instant::now();
                let created = client
                    .create(
                        &request_id(),
                        "purchase-order",
                        None,
                        &serde_json::json!({"amount": 100, "requester": "alice"}),
                    )
                    .await;
                let t1 = Instant::now();
                let ok_create = created.is_ok();
                let mut ok_submit = false;
                let mut t2 = t1;
                if let Ok(c) = created {
                    ok_submit = client
                        .transition(
                            &request_id(),
                            by_id(&c.instance_id),
                            "submit",
                            &serde_json::Value::Null,
                            None,
                        )
                        .await
                        .is_ok();
                    t2 = Instant::now();
                }
                if t0 >= measure_from && t2 <= end {
                    if ok_create {
                        h.record((t1 - t0).as_micros() as u64).ok();
                    } else {
                        errors += 1;
                    }
                    if ok_submit {
                        h.record((t2 - t1).as_micros() as u64).ok();
                    } else if ok_create {
                        errors += 1;
                    }
                }
            }
            (h, errors)
        }));
    }
    let ticker = {
        let bar = bar.clone();
        tokio::spawn(async move {
            while Instant::now() < end {
                bar.set_position(start.elapsed().as_millis() as u64);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
    let mut errors = 0;
    for t in tasks {
        let (h, e) = t.await.expect("client task");
        all.add(h).expect("same bounds");
        errors += e;
    }
    let _ = ticker.await;
    let seconds = duration.as_secs_f64();
    Level {
        concurrency,
        operations: all.len(),
        errors,
        seconds,
        ops_per_second: all.len() as f64 / seconds,
        p50_us: all.value_at_quantile(0.50),
        p90_us: all.value_at_quantile(0.90),
        p99_us: all.value_at_quantile(0.99),
        p999_us: all.value_at_quantile(0.999),
        max_us: all.max(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let duration = parse_duration(&args.duration)?;
    let warmup = parse_duration(&args.warmup)?;
    let (mut cluster, endpoints) = if args.endpoints.is_empty() {
        if ![1, 3, 5].contains(&args.nodes) {
            bail!("--nodes must be 1, 3 or 5");
        }
        let binary = args.lockstepd.clone().unwrap_or_else(|| {
            std::env::current_exe()
                .expect("current exe")
                .with_file_name("lockstepd")
        });
        let (c, e) = start_cluster(args.nodes, &binary)?;
        (Some(c), e)
    } else {
        (None, args.endpoints.clone())
    };
    let client = Arc::new(
        Client::new(
            &endpoints,
            Some(Identity::new("alice", ActorKind::Human, &["requester"])),
            Options::default(),
        )
        .map_err(anyhow::Error::msg)?,
    );
    // Wait for a leader, then apply the workflow.
    let po = include_str!("../../examples/workflows/purchase-order.yaml");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client
            .apply_definition(
                &request_id(),
                po,
                pb::Provenance {
                    repository: "bench".into(),
                    commit: String::new(),
                    path: "purchase-order.yaml".into(),
                },
            )
            .await
        {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => bail!("the cluster did not accept the workflow: {e}"),
        }
    }
    if args.scenario == "timers" {
        return timers::run(&endpoints, cluster.as_mut(), args.timers, &args.concurrency).await;
    }
    if args.scenario == "tasks" {
        return tasks::run(
            &endpoints,
            &args.concurrency,
            warmup,
            duration,
            args.json.as_deref(),
        )
        .await;
    }
    let mut levels = Vec::new();
    for &c in &args.concurrency {
        let total = (warmup + duration).as_millis() as u64;
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{msg:>18} [{bar:40}] {elapsed}/{duration}")
                .expect("template")
                .progress_chars("=> "),
        );
        bar.set_message(format!("concurrency {c}"));
        let level = run_level(Arc::clone(&client), c, warmup, duration, &bar).await;
        bar.finish_and_clear();
        levels.push(level);
    }
    println!(
        "\n{} node(s), durable RocksDB, loopback; each operation is one audited, replicated write (create or submit)\n",
        if args.endpoints.is_empty() {
            args.nodes.to_string()
        } else {
            format!("{} endpoint(s)", endpoints.len())
        }
    );
    println!("| clients | ops/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | errors |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for l in &levels {
        let ms = |us: u64| us as f64 / 1000.0;
        println!(
            "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
            l.concurrency,
            l.ops_per_second,
            ms(l.p50_us),
            ms(l.p90_us),
            ms(l.p99_us),
            ms(l.p999_us),
            ms(l.max_us),
            l.errors
        );
    }
    if let Some(path) = args.json {
        std::fs::write(&path, serde_json::to_string_pretty(&levels)?)?;
        println!("\nJSON report: {}", path.display());
    }
    Ok(())
}
