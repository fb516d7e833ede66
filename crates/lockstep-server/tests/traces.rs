//! OpenTelemetry traces over OTLP, against an OTLP/gRPC receiver started by the test: a write
//! sent to a follower with a W3C `traceparent` is continued on the follower (its `grpc` and
//! `propose` spans) and, through the forwarded call, on the leader.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_callers_traceparent_is_continued_on_the_follower_and_the_leader() {
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
    let cluster = Cluster::start(Settings {
        node_args: vec!["--otlp-endpoint".into(), format!("http://127.0.0.1:{port}")],
        ..Settings::default()
    });
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

    // The batch exporter sends within seconds.
    let (follower_id, leader_id) = (follower as i64 + 1, leader as i64 + 1);
    let started = Instant::now();
    loop {
        let spans: Vec<Seen> = receiver
            .spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.2 == trace_id)
            .cloned()
            .collect();
        let has = |node: i64, name: &str, rpc: &str| {
            spans
                .iter()
                .any(|s| s.0 == node && s.1 == name && s.3.contains(rpc))
        };
        if has(follower_id, "grpc", "/lockstep.v1.Instances/Create")
            && has(follower_id, "propose", "")
            && has(leader_id, "grpc", "/lockstep.v1.internal.Raft/Forward")
            && has(leader_id, "propose", "")
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "spans of the caller's trace so far: {spans:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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
