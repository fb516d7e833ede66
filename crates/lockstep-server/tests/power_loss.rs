//! Power loss (DESIGN §3: a log append is fsynced before it is acknowledged). Every node's
//! data directory is on a FUSE disk that loses every write not fsynced when its power is
//! cut (`common/lossy_fs.rs`), so unlike a killed process, a cut node keeps only what it
//! synced. Under concurrent creates, the leader loses power, then the whole cluster at once:
//! with snapshots and log purges all along, every acknowledged create is there afterwards, as the instance it was acknowledged as,
//! the replicas agree and the audit chain verifies. The control run: the same cuts against
//! nodes whose log append is not synced (the `unsynced-log-append` mutation, which only a
//! debug build has) must lose acknowledged creates, or this test could not see the bug it
//! is named for.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Cluster, Settings, alice, create_with_retries};
use lockstep_client::{Client, by_key, pb};

/// Writers creating instances until stopped; what each had acknowledged.
struct Load {
    stop: Arc<AtomicBool>,
    writers: Vec<tokio::task::JoinHandle<Vec<(String, String)>>>,
}

impl Load {
    fn start(client: Arc<Client>, writers: usize, round: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let writers = (0..writers)
            .map(|w| {
                let (client, stop) = (Arc::clone(&client), Arc::clone(&stop));
                tokio::spawn(async move {
                    let mut acked = Vec::new();
                    let mut n = 0;
                    while !stop.load(Ordering::SeqCst) {
                        let key = format!("PL{round}-{w}-{n}");
                        let id = create_with_retries(&client, &key, Duration::from_secs(60)).await;
                        acked.push((key, id));
                        n += 1;
                    }
                    acked
                })
            })
            .collect();
        Load { stop, writers }
    }

    async fn stop(self) -> Vec<(String, String)> {
        self.stop.store(true, Ordering::SeqCst);
        let mut acked = Vec::new();
        for w in self.writers {
            acked.extend(w.await.unwrap());
        }
        acked
    }
}

/// What a run of power cuts left: the acknowledged creates, those missing afterwards, and
/// whether the replicas agree and the chain verifies.
struct AfterTheCuts {
    acked: usize,
    lost: Vec<String>,
    /// Unsynced bytes the cuts threw away (zero would mean the disks were not lossy).
    unsynced_lost: u64,
    /// The replicas' digests once they applied the same index, or why they did not.
    digests: Result<Vec<String>, String>,
    verified: bool,
    purged: u64,
}

/// The leader loses power under load, then every node at once, under load; afterwards every
/// acknowledged create is read back by key (linearizably).
/// `converge_within`: how long the replicas may take to agree afterwards.
async fn power_cuts(node_env: Vec<(String, String)>, converge_within: Duration) -> AfterTheCuts {
    // Snapshots (checkpoints) and log purges happen all through the run, so the cuts also
    // land between a checkpoint and the purge behind it.
    let mut cluster = Cluster::start_on_lossy_disks(Settings {
        nodes: 3,
        snapshot_every: 50,
        logs_to_keep: 20,
        node_env,
        ..Settings::default()
    });
    let leader = cluster.leader().await;
    cluster.define_po().await;
    cluster.wait_for_group_commit(Duration::from_secs(30)).await;
    let client = Arc::new(cluster.client(alice()));

    // The leader loses power under load.
    let load = Load::start(Arc::clone(&client), 8, 1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let lost_at_cut = cluster.unsynced_bytes(leader);
    cluster.power_cut(leader);
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.restart(leader);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut acked = load.stop().await;
    assert!(
        acked.len() > 20,
        "only {} creates acknowledged around the leader's power cut",
        acked.len()
    );

    // Every node loses power at once, under load.
    let load = Load::start(Arc::clone(&client), 8, 2);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let lost_in_blackout: u64 = (0..3).map(|i| cluster.unsynced_bytes(i)).sum();
    for i in 0..3 {
        cluster.power_cut(i);
    }
    for i in 0..3 {
        cluster.restart(i);
    }
    cluster.leader().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    acked.extend(load.stop().await);

    let mut lost = Vec::new();
    for (key, id) in &acked {
        match client
            .get(
                by_key("purchase-order", key),
                pb::ReadConsistency::Linearizable,
            )
            .await
        {
            Ok(got) if got.instance.id == *id => {}
            Ok(got) => lost.push(format!(
                "{key}: acknowledged as {id}, now {:?}",
                Some(got.instance.id)
            )),
            Err(e) => lost.push(format!("{key}: {e}")),
        }
    }
    let digests = cluster.try_converged_digests(converge_within).await;
    let verified = client.verify_audit().await.is_ok_and(|v| v.ok());
    let (_, metrics) = cluster.scrape(leader).await;
    AfterTheCuts {
        acked: acked.len(),
        lost,
        unsynced_lost: lost_at_cut + lost_in_blackout,
        digests,
        verified,
        purged: common::counter(&metrics, "lockstep_raft_purged_index"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cuts_of_the_leader_and_of_the_whole_cluster_lose_no_acknowledged_write() {
    let after = power_cuts(Vec::new(), Duration::from_secs(60)).await;
    // The cuts did lose something (apply's writes are not synced), so the disks were lossy.
    assert!(
        after.unsynced_lost > 0,
        "no node had unsynced data when its power was cut: the test proves nothing"
    );
    assert!(
        after.lost.is_empty(),
        "{} of {} acknowledged creates were lost in the power cuts: {:?}",
        after.lost.len(),
        after.acked,
        after.lost
    );
    let digests = after.digests.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(digests.len(), 3);
    assert!(digests.windows(2).all(|w| w[0] == w[1]), "{digests:?}");
    assert!(after.verified, "the audit chain does not verify");
    assert!(
        after.purged > 0,
        "no log was purged behind a snapshot during the run"
    );
}

/// The control run: with the log append unsynced (a debug build's deliberate bug), the same
/// cuts lose acknowledged creates, so the test above can see the bug it is named for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_log_append_unsynced_the_same_power_cuts_lose_acknowledged_writes() {
    let mutation = lockstep_raft::mutation::Mutation::UnsyncedLogAppend;
    // Healthy replicas agree within a second or two of the last write.
    let after = power_cuts(
        vec![(
            lockstep_raft::mutation::ENV.to_string(),
            mutation.name().to_string(),
        )],
        Duration::from_secs(15),
    )
    .await;
    // Caught when acknowledged creates are gone, or the replicas no longer converge (a
    // node's log lost entries its peers built on), or the chain no longer verifies.
    let diverged = after.digests.as_ref().err();
    eprintln!(
        "unsynced log: {} of {} acknowledged creates lost; convergence: {}; chain verifies: {}",
        after.lost.len(),
        after.acked,
        diverged.map_or("yes", |e| e.as_str()),
        after.verified
    );
    assert!(
        !after.lost.is_empty() || diverged.is_some() || !after.verified,
        "every one of {} acknowledged creates survived power cuts of nodes whose log append was not synced, the replicas converged and the chain verifies: the power-loss test cannot see an unsynced log",
        after.acked
    );
}
