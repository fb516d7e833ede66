//! A Rust client for Lockstep.
//!
//! It connects to a list of endpoints, sends each call to the node it believes leads (learned
//! from `NOT_LEADER` answers and from the `x-lockstep-leader` header a follower puts on a
//! write it forwarded), and retries calls that may not have happened (`UNAVAILABLE`,
//! deadlines, broken connections) with capped, jittered backoff and the *same* request id, so a
//! retried write is applied at most once. Refusals come back as [`Error::Refused`] with the
//! engine's [`RefusalCode`].
//!
//! Answers are domain types ([`model`]: [`Instance`], [`AuditRecord`], [`Definition`],
//! [`LeasedTask`], [`ClusterStatus`], [`AuditVerification`], ...), converted from the protobuf
//! messages as they arrive; requests still take a few protobuf messages ([`pb::InstanceRef`]
//! from [`by_id`] and [`by_key`], [`pb::ListInstancesRequest`],
//! [`pb::MigrateInstancesRequest`], [`pb::ReadConsistency`]).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lockstep_core::{ActorKind, RefusalCode, Timestamp};
use lockstep_proto::names;
pub use lockstep_proto::v1 as pb;
use rand::Rng;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity as TlsIdentity};
use tonic::{Code, Status};
use tonic_types::StatusExt;

pub mod loopback;
pub mod model;
pub mod worker;

pub use model::{
    Action, Actions, AppliedDefinition, AuditRecord, AuditVerification, Availability, BackupInfo,
    ChainBreak, ClusterStatus, Definition, Heartbeat, InboxItem, InboxPage, Instance,
    InstanceChange, InstancePage, InstanceRead, LeasedTask, Member, Membership, MigratedInstance,
    MigrationBatch, Named, Provenance, ReadInfo, RefusalKind, Role, SecurityEvent, SecurityLog,
    SnapshotInfo, Task, TaskLease, Timer, WorkflowPage, WorkflowSummary,
};

/// Who the client says it acts as, in the `x-lockstep-actor*` headers. Only a development-mode
/// node (`lockstepd --dev`) believes them; a secure node takes the actor from the bearer token
/// ([`Credentials::token`]) or the client certificate ([`Tls::identity`]) and ignores the
/// headers.
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
    /// Retry writes the cluster refused with `RESOURCE_EXHAUSTED` / `OVERLOADED`,
    /// `QUOTA_EXCEEDED` or `NO_SPACE` (nothing was done), after the hint it gave and a jittered backoff,
    /// with the same request id, until `total_timeout` (default). When false, such a refusal
    /// is returned at once as [`Error::Overloaded`] (load generators count them).
    pub retry_overloaded: bool,
}

/// How a client proves who it is to a secure cluster ([`Client::with_credentials`]). The
/// default, no TLS and no token, suits a development-mode cluster (`lockstepd --dev`).
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    /// Connect over TLS (needed for a secure cluster); `None`: plaintext.
    pub tls: Option<Tls>,
    /// A JWT sent as `authorization: Bearer <token>` with every call.
    pub token: Option<String>,
}

impl Credentials {
    /// The credentials the CLI and the bench take as flags (`--tls-ca`, `--tls-cert` with
    /// `--tls-key`, `--token`): a client certificate needs the CA; a blank token is none.
    pub fn from_flags(
        ca: Option<&std::path::Path>,
        cert_and_key: Option<(&std::path::Path, &std::path::Path)>,
        token: Option<&str>,
    ) -> Result<Credentials, SetupError> {
        let tls = match (ca, cert_and_key) {
            (None, None) => None,
            (None, Some(_)) => return Err(SetupError::CertWithoutCa),
            (Some(ca), cert_and_key) => Some(Tls::from_files(ca, cert_and_key)?),
        };
        Ok(Credentials {
            tls,
            token: token
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_string),
        })
    }

    /// Whether these prove an identity (a client certificate or a token) rather than naming
    /// one in headers, as a development-mode cluster takes it.
    pub fn authenticate(&self) -> bool {
        self.token.is_some() || self.tls.as_ref().is_some_and(|t| t.identity.is_some())
    }
}

/// TLS settings of a client.
#[derive(Clone, Debug)]
pub struct Tls {
    /// PEM certificate of the cluster CA (the nodes' certificates are verified against it).
    pub ca_pem: Vec<u8>,
    /// A client certificate and its key (PEM) from the cluster CA: authenticates the caller
    /// as the certificate's CN (mTLS). Optional when a token is used.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The name to verify in the nodes' certificates, when it is not the endpoint's host.
    pub domain: Option<String>,
}

impl Tls {
    /// Reads the CA and, optionally, a client certificate and key from PEM files.
    pub fn from_files(
        ca: &std::path::Path,
        cert_and_key: Option<(&std::path::Path, &std::path::Path)>,
    ) -> Result<Tls, SetupError> {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|source| SetupError::Read {
                path: p.to_path_buf(),
                source,
            })
        };
        Ok(Tls {
            ca_pem: read(ca)?,
            identity: match cert_and_key {
                Some((cert, key)) => Some((read(cert)?, read(key)?)),
                None => None,
            },
            domain: None,
        })
    }

    fn config(&self) -> ClientTlsConfig {
        let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca_pem));
        if let Some((cert, key)) = &self.identity {
            config = config.identity(TlsIdentity::from_pem(cert, key));
        }
        if let Some(domain) = &self.domain {
            config = config.domain_name(domain.clone());
        }
        config
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            attempt_timeout: Duration::from_secs(12),
            total_timeout: Duration::from_secs(30),
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            forward: true,
            retry_overloaded: true,
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

/// Why a [`Client`] or its [`Tls`] settings could not be set up (nothing was sent yet).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("no endpoints: give at least one host:port")]
    NoEndpoints,
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("the token is not printable ASCII text")]
    TokenNotAscii,
    #[error("endpoint `{0}` is https but no TLS settings were given (the cluster CA)")]
    HttpsWithoutTls(String),
    #[error("bad endpoint `{endpoint}`: {reason}")]
    BadEndpoint { endpoint: String, reason: String },
    #[error("--tls-cert needs --tls-ca (the cluster CA) to verify the nodes it connects to")]
    CertWithoutCa,
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
    /// Refused before anything was done: the node was at its admission limit (`OVERLOADED`)
    /// or the caller over its quota (`QUOTA_EXCEEDED`). Retry after `retry_after` with the
    /// same request id. Returned only when no earlier attempt of the call may have taken
    /// effect; after a timeout or a lost connection the call ends in
    /// [`Error::Unavailable`] instead (outcome unknown).
    #[error("{reason}: {message}")]
    Overloaded {
        reason: String,
        message: String,
        retry_after: Option<Duration>,
        /// The quota that was exceeded, if any.
        quota: Option<String>,
    },
    /// The node answered with a message this client cannot read (a time that is not
    /// RFC 3339, data that is not JSON, a name the engine does not know): most likely the
    /// node runs a newer or older version of the API. Whether a write took effect is unknown
    /// from this answer alone; read the instance to find out.
    #[error("the node sent a malformed {what}: {reason}; is this client as new as the cluster?")]
    Decode { what: &'static str, reason: String },
    #[error("{0}")]
    Other(Status),
}

/// The reasons of refusals by admission control, quotas and the space alarm
/// (`RESOURCE_EXHAUSTED`): nothing was done.
pub const OVERLOADED: &str = "OVERLOADED";
pub const QUOTA_EXCEEDED: &str = "QUOTA_EXCEEDED";
/// The node is short of disk space (`lockstepd --min-free-space`, `--store-quota`).
pub const NO_SPACE: &str = "NO_SPACE";

/// The reason and retry-after hint of an `OVERLOADED`, `QUOTA_EXCEEDED` or `NO_SPACE` refusal.
fn overloaded(status: &Status) -> Option<(String, Option<Duration>, Option<String>)> {
    if status.code() != Code::ResourceExhausted {
        return None;
    }
    let info = status.get_details_error_info()?;
    if info.reason != OVERLOADED && info.reason != QUOTA_EXCEEDED && info.reason != NO_SPACE {
        return None;
    }
    let retry_after = status
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .or_else(|| {
            info.metadata
                .get(names::RETRY_AFTER_MS)
                .and_then(|ms| ms.parse().ok())
                .map(Duration::from_millis)
        });
    Some((
        info.reason,
        retry_after,
        info.metadata.get(names::QUOTA).cloned(),
    ))
}

impl Error {
    pub fn refusal_code(&self) -> Option<RefusalCode> {
        match self {
            Error::Refused(r) => Some(r.code),
            _ => None,
        }
    }

    fn from_status(status: Status) -> Error {
        if let Some((reason, retry_after, quota)) = overloaded(&status) {
            return Error::Overloaded {
                reason,
                message: status.message().to_string(),
                retry_after,
                quota,
            };
        }
        if let Some(info) = status.get_details_error_info()
            && let Some(code) = RefusalCode::parse(&info.reason)
        {
            return Error::Refused(Refused {
                code,
                message: status.message().to_string(),
                predicate: info.metadata.get(names::PREDICATE).cloned(),
                earliest_at: info
                    .metadata
                    .get(names::EARLIEST_AT)
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

/// The response header in which a follower that forwarded a write names the leader
/// (`lockstep_server::leader_hint`).
const LEADER_HEADER: &str = names::LEADER_HEADER;

/// The leader address named in a `NOT_LEADER` answer.
fn leader_hint(status: &Status) -> Option<String> {
    status
        .get_details_error_info()
        .and_then(|i| i.metadata.get(names::LEADER_ADDR).cloned())
}

pub struct Client {
    endpoints: Vec<String>,
    channels: Vec<Channel>,
    current: AtomicUsize,
    identity: Option<Identity>,
    options: Options,
    /// `authorization: Bearer <token>`, if any.
    bearer: Option<MetadataValue<tonic::metadata::Ascii>>,
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
    /// Connects lazily to `endpoints` (host:port or http://host:port), without credentials:
    /// for development-mode clusters, where `identity` names the caller.
    pub fn new(
        endpoints: &[String],
        identity: Option<Identity>,
        options: Options,
    ) -> Result<Client, SetupError> {
        Client::with_credentials(endpoints, identity, options, Credentials::default())
    }

    /// Connects lazily to `endpoints` with TLS and/or a bearer token (with
    /// [`Credentials::tls`], host:port means https://host:port).
    pub fn with_credentials(
        endpoints: &[String],
        identity: Option<Identity>,
        options: Options,
        credentials: Credentials,
    ) -> Result<Client, SetupError> {
        if endpoints.is_empty() {
            return Err(SetupError::NoEndpoints);
        }
        let mut channels = Vec::new();
        let mut normalized = Vec::new();
        let scheme = if credentials.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let tls = credentials.tls.as_ref().map(Tls::config);
        let bearer = match &credentials.token {
            Some(token) => Some(
                MetadataValue::try_from(format!("Bearer {}", token.trim()))
                    .map_err(|_| SetupError::TokenNotAscii)?,
            ),
            None => None,
        };
        for e in endpoints {
            let url = if e.starts_with("http://") || e.starts_with("https://") {
                e.clone()
            } else {
                format!("{scheme}://{e}")
            };
            if url.starts_with("https://") && tls.is_none() {
                return Err(SetupError::HttpsWithoutTls(e.clone()));
            }
            let mut endpoint =
                Endpoint::from_shared(url.clone()).map_err(|err| SetupError::BadEndpoint {
                    endpoint: e.clone(),
                    reason: err.to_string(),
                })?;
            if let (Some(tls), true) = (&tls, url.starts_with("https://")) {
                endpoint =
                    endpoint
                        .tls_config(tls.clone())
                        .map_err(|err| SetupError::BadEndpoint {
                            endpoint: e.clone(),
                            reason: format!("TLS settings: {err}"),
                        })?;
            }
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
            bearer,
        })
    }

    /// The endpoint the next call goes to first: the leader, once the client has learned it.
    pub fn current_endpoint(&self) -> &str {
        &self.endpoints[self.current.load(Ordering::Relaxed) % self.endpoints.len()]
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
                md.insert(names::ACTOR_HEADER, v);
            }
            md.insert(
                names::ACTOR_KIND_HEADER,
                MetadataValue::from_static(id.kind.as_str()),
            );
            if let Ok(v) = MetadataValue::try_from(id.roles.join(",")) {
                md.insert(names::ROLES_HEADER, v);
            }
        }
        if !self.options.forward {
            md.insert(names::NO_FORWARD_HEADER, MetadataValue::from_static("1"));
        }
        if let Some(bearer) = &self.bearer {
            md.insert("authorization", bearer.clone());
        }
        r
    }

    /// A follower that forwarded our write names the leader in `x-lockstep-leader`: when that
    /// address is one of our endpoints, later requests go there directly (one hop fewer).
    fn follow_leader_hint(&self, metadata: &tonic::metadata::MetadataMap, index: usize) {
        let Some(leader) = metadata.get(LEADER_HEADER).and_then(|v| v.to_str().ok()) else {
            return;
        };
        if let Some(at) = self.endpoints.iter().position(|e| e == leader)
            && at != index
        {
            tracing::debug!(
                leader,
                "a follower forwarded our write; going to the leader"
            );
            self.current.store(at, Ordering::Relaxed);
        }
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
        // Whether an earlier attempt failed in a way that may have taken effect (a timeout,
        // a lost connection): a later OVERLOADED refusal then says nothing about the request.
        let mut maybe_applied = false;
        loop {
            let index = self.current.load(Ordering::Relaxed) % self.channels.len();
            let status = match call(self.channels[index].clone()).await {
                Ok(response) => {
                    self.follow_leader_hint(response.metadata(), index);
                    return Ok(response.into_inner());
                }
                Err(status) => status,
            };
            let hint = overloaded(&status);
            if let Some((_, retry_after, _)) = &hint {
                // Nothing was done: wait at least the hint, on the same node.
                if !self.options.retry_overloaded || started.elapsed() >= self.options.total_timeout
                {
                    if maybe_applied {
                        // Refused now, but an earlier attempt with this request id may have
                        // been applied: the outcome is unknown, not "nothing was done".
                        return Err(Error::Unavailable(
                            self.options.total_timeout,
                            format!(
                                "{}: {} (an earlier attempt may have been applied: retry with the same request id)",
                                self.endpoints[index],
                                status.message()
                            ),
                        ));
                    }
                    return Err(Error::from_status(status));
                }
                let jitter = rand::rng().random_range(0..=backoff.as_millis() as u64);
                let wait = retry_after.unwrap_or_default().max(Duration::from_millis(
                    backoff.as_millis() as u64 / 2 + jitter / 2,
                ));
                tracing::debug!(endpoint = %self.endpoints[index], ?wait, message = status.message(), "overloaded; retrying");
                tokio::time::sleep(wait).await;
                backoff = (backoff * 2).min(self.options.backoff_max);
                continue;
            }
            if !retryable(&status) {
                return Err(Error::from_status(status));
            }
            maybe_applied = true;
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
        provenance: Provenance,
    ) -> Result<AppliedDefinition, Error> {
        let msg = pb::ApplyDefinitionRequest {
            request_id: request_id.into(),
            source: source.into(),
            provenance: Some(provenance.into()),
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
        .map(AppliedDefinition::from)
    }

    pub async fn get_definition(
        &self,
        workflow: &str,
        version: Option<&str>,
    ) -> Result<Definition, Error> {
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
        .await?
        .try_into()
    }

    /// One page of the workflows that have a definition, by name, each with its latest
    /// version (without its source) and how many versions were applied.
    pub async fn workflows(
        &self,
        page_size: u32,
        page_token: Option<&str>,
    ) -> Result<WorkflowPage, Error> {
        let msg = pb::ListDefinitionsRequest {
            page_size,
            page_token: page_token.unwrap_or_default().into(),
            consistency: 0,
        };
        self.call(|ch| {
            let r = self.request(msg.clone());
            async move {
                pb::definitions_client::DefinitionsClient::new(ch)
                    .list(r)
                    .await
            }
        })
        .await?
        .try_into()
    }

    /// Every version of `workflow`, oldest first, with its source and provenance.
    pub async fn definition_versions(&self, workflow: &str) -> Result<Vec<Definition>, Error> {
        let msg = pb::ListDefinitionVersionsRequest {
            workflow: workflow.into(),
            consistency: 0,
        };
        self.call(|ch| {
            let r = self.request(msg.clone());
            async move {
                pb::definitions_client::DefinitionsClient::new(ch)
                    .max_decoding_message_size(64 << 20)
                    .list_versions(r)
                    .await
            }
        })
        .await?
        .versions
        .into_iter()
        .map(Definition::try_from)
        .collect()
    }

    pub async fn create(
        &self,
        request_id: &str,
        workflow: &str,
        key: Option<&str>,
        data: &serde_json::Value,
    ) -> Result<InstanceChange, Error> {
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
        .map(InstanceChange::from)
    }

    pub async fn transition(
        &self,
        request_id: &str,
        instance: pb::InstanceRef,
        transition: &str,
        payload: &serde_json::Value,
        expected_version: Option<u64>,
    ) -> Result<InstanceChange, Error> {
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
        .map(InstanceChange::from)
    }

    pub async fn send_event(
        &self,
        request_id: &str,
        instance: pb::InstanceRef,
        event: &str,
        payload: &serde_json::Value,
    ) -> Result<InstanceChange, Error> {
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
        .map(InstanceChange::from)
    }

    pub async fn get(
        &self,
        instance: pb::InstanceRef,
        consistency: pb::ReadConsistency,
    ) -> Result<InstanceRead, Error> {
        let msg = pb::GetInstanceRequest {
            instance: Some(instance),
            consistency: consistency as i32,
        };
        self.call(|ch| {
            let r = self.request(msg.clone());
            async move { pb::instances_client::InstancesClient::new(ch).get(r).await }
        })
        .await?
        .try_into()
    }

    pub async fn list(&self, request: pb::ListInstancesRequest) -> Result<InstancePage, Error> {
        self.call(|ch| {
            let r = self.request(request.clone());
            async move {
                pb::instances_client::InstancesClient::new(ch)
                    .max_decoding_message_size(64 << 20)
                    .list(r)
                    .await
            }
        })
        .await?
        .try_into()
    }

    /// What the caller may do with one instance now (`Instances/Actions`): the transitions
    /// it may take, and the gated ones with the time they open.
    pub async fn actions(
        &self,
        instance: pb::InstanceRef,
        consistency: pb::ReadConsistency,
    ) -> Result<Actions, Error> {
        let msg = pb::ActionsRequest {
            instance: Some(instance),
            consistency: consistency as i32,
        };
        self.call(|ch| {
            let r = self.request(msg.clone());
            async move {
                pb::instances_client::InstancesClient::new(ch)
                    .actions(r)
                    .await
            }
        })
        .await?
        .try_into()
    }

    /// One page of the caller's inbox (`Instances/Inbox`): instances of `workflows` (in
    /// `states`, when not empty) on which it may take some transition now or once a gate
    /// opens. Pass the answer's `next_page_token` as `page_token` for the next page.
    pub async fn inbox(
        &self,
        workflows: &[String],
        states: &[String],
        page_size: u32,
        page_token: Option<&str>,
    ) -> Result<InboxPage, Error> {
        let msg = pb::InboxRequest {
            workflows: workflows.to_vec(),
            states: states.to_vec(),
            page_size,
            page_token: page_token.unwrap_or_default().into(),
            consistency: pb::ReadConsistency::Linearizable as i32,
        };
        self.call(|ch| {
            let r = self.request(msg.clone());
            async move {
                pb::instances_client::InstancesClient::new(ch)
                    .max_decoding_message_size(16 << 20)
                    .inbox(r)
                    .await
            }
        })
        .await?
        .try_into()
    }

    /// One `Instances/Migrate` call: a list of instances, or (with `all`) the next batch of
    /// the workflow's instances at `from_version`; while the answer says `more`, call again
    /// with its `next_page_token` (and a new request id).
    pub async fn migrate(
        &self,
        request: pb::MigrateInstancesRequest,
    ) -> Result<MigrationBatch, Error> {
        self.call(|ch| {
            let r = self.request(request.clone());
            async move {
                pb::instances_client::InstancesClient::new(ch)
                    .migrate(r)
                    .await
            }
        })
        .await
        .map(MigrationBatch::from)
    }

    /// The instance's audit records, oldest first; at most `limit` (0: the node's default,
    /// 1000).
    pub async fn history(
        &self,
        instance: pb::InstanceRef,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, Error> {
        self.history_of(instance, limit, false).await
    }

    /// [`Client::history`] with each record's journal entry, the command that made it
    /// (payloads included): what `lockstep replay` runs through another version.
    pub async fn history_with_commands(
        &self,
        instance: pb::InstanceRef,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, Error> {
        self.history_of(instance, limit, true).await
    }

    async fn history_of(
        &self,
        instance: pb::InstanceRef,
        limit: u32,
        commands: bool,
    ) -> Result<Vec<AuditRecord>, Error> {
        let msg = pb::HistoryRequest {
            instance: Some(instance),
            consistency: 0,
            limit,
            commands,
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
        .await?
        .records
        .into_iter()
        .map(AuditRecord::try_from)
        .collect()
    }

    pub async fn verify_audit(&self) -> Result<AuditVerification, Error> {
        self.call(|ch| {
            let r = self.request(pb::VerifyAuditRequest { at_seq: 0 });
            async move { pb::audit_client::AuditClient::new(ch).verify(r).await }
        })
        .await
        .map(AuditVerification::from)
    }

    /// The audit chains verified by the node at `endpoint` (an index into the endpoint list),
    /// and its chain hash of record `at_seq` (`at_hash`, empty when its chain does not verify
    /// through it; 0 asks for none). Per node, so not retried elsewhere.
    pub async fn verify_audit_of(
        &self,
        endpoint: usize,
        at_seq: u64,
    ) -> Result<AuditVerification, Error> {
        pb::audit_client::AuditClient::new(self.channel_of(endpoint)?)
            .verify(self.request(pb::VerifyAuditRequest { at_seq }))
            .await
            .map(|r| AuditVerification::from(r.into_inner()))
            .map_err(Error::from_status)
    }

    /// The channel of endpoint #`endpoint`, for a question to that one node.
    fn channel_of(&self, endpoint: usize) -> Result<Channel, Error> {
        self.channels
            .get(endpoint)
            .cloned()
            .ok_or_else(|| Error::InvalidArgument(format!("no endpoint #{endpoint}")))
    }

    /// The security log of the node at `endpoint` (an index into the endpoint list): refused
    /// attempts it saw, oldest first, with `seq > after_seq`; `limit` 0 means all it keeps.
    /// Per node, so not retried elsewhere.
    pub async fn security_log_of(
        &self,
        endpoint: usize,
        after_seq: u64,
        limit: u32,
    ) -> Result<SecurityLog, Error> {
        pb::audit_client::AuditClient::new(self.channel_of(endpoint)?)
            .max_decoding_message_size(16 << 20)
            .security_log(self.request(pb::SecurityLogRequest { after_seq, limit }))
            .await
            .map_err(Error::from_status)?
            .into_inner()
            .try_into()
    }

    /// Opens the change feed on the current endpoint, from global sequence `from_seq`; with
    /// `follow` it stays open and delivers records as they are applied.
    pub async fn tail(&self, from_seq: u64, follow: bool) -> Result<AuditFeed, Error> {
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
        .map(|stream| AuditFeed { stream })
    }

    /// Leases up to `max_tasks` ready tasks of `queue`, waiting up to `wait` for one. A poll is
    /// not idempotent: should an answer be lost, its tasks come back when their leases expire.
    pub async fn poll_tasks(
        &self,
        queue: &str,
        max_tasks: u32,
        wait: Duration,
    ) -> Result<Vec<LeasedTask>, Error> {
        let msg = pb::PollTasksRequest {
            queue: queue.into(),
            max_tasks,
            wait_ms: u32::try_from(wait.as_millis()).unwrap_or(u32::MAX),
        };
        let answer = self
            .call(|ch| {
                let mut r = self.request(msg.clone());
                r.set_timeout(wait + self.options.attempt_timeout);
                async move {
                    pb::tasks_client::TasksClient::new(ch)
                        .max_decoding_message_size(64 << 20)
                        .poll(r)
                        .await
                }
            })
            .await?;
        answer.tasks.into_iter().map(LeasedTask::try_from).collect()
    }

    /// Extends a lease; returns the new expiry (RFC 3339 cluster time) and the sequence of
    /// the `task_heartbeat` audit record it wrote.
    pub async fn heartbeat_task(
        &self,
        request_id: &str,
        lease: &TaskLease,
    ) -> Result<Heartbeat, Error> {
        let msg = pb::HeartbeatTaskRequest {
            request_id: request_id.into(),
            lease: Some(lease.into()),
        };
        self.call(|ch| {
            let r = traced(self.request(msg.clone()), lease);
            async move { pb::tasks_client::TasksClient::new(ch).heartbeat(r).await }
        })
        .await?
        .try_into()
    }

    pub async fn complete_task(
        &self,
        request_id: &str,
        lease: &TaskLease,
        result: &serde_json::Value,
    ) -> Result<InstanceChange, Error> {
        let msg = pb::CompleteTaskRequest {
            request_id: request_id.into(),
            lease: Some(lease.into()),
            result_json: result.to_string(),
        };
        self.call(|ch| {
            let r = traced(self.request(msg.clone()), lease);
            async move { pb::tasks_client::TasksClient::new(ch).complete(r).await }
        })
        .await
        .map(InstanceChange::from)
    }

    pub async fn fail_task(
        &self,
        request_id: &str,
        lease: &TaskLease,
        error: &str,
        retryable: bool,
    ) -> Result<InstanceChange, Error> {
        let msg = pb::FailTaskRequest {
            request_id: request_id.into(),
            lease: Some(lease.into()),
            error: error.into(),
            retryable,
        };
        self.call(|ch| {
            let r = traced(self.request(msg.clone()), lease);
            async move { pb::tasks_client::TasksClient::new(ch).fail(r).await }
        })
        .await
        .map(InstanceChange::from)
    }

    /// Hands a leased task back unfinished: it is ready again at once, and the attempt does
    /// not count against its retry policy. The lease is stale from then on.
    pub async fn release_task(
        &self,
        request_id: &str,
        lease: &TaskLease,
    ) -> Result<InstanceChange, Error> {
        let msg = pb::ReleaseTaskRequest {
            request_id: request_id.into(),
            lease: Some(lease.into()),
        };
        self.call(|ch| {
            let r = traced(self.request(msg.clone()), lease);
            async move { pb::tasks_client::TasksClient::new(ch).release(r).await }
        })
        .await
        .map(InstanceChange::from)
    }

    /// Erasure: replaces the named data fields (dotted paths) of `instance` by digests of
    /// their values, in its data and its command journal (needs the policy's `redact_data`).
    pub async fn redact(
        &self,
        request_id: &str,
        instance: pb::InstanceRef,
        fields: &[String],
    ) -> Result<InstanceChange, Error> {
        let msg = pb::RedactInstanceRequest {
            request_id: request_id.into(),
            instance: Some(instance),
            fields: fields.to_vec(),
        };
        self.call(|ch| {
            let r = self.request(msg.clone());
            async move {
                pb::instances_client::InstancesClient::new(ch)
                    .redact(r)
                    .await
            }
        })
        .await
        .map(InstanceChange::from)
    }

    /// A webhook subscription (needs the policy's `manage_subscriptions`; the node refuses a
    /// target off its webhook allow-list or a secret name it does not hold). `start_after`:
    /// deliver the records after this global sequence; `None`: only new ones.
    pub async fn create_subscription(
        &self,
        request_id: &str,
        name: &str,
        url: &str,
        secret: &str,
        filter: pb::SubscriptionFilter,
        start_after: Option<u64>,
    ) -> Result<pb::Subscription, Error> {
        let msg = pb::CreateSubscriptionRequest {
            request_id: request_id.into(),
            name: name.into(),
            url: url.into(),
            filter: Some(filter),
            secret: secret.into(),
            start_after,
        };
        self.call(|ch| {
            let r = self.request(msg.clone());
            async move {
                pb::subscriptions_client::SubscriptionsClient::new(ch)
                    .create(r)
                    .await
            }
        })
        .await
    }

    /// Every webhook subscription, with its cursor and the audit head (lag = head - cursor).
    pub async fn subscriptions(&self) -> Result<Vec<pb::Subscription>, Error> {
        self.call(|ch| {
            let r = self.request(pb::ListSubscriptionsRequest {});
            async move {
                pb::subscriptions_client::SubscriptionsClient::new(ch)
                    .list(r)
                    .await
            }
        })
        .await
        .map(|r| r.subscriptions)
    }

    pub async fn subscription(&self, name: &str) -> Result<pb::Subscription, Error> {
        let msg = pb::GetSubscriptionRequest { name: name.into() };
        self.call(|ch| {
            let r = self.request(msg.clone());
            async move {
                pb::subscriptions_client::SubscriptionsClient::new(ch)
                    .get(r)
                    .await
            }
        })
        .await
    }

    /// Stops delivery; the cursor stays, so [`Client::resume_subscription`] loses nothing.
    pub async fn pause_subscription(
        &self,
        request_id: &str,
        name: &str,
        reason: &str,
    ) -> Result<pb::Subscription, Error> {
        let msg = pb::PauseSubscriptionRequest {
            request_id: request_id.into(),
            name: name.into(),
            reason: reason.into(),
        };
        self.call(|ch| {
            let r = self.request(msg.clone());
            async move {
                pb::subscriptions_client::SubscriptionsClient::new(ch)
                    .pause(r)
                    .await
            }
        })
        .await
    }

    pub async fn resume_subscription(
        &self,
        request_id: &str,
        name: &str,
    ) -> Result<pb::Subscription, Error> {
        let msg = pb::ResumeSubscriptionRequest {
            request_id: request_id.into(),
            name: name.into(),
        };
        self.call(|ch| {
            let r = self.request(msg.clone());
            async move {
                pb::subscriptions_client::SubscriptionsClient::new(ch)
                    .resume(r)
                    .await
            }
        })
        .await
    }

    /// Deletes a subscription; answers it as it was.
    pub async fn delete_subscription(
        &self,
        request_id: &str,
        name: &str,
    ) -> Result<pb::Subscription, Error> {
        let msg = pb::DeleteSubscriptionRequest {
            request_id: request_id.into(),
            name: name.into(),
        };
        self.call(|ch| {
            let r = self.request(msg.clone());
            async move {
                pb::subscriptions_client::SubscriptionsClient::new(ch)
                    .delete(r)
                    .await
            }
        })
        .await
    }

    /// A schedule (needs the policy's `manage_schedules`): `request` names it, its cron
    /// expression and time zone, the workflow, the templates and the policies; the node
    /// refuses a bad expression, zone, template or calendar with what to write instead.
    pub async fn create_schedule(
        &self,
        request: pb::CreateScheduleRequest,
    ) -> Result<pb::Schedule, Error> {
        self.call(|ch| {
            let r = self.request(request.clone());
            async move {
                pb::schedules_client::SchedulesClient::new(ch)
                    .create(r)
                    .await
            }
        })
        .await
    }

    /// Every schedule, with its next tick and what its last tick did.
    pub async fn schedules(&self) -> Result<Vec<pb::Schedule>, Error> {
        self.call(|ch| {
            let r = self.request(pb::ListSchedulesRequest {});
            async move { pb::schedules_client::SchedulesClient::new(ch).list(r).await }
        })
        .await
        .map(|r| r.schedules)
    }

    pub async fn schedule(&self, name: &str) -> Result<pb::Schedule, Error> {
        let msg = pb::GetScheduleRequest { name: name.into() };
        self.call(|ch| {
            let r = self.request(msg.clone());
            async move { pb::schedules_client::SchedulesClient::new(ch).get(r).await }
        })
        .await
    }

    /// Stops a schedule firing; ticks that fall while it is paused are not caught up.
    pub async fn pause_schedule(
        &self,
        request_id: &str,
        name: &str,
        reason: &str,
    ) -> Result<pb::Schedule, Error> {
        let msg = pb::PauseScheduleRequest {
            request_id: request_id.into(),
            name: name.into(),
            reason: reason.into(),
        };
        self.call(|ch| {
            let r = self.request(msg.clone());
            async move {
                pb::schedules_client::SchedulesClient::new(ch)
                    .pause(r)
                    .await
            }
        })
        .await
    }

    /// Fires again from the first tick after now.
    pub async fn resume_schedule(
        &self,
        request_id: &str,
        name: &str,
    ) -> Result<pb::Schedule, Error> {
        let msg = pb::ResumeScheduleRequest {
            request_id: request_id.into(),
            name: name.into(),
        };
        self.call(|ch| {
            let r = self.request(msg.clone());
            async move {
                pb::schedules_client::SchedulesClient::new(ch)
                    .resume(r)
                    .await
            }
        })
        .await
    }

    /// Deletes a schedule; answers it as it was.
    pub async fn delete_schedule(
        &self,
        request_id: &str,
        name: &str,
    ) -> Result<pb::Schedule, Error> {
        let msg = pb::DeleteScheduleRequest {
            request_id: request_id.into(),
            name: name.into(),
        };
        self.call(|ch| {
            let r = self.request(msg.clone());
            async move {
                pb::schedules_client::SchedulesClient::new(ch)
                    .delete(r)
                    .await
            }
        })
        .await
    }

    pub async fn resolve_incident(
        &self,
        request_id: &str,
        instance: pb::InstanceRef,
        incident_id: &str,
        retry_task: bool,
    ) -> Result<InstanceChange, Error> {
        let msg = pb::ResolveIncidentRequest {
            request_id: request_id.into(),
            instance: Some(instance),
            incident_id: incident_id.into(),
            retry_task,
        };
        self.call(|ch| {
            let r = self.request(msg.clone());
            async move {
                pb::tasks_client::TasksClient::new(ch)
                    .resolve_incident(r)
                    .await
            }
        })
        .await
        .map(InstanceChange::from)
    }

    /// Status of the node at `endpoint` (an index into the endpoint list), without retries on
    /// other nodes: status is a per-node question.
    pub async fn status_of(
        &self,
        endpoint: usize,
        include_digest: bool,
    ) -> Result<ClusterStatus, Error> {
        pb::cluster_client::ClusterClient::new(self.channel_of(endpoint)?)
            .status(self.request(pb::ClusterStatusRequest { include_digest }))
            .await
            .map_err(Error::from_status)?
            .into_inner()
            .try_into()
    }

    pub async fn status(&self, include_digest: bool) -> Result<ClusterStatus, Error> {
        self.call(|ch| {
            let r = self.request(pb::ClusterStatusRequest { include_digest });
            async move { pb::cluster_client::ClusterClient::new(ch).status(r).await }
        })
        .await?
        .try_into()
    }

    pub async fn add_learner(&self, node_id: u64, addr: &str) -> Result<Membership, Error> {
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
        .map(Membership::from)
    }

    pub async fn promote(&self, node_ids: Vec<u64>) -> Result<Membership, Error> {
        let msg = pb::PromoteRequest { node_ids };
        self.call(|ch| {
            let r = self.request(msg.clone());
            async move { pb::cluster_client::ClusterClient::new(ch).promote(r).await }
        })
        .await
        .map(Membership::from)
    }

    pub async fn remove(&self, node_id: u64) -> Result<Membership, Error> {
        self.call(|ch| {
            let r = self.request(pb::RemoveRequest { node_id });
            async move { pb::cluster_client::ClusterClient::new(ch).remove(r).await }
        })
        .await
        .map(Membership::from)
    }

    /// Builds a snapshot on the node at `endpoint`.
    pub async fn snapshot_on(&self, endpoint: usize) -> Result<SnapshotInfo, Error> {
        let channel = self
            .channels
            .get(endpoint)
            .cloned()
            .ok_or_else(|| Error::InvalidArgument(format!("no endpoint #{endpoint}")))?;
        pb::cluster_client::ClusterClient::new(channel)
            .snapshot(self.request(pb::SnapshotRequest {}))
            .await
            .map(|r| SnapshotInfo::from(r.into_inner()))
            .map_err(Error::from_status)
    }

    /// Writes a backup checkpoint on the node that answers (under its data directory; the
    /// response names the node and the path). `name` empty: a name from the time.
    pub async fn backup(&self, name: &str) -> Result<BackupInfo, Error> {
        let msg = pb::BackupRequest { name: name.into() };
        self.call(|ch| {
            let r = self.request(msg.clone());
            async move { pb::cluster_client::ClusterClient::new(ch).backup(r).await }
        })
        .await
        .map(BackupInfo::from)
    }

    /// Asks the node at `endpoint` (an index into the endpoint list) for its
    /// `grpc.health.v1` status of `service` ("" for the whole server), without retries.
    pub async fn health_of(&self, endpoint: usize, service: &str) -> Result<HealthStatus, Error> {
        use tonic_health::pb::health_check_response::ServingStatus;
        let channel = self
            .channels
            .get(endpoint)
            .cloned()
            .ok_or_else(|| Error::InvalidArgument(format!("no endpoint #{endpoint}")))?;
        let mut request = tonic::Request::new(tonic_health::pb::HealthCheckRequest {
            service: service.into(),
        });
        request.set_timeout(self.options.attempt_timeout);
        let reply = tonic_health::pb::health_client::HealthClient::new(channel)
            .check(request)
            .await
            .map_err(Error::from_status)?
            .into_inner();
        Ok(match ServingStatus::try_from(reply.status) {
            Ok(ServingStatus::Serving) => HealthStatus::Serving,
            Ok(ServingStatus::NotServing) => HealthStatus::NotServing,
            Ok(ServingStatus::ServiceUnknown) => HealthStatus::ServiceUnknown,
            Ok(ServingStatus::Unknown) | Err(_) => HealthStatus::Unknown,
        })
    }
}

/// The change feed ([`Client::tail`]): audit records in global sequence order.
#[derive(Debug)]
pub struct AuditFeed {
    stream: tonic::Streaming<pb::AuditRecord>,
}

impl AuditFeed {
    /// The next record; `None` when the feed ended (without `follow`, at the head).
    pub async fn next(&mut self) -> Result<Option<AuditRecord>, Error> {
        match self.stream.message().await {
            Ok(Some(record)) => AuditRecord::try_from(record).map(Some),
            Ok(None) => Ok(None),
            Err(status) => Err(Error::from_status(status)),
        }
    }
}

/// A node's `grpc.health.v1` answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HealthStatus {
    Serving,
    NotServing,
    ServiceUnknown,
    Unknown,
}

impl HealthStatus {
    /// The protocol's name for it (`SERVING`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Serving => "SERVING",
            HealthStatus::NotServing => "NOT_SERVING",
            HealthStatus::ServiceUnknown => "SERVICE_UNKNOWN",
            HealthStatus::Unknown => "UNKNOWN",
        }
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

/// `request` carrying the trace the leased task was created in, as W3C `traceparent`.
fn traced<T>(mut request: tonic::Request<T>, lease: &TaskLease) -> tonic::Request<T> {
    if let Some(v) = lease
        .traceparent
        .as_deref()
        .and_then(|t| MetadataValue::try_from(t).ok())
    {
        request.metadata_mut().insert("traceparent", v);
    }
    request
}
