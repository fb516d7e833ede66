//! The offline commands: validate, graph and test (and `diff.rs`). They need no cluster.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use lockstep_core::diagnostic::{Diagnostic, Severity};
use lockstep_core::validate::{CompiledDefinition, check};
use lockstep_core::{Limits, scenario};

use crate::Output;

/// Expands files and folders into the YAML files whose first key is `key`.
pub fn collect(paths: &[PathBuf], key: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut found = Vec::new();
            walk(path, &mut found)?;
            found.sort();
            for file in found {
                let text = std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?;
                if text.lines().any(|l| l.starts_with(&format!("{key}:"))) {
                    out.push(file);
                }
            }
        } else if path.is_file() {
            out.push(path.clone());
        } else {
            bail!(
                "{} does not exist; pass definition files or folders",
                path.display()
            );
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in
        std::fs::read_dir(dir).with_context(|| format!("reading folder {}", dir.display()))?
    {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            out.push(path);
        }
    }
    Ok(())
}

fn read(path: &Path, limits: &Limits) -> anyhow::Result<String> {
    let size = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    if size > limits.definition_bytes_max as u64 * 4 {
        bail!(
            "{} is {size} bytes; definitions are at most {} bytes",
            path.display(),
            limits.definition_bytes_max
        );
    }
    std::fs::read_to_string(path)
        .with_context(|| format!("reading {} (is it UTF-8 text?)", path.display()))
}

/// Loads and compiles one definition, printing its diagnostics on failure.
pub fn load(path: &Path) -> anyhow::Result<CompiledDefinition> {
    let limits = Limits::default();
    let text = read(path, &limits)?;
    load_text(&path.display().to_string(), &text)
}

/// Compiles one definition's text (`name` says where it came from in errors).
pub fn load_text(name: &str, text: &str) -> anyhow::Result<CompiledDefinition> {
    let limits = Limits::default();
    let checked = check(Some(name), text, &limits);
    match checked.compiled {
        Some(c) => Ok(c),
        None => {
            let errors: Vec<String> = checked
                .diagnostics
                .iter()
                .filter(|d| d.is_error())
                .map(|d| d.to_string())
                .collect();
            bail!("{name} is not a valid definition:\n{}", errors.join("\n"))
        }
    }
}

pub fn validate(paths: &[PathBuf], deny_warnings: bool, output: Output) -> anyhow::Result<bool> {
    let limits = Limits::default();
    let files = collect(paths, "workflow")?;
    if files.is_empty() {
        bail!(
            "no workflow definitions found in {paths:?}; definitions are .yaml files starting with `workflow:`"
        );
    }
    let mut reports = Vec::new();
    let mut ok = true;
    for file in &files {
        let text = read(file, &limits)?;
        let checked = check(Some(&file.display().to_string()), &text, &limits);
        let failed = checked
            .diagnostics
            .iter()
            .any(|d| d.is_error() || (deny_warnings && d.severity == Severity::Warning));
        ok &= !failed;
        if output == Output::Table {
            for d in &checked.diagnostics {
                print_diagnostic(d, &text);
            }
            match &checked.compiled {
                Some(c) if !failed => println!(
                    "ok    {} ({} @ {})",
                    file.display(),
                    c.name(),
                    &c.version[..12]
                ),
                _ => println!("FAIL  {}", file.display()),
            }
        }
        reports.push(serde_json::json!({
            "file": file.display().to_string(),
            "ok": !failed,
            "workflow": checked.compiled.as_ref().map(|c| c.name().to_string()),
            "version": checked.compiled.as_ref().map(|c| c.version.clone()),
            // Where `lockstep apply` would record it from (uncommitted changes say `+dirty`).
            "provenance": crate::git::provenance(file, true).ok().map(|p| serde_json::json!({
                "repository": p.repository,
                "commit": p.commit,
                "path": p.path,
            })),
            "diagnostics": checked.diagnostics,
        }));
    }
    if output == Output::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "ok": ok, "files": reports }))?
        );
    }
    Ok(ok)
}

fn print_diagnostic(d: &Diagnostic, text: &str) {
    println!("{d}");
    if d.line > 0
        && let Some(line) = text.lines().nth(d.line - 1)
    {
        println!("   |");
        println!("{:>3} | {line}", d.line);
        println!("   | {}^", " ".repeat(d.column.saturating_sub(1)));
    }
}

pub fn graph(file: &Path, format: lockstep_core::graph::Format) -> anyhow::Result<bool> {
    let compiled = load(file)?;
    print!("{}", lockstep_core::graph::render(&compiled, format));
    Ok(true)
}

pub fn test(paths: &[PathBuf], output: Output) -> anyhow::Result<bool> {
    let files = collect(paths, "scenarios")?;
    if files.is_empty() {
        bail!(
            "no scenario files found in {paths:?}; scenario files are .yaml files with a `scenarios:` key"
        );
    }
    let limits = Limits::default();
    let (mut passed, mut failed) = (0usize, 0usize);
    let mut reports = Vec::new();
    for file in &files {
        let text = read(file, &limits)?;
        let parsed =
            scenario::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        let workflow = file
            .parent()
            .unwrap_or(Path::new("."))
            .join(&parsed.workflow);
        let compiled = load(&workflow)
            .with_context(|| format!("loading the workflow of {}", file.display()))?;
        for report in scenario::run_file(&parsed, &compiled) {
            match &report.failure {
                None => {
                    passed += 1;
                    if output == Output::Table {
                        println!(
                            "ok    {} :: {} ({} steps)",
                            file.display(),
                            report.scenario,
                            report.steps
                        );
                    }
                }
                Some(f) => {
                    failed += 1;
                    if output == Output::Table {
                        println!(
                            "FAIL  {} :: {} at step {}: {}",
                            file.display(),
                            report.scenario,
                            f.step,
                            f.message
                        );
                    }
                }
            }
            reports
                .push(serde_json::json!({ "file": file.display().to_string(), "report": report }));
        }
    }
    if output == Output::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "passed": passed, "failed": failed, "scenarios": reports })
            )?
        );
    } else {
        println!("\nscenarios: {passed} passed, {failed} failed");
    }
    Ok(failed == 0)
}
