//! The background scrub: finds latent corruption before a read does.
//!
//! RocksDB verifies a block's checksum whenever it reads it, so corrupt bytes are never
//! returned; but a block nobody reads (an old instance, the audit chain's middle) can rot
//! unseen for months, until the day a snapshot, a backup or an audit verify needs it. [`run`]
//! reads the whole store with checksums verified ([`RocksStore::scrub`]) once at start and
//! then every `--scrub-every` (default [`EVERY_DEFAULT`]), at most `--scrub-rate` bytes a
//! second (default [`RATE_DEFAULT`]) so that it never crowds out the write path. A
//! corruption it meets is noted on the store, and `failstop::watch` stops the node.
//! Passes, bytes and the time of the last pass are metrics (`lockstep_scrub_*`).

use std::sync::Weak;
use std::time::{Duration, Instant};

use lockstep_store::RocksStore;

use crate::settings::SettingError;

/// The default `--scrub-every`: a day.
pub const EVERY_DEFAULT: Duration = Duration::from_secs(24 * 3600);

/// The default `--scrub-rate`: 32 MiB a second (a 10 GiB store in about 5 minutes).
pub const RATE_DEFAULT: u64 = 32 << 20;

/// The longest the scrub sleeps at once between chunks, so that a shutdown ends it soon.
const SLEEP_SLICE_MAX: Duration = Duration::from_millis(100);

/// When and how fast the store is scrubbed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ScrubSettings {
    /// The time between the starts of two passes; `None`: never (not even at start).
    pub every: Option<Duration>,
    /// Bytes read a second at most; 0: no bound.
    pub rate_bytes_per_second: u64,
}

impl Default for ScrubSettings {
    fn default() -> Self {
        ScrubSettings {
            every: Some(EVERY_DEFAULT),
            rate_bytes_per_second: RATE_DEFAULT,
        }
    }
}

impl ScrubSettings {
    /// Parses `--scrub-every` (a duration of at least a minute, or `off`) and `--scrub-rate`
    /// (a size a second, or `off` for no bound).
    pub fn parse(every: Option<&str>, rate: Option<&str>) -> Result<ScrubSettings, SettingError> {
        let defaults = ScrubSettings::default();
        let every = match every.map(str::trim) {
            None => defaults.every,
            Some(t) if t.eq_ignore_ascii_case("off") => None,
            Some(t) => {
                let d = lockstep_core::duration::Duration::parse(t).map_err(|source| {
                    SettingError::NotADuration {
                        setting: "--scrub-every",
                        value: t.to_string(),
                        source,
                        hint: "write e.g. 12h, 7d or off",
                    }
                })?;
                if d.as_ms() < 60_000 {
                    return Err(SettingError::OutOfRange {
                        setting: "--scrub-every",
                        value: t.to_string(),
                        problem: "is shorter than 1m: a pass reads the whole store; write e.g. 12h or 7d",
                    });
                }
                Some(Duration::from_millis(d.as_ms()))
            }
        };
        let rate_bytes_per_second = match rate {
            None => defaults.rate_bytes_per_second,
            Some(t) => crate::space::parse_size("--scrub-rate", t)?,
        };
        Ok(ScrubSettings {
            every,
            rate_bytes_per_second,
        })
    }
}

/// Scrubs the store once now and then every `settings.every`, until the store is gone, a
/// pass meets an error (a corruption is noted on the store for `failstop::watch`), or
/// `stopping` says the node shuts down.
pub async fn run(
    store: Weak<RocksStore>,
    settings: ScrubSettings,
    stopping: tokio::sync::watch::Receiver<bool>,
) {
    let Some(every) = settings.every else {
        return;
    };
    loop {
        let Some(scrubbed) = store.upgrade() else {
            return;
        };
        let started = Instant::now();
        let stop = stopping.clone();
        let rate = settings.rate_bytes_per_second;
        let pass = tokio::task::spawn_blocking(move || {
            scrubbed.scrub(|bytes| pace(started, bytes, rate, &stop))
        })
        .await;
        match pass {
            Ok(Ok(Some(bytes))) => tracing::info!(
                bytes,
                took = ?started.elapsed(),
                next_in = %lockstep_core::duration::Duration::from_ms(every.as_millis() as u64),
                "scrub: every key and value of the store read back with valid block checksums"
            ),
            Ok(Ok(None)) => return,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "scrub: the store cannot be read back whole");
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "scrub: the pass did not finish");
                return;
            }
        }
        let mut stop = stopping.clone();
        tokio::select! {
            _ = tokio::time::sleep(every.saturating_sub(started.elapsed())) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Sleeps until `bytes` are due at `rate` bytes a second since `started`; `false` once the
/// node is stopping.
fn pace(
    started: Instant,
    bytes: u64,
    rate: u64,
    stopping: &tokio::sync::watch::Receiver<bool>,
) -> bool {
    loop {
        if *stopping.borrow() {
            return false;
        }
        if rate == 0 {
            return true;
        }
        let due = Duration::from_secs_f64(bytes as f64 / rate as f64);
        let elapsed = started.elapsed();
        if elapsed >= due {
            return true;
        }
        std::thread::sleep((due - elapsed).min(SLEEP_SLICE_MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_with_defaults_and_say_what_is_wrong() {
        assert_eq!(
            ScrubSettings::parse(None, None).unwrap(),
            ScrubSettings::default()
        );
        let s = ScrubSettings::parse(Some("12h"), Some("8MiB")).unwrap();
        assert_eq!(s.every, Some(Duration::from_secs(12 * 3600)));
        assert_eq!(s.rate_bytes_per_second, 8 << 20);
        assert_eq!(ScrubSettings::parse(Some("off"), None).unwrap().every, None);
        assert_eq!(
            ScrubSettings::parse(None, Some("off"))
                .unwrap()
                .rate_bytes_per_second,
            0
        );
        let short = ScrubSettings::parse(Some("10s"), None)
            .unwrap_err()
            .to_string();
        assert!(short.contains("shorter than 1m"), "{short}");
        let bad = ScrubSettings::parse(Some("daily"), None)
            .unwrap_err()
            .to_string();
        assert!(bad.starts_with("--scrub-every `daily`"), "{bad}");
        let rate = ScrubSettings::parse(None, Some("fast"))
            .unwrap_err()
            .to_string();
        assert!(rate.contains("--scrub-rate"), "{rate}");
    }

    #[test]
    fn pace_holds_the_rate_and_lets_go_when_stopping() {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let started = Instant::now();
        // 1 MiB at 10 MiB/s: about 100 ms.
        assert!(pace(started, 1 << 20, 10 << 20, &rx));
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert!(pace(Instant::now(), u64::MAX / 2, 0, &rx), "0: no bound");
        tx.send(true).unwrap();
        let t = Instant::now();
        assert!(!pace(t, 1 << 30, 1, &rx));
    }
}
