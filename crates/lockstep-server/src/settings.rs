//! Why a setting of `lockstepd` (a flag, its environment variable or its TOML key) cannot be
//! used: which setting, the value given, and what to write instead. Imports nothing of the
//! server, so every module that parses a setting can use it.

use lockstep_core::duration::DurationError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingError {
    /// Not a duration (`30s`, `12h`, `off` where allowed).
    #[error("{setting} `{value}`: {source}; {hint}")]
    NotADuration {
        setting: &'static str,
        value: String,
        source: DurationError,
        /// What to write instead, e.g. `write e.g. 12h, 7d or off`.
        hint: &'static str,
    },
    /// Not a size (`512MiB`, `off`).
    #[error(
        "{setting} {value:?} is not a size: give bytes with a binary unit such as 512MiB, 2GiB or 1TiB, or off"
    )]
    NotASize { setting: String, value: String },
    /// A value of the right kind outside the setting's range; `problem` says which range.
    #[error("{setting} `{value}` {problem}")]
    OutOfRange {
        setting: &'static str,
        value: String,
        problem: &'static str,
    },
}
