//! Group commit: concurrent proposals on the leader become one Raft entry.
//!
//! openraft 0.9 appends every `client_write` as its own entry and waits for that entry's
//! fsync inside RaftCore, so one request per entry means one serial leader fsync per request.
//! Here every proposal of the node goes through the batcher's two queues (lanes, below). It
//! takes the first queued proposal, waits for a free in-flight slot (at most
//! [`ENTRIES_IN_FLIGHT_MAX`] entries proposed and not yet applied), and meanwhile lets more
//! proposals queue; then it takes what has queued, up to [`BATCH_REQUESTS_MAX`] requests and [`BATCH_BYTES_MAX`] bytes, and
//! proposes it as one `Body::Batch` entry. A lone proposal is proposed as itself, so a
//! single client pays nothing for batching. Each request keeps its own request id, cluster
//! time (stamped when it was submitted), dedup entry and outcome: apply treats the requests
//! of a batch one after another (`lockstep_raft::apply`) and answers each, and each caller
//! is answered only after its entry is committed and applied.
//!
//! Batches are a log-format-2 command: until the cluster's replicated log format is 2 (the
//! gate in `format_gate.rs`), the batcher proposes each queued request as its own entry.
//!
//! Order: proposals are queued, grouped and proposed in the order they were submitted within
//! their lane, so a leader-only service that submits one proposal after another sees them
//! enter the log in that order.
//!
//! Lanes: the engine's own proposals (timer fires, lease expiries, outbox acknowledgements,
//! the format gate) have a lane of their own, ahead of client writes. A group takes every
//! queued engine proposal before any client write, and an in-flight slot beyond the others is
//! kept for groups that hold engine work ([`ENGINE_RESERVED_SLOTS`]), so an SLA breach never waits
//! behind a backlog of client writes: at most for one entry in flight. Client writes are
//! bounded before they get here (admission control, `admission.rs`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::future::join_all;
use lockstep_raft::{Body, NodeId, Proposal, Response, TypeConfig};
use openraft::Raft;
use openraft::error::ClientWriteError;
use openraft::raft::ClientWriteResponse;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::cluster::{WriteError, other_leader, wall_clock};

/// Most requests in one log entry.
pub const BATCH_REQUESTS_MAX: usize = 512;
/// Most encoded bytes of requests in one log entry (a single larger request goes alone).
pub const BATCH_BYTES_MAX: usize = 1 << 20;
/// Most entries proposed by the batcher and not yet applied. While they are in flight, new
/// proposals queue and become the next entry: the depth of the pipeline behind the leader's
/// serial log fsync.
pub const ENTRIES_IN_FLIGHT_MAX: usize = 4;
/// In-flight slots, beyond [`ENTRIES_IN_FLIGHT_MAX`], that only groups holding engine work
/// may take.
pub const ENGINE_RESERVED_SLOTS: usize = 1;
/// Most proposals queued for the batcher per lane; a submit beyond it waits for room.
pub const QUEUED_MAX: usize = 16_384;

/// Whose proposal it is: the engine's own work goes first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    /// Timer fires, lease expiries, retries, outbox acknowledgements, the format gate.
    Engine,
    /// Writes of API callers (local or forwarded).
    Client,
}

type Answer = Result<Response, WriteError>;

struct Queued {
    proposal: Proposal,
    bytes: usize,
    reply: oneshot::Sender<Answer>,
}

/// The handle of the batcher task. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Batcher {
    engine: mpsc::Sender<Queued>,
    client: mpsc::Sender<Queued>,
    /// Whether the replicated log format allows batches (never goes back: no downgrades).
    batches: Arc<AtomicBool>,
}

/// What one run of the batcher proposed, for metrics and tests.
#[derive(Clone, Copy, Debug, Default)]
pub struct Proposed {
    pub entries: usize,
    pub requests: usize,
}

impl Batcher {
    /// Starts the batcher task for `raft` on node `me`. `on_proposed` hears of every group.
    pub fn start(
        raft: Raft<TypeConfig>,
        me: NodeId,
        on_proposed: impl Fn(Proposed) + Send + Sync + 'static,
    ) -> Batcher {
        let (engine, engine_rx) = mpsc::channel(QUEUED_MAX);
        let (client, client_rx) = mpsc::channel(QUEUED_MAX);
        let batches = Arc::new(AtomicBool::new(false));
        let run = Run {
            raft,
            me,
            batches: Arc::clone(&batches),
            shared: Arc::new(Semaphore::new(ENTRIES_IN_FLIGHT_MAX)),
            reserved: Arc::new(Semaphore::new(ENGINE_RESERVED_SLOTS)),
            on_proposed: Arc::new(on_proposed),
        };
        tokio::spawn(run.run(engine_rx, client_rx));
        Batcher {
            engine,
            client,
            batches,
        }
    }

    /// Allows batches from now on: the replicated log format reads them.
    pub fn allow_batches(&self) {
        self.batches.store(true, Ordering::Release);
    }

    pub fn batches_allowed(&self) -> bool {
        self.batches.load(Ordering::Acquire)
    }

    /// Queues a proposal in its lane; returns once it is queued, with a future of its answer.
    pub async fn submit(
        &self,
        proposal: Proposal,
        lane: Lane,
    ) -> Result<impl Future<Output = Answer> + Send + 'static, WriteError> {
        let bytes = bincode::serialized_size(&proposal)
            .map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
        let (reply, answer) = oneshot::channel();
        let queue = match lane {
            Lane::Engine => &self.engine,
            Lane::Client => &self.client,
        };
        queue
            .send(Queued {
                proposal,
                bytes,
                reply,
            })
            .await
            .map_err(|_| WriteError::Fatal("the write path has stopped".into()))?;
        Ok(async move {
            answer.await.unwrap_or_else(|_| {
                Err(WriteError::Fatal(
                    "Raft stopped before the proposal was answered".into(),
                ))
            })
        })
    }
}

struct Run {
    raft: Raft<TypeConfig>,
    me: NodeId,
    batches: Arc<AtomicBool>,
    /// In-flight slots any group may take.
    shared: Arc<Semaphore>,
    /// In-flight slots for groups holding engine work only.
    reserved: Arc<Semaphore>,
    on_proposed: Arc<dyn Fn(Proposed) + Send + Sync>,
}

/// A group being gathered: engine proposals, then client writes.
#[derive(Default)]
struct Group {
    engine: Vec<Queued>,
    client: Vec<Queued>,
    bytes: usize,
}

impl Group {
    fn len(&self) -> usize {
        self.engine.len() + self.client.len()
    }

    /// Adds `q` unless the group is full; a proposal that would pass the byte bound is
    /// handed back (a lone one goes alone).
    fn add(&mut self, q: Queued, lane: Lane) -> Option<Queued> {
        if self.len() > 0 && self.bytes.saturating_add(q.bytes) > BATCH_BYTES_MAX {
            return Some(q);
        }
        self.bytes = self.bytes.saturating_add(q.bytes);
        match lane {
            Lane::Engine => self.engine.push(q),
            Lane::Client => self.client.push(q),
        }
        None
    }

    /// Takes what has queued in `rx`, up to the bounds; returns a proposal that did not fit.
    fn fill(&mut self, rx: &mut mpsc::Receiver<Queued>, lane: Lane) -> Option<Queued> {
        while self.len() < BATCH_REQUESTS_MAX {
            match rx.try_recv() {
                Ok(q) => {
                    if let Some(back) = self.add(q, lane) {
                        return Some(back);
                    }
                }
                Err(_) => break,
            }
        }
        None
    }

    fn into_queued(self) -> Vec<Queued> {
        let mut all = self.engine;
        all.extend(self.client);
        all
    }
}

impl Run {
    async fn run(self, mut engine: mpsc::Receiver<Queued>, mut client: mpsc::Receiver<Queued>) {
        // A proposal that did not fit in the last group starts the next one.
        let mut carried: Option<(Queued, Lane)> = None;
        let (mut engine_open, mut client_open) = (true, true);
        loop {
            let (first, lane) = match carried.take() {
                Some(c) => c,
                None => tokio::select! {
                    biased;
                    q = engine.recv(), if engine_open => match q {
                        Some(q) => (q, Lane::Engine),
                        None => { engine_open = false; continue; }
                    },
                    q = client.recv(), if client_open => match q {
                        Some(q) => (q, Lane::Client),
                        None => { client_open = false; continue; }
                    },
                    else => return,
                },
            };
            let mut group = Group::default();
            let _ = group.add(first, lane);
            // Proposals queue while every slot is taken: that wait is what makes batches.
            // Engine work may also take a reserved slot, and engine work that arrives while
            // a client group waits lets that group take one.
            let permit = loop {
                let has_engine = !group.engine.is_empty();
                tokio::select! {
                    biased;
                    p = Arc::clone(&self.reserved).acquire_owned(), if has_engine => break p,
                    p = Arc::clone(&self.shared).acquire_owned() => break p,
                    q = engine.recv(), if !has_engine && engine_open => match q {
                        Some(q) => {
                            if let Some(back) = group.add(q, Lane::Engine) {
                                carried = Some((back, Lane::Engine));
                                // The group cannot take it: wait for a shared slot.
                                break Arc::clone(&self.shared).acquire_owned().await;
                            }
                        }
                        None => engine_open = false,
                    },
                }
            };
            let Ok(permit) = permit else {
                return;
            };
            if carried.is_none() {
                carried = group
                    .fill(&mut engine, Lane::Engine)
                    .map(|q| (q, Lane::Engine));
            }
            if carried.is_none() {
                carried = group
                    .fill(&mut client, Lane::Client)
                    .map(|q| (q, Lane::Client));
            }
            self.propose(group.into_queued(), permit).await;
        }
    }

    async fn propose(&self, group: Vec<Queued>, permit: OwnedSemaphorePermit) {
        let batch = group.len() > 1 && self.batches.load(Ordering::Acquire);
        (self.on_proposed)(Proposed {
            entries: if batch { 1 } else { group.len() },
            requests: group.len(),
        });
        let me = self.me;
        if batch {
            let (proposals, replies): (Vec<Proposal>, Vec<oneshot::Sender<Answer>>) =
                group.into_iter().map(|q| (q.proposal, q.reply)).unzip();
            let entry = Proposal {
                request_id: None,
                at: wall_clock(),
                body: Body::Batch(proposals),
            };
            match self.raft.client_write_ff(entry).await {
                Ok(answer) => {
                    tokio::spawn(async move {
                        let answers = split(me, answer.await, replies.len());
                        for (reply, answer) in replies.into_iter().zip(answers) {
                            let _ = reply.send(answer);
                        }
                        drop(permit);
                    });
                }
                Err(e) => {
                    for reply in replies {
                        let _ = reply.send(Err(WriteError::Fatal(e.to_string())));
                    }
                }
            }
            return;
        }
        let mut pending = Vec::with_capacity(group.len());
        for q in group {
            match self.raft.client_write_ff(q.proposal).await {
                Ok(answer) => pending.push((answer, q.reply)),
                Err(e) => {
                    let _ = q.reply.send(Err(WriteError::Fatal(e.to_string())));
                }
            }
        }
        tokio::spawn(async move {
            let answers = join_all(pending.into_iter().map(|(answer, reply)| async move {
                let _ = reply.send(one(me, answer.await));
            }));
            answers.await;
            drop(permit);
        });
    }
}

type RaftAnswer = Result<
    Result<ClientWriteResponse<TypeConfig>, ClientWriteError<NodeId, lockstep_raft::Member>>,
    oneshot::error::RecvError,
>;

/// The answer of one proposed entry as the write path's result.
fn one(me: NodeId, answer: RaftAnswer) -> Answer {
    match answer {
        Ok(Ok(reply)) => Ok(reply.data),
        Ok(Err(ClientWriteError::ForwardToLeader(f))) => {
            let leader = other_leader(me, f.leader_id, f.leader_node.map(|n| n.addr));
            Err(WriteError::NotLeader {
                leader_id: leader.as_ref().map(|l| l.0),
                leader_addr: leader.map(|l| l.1),
            })
        }
        Ok(Err(ClientWriteError::ChangeMembershipError(e))) => {
            Err(WriteError::Invalid(e.to_string()))
        }
        Err(_) => Err(WriteError::Fatal(
            "Raft stopped before the proposal was answered".into(),
        )),
    }
}

/// The answers of a batch entry, one per request; an entry that did not commit here (a lost
/// leadership) answers every request with the same error, which its caller retries with the
/// same request id.
fn split(me: NodeId, answer: RaftAnswer, requests: usize) -> Vec<Answer> {
    match one(me, answer) {
        Ok(Response::Batch(responses)) if responses.len() == requests => {
            responses.into_iter().map(Ok).collect()
        }
        Ok(other) => {
            let message = format!(
                "a batch of {requests} requests was answered with {other:?}; this is a bug"
            );
            vec![Err(WriteError::Fatal(message)); requests]
        }
        Err(e) => vec![Err(e); requests],
    }
}
