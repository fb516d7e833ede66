//! The pure, deterministic heart of Lockstep.
//!
//! Everything here is a function of its inputs: a workflow [`Definition`] parsed from YAML,
//! validated and compiled into a [`CompiledDefinition`], and [`evaluate`], which takes a
//! definition, an instance, a command and the cluster time and returns an [`Outcome`]. There
//! is no clock, no randomness, no I/O and no async runtime in this crate, so every replica of a
//! cluster computes byte-identical results from the same log (DESIGN §2, §3 invariant 1).

pub mod audit;
pub mod calendar;
pub mod canonical;
pub mod definition;
pub mod diagnostic;
pub mod diff;
pub mod duration;
pub mod engine;
pub mod expr;
pub mod graph;
pub mod invariant;
pub mod journal;
pub mod json_field;
pub mod limits;
pub mod migrate;
pub mod mutation;
pub mod redact;
pub mod retry;
pub mod scenario;
pub mod schedule;
pub mod schema;
pub mod search;
pub mod sla;
pub mod source;
pub mod subscription;
pub mod time;
pub mod validate;

pub use audit::{AuditKind, AuditRecord, PredicateTrace};
pub use definition::Definition;
pub use diagnostic::{Code, Diagnostic, Severity};
pub use engine::{
    Actor, ActorKind, Change, Command, Effect, Instance, Outcome, Refusal, RefusalCode, Rules,
    Timer, TimerKind, evaluate, evaluate_under, evaluate_with,
};
pub use limits::Limits;
pub use migrate::{Migration, TimerPolicy, migrate};
pub use time::Timestamp;
pub use validate::{CompiledDefinition, check, compile};
