//! Applying proposals on a store: the audited, atomic write path without the network.

use std::sync::Arc;

use lockstep_core::{Actor, ActorKind, RefusalCode, Timestamp};
use lockstep_raft::apply::{Applier, DefinitionCache};
use lockstep_raft::{Body, Proposal, Provenance, Response, Target, TypeConfig, read};
use lockstep_store::{Durability, MemStore, Store};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

const PO: &str = include_str!("../../../examples/workflows/purchase-order.yaml");

struct Node {
    store: Arc<MemStore>,
    cache: DefinitionCache,
    index: u64,
}

impl Node {
    fn new() -> Node {
        Node {
            store: Arc::new(MemStore::new()),
            cache: DefinitionCache::default(),
            index: 0,
        }
    }

    fn apply(&mut self, request_id: Option<&str>, at_ms: i64, body: Body) -> Response {
        self.index += 1;
        let entry = Entry::<TypeConfig> {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), self.index),
            payload: EntryPayload::Normal(Proposal {
                request_id: request_id.map(str::to_owned),
                at: Timestamp::from_millis(at_ms),
                body,
            }),
        };
        let mut applier = Applier::new(&*self.store, &mut self.cache);
        let response = applier.apply_entry(&entry).unwrap();
        self.store
            .write(applier.into_batch(), Durability::Buffered)
            .unwrap();
        response
    }
}

fn actor(id: &str, roles: &[&str]) -> Actor {
    Actor::new(id, ActorKind::Human, roles)
}

fn define(node: &mut Node) {
    let r = node.apply(
        Some("def"),
        1_000,
        Body::ApplyDefinition {
            source: PO.into(),
            provenance: Provenance {
                repository: "repo".into(),
                commit: "abc".into(),
                path: "po.yaml".into(),
            },
            actor: actor("admin", &[]),
        },
    );
    assert!(
        matches!(r, Response::Definition { created: true, .. }),
        "{r:?}"
    );
}

fn create(node: &mut Node, rid: &str, key: &str) -> String {
    let body = Body::Create {
        workflow: "purchase-order".into(),
        key: Some(key.into()),
        data: serde_json::json!({"amount": 100, "requester": "alice"}),
        actor: actor("alice", &[]),
    };
    match node.apply(Some(rid), 2_000, body) {
        Response::Applied { instance_id, .. } => instance_id,
        other => panic!("{other:?}"),
    }
}

fn submit(key: &str, who: &str) -> Body {
    Body::Transition {
        target: Target::Key {
            workflow: "purchase-order".into(),
            key: key.into(),
        },
        transition: "submit".into(),
        payload: serde_json::Value::Null,
        actor: actor(who, &[]),
        expected_version: None,
    }
}

#[test]
fn create_and_transition_write_instance_indexes_timers_and_audit() {
    let mut node = Node::new();
    define(&mut node);
    let id = create(&mut node, "r1", "PO-1");
    let r = node.apply(Some("r2"), 3_000, submit("PO-1", "alice"));
    assert!(
        matches!(&r, Response::Applied { state, version: 2, .. } if state == "submitted"),
        "{r:?}"
    );
    let instance = read::instance(&*node.store, &id).unwrap().unwrap();
    assert_eq!(instance.state, "submitted");
    assert_eq!(
        read::instance_ids(&*node.store, "purchase-order", Some("submitted"), None, 10).unwrap(),
        std::slice::from_ref(&id)
    );
    assert!(
        read::instance_ids(&*node.store, "purchase-order", Some("draft"), None, 10)
            .unwrap()
            .is_empty()
    );
    // The draft expiry was cancelled, the SLA timers armed.
    let timers: Vec<String> = read::next_timers(&*node.store, 10)
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(timers.len(), 3, "{timers:?}");
    assert!(
        timers.iter().all(|t| t.contains(":sla:approval:")),
        "{timers:?}"
    );
    let history = read::history(&*node.store, &id, 10).unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[1].record.transition.as_deref(), Some("submit"));
    assert_eq!(history[1].instance_seq, 2);
    assert_eq!(
        read::verify_audit(&*node.store).unwrap(),
        Ok(3),
        "definition + create + submit"
    );
}

#[test]
fn a_retried_request_returns_the_first_outcome_and_applies_once() {
    let mut node = Node::new();
    define(&mut node);
    create(&mut node, "r1", "PO-1");
    let first = node.apply(Some("same"), 3_000, submit("PO-1", "alice"));
    let digest = read::digest(&*node.store).unwrap();
    let again = node.apply(Some("same"), 4_000, submit("PO-1", "alice"));
    assert_eq!(first, again);
    let history = read::history(&*node.store, "i-2", 10).unwrap();
    assert_eq!(history.len(), 2, "applied once");
    assert_ne!(
        digest,
        read::digest(&*node.store).unwrap(),
        "applied id and time still advance"
    );
}

#[test]
fn refusals_are_results_and_change_no_instance() {
    let mut node = Node::new();
    define(&mut node);
    let id = create(&mut node, "r1", "PO-1");
    let before = read::instance(&*node.store, &id).unwrap();
    let r = node.apply(Some("r2"), 3_000, submit("PO-1", "mallory"));
    assert!(
        matches!(&r, Response::Refused(x) if x.code == RefusalCode::Forbidden),
        "{r:?}"
    );
    assert_eq!(read::instance(&*node.store, &id).unwrap(), before);
    let r = node.apply(Some("r3"), 3_000, submit("PO-404", "alice"));
    assert!(
        matches!(&r, Response::Refused(x) if x.code == RefusalCode::UnknownInstance),
        "{r:?}"
    );
    let r = node.apply(
        Some("r4"),
        3_000,
        Body::Create {
            workflow: "nope".into(),
            key: None,
            data: serde_json::json!({}),
            actor: actor("a", &[]),
        },
    );
    assert!(
        matches!(&r, Response::Refused(x) if x.code == RefusalCode::UnknownWorkflow),
        "{r:?}"
    );
    let r = node.apply(
        Some("r5"),
        3_000,
        Body::Create {
            workflow: "purchase-order".into(),
            key: Some("PO-1".into()),
            data: serde_json::json!({"amount": 1, "requester": "alice"}),
            actor: actor("alice", &[]),
        },
    );
    assert!(
        matches!(&r, Response::Refused(x) if x.code == RefusalCode::AlreadyExists),
        "{r:?}"
    );
    let r = node.apply(
        Some("r6"),
        3_000,
        Body::ApplyDefinition {
            source: "workflow: [".into(),
            provenance: Provenance::default(),
            actor: actor("a", &[]),
        },
    );
    assert!(
        matches!(&r, Response::Refused(x) if x.code == RefusalCode::DefinitionInvalid),
        "{r:?}"
    );
    assert_eq!(read::verify_audit(&*node.store).unwrap(), Ok(2));
}

#[test]
fn timers_fire_once_through_the_log() {
    let mut node = Node::new();
    define(&mut node);
    let id = create(&mut node, "r1", "PO-1");
    let due = read::next_timers(&*node.store, 1).unwrap().remove(0);
    let fire = Body::FireTimers {
        timers: vec![(id.clone(), due.id.clone())],
    };
    let late = due.due_at.as_millis() + 5;
    assert_eq!(
        node.apply(None, late, fire.clone()),
        Response::TimersFired { fired: 1, stale: 0 }
    );
    assert_eq!(
        node.apply(None, late + 1, fire),
        Response::TimersFired { fired: 0, stale: 1 },
        "a duplicate fire is a no-op"
    );
    let instance = read::instance(&*node.store, &id).unwrap().unwrap();
    assert_eq!(
        instance.state, "rejected",
        "draft expired and was abandoned"
    );
    let last = read::history(&*node.store, &id, 10).unwrap().pop().unwrap();
    let firing = last.record.timer.unwrap();
    assert_eq!(firing.lateness_ms, 5);
    assert!(read::next_timers(&*node.store, 10).unwrap().is_empty());
}

#[test]
fn cluster_time_never_runs_backwards() {
    let mut node = Node::new();
    node.apply(None, 5_000, Body::Noop);
    node.apply(None, 1_000, Body::Noop);
    let t = read::cluster_time(&*node.store).unwrap().unwrap();
    assert_eq!(t.as_micros(), 5_000_000 + 1);
}

#[test]
fn the_same_log_gives_the_same_digest() {
    let run = || {
        let mut node = Node::new();
        define(&mut node);
        create(&mut node, "r1", "PO-1");
        node.apply(Some("r2"), 3_000, submit("PO-1", "alice"));
        read::digest(&*node.store).unwrap()
    };
    assert_eq!(run(), run());
}

#[test]
fn a_worker_holds_at_most_the_lease_limit_and_a_completion_frees_one() {
    use lockstep_core::engine::LeaseToken;
    use lockstep_raft::TaskOp;
    use lockstep_raft::apply::LEASES_PER_WORKER_MAX;
    const JOBS: &str = r#"
workflow: jobs
data: { type: object }
states:
  open: { initial: true }
  working: {}
  done: { terminal: true }
transitions:
  start:
    from: open
    to: working
    allow: "true"
    effects:
      - task: { queue: q, type: t, timeout: 1h, on_complete: finish }
  finish: { from: working, to: done, allow: "actor.kind == 'worker'" }
"#;
    let mut node = Node::new();
    node.apply(
        None,
        1_000,
        Body::ApplyDefinition {
            source: JOBS.into(),
            provenance: Provenance::default(),
            actor: actor("admin", &[]),
        },
    );
    let n = LEASES_PER_WORKER_MAX as usize + 1;
    let mut tasks = Vec::new();
    for i in 0..n {
        let id = match node.apply(
            None,
            2_000,
            Body::Create {
                workflow: "jobs".into(),
                key: None,
                data: serde_json::json!({}),
                actor: actor("alice", &[]),
            },
        ) {
            Response::Applied { instance_id, .. } => instance_id,
            other => panic!("{other:?}"),
        };
        node.apply(
            None,
            2_000,
            Body::Transition {
                target: Target::Id(id.clone()),
                transition: "start".into(),
                payload: serde_json::Value::Null,
                actor: actor("alice", &[]),
                expected_version: None,
            },
        );
        let instance = read::instance(&*node.store, &id).unwrap().unwrap();
        let task_id = instance.tasks.keys().next().unwrap().clone();
        tasks.push((id, task_id, i));
    }
    let worker = Actor::new("w", ActorKind::Worker, &[]);
    let lease = |node: &mut Node, (id, task): (&str, &str), who: &Actor| {
        node.apply(
            None,
            3_000,
            Body::Task {
                instance_id: id.into(),
                task_id: task.into(),
                op: TaskOp::Lease {
                    worker: who.clone(),
                },
            },
        )
    };
    for (id, task, _) in &tasks[..n - 1] {
        let r = lease(&mut node, (id, task), &worker);
        assert!(matches!(r, Response::Applied { .. }), "{r:?}");
    }
    let (last_id, last_task, _) = &tasks[n - 1];
    match lease(&mut node, (last_id, last_task), &worker) {
        Response::Refused(r) => assert_eq!(r.code, RefusalCode::LimitExceeded, "{r:?}"),
        other => panic!("the lease over the limit was granted: {other:?}"),
    }
    // Completing one frees a slot for w.
    let (id0, task0, _) = &tasks[0];
    let r = node.apply(
        None,
        4_000,
        Body::Task {
            instance_id: id0.clone(),
            task_id: task0.clone(),
            op: TaskOp::Complete {
                token: LeaseToken {
                    term: 1,
                    attempt: 1,
                },
                result: serde_json::json!({}),
                worker: worker.clone(),
            },
        },
    );
    assert!(matches!(r, Response::Applied { .. }), "{r:?}");
    let r = lease(&mut node, (last_id, last_task), &worker);
    assert!(matches!(r, Response::Applied { .. }), "{r:?}");
}
