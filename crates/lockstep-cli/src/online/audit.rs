//! `lockstep audit`: verify the chains on every node, anchor, the security log and the tail.

use super::*;

/// `SEQ:HASH`, as `lockstep audit anchor` prints it.
pub fn parse_anchor(text: &str) -> anyhow::Result<(u64, String)> {
    let Some((seq, hash)) = text.trim().split_once(':') else {
        bail!(
            "`{text}` is not an anchor: expected SEQ:HASH as `lockstep audit anchor` prints it, e.g. 1042:3f9c…"
        );
    };
    let Some(seq) = seq.parse::<u64>().ok().filter(|s| *s > 0) else {
        bail!("`{seq}` in the anchor is not a record sequence (1 or more)");
    };
    let hash = hash.to_ascii_lowercase();
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("`{hash}` in the anchor is not a chain hash: expected 64 hex digits");
    }
    Ok((seq, hash))
}

/// One endpoint's answers to `audit verify`.
struct NodeChain {
    /// Its index in the client's endpoint list.
    index: usize,
    endpoint: String,
    verified: AuditVerification,
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
        .filter(|n| n.verified.ok())
        .map(|n| n.verified.head_seq)
        .min()
        .unwrap_or(0);
    for n in nodes.iter_mut().filter(|n| n.verified.ok()) {
        if common > 0 {
            n.at_common = at_hash(&client, n.index, common).await;
        }
        if let Some((seq, _)) = &anchor {
            n.at_anchor = at_hash(&client, n.index, *seq).await;
        }
    }
    let mut problems = Vec::new();
    for n in &nodes {
        if let Some(broken) = &n.verified.broken {
            problems.push(format!(
                "{}: BROKEN at record {}: {}",
                n.endpoint, broken.seq, broken.reason
            ));
        }
    }
    let sound: Vec<&NodeChain> = nodes.iter().filter(|n| n.verified.ok()).collect();
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
                if v.ok() {
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
                    let (broken_seq, reason) = v
                        .broken
                        .as_ref()
                        .map_or((0, ""), |b| (b.seq, b.reason.as_str()));
                    serde_json::json!({"endpoint": n.endpoint, "ok": v.ok(), "records_checked": v.records_checked, "broken_seq": broken_seq, "reason": reason, "head_seq": v.head_seq, "head_hash": v.head_hash, "hash_at_common": n.at_common, "hash_at_anchor": n.at_anchor})
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
        .ok()
        .and_then(|v| v.at_hash)
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
            Ok(v) if v.ok() && v.head_seq > 0 => {
                match output {
                    Output::Table => println!("{}:{}", v.head_seq, v.head_hash),
                    Output::Json => println!(
                        "{}",
                        serde_json::json!({"seq": v.head_seq, "hash": v.head_hash, "endpoint": endpoint, "anchor": format!("{}:{}", v.head_seq, v.head_hash)})
                    ),
                }
                return Ok(true);
            }
            Ok(AuditVerification {
                broken: Some(broken),
                ..
            }) => {
                last_error = format!(
                    "{endpoint}: its chain is BROKEN at record {}: {}",
                    broken.seq, broken.reason
                )
            }
            Ok(_) => last_error = format!("{endpoint}: the audit log is empty"),
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
    let mut answers = PerEndpoint::new(output);
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
                            e.at.to_string(),
                            e.kind,
                            e.code,
                            e.actor.as_deref().unwrap_or("-"),
                            e.method,
                            e.reason
                        );
                    }
                }
                let events: Vec<serde_json::Value> = log
                    .events
                    .iter()
                    .map(|e| {
                        serde_json::json!({"seq": e.seq, "at": e.at.to_string(), "kind": e.kind.as_str(), "method": e.method,
                            "actor": e.actor.as_deref().unwrap_or_default(), "remote": e.remote.as_deref().unwrap_or_default(), "code": e.code, "reason": e.reason})
                    })
                    .collect();
                answers.answered(
                    serde_json::json!({"endpoint": endpoint, "node_id": log.node_id,
                    "total": log.total, "capacity": log.capacity, "events": events}),
                );
            }
            Err(e @ (Error::Unauthenticated(_) | Error::PermissionDenied(_))) => {
                return Err(e.into());
            }
            Err(e) => answers.unreachable(endpoint, e),
        }
    }
    answers.finish()?;
    Ok(true)
}

pub async fn audit_tail(
    conn: &Connection,
    output: Output,
    from: u64,
    follow: bool,
) -> anyhow::Result<()> {
    let mut feed = conn.client()?.tail(from, follow).await?;
    if output == Output::Table {
        println!(
            "{:>6}  {:<28} {:<18} {:<20} {:<14} {:<14} {:<20} FROM -> TO",
            "SEQ", "AT", "KIND", "WORKFLOW", "INSTANCE", "ACTOR", "TRANSITION"
        );
    }
    while let Some(rec) = feed.next().await? {
        let r = &rec.record;
        match output {
            // One record per line, so that a followed feed can be consumed as it comes.
            Output::Json => println!("{}", record_value(&rec)?),
            Output::Table => println!(
                "{:>6}  {:<28} {:<18} {:<20} {:<14} {:<14} {:<20} {} -> {}",
                rec.global_seq,
                r.at.to_string(),
                r.kind.name(),
                r.workflow,
                r.instance_id,
                r.actor.id,
                or_empty(&r.transition),
                or_empty(&r.from),
                or_empty(&r.to)
            ),
        }
    }
    Ok(())
}
