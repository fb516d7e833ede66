//! Both store implementations pass the same conformance suite.

use lockstep_store::{MemStore, RocksOptions, RocksStore, conformance};

#[test]
fn memory_store_conforms() {
    let scratch = tempfile::tempdir().unwrap();
    conformance::run_all(MemStore::new, scratch.path());
}

#[test]
fn rocksdb_store_conforms() {
    let dirs = std::sync::Mutex::new(Vec::new());
    let scratch = tempfile::tempdir().unwrap();
    conformance::run_all(
        || {
            let dir = tempfile::tempdir().unwrap();
            let store = RocksStore::open(dir.path(), &RocksOptions::default()).unwrap();
            dirs.lock().unwrap().push(dir);
            store
        },
        scratch.path(),
    );
}

#[test]
fn rocksdb_refuses_a_second_opener_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let _first = RocksStore::open(dir.path(), &RocksOptions::default()).unwrap();
    let err = RocksStore::open(dir.path(), &RocksOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("another lockstepd already uses the data directory"),
        "{err}"
    );
}
