//! Applying proposals on a store: the audited, atomic write path without the network.

use std::sync::Arc;

use lockstep_core::{Actor, ActorKind, RefusalCode, Timestamp};
use lockstep_raft::apply::{Applier, ApplyCache};
use lockstep_raft::{Body, Proposal, Provenance, Response, Target, TypeConfig, read};
use lockstep_store::{Durability, MemStore, Store};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

const PO: &str = include_str!("../../../examples/workflows/purchase-order.yaml");

struct Node {
    store: Arc<MemStore>,
    cache: ApplyCache,
    index: u64,
}

impl Node {
    fn new() -> Node {
        Node {
            store: Arc::new(MemStore::new()),
            cache: ApplyCache::default(),
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
    let timers: Vec<String> = read::next_timers(&*node.store, i64::MIN, 10)
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
    let due = read::next_timers(&*node.store, i64::MIN, 1)
        .unwrap()
        .remove(0);
    let fire = Body::FireTimers {
        timers: vec![(id.clone(), due.id.clone())],
    };
    assert_eq!(
        node.apply(None, due.due_at.as_millis() - 1, fire.clone()),
        Response::TimersFired { fired: 0, stale: 1 },
        "a fire before the armed due time (one proposed for an earlier arming of the id) is a no-op"
    );
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
    assert!(
        read::next_timers(&*node.store, i64::MIN, 10)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn cluster_time_never_runs_backwards() {
    let mut node = Node::new();
    node.apply(None, 5_000, Body::Noop);
    node.apply(None, 1_000, Body::Noop);
    let t = read::cluster_time(&*node.store).unwrap().unwrap();
    assert_eq!(t.as_micros(), 5_000_000 + 1);
}

/// Meta values only apply writes (cluster time among them) are kept between apply runs and
/// not read from the store again: a value changed behind apply's back is not seen until the
/// cache is cleared (as a snapshot install does).
#[test]
fn apply_reads_its_own_meta_values_from_memory_until_the_cache_is_cleared() {
    let mut node = Node::new();
    node.apply(None, 5_000, Body::Noop);
    let behind_its_back = |node: &Node| {
        let mut batch = lockstep_store::Batch::default();
        batch.put(
            lockstep_store::Family::Meta,
            lockstep_raft::apply::meta::TIME,
            lockstep_store::envelope::encode(&Timestamp::from_millis(9_000)),
        );
        node.store.write(batch, Durability::Buffered).unwrap();
    };
    behind_its_back(&node);
    node.apply(None, 6_000, Body::Noop);
    let t = read::cluster_time(&*node.store).unwrap().unwrap();
    assert_eq!(
        t.as_millis(),
        6_000,
        "apply read the stored time, not its own"
    );
    behind_its_back(&node);
    node.cache.clear();
    node.apply(None, 7_000, Body::Noop);
    let t = read::cluster_time(&*node.store).unwrap().unwrap();
    assert_eq!(
        t.as_micros(),
        9_000_000 + 1,
        "a cleared cache reads the store"
    );
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
    use lockstep_raft::replicated::LEASES_PER_WORKER_MAX;
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

/// Version B of the purchase order: `submitted` is renamed `in_review`, and the approval SLA
/// is 8 business hours instead of 16.
fn po_v2() -> String {
    PO.replace("submitted", "in_review")
        .replace("within: 16h", "within: 8h")
}

/// Applies version B (after A); returns (version A, version B).
fn define_v2(node: &mut Node) -> (String, String) {
    let r = node.apply(
        None,
        1_500,
        Body::ApplyDefinition {
            source: po_v2(),
            provenance: Provenance::default(),
            actor: actor("admin", &[]),
        },
    );
    assert!(
        matches!(r, Response::Definition { created: true, .. }),
        "{r:?}"
    );
    let versions = read::definition_versions(&*node.store, "purchase-order").unwrap();
    (versions[0].version.clone(), versions[1].version.clone())
}

fn migrate_body(
    versions: &(String, String),
    mapping: &[(&str, &str)],
    timers: lockstep_core::TimerPolicy,
    selection: lockstep_raft::Selection,
) -> Body {
    Body::Migrate {
        plan: lockstep_core::Migration {
            workflow: "purchase-order".into(),
            from_version: versions.0.clone(),
            to_version: versions.1.clone(),
            mapping: mapping
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            timers,
        },
        selection,
        actor: actor("olga", &["admin"]),
    }
}

fn key(k: &str) -> Target {
    Target::Key {
        workflow: "purchase-order".into(),
        key: k.into(),
    }
}

/// The timer index as (instance, timer id, due) triples, and the timers the instances hold.
fn timer_index_matches_instances(node: &Node, ids: &[&str]) {
    let mut indexed: Vec<(String, String, i64)> = read::next_timers(&*node.store, i64::MIN, 1000)
        .unwrap()
        .into_iter()
        .map(|t| (t.instance_id, t.id, t.due_at.as_micros()))
        .collect();
    let mut held: Vec<(String, String, i64)> = ids
        .iter()
        .flat_map(|id| {
            read::instance(&*node.store, id)
                .unwrap()
                .unwrap()
                .timers
                .into_values()
        })
        .map(|t| (t.instance_id, t.id, t.due_at.as_micros()))
        .collect();
    indexed.sort();
    held.sort();
    assert_eq!(
        indexed, held,
        "the due-time index mirrors the instances' armed timers"
    );
}

#[test]
fn a_migration_moves_listed_instances_with_audit_indexes_and_timers() {
    use lockstep_core::{AuditKind, TimerPolicy};
    use lockstep_raft::Selection;
    let mut node = Node::new();
    define(&mut node);
    let draft = create(&mut node, "r1", "PO-1");
    let submitted = create(&mut node, "r2", "PO-2");
    node.apply(Some("r3"), 3_000, submit("PO-2", "alice"));
    let versions = define_v2(&mut node);
    let body = migrate_body(
        &versions,
        &[("submitted", "in_review")],
        TimerPolicy::Restart,
        Selection::Instances(vec![key("PO-1"), Target::Id(submitted.clone())]),
    );
    let r = node.apply(Some("m1"), 10_000, body.clone());
    let Response::Migrated { instances, next } = &r else {
        panic!("{r:?}");
    };
    assert_eq!(next, &None);
    let moved: Vec<(&str, &str, &str, u64)> = instances
        .iter()
        .map(|m| {
            (
                m.instance_id.as_str(),
                m.from_state.as_str(),
                m.to_state.as_str(),
                m.version,
            )
        })
        .collect();
    assert_eq!(
        moved,
        vec![
            (draft.as_str(), "draft", "draft", 2),
            (submitted.as_str(), "submitted", "in_review", 3)
        ]
    );
    for id in [&draft, &submitted] {
        let instance = read::instance(&*node.store, id).unwrap().unwrap();
        assert_eq!(instance.definition_version, versions.1);
        let last = read::history(&*node.store, id, 10).unwrap().pop().unwrap();
        assert_eq!(last.record.kind, AuditKind::Migration);
        assert_eq!(last.record.actor.id, "olga");
        assert_eq!(last.record.definition_version, versions.1);
        let note = last.record.note.unwrap();
        assert!(
            note.contains(&versions.0) && note.contains("submitted -> in_review"),
            "{note}"
        );
    }
    let restarted = read::instance(&*node.store, &submitted).unwrap().unwrap();
    assert_eq!(
        restarted.slas["approval"].budget_ms,
        8 * 3_600_000,
        "B's budget"
    );
    assert!(
        read::instance_ids(&*node.store, "purchase-order", Some("submitted"), None, 10)
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        read::instance_ids(&*node.store, "purchase-order", Some("in_review"), None, 10).unwrap(),
        vec![submitted.clone()]
    );
    timer_index_matches_instances(&node, &[&draft, &submitted]);
    // definition A, definition B, 2 creates, submit, 2 migrations.
    assert_eq!(read::verify_audit(&*node.store).unwrap(), Ok(7));
    // A retry with the same request id answers the first outcome and applies nothing.
    let head = read::audit_head(&*node.store).unwrap();
    assert_eq!(node.apply(Some("m1"), 11_000, body), r);
    assert_eq!(read::audit_head(&*node.store).unwrap(), head);
}

#[test]
fn every_migration_refusal_is_a_result_that_changes_nothing() {
    use lockstep_core::TimerPolicy;
    use lockstep_raft::Selection;
    let mut node = Node::new();
    define(&mut node);
    let draft = create(&mut node, "r1", "PO-1");
    let submitted = create(&mut node, "r2", "PO-2");
    node.apply(Some("r3"), 3_000, submit("PO-2", "alice"));
    let versions = define_v2(&mut node);
    // Created after B was applied: it runs B.
    let on_b = create(&mut node, "r4", "PO-3");
    let ids = [draft.as_str(), submitted.as_str(), on_b.as_str()];
    let snapshot = |node: &Node| {
        (
            ids.map(|id| read::instance(&*node.store, id).unwrap()),
            read::audit_head(&*node.store).unwrap(),
            read::next_timers(&*node.store, i64::MIN, 1000).unwrap(),
        )
    };
    let before = snapshot(&node);
    let renamed = [("submitted", "in_review")];
    let mut check = |body: Body, code: RefusalCode, needle: &str| {
        match node.apply(None, 5_000, body) {
            Response::Refused(r) => {
                assert_eq!(r.code, code, "{r:?}");
                assert!(
                    r.message.contains(needle),
                    "`{needle}` missing: {}",
                    r.message
                );
            }
            other => panic!("expected {code:?}, got {other:?}"),
        }
        assert!(
            snapshot(&node) == before,
            "a refusal changed state ({code:?})"
        );
    };
    let mut unknown_workflow = migrate_body(
        &versions,
        &renamed,
        TimerPolicy::Restart,
        Selection::Instances(vec![key("PO-1")]),
    );
    if let Body::Migrate { plan, .. } = &mut unknown_workflow {
        plan.workflow = "no-such-workflow".into();
    }
    check(
        unknown_workflow,
        RefusalCode::UnknownWorkflow,
        "no-such-workflow",
    );
    let missing = ("f".repeat(64), versions.1.clone());
    check(
        migrate_body(
            &missing,
            &renamed,
            TimerPolicy::Restart,
            Selection::Instances(vec![key("PO-1")]),
        ),
        RefusalCode::UnknownVersion,
        "ffff",
    );
    let missing = (versions.0.clone(), "0".repeat(64));
    check(
        migrate_body(
            &missing,
            &renamed,
            TimerPolicy::Restart,
            Selection::Instances(vec![key("PO-1")]),
        ),
        RefusalCode::UnknownVersion,
        "0000",
    );
    check(
        migrate_body(
            &versions,
            &renamed,
            TimerPolicy::Restart,
            Selection::Instances(vec![key("PO-404")]),
        ),
        RefusalCode::UnknownInstance,
        "PO-404",
    );
    check(
        migrate_body(
            &versions,
            &renamed,
            TimerPolicy::Restart,
            Selection::Instances(vec![Target::Id(on_b.clone())]),
        ),
        RefusalCode::WrongWorkflow,
        "already runs the target version",
    );
    check(
        migrate_body(
            &versions,
            &[("submited", "in_review")],
            TimerPolicy::Restart,
            Selection::Instances(vec![key("PO-1")]),
        ),
        RefusalCode::MigrationInvalid,
        "`submited`",
    );
    check(
        migrate_body(
            &versions,
            &[("submitted", "reviewing")],
            TimerPolicy::KeepDeadline,
            Selection::Instances(vec![key("PO-1")]),
        ),
        RefusalCode::MigrationInvalid,
        "`submitted` to `reviewing`",
    );
    check(
        migrate_body(
            &versions,
            &[("rejected", "in_review")],
            TimerPolicy::KeepDeadline,
            Selection::Instances(vec![key("PO-1")]),
        ),
        RefusalCode::MigrationInvalid,
        "cannot reopen",
    );
    // All or nothing: PO-1 alone would migrate, PO-2 has no counterpart for `submitted`.
    check(
        migrate_body(
            &versions,
            &[],
            TimerPolicy::KeepRemaining,
            Selection::Instances(vec![key("PO-1"), key("PO-2")]),
        ),
        RefusalCode::MigrationInvalid,
        "state `submitted`",
    );
    check(
        migrate_body(
            &versions,
            &[],
            TimerPolicy::KeepRemaining,
            Selection::Instances(Vec::new()),
        ),
        RefusalCode::MigrationInvalid,
        "names no instance",
    );
    let too_many = (0..=lockstep_raft::replicated::MIGRATION_INSTANCES_MAX)
        .map(|_| key("PO-1"))
        .collect();
    check(
        migrate_body(
            &versions,
            &renamed,
            TimerPolicy::Restart,
            Selection::Instances(too_many),
        ),
        RefusalCode::LimitExceeded,
        "MIGRATION_INSTANCES_MAX",
    );
    check(
        migrate_body(
            &(versions.1.clone(), versions.1.clone()),
            &[],
            TimerPolicy::Restart,
            Selection::Instances(vec![key("PO-3")]),
        ),
        RefusalCode::MigrationInvalid,
        "same version",
    );
    assert_eq!(read::verify_audit(&*node.store).unwrap(), Ok(6));
}

#[test]
fn migrating_all_instances_goes_in_bounded_batches_until_none_remain() {
    use lockstep_core::TimerPolicy;
    use lockstep_raft::Selection;
    use lockstep_raft::replicated::MIGRATION_INSTANCES_MAX;
    let mut node = Node::new();
    define(&mut node);
    // Instances on A, created before B became the latest version, are found by version.
    let mut on_a = Vec::new();
    let total = MIGRATION_INSTANCES_MAX + 6;
    for i in 0..total {
        on_a.push(create(&mut node, &format!("a{i}"), &format!("PO-A{i:03}")));
    }
    let versions = define_v2(&mut node);
    let on_b = create(&mut node, "b", "PO-B");
    let mut after = None;
    let mut batches = Vec::new();
    loop {
        let body = migrate_body(
            &versions,
            &[("submitted", "in_review")],
            TimerPolicy::KeepDeadline,
            Selection::All {
                after: after.clone(),
            },
        );
        let r = node.apply(None, 10_000, body);
        let Response::Migrated { instances, next } = r else {
            panic!("{r:?}");
        };
        batches.push(instances.len());
        assert!(batches.len() <= 3, "{batches:?}");
        match next {
            Some(cursor) => after = Some(cursor),
            None => break,
        }
    }
    assert_eq!(
        batches,
        vec![MIGRATION_INSTANCES_MAX, total - MIGRATION_INSTANCES_MAX]
    );
    for id in &on_a {
        let instance = read::instance(&*node.store, id).unwrap().unwrap();
        assert_eq!(instance.definition_version, versions.1, "{id}");
        assert_eq!(instance.version, 2, "{id} migrated once");
    }
    assert_eq!(
        read::instance(&*node.store, &on_b)
            .unwrap()
            .unwrap()
            .version,
        1
    );
    // Nothing is left at A: a new pass migrates nothing and is done at once.
    let r = node.apply(
        None,
        11_000,
        migrate_body(
            &versions,
            &[],
            TimerPolicy::Restart,
            Selection::All { after: None },
        ),
    );
    assert_eq!(
        r,
        Response::Migrated {
            instances: Vec::new(),
            next: None
        }
    );
    let mut ids: Vec<&str> = on_a.iter().map(String::as_str).collect();
    ids.push(&on_b);
    timer_index_matches_instances(&node, &ids);
    assert!(read::verify_audit(&*node.store).unwrap().is_ok());
}
