//! What the bench's integration tests share: the bench command with no credential from the
//! environment, and the shown output of a run.

#![allow(dead_code)] // Each test binary uses its own part.

use std::process::{Command, Output};

/// `lockstep-bench` (built with the workspace), with none of the credential variables a
/// developer's shell may hold.
pub fn bench() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lockstep-bench"));
    for var in [
        "LOCKSTEP_TLS_CA",
        "LOCKSTEP_TLS_CERT",
        "LOCKSTEP_TLS_KEY",
        "LOCKSTEP_TOKEN",
        "LOCKSTEP_ACTOR",
    ] {
        command.env_remove(var);
    }
    command
}

/// A run's status and output, for assertion messages.
pub fn show(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `command` with `--json` into a temporary file; asserts it succeeded and answers the
/// report, the shown output and the directory (which holds the report and its plot).
pub fn run_json(mut command: Command) -> (serde_json::Value, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let out = command
        .arg("--json")
        .arg(&json)
        .output()
        .expect("run lockstep-bench");
    let shown = show(&out);
    assert!(out.status.success(), "{shown}");
    let report = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    (report, shown, dir)
}
