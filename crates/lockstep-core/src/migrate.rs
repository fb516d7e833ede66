//! Explicit migration of an instance from one definition version to another (DESIGN §2).
//!
//! A running instance stays on the definition version it started with. An operator moves it
//! with a [`Migration`]: the two versions, a state mapping (old name → new name; a state not
//! in the map keeps its name) and a declared [`TimerPolicy`] for its state expiry and SLA
//! clocks. [`migrate`] is pure like [`crate::evaluate`]: it returns the migrated instance, a
//! `migration` audit record and the timers to arm and cancel, or a [`Refusal`] that changes
//! nothing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::audit::{AuditKind, AuditRecord};
use crate::canonical::{canonical_json, sha256_hex};
use crate::engine::{
    Actor, Change, Instance, Outcome, Refusal, RefusalCode, TaskStatus, Timer, TimerKind, Work,
    check_data, join_notes, short,
};
use crate::sla::{Clock, SlaClock, SlaStatus};
use crate::time::Timestamp;
use crate::validate::CompiledDefinition;

/// How a migration re-arms the instance's state expiry and SLA clocks. Task lease and retry
/// timers belong to their tasks and are kept as they are under every policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TimerPolicy {
    /// Keep absolute deadlines: an armed state expiry keeps its due time, and a running SLA
    /// clock is rebased so that its breach falls at the instant it would have under the old
    /// version (to the resolution of the new version's calendar).
    KeepDeadline,
    /// Keep remaining budgets: what was left of a state expiry or an SLA at the migration
    /// (measured with the old version's calendars) is counted down with the new version's
    /// calendars from the migration on.
    KeepRemaining,
    /// Re-arm as if the instance had just entered its (mapped) state: the expiry counts from
    /// the migration, and every SLA clock that was not stopped starts again with the new
    /// version's budget; the new version's SLA start/stop/reset/pause rules apply.
    Restart,
}

impl TimerPolicy {
    pub const ALL: [TimerPolicy; 3] = [
        TimerPolicy::KeepDeadline,
        TimerPolicy::KeepRemaining,
        TimerPolicy::Restart,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TimerPolicy::KeepDeadline => "keep-deadline",
            TimerPolicy::KeepRemaining => "keep-remaining",
            TimerPolicy::Restart => "restart",
        }
    }

    pub fn parse(text: &str) -> Option<TimerPolicy> {
        TimerPolicy::ALL.into_iter().find(|p| p.as_str() == text)
    }
}

/// What a migration does: which versions, how states map, how timers are re-armed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Migration {
    pub workflow: String,
    pub from_version: String,
    pub to_version: String,
    /// Old state name → new state name. States not in the map keep their name.
    pub mapping: BTreeMap<String, String>,
    pub timers: TimerPolicy,
}

impl Migration {
    /// The state an instance in `state` moves to.
    pub fn target<'a>(&'a self, state: &'a str) -> &'a str {
        self.mapping.get(state).map_or(state, String::as_str)
    }

    /// The mapping as one line for audit notes: `a -> b, c -> d` (or `identity`).
    pub fn describe_mapping(&self) -> String {
        if self.mapping.is_empty() {
            return "identity (every state keeps its name)".into();
        }
        self.mapping
            .iter()
            .map(|(from, to)| format!("{from} -> {to}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Hex SHA-256 of the canonical plan, recorded as the audit record's payload digest.
    pub fn digest(&self) -> String {
        sha256_hex(&canonical_json(self))
    }
}

fn invalid(message: String) -> Refusal {
    Refusal::new(RefusalCode::MigrationInvalid, message)
}

/// Checks the plan against the two versions, independently of any instance: the versions
/// belong to the workflow and differ, every mapped state is a state of the old version and
/// maps to a state of the new one, and a mapping never turns a terminal state into a live
/// one or the reverse.
pub fn check_plan(
    from: &CompiledDefinition,
    to: &CompiledDefinition,
    plan: &Migration,
) -> Result<(), Refusal> {
    for (definition, version) in [(from, &plan.from_version), (to, &plan.to_version)] {
        if definition.name() != plan.workflow || definition.version != *version {
            return Err(Refusal::new(
                RefusalCode::WrongWorkflow,
                format!(
                    "the migration is for {}@{}, but was given {}@{}",
                    plan.workflow,
                    short(version),
                    definition.name(),
                    short(&definition.version)
                ),
            ));
        }
    }
    if from.version == to.version {
        return Err(invalid(format!(
            "the migration's source and target are the same version {} of `{}`: name the version to migrate to",
            short(&from.version),
            plan.workflow
        )));
    }
    for (old, new) in &plan.mapping {
        let Some(old_spec) = from.states.get(old) else {
            return Err(invalid(format!(
                "the mapping names state `{old}`, which version {} of `{}` does not have; its states: {}",
                short(&from.version),
                plan.workflow,
                states_of(from)
            )));
        };
        let Some(new_spec) = to.states.get(new) else {
            return Err(invalid(format!(
                "the mapping sends `{old}` to `{new}`, which version {} of `{}` does not have; its states: {}",
                short(&to.version),
                plan.workflow,
                states_of(to)
            )));
        };
        check_terminal(old, old_spec.terminal, new, new_spec.terminal)?;
    }
    Ok(())
}

fn states_of(definition: &CompiledDefinition) -> String {
    definition
        .states
        .keys()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

fn check_terminal(
    old: &str,
    old_terminal: bool,
    new: &str,
    new_terminal: bool,
) -> Result<(), Refusal> {
    match (old_terminal, new_terminal) {
        (true, false) => Err(invalid(format!(
            "state `{old}` is terminal but `{new}` in the target version is not: a migration cannot reopen a finished instance; map `{old}` to a terminal state"
        ))),
        (false, true) => Err(invalid(format!(
            "state `{old}` is not terminal but `{new}` in the target version is: a migration cannot finish a running instance; map `{old}` to a non-terminal state (and take a transition afterwards)"
        ))),
        _ => Ok(()),
    }
}

/// Migrates one instance. Refused (changing nothing) if the plan does not fit the versions,
/// the instance is not at the plan's source version, its state has no counterpart in the
/// target version, its data does not match the target's data schema, or one of its open tasks
/// names a follow-up transition the target does not declare.
pub fn migrate(
    from: &CompiledDefinition,
    to: &CompiledDefinition,
    instance: &Instance,
    plan: &Migration,
    actor: &Actor,
    at: Timestamp,
) -> Outcome {
    match migrate_checked(from, to, instance, plan, actor, at) {
        Ok(change) => Outcome::Applied(Box::new(change)),
        Err(refusal) => Outcome::Refused(refusal),
    }
}

fn check_instance(
    from: &CompiledDefinition,
    to: &CompiledDefinition,
    instance: &Instance,
    plan: &Migration,
) -> Result<(), Refusal> {
    if instance.workflow != plan.workflow || instance.definition_version != plan.from_version {
        let hint = if instance.workflow == plan.workflow
            && instance.definition_version == plan.to_version
        {
            " (it already runs the target version)"
        } else {
            ""
        };
        return Err(Refusal::new(
            RefusalCode::WrongWorkflow,
            format!(
                "instance `{}` runs {}@{}, not {}@{}{hint}: only instances at the migration's source version are migrated",
                instance.id,
                instance.workflow,
                short(&instance.definition_version),
                plan.workflow,
                short(&plan.from_version)
            ),
        ));
    }
    let target = plan.target(&instance.state);
    let Some(old_spec) = from.states.get(&instance.state) else {
        return Err(invalid(format!(
            "instance `{}` is in state `{}`, which its version does not declare",
            instance.id, instance.state
        )));
    };
    let Some(new_spec) = to.states.get(target) else {
        return Err(invalid(format!(
            "instance `{}` is in state `{}`, which version {} of `{}` does not have: map it to one of {} (e.g. {}=<state>)",
            instance.id,
            instance.state,
            short(&to.version),
            plan.workflow,
            states_of(to),
            instance.state
        )));
    };
    check_terminal(
        &instance.state,
        old_spec.terminal,
        target,
        new_spec.terminal,
    )
    .map_err(|r| invalid(format!("instance `{}`: {}", instance.id, r.message)))?;
    check_data(to, &instance.data).map_err(|r| {
        invalid(format!(
            "instance `{}`: its data does not fit version {}: {}",
            instance.id,
            short(&to.version),
            r.message
        ))
    })?;
    for task in instance.tasks.values() {
        if matches!(task.status, TaskStatus::Completed | TaskStatus::Exhausted) {
            continue;
        }
        for (what, next) in [
            ("on_complete", &task.on_complete),
            ("on_exhausted", &task.on_exhausted),
        ] {
            if let Some(next) = next
                && !to.transitions.contains_key(next)
            {
                return Err(invalid(format!(
                    "instance `{}` has open task `{}` whose {what} transition `{next}` version {} does not declare: finish the task first, or keep the transition in the new version",
                    instance.id,
                    task.id,
                    short(&to.version)
                )));
            }
        }
    }
    Ok(())
}

fn migrate_checked(
    from: &CompiledDefinition,
    to: &CompiledDefinition,
    before: &Instance,
    plan: &Migration,
    actor: &Actor,
    at: Timestamp,
) -> Result<Change, Refusal> {
    check_plan(from, to, plan)?;
    check_instance(from, to, before, plan)?;
    let mut instance = before.clone();
    instance.definition_version = to.version.clone();
    instance.state = plan.target(&before.state).to_string();
    let mut notes = vec![format!(
        "migrated from version {} to {} of `{}`; state mapping: {}; timer policy: {}",
        plan.from_version,
        plan.to_version,
        plan.workflow,
        plan.describe_mapping(),
        plan.timers.as_str()
    )];
    // Expiry and SLA timers are re-armed below; task timers stay.
    instance.timers.retain(|_, t| {
        matches!(
            t.kind,
            TimerKind::TaskLease { .. } | TimerKind::TaskRetry { .. }
        )
    });
    let dropped: Vec<String> = instance
        .slas
        .keys()
        .filter(|name| !to.slas.contains_key(*name))
        .cloned()
        .collect();
    for name in dropped {
        instance.slas.remove(&name);
        notes.push(format!(
            "SLA `{name}` is not declared by the target version: its clock and timers are dropped"
        ));
    }
    let mut work = Work {
        definition: to,
        at,
        instance: &mut instance,
        effects: Vec::new(),
        predicates: Vec::new(),
        notes,
    };
    match plan.timers {
        TimerPolicy::Restart => restart(&mut work),
        policy => keep(&mut work, from, before, policy),
    }
    let Work {
        predicates, notes, ..
    } = work;
    instance.version += 1;
    instance.updated_at = at;
    let timers_armed: Vec<Timer> = instance
        .timers
        .iter()
        .filter(|(id, timer)| before.timers.get(*id) != Some(*timer))
        .map(|(_, timer)| timer.clone())
        .collect();
    let timers_cancelled: Vec<String> = before
        .timers
        .keys()
        .filter(|id| !instance.timers.contains_key(*id))
        .cloned()
        .collect();
    let audit = AuditRecord {
        kind: AuditKind::Migration,
        workflow: instance.workflow.clone(),
        instance_id: instance.id.clone(),
        definition_version: instance.definition_version.clone(),
        transition: None,
        from: Some(before.state.clone()),
        to: Some(instance.state.clone()),
        actor: actor.record(),
        at,
        instance_version: instance.version,
        payload_digest: Some(plan.digest()),
        predicates,
        timer: None,
        task_id: None,
        sla: None,
        note: join_notes(notes),
    };
    Ok(Change {
        instance,
        audit,
        timers_armed,
        timers_cancelled,
        effects: Vec::new(),
    })
}

/// `restart`: every clock that was not stopped starts afresh, then the state is entered anew.
fn restart(work: &mut Work) {
    let at = work.at;
    for (name, clock) in &mut work.instance.slas {
        if clock.status != SlaStatus::Stopped
            && let Some(spec) = work.definition.slas.get(name)
        {
            *clock = SlaClock::start(spec, at);
        }
    }
    work.instance.entered_at = at;
    work.enter_state(None);
}

/// The calendar clock of SLA `name` in `definition`.
fn sla_clock<'a>(definition: &'a CompiledDefinition, name: &str) -> Clock<'a> {
    Clock(
        definition
            .slas
            .get(name)
            .and_then(|s| s.calendar.as_ref())
            .and_then(|c| definition.calendars.get(c)),
    )
}

/// The calendar clock of the expiry of `state` in `definition`.
fn expiry_clock<'a>(definition: &'a CompiledDefinition, state: &str) -> Clock<'a> {
    Clock(
        definition
            .states
            .get(state)
            .and_then(|s| s.expires.as_ref())
            .and_then(|e| e.calendar.as_ref())
            .and_then(|c| definition.calendars.get(c)),
    )
}

/// `keep-deadline` and `keep-remaining`: the instance did not enter a state, so no SLA
/// starts, stops or resets; existing clocks carry on (paused or resumed as the target
/// version says for the mapped state) and the expiry keeps its deadline or its remainder.
fn keep(work: &mut Work, from: &CompiledDefinition, before: &Instance, policy: TimerPolicy) {
    let at = work.at;
    let to = work.definition;
    let state = work.instance.state.clone();
    for (name, clock) in &mut work.instance.slas {
        let Some(spec) = to.slas.get(name) else {
            continue;
        };
        let (old, new) = (sla_clock(from, name), sla_clock(to, name));
        if clock.status == SlaStatus::Running {
            // What was consumed so far was measured by the old version's calendar; the clock
            // keeps whole milliseconds. The part of a millisecond left over is not dropped:
            // the clock is settled that much before `at` (so a kept deadline stays on its
            // microsecond), never further back (time after a close is not charged again).
            let counted_us = old.elapsed_micros(clock.since, at);
            let rest_us = i64::try_from(counted_us % 1000).unwrap_or(0);
            let settled = Timestamp::from_micros(at.as_micros() - rest_us);
            clock.consumed_ms = clock.consumed_ms.saturating_add(counted_us / 1000);
            clock.since = settled;
            let remaining = clock.budget_ms.saturating_sub(clock.consumed_ms);
            if policy == TimerPolicy::KeepDeadline
                && remaining > 0
                && let Some(deadline) = old.advance(settled, remaining)
            {
                clock.budget_ms = clock.consumed_ms + new.elapsed(settled, deadline);
            }
        }
        if clock.status != SlaStatus::Stopped {
            if spec.pause.contains(&state) {
                clock.pause(new, at);
            } else {
                clock.resume(at);
            }
        }
    }
    rearm_expiry(work, from, before, policy);
    work.refresh_sla_timers();
}

fn rearm_expiry(
    work: &mut Work,
    from: &CompiledDefinition,
    before: &Instance,
    policy: TimerPolicy,
) {
    let at = work.at;
    let to = work.definition;
    let state = work.instance.state.clone();
    let Some(expiry) = to.states.get(&state).and_then(|s| s.expires.as_ref()) else {
        return;
    };
    let new = expiry_clock(to, &state);
    let armed = before
        .timers
        .values()
        .find(|t| matches!(t.kind, TimerKind::StateExpiry { .. }));
    let due_at = match (policy, armed) {
        (TimerPolicy::KeepDeadline, Some(timer)) => Some(timer.due_at),
        (_, Some(timer)) => {
            let left = expiry_clock(from, &before.state).elapsed(at, timer.due_at);
            new.advance(at, left)
        }
        // Nothing was armed (the old version had no expiry here): the deadline the instance
        // would have had under the new version, counted from when it entered the state.
        (_, None) => {
            work.notes.push(format!(
                "state `{state}` had no expiry before; it is armed from the instance's entry at {}",
                work.instance.entered_at
            ));
            new.advance(work.instance.entered_at, expiry.after_ms)
        }
    };
    if let Some(due_at) = due_at {
        let id = format!("{}:expiry:{}", work.instance.id, work.instance.version + 1);
        let kind = TimerKind::StateExpiry {
            state: state.clone(),
            transition: expiry.transition.clone(),
        };
        work.instance.timers.insert(
            id.clone(),
            Timer {
                id,
                instance_id: work.instance.id.clone(),
                due_at,
                kind,
            },
        );
    }
}
