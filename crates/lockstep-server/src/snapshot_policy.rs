//! When this node builds a snapshot. openraft's own policy counts entries, and an entry may
//! carry one request or five hundred (group commit), so it is off (`SnapshotPolicy::Never`)
//! and this task decides instead, once a second, by whichever comes first of
//! [`SnapshotSettings`]: bytes of log written since the last snapshot, time since it (when
//! anything was applied), or entries (only when `--snapshot-every` is set). Every node
//! decides for itself: snapshots are local. A snapshot is a checkpoint of the store (see
//! `lockstep_raft::state_machine`), so building one costs what changed since the last.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lockstep_raft::TypeConfig;
use openraft::Raft;

use crate::config::SnapshotSettings;
use crate::metrics::Metrics;

/// How often the policy looks.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// A triggered snapshot that has not shown up in the metrics after this long is asked for
/// again (openraft ignores a trigger while a build is running).
const BUILD_PATIENCE: Duration = Duration::from_secs(60);

/// What the policy needs to know at one look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Look {
    applied: u64,
    snapshot: u64,
    appended_bytes: u64,
}

/// The policy's memory between looks.
#[derive(Debug)]
struct Policy {
    settings: SnapshotSettings,
    /// The snapshot index at the last look, the log bytes then, and when it last changed.
    snapshot: u64,
    bytes_at_snapshot: u64,
    since: Instant,
    triggered: Option<Instant>,
}

impl Policy {
    fn new(settings: SnapshotSettings, look: Look, now: Instant) -> Policy {
        Policy {
            settings,
            snapshot: look.snapshot,
            bytes_at_snapshot: look.appended_bytes,
            since: now,
            triggered: None,
        }
    }

    /// Log bytes appended since the last snapshot.
    fn written(&self, look: Look) -> u64 {
        look.appended_bytes.saturating_sub(self.bytes_at_snapshot)
    }

    /// Whether to ask for a snapshot now; records that it asked.
    fn decide(&mut self, look: Look, now: Instant) -> Option<&'static str> {
        if look.snapshot != self.snapshot {
            self.snapshot = look.snapshot;
            self.bytes_at_snapshot = look.appended_bytes;
            self.since = now;
            self.triggered = None;
        }
        if look.applied <= look.snapshot {
            return None;
        }
        if self
            .triggered
            .is_some_and(|at| now.duration_since(at) < BUILD_PATIENCE)
        {
            return None;
        }
        let reason = if self.written(look) >= self.settings.log_bytes {
            "log size"
        } else if self
            .settings
            .entries
            .is_some_and(|n| look.applied - look.snapshot >= n)
        {
            "entries"
        } else if now.duration_since(self.since) >= self.settings.interval {
            "interval"
        } else {
            return None;
        };
        self.triggered = Some(now);
        Some(reason)
    }
}

/// Runs until Raft shuts down; tells `metrics` the log bytes since the last snapshot.
pub async fn run(
    raft: Raft<TypeConfig>,
    appended: Arc<AtomicU64>,
    settings: SnapshotSettings,
    metrics: Arc<Metrics>,
) {
    let look = |raft: &Raft<TypeConfig>| {
        let m = raft.metrics().borrow().clone();
        Look {
            applied: m.last_applied.map(|l| l.index).unwrap_or(0),
            snapshot: m.snapshot.map(|l| l.index).unwrap_or(0),
            appended_bytes: appended.load(Ordering::Relaxed),
        }
    };
    let mut policy = Policy::new(settings, look(&raft), Instant::now());
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = look(&raft);
        let reason = policy.decide(now, Instant::now());
        metrics.observe_log_bytes_since_snapshot(policy.written(now));
        if let Some(reason) = reason {
            tracing::info!(
                reason,
                applied = now.applied,
                last_snapshot = now.snapshot,
                "building a snapshot"
            );
            if raft.trigger().snapshot().await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> SnapshotSettings {
        SnapshotSettings {
            log_bytes: 1000,
            interval: Duration::from_secs(3600),
            entries: None,
        }
    }

    fn look(applied: u64, snapshot: u64, appended_bytes: u64) -> Look {
        Look {
            applied,
            snapshot,
            appended_bytes,
        }
    }

    /// Log bytes since the last snapshot decide, not entries; a triggered build is not asked
    /// for again until it shows up or the patience runs out; a new snapshot resets the count.
    #[test]
    fn log_bytes_since_the_last_snapshot_trigger_once() {
        let t0 = Instant::now();
        let mut p = Policy::new(settings(), look(0, 0, 0), t0);
        assert_eq!(
            p.decide(look(50_000, 0, 999), t0),
            None,
            "entries alone do not"
        );
        assert_eq!(p.decide(look(50_001, 0, 1000), t0), Some("log size"));
        assert_eq!(p.decide(look(50_002, 0, 5000), t0), None, "already asked");
        let later = t0 + BUILD_PATIENCE;
        assert_eq!(p.decide(look(50_003, 0, 5000), later), Some("log size"));
        // The snapshot at 50_003 shows up with 5500 bytes appended by then: bytes count
        // again from there.
        assert_eq!(p.decide(look(50_010, 50_003, 5500), later), None);
        assert_eq!(p.decide(look(50_020, 50_003, 6400), later), None);
        assert_eq!(
            p.decide(look(50_030, 50_003, 6500), later),
            Some("log size")
        );
    }

    /// The interval triggers only when something was applied since the last snapshot; the
    /// entry count triggers only when set.
    #[test]
    fn the_interval_needs_new_entries_and_the_entry_count_is_optional() {
        let t0 = Instant::now();
        let hour = t0 + Duration::from_secs(3600);
        let mut p = Policy::new(settings(), look(10, 10, 0), t0);
        assert_eq!(p.decide(look(10, 10, 0), hour), None, "nothing new");
        assert_eq!(p.decide(look(11, 10, 10), hour), Some("interval"));

        let mut p = Policy::new(
            SnapshotSettings {
                entries: Some(100),
                ..settings()
            },
            look(0, 0, 0),
            t0,
        );
        assert_eq!(p.decide(look(99, 0, 0), t0), None);
        assert_eq!(p.decide(look(100, 0, 0), t0), Some("entries"));
    }
}
