//! Replicas group committed entries into apply runs differently (a leader applies a few at a
//! time, a follower catching up after a restart applies many in one run), so the state an
//! entry sees must not depend on the grouping: the same log applied one entry per run and all
//! in one run gives the same state digest. Found by deploy/test: a node restarted after
//! `docker kill` applied a task-creating transition and the outbox acknowledgement in one run,
//! kept an outbox item the others had deleted, and its digest differed.

use lockstep_core::{Actor, ActorKind, Timestamp};
use lockstep_raft::apply::{Applier, ApplyCache};
use lockstep_raft::{Body, Proposal, Provenance, Target, TypeConfig, read};
use lockstep_store::{Durability, MemStore, Store};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

const PO: &str = include_str!("../../../examples/workflows/purchase-order.yaml");

fn actor(id: &str, roles: &[&str]) -> Actor {
    Actor::new(id, ActorKind::Human, roles)
}

fn transition(key: &str, name: &str, who: Actor) -> Body {
    Body::Transition {
        target: Target::Key {
            workflow: "purchase-order".into(),
            key: key.into(),
        },
        transition: name.into(),
        payload: serde_json::Value::Null,
        actor: who,
        expected_version: None,
    }
}

/// Definition, two orders approved (each approval puts a task on the outbox), and outbox
/// acknowledgements, one of them covering items appended just before it.
fn log() -> Vec<Entry<TypeConfig>> {
    let mut bodies = vec![Body::ApplyDefinition {
        source: PO.into(),
        provenance: Provenance {
            repository: "repo".into(),
            commit: "abc".into(),
            path: "po.yaml".into(),
        },
        actor: actor("admin", &[]),
    }];
    for key in ["PO-1", "PO-2"] {
        bodies.push(Body::Create {
            workflow: "purchase-order".into(),
            key: Some(key.into()),
            data: serde_json::json!({"amount": 100, "requester": "alice"}),
            actor: actor("alice", &[]),
        });
        bodies.push(transition(key, "submit", actor("alice", &[])));
        bodies.push(transition(key, "approve", actor("bob", &["approver"])));
    }
    bodies.push(Body::AckOutbox { through: 1 });
    bodies.push(Body::AckOutbox { through: 1_000 });
    bodies
        .into_iter()
        .enumerate()
        .map(|(i, body)| Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), i as u64 + 1),
            payload: EntryPayload::Normal(Proposal {
                request_id: Some(format!("r{i}")),
                at: Timestamp::from_millis(1_000 + i as i64),
                body,
            }),
        })
        .collect()
}

/// Applies `log` in runs of `run` entries; returns the store.
fn apply_in_runs(log: &[Entry<TypeConfig>], run: usize) -> MemStore {
    let store = MemStore::new();
    let mut cache = ApplyCache::default();
    for chunk in log.chunks(run) {
        let mut applier = Applier::new(&store, &mut cache);
        for entry in chunk {
            applier.apply_entry(entry).unwrap();
        }
        store
            .write(applier.into_batch(), Durability::Buffered)
            .unwrap();
    }
    store
}

#[test]
fn the_grouping_of_entries_into_apply_runs_changes_nothing() {
    let log = log();
    // Before the acknowledgements, both approvals left an item on the outbox.
    let unacked = apply_in_runs(&log[..log.len() - 2], 1);
    assert_eq!(read::outbox(&unacked, 0, 100).unwrap().len(), 2);

    let one_by_one = apply_in_runs(&log, 1);
    assert!(read::outbox(&one_by_one, 0, 100).unwrap().is_empty());
    assert_eq!(read::outbox_acked(&one_by_one).unwrap(), 1_000);
    let expected = read::digest(&one_by_one).unwrap();
    for run in [2, 3, 4, log.len()] {
        let store = apply_in_runs(&log, run);
        assert!(
            read::outbox(&store, 0, 100).unwrap().is_empty(),
            "runs of {run}: the acknowledgement missed items appended in its own run"
        );
        assert_eq!(
            read::digest(&store).unwrap(),
            expected,
            "runs of {run} entries"
        );
    }
}
