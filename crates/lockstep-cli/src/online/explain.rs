//! `lockstep explain INSTANCE`: why an instance is where it is. For every record of its
//! history, the definition version that governed it and where that version came from
//! (repository, commit, path), with the predicates evaluated and their results; then, for the
//! current state, every transition out of it and what it requires.

use std::collections::BTreeMap;

use lockstep_core::definition::{GateDef, TransitionDef};
use lockstep_core::validate::compile;

use super::*;

/// A definition version as `explain` shows it: where it came from, and its declaration.
struct Version {
    origin: String,
    definition: lockstep_core::Definition,
}

fn short(version: &str) -> &str {
    &version[..version.len().min(12)]
}

fn gate(name: &str, gate: &GateDef) -> String {
    match gate {
        GateDef::AfterEntering(after) => format!("{name} {} after entering", after.0),
        GateDef::Field(f) => match &f.offset {
            Some(offset) => format!("{name} data.{} + {}", f.field, offset.0),
            None => format!("{name} data.{}", f.field),
        },
    }
}

/// What taking `t` requires, in the order the engine checks it.
fn requires(t: &TransitionDef) -> Vec<String> {
    let mut out = Vec::new();
    if t.system {
        out.push("system: only the engine takes it".to_string());
    } else {
        match &t.allow {
            Some(allow) => out.push(format!("allow `{allow}`")),
            None => out.push("no `allow`: no human or service actor may take it".to_string()),
        }
    }
    if let Some(g) = &t.not_before {
        out.push(gate("not_before", g));
    }
    if let Some(g) = &t.not_after {
        out.push(gate("not_after", g));
    }
    if let Some(guard) = &t.guard {
        out.push(format!("guard `{guard}`"));
    }
    if let Some(event) = &t.on {
        out.push(format!("on event `{event}`"));
    }
    if t.payload.is_some() {
        out.push("a payload matching its schema".to_string());
    }
    for effect in &t.effects {
        if let Some(task) = &effect.task {
            out.push(format!(
                "then a task `{}` on queue `{}`",
                task.task_type, task.queue
            ));
        }
        if let Some(emit) = &effect.emit {
            out.push(format!("then emits `{}`", emit.event));
        }
    }
    out
}

pub async fn explain(conn: &Connection, output: Output, instance: &str) -> anyhow::Result<()> {
    let client = conn.client()?;
    let read = client
        .get(target(instance), pb::ReadConsistency::Linearizable)
        .await?;
    let i = read.instance;
    let records = client.history(by_id(&i.id), 0).await?;
    // Every version the history names, and the current one, read once each.
    let mut versions: BTreeMap<String, Version> = BTreeMap::new();
    let named = records
        .iter()
        .map(|r| r.record.definition_version.clone())
        .chain(std::iter::once(i.definition_version.clone()));
    for version in named {
        if versions.contains_key(&version) {
            continue;
        }
        let d = client.get_definition(&i.workflow, Some(&version)).await?;
        let compiled = compile(None, &d.source, &lockstep_core::Limits::default())
            .map_err(|_| anyhow::anyhow!("version {} of `{}` does not compile with this lockstep: is it older than the cluster?", short(&version), i.workflow))?;
        versions.insert(
            version,
            Version {
                origin: origin(&d.provenance),
                definition: compiled.definition,
            },
        );
    }
    let current = &versions[&i.definition_version];
    let from_here: Vec<(&String, &TransitionDef)> = current
        .definition
        .transitions
        .iter()
        .filter(|(_, t)| t.from.iter().any(|s| s == &i.state))
        .collect();
    match output {
        Output::Json => {
            let history: Vec<serde_json::Value> = records
                .iter()
                .map(|rec| {
                    let r = &rec.record;
                    serde_json::json!({
                        "seq": rec.global_seq,
                        "instance_seq": rec.instance_seq,
                        "at": r.at.to_string(),
                        "kind": r.kind.name(),
                        "transition": r.transition,
                        "from": r.from,
                        "to": r.to,
                        "actor": { "id": r.actor.id, "kind": r.actor.kind, "roles": r.actor.roles, "authn": r.actor.authn },
                        "definition_version": r.definition_version,
                        "provenance": versions[&r.definition_version].origin,
                        "predicates": r.predicates.iter().map(|p| serde_json::json!({
                            "role": p.role, "expression": p.expression, "result": p.result,
                        })).collect::<Vec<_>>(),
                        "note": r.note,
                    })
                })
                .collect();
            let transitions: Vec<serde_json::Value> = from_here
                .iter()
                .map(|(name, t)| {
                    serde_json::json!({ "transition": name, "to": t.to, "requires": requires(t) })
                })
                .collect();
            println!(
                "{}",
                serde_json::json!({
                    "instance_id": i.id,
                    "workflow": i.workflow,
                    "state": i.state,
                    "version": i.version,
                    "definition_version": i.definition_version,
                    "provenance": current.origin,
                    "history": history,
                    "transitions": transitions,
                })
            );
        }
        Output::Table => {
            println!(
                "{} ({}{}) in state {}, version {}, running {} from {}",
                i.id,
                i.workflow,
                i.key
                    .as_ref()
                    .map(|k| format!(" key {k}"))
                    .unwrap_or_default(),
                i.state,
                i.version,
                short(&i.definition_version),
                current.origin
            );
            println!("history");
            for rec in &records {
                let r = &rec.record;
                let step = match (&r.transition, &r.from, &r.to) {
                    (Some(t), Some(from), Some(to)) => format!("{t}: {from} → {to}"),
                    (None, None, Some(to)) => format!("→ {to}"),
                    _ => r.kind.name(),
                };
                println!(
                    "  #{:<3} {}  {:<16} {}  by {} ({}, {})  under {} from {}",
                    rec.instance_seq,
                    r.at,
                    r.kind.name(),
                    step,
                    r.actor.id,
                    r.actor.kind,
                    r.actor.authn,
                    short(&r.definition_version),
                    versions[&r.definition_version].origin
                );
                for p in &r.predicates {
                    println!("        {} `{}` was {}", p.role, p.expression, p.result);
                }
                if let Some(note) = &r.note {
                    println!("        {note}");
                }
            }
            if from_here.is_empty() {
                println!("from `{}`: no transition (a final state)", i.state);
            } else {
                println!("from `{}`", i.state);
            }
            for (name, t) in from_here {
                println!("  {name} → {}: {}", t.to, requires(t).join("; "));
            }
        }
    }
    Ok(())
}
