//! Log format 5 at the apply level: from the entry that raises the format on, apply writes
//! the command behind every instance record (creation data, payloads, routed events, timer
//! fires with their due times, migrations) in the same batch, identically on every replica;
//! replaying a journal under the version that wrote it reproduces the instance exactly; a
//! redaction (format 7) erases the named fields from the journal too.

mod common;

use std::collections::BTreeMap;

use common::*;
use lockstep_core::journal::{JournalEntry, JournalStep, replay};
use lockstep_core::{Command, Limits, Migration, TimerPolicy, Timestamp, compile};
use lockstep_raft::format::{LOG_FORMAT_INDEXES, LOG_FORMAT_JOURNAL, LOG_FORMAT_REDACT};
use lockstep_raft::{Body, Response, Selection, Target, read};

fn journal(replica: &Replica, id: &str) -> Vec<(u64, JournalEntry)> {
    let instance = read::instance(&replica.store, id).unwrap().unwrap();
    (1..=instance.version)
        .filter_map(|seq| {
            read::journal_entry(&replica.store, id, seq)
                .unwrap()
                .map(|e| (seq, e))
        })
        .collect()
}

fn seqs(journal: &[(u64, JournalEntry)]) -> Vec<u64> {
    journal.iter().map(|(seq, _)| *seq).collect()
}

fn command(entry: &JournalEntry) -> &Command {
    match &entry.step {
        JournalStep::Command { command, .. } => command,
        other => panic!("not a command: {other:?}"),
    }
}

/// Every timer of `id` due by `late`, in due order (as the timer service proposes them).
fn due(replica: &Replica, id: &str, late: i64) -> Vec<(String, String)> {
    read::due_timers(&replica.store, i64::MIN, Timestamp::from_millis(late), 100)
        .unwrap()
        .into_iter()
        .filter(|t| t.instance_id == id)
        .map(|t| (t.instance_id, t.id))
        .collect()
}

#[test]
fn apply_journals_every_instance_change_from_format_5_on() {
    let mut replica = Replica::new();
    replica.apply(1_000, define());
    raise(&mut replica, LOG_FORMAT_INDEXES, 1_100);
    let a = id_of(&replica.apply(2_000, create("A")));
    assert!(journal(&replica, &a).is_empty(), "nothing before format 5");
    raise(&mut replica, LOG_FORMAT_JOURNAL, 2_500);
    replica.apply(3_000, take("A", "submit", actor("alice", &[])));
    assert_eq!(seqs(&journal(&replica, &a)), [2], "from the raise on");

    // B: created, submitted, then its approval SLA's two warnings and its breach fire in one
    // proposal (a week later), which escalates it.
    let b = id_of(&replica.apply(4_000, create("B")));
    replica.apply(4_001, take("B", "submit", actor("alice", &[])));
    let late = 4_001 + 24 * 7 * HOUR_MS;
    let timers = due(&replica, &b, late);
    let armed = read::instance(&replica.store, &b).unwrap().unwrap().timers;
    assert_eq!(timers.len(), 3, "{timers:?}");
    let fired = replica.apply(
        late,
        Body::FireTimers {
            timers: timers.clone(),
        },
    );
    assert!(
        matches!(fired, Response::TimersFired { fired: 3, .. }),
        "{fired:?}"
    );

    let j = journal(&replica, &b);
    assert_eq!(seqs(&j), [1, 2, 3, 4, 5]);
    match command(&j[0].1) {
        Command::Create { data, key, .. } => {
            assert_eq!(
                data,
                &serde_json::json!({"amount": 100, "requester": "alice"})
            );
            assert_eq!(key.as_deref(), Some("B"));
        }
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(command(&j[1].1), Command::Transition { transition, .. } if transition == "submit")
    );
    for ((_, entry), (_, timer_id)) in j[2..].iter().zip(&timers) {
        assert!(matches!(command(entry), Command::FireTimer { timer_id: t } if t == timer_id));
        let JournalStep::Command { timer_due, .. } = &entry.step else {
            unreachable!()
        };
        assert_eq!(*timer_due, Some(armed[timer_id].due_at), "{timer_id}");
        assert_eq!(entry.at, Timestamp::from_millis(late));
    }
    assert_eq!(j[4].1.state, "escalated");

    // Under the version that wrote it, the journal replays exactly, the three fires of one
    // proposal included.
    let po = compile(Some("purchase-order.yaml"), PO, &Limits::default()).unwrap();
    let same = replay(&j, |v| (v == po.version).then_some(&po), &po).unwrap();
    assert!(same.same(), "{same:#?}");
    assert_eq!(same.old_state, "escalated");
}

#[test]
fn a_migration_is_journaled_and_replays_through_both_versions() {
    let mut replica = Replica::new();
    replica.apply(1_000, define());
    raise(&mut replica, LOG_FORMAT_JOURNAL, 1_100);
    let id = id_of(&replica.apply(2_000, create("M")));
    replica.apply(2_001, take("M", "submit", actor("alice", &[])));
    // v2 calls `submitted` `in_review`.
    let v2_source = PO.replace("submitted", "in_review");
    replica.apply(
        3_000,
        Body::ApplyDefinition {
            source: v2_source.clone(),
            provenance: Default::default(),
            actor: actor("admin", &["admin"]),
        },
    );
    let v1 = compile(None, PO, &Limits::default()).unwrap();
    let v2 = compile(None, &v2_source, &Limits::default()).unwrap();
    let plan = Migration {
        workflow: WORKFLOW.into(),
        from_version: v1.version.clone(),
        to_version: v2.version.clone(),
        mapping: BTreeMap::from([("submitted".to_string(), "in_review".to_string())]),
        timers: TimerPolicy::KeepDeadline,
    };
    let migrated = replica.apply(
        4_000,
        Body::Migrate {
            plan: plan.clone(),
            selection: Selection::Instances(vec![Target::Id(id.clone())]),
            actor: actor("operator", &["admin"]),
        },
    );
    assert!(
        matches!(migrated, Response::Migrated { .. }),
        "{migrated:?}"
    );
    replica.apply(5_000, take("M", "approve", actor("bob", &["approver"])));

    let j = journal(&replica, &id);
    assert_eq!(seqs(&j), [1, 2, 3, 4]);
    match &j[2].1.step {
        JournalStep::Migrate {
            plan: journaled,
            actor,
        } => {
            assert_eq!(journaled, &plan);
            assert_eq!(actor.id, "operator");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(j[2].1.definition_version, v2.version);
    assert_eq!(j[3].1.definition_version, v2.version);
    let versions = |v: &str| [&v1, &v2].into_iter().find(|d| d.version == v);
    // Under v2 from the start: the migration has nothing to do and v2 takes every command.
    let under_v2 = replay(&j, versions, &v2).unwrap();
    assert!(under_v2.same(), "{under_v2:#?}");
    // Under v1 the approval is taken from `submitted`, as it was recorded from `in_review`.
    let under_v1 = replay(&j, versions, &v1).unwrap();
    assert_eq!(under_v1.new_state.as_deref(), Some("approved"));
}

#[test]
fn replicas_write_the_same_journal() {
    let run = |forgetful: bool| {
        let mut replica = Replica::new();
        replica.forgetful = forgetful;
        replica.apply(1_000, define());
        raise(&mut replica, LOG_FORMAT_JOURNAL, 1_100);
        replica.apply(2_000, create("R"));
        replica.apply(2_001, take("R", "submit", actor("alice", &[])));
        replica.apply(2_002, take("R", "approve", actor("bob", &["approver"])));
        read::digest(&replica.store).unwrap()
    };
    assert_eq!(run(false), run(true));
}

#[test]
fn a_redaction_erases_the_fields_from_the_data_and_the_journal() {
    let mut replica = Replica::new();
    replica.apply(1_000, define());
    raise(&mut replica, LOG_FORMAT_REDACT, 1_100);
    let id = id_of(&replica.apply(2_000, create("X")));
    replica.apply(2_001, take("X", "submit", actor("alice", &[])));
    let redacted = replica.apply(
        3_000,
        Body::Redact {
            target: Target::Id(id.clone()),
            fields: vec!["requester".into()],
            actor: actor("admin", &["admin"]),
        },
    );
    assert!(
        matches!(redacted, Response::Applied { version: 3, .. }),
        "{redacted:?}"
    );
    let digest = lockstep_core::redact::digest(&serde_json::json!("alice"));
    let instance = read::instance(&replica.store, &id).unwrap().unwrap();
    assert_eq!(instance.data["requester"], serde_json::json!(digest));
    assert_eq!(instance.data["amount"], serde_json::json!(100));
    let j = journal(&replica, &id);
    match command(&j[0].1) {
        Command::Create { data, .. } => assert_eq!(data["requester"], serde_json::json!(digest)),
        other => panic!("{other:?}"),
    }
    let text = serde_json::to_string(&j).unwrap();
    assert!(
        !text.contains("\"requester\":\"alice\""),
        "the value is gone from the journal: {text}"
    );
    // A redacted instance cannot be replayed: the values its commands were decided on are gone.
    let po = compile(None, PO, &Limits::default()).unwrap();
    let err = replay(&j, |v| (v == po.version).then_some(&po), &po).unwrap_err();
    assert!(
        err.to_string().contains("were redacted at record 3"),
        "{err}"
    );

    // A field the data does not have refuses the whole redaction, which changes nothing.
    let missing = replica.apply(
        4_000,
        Body::Redact {
            target: Target::Id(id.clone()),
            fields: vec!["amount".into(), "ssn".into()],
            actor: actor("admin", &["admin"]),
        },
    );
    match missing {
        Response::Refused(r) => assert!(r.message.contains("no data field `ssn`"), "{r:?}"),
        other => panic!("{other:?}"),
    }
    let after = read::instance(&replica.store, &id).unwrap().unwrap();
    assert_eq!((after.version, &after.data), (3, &instance.data));
}
