//! openraft's state machine on a [`Store`]: apply, snapshots and the applied state.
//!
//! A snapshot is a checkpoint of the store ([`Store::checkpoint`]: RocksDB flushes its
//! memtables and hard-links its files into `<data dir>/snapshots/<id>.checkpoint`), so
//! building one costs what changed since the last, not the size of the state, and leaves
//! every write before it durable; openraft purges the log only behind it. Its applied id and
//! membership are read from the checkpoint itself. The state families are exported to a
//! snapshot file (`snapshot_file`, `<id>.snap`) only when a follower needs the snapshot, on
//! a blocking thread ([`SnapshotData::ready`]), once per snapshot. Snapshot I/O never runs on
//! the Raft core or a tokio worker. Installing a received file writes the state in bounded
//! batches under a synced marker; a node that crashes mid-install finishes the install from
//! the file when it opens ([`StateMachine::open`]), so it never starts on half a snapshot.

use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use lockstep_store::{Batch, Durability, Family, MemStore, Store, envelope};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};

use crate::apply::{Applier, ApplyCache, meta};
use crate::snapshot_data::SnapshotData;
use crate::snapshot_file;
use crate::types::{Member, NodeId, Response, TypeConfig};

/// Where the current snapshot's file and metadata are recorded (RaftMeta).
const CURRENT_SNAPSHOT: &[u8] = b"snapshot-file";
/// Earlier versions kept the whole snapshot in this RaftMeta value; removed when a new
/// snapshot is recorded.
const LEGACY_SNAPSHOT: &[u8] = b"snapshot";
/// Present while a snapshot is being installed (RaftMeta); names the file to finish from.
const INSTALLING: &[u8] = b"snapshot-installing";
/// Puts per write batch while installing a snapshot, so memory stays bounded.
pub const INSTALL_BATCH_BYTES: usize = 8 << 20;

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

fn snapshot_write_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageError::IO {
        source: StorageIOError::write_snapshot(None, AnyError::new(&e)),
    }
}

/// A snapshot on disk: its metadata and its name in the snapshot directory, either a
/// snapshot file (`<id>.snap`: received from a leader, or written by an older version) or a
/// checkpoint directory (`<id>.checkpoint`, exported on demand to `<id>.snap` beside it).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, Member>,
    file: String,
}

const FILE_SUFFIX: &str = ".snap";
const CHECKPOINT_SUFFIX: &str = ".checkpoint";

/// `x` of `x.snap` or `x.checkpoint`: a checkpoint and its export share it.
fn stem(name: &str) -> Option<&str> {
    name.strip_suffix(FILE_SUFFIX)
        .or_else(|| name.strip_suffix(CHECKPOINT_SUFFIX))
}

/// The snapshot directory, shared by the state machine and its builders; the lock orders
/// recording a snapshot, exporting one and removing what is no longer recorded. `state`
/// keeps a build's checkpoint and an install apart (taken before `lock`): a checkpoint taken
/// in the middle of an install would hold half of the new state under the old applied id.
#[derive(Clone, Debug)]
struct SnapshotDir {
    path: PathBuf,
    lock: Arc<Mutex<()>>,
    state: Arc<Mutex<()>>,
}

fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{prefix}-{nanos}-{}.tmp", std::process::id())
}

/// A snapshot id as a file name (ids are made by [`SnapshotBuilder`], but one received from a
/// leader is not trusted to be a plain name).
fn file_name(snapshot_id: &str) -> String {
    format!("{}{FILE_SUFFIX}", clean_id(snapshot_id))
}

fn checkpoint_name(snapshot_id: &str) -> String {
    format!("{}{CHECKPOINT_SUFFIX}", clean_id(snapshot_id))
}

fn clean_id(snapshot_id: &str) -> String {
    snapshot_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl SnapshotDir {
    fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    fn current<S: Store>(store: &S) -> lockstep_store::Result<Option<StoredSnapshot>> {
        match store.get(Family::RaftMeta, CURRENT_SNAPSHOT)? {
            Some(b) => Ok(Some(envelope::decode(
                Family::RaftMeta,
                CURRENT_SNAPSHOT,
                &b,
            )?)),
            None => Ok(None),
        }
    }

    fn hold(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Held while a checkpoint is taken and recorded, and while a snapshot is installed.
    fn hold_state(&self) -> std::sync::MutexGuard<'_, ()> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records `stored` as the current snapshot unless a newer one is recorded, then removes
    /// every snapshot file and checkpoint but the current one (and its export). Returns
    /// whether `stored` is now current.
    fn record<S: Store>(
        &self,
        store: &S,
        stored: &StoredSnapshot,
        mut batch: Batch,
    ) -> lockstep_store::Result<bool> {
        let _guard = self.hold();
        let newer = Self::current(store)?
            .filter(|c| c.meta.last_log_id > stored.meta.last_log_id && c.file != stored.file);
        let current = match &newer {
            Some(c) => c.file.clone(),
            None => {
                batch.put(Family::RaftMeta, CURRENT_SNAPSHOT, envelope::encode(stored));
                batch.delete(Family::RaftMeta, LEGACY_SNAPSHOT);
                stored.file.clone()
            }
        };
        store.write(batch, Durability::Sync)?;
        let keep = stem(&current).map(str::to_string);
        if let Ok(entries) = std::fs::read_dir(&self.path) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                if stem(&name).is_some() && stem(&name) != keep.as_deref() {
                    remove_entry(&entry.path());
                }
            }
        }
        Ok(newer.is_none())
    }

    /// Checkpoints `store` and records the checkpoint as the current snapshot (synced), with
    /// the applied id and membership read from the checkpoint itself, so that they describe
    /// exactly the state it holds however far apply has moved on meanwhile.
    fn checkpoint<S: Store>(&self, store: &S) -> lockstep_store::Result<StoredSnapshot> {
        let io = |what: &str, e: std::io::Error| {
            lockstep_store::Error::Invalid(format!(
                "snapshot {what} in {}: {e}",
                self.path.display()
            ))
        };
        let _state = self.hold_state();
        let building = self.file(&unique("building"));
        store.checkpoint(&building)?;
        let mut metas = Batch::default();
        S::read_checkpoint(&building, &[Family::Meta], &mut |family, k, v| {
            metas.put(family, k.to_vec(), v.to_vec());
            Ok(())
        })?;
        let view = MemStore::new();
        view.write(metas, Durability::Buffered)?;
        let (last_log_id, last_membership) = applied_state(&view)?;
        // Unique even when two snapshots hold the same applied id (their states are equal,
        // but their directories must not collide).
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let snapshot_id = match last_log_id {
            Some(id) => format!("{}-{}-{nanos:x}", id.leader_id.term, id.index),
            None => format!("empty-{nanos:x}"),
        };
        let name = checkpoint_name(&snapshot_id);
        std::fs::rename(&building, self.file(&name)).map_err(|e| io("rename", e))?;
        sync_dir(&self.path).map_err(|e| io("directory sync", e))?;
        let stored = StoredSnapshot {
            meta: SnapshotMeta {
                last_log_id,
                last_membership,
                snapshot_id,
            },
            file: name,
        };
        self.record(store, &stored, Batch::default())?;
        Ok(stored)
    }

    /// Exports the state families of checkpoint `name` to its snapshot file (synced, then
    /// renamed into place), unless an earlier call did; returns the file's path.
    fn export<S: Store>(&self, name: &str) -> std::io::Result<PathBuf> {
        let _guard = self.hold();
        let stem = stem(name).unwrap_or(name);
        let out = self.file(&format!("{stem}{FILE_SUFFIX}"));
        if out.is_file() {
            return Ok(out);
        }
        let started = std::time::Instant::now();
        let temp = self.file(&unique("exporting"));
        let mut writer = snapshot_file::Writer::new(BufWriter::new(std::fs::File::create(&temp)?))?;
        S::read_checkpoint(&self.file(name), &Family::STATE, &mut |family, k, v| {
            writer
                .record(family, k, v)
                .map_err(|e| lockstep_store::Error::Invalid(e.to_string()))
        })
        .map_err(std::io::Error::other)?;
        let (file, records) = writer.finish()?;
        file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&temp, &out)?;
        sync_dir(&self.path)?;
        tracing::info!(
            checkpoint = name,
            records,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "exported a snapshot for a follower"
        );
        Ok(out)
    }

    /// The data of `stored`: its file, or its checkpoint's export once there is one, or the
    /// checkpoint to export when it is first read.
    async fn data<S: Store>(&self, stored: &StoredSnapshot) -> std::io::Result<SnapshotData> {
        if stored.file.ends_with(CHECKPOINT_SUFFIX) {
            let exported = self.file(&file_name(stem(&stored.file).unwrap_or_default()));
            match tokio::fs::File::open(&exported).await {
                Ok(file) => return Ok(SnapshotData::from_file(file)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            tokio::fs::metadata(self.file(&stored.file)).await?;
            let dir = self.clone();
            let name = stored.file.clone();
            return Ok(SnapshotData::from_checkpoint(Arc::new(move || {
                dir.export::<S>(&name)
            })));
        }
        // Opened before anything else can be recorded, so that a newer snapshot recorded
        // meanwhile cannot remove it first; an open file outlives its name.
        Ok(SnapshotData::from_file(
            tokio::fs::File::open(self.file(&stored.file)).await?,
        ))
    }
}

/// Removes a snapshot file or checkpoint directory; what cannot be removed now is removed
/// by a later call.
fn remove_entry(path: &Path) {
    let _ = if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
}

fn sync_dir(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(path)?.sync_all()
}

/// Replaces the state families with the snapshot in `file`, in bounded batches, then records
/// it as current and clears the install marker (synced). Idempotent: it is re-run from the
/// start when a crash interrupted it.
fn install_from_file<S: Store>(
    store: &S,
    dir: &SnapshotDir,
    stored: &StoredSnapshot,
) -> lockstep_store::Result<()> {
    let invalid = |e: std::io::Error| {
        lockstep_store::Error::Invalid(format!("snapshot file {}: {e}", stored.file))
    };
    let file = std::fs::File::open(dir.file(&stored.file)).map_err(invalid)?;
    let mut batch = Batch::default();
    for family in Family::STATE {
        batch.delete_range(family, Vec::new(), vec![0xff; 64]);
    }
    let mut pending = 0usize;
    snapshot_file::read_each(BufReader::new(file), |family, k, v| {
        pending += k.len() + v.len();
        batch.put(family, k, v);
        if pending >= INSTALL_BATCH_BYTES {
            store
                .write(std::mem::take(&mut batch), Durability::Buffered)
                .map_err(std::io::Error::other)?;
            pending = 0;
        }
        Ok(())
    })
    .map_err(invalid)?;
    batch.delete(Family::RaftMeta, INSTALLING);
    dir.record(store, stored, batch)?;
    Ok(())
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

/// Fault injection for tests (like `--peer-via`, never for production): when the
/// environment variable names a file and that file exists, the process removes it and aborts
/// in `apply`, after the entries are committed (so synced in a majority's logs) and before
/// their batch is written: the crash between log sync and apply. Read once; nothing is
/// checked when it is unset.
pub const CRASH_IN_APPLY_ENV: &str = "LOCKSTEP_FAULT_CRASH_IN_APPLY";

fn crash_here_if_asked() {
    static FILE: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    let file = FILE.get_or_init(|| std::env::var_os(CRASH_IN_APPLY_ENV).map(PathBuf::from));
    if let Some(file) = file
        && std::fs::remove_file(file).is_ok()
    {
        eprintln!(
            "fault injection ({CRASH_IN_APPLY_ENV}): aborting in apply, before the batch is written"
        );
        std::process::abort();
    }
}

/// What one apply call did, told to the [`ApplyHook`] once its batch is written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Entries applied.
    pub entries: usize,
    /// The earliest due time (micros) of the timers they armed, if any: the leader's timer
    /// service must not start its next scan of the due index after it.
    pub earliest_armed: Option<i64>,
    /// Whether they wrote outbox items: the leader's dispatcher has work.
    pub queued_outbox: bool,
    /// Whether they made a task ready: polls waiting on this node (any node) have work.
    pub readied_task: bool,
    /// Whether they changed the webhook subscriptions: the leader's delivery reconciles.
    pub changed_subscriptions: bool,
    /// Whether they changed a schedule (created, paused, fired...): the leader's schedule
    /// service looks for its next due tick again.
    pub changed_schedules: bool,
}

/// Told what every apply call did once its batch is written (the server's metrics and timer
/// service use it; this crate stays free of both).
#[derive(Clone)]
pub struct ApplyHook(Arc<dyn Fn(Applied) + Send + Sync>);

impl ApplyHook {
    pub fn new(f: impl Fn(Applied) + Send + Sync + 'static) -> Self {
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
    cache: ApplyCache,
    on_apply: Option<ApplyHook>,
    snapshots: SnapshotDir,
}

impl<S: Store> StateMachine<S> {
    /// The state machine on `store`, with snapshot files in `snapshot_dir` (created if
    /// missing). Finishes a snapshot install that a crash interrupted, and removes files of
    /// snapshots that were being built or received.
    pub fn open(store: Arc<S>, snapshot_dir: impl Into<PathBuf>) -> lockstep_store::Result<Self> {
        let path = snapshot_dir.into();
        let io = |e: std::io::Error| {
            lockstep_store::Error::Invalid(format!("snapshot directory {}: {e}", path.display()))
        };
        std::fs::create_dir_all(&path).map_err(io)?;
        for entry in std::fs::read_dir(&path).map_err(io)?.flatten() {
            if entry.file_name().to_string_lossy().ends_with(".tmp") {
                remove_entry(&entry.path());
            }
        }
        let snapshots = SnapshotDir {
            path,
            lock: Arc::new(Mutex::new(())),
            state: Arc::new(Mutex::new(())),
        };
        if let Some(b) = store.get(Family::RaftMeta, INSTALLING)? {
            let stored: StoredSnapshot = envelope::decode(Family::RaftMeta, INSTALLING, &b)?;
            tracing::warn!(file = %stored.file, "finishing a snapshot install interrupted by a crash");
            install_from_file(&*store, &snapshots, &stored)?;
        }
        Ok(StateMachine {
            store,
            cache: ApplyCache::default(),
            on_apply: None,
            snapshots,
        })
    }

    /// Calls `hook` after every apply call, once its batch is written.
    pub fn with_apply_hook(mut self, hook: ApplyHook) -> Self {
        self.on_apply = Some(hook);
        self
    }

    pub fn store(&self) -> &Arc<S> {
        &self.store
    }
}

/// Builds snapshots: a checkpoint of the store, on a blocking thread.
#[derive(Debug)]
pub struct SnapshotBuilder<S: Store> {
    store: Arc<S>,
    snapshots: SnapshotDir,
}

impl<S: Store> RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder<S> {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let store = Arc::clone(&self.store);
        let dir = self.snapshots.clone();
        let built = tokio::task::spawn_blocking(move || dir.checkpoint(&*store))
            .await
            .map_err(|e| snapshot_write_err(std::io::Error::other(e)))?
            .map_err(snapshot_write_err)?;
        let stored = match self.snapshots.data::<S>(&built).await {
            Ok(data) => {
                return Ok(Snapshot {
                    meta: built.meta,
                    snapshot: Box::new(data),
                });
            }
            // A snapshot installed from the leader meanwhile is newer than this one, and
            // recording it removed this checkpoint: the installed one is this state
            // machine's snapshot now, so it is the answer (failing would stop Raft for good).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                SnapshotDir::current(&*self.store)
                    .map_err(sm_read)?
                    .filter(|current| current.meta.last_log_id > built.meta.last_log_id)
                    .ok_or_else(|| snapshot_err(e))?
            }
            Err(e) => return Err(snapshot_err(e)),
        };
        tracing::info!(
            built = built.meta.snapshot_id,
            installed = stored.meta.snapshot_id,
            "a snapshot installed meanwhile replaced the one just built"
        );
        let data = self
            .snapshots
            .data::<S>(&stored)
            .await
            .map_err(snapshot_err)?;
        Ok(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(data),
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
        let earliest_armed = applier.earliest_armed();
        let queued_outbox = applier.queued_outbox();
        let readied_task = applier.readied_task();
        let changed_subscriptions = applier.changed_subscriptions();
        let changed_schedules = applier.changed_schedules();
        let batch = applier.into_batch();
        crash_here_if_asked();
        if !batch.is_empty() {
            // Buffered: the synced Raft log can reproduce this batch after a crash, and the
            // applied id is in the same batch, so replay resumes exactly where this stopped.
            if let Err(e) = self.store.write(batch, Durability::Buffered) {
                // The cache already holds what the batch would have left.
                self.cache.clear();
                return Err(sm_write(e));
            }
        }
        // After the write: whoever the hook tells about an armed timer finds it stored.
        if let Some(hook) = &self.on_apply {
            (hook.0)(Applied {
                entries: count,
                earliest_armed,
                queued_outbox,
                readied_task,
                changed_subscriptions,
                changed_schedules,
            });
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            store: Arc::clone(&self.store),
            snapshots: self.snapshots.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<SnapshotData>> {
        let path = self.snapshots.file(&unique("incoming"));
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(snapshot_write_err)?;
        Ok(Box::new(SnapshotData::from_file(file)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Member>,
        mut snapshot: Box<SnapshotData>,
    ) -> StorageResult<()> {
        use tokio::io::AsyncSeekExt;
        // Received data is a file already; a checkpoint (a local one, handed over directly)
        // is exported first.
        snapshot.ready().await.map_err(snapshot_err)?;
        let mut snapshot = snapshot
            .into_file()
            .ok_or_else(|| snapshot_err(std::io::Error::other("snapshot data has no file")))?;
        // The received data is in an unnamed `incoming-*.tmp` handle: copy it to a temporary
        // file, synced, before the state is touched. It takes the snapshot's name only under
        // the state lock below: a snapshot recorded meanwhile (a build of this node's own)
        // removes every snapshot file it does not keep, and would remove this one.
        let name = file_name(&meta.snapshot_id);
        let target = self.snapshots.file(&name);
        let copy = self.snapshots.file(&unique("installing"));
        snapshot
            .seek(std::io::SeekFrom::Start(0))
            .await
            .map_err(snapshot_err)?;
        let mut out = tokio::fs::File::create(&copy)
            .await
            .map_err(snapshot_write_err)?;
        tokio::io::copy(&mut snapshot, &mut out)
            .await
            .map_err(snapshot_write_err)?;
        out.sync_all().await.map_err(snapshot_write_err)?;
        drop(out);
        let stored = StoredSnapshot {
            meta: meta.clone(),
            file: name,
        };
        let store = Arc::clone(&self.store);
        let dir = self.snapshots.clone();
        tokio::task::spawn_blocking(move || {
            let _state = dir.hold_state();
            let io = |e: std::io::Error| {
                lockstep_store::Error::Invalid(format!(
                    "snapshot directory {}: {e}",
                    dir.path.display()
                ))
            };
            std::fs::rename(&copy, &target).map_err(io)?;
            sync_dir(&dir.path).map_err(io)?;
            // From here a crash is finished at the next open, from the file.
            let mut marker = Batch::default();
            marker.put(Family::RaftMeta, INSTALLING, envelope::encode(&stored));
            store.write(marker, Durability::Sync)?;
            install_from_file(&*store, &dir, &stored)?;
            if let Ok(entries) = std::fs::read_dir(&dir.path) {
                for entry in entries.flatten() {
                    if entry.file_name().to_string_lossy().starts_with("incoming-") {
                        let _ = std::fs::remove_file(entry.path());
                    }
                }
            }
            Ok::<(), lockstep_store::Error>(())
        })
        .await
        .map_err(|e| sm_write(std::io::Error::other(e)))?
        .map_err(sm_write)?;
        // openraft trusts `meta`; the installed Meta family carries the same applied id.
        self.cache.clear();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let Some(stored) = SnapshotDir::current(&*self.store).map_err(sm_read)? else {
            return Ok(None);
        };
        match self.snapshots.data::<S>(&stored).await {
            Ok(data) => Ok(Some(Snapshot {
                meta: stored.meta,
                snapshot: Box::new(data),
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Removed by hand, or a restored data directory without its snapshots: a new
                // one is built when one is needed.
                tracing::warn!(file = %stored.file, "the recorded snapshot is missing");
                Ok(None)
            }
            Err(e) => Err(snapshot_err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use lockstep_store::MemStore;
    use openraft::{CommittedLeaderId, Membership};
    use tokio::io::AsyncWriteExt;

    use super::*;

    fn seeded(instances: usize) -> Arc<MemStore> {
        let store = Arc::new(MemStore::new());
        let mut batch = Batch::default();
        let applied = Some(LogId::new(CommittedLeaderId::new(3, 1), 42));
        batch.put(Family::Meta, meta::APPLIED, envelope::encode(&applied));
        let membership = StoredMembership::<NodeId, Member>::new(
            applied,
            Membership::new(vec![[1u64].into()], None),
        );
        batch.put(
            Family::Meta,
            meta::MEMBERSHIP,
            envelope::encode(&membership),
        );
        for i in 0..instances {
            batch.put(Family::Instances, format!("i-{i:05}"), vec![i as u8; 100]);
        }
        store.write(batch, Durability::Sync).unwrap();
        store
    }

    fn state(store: &MemStore) -> Vec<(Family, Vec<u8>, Vec<u8>)> {
        store.export(&Family::STATE).unwrap()
    }

    async fn bytes_of(snapshot: Snapshot<TypeConfig>) -> Vec<u8> {
        use tokio::io::AsyncReadExt;
        let mut file = snapshot.snapshot;
        file.ready().await.unwrap();
        let mut data = Vec::new();
        file.read_to_end(&mut data).await.unwrap();
        data
    }

    /// Builds a snapshot of `sm` and reads its bytes, as a leader sending it would.
    async fn snapshot_of(
        sm: &mut StateMachine<MemStore>,
    ) -> (SnapshotMeta<NodeId, Member>, Vec<u8>) {
        let built = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let meta = built.meta.clone();
        (meta, bytes_of(built).await)
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        names.sort();
        names
    }

    /// Building a snapshot checkpoints the store and exports nothing; the state families are
    /// exported when the snapshot is first read, as they were at the checkpoint (not as they
    /// are by then), once; the next snapshot removes the checkpoint and its export.
    #[tokio::test]
    async fn a_snapshot_is_a_checkpoint_exported_once_when_first_read() {
        let dirs = tempfile::tempdir().unwrap();
        let store = seeded(200);
        let at_checkpoint = state(&store);
        let mut sm = StateMachine::open(Arc::clone(&store), dirs.path()).unwrap();
        let built = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        assert!(!built.snapshot.is_file(), "nothing exported at build");
        let id = built.meta.snapshot_id.clone();
        assert_eq!(names(dirs.path()), [checkpoint_name(&id)]);

        let mut later = Batch::default();
        later.put(Family::Instances, "i-later", b"written after".to_vec());
        later.delete(Family::Instances, "i-00000");
        store.write(later, Durability::Buffered).unwrap();

        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, built.meta);
        let data = bytes_of(current).await;
        let mut exported = Vec::new();
        snapshot_file::read_each(&data[..], |f, k, v| {
            exported.push((f, k, v));
            Ok(())
        })
        .unwrap();
        assert_eq!(
            exported, at_checkpoint,
            "the export is the state at the checkpoint"
        );
        assert_eq!(names(dirs.path()), [checkpoint_name(&id), file_name(&id)]);
        let again = sm.get_current_snapshot().await.unwrap().unwrap();
        assert!(again.snapshot.is_file(), "the export is reused");

        let next = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        assert_eq!(
            names(dirs.path()),
            [checkpoint_name(&next.meta.snapshot_id)],
            "the older checkpoint and its export are removed"
        );
    }

    /// A snapshot installed from the leader while this node builds its own (chaos seed 993
    /// met it: a partitioned follower, healed, asked for a snapshot while the leader sent it
    /// one) is newer, and recording it removes the checkpoint just built: the build answers
    /// the installed snapshot instead of failing, which would stop Raft on this node for good.
    #[tokio::test]
    async fn a_build_overtaken_by_an_install_answers_the_installed_snapshot() {
        let dirs = tempfile::tempdir().unwrap();
        let store = seeded(20);
        let mut sm = StateMachine::open(Arc::clone(&store), dirs.path()).unwrap();
        let installed = StoredSnapshot {
            meta: SnapshotMeta {
                last_log_id: Some(LogId::new(CommittedLeaderId::new(4, 2), 99)),
                last_membership: StoredMembership::default(),
                snapshot_id: "4-99-installed".into(),
            },
            file: file_name("4-99-installed"),
        };
        std::fs::write(dirs.path().join(&installed.file), b"the leader's snapshot").unwrap();
        // Recorded as an install records it, between this build's checkpoint and its answer
        // (here: before the build, which the build's own record cannot tell apart).
        sm.snapshots
            .record(&*store, &installed, Batch::default())
            .unwrap();

        let built = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("an overtaken build is not a storage error");
        assert_eq!(built.meta, installed.meta);
        assert_eq!(bytes_of(built).await, b"the leader's snapshot");
        assert_eq!(
            names(dirs.path()),
            std::slice::from_ref(&installed.file),
            "the overtaken checkpoint is gone"
        );
        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, installed.meta);
    }

    /// A snapshot recorded while a received one waits to be installed (chaos seed 993: this
    /// node's own build recorded while the leader's snapshot was being installed) removes
    /// every snapshot file it does not keep; the received one is not among them yet, so the
    /// install still finds its file and succeeds.
    #[tokio::test]
    // The test holds the state lock across awaits on purpose: it plays a build that is
    // taking its checkpoint while the install (on another task) waits for the lock.
    #[allow(clippy::await_holding_lock)]
    async fn a_snapshot_recorded_during_an_install_does_not_remove_the_received_file() {
        let dirs = tempfile::tempdir().unwrap();
        let leader_store = seeded(50);
        let mut leader =
            StateMachine::open(Arc::clone(&leader_store), dirs.path().join("a")).unwrap();
        let (meta, data) = snapshot_of(&mut leader).await;

        let follower_store = seeded(3);
        let follower_dir = dirs.path().join("b");
        let mut follower = StateMachine::open(Arc::clone(&follower_store), &follower_dir).unwrap();
        let dir = follower.snapshots.clone();
        let mut incoming = follower.begin_receiving_snapshot().await.unwrap();
        incoming.write_all(&data).await.unwrap();

        // Hold the state lock, as a build taking its checkpoint does, while the install
        // copies the received data and then waits for the lock.
        let held = dir.hold_state();
        let install = tokio::spawn({
            let meta = meta.clone();
            async move { follower.install_snapshot(&meta, incoming).await }
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !names(&follower_dir)
            .iter()
            .any(|n| n.starts_with("installing-"))
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the install never copied its data"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        // The build records its snapshot (older than the received one) and cleans up.
        let own = StoredSnapshot {
            meta: SnapshotMeta {
                last_log_id: Some(LogId::new(CommittedLeaderId::new(1, 1), 7)),
                last_membership: StoredMembership::default(),
                snapshot_id: "1-7-own".into(),
            },
            file: file_name("1-7-own"),
        };
        std::fs::write(follower_dir.join(&own.file), b"this node's own").unwrap();
        dir.record(&*follower_store, &own, Batch::default())
            .unwrap();
        drop(held);

        install
            .await
            .unwrap()
            .expect("the install finds its file and succeeds");
        assert_eq!(state(&follower_store), state(&leader_store));
        assert_eq!(
            SnapshotDir::current(&*follower_store)
                .unwrap()
                .unwrap()
                .meta,
            meta
        );
    }

    /// A `Noop` entry at `index` proposed at `at_ms`, applied through openraft's call.
    async fn apply_noop(sm: &mut StateMachine<MemStore>, index: u64, at_ms: i64) {
        let entry = Entry::<TypeConfig> {
            log_id: LogId::new(CommittedLeaderId::new(3, 1), index),
            payload: openraft::EntryPayload::Normal(crate::Proposal {
                request_id: None,
                at: lockstep_core::Timestamp::from_millis(at_ms),
                body: crate::Body::Noop,
            }),
        };
        sm.apply([entry]).await.unwrap();
    }

    /// Apply's in-memory meta values (`ApplyCache`) do not outlive an installed snapshot:
    /// the next apply continues from the snapshot's cluster time, not from the replica's own.
    #[tokio::test]
    async fn an_installed_snapshot_replaces_what_apply_kept_in_memory() {
        let dirs = tempfile::tempdir().unwrap();
        let leader_store = seeded(3);
        let mut leader =
            StateMachine::open(Arc::clone(&leader_store), dirs.path().join("a")).unwrap();
        apply_noop(&mut leader, 43, 9_000).await;
        let (meta, data) = snapshot_of(&mut leader).await;

        let follower_store = seeded(3);
        let mut follower =
            StateMachine::open(Arc::clone(&follower_store), dirs.path().join("b")).unwrap();
        apply_noop(&mut follower, 43, 1_000).await;
        let mut incoming = follower.begin_receiving_snapshot().await.unwrap();
        incoming.write_all(&data).await.unwrap();
        follower.install_snapshot(&meta, incoming).await.unwrap();
        apply_noop(&mut follower, 44, 2_000).await;
        let time = crate::read::cluster_time(&*follower_store)
            .unwrap()
            .unwrap();
        assert_eq!(
            time.as_micros(),
            9_000_000 + 1,
            "apply went on from the time it kept before the install"
        );
    }

    /// A leader's snapshot file, received through openraft's calls, replaces the follower's
    /// state and becomes its current snapshot; the incoming temporary file is gone.
    #[tokio::test]
    async fn a_received_snapshot_file_replaces_the_state_and_becomes_current() {
        let dirs = tempfile::tempdir().unwrap();
        let leader_store = seeded(500);
        let mut leader =
            StateMachine::open(Arc::clone(&leader_store), dirs.path().join("a")).unwrap();
        let (meta, data) = snapshot_of(&mut leader).await;
        assert_eq!(meta.last_log_id.unwrap().index, 42);

        let follower_store = seeded(3);
        let mut follower =
            StateMachine::open(Arc::clone(&follower_store), dirs.path().join("b")).unwrap();
        let mut incoming = follower.begin_receiving_snapshot().await.unwrap();
        incoming.write_all(&data).await.unwrap();
        follower.install_snapshot(&meta, incoming).await.unwrap();
        assert_eq!(state(&follower_store), state(&leader_store));
        let current = follower.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta.snapshot_id, meta.snapshot_id);
        assert_eq!(bytes_of(current).await, data);
        assert_eq!(
            names(&dirs.path().join("b")),
            [file_name(&meta.snapshot_id)]
        );
    }

    /// A crash in the middle of an install (marker written, state half replaced) is finished
    /// from the file when the state machine opens again.
    #[tokio::test]
    async fn an_install_interrupted_by_a_crash_is_finished_at_open() {
        let dirs = tempfile::tempdir().unwrap();
        let source = seeded(300);
        let mut sm = StateMachine::open(Arc::clone(&source), dirs.path().join("a")).unwrap();
        let (meta, data) = snapshot_of(&mut sm).await;

        let target = seeded(7);
        let dir = dirs.path().join("b");
        std::fs::create_dir_all(&dir).unwrap();
        let name = file_name(&meta.snapshot_id);
        std::fs::write(dir.join(&name), &data).unwrap();
        let stored = StoredSnapshot { meta, file: name };
        let mut crashed = Batch::default();
        crashed.put(Family::RaftMeta, INSTALLING, envelope::encode(&stored));
        crashed.delete_range(Family::Instances, Vec::new(), vec![0xff; 64]);
        crashed.put(Family::Instances, "i-00000", vec![0u8; 100]);
        target.write(crashed, Durability::Sync).unwrap();

        let _reopened = StateMachine::open(Arc::clone(&target), &dir).unwrap();
        assert_eq!(state(&target), state(&source));
        assert!(target.get(Family::RaftMeta, INSTALLING).unwrap().is_none());
        assert_eq!(
            SnapshotDir::current(&*target).unwrap().unwrap().file,
            stored.file
        );
    }
}
