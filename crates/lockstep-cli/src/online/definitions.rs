//! `lockstep apply` (definitions from files, with their provenance) and `lockstep definitions`
//! (the workflows and their versions, with who applied them from where).

use super::*;

pub async fn apply(
    conn: &Connection,
    output: Output,
    paths: &[std::path::PathBuf],
    allow_dirty: bool,
    repository: Option<&str>,
    commit: Option<&str>,
) -> anyhow::Result<()> {
    let files = crate::offline::collect(paths, "workflow")?;
    if files.is_empty() {
        anyhow::bail!(
            "no workflow definitions found in {paths:?}; definitions are .yaml files starting with `workflow:`"
        );
    }
    // Every file's provenance first: one dirty file refuses the whole apply.
    let mut planned = Vec::new();
    for file in files {
        let source = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        let mut provenance = crate::git::provenance(&file, allow_dirty)?;
        if let Some(r) = repository {
            provenance.repository = r.to_string();
        }
        if let Some(c) = commit {
            provenance.commit = c.to_string();
        }
        planned.push((file, source, provenance));
    }
    let client = conn.client()?;
    let mut results = Vec::new();
    for (file, source, provenance) in planned {
        let r = client
            .apply_definition(&conn.request_id(), &source, provenance.clone())
            .await?;
        if output == Output::Table {
            println!(
                "{} {} @ {} ({}) from {}",
                if r.created { "applied" } else { "unchanged" },
                r.workflow,
                &r.version[..12],
                file.display(),
                origin(&provenance)
            );
        }
        results.push(serde_json::json!({
            "file": file.display().to_string(),
            "workflow": r.workflow,
            "version": r.version,
            "created": r.created,
            "provenance": {
                "repository": provenance.repository,
                "commit": provenance.commit,
                "path": provenance.path,
            },
        }));
    }
    if output == Output::Json {
        println!("{}", serde_json::Value::Array(results));
    }
    Ok(())
}

/// Where a definition came from, as `repository@commit:path`.
pub(super) fn origin(p: &Provenance) -> String {
    format!("{}@{}:{}", p.repository, p.commit, p.path)
}

fn definition_json(d: &lockstep_client::Definition) -> serde_json::Value {
    serde_json::json!({
        "workflow": d.workflow,
        "version": d.version,
        "applied_by": d.applied_by,
        "applied_at": d.applied_at.to_string(),
        "provenance": {
            "repository": d.provenance.repository,
            "commit": d.provenance.commit,
            "path": d.provenance.path,
        },
    })
}

/// `lockstep definitions`: every workflow with its latest version; with WORKFLOW, every
/// version of it, oldest first, with who applied it from where.
pub async fn definitions(
    conn: &Connection,
    output: Output,
    workflow: Option<&str>,
) -> anyhow::Result<()> {
    let client = conn.client()?;
    let Some(workflow) = workflow else {
        let mut workflows = Vec::new();
        let mut token = None;
        // Workflows are few; every page is read (each call is bounded by its page size).
        loop {
            let page = client.workflows(0, token.as_deref()).await?;
            workflows.extend(page.workflows);
            match page.next_page_token {
                Some(next) => token = Some(next),
                None => break,
            }
        }
        match output {
            Output::Json => {
                let list: Vec<serde_json::Value> = workflows
                    .iter()
                    .map(|w| {
                        serde_json::json!({
                            "workflow": w.workflow,
                            "versions": w.versions,
                            "latest": definition_json(&w.latest),
                        })
                    })
                    .collect();
                println!("{}", serde_json::json!({ "workflows": list }));
            }
            Output::Table => {
                if workflows.is_empty() {
                    println!(
                        "no workflow has a definition yet: apply one with `lockstep apply FILE`"
                    );
                }
                for w in &workflows {
                    println!(
                        "{:<24} {}  {} version{}  applied by {} at {}  from {}",
                        w.workflow,
                        &w.latest.version[..12.min(w.latest.version.len())],
                        w.versions,
                        if w.versions == 1 { "" } else { "s" },
                        w.latest.applied_by,
                        w.latest.applied_at,
                        origin(&w.latest.provenance)
                    );
                }
            }
        }
        return Ok(());
    };
    let versions = client.definition_versions(workflow).await?;
    if versions.is_empty() {
        return Err(Error::NotFound(format!(
            "no definition of workflow `{workflow}` has been applied; apply one with `lockstep apply`"
        ))
        .into());
    }
    match output {
        Output::Json => {
            let list: Vec<serde_json::Value> = versions.iter().map(definition_json).collect();
            println!(
                "{}",
                serde_json::json!({ "workflow": workflow, "versions": list })
            );
        }
        Output::Table => {
            for d in &versions {
                println!(
                    "{}  applied by {} at {}  from {}",
                    &d.version[..12.min(d.version.len())],
                    d.applied_by,
                    d.applied_at,
                    origin(&d.provenance)
                );
            }
        }
    }
    Ok(())
}
