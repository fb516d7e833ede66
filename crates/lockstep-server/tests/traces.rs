//! OpenTelemetry traces over OTLP, against an OTLP/gRPC receiver started by the test: a write
//! sent to a follower with a W3C `traceparent` is continued on the follower (its `grpc` and
//! `propose` spans) and, through the forwarded call, on the leader; through the log it reaches
//! every replica's apply, the task the write created, and the worker's completion.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use lockstep_client::{pb, request_id};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};

/// One exported span: (node id, span name, trace id hex, `rpc` attribute).
type Seen = (i64, String, String, String);

#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Seen>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        use opentelemetry_proto::tonic::common::v1::any_value::Value;
        let value = |attrs: &[opentelemetry_proto::tonic::common::v1::KeyValue], key: &str| {
            attrs
                .iter()
                .find(|a| a.key == key)
                .and_then(|a| a.value.as_ref()?.value.clone())
        };
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let attrs = resource_spans
                .resource
                .map(|r| r.attributes)
                .unwrap_or_default();
            let node = match value(&attrs, "lockstep.node_id") {
                Some(Value::IntValue(n)) => n,
                _ => 0,
            };
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    let rpc = match value(&span.attributes, "rpc") {
                        Some(Value::StringValue(s)) => s,
                        _ => String::new(),
                    };
                    spans.push((node, span.name, hex::encode(&span.trace_id), rpc));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Receiver {
    /// A receiver serving OTLP/gRPC on a loopback port, and a 3-node cluster exporting to it
    /// (with its webhook settings, kept in the directory returned).
    async fn with_cluster() -> (Receiver, Cluster, tempfile::TempDir) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let receiver = Receiver::default();
        let served = receiver.clone();
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(served))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        // Webhooks to loopback, signed with the secret `hooks`.
        let dir = tempfile::tempdir().unwrap();
        let webhooks = dir.path().join("webhooks.toml");
        std::fs::write(
            &webhooks,
            "allow = [\"127.0.0.1/32\"]\n[secrets]\nhooks = \"hooks-secret-of-enough-bytes\"\n",
        )
        .unwrap();
        let cluster = Cluster::start(Settings {
            node_args: vec![
                "--otlp-endpoint".into(),
                format!("http://127.0.0.1:{port}"),
                "--webhooks".into(),
                webhooks.display().to_string(),
            ],
            ..Settings::default()
        });
        (receiver, cluster, dir)
    }

    /// The spans of trace `trace_id` once `done` holds of them (the batch exporter sends
    /// within seconds), at most 30 s.
    async fn wait_for(&self, trace_id: &str, done: impl Fn(&[Seen]) -> bool) -> Vec<Seen> {
        let started = Instant::now();
        loop {
            let spans: Vec<Seen> = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .filter(|s| s.2 == trace_id)
                .cloned()
                .collect();
            if done(&spans) {
                return spans;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "spans of the caller's trace so far: {spans:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Whether `spans` has one named `name` from node `node` (any node: 0) whose `rpc` contains
/// `rpc`.
fn has(spans: &[Seen], node: i64, name: &str, rpc: &str) -> bool {
    spans
        .iter()
        .any(|s| (node == 0 || s.0 == node) && s.1 == name && s.3.contains(rpc))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_callers_traceparent_is_continued_on_the_follower_and_the_leader() {
    let (receiver, cluster, _dir) = Receiver::with_cluster().await;
    cluster.define_tickets("tickets", "1h").await;
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;

    // A caller's trace: a create sent to a follower, which forwards it to the leader.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut client = pb::instances_client::InstancesClient::connect(format!(
        "http://{}",
        cluster.endpoint(follower)
    ))
    .await
    .unwrap();
    let mut request = tonic::Request::new(pb::CreateInstanceRequest {
        request_id: request_id(),
        workflow: "tickets".into(),
        data_json: "{}".into(),
        ..Default::default()
    });
    let md = request.metadata_mut();
    md.insert("x-lockstep-actor", "alice".parse().unwrap());
    md.insert(
        "traceparent",
        format!("00-{trace_id}-00f067aa0ba902b7-01")
            .parse()
            .unwrap(),
    );
    client.create(request).await.unwrap();

    let (follower_id, leader_id) = (follower as i64 + 1, leader as i64 + 1);
    receiver
        .wait_for(trace_id, |spans| {
            has(spans, follower_id, "grpc", "/lockstep.v1.Instances/Create")
                && has(spans, follower_id, "propose", "")
                && has(
                    spans,
                    leader_id,
                    "grpc",
                    "/lockstep.v1.internal.Raft/Forward",
                )
                && has(spans, leader_id, "propose", "")
        })
        .await;
    // Raft's own traffic (heartbeats, appends) is not traced.
    let raft: Vec<Seen> = receiver
        .spans
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.3.contains("internal.Raft/") && !s.3.ends_with("/Forward"))
        .cloned()
        .collect();
    assert!(raft.is_empty(), "{raft:?}");
}

/// A workflow whose `bill` transition hands a task to the `billing` queue.
const JOBS: &str = r#"
workflow: jobs
data: { type: object }
states:
  open: { initial: true }
  billing: {}
  billed: { terminal: true }
transitions:
  bill:
    from: open
    to: billing
    allow: "true"
    effects:
      - task: { queue: billing, type: bill, timeout: 30s, on_complete: billed }
  billed: { from: billing, to: billed, allow: "actor.kind == 'worker'" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_trace_goes_through_the_log_to_every_replica_the_task_the_workers_completion_and_the_webhook()
 {
    use lockstep_client::{Identity, by_id};
    use lockstep_core::ActorKind;
    let (receiver, cluster, _dir) = Receiver::with_cluster().await;
    let leader = cluster.leader().await;
    // Proposals carry their trace from log format 9 on; a new cluster raises it shortly.
    let started = Instant::now();
    for i in 0..3 {
        while gauge(&cluster.scrape(i).await.1, "lockstep_log_format") < 9.0 {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "node {i} did not reach log format 9"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // A webhook receiver that keeps each request's `traceparent`.
    let hooks: Arc<Mutex<Vec<String>>> = Arc::default();
    let got = Arc::clone(&hooks);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap| {
            let got = Arc::clone(&got);
            async move {
                let traceparent = headers.get("traceparent").and_then(|v| v.to_str().ok());
                got.lock()
                    .unwrap()
                    .push(traceparent.unwrap_or_default().to_string());
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    cluster
        .admin()
        .create_subscription(
            &request_id(),
            "jobs",
            &format!("http://{hook_addr}/hook"),
            "hooks",
            pb::SubscriptionFilter {
                workflows: vec!["jobs".into()],
                kinds: vec!["transition".into()],
                events: vec![],
            },
            None,
        )
        .await
        .unwrap();
    let alice = cluster.client(Identity::new("alice", ActorKind::Human, &[]));
    alice
        .apply_definition(&request_id(), JOBS, lockstep_client::Provenance::default())
        .await
        .unwrap();
    let id = alice
        .create(&request_id(), "jobs", None, &serde_json::json!({}))
        .await
        .unwrap()
        .instance_id;

    // The caller's trace: the transition that creates the task, sent to a follower.
    let follower = (leader + 1) % 3;
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let mut client = pb::instances_client::InstancesClient::connect(format!(
        "http://{}",
        cluster.endpoint(follower)
    ))
    .await
    .unwrap();
    let mut request = tonic::Request::new(pb::TransitionRequest {
        request_id: request_id(),
        instance: Some(by_id(&id)),
        transition: "bill".into(),
        ..Default::default()
    });
    let md = request.metadata_mut();
    md.insert("x-lockstep-actor", "alice".parse().unwrap());
    md.insert(
        "traceparent",
        format!("00-{trace_id}-b7ad6b7169203331-01")
            .parse()
            .unwrap(),
    );
    client.transition(request).await.unwrap();

    // The task carries the trace to the worker, whose client sends it back on completion.
    let worker = cluster.client(Identity::new("billing-worker", ActorKind::Worker, &[]));
    let leased = worker
        .poll_tasks("billing", 1, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(leased.len(), 1, "{leased:?}");
    let lease = &leased[0].lease;
    let traceparent = lease.traceparent.clone().expect("the task carries a trace");
    assert_eq!(
        traceparent.split('-').nth(1),
        Some(trace_id),
        "{traceparent}"
    );
    worker
        .complete_task(&request_id(), lease, &serde_json::json!({}))
        .await
        .unwrap();
    assert_eq!(cluster.state_of(&id).await, "billed");

    // Every replica applied the transition inside the caller's trace, the hand-over to the
    // worker is in it, and so are the worker's completion and its apply on every replica.
    let spans = receiver
        .wait_for(trace_id, |spans| {
            let applies = |node| {
                spans
                    .iter()
                    .filter(|s| s.0 == node && s.1 == "apply")
                    .count()
            };
            (1..=3).all(|node| applies(node) >= 2)
                && has(spans, 0, "task.lease", "")
                && has(spans, 0, "grpc", "/lockstep.v1.Tasks/Complete")
        })
        .await;
    assert!(
        has(
            &spans,
            follower as i64 + 1,
            "grpc",
            "/lockstep.v1.Instances/Transition"
        ),
        "{spans:?}"
    );
    // Work outside the trace stays outside: the create before it carried no context.
    let stray: Vec<&Seen> = spans
        .iter()
        .filter(|s| s.3.contains("Instances/Create"))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
}
