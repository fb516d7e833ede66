//! `Change::check`: the invariants apply checks before it writes a change (a change that
//! breaks one stops the node). Each test breaks one invariant of a change `evaluate` made and
//! expects it to be named. That every change `evaluate` emits passes is a property test
//! (`properties.rs`, property b).

use lockstep_core::invariant::BrokenInvariant;
use lockstep_core::{
    Actor, ActorKind, Command, CompiledDefinition, Instance, Limits, Outcome, Timestamp, evaluate,
    validate,
};
use serde_json::json;

const PURCHASE_ORDER: &str = include_str!("../../../examples/workflows/purchase-order.yaml");

fn purchase_order() -> CompiledDefinition {
    validate::compile(
        Some("purchase-order.yaml"),
        PURCHASE_ORDER,
        &Limits::default(),
    )
    .expect("the example workflow compiles")
}

fn at(minutes: i64) -> Timestamp {
    // 2026-11-16T08:00:00Z, a Monday.
    Timestamp::from_millis(1_795_334_400_000 + minutes * 60_000)
}

fn applied(outcome: Outcome) -> lockstep_core::engine::Change {
    match outcome {
        Outcome::Applied(change) => *change,
        Outcome::Refused(r) => panic!("refused: {r:?}"),
    }
}

/// A purchase order created by alice, and the change of her submitting it.
fn created_and_submitted() -> (CompiledDefinition, Instance, lockstep_core::engine::Change) {
    let definition = purchase_order();
    let alice = Actor::new("alice", ActorKind::Human, &["requester"]);
    let created = applied(evaluate(
        &definition,
        None,
        &Command::Create {
            instance_id: "i-1".into(),
            key: None,
            data: json!({ "amount": 120.0, "requester": "alice" }),
            actor: alice.clone(),
        },
        at(0),
    ));
    assert_eq!(created.check(&definition, None), Ok(()));
    let instance = created.instance;
    let submitted = applied(evaluate(
        &definition,
        Some(&instance),
        &Command::Transition {
            transition: "submit".into(),
            payload: json!({}),
            actor: alice,
            expected_version: None,
        },
        at(1),
    ));
    assert_eq!(submitted.check(&definition, Some(&instance)), Ok(()));
    (definition, instance, submitted)
}

#[test]
fn a_version_that_skips_or_repeats_is_named() {
    let (definition, before, change) = created_and_submitted();
    for version in [before.version, before.version + 2] {
        let mut broken = change.clone();
        broken.instance.version = version;
        broken.audit.instance_version = version;
        assert_eq!(
            broken.check(&definition, Some(&before)),
            Err(BrokenInvariant::Version {
                id: "i-1".into(),
                before: Some(1),
                after: version,
            })
        );
    }
    let mut created_at_two = change.clone();
    created_at_two.instance.id = "i-2".into();
    created_at_two.audit.instance_id = "i-2".into();
    let err = created_at_two.check(&definition, None).unwrap_err();
    assert!(
        err.to_string()
            .contains("a change adds exactly one (a new instance starts at 1)"),
        "{err}"
    );
}

#[test]
fn a_state_the_definition_does_not_declare_is_named() {
    let (definition, before, mut change) = created_and_submitted();
    change.instance.state = "limbo".into();
    change.audit.to = Some("limbo".into());
    let err = change.check(&definition, Some(&before)).unwrap_err();
    assert!(matches!(err, BrokenInvariant::UnknownState { ref state, .. } if state == "limbo"));
    assert_eq!(
        err.to_string(),
        format!(
            "instance i-1 is in state `limbo`, which workflow `purchase-order` version {} does not declare",
            definition.version
        )
    );
}

#[test]
fn another_instance_or_workflow_is_named() {
    let (definition, before, change) = created_and_submitted();
    let mut other = change.clone();
    other.instance.id = "i-9".into();
    assert!(matches!(
        other.check(&definition, Some(&before)),
        Err(BrokenInvariant::Identity { what: "id", .. })
    ));
    let mut moved = change.clone();
    moved.instance.definition_version = "0000".into();
    assert!(matches!(
        moved.check(&definition, Some(&before)),
        Err(BrokenInvariant::Definition { .. })
    ));
}

#[test]
fn an_audit_record_that_disagrees_with_its_change_is_named() {
    let (definition, before, change) = created_and_submitted();
    let mut wrong_state = change.clone();
    wrong_state.audit.to = Some("approved".into());
    assert_eq!(
        wrong_state.check(&definition, Some(&before)),
        Err(BrokenInvariant::Audit {
            id: "i-1".into(),
            version: 2,
            field: "state",
            recorded: "approved".into(),
            actual: "submitted".into(),
        })
    );
    let mut wrong_instance = change;
    wrong_instance.audit.instance_id = "i-7".into();
    assert!(matches!(
        wrong_instance.check(&definition, Some(&before)),
        Err(BrokenInvariant::Audit {
            field: "instance",
            ..
        })
    ));
}
