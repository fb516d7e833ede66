//! Quotas of the cluster policy on a real secure cluster: per-actor and per-role rates of
//! writes (counted on the leader, whichever node the caller reaches) and of polls, refused
//! with `RESOURCE_EXHAUSTED` / `QUOTA_EXCEEDED` naming the quota, and counted per quota.

mod common;

use std::time::Duration;

use common::{Cluster, Settings};
use lockstep_client::{Client, Error, Identity, Options, QUOTA_EXCEEDED, request_id};
use lockstep_core::ActorKind;

const POLICY: &str = r#"
[quotas.actors.greedy]
writes_per_second = 0.5
writes_burst = 3

[quotas.roles.bulk]
writes_per_second = 0.5
writes_burst = 2

[quotas.roles.vip]
writes_per_second = 1000

[quotas.roles.poller]
polls_per_second = 0.5
polls_burst = 1
"#;

/// A client of `identity` that returns quota refusals instead of retrying them, whose first
/// endpoint is node `first`.
fn impatient(cluster: &Cluster, identity: Identity, first: usize) -> Client {
    let mut endpoints = cluster.endpoints();
    endpoints.rotate_left(first);
    let options = Options {
        retry_overloaded: false,
        ..Options::default()
    };
    cluster.client_with(&endpoints, identity, options)
}

async fn create(client: &Client) -> Result<String, Error> {
    client
        .create(
            &request_id(),
            "purchase-order",
            None,
            &serde_json::json!({"amount": 1, "requester": "q"}),
        )
        .await
        .map(|c| c.instance_id)
}

/// Creates `n` back to back; returns how many were created before the first refusal, and
/// the refusal's quota and hint.
async fn until_refused(client: &Client, n: usize) -> (usize, Option<(String, Duration)>) {
    for created in 0..n {
        match create(client).await {
            Ok(_) => {}
            Err(Error::Overloaded {
                reason,
                quota,
                retry_after,
                message,
            }) => {
                assert_eq!(reason, QUOTA_EXCEEDED, "{message}");
                let quota = quota.expect("the quota is named");
                assert!(message.contains(&quota), "{message}");
                return (created, Some((quota, retry_after.expect("a hint"))));
            }
            Err(e) => panic!("create failed: {e}"),
        }
    }
    (n, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn write_quotas_hold_per_actor_and_role_across_nodes() {
    let cluster = Cluster::start_secure(Settings::default(), Some(POLICY));
    let leader = cluster.leader().await;
    cluster.define_po().await;
    let follower = (leader + 1) % 3;

    // The actor's own quota: a burst of 3, whether it writes through the leader or a
    // follower (which forwards: the leader counts).
    let greedy = Identity::new("greedy", ActorKind::Service, &["vip"]);
    let via_leader = impatient(&cluster, greedy.clone(), leader);
    let via_follower = impatient(&cluster, greedy.clone(), follower);
    create(&via_leader).await.unwrap();
    create(&via_follower).await.unwrap();
    let (created, refused) = until_refused(&via_follower, 10).await;
    assert_eq!(
        created, 1,
        "the third write of a burst of 3 passes, the fourth does not"
    );
    let (quota, hint) = refused.expect("over its quota");
    // Its own quota wins over its role's far larger one.
    assert_eq!(quota, "actor:greedy");
    assert!(hint <= Duration::from_secs(2), "{hint:?}");
    // A token comes back at the rate (one per 2 s).
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    create(&via_leader).await.expect("a token came back");

    // A role's quota is per actor; the most generous role applies.
    let (created, refused) = until_refused(
        &impatient(
            &cluster,
            Identity::new("b1", ActorKind::Human, &["bulk"]),
            leader,
        ),
        10,
    )
    .await;
    assert_eq!(
        (created, refused.map(|r| r.0)),
        (2, Some("role:bulk".to_string()))
    );
    let (created, _) = until_refused(
        &impatient(
            &cluster,
            Identity::new("b2", ActorKind::Human, &["bulk"]),
            leader,
        ),
        10,
    )
    .await;
    assert_eq!(created, 2, "b2 has a bucket of its own");
    let (created, refused) = until_refused(
        &impatient(
            &cluster,
            Identity::new("b3", ActorKind::Human, &["bulk", "vip"]),
            leader,
        ),
        10,
    )
    .await;
    assert_eq!(
        (created, refused),
        (10, None),
        "vip is the more generous role"
    );
    // Without a quota, nothing is counted.
    let (created, _) = until_refused(
        &impatient(
            &cluster,
            Identity::new("free", ActorKind::Human, &[]),
            follower,
        ),
        10,
    )
    .await;
    assert_eq!(created, 10);

    // The default client waits for the hint and retries with the same request id.
    let patient = cluster.client(Identity::new("b1", ActorKind::Human, &["bulk"]));
    for _ in 0..3 {
        create(&patient)
            .await
            .expect("the patient client gets through");
    }

    // Refusals are counted per quota on the leader.
    let (_, body) = cluster.scrape(leader).await;
    for quota in ["actor:greedy", "role:bulk"] {
        let name = format!("lockstep_quota_refusals_total{{quota=\"{quota}\"}}");
        assert!(common::counter(&body, &name) >= 1, "{name} in\n{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poll_quotas_refuse_polls_beyond_the_rate() {
    let cluster = Cluster::start_secure(Settings::default(), Some(POLICY));
    cluster.leader().await;
    let worker = impatient(
        &cluster,
        Identity::new("w", ActorKind::Worker, &["poller"]),
        0,
    );
    let tasks = worker
        .poll_tasks("q", 1, Duration::from_millis(10))
        .await
        .expect("the first poll is within the burst");
    assert!(tasks.is_empty());
    match worker.poll_tasks("q", 1, Duration::from_millis(10)).await {
        Err(Error::Overloaded { reason, quota, .. }) => {
            assert_eq!(reason, QUOTA_EXCEEDED);
            assert_eq!(quota.as_deref(), Some("role:poller"));
        }
        other => panic!("expected QUOTA_EXCEEDED, got {other:?}"),
    }
}
