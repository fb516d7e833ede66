//! Lease expiry is a guard at attempt time: Heartbeat, Complete and Fail with a token whose
//! lease expired at the command's cluster time are refused `STALE_LEASE`, whether or not the
//! lease-expiry timer has fired ([`Rules::lease_expiry_guard`]).

use lockstep_core::engine::{LeaseToken, TaskStatus};
use lockstep_core::{
    Actor, ActorKind, Command, CompiledDefinition, Instance, Limits, Outcome, RefusalCode, Rules,
    Timestamp, evaluate, evaluate_under, validate,
};
use serde_json::json;

const PURCHASE_ORDER: &str = include_str!("../../../examples/workflows/purchase-order.yaml");
/// The `erp` task's timeout in purchase-order.yaml.
const TIMEOUT_MS: i64 = 30_000;
/// When the worker leases the task.
const LEASED_AT_MS: i64 = 1_000_000;

fn at(ms: i64) -> Timestamp {
    Timestamp::from_millis(ms)
}

fn applied(outcome: Outcome) -> Instance {
    match outcome {
        Outcome::Applied(change) => change.instance,
        Outcome::Refused(r) => panic!("refused: {}", r.message),
    }
}

fn worker() -> Actor {
    Actor::new("w1", ActorKind::Worker, &[] as &[&str])
}

/// An approved purchase order whose `erp` task worker `w1` leased at [`LEASED_AT_MS`].
fn leased() -> (CompiledDefinition, Instance, String, LeaseToken) {
    let definition = validate::compile(Some("po.yaml"), PURCHASE_ORDER, &Limits::default())
        .expect("the example compiles");
    let alice = Actor::new("alice", ActorKind::Human, &["requester"]);
    let bob = Actor::new("bob", ActorKind::Human, &["approver"]);
    let create = Command::Create {
        instance_id: "i-1".into(),
        key: None,
        data: json!({"amount": 100, "requester": "alice"}),
        actor: alice.clone(),
    };
    let mut instance = applied(evaluate(&definition, None, &create, at(LEASED_AT_MS - 30)));
    for (transition, actor, ms) in [("submit", &alice, 20), ("approve", &bob, 10)] {
        let take = Command::Transition {
            transition: transition.into(),
            payload: json!(null),
            actor: actor.clone(),
            expected_version: None,
        };
        instance = applied(evaluate(
            &definition,
            Some(&instance),
            &take,
            at(LEASED_AT_MS - ms),
        ));
    }
    let task_id = instance.tasks.keys().next().expect("a task").clone();
    let lease = Command::LeaseTask {
        task_id: task_id.clone(),
        worker: worker(),
        term: 1,
    };
    let instance = applied(evaluate(
        &definition,
        Some(&instance),
        &lease,
        at(LEASED_AT_MS),
    ));
    let token = instance.tasks[&task_id].lease.expect("leased");
    (definition, instance, task_id, token)
}

fn commands(task_id: &str, token: &LeaseToken) -> [(&'static str, Command); 3] {
    [
        (
            "heartbeat",
            Command::HeartbeatTask {
                task_id: task_id.into(),
                token: *token,
                worker: worker(),
            },
        ),
        (
            "complete",
            Command::CompleteTask {
                task_id: task_id.into(),
                token: *token,
                result: json!({"po_number": "PO-7"}),
                worker: worker(),
            },
        ),
        (
            "fail",
            Command::FailTask {
                task_id: task_id.into(),
                token: *token,
                error: "ERP down".into(),
                retryable: true,
                worker: worker(),
            },
        ),
    ]
}

#[test]
fn a_task_command_at_or_after_the_lease_expiry_is_refused_though_no_timer_fired() {
    let (definition, instance, task_id, token) = leased();
    let expiry = LEASED_AT_MS + TIMEOUT_MS;
    for (name, command) in commands(&task_id, &token) {
        for ms in [expiry, expiry + 1, expiry + 3_600_000] {
            let outcome = evaluate(&definition, Some(&instance), &command, at(ms));
            let refusal = outcome
                .refusal()
                .unwrap_or_else(|| panic!("{name} at +{} ms was accepted", ms - expiry));
            assert_eq!(
                refusal.code,
                RefusalCode::StaleLease,
                "{name}: {}",
                refusal.message
            );
            assert!(
                refusal.message.contains("expired at")
                    && refusal.message.contains("poll for a new task"),
                "{name}: {}",
                refusal.message
            );
        }
        // One millisecond before the expiry the holder is still in time.
        let outcome = evaluate(&definition, Some(&instance), &command, at(expiry - 1));
        assert!(outcome.refusal().is_none(), "{name}: {outcome:?}");
    }
}

#[test]
fn a_heartbeat_moves_the_expiry_the_guard_checks() {
    let (definition, instance, task_id, token) = leased();
    let [(_, heartbeat), (_, complete), _] = commands(&task_id, &token);
    // Heartbeat at 20 s: the lease now runs to 50 s after the lease.
    let instance = applied(evaluate(
        &definition,
        Some(&instance),
        &heartbeat,
        at(LEASED_AT_MS + 20_000),
    ));
    let outcome = evaluate(
        &definition,
        Some(&instance),
        &complete,
        at(LEASED_AT_MS + 45_000),
    );
    assert!(outcome.refusal().is_none(), "{outcome:?}");
    let outcome = evaluate(
        &definition,
        Some(&instance),
        &complete,
        at(LEASED_AT_MS + 50_000),
    );
    assert_eq!(
        outcome.refusal().map(|r| r.code),
        Some(RefusalCode::StaleLease)
    );
}

#[test]
fn without_the_guard_a_late_completion_is_accepted_as_before() {
    let (definition, instance, task_id, token) = leased();
    let [_, (_, complete), _] = commands(&task_id, &token);
    let late = at(LEASED_AT_MS + TIMEOUT_MS + 1_000);
    let old = evaluate_under(
        &definition,
        Some(&instance),
        &complete,
        late,
        Rules::BEFORE_LEASE_GUARD,
    );
    assert!(old.refusal().is_none(), "{old:?}");
    let new = evaluate_under(
        &definition,
        Some(&instance),
        &complete,
        late,
        Rules::CURRENT,
    );
    assert_eq!(new.refusal().map(|r| r.code), Some(RefusalCode::StaleLease));
}

#[test]
fn a_released_task_is_ready_again_and_its_attempt_does_not_count() {
    let (definition, instance, task_id, token) = leased();
    let budget = instance.tasks[&task_id].retry.max_attempts;
    let release = |who: Actor, token: LeaseToken| Command::ReleaseTask {
        task_id: task_id.clone(),
        token,
        worker: who,
    };
    // Only the lease holder may hand it back.
    let other = Actor::new("w2", ActorKind::Worker, &[] as &[&str]);
    let refused = evaluate(
        &definition,
        Some(&instance),
        &release(other, token),
        at(LEASED_AT_MS + 5),
    );
    assert_eq!(
        refused.refusal().map(|r| r.code),
        Some(RefusalCode::Forbidden)
    );

    let outcome = evaluate(
        &definition,
        Some(&instance),
        &release(worker(), token),
        at(LEASED_AT_MS + 5),
    );
    let change = outcome.change().expect("the holder releases it").clone();
    assert_eq!(change.audit.kind, lockstep_core::AuditKind::TaskReleased);
    let released = change.instance;
    let task = &released.tasks[&task_id];
    assert_eq!(task.status, TaskStatus::Ready);
    assert_eq!(
        (task.lease, task.worker.as_deref(), task.lease_expires_at),
        (None, None, None)
    );
    assert!(!released.timers.contains_key(&format!("{task_id}:lease")));
    // The attempt number stays (tokens never repeat); the budget grows by the released one.
    assert_eq!(task.attempt, 1);
    assert_eq!(task.retry.max_attempts, budget + 1);

    // Released once, the lease is stale: a second release or a late completion is refused.
    let again = evaluate(
        &definition,
        Some(&released),
        &release(worker(), token),
        at(LEASED_AT_MS + 6),
    );
    assert_eq!(
        again.refusal().map(|r| r.code),
        Some(RefusalCode::StaleLease)
    );
    let lease = Command::LeaseTask {
        task_id: task_id.clone(),
        worker: worker(),
        term: 1,
    };
    let leased_again = applied(evaluate(
        &definition,
        Some(&released),
        &lease,
        at(LEASED_AT_MS + 7),
    ));
    let new_token = leased_again.tasks[&task_id].lease.expect("leased");
    assert_ne!(new_token, token, "a token is never handed out twice");
    let [_, (_, late_complete), _] = commands(&task_id, &token);
    let late = evaluate(
        &definition,
        Some(&leased_again),
        &late_complete,
        at(LEASED_AT_MS + 8),
    );
    assert_eq!(
        late.refusal().map(|r| r.code),
        Some(RefusalCode::StaleLease)
    );
}
