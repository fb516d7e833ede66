//! `--scenario console`: the console's instance list on a large state. Creates `--instances`
//! instances of a small workflow whose SLA (2 s) applies to 1% of them (`when:` on
//! `data.urgent`), waits until those breach, then asks the console for the list filtered to
//! breached SLAs, with its count, `--samples` times, and reports the node's own render time
//! (`Server-Timing: render;dur=`), the HTTP round trip, and the same filter over gRPC.
//! The issue 20 aim: under 100 ms server-side at 100,000 instances.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use lockstep_client::{Client, Identity, Options, pb, request_id};
use lockstep_core::ActorKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WORKFLOW: &str = "console-bench";
const DEFINITION: &str = r#"
workflow: console-bench
description: The console benchmark's instances; the response SLA applies to urgent ones.
data: { type: object }
states:
  open: { initial: true }
  done: { terminal: true }
slas:
  response:
    start: { enter: open }
    stop: { enter: done }
    within: 2s
    when: "instance.data.urgent == true"
transitions:
  close: { from: open, to: done }
"#;
/// One instance in this many is urgent (its SLA breaches).
const URGENT_EVERY: usize = 100;
/// How long the urgent instances may take to breach once all are created.
const BREACH_WAIT: Duration = Duration::from_secs(120);

pub struct ConsoleRun {
    pub instances: usize,
    pub creators: usize,
    pub samples: usize,
    pub console: String,
    pub json: Option<std::path::PathBuf>,
}

#[derive(serde::Serialize)]
struct Report {
    instances: usize,
    breached: u64,
    samples: usize,
    render_ms_p50: f64,
    render_ms_p99: f64,
    render_ms_max: f64,
    http_ms_p50: f64,
    http_ms_p99: f64,
    grpc_list_ms_p50: f64,
    grpc_list_ms_p99: f64,
    definition_render_ms_p50: f64,
    create_seconds: f64,
}

fn client(endpoints: &[String]) -> anyhow::Result<Client> {
    Client::new(
        endpoints,
        Some(Identity::new("bench", ActorKind::Service, &[])),
        Options::default(),
    )
    .map_err(anyhow::Error::msg)
}

/// One GET of the console as the development actor `bench`: (status, Server-Timing render
/// ms, body).
async fn get(console: &str, path: &str) -> anyhow::Result<(u16, f64, String)> {
    let mut stream = tokio::net::TcpStream::connect(console)
        .await
        .with_context(|| format!("connecting to the console at {console}"))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {console}\r\nConnection: close\r\nCookie: lockstep_actor=bench\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("not an HTTP response")?;
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status")?;
    let render = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("server-timing").then(|| {
                value
                    .trim()
                    .strip_prefix("render;dur=")?
                    .parse::<f64>()
                    .ok()
            })?
        })
        .context("no Server-Timing header")?;
    Ok((status, render, body.to_string()))
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

pub async fn run(endpoints: &[String], run: ConsoleRun) -> anyhow::Result<()> {
    let admin = client(endpoints)?;
    admin
        .apply_definition(&request_id(), DEFINITION, Default::default())
        .await
        .map_err(|e| anyhow::anyhow!("applying the benchmark workflow: {e}"))?;

    println!(
        "creating {} instances ({} urgent) with {} creators",
        run.instances,
        run.instances / URGENT_EVERY,
        run.creators
    );
    let bar = indicatif::ProgressBar::new(run.instances as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:>9} [{bar:40}] {pos}/{len} {elapsed}/{duration}",
        )
        .expect("template")
        .progress_chars("=> "),
    );
    bar.set_message("created");
    let started = Instant::now();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut creators = Vec::new();
    for _ in 0..run.creators.max(1) {
        let c = client(endpoints)?;
        let next = std::sync::Arc::clone(&next);
        let bar = bar.clone();
        let total = run.instances;
        creators.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= total {
                    return Ok::<_, anyhow::Error>(());
                }
                let data = serde_json::json!({"n": n, "urgent": n.is_multiple_of(URGENT_EVERY)});
                let rid = format!("console-bench-{n}");
                let mut attempts = 0;
                loop {
                    match c.create(&rid, WORKFLOW, None, &data).await {
                        Ok(_) => break,
                        Err(e) if attempts < 20 => {
                            attempts += 1;
                            let _ = e;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(e) => bail!("creating instance {n}: {e}"),
                    }
                }
                bar.inc(1);
            }
        }));
    }
    for c in creators {
        c.await??;
    }
    bar.finish();
    let create_seconds = started.elapsed().as_secs_f64();
    println!(
        "created {} instances in {create_seconds:.1} s",
        run.instances
    );

    let want = (run.instances.div_ceil(URGENT_EVERY)) as u64;
    let filter = pb::ListInstancesRequest {
        workflow: WORKFLOW.into(),
        sla_status: "breached".into(),
        page_size: 50,
        ..Default::default()
    };
    let deadline = Instant::now() + BREACH_WAIT;
    let breached = loop {
        let page = admin.list(filter.clone()).await?;
        match page.total {
            Some(n) if n >= want => break n,
            None => bail!(
                "the list has no count: the cluster's log format is older than 4 (the list indexes); is every node this build?"
            ),
            Some(n) if Instant::now() > deadline => {
                bail!("only {n} of {want} urgent instances breached within {BREACH_WAIT:?}")
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    };
    println!(
        "{breached} breached; sampling the console {} times",
        run.samples
    );

    let path = format!("/instances?workflow={WORKFLOW}&sla=breached");
    let mut render = Histogram::<u64>::new(3)?;
    let mut http = Histogram::<u64>::new(3)?;
    let mut grpc = Histogram::<u64>::new(3)?;
    let mut definition = Histogram::<u64>::new(3)?;
    for _ in 0..run.samples {
        let t = Instant::now();
        let (status, took, body) = get(&run.console, &path).await?;
        http.record(t.elapsed().as_micros() as u64)?;
        if status != 200 || !body.contains(&format!("{breached} match")) {
            bail!("the console answered {status} without the count `{breached} match`:\n{body}");
        }
        render.record((took * 1000.0) as u64)?;
        let t = Instant::now();
        admin.list(filter.clone()).await?;
        grpc.record(t.elapsed().as_micros() as u64)?;
        let (_, took, _) = get(&run.console, &format!("/workflows/{WORKFLOW}")).await?;
        definition.record((took * 1000.0) as u64)?;
    }
    let report = Report {
        instances: run.instances,
        breached,
        samples: run.samples,
        render_ms_p50: ms(&render, 0.5),
        render_ms_p99: ms(&render, 0.99),
        render_ms_max: render.max() as f64 / 1000.0,
        http_ms_p50: ms(&http, 0.5),
        http_ms_p99: ms(&http, 0.99),
        grpc_list_ms_p50: ms(&grpc, 0.5),
        grpc_list_ms_p99: ms(&grpc, 0.99),
        definition_render_ms_p50: ms(&definition, 0.5),
        create_seconds,
    };
    println!();
    println!(
        "console list of breached SLAs ({breached} of {} instances, page of 50 with its count):",
        run.instances
    );
    println!(
        "  server render  p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms   (aim: < 100 ms)",
        report.render_ms_p50, report.render_ms_p99, report.render_ms_max
    );
    println!(
        "  HTTP round trip p50 {:.2} ms  p99 {:.2} ms",
        report.http_ms_p50, report.http_ms_p99
    );
    println!(
        "  gRPC List (same filter) p50 {:.2} ms  p99 {:.2} ms",
        report.grpc_list_ms_p50, report.grpc_list_ms_p99
    );
    println!(
        "  definition page with state counts: render p50 {:.2} ms",
        report.definition_render_ms_p50
    );
    if let Some(path) = &run.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing the JSON report to {}", path.display()))?;
        println!("\nJSON report: {}", path.display());
    }
    Ok(())
}
