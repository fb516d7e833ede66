//! Queries over the applied state of one replica. They read the store directly; the caller
//! decides whether that is linearizable (after a read index) or explicitly stale.

use lockstep_core::Timestamp;
use lockstep_core::audit::{ChainedRecord, decode_hash};
use lockstep_core::engine::{Instance, Timer};
use lockstep_store::{Family, Store, envelope, keys};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::apply::{AuditHead, OutboxItem, StoredDefinition};
use lockstep_store::schema::{key, meta};

pub type Result<T> = lockstep_store::Result<T>;

fn decode_rows<T: DeserializeOwned>(
    family: Family,
    rows: Vec<(Vec<u8>, Vec<u8>)>,
) -> Result<Vec<T>> {
    rows.iter()
        .map(|(k, v)| envelope::decode(family, k, v))
        .collect()
}

fn get<T: DeserializeOwned>(store: &impl Store, family: Family, key: &[u8]) -> Result<Option<T>> {
    match store.get(family, key)? {
        Some(v) => envelope::decode(family, key, &v).map(Some),
        None => Ok(None),
    }
}

pub fn instance(store: &impl Store, id: &str) -> Result<Option<Instance>> {
    get(store, Family::Instances, id.as_bytes())
}

pub fn instance_id_by_key(
    store: &impl Store,
    workflow: &str,
    business_key: &str,
) -> Result<Option<String>> {
    get(
        store,
        Family::IndexKey,
        &key::business_key(workflow, business_key),
    )
}

/// Instance ids of `workflow` (optionally in `state`), in key order, after `after`.
pub fn instance_ids(
    store: &impl Store,
    workflow: &str,
    state: Option<&str>,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<String>> {
    let prefix = match state {
        Some(s) => keys::strs(&[workflow, s]),
        None => keys::strs(&[workflow]),
    };
    let end = keys::prefix_end(&prefix);
    let start = match after {
        // Resume strictly after the last key returned (which includes the state for
        // workflow-wide listings, so `after` is the full key as text).
        Some(a) => {
            let mut k = a.as_bytes().to_vec();
            k.push(1);
            k
        }
        None => prefix.clone(),
    };
    let rows = store.range(Family::IndexWorkflowState, &start, Some(&end), limit)?;
    Ok(rows
        .into_iter()
        .map(|(k, _)| keys::split_strs(&k).pop().unwrap_or_default())
        .collect())
}

pub fn definition(
    store: &impl Store,
    workflow: &str,
    version: Option<&str>,
) -> Result<Option<StoredDefinition>> {
    let version = match version {
        Some(v) => v.to_string(),
        None => match get::<String>(
            store,
            Family::Definitions,
            &key::latest_definition(workflow),
        )? {
            Some(v) => v,
            None => return Ok(None),
        },
    };
    get(
        store,
        Family::Definitions,
        &key::definition(workflow, &version),
    )
}

/// All stored versions of a workflow's definition.
pub fn definition_versions(store: &impl Store, workflow: &str) -> Result<Vec<StoredDefinition>> {
    let mut prefix = b"v\0".to_vec();
    keys::push_str(&mut prefix, workflow);
    let rows = store.range(
        Family::Definitions,
        &prefix,
        Some(&keys::prefix_end(&prefix)),
        usize::MAX,
    )?;
    let mut defs: Vec<StoredDefinition> = decode_rows(Family::Definitions, rows)?;
    defs.sort_by_key(|d| d.audit_seq);
    Ok(defs)
}

/// The workflows that have a definition, by name, at most `limit` after `after`.
pub fn workflows(store: &impl Store, after: Option<&str>, limit: usize) -> Result<Vec<String>> {
    let prefix = b"l\0".to_vec();
    let start = match after {
        Some(after) => {
            // Strictly after `after`'s own key.
            let mut k = key::latest_definition(after);
            k.push(0);
            k
        }
        None => prefix.clone(),
    };
    let rows = store.range(
        Family::Definitions,
        &start,
        Some(&keys::prefix_end(&prefix)),
        limit,
    )?;
    Ok(rows
        .into_iter()
        .filter_map(|(k, _)| keys::split_strs(&k[prefix.len()..]).into_iter().next())
        .collect())
}

/// The audit records of one instance, oldest first.
pub fn history(store: &impl Store, instance_id: &str, limit: usize) -> Result<Vec<ChainedRecord>> {
    let prefix = keys::strs(&[instance_id]);
    let rows = store.range(
        Family::AuditByInstance,
        &prefix,
        Some(&keys::prefix_end(&prefix)),
        limit,
    )?;
    let mut out = Vec::new();
    for (k, v) in rows {
        let (seq, _): (u64, [u8; 32]) = envelope::decode(Family::AuditByInstance, &k, &v)?;
        if let Some(r) = audit_record(store, seq)? {
            out.push(r);
        }
    }
    Ok(out)
}

/// The journal entry beside record `seq` of an instance's chain (log format 5 on; `None`
/// for a record applied before it).
pub fn journal_entry(
    store: &impl Store,
    instance_id: &str,
    seq: u64,
) -> Result<Option<lockstep_core::journal::JournalEntry>> {
    get(store, Family::Journal, &key::journal(instance_id, seq))
}

pub fn audit_record(store: &impl Store, seq: u64) -> Result<Option<ChainedRecord>> {
    get(store, Family::Audit, &keys::u64_key(seq))
}

/// Audit records with global sequence >= `from`, at most `limit`.
pub fn audit_from(store: &impl Store, from: u64, limit: usize) -> Result<Vec<ChainedRecord>> {
    let rows = store.range(Family::Audit, &keys::u64_key(from), None, limit)?;
    decode_rows(Family::Audit, rows)
}

/// Every webhook subscription, by name (at most `SUBSCRIPTIONS_MAX`).
pub fn subscriptions(store: &impl Store) -> Result<Vec<lockstep_core::subscription::Subscription>> {
    let rows = store.range(
        Family::Subscriptions,
        &[],
        None,
        lockstep_core::subscription::SUBSCRIPTIONS_MAX,
    )?;
    decode_rows(Family::Subscriptions, rows)
}

pub fn subscription(
    store: &impl Store,
    name: &str,
) -> Result<Option<lockstep_core::subscription::Subscription>> {
    get(store, Family::Subscriptions, &key::subscription(name))
}

pub fn schedules(store: &impl Store) -> Result<Vec<lockstep_core::schedule::Schedule>> {
    let rows = store.range(
        Family::Schedules,
        &[],
        None,
        lockstep_core::schedule::SCHEDULES_MAX,
    )?;
    decode_rows(Family::Schedules, rows)
}

pub fn schedule(
    store: &impl Store,
    name: &str,
) -> Result<Option<lockstep_core::schedule::Schedule>> {
    get(store, Family::Schedules, &key::schedule(name))
}

/// The `emit` events the change of audit record `global_seq` emitted (none before format 8).
pub fn emitted(store: &impl Store, global_seq: u64) -> Result<Vec<String>> {
    Ok(get(store, Family::Emitted, &key::emitted(global_seq))?.unwrap_or_default())
}

/// The `traceparent` of the traced request that created a task (format 9), while the task
/// has not completed.
pub fn task_trace(store: &impl Store, instance_id: &str, task_id: &str) -> Result<Option<String>> {
    get(
        store,
        Family::TaskTraces,
        &key::task_trace(instance_id, task_id),
    )
}

/// The `traceparent` of the traced request that wrote audit record `global_seq` (format 9,
/// within the last `AUDIT_TRACES_KEPT` records).
pub fn audit_trace(store: &impl Store, global_seq: u64) -> Result<Option<String>> {
    get(store, Family::AuditTraces, &keys::u64_key(global_seq))
}

pub fn audit_head(store: &impl Store) -> Result<AuditHead> {
    Ok(get(store, Family::Meta, meta::AUDIT_HEAD)?.unwrap_or_default())
}

/// Where an audit chain first breaks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Broken {
    pub global_seq: u64,
    pub reason: String,
}

/// What a walk of the audit chains found: the number of records checked, or the first
/// broken record.
pub type Verified = std::result::Result<u64, Broken>;

/// Recomputes the global chain and every instance chain; returns the number of records
/// checked, or the first broken record.
pub fn verify_audit(store: &impl Store) -> Result<Verified> {
    Ok(verify_audit_at(store, 0)?.0)
}

/// As [`verify_audit`], and the global chain hash of record `at_seq` (what a checkpoint of
/// the chain at that record names: `lockstep audit anchor`), when the chain verified through
/// it; `None` for `at_seq` 0, beyond the head, or at or after a broken record.
pub fn verify_audit_at(store: &impl Store, at_seq: u64) -> Result<(Verified, Option<[u8; 32]>)> {
    let mut at_hash = None;
    let result = walk_audit_chain(store, |seq, hash| {
        if seq == at_seq {
            at_hash = Some(hash);
        }
    })?;
    Ok((result, at_hash))
}

/// Walks the chain in order, calling `each(seq, hash)` for every record that verified.
fn walk_audit_chain(store: &impl Store, mut each: impl FnMut(u64, [u8; 32])) -> Result<Verified> {
    let mut prev = [0u8; 32];
    let mut instance_heads: std::collections::HashMap<String, [u8; 32]> =
        std::collections::HashMap::new();
    let mut next = 1u64;
    let mut checked = 0u64;
    loop {
        let rows = store.range(Family::Audit, &keys::u64_key(next), None, 1024)?;
        if rows.is_empty() {
            break;
        }
        for (k, v) in rows {
            let seq = keys::read_u64(&k).unwrap_or(0);
            let record: ChainedRecord = match envelope::decode(Family::Audit, &k, &v) {
                Ok(r) => r,
                Err(e) => {
                    return Ok(Err(Broken {
                        global_seq: seq,
                        reason: format!("record does not decode: {e}"),
                    }));
                }
            };
            if record.global_seq != seq || seq != next {
                return Ok(Err(Broken {
                    global_seq: seq,
                    reason: format!(
                        "sequence gap or mismatch: expected {next}, found key {seq} holding {}",
                        record.global_seq
                    ),
                }));
            }
            let instance_prev = if record.record.instance_id.is_empty() {
                [0u8; 32]
            } else {
                instance_heads
                    .get(&record.record.instance_id)
                    .copied()
                    .unwrap_or([0; 32])
            };
            if !record.verify(&prev, &instance_prev) {
                return Ok(Err(Broken {
                    global_seq: seq,
                    reason: "hash does not match the record's content and its predecessors".into(),
                }));
            }
            prev = decode_hash(&record.hash).unwrap_or([0; 32]);
            each(seq, prev);
            if !record.record.instance_id.is_empty() {
                instance_heads.insert(
                    record.record.instance_id.clone(),
                    decode_hash(&record.instance_hash).unwrap_or([0; 32]),
                );
            }
            next = seq + 1;
            checked += 1;
        }
    }
    let head = audit_head(store)?;
    if head.seq != checked || (checked > 0 && head.hash != prev) {
        return Ok(Err(Broken {
            global_seq: head.seq,
            reason: format!(
                "the chain head (seq {}) does not match the last record ({checked})",
                head.seq
            ),
        }));
    }
    Ok(Ok(checked))
}

/// Where a scan of the due index starts: due at or after `from_micros` (`i64::MIN`: all).
/// Starting after the timers already fired matters: their deletions stay in RocksDB as
/// tombstones until compaction, and a scan from the start would step over every one of them.
fn due_key(from_micros: i64) -> Vec<u8> {
    let mut start = Vec::new();
    keys::push_i64(&mut start, from_micros);
    start
}

/// Armed timers due at or after `from_micros` and at or before `until`, in due order.
pub fn due_timers(
    store: &impl Store,
    from_micros: i64,
    until: Timestamp,
    limit: usize,
) -> Result<Vec<Timer>> {
    let mut end = Vec::new();
    keys::push_i64(&mut end, until.as_micros().saturating_add(1));
    decode_rows(
        Family::TimersDue,
        store.range(Family::TimersDue, &due_key(from_micros), Some(&end), limit)?,
    )
}

/// The next armed timers due at or after `from_micros`, in due order, whatever their due
/// time (`i64::MIN`: every armed timer).
pub fn next_timers(store: &impl Store, from_micros: i64, limit: usize) -> Result<Vec<Timer>> {
    decode_rows(
        Family::TimersDue,
        store.range(Family::TimersDue, &due_key(from_micros), None, limit)?,
    )
}

pub fn outbox(store: &impl Store, from: u64, limit: usize) -> Result<Vec<OutboxItem>> {
    decode_rows(
        Family::Outbox,
        store.range(Family::Outbox, &keys::u64_key(from), None, limit)?,
    )
}

/// The last outbox sequence acknowledged as dispatched (0 before any).
pub fn outbox_acked(store: &impl Store) -> Result<u64> {
    Ok(get(store, Family::Meta, meta::OUTBOX_ACKED)?.unwrap_or(0))
}

/// Ready tasks of `queue` as (task id, instance id), in task id order.
pub fn ready_tasks(store: &impl Store, queue: &str, limit: usize) -> Result<Vec<(String, String)>> {
    let prefix = keys::strs(&[queue]);
    let end = keys::prefix_end(&prefix);
    let rows = store.range(Family::Tasks, &prefix, Some(&end), limit)?;
    rows.into_iter()
        .map(|(k, v)| {
            let task_id = keys::split_strs(&k).pop().unwrap_or_default();
            let instance_id: String = envelope::decode(Family::Tasks, &k, &v)?;
            Ok((task_id, instance_id))
        })
        .collect()
}

/// Every flag the list index knows (`crate::apply::index`): an SLA clock's status, an SLA
/// warned (and not breached) or breached, an open incident.
pub const FLAGS: [&str; 6] = [
    "sla:running",
    "sla:paused",
    "sla:stopped",
    "sla:warned",
    "sla:breached",
    "incident:open",
];

/// Whether this replica keeps the list indexes and counts (log format 4 applied).
pub fn indexes_kept(store: &impl Store) -> Result<bool> {
    Ok(log_format(store)?.at_least(crate::format::LOG_FORMAT_INDEXES))
}

/// Ids of `workflow`'s instances with `flag`, in id order, after `after`.
pub fn flagged_ids(
    store: &impl Store,
    workflow: &str,
    flag: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<String>> {
    let prefix = keys::strs(&[workflow, flag]);
    let end = keys::prefix_end(&prefix);
    let start = match after {
        Some(id) => {
            let mut k = key::flag(workflow, flag, id);
            k.push(1);
            k
        }
        None => prefix,
    };
    Ok(store
        .range(Family::IndexFlags, &start, Some(&end), limit)?
        .into_iter()
        .map(|(k, _)| keys::split_strs(&k).pop().unwrap_or_default())
        .collect())
}

/// Entries of indexed data field `field` of `workflow` (family `IndexData`) from the encoded
/// value `start` (or strictly after the full key `after`) up to `end` (`None`: the field's
/// last): (full key, instance id), at most `limit`.
pub fn data_index_entries(
    store: &impl Store,
    workflow: &str,
    field: &str,
    start: &[u8],
    end: Option<&[u8]>,
    after: Option<&[u8]>,
    limit: usize,
) -> Result<Vec<(Vec<u8>, String)>> {
    let prefix = key::data_index_prefix(workflow, field);
    let with_prefix = |suffix: &[u8]| {
        let mut k = prefix.clone();
        k.extend_from_slice(suffix);
        k
    };
    let from = match after {
        Some(a) => {
            let mut k = a.to_vec();
            k.push(0);
            k.max(with_prefix(start))
        }
        None => with_prefix(start),
    };
    let to = match end {
        Some(e) => with_prefix(e),
        None => keys::prefix_end(&prefix),
    };
    Ok(store
        .range(Family::IndexData, &from, Some(&to), limit)?
        .into_iter()
        .filter_map(|(k, _)| {
            let id = lockstep_core::search::entry_id(&k, prefix.len())?;
            Some((k, id))
        })
        .collect())
}

/// How many of `workflow`'s instances are in `state`.
pub fn state_count(store: &impl Store, workflow: &str, state: &str) -> Result<u64> {
    Ok(get(
        store,
        Family::Meta,
        &crate::apply::index::state_count(workflow, state),
    )?
    .unwrap_or(0))
}

/// How many of `workflow`'s instances carry `flag`.
pub fn flag_count(store: &impl Store, workflow: &str, flag: &str) -> Result<u64> {
    Ok(get(store, Family::Meta, &key::count(workflow, flag))?.unwrap_or(0))
}

/// Most counts read for one workflow: its states across versions and the flags.
pub const COUNTS_READ_MAX: usize = 4096;

/// `workflow`'s instances per state (states without instances are absent).
pub fn state_counts(
    store: &impl Store,
    workflow: &str,
) -> Result<std::collections::BTreeMap<String, u64>> {
    let prefix = key::counts_of(workflow);
    let end = keys::prefix_end(&prefix);
    let mut counts = std::collections::BTreeMap::new();
    for (k, v) in store.range(Family::Meta, &prefix, Some(&end), COUNTS_READ_MAX)? {
        let what = keys::split_strs(&k[key::COUNT_PREFIX.len()..])
            .pop()
            .unwrap_or_default();
        if let Some(state) = what.strip_prefix("state:") {
            let n: u64 = envelope::decode(Family::Meta, &k, &v)?;
            counts.insert(state.to_string(), n);
        }
    }
    Ok(counts)
}

/// The last cluster time applied.
/// The replicated log format (`crate::format`), as applied on this replica.
pub fn log_format(store: &impl Store) -> Result<crate::format::LogFormat> {
    Ok(get(store, Family::Meta, meta::LOG_FORMAT)?.unwrap_or_default())
}

pub fn cluster_time(store: &impl Store) -> Result<Option<Timestamp>> {
    get(store, Family::Meta, meta::TIME)
}

/// A hash over every state family: replicas that applied the same log prefix report the same
/// digest (DESIGN §3 invariant 1).
pub fn digest(store: &impl Store) -> Result<String> {
    let mut hasher = Sha256::new();
    for (family, k, v) in store.export(&Family::STATE)? {
        hasher.update([family.id()]);
        hasher.update((k.len() as u64).to_be_bytes());
        hasher.update(&k);
        hasher.update((v.len() as u64).to_be_bytes());
        hasher.update(&v);
    }
    Ok(hex::encode(hasher.finalize()))
}
