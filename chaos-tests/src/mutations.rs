//! The mutation smoke: the harness run against `lockstepd`s with a deliberate bug
//! ([`lockstep_core::mutation`]; a debug build switches one on from `LOCKSTEP_MUTATION`).
//! Each mutation gets a short schedule whose faults give its bug a chance to show, and the
//! smoke passes only if every one of them is caught by a checker named for it (or by the
//! harness seeing acknowledged work vanish). A checker that passes a mutated cluster is a
//! checker with a blind spot.

use lockstep_core::mutation::Mutation;

use crate::schedule::{Fault, Schedule, Step};

/// One mutation's run: the schedule and the checkers that must catch it (any one of them).
#[derive(Clone, Debug)]
pub struct MutationRun {
    pub mutation: Mutation,
    pub schedule: Schedule,
    pub caught_by: &'static [&'static str],
    /// Why this schedule shows the bug.
    pub why: &'static str,
}

fn step(at_ms: u64, fault: Fault, hold_ms: u64) -> Step {
    Step {
        at_ms,
        fault,
        hold_ms,
        pick: 0,
        burst: false,
        also: None,
    }
}

/// The runs of the mutation smoke, one per mutation, 3 nodes, no skew.
pub fn runs() -> Vec<MutationRun> {
    Mutation::ALL
        .into_iter()
        .enumerate()
        .map(|(i, mutation)| {
            let (duration_ms, steps, caught_by, why): (u64, Vec<Step>, &[&str], &str) =
                match mutation {
                    Mutation::UnsyncedLogAppend => (
                        9_000,
                        // At 3 s, before the first snapshot (300 entries, ~5 s in): its
                        // checkpoint syncs the WAL, and a cut just after it once lost nothing.
                        vec![step(3_000, Fault::PowerCutAll, 1_500)],
                        &["writes", "linearizable", "convergence", "audit chain"],
                        "every node loses power at once: what the log did not sync is gone, acknowledged writes with it, or replicas keep state their logs no longer hold and diverge",
                    ),
                    Mutation::LocalLinearizableRead => (
                        14_000,
                        vec![
                            step(1_000, Fault::Delay(150), 4_000),
                            step(6_000, Fault::Delay(80), 4_000),
                            step(11_000, Fault::PartitionFollower, 2_000),
                        ],
                        &["linearizable"],
                        "with slow links a follower applies a write well after it was acknowledged, and one cut off stops applying; both keep answering reads from their own state",
                    ),
                    Mutation::TimerFiresTwice => (
                        8_000,
                        Vec::new(),
                        &["timers"],
                        "instances left in `open` expire after 3 s, and each expiry fires again",
                    ),
                    Mutation::LeaseTermOnly => (
                        // Long enough for several late completions: each catches the bug only
                        // when its task was leased again before it arrived, and in 14 s runs
                        // that happened in 2 of 3 (measured 2026-12-03).
                        40_000,
                        Vec::new(),
                        &["tasks"],
                        "one completion in eight comes after its lease expired and the task was leased again in the same term",
                    ),
                    Mutation::AuditPutSkipped => (
                        8_000,
                        Vec::new(),
                        &["audit chain", "convergence", "change feed", "writes"],
                        "every 50th audit record is missing from every replica",
                    ),
                    Mutation::ClockGuardOff => (
                        10_000,
                        vec![step(2_000, Fault::ClockJump(30), 4_000)],
                        &["stamps"],
                        "the leader's wall clock jumps 30 s forward and it goes on leading and stamping with it",
                    ),
                };
            MutationRun {
                mutation,
                schedule: Schedule {
                    seed: 9_001 + i as u64,
                    nodes: 3,
                    skews: vec![0; 3],
                    duration_ms,
                    steps,
                    mutation: Some(mutation.name().to_string()),
                    secure: false,
                },
                caught_by,
                why,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mutation_has_a_run_whose_steps_fit_its_duration() {
        let runs = runs();
        assert_eq!(runs.len(), Mutation::ALL.len());
        for r in &runs {
            assert_eq!(r.schedule.mutation.as_deref(), Some(r.mutation.name()));
            assert!(!r.caught_by.is_empty());
            for s in &r.schedule.steps {
                assert!(s.at_ms + s.hold_ms < r.schedule.duration_ms, "{r:?}");
            }
        }
        let power = runs
            .iter()
            .find(|r| r.mutation == Mutation::UnsyncedLogAppend)
            .unwrap();
        assert!(
            power.schedule.needs_lossy_disks(),
            "only a power cut shows an unsynced log"
        );
    }
}
