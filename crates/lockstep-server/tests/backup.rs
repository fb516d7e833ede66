//! Backups and restores with real processes: an online checkpoint through `Cluster/Backup`
//! on a follower of a 3-node cluster, an offline one with `lockstepd backup` on a stopped
//! node, and `lockstepd restore` turning each into a new one-node cluster that serves the
//! same instances, takes new writes, and keeps its identity across a restart.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Cluster, PO, Settings, alice, bob};
use lockstep_client::{
    Client, ClusterStatus, Error, Identity, Instance, InstanceChange, Options, Role, by_key, pb,
    request_id,
};
use lockstep_core::{ActorKind, RefusalCode};

fn free_port() -> u16 {
    lockstep_client::loopback::free_port().expect("a free loopback port")
}

fn admin() -> Identity {
    Identity::new("admin", ActorKind::Human, &["admin"])
}

fn lockstepd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lockstepd"))
        .args(args)
        .output()
        .expect("run lockstepd")
}

fn text(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

async fn define(client: &Client) {
    client
        .apply_definition(
            &request_id(),
            PO,
            lockstep_client::Provenance {
                repository: "test".into(),
                commit: "c0ffee".into(),
                path: "purchase-order.yaml".into(),
            },
        )
        .await
        .unwrap();
}

async fn create(client: &Client, key: &str, amount: u32) {
    client
        .create(
            &request_id(),
            "purchase-order",
            Some(key),
            &serde_json::json!({"amount": amount, "requester": "alice"}),
        )
        .await
        .unwrap();
}

async fn take(client: &Client, key: &str, transition: &str) -> InstanceChange {
    client
        .transition(
            &request_id(),
            by_key("purchase-order", key),
            transition,
            &serde_json::Value::Null,
            None,
        )
        .await
        .unwrap()
}

/// The stored instance. An SLA's consumed and remaining budget are computed from the reading
/// node's clock at read time (and only advance in business hours), so they are left out: two
/// reads of the same state compare equal whenever they are made.
async fn get(client: &Client, key: &str) -> Result<Instance, Error> {
    client
        .get(
            by_key("purchase-order", key),
            pb::ReadConsistency::Linearizable,
        )
        .await
        .map(|r| {
            let mut instance = r.instance;
            for sla in instance.slas.values_mut() {
                sla.consumed_ms = Default::default();
                sla.remaining_ms = Default::default();
            }
            instance
        })
}

/// A node started from a restored data directory, as a one-node cluster.
struct Solo {
    id: u64,
    port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Solo {
    fn start(id: u64, port: u16, data_dir: &Path, log: &Path) -> Solo {
        let mut solo = Solo {
            id,
            port,
            data_dir: data_dir.to_path_buf(),
            log: log.to_path_buf(),
            child: None,
        };
        solo.spawn();
        solo
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_lockstepd"))
            .args(["--id", &self.id.to_string()])
            .args(["--listen", &self.addr(), "--dev"])
            .args(["--heartbeat-ms", "100", "--election-timeout-ms", "500"])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn lockstepd");
        self.child = Some(child);
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    fn client(&self, identity: Identity) -> Client {
        Client::new(&[self.addr()], Some(identity), Options::default()).unwrap()
    }

    /// Waits until the node leads its one-node cluster; returns its status.
    async fn leading(&self) -> ClusterStatus {
        let client = self.client(admin());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(s) = client.status_of(0, false).await
                && s.role == Role::Leader
            {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "the restored node did not lead within 30 s; log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Solo {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "---- restored node log ----\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

/// Restores `checkpoint` as node `id` and starts it; checks it leads a cluster of itself.
async fn restore_and_start(checkpoint: &Path, dir: &Path, id: u64) -> Solo {
    let port = free_port();
    let data_dir = dir.join("restored");
    let addr = format!("127.0.0.1:{port}");
    let out = lockstepd(&[
        "restore",
        "--from",
        checkpoint.to_str().unwrap(),
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--id",
        &id.to_string(),
        "--advertise",
        &addr,
    ]);
    assert!(out.status.success(), "restore failed: {}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("restored"),
        "{}",
        text(&out)
    );
    // A second restore into the same, now populated, directory is refused.
    let again = lockstepd(&[
        "restore",
        "--from",
        checkpoint.to_str().unwrap(),
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--advertise",
        &addr,
    ]);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("not empty"),
        "{}",
        text(&again)
    );
    let solo = Solo::start(id, port, &data_dir, &dir.join("restored.log"));
    let status = solo.leading().await;
    assert_eq!(status.node_id, id);
    let members: Vec<(u64, String, bool)> = status
        .members
        .iter()
        .map(|m| (m.id, m.addr.clone(), m.voter))
        .collect();
    assert_eq!(
        members,
        vec![(id, addr, true)],
        "a cluster of the restored node alone"
    );
    solo
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_backup_of_a_follower_restores_as_a_one_node_cluster() {
    let cluster = Cluster::start(Settings::default());
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    define(&cluster.admin()).await;
    let as_alice = cluster.client(alice());
    let as_bob = cluster.client(bob());
    create(&as_alice, "PO-1", 500).await;
    take(&as_alice, "PO-1", "submit").await;
    take(&as_bob, "PO-1", "approve").await;
    create(&as_alice, "PO-2", 700).await;
    let before: Vec<Instance> = vec![
        get(&as_alice, "PO-1").await.unwrap(),
        get(&as_alice, "PO-2").await.unwrap(),
    ];
    assert_eq!(before[0].state, "approved");

    // The follower's checkpoint holds every write acknowledged before the request.
    let on_follower = cluster.client_for(&[cluster.endpoint(follower)], admin());
    let backup = on_follower.backup("nightly").await.unwrap();
    assert_eq!(backup.node_id, follower as u64 + 1);
    let expected_path = cluster
        .dir
        .path()
        .join(format!("node{}", follower + 1))
        .join("backups")
        .join("nightly");
    assert_eq!(Path::new(&backup.path), expected_path);
    assert!(backup.applied_index > 0 && backup.bytes > 0, "{backup:?}");
    // Names are one path component, and a name is used once.
    match on_follower.backup("nightly").await {
        Err(Error::Other(status)) => assert_eq!(status.code(), tonic::Code::AlreadyExists),
        other => panic!("a second backup named nightly: {other:?}"),
    }
    assert!(matches!(
        on_follower.backup("../escape").await,
        Err(Error::InvalidArgument(_))
    ));
    // A default name from the time.
    let unnamed = on_follower.backup("").await.unwrap();
    assert!(unnamed.path.contains("/backups/backup-"), "{unnamed:?}");

    // Written after the backup: not in it.
    create(&as_alice, "PO-3", 900).await;

    let inspected = lockstepd(&["inspect", &backup.path]);
    assert!(inspected.status.success(), "{}", text(&inspected));
    assert!(
        String::from_utf8_lossy(&inspected.stdout)
            .contains(&format!("index {}", backup.applied_index)),
        "{}",
        text(&inspected)
    );

    let restore_dir = tempfile::tempdir().unwrap();
    let mut solo = restore_and_start(Path::new(&backup.path), restore_dir.path(), 7).await;
    let restored_alice = solo.client(alice());
    for original in &before {
        let key = original.key.as_deref().expect("a business key");
        let restored = get(&restored_alice, key).await.unwrap();
        assert_eq!(&restored, original, "the restored instance is the same");
    }
    let missing = get(&restored_alice, "PO-3").await.unwrap_err();
    assert!(
        matches!(missing, Error::NotFound(_))
            || missing.refusal_code() == Some(RefusalCode::UnknownInstance),
        "{missing}"
    );
    let verified = solo.client(admin()).verify_audit().await.unwrap();
    assert!(verified.ok(), "{verified:?}");
    assert!(verified.records_checked >= 4, "{verified:?}");

    // It takes writes as the leader of its own cluster...
    let submitted = take(&restored_alice, "PO-2", "submit").await;
    assert_eq!(
        (submitted.state.as_str(), submitted.version),
        ("submitted", before[1].version + 1)
    );
    // ...and a restart keeps its identity and data (no new bootstrap).
    solo.kill9();
    solo.spawn();
    let status = solo.leading().await;
    assert_eq!(status.members.len(), 1);
    let after_restart = get(&restored_alice, "PO-2").await.unwrap();
    assert_eq!(after_restart.state, "submitted");
    assert_eq!(
        get(&restored_alice, "PO-1").await.unwrap(),
        before[0],
        "still the backed-up instance"
    );
    // The original cluster is untouched by all this.
    assert_eq!(get(&as_alice, "PO-2").await.unwrap().state, "draft");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_backup_of_a_stopped_node_restores() {
    let mut cluster = Cluster::start(Settings {
        nodes: 1,
        ..Settings::default()
    });
    cluster.leader().await;
    define(&cluster.admin()).await;
    let as_alice = cluster.client(alice());
    create(&as_alice, "PO-9", 300).await;
    take(&as_alice, "PO-9", "submit").await;
    let original = get(&as_alice, "PO-9").await.unwrap();

    let data_dir = cluster.dir.path().join("node1");
    let out = cluster.dir.path().join("offline-backup");
    let args = [
        "backup",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    // A running node holds its store: the offline tool says to use the online backup.
    let refused = lockstepd(&args);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("lockstep cluster backup"),
        "{}",
        text(&refused)
    );
    assert!(!out.exists());

    cluster.stop(0);
    let done = lockstepd(&args);
    assert!(done.status.success(), "{}", text(&done));

    let restore_dir = tempfile::tempdir().unwrap();
    let solo = restore_and_start(&out, restore_dir.path(), 1).await;
    let restored = get(&solo.client(alice()), "PO-9").await.unwrap();
    assert_eq!(restored, original);

    // A directory that is not a checkpoint is refused with a reason.
    let bad = lockstepd(&[
        "restore",
        "--from",
        restore_dir.path().to_str().unwrap(),
        "--data-dir",
        restore_dir.path().join("other").to_str().unwrap(),
        "--advertise",
        "127.0.0.1:7999",
    ]);
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("not a RocksDB database"),
        "{}",
        text(&bad)
    );
}
