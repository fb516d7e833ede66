//! Throughput of `evaluate` on the example workflows (evaluations per second, one core).
//!
//! `cargo bench -p lockstep-core --bench evaluate -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use lockstep_core::{
    Actor, ActorKind, Command, CompiledDefinition, Instance, Limits, Outcome, Timestamp, evaluate,
    validate,
};
use serde_json::{Value, json};

const PURCHASE_ORDER: &str = include_str!("../../../examples/workflows/purchase-order.yaml");

/// The smallest useful workflow: two states and an `allow` predicate, no data schema, no SLA,
/// no calendar, no effects.
const TOGGLE: &str = r#"
workflow: toggle
states:
  off: { initial: true }
  on: {}
transitions:
  switch_on:  { from: off, to: on,  allow: "'operator' in actor.roles" }
  switch_off: { from: on,  to: off, allow: "'operator' in actor.roles" }
"#;

fn compile(name: &str, text: &str) -> CompiledDefinition {
    validate::compile(Some(name), text, &Limits::default())
        .unwrap_or_else(|d| panic!("{name} does not compile: {d:?}"))
}

/// Monday 2026-11-16 10:00 Berlin.
fn t0() -> Timestamp {
    Timestamp::parse_rfc3339("2026-11-16T09:00:00Z").unwrap()
}

fn applied(outcome: Outcome) -> Instance {
    match outcome {
        Outcome::Applied(change) => change.instance,
        Outcome::Refused(r) => panic!("refused: {r:?}"),
    }
}

fn transition(name: &str, actor: &Actor) -> Command {
    Command::Transition {
        transition: name.into(),
        payload: Value::Null,
        actor: actor.clone(),
        expected_version: None,
    }
}

fn benches(c: &mut Criterion) {
    let toggle = compile("toggle.yaml", TOGGLE);
    let po = compile("purchase-order.yaml", PURCHASE_ORDER);
    let alice = Actor::new("alice", ActorKind::Human, &["requester"]);
    let bob = Actor::new("bob", ActorKind::Human, &["approver"]);
    let operator = Actor::new("olga", ActorKind::Human, &["operator"]);
    let at = t0();

    let create_po = Command::Create {
        instance_id: "po-1".into(),
        key: Some("PO-2026-0001".into()),
        data: json!({ "amount": 2500.0, "requester": "alice", "supplier": "ACME" }),
        actor: alice.clone(),
    };
    let draft = applied(evaluate(&po, None, &create_po, at));
    let submitted = applied(evaluate(
        &po,
        Some(&draft),
        &transition("submit", &alice),
        at.add_ms(60_000),
    ));
    let create_toggle = Command::Create {
        instance_id: "t-1".into(),
        key: None,
        data: json!({}),
        actor: operator.clone(),
    };
    let off = applied(evaluate(&toggle, None, &create_toggle, at));

    let mut group = c.benchmark_group("evaluate");
    group.throughput(Throughput::Elements(1));

    // A minimal 2-state workflow: one `allow` predicate, nothing else.
    let cmd = transition("switch_on", &operator);
    group.bench_function(
        BenchmarkId::new("simple transition", "toggle switch_on"),
        |b| {
            b.iter(|| {
                evaluate(
                    black_box(&toggle),
                    black_box(Some(&off)),
                    black_box(&cmd),
                    black_box(at.add_ms(1000)),
                )
            })
        },
    );

    // purchase-order draft -> submitted: `allow`, cancels the draft expiry timer, starts the
    // business-time SLA and arms its warning and breach timers.
    let cmd = transition("submit", &alice);
    group.bench_function(
        BenchmarkId::new("simple transition", "purchase-order submit"),
        |b| {
            b.iter(|| {
                evaluate(
                    black_box(&po),
                    black_box(Some(&draft)),
                    black_box(&cmd),
                    black_box(at.add_ms(60_000)),
                )
            })
        },
    );

    // submitted -> approved: `allow` + `guard`, stops the SLA, creates a retryable task.
    let cmd = transition("approve", &bob);
    group.bench_function(
        BenchmarkId::new("guard + allow + SLA", "purchase-order approve"),
        |b| {
            b.iter(|| {
                evaluate(
                    black_box(&po),
                    black_box(Some(&submitted)),
                    black_box(&cmd),
                    black_box(at.add_ms(3_600_000)),
                )
            })
        },
    );

    // Creation: data schema check, initial state, expiry timer.
    group.bench_function(BenchmarkId::new("create", "purchase-order"), |b| {
        b.iter(|| evaluate(black_box(&po), None, black_box(&create_po), black_box(at)))
    });

    // A refusal by the `allow` predicate (alice may not approve).
    let cmd = transition("approve", &alice);
    group.bench_function(
        BenchmarkId::new("refusal", "purchase-order approve forbidden"),
        |b| {
            b.iter(|| {
                evaluate(
                    black_box(&po),
                    black_box(Some(&submitted)),
                    black_box(&cmd),
                    black_box(at.add_ms(3_600_000)),
                )
            })
        },
    );

    // An SLA warning timer firing (no predicate, recomputes the SLA timers).
    let warn = submitted
        .timers
        .values()
        .find(|t| t.id.contains(":warn"))
        .expect("a warning timer is armed")
        .clone();
    let cmd = Command::FireTimer {
        timer_id: warn.id.clone(),
    };
    assert!(
        matches!(
            evaluate(&po, Some(&submitted), &cmd, warn.due_at),
            Outcome::Applied(_)
        ),
        "the warning fires at its due time"
    );
    group.bench_function(
        BenchmarkId::new("fire timer", "purchase-order sla warning"),
        |b| {
            b.iter(|| {
                evaluate(
                    black_box(&po),
                    black_box(Some(&submitted)),
                    black_box(&cmd),
                    black_box(warn.due_at),
                )
            })
        },
    );
    group.finish();
}

criterion_group!(evaluate_benches, benches);
criterion_main!(evaluate_benches);
