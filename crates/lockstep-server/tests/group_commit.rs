//! Group commit and request ids on a real 3-node cluster: concurrent writes share log
//! entries once the cluster-version gate opens, every one is answered with its own outcome,
//! the replicas agree, and a request id reused for another request is refused on any node.

mod common;

use std::time::Duration;

use common::{Cluster, Settings, alice, counter};
use lockstep_client::{by_key, pb, request_id};
use lockstep_core::RefusalCode;

fn po(requester: &str) -> serde_json::Value {
    serde_json::json!({"amount": 100, "requester": requester})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_entries_and_each_gets_its_own_outcome() {
    let cluster = Cluster::start(Settings::default());
    let leader = cluster.leader().await;
    cluster.define_po().await;
    cluster.wait_for_group_commit(Duration::from_secs(20)).await;
    let (_, before) = cluster.scrape(leader).await;
    let client = std::sync::Arc::new(cluster.client(alice()));
    let writes = (0..200).map(|n| {
        let client = std::sync::Arc::clone(&client);
        async move {
            let key = format!("GC-{n}");
            let created = client
                .create(&request_id(), "purchase-order", Some(&key), &po("alice"))
                .await
                .unwrap();
            (key, created)
        }
    });
    let created = futures::future::join_all(writes).await;
    let mut ids: Vec<&str> = created
        .iter()
        .map(|(_, c)| c.instance_id.as_str())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 200, "every create has its own instance");
    for (key, change) in &created {
        let got = client
            .get(
                by_key("purchase-order", key),
                pb::ReadConsistency::Linearizable,
            )
            .await
            .unwrap();
        assert_eq!(got.instance.id, change.instance_id);
    }
    let (_, after) = cluster.scrape(leader).await;
    let requests = counter(&after, "lockstep_requests_proposed_total")
        - counter(&before, "lockstep_requests_proposed_total");
    let entries = counter(&after, "lockstep_raft_entries_proposed_total")
        - counter(&before, "lockstep_raft_entries_proposed_total");
    assert!(requests >= 200, "{requests} requests proposed");
    assert!(
        entries < requests,
        "200 concurrent creates took {entries} entries for {requests} requests: nothing was batched"
    );
    let digests = cluster.converged_digests().await;
    assert!(digests.windows(2).all(|w| w[0] == w[1]), "{digests:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_reused_for_another_request_is_refused_on_any_node() {
    let cluster = Cluster::start(Settings::default());
    cluster.leader().await;
    cluster.define_po().await;
    cluster.wait_for_group_commit(Duration::from_secs(20)).await;
    let node = |i: usize| cluster.client_for(&[cluster.endpoint(i)], alice());
    let first = node(0)
        .create("fixed-1", "purchase-order", Some("K1"), &po("alice"))
        .await
        .unwrap();
    // The same request again, through another node: the first outcome.
    let again = node(1)
        .create("fixed-1", "purchase-order", Some("K1"), &po("alice"))
        .await
        .unwrap();
    assert_eq!(again.instance_id, first.instance_id);
    // Another create under the same id: refused, and K2 never exists.
    let refused = node(1)
        .create("fixed-1", "purchase-order", Some("K2"), &po("alice"))
        .await
        .unwrap_err();
    assert_eq!(
        refused.refusal_code(),
        Some(RefusalCode::RequestIdReused),
        "{refused}"
    );
    assert!(
        refused.to_string().contains("create of purchase-order/K1"),
        "{refused}"
    );
    let missing = node(2)
        .get(
            by_key("purchase-order", "K2"),
            pb::ReadConsistency::Linearizable,
        )
        .await
        .unwrap_err();
    assert!(missing.to_string().contains("K2"), "{missing}");
    // A transition under the same id: refused, K1 not submitted.
    let refused = node(2)
        .transition(
            "fixed-1",
            by_key("purchase-order", "K1"),
            "submit",
            &serde_json::Value::Null,
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(
        refused.refusal_code(),
        Some(RefusalCode::RequestIdReused),
        "{refused}"
    );
    let k1 = node(0)
        .get(
            by_key("purchase-order", "K1"),
            pb::ReadConsistency::Linearizable,
        )
        .await
        .unwrap()
        .instance;
    assert_eq!((k1.state.as_str(), k1.version), ("draft", 1));
}
