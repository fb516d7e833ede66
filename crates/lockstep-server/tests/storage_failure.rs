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
//! A corrupt store: bytes flipped in a stopped follower's largest SST file, in a block that
//! no read asks for. At its restart the background scrub reads it: the node stops (health
//! NOT_SERVING, `UNAVAILABLE` answers, `lockstep_store_corrupt` 1) and exits with status 65
//! naming the file, and it refuses every later
//! start until an operator re-seeds it (remove, wipe, start, add, promote), after which its
//! digest equals the others' and every acknowledged create is on it.
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
    let probe = probe_of(&cluster, victim);
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
    every_acked_create_is_on(&cluster, victim, &acked, "the restarted node").await;
}

/// A client of node `i` alone that gives up after 300 ms: for asking a failing node.
fn probe_of(cluster: &Cluster, i: usize) -> lockstep_client::Client {
    cluster.client_with(
        &[cluster.endpoint(i)],
        alice(),
        Options {
            total_timeout: Duration::from_millis(300),
            ..Options::default()
        },
    )
}

/// Reads every acknowledged create (key, instance id) back from node `i` alone.
async fn every_acked_create_is_on(
    cluster: &Cluster,
    i: usize,
    acked: &[(String, String)],
    node: &str,
) {
    let on_node = cluster.client_for(&[cluster.endpoint(i)], alice());
    for (key, id) in acked {
        let got = on_node
            .get(by_key("purchase-order", key), pb::ReadConsistency::Stale)
            .await
            .unwrap_or_else(|e| panic!("{key} is not on {node}: {e}"));
        assert_eq!(&got.instance.id, id, "{key}");
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
        status
            .space_alarm
            .as_deref()
            .is_some_and(|alarm| alarm.contains("is short of space"))
            && status.data_dir_free_bytes == 100 << 20,
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
    assert_eq!(cluster.status(0, false).await.unwrap().space_alarm, None);
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
            .state,
        "waiting"
    );
}

/// `EXIT_CORRUPT` (sysexits' EX_DATAERR): a corrupt store, at run time or at a start refused.
const EXIT_CORRUPT: i32 = 65;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_whose_store_is_corrupt_stops_refuses_to_start_and_is_re_seeded() {
    let mut cluster = Cluster::start(Settings::default());
    let leader = cluster.leader().await;
    cluster.define_po().await;
    // Not node 1: with an empty data directory the lowest initial member bootstraps
    // (deploy/README.md, "Replacing a dead node").
    let victim = (1..3).find(|i| *i != leader).unwrap();
    let id = victim as u64 + 1;
    let client = cluster.client(alice());
    let mut acked = Vec::new();
    for i in 0..60 {
        let key = format!("SC-{i}");
        let instance = create_with_retries(&client, &key, Duration::from_secs(30)).await;
        acked.push((key, instance));
    }
    cluster.converged_digests().await;
    // The scrub ran at every node's start, and found nothing.
    for i in 0..3 {
        let (_, body) = cluster.scrape(i).await;
        assert!(common::counter(&body, "lockstep_scrub_passes_total") >= 1);
        assert_eq!(common::gauge(&body, "lockstep_store_corrupt"), 0.0);
    }
    // A snapshot is a checkpoint: it flushes the victim's memtables into SST files.
    cluster.admin().snapshot_on(victim).await.unwrap();
    cluster.stop(victim);
    let store = cluster.data_dir(victim).join("rocksdb");
    let sst = std::fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sst"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .expect("the victim's store has SST files after a snapshot");
    let mut bytes = std::fs::read(&sst).unwrap();
    // Inside the first data block: the index, filter and footer are at the end of the file,
    // so opening the store does not notice; only a read of that block (or the scrub) does.
    for b in &mut bytes[100..116] {
        *b ^= 0xff;
    }
    std::fs::write(&sst, &bytes).unwrap();
    let file = sst.file_name().unwrap().to_string_lossy().to_string();

    cluster.restart(victim);
    // During its grace before the exit: NOT_SERVING, calls refused naming the corruption,
    // and the metric up.
    let probe = probe_of(&cluster, victim);
    let deadline = Instant::now() + Duration::from_secs(10);
    while probe.health_of(0, "").await.ok() != Some(HealthStatus::NotServing) {
        assert!(
            Instant::now() < deadline,
            "node {id} was not seen NOT_SERVING on its corrupt store within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused = probe
        .get(by_key("purchase-order", "SC-0"), pb::ReadConsistency::Stale)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains(&format!("node {id} cannot serve: its store is corrupt")),
        "{refused}"
    );
    let (_, body) = cluster.scrape(victim).await;
    assert_eq!(common::gauge(&body, "lockstep_store_corrupt"), 1.0);
    let status = cluster.wait_for_exit(victim, Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(EXIT_CORRUPT), "{status}");
    let log = cluster.log(victim);
    assert!(
        log.contains(&format!("node {id} cannot serve: its store is corrupt"))
            && log.contains(&file)
            && log.contains(&format!("lockstep cluster remove {id}")),
        "the node says what is corrupt and how to re-seed it:\n{log}"
    );
    // The scrub met it: no client read asks for that block.
    assert!(
        log.contains("scrub: the store cannot be read back whole"),
        "{log}"
    );
    // The cluster goes on without it.
    for i in 60..65 {
        let key = format!("SC-{i}");
        let instance = create_with_retries(&client, &key, Duration::from_secs(30)).await;
        acked.push((key, instance));
    }
    // A supervisor's restart is refused, with the same status and the finding.
    cluster.restart(victim);
    let status = cluster.wait_for_exit(victim, Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(EXIT_CORRUPT), "{status}");
    let log = cluster.log(victim);
    assert!(
        log.contains(&format!(
            "node {id} refuses to start: its store was found corrupt"
        )),
        "{log}"
    );

    // Re-seeded as the runbook says: remove, wipe, start empty, add, promote.
    let admin = cluster.admin();
    admin.remove(id).await.unwrap();
    std::fs::remove_dir_all(cluster.data_dir(victim)).unwrap();
    std::fs::create_dir_all(cluster.data_dir(victim)).unwrap();
    cluster.restart(victim);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match admin.add_learner(id, &cluster.endpoint(victim)).await {
            Ok(_) => break,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "node {id} could not be added back within 30 s: {e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let digests = cluster.converged_digests().await;
    assert_eq!(digests.len(), 3);
    assert!(digests.iter().all(|d| *d == digests[0]), "{digests:?}");
    let members = admin.promote(vec![id]).await.unwrap();
    assert_eq!(
        members.members.iter().filter(|m| m.voter).count(),
        3,
        "{members:?}"
    );
    every_acked_create_is_on(&cluster, victim, &acked, "the re-seeded node").await;
}
