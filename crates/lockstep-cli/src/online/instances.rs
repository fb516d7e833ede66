//! Commands on instances: create, transition, send events, resolve incidents, migrate, get,
//! list and history.

use super::*;

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

pub async fn redact(
    conn: &Connection,
    output: Output,
    instance: &str,
    fields: &[String],
) -> anyhow::Result<()> {
    let c = conn
        .client()?
        .redact(&conn.request_id(), target(instance), fields)
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

fn parse_mapping(text: &str) -> anyhow::Result<(String, String)> {
    match text.split_once('=') {
        Some((old, new)) if !old.trim().is_empty() && !new.trim().is_empty() => {
            Ok((old.trim().to_string(), new.trim().to_string()))
        }
        _ => bail!(
            "`{text}` is not OLD=NEW (a state of the old version, `=`, a state of the new one)"
        ),
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
    let mut migrated: Vec<lockstep_client::MigratedInstance> = Vec::new();
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
        request.page_token = r.next_page_token.unwrap_or_default();
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

fn instance_json(i: &Instance) -> serde_json::Value {
    let time = |t: Option<Timestamp>| t.map(|t| t.to_string());
    serde_json::json!({
        "id": i.id, "workflow": i.workflow, "key": key_text(i), "state": i.state, "version": i.version,
        "data": i.data,
        "created_by": i.created_by, "created_at": i.created_at.to_string(), "entered_at": i.entered_at.to_string(), "updated_at": i.updated_at.to_string(),
        "definition_version": i.definition_version,
        "slas": i.slas.iter().map(|(name, s)| serde_json::json!({"name": name, "status": s.status.name(), "breached": s.breached, "warned_percent": warned_percent(s), "remaining_ms": s.remaining_ms})).collect::<Vec<_>>(),
        "timers": i.timers.iter().map(|t| serde_json::json!({"id": t.id, "due_at": t.due_at.to_string(), "kind": t.kind_name()})).collect::<Vec<_>>(),
        "tasks": i.tasks.iter().map(|t| serde_json::json!({
            "id": t.id, "queue": t.queue, "task_type": t.task_type, "origin": t.origin,
            "status": t.status.name(), "attempt": t.attempt, "worker": t.worker,
            "lease_expires_at": time(t.lease_expires_at), "last_error": t.last_error,
            "input": t.input, "result": t.result,
        })).collect::<Vec<_>>(),
        "incidents": i.incidents.iter().map(|inc| serde_json::json!({
            "id": inc.id, "task_id": inc.task_id, "reason": inc.reason,
            "opened_at": inc.opened_at.to_string(), "resolved_at": time(inc.resolved_at),
        })).collect::<Vec<_>>(),
    })
}

/// The business key as printed: empty when the instance has none.
fn key_text(i: &Instance) -> &str {
    i.key.as_deref().unwrap_or_default()
}

/// The highest warning threshold reached, 0 for none (as the wire and earlier output say).
fn warned_percent(s: &SlaView) -> u32 {
    s.warned.map(u32::from).unwrap_or(0)
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
    let InstanceRead { instance: i, read } =
        conn.client()?.get(target(instance), consistency).await?;
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
                match &i.key {
                    None => String::new(),
                    Some(key) => format!("key {key}"),
                },
                if read.stale { "  [stale read]" } else { "" }
            );
            println!("  state     {}  (since {})", i.state, i.entered_at);
            println!("  version   {}", i.version);
            println!("  data      {}", i.data);
            for (name, s) in &i.slas {
                println!(
                    "  sla       {}: {}{}{}  {}",
                    name,
                    s.status.name(),
                    match s.warned {
                        Some(percent) if percent > 0 => format!(", warned {percent}%"),
                        _ => String::new(),
                    },
                    if s.breached { ", BREACHED" } else { "" },
                    remaining(s.remaining_ms)
                );
            }
            for t in &i.timers {
                println!("  timer     {} ({}) due {}", t.id, t.kind_name(), t.due_at);
            }
            for t in &i.tasks {
                println!(
                    "  task      {} on queue {}: {} (attempt {}){}",
                    t.id,
                    t.queue,
                    t.status.name(),
                    t.attempt,
                    t.last_error
                        .as_ref()
                        .map(|e| format!(", last error: {e}"))
                        .unwrap_or_default()
                );
            }
            for inc in &i.incidents {
                println!(
                    "  incident  {} {}: {}",
                    inc.id,
                    if inc.resolved_at.is_none() {
                        "OPEN"
                    } else {
                        "resolved"
                    },
                    inc.reason
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
    /// `--where` conditions as written (`amount>=10000`).
    pub conditions: Vec<String>,
}

/// A `--where` condition: FIELD, an operator (`=`, `<`, `<=`, `>`, `>=`, `^=`) and a value
/// (JSON, or bare text for a string field).
pub fn data_filter(text: &str) -> anyhow::Result<pb::DataFilter> {
    let at = text.find(['=', '<', '>', '^']).ok_or_else(|| {
        anyhow::anyhow!(
            "--where `{text}` has no comparison; write FIELD=VALUE, FIELD<VALUE, FIELD<=VALUE, FIELD>VALUE, FIELD>=VALUE or FIELD^=PREFIX"
        )
    })?;
    let (field, rest) = text.split_at(at);
    let op = ["<=", ">=", "^=", "==", "=", "<", ">"]
        .into_iter()
        .find(|op| rest.starts_with(op))
        .ok_or_else(|| anyhow::anyhow!("--where `{text}`: `^` must be `^=` (a prefix)"))?;
    let field = field.trim();
    if field.is_empty() {
        anyhow::bail!("--where `{text}` names no field; write e.g. customer_id=C-7");
    }
    Ok(pb::DataFilter {
        field: field.into(),
        op: op.into(),
        value_json: rest[op.len()..].trim().into(),
    })
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
        r#where: filter
            .conditions
            .iter()
            .map(|c| data_filter(c))
            .collect::<anyhow::Result<_>>()?,
    };
    let r = conn.client()?.list(request).await?;
    match output {
        Output::Json => println!(
            "{}",
            serde_json::json!({"instances": r.instances.iter().map(instance_json).collect::<Vec<_>>(), "next_page_token": r.next_page_token.as_deref().unwrap_or_default(), "uncovered_versions": r.uncovered_versions})
        ),
        Output::Table => {
            println!(
                "{:<14} {:<16} {:<22} {:>7}  UPDATED",
                "ID", "KEY", "STATE", "VERSION"
            );
            for i in &r.instances {
                println!(
                    "{:<14} {:<16} {:<22} {:>7}  {}",
                    i.id,
                    key_text(i),
                    i.state,
                    i.version,
                    i.updated_at
                );
            }
            if let Some(token) = &r.next_page_token {
                println!("(more: --page-token {token})");
            }
            if !r.uncovered_versions.is_empty() {
                println!(
                    "(not covered: versions {} do not index every --where field; migrate their instances to list them)",
                    r.uncovered_versions
                        .iter()
                        .map(|v| &v[..v.len().min(12)])
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
    }
    Ok(())
}

pub async fn history(conn: &Connection, output: Output, instance: &str) -> anyhow::Result<()> {
    let records = conn.client()?.history(target(instance), 0).await?;
    match output {
        Output::Json => {
            let records = records
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
            for rec in &records {
                let r = &rec.record;
                println!(
                    "{:>5} {:>4}  {:<28} {:<16} {:<14} {:<24} {} -> {}",
                    rec.global_seq,
                    rec.instance_seq,
                    r.at.to_string(),
                    r.kind.name(),
                    r.actor.id,
                    or_empty(&r.transition),
                    or_empty(&r.from),
                    or_empty(&r.to)
                );
            }
        }
    }
    Ok(())
}

/// An SLA's remaining budget for people: `remaining 15h59m`, or `overdue by 2h` once spent
/// (whole seconds).
fn remaining(ms: i64) -> String {
    let span = lockstep_core::duration::Duration::for_people(ms.unsigned_abs());
    if ms >= 0 {
        format!("remaining {span}")
    } else {
        format!("overdue by {span}")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn where_conditions_read_field_operator_and_value() {
        let f = super::data_filter("amount>=10000").unwrap();
        assert_eq!(
            (f.field.as_str(), f.op.as_str(), f.value_json.as_str()),
            ("amount", ">=", "10000")
        );
        let f = super::data_filter("customer_id^=C-").unwrap();
        assert_eq!((f.op.as_str(), f.value_json.as_str()), ("^=", "C-"));
        let f = super::data_filter("note = a=b").unwrap();
        assert_eq!(
            (f.field.as_str(), f.op.as_str(), f.value_json.as_str()),
            ("note", "=", "a=b")
        );
        let e = super::data_filter("amount").unwrap_err().to_string();
        assert!(e.contains("FIELD=VALUE"), "{e}");
        let e = super::data_filter("=1").unwrap_err().to_string();
        assert!(e.contains("names no field"), "{e}");
    }

    #[test]
    fn an_sla_budget_prints_for_people() {
        assert_eq!(super::remaining(57_600_000), "remaining 16h");
        assert_eq!(super::remaining(1_500), "remaining 2s");
        assert_eq!(super::remaining(0), "remaining 0s");
        assert_eq!(super::remaining(-7_200_000), "overdue by 2h");
    }
}
