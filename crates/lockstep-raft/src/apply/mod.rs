//! Applying committed entries: the core engine's outcome turned into one store batch.
//!
//! An [`Applier`] collects the writes of a run of entries in an overlay, so that a later entry
//! (or a later timer of the same `FireTimers`) sees what an earlier one wrote, and the whole
//! run becomes a single atomic batch with the last applied log id in it. Nothing here reads a
//! clock: cluster time comes from the proposal, made strictly monotonic.
//!
//! By concern: this file holds the [`Applier`] (its overlay, the dispatch of a proposal's
//! body, the run's cluster time and log format); `dedup.rs` (request ids and their retention),
//! `projection.rs` (writing an outcome the engine decided: the instance, its indexes, timers,
//! tasks, outbox and the audit chain, after checking its invariants), `definitions.rs`
//! (applying and caching definitions), `migration.rs` (moving instances between
//! versions) and `index.rs` (the list indexes and counts of log format 4). The key schema (`key`, `meta`) lives in `lockstep_store::schema`.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use lockstep_core::audit::ChainedRecord;
use lockstep_core::engine::{
    Command, Effect, Facts, Instance, Outcome, TaskStatus, WorkerLeases, admit, definition_applied,
};
use lockstep_core::journal::{JournalEntry, JournalStep};
use lockstep_core::validate::{CompiledDefinition, compile};
use lockstep_core::{
    Actor, AuditRecord, Migration, Refusal, RefusalCode, Timestamp, evaluate_with, migrate,
};
use lockstep_store::{Batch, Family, Store, envelope, keys};
use openraft::{Entry, EntryPayload, LogId, StoredMembership};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::format::{LOG_FORMAT_BATCHES, LOG_FORMAT_INDEXES, LogFormat};
use crate::replicated::{
    AUDIT_TRACES_EXPIRE_MAX, AUDIT_TRACES_KEPT, DEDUP_EXPIRE_BATCH_MAX, DEDUP_RETENTION_MS,
    LEASES_PER_WORKER_MAX, MIGRATION_INSTANCES_MAX, MIGRATION_SCAN_MAX, OUTBOX_ACK_BATCH_MAX,
    apply_limits,
};
use crate::types::{
    Body, Member, Migrated, MigrationCursor, NodeId, Proposal, Provenance, Response, Selection,
    Target, TypeConfig,
};

mod dedup;
mod definitions;
pub mod index;
mod migration;
mod projection;
mod schedules;
pub mod subscriptions;

pub use dedup::DedupEntry;
use dedup::*;
pub use definitions::StoredDefinition;
pub use lockstep_store::schema::{key, meta};

/// Most compiled definitions kept in memory per node (node-local: the cache only saves
/// compiling again, so replicas may differ).
pub const DEFINITION_CACHE_MAX: usize = 256;

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

/// What apply keeps in memory between runs: compiled definitions by (workflow, version),
/// and the stored bytes of the meta values only apply writes ([`meta::CACHED`]; `None`:
/// absent). Bounded and safely discardable: the owner clears it whenever the store changes
/// other than by writing a batch this cache's [`Applier`] handed out (a snapshot install, a
/// failed write).
#[derive(Debug, Default)]
pub struct ApplyCache {
    compiled: HashMap<(String, String), Arc<CompiledDefinition>>,
    meta: HashMap<&'static [u8], Option<Vec<u8>>>,
    /// The list counts (log format 4, `index.rs`) as the last batch left them, by key: only
    /// apply writes them, so an apply run reads none of them back from RocksDB. At most
    /// [`index::COUNTS_CACHED_MAX`] (emptied when full).
    counts: HashMap<Vec<u8>, u64>,
}

impl ApplyCache {
    pub fn clear(&mut self) {
        self.compiled.clear();
        self.meta.clear();
        self.counts.clear();
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
    /// Whether this run changed the webhook subscriptions (the leader's delivery reconciles).
    changed_subscriptions: bool,
    /// Whether this run changed a schedule (the leader's schedule service looks again).
    changed_schedules: bool,
    /// The list counts this run wrote, as numbers (they join the cache with the batch).
    counts: HashMap<Vec<u8>, u64>,
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
    /// The trace of the request being applied ([`Body::Traced`]): tasks it creates keep it.
    trace: Option<String>,
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
            trace: None,
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

    /// Whether the applied entries changed the webhook subscriptions.
    pub fn changed_subscriptions(&self) -> bool {
        self.overlay.changed_subscriptions
    }

    /// Whether the applied entries changed a schedule.
    pub fn changed_schedules(&self) -> bool {
        self.overlay.changed_schedules
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
        for (key, n) in self.overlay.counts.iter() {
            if self.cache.counts.len() >= index::COUNTS_CACHED_MAX {
                self.cache.counts.clear();
            }
            self.cache.counts.insert(key.clone(), *n);
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
        // A traced request is its body: same digest, same dedup entry, same outcome.
        let (body, traceparent) = proposal.body.untraced();
        let digests = self.format()?.at_least(LOG_FORMAT_BATCHES);
        let digest = match (&proposal.request_id, digests) {
            (Some(_), true) => Some(request_digest(body)),
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
        let span = traceparent.map(|traceparent| {
            let span = tracing::info_span!("apply", body = body.name(), index = log_id.index);
            crate::trace::continue_in(&span, traceparent);
            span
        });
        let _entered = span.as_ref().map(|s| s.enter());
        self.trace = traceparent.map(str::to_string);
        let response = self.apply_body(log_id, body, at);
        self.trace = None;
        let response = response?;
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
                        request: describe_request(body),
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
            // `apply_proposal` unwraps the one trace a request may carry.
            Body::Traced { .. } => Ok(refused(
                RefusalCode::PayloadInvalid,
                "a traced request cannot contain another traced request".into(),
            )),
            Body::SetLogFormat { version } => {
                let was = self.format()?;
                let format = LogFormat((*version).max(was.0));
                if !was.at_least(LOG_FORMAT_INDEXES) && format.at_least(LOG_FORMAT_INDEXES) {
                    self.build_indexes()?;
                }
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
            } => self.create(log_id, workflow, key.as_deref(), data, actor, at, None),
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
                let command = op.command(task_id, log_id.leader_id.term);
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
            Body::Subscriptions(op) => {
                // Delivery's own progress changes no task, unless it gives up.
                self.overlay.changed_subscriptions |= match op {
                    crate::types::SubscriptionOp::Progress { updates } => {
                        updates.iter().any(|u| u.pause)
                    }
                    _ => true,
                };
                self.subscriptions(log_id, op, at)
            }
            Body::Schedules(op) => {
                self.overlay.changed_schedules = true;
                self.schedules(log_id, op, at)
            }
            Body::Redact {
                target,
                fields,
                actor,
            } => {
                let command = Command::Redact {
                    fields: fields.clone(),
                    actor: actor.clone(),
                };
                let response = self.on_instance(log_id, target, command, at)?;
                if let Response::Applied {
                    instance_id,
                    version,
                    ..
                } = &response
                {
                    self.redact_journal(instance_id, *version, fields)?;
                }
                Ok(response)
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

impl<S: Store> Applier<'_, S> {
    /// A new instance of the latest definition of `workflow`, named by its log position;
    /// `note` goes on its `created` record (a schedule's name and tick).
    #[allow(clippy::too_many_arguments)]
    fn create(
        &mut self,
        log_id: LogId<NodeId>,
        workflow: &str,
        key: Option<&str>,
        data: &serde_json::Value,
        actor: &Actor,
        at: Timestamp,
        note: Option<String>,
    ) -> StoreResult<Response> {
        let Some(definition) = self.latest_definition(workflow)? else {
            return Ok(refused(
                RefusalCode::UnknownWorkflow,
                format!(
                    "no definition of workflow `{workflow}` has been applied; apply one with `lockstep apply`"
                ),
            ));
        };
        let facts = Facts {
            key_holder: match key {
                Some(key) => self.get(Family::IndexKey, &key::business_key(workflow, key))?,
                None => None,
            },
            worker_leases: None,
        };
        // The log index names the instance; a request after the first of a batch adds
        // its position (only format-2 logs have batches, so older ids are unchanged).
        let instance_id = match self.position {
            0 => format!("i-{}", log_id.index),
            position => format!("i-{}-{position}", log_id.index),
        };
        let command = Command::Create {
            instance_id,
            key: key.map(str::to_owned),
            data: data.clone(),
            actor: actor.clone(),
        };
        let rules = self.format()?.rules();
        let mut outcome = evaluate_with(&definition, None, &command, at, rules, &facts);
        if let (Some(note), Outcome::Applied(change)) = (note, &mut outcome) {
            change.audit.note = Some(note);
        }
        let step = JournalStep::Command {
            command,
            facts,
            lease_expiry_guard: rules.lease_expiry_guard,
            timer_due: None,
        };
        self.commit(log_id, &definition, None, outcome, step)
    }

    /// What the replicated state knows beyond the instance `command` concerns: only a lease
    /// needs a fact (the worker's leases). Apply looks facts up; the engine decides on them.
    fn facts(&mut self, command: &Command) -> StoreResult<Facts> {
        let worker_leases = match command {
            Command::LeaseTask { worker, .. } => Some(WorkerLeases {
                held: self
                    .get::<u32>(Family::Meta, &key::worker_leases(&worker.id))?
                    .unwrap_or(0),
                max: LEASES_PER_WORKER_MAX,
            }),
            _ => None,
        };
        Ok(Facts {
            key_holder: None,
            worker_leases,
        })
    }
}

fn refused(code: RefusalCode, message: String) -> Response {
    Response::Refused(Refusal::new(code, message))
}

#[cfg(test)]
mod tests {
    use lockstep_core::engine::Change;
    use lockstep_core::{ActorKind, Limits, evaluate};
    use lockstep_store::MemStore;
    use openraft::CommittedLeaderId;

    use super::*;

    const PURCHASE_ORDER: &str = include_str!("../../../../examples/workflows/purchase-order.yaml");

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

    /// A journal step for a test that writes a change directly (format 1: not journaled).
    fn step() -> JournalStep {
        JournalStep::Command {
            command: Command::FireTimer {
                timer_id: "unused".into(),
            },
            facts: Facts::default(),
            lease_expiry_guard: true,
            timer_due: None,
        }
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
                step(),
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
                step(),
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
                step(),
            )
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("instance i-1's audit chain has no record 1 to link record 2 to"),
            "{err}"
        );
    }
}
