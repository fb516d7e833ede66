//! `lockstep cluster` and `lockstep health`: status, membership, backups and health checks.

use super::*;

/// One row per endpoint; [`Unreachable`] (after printing the rows) if some did not answer.
pub async fn cluster_status(conn: &Connection, output: Output, digest: bool) -> anyhow::Result<()> {
    let client = conn.client()?;
    let mut answers = PerEndpoint::new(output);
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
                let digest_hex = s.digest.as_deref().unwrap_or_default();
                let leader_id = s.leader_id.unwrap_or(0);
                let leader_addr = s.leader_addr.as_deref().unwrap_or_default();
                let space_alarm = s.space_alarm.as_deref().unwrap_or_default();
                if output == Output::Table {
                    let last = if digest {
                        digest_hex[..16.min(digest_hex.len())].to_string()
                    } else {
                        format!("{leader_id} ({leader_addr})")
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
                    if let Some(alarm) = &s.space_alarm {
                        println!("{:<22} SPACE ALARM: {alarm}", "");
                    }
                    if s.log_format < s.log_format_readable {
                        println!(
                            "{:<22} log format {} (this build reads {}): raised once every member runs a build that reads it",
                            "", s.log_format, s.log_format_readable
                        );
                    }
                }
                let cluster_time = s.cluster_time.map(|t| t.to_string()).unwrap_or_default();
                answers.answered(serde_json::json!({"endpoint": endpoint, "node_id": s.node_id, "role": s.role.as_str(), "term": s.term, "leader_id": leader_id, "leader_addr": leader_addr, "last_log_index": s.last_log_index, "applied_index": s.applied_index, "digest": digest_hex, "snapshot_index": s.snapshot_index, "cluster_time": cluster_time, "space_alarm": space_alarm, "data_dir_free_bytes": s.data_dir_free_bytes, "store_bytes": s.store_bytes, "log_format": s.log_format, "log_format_readable": s.log_format_readable, "members": s.members.iter().map(|m| serde_json::json!({"id": m.id, "addr": m.addr, "voter": m.voter})).collect::<Vec<_>>()}));
            }
            Err(e) => answers.unreachable(endpoint, e),
        }
    }
    answers.finish()
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
    let mut answers = PerEndpoint::new(output);
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
                    Ok(Ok(s)) => s.space_alarm.unwrap_or_default(),
                    _ => String::new(),
                };
                if output == Output::Table {
                    println!("{endpoint:<22} {}", status.as_str());
                    if !alarm.is_empty() {
                        println!("{:<22} SPACE ALARM: {alarm}", "");
                    }
                }
                answers.answered(serde_json::json!({"endpoint": endpoint, "status": status.as_str(), "space_alarm": alarm}));
            }
            Err(e @ Error::NotFound(_)) => return Err(e.into()),
            Err(e) => answers.unreachable(endpoint, e),
        }
    }
    answers.finish()?;
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
