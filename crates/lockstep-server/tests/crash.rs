//! Crashes at the worst moment of the write path, on a real 3-node cluster: nodes that abort
//! between log sync and apply (entries committed, batch not written) lose no acknowledged
//! write and converge; a process crash keeps every applied entry (apply's writes are not
//! synced, but they outlive the process).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Cluster, Settings, alice, create_with_retries};
use lockstep_client::{by_key, pb};

/// `text` without terminal colour codes (`ESC [ ... m`).
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The applied index a node's log says it found when it opened its store, at its n-th start.
fn opened_at(log: &str, start: usize) -> u64 {
    plain(log)
        .lines()
        .filter(|l| l.contains("store opened"))
        .nth(start)
        .and_then(|l| l.split("applied_index=").nth(1))
        .and_then(|v| {
            v.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no start {start} with an applied index in\n{log}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_crashed_between_log_sync_and_apply_lose_nothing_and_converge() {
    let mut cluster = Cluster::start(Settings::default());
    let leader = cluster.leader().await;
    cluster.define_po().await;
    cluster.wait_for_group_commit(Duration::from_secs(20)).await;
    let client = Arc::new(cluster.client(alice()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let client = Arc::clone(&client);
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                let mut acked = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    let key = format!("W{w}-{n}");
                    let id = create_with_retries(&client, &key, Duration::from_secs(30)).await;
                    acked.push((key, id));
                    n += 1;
                }
                acked
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;

    // A follower, then the leader, abort in apply under load.
    let follower = (leader + 1) % 3;
    for node in [follower, leader] {
        std::fs::write(cluster.crash_file(node), b"").unwrap();
        let status = cluster.wait_for_exit(node, Duration::from_secs(10)).await;
        assert!(!status.success(), "node {} aborted: {status}", node + 1);
        assert!(
            cluster.log(node).contains("aborting in apply"),
            "node {} crashed by the fault",
            node + 1
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    cluster.restart(follower);
    cluster.restart(leader);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    assert!(acked.len() > 50, "only {} writes acknowledged", acked.len());

    // Every acknowledged create is there, once, as the instance it was acknowledged as.
    for (key, id) in &acked {
        let got = client
            .get(
                by_key("purchase-order", key),
                pb::ReadConsistency::Linearizable,
            )
            .await
            .unwrap_or_else(|e| panic!("acknowledged {key} is lost: {e}"));
        assert_eq!(&got.instance.id, id, "{key}");
    }
    let digests = cluster.converged_digests().await;
    assert_eq!(digests.len(), 3);
    assert!(digests.windows(2).all(|w| w[0] == w[1]), "{digests:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_crash_keeps_every_applied_entry() {
    let mut cluster = Cluster::start(Settings::default());
    let leader = cluster.leader().await;
    cluster.define_po().await;
    let client = cluster.client(alice());
    for n in 0..30 {
        create_with_retries(&client, &format!("P-{n}"), Duration::from_secs(30)).await;
    }
    cluster.converged_digests().await;
    let follower = (leader + 1) % 3;
    // Idle: the applied index holds still.
    let applied = loop {
        let a = cluster.status(follower, false).await.unwrap().applied_index;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let b = cluster.status(follower, false).await.unwrap().applied_index;
        if a == b {
            break b;
        }
    };
    cluster.kill9(follower);
    cluster.restart(follower);
    cluster.converged_digests().await;
    assert_eq!(
        opened_at(&cluster.log(follower), 1),
        applied,
        "after SIGKILL the store holds exactly what was applied: nothing to re-apply, nothing lost"
    );
}
