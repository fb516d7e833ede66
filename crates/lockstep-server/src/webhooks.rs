//! Webhook delivery (DESIGN §9, "Outbound"): the leader POSTs the audit records each
//! subscription matches, at least once and in global-sequence order per subscription, signed
//! with Standard Webhooks headers, to targets on the node's allow-list (`webhook_http.rs`).
//!
//! [`WebhookService`], a leader service, runs one task per active subscription: it reads the
//! records after the subscription's cursor from the leader's applied state, sends those its
//! filter matches one at a time, retries a failed one with capped exponential backoff, and
//! moves the cursor through the log (`SubscriptionOp::Progress`), at most every
//! [`PROGRESS_EVERY`] (delivering, or caught up) — not one entry per delivery. After
//! `attempts` failed attempts in a row, or once the lag passes `lag_max`, it pauses the
//! subscription with its last error; an operator resumes it from the same cursor. A new
//! leader starts from the replicated cursor, so a record whose acknowledgement was not yet
//! committed is sent again (the `webhook-id` header, the record's global sequence, lets the
//! receiver drop the repeat).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use lockstep_core::audit::ChainedRecord;
use lockstep_core::subscription::{Subscription, bounded_error};
use lockstep_raft::state_machine::Applied;
use lockstep_raft::{Body, DeliveryProgress, SubscriptionOp, read};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::cluster::{Lane, WriteError};
use crate::leader::LeaderService;
use crate::node::Node;
use crate::webhook_http::{BACKOFF_MIN, payload, send};

/// Records read from the audit chain per look.
pub const RECORDS_PER_LOOK: usize = 256;
/// Longest a task delivers before it proposes its cursor, and shortest time between two of
/// its proposals: at most one log entry per second per subscription. (A new leader re-sends
/// what was delivered since.)
pub const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// How long a task waits after a proposal failed before it tries again.
const PROPOSE_RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Longest wait between looks at the audit chain when no apply wakes a task.
const IDLE_MAX: Duration = Duration::from_secs(1);

/// The delivery of one node, a [`LeaderService`]: on the leader, one task per active
/// subscription.
pub struct WebhookService {
    node: Arc<Node>,
    /// Woken (every task) after each apply: new records may be there.
    applied: Arc<Notify>,
    /// The running task of each subscription, with the generation it delivers for.
    tasks: Mutex<HashMap<String, (i64, JoinHandle<()>)>>,
}

impl std::fmt::Debug for WebhookService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookService").finish_non_exhaustive()
    }
}

impl WebhookService {
    pub fn new(node: Arc<Node>) -> Self {
        WebhookService {
            node,
            applied: Arc::new(Notify::new()),
            tasks: Mutex::new(HashMap::new()),
        }
    }

    /// Stops every task, and forgets their metrics: another node delivers now.
    fn stop_all(&self) {
        for (name, (_, task)) in self.tasks.lock().expect("webhook tasks").drain() {
            task.abort();
            self.node.metrics.forget_subscription(&name);
        }
    }

    /// Starts a task for each active subscription without one (or with one of an older
    /// generation, or that stopped); stops those of paused and deleted subscriptions.
    fn reconcile(&self) -> Result<(), WriteError> {
        let subscriptions =
            read::subscriptions(&*self.node.store).map_err(|e| WriteError::Fatal(e.to_string()))?;
        let mut tasks = self.tasks.lock().expect("webhook tasks");
        tasks.retain(|name, (generation, task)| {
            let current = subscriptions.iter().find(|s| s.name == *name);
            let keep = current.is_some_and(|s| s.paused.is_none() && s.generation == *generation)
                && !task.is_finished();
            if !keep {
                task.abort();
            }
            if current.is_none() {
                self.node.metrics.forget_subscription(name);
            }
            keep
        });
        for s in subscriptions {
            if s.paused.is_none() && !tasks.contains_key(&s.name) {
                let (name, generation) = (s.name.clone(), s.generation);
                let run = Delivery {
                    node: Arc::clone(&self.node),
                    applied: Arc::clone(&self.applied),
                    term: self.node.raft.metrics().borrow().current_term,
                    subscription: s,
                };
                tasks.insert(name, (generation, tokio::spawn(run.run())));
            }
        }
        Ok(())
    }
}

impl LeaderService for WebhookService {
    fn name(&self) -> &'static str {
        "webhooks"
    }

    fn applied(&self, applied: &Applied) -> bool {
        if applied.entries > 0 {
            self.applied.notify_waiters();
        }
        applied.changed_subscriptions
    }

    fn step(&self) -> BoxFuture<'_, Result<Option<Duration>, WriteError>> {
        Box::pin(async { self.reconcile().map(|()| Some(IDLE_MAX)) })
    }

    fn became_follower(&self) {
        self.stop_all();
    }
}

impl Drop for WebhookService {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// One subscription's delivery on the leader, from its replicated cursor.
struct Delivery {
    node: Arc<Node>,
    applied: Arc<Notify>,
    /// The term the task was started in: it sends nothing once the node no longer leads in it.
    term: u64,
    subscription: Subscription,
}

impl Delivery {
    async fn run(mut self) {
        let name = self.subscription.name.clone();
        let mut proposed = self.subscription.cursor;
        let mut last_progress = Instant::now();
        let applied = Arc::clone(&self.applied);
        loop {
            // Registered before the look, so an apply between the look and the wait wakes it.
            let woken = applied.notified();
            let (records, head) = match self.look() {
                Ok(found) => found,
                Err(e) => {
                    tracing::warn!(subscription = %name, error = %e, "webhook delivery cannot read the audit chain");
                    tokio::time::sleep(IDLE_MAX).await;
                    continue;
                }
            };
            if !self.leading() {
                return; // the reconcile of the next leader term starts a task again
            }
            let lag = head.saturating_sub(self.subscription.cursor);
            self.node.metrics.observe_webhook_lag(&name, lag);
            if records.is_empty() {
                // Caught up: the cursor goes into the log, at most every PROGRESS_EVERY (records
                // the filter skips move it too, and must not cost an entry each).
                let mut wait = IDLE_MAX;
                if proposed < self.subscription.cursor {
                    let since = last_progress.elapsed();
                    if since >= PROGRESS_EVERY {
                        match self.propose(None, false).await {
                            Ok(()) => proposed = self.subscription.cursor,
                            Err(()) => tokio::time::sleep(PROPOSE_RETRY_PAUSE).await,
                        }
                        last_progress = Instant::now();
                        continue;
                    }
                    wait = PROGRESS_EVERY - since;
                }
                let _ = tokio::time::timeout(wait, woken).await;
                continue;
            }
            for (record, emitted) in records {
                if self.subscription.filter.matches(&record.record, &emitted)
                    && !self.deliver(&record, &emitted).await
                {
                    return; // paused: the reconcile starts a task again after a resume
                }
                self.subscription.cursor = record.global_seq;
                if last_progress.elapsed() >= PROGRESS_EVERY {
                    if self.propose(None, false).await.is_ok() {
                        proposed = self.subscription.cursor;
                    }
                    last_progress = Instant::now();
                }
            }
        }
    }

    /// The records after the cursor with the events each emitted, and the audit head.
    #[allow(clippy::type_complexity)]
    fn look(&self) -> Result<(Vec<(ChainedRecord, Vec<String>)>, u64), lockstep_store::Error> {
        let store = &*self.node.store;
        let head = read::audit_head(store)?.seq;
        let records = read::audit_from(store, self.subscription.cursor + 1, RECORDS_PER_LOOK)?;
        let mut out = Vec::with_capacity(records.len());
        for r in records {
            let emitted = read::emitted(store, r.global_seq)?;
            out.push((r, emitted));
        }
        Ok((out, head))
    }

    /// Sends one record until it is delivered (`true`) or the subscription is paused.
    async fn deliver(&mut self, record: &ChainedRecord, emitted: &[String]) -> bool {
        let settings = &self.node.webhooks;
        let name = self.subscription.name.clone();
        let id = record.global_seq.to_string();
        let body = payload(&name, record, emitted);
        // The trace of the write that made the record, when it was traced: read once, it
        // parents every attempt's span.
        let traceparent = read::audit_trace(&*self.node.store, record.global_seq)
            .ok()
            .flatten();
        let mut attempts = 0u32;
        loop {
            if !self.confirm_leading().await {
                return false;
            }
            let started = Instant::now();
            let span = tracing::info_span!("webhook.deliver", subscription = %name, seq = record.global_seq, attempt = attempts + 1);
            if let Some(traceparent) = &traceparent {
                lockstep_raft::trace::continue_in(&span, traceparent);
            }
            let trace = span.in_scope(crate::telemetry::inject);
            let result = send(settings, &self.subscription, &id, body.clone(), &trace)
                .instrument(span)
                .await;
            self.node.metrics.observe_webhook_delivery(
                &name,
                started.elapsed().as_secs_f64(),
                result.is_ok(),
            );
            let error = match result {
                Ok(()) => {
                    if self.subscription.last_error.take().is_some() {
                        // Cleared through the log at the next progress.
                        tracing::info!(subscription = %name, seq = record.global_seq, "webhook delivered again");
                    }
                    return true;
                }
                Err(e) => bounded_error(&e),
            };
            attempts += 1;
            // The lag now, not at the look: records keep coming while one is retried.
            let head = match read::audit_head(&*self.node.store) {
                Ok(head) => head.seq,
                Err(e) => {
                    tracing::warn!(subscription = %name, error = %e, "webhook delivery cannot read the audit head");
                    record.global_seq
                }
            };
            let lag = head.saturating_sub(self.subscription.cursor);
            let give_up = attempts >= settings.attempts || lag > settings.lag_max;
            let reason = if lag > settings.lag_max {
                format!(
                    "{lag} records behind, more than lag_max ({}); last error: {error}",
                    settings.lag_max
                )
            } else if give_up {
                format!("{attempts} attempts failed; last error: {error}")
            } else {
                error.clone()
            };
            tracing::warn!(subscription = %name, seq = record.global_seq, attempts, error = %error, "webhook delivery failed");
            self.subscription.last_error = Some(reason.clone());
            // The error becomes visible (and, when giving up, the pause) through the log.
            while self.propose(Some(reason.clone()), give_up).await.is_err() {
                if !self.leading() {
                    return false;
                }
                tokio::time::sleep(PROPOSE_RETRY_PAUSE).await;
            }
            if give_up {
                tracing::warn!(subscription = %name, reason = %reason, "webhook subscription paused");
                return false;
            }
            let backoff = BACKOFF_MIN
                .saturating_mul(1 << attempts.min(16))
                .min(settings.backoff_max);
            // Jitter: up to a quarter more, so many failing subscriptions do not retry at once.
            let jitter = backoff.mul_f64(rand::random::<f64>() / 4.0);
            tokio::time::sleep(backoff + jitter).await;
        }
    }

    /// Whether this node still leads, in the term the task started in, with an applied entry
    /// of its own: a deposed leader must not send alongside the new one.
    fn leading(&self) -> bool {
        let metrics = self.node.raft.metrics();
        let m = metrics.borrow();
        crate::leader::leading_with_own_entry(&m) && m.current_term == self.term
    }

    /// [`Delivery::leading`], confirmed by a quorum (a read index) just before a request goes
    /// out: a leader cut off from the others may still believe it leads, and must not send
    /// alongside the new leader (which starts from the replicated cursor), or the receiver
    /// would see the two streams interleaved.
    async fn confirm_leading(&self) -> bool {
        self.leading() && self.node.read_barrier().await.is_ok() && self.leading()
    }

    /// Proposes the cursor (and an error, or a pause) through the log.
    async fn propose(&self, error: Option<String>, pause: bool) -> Result<(), ()> {
        let update = DeliveryProgress {
            name: self.subscription.name.clone(),
            generation: self.subscription.generation,
            cursor: self.subscription.cursor,
            error: error.or_else(|| self.subscription.last_error.clone()),
            pause,
        };
        let body = Body::Subscriptions(SubscriptionOp::Progress {
            updates: vec![update],
        });
        match self.node.write(None, body, false, Lane::Engine).await {
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::debug!(subscription = %self.subscription.name, error = %e, "webhook progress not proposed");
                Err(())
            }
        }
    }
}
