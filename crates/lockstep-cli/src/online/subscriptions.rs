//! `lockstep subscriptions`: webhook subscriptions (create, list, get, pause, resume, delete).

use super::*;

/// What `subscriptions create` asks for.
#[derive(Debug, Clone)]
pub struct NewSubscription {
    pub name: String,
    pub url: String,
    pub secret: String,
    pub workflows: Vec<String>,
    pub kinds: Vec<String>,
    pub events: Vec<String>,
    pub start_after: Option<u64>,
}

fn lag(s: &pb::Subscription) -> u64 {
    s.audit_head.saturating_sub(s.cursor)
}

fn filter_text(s: &pb::Subscription) -> String {
    let f = s.filter.clone().unwrap_or_default();
    let mut parts = Vec::new();
    for (what, list) in [
        ("workflow", &f.workflows),
        ("kind", &f.kinds),
        ("event", &f.events),
    ] {
        if !list.is_empty() {
            parts.push(format!("{what}={}", list.join("|")));
        }
    }
    if parts.is_empty() {
        "everything".into()
    } else {
        parts.join(" ")
    }
}

fn subscription_json(s: &pb::Subscription) -> serde_json::Value {
    let f = s.filter.clone().unwrap_or_default();
    serde_json::json!({
        "name": s.name,
        "url": s.url,
        "filter": {"workflows": f.workflows, "kinds": f.kinds, "events": f.events},
        "secret": s.secret,
        "cursor": s.cursor,
        "audit_head": s.audit_head,
        "lag": lag(s),
        "paused": s.paused,
        "paused_by": s.paused_by,
        "paused_reason": s.paused_reason,
        "paused_at": s.paused_at,
        "last_error": s.last_error,
        "created_by": s.created_by,
        "created_at": s.created_at,
    })
}

fn print_one(output: Output, s: &pb::Subscription) {
    match output {
        Output::Json => println!("{}", subscription_json(s)),
        Output::Table => {
            let state = if s.paused { "paused" } else { "active" };
            println!("{}  {state}  {}", s.name, s.url);
            println!("  filter:   {}", filter_text(s));
            println!("  secret:   {}", s.secret);
            println!(
                "  cursor:   {} of {} ({} behind)",
                s.cursor,
                s.audit_head,
                lag(s)
            );
            if s.paused {
                println!(
                    "  paused:   {} by {}: {}",
                    s.paused_at, s.paused_by, s.paused_reason
                );
            }
            if !s.last_error.is_empty() {
                println!("  error:    {}", s.last_error);
            }
            println!("  created:  {} by {}", s.created_at, s.created_by);
        }
    }
}

pub async fn subscription_create(
    conn: &Connection,
    output: Output,
    new: NewSubscription,
) -> anyhow::Result<()> {
    let filter = pb::SubscriptionFilter {
        workflows: new.workflows,
        kinds: new.kinds,
        events: new.events,
    };
    let s = conn
        .client()?
        .create_subscription(
            &conn.request_id(),
            &new.name,
            &new.url,
            &new.secret,
            filter,
            new.start_after,
        )
        .await?;
    print_one(output, &s);
    Ok(())
}

pub async fn subscription_list(conn: &Connection, output: Output) -> anyhow::Result<()> {
    let all = conn.client()?.subscriptions().await?;
    match output {
        Output::Json => println!(
            "{}",
            serde_json::Value::Array(all.iter().map(subscription_json).collect())
        ),
        Output::Table => {
            if all.is_empty() {
                println!(
                    "no subscriptions; create one with `lockstep subscriptions create NAME --url URL --secret NAME`"
                );
                return Ok(());
            }
            println!(
                "{:<20} {:<7} {:>8} {:<40} {:<30} LAST ERROR",
                "NAME", "STATE", "LAG", "URL", "FILTER"
            );
            for s in &all {
                let error = if s.paused {
                    s.paused_reason.as_str()
                } else {
                    s.last_error.as_str()
                };
                println!(
                    "{:<20} {:<7} {:>8} {:<40} {:<30} {}",
                    s.name,
                    if s.paused { "paused" } else { "active" },
                    lag(s),
                    s.url,
                    filter_text(s),
                    error
                );
            }
        }
    }
    Ok(())
}

pub async fn subscription_get(conn: &Connection, output: Output, name: &str) -> anyhow::Result<()> {
    let s = conn.client()?.subscription(name).await?;
    print_one(output, &s);
    Ok(())
}

pub async fn subscription_pause(
    conn: &Connection,
    output: Output,
    name: &str,
    reason: &str,
) -> anyhow::Result<()> {
    let s = conn
        .client()?
        .pause_subscription(&conn.request_id(), name, reason)
        .await?;
    print_one(output, &s);
    Ok(())
}

pub async fn subscription_resume(
    conn: &Connection,
    output: Output,
    name: &str,
) -> anyhow::Result<()> {
    let s = conn
        .client()?
        .resume_subscription(&conn.request_id(), name)
        .await?;
    print_one(output, &s);
    Ok(())
}

pub async fn subscription_delete(
    conn: &Connection,
    output: Output,
    name: &str,
) -> anyhow::Result<()> {
    let s = conn
        .client()?
        .delete_subscription(&conn.request_id(), name)
        .await?;
    match output {
        Output::Json => println!("{}", subscription_json(&s)),
        Output::Table => println!(
            "deleted {} (it had delivered through audit record {})",
            s.name, s.cursor
        ),
    }
    Ok(())
}
