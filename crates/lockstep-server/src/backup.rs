//! Backups and restores.
//!
//! A backup is a RocksDB checkpoint of a node's whole store: a consistent point-in-time copy
//! (hard links to the immutable SST files when it is on the same file system as the store,
//! copies of the rest). Two ways to take one:
//!
//! - online, on a running node: `Cluster/Backup` (`lockstep cluster backup`) first waits for a
//!   read barrier, so the checkpoint holds every write acknowledged before the request, then
//!   writes it under `<data-dir>/backups/<name>` on that node;
//! - offline, on a stopped node: `lockstepd backup --data-dir D --out DIR`.
//!
//! A restore (`lockstepd restore`) turns a checkpoint into the data directory of a new
//! one-node cluster that serves the same instances, definitions and audit chain: it copies the
//! replicated state ([`Family::STATE`]) and replaces the membership with the new node alone;
//! the checkpoint's applied log id becomes the new log's purge point (Raft resumes after it);
//! a vote at the checkpoint's term for the new node makes its first election pick a later
//! term than any entry in the state; a snapshot of the restored state lets learners added
//! later catch up; and an identity file names the new node and its one-node cluster. Nothing
//! node-local of the old cluster (its log, votes, snapshots) comes along. The store is built
//! in `<data-dir>/.restoring` and moved into place at the end, identity file last, so an
//! interrupted restore leaves nothing a node would start on.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use lockstep_raft::log_store::LogStore;
use lockstep_raft::state_machine::{StateMachine, applied_state};
use lockstep_raft::{Member, NodeId};
use lockstep_store::schema::meta;
use lockstep_store::{Batch, Durability, Family, RocksOptions, RocksStore, Store, envelope};
use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::{LogId, Membership, RaftSnapshotBuilder, StorageError, StoredMembership, Vote};
use tonic::Status;

use crate::config::{Identity, MembersError};
use crate::node::Node;

/// Where online backups go, under the node's data directory.
pub const BACKUPS_DIR: &str = "backups";
/// Entries per batch while a restore copies the state.
const RESTORE_BATCH_ENTRIES: usize = 4096;
/// Longest backup name.
const NAME_BYTES_MAX: usize = 128;
/// Where a restore builds the new store, inside the target data directory.
const STAGING_DIR: &str = ".restoring";
use crate::config::SNAPSHOTS_DIR;

/// Why a backup, an inspection or a restore did not happen: which name, directory or step,
/// and what to do instead where the operator can.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(
        "backup name `{name}` must be 1 to {NAME_BYTES_MAX} letters, digits, `-`, `_` or `.`, not starting with `.`"
    )]
    BadName { name: String },
    #[error("{} already exists; choose another backup name or directory", .path.display())]
    Exists { path: PathBuf },
    #[error("{} holds no lockstepd store (no rocksdb/CURRENT)", .data_dir.display())]
    NoStore { data_dir: PathBuf },
    /// The offline backup could not open the store, most likely because a node runs on it.
    #[error("{source} (a running node is backed up with `lockstep cluster backup`)")]
    OpenForBackup { source: lockstep_store::Error },
    #[error("checkpoint to {} failed: {source}", .out.display())]
    Checkpoint {
        out: PathBuf,
        source: lockstep_store::Error,
    },
    #[error("{}: cannot read the applied state: {source}", .path.display())]
    AppliedState {
        path: PathBuf,
        source: lockstep_store::Error,
    },
    #[error("{} holds no applied state (a node that never joined a cluster?)", .path.display())]
    NoAppliedState { path: PathBuf },
    #[error("{}: cannot read the state: {source}", .path.display())]
    ReadState {
        path: PathBuf,
        source: lockstep_store::Error,
    },
    #[error("--id must be a positive integer")]
    ZeroId,
    /// The restored node's `id=address` pair.
    #[error(transparent)]
    Member(#[from] MembersError),
    #[error(
        "{} is not empty (it holds {}); restore into a new or empty data directory",
        .data_dir.display(),
        .taken.join(", ")
    )]
    NotEmpty {
        data_dir: PathBuf,
        taken: Vec<String>,
    },
    #[error("cannot create {}: {source}", .dir.display())]
    CreateDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot remove {}: {source}", .dir.display())]
    RemoveDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {}: {source}", .path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot move {} into {}: {source}", .from.display(), .to.display())]
    Move {
        from: PathBuf,
        to: PathBuf,
        source: std::io::Error,
    },
    /// Opening, reading or writing a store.
    #[error(transparent)]
    Store(#[from] lockstep_store::Error),
    /// Writing the restored node's vote, purge point or commit to its log (boxed: openraft's
    /// storage error is large).
    #[error(transparent)]
    Log(Box<StorageError<NodeId>>),
    #[error("cannot build the snapshot of the restored state: {0}")]
    Snapshot(Box<StorageError<NodeId>>),
    /// The runtime that drives the log store's async methods did not start.
    #[error(transparent)]
    Runtime(std::io::Error),
    #[error(transparent)]
    EncodeIdentity(#[from] toml::ser::Error),
}

impl From<StorageError<NodeId>> for BackupError {
    fn from(e: StorageError<NodeId>) -> BackupError {
        BackupError::Log(Box::new(e))
    }
}

/// What a checkpoint holds.
#[derive(Clone, Debug)]
pub struct BackupInfo {
    /// The checkpoint directory (a RocksDB database).
    pub path: PathBuf,
    /// The last log id applied in the checkpoint.
    pub applied: Option<LogId<NodeId>>,
    /// The membership of the cluster it was taken from.
    pub members: Vec<(NodeId, String)>,
    /// Bytes of the files in the checkpoint directory.
    pub bytes: u64,
}

/// Refuses names that are not one plain path component.
pub fn check_name(name: &str) -> Result<(), BackupError> {
    let ok = !name.is_empty()
        && name.len() <= NAME_BYTES_MAX
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(BackupError::BadName {
            name: name.to_string(),
        })
    }
}

/// Writes a checkpoint of `store` to `out` (which must not exist) and reads it back.
pub fn checkpoint(store: &RocksStore, out: &Path) -> Result<BackupInfo, BackupError> {
    if out.exists() {
        return Err(BackupError::Exists {
            path: out.to_path_buf(),
        });
    }
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|source| BackupError::CreateDir {
            dir: parent.to_path_buf(),
            source,
        })?;
    }
    store
        .checkpoint(out)
        .map_err(|source| BackupError::Checkpoint {
            out: out.to_path_buf(),
            source,
        })?;
    inspect(out)
}

/// Opens a checkpoint read-only and says what it holds.
pub fn inspect(path: &Path) -> Result<BackupInfo, BackupError> {
    let store = RocksStore::open_read_only(path)?;
    let (applied, membership) =
        applied_state(&store).map_err(|source| BackupError::AppliedState {
            path: path.to_path_buf(),
            source,
        })?;
    let members = membership
        .membership()
        .nodes()
        .map(|(id, m)| (*id, m.addr.clone()))
        .collect();
    Ok(BackupInfo {
        path: path.to_path_buf(),
        applied,
        members,
        bytes: dir_bytes(path),
    })
}

fn dir_bytes(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// The online backup of `Cluster/Backup`: a read barrier, then a checkpoint of this node's
/// store under `<data-dir>/backups/<name>` (`name` empty: a name from the time).
pub async fn online(node: &Node, name: &str) -> Result<BackupInfo, Status> {
    let name = if name.is_empty() {
        let now = jiff::Timestamp::now();
        format!("backup-{}-{}", now.strftime("%Y%m%dT%H%M%SZ"), node.id)
    } else {
        check_name(name).map_err(|e| crate::status::bad_request(e.to_string()))?;
        name.to_string()
    };
    let out = node.config.data_dir.join(BACKUPS_DIR).join(&name);
    if out.exists() {
        return Err(Status::already_exists(format!(
            "a backup named {name} already exists on node {} ({})",
            node.id,
            out.display()
        )));
    }
    // Everything acknowledged before this request is applied here before the checkpoint.
    node.read_barrier()
        .await
        .map_err(crate::status::write_error)?;
    let store = Arc::clone(&node.store);
    let info = tokio::task::spawn_blocking(move || checkpoint(&store, &out))
        .await
        .map_err(|e| Status::internal(format!("backup task failed: {e}")))?
        .map_err(|e| Status::internal(e.to_string()))?;
    tracing::info!(path = %info.path.display(), applied = ?info.applied, bytes = info.bytes, "backup written");
    Ok(info)
}

/// What a restore produced.
#[derive(Clone, Debug)]
pub struct Restored {
    pub applied: LogId<NodeId>,
    /// Entries of the replicated state copied.
    pub entries: usize,
}

/// Makes `data_dir` (absent or empty) the data directory of a one-node cluster made of node
/// `id` at `addr`, holding the replicated state of the checkpoint at `from`.
pub fn restore(
    from: &Path,
    data_dir: &Path,
    id: NodeId,
    addr: &str,
) -> Result<Restored, BackupError> {
    if id == 0 {
        return Err(BackupError::ZeroId);
    }
    crate::config::parse_members(&format!("{id}={addr}"))?;
    // Built in <data-dir>/.restoring and moved into place at the end, so the target may be
    // a mount point (a container volume) and an interrupted restore leaves no store behind.
    let staging = data_dir.join(STAGING_DIR);
    if let Ok(entries) = std::fs::read_dir(data_dir) {
        let taken: Vec<String> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name != STAGING_DIR)
            .collect();
        if !taken.is_empty() {
            return Err(BackupError::NotEmpty {
                data_dir: data_dir.to_path_buf(),
                taken,
            });
        }
    }
    let source = RocksStore::open_read_only(from)?;
    let (applied, _) = applied_state(&source).map_err(|source| BackupError::AppliedState {
        path: from.to_path_buf(),
        source,
    })?;
    let applied = applied.ok_or_else(|| BackupError::NoAppliedState {
        path: from.to_path_buf(),
    })?;
    if staging.exists() {
        // Left by an interrupted restore: never served, safe to start over.
        std::fs::remove_dir_all(&staging).map_err(|source| BackupError::RemoveDir {
            dir: staging.clone(),
            source,
        })?;
    }
    let rocks_dir = staging.join("rocksdb");
    std::fs::create_dir_all(&rocks_dir).map_err(|source| BackupError::CreateDir {
        dir: rocks_dir.clone(),
        source,
    })?;
    let target = Arc::new(RocksStore::open(&rocks_dir, &RocksOptions::default())?);

    let exported = source
        .export(&Family::STATE)
        .map_err(|source| BackupError::ReadState {
            path: from.to_path_buf(),
            source,
        })?;
    drop(source);
    let entries = exported.len();
    let mut batch = Batch::default();
    for (family, key, value) in exported {
        if family == Family::Meta && key == meta::MEMBERSHIP {
            continue;
        }
        batch.put(family, key, value);
        if batch.len() >= RESTORE_BATCH_ENTRIES {
            target.write(std::mem::take(&mut batch), Durability::Buffered)?;
        }
    }
    let membership = StoredMembership::<NodeId, Member>::new(
        Some(applied),
        Membership::new(
            vec![BTreeSet::from([id])],
            BTreeMap::from([(
                id,
                Member {
                    addr: addr.to_string(),
                },
            )]),
        ),
    );
    batch.put(
        Family::Meta,
        meta::MEMBERSHIP,
        envelope::encode(&membership),
    );
    target.write(batch, Durability::Sync)?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(BackupError::Runtime)?;
    runtime.block_on(async {
        let mut log = LogStore::new(Arc::clone(&target));
        log.save_vote(&Vote::new(applied.leader_id.term, id))
            .await?;
        log.purge(applied).await?;
        log.save_committed(Some(applied)).await?;
        let mut state_machine =
            StateMachine::open(Arc::clone(&target), staging.join(SNAPSHOTS_DIR))?;
        state_machine
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .map_err(|e| BackupError::Snapshot(Box::new(e)))?;
        Ok::<(), BackupError>(())
    })?;
    drop(target);

    let identity = Identity {
        node_id: id,
        cluster: format!("{id}={addr}"),
    };
    let identity_file = staging.join("node.toml");
    let identity_text = toml::to_string(&identity)?;
    crate::config::write_durably(&identity_file, identity_text.as_bytes()).map_err(|source| {
        BackupError::Write {
            path: identity_file,
            source,
        }
    })?;
    // The store first, the identity file last: lockstepd starts only on a complete store.
    for name in ["rocksdb", SNAPSHOTS_DIR, "node.toml"] {
        std::fs::rename(staging.join(name), data_dir.join(name)).map_err(|source| {
            BackupError::Move {
                from: staging.join(name),
                to: data_dir.to_path_buf(),
                source,
            }
        })?;
    }
    std::fs::remove_dir(&staging).map_err(|source| BackupError::RemoveDir {
        dir: staging.clone(),
        source,
    })?;
    Ok(Restored { applied, entries })
}

/// `lockstepd backup` and `lockstepd restore`.
#[derive(Debug, Parser)]
#[command(name = "lockstepd", version)]
struct OfflineCli {
    #[command(subcommand)]
    command: OfflineCommand,
}

#[derive(Debug, Subcommand)]
enum OfflineCommand {
    /// Checkpoint the store of a STOPPED node (for a running node use `lockstep cluster
    /// backup`, which writes the checkpoint under <data-dir>/backups on the node).
    ///
    /// Example: lockstepd backup --data-dir /var/lib/lockstep --out /backups/2026-11-25
    Backup {
        /// The node's data directory (the one given to lockstepd --data-dir).
        #[arg(long)]
        data_dir: PathBuf,
        /// Where to write the checkpoint (a directory that does not exist yet).
        #[arg(long)]
        out: PathBuf,
    },
    /// Turn a checkpoint into the data directory of a new one-node cluster with the same
    /// instances, definitions and audit trail.
    ///
    /// Start the node afterwards with the same --id, with --advertise (or --listen) set to
    /// the address given here, and without --initial-members; grow it with `lockstep
    /// cluster add` and `promote`.
    ///
    /// Example: lockstepd restore --from /backups/nightly --data-dir /var/lib/lockstep --id 1 --advertise lockstep-1:7101
    Restore {
        /// The checkpoint directory (written by `lockstep cluster backup` or `lockstepd backup`).
        #[arg(long)]
        from: PathBuf,
        /// The new data directory (absent or empty).
        #[arg(long)]
        data_dir: PathBuf,
        /// The id of the restored node.
        #[arg(long, default_value_t = 1)]
        id: NodeId,
        /// host:port the restored node will be reached at (its --advertise, or --listen).
        #[arg(long)]
        advertise: String,
    },
    /// Print what a checkpoint holds: applied log id, the members it was taken from, size.
    Inspect {
        /// The checkpoint directory.
        path: PathBuf,
    },
}

/// Runs `lockstepd backup|restore|inspect` when the first argument names one; `None`
/// otherwise (the node itself runs).
pub fn main_if_offline_command() -> Option<ExitCode> {
    let first = std::env::args_os().nth(1)?;
    if !matches!(first.to_str(), Some("backup" | "restore" | "inspect")) {
        return None;
    }
    let cli = OfflineCli::parse();
    let result = match cli.command {
        OfflineCommand::Backup { data_dir, out } => {
            let store_dir = data_dir.join("rocksdb");
            if !store_dir.join("CURRENT").is_file() {
                Err(BackupError::NoStore { data_dir })
            } else {
                RocksStore::open(&store_dir, &RocksOptions::default())
                    .map_err(|source| BackupError::OpenForBackup { source })
                    .and_then(|store| checkpoint(&store, &out))
                    .map(|info| print_info("backup written", &info))
            }
        }
        OfflineCommand::Restore {
            from,
            data_dir,
            id,
            advertise,
        } => restore(&from, &data_dir, id, &advertise).map(|r| {
            println!(
                "restored {} entries (applied log index {}, term {}) into {}",
                r.entries,
                r.applied.index,
                r.applied.leader_id.term,
                data_dir.display()
            );
            println!(
                "start it as a one-node cluster: lockstepd --id {id} --data-dir {} --listen <bind address> --advertise {advertise}",
                data_dir.display()
            );
        }),
        OfflineCommand::Inspect { path } => inspect(&path).map(|info| print_info("checkpoint", &info)),
    };
    Some(match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lockstepd: {e}");
            ExitCode::from(1)
        }
    })
}

fn print_info(what: &str, info: &BackupInfo) {
    let applied = info
        .applied
        .map(|l| format!("index {} term {}", l.index, l.leader_id.term))
        .unwrap_or_else(|| "nothing".into());
    let members = info
        .members
        .iter()
        .map(|(id, addr)| format!("{id}={addr}"))
        .collect::<Vec<_>>()
        .join(",");
    println!(
        "{what}: {}\n  applied: {applied}\n  members: {members}\n  bytes: {}",
        info.path.display(),
        info.bytes
    );
}
