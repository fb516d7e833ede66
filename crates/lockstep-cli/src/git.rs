//! Definitions and git, through gix (no `git` binary needed): where a file comes from
//! (repository, commit, path, and whether it differs from that commit), and the definition
//! files of a folder at a revision, for `lockstep diff origin/main HEAD examples/workflows`.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use lockstep_client::Provenance;

/// What `repository` and `commit` say for a file outside any git work tree.
pub const NOT_IN_GIT_REPOSITORY: &str = "local";
pub const NOT_IN_GIT_COMMIT: &str = "not-in-git";
/// Appended to the commit of a file that differs from it (`--allow-dirty`).
pub const DIRTY: &str = "+dirty";
/// Definition files read from one revision, at most.
pub const REVISION_FILES_MAX: usize = 10_000;

/// Where `file` comes from. `Ok((provenance, dirty))`; a dirty file is refused unless
/// `allow_dirty`, and its commit then ends in `+dirty`.
pub fn provenance(file: &Path, allow_dirty: bool) -> anyhow::Result<Provenance> {
    let absolute =
        std::fs::canonicalize(file).with_context(|| format!("reading {}", file.display()))?;
    let dir = absolute.parent().unwrap_or(Path::new("/"));
    let Ok(repo) = gix::discover(dir) else {
        return Ok(Provenance {
            repository: NOT_IN_GIT_REPOSITORY.into(),
            commit: NOT_IN_GIT_COMMIT.into(),
            path: absolute.display().to_string(),
        });
    };
    let Some(root) = repo.workdir().map(Path::to_path_buf) else {
        bail!(
            "{} is in a bare git repository: apply files from a work tree",
            file.display()
        );
    };
    let root = std::fs::canonicalize(&root).unwrap_or(root);
    let relative = absolute
        .strip_prefix(&root)
        .with_context(|| {
            format!(
                "{} is not under its work tree {}",
                absolute.display(),
                root.display()
            )
        })?
        .to_path_buf();
    let repository = repo
        .find_default_remote(gix::remote::Direction::Fetch)
        .and_then(Result::ok)
        .and_then(|remote| {
            remote
                .url(gix::remote::Direction::Fetch)
                .map(|u| u.to_bstring().to_string())
        })
        .unwrap_or_else(|| root.display().to_string());
    let path = slashed(&relative);
    let on_disk =
        std::fs::read(&absolute).with_context(|| format!("reading {}", file.display()))?;
    let (commit, committed) = match repo.head_commit() {
        Ok(head) => {
            let id = head.id().to_string();
            let tree = head
                .tree()
                .map_err(|e| anyhow::anyhow!("reading the tree of {id}: {e}"))?;
            let blob = tree
                .lookup_entry_by_path(&relative)
                .map_err(|e| anyhow::anyhow!("looking up {path} in {id}: {e}"))?
                .map(|entry| entry.object().map(|o| o.data.clone()))
                .transpose()
                .map_err(|e| anyhow::anyhow!("reading {path} in {id}: {e}"))?;
            (id, blob)
        }
        Err(_) => ("unborn".to_string(), None),
    };
    let clean = committed.as_deref() == Some(on_disk.as_slice());
    if clean {
        return Ok(Provenance {
            repository,
            commit,
            path,
        });
    }
    if !allow_dirty {
        let why = if committed.is_none() {
            "is not in the commit (new or untracked)"
        } else {
            "differs from the commit"
        };
        bail!(
            "{} {why} {}: commit it first so the cluster records where the definition came from, or pass --allow-dirty to record it as {}{DIRTY}",
            file.display(),
            short(&commit),
            short(&commit)
        );
    }
    Ok(Provenance {
        repository,
        commit: format!("{commit}{DIRTY}"),
        path,
    })
}

fn short(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}

/// A path with `/` separators, as git writes them.
fn slashed(path: &Path) -> String {
    path.components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

/// Whether `spec` names a revision of the git repository around the current directory.
pub fn is_revision(spec: &str) -> bool {
    gix::discover(".").is_ok_and(|repo| repo.rev_parse_single(spec).is_ok())
}

/// The definition files (`.yaml` and `.yml` starting a line with `workflow:`, as `validate`
/// picks them from folders) under `paths`
/// (relative to the current directory; the whole repository when empty) at revision `spec`,
/// as (repository path, text).
pub fn files_at(spec: &str, paths: &[PathBuf]) -> anyhow::Result<Vec<(String, String)>> {
    let repo = gix::discover(".").map_err(|e| anyhow::anyhow!("no git repository here: {e}"))?;
    let root = repo
        .workdir()
        .map(Path::to_path_buf)
        .context("a bare repository has no work tree to resolve paths against")?;
    let root = std::fs::canonicalize(&root).unwrap_or(root);
    let commit = repo
        .rev_parse_single(spec)
        .map_err(|e| anyhow::anyhow!("`{spec}` is not a revision of this repository: {e}"))?
        .object()
        .and_then(|o| o.peel_to_commit())
        .map_err(|e| anyhow::anyhow!("`{spec}` does not name a commit: {e}"))?;
    let tree = commit
        .tree()
        .map_err(|e| anyhow::anyhow!("reading the tree of {spec}: {e}"))?;
    let here = std::fs::canonicalize(".")?;
    let prefixes: Vec<PathBuf> = if paths.is_empty() {
        vec![
            here.strip_prefix(&root)
                .unwrap_or(Path::new(""))
                .to_path_buf(),
        ]
    } else {
        paths
            .iter()
            .map(|p| {
                let absolute = here.join(p);
                let normal = normalize(&absolute);
                normal
                    .strip_prefix(&root)
                    .map(Path::to_path_buf)
                    .with_context(|| {
                        format!(
                            "{} is outside the repository {}",
                            p.display(),
                            root.display()
                        )
                    })
            })
            .collect::<anyhow::Result<_>>()?
    };
    let mut out = Vec::new();
    for prefix in prefixes {
        let start = if prefix.as_os_str().is_empty() {
            Some(tree.clone())
        } else {
            match tree
                .lookup_entry_by_path(&prefix)
                .map_err(|e| anyhow::anyhow!("looking up {} at {spec}: {e}", prefix.display()))?
            {
                None => bail!("{} does not exist at {spec}", prefix.display()),
                Some(entry) if entry.mode().is_tree() => Some(
                    entry
                        .object()
                        .map_err(|e| anyhow::anyhow!("reading {}: {e}", prefix.display()))?
                        .into_tree(),
                ),
                Some(entry) => {
                    let data = entry
                        .object()
                        .map_err(|e| anyhow::anyhow!("reading {}: {e}", prefix.display()))?
                        .data
                        .clone();
                    out.push((
                        slashed(&prefix),
                        String::from_utf8_lossy(&data).into_owned(),
                    ));
                    None
                }
            }
        };
        if let Some(dir) = start {
            walk(&dir, &slashed(&prefix), &mut out)?;
        }
    }
    out.retain(|(path, text)| is_definition(path, text));
    Ok(out)
}

/// `.` and `..` resolved without touching the file system (the path may not exist here).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

fn walk(tree: &gix::Tree<'_>, prefix: &str, out: &mut Vec<(String, String)>) -> anyhow::Result<()> {
    for entry in tree.iter() {
        let entry = entry.map_err(|e| anyhow::anyhow!("reading a tree under {prefix}: {e}"))?;
        let name = entry.filename().to_string();
        let path = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let object = entry
            .object()
            .map_err(|e| anyhow::anyhow!("reading {path}: {e}"))?;
        if entry.mode().is_tree() {
            walk(&object.into_tree(), &path, out)?;
        } else if entry.mode().is_blob() && is_definition_name(&path) {
            if out.len() >= REVISION_FILES_MAX {
                bail!(
                    "more than {REVISION_FILES_MAX} definition files under {prefix}: name a narrower folder"
                );
            }
            out.push((path, String::from_utf8_lossy(&object.data).into_owned()));
        }
    }
    Ok(())
}

fn is_definition_name(path: &str) -> bool {
    path.ends_with(".yaml") || path.ends_with(".yml")
}

/// A definition file: YAML with top-level `workflow:` and `states:` keys (scenario files
/// name a workflow too, but have no states).
fn is_definition(path: &str, text: &str) -> bool {
    is_definition_name(path)
        && text.lines().any(|l| l.starts_with("workflow:"))
        && text.lines().any(|l| l.starts_with("states:"))
}
