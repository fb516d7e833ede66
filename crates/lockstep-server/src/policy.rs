//! The cluster policy (DESIGN §5): who may apply definitions, migrate instances, read audit,
//! change membership, resolve incidents, redact instance data and read each workflow's instances. Per-transition permissions are the definitions' `allow` predicates;
//! this file covers the operations outside any workflow.
//!
//! The file (`--policy`, TOML) has one table per permission, each listing actor ids and roles;
//! an actor named in `actors` or holding one of `roles` is allowed:
//!
//! ```toml
//! [apply_definitions]
//! roles = ["admin"]
//! actors = ["ci-deployer"]
//!
//! [migrate_instances]
//! roles = ["admin"]
//!
//! [read_audit]
//! roles = ["admin", "auditor"]
//!
//! [change_membership]
//! roles = ["admin"]
//!
//! [resolve_incidents]
//! roles = ["operator"]
//!
//! [redact_data]
//! roles = ["admin"]
//!
//! [manage_subscriptions]
//! roles = ["admin"]
//!
//! [manage_schedules]
//! roles = ["admin"]
//! ```
//!
//! The file may also set quotas (`[quotas.actors.ID]`, `[quotas.roles.NAME]`: rates and bursts
//! of writes and polls; see `quota.rs`); without them nobody has a quota.
//!
//! Reads of a workflow's instances (`Instances/Get`, `List`, `History`, `Actions`, `Inbox`)
//! may be limited per workflow; a workflow without a rule stays readable by every
//! authenticated actor:
//!
//! ```toml
//! [read_instances.purchase-order]
//! roles = ["requester", "approver", "auditor"]
//! actors = ["erp"]
//! ```
//!
//! A permission the file leaves out keeps its default (the values above, minus the example
//! actor). A secure node without `--policy` uses the defaults; a development node without
//! `--policy` allows every caller, as it always did. The node re-reads the file when its
//! modification time or size changes (looked at most once a second, on use); a file that no
//! longer parses is logged and the previous policy stays in force.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use lockstep_core::Actor;
use serde::Deserialize;

/// How often, at most, the node looks at the policy file for changes.
pub const POLICY_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The operations the policy governs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permission {
    /// `Definitions/Apply`.
    ApplyDefinitions,
    /// `Instances/Migrate`: moving instances to another definition version.
    MigrateInstances,
    /// `Audit/*`: the change feed, verification and the security log.
    ReadAudit,
    /// `Cluster/AddLearner`, `Promote`, `Remove`, `Snapshot` and `Backup`.
    ChangeMembership,
    /// `Tasks/ResolveIncident` (the engine also requires the `operator` role).
    ResolveIncidents,
    /// `Instances/Redact`: erasing instance data fields (`lockstep redact`).
    RedactData,
    /// Every `Subscriptions/*` call: webhook subscriptions (`lockstep subscriptions`).
    ManageSubscriptions,
    /// Every `Schedules/*` call: schedules create instances as `system:schedule`
    /// (`lockstep schedules`).
    ManageSchedules,
}

impl Permission {
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::ApplyDefinitions => "apply_definitions",
            Permission::MigrateInstances => "migrate_instances",
            Permission::ReadAudit => "read_audit",
            Permission::ChangeMembership => "change_membership",
            Permission::ResolveIncidents => "resolve_incidents",
            Permission::RedactData => "redact_data",
            Permission::ManageSubscriptions => "manage_subscriptions",
            Permission::ManageSchedules => "manage_schedules",
        }
    }

    /// The permission a gRPC method needs, if any (every other public method needs only an
    /// authenticated actor).
    pub fn for_method(path: &str) -> Option<Permission> {
        match path {
            "/lockstep.v1.Definitions/Apply" => Some(Permission::ApplyDefinitions),
            "/lockstep.v1.Instances/Migrate" => Some(Permission::MigrateInstances),
            "/lockstep.v1.Cluster/AddLearner"
            | "/lockstep.v1.Cluster/Promote"
            | "/lockstep.v1.Cluster/Remove"
            | "/lockstep.v1.Cluster/Snapshot"
            | "/lockstep.v1.Cluster/Backup" => Some(Permission::ChangeMembership),
            "/lockstep.v1.Tasks/ResolveIncident" => Some(Permission::ResolveIncidents),
            "/lockstep.v1.Instances/Redact" => Some(Permission::RedactData),
            p if p.starts_with("/lockstep.v1.Subscriptions/") => {
                Some(Permission::ManageSubscriptions)
            }
            p if p.starts_with("/lockstep.v1.Schedules/") => Some(Permission::ManageSchedules),
            p if p.starts_with("/lockstep.v1.Audit/") => Some(Permission::ReadAudit),
            _ => None,
        }
    }
}

/// Who holds one permission.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    #[serde(default)]
    pub actors: Vec<String>,
    #[serde(default)]
    pub roles: Vec<String>,
}

impl Rule {
    fn roles(roles: &[&str]) -> Rule {
        Rule {
            actors: Vec::new(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
        }
    }

    fn allows(&self, actor: &Actor) -> bool {
        self.actors.contains(&actor.id) || actor.roles.iter().any(|r| self.roles.contains(r))
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.roles.is_empty() {
            parts.push(format!("role {}", self.roles.join(" or ")));
        }
        if !self.actors.is_empty() {
            parts.push(format!("actor {}", self.actors.join(" or ")));
        }
        if parts.is_empty() {
            "nobody".into()
        } else {
            parts.join(", or ")
        }
    }
}

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    apply_definitions: Option<Rule>,
    migrate_instances: Option<Rule>,
    read_audit: Option<Rule>,
    change_membership: Option<Rule>,
    resolve_incidents: Option<Rule>,
    redact_data: Option<Rule>,
    manage_subscriptions: Option<Rule>,
    manage_schedules: Option<Rule>,
    quotas: Option<crate::quota::Quotas>,
    read_instances: Option<BTreeMap<String, Rule>>,
}

/// A complete policy: one rule per permission.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// Development mode without a policy file: everything is allowed.
    pub allow_all: bool,
    pub apply_definitions: Rule,
    pub migrate_instances: Rule,
    pub read_audit: Rule,
    pub change_membership: Rule,
    pub resolve_incidents: Rule,
    pub redact_data: Rule,
    /// Who may manage webhook subscriptions (their targets receive audit records).
    pub manage_subscriptions: Rule,
    /// Who may manage schedules (their ticks create instances as `system:schedule`).
    pub manage_schedules: Rule,
    /// Rates of writes and polls per actor and role (`quota.rs`).
    pub quotas: crate::quota::Quotas,
    /// Who may read the instances of a workflow, by workflow; a workflow without a rule is
    /// readable by every authenticated actor.
    pub read_instances: BTreeMap<String, Rule>,
}

impl Default for Policy {
    /// The secure defaults.
    fn default() -> Self {
        Policy {
            allow_all: false,
            apply_definitions: Rule::roles(&["admin"]),
            migrate_instances: Rule::roles(&["admin"]),
            read_audit: Rule::roles(&["admin", "auditor"]),
            change_membership: Rule::roles(&["admin"]),
            resolve_incidents: Rule::roles(&["operator"]),
            redact_data: Rule::roles(&["admin"]),
            manage_subscriptions: Rule::roles(&["admin"]),
            manage_schedules: Rule::roles(&["admin"]),
            quotas: crate::quota::Quotas::default(),
            read_instances: BTreeMap::new(),
        }
    }
}

/// Why a cluster policy file cannot be used; the policy in force stays.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{0}")]
    Syntax(#[from] toml::de::Error),
    #[error(transparent)]
    Quota(#[from] crate::quota::QuotaError),
    #[error("cannot read the policy file {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("policy file {}: {source}", .path.display())]
    InFile {
        path: PathBuf,
        source: Box<PolicyError>,
    },
}

/// A call the cluster policy does not allow, and who would be allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the cluster policy does not give actor `{actor}` (roles: {roles}) the permission {permission}; it is held by {holders}"
)]
pub struct Denied {
    pub actor: String,
    /// Comma-separated, or `none`.
    pub roles: String,
    pub permission: String,
    pub holders: String,
}

impl Policy {
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        let file: PolicyFile = toml::from_str(text)?;
        let defaults = Policy::default();
        let quotas = file.quotas.unwrap_or_default();
        quotas.check()?;
        Ok(Policy {
            allow_all: false,
            apply_definitions: file.apply_definitions.unwrap_or(defaults.apply_definitions),
            migrate_instances: file.migrate_instances.unwrap_or(defaults.migrate_instances),
            read_audit: file.read_audit.unwrap_or(defaults.read_audit),
            change_membership: file.change_membership.unwrap_or(defaults.change_membership),
            resolve_incidents: file.resolve_incidents.unwrap_or(defaults.resolve_incidents),
            redact_data: file.redact_data.unwrap_or(defaults.redact_data),
            manage_subscriptions: file
                .manage_subscriptions
                .unwrap_or(defaults.manage_subscriptions),
            manage_schedules: file.manage_schedules.unwrap_or(defaults.manage_schedules),
            quotas,
            read_instances: file.read_instances.unwrap_or_default(),
        })
    }

    fn rule(&self, permission: Permission) -> &Rule {
        match permission {
            Permission::ApplyDefinitions => &self.apply_definitions,
            Permission::MigrateInstances => &self.migrate_instances,
            Permission::ReadAudit => &self.read_audit,
            Permission::ChangeMembership => &self.change_membership,
            Permission::ResolveIncidents => &self.resolve_incidents,
            Permission::RedactData => &self.redact_data,
            Permission::ManageSubscriptions => &self.manage_subscriptions,
            Permission::ManageSchedules => &self.manage_schedules,
        }
    }

    /// Whether `actor` holds `permission`; the error says who would.
    pub fn check(&self, actor: &Actor, permission: Permission) -> Result<(), Denied> {
        if self.allow_all {
            return Ok(());
        }
        check_rule(self.rule(permission), actor, || {
            permission.as_str().to_string()
        })
    }

    /// Whether a caller (`None`: a development caller who named no actor) may read the
    /// instances of `workflow`, as the API's `check_read` decides, without a reason
    /// or a security-log record: for views that leave out what the caller may not read.
    pub fn may_read(&self, actor: Option<&Actor>, workflow: &str) -> bool {
        match actor {
            Some(a) => self.check_read(a, workflow).is_ok(),
            None => self.allow_all || !self.read_instances.contains_key(workflow),
        }
    }

    /// Whether `actor` may read the instances of `workflow` (`[read_instances.<workflow>]`;
    /// without a rule, anyone authenticated may); the error says who may.
    pub fn check_read(&self, actor: &Actor, workflow: &str) -> Result<(), Denied> {
        match self.read_instances.get(workflow) {
            Some(rule) if !self.allow_all => check_rule(rule, actor, || {
                format!("read_instances of workflow `{workflow}`")
            }),
            _ => Ok(()),
        }
    }
}

fn check_rule(
    rule: &Rule,
    actor: &Actor,
    permission: impl FnOnce() -> String,
) -> Result<(), Denied> {
    if rule.allows(actor) {
        return Ok(());
    }
    Err(Denied {
        actor: actor.id.clone(),
        roles: if actor.roles.is_empty() {
            "none".to_string()
        } else {
            actor.roles.join(", ")
        },
        permission: permission(),
        holders: rule.describe(),
    })
}

/// The policy in force, re-read from its file when that changes.
#[derive(Debug)]
pub struct PolicySource {
    path: Option<PathBuf>,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    policy: Arc<Policy>,
    checked: Instant,
    stamp: Option<(SystemTime, u64)>,
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

fn read(path: &Path) -> Result<Policy, PolicyError> {
    let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Policy::parse(&text).map_err(|e| PolicyError::InFile {
        path: path.to_path_buf(),
        source: Box::new(e),
    })
}

impl PolicySource {
    /// Reads the file (a start-up error if it is missing or bad); without one, the secure
    /// defaults, or allow-all in development mode.
    pub fn load(path: Option<&Path>, dev: bool) -> Result<PolicySource, PolicyError> {
        let policy = match path {
            Some(p) => read(p)?,
            None if dev => Policy {
                allow_all: true,
                ..Policy::default()
            },
            None => Policy::default(),
        };
        Ok(PolicySource {
            path: path.map(Path::to_path_buf),
            state: Mutex::new(State {
                policy: Arc::new(policy),
                checked: Instant::now(),
                stamp: path.and_then(stamp),
            }),
        })
    }

    /// The policy in force now.
    pub fn current(&self) -> Arc<Policy> {
        let mut state = self.state.lock().expect("policy lock");
        if let Some(path) = &self.path
            && state.checked.elapsed() >= POLICY_CHECK_INTERVAL
        {
            state.checked = Instant::now();
            let now = stamp(path);
            if now != state.stamp {
                state.stamp = now;
                match read(path) {
                    Ok(policy) => {
                        tracing::info!(path = %path.display(), ?policy, "cluster policy reloaded");
                        state.policy = Arc::new(policy);
                    }
                    Err(e) => tracing::error!(
                        error = %e,
                        "the changed cluster policy file is not valid; the previous policy stays in force"
                    ),
                }
            }
        }
        Arc::clone(&state.policy)
    }

    /// Re-reads the file now (on SIGHUP), whatever its modification time says. A file that
    /// does not parse leaves the previous policy in force and is returned as the error.
    pub fn reload(&self) -> Result<(), PolicyError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let policy = read(path)?;
        let mut state = self.state.lock().expect("policy lock");
        state.stamp = stamp(path);
        state.checked = Instant::now();
        tracing::info!(path = %path.display(), ?policy, "cluster policy reloaded (SIGHUP)");
        state.policy = Arc::new(policy);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use lockstep_core::ActorKind;

    use super::*;

    fn actor(id: &str, roles: &[&str]) -> Actor {
        Actor {
            id: id.into(),
            kind: ActorKind::Human,
            roles: roles.iter().map(|r| r.to_string()).collect(),
            claims: Default::default(),
            authn: "jwt".into(),
        }
    }

    #[test]
    fn secure_defaults() {
        let p = Policy::default();
        assert!(
            p.check(&actor("a", &["admin"]), Permission::ApplyDefinitions)
                .is_ok()
        );
        let refused = p
            .check(&actor("a", &["auditor"]), Permission::ApplyDefinitions)
            .unwrap_err()
            .to_string();
        assert!(refused.contains("apply_definitions"), "{refused}");
        assert!(refused.contains("role admin"), "{refused}");
        assert!(
            p.check(&actor("a", &["auditor"]), Permission::ReadAudit)
                .is_ok()
        );
        assert!(p.check(&actor("a", &[]), Permission::ReadAudit).is_err());
        assert!(
            p.check(&actor("a", &["auditor"]), Permission::ChangeMembership)
                .is_err()
        );
        assert!(
            p.check(&actor("a", &["admin"]), Permission::MigrateInstances)
                .is_ok()
        );
        let refused = p
            .check(&actor("a", &["operator"]), Permission::MigrateInstances)
            .unwrap_err()
            .to_string();
        assert!(refused.contains("migrate_instances"), "{refused}");
        // Erasure is the admin's by default, and a file may give it to a privacy officer.
        assert_eq!(
            Permission::for_method("/lockstep.v1.Instances/Redact"),
            Some(Permission::RedactData)
        );
        assert!(
            p.check(&actor("a", &["admin"]), Permission::RedactData)
                .is_ok()
        );
        let refused = p
            .check(&actor("a", &["operator"]), Permission::RedactData)
            .unwrap_err()
            .to_string();
        assert!(refused.contains("redact_data"), "{refused}");
        // Webhook subscriptions send audit records out: the admin's by default.
        assert_eq!(
            Permission::for_method("/lockstep.v1.Subscriptions/Create"),
            Some(Permission::ManageSubscriptions)
        );
        assert!(
            p.check(&actor("o", &["operator"]), Permission::ManageSubscriptions)
                .is_err()
        );
        assert_eq!(
            Permission::for_method("/lockstep.v1.Schedules/List"),
            Some(Permission::ManageSchedules)
        );
        assert!(
            p.check(&actor("o", &["operator"]), Permission::ManageSchedules)
                .is_err()
        );
        let dpo = Policy::parse("[redact_data]\nroles = [\"privacy\"]\n").unwrap();
        assert!(
            dpo.check(&actor("d", &["privacy"]), Permission::RedactData)
                .is_ok()
        );
        assert!(
            dpo.check(&actor("a", &["admin"]), Permission::RedactData)
                .is_err()
        );
    }

    #[test]
    fn a_file_overrides_what_it_names() {
        let p = Policy::parse(
            "[apply_definitions]\nactors = [\"ci\"]\n\n[read_audit]\nroles = [\"sec\"]\n",
        )
        .unwrap();
        assert!(
            p.check(&actor("ci", &[]), Permission::ApplyDefinitions)
                .is_ok()
        );
        assert!(
            p.check(&actor("root", &["admin"]), Permission::ApplyDefinitions)
                .is_err()
        );
        assert!(
            p.check(&actor("x", &["sec"]), Permission::ReadAudit)
                .is_ok()
        );
        // Left out: the default.
        assert!(
            p.check(&actor("x", &["admin"]), Permission::ChangeMembership)
                .is_ok()
        );
        assert!(Policy::parse("[apply]\nroles = []\n").is_err());
        let p = Policy::parse("[migrate_instances]\nactors = [\"release-bot\"]\n").unwrap();
        assert!(
            p.check(&actor("release-bot", &[]), Permission::MigrateInstances)
                .is_ok()
        );
        assert!(
            p.check(&actor("root", &["admin"]), Permission::MigrateInstances)
                .is_err()
        );
    }

    #[test]
    fn read_rules_limit_a_workflow_and_leave_the_others_readable() {
        let policy =
            Policy::parse("[read_instances.payroll]\nroles = [\"hr\"]\nactors = [\"auditor-1\"]\n")
                .unwrap();
        let (hr, auditor, bob) = (
            actor("h", &["hr"]),
            actor("auditor-1", &[]),
            actor("bob", &["approver"]),
        );
        assert_eq!(policy.check_read(&hr, "payroll"), Ok(()));
        assert_eq!(policy.check_read(&auditor, "payroll"), Ok(()));
        let denied = policy.check_read(&bob, "payroll").unwrap_err();
        assert_eq!(
            denied.to_string(),
            "the cluster policy does not give actor `bob` (roles: approver) the permission read_instances of workflow `payroll`; it is held by role hr, or actor auditor-1"
        );
        // A workflow without a rule stays readable by anyone authenticated.
        assert_eq!(policy.check_read(&bob, "purchase-order"), Ok(()));
        assert_eq!(Policy::default().check_read(&bob, "payroll"), Ok(()));
        // A bad rule is a syntax error naming the field.
        let bad = Policy::parse("[read_instances.payroll]\nrole = [\"hr\"]\n").unwrap_err();
        assert!(bad.to_string().contains("unknown field `role`"), "{bad}");
    }

    #[test]
    fn methods_map_to_permissions() {
        assert_eq!(
            Permission::for_method("/lockstep.v1.Audit/Verify"),
            Some(Permission::ReadAudit)
        );
        assert_eq!(
            Permission::for_method("/lockstep.v1.Cluster/Remove"),
            Some(Permission::ChangeMembership)
        );
        assert_eq!(
            Permission::for_method("/lockstep.v1.Instances/Migrate"),
            Some(Permission::MigrateInstances)
        );
        assert_eq!(Permission::for_method("/lockstep.v1.Cluster/Status"), None);
        assert_eq!(
            Permission::for_method("/lockstep.v1.Instances/Transition"),
            None
        );
    }

    #[test]
    fn reload_reads_the_file_at_once_and_keeps_the_old_policy_when_it_is_bad() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        std::fs::write(&path, "[read_audit]\nactors = [\"ada\"]\n").unwrap();
        let source = PolicySource::load(Some(&path), false).unwrap();
        let ada = actor("ada", &[]);
        assert!(source.current().check(&ada, Permission::ReadAudit).is_ok());
        // Same size, same second: only an explicit reload is sure to see this change.
        std::fs::write(&path, "[read_audit]\nactors = [\"bob\"]\n").unwrap();
        source.reload().unwrap();
        assert!(source.current().check(&ada, Permission::ReadAudit).is_err());
        std::fs::write(&path, "[read_audit\n").unwrap();
        let err = source.reload().unwrap_err().to_string();
        assert!(err.contains("policy.toml"), "{err}");
        assert!(
            source
                .current()
                .check(&actor("bob", &[]), Permission::ReadAudit)
                .is_ok()
        );
    }

    #[test]
    fn the_file_is_reloaded_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        std::fs::write(&path, "[read_audit]\nroles = [\"a\"]\n").unwrap();
        let source = PolicySource::load(Some(&path), false).unwrap();
        assert!(
            source
                .current()
                .check(&actor("x", &["a"]), Permission::ReadAudit)
                .is_ok()
        );
        // A different size, so the change is seen even within the file system's mtime
        // granularity.
        std::fs::write(&path, "[read_audit]\nroles = [\"bb\"]\n").unwrap();
        std::thread::sleep(POLICY_CHECK_INTERVAL + Duration::from_millis(50));
        let now = source.current();
        assert!(
            now.check(&actor("x", &["bb"]), Permission::ReadAudit)
                .is_ok()
        );
        assert!(
            now.check(&actor("x", &["a"]), Permission::ReadAudit)
                .is_err()
        );
        // A broken file keeps the previous policy.
        std::fs::write(&path, "not toml [").unwrap();
        std::thread::sleep(POLICY_CHECK_INTERVAL + Duration::from_millis(50));
        assert!(
            source
                .current()
                .check(&actor("x", &["bb"]), Permission::ReadAudit)
                .is_ok()
        );
    }
}
