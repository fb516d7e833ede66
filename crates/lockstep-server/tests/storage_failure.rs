//! Storage that fails or runs short (issue 25; `crates/lockstep-server/src/failstop.rs`,
//! `space.rs`).
//!
//! Failing storage: one node's data
//! directory is on a disk that starts answering every write and sync with ENOSPC (full) or
//! EIO (dying), as `lockstep_lossydisk::LossyDisk::fail_writes` makes it. The cluster keeps
//! serving through the other two; the failed node turns NOT_SERVING at once, answers calls
//! `UNAVAILABLE` naming its storage failure and the other nodes, and exits with status 74 for
//! its supervisor to restart it. Once the disk works again and the node is restarted it
//! catches up: equal digests, and every acknowledged create is on it.

//!
//! Short of space: every node's disk reports 100 MiB free, under `--min-free-space` (256 MiB by
//! default). Client writes are refused `RESOURCE_EXHAUSTED` / `NO_SPACE` before they are
//! proposed (the same request id succeeds later), while reads are served, expiries fire and
//! the alarm shows in `/metrics`; once the disks report space again, writes resume by
//! themselves.

mod common;

use std::time::{Duration, Instant};

use common::lossy_fs::DiskFault;
use common::{Cluster, Settings, TICKETS_DUE, alice, create_with_retries};
use lockstep_client::{Error, HealthStatus, Options, by_id, by_key, pb, request_id};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_of_space_client_writes_are_refused_while_reads_and_timers_go_on_until_space_returns()
{
    let cluster = Cluster::start_on_lossy_disks(Settings::default());
    cluster.leader().await;
    cluster.define_tickets("tickets", "2s").await;
    let before = cluster.create_ticket().await;
    for i in 0..3 {
        cluster.report_free_bytes(i, Some(100 << 20));
    }
    // Refused at once, not retried: the client's answer is what a user sees.
    let client = cluster.client_with(
        &cluster.endpoints(),
        common::alice(),
        Options {
            retry_overloaded: false,
            ..Options::default()
        },
    );
    let data = serde_json::json!({});
    // Each attempt under a new request id: one taken on before the alarm was raised would
    // answer every retry of its id from the dedup table.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (id, refused) = loop {
        let id = request_id();
        match client.create(&id, "tickets", None, &data).await {
            Err(Error::Overloaded {
                reason, message, ..
            }) => break (id, (reason, message)),
            other => {
                assert!(
                    Instant::now() < deadline,
                    "writes still taken on 10 s after every disk reported 100 MiB free: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let create = || client.create(&id, "tickets", None, &data);
    assert_eq!(refused.0, "NO_SPACE", "{refused:?}");
    assert!(
        refused
            .1
            .contains("is short of space and takes no client writes on")
            && refused
                .1
                .contains("has 100 MiB free, under --min-free-space 256 MiB")
            && refused.1.contains("retry then with the same request id"),
        "{}",
        refused.1
    );
    // Reads are served, the engine's own work goes on: the expiry of the ticket created
    // before the alarm fires.
    tokio::time::sleep(TICKETS_DUE + Duration::from_secs(1)).await;
    assert_eq!(cluster.state_of(&before).await, "timed_out");
    // `cluster status` shows it too.
    let status = cluster.status(0, false).await.unwrap();
    assert!(
        status.space_alarm.contains("is short of space") && status.data_dir_free_bytes == 100 << 20,
        "{status:?}"
    );
    for i in 0..3 {
        let (_, body) = cluster.scrape(i).await;
        assert_eq!(
            common::gauge(&body, "lockstep_space_alarm"),
            1.0,
            "node {}",
            i + 1
        );
        assert!(common::gauge(&body, "lockstep_data_dir_free_bytes") < 101.0 * 1048576.0);
    }
    // Space returns: the alarm clears by itself, and the refused request id now succeeds.
    for i in 0..3 {
        cluster.report_free_bytes(i, None);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let created = loop {
        match create().await {
            Ok(change) => break change,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "writes still refused 10 s after space returned: {e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert_eq!(created.version, 1);
    assert_eq!(cluster.status(0, false).await.unwrap().space_alarm, "");
    assert_eq!(
        cluster
            .ticket_client()
            .get(
                by_id(&created.instance_id),
                pb::ReadConsistency::Linearizable
            )
            .await
            .unwrap()
            .instance
            .unwrap()
            .state,
        "waiting"
    );
}
