//! The public API's edges on a real cluster: limits, bad input, unknown ids and routing
//! without forwarding. Each bad request gets a clear status and changes nothing.

mod common;

use common::{Cluster, PO, Settings, alice};
use lockstep_client::{AuditVerification, Options, by_id, pb, request_id};
use lockstep_core::{ActorKind, RefusalCode};
use lockstep_proto::names;
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic_types::StatusExt;

/// A raw request with development-mode actor headers.
fn raw<T>(message: T, actor: &str, kind: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut()
        .insert(names::ACTOR_HEADER, MetadataValue::try_from(actor).unwrap());
    r.metadata_mut().insert(
        names::ACTOR_KIND_HEADER,
        MetadataValue::try_from(kind).unwrap(),
    );
    r
}

async fn channel(cluster: &Cluster, i: usize) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{}", cluster.endpoint(i)))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_statuses_and_change_nothing() {
    let cluster = Cluster::start(Settings::default());
    let leader = cluster.leader().await;
    let admin = cluster.admin();
    admin
        .apply_definition(&request_id(), PO, lockstep_client::Provenance::default())
        .await
        .unwrap();
    let head = |v: AuditVerification| (v.head_seq, v.head_hash);
    let before = head(admin.verify_audit().await.unwrap());
    let mut instances = pb::instances_client::InstancesClient::new(channel(&cluster, leader).await)
        .max_encoding_message_size(64 << 20);

    // A message over the 4 MiB limit: refused by the transport, not a crash.
    let huge = format!(
        r#"{{"amount": 1, "requester": "alice", "note": "{}"}}"#,
        "x".repeat(5 << 20)
    );
    let status = instances
        .create(raw(
            pb::CreateInstanceRequest {
                request_id: request_id(),
                workflow: "purchase-order".into(),
                key: String::new(),
                data_json: huge,
            },
            "alice",
            "human",
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(status.code(), Code::ResourceExhausted | Code::OutOfRange),
        "{status:?}"
    );

    // Data under the transport limit but over the engine's: a LIMIT_EXCEEDED refusal.
    let big =
        serde_json::json!({"amount": 1, "requester": "alice", "note": "y".repeat(300 * 1024)});
    let err = cluster
        .client(alice())
        .create(&request_id(), "purchase-order", None, &big)
        .await
        .unwrap_err();
    assert_eq!(
        err.refusal_code(),
        Some(RefusalCode::LimitExceeded),
        "{err}"
    );

    // Malformed JSON, a missing request id, an unknown instance, an unknown workflow.
    let status = instances
        .create(raw(
            pb::CreateInstanceRequest {
                request_id: request_id(),
                workflow: "purchase-order".into(),
                key: String::new(),
                data_json: "{not json".into(),
            },
            "alice",
            "human",
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("data_json is not valid JSON"),
        "{status:?}"
    );
    let status = instances
        .transition(raw(
            pb::TransitionRequest {
                request_id: String::new(),
                instance: Some(by_id("i-1")),
                transition: "submit".into(),
                payload_json: String::new(),
                expected_version: None,
            },
            "alice",
            "human",
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("request_id is empty"),
        "{status:?}"
    );
    let status = instances
        .get(raw(
            pb::GetInstanceRequest {
                instance: Some(by_id("i-does-not-exist")),
                consistency: 0,
            },
            "alice",
            "human",
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let err = cluster
        .client(alice())
        .create(
            &request_id(),
            "no-such-workflow",
            None,
            &serde_json::json!({}),
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.refusal_code(),
        Some(RefusalCode::UnknownWorkflow),
        "{err}"
    );

    // Task RPCs check their limits and who calls them.
    let mut tasks = pb::tasks_client::TasksClient::new(channel(&cluster, leader).await);
    let status = tasks
        .poll(raw(
            pb::PollTasksRequest {
                queue: "erp".into(),
                max_tasks: 33,
                wait_ms: 0,
            },
            "w",
            "worker",
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("max_tasks 33 is more than 32"),
        "{status:?}"
    );
    let status = tasks
        .poll(raw(
            pb::PollTasksRequest {
                queue: "erp".into(),
                max_tasks: 1,
                wait_ms: 60_000,
            },
            "w",
            "worker",
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = tasks
        .complete(raw(
            pb::CompleteTaskRequest {
                request_id: request_id(),
                lease: None,
                result_json: String::new(),
            },
            "w",
            "worker",
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("lease is missing"), "{status:?}");

    // Nothing above changed an instance or wrote an audit record. (Refusals that reached the
    // log are remembered by request id, so the state digest does move: a retry gets the same
    // refusal.)
    assert_eq!(
        before,
        head(admin.verify_audit().await.unwrap()),
        "no audit record written"
    );
    let listed = admin
        .list(pb::ListInstancesRequest {
            workflow: "purchase-order".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        listed.instances.is_empty(),
        "no instance created: {:?}",
        listed.instances
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_forwarding_a_follower_names_the_leader_and_the_client_follows() {
    let cluster = Cluster::start(Settings::default());
    let leader = cluster.leader().await;
    cluster
        .admin()
        .apply_definition(&request_id(), PO, lockstep_client::Provenance::default())
        .await
        .unwrap();
    let follower = (leader + 1) % 3;
    let mut instances =
        pb::instances_client::InstancesClient::new(channel(&cluster, follower).await);
    let mut request = raw(
        pb::CreateInstanceRequest {
            request_id: request_id(),
            workflow: "purchase-order".into(),
            key: String::new(),
            data_json: r#"{"amount": 5, "requester": "alice"}"#.into(),
        },
        "alice",
        "human",
    );
    request
        .metadata_mut()
        .insert(names::NO_FORWARD_HEADER, MetadataValue::from_static("1"));
    let status = instances.create(request).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let info = status.get_details_error_info().expect("ErrorInfo details");
    assert_eq!(
        info.metadata.get(names::LEADER_ADDR),
        Some(&cluster.endpoint(leader)),
        "{info:?}"
    );
    // The client library, told not to rely on forwarding, goes to the named leader.
    let options = Options {
        forward: false,
        ..Options::default()
    };
    let client = lockstep_client::Client::new(
        &[cluster.endpoint(follower), cluster.endpoint(leader)],
        Some(lockstep_client::Identity::new(
            "alice",
            ActorKind::Human,
            &[],
        )),
        options,
    )
    .unwrap();
    let created = client
        .create(
            &request_id(),
            "purchase-order",
            None,
            &serde_json::json!({"amount": 5, "requester": "alice"}),
        )
        .await
        .unwrap();
    assert_eq!(created.state, "draft");
}
