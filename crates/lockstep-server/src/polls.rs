//! The bound on waiting task polls (issue 18): per node, per queue and per worker.
//! `Tasks/Poll` (`tasks.rs`) takes a place before it waits; `Api` holds the node's places.

/// Most tasks one poll may lease.
pub const POLL_TASKS_MAX: u32 = 32;

/// Most polls one node serves at once, over all queues.
pub const POLLS_MAX: usize = 16_384;
/// Most polls one node serves at once for one queue.
pub const POLLS_PER_QUEUE_MAX: usize = 1_024;
/// Most polls one node serves at once for one worker (by actor id).
pub const POLLS_PER_WORKER_MAX: usize = 8;

/// Which bound a new poll would pass; the poll is refused as overloaded with this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PollsFull {
    #[error(
        "worker `{worker}` already has {max} polls waiting on this node, the most one worker may: retry once one of them has answered (one poll may lease up to {tasks} tasks)",
        max = POLLS_PER_WORKER_MAX,
        tasks = POLL_TASKS_MAX
    )]
    Worker { worker: String },
    #[error(
        "queue `{queue}` already has {max} polls waiting on this node; retry shortly or poll another node",
        max = POLLS_PER_QUEUE_MAX
    )]
    Queue { queue: String },
    #[error(
        "this node already serves {max} polls; retry shortly or poll another node",
        max = POLLS_MAX
    )]
    Node,
}

/// The polls a node is serving, per queue and per worker, within [`POLLS_MAX`],
/// [`POLLS_PER_QUEUE_MAX`] and [`POLLS_PER_WORKER_MAX`]. A count that falls to zero is
/// removed, so the maps hold at most as many keys as there are polls.
#[derive(Debug, Default)]
pub struct PollPlaces {
    counts: std::sync::Mutex<PollCounts>,
}

#[derive(Debug, Default)]
struct PollCounts {
    total: usize,
    queues: std::collections::HashMap<String, usize>,
    workers: std::collections::HashMap<String, usize>,
}

/// A poll's place; given back when dropped.
#[derive(Debug)]
pub struct PollPlace<'a> {
    places: &'a PollPlaces,
    queue: String,
    worker: String,
}

impl PollPlaces {
    /// Polls this node serves now (any queue): how many workers contend for the oldest
    /// ready tasks.
    pub fn serving(&self) -> usize {
        self.counts.lock().expect("poll places lock").total
    }

    /// Takes a place for a poll of `queue` by `worker`, or says which bound it would pass.
    pub fn enter<'a>(&'a self, queue: &str, worker: &str) -> Result<PollPlace<'a>, PollsFull> {
        let mut c = self.counts.lock().expect("poll places lock");
        let on_queue = c.queues.get(queue).copied().unwrap_or(0);
        let of_worker = c.workers.get(worker).copied().unwrap_or(0);
        if of_worker >= POLLS_PER_WORKER_MAX {
            return Err(PollsFull::Worker {
                worker: worker.to_string(),
            });
        }
        if on_queue >= POLLS_PER_QUEUE_MAX {
            return Err(PollsFull::Queue {
                queue: queue.to_string(),
            });
        }
        if c.total >= POLLS_MAX {
            return Err(PollsFull::Node);
        }
        c.total += 1;
        *c.queues.entry(queue.to_string()).or_default() += 1;
        *c.workers.entry(worker.to_string()).or_default() += 1;
        Ok(PollPlace {
            places: self,
            queue: queue.to_string(),
            worker: worker.to_string(),
        })
    }
}

impl Drop for PollPlace<'_> {
    fn drop(&mut self) {
        let mut guard = self.places.counts.lock().expect("poll places lock");
        let c = &mut *guard;
        c.total = c.total.saturating_sub(1);
        for (map, key) in [(&mut c.queues, &self.queue), (&mut c.workers, &self.worker)] {
            if let Some(n) = map.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    map.remove(key);
                }
            }
        }
    }
}

/// Ready tasks some poll on this node is proposing a lease for. Another poll on this node
/// skips them: only one lease of a task can win, and a losing proposal is still a replicated
/// write. At most one claim per task a serving poll may lease ([`POLLS_MAX`] ×
/// [`POLL_TASKS_MAX`]), as each poll holds its claims only while its leases are proposed.
#[derive(Debug, Default)]
pub struct LeaseClaims {
    claimed: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// A claim on one task; given back when dropped.
#[derive(Debug)]
pub struct LeaseClaim<'a> {
    claims: &'a LeaseClaims,
    task_id: String,
}

impl LeaseClaims {
    /// Claims `task_id` for a lease proposal, unless another poll on this node holds it.
    pub fn claim(&self, task_id: &str) -> Option<LeaseClaim<'_>> {
        let mut claimed = self.claimed.lock().expect("lease claims lock");
        claimed.insert(task_id.to_string()).then(|| LeaseClaim {
            claims: self,
            task_id: task_id.to_string(),
        })
    }
}

impl Drop for LeaseClaim<'_> {
    fn drop(&mut self) {
        self.claims
            .claimed
            .lock()
            .expect("lease claims lock")
            .remove(&self.task_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claimed_task_is_skipped_until_its_claim_is_dropped() {
        let claims = LeaseClaims::default();
        let first = claims.claim("t1").expect("nobody holds t1");
        assert!(claims.claim("t1").is_none(), "t1 is claimed twice");
        assert!(claims.claim("t2").is_some());
        drop(first);
        assert!(
            claims.claim("t1").is_some(),
            "t1's claim was not given back"
        );
    }
}
