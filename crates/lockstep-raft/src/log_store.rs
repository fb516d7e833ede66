//! The Raft log and vote on a [`Store`].
//!
//! Durability is the point of this file. Unlike openraft's `raft-kv-rocksdb` example, an
//! append is written with [`Durability::Sync`] (fsync) *before* openraft's flush callback
//! fires, and a vote is synced before `save_vote` returns: an acknowledged entry or a granted
//! vote survives a crash. Truncation and purge are synced too. Entries are keyed by their
//! big-endian index, so the log is one ordered range with no holes between the last purged id
//! and the last entry.

// openraft's storage traits return its `StorageError` (large); the helpers here return what
// those traits return.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use lockstep_store::{Batch, Durability, Family, Store, envelope, keys};
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    AnyError, Entry, LogId, LogState, OptionalSend, RaftLogReader, StorageError, StorageIOError,
    Vote,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::types::{NodeId, TypeConfig};

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const LAST_PURGED: &[u8] = b"last_purged";

type StorageResult<T> = Result<T, StorageError<NodeId>>;

/// The log store. Cheap to clone; clones share the underlying store and the byte counter.
#[derive(Debug)]
pub struct LogStore<S: Store> {
    store: Arc<S>,
    appended: Arc<AtomicU64>,
}

impl<S: Store> Clone for LogStore<S> {
    fn clone(&self) -> Self {
        LogStore {
            store: Arc::clone(&self.store),
            appended: Arc::clone(&self.appended),
        }
    }
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageError::IO {
        source: StorageIOError::read_logs(AnyError::new(&e)),
    }
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageError::IO {
        source: StorageIOError::write_logs(AnyError::new(&e)),
    }
}

/// The last committed log id this node recorded (openraft's `save_committed`), read directly
/// from the store (for metrics).
pub fn committed<S: Store>(store: &S) -> lockstep_store::Result<Option<LogId<NodeId>>> {
    match store.get(Family::RaftMeta, COMMITTED)? {
        Some(bytes) => Ok(envelope::decode::<Option<LogId<NodeId>>>(
            Family::RaftMeta,
            COMMITTED,
            &bytes,
        )?),
        None => Ok(None),
    }
}

/// A log entry in its envelope: version 2 when it carries a format-2 command, so that a build
/// which cannot read it says so (`upgrade lockstepd`) instead of failing to decode it; every
/// older entry keeps version 1 and reads as before.
pub fn encode_entry(entry: &Entry<TypeConfig>) -> Vec<u8> {
    use crate::types::Body;
    let format_2 = matches!(
        &entry.payload,
        openraft::EntryPayload::Normal(p) if matches!(p.body, Body::Batch(_) | Body::SetLogFormat { .. })
    );
    envelope::encode_as(if format_2 { 2 } else { 1 }, entry)
}

impl<S: Store> LogStore<S> {
    pub fn new(store: Arc<S>) -> Self {
        LogStore {
            store,
            appended: Arc::default(),
        }
    }

    /// Bytes of encoded entries appended since this store was made (the server's snapshot
    /// policy builds a snapshot once enough log has been written since the last one).
    pub fn appended_bytes(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.appended)
    }

    fn meta<T: DeserializeOwned>(&self, key: &[u8]) -> StorageResult<Option<T>> {
        match self.store.get(Family::RaftMeta, key).map_err(read_err)? {
            None => Ok(None),
            Some(bytes) => envelope::decode(Family::RaftMeta, key, &bytes)
                .map(Some)
                .map_err(read_err),
        }
    }

    fn put_meta<T: Serialize>(&self, key: &[u8], value: &T) -> StorageResult<()> {
        let mut batch = Batch::default();
        batch.put(Family::RaftMeta, key, envelope::encode(value));
        self.store.write(batch, Durability::Sync).map_err(write_err)
    }

    fn last_log_id(&self) -> StorageResult<Option<LogId<NodeId>>> {
        match self
            .store
            .last(Family::RaftLog, &[], None)
            .map_err(read_err)?
        {
            None => Ok(None),
            Some((key, bytes)) => {
                let entry: Entry<TypeConfig> =
                    envelope::decode(Family::RaftLog, &key, &bytes).map_err(read_err)?;
                Ok(Some(entry.log_id))
            }
        }
    }
}

impl<S: Store> RaftLogReader<TypeConfig> for LogStore<S> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Some(i.saturating_add(1)),
            Bound::Excluded(i) => Some(*i),
            Bound::Unbounded => None,
        };
        let end_key = end.map(keys::u64_key);
        let rows = self
            .store
            .range(
                Family::RaftLog,
                &keys::u64_key(start),
                end_key.as_deref(),
                usize::MAX,
            )
            .map_err(read_err)?;
        rows.iter()
            .map(|(k, v)| envelope::decode(Family::RaftLog, k, v).map_err(read_err))
            .collect()
    }
}

impl<S: Store> RaftLogStorage<TypeConfig> for LogStore<S> {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId<NodeId>> = self.meta(LAST_PURGED)?;
        let last_log_id = self.last_log_id()?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        self.put_meta(VOTE, vote).map_err(|_| StorageError::IO {
            source: StorageIOError::write_vote(AnyError::error("vote write failed")),
        })
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        self.meta(VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        // Not synced (DESIGN §3 invariant 7): the commit index is recoverable. After a crash
        // openraft restarts from max(this value, the last applied id) and learns the rest from
        // the leader's next AppendEntries; everything at or below a lost commit index is in the
        // synced log and is committed again by the quorum that holds it. Syncing it cost one
        // fsync per commit advance on every node, on the path before apply.
        let mut batch = Batch::default();
        batch.put(Family::RaftMeta, COMMITTED, envelope::encode(&committed));
        self.store
            .write(batch, Durability::Buffered)
            .map_err(write_err)
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        Ok(self.meta::<Option<LogId<NodeId>>>(COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = Batch::default();
        let mut bytes = 0u64;
        for entry in entries {
            let value = encode_entry(&entry);
            bytes += value.len() as u64;
            batch.put(Family::RaftLog, keys::u64_key(entry.log_id.index), value);
        }
        self.appended.fetch_add(bytes, Ordering::Relaxed);
        // Synced before the callback: openraft counts the entries as durable when it fires.
        let durability = if crate::mutation::is(crate::mutation::Mutation::UnsyncedLogAppend) {
            Durability::Buffered
        } else {
            Durability::Sync
        };
        let result = self.store.write(batch, durability);
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let message = e.to_string();
                callback.log_io_completed(Err(std::io::Error::other(message)));
                Err(write_err(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let mut batch = Batch::default();
        batch.delete_range(
            Family::RaftLog,
            keys::u64_key(log_id.index),
            keys::u64_key(u64::MAX),
        );
        batch.delete(Family::RaftLog, keys::u64_key(u64::MAX));
        self.store.write(batch, Durability::Sync).map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        // Record the purge point first, in the same synced batch as the deletion, so a crash
        // can never leave a hole between the recorded point and the first entry.
        let mut batch = Batch::default();
        batch.put(Family::RaftMeta, LAST_PURGED, envelope::encode(&log_id));
        batch.delete_range(
            Family::RaftLog,
            keys::u64_key(0),
            keys::u64_key(log_id.index.saturating_add(1)),
        );
        self.store.write(batch, Durability::Sync).map_err(write_err)
    }
}
