//! Schedules (`Body::Schedules`, log format 10): created, paused, resumed and deleted by
//! operators; fired by the leader. Every check here is a refusal, never an error: a bad
//! schedule must not stop the node. Each change of a schedule's life, and each tick whose
//! create the engine refused, writes a `schedule_changed` record to the global audit chain; a
//! tick that creates an instance is audited by that instance's `created` record (actor
//! `system:schedule`, with the schedule and the tick in its note); a skipped tick only moves
//! the schedule's counters and its `last`.

use lockstep_core::schedule::{
    Compiled, Plan, SCHEDULE_ACTOR, SCHEDULES_MAX, Schedule, ScheduleSpec, Tick, TickOutcome,
    changed, created_note, render,
};
use lockstep_core::subscription::{Paused, bounded_error};

use super::*;
use crate::types::ScheduleOp;

impl<S: Store> Applier<'_, S> {
    pub(super) fn schedules(
        &mut self,
        log_id: LogId<NodeId>,
        op: &ScheduleOp,
        at: Timestamp,
    ) -> StoreResult<Response> {
        match op {
            ScheduleOp::Create { spec, actor } => self.create_schedule(log_id, spec, actor, at),
            ScheduleOp::Pause {
                name,
                reason,
                actor,
            } => self.change_schedule(log_id, "pause", actor, at, name, |s, _| {
                if s.paused.is_some() {
                    return false;
                }
                s.paused = Some(Paused {
                    at,
                    by: actor.id.clone(),
                    reason: bounded_error(reason),
                });
                true
            }),
            ScheduleOp::Resume { name, actor } => {
                self.change_schedule(log_id, "resume", actor, at, name, |s, open| {
                    if s.paused.take().is_none() {
                        return false;
                    }
                    // Ticks that fell while it was paused are not caught up: the next is the
                    // first after the resume.
                    if let Ok(compiled) = Compiled::new(&s.spec.cron, &s.spec.time_zone) {
                        let last = s.last.as_ref().map(|l| l.tick.local.clone());
                        s.next = compiled.next_after(at, last.as_deref(), open);
                    }
                    true
                })
            }
            ScheduleOp::Delete { name, actor } => {
                let Some(s) = self.schedule(name)? else {
                    return Ok(unknown(name));
                };
                self.delete(Family::Schedules, key::schedule(name));
                self.append_audit(log_id, changed("delete", &s, actor, at, None), None)?;
                Ok(Response::Schedule(Box::new(s)))
            }
            ScheduleOp::Fire { name, tick } => self.fire(log_id, name, *tick, at),
        }
    }

    fn schedule(&self, name: &str) -> StoreResult<Option<Schedule>> {
        self.get(Family::Schedules, &key::schedule(name))
    }

    /// Whether the local day of an instant is open in the schedule's calendar (every day is,
    /// without one; none is if the calendar has gone from the workflow's latest definition,
    /// which the create checked, so such a schedule stops rather than fire on closed days).
    fn opening(&mut self, spec: &ScheduleSpec) -> StoreResult<Box<dyn Fn(Timestamp) -> bool>> {
        let Some(name) = &spec.calendar else {
            return Ok(Box::new(|_| true));
        };
        let calendar = self
            .latest_definition(&spec.workflow)?
            .and_then(|d| d.calendars.get(name).cloned());
        Ok(match calendar {
            Some(c) => Box::new(move |t| c.is_open_day(t)),
            None => Box::new(|_| false),
        })
    }

    fn create_schedule(
        &mut self,
        log_id: LogId<NodeId>,
        spec: &ScheduleSpec,
        actor: &Actor,
        at: Timestamp,
    ) -> StoreResult<Response> {
        let compiled = match spec.check() {
            Ok(c) => c,
            Err(message) => return Ok(refused(RefusalCode::PayloadInvalid, message)),
        };
        let Some(definition) = self.latest_definition(&spec.workflow)? else {
            return Ok(refused(
                RefusalCode::UnknownWorkflow,
                format!(
                    "no definition of workflow `{}` has been applied; apply one with `lockstep apply` before scheduling it",
                    spec.workflow
                ),
            ));
        };
        if let Some(calendar) = &spec.calendar
            && !definition.calendars.contains_key(calendar)
        {
            let known: Vec<&str> = definition.calendars.keys().map(String::as_str).collect();
            return Ok(refused(
                RefusalCode::PayloadInvalid,
                format!(
                    "workflow `{}` declares no calendar `{calendar}` (its calendars: {}); name one of them, or add it to the definition",
                    spec.workflow,
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        }
        if self.schedule(&spec.name)?.is_some() {
            return Ok(refused(
                RefusalCode::AlreadyExists,
                format!(
                    "a schedule named `{}` exists; delete it first or pick another name",
                    spec.name
                ),
            ));
        }
        let count = self
            .range(Family::Schedules, &[], None, SCHEDULES_MAX)?
            .len();
        if count >= SCHEDULES_MAX {
            return Ok(refused(
                RefusalCode::LimitExceeded,
                format!(
                    "the cluster holds SCHEDULES_MAX ({SCHEDULES_MAX}) schedules; delete one first"
                ),
            ));
        }
        let open = self.opening(spec)?;
        let schedule = Schedule {
            spec: spec.clone(),
            next: compiled.next_after(at, None, &*open),
            last: None,
            last_instance: None,
            paused: None,
            fired: 0,
            skipped: 0,
            refused: 0,
            created_by: actor.id.clone(),
            created_at: at,
        };
        self.put(Family::Schedules, key::schedule(&spec.name), &schedule);
        self.append_audit(log_id, changed("create", &schedule, actor, at, None), None)?;
        Ok(Response::Schedule(Box::new(schedule)))
    }

    /// Applies `change` to schedule `name`; when it says it changed the schedule's life, the
    /// change is audited as `what` by `actor`.
    fn change_schedule(
        &mut self,
        log_id: LogId<NodeId>,
        what: &str,
        actor: &Actor,
        at: Timestamp,
        name: &str,
        change: impl FnOnce(&mut Schedule, &dyn Fn(Timestamp) -> bool) -> bool,
    ) -> StoreResult<Response> {
        let Some(mut s) = self.schedule(name)? else {
            return Ok(unknown(name));
        };
        let open = self.opening(&s.spec)?;
        if change(&mut s, &*open) {
            self.append_audit(log_id, changed(what, &s, actor, at, None), None)?;
        }
        self.put(Family::Schedules, key::schedule(name), &s);
        Ok(Response::Schedule(Box::new(s)))
    }

    /// Acts on the tick at `tick` of schedule `name` if the schedule is active and at that
    /// tick; otherwise (a repeat after a leader change, paused, deleted) changes nothing.
    fn fire(
        &mut self,
        log_id: LogId<NodeId>,
        name: &str,
        tick: Timestamp,
        at: Timestamp,
    ) -> StoreResult<Response> {
        let Some(mut s) = self.schedule(name)? else {
            return Ok(Response::Empty);
        };
        let Some(due) = s
            .next
            .clone()
            .filter(|t| t.at == tick && s.paused.is_none())
        else {
            return Ok(Response::Empty);
        };
        if due.at > at {
            return Ok(Response::Empty); // not due yet at this entry's cluster time
        }
        let compiled = match Compiled::new(&s.spec.cron, &s.spec.time_zone) {
            Ok(c) => c,
            // A build whose cron or zone rules no longer read this schedule: it is paused
            // (its next tick stays) with the reason, audited, for an operator to replace it.
            Err(e) => {
                s.paused = Some(Paused {
                    at,
                    by: format!("system:{SCHEDULE_ACTOR}"),
                    reason: bounded_error(&format!("this build cannot read the schedule: {e}")),
                });
                let record = changed("pause", &s, &Actor::system(SCHEDULE_ACTOR), at, None);
                self.append_audit(log_id, record, None)?;
                self.put(Family::Schedules, key::schedule(name), &s);
                return Ok(Response::Schedule(Box::new(s)));
            }
        };
        let open = self.opening(&s.spec)?;
        match s.plan(&compiled, &due, at, &*open) {
            Plan::CatchUp { next, missed } => {
                let reason = format!(
                    "{}{missed} missed tick{} skipped by catch-up `{}`",
                    if missed >= lockstep_core::schedule::MISSED_COUNT_MAX {
                        "at least "
                    } else {
                        ""
                    },
                    if missed == 1 { "" } else { "s" },
                    s.spec.catch_up.name()
                );
                s.acted(due, at, TickOutcome::Skipped { reason }, next);
                s.skipped += missed.saturating_sub(1);
            }
            Plan::Fire { next } => {
                let outcome = self.fire_tick(log_id, &s, &compiled, &due, at)?;
                if let TickOutcome::Refused { code, message } = &outcome {
                    let detail = format!("tick {} refused: {code}: {message}", due.at);
                    let record = changed(
                        "refused",
                        &s,
                        &Actor::system(SCHEDULE_ACTOR),
                        at,
                        Some(&detail),
                    );
                    self.append_audit(log_id, record, None)?;
                }
                s.acted(due, at, outcome, next);
            }
        }
        self.put(Family::Schedules, key::schedule(name), &s);
        Ok(Response::Schedule(Box::new(s)))
    }

    /// Creates the instance of `tick`, unless the overlap policy skips it.
    fn fire_tick(
        &mut self,
        log_id: LogId<NodeId>,
        s: &Schedule,
        compiled: &Compiled,
        tick: &Tick,
        at: Timestamp,
    ) -> StoreResult<TickOutcome> {
        if s.spec.overlap == lockstep_core::schedule::Overlap::Skip
            && let Some(id) = &s.last_instance
            && let Some(state) = self.open_state(id)?
        {
            return Ok(TickOutcome::Skipped {
                reason: format!(
                    "the previous tick's instance {id} is still open (state `{state}`); overlap is `skip`"
                ),
            });
        }
        let (data, key) = match render(&s.spec, compiled, tick) {
            Ok(rendered) => rendered,
            Err(message) => {
                return Ok(TickOutcome::Refused {
                    code: RefusalCode::PayloadInvalid.as_str().into(),
                    message: bounded_error(&message),
                });
            }
        };
        let note = created_note(&s.spec.name, tick);
        let actor = Actor::system(SCHEDULE_ACTOR);
        let response = self.create(
            log_id,
            &s.spec.workflow,
            key.as_deref(),
            &data,
            &actor,
            at,
            Some(note),
        )?;
        Ok(match response {
            Response::Applied { instance_id, .. } => TickOutcome::Created { instance_id },
            Response::Refused(r) => TickOutcome::Refused {
                code: r.code.as_str().into(),
                message: bounded_error(&r.message),
            },
            other => TickOutcome::Refused {
                code: RefusalCode::PayloadInvalid.as_str().into(),
                message: format!("unexpected outcome of a create: {other:?}"),
            },
        })
    }

    /// The state of instance `id` while it is not in a terminal state of its definition.
    fn open_state(&mut self, id: &str) -> StoreResult<Option<String>> {
        let Some(instance) = self.get::<Instance>(Family::Instances, id.as_bytes())? else {
            return Ok(None);
        };
        let terminal = self
            .definition(&instance.workflow, &instance.definition_version)?
            .and_then(|d| d.states.get(&instance.state).map(|s| s.terminal))
            .unwrap_or(true);
        Ok((!terminal).then_some(instance.state))
    }
}

fn unknown(name: &str) -> Response {
    refused(
        RefusalCode::UnknownSchedule,
        format!("no schedule is named `{name}`; `lockstep schedules list` shows them"),
    )
}
