//! openraft's state machine on a [`Store`]: apply, snapshots and the applied state.
//!
//! Snapshots are a consistent export of the state families (a RocksDB snapshot underneath),
//! wrapped in the versioned envelope. openraft sends them to followers in chunks of at most
//! `snapshot_max_chunk_size` bytes; installing one replaces every state family in one synced
//! batch, so a crash leaves either the old state or the new one.

use std::io::Cursor;
use std::sync::Arc;

use lockstep_store::{Batch, Durability, Family, Store, envelope};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};

use crate::apply::{Applier, DefinitionCache, meta};
use crate::types::{Member, NodeId, Response, TypeConfig};

const CURRENT_SNAPSHOT: &[u8] = b"snapshot";
/// The largest snapshot this build accepts, in bytes: a snapshot is held in memory while it is
/// built, sent or installed.
pub const SNAPSHOT_BYTES_MAX: usize = 1 << 30;

type StorageResult<T> = Result<T, StorageError<NodeId>>;

fn sm_read(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageError::IO {
        source: StorageIOError::read_state_machine(AnyError::new(&e)),
    }
}

fn sm_write(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageError::IO {
        source: StorageIOError::write_state_machine(AnyError::new(&e)),
    }
}

fn snapshot_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageError::IO {
        source: StorageIOError::read_snapshot(None, AnyError::new(&e)),
    }
}

/// The entries of the state families at one applied log id.
#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    entries: Vec<(u8, Vec<u8>, Vec<u8>)>,
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, Member>,
    data: Vec<u8>,
}

/// The last applied log id and the membership it established.
pub type AppliedState = (Option<LogId<NodeId>>, StoredMembership<NodeId, Member>);

/// Reads the applied log id and membership from the state families.
pub fn applied_state<S: Store>(store: &S) -> lockstep_store::Result<AppliedState> {
    let applied = match store.get(Family::Meta, meta::APPLIED)? {
        Some(b) => envelope::decode::<Option<LogId<NodeId>>>(Family::Meta, meta::APPLIED, &b)?,
        None => None,
    };
    let membership = match store.get(Family::Meta, meta::MEMBERSHIP)? {
        Some(b) => envelope::decode(Family::Meta, meta::MEMBERSHIP, &b)?,
        None => StoredMembership::default(),
    };
    Ok((applied, membership))
}

/// Told the number of entries of every apply call once its batch is written (the server's
/// metrics use it; this crate stays free of any metrics library).
#[derive(Clone)]
pub struct ApplyHook(Arc<dyn Fn(usize) + Send + Sync>);

impl ApplyHook {
    pub fn new(f: impl Fn(usize) + Send + Sync + 'static) -> Self {
        ApplyHook(Arc::new(f))
    }
}

impl std::fmt::Debug for ApplyHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApplyHook")
    }
}

/// The replicated state machine. Queries read the same store directly (see [`crate::read`]).
#[derive(Debug)]
pub struct StateMachine<S: Store> {
    store: Arc<S>,
    cache: DefinitionCache,
    on_apply: Option<ApplyHook>,
}

impl<S: Store> StateMachine<S> {
    pub fn new(store: Arc<S>) -> Self {
        StateMachine {
            store,
            cache: DefinitionCache::default(),
            on_apply: None,
        }
    }

    /// Calls `hook` with the entry count of every apply call.
    pub fn with_apply_hook(mut self, hook: ApplyHook) -> Self {
        self.on_apply = Some(hook);
        self
    }

    pub fn store(&self) -> &Arc<S> {
        &self.store
    }
}

/// Builds snapshots from a consistent export of the state families.
#[derive(Debug)]
pub struct SnapshotBuilder<S: Store> {
    store: Arc<S>,
}

impl<S: Store> RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder<S> {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let exported = self.store.export(&Family::STATE).map_err(snapshot_err)?;
        // The applied id and membership come from the same export, so they describe exactly
        // the state the snapshot holds.
        let view = lockstep_store::MemStore::new();
        let mut batch = Batch::default();
        for (family, k, v) in exported.iter().filter(|(f, _, _)| *f == Family::Meta) {
            batch.put(*family, k.clone(), v.clone());
        }
        view.write(batch, Durability::Buffered)
            .map_err(snapshot_err)?;
        let (last_log_id, last_membership) = applied_state(&view).map_err(snapshot_err)?;
        let body = SnapshotBody {
            entries: exported
                .into_iter()
                .map(|(f, k, v)| (f.id(), k, v))
                .collect(),
        };
        let data = envelope::encode(&body);
        if data.len() > SNAPSHOT_BYTES_MAX {
            return Err(StorageError::IO {
                source: StorageIOError::write_snapshot(
                    None,
                    AnyError::error(format!(
                        "snapshot is {} bytes, more than SNAPSHOT_BYTES_MAX ({SNAPSHOT_BYTES_MAX})",
                        data.len()
                    )),
                ),
            });
        }
        let snapshot_id = match last_log_id {
            Some(id) => format!("{}-{}-{}", id.leader_id.term, id.index, data.len()),
            None => format!("empty-{}", data.len()),
        };
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
            snapshot_id,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        };
        let mut batch = Batch::default();
        batch.put(
            Family::RaftMeta,
            CURRENT_SNAPSHOT,
            envelope::encode(&stored),
        );
        self.store
            .write(batch, Durability::Sync)
            .map_err(sm_write)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl<S: Store> RaftStateMachine<TypeConfig> for StateMachine<S> {
    type SnapshotBuilder = SnapshotBuilder<S>;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, Member>)> {
        applied_state(&*self.store).map_err(sm_read)
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<Response>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut applier = Applier::new(&*self.store, &mut self.cache);
        let mut responses = Vec::new();
        for entry in entries {
            // A store error here means the replica cannot trust its state: stop the node.
            responses.push(applier.apply_entry(&entry).map_err(sm_write)?);
        }
        let count = responses.len();
        let batch = applier.into_batch();
        if !batch.is_empty() {
            // Buffered: the synced Raft log can reproduce this batch after a crash, and the
            // applied id is in the same batch, so replay resumes exactly where this stopped.
            self.store
                .write(batch, Durability::Buffered)
                .map_err(sm_write)?;
        }
        if let Some(hook) = &self.on_apply {
            (hook.0)(count);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            store: Arc::clone(&self.store),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Member>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let data = snapshot.into_inner();
        if data.len() > SNAPSHOT_BYTES_MAX {
            return Err(snapshot_err(lockstep_store::Error::Invalid(format!(
                "snapshot of {} bytes exceeds SNAPSHOT_BYTES_MAX",
                data.len()
            ))));
        }
        let body: SnapshotBody =
            envelope::decode(Family::RaftMeta, CURRENT_SNAPSHOT, &data).map_err(snapshot_err)?;
        let mut batch = Batch::default();
        for family in Family::STATE {
            batch.delete_range(family, Vec::new(), vec![0xff; 64]);
        }
        for (id, k, v) in body.entries {
            let family = Family::from_id(id)
                .filter(|f| Family::STATE.contains(f))
                .ok_or_else(|| {
                    snapshot_err(lockstep_store::Error::Invalid(format!(
                        "snapshot names unknown family {id}"
                    )))
                })?;
            batch.put(family, k, v);
        }
        // openraft trusts `meta`; the exported Meta family carries the same applied id.
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        batch.put(
            Family::RaftMeta,
            CURRENT_SNAPSHOT,
            envelope::encode(&stored),
        );
        self.store
            .write(batch, Durability::Sync)
            .map_err(sm_write)?;
        self.cache.clear();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let Some(bytes) = self
            .store
            .get(Family::RaftMeta, CURRENT_SNAPSHOT)
            .map_err(sm_read)?
        else {
            return Ok(None);
        };
        let stored: StoredSnapshot =
            envelope::decode(Family::RaftMeta, CURRENT_SNAPSHOT, &bytes).map_err(sm_read)?;
        Ok(Some(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        }))
    }
}
