//! `lockstep diff OLD NEW`: what a change to definitions means, for review. Each side is a
//! definition file or a folder of them; workflows are matched by name.

use std::collections::BTreeMap;
use std::path::PathBuf;

use lockstep_core::diff::{
    DefinitionDiff, ItemChange, Section, StructureChange, TrustEffect, diff,
};
use lockstep_core::validate::CompiledDefinition;
use serde_json::Value;

use crate::Output;

/// How one workflow differs between the two sides.
enum Status {
    Added,
    Removed,
    Changed(DefinitionDiff),
    Unchanged,
}

impl Status {
    fn name(&self) -> &'static str {
        match self {
            Status::Added => "added",
            Status::Removed => "removed",
            Status::Changed(_) => "changed",
            Status::Unchanged => "unchanged",
        }
    }
}

/// The definitions of one side, by workflow name.
fn side(path: &PathBuf) -> anyhow::Result<BTreeMap<String, CompiledDefinition>> {
    let mut out = BTreeMap::new();
    for file in crate::offline::collect(std::slice::from_ref(path), "workflow")? {
        let compiled = crate::offline::load(&file)?;
        if let Some(first) = out.insert(compiled.name().to_string(), compiled) {
            anyhow::bail!(
                "{} defines workflow `{}` twice (also in {}); keep one definition per workflow",
                path.display(),
                first.name(),
                file.display()
            );
        }
    }
    Ok(out)
}

/// Compares OLD and NEW; returns whether anything changed.
pub fn run(old: &PathBuf, new: &PathBuf, output: Output, markdown: bool) -> anyhow::Result<bool> {
    let (old, new) = (side(old)?, side(new)?);
    let names: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    let workflows: Vec<(String, Status)> = names
        .into_iter()
        .map(|name| {
            let status = match (old.get(name), new.get(name)) {
                (None, Some(_)) => Status::Added,
                (Some(_), None) => Status::Removed,
                (Some(a), Some(b)) => {
                    let d = diff(&a.definition, &b.definition);
                    if d.is_empty() {
                        Status::Unchanged
                    } else {
                        Status::Changed(d)
                    }
                }
                (None, None) => Status::Unchanged,
            };
            (name.clone(), status)
        })
        .collect();
    let changed = workflows
        .iter()
        .any(|(_, s)| !matches!(s, Status::Unchanged));
    if output == Output::Json {
        let list: Vec<Value> = workflows
            .iter()
            .map(|(name, status)| {
                let mut v = serde_json::json!({ "workflow": name, "status": status.name() });
                if let Status::Changed(d) = status {
                    v["structure"] = serde_json::to_value(&d.structure).unwrap_or_default();
                    v["trust"] = serde_json::to_value(&d.trust).unwrap_or_default();
                    v["time"] = serde_json::to_value(&d.time).unwrap_or_default();
                }
                v
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({ "changed": changed, "workflows": list })
        );
    } else if markdown {
        print!("{}", as_markdown(&workflows));
    } else {
        print!("{}", as_text(&workflows));
    }
    Ok(changed)
}

fn show(value: &Option<Value>) -> String {
    match value {
        None => "(none)".into(),
        Some(Value::String(s)) => format!("`{s}`"),
        Some(v) => format!("`{v}`"),
    }
}

fn structure_line(c: &StructureChange) -> String {
    let what = format!("{} `{}`", c.section.as_str(), c.name);
    match &c.change {
        ItemChange::Added => format!("{what} added"),
        ItemChange::Removed => format!("{what} removed"),
        ItemChange::Changed { fields } => {
            let parts: Vec<String> = fields
                .iter()
                .map(|f| {
                    if c.section == Section::Workflow {
                        format!("{} → {}", show(&f.old), show(&f.new))
                    } else {
                        format!("{}: {} → {}", f.field, show(&f.old), show(&f.new))
                    }
                })
                .collect();
            format!("{what} changed: {}", parts.join("; "))
        }
    }
}

fn trust_line(t: &lockstep_core::diff::TrustChange) -> String {
    let who = t.principal.to_string();
    let when = t
        .condition
        .as_ref()
        .map(|c| format!(" (when `{c}`)"))
        .unwrap_or_default();
    match &t.effect {
        TrustEffect::Gains => format!("{who} gains `{}`{when}", t.transition),
        TrustEffect::Loses => format!("{who} loses `{}`{when}", t.transition),
        TrustEffect::NeedsReview { old, new } => format!(
            "{who}: `{}` changed, needs review: {} → {}",
            t.transition,
            show(&old.clone().map(Value::String)),
            show(&new.clone().map(Value::String))
        ),
    }
}

fn time_line(t: &lockstep_core::diff::TimeChange) -> String {
    if t.field.is_empty() {
        let verb = if t.new.is_some() { "added" } else { "removed" };
        format!("{} `{}` {verb}", t.section.as_str(), t.name)
    } else {
        format!(
            "{} `{}` {}: {} → {}",
            t.section.as_str(),
            t.name,
            t.field,
            show(&t.old),
            show(&t.new)
        )
    }
}

fn as_text(workflows: &[(String, Status)]) -> String {
    let mut out = String::new();
    for (name, status) in workflows {
        match status {
            Status::Changed(d) => {
                out += &format!(
                    "workflow {name}: changed ({} in structure, {} in trust, {} in time)\n",
                    d.structure.len(),
                    d.trust.len(),
                    d.time.len()
                );
                for (title, lines) in [
                    (
                        "structure",
                        d.structure.iter().map(structure_line).collect(),
                    ),
                    ("trust", d.trust.iter().map(trust_line).collect()),
                    ("time", d.time.iter().map(time_line).collect::<Vec<_>>()),
                ] {
                    if !lines.is_empty() {
                        out += &format!("  {title}\n");
                        for line in lines {
                            out += &format!("    {line}\n");
                        }
                    }
                }
            }
            other => out += &format!("workflow {name}: {}\n", other.name()),
        }
    }
    out
}

fn as_markdown(workflows: &[(String, Status)]) -> String {
    let mut out = String::from("## Workflow changes\n\n");
    for (name, status) in workflows {
        match status {
            Status::Changed(d) => {
                out += &format!("### `{name}`: changed\n\n");
                for (title, lines) in [
                    (
                        "Structure",
                        d.structure.iter().map(structure_line).collect(),
                    ),
                    (
                        "Trust (who may do what)",
                        d.trust.iter().map(trust_line).collect(),
                    ),
                    (
                        "Time (budgets, calendars, gates, expiries)",
                        d.time.iter().map(time_line).collect::<Vec<_>>(),
                    ),
                ] {
                    if !lines.is_empty() {
                        out += &format!("**{title}**\n\n");
                        for line in lines {
                            out += &format!("- {line}\n");
                        }
                        out += "\n";
                    }
                }
            }
            other => out += &format!("### `{name}`: {}\n\n", other.name()),
        }
    }
    out
}
