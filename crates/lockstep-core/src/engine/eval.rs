//! A command against an existing instance: which transition, gate, lease or incident it
//! concerns, and whether it may be taken.

use super::*;

/// Names the task a task command acted on in its audit record.
pub(super) fn with_task(mut change: Change, task_id: &str) -> Change {
    change.audit.task_id = Some(task_id.to_string());
    change
}

/// Evaluation of a command against an existing instance.
pub(super) struct Eval<'a> {
    pub(super) definition: &'a CompiledDefinition,
    pub(super) at: Timestamp,
    pub(super) rules: Rules,
    pub(super) before: &'a Instance,
}

/// How a transition is being taken.
pub(super) struct Taking<'a> {
    pub(super) actor: &'a Actor,
    pub(super) payload: &'a serde_json::Value,
    pub(super) expected_version: Option<u64>,
}

impl Eval<'_> {
    pub(super) fn run(&self, command: &Command) -> Result<Change, Refusal> {
        match command {
            Command::Create { .. } => unreachable!("handled by evaluate"),
            Command::Transition {
                transition,
                payload,
                actor,
                expected_version,
            } => {
                let spec = self.transition_spec(transition)?;
                let taking = Taking {
                    actor,
                    payload,
                    expected_version: *expected_version,
                };
                self.finish(AuditKind::Transition, actor, Some(payload), |w| {
                    w.take(spec, &taking)
                })
            }
            Command::Event {
                event,
                payload,
                actor,
            } => self.event(event, payload, actor),
            Command::FireTimer { timer_id } => self.fire(timer_id),
            Command::LeaseTask {
                task_id,
                worker,
                term,
            } => self.lease(task_id, worker, *term),
            Command::HeartbeatTask {
                task_id,
                token,
                worker,
            } => {
                self.leased_task(task_id, token, worker)?;
                self.finish(AuditKind::TaskHeartbeat, worker, None, |w| {
                    w.extend_lease(task_id);
                    Ok(None)
                })
                .map(|c| with_task(c, task_id))
            }
            Command::CompleteTask {
                task_id,
                token,
                result,
                worker,
            } => {
                self.leased_task(task_id, token, worker)?;
                check_payload(self.definition, result)?;
                self.finish(AuditKind::TaskCompleted, worker, Some(result), |w| {
                    w.complete(task_id, result, worker)
                })
                .map(|c| with_task(c, task_id))
            }
            Command::FailTask {
                task_id,
                token,
                error,
                retryable,
                worker,
            } => {
                self.leased_task(task_id, token, worker)?;
                self.finish(AuditKind::TaskFailed, worker, None, |w| {
                    w.fail(task_id, error, *retryable)
                })
                .map(|c| with_task(c, task_id))
            }
            Command::ResolveIncident {
                incident_id,
                retry_task,
                actor,
            } => self.resolve(incident_id, *retry_task, actor),
            Command::Redact { fields, actor } => {
                crate::redact::check_fields(fields)
                    .map_err(|m| Refusal::new(RefusalCode::PayloadInvalid, m))?;
                let mut data = self.before.data.clone();
                let mut found = crate::redact::redact(&mut data, fields);
                // A task's input holds a copy of the data (and of the payload's data patch)
                // from when it was created; its result may patch data too.
                let mut tasks = self.before.tasks.clone();
                for task in tasks.values_mut() {
                    if let Some(copy) = task.input.get_mut("data") {
                        found.extend(crate::redact::redact(copy, fields));
                    }
                    if let Some(copy) = task
                        .input
                        .get_mut("payload")
                        .and_then(|p| p.get_mut("data"))
                    {
                        found.extend(crate::redact::redact(copy, fields));
                    }
                    if let Some(copy) = task.result.as_mut().and_then(|r| r.get_mut("data")) {
                        found.extend(crate::redact::redact(copy, fields));
                    }
                }
                if let Some(missing) = fields.iter().find(|f| !found.contains(f)) {
                    let names: Vec<&str> = self
                        .before
                        .data
                        .as_object()
                        .map(|o| o.keys().map(String::as_str).collect())
                        .unwrap_or_default();
                    return Err(Refusal::new(
                        RefusalCode::PayloadInvalid,
                        format!(
                            "instance `{}` has no data field `{missing}` to redact, in its data or its tasks (its top-level fields: {}); nothing was redacted",
                            self.before.id,
                            if names.is_empty() {
                                "none".to_string()
                            } else {
                                names.join(", ")
                            }
                        ),
                    ));
                }
                let request = serde_json::json!({ "fields": fields });
                self.finish(AuditKind::Redacted, actor, Some(&request), |w| {
                    w.instance.data = data;
                    w.instance.tasks = tasks;
                    w.notes.push(format!("redacted: {}", fields.join(", ")));
                    Ok(None)
                })
            }
            Command::ReleaseTask {
                task_id,
                token,
                worker,
            } => {
                self.leased_task(task_id, token, worker)?;
                self.finish(AuditKind::TaskReleased, worker, None, |w| {
                    w.release(task_id);
                    Ok(None)
                })
                .map(|c| with_task(c, task_id))
            }
        }
    }

    pub(super) fn transition_spec(&self, name: &str) -> Result<&TransitionSpec, Refusal> {
        self.definition.transitions.get(name).ok_or_else(|| {
            Refusal::new(
                RefusalCode::UnknownTransition,
                format!(
                    "workflow `{}` has no transition `{name}`; from `{}` it allows: {}",
                    self.definition.name(),
                    self.before.state,
                    self.allowed_here()
                ),
            )
        })
    }

    pub(super) fn allowed_here(&self) -> String {
        let names: Vec<&str> = self
            .definition
            .transitions_from(&self.before.state)
            .map(|t| t.name.as_str())
            .collect();
        if names.is_empty() {
            "nothing".into()
        } else {
            names.join(", ")
        }
    }

    /// Runs `body` on a copy of the instance and, if it succeeds, packages the change with its
    /// audit record and the timer differences.
    pub(super) fn finish(
        &self,
        kind: AuditKind,
        actor: &Actor,
        payload: Option<&serde_json::Value>,
        body: impl FnOnce(&mut Work) -> Result<Option<String>, Refusal>,
    ) -> Result<Change, Refusal> {
        let mut instance = self.before.clone();
        let mut work = Work {
            definition: self.definition,
            at: self.at,
            instance: &mut instance,
            effects: Vec::new(),
            predicates: Vec::new(),
            notes: Vec::new(),
        };
        let transition = body(&mut work)?;
        let Work {
            effects,
            predicates,
            notes,
            ..
        } = work;
        self.package(
            instance, kind, transition, actor, payload, predicates, notes, effects, None,
        )
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn package(
        &self,
        mut instance: Instance,
        kind: AuditKind,
        transition: Option<String>,
        actor: &Actor,
        payload: Option<&serde_json::Value>,
        predicates: Vec<PredicateTrace>,
        notes: Vec<String>,
        effects: Vec<Effect>,
        timer: Option<TimerFiring>,
    ) -> Result<Change, Refusal> {
        instance.version += 1;
        instance.updated_at = self.at;
        let mut timers_armed = Vec::new();
        let mut timers_cancelled = Vec::new();
        for (id, timer) in &instance.timers {
            if self.before.timers.get(id) != Some(timer) {
                timers_armed.push(timer.clone());
            }
        }
        for id in self.before.timers.keys() {
            if !instance.timers.contains_key(id) {
                timers_cancelled.push(id.clone());
            }
        }
        let moved = transition.is_some();
        let audit = AuditRecord {
            kind,
            workflow: instance.workflow.clone(),
            instance_id: instance.id.clone(),
            definition_version: instance.definition_version.clone(),
            transition,
            from: moved.then(|| self.before.state.clone()),
            to: moved.then(|| instance.state.clone()),
            actor: actor.record(),
            at: self.at,
            instance_version: instance.version,
            payload_digest: payload.map(|p| sha256_hex(&canonical_json(p))),
            predicates,
            timer,
            task_id: None,
            sla: None,
            note: join_notes(notes),
        };
        Ok(Change {
            instance,
            audit,
            timers_armed,
            timers_cancelled,
            effects,
        })
    }

    pub(super) fn event(
        &self,
        event: &str,
        payload: &serde_json::Value,
        actor: &Actor,
    ) -> Result<Change, Refusal> {
        let matched = self
            .definition
            .transitions_from(&self.before.state)
            .find(|t| t.on.as_deref() == Some(event));
        match matched {
            Some(spec) => {
                let taking = Taking { actor, payload, expected_version: None };
                self.finish(AuditKind::Transition, actor, Some(payload), |w| w.take(spec, &taking))
            }
            None if self.definition.ignore_events.contains(event) => self.finish(AuditKind::EventIgnored, actor, Some(payload), |w| {
                w.notes.push(format!("event `{event}` matched no transition from `{}` and is ignored by definition", w.instance.state));
                Ok(None)
            }),
            None => {
                let accepted: Vec<&str> = self.definition.transitions_from(&self.before.state).filter_map(|t| t.on.as_deref()).collect();
                let accepted = if accepted.is_empty() { "none".to_string() } else { accepted.join(", ") };
                Err(Refusal::new(RefusalCode::EventUnmatched, format!("event `{event}` matches no transition from state `{}`; events accepted there: {accepted}", self.before.state)))
            }
        }
    }

    pub(super) fn fire(&self, timer_id: &str) -> Result<Change, Refusal> {
        let Some(timer) = self.before.timers.get(timer_id) else {
            return Err(Refusal::new(
                RefusalCode::TimerNotArmed,
                format!(
                    "timer `{timer_id}` is not armed on instance `{}` (already fired or cancelled)",
                    self.before.id
                ),
            ));
        };
        // Ids are reused when a timer is armed again (an SLA reset, a task's next retry): a
        // fire proposed for an earlier arming must not fire the new one early.
        if timer.due_at > self.at {
            return Err(Refusal::new(
                RefusalCode::TimerNotArmed,
                format!(
                    "timer `{timer_id}` on instance `{}` is armed again, due at {}, after this fire at {}: the fire was for an earlier arming, which already fired or was cancelled",
                    self.before.id, timer.due_at, self.at
                ),
            ));
        }
        let firing = TimerFiring {
            timer_id: timer.id.clone(),
            due_at: timer.due_at,
            fired_at: self.at,
            lateness_ms: self.at.ms_since(timer.due_at),
        };
        let mut instance = self.before.clone();
        instance.timers.remove(timer_id);
        let mut work = Work {
            definition: self.definition,
            at: self.at,
            instance: &mut instance,
            effects: Vec::new(),
            predicates: Vec::new(),
            notes: Vec::new(),
        };
        let mut fires_again = false;
        let (kind, actor, transition, sla, task_id) = match &timer.kind {
            TimerKind::StateExpiry { transition, .. } => {
                let actor = Actor::system("timer");
                let taken = work.engine_transition(transition, &actor);
                if taken.is_some()
                    && self.rules.mutation == Some(crate::mutation::Mutation::TimerFiresTwice)
                {
                    // The bug: the fired timer stays armed, and fires once more (then, the
                    // instance being out of its state, nothing is taken and it is removed).
                    work.instance.timers.insert(timer.id.clone(), timer.clone());
                    fires_again = true;
                }
                (AuditKind::TimerFired, actor, taken, None, None)
            }
            TimerKind::SlaWarning { sla, percent } => {
                if let Some(clock) = work.instance.slas.get_mut(sla) {
                    clock.warned.push(*percent);
                }
                work.effects.push(Effect::Emit {
                    event: "sla.warning".into(),
                });
                work.notes
                    .push(format!("SLA `{sla}` reached {percent}% of its budget"));
                work.refresh_sla_timers();
                (
                    AuditKind::SlaWarning,
                    Actor::system("sla"),
                    None,
                    Some(sla.clone()),
                    None,
                )
            }
            TimerKind::SlaBreach { sla } => {
                if let Some(clock) = work.instance.slas.get_mut(sla) {
                    clock.breached_at = Some(self.at);
                }
                work.effects.push(Effect::Emit {
                    event: "sla.breach".into(),
                });
                let actor = Actor::system("sla");
                let action = self
                    .definition
                    .slas
                    .get(sla)
                    .and_then(|s| s.on_breach.clone());
                let taken = action.and_then(|t| work.engine_transition(&t, &actor));
                work.refresh_sla_timers();
                (AuditKind::SlaBreach, actor, taken, Some(sla.clone()), None)
            }
            TimerKind::TaskLease { task_id, attempt } => {
                let taken = work.fail(
                    task_id,
                    &format!("lease of attempt {attempt} expired"),
                    true,
                )?;
                (
                    AuditKind::TaskFailed,
                    Actor::system("lease"),
                    taken,
                    None,
                    Some(task_id.clone()),
                )
            }
            TimerKind::TaskRetry { task_id, .. } => {
                if let Some(task) = work.instance.tasks.get_mut(task_id) {
                    task.status = TaskStatus::Ready;
                    work.effects.push(Effect::TaskReady {
                        task_id: task.id.clone(),
                        queue: task.queue.clone(),
                        task_type: task.task_type.clone(),
                    });
                }
                (
                    AuditKind::TaskRetryDue,
                    Actor::system("retry"),
                    None,
                    None,
                    Some(task_id.clone()),
                )
            }
        };
        let Work {
            effects,
            predicates,
            notes,
            ..
        } = work;
        let mut change = self.package(
            instance,
            kind,
            transition,
            &actor,
            None,
            predicates,
            notes,
            effects,
            Some(firing),
        )?;
        change.audit.sla = sla;
        change.audit.task_id = task_id;
        if !fires_again && !change.timers_cancelled.iter().any(|id| id == timer_id) {
            change.timers_cancelled.push(timer_id.to_string());
        }
        Ok(change)
    }

    pub(super) fn task(&self, task_id: &str) -> Result<&Task, Refusal> {
        self.before.tasks.get(task_id).ok_or_else(|| {
            Refusal::new(
                RefusalCode::TaskNotFound,
                format!("instance `{}` has no task `{task_id}`", self.before.id),
            )
        })
    }

    pub(super) fn lease(
        &self,
        task_id: &str,
        worker: &Actor,
        term: u64,
    ) -> Result<Change, Refusal> {
        let task = self.task(task_id)?;
        if task.status != TaskStatus::Ready {
            return Err(Refusal::new(
                RefusalCode::TaskNotReady,
                format!("task `{task_id}` is {:?}, not ready to lease", task.status),
            ));
        }
        let mut change = self.finish(AuditKind::TaskLeased, worker, None, |w| {
            let at = w.at;
            let task = w.instance.tasks.get_mut(task_id).expect("checked above");
            task.status = TaskStatus::Leased;
            task.attempt += 1;
            task.first_attempt_at.get_or_insert(at);
            task.lease = Some(LeaseToken {
                term,
                attempt: task.attempt,
            });
            task.worker = Some(worker.id.clone());
            w.extend_lease(task_id);
            Ok(None)
        })?;
        change.audit.task_id = Some(task_id.to_string());
        Ok(change)
    }

    pub(super) fn leased_task(
        &self,
        task_id: &str,
        token: &LeaseToken,
        worker: &Actor,
    ) -> Result<(), Refusal> {
        let task = self.task(task_id)?;
        let holds = if self.rules.mutation == Some(crate::mutation::Mutation::LeaseTermOnly) {
            task.lease.as_ref().map(|l| l.term) == Some(token.term)
        } else {
            task.lease.as_ref() == Some(token)
        };
        if task.status != TaskStatus::Leased || !holds {
            let current = match (&task.status, &task.lease) {
                (TaskStatus::Leased, Some(l)) => {
                    format!("the current lease is term {} attempt {}", l.term, l.attempt)
                }
                (status, _) => format!("the task is {status:?}"),
            };
            return Err(Refusal::new(
                RefusalCode::StaleLease,
                format!(
                    "lease token term {} attempt {} of worker `{}` is stale for task `{task_id}`: {current}; poll for a new task",
                    token.term, token.attempt, worker.id
                ),
            ));
        }
        if task.worker.as_deref() != Some(worker.id.as_str()) {
            return Err(Refusal::new(
                RefusalCode::Forbidden,
                format!(
                    "task `{task_id}` is leased to worker `{}`, not `{}`: only the lease holder may heartbeat, complete, fail or release it",
                    task.worker.as_deref().unwrap_or("?"),
                    worker.id
                ),
            ));
        }
        if self.rules.lease_expiry_guard
            && let Some(expired) = task.lease_expires_at.filter(|e| *e <= self.at)
        {
            return Err(Refusal::new(
                RefusalCode::StaleLease,
                format!(
                    "the lease of worker `{}` on task `{task_id}` (term {} attempt {}) expired at {expired}, {} before this command at {}; the task goes back to its queue: poll for a new task, and heartbeat more often than the task's timeout ({})",
                    worker.id,
                    token.term,
                    token.attempt,
                    crate::time::human_ms(self.at.ms_since(expired)),
                    self.at,
                    crate::time::human_ms(task.timeout_ms)
                ),
            ));
        }
        Ok(())
    }

    pub(super) fn resolve(
        &self,
        incident_id: &str,
        retry_task: bool,
        actor: &Actor,
    ) -> Result<Change, Refusal> {
        let incident = self
            .before
            .incidents
            .get(incident_id)
            .filter(|i| i.resolved_at.is_none());
        let Some(incident) = incident else {
            return Err(Refusal::new(
                RefusalCode::IncidentNotFound,
                format!(
                    "instance `{}` has no open incident `{incident_id}`",
                    self.before.id
                ),
            ));
        };
        if !actor.roles.iter().any(|r| r == "operator") {
            return Err(Refusal::new(
                RefusalCode::Forbidden,
                format!(
                    "actor `{}` needs the `operator` role to resolve incidents",
                    actor.id
                ),
            ));
        }
        let task_id = incident.task_id.clone();
        self.finish(AuditKind::IncidentResolved, actor, None, |w| {
            if let Some(i) = w.instance.incidents.get_mut(incident_id) {
                i.resolved_at = Some(w.at);
            }
            if let (true, Some(task_id)) = (retry_task, &task_id)
                && let Some(task) = w.instance.tasks.get_mut(task_id)
            {
                task.status = TaskStatus::Ready;
                task.attempt = 0;
                task.first_attempt_at = None;
                task.lease = None;
                w.effects.push(Effect::TaskReady {
                    task_id: task.id.clone(),
                    queue: task.queue.clone(),
                    task_type: task.task_type.clone(),
                });
                w.notes
                    .push(format!("task `{task_id}` retried by operator"));
            }
            Ok(None)
        })
    }
}
