//! The `timers` scenario: arm many timers, let them fall due under a transition load, and
//! kill the leader while they are due.
//!
//! Each instance of `bench-timers` arms one state-expiry timer when created. Creators run a
//! closed loop (the concurrent transition load) until every timer is armed; the expiry is long
//! enough that the first timer falls due only after the last is armed, so the figures include
//! resident memory with every timer armed. While timers fall due, the creators go on taking
//! `touch` transitions on other instances; one second after the first due time the leader is
//! killed (local clusters only). Lateness (`fired_at - due_at`, cluster time) comes from each
//! firing's audit record, read from the change feed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use lockstep_client::{Client, Identity, Options, by_id, pb, request_id};
use lockstep_core::ActorKind;

use crate::LocalCluster;

fn workflow(expiry_s: u64) -> String {
    format!(
        r#"
workflow: bench-timers
data: {{ type: object }}
states:
  waiting: {{ initial: true, expires: {{ after: {expiry_s}s, transition: time_out }} }}
  busy: {{}}
  timed_out: {{ terminal: true }}
transitions:
  time_out: {{ from: waiting, to: timed_out, system: true }}
  touch: {{ from: [busy], to: busy, allow: "true" }}
  park: {{ from: waiting, to: busy, allow: "true" }}
"#
    )
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

async fn leader_index(endpoints: &[String]) -> Option<usize> {
    for (i, e) in endpoints.iter().enumerate() {
        let c = Client::new(
            std::slice::from_ref(e),
            Some(Identity::new("bench", ActorKind::Service, &[])),
            Options::default(),
        )
        .ok()?;
        if let Ok(s) = c.status_of(0, false).await
            && s.role == "Leader"
        {
            return Some(i);
        }
    }
    None
}

pub async fn run(
    endpoints: &[String],
    mut cluster: Option<&mut LocalCluster>,
    timers: usize,
    concurrency: &[usize],
) -> anyhow::Result<()> {
    let creators = concurrency.iter().copied().max().unwrap_or(16).max(1);
    let client = Arc::new(
        Client::new(
            endpoints,
            Some(Identity::new("bench", ActorKind::Service, &[])),
            Options::default(),
        )
        .map_err(anyhow::Error::msg)?,
    );
    // Measure the create rate briefly to choose an expiry after the last timer is armed.
    client
        .apply_definition(&request_id(), &workflow(3600), pb::Provenance::default())
        .await?;
    let probe = Instant::now();
    let mut probes = Vec::new();
    for _ in 0..creators {
        let c = Arc::clone(&client);
        probes.push(tokio::spawn(async move {
            let mut n = 0u64;
            while probe.elapsed() < Duration::from_secs(2) {
                if c.create(&request_id(), "bench-timers", None, &serde_json::json!({}))
                    .await
                    .is_ok()
                {
                    n += 1;
                }
            }
            n
        }));
    }
    let mut probed = 0;
    for p in probes {
        probed += p.await?;
    }
    let rate = (probed as f64 / 2.0).max(1.0);
    let expiry_s = ((timers as f64 / rate) * 1.5) as u64 + 10;
    client
        .apply_definition(
            &request_id(),
            &workflow(expiry_s),
            pb::Provenance::default(),
        )
        .await?;
    // Instances in `busy` for the transition load; the probe's instances are parked there.
    let mut busy = Vec::new();
    for _ in 0..creators {
        let c = client
            .create(&request_id(), "bench-timers", None, &serde_json::json!({}))
            .await?;
        client
            .transition(
                &request_id(),
                by_id(&c.instance_id),
                "park",
                &serde_json::Value::Null,
                None,
            )
            .await?;
        busy.push(c.instance_id);
    }
    let feed_from = client
        .verify_audit()
        .await
        .map(|v| v.head_seq + 1)
        .unwrap_or(1);

    let bar = indicatif::ProgressBar::new(timers as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg:>14} [{bar:40}] {pos}/{len} {elapsed}")
            .expect("template")
            .progress_chars("=> "),
    );
    bar.set_message("arming");
    let armed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let arm_started = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..creators {
        let (c, armed, bar) = (Arc::clone(&client), Arc::clone(&armed), bar.clone());
        handles.push(tokio::spawn(async move {
            while armed.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < timers {
                while c
                    .create(&request_id(), "bench-timers", None, &serde_json::json!({}))
                    .await
                    .is_err()
                {}
                bar.inc(1);
            }
        }));
    }
    for h in handles {
        h.await?;
    }
    bar.finish_and_clear();
    let arm_seconds = arm_started.elapsed().as_secs_f64();
    let rss: Vec<Option<u64>> = match cluster.as_deref() {
        Some(c) => c.children.iter().map(|ch| rss_kib(ch.id())).collect(),
        None => Vec::new(),
    };
    // The transition load runs until every timer has fired.
    let first_due = arm_started + Duration::from_secs(expiry_s);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for id in busy {
        let (c, stop) = (Arc::clone(&client), Arc::clone(&stop));
        load.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if c.transition(
                    &request_id(),
                    by_id(&id),
                    "touch",
                    &serde_json::Value::Null,
                    None,
                )
                .await
                .is_ok()
                {
                    n += 1;
                }
            }
            n
        }));
    }
    let load_started = Instant::now();
    tokio::time::sleep_until((first_due + Duration::from_secs(1)).into()).await;
    let mut killed_at = None;
    if let Some(c) = cluster.as_mut()
        && let Some(leader) = leader_index(endpoints).await
    {
        let _ = c.children[leader].kill();
        let _ = c.children[leader].wait();
        killed_at = Some(std::time::SystemTime::now());
    }
    // Read every firing from the change feed until all have fired.
    let (mut lateness, mut fired_at) = (
        Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?,
        Vec::with_capacity(timers),
    );
    let bar = indicatif::ProgressBar::new(timers as u64);
    bar.set_message("firing");
    let mut next = feed_from;
    let deadline = Instant::now() + Duration::from_secs(expiry_s * 2 + 120);
    while fired_at.len() < timers && Instant::now() < deadline {
        let Ok(mut stream) = client.tail(next, false).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        while let Ok(Some(r)) = stream.message().await {
            next = r.global_seq + 1;
            if r.kind != "timer_fired" {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(&r.record_json)?;
            let t = &v["record"]["timer"];
            let (due, at) = (
                t["due_at"].as_i64().unwrap_or(0),
                t["fired_at"].as_i64().unwrap_or(0),
            );
            lateness.record((at - due).max(1) as u64).ok();
            fired_at.push((due, at));
            bar.inc(1);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bar.finish_and_clear();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut transitions = 0;
    for l in load {
        transitions += l.await?;
    }
    let load_seconds = load_started.elapsed().as_secs_f64();
    let first = fired_at.iter().map(|f| f.1).min().unwrap_or(0);
    let last = fired_at.iter().map(|f| f.1).max().unwrap_or(0);
    let window = ((last - first) as f64 / 1e6).max(1e-3);
    println!(
        "\n{timers} timers armed by {creators} clients in {arm_seconds:.1} s ({:.0} creates/s); expiry {expiry_s} s",
        timers as f64 / arm_seconds
    );
    for (i, r) in rss.iter().enumerate() {
        println!(
            "node {} resident memory with every timer armed: {}",
            i + 1,
            r.map(|k| format!("{:.0} MiB", k as f64 / 1024.0))
                .unwrap_or_else(|| "gone".into())
        );
    }
    println!(
        "fired {} of {timers} timers over {window:.1} s ({:.0} fires/s) under a concurrent load of {:.0} transitions/s",
        fired_at.len(),
        fired_at.len() as f64 / window,
        transitions as f64 / load_seconds
    );
    let ms = |us: u64| us as f64 / 1000.0;
    println!(
        "lateness (fired_at - due_at, cluster time): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(lateness.value_at_quantile(0.5)),
        ms(lateness.value_at_quantile(0.99)),
        ms(lateness.max())
    );
    if let Some(k) = killed_at {
        let kill_us = k.duration_since(std::time::UNIX_EPOCH)?.as_micros() as i64;
        // Timers due before the kill, or while there was no leader, and fired after it.
        let first_after = fired_at
            .iter()
            .map(|f| f.1)
            .filter(|at| *at > kill_us)
            .min();
        if let Some(first_after) = first_after {
            let overdue_done = fired_at
                .iter()
                .filter(|(due, at)| *due <= first_after && *at > kill_us)
                .map(|f| f.1)
                .max()
                .unwrap_or(first_after);
            println!(
                "leader killed 1 s after the first due time: first fire {:.0} ms after the kill, every timer overdue by then fired {:.0} ms after the kill",
                (first_after - kill_us) as f64 / 1000.0,
                (overdue_done - kill_us) as f64 / 1000.0
            );
        }
    }
    Ok(())
}
