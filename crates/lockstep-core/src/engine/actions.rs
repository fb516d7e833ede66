//! What one actor may do with one instance now: the inbox.
//!
//! Every transition out of the instance's state, decided read-only for the actor at a
//! cluster time by the rules [`Work::take`] enforces, in the same order (system or not, the
//! `allow` predicate, the gates, the guard). What an attempt alone can tell is said, not
//! guessed: a transition whose `allow` or `guard` reads `payload` is listed as depending on
//! the payload, and the payload's schema and size are checked when it is taken.

use super::*;

/// A transition the actor may take now, or once its gate opens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Action {
    pub transition: String,
    /// The state it leads to.
    pub to: String,
    pub availability: Availability,
    /// Its `allow` or `guard` reads `payload`: only an attempt with a payload can be decided,
    /// and the rules that do not read it passed.
    pub depends_on_payload: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Availability {
    /// Every rule that does not read the payload passes now.
    Now,
    /// `allow` passes, but the `not_before` gate opens at `opens_at`; the guard is decided
    /// when it is taken.
    Gated { opens_at: Timestamp },
}

/// The transitions `actor` may take on `instance` at `at`, in the definition's order.
/// Forbidden ones, those of the other kind of actor (system or not), closed gates and false
/// guards are absent. `instance` must run `definition` (as [`evaluate`] requires).
pub fn actions(
    definition: &CompiledDefinition,
    instance: &Instance,
    actor: &Actor,
    at: Timestamp,
) -> Vec<Action> {
    let mut copy = instance.clone();
    let work = Work {
        definition,
        at,
        instance: &mut copy,
        effects: Vec::new(),
        predicates: Vec::new(),
        notes: Vec::new(),
    };
    let scope = work.scope(actor, &serde_json::json!({}));
    definition
        .transitions_from(&instance.state)
        .filter_map(|spec| action(&work, spec, actor, &scope))
        .collect()
}

/// One transition decided as [`Work::take`] would, without a payload.
fn action(work: &Work, spec: &TransitionSpec, actor: &Actor, scope: &Scope) -> Option<Action> {
    let is_system = actor.kind == ActorKind::System;
    if spec.system != is_system {
        return None;
    }
    let mut depends_on_payload = false;
    // True when the expression passes, or reads the payload (then it is undecided).
    let mut passes = |expr: &Expression| {
        if expr.reads("payload") {
            depends_on_payload = true;
            return true;
        }
        expr.eval_bool(scope) == Ok(true)
    };
    if !spec.system {
        // No `allow`: no human or service actor may take it.
        if !passes(spec.allow.as_ref()?) {
            return None;
        }
    }
    let availability = match work.gates(spec) {
        Ok(()) => {
            if let Some(guard) = &spec.guard
                && !passes(guard)
            {
                return None;
            }
            Availability::Now
        }
        Err(refusal) => match (refusal.code, refusal.earliest_at) {
            (RefusalCode::GateNotYetOpen, Some(opens_at)) => Availability::Gated { opens_at },
            // Closed for good (`not_after`), or a gate whose time cannot be read.
            _ => return None,
        },
    };
    Some(Action {
        transition: spec.name.clone(),
        to: spec.to.clone(),
        availability,
        depends_on_payload,
    })
}
