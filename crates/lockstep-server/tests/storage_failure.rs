//! Storage that fails (issue 25; `crates/lockstep-server/src/failstop.rs`). One node's data
//! directory is on a disk that starts answering every write and sync with ENOSPC (full) or
//! EIO (dying), as `lockstep_lossydisk::LossyDisk::fail_writes` makes it. The cluster keeps
//! serving through the other two; the failed node turns NOT_SERVING at once, answers calls
//! `UNAVAILABLE` naming its storage failure and the other nodes, and exits with status 74 for
//! its supervisor to restart it. Once the disk works again and the node is restarted it
//! catches up: equal digests, and every acknowledged create is on it.

mod common;

use std::time::{Duration, Instant};

use common::lossy_fs::DiskFault;
use common::{Cluster, Settings, alice, create_with_retries};
use lockstep_client::{HealthStatus, Options, by_key, pb};

/// `EXIT_STORAGE_FAILED` (sysexits' EX_IOERR), as operators and supervisors see it.
const EXIT_STORAGE_FAILED: i32 = 74;

async fn a_failing_disk(fault: DiskFault, on_the_leader: bool) {
    let mut cluster = Cluster::start_on_lossy_disks(Settings::default());
    let leader = cluster.leader().await;
    cluster.define_po().await;
    let victim = if on_the_leader {
        leader
    } else {
        (leader + 1) % 3
    };
    let client = cluster.client(alice());
    let mut acked = Vec::new();
    let create = async |acked: &mut Vec<(String, String)>| {
        let key = format!("SF-{}", acked.len());
        let id = create_with_retries(&client, &key, Duration::from_secs(30)).await;
        acked.push((key, id));
    };
    for _ in 0..5 {
        create(&mut acked).await;
    }

    cluster.fail_disk(victim, Some(fault));
    // Writes go on; the victim's next log append fails and stops its Raft core.
    let probe = cluster.client_with(
        &[cluster.endpoint(victim)],
        alice(),
        Options {
            total_timeout: Duration::from_millis(300),
            ..Options::default()
        },
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        create(&mut acked).await;
        if probe.health_of(0, "").await.ok() == Some(HealthStatus::NotServing) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node {} still answers health SERVING 20 s after its disk failed ({fault:?})",
            victim + 1
        );
    }
    // Its calls say why, and where to go instead.
    let refused = probe
        .get(
            by_key("purchase-order", &acked[0].0),
            pb::ReadConsistency::Stale,
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains(&format!(
            "node {} cannot serve: its storage failed",
            victim + 1
        )) && refused.contains("call another node (node ")
            && refused.contains(&format!("exits with status {EXIT_STORAGE_FAILED}")),
        "{refused}"
    );
    // It exits for its supervisor to restart it, with the status that says why.
    let status = cluster.wait_for_exit(victim, Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(EXIT_STORAGE_FAILED), "{status}");
    // The others go on without it.
    for _ in 0..3 {
        create(&mut acked).await;
    }

    cluster.fail_disk(victim, None);
    cluster.restart(victim);
    let digests = cluster.converged_digests().await;
    assert_eq!(digests.len(), 3);
    assert!(digests.iter().all(|d| *d == digests[0]), "{digests:?}");
    let on_victim = cluster.client_for(&[cluster.endpoint(victim)], alice());
    for (key, id) in &acked {
        let got = on_victim
            .get(by_key("purchase-order", key), pb::ReadConsistency::Stale)
            .await
            .unwrap_or_else(|e| panic!("{key} is not on the restarted node: {e}"));
        assert_eq!(&got.instance.unwrap().id, id, "{key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_whose_disk_fills_stops_serving_exits_and_catches_up_after_a_restart() {
    a_failing_disk(DiskFault::Full, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_disk_fails_hands_over_exits_and_catches_up_after_a_restart() {
    a_failing_disk(DiskFault::Failing, true).await;
}
