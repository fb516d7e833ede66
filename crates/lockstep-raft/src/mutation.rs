//! The switch of the mutation smoke's deliberate bugs ([`lockstep_core::mutation`]).
//!
//! A debug build reads `LOCKSTEP_MUTATION` once; a release build compiles the switch out and
//! refuses to start with the variable set, so no deployed node can run a mutation. Every
//! replica of a mutation run must be started with the same value (the engine's mutations
//! change what apply writes).

use std::sync::OnceLock;

pub use lockstep_core::mutation::{Mutation, UnknownMutation};

/// The environment variable that names a mutation.
pub const ENV: &str = "LOCKSTEP_MUTATION";

/// Why `LOCKSTEP_MUTATION` cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MutationEnvError {
    /// It names no mutation.
    #[error(transparent)]
    Unknown(#[from] UnknownMutation),
    /// Any name, in a release build.
    #[error(
        "{env}={name} is set, but this is a release build, which has no mutations: unset {env} (mutations are deliberate bugs for the test harness, in debug builds only)",
        env = ENV
    )]
    ReleaseBuild { name: String },
}

/// What `LOCKSTEP_MUTATION` asks for: nothing when unset or empty, the mutation it names,
/// or an error saying what was wrong (an unknown name; any name in a release build).
pub fn from_env() -> Result<Option<Mutation>, MutationEnvError> {
    let Some(name) = std::env::var_os(ENV).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let name = name.to_string_lossy();
    if cfg!(debug_assertions) {
        Ok(Some(Mutation::parse(&name)?))
    } else {
        Err(MutationEnvError::ReleaseBuild {
            name: name.into_owned(),
        })
    }
}

/// The mutation this process runs with (read once; `None` in release builds, and when the
/// variable is unset or invalid: `lockstepd` checks [`from_env`] at start and refuses to run
/// with an invalid one).
pub fn active() -> Option<Mutation> {
    if !cfg!(debug_assertions) {
        return None;
    }
    static ACTIVE: OnceLock<Option<Mutation>> = OnceLock::new();
    *ACTIVE.get_or_init(|| from_env().ok().flatten())
}

/// Whether `m` is the active mutation.
pub fn is(m: Mutation) -> bool {
    active() == Some(m)
}
