//! Fail-stop when storage fails.
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

use std::future::{Ready, ready};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::Either;

use crate::node::Node;

/// The exit status of a node whose storage failed (sysexits' `EX_IOERR`): distinct from a
/// bad configuration (1) and from a signal, so an operator and a supervisor can tell.
pub const EXIT_STORAGE_FAILED: i32 = 74;

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

/// Waits until the Raft core stops with an error (or its metrics end), records the answer
/// calls get from now on in `state`, and returns it.
pub async fn watch(node: Arc<Node>, state: Arc<FailStop>) -> String {
    let mut metrics = node.raft.metrics();
    let error = loop {
        if let Err(fatal) = &metrics.borrow_and_update().running_state {
            break fatal.to_string();
        }
        if metrics.changed().await.is_err() {
            break "the Raft core stopped".to_string();
        }
    };
    let others: Vec<String> = node
        .member_list()
        .into_iter()
        .filter(|(id, _, _)| *id != node.id)
        .map(|(id, addr, _)| format!("node {id} at {addr}"))
        .collect();
    let answer = format!(
        "node {} cannot serve: its storage failed ({error}); the cluster goes on without it, so call another node ({}); this node exits with status {EXIT_STORAGE_FAILED} for its supervisor to restart it, and an operator should check its data directory {} (disk full, I/O errors, read-only file system)",
        node.id,
        if others.is_empty() {
            "none is known".to_string()
        } else {
            others.join(", ")
        },
        node.config.data_dir.display()
    );
    let _ = state.reason.set(answer.clone());
    answer
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
