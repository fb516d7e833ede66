//! A rolling upgrade under load: a 3-node cluster started on the `lockstepd` of commit
//! 4410ace (log format 1, one request per entry) has its nodes replaced one by one, the
//! leader first, by this build. No acknowledged write is lost, the replicas agree, the
//! cluster-version gate keeps group commit off while any old node remains, and opens it
//! once the last one is gone.
//!
//! The old binary is built once outside the clone by `scripts/old-binaries` (which
//! `scripts/test` runs) under `/var/tmp/lockstep-ab/4410ace`; `LOCKSTEP_OLD_LOCKSTEPD`
//! names another one.

mod common;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Cluster, GROUP_COMMIT_ON, Settings, admin_identity, alice};
use lockstep_client::{Client, by_key, pb, request_id};

const OLD_COMMIT: &str = "4410ace";

fn old_lockstepd() -> PathBuf {
    let path = std::env::var_os("LOCKSTEP_OLD_LOCKSTEPD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(format!("/var/tmp/lockstep-ab/{OLD_COMMIT}/lockstepd")));
    assert!(
        path.is_file(),
        "the upgrade test needs the lockstepd of commit {OLD_COMMIT} at {}: run `scripts/old-binaries` (scripts/test does), or set LOCKSTEP_OLD_LOCKSTEPD",
        path.display()
    );
    path
}

/// Writers that create instances until stopped; each create retries with its own request
/// id until it is acknowledged, and the acknowledged keys are recorded.
struct Load {
    acknowledged: Arc<Mutex<Vec<String>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(client: Client, writers: usize) -> Load {
        let client = Arc::new(client);
        let acknowledged = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tasks = (0..writers)
            .map(|w| {
                let (client, acknowledged, stop) = (
                    Arc::clone(&client),
                    Arc::clone(&acknowledged),
                    Arc::clone(&stop),
                );
                tokio::spawn(async move {
                    let mut n = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let key = format!("UP-{w}-{n}");
                        let request_id = format!("upgrade-{key}");
                        let data = serde_json::json!({"amount": 10, "requester": "alice"});
                        let started = Instant::now();
                        loop {
                            match client
                                .create(&request_id, "purchase-order", Some(&key), &data)
                                .await
                            {
                                Ok(_) => {
                                    acknowledged.lock().unwrap().push(key.clone());
                                    break;
                                }
                                Err(e) if started.elapsed() < Duration::from_secs(60) => {
                                    note_retry(&key, &e);
                                    tokio::time::sleep(Duration::from_millis(100)).await;
                                }
                                Err(e) => panic!("create {key} not acknowledged within 60 s: {e}"),
                            }
                        }
                        n += 1;
                    }
                })
            })
            .collect();
        Load {
            acknowledged,
            stop,
            tasks,
        }
    }

    fn count(&self) -> usize {
        self.acknowledged.lock().unwrap().len()
    }

    async fn stop(self) -> Vec<String> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        Arc::try_unwrap(self.acknowledged)
            .unwrap()
            .into_inner()
            .unwrap()
    }
}

fn note_retry(key: &str, e: &lockstep_client::Error) {
    eprintln!("create {key}: {e} (retrying with the same request id)");
}

/// Waits until the load has made `more` further acknowledged writes.
async fn progress(load: &Load, more: usize) {
    let target = load.count() + more;
    let started = Instant::now();
    while load.count() < target {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the load made no progress for 60 s ({} of {target} writes)",
            load.count()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_upgrade_from_4410ace_under_load_loses_nothing() {
    let mut cluster = Cluster::start_with_binary(Settings::default(), old_lockstepd());
    let leader = cluster.leader().await;
    cluster.define_po().await;
    let load = Load::start(cluster.client(alice()), 8);
    progress(&load, 100).await;
    // The leader first, then the others.
    let order = [leader, (leader + 1) % 3, (leader + 2) % 3];
    for (n, &i) in order.iter().enumerate() {
        cluster.stop(i);
        progress(&load, 20).await;
        cluster.set_binary(i, None);
        cluster.restart(i);
        progress(&load, 100).await;
        if n < 2 {
            // An old node remains: the gate must stay closed everywhere.
            for j in 0..3 {
                assert!(
                    !cluster.log(j).contains(GROUP_COMMIT_ON),
                    "node {} opened the log-format gate while node(s) ran the old build",
                    j + 1
                );
            }
            // And a new node refuses what the old build could not apply, saying why.
            let new = cluster.client_for(&[cluster.endpoint(i)], admin_identity());
            let refused = new
                .create_subscription(
                    &request_id(),
                    "early",
                    "http://127.0.0.1:9/hook",
                    "none",
                    Default::default(),
                    None,
                )
                .await
                .unwrap_err()
                .to_string();
            assert!(
                refused.contains("log format is 1, older than 8"),
                "{refused}"
            );
            let refused = new
                .redact(
                    &request_id(),
                    by_key("purchase-order", "none"),
                    &["requester".to_string()],
                )
                .await
                .unwrap_err()
                .to_string();
            assert!(
                refused.contains("log format is 1, older than 7"),
                "{refused}"
            );
        }
    }
    // Every node now runs this build: the gate opens and writes are batched.
    cluster.wait_for_group_commit(Duration::from_secs(30)).await;
    progress(&load, 300).await;
    let acknowledged = load.stop().await;
    let client = cluster.client(alice());
    for key in &acknowledged {
        client
            .get(
                by_key("purchase-order", key),
                pb::ReadConsistency::Linearizable,
            )
            .await
            .unwrap_or_else(|e| panic!("acknowledged create {key} is lost: {e}"));
    }
    let digests = cluster.converged_digests().await;
    assert!(
        digests.windows(2).all(|w| w[0] == w[1]),
        "replicas differ after the upgrade: {digests:?}"
    );
    let verified = client.verify_audit().await.unwrap();
    assert!(verified.ok(), "{verified:?}");
    // The raise to format 4 built the list counts over what the old build had stored, and
    // apply kept them since: the count of purchase orders is every one created.
    let page = client
        .list(pb::ListInstancesRequest {
            workflow: "purchase-order".into(),
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        page.total,
        Some(acknowledged.len() as u64),
        "the count kept by apply differs from the instances created"
    );
    // Records the old build applied stay readable, without a journal (format 5 keeps one from
    // its raise on); an order created after the raise is journaled from its creation, so
    // `lockstep replay` can run it.
    let history = |key: String| {
        let client = &client;
        async move {
            client
                .history_with_commands(by_key("purchase-order", &key), 0)
                .await
                .unwrap()
        }
    };
    let first = history(acknowledged[0].clone()).await;
    assert!(
        !first.is_empty() && first.iter().all(|r| r.journal.is_none()),
        "an order of the old build has a journal: {first:?}"
    );
    let last = history(acknowledged[acknowledged.len() - 1].clone()).await;
    assert!(
        !last.is_empty() && last.iter().all(|r| r.journal.is_some()),
        "an order created after the raise lacks its journal: {last:?}"
    );
}

/// Once the log is in format 2, a node running the old build is refused as a learner, with
/// what to do, instead of joining and stopping at the first entry it cannot decode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_build_cannot_read_the_log_is_not_added() {
    let mut cluster = Cluster::start(Settings::default());
    cluster.leader().await;
    cluster.define_po().await;
    cluster.wait_for_group_commit(Duration::from_secs(30)).await;
    let joiner = cluster.spawn_joiner_with(Some(old_lockstepd()));
    let admin = cluster.admin();
    let deadline = Instant::now() + Duration::from_secs(20);
    let refused = loop {
        match admin.add_learner(4, &cluster.endpoint(joiner)).await {
            Err(e) if e.to_string().contains("upgrade its lockstepd") => break e,
            Err(e) if e.to_string().contains("cannot reach") && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            other => panic!("an old build was not refused as it should be: {other:?}"),
        }
    };
    assert!(refused.to_string().contains("node 4"), "{refused}");
    let status = cluster.status(0, false).await.unwrap();
    assert_eq!(status.members.len(), 3, "{status:?}");
}
