//! Who is calling (DESIGN §5): TLS material, peer and client certificates, client JWTs, and
//! the tower layer that authenticates every public gRPC call and applies the cluster policy.
//!
//! **Certificates.** One cluster CA issues every certificate. A node's certificate has the
//! subject CN `node-<id>` (e.g. `node-3`) and the names peers and clients dial as subject
//! alternative names; the node serves it on its one gRPC port and presents it as client
//! certificate to its peers. The Raft service accepts a message only from a TLS peer whose
//! certificate names the node id the message claims to come from, and only if that id is a
//! member (see `raft_service`). A client certificate's CN is the actor id; its kind is
//! `kind:<human|service|worker>` (absent: human) and each `role:<name>` is a role, written
//! either as subject OU entries or as URI subject alternative names `lockstep:kind:<kind>` and
//! `lockstep:role:<name>` (what `lockstep certs` writes: rcgen keeps one OU per subject). A CN
//! of the form `node-<digits>` is never an actor. Client certificates are optional at
//! the TLS layer, so JWT clients need none; a certificate from another CA fails the handshake.
//!
//! **Tokens.** `authorization: Bearer <JWT>` signed by a configured key (PEM public keys or a
//! JWKS file; RSA, EC P-256/P-384 or Ed25519; no shared secrets), with `iss` and `aud` as
//! configured and `exp` in the future (`nbf`, if present, in the past; 30 s leeway). `sub` is
//! the actor id, the roles claim (default `roles`) the roles, the kind claim (default
//! `lockstep_kind`) the kind; every claim is available to predicates as `actor.claims`. A
//! token, when sent, is what counts, even on a connection with a client certificate.
//!
//! **Development mode** (`--dev`, loopback only): no TLS, and the headers `x-lockstep-actor`,
//! `x-lockstep-roles` and `x-lockstep-actor-kind` name the caller. In secure mode those
//! headers are ignored.

use std::collections::BTreeMap;
use std::future::{Ready, ready};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::Either;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use lockstep_core::{Actor, ActorKind};
use lockstep_proto::names;
use tonic::Status;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::config::{Config, JwtSettings, TlsFiles};
use crate::policy::{Permission, PolicySource};
use crate::security_log::{RefusalKind, SecurityLog};

/// What an unauthenticated caller is told.
pub const HOW_TO_AUTHENTICATE: &str = "no credentials: send `authorization: Bearer <JWT>` with a token from the cluster's issuer (lockstep --token or LOCKSTEP_TOKEN), or connect with a client certificate from the cluster CA (lockstep --tls-cert and --tls-key)";
/// Largest `authorization` header accepted, in bytes.
pub const AUTHORIZATION_BYTES_MAX: usize = 16 * 1024;
/// Clock skew tolerated for `exp` and `nbf`, in seconds.
pub const JWT_LEEWAY_SECS: u64 = 30;

/// The caller of a public gRPC call, as established by [`AuthLayer`]; handlers read it from
/// the request's extensions (it cannot come from the wire).
#[derive(Clone, Debug)]
pub struct Authenticated(pub Actor);

/// What a certificate says about its holder: the subject's common name and organizational
/// units, and its URI subject alternative names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CertSubject {
    pub cn: Option<String>,
    pub ous: Vec<String>,
    pub uris: Vec<String>,
}

/// Why a certificate names no actor (mTLS), or cannot be read at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    #[error("unreadable certificate: {0}")]
    Unreadable(String),
    #[error("the client certificate has no subject CN to name the actor")]
    NoCommonName,
    #[error("`{0}` is a node certificate, not a client identity")]
    NodeCertificate(String),
    #[error("actor ids starting with `system:` belong to the engine")]
    SystemActor,
    #[error("the client certificate's `{0}` is not kind:human, kind:service or kind:worker")]
    UnknownKind(String),
}

/// Why a bearer token names no actor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the bearer token is not a JWT: {0}")]
    NotJwt(String),
    #[error("no configured key verifies {algorithm} tokens{}", kid.as_deref().map(|k| format!(" with kid `{k}`")).unwrap_or_default())]
    NoKey {
        algorithm: String,
        kid: Option<String>,
    },
    #[error("the bearer token has expired (exp)")]
    Expired,
    #[error("the bearer token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the bearer token's signature does not verify with any configured key")]
    BadSignature,
    #[error("the bearer token's issuer (iss) is not this cluster's")]
    WrongIssuer,
    #[error("the bearer token's audience (aud) does not include this cluster")]
    WrongAudience,
    #[error("the bearer token has no `{0}` claim")]
    MissingClaim(String),
    #[error("the bearer token's algorithm does not match the key")]
    WrongAlgorithm,
    #[error("the bearer token is not valid: {0}")]
    Invalid(String),
    #[error("the token's `sub` claim is not a non-empty string")]
    NoSubject,
    #[error("actor ids starting with `system:` belong to the engine")]
    SystemActor,
    #[error("the token's `{0}` claim holds a non-string")]
    RoleNotAString(String),
    #[error("the token's `{0}` claim is neither a list of roles nor a string")]
    RolesNotAList(String),
    #[error("the token's `{claim}` claim is {value}, not \"human\", \"service\" or \"worker\"")]
    UnknownKind { claim: String, value: String },
}

/// Why the public keys of `--jwt-keys` cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeysError {
    #[error("not a JWKS document: {0}")]
    NotJwks(String),
    #[error("JWK curve {0} is not supported")]
    UnsupportedCurve(String),
    #[error("symmetric (kty oct) keys are not accepted: configure the issuer's public keys")]
    SymmetricKey,
    #[error("bad JWK: {0}")]
    BadJwk(String),
    #[error("`{0}` is not an RSA, EC or Ed25519 public key")]
    NotAPublicKey(String),
    #[error("no keys found: expected PEM public keys or a JWKS document")]
    NoKeys,
}

/// Why the node's TLS or JWT settings cannot be used (at start-up; nothing is served).
#[derive(Debug, thiserror::Error)]
pub enum TrustSetupError {
    #[error("cannot read {flag} {}: {source}", .path.display())]
    Read {
        flag: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{flag} {}: not PEM: {reason}", .path.display())]
    NotPem {
        flag: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{flag} {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", .path.display())]
    NoCertificate { flag: &'static str, path: PathBuf },
    #[error("--tls-key {} holds no PEM private key", .0.display())]
    NoPrivateKey(PathBuf),
    #[error("--tls-cert: {0}")]
    Certificate(CertificateError),
    #[error(
        "--tls-cert {} is issued to CN={cn}, but node {node}'s certificate must have CN=node-{node}: peers accept Raft messages from node {node} only with that name (`lockstep certs --node {node}=HOST` makes one)",
        .path.display()
    )]
    NotThisNode {
        path: PathBuf,
        cn: String,
        node: u64,
    },
    #[error("--jwt-keys {}: {source}", .path.display())]
    JwtKeys { path: PathBuf, source: KeysError },
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    /// The files read, but rustls cannot serve with them: what, and why.
    #[error("{what}: {reason}")]
    Unusable { what: &'static str, reason: String },
}

/// Settings rustls cannot serve with: `what`, and rustls' reason.
fn unusable(what: &'static str, e: impl std::fmt::Display) -> TrustSetupError {
    TrustSetupError::Unusable {
        what,
        reason: e.to_string(),
    }
}

/// Reads the subject of a DER certificate.
pub fn subject(der: &[u8]) -> Result<CertSubject, CertificateError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| CertificateError::Unreadable(e.to_string()))?;
    let name = cert.subject();
    Ok(CertSubject {
        cn: name
            .iter_common_name()
            .next()
            .and_then(|a| a.as_str().ok())
            .map(str::to_string),
        ous: name
            .iter_organizational_unit()
            .filter_map(|a| a.as_str().ok())
            .map(str::to_string)
            .collect(),
        uris: match cert.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        },
    })
}

/// The node id a certificate names (`CN=node-<id>`), if it is a node certificate.
pub fn node_id_of(subject: &CertSubject) -> Option<u64> {
    subject
        .cn
        .as_deref()?
        .strip_prefix("node-")?
        .parse()
        .ok()
        .filter(|id| *id > 0)
}

/// The actor a client certificate names.
pub fn certificate_actor(subject: &CertSubject) -> Result<Actor, CertificateError> {
    let cn = subject
        .cn
        .as_deref()
        .filter(|cn| !cn.trim().is_empty())
        .ok_or(CertificateError::NoCommonName)?;
    if node_id_of(subject).is_some() {
        return Err(CertificateError::NodeCertificate(cn.to_string()));
    }
    if cn.starts_with("system:") {
        return Err(CertificateError::SystemActor);
    }
    let mut kind = ActorKind::Human;
    let mut roles = Vec::new();
    let entries = subject.ous.iter().map(String::as_str).chain(
        subject
            .uris
            .iter()
            .filter_map(|u| u.strip_prefix("lockstep:")),
    );
    for entry in entries {
        if let Some(k) = entry.strip_prefix("kind:") {
            kind = parse_kind(k).ok_or_else(|| CertificateError::UnknownKind(entry.to_string()))?;
        } else if let Some(r) = entry.strip_prefix("role:")
            && !roles.iter().any(|have| have == r)
        {
            roles.push(r.to_string());
        }
    }
    Ok(Actor {
        id: cn.to_string(),
        kind,
        roles,
        claims: BTreeMap::from([
            ("ou".to_string(), serde_json::json!(subject.ous.clone())),
            ("uri".to_string(), serde_json::json!(subject.uris.clone())),
        ]),
        authn: "mtls".into(),
    })
}

fn parse_kind(text: &str) -> Option<ActorKind> {
    match text {
        "human" => Some(ActorKind::Human),
        "service" => Some(ActorKind::Service),
        "worker" => Some(ActorKind::Worker),
        _ => None,
    }
}

fn read_file(path: &Path, flag: &'static str) -> Result<Vec<u8>, TrustSetupError> {
    std::fs::read(path).map_err(|source| TrustSetupError::Read {
        flag,
        path: path.to_path_buf(),
        source,
    })
}

/// The DER certificates of a PEM file.
fn pem_certificates(
    pem: &[u8],
    flag: &'static str,
    path: &Path,
) -> Result<Vec<Vec<u8>>, TrustSetupError> {
    let mut out = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem) {
        let block = block.map_err(|e| TrustSetupError::NotPem {
            flag,
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        if block.label == "CERTIFICATE" {
            out.push(block.contents);
        }
    }
    if out.is_empty() {
        return Err(TrustSetupError::NoCertificate {
            flag,
            path: path.to_path_buf(),
        });
    }
    Ok(out)
}

/// The node's certificate, key and CA, read and checked at start-up.
#[derive(Clone)]
struct TlsMaterial {
    identity: Identity,
    ca: Certificate,
    /// The same files as read, for the server's own rustls acceptor.
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    ca_pem: Vec<u8>,
}

impl TlsMaterial {
    fn load(files: &TlsFiles, node_id: u64) -> Result<TlsMaterial, TrustSetupError> {
        let cert = read_file(&files.cert, "--tls-cert")?;
        let key = read_file(&files.key, "--tls-key")?;
        let ca = read_file(&files.ca, "--tls-ca")?;
        let leaf = pem_certificates(&cert, "--tls-cert", &files.cert)?;
        pem_certificates(&ca, "--tls-ca", &files.ca)?;
        if !String::from_utf8_lossy(&key).contains("PRIVATE KEY-----") {
            return Err(TrustSetupError::NoPrivateKey(files.key.clone()));
        }
        let subject = subject(&leaf[0]).map_err(TrustSetupError::Certificate)?;
        if node_id_of(&subject) != Some(node_id) {
            return Err(TrustSetupError::NotThisNode {
                path: files.cert.clone(),
                cn: subject.cn.unwrap_or_else(|| "(none)".to_string()),
                node: node_id,
            });
        }
        Ok(TlsMaterial {
            identity: Identity::from_pem(&cert, &key),
            ca: Certificate::from_pem(&ca),
            cert_pem: cert,
            key_pem: key,
            ca_pem: ca,
        })
    }
}

/// Verifies client JWTs.
#[derive(Clone)]
pub struct JwtVerifier {
    keys: Vec<JwtKey>,
    issuer: String,
    audience: String,
    roles_claim: String,
    kind_claim: String,
}

#[derive(Clone)]
struct JwtKey {
    kid: Option<String>,
    key: DecodingKey,
    algorithms: Vec<Algorithm>,
}

const RSA_ALGORITHMS: [Algorithm; 6] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("keys", &self.keys.len())
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

impl JwtVerifier {
    pub fn load(settings: &JwtSettings) -> Result<JwtVerifier, TrustSetupError> {
        let bytes = read_file(&settings.keys, "--jwt-keys")?;
        let keys = parse_keys(&bytes).map_err(|source| TrustSetupError::JwtKeys {
            path: settings.keys.clone(),
            source,
        })?;
        Ok(JwtVerifier {
            keys,
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
            roles_claim: settings.roles_claim.clone(),
            kind_claim: settings.kind_claim.clone(),
        })
    }

    /// The actor a token names, or why it is refused.
    pub fn verify(&self, token: &str) -> Result<Actor, TokenError> {
        let header = decode_header(token).map_err(|e| TokenError::NotJwt(e.to_string()))?;
        let candidates: Vec<&JwtKey> = self
            .keys
            .iter()
            .filter(|k| k.algorithms.contains(&header.alg))
            .filter(|k| match (&header.kid, &k.kid) {
                (Some(want), Some(have)) => want == have,
                _ => true,
            })
            .collect();
        if candidates.is_empty() {
            return Err(TokenError::NoKey {
                algorithm: format!("{:?}", header.alg),
                kid: header.kid.clone(),
            });
        }
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = JWT_LEEWAY_SECS;
        let mut last = None;
        for candidate in candidates {
            match decode::<serde_json::Map<String, serde_json::Value>>(
                token,
                &candidate.key,
                &validation,
            ) {
                Ok(data) => return self.actor(data.claims),
                Err(e) => last = Some(e),
            }
        }
        Err(describe_jwt_error(last.expect("at least one candidate")))
    }

    fn actor(
        &self,
        claims: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Actor, TokenError> {
        let sub = claims
            .get("sub")
            .and_then(|s| s.as_str())
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or(TokenError::NoSubject)?;
        if sub.starts_with("system:") {
            return Err(TokenError::SystemActor);
        }
        let roles = match claims.get(&self.roles_claim) {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::String(s)) => s
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|r| !r.is_empty())
                .map(str::to_string)
                .collect(),
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .map(|i| {
                    i.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| TokenError::RoleNotAString(self.roles_claim.clone()))
                })
                .collect::<Result<_, _>>()?,
            Some(_) => {
                return Err(TokenError::RolesNotAList(self.roles_claim.clone()));
            }
        };
        let kind = match claims.get(&self.kind_claim) {
            None | Some(serde_json::Value::Null) => ActorKind::Human,
            Some(v) => v
                .as_str()
                .and_then(parse_kind)
                .ok_or_else(|| TokenError::UnknownKind {
                    claim: self.kind_claim.clone(),
                    value: v.to_string(),
                })?,
        };
        Ok(Actor {
            id: sub.to_string(),
            kind,
            roles,
            claims: claims.into_iter().collect(),
            authn: "jwt".into(),
        })
    }
}

fn describe_jwt_error(e: jsonwebtoken::errors::Error) -> TokenError {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidSignature => TokenError::BadSignature,
        ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
        ErrorKind::InvalidAudience => TokenError::WrongAudience,
        ErrorKind::MissingRequiredClaim(c) => TokenError::MissingClaim(c.clone()),
        ErrorKind::InvalidAlgorithm => TokenError::WrongAlgorithm,
        other => TokenError::Invalid(format!("{other:?}")),
    }
}

/// Public keys from PEM blocks or a JWKS document.
fn parse_keys(bytes: &[u8]) -> Result<Vec<JwtKey>, KeysError> {
    let text = String::from_utf8_lossy(bytes);
    let mut keys = Vec::new();
    if text.trim_start().starts_with('{') {
        let set: JwkSet =
            serde_json::from_str(&text).map_err(|e| KeysError::NotJwks(e.to_string()))?;
        for jwk in &set.keys {
            let algorithms = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => RSA_ALGORITHMS.to_vec(),
                AlgorithmParameters::EllipticCurve(p) => match p.curve {
                    EllipticCurve::P256 => vec![Algorithm::ES256],
                    EllipticCurve::P384 => vec![Algorithm::ES384],
                    _ => return Err(KeysError::UnsupportedCurve(format!("{:?}", p.curve))),
                },
                AlgorithmParameters::OctetKeyPair(_) => vec![Algorithm::EdDSA],
                AlgorithmParameters::OctetKey(_) => return Err(KeysError::SymmetricKey),
            };
            keys.push(JwtKey {
                kid: jwk.common.key_id.clone(),
                key: DecodingKey::from_jwk(jwk).map_err(|e| KeysError::BadJwk(e.to_string()))?,
                algorithms,
            });
        }
    } else {
        for block in pem_blocks(&text) {
            let pem = block.as_bytes();
            let (key, algorithms) = if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
                (k, RSA_ALGORITHMS.to_vec())
            } else if let Ok(k) = DecodingKey::from_ec_pem(pem) {
                (k, vec![Algorithm::ES256, Algorithm::ES384])
            } else if let Ok(k) = DecodingKey::from_ed_pem(pem) {
                (k, vec![Algorithm::EdDSA])
            } else {
                return Err(KeysError::NotAPublicKey(
                    block.lines().next().unwrap_or_default().to_string(),
                ));
            };
            keys.push(JwtKey {
                kid: None,
                key,
                algorithms,
            });
        }
    }
    if keys.is_empty() {
        return Err(KeysError::NoKeys);
    }
    Ok(keys)
}

/// The `-----BEGIN …-----` … `-----END …-----` blocks of a PEM text.
fn pem_blocks(text: &str) -> Vec<&str> {
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let from = &rest[start..];
        let Some(end) = from.find("-----END ") else {
            break;
        };
        let after_end = &from[end + "-----END ".len()..];
        let Some(close) = after_end.find("-----") else {
            break;
        };
        let len = end + "-----END ".len() + close + "-----".len();
        blocks.push(&from[..len]);
        rest = &from[len..];
    }
    blocks
}

/// A node's trust settings, loaded and checked at start-up.
pub struct Trust {
    pub dev: bool,
    tls: Option<TlsMaterial>,
    jwt: Option<JwtVerifier>,
    pub policy: PolicySource,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trust")
            .field("dev", &self.dev)
            .field("tls", &self.tls.is_some())
            .field("jwt", &self.jwt)
            .finish()
    }
}

impl Trust {
    pub fn load(config: &Config) -> Result<Trust, TrustSetupError> {
        let tls = match &config.tls {
            Some(files) => Some(TlsMaterial::load(files, config.id)?),
            None => None,
        };
        let jwt = match &config.jwt {
            Some(settings) => Some(JwtVerifier::load(settings)?),
            None => None,
        };
        Ok(Trust {
            dev: config.dev,
            tls,
            jwt,
            policy: PolicySource::load(config.policy.as_deref(), config.dev)?,
        })
    }

    /// The server side of the node's port: its certificate, and client certificates from the
    /// CA verified when presented (optional, so JWT clients need none). HTTP/2 only.
    pub fn tls_acceptor(&self) -> Result<Option<tokio_rustls::TlsAcceptor>, TrustSetupError> {
        self.tls_acceptor_for(&[b"h2"])
    }

    /// [`Trust::tls_acceptor`] offering the `alpn` protocols (the console speaks HTTP/1.1).
    pub fn tls_acceptor_for(
        &self,
        alpn: &[&[u8]],
    ) -> Result<Option<tokio_rustls::TlsAcceptor>, TrustSetupError> {
        use tokio_rustls::rustls;
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let Some(t) = &self.tls else {
            return Ok(None);
        };
        let certs = |pem: &[u8], what: &'static str| {
            CertificateDer::pem_slice_iter(pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| unusable(what, e))
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for ca in certs(&t.ca_pem, "--tls-ca")? {
            roots
                .add(ca)
                .map_err(|e| unusable("--tls-ca holds an unusable CA certificate", e))?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::clone(&provider),
        )
        .allow_unauthenticated()
        .build()
        .map_err(|e| unusable("--tls-ca", e))?;
        let key =
            PrivateKeyDer::from_pem_slice(&t.key_pem).map_err(|e| unusable("--tls-key", e))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| unusable("TLS protocol versions", e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs(&t.cert_pem, "--tls-cert")?, key)
            .map_err(|e| unusable("--tls-cert / --tls-key do not form a usable pair", e))?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))))
    }

    /// How this node dials its peers: the CA as the only root, its own certificate as client
    /// identity.
    pub fn client_tls(&self) -> Option<ClientTlsConfig> {
        self.tls.as_ref().map(|t| {
            ClientTlsConfig::new()
                .ca_certificate(t.ca.clone())
                .identity(t.identity.clone())
        })
    }

    /// The caller of a public call: `Ok(None)` only in development mode without an actor
    /// header. The error is the status to answer with.
    pub fn authenticate(
        &self,
        headers: &http::HeaderMap,
        peer_certs: Option<&[tonic::transport::CertificateDer<'static>]>,
    ) -> Result<Option<Actor>, Status> {
        if self.dev {
            return dev_actor(headers);
        }
        if let Some(value) = headers.get(http::header::AUTHORIZATION) {
            if value.len() > AUTHORIZATION_BYTES_MAX {
                return Err(Status::unauthenticated(format!(
                    "the authorization header is longer than {AUTHORIZATION_BYTES_MAX} bytes"
                )));
            }
            let text = value.to_str().unwrap_or_default().trim();
            let token = text
                .split_once(' ')
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, t)| t.trim())
                .ok_or_else(|| {
                    Status::unauthenticated("the authorization header is not `Bearer <JWT>`")
                })?;
            let Some(jwt) = &self.jwt else {
                return Err(Status::unauthenticated(
                    "this cluster accepts no bearer tokens (no --jwt-keys): connect with a client certificate from the cluster CA instead",
                ));
            };
            return jwt
                .verify(token)
                .map(Some)
                .map_err(|e| Status::unauthenticated(e.to_string()));
        }
        if let Some(first) = peer_certs.and_then(|c| c.first()) {
            let subject =
                subject(first.as_ref()).map_err(|e| Status::unauthenticated(e.to_string()))?;
            return certificate_actor(&subject)
                .map(Some)
                .map_err(|e| Status::unauthenticated(e.to_string()));
        }
        Err(Status::unauthenticated(HOW_TO_AUTHENTICATE))
    }

    /// Authenticates and authorizes one public call; every refusal goes to the security log.
    /// The console calls it too, with the gRPC method a page stands for.
    pub(crate) fn admit(
        &self,
        security: &SecurityLog,
        method: &str,
        headers: &http::HeaderMap,
        peer_certs: Option<&[tonic::transport::CertificateDer<'static>]>,
        remote: &str,
    ) -> Result<Option<Actor>, Status> {
        let actor = self.authenticate_logged(security, method, headers, peer_certs, remote)?;
        self.authorize(security, method, actor.as_ref(), remote)?;
        Ok(actor)
    }

    /// [`Trust::authenticate`], a refusal recorded in the security log under `method`.
    pub(crate) fn authenticate_logged(
        &self,
        security: &SecurityLog,
        method: &str,
        headers: &http::HeaderMap,
        peer_certs: Option<&[tonic::transport::CertificateDer<'static>]>,
        remote: &str,
    ) -> Result<Option<Actor>, Status> {
        self.authenticate(headers, peer_certs)
            .inspect_err(|status| {
                security.record(
                    RefusalKind::Authentication,
                    method,
                    "",
                    remote,
                    code_name(status.code()),
                    status.message(),
                );
            })
    }

    /// The cluster policy's permission for `method`, for an authenticated caller; a refusal
    /// is recorded in the security log. (A page of the console authenticates once and is
    /// authorized for each call it makes.)
    pub(crate) fn authorize(
        &self,
        security: &SecurityLog,
        method: &str,
        actor: Option<&Actor>,
        remote: &str,
    ) -> Result<(), Status> {
        let Some(permission) = Permission::for_method(method) else {
            return Ok(());
        };
        let policy = self.policy.current();
        let checked = match actor {
            Some(a) => policy.check(a, permission).map_err(|d| d.to_string()),
            None if policy.allow_all => Ok(()),
            None => Err(format!(
                "{} needs an actor with the permission {}: name one with the x-lockstep-actor header",
                method,
                permission.as_str()
            )),
        };
        checked.map_err(|reason| {
            let status = Status::permission_denied(reason);
            security.record(
                RefusalKind::Authorization,
                method,
                actor.map(|a| a.id.as_str()).unwrap_or_default(),
                remote,
                "PERMISSION_DENIED",
                status.message(),
            );
            status
        })
    }
}

/// The name of a gRPC code as in the security log (`UNAUTHENTICATED`, …).
fn code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::Unauthenticated => "UNAUTHENTICATED",
        tonic::Code::PermissionDenied => "PERMISSION_DENIED",
        tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
        _ => "REFUSED",
    }
}

/// Development mode: the actor the headers name, if any.
fn dev_actor(headers: &http::HeaderMap) -> Result<Option<Actor>, Status> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let Some(id) = header(names::ACTOR_HEADER) else {
        return Ok(None);
    };
    let kind_text = header(names::ACTOR_KIND_HEADER).unwrap_or("human");
    let kind = parse_kind(kind_text).ok_or_else(|| {
        crate::status::bad_request(format!(
            "x-lockstep-actor-kind `{kind_text}` is not human, service or worker"
        ))
    })?;
    if id.starts_with("system:") {
        return Err(Status::permission_denied(
            "actor ids starting with `system:` belong to the engine",
        ));
    }
    let roles = header(names::ROLES_HEADER)
        .map(|r| {
            r.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default();
    Ok(Some(Actor {
        id: id.to_string(),
        kind,
        roles,
        claims: Default::default(),
        authn: "dev-header".into(),
    }))
}

/// The certificate chain a TLS peer presented, if any.
pub type PeerCerts = Option<Arc<Vec<tonic::transport::CertificateDer<'static>>>>;

/// The peer certificates and address of a call's connection.
pub fn connection_of<B>(request: &http::Request<B>) -> (PeerCerts, String) {
    let ext = request.extensions();
    if let Some(tls) = ext.get::<TlsConnectInfo<TcpConnectInfo>>() {
        let remote = tls
            .get_ref()
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        return (tls.peer_certs(), remote);
    }
    let remote = ext
        .get::<TcpConnectInfo>()
        .and_then(|i| i.remote_addr())
        .map(|a| a.to_string())
        .unwrap_or_default();
    (None, remote)
}

/// Authenticates every call to the public services (`/lockstep.v1.*`, not the internal Raft
/// service, health or reflection), applies the cluster policy by method, and hands the actor
/// to the handlers as [`Authenticated`].
#[derive(Clone, Debug)]
pub struct AuthLayer {
    trust: Arc<Trust>,
    security: Arc<SecurityLog>,
}

impl AuthLayer {
    /// Admits calls with `trust` (credentials and the cluster policy) and records every
    /// refusal in `security`.
    pub fn new(trust: Arc<Trust>, security: Arc<SecurityLog>) -> AuthLayer {
        AuthLayer { trust, security }
    }
}

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            trust: Arc::clone(&self.trust),
            security: Arc::clone(&self.security),
        }
    }
}

#[derive(Clone, Debug)]
pub struct AuthService<S> {
    inner: S,
    trust: Arc<Trust>,
    security: Arc<SecurityLog>,
}

impl<S, ReqBody> tower_service::Service<http::Request<ReqBody>> for AuthService<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let method = request.uri().path().to_string();
        if !method.starts_with("/lockstep.v1.") || method.starts_with("/lockstep.v1.internal.") {
            return Either::Left(self.inner.call(request));
        }
        let (certs, remote) = connection_of(&request);
        match self.trust.admit(
            &self.security,
            &method,
            request.headers(),
            certs.as_deref().map(Vec::as_slice),
            &remote,
        ) {
            Ok(actor) => {
                if let Some(actor) = actor {
                    request.extensions_mut().insert(Authenticated(actor));
                }
                Either::Left(self.inner.call(request))
            }
            Err(status) => Either::Right(ready(Ok(status.into_http()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier(public_pem: &str) -> (tempfile::TempDir, JwtVerifier) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.pem");
        std::fs::write(&path, public_pem).unwrap();
        let v = JwtVerifier::load(&JwtSettings {
            keys: path,
            issuer: "https://issuer.test".into(),
            audience: "lockstep".into(),
            roles_claim: "roles".into(),
            kind_claim: "lockstep_kind".into(),
        })
        .unwrap();
        (dir, v)
    }

    fn now() -> i64 {
        jiff::Timestamp::now().as_second()
    }

    fn token(key: &rcgen::KeyPair, claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::ES256),
            &claims,
            &jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap(),
        )
        .unwrap()
    }

    fn claims(sub: &str, exp_in: i64) -> serde_json::Value {
        serde_json::json!({
            "sub": sub, "iss": "https://issuer.test", "aud": "lockstep",
            "exp": now() + exp_in, "roles": ["approver"], "lockstep_kind": "worker",
        })
    }

    #[test]
    fn a_good_token_names_the_actor() {
        let key = rcgen::KeyPair::generate().unwrap();
        let (_dir, v) = verifier(&key.public_key_pem());
        let actor = v.verify(&token(&key, claims("bob", 600))).unwrap();
        assert_eq!(actor.id, "bob");
        assert_eq!(actor.roles, vec!["approver".to_string()]);
        assert_eq!(actor.kind, ActorKind::Worker);
        assert_eq!(actor.authn, "jwt");
        assert_eq!(actor.claims["iss"], "https://issuer.test");
    }

    #[test]
    fn bad_tokens_are_refused_with_the_reason() {
        let key = rcgen::KeyPair::generate().unwrap();
        let other = rcgen::KeyPair::generate().unwrap();
        let (_dir, v) = verifier(&key.public_key_pem());
        let expired = v
            .verify(&token(&key, claims("bob", -120)))
            .unwrap_err()
            .to_string();
        assert!(expired.contains("expired"), "{expired}");
        let forged = v
            .verify(&token(&other, claims("bob", 600)))
            .unwrap_err()
            .to_string();
        assert!(forged.contains("signature"), "{forged}");
        let mut c = claims("bob", 600);
        c["aud"] = "elsewhere".into();
        assert!(
            v.verify(&token(&key, c))
                .unwrap_err()
                .to_string()
                .contains("audience")
        );
        let mut c = claims("bob", 600);
        c["iss"] = "https://evil.test".into();
        assert!(
            v.verify(&token(&key, c))
                .unwrap_err()
                .to_string()
                .contains("issuer")
        );
        let mut c = claims("bob", 600);
        c["nbf"] = (now() + 3600).into();
        assert!(
            v.verify(&token(&key, c))
                .unwrap_err()
                .to_string()
                .contains("not valid yet")
        );
        let mut c = claims("system:timer", 600);
        c["roles"] = "a b".into();
        assert!(
            v.verify(&token(&key, c))
                .unwrap_err()
                .to_string()
                .contains("system:")
        );
        let mut c = claims("bob", 600);
        c["lockstep_kind"] = "system".into();
        assert!(
            v.verify(&token(&key, c))
                .unwrap_err()
                .to_string()
                .contains("lockstep_kind")
        );
        let mut c = claims("bob", 600);
        c.as_object_mut().unwrap().remove("exp");
        assert!(
            v.verify(&token(&key, c))
                .unwrap_err()
                .to_string()
                .contains("exp")
        );
        assert!(
            v.verify("not-a-token")
                .unwrap_err()
                .to_string()
                .contains("not a JWT")
        );
    }

    #[test]
    fn certificate_subjects_name_actors_and_nodes() {
        let subject = |cn: &str, ous: &[&str]| CertSubject {
            cn: Some(cn.into()),
            ous: ous.iter().map(|s| s.to_string()).collect(),
            uris: vec!["lockstep:role:x".into(), "https://elsewhere.example".into()],
        };
        let a = certificate_actor(&subject("carol", &["kind:service", "role:approver"])).unwrap();
        assert_eq!(a.id, "carol");
        assert_eq!(a.kind, ActorKind::Service);
        assert_eq!(a.roles, vec!["approver".to_string(), "x".to_string()]);
        assert_eq!(a.authn, "mtls");
        assert!(certificate_actor(&subject("node-2", &[])).is_err());
        assert!(certificate_actor(&subject("d", &["kind:system"])).is_err());
        assert_eq!(node_id_of(&subject("node-2", &[])), Some(2));
        assert_eq!(node_id_of(&subject("node-0", &[])), None);
        assert_eq!(node_id_of(&subject("node-x", &[])), None);
        // Read from a real certificate.
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params
            .subject_alt_names
            .push(rcgen::SanType::URI("lockstep:role:r2".try_into().unwrap()));
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "node-7");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationalUnitName, "role:r");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let s = super::subject(cert.der()).unwrap();
        assert_eq!(node_id_of(&s), Some(7));
        assert_eq!(s.ous, vec!["role:r".to_string()]);
        assert_eq!(s.uris, vec!["lockstep:role:r2".to_string()]);
        let named = CertSubject {
            cn: Some("ann".into()),
            ..s
        };
        assert_eq!(
            certificate_actor(&named).unwrap().roles,
            vec!["r".to_string(), "r2".to_string()]
        );
    }

    #[test]
    fn jwks_documents_are_read() {
        let jwks = r#"{"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1",
            "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
            "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;
        let keys = parse_keys(jwks.as_bytes()).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("k1"));
        assert_eq!(keys[0].algorithms, vec![Algorithm::ES256]);
        assert!(parse_keys(br#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#).is_err());
        assert!(parse_keys(b"").is_err());
    }
}
