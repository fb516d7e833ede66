//! Definitions: applying a new version (compiled with the replicated limits, stored with its
//! provenance and audited), and the compiled definitions apply keeps in memory.

use super::*;

/// A definition as stored: its source, provenance and who applied it when.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredDefinition {
    pub workflow: String,
    pub version: String,
    pub source: String,
    pub provenance: Provenance,
    pub applied_by: String,
    pub applied_at: Timestamp,
    pub audit_seq: u64,
}

impl<S: Store> Applier<'_, S> {
    pub(super) fn latest_definition(
        &mut self,
        workflow: &str,
    ) -> StoreResult<Option<Arc<CompiledDefinition>>> {
        match self.get::<String>(Family::Definitions, &key::latest_definition(workflow))? {
            Some(version) => self.definition(workflow, &version),
            None => Ok(None),
        }
    }

    pub(super) fn definition(
        &mut self,
        workflow: &str,
        version: &str,
    ) -> StoreResult<Option<Arc<CompiledDefinition>>> {
        let cache_key = (workflow.to_string(), version.to_string());
        if let Some(hit) = self.cache.compiled.get(&cache_key) {
            return Ok(Some(Arc::clone(hit)));
        }
        let Some(stored) =
            self.get::<StoredDefinition>(Family::Definitions, &key::definition(workflow, version))?
        else {
            return Ok(None);
        };
        let compiled = compile(None, &stored.source, &apply_limits()).map_err(|d| {
            lockstep_store::Error::Corrupt {
                family: Family::Definitions,
                key: keys::show(&key::definition(workflow, version)),
                reason: format!(
                    "stored definition no longer compiles: {}",
                    d.first().map(|d| d.message.clone()).unwrap_or_default()
                ),
            }
        })?;
        let compiled = Arc::new(compiled);
        if self.cache.compiled.len() >= DEFINITION_CACHE_MAX {
            self.cache.compiled.clear();
        }
        self.cache.compiled.insert(cache_key, Arc::clone(&compiled));
        Ok(Some(compiled))
    }

    pub(super) fn apply_definition(
        &mut self,
        log_id: LogId<NodeId>,
        source: &str,
        provenance: &Provenance,
        actor: &Actor,
        at: Timestamp,
    ) -> StoreResult<Response> {
        let compiled = match compile(Some(&provenance.path), source, &apply_limits()) {
            Ok(c) => c,
            Err(diagnostics) => {
                let lines: Vec<String> =
                    diagnostics.iter().take(10).map(|d| d.to_string()).collect();
                return Ok(refused(
                    RefusalCode::DefinitionInvalid,
                    format!(
                        "the definition has {} error(s):\n{}",
                        diagnostics.len(),
                        lines.join("\n")
                    ),
                ));
            }
        };
        if !compiled.definition.index.is_empty()
            && !self.format()?.at_least(crate::format::LOG_FORMAT_SEARCH)
        {
            return Ok(refused(
                RefusalCode::DefinitionInvalid,
                "`index:` needs log format 11, which every member must read first: upgrade every node, wait for the format to rise (`lockstep cluster status`), then apply it again".into(),
            ));
        }
        let workflow = compiled.name().to_string();
        let version = compiled.version.clone();
        let defkey = key::definition(&workflow, &version);
        if self.get_raw(Family::Definitions, &defkey)?.is_some() {
            self.put(
                Family::Definitions,
                key::latest_definition(&workflow),
                &version,
            );
            return Ok(Response::Definition {
                workflow,
                version,
                created: false,
            });
        }
        let origin = format!(
            "{}@{}:{}",
            provenance.repository, provenance.commit, provenance.path
        );
        let record = definition_applied(&compiled, source, &origin, actor, at);
        let audit_seq = self.append_audit(log_id, record, None)?;
        let stored = StoredDefinition {
            workflow: workflow.clone(),
            version: version.clone(),
            source: source.to_string(),
            provenance: provenance.clone(),
            applied_by: actor.id.clone(),
            applied_at: at,
            audit_seq,
        };
        self.put(Family::Definitions, defkey, &stored);
        self.put(
            Family::Definitions,
            key::latest_definition(&workflow),
            &version,
        );
        self.cache
            .compiled
            .insert((workflow.clone(), version.clone()), Arc::new(compiled));
        Ok(Response::Definition {
            workflow,
            version,
            created: true,
        })
    }
}
