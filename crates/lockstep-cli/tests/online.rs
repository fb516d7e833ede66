//! The online commands of the `lockstep` binary against a real 3-node cluster of `lockstepd`
//! processes: what they print (`--output json` parsed, tables read) and how they exit.
//!
//! Exit codes: 0 success, 1 refused, 2 usage, 3 unavailable, 4 not found (`lockstep --help`).

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{GitRepo, PO, cluster, free_port, lockstep};
use serde_json::{Value, json};

const PO_DATA: &str = r#"{"amount": 500, "requester": "alice"}"#;

/// A small workflow of this file's own, so that listings are not shared with other tests.
fn open_close(name: &str) -> String {
    format!(
        "workflow: {name}\nstates:\n  open: {{ initial: true }}\n  closed: {{ terminal: true }}\ntransitions:\n  close: {{ from: open, to: closed, allow: \"true\" }}\n"
    )
}

fn is_hex_sha256(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn keys(listing: &Value) -> BTreeSet<String> {
    listing["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .map(|i| i["key"].as_str().expect("key").to_string())
        .collect()
}

/// Creates a purchase order (requested by alice) and submits it; returns its id.
fn submitted_po(key: &str) -> String {
    let c = cluster();
    let created = c
        .run(&[
            "create",
            "purchase-order",
            "--key",
            key,
            "--data",
            PO_DATA,
            "--as",
            "alice",
            "-o",
            "json",
        ])
        .ok()
        .json();
    let target = format!("purchase-order/{key}");
    c.run(&["transition", &target, "submit", "--as", "alice"])
        .ok()
        .stdout_has(&["state=submitted"]);
    created["instance_id"].as_str().expect("instance_id").into()
}

#[test]
fn help_documents_the_exit_codes() {
    let help = lockstep(&["--help"]);
    help.ok().stdout_has(&[
        "Exit codes:",
        "  0  success",
        "  1  refused:",
        "  2  usage:",
        "  3  unavailable:",
        "  4  not found:",
        "\"kind\": \"refused\", \"code\": \"FORBIDDEN\"",
    ]);
}

#[test]
fn apply_reports_applied_then_unchanged() {
    let c = cluster();
    let a = c.file("cli-apply-a.yaml", &open_close("cli-apply-a"));
    let b = c.file("cli-apply-b.yaml", &open_close("cli-apply-b"));
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());

    let table = c.run(&["apply", a, "--commit", "0123abcd"]);
    table
        .ok()
        .stdout_has(&["applied cli-apply-a @ ", &format!("({a})")]);

    let json = c.run(&["apply", b, "-o", "json"]).ok().json();
    assert_eq!(json.as_array().map(Vec::len), Some(1), "{json}");
    assert_eq!(json[0]["workflow"], "cli-apply-b");
    assert_eq!(json[0]["file"], b);
    assert_eq!(json[0]["created"], true);
    assert!(is_hex_sha256(&json[0]["version"]), "{json}");

    // Applying the same sources again changes nothing, and says so.
    let again = c.run(&["apply", a, b, "-o", "json"]).ok().json();
    assert_eq!(again[0]["workflow"], "cli-apply-a");
    assert_eq!(again[0]["created"], false);
    assert_eq!(again[1]["created"], false);
    assert_eq!(
        again[1]["version"], json[0]["version"],
        "same source, same version"
    );
    let version_a = again[0]["version"].as_str().unwrap();
    c.run(&["apply", a]).ok().stdout_has(&[&format!(
        "unchanged cli-apply-a @ {} ({a})",
        &version_a[..12]
    )]);
}

#[test]
fn apply_of_an_invalid_definition_is_refused_and_a_missing_file_is_usage() {
    let c = cluster();
    let broken = c.file(
        "cli-broken.yaml",
        "workflow: cli-broken\nstates:\n  a: { initial: true }\n  b: { terminal: true }\ntransitions:\n  go: { from: a, to: nowhere, allow: \"true\" }\n",
    );
    let broken = broken.to_str().unwrap();
    let table = c.run(&["apply", broken]);
    table
        .code(1)
        .stderr_has(&["error: refused (DEFINITION_INVALID)", "nowhere"]);
    assert!(table.stdout.is_empty(), "{table}");

    let json = c.run(&["apply", broken, "-o", "json"]);
    let error = json.code(1).json_error();
    assert_eq!(error["exit_code"], 1);
    assert_eq!(error["kind"], "refused");
    assert_eq!(error["code"], "DEFINITION_INVALID");

    c.run(&["apply", "no/such/workflow.yaml"])
        .code(2)
        .stderr_has(&["no/such/workflow.yaml does not exist"]);
}

#[test]
fn apply_reads_provenance_from_git_and_refuses_uncommitted_changes() {
    let c = cluster();
    let repo = GitRepo::new("apply");
    repo.git(&[
        "remote",
        "add",
        "origin",
        "https://example.com/acme/workflows.git",
    ]);
    let file = repo.write("flows/cli-git.yaml", &open_close("cli-git"));
    let head = repo.commit("cli-git: open and close");
    let flows = repo.dir.join("flows");

    // A folder, as validate takes it; the provenance is the remote, HEAD and the path.
    let json = c
        .run(&["apply", flows.to_str().unwrap(), "-o", "json"])
        .ok()
        .json();
    assert_eq!(json[0]["workflow"], "cli-git", "{json}");
    let provenance = &json[0]["provenance"];
    assert_eq!(
        provenance["repository"],
        "https://example.com/acme/workflows.git"
    );
    assert_eq!(provenance["commit"], head.as_str());
    assert_eq!(provenance["path"], "flows/cli-git.yaml");
    let listed = c.run(&["definitions", "cli-git", "-o", "json"]).ok().json();
    assert_eq!(
        listed["versions"][0]["provenance"]["commit"],
        head.as_str(),
        "{listed}"
    );

    // validate --output json prints the provenance apply would record.
    let validated = repo
        .lockstep(&["validate", "flows", "-o", "json"])
        .ok()
        .json();
    assert_eq!(
        validated["files"][0]["provenance"]["commit"],
        head.as_str(),
        "{validated}"
    );

    // An uncommitted change is refused, and nothing is applied ...
    std::fs::write(&file, open_close("cli-git").replace("closed", "done")).unwrap();
    c.run(&["apply", file.to_str().unwrap()])
        .code(2)
        .stderr_has(&["differs from the commit", "--allow-dirty"]);
    let listed = c.run(&["definitions", "cli-git", "-o", "json"]).ok().json();
    let versions = &listed["versions"];
    assert_eq!(versions.as_array().map(Vec::len), Some(1), "{listed}");
    // ... unless allowed, and then the commit says so.
    let json = c
        .run(&[
            "apply",
            file.to_str().unwrap(),
            "--allow-dirty",
            "-o",
            "json",
        ])
        .ok()
        .json();
    assert_eq!(json[0]["provenance"]["commit"], format!("{head}+dirty"));

    // An applied version is a side of a diff: the dirty file against what was applied first.
    let first = versions[0]["version"].as_str().unwrap();
    let diff = c.run(&[
        "diff",
        &format!("cli-git@{}", &first[..8]),
        file.to_str().unwrap(),
        "--exit-code",
    ]);
    diff.code(5)
        .stdout_has(&["workflow cli-git: changed", "state `done` added"]);
    c.run(&[
        "diff",
        "cli-git@latest",
        file.to_str().unwrap(),
        "--exit-code",
    ])
    .code(0);

    // A file outside any git work tree is recorded as such.
    let loose = c.file("cli-loose.yaml", &open_close("cli-loose"));
    let json = c
        .run(&["apply", loose.to_str().unwrap(), "-o", "json"])
        .ok()
        .json();
    assert_eq!(json[0]["provenance"]["repository"], "local");
    assert_eq!(json[0]["provenance"]["commit"], "not-in-git");
}

#[test]
fn diff_reads_definitions_at_git_revisions() {
    let repo = GitRepo::new("diff");
    repo.write(
        "flows/po.yaml",
        &open_close("git-diff").replace("allow: \"true\"", "allow: \"'approver' in actor.roles\""),
    );
    repo.write(
        "flows/scenarios.yaml",
        "workflow: git-diff\nscenarios: []\n",
    );
    repo.commit("first");
    repo.write(
        "flows/po.yaml",
        &open_close("git-diff").replace("allow: \"true\"", "allow: \"'manager' in actor.roles\""),
    );
    repo.commit("second: managers close");

    // Two revisions, one folder: the trust diff names who gains and loses `close`.
    let out = repo.lockstep(&["diff", "HEAD~1", "HEAD", "flows", "--exit-code"]);
    out.code(5).stdout_has(&[
        "workflow git-diff: changed",
        "role manager gains `close`",
        "role approver loses `close`",
    ]);
    // A revision against the work tree's file reads the same path at the revision.
    repo.lockstep(&["diff", "HEAD", "flows/po.yaml", "--exit-code"])
        .code(0);
    repo.lockstep(&["diff", "HEAD~1", "flows/po.yaml", "--exit-code"])
        .code(5);
    // What is neither a path, an applied version nor a revision is named.
    repo.lockstep(&["diff", "no-such-rev", "HEAD", "flows"])
        .code(2)
        .stderr_has(&["`no-such-rev` does not exist as a file or folder"]);
}

#[test]
fn create_transition_and_get_as_json() {
    let c = cluster();
    let created = c
        .run(&[
            "create",
            "purchase-order",
            "--key",
            "PO-JSON",
            "--data",
            PO_DATA,
            "--as",
            "alice",
            "--output",
            "json",
        ])
        .ok()
        .json();
    let id = created["instance_id"]
        .as_str()
        .expect("instance_id")
        .to_string();
    assert!(id.starts_with("i-"), "{created}");
    assert_eq!(created["state"], "draft");
    assert_eq!(created["version"], 1);
    let created_seq = created["audit_seq"].as_u64().expect("audit_seq");
    assert!(created_seq >= 1, "{created}");

    let submitted = c
        .run(&[
            "transition",
            "purchase-order/PO-JSON",
            "submit",
            "--as",
            "alice",
            "-o",
            "json",
        ])
        .ok()
        .json();
    assert_eq!(submitted["instance_id"], id.as_str());
    assert_eq!(submitted["state"], "submitted");
    assert_eq!(submitted["version"], 2);
    assert!(submitted["audit_seq"].as_u64().unwrap() > created_seq);

    let got = c
        .run(&["get", "purchase-order/PO-JSON", "-o", "json"])
        .ok()
        .json();
    assert_eq!(got["id"], id.as_str());
    assert_eq!(got["workflow"], "purchase-order");
    assert_eq!(got["key"], "PO-JSON");
    assert_eq!(got["state"], "submitted");
    assert_eq!(got["version"], 2);
    assert_eq!(got["data"], json!({"amount": 500, "requester": "alice"}));
    assert_eq!(got["created_by"], "alice");
    assert!(is_hex_sha256(&got["definition_version"]), "{got}");
    let slas = got["slas"].as_array().expect("slas");
    assert_eq!(slas.len(), 1, "{got}");
    assert_eq!(slas[0]["name"], "approval");
    assert_eq!(slas[0]["breached"], false);
    assert!(slas[0]["remaining_ms"].as_i64().unwrap() > 0, "{got}");
    assert!(
        !got["timers"].as_array().expect("timers").is_empty(),
        "a running SLA arms timers: {got}"
    );
    assert_eq!(got["read"]["stale"], false);
    assert!((1..=3).contains(&got["read"]["node_id"].as_u64().unwrap()));

    // By id, the same instance.
    let by_id = c.run(&["get", &id, "-o", "json"]).ok().json();
    assert_eq!(by_id["key"], "PO-JSON");
    assert_eq!(by_id["version"], 2);
}

#[test]
fn create_transition_and_get_as_tables() {
    let c = cluster();
    let created = c.run(&[
        "create",
        "purchase-order",
        "--key",
        "PO-TABLE",
        "--data",
        PO_DATA,
        "--as",
        "alice",
    ]);
    created
        .ok()
        .stdout_has(&["  state=draft  version=1  audit_seq="]);
    let id = created
        .stdout
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    assert!(id.starts_with("i-"), "{created}");

    c.run(&[
        "transition",
        "purchase-order/PO-TABLE",
        "submit",
        "--as",
        "alice",
    ])
    .ok()
    .stdout_has(&[&format!("{id}  state=submitted  version=2  audit_seq=")]);

    c.run(&["get", "purchase-order/PO-TABLE"])
        .ok()
        .stdout_has(&[
            &format!("{id} (purchase-order key PO-TABLE)"),
            "  state     submitted  (since ",
            "  version   2",
            "  data      {",
            "\"requester\":\"alice\"",
            "  sla       approval: ",
            "  timer     ",
        ]);

    // A stale read names itself; a follower may not have applied the write yet, so ask
    // until it has.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stale = c.run(&["get", "purchase-order/PO-TABLE", "--stale"]);
        if stale.code == Some(0) && stale.stdout.contains("version   2") {
            stale.stdout_has(&["[stale read]"]);
            break;
        }
        assert!(Instant::now() < deadline, "{stale}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_refused_transition_exits_one_with_its_code_and_changes_nothing() {
    let c = cluster();
    submitted_po("PO-REFUSE");

    // Separation of duties: the requester may not approve, even as an approver.
    let refused = c.run(&[
        "transition",
        "purchase-order/PO-REFUSE",
        "approve",
        "--as",
        "alice",
        "--roles",
        "approver",
    ]);
    refused.code(1).stderr_has(&["error: refused (FORBIDDEN)"]);
    assert!(refused.stdout.is_empty(), "{refused}");

    let json = c.run(&[
        "transition",
        "purchase-order/PO-REFUSE",
        "approve",
        "--as",
        "alice",
        "--roles",
        "approver",
        "-o",
        "json",
    ]);
    let error = json.code(1).json_error();
    assert_eq!(error["exit_code"], 1);
    assert_eq!(error["kind"], "refused");
    assert_eq!(error["code"], "FORBIDDEN");
    assert_eq!(
        error["predicate"],
        "'approver' in actor.roles && actor.id != instance.data.requester"
    );
    assert!(
        error["message"].as_str().unwrap().contains("FORBIDDEN"),
        "{json}"
    );
    assert!(json.stdout.is_empty(), "{json}");

    // Not from this state.
    let wrong_state = c.run(&[
        "transition",
        "purchase-order/PO-REFUSE",
        "place",
        "--as",
        "erp",
        "--kind",
        "worker",
        "-o",
        "json",
    ]);
    assert_eq!(
        wrong_state.code(1).json_error()["code"],
        "NOT_ALLOWED_FROM_STATE"
    );

    // An optimistic check against a stale version.
    let stale_version = c.run(&[
        "transition",
        "purchase-order/PO-REFUSE",
        "approve",
        "--as",
        "bob",
        "--roles",
        "approver",
        "--expected-version",
        "1",
    ]);
    stale_version
        .code(1)
        .stderr_has(&["refused (VERSION_CONFLICT)"]);

    // Nothing changed; the right actor then succeeds.
    let got = c
        .run(&["get", "purchase-order/PO-REFUSE", "-o", "json"])
        .ok()
        .json();
    assert_eq!(got["state"], "submitted");
    assert_eq!(got["version"], 2);
    let approved = c
        .run(&[
            "transition",
            "purchase-order/PO-REFUSE",
            "approve",
            "--as",
            "bob",
            "--roles",
            "approver",
            "--expected-version",
            "2",
            "-o",
            "json",
        ])
        .ok()
        .json();
    assert_eq!(approved["state"], "approved");
    assert_eq!(approved["version"], 3);
}

/// Takes a submitted purchase order through approval and placement to `ordered`.
fn ordered_po(key: &str) {
    let c = cluster();
    submitted_po(key);
    let target = format!("purchase-order/{key}");
    c.run(&[
        "transition",
        &target,
        "approve",
        "--as",
        "bob",
        "--roles",
        "approver",
    ])
    .ok()
    .stdout_has(&["state=approved"]);
    c.run(&[
        "transition",
        &target,
        "place",
        "--as",
        "erp",
        "--kind",
        "worker",
    ])
    .ok()
    .stdout_has(&["state=ordered"]);
}

#[test]
fn event_takes_the_declared_transition() {
    let c = cluster();
    ordered_po("PO-EVENT-JSON");
    ordered_po("PO-EVENT-TABLE");

    let unmatched = c.run(&[
        "event",
        "purchase-order/PO-EVENT-JSON",
        "no.such.event",
        "--as",
        "carrier",
        "--kind",
        "service",
        "-o",
        "json",
    ]);
    assert_eq!(unmatched.code(1).json_error()["code"], "EVENT_UNMATCHED");

    let delivered = c
        .run(&[
            "event",
            "purchase-order/PO-EVENT-JSON",
            "shipment.delivered",
            "--as",
            "carrier",
            "--kind",
            "service",
            "-o",
            "json",
        ])
        .ok()
        .json();
    assert_eq!(delivered["state"], "delivered");
    assert_eq!(delivered["version"], 5);

    c.run(&[
        "event",
        "purchase-order/PO-EVENT-TABLE",
        "shipment.delivered",
        "--as",
        "carrier",
        "--kind",
        "service",
    ])
    .ok()
    .stdout_has(&["  state=delivered  version=5  audit_seq="]);

    // Who may send it is still checked: a human carrier is not the service.
    ordered_po("PO-EVENT-HUMAN");
    c.run(&[
        "event",
        "purchase-order/PO-EVENT-HUMAN",
        "shipment.delivered",
        "--as",
        "carrier",
    ])
    .code(1)
    .stderr_has(&["refused (FORBIDDEN)"]);
}

#[test]
fn list_filters_pages_and_prints_a_table() {
    let c = cluster();
    let file = c.file("cli-list.yaml", &open_close("cli-list"));
    c.run(&["apply", file.to_str().unwrap()]).ok();
    for key in ["L-1", "L-2", "L-3"] {
        c.run(&["create", "cli-list", "--key", key]).ok();
    }
    c.run(&["transition", "cli-list/L-2", "close"])
        .ok()
        .stdout_has(&["state=closed"]);

    let all = c.run(&["list", "cli-list", "-o", "json"]).ok().json();
    assert_eq!(
        keys(&all),
        BTreeSet::from(["L-1".into(), "L-2".into(), "L-3".into()])
    );
    assert_eq!(all["next_page_token"], "");
    for i in all["instances"].as_array().unwrap() {
        assert_eq!(i["workflow"], "cli-list");
        let expected = if i["key"] == "L-2" { "closed" } else { "open" };
        assert_eq!(i["state"], expected, "{i}");
    }

    let open = c
        .run(&["list", "cli-list", "--state", "open", "-o", "json"])
        .ok()
        .json();
    assert_eq!(keys(&open), BTreeSet::from(["L-1".into(), "L-3".into()]));

    let page1 = c
        .run(&["list", "cli-list", "--page-size", "2", "-o", "json"])
        .ok()
        .json();
    assert_eq!(page1["instances"].as_array().unwrap().len(), 2, "{page1}");
    let token = page1["next_page_token"].as_str().unwrap();
    assert!(!token.is_empty(), "{page1}");
    let page2 = c
        .run(&[
            "list",
            "cli-list",
            "--page-size",
            "2",
            "--page-token",
            token,
            "-o",
            "json",
        ])
        .ok()
        .json();
    let mut both = keys(&page1);
    both.extend(keys(&page2));
    assert_eq!(both, keys(&all), "the pages cover the listing: {page2}");
    assert_eq!(page2["instances"].as_array().unwrap().len(), 1, "{page2}");

    let table = c.run(&["list", "cli-list"]);
    table
        .ok()
        .stdout_has(&["ID", "KEY", "STATE", "VERSION", "UPDATED"]);
    let l2 = table
        .stdout
        .lines()
        .find(|l| l.contains(" L-2 "))
        .unwrap_or_else(|| panic!("no row for L-2: {table}"));
    assert!(l2.contains("closed") && l2.starts_with("i-"), "{table}");
    assert_eq!(
        table.stdout.lines().count(),
        4,
        "a header and 3 rows: {table}"
    );
    c.run(&["list", "cli-list", "--page-size", "2"])
        .ok()
        .stdout_has(&["(more: --page-token "]);

    // The node refuses an oversized page as a malformed request: usage.
    c.run(&["list", "cli-list", "--page-size", "501"])
        .code(2)
        .stderr_has(&["page_size 501 is more than 500"]);
}

#[test]
fn history_lists_the_chained_records_of_an_instance() {
    let c = cluster();
    let id = submitted_po("PO-HIST");
    c.run(&[
        "transition",
        "purchase-order/PO-HIST",
        "approve",
        "--as",
        "bob",
        "--roles",
        "approver",
    ])
    .ok();

    let records = c
        .run(&["history", "purchase-order/PO-HIST", "-o", "json"])
        .ok()
        .json();
    let records = records.as_array().expect("one JSON array");
    assert_eq!(records.len(), 3, "{records:?}");
    let expected = [
        ("created", Value::Null, "alice"),
        ("transition", json!("submit"), "alice"),
        ("transition", json!("approve"), "bob"),
    ];
    for (n, (r, (kind, transition, actor))) in records.iter().zip(expected).enumerate() {
        assert_eq!(r["instance_seq"], n as u64 + 1, "{r}");
        assert_eq!(r["record"]["kind"], kind, "{r}");
        assert_eq!(r["record"]["transition"], transition, "{r}");
        assert_eq!(r["record"]["actor"]["id"], actor, "{r}");
        assert_eq!(r["record"]["instance_id"], id.as_str(), "{r}");
        assert!(is_hex_sha256(&r["hash"]), "{r}");
        if n > 0 {
            let previous = &records[n - 1];
            assert_eq!(r["instance_prev_hash"], previous["instance_hash"], "{r}");
            assert!(r["global_seq"].as_u64().unwrap() > previous["global_seq"].as_u64().unwrap());
        }
    }
    assert_eq!(records[2]["record"]["from"], "submitted");
    assert_eq!(records[2]["record"]["to"], "approved");

    let table = c.run(&["history", "purchase-order/PO-HIST"]);
    table.ok().stdout_has(&[
        "SEQ",
        "KIND",
        "ACTOR",
        "TRANSITION",
        "FROM -> TO",
        "draft -> submitted",
        "submitted -> approved",
    ]);
    let approve = table
        .stdout
        .lines()
        .find(|l| l.contains("approve "))
        .unwrap_or_else(|| panic!("no approve row: {table}"));
    assert!(
        approve.contains(" bob ") && approve.contains(" transition "),
        "{table}"
    );
}

#[test]
fn audit_tail_prints_records_from_a_sequence() {
    let c = cluster();
    let created = c
        .run(&[
            "create",
            "purchase-order",
            "--key",
            "PO-TAIL",
            "--data",
            PO_DATA,
            "--as",
            "alice",
            "-o",
            "json",
        ])
        .ok()
        .json();
    let id = created["instance_id"].as_str().unwrap();
    let seq = created["audit_seq"].as_u64().unwrap();
    let from = seq.to_string();

    // Tail reads the answering node's replica, which may not have applied the record yet.
    let deadline = Instant::now() + Duration::from_secs(20);
    let lines = loop {
        let tail = c.run(&["audit", "tail", "--from", &from, "-o", "json"]);
        tail.ok();
        let lines = tail.json_lines();
        if !lines.is_empty() {
            break lines;
        }
        assert!(
            Instant::now() < deadline,
            "record {seq} never showed: {tail}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(lines[0]["global_seq"], seq, "{lines:?}");
    assert_eq!(lines[0]["record"]["kind"], "created");
    assert_eq!(lines[0]["record"]["instance_id"], id);
    assert_eq!(lines[0]["record"]["actor"]["id"], "alice");
    for (n, line) in lines.iter().enumerate() {
        assert_eq!(line["global_seq"], seq + n as u64, "consecutive: {lines:?}");
    }

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let table = c.run(&["audit", "tail", "--from", &from]);
        table
            .ok()
            .stdout_has(&["SEQ", "KIND", "WORKFLOW", "INSTANCE", "ACTOR"]);
        if let Some(row) = table.stdout.lines().find(|l| l.contains(id)) {
            assert!(
                row.trim_start().starts_with(&from)
                    && row.contains(" created ")
                    && row.contains(" purchase-order ")
                    && row.contains(" alice "),
                "{table}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "{table}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn audit_verify_checks_every_endpoint() {
    let c = cluster();
    submitted_po("PO-VERIFY");
    let answer = c.run(&["audit", "verify", "-o", "json"]).ok().json();
    assert_eq!(answer["ok"], true, "{answer}");
    assert!(answer["common_seq"].as_u64().unwrap() >= 2, "{answer}");
    let rows = answer["nodes"].as_array().expect("one row per endpoint");
    assert_eq!(rows.len(), 3);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row["endpoint"], c.endpoint(i), "{row}");
        assert_eq!(row["ok"], true, "{row}");
        assert!(row["records_checked"].as_u64().unwrap() >= 2, "{row}");
        assert!(row["head_seq"].as_u64().unwrap() >= 2, "{row}");
        assert!(is_hex_sha256(&row["head_hash"]), "{row}");
        assert!(is_hex_sha256(&row["hash_at_common"]), "{row}");
    }

    let table = c.run(&["audit", "verify"]);
    table.ok();
    for i in 0..3 {
        let line = format!("{}: ok, ", c.endpoint(i));
        table.stdout_has(&[&line, " records, head "]);
    }
    table.stdout_has(&["the highest every node has: the same hash on every node"]);

    // An anchor of the head checks out on every node; a made-up one does not.
    let anchor = c.run(&["audit", "anchor"]);
    anchor.ok();
    let text = anchor.stdout.trim().to_string();
    let (seq, hash) = text.split_once(':').expect("SEQ:HASH");
    assert!(seq.parse::<u64>().unwrap() >= 2, "{text}");
    assert!(is_hex_sha256(&serde_json::json!(hash)), "{text}");
    c.run(&["audit", "verify", "--anchor", &text])
        .ok()
        .stdout_has(&[&format!("anchor {seq}: matches on every node")]);
    let forged = format!("{seq}:{}", "0".repeat(64));
    c.run(&["audit", "verify", "--anchor", &forged])
        .code(1)
        .stdout_has(&["the anchor says", "the history was rewritten"]);
    c.run(&["audit", "verify", "--anchor", "seven"])
        .code(2)
        .stderr_has(&["is not an anchor: expected SEQ:HASH"]);
}

/// `cluster status --output json`, once the three nodes agree on one leader.
fn settled_status(digest: bool) -> Vec<Value> {
    let c = cluster();
    let mut args = vec!["cluster", "status", "-o", "json"];
    if digest {
        args.push("--digest");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = c.run(&args);
        let rows = status.ok().json().as_array().expect("rows").clone();
        let leaders = rows.iter().filter(|r| r["role"] == "Leader").count();
        if leaders == 1 && rows.iter().all(|r| r["leader_id"] == rows[0]["leader_id"]) {
            return rows;
        }
        assert!(Instant::now() < deadline, "no single leader: {status}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn cluster_status_shows_every_node() {
    let c = cluster();
    let rows = settled_status(false);
    assert_eq!(rows.len(), 3);
    let ids: BTreeSet<u64> = rows
        .iter()
        .map(|r| r["node_id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, BTreeSet::from([1, 2, 3]));
    let leader = rows.iter().find(|r| r["role"] == "Leader").unwrap();
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row["endpoint"], c.endpoint(i), "{row}");
        assert_eq!(row["node_id"], i as u64 + 1, "{row}");
        assert_eq!(row["leader_id"], leader["node_id"], "{row}");
        assert_eq!(row["leader_addr"], leader["endpoint"], "{row}");
        assert!(row["term"].as_u64().unwrap() >= 1, "{row}");
        assert!(row["applied_index"].as_u64().unwrap() >= 1, "{row}");
        assert!(!row["cluster_time"].as_str().unwrap().is_empty(), "{row}");
        let members = row["members"].as_array().unwrap();
        assert_eq!(members.len(), 3, "{row}");
        assert!(members.iter().all(|m| m["voter"] == true), "{row}");
        // The test cluster waited for the gate: every node applied the format its build reads.
        let readable = row["log_format_readable"].as_u64().unwrap();
        assert!(readable >= 9, "{row}");
        assert_eq!(row["log_format"].as_u64(), Some(readable), "{row}");
    }

    for row in settled_status(true) {
        assert!(is_hex_sha256(&row["digest"]), "{row}");
    }

    let table = c.run(&["cluster", "status"]);
    table.ok().stdout_has(&[
        "ENDPOINT", "ID", "ROLE", "TERM", "LOG", "APPLIED", "LEADER", "Leader",
    ]);
    for i in 0..3 {
        table.stdout_has(&[&c.endpoint(i)]);
    }
    c.run(&["cluster", "status", "--digest"])
        .ok()
        .stdout_has(&["DIGEST"]);
}

#[test]
fn missing_things_exit_four() {
    let c = cluster();
    c.run(&["get", "purchase-order/NO-SUCH"])
        .code(4)
        .stderr_has(&["not found: workflow `purchase-order` has no instance with key `NO-SUCH`"]);
    let by_id = c.run(&["get", "i-999999999", "-o", "json"]);
    let error = by_id.code(4).json_error();
    assert_eq!(error["exit_code"], 4);
    assert_eq!(error["kind"], "not_found");
    assert_eq!(error["code"], Value::Null);
    assert!(by_id.stdout.is_empty(), "{by_id}");

    c.run(&[
        "transition",
        "purchase-order/NO-SUCH",
        "submit",
        "--as",
        "alice",
    ])
    .code(4);
    c.run(&["event", "purchase-order/NO-SUCH", "shipment.delivered"])
        .code(4);
    c.run(&["history", "purchase-order/NO-SUCH"]).code(4);

    let workflow = c.run(&["create", "no-such-workflow", "--key", "K", "-o", "json"]);
    let error = workflow.code(4).json_error();
    assert_eq!(error["code"], "UNKNOWN_WORKFLOW");
    assert_eq!(error["kind"], "not_found");

    c.run(&["cluster", "remove", "9"])
        .code(4)
        .stderr_has(&["node 9 is not a member"]);
    c.run(&["cluster", "promote", "9"]).code(4);
}

#[test]
fn bad_usage_exits_two_before_calling_anyone() {
    // Nothing listens on this port: each of these must fail before connecting.
    let nowhere = format!("127.0.0.1:{}", free_port());
    let run = |args: &[&str]| {
        let mut all = vec!["--endpoints", nowhere.as_str()];
        all.extend_from_slice(args);
        lockstep(&all)
    };
    run(&["transition", "purchase-order/PO-1"])
        .code(2)
        .stderr_has(&["Usage:"]);
    run(&["get", "purchase-order/PO-1", "--output", "yaml"]).code(2);
    run(&["frobnicate"]).code(2);
    run(&["get", "purchase-order/PO-1", "--timeout", "soon"])
        .code(2)
        .stderr_has(&["not a duration"]);
    run(&["create", "purchase-order", "--data", "{oops"])
        .code(2)
        .stderr_has(&["--data is not valid JSON"]);
    run(&[
        "transition",
        "purchase-order/PO-1",
        "submit",
        "--payload",
        "[",
    ])
    .code(2)
    .stderr_has(&["--payload is not valid JSON"]);
    run(&["get", "purchase-order/PO-1", "--kind", "robot"])
        .code(2)
        .stderr_has(&["--kind `robot` is not human, service or worker"]);
    let json = run(&["create", "purchase-order", "--data", "{oops", "-o", "json"]);
    let error = json.code(2).json_error();
    assert_eq!(error["kind"], "usage");
    assert_eq!(error["exit_code"], 2);
}

#[test]
fn an_unreachable_cluster_exits_three_within_the_timeout() {
    let nowhere = format!("127.0.0.1:{}", free_port());
    let started = Instant::now();
    lockstep(&[
        "get",
        "purchase-order/PO-1",
        "--endpoints",
        &nowhere,
        "--timeout",
        "1s",
    ])
    .code(3)
    .stderr_has(&["no node answered within 1s", &nowhere]);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "--timeout 1s took {:?}",
        started.elapsed()
    );

    let write = lockstep(&[
        "create",
        "purchase-order",
        "--data",
        PO_DATA,
        "--endpoints",
        &nowhere,
        "--timeout",
        "1s",
        "-o",
        "json",
    ]);
    let error = write.code(3).json_error();
    assert_eq!(error["kind"], "unavailable");
    assert_eq!(error["exit_code"], 3);
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("retry it with the same request id"),
        "{write}"
    );

    // Per-node questions print what the live nodes said, then exit 3 for the silent one.
    let c = cluster();
    let both = format!("{},{nowhere}", c.endpoint(0));
    let status = lockstep(&[
        "cluster",
        "status",
        "--endpoints",
        &both,
        "--timeout",
        "2s",
        "-o",
        "json",
    ]);
    status.code(3);
    let rows = status.json();
    assert_eq!(rows[0]["node_id"], 1, "{status}");
    assert_eq!(rows[1]["endpoint"], nowhere.as_str(), "{status}");
    assert!(rows[1]["error"].is_string(), "{status}");
    assert_eq!(status.json_error()["kind"], "unavailable");

    lockstep(&["audit", "verify", "--endpoints", &both, "--timeout", "1s"])
        .code(3)
        .stdout_has(&[
            &format!("{}: ok, ", c.endpoint(0)),
            &format!("{nowhere}: unreachable"),
        ]);
}

#[test]
fn the_actor_and_a_request_id_can_come_from_the_environment_and_flags() {
    let c = cluster();
    let data = r#"{"amount": 20, "requester": "carol"}"#;
    let env = [("LOCKSTEP_ACTOR", "carol"), ("LOCKSTEP_ROLES", "requester")];
    c.run_env(
        &[
            "create",
            "purchase-order",
            "--key",
            "PO-ENV",
            "--data",
            data,
        ],
        &env,
    )
    .ok();
    c.run_env(&["transition", "purchase-order/PO-ENV", "submit"], &env)
        .ok()
        .stdout_has(&["state=submitted"]);
    let got = c
        .run(&["get", "purchase-order/PO-ENV", "-o", "json"])
        .ok()
        .json();
    assert_eq!(got["created_by"], "carol");

    // A retry with the same request id is answered with the first outcome, applied once.
    let args = [
        "create",
        "purchase-order",
        "--key",
        "PO-RETRY",
        "--data",
        PO_DATA,
        "--as",
        "alice",
        "--request-id",
        "cli-online-retry-1",
        "-o",
        "json",
    ];
    let first = c.run(&args).ok().json();
    let second = c.run(&args).ok().json();
    assert_eq!(first, second);
    let history = c
        .run(&["history", "purchase-order/PO-RETRY", "-o", "json"])
        .ok()
        .json();
    assert_eq!(history.as_array().unwrap().len(), 1, "{history}");
}

#[test]
fn the_example_workflow_was_applied_from_its_file() {
    // The cluster start applied examples/workflows/purchase-order.yaml with the CLI; applying
    // it again is a no-op that names the file.
    cluster()
        .run(&["apply", PO])
        .ok()
        .stdout_has(&["unchanged purchase-order @ ", &format!("({PO})")]);
}

/// Two versions of a workflow of this test's own: v2 calls `open` `active`.
fn migrate_versions() -> (String, String) {
    let v1 = "workflow: cli-migrate\nstates:\n  new: { initial: true }\n  open: {}\n  closed: { terminal: true }\ntransitions:\n  take: { from: new, to: open, allow: \"true\" }\n  close: { from: open, to: closed, allow: \"true\" }\n".to_string();
    let v2 = v1.replace("open", "active");
    (v1, v2)
}

#[test]
fn migrate_moves_instances_to_a_new_version_and_exits_by_convention() {
    let c = cluster();
    let (v1, v2) = migrate_versions();
    let v1_file = c.file("cli-migrate-v1.yaml", &v1);
    let v2_file = c.file("cli-migrate-v2.yaml", &v2);
    let version = |file: &std::path::Path| {
        let applied = c
            .run(&["apply", file.to_str().unwrap(), "-o", "json"])
            .ok()
            .json();
        applied[0]["version"].as_str().expect("version").to_string()
    };
    let v1 = version(&v1_file);
    for key in ["M-1", "M-2"] {
        c.run(&["create", "cli-migrate", "--key", key]).ok();
    }
    c.run(&["transition", "cli-migrate/M-2", "take"])
        .ok()
        .stdout_has(&["state=open"]);
    let v2 = version(&v2_file);
    let (from, to) = (&v1[..12], &v2[..12]);

    // `open` has no counterpart in v2: refused (exit 1) with its code, nothing migrated.
    let unmapped = c.run(&[
        "migrate",
        "cli-migrate",
        "--all",
        "--from",
        from,
        "--to",
        to,
        "--timers",
        "restart",
        "-o",
        "json",
    ]);
    let error = unmapped.code(1).json_error();
    assert_eq!(error["code"], "MIGRATION_INVALID");
    assert!(
        error["message"].as_str().unwrap().contains("state `open`"),
        "{error}"
    );
    assert!(unmapped.stdout.is_empty(), "{unmapped}");
    // An unknown version is not found (exit 4); a malformed mapping is usage (exit 2).
    let unknown = c.run(&[
        "migrate",
        "cli-migrate",
        "--all",
        "--from",
        from,
        "--to",
        "0000000000ff",
        "--timers",
        "restart",
        "-o",
        "json",
    ]);
    assert_eq!(unknown.code(4).json_error()["code"], "UNKNOWN_VERSION");
    c.run(&[
        "migrate",
        "cli-migrate",
        "--all",
        "--from",
        from,
        "--to",
        to,
        "--timers",
        "restart",
        "--map",
        "open",
    ])
    .code(2)
    .stderr_has(&["`open` is not OLD=NEW"]);
    c.run(&[
        "migrate",
        "cli-migrate",
        "--all",
        "--from",
        from,
        "--to",
        to,
    ])
    .code(2)
    .stderr_has(&["--timers"]);
    let got = c.run(&["get", "cli-migrate/M-2", "-o", "json"]).ok().json();
    assert_eq!(
        got["definition_version"],
        v1.as_str(),
        "refusals changed nothing"
    );

    // One listed instance, as a table.
    c.run(&[
        "migrate",
        "cli-migrate",
        "cli-migrate/M-1",
        "--from",
        from,
        "--to",
        to,
        "--map",
        "open=active",
        "--timers",
        "keep-deadline",
    ])
    .ok()
    .stdout_has(&[
        "new -> new  version=2",
        &format!(
            "migrated 1 instance(s) of cli-migrate from {from} to {to} (timers: keep-deadline)"
        ),
    ]);
    // Then every instance still at v1, as JSON: only M-2 is left.
    let all = c
        .run(&[
            "migrate",
            "cli-migrate",
            "--all",
            "--from",
            from,
            "--to",
            to,
            "--map",
            "open=active",
            "--timers",
            "keep-remaining",
            "-o",
            "json",
        ])
        .ok()
        .json();
    assert_eq!(all["migrated"], 1, "{all}");
    assert_eq!(all["from_version"], v1.as_str());
    assert_eq!(all["to_version"], v2.as_str());
    assert_eq!(all["timer_policy"], "keep-remaining");
    assert_eq!(all["instances"][0]["from_state"], "open");
    assert_eq!(all["instances"][0]["to_state"], "active");
    let got = c.run(&["get", "cli-migrate/M-2", "-o", "json"]).ok().json();
    assert_eq!(got["definition_version"], v2.as_str());
    assert_eq!(got["state"], "active");
    // It runs v2 now: v2's transitions apply.
    c.run(&["transition", "cli-migrate/M-2", "close"])
        .ok()
        .stdout_has(&["state=closed"]);
    c.run(&["history", "cli-migrate/M-2"])
        .ok()
        .stdout_has(&["migration", "open -> active"]);
    // Nothing is left at v1.
    let again = c
        .run(&[
            "migrate",
            "cli-migrate",
            "--all",
            "--from",
            from,
            "--to",
            to,
            "--timers",
            "restart",
            "-o",
            "json",
        ])
        .ok()
        .json();
    assert_eq!(again["migrated"], 0, "{again}");
}

#[test]
fn migrate_help_teaches_with_an_example() {
    lockstep(&["migrate", "--help"]).ok().stdout_has(&[
        "Example: lockstep migrate purchase-order",
        "--timers <POLICY>",
        "keep-deadline",
        "keep-remaining",
        "restart",
        "--map <OLD=NEW>",
        "--all",
        "migrate_instances",
    ]);
}

#[test]
fn actions_and_inbox_say_what_the_caller_may_do_now() {
    let c = cluster();
    let id = submitted_po("CLI-ACT-1");
    let target = "purchase-order/CLI-ACT-1";

    // The approver's actions, as a table and as JSON.
    c.run(&["actions", target, "--as", "bob", "--roles", "approver"])
        .ok()
        .stdout_has(&[
            &format!("{id} (purchase-order) in state submitted"),
            "approve",
            "→ approved",
            "now",
        ]);
    let bob = c
        .run(&[
            "actions", target, "--as", "bob", "--roles", "approver", "-o", "json",
        ])
        .ok()
        .json();
    let names: Vec<&str> = bob["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .map(|a| a["transition"].as_str().expect("transition"))
        .collect();
    assert_eq!(names, ["approve", "ask", "reject"]);
    assert_eq!(bob["actions"][0]["now"], json!(true));

    // The requester waits for withdraw's gate, printed as a duration for people.
    c.run(&["actions", target, "--as", "alice"])
        .ok()
        .stdout_has(&["withdraw", "→ draft", "  in "]);
    let alice = c
        .run(&["actions", target, "--as", "alice", "-o", "json"])
        .ok()
        .json();
    assert_eq!(alice["actions"][0]["now"], json!(false));
    assert!(alice["actions"][0]["opens_at"].is_string(), "{alice}");

    // Someone with no role may do nothing.
    c.run(&["actions", target, "--as", "mallory"])
        .ok()
        .stdout_has(&["nothing you may do now"]);

    // The approver's inbox lists the order with its actions.
    let inbox = c
        .run(&[
            "inbox",
            "purchase-order",
            "--state",
            "submitted",
            "--page-size",
            "100",
            "--as",
            "bob",
            "--roles",
            "approver",
            "-o",
            "json",
        ])
        .ok()
        .json();
    let item = inbox["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|i| i["instance_id"] == json!(id))
        .unwrap_or_else(|| panic!("{id} in bob's inbox: {inbox}"));
    assert_eq!(item["key"], json!("CLI-ACT-1"));
    assert_eq!(item["actions"].as_array().map(Vec::len), Some(3));

    // A bad page size is a refusal from the node with what to do; no workflow is usage.
    c.run(&[
        "inbox",
        "purchase-order",
        "--page-size",
        "500",
        "--as",
        "bob",
    ])
    .code(2)
    .stderr_has(&["page_size 500 is more than 100"]);
    c.run(&["inbox", "--as", "bob"]).code(2);
}

#[test]
fn definitions_lists_workflows_and_the_versions_of_one() {
    let c = cluster();
    c.run(&["definitions"])
        .ok()
        .stdout_has(&["purchase-order", "applied by"]);
    let all = c.run(&["definitions", "-o", "json"]).ok().json();
    let po = all["workflows"]
        .as_array()
        .expect("workflows")
        .iter()
        .find(|w| w["workflow"] == json!("purchase-order"))
        .unwrap_or_else(|| panic!("purchase-order listed: {all}"));
    assert!(po["versions"].as_u64().is_some_and(|n| n >= 1), "{po}");
    assert!(is_hex_sha256(&po["latest"]["version"]), "{po}");
    let versions = c
        .run(&["definitions", "purchase-order", "-o", "json"])
        .ok()
        .json();
    let list = versions["versions"].as_array().expect("versions");
    assert_eq!(list.len() as u64, po["versions"].as_u64().unwrap());
    assert_eq!(list.last().unwrap()["version"], po["latest"]["version"]);
    assert!(list[0]["provenance"]["path"].is_string(), "{versions}");
    c.run(&["definitions", "no-such-workflow"])
        .code(4)
        .stderr_has(&["no definition of workflow `no-such-workflow`"]);
}

#[test]
fn explain_shows_each_record_with_its_version_and_what_the_state_requires() {
    let c = cluster();
    let id = submitted_po("CLI-EXPLAIN-1");
    let target = "purchase-order/CLI-EXPLAIN-1";
    c.run(&["explain", target]).ok().stdout_has(&[
        &format!("{id} (purchase-order key CLI-EXPLAIN-1) in state submitted, version 2"),
        "history",
        "created",
        "submit: draft → submitted  by alice",
        "allow `actor.id == instance.data.requester` was true",
        "from `submitted`",
        "approve → approved: allow `'approver' in actor.roles && actor.id != instance.data.requester`; guard `instance.data.amount <= 10000.0 || 'director' in actor.roles`; then a task `create-purchase-order` on queue `erp`",
        "withdraw → draft: allow `actor.id == instance.data.requester`; not_before 1h after entering",
        "escalate → escalated: system: only the engine takes it",
    ]);
    let v = c.run(&["explain", target, "-o", "json"]).ok().json();
    assert_eq!(v["state"], json!("submitted"));
    let history = v["history"].as_array().expect("history");
    assert_eq!(history.len(), 2, "{v}");
    assert_eq!(history[1]["transition"], json!("submit"));
    assert_eq!(history[1]["definition_version"], v["definition_version"]);
    assert_eq!(history[1]["predicates"][0]["result"], json!(true));
    assert!(
        v["provenance"]
            .as_str()
            .is_some_and(|p| p.contains("purchase-order.yaml")),
        "{v}"
    );
    let names: Vec<&str> = v["transitions"]
        .as_array()
        .expect("transitions")
        .iter()
        .map(|t| t["transition"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["approve", "ask", "escalate", "reject", "withdraw"]);
    c.run(&["explain", "i-999999"]).code(4);
}

#[test]
fn sla_forecast_lists_the_warnings_and_breaches_due_before_the_horizon() {
    let c = cluster();
    let id = submitted_po("CLI-FORECAST-1");
    // The approval SLA (16 business hours) warns at 50% and 75% and breaches at 100%: a
    // month ahead holds all three; JSON lists them soonest first.
    let v = c
        .run(&[
            "sla",
            "forecast",
            "purchase-order",
            "--until",
            "30d",
            "-o",
            "json",
        ])
        .ok()
        .json();
    assert_eq!(v["complete"], json!(true));
    let mine: Vec<&Value> = v["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["instance_id"] == json!(id))
        .collect();
    let events: Vec<&str> = mine.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(events, ["warning 50%", "warning 75%", "breach"], "{v}");
    assert!(
        mine.iter()
            .all(|e| e["sla"] == json!("approval") && e["key"] == json!("CLI-FORECAST-1"))
    );
    let due: Vec<&str> = mine.iter().map(|e| e["due_at"].as_str().unwrap()).collect();
    assert!(due.windows(2).all(|w| w[0] <= w[1]), "{due:?}");

    // A horizon already passed holds nothing of it; the table says so in words.
    let past = c
        .run(&[
            "sla",
            "forecast",
            "purchase-order",
            "--until",
            "2000-01-01T00:00:00Z",
            "-o",
            "json",
        ])
        .ok()
        .json();
    assert!(past["events"].as_array().unwrap().is_empty(), "{past}");
    c.run(&["sla", "forecast", "purchase-order", "--until", "30d"])
        .ok()
        .stdout_has(&[
            "SLA events of purchase-order before",
            "breach",
            &id,
            "approval",
        ]);
    c.run(&["sla", "forecast", "purchase-order", "--until", "soon"])
        .code(2)
        .stderr_has(&["neither a time"]);
}

#[test]
fn replay_runs_the_recorded_commands_through_another_version_before_a_migration() {
    let c = cluster();
    let v1 = std::fs::read_to_string(common::root().join(PO))
        .unwrap()
        .replace("workflow: purchase-order", "workflow: cli-replay");
    // v2: approvals only up to 100, and an approval SLA of 8 business hours, not 16.
    let v2 = v1
        .replace("within: 16h", "within: 8h")
        .replace("amount <= 10000.0", "amount <= 100.0");
    let v1_file = c.file("cli-replay-v1.yaml", &v1);
    let v2_file = c.file("cli-replay-v2.yaml", &v2);
    let v2_path = v2_file.to_str().unwrap();
    c.run(&["apply", v1_file.to_str().unwrap()]).ok();
    // An approved order (amount 500). Instances created before the cluster raised its log
    // format to 5 (the journal's) have no journal and are reported so; the cluster raises it
    // within seconds of its start.
    let deadline = Instant::now() + Duration::from_secs(30);
    let id = (1..)
        .find_map(|n| {
            let key = format!("R-{n}");
            let created = c
                .run(&[
                    "create",
                    "cli-replay",
                    "--key",
                    &key,
                    "--data",
                    PO_DATA,
                    "--as",
                    "alice",
                    "-o",
                    "json",
                ])
                .ok()
                .json();
            let id = created["instance_id"].as_str().unwrap().to_string();
            let target = format!("cli-replay/{key}");
            c.run(&["transition", &target, "submit", "--as", "alice"])
                .ok();
            c.run(&[
                "transition",
                &target,
                "approve",
                "--as",
                "bob",
                "--roles",
                "approver",
            ])
            .ok()
            .stdout_has(&["state=approved"]);
            // Under its own version the history replays exactly.
            let same = c
                .run(&[
                    "replay",
                    "cli-replay",
                    "--to",
                    "latest",
                    "--instance",
                    &id,
                    "-o",
                    "json",
                ])
                .ok()
                .json();
            let verdict = &same["instances"][0];
            if verdict["result"] == json!("same") {
                return Some(id);
            }
            assert_eq!(verdict["result"], json!("not_replayable"), "{same}");
            assert!(
                verdict["reason"]
                    .as_str()
                    .unwrap()
                    .contains("before the cluster kept journals"),
                "{same}"
            );
            assert!(Instant::now() < deadline, "no journal after 30 s: {same}");
            std::thread::sleep(Duration::from_secs(1));
            None
        })
        .unwrap();

    // v2, a file not yet applied: bob's approval would be refused by its guard, and the SLA
    // would still run with 8 hours. --exit-code exits 5 for a difference.
    let v = c
        .run(&[
            "replay",
            "cli-replay",
            "--to",
            v2_path,
            "--instance",
            &id,
            "--exit-code",
            "-o",
            "json",
        ])
        .code(5)
        .json();
    assert_eq!(v["differs"], json!(1), "{v}");
    let replay = &v["instances"][0]["replay"];
    assert_eq!(replay["old_state"], json!("approved"));
    assert_eq!(replay["new_state"], json!("submitted"));
    let refused = &replay["differences"][0];
    assert_eq!(refused["kind"], json!("refused"), "{v}");
    assert_eq!(refused["seq"], json!(3));
    assert_eq!(refused["code"], json!("GUARD_FALSE"));
    assert_eq!(refused["command"], json!("transition approve by bob"));
    let sla = &replay["slas"]["approval"];
    assert_eq!(sla["old"]["budget_ms"], json!(16 * 3_600_000));
    assert_eq!(sla["new"]["budget_ms"], json!(8 * 3_600_000));
    assert!(
        sla["new"]["breach_due"].as_str().unwrap().ends_with('Z'),
        "{v}"
    );

    // The table, over every instance of the workflow; nothing was changed by the replay.
    c.run(&["replay", "cli-replay", "--to", v2_path])
        .ok()
        .stdout_has(&[
            "Replaying ",
            &format!("{id:<14} approved, but submitted under the new version"),
            "transition approve by bob: refused GUARD_FALSE",
            "the old version went to approved",
            "SLA approval: budget 16h, stopped → budget 8h, breach due ",
            "1 differ",
        ]);
    let got = c.run(&["get", &id, "-o", "json"]).ok().json();
    assert_eq!(got["state"], json!("approved"), "{got}");

    // Bad input is refused before anything is read, with what to write instead.
    c.run(&["replay", "cli-replay", "--to", "not-a-version!"])
        .code(2)
        .stderr_has(&["neither a definition file nor an applied version"]);
    c.run(&[
        "replay",
        "cli-replay",
        "--to",
        v1_file.to_str().unwrap().replace("v1", "v9").as_str(),
    ])
    .code(2);
    let other = c.file("cli-replay-other.yaml", &open_close("cli-replay-other"));
    c.run(&["replay", "cli-replay", "--to", other.to_str().unwrap()])
        .code(2)
        .stderr_has(&["defines workflow `cli-replay-other`, not `cli-replay`"]);
}

#[test]
fn redact_erases_data_fields_and_the_audit_chain_still_verifies() {
    let c = cluster();
    let id = submitted_po("CLI-REDACT-1");
    let target = "purchase-order/CLI-REDACT-1";
    c.run(&["redact", target, "--fields", "requester"])
        .ok()
        .stdout_has(&[&id, "version=3"]);
    let got = c.run(&["get", target, "-o", "json"]).ok().json();
    let requester = got["data"]["requester"].as_str().expect("a digest");
    assert!(requester.starts_with("redacted:sha256:"), "{got}");
    assert_eq!(got["data"]["amount"], json!(500));
    let history = c.run(&["history", target, "-o", "json"]).ok().json();
    let kinds: Vec<&str> = history
        .as_array()
        .expect("records")
        .iter()
        .map(|r| r["record"]["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.last(), Some(&"redacted"), "{history}");
    c.run(&["audit", "verify"]).ok();
    // A field the data does not have: refused (exit 1), nothing changed; no field: usage.
    let missing = c.run(&["redact", target, "--fields", "ssn", "-o", "json"]);
    let error = missing.code(1).json_error();
    assert_eq!(error["code"], "PAYLOAD_INVALID");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("no data field `ssn`"),
        "{error}"
    );
    c.run(&["redact", target, "--fields", "a..b"]).code(2);
    let again = c.run(&["get", target, "-o", "json"]).ok().json();
    assert_eq!(again["version"], json!(3));
}

#[test]
fn subscriptions_are_created_listed_paused_resumed_and_deleted() {
    let c = cluster();
    // Nothing listens there; these subscriptions match nothing this test writes.
    let url = format!("http://127.0.0.1:{}/hook", free_port());
    let created = c
        .run(&[
            "subscriptions",
            "create",
            "cli-feed",
            "--url",
            &url,
            "--secret",
            "cli",
            "--workflow",
            "no-such-workflow",
            "--record-kind",
            "sla_breach",
            "--output",
            "json",
        ])
        .ok()
        .json();
    assert_eq!(created["name"], "cli-feed");
    assert_eq!(created["filter"]["kinds"], json!(["sla_breach"]));
    assert_eq!(created["paused"], false);
    c.run(&["subscriptions", "list"]).ok().stdout_has(&[
        "cli-feed",
        "active",
        &url,
        "workflow=no-such-workflow kind=sla_breach",
    ]);
    c.run(&[
        "subscriptions",
        "pause",
        "cli-feed",
        "--reason",
        "receiver maintenance",
    ])
    .ok()
    .stdout_has(&["cli-feed  paused", "receiver maintenance"]);
    let listed = c
        .run(&["subscriptions", "list", "--output", "json"])
        .ok()
        .json();
    let mine: Vec<&Value> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["name"] == "cli-feed")
        .collect();
    assert_eq!(mine.len(), 1, "{listed}");
    assert_eq!(mine[0]["paused"], true);
    assert_eq!(mine[0]["paused_by"], "operator");
    c.run(&["subscriptions", "resume", "cli-feed"])
        .ok()
        .stdout_has(&["cli-feed  active"]);
    c.run(&["subscriptions", "delete", "cli-feed"])
        .ok()
        .stdout_has(&["deleted cli-feed"]);
    // Gone: not found (exit 4) with its code; a bad kind and an unknown secret are refused
    // before anything is written, saying what to change.
    let gone = c.run(&["subscriptions", "get", "cli-feed", "--output", "json"]);
    gone.code(4);
    assert_eq!(gone.json_error()["code"], "UNKNOWN_SUBSCRIPTION");
    c.run(&[
        "subscriptions",
        "create",
        "bad",
        "--url",
        &url,
        "--secret",
        "cli",
        "--record-kind",
        "breach",
    ])
    .code(2)
    .stderr_has(&["unknown record kind `breach`", "sla_breach"]);
    c.run(&[
        "subscriptions",
        "create",
        "bad",
        "--url",
        &url,
        "--secret",
        "nope",
    ])
    .code(2)
    .stderr_has(&["no signing secret named `nope`"]);
}

#[test]
fn schedules_are_created_listed_paused_resumed_and_deleted() {
    let c = cluster();
    // New Year's morning in Berlin: far enough that this test sees no tick fire.
    let created = c
        .run(&[
            "schedules",
            "create",
            "new-year",
            "--workflow",
            "purchase-order",
            "--cron",
            "0 9 1 1 *",
            "--time-zone",
            "Europe/Berlin",
            "--key",
            "ny-{year}",
            "--data",
            r#"{"amount": 1, "requester": "{schedule}"}"#,
            "--output",
            "json",
        ])
        .ok()
        .json();
    assert_eq!(created["name"], "new-year");
    assert_eq!(created["state"], "active");
    assert_eq!(created["time_zone"], "Europe/Berlin");
    let local = created["next"]["local"].as_str().unwrap();
    assert!(local.ends_with("-01-01T09:00:00"), "{created}");
    assert!(
        created["next"]["at"]
            .as_str()
            .unwrap()
            .ends_with("T08:00:00Z"),
        "{created}"
    );
    c.run(&["schedules", "list"]).ok().stdout_has(&[
        "new-year",
        "active",
        "0 9 1 1 * Europe/Berlin",
        "(in ",
        "no tick yet",
    ]);
    c.run(&["schedules", "get", "new-year"]).ok().stdout_has(&[
        "creates purchase-order",
        "At 09:00",
        "overlap skip, catch-up one",
    ]);
    c.run(&["schedules", "pause", "new-year", "--reason", "freeze"])
        .ok()
        .stdout_has(&["new-year  paused", "freeze"]);
    c.run(&["schedules", "resume", "new-year"])
        .ok()
        .stdout_has(&["new-year  active"]);
    c.run(&["schedules", "delete", "new-year"])
        .ok()
        .stdout_has(&["deleted new-year"]);
    let gone = c.run(&["schedules", "get", "new-year", "--output", "json"]);
    gone.code(4);
    assert_eq!(gone.json_error()["code"], "UNKNOWN_SCHEDULE");
    // Bad input is refused before anything is written, saying what to write.
    c.run(&[
        "schedules",
        "create",
        "bad",
        "--workflow",
        "purchase-order",
        "--cron",
        "every day",
    ])
    .code(2)
    .stderr_has(&["is not a cron expression", "five fields"]);
    c.run(&[
        "schedules",
        "create",
        "bad",
        "--workflow",
        "purchase-order",
        "--cron",
        "@daily",
        "--catch-up-window",
        "soon",
    ])
    .code(2)
    .stderr_has(&["--catch-up-window", "duration"]);
    lockstep(&["schedules", "create", "--help"])
        .ok()
        .stdout_has(&["{quarter}", "springs forward", "falls back"]);
}
