//! Traces through the log as every replica applies them (log format 9): a traced request is
//! its body for deduplication and outcome, and a task keeps the trace of the request that
//! created it until it completes.

mod common;

use common::*;
use lockstep_core::engine::TaskStatus;
use lockstep_core::{Actor, ActorKind};
use lockstep_raft::{Body, Response, TaskOp, read};

const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

fn traced(body: Body) -> Body {
    Body::Traced {
        traceparent: TRACEPARENT.into(),
        body: Box::new(body),
    }
}

fn approver() -> Actor {
    actor("bob", &["approver"])
}

/// A purchase order `key` submitted and approved in a trace: the approval hands the `erp`
/// queue a task. Returns (instance id, task id).
fn approved_in_trace(replica: &mut Replica, key: &str) -> (String, String) {
    replica.apply(1_000, define());
    let id = id_of(&replica.apply(1_001, create(key)));
    replica.apply(1_002, take(key, "submit", actor("alice", &[])));
    id_of(&replica.apply(1_003, traced(take(key, "approve", approver()))));
    let instance = read::instance(&replica.store, &id).unwrap().unwrap();
    let task = instance
        .tasks
        .keys()
        .next()
        .expect("the approval created a task");
    (id, task.clone())
}

#[test]
fn a_traced_request_is_its_body_for_deduplication_and_outcome() {
    let mut replica = Replica::new();
    raise(&mut replica, 9, 500);
    replica.apply(1_000, define());
    let first = replica.apply_as("create-A", 1_001, traced(create("A")));
    // The same request retried outside the trace (or in another): the first outcome, once.
    let again = replica.apply_as("create-A", 1_002, create("A"));
    assert_eq!(again, first);
    assert!(
        matches!(first, Response::Applied { version: 1, .. }),
        "{first:?}"
    );
    // A different request under the same id is still told apart.
    let other = replica.apply_as("create-A", 1_003, traced(create("B")));
    assert!(
        matches!(&other, Response::Refused(r) if r.code == lockstep_core::RefusalCode::RequestIdReused),
        "{other:?}"
    );
    // A trace inside a trace is refused, as a result.
    let nested = replica.apply(1_004, traced(traced(create("C"))));
    assert!(matches!(nested, Response::Refused(_)), "{nested:?}");
    assert_eq!(replica.counts().get("draft"), Some(&1));
}

#[test]
fn a_task_keeps_the_trace_that_created_it_until_it_completes() {
    let mut replica = Replica::new();
    raise(&mut replica, 9, 500);
    let (id, task_id) = approved_in_trace(&mut replica, "A");
    assert_eq!(
        read::task_trace(&replica.store, &id, &task_id)
            .unwrap()
            .as_deref(),
        Some(TRACEPARENT)
    );
    // Leased and heartbeated outside the trace: the task keeps its own.
    let worker = Actor::new("erp-1", ActorKind::Worker, &[]);
    let lease = TaskOp::Lease {
        worker: worker.clone(),
    };
    let leased = replica.apply(
        2_000,
        Body::Task {
            instance_id: id.clone(),
            task_id: task_id.clone(),
            op: lease,
        },
    );
    assert!(matches!(leased, Response::Applied { .. }), "{leased:?}");
    assert!(
        read::task_trace(&replica.store, &id, &task_id)
            .unwrap()
            .is_some()
    );
    let task = read::instance(&replica.store, &id).unwrap().unwrap().tasks[&task_id].clone();
    let done = replica.apply(
        3_000,
        Body::Task {
            instance_id: id.clone(),
            task_id: task_id.clone(),
            op: TaskOp::Complete {
                token: task.lease.unwrap(),
                result: serde_json::json!({}),
                worker,
            },
        },
    );
    assert!(matches!(done, Response::Applied { .. }), "{done:?}");
    let task = &read::instance(&replica.store, &id).unwrap().unwrap().tasks[&task_id];
    assert_eq!(task.status, TaskStatus::Completed);
    assert_eq!(
        read::task_trace(&replica.store, &id, &task_id).unwrap(),
        None
    );
}

#[test]
fn before_format_9_a_traced_request_applies_but_no_trace_is_kept() {
    let mut replica = Replica::new();
    raise(&mut replica, 8, 500);
    let (id, task_id) = approved_in_trace(&mut replica, "A");
    assert_eq!(
        read::instance(&replica.store, &id).unwrap().unwrap().state,
        "approved"
    );
    assert_eq!(
        read::task_trace(&replica.store, &id, &task_id).unwrap(),
        None
    );
}

#[test]
fn a_traced_record_keeps_its_trace_for_a_bounded_window_of_records() {
    use lockstep_raft::replicated::AUDIT_TRACES_KEPT;
    let mut replica = Replica::new();
    raise(&mut replica, 9, 500);
    // Record 1: the definition, untraced.
    replica.apply(1_000, define());
    let seq = |r: &Response| match r {
        Response::Applied { global_seq, .. } => *global_seq,
        other => panic!("{other:?}"),
    };
    let first = seq(&replica.apply(1_001, traced(create("K0"))));
    assert_eq!(first, 2);
    assert_eq!(read::audit_trace(&replica.store, 1).unwrap(), None);
    assert_eq!(
        read::audit_trace(&replica.store, 2).unwrap().as_deref(),
        Some(TRACEPARENT)
    );
    // Past the window, each traced record removes traces that fell out of it.
    let last = AUDIT_TRACES_KEPT + 4;
    for n in first + 1..=last {
        let at = 1_001 + i64::try_from(n).unwrap();
        assert_eq!(seq(&replica.apply(at, traced(create(&format!("K{n}"))))), n);
    }
    let oldest_kept = last - AUDIT_TRACES_KEPT;
    assert_eq!(
        read::audit_trace(&replica.store, oldest_kept - 1).unwrap(),
        None
    );
    assert!(
        read::audit_trace(&replica.store, oldest_kept)
            .unwrap()
            .is_some()
    );
}
