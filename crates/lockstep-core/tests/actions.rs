//! The inbox (`engine::actions`): what one actor may take on one instance now, decided by the
//! rules that enforce it. Each test names the actor, the instance and the time, and expects the
//! listed transitions; the last checks the listing against `evaluate` itself.

use lockstep_core::engine::{Action, Availability, actions};
use lockstep_core::{
    Actor, ActorKind, Command, CompiledDefinition, Instance, Limits, Outcome, Timestamp, evaluate,
    validate,
};
use serde_json::json;

const PURCHASE_ORDER: &str = include_str!("../../../examples/workflows/purchase-order.yaml");

fn compile(source: &str) -> CompiledDefinition {
    validate::compile(Some("test.yaml"), source, &Limits::default()).expect("the workflow compiles")
}

fn at(minutes: i64) -> Timestamp {
    // 2026-11-16T08:00:00Z, a Monday.
    Timestamp::from_millis(1_795_334_400_000 + minutes * 60_000)
}

fn alice() -> Actor {
    Actor::new("alice", ActorKind::Human, &["requester"])
}

fn bob(roles: &[&str]) -> Actor {
    Actor::new("bob", ActorKind::Human, roles)
}

fn applied(outcome: Outcome) -> Instance {
    match outcome {
        Outcome::Applied(change) => change.instance,
        Outcome::Refused(r) => panic!("refused: {r:?}"),
    }
}

/// A purchase order of `amount` by alice, submitted at minute 0.
fn submitted(definition: &CompiledDefinition, amount: f64) -> Instance {
    let create = Command::Create {
        instance_id: "i-1".into(),
        key: None,
        data: json!({ "amount": amount, "requester": "alice" }),
        actor: alice(),
    };
    let draft = applied(evaluate(definition, None, &create, at(0)));
    let submit = Command::Transition {
        transition: "submit".into(),
        payload: json!({}),
        actor: alice(),
        expected_version: None,
    };
    applied(evaluate(definition, Some(&draft), &submit, at(0)))
}

fn now(name: &str, to: &str) -> Action {
    Action {
        transition: name.into(),
        to: to.into(),
        availability: Availability::Now,
        depends_on_payload: false,
    }
}

#[test]
fn an_approver_may_ask_approve_or_reject_a_submitted_order() {
    let definition = compile(PURCHASE_ORDER);
    let order = submitted(&definition, 120.0);
    assert_eq!(
        actions(&definition, &order, &bob(&["approver"]), at(5)),
        vec![
            now("approve", "approved"),
            now("ask", "waiting_on_requester"),
            now("reject", "rejected"),
        ]
    );
}

#[test]
fn the_requester_sees_withdraw_gated_until_its_gate_opens_then_open() {
    let definition = compile(PURCHASE_ORDER);
    let order = submitted(&definition, 120.0);
    assert_eq!(
        actions(&definition, &order, &alice(), at(5)),
        vec![Action {
            transition: "withdraw".into(),
            to: "draft".into(),
            availability: Availability::Gated { opens_at: at(60) },
            depends_on_payload: false,
        }]
    );
    assert_eq!(
        actions(&definition, &order, &alice(), at(61)),
        vec![now("withdraw", "draft")]
    );
}

#[test]
fn a_false_guard_hides_a_transition_that_allow_permits() {
    let definition = compile(PURCHASE_ORDER);
    let large = submitted(&definition, 20_000.0);
    let listed = actions(&definition, &large, &bob(&["approver"]), at(5));
    assert!(
        listed.iter().all(|a| a.transition != "approve"),
        "{listed:?}"
    );
    let director = actions(&definition, &large, &bob(&["approver", "director"]), at(5));
    assert!(
        director.contains(&now("approve", "approved")),
        "{director:?}"
    );
}

#[test]
fn system_transitions_are_listed_for_the_engine_only() {
    let definition = compile(PURCHASE_ORDER);
    let order = submitted(&definition, 120.0);
    let engine = Actor::new("lockstep", ActorKind::System, &[]);
    assert_eq!(
        actions(&definition, &order, &engine, at(5)),
        vec![now("escalate", "escalated")]
    );
    let stranger = Actor::new("mallory", ActorKind::Human, &[]);
    assert_eq!(actions(&definition, &order, &stranger, at(5)), Vec::new());
}

#[test]
fn a_predicate_that_reads_the_payload_is_listed_as_depending_on_it() {
    let definition = compile(
        r#"
workflow: expenses
states:
  open: { initial: true }
  paid: { terminal: true }
  closed: { terminal: true }
transitions:
  pay:
    from: open
    to: paid
    allow: "'finance' in actor.roles && payload.amount < 500"
  close:
    from: open
    to: closed
    allow: "'finance' in actor.roles"
    guard: "payload.reason != ''"
  purge: { from: open, to: closed, allow: "'admin' in actor.roles && payload.force" }
"#,
    );
    let create = Command::Create {
        instance_id: "i-1".into(),
        key: None,
        data: json!({}),
        actor: alice(),
    };
    let open = applied(evaluate(&definition, None, &create, at(0)));
    let finance = bob(&["finance"]);
    let listed = actions(&definition, &open, &finance, at(1));
    let depends = |name: &str, to: &str| Action {
        depends_on_payload: true,
        ..now(name, to)
    };
    // `purge` is listed too: its `allow` reads the payload, and the engine does not take an
    // expression apart to see that `'admin' in actor.roles` already fails; an attempt decides.
    assert_eq!(
        listed,
        vec![
            depends("close", "closed"),
            depends("pay", "paid"),
            depends("purge", "closed"),
        ]
    );
}

#[test]
fn what_is_listed_now_is_what_evaluate_applies() {
    // The same rules decide both: for every actor and time, a transition (without a payload
    // schema) is listed as available now exactly when evaluate applies it with an empty payload.
    let definition = compile(PURCHASE_ORDER);
    let actors = [
        alice(),
        bob(&["approver"]),
        bob(&["approver", "director"]),
        Actor::new("erp", ActorKind::Worker, &[]),
        Actor::new("lockstep", ActorKind::System, &[]),
        Actor::new("mallory", ActorKind::Human, &[]),
    ];
    for amount in [120.0, 20_000.0] {
        let order = submitted(&definition, amount);
        for actor in &actors {
            for minute in [5, 61] {
                let listed = actions(&definition, &order, actor, at(minute));
                for spec in definition.transitions_from(&order.state) {
                    let command = Command::Transition {
                        transition: spec.name.clone(),
                        payload: json!({}),
                        actor: actor.clone(),
                        expected_version: None,
                    };
                    let applies = matches!(
                        evaluate(&definition, Some(&order), &command, at(minute)),
                        Outcome::Applied(_)
                    );
                    let now = listed
                        .iter()
                        .any(|a| a.transition == spec.name && a.availability == Availability::Now);
                    assert_eq!(
                        now, applies,
                        "{} by {} at minute {minute} (amount {amount}): listed now {now}, applied {applies}",
                        spec.name, actor.id
                    );
                }
            }
        }
    }
}
