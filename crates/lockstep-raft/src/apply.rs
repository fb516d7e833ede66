//! Applying committed entries: the core engine's outcome turned into one store batch.
//!
//! An [`Applier`] collects the writes of a run of entries in an overlay, so that a later entry
//! (or a later timer of the same `FireTimers`) sees what an earlier one wrote, and the whole
//! run becomes a single atomic batch with the last applied log id in it. Nothing here reads a
//! clock: cluster time comes from the proposal, made strictly monotonic.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use lockstep_core::audit::{ActorRecord, ChainedRecord};
use lockstep_core::engine::{Command, Effect, Instance, Outcome, TaskStatus};
use lockstep_core::validate::{CompiledDefinition, compile};
use lockstep_core::{
    Actor, AuditKind, AuditRecord, Migration, Refusal, RefusalCode, Timestamp, evaluate_under,
    migrate,
};
use lockstep_store::{Batch, Family, Store, envelope, keys};
use openraft::{Entry, EntryPayload, LogId, StoredMembership};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::format::{LOG_FORMAT_BATCHES, LogFormat};
use crate::replicated::{
    DEDUP_EXPIRE_BATCH_MAX, DEDUP_RETENTION_MS, LEASES_PER_WORKER_MAX, MIGRATION_INSTANCES_MAX,
    MIGRATION_SCAN_MAX, OUTBOX_ACK_BATCH_MAX, apply_limits,
};
use crate::types::{
    Body, Member, Migrated, MigrationCursor, NodeId, Proposal, Provenance, Response, Selection,
    Target, TaskOp, TypeConfig,
};

/// Meta keys (family `Meta`, replicated).
pub mod meta {
    pub const APPLIED: &[u8] = b"applied";
    pub const MEMBERSHIP: &[u8] = b"membership";
    pub const TIME: &[u8] = b"time";
    pub const AUDIT_HEAD: &[u8] = b"audit_head";
    pub const OUTBOX_SEQ: &[u8] = b"outbox_seq";
    /// The last outbox sequence the leader dispatched and acknowledged.
    pub const OUTBOX_ACKED: &[u8] = b"outbox_acked";
    /// The replicated log format (`crate::format`); absent means format 1.
    pub const LOG_FORMAT: &[u8] = b"log_format";

    /// The meta values that only apply writes, which [`super::ApplyCache`] keeps between
    /// apply runs so that a run reads none of them from the store. (The applied id and the
    /// membership are written by every run and read only by openraft at start-up.)
    pub const CACHED: [&[u8]; 5] = [TIME, AUDIT_HEAD, OUTBOX_SEQ, OUTBOX_ACKED, LOG_FORMAT];

    /// `key` as one of [`CACHED`], if it is one.
    pub fn cached(key: &[u8]) -> Option<&'static [u8]> {
        CACHED.iter().copied().find(|c| *c == key)
    }
}

/// A request id's entry in the dedup table (envelope version 2; version 1 stored the
/// `(Response, Timestamp)` pair alone, which still reads, with no digest to compare).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DedupEntry {
    pub response: Response,
    pub at: Timestamp,
    /// SHA-256 of the request (kind, target, transition or event, payload or data, actor):
    /// the same id with another request is refused with REQUEST_ID_REUSED. `None` only for
    /// an entry read from version 1, which stored none.
    pub digest: Option<[u8; 32]>,
    /// The first request's kind and target, for that refusal's message.
    pub request: String,
}

/// The digest of what a request asks: its body without cluster time. Deterministic: bincode
/// of our own types, whose JSON values are encoded as canonical text.
fn request_digest(body: &Body) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let bytes = bincode::serialize(body).expect("in-memory bincode encoding cannot fail");
    Sha256::digest(&bytes).into()
}

fn show_target(target: &Target) -> String {
    match target {
        Target::Id(id) => id.clone(),
        Target::Key { workflow, key } => format!("{workflow}/{key}"),
    }
}

/// A request's kind and target in words, for REQUEST_ID_REUSED.
fn describe_request(body: &Body) -> String {
    match body {
        Body::Create { workflow, key, .. } => match key {
            Some(key) => format!("create of {workflow}/{key}"),
            None => format!("create of a {workflow} instance"),
        },
        Body::Transition {
            target, transition, ..
        } => format!("transition `{transition}` of {}", show_target(target)),
        Body::Event { target, event, .. } => {
            format!("event `{event}` to {}", show_target(target))
        }
        Body::Task {
            instance_id,
            task_id,
            ..
        } => format!("task operation on {instance_id} task {task_id}"),
        Body::ResolveIncident {
            instance_id,
            incident_id,
            ..
        } => format!("resolution of incident {incident_id} of {instance_id}"),
        Body::ApplyDefinition { provenance, .. } => {
            format!("definition apply of {}", provenance.path)
        }
        other => other.name().replace('_', " "),
    }
}

/// Most compiled definitions kept in memory per node (node-local: the cache only saves
/// compiling again, so replicas may differ).
pub const DEFINITION_CACHE_MAX: usize = 256;

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

/// An effect waiting in the outbox for the leader to dispatch it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutboxItem {
    pub seq: u64,
    pub instance_id: String,
    pub workflow: String,
    pub effect: Effect,
    pub at: Timestamp,
    pub audit_seq: u64,
}

/// The global audit chain head.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditHead {
    pub seq: u64,
    pub hash: [u8; 32],
}

/// Key builders for the state families.
pub mod key {
    use lockstep_store::keys;

    pub fn definition(workflow: &str, version: &str) -> Vec<u8> {
        let mut k = b"v\0".to_vec();
        keys::push_str(&mut k, workflow);
        keys::push_str(&mut k, version);
        k
    }
    pub fn latest_definition(workflow: &str) -> Vec<u8> {
        let mut k = b"l\0".to_vec();
        keys::push_str(&mut k, workflow);
        k
    }
    pub fn workflow_state(workflow: &str, state: &str, id: &str) -> Vec<u8> {
        keys::strs(&[workflow, state, id])
    }
    pub fn business_key(workflow: &str, key: &str) -> Vec<u8> {
        keys::strs(&[workflow, key])
    }
    pub fn audit_by_instance(id: &str, seq: u64) -> Vec<u8> {
        let mut k = keys::strs(&[id]);
        keys::push_u64(&mut k, seq);
        k
    }
    pub fn timer_due(due_at_micros: i64, timer_id: &str) -> Vec<u8> {
        let mut k = Vec::new();
        keys::push_i64(&mut k, due_at_micros);
        keys::push_str(&mut k, timer_id);
        k
    }
    pub fn timer_owner(instance_id: &str, timer_id: &str) -> Vec<u8> {
        keys::strs(&[instance_id, timer_id])
    }
    pub fn task(queue: &str, task_id: &str) -> Vec<u8> {
        keys::strs(&[queue, task_id])
    }
    /// The number of tasks a worker holds leased (family `Meta`).
    pub fn worker_leases(worker: &str) -> Vec<u8> {
        let mut k = b"leases\0".to_vec();
        keys::push_str(&mut k, worker);
        k
    }
    pub fn dedup_by_time(at_micros: i64, request_id: &str) -> Vec<u8> {
        let mut k = Vec::new();
        keys::push_i64(&mut k, at_micros);
        keys::push_str(&mut k, request_id);
        k
    }
}

/// What apply keeps in memory between runs: compiled definitions by (workflow, version),
/// and the stored bytes of the meta values only apply writes ([`meta::CACHED`]; `None`:
/// absent). Bounded and safely discardable: the owner clears it whenever the store changes
/// other than by writing a batch this cache's [`Applier`] handed out (a snapshot install, a
/// failed write).
#[derive(Debug, Default)]
pub struct ApplyCache {
    compiled: HashMap<(String, String), Arc<CompiledDefinition>>,
    meta: HashMap<&'static [u8], Option<Vec<u8>>>,
}

impl ApplyCache {
    pub fn clear(&mut self) {
        self.compiled.clear();
        self.meta.clear();
    }
}

/// Writes pending in this apply run, visible to later reads of the same run.
#[derive(Debug, Default)]
struct Overlay {
    /// The last value written to each key in this run (`None`: deleted). The batch is made
    /// from it at the end, so a key written by every request of a group (the applied id,
    /// cluster time, audit head) is written once, and nothing is held twice.
    writes: BTreeMap<Family, BTreeMap<Vec<u8>, Option<Vec<u8>>>>,
    /// The earliest due time (micros) of the timers this run armed.
    earliest_armed: Option<i64>,
    /// Whether this run wrote outbox items (the leader's dispatcher has work).
    queued_outbox: bool,
    /// Whether this run made a task ready (waiting polls on this node have work).
    readied_task: bool,
}

#[derive(Debug)]
pub struct Applier<'a, S: Store> {
    store: &'a S,
    cache: &'a mut ApplyCache,
    overlay: Overlay,
    /// The position of the request being applied within its entry's batch (0 for an entry
    /// that is not a batch): with the log index it names what a request creates.
    position: u32,
    /// The replicated log format, read once per run and kept current by `SetLogFormat`.
    format: Option<LogFormat>,
    /// Cached meta values this run read from the store (the cache had none): they join the
    /// cache when the batch is handed out.
    meta_reads: RefCell<Vec<MetaValue>>,
}

type StoreResult<T> = lockstep_store::Result<T>;

/// A cached meta key and its stored bytes (`None`: absent).
type MetaValue = (&'static [u8], Option<Vec<u8>>);

impl<'a, S: Store> Applier<'a, S> {
    pub fn new(store: &'a S, cache: &'a mut ApplyCache) -> Self {
        Applier {
            store,
            cache,
            overlay: Overlay::default(),
            position: 0,
            format: None,
            meta_reads: RefCell::default(),
        }
    }

    /// The earliest due time (micros) of the timers the applied entries armed, if any: the
    /// timer service's scan of the due index must not start after it
    /// ([`crate::state_machine::Applied`]).
    pub fn earliest_armed(&self) -> Option<i64> {
        self.overlay.earliest_armed
    }

    /// Whether the applied entries wrote outbox items.
    pub fn queued_outbox(&self) -> bool {
        self.overlay.queued_outbox
    }

    /// Whether the applied entries made a task ready.
    pub fn readied_task(&self) -> bool {
        self.overlay.readied_task
    }

    /// The batch to write: everything the applied entries changed. The cache now holds the
    /// meta values as this batch leaves them: the caller writes it, or clears the cache.
    pub fn into_batch(self) -> Batch {
        for (key, value) in self.meta_reads.into_inner() {
            self.cache.meta.entry(key).or_insert(value);
        }
        if let Some(writes) = self.overlay.writes.get(&Family::Meta) {
            for (key, value) in writes {
                if let Some(cached) = meta::cached(key) {
                    self.cache.meta.insert(cached, value.clone());
                }
            }
        }
        let mut batch = Batch::default();
        for (family, writes) in self.overlay.writes {
            for (key, value) in writes {
                match value {
                    Some(value) => batch.put(family, key, value),
                    None => batch.delete(family, key),
                }
            }
        }
        batch
    }

    /// This run's pending write of `key`, if any: `Some(None)` is a pending delete.
    fn pending(&self, family: Family, key: &[u8]) -> Option<&Option<Vec<u8>>> {
        self.overlay.writes.get(&family)?.get(key)
    }

    /// `key`'s value as this run sees it, handed to `f`: this run's pending write, else the
    /// cached meta value, else the store.
    fn with_value<R>(
        &self,
        family: Family,
        key: &[u8],
        f: impl FnOnce(Option<&[u8]>) -> StoreResult<R>,
    ) -> StoreResult<R> {
        if let Some(pending) = self.pending(family, key) {
            return f(pending.as_deref());
        }
        let cached = (family == Family::Meta)
            .then(|| meta::cached(key))
            .flatten();
        if let Some(hit) = cached.and_then(|c| self.cache.meta.get(c)) {
            return f(hit.as_deref());
        }
        let stored = self.store.get(family, key)?;
        let answer = f(stored.as_deref());
        if let Some(cached) = cached {
            self.meta_reads.borrow_mut().push((cached, stored));
        }
        answer
    }

    fn get_raw(&self, family: Family, key: &[u8]) -> StoreResult<Option<Vec<u8>>> {
        self.with_value(family, key, |v| Ok(v.map(<[u8]>::to_vec)))
    }

    fn get<T: DeserializeOwned>(&self, family: Family, key: &[u8]) -> StoreResult<Option<T>> {
        self.with_value(family, key, |v| {
            v.map(|bytes| envelope::decode(family, key, bytes))
                .transpose()
        })
    }

    fn put<T: Serialize>(&mut self, family: Family, key: Vec<u8>, value: &T) {
        self.put_as(envelope::VERSION, family, key, value)
    }

    fn put_as<T: Serialize>(&mut self, version: u8, family: Family, key: Vec<u8>, value: &T) {
        let bytes = envelope::encode_as(version, value);
        self.overlay
            .writes
            .entry(family)
            .or_default()
            .insert(key, Some(bytes));
    }

    fn delete(&mut self, family: Family, key: Vec<u8>) {
        self.overlay
            .writes
            .entry(family)
            .or_default()
            .insert(key, None);
    }

    /// The first `limit` entries of `family` in `[start, end)` as this run sees them: the
    /// store with the overlay's pending writes and deletes on top. Scans must not read the
    /// store alone: how entries are grouped into apply runs differs between replicas (a
    /// follower catching up applies many at once), and every replica must see the same.
    fn range(
        &self,
        family: Family,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> StoreResult<Vec<(Vec<u8>, Vec<u8>)>> {
        let in_range = |k: &[u8]| k >= start && end.is_none_or(|e| k < e);
        let pending: Vec<(&Vec<u8>, &Option<Vec<u8>>)> = self
            .overlay
            .writes
            .get(&family)
            .map(|writes| {
                writes
                    .range::<[u8], _>((
                        std::ops::Bound::Included(start),
                        std::ops::Bound::Unbounded,
                    ))
                    .take_while(|(k, _)| in_range(k))
                    .collect()
            })
            .unwrap_or_default();
        // Pending deletes hide at most `pending.len()` stored entries.
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = self
            .store
            .range(family, start, end, limit.saturating_add(pending.len()))?
            .into_iter()
            .collect();
        for (k, v) in pending {
            match v {
                Some(v) => merged.insert(k.clone(), v.clone()),
                None => merged.remove(k),
            };
        }
        Ok(merged.into_iter().take(limit).collect())
    }

    /// Applies one entry and records it as the last applied.
    pub fn apply_entry(&mut self, entry: &Entry<TypeConfig>) -> StoreResult<Response> {
        let log_id = entry.log_id;
        let response = match &entry.payload {
            EntryPayload::Blank => Response::Empty,
            EntryPayload::Membership(m) => {
                self.put(
                    Family::Meta,
                    meta::MEMBERSHIP.to_vec(),
                    &StoredMembership::<NodeId, Member>::new(Some(log_id), m.clone()),
                );
                Response::Empty
            }
            EntryPayload::Normal(Proposal {
                body: Body::Batch(requests),
                ..
            }) => {
                let mut responses = Vec::with_capacity(requests.len());
                for (position, request) in requests.iter().enumerate() {
                    self.position = u32::try_from(position).unwrap_or(u32::MAX);
                    responses.push(self.apply_proposal(log_id, request)?);
                }
                self.position = 0;
                Response::Batch(responses)
            }
            EntryPayload::Normal(proposal) => self.apply_proposal(log_id, proposal)?,
        };
        self.put(Family::Meta, meta::APPLIED.to_vec(), &Some(log_id));
        Ok(response)
    }

    fn apply_proposal(
        &mut self,
        log_id: LogId<NodeId>,
        proposal: &Proposal,
    ) -> StoreResult<Response> {
        // Cluster time never runs backwards, whatever the clocks of successive leaders.
        let last: Option<Timestamp> = self.get(Family::Meta, meta::TIME)?;
        let at = match last {
            Some(last) if proposal.at <= last => Timestamp::from_micros(last.as_micros() + 1),
            _ => proposal.at,
        };
        self.put(Family::Meta, meta::TIME.to_vec(), &at);
        let digests = self.format()?.at_least(LOG_FORMAT_BATCHES);
        let digest = match (&proposal.request_id, digests) {
            (Some(_), true) => Some(request_digest(&proposal.body)),
            _ => None,
        };
        if let Some(request_id) = &proposal.request_id
            && let Some(first) = self.dedup_entry(request_id)?
        {
            return Ok(match (first.digest, digest) {
                (Some(first_digest), Some(digest)) if first_digest != digest => refused(
                    RefusalCode::RequestIdReused,
                    format!(
                        "request id `{request_id}` was already used for the {} at {}; this request differs from it (kind, target, transition, payload or actor), so nothing was done: give every new request a new request id, and reuse one only to retry the same request",
                        first.request, first.at
                    ),
                ),
                _ => first.response,
            });
        }
        let response = self.apply_body(log_id, &proposal.body, at)?;
        if let Some(request_id) = &proposal.request_id {
            let key = request_id.as_bytes().to_vec();
            match digest {
                Some(digest) => self.put_as(
                    2,
                    Family::Dedup,
                    key,
                    &DedupEntry {
                        response: response.clone(),
                        at,
                        digest: Some(digest),
                        request: describe_request(&proposal.body),
                    },
                ),
                None => self.put(Family::Dedup, key, &(response.clone(), at)),
            }
            self.put(
                Family::DedupByTime,
                key::dedup_by_time(at.as_micros(), request_id),
                &(),
            );
        }
        self.expire_dedup(at)?;
        Ok(response)
    }

    /// The replicated log format, as this run sees it.
    fn format(&mut self) -> StoreResult<LogFormat> {
        if let Some(format) = self.format {
            return Ok(format);
        }
        let format = self
            .get::<LogFormat>(Family::Meta, meta::LOG_FORMAT)?
            .unwrap_or_default();
        self.format = Some(format);
        Ok(format)
    }

    /// A request id's dedup entry, in either stored version (a version-1 entry has no digest).
    fn dedup_entry(&self, request_id: &str) -> StoreResult<Option<DedupEntry>> {
        let Some(bytes) = self.get_raw(Family::Dedup, request_id.as_bytes())? else {
            return Ok(None);
        };
        let key = request_id.as_bytes();
        Ok(Some(match envelope::version_of(&bytes) {
            Some(1) => {
                let (response, at) =
                    envelope::decode::<(Response, Timestamp)>(Family::Dedup, key, &bytes)?;
                DedupEntry {
                    response,
                    at,
                    digest: None,
                    request: String::new(),
                }
            }
            _ => envelope::decode::<DedupEntry>(Family::Dedup, key, &bytes)?,
        }))
    }

    fn expire_dedup(&mut self, at: Timestamp) -> StoreResult<()> {
        let horizon = at
            .as_micros()
            .saturating_sub(i64::try_from(DEDUP_RETENTION_MS * 1000).unwrap_or(i64::MAX));
        let mut end = Vec::new();
        keys::push_i64(&mut end, horizon);
        for (k, _) in self.range(Family::DedupByTime, &[], Some(&end), DEDUP_EXPIRE_BATCH_MAX)? {
            if let Some(request_id) = keys::split_strs(&k[8..]).into_iter().next() {
                self.delete(Family::Dedup, request_id.into_bytes());
            }
            self.delete(Family::DedupByTime, k);
        }
        Ok(())
    }

    fn apply_body(
        &mut self,
        log_id: LogId<NodeId>,
        body: &Body,
        at: Timestamp,
    ) -> StoreResult<Response> {
        match body {
            Body::Noop => Ok(Response::Empty),
            // A leader never nests batches; refused deterministically if one ever arrives.
            Body::Batch(_) => Ok(refused(
                RefusalCode::PayloadInvalid,
                "a batch of requests cannot contain another batch".into(),
            )),
            Body::SetLogFormat { version } => {
                let format = LogFormat((*version).max(self.format()?.0));
                self.put(Family::Meta, meta::LOG_FORMAT.to_vec(), &format);
                self.format = Some(format);
                Ok(Response::Empty)
            }
            Body::Migrate {
                plan,
                selection,
                actor,
            } => self.migrate(log_id, plan, selection, actor, at),
            Body::ApplyDefinition {
                source,
                provenance,
                actor,
            } => self.apply_definition(log_id, source, provenance, actor, at),
            Body::Create {
                workflow,
                key,
                data,
                actor,
            } => {
                let Some(definition) = self.latest_definition(workflow)? else {
                    return Ok(refused(
                        RefusalCode::UnknownWorkflow,
                        format!(
                            "no definition of workflow `{workflow}` has been applied; apply one with `lockstep apply`"
                        ),
                    ));
                };
                if let Some(key) = key
                    && let Some(existing) =
                        self.get::<String>(Family::IndexKey, &key::business_key(workflow, key))?
                {
                    return Ok(refused(
                        RefusalCode::AlreadyExists,
                        format!(
                            "workflow `{workflow}` already has an instance with key `{key}`: {existing}"
                        ),
                    ));
                }
                // The log index names the instance; a request after the first of a batch adds
                // its position (only format-2 logs have batches, so older ids are unchanged).
                let instance_id = match self.position {
                    0 => format!("i-{}", log_id.index),
                    position => format!("i-{}-{position}", log_id.index),
                };
                let command = Command::Create {
                    instance_id,
                    key: key.clone(),
                    data: data.clone(),
                    actor: actor.clone(),
                };
                let rules = self.format()?.rules();
                let outcome = evaluate_under(&definition, None, &command, at, rules);
                self.commit(log_id, &definition, None, outcome)
            }
            Body::Transition {
                target,
                transition,
                payload,
                actor,
                expected_version,
            } => {
                let command = Command::Transition {
                    transition: transition.clone(),
                    payload: payload.clone(),
                    actor: actor.clone(),
                    expected_version: *expected_version,
                };
                self.on_instance(log_id, target, command, at)
            }
            Body::Event {
                target,
                event,
                payload,
                actor,
            } => {
                let command = Command::Event {
                    event: event.clone(),
                    payload: payload.clone(),
                    actor: actor.clone(),
                };
                self.on_instance(log_id, target, command, at)
            }
            Body::Task {
                instance_id,
                task_id,
                op,
            } => {
                let task_id = task_id.clone();
                if let TaskOp::Lease { worker } = op {
                    let held = self
                        .get::<u32>(Family::Meta, &key::worker_leases(&worker.id))?
                        .unwrap_or(0);
                    if held >= LEASES_PER_WORKER_MAX {
                        return Ok(refused(
                            RefusalCode::LimitExceeded,
                            format!(
                                "worker `{}` already holds {held} leased tasks, the most one worker may hold ({LEASES_PER_WORKER_MAX}): complete or fail some before polling for more",
                                worker.id
                            ),
                        ));
                    }
                }
                let command = match op.clone() {
                    TaskOp::Lease { worker } => Command::LeaseTask {
                        task_id,
                        worker,
                        term: log_id.leader_id.term,
                    },
                    TaskOp::Heartbeat { token, worker } => Command::HeartbeatTask {
                        task_id,
                        token,
                        worker,
                    },
                    TaskOp::Complete {
                        token,
                        result,
                        worker,
                    } => Command::CompleteTask {
                        task_id,
                        token,
                        result,
                        worker,
                    },
                    TaskOp::Fail {
                        token,
                        error,
                        retryable,
                        worker,
                    } => Command::FailTask {
                        task_id,
                        token,
                        error,
                        retryable,
                        worker,
                    },
                };
                self.on_instance(log_id, &Target::Id(instance_id.clone()), command, at)
            }
            Body::ResolveIncident {
                instance_id,
                incident_id,
                retry_task,
                actor,
            } => {
                let command = Command::ResolveIncident {
                    incident_id: incident_id.clone(),
                    retry_task: *retry_task,
                    actor: actor.clone(),
                };
                self.on_instance(log_id, &Target::Id(instance_id.clone()), command, at)
            }
            Body::AckOutbox { through } => {
                let acked = self
                    .get::<u64>(Family::Meta, meta::OUTBOX_ACKED)?
                    .unwrap_or(0);
                let end = keys::u64_key(through.saturating_add(1));
                for (k, _) in self.range(Family::Outbox, &[], Some(&end), OUTBOX_ACK_BATCH_MAX)? {
                    self.delete(Family::Outbox, k);
                }
                if *through > acked {
                    self.put(Family::Meta, meta::OUTBOX_ACKED.to_vec(), through);
                }
                Ok(Response::Empty)
            }
            Body::FireTimers { timers } => {
                let (mut fired, mut stale) = (0u32, 0u32);
                for (instance_id, timer_id) in timers {
                    let command = Command::FireTimer {
                        timer_id: timer_id.clone(),
                    };
                    match self.on_instance(log_id, &Target::Id(instance_id.clone()), command, at)? {
                        Response::Applied { .. } => fired += 1,
                        _ => stale += 1,
                    }
                }
                Ok(Response::TimersFired { fired, stale })
            }
        }
    }

    fn on_instance(
        &mut self,
        log_id: LogId<NodeId>,
        target: &Target,
        command: Command,
        at: Timestamp,
    ) -> StoreResult<Response> {
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
        let rules = self.format()?.rules();
        let outcome = evaluate_under(&definition, Some(&instance), &command, at, rules);
        self.commit(log_id, &definition, Some(&instance), outcome)
    }

    /// A migration moves every selected instance or none: each outcome is computed before
    /// anything is written, and the first refusal refuses the whole command.
    fn migrate(
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
            match self.commit(log_id, to, Some(before), Outcome::Applied(change))? {
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
    fn listed_instances(
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
    fn instances_at_version(
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

    fn latest_definition(
        &mut self,
        workflow: &str,
    ) -> StoreResult<Option<Arc<CompiledDefinition>>> {
        match self.get::<String>(Family::Definitions, &key::latest_definition(workflow))? {
            Some(version) => self.definition(workflow, &version),
            None => Ok(None),
        }
    }

    fn definition(
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

    fn apply_definition(
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
        let record = AuditRecord {
            kind: AuditKind::DefinitionApplied,
            workflow: workflow.clone(),
            instance_id: String::new(),
            definition_version: version.clone(),
            transition: None,
            from: None,
            to: None,
            actor: actor_record(actor),
            at,
            instance_version: 0,
            payload_digest: Some(lockstep_core::canonical::sha256_hex(source.as_bytes())),
            predicates: Vec::new(),
            timer: None,
            task_id: None,
            sla: None,
            note: Some(format!(
                "applied from {}@{}:{}",
                provenance.repository, provenance.commit, provenance.path
            )),
        };
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

    /// Appends an audit record to the global chain and, for instance records, to the
    /// instance's chain. Returns its global sequence.
    fn append_audit(
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
        Ok(seq)
    }

    /// Writes an outcome: the instance, its indexes, timers, tasks, outbox and audit record.
    /// A change `definition` decided that breaks an invariant (`Change::check`) is not
    /// written: apply fails, which stops this node (and every replica, at the same entry).
    fn commit(
        &mut self,
        log_id: LogId<NodeId>,
        definition: &CompiledDefinition,
        before: Option<&Instance>,
        outcome: Outcome,
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

    fn cancel_timer(&mut self, instance_id: &str, timer_id: &str) -> StoreResult<()> {
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
    fn index_tasks(&mut self, before: Option<&Instance>, after: &Instance) -> StoreResult<()> {
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
        Ok(())
    }

    fn index_ready_tasks(&mut self, before: Option<&Instance>, after: &Instance) {
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

/// The error that stops the node when an applied change breaks an invariant: what broke,
/// where in the log, and that the log itself is intact.
fn broken_invariant(
    log_id: LogId<NodeId>,
    broken: impl std::fmt::Display,
) -> lockstep_store::Error {
    lockstep_store::Error::Invalid(format!(
        "BUG: the change of log entry {log_id} breaks an invariant ({broken}); this node stops rather than write it. The log is intact: a build with the bug fixed applies the entry again. Report this message with this node's log"
    ))
}

fn refused(code: RefusalCode, message: String) -> Response {
    Response::Refused(Refusal::new(code, message))
}

fn actor_record(actor: &Actor) -> ActorRecord {
    ActorRecord {
        id: actor.id.clone(),
        kind: actor.kind.as_str().into(),
        roles: actor.roles.clone(),
        authn: actor.authn.clone(),
    }
}

#[cfg(test)]
mod tests {
    use lockstep_core::engine::Change;
    use lockstep_core::{ActorKind, Limits, evaluate};
    use lockstep_store::MemStore;
    use openraft::CommittedLeaderId;

    use super::*;

    const PURCHASE_ORDER: &str = include_str!("../../../examples/workflows/purchase-order.yaml");

    fn log_id(index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(1, 1), index)
    }

    fn at(minutes: i64) -> Timestamp {
        Timestamp::from_millis(1_795_334_400_000 + minutes * 60_000)
    }

    fn alice() -> Actor {
        Actor::new("alice", ActorKind::Human, &["requester"])
    }

    fn definition() -> CompiledDefinition {
        compile(
            Some("purchase-order.yaml"),
            PURCHASE_ORDER,
            &Limits::default(),
        )
        .unwrap()
    }

    fn created(definition: &CompiledDefinition) -> Change {
        let create = Command::Create {
            instance_id: "i-1".into(),
            key: None,
            data: serde_json::json!({ "amount": 120.0, "requester": "alice" }),
            actor: alice(),
        };
        match evaluate(definition, None, &create, at(0)) {
            Outcome::Applied(change) => *change,
            Outcome::Refused(r) => panic!("{r:?}"),
        }
    }

    fn submitted(definition: &CompiledDefinition, instance: &Instance) -> Change {
        let submit = Command::Transition {
            transition: "submit".into(),
            payload: serde_json::json!({}),
            actor: alice(),
            expected_version: None,
        };
        match evaluate(definition, Some(instance), &submit, at(1)) {
            Outcome::Applied(change) => *change,
            Outcome::Refused(r) => panic!("{r:?}"),
        }
    }

    #[test]
    fn a_change_that_breaks_an_invariant_is_not_written_and_fails_apply() {
        let store = MemStore::new();
        let mut cache = ApplyCache::default();
        let mut applier = Applier::new(&store, &mut cache);
        let definition = definition();
        let mut change = created(&definition);
        change.instance.version = 2;
        change.audit.instance_version = 2;
        let err = applier
            .commit(
                log_id(7),
                &definition,
                None,
                Outcome::Applied(Box::new(change)),
            )
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("BUG: the change of log entry")
                && text.contains("breaks an invariant (instance i-1 goes from version None to 2"),
            "{text}"
        );
        assert!(
            applier.into_batch().ops.is_empty(),
            "nothing of the broken change is written"
        );
    }

    #[test]
    fn an_instance_audit_chain_with_a_gap_fails_apply() {
        let store = MemStore::new();
        let mut cache = ApplyCache::default();
        let mut applier = Applier::new(&store, &mut cache);
        let definition = definition();
        let create = created(&definition);
        let instance = create.instance.clone();
        applier
            .commit(
                log_id(7),
                &definition,
                None,
                Outcome::Applied(Box::new(create)),
            )
            .expect("a whole change is written");
        // The instance's first audit record goes missing (a bug elsewhere, or lost data).
        applier.delete(Family::AuditByInstance, key::audit_by_instance("i-1", 1));
        let submit = submitted(&definition, &instance);
        let err = applier
            .commit(
                log_id(8),
                &definition,
                Some(&instance),
                Outcome::Applied(Box::new(submit)),
            )
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("instance i-1's audit chain has no record 1 to link record 2 to"),
            "{err}"
        );
    }
}
