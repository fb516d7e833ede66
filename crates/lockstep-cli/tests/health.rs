//! `lockstep health` (the container health check and Kubernetes probe) and `lockstep cluster
//! backup` against a real 3-node cluster: their output and exit codes.

mod common;

use common::{clear_lockstep_env, cluster, free_port, lockstep, lockstepd};

#[test]
fn health_is_serving_on_every_node() {
    let c = cluster();
    let run = c.run(&["health"]);
    run.ok();
    assert_eq!(run.stdout.matches("SERVING").count(), 3, "{run}");
    let rows = c.run(&["health", "--output", "json"]).ok().json();
    let rows = rows.as_array().expect("an array");
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r["status"] == "SERVING"), "{rows:?}");
    // One endpoint, as the image's HEALTHCHECK asks; a named service too.
    lockstep(&["health", "--endpoint", &c.endpoint(1)])
        .ok()
        .stdout_has(&[&c.endpoint(1), "SERVING"]);
    lockstep(&[
        "health",
        "--endpoint",
        &c.endpoint(2),
        "--service",
        "lockstep.v1.Instances",
    ])
    .ok();
}

/// A node of its own whose space alarm is up from the start (`--min-free-space` above any
/// disk): it serves reads, so it stays SERVING, and `health` prints its alarm.
#[test]
fn health_shows_a_nodes_space_alarm_and_it_stays_serving() {
    /// Killed on drop; its data directory goes after it.
    struct Node {
        child: std::process::Child,
        _dir: tempfile::TempDir,
    }
    impl Drop for Node {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("127.0.0.1:{}", free_port());
    let mut command = std::process::Command::new(lockstepd());
    command
        .args(["--id", "1", "--listen", &endpoint, "--dev"])
        .args(["--initial-members", &format!("1={endpoint}")])
        .args(["--min-free-space", "1000TiB"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    clear_lockstep_env(&mut command);
    let _node = Node {
        child: command.spawn().expect("start lockstepd"),
        _dir: dir,
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let run = loop {
        let run = lockstep(&["health", "--endpoint", &endpoint, "--timeout", "2s"]);
        if run.code == Some(0) && run.stdout.contains("SPACE ALARM") {
            break run;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no space alarm shown within 60 s: {run}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    run.stdout_has(&[
        "SERVING",
        "is short of space",
        "under --min-free-space 1000 TiB",
    ]);
    let rows = lockstep(&["health", "--endpoint", &endpoint, "--output", "json"])
        .ok()
        .json();
    let alarm = rows[0]["space_alarm"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(rows[0]["status"], "SERVING", "{rows}");
    assert!(alarm.contains("is short of space"), "{rows}");
}

#[test]
fn health_exit_codes_say_unknown_service_and_no_answer() {
    let c = cluster();
    // A service the node does not know: not found.
    lockstep(&[
        "health",
        "--endpoint",
        &c.endpoint(0),
        "--service",
        "no.such.Service",
    ])
    .code(4);
    // Nothing listens: unavailable, within --timeout.
    let nobody = format!("127.0.0.1:{}", free_port());
    lockstep(&["health", "--endpoint", &nobody, "--timeout", "1s"])
        .code(3)
        .stdout_has(&[&nobody, "unreachable"]);
    // Some endpoints answer, one does not: still unavailable.
    let mixed = format!("{},{nobody}", c.endpoint(0));
    lockstep(&["--endpoints", &mixed, "health", "--timeout", "1s"])
        .code(3)
        .stdout_has(&["SERVING", "unreachable"]);
}

#[test]
fn cluster_backup_writes_a_checkpoint_on_the_node_that_answers() {
    let c = cluster();
    let one = c.endpoint(2);
    let backup = lockstep(&[
        "--endpoints",
        &one,
        "--as",
        "admin",
        "--roles",
        "admin",
        "cluster",
        "backup",
        "--name",
        "cli-test",
        "--output",
        "json",
    ])
    .ok()
    .json();
    assert_eq!(backup["node_id"], 3, "{backup}");
    let path = backup["path"].as_str().expect("path");
    assert!(path.ends_with("node3/backups/cli-test"), "{backup}");
    assert!(
        std::path::Path::new(path).join("CURRENT").is_file(),
        "{backup}"
    );
    assert!(backup["applied_index"].as_u64().unwrap() > 0, "{backup}");
    // A name is used once (refused, exit 1); a bad name is a usage error (exit 2).
    lockstep(&[
        "--endpoints",
        &one,
        "--as",
        "admin",
        "--roles",
        "admin",
        "cluster",
        "backup",
        "--name",
        "cli-test",
    ])
    .code(1)
    .stderr_has(&["already exists"]);
    lockstep(&[
        "--endpoints",
        &one,
        "--as",
        "admin",
        "--roles",
        "admin",
        "cluster",
        "backup",
        "--name",
        "../x",
    ])
    .code(2);
}
