//! The commands that talk to a cluster over gRPC, through the client library.
//!
//! One file per command family: [`definitions`] (apply), [`instances`] (create, transition,
//! events, incidents, migrate, get, list, history), [`actions`] (actions, inbox), [`explain`], [`forecast`] (`sla forecast`), [`replay`], [`subscriptions`] (webhooks), [`audit`] (verify, anchor, security log,
//! tail) and [`cluster`] (status, membership, health, backup). This file holds the
//! connection settings, the exit codes of errors and what the families share.

use std::path::Path;

use std::time::Duration;

use anyhow::{Context, bail};
use lockstep_client::model::SlaView;
use lockstep_client::{
    AuditRecord, AuditVerification, Client, Credentials, Error, Identity, Instance, InstanceChange,
    InstanceRead, Named, Options, Provenance, by_id, by_key, pb, request_id,
};
use lockstep_core::{ActorKind, RefusalCode, Timestamp};

use crate::{Output, exit};

mod actions;
mod audit;
mod cluster;
mod definitions;
mod explain;
mod forecast;
mod instances;
mod replay;
mod schedules;
mod subscriptions;

pub use actions::*;
pub use audit::*;
pub use cluster::*;
pub use definitions::*;
pub use explain::*;
pub use forecast::*;
pub use instances::*;
pub use replay::*;
pub use schedules::*;
pub use subscriptions::*;

/// Connection settings shared by every online command.
#[derive(Debug, Clone, clap::Args)]
pub struct Connection {
    /// Node endpoints, comma separated (any node works; writes are routed to the leader).
    #[arg(
        long,
        env = "LOCKSTEP_ENDPOINTS",
        default_value = "127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103",
        value_delimiter = ',',
        global = true
    )]
    pub endpoints: Vec<String>,
    /// Act as this actor. Only a development-mode node (lockstepd --dev) believes --as,
    /// --roles and --kind; a secure cluster takes the actor from --token or --tls-cert.
    #[arg(
        long = "as",
        env = "LOCKSTEP_ACTOR",
        default_value = "operator",
        global = true
    )]
    pub actor: String,
    /// The actor's roles, comma separated.
    #[arg(long, env = "LOCKSTEP_ROLES", value_delimiter = ',', global = true)]
    pub roles: Vec<String>,
    /// The actor's kind: human, service or worker.
    #[arg(
        long,
        env = "LOCKSTEP_ACTOR_KIND",
        default_value = "human",
        global = true
    )]
    pub kind: String,
    /// Reuse this request id (to retry a write safely); a fresh one is generated otherwise.
    #[arg(long, global = true)]
    pub request_id: Option<String>,
    /// Give up when no node has answered within this long (e.g. 30s, 5s, 500ms); failed
    /// attempts are retried on the other endpoints until then.
    #[arg(
        long,
        env = "LOCKSTEP_TIMEOUT",
        default_value = "30s",
        value_parser = parse_timeout,
        global = true
    )]
    pub timeout: Duration,
    /// The cluster CA (PEM): connect over TLS and verify the nodes with it. Needed for a
    /// secure cluster.
    #[arg(long, env = "LOCKSTEP_TLS_CA", value_name = "PEM", global = true)]
    pub tls_ca: Option<std::path::PathBuf>,
    /// A client certificate from the cluster CA (PEM; with --tls-key and --tls-ca): act as
    /// the actor it names (`lockstep certs --client` makes one).
    #[arg(
        long,
        env = "LOCKSTEP_TLS_CERT",
        value_name = "PEM",
        global = true,
        requires = "tls_key"
    )]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(
        long,
        env = "LOCKSTEP_TLS_KEY",
        value_name = "PEM",
        global = true,
        requires = "tls_cert"
    )]
    pub tls_key: Option<std::path::PathBuf>,
    /// A JWT from the cluster's issuer, sent as `authorization: Bearer <token>`: act as its
    /// subject. Prefer the environment variable, which does not show in process lists.
    #[arg(long, env = "LOCKSTEP_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
}

fn parse_timeout(text: &str) -> anyhow::Result<Duration> {
    let d = lockstep_core::duration::Duration::parse(text)?;
    if d.as_ms() == 0 {
        bail!("the timeout must be more than zero");
    }
    Ok(Duration::from_millis(d.as_ms()))
}

impl Connection {
    pub fn client(&self) -> anyhow::Result<Client> {
        let kind = match self.kind.as_str() {
            "human" => ActorKind::Human,
            "service" => ActorKind::Service,
            "worker" => ActorKind::Worker,
            other => bail!("--kind `{other}` is not human, service or worker"),
        };
        let roles: Vec<&str> = self.roles.iter().map(String::as_str).collect();
        Client::with_credentials(
            &self.endpoints,
            Some(Identity::new(&self.actor, kind, &roles)),
            self.options(),
            self.credentials()?,
        )
        .map_err(anyhow::Error::msg)
    }

    /// Client options: `--timeout` bounds the whole call and each attempt.
    fn options(&self) -> Options {
        let defaults = Options::default();
        Options {
            attempt_timeout: defaults.attempt_timeout.min(self.timeout),
            total_timeout: self.timeout,
            ..defaults
        }
    }

    /// TLS (`--tls-ca`, `--tls-cert`, `--tls-key`) and the bearer token (`--token`).
    pub fn credentials(&self) -> anyhow::Result<Credentials> {
        Credentials::from_flags(
            self.tls_ca.as_deref(),
            self.tls_cert.as_deref().zip(self.tls_key.as_deref()),
            self.token.as_deref(),
        )
        .map_err(anyhow::Error::msg)
    }

    fn request_id(&self) -> String {
        self.request_id.clone().unwrap_or_else(request_id)
    }
}

/// Some endpoints did not answer a per-node question (`cluster status`, `audit verify`);
/// what the others said has been printed.
#[derive(Debug)]
pub struct Unreachable(pub Vec<String>);

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no answer from {}", self.0.join(", "))
    }
}

impl std::error::Error for Unreachable {}

/// gRPC status codes (`tonic::Code` as i32) of a node that could not be reached in time.
const GRPC_DEADLINE_EXCEEDED: i32 = 4;

const GRPC_UNAVAILABLE: i32 = 14;

/// The exit code of a failed online command (see [`crate::exit`]). Errors that are neither
/// the client's nor [`Unreachable`] are local: a bad argument, file or JSON text.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    if e.downcast_ref::<Unreachable>().is_some() {
        return exit::UNAVAILABLE;
    }
    match e.downcast_ref::<Error>() {
        // Overloaded or over quota for as long as --timeout: a transient condition.
        Some(Error::Unavailable(..) | Error::Overloaded { .. }) => exit::UNAVAILABLE,
        Some(Error::NotFound(_)) => exit::NOT_FOUND,
        Some(Error::Refused(r))
            if matches!(
                r.code,
                RefusalCode::UnknownInstance
                    | RefusalCode::UnknownWorkflow
                    | RefusalCode::UnknownVersion
                    | RefusalCode::UnknownSubscription
                    | RefusalCode::UnknownSchedule
            ) =>
        {
            exit::NOT_FOUND
        }
        Some(Error::Refused(_) | Error::Unauthenticated(_) | Error::PermissionDenied(_)) => {
            exit::REFUSED
        }
        Some(Error::InvalidArgument(_)) => exit::USAGE,
        // The node answered, with something this binary cannot read: like an unexpected
        // status, not a local mistake.
        Some(Error::Decode { .. }) => exit::REFUSED,
        Some(Error::Other(status)) => {
            if matches!(
                i32::from(status.code()),
                GRPC_UNAVAILABLE | GRPC_DEADLINE_EXCEEDED
            ) {
                exit::UNAVAILABLE
            } else {
                exit::REFUSED
            }
        }
        None => exit::USAGE,
    }
}

/// Prints a failure on stderr: a line of text, or with `--output json` one JSON object with
/// the exit code, its kind, the refusal code (if refused) and the message.
pub fn report_error(output: Output, e: &anyhow::Error, code: u8) {
    match output {
        Output::Table => eprintln!("error: {e:#}"),
        Output::Json => {
            let refused = match e.downcast_ref::<Error>() {
                Some(Error::Refused(r)) => Some(r),
                _ => None,
            };
            eprintln!(
                "{}",
                serde_json::json!({"error": {
                    "exit_code": code,
                    "kind": exit::kind(code),
                    "code": refused.map(|r| r.code.as_str()),
                    "predicate": refused.and_then(|r| r.predicate.clone()),
                    "earliest_at": refused.and_then(|r| r.earliest_at).map(|t| t.to_string()),
                    "message": format!("{e:#}"),
                }})
            );
        }
    }
}

fn target(instance: &str) -> pb::InstanceRef {
    // `workflow/key` addresses by business key; anything else is an instance id.
    match instance.split_once('/') {
        Some((workflow, key)) => by_key(workflow, key),
        None => by_id(instance),
    }
}

fn parse_json(text: Option<&str>, what: &str) -> anyhow::Result<serde_json::Value> {
    match text {
        None => Ok(serde_json::Value::Null),
        Some(t) => serde_json::from_str(t).with_context(|| format!("{what} is not valid JSON")),
    }
}

fn print_change(output: Output, c: &InstanceChange) {
    match output {
        Output::Json => println!(
            "{}",
            serde_json::json!({"instance_id": c.instance_id, "version": c.version, "state": c.state, "audit_seq": c.audit_seq})
        ),
        Output::Table => println!(
            "{}  state={}  version={}  audit_seq={}",
            c.instance_id, c.state, c.version, c.audit_seq
        ),
    }
}

/// The YAML files of a folder, sorted.
pub fn yaml_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("yaml"))
        .collect();
    files.sort();
    files
}

/// What a command that asks every endpoint in turn collects: one JSON row per endpoint,
/// printed as one array with `--output json`, and the endpoints that did not answer, which
/// make the command fail with [`Unreachable`] (exit 3) once every row is printed.
#[derive(Debug)]
struct PerEndpoint {
    output: Output,
    rows: Vec<serde_json::Value>,
    unreachable: Vec<String>,
}

impl PerEndpoint {
    fn new(output: Output) -> Self {
        PerEndpoint {
            output,
            rows: Vec::new(),
            unreachable: Vec::new(),
        }
    }

    fn answered(&mut self, row: serde_json::Value) {
        self.rows.push(row);
    }

    /// `endpoint` did not answer: a table line, an error row, and exit 3 at the end.
    fn unreachable(&mut self, endpoint: &str, error: impl std::fmt::Display) {
        if self.output == Output::Table {
            println!("{endpoint:<22} unreachable: {error}");
        }
        self.rows
            .push(serde_json::json!({"endpoint": endpoint, "error": error.to_string()}));
        self.unreachable.push(endpoint.to_string());
    }

    fn finish(self) -> anyhow::Result<()> {
        if self.output == Output::Json {
            println!("{}", serde_json::Value::Array(self.rows));
        }
        if !self.unreachable.is_empty() {
            return Err(Unreachable(self.unreachable).into());
        }
        Ok(())
    }
}

/// An optional name as the tables print it: empty when absent.
fn or_empty(text: &Option<String>) -> &str {
    text.as_deref().unwrap_or_default()
}

/// The complete record (as stored, with its hashes) from its JSON text.
fn record_value(rec: &AuditRecord) -> anyhow::Result<serde_json::Value> {
    serde_json::from_str(&rec.record_json).with_context(|| {
        format!(
            "the node sent audit record {} with invalid JSON",
            rec.global_seq
        )
    })
}
