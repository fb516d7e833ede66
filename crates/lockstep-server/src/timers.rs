//! The leader-only timer service (DESIGN §4), a [`LeaderService`].
//!
//! It runs while this node is the leader, and only after the leader has applied an entry of
//! its own term (so it sees every timer the previous leaders armed; [`crate::leader`]). It reads due timers from
//! the local store in due order, at most [`TIMERS_FIRE_BATCH_MAX`] at a time, and proposes one
//! `FireTimers` command for them; up to [`TIMERS_FIRE_IN_FLIGHT_MAX`] such proposals are in
//! flight at once, and a scan skips the timers they hold: a fire is never re-proposed while in
//! flight. Apply fires a timer only if it is still armed and due at the entry's cluster time,
//! so a stale or duplicate fire (after a failover, or for an earlier arming of a reused id) is
//! a no-op. Only the next due time, a scan cursor and the timers in flight are kept in memory;
//! the rest stays in RocksDB. The cursor matters at scale: fired timers leave tombstones at the
//! start of the due index until RocksDB compacts them, and a scan from the start would step
//! over all of them for every batch (with a million timers fired, one core went to that).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use lockstep_raft::Body;
use lockstep_raft::read;
use lockstep_raft::state_machine::Applied;
use tokio::task::JoinSet;

use crate::cluster::{WriteError, wall_clock};
use crate::leader::LeaderService;
use crate::node::Node;

/// Most timers fired by one proposal.
pub const TIMERS_FIRE_BATCH_MAX: usize = 256;
/// Most fire proposals in flight at once. With one, firing was capped at one batch per commit
/// round trip, which a transition load stretches (about 1,200 fires/s on the 2-core bench
/// machine with a million timers); with a few, a backlog's batches share commits.
pub const TIMERS_FIRE_IN_FLIGHT_MAX: usize = 4;
/// Longest sleep between looks at the timer index, so a missed wake-up costs at most this.
const IDLE_MAX: Duration = Duration::from_millis(500);

/// The timer service of one node: a [`LeaderService`] that owns its scan cursor, the
/// earliest timer armed since its last scan, and its fire proposals in flight.
pub struct TimerService {
    node: Arc<Node>,
    cursor: Cursor,
    armed: ArmedSince,
    flight: tokio::sync::Mutex<InFlight>,
}

impl std::fmt::Debug for TimerService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimerService")
            .field("cursor", &self.cursor)
            .field("armed", &self.armed)
            .finish_non_exhaustive()
    }
}

impl TimerService {
    pub fn new(node: Arc<Node>) -> Self {
        TimerService {
            node,
            cursor: Cursor(AtomicI64::new(i64::MIN)),
            armed: ArmedSince::default(),
            flight: tokio::sync::Mutex::new(InFlight::default()),
        }
    }

    async fn step(&self) -> Result<Option<Duration>, WriteError> {
        let mut flight = self.flight.lock().await;
        let mut failed = flight.settle(&self.cursor);
        let proposed = flight.batches.len() < TIMERS_FIRE_IN_FLIGHT_MAX
            && propose_due(&self.node, &self.cursor, &self.armed, &mut flight).await?;
        // Nothing more to propose now: wait for a proposal in flight (at most IDLE_MAX, so a
        // proposal that is never answered cannot hold off shutdown or a leadership check), or
        // sleep until the next due time when none is in flight.
        let wait = if proposed {
            None
        } else {
            match tokio::time::timeout(IDLE_MAX, flight.proposals.join_next_with_id()).await {
                Ok(Some(done)) => {
                    failed = failed.or(flight.resolve(done, &self.cursor));
                    None
                }
                Ok(None) => Some(until_next_due(&self.node, &self.cursor)),
                Err(_still_in_flight) => None,
            }
        };
        failed.map_or(Ok(wait), Err)
    }
}

impl LeaderService for TimerService {
    fn name(&self) -> &'static str {
        "timers"
    }

    fn applied(&self, applied: &Applied) -> bool {
        match applied.earliest_armed {
            Some(due) => {
                self.armed.note(due);
                true
            }
            None => false,
        }
    }

    /// A new leader scans the due index from the start, once: it knows nothing of what
    /// earlier leaders fired or left due.
    fn became_leader(&self) {
        self.cursor.reset();
    }

    fn step(&self) -> BoxFuture<'_, Result<Option<Duration>, WriteError>> {
        Box::pin(TimerService::step(self))
    }

    fn became_follower(&self) {
        self.node.metrics.set_timers_due(0);
    }
}

/// The earliest due time of the timers armed since the timer service last looked: the
/// service's apply hook ([`LeaderService::applied`]) notes every applied arm after its batch
/// is written, and the service takes it before each scan of the due index. It lets the
/// service scan from where it left off and still see a timer armed with an earlier due time
/// than it has reached.
#[derive(Debug)]
struct ArmedSince(AtomicI64);

impl Default for ArmedSince {
    fn default() -> Self {
        ArmedSince(AtomicI64::new(i64::MAX))
    }
}

impl ArmedSince {
    /// Notes a timer armed with this due time (micros).
    fn note(&self, due_micros: i64) {
        self.0.fetch_min(due_micros, Ordering::SeqCst);
    }

    /// The earliest due time noted since the last call (`i64::MAX`: none), and forgets it.
    fn take(&self) -> i64 {
        self.0.swap(i64::MAX, Ordering::SeqCst)
    }
}

/// Where the next scan of the due index starts (due time in micros): no armed timer is due
/// before it, except those [`ArmedSince`] reports. `i64::MIN` scans from the start, as a new
/// leader does once.
#[derive(Debug)]
struct Cursor(AtomicI64);

impl Cursor {
    /// The start of this scan: the cursor, lowered to the earliest timer armed since the last
    /// scan, and kept there until a fire moves it on.
    fn start(&self, armed: &ArmedSince) -> i64 {
        let from = self.get().min(armed.take());
        self.0.store(from, Ordering::SeqCst);
        from
    }

    fn get(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }

    fn advance(&self, to_micros: i64) {
        self.0.store(to_micros, Ordering::SeqCst);
    }

    /// Moves the cursor back to `to_micros` if it is past it.
    fn lower(&self, to_micros: i64) {
        self.0.fetch_min(to_micros, Ordering::SeqCst);
    }

    fn reset(&self) {
        self.0.store(i64::MIN, Ordering::SeqCst);
    }
}

/// A timer as the due index holds it: its id and due time (micros). Ids are reused when a
/// timer is armed again (a task's retry, an SLA's breach after a reset), so the due time is
/// part of what a scan skips.
type Armed = (String, i64);

/// A fire proposal not yet answered: its timers, in due order.
struct Batch(Vec<Armed>);

/// The fire proposals in flight, at most [`TIMERS_FIRE_IN_FLIGHT_MAX`], and the timers in
/// them: a scan skips those, so no fire is proposed twice while one is in flight. A proposal
/// outlives a lost leadership (it may still commit); its timers stay skipped until it answers.
#[derive(Default)]
struct InFlight {
    timers: HashSet<Armed>,
    batches: HashMap<tokio::task::Id, Batch>,
    proposals: JoinSet<Result<(), WriteError>>,
}

impl InFlight {
    /// Takes in every proposal that has answered; the last failure, if any.
    fn settle(&mut self, cursor: &Cursor) -> Option<WriteError> {
        let mut failed = None;
        while let Some(done) = self.proposals.try_join_next_with_id() {
            failed = self.resolve(done, cursor).or(failed);
        }
        failed
    }

    /// Forgets an answered proposal, and moves the cursor back to its first timer: a failed
    /// one did not fire its timers (or not for sure), so the next scan proposes them again,
    /// and a timer armed again with the same id and due time while this one was in flight
    /// was skipped by a scan that has moved the cursor past it.
    fn resolve(
        &mut self,
        done: Result<(tokio::task::Id, Result<(), WriteError>), tokio::task::JoinError>,
        cursor: &Cursor,
    ) -> Option<WriteError> {
        let (id, result) = match done {
            Ok((id, result)) => (id, result),
            Err(e) => (
                e.id(),
                Err(WriteError::Fatal(format!("fire proposal failed: {e}"))),
            ),
        };
        let Batch(timers) = self.batches.remove(&id)?;
        for timer in &timers {
            self.timers.remove(timer);
        }
        if let Some((_, first_due)) = timers.first() {
            cursor.lower(*first_due);
        }
        result.err()
    }
}

/// Proposes one batch of the timers due from the cursor on that are not already in flight;
/// true if there was anything to fire. The proposal runs on its own task. Every armed timer
/// due before the batch's last is now fired or in flight, so the cursor moves to that due
/// time (a failed proposal moves it back, see [`InFlight::resolve`]).
async fn propose_due(
    node: &Arc<Node>,
    cursor: &Cursor,
    armed: &ArmedSince,
    flight: &mut InFlight,
) -> Result<bool, WriteError> {
    let from = cursor.start(armed);
    let now = wall_clock();
    // Timers in flight are skipped, so read past them: a scan still finds a full batch.
    let due = read::due_timers(
        &*node.store,
        from,
        now,
        TIMERS_FIRE_BATCH_MAX + flight.timers.len(),
    )
    .map_err(|e| WriteError::Fatal(e.to_string()))?;
    let due: Vec<_> = due
        .into_iter()
        .filter(|t| {
            !flight
                .timers
                .contains(&(t.id.clone(), t.due_at.as_micros()))
        })
        .take(TIMERS_FIRE_BATCH_MAX)
        .collect();
    node.metrics.set_timers_due(due.len());
    let Some(last_due) = due.last().map(|t| t.due_at.as_micros()) else {
        return Ok(false);
    };
    // Lateness is taken at proposal time and recorded once the fire applied, so a retried
    // proposal counts once, with the lateness of the attempt that went through.
    let lateness: Vec<i64> = due
        .iter()
        .map(|t| now.as_micros().saturating_sub(t.due_at.as_micros()))
        .collect();
    let armed: Vec<Armed> = due
        .iter()
        .map(|t| (t.id.clone(), t.due_at.as_micros()))
        .collect();
    let timers: Vec<(String, String)> = due.into_iter().map(|t| (t.instance_id, t.id)).collect();
    // Submitted here, in turn, so batches enter the log in due order; answered on a task.
    let count = timers.len();
    let answer = node
        .submit(
            None,
            Body::FireTimers { timers },
            crate::cluster::Lane::Engine,
        )
        .await?;
    let task = {
        let node = Arc::clone(node);
        flight.proposals.spawn(async move {
            let response = answer.await?;
            node.metrics.observe_timers_fired(lateness);
            tracing::debug!(count, ?response, "fired timers");
            Ok(())
        })
    };
    flight.timers.extend(armed.iter().cloned());
    flight.batches.insert(task.id(), Batch(armed));
    cursor.advance(last_due);
    Ok(true)
}

/// How long until the next armed timer falls due, at most [`IDLE_MAX`]. Nothing is due before
/// that timer, so the cursor moves to it.
fn until_next_due(node: &Node, cursor: &Cursor) -> Duration {
    match read::next_timers(&*node.store, cursor.get(), 1) {
        Ok(next) => next
            .first()
            .map(|t| {
                cursor.advance(t.due_at.as_micros());
                Duration::from_micros(
                    t.due_at
                        .as_micros()
                        .saturating_sub(wall_clock().as_micros())
                        .max(0) as u64,
                )
            })
            .unwrap_or(IDLE_MAX)
            .min(IDLE_MAX),
        Err(e) => {
            tracing::error!(error = %e, "cannot read the timer index");
            IDLE_MAX
        }
    }
}
