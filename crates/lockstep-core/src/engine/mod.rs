//! `evaluate(definition, instance, command, at) -> Outcome`: the pure engine.
//!
//! An outcome is either a [`Refusal`] that changes nothing, or a [`Change`]: the new instance,
//! its audit record, the timers to arm and cancel and the effects to dispatch. The caller (the
//! replicated state machine) writes all of it in one batch. Evaluation reads no clock: `at` is
//! the cluster time stamped by the leader. What the replicated state knows about other
//! instances (a taken business key, a worker's leases) reaches the engine as [`Facts`]
//! ([`evaluate_with`]); apply looks facts up and writes decisions, it decides nothing.
//!
//! This file is the entry point: [`evaluate`] and the [`Rules`] it decides under. The rest is
//! split by concern: `types.rs` (the vocabulary: [`Instance`], [`Command`], [`Outcome`],
//! [`Change`], [`Refusal`], timers, tasks, incidents, effects), `create.rs` (a new instance,
//! data and payload checks, predicates), `eval.rs` (a command against an existing
//! instance: which transition, gate, lease or incident it concerns), `work.rs` (the change
//! in progress: entering states, SLA clocks and timers, tasks and their retries) and
//! `facts.rs` (the cross-instance rules, and a new definition version's audit record) and
//! `actions.rs` (the inbox: what an actor may take now, decided read-only by the same rules).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::audit::{ActorRecord, AuditKind, AuditRecord, PredicateTrace, TimerFiring};
use crate::canonical::{canonical_json, sha256_hex};
use crate::expr::{Expression, Scope, json_value, map_value, string_value, timestamp_value};
use crate::limits::check_json_shape;
use crate::retry::RetryPolicy;
use crate::sla::{Clock, Milestone, SlaClock, SlaView, on_enter};
use crate::time::Timestamp;
use crate::validate::{CompiledDefinition, EffectSpec, Gate, TransitionSpec};

mod actions;
mod create;
mod eval;
mod facts;
mod types;
mod work;

pub use actions::{Action, Availability, actions};
pub(crate) use create::*;
use eval::*;
use facts::key_is_free;
pub use facts::{Facts, WorkerLeases, admit, definition_applied};
pub use types::*;
pub(crate) use work::*;

/// Rules of evaluation that changed after commands were already in replicated logs.
///
/// A replica must decide an old log entry as the build that proposed it did, or replicas of
/// different builds (a rolling upgrade) and a replica replaying its log would diverge. So a
/// rule that refuses what was accepted before is switched on by the replicated log format
/// (`lockstep_raft::format`), at the same log index on every replica; [`Rules::CURRENT`] is
/// everything this build decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rules {
    /// Heartbeat, Complete and Fail with a lease token whose lease expired at the command's
    /// cluster time are refused `STALE_LEASE`, whether or not the lease-expiry timer fired
    /// (without it, a late worker's completion was accepted until the timer fired).
    pub lease_expiry_guard: bool,
    /// A deliberate bug for the mutation smoke ([`crate::mutation`]); `None` everywhere but
    /// in a debug build of `lockstepd` run with `LOCKSTEP_MUTATION`.
    pub mutation: Option<crate::mutation::Mutation>,
}

impl Rules {
    /// Every rule of this build.
    pub const CURRENT: Rules = Rules {
        lease_expiry_guard: true,
        mutation: None,
    };
    /// The rules of commit 5e60e31 and earlier (log formats 1 and 2).
    pub const BEFORE_LEASE_GUARD: Rules = Rules {
        lease_expiry_guard: false,
        mutation: None,
    };
}

/// Evaluates `command` under every rule of this build ([`Rules::CURRENT`]).
pub fn evaluate(
    definition: &CompiledDefinition,
    instance: Option<&Instance>,
    command: &Command,
    at: Timestamp,
) -> Outcome {
    evaluate_under(definition, instance, command, at, Rules::CURRENT)
}

/// Evaluates `command` under `rules` (as the replicated log format decides them), knowing
/// nothing about other instances ([`Facts::default`]).
pub fn evaluate_under(
    definition: &CompiledDefinition,
    instance: Option<&Instance>,
    command: &Command,
    at: Timestamp,
    rules: Rules,
) -> Outcome {
    evaluate_with(definition, instance, command, at, rules, &Facts::default())
}

/// Evaluates `command` under `rules`, with what the replicated state knows about other
/// instances ([`Facts`]: a taken business key, the worker's leases). This is what apply calls.
pub fn evaluate_with(
    definition: &CompiledDefinition,
    instance: Option<&Instance>,
    command: &Command,
    at: Timestamp,
    rules: Rules,
    facts: &Facts,
) -> Outcome {
    let result = admit(command, facts).and_then(|()| match (command, instance) {
        (
            Command::Create {
                instance_id,
                key,
                data,
                actor,
            },
            None,
        ) => key_is_free(definition, key.as_deref(), facts)
            .and_then(|()| create(definition, instance_id, key.as_deref(), data, actor, at)),
        (Command::Create { instance_id, .. }, Some(_)) => Err(Refusal::new(
            RefusalCode::AlreadyExists,
            format!("instance `{instance_id}` already exists"),
        )),
        (_, None) => Err(Refusal::new(
            RefusalCode::TaskNotFound,
            "the command needs an existing instance",
        )),
        (command, Some(instance))
            if instance.workflow != definition.name()
                || instance.definition_version != definition.version =>
        {
            Err(Refusal::new(
                RefusalCode::WrongWorkflow,
                format!(
                    "instance `{}` runs {}@{}, not {}@{} ({command:?})",
                    instance.id,
                    instance.workflow,
                    short(&instance.definition_version),
                    definition.name(),
                    short(&definition.version)
                ),
            ))
        }
        (command, Some(instance)) => Eval {
            definition,
            at,
            rules,
            before: instance,
        }
        .run(command),
    });
    match result {
        Ok(change) => Outcome::Applied(Box::new(change)),
        Err(refusal) => Outcome::Refused(refusal),
    }
}

pub(crate) fn short(version: &str) -> &str {
    &version[..version.len().min(12)]
}
