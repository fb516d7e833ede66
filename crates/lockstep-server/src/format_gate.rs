//! The cluster-version gate (`lockstep_raft::format`): a node writes a new log format only
//! once every member runs a build that reads it.
//!
//! Every node checks the replicated log format every [`GATE_CHECK_INTERVAL`] and, once it
//! allows group commit, tells the batcher (followers too, so a new leader batches from its
//! first proposal). The leader, while the replicated format is older than its build's, asks
//! every member (voters and learners) for the highest format it reads; an older build cannot
//! decode that question and so never counts as ready. When every member reads the current
//! format, the leader proposes `SetLogFormat`, and from its entry on every replica applies the
//! new format. A member that does not answer keeps the gate closed: during a rolling upgrade
//! the gate opens only after the last old node has been replaced.

use std::sync::Weak;
use std::time::Duration;

use lockstep_raft::Body;
use lockstep_raft::format::{LOG_FORMAT_BATCHES, LOG_FORMAT_CURRENT};

use crate::cluster::{ForwardReply, ForwardRequest};
use crate::node::Node;

/// How often the gate is checked.
pub const GATE_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Runs the gate until the node is dropped.
pub async fn run(node: Weak<Node>) {
    loop {
        {
            let Some(node) = node.upgrade() else { return };
            check(&node).await;
        }
        tokio::time::sleep(GATE_CHECK_INTERVAL).await;
    }
}

async fn check(node: &Node) {
    let format = match lockstep_raft::read::log_format(&*node.store) {
        Ok(format) => format,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the replicated log format");
            return;
        }
    };
    node.metrics.set_log_format(format.0, LOG_FORMAT_CURRENT);
    if format.at_least(LOG_FORMAT_BATCHES) {
        if !node.batcher.batches_allowed() {
            tracing::info!(format = format.0, "log format allows group commit");
            node.batcher.allow_batches();
        }
        if format.at_least(LOG_FORMAT_CURRENT) {
            return;
        }
    }
    if !node.is_leader() {
        return;
    }
    for (id, addr, _) in node.members() {
        if id == node.id {
            continue;
        }
        match node.forward(&addr, ForwardRequest::LogFormat).await {
            Ok(ForwardReply::LogFormat(reads)) if reads >= LOG_FORMAT_CURRENT => {}
            answer => {
                tracing::debug!(
                    member = id,
                    ?answer,
                    "member does not read the current log format yet"
                );
                return;
            }
        }
    }
    tracing::info!(
        from = format.0,
        to = LOG_FORMAT_CURRENT,
        "every member reads the new log format: raising it"
    );
    let raise = Body::SetLogFormat {
        version: LOG_FORMAT_CURRENT,
    };
    if let Err(e) = node
        .write(None, raise, false, crate::cluster::Lane::Engine)
        .await
    {
        tracing::warn!(error = %e, "raising the log format failed; retrying");
    }
}
