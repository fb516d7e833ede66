//! lockstepd refuses bad starts with messages that say what is wrong.

use std::process::{Command, Output};
use std::time::Duration;

fn lockstepd(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lockstepd"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A bad start fails fast; give up (and fail the test) if it keeps running.
    for _ in 0..200 {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    panic!("lockstepd {args:?} kept running instead of refusing to start");
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn missing_id_is_a_usage_error() {
    let o = lockstepd(&["--data-dir", "/tmp/x"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("no node id: pass --id N"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn bad_values_are_named() {
    let o = lockstepd(&[
        "--id",
        "1",
        "--data-dir",
        "/tmp/x",
        "--initial-members",
        "1=127.0.0.1:1,1=127.0.0.1:2",
    ]);
    assert!(
        stderr(&o).contains("node id 1 appears twice"),
        "{}",
        stderr(&o)
    );
    let o = lockstepd(&[
        "--id",
        "4",
        "--data-dir",
        "/tmp/x",
        "--initial-members",
        "1=127.0.0.1:1",
    ]);
    assert!(
        stderr(&o).contains("does not include this node's id 4"),
        "{}",
        stderr(&o)
    );
    let o = lockstepd(&[
        "--id",
        "1",
        "--data-dir",
        "/tmp/x",
        "--heartbeat-ms",
        "500",
        "--election-timeout-ms",
        "600",
    ]);
    assert!(
        stderr(&o).contains("must be more than twice --heartbeat-ms"),
        "{}",
        stderr(&o)
    );
    let o = lockstepd(&[
        "--id",
        "1",
        "--data-dir",
        "/tmp/x",
        "--listen",
        "0.0.0.0:7999",
        "--dev",
    ]);
    assert!(
        stderr(&o).contains("--dev (no TLS, header-asserted actors) is refused on 0.0.0.0:7999"),
        "{}",
        stderr(&o)
    );
    for (flag, value, expected) in [
        ("--snapshot-interval", "soon", "--snapshot-interval `soon`"),
        ("--snapshot-interval", "10ms", "is shorter than 1s"),
        (
            "--snapshot-log-mib",
            "0",
            "--snapshot-log-mib 0 is out of range",
        ),
        (
            "--snapshot-every",
            "0",
            "--snapshot-every 0 would snapshot after every entry",
        ),
        (
            "--admission-limit-max",
            "0",
            "--admission-limit-max 0 is out of range",
        ),
        (
            "--admission-limit-min",
            "2000",
            "--admission-limit-min 2000 is above --admission-limit-max 256",
        ),
        (
            "--reads-in-flight-max",
            "0",
            "--reads-in-flight-max 0 is out of range",
        ),
        (
            "--scrub-every",
            "10s",
            "--scrub-every `10s` is shorter than 1m",
        ),
        ("--scrub-every", "daily", "--scrub-every `daily`"),
        (
            "--scrub-rate",
            "fast",
            "--scrub-rate \"fast\" is not a size",
        ),
    ] {
        let o = lockstepd(&["--id", "1", "--data-dir", "/tmp/x", flag, value, "--dev"]);
        assert!(
            stderr(&o).contains(expected),
            "{flag} {value}: {}",
            stderr(&o)
        );
        assert!(!o.status.success());
    }
}

#[test]
fn a_port_in_use_is_reported() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let o = lockstepd(&[
        "--id",
        "1",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--listen",
        &addr,
        "--dev",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains(&format!(
            "{addr} is already in use: is another lockstepd running there?"
        )),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_data_dir_of_another_node_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("node.toml"),
        "node_id = 2\ncluster = \"2=127.0.0.1:1\"\n",
    )
    .unwrap();
    let o = lockstepd(&[
        "--id",
        "1",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--dev",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("belongs to node 2, not node 1"),
        "{}",
        stderr(&o)
    );
    std::fs::write(
        dir.path().join("node.toml"),
        "node_id = 1\ncluster = \"1=10.9.9.9:1\"\n",
    )
    .unwrap();
    let o = lockstepd(&[
        "--id",
        "1",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--dev",
    ]);
    assert!(
        stderr(&o).contains("belongs to the cluster bootstrapped with members 1=10.9.9.9:1"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn config_file_and_environment_are_read_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lockstepd.toml");
    std::fs::write(&file, "idd = 1\n").unwrap();
    let o = lockstepd(&["--config", file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("unknown field `idd`"), "{}", stderr(&o));
    // A file with a bad value: the message names the file and the key.
    std::fs::write(
        &file,
        "id = 1\ndata_dir = \"/tmp/x\"\nlog_format = \"xml\"\n",
    )
    .unwrap();
    let o = lockstepd(&["--config", file.to_str().unwrap()]);
    assert!(
        stderr(&o).contains("--log-format `xml` is not text or json"),
        "{}",
        stderr(&o)
    );
    // The environment overrides the file.
    let o = Command::new(env!("CARGO_BIN_EXE_lockstepd"))
        .args(["--config", file.to_str().unwrap()])
        .env("LOCKSTEP_LOG_FORMAT", "yaml")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--log-format `yaml` is not text or json"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `LOCKSTEP_MUTATION` (the mutation smoke's deliberate bugs) with a name no mutation has is
/// refused before anything starts, listing the names there are. (A release build refuses
/// any name; the tests run the debug build, so that branch is shown by its message only.)
#[test]
fn an_unknown_mutation_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_lockstepd"))
        .args(["--id", "1", "--dev", "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path())
        .env(lockstep_raft::mutation::ENV, "lease-by-term")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("unknown mutation `lease-by-term`")
            && stderr(&o).contains("lease-term-only"),
        "{}",
        stderr(&o)
    );
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "nothing was written to the data directory"
    );
}
