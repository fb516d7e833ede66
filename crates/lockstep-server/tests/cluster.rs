//! Real `lockstepd` processes on loopback: election, replication, crash recovery, snapshots.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Cluster, Settings, alice, bob, counter};
use lockstep_client::{by_id, by_key, pb, request_id};

fn po(amount: u32) -> serde_json::Value {
    serde_json::json!({"amount": amount, "requester": "alice"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_replicate_and_agree() {
    let cluster = Cluster::start(Settings::default());
    let leader = cluster.leader().await;
    cluster.define_po().await;
    // Write through a follower: it forwards to the leader.
    let follower = (leader + 1) % 3;
    let via_follower = cluster.client_for(&[cluster.endpoint(follower)], alice());
    let created = via_follower
        .create(&request_id(), "purchase-order", Some("PO-1"), &po(500))
        .await
        .unwrap();
    assert_eq!(created.state, "draft");
    let submitted = via_follower
        .transition(
            &request_id(),
            by_key("purchase-order", "PO-1"),
            "submit",
            &serde_json::Value::Null,
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        (submitted.state.as_str(), submitted.version),
        ("submitted", 2)
    );
    // A refusal comes back typed, through the follower, and changes nothing.
    let refused = via_follower
        .transition(
            &request_id(),
            by_id(&created.instance_id),
            "approve",
            &serde_json::Value::Null,
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(
        refused.refusal_code(),
        Some(lockstep_core::RefusalCode::Forbidden),
        "{refused}"
    );
    let approved = cluster
        .client_for(&[cluster.endpoint(follower)], bob())
        .transition(
            &request_id(),
            by_id(&created.instance_id),
            "approve",
            &serde_json::Value::Null,
            None,
        )
        .await
        .unwrap();
    assert_eq!(approved.state, "approved");
    // A linearizable read on any node sees the write.
    for i in 0..3 {
        let got = cluster
            .client_for(&[cluster.endpoint(i)], alice())
            .get(
                by_id(&created.instance_id),
                pb::ReadConsistency::Linearizable,
            )
            .await
            .unwrap();
        assert_eq!(got.instance.state, "approved", "node {}", i + 1);
    }
    let digests = cluster.converged_digests().await;
    assert!(digests.iter().all(|d| d == &digests[0]), "{digests:?}");
    let verify = cluster.admin().verify_audit().await.unwrap();
    assert!(verify.ok(), "{verify:?}");
    assert_eq!(
        verify.records_checked, 4,
        "definition, create, submit, approve"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_killed_and_restarted_catches_up_by_log() {
    let mut cluster = Cluster::start(Settings::default());
    let leader = cluster.leader().await;
    cluster.define_po().await;
    let follower = (leader + 1) % 3;
    cluster.kill9(follower);
    let client = cluster.client(alice());
    for n in 0..20 {
        client
            .create(
                &request_id(),
                "purchase-order",
                Some(&format!("PO-{n}")),
                &po(n),
            )
            .await
            .unwrap();
    }
    cluster.restart(follower);
    let digests = cluster.converged_digests().await;
    assert_eq!(digests.len(), 3);
    let s = cluster.status(follower, false).await.unwrap();
    assert_eq!(s.snapshot_index, 0, "caught up by log, not snapshot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_behind_the_purge_point_catches_up_by_snapshot() {
    let mut cluster = Cluster::start(Settings {
        nodes: 3,
        snapshot_every: 20,
        logs_to_keep: 5,
        ..Settings::default()
    });
    let leader = cluster.leader().await;
    cluster.define_po().await;
    let follower = (leader + 1) % 3;
    cluster.kill9(follower);
    let client = cluster.client(alice());
    for n in 0..60 {
        client
            .create(
                &request_id(),
                "purchase-order",
                Some(&format!("PO-{n}")),
                &po(n),
            )
            .await
            .unwrap();
    }
    // The leader snapshots (its policy looks once a second) and purges its log behind it
    // (openraft may postpone the purge a little), past what the stopped follower holds.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let s = cluster.status(leader, false).await.unwrap();
        let (_, metrics) = cluster.scrape(leader).await;
        let purged = counter(&metrics, "lockstep_raft_purged_index");
        if s.snapshot_index >= 40 && purged >= 30 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no snapshot past 40 and purge past 30 within 15 s (purged {purged}): {s:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    cluster.restart(follower);
    let digests = cluster.converged_digests().await;
    assert_eq!(digests.len(), 3);
    let s = cluster.status(follower, false).await.unwrap();
    assert!(
        s.snapshot_index > 0,
        "the follower installed a snapshot: {s:?}"
    );
    let got = cluster
        .client_for(&[cluster.endpoint(follower)], alice())
        .get(by_key("purchase-order", "PO-7"), pb::ReadConsistency::Stale)
        .await
        .unwrap();
    assert_eq!(
        got.instance.data,
        serde_json::json!({"amount": 7, "requester": "alice"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_with_writes_in_flight_loses_no_acknowledged_write() {
    let mut cluster = Cluster::start(Settings::default());
    let leader = cluster.leader().await;
    cluster.define_po().await;
    let client = Arc::new(cluster.client(alice()));
    let mut writers = Vec::new();
    for w in 0..4 {
        let client = Arc::clone(&client);
        writers.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for n in 0..25 {
                let key = format!("W{w}-{n}");
                // The client retries with the same request id across the failover.
                if let Ok(c) = client
                    .create(&request_id(), "purchase-order", Some(&key), &po(n))
                    .await
                {
                    acknowledged.push((key, c.instance_id));
                }
            }
            acknowledged
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.kill9(leader);
    let mut acknowledged = Vec::new();
    for w in writers {
        acknowledged.extend(w.await.unwrap());
    }
    assert!(
        acknowledged.len() >= 90,
        "most writes succeed across a failover: {}",
        acknowledged.len()
    );
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, leader);
    let reader = cluster.client_for(&[cluster.endpoint(new_leader)], alice());
    for (key, id) in &acknowledged {
        let got = reader
            .get(
                by_key("purchase-order", key),
                pb::ReadConsistency::Linearizable,
            )
            .await
            .unwrap();
        assert_eq!(
            &got.instance.id, id,
            "acknowledged write {key} is present and unique"
        );
    }
    cluster.restart(leader);
    let digests = cluster.converged_digests().await;
    assert_eq!(digests.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_cluster_restart_keeps_everything() {
    let mut cluster = Cluster::start(Settings::default());
    cluster.leader().await;
    cluster.define_po().await;
    let client = cluster.client(alice());
    let created = client
        .create(&request_id(), "purchase-order", Some("PO-1"), &po(1))
        .await
        .unwrap();
    let before = cluster.converged_digests().await;
    for i in 0..3 {
        cluster.stop(i);
    }
    for i in 0..3 {
        cluster.restart(i);
    }
    cluster.leader().await;
    let got = cluster
        .client(alice())
        .get(
            by_id(&created.instance_id),
            pb::ReadConsistency::Linearizable,
        )
        .await
        .unwrap();
    assert_eq!(got.instance.state, "draft");
    let after = cluster.converged_digests().await;
    assert!(after.iter().all(|d| d == &after[0]));
    assert_eq!(before.len(), after.len());
    assert!(
        !cluster.log(0).contains("bootstrapping a new cluster")
            || cluster
                .log(0)
                .matches("bootstrapping a new cluster")
                .count()
                == 1,
        "bootstrapped once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_survive_two_failures() {
    let mut cluster = Cluster::start(Settings {
        nodes: 5,
        ..Settings::default()
    });
    let leader = cluster.leader().await;
    cluster.define_po().await;
    cluster.kill9((leader + 1) % 5);
    cluster.kill9((leader + 2) % 5);
    let c = cluster
        .client(alice())
        .create(&request_id(), "purchase-order", Some("PO-5"), &po(5))
        .await
        .unwrap();
    assert_eq!(c.state, "draft");
    let digests = cluster.converged_digests().await;
    assert_eq!(digests.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_request_id_applies_once_across_nodes() {
    let cluster = Cluster::start(Settings::default());
    cluster.leader().await;
    cluster.define_po().await;
    let id = request_id();
    let a = cluster
        .client_for(&[cluster.endpoint(0)], alice())
        .create(&id, "purchase-order", None, &po(3))
        .await
        .unwrap();
    let b = cluster
        .client_for(&[cluster.endpoint(2)], alice())
        .create(&id, "purchase-order", None, &po(3))
        .await
        .unwrap();
    assert_eq!(
        a.instance_id, b.instance_id,
        "the retry returned the first outcome"
    );
    let list = cluster
        .admin()
        .list(pb::ListInstancesRequest {
            workflow: "purchase-order".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(list.instances.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_learns_the_leader_from_a_forwarded_write() {
    let cluster = Cluster::start(Settings::default());
    let leader = cluster.leader().await;
    cluster.define_po().await;
    let follower = (leader + 1) % 3;
    let (f, l) = (cluster.endpoint(follower), cluster.endpoint(leader));
    let client = cluster.client_for(&[f.clone(), l.clone()], alice());
    assert_eq!(client.current_endpoint(), f, "starts at its first endpoint");
    let created = client
        .create(&request_id(), "purchase-order", None, &po(5))
        .await
        .unwrap();
    assert_eq!(
        client.current_endpoint(),
        l,
        "the follower forwarded the write and named the leader"
    );
    // The next write goes straight to the leader and applies.
    let moved = client
        .transition(
            &request_id(),
            by_id(&created.instance_id),
            "submit",
            &serde_json::Value::Null,
            None,
        )
        .await
        .unwrap();
    assert_eq!(moved.state, "submitted");
    // A client that knows only the follower keeps working through it.
    let only_follower = cluster.client_for(std::slice::from_ref(&f), alice());
    only_follower
        .create(&request_id(), "purchase-order", None, &po(6))
        .await
        .unwrap();
    assert_eq!(only_follower.current_endpoint(), f);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_add_learner_promote_and_remove() {
    let mut cluster = Cluster::start(Settings::default());
    cluster.leader().await;
    cluster.define_po().await;
    cluster
        .admin()
        .create(&request_id(), "purchase-order", Some("PO-1"), &po(1))
        .await
        .unwrap();
    let joiner = cluster.spawn_joiner();
    let admin = cluster.admin();
    let members = admin
        .add_learner(4, &cluster.endpoint(joiner))
        .await
        .unwrap();
    assert!(
        members.members.iter().any(|m| m.id == 4 && !m.voter),
        "{members:?}"
    );
    let members = admin.promote(vec![4]).await.unwrap();
    assert!(
        members.members.iter().any(|m| m.id == 4 && m.voter),
        "{members:?}"
    );
    // The new voter has the state that existed before it joined.
    let digests = cluster.converged_digests().await;
    assert_eq!(digests.len(), 4);
    let got = cluster
        .client_for(&[cluster.endpoint(joiner)], alice())
        .get(by_key("purchase-order", "PO-1"), pb::ReadConsistency::Stale)
        .await
        .unwrap();
    assert_eq!(got.instance.state, "draft");
    let members = admin.remove(4).await.unwrap();
    assert!(!members.members.iter().any(|m| m.id == 4), "{members:?}");
    let refused = admin.promote(vec![9]).await.unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("node 9 is not a member; add it as a learner first"),
        "{refused}"
    );
}

/// A removed voter keeps running and never learns that its removal committed, so openraft on
/// that node reports "already undergoing a configuration change". Asking *it* to add itself
/// back must still reach the leader (found by the chaos membership nemesis).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_node_that_keeps_running_can_be_added_back_through_itself() {
    let cluster = Cluster::start(Settings::default());
    let leader = cluster.leader().await;
    cluster.define_po().await;
    let f = (leader + 1) % 3;
    let id = f as u64 + 1;
    let admin = cluster.admin();
    let members = admin.remove(id).await.unwrap();
    assert!(!members.members.iter().any(|m| m.id == id), "{members:?}");
    // The cluster goes on without it.
    for i in 0..5 {
        admin
            .create(
                &request_id(),
                "purchase-order",
                Some(&format!("PO-{i}")),
                &po(i),
            )
            .await
            .unwrap();
    }
    // Every call starts at the removed node.
    let mut endpoints = cluster.endpoints();
    endpoints.rotate_left(f);
    let via_removed = cluster.client_for(&endpoints, common::admin_identity());
    let members = via_removed
        .add_learner(id, &cluster.endpoint(f))
        .await
        .expect("a removed node forwards the re-add to the leader");
    assert!(
        members.members.iter().any(|m| m.id == id && !m.voter),
        "{members:?}"
    );
    let members = via_removed.promote(vec![id]).await.unwrap();
    assert_eq!(
        members.members.iter().filter(|m| m.voter).count(),
        3,
        "{members:?}"
    );
    let digests = cluster.converged_digests().await;
    assert_eq!(digests.len(), 3);
    let got = cluster
        .client_for(&[cluster.endpoint(f)], alice())
        .get(by_key("purchase-order", "PO-4"), pb::ReadConsistency::Stale)
        .await
        .unwrap();
    assert_eq!(got.instance.state, "draft");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_follower_serves_stale_reads_marked_stale_but_not_default_reads() {
    let cluster = Cluster::start(Settings::default());
    let leader = cluster.leader().await;
    cluster.define_po().await;
    let created = cluster
        .client(alice())
        .create(&request_id(), "purchase-order", Some("PO-1"), &po(1))
        .await
        .unwrap();
    let follower = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    cluster.converged_digests().await;
    // Freeze the two other nodes: the follower is cut off from any quorum.
    cluster.pause(leader, true);
    cluster.pause(other, true);
    let options = lockstep_client::Options {
        total_timeout: Duration::from_secs(3),
        attempt_timeout: Duration::from_secs(2),
        ..Default::default()
    };
    let isolated =
        lockstep_client::Client::new(&[cluster.endpoint(follower)], Some(alice()), options)
            .unwrap();
    let stale = isolated
        .get(by_id(&created.instance_id), pb::ReadConsistency::Stale)
        .await
        .unwrap();
    assert!(stale.read.stale, "a stale read says so");
    assert_eq!(stale.instance.state, "draft");
    let default = isolated
        .get(
            by_id(&created.instance_id),
            pb::ReadConsistency::Linearizable,
        )
        .await;
    assert!(
        default.is_err(),
        "a linearizable read is not served without a quorum: {default:?}"
    );
    cluster.pause(leader, false);
    cluster.pause(other, false);
    let healed = cluster
        .client_for(&[cluster.endpoint(follower)], alice())
        .get(
            by_id(&created.instance_id),
            pb::ReadConsistency::Linearizable,
        )
        .await
        .unwrap();
    assert!(
        !healed.read.stale,
        "after healing, the default read is linearizable again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_pages_through_every_instance_once() {
    let cluster = Cluster::start(Settings::default());
    cluster.leader().await;
    cluster.define_po().await;
    let client = cluster.client(alice());
    for n in 0..7 {
        client
            .create(
                &request_id(),
                "purchase-order",
                Some(&format!("PO-{n}")),
                &po(n),
            )
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list(pb::ListInstancesRequest {
                workflow: "purchase-order".into(),
                page_size: 3,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(page.instances.len() <= 3);
        seen.extend(page.instances.into_iter().filter_map(|i| i.key));
        match page.next_page_token {
            Some(next) => token = next,
            None => break,
        }
    }
    seen.sort();
    let mut want: Vec<String> = (0..7).map(|n| format!("PO-{n}")).collect();
    want.sort();
    assert_eq!(seen, want);
    let too_big = client
        .list(pb::ListInstancesRequest {
            workflow: "purchase-order".into(),
            page_size: 501,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        too_big
            .to_string()
            .contains("page_size 501 is more than 500"),
        "{too_big}"
    );
    let bad_token = client
        .list(pb::ListInstancesRequest {
            workflow: "purchase-order".into(),
            page_token: "zz".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        bad_token
            .to_string()
            .contains("page_token is not one this server returned"),
        "{bad_token}"
    );
}

/// Concurrent linearizable reads share the leader's quorum rounds, through every node, and
/// still see every write acknowledged before them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_linearizable_reads_share_quorum_rounds() {
    let cluster = Cluster::start(Settings::default());
    let leader = cluster.leader().await;
    cluster.define_po().await;
    let created = cluster
        .admin()
        .create(&request_id(), "purchase-order", Some("PO-R"), &po(5))
        .await
        .unwrap();
    let before: Vec<_> = futures::future::join_all((0..3).map(|i| cluster.scrape(i)))
        .await
        .into_iter()
        .map(|(_, text)| text)
        .collect();
    let clients: Vec<_> = (0..3)
        .map(|i| Arc::new(cluster.client_for(&[cluster.endpoint(i)], alice())))
        .collect();
    let reads = (0..96).map(|n| {
        let client = Arc::clone(&clients[n % 3]);
        async move {
            client
                .get(
                    by_key("purchase-order", "PO-R"),
                    pb::ReadConsistency::Linearizable,
                )
                .await
                .unwrap()
                .instance
                .id
        }
    });
    for id in futures::future::join_all(reads).await {
        assert_eq!(id, created.instance_id);
    }
    let after: Vec<_> = futures::future::join_all((0..3).map(|i| cluster.scrape(i)))
        .await
        .into_iter()
        .map(|(_, text)| text)
        .collect();
    let grew = |node: usize, name: &str| counter(&after[node], name) - counter(&before[node], name);
    // Each follower's 32 reads shared read-index requests to the leader.
    let mut forwards = 0;
    for follower in (0..3).filter(|&i| i != leader) {
        let sent = grew(follower, "lockstep_read_index_forwards_total");
        let served = grew(follower, "lockstep_read_index_forwarded_reads_total");
        assert!(
            served >= 32,
            "node {follower} answered {served} reads by forwarding"
        );
        assert!(
            sent < served,
            "node {follower}'s {served} concurrent reads sent {sent} read-index requests: none shared"
        );
        forwards += sent;
    }
    // The leader's rounds answered its own 32 reads and the followers' requests.
    let rounds = grew(leader, "lockstep_read_index_rounds_total");
    let answered = grew(leader, "lockstep_read_index_reads_total");
    assert!(
        answered >= 32 + forwards,
        "the leader answered {answered} read-index requests, fewer than its own 32 reads and {forwards} forwarded"
    );
    assert!(
        rounds < answered,
        "{answered} concurrent read-index requests took {rounds} quorum rounds: none shared"
    );
}
