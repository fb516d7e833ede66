//! Traces (DESIGN §9, "Outbound"): with `--otlp-endpoint` a node exports OpenTelemetry traces
//! over OTLP/gRPC, made from its `tracing` spans by tracing-opentelemetry.
//!
//! A W3C `traceparent` in a call's metadata is continued: [`TraceLayer`] opens a `grpc`
//! span per public call (and per forwarded write, `lockstep.v1.internal.Raft/Forward`) whose
//! parent is the caller's context; a follower forwarding a write sends its own context in the
//! forward call's metadata ([`inject`]), so the leader's spans join the caller's trace; the
//! leader's `propose` span covers the proposal until its entry is committed and applied.
//! From log format 9 the proposal carries the `propose` span's context through the log
//! (`Body::Traced`, `lockstep_raft::trace`): every replica's apply opens an `apply` span in
//! it, a task the change created keeps it (family `TaskTraces`) and a poll hands it to the
//! worker (`LeasedTask.traceparent`, with a `task.lease` span), whose clients send it back
//! with the task's heartbeats and completion; an audit record keeps it too (family
//! `AuditTraces`, the last `AUDIT_TRACES_KEPT` records), so the record's `webhook.deliver`
//! span joins the write's trace, and the request carries that span as its `traceparent`.
//!
//! | span | where | attributes |
//! | --- | --- | --- |
//! | `grpc` | every node, per public call and forwarded write | `rpc` |
//! | `propose` | the node that proposes (the leader) | `body`, `lane` |
//! | `apply` | every replica, per traced request | `body`, `index` |
//! | `task.lease` | the node that answered the poll | `task`, `queue`, `worker` |
//! | `webhook.deliver` | the leader | `subscription`, `seq`, `attempt` |

use std::collections::HashMap;
use std::task::{Context, Poll};

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::metrics::BoxFuture;

/// The exporter of a node that exports traces; shut down (flushing what is buffered) at exit.
#[derive(Debug)]
pub struct Traces {
    provider: SdkTracerProvider,
}

impl Traces {
    /// An exporter to `endpoint` (`http://host:4317`) and the layer that feeds it. Must be
    /// called inside the Tokio runtime: the OTLP client is a tonic channel.
    pub fn start<S>(
        endpoint: &str,
        node_id: u64,
    ) -> Result<(Traces, impl tracing_subscriber::Layer<S>), String>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        use opentelemetry_otlp::WithExportConfig;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .map_err(|e| format!("--otlp-endpoint {endpoint}: {e}"))?;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name("lockstepd")
            .with_attribute(opentelemetry::KeyValue::new(
                "lockstep.node_id",
                node_id as i64,
            ))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("lockstepd"));
        Ok((Traces { provider }, layer))
    }

    /// Exports what is buffered and stops.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("lockstepd: exporting the last traces: {e}");
        }
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The W3C trace context of the current span, as headers (`traceparent`, `tracestate`):
/// empty when no span is being exported.
pub fn inject() -> HashMap<String, String> {
    struct Into<'a>(&'a mut HashMap<String, String>);
    impl Injector for Into<'_> {
        fn set(&mut self, key: &str, value: String) {
            self.0.insert(key.to_string(), value);
        }
    }
    let mut headers = HashMap::new();
    let context = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&context, &mut Into(&mut headers));
    headers
}

/// Whether calls of `path` get a `grpc` span: the public API and forwarded writes, not Raft's
/// own traffic (heartbeats would drown everything).
fn traced(path: &str) -> bool {
    (path.starts_with("/lockstep.v1.") && !path.starts_with("/lockstep.v1.internal."))
        || path == "/lockstep.v1.internal.Raft/Forward"
}

/// A tower layer around the gRPC server: a `grpc` span per traced call, continuing the
/// caller's `traceparent`.
#[derive(Clone, Debug, Default)]
pub struct TraceLayer;

impl<S> tower_layer::Layer<S> for TraceLayer {
    type Service = TraceService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TraceService { inner }
    }
}

#[derive(Clone, Debug)]
pub struct TraceService<S> {
    inner: S,
}

impl<S, ReqBody> tower_service::Service<http::Request<ReqBody>> for TraceService<S>
where
    S: tower_service::Service<http::Request<ReqBody>>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let path = request.uri().path();
        if !traced(path) {
            return Box::pin(self.inner.call(request));
        }
        let span = tracing::info_span!("grpc", rpc = %path, otel.kind = "server");
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(request.headers()));
        let _ = span.set_parent(parent);
        let response = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        Box::pin(response.instrument(span))
    }
}

/// Sends the current trace context along with a request (a forwarded write).
pub fn add_to<T>(request: &mut tonic::Request<T>) {
    for (k, v) in inject() {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(k.as_bytes()),
            v.parse(),
        ) {
            request.metadata_mut().insert(key, value);
        }
    }
}
