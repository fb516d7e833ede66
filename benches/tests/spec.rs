//! Load specs (`--spec`) and agents (`lockstep-bench agent`), end to end: a bad spec is
//! refused with its line and column before anything starts; the shipped specs run against a
//! one-node cluster and report per step (and per task queue); and two agent processes on this
//! machine share a run, start together and send back histograms that the controller merges.
//! Agents on one machine share its clock, so this proves the protocol and the merge, not the
//! clock-offset correction (whose arithmetic has unit tests). Debug binaries: the numbers
//! mean nothing, only that every part ran and measured something.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{bench, run_json, show};

fn specs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("specs")
}

/// Runs the bench with `args` on a fresh one-node cluster; answers the JSON report.
fn run(args: &[&str]) -> (serde_json::Value, String) {
    let mut command = bench();
    command
        .args(["--nodes", "1", "--duration", "2s", "--warmup", "1s"])
        .args(args);
    let (report, shown, _dir) = run_json(command);
    (report, shown)
}

fn step<'a>(level: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    level["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == name)
        .unwrap_or_else(|| panic!("no step {name} in {level}"))
}

#[test]
fn a_bad_spec_is_refused_with_its_place_and_starts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("bad.yaml");
    std::fs::write(
        &spec,
        "workflows: []\nactors:\n  alice: {}\nsteps:\n  - name: x\n    actor: bob\n    create: { workflow: w, data: { n: \"{random:9..1}\" } }\n",
    )
    .unwrap();
    let started = Instant::now();
    let out = bench()
        .arg("--spec")
        .arg(&spec)
        // A lockstepd that does not exist: the spec must be refused before it is needed.
        .args(["--lockstepd", "/nonexistent/lockstepd"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{}", show(&out));
    let file = spec.display().to_string();
    assert!(
        stderr.contains(&format!("{file}:6:")) && stderr.contains("no actor `bob`"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{file}:7:")) && stderr.contains("bad template"),
        "{stderr}"
    );
    assert!(!stderr.contains("no lockstepd"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(10));

    // The schema prints, and is the committed one.
    let schema = bench().arg("schema").output().unwrap();
    assert!(schema.status.success());
    let committed = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../schema/bench-spec.schema.json"),
    )
    .unwrap();
    assert_eq!(String::from_utf8_lossy(&schema.stdout), committed);
}

#[test]
fn the_shipped_specs_run_and_report_per_step() {
    let transitions = specs().join("transitions.yaml");
    let (report, shown) = run(&[
        "--spec",
        transitions.to_str().unwrap(),
        "--concurrency",
        "2",
    ]);
    let level = &report["levels"][0];
    let order = step(level, "order");
    // Every unit is a create and a submit, both counted under the step.
    assert!(order["operations"].as_u64().unwrap() > 0, "{shown}");
    assert_eq!(order["errors"].as_u64(), Some(0), "{shown}");
    assert_eq!(level["operations"], order["operations"], "{shown}");
    assert!(shown.contains("Per step"), "{shown}");

    let reads = specs().join("reads.yaml");
    let (report, shown) = run(&["--spec", reads.to_str().unwrap(), "--concurrency", "4"]);
    let level = &report["levels"][0];
    for name in ["get", "list"] {
        assert!(
            step(level, name)["operations"].as_u64().unwrap() > 0,
            "{name}: {shown}"
        );
    }
    assert_eq!(level["errors"].as_u64(), Some(0), "{shown}");

    // Open loop, with task workers beside the producers.
    let tasks = specs().join("tasks.yaml");
    let (report, shown) = run(&[
        "--spec",
        tasks.to_str().unwrap(),
        "--mode",
        "open",
        "--rate",
        "20/s",
    ]);
    let level = &report["levels"][0];
    assert_eq!(level["offered_per_second"].as_f64(), Some(20.0), "{shown}");
    let worker = step(level, "worker bench");
    assert!(worker["operations"].as_u64().unwrap() > 0, "{shown}");
    assert_eq!(worker["errors"].as_u64(), Some(0), "{shown}");
    assert_eq!(report["workers"].as_u64(), Some(4), "{shown}");
}

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn agent() -> (Agent, String) {
    let port = lockstep_client::loopback::free_port().unwrap();
    let address = format!("127.0.0.1:{port}");
    let child = bench()
        .args(["agent", "--listen", &address])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(&address).is_err() {
        assert!(Instant::now() < deadline, "agent {address} did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    (Agent(child), address)
}

#[test]
fn agents_share_a_run_and_the_controller_merges_their_histograms() {
    let (_a, first) = agent();
    let (_b, second) = agent();
    // Keyed creates beside events: a business key made from {counter} must never repeat,
    // across the agents or across the levels of the sweep.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("mixed.yaml");
    std::fs::write(
        &spec,
        format!(
            r#"
workflows:
  - {}
  - {}
actors:
  alice: {{ roles: [requester, admin] }}
  feed: {{ kind: service }}
pools:
  listeners: {{ workflow: bench-events, count: 16, actor: feed, key: "l-{{run}}-{{n}}" }}
steps:
  - name: order
    actor: alice
    create: {{ workflow: purchase-order, key: "po-{{run}}-{{counter}}", data: {{ amount: 1, requester: "{{actor}}" }} }}
  - name: event
    actor: feed
    event: {{ workflow: bench-events, key: "l-{{run}}-{{random:0..15}}", name: bench.delivered }}
"#,
            root.join("../examples/workflows/purchase-order.yaml").display(),
            root.join("specs/workflows/bench-events.yaml").display(),
        ),
    )
    .unwrap();
    let agents = format!("{first},{second}");
    let (report, shown) = run(&[
        "--spec",
        spec.to_str().unwrap(),
        "--concurrency",
        "2,4",
        "--agents",
        &agents,
    ]);
    for (i, level) in report["levels"].as_array().unwrap().iter().enumerate() {
        let figures = report["agents"][i].as_array().unwrap();
        assert_eq!(figures.len(), 2, "{shown}");
        let mut sum = 0;
        for f in figures {
            let ops = f["operations"].as_u64().unwrap();
            assert!(ops > 0, "every agent made load: {shown}");
            // Same machine, same clock: the estimate is within its round trip, and both
            // agents started when asked.
            assert!(
                f["clock_offset_us"].as_i64().unwrap().unsigned_abs()
                    <= f["clock_rtt_us"].as_u64().unwrap() + 1_000,
                "{shown}"
            );
            assert!(f["started_late_us"].as_u64().unwrap() < 500_000, "{shown}");
            sum += ops;
        }
        // The merged histogram holds exactly the agents' operations, and the steps'.
        assert_eq!(level["operations"].as_u64(), Some(sum), "{shown}");
        let steps = step(level, "order")["operations"].as_u64().unwrap()
            + step(level, "event")["operations"].as_u64().unwrap();
        assert_eq!(steps, sum, "{shown}");
        // No key was used twice (that would be refused) and nothing failed.
        assert_eq!(level["errors"].as_u64(), Some(0), "level {i}: {shown}");
        assert_eq!(
            level["refusals_by_code"],
            serde_json::json!({}),
            "level {i}: {shown}"
        );
    }
    assert!(shown.contains("Agents"), "{shown}");
}
