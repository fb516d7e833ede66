//! What every applied change must satisfy, checked at run time before it is written.
//!
//! `evaluate` and `migrate` are meant never to emit a change that breaks these; apply checks
//! each change anyway (`lockstep_raft::apply`) and, if one does, stops the node with the
//! broken invariant named rather than write state that the rest of the system would then
//! trust. A deterministic bug stops every replica at the same entry, which is the point: the
//! log stays intact, and a fixed build re-applies it.

use crate::audit::AuditRecord;
use crate::engine::{Change, Instance};
use crate::validate::CompiledDefinition;

/// An invariant an applied change broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokenInvariant {
    #[error(
        "instance {id} goes from version {before:?} to {after}: a change adds exactly one (a new instance starts at 1)"
    )]
    Version {
        id: String,
        before: Option<u64>,
        after: u64,
    },
    #[error("instance {before} came back as instance {after} ({what} changed)")]
    Identity {
        before: String,
        after: String,
        what: &'static str,
    },
    #[error(
        "instance {id} is in state `{state}`, which workflow `{workflow}` version {version} does not declare"
    )]
    UnknownState {
        id: String,
        state: String,
        workflow: String,
        version: String,
    },
    #[error(
        "instance {id} runs {workflow}@{version}, but the change was decided by {expected_workflow}@{expected_version}"
    )]
    Definition {
        id: String,
        workflow: String,
        version: String,
        expected_workflow: String,
        expected_version: String,
    },
    #[error(
        "the audit record of instance {id} version {version} says {field} `{recorded}`, the change says `{actual}`"
    )]
    Audit {
        id: String,
        version: u64,
        field: &'static str,
        recorded: String,
        actual: String,
    },
}

impl Change {
    /// Checks this change of `before` (`None`: a create), decided by `definition`.
    pub fn check(
        &self,
        definition: &CompiledDefinition,
        before: Option<&Instance>,
    ) -> Result<(), BrokenInvariant> {
        let after = &self.instance;
        let expected = before.map_or(1, |b| b.version + 1);
        if after.version != expected {
            return Err(BrokenInvariant::Version {
                id: after.id.clone(),
                before: before.map(|b| b.version),
                after: after.version,
            });
        }
        if let Some(b) = before {
            for (what, was, is) in [
                ("id", &b.id, &after.id),
                ("workflow", &b.workflow, &after.workflow),
            ] {
                if was != is {
                    return Err(BrokenInvariant::Identity {
                        before: b.id.clone(),
                        after: after.id.clone(),
                        what,
                    });
                }
            }
        }
        if after.workflow != definition.name() || after.definition_version != definition.version {
            return Err(BrokenInvariant::Definition {
                id: after.id.clone(),
                workflow: after.workflow.clone(),
                version: after.definition_version.clone(),
                expected_workflow: definition.name().to_string(),
                expected_version: definition.version.clone(),
            });
        }
        if !definition.states.contains_key(&after.state) {
            return Err(BrokenInvariant::UnknownState {
                id: after.id.clone(),
                state: after.state.clone(),
                workflow: after.workflow.clone(),
                version: after.definition_version.clone(),
            });
        }
        check_audit(&self.audit, after)
    }
}

/// The audit record describes the change it is written with.
fn check_audit(audit: &AuditRecord, after: &Instance) -> Result<(), BrokenInvariant> {
    let (recorded_version, version) = (
        audit.instance_version.to_string(),
        after.version.to_string(),
    );
    // A record names the state it moved to, or none when the state did not change.
    let to = audit.to.as_deref().unwrap_or(&after.state);
    for (field, recorded, actual) in [
        ("instance", audit.instance_id.as_str(), after.id.as_str()),
        ("workflow", audit.workflow.as_str(), after.workflow.as_str()),
        (
            "definition version",
            audit.definition_version.as_str(),
            after.definition_version.as_str(),
        ),
        (
            "instance version",
            recorded_version.as_str(),
            version.as_str(),
        ),
        ("state", to, after.state.as_str()),
    ] {
        if recorded != actual {
            return Err(BrokenInvariant::Audit {
                id: after.id.clone(),
                version: after.version,
                field,
                recorded: recorded.to_string(),
                actual: actual.to_string(),
            });
        }
    }
    Ok(())
}
