//! The leader hint on a real 3-node cluster: a write a follower forwarded is answered with the
//! leader's address (`x-lockstep-leader`), which the client follows, so its next writes skip
//! the follower; a write the leader took itself names no leader.

mod common;

use common::{Cluster, Settings, alice};
use lockstep_client::request_id;

fn po() -> serde_json::Value {
    serde_json::json!({"amount": 100, "requester": "alice"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_wrote_through_a_follower_goes_to_the_leader() {
    let cluster = Cluster::start(Settings::default());
    let leader = cluster.leader().await;
    cluster.define_po().await;
    let follower = (0..3).find(|&i| i != leader).expect("a follower");

    // The leader first: it takes the write itself, names no leader, and the client stays.
    let direct = cluster.client_for(
        &[cluster.endpoint(leader), cluster.endpoint(follower)],
        alice(),
    );
    direct
        .create(&request_id(), "purchase-order", None, &po())
        .await
        .expect("the leader takes a create");
    assert_eq!(direct.current_endpoint(), cluster.endpoint(leader));

    // The follower first: it forwards the write, and its answer sends the client on.
    let client = cluster.client_for(
        &[cluster.endpoint(follower), cluster.endpoint(leader)],
        alice(),
    );
    assert_eq!(client.current_endpoint(), cluster.endpoint(follower));
    client
        .create(&request_id(), "purchase-order", None, &po())
        .await
        .expect("a follower forwards a create");
    assert_eq!(
        client.current_endpoint(),
        cluster.endpoint(leader),
        "the follower's answer named the leader, so the client goes there"
    );
}
