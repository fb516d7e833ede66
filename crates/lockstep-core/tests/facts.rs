//! Cross-instance facts (`engine::Facts`): the engine, not apply, decides that a business key
//! is taken and that a worker is at its lease cap; apply only looks the facts up. Each test
//! gives `evaluate_with` one fact and expects the engine's decision on it.

use lockstep_core::engine::{Facts, WorkerLeases, admit, definition_applied};
use lockstep_core::{
    Actor, ActorKind, AuditKind, Command, CompiledDefinition, Limits, Outcome, RefusalCode, Rules,
    Timestamp, evaluate_with, validate,
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

fn alice() -> Actor {
    Actor::new("alice", ActorKind::Human, &["requester"])
}

fn create(key: Option<&str>) -> Command {
    Command::Create {
        instance_id: "i-7".into(),
        key: key.map(str::to_owned),
        data: json!({ "amount": 120.0, "requester": "alice" }),
        actor: alice(),
    }
}

fn lease(worker: &str) -> Command {
    Command::LeaseTask {
        task_id: "t-1".into(),
        worker: Actor::new(worker, ActorKind::Service, &["worker"]),
        term: 1,
    }
}

fn at() -> Timestamp {
    Timestamp::from_millis(1_795_334_400_000)
}

fn refusal(outcome: Outcome) -> (RefusalCode, String) {
    match outcome {
        Outcome::Refused(r) => (r.code, r.message),
        Outcome::Applied(change) => panic!("applied, expected a refusal: {change:?}"),
    }
}

#[test]
fn a_create_whose_key_another_instance_holds_is_refused_naming_the_holder() {
    let definition = purchase_order();
    let facts = Facts {
        key_holder: Some("i-3".into()),
        ..Facts::default()
    };
    let outcome = evaluate_with(
        &definition,
        None,
        &create(Some("PO-1")),
        at(),
        Rules::CURRENT,
        &facts,
    );
    assert_eq!(
        refusal(outcome),
        (
            RefusalCode::AlreadyExists,
            "workflow `purchase-order` already has an instance with key `PO-1`: i-3".into()
        )
    );
}

#[test]
fn a_create_with_a_free_key_or_no_key_is_applied() {
    let definition = purchase_order();
    let free = evaluate_with(
        &definition,
        None,
        &create(Some("PO-1")),
        at(),
        Rules::CURRENT,
        &Facts::default(),
    );
    assert!(matches!(free, Outcome::Applied(c) if c.instance.key.as_deref() == Some("PO-1")));
    // A key holder only matters to a create that asks for a key.
    let facts = Facts {
        key_holder: Some("i-3".into()),
        ..Facts::default()
    };
    let keyless = evaluate_with(
        &definition,
        None,
        &create(None),
        at(),
        Rules::CURRENT,
        &facts,
    );
    assert!(matches!(keyless, Outcome::Applied(_)));
}

#[test]
fn the_key_is_decided_before_the_data() {
    // Logs already written refused a taken key before the data was checked: invalid data
    // with a taken key is still refused for the key.
    let definition = purchase_order();
    let command = Command::Create {
        instance_id: "i-7".into(),
        key: Some("PO-1".into()),
        data: json!("not an object"),
        actor: alice(),
    };
    let facts = Facts {
        key_holder: Some("i-3".into()),
        ..Facts::default()
    };
    let (code, _) = refusal(evaluate_with(
        &definition,
        None,
        &command,
        at(),
        Rules::CURRENT,
        &facts,
    ));
    assert_eq!(code, RefusalCode::AlreadyExists);
}

#[test]
fn a_worker_at_its_lease_cap_is_refused_and_one_below_is_admitted() {
    let at_cap = Facts {
        worker_leases: Some(WorkerLeases { held: 64, max: 64 }),
        ..Facts::default()
    };
    let refused = admit(&lease("erp-1"), &at_cap).expect_err("a worker at its cap is refused");
    assert_eq!(refused.code, RefusalCode::LimitExceeded);
    assert_eq!(
        refused.message,
        "worker `erp-1` already holds 64 leased tasks, the most one worker may hold (64): complete or fail some before polling for more"
    );
    let below = Facts {
        worker_leases: Some(WorkerLeases { held: 63, max: 64 }),
        ..Facts::default()
    };
    assert_eq!(admit(&lease("erp-1"), &below), Ok(()));
    // The cap concerns leases only.
    assert_eq!(admit(&create(None), &at_cap), Ok(()));
}

#[test]
fn evaluate_with_refuses_a_lease_at_the_cap_whatever_the_instance() {
    // The engine given the facts decides alone, as apply does before it loads the instance.
    let definition = purchase_order();
    let created = match evaluate_with(
        &definition,
        None,
        &create(None),
        at(),
        Rules::CURRENT,
        &Facts::default(),
    ) {
        Outcome::Applied(change) => change.instance,
        Outcome::Refused(r) => panic!("create refused: {r:?}"),
    };
    let at_cap = Facts {
        worker_leases: Some(WorkerLeases { held: 2, max: 2 }),
        ..Facts::default()
    };
    let (code, message) = refusal(evaluate_with(
        &definition,
        Some(&created),
        &lease("erp-2"),
        at(),
        Rules::CURRENT,
        &at_cap,
    ));
    assert_eq!(code, RefusalCode::LimitExceeded);
    assert!(message.contains("worker `erp-2` already holds 2 leased tasks"));
}

#[test]
fn a_new_definition_version_is_audited_with_its_source_digest_and_origin() {
    let definition = purchase_order();
    let record = definition_applied(
        &definition,
        PURCHASE_ORDER,
        "git@example:ops@abc123:purchase-order.yaml",
        &alice(),
        at(),
    );
    assert_eq!(record.kind, AuditKind::DefinitionApplied);
    assert_eq!(record.workflow, "purchase-order");
    assert_eq!(record.definition_version, definition.version);
    assert_eq!(record.instance_id, "");
    assert_eq!(record.instance_version, 0);
    assert_eq!(record.actor.id, "alice");
    assert_eq!(
        record.payload_digest.as_deref(),
        Some(lockstep_core::canonical::sha256_hex(PURCHASE_ORDER.as_bytes()).as_str())
    );
    assert_eq!(
        record.note.as_deref(),
        Some("applied from git@example:ops@abc123:purchase-order.yaml")
    );
}
