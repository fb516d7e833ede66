//! A harness for real multi-process clusters on loopback: each node is a `lockstepd` process
//! with its own data directory and port.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lockstep_client::{Client, Identity, Options, pb};
use lockstep_core::ActorKind;

pub const PO: &str = include_str!("../../../../examples/workflows/purchase-order.yaml");

pub struct Settings {
    pub nodes: usize,
    pub snapshot_every: u64,
    pub logs_to_keep: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            nodes: 3,
            snapshot_every: 10_000,
            logs_to_keep: 1_000,
        }
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub ports: Vec<u16>,
    pub children: Vec<Option<Child>>,
    settings: Settings,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Cluster {
    pub fn start(settings: Settings) -> Cluster {
        let ports: Vec<u16> = (0..settings.nodes).map(|_| free_port()).collect();
        let mut cluster = Cluster {
            dir: tempfile::tempdir().unwrap(),
            ports,
            children: Vec::new(),
            settings,
        };
        for i in 0..cluster.settings.nodes {
            let child = cluster.spawn(i);
            cluster.children.push(Some(child));
        }
        cluster
    }

    pub fn endpoint(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.ports[i])
    }

    pub fn endpoints(&self) -> Vec<String> {
        (0..self.ports.len()).map(|i| self.endpoint(i)).collect()
    }

    fn members(&self) -> String {
        (0..self.ports.len())
            .map(|i| format!("{}={}", i + 1, self.endpoint(i)))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn log_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("node{}.log", i + 1))
    }

    fn spawn(&self, i: usize) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .unwrap();
        Command::new(env!("CARGO_BIN_EXE_lockstepd"))
            .args([
                "--id",
                &(i + 1).to_string(),
                "--listen",
                &self.endpoint(i),
                "--initial-members",
                &self.members(),
                "--dev",
            ])
            .args(["--heartbeat-ms", "100", "--election-timeout-ms", "500"])
            .args([
                "--snapshot-every",
                &self.settings.snapshot_every.to_string(),
                "--logs-to-keep",
                &self.settings.logs_to_keep.to_string(),
            ])
            .arg("--data-dir")
            .arg(self.dir.path().join(format!("node{}", i + 1)))
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn lockstepd")
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut child) = self.children[i].take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// SIGTERM and wait: a graceful stop.
    pub fn stop(&mut self, i: usize) {
        if let Some(mut child) = self.children[i].take() {
            Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if child.try_wait().unwrap().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("node {} did not stop within 15 s of SIGTERM", i + 1);
        }
    }

    /// Starts one more node that joins later: it knows the existing members (so it does not
    /// bootstrap a cluster of its own) and waits to be added as a learner.
    pub fn spawn_joiner(&mut self) -> usize {
        let port = free_port();
        self.ports.push(port);
        let i = self.ports.len() - 1;
        let child = self.spawn(i);
        self.children.push(Some(child));
        i
    }

    /// SIGSTOP / SIGCONT: the process is frozen but keeps its sockets, like a hung machine.
    pub fn pause(&self, i: usize, frozen: bool) {
        if let Some(child) = &self.children[i] {
            Command::new("kill")
                .arg(if frozen { "-STOP" } else { "-CONT" })
                .arg(child.id().to_string())
                .status()
                .unwrap();
        }
    }

    pub fn restart(&mut self, i: usize) {
        assert!(
            self.children[i].is_none(),
            "node {} is still running",
            i + 1
        );
        let child = self.spawn(i);
        self.children[i] = Some(child);
    }

    pub fn client(&self, identity: Identity) -> Client {
        self.client_for(&self.endpoints(), identity)
    }

    pub fn client_for(&self, endpoints: &[String], identity: Identity) -> Client {
        Client::new(endpoints, Some(identity), Options::default()).unwrap()
    }

    pub fn admin(&self) -> Client {
        self.client(Identity::new("admin", ActorKind::Human, &["admin"]))
    }

    /// The status of node i, if it answers.
    pub async fn status(&self, i: usize, digest: bool) -> Option<pb::ClusterStatus> {
        let client = self.client_for(
            &[self.endpoint(i)],
            Identity::new("probe", ActorKind::Human, &[]),
        );
        client.status_of(0, digest).await.ok()
    }

    /// Waits until the running nodes agree on a leader; returns its index.
    pub async fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for i in self.running() {
                if let Some(s) = self.status(i, false).await {
                    if s.role == "Leader" {
                        return (s.node_id - 1) as usize;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "no leader within 30 s; logs in {}",
                self.dir.path().display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn running(&self) -> Vec<usize> {
        (0..self.children.len())
            .filter(|i| self.children[*i].is_some())
            .collect()
    }

    /// Waits until every running node has applied the same index, then returns their digests.
    pub async fn converged_digests(&self) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut statuses = Vec::new();
            for i in self.running() {
                statuses.push(self.status(i, true).await);
            }
            let all: Option<Vec<pb::ClusterStatus>> = statuses.into_iter().collect();
            if let Some(all) = all {
                let first = all[0].applied_index;
                if first > 0 && all.iter().all(|s| s.applied_index == first) {
                    let digests: Vec<String> = all.iter().map(|s| s.digest.clone()).collect();
                    // The digest was read after the index; re-check that nothing moved.
                    if digests.iter().all(|d| *d == digests[0]) {
                        return digests;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "replicas did not converge within 60 s; logs in {}",
                self.dir.path().display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.log_path(i)).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            for i in 0..self.ports.len() {
                eprintln!(
                    "---- node {} log ----\n{}",
                    i + 1,
                    self.log(i)
                        .lines()
                        .rev()
                        .take(40)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
        }
    }
}

pub fn alice() -> Identity {
    Identity::new("alice", ActorKind::Human, &["requester"])
}

pub fn bob() -> Identity {
    Identity::new("bob", ActorKind::Human, &["approver"])
}
