//! The public gRPC services: definitions, instances, audit and cluster.
//!
//! Each handler turns the request into a domain command or query, and the result back into
//! protobuf; nothing else in the node knows the wire types.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use futures::Stream;
use lockstep_core::audit::ChainedRecord;
use lockstep_core::engine::Instance;
use lockstep_core::validate::{CompiledDefinition, compile};
use lockstep_core::{Actor, Limits, RefusalCode, Timestamp};
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

    fn forward(metadata: &MetadataMap) -> bool {
        metadata
            .get("x-lockstep-no-forward")
            .and_then(|v| v.to_str().ok())
            != Some("1")
    }

    pub(crate) async fn write(
        &self,
        metadata: &MetadataMap,
        request_id: &str,
        body: Body,
    ) -> Result<Applied, Status> {
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
        // A follower forwarded it: the answer names the leader, so the client can go there.
        if let Some(leader) = &written.forwarded_to {
            crate::leader_hint::note_forwarded(leader);
        }
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
        Ok(applied)
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

    fn compiled(
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
            compile(None, &stored.source, &Limits::default())
                .map_err(|_| Status::internal("stored definition does not compile"))?,
        );
        let mut cache = self.definitions.lock().expect("cache lock");
        if cache.len() > 256 {
            cache.clear();
        }
        cache.insert(key, Arc::clone(&compiled));
        Ok(Some(compiled))
    }

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
            timers: i
                .timers
                .values()
                .map(|t| pb::Timer {
                    id: t.id.clone(),
                    due_at: t.due_at.to_string(),
                    kind_json: serde_json::to_string(&t.kind).unwrap_or_default(),
                })
                .collect(),
            tasks_json: serde_json::to_string(&i.tasks).unwrap_or_default(),
            incidents_json: serde_json::to_string(&i.incidents).unwrap_or_default(),
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
            };
            Some((
                format!("{verb} task {instance_id} {task_id}"),
                worker.id.clone(),
            ))
        }
        _ => None,
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

pub fn audit_pb(r: &ChainedRecord) -> pb::AuditRecord {
    let rec = &r.record;
    pb::AuditRecord {
        global_seq: r.global_seq,
        instance_seq: r.instance_seq,
        raft_term: r.raft_term,
        raft_index: r.raft_index,
        kind: serde_json::to_value(rec.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        workflow: rec.workflow.clone(),
        instance_id: rec.instance_id.clone(),
        definition_version: rec.definition_version.clone(),
        transition: rec.transition.clone().unwrap_or_default(),
        from: rec.from.clone().unwrap_or_default(),
        to: rec.to.clone().unwrap_or_default(),
        actor_id: rec.actor.id.clone(),
        actor_kind: rec.actor.kind.clone(),
        actor_roles: rec.actor.roles.clone(),
        actor_authn: rec.actor.authn.clone(),
        at: rec.at.to_string(),
        payload_digest: rec.payload_digest.clone().unwrap_or_default(),
        prev_hash: r.prev_hash.clone(),
        hash: r.hash.clone(),
        record_json: serde_json::to_string(r).unwrap_or_default(),
    }
}

fn definition_pb(d: StoredDefinition) -> pb::Definition {
    pb::Definition {
        workflow: d.workflow,
        version: d.version,
        source: d.source,
        provenance: Some(pb::Provenance {
            repository: d.provenance.repository,
            commit: d.provenance.commit,
            path: d.provenance.path,
        }),
        applied_by: d.applied_by,
        applied_at: d.applied_at.to_string(),
    }
}

#[tonic::async_trait]
impl pb::definitions_server::Definitions for Api {
    async fn apply(
        &self,
        request: Request<pb::ApplyDefinitionRequest>,
    ) -> Result<Response<pb::ApplyDefinitionResponse>, Status> {
        let actor = self.actor(request.extensions())?;
        let (metadata, _, req) = request.into_parts();
        let provenance = req
            .provenance
            .map(|p| Provenance {
                repository: p.repository,
                commit: p.commit,
                path: p.path,
            })
            .unwrap_or_default();
        // Validate before proposing, so a broken file costs no log entry and gets every
        // diagnostic; apply validates again, deterministically.
        if let Err(diagnostics) = compile(Some(&provenance.path), &req.source, &Limits::default()) {
            let text: Vec<String> = diagnostics.iter().map(|d| d.to_string()).collect();
            let refusal = lockstep_core::Refusal::new(
                lockstep_core::RefusalCode::DefinitionInvalid,
                format!(
                    "the definition has {} error(s):\n{}",
                    diagnostics.len(),
                    text.join("\n")
                ),
            );
            return Err(status::refusal(&refusal));
        }
        match self
            .write(
                &metadata,
                &req.request_id,
                Body::ApplyDefinition {
                    source: req.source,
                    provenance,
                    actor,
                },
            )
            .await?
        {
            Applied::Definition {
                workflow,
                version,
                created,
            } => Ok(Response::new(pb::ApplyDefinitionResponse {
                workflow,
                version,
                created,
            })),
            Applied::Refused(r) => Err(status::refusal(&r)),
            other => Err(Status::internal(format!("unexpected response {other:?}"))),
        }
    }

    async fn get(
        &self,
        request: Request<pb::GetDefinitionRequest>,
    ) -> Result<Response<pb::Definition>, Status> {
        let req = request.into_inner();
        self.read_info(req.consistency).await?;
        let version = (!req.version.is_empty()).then_some(req.version.as_str());
        let d = read::definition(&*self.node.store, &req.workflow, version)
            .map_err(status::store_error)?;
        d.map(|d| Response::new(definition_pb(d))).ok_or_else(|| {
            Status::not_found(format!(
                "no definition of workflow `{}`{}",
                req.workflow,
                version
                    .map(|v| format!(" at version {v}"))
                    .unwrap_or_default()
            ))
        })
    }

    async fn list_versions(
        &self,
        request: Request<pb::ListDefinitionVersionsRequest>,
    ) -> Result<Response<pb::ListDefinitionVersionsResponse>, Status> {
        let req = request.into_inner();
        self.read_info(req.consistency).await?;
        let versions = read::definition_versions(&*self.node.store, &req.workflow)
            .map_err(status::store_error)?;
        Ok(Response::new(pb::ListDefinitionVersionsResponse {
            versions: versions.into_iter().map(definition_pb).collect(),
        }))
    }
}

#[tonic::async_trait]
impl pb::instances_server::Instances for Api {
    async fn create(
        &self,
        request: Request<pb::CreateInstanceRequest>,
    ) -> Result<Response<pb::InstanceChange>, Status> {
        let actor = self.actor(request.extensions())?;
        let (metadata, _, req) = request.into_parts();
        if req.workflow.is_empty() {
            return Err(status::bad_request(
                "workflow is empty: name the workflow to create an instance of",
            ));
        }
        let data = match json(&req.data_json, "data_json")? {
            serde_json::Value::Null => serde_json::json!({}),
            d => d,
        };
        let key = (!req.key.is_empty()).then_some(req.key);
        change(
            self.write(
                &metadata,
                &req.request_id,
                Body::Create {
                    workflow: req.workflow,
                    key,
                    data,
                    actor,
                },
            )
            .await?,
        )
    }

    async fn transition(
        &self,
        request: Request<pb::TransitionRequest>,
    ) -> Result<Response<pb::InstanceChange>, Status> {
        let actor = self.actor(request.extensions())?;
        let (metadata, _, req) = request.into_parts();
        let target = self.resolve(req.instance)?;
        let payload = json(&req.payload_json, "payload_json")?;
        let body = Body::Transition {
            target,
            transition: req.transition,
            payload,
            actor,
            expected_version: req.expected_version,
        };
        change(self.write(&metadata, &req.request_id, body).await?)
    }

    async fn send_event(
        &self,
        request: Request<pb::SendEventRequest>,
    ) -> Result<Response<pb::InstanceChange>, Status> {
        let actor = self.actor(request.extensions())?;
        let (metadata, _, req) = request.into_parts();
        let target = self.resolve(req.instance)?;
        let payload = json(&req.payload_json, "payload_json")?;
        change(
            self.write(
                &metadata,
                &req.request_id,
                Body::Event {
                    target,
                    event: req.event,
                    payload,
                    actor,
                },
            )
            .await?,
        )
    }

    async fn get(
        &self,
        request: Request<pb::GetInstanceRequest>,
    ) -> Result<Response<pb::GetInstanceResponse>, Status> {
        let req = request.into_inner();
        let target = self.resolve(req.instance)?;
        let info = self.read_info(req.consistency).await?;
        let instance = self.load(&target)?;
        Ok(Response::new(pb::GetInstanceResponse {
            instance: Some(self.instance_pb(&instance)?),
            read: Some(info),
        }))
    }

    async fn list(
        &self,
        request: Request<pb::ListInstancesRequest>,
    ) -> Result<Response<pb::ListInstancesResponse>, Status> {
        let req = request.into_inner();
        if req.workflow.is_empty() {
            return Err(status::bad_request(
                "workflow is empty: listing is per workflow",
            ));
        }
        if req.page_size > PAGE_SIZE_MAX {
            return Err(status::bad_request(format!(
                "page_size {} is more than {PAGE_SIZE_MAX}",
                req.page_size
            )));
        }
        let size = if req.page_size == 0 {
            PAGE_SIZE_DEFAULT
        } else {
            req.page_size
        } as usize;
        let since = if req.updated_since.is_empty() {
            None
        } else {
            Some(Timestamp::parse_rfc3339(&req.updated_since).map_err(status::bad_request)?)
        };
        let sla_filter = match req.sla_status.as_str() {
            "" => None,
            s @ ("running" | "paused" | "stopped" | "warned" | "breached") => Some(s.to_string()),
            other => {
                return Err(status::bad_request(format!(
                    "sla_status `{other}` is not running, paused, stopped, warned or breached"
                )));
            }
        };
        let info = self.read_info(req.consistency).await?;
        let state = (!req.state.is_empty()).then_some(req.state.as_str());
        let after =
            if req.page_token.is_empty() {
                None
            } else {
                let bytes = hex::decode(&req.page_token).map_err(|_| {
                status::bad_request(
                    "page_token is not one this server returned; pass next_page_token as it came",
                )
            })?;
                Some(String::from_utf8(bytes).map_err(|_| {
                    status::bad_request("page_token is not one this server returned")
                })?)
            };
        let ids = read::instance_ids(
            &*self.node.store,
            &req.workflow,
            state,
            after.as_deref(),
            size,
        )
        .map_err(status::store_error)?;
        let next_page_token = if ids.len() == size {
            ids.last()
                .and_then(|id| read::instance(&*self.node.store, id).ok().flatten())
                .map(|i| page_token(state, &i))
                .unwrap_or_default()
        } else {
            String::new()
        };
        let mut instances = Vec::new();
        for id in &ids {
            let Some(i) = read::instance(&*self.node.store, id).map_err(status::store_error)?
            else {
                continue;
            };
            if since.is_some_and(|s| i.updated_at < s) {
                continue;
            }
            if req.open_incidents && !i.incidents.values().any(|x| x.resolved_at.is_none()) {
                continue;
            }
            let pbi = self.instance_pb(&i)?;
            if let Some(want) = &sla_filter {
                let matches = pbi.slas.iter().any(|s| match want.as_str() {
                    "breached" => s.breached,
                    "warned" => s.warned_percent > 0 && !s.breached,
                    status => s.status == status,
                });
                if !matches {
                    continue;
                }
            }
            instances.push(pbi);
        }
        Ok(Response::new(pb::ListInstancesResponse {
            instances,
            next_page_token,
            read: Some(info),
        }))
    }

    async fn history(
        &self,
        request: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        let req = request.into_inner();
        if req.limit > HISTORY_LIMIT_MAX {
            return Err(status::bad_request(format!(
                "limit {} is more than {HISTORY_LIMIT_MAX}",
                req.limit
            )));
        }
        let target = self.resolve(req.instance)?;
        self.read_info(req.consistency).await?;
        let instance = self.load(&target)?;
        let limit = if req.limit == 0 { 1000 } else { req.limit } as usize;
        let records =
            read::history(&*self.node.store, &instance.id, limit).map_err(status::store_error)?;
        Ok(Response::new(pb::HistoryResponse {
            records: records.iter().map(audit_pb).collect(),
        }))
    }

    async fn migrate(
        &self,
        request: Request<pb::MigrateInstancesRequest>,
    ) -> Result<Response<pb::MigrateInstancesResponse>, Status> {
        // The policy's migrate_instances permission was checked by `AuthLayer`.
        let actor = self.actor(request.extensions())?;
        let (metadata, _, req) = request.into_parts();
        let request_id = req.request_id.clone();
        let (plan, selection) = self.migrate_request(req).await?;
        let (from_version, to_version) = (plan.from_version.clone(), plan.to_version.clone());
        let body = Body::Migrate {
            plan,
            selection,
            actor,
        };
        match self.write(&metadata, &request_id, body).await? {
            Applied::Migrated { instances, next } => {
                Ok(Response::new(pb::MigrateInstancesResponse {
                    migrated: u32::try_from(instances.len()).unwrap_or(u32::MAX),
                    instances: instances
                        .into_iter()
                        .map(|m| pb::MigratedInstance {
                            instance_id: m.instance_id,
                            from_state: m.from_state,
                            to_state: m.to_state,
                            version: m.version,
                            audit_seq: m.global_seq,
                        })
                        .collect(),
                    more: next.is_some(),
                    next_page_token: next.as_ref().map(cursor_token).unwrap_or_default(),
                    from_version,
                    to_version,
                }))
            }
            Applied::Refused(r) => Err(status::refusal(&r)),
            other => Err(Status::internal(format!("unexpected response {other:?}"))),
        }
    }
}

impl Api {
    /// A full version of `workflow` from a full version or a unique prefix. A prefix that
    /// matches nothing is passed on as given, so apply refuses it with UNKNOWN_VERSION.
    async fn full_version(
        &self,
        workflow: &str,
        version: &str,
        what: &str,
    ) -> Result<String, Status> {
        if version.is_empty() {
            return Err(status::bad_request(format!(
                "{what} is empty: name a version of `{workflow}` (a prefix as `lockstep apply` prints it is enough)"
            )));
        }
        if version.len() >= 64 {
            return Ok(version.to_string());
        }
        // Versions are never removed, but a lagging replica may not have one yet.
        self.read_info(pb::ReadConsistency::Linearizable as i32)
            .await?;
        let versions =
            read::definition_versions(&*self.node.store, workflow).map_err(status::store_error)?;
        let matching: Vec<&str> = versions
            .iter()
            .map(|d| d.version.as_str())
            .filter(|v| v.starts_with(version))
            .collect();
        match matching.as_slice() {
            [one] => Ok((*one).to_string()),
            [] => Ok(version.to_string()),
            several => Err(status::bad_request(format!(
                "{what} `{version}` matches {} versions of `{workflow}`: give more of it",
                several.len()
            ))),
        }
    }

    async fn migrate_request(
        &self,
        req: pb::MigrateInstancesRequest,
    ) -> Result<(Migration, Selection), Status> {
        if req.workflow.is_empty() {
            return Err(status::bad_request(
                "workflow is empty: name the workflow whose instances to migrate",
            ));
        }
        let timers = match pb::TimerPolicy::try_from(req.timer_policy) {
            Ok(pb::TimerPolicy::KeepDeadline) => TimerPolicy::KeepDeadline,
            Ok(pb::TimerPolicy::KeepRemaining) => TimerPolicy::KeepRemaining,
            Ok(pb::TimerPolicy::Restart) => TimerPolicy::Restart,
            Ok(pb::TimerPolicy::Unspecified) | Err(_) => {
                return Err(status::bad_request(
                    "timer_policy is missing: declare how timers are re-armed (keep-deadline, keep-remaining or restart)",
                ));
            }
        };
        if req.state_mapping.len() > MIGRATION_MAPPING_ENTRIES_MAX {
            return Err(status::bad_request(format!(
                "state_mapping has {} entries, more than {MIGRATION_MAPPING_ENTRIES_MAX}",
                req.state_mapping.len()
            )));
        }
        if let Some((from, to)) = req
            .state_mapping
            .iter()
            .find(|(from, to)| from.is_empty() || to.is_empty())
        {
            return Err(status::bad_request(format!(
                "state_mapping has an empty state name (`{from}` -> `{to}`)"
            )));
        }
        let selection = match (req.all, req.instances.is_empty()) {
            (true, true) => Selection::All {
                after: cursor(&req.page_token)?,
            },
            (false, false) => {
                if !req.page_token.is_empty() {
                    return Err(status::bad_request(
                        "page_token goes with `all`, not with a list of instances",
                    ));
                }
                Selection::Instances(
                    req.instances
                        .into_iter()
                        .map(|r| self.resolve(Some(r)))
                        .collect::<Result<_, _>>()?,
                )
            }
            (true, false) => {
                return Err(status::bad_request(
                    "give either instances or `all`, not both",
                ));
            }
            (false, true) => {
                return Err(status::bad_request(
                    "no instances selected: list instances, or set `all` to migrate every instance at from_version",
                ));
            }
        };
        let plan = Migration {
            from_version: self
                .full_version(&req.workflow, &req.from_version, "from_version")
                .await?,
            to_version: self
                .full_version(&req.workflow, &req.to_version, "to_version")
                .await?,
            workflow: req.workflow,
            mapping: req.state_mapping.into_iter().collect(),
            timers,
        };
        Ok((plan, selection))
    }
}

/// The resume point of an all-instances migration, from its page token.
fn cursor(token: &str) -> Result<Option<MigrationCursor>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || {
        status::bad_request(
            "page_token is not one this server returned; pass next_page_token as it came",
        )
    };
    let text = String::from_utf8(hex::decode(token).map_err(|_| bad())?).map_err(|_| bad())?;
    let (state, instance_id) = text.split_once('\0').ok_or_else(bad)?;
    Ok(Some(MigrationCursor {
        state: state.to_string(),
        instance_id: instance_id.to_string(),
    }))
}

fn cursor_token(cursor: &MigrationCursor) -> String {
    hex::encode(format!("{}\0{}", cursor.state, cursor.instance_id))
}

/// The resume point of a listing: the index key (workflow, state, id) after which the next
/// page starts, hex-encoded so that it is an opaque, printable token.
fn page_token(_state: Option<&str>, i: &Instance) -> String {
    hex::encode(format!("{}\0{}\0{}\0", i.workflow, i.state, i.id))
}

type AuditStream = Pin<Box<dyn Stream<Item = Result<pb::AuditRecord, Status>> + Send>>;

#[tonic::async_trait]
impl pb::audit_server::Audit for Api {
    type TailStream = AuditStream;

    async fn tail(
        &self,
        request: Request<pb::TailAuditRequest>,
    ) -> Result<Response<AuditStream>, Status> {
        let req = request.into_inner();
        // The feed starts linearizable: it holds everything committed before the call, on
        // whichever node serves it, so a consumer resuming elsewhere sees no gap.
        self.read_info(pb::ReadConsistency::Linearizable as i32)
            .await?;
        let node = Arc::clone(&self.node);
        let mut next = req.from_seq.max(1);
        let (tx, rx) = tokio::sync::mpsc::channel(TAIL_BATCH);
        tokio::spawn(async move {
            let mut metrics = node.raft.metrics();
            loop {
                let batch = match read::audit_from(&*node.store, next, TAIL_BATCH) {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = tx.send(Err(status::store_error(e))).await;
                        return;
                    }
                };
                for r in &batch {
                    if tx.send(Ok(audit_pb(r))).await.is_err() {
                        return;
                    }
                    next = r.global_seq + 1;
                }
                if batch.len() < TAIL_BATCH {
                    if !req.follow {
                        return;
                    }
                    tokio::select! {
                        changed = metrics.changed() => if changed.is_err() { return },
                        _ = tx.closed() => return,
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn verify(
        &self,
        request: Request<pb::VerifyAuditRequest>,
    ) -> Result<Response<pb::VerifyAuditResponse>, Status> {
        let at_seq = request.into_inner().at_seq;
        let head = read::audit_head(&*self.node.store).map_err(status::store_error)?;
        let (result, at_hash) =
            read::verify_audit_at(&*self.node.store, at_seq).map_err(status::store_error)?;
        let (ok, records_checked, broken_seq, reason) = match result {
            Ok(n) => (true, n, 0, String::new()),
            Err(b) => (
                false,
                b.global_seq.saturating_sub(1),
                b.global_seq,
                b.reason,
            ),
        };
        Ok(Response::new(pb::VerifyAuditResponse {
            ok,
            records_checked,
            broken_seq,
            reason,
            head_seq: head.seq,
            head_hash: hex_hash(&head.hash),
            at_seq,
            at_hash: at_hash.map(|h| hex_hash(&h)).unwrap_or_default(),
        }))
    }

    async fn security_log(
        &self,
        request: Request<pb::SecurityLogRequest>,
    ) -> Result<Response<pb::SecurityLogResponse>, Status> {
        let req = request.into_inner();
        let limit = if req.limit == 0 {
            usize::MAX
        } else {
            req.limit as usize
        };
        let page = self.node.security.read(req.after_seq, limit);
        Ok(Response::new(pb::SecurityLogResponse {
            events: page.entries.into_iter().map(security_event_pb).collect(),
            total: page.total,
            node_id: self.node.id,
            capacity: SECURITY_LOG_ENTRIES_MAX as u32,
        }))
    }
}

fn security_event_pb(e: SecurityEvent) -> pb::SecurityEvent {
    pb::SecurityEvent {
        seq: e.seq,
        at: e.at,
        kind: e.kind.as_str().to_string(),
        method: e.method,
        actor: e.actor,
        remote: e.remote,
        code: e.code,
        reason: e.reason,
    }
}

fn hex_hash(h: &[u8; 32]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

fn members_pb(members: Vec<(u64, String, bool)>) -> pb::MembershipResponse {
    pb::MembershipResponse {
        members: members
            .into_iter()
            .map(|(id, addr, voter)| pb::Member { id, addr, voter })
            .collect(),
    }
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for Api {
    async fn status(
        &self,
        request: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        let req = request.into_inner();
        let m = self.node.raft.metrics().borrow().clone();
        let (leader_id, leader_addr) = self.node.leader();
        let digest = if req.include_digest {
            read::digest(&*self.node.store).map_err(status::store_error)?
        } else {
            String::new()
        };
        let cluster_time = read::cluster_time(&*self.node.store)
            .map_err(status::store_error)?
            .map(|t| t.to_string())
            .unwrap_or_default();
        Ok(Response::new(pb::ClusterStatus {
            node_id: self.node.id,
            leader_id: leader_id.unwrap_or(0),
            leader_addr: leader_addr.unwrap_or_default(),
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            digest,
            members: members_pb(self.node.member_list()).members,
            role: format!("{:?}", m.state),
            snapshot_index: m.snapshot.map(|l| l.index).unwrap_or(0),
            cluster_time,
            space_alarm: self.node.space.refusal().unwrap_or_default(),
            data_dir_free_bytes: self.node.space.last().free_bytes,
            store_bytes: self.node.space.last().store_bytes,
        }))
    }

    async fn add_learner(
        &self,
        request: Request<pb::AddLearnerRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        self.actor(request.extensions())?;
        let forward = Self::forward(request.metadata());
        let req = request.into_inner();
        if req.node_id == 0 || !req.addr.contains(':') {
            return Err(status::bad_request(
                "give a positive node_id and its host:port address",
            ));
        }
        let members = self
            .node
            .add_learner(req.node_id, req.addr, forward)
            .await
            .map_err(status::write_error)?;
        Ok(Response::new(members_pb(members)))
    }

    async fn promote(
        &self,
        request: Request<pb::PromoteRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        self.actor(request.extensions())?;
        let forward = Self::forward(request.metadata());
        let req = request.into_inner();
        let known: Vec<u64> = self.node.member_list().iter().map(|m| m.0).collect();
        if let Some(missing) = req.node_ids.iter().find(|id| !known.contains(id)) {
            return Err(Status::not_found(format!(
                "node {missing} is not a member; add it as a learner first"
            )));
        }
        let members = self
            .node
            .promote(req.node_ids, forward)
            .await
            .map_err(status::write_error)?;
        Ok(Response::new(members_pb(members)))
    }

    async fn remove(
        &self,
        request: Request<pb::RemoveRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        self.actor(request.extensions())?;
        let forward = Self::forward(request.metadata());
        let req = request.into_inner();
        if !self.node.member_list().iter().any(|m| m.0 == req.node_id) {
            return Err(Status::not_found(format!(
                "node {} is not a member",
                req.node_id
            )));
        }
        let members = self
            .node
            .remove(req.node_id, forward)
            .await
            .map_err(status::write_error)?;
        Ok(Response::new(members_pb(members)))
    }

    async fn snapshot(
        &self,
        request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<pb::SnapshotResponse>, Status> {
        self.actor(request.extensions())?;
        let applied = self
            .node
            .raft
            .metrics()
            .borrow()
            .last_applied
            .map(|l| l.index);
        self.node
            .raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let waited = self
            .node
            .raft
            .wait(Some(std::time::Duration::from_secs(30)))
            .metrics(|m| m.snapshot.map(|s| s.index) >= applied, "snapshot built")
            .await
            .map_err(|e| Status::deadline_exceeded(format!("snapshot not finished: {e}")))?;
        Ok(Response::new(pb::SnapshotResponse {
            last_index: waited.snapshot.map(|s| s.index).unwrap_or(0),
        }))
    }

    async fn backup(
        &self,
        request: Request<pb::BackupRequest>,
    ) -> Result<Response<pb::BackupResponse>, Status> {
        self.actor(request.extensions())?;
        let info = crate::backup::online(&self.node, &request.into_inner().name).await?;
        Ok(Response::new(pb::BackupResponse {
            node_id: self.node.id,
            path: info.path.display().to_string(),
            applied_index: info.applied.map(|l| l.index).unwrap_or(0),
            applied_term: info.applied.map(|l| l.leader_id.term).unwrap_or(0),
            bytes: info.bytes,
        }))
    }
}
