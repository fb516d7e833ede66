//! The apply-level test harness shared by the log-format tests: one replica's store and apply
//! cache, fed entries as a leader would commit them, and the purchase-order bodies they apply.

#![allow(dead_code)]

use std::collections::BTreeMap;

use lockstep_core::{Actor, ActorKind, Timestamp};
use lockstep_raft::apply::{Applier, ApplyCache};
use lockstep_raft::{Body, Proposal, Provenance, Response, Target, TypeConfig, read};
use lockstep_store::{Durability, MemStore, Store};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

pub const PO: &str = include_str!("../../../../examples/workflows/purchase-order.yaml");
pub const WORKFLOW: &str = "purchase-order";
pub const HOUR_MS: i64 = 3_600_000;

pub struct Replica {
    pub store: MemStore,
    pub cache: ApplyCache,
    pub index: u64,
    /// Empty the apply cache before every entry (as a snapshot install or failed write does),
    /// so counts are read back from the store.
    pub forgetful: bool,
}

impl Replica {
    pub fn new() -> Replica {
        Replica {
            store: MemStore::new(),
            cache: ApplyCache::default(),
            index: 0,
            forgetful: false,
        }
    }

    pub fn apply(&mut self, at_ms: i64, body: Body) -> Response {
        let request_id = format!("r{}", self.index + 1);
        self.apply_as(&request_id, at_ms, body)
    }

    /// Applies `body` as the next entry, a request with id `request_id`.
    pub fn apply_as(&mut self, request_id: &str, at_ms: i64, body: Body) -> Response {
        self.index += 1;
        let entry = Entry::<TypeConfig> {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), self.index),
            payload: EntryPayload::Normal(Proposal {
                request_id: Some(request_id.to_string()),
                at: Timestamp::from_millis(at_ms),
                body,
            }),
        };
        if self.forgetful {
            self.cache.clear();
        }
        let mut applier = Applier::new(&self.store, &mut self.cache);
        let response = applier.apply_entry(&entry).unwrap();
        self.store
            .write(applier.into_batch(), Durability::Buffered)
            .unwrap();
        response
    }

    pub fn counts(&self) -> BTreeMap<String, u64> {
        read::state_counts(&self.store, WORKFLOW).unwrap()
    }

    pub fn flagged(&self, flag: &str) -> Vec<String> {
        read::flagged_ids(&self.store, WORKFLOW, flag, None, 100).unwrap()
    }

    /// The business keys of the instances with `flag` (ids differ between replicas whose
    /// logs differ).
    pub fn flagged_keys(&self, flag: &str) -> Vec<String> {
        let mut keys: Vec<String> = self
            .flagged(flag)
            .iter()
            .map(|id| {
                read::instance(&self.store, id)
                    .unwrap()
                    .unwrap()
                    .key
                    .unwrap()
            })
            .collect();
        keys.sort();
        keys
    }
}

pub fn actor(id: &str, roles: &[&str]) -> Actor {
    Actor::new(id, ActorKind::Human, roles)
}

pub fn define() -> Body {
    Body::ApplyDefinition {
        source: PO.into(),
        provenance: Provenance::default(),
        actor: actor("admin", &["admin"]),
    }
}

pub fn create(key: &str) -> Body {
    Body::Create {
        workflow: WORKFLOW.into(),
        key: Some(key.into()),
        data: serde_json::json!({"amount": 100, "requester": "alice"}),
        actor: actor("alice", &[]),
    }
}

pub fn take(key: &str, transition: &str, who: Actor) -> Body {
    Body::Transition {
        target: Target::Key {
            workflow: WORKFLOW.into(),
            key: key.into(),
        },
        transition: transition.into(),
        payload: serde_json::Value::Null,
        actor: who,
        expected_version: None,
    }
}

pub fn id_of(r: &Response) -> String {
    match r {
        Response::Applied { instance_id, .. } => instance_id.clone(),
        other => panic!("expected an applied change, got {other:?}"),
    }
}

pub fn raise(replica: &mut Replica, version: u32, at: i64) {
    assert_eq!(
        replica.apply(at, Body::SetLogFormat { version }),
        Response::Empty
    );
}
