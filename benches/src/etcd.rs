//! The `--baseline etcd` run: a 3-node etcd cluster on loopback, driven with the same
//! concurrency (or arrival rate) and the same value size as the Lockstep run.
//!
//! etcd comes from Debian's `etcd-server` package, installed with apt when no `etcd` binary is
//! found. Each node gets its own durable data directory in a temporary directory (the WAL is
//! fsynced on every commit, etcd's default), and the client talks gRPC to `etcdserverpb.KV/Put`
//! through a tonic client generated from `proto/etcdserverpb/kv.proto`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tonic::transport::{Channel, Endpoint};

use crate::load::{Outcome, Workload};

mod pb {
    #![allow(missing_debug_implementations, clippy::all, clippy::pedantic)]
    tonic::include_proto!("etcdserverpb");
}

/// etcd nodes of the baseline cluster: the 3-node durable cluster the issue compares with.
const NODES: usize = 3;
/// How long the cluster may take to elect a leader and accept a first put.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Deadline of one put (a closed loop at a few hundred clients on 2 cores stays far below).
const PUT_TIMEOUT: Duration = Duration::from_secs(30);
/// The Debian package with the etcd server.
const PACKAGE: &str = "etcd-server";

/// A running etcd cluster; dropping it kills the nodes and deletes their data.
#[derive(Debug)]
pub(crate) struct EtcdCluster {
    children: Vec<Child>,
    client_urls: Vec<String>,
    dir: tempfile::TempDir,
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl EtcdCluster {
    /// The node processes' ids, for the cost per operation.
    pub(crate) fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }
}

/// Finds the etcd binary: `explicit` if given, else `etcd` on PATH or in /usr/bin, else
/// installs Debian's `etcd-server` with apt-get.
pub(crate) fn binary(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        if path.is_file() {
            return Ok(path.to_path_buf());
        }
        bail!(
            "--etcd {}: no such file; give the path of an etcd server binary, or leave --etcd out to use (and if needed install) Debian's {PACKAGE}",
            path.display()
        );
    }
    if let Some(found) = find_etcd() {
        return Ok(found);
    }
    eprintln!("etcd not found: installing Debian's {PACKAGE} with apt-get");
    install()?;
    find_etcd().with_context(|| {
        format!("apt-get installed {PACKAGE} but no `etcd` binary is on PATH or in /usr/bin; pass its path with --etcd")
    })
}

fn find_etcd() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("etcd"))
        .find(|candidate| candidate.is_file())
}

/// `apt-get install -y etcd-server`, with an `apt-get update` first if the package is
/// unknown to the local index.
fn install() -> anyhow::Result<()> {
    let apt = |args: &[&str]| -> anyhow::Result<std::process::Output> {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .output()
            .context("running apt-get (the etcd baseline needs Debian's etcd-server package; on another system install etcd and pass --etcd PATH)")
    };
    let first = apt(&["install", "-y", "--no-install-recommends", PACKAGE])?;
    if first.status.success() {
        return Ok(());
    }
    let update = apt(&["update"])?;
    let second = apt(&["install", "-y", "--no-install-recommends", PACKAGE])?;
    if update.status.success() && second.status.success() {
        return Ok(());
    }
    bail!(
        "could not install {PACKAGE} with apt-get (exit {}):\n{}\nInstall it yourself (`sudo apt-get install {PACKAGE}`; apt needs root and a reachable Debian mirror), or pass an etcd server binary with --etcd PATH, or run without --baseline etcd",
        second.status,
        String::from_utf8_lossy(&second.stderr).trim()
    )
}

/// Starts a 3-node etcd cluster on loopback and waits until it accepts a put.
pub(crate) async fn start(binary: &Path) -> anyhow::Result<EtcdCluster> {
    let dir = tempfile::tempdir()?;
    let mut peer_urls = Vec::new();
    let mut client_urls = Vec::new();
    for _ in 0..NODES {
        peer_urls.push(format!(
            "http://127.0.0.1:{}",
            lockstep_client::loopback::free_port()?
        ));
        client_urls.push(format!(
            "http://127.0.0.1:{}",
            lockstep_client::loopback::free_port()?
        ));
    }
    let initial_cluster = peer_urls
        .iter()
        .enumerate()
        .map(|(i, url)| format!("etcd{}={url}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut cluster = EtcdCluster {
        children: Vec::new(),
        client_urls: client_urls.clone(),
        dir,
    };
    for i in 0..NODES {
        let name = format!("etcd{}", i + 1);
        let log_path = cluster.dir.path().join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path)?;
        let child = Command::new(binary)
            .arg("--name")
            .arg(&name)
            .arg("--data-dir")
            .arg(cluster.dir.path().join(&name))
            .args(["--listen-peer-urls", &peer_urls[i]])
            .args(["--initial-advertise-peer-urls", &peer_urls[i]])
            .args(["--listen-client-urls", &client_urls[i]])
            .args(["--advertise-client-urls", &client_urls[i]])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "lockstep-bench"])
            .args(["--logger", "zap", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        cluster.children.push(child);
    }
    let probe = Put::connect(&cluster, 0)?;
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if probe.put(b"lockstep-bench/ready").await.is_ok() {
            return Ok(cluster);
        }
        for (i, c) in cluster.children.iter_mut().enumerate() {
            if let Some(status) = c.try_wait()? {
                bail!(
                    "etcd node {} exited ({status}) while starting; its log: {}",
                    i + 1,
                    tail_of(&cluster.dir.path().join(format!("etcd{}.log", i + 1)))
                );
            }
        }
        if Instant::now() > deadline {
            bail!(
                "the etcd cluster accepted no put within {} s; node 1's log: {}",
                READY_TIMEOUT.as_secs(),
                tail_of(&cluster.dir.path().join("etcd1.log"))
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The last lines of a log file, for an error message.
fn tail_of(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    format!(
        "{}\n{}",
        path.display(),
        lines[lines.len().saturating_sub(10)..].join("\n")
    )
}

/// The etcd workload: one put of a `value_bytes` value under a fresh key per unit of work.
#[derive(Debug)]
pub(crate) struct Put {
    channel: Channel,
    value: Vec<u8>,
}

impl Put {
    /// A client of node `node` (one HTTP/2 connection, as the Lockstep client uses one).
    pub(crate) fn connect(cluster: &EtcdCluster, node: usize) -> anyhow::Result<Put> {
        let channel = Endpoint::from_shared(cluster.client_urls[node].clone())?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .connect_lazy();
        Ok(Put {
            channel,
            value: Vec::new(),
        })
    }

    pub(crate) fn with_value_bytes(mut self, value_bytes: usize) -> Put {
        self.value = vec![b'x'; value_bytes];
        self
    }

    async fn put(&self, key: &[u8]) -> Result<(), tonic::Status> {
        let mut request = tonic::Request::new(pb::PutRequest {
            key: key.to_vec(),
            value: self.value.clone(),
        });
        request.set_timeout(PUT_TIMEOUT);
        pb::kv_client::KvClient::new(self.channel.clone())
            .put(request)
            .await
            .map(|_| ())
    }
}

impl Workload for Put {
    async fn run_once(&self, sequence: u64, start: Instant) -> Outcome {
        let key = format!("lockstep-bench/{sequence:016x}");
        match self.put(key.as_bytes()).await {
            Ok(()) => Outcome {
                latencies: vec![start.elapsed()],
                ..Outcome::default()
            },
            Err(_) => Outcome {
                errors: 1,
                ..Outcome::default()
            },
        }
    }
}
