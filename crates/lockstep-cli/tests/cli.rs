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

/// The purchase order of examples/, changed for review: directors may approve any amount
/// without being approvers, the approval budget halves, requesters may no longer withdraw,
/// orders can be archived, and the business calendar gains a holiday.
fn changed_purchase_order() -> String {
    let old = std::fs::read_to_string(root().join("examples/workflows/purchase-order.yaml"))
        .expect("the example");
    let replace = |text: String, from: &str, to: &str| {
        assert!(text.contains(from), "the example still holds `{from}`");
        text.replacen(from, to, 1)
    };
    let new = replace(old, "    within: 16h", "    within: 8h");
    let new = replace(
        new,
        "    allow: \"'approver' in actor.roles && actor.id != instance.data.requester\"",
        "    allow: \"'approver' in actor.roles || 'director' in actor.roles\"",
    );
    let new = replace(
        new,
        "  withdraw: { from: submitted, to: draft, not_before: 1h, allow: \"actor.id == instance.data.requester\" }\n",
        "",
    );
    let new = replace(
        new,
        "  delivered: { terminal: true }",
        "  delivered: {}\n  archived: { terminal: true }",
    );
    let new = replace(
        new,
        "    holidays: [2026-12-24, 2026-12-25, 2026-12-26]",
        "    holidays: [2026-12-24, 2026-12-25, 2026-12-26, 2026-12-31]",
    );
    new + "  archive: { from: delivered, to: archived, allow: \"actor.kind == 'service'\" }\n"
}

#[test]
fn diff_shows_structure_trust_and_time_and_exits_five_when_asked() {
    let new = temp_file("po-changed.yaml", &changed_purchase_order());
    let old = "examples/workflows/purchase-order.yaml";
    let out = lockstep(&["diff", old, new.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let text = stdout(&out);
    for line in [
        "workflow purchase-order: changed",
        "state `archived` added",
        "transition `withdraw` removed",
        "transition `archive` added",
        "role director gains `approve`",
        "role approver: `approve` changed, needs review",
        "anyone the predicate admits loses `withdraw` (when `actor.id == instance.data.requester`)",
        "kind service gains `archive`",
        "sla `approval` within: `16h` → `8h`",
        "calendar `business` holidays:",
    ] {
        assert!(text.contains(line), "missing `{line}` in\n{text}");
    }

    // JSON for tools, Markdown for a pull request, exit 5 for CI.
    let json = lockstep(&["diff", old, new.to_str().unwrap(), "--output", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json");
    assert_eq!(v["changed"], serde_json::json!(true));
    let po = &v["workflows"][0];
    assert_eq!(po["status"], "changed");
    assert!(po["trust"].as_array().unwrap().iter().any(|t| {
        t["principal"] == serde_json::json!({"kind": "role", "name": "director"})
            && t["transition"] == "approve"
            && t["effect"]["kind"] == "gains"
    }));
    let md = lockstep(&["diff", old, new.to_str().unwrap(), "--markdown"]);
    assert!(stdout(&md).contains("### `purchase-order`: changed"));
    assert!(stdout(&md).contains("**Trust (who may do what)**"));
    let ci = lockstep(&["diff", old, new.to_str().unwrap(), "--exit-code"]);
    assert_eq!(ci.status.code(), Some(5));

    // The same file on both sides: no change, exit 0 even with --exit-code.
    let same = lockstep(&["diff", old, old, "--exit-code"]);
    assert_eq!(same.status.code(), Some(0));
    assert!(stdout(&same).contains("workflow purchase-order: unchanged"));
}

#[test]
fn diff_of_folders_matches_workflows_by_name() {
    let dir = std::env::temp_dir().join(format!("lockstep-cli-diff-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("po.yaml"), changed_purchase_order()).unwrap();
    let out = lockstep(&["diff", "examples/workflows", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    assert!(text.contains("workflow purchase-order: changed"), "{text}");
    assert!(text.contains("workflow incident: removed"), "{text}");
    let missing = lockstep(&["diff", "examples/workflows", "no/such/folder"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("does not exist"));
}
