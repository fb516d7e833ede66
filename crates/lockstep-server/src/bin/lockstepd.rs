//! lockstepd: a Lockstep cluster node. See `lockstepd --help`.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use lockstep_proto::v1 as pb;
use lockstep_server::api::Api;
use lockstep_server::config::{Config, Flags, LogFormat};
use lockstep_server::metrics::GrpcMetricsLayer;
use lockstep_server::node::{Node, StartError};
use lockstep_server::raft_service::RaftService;
use tokio::sync::watch;

/// Every allocation of the process, RocksDB's included, goes to jemalloc (the workspace
/// manifest says why).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Most concurrent HTTP/2 streams per client connection.
const STREAMS_PER_CONNECTION_MAX: u32 = 256;
/// Largest request or response message, in bytes.
const MESSAGE_BYTES_MAX: usize = 4 << 20;

fn main() -> ExitCode {
    // `lockstepd backup|restore|inspect`: offline tools on a data directory or checkpoint.
    if let Some(code) = lockstep_server::backup::main_if_offline_command() {
        return code;
    }
    let flags = Flags::parse();
    let config = match Config::load(flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("lockstepd: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    // Inside the runtime: the OTLP exporter is a tonic channel.
    let traces = {
        let _runtime = runtime.enter();
        match init_tracing(
            config.log_format,
            config.otlp_endpoint.as_deref(),
            config.id,
        ) {
            Ok(traces) => traces,
            Err(e) => {
                eprintln!("lockstepd: {e}");
                return ExitCode::from(2);
            }
        }
    };
    match lockstep_raft::mutation::from_env() {
        Ok(None) => {}
        Ok(Some(m)) => tracing::warn!(
            mutation = %m,
            "MUTATION RUN: this node runs with a deliberate bug ({}={m}) for the test harness; never serve real work with it",
            lockstep_raft::mutation::ENV
        ),
        Err(e) => {
            eprintln!("lockstepd: {e}");
            return ExitCode::from(2);
        }
    }
    let result = runtime.block_on(run(config));
    if let Some(traces) = traces {
        let _runtime = runtime.enter();
        traces.shutdown();
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<lockstep_server::failstop::Corrupt>() => {
            tracing::error!("{e}");
            eprintln!("lockstepd: {e}");
            ExitCode::from(lockstep_server::failstop::EXIT_CORRUPT as u8)
        }
        Err(e) => {
            eprintln!("lockstepd: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Logs to stderr (text or JSON) and, with an OTLP endpoint, traces to it.
fn init_tracing(
    format: LogFormat,
    otlp_endpoint: Option<&str>,
    node_id: u64,
) -> Result<Option<lockstep_server::telemetry::Traces>, String> {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,openraft=warn".into());
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = match format {
        LogFormat::Json => logs.json().boxed(),
        LogFormat::Text => logs.boxed(),
    };
    // The filter applies to the logs only: spans exported as traces are the info ones.
    let registry = tracing_subscriber::registry().with(logs.with_filter(filter));
    match otlp_endpoint {
        None => {
            registry.init();
            Ok(None)
        }
        Some(endpoint) => {
            let (traces, layer) = lockstep_server::telemetry::Traces::start(endpoint, node_id)?;
            let spans = tracing_subscriber::filter::Targets::new()
                .with_target("lockstep_server", tracing::Level::INFO)
                .with_target("lockstep_raft", tracing::Level::INFO)
                .with_target("lockstepd", tracing::Level::INFO);
            registry.with(layer.with_filter(spans)).init();
            Ok(Some(traces))
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    // Bind first: a port in use is a start-up error, before any state is touched.
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AddrInUse => anyhow::anyhow!(
                "{} is already in use: is another lockstepd running there? choose another --listen",
                config.listen
            ),
            _ => anyhow::anyhow!("cannot listen on {}: {e}", config.listen),
        })?;
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(
            |e| match e.kind() {
                std::io::ErrorKind::AddrInUse => {
                    anyhow::anyhow!("{addr} is already in use: choose another --metrics-listen")
                }
                _ => anyhow::anyhow!("cannot listen on {addr} (--metrics-listen): {e}"),
            },
        )?),
        None => None,
    };
    let console_listener = match config.console_listen {
        Some(addr) => Some(lockstep_server::console::bind(addr).await?),
        None => None,
    };
    if config.dev {
        tracing::warn!(
            "DEVELOPMENT MODE: no TLS, no peer authentication, and callers name themselves with the x-lockstep-actor header (anyone who reaches this port can act as anyone). Loopback only; never use this in production."
        );
    }
    // A store found corrupt before stays out until it is re-seeded (failstop.rs).
    lockstep_server::failstop::refuse_if_marked(&config)?;
    let leader_services = Arc::new(lockstep_server::leader::LeaderServices::default());
    let node = Node::start(config.clone(), Arc::clone(&leader_services))
        .await
        .map_err(|e| match e {
            StartError::Store(lockstep_store::Error::Corruption(text)) => {
                lockstep_server::failstop::corrupt_at_open(&config, &text).into()
            }
            e => anyhow::Error::from(e),
        })?;
    // The cluster-version gate, a service on the node (it would otherwise tie node and
    // format_gate into an import circle).
    tokio::spawn(lockstep_server::format_gate::run(Arc::downgrade(&node)));
    tokio::spawn(lockstep_server::space::run(
        Arc::clone(&node.space),
        Arc::downgrade(&node.store),
        node.id,
        node.config.data_dir.clone(),
    ));
    tracing::info!(id = node.id, listen = %config.listen, data_dir = %config.data_dir.display(), "lockstepd started");

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    // The background scrub; a corruption it meets is seen by the fail-stop watch below.
    tokio::spawn(lockstep_server::scrub::run(
        Arc::downgrade(&node.store),
        config.scrub,
        shutdown_rx.clone(),
    ));
    let metrics_server = metrics_listener.map(|listener| {
        tracing::info!(addr = ?listener.local_addr().ok(), "serving metrics at /metrics");
        let mut shutdown = shutdown_rx.clone();
        let scraped = Arc::clone(&node);
        tokio::spawn(lockstep_server::metrics::serve(
            listener,
            Arc::new(move || scraped.render_metrics()),
            async move {
                let _ = shutdown.changed().await;
            },
        ))
    });
    // The leader-only services, each driven through the same lifecycle (leader.rs).
    let leading = leader_services.start(
        vec![
            Arc::new(lockstep_server::timers::TimerService::new(Arc::clone(
                &node,
            ))),
            Arc::new(lockstep_server::dispatch::OutboxDispatcher::new(
                Arc::clone(&node),
            )),
            Arc::new(lockstep_server::webhooks::WebhookService::new(Arc::clone(
                &node,
            ))),
            Arc::new(lockstep_server::schedules::ScheduleService::new(
                Arc::clone(&node),
            )),
        ],
        node.raft.metrics(),
        shutdown_rx.clone(),
    );

    // SIGHUP re-reads the cluster policy file at once (it is also re-read when it changes).
    let reload_node = Arc::clone(&node);
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| anyhow::anyhow!("installing the SIGHUP handler: {e}"))?;
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            if let Err(e) = reload_node.trust.policy.reload() {
                tracing::error!(error = %e, "SIGHUP: the cluster policy file is not valid; the previous policy stays in force");
            }
        }
    });

    // Storage that fails stops the Raft core for good, and a corrupt store must not serve:
    // stop serving, then exit.
    let failstop = Arc::new(lockstep_server::failstop::FailStop::default());
    let mut storage_failed = tokio::spawn(lockstep_server::failstop::watch(
        Arc::clone(&node),
        Arc::clone(&failstop),
    ));

    let api = Api::new(Arc::clone(&node));
    if let Some(listener) = console_listener {
        let scheme = if config.dev { "http" } else { "https" };
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(url = %format!("{scheme}://{addr}/"), "serving the console");
        }
        let console_api = api.clone();
        let console_shutdown = shutdown_rx.clone();
        tokio::spawn(async move {
            if let Err(e) =
                lockstep_server::console::serve(listener, console_api, console_shutdown).await
            {
                tracing::error!(error = %e, "the console stopped");
            }
        });
    }
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<pb::instances_server::InstancesServer<Api>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(lockstep_proto::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    let mut shutdown_signal = shutdown_rx.clone();
    let acceptor = node
        .trust
        .tls_acceptor()
        .map_err(|e| anyhow::anyhow!("TLS settings (--tls-cert, --tls-key, --tls-ca): {e}"))?;
    if acceptor.is_some() {
        tracing::info!("serving TLS; peers and clients authenticate (mTLS, JWT)");
    }
    let builder = tonic::transport::Server::builder();
    let server = builder
        .max_concurrent_streams(Some(STREAMS_PER_CONNECTION_MAX))
        .timeout(Duration::from_secs(30))
        .layer(GrpcMetricsLayer::new(Arc::clone(&node.metrics)))
        .layer(lockstep_server::telemetry::TraceLayer)
        .layer(lockstep_server::failstop::FailStopLayer::new(Arc::clone(
            &failstop,
        )))
        .layer(lockstep_server::trust::AuthLayer::new(
            Arc::clone(&node.trust),
            Arc::clone(&node.security),
        ))
        .add_service(
            lockstep_proto::v1::internal::raft_server::RaftServer::new(RaftService {
                node: Arc::clone(&node),
            })
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20),
        )
        .add_service(
            pb::definitions_server::DefinitionsServer::new(api.clone())
                .max_decoding_message_size(MESSAGE_BYTES_MAX),
        )
        .add_service(
            pb::instances_server::InstancesServer::new(api.clone())
                .max_decoding_message_size(MESSAGE_BYTES_MAX),
        )
        .add_service(
            pb::audit_server::AuditServer::new(api.clone())
                .max_decoding_message_size(MESSAGE_BYTES_MAX),
        )
        .add_service(
            pb::tasks_server::TasksServer::new(api.clone())
                .max_decoding_message_size(MESSAGE_BYTES_MAX),
        )
        .add_service(
            pb::cluster_server::ClusterServer::new(api.clone())
                .max_decoding_message_size(MESSAGE_BYTES_MAX),
        )
        .add_service(
            pb::subscriptions_server::SubscriptionsServer::new(api.clone())
                .max_decoding_message_size(MESSAGE_BYTES_MAX),
        )
        .add_service(
            pb::schedules_server::SchedulesServer::new(api.clone())
                .max_decoding_message_size(MESSAGE_BYTES_MAX),
        )
        .add_service(health_service)
        .add_service(reflection);
    let shutdown = async move {
        let _ = shutdown_signal.changed().await;
    };
    // With TLS the node runs the handshakes itself, so failed ones reach the security log.
    let server = match acceptor {
        Some(acceptor) => tokio::spawn(server.serve_with_incoming_shutdown(
            lockstep_server::tls_accept::incoming(listener, acceptor, Arc::clone(&node.security)),
            shutdown,
        )),
        None => tokio::spawn(server.serve_with_incoming_shutdown(
            tokio_stream::StreamExt::map(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                |accepted| {
                    accepted.inspect(|tcp| {
                        // tonic sets TCP_NODELAY only for sockets it accepts itself.
                        let _ = tcp.set_nodelay(true);
                    })
                },
            ),
            shutdown,
        )),
    };

    tokio::select! {
        _ = wait_for_signal() => {}
        Ok(stopped) = &mut storage_failed => {
            use lockstep_server::failstop::EXIT_GRACE;
            tracing::error!(
                exit_in = ?EXIT_GRACE,
                status = stopped.status,
                "{}",
                stopped.answer
            );
            health_reporter
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
            health_reporter
                .set_not_serving::<pb::instances_server::InstancesServer<Api>>()
                .await;
            tokio::time::sleep(EXIT_GRACE).await;
            std::process::exit(stopped.status);
        }
    }
    tracing::info!("shutting down: draining requests");
    let _ = shutdown_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
    if let Some(metrics_server) = metrics_server {
        let _ = tokio::time::timeout(Duration::from_secs(5), metrics_server).await;
    }
    for service in leading {
        let _ = service.await;
    }
    node.raft
        .shutdown()
        .await
        .map_err(|e| anyhow::anyhow!("raft shutdown: {e}"))?;
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
