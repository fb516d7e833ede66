//! erp-worker: the worker of the purchase-order example.
//!
//! When an order is approved, the `approve` transition's effect puts a
//! `create-purchase-order` task on the `erp` queue. This worker leases those tasks, "creates"
//! the order in a pretend ERP (it derives a PO number from the instance), and completes the
//! task with `{"data": {"po_number": ...}}`: the workflow's `on_complete` takes `place` with
//! the worker as actor and that result as payload, so the number lands in the instance data.
//! Orders whose supplier is `"blocked"` fail without retry, which exhausts the policy and
//! takes `on_exhausted: fail`.
//!
//! Run it against `lockstep dev`:
//!
//! ```text
//! cargo run --release --bin erp-worker -- --endpoints 127.0.0.1:7101
//! ```

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use lockstep_client::worker::{TaskFailure, WorkerOptions, run};
use lockstep_client::{Client, Credentials, Identity, LeasedTask, Options, Tls};
use lockstep_core::ActorKind;

#[derive(Parser)]
#[command(about = "Places approved purchase orders: the example worker of the `erp` queue.")]
struct Args {
    /// Nodes to talk to, comma-separated host:port (any node; writes reach the leader).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:7101")]
    endpoints: Vec<String>,
    /// The worker's actor id (development mode names actors by header).
    #[arg(long, default_value = "erp-worker-1")]
    worker: String,
    /// Most tasks in hand at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Pretend each order takes this long to place in the ERP, in milliseconds.
    #[arg(long, default_value_t = 100)]
    work_ms: u64,
    /// Stop after this many tasks (0: run until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    max_tasks: u64,
    /// The cluster CA (PEM): connect over TLS (a secure cluster).
    #[arg(long, env = "LOCKSTEP_TLS_CA")]
    tls_ca: Option<std::path::PathBuf>,
    /// A client certificate of kind worker (`lockstep certs --client NAME:worker`), with
    /// --tls-key: the worker's identity on a secure cluster.
    #[arg(long, env = "LOCKSTEP_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    #[arg(long, env = "LOCKSTEP_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// A JWT of kind worker instead of a client certificate.
    #[arg(long, env = "LOCKSTEP_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

/// The pretend ERP call: a PO number for the instance, or a failure for a blocked supplier.
async fn place_order(task: LeasedTask, work: Duration) -> Result<serde_json::Value, TaskFailure> {
    if task.input["supplier"] == "blocked" {
        return Err(TaskFailure {
            error: "the ERP refuses orders from a blocked supplier".into(),
            retryable: false,
        });
    }
    tokio::time::sleep(work).await;
    let instance = task.lease.instance_id;
    Ok(serde_json::json!({ "data": { "po_number": format!("PO-{instance}") } }))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let identity = Identity::new(&args.worker, ActorKind::Worker, &[]);
    let tls = match &args.tls_ca {
        Some(ca) => {
            match Tls::from_files(ca, args.tls_cert.as_deref().zip(args.tls_key.as_deref())) {
                Ok(tls) => Some(tls),
                Err(e) => {
                    eprintln!("erp-worker: {e}");
                    return std::process::ExitCode::from(2);
                }
            }
        }
        None => None,
    };
    let credentials = Credentials {
        tls,
        token: args.token.clone(),
    };
    let client = match Client::with_credentials(
        &args.endpoints,
        Some(identity),
        Options::default(),
        credentials,
    ) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            eprintln!("erp-worker: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let work = Duration::from_millis(args.work_ms);
    let (max, counter, stopper) = (args.max_tasks, Arc::clone(&done), stop.clone());
    let handler = move |task: LeasedTask| {
        let (counter, stopper) = (Arc::clone(&counter), stopper.clone());
        async move {
            let result = place_order(task, work).await;
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            if max > 0 && n >= max {
                let _ = stopper.send(true);
            }
            result
        }
    };
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("stopping: finishing the tasks in hand");
        let _ = stop.send(true);
    });
    let mut options = WorkerOptions::new("erp");
    options.concurrency = args.concurrency;
    match run(client, options, handler, stopped).await {
        Ok(stats) => {
            println!(
                "erp-worker: completed {}, failed {}, lost {}",
                stats.completed, stats.failed, stats.lost
            );
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("erp-worker: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
