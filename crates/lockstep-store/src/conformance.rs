//! One conformance suite that every [`Store`] implementation passes.

use std::path::Path;

use crate::{Batch, Durability, Family, FamilyEntry, Store};

/// Runs every check against stores made by `make` (a fresh, empty store per check);
/// `scratch` is an empty directory the checks may write into.
pub fn run_all<S: Store>(make: impl Fn() -> S, scratch: &Path) {
    get_put_delete(&make());
    ranges_are_ordered_and_bounded(&make());
    last_finds_the_greatest_key(&make());
    batches_are_atomic_across_families(&make());
    delete_range_removes_exactly_the_range(&make());
    export_is_ordered_by_family_then_key(&make());
    a_checkpoint_is_a_point_in_time_copy(&make(), scratch);
}

fn put(store: &impl Store, family: Family, key: &[u8], value: &[u8]) {
    let mut b = Batch::default();
    b.put(family, key, value);
    store.write(b, Durability::Sync).unwrap();
}

fn get_put_delete(store: &impl Store) {
    assert_eq!(store.get(Family::Meta, b"a").unwrap(), None);
    put(store, Family::Meta, b"a", b"1");
    assert_eq!(
        store.get(Family::Meta, b"a").unwrap().as_deref(),
        Some(&b"1"[..])
    );
    assert_eq!(
        store.get(Family::Instances, b"a").unwrap(),
        None,
        "families are separate"
    );
    let mut b = Batch::default();
    b.delete(Family::Meta, b"a");
    store.write(b, Durability::Buffered).unwrap();
    assert_eq!(store.get(Family::Meta, b"a").unwrap(), None);
}

fn ranges_are_ordered_and_bounded(store: &impl Store) {
    for i in [5u64, 1, 3, 2, 4, 256] {
        put(store, Family::RaftLog, &i.to_be_bytes(), &[i as u8]);
    }
    let keys = |v: Vec<(Vec<u8>, Vec<u8>)>| {
        v.into_iter()
            .map(|(k, _)| u64::from_be_bytes(k.try_into().unwrap()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        keys(
            store
                .range(
                    Family::RaftLog,
                    &2u64.to_be_bytes(),
                    Some(&5u64.to_be_bytes()),
                    100
                )
                .unwrap()
        ),
        [2, 3, 4]
    );
    assert_eq!(
        keys(
            store
                .range(Family::RaftLog, &0u64.to_be_bytes(), None, 3)
                .unwrap()
        ),
        [1, 2, 3]
    );
    assert_eq!(
        keys(
            store
                .range(Family::RaftLog, &5u64.to_be_bytes(), None, 100)
                .unwrap()
        ),
        [5, 256]
    );
    assert!(
        store
            .range(
                Family::RaftLog,
                &5u64.to_be_bytes(),
                Some(&5u64.to_be_bytes()),
                100
            )
            .unwrap()
            .is_empty()
    );
}

fn last_finds_the_greatest_key(store: &impl Store) {
    assert_eq!(store.last(Family::RaftLog, &[], None).unwrap(), None);
    for i in [1u64, 7, 3] {
        put(store, Family::RaftLog, &i.to_be_bytes(), b"x");
    }
    let last = store.last(Family::RaftLog, &[], None).unwrap().unwrap();
    assert_eq!(last.0, 7u64.to_be_bytes());
    let bounded = store
        .last(Family::RaftLog, &[], Some(&7u64.to_be_bytes()))
        .unwrap()
        .unwrap();
    assert_eq!(bounded.0, 3u64.to_be_bytes());
}

fn batches_are_atomic_across_families(store: &impl Store) {
    let mut b = Batch::default();
    b.put(Family::Instances, b"i1", b"state");
    b.put(Family::Audit, b"\x00\x00\x00\x01", b"record");
    b.put(Family::Meta, b"applied", b"1");
    assert_eq!(b.len(), 3);
    store.write(b, Durability::Buffered).unwrap();
    assert!(store.get(Family::Instances, b"i1").unwrap().is_some());
    assert!(
        store
            .get(Family::Audit, b"\x00\x00\x00\x01")
            .unwrap()
            .is_some()
    );
    assert!(store.get(Family::Meta, b"applied").unwrap().is_some());
}

fn delete_range_removes_exactly_the_range(store: &impl Store) {
    for i in 1u64..=10 {
        put(store, Family::RaftLog, &i.to_be_bytes(), b"x");
    }
    let mut b = Batch::default();
    b.delete_range(Family::RaftLog, 3u64.to_be_bytes(), 8u64.to_be_bytes());
    store.write(b, Durability::Sync).unwrap();
    let left: Vec<u64> = store
        .range(Family::RaftLog, &[], None, 100)
        .unwrap()
        .into_iter()
        .map(|(k, _)| u64::from_be_bytes(k.try_into().unwrap()))
        .collect();
    assert_eq!(left, [1, 2, 8, 9, 10]);
}

fn export_is_ordered_by_family_then_key(store: &impl Store) {
    put(store, Family::Meta, b"b", b"2");
    put(store, Family::Meta, b"a", b"1");
    put(store, Family::Definitions, b"z", b"9");
    put(store, Family::RaftLog, b"x", b"not exported");
    let all = store.export(&[Family::Definitions, Family::Meta]).unwrap();
    let keys: Vec<(Family, &[u8])> = all.iter().map(|(f, k, _)| (*f, k.as_slice())).collect();
    assert_eq!(
        keys,
        [
            (Family::Definitions, &b"z"[..]),
            (Family::Meta, &b"a"[..]),
            (Family::Meta, &b"b"[..])
        ]
    );
}

fn a_checkpoint_is_a_point_in_time_copy<S: Store>(store: &S, scratch: &Path) {
    put(store, Family::Meta, b"applied", b"7");
    put(store, Family::Instances, b"i1", b"before");
    put(store, Family::RaftLog, b"l1", b"log");
    let dir = scratch.join("checkpoint");
    store.checkpoint(&dir).unwrap();
    put(store, Family::Instances, b"i1", b"after");
    put(store, Family::Instances, b"i2", b"new");
    let mut b = Batch::default();
    b.delete(Family::Meta, b"applied");
    store.write(b, Durability::Buffered).unwrap();

    let mut seen: Vec<FamilyEntry> = Vec::new();
    S::read_checkpoint(&dir, &[Family::Instances, Family::Meta], &mut |f, k, v| {
        seen.push((f, k.to_vec(), v.to_vec()));
        Ok(())
    })
    .unwrap();
    assert_eq!(
        seen,
        [
            (Family::Instances, b"i1".to_vec(), b"before".to_vec()),
            (Family::Meta, b"applied".to_vec(), b"7".to_vec()),
        ],
        "the copy holds the state at the checkpoint, only the families asked for"
    );
    assert_eq!(
        store.get(Family::Instances, b"i1").unwrap().as_deref(),
        Some(&b"after"[..]),
        "the store moved on"
    );
    assert!(
        store.checkpoint(&dir).is_err(),
        "a checkpoint never overwrites an existing directory"
    );
}
