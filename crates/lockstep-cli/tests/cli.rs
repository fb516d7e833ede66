//! The `lockstep` binary as users and scripts see it: output and exit codes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn lockstep(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lockstep"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("run lockstep")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn temp_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lockstep-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

const BROKEN: &str = "workflow: w\nstates:\n  a: { initial: true }\n  b: { terminal: true }\ntransitions:\n  go: { from: a, to: c, allow: \"true\" }\n";

#[test]
fn validate_examples_exits_zero() {
    let out = lockstep(&["validate", "examples/workflows"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("ok    examples/workflows/purchase-order.yaml (purchase-order @ ")
    );
}

#[test]
fn validate_reports_location_code_hint_and_snippet_and_exits_one() {
    let file = temp_file("broken.yaml", BROKEN);
    let out = lockstep(&["validate", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(text.contains("broken.yaml:6:"), "{text}");
    assert!(
        text.contains("error[LS101/unknown-state]: `c` is not a declared state"),
        "{text}"
    );
    assert!(
        text.contains("hint: declare it under `states:` or use one of: a, b"),
        "{text}"
    );
    assert!(
        text.contains("  6 |   go: { from: a, to: c, allow: \"true\" }"),
        "{text}"
    );
}

#[test]
fn validate_json_output_is_machine_readable() {
    let file = temp_file("broken-json.yaml", BROKEN);
    let out = lockstep(&["validate", "--output", "json", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    assert_eq!(json["ok"], false);
    let d = &json["files"][0]["diagnostics"];
    let codes: Vec<&str> = d
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["LS102", "LS101"], "sorted by position");
    assert_eq!(d[1]["line"], 6);
    assert_eq!(d[1]["column"], 18);
    assert_eq!(d[1]["path"], "transitions.go.to");
}

#[test]
fn usage_errors_exit_two() {
    assert_eq!(lockstep(&["validate"]).status.code(), Some(2));
    assert_eq!(lockstep(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(
        lockstep(&["validate", "no/such/path"]).status.code(),
        Some(2)
    );
}

#[test]
fn graph_draws_states_and_labels() {
    let out = lockstep(&[
        "graph",
        "examples/workflows/purchase-order.yaml",
        "--format",
        "dot",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    assert!(text.starts_with("digraph \"purchase-order\""), "{text}");
    assert!(
        text.contains("\"delivered\" [label=\"delivered\", peripheries=2];"),
        "{text}"
    );
    assert!(
        text.contains("\"ordered\" -> \"delivered\" [label=\"deliver · on shipment.delivered\"];"),
        "{text}"
    );
    let mermaid = stdout(&lockstep(&[
        "graph",
        "examples/workflows/purchase-order.yaml",
    ]));
    assert!(
        mermaid.contains("submitted --> escalated: escalate · SLA approval breach (16h) · system"),
        "{mermaid}"
    );
}

#[test]
fn test_command_names_the_failing_step() {
    let wf = root().join("examples/workflows/purchase-order.yaml");
    let scenario = format!(
        "workflow: {}\nactors:\n  alice: {{ roles: [requester] }}\nscenarios:\n  - name: wrong expectation\n    steps:\n      - create: {{ data: {{ amount: 1, requester: alice }} }}\n        as: alice\n        expect: {{ state: submitted }}\n",
        wf.display()
    );
    let file = temp_file("failing-scenario.yaml", &scenario);
    let out = lockstep(&["test", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(
        text.contains(
            ":: wrong expectation at step 1: expected state `submitted`, instance is in `draft`"
        ),
        "{text}"
    );
    assert!(text.contains("scenarios: 0 passed, 1 failed"), "{text}");
}

#[test]
fn help_teaches() {
    let text = stdout(&lockstep(&["validate", "--help"]));
    assert!(
        text.contains("Example: lockstep validate examples/workflows"),
        "{text}"
    );
}
