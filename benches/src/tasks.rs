//! The `tasks` scenario: N workers long-poll one queue while producers keep it supplied.
//!
//! Producers create an instance and take `start`, whose effect puts a task on the `bench`
//! queue; the moment `start` is acknowledged is the task's birth. Workers poll one task at a
//! time and complete it. Reported per worker count: completed tasks per second, the poll ->
//! complete round trip (two replicated writes: the lease and the completion), and the
//! delivery latency from the acknowledged transition to the poll that leased the task.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use lockstep_client::{Client, Identity, Options, by_id, request_id};
use lockstep_core::ActorKind;

use crate::cost::{Cost, Probe, Sample};

/// The workflow (also the `tasks` spec's): `start` puts a task on the `bench` queue.
const WORKFLOW: &str = include_str!("../specs/workflows/bench-tasks.yaml");

/// Producers per worker: enough that workers rarely find the queue empty.
const PRODUCERS_PER_WORKER: usize = 2;
/// Most tasks waiting per worker; producers pause above it, so the delivery latency measures
/// how fast a ready task reaches an idle worker rather than how long a backlog is.
const BACKLOG_PER_WORKER: usize = 2;

#[derive(serde::Serialize)]
struct Level {
    workers: usize,
    completed: u64,
    errors: u64,
    seconds: f64,
    tasks_per_second: f64,
    round_trip_p50_us: u64,
    round_trip_p99_us: u64,
    delivery_p50_us: u64,
    delivery_p99_us: u64,
    delivery_max_us: u64,
    /// What a completed task cost the nodes (absent for remote endpoints).
    cost: Option<Cost>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds")
}

pub async fn run(
    endpoints: &[String],
    workers: &[usize],
    warmup: Duration,
    duration: Duration,
    json: Option<&Path>,
    probe: &Probe,
) -> anyhow::Result<()> {
    let human = Arc::new(
        Client::new(
            endpoints,
            Some(Identity::new("bench", ActorKind::Service, &[])),
            Options::default(),
        )
        .map_err(anyhow::Error::msg)?,
    );
    human
        .apply_definition(
            &request_id(),
            WORKFLOW,
            lockstep_client::Provenance::default(),
        )
        .await?;
    let mut levels = Vec::new();
    for &n in workers {
        let bar = indicatif::ProgressBar::new((warmup + duration).as_millis() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{msg:>18} [{bar:40}] {elapsed}/{duration}")
                .expect("template")
                .progress_chars("=> "),
        );
        bar.set_message(format!("{n} worker(s)"));
        levels.push(level(endpoints, &human, n, warmup, duration, &bar, probe).await?);
        bar.finish_and_clear();
    }
    println!(
        "\n{} endpoint(s); each task is 4 replicated writes (create, start, lease, complete + on_complete)\n",
        endpoints.len()
    );
    println!(
        "| workers | tasks/s | poll→complete p50 ms | p99 ms | transition→delivery p50 ms | p99 ms | max ms | errors | requests/task | entries/task | cpu µs/task |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let ms = |us: u64| us as f64 / 1000.0;
    let per_task =
        |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |v| format!("{v:.digits$}"));
    for l in &levels {
        let cost = l.cost.as_ref();
        println!(
            "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} |",
            l.workers,
            l.tasks_per_second,
            ms(l.round_trip_p50_us),
            ms(l.round_trip_p99_us),
            ms(l.delivery_p50_us),
            ms(l.delivery_p99_us),
            ms(l.delivery_max_us),
            l.errors,
            per_task(cost.and_then(|c| c.requests_proposed_per_op), 2),
            per_task(cost.and_then(|c| c.raft_entries_per_op), 2),
            per_task(cost.and_then(|c| c.cpu_us_per_op), 0),
        );
    }
    println!(
        "\nrequests/task: requests proposed (writes, refused lease attempts among them) per completed task; entries/task: Raft entries; cpu: every node process together"
    );
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_string_pretty(&levels)?)?;
        println!("\nJSON report: {}", path.display());
    }
    Ok(())
}

async fn level(
    endpoints: &[String],
    human: &Arc<Client>,
    workers: usize,
    warmup: Duration,
    duration: Duration,
    bar: &indicatif::ProgressBar,
    probe: &Probe,
) -> anyhow::Result<Level> {
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let sampler = (!probe.nodes.is_empty()).then(|| {
        let probe = probe.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(measure_from.into()).await;
            let before = Sample::take(&probe).await;
            tokio::time::sleep_until(end.into()).await;
            (before, Sample::take(&probe).await)
        })
    });
    // Instance id -> when its `start` was acknowledged.
    let born: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut producers = Vec::new();
    for _ in 0..workers * PRODUCERS_PER_WORKER {
        let (client, born) = (Arc::clone(human), Arc::clone(&born));
        producers.push(tokio::spawn(async move {
            while Instant::now() < end {
                if born.lock().expect("lock").len() >= workers * BACKLOG_PER_WORKER {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                let Ok(c) = client
                    .create(&request_id(), "bench-tasks", None, &serde_json::json!({}))
                    .await
                else {
                    continue;
                };
                let started = client
                    .transition(
                        &request_id(),
                        by_id(&c.instance_id),
                        "start",
                        &serde_json::Value::Null,
                        None,
                    )
                    .await;
                if started.is_ok() {
                    born.lock()
                        .expect("lock")
                        .insert(c.instance_id, Instant::now());
                }
            }
        }));
    }
    let mut tasks = Vec::new();
    for w in 0..workers {
        let client = Client::new(
            endpoints,
            Some(Identity::new(
                &format!("bench-worker-{w}"),
                ActorKind::Worker,
                &[],
            )),
            Options::default(),
        )
        .map_err(anyhow::Error::msg)?;
        let born = Arc::clone(&born);
        tasks.push(tokio::spawn(async move {
            let (mut trip, mut delivery) = (histogram(), histogram());
            let mut errors = 0u64;
            while Instant::now() < end {
                let t0 = Instant::now();
                let leased = match client
                    .poll_tasks("bench", 1, Duration::from_millis(500))
                    .await
                {
                    Ok(t) => t,
                    Err(_) => {
                        errors += 1;
                        continue;
                    }
                };
                let delivered = Instant::now();
                for task in leased {
                    let lease = task.lease;
                    let birth = born.lock().expect("lock").remove(&lease.instance_id);
                    let ok = client
                        .complete_task(&request_id(), &lease, &serde_json::json!({}))
                        .await
                        .is_ok();
                    let t1 = Instant::now();
                    if t0 >= measure_from && t1 <= end {
                        if !ok {
                            errors += 1;
                            continue;
                        }
                        trip.record((t1 - t0).as_micros() as u64).ok();
                        if let Some(b) = birth {
                            delivery.record((delivered - b).as_micros() as u64).ok();
                        }
                    }
                }
            }
            (trip, delivery, errors)
        }));
    }
    while Instant::now() < end {
        bar.set_position(start.elapsed().as_millis() as u64);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (mut trip, mut delivery, mut errors) = (histogram(), histogram(), 0);
    for t in tasks {
        let (a, b, e) = t.await?;
        trip.add(a).expect("same bounds");
        delivery.add(b).expect("same bounds");
        errors += e;
    }
    for p in producers {
        p.await?;
    }
    let cost = match sampler {
        Some(s) => {
            let (before, after) = s.await?;
            Some(Cost::between(&before, &after, trip.len()))
        }
        None => None,
    };
    let seconds = duration.as_secs_f64();
    Ok(Level {
        workers,
        completed: trip.len(),
        errors,
        seconds,
        tasks_per_second: trip.len() as f64 / seconds,
        round_trip_p50_us: trip.value_at_quantile(0.5),
        round_trip_p99_us: trip.value_at_quantile(0.99),
        delivery_p50_us: delivery.value_at_quantile(0.5),
        delivery_p99_us: delivery.value_at_quantile(0.99),
        delivery_max_us: delivery.max(),
        cost,
    })
}
