//! Tampering with one node's audit log on its disk is detected (DESIGN §5), and so is a
//! rewrite of every node's history, given an anchor kept outside the cluster.
//!
//! A node is stopped, its RocksDB opened directly (as someone with access to the disk
//! would), records swapped or deleted, and the node started again; then the CLI, as an
//! auditor runs it: `lockstep audit verify` over every endpoint exits 1 naming the node, and
//! `lockstep audit anchor` / `audit verify --anchor` catch a history cut short everywhere.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Cluster, Settings, alice, create_with_retries};
use lockstep_raft::apply::{AuditHead, meta};
use lockstep_store::{Batch, Durability, Family, Store, envelope, keys};
use lockstep_store::{RocksOptions, RocksStore};

/// The CLI of this workspace build, next to `lockstepd`.
fn lockstep_cli() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_lockstepd")).with_file_name("lockstep");
    assert!(
        path.is_file(),
        "the lockstep CLI is not at {}: build the workspace (`cargo build --workspace --all-targets`)",
        path.display()
    );
    path
}

/// `lockstep --endpoints ALL --as auditor ARGS`: (exit code, stdout).
fn cli(cluster: &Cluster, args: &[&str]) -> (i32, String) {
    let endpoints: Vec<String> = (0..3).map(|i| cluster.endpoint(i)).collect();
    let out = Command::new(lockstep_cli())
        .args([
            "--endpoints",
            &endpoints.join(","),
            "--as",
            "auditor",
            "--roles",
            "auditor",
        ])
        .args(args)
        .env_remove("LOCKSTEP_ENDPOINTS")
        .output()
        .expect("run lockstep");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), format!("{stdout}{stderr}"))
}

/// Opens node i's RocksDB while the node is stopped.
fn disk(cluster: &Cluster, i: usize) -> RocksStore {
    RocksStore::open(
        &cluster.data_dir(i).join("rocksdb"),
        &RocksOptions::default(),
    )
    .expect("open the stopped node's RocksDB")
}

fn head(store: &RocksStore) -> AuditHead {
    lockstep_raft::read::audit_head(store).unwrap()
}

fn record(store: &RocksStore, seq: u64) -> Vec<u8> {
    store
        .get(Family::Audit, &keys::u64_key(seq))
        .unwrap()
        .unwrap_or_else(|| panic!("no audit record {seq}"))
}

/// Stops node i, lets `tamper` edit its store, starts it again and waits until it answers.
async fn tampered(cluster: &mut Cluster, i: usize, tamper: impl FnOnce(&RocksStore)) {
    cluster.kill9(i);
    {
        let store = disk(cluster, i);
        tamper(&store);
    }
    cluster.restart(i);
    cluster.leader().await;
    cluster.answers(i).await;
}

/// Swaps the stored records 2 and 3 (doing it twice puts them back).
fn swap_records_2_and_3(store: &RocksStore) {
    let (a, b) = (record(store, 2), record(store, 3));
    let mut batch = Batch::default();
    batch.put(Family::Audit, keys::u64_key(2), b);
    batch.put(Family::Audit, keys::u64_key(3), a);
    store.write(batch, Durability::Sync).unwrap();
}

/// Deletes the last record and points the head at the one before it: a history cut short
/// that is still a valid chain.
fn cut_the_last_record(store: &RocksStore) {
    let h = head(store);
    let before: lockstep_core::audit::ChainedRecord = envelope::decode(
        Family::Audit,
        &keys::u64_key(h.seq - 1),
        &record(store, h.seq - 1),
    )
    .unwrap();
    let mut batch = Batch::default();
    batch.delete(Family::Audit, keys::u64_key(h.seq));
    batch.put(
        Family::Meta,
        meta::AUDIT_HEAD.to_vec(),
        envelope::encode(&AuditHead {
            seq: h.seq - 1,
            hash: lockstep_core::audit::decode_hash(&before.hash).unwrap(),
        }),
    );
    store.write(batch, Durability::Sync).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_audit_log_was_edited_or_cut_short_is_named_and_an_anchor_catches_a_rewrite() {
    let mut cluster = Cluster::start(Settings::default());
    cluster.leader().await;
    cluster.define_po().await;
    let client = cluster.client(alice());
    for n in 0..4 {
        create_with_retries(&client, &format!("T-{n}"), Duration::from_secs(30)).await;
    }
    cluster.converged_digests().await;
    let (code, out) = cli(&cluster, &["audit", "verify"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("the same hash on every node"), "{out}");
    let (code, anchor) = cli(&cluster, &["audit", "anchor"]);
    assert_eq!(code, 0, "{anchor}");
    let anchor = anchor.trim().to_string();
    let node3 = cluster.endpoint(2);

    // Two records swapped on node 3: its own chain breaks.
    tampered(&mut cluster, 2, swap_records_2_and_3).await;
    let (code, out) = cli(&cluster, &["audit", "verify"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("{node3}: BROKEN at record 2")),
        "{out}"
    );
    tampered(&mut cluster, 2, swap_records_2_and_3).await;
    let (code, out) = cli(&cluster, &["audit", "verify"]);
    assert_eq!(code, 0, "swapped back: {out}");

    // The last record deleted on node 3 (head left as it was): its own chain breaks.
    tampered(&mut cluster, 2, |store| {
        let h = head(store);
        let mut batch = Batch::default();
        batch.delete(Family::Audit, keys::u64_key(h.seq));
        store.write(batch, Durability::Sync).unwrap();
    })
    .await;
    let (code, out) = cli(&cluster, &["audit", "verify"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("{node3}: BROKEN")), "{out}");

    // Every node's history cut short by its last record, heads rewritten to match: each
    // chain verifies and they agree, but the anchor taken before names the loss.
    for i in 0..3 {
        // (Node 3's last record is already gone: only its head is left to rewrite.)
        tampered(&mut cluster, i, cut_the_last_record).await;
    }
    let (code, out) = cli(&cluster, &["audit", "verify"]);
    assert_eq!(
        code, 0,
        "a consistent rewrite of every node passes without an anchor: {out}"
    );
    let (code, out) = cli(&cluster, &["audit", "verify", "--anchor", &anchor]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("before the anchor's record") && out.contains("records were removed"),
        "{out}"
    );
    let (code, out) = cli(&cluster, &["audit", "verify", "--anchor", "12:zz"]);
    assert_eq!(code, 2, "a malformed anchor is a usage error: {out}");
    assert!(out.contains("64 hex digits"), "{out}");
}
