//! Facts beyond the one instance a command concerns, and the rules that decide on them.
//!
//! `evaluate` sees one instance, but two rules need to know about others: a business key is
//! unique within its workflow, and a worker may hold at most so many leased tasks. The
//! replicated state machine looks these facts up (it owns the indexes) and hands them to the
//! engine as [`Facts`]; the engine alone decides what they mean. A definition's own audit
//! record is decided here too, so that apply only writes what the engine built.

use super::*;

/// What the replicated state knows beyond the instance a command concerns. `Default` is
/// "nothing known": no key is taken and the worker holds no leases.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Facts {
    /// For a create with a business key: the instance of the same workflow that already
    /// holds that key.
    pub key_holder: Option<String>,
    /// For a lease: the leases the polling worker holds now, and the most it may hold.
    pub worker_leases: Option<WorkerLeases>,
}

/// A worker's leased tasks against its cap (a replicated limit: every replica decides a lease
/// with the same cap).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerLeases {
    pub held: u32,
    pub max: u32,
}

/// The cross-instance rules that do not need the instance or its definition: a worker at its
/// lease cap is refused before the task's instance is looked up.
///
/// The replicated state machine calls this before it loads the instance, because logs
/// already written decided the cap first (a refusal is replicated in the request's dedup
/// entry, so the order of refusals must not change); [`evaluate_with`] calls it too, so that
/// the engine alone, given the facts, decides every command.
pub fn admit(command: &Command, facts: &Facts) -> Result<(), Refusal> {
    if let (Command::LeaseTask { worker, .. }, Some(leases)) = (command, facts.worker_leases)
        && leases.held >= leases.max
    {
        return Err(Refusal::new(
            RefusalCode::LimitExceeded,
            format!(
                "worker `{}` already holds {} leased tasks, the most one worker may hold ({}): complete or fail some before polling for more",
                worker.id, leases.held, leases.max
            ),
        ));
    }
    Ok(())
}

/// A create whose business key another instance of the workflow holds is refused, before
/// anything about the new instance is checked.
pub(super) fn key_is_free(
    definition: &CompiledDefinition,
    key: Option<&str>,
    facts: &Facts,
) -> Result<(), Refusal> {
    match (key, &facts.key_holder) {
        (Some(key), Some(holder)) => Err(Refusal::new(
            RefusalCode::AlreadyExists,
            format!(
                "workflow `{}` already has an instance with key `{key}`: {holder}",
                definition.name()
            ),
        )),
        _ => Ok(()),
    }
}

/// The audit record of a definition version applied for the first time: the digest of its
/// source, who applied it and where it came from (`origin`, e.g. `repository@commit:path`).
pub fn definition_applied(
    definition: &CompiledDefinition,
    source: &str,
    origin: &str,
    actor: &Actor,
    at: Timestamp,
) -> AuditRecord {
    AuditRecord {
        kind: AuditKind::DefinitionApplied,
        workflow: definition.name().to_string(),
        instance_id: String::new(),
        definition_version: definition.version.clone(),
        transition: None,
        from: None,
        to: None,
        actor: actor.record(),
        at,
        instance_version: 0,
        payload_digest: Some(sha256_hex(source.as_bytes())),
        predicates: Vec::new(),
        timer: None,
        task_id: None,
        sla: None,
        note: Some(format!("applied from {origin}")),
    }
}
