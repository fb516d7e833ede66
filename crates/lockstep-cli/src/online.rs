//! The commands that talk to a cluster over gRPC, through the client library.

use std::path::Path;

use anyhow::{Context, bail};
use lockstep_client::{Client, Error, Identity, Options, by_id, by_key, pb, request_id};
use lockstep_core::ActorKind;

use crate::Output;

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
    /// Act as this actor (development mode: the node trusts this name).
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
        Client::new(
            &self.endpoints,
            Some(Identity::new(&self.actor, kind, &roles)),
            Options::default(),
        )
        .map_err(anyhow::Error::msg)
    }

    fn request_id(&self) -> String {
        self.request_id.clone().unwrap_or_else(request_id)
    }
}

/// Exit code 1 for refusals and not-found, 3 for an unreachable cluster; the caller prints.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    match e.downcast_ref::<Error>() {
        Some(Error::Unavailable(..)) => 3,
        Some(_) => 1,
        None => 2,
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

fn instance_json(i: &pb::Instance) -> serde_json::Value {
    serde_json::json!({
        "id": i.id, "workflow": i.workflow, "key": i.key, "state": i.state, "version": i.version,
        "data": serde_json::from_str::<serde_json::Value>(&i.data_json).unwrap_or_default(),
        "created_by": i.created_by, "created_at": i.created_at, "entered_at": i.entered_at, "updated_at": i.updated_at,
        "definition_version": i.definition_version,
        "slas": i.slas.iter().map(|s| serde_json::json!({"name": s.name, "status": s.status, "breached": s.breached, "warned_percent": s.warned_percent, "remaining_ms": s.remaining_ms})).collect::<Vec<_>>(),
        "timers": i.timers.iter().map(|t| serde_json::json!({"id": t.id, "due_at": t.due_at})).collect::<Vec<_>>(),
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
        }
    }
    Ok(())
}

pub async fn list(
    conn: &Connection,
    output: Output,
    workflow: &str,
    state: Option<String>,
    sla: Option<String>,
    page_size: u32,
    page_token: Option<String>,
) -> anyhow::Result<()> {
    let request = pb::ListInstancesRequest {
        workflow: workflow.into(),
        state: state.unwrap_or_default(),
        sla_status: sla.unwrap_or_default(),
        updated_since: String::new(),
        page_size,
        page_token: page_token.unwrap_or_default(),
        consistency: 0,
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

pub async fn history(conn: &Connection, output: Output, instance: &str) -> anyhow::Result<()> {
    let r = conn.client()?.history(target(instance), 0).await?;
    match output {
        Output::Json => {
            for rec in &r.records {
                println!("{}", rec.record_json);
            }
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

pub async fn audit_verify(conn: &Connection, output: Output) -> anyhow::Result<bool> {
    let client = conn.client()?;
    let mut all_ok = true;
    let mut rows = Vec::new();
    for (index, endpoint) in client.endpoints().iter().enumerate() {
        // Verify runs on the node that answers: ask each endpoint in turn.
        let single = Client::new(std::slice::from_ref(endpoint), None, Options::default())
            .map_err(anyhow::Error::msg)?;
        let r = single.verify_audit().await;
        let _ = index;
        match r {
            Ok(v) => {
                all_ok &= v.ok;
                if output == Output::Table {
                    if v.ok {
                        println!(
                            "{endpoint}: ok, {} records, head {} {}",
                            v.records_checked,
                            v.head_seq,
                            &v.head_hash[..16.min(v.head_hash.len())]
                        );
                    } else {
                        println!(
                            "{endpoint}: BROKEN at record {}: {}",
                            v.broken_seq, v.reason
                        );
                    }
                }
                rows.push(serde_json::json!({"endpoint": endpoint, "ok": v.ok, "records_checked": v.records_checked, "broken_seq": v.broken_seq, "reason": v.reason, "head_seq": v.head_seq, "head_hash": v.head_hash}));
            }
            Err(e) => {
                all_ok = false;
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
    Ok(all_ok)
}

pub async fn audit_tail(conn: &Connection, from: u64, follow: bool) -> anyhow::Result<()> {
    let mut stream = conn.client()?.tail(from, follow).await?;
    while let Some(rec) = stream.message().await? {
        println!("{}", rec.record_json);
    }
    Ok(())
}

pub async fn cluster_status(conn: &Connection, output: Output, digest: bool) -> anyhow::Result<()> {
    let client = conn.client()?;
    let mut rows = Vec::new();
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
                }
                rows.push(serde_json::json!({"endpoint": endpoint, "node_id": s.node_id, "role": s.role, "term": s.term, "leader_id": s.leader_id, "leader_addr": s.leader_addr, "last_log_index": s.last_log_index, "applied_index": s.applied_index, "digest": s.digest, "snapshot_index": s.snapshot_index, "cluster_time": s.cluster_time, "members": s.members.iter().map(|m| serde_json::json!({"id": m.id, "addr": m.addr, "voter": m.voter})).collect::<Vec<_>>()}));
            }
            Err(e) => {
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
