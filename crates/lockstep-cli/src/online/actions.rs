//! What the caller may do now: `lockstep actions` (one instance) and `lockstep inbox` (the
//! instances of some workflows on which the caller has something to do).

use lockstep_client::{Action, Availability};

use super::*;

/// When an action can be taken, for people: `now`, or `in 59m58s (2026-…)`.
fn when(action: &Action, at: Timestamp) -> String {
    match action.availability {
        Availability::Now => "now".into(),
        Availability::Gated { opens_at } => {
            let wait_ms = opens_at.as_millis().saturating_sub(at.as_millis());
            let wait =
                lockstep_core::duration::Duration::for_people(u64::try_from(wait_ms).unwrap_or(0));
            format!("in {wait} ({opens_at})")
        }
    }
}

fn action_json(action: &Action) -> serde_json::Value {
    let opens_at = match action.availability {
        Availability::Now => serde_json::Value::Null,
        Availability::Gated { opens_at } => opens_at.to_string().into(),
    };
    serde_json::json!({
        "transition": action.transition,
        "to": action.to,
        "now": action.availability == Availability::Now,
        "opens_at": opens_at,
        "depends_on_payload": action.depends_on_payload,
    })
}

fn print_action(action: &Action, at: Timestamp, indent: &str) {
    println!(
        "{indent}{:<16} → {:<22} {}{}",
        action.transition,
        action.to,
        when(action, at),
        if action.depends_on_payload {
            "  (depends on the payload)"
        } else {
            ""
        }
    );
}

pub async fn actions(conn: &Connection, output: Output, instance: &str) -> anyhow::Result<()> {
    let read = conn
        .client()?
        .actions(target(instance), pb::ReadConsistency::Linearizable)
        .await?;
    match output {
        Output::Json => println!(
            "{}",
            serde_json::json!({
                "instance_id": read.instance_id,
                "workflow": read.workflow,
                "state": read.state,
                "version": read.version,
                "at": read.at.to_string(),
                "actions": read.actions.iter().map(action_json).collect::<Vec<_>>(),
            })
        ),
        Output::Table => {
            println!(
                "{} ({}) in state {}, version {}",
                read.instance_id, read.workflow, read.state, read.version
            );
            if read.actions.is_empty() {
                println!(
                    "  nothing you may do now: no transition from `{}` is allowed to you",
                    read.state
                );
            }
            for action in &read.actions {
                print_action(action, read.at, "  ");
            }
        }
    }
    Ok(())
}

/// What `lockstep inbox` reads.
pub struct InboxQuery<'a> {
    pub workflows: &'a [String],
    pub states: &'a [String],
    pub page_size: u32,
    pub page_token: Option<&'a str>,
}

pub async fn inbox(conn: &Connection, output: Output, query: InboxQuery<'_>) -> anyhow::Result<()> {
    let page = conn
        .client()?
        .inbox(
            query.workflows,
            query.states,
            query.page_size,
            query.page_token,
        )
        .await?;
    match output {
        Output::Json => {
            let items: Vec<serde_json::Value> = page
                .items
                .iter()
                .map(|i| {
                    serde_json::json!({
                        "instance_id": i.instance_id,
                        "workflow": i.workflow,
                        "key": i.key,
                        "state": i.state,
                        "version": i.version,
                        "updated_at": i.updated_at.to_string(),
                        "actions": i.actions.iter().map(action_json).collect::<Vec<_>>(),
                    })
                })
                .collect();
            println!(
                "{}",
                serde_json::json!({
                    "items": items,
                    "next_page_token": page.next_page_token,
                    "truncated": page.truncated,
                    "scanned": page.scanned,
                    "at": page.at.to_string(),
                })
            );
        }
        Output::Table => {
            if page.items.is_empty() {
                println!("nothing to do in {} instances read", page.scanned);
            }
            for item in &page.items {
                println!(
                    "{} ({}{}) in state {}",
                    item.instance_id,
                    item.workflow,
                    item.key
                        .as_ref()
                        .map(|k| format!(" key {k}"))
                        .unwrap_or_default(),
                    item.state
                );
                for action in &item.actions {
                    print_action(action, page.at, "  ");
                }
            }
            if let Some(token) = &page.next_page_token {
                println!(
                    "{}more: lockstep inbox {} --page-token {token}",
                    if page.truncated {
                        format!("stopped after reading {} instances; ", page.scanned)
                    } else {
                        String::new()
                    },
                    query.workflows.join(" ")
                );
            }
        }
    }
    Ok(())
}
