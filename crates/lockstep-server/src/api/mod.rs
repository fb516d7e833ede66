//! The public gRPC services: definitions, instances, audit and cluster.
//!
//! Each handler turns the request into a domain command or query, and the result back into
//! protobuf; nothing else in the node knows the wire types. One file per service:
//! [`definitions`], [`instances`] (with [`actions`]: what the caller may do now, and its
//! inbox), [`audit`] and [`cluster`]; this file holds [`Api`], what
//! they share (authentication, the write path with its security log, conversions of
//! instances) and the request bounds.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use futures::Stream;
use lockstep_core::audit::ChainedRecord;
use lockstep_core::engine::Instance;
use lockstep_core::validate::{CompiledDefinition, compile};
use lockstep_core::{Actor, RefusalCode, Timestamp};
use lockstep_core::{Migration, TimerPolicy};
use lockstep_proto::v1 as pb;
use lockstep_raft::apply::StoredDefinition;
use lockstep_raft::{
    Body, MigrationCursor, Provenance, Response as Applied, Selection, Target, TaskOp, read,
};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use crate::cluster::wall_clock;
use crate::node::Node;
use crate::security_log::{RefusalKind, SECURITY_LOG_ENTRIES_MAX, SecurityEvent};
use crate::status;
use crate::trust::Authenticated;

mod actions;
mod audit;
mod cluster;
mod definitions;
mod instances;
mod schedules;
mod search;
mod subscriptions;

pub use audit::audit_pb;

/// A write's outcome, and the leader's address when this node forwarded the write to it.
pub(crate) struct Answer {
    pub(crate) applied: Applied,
    pub(crate) forwarded_to: Option<String>,
}

impl Answer {
    /// The client's answer: `respond` turns the outcome into a response or a status, which
    /// names the leader when a follower forwarded the write, so the client can go there.
    pub(crate) fn respond<T>(
        self,
        respond: impl FnOnce(Applied) -> Result<Response<T>, Status>,
    ) -> Result<Response<T>, Status> {
        crate::leader_hint::name_leader(self.forwarded_to.as_deref(), respond(self.applied))
    }
}

/// Largest page a list request may ask for.
pub const PAGE_SIZE_MAX: u32 = 500;
pub const PAGE_SIZE_DEFAULT: u32 = 100;
/// Largest history a request may ask for.
pub const HISTORY_LIMIT_MAX: u32 = 10_000;
/// Audit records sent per read while tailing.
const TAIL_BATCH: usize = 256;
/// Most entries of a migration's state mapping (a definition has far fewer states).
pub const MIGRATION_MAPPING_ENTRIES_MAX: usize = 1024;

/// Compiled definitions by (workflow, version).
type CompiledByVersion = HashMap<(String, String), Arc<CompiledDefinition>>;

/// Shared by every service: the node and a cache of compiled definitions for queries.

#[derive(Debug, Clone)]
pub struct Api {
    pub node: Arc<Node>,
    definitions: Arc<Mutex<CompiledByVersion>>,
    /// The polls this node serves, within their bounds (`tasks.rs`).
    pub(crate) polls: Arc<crate::polls::PollPlaces>,
    /// Ready tasks a poll on this node is proposing a lease for (`tasks.rs`).
    pub(crate) lease_claims: Arc<crate::polls::LeaseClaims>,
}

impl Api {
    pub fn new(node: Arc<Node>) -> Api {
        Api {
            node,
            definitions: Arc::new(Mutex::new(HashMap::new())),
            polls: Arc::default(),
            lease_claims: Arc::default(),
        }
    }

    /// The caller, as [`crate::trust::AuthLayer`] authenticated it (a JWT or client
    /// certificate; in development mode the `x-lockstep-actor` headers).
    pub(crate) fn actor(&self, extensions: &tonic::Extensions) -> Result<Actor, Status> {
        match extensions.get::<Authenticated>() {
            Some(Authenticated(actor)) => Ok(actor.clone()),
            None if self.node.config.dev => Err(Status::unauthenticated(
                "missing the x-lockstep-actor header: in development mode it names the caller, e.g. alice",
            )),
            None => Err(Status::unauthenticated(crate::trust::HOW_TO_AUTHENTICATE)),
        }
    }

    /// Refuses a read of `workflow`'s instances that the cluster policy does not give the
    /// caller (`[read_instances.<workflow>]`; without a rule anyone may read, and a caller
    /// that named no actor in development mode reads as before). A refusal is recorded in the
    /// security log like any other.
    pub(crate) fn check_read(
        &self,
        extensions: &tonic::Extensions,
        workflow: &str,
        method: &str,
    ) -> Result<(), Status> {
        let policy = self.node.trust.policy.current();
        let actor = match extensions.get::<Authenticated>() {
            Some(Authenticated(actor)) => actor,
            None if policy.may_read(None, workflow) => return Ok(()),
            None => {
                return Err(Status::unauthenticated(format!(
                    "the instances of workflow `{workflow}` are readable only by the actors the cluster policy names: name the caller (x-lockstep-actor, a token or a client certificate)"
                )));
            }
        };
        policy
            .check_read(actor, workflow)
            .map_err(|denied| self.denied(method, actor, denied.to_string()))
    }

    /// A PERMISSION_DENIED for `actor` on `method`, recorded in the security log.
    fn denied(&self, method: &str, actor: &lockstep_core::Actor, message: String) -> Status {
        let status = Status::permission_denied(message);
        self.node.security.record(
            RefusalKind::Authorization,
            method,
            &actor.id,
            "",
            "PERMISSION_DENIED",
            status.message(),
        );
        status
    }

    /// The command journal (`Instances/History` with `commands`) holds payloads, creation
    /// data and the actors' token claims, which audit records leave out: reading it needs the
    /// cluster policy's `read_audit` besides the workflow's read rule.
    pub(crate) fn check_journal_read(
        &self,
        extensions: &tonic::Extensions,
        method: &str,
    ) -> Result<(), Status> {
        let policy = self.node.trust.policy.current();
        let permission = crate::policy::Permission::ReadAudit;
        let actor = match extensions.get::<Authenticated>() {
            Some(Authenticated(actor)) => actor,
            None if policy.allow_all => return Ok(()),
            None => {
                return Err(Status::unauthenticated(
                    "the command journal (History with commands) is readable only with the cluster policy's read_audit: name the caller (x-lockstep-actor, a token or a client certificate)",
                ));
            }
        };
        policy.check(actor, permission).map_err(|denied| {
            self.denied(
                method,
                actor,
                format!(
                    "{denied} (History with commands returns the command journal: payloads, data and token claims)"
                ),
            )
        })
    }

    fn forward(metadata: &MetadataMap) -> bool {
        metadata
            .get(lockstep_proto::names::NO_FORWARD_HEADER)
            .and_then(|v| v.to_str().ok())
            != Some("1")
    }

    /// Refuses `rpc` until the replicated log format is at least `version`: a member of an
    /// older build could not decode the entry. `remedy` says what the caller can do.
    pub(crate) fn require_format(
        &self,
        version: u32,
        rpc: &str,
        remedy: &str,
    ) -> Result<(), Status> {
        let format = read::log_format(&*self.node.store).map_err(status::store_error)?;
        if format.at_least(version) {
            return Ok(());
        }
        Err(Status::failed_precondition(format!(
            "the cluster's log format is {}, older than {version} ({rpc}): some member runs an older build, or the format gate has not raised it yet; {remedy}",
            format.0
        )))
    }

    pub(crate) async fn write(
        &self,
        metadata: &MetadataMap,
        request_id: &str,
        body: Body,
    ) -> Result<Answer, Status> {
        if request_id.is_empty() {
            return Err(status::bad_request(
                "request_id is empty: every mutating request carries a client-chosen id (reuse it when retrying)",
            ));
        }
        if request_id.len() > 128 {
            return Err(status::bad_request("request_id is longer than 128 bytes"));
        }
        let attempt = trust_relevant(&body);
        let written = self
            .node
            .client_write(request_id.to_string(), body, Self::forward(metadata))
            .await
            .map_err(status::write_error)?;
        let applied = written.response;
        if let (Applied::Refused(refusal), Some((method, actor))) = (&applied, attempt)
            && matches!(
                refusal.code,
                RefusalCode::Forbidden
                    | RefusalCode::SystemOnly
                    | RefusalCode::GateNotYetOpen
                    | RefusalCode::GateExpired
            )
        {
            self.node.security.record(
                RefusalKind::Engine,
                &method,
                &actor,
                "",
                refusal.code.as_str(),
                &refusal.message,
            );
        }
        Ok(Answer {
            applied,
            forwarded_to: written.forwarded_to,
        })
    }

    pub(crate) async fn read_info(&self, consistency: i32) -> Result<pb::ReadInfo, Status> {
        let stale = consistency == pb::ReadConsistency::Stale as i32;
        if !stale {
            self.node
                .read_barrier()
                .await
                .map_err(status::write_error)?;
        }
        let applied = self
            .node
            .raft
            .metrics()
            .borrow()
            .last_applied
            .map(|l| l.index)
            .unwrap_or(0);
        Ok(pb::ReadInfo {
            stale,
            node_id: self.node.id,
            applied_index: applied,
        })
    }

    pub(crate) fn compiled(
        &self,
        workflow: &str,
        version: &str,
    ) -> Result<Option<Arc<CompiledDefinition>>, Status> {
        let key = (workflow.to_string(), version.to_string());
        if let Some(hit) = self.definitions.lock().expect("cache lock").get(&key) {
            return Ok(Some(Arc::clone(hit)));
        }
        let Some(stored) = read::definition(&*self.node.store, workflow, Some(version))
            .map_err(status::store_error)?
        else {
            return Ok(None);
        };
        let compiled = Arc::new(
            compile(
                None,
                &stored.source,
                &lockstep_raft::replicated::apply_limits(),
            )
            .map_err(|_| Status::internal("stored definition does not compile"))?,
        );
        let mut cache = self.definitions.lock().expect("cache lock");
        if cache.len() > lockstep_raft::apply::DEFINITION_CACHE_MAX {
            cache.clear();
        }
        cache.insert(key, Arc::clone(&compiled));
        Ok(Some(compiled))
    }

    /// The latest version of `workflow`, compiled (`None`: no such workflow).
    pub(crate) fn latest_compiled(
        &self,
        workflow: &str,
    ) -> Result<Option<Arc<CompiledDefinition>>, Status> {
        let Some(stored) =
            read::definition(&*self.node.store, workflow, None).map_err(status::store_error)?
        else {
            return Ok(None);
        };
        self.compiled(workflow, &stored.version)
    }

    // The deprecated JSON fields are still filled for one release (issue 19).
    #[allow(deprecated)]
    pub(crate) fn instance_pb(&self, i: &Instance) -> Result<pb::Instance, Status> {
        let now = wall_clock();
        let slas = match self.compiled(&i.workflow, &i.definition_version)? {
            Some(def) => i
                .sla_views(&def, now)
                .into_iter()
                .map(|(name, v)| pb::Sla {
                    name,
                    status: format!("{:?}", v.status).to_lowercase(),
                    breached: v.breached,
                    warned_percent: v.warned.map(u32::from).unwrap_or(0),
                    remaining_ms: v.remaining_ms,
                    consumed_ms: v.consumed_ms,
                })
                .collect(),
            None => Vec::new(),
        };
        Ok(pb::Instance {
            id: i.id.clone(),
            workflow: i.workflow.clone(),
            definition_version: i.definition_version.clone(),
            key: i.key.clone().unwrap_or_default(),
            state: i.state.clone(),
            data_json: i.data.to_string(),
            created_by: i.created_by.clone(),
            created_at: i.created_at.to_string(),
            entered_at: i.entered_at.to_string(),
            updated_at: i.updated_at.to_string(),
            version: i.version,
            slas,
            timers: i.timers.values().map(timer_pb).collect(),
            tasks_json: serde_json::to_string(&i.tasks).unwrap_or_default(),
            incidents_json: serde_json::to_string(&i.incidents).unwrap_or_default(),
            tasks: i.tasks.values().map(task_pb).collect(),
            incidents: i.incidents.values().map(incident_pb).collect(),
        })
    }

    pub(crate) fn resolve(&self, r: Option<pb::InstanceRef>) -> Result<Target, Status> {
        match r.and_then(|r| r.target) {
            Some(pb::instance_ref::Target::Id(id)) if !id.is_empty() => Ok(Target::Id(id)),
            Some(pb::instance_ref::Target::Key(k))
                if !k.workflow.is_empty() && !k.key.is_empty() =>
            {
                Ok(Target::Key {
                    workflow: k.workflow,
                    key: k.key,
                })
            }
            _ => Err(status::bad_request(
                "instance is missing: give an instance id or a (workflow, key) pair",
            )),
        }
    }

    pub(crate) fn load(&self, target: &Target) -> Result<Instance, Status> {
        let id = match target {
            Target::Id(id) => id.clone(),
            Target::Key { workflow, key } => {
                read::instance_id_by_key(&*self.node.store, workflow, key)
                    .map_err(status::store_error)?
                    .ok_or_else(|| {
                        Status::not_found(format!(
                            "workflow `{workflow}` has no instance with key `{key}`"
                        ))
                    })?
            }
        };
        read::instance(&*self.node.store, &id)
            .map_err(status::store_error)?
            .ok_or_else(|| Status::not_found(format!("no instance `{id}`")))
    }
}

/// What a command attempts and who attempts it, for the security log should the engine refuse
/// it for a trust or time reason.
fn trust_relevant(body: &Body) -> Option<(String, String)> {
    let target = |t: &Target| match t {
        Target::Id(id) => id.clone(),
        Target::Key { workflow, key } => format!("{workflow}/{key}"),
    };
    match body {
        Body::ApplyDefinition { actor, .. } => Some(("apply definition".into(), actor.id.clone())),
        Body::Create {
            workflow, actor, ..
        } => Some((format!("create {workflow}"), actor.id.clone())),
        Body::Transition {
            target: t,
            transition,
            actor,
            ..
        } => Some((
            format!("transition {} {transition}", target(t)),
            actor.id.clone(),
        )),
        Body::Event {
            target: t,
            event,
            actor,
            ..
        } => Some((format!("event {} {event}", target(t)), actor.id.clone())),
        Body::ResolveIncident {
            instance_id,
            incident_id,
            actor,
            ..
        } => Some((
            format!("resolve incident {instance_id} {incident_id}"),
            actor.id.clone(),
        )),
        Body::Redact {
            target: t,
            fields,
            actor,
        } => Some((
            format!("redact {} {}", target(t), fields.join(",")),
            actor.id.clone(),
        )),
        Body::Task {
            instance_id,
            task_id,
            op,
        } => {
            let (verb, worker) = match op {
                TaskOp::Lease { worker } => ("lease", worker),
                TaskOp::Heartbeat { worker, .. } => ("heartbeat", worker),
                TaskOp::Complete { worker, .. } => ("complete", worker),
                TaskOp::Fail { worker, .. } => ("fail", worker),
                TaskOp::Release { worker, .. } => ("release", worker),
            };
            Some((
                format!("{verb} task {instance_id} {task_id}"),
                worker.id.clone(),
            ))
        }
        _ => None,
    }
}

/// The snake_case name an engine enum serializes as (`ready`, `state_expiry`).
fn name_of(value: &impl serde::Serialize) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| match v {
            serde_json::Value::String(name) => Some(name),
            serde_json::Value::Object(map) => map.keys().next().cloned(),
            _ => None,
        })
        .unwrap_or_default()
}

#[allow(deprecated)]
fn timer_pb(t: &lockstep_core::engine::Timer) -> pb::Timer {
    use lockstep_core::engine::TimerKind;
    let mut timer = pb::Timer {
        id: t.id.clone(),
        due_at: t.due_at.to_string(),
        kind_json: serde_json::to_string(&t.kind).unwrap_or_default(),
        kind: name_of(&t.kind),
        ..Default::default()
    };
    match &t.kind {
        TimerKind::StateExpiry { state, transition } => {
            timer.state = state.clone();
            timer.transition = transition.clone();
        }
        TimerKind::SlaWarning { sla, percent } => {
            timer.sla = sla.clone();
            timer.percent = u32::from(*percent);
        }
        TimerKind::SlaBreach { sla } => timer.sla = sla.clone(),
        TimerKind::TaskLease { task_id, attempt } | TimerKind::TaskRetry { task_id, attempt } => {
            timer.task_id = task_id.clone();
            timer.attempt = *attempt;
        }
    }
    timer
}

fn task_pb(t: &lockstep_core::engine::Task) -> pb::Task {
    let time = |t: Option<Timestamp>| t.map(|t| t.to_string()).unwrap_or_default();
    pb::Task {
        id: t.id.clone(),
        queue: t.queue.clone(),
        task_type: t.task_type.clone(),
        origin: t.origin.clone(),
        status: name_of(&t.status),
        attempt: t.attempt,
        lease: t.lease.map(|l| pb::LeaseToken {
            term: l.term,
            attempt: l.attempt,
        }),
        worker: t.worker.clone().unwrap_or_default(),
        lease_expires_at: time(t.lease_expires_at),
        first_attempt_at: time(t.first_attempt_at),
        timeout_ms: t.timeout_ms,
        on_complete: t.on_complete.clone().unwrap_or_default(),
        on_exhausted: t.on_exhausted.clone().unwrap_or_default(),
        last_error: t.last_error.clone().unwrap_or_default(),
        input_json: t.input.to_string(),
        result_json: t.result.as_ref().map(|r| r.to_string()).unwrap_or_default(),
        created_version: t.created.0,
        created_effect: t.created.1,
    }
}

fn incident_pb(i: &lockstep_core::engine::Incident) -> pb::Incident {
    pb::Incident {
        id: i.id.clone(),
        task_id: i.task_id.clone().unwrap_or_default(),
        reason: i.reason.clone(),
        opened_at: i.opened_at.to_string(),
        resolved_at: i.resolved_at.map(|t| t.to_string()).unwrap_or_default(),
    }
}

pub(crate) fn json(text: &str, what: &str) -> Result<serde_json::Value, Status> {
    if text.trim().is_empty() {
        return Ok(serde_json::Value::Null);
    }
    serde_json::from_str(text)
        .map_err(|e| status::bad_request(format!("{what} is not valid JSON: {e}")))
}

pub(crate) fn change(applied: Applied) -> Result<Response<pb::InstanceChange>, Status> {
    match applied {
        Applied::Applied {
            instance_id,
            version,
            state,
            global_seq,
        } => Ok(Response::new(pb::InstanceChange {
            instance_id,
            version,
            state,
            audit_seq: global_seq,
        })),
        Applied::Refused(r) => Err(status::refusal(&r)),
        other => Err(Status::internal(format!("unexpected response {other:?}"))),
    }
}
