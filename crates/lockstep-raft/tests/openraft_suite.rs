//! openraft's storage conformance suite against the RocksDB log and state machine, and
//! against the in-memory store.

use std::sync::Arc;

use lockstep_raft::TypeConfig;
use lockstep_raft::log_store::LogStore;
use lockstep_raft::state_machine::StateMachine;
use lockstep_store::{MemStore, RocksOptions, RocksStore, Store};
use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};

struct RocksBuilder;

impl StoreBuilder<TypeConfig, LogStore<RocksStore>, StateMachine<RocksStore>, tempfile::TempDir>
    for RocksBuilder
{
    async fn build(
        &self,
    ) -> Result<
        (
            tempfile::TempDir,
            LogStore<RocksStore>,
            StateMachine<RocksStore>,
        ),
        StorageError<u64>,
    > {
        let dir = tempfile::tempdir().expect("temp dir");
        let store =
            Arc::new(RocksStore::open(dir.path(), &RocksOptions::default()).expect("open RocksDB"));
        let sm = StateMachine::open(Arc::clone(&store), dir.path().join("snapshots"))
            .expect("snapshot dir");
        Ok((dir, LogStore::new(store), sm))
    }
}

struct MemBuilder;

impl StoreBuilder<TypeConfig, LogStore<MemStore>, StateMachine<MemStore>, tempfile::TempDir>
    for MemBuilder
{
    async fn build(
        &self,
    ) -> Result<
        (
            tempfile::TempDir,
            LogStore<MemStore>,
            StateMachine<MemStore>,
        ),
        StorageError<u64>,
    > {
        // Snapshot files still go to disk; the state itself is in memory.
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(MemStore::new());
        Ok((
            LogStore::new(Arc::clone(&store)),
            StateMachine::open(store, dir.path().join("snapshots")).expect("snapshot dir"),
        ))
        .map(|(log, sm)| (dir, log, sm))
    }
}

fn _assert_store<S: Store>() {}

#[test]
fn rocksdb_log_and_state_machine_pass_the_openraft_suite() {
    Suite::test_all(RocksBuilder).expect("suite passes");
}

#[test]
fn memory_log_and_state_machine_pass_the_openraft_suite() {
    Suite::test_all(MemBuilder).expect("suite passes");
}
