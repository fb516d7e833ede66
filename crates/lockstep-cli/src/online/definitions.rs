//! `lockstep apply`: definitions from files, with their provenance.

use super::*;

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
        let provenance = Provenance {
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
