//! Power loss (DESIGN §3: a log append is fsynced before it is acknowledged). Every node's
//! data directory is on a FUSE disk that loses every write not fsynced when its power is
//! cut (`common/lossy_fs.rs`), so unlike a killed process, a cut node keeps only what it
//! synced. Under concurrent creates, the leader loses power, then the whole cluster at once:
//! with snapshots and log purges all along, every acknowledged create is there afterwards, as the instance it was acknowledged as,
//! the replicas agree and the audit chain verifies. With the log append unsynced, this test
//! fails (tried by hand: acknowledged creates are lost).

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cuts_of_the_leader_and_of_the_whole_cluster_lose_no_acknowledged_write() {
    // Snapshots (checkpoints) and log purges happen all through the run, so the cuts also
    // land between a checkpoint and the purge behind it.
    let mut cluster = Cluster::start_on_lossy_disks(Settings {
        nodes: 3,
        snapshot_every: 50,
        logs_to_keep: 20,
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
    // The cuts did lose something (apply's writes are not synced), so the disks were lossy.
    assert!(
        lost_at_cut + lost_in_blackout > 0,
        "no node had unsynced data when its power was cut: the test proves nothing"
    );

    for (key, id) in &acked {
        let got = client
            .get(
                by_key("purchase-order", key),
                pb::ReadConsistency::Linearizable,
            )
            .await
            .unwrap_or_else(|e| panic!("acknowledged {key} was lost in a power cut: {e}"));
        assert_eq!(&got.instance.unwrap().id, id, "{key}");
    }
    let digests = cluster.converged_digests().await;
    assert_eq!(digests.len(), 3);
    assert!(digests.windows(2).all(|w| w[0] == w[1]), "{digests:?}");
    let verified = client.verify_audit().await.unwrap();
    assert!(verified.ok, "{verified:?}");
    let (_, metrics) = cluster.scrape(leader).await;
    assert!(
        common::counter(&metrics, "lockstep_raft_purged_index") > 0,
        "no log was purged behind a snapshot during the run"
    );
}
