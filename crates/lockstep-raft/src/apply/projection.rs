//! Writing what the engine decided: an instance command's outcome becomes the instance, its
//! state index, timers, task indexes, outbox items and the audit record, after the change's
//! invariants are checked.

use super::*;

impl<S: Store> Applier<'_, S> {
    pub(super) fn on_instance(
        &mut self,
        log_id: LogId<NodeId>,
        target: &Target,
        command: Command,
        at: Timestamp,
    ) -> StoreResult<Response> {
        // Logs already written decided a worker's lease cap before looking up the task's
        // instance, and refusals are replicated (in dedup entries): the order must not change.
        let facts = self.facts(&command)?;
        if let Err(refusal) = admit(&command, &facts) {
            return Ok(Response::Refused(refusal));
        }
        let instance_id = match target {
            Target::Id(id) => id.clone(),
            Target::Key { workflow, key } => {
                match self.get::<String>(Family::IndexKey, &key::business_key(workflow, key))? {
                    Some(id) => id,
                    None => {
                        return Ok(refused(
                            RefusalCode::UnknownInstance,
                            format!("workflow `{workflow}` has no instance with key `{key}`"),
                        ));
                    }
                }
            }
        };
        let Some(instance) = self.get::<Instance>(Family::Instances, instance_id.as_bytes())?
        else {
            return Ok(refused(
                RefusalCode::UnknownInstance,
                format!("no instance `{instance_id}`"),
            ));
        };
        let Some(definition) = self.definition(&instance.workflow, &instance.definition_version)?
        else {
            // An instance always pins a stored definition; a missing one is corrupt state.
            return Err(lockstep_store::Error::Corrupt {
                family: Family::Definitions,
                key: keys::show(&key::definition(
                    &instance.workflow,
                    &instance.definition_version,
                )),
                reason: format!("instance {instance_id} pins a definition that is not stored"),
            });
        };
        let format = self.format()?;
        let rules = format.rules();
        let outcome = evaluate_with(&definition, Some(&instance), &command, at, rules, &facts);
        let timer_due = match &command {
            Command::FireTimer { timer_id } => instance.timers.get(timer_id).map(|t| t.due_at),
            _ => None,
        };
        let step = JournalStep::Command {
            command,
            facts,
            lease_expiry_guard: rules.lease_expiry_guard,
            timer_due,
        };
        self.commit(log_id, &definition, Some(&instance), outcome, step)
    }

    /// Appends an audit record to the global chain and, for instance records, to the
    /// instance's chain. Returns its global sequence.
    pub(super) fn append_audit(
        &mut self,
        log_id: LogId<NodeId>,
        record: AuditRecord,
        instance_seq: Option<u64>,
    ) -> StoreResult<u64> {
        let head: AuditHead = self
            .get(Family::Meta, meta::AUDIT_HEAD)?
            .unwrap_or_default();
        let seq = head.seq + 1;
        let instance_prev = match instance_seq {
            Some(n) if n > 1 => self
                .get::<(u64, [u8; 32])>(
                    Family::AuditByInstance,
                    &key::audit_by_instance(&record.instance_id, n - 1),
                )?
                .map(|(_, h)| h)
                // Record n of an instance's chain links to its record n - 1, always written
                // with version n - 1: a chain with a gap is a bug, not a fresh start.
                .ok_or_else(|| {
                    broken_invariant(
                        log_id,
                        format!(
                            "instance {}'s audit chain has no record {} to link record {n} to",
                            record.instance_id,
                            n - 1
                        ),
                    )
                })?,
            _ => [0; 32],
        };
        let instance_id = record.instance_id.clone();
        let chained = ChainedRecord::link(
            record,
            seq,
            instance_seq.unwrap_or(0),
            log_id.leader_id.term,
            log_id.index,
            head.hash,
            instance_prev,
        );
        let hash = lockstep_core::audit::decode_hash(&chained.hash).expect("we just encoded it");
        if let Some(n) = instance_seq {
            let instance_hash = lockstep_core::audit::decode_hash(&chained.instance_hash)
                .expect("we just encoded it");
            self.put(
                Family::AuditByInstance,
                key::audit_by_instance(&instance_id, n),
                &(seq, instance_hash),
            );
        }
        let skipped = seq.is_multiple_of(50)
            && crate::mutation::is(crate::mutation::Mutation::AuditPutSkipped);
        if !skipped {
            self.put(Family::Audit, keys::u64_key(seq), &chained);
        }
        self.put(
            Family::Meta,
            meta::AUDIT_HEAD.to_vec(),
            &AuditHead { seq, hash },
        );
        self.keep_audit_trace(seq)?;
        Ok(seq)
    }

    /// From log format 9, the trace of the request that wrote record `seq`, if traced, for a
    /// webhook delivery to join; traces more than [`AUDIT_TRACES_KEPT`] records back go.
    fn keep_audit_trace(&mut self, seq: u64) -> StoreResult<()> {
        let Some(traceparent) = self.trace.clone() else {
            return Ok(());
        };
        if !self.format()?.at_least(crate::format::LOG_FORMAT_TRACES) {
            return Ok(());
        }
        self.put(Family::AuditTraces, keys::u64_key(seq), &traceparent);
        if let Some(oldest_kept) = seq.checked_sub(AUDIT_TRACES_KEPT) {
            let end = keys::u64_key(oldest_kept);
            for (k, _) in self.range(
                Family::AuditTraces,
                &[],
                Some(&end),
                AUDIT_TRACES_EXPIRE_MAX,
            )? {
                self.delete(Family::AuditTraces, k);
            }
        }
        Ok(())
    }

    /// Writes an outcome: the instance, its indexes, timers, tasks, outbox and audit record,
    /// and from log format 5 the journal entry of `step`, the command that made it.
    /// A change `definition` decided that breaks an invariant (`Change::check`) is not
    /// written: apply fails, which stops this node (and every replica, at the same entry).
    pub(super) fn commit(
        &mut self,
        log_id: LogId<NodeId>,
        definition: &CompiledDefinition,
        before: Option<&Instance>,
        outcome: Outcome,
        step: JournalStep,
    ) -> StoreResult<Response> {
        let change = match outcome {
            Outcome::Refused(r) => return Ok(Response::Refused(r)),
            Outcome::Applied(change) => *change,
        };
        change
            .check(definition, before)
            .map_err(|broken| broken_invariant(log_id, broken))?;
        let after = &change.instance;
        let id = after.id.clone();
        self.put(Family::Instances, id.as_bytes().to_vec(), after);
        if self.format()?.at_least(crate::format::LOG_FORMAT_INDEXES) {
            self.reindex(before, after)?;
        }
        if self.format()?.at_least(crate::format::LOG_FORMAT_SEARCH) {
            self.index_data(definition, before, after)?;
        }
        if before.map(|b| &b.state) != Some(&after.state) {
            if let Some(b) = before {
                self.delete(
                    Family::IndexWorkflowState,
                    key::workflow_state(&b.workflow, &b.state, &id),
                );
            }
            self.put(
                Family::IndexWorkflowState,
                key::workflow_state(&after.workflow, &after.state, &id),
                &(),
            );
        }
        if let (None, Some(k)) = (before, &after.key) {
            self.put(Family::IndexKey, key::business_key(&after.workflow, k), &id);
        }
        for timer in &change.timers_armed {
            self.cancel_timer(&id, &timer.id)?;
            let due = timer.due_at.as_micros();
            self.overlay.earliest_armed =
                Some(self.overlay.earliest_armed.map_or(due, |e| e.min(due)));
            self.put(
                Family::TimersDue,
                key::timer_due(timer.due_at.as_micros(), &timer.id),
                timer,
            );
            self.put(
                Family::TimersByOwner,
                key::timer_owner(&id, &timer.id),
                &timer.due_at,
            );
        }
        for timer_id in &change.timers_cancelled {
            self.cancel_timer(&id, timer_id)?;
        }
        self.index_tasks(before, after)?;
        let audit_seq = self.append_audit(log_id, change.audit.clone(), Some(after.version))?;
        if self.format()?.at_least(crate::format::LOG_FORMAT_JOURNAL) {
            let entry = JournalEntry {
                at: change.audit.at,
                definition_version: definition.version.clone(),
                state: after.state.clone(),
                step,
            };
            self.put(Family::Journal, key::journal(&id, after.version), &entry);
        }
        if self.format()?.at_least(crate::format::LOG_FORMAT_WEBHOOKS) {
            let emitted: Vec<&String> = change
                .effects
                .iter()
                .filter_map(|e| match e {
                    lockstep_core::Effect::Emit { event } => Some(event),
                    _ => None,
                })
                .collect();
            if !emitted.is_empty() {
                self.put(Family::Emitted, key::emitted(audit_seq), &emitted);
            }
        }
        for effect in &change.effects {
            let seq = self
                .get::<u64>(Family::Meta, meta::OUTBOX_SEQ)?
                .unwrap_or(0)
                + 1;
            self.put(Family::Meta, meta::OUTBOX_SEQ.to_vec(), &seq);
            let item = OutboxItem {
                seq,
                instance_id: id.clone(),
                workflow: after.workflow.clone(),
                effect: effect.clone(),
                at: change.audit.at,
                audit_seq,
            };
            self.put(Family::Outbox, keys::u64_key(seq), &item);
            self.overlay.queued_outbox = true;
        }
        Ok(Response::Applied {
            instance_id: id,
            version: after.version,
            state: after.state.clone(),
            global_seq: audit_seq,
        })
    }

    /// Redacts `fields` in the journal entries of `instance_id` before record `version` (the
    /// redaction's own): creation data, the `data` patch of payloads, and task results, so
    /// that the values leave the journal too. Bounded by the instance's history.
    pub(super) fn redact_journal(
        &mut self,
        instance_id: &str,
        version: u64,
        fields: &[String],
    ) -> StoreResult<()> {
        use lockstep_core::redact::redact;
        for seq in 1..version {
            let k = key::journal(instance_id, seq);
            let Some(mut entry) = self.get::<JournalEntry>(Family::Journal, &k)? else {
                continue;
            };
            let before = entry.clone();
            if let JournalStep::Command { command, .. } = &mut entry.step {
                match command {
                    Command::Create { data, .. } => {
                        redact(data, fields);
                    }
                    Command::Transition { payload, .. } | Command::Event { payload, .. } => {
                        if let Some(patch) = payload.get_mut("data") {
                            redact(patch, fields);
                        }
                    }
                    Command::CompleteTask { result, .. } => {
                        if let Some(patch) = result.get_mut("data") {
                            redact(patch, fields);
                        }
                    }
                    _ => {}
                }
            }
            if entry != before {
                self.put(Family::Journal, k, &entry);
            }
        }
        Ok(())
    }

    pub(super) fn cancel_timer(&mut self, instance_id: &str, timer_id: &str) -> StoreResult<()> {
        let owner = key::timer_owner(instance_id, timer_id);
        if let Some(due_at) = self.get::<Timestamp>(Family::TimersByOwner, &owner)? {
            self.delete(
                Family::TimersDue,
                key::timer_due(due_at.as_micros(), timer_id),
            );
            self.delete(Family::TimersByOwner, owner);
        }
        Ok(())
    }

    /// Keeps the queue index equal to the set of ready tasks, and each worker's count of
    /// leased tasks equal to the tasks leased to it.
    pub(super) fn index_tasks(
        &mut self,
        before: Option<&Instance>,
        after: &Instance,
    ) -> StoreResult<()> {
        let leased = |i: &Instance| -> BTreeMap<String, String> {
            i.tasks
                .values()
                .filter(|t| t.status == TaskStatus::Leased)
                .filter_map(|t| Some((t.id.clone(), t.worker.clone()?)))
                .collect()
        };
        let (was, now) = (before.map(leased).unwrap_or_default(), leased(after));
        let mut delta: BTreeMap<String, i64> = BTreeMap::new();
        for (task, worker) in &was {
            if now.get(task) != Some(worker) {
                *delta.entry(worker.clone()).or_default() -= 1;
            }
        }
        for (task, worker) in &now {
            if was.get(task) != Some(worker) {
                *delta.entry(worker.clone()).or_default() += 1;
            }
        }
        for (worker, d) in delta.into_iter().filter(|(_, d)| *d != 0) {
            let k = key::worker_leases(&worker);
            let held = i64::from(self.get::<u32>(Family::Meta, &k)?.unwrap_or(0));
            match u32::try_from((held + d).max(0)).unwrap_or(0) {
                0 => self.delete(Family::Meta, k),
                n => self.put(Family::Meta, k, &n),
            }
        }
        self.index_ready_tasks(before, after);
        self.index_task_traces(before, after)
    }

    /// Keeps the trace of each open task that a traced request created (log format 9): put
    /// when the task appears, deleted once it completes or leaves the instance, so the family
    /// holds at most one entry per task the stored instances hold (an exhausted task keeps
    /// its trace: resolving its incident may retry it).
    fn index_task_traces(
        &mut self,
        before: Option<&Instance>,
        after: &Instance,
    ) -> StoreResult<()> {
        if !self.format()?.at_least(crate::format::LOG_FORMAT_TRACES) {
            return Ok(());
        }
        let open = |i: &Instance, id: &str| {
            i.tasks
                .get(id)
                .is_some_and(|t| t.status != TaskStatus::Completed)
        };
        if let Some(traceparent) = self.trace.clone() {
            for id in after.tasks.keys() {
                if before.is_none_or(|b| !b.tasks.contains_key(id)) && open(after, id) {
                    self.put(
                        Family::TaskTraces,
                        key::task_trace(&after.id, id),
                        &traceparent,
                    );
                }
            }
        }
        if let Some(before) = before {
            for id in before.tasks.keys() {
                if open(before, id) && !open(after, id) {
                    self.delete(Family::TaskTraces, key::task_trace(&after.id, id));
                }
            }
        }
        Ok(())
    }

    pub(super) fn index_ready_tasks(&mut self, before: Option<&Instance>, after: &Instance) {
        let ready = |i: &Instance| -> BTreeMap<String, String> {
            i.tasks
                .values()
                .filter(|t| t.status == TaskStatus::Ready)
                .map(|t| (t.id.clone(), t.queue.clone()))
                .collect()
        };
        let old = before.map(ready).unwrap_or_default();
        let new = ready(after);
        for (task_id, queue) in &old {
            if !new.contains_key(task_id) {
                self.delete(Family::Tasks, key::task(queue, task_id));
            }
        }
        for (task_id, queue) in &new {
            if !old.contains_key(task_id) {
                self.put(Family::Tasks, key::task(queue, task_id), &after.id);
                self.overlay.readied_task = true;
            }
        }
    }
}
