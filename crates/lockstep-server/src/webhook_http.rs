//! Webhook targets (DESIGN §9, "Outbound"): a node's webhook settings (`--webhooks FILE`:
//! the allow-list, the signing secrets by name, an extra CA, the delivery bounds), the
//! Standard Webhooks signature, and one POST ([`send`]). It knows nothing of the node or the
//! log; `webhooks.rs` delivers with it.
//!
//! Safety: the node resolves the target itself and connects only to an address the
//! allow-list admits (checked on the address connected to, so DNS cannot point an allowed
//! name somewhere else); link-local, metadata, unspecified, multicast and broadcast
//! addresses are refused unless a network entry inside them names them; redirects are
//! failures, never followed; connect, request and response time are bounded by `timeout`,
//! response bodies by [`RESPONSE_BYTES_MAX`]; HTTPS verifies the certificate against the
//! system roots and the configured CA. Secrets are never replicated or logged.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use ipnet::IpNet;
use lockstep_core::audit::ChainedRecord;
use lockstep_core::subscription::{Subscription, kind_of};
use serde::Deserialize;
use sha2::Sha256;
use tokio_rustls::rustls;

/// Largest response body read from a target; the rest is not read.
pub const RESPONSE_BYTES_MAX: usize = 64 * 1024;
/// The first retry's wait; each failed attempt doubles it up to `backoff_max`.
pub const BACKOFF_MIN: Duration = Duration::from_millis(200);
/// Most secrets one name holds: the current one and, during a rotation, the previous one.
pub const SECRETS_PER_NAME_MAX: usize = 2;
/// Fewest bytes a secret holds.
pub const SECRET_BYTES_MIN: usize = 16;
/// Most entries on the allow-list.
pub const ALLOW_ENTRIES_MAX: usize = 256;

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
        let addr = canonical(addr);
        let special = special_range(addr);
        let internal = internal_range(addr);
        let by_net = self.allow.iter().any(|a| match a {
            // A special address needs an entry inside its special range: a wide network
            // such as 0.0.0.0/0 does not reach the metadata service.
            Allowed::Net(net) => {
                net.contains(&addr) && special.is_none_or(|range| range.contains(net))
            }
            _ => false,
        });
        // A name admits public addresses only: whoever controls the name's DNS must not
        // be able to point it at loopback or the internal network (DNS rebinding).
        let name_listed = self.allow.iter().any(|a| match a {
            Allowed::Host(h) => *h == host,
            Allowed::Suffix(s) => host.ends_with(&format!(".{s}")),
            Allowed::Net(_) => false,
        });
        let by_name = name_listed && special.is_none() && internal.is_none();
        if by_net || by_name {
            return Ok(());
        }
        let why = match (special, internal) {
            (Some(range), _) => format!(
                "{addr} is in {range} (link-local, metadata, unspecified, multicast or broadcast), allowed only by an allow entry inside {range}"
            ),
            (None, Some(range)) if name_listed => format!(
                "the host name is allowed, but it resolved to {addr} in {range} (loopback or internal), which a name never admits: allow that network itself"
            ),
            _ => "neither the host nor the address is on the allow-list".to_string(),
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

/// `addr` with an IPv4 address written as IPv6 (IPv4-mapped `::ffff:a.b.c.d`, or NAT64
/// `64:ff9b::a.b.c.d`) as that IPv4 address, so every check sees where it really goes.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let s = v6.segments();
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let [a, b] = s[6].to_be_bytes();
                let [c, d] = s[7].to_be_bytes();
                return IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, d));
            }
            addr
        }
        v4 => v4,
    }
}

/// The loopback or internal range `addr` is in, if any: a host-name entry does not admit it.
fn internal_range(addr: IpAddr) -> Option<IpNet> {
    const RANGES: [&str; 8] = [
        "127.0.0.0/8",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "::1/128",
        "fc00::/7",
        "fec0::/10",
    ];
    RANGES
        .iter()
        .map(|r| r.parse::<IpNet>().expect("a valid range"))
        .find(|r| r.contains(&addr))
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
    let addr = canonical(addr);
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

/// A target URL resolved by this node: the first address its allow-list admits.
#[derive(Debug)]
pub struct Target {
    pub uri: http::Uri,
    pub https: bool,
    /// The URL's host, without IPv6 brackets.
    pub host: String,
    pub addr: SocketAddr,
}

impl WebhookSettings {
    /// Parses `url`, resolves its host (an address is taken as it is) and picks the first
    /// address the allow-list admits; `Err` says why none: the URL, DNS, or the allow-list.
    /// Delivery connects to exactly this address; a create checks it ahead of time.
    pub async fn resolve(&self, url: &str) -> Result<Target, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("URL {url}: {e}"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("URL {url} is not http(s)")),
        };
        let host = uri
            .host()
            .ok_or_else(|| format!("URL {url} has no host"))?
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
            .find(|a| match self.check_target(&host, a.ip()) {
                Ok(()) => true,
                Err(e) => {
                    refused.get_or_insert(e);
                    false
                }
            })
            .copied()
            .ok_or_else(|| refused.unwrap_or_else(|| format!("{host} resolved to no address")))?;
        Ok(Target {
            uri,
            https,
            host,
            addr,
        })
    }
}

/// One POST of `body` to `url`, signed, with `extra` headers (a `traceparent`); `Ok` for a
/// 2xx answer.
pub async fn send(
    settings: &WebhookSettings,
    subscription: &Subscription,
    id: &str,
    body: Vec<u8>,
    extra: &std::collections::HashMap<String, String>,
) -> Result<(), String> {
    let attempt = async {
        let target = settings.resolve(&subscription.url).await?;
        let (uri, https, host, addr) = (target.uri, target.https, target.host, target.addr);
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
        let mut request = http::Request::post(path);
        for (k, v) in extra {
            request = request.header(k.as_str(), v.as_str());
        }
        let request = request
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
        assert!(
            s.check_target("x", ip("64:ff9b::a9fe:a9fe")).is_err(),
            "NAT64 metadata"
        );
        // A name never admits loopback or internal addresses (DNS rebinding), and an
        // IPv4-mapped address is checked as the IPv4 address it is.
        let names = settings(&["hooks.example.com"]);
        let e = names
            .check_target("hooks.example.com", ip("10.1.2.3"))
            .unwrap_err();
        assert!(e.contains("never admits"), "{e}");
        assert!(names.check_target("hooks.example.com", ip("::1")).is_err());
        assert!(
            names
                .check_target("hooks.example.com", ip("203.0.113.9"))
                .is_ok()
        );
        let v6_wide = settings(&["::/0"]);
        assert!(v6_wide.check_target("x", ip("::ffff:127.0.0.1")).is_err());
        assert!(v6_wide.check_target("x", ip("2001:db8::1")).is_ok());
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

    /// An HTTPS target served with a certificate of the test CA, answering `status` to every
    /// request; its address.
    async fn https_target(pki: &lockstep_testpki::Pki, status: u16) -> SocketAddr {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let (cert, key) = pki.issue("hook", "hook", &[], true);
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |_request| async move {
                        let mut answer = http::Response::new(Full::new(Bytes::from_static(b"ok")));
                        *answer.status_mut() = http::StatusCode::from_u16(status).unwrap();
                        if status / 100 == 3 {
                            answer.headers_mut().insert(
                                http::header::LOCATION,
                                http::HeaderValue::from_static("http://169.254.169.254/"),
                            );
                        }
                        Ok::<_, std::convert::Infallible>(answer)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        addr
    }

    fn subscription(url: String) -> Subscription {
        Subscription {
            name: "s".into(),
            url,
            filter: lockstep_core::subscription::Filter::default(),
            secret: "pager".into(),
            cursor: 0,
            paused: None,
            last_error: None,
            created_by: "admin".into(),
            created_at: lockstep_core::Timestamp::from_micros(0),
            generation: 1,
        }
    }

    fn https_settings(ca: Option<PathBuf>) -> WebhookSettings {
        WebhookSettings::from_file(
            SettingsFile {
                allow: vec!["127.0.0.1".into()],
                ca,
                timeout: Some("5s".into()),
                secrets: BTreeMap::from([(
                    "pager".to_string(),
                    OneOrMore::One("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()),
                )]),
                ..SettingsFile::default()
            },
            None,
        )
        .unwrap()
    }

    #[tokio::test]
    async fn https_targets_are_verified_against_the_configured_ca_and_redirects_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let pki = lockstep_testpki::Pki::new(dir.path().to_path_buf());
        let ok = https_target(&pki, 204).await;
        let with_ca = https_settings(Some(dir.path().join("ca.pem")));
        send(
            &with_ca,
            &subscription(format!("https://localhost:{}/hook", ok.port())),
            "1",
            b"{}".to_vec(),
            &Default::default(),
        )
        .await
        .unwrap();
        // Without the CA the certificate is not trusted.
        let e = send(
            &https_settings(None),
            &subscription(format!("https://localhost:{}/hook", ok.port())),
            "1",
            b"{}".to_vec(),
            &Default::default(),
        )
        .await
        .unwrap_err();
        assert!(e.contains("TLS") && e.contains("certificate"), "{e}");
        // A redirect is a failure, never followed (here: towards the metadata service).
        let moved = https_target(&pki, 302).await;
        let e = send(
            &with_ca,
            &subscription(format!("https://localhost:{}/hook", moved.port())),
            "1",
            b"{}".to_vec(),
            &Default::default(),
        )
        .await
        .unwrap_err();
        assert!(e.contains("redirects are not followed"), "{e}");
        // A target off the allow-list is not connected to at all.
        let e = send(
            &with_ca,
            &subscription("https://127.0.0.2:9/hook".into()),
            "1",
            b"{}".to_vec(),
            &Default::default(),
        )
        .await
        .unwrap_err();
        assert!(e.contains("allow-list"), "{e}");
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
