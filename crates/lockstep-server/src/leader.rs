//! Leader-only services: one trait, one driver (DESIGN §4, §6).
//!
//! The engine's own work — firing due timers (`timers.rs`), dispatching the outbox
//! (`dispatch.rs`), and the services of later issues — runs on the leader alone, and
//! only once the leader has applied an entry of its own term, so that its state holds
//! everything earlier leaders committed. Each such service implements [`LeaderService`] and
//! owns its state; the binary registers them with [`LeaderServices::start`], and
//! [`LeaderServices::applied`], called by the node's apply hook, tells each one what an apply
//! gave it. One driver ([`drive`]) runs every service through the same lifecycle:
//!
//! ```text
//!  follower ──(leads, with an entry of its own term)──▶ became_leader
//!                                                          │
//!                 ┌──────── step ◀── woken: apply gave it work / its own wait ends
//!                 │  Ok(None): step again at once; Ok(Some(wait)): sleep; Err: pause, step again
//!                 ▼
//!  became_follower ◀──(no longer leads, or a new term without its own entry yet)
//! ```
//!
//! A service never learns of leadership any other way, so a service written against this
//! trait cannot act on a stale view of the timer index or the outbox.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::future::BoxFuture;
use lockstep_raft::state_machine::Applied;
use lockstep_raft::{Member, NodeId};
use openraft::{RaftMetrics, ServerState};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::cluster::WriteError;

/// How long a service pauses after a failed step before it steps again.
pub const STEP_RETRY_PAUSE: Duration = Duration::from_millis(50);

/// True while this node leads and has applied an entry of its own term, so its state holds
/// everything earlier leaders committed (timers armed, outbox items written).
pub fn leading_with_own_entry(m: &RaftMetrics<NodeId, Member>) -> bool {
    m.state == ServerState::Leader
        && m.last_applied
            .is_some_and(|l| l.leader_id.term == m.current_term)
}

/// A service that runs on the leader alone. Every method is called by one driver task (the
/// apply hook, [`LeaderService::applied`], excepted), so the service's own state needs no
/// more than interior mutability.
pub trait LeaderService: Send + Sync + 'static {
    /// A short name for logs (`service = ...`).
    fn name(&self) -> &'static str;

    /// Called on every node after each applied batch is written (from the apply path, so it
    /// must be quick and must not block): note what the apply gave this service; `true`
    /// wakes the service's sleep. Followers note too, so a node that becomes leader has
    /// nothing to catch up on beyond what [`LeaderService::became_leader`] resets.
    fn applied(&self, applied: &Applied) -> bool;

    /// This node now leads with an entry of its own term; [`LeaderService::step`] follows.
    fn became_leader(&self) {}

    /// One bounded piece of work: `Ok(None)` to be called again at once, `Ok(Some(wait))` to
    /// sleep at most `wait` (woken early by an apply that gave it work), `Err` to be called
    /// again after [`STEP_RETRY_PAUSE`]. A step keeps track of its own proposals in flight.
    fn step(&self) -> BoxFuture<'_, Result<Option<Duration>, WriteError>>;

    /// This node no longer leads (or leads in a term without its own applied entry yet).
    fn became_follower(&self) {}
}

/// A registered service and what wakes it.
struct Registered {
    service: Arc<dyn LeaderService>,
    wake: Arc<Notify>,
}

/// The leader services of one node. Created before the node (its apply hook calls
/// [`LeaderServices::applied`]), started once the node is up.
#[derive(Default)]
pub struct LeaderServices {
    services: OnceLock<Vec<Registered>>,
}

impl std::fmt::Debug for LeaderServices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self
            .services
            .get()
            .into_iter()
            .flatten()
            .map(|r| r.service.name())
            .collect();
        f.debug_struct("LeaderServices")
            .field("services", &names)
            .finish()
    }
}

impl LeaderServices {
    /// Tells every started service what an apply did, and wakes those it gave work. Before
    /// [`LeaderServices::start`] there is nobody to tell: a service learns the state it starts
    /// from in [`LeaderService::became_leader`].
    pub fn applied(&self, applied: &Applied) {
        for r in self.services.get().into_iter().flatten() {
            if r.service.applied(applied) {
                r.wake.notify_one();
            }
        }
    }

    /// Starts a driver task per service; each ends at shutdown. Called once.
    pub fn start(
        &self,
        services: Vec<Arc<dyn LeaderService>>,
        metrics: watch::Receiver<RaftMetrics<NodeId, Member>>,
        shutdown: watch::Receiver<bool>,
    ) -> Vec<JoinHandle<()>> {
        let registered: Vec<Registered> = services
            .into_iter()
            .map(|service| Registered {
                service,
                wake: Arc::new(Notify::new()),
            })
            .collect();
        let tasks = registered
            .iter()
            .map(|r| {
                tokio::spawn(drive(
                    Arc::clone(&r.service),
                    Arc::clone(&r.wake),
                    metrics.clone(),
                    shutdown.clone(),
                ))
            })
            .collect();
        if self.services.set(registered).is_err() {
            panic!("LeaderServices::start is called once, by the binary");
        }
        tasks
    }
}

/// Runs one service through its lifecycle until shutdown: off leadership it waits for the
/// Raft metrics to change; leading, it steps, sleeping between steps as the service asks.
pub async fn drive(
    service: Arc<dyn LeaderService>,
    wake: Arc<Notify>,
    mut metrics: watch::Receiver<RaftMetrics<NodeId, Member>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut leading = false;
    loop {
        if *shutdown.borrow() {
            break;
        }
        let now_leading = leading_with_own_entry(&metrics.borrow_and_update());
        if now_leading != leading {
            leading = now_leading;
            if leading {
                tracing::debug!(service = service.name(), "leading: service starts");
                service.became_leader();
            } else {
                tracing::debug!(service = service.name(), "not leading: service stops");
                service.became_follower();
            }
        }
        if !leading {
            tokio::select! {
                _ = metrics.changed() => {}
                _ = shutdown.changed() => {}
            }
            continue;
        }
        let wait = match service.step().await {
            Ok(None) => continue,
            Ok(Some(wait)) => wait,
            Err(e) => {
                tracing::debug!(error = %e, service = service.name(), "step failed; stepping again");
                STEP_RETRY_PAUSE
            }
        };
        // Leadership is looked at again above, after the sleep: a change while sleeping is
        // seen then (a deposed leader's proposals fail meanwhile, which costs nothing).
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = wake.notified() => {}
            _ = shutdown.changed() => {}
        }
    }
    if leading {
        service.became_follower();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use openraft::{CommittedLeaderId, LogId};

    use super::*;

    /// Records its lifecycle; a step answers "sleep an hour", so only a wake steps again.
    #[derive(Default)]
    struct Probe {
        events: Mutex<Vec<&'static str>>,
        steps: AtomicUsize,
    }

    impl Probe {
        fn events(&self) -> Vec<&'static str> {
            self.events.lock().unwrap().clone()
        }
    }

    impl LeaderService for Probe {
        fn name(&self) -> &'static str {
            "probe"
        }
        fn applied(&self, applied: &Applied) -> bool {
            applied.queued_outbox
        }
        fn became_leader(&self) {
            self.events.lock().unwrap().push("leader");
        }
        fn step(&self) -> BoxFuture<'_, Result<Option<Duration>, WriteError>> {
            Box::pin(async {
                self.steps.fetch_add(1, Ordering::SeqCst);
                Ok(Some(Duration::from_secs(3600)))
            })
        }
        fn became_follower(&self) {
            self.events.lock().unwrap().push("follower");
        }
    }

    fn metrics(state: ServerState, term: u64, applied_term: u64) -> RaftMetrics<NodeId, Member> {
        let mut m = RaftMetrics::new_initial(1);
        m.state = state;
        m.current_term = term;
        m.last_applied = Some(LogId::new(CommittedLeaderId::new(applied_term, 1), 7));
        m
    }

    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_service_steps_only_while_leading_with_an_entry_of_its_term_and_wakes_for_its_work() {
        let (raft, rx) = watch::channel(metrics(ServerState::Follower, 1, 1));
        let (stop, shutdown) = watch::channel(false);
        let services = LeaderServices::default();
        let probe = Arc::new(Probe::default());
        let tasks = services.start(vec![probe.clone()], rx, shutdown);

        // A follower, then a leader of term 2 that has applied nothing of term 2: no step.
        raft.send_replace(metrics(ServerState::Leader, 2, 1));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(probe.steps.load(Ordering::SeqCst), 0);
        assert!(probe.events().is_empty(), "{:?}", probe.events());

        // Its own entry applied: it starts and steps once, then sleeps.
        raft.send_replace(metrics(ServerState::Leader, 2, 2));
        until("first step", || probe.steps.load(Ordering::SeqCst) == 1).await;
        assert_eq!(probe.events(), ["leader"]);

        // An apply that gave it nothing does not wake it; one that did, does.
        services.applied(&Applied::default());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(probe.steps.load(Ordering::SeqCst), 1);
        services.applied(&Applied {
            queued_outbox: true,
            ..Applied::default()
        });
        until("woken step", || probe.steps.load(Ordering::SeqCst) == 2).await;

        // Deposed: it stops, once, at its next look (a wake); a new term's leadership
        // without an entry of that term does not restart it.
        raft.send_replace(metrics(ServerState::Follower, 3, 2));
        services.applied(&Applied {
            queued_outbox: true,
            ..Applied::default()
        });
        until("stopped", || probe.events() == ["leader", "follower"]).await;
        raft.send_replace(metrics(ServerState::Leader, 4, 2));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(probe.events(), ["leader", "follower"]);
        let steps = probe.steps.load(Ordering::SeqCst);

        raft.send_replace(metrics(ServerState::Leader, 4, 4));
        until("restarted", || {
            probe.events() == ["leader", "follower", "leader"]
                && probe.steps.load(Ordering::SeqCst) > steps
        })
        .await;

        stop.send_replace(true);
        for task in tasks {
            tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .expect("the driver ends at shutdown")
                .unwrap();
        }
        assert_eq!(probe.events(), ["leader", "follower", "leader", "follower"]);
    }
}
