//! Migrations: the instances a `Migrate` command selects, each moved by the engine's
//! `migrate` and written only if every one of them is.

use super::*;

impl<S: Store> Applier<'_, S> {
    /// A migration moves every selected instance or none: each outcome is computed before
    /// anything is written, and the first refusal refuses the whole command.
    pub(super) fn migrate(
        &mut self,
        log_id: LogId<NodeId>,
        plan: &Migration,
        selection: &Selection,
        actor: &Actor,
        at: Timestamp,
    ) -> StoreResult<Response> {
        let workflow = &plan.workflow;
        if self.latest_definition(workflow)?.is_none() {
            return Ok(refused(
                RefusalCode::UnknownWorkflow,
                format!("no definition of workflow `{workflow}` has been applied"),
            ));
        }
        let mut versions = Vec::new();
        for version in [&plan.from_version, &plan.to_version] {
            match self.definition(workflow, version)? {
                Some(definition) => versions.push(definition),
                None => {
                    return Ok(refused(
                        RefusalCode::UnknownVersion,
                        format!(
                            "workflow `{workflow}` has no applied version `{version}`; `lockstep apply` it first (the versions are listed by Definitions/ListVersions)"
                        ),
                    ));
                }
            }
        }
        let (from, to) = (&versions[0], &versions[1]);
        if let Err(refusal) = lockstep_core::migrate::check_plan(from, to, plan) {
            return Ok(Response::Refused(refusal));
        }
        let (instances, next) = match selection {
            Selection::Instances(targets) => match self.listed_instances(targets)? {
                Ok(instances) => (instances, None),
                Err(refusal) => return Ok(Response::Refused(refusal)),
            },
            Selection::All { after } => self.instances_at_version(plan, after.as_ref())?,
        };
        let mut changes = Vec::with_capacity(instances.len());
        for instance in &instances {
            match migrate(from, to, instance, plan, actor, at) {
                Outcome::Refused(refusal) => return Ok(Response::Refused(refusal)),
                Outcome::Applied(change) => changes.push(change),
            }
        }
        let mut migrated = Vec::with_capacity(changes.len());
        for (before, change) in instances.iter().zip(changes) {
            let to_state = change.instance.state.clone();
            let step = JournalStep::Migrate {
                plan: plan.clone(),
                actor: actor.clone(),
            };
            match self.commit(log_id, to, Some(before), Outcome::Applied(change), step)? {
                Response::Applied {
                    instance_id,
                    version,
                    global_seq,
                    ..
                } => migrated.push(Migrated {
                    instance_id,
                    from_state: before.state.clone(),
                    to_state,
                    version,
                    global_seq,
                }),
                other => {
                    unreachable!("committing an applied change answers Applied, not {other:?}")
                }
            }
        }
        Ok(Response::Migrated {
            instances: migrated,
            next,
        })
    }

    /// The instances a list names, each once, in the order given.
    pub(super) fn listed_instances(
        &mut self,
        targets: &[Target],
    ) -> StoreResult<Result<Vec<Instance>, Refusal>> {
        if targets.is_empty() {
            return Ok(Err(Refusal::new(
                RefusalCode::MigrationInvalid,
                "the migration names no instance: list instance ids, or migrate all instances at the source version",
            )));
        }
        if targets.len() > MIGRATION_INSTANCES_MAX {
            return Ok(Err(Refusal::new(
                RefusalCode::LimitExceeded,
                format!(
                    "the migration lists {} instances, more than MIGRATION_INSTANCES_MAX ({MIGRATION_INSTANCES_MAX}): split the list, or migrate all instances at the source version in batches",
                    targets.len()
                ),
            )));
        }
        let mut instances: Vec<Instance> = Vec::with_capacity(targets.len());
        for target in targets {
            let id = match target {
                Target::Id(id) => Some(id.clone()),
                Target::Key { workflow, key } => {
                    self.get::<String>(Family::IndexKey, &key::business_key(workflow, key))?
                }
            };
            let instance = match &id {
                Some(id) => self.get::<Instance>(Family::Instances, id.as_bytes())?,
                None => None,
            };
            let Some(instance) = instance else {
                let named = match target {
                    Target::Id(id) => format!("no instance `{id}`"),
                    Target::Key { workflow, key } => {
                        format!("workflow `{workflow}` has no instance with key `{key}`")
                    }
                };
                return Ok(Err(Refusal::new(RefusalCode::UnknownInstance, named)));
            };
            if !instances.iter().any(|i| i.id == instance.id) {
                instances.push(instance);
            }
        }
        Ok(Ok(instances))
    }

    /// The next batch of the workflow's instances at the source version after `after`, and
    /// where to resume if more may remain. Scans the workflow's state index (through the
    /// overlay), at most `MIGRATION_SCAN_MAX` entries.
    pub(super) fn instances_at_version(
        &mut self,
        plan: &Migration,
        after: Option<&MigrationCursor>,
    ) -> StoreResult<(Vec<Instance>, Option<MigrationCursor>)> {
        let prefix = keys::strs(&[&plan.workflow]);
        let end = keys::prefix_end(&prefix);
        let start = match after {
            Some(cursor) => {
                let mut k = key::workflow_state(&plan.workflow, &cursor.state, &cursor.instance_id);
                // Strictly after the cursor's key: every index key has exactly three parts.
                k.push(0);
                k
            }
            None => prefix,
        };
        let rows = self.range(
            Family::IndexWorkflowState,
            &start,
            Some(&end),
            MIGRATION_SCAN_MAX,
        )?;
        let scanned_all = rows.len() < MIGRATION_SCAN_MAX;
        let mut selected = Vec::new();
        let mut last = None;
        for (k, _) in &rows {
            let parts = keys::split_strs(k);
            let [_, state, id] = parts.as_slice() else {
                return Err(lockstep_store::Error::Corrupt {
                    family: Family::IndexWorkflowState,
                    key: keys::show(k),
                    reason: "a state index key has three parts: workflow, state, instance".into(),
                });
            };
            let Some(instance) = self.get::<Instance>(Family::Instances, id.as_bytes())? else {
                return Err(lockstep_store::Error::Corrupt {
                    family: Family::IndexWorkflowState,
                    key: keys::show(k),
                    reason: format!("the state index names instance {id}, which is not stored"),
                });
            };
            last = Some(MigrationCursor {
                state: state.clone(),
                instance_id: id.clone(),
            });
            if instance.definition_version == plan.from_version {
                selected.push(instance);
                if selected.len() == MIGRATION_INSTANCES_MAX {
                    break;
                }
            }
        }
        let more = if selected.len() == MIGRATION_INSTANCES_MAX {
            // Full batch: more remain if the index goes on after the last one taken.
            let cursor = last.as_ref().expect("a full batch examined entries");
            let mut k = key::workflow_state(&plan.workflow, &cursor.state, &cursor.instance_id);
            k.push(0);
            !self
                .range(Family::IndexWorkflowState, &k, Some(&end), 1)?
                .is_empty()
        } else {
            !scanned_all
        };
        Ok((selected, if more { last } else { None }))
    }
}
