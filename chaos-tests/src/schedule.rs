//! Seeded schedules: the seed alone decides the cluster size, the clock offsets, which faults
//! happen when and for how long, which nodes they pick (relative to the leader at that
//! moment) and the workload's choices. The same seed and commit replay the same schedule
//! (thread timing still varies run to run).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// One follower cut off from everyone.
    PartitionFollower,
    /// The leader and (in 5-node clusters) one follower on the minority side.
    PartitionLeaderMinority,
    /// The leader alone.
    IsolateLeader,
    /// The leader alone, its links resetting: every connection to or from it is closed at
    /// once and new ones as soon as they arrive (instead of a silent blackhole).
    ResetLeader,
    /// The leader cannot reach the others; they can reach it.
    AsymmetricLeader,
    /// Two halves that cannot talk to each other, and one node (the leader) talking to both.
    BridgeLeader,
    /// Every link slow (the value is one-way milliseconds).
    Delay(u64),
    /// One node's disk syncs slow (the value is milliseconds added to every fsync/fdatasync):
    /// the leader's or a follower's, as the step's pick decides.
    SlowDisk(u64),
    KillLeader,
    KillFollower,
    /// kill -9 of a majority, the leader among them.
    KillMajority,
    PauseLeader,
    PauseFollower,
    /// kill -9 of every node, then all restart.
    RestartAll,
    /// A follower removed from the voters under load, added back as a learner and promoted
    /// when the fault heals.
    Membership,
    /// A follower dies for good (kill -9) and is removed from the voters; a fresh node under a
    /// new id, on an empty data directory at its address, is added as a learner (it catches
    /// up from a snapshot) and promoted when the fault heals.
    ReplaceNode,
    /// A follower's store rots: it is snapshotted (flushing its memtables into SST files),
    /// killed, 16 bytes of its largest SST file are flipped and it is restarted on them. Its
    /// background scrub must find the bad block and stop the node (status 65) before the
    /// fault heals; it is then removed and replaced by a fresh node under a new id, as an
    /// operator re-seeds a corrupt node.
    CorruptStore,
    /// The leader removes itself from the voters under load (it leads until the change
    /// commits, then steps down); added back as a learner and promoted when the fault heals.
    RemoveLeader,
    /// The leader loses power: killed, and its disk loses every write it had not fsynced;
    /// it boots again when the fault heals. Nodes run on lossy disks (`lockstep-lossydisk`)
    /// in every schedule with a power cut.
    PowerCutLeader,
    /// Every node loses power at once (as `PowerCutLeader`, all of them).
    PowerCutAll,
    /// A follower's disk starts answering every write and sync with an error (ENOSPC when
    /// the value is true, EIO otherwise): the node must stop serving and exit (status 74);
    /// when the fault heals the disk works again and the node restarts and catches up.
    DiskFailure(bool),
    /// The leader's wall clock jumps this many seconds forward (libfaketime's timestamp file;
    /// the monotonic clock stays true), and back when the fault heals: the clock offset guard
    /// must keep the jump out of every stamped time.
    ClockJump(i64),
}

/// The seeds of the CI smoke suite (`lockstep-chaos smoke`, run by scripts/test), 3 nodes and
/// no clock skew: with the 5-node and the skewed one below they apply every fault kind
/// (`the_smoke_seeds_together_apply_every_fault_kind`).
/// (Seed 993 brings `corrupt-store`, 90 `replace-node` on a secure cluster, 142
/// `disk-failure`.)
pub const SMOKE_SEEDS: [u64; 10] = [10, 993, 19, 25, 11, 27, 5, 142, 105, 90];
/// The smoke suite's 5-node schedule (pause-follower, reset-leader, kill-follower).
pub const SMOKE_FIVE_NODE_SEED: u64 = 42;
/// The smoke suite's skewed schedule: 3 nodes at -4 s, +0 s and +5 s (libfaketime, which
/// scripts/prereqs installs), kill-follower and delay.
pub const SMOKE_SKEWED_SEED: u64 = 22;

/// The schedules of the smoke suite: [`SMOKE_SEEDS`] on 3 nodes without skew, then
/// [`SMOKE_FIVE_NODE_SEED`] on the 5 nodes it draws and [`SMOKE_SKEWED_SEED`] with its clocks.
pub fn smoke_schedules(duration_ms: u64) -> Vec<Schedule> {
    let mut out: Vec<Schedule> = SMOKE_SEEDS
        .iter()
        .map(|seed| Schedule::generate(*seed, Some(3), duration_ms, false))
        .collect();
    // The 5-node schedule also runs secure, so that the smoke suite has a secure cluster.
    out.push(Schedule {
        secure: true,
        ..Schedule::generate(SMOKE_FIVE_NODE_SEED, None, duration_ms, false)
    });
    out.push(Schedule::generate(
        SMOKE_SKEWED_SEED,
        Some(3),
        duration_ms,
        true,
    ));
    out
}

/// Every fault kind, by the name the summary table counts it under.
pub const FAULT_KINDS: [&str; 22] = [
    "partition-follower",
    "partition-leader-minority",
    "isolate-leader",
    "reset-leader",
    "asymmetric-leader",
    "bridge-leader",
    "delay",
    "slow-disk",
    "kill-leader",
    "kill-follower",
    "disk-failure",
    "kill-majority",
    "pause-leader",
    "pause-follower",
    "restart-all",
    "membership",
    "remove-leader",
    "replace-node",
    "corrupt-store",
    "power-cut-leader",
    "power-cut-all",
    "clock-jump",
];

impl Fault {
    /// The kind, as [`FAULT_KINDS`] names it (`delay`, not `delay-30ms`).
    pub fn kind(&self) -> String {
        match self {
            Fault::Delay(_) => "delay".into(),
            Fault::SlowDisk(_) => "slow-disk".into(),
            Fault::ClockJump(_) => "clock-jump".into(),
            Fault::DiskFailure(_) => "disk-failure".into(),
            other => other.name(),
        }
    }

    /// Whether a compound step may add a follower fault to this one: not to faults that
    /// already take followers down (kills and pauses of several nodes, restarts, power cuts)
    /// or change membership.
    pub fn takes_a_second(&self) -> bool {
        matches!(
            self,
            Fault::PartitionLeaderMinority
                | Fault::IsolateLeader
                | Fault::ResetLeader
                | Fault::AsymmetricLeader
                | Fault::BridgeLeader
                | Fault::Delay(_)
                | Fault::SlowDisk(_)
                | Fault::KillLeader
                | Fault::PauseLeader
        )
    }

    /// Whether the fault needs the nodes on lossy disks (power cuts, failing disks).
    pub fn needs_lossy_disks(&self) -> bool {
        matches!(
            self,
            Fault::PowerCutLeader | Fault::PowerCutAll | Fault::DiskFailure(_)
        )
    }

    pub fn name(&self) -> String {
        match self {
            Fault::Delay(ms) => format!("delay-{ms}ms"),
            Fault::SlowDisk(ms) => format!("slow-disk-{ms}ms"),
            Fault::ClockJump(s) => format!("clock-jump-{s:+}s"),
            Fault::DiskFailure(true) => "disk-failure-enospc".into(),
            Fault::DiskFailure(false) => "disk-failure-eio".into(),
            other => serde_json::to_value(other)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// Milliseconds after the workload starts.
    pub at_ms: u64,
    pub fault: Fault,
    /// How long the fault lasts before it heals.
    pub hold_ms: u64,
    /// Picks the node(s) among candidates at run time.
    pub pick: u64,
    /// While the fault holds, a burst of client writes far above capacity
    /// (`nemesis::BURST_WRITERS` writers): admission control must refuse the excess while the
    /// checkers still hold and timers stay on time.
    #[serde(default)]
    pub burst: bool,
    /// A second fault at the same time, healed with the first (a compound fault): a follower
    /// killed, paused, cut off, or its disk slowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub also: Option<Fault>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    pub seed: u64,
    pub nodes: usize,
    /// Clock offset of each node in seconds (0: none).
    pub skews: Vec<i64>,
    pub duration_ms: u64,
    pub steps: Vec<Step>,
    /// The deliberate bug every node runs with (`LOCKSTEP_MUTATION`; the mutation smoke
    /// only, `lockstep-chaos mutations`); `None` for a real run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mutation: Option<String>,
    /// A secure cluster: TLS with mutual TLS between nodes (through the fault proxies), and
    /// every client with a bearer JWT (`lockstep-testpki`).
    #[serde(default)]
    pub secure: bool,
}

impl Schedule {
    /// The schedule of `seed`. `nodes` forces a cluster size; `skew` allows clock offsets.
    pub fn generate(seed: u64, nodes: Option<usize>, duration_ms: u64, skew: bool) -> Schedule {
        let mut rng = StdRng::seed_from_u64(seed);
        let five = rng.random_range(0..5) == 0;
        let nodes = nodes.unwrap_or(if five { 5 } else { 3 });
        // Drawn whether or not skew is allowed, so that the rest of the schedule does not
        // depend on it (or on a forced cluster size: always five offsets).
        let skewed = rng.random_range(0..3) == 0 && skew;
        let offsets: Vec<i64> = (0..5)
            .map(|_| {
                let on = rng.random_bool(0.6);
                let by = rng.random_range(-5..=5);
                if skewed && on { by } else { 0 }
            })
            .collect();
        let skews = (0..nodes)
            .map(|i| offsets.get(i).copied().unwrap_or(0))
            .collect();
        // Half of the whole-cluster restarts become membership changes, decided by a second
        // stream so that the rest of the schedule stays as it was before this fault existed.
        let mut membership = StdRng::seed_from_u64(seed ^ 0x6D65_6D62_6572_7368);
        let mut disk = StdRng::seed_from_u64(seed ^ 0x736C_6F77_6469_736B);
        // A third of the leader kills and of the whole-cluster restarts become power cuts,
        // from a stream of their own (the rest of the schedule stays as it was).
        let mut power = StdRng::seed_from_u64(seed ^ 0x706F_7765_7263_7574);
        // Half of the membership changes remove the leader rather than a follower, from a
        // stream of their own too.
        let mut leaving = StdRng::seed_from_u64(seed ^ 0x6C65_6176_696E_6721);
        // A fifth of the steps whose fault leaves the followers alone get a second fault on a
        // follower at the same time, from a stream of their own as well.
        let mut compound = StdRng::seed_from_u64(seed ^ 0x636F_6D70_6F75_6E64);
        // A third of the leader pauses become clock jumps in schedules without skew (with a
        // skew the guard's bound is raised, see `Cluster::max_clock_offset`), from their own
        // stream.
        let mut jump = StdRng::seed_from_u64(seed ^ 0x6A75_6D70_6A75_6D70);
        // A third of the follower removals replace the follower by a fresh node instead.
        let mut replace = StdRng::seed_from_u64(seed ^ 0x7265_706C_6163_6521);
        // A quarter of the follower kills become failing disks, from their own stream too.
        let mut failing = StdRng::seed_from_u64(seed ^ 0x6469_736B_6661_696C);
        // Half of the node replacements first corrupt the node's store, from their own
        // stream too.
        let mut rot = StdRng::seed_from_u64(seed ^ 0x636F_7272_7570_7421);
        // Half of the leader isolations reset connections instead of holding them.
        let mut reset = StdRng::seed_from_u64(seed ^ 0x7265_7365_7473);
        let mut steps = Vec::new();
        let mut t = 1_000 + rng.random_range(0..1_000);
        while t + 2_500 < duration_ms {
            let fault = match rng.random_range(0..12) {
                0 => Fault::PartitionFollower,
                1 => Fault::PartitionLeaderMinority,
                2 if reset.random_bool(0.5) => Fault::ResetLeader,
                2 => Fault::IsolateLeader,
                3 => Fault::AsymmetricLeader,
                4 => Fault::BridgeLeader,
                // Half of the delays become slow disks, decided by a stream of their own
                // (as membership changes are) so that the rest of the schedule stays the same.
                5 => match rng.random_range(20..=200) {
                    ms if disk.random_bool(0.5) => Fault::SlowDisk(ms),
                    ms => Fault::Delay(ms),
                },
                6 if power.random_bool(1.0 / 3.0) => Fault::PowerCutLeader,
                6 => Fault::KillLeader,
                7 if failing.random_bool(0.25) => Fault::DiskFailure(failing.random_bool(0.5)),
                7 => Fault::KillFollower,
                8 => Fault::KillMajority,
                9 if jump.random_bool(1.0 / 3.0) && !skewed => {
                    Fault::ClockJump(jump.random_range(20..=40))
                }
                9 => Fault::PauseLeader,
                10 => Fault::PauseFollower,
                _ if membership.random_bool(0.5) => {
                    if leaving.random_bool(0.5) {
                        Fault::RemoveLeader
                    } else if replace.random_bool(1.0 / 3.0) {
                        if rot.random_bool(0.5) {
                            Fault::CorruptStore
                        } else {
                            Fault::ReplaceNode
                        }
                    } else {
                        Fault::Membership
                    }
                }
                _ if power.random_bool(1.0 / 3.0) => Fault::PowerCutAll,
                _ => Fault::RestartAll,
            };
            let hold_ms = rng.random_range(1_500..=5_000).min(duration_ms - t - 1_000);
            let second = compound.random_range(0..4);
            let also =
                (fault.takes_a_second() && compound.random_bool(0.2)).then(|| match second {
                    0 => Fault::KillFollower,
                    1 => Fault::PauseFollower,
                    2 => Fault::PartitionFollower,
                    _ => Fault::SlowDisk(compound.random_range(20..=200)),
                });
            steps.push(Step {
                at_ms: t,
                fault,
                hold_ms,
                pick: rng.random(),
                burst: false,
                also,
            });
            t += hold_ms + rng.random_range(1_000..=3_000);
        }
        // A quarter of the schedules run a secure cluster, from a stream of their own.
        let secure = StdRng::seed_from_u64(seed ^ 0x7365_6375_7265).random_bool(0.25);
        Schedule {
            seed,
            nodes,
            skews,
            duration_ms,
            steps,
            mutation: None,
            secure,
        }
    }

    /// Whether any step jumps a clock (every node then reads its offset from a file).
    pub fn has_clock_jump(&self) -> bool {
        self.steps
            .iter()
            .any(|s| matches!(s.fault, Fault::ClockJump(_)))
    }

    /// Whether the nodes run on lossy disks: some step cuts power or fails a disk.
    pub fn needs_lossy_disks(&self) -> bool {
        self.steps.iter().any(|s| s.fault.needs_lossy_disks())
    }

    /// Gives about 3 in 10 steps a burst of client writes, from a stream of the seed's own
    /// (so the faults stay as they were).
    pub fn add_bursts(&mut self) {
        let mut bursts = StdRng::seed_from_u64(self.seed ^ 0x6275_7273_7473);
        for step in &mut self.steps {
            step.burst = bursts.random_bool(0.3);
        }
    }

    /// A one-line description: `3 nodes, skew [0,+2,-1]: kill-leader@1.2s/3.1s, …`.
    pub fn describe(&self) -> String {
        let mut s = format!("{} nodes", self.nodes);
        if let Some(m) = &self.mutation {
            s.push_str(&format!(", MUTATION {m}"));
        }
        if self.secure {
            s.push_str(", secure (mTLS, JWT)");
        }
        if self.skews.iter().any(|x| *x != 0) {
            let offsets: Vec<String> = self.skews.iter().map(|x| format!("{x:+}s")).collect();
            s.push_str(&format!(", clocks [{}]", offsets.join(",")));
        }
        s.push_str(": ");
        let steps: Vec<String> = self
            .steps
            .iter()
            .map(|st| {
                format!(
                    "{}{}{}@{:.1}s/{:.1}s",
                    st.fault.name(),
                    st.also
                        .map(|a| format!("&{}", a.name()))
                        .unwrap_or_default(),
                    if st.burst { "+burst" } else { "" },
                    st.at_ms as f64 / 1e3,
                    st.hold_ms as f64 / 1e3
                )
            })
            .collect();
        s.push_str(&steps.join(", "));
        s
    }

    /// A seed for one workload process, derived from the schedule's seed.
    pub fn process_seed(&self, process: u64) -> u64 {
        self.seed
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(process.wrapping_mul(0xD1B5_4A32_D192_ED03))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_decides_the_schedule() {
        let a = Schedule::generate(42, None, 20_000, true);
        assert_eq!(a, Schedule::generate(42, None, 20_000, true));
        let others: Vec<Schedule> = (0..20)
            .map(|s| Schedule::generate(s, None, 20_000, true))
            .collect();
        assert!(others.iter().any(|o| o.steps != a.steps));
        // Forcing the size the seed chose, or forbidding skew, leaves the faults as they were.
        let forced = Schedule::generate(42, Some(a.nodes), 20_000, false);
        assert_eq!(forced.steps, a.steps);
        assert!(forced.skews.iter().all(|x| *x == 0));
    }

    #[test]
    fn steps_do_not_overlap_and_end_before_the_run() {
        for seed in 0..200 {
            let s = Schedule::generate(seed, Some(3), 20_000, false);
            assert!(!s.steps.is_empty(), "seed {seed}");
            assert!(s.skews.iter().all(|x| *x == 0));
            let mut end = 0;
            for st in &s.steps {
                assert!(st.at_ms >= end, "seed {seed}: {s:?}");
                end = st.at_ms + st.hold_ms;
                assert!(end < 20_000, "seed {seed}");
                assert!(st.hold_ms >= 1_000);
            }
        }
    }

    #[test]
    fn every_fault_appears_over_many_seeds() {
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..100 {
            for st in Schedule::generate(seed, None, 30_000, true).steps {
                seen.insert(st.fault.kind());
            }
        }
        let all: std::collections::BTreeSet<String> =
            FAULT_KINDS.iter().map(|k| k.to_string()).collect();
        assert_eq!(seen, all);
        let plain = Schedule::generate(7, None, 30_000, true);
        assert!(plain.steps.iter().all(|st| !st.burst), "bursts are opt-in");
        let bursts = (0..100)
            .flat_map(|seed| {
                let mut s = Schedule::generate(seed, None, 30_000, true);
                s.add_bursts();
                s.steps
            })
            .filter(|st| st.burst)
            .count();
        assert!(bursts > 0, "some faults come with a burst of writes");
        assert_eq!(Fault::KillLeader.name(), "kill-leader");
        assert_eq!(Fault::Delay(30).name(), "delay-30ms");
        assert_eq!(Fault::SlowDisk(40).name(), "slow-disk-40ms");
        assert_eq!(Fault::PowerCutAll.name(), "power-cut-all");
    }

    /// The smoke suite's seeds, as `lockstep-chaos smoke` runs them (3 nodes, 14 s, no
    /// skew), apply every fault kind between them; the suite also runs a 5-node and a
    /// skewed schedule.
    #[test]
    fn the_smoke_seeds_together_apply_every_fault_kind() {
        let smoke = smoke_schedules(14_000);
        let seen: std::collections::BTreeSet<String> = smoke
            .iter()
            .flat_map(|s| &s.steps)
            .map(|st| st.fault.kind())
            .collect();
        assert_eq!(smoke.len(), SMOKE_SEEDS.len() + 2);
        assert!(
            smoke.iter().any(|s| s.nodes == 5),
            "no 5-node smoke schedule"
        );
        assert!(
            smoke.iter().any(|s| s.skews.iter().any(|x| *x != 0)),
            "no skewed smoke schedule"
        );
        assert!(smoke.iter().any(|s| s.secure), "no secure smoke schedule");
        assert!(
            smoke
                .iter()
                .flat_map(|s| &s.steps)
                .any(|st| st.also.is_some()),
            "no compound fault in the smoke suite"
        );
        let missing: Vec<&str> = FAULT_KINDS
            .iter()
            .copied()
            .filter(|k| !seen.contains(*k))
            .collect();
        assert!(missing.is_empty(), "no smoke seed applies {missing:?}");
    }
}
