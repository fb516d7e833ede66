//! A Rust client for Lockstep.
//!
//! It connects to a list of endpoints, sends each call to the node it believes leads (learned
//! from `NOT_LEADER` answers), and retries calls that may not have happened (`UNAVAILABLE`,
//! deadlines, broken connections) with capped, jittered backoff and the *same* request id, so a
//! retried write is applied at most once. Refusals come back as [`Error::Refused`] with the
//! engine's [`RefusalCode`].

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lockstep_core::{ActorKind, RefusalCode, Timestamp};
pub use lockstep_proto::v1 as pb;
use rand::Rng;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tonic_types::StatusExt;

/// Who the client acts as. In development mode the node trusts these headers; the trust layer
/// replaces them with credentials.
#[derive(Clone, Debug)]
pub struct Identity {
    pub actor: String,
    pub kind: ActorKind,
    pub roles: Vec<String>,
}

impl Identity {
    pub fn new(actor: &str, kind: ActorKind, roles: &[&str]) -> Identity {
        Identity {
            actor: actor.into(),
            kind,
            roles: roles.iter().map(|r| r.to_string()).collect(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Options {
    /// Deadline of one attempt.
    pub attempt_timeout: Duration,
    /// Give up retrying after this long.
    pub total_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Let followers forward writes to the leader (default). When false, the client itself
    /// goes to the leader named in `NOT_LEADER` answers.
    pub forward: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            attempt_timeout: Duration::from_secs(12),
            total_timeout: Duration::from_secs(30),
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            forward: true,
        }
    }
}

/// A refusal by the engine: nothing changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub code: RefusalCode,
    pub message: String,
    pub predicate: Option<String>,
    pub earliest_at: Option<Timestamp>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("refused ({}): {}", .0.code.as_str(), .0.message)]
    Refused(Refused),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    #[error(
        "no node answered within {0:?} (last error: {1}); a write may or may not have been applied, retry it with the same request id"
    )]
    Unavailable(Duration, String),
    #[error("{0}")]
    Other(Status),
}

impl Error {
    pub fn refusal_code(&self) -> Option<RefusalCode> {
        match self {
            Error::Refused(r) => Some(r.code),
            _ => None,
        }
    }

    fn from_status(status: Status) -> Error {
        if let Some(info) = status.get_details_error_info()
            && let Some(code) = RefusalCode::parse(&info.reason)
        {
            return Error::Refused(Refused {
                code,
                message: status.message().to_string(),
                predicate: info.metadata.get("predicate").cloned(),
                earliest_at: info
                    .metadata
                    .get("earliest_at")
                    .and_then(|t| Timestamp::parse_rfc3339(t).ok()),
            });
        }
        match status.code() {
            Code::NotFound => Error::NotFound(status.message().into()),
            Code::InvalidArgument => Error::InvalidArgument(status.message().into()),
            Code::Unauthenticated => Error::Unauthenticated(status.message().into()),
            Code::PermissionDenied => Error::PermissionDenied(status.message().into()),
            _ => Error::Other(status),
        }
    }
}

/// Whether a failed attempt may be retried safely (with the same request id).
fn retryable(status: &Status) -> bool {
    matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown | Code::Aborted if status.get_details_error_info().is_none_or(|i| RefusalCode::parse(&i.reason).is_none()))
}

/// The leader address named in a `NOT_LEADER` answer.
fn leader_hint(status: &Status) -> Option<String> {
    status
        .get_details_error_info()
        .and_then(|i| i.metadata.get("leader_addr").cloned())
}

pub struct Client {
    endpoints: Vec<String>,
    channels: Vec<Channel>,
    current: AtomicUsize,
    identity: Option<Identity>,
    options: Options,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoints", &self.endpoints)
            .finish()
    }
}

/// A new request id (a UUID v4); keep it to retry the same request.
pub fn request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

impl Client {
    /// Connects lazily to `endpoints` (host:port or http://host:port).
    pub fn new(
        endpoints: &[String],
        identity: Option<Identity>,
        options: Options,
    ) -> Result<Client, String> {
        if endpoints.is_empty() {
            return Err("no endpoints: give at least one host:port".into());
        }
        let mut channels = Vec::new();
        let mut normalized = Vec::new();
        for e in endpoints {
            let url = if e.starts_with("http://") || e.starts_with("https://") {
                e.clone()
            } else {
                format!("http://{e}")
            };
            let endpoint = Endpoint::from_shared(url.clone())
                .map_err(|err| format!("bad endpoint `{e}`: {err}"))?;
            channels.push(
                endpoint
                    .connect_timeout(Duration::from_secs(2))
                    .tcp_nodelay(true)
                    .connect_lazy(),
            );
            normalized.push(
                url.trim_start_matches("http://")
                    .trim_start_matches("https://")
                    .to_string(),
            );
        }
        Ok(Client {
            endpoints: normalized,
            channels,
            current: AtomicUsize::new(0),
            identity,
            options,
        })
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(message);
        r.set_timeout(self.options.attempt_timeout);
        let md = r.metadata_mut();
        if let Some(id) = &self.identity {
            if let Ok(v) = MetadataValue::try_from(id.actor.as_str()) {
                md.insert("x-lockstep-actor", v);
            }
            md.insert(
                "x-lockstep-actor-kind",
                MetadataValue::from_static(id.kind.as_str()),
            );
            if let Ok(v) = MetadataValue::try_from(id.roles.join(",")) {
                md.insert("x-lockstep-roles", v);
            }
        }
        if !self.options.forward {
            md.insert("x-lockstep-no-forward", MetadataValue::from_static("1"));
        }
        r
    }

    /// Runs `call` against the current endpoint, moving to the next (or to the named
    /// leader) and retrying while the failure is retryable.
    async fn call<T, F, Fut>(&self, mut call: F) -> Result<T, Error>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let started = Instant::now();
        let mut backoff = self.options.backoff_initial;
        loop {
            let index = self.current.load(Ordering::Relaxed) % self.channels.len();
            let status = match call(self.channels[index].clone()).await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) => status,
            };
            if !retryable(&status) {
                return Err(Error::from_status(status));
            }
            if started.elapsed() >= self.options.total_timeout {
                return Err(Error::Unavailable(
                    self.options.total_timeout,
                    format!("{}: {}", self.endpoints[index], status.message()),
                ));
            }
            let next = leader_hint(&status)
                .and_then(|addr| self.endpoints.iter().position(|e| *e == addr))
                .unwrap_or(index + 1);
            tracing::debug!(endpoint = %self.endpoints[index], code = ?status.code(), message = status.message(), "retrying");
            self.current
                .store(next % self.channels.len(), Ordering::Relaxed);
            let jitter = rand::rng().random_range(0..=backoff.as_millis() as u64);
            tokio::time::sleep(Duration::from_millis(
                backoff.as_millis() as u64 / 2 + jitter / 2,
            ))
            .await;
            backoff = (backoff * 2).min(self.options.backoff_max);
        }
    }

    pub async fn apply_definition(
        &self,
        request_id: &str,
        source: &str,
        provenance: pb::Provenance,
    ) -> Result<pb::ApplyDefinitionResponse, Error> {
        let msg = pb::ApplyDefinitionRequest {
            request_id: request_id.into(),
            source: source.into(),
            provenance: Some(provenance),
        };
        self.call(|ch| {
            let r = self.request(msg.clone());
            async move {
                pb::definitions_client::DefinitionsClient::new(ch)
                    .max_decoding_message_size(16 << 20)
                    .apply(r)
                    .await
            }
        })
        .await
    }

    pub async fn get_definition(
        &self,
        workflow: &str,
        version: Option<&str>,
    ) -> Result<pb::Definition, Error> {
        let msg = pb::GetDefinitionRequest {
            workflow: workflow.into(),
            version: version.unwrap_or_default().into(),
            consistency: 0,
        };
        self.call(|ch| {
            let r = self.request(msg.clone());
            async move {
                pb::definitions_client::DefinitionsClient::new(ch)
                    .max_decoding_message_size(16 << 20)
                    .get(r)
                    .await
            }
        })
        .await
    }

    pub async fn create(
        &self,
        request_id: &str,
        workflow: &str,
        key: Option<&str>,
        data: &serde_json::Value,
    ) -> Result<pb::InstanceChange, Error> {
        let msg = pb::CreateInstanceRequest {
            request_id: request_id.into(),
            workflow: workflow.into(),
            key: key.unwrap_or_default().into(),
            data_json: data.to_string(),
        };
        self.call(|ch| {
            let r = self.request(msg.clone());
            async move {
                pb::instances_client::InstancesClient::new(ch)
                    .create(r)
                    .await
            }
        })
        .await
    }

    pub async fn transition(
        &self,
        request_id: &str,
        instance: pb::InstanceRef,
        transition: &str,
        payload: &serde_json::Value,
        expected_version: Option<u64>,
    ) -> Result<pb::InstanceChange, Error> {
        let msg = pb::TransitionRequest {
            request_id: request_id.into(),
            instance: Some(instance),
            transition: transition.into(),
            payload_json: payload.to_string(),
            expected_version,
        };
        self.call(|ch| {
            let r = self.request(msg.clone());
            async move {
                pb::instances_client::InstancesClient::new(ch)
                    .transition(r)
                    .await
            }
        })
        .await
    }

    pub async fn send_event(
        &self,
        request_id: &str,
        instance: pb::InstanceRef,
        event: &str,
        payload: &serde_json::Value,
    ) -> Result<pb::InstanceChange, Error> {
        let msg = pb::SendEventRequest {
            request_id: request_id.into(),
            instance: Some(instance),
            event: event.into(),
            payload_json: payload.to_string(),
        };
        self.call(|ch| {
            let r = self.request(msg.clone());
            async move {
                pb::instances_client::InstancesClient::new(ch)
                    .send_event(r)
                    .await
            }
        })
        .await
    }

    pub async fn get(
        &self,
        instance: pb::InstanceRef,
        consistency: pb::ReadConsistency,
    ) -> Result<pb::GetInstanceResponse, Error> {
        let msg = pb::GetInstanceRequest {
            instance: Some(instance),
            consistency: consistency as i32,
        };
        self.call(|ch| {
            let r = self.request(msg.clone());
            async move { pb::instances_client::InstancesClient::new(ch).get(r).await }
        })
        .await
    }

    pub async fn list(
        &self,
        request: pb::ListInstancesRequest,
    ) -> Result<pb::ListInstancesResponse, Error> {
        self.call(|ch| {
            let r = self.request(request.clone());
            async move {
                pb::instances_client::InstancesClient::new(ch)
                    .max_decoding_message_size(64 << 20)
                    .list(r)
                    .await
            }
        })
        .await
    }

    pub async fn history(
        &self,
        instance: pb::InstanceRef,
        limit: u32,
    ) -> Result<pb::HistoryResponse, Error> {
        let msg = pb::HistoryRequest {
            instance: Some(instance),
            consistency: 0,
            limit,
        };
        self.call(|ch| {
            let r = self.request(msg.clone());
            async move {
                pb::instances_client::InstancesClient::new(ch)
                    .max_decoding_message_size(64 << 20)
                    .history(r)
                    .await
            }
        })
        .await
    }

    pub async fn verify_audit(&self) -> Result<pb::VerifyAuditResponse, Error> {
        self.call(|ch| {
            let r = self.request(pb::VerifyAuditRequest {});
            async move { pb::audit_client::AuditClient::new(ch).verify(r).await }
        })
        .await
    }

    /// Opens the change feed on the current endpoint.
    pub async fn tail(
        &self,
        from_seq: u64,
        follow: bool,
    ) -> Result<tonic::Streaming<pb::AuditRecord>, Error> {
        let msg = pb::TailAuditRequest { from_seq, follow };
        self.call(|ch| {
            let mut r = self.request(msg);
            if follow {
                // A followed feed stays open; only the connection setup has a deadline.
                r.metadata_mut().remove("grpc-timeout");
            }
            async move { pb::audit_client::AuditClient::new(ch).tail(r).await }
        })
        .await
    }

    /// Status of the node at `endpoint` (an index into the endpoint list), without retries on
    /// other nodes: status is a per-node question.
    pub async fn status_of(
        &self,
        endpoint: usize,
        include_digest: bool,
    ) -> Result<pb::ClusterStatus, Error> {
        let channel = self
            .channels
            .get(endpoint)
            .cloned()
            .ok_or_else(|| Error::InvalidArgument(format!("no endpoint #{endpoint}")))?;
        pb::cluster_client::ClusterClient::new(channel)
            .status(self.request(pb::ClusterStatusRequest { include_digest }))
            .await
            .map(|r| r.into_inner())
            .map_err(Error::from_status)
    }

    pub async fn status(&self, include_digest: bool) -> Result<pb::ClusterStatus, Error> {
        self.call(|ch| {
            let r = self.request(pb::ClusterStatusRequest { include_digest });
            async move { pb::cluster_client::ClusterClient::new(ch).status(r).await }
        })
        .await
    }

    pub async fn add_learner(
        &self,
        node_id: u64,
        addr: &str,
    ) -> Result<pb::MembershipResponse, Error> {
        let msg = pb::AddLearnerRequest {
            node_id,
            addr: addr.into(),
        };
        self.call(|ch| {
            let r = self.request(msg.clone());
            async move {
                pb::cluster_client::ClusterClient::new(ch)
                    .add_learner(r)
                    .await
            }
        })
        .await
    }

    pub async fn promote(&self, node_ids: Vec<u64>) -> Result<pb::MembershipResponse, Error> {
        let msg = pb::PromoteRequest { node_ids };
        self.call(|ch| {
            let r = self.request(msg.clone());
            async move { pb::cluster_client::ClusterClient::new(ch).promote(r).await }
        })
        .await
    }

    pub async fn remove(&self, node_id: u64) -> Result<pb::MembershipResponse, Error> {
        self.call(|ch| {
            let r = self.request(pb::RemoveRequest { node_id });
            async move { pb::cluster_client::ClusterClient::new(ch).remove(r).await }
        })
        .await
    }

    /// Builds a snapshot on the node at `endpoint`.
    pub async fn snapshot_on(&self, endpoint: usize) -> Result<pb::SnapshotResponse, Error> {
        let channel = self
            .channels
            .get(endpoint)
            .cloned()
            .ok_or_else(|| Error::InvalidArgument(format!("no endpoint #{endpoint}")))?;
        pb::cluster_client::ClusterClient::new(channel)
            .snapshot(self.request(pb::SnapshotRequest {}))
            .await
            .map(|r| r.into_inner())
            .map_err(Error::from_status)
    }
}

/// Addresses an instance by id.
pub fn by_id(id: &str) -> pb::InstanceRef {
    pb::InstanceRef {
        target: Some(pb::instance_ref::Target::Id(id.into())),
    }
}

/// Addresses an instance by workflow and business key.
pub fn by_key(workflow: &str, key: &str) -> pb::InstanceRef {
    pb::InstanceRef {
        target: Some(pb::instance_ref::Target::Key(pb::BusinessKey {
            workflow: workflow.into(),
            key: key.into(),
        })),
    }
}
