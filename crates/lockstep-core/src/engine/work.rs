//! A change in progress on a copy of the instance: entering states, SLA clocks and their
//! timers, tasks and their retries, incidents.

use super::*;

/// A change in progress on a copy of the instance.
pub(crate) struct Work<'a> {
    pub(crate) definition: &'a CompiledDefinition,
    pub(crate) at: Timestamp,
    pub(crate) instance: &'a mut Instance,
    pub(crate) effects: Vec<Effect>,
    pub(crate) predicates: Vec<PredicateTrace>,
    pub(crate) notes: Vec<String>,
}

impl Work<'_> {
    pub(super) fn scope(&self, actor: &Actor, payload: &serde_json::Value) -> Scope {
        Scope::new(
            actor.cel(),
            self.instance.cel(),
            json_value(payload),
            self.at,
        )
    }

    /// Checks every rule of `spec` for this instance and actor, then takes the transition.
    /// Returns the transition's name for the audit record.
    pub(super) fn take(
        &mut self,
        spec: &TransitionSpec,
        taking: &Taking,
    ) -> Result<Option<String>, Refusal> {
        let instance = &*self.instance;
        if let Some(expected) = taking.expected_version
            && expected != instance.version
        {
            return Err(Refusal::new(
                RefusalCode::VersionConflict,
                format!(
                    "expected version {expected} but instance `{}` is at version {}; read it again and retry",
                    instance.id, instance.version
                ),
            ));
        }
        if !spec.from.contains(&instance.state) {
            let from: Vec<&str> = spec.from.iter().map(String::as_str).collect();
            return Err(Refusal::new(
                RefusalCode::NotAllowedFromState,
                format!(
                    "transition `{}` is not allowed from state `{}`; it leaves only from: {}",
                    spec.name,
                    instance.state,
                    from.join(", ")
                ),
            ));
        }
        let is_system = taking.actor.kind == ActorKind::System;
        if spec.system != is_system {
            let message = if spec.system {
                format!(
                    "transition `{}` is taken only by the engine (`system: true`), not by `{}`",
                    spec.name, taking.actor.id
                )
            } else {
                format!(
                    "the engine actor `{}` may not take the non-system transition `{}`",
                    taking.actor.id, spec.name
                )
            };
            return Err(Refusal::new(RefusalCode::SystemOnly, message));
        }
        check_payload(self.definition, taking.payload)?;
        if let Some(schema) = &spec.payload {
            schema.check(taking.payload).map_err(|e| {
                Refusal::new(
                    RefusalCode::PayloadInvalid,
                    format!("payload of `{}` does not match its schema {e}", spec.name),
                )
            })?;
        }
        let scope = self.scope(taking.actor, taking.payload);
        if !spec.system {
            match &spec.allow {
                Some(allow) => predicate(
                    allow,
                    &scope,
                    "allow",
                    RefusalCode::Forbidden,
                    &mut self.predicates,
                )?,
                None => {
                    return Err(Refusal::new(
                        RefusalCode::Forbidden,
                        format!(
                            "transition `{}` has no `allow` predicate, so no human or service actor may take it",
                            spec.name
                        ),
                    ));
                }
            }
        }
        self.gates(spec)?;
        if let Some(guard) = &spec.guard {
            predicate(
                guard,
                &scope,
                "guard",
                RefusalCode::GuardFalse,
                &mut self.predicates,
            )?;
        }
        let new_data = merged_data(&self.instance.data, taking.payload);
        if let Some(data) = &new_data {
            check_data(self.definition, data)?;
        }
        self.apply_transition(spec, new_data, taking.payload);
        Ok(Some(spec.name.clone()))
    }

    pub(super) fn gates(&self, spec: &TransitionSpec) -> Result<(), Refusal> {
        if let Some(gate) = &spec.not_before {
            let open_at = self.gate_time(gate, spec)?;
            if self.at < open_at {
                let mut r = Refusal::new(
                    RefusalCode::GateNotYetOpen,
                    format!(
                        "transition `{}` opens at {open_at} (not_before); try again then",
                        spec.name
                    ),
                );
                r.earliest_at = Some(open_at);
                r.predicate = Some(format!("not_before {}", describe_gate(gate)));
                return Err(r);
            }
        }
        if let Some(gate) = &spec.not_after {
            let close_at = self.gate_time(gate, spec)?;
            if self.at > close_at {
                let mut r = Refusal::new(
                    RefusalCode::GateExpired,
                    format!(
                        "transition `{}` closed at {close_at} (not_after)",
                        spec.name
                    ),
                );
                r.predicate = Some(format!("not_after {}", describe_gate(gate)));
                return Err(r);
            }
        }
        Ok(())
    }

    pub(super) fn gate_time(
        &self,
        gate: &Gate,
        spec: &TransitionSpec,
    ) -> Result<Timestamp, Refusal> {
        match gate {
            Gate::AfterEntering(ms) => Ok(self.instance.entered_at.add_ms(*ms)),
            Gate::Field { field, offset_ms } => {
                let text = self.instance.data.get(field).and_then(|v| v.as_str());
                let base = text.and_then(|t| Timestamp::parse_rfc3339(t).ok()).ok_or_else(|| {
                    Refusal::new(RefusalCode::PredicateError, format!("the gate of `{}` reads data field `{field}`, which does not hold an RFC 3339 timestamp", spec.name))
                })?;
                Ok(base.add_ms(*offset_ms))
            }
        }
    }

    /// Moves the instance: data, state, SLA clocks, expiry timer and effects.
    pub(super) fn apply_transition(
        &mut self,
        spec: &TransitionSpec,
        new_data: Option<serde_json::Value>,
        payload: &serde_json::Value,
    ) {
        if let Some(data) = new_data {
            self.instance.data = data;
        }
        let from = std::mem::replace(&mut self.instance.state, spec.to.clone());
        self.instance.entered_at = self.at;
        self.enter_state(Some(&from));
        for (i, effect) in spec.effects.iter().enumerate() {
            match effect {
                EffectSpec::Emit(event) => self.effects.push(Effect::Emit {
                    event: event.clone(),
                }),
                EffectSpec::Task(task) => {
                    let id = format!("{}/{}/{i}", self.instance.id, self.instance.version + 1);
                    self.prune_tasks();
                    self.instance.tasks.insert(
                        id.clone(),
                        Task {
                            id: id.clone(),
                            queue: task.queue.clone(),
                            task_type: task.task_type.clone(),
                            origin: spec.name.clone(),
                            created: (self.instance.version + 1, i as u32),
                            input: serde_json::json!({ "data": self.instance.data, "payload": payload }),
                            status: TaskStatus::Ready,
                            attempt: 0,
                            first_attempt_at: None,
                            lease: None,
                            worker: None,
                            lease_expires_at: None,
                            retry: task.retry.clone(),
                            timeout_ms: task.timeout_ms,
                            on_complete: task.on_complete.clone(),
                            on_exhausted: task.on_exhausted.clone(),
                            last_error: None,
                            result: None,
                        },
                    );
                    self.effects.push(Effect::TaskReady {
                        task_id: id,
                        queue: task.queue.clone(),
                        task_type: task.task_type.clone(),
                    });
                }
            }
        }
    }

    /// Keeps the task map bounded: drops the oldest finished tasks beyond the limit.
    pub(super) fn prune_tasks(&mut self) {
        let max = self.definition.limits.instance_tasks_max.saturating_sub(1);
        let mut finished: Vec<(u64, u32, String)> = self
            .instance
            .tasks
            .values()
            .filter(|t| matches!(t.status, TaskStatus::Completed | TaskStatus::Exhausted))
            .map(|t| (t.created.0, t.created.1, t.id.clone()))
            .collect();
        finished.sort();
        let excess = self.instance.tasks.len().saturating_sub(max);
        for (_, _, id) in finished.into_iter().take(excess) {
            self.instance.tasks.remove(&id);
        }
    }

    /// Entry into the current state: expiry timer and SLA clocks.
    pub(crate) fn enter_state(&mut self, _from: Option<&str>) {
        let state = self.instance.state.clone();
        self.instance
            .timers
            .retain(|_, t| !matches!(t.kind, TimerKind::StateExpiry { .. }));
        if let Some(expiry) = self
            .definition
            .states
            .get(&state)
            .and_then(|s| s.expires.as_ref())
        {
            let cal = expiry
                .calendar
                .as_ref()
                .and_then(|c| self.definition.calendars.get(c));
            if let Some(due_at) = Clock(cal).advance(self.at, expiry.after_ms) {
                let id = format!("{}:expiry:{}", self.instance.id, self.instance.version + 1);
                let kind = TimerKind::StateExpiry {
                    state: state.clone(),
                    transition: expiry.transition.clone(),
                };
                self.instance.timers.insert(
                    id.clone(),
                    Timer {
                        id,
                        instance_id: self.instance.id.clone(),
                        due_at,
                        kind,
                    },
                );
            }
        }
        for (name, spec) in &self.definition.slas {
            let clock = Clock(
                spec.calendar
                    .as_ref()
                    .and_then(|c| self.definition.calendars.get(c)),
            );
            let current = self.instance.slas.remove(name);
            // Converting the instance for CEL is costly: only an SLA with `when` needs it.
            let scope_instance = spec.when.as_ref().map(|_| self.instance.cel());
            let mut trace = None;
            let next = on_enter(spec, current, &state, self.at, clock, || match &spec.when {
                None => true,
                Some(when) => {
                    let instance = scope_instance.unwrap_or(cel::Value::Null);
                    let scope = Scope::new(cel::Value::Null, instance, cel::Value::Null, self.at);
                    // A `when` that fails to evaluate does not start the SLA; the audit says so.
                    let result = when.eval_bool(&scope);
                    trace = Some((when.source().to_string(), result.clone()));
                    result.unwrap_or(false)
                }
            });
            if let Some((expression, result)) = trace {
                match result {
                    Ok(result) => self.predicates.push(PredicateTrace {
                        role: format!("sla.{name}.when"),
                        expression,
                        result,
                    }),
                    Err(e) => self.notes.push(format!("SLA `{name}` not started: {e}")),
                }
            }
            if let Some(clock) = next {
                self.instance.slas.insert(name.clone(), clock);
            }
        }
        self.refresh_sla_timers();
    }

    /// Recomputes the armed SLA timers from the clocks.
    pub(crate) fn refresh_sla_timers(&mut self) {
        self.instance.timers.retain(|_, t| {
            !matches!(
                t.kind,
                TimerKind::SlaWarning { .. } | TimerKind::SlaBreach { .. }
            )
        });
        for (name, clock) in &self.instance.slas {
            let Some(spec) = self.definition.slas.get(name) else {
                continue;
            };
            let cal = Clock(
                spec.calendar
                    .as_ref()
                    .and_then(|c| self.definition.calendars.get(c)),
            );
            for (milestone, due_at) in clock.upcoming(spec, cal) {
                let (id, kind) = match milestone {
                    Milestone::Warning(p) => (
                        format!("{}:sla:{name}:warn{p}", self.instance.id),
                        TimerKind::SlaWarning {
                            sla: name.clone(),
                            percent: p,
                        },
                    ),
                    Milestone::Breach => (
                        format!("{}:sla:{name}:breach", self.instance.id),
                        TimerKind::SlaBreach { sla: name.clone() },
                    ),
                };
                self.instance.timers.insert(
                    id.clone(),
                    Timer {
                        id,
                        instance_id: self.instance.id.clone(),
                        due_at,
                        kind,
                    },
                );
            }
        }
    }

    /// A transition the engine takes on its own (expiry, breach, exhaustion). If it does not
    /// apply now, the reason is noted and the instance stays where it is.
    pub(super) fn engine_transition(&mut self, name: &str, actor: &Actor) -> Option<String> {
        let Some(spec) = self.definition.transitions.get(name) else {
            self.notes
                .push(format!("transition `{name}` is not declared"));
            return None;
        };
        let payload = serde_json::Value::Null;
        let taking = Taking {
            actor,
            payload: &payload,
            expected_version: None,
        };
        match self.take(spec, &taking) {
            Ok(taken) => taken,
            Err(refusal) => {
                self.notes
                    .push(format!("`{name}` not taken: {}", refusal.message));
                None
            }
        }
    }

    pub(super) fn extend_lease(&mut self, task_id: &str) {
        let at = self.at;
        let Some(task) = self.instance.tasks.get_mut(task_id) else {
            return;
        };
        let expires = at.add_ms(task.timeout_ms);
        task.lease_expires_at = Some(expires);
        let id = format!("{task_id}:lease");
        let kind = TimerKind::TaskLease {
            task_id: task_id.to_string(),
            attempt: task.attempt,
        };
        self.instance.timers.insert(
            id.clone(),
            Timer {
                id,
                instance_id: self.instance.id.clone(),
                due_at: expires,
                kind,
            },
        );
    }

    pub(super) fn complete(
        &mut self,
        task_id: &str,
        result: &serde_json::Value,
        worker: &Actor,
    ) -> Result<Option<String>, Refusal> {
        self.instance.timers.remove(&format!("{task_id}:lease"));
        let task = self.instance.tasks.get_mut(task_id).expect("lease checked");
        task.status = TaskStatus::Completed;
        task.lease = None;
        task.result = Some(result.clone());
        let Some(next) = task.on_complete.clone() else {
            return Ok(None);
        };
        let Some(spec) = self.definition.transitions.get(&next) else {
            return Ok(None);
        };
        let taking = Taking {
            actor: worker,
            payload: result,
            expected_version: None,
        };
        let saved = self.instance.clone();
        match self.take(spec, &taking) {
            Ok(taken) => Ok(taken),
            Err(refusal) => {
                // The work is done either way; a refused follow-up is an incident for operators.
                *self.instance = saved;
                self.open_incident(
                    Some(task_id),
                    format!("on_complete `{next}` refused: {}", refusal.message),
                );
                Ok(None)
            }
        }
    }

    /// A leased task handed back by its worker: ready again at once, the attempt not counted.
    /// The attempt number stays (lease tokens must never repeat: a token of the released
    /// lease stays stale); the task's own retry budget grows by one instead.
    pub(super) fn release(&mut self, task_id: &str) {
        self.instance.timers.remove(&format!("{task_id}:lease"));
        let Some(task) = self.instance.tasks.get_mut(task_id) else {
            return;
        };
        task.status = TaskStatus::Ready;
        task.lease = None;
        task.worker = None;
        task.lease_expires_at = None;
        task.retry.max_attempts = task.retry.max_attempts.saturating_add(1);
        self.notes.push(format!(
            "attempt {} released by its worker; it does not count against the retry policy",
            task.attempt
        ));
    }

    /// A failed attempt: retry after backoff, or exhaust the policy.
    pub(super) fn fail(
        &mut self,
        task_id: &str,
        error: &str,
        retryable: bool,
    ) -> Result<Option<String>, Refusal> {
        self.instance.timers.remove(&format!("{task_id}:lease"));
        let at = self.at;
        let Some(task) = self.instance.tasks.get_mut(task_id) else {
            return Err(Refusal::new(
                RefusalCode::TaskNotFound,
                format!("no task `{task_id}`"),
            ));
        };
        task.lease = None;
        task.last_error = Some(error.to_string());
        let delay = task.retry.delay_ms(task_id, task.attempt);
        let elapsed = task.first_attempt_at.map(|t| at.ms_since(t)).unwrap_or(0);
        if retryable && task.retry.may_retry(task.attempt, elapsed, delay) {
            task.status = TaskStatus::Backoff;
            let id = format!("{task_id}:retry");
            let kind = TimerKind::TaskRetry {
                task_id: task_id.to_string(),
                attempt: task.attempt + 1,
            };
            let timer = Timer {
                id: id.clone(),
                instance_id: self.instance.id.clone(),
                due_at: at.add_ms(delay),
                kind,
            };
            self.notes.push(format!(
                "attempt {} failed ({error}); retry in {delay} ms",
                task.attempt
            ));
            self.instance.timers.insert(id, timer);
            return Ok(None);
        }
        task.status = TaskStatus::Exhausted;
        let attempts = task.attempt;
        let on_exhausted = task.on_exhausted.clone();
        self.notes.push(format!(
            "task `{task_id}` exhausted after {attempts} attempt(s): {error}"
        ));
        match on_exhausted {
            Some(next) => {
                let actor = Actor::system("retry");
                let taken = self.engine_transition(&next, &actor);
                if taken.is_none() {
                    self.open_incident(
                        Some(task_id),
                        format!("on_exhausted `{next}` could not be taken"),
                    );
                }
                Ok(taken)
            }
            None => {
                self.open_incident(
                    Some(task_id),
                    format!("retries exhausted after {attempts} attempt(s): {error}"),
                );
                Ok(None)
            }
        }
    }

    pub(super) fn open_incident(&mut self, task_id: Option<&str>, reason: String) {
        let id = format!(
            "{}:incident:{}",
            self.instance.id,
            self.instance.version + 1
        );
        self.notes.push(format!("incident `{id}` opened"));
        self.instance.incidents.insert(
            id.clone(),
            Incident {
                id,
                task_id: task_id.map(str::to_owned),
                reason,
                opened_at: self.at,
                resolved_at: None,
            },
        );
    }
}

pub(super) fn describe_gate(gate: &Gate) -> String {
    match gate {
        Gate::AfterEntering(ms) => format!(
            "{} after entering the state",
            crate::duration::Duration::from_ms(*ms)
        ),
        Gate::Field { field, offset_ms } => format!(
            "data.{field} + {}",
            crate::duration::Duration::from_ms(*offset_ms)
        ),
    }
}

/// A payload's `data` object is merged into the instance data (RFC 7386 merge patch).
pub(super) fn merged_data(
    data: &serde_json::Value,
    payload: &serde_json::Value,
) -> Option<serde_json::Value> {
    let patch = payload.get("data")?;
    let mut merged = data.clone();
    merge_patch(&mut merged, patch);
    Some(merged)
}

pub(super) fn merge_patch(target: &mut serde_json::Value, patch: &serde_json::Value) {
    let serde_json::Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = serde_json::Value::Object(serde_json::Map::new());
    }
    let map = target.as_object_mut().expect("made an object above");
    for (key, value) in patch {
        if value.is_null() {
            map.remove(key);
        } else {
            merge_patch(
                map.entry(key.clone()).or_insert(serde_json::Value::Null),
                value,
            );
        }
    }
}
