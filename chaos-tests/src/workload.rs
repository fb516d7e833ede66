//! The workload: client processes that create instances and take transitions on them and read
//! them, workers that lease and complete the instances' tasks, and a change-feed consumer.
//! Every client and worker operation is recorded with its invocation and completion time and
//! an ok / fail / unknown outcome.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lockstep_client::{
    AuditRecord, Client, Error, Instance, InstanceChange, Named, Options, TaskLease, by_key, pb,
    request_id,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{Mutex, watch};

use crate::history::{Op, OpKind, Outcome, tag_payload};
use crate::workflow;

/// Short client timeouts: under faults most unknown outcomes come from here.
pub fn client_options() -> Options {
    Options {
        attempt_timeout: Duration::from_millis(1_500),
        total_timeout: Duration::from_secs(4),
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
        ..Options::default()
    }
}

/// The shared record of operations.
#[derive(Debug)]
pub struct Recorder {
    pub start: Instant,
    next: AtomicU64,
    ops: std::sync::Mutex<Vec<Op>>,
}

impl Recorder {
    pub fn new(start: Instant) -> Recorder {
        Recorder {
            start,
            next: AtomicU64::new(1),
            ops: std::sync::Mutex::new(Vec::new()),
        }
    }

    pub fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    pub fn next_id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    pub fn push(&self, op: Op) {
        self.ops.lock().expect("not poisoned").push(op);
    }

    pub fn ops(&self) -> Vec<Op> {
        let mut ops = self.ops.lock().expect("not poisoned").clone();
        ops.sort_by_key(|o| (o.invoke_us, o.id));
        ops
    }
}

/// Fills an op's outcome from a client result.
fn outcome<T>(op: &mut Op, result: &Result<T, Error>, ok: impl FnOnce(&T, &mut Op)) {
    match result {
        Ok(v) => {
            op.outcome = Outcome::Ok;
            ok(v, op);
        }
        Err(Error::Refused(r)) => {
            op.outcome = Outcome::Fail;
            op.code = Some(r.code.as_str().to_string());
        }
        // Refused by admission control before anything was proposed: it did not happen.
        Err(Error::Overloaded {
            reason, message, ..
        }) => {
            op.outcome = Outcome::Fail;
            op.code = Some(reason.clone());
            op.error = Some(message.clone());
        }
        Err(Error::NotFound(m)) => {
            op.outcome = Outcome::Fail;
            op.code = Some("NOT_FOUND".into());
            op.error = Some(m.clone());
        }
        Err(
            e
            @ (Error::InvalidArgument(_) | Error::Unauthenticated(_) | Error::PermissionDenied(_)),
        ) => {
            op.outcome = Outcome::Fail;
            op.error = Some(e.to_string());
        }
        Err(e) => {
            op.outcome = Outcome::Unknown;
            op.error = Some(e.to_string());
        }
    }
}

fn blank(rec: &Recorder, process: u32, kind: OpKind, key: &str) -> Op {
    let id = rec.next_id();
    Op {
        id,
        process,
        kind,
        key: key.into(),
        transition: None,
        // Heartbeats and failures carry no payload: they are found by the sequence their
        // answer names.
        tag: matches!(kind, OpKind::Create | OpKind::Transition | OpKind::Complete)
            .then(|| format!("p{process}-{id}")),
        task_id: None,
        token: None,
        instance: None,
        invoke_us: rec.now_us(),
        complete_us: 0,
        outcome: Outcome::Unknown,
        state: None,
        version: None,
        seq: None,
        code: None,
        error: None,
    }
}

fn change(c: &InstanceChange, op: &mut Op) {
    op.state = Some(c.state.clone());
    op.version = Some(c.version);
}

/// Keys created so far (including creates of unknown outcome), shared by the clients so that
/// several of them work on the same instances.
#[derive(Debug, Default)]
pub struct Keys(Mutex<Vec<String>>);

impl Keys {
    async fn add(&self, key: String) {
        self.0.lock().await.push(key);
    }

    /// One of the most recent keys.
    async fn pick(&self, rng: &mut StdRng) -> Option<String> {
        let keys = self.0.lock().await;
        if keys.is_empty() {
            return None;
        }
        let recent = keys.len().min(12);
        Some(keys[keys.len() - 1 - rng.random_range(0..recent)].clone())
    }

    pub async fn all(&self) -> Vec<String> {
        self.0.lock().await.clone()
    }
}

/// A client process: one operation at a time until `stop`. Writes and half of the reads go
/// through `client`, which follows the leader; the other half of the reads go to a node picked
/// at random through `readers` (one client per node, pinned to it, as callers behind a load
/// balancer reach any node), so that followers serve linearizable reads too.
pub async fn client(
    process: u32,
    client: Client,
    readers: Vec<Client>,
    rec: Arc<Recorder>,
    keys: Arc<Keys>,
    seed: u64,
    mut stop: watch::Receiver<bool>,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut created = 0;
    while !*stop.borrow() {
        let roll = rng.random_range(0..100);
        let key = keys.pick(&mut rng).await;
        match (roll, key) {
            (0..25, _) | (_, None) => {
                created += 1;
                let key = format!("k{process}-{created}");
                keys.add(key.clone()).await;
                let mut op = blank(&rec, process, OpKind::Create, &key);
                let data = tag_payload(op.tag.as_deref().unwrap_or_default());
                let r = client
                    .create(&request_id(), workflow::NAME, Some(&key), &data)
                    .await;
                op.complete_us = rec.now_us();
                outcome(&mut op, &r, change);
                rec.push(op);
            }
            (25..58, Some(key)) => {
                let name = if roll < 50 { "start" } else { "cancel" };
                let mut op = blank(&rec, process, OpKind::Transition, &key);
                op.transition = Some(name.into());
                let payload = tag_payload(op.tag.as_deref().unwrap_or_default());
                let r = client
                    .transition(
                        &request_id(),
                        by_key(workflow::NAME, &key),
                        name,
                        &payload,
                        None,
                    )
                    .await;
                op.complete_us = rec.now_us();
                outcome(&mut op, &r, change);
                rec.push(op);
            }
            (_, Some(key)) => {
                let mut op = blank(&rec, process, OpKind::Read, &key);
                let via = if !readers.is_empty() && rng.random_bool(0.5) {
                    &readers[rng.random_range(0..readers.len())]
                } else {
                    &client
                };
                let r = via
                    .get(
                        by_key(workflow::NAME, &key),
                        pb::ReadConsistency::Linearizable,
                    )
                    .await;
                op.complete_us = rec.now_us();
                outcome(&mut op, &r, |g, op| {
                    op.state = Some(g.instance.state.clone());
                    op.version = Some(g.instance.version);
                });
                rec.push(op);
            }
        }
        let pause = Duration::from_millis(rng.random_range(10..80));
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => {}
        }
    }
}

/// (id, status) of each task of an instance.
pub fn task_statuses(instance: &Instance) -> Vec<(String, String)> {
    instance
        .tasks
        .iter()
        .map(|t| (t.id.clone(), t.status.name()))
        .collect()
}

/// The identity every worker process acts as.
pub const WORKER_ID: &str = "chaos-workers";

/// What a worker does with one leased task (drawn per task from the worker's seed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plan {
    /// Works past its 2 s lease without a heartbeat: the lease expires, the task is leased
    /// again, and the late heartbeat and completion must be refused.
    Overrun,
    /// Works as long, heartbeating every [`HEARTBEAT_EVERY_MS`]: the lease holds.
    Heartbeat,
    /// Works briefly and reports a retryable failure: a retry timer offers it again.
    Fail,
    /// Works briefly and completes.
    Complete,
}

/// How often a [`Plan::Heartbeat`] worker extends its lease.
const HEARTBEAT_EVERY_MS: u64 = 900;

/// A worker process: leases tasks and, per task, completes it, fails it, heartbeats through
/// long work, or overruns its lease (so that the task is leased again and the late heartbeat
/// and completion must be refused). Every heartbeat, failure and completion is recorded with
/// the token it presented.
pub async fn worker(
    process: u32,
    client: Client,
    rec: Arc<Recorder>,
    seed: u64,
    mut stop: watch::Receiver<bool>,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    while !*stop.borrow() {
        let tasks = tokio::select! {
            t = client.poll_tasks(workflow::QUEUE, 4, Duration::from_millis(800)) => t,
            _ = stop.changed() => break,
        };
        let Ok(tasks) = tasks else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        for task in tasks {
            let lease = task.lease;
            let plan = match rng.random_range(0..16) {
                0 | 1 => Plan::Overrun,
                2 | 3 => Plan::Heartbeat,
                4 | 5 => Plan::Fail,
                _ => Plan::Complete,
            };
            let work = match plan {
                Plan::Overrun | Plan::Heartbeat => rng.random_range(2_200..3_000),
                Plan::Fail | Plan::Complete => rng.random_range(0..300),
            };
            let beat = match plan {
                Plan::Heartbeat => HEARTBEAT_EVERY_MS,
                // The overrunning worker heartbeats once, too late.
                Plan::Overrun => work - 100,
                _ => work,
            };
            let mut done = 0;
            while done < work {
                let step = beat.min(work - done);
                tokio::time::sleep(Duration::from_millis(step)).await;
                done += step;
                if done < work {
                    let mut op = task_op(&rec, process, OpKind::Heartbeat, &lease);
                    let r = client.heartbeat_task(&request_id(), &lease).await;
                    op.complete_us = rec.now_us();
                    outcome(&mut op, &r, |h, op| op.seq = Some(h.audit_seq));
                    rec.push(op);
                }
            }
            if plan == Plan::Fail {
                let mut op = task_op(&rec, process, OpKind::Fail, &lease);
                let r = client
                    .fail_task(&request_id(), &lease, "chaos: a retryable failure", true)
                    .await;
                op.complete_us = rec.now_us();
                outcome(&mut op, &r, |c, op| {
                    change(c, op);
                    op.seq = Some(c.audit_seq);
                });
                rec.push(op);
                continue;
            }
            let mut op = task_op(&rec, process, OpKind::Complete, &lease);
            let result = tag_payload(op.tag.as_deref().unwrap_or_default());
            let r = client.complete_task(&request_id(), &lease, &result).await;
            op.complete_us = rec.now_us();
            outcome(&mut op, &r, change);
            rec.push(op);
        }
    }
}

/// A task operation on `lease`, its token recorded; the key is filled in from the instance id
/// after the run.
fn task_op(rec: &Recorder, process: u32, kind: OpKind, lease: &TaskLease) -> Op {
    let mut op = blank(rec, process, kind, "");
    op.task_id = Some(lease.task_id.clone());
    op.token = Some(crate::history::Token {
        term: lease.token.term,
        attempt: lease.token.attempt,
    });
    op.instance = Some(lease.instance_id.clone());
    op
}

/// A change-feed consumer: follows the feed on one node, and on any error, stall (no record
/// for 2 s while records are expected) or every few seconds anyway, resumes on the next node
/// from `last seq + 1`. Stops when `stop` is set and it has reached `until` (or `stop` has
/// been set for 20 s).
pub async fn consumer(
    clients: Vec<Client>,
    seed: u64,
    received: Arc<std::sync::Mutex<Vec<(u64, String)>>>,
    mut until: watch::Receiver<Option<u64>>,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut node = 0;
    let mut last = 0u64;
    let mut stop_at: Option<Instant> = None;
    loop {
        if let Some(target) = *until.borrow() {
            if last >= target {
                return;
            }
            let at = *stop_at.get_or_insert_with(|| Instant::now() + Duration::from_secs(20));
            if Instant::now() >= at {
                return;
            }
        }
        node = (node + 1) % clients.len();
        let stream =
            tokio::time::timeout(Duration::from_secs(3), clients[node].tail(last + 1, true)).await;
        let Ok(Ok(mut stream)) = stream else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let switch_at = Instant::now() + Duration::from_millis(rng.random_range(1_000..5_000));
        loop {
            let next = tokio::select! {
                m = tokio::time::timeout(Duration::from_secs(2), stream.next()) => m,
                _ = until.changed() => break,
            };
            match next {
                Ok(Ok(Some(r))) => {
                    last = r.global_seq.max(last);
                    received
                        .lock()
                        .expect("not poisoned")
                        .push((r.global_seq, r.hash));
                }
                _ => break,
            }
            if Instant::now() >= switch_at {
                break;
            }
        }
    }
}

/// Runs the final reads: every key, linearizably, through any node.
pub async fn final_reads(
    client: &Client,
    keys: &[String],
) -> anyhow::Result<Vec<(String, Option<Instance>)>> {
    let mut out = Vec::new();
    for key in keys {
        let mut tries = 0;
        loop {
            match client
                .get(
                    by_key(workflow::NAME, key),
                    pb::ReadConsistency::Linearizable,
                )
                .await
            {
                Ok(g) => {
                    out.push((key.clone(), Some(g.instance)));
                    break;
                }
                Err(Error::NotFound(_)) => {
                    out.push((key.clone(), None));
                    break;
                }
                Err(Error::Refused(r)) if r.code.as_str() == "UNKNOWN_INSTANCE" => {
                    out.push((key.clone(), None));
                    break;
                }
                Err(e) if tries < 5 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => anyhow::bail!("final read of {key}: {e}"),
            }
        }
    }
    Ok(out)
}

/// Reads the whole change feed (not following) from one node.
pub async fn read_feed(client: &Client) -> anyhow::Result<Vec<AuditRecord>> {
    let mut out: Vec<AuditRecord> = Vec::new();
    loop {
        let from = out.last().map_or(1, |r| r.global_seq + 1);
        let mut stream = client.tail(from, false).await?;
        let before = out.len();
        while let Some(r) = stream.next().await? {
            out.push(r);
        }
        if out.len() == before {
            return Ok(out);
        }
    }
}
