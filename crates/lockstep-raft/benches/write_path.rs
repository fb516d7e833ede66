//! Cost of the replicated write path below the network: encoding and decoding a log entry (as
//! the log store does on append and read), and applying a run of committed entries to a real
//! RocksDB store in one batch (as the state machine does for every apply call), with and
//! without the fsync that log appends pay.
//!
//! `cargo bench --workspace --bench write_path -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use lockstep_core::{Actor, ActorKind, Timestamp};
use lockstep_raft::apply::{Applier, ApplyCache};
use lockstep_raft::{Body, Proposal, Provenance, Target, TypeConfig};
use lockstep_store::{Batch, Durability, Family, RocksOptions, RocksStore, Store, envelope, keys};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

const PURCHASE_ORDER: &str = include_str!("../../../examples/workflows/purchase-order.yaml");

fn alice() -> Actor {
    Actor::new("alice", ActorKind::Human, &["requester"])
}

fn entry(index: u64, at_ms: i64, body: Body) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Proposal {
            request_id: Some(format!("req-{index}")),
            at: Timestamp::from_millis(at_ms),
            body,
        }),
    }
}

fn create_body() -> Body {
    Body::Create {
        workflow: "purchase-order".into(),
        key: None,
        data: serde_json::json!({ "amount": 2500.0, "requester": "alice" }),
        actor: alice(),
    }
}

fn submit_body(instance_id: &str) -> Body {
    Body::Transition {
        target: Target::Id(instance_id.into()),
        transition: "submit".into(),
        payload: serde_json::Value::Null,
        actor: alice(),
        expected_version: None,
    }
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("log_entry_codec");
    for (name, body) in [
        ("create", create_body()),
        ("transition", submit_body("po-0000000000000001")),
    ] {
        let e = entry(42, 1_000, body);
        let bytes = envelope::encode(&e);
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_function(BenchmarkId::new("encode", name), |b| {
            b.iter(|| envelope::encode(black_box(&e)))
        });
        group.bench_function(BenchmarkId::new("decode", name), |b| {
            b.iter(|| {
                envelope::decode::<Entry<TypeConfig>>(Family::RaftLog, b"42", black_box(&bytes))
                    .expect("decodes")
            })
        });
    }
    group.finish();
}

/// A RocksDB store with the purchase-order workflow applied, and the next log index.
fn store_with_definition(dir: &std::path::Path) -> (RocksStore, ApplyCache, u64) {
    let store = RocksStore::open(dir, &RocksOptions::default()).expect("open RocksDB");
    let mut cache = ApplyCache::default();
    let mut applier = Applier::new(&store, &mut cache);
    applier
        .apply_entry(&entry(
            1,
            1_000,
            Body::ApplyDefinition {
                source: PURCHASE_ORDER.into(),
                provenance: Provenance::default(),
                actor: Actor::new("admin", ActorKind::Human, &[]),
            },
        ))
        .expect("apply the definition");
    let batch = applier.into_batch();
    store.write(batch, Durability::Sync).expect("write");
    (store, cache, 2)
}

fn apply_batch(c: &mut Criterion) {
    let mut group = c.benchmark_group("apply_batch");
    group.sample_size(20);
    for run in [1u64, 16, 64] {
        group.throughput(Throughput::Elements(run));
        for (durability, name) in [
            (Durability::Buffered, "buffered"),
            (Durability::Sync, "fsync"),
        ] {
            let dir = tempfile::tempdir().expect("temp dir");
            let (store, mut cache, mut index) = store_with_definition(dir.path());
            group.bench_function(BenchmarkId::new(format!("creates_{name}"), run), |b| {
                b.iter(|| {
                    let mut applier = Applier::new(&store, &mut cache);
                    for _ in 0..run {
                        applier
                            .apply_entry(&entry(index, 2_000 + index as i64, create_body()))
                            .expect("apply");
                        index += 1;
                    }
                    store
                        .write(applier.into_batch(), durability)
                        .expect("write the batch");
                })
            });
        }
        // What a log append of the same run costs: encode every entry, one synced batch.
        let dir = tempfile::tempdir().expect("temp dir");
        let store = RocksStore::open(dir.path(), &RocksOptions::default()).expect("open RocksDB");
        let mut index = 1u64;
        group.bench_function(BenchmarkId::new("log_append_fsync", run), |b| {
            b.iter(|| {
                let mut batch = Batch::default();
                for _ in 0..run {
                    let e = entry(index, 2_000, create_body());
                    batch.put(Family::RaftLog, keys::u64_key(index), envelope::encode(&e));
                    index += 1;
                }
                store.write(batch, Durability::Sync).expect("append");
            })
        });
    }
    group.finish();
}

criterion_group!(benches, codec, apply_batch);
criterion_main!(benches);
