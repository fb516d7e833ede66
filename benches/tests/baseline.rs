//! The two-second smoke of the etcd baseline (issue 24: CI runs one of each baseline; the full
//! comparison is a benchmark): a 3-node Lockstep and a 3-node durable etcd, started by the
//! bench on loopback (etcd installed from Debian's etcd-server when missing), each measured
//! at one level, with Lockstep/etcd ratios in the same report. Debug binaries: the numbers
//! mean nothing, only that every part ran and measured something.

use std::process::Command;

#[test]
fn the_etcd_baseline_runs_beside_lockstep_and_reports_ratios() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("baseline.json");
    let out = Command::new(env!("CARGO_BIN_EXE_lockstep-bench"))
        .args(["--nodes", "3", "--concurrency", "2"])
        .args(["--duration", "2s", "--warmup", "0s", "--baseline", "etcd"])
        .arg("--json")
        .arg(&json)
        .env_remove("LOCKSTEP_TOKEN")
        .env_remove("LOCKSTEP_TLS_CA")
        .output()
        .expect("run lockstep-bench");
    let show = format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{show}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for system in ["lockstep", "etcd"] {
        let level = &report[system][0];
        assert!(
            level["operations"].as_u64().unwrap() > 0,
            "{system}: {show}"
        );
        assert_eq!(level["errors"].as_u64(), Some(0), "{system}: {show}");
    }
    let ratio = &report["ratios"][0];
    assert!(ratio["throughput_ratio"].as_f64().unwrap() > 0.0, "{show}");
    assert!(ratio["p99_ratio"].as_f64().unwrap() > 0.0, "{show}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Lockstep / etcd"),
        "{show}"
    );
}
