//! Lockstep's storage: ordered key-value families with atomic batches.
//!
//! One RocksDB instance per node holds every family as a column family ([`RocksStore`]);
//! [`MemStore`] is the in-memory twin for unit tests. Both implement [`Store`] and pass the
//! same [`conformance`] suite. Keys are big-endian so ranges scan in order ([`keys`]); values
//! are serde + bincode 1.3 inside a versioned envelope ([`envelope`]). Only this crate knows
//! RocksDB.

pub mod conformance;
pub mod envelope;
pub mod keys;
mod memory;
mod rocks;
pub mod schema;

use std::fmt;

pub use memory::MemStore;
pub use rocks::{FamilySizes, RocksOptions, RocksStore};

/// The families of a node's store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// Raft log entries by index.
    RaftLog,
    /// Raft vote, committed id, last purged id, current snapshot: node-local, never in snapshots.
    RaftMeta,
    /// Definitions by (workflow, version) and the latest version per workflow.
    Definitions,
    /// Instances by id.
    Instances,
    /// (workflow, state, instance id) → ().
    IndexWorkflowState,
    /// (workflow, business key) → instance id.
    IndexKey,
    /// Audit records by global sequence.
    Audit,
    /// (instance id, instance sequence) → global sequence.
    AuditByInstance,
    /// (due_at, timer id) → timer.
    TimersDue,
    /// (instance id, timer id) → due_at.
    TimersByOwner,
    /// (queue, task id) → instance id, for tasks ready to lease.
    Tasks,
    /// Effects by sequence, waiting for the leader to dispatch them.
    Outbox,
    /// Client request id → first outcome.
    Dedup,
    /// (applied at, request id) → (), to expire dedup entries in cluster-time order.
    DedupByTime,
    /// Applied log id, membership, chain heads, counters, cluster time.
    Meta,
    /// (workflow, flag, instance id) → (): instances by SLA status and open incidents
    /// (`lockstep_raft::index`), written from log format 4 on. Appended last so that the
    /// ids of older families, which snapshots and digests carry, stay the same.
    IndexFlags,
    /// (instance id, instance sequence) → the command that made that record, with the cluster
    /// time and the cross-instance facts apply used (`lockstep_core::journal`), written from
    /// log format 5 on, for replaying an instance under another definition version.
    Journal,
    /// Webhook subscriptions by name (`lockstep_core::subscription`), from log format 8.
    Subscriptions,
    /// Global audit sequence → the `emit` events that record's change emitted, from log
    /// format 8, so webhook filters on event names need no definition lookups.
    Emitted,
    /// (instance, task) → the W3C `traceparent` of the traced request that created the task,
    /// from log format 9; kept until the task completes, so a worker's lease continues it.
    TaskTraces,
    /// Global audit sequence → the W3C `traceparent` of the traced request that wrote the
    /// record, from log format 9, for the last `AUDIT_TRACES_KEPT` records: a webhook
    /// delivery of the record joins that trace.
    AuditTraces,
    /// Schedules by name (`lockstep_core::schedule`), from log format 10.
    Schedules,
    /// (workflow, field, encoded value, instance id) → (): the data fields definitions
    /// declare under `index:` (`lockstep_core::search`), from log format 11.
    IndexData,
}

impl Family {
    pub const ALL: [Family; 23] = [
        Family::RaftLog,
        Family::RaftMeta,
        Family::Definitions,
        Family::Instances,
        Family::IndexWorkflowState,
        Family::IndexKey,
        Family::Audit,
        Family::AuditByInstance,
        Family::TimersDue,
        Family::TimersByOwner,
        Family::Tasks,
        Family::Outbox,
        Family::Dedup,
        Family::DedupByTime,
        Family::Meta,
        Family::IndexFlags,
        Family::Journal,
        Family::Subscriptions,
        Family::Emitted,
        Family::TaskTraces,
        Family::AuditTraces,
        Family::Schedules,
        Family::IndexData,
    ];

    /// The families that make up the replicated state: what snapshots carry and digests hash.
    pub const STATE: [Family; 21] = [
        Family::Definitions,
        Family::Instances,
        Family::IndexWorkflowState,
        Family::IndexKey,
        Family::Audit,
        Family::AuditByInstance,
        Family::TimersDue,
        Family::TimersByOwner,
        Family::Tasks,
        Family::Outbox,
        Family::Dedup,
        Family::DedupByTime,
        Family::Meta,
        Family::IndexFlags,
        Family::Journal,
        Family::Subscriptions,
        Family::Emitted,
        Family::TaskTraces,
        Family::AuditTraces,
        Family::Schedules,
        Family::IndexData,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Family::RaftLog => "raft_log",
            Family::RaftMeta => "raft_meta",
            Family::Definitions => "definitions",
            Family::Instances => "instances",
            Family::IndexWorkflowState => "idx_workflow_state",
            Family::IndexKey => "idx_key",
            Family::Audit => "audit",
            Family::AuditByInstance => "audit_by_instance",
            Family::TimersDue => "timers_due",
            Family::TimersByOwner => "timers_by_owner",
            Family::Tasks => "tasks",
            Family::Outbox => "outbox",
            Family::Dedup => "dedup",
            Family::DedupByTime => "dedup_by_time",
            Family::Meta => "meta",
            Family::IndexFlags => "idx_flags",
            Family::Journal => "journal",
            Family::Subscriptions => "subscriptions",
            Family::Emitted => "emitted",
            Family::TaskTraces => "task_traces",
            Family::AuditTraces => "audit_traces",
            Family::Schedules => "schedules",
            Family::IndexData => "idx_data",
        }
    }

    /// A stable number used in snapshots and digests.
    pub fn id(self) -> u8 {
        Family::ALL
            .iter()
            .position(|f| *f == self)
            .expect("every family is in ALL") as u8
    }

    pub fn from_id(id: u8) -> Option<Family> {
        Family::ALL.get(usize::from(id)).copied()
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("RocksDB: {0}")]
    Rocks(String),
    #[error("corrupt value in {family} at key {key}: {reason}")]
    Corrupt {
        family: Family,
        key: String,
        reason: String,
    },
    #[error("{0}")]
    Invalid(String),
    /// RocksDB met data that fails its checksums or a damaged file (its `Corruption`
    /// status): the store cannot be trusted and must be re-seeded from the cluster.
    #[error("RocksDB: {0}")]
    Corruption(String),
}

impl From<rocksdb::Error> for Error {
    fn from(e: rocksdb::Error) -> Self {
        match e.kind() {
            rocksdb::ErrorKind::Corruption => Error::Corruption(e.into_string()),
            _ => Error::Rocks(e.into_string()),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One change in a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put {
        family: Family,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        family: Family,
        key: Vec<u8>,
    },
    /// Deletes every key in `[start, end)`.
    DeleteRange {
        family: Family,
        start: Vec<u8>,
        end: Vec<u8>,
    },
}

/// Changes applied atomically: all or nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    pub ops: Vec<Op>,
}

impl Batch {
    pub fn put(&mut self, family: Family, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push(Op::Put {
            family,
            key: key.into(),
            value: value.into(),
        });
    }

    pub fn delete(&mut self, family: Family, key: impl Into<Vec<u8>>) {
        self.ops.push(Op::Delete {
            family,
            key: key.into(),
        });
    }

    pub fn delete_range(
        &mut self,
        family: Family,
        start: impl Into<Vec<u8>>,
        end: impl Into<Vec<u8>>,
    ) {
        self.ops.push(Op::DeleteRange {
            family,
            start: start.into(),
            end: end.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }
}

/// Whether a write must be on stable storage before it returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// fsync before returning: Raft log appends, votes, truncation, purge.
    Sync,
    /// Written to the WAL without fsync: state-machine batches, which the synced log can
    /// always reproduce after a crash.
    Buffered,
}

pub type Entry = (Vec<u8>, Vec<u8>);

/// An entry of one family, as [`Store::export`] returns it.
pub type FamilyEntry = (Family, Vec<u8>, Vec<u8>);

/// An ordered key-value store with families and atomic batches.
/// Called with each exported entry (family, key, value); an error stops the export.
pub type EntryVisitor<'a> = dyn FnMut(Family, &[u8], &[u8]) -> Result<()> + 'a;

pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    fn get(&self, family: Family, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Up to `limit` entries with `start <= key < end` (no upper bound if `end` is `None`), in
    /// key order.
    fn range(
        &self,
        family: Family,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>>;

    /// The entry with the greatest key in `[start, end)`.
    fn last(&self, family: Family, start: &[u8], end: Option<&[u8]>) -> Result<Option<Entry>>;

    /// Applies every op of the batch atomically.
    fn write(&self, batch: Batch, durability: Durability) -> Result<()>;

    /// Every entry of the given families at one point in time (a consistent view even while
    /// writes continue), in family order then key order.
    fn export(&self, families: &[Family]) -> Result<Vec<FamilyEntry>>;

    /// The same entries as [`Store::export`], one at a time, without holding them all in
    /// memory (snapshots of a large state stream through this).
    fn export_each(&self, families: &[Family], each: &mut EntryVisitor<'_>) -> Result<()>;

    /// Approximate bytes used, for metrics.
    fn approximate_size_bytes(&self) -> u64;

    /// Writes a consistent point-in-time copy of the whole store into the new directory
    /// `dir`, and leaves every write made before the call durable in the store itself. It
    /// costs what changed since the last one, not the size of the state (RocksDB flushes its
    /// memtables and hard-links its files). Read the copy with [`Store::read_checkpoint`]
    /// while the store moves on. The copy holds every family: readers choose theirs.
    fn checkpoint(&self, dir: &std::path::Path) -> Result<()>;

    /// Calls `each` for every entry of `families` in the copy at `dir` made by
    /// [`Store::checkpoint`], in family order then key order, without writing to it.
    fn read_checkpoint(
        dir: &std::path::Path,
        families: &[Family],
        each: &mut EntryVisitor<'_>,
    ) -> Result<()>
    where
        Self: Sized;
}
