//! A task worker: polls a queue, runs a handler for each leased task with bounded concurrency,
//! heartbeats while the handler runs, completes or fails the task with its lease, and stops
//! gracefully: no new polls; the tasks in hand are finished, or, those still running when
//! [`WorkerOptions::drain`] has passed, handed back with `Tasks/Release` (ready again at once,
//! the attempt not counted).
//!
//! ```no_run
//! # async fn example(client: std::sync::Arc<lockstep_client::Client>) {
//! use lockstep_client::worker::{TaskFailure, WorkerOptions, run};
//! let (stop, stopped) = tokio::sync::watch::channel(false);
//! let stats = run(client, WorkerOptions::new("payments"), |task| async move {
//!     if task.input["amount"].as_u64().unwrap_or(0) > 0 {
//!         Ok(serde_json::json!({"paid": true}))
//!     } else {
//!         Err(TaskFailure { error: "amount is zero".into(), retryable: false })
//!     }
//! }, stopped).await;
//! # drop(stop); let _ = stats;
//! # }
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use lockstep_core::{RefusalCode, Timestamp};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::{Client, Error, LeasedTask, request_id};

/// Most tasks one worker holds at once, whatever its options say.
pub const WORKER_CONCURRENCY_MAX: usize = 256;
/// Most tasks asked for in one poll (the server's limit).
const POLL_BATCH_MAX: u32 = 32;

/// Why a task attempt failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskFailure {
    pub error: String,
    /// False when retrying cannot help: the task's retry policy is treated as exhausted.
    pub retryable: bool,
}

#[derive(Clone, Debug)]
pub struct WorkerOptions {
    pub queue: String,
    /// Most leases held at once (at most [`WORKER_CONCURRENCY_MAX`]).
    pub concurrency: usize,
    /// How long one poll waits for a task.
    pub poll_wait: Duration,
    /// How often a running task's lease is extended; `None` means a third of the lease time.
    pub heartbeat_every: Option<Duration>,
    /// On stopping, how long the tasks in hand may go on; those still running then are
    /// abandoned and released. `None`: wait for every one of them.
    pub drain: Option<Duration>,
}

impl WorkerOptions {
    pub fn new(queue: &str) -> WorkerOptions {
        WorkerOptions {
            queue: queue.into(),
            concurrency: 4,
            poll_wait: Duration::from_secs(10),
            heartbeat_every: None,
            drain: None,
        }
    }
}

/// What a worker did, counted when it stops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkerStats {
    pub completed: u64,
    pub failed: u64,
    /// Tasks whose lease was lost (expired and re-leased): their results were refused.
    pub lost: u64,
    /// Tasks still running when the drain time ran out, handed back with `Tasks/Release`.
    pub released: u64,
}

/// Runs until `shutdown` turns true, then finishes the tasks in hand (releasing those still
/// running after [`WorkerOptions::drain`]) and returns. When polling cannot work at all (the
/// caller is not authenticated or not allowed to poll), it stops the same way and then
/// returns that error.
pub async fn run<H, Fut>(
    client: Arc<Client>,
    options: WorkerOptions,
    handler: H,
    mut shutdown: watch::Receiver<bool>,
) -> Result<WorkerStats, Error>
where
    H: Fn(LeasedTask) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<serde_json::Value, TaskFailure>> + Send + 'static,
{
    let concurrency = options.concurrency.clamp(1, WORKER_CONCURRENCY_MAX);
    let slots = Arc::new(Semaphore::new(concurrency));
    let handler = Arc::new(handler);
    let mut running: JoinSet<Outcome> = JoinSet::new();
    let mut stats = WorkerStats::default();
    // Turned true when the drain time has run out: the tasks still running are released.
    let (release, released) = watch::channel(false);
    // Polling that cannot work (the caller is not authenticated or not allowed): returned
    // once the tasks in hand are finished or released, not by dropping them.
    let mut fatal = None;
    loop {
        while let Some(done) = running.try_join_next() {
            count(&mut stats, done);
        }
        if *shutdown.borrow() {
            break;
        }
        // Wait for a free slot, then ask for as many tasks as there are free slots.
        let first = tokio::select! {
            permit = Arc::clone(&slots).acquire_owned() => permit.expect("semaphore open"),
            _ = shutdown.changed() => continue,
        };
        let free = slots.available_permits() + 1;
        let want = u32::try_from(free)
            .unwrap_or(POLL_BATCH_MAX)
            .min(POLL_BATCH_MAX);
        let tasks = tokio::select! {
            tasks = client.poll_tasks(&options.queue, want, options.poll_wait) => tasks,
            // Stopping abandons the poll: a task it leased comes back when its lease expires.
            _ = shutdown.changed() => continue,
        };
        let tasks = match tasks {
            Ok(t) => t,
            Err(
                e @ (Error::Unauthenticated(_)
                | Error::PermissionDenied(_)
                | Error::InvalidArgument(_)),
            ) => {
                tracing::error!(error = %e, queue = options.queue, "polling cannot work; stopping");
                fatal = Some(e);
                break;
            }
            Err(e) => {
                tracing::warn!(error = %e, queue = options.queue, "poll failed; polling again");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let mut permits = vec![first];
        for task in tasks {
            let permit = match permits.pop() {
                Some(p) => p,
                None => Arc::clone(&slots)
                    .try_acquire_owned()
                    .expect("the server leases no more tasks than asked for"),
            };
            let client = Arc::clone(&client);
            let handler = Arc::clone(&handler);
            let every = options.heartbeat_every;
            let released = released.clone();
            running.spawn(async move {
                let outcome = work(&client, task, &*handler, every, released).await;
                drop(permit);
                outcome
            });
        }
    }
    let drained = async {
        while let Some(done) = running.join_next().await {
            count(&mut stats, done);
        }
    };
    let in_time = match options.drain {
        Some(drain) => tokio::time::timeout(drain, drained).await.is_ok(),
        None => {
            drained.await;
            true
        }
    };
    if !in_time {
        tracing::info!(
            tasks = running.len(),
            "the drain time ran out: releasing the tasks still running"
        );
        let _ = release.send(true);
        while let Some(done) = running.join_next().await {
            count(&mut stats, done);
        }
    }
    match fatal {
        Some(e) => Err(e),
        None => Ok(stats),
    }
}

enum Outcome {
    Completed,
    Failed,
    Lost,
    Released,
}

fn count(stats: &mut WorkerStats, done: Result<Outcome, tokio::task::JoinError>) {
    match done {
        Ok(Outcome::Completed) => stats.completed += 1,
        Ok(Outcome::Failed) => stats.failed += 1,
        Ok(Outcome::Released) => stats.released += 1,
        Ok(Outcome::Lost) | Err(_) => stats.lost += 1,
    }
}

/// Returns once `flag` is true (never, if its sender is dropped first).
async fn until_true(flag: &mut watch::Receiver<bool>) {
    if flag.wait_for(|r| *r).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// How long until the lease expires, by this machine's clock (cluster time is the leader's).
fn lease_left(at: Timestamp) -> Option<Duration> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_micros() as i64;
    u64::try_from(at.as_micros() - now)
        .ok()
        .map(Duration::from_micros)
}

async fn work<H, Fut>(
    client: &Client,
    task: LeasedTask,
    handler: &H,
    heartbeat_every: Option<Duration>,
    mut released: watch::Receiver<bool>,
) -> Outcome
where
    H: Fn(LeasedTask) -> Fut,
    Fut: Future<Output = Result<serde_json::Value, TaskFailure>>,
{
    let lease = task.lease.clone();
    let every = heartbeat_every
        .or_else(|| lease_left(task.lease_expires_at).map(|d| d / 3))
        .unwrap_or(Duration::from_secs(5))
        .max(Duration::from_millis(50));
    let run = handler(task);
    tokio::pin!(run);
    let result = loop {
        tokio::select! {
            result = &mut run => break result,
            () = until_true(&mut released) => {
                // The handler is dropped unfinished; the task goes back to its queue.
                return match client.release_task(&request_id(), &lease).await {
                    Ok(_) => Outcome::Released,
                    Err(e) => {
                        tracing::warn!(task = lease.task_id, error = %e, "the release was not accepted; the task is ready again when its lease expires");
                        Outcome::Lost
                    }
                };
            }
            _ = tokio::time::sleep(every) => {
                match client.heartbeat_task(&request_id(), &lease).await {
                    Ok(_) => {}
                    Err(Error::Refused(r)) if matches!(r.code, RefusalCode::StaleLease | RefusalCode::Forbidden) => {
                        tracing::warn!(task = lease.task_id, reason = %r.message, "lease lost; abandoning the task");
                        return Outcome::Lost;
                    }
                    Err(e) => tracing::warn!(task = lease.task_id, error = %e, "heartbeat failed; will try again"),
                }
            }
        }
    };
    let id = request_id();
    let answer = match &result {
        Ok(value) => client.complete_task(&id, &lease, value).await,
        Err(f) => client.fail_task(&id, &lease, &f.error, f.retryable).await,
    };
    match (answer, result) {
        (Ok(_), Ok(_)) => Outcome::Completed,
        (Ok(_), Err(_)) => Outcome::Failed,
        (Err(e), _) => {
            tracing::warn!(task = lease.task_id, error = %e, "the result was not accepted");
            Outcome::Lost
        }
    }
}
