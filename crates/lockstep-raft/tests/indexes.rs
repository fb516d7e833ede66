//! Log format 4 at the apply level: the list indexes (instances by SLA status and open
//! incident) and the counts per state and per flag, built for the instances already stored by
//! the entry that raises the format, then kept by every apply — the same on a replica that
//! lived through the raise and on one that applied everything after it.

mod common;

use std::collections::BTreeMap;

use common::*;
use lockstep_core::Timestamp;
use lockstep_raft::format::{LOG_FORMAT_INDEXES, LOG_FORMAT_LEASE_GUARD};
use lockstep_raft::{Body, read};

/// Three orders: one draft, one submitted (its approval SLA running), one approved.
fn orders(replica: &mut Replica, at: i64) -> (String, String, String) {
    let draft = id_of(&replica.apply(at, create("A")));
    let submitted = id_of(&replica.apply(at + 1, create("B")));
    replica.apply(at + 2, take("B", "submit", actor("alice", &[])));
    let approved = id_of(&replica.apply(at + 3, create("C")));
    replica.apply(at + 4, take("C", "submit", actor("alice", &[])));
    replica.apply(at + 5, take("C", "approve", actor("bob", &["approver"])));
    (draft, submitted, approved)
}

#[test]
fn raising_the_format_builds_the_indexes_of_stored_instances_and_apply_keeps_them() {
    let mut replica = Replica::new();
    replica.apply(1_000, define());
    raise(&mut replica, LOG_FORMAT_LEASE_GUARD, 1_100);
    let (draft, submitted, approved) = orders(&mut replica, 2_000);
    assert!(!read::indexes_kept(&replica.store).unwrap());
    assert!(replica.counts().is_empty(), "no counts before format 4");

    raise(&mut replica, LOG_FORMAT_INDEXES, 3_000);
    assert!(read::indexes_kept(&replica.store).unwrap());
    let want = BTreeMap::from([
        ("draft".to_string(), 1),
        ("submitted".to_string(), 1),
        ("approved".to_string(), 1),
    ]);
    assert_eq!(replica.counts(), want);
    assert_eq!(replica.flagged("sla:running"), vec![submitted.clone()]);
    assert_eq!(replica.flagged("sla:stopped"), vec![approved.clone()]);
    assert_eq!(
        read::flag_count(&replica.store, WORKFLOW, "sla:running").unwrap(),
        1
    );

    // Apply keeps them: the draft is submitted (a second running SLA), then its approval
    // breaches (16 business hours later; the breach timer fires and escalates).
    replica.apply(4_000, take("A", "submit", actor("alice", &[])));
    assert_eq!(replica.counts().get("submitted"), Some(&2));
    assert_eq!(
        replica.counts().get("draft"),
        None,
        "a state emptied has no count"
    );
    let mut running = vec![draft.clone(), submitted.clone()];
    running.sort();
    assert_eq!(replica.flagged("sla:running"), running);

    let late = 4_000 + 24 * 7 * HOUR_MS;
    let timers = read::due_timers(&replica.store, i64::MIN, Timestamp::from_millis(late), 100)
        .unwrap()
        .into_iter()
        .filter(|t| t.instance_id == draft)
        .map(|t| (t.instance_id, t.id))
        .collect::<Vec<_>>();
    assert!(!timers.is_empty(), "the draft's SLA timers are armed");
    replica.apply(late, Body::FireTimers { timers });
    assert_eq!(replica.flagged("sla:breached"), vec![draft.clone()]);
    assert_eq!(replica.counts().get("escalated"), Some(&1));
    assert_eq!(
        read::flag_count(&replica.store, WORKFLOW, "sla:breached").unwrap(),
        1
    );
    assert!(
        replica.flagged("sla:warned").is_empty(),
        "breached is not also warned"
    );
}

#[test]
fn a_replica_that_applied_after_the_raise_holds_the_same_indexes() {
    // One replica raises the format with orders stored; the other raises it first.
    let mut before = Replica::new();
    before.apply(1_000, define());
    orders(&mut before, 2_000);
    raise(&mut before, LOG_FORMAT_INDEXES, 3_000);

    let mut after = Replica::new();
    after.apply(1_000, define());
    raise(&mut after, LOG_FORMAT_INDEXES, 1_500);
    orders(&mut after, 2_000);

    assert_eq!(before.counts(), after.counts());
    for flag in read::FLAGS {
        assert_eq!(
            before.flagged_keys(flag),
            after.flagged_keys(flag),
            "{flag}"
        );
    }
}

#[test]
fn counts_kept_in_the_apply_cache_match_counts_read_from_the_store() {
    let run = |forgetful: bool| {
        let mut replica = Replica::new();
        replica.forgetful = forgetful;
        replica.apply(1_000, define());
        raise(&mut replica, LOG_FORMAT_INDEXES, 1_500);
        orders(&mut replica, 2_000);
        replica.apply(3_000, take("A", "submit", actor("alice", &[])));
        replica.apply(3_001, take("B", "approve", actor("bob", &["approver"])));
        replica.counts()
    };
    let cached = run(false);
    assert_eq!(cached, run(true));
    assert_eq!(cached.get("approved"), Some(&2), "{cached:?}");
    assert_eq!(cached.get("submitted"), Some(&1), "{cached:?}");
}
