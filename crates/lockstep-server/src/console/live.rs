//! The console's live feed: server-sent events at `/events`, one per audit record the
//! signed-in actor may read (the cluster policy's read rules, decided per record as the
//! policy stands then), optionally only for one instance or workflow. `Audit/Tail` itself
//! needs `read_audit`, which requesters and approvers do not have; this feed carries only
//! which instance changed and how (no data), and the page then reloads its live region
//! through the ordinary, authorized page. A reconnect resumes after `Last-Event-ID`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use lockstep_core::audit::ChainedRecord;
use lockstep_raft::read;
use serde::Deserialize;

use super::{Caller, Console, Refused};

/// Audit records read per batch.
const LIVE_BATCH: usize = 256;
/// Events queued for a slow browser before the feed waits for it.
const LIVE_QUEUE: usize = 64;

pub(super) fn routes() -> Router<Console> {
    Router::new().route("/events", get(events))
}

#[derive(Deserialize, Default)]
struct Filter {
    #[serde(default)]
    instance: String,
    #[serde(default)]
    workflow: String,
}

impl Filter {
    fn wants(&self, r: &ChainedRecord) -> bool {
        (self.instance.is_empty() || r.record.instance_id == self.instance)
            && (self.workflow.is_empty() || r.record.workflow == self.workflow)
            && !r.record.instance_id.is_empty()
    }
}

fn event(r: &ChainedRecord) -> Event {
    let data = serde_json::json!({
        "seq": r.global_seq,
        "instance": r.record.instance_id,
        "workflow": r.record.workflow,
        "transition": r.record.transition,
        "to": r.record.to,
        "version": r.record.instance_version,
    });
    Event::default()
        .id(r.global_seq.to_string())
        .event("change")
        .data(data.to_string())
}

async fn events(
    State(console): State<Console>,
    caller: Caller,
    headers: HeaderMap,
    Query(filter): Query<Filter>,
) -> Response {
    let actor = match caller.admit(&console, "/lockstep.v1.Instances/List") {
        Ok(a) => a,
        Err(r) => return (r.status, r.message).into_response(),
    };
    let Ok(permit) = Arc::clone(&console.live).try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "this node serves {} live feeds already: the page retries",
                super::CONSOLE_LIVE_STREAMS_MAX
            ),
        )
            .into_response();
    };
    let node = Arc::clone(&console.api.node);
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let mut next = match resume {
        Some(seq) => seq + 1,
        None => match read::audit_head(&*node.store) {
            Ok(head) => head.seq + 1,
            Err(e) => {
                let r = Refused::from(crate::status::store_error(e));
                return (r.status, r.message).into_response();
            }
        },
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(LIVE_QUEUE);
    tokio::spawn(async move {
        let _permit = permit;
        let mut metrics = node.raft.metrics();
        loop {
            let batch = match read::audit_from(&*node.store, next, LIVE_BATCH) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "console live feed: reading the audit log failed");
                    return;
                }
            };
            let policy = node.trust.policy.current();
            for r in &batch {
                next = r.global_seq + 1;
                if filter.wants(r)
                    && policy.may_read(actor.as_ref(), &r.record.workflow)
                    && tx.send(event(r)).await.is_err()
                {
                    return;
                }
            }
            if batch.len() < LIVE_BATCH {
                // Sleep until this replica applies something new (Raft metrics also change
                // with every heartbeat's replication progress, which writes no record).
                let applied = metrics.borrow().last_applied;
                loop {
                    tokio::select! {
                        changed = metrics.changed() => if changed.is_err() { return },
                        _ = tx.closed() => return,
                    }
                    if metrics.borrow().last_applied != applied {
                        break;
                    }
                }
            }
        }
    });
    let stream = futures::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), |e| {
        Ok::<_, Infallible>(e)
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}
