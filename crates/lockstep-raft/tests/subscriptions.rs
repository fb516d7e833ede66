//! Webhook subscriptions as every replica applies them (log format 8): refusals are results,
//! cursors only move forward, an operator's pause stands, and progress of another generation
//! (a deleted namesake's task, or from before a resume) changes nothing.

mod common;

use common::*;
use lockstep_core::RefusalCode;
use lockstep_core::subscription::{Filter, Subscription};
use lockstep_raft::{Body, DeliveryProgress, Response, SubscriptionOp, read};

fn create_op(name: &str) -> Body {
    Body::Subscriptions(SubscriptionOp::Create {
        name: name.into(),
        url: "https://hooks.example/x".into(),
        filter: Filter::default(),
        secret: "pager".into(),
        start_after: None,
        actor: actor("admin", &["admin"]),
    })
}

fn progress(name: &str, generation: i64, cursor: u64, error: Option<&str>, pause: bool) -> Body {
    Body::Subscriptions(SubscriptionOp::Progress {
        updates: vec![DeliveryProgress {
            name: name.into(),
            generation,
            cursor,
            error: error.map(str::to_string),
            pause,
        }],
    })
}

fn subscription(r: Response) -> Subscription {
    match r {
        Response::Subscription(s) => *s,
        other => panic!("expected a subscription, got {other:?}"),
    }
}

fn refusal(r: Response) -> RefusalCode {
    match r {
        Response::Refused(r) => r.code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn stored(replica: &Replica, name: &str) -> Subscription {
    read::subscription(&replica.store, name).unwrap().unwrap()
}

#[test]
fn subscriptions_are_created_moved_paused_resumed_and_deleted_deterministically() {
    let mut replica = Replica::new();
    raise(&mut replica, 8, 500);
    replica.apply(1_000, define());
    replica.apply(1_001, create("A"));
    let s = subscription(replica.apply(2_000, create_op("pager")));
    // Records from now on: its own creation is the first one (audited, not instance-bound).
    let head = read::audit_head(&replica.store).unwrap().seq;
    assert_eq!(s.cursor + 1, head, "new records only");
    let created = read::audit_record(&replica.store, head).unwrap().unwrap();
    assert_eq!(
        created.record.kind,
        lockstep_core::AuditKind::SubscriptionChanged
    );
    assert_eq!(created.record.transition.as_deref(), Some("create"));
    assert!(
        created
            .record
            .note
            .as_deref()
            .unwrap()
            .contains("https://hooks.example/x")
    );
    let first = s.generation;

    // Refusals change nothing.
    assert_eq!(
        refusal(replica.apply(2_001, create_op("pager"))),
        RefusalCode::AlreadyExists
    );
    assert_eq!(
        refusal(replica.apply(2_002, create_op("Bad Name"))),
        RefusalCode::PayloadInvalid
    );
    let unknown = Body::Subscriptions(SubscriptionOp::Resume {
        name: "nope".into(),
        actor: actor("admin", &["admin"]),
    });
    assert_eq!(
        refusal(replica.apply(2_003, unknown)),
        RefusalCode::UnknownSubscription
    );

    // The cursor only moves forward; an error is kept until a clean progress.
    replica.apply(
        3_000,
        progress("pager", first, 10, Some("answered 500"), false),
    );
    replica.apply(3_001, progress("pager", first, 7, None, false));
    let now = stored(&replica, "pager");
    assert_eq!((now.cursor, now.last_error.as_deref()), (10, None));
    // Cursor moves are not audited.
    assert_eq!(read::audit_head(&replica.store).unwrap().seq, head);
    // Progress of another generation is ignored.
    replica.apply(3_002, progress("pager", first + 1, 50, Some("x"), true));
    assert_eq!(stored(&replica, "pager").cursor, 10);
    assert!(stored(&replica, "pager").paused.is_none());

    // Delivery gives up: paused by system:webhooks with its error.
    replica.apply(
        4_000,
        progress("pager", first, 12, Some("12 attempts failed"), true),
    );
    let paused = stored(&replica, "pager");
    let p = paused.paused.clone().unwrap();
    assert_eq!(
        (p.by.as_str(), p.reason.as_str()),
        ("system:webhooks", "12 attempts failed")
    );
    let audited = read::audit_record(&replica.store, head + 1)
        .unwrap()
        .unwrap();
    assert_eq!(audited.record.transition.as_deref(), Some("pause"));
    assert_eq!(audited.record.actor.id, "system:webhooks");
    // A resume starts a new generation: the old task's late progress changes nothing.
    let resume = Body::Subscriptions(SubscriptionOp::Resume {
        name: "pager".into(),
        actor: actor("admin", &["admin"]),
    });
    let resumed = subscription(replica.apply(5_000, resume));
    assert!(resumed.paused.is_none() && resumed.last_error.is_none());
    assert_ne!(resumed.generation, first);
    replica.apply(5_001, progress("pager", first, 30, Some("late"), true));
    let after = stored(&replica, "pager");
    assert!(after.paused.is_none() && after.cursor == 12, "{after:?}");

    // An operator's pause stands against the delivery's progress, which still moves the
    // cursor over what it delivered.
    let pause = Body::Subscriptions(SubscriptionOp::Pause {
        name: "pager".into(),
        reason: "maintenance".into(),
        actor: actor("olga", &["admin"]),
    });
    replica.apply(6_000, pause);
    replica.apply(
        6_001,
        progress("pager", resumed.generation, 14, None, false),
    );
    let kept = stored(&replica, "pager");
    assert_eq!(kept.paused.unwrap().by, "olga");
    assert_eq!(kept.cursor, 14);

    // Deleted, then created again: the old task's progress does not touch the new one.
    let delete = Body::Subscriptions(SubscriptionOp::Delete {
        name: "pager".into(),
        actor: actor("admin", &["admin"]),
    });
    assert_eq!(subscription(replica.apply(7_000, delete)).cursor, 14);
    let again = subscription(replica.apply(7_001, create_op("pager")));
    replica.apply(
        7_002,
        progress("pager", resumed.generation, 99, Some("old"), true),
    );
    let new = stored(&replica, "pager");
    assert_eq!(
        (new.cursor, new.paused, new.generation),
        (again.cursor, None, again.generation)
    );

    // Another replica applying the same entries holds the same state.
    let mut other = Replica::new();
    let mut mine = Replica::new();
    for r in [&mut other, &mut mine] {
        raise(r, 8, 500);
        r.apply(1_000, define());
        r.apply(2_000, create_op("pager"));
        r.apply(3_000, progress("pager", 2_000_000, 1, None, false));
    }
    assert_eq!(
        read::digest(&other.store).unwrap(),
        read::digest(&mine.store).unwrap()
    );
}
