//! The load drivers shared by every request/response scenario and by the etcd baseline.
//!
//! A [`Workload`] runs one unit of work (e.g. create + submit, one etcd put, one read) and
//! returns the latency of each request it made. Two drivers run it:
//!
//! - [`closed`]: N clients, each starting its next unit when the previous one ends. Latency is
//!   measured from the actual send.
//! - [`open`]: units arrive on a fixed schedule (`rate` per second) whatever the system does.
//!   Latency is measured from the *intended* send time, so a stall shows up in every request
//!   it delayed (no coordinated omission). At most [`IN_FLIGHT_MAX`] units run at once; an
//!   arrival that finds the bound reached waits for a slot (counted `late`, its wait is part of
//!   its latency), and arrivals still waiting when the measured window ends are `dropped`.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::cost::{Cost, Probe, Sample};

/// Most units of work in flight at once in open-loop mode. High enough that a healthy
/// cluster never reaches it at the rates a 2-core machine sustains; low enough that an
/// overloaded one is not buried under an unbounded backlog of requests and tasks.
pub(crate) const IN_FLIGHT_MAX: usize = 4096;

/// Highest latency a histogram records (60 s); slower requests are counted at this value.
const LATENCY_US_MAX: u64 = 60_000_000;

pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("histogram bounds")
}

fn record(h: &mut Histogram<u64>, latency: Duration) {
    let us = u64::try_from(latency.as_micros()).unwrap_or(LATENCY_US_MAX);
    h.saturating_record(us.clamp(1, LATENCY_US_MAX));
}

/// What one unit of work did: the latency of each request that succeeded, of each that was
/// refused by admission control or a quota (`OVERLOADED`, `QUOTA_EXCEEDED`: counted apart
/// from errors, since nothing was done and the answer came at once), the code of every
/// refusal (those and the engine's, e.g. `INVALID_TRANSITION`, which are answers, not
/// errors), and how many failed.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub(crate) latencies: Vec<Duration>,
    pub(crate) refusals: Vec<Duration>,
    pub(crate) refusal_codes: Vec<String>,
    pub(crate) errors: u64,
    /// The longest retry-after hint of its refusals. A closed-loop client waits that long
    /// (plus jitter) before its next unit, as `lockstep-client` does before a retry, instead
    /// of asking again at once: a refusal storm would spend the machine's CPU on refusals
    /// and measure the storm rather than the cluster.
    pub(crate) retry_after: Option<Duration>,
    /// The spec step this unit ran (`--spec`), whose own figures the report also gives.
    pub(crate) step: Option<Arc<str>>,
}

impl Outcome {
    /// Notes a refusal by admission control or a quota (`code`), answered after `latency`
    /// with `hint` to retry after.
    pub(crate) fn refused(&mut self, latency: Duration, hint: Option<Duration>, code: String) {
        self.refusals.push(latency);
        self.refusal_codes.push(code);
        self.retry_after = self
            .retry_after
            .max(Some(hint.unwrap_or(RETRY_AFTER_DEFAULT)));
    }
}

/// How long a closed-loop client waits after a refusal that gave no retry-after hint.
const RETRY_AFTER_DEFAULT: Duration = Duration::from_millis(10);

/// `hint` plus up to half of it again, chosen by `sequence`: clients refused together do not
/// all come back together.
fn with_jitter(hint: Duration, sequence: u64) -> Duration {
    hint + hint.mul_f64((mix(sequence) % 1_000) as f64 / 2_000.0)
}

/// Most distinct refusal codes a level counts; further ones are counted under `other`
/// (the engine has about thirty codes, so this bounds only a server sending nonsense).
const REFUSAL_CODES_MAX: usize = 64;

/// What a level measured: successes, refusals (by code) and errors, in all and per spec step.
#[derive(Clone, Debug)]
pub(crate) struct Measured {
    pub(crate) ok: Histogram<u64>,
    pub(crate) refused: Histogram<u64>,
    pub(crate) codes: BTreeMap<String, u64>,
    pub(crate) errors: u64,
    /// Per spec step: the same figures (step histograms are made when a step first ends, at
    /// two significant digits, since every closed-loop client keeps its own).
    pub(crate) steps: BTreeMap<String, StepMeasured>,
}

/// What one spec step measured.
#[derive(Clone, Debug)]
pub(crate) struct StepMeasured {
    pub(crate) ok: Histogram<u64>,
    pub(crate) refused: u64,
    pub(crate) codes: BTreeMap<String, u64>,
    pub(crate) errors: u64,
}

impl StepMeasured {
    pub(crate) fn new() -> StepMeasured {
        StepMeasured {
            ok: Histogram::new_with_bounds(1, LATENCY_US_MAX, 2).expect("histogram bounds"),
            refused: 0,
            codes: BTreeMap::new(),
            errors: 0,
        }
    }

    /// Adds what a unit (or a task worker's request) did.
    pub(crate) fn add(&mut self, outcome: &Outcome) {
        for l in &outcome.latencies {
            record(&mut self.ok, *l);
        }
        self.refused += outcome.refusals.len() as u64;
        for code in &outcome.refusal_codes {
            count_code(&mut self.codes, code.clone(), 1);
        }
        self.errors += outcome.errors;
    }

    pub(crate) fn merge(&mut self, other: &StepMeasured) {
        self.ok.add(&other.ok).expect("same bounds");
        self.refused += other.refused;
        for (code, n) in &other.codes {
            count_code(&mut self.codes, code.clone(), *n);
        }
        self.errors += other.errors;
    }

    /// The step's row of a level's report.
    pub(crate) fn level(&self, name: &str, duration: Duration) -> StepLevel {
        let h = &self.ok;
        StepLevel {
            step: name.to_string(),
            operations: h.len(),
            ops_per_second: h.len() as f64 / duration.as_secs_f64(),
            p50_us: h.value_at_quantile(0.50),
            p99_us: h.value_at_quantile(0.99),
            refused: self.refused,
            refusals_by_code: self.codes.clone(),
            errors: self.errors,
        }
    }
}

/// Counts `n` refusals of `code`, under `other` once REFUSAL_CODES_MAX codes are counted.
fn count_code(codes: &mut BTreeMap<String, u64>, code: String, n: u64) {
    let code = if codes.len() < REFUSAL_CODES_MAX || codes.contains_key(&code) {
        code
    } else {
        "other".to_string()
    };
    *codes.entry(code).or_default() += n;
}

impl Measured {
    pub(crate) fn new() -> Measured {
        Measured {
            ok: histogram(),
            refused: histogram(),
            codes: BTreeMap::new(),
            errors: 0,
            steps: BTreeMap::new(),
        }
    }

    pub(crate) fn add(&mut self, outcome: Outcome) {
        if let Some(step) = &outcome.step {
            if !self.steps.contains_key(&**step) {
                self.steps.insert(step.to_string(), StepMeasured::new());
            }
            self.steps
                .get_mut(&**step)
                .expect("inserted above")
                .add(&outcome);
        }
        for l in outcome.latencies {
            record(&mut self.ok, l);
        }
        for l in outcome.refusals {
            record(&mut self.refused, l);
        }
        for code in outcome.refusal_codes {
            count_code(&mut self.codes, code, 1);
        }
        self.errors += outcome.errors;
    }

    pub(crate) fn merge(&mut self, other: &Measured) {
        self.ok.add(&other.ok).expect("same bounds");
        self.refused.add(&other.refused).expect("same bounds");
        for (code, n) in &other.codes {
            count_code(&mut self.codes, code.clone(), *n);
        }
        self.errors += other.errors;
        for (step, m) in &other.steps {
            self.steps
                .entry(step.clone())
                .or_insert_with(StepMeasured::new)
                .merge(m);
        }
    }
}

/// One spec step's figures in a level (`--spec`), or a spec's task workers on one queue.
#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct StepLevel {
    pub(crate) step: String,
    pub(crate) operations: u64,
    pub(crate) ops_per_second: f64,
    pub(crate) p50_us: u64,
    pub(crate) p99_us: u64,
    pub(crate) refused: u64,
    pub(crate) refusals_by_code: BTreeMap<String, u64>,
    pub(crate) errors: u64,
}

/// One scenario's unit of work against one system.
pub(crate) trait Workload: Send + Sync + 'static {
    /// Runs unit number `sequence`. `start` is when it was meant to start (open loop) or
    /// started (closed loop); the first request's latency is measured from it.
    fn run_once(&self, sequence: u64, start: Instant) -> impl Future<Output = Outcome> + Send;
}

/// The measured figures of one level of a sweep.
#[derive(Debug, serde::Serialize)]
pub(crate) struct Level {
    /// Closed loop: concurrent clients. Open loop: 0.
    pub(crate) concurrency: usize,
    /// Open loop: offered units of work per second. Closed loop: 0.
    pub(crate) offered_per_second: f64,
    pub(crate) operations: u64,
    pub(crate) errors: u64,
    /// Requests refused with OVERLOADED or QUOTA_EXCEEDED (not in `operations`).
    pub(crate) refused: u64,
    /// How fast refusals were answered.
    pub(crate) refused_p50_us: u64,
    pub(crate) refused_p99_us: u64,
    /// Every refusal by its code: `OVERLOADED` and `QUOTA_EXCEEDED` (the `refused` above) and
    /// the engine's (e.g. `INVALID_TRANSITION`, `FORBIDDEN`), which are answers, not errors.
    pub(crate) refusals_by_code: BTreeMap<String, u64>,
    /// Open loop: arrivals that found IN_FLIGHT_MAX units in flight and waited for a slot.
    pub(crate) late: u64,
    /// Open loop: arrivals never sent because the window ended while they waited.
    pub(crate) dropped: u64,
    pub(crate) seconds: f64,
    pub(crate) ops_per_second: f64,
    pub(crate) p50_us: u64,
    pub(crate) p90_us: u64,
    pub(crate) p99_us: u64,
    pub(crate) p999_us: u64,
    pub(crate) max_us: u64,
    /// Cost per operation over the measured window, when the driver was given a probe.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) cost: Option<Cost>,
    /// `--spec`: each step's figures (and the task workers', per queue).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) steps: Vec<StepLevel>,
}

impl Level {
    /// A level measured elsewhere (the Temporal driver): the latency of each operation that
    /// ended in the window, in microseconds, and the failed ones.
    pub(crate) fn from_latencies(latencies_us: &[u64], errors: u64, duration: Duration) -> Level {
        let mut m = Measured::new();
        for l in latencies_us {
            record(&mut m.ok, Duration::from_micros(*l));
        }
        m.errors = errors;
        Level::new(&m, duration)
    }

    pub(crate) fn new(m: &Measured, duration: Duration) -> Level {
        let seconds = duration.as_secs_f64();
        let (h, errors) = (&m.ok, m.errors);
        let refused = m.refused.len();
        let refused_at = |q| {
            if refused == 0 {
                0
            } else {
                m.refused.value_at_quantile(q)
            }
        };
        Level {
            concurrency: 0,
            offered_per_second: 0.0,
            operations: h.len(),
            errors,
            refused,
            refused_p50_us: refused_at(0.50),
            refused_p99_us: refused_at(0.99),
            refusals_by_code: m.codes.clone(),
            late: 0,
            dropped: 0,
            seconds,
            ops_per_second: h.len() as f64 / seconds,
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            cost: None,
            steps: m
                .steps
                .iter()
                .map(|(name, s)| s.level(name, duration))
                .collect(),
        }
    }
}

/// The measured window of one level: warm-up, then `duration`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Window {
    pub(crate) warmup: Duration,
    pub(crate) duration: Duration,
}

/// A progress bar over one level's warm-up and measured time.
pub(crate) fn progress_bar(window: Window, message: String) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new((window.warmup + window.duration).as_millis() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg:>24} [{bar:40}] {elapsed}/{duration}")
            .expect("template")
            .progress_chars("=> "),
    );
    bar.set_message(message);
    bar
}

fn tick(bar: &indicatif::ProgressBar, start: Instant, end: Instant) -> tokio::task::JoinHandle<()> {
    let bar = bar.clone();
    tokio::spawn(async move {
        while Instant::now() < end {
            bar.set_position(start.elapsed().as_millis() as u64);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

/// Closed loop: `concurrency` clients each run units back to back. A unit counts when it
/// started after the warm-up and ended inside the window. With a `probe`, its counters are
/// sampled when the warm-up ends and when the window does, for the cost per operation.
pub(crate) async fn closed<W: Workload>(
    workload: Arc<W>,
    concurrency: usize,
    window: Window,
    bar: &indicatif::ProgressBar,
    probe: Option<&Probe>,
) -> Level {
    let driven = closed_measured(workload, concurrency, window, bar, probe).await;
    let mut level = driven.level(window);
    level.concurrency = concurrency;
    level
}

/// What a driver measured in one level, before it becomes a [`Level`]: an agent sends it
/// back to its controller (`agent`), which merges the agents' and then makes the level.
#[derive(Debug)]
pub(crate) struct Driven {
    pub(crate) measured: Measured,
    pub(crate) late: u64,
    pub(crate) dropped: u64,
    pub(crate) samples: Option<(Sample, Sample)>,
}

impl Driven {
    /// Nothing measured yet (a share of nothing, or the start of a merge).
    pub(crate) fn empty() -> Driven {
        Driven {
            measured: Measured::new(),
            late: 0,
            dropped: 0,
            samples: None,
        }
    }

    pub(crate) fn level(&self, window: Window) -> Level {
        let mut level = Level::new(&self.measured, window.duration);
        level.late = self.late;
        level.dropped = self.dropped;
        level.cost = self
            .samples
            .as_ref()
            .map(|(before, after)| Cost::between(before, after, level.operations));
        level
    }
}

/// [`closed`], answering what it measured rather than the level.
pub(crate) async fn closed_measured<W: Workload>(
    workload: Arc<W>,
    concurrency: usize,
    window: Window,
    bar: &indicatif::ProgressBar,
    probe: Option<&Probe>,
) -> Driven {
    let start = Instant::now();
    let measure_from = start + window.warmup;
    let end = measure_from + window.duration;
    let mut clients = Vec::with_capacity(concurrency);
    for client in 0..concurrency {
        let workload = Arc::clone(&workload);
        clients.push(tokio::spawn(async move {
            let mut m = Measured::new();
            // Sequences interleave across clients, so client c runs c, c + N, c + 2N, ...
            let mut sequence = client as u64;
            while Instant::now() < end {
                let t0 = Instant::now();
                let outcome = workload.run_once(sequence, t0).await;
                let wait = outcome.retry_after.map(|h| with_jitter(h, sequence));
                sequence += concurrency as u64;
                if t0 >= measure_from && Instant::now() <= end {
                    m.add(outcome);
                }
                if let Some(wait) = wait {
                    tokio::time::sleep(wait.min(end.saturating_duration_since(Instant::now())))
                        .await;
                }
            }
            m
        }));
    }
    let ticker = tick(bar, start, end);
    let samples = match probe {
        Some(p) => {
            tokio::time::sleep_until(measure_from.into()).await;
            let before = Sample::take(p).await;
            tokio::time::sleep_until(end.into()).await;
            Some((before, Sample::take(p).await))
        }
        None => None,
    };
    let mut all = Measured::new();
    for c in clients {
        all.merge(&c.await.expect("client task"));
    }
    let _ = ticker.await;
    Driven {
        measured: all,
        late: 0,
        dropped: 0,
        samples,
    }
}

/// Open loop: units arrive every `1 / rate` seconds; each is measured from its intended start.
/// With a `probe`, its counters are sampled when the warm-up ends and when the last unit that
/// arrived inside the window has finished (those units are counted), for the cost per
/// operation.
pub(crate) async fn open<W: Workload>(
    workload: Arc<W>,
    rate: f64,
    window: Window,
    bar: &indicatif::ProgressBar,
    probe: Option<&Probe>,
) -> Level {
    let driven = open_measured(workload, rate, window, bar, probe).await;
    let mut level = driven.level(window);
    level.offered_per_second = rate;
    level
}

/// [`open`], answering what it measured rather than the level.
pub(crate) async fn open_measured<W: Workload>(
    workload: Arc<W>,
    rate: f64,
    window: Window,
    bar: &indicatif::ProgressBar,
    probe: Option<&Probe>,
) -> Driven {
    assert!(rate > 0.0, "the rate is checked when parsing");
    let start = Instant::now();
    let measure_from = start + window.warmup;
    let end = measure_from + window.duration;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT_MAX));
    let measured = Arc::new(Mutex::new(Measured::new()));
    let ticker = tick(bar, start, end);
    // The first sample is taken aside, so that the arrival schedule does not wait for it.
    let before = probe.cloned().map(|p| {
        tokio::spawn(async move {
            tokio::time::sleep_until(measure_from.into()).await;
            Sample::take(&p).await
        })
    });
    let (mut late, mut dropped) = (0u64, 0u64);
    let mut units = tokio::task::JoinSet::new();
    let mut sequence = 0u64;
    loop {
        let intended = start + interval.mul_f64(sequence as f64);
        if intended >= end {
            break;
        }
        tokio::time::sleep_until(intended.into()).await;
        let slot = match Arc::clone(&slots).try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                if intended >= measure_from {
                    late += 1;
                }
                let wait = Arc::clone(&slots).acquire_owned();
                match tokio::time::timeout_at(end.into(), wait).await {
                    Ok(slot) => slot.expect("the semaphore is never closed"),
                    Err(_) => {
                        // Every arrival from here to the end of the window is never sent.
                        let remaining = end.saturating_duration_since(intended);
                        dropped += (remaining.as_secs_f64() * rate).ceil() as u64;
                        break;
                    }
                }
            }
        };
        let (workload, measured) = (Arc::clone(&workload), Arc::clone(&measured));
        units.spawn(async move {
            let outcome = workload.run_once(sequence, intended).await;
            drop(slot);
            if intended >= measure_from {
                measured.lock().expect("histogram lock").add(outcome);
            }
        });
        // Reap finished units so the set stays as small as what is in flight.
        while units.try_join_next().is_some() {}
        sequence += 1;
    }
    // Units that arrived inside the window count even when they finish after it: leaving
    // them out would hide exactly the slow ones.
    while units.join_next().await.is_some() {}
    let after = match probe {
        Some(p) => Some(Sample::take(p).await),
        None => None,
    };
    let before = match before {
        Some(handle) => handle.await.ok(),
        None => None,
    };
    let _ = ticker.await;
    let measured = std::mem::replace(
        &mut *measured.lock().expect("histogram lock"),
        Measured::new(),
    );
    Driven {
        measured,
        late,
        dropped,
        samples: before.zip(after),
    }
}

/// Microseconds since the Unix epoch on this machine's wall clock.
pub(crate) fn micros_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// A cheap, deterministic hash of a unit's sequence number (splitmix64), for choosing an
/// operation or a target reproducibly without a random number generator.
pub(crate) fn mix(sequence: u64) -> u64 {
    let mut z = sequence.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Parses an open-loop rate: `500`, `500/s` or `500/sec`.
pub(crate) fn parse_rate(text: &str) -> anyhow::Result<f64> {
    let number = text
        .trim()
        .trim_end_matches("/sec")
        .trim_end_matches("/s")
        .trim();
    match number.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 && r <= 1_000_000.0 => Ok(r),
        _ => anyhow::bail!(
            "`{text}` is not a rate: give units of work per second between 0 and 1000000, e.g. `--rate 500/s` (a list sweeps: `--rate 100/s,200/s,400/s`)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_with_or_without_unit() {
        assert_eq!(parse_rate("500/s").unwrap(), 500.0);
        assert_eq!(parse_rate("250").unwrap(), 250.0);
        assert_eq!(parse_rate("0.5/sec").unwrap(), 0.5);
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("-3").is_err());
    }

    #[test]
    fn mix_spreads_consecutive_sequences() {
        let buckets = (0..10_000u64)
            .filter(|s| mix(*s).is_multiple_of(10))
            .count();
        assert!((800..1200).contains(&buckets), "{buckets}");
    }
}
