//! The `timers` scenario: arm many timers, measure lateness under a transition load at half of
//! the cluster's peak, then let every armed timer fall due and kill the leader while they do.
//!
//! Phases, in order:
//!
//! 1. **Peak**: `touch` transitions by `creators` closed-loop clients for a few seconds give the
//!    fresh cluster's peak transition rate, which sizes the expiry of the armed timers.
//! 2. **Arm**: closed-loop creates of `bench-timers` instances, each arming one state-expiry
//!    timer. The expiry is chosen so that the first timer falls due only after phase 3; each
//!    node's resident memory is read with every timer armed, and the peak is probed again: the
//!    concurrent load of the later phases is half of this peak (or `--load-rate`).
//! 3. **Steady lateness** (`--duration`): an open-loop load at the load rate, nine units in ten
//!    a `touch`, one in ten the create of a `bench-short` instance whose 2 s expiry timer then
//!    fires during the load. With the million timers still armed, this is lateness at half of
//!    peak load without a failover.
//! 4. **Fire and fail over**: the armed timers fall due at the rate they were armed, under the
//!    same open-loop load; halfway through (local clusters only) the leader is killed. Reported:
//!    firing throughput, lateness before the kill, the election, and how long after the new
//!    leader appeared every timer that was overdue by then had fired.
//!
//! Lateness (`fired_at - due_at`, cluster time) comes from each firing's audit record, read from
//! the change feed.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use lockstep_client::model::AuditKind;
use lockstep_client::{Client, Identity, Options, Role, by_id, request_id};
use lockstep_core::ActorKind;

use crate::LocalCluster;
use crate::load::{self, Outcome, Window, Workload, micros_now};

/// The workflow whose instances arm the million timers.
const ARMED: &str = "bench-timers";
/// The workflow whose instances arm the short timers of the steady lateness phase.
const SHORT: &str = "bench-short";
/// Expiry of the steady phase's timers: short enough to fire while the load runs.
const SHORT_EXPIRY_S: u64 = 2;
/// The steady phase's units: one in this many creates a `bench-short` instance.
const SHORT_EVERY: u64 = 10;
/// How long the peak probe measures (after a one-second warm-up).
const PEAK_PROBE: Duration = Duration::from_secs(4);

fn workflow(name: &str, expiry_s: u64) -> String {
    format!(
        r#"
workflow: {name}
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

/// A progress bar over `len` timers (armed or fired).
fn count_bar(len: usize, message: &'static str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:>14} [{bar:40}] {pos}/{len} {elapsed}/{duration}",
        )
        .expect("template")
        .progress_chars("=> "),
    );
    bar.set_message(message);
    bar
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

async fn leader_index(endpoints: &[String], skip: Option<usize>) -> Option<usize> {
    for (i, e) in endpoints.iter().enumerate() {
        if Some(i) == skip {
            continue;
        }
        let Ok(c) = Client::new(
            std::slice::from_ref(e),
            Some(Identity::new("bench", ActorKind::Service, &[])),
            Options::default(),
        ) else {
            continue;
        };
        if let Ok(s) = c.status_of(0, false).await
            && s.role == Role::Leader
        {
            return Some(i);
        }
    }
    None
}

/// The concurrent transition load: `touch` on instances parked in `busy`, and (when `short`)
/// one unit in [`SHORT_EVERY`] the create of a `bench-short` instance instead.
/// Its units are spread over several connections, and refusals by admission control are
/// counted, not retried, so that a load above capacity reaches the server as offered.
struct TouchLoad {
    clients: Vec<Client>,
    busy: Vec<String>,
    short: bool,
}

impl TouchLoad {
    fn new(
        endpoints: &[String],
        connections: usize,
        busy: &[String],
        short: bool,
    ) -> anyhow::Result<TouchLoad> {
        let bench = Identity::new("bench", ActorKind::Service, &[]);
        let clients = crate::scenarios::bench_clients(endpoints, &bench, connections)?;
        Ok(TouchLoad {
            clients,
            busy: busy.to_vec(),
            short,
        })
    }
}

impl Workload for TouchLoad {
    async fn run_once(&self, sequence: u64, start: Instant) -> Outcome {
        let client = &self.clients[(sequence % self.clients.len() as u64) as usize];
        let result = if self.short && sequence.is_multiple_of(SHORT_EVERY) {
            client
                .create(&request_id(), SHORT, None, &serde_json::json!({}))
                .await
        } else {
            let id = &self.busy[(load::mix(sequence) % self.busy.len() as u64) as usize];
            client
                .transition(
                    &request_id(),
                    by_id(id),
                    "touch",
                    &serde_json::Value::Null,
                    None,
                )
                .await
        };
        crate::scenarios::one(start, &result)
    }
}

/// One timer firing read from the change feed.
#[derive(Clone, Copy, Debug)]
struct Firing {
    short: bool,
    due_us: i64,
    fired_us: i64,
}

/// Follows the change feed from `from` and collects every `timer_fired` record, reconnecting
/// (to any node) when the stream breaks, until `stop` is set.
fn follow_firings(
    client: Arc<Client>,
    from: u64,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> (Arc<Mutex<Vec<Firing>>>, tokio::task::JoinHandle<()>) {
    let firings = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&firings);
    let task = tokio::spawn(async move {
        let mut next = from;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let Ok(mut stream) = client.tail(next, true).await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            loop {
                let message = tokio::select! {
                    m = stream.next() => m,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {
                        if stop.load(std::sync::atomic::Ordering::Relaxed) {
                            return;
                        }
                        continue;
                    }
                };
                let Ok(Some(r)) = message else { break };
                next = r.global_seq + 1;
                let Some(t) = r
                    .record
                    .timer
                    .as_ref()
                    .filter(|_| r.record.kind == AuditKind::TimerFired)
                else {
                    continue;
                };
                sink.lock().expect("firings lock").push(Firing {
                    short: r.record.workflow == SHORT,
                    due_us: t.due_at.as_micros(),
                    fired_us: t.fired_at.as_micros(),
                });
            }
        }
    });
    (firings, task)
}

/// Lateness figures of a set of firings, in milliseconds.
#[derive(Debug, Default, serde::Serialize)]
struct Lateness {
    count: u64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

fn lateness<'a>(firings: impl Iterator<Item = &'a Firing>) -> Lateness {
    let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("bounds");
    for f in firings {
        h.saturating_record((f.fired_us - f.due_us).max(1) as u64);
    }
    if h.is_empty() {
        return Lateness::default();
    }
    let ms = |us: u64| us as f64 / 1000.0;
    Lateness {
        count: h.len(),
        p50_ms: ms(h.value_at_quantile(0.5)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        max_ms: ms(h.max()),
    }
}

/// The peak rate of `touch` transitions by `creators` closed-loop clients.
async fn probe_peak(touch: &Arc<TouchLoad>, creators: usize, what: &str) -> f64 {
    let window = Window {
        warmup: Duration::from_secs(1),
        duration: PEAK_PROBE,
    };
    let bar = load::progress_bar(window, format!("{what}, {creators} clients"));
    let peak = load::closed(Arc::clone(touch), creators, window, &bar, None).await;
    bar.finish_and_clear();
    peak.ops_per_second
}

/// The whole run, as written to --json.
#[derive(Debug, Default, serde::Serialize)]
struct Report {
    timers: usize,
    creators: usize,
    /// Peak transition rate before arming (it sizes the expiry).
    peak_fresh_transitions_per_second: f64,
    /// Peak transition rate with every timer armed: the load is half of it.
    peak_transitions_per_second: f64,
    load_transitions_per_second: f64,
    arm_seconds: f64,
    creates_per_second: f64,
    expiry_seconds: u64,
    /// Resident memory of each node (KiB) with every timer armed; null for remote nodes.
    rss_kib_armed: Vec<Option<u64>>,
    /// Steady phase: how long it ran, the load's own latency and the short timers' lateness.
    steady_seconds: f64,
    steady_load: Option<load::Level>,
    steady_lateness: Lateness,
    /// The armed timers: how many fired, over what window, and their lateness.
    fired: u64,
    firing_window_seconds: f64,
    fires_per_second: f64,
    fire_phase_load: Option<load::Level>,
    lateness_before_kill: Lateness,
    lateness_all: Lateness,
    /// Failover (local clusters): from the kill to a new leader, and from the new leader to
    /// the last fire of the timers overdue when it appeared.
    election_ms: Option<f64>,
    overdue_at_election: Option<u64>,
    overdue_fired_after_election_ms: Option<f64>,
    overdue_fires_per_second: Option<f64>,
}

pub struct TimerRun {
    pub timers: usize,
    pub creators: usize,
    /// Client connections the transition load is spread over.
    pub connections: usize,
    pub load_rate: Option<f64>,
    pub steady: Duration,
    pub json: Option<std::path::PathBuf>,
}

pub async fn run(
    endpoints: &[String],
    mut cluster: Option<&mut LocalCluster>,
    opts: TimerRun,
) -> anyhow::Result<()> {
    let TimerRun {
        timers,
        creators,
        connections,
        load_rate,
        steady,
        json,
    } = opts;
    let creators = creators.max(1);
    let client = Arc::new(
        Client::new(
            endpoints,
            Some(Identity::new("bench", ActorKind::Service, &[])),
            Options::default(),
        )
        .map_err(anyhow::Error::msg)?,
    );
    let mut report = Report {
        timers,
        creators,
        ..Report::default()
    };
    for (name, expiry) in [(ARMED, 3600), (SHORT, SHORT_EXPIRY_S)] {
        client
            .apply_definition(
                &request_id(),
                &workflow(name, expiry),
                lockstep_client::Provenance::default(),
            )
            .await?;
    }
    // Instances parked in `busy` for the transition load.
    let mut busy = Vec::new();
    for _ in 0..creators.max(64) {
        let c = client
            .create(&request_id(), ARMED, None, &serde_json::json!({}))
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

    // 1. Peak transition rate.
    let touch = Arc::new(TouchLoad::new(endpoints, connections, &busy, false)?);
    let peak = probe_peak(&touch, creators, "peak, fresh").await;
    report.peak_fresh_transitions_per_second = peak;

    // 2. Arm. The first timer should fall due after arming and the steady phase: creates are
    // estimated at half the peak touch rate (a million creates on a 2-core machine averaged
    // 0.54 of it, slowing as RocksDB grew), plus a margin. If arming still takes longer, the
    // steady phase is shortened (below) rather than overlap the armed timers' firing.
    let estimate = timers as f64 / (peak / 2.0).max(1.0);
    let expiry_s = (estimate * 1.25) as u64 + steady.as_secs() + PEAK_PROBE.as_secs() + 16;
    report.expiry_seconds = expiry_s;
    client
        .apply_definition(
            &request_id(),
            &workflow(ARMED, expiry_s),
            lockstep_client::Provenance::default(),
        )
        .await?;
    let bar = count_bar(timers, "arming");
    let armed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let arm_started = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..creators {
        let (c, armed, bar) = (Arc::clone(&client), Arc::clone(&armed), bar.clone());
        handles.push(tokio::spawn(async move {
            while armed.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < timers {
                // A retry reuses the request id: a create that committed despite an error
                // (e.g. a leader change) is not armed twice.
                let id = request_id();
                while c
                    .create(&id, ARMED, None, &serde_json::json!({}))
                    .await
                    .is_err()
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                bar.inc(1);
            }
        }));
    }
    for h in handles {
        h.await?;
    }
    bar.finish_and_clear();
    let first_due = arm_started + Duration::from_secs(expiry_s);
    let first_due_us = micros_now()
        + first_due
            .saturating_duration_since(Instant::now())
            .as_micros() as i64;
    report.arm_seconds = arm_started.elapsed().as_secs_f64();
    report.creates_per_second = timers as f64 / report.arm_seconds;
    report.rss_kib_armed = match cluster.as_deref() {
        Some(c) => c.children.iter().map(|ch| rss_kib(ch.id())).collect(),
        None => Vec::new(),
    };
    // The peak again, with every timer armed: the store is larger and slower than when fresh,
    // and the load of the next phases is half of what this cluster can do now.
    let peak = probe_peak(&touch, creators, "peak, armed").await;
    report.peak_transitions_per_second = peak;
    let load_rate = load_rate.unwrap_or(peak / 2.0).max(1.0);
    report.load_transitions_per_second = load_rate;
    // The change feed from here on: a marker create gives the current audit sequence.
    let marker = client
        .create(&request_id(), SHORT, None, &serde_json::json!({}))
        .await?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (firings, follower) =
        follow_firings(Arc::clone(&client), marker.audit_seq, Arc::clone(&stop));

    // 3. Steady lateness at the load rate (units include one create per SHORT_EVERY, and each
    // such create fires a timer later: the unit rate is scaled so operations match the rate).
    // It ends early enough that its last short timer falls due before the first armed one.
    let steady = steady.min(
        first_due
            .saturating_duration_since(Instant::now())
            .saturating_sub(Duration::from_secs(SHORT_EXPIRY_S + 1)),
    );
    if steady < Duration::from_secs(5) {
        println!(
            "warning: arming took {:.0} s, longer than the expiry allows; the steady phase runs {:.0} s",
            report.arm_seconds,
            steady.as_secs_f64()
        );
    }
    report.steady_seconds = steady.as_secs_f64();
    let steady_started = micros_now();
    let unit_rate = load_rate / (1.0 + 1.0 / SHORT_EVERY as f64);
    let mixed = Arc::new(TouchLoad::new(endpoints, connections, &busy, true)?);
    let window = Window {
        warmup: Duration::from_secs(0),
        duration: steady,
    };
    let bar = load::progress_bar(window, format!("steady, {load_rate:.0}/s"));
    let steady_level = load::open(mixed, unit_rate, window, &bar, None).await;
    bar.finish_and_clear();
    tokio::time::sleep(Duration::from_secs(SHORT_EXPIRY_S + 2)).await;
    report.steady_lateness = lateness(
        firings
            .lock()
            .expect("firings lock")
            .iter()
            .filter(|f| f.short && f.due_us >= steady_started && f.due_us < first_due_us),
    );
    report.steady_load = Some(steady_level);

    // 4. Let the armed timers fall due under the same load; kill the leader halfway through.
    tokio::time::sleep_until(first_due.into()).await;
    let fire_window = Duration::from_secs_f64(report.arm_seconds);
    let touch_window = Window {
        warmup: Duration::from_secs(0),
        duration: fire_window + Duration::from_secs(10),
    };
    let touch_load = {
        let touch = Arc::clone(&touch);
        let bar = indicatif::ProgressBar::hidden();
        tokio::spawn(async move { load::open(touch, load_rate, touch_window, &bar, None).await })
    };
    let bar = count_bar(timers, "firing");
    let armed_fired = || {
        firings
            .lock()
            .expect("firings lock")
            .iter()
            .filter(|f| !f.short)
            .count()
    };
    let kill_at = first_due + fire_window / 2;
    let deadline = first_due + fire_window * 3 + Duration::from_secs(120);
    let (mut killed_at, mut elected_at) = (None::<i64>, None::<i64>);
    loop {
        let n = armed_fired();
        bar.set_position(n as u64);
        if n >= timers || Instant::now() > deadline {
            break;
        }
        if killed_at.is_none()
            && Instant::now() >= kill_at
            && let Some(c) = cluster.as_mut()
            && let Some(leader) = leader_index(endpoints, None).await
        {
            let _ = c.children[leader].kill();
            let _ = c.children[leader].wait();
            killed_at = Some(micros_now());
            while elected_at.is_none() && Instant::now() < deadline {
                if leader_index(endpoints, Some(leader)).await.is_some() {
                    elected_at = Some(micros_now());
                } else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bar.finish_and_clear();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = follower.await;
    report.fire_phase_load = Some(touch_load.await?);

    let all: Vec<Firing> = firings
        .lock()
        .expect("firings lock")
        .iter()
        .filter(|f| !f.short)
        .copied()
        .collect();
    report.fired = all.len() as u64;
    let first = all.iter().map(|f| f.fired_us).min().unwrap_or(0);
    let last = all.iter().map(|f| f.fired_us).max().unwrap_or(0);
    report.firing_window_seconds = ((last - first) as f64 / 1e6).max(1e-3);
    report.fires_per_second = all.len() as f64 / report.firing_window_seconds;
    report.lateness_all = lateness(all.iter());
    report.lateness_before_kill = lateness(
        all.iter()
            .filter(|f| killed_at.is_none_or(|k| f.fired_us < k)),
    );
    if let (Some(k), Some(e)) = (killed_at, elected_at) {
        report.election_ms = Some((e - k) as f64 / 1000.0);
        // Overdue when the new leader appeared: due by then and not fired before the kill.
        let overdue: Vec<&Firing> = all
            .iter()
            .filter(|f| f.due_us <= e && f.fired_us >= k)
            .collect();
        report.overdue_at_election = Some(overdue.len() as u64);
        if let Some(done) = overdue.iter().map(|f| f.fired_us).max() {
            let from = overdue.iter().map(|f| f.fired_us).min().unwrap_or(done);
            report.overdue_fired_after_election_ms = Some((done - e) as f64 / 1000.0);
            report.overdue_fires_per_second =
                Some(overdue.len() as f64 / ((done - from) as f64 / 1e6).max(1e-3));
        }
    }
    print_report(&report);
    if let Some(path) = json {
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
        println!("\nJSON report: {}", path.display());
    }
    Ok(())
}

fn print_report(r: &Report) {
    let lat = |l: &Lateness| {
        format!(
            "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} timers)",
            l.p50_ms, l.p99_ms, l.max_ms, l.count
        )
    };
    println!(
        "\npeak with {} clients: {:.0} transitions/s fresh, {:.0} with every timer armed; concurrent load: {:.0} transitions/s (open loop)",
        r.creators,
        r.peak_fresh_transitions_per_second,
        r.peak_transitions_per_second,
        r.load_transitions_per_second
    );
    println!(
        "armed {} timers in {:.1} s ({:.0} creates/s); expiry {} s",
        r.timers, r.arm_seconds, r.creates_per_second, r.expiry_seconds
    );
    for (i, k) in r.rss_kib_armed.iter().enumerate() {
        println!(
            "node {} resident memory with every timer armed: {}",
            i + 1,
            k.map(|k| format!("{:.0} MiB", k as f64 / 1024.0))
                .unwrap_or_else(|| "gone".into())
        );
    }
    if let Some(l) = &r.steady_load {
        println!(
            "steady phase ({:.0} s): {:.0} ops/s (p50 {:.1} ms, p99 {:.1} ms, {} errors); {SHORT_EXPIRY_S} s timers' lateness {}",
            r.steady_seconds,
            l.ops_per_second,
            l.p50_us as f64 / 1000.0,
            l.p99_us as f64 / 1000.0,
            l.errors,
            lat(&r.steady_lateness)
        );
    }
    println!(
        "armed timers: fired {} of {} over {:.1} s ({:.0} fires/s)",
        r.fired, r.timers, r.firing_window_seconds, r.fires_per_second
    );
    if let Some(l) = &r.fire_phase_load {
        println!(
            "  concurrent load meanwhile: {:.0} ops/s (p50 {:.1} ms, p99 {:.1} ms, {} errors, across the failover)",
            l.ops_per_second,
            l.p50_us as f64 / 1000.0,
            l.p99_us as f64 / 1000.0,
            l.errors
        );
    }
    println!(
        "  lateness before the leader kill: {}",
        lat(&r.lateness_before_kill)
    );
    println!("  lateness of all: {}", lat(&r.lateness_all));
    if let (Some(e), Some(n)) = (r.election_ms, r.overdue_at_election) {
        println!(
            "leader killed halfway through: a new leader after {e:.0} ms with {n} timers overdue"
        );
        if let (Some(d), Some(rate)) = (
            r.overdue_fired_after_election_ms,
            r.overdue_fires_per_second,
        ) {
            println!(
                "  every overdue timer fired {d:.0} ms after the new leader appeared ({rate:.0} fires/s while catching up)"
            );
        }
    }
}
