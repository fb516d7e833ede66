//! The clock offset guard: a node whose wall clock is far from its peers' does not lead.
//!
//! Cluster time is the leader's wall clock, made monotonic across leaders by apply
//! (DESIGN §3). A leader whose clock runs ahead stamps times in the future, and because time
//! never goes back, every later leader keeps cluster time frozen until real time catches up:
//! SLA breaches and expiries fire late and gates stay shut. A leader whose clock runs behind
//! fires them late while it leads. So, as CockroachDB's `--max-offset` does, every node
//! measures its offset to each peer and a node may lead only while its clock agrees with a
//! quorum's.
//!
//! - **Measuring.** Every [`PING_INTERVAL`] (faster while the answer is unknown) each node
//!   asks every other member for its wall clock over the internal service
//!   (`ForwardRequest::Clock`) and keeps, per peer, the offset `peer − (sent + received) / 2`.
//!   Its error is at most half the round trip, so a sample whose round trip exceeds
//!   `max_clock_offset` is dropped; a kept sample is trusted for [`SAMPLE_TTL`].
//! - **Judging** ([`judge`]). A peer agrees when its offset is within `max_clock_offset`.
//!   This node counts as agreeing with itself. It is [`Standing::Within`] when the agreeing
//!   voters make a quorum, [`Standing::Off`] when the voters that disagree are so many that
//!   no quorum can agree with it, and [`Standing::Unknown`] otherwise (too few fresh samples:
//!   just started, peers unreachable, or peers running a build that cannot answer). The
//!   median of the voters' offsets (this node's is 0) is reported with it: a node whose clock
//!   is off is the one far from that median.
//! - **Jumps.** A wall clock that moves more than half of `max_clock_offset` against the
//!   monotonic clock between two judgements has jumped (an operator, a bad NTP step): the
//!   node stamps nothing from that moment ([`ClockMonitor::may_stamp`] looks at both clocks
//!   on every proposal), drops its samples and measures again.
//! - **Acting** (`Node::guard_clock`). Only a node that is `Within` campaigns, sends
//!   heartbeats as leader, and stamps proposals. A leader that is not steps down the only way
//!   openraft 0.9 allows: it proposes nothing and stops its heartbeats, so its followers time
//!   out and elect a node whose clock agrees with theirs, whose first message makes it a
//!   follower. A leader whose clock is off therefore leads for at most
//!   [`PING_INTERVAL`] + two election timeouts, and stamps nothing meanwhile.
//! - **Saying so.** `lockstep_clock_offset_seconds{peer}` and
//!   `lockstep_clock_within_max_offset`; a warning per peer whose offset passes half of
//!   `max_clock_offset` (at most once per [`WARN_EVERY`] for each), and one when this node's
//!   standing changes.
//!
//! `--max-clock-offset off` keeps measuring, exporting and warning, but never holds a node
//! back: the switch that shows what the guard prevents (`tests/clock_offset.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use lockstep_raft::NodeId;
use serde::Serialize;

/// How often a node asks each peer for its clock once its standing is known.
pub const PING_INTERVAL: Duration = Duration::from_millis(500);
/// How often while its standing is unknown (at start-up, so a new node soon may lead).
pub const PING_INTERVAL_UNKNOWN: Duration = Duration::from_millis(100);
/// How long a node waits for a peer's clock before giving up on that round.
pub const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a kept sample counts.
pub const SAMPLE_TTL: Duration = Duration::from_secs(10);
/// The shortest gap between two warnings about the same peer's offset.
pub const WARN_EVERY: Duration = Duration::from_secs(60);
/// The default `--max-clock-offset` (CockroachDB's default too).
pub const MAX_CLOCK_OFFSET_DEFAULT: Duration = Duration::from_millis(500);

/// `--max-clock-offset`: the bound and whether the guard acts on it.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct ClockSettings {
    /// The largest offset to a peer that still counts as agreeing.
    pub max_offset: Duration,
    /// `false` (`--max-clock-offset off`): measure and warn only.
    pub guard: bool,
}

impl Default for ClockSettings {
    fn default() -> Self {
        ClockSettings {
            max_offset: MAX_CLOCK_OFFSET_DEFAULT,
            guard: true,
        }
    }
}

impl ClockSettings {
    /// Parses `--max-clock-offset`: a duration such as `500ms` or `2s`, or `off`.
    pub fn parse(text: &str) -> Result<ClockSettings, crate::settings::SettingError> {
        let text = text.trim();
        if text == "off" {
            return Ok(ClockSettings {
                guard: false,
                ..ClockSettings::default()
            });
        }
        let d = lockstep_core::duration::Duration::parse(text).map_err(|source| {
            crate::settings::SettingError::NotADuration {
                setting: "--max-clock-offset",
                value: text.to_string(),
                source,
                hint: "write e.g. 500ms or 2s, or `off`",
            }
        })?;
        let max_offset = Duration::from_millis(d.as_ms());
        if max_offset < Duration::from_millis(10) || max_offset > Duration::from_secs(600) {
            return Err(crate::settings::SettingError::OutOfRange {
                setting: "--max-clock-offset",
                value: text.to_string(),
                problem: "is out of range: give between 10ms and 10m (default 500ms), or `off` to measure without acting",
            });
        }
        Ok(ClockSettings {
            max_offset,
            guard: true,
        })
    }
}

/// One measurement of a peer's clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    /// The peer's wall clock minus this node's, in microseconds.
    pub offset_us: i64,
    /// The round trip it was measured over (the offset's error is at most half of it).
    pub rtt_us: i64,
    /// When it was taken (this node's monotonic clock).
    pub at: Instant,
}

impl Sample {
    /// The sample of a ping sent at this node's wall time `sent_wall_us`, answered with the
    /// peer's wall time `peer_wall_us`, after a round trip of `rtt`, received at `at`.
    pub fn of_ping(sent_wall_us: i64, peer_wall_us: i64, rtt: Duration, at: Instant) -> Sample {
        let rtt_us = rtt.as_micros().min(i64::MAX as u128) as i64;
        Sample {
            offset_us: peer_wall_us.saturating_sub(sent_wall_us.saturating_add(rtt_us / 2)),
            rtt_us,
            at,
        }
    }
}

/// Whether this node's clock agrees with a quorum's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Standing {
    /// A quorum of voters (this node included) agrees: it may campaign, lead and stamp.
    Within,
    /// Too few fresh samples to say.
    Unknown,
    /// So many voters disagree that no quorum can agree with this node.
    Off,
}

/// What [`judge`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Judgement {
    pub standing: Standing,
    /// Voters whose clocks agree with this node's, itself included.
    pub agreeing: usize,
    /// Voters whose fresh samples disagree.
    pub disagreeing: usize,
    /// Voters in the membership.
    pub voters: usize,
    /// The median of the voters' offsets from this node, over this node (0) and the peers
    /// with fresh samples; negative when this node's clock is ahead of the median.
    pub median_offset_us: i64,
}

/// Judges this node (`me`) against the fresh samples of `voters` (see the module docs).
pub fn judge(
    me: NodeId,
    voters: &BTreeSet<NodeId>,
    samples: &BTreeMap<NodeId, Sample>,
    now: Instant,
    max_offset: Duration,
) -> Judgement {
    let max_us = max_offset.as_micros() as i64;
    let mut offsets = vec![0i64];
    let (mut agreeing, mut disagreeing) = (1, 0);
    for id in voters.iter().filter(|id| **id != me) {
        let Some(s) = samples
            .get(id)
            .filter(|s| now.saturating_duration_since(s.at) <= SAMPLE_TTL)
        else {
            continue;
        };
        offsets.push(s.offset_us);
        if s.offset_us.unsigned_abs() <= max_us as u64 {
            agreeing += 1;
        } else {
            disagreeing += 1;
        }
    }
    // This node counts among the voters even when it is not one (a learner, or a node
    // before it knows its membership), so a lone node is Within at once.
    let n = voters.len() + usize::from(!voters.contains(&me));
    let quorum = n / 2 + 1;
    let standing = if agreeing >= quorum {
        Standing::Within
    } else if n - disagreeing < quorum {
        Standing::Off
    } else {
        Standing::Unknown
    };
    offsets.sort_unstable();
    Judgement {
        standing,
        agreeing,
        disagreeing,
        voters: n,
        median_offset_us: offsets[(offsets.len() - 1) / 2],
    }
}

/// The samples and standing of one node: written by its clock loop, read by the write path
/// (two atomic loads and a look at both clocks per proposal) and by `/metrics`.
#[derive(Debug)]
pub struct ClockMonitor {
    pub settings: ClockSettings,
    /// Whether this node may stamp proposals now (always true with the guard off).
    may_stamp: AtomicBool,
    /// The monotonic clock's origin for [`ClockMonitor::wall_minus_mono_us`].
    origin: Instant,
    /// The wall clock minus the monotonic clock (micros) at the last judgement: a wall clock
    /// that has since moved more than half of `max_clock_offset` away from the monotonic
    /// one jumped, and stamps nothing until the next judgement has looked at it.
    judged_wall_minus_mono_us: AtomicI64,
    state: Mutex<MonitorState>,
}

#[derive(Debug)]
struct MonitorState {
    samples: BTreeMap<NodeId, Sample>,
    judgement: Option<Judgement>,
    warned: BTreeMap<NodeId, Instant>,
}

impl ClockMonitor {
    /// A monitor that has measured nothing yet: a one-node cluster is `Within` at once,
    /// anything larger `Unknown` until its first samples.
    pub fn new(settings: ClockSettings, me: NodeId, voters: &BTreeSet<NodeId>) -> ClockMonitor {
        let first = judge(
            me,
            voters,
            &BTreeMap::new(),
            Instant::now(),
            settings.max_offset,
        );
        ClockMonitor {
            settings,
            may_stamp: AtomicBool::new(!settings.guard || first.standing == Standing::Within),
            origin: Instant::now(),
            judged_wall_minus_mono_us: AtomicI64::new(wall_micros()),
            state: Mutex::new(MonitorState {
                samples: BTreeMap::new(),
                judgement: Some(first),
                warned: BTreeMap::new(),
            }),
        }
    }

    /// Whether this node may stamp cluster time on a proposal now: its last judgement was
    /// `Within` and its wall clock has not jumped since (a step of more than half of
    /// `max_clock_offset` against the monotonic clock, e.g. an operator or a bad NTP step
    /// setting the time; the next judgement, at most a ping round later, measures it).
    pub fn may_stamp(&self) -> bool {
        if !self.settings.guard {
            return true;
        }
        self.may_stamp.load(Ordering::Acquire) && self.jumped_us().is_none()
    }

    /// How far this node's wall clock moved against its monotonic clock since the last
    /// judgement, if more than half of `max_clock_offset`.
    pub fn jumped_us(&self) -> Option<i64> {
        let moved =
            self.wall_minus_mono_us() - self.judged_wall_minus_mono_us.load(Ordering::Acquire);
        (moved.unsigned_abs() > (self.settings.max_offset.as_micros() / 2) as u64).then_some(moved)
    }

    fn wall_minus_mono_us(&self) -> i64 {
        wall_micros() - self.origin.elapsed().as_micros() as i64
    }

    /// Keeps a sample of `peer`, unless its round trip is too long to trust (its error would
    /// be more than half of `max_clock_offset`). Returns a warning to log when the offset
    /// passes half of `max_clock_offset` and this peer was not warned of in [`WARN_EVERY`].
    pub fn record(&self, peer: NodeId, sample: Sample) -> Option<String> {
        let max_us = self.settings.max_offset.as_micros() as i64;
        if sample.rtt_us > max_us {
            return None;
        }
        let mut state = self.state.lock().expect("clock monitor lock");
        state.samples.insert(peer, sample);
        if sample.offset_us.unsigned_abs() <= (max_us / 2) as u64 {
            return None;
        }
        let due = state
            .warned
            .get(&peer)
            .is_none_or(|w| sample.at.saturating_duration_since(*w) >= WARN_EVERY);
        if !due {
            return None;
        }
        state.warned.insert(peer, sample.at);
        Some(format!(
            "node {peer}'s wall clock is {} {} this node's (max_clock_offset {}): check NTP on both",
            human_offset(sample.offset_us),
            if sample.offset_us > 0 {
                "ahead of"
            } else {
                "behind"
            },
            lockstep_core::time::human_ms(self.settings.max_offset.as_millis() as u64)
        ))
    }

    /// Judges again over the current voters; returns the judgement and whether the standing
    /// changed since the last one.
    /// A wall clock that jumped since the last judgement makes every sample worthless (they
    /// were taken against the old time): they are dropped, and the node is `Unknown` until
    /// the next round measures its peers again.
    pub fn rejudge(&self, me: NodeId, voters: &BTreeSet<NodeId>) -> (Judgement, bool) {
        let jumped = self.jumped_us().is_some();
        self.judged_wall_minus_mono_us
            .store(self.wall_minus_mono_us(), Ordering::Release);
        let mut state = self.state.lock().expect("clock monitor lock");
        if jumped {
            state.samples.clear();
        }
        let now = Instant::now();
        state
            .samples
            .retain(|_, s| now.saturating_duration_since(s.at) <= SAMPLE_TTL);
        let judgement = judge(me, voters, &state.samples, now, self.settings.max_offset);
        let changed = state
            .judgement
            .as_ref()
            .is_none_or(|j| j.standing != judgement.standing);
        state.judgement = Some(judgement.clone());
        self.may_stamp.store(
            !self.settings.guard || judgement.standing == Standing::Within,
            Ordering::Release,
        );
        (judgement, changed)
    }

    /// The fresh samples, for `/metrics`: each peer's offset in seconds.
    pub fn offsets(&self) -> Vec<(NodeId, f64)> {
        let state = self.state.lock().expect("clock monitor lock");
        let now = Instant::now();
        state
            .samples
            .iter()
            .filter(|(_, s)| now.saturating_duration_since(s.at) <= SAMPLE_TTL)
            .map(|(id, s)| (*id, s.offset_us as f64 / 1e6))
            .collect()
    }

    /// Whether the last judgement was `Within` (what `lockstep_clock_within_max_offset` says,
    /// guard on or off).
    pub fn within(&self) -> bool {
        let state = self.state.lock().expect("clock monitor lock");
        state
            .judgement
            .as_ref()
            .is_some_and(|j| j.standing == Standing::Within)
    }
}

/// This node's wall clock in microseconds since the epoch.
fn wall_micros() -> i64 {
    jiff::Timestamp::now().as_microsecond()
}

/// An offset for people: `60.0s`, `250ms`, `3ms`.
pub fn human_offset(offset_us: i64) -> String {
    let us = offset_us.unsigned_abs();
    if us >= 1_000_000 {
        format!("{:.1}s", us as f64 / 1e6)
    } else {
        format!("{}ms", us / 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn voters(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    fn samples(now: Instant, of: &[(NodeId, i64)]) -> BTreeMap<NodeId, Sample> {
        of.iter()
            .map(|(id, offset_us)| {
                (
                    *id,
                    Sample {
                        offset_us: *offset_us,
                        rtt_us: 500,
                        at: now,
                    },
                )
            })
            .collect()
    }

    const MAX: Duration = Duration::from_millis(500);
    const MINUTE_US: i64 = 60_000_000;

    #[test]
    fn a_node_a_minute_ahead_of_two_peers_is_off_and_they_are_within() {
        let now = Instant::now();
        let v = voters(&[1, 2, 3]);
        // Node 1 runs a minute ahead: it sees both peers a minute behind.
        let j = judge(
            1,
            &v,
            &samples(now, &[(2, -MINUTE_US), (3, -MINUTE_US)]),
            now,
            MAX,
        );
        assert_eq!(j.standing, Standing::Off);
        assert_eq!((j.agreeing, j.disagreeing), (1, 2));
        assert_eq!(j.median_offset_us, -MINUTE_US);
        // Node 2 sees node 1 ahead and node 3 with it.
        let j = judge(
            2,
            &v,
            &samples(now, &[(1, MINUTE_US), (3, 2_000)]),
            now,
            MAX,
        );
        assert_eq!(j.standing, Standing::Within);
        assert_eq!(j.median_offset_us, 2_000);
    }

    #[test]
    fn without_fresh_samples_a_node_of_three_is_unknown_and_a_lone_node_within() {
        let now = Instant::now();
        let j = judge(1, &voters(&[1, 2, 3]), &BTreeMap::new(), now, MAX);
        assert_eq!(j.standing, Standing::Unknown);
        let j = judge(1, &voters(&[1]), &BTreeMap::new(), now, MAX);
        assert_eq!(j.standing, Standing::Within);
        // Samples older than the TTL do not count.
        let old = now - SAMPLE_TTL - Duration::from_secs(1);
        let j = judge(
            1,
            &voters(&[1, 2, 3]),
            &samples(old, &[(2, 0), (3, 0)]),
            now,
            MAX,
        );
        assert_eq!(j.standing, Standing::Unknown);
    }

    #[test]
    fn one_agreeing_peer_of_two_is_a_quorum_of_three_but_not_of_five() {
        let now = Instant::now();
        let j = judge(
            1,
            &voters(&[1, 2, 3]),
            &samples(now, &[(2, 100_000)]),
            now,
            MAX,
        );
        assert_eq!(j.standing, Standing::Within);
        let five = voters(&[1, 2, 3, 4, 5]);
        let j = judge(1, &five, &samples(now, &[(2, 100_000)]), now, MAX);
        assert_eq!(j.standing, Standing::Unknown);
        // Three of five disagree: no quorum can agree with node 1.
        let s = samples(
            now,
            &[(2, MINUTE_US), (3, MINUTE_US), (4, MINUTE_US), (5, 0)],
        );
        assert_eq!(judge(1, &five, &s, now, MAX).standing, Standing::Off);
        // Two of five disagree, two agree: Within (three with itself).
        let s = samples(now, &[(2, MINUTE_US), (3, MINUTE_US), (4, 0), (5, 0)]);
        assert_eq!(judge(1, &five, &s, now, MAX).standing, Standing::Within);
    }

    #[test]
    fn three_clocks_all_apart_leave_no_node_within() {
        // -4 s, 0, +5 s (the chaos smoke suite's skewed schedule): nobody may lead at 500 ms.
        let now = Instant::now();
        let v = voters(&[1, 2, 3]);
        let s = samples(now, &[(1, -4_000_000), (3, 5_000_000)]);
        assert_ne!(judge(2, &v, &s, now, MAX).standing, Standing::Within);
        // With a bound above the spread they all may.
        let wide = Duration::from_secs(15);
        assert_eq!(judge(2, &v, &s, now, wide).standing, Standing::Within);
    }

    #[test]
    fn a_ping_sample_takes_the_midpoint_of_the_round_trip() {
        let at = Instant::now();
        let s = Sample::of_ping(1_000_000, 61_000_500, Duration::from_micros(1_000), at);
        assert_eq!(s.offset_us, 60_000_000);
        assert_eq!(s.rtt_us, 1_000);
    }

    #[test]
    fn the_monitor_drops_slow_samples_warns_once_a_minute_and_gates_stamping() {
        let me = 2;
        let v = voters(&[1, 2, 3]);
        let monitor = ClockMonitor::new(ClockSettings::default(), me, &v);
        assert!(
            !monitor.may_stamp(),
            "unknown at start in a cluster of three"
        );
        let at = Instant::now();
        // A round trip longer than the bound says nothing.
        let slow = Sample {
            offset_us: 0,
            rtt_us: 600_000,
            at,
        };
        assert_eq!(monitor.record(3, slow), None);
        assert!(monitor.offsets().is_empty());
        let ahead = Sample {
            offset_us: MINUTE_US,
            rtt_us: 800,
            at,
        };
        let warning = monitor.record(1, ahead).expect("a warning");
        assert!(
            warning.contains("node 1's wall clock is 60.0s ahead of this node's"),
            "{warning}"
        );
        assert_eq!(monitor.record(1, ahead), None, "once per WARN_EVERY");
        let (j, changed) = monitor.rejudge(me, &v);
        assert_eq!((j.standing, changed), (Standing::Unknown, false));
        assert!(!monitor.may_stamp());
        let with_me = Sample {
            offset_us: 1_000,
            rtt_us: 800,
            at,
        };
        monitor.record(3, with_me);
        let (j, changed) = monitor.rejudge(me, &v);
        assert_eq!((j.standing, changed), (Standing::Within, true));
        assert!(monitor.may_stamp() && monitor.within());
        assert_eq!(monitor.jumped_us(), None);
        // A wall clock that moved 30 s against the monotonic one since the judgement: no
        // stamping until the next judgement, which also drops the samples taken before it.
        monitor
            .judged_wall_minus_mono_us
            .fetch_sub(30_000_000, Ordering::AcqRel);
        let moved = monitor.jumped_us().expect("a jump");
        assert!((moved - 30_000_000).abs() < 1_000_000, "{moved}");
        assert!(!monitor.may_stamp());
        let (j, _) = monitor.rejudge(me, &v);
        assert_eq!(
            j.standing,
            Standing::Unknown,
            "samples from before the jump dropped"
        );
        assert!(monitor.offsets().is_empty());
        // With the guard off the node always stamps, and still says where it stands.
        let off = ClockMonitor::new(ClockSettings::parse("off").unwrap(), me, &v);
        assert!(off.may_stamp() && !off.within());
    }

    #[test]
    fn the_setting_parses_durations_and_off_and_refuses_nonsense() {
        assert_eq!(
            ClockSettings::parse("250ms").unwrap().max_offset,
            Duration::from_millis(250)
        );
        assert!(!ClockSettings::parse("off").unwrap().guard);
        let e = ClockSettings::parse("1ms").unwrap_err().to_string();
        assert!(e.contains("out of range"), "{e}");
        let e = ClockSettings::parse("soon").unwrap_err().to_string();
        assert!(e.contains("--max-clock-offset `soon`"), "{e}");
    }
}
