//! Deliberate bugs for the mutation smoke (`lockstep-chaos mutations`, chaos-tests/README.md).
//!
//! A test harness is only as good as the bugs it can see. Each [`Mutation`] is one bug the
//! proofs must catch; a debug build of `lockstepd` switches one on when `LOCKSTEP_MUTATION`
//! names it (`lockstep_raft::mutation`), and a release build compiles the switch out. This
//! module only names them: nothing in this crate reads the environment, and the engine
//! sees a mutation only through [`crate::Rules::mutation`].

/// A `LOCKSTEP_MUTATION` value that names no mutation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown mutation `{name}`: LOCKSTEP_MUTATION takes one of {names}",
    name = .0,
    names = Mutation::ALL.map(Mutation::name).join(", ")
)]
pub struct UnknownMutation(pub String);

/// One deliberate bug.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mutation {
    /// The log append is written without a sync before openraft is told it is durable:
    /// acknowledged writes live only in the page cache (caught by a power cut).
    UnsyncedLogAppend,
    /// A linearizable read is served from the node's own state without a read index
    /// (caught as a stale read by the linearizability checker).
    LocalLinearizableRead,
    /// A state-expiry timer stays armed after it fired, so it fires once more
    /// (caught by the timers checker).
    TimerFiresTwice,
    /// A lease token is compared by its term only, not its attempt, so a worker whose lease
    /// expired and was granted to another in the same term may still complete the task
    /// (caught by the tasks checker).
    LeaseTermOnly,
    /// Every 50th audit record is not written, though the chain head moves past it
    /// (caught by the chain, feed and writes checkers).
    AuditPutSkipped,
    /// The clock offset guard measures and warns but never holds a node back, so a leader
    /// whose clock jumped stamps with it (caught by the stamps checker).
    ClockGuardOff,
}

impl Mutation {
    pub const ALL: [Mutation; 6] = [
        Mutation::UnsyncedLogAppend,
        Mutation::LocalLinearizableRead,
        Mutation::TimerFiresTwice,
        Mutation::LeaseTermOnly,
        Mutation::AuditPutSkipped,
        Mutation::ClockGuardOff,
    ];

    /// The name `LOCKSTEP_MUTATION` takes.
    pub fn name(self) -> &'static str {
        match self {
            Mutation::UnsyncedLogAppend => "unsynced-log-append",
            Mutation::LocalLinearizableRead => "local-linearizable-read",
            Mutation::TimerFiresTwice => "timer-fires-twice",
            Mutation::LeaseTermOnly => "lease-term-only",
            Mutation::AuditPutSkipped => "audit-put-skipped",
            Mutation::ClockGuardOff => "clock-guard-off",
        }
    }

    /// The mutation named `name`, or an error listing the names there are.
    pub fn parse(name: &str) -> Result<Mutation, UnknownMutation> {
        Mutation::ALL
            .into_iter()
            .find(|m| m.name() == name)
            .ok_or_else(|| UnknownMutation(name.to_string()))
    }
}

impl std::fmt::Display for Mutation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mutation_parses_from_its_name() {
        for m in Mutation::ALL {
            assert_eq!(Mutation::parse(m.name()), Ok(m));
        }
        let e = Mutation::parse("lease-by-term").unwrap_err();
        assert!(e.to_string().contains("lease-term-only"), "{e}");
    }
}
