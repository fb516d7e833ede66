//! The commands that talk to a cluster over gRPC, through the client library.

use std::path::Path;

use std::time::Duration;

use anyhow::{Context, bail};
use lockstep_client::{
    Client, Credentials, Error, Identity, Options, Tls, by_id, by_key, pb, request_id,
};
use lockstep_core::{ActorKind, RefusalCode};

use crate::{Output, exit};

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

fn parse_timeout(text: &str) -> Result<Duration, String> {
    let d = lockstep_core::duration::Duration::parse(text)?;
    if d.as_ms() == 0 {
        return Err("the timeout must be more than zero".into());
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
        let tls = match (&self.tls_ca, &self.tls_cert, &self.tls_key) {
            (None, None, None) => None,
            (None, _, _) => bail!(
                "--tls-cert needs --tls-ca (the cluster CA) to verify the nodes it connects to"
            ),
            (Some(ca), cert, key) => Some(
                Tls::from_files(ca, cert.as_deref().zip(key.as_deref()))
                    .map_err(anyhow::Error::msg)?,
            ),
        };
        Ok(Credentials {
            tls,
            token: self
                .token
                .as_deref()
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_string),
        })
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
            ) =>
        {
            exit::NOT_FOUND
        }
        Some(Error::Refused(_) | Error::Unauthenticated(_) | Error::PermissionDenied(_)) => {
            exit::REFUSED
        }
        Some(Error::InvalidArgument(_)) => exit::USAGE,
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

fn print_change(output: Output, c: &pb::InstanceChange) {
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

pub async fn apply(
    conn: &Connection,
    output: Output,
    files: &[std::path::PathBuf],
    repository: &str,
    commit: &str,
) -> anyhow::Result<()> {
    let client = conn.client()?;
    let mut results = Vec::new();
    for file in files {
        let source =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let provenance = pb::Provenance {
            repository: repository.into(),
            commit: commit.into(),
            path: file.display().to_string(),
        };
        let r = client
            .apply_definition(&conn.request_id(), &source, provenance)
            .await?;
        if output == Output::Table {
            println!(
                "{} {} @ {} ({})",
                if r.created { "applied" } else { "unchanged" },
                r.workflow,
                &r.version[..12],
                file.display()
            );
        }
        results.push(serde_json::json!({"file": file.display().to_string(), "workflow": r.workflow, "version": r.version, "created": r.created}));
    }
    if output == Output::Json {
        println!("{}", serde_json::Value::Array(results));
    }
    Ok(())
}

pub async fn create(
    conn: &Connection,
    output: Output,
    workflow: &str,
    key: Option<&str>,
    data: Option<&str>,
) -> anyhow::Result<()> {
    let data = match parse_json(data, "--data")? {
        serde_json::Value::Null => serde_json::json!({}),
        d => d,
    };
    let c = conn
        .client()?
        .create(&conn.request_id(), workflow, key, &data)
        .await?;
    print_change(output, &c);
    Ok(())
}

pub async fn transition(
    conn: &Connection,
    output: Output,
    instance: &str,
    transition: &str,
    payload: Option<&str>,
    expected_version: Option<u64>,
) -> anyhow::Result<()> {
    let payload = parse_json(payload, "--payload")?;
    let c = conn
        .client()?
        .transition(
            &conn.request_id(),
            target(instance),
            transition,
            &payload,
            expected_version,
        )
        .await?;
    print_change(output, &c);
    Ok(())
}

pub async fn resolve(
    conn: &Connection,
    output: Output,
    instance: &str,
    incident: &str,
    retry: bool,
) -> anyhow::Result<()> {
    let c = conn
        .client()?
        .resolve_incident(&conn.request_id(), target(instance), incident, retry)
        .await?;
    print_change(output, &c);
    Ok(())
}

pub async fn event(
    conn: &Connection,
    output: Output,
    instance: &str,
    event: &str,
    payload: Option<&str>,
) -> anyhow::Result<()> {
    let payload = parse_json(payload, "--payload")?;
    let c = conn
        .client()?
        .send_event(&conn.request_id(), target(instance), event, &payload)
        .await?;
    print_change(output, &c);
    Ok(())
}

/// How `lockstep migrate` re-arms timers (`--timers`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TimersArg {
    /// Keep absolute deadlines of state expiries and SLA breaches.
    KeepDeadline,
    /// Keep the remaining budgets, counted with the new version's calendars.
    KeepRemaining,
    /// Re-arm as if the state was just entered; SLA clocks start over.
    Restart,
}

impl TimersArg {
    fn policy(self) -> pb::TimerPolicy {
        match self {
            TimersArg::KeepDeadline => pb::TimerPolicy::KeepDeadline,
            TimersArg::KeepRemaining => pb::TimerPolicy::KeepRemaining,
            TimersArg::Restart => pb::TimerPolicy::Restart,
        }
    }

    fn name(self) -> &'static str {
        match self {
            TimersArg::KeepDeadline => "keep-deadline",
            TimersArg::KeepRemaining => "keep-remaining",
            TimersArg::Restart => "restart",
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct MigrateArgs {
    /// The workflow whose instances move.
    pub workflow: String,
    /// Instances to migrate: ids (i-42) or workflow/key; or use --all.
    #[arg(required_unless_present = "all")]
    pub instances: Vec<String>,
    /// Every instance at the --from version (in batches, until none remain).
    #[arg(long, conflicts_with = "instances")]
    pub all: bool,
    /// The version the instances run now (full, or a unique prefix).
    #[arg(long, value_name = "VERSION")]
    pub from: String,
    /// The applied version to move them to (full, or a unique prefix).
    #[arg(long, value_name = "VERSION")]
    pub to: String,
    /// A state mapping OLD=NEW (repeat it); unmapped states keep their name.
    #[arg(long = "map", value_name = "OLD=NEW", value_parser = parse_mapping)]
    pub map: Vec<(String, String)>,
    /// How state expiry and SLA timers are re-armed.
    #[arg(long, value_enum, value_name = "POLICY")]
    pub timers: TimersArg,
}

fn parse_mapping(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((old, new)) if !old.trim().is_empty() && !new.trim().is_empty() => {
            Ok((old.trim().to_string(), new.trim().to_string()))
        }
        _ => Err(format!(
            "`{text}` is not OLD=NEW (a state of the old version, `=`, a state of the new one)"
        )),
    }
}

/// `lockstep migrate`: one call for listed instances; with --all, calls until the cluster
/// says none remain, each batch under its own request id (`<request id>-<batch>`, so
/// re-running with the same --request-id replays the same batches).
pub async fn migrate(conn: &Connection, output: Output, args: &MigrateArgs) -> anyhow::Result<()> {
    let mut mapping = std::collections::HashMap::new();
    for (old, new) in &args.map {
        if let Some(earlier) = mapping.insert(old.clone(), new.clone())
            && earlier != *new
        {
            bail!("--map names state `{old}` twice (`{earlier}` and `{new}`)");
        }
    }
    let client = conn.client()?;
    let base = conn.request_id();
    let mut request = pb::MigrateInstancesRequest {
        request_id: base.clone(),
        workflow: args.workflow.clone(),
        from_version: args.from.clone(),
        to_version: args.to.clone(),
        state_mapping: mapping,
        timer_policy: args.timers.policy() as i32,
        instances: args.instances.iter().map(|i| target(i)).collect(),
        all: args.all,
        page_token: String::new(),
    };
    let mut migrated: Vec<pb::MigratedInstance> = Vec::new();
    // The full versions, as the cluster resolved the prefixes given.
    let mut versions: (String, String);
    let mut batches = 0u32;
    loop {
        batches += 1;
        if args.all {
            request.request_id = format!("{base}-{batches}");
        }
        let r = match client.migrate(request.clone()).await {
            Ok(r) => r,
            Err(e) if !migrated.is_empty() => {
                return Err(anyhow::Error::new(e).context(format!(
                    "{} instance(s) were migrated by earlier batches, then a batch failed",
                    migrated.len()
                )));
            }
            Err(e) => return Err(e.into()),
        };
        versions = (r.from_version.clone(), r.to_version.clone());
        if output == Output::Table {
            for m in &r.instances {
                println!(
                    "{:<14} {} -> {}  version={}  audit_seq={}",
                    m.instance_id, m.from_state, m.to_state, m.version, m.audit_seq
                );
            }
        }
        migrated.extend(r.instances);
        if !(args.all && r.more) {
            break;
        }
        request.page_token = r.next_page_token;
    }
    match output {
        Output::Json => println!(
            "{}",
            serde_json::json!({
                "workflow": args.workflow,
                "from_version": versions.0,
                "to_version": versions.1,
                "timer_policy": args.timers.name(),
                "migrated": migrated.len(),
                "batches": batches,
                "instances": migrated.iter().map(|m| serde_json::json!({
                    "instance_id": m.instance_id, "from_state": m.from_state, "to_state": m.to_state,
                    "version": m.version, "audit_seq": m.audit_seq,
                })).collect::<Vec<_>>(),
            })
        ),
        Output::Table => println!(
            "migrated {} instance(s) of {} from {} to {} (timers: {})",
            migrated.len(),
            args.workflow,
            &versions.0[..12.min(versions.0.len())],
            &versions.1[..12.min(versions.1.len())],
            args.timers.name()
        ),
    }
    Ok(())
}

fn instance_json(i: &pb::Instance) -> serde_json::Value {
    serde_json::json!({
        "id": i.id, "workflow": i.workflow, "key": i.key, "state": i.state, "version": i.version,
        "data": serde_json::from_str::<serde_json::Value>(&i.data_json).unwrap_or_default(),
        "created_by": i.created_by, "created_at": i.created_at, "entered_at": i.entered_at, "updated_at": i.updated_at,
        "definition_version": i.definition_version,
        "slas": i.slas.iter().map(|s| serde_json::json!({"name": s.name, "status": s.status, "breached": s.breached, "warned_percent": s.warned_percent, "remaining_ms": s.remaining_ms})).collect::<Vec<_>>(),
        "timers": i.timers.iter().map(|t| serde_json::json!({"id": t.id, "due_at": t.due_at})).collect::<Vec<_>>(),
        "tasks": serde_json::from_str::<serde_json::Value>(&i.tasks_json).unwrap_or_default(),
        "incidents": serde_json::from_str::<serde_json::Value>(&i.incidents_json).unwrap_or_default(),
    })
}

pub async fn get(
    conn: &Connection,
    output: Output,
    instance: &str,
    stale: bool,
) -> anyhow::Result<()> {
    let consistency = if stale {
        pb::ReadConsistency::Stale
    } else {
        pb::ReadConsistency::Linearizable
    };
    let r = conn.client()?.get(target(instance), consistency).await?;
    let i = r.instance.context("the node returned no instance")?;
    let read = r.read.unwrap_or_default();
    match output {
        Output::Json => {
            let mut v = instance_json(&i);
            v["read"] = serde_json::json!({"stale": read.stale, "node_id": read.node_id, "applied_index": read.applied_index});
            println!("{v}");
        }
        Output::Table => {
            println!(
                "{} ({} {}){}",
                i.id,
                i.workflow,
                if i.key.is_empty() {
                    String::new()
                } else {
                    format!("key {}", i.key)
                },
                if read.stale { "  [stale read]" } else { "" }
            );
            println!("  state     {}  (since {})", i.state, i.entered_at);
            println!("  version   {}", i.version);
            println!("  data      {}", i.data_json);
            for s in &i.slas {
                println!(
                    "  sla       {}: {}{}{}  remaining {} ms",
                    s.name,
                    s.status,
                    if s.warned_percent > 0 {
                        format!(", warned {}%", s.warned_percent)
                    } else {
                        String::new()
                    },
                    if s.breached { ", BREACHED" } else { "" },
                    s.remaining_ms
                );
            }
            for t in &i.timers {
                println!("  timer     {} due {}", t.id, t.due_at);
            }
            let tasks: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(&i.tasks_json).unwrap_or_default();
            for (id, t) in &tasks {
                println!(
                    "  task      {id} on queue {}: {} (attempt {}){}",
                    t["queue"].as_str().unwrap_or("?"),
                    t["status"].as_str().unwrap_or("?"),
                    t["attempt"],
                    t["last_error"]
                        .as_str()
                        .map(|e| format!(", last error: {e}"))
                        .unwrap_or_default()
                );
            }
            let incidents: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(&i.incidents_json).unwrap_or_default();
            for (id, inc) in &incidents {
                let open = inc["resolved_at"].is_null();
                println!(
                    "  incident  {id} {}: {}",
                    if open { "OPEN" } else { "resolved" },
                    inc["reason"].as_str().unwrap_or("?")
                );
            }
        }
    }
    Ok(())
}

/// Which instances `lockstep list` shows.
#[derive(Debug, Default)]
pub struct ListFilter {
    pub state: Option<String>,
    pub sla: Option<String>,
    pub incidents: bool,
}

pub async fn list(
    conn: &Connection,
    output: Output,
    workflow: &str,
    filter: ListFilter,
    page_size: u32,
    page_token: Option<String>,
) -> anyhow::Result<()> {
    let request = pb::ListInstancesRequest {
        workflow: workflow.into(),
        state: filter.state.unwrap_or_default(),
        sla_status: filter.sla.unwrap_or_default(),
        updated_since: String::new(),
        page_size,
        page_token: page_token.unwrap_or_default(),
        consistency: 0,
        open_incidents: filter.incidents,
    };
    let r = conn.client()?.list(request).await?;
    match output {
        Output::Json => println!(
            "{}",
            serde_json::json!({"instances": r.instances.iter().map(instance_json).collect::<Vec<_>>(), "next_page_token": r.next_page_token})
        ),
        Output::Table => {
            println!(
                "{:<14} {:<16} {:<22} {:>7}  UPDATED",
                "ID", "KEY", "STATE", "VERSION"
            );
            for i in &r.instances {
                println!(
                    "{:<14} {:<16} {:<22} {:>7}  {}",
                    i.id, i.key, i.state, i.version, i.updated_at
                );
            }
            if !r.next_page_token.is_empty() {
                println!("(more: --page-token {})", r.next_page_token);
            }
        }
    }
    Ok(())
}

/// The complete record (as stored, with its hashes) from its JSON text.
fn record_value(rec: &pb::AuditRecord) -> anyhow::Result<serde_json::Value> {
    serde_json::from_str(&rec.record_json).with_context(|| {
        format!(
            "the node sent audit record {} with invalid JSON",
            rec.global_seq
        )
    })
}

pub async fn history(conn: &Connection, output: Output, instance: &str) -> anyhow::Result<()> {
    let r = conn.client()?.history(target(instance), 0).await?;
    match output {
        Output::Json => {
            let records = r
                .records
                .iter()
                .map(record_value)
                .collect::<anyhow::Result<Vec<_>>>()?;
            println!("{}", serde_json::Value::Array(records));
        }
        Output::Table => {
            println!(
                "{:>5} {:>4}  {:<28} {:<16} {:<14} {:<24} FROM -> TO",
                "SEQ", "#", "AT", "KIND", "ACTOR", "TRANSITION"
            );
            for rec in &r.records {
                println!(
                    "{:>5} {:>4}  {:<28} {:<16} {:<14} {:<24} {} -> {}",
                    rec.global_seq,
                    rec.instance_seq,
                    rec.at,
                    rec.kind,
                    rec.actor_id,
                    rec.transition,
                    rec.from,
                    rec.to
                );
            }
        }
    }
    Ok(())
}

/// `SEQ:HASH`, as `lockstep audit anchor` prints it.
pub fn parse_anchor(text: &str) -> Result<(u64, String), String> {
    let (seq, hash) = text.trim().split_once(':').ok_or_else(|| {
        format!("`{text}` is not an anchor: expected SEQ:HASH as `lockstep audit anchor` prints it, e.g. 1042:3f9c…")
    })?;
    let seq: u64 = seq
        .parse()
        .ok()
        .filter(|s| *s > 0)
        .ok_or_else(|| format!("`{seq}` in the anchor is not a record sequence (1 or more)"))?;
    let hash = hash.to_ascii_lowercase();
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "`{hash}` in the anchor is not a chain hash: expected 64 hex digits"
        ));
    }
    Ok((seq, hash))
}

/// One endpoint's answers to `audit verify`.
struct NodeChain {
    /// Its index in the client's endpoint list.
    index: usize,
    endpoint: String,
    verified: pb::VerifyAuditResponse,
    /// Its chain hash at the common sequence (and at the anchor's), once asked.
    at_common: String,
    at_anchor: String,
}

/// Ok(false) if a chain is broken on some endpoint, two nodes' chains differ at the highest
/// record all of them have, or the anchor does not match; [`Unreachable`] if none of that but
/// some endpoint did not answer.
pub async fn audit_verify(
    conn: &Connection,
    output: Output,
    anchor: Option<(u64, String)>,
) -> anyhow::Result<bool> {
    let client = conn.client()?;
    let mut unreachable = Vec::new();
    let mut nodes = Vec::new();
    // Verify runs on the node that answers: ask each endpoint in turn.
    for (index, endpoint) in client.endpoints().iter().enumerate() {
        match client.verify_audit_of(index, 0).await {
            Ok(verified) => nodes.push(NodeChain {
                index,
                endpoint: endpoint.clone(),
                verified,
                at_common: String::new(),
                at_anchor: String::new(),
            }),
            Err(e) => {
                if output == Output::Table {
                    println!("{endpoint}: unreachable: {e}");
                }
                unreachable.push((endpoint.clone(), e.to_string()));
            }
        }
    }
    // The highest record every node with a sound chain has: their hashes there must agree.
    let common = nodes
        .iter()
        .filter(|n| n.verified.ok)
        .map(|n| n.verified.head_seq)
        .min()
        .unwrap_or(0);
    for n in nodes.iter_mut().filter(|n| n.verified.ok) {
        if common > 0 {
            n.at_common = at_hash(&client, n.index, common).await;
        }
        if let Some((seq, _)) = &anchor {
            n.at_anchor = at_hash(&client, n.index, *seq).await;
        }
    }
    let mut problems = Vec::new();
    for n in &nodes {
        let v = &n.verified;
        if !v.ok {
            problems.push(format!(
                "{}: BROKEN at record {}: {}",
                n.endpoint, v.broken_seq, v.reason
            ));
        }
    }
    let sound: Vec<&NodeChain> = nodes.iter().filter(|n| n.verified.ok).collect();
    if let Some(first) = sound.first()
        && common > 0
    {
        for n in &sound[1..] {
            if n.at_common != first.at_common {
                problems.push(format!(
                    "{} and {} differ at record {common}, the highest every node has: {} against {}",
                    n.endpoint,
                    first.endpoint,
                    short_hash(&n.at_common),
                    short_hash(&first.at_common)
                ));
            }
        }
    }
    if let Some((seq, hash)) = &anchor {
        for n in &sound {
            if n.verified.head_seq < *seq {
                problems.push(format!(
                    "{}: its chain ends at record {}, before the anchor's record {seq}: records were removed",
                    n.endpoint, n.verified.head_seq
                ));
            } else if n.at_anchor != *hash {
                problems.push(format!(
                    "{}: record {seq} hashes to {}, the anchor says {}: the history was rewritten",
                    n.endpoint,
                    short_hash(&n.at_anchor),
                    short_hash(hash)
                ));
            }
        }
    }
    match output {
        Output::Table => {
            for n in &nodes {
                let v = &n.verified;
                if v.ok {
                    println!(
                        "{}: ok, {} records, head {} {}",
                        n.endpoint,
                        v.records_checked,
                        v.head_seq,
                        short_hash(&v.head_hash)
                    );
                }
            }
            if common > 0 && !sound.is_empty() {
                println!(
                    "record {common}, the highest every node has: {}",
                    if sound.iter().all(|n| n.at_common == sound[0].at_common) {
                        format!(
                            "the same hash on every node, {}",
                            short_hash(&sound[0].at_common)
                        )
                    } else {
                        "DIFFERENT hashes".to_string()
                    }
                );
            }
            if let Some((seq, _)) = &anchor
                && problems.iter().all(|p| !p.contains("anchor"))
            {
                println!("anchor {seq}: matches on every node");
            }
            for p in &problems {
                println!("{p}");
            }
        }
        Output::Json => {
            let rows: Vec<serde_json::Value> = nodes
                .iter()
                .map(|n| {
                    let v = &n.verified;
                    serde_json::json!({"endpoint": n.endpoint, "ok": v.ok, "records_checked": v.records_checked, "broken_seq": v.broken_seq, "reason": v.reason, "head_seq": v.head_seq, "head_hash": v.head_hash, "hash_at_common": n.at_common, "hash_at_anchor": n.at_anchor})
                })
                .chain(unreachable.iter().map(|(e, err)| serde_json::json!({"endpoint": e, "error": err})))
                .collect();
            println!(
                "{}",
                serde_json::json!({"ok": problems.is_empty(), "common_seq": common, "problems": problems, "nodes": rows})
            );
        }
    }
    if problems.is_empty() && !unreachable.is_empty() {
        return Err(Unreachable(unreachable.into_iter().map(|(e, _)| e).collect()).into());
    }
    Ok(problems.is_empty())
}

/// Endpoint #`index`'s chain hash at `seq` (empty if its chain does not verify through it,
/// or it did not answer).
async fn at_hash(client: &Client, index: usize, seq: u64) -> String {
    client
        .verify_audit_of(index, seq)
        .await
        .map(|v| v.at_hash)
        .unwrap_or_default()
}

fn short_hash(h: &str) -> &str {
    if h.is_empty() {
        "(none)"
    } else {
        &h[..16.min(h.len())]
    }
}

/// Prints `SEQ:HASH` of the chain head from the first endpoint whose chain verifies.
pub async fn audit_anchor(conn: &Connection, output: Output) -> anyhow::Result<bool> {
    let client = conn.client()?;
    let mut last_error = String::new();
    for (index, endpoint) in client.endpoints().iter().enumerate() {
        match client.verify_audit_of(index, 0).await {
            Ok(v) if v.ok && v.head_seq > 0 => {
                match output {
                    Output::Table => println!("{}:{}", v.head_seq, v.head_hash),
                    Output::Json => println!(
                        "{}",
                        serde_json::json!({"seq": v.head_seq, "hash": v.head_hash, "endpoint": endpoint, "anchor": format!("{}:{}", v.head_seq, v.head_hash)})
                    ),
                }
                return Ok(true);
            }
            Ok(v) if v.ok => last_error = format!("{endpoint}: the audit log is empty"),
            Ok(v) => {
                last_error = format!(
                    "{endpoint}: its chain is BROKEN at record {}: {}",
                    v.broken_seq, v.reason
                )
            }
            Err(e) => last_error = format!("{endpoint}: {e}"),
        }
    }
    anyhow::bail!("no endpoint gave an anchor (a head of a chain that verifies): {last_error}")
}

/// Each endpoint's security log (a per-node question, like `audit verify`).
pub async fn audit_security(
    conn: &Connection,
    output: Output,
    after: u64,
    limit: u32,
) -> anyhow::Result<bool> {
    let client = conn.client()?;
    let mut unreachable = Vec::new();
    let mut rows = Vec::new();
    for (i, endpoint) in client.endpoints().iter().enumerate() {
        match client.security_log_of(i, after, limit).await {
            Ok(log) => {
                if output == Output::Table {
                    println!(
                        "{endpoint} (node {}): {} refusals recorded, {} kept (at most {})",
                        log.node_id,
                        log.total,
                        log.events.len(),
                        log.capacity
                    );
                    for e in &log.events {
                        println!(
                            "{:>6}  {:<28} {:<14} {:<18} {:<14} {}  {}",
                            e.seq,
                            e.at,
                            e.kind,
                            e.code,
                            if e.actor.is_empty() { "-" } else { &e.actor },
                            e.method,
                            e.reason
                        );
                    }
                }
                let events: Vec<serde_json::Value> = log
                    .events
                    .iter()
                    .map(|e| {
                        serde_json::json!({"seq": e.seq, "at": e.at, "kind": e.kind, "method": e.method,
                            "actor": e.actor, "remote": e.remote, "code": e.code, "reason": e.reason})
                    })
                    .collect();
                rows.push(
                    serde_json::json!({"endpoint": endpoint, "node_id": log.node_id,
                    "total": log.total, "capacity": log.capacity, "events": events}),
                );
            }
            Err(e @ (Error::Unauthenticated(_) | Error::PermissionDenied(_))) => {
                return Err(e.into());
            }
            Err(e) => {
                unreachable.push(endpoint.clone());
                if output == Output::Table {
                    println!("{endpoint}: unreachable: {e}");
                }
                rows.push(serde_json::json!({"endpoint": endpoint, "error": e.to_string()}));
            }
        }
    }
    if output == Output::Json {
        println!("{}", serde_json::Value::Array(rows));
    }
    if !unreachable.is_empty() {
        return Err(Unreachable(unreachable).into());
    }
    Ok(true)
}

pub async fn audit_tail(
    conn: &Connection,
    output: Output,
    from: u64,
    follow: bool,
) -> anyhow::Result<()> {
    let mut stream = conn.client()?.tail(from, follow).await?;
    if output == Output::Table {
        println!(
            "{:>6}  {:<28} {:<18} {:<20} {:<14} {:<14} {:<20} FROM -> TO",
            "SEQ", "AT", "KIND", "WORKFLOW", "INSTANCE", "ACTOR", "TRANSITION"
        );
    }
    while let Some(rec) = stream.message().await.map_err(Error::Other)? {
        match output {
            // One record per line, so that a followed feed can be consumed as it comes.
            Output::Json => println!("{}", record_value(&rec)?),
            Output::Table => println!(
                "{:>6}  {:<28} {:<18} {:<20} {:<14} {:<14} {:<20} {} -> {}",
                rec.global_seq,
                rec.at,
                rec.kind,
                rec.workflow,
                rec.instance_id,
                rec.actor_id,
                rec.transition,
                rec.from,
                rec.to
            ),
        }
    }
    Ok(())
}

/// One row per endpoint; [`Unreachable`] (after printing the rows) if some did not answer.
pub async fn cluster_status(conn: &Connection, output: Output, digest: bool) -> anyhow::Result<()> {
    let client = conn.client()?;
    let mut rows = Vec::new();
    let mut unreachable = Vec::new();
    if output == Output::Table {
        println!(
            "{:<22} {:>4} {:<10} {:>6} {:>8} {:>8}  {}",
            "ENDPOINT",
            "ID",
            "ROLE",
            "TERM",
            "LOG",
            "APPLIED",
            if digest { "DIGEST" } else { "LEADER" }
        );
    }
    for (i, endpoint) in client.endpoints().iter().enumerate() {
        match client.status_of(i, digest).await {
            Ok(s) => {
                if output == Output::Table {
                    let last = if digest {
                        s.digest[..16.min(s.digest.len())].to_string()
                    } else {
                        format!("{} ({})", s.leader_id, s.leader_addr)
                    };
                    println!(
                        "{:<22} {:>4} {:<10} {:>6} {:>8} {:>8}  {}",
                        endpoint,
                        s.node_id,
                        s.role,
                        s.term,
                        s.last_log_index,
                        s.applied_index,
                        last
                    );
                    if !s.space_alarm.is_empty() {
                        println!("{:<22} SPACE ALARM: {}", "", s.space_alarm);
                    }
                }
                rows.push(serde_json::json!({"endpoint": endpoint, "node_id": s.node_id, "role": s.role, "term": s.term, "leader_id": s.leader_id, "leader_addr": s.leader_addr, "last_log_index": s.last_log_index, "applied_index": s.applied_index, "digest": s.digest, "snapshot_index": s.snapshot_index, "cluster_time": s.cluster_time, "space_alarm": s.space_alarm, "data_dir_free_bytes": s.data_dir_free_bytes, "store_bytes": s.store_bytes, "members": s.members.iter().map(|m| serde_json::json!({"id": m.id, "addr": m.addr, "voter": m.voter})).collect::<Vec<_>>()}));
            }
            Err(e) => {
                unreachable.push(endpoint.clone());
                if output == Output::Table {
                    println!("{endpoint:<22} unreachable: {e}");
                }
                rows.push(serde_json::json!({"endpoint": endpoint, "error": e.to_string()}));
            }
        }
    }
    if output == Output::Json {
        println!("{}", serde_json::Value::Array(rows));
    }
    if !unreachable.is_empty() {
        return Err(Unreachable(unreachable).into());
    }
    Ok(())
}

pub async fn membership(
    conn: &Connection,
    output: Output,
    change: crate::MembershipChange,
) -> anyhow::Result<()> {
    let client = conn.client()?;
    let r = match change {
        crate::MembershipChange::Add { id, addr } => client.add_learner(id, &addr).await?,
        crate::MembershipChange::Promote { ids } => client.promote(ids).await?,
        crate::MembershipChange::Remove { id } => client.remove(id).await?,
    };
    match output {
        Output::Json => println!(
            "{}",
            serde_json::json!(
                r.members
                    .iter()
                    .map(|m| serde_json::json!({"id": m.id, "addr": m.addr, "voter": m.voter}))
                    .collect::<Vec<_>>()
            )
        ),
        Output::Table => {
            for m in &r.members {
                println!(
                    "{:>4} {:<22} {}",
                    m.id,
                    m.addr,
                    if m.voter { "voter" } else { "learner" }
                );
            }
        }
    }
    Ok(())
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

/// `lockstep health`: each endpoint's `grpc.health.v1` status of `service`. Ok(false) (exit
/// 1) if one answered anything but SERVING; [`Unreachable`] (exit 3) if one did not answer.
pub async fn health(
    conn: &Connection,
    output: Output,
    endpoint: Option<String>,
    service: &str,
) -> anyhow::Result<bool> {
    let mut conn = conn.clone();
    if let Some(endpoint) = endpoint {
        conn.endpoints = vec![endpoint];
    }
    let client = conn.client()?;
    let mut rows = Vec::new();
    let mut unreachable = Vec::new();
    let mut all_serving = true;
    for (i, endpoint) in client.endpoints().iter().enumerate() {
        let asked = std::time::Instant::now();
        match client.health_of(i, service).await {
            Ok(status) => {
                all_serving &= status == lockstep_client::HealthStatus::Serving;
                // A node short of space still serves reads (so it stays SERVING for probes),
                // but refuses client writes: say so. Best effort, within what is left of
                // --timeout for this node: a caller that may not read the cluster status, or
                // a slow node, just does not show it.
                let left = conn.timeout.saturating_sub(asked.elapsed());
                let alarm = match tokio::time::timeout(left, client.status_of(i, false)).await {
                    Ok(Ok(s)) => s.space_alarm,
                    _ => String::new(),
                };
                if output == Output::Table {
                    println!("{endpoint:<22} {}", status.as_str());
                    if !alarm.is_empty() {
                        println!("{:<22} SPACE ALARM: {alarm}", "");
                    }
                }
                rows.push(serde_json::json!({"endpoint": endpoint, "status": status.as_str(), "space_alarm": alarm}));
            }
            Err(e @ Error::NotFound(_)) => return Err(e.into()),
            Err(e) => {
                unreachable.push(endpoint.clone());
                if output == Output::Table {
                    println!("{endpoint:<22} unreachable: {e}");
                }
                rows.push(serde_json::json!({"endpoint": endpoint, "error": e.to_string()}));
            }
        }
    }
    if output == Output::Json {
        println!("{}", serde_json::Value::Array(rows));
    }
    if !unreachable.is_empty() {
        return Err(Unreachable(unreachable).into());
    }
    Ok(all_serving)
}

/// `lockstep cluster backup`: a checkpoint on the node that answers.
pub async fn backup(conn: &Connection, output: Output, name: &str) -> anyhow::Result<()> {
    let client = conn.client()?;
    let r = client.backup(name).await?;
    match output {
        Output::Json => println!(
            "{}",
            serde_json::json!({"node_id": r.node_id, "path": r.path, "applied_index": r.applied_index, "applied_term": r.applied_term, "bytes": r.bytes})
        ),
        Output::Table => println!(
            "node {} wrote {} (applied index {}, term {}, {} bytes)",
            r.node_id, r.path, r.applied_index, r.applied_term, r.bytes
        ),
    }
    Ok(())
}
