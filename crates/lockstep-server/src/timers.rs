//! The leader-only timer service (DESIGN §4).
//!
//! It runs while this node is the leader, and only after the leader has applied an entry of
//! its own term (so it sees every timer the previous leaders armed). It reads due timers from
//! the local store in due order, at most [`TIMERS_FIRE_BATCH_MAX`] at a time, and proposes one
//! `FireTimers` command for them, waiting for it to apply before looking again: a fire is never
//! re-proposed while in flight. Apply fires a timer only if it is still armed, so a stale or
//! duplicate fire (after a failover) is a no-op. Only the next due time and a scan cursor are
//! kept in memory; the rest stays in RocksDB. The cursor matters at scale: fired timers leave
//! tombstones at the start of the due index until RocksDB compacts them, and a scan from the
//! start would step over all of them for every batch (with a million timers fired, one core
//! went to that).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use lockstep_raft::{Body, Member, NodeId, read};
use openraft::ServerState;
use tokio::sync::watch;

use crate::node::{Node, WriteError, wall_clock};

/// Most timers fired by one proposal.
pub const TIMERS_FIRE_BATCH_MAX: usize = 256;
/// Longest sleep between looks at the timer index, so a missed wake-up costs at most this.
const IDLE_MAX: Duration = Duration::from_millis(500);

/// True while this node leads and has applied an entry of its own term, so its state holds
/// everything earlier leaders committed (timers armed, outbox items written).
pub fn leading_with_own_entry(m: &openraft::RaftMetrics<NodeId, Member>) -> bool {
    m.state == ServerState::Leader
        && m.last_applied
            .is_some_and(|l| l.leader_id.term == m.current_term)
}

/// Drives a leader-only service: while this node leads with an entry of its own term, calls
/// `step`, which does one bounded piece of work and answers `None` to be called again at once
/// or `Some(wait)` to sleep (woken early by any apply or by shutdown). Off leadership it waits
/// for the Raft metrics to change, after calling `on_follower`. A failed step is retried after
/// a short pause: its proposal is never re-sent while still in flight, since `step` awaits it.
pub async fn while_leading<F, Fut>(
    node: &Node,
    mut shutdown: watch::Receiver<bool>,
    what: &'static str,
    on_follower: impl Fn(),
    mut step: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<Duration>, WriteError>>,
{
    let mut metrics = node.raft.metrics();
    loop {
        if *shutdown.borrow() {
            return;
        }
        if !leading_with_own_entry(&metrics.borrow()) {
            on_follower();
            tokio::select! {
                _ = metrics.changed() => {}
                _ = shutdown.changed() => {}
            }
            continue;
        }
        let wait = match step().await {
            Ok(None) => continue,
            Ok(Some(wait)) => wait,
            Err(e) => {
                tracing::debug!(error = %e, service = what, "proposal failed; looking again");
                Duration::from_millis(50)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = metrics.changed() => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// The earliest due time of the timers armed since the timer service last looked: the state
/// machine's apply hook notes every applied arm after its batch is written (`Node::start`),
/// and the service takes it before each scan of the due index. It lets the service scan from
/// where it left off and still see a timer armed with an earlier due time than it has reached.
#[derive(Clone, Debug)]
pub struct ArmedSince(Arc<AtomicI64>);

impl Default for ArmedSince {
    fn default() -> Self {
        ArmedSince(Arc::new(AtomicI64::new(i64::MAX)))
    }
}

impl ArmedSince {
    /// Notes a timer armed with this due time (micros).
    pub fn note(&self, due_micros: i64) {
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
    fn start(&self, node: &Node) -> i64 {
        let from = self.get().min(node.timers_armed.take());
        self.0.store(from, Ordering::SeqCst);
        from
    }

    fn get(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }

    fn advance(&self, to_micros: i64) {
        self.0.store(to_micros, Ordering::SeqCst);
    }

    fn reset(&self) {
        self.0.store(i64::MIN, Ordering::SeqCst);
    }
}

pub async fn run(node: Arc<Node>, shutdown: watch::Receiver<bool>) {
    let cursor = Cursor(AtomicI64::new(i64::MIN));
    let on_follower = || {
        node.metrics.set_timers_due(0);
        cursor.reset();
    };
    while_leading(&node, shutdown, "timers", on_follower, || async {
        if fire_due(&node, &cursor).await? {
            return Ok(None);
        }
        Ok(Some(until_next_due(&node, &cursor)))
    })
    .await
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

/// Proposes one batch of the timers due from the cursor on; true if there was anything to
/// fire. Once the batch applied, every timer in it is fired (or was no longer armed), so the
/// cursor moves to the last one's due time.
async fn fire_due(node: &Node, cursor: &Cursor) -> Result<bool, WriteError> {
    let from = cursor.start(node);
    let now = wall_clock();
    let due = read::due_timers(&*node.store, from, now, TIMERS_FIRE_BATCH_MAX)
        .map_err(|e| WriteError::Fatal(e.to_string()))?;
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
    let timers: Vec<(String, String)> = due.into_iter().map(|t| (t.instance_id, t.id)).collect();
    let count = timers.len();
    let response = node.write(None, Body::FireTimers { timers }, false).await?;
    cursor.advance(last_due);
    node.metrics.observe_timers_fired(lateness);
    tracing::debug!(count, ?response, "fired timers");
    Ok(true)
}
