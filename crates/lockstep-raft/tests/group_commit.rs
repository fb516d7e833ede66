//! Log formats 2 and 3 at the apply level: group-commit batches and request digests (format
//! 2) and the lease-expiry guard (format 3), each switched on by the replicated
//! `SetLogFormat` entry (the cluster-version gate), and older logs applied exactly as before.

use lockstep_core::engine::LeaseToken;
use lockstep_core::{Actor, ActorKind, RefusalCode, Timestamp};
use lockstep_raft::apply::{Applier, ApplyCache};
use lockstep_raft::format::{LOG_FORMAT_BATCHES, LOG_FORMAT_INITIAL, LOG_FORMAT_LEASE_GUARD};
use lockstep_raft::{Body, Proposal, Provenance, Response, Target, TaskOp, TypeConfig, read};
use lockstep_store::{Durability, MemStore, Store};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

const PO: &str = include_str!("../../../examples/workflows/purchase-order.yaml");

struct Replica {
    store: MemStore,
    cache: ApplyCache,
    index: u64,
}

impl Replica {
    fn new() -> Replica {
        let mut replica = Replica {
            store: MemStore::new(),
            cache: ApplyCache::default(),
            index: 0,
        };
        let define = Body::ApplyDefinition {
            source: PO.into(),
            provenance: Provenance {
                repository: "repo".into(),
                commit: "abc".into(),
                path: "po.yaml".into(),
            },
            actor: actor("admin"),
        };
        replica.apply(proposal(Some("def"), 1_000, define));
        replica
    }

    fn apply(&mut self, proposal: Proposal) -> Response {
        self.index += 1;
        let entry = Entry::<TypeConfig> {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), self.index),
            payload: EntryPayload::Normal(proposal),
        };
        let mut applier = Applier::new(&self.store, &mut self.cache);
        let response = applier.apply_entry(&entry).unwrap();
        self.store
            .write(applier.into_batch(), Durability::Buffered)
            .unwrap();
        response
    }

    fn raise_format(&mut self) {
        self.raise_format_to(LOG_FORMAT_BATCHES, 1_500);
    }

    fn raise_format_to(&mut self, version: u32, at_ms: i64) {
        let raise = Body::SetLogFormat { version };
        assert_eq!(self.apply(proposal(None, at_ms, raise)), Response::Empty);
        assert_eq!(read::log_format(&self.store).unwrap().0, version);
    }
}

fn actor(id: &str) -> Actor {
    Actor::new(id, ActorKind::Human, &[] as &[&str])
}

fn proposal(request_id: Option<&str>, at_ms: i64, body: Body) -> Proposal {
    Proposal {
        request_id: request_id.map(str::to_owned),
        at: Timestamp::from_millis(at_ms),
        body,
    }
}

fn create(key: &str) -> Body {
    Body::Create {
        workflow: "purchase-order".into(),
        key: Some(key.into()),
        data: serde_json::json!({"amount": 100, "requester": "alice"}),
        actor: actor("alice"),
    }
}

fn submit(key: &str) -> Body {
    Body::Transition {
        target: Target::Key {
            workflow: "purchase-order".into(),
            key: key.into(),
        },
        transition: "submit".into(),
        payload: serde_json::Value::Null,
        actor: actor("alice"),
        expected_version: None,
    }
}

fn applied(r: &Response) -> (String, u64, u64) {
    match r {
        Response::Applied {
            instance_id,
            version,
            global_seq,
            ..
        } => (instance_id.clone(), *version, *global_seq),
        other => panic!("expected an applied change, got {other:?}"),
    }
}

fn refusal(r: &Response) -> (RefusalCode, String) {
    match r {
        Response::Refused(r) => (r.code, r.message.clone()),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_batch_applies_each_request_in_order_with_its_own_id_outcome_audit_and_time() {
    let mut replica = Replica::new();
    replica.raise_format();
    let batch = Body::Batch(vec![
        proposal(Some("r1"), 2_000, create("K1")),
        proposal(Some("r2"), 2_000, create("K2")),
        // Sees K1 created by the same entry.
        proposal(Some("r3"), 1_999, submit("K1")),
        // Refused (the key exists): a result inside the batch, the others still apply.
        proposal(Some("r4"), 2_001, create("K1")),
        proposal(None, 2_002, Body::Noop),
    ]);
    let responses = match replica.apply(proposal(None, 2_000, batch)) {
        Response::Batch(responses) => responses,
        other => panic!("{other:?}"),
    };
    assert_eq!(responses.len(), 5);
    let (k1, _, seq1) = applied(&responses[0]);
    let (k2, _, seq2) = applied(&responses[1]);
    let (submitted, version, seq3) = applied(&responses[2]);
    assert_eq!(refusal(&responses[3]).0, RefusalCode::AlreadyExists);
    assert_eq!(responses[4], Response::Empty);
    // Instance ids are unique within the entry; the first keeps the format-1 spelling.
    assert_eq!(k1, format!("i-{}", replica.index));
    assert_eq!(k2, format!("i-{}-1", replica.index));
    assert_eq!((submitted, version), (k1.clone(), 2));
    assert_eq!((seq2, seq3), (seq1 + 1, seq1 + 2));
    // Cluster time is strictly increasing across the requests of a batch, whatever they
    // were stamped with.
    let history = read::history(&replica.store, &k1, 10).unwrap();
    assert_eq!(history.len(), 2);
    assert!(history[1].record.at > history[0].record.at, "{history:?}");
    assert!(read::verify_audit(&replica.store).unwrap().is_ok());
    // Each request has its own dedup entry: a retry of r2 outside the batch answers the same.
    assert_eq!(
        replica.apply(proposal(Some("r2"), 3_000, create("K2"))),
        responses[1]
    );
}

#[test]
fn a_request_id_names_one_request() {
    let mut replica = Replica::new();
    replica.raise_format();
    let first = replica.apply(proposal(Some("fixed-1"), 2_000, create("K1")));
    let (k1, _, _) = applied(&first);
    // The same request again: the first outcome, applied once.
    assert_eq!(
        replica.apply(proposal(Some("fixed-1"), 2_100, create("K1"))),
        first
    );
    // Another request under the same id: refused, nothing created.
    let (code, message) = refusal(&replica.apply(proposal(Some("fixed-1"), 2_200, create("K2"))));
    assert_eq!(code, RefusalCode::RequestIdReused);
    assert!(message.contains("create of purchase-order/K1"), "{message}");
    assert!(
        read::instance_id_by_key(&replica.store, "purchase-order", "K2")
            .unwrap()
            .is_none()
    );
    let (code, message) = refusal(&replica.apply(proposal(Some("fixed-1"), 2_300, submit("K1"))));
    assert_eq!(code, RefusalCode::RequestIdReused);
    assert!(message.contains("request id `fixed-1`"), "{message}");
    let instance = read::instance(&replica.store, &k1).unwrap().unwrap();
    assert_eq!((instance.state.as_str(), instance.version), ("draft", 1));
    // The refusals wrote no audit record: the definition and K1's creation only.
    assert_eq!(read::audit_head(&replica.store).unwrap().seq, 2);
}

#[test]
fn a_format_1_log_keeps_its_old_behaviour_until_the_format_is_raised() {
    let mut replica = Replica::new();
    assert_eq!(
        read::log_format(&replica.store).unwrap().0,
        LOG_FORMAT_INITIAL
    );
    let first = replica.apply(proposal(Some("fixed-1"), 2_000, create("K1")));
    // Format 1 stored no digest: the same id answers the first outcome, as it always did.
    assert_eq!(
        replica.apply(proposal(Some("fixed-1"), 2_100, create("K2"))),
        first
    );
    replica.raise_format();
    // The format-1 entry still has no digest to compare; new entries do.
    assert_eq!(
        replica.apply(proposal(Some("fixed-1"), 2_200, create("K3"))),
        first
    );
    replica.apply(proposal(Some("fixed-2"), 2_300, create("K4")));
    let (code, _) = refusal(&replica.apply(proposal(Some("fixed-2"), 2_400, create("K5"))));
    assert_eq!(code, RefusalCode::RequestIdReused);
}

#[test]
fn replicas_applying_the_same_batches_in_different_runs_are_identical() {
    let log: Vec<Proposal> = vec![
        proposal(None, 1_500, Body::SetLogFormat { version: 2 }),
        proposal(
            None,
            2_000,
            Body::Batch(vec![
                proposal(Some("a"), 2_000, create("A")),
                proposal(Some("b"), 2_000, create("B")),
            ]),
        ),
        proposal(
            None,
            2_100,
            Body::Batch(vec![
                proposal(Some("c"), 2_100, submit("A")),
                proposal(Some("d"), 2_100, submit("B")),
            ]),
        ),
    ];
    let mut one_by_one = Replica::new();
    for p in log.clone() {
        one_by_one.apply(p);
    }
    let mut all_at_once = Replica::new();
    let mut applier = Applier::new(&all_at_once.store, &mut all_at_once.cache);
    for (i, p) in log.into_iter().enumerate() {
        let entry = Entry::<TypeConfig> {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), 2 + i as u64),
            payload: EntryPayload::Normal(p),
        };
        applier.apply_entry(&entry).unwrap();
    }
    let batch = applier.into_batch();
    all_at_once
        .store
        .write(batch, Durability::Buffered)
        .unwrap();
    assert_eq!(
        read::digest(&one_by_one.store).unwrap(),
        read::digest(&all_at_once.store).unwrap()
    );
}

#[test]
fn format_2_entries_are_written_in_envelope_version_2_and_older_ones_in_version_1() {
    use lockstep_raft::log_store::encode_entry;
    use lockstep_store::envelope;
    let entry = |body| Entry::<TypeConfig> {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), 7),
        payload: EntryPayload::Normal(proposal(None, 1, body)),
    };
    let old = encode_entry(&entry(Body::Noop));
    let new = encode_entry(&entry(Body::Batch(vec![proposal(
        Some("x"),
        1,
        Body::Noop,
    )])));
    assert_eq!(envelope::version_of(&old), Some(1));
    assert_eq!(envelope::version_of(&new), Some(2));
    let back: Entry<TypeConfig> =
        envelope::decode(lockstep_store::Family::RaftLog, b"k", &new).unwrap();
    match back.payload {
        EntryPayload::Normal(p) => {
            assert_eq!(
                p.body,
                Body::Batch(vec![proposal(Some("x"), 1, Body::Noop)])
            )
        }
        other => panic!("{other:?}"),
    }
}

/// Creates, submits and approves `key` (approval starts the `erp` task, timeout 30 s) and has
/// worker `w1` lease the task at `at_ms`: the task's id and the lease token.
fn leased_task(replica: &mut Replica, key: &str, at_ms: i64) -> (String, String, LeaseToken) {
    let (id, _, _) = applied(&replica.apply(proposal(None, at_ms - 30, create(key))));
    applied(&replica.apply(proposal(None, at_ms - 20, submit(key))));
    let approve = Body::Transition {
        target: Target::Id(id.clone()),
        transition: "approve".into(),
        payload: serde_json::Value::Null,
        actor: Actor::new("bob", ActorKind::Human, &["approver"]),
        expected_version: None,
    };
    applied(&replica.apply(proposal(None, at_ms - 10, approve)));
    let instance = read::instance(&replica.store, &id).unwrap().unwrap();
    let task_id = instance
        .tasks
        .keys()
        .next()
        .expect("approve starts a task")
        .clone();
    let lease = Body::Task {
        instance_id: id.clone(),
        task_id: task_id.clone(),
        op: TaskOp::Lease { worker: worker() },
    };
    applied(&replica.apply(proposal(None, at_ms, lease)));
    let instance = read::instance(&replica.store, &id).unwrap().unwrap();
    let token = instance.tasks[&task_id].lease.expect("leased");
    (id, task_id, token)
}

fn worker() -> Actor {
    Actor::new("w1", ActorKind::Worker, &[] as &[&str])
}

fn complete(instance_id: &str, task_id: &str, token: &LeaseToken) -> Body {
    Body::Task {
        instance_id: instance_id.into(),
        task_id: task_id.into(),
        op: TaskOp::Complete {
            token: *token,
            result: serde_json::json!({"po_number": "PO-1"}),
            worker: worker(),
        },
    }
}

/// Format 3 refuses a completion whose lease expired at its cluster time, though the
/// lease-expiry timer has not fired; a format-2 log, replayed by this build, still accepts
/// it as the build that wrote it did, so replicas of both builds agree.
#[test]
fn the_lease_expiry_guard_holds_from_format_3_and_older_logs_keep_their_decisions() {
    let mut replica = Replica::new();
    replica.raise_format();
    // Format 2: leased at 10 s, the 30 s lease expires at 40 s; completed at 41 s.
    let (old, old_task, old_token) = leased_task(&mut replica, "K-OLD", 10_000);
    let late = replica.apply(proposal(
        None,
        41_000,
        complete(&old, &old_task, &old_token),
    ));
    assert_eq!(applied(&late).0, old, "format 2 accepted a late completion");
    replica.raise_format_to(LOG_FORMAT_LEASE_GUARD, 41_500);
    // Format 3: leased at 50 s, expires at 80 s.
    let (id, task, token) = leased_task(&mut replica, "K-NEW", 50_000);
    let before = read::instance(&replica.store, &id).unwrap().unwrap();
    let (code, message) =
        refusal(&replica.apply(proposal(None, 80_000, complete(&id, &task, &token))));
    assert_eq!(code, RefusalCode::StaleLease, "{message}");
    assert!(message.contains("expired at"), "{message}");
    assert!(message.contains("timeout (30s)"), "{message}");
    // A refusal changes nothing: same version, still leased.
    let after = read::instance(&replica.store, &id).unwrap().unwrap();
    assert_eq!(after, before);
    // Within its lease the holder still completes (a fresh task, leased at 90 s).
    let (id, task, token) = leased_task(&mut replica, "K-IN-TIME", 90_000);
    let done = replica.apply(proposal(None, 119_999, complete(&id, &task, &token)));
    assert_eq!(applied(&done).0, id);
}
