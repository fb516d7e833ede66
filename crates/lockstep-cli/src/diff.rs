//! `lockstep diff OLD NEW [PATHS]`: what a change to definitions means, for review. Each side
//! is a definition file or a folder of them, an applied version (`WORKFLOW@VERSION`, a prefix
//! or `latest`, read from the cluster) or a git revision (the definition files under PATHS at
//! that commit, read through gix); workflows are matched by name.

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
fn side(
    spec: &str,
    paths: &[PathBuf],
    conn: &crate::online::Connection,
) -> anyhow::Result<BTreeMap<String, CompiledDefinition>> {
    let path = PathBuf::from(spec);
    let sources: Vec<(String, CompiledDefinition)> = if path.exists() {
        crate::offline::collect(std::slice::from_ref(&path), "workflow")?
            .into_iter()
            .map(|file| Ok((file.display().to_string(), crate::offline::load(&file)?)))
            .collect::<anyhow::Result<_>>()?
    } else if let Some((workflow, version)) = applied(spec) {
        let definition = fetch_applied(conn, workflow, version)?;
        vec![(spec.to_string(), definition)]
    } else if crate::git::is_revision(spec) {
        crate::git::files_at(spec, paths)?
            .into_iter()
            .map(|(file, text)| {
                let name = format!("{spec}:{file}");
                let compiled = crate::offline::load_text(&name, &text)?;
                Ok((name, compiled))
            })
            .collect::<anyhow::Result<_>>()?
    } else {
        anyhow::bail!(
            "`{spec}` does not exist as a file or folder, and is not an applied version (WORKFLOW@VERSION: a version prefix or `latest`) or a revision of the git repository here"
        );
    };
    let mut out: BTreeMap<String, (String, CompiledDefinition)> = BTreeMap::new();
    for (from, compiled) in sources {
        if let Some((first, _)) = out.get(compiled.name()) {
            anyhow::bail!(
                "{spec} defines workflow `{}` twice ({first} and {from}); keep one definition per workflow",
                compiled.name(),
            );
        }
        out.insert(compiled.name().to_string(), (from, compiled));
    }
    Ok(out.into_iter().map(|(k, (_, c))| (k, c)).collect())
}

/// `WORKFLOW@VERSION` (a hex prefix of an applied version, or `latest`).
pub fn applied(spec: &str) -> Option<(&str, &str)> {
    let (workflow, version) = spec.split_once('@')?;
    let name_ok = !workflow.is_empty()
        && workflow
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    let version_ok = version == "latest"
        || (!version.is_empty() && version.chars().all(|c| c.is_ascii_hexdigit()));
    (name_ok && version_ok).then_some((workflow, version))
}

/// An applied version of `workflow`, read from the cluster (`latest` or a unique prefix).
fn fetch_applied(
    conn: &crate::online::Connection,
    workflow: &str,
    version: &str,
) -> anyhow::Result<CompiledDefinition> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // The client's channels need the runtime.
    let source = runtime.block_on(async {
        applied_source(&conn.client()?, workflow, version)
            .await
            .map(|(_, source)| source)
    })?;
    crate::offline::load_text(&format!("{workflow}@{version}"), &source)
}

/// The full version and source of an applied version of `workflow` (`latest` or a unique
/// hex prefix), read from the cluster.
pub async fn applied_source(
    client: &lockstep_client::Client,
    workflow: &str,
    version: &str,
) -> anyhow::Result<(String, String)> {
    let versions = client.definition_versions(workflow).await?;
    let chosen = if version == "latest" {
        versions.last().cloned()
    } else {
        let matching: Vec<_> = versions
            .iter()
            .filter(|d| d.version.starts_with(version))
            .collect();
        if matching.len() > 1 {
            anyhow::bail!(
                "version prefix `{version}` of {workflow} names {} applied versions: give more digits",
                matching.len()
            );
        }
        matching.first().map(|d| (*d).clone())
    };
    let chosen = chosen.ok_or_else(|| {
        anyhow::anyhow!(
            "{workflow} has no applied version `{version}` (`lockstep definitions {workflow}` lists them)"
        )
    })?;
    let full = client
        .get_definition(workflow, Some(&chosen.version))
        .await?;
    Ok((chosen.version, full.source))
}

/// Compares OLD and NEW; returns whether anything changed.
pub fn run(
    old: &str,
    new: &str,
    paths: &[PathBuf],
    conn: &crate::online::Connection,
    output: Output,
    markdown: bool,
) -> anyhow::Result<bool> {
    // A revision compared with a file or folder reads that same file or folder at the
    // revision, unless PATHS say otherwise.
    let from_other_side: Vec<PathBuf> = [old, new]
        .iter()
        .map(PathBuf::from)
        .filter(|p| p.exists())
        .take(1)
        .collect();
    let paths = if paths.is_empty() {
        &from_other_side
    } else {
        paths
    };
    let (old, new) = (side(old, paths, conn)?, side(new, paths, conn)?);
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
