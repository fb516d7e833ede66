//! `lockstep health` (the container health check and Kubernetes probe) and `lockstep cluster
//! backup` against a real 3-node cluster: their output and exit codes.

mod common;

use common::{cluster, free_port, lockstep};

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
