//! The `Tasks` service: workers long-poll a queue, lease tasks through the log, heartbeat,
//! complete, fail or release them with their fenced lease token (DESIGN §6).
//!
//! A poll reads the queue's ready-task index from this node's replica and proposes one
//! `Lease` per candidate, up to the tasks it may take at once (so they share a Raft entry),
//! skipping tasks another poll on this node is leasing (`polls::LeaseClaims`); apply grants
//! a lease only if the task is still ready, so two workers polling different nodes never
//! hold the same task. A waiting poll looks again when an apply on its node made a task
//! ready (`Applied::readied_task`), or every 250 ms. The token is (Raft term of the lease
//! entry, attempt): after a lease expires and the task is leased again, the old token is
//! refused with `STALE_LEASE`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lockstep_core::engine::LeaseToken;
use lockstep_core::{Actor, ActorKind};
use lockstep_proto::v1 as pb;
use lockstep_raft::format::LOG_FORMAT_RELEASE;
use lockstep_raft::{Body, Response as Applied, Target, TaskOp, read};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use crate::api::{Api, change, json};
use crate::cluster::wall_clock;
use crate::status;

pub use crate::polls::{POLL_TASKS_MAX, POLLS_MAX, POLLS_PER_QUEUE_MAX, POLLS_PER_WORKER_MAX};

/// Longest a poll may wait for a task.
pub const POLL_WAIT_MAX_MS: u32 = 30_000;
/// Longest a waiting poll goes without looking at its queue again, should a wake-up be missed.
const POLL_RECHECK: Duration = Duration::from_millis(250);
/// Largest error text a failing worker may attach.
pub const TASK_ERROR_BYTES_MAX: usize = 4096;

/// Ready tasks a poll looks at per task it may lease (the oldest first).
const LEASE_WINDOW: usize = 16;

/// A stable hash of a worker's id: workers polling at once start at different places.
fn spread(worker: &str) -> usize {
    use std::hash::{Hash, Hasher};
    // SipHash with fixed keys: the same worker starts at the same place on every node.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    worker.hash(&mut h);
    h.finish() as usize
}

/// Makes request ids for the leases a poll proposes (unique per node and process).
static LEASE_SEQ: AtomicU64 = AtomicU64::new(0);

fn lease_request_id(node: u64, task_id: &str) -> String {
    format!(
        "lease:{node}:{}:{}:{task_id}",
        wall_clock().as_micros(),
        LEASE_SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

impl Api {
    /// The calling worker: an authenticated actor of kind `worker`.
    fn worker(&self, extensions: &tonic::Extensions) -> Result<Actor, Status> {
        let actor = self.actor(extensions)?;
        if actor.kind != ActorKind::Worker {
            return Err(Status::permission_denied(format!(
                "actor `{}` is a {} but only workers take tasks: authenticate as an actor of kind worker (in development mode, x-lockstep-actor-kind: worker)",
                actor.id,
                actor.kind.as_str()
            )));
        }
        Ok(actor)
    }

    /// Leases up to `max` ready tasks of `queue`; returns (instance id, task id) of each, the
    /// last lease's audit sequence, and the leader's address when this node forwarded them.
    async fn lease_ready(
        &self,
        metadata: &MetadataMap,
        queue: &str,
        worker: &Actor,
        max: usize,
    ) -> Result<(Vec<(String, String)>, u64, Option<String>), Status> {
        let mut candidates = read::ready_tasks(&*self.node.store, queue, max * LEASE_WINDOW)
            .map_err(status::store_error)?;
        // Workers polling at once try different tasks first, so they rarely propose leases
        // for the same task (only one of which can win): one of as many of the oldest as
        // there are polls in flight on this node, varying from poll to poll; then the rest
        // oldest first. A lone worker takes the oldest task.
        let contenders = self.polls.serving().max(1);
        let places = contenders.min(candidates.len());
        if places > 1 {
            let turn = LEASE_SEQ.load(Ordering::Relaxed) as usize;
            let first = candidates.remove(spread(&worker.id).wrapping_add(turn) % places);
            candidates.insert(0, first);
        }
        let mut leased = Vec::new();
        let mut last_seq = 0;
        let mut leader = None;
        let mut candidates = candidates.into_iter();
        while leased.len() < max {
            // The next tasks no other poll on this node is leasing, proposed together so
            // that their leases share a Raft entry.
            let round: Vec<_> = candidates
                .by_ref()
                .filter_map(|(task_id, instance_id)| {
                    let claim = self.lease_claims.claim(&task_id)?;
                    Some((task_id, instance_id, claim))
                })
                .take(max - leased.len())
                .collect();
            if round.is_empty() {
                break;
            }
            let answers =
                futures::future::join_all(round.iter().map(|(task_id, instance_id, _)| {
                    let body = Body::Task {
                        instance_id: instance_id.clone(),
                        task_id: task_id.clone(),
                        op: TaskOp::Lease {
                            worker: worker.clone(),
                        },
                    };
                    let request_id = lease_request_id(self.node.id, task_id);
                    async move { self.write(metadata, &request_id, body).await }
                }))
                .await;
            let mut at_limit = None;
            for ((task_id, instance_id, _claim), answer) in round.into_iter().zip(answers) {
                let answer = answer?;
                leader = leader.or(answer.forwarded_to);
                match answer.applied {
                    Applied::Applied { global_seq, .. } => {
                        last_seq = last_seq.max(global_seq);
                        leased.push((instance_id, task_id));
                    }
                    // The worker holds as many leases as it may: stop here, or say so.
                    Applied::Refused(r) if r.code == lockstep_core::RefusalCode::LimitExceeded => {
                        at_limit = Some(r);
                    }
                    // Another worker got it first, or the instance moved on: try the next.
                    Applied::Refused(_) => {}
                    other => {
                        return Err(Status::internal(format!("unexpected response {other:?}")));
                    }
                }
            }
            if let Some(r) = at_limit {
                if leased.is_empty() {
                    return Err(status::refusal(&r));
                }
                break;
            }
        }
        Ok((leased, last_seq, leader))
    }

    /// Reads leased tasks back once this node has applied the lease writes (up to audit
    /// record `seq`): a follower that forwarded them waits for its own apply, without a
    /// second quorum round; the leader applied them before it answered.
    async fn leased_view(
        &self,
        leased: &[(String, String)],
        seq: u64,
    ) -> Result<Vec<pb::LeasedTask>, Status> {
        if leased.is_empty() {
            return Ok(Vec::new());
        }
        self.node
            .wait_for_audit_seq(seq)
            .await
            .map_err(status::write_error)?;
        let mut out = Vec::with_capacity(leased.len());
        for (instance_id, task_id) in leased {
            let instance = self.load(&Target::Id(instance_id.clone()))?;
            let Some(task) = instance.tasks.get(task_id) else {
                continue;
            };
            let Some(token) = task.lease else { continue };
            let traceparent = read::task_trace(&*self.node.store, instance_id, task_id)
                .map_err(status::store_error)?
                .unwrap_or_default();
            if !traceparent.is_empty() {
                // The hand-over, in the trace of the change that created the task.
                let span = tracing::info_span!("task.lease", task = %task_id, queue = %task.queue, worker = %task.worker.as_deref().unwrap_or_default());
                lockstep_raft::trace::continue_in(&span, &traceparent);
                drop(span);
            }
            out.push(pb::LeasedTask {
                lease: Some(pb::TaskLease {
                    instance_id: instance_id.clone(),
                    task_id: task_id.clone(),
                    token: Some(token_pb(token)),
                }),
                workflow: instance.workflow.clone(),
                queue: task.queue.clone(),
                task_type: task.task_type.clone(),
                input_json: task.input.to_string(),
                lease_expires_at: task
                    .lease_expires_at
                    .map(|t| t.to_string())
                    .unwrap_or_default(),
                origin: task.origin.clone(),
                traceparent,
            });
        }
        Ok(out)
    }
}

fn token_pb(t: LeaseToken) -> pb::LeaseToken {
    pb::LeaseToken {
        term: t.term,
        attempt: t.attempt,
    }
}

/// The (instance id, task id, token) of a lease in a request.
fn lease_of(lease: Option<pb::TaskLease>) -> Result<(String, String, LeaseToken), Status> {
    let lease = lease.ok_or_else(|| {
        status::bad_request("lease is missing: pass the lease exactly as Poll returned it")
    })?;
    let token = lease.token.ok_or_else(|| {
        status::bad_request("lease.token is missing: pass the lease exactly as Poll returned it")
    })?;
    if lease.instance_id.is_empty() || lease.task_id.is_empty() {
        return Err(status::bad_request(
            "lease.instance_id and lease.task_id must both be set",
        ));
    }
    Ok((
        lease.instance_id,
        lease.task_id,
        LeaseToken {
            term: token.term,
            attempt: token.attempt,
        },
    ))
}

#[tonic::async_trait]
impl pb::tasks_server::Tasks for Api {
    async fn poll(
        &self,
        request: Request<pb::PollTasksRequest>,
    ) -> Result<Response<pb::PollTasksResponse>, Status> {
        let worker = self.worker(request.extensions())?;
        let (metadata, _, req) = request.into_parts();
        if req.queue.is_empty() {
            return Err(status::bad_request(
                "queue is empty: name the queue to poll",
            ));
        }
        if req.max_tasks > POLL_TASKS_MAX {
            return Err(status::bad_request(format!(
                "max_tasks {} is more than {POLL_TASKS_MAX}: poll again for more",
                req.max_tasks
            )));
        }
        if req.wait_ms > POLL_WAIT_MAX_MS {
            return Err(status::bad_request(format!(
                "wait_ms {} is more than {POLL_WAIT_MAX_MS}: poll again after an empty answer",
                req.wait_ms
            )));
        }
        let max = req.max_tasks.max(1) as usize;
        self.node
            .take_quota(&worker, crate::quota::Kind::Polls)
            .map_err(status::write_error)?;
        let _place = self
            .polls
            .enter(&req.queue, &worker.id)
            .map_err(|message| {
                self.node.metrics.observe_overloaded("polls");
                status::overloaded(status::OVERLOADED, message.to_string(), 100, None)
            })?;
        let deadline = Instant::now() + Duration::from_millis(u64::from(req.wait_ms));
        loop {
            // Register for apply's wake-up (a task became ready on this node) before
            // looking, so none is missed.
            let ready = self.node.tasks_ready.notified();
            self.node.metrics.observe_poll_look();
            let (leased, seq, leader) = self
                .lease_ready(&metadata, &req.queue, &worker, max)
                .await?;
            if !leased.is_empty() {
                let tasks = self.leased_view(&leased, seq).await?;
                let answer = Ok(Response::new(pb::PollTasksResponse { tasks }));
                return crate::leader_hint::name_leader(leader.as_deref(), answer);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Response::new(pb::PollTasksResponse { tasks: Vec::new() }));
            }
            tokio::select! {
                _ = ready => {}
                _ = tokio::time::sleep(POLL_RECHECK.min(deadline - now)) => {}
            }
        }
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatTaskRequest>,
    ) -> Result<Response<pb::HeartbeatTaskResponse>, Status> {
        let worker = self.worker(request.extensions())?;
        let (metadata, _, req) = request.into_parts();
        let (instance_id, task_id, token) = lease_of(req.lease)?;
        let body = Body::Task {
            instance_id: instance_id.clone(),
            task_id: task_id.clone(),
            op: TaskOp::Heartbeat { token, worker },
        };
        let answer = self.write(&metadata, &req.request_id, body).await?;
        let reply = match answer.applied {
            Applied::Applied { global_seq, .. } => {
                let view = self
                    .leased_view(&[(instance_id, task_id)], global_seq)
                    .await?;
                Ok(Response::new(pb::HeartbeatTaskResponse {
                    lease_expires_at: view
                        .into_iter()
                        .next()
                        .map(|t| t.lease_expires_at)
                        .unwrap_or_default(),
                    audit_seq: global_seq,
                }))
            }
            Applied::Refused(r) => Err(status::refusal(&r)),
            other => Err(Status::internal(format!("unexpected response {other:?}"))),
        };
        crate::leader_hint::name_leader(answer.forwarded_to.as_deref(), reply)
    }

    async fn complete(
        &self,
        request: Request<pb::CompleteTaskRequest>,
    ) -> Result<Response<pb::InstanceChange>, Status> {
        let worker = self.worker(request.extensions())?;
        let (metadata, _, req) = request.into_parts();
        let (instance_id, task_id, token) = lease_of(req.lease)?;
        let result = json(&req.result_json, "result_json")?;
        let body = Body::Task {
            instance_id,
            task_id,
            op: TaskOp::Complete {
                token,
                result,
                worker,
            },
        };
        self.write(&metadata, &req.request_id, body)
            .await?
            .respond(change)
    }

    async fn fail(
        &self,
        request: Request<pb::FailTaskRequest>,
    ) -> Result<Response<pb::InstanceChange>, Status> {
        let worker = self.worker(request.extensions())?;
        let (metadata, _, req) = request.into_parts();
        let (instance_id, task_id, token) = lease_of(req.lease)?;
        if req.error.len() > TASK_ERROR_BYTES_MAX {
            return Err(status::bad_request(format!(
                "error is {} bytes, more than {TASK_ERROR_BYTES_MAX}: send a summary",
                req.error.len()
            )));
        }
        let body = Body::Task {
            instance_id,
            task_id,
            op: TaskOp::Fail {
                token,
                error: req.error,
                retryable: req.retryable,
                worker,
            },
        };
        self.write(&metadata, &req.request_id, body)
            .await?
            .respond(change)
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseTaskRequest>,
    ) -> Result<Response<pb::InstanceChange>, Status> {
        let worker = self.worker(request.extensions())?;
        let (metadata, _, req) = request.into_parts();
        let (instance_id, task_id, token) = lease_of(req.lease)?;
        // A member of an older build could not decode the entry: refuse until the format
        // gate has raised the log to a format every member reads.
        self.require_format(
            LOG_FORMAT_RELEASE,
            "Tasks/Release",
            "upgrade every member, or let the lease expire (the task is ready again after its timeout)",
        )?;
        let body = Body::Task {
            instance_id,
            task_id,
            op: TaskOp::Release { token, worker },
        };
        self.write(&metadata, &req.request_id, body)
            .await?
            .respond(change)
    }

    async fn resolve_incident(
        &self,
        request: Request<pb::ResolveIncidentRequest>,
    ) -> Result<Response<pb::InstanceChange>, Status> {
        let actor = self.actor(request.extensions())?;
        let (metadata, _, req) = request.into_parts();
        let instance_id = match self.resolve(req.instance)? {
            Target::Id(id) => id,
            target @ Target::Key { .. } => self.load(&target)?.id,
        };
        if req.incident_id.is_empty() {
            return Err(status::bad_request(
                "incident_id is empty: see the instance's incidents with `lockstep get`",
            ));
        }
        let body = Body::ResolveIncident {
            instance_id,
            incident_id: req.incident_id,
            retry_task: req.retry_task,
            actor,
        };
        self.write(&metadata, &req.request_id, body)
            .await?
            .respond(change)
    }
}
