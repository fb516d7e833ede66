//! Admission control: how much client work a node takes on before it refuses more.
//!
//! Offered more writes than it can commit, a node that admits everything queues them, and
//! every caller waits longer and longer (the latency of a queue that never drains). Instead,
//! each node admits at most `limit` client writes that have not been answered yet and refuses
//! the rest at once, before anything is proposed: `RESOURCE_EXHAUSTED` with reason
//! `OVERLOADED` and a retry-after hint. A refused write never reaches the log or the dedup
//! table, so its retry (with the same request id) is a new attempt.
//!
//! The limit adapts to commit latency, as Netflix's gradient limiter does: every answered
//! write is a latency sample; samples are averaged over short windows (`short`), and a slow
//! average of those windows (`long`) is the latency the node delivers when not overloaded.
//! After each window:
//!
//! ```text
//! gradient  = clamp(TOLERANCE × long / short, 0.5, 1.0)
//! candidate = limit × gradient + √limit          (√limit: room to probe for more)
//! limit     = limit × (1 − SMOOTHING) + candidate × SMOOTHING,  within [min, max]
//! ```
//!
//! While writes wait no longer than `TOLERANCE` times the usual, the limit grows (but only
//! when at least half of it is in use: an idle node learns nothing about its capacity);
//! when they wait longer, queueing has set in and the limit shrinks until it is gone. The
//! bounds `min` and `max` are settings (`--admission-limit-min`, `--admission-limit-max`).
//!
//! Only client writes are admitted here. The engine's own proposals (timer fires, lease
//! expiries, outbox acknowledgements, the format gate) never are: they have their own lane in
//! the batcher (`cluster/batcher.rs`), so overload cannot delay an SLA breach.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How much slower than usual writes may get before the limit shrinks.
const TOLERANCE: f64 = 1.5;
/// Weight of each window's candidate limit in the limit.
const SMOOTHING: f64 = 0.2;
/// A window of samples closes after this long, once it holds [`WINDOW_SAMPLES_MIN`].
const WINDOW_MIN: Duration = Duration::from_millis(50);
/// Fewest samples a window averages.
const WINDOW_SAMPLES_MIN: u32 = 8;
/// Weight of each window's average in the long-term latency (about 100 windows: ~5 s and
/// more under load).
const LONG_WEIGHT: f64 = 0.01;
/// Shortest and longest retry-after hint given with a refusal.
const RETRY_AFTER_MIN: Duration = Duration::from_millis(10);
const RETRY_AFTER_MAX: Duration = Duration::from_secs(2);

/// The bounds of the adaptive limit on client writes in flight per node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AdmissionSettings {
    /// The limit never goes below this.
    pub min: usize,
    /// The limit never goes above this; it starts halfway between the bounds.
    pub max: usize,
    /// Most linearizable reads waiting for a read index on this node at once.
    pub reads_max: usize,
}

impl Default for AdmissionSettings {
    fn default() -> Self {
        AdmissionSettings {
            min: 32,
            // A gradient limiter lets its limit creep up under sustained overload (the usual
            // latency follows the queue), so the maximum is what bounds queueing then: 1024
            // gave p99 at 2x the peak 2.0-2.7x that at 1x, 256 gave 2.0-2.3x with the same
            // goodput (release, 3 nodes, 2 cores, 2026-12-02; benches/README.md).
            max: 256,
            reads_max: 4096,
        }
    }
}

/// A refusal: the node is at its limit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Overloaded {
    /// When a retry has a fair chance: about one usual write latency.
    pub retry_after: Duration,
    /// The limit that was reached.
    pub limit: usize,
}

/// What `GET /metrics` shows of admission.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct AdmissionStats {
    pub limit: usize,
    pub in_flight: usize,
    pub admitted: u64,
    pub refused: u64,
    /// The long-term write latency the limit compares with, in seconds.
    pub usual_latency_seconds: f64,
}

/// The adaptive limit itself, without clocks of its own (tests pass the time).
#[derive(Debug)]
struct Limiter {
    settings: AdmissionSettings,
    limit: f64,
    in_flight: usize,
    /// The most in flight during the current window.
    in_flight_peak: usize,
    window_started: Instant,
    window_sum: Duration,
    window_samples: u32,
    /// Long-term average latency (seconds); `None` until the first window closes.
    long: Option<f64>,
    /// The last window's average latency (seconds).
    short: Option<f64>,
}

impl Limiter {
    fn new(settings: AdmissionSettings, now: Instant) -> Limiter {
        Limiter {
            settings,
            limit: (settings.min + settings.max) as f64 / 2.0,
            in_flight: 0,
            in_flight_peak: 0,
            window_started: now,
            window_sum: Duration::ZERO,
            window_samples: 0,
            long: None,
            short: None,
        }
    }

    fn limit(&self) -> usize {
        self.limit.floor() as usize
    }

    fn try_admit(&mut self) -> Result<(), Overloaded> {
        if self.in_flight >= self.limit() {
            return Err(Overloaded {
                retry_after: self.retry_after(),
                limit: self.limit(),
            });
        }
        self.in_flight += 1;
        self.in_flight_peak = self.in_flight_peak.max(self.in_flight);
        Ok(())
    }

    fn retry_after(&self) -> Duration {
        let usual = self.short.or(self.long).unwrap_or(0.0);
        Duration::from_secs_f64(usual).clamp(RETRY_AFTER_MIN, RETRY_AFTER_MAX)
    }

    /// One admitted write was answered; `latency`: how long it took, if it is a sample of
    /// the write path's latency (a write that failed fast says nothing about it).
    fn release(&mut self, latency: Option<Duration>, now: Instant) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let Some(latency) = latency else {
            return;
        };
        self.window_sum += latency;
        self.window_samples += 1;
        if self.window_samples >= WINDOW_SAMPLES_MIN
            && now.saturating_duration_since(self.window_started) >= WINDOW_MIN
        {
            let short = self.window_sum.as_secs_f64() / f64::from(self.window_samples);
            self.close_window(short);
            self.window_started = now;
            self.window_sum = Duration::ZERO;
            self.window_samples = 0;
            self.in_flight_peak = self.in_flight;
        }
    }

    fn close_window(&mut self, short: f64) {
        let long = match self.long {
            None => short,
            Some(long) => {
                let mut long = long * (1.0 - LONG_WEIGHT) + short * LONG_WEIGHT;
                // Coming back from a slow spell: forget it faster than it was learned.
                if long > 2.0 * short {
                    long *= 0.95;
                }
                long
            }
        };
        self.long = Some(long);
        self.short = Some(short);
        let gradient = (TOLERANCE * long / short.max(f64::MIN_POSITIVE)).clamp(0.5, 1.0);
        // An idle node learns nothing about its capacity: do not grow the limit on it.
        if gradient >= 1.0 && (self.in_flight_peak as f64) < self.limit / 2.0 {
            return;
        }
        let candidate = self.limit * gradient + self.limit.sqrt();
        let limit = self.limit * (1.0 - SMOOTHING) + candidate * SMOOTHING;
        self.limit = limit.clamp(self.settings.min as f64, self.settings.max as f64);
    }
}

/// The admission control of one node. Shared by every request the node serves.
#[derive(Debug)]
pub struct Admission {
    limiter: Mutex<Limiter>,
    admitted: AtomicU64,
    refused: AtomicU64,
}

/// One admitted write: holds its place in the limit until dropped.
#[derive(Debug)]
pub struct Permit<'a> {
    admission: &'a Admission,
    started: Instant,
    sample: bool,
}

impl Permit<'_> {
    /// Marks the write's latency as a sample of the write path (it was answered by the log,
    /// or took so long that it timed out); dropped without this, it only frees its place.
    pub fn sample(mut self) {
        self.sample = true;
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let now = Instant::now();
        let latency = self.sample.then(|| now.duration_since(self.started));
        self.admission
            .limiter
            .lock()
            .expect("admission lock")
            .release(latency, now);
    }
}

impl Admission {
    pub fn new(settings: AdmissionSettings) -> Admission {
        Admission {
            limiter: Mutex::new(Limiter::new(settings, Instant::now())),
            admitted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// Admits one client write, or refuses it because the node is at its limit.
    pub fn try_admit(&self) -> Result<Permit<'_>, Overloaded> {
        let admitted = self.limiter.lock().expect("admission lock").try_admit();
        match admitted {
            Ok(()) => {
                self.admitted.fetch_add(1, Ordering::Relaxed);
                Ok(Permit {
                    admission: self,
                    started: Instant::now(),
                    sample: false,
                })
            }
            Err(e) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    pub fn stats(&self) -> AdmissionStats {
        let l = self.limiter.lock().expect("admission lock");
        AdmissionStats {
            limit: l.limit(),
            in_flight: l.in_flight,
            admitted: self.admitted.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            usual_latency_seconds: l.long.unwrap_or(0.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(min: usize, max: usize) -> AdmissionSettings {
        AdmissionSettings {
            min,
            max,
            reads_max: 16,
        }
    }

    /// Runs `windows` windows in which `in_flight` writes are admitted and each answered
    /// after `latency`.
    fn run(l: &mut Limiter, now: &mut Instant, windows: usize, in_flight: usize, latency_ms: u64) {
        for _ in 0..windows {
            let admitted = (0..in_flight).filter(|_| l.try_admit().is_ok()).count();
            *now += WINDOW_MIN;
            for _ in 0..admitted {
                l.release(Some(Duration::from_millis(latency_ms)), *now);
            }
        }
    }

    #[test]
    fn refuses_beyond_the_limit_and_admits_again_once_a_place_is_free() {
        let now = Instant::now();
        let mut l = Limiter::new(settings(2, 2), now);
        assert!(l.try_admit().is_ok());
        assert!(l.try_admit().is_ok());
        let refused = l.try_admit().expect_err("the third is over the limit of 2");
        assert_eq!(refused.limit, 2);
        assert_eq!(refused.retry_after, RETRY_AFTER_MIN, "no latency known yet");
        l.release(None, now);
        assert!(l.try_admit().is_ok(), "a freed place is taken again");
    }

    #[test]
    fn the_limit_grows_while_latency_holds_and_the_limit_is_used() {
        let mut now = Instant::now();
        let mut l = Limiter::new(settings(8, 1000), now);
        let start = l.limit();
        // Offered more than the limit, answered as fast as ever.
        run(&mut l, &mut now, 40, 2000, 5);
        assert!(l.limit() > start, "{} should exceed {start}", l.limit());
    }

    #[test]
    fn an_idle_node_does_not_grow_its_limit() {
        let mut now = Instant::now();
        let mut l = Limiter::new(settings(8, 1000), now);
        let start = l.limit();
        run(&mut l, &mut now, 40, 10, 5);
        assert_eq!(l.limit(), start);
    }

    #[test]
    fn the_limit_shrinks_when_latency_grows_and_stays_within_its_bounds() {
        let mut now = Instant::now();
        let mut l = Limiter::new(settings(8, 1000), now);
        run(&mut l, &mut now, 20, 2000, 5);
        let before = l.limit();
        // Queueing: writes now take eight times as long.
        run(&mut l, &mut now, 20, 2000, 40);
        assert!(l.limit() < before / 2, "{} after {before}", l.limit());
        run(&mut l, &mut now, 60, 2000, 400);
        assert_eq!(l.limit(), 8, "never below min");
        // The retry-after hint is about one recent write latency, within its bounds.
        let refused = (0..20)
            .find_map(|_| l.try_admit().err())
            .expect("at the limit");
        assert_eq!(refused.retry_after, Duration::from_millis(400));
        let mut fast = Limiter::new(settings(8, 64), now);
        run(&mut fast, &mut now, 400, 2000, 1);
        assert_eq!(fast.limit(), 64, "never above max");
    }

    #[test]
    fn writes_that_failed_fast_are_not_latency_samples() {
        let mut now = Instant::now();
        let mut l = Limiter::new(settings(8, 1000), now);
        run(&mut l, &mut now, 5, 2000, 5);
        let (limit, long) = (l.limit(), l.long);
        for _ in 0..100 {
            l.try_admit().unwrap();
            now += WINDOW_MIN;
            l.release(None, now);
        }
        assert_eq!((l.limit(), l.long), (limit, long));
    }

    #[test]
    fn a_permit_frees_its_place_when_dropped() {
        let a = Admission::new(settings(1, 1));
        let p = a.try_admit().unwrap();
        assert!(a.try_admit().is_err());
        assert_eq!(a.stats().in_flight, 1);
        p.sample();
        assert_eq!(a.stats().in_flight, 0);
        assert!(a.try_admit().is_ok());
        let stats = a.stats();
        assert_eq!((stats.admitted, stats.refused), (2, 1));
    }
}
