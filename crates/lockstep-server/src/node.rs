//! One Lockstep node: the Raft instance on RocksDB, the write path and linearizable reads.
//!
//! Writes: a node that is the leader stamps cluster time with its wall clock and proposes;
//! apply makes the time monotonic across leaders. A follower forwards the request (with the
//! client's request id) to the leader over the internal service and returns the leader's
//! answer. `ForwardToLeader` does not mean the write failed: it may still commit, so every
//! retry reuses the request id and the state machine deduplicates.
//!
//! Reads: linearizable by default. The leader confirms its leadership with a quorum (read
//! index); a follower asks the leader for that index and waits until it has applied it. A
//! stale read is served from the local replica as it is, and marked stale.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lockstep_proto::v1::internal::RaftMessage;
use lockstep_proto::v1::internal::raft_client::RaftClient;
use lockstep_raft::log_store::LogStore;
use lockstep_raft::state_machine::{ApplyHook, StateMachine};
use lockstep_raft::{Body, Member, NodeId, Proposal, Response, TypeConfig};
use lockstep_store::{RocksOptions, RocksStore};
use openraft::error::{ChangeMembershipError, ClientWriteError, Fatal, InitializeError, RaftError};
use openraft::{ChangeMembers, Raft, ServerState, SnapshotPolicy};
use tokio::sync::Mutex;
use tonic::transport::Channel;

use crate::cluster::batcher::{Batcher, Lane};
use crate::cluster::read_index::SharedReadIndex;
use crate::cluster::{
    ForwardReply, ForwardRequest, NO_LEADER_BACKOFF, WRITE_DEADLINE, WriteError, Written,
    other_leader, wall_clock,
};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::network::{Network, PeerConnector};
use crate::wire;

impl From<crate::admission::Overloaded> for WriteError {
    fn from(o: crate::admission::Overloaded) -> WriteError {
        let retry_after_ms = millis(o.retry_after);
        WriteError::Overloaded {
            message: format!(
                "this node is at its limit of {} client writes in flight and took nothing on; retry after {retry_after_ms} ms with the same request id (the limit follows commit latency: see lockstep_admission_limit)",
                o.limit
            ),
            retry_after_ms,
        }
    }
}

pub struct Node {
    pub id: NodeId,
    pub config: Config,
    pub raft: Raft<TypeConfig>,
    pub store: Arc<RocksStore>,
    /// What this node records for `GET /metrics`.
    pub metrics: Arc<Metrics>,
    connector: PeerConnector,
    leaders: Mutex<HashMap<String, RaftClient<Channel>>>,
    /// Woken (every waiter) when an apply on this node made a task ready, so long polls
    /// answer at once.
    pub tasks_ready: Arc<tokio::sync::Notify>,
    /// TLS material, client authentication and the cluster policy.
    pub trust: Arc<crate::trust::Trust>,
    /// Refused attempts seen by this node (bounded).
    pub security: Arc<crate::security_log::SecurityLog>,
    /// Group commit: every proposal of this node goes through it (`cluster/batcher.rs`).
    pub batcher: Batcher,
    /// Concurrent linearizable reads share quorum rounds (`cluster/read_index.rs`).
    pub read_index: SharedReadIndex<WriteError>,
    /// On a follower, concurrent linearizable reads share one forwarded read-index request
    /// to the leader, by the same rule: a read waits for a request sent after it arrived.
    pub forwarded_reads: SharedReadIndex<WriteError>,
    /// The adaptive limit on client writes in flight on this node (`admission.rs`).
    pub admission: crate::admission::Admission,
    /// Places for linearizable reads waiting for a read index (`--reads-in-flight-max`).
    reads_in_flight: tokio::sync::Semaphore,
    /// The token buckets of the policy's quotas (`quota.rs`).
    pub quotas: crate::quota::QuotaBuckets,
    /// Peers' clock offsets and whether this node may lead (`clock.rs`).
    pub clock: crate::clock::ClockMonitor,
    /// Whether this node is short of disk space and refuses client writes (`space.rs`).
    pub space: Arc<crate::space::SpaceAlarm>,
    /// The webhook allow-list, secrets and bounds (`--webhooks`, `webhook_http.rs`).
    pub webhooks: Arc<crate::webhook_http::WebhookSettings>,
}

/// The voters of `raft`'s membership (`None` before it has one).
fn voters_of(raft: &Raft<TypeConfig>) -> Option<BTreeSet<NodeId>> {
    let metrics = raft.metrics().borrow().clone();
    let voters: BTreeSet<NodeId> = metrics.membership_config.membership().voter_ids().collect();
    (!voters.is_empty()).then_some(voters)
}

/// The leader `raft` knows of, if any, with its address.
fn leader_of(raft: &Raft<TypeConfig>) -> (Option<NodeId>, Option<String>) {
    let metrics = raft.metrics().borrow().clone();
    let id = metrics.current_leader;
    let addr = id.and_then(|id| {
        metrics
            .membership_config
            .membership()
            .get_node(&id)
            .map(|m| m.addr.clone())
    });
    (id, addr)
}

/// Sends `request` from node `from` to the leader at `addr` through `client`.
async fn send_forward(
    mut client: RaftClient<Channel>,
    from: NodeId,
    addr: &str,
    request: ForwardRequest,
) -> Result<ForwardReply, WriteError> {
    let mut msg = tonic::Request::new(RaftMessage {
        payload: wire::encode(&request),
        from_node: from,
    });
    msg.set_timeout(WRITE_DEADLINE);
    // The caller's trace goes on on the leader (`telemetry.rs`).
    crate::telemetry::add_to(&mut msg);
    match client.forward(msg).await {
        Ok(reply) => wire::decode::<Result<ForwardReply, WriteError>>(&reply.into_inner().payload)
            .map_err(|e| WriteError::Fatal(e.message().to_string()))?,
        // The peer could not decode the request: a build that does not know it.
        Err(status) if status.code() == tonic::Code::InvalidArgument => {
            Err(WriteError::Invalid(status.message().to_string()))
        }
        Err(status) => {
            tracing::debug!(%addr, %status, "forwarding failed");
            Err(WriteError::Timeout(WRITE_DEADLINE))
        }
    }
}

/// Why a node did not start. `lockstepd` reports it and exits; a corrupt store
/// ([`lockstep_store::Error::Corruption`] in [`StartError::Store`]) is marked so that the
/// node stays out until it is re-seeded.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Certificates, keys or the policy. Shown as its message alone, without the chain of
    /// sources, which the message already includes.
    #[error("{0}")]
    Trust(crate::trust::TrustSetupError),
    /// The data directory belongs to another node or cluster, or cannot be written. Shown
    /// as its message alone, like [`StartError::Trust`].
    #[error("{0}")]
    DataDir(crate::config::ConfigError),
    /// Opening the store or reading its applied state.
    #[error(transparent)]
    Store(#[from] lockstep_store::Error),
    /// The webhook settings file (`--webhooks`).
    #[error(transparent)]
    Webhooks(#[from] crate::webhook_http::WebhookSettingsError),
    #[error(transparent)]
    RaftConfig(#[from] openraft::ConfigError),
    /// Raft stopped while starting (boxed: openraft's errors are large).
    #[error(transparent)]
    Raft(Box<Fatal<NodeId>>),
    /// Bootstrapping the cluster failed for another reason than that it was initialized.
    #[error(transparent)]
    Bootstrap(Box<RaftError<NodeId, InitializeError<NodeId, Member>>>),
}

impl From<Fatal<NodeId>> for StartError {
    fn from(e: Fatal<NodeId>) -> StartError {
        StartError::Raft(Box::new(e))
    }
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("id", &self.id).finish()
    }
}

impl Node {
    /// Opens the store and starts Raft. Bootstraps the cluster if this node has the lowest
    /// initial member id and its store has never been initialized. Every apply is told to
    /// `leader_services` (started by the binary once the node is up, see [`crate::leader`]).
    pub async fn start(
        config: Config,
        leader_services: Arc<crate::leader::LeaderServices>,
    ) -> Result<Arc<Node>, StartError> {
        // Certificates, keys and the policy are checked before any state is touched.
        let trust = crate::trust::Trust::load(&config).map_err(StartError::Trust)?;
        let webhooks = crate::webhook_http::WebhookSettings::load(config.webhooks.as_deref())?;
        crate::config::check_identity(&config).map_err(StartError::DataDir)?;
        let store = Arc::new(RocksStore::open(
            &config.store_dir(),
            &RocksOptions::default(),
        )?);
        // Where apply stopped before this start: after a process crash, exactly the last
        // entry applied (apply's buffered writes are in RocksDB's log, which outlives the
        // process); after a power cut, a prefix, and openraft re-applies the rest from the
        // synced Raft log.
        let (applied, _) = lockstep_raft::state_machine::applied_state(&*store)?;
        tracing::info!(
            applied_index = applied.map(|l| l.index).unwrap_or(0),
            "store opened"
        );
        let raft_config = openraft::Config {
            cluster_name: "lockstep".into(),
            heartbeat_interval: config.heartbeat_ms,
            election_timeout_min: config.election_timeout_ms,
            election_timeout_max: config.election_timeout_ms * 2,
            // `snapshot_policy.rs` decides, by log bytes and time rather than entries.
            snapshot_policy: SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: config.logs_to_keep,
            snapshot_max_chunk_size: 1 << 20,
            install_snapshot_timeout: 2_000,
            ..Default::default()
        };
        let raft_config = Arc::new(raft_config.validate()?);
        let connector = PeerConnector {
            connect_timeout: Duration::from_millis(500),
            via: config.peer_via.clone(),
            tls: trust.client_tls(),
        };
        let network = Network {
            my_id: config.id,
            connector: connector.clone(),
        };
        let metrics = Arc::new(Metrics::new());
        let apply_metrics = Arc::clone(&metrics);
        let tasks_ready = Arc::new(tokio::sync::Notify::new());
        let wake_polls = Arc::clone(&tasks_ready);
        let log_store = LogStore::new(Arc::clone(&store));
        let appended_bytes = log_store.appended_bytes();
        let raft = Raft::new(
            config.id,
            raft_config,
            network,
            log_store,
            StateMachine::open(Arc::clone(&store), config.snapshot_dir())?.with_apply_hook(
                ApplyHook::new(move |applied| {
                    apply_metrics.observe_apply(applied.entries);
                    // Leader services wake only for work an apply gave them, not on every
                    // change of the Raft metrics (each replication response is one).
                    leader_services.applied(&applied);
                    // Polls wait for a ready task on every node, not for every apply.
                    if applied.readied_task {
                        wake_polls.notify_waiters();
                    }
                }),
            ),
        )
        .await
        // A corrupt block met while openraft reads its state back (the log, the vote, a
        // re-apply) is a corrupt store, for lockstepd to refuse to start on.
        .map_err(|e| match store.corruption() {
            Some(found) => StartError::Store(lockstep_store::Error::Corruption(found.into())),
            None => e.into(),
        })?;
        let proposed_metrics = Arc::clone(&metrics);
        let batcher = Batcher::start(raft.clone(), config.id, move |p| {
            proposed_metrics.observe_proposed(p.entries, p.requests)
        });
        let admission = crate::admission::Admission::new(config.admission);
        let reads_in_flight = tokio::sync::Semaphore::new(config.admission.reads_max);
        let mut clock_settings = config.clock;
        if lockstep_raft::mutation::is(lockstep_raft::mutation::Mutation::ClockGuardOff) {
            // The bug: the guard measures and warns, and holds nothing back.
            clock_settings.guard = false;
        }
        let clock = crate::clock::ClockMonitor::new(
            clock_settings,
            config.id,
            &voters_of(&raft).unwrap_or_else(|| config.initial_members.keys().copied().collect()),
        );
        let space = config.space;
        let node = Arc::new(Node {
            id: config.id,
            config,
            raft,
            store,
            metrics,
            connector,
            leaders: Mutex::new(HashMap::new()),
            tasks_ready,
            trust: Arc::new(trust),
            security: Arc::default(),
            batcher,
            read_index: Default::default(),
            forwarded_reads: Default::default(),
            admission,
            reads_in_flight,
            quotas: Default::default(),
            clock,
            space: Arc::new(crate::space::SpaceAlarm::new(space)),
            webhooks: Arc::new(webhooks),
        });
        // Until its clock is judged, a node of a larger cluster neither campaigns nor sends
        // heartbeats (`guard_clock`).
        if node.clock.settings.guard && !node.clock.may_stamp() {
            node.raft.runtime_config().elect(false);
            node.raft.runtime_config().heartbeat(false);
        }
        tokio::spawn(Arc::clone(&node).guard_clock());
        node.bootstrap_if_first().await?;
        tokio::spawn(crate::snapshot_policy::run(
            node.raft.clone(),
            appended_bytes,
            node.config.snapshots,
            Arc::clone(&node.metrics),
        ));
        Ok(node)
    }

    async fn bootstrap_if_first(&self) -> Result<(), StartError> {
        let lowest = *self
            .config
            .initial_members
            .keys()
            .next()
            .expect("config checks members are not empty");
        if lowest != self.id || self.raft.is_initialized().await? {
            return Ok(());
        }
        let members: BTreeMap<NodeId, Member> = self
            .config
            .initial_members
            .iter()
            .map(|(id, addr)| (*id, Member { addr: addr.clone() }))
            .collect();
        tracing::info!(?members, "bootstrapping a new cluster");
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            // Another start already initialized it: not an error.
            Err(RaftError::APIError(e)) => {
                tracing::info!(error = %e, "cluster already initialized");
                Ok(())
            }
            Err(e) => Err(StartError::Bootstrap(Box::new(e))),
        }
    }

    /// The clock offset guard's loop (`clock.rs`): asks every other member for its wall clock,
    /// judges this node's standing, and lets it campaign, send heartbeats as leader, and
    /// stamp proposals only while it is `Within`.
    async fn guard_clock(self: Arc<Self>) {
        let mut allowed = self.clock.may_stamp();
        loop {
            let peers: Vec<(NodeId, String)> = self
                .members()
                .into_iter()
                .filter(|(id, _, _)| *id != self.id)
                .map(|(id, addr, _)| (id, addr))
                .collect();
            let node: &Node = &self;
            let pings = peers.iter().map(|(id, addr)| async move {
                let sent = Instant::now();
                let sent_wall = wall_clock().as_micros();
                let answer = tokio::time::timeout(
                    crate::clock::PING_TIMEOUT,
                    node.forward(addr, ForwardRequest::Clock),
                )
                .await;
                match answer {
                    Ok(Ok(ForwardReply::Clock(peer_wall))) => Some((
                        *id,
                        crate::clock::Sample::of_ping(
                            sent_wall,
                            peer_wall,
                            sent.elapsed(),
                            Instant::now(),
                        ),
                    )),
                    // Unreachable, slow, or a build that cannot tell its clock.
                    _ => None,
                }
            });
            for (peer, sample) in futures::future::join_all(pings).await.into_iter().flatten() {
                if let Some(warning) = self.clock.record(peer, sample) {
                    tracing::warn!(peer, "{warning}");
                }
            }
            if let Some(moved) = self.clock.jumped_us() {
                tracing::warn!(
                    "this node's wall clock jumped {} {} against its monotonic clock: it stamps nothing until it has measured its peers again",
                    crate::clock::human_offset(moved),
                    if moved > 0 { "forward" } else { "back" }
                );
            }
            let voters = voters_of(&self.raft)
                .unwrap_or_else(|| self.config.initial_members.keys().copied().collect());
            let (judgement, changed) = self.clock.rejudge(self.id, &voters);
            let may = self.clock.may_stamp();
            if changed {
                let median = crate::clock::human_offset(judgement.median_offset_us);
                let side = if judgement.median_offset_us <= 0 {
                    "ahead of"
                } else {
                    "behind"
                };
                match judgement.standing {
                    crate::clock::Standing::Within => tracing::info!(
                        agreeing = judgement.agreeing,
                        voters = judgement.voters,
                        "clock within max_clock_offset of a quorum of voters: this node may lead"
                    ),
                    crate::clock::Standing::Unknown => tracing::info!(
                        agreeing = judgement.agreeing,
                        voters = judgement.voters,
                        "clock offset to a quorum of voters not known yet (peers unreachable or too old to answer): this node does not campaign"
                    ),
                    crate::clock::Standing::Off => tracing::warn!(
                        disagreeing = judgement.disagreeing,
                        voters = judgement.voters,
                        guard = self.clock.settings.guard,
                        "this node's wall clock is {median} {side} the median of its voters, more than max_clock_offset ({}) from a quorum: {}; fix its time source (NTP)",
                        lockstep_core::time::human_ms(
                            self.clock.settings.max_offset.as_millis() as u64
                        ),
                        if self.clock.settings.guard {
                            if self.is_leader() {
                                "stepping down (no proposals, no heartbeats) and not campaigning"
                            } else {
                                "it does not campaign"
                            }
                        } else {
                            "the guard is off (--max-clock-offset off), so it may still lead"
                        }
                    ),
                }
            }
            if may != allowed {
                self.raft.runtime_config().elect(may);
                self.raft.runtime_config().heartbeat(may);
                allowed = may;
            }
            let pause = if judgement.standing == crate::clock::Standing::Unknown {
                crate::clock::PING_INTERVAL_UNKNOWN
            } else {
                crate::clock::PING_INTERVAL
            };
            tokio::time::sleep(pause).await;
        }
    }

    /// The current leader, if known, with its address.
    pub fn leader(&self) -> (Option<NodeId>, Option<String>) {
        leader_of(&self.raft)
    }

    /// The leader named by `id` and `addr`, if both are known and it is another node.
    fn other_leader(&self, id: Option<NodeId>, addr: Option<String>) -> Option<(NodeId, String)> {
        other_leader(self.id, id, addr)
    }

    /// This node's metrics in the Prometheus text format, with the scrape-time values read
    /// now.
    pub fn render_metrics(&self) -> Result<String, std::fmt::Error> {
        self.metrics.render(crate::metrics::Scrape {
            raft: self.raft.metrics().borrow().clone(),
            store: &self.store,
            admission: self.admission.stats(),
            read_index: &self.read_index.stats,
            forwarded_reads: &self.forwarded_reads.stats,
            clock: &self.clock,
            space: &self.space,
        })
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// A client's write: admitted (or refused with `Overloaded` before anything is
    /// proposed) by this node's admission control, then proposed in the client lane (or
    /// forwarded to the leader, whose admission control decides again).
    pub async fn client_write(
        &self,
        request_id: String,
        body: Body,
        forward: bool,
    ) -> Result<Written, WriteError> {
        // Short of space: refused before anything is proposed, here and on the leader.
        if let Some(message) = self.space.refusal() {
            self.metrics.observe_no_space();
            return Err(WriteError::NoSpace {
                message,
                retry_after_ms: crate::space::RETRY_AFTER_MS,
            });
        }
        // Quotas are counted where writes enter the log: on the leader (a follower forwards).
        if self.is_leader()
            && let Some(actor) = actor_of(&body)
        {
            self.take_quota(actor, crate::quota::Kind::Writes)?;
        }
        let permit = self.admission.try_admit().inspect_err(|_| {
            self.metrics.observe_overloaded("writes");
        })?;
        let answer = self
            .write(Some(request_id), body, forward, Lane::Client)
            .await;
        // Answered by the log, or so slow it timed out: either tells of commit latency.
        if matches!(answer, Ok(_) | Err(WriteError::Timeout(_))) {
            permit.sample();
        }
        answer
    }

    /// Takes a token of `actor`'s quota for `kind`, if the cluster policy gives it one;
    /// refused with `QuotaExceeded` (counted per quota) when the bucket is empty.
    pub fn take_quota(
        &self,
        actor: &lockstep_core::Actor,
        kind: crate::quota::Kind,
    ) -> Result<(), WriteError> {
        let policy = self.trust.policy.current();
        self.quotas
            .take(&policy.quotas, actor, kind)
            .map_err(|over| {
                self.metrics.observe_over_quota(&over.quota);
                WriteError::QuotaExceeded {
                    message: over.message(&actor.id),
                    retry_after_ms: millis(over.retry_after).max(1),
                    quota: over.quota,
                }
            })
    }

    /// Proposes a command in `lane` and returns its applied response, forwarding to the
    /// leader when this node is a follower and `forward` is set (the answer then names the
    /// leader). Client writes go through [`Node::client_write`]; the engine's own work calls
    /// this with [`Lane::Engine`].
    pub async fn write(
        &self,
        request_id: Option<String>,
        body: Body,
        forward: bool,
        lane: Lane,
    ) -> Result<Written, WriteError> {
        use tracing::Instrument;
        let span = tracing::info_span!("propose", body = body.name(), lane = ?lane);
        self.write_traced(request_id, body, forward, lane)
            .instrument(span)
            .await
    }

    async fn write_traced(
        &self,
        request_id: Option<String>,
        body: Body,
        forward: bool,
        lane: Lane,
    ) -> Result<Written, WriteError> {
        let started = Instant::now();
        loop {
            let answer = self
                .submit(request_id.clone(), body.clone(), lane)
                .await?
                .await;
            match (answer, forward) {
                (Err(WriteError::NotLeader { leader_addr, .. }), true) => {
                    if let Some(addr) = leader_addr {
                        let request = ForwardRequest::Write {
                            request_id: request_id.clone(),
                            body: body.clone(),
                        };
                        match self.forward(&addr, request).await {
                            Ok(ForwardReply::Written(response)) => {
                                // The answer names the leader, so the client can go there.
                                return Ok(Written {
                                    response,
                                    forwarded_to: Some(addr),
                                });
                            }
                            Ok(other) => {
                                return Err(WriteError::Fatal(format!(
                                    "unexpected forward reply {other:?}"
                                )));
                            }
                            Err(WriteError::NotLeader { .. }) | Err(WriteError::Timeout(_)) => {}
                            Err(e) => return Err(e),
                        }
                    }
                }
                (answer, _) => {
                    return answer.map(|response| Written {
                        response,
                        forwarded_to: None,
                    });
                }
            }
            if started.elapsed() > WRITE_DEADLINE {
                return Err(WriteError::Timeout(WRITE_DEADLINE));
            }
            tokio::time::sleep(NO_LEADER_BACKOFF).await;
        }
    }

    /// Hands a proposal to the local Raft (through the group-commit batcher) and returns at
    /// once with a future of its answer, so that proposals submitted one after another enter
    /// the log in that order even while several are in flight (a leader-only service's
    /// batches). Not forwarded: on a node that
    /// does not lead, the answer is `NotLeader`, naming the leader when it is another node
    /// whose address is known.
    pub async fn submit(
        &self,
        request_id: Option<String>,
        body: Body,
        lane: Lane,
    ) -> Result<impl Future<Output = Result<Response, WriteError>> + Send + 'static, WriteError>
    {
        // The clock offset guard: a leader whose clock is off (or not yet judged) stamps
        // nothing; it is stepping down, so the caller waits for the next leader as for none.
        if !self.clock.may_stamp() && self.is_leader() {
            return Err(WriteError::NotLeader {
                leader_id: None,
                leader_addr: None,
            });
        }
        let proposal = Proposal {
            request_id,
            at: wall_clock(),
            body: self.traced(body),
        };
        self.batcher.submit(proposal, lane).await
    }

    /// `body` carrying the current trace through the log ([`Body::Traced`]) when this node
    /// exports traces, the current span is in a sampled trace, and the cluster reads log
    /// format 9; `body` itself otherwise (no cost without `--otlp-endpoint`).
    fn traced(&self, body: Body) -> Body {
        if matches!(body, Body::Traced { .. }) {
            return body;
        }
        let Some(traceparent) = lockstep_raft::trace::current() else {
            return body;
        };
        match lockstep_raft::read::log_format(&*self.store) {
            Ok(format) if format.at_least(lockstep_raft::format::LOG_FORMAT_TRACES) => {
                Body::Traced {
                    traceparent,
                    body: Box::new(body),
                }
            }
            _ => body,
        }
    }

    async fn client_for(&self, addr: &str) -> Result<RaftClient<Channel>, WriteError> {
        // `--peer-via`: dial the member with this address where it says.
        let addr = self
            .members()
            .into_iter()
            .find(|(_, a, _)| a == addr)
            .map_or(addr, |(id, _, _)| self.connector.dial_addr(id, addr))
            .to_string();
        let mut leaders = self.leaders.lock().await;
        if let Some(c) = leaders.get(&addr) {
            return Ok(c.clone());
        }
        let channel = self
            .connector
            .channel(&addr)
            .map_err(|e| WriteError::Invalid(e.to_string()))?;
        let client = RaftClient::new(channel).max_decoding_message_size(64 << 20);
        leaders.insert(addr.to_string(), client.clone());
        Ok(client)
    }

    /// Sends a request to the leader at `addr` over the internal service.
    pub async fn forward(
        &self,
        addr: &str,
        request: ForwardRequest,
    ) -> Result<ForwardReply, WriteError> {
        let client = self.client_for(addr).await?;
        send_forward(client, self.id, addr, request).await
    }

    /// Serves a forwarded request as the leader.
    pub async fn serve_forwarded(
        &self,
        request: ForwardRequest,
    ) -> Result<ForwardReply, WriteError> {
        match request {
            // A follower's client write: this node's admission control decides too.
            ForwardRequest::Write {
                request_id: Some(request_id),
                body,
            } => self
                .client_write(request_id, body, false)
                .await
                .map(|w| ForwardReply::Written(w.response)),
            ForwardRequest::Write {
                request_id: None,
                body,
            } => self
                .write(None, body, false, Lane::Engine)
                .await
                .map(|w| ForwardReply::Written(w.response)),
            ForwardRequest::ReadIndex => {
                // One quorum round answers every read that arrived before it started.
                let raft = self.raft.clone();
                let round = move || {
                    let raft = raft.clone();
                    async move {
                        match raft.ensure_linearizable().await {
                            Ok(log_id) => Ok(log_id.map(|l| l.index).unwrap_or(0)),
                            Err(e) => {
                                let (leader_id, leader_addr) = leader_of(&raft);
                                tracing::debug!(error = %e, "read index refused");
                                Err(WriteError::NotLeader {
                                    leader_id,
                                    leader_addr,
                                })
                            }
                        }
                    }
                };
                let gone = WriteError::Fatal("the node is shutting down".into());
                self.read_index
                    .get(round, gone)
                    .await
                    .map(ForwardReply::ReadIndex)
            }
            ForwardRequest::AddLearner { id, addr } => self
                .add_learner(id, addr, false)
                .await
                .map(ForwardReply::Membership),
            ForwardRequest::Promote { ids } => {
                self.promote(ids, false).await.map(ForwardReply::Membership)
            }
            ForwardRequest::Remove { id } => {
                self.remove(id, false).await.map(ForwardReply::Membership)
            }
            ForwardRequest::LogFormat => Ok(ForwardReply::LogFormat(
                lockstep_raft::format::LOG_FORMAT_CURRENT,
            )),
            ForwardRequest::Clock => Ok(ForwardReply::Clock(wall_clock().as_micros())),
            ForwardRequest::CheckChain { verify } => self
                .check_chain(verify)
                .await
                .map(ForwardReply::ChainChecked),
            ForwardRequest::Describe { digest } => {
                self.describe(digest).await.map(ForwardReply::Described)
            }
        }
    }

    /// How this node sees itself; the state digest (read on a blocking thread) when asked.
    pub async fn describe(&self, digest: bool) -> Result<crate::cluster::MemberView, WriteError> {
        let m = self.raft.metrics().borrow().clone();
        let digest = if digest {
            let store = Arc::clone(&self.store);
            tokio::task::spawn_blocking(move || lockstep_raft::read::digest(&*store))
                .await
                .map_err(|e| WriteError::Fatal(format!("computing the digest: {e}")))?
                .map_err(|e| WriteError::Fatal(format!("computing the digest: {e}")))?
        } else {
            String::new()
        };
        Ok(crate::cluster::MemberView {
            node_id: self.id,
            role: format!("{:?}", m.state),
            term: m.current_term,
            leader_id: m.current_leader,
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            digest,
            space_alarm: self.space.refusal(),
            free_bytes: self.space.last().free_bytes,
        })
    }

    /// This node's audit chain head and, when `verify`, the chain verified from its first
    /// record (on a blocking thread: it reads every record).
    pub async fn check_chain(
        &self,
        verify: bool,
    ) -> Result<crate::cluster::ChainCheck, WriteError> {
        let store = Arc::clone(&self.store);
        let node_id = self.id;
        tokio::task::spawn_blocking(move || {
            let head = lockstep_raft::read::audit_head(&*store)?;
            let (checked, broken) = if verify {
                match lockstep_raft::read::verify_audit_at(&*store, 0)?.0 {
                    Ok(n) => (n, None),
                    Err(b) => (
                        b.global_seq.saturating_sub(1),
                        Some((b.global_seq, b.reason)),
                    ),
                }
            } else {
                (0, None)
            };
            Ok::<_, lockstep_store::Error>(crate::cluster::ChainCheck {
                node_id,
                verified: verify,
                checked,
                broken,
                head_seq: head.seq,
                head_hash: head.hash.iter().map(|b| format!("{b:02x}")).collect(),
            })
        })
        .await
        .map_err(|e| WriteError::Fatal(format!("reading the audit chain: {e}")))?
        .map_err(|e| WriteError::Fatal(format!("reading the audit chain: {e}")))
    }

    /// Waits until this replica may serve a linearizable read; returns the read index.
    /// Refused with `Overloaded` when `--reads-in-flight-max` reads already wait here.
    pub async fn read_barrier(&self) -> Result<u64, WriteError> {
        let Ok(_place) = self.reads_in_flight.try_acquire() else {
            self.metrics.observe_overloaded("reads");
            return Err(WriteError::Overloaded {
                message: format!(
                    "this node already has {} linearizable reads waiting for a read index and took nothing on; retry shortly, or read with consistency STALE",
                    self.config.admission.reads_max
                ),
                retry_after_ms: 10,
            });
        };
        if lockstep_raft::mutation::is(lockstep_raft::mutation::Mutation::LocalLinearizableRead) {
            // The bug: whatever this node has applied is taken as up to date.
            let applied = self.raft.metrics().borrow().last_applied;
            return Ok(applied.map_or(0, |l| l.index));
        }
        let started = Instant::now();
        loop {
            let index = if self.is_leader() {
                self.serve_forwarded(ForwardRequest::ReadIndex).await
            } else {
                match self.leader() {
                    (Some(id), Some(addr)) if id != self.id => {
                        self.forwarded_read_index(addr).await
                    }
                    _ => Err(WriteError::NotLeader {
                        leader_id: None,
                        leader_addr: None,
                    }),
                }
            };
            match index {
                Ok(ForwardReply::ReadIndex(index)) => {
                    let remaining = WRITE_DEADLINE.saturating_sub(started.elapsed());
                    self.raft
                        .wait(Some(remaining))
                        .applied_index_at_least(Some(index), "read barrier")
                        .await
                        .map_err(|_| WriteError::Timeout(WRITE_DEADLINE))?;
                    return Ok(index);
                }
                Ok(other) => {
                    return Err(WriteError::Fatal(format!(
                        "unexpected read index reply {other:?}"
                    )));
                }
                Err(_) if started.elapsed() < WRITE_DEADLINE => {
                    tokio::time::sleep(NO_LEADER_BACKOFF).await
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A read index from the leader at `addr`, asked in a request that concurrent reads on
    /// this node share (one that was sent before this call never answers it).
    async fn forwarded_read_index(&self, addr: String) -> Result<ForwardReply, WriteError> {
        let client = self.client_for(&addr).await?;
        let from = self.id;
        let round = move || {
            let (client, addr) = (client.clone(), addr.clone());
            async move {
                match send_forward(client, from, &addr, ForwardRequest::ReadIndex).await? {
                    ForwardReply::ReadIndex(index) => Ok(index),
                    other => Err(WriteError::Fatal(format!(
                        "unexpected read index reply {other:?}"
                    ))),
                }
            }
        };
        let gone = WriteError::Fatal("the node is shutting down".into());
        self.forwarded_reads
            .get(round, gone)
            .await
            .map(ForwardReply::ReadIndex)
    }

    /// Waits until this node has applied audit record `global_seq` (one a write of this
    /// node's caller produced): its state then holds that write. A follower that forwarded
    /// the write waits for its own apply, without the quorum round of a read barrier.
    pub async fn wait_for_audit_seq(&self, global_seq: u64) -> Result<(), WriteError> {
        let mut applied = self.raft.metrics();
        let deadline = tokio::time::Instant::now() + WRITE_DEADLINE;
        loop {
            applied.borrow_and_update();
            let head = lockstep_raft::read::audit_head(&*self.store)
                .map_err(|e| WriteError::Fatal(format!("cannot read the audit head: {e}")))?;
            if head.seq >= global_seq {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, applied.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(WriteError::Fatal("Raft stopped".into())),
                Err(_) => return Err(WriteError::Timeout(WRITE_DEADLINE)),
            }
        }
    }

    pub(crate) fn members(&self) -> Vec<(NodeId, String, bool)> {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, m)| (*id, m.addr.clone(), voters.contains(id)))
            .collect()
    }

    /// Runs a membership change on the leader, or forwards it there.
    ///
    /// Routing is decided *before* asking openraft: openraft checks "is the last membership
    /// committed?" before "am I the leader?", so a follower that has not yet learned that the
    /// last change committed (or a removed node, which never will) would refuse with "already
    /// undergoing a configuration change" instead of naming the leader. The change itself runs
    /// in its own task: openraft drives the second (uniform) step of a joint change from the
    /// caller's future, and a dropped RPC must not leave the cluster in a joint configuration.
    async fn membership_change<F, Fut>(
        &self,
        forward: bool,
        request: ForwardRequest,
        change: F,
    ) -> Result<Vec<(NodeId, String, bool)>, WriteError>
    where
        F: FnOnce(Raft<TypeConfig>) -> Fut,
        Fut: std::future::Future<
                Output = Result<(), RaftError<NodeId, ClientWriteError<NodeId, Member>>>,
            > + Send
            + 'static,
    {
        if !self.is_leader() {
            let (id, addr) = self.leader();
            return self
                .forward_membership(forward, request, self.other_leader(id, addr))
                .await;
        }
        let outcome = tokio::spawn(change(self.raft.clone()))
            .await
            .map_err(|e| WriteError::Fatal(format!("membership change task failed: {e}")))?;
        match outcome {
            Ok(()) => Ok(self.members()),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                let leader = self.other_leader(f.leader_id, f.leader_node.map(|n| n.addr));
                self.forward_membership(forward, request, leader).await
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                if !self.is_leader() {
                    // Leadership moved while the change was being checked.
                    let (id, addr) = self.leader();
                    return self
                        .forward_membership(forward, request, self.other_leader(id, addr))
                        .await;
                }
                match e {
                    ChangeMembershipError::InProgress(p) => Err(WriteError::Busy(format!(
                        "another membership change (log {}) has not committed yet; retry in a \
                         moment (last committed membership: log {})",
                        log_id(&p.membership_log_id),
                        log_id(&p.committed)
                    ))),
                    other => Err(WriteError::Invalid(other.to_string())),
                }
            }
            Err(RaftError::Fatal(e)) => Err(WriteError::Fatal(e.to_string())),
        }
    }

    /// Sends a membership change to `leader` when forwarding is allowed, else names it.
    async fn forward_membership(
        &self,
        forward: bool,
        request: ForwardRequest,
        leader: Option<(NodeId, String)>,
    ) -> Result<Vec<(NodeId, String, bool)>, WriteError> {
        match (forward, leader) {
            (true, Some((_, addr))) => match self.forward(&addr, request).await? {
                ForwardReply::Membership(m) => Ok(m),
                other => Err(WriteError::Fatal(format!("unexpected reply {other:?}"))),
            },
            (_, leader) => Err(WriteError::NotLeader {
                leader_id: leader.as_ref().map(|l| l.0),
                leader_addr: leader.map(|l| l.1),
            }),
        }
    }

    pub async fn add_learner(
        &self,
        id: NodeId,
        addr: String,
        forward: bool,
    ) -> Result<Vec<(NodeId, String, bool)>, WriteError> {
        if self.is_leader() {
            self.check_joiner_reads_the_log(id, &addr).await?;
        }
        let request = ForwardRequest::AddLearner {
            id,
            addr: addr.clone(),
        };
        self.membership_change(forward, request, move |raft| async move {
            raft.add_learner(id, Member { addr }, true)
                .await
                .map(|_| ())
        })
        .await
    }

    /// Refuses to add a node whose build cannot read the replicated log format: it would stop
    /// at the first entry it cannot decode. Any build reads format 1, so nothing is asked
    /// then; otherwise the joiner is asked over `Forward`, which a build older than the
    /// cluster-version gate cannot even decode.
    async fn check_joiner_reads_the_log(&self, id: NodeId, addr: &str) -> Result<(), WriteError> {
        let format = lockstep_raft::read::log_format(&*self.store)
            .map_err(|e| WriteError::Fatal(format!("cannot read the log format: {e}")))?;
        if !format.at_least(lockstep_raft::format::LOG_FORMAT_BATCHES) {
            return Ok(());
        }
        match self.forward(addr, ForwardRequest::LogFormat).await {
            Ok(ForwardReply::LogFormat(reads)) if reads >= format.0 => Ok(()),
            Ok(ForwardReply::LogFormat(reads)) => Err(WriteError::Invalid(format!(
                "node {id} at {addr} reads log formats up to {reads}, but this cluster's log is in format {}: upgrade its lockstepd to this cluster's release, then add it",
                format.0
            ))),
            Ok(other) => Err(WriteError::Invalid(format!(
                "node {id} at {addr} gave an unexpected answer ({other:?}) when asked which log format it reads"
            ))),
            Err(WriteError::Fatal(e)) | Err(WriteError::Invalid(e)) => {
                Err(WriteError::Invalid(format!(
                    "node {id} at {addr} cannot say which log format it reads ({e}): it runs a build older than this cluster's log format {}; upgrade its lockstepd, then add it",
                    format.0
                )))
            }
            Err(e) => Err(WriteError::Busy(format!(
                "cannot reach node {id} at {addr} to check which log format it reads ({e}): start it with --initial-members of this cluster, then retry"
            ))),
        }
    }

    pub async fn promote(
        &self,
        ids: Vec<NodeId>,
        forward: bool,
    ) -> Result<Vec<(NodeId, String, bool)>, WriteError> {
        let set: BTreeSet<NodeId> = ids.iter().copied().collect();
        self.membership_change(
            forward,
            ForwardRequest::Promote { ids },
            move |raft| async move {
                raft.change_membership(ChangeMembers::AddVoterIds(set), false)
                    .await
                    .map(|_| ())
            },
        )
        .await
    }

    pub async fn remove(
        &self,
        id: NodeId,
        forward: bool,
    ) -> Result<Vec<(NodeId, String, bool)>, WriteError> {
        let is_voter = self
            .members()
            .iter()
            .any(|(m, _, voter)| *m == id && *voter);
        let set = BTreeSet::from([id]);
        self.membership_change(
            forward,
            ForwardRequest::Remove { id },
            move |raft| async move {
                let change = if is_voter {
                    ChangeMembers::RemoveVoters(set)
                } else {
                    ChangeMembers::RemoveNodes(set)
                };
                raft.change_membership(change, false).await.map(|_| ())
            },
        )
        .await
    }

    pub fn member_list(&self) -> Vec<(NodeId, String, bool)> {
        self.members()
    }
}

fn log_id(id: &Option<openraft::LogId<NodeId>>) -> String {
    id.map_or_else(|| "none".to_string(), |l| l.to_string())
}

/// A retry-after hint in whole milliseconds.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Who a client's command is from, for quotas.
fn actor_of(body: &Body) -> Option<&lockstep_core::Actor> {
    match body {
        Body::ApplyDefinition { actor, .. }
        | Body::Create { actor, .. }
        | Body::Transition { actor, .. }
        | Body::Event { actor, .. }
        | Body::ResolveIncident { actor, .. }
        | Body::Redact { actor, .. }
        | Body::Migrate { actor, .. } => Some(actor),
        Body::Subscriptions(op) => match op {
            lockstep_raft::SubscriptionOp::Create { actor, .. }
            | lockstep_raft::SubscriptionOp::Pause { actor, .. }
            | lockstep_raft::SubscriptionOp::Resume { actor, .. }
            | lockstep_raft::SubscriptionOp::Delete { actor, .. } => Some(actor),
            lockstep_raft::SubscriptionOp::Progress { .. } => None,
        },
        Body::Task { op, .. } => Some(match op {
            lockstep_raft::TaskOp::Lease { worker }
            | lockstep_raft::TaskOp::Heartbeat { worker, .. }
            | lockstep_raft::TaskOp::Complete { worker, .. }
            | lockstep_raft::TaskOp::Fail { worker, .. }
            | lockstep_raft::TaskOp::Release { worker, .. } => worker,
        }),
        _ => None,
    }
}
