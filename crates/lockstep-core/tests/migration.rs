//! Migrating an instance between definition versions: each timer policy, and each refusal.
//!
//! Version A of `ticket` measures its `response` SLA in office hours (Mon–Fri 09–17 UTC) with
//! a 4 h budget and lets `new` expire after 2 wall-clock hours. Version B renames `open` to
//! `active`, measures the SLA in wall-clock time with a 2 h budget, and lets `new` expire after
//! 1 office hour. 2026-11-23 is a Monday.

use std::collections::BTreeMap;

use lockstep_core::engine::{Change, Command, Instance};
use lockstep_core::validate::{CompiledDefinition, compile};
use lockstep_core::{
    Actor, ActorKind, AuditKind, Limits, Migration, Outcome, RefusalCode, TimerKind, TimerPolicy,
    Timestamp, evaluate, migrate,
};

const A: &str = r#"
workflow: ticket
data: { type: object }
calendars:
  office: { timezone: UTC, weekly: { mon-fri: "09:00-17:00" } }
states:
  new: { initial: true, expires: { after: 2h, transition: drop } }
  open: {}
  waiting: {}
  done: { terminal: true }
  dropped: { terminal: true }
slas:
  response:
    start: { enter: open }
    stop: { enter: [done] }
    pause: { in: [waiting] }
    within: 4h
    calendar: office
    warn_at: [50%]
transitions:
  take:
    from: new
    to: open
    allow: "true"
    effects:
      - task: { queue: q, type: t, timeout: 1h, on_complete: close }
  wait: { from: open, to: waiting, allow: "true" }
  finish: { from: [open, waiting], to: done, allow: "true" }
  close: { from: open, to: done, allow: "actor.kind == 'worker'" }
  drop: { from: new, to: dropped, system: true }
"#;

const B: &str = r#"
workflow: ticket
data: { type: object }
calendars:
  office: { timezone: UTC, weekly: { mon-fri: "09:00-17:00" } }
states:
  new: { initial: true, expires: { after: 1h, transition: drop, calendar: office } }
  active: {}
  waiting: {}
  done: { terminal: true }
  dropped: { terminal: true }
slas:
  response:
    start: { enter: active }
    stop: { enter: [done] }
    pause: { in: [waiting] }
    within: 2h
    warn_at: [50%]
transitions:
  take: { from: new, to: active, allow: "true" }
  wait: { from: active, to: waiting, allow: "true" }
  finish: { from: [active, waiting], to: done, allow: "true" }
  close: { from: active, to: done, allow: "actor.kind == 'worker'" }
  drop: { from: new, to: dropped, system: true }
"#;

fn compiled(source: &str) -> CompiledDefinition {
    compile(None, source, &Limits::default()).unwrap_or_else(|d| panic!("{d:#?}"))
}

fn at(text: &str) -> Timestamp {
    Timestamp::parse_rfc3339(text).unwrap()
}

fn alice() -> Actor {
    Actor::new("alice", ActorKind::Human, &[])
}

fn applied(outcome: Outcome) -> Change {
    match outcome {
        Outcome::Applied(change) => *change,
        Outcome::Refused(r) => panic!("refused: {r:?}"),
    }
}

fn create(a: &CompiledDefinition, when: &str) -> Instance {
    let command = Command::Create {
        instance_id: "i-1".into(),
        key: None,
        data: serde_json::json!({}),
        actor: alice(),
    };
    applied(evaluate(a, None, &command, at(when))).instance
}

fn take(a: &CompiledDefinition, instance: &Instance, transition: &str, when: &str) -> Instance {
    let command = Command::Transition {
        transition: transition.into(),
        payload: serde_json::Value::Null,
        actor: alice(),
        expected_version: None,
    };
    applied(evaluate(a, Some(instance), &command, at(when))).instance
}

fn plan(
    a: &CompiledDefinition,
    b: &CompiledDefinition,
    map: &[(&str, &str)],
    timers: TimerPolicy,
) -> Migration {
    Migration {
        workflow: "ticket".into(),
        from_version: a.version.clone(),
        to_version: b.version.clone(),
        mapping: map
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        timers,
    }
}

fn operator() -> Actor {
    Actor::new("olga", ActorKind::Human, &["admin"])
}

/// The due time of the instance's timer of a kind (`expiry`, `breach`, `warn50`).
fn due(instance: &Instance, which: &str) -> Option<String> {
    instance
        .timers
        .values()
        .find(|t| {
            matches!(
                (&t.kind, which),
                (TimerKind::StateExpiry { .. }, "expiry")
                    | (TimerKind::SlaBreach { .. }, "breach")
                    | (TimerKind::SlaWarning { percent: 50, .. }, "warn50")
            )
        })
        .map(|t| t.due_at.to_string())
}

fn refused(outcome: Outcome) -> (RefusalCode, String) {
    match outcome {
        Outcome::Refused(r) => (r.code, r.message),
        Outcome::Applied(c) => panic!("applied: {:?}", c.instance),
    }
}

/// An instance in `new` since Monday 16:00 (version A: expires 18:00), migrated at 16:30.
fn expiry_after(policy: TimerPolicy) -> (Instance, Change) {
    let (a, b) = (compiled(A), compiled(B));
    let instance = create(&a, "2026-11-23T16:00:00Z");
    assert_eq!(
        due(&instance, "expiry").as_deref(),
        Some("2026-11-23T18:00:00Z")
    );
    let change = applied(migrate(
        &a,
        &b,
        &instance,
        &plan(&a, &b, &[], policy),
        &operator(),
        at("2026-11-23T16:30:00Z"),
    ));
    (instance, change)
}

#[test]
fn keep_deadline_keeps_the_expiry_instant() {
    let (before, change) = expiry_after(TimerPolicy::KeepDeadline);
    let after = &change.instance;
    assert_eq!(after.state, "new");
    assert_eq!(after.definition_version, compiled(B).version);
    assert_eq!(after.version, before.version + 1);
    assert_eq!(after.entered_at, before.entered_at, "no state was entered");
    assert_eq!(
        due(after, "expiry").as_deref(),
        Some("2026-11-23T18:00:00Z")
    );
    assert_eq!(after.timers.len(), 1, "{:?}", after.timers);
    let timer = after.timers.values().next().unwrap();
    assert_eq!(
        timer.kind,
        TimerKind::StateExpiry {
            state: "new".into(),
            transition: "drop".into()
        }
    );
}

#[test]
fn keep_remaining_counts_what_was_left_with_the_new_calendar() {
    // 1.5 h were left; in B they are office hours: 30 min on Monday, 1 h on Tuesday.
    let (_, change) = expiry_after(TimerPolicy::KeepRemaining);
    assert_eq!(
        due(&change.instance, "expiry").as_deref(),
        Some("2026-11-24T10:00:00Z")
    );
}

#[test]
fn restart_arms_the_expiry_as_if_the_state_was_just_entered() {
    // B's 1 office hour from 16:30: 30 min on Monday, 30 min on Tuesday.
    let (_, change) = expiry_after(TimerPolicy::Restart);
    assert_eq!(
        due(&change.instance, "expiry").as_deref(),
        Some("2026-11-24T09:30:00Z")
    );
    assert_eq!(
        change.instance.entered_at.to_string(),
        "2026-11-23T16:30:00Z"
    );
}

/// An instance created Monday 13:00 whose SLA started at `started` (`take`), migrated from A
/// to B at `migrated` with `open` mapped to `active`: the instance before, and the change.
fn migrate_sla(started: &str, migrated: &str, policy: TimerPolicy) -> (Instance, Change) {
    let (a, b) = (compiled(A), compiled(B));
    let instance = create(&a, "2026-11-23T13:00:00Z");
    let instance = take(&a, &instance, "take", started);
    let change = applied(migrate(
        &a,
        &b,
        &instance,
        &plan(&a, &b, &[("open", "active")], policy),
        &operator(),
        at(migrated),
    ));
    (instance, change)
}

/// An instance whose SLA started Monday 14:00 (A: 4 office hours, breach Tuesday 10:00),
/// migrated at 15:00 with `open` mapped to `active`.
fn sla_after(policy: TimerPolicy) -> Change {
    let (instance, change) = migrate_sla("2026-11-23T14:00:00Z", "2026-11-23T15:00:00Z", policy);
    assert_eq!(
        due(&instance, "breach").as_deref(),
        Some("2026-11-24T10:00:00Z")
    );
    assert_eq!(
        due(&instance, "warn50").as_deref(),
        Some("2026-11-23T16:00:00Z")
    );
    assert_eq!(change.instance.state, "active");
    assert!(due(&change.instance, "expiry").is_none());
    change
}

#[test]
fn keep_deadline_rebases_the_sla_so_the_breach_stays_put() {
    let change = sla_after(TimerPolicy::KeepDeadline);
    let after = &change.instance;
    assert_eq!(
        due(after, "breach").as_deref(),
        Some("2026-11-24T10:00:00Z")
    );
    let clock = &after.slas["response"];
    assert_eq!(clock.consumed_ms, 3_600_000, "one office hour consumed");
    assert_eq!(
        clock.budget_ms,
        20 * 3_600_000,
        "consumed + the 19 wall-clock hours left"
    );
}

#[test]
fn keep_deadline_keeps_the_breach_to_the_microsecond() {
    // Cluster time is in microseconds; budgets are counted in whole milliseconds. The SLA
    // starts 0.4 ms into a second and the migration lands 0.9 ms into one, so half a
    // millisecond of the consumed time does not fit in `consumed_ms`.
    let (instance, change) = migrate_sla(
        "2026-11-23T14:00:00.0004Z",
        "2026-11-23T15:00:00.0009Z",
        TimerPolicy::KeepDeadline,
    );
    assert_eq!(
        due(&instance, "breach").as_deref(),
        Some("2026-11-24T10:00:00.0004Z")
    );
    assert_eq!(
        due(&change.instance, "breach").as_deref(),
        Some("2026-11-24T10:00:00.0004Z")
    );
    assert_eq!(change.instance.slas["response"].consumed_ms, 3_600_000);
}

#[test]
fn a_migration_after_hours_does_not_charge_the_evening() {
    // Started Monday 14:00 (A: office hours), migrated at 20:00: three office hours consumed,
    // one left. B counts wall-clock time from the migration on, not from Monday's 17:00 close.
    let (_, change) = migrate_sla(
        "2026-11-23T14:00:00Z",
        "2026-11-23T20:00:00Z",
        TimerPolicy::KeepRemaining,
    );
    assert_eq!(
        due(&change.instance, "breach").as_deref(),
        Some("2026-11-23T21:00:00Z")
    );
    assert_eq!(change.instance.slas["response"].consumed_ms, 3 * 3_600_000);
}

#[test]
fn keep_remaining_keeps_the_three_hours_left_in_wall_clock_time() {
    let change = sla_after(TimerPolicy::KeepRemaining);
    let after = &change.instance;
    assert_eq!(
        due(after, "breach").as_deref(),
        Some("2026-11-23T18:00:00Z")
    );
    assert_eq!(
        due(after, "warn50").as_deref(),
        Some("2026-11-23T16:00:00Z")
    );
    assert_eq!(after.slas["response"].budget_ms, 4 * 3_600_000);
}

#[test]
fn restart_starts_the_sla_again_with_the_new_budget() {
    let change = sla_after(TimerPolicy::Restart);
    let after = &change.instance;
    assert_eq!(
        due(after, "breach").as_deref(),
        Some("2026-11-23T17:00:00Z")
    );
    assert_eq!(
        due(after, "warn50").as_deref(),
        Some("2026-11-23T16:00:00Z")
    );
    let clock = &after.slas["response"];
    assert_eq!((clock.budget_ms, clock.consumed_ms), (2 * 3_600_000, 0));
    assert_eq!(clock.started_at.to_string(), "2026-11-23T15:00:00Z");
}

#[test]
fn the_audit_record_names_both_versions_the_mapping_the_policy_and_the_actor() {
    let (a, b) = (compiled(A), compiled(B));
    let change = sla_after(TimerPolicy::KeepRemaining);
    let audit = &change.audit;
    assert_eq!(audit.kind, AuditKind::Migration);
    assert_eq!(
        serde_json::to_value(audit.kind).unwrap(),
        serde_json::json!("migration")
    );
    assert_eq!(audit.definition_version, b.version);
    assert_eq!(
        (audit.from.as_deref(), audit.to.as_deref()),
        (Some("open"), Some("active"))
    );
    assert_eq!(audit.actor.id, "olga");
    assert_eq!(audit.instance_version, change.instance.version);
    let note = audit.note.as_deref().unwrap();
    for needle in [
        a.version.as_str(),
        b.version.as_str(),
        "open -> active",
        "keep-remaining",
    ] {
        assert!(note.contains(needle), "`{needle}` missing from: {note}");
    }
    let expected = plan(&a, &b, &[("open", "active")], TimerPolicy::KeepRemaining).digest();
    assert_eq!(audit.payload_digest.as_deref(), Some(expected.as_str()));
    assert!(change.effects.is_empty());
}

#[test]
fn a_paused_clock_resumes_when_the_new_version_does_not_pause_the_mapped_state() {
    let a = compiled(A);
    let b = compiled(&B.replace("pause: { in: [waiting] }", "pause: { in: [active] }"));
    let instance = create(&a, "2026-11-23T13:00:00Z");
    let instance = take(&a, &instance, "take", "2026-11-23T14:00:00Z");
    let instance = take(&a, &instance, "wait", "2026-11-23T15:00:00Z");
    assert!(
        due(&instance, "breach").is_none(),
        "paused: no breach timer"
    );
    let change = applied(migrate(
        &a,
        &b,
        &instance,
        &plan(&a, &b, &[], TimerPolicy::KeepRemaining),
        &operator(),
        at("2026-11-23T16:00:00Z"),
    ));
    // Three office hours were left when it paused at 15:00; B counts them in wall time.
    assert_eq!(
        due(&change.instance, "breach").as_deref(),
        Some("2026-11-23T19:00:00Z")
    );
}

#[test]
fn a_state_that_the_new_version_lacks_must_be_mapped() {
    let (a, b) = (compiled(A), compiled(B));
    let instance = take(
        &a,
        &create(&a, "2026-11-23T13:00:00Z"),
        "take",
        "2026-11-23T14:00:00Z",
    );
    let (code, message) = refused(migrate(
        &a,
        &b,
        &instance,
        &plan(&a, &b, &[], TimerPolicy::Restart),
        &operator(),
        at("2026-11-23T15:00:00Z"),
    ));
    assert_eq!(code, RefusalCode::MigrationInvalid);
    assert!(
        message.contains("state `open`") && message.contains("open=<state>"),
        "{message}"
    );
}

#[test]
fn mapping_refusals_name_the_offending_state() {
    let (a, b) = (compiled(A), compiled(B));
    let instance = create(&a, "2026-11-23T13:00:00Z");
    let check = |map: &[(&str, &str)], needles: &[&str]| {
        let (code, message) = refused(migrate(
            &a,
            &b,
            &instance,
            &plan(&a, &b, map, TimerPolicy::KeepDeadline),
            &operator(),
            at("2026-11-23T13:30:00Z"),
        ));
        assert_eq!(code, RefusalCode::MigrationInvalid, "{message}");
        for needle in needles {
            assert!(
                message.contains(needle),
                "`{needle}` missing from: {message}"
            );
        }
    };
    // A source state the old version does not have (a typo).
    check(&[("opened", "active")], &["`opened`", "does not have"]);
    // A target state the new version does not have.
    check(&[("open", "actve")], &["`actve`", "does not have"]);
    // A terminal state may not become a live one, nor a live one a terminal one.
    check(
        &[("open", "active"), ("done", "waiting")],
        &["`done` is terminal", "cannot reopen"],
    );
    check(
        &[("open", "done")],
        &["`open` is not terminal", "cannot finish"],
    );
}

#[test]
fn an_instance_not_at_the_source_version_is_refused() {
    let (a, b) = (compiled(A), compiled(B));
    let instance = create(&a, "2026-11-23T13:00:00Z");
    let plan_ab = plan(&a, &b, &[("open", "active")], TimerPolicy::KeepDeadline);
    let moved = applied(migrate(
        &a,
        &b,
        &instance,
        &plan_ab,
        &operator(),
        at("2026-11-23T13:30:00Z"),
    ))
    .instance;
    let (code, message) = refused(migrate(
        &a,
        &b,
        &moved,
        &plan_ab,
        &operator(),
        at("2026-11-23T13:40:00Z"),
    ));
    assert_eq!(code, RefusalCode::WrongWorkflow);
    assert!(
        message.contains("already runs the target version"),
        "{message}"
    );
}

#[test]
fn the_same_version_twice_is_refused() {
    let a = compiled(A);
    let instance = create(&a, "2026-11-23T13:00:00Z");
    let (code, message) = refused(migrate(
        &a,
        &a,
        &instance,
        &plan(&a, &a, &[], TimerPolicy::Restart),
        &operator(),
        at("2026-11-23T13:30:00Z"),
    ));
    assert_eq!(code, RefusalCode::MigrationInvalid);
    assert!(message.contains("same version"), "{message}");
}

#[test]
fn data_that_the_new_schema_refuses_is_refused() {
    let a = compiled(A);
    let b = compiled(&B.replace(
        "data: { type: object }",
        "data: { type: object, required: [title], properties: { title: { type: string } } }",
    ));
    let instance = create(&a, "2026-11-23T13:00:00Z");
    let (code, message) = refused(migrate(
        &a,
        &b,
        &instance,
        &plan(&a, &b, &[("open", "active")], TimerPolicy::Restart),
        &operator(),
        at("2026-11-23T13:30:00Z"),
    ));
    assert_eq!(code, RefusalCode::MigrationInvalid);
    assert!(message.contains("data does not fit"), "{message}");
}

#[test]
fn an_open_task_whose_follow_up_the_new_version_lacks_is_refused() {
    let a = compiled(A);
    let b = compiled(&B.replace(
        "  close: { from: active, to: done, allow: \"actor.kind == 'worker'\" }\n",
        "",
    ));
    let instance = take(
        &a,
        &create(&a, "2026-11-23T13:00:00Z"),
        "take",
        "2026-11-23T14:00:00Z",
    );
    let (code, message) = refused(migrate(
        &a,
        &b,
        &instance,
        &plan(&a, &b, &[("open", "active")], TimerPolicy::Restart),
        &operator(),
        at("2026-11-23T15:00:00Z"),
    ));
    assert_eq!(code, RefusalCode::MigrationInvalid);
    assert!(
        message.contains("on_complete transition `close`"),
        "{message}"
    );
}

#[test]
fn the_policy_names_round_trip() {
    for policy in TimerPolicy::ALL {
        assert_eq!(TimerPolicy::parse(policy.as_str()), Some(policy));
        assert_eq!(
            serde_json::to_value(policy).unwrap(),
            serde_json::json!(policy.as_str())
        );
    }
    assert_eq!(TimerPolicy::parse("keep"), None);
}
