//! The leader-only outbox dispatcher (DESIGN §6), a [`LeaderService`].
//!
//! Apply writes every effect of a committed change to the replicated outbox in the same batch
//! as the change and its audit record. The current leader reads the outbox in sequence order
//! after commit and dispatches each item:
//!
//! - `TaskReady`: the task is already durable in its queue's index, and the apply that put
//!   it there woke the polls waiting on every node (`Applied::readied_task`); dispatching
//!   logs it.
//! - `Emit`: the event is part of the change feed (`Audit/Tail`) through the audit record of
//!   the change that emitted it; dispatching logs it for operators.
//!
//! Then it proposes `AckOutbox { through }`, which removes the dispatched items. A new leader
//! starts from the first unacknowledged item, so nothing is lost on failover; dispatching an
//! item twice (a leader that died between dispatch and ack) only logs it twice, and a poll
//! leases a task through the log, so no task is delivered twice.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use lockstep_core::engine::Effect;
use lockstep_raft::state_machine::Applied;
use lockstep_raft::{Body, read};

use crate::cluster::WriteError;
use crate::leader::LeaderService;
use crate::node::Node;

/// Most outbox items dispatched and acknowledged by one proposal.
pub const OUTBOX_DISPATCH_BATCH_MAX: usize = 256;
/// Longest wait between looks at the outbox when nothing is applied.
const IDLE_MAX: Duration = Duration::from_millis(500);

/// The outbox dispatcher of one node, a [`LeaderService`]. It keeps nothing in memory: the
/// acknowledged sequence is replicated, so a new leader starts from it.
#[derive(Debug)]
pub struct OutboxDispatcher {
    node: Arc<Node>,
}

impl OutboxDispatcher {
    pub fn new(node: Arc<Node>) -> Self {
        OutboxDispatcher { node }
    }
}

impl LeaderService for OutboxDispatcher {
    fn name(&self) -> &'static str {
        "outbox"
    }

    fn applied(&self, applied: &Applied) -> bool {
        applied.queued_outbox
    }

    fn step(&self) -> BoxFuture<'_, Result<Option<Duration>, WriteError>> {
        Box::pin(async { Ok((!dispatch_batch(&self.node).await?).then_some(IDLE_MAX)) })
    }
}

/// Dispatches and acknowledges one batch; true if there was anything to dispatch.
async fn dispatch_batch(node: &Node) -> Result<bool, WriteError> {
    let store_error = |e: lockstep_store::Error| WriteError::Fatal(e.to_string());
    let acked = read::outbox_acked(&*node.store).map_err(store_error)?;
    let items =
        read::outbox(&*node.store, acked + 1, OUTBOX_DISPATCH_BATCH_MAX).map_err(store_error)?;
    let Some(last) = items.last().map(|i| i.seq) else {
        return Ok(false);
    };
    for item in &items {
        match &item.effect {
            Effect::TaskReady { queue, task_id, .. } => {
                tracing::debug!(
                    seq = item.seq,
                    queue,
                    task_id,
                    instance = item.instance_id,
                    "task ready"
                );
            }
            Effect::Emit { event } => {
                tracing::info!(
                    seq = item.seq,
                    event,
                    instance = item.instance_id,
                    workflow = item.workflow,
                    audit_seq = item.audit_seq,
                    "event emitted"
                );
            }
        }
    }
    node.write(
        None,
        Body::AckOutbox { through: last },
        false,
        crate::cluster::Lane::Engine,
    )
    .await?;
    Ok(true)
}
