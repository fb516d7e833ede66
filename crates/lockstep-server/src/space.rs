//! The space alarm (as etcd's `NOSPACE`): stop taking client writes on before the disk is full.
//!
//! Every [`CHECK_EVERY`], [`run`] reads how much space the file system of the node's data
//! directory has free (statvfs) and how large the store is (RocksDB's SST files and
//! memtables). With less than `--min-free-space` free, or a store above `--store-quota`, the
//! alarm is raised: `Node::client_write` refuses new client writes before they
//! are proposed, with `RESOURCE_EXHAUSTED` and reason `NO_SPACE` (a message naming the node,
//! its data directory, the free and used bytes and what to do), on the node the write
//! reaches and on the leader a follower forwards it to. Nothing of such a write reaches the
//! log or the dedup table, so a retry with the same request id is a new attempt. Reads,
//! health, membership changes and the engine's own lane (timer fires, lease expiries, outbox
//! acknowledgements: small, and they must not be lost) go on while the log can still be
//! appended. The alarm clears by itself at the first check that finds space again.
//!
//! A node checks its own disk only: a follower short of space refuses the writes that reach
//! it, but a leader with space accepts writes that the follower then stores too.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// How often free space and store size are read.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// The default `--min-free-space`: 256 MiB (RocksDB needs room to compact; raise it on
/// production volumes).
pub const MIN_FREE_DEFAULT: u64 = 256 << 20;

/// The default `--store-quota`: 64 GiB (the `LockstepStoreLarge` alert warns at 50 GiB).
pub const STORE_QUOTA_DEFAULT: u64 = 64 << 30;

/// The retry-after hint of a `NO_SPACE` refusal: the next check.
pub const RETRY_AFTER_MS: u64 = 1_000;

/// When the alarm is raised; 0 turns a bound off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SpaceSettings {
    /// Raise the alarm when the data directory's file system has less than this free.
    pub min_free_bytes: u64,
    /// Raise the alarm when the store holds more than this.
    pub store_quota_bytes: u64,
}

impl Default for SpaceSettings {
    fn default() -> Self {
        SpaceSettings {
            min_free_bytes: MIN_FREE_DEFAULT,
            store_quota_bytes: STORE_QUOTA_DEFAULT,
        }
    }
}

/// Parses a size setting: `off` (or `0`), a number of bytes, or a number with a binary unit
/// (`KiB`, `MiB`, `GiB`, `TiB`; `B` for bytes). `flag` names the setting in the error.
pub fn parse_size(flag: &str, text: &str) -> Result<u64, crate::settings::SettingError> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("off") {
        return Ok(0);
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let shift = match unit.trim() {
        "" | "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        "TiB" => 40,
        _ => u32::MAX,
    };
    digits
        .parse::<u64>()
        .ok()
        .filter(|_| shift != u32::MAX)
        .and_then(|n| n.checked_mul(1u64 << shift.min(40)))
        .ok_or_else(|| crate::settings::SettingError::NotASize {
            setting: flag.to_string(),
            value: text.to_string(),
        })
}

/// Bytes for people: `200 MiB`, `3.2 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 || value >= 100.0 || value.fract() < 0.05 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// One reading of the disk and the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    /// Bytes the data directory's file system has available (to unprivileged users).
    pub free_bytes: u64,
    /// Bytes the store holds (SST files and memtables).
    pub store_bytes: u64,
}

/// The refusal while `sample` breaks a bound of `settings`, or `None`.
pub fn judge(settings: &SpaceSettings, sample: Sample, node: u64, dir: &Path) -> Option<String> {
    let short = settings.min_free_bytes > 0 && sample.free_bytes < settings.min_free_bytes;
    let over = settings.store_quota_bytes > 0 && sample.store_bytes > settings.store_quota_bytes;
    let why = match (short, over) {
        (false, false) => return None,
        (true, _) => format!(
            "its data directory {} has {} free, under --min-free-space {} (the store holds {}); free space or grow the volume",
            dir.display(),
            bytes(sample.free_bytes),
            bytes(settings.min_free_bytes),
            bytes(sample.store_bytes)
        ),
        (false, true) => format!(
            "its store holds {}, over --store-quota {} (its data directory {} has {} free); raise the quota if the volume allows, or archive and delete instances",
            bytes(sample.store_bytes),
            bytes(settings.store_quota_bytes),
            dir.display(),
            bytes(sample.free_bytes)
        ),
    };
    Some(format!(
        "node {node} is short of space and takes no client writes on: {why}. The alarm clears by itself within {}s of space returning; retry then with the same request id (reads keep working)",
        CHECK_EVERY.as_secs()
    ))
}

/// The alarm's state on one node.
#[derive(Debug, Default)]
pub struct SpaceAlarm {
    pub settings: SpaceSettings,
    refusal: Mutex<Option<String>>,
    raised: AtomicBool,
    free_bytes: AtomicU64,
    store_bytes: AtomicU64,
}

impl SpaceAlarm {
    pub fn new(settings: SpaceSettings) -> SpaceAlarm {
        SpaceAlarm {
            settings,
            ..SpaceAlarm::default()
        }
    }

    /// Takes a reading; returns the alarm's new state when it changed (`Some(refusal)` raised,
    /// `Some(None)` cleared).
    pub fn record(&self, sample: Sample, node: u64, dir: &Path) -> Option<Option<String>> {
        self.free_bytes.store(sample.free_bytes, Ordering::Relaxed);
        self.store_bytes
            .store(sample.store_bytes, Ordering::Relaxed);
        let now = judge(&self.settings, sample, node, dir);
        let mut refusal = self.refusal.lock().expect("not poisoned");
        let changed = refusal.is_some() != now.is_some();
        self.raised.store(now.is_some(), Ordering::Relaxed);
        *refusal = now.clone();
        changed.then_some(now)
    }

    /// The answer a client write gets while the alarm is raised.
    pub fn refusal(&self) -> Option<String> {
        if !self.raised.load(Ordering::Relaxed) {
            return None;
        }
        self.refusal.lock().expect("not poisoned").clone()
    }

    pub fn raised(&self) -> bool {
        self.raised.load(Ordering::Relaxed)
    }

    /// The last reading.
    pub fn last(&self) -> Sample {
        Sample {
            free_bytes: self.free_bytes.load(Ordering::Relaxed),
            store_bytes: self.store_bytes.load(Ordering::Relaxed),
        }
    }
}

/// Bytes available to unprivileged users on the file system holding `dir`.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(std::io::Error::from)?;
    #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
    Ok(st.blocks_available() as u64 * st.fragment_size() as u64)
}

/// Checks node `node`'s data directory `dir` and its store every [`CHECK_EVERY`] into
/// `alarm`, until the store is gone, and logs when the alarm is raised or cleared.
pub async fn run(
    alarm: std::sync::Arc<SpaceAlarm>,
    store: std::sync::Weak<lockstep_store::RocksStore>,
    node: u64,
    dir: std::path::PathBuf,
) {
    use lockstep_store::Store;
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(store) = store.upgrade() else { return };
        // statvfs may block (a network or FUSE file system): off the runtime's threads.
        let free = tokio::task::spawn_blocking({
            let dir = dir.clone();
            move || free_bytes(&dir)
        })
        .await;
        let free = match free {
            Ok(Ok(free)) => free,
            Ok(Err(e)) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot read the data directory's free space; the space alarm keeps its last state");
                continue;
            }
            Err(_) => continue,
        };
        let sample = Sample {
            free_bytes: free,
            store_bytes: store.approximate_size_bytes(),
        };
        drop(store);
        match alarm.record(sample, node, &dir) {
            Some(Some(refusal)) => tracing::warn!("space alarm raised: {refusal}"),
            Some(None) => tracing::info!(
                free = %bytes(sample.free_bytes),
                store = %bytes(sample.store_bytes),
                "space alarm cleared: client writes are taken on again"
            ),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units_or_off() {
        assert_eq!(parse_size("--min-free-space", "off"), Ok(0));
        assert_eq!(parse_size("--min-free-space", "0"), Ok(0));
        assert_eq!(parse_size("--min-free-space", "4096"), Ok(4096));
        assert_eq!(parse_size("--min-free-space", "512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("--store-quota", "2 GiB"), Ok(2 << 30));
        assert_eq!(parse_size("--store-quota", "1TiB"), Ok(1 << 40));
        let err = parse_size("--store-quota", "2GB").unwrap_err().to_string();
        assert!(err.contains("--store-quota \"2GB\" is not a size") && err.contains("2GiB"));
        assert!(parse_size("--store-quota", "MiB").is_err());
        assert!(parse_size("--store-quota", "99999999999TiB").is_err());
    }

    #[test]
    fn bytes_read_for_people() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(200 << 20), "200 MiB");
        assert_eq!(bytes((32 << 30) / 10), "3.2 GiB");
        assert_eq!(bytes(1 << 30), "1 GiB");
    }

    #[test]
    fn the_alarm_rises_below_the_watermark_or_over_the_quota_and_clears_by_itself() {
        let alarm = SpaceAlarm::new(SpaceSettings {
            min_free_bytes: 1 << 30,
            store_quota_bytes: 10 << 30,
        });
        let dir = Path::new("/var/lib/lockstep");
        let fine = Sample {
            free_bytes: 5 << 30,
            store_bytes: 1 << 30,
        };
        assert_eq!(alarm.record(fine, 2, dir), None);
        assert!(alarm.refusal().is_none());
        let short = Sample {
            free_bytes: 200 << 20,
            ..fine
        };
        let raised = alarm.record(short, 2, dir).unwrap().unwrap();
        assert!(
            raised.contains("node 2 is short of space")
                && raised
                    .contains("/var/lib/lockstep has 200 MiB free, under --min-free-space 1 GiB")
                && raised.contains("free space or grow the volume"),
            "{raised}"
        );
        assert_eq!(alarm.refusal().as_deref(), Some(raised.as_str()));
        assert_eq!(alarm.record(short, 2, dir), None, "no change, no news");
        assert_eq!(alarm.record(fine, 2, dir), Some(None));
        assert!(alarm.refusal().is_none() && !alarm.raised());
        let over = Sample {
            store_bytes: 11 << 30,
            ..fine
        };
        let raised = alarm.record(over, 2, dir).unwrap().unwrap();
        assert!(raised.contains("over --store-quota 10 GiB"), "{raised}");
        // Off: neither bound raises it.
        let off = SpaceAlarm::new(SpaceSettings {
            min_free_bytes: 0,
            store_quota_bytes: 0,
        });
        let empty = Sample {
            free_bytes: 0,
            store_bytes: u64::MAX,
        };
        assert_eq!(off.record(empty, 1, dir), None);
    }
}
