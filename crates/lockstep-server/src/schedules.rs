//! The schedule service (DESIGN §4, "Time"): on the leader, fires each schedule's next tick
//! once it is due.
//!
//! [`ScheduleService`], a leader service, reads the schedules from the leader's applied state
//! (at most `SCHEDULES_MAX`), proposes `ScheduleOp::Fire` in the engine lane for every active
//! schedule whose next tick has come, one after another, and sleeps until the earliest next
//! tick (woken early by any apply that changed a schedule). Exactly once comes from apply, not
//! from here: a fire names the tick, and apply acts only on the tick the schedule is at, then
//! moves it on in the same write. So a new leader that proposes a tick the old one already
//! fired (its answer lost in the failover) changes nothing, and a tick is never skipped
//! because its leader died: the next leader finds it still due, late, and the schedule's
//! catch-up policy decides.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use lockstep_raft::state_machine::Applied;
use lockstep_raft::{Body, Response, ScheduleOp, read};

use crate::cluster::{Lane, WriteError, wall_clock};
use crate::leader::LeaderService;
use crate::node::Node;

/// Longest sleep between two looks at the schedules when no apply wakes the service.
const IDLE_MAX: Duration = Duration::from_secs(1);

/// The schedule service of one node, a [`LeaderService`].
pub struct ScheduleService {
    node: Arc<Node>,
}

impl std::fmt::Debug for ScheduleService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScheduleService").finish_non_exhaustive()
    }
}

impl ScheduleService {
    pub fn new(node: Arc<Node>) -> Self {
        ScheduleService { node }
    }

    /// Fires every due tick; `None` if a fire moved a schedule (look again at once: a catch-up
    /// may have more due), else how long until the earliest next tick.
    async fn fire_due(&self) -> Result<Option<Duration>, WriteError> {
        let schedules =
            read::schedules(&*self.node.store).map_err(|e| WriteError::Fatal(e.to_string()))?;
        let now = wall_clock();
        let mut earliest: Option<i64> = None;
        let mut moved = false;
        for s in schedules {
            let Some(tick) = s.next.as_ref().filter(|_| s.paused.is_none()) else {
                continue;
            };
            if tick.at > now {
                earliest =
                    Some(earliest.map_or(tick.at.as_micros(), |e| e.min(tick.at.as_micros())));
                continue;
            }
            let late_ms = now.ms_since(tick.at);
            let body = Body::Schedules(ScheduleOp::Fire {
                name: s.spec.name.clone(),
                tick: tick.at,
            });
            let written = self.node.write(None, body, false, Lane::Engine).await?;
            if let Response::Schedule(after) = written.response {
                moved = true;
                self.node.metrics.observe_schedule_tick(late_ms);
                tracing::info!(
                    schedule = %after.spec.name,
                    tick = %tick.at,
                    late_ms,
                    outcome = ?after.last.as_ref().map(|l| &l.outcome),
                    "schedule tick"
                );
            }
        }
        if moved {
            return Ok(None);
        }
        let wait = earliest.map_or(IDLE_MAX, |e| {
            Duration::from_micros(e.saturating_sub(wall_clock().as_micros()).max(0) as u64)
        });
        Ok(Some(wait.min(IDLE_MAX)))
    }
}

impl LeaderService for ScheduleService {
    fn name(&self) -> &'static str {
        "schedules"
    }

    fn applied(&self, applied: &Applied) -> bool {
        applied.changed_schedules
    }

    fn step(&self) -> BoxFuture<'_, Result<Option<Duration>, WriteError>> {
        Box::pin(self.fire_due())
    }
}
