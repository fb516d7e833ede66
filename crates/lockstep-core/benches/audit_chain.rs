//! Cost of the audit hash chain: linking one record after the chain heads (canonical JSON of
//! the record, SHA-256 for the global and the instance chain) and verifying it again, as
//! `lockstep audit verify` does for every record.
//!
//! `cargo bench -p lockstep-core --bench audit_chain -- --warm-up-time 1 --measurement-time 2`

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use lockstep_core::audit::ChainedRecord;
use lockstep_core::{
    Actor, ActorKind, AuditRecord, Command, Limits, Outcome, Timestamp, evaluate, validate,
};
use serde_json::{Value, json};

const PURCHASE_ORDER: &str = include_str!("../../../examples/workflows/purchase-order.yaml");

/// The audit record of a purchase order's `submit`: a typical record (an `allow` trace, an
/// SLA start), as the apply path links it.
fn submit_record() -> AuditRecord {
    let po = validate::compile(
        Some("purchase-order.yaml"),
        PURCHASE_ORDER,
        &Limits::default(),
    )
    .unwrap_or_else(|d| panic!("purchase-order does not compile: {d:?}"));
    let alice = Actor::new("alice", ActorKind::Human, &["requester"]);
    let at = Timestamp::parse_rfc3339("2026-11-16T09:00:00Z").expect("a valid time");
    let create = Command::Create {
        instance_id: "po-1".into(),
        key: Some("PO-2026-0001".into()),
        data: json!({ "amount": 2500.0, "requester": "alice" }),
        actor: alice.clone(),
    };
    let Outcome::Applied(created) = evaluate(&po, None, &create, at) else {
        panic!("create refused")
    };
    let submit = Command::Transition {
        transition: "submit".into(),
        payload: Value::Null,
        actor: alice,
        expected_version: None,
    };
    match evaluate(&po, Some(&created.instance), &submit, at.add_ms(60_000)) {
        Outcome::Applied(change) => change.audit,
        Outcome::Refused(r) => panic!("submit refused: {r:?}"),
    }
}

fn benches(c: &mut Criterion) {
    let record = submit_record();
    let (prev, instance_prev) = ([7u8; 32], [9u8; 32]);
    let mut group = c.benchmark_group("audit chain");
    group.throughput(Throughput::Elements(1));
    group.bench_function(BenchmarkId::new("link", "purchase-order submit"), |b| {
        b.iter(|| {
            ChainedRecord::link(
                black_box(record.clone()),
                black_box(1_000),
                black_box(2),
                black_box(3),
                black_box(1_042),
                black_box(prev),
                black_box(instance_prev),
            )
        })
    });
    let linked = ChainedRecord::link(record, 1_000, 2, 3, 1_042, prev, instance_prev);
    group.bench_function(BenchmarkId::new("verify", "purchase-order submit"), |b| {
        b.iter(|| {
            assert!(black_box(&linked).verify(black_box(&prev), black_box(&instance_prev)));
        })
    });
    group.finish();
}

criterion_group!(audit, benches);
criterion_main!(audit);
