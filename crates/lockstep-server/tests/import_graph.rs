//! The server's module graph (issue 19): `cluster` imports nothing above it, and the
//! top-level modules of `src/` have no import circle.
//!
//! Edges are read from the source: every `crate::<module>` path in a module's files (tests
//! included: a test module that reaches into another module ties them together too).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Top-level module name → the files that make it up.
fn modules() -> BTreeMap<String, Vec<PathBuf>> {
    let mut out: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for entry in std::fs::read_dir(src()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        if path.is_dir() {
            if name == "bin" {
                continue;
            }
            let files = walk(&path);
            out.entry(name).or_default().extend(files);
        } else if path.extension().is_some_and(|e| e == "rs") && name != "lib" {
            out.entry(name).or_default().push(path);
        }
    }
    out
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// `crate::x` paths in `text`, also inside `use crate::{x, y::z}` groups.
fn referenced(text: &str, known: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        let names: Vec<&str> = if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            group[..end]
                .split(',')
                .map(|part| part.trim().split("::").next().unwrap_or("").trim())
                .collect()
        } else {
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            vec![&rest[..end]]
        };
        for name in names {
            if known.contains(name) {
                out.insert(name.to_string());
            }
        }
    }
    out
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let modules = modules();
    let known: BTreeSet<String> = modules.keys().cloned().collect();
    modules
        .iter()
        .map(|(name, files)| {
            let mut edges = BTreeSet::new();
            for file in files {
                let text = std::fs::read_to_string(file).unwrap();
                edges.extend(referenced(&text, &known));
            }
            edges.remove(name);
            (name.clone(), edges)
        })
        .collect()
}

/// Modules on some cycle: those that reach themselves.
fn tangled(graph: &BTreeMap<String, BTreeSet<String>>) -> BTreeSet<String> {
    let reaches = |from: &str| {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<&str> = graph[from].iter().map(String::as_str).collect();
        while let Some(n) = stack.pop() {
            if seen.insert(n.to_string()) {
                stack.extend(graph[n].iter().map(String::as_str));
            }
        }
        seen
    };
    graph
        .keys()
        .filter(|m| reaches(m).contains(*m))
        .cloned()
        .collect()
}

#[test]
fn the_cluster_module_imports_nothing_above_it() {
    let graph = graph();
    let cluster = graph.get("cluster").expect("src/cluster exists");
    assert!(
        cluster.is_empty(),
        "src/cluster imports {cluster:?}: the cluster (Raft runtime, write path vocabulary, batcher, read index) must not depend on the rest of the server; move what it needs into it or pass it in"
    );
}

#[test]
fn no_module_is_in_an_import_circle() {
    let graph = graph();
    let tangled = tangled(&graph);
    assert!(
        tangled.is_empty(),
        "modules {tangled:?} are in an import circle (edges: {graph:?}); break it: a constructor that takes what it uses, vocabulary in `cluster`, or the binary assembling the service"
    );
}

#[test]
fn the_reader_sees_grouped_and_nested_paths() {
    let known: BTreeSet<String> = ["node", "cluster", "metrics"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let text = "use crate::cluster::{Lane, wall_clock};\nuse crate::{metrics::Metrics, node};\nlet x = crate::node::Node::new();";
    let got = referenced(text, &known);
    assert_eq!(got, known);
}
