//! Webhooks (DESIGN §9, "Outbound"): the leader POSTs the audit records each subscription
//! matches, at least once and in global-sequence order per subscription, signed with
//! Standard Webhooks headers, to targets on the node's allow-list.
//!
//! - **Settings** ([`WebhookSettings`], `--webhooks FILE`): the allow-list, the signing
//!   secrets by name, an extra CA for HTTPS targets, and the delivery bounds. Each node reads
//!   its own file; secrets are never replicated or logged (subscriptions name them).
//! - **Delivery** ([`WebhookService`], a leader service): one task per active subscription
//!   reads the records after the subscription's cursor from the leader's applied state,
//!   sends those its filter matches one at a time, retries a failed one with capped
//!   exponential backoff, and moves the cursor through the log (`SubscriptionOp::Progress`),
//!   at most every [`PROGRESS_EVERY`] and when it has caught up — not one entry per delivery.
//!   After `attempts` failed attempts in a row, or once the lag passes `lag_max`, it pauses the
//!   subscription with its last error; an operator resumes it from the same cursor. A new
//!   leader starts from the replicated cursor, so a record whose acknowledgement was not yet
//!   committed is sent again (the `webhook-id` header, the record's global sequence, lets the
//!   receiver drop the repeat).
//! - **Safety** ([`send`]): the node resolves the target itself and connects only to an
//!   address the allow-list admits (checked on the address connected to, so DNS cannot
//!   point an allowed name somewhere else); link-local, metadata, unspecified, multicast and
//!   broadcast addresses are refused unless a network entry inside them names them; redirects
//!   are failures, never followed; connect, request and response time are bounded by
//!   `timeout`, response bodies by [`RESPONSE_BYTES_MAX`]; HTTPS verifies the certificate
//!   against the system roots and the configured CA.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use futures::future::BoxFuture;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use ipnet::IpNet;
use lockstep_core::audit::ChainedRecord;
use lockstep_core::subscription::{Subscription, bounded_error, kind_of};
use lockstep_raft::state_machine::Applied;
use lockstep_raft::{Body, DeliveryProgress, SubscriptionOp, read};
use serde::Deserialize;
use sha2::Sha256;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_rustls::rustls;

use crate::cluster::{Lane, WriteError};
use crate::leader::LeaderService;
use crate::node::Node;

/// Largest response body read from a target; the rest is not read.
pub const RESPONSE_BYTES_MAX: usize = 64 * 1024;
/// Records read from the audit chain per look.
pub const RECORDS_PER_LOOK: usize = 256;
/// Longest a task delivers before it proposes its cursor.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(200);
/// The first retry's wait; each failed attempt doubles it up to `backoff_max`.
pub const BACKOFF_MIN: Duration = Duration::from_millis(200);
/// Most secrets one name holds: the current one and, during a rotation, the previous one.
pub const SECRETS_PER_NAME_MAX: usize = 2;
/// Fewest bytes a secret holds.
pub const SECRET_BYTES_MIN: usize = 16;
/// Most entries on the allow-list.
pub const ALLOW_ENTRIES_MAX: usize = 256;
/// Longest wait between looks at the audit chain when no apply wakes a task.
const IDLE_MAX: Duration = Duration::from_secs(1);

/// Defaults of the settings file.
const TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
const ATTEMPTS_DEFAULT: u32 = 12;
const BACKOFF_MAX_DEFAULT: Duration = Duration::from_secs(60);
const LAG_MAX_DEFAULT: u64 = 1_000_000;

/// The `--webhooks` file, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsFile {
    #[serde(default)]
    allow: Vec<String>,
    ca: Option<PathBuf>,
    timeout: Option<String>,
    attempts: Option<u32>,
    backoff_max: Option<String>,
    lag_max: Option<u64>,
    #[serde(default)]
    secrets: BTreeMap<String, OneOrMore>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMore {
    One(String),
    More(Vec<String>),
}

/// One entry of the allow-list.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Allowed {
    /// A network (`10.0.0.0/8`) or one address (`127.0.0.1`).
    Net(IpNet),
    /// A host name, exactly (`hooks.example.com`).
    Host(String),
    /// Any host under a domain (`*.example.com`).
    Suffix(String),
}

/// A node's webhook settings (`--webhooks FILE`). Without the file the allow-list is empty:
/// subscriptions can be made, and nothing is delivered until nodes allow their targets.
pub struct WebhookSettings {
    allow: Vec<Allowed>,
    secrets: BTreeMap<String, Vec<Vec<u8>>>,
    tls: Arc<rustls::ClientConfig>,
    /// Bounds one attempt: connecting, sending and reading the answer.
    pub timeout: Duration,
    /// Failed attempts in a row after which a subscription is paused.
    pub attempts: u32,
    pub backoff_max: Duration,
    /// Records behind the audit head after which a subscription is paused.
    pub lag_max: u64,
    /// The file read, for messages.
    pub file: Option<PathBuf>,
}

impl std::fmt::Debug for WebhookSettings {
    // Never the secrets: their names only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSettings")
            .field("allow", &self.allow)
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .field("timeout", &self.timeout)
            .field("attempts", &self.attempts)
            .field("backoff_max", &self.backoff_max)
            .field("lag_max", &self.lag_max)
            .finish()
    }
}

/// Why the webhook settings file cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("--webhooks {}: {message}", .file.display())]
pub struct WebhookSettingsError {
    pub file: PathBuf,
    pub message: String,
}

impl WebhookSettings {
    /// Reads `file` (`None`: no webhook settings, nothing allowed).
    pub fn load(file: Option<&Path>) -> Result<WebhookSettings, WebhookSettingsError> {
        let Some(file) = file else {
            return Self::from_file(SettingsFile::default(), None);
        };
        let err = |message: String| WebhookSettingsError {
            file: file.to_path_buf(),
            message,
        };
        let text =
            std::fs::read_to_string(file).map_err(|e| err(format!("cannot read it: {e}")))?;
        let parsed: SettingsFile = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        Self::from_file(parsed, Some(file)).map_err(|mut e| {
            e.file = file.to_path_buf();
            e
        })
    }

    fn from_file(
        file: SettingsFile,
        path: Option<&Path>,
    ) -> Result<WebhookSettings, WebhookSettingsError> {
        let err = |message: String| WebhookSettingsError {
            file: path.map(Path::to_path_buf).unwrap_or_default(),
            message,
        };
        if file.allow.len() > ALLOW_ENTRIES_MAX {
            return Err(err(format!(
                "allow lists {} entries, more than ALLOW_ENTRIES_MAX ({ALLOW_ENTRIES_MAX}); use networks",
                file.allow.len()
            )));
        }
        let allow = file
            .allow
            .iter()
            .map(|e| parse_allowed(e).map_err(&err))
            .collect::<Result<Vec<_>, _>>()?;
        let mut secrets = BTreeMap::new();
        for (name, values) in file.secrets {
            lockstep_core::subscription::check_name("secret name", &name).map_err(&err)?;
            let values = match values {
                OneOrMore::One(v) => vec![v],
                OneOrMore::More(v) => v,
            };
            if values.is_empty() || values.len() > SECRETS_PER_NAME_MAX {
                return Err(err(format!(
                    "secret `{name}` lists {} values; give the current one, and during a rotation the previous one after it (at most {SECRETS_PER_NAME_MAX})",
                    values.len()
                )));
            }
            let keys = values
                .iter()
                .map(|v| secret_bytes(v).map_err(|m| err(format!("secret `{name}`: {m}"))))
                .collect::<Result<Vec<_>, _>>()?;
            secrets.insert(name, keys);
        }
        let duration = |what: &str, text: Option<String>, default: Duration| match text {
            None => Ok(default),
            Some(t) => lockstep_core::duration::Duration::parse(&t)
                .map(|d| Duration::from_millis(d.as_ms()))
                .map_err(|e| err(format!("{what} `{t}`: {e}"))),
        };
        let timeout = duration("timeout", file.timeout, TIMEOUT_DEFAULT)?;
        let backoff_max = duration("backoff_max", file.backoff_max, BACKOFF_MAX_DEFAULT)?;
        if timeout.is_zero() || timeout > Duration::from_secs(300) {
            return Err(err("timeout must be between 1ms and 5m".into()));
        }
        let attempts = file.attempts.unwrap_or(ATTEMPTS_DEFAULT);
        if attempts == 0 {
            return Err(err(
                "attempts 0 would pause at the first failure before trying; give at least 1".into(),
            ));
        }
        let tls = client_tls(file.ca.as_deref()).map_err(&err)?;
        Ok(WebhookSettings {
            allow,
            secrets,
            tls: Arc::new(tls),
            timeout,
            attempts,
            backoff_max: backoff_max.max(BACKOFF_MIN),
            lag_max: file.lag_max.unwrap_or(LAG_MAX_DEFAULT),
            file: path.map(Path::to_path_buf),
        })
    }

    /// Whether this node holds the secret `name`.
    pub fn has_secret(&self, name: &str) -> bool {
        self.secrets.contains_key(name)
    }

    /// Whether this node may connect to `addr` for the URL host `host`: `Err` says why not.
    pub fn check_target(&self, host: &str, addr: IpAddr) -> Result<(), String> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let special = special_range(addr);
        let by_net = self.allow.iter().any(|a| match a {
            // A special address needs an entry inside its special range: a wide network
            // such as 0.0.0.0/0 does not reach the metadata service.
            Allowed::Net(net) => {
                net.contains(&addr) && special.is_none_or(|range| range.contains(net))
            }
            _ => false,
        });
        let by_name = special.is_none()
            && self.allow.iter().any(|a| match a {
                Allowed::Host(h) => *h == host,
                Allowed::Suffix(s) => host.ends_with(&format!(".{s}")),
                Allowed::Net(_) => false,
            });
        if by_net || by_name {
            return Ok(());
        }
        let why = match special {
            Some(range) => format!(
                "{addr} is in {range} (link-local, metadata, unspecified, multicast or broadcast), allowed only by an allow entry inside {range}"
            ),
            None => "neither the host nor the address is on the allow-list".to_string(),
        };
        Err(format!(
            "target {host} ({addr}) is refused by this node's webhook allow-list: {why}; add it to `allow` in {}",
            self.file
                .as_deref()
                .map_or("a --webhooks file".to_string(), |f| f.display().to_string())
        ))
    }

    /// The `webhook-signature` header value for one request: `v1,<base64>` per secret of
    /// `secret`, space-separated (two during a rotation).
    pub fn sign(&self, secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Option<String> {
        let keys = self.secrets.get(secret)?;
        Some(
            keys.iter()
                .map(|k| format!("v1,{}", signature(k, id, timestamp, body)))
                .collect::<Vec<_>>()
                .join(" "),
        )
    }
}

/// A secret's key bytes: `whsec_<base64>` (Standard Webhooks) or the text itself.
fn secret_bytes(text: &str) -> Result<Vec<u8>, String> {
    let bytes = match text.strip_prefix("whsec_") {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("the part after whsec_ is not base64: {e}"))?,
        None => text.as_bytes().to_vec(),
    };
    if bytes.len() < SECRET_BYTES_MIN {
        return Err(format!(
            "it holds {} bytes, fewer than SECRET_BYTES_MIN ({SECRET_BYTES_MIN}); generate one with e.g. `echo whsec_$(head -c 32 /dev/urandom | base64)`",
            bytes.len()
        ));
    }
    Ok(bytes)
}

/// Standard Webhooks: base64 of HMAC-SHA256(key, "{id}.{timestamp}.{body}").
pub fn signature(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn parse_allowed(entry: &str) -> Result<Allowed, String> {
    let e = entry.trim().to_ascii_lowercase();
    if let Ok(net) = e.parse::<IpNet>() {
        return Ok(Allowed::Net(net.trunc()));
    }
    if let Ok(ip) = e.parse::<IpAddr>() {
        return Ok(Allowed::Net(IpNet::from(ip)));
    }
    let (suffix, name) = match e.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, e.as_str()),
    };
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !valid {
        return Err(format!(
            "allow entry `{entry}` is not a network (10.0.0.0/8), an address (127.0.0.1), a host name (hooks.example.com) or a domain (*.example.com)"
        ));
    }
    Ok(if suffix {
        Allowed::Suffix(name.to_string())
    } else {
        Allowed::Host(name.to_string())
    })
}

/// The special range `addr` is in, if any: addresses no allow-list entry outside the range
/// may admit.
fn special_range(addr: IpAddr) -> Option<IpNet> {
    const RANGES: [&str; 9] = [
        "169.254.0.0/16", // link-local, and the cloud metadata service 169.254.169.254
        "0.0.0.0/8",
        "224.0.0.0/4",
        "255.255.255.255/32",
        "100.100.100.200/32", // Alibaba Cloud metadata
        "fe80::/10",
        "fd00:ec2::254/128", // AWS metadata over IPv6
        "ff00::/8",
        "::/128",
    ];
    let addr = match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    };
    RANGES
        .iter()
        .map(|r| r.parse::<IpNet>().expect("a valid range"))
        .find(|r| r.contains(&addr))
}

/// Verifies with the system roots (Debian's bundle, when present) and the configured CA.
fn client_tls(ca: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let system = Path::new("/etc/ssl/certs/ca-certificates.crt");
    if system.exists()
        && let Ok(certs) = CertificateDer::pem_file_iter(system)
    {
        roots.add_parsable_certificates(certs.flatten());
    }
    if let Some(ca) = ca {
        let certs: Vec<_> = CertificateDer::pem_file_iter(ca)
            .map_err(|e| format!("ca {}: {e}", ca.display()))?
            .collect::<Result<_, _>>()
            .map_err(|e| format!("ca {}: {e}", ca.display()))?;
        if certs.is_empty() {
            return Err(format!("ca {} holds no PEM certificate", ca.display()));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("ca {}: {e}", ca.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The JSON body of one delivery (Standard Webhooks' `type`, `timestamp`, `data`).
pub fn payload(subscription: &str, record: &ChainedRecord, emitted: &[String]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "type": format!("lockstep.{}", kind_of(&record.record.kind)),
        "timestamp": record.record.at.to_string(),
        "data": {
            "subscription": subscription,
            "global_seq": record.global_seq,
            "emitted": emitted,
            "record": record,
        },
    }))
    .expect("a record serializes")
}

/// One POST of `body` to `url`, signed; `Ok` for a 2xx answer.
pub async fn send(
    settings: &WebhookSettings,
    subscription: &Subscription,
    id: &str,
    body: Vec<u8>,
) -> Result<(), String> {
    let attempt = async {
        let uri: http::Uri = subscription
            .url
            .parse()
            .map_err(|e| format!("URL {}: {e}", subscription.url))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("URL {} is not http(s)", subscription.url)),
        };
        let host = uri
            .host()
            .ok_or_else(|| format!("URL {} has no host", subscription.url))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let candidates: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((host.as_str(), port))
                .await
                .map_err(|e| format!("cannot resolve {host}: {e}"))?
                .collect(),
        };
        let mut refused = None;
        let addr = candidates
            .iter()
            .find(|a| match settings.check_target(&host, a.ip()) {
                Ok(()) => true,
                Err(e) => {
                    refused.get_or_insert(e);
                    false
                }
            })
            .copied()
            .ok_or_else(|| refused.unwrap_or_else(|| format!("{host} resolved to no address")))?;
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to {host} ({addr}): {e}"))?;
        let _ = tcp.set_nodelay(true);
        let timestamp = jiff::Timestamp::now().as_second();
        let signature = settings
            .sign(&subscription.secret, id, timestamp, &body)
            .ok_or_else(|| {
                format!(
                    "this node has no secret named `{}` in its --webhooks file",
                    subscription.secret
                )
            })?;
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let authority = uri.authority().map_or(host.clone(), |a| a.to_string());
        let request = http::Request::post(path)
            .header(http::header::HOST, authority)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("lockstep/", env!("CARGO_PKG_VERSION")),
            )
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("cannot build the request: {e}"))?;
        let status = if https {
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|e| format!("{host} is not a TLS server name: {e}"))?;
            let tls = tokio_rustls::TlsConnector::from(Arc::clone(&settings.tls))
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS with {host}: {e}"))?;
            exchange(tls, request).await?
        } else {
            exchange(tcp, request).await?
        };
        if status.is_success() {
            Ok(())
        } else if status.is_redirection() {
            Err(format!(
                "{} answered {status}: redirects are not followed; subscribe the final URL",
                subscription.url
            ))
        } else {
            Err(format!("{} answered {status}", subscription.url))
        }
    };
    match tokio::time::timeout(settings.timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "{} did not answer within {}",
            subscription.url,
            lockstep_core::duration::Duration::from_ms(settings.timeout.as_millis() as u64)
        )),
    }
}

/// One HTTP/1.1 request on `io`; reads at most [`RESPONSE_BYTES_MAX`] of the answer.
async fn exchange<IO>(
    io: IO,
    request: http::Request<Full<Bytes>>,
) -> Result<http::StatusCode, String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .map_err(|e| format!("HTTP handshake: {e}"))?;
    let driver = tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request failed: {e}"));
    let result = match response {
        Ok(response) => {
            let status = response.status();
            let mut body = response.into_body();
            let mut read = 0usize;
            while read < RESPONSE_BYTES_MAX {
                match body.frame().await {
                    Some(Ok(frame)) => read += frame.data_ref().map_or(0, |d| d.len()),
                    _ => break,
                }
            }
            Ok(status)
        }
        Err(e) => Err(e),
    };
    driver.abort();
    result
}

/// The delivery of one node, a [`LeaderService`]: on the leader, one task per active
/// subscription.
pub struct WebhookService {
    node: Arc<Node>,
    /// Woken (every task) after each apply: new records may be there.
    applied: Arc<Notify>,
    tasks: Mutex<HashMap<String, JoinHandle<()>>>,
}

impl std::fmt::Debug for WebhookService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookService").finish_non_exhaustive()
    }
}

impl WebhookService {
    pub fn new(node: Arc<Node>) -> Self {
        WebhookService {
            node,
            applied: Arc::new(Notify::new()),
            tasks: Mutex::new(HashMap::new()),
        }
    }

    fn stop_all(&self) {
        for (_, task) in self.tasks.lock().expect("webhook tasks").drain() {
            task.abort();
        }
    }

    /// Starts a task for each active subscription without one; stops those of paused and
    /// deleted subscriptions.
    fn reconcile(&self) -> Result<(), WriteError> {
        let subscriptions =
            read::subscriptions(&*self.node.store).map_err(|e| WriteError::Fatal(e.to_string()))?;
        let mut tasks = self.tasks.lock().expect("webhook tasks");
        tasks.retain(|name, task| {
            let active = subscriptions
                .iter()
                .any(|s| s.name == *name && s.paused.is_none());
            if !active || task.is_finished() {
                task.abort();
                if !subscriptions.iter().any(|s| s.name == *name) {
                    self.node.metrics.forget_subscription(name);
                }
            }
            active && !task.is_finished()
        });
        for s in subscriptions {
            if s.paused.is_none() && !tasks.contains_key(&s.name) {
                let name = s.name.clone();
                let run = Delivery {
                    node: Arc::clone(&self.node),
                    applied: Arc::clone(&self.applied),
                    subscription: s,
                };
                tasks.insert(name, tokio::spawn(run.run()));
            }
        }
        Ok(())
    }
}

impl LeaderService for WebhookService {
    fn name(&self) -> &'static str {
        "webhooks"
    }

    fn applied(&self, applied: &Applied) -> bool {
        if applied.entries > 0 {
            self.applied.notify_waiters();
        }
        applied.changed_subscriptions
    }

    fn step(&self) -> BoxFuture<'_, Result<Option<Duration>, WriteError>> {
        Box::pin(async { self.reconcile().map(|()| Some(IDLE_MAX)) })
    }

    fn became_follower(&self) {
        self.stop_all();
    }
}

impl Drop for WebhookService {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// One subscription's delivery on the leader, from its replicated cursor.
struct Delivery {
    node: Arc<Node>,
    applied: Arc<Notify>,
    subscription: Subscription,
}

impl Delivery {
    async fn run(mut self) {
        let name = self.subscription.name.clone();
        let mut proposed = self.subscription.cursor;
        let mut last_progress = Instant::now();
        let applied = Arc::clone(&self.applied);
        loop {
            // Registered before the look, so an apply between the look and the wait wakes it.
            let woken = applied.notified();
            let (records, head) = match self.look() {
                Ok(found) => found,
                Err(e) => {
                    tracing::warn!(subscription = %name, error = %e, "webhook delivery cannot read the audit chain");
                    tokio::time::sleep(IDLE_MAX).await;
                    continue;
                }
            };
            let lag = head.saturating_sub(self.subscription.cursor);
            self.node.metrics.observe_webhook_lag(&name, lag);
            if records.is_empty() {
                if proposed < self.subscription.cursor {
                    match self.propose(None, false).await {
                        Ok(()) => proposed = self.subscription.cursor,
                        Err(()) => continue,
                    }
                }
                let _ = tokio::time::timeout(IDLE_MAX, woken).await;
                continue;
            }
            for (record, emitted) in records {
                if self.subscription.filter.matches(&record.record, &emitted)
                    && !self.deliver(&record, &emitted, head).await
                {
                    return; // paused: the reconcile starts a task again after a resume
                }
                self.subscription.cursor = record.global_seq;
                if last_progress.elapsed() >= PROGRESS_EVERY {
                    if self.propose(None, false).await.is_ok() {
                        proposed = self.subscription.cursor;
                    }
                    last_progress = Instant::now();
                }
            }
        }
    }

    /// The records after the cursor with the events each emitted, and the audit head.
    #[allow(clippy::type_complexity)]
    fn look(&self) -> Result<(Vec<(ChainedRecord, Vec<String>)>, u64), lockstep_store::Error> {
        let store = &*self.node.store;
        let head = read::audit_head(store)?.seq;
        let records = read::audit_from(store, self.subscription.cursor + 1, RECORDS_PER_LOOK)?;
        let mut out = Vec::with_capacity(records.len());
        for r in records {
            let emitted = read::emitted(store, r.global_seq)?;
            out.push((r, emitted));
        }
        Ok((out, head))
    }

    /// Sends one record until it is delivered (`true`) or the subscription is paused.
    async fn deliver(&mut self, record: &ChainedRecord, emitted: &[String], head: u64) -> bool {
        let settings = &self.node.webhooks;
        let name = self.subscription.name.clone();
        let id = record.global_seq.to_string();
        let body = payload(&name, record, emitted);
        let mut attempts = 0u32;
        loop {
            let started = Instant::now();
            let result = send(settings, &self.subscription, &id, body.clone()).await;
            self.node.metrics.observe_webhook_delivery(
                &name,
                started.elapsed().as_secs_f64(),
                result.is_ok(),
            );
            let error = match result {
                Ok(()) => {
                    if self.subscription.last_error.take().is_some() {
                        // Cleared through the log at the next progress.
                        tracing::info!(subscription = %name, seq = record.global_seq, "webhook delivered again");
                    }
                    return true;
                }
                Err(e) => bounded_error(&e),
            };
            attempts += 1;
            let lag = head.saturating_sub(self.subscription.cursor);
            let give_up = attempts >= settings.attempts || lag > settings.lag_max;
            let reason = if lag > settings.lag_max {
                format!(
                    "{lag} records behind, more than lag_max ({}); last error: {error}",
                    settings.lag_max
                )
            } else if give_up {
                format!("{attempts} attempts failed; last error: {error}")
            } else {
                error.clone()
            };
            tracing::warn!(subscription = %name, seq = record.global_seq, attempts, error = %error, "webhook delivery failed");
            self.subscription.last_error = Some(reason.clone());
            // The error becomes visible (and, when giving up, the pause) through the log.
            while self.propose(Some(reason.clone()), give_up).await.is_err() {
                tokio::time::sleep(IDLE_MAX).await;
            }
            if give_up {
                tracing::warn!(subscription = %name, reason = %reason, "webhook subscription paused");
                return false;
            }
            let backoff = BACKOFF_MIN
                .saturating_mul(1 << attempts.min(16))
                .min(settings.backoff_max);
            // Jitter: up to a quarter more, so many failing subscriptions do not retry at once.
            let jitter = backoff.mul_f64(rand::random::<f64>() / 4.0);
            tokio::time::sleep(backoff + jitter).await;
        }
    }

    /// Proposes the cursor (and an error, or a pause) through the log.
    async fn propose(&self, error: Option<String>, pause: bool) -> Result<(), ()> {
        let update = DeliveryProgress {
            name: self.subscription.name.clone(),
            cursor: self.subscription.cursor,
            error: error.or_else(|| self.subscription.last_error.clone()),
            pause,
        };
        let body = Body::Subscriptions(SubscriptionOp::Progress {
            updates: vec![update],
        });
        match self.node.write(None, body, false, Lane::Engine).await {
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::debug!(subscription = %self.subscription.name, error = %e, "webhook progress not proposed");
                Err(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(allow: &[&str]) -> WebhookSettings {
        WebhookSettings::from_file(
            SettingsFile {
                allow: allow.iter().map(|s| s.to_string()).collect(),
                secrets: BTreeMap::from([(
                    "pager".to_string(),
                    OneOrMore::More(vec![
                        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
                        "an-older-secret-of-enough-bytes".into(),
                    ]),
                )]),
                ..SettingsFile::default()
            },
            None,
        )
        .unwrap()
    }

    #[test]
    fn the_signature_is_the_standard_webhooks_one() {
        // The example of the Standard Webhooks specification (its reference libraries' test).
        let key = secret_bytes("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = signature(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn a_rotation_sends_both_signatures() {
        let s = settings(&[]);
        let header = s.sign("pager", "7", 1, b"{}").unwrap();
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2, "{header}");
        assert!(parts.iter().all(|p| p.starts_with("v1,")));
        assert!(s.sign("unknown", "7", 1, b"{}").is_none());
        assert!(!format!("{s:?}").contains("whsec_"), "secrets never show");
    }

    #[test]
    fn the_allow_list_admits_networks_and_names_but_never_metadata_by_accident() {
        let s = settings(&[
            "127.0.0.1/32",
            "hooks.example.com",
            "*.corp.example",
            "0.0.0.0/0",
        ]);
        let ip = |t: &str| t.parse::<IpAddr>().unwrap();
        assert!(s.check_target("127.0.0.1", ip("127.0.0.1")).is_ok());
        assert!(
            s.check_target("hooks.example.com", ip("203.0.113.9"))
                .is_ok()
        );
        assert!(
            s.check_target("a.b.corp.example", ip("203.0.113.9"))
                .is_ok()
        );
        // 0.0.0.0/0 admits public addresses, but not the metadata service or link-local.
        let e = s
            .check_target("169.254.169.254", ip("169.254.169.254"))
            .unwrap_err();
        assert!(e.contains("169.254.0.0/16"), "{e}");
        assert!(
            s.check_target("hooks.example.com", ip("169.254.169.254"))
                .is_err(),
            "an allowed name resolving to the metadata address is refused"
        );
        assert!(s.check_target("x", ip("fe80::1")).is_err());
        assert!(s.check_target("x", ip("::ffff:169.254.169.254")).is_err());
        let explicit = settings(&["169.254.169.254/32"]);
        assert!(
            explicit
                .check_target("169.254.169.254", ip("169.254.169.254"))
                .is_ok()
        );
        let narrow = settings(&["127.0.0.1"]);
        let e = narrow
            .check_target("evil.example", ip("10.0.0.1"))
            .unwrap_err();
        assert!(e.contains("allow-list"), "{e}");
        assert!(parse_allowed("not a host!").is_err());
    }

    #[test]
    fn bad_settings_are_refused_with_the_reason() {
        let weak = WebhookSettings::from_file(
            SettingsFile {
                secrets: BTreeMap::from([("p".to_string(), OneOrMore::One("short".into()))]),
                ..SettingsFile::default()
            },
            None,
        )
        .unwrap_err();
        assert!(
            weak.message.contains("SECRET_BYTES_MIN"),
            "{}",
            weak.message
        );
        let three = WebhookSettings::from_file(
            SettingsFile {
                secrets: BTreeMap::from([(
                    "p".to_string(),
                    OneOrMore::More(vec!["a".repeat(20), "b".repeat(20), "c".repeat(20)]),
                )]),
                ..SettingsFile::default()
            },
            None,
        )
        .unwrap_err();
        assert!(three.message.contains("rotation"), "{}", three.message);
    }
}
