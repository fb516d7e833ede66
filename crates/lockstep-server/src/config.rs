//! Node configuration. Flags win, then environment variables (`LOCKSTEP_*`), then the TOML
//! file given with `--config`, then defaults. Every bad value is refused at start-up with a
//! message that names it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Parser;
use lockstep_core::duration::DurationError;
use serde::{Deserialize, Serialize};

use crate::settings::SettingError;

/// lockstepd: a node of a Lockstep cluster.
///
/// Every node runs the Raft state machine on its own RocksDB and serves the public gRPC API;
/// writes sent to a follower are forwarded to the leader. Start three (or five) nodes with the
/// same --initial-members; the node with the lowest id bootstraps the cluster on its first
/// start only.
///
/// Without --dev a node is secure: TLS on its one gRPC port (--tls-cert, --tls-key, --tls-ca),
/// peers authenticated by certificates from the cluster CA whose CN is `node-<id>`, clients by
/// a bearer JWT (--jwt-keys, --jwt-issuer, --jwt-audience) or a client certificate from the CA,
/// and a cluster policy (--policy) for definitions, audit, membership and incidents.
/// `lockstep certs` makes a CA and certificates.
///
/// Example (node 1 of 3, secure):
///   lockstepd --id 1 --data-dir /var/lib/lockstep --listen 0.0.0.0:7101 \
///     --advertise n1.example:7101 \
///     --initial-members 1=n1.example:7101,2=n2.example:7101,3=n3.example:7101 \
///     --tls-cert certs/node-1.pem --tls-key certs/node-1-key.pem --tls-ca certs/ca.pem \
///     --jwt-keys issuer.pem --jwt-issuer https://idp.example --jwt-audience lockstep
///
/// Example (node 1 of 3, development mode on loopback):
///   lockstepd --id 1 --data-dir data/n1 --listen 127.0.0.1:7101 \
///     --initial-members 1=127.0.0.1:7101,2=127.0.0.1:7102,3=127.0.0.1:7103 --dev
///
/// Offline tools (each with --help): `lockstepd backup` checkpoints a stopped node's store,
/// `lockstepd restore` turns a checkpoint into a new one-node cluster, `lockstepd inspect`
/// describes a checkpoint. A running node is backed up with `lockstep cluster backup`.
/// The data directory's folder of Raft snapshot files.
pub const SNAPSHOTS_DIR: &str = "snapshots";

#[derive(Debug, Parser)]
#[command(name = "lockstepd", version)]
pub struct Flags {
    /// A TOML file with any of the settings below (keys as the long flag names, with `_`).
    #[arg(long, env = "LOCKSTEP_CONFIG")]
    pub config: Option<PathBuf>,
    /// This node's id (a positive integer, unique in the cluster).
    #[arg(long, env = "LOCKSTEP_ID")]
    pub id: Option<u64>,
    /// Where this node keeps its RocksDB database.
    #[arg(long, env = "LOCKSTEP_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The address the gRPC server binds (public API and Raft service).
    #[arg(long, env = "LOCKSTEP_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// The address other nodes and clients use to reach this node (defaults to --listen).
    #[arg(long, env = "LOCKSTEP_ADVERTISE")]
    pub advertise: Option<String>,
    /// The cluster's first members as id=host:port pairs, comma separated. Used only to
    /// bootstrap a new cluster; later changes go through `lockstep cluster add/promote/remove`.
    #[arg(long, env = "LOCKSTEP_INITIAL_MEMBERS")]
    pub initial_members: Option<String>,
    /// Raft heartbeat interval in milliseconds.
    #[arg(long, env = "LOCKSTEP_HEARTBEAT_MS")]
    pub heartbeat_ms: Option<u64>,
    /// Lower bound of the election timeout in milliseconds (the upper bound is twice this).
    #[arg(long, env = "LOCKSTEP_ELECTION_TIMEOUT_MS")]
    pub election_timeout_ms: Option<u64>,
    /// Build a snapshot once this many MiB of log were written since the last one (default
    /// 64). A snapshot is a checkpoint of the store: it costs what changed since the last one,
    /// and lets the log be purged behind it.
    #[arg(long, env = "LOCKSTEP_SNAPSHOT_LOG_MIB", value_name = "MIB")]
    pub snapshot_log_mib: Option<u64>,
    /// Also build a snapshot when this long has passed since the last one and entries were
    /// applied since (default 1h; e.g. 30m, 6h).
    #[arg(long, env = "LOCKSTEP_SNAPSHOT_INTERVAL", value_name = "DURATION")]
    pub snapshot_interval: Option<String>,
    /// Also build a snapshot after this many applied entries since the last one (off by
    /// default: the log size and the interval decide; tests set it to exercise snapshots).
    #[arg(long, env = "LOCKSTEP_SNAPSHOT_EVERY", value_name = "ENTRIES")]
    pub snapshot_every: Option<u64>,
    /// Admission control: the adaptive limit on client writes this node has admitted and not
    /// yet answered never goes below this (default 32). Writes beyond the limit are refused at
    /// once with RESOURCE_EXHAUSTED / OVERLOADED and a retry-after hint.
    #[arg(long, env = "LOCKSTEP_ADMISSION_LIMIT_MIN", value_name = "WRITES")]
    pub admission_limit_min: Option<usize>,
    /// Admission control: the adaptive limit never goes above this (default 256); it starts
    /// halfway between the bounds and follows commit latency. Set both bounds equal for a
    /// fixed limit.
    #[arg(long, env = "LOCKSTEP_ADMISSION_LIMIT_MAX", value_name = "WRITES")]
    pub admission_limit_max: Option<usize>,
    /// Most linearizable reads waiting for a read index on this node at once (default 4096);
    /// more are refused with RESOURCE_EXHAUSTED / OVERLOADED (stale reads are not bounded).
    #[arg(long, env = "LOCKSTEP_READS_IN_FLIGHT_MAX", value_name = "READS")]
    pub reads_in_flight_max: Option<usize>,
    /// The clock offset guard: this node campaigns, leads and stamps cluster time only while
    /// the wall clocks of a quorum of voters (itself included) are within this of its own
    /// (default 500ms; e.g. 250ms, 2s). Offsets are measured over the internal service every
    /// 500ms and exported as lockstep_clock_offset_seconds; a peer past half of it is warned of.
    /// `off` measures and warns without holding the node back (for clusters whose clocks
    /// cannot be kept close; cluster time then freezes after a fast leader, see README).
    #[arg(long, env = "LOCKSTEP_MAX_CLOCK_OFFSET", value_name = "DURATION|off")]
    pub max_clock_offset: Option<String>,
    /// The space alarm: with less than this free on the data directory's file system, refuse
    /// new client writes (RESOURCE_EXHAUSTED, reason NO_SPACE) before the disk is full, while
    /// reads, timers and membership go on; checked every second, cleared by itself when space
    /// returns (default 256MiB; e.g. 2GiB, 10GiB, off).
    #[arg(long, env = "LOCKSTEP_MIN_FREE_SPACE", value_name = "SIZE|off")]
    pub min_free_space: Option<String>,
    /// The space alarm's other bound: refuse new client writes while the store holds more than
    /// this (default 64GiB; e.g. 8GiB, off).
    #[arg(long, env = "LOCKSTEP_STORE_QUOTA", value_name = "SIZE|off")]
    pub store_quota: Option<String>,
    /// The background scrub: read the whole store back with block checksums verified once at
    /// start and then this often, so that corruption is found before a read needs the block
    /// (default 1d; at least 1m; e.g. 12h, 7d, off). A corrupt block stops the node until it
    /// is re-seeded (deploy/README.md, "A node whose store is corrupt").
    #[arg(long, env = "LOCKSTEP_SCRUB_EVERY", value_name = "DURATION|off")]
    pub scrub_every: Option<String>,
    /// The scrub reads at most this many bytes a second, so that it never crowds out the
    /// write path (default 32MiB; e.g. 8MiB, off for no bound).
    #[arg(long, env = "LOCKSTEP_SCRUB_RATE", value_name = "SIZE|off")]
    pub scrub_rate: Option<String>,
    /// Keep this many applied entries in the log after a snapshot (so slow followers can catch
    /// up by log rather than snapshot).
    #[arg(long, env = "LOCKSTEP_LOGS_TO_KEEP")]
    pub logs_to_keep: Option<u64>,
    /// Development mode: no TLS, and callers name themselves with the `x-lockstep-actor`
    /// header. Refused unless --listen is a loopback address, and with any --tls-* or --jwt-*
    /// setting. Without --policy, every caller may apply, read audit and change membership.
    #[arg(long, env = "LOCKSTEP_DEV")]
    pub dev: bool,
    /// PEM certificate (chain) of this node, issued by the cluster CA with CN `node-<id>` and
    /// the names peers and clients dial as subject alternative names. Served on --listen and
    /// presented as client certificate to peers. Required without --dev.
    #[arg(long, env = "LOCKSTEP_TLS_CERT", value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert. Required without --dev.
    #[arg(long, env = "LOCKSTEP_TLS_KEY", value_name = "PEM")]
    pub tls_key: Option<PathBuf>,
    /// PEM certificate of the cluster CA: peers must present a certificate it issued, and
    /// clients may (mTLS client authentication; optional at the TLS layer so that JWT clients
    /// need none). Required without --dev.
    #[arg(long, env = "LOCKSTEP_TLS_CA", value_name = "PEM")]
    pub tls_ca: Option<PathBuf>,
    /// Public keys that sign client JWTs: a PEM file (one or more RSA, EC or Ed25519 public
    /// keys) or a JWKS JSON file. Without it, clients authenticate only with certificates.
    #[arg(long, env = "LOCKSTEP_JWT_KEYS", value_name = "FILE")]
    pub jwt_keys: Option<PathBuf>,
    /// The `iss` every JWT must carry (required with --jwt-keys).
    #[arg(long, env = "LOCKSTEP_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// The `aud` every JWT must include (required with --jwt-keys).
    #[arg(long, env = "LOCKSTEP_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// The JWT claim holding the actor's roles (an array of strings, or one string of roles
    /// separated by spaces or commas). Default: roles.
    #[arg(long, env = "LOCKSTEP_JWT_ROLES_CLAIM")]
    pub jwt_roles_claim: Option<String>,
    /// The JWT claim holding the actor's kind (human, service or worker; absent: human).
    /// Default: lockstep_kind.
    #[arg(long, env = "LOCKSTEP_JWT_KIND_CLAIM")]
    pub jwt_kind_claim: Option<String>,
    /// The cluster policy (TOML): which actors and roles may apply definitions, read audit,
    /// change membership and resolve incidents. Re-read when the file changes (checked at
    /// most once a second) and at once on SIGHUP. Without it: role admin applies and changes membership, admin or
    /// auditor reads audit, operator resolves incidents.
    #[arg(long, env = "LOCKSTEP_POLICY", value_name = "TOML")]
    pub policy: Option<PathBuf>,
    /// Webhook settings (TOML, read at start): `allow` (the networks, addresses, host names
    /// and *.domains this node may deliver to, checked on the address it connects to),
    /// `[secrets]` (signing secrets by name, `whsec_<base64>`; two values during a rotation,
    /// and both signatures are sent), `ca` (a PEM CA for HTTPS targets, beside the system
    /// roots), `timeout` (10s), `attempts` (12 failed in a row pause a subscription),
    /// `backoff_max` (1m), `lag_max` (1000000 records). Without it nothing is delivered.
    /// Keep it readable by lockstepd alone: it holds the secrets.
    #[arg(long, env = "LOCKSTEP_WEBHOOKS", value_name = "TOML")]
    pub webhooks: Option<PathBuf>,
    /// Export OpenTelemetry traces over OTLP/gRPC to this collector, e.g.
    /// http://127.0.0.1:4317. A W3C traceparent in a call's metadata is continued (spans
    /// `grpc`, `propose`, `webhook.deliver`). Off unless set.
    #[arg(long, env = "LOCKSTEP_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// Dial peer ID at ADDR instead of its member address, for Raft and for forwarding to the
    /// leader (clients still use member addresses): id=host:port pairs, comma separated. For
    /// fault-injection proxies (chaos-tests/); not for production.
    #[arg(long, env = "LOCKSTEP_PEER_VIA", value_name = "ID=ADDR,...")]
    pub peer_via: Option<String>,
    /// Log format: text or json.
    #[arg(long, env = "LOCKSTEP_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Serve Prometheus metrics over HTTP at http://ADDR/metrics (text format 0.0.4). Off
    /// unless set; e.g. 127.0.0.1:9101. Must differ from --listen.
    #[arg(long, env = "LOCKSTEP_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Serve the web console at http://ADDR/ (https:// on a secure node, with the node's
    /// certificate). Off unless set; e.g. 127.0.0.1:7180. Must differ from --listen and
    /// --metrics-listen. Development nodes serve it on loopback only.
    #[arg(long, env = "LOCKSTEP_CONSOLE_LISTEN", value_name = "ADDR")]
    pub console_listen: Option<SocketAddr>,
}

/// Why a node cannot start with its settings or its data directory: which setting (or file)
/// is wrong, what was given, and what to write instead.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", .path.display())]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {}: {source}", .path.display())]
    FileSyntax {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("no node id: pass --id N (or LOCKSTEP_ID, or `id = N` in the config file)")]
    NoId,
    #[error("--id must be a positive integer; 0 is reserved")]
    ZeroId,
    #[error("no data directory: pass --data-dir PATH")]
    NoDataDir,
    #[error(transparent)]
    Members(#[from] MembersError),
    #[error(
        "--initial-members ({members}) does not include this node's id {id}; every node lists the same initial members, itself included"
    )]
    NotAMember { members: String, id: u64 },
    #[error("--peer-via: {0}")]
    PeerVia(MembersError),
    #[error(
        "--election-timeout-ms ({election_timeout_ms}) must be more than twice --heartbeat-ms ({heartbeat_ms}), and both positive"
    )]
    ElectionTimeout {
        election_timeout_ms: u64,
        heartbeat_ms: u64,
    },
    #[error(
        "--dev (no TLS, header-asserted actors) is refused on {listen}: development mode binds only to loopback addresses such as 127.0.0.1"
    )]
    DevNotLoopback { listen: SocketAddr },
    #[error(
        "--otlp-endpoint `{url}` is not an http:// or https:// URL; write the collector's OTLP/gRPC address, e.g. http://127.0.0.1:4317"
    )]
    OtlpEndpoint { url: String },
    #[error("--log-format `{value}` is not text or json")]
    LogFormat { value: String },
    #[error(
        "--dev runs without TLS and with header-named actors, so {names} cannot apply: drop --dev for a secure node, or drop {names}",
        names = .given.join(", ")
    )]
    DevWithSecurity { given: Vec<&'static str> },
    #[error(
        "a node without --dev serves TLS and authenticates peers and clients, but {names} {verb} missing: pass the node's certificate and key and the cluster CA as PEM files (`lockstep certs` makes them), or --dev for a plaintext loopback development node",
        names = .missing.join(", "),
        verb = if .missing.len() == 1 { "is" } else { "are" }
    )]
    TlsMissing { missing: Vec<&'static str> },
    #[error(
        "JWT authentication needs --jwt-keys, --jwt-issuer and --jwt-audience together; missing {}",
        .missing.join(", ")
    )]
    JwtIncomplete { missing: Vec<&'static str> },
    #[error(
        "--metrics-listen ({listen}) is the gRPC --listen address; give metrics their own port"
    )]
    MetricsOnListen { listen: SocketAddr },
    #[error(
        "--console-listen ({console}) is already the {other} address; give the console its own port"
    )]
    ConsoleSharesPort {
        console: SocketAddr,
        other: &'static str,
    },
    #[error(
        "--console-listen {console} is not a loopback address: a development node (--dev, no TLS, actors picked in the browser) serves its console on loopback only, such as 127.0.0.1:7180"
    )]
    DevConsoleNotLoopback { console: SocketAddr },
    #[error(
        "--snapshot-log-mib {mib} is out of range: give between 1 and 1048576 MiB of log between snapshots (default 64)"
    )]
    SnapshotLogMib { mib: u64 },
    #[error("--snapshot-interval `{text}`: {source}")]
    SnapshotInterval { text: String, source: DurationError },
    #[error("--snapshot-interval `{text}` is shorter than 1s; write e.g. 30m or 1h")]
    SnapshotIntervalTooShort { text: String },
    #[error(
        "--snapshot-every 0 would snapshot after every entry; give a positive number of entries, or leave it out"
    )]
    SnapshotEveryZero,
    #[error("{flag} {value} is out of range: give between 1 and {ADMISSION_BOUND_MAX}")]
    AdmissionBound { flag: &'static str, value: usize },
    #[error(
        "--admission-limit-min {min} is above --admission-limit-max {max}: the adaptive limit moves between them, so give a min at most the max (equal for a fixed limit)"
    )]
    AdmissionMinAboveMax { min: usize, max: usize },
    /// A duration, size or range setting (`--max-clock-offset`, `--min-free-space`, ...).
    #[error(transparent)]
    Setting(#[from] SettingError),
    #[error("cannot create data directory {}: {source}", .dir.display())]
    CreateDataDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is damaged ({source}); restore it or use a fresh --data-dir", .path.display())]
    IdentityDamaged {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error(
        "data directory {} belongs to node {found}, not node {mine}; give each node its own --data-dir",
        .dir.display()
    )]
    OtherNode { dir: PathBuf, found: u64, mine: u64 },
    #[error(
        "data directory {} belongs to the cluster bootstrapped with members {found}, not {mine}; use that cluster's settings or a fresh --data-dir",
        .dir.display()
    )]
    OtherCluster {
        dir: PathBuf,
        found: String,
        mine: String,
    },
    #[error(transparent)]
    EncodeIdentity(#[from] toml::ser::Error),
    #[error("cannot write {}: {source}", .path.display())]
    WriteIdentity {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Why a members list (`--initial-members`, `--peer-via`) does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembersError {
    #[error("member `{part}` is not id=host:port")]
    NotAPair { part: String },
    #[error("member `{part}`: `{id}` is not a node id")]
    NotAnId { part: String, id: String },
    #[error("member `{part}`: `{addr}` is not host:port")]
    NotAnAddress { part: String, addr: String },
    #[error("node id {id} appears twice in the members list")]
    Twice { id: u64 },
    #[error(
        "the members list is empty; write e.g. 1=127.0.0.1:7101,2=127.0.0.1:7102,3=127.0.0.1:7103"
    )]
    Empty,
}

/// The settings a TOML file may hold.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    id: Option<u64>,
    data_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    advertise: Option<String>,
    initial_members: Option<String>,
    heartbeat_ms: Option<u64>,
    election_timeout_ms: Option<u64>,
    snapshot_log_mib: Option<u64>,
    snapshot_interval: Option<String>,
    snapshot_every: Option<u64>,
    logs_to_keep: Option<u64>,
    admission_limit_min: Option<usize>,
    admission_limit_max: Option<usize>,
    reads_in_flight_max: Option<usize>,
    max_clock_offset: Option<String>,
    min_free_space: Option<String>,
    store_quota: Option<String>,
    scrub_every: Option<String>,
    scrub_rate: Option<String>,
    dev: Option<bool>,
    log_format: Option<String>,
    peer_via: Option<String>,
    metrics_listen: Option<SocketAddr>,
    console_listen: Option<SocketAddr>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
    jwt_keys: Option<PathBuf>,
    jwt_issuer: Option<String>,
    jwt_audience: Option<String>,
    jwt_roles_claim: Option<String>,
    jwt_kind_claim: Option<String>,
    policy: Option<PathBuf>,
    webhooks: Option<PathBuf>,
    otlp_endpoint: Option<String>,
}

/// The checked configuration of a node.
#[derive(Clone, Debug, Serialize)]
pub struct Config {
    pub id: u64,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub advertise: String,
    pub initial_members: BTreeMap<u64, String>,
    pub heartbeat_ms: u64,
    pub election_timeout_ms: u64,
    /// When this node builds a snapshot (`snapshot_policy.rs`).
    pub snapshots: SnapshotSettings,
    pub logs_to_keep: u64,
    /// Admission control of client writes and linearizable reads (`admission.rs`).
    pub admission: crate::admission::AdmissionSettings,
    /// The clock offset guard (`clock.rs`).
    pub clock: crate::clock::ClockSettings,
    /// The space alarm's bounds (`space.rs`).
    pub space: crate::space::SpaceSettings,
    /// The background scrub's schedule and pace (`scrub.rs`).
    pub scrub: crate::scrub::ScrubSettings,
    pub dev: bool,
    pub log_format: LogFormat,
    /// Addresses to dial peers at instead of their member addresses (`--peer-via`).
    pub peer_via: BTreeMap<u64, String>,
    /// Where `GET /metrics` is served; `None`: no metrics endpoint.
    pub metrics_listen: Option<SocketAddr>,
    /// Where the web console is served; `None`: no console.
    pub console_listen: Option<SocketAddr>,
    /// TLS material; `None` exactly in development mode.
    pub tls: Option<TlsFiles>,
    /// Client JWT verification; `None`: clients authenticate with certificates only.
    pub jwt: Option<JwtSettings>,
    /// The cluster policy file, if any.
    pub policy: Option<PathBuf>,
    /// The webhook settings file (`webhook_http.rs`), if any.
    pub webhooks: Option<PathBuf>,
    /// Where traces go (`telemetry.rs`), if anywhere.
    pub otlp_endpoint: Option<String>,
}

/// When a node builds a snapshot: whichever comes first.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct SnapshotSettings {
    /// Bytes of log written since the last snapshot.
    pub log_bytes: u64,
    /// Time since the last snapshot, when entries were applied since.
    pub interval: std::time::Duration,
    /// Entries applied since the last snapshot (`None`: not counted).
    pub entries: Option<u64>,
}

/// The node's certificate, key and the cluster CA (PEM files).
#[derive(Clone, Debug, Serialize)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// How client JWTs are checked.
#[derive(Clone, Debug, Serialize)]
pub struct JwtSettings {
    pub keys: PathBuf,
    pub issuer: String,
    pub audience: String,
    pub roles_claim: String,
    pub kind_claim: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum LogFormat {
    Text,
    Json,
}

impl Config {
    /// Merges flags (and their environment variables) over the file over defaults.
    pub fn load(flags: Flags) -> Result<Config, ConfigError> {
        let file: FileConfig = match &flags.config {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
                        path: path.clone(),
                        source,
                    })?;
                toml::from_str(&text).map_err(|source| ConfigError::FileSyntax {
                    path: path.clone(),
                    source,
                })?
            }
            None => FileConfig::default(),
        };
        let admission = admission_settings(&flags, &file)?;
        let id = flags.id.or(file.id).ok_or(ConfigError::NoId)?;
        if id == 0 {
            return Err(ConfigError::ZeroId);
        }
        let data_dir = flags
            .data_dir
            .or(file.data_dir)
            .ok_or(ConfigError::NoDataDir)?;
        let listen = flags
            .listen
            .or(file.listen)
            .unwrap_or_else(|| "127.0.0.1:7101".parse().expect("valid default"));
        let advertise = flags
            .advertise
            .or(file.advertise)
            .unwrap_or_else(|| listen.to_string());
        let members_text = flags
            .initial_members
            .or(file.initial_members)
            .unwrap_or_else(|| format!("{id}={advertise}"));
        let initial_members = parse_members(&members_text)?;
        if !initial_members.contains_key(&id) {
            return Err(ConfigError::NotAMember {
                members: members_text,
                id,
            });
        }
        let heartbeat_ms = flags.heartbeat_ms.or(file.heartbeat_ms).unwrap_or(100);
        let election_timeout_ms = flags
            .election_timeout_ms
            .or(file.election_timeout_ms)
            .unwrap_or(600);
        if heartbeat_ms == 0 || election_timeout_ms <= heartbeat_ms * 2 {
            return Err(ConfigError::ElectionTimeout {
                election_timeout_ms,
                heartbeat_ms,
            });
        }
        let dev = flags.dev || file.dev.unwrap_or(false);
        if dev && !listen.ip().is_loopback() {
            return Err(ConfigError::DevNotLoopback { listen });
        }
        let log_format = match flags.log_format.or(file.log_format).as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(ConfigError::LogFormat {
                    value: other.to_string(),
                });
            }
        };
        let tls_cert = flags.tls_cert.or(file.tls_cert);
        let tls_key = flags.tls_key.or(file.tls_key);
        let tls_ca = flags.tls_ca.or(file.tls_ca);
        let jwt_keys = flags.jwt_keys.or(file.jwt_keys);
        let jwt_issuer = flags.jwt_issuer.or(file.jwt_issuer);
        let jwt_audience = flags.jwt_audience.or(file.jwt_audience);
        let jwt_roles_claim = flags.jwt_roles_claim.or(file.jwt_roles_claim);
        let jwt_kind_claim = flags.jwt_kind_claim.or(file.jwt_kind_claim);
        let policy = flags.policy.or(file.policy);
        let webhooks = flags.webhooks.or(file.webhooks);
        let otlp_endpoint = flags.otlp_endpoint.or(file.otlp_endpoint);
        if let Some(url) = &otlp_endpoint
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(ConfigError::OtlpEndpoint { url: url.clone() });
        }
        let tls = if dev {
            let given: Vec<&str> = [
                ("--tls-cert", tls_cert.is_some()),
                ("--tls-key", tls_key.is_some()),
                ("--tls-ca", tls_ca.is_some()),
                ("--jwt-keys", jwt_keys.is_some()),
                ("--jwt-issuer", jwt_issuer.is_some()),
                ("--jwt-audience", jwt_audience.is_some()),
            ]
            .into_iter()
            .filter_map(|(name, set)| set.then_some(name))
            .collect();
            if !given.is_empty() {
                return Err(ConfigError::DevWithSecurity { given });
            }
            None
        } else {
            match (tls_cert, tls_key, tls_ca) {
                (Some(cert), Some(key), Some(ca)) => Some(TlsFiles { cert, key, ca }),
                (cert, key, ca) => {
                    let missing: Vec<&str> = [
                        ("--tls-cert", cert.is_none()),
                        ("--tls-key", key.is_none()),
                        ("--tls-ca", ca.is_none()),
                    ]
                    .into_iter()
                    .filter_map(|(name, gone)| gone.then_some(name))
                    .collect();
                    return Err(ConfigError::TlsMissing { missing });
                }
            }
        };
        let jwt = match (jwt_keys, jwt_issuer, jwt_audience) {
            (None, None, None) => None,
            (Some(keys), Some(issuer), Some(audience)) => Some(JwtSettings {
                keys,
                issuer,
                audience,
                roles_claim: jwt_roles_claim.unwrap_or_else(|| "roles".into()),
                kind_claim: jwt_kind_claim.unwrap_or_else(|| "lockstep_kind".into()),
            }),
            (keys, issuer, audience) => {
                let missing: Vec<&str> = [
                    ("--jwt-keys", keys.is_none()),
                    ("--jwt-issuer", issuer.is_none()),
                    ("--jwt-audience", audience.is_none()),
                ]
                .into_iter()
                .filter_map(|(name, gone)| gone.then_some(name))
                .collect();
                return Err(ConfigError::JwtIncomplete { missing });
            }
        };
        let metrics_listen = flags.metrics_listen.or(file.metrics_listen);
        if metrics_listen == Some(listen) {
            return Err(ConfigError::MetricsOnListen { listen });
        }
        let console_listen = flags.console_listen.or(file.console_listen);
        if let Some(console) = console_listen {
            if console == listen {
                return Err(ConfigError::ConsoleSharesPort {
                    console,
                    other: "gRPC --listen",
                });
            }
            if Some(console) == metrics_listen {
                return Err(ConfigError::ConsoleSharesPort {
                    console,
                    other: "--metrics-listen",
                });
            }
            if dev && !console.ip().is_loopback() {
                return Err(ConfigError::DevConsoleNotLoopback { console });
            }
        }
        let peer_via = match flags.peer_via.or(file.peer_via) {
            Some(text) if !text.trim().is_empty() => {
                parse_members(&text).map_err(ConfigError::PeerVia)?
            }
            _ => BTreeMap::new(),
        };
        let log_mib = flags
            .snapshot_log_mib
            .or(file.snapshot_log_mib)
            .unwrap_or(64);
        if log_mib == 0 || log_mib > 1 << 20 {
            return Err(ConfigError::SnapshotLogMib { mib: log_mib });
        }
        let interval = match flags.snapshot_interval.or(file.snapshot_interval) {
            None => std::time::Duration::from_secs(3600),
            Some(text) => {
                let d = match lockstep_core::duration::Duration::parse(&text) {
                    Ok(d) => d,
                    Err(source) => return Err(ConfigError::SnapshotInterval { text, source }),
                };
                if d.as_ms() < 1000 {
                    return Err(ConfigError::SnapshotIntervalTooShort { text });
                }
                std::time::Duration::from_millis(d.as_ms())
            }
        };
        let entries = flags.snapshot_every.or(file.snapshot_every);
        if entries == Some(0) {
            return Err(ConfigError::SnapshotEveryZero);
        }
        let clock = match flags.max_clock_offset.or(file.max_clock_offset) {
            None => crate::clock::ClockSettings::default(),
            Some(text) => crate::clock::ClockSettings::parse(&text)?,
        };
        let defaults = crate::space::SpaceSettings::default();
        let size = |flag: &str, text: Option<String>, default: u64| {
            text.map_or(Ok(default), |t| crate::space::parse_size(flag, &t))
        };
        let space = crate::space::SpaceSettings {
            min_free_bytes: size(
                "--min-free-space",
                flags.min_free_space.or(file.min_free_space),
                defaults.min_free_bytes,
            )?,
            store_quota_bytes: size(
                "--store-quota",
                flags.store_quota.or(file.store_quota),
                defaults.store_quota_bytes,
            )?,
        };
        let scrub = crate::scrub::ScrubSettings::parse(
            flags.scrub_every.or(file.scrub_every).as_deref(),
            flags.scrub_rate.or(file.scrub_rate).as_deref(),
        )?;
        let snapshots = SnapshotSettings {
            log_bytes: log_mib << 20,
            interval,
            entries,
        };
        Ok(Config {
            id,
            data_dir,
            listen,
            advertise,
            initial_members,
            heartbeat_ms,
            election_timeout_ms,
            snapshots,
            logs_to_keep: flags.logs_to_keep.or(file.logs_to_keep).unwrap_or(1_000),
            admission,
            clock,
            space,
            scrub,
            dev,
            log_format,
            peer_via,
            metrics_listen,
            console_listen,
            tls,
            jwt,
            policy,
            webhooks,
            otlp_endpoint,
        })
    }

    pub fn store_dir(&self) -> PathBuf {
        self.data_dir.join("rocksdb")
    }

    /// Raft snapshot files (streamed, so a large state is never held in memory).
    pub fn snapshot_dir(&self) -> PathBuf {
        self.data_dir.join(SNAPSHOTS_DIR)
    }

    pub fn identity_file(&self) -> PathBuf {
        self.data_dir.join("node.toml")
    }
}

/// Most writes or reads in flight any admission bound may allow.
const ADMISSION_BOUND_MAX: usize = 1_000_000;

fn admission_settings(
    flags: &Flags,
    file: &FileConfig,
) -> Result<crate::admission::AdmissionSettings, ConfigError> {
    let defaults = crate::admission::AdmissionSettings::default();
    let min = flags
        .admission_limit_min
        .or(file.admission_limit_min)
        .unwrap_or(defaults.min);
    let max = flags
        .admission_limit_max
        .or(file.admission_limit_max)
        .unwrap_or(defaults.max);
    let reads_max = flags
        .reads_in_flight_max
        .or(file.reads_in_flight_max)
        .unwrap_or(defaults.reads_max);
    for (flag, value) in [
        ("--admission-limit-min", min),
        ("--admission-limit-max", max),
        ("--reads-in-flight-max", reads_max),
    ] {
        if value == 0 || value > ADMISSION_BOUND_MAX {
            return Err(ConfigError::AdmissionBound { flag, value });
        }
    }
    if min > max {
        return Err(ConfigError::AdmissionMinAboveMax { min, max });
    }
    Ok(crate::admission::AdmissionSettings {
        min,
        max,
        reads_max,
    })
}

/// Parses `1=host:port,2=host:port`.
pub fn parse_members(text: &str) -> Result<BTreeMap<u64, String>, MembersError> {
    let mut out = BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part.split_once('=').ok_or_else(|| MembersError::NotAPair {
            part: part.to_string(),
        })?;
        let id: u64 = id.trim().parse().map_err(|_| MembersError::NotAnId {
            part: part.to_string(),
            id: id.to_string(),
        })?;
        if addr.trim().is_empty() || !addr.contains(':') {
            return Err(MembersError::NotAnAddress {
                part: part.to_string(),
                addr: addr.to_string(),
            });
        }
        if out.insert(id, addr.trim().to_string()).is_some() {
            return Err(MembersError::Twice { id });
        }
    }
    if out.is_empty() {
        return Err(MembersError::Empty);
    }
    Ok(out)
}

/// What a data directory remembers about the node and cluster that created it.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Identity {
    pub node_id: u64,
    /// The initial members of the cluster this directory belongs to.
    pub cluster: String,
}

/// Refuses a data directory that belongs to another node or cluster; records the identity of
/// a fresh one.
pub fn check_identity(config: &Config) -> Result<(), ConfigError> {
    let cluster = config
        .initial_members
        .iter()
        .map(|(id, addr)| format!("{id}={addr}"))
        .collect::<Vec<_>>()
        .join(",");
    let mine = Identity {
        node_id: config.id,
        cluster,
    };
    let path = config.identity_file();
    std::fs::create_dir_all(&config.data_dir).map_err(|source| ConfigError::CreateDataDir {
        dir: config.data_dir.clone(),
        source,
    })?;
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let found: Identity = match toml::from_str(&text) {
                Ok(found) => found,
                Err(source) => return Err(ConfigError::IdentityDamaged { path, source }),
            };
            if found.node_id != mine.node_id {
                return Err(ConfigError::OtherNode {
                    dir: config.data_dir.clone(),
                    found: found.node_id,
                    mine: mine.node_id,
                });
            }
            if found.cluster != mine.cluster {
                return Err(ConfigError::OtherCluster {
                    dir: config.data_dir.clone(),
                    found: found.cluster,
                    mine: mine.cluster,
                });
            }
            Ok(())
        }
        Err(_) => write_identity(&path, &mine),
    }
}

fn write_identity(path: &Path, identity: &Identity) -> Result<(), ConfigError> {
    let text = toml::to_string(identity)?;
    write_durably(path, text.as_bytes()).map_err(|source| ConfigError::WriteIdentity {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `bytes` to `path` so that a power cut leaves either no file or all of it: a
/// synced temporary file renamed into place, then the directory synced. (A plain write left
/// an empty `node.toml` after a power cut, and the node refused to start.)
pub fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let temp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&temp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temp, path)?;
    std::fs::File::open(dir)?.sync_all()
}
