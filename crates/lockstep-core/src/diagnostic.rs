//! Diagnostics: what is wrong with a definition, where, and how to fix it.

use std::fmt;

use serde::Serialize;

/// Whether a diagnostic stops a definition from being applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Error,
}

macro_rules! codes {
    ($($variant:ident = $code:literal, $slug:literal;)*) => {
        /// Every validation rule has one stable code. Codes never change meaning.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Code { $($variant,)* }

        impl Code {
            /// The stable code, e.g. `LS101`.
            pub fn as_str(self) -> &'static str {
                match self { $(Code::$variant => $code,)* }
            }
            /// A short, readable name, e.g. `unknown-state`.
            pub fn slug(self) -> &'static str {
                match self { $(Code::$variant => $slug,)* }
            }
            pub const ALL: &'static [Code] = &[$(Code::$variant,)*];
        }
    };
}

codes! {
    YamlSyntax = "LS001", "yaml-syntax";
    UnknownKey = "LS002", "unknown-key";
    DuplicateKey = "LS003", "duplicate-key";
    FileTooLarge = "LS004", "file-too-large";
    NestingTooDeep = "LS005", "nesting-too-deep";
    YamlAlias = "LS006", "yaml-alias";
    InvalidValue = "LS007", "invalid-value";
    LimitExceeded = "LS008", "limit-exceeded";
    InvalidName = "LS009", "invalid-name";
    UnknownState = "LS101", "unknown-state";
    UnreachableState = "LS102", "unreachable-state";
    DeadEndState = "LS103", "dead-end-state";
    TransitionFromTerminal = "LS104", "transition-from-terminal";
    NoInitialState = "LS105", "no-initial-state";
    SeveralInitialStates = "LS106", "several-initial-states";
    CelSyntax = "LS201", "cel-syntax";
    CelUnknownReference = "LS202", "cel-unknown-reference";
    CelTooCostly = "LS203", "cel-too-costly";
    UnknownTransition = "LS301", "unknown-transition";
    ActionNotSystem = "LS302", "action-not-system";
    AmbiguousEvent = "LS303", "ambiguous-event";
    ActionNotApplicable = "LS304", "action-not-applicable";
    InvalidDuration = "LS401", "invalid-duration";
    InvalidCalendar = "LS402", "invalid-calendar";
    UnknownCalendar = "LS403", "unknown-calendar";
    InvalidPercent = "LS404", "invalid-percent";
    InvalidRetry = "LS405", "invalid-retry";
    InvalidDataSchema = "LS501", "invalid-data-schema";
    AllowMissing = "LW001", "allow-missing";
}

/// One finding about a definition, located in its source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    #[serde(serialize_with = "ser_code")]
    pub code: Code,
    pub severity: Severity,
    /// What is wrong, precisely.
    pub message: String,
    /// One line on how to fix it.
    pub hint: String,
    /// The dotted path of the offending element, e.g. `transitions.approve.allow`.
    pub path: String,
    pub file: Option<String>,
    /// 1-based line, 0 when unknown.
    pub line: usize,
    /// 1-based column, 0 when unknown.
    pub column: usize,
}

fn ser_code<S: serde::Serializer>(code: &Code, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(code.as_str())
}

impl Diagnostic {
    pub fn error(
        code: Code,
        path: impl Into<String>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Diagnostic {
            code,
            severity: Severity::Error,
            message: message.into(),
            hint: hint.into(),
            path: path.into(),
            file: None,
            line: 0,
            column: 0,
        }
    }

    pub fn warning(
        code: Code,
        path: impl Into<String>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(code, path, message, hint)
        }
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let file = self.file.as_deref().unwrap_or("<definition>");
        write!(
            f,
            "{file}:{}:{}: {level}[{}/{}]: {}",
            self.line,
            self.column,
            self.code.as_str(),
            self.code.slug(),
            self.message
        )?;
        if !self.hint.is_empty() {
            write!(f, "\n  hint: {}", self.hint)?;
        }
        Ok(())
    }
}
