//! Fail-stop when storage fails or is found corrupt.
//!
//! openraft stops its core for good on a `StorageError`: a log append, a commit record or an
//! apply that the disk refused (ENOSPC, EIO, a file system remounted read-only). Before this
//! module the process stayed up, its health answered SERVING and every call failed with
//! RocksDB's raw text, so supervisors, probes and load balancers kept sending it traffic.
//! Now [`watch`] sees the core stop (`RaftMetrics::running_state`) and records why in
//! [`FailStop`]; from that moment [`FailStopLayer`] answers every call but the health
//! service `UNAVAILABLE`, naming the error and the other nodes, `lockstepd` turns health
//! NOT_SERVING, and after [`EXIT_GRACE`] it exits with [`EXIT_STORAGE_FAILED`] so that its
//! supervisor (compose `restart`, Kubernetes) restarts it. On restart RocksDB recovers to
//! what was synced, and the node catches up from the others (or refuses to start, saying
//! why, if its storage still fails).
//!
//! Corruption is the other way a store fails: a block whose checksum does not match, met by
//! any read (RocksDB verifies block checksums on every read, so corrupt bytes are never
//! returned) or by the background scrub (`scrub.rs`). [`watch`] sees it noted on the store
//! (`RocksStore::corruption`), shuts the Raft core down (no vote, no answers from its state),
//! writes [`CORRUPT_MARKER`] into the data directory and exits with [`EXIT_CORRUPT`]. A
//! restart does not bring such a node back: [`refuse_if_marked`] makes it refuse to start,
//! naming the bad file, until an operator re-seeds it from the cluster (remove, wipe, add,
//! promote: the runbook that [`reseed_steps`] spells out). Repairing in place is not
//! attempted: the node cannot tell which of its writes the bad block held, and a voter
//! that forgot what it acknowledged could help elect a leader without committed writes.

use std::future::{Ready, ready};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::Either;

use crate::config::Config;
use crate::node::Node;

/// The exit status of a node whose storage failed (sysexits' `EX_IOERR`): distinct from a
/// bad configuration (1) and from a signal, so an operator and a supervisor can tell.
pub const EXIT_STORAGE_FAILED: i32 = 74;

/// The exit status of a node whose store is corrupt (sysexits' `EX_DATAERR`), at run time and
/// when it refuses to start; a supervisor's restart gets the same status until it is re-seeded.
pub const EXIT_CORRUPT: i32 = 65;

/// The file in the data directory that records a corruption found: while it is there the
/// node refuses to start. It goes with the data directory when the node is re-seeded.
pub const CORRUPT_MARKER: &str = "CORRUPT";

/// How often [`watch`] looks for a corruption noted on the store.
pub const CORRUPTION_CHECK_EVERY: Duration = Duration::from_millis(200);

/// How long a failed node stays up, answering NOT_SERVING and `UNAVAILABLE`, before it exits:
/// long enough for health checks and clients to see why, short enough that its supervisor
/// restarts it soon.
pub const EXIT_GRACE: Duration = Duration::from_secs(3);

/// Why the node stopped serving, once it has.
#[derive(Debug, Default)]
pub struct FailStop {
    reason: OnceLock<String>,
}

impl FailStop {
    /// The answer every call gets once storage failed; `None` while the node is healthy.
    pub fn failed(&self) -> Option<&str> {
        self.reason.get().map(String::as_str)
    }
}

/// How a node stopped: the answer calls get and the status it exits with.
#[derive(Clone, Debug)]
pub struct Stopped {
    pub answer: String,
    pub status: i32,
}

/// A node that must not start: its store is corrupt. `lockstepd` exits with [`EXIT_CORRUPT`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Corrupt(pub String);

/// What an operator does to re-seed the node of `config` from the cluster (deploy/README.md,
/// "A node whose store is corrupt").
pub fn reseed_steps(config: &Config) -> String {
    let id = config.id;
    // The lowest initial member bootstraps a cluster of its own when it starts empty.
    let lowest = config.initial_members.keys().next() == Some(&id);
    let start = if lowest {
        format!(
            "start node {id} again (empty; as the lowest of its initial members it initializes a Raft state of its own, which the cluster's log replaces once it is added; or replace it by a node with a new id instead)"
        )
    } else {
        format!("start node {id} again (empty, it waits to be added)")
    };
    format!(
        "re-seed it from the cluster: `lockstep cluster remove {id}` on a healthy node, delete the data directory {} (everything in it), {start}, `lockstep cluster add {id} {}`, and once its applied index reaches the leader's, `lockstep cluster promote {id}` (deploy/README.md, \"A node whose store is corrupt\")",
        config.data_dir.display(),
        config.advertise
    )
}

/// Refuses to start a node whose store was found corrupt before ([`CORRUPT_MARKER`]), saying
/// what was found and how to re-seed it. A marker that exists but cannot be read refuses too.
pub fn refuse_if_marked(config: &Config) -> Result<(), Corrupt> {
    let marker = config.data_dir.join(CORRUPT_MARKER);
    let found = match std::fs::read(&marker) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).trim().to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => format!("its marker cannot be read: {e}"),
    };
    Err(Corrupt(format!(
        "node {} refuses to start: its store was found corrupt ({found}); {} ({} records the finding and goes with the data directory)",
        config.id,
        reseed_steps(config),
        marker.display()
    )))
}

/// Records a corruption found in `data_dir`'s [`CORRUPT_MARKER`], synced with its directory
/// entry, so that the node refuses to start until it is re-seeded, power cut or not.
fn mark(data_dir: &Path, found: &str) {
    let marker = data_dir.join(CORRUPT_MARKER);
    let written = (|| {
        use std::io::Write;
        let mut file = std::fs::File::create(&marker)?;
        file.write_all(format!("{found}\n").as_bytes())?;
        file.sync_all()?;
        std::fs::File::open(data_dir)?.sync_all()
    })();
    if let Err(e) = written {
        tracing::error!(marker = %marker.display(), error = %e, "cannot write the corruption marker; the node may start again on its corrupt store");
    }
}

/// The refusal of a node whose store is corrupt at start (RocksDB would not open it, or
/// openraft's read of its state met a corrupt block); marked, as one found at run time is.
pub fn corrupt_at_open(config: &Config, error: &str) -> Corrupt {
    mark(&config.data_dir, error);
    Corrupt(format!(
        "node {} refuses to start: its store is corrupt ({error}); {}",
        config.id,
        reseed_steps(config)
    ))
}

/// Waits until the Raft core stops with an error (or its metrics end) or a read meets a
/// corrupt block, records the answer calls get from now on in `state`, and returns it with
/// the status to exit with. A corrupt node's Raft core is shut down here and the
/// [`CORRUPT_MARKER`] written.
pub async fn watch(node: Arc<Node>, state: Arc<FailStop>) -> Stopped {
    let mut metrics = node.raft.metrics();
    let mut tick = tokio::time::interval(CORRUPTION_CHECK_EVERY);
    let cause = loop {
        if let Some(found) = node.store.corruption() {
            break Err(found.to_string());
        }
        if let Err(fatal) = &metrics.borrow_and_update().running_state {
            let text = fatal.to_string();
            // A write that met a corrupt block (a compaction reading one) stops the core too.
            break match node.store.corruption() {
                Some(found) => Err(found.to_string()),
                None if text.contains("Corruption") => Err(text),
                None => Ok(text),
            };
        }
        tokio::select! {
            changed = metrics.changed() => {
                if changed.is_err() {
                    break Ok("the Raft core stopped".to_string());
                }
            }
            _ = tick.tick() => {}
        }
    };
    let others: Vec<String> = node
        .member_list()
        .into_iter()
        .filter(|(id, _, _)| *id != node.id)
        .map(|(id, addr, _)| format!("node {id} at {addr}"))
        .collect();
    let others = if others.is_empty() {
        "none is known".to_string()
    } else {
        others.join(", ")
    };
    let data_dir = &node.config.data_dir;
    let stopped = match cause {
        Ok(error) => Stopped {
            answer: format!(
                "node {} cannot serve: its storage failed ({error}); the cluster goes on without it, so call another node ({others}); this node exits with status {EXIT_STORAGE_FAILED} for its supervisor to restart it, and an operator should check its data directory {} (disk full, I/O errors, read-only file system)",
                node.id,
                data_dir.display()
            ),
            status: EXIT_STORAGE_FAILED,
        },
        Err(found) => {
            mark(data_dir, &found);
            Stopped {
                answer: format!(
                    "node {} cannot serve: its store is corrupt ({found}); it answers nothing from it and takes no part in elections, and the cluster goes on without it, so call another node ({others}); this node exits with status {EXIT_CORRUPT} and refuses to start again; {}",
                    node.id,
                    reseed_steps(&node.config)
                ),
                status: EXIT_CORRUPT,
            }
        }
    };
    let _ = state.reason.set(stopped.answer.clone());
    if stopped.status == EXIT_CORRUPT {
        // No vote, no campaign, no answer from this state while the node lingers; bounded,
        // so that a core stuck on the bad block cannot hold the exit back.
        if tokio::time::timeout(EXIT_GRACE, node.raft.shutdown())
            .await
            .is_err()
        {
            tracing::error!(
                "the Raft core did not shut down within {EXIT_GRACE:?}; exiting all the same"
            );
        }
    }
    stopped
}

/// Answers every call `UNAVAILABLE` once storage failed, except the gRPC health service
/// (which then says NOT_SERVING).
#[derive(Clone, Debug)]
pub struct FailStopLayer {
    state: Arc<FailStop>,
}

impl FailStopLayer {
    pub fn new(state: Arc<FailStop>) -> FailStopLayer {
        FailStopLayer { state }
    }
}

impl<S> tower_layer::Layer<S> for FailStopLayer {
    type Service = FailStopService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        FailStopService {
            inner,
            state: Arc::clone(&self.state),
        }
    }
}

#[derive(Clone, Debug)]
pub struct FailStopService<S> {
    inner: S,
    state: Arc<FailStop>,
}

impl<S, ReqBody> tower_service::Service<http::Request<ReqBody>> for FailStopService<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        match self.state.failed() {
            Some(answer) if !request.uri().path().starts_with("/grpc.health.v1.") => {
                Either::Right(ready(Ok(tonic::Status::unavailable(answer).into_http())))
            }
            _ => Either::Left(self.inner.call(request)),
        }
    }
}
