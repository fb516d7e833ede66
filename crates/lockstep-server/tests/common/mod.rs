//! A harness for real multi-process clusters on loopback: each node is a `lockstepd` process
//! with its own data directory and port.

#![allow(dead_code)]

pub use lockstep_lossydisk as lossy_fs;
#[allow(unused_imports)] // each test binary uses some of them
pub use lockstep_testpki::{JWT_AUDIENCE, JWT_ISSUER, Pki, sign_with};

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lockstep_client::{Client, ClusterStatus, Credentials, Identity, Options, Role, pb};
use lockstep_core::ActorKind;

/// What a node logs once the replicated log format allows group commit.
pub const GROUP_COMMIT_ON: &str = "log format allows group commit";

pub const PO: &str = include_str!("../../../../examples/workflows/purchase-order.yaml");

/// A workflow whose `waiting` state expires after 2 s ([`TICKETS_DUE`]); `leave` moves on
/// before that. The timer tests' workflow ([`Cluster::define_tickets`]).
pub const TICKETS: &str = r#"
workflow: tickets
data: { type: object }
states:
  waiting: { initial: true, expires: { after: 2s, transition: time_out } }
  handled: { terminal: true }
  timed_out: { terminal: true }
transitions:
  leave: { from: waiting, to: handled, allow: "true" }
  time_out: { from: waiting, to: timed_out, system: true }
"#;
/// When a `tickets` instance's `waiting` expires.
pub const TICKETS_DUE: Duration = Duration::from_secs(2);

pub struct Settings {
    pub nodes: usize,
    pub snapshot_every: u64,
    pub logs_to_keep: u64,
    /// More `lockstepd` flags for every node.
    pub node_args: Vec<String>,
    /// More environment variables for every node (e.g. `LOCKSTEP_MUTATION`).
    pub node_env: Vec<(String, String)>,
    /// Each node's wall-clock offset in seconds (libfaketime; the monotonic clock stays
    /// true); empty or 0: none.
    pub skews: Vec<i64>,
    /// Serve the web console on a loopback port per node ([`Cluster::console_ports`]).
    pub console: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            nodes: 3,
            snapshot_every: 10_000,
            logs_to_keep: 1_000,
            node_args: Vec::new(),
            node_env: Vec::new(),
            skews: Vec::new(),
            console: false,
        }
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub ports: Vec<u16>,
    /// Each node's `--metrics-listen` port (every node serves `GET /metrics`).
    pub metrics_ports: Vec<u16>,
    /// Each node's `--console-listen` port when [`Settings::console`] is set.
    pub console_ports: Vec<u16>,
    pub children: Vec<Option<Child>>,
    settings: Settings,
    /// Secure mode (TLS, mTLS between nodes, JWT clients): the test's CA and JWT issuer.
    /// `None`: development mode (`--dev`, header actors).
    pub pki: Option<Pki>,
    /// The `lockstepd` each node runs (this build's unless a test says otherwise).
    binaries: Vec<PathBuf>,
    /// Each node's data directory as a disk that loses unsynced writes at a power cut
    /// ([`Cluster::start_on_lossy_disks`]); empty for other clusters.
    disks: Vec<Option<lossy_fs::LossyDisk>>,
}

fn free_port() -> u16 {
    lockstep_client::loopback::free_port().expect("a free loopback port")
}

impl Cluster {
    /// A development-mode cluster (`--dev`).
    pub fn start(settings: Settings) -> Cluster {
        Cluster::launch(settings, false, None)
    }

    /// A development-mode cluster whose nodes all run the `lockstepd` at `binary` (an older
    /// build, for upgrade tests).
    pub fn start_with_binary(settings: Settings, binary: PathBuf) -> Cluster {
        Cluster::launch_with(settings, false, None, Some(binary))
    }

    /// The `lockstepd` node i runs from its next (re)start; `None`: this build's.
    pub fn set_binary(&mut self, i: usize, binary: Option<PathBuf>) {
        self.binaries[i] = binary.unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_lockstepd")));
    }

    /// A secure cluster: TLS with certificates from a CA the test makes, mTLS between the
    /// nodes, clients authenticated by JWTs, and the cluster policy `policy` (TOML) if given.
    pub fn start_secure(settings: Settings, policy: Option<&str>) -> Cluster {
        Cluster::launch(settings, true, policy)
    }

    fn launch(settings: Settings, secure: bool, policy: Option<&str>) -> Cluster {
        Cluster::launch_with(settings, secure, policy, None)
    }

    /// A development-mode cluster whose nodes keep their data directories on disks that lose
    /// every write not fsynced when their power is cut ([`Cluster::power_cut`]).
    pub fn start_on_lossy_disks(settings: Settings) -> Cluster {
        let mut cluster = Cluster::prepare(settings, false, None, None);
        for i in 0..cluster.settings.nodes {
            let disk = cluster.mount_disk(i);
            cluster.disks.push(Some(disk));
        }
        cluster.spawn_all();
        cluster
    }

    fn mount_disk(&self, i: usize) -> lossy_fs::LossyDisk {
        let backing = self.dir.path().join(format!("disk{}", i + 1));
        std::fs::create_dir_all(&backing).unwrap();
        std::fs::create_dir_all(self.data_dir(i)).unwrap();
        lossy_fs::LossyDisk::mount(&backing, &self.data_dir(i)).unwrap_or_else(|e| {
            panic!(
                "cannot mount the lossy disk of node {} (FUSE: /dev/fuse and root are needed): {e}",
                i + 1
            )
        })
    }

    /// Power cut of node i: the process dies, its disk loses every write it had not
    /// fsynced, and the machine boots (the disk is mounted again); restart it with
    /// [`Cluster::restart`].
    pub fn power_cut(&mut self, i: usize) {
        self.kill9(i);
        let disk = self.disks[i].take().expect("node i runs on a lossy disk");
        disk.power_cut().unwrap();
        let disk = self.mount_disk(i);
        self.disks[i] = Some(disk);
    }

    /// Makes node i's lossy disk fail every write and sync (`Some`) or work again (`None`).
    pub fn fail_disk(&self, i: usize, fault: Option<lossy_fs::DiskFault>) {
        self.disks[i]
            .as_ref()
            .expect("node i runs on a lossy disk")
            .fail_writes(fault);
    }

    /// Makes node i's lossy disk report `free` bytes free (`None`: the real figure again).
    pub fn report_free_bytes(&self, i: usize, free: Option<u64>) {
        self.disks[i]
            .as_ref()
            .expect("node i runs on a lossy disk")
            .report_free_bytes(free);
    }

    /// Bytes node i has written and not yet fsynced (what a power cut would lose now).
    pub fn unsynced_bytes(&self, i: usize) -> u64 {
        self.disks[i].as_ref().map_or(0, |d| d.unsynced_bytes())
    }

    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("node{}", i + 1))
    }

    fn launch_with(
        settings: Settings,
        secure: bool,
        policy: Option<&str>,
        binary: Option<PathBuf>,
    ) -> Cluster {
        let mut cluster = Cluster::prepare(settings, secure, policy, binary);
        cluster.spawn_all();
        cluster
    }

    fn spawn_all(&mut self) {
        for i in 0..self.settings.nodes {
            let child = self.spawn(i);
            self.children.push(Some(child));
        }
    }

    /// A cluster with its ports, directories and credentials, and no node started yet.
    fn prepare(
        settings: Settings,
        secure: bool,
        policy: Option<&str>,
        binary: Option<PathBuf>,
    ) -> Cluster {
        let binary = binary.unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_lockstepd")));
        let ports: Vec<u16> = (0..settings.nodes).map(|_| free_port()).collect();
        let metrics_ports: Vec<u16> = (0..settings.nodes).map(|_| free_port()).collect();
        let console_ports: Vec<u16> = if settings.console {
            (0..settings.nodes).map(|_| free_port()).collect()
        } else {
            Vec::new()
        };
        let dir = tempfile::tempdir().unwrap();
        let pki = secure.then(|| Pki::new(dir.path().join("pki")));
        if let (Some(pki), Some(policy)) = (&pki, policy) {
            std::fs::write(pki.dir.join("policy.toml"), policy).unwrap();
        }
        Cluster {
            dir,
            ports,
            metrics_ports,
            console_ports,
            children: Vec::new(),
            binaries: vec![binary; settings.nodes],
            settings,
            pki,
            disks: Vec::new(),
        }
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
        let mut command = Command::new(&self.binaries[i]);
        match &self.pki {
            None => {
                command.arg("--dev");
            }
            Some(pki) => {
                command.args(pki.node_args(i as u64 + 1));
                let policy = pki.dir.join("policy.toml");
                if policy.exists() {
                    command.arg("--policy").arg(policy);
                }
            }
        }
        command
            .args([
                "--id",
                &(i + 1).to_string(),
                "--listen",
                &self.endpoint(i),
                "--initial-members",
                &self.members(),
                "--metrics-listen",
                &format!("127.0.0.1:{}", self.metrics_ports[i]),
            ])
            .args(["--heartbeat-ms", "100", "--election-timeout-ms", "500"])
            .args([
                "--snapshot-every",
                &self.settings.snapshot_every.to_string(),
                "--logs-to-keep",
                &self.settings.logs_to_keep.to_string(),
            ])
            .args(
                self.console_ports
                    .get(i)
                    .map(|p| vec!["--console-listen".to_string(), format!("127.0.0.1:{p}")])
                    .unwrap_or_default(),
            )
            .args(&self.settings.node_args)
            .arg("--data-dir")
            .arg(self.data_dir(i))
            .env("RUST_LOG", "info,openraft=warn")
            .envs(self.settings.node_env.iter().map(|(k, v)| (k, v)))
            .env(
                lockstep_raft::state_machine::CRASH_IN_APPLY_ENV,
                self.crash_file(i),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some(skew) = self.settings.skews.get(i).filter(|s| **s != 0) {
            let lib = libfaketime().expect(
                "a skewed node needs libfaketime (Debian's faketime package; scripts/prereqs installs it)",
            );
            command
                .env("LD_PRELOAD", lib)
                .env("FAKETIME", format!("{skew:+}"))
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        }
        command.spawn().expect("spawn lockstepd")
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
        self.spawn_joiner_with(None)
    }

    /// [`Cluster::spawn_joiner`] running the `lockstepd` at `binary` (`None`: this build's).
    pub fn spawn_joiner_with(&mut self, binary: Option<PathBuf>) -> usize {
        let port = free_port();
        self.ports.push(port);
        self.metrics_ports.push(free_port());
        let i = self.ports.len() - 1;
        self.binaries
            .push(binary.unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_lockstepd"))));
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

    /// A client acting as `identity`: by headers in development mode, by a JWT for it over
    /// TLS in secure mode.
    pub fn client_for(&self, endpoints: &[String], identity: Identity) -> Client {
        self.client_with(endpoints, identity, Options::default())
    }

    /// [`Cluster::client_for`] with client `options` (e.g. not retrying OVERLOADED).
    pub fn client_with(
        &self,
        endpoints: &[String],
        identity: Identity,
        options: Options,
    ) -> Client {
        let credentials = match &self.pki {
            None => Credentials::default(),
            Some(pki) => Credentials {
                tls: Some(pki.tls(None)),
                token: Some(pki.token(&identity)),
            },
        };
        Client::with_credentials(endpoints, Some(identity), options, credentials).unwrap()
    }

    pub fn admin(&self) -> Client {
        self.client(admin_identity())
    }

    /// The status of node i, if it answers.
    pub async fn status(&self, i: usize, digest: bool) -> Option<ClusterStatus> {
        let client = self.client_for(
            &[self.endpoint(i)],
            Identity::new("probe", ActorKind::Human, &[]),
        );
        client.status_of(0, digest).await.ok()
    }

    /// Waits until node i answers a status request (a restarted node listens only once its
    /// store is open and Raft started, which a loaded machine may take seconds to do).
    pub async fn answers(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.status(i, false).await.is_none() {
            assert!(
                Instant::now() < deadline,
                "node {} did not answer within 30 s; logs in {}",
                i + 1,
                self.dir.path().display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the running nodes agree on a leader; returns its index.
    pub async fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for i in self.running() {
                if let Some(s) = self.status(i, false).await
                    && s.role == Role::Leader
                {
                    return (s.node_id - 1) as usize;
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
        self.try_converged_digests(Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// As [`Cluster::converged_digests`], waiting at most `within`; the error says what each
    /// node last answered.
    pub async fn try_converged_digests(&self, within: Duration) -> Result<Vec<String>, String> {
        let deadline = Instant::now() + within;
        loop {
            let mut statuses = Vec::new();
            for i in self.running() {
                statuses.push(self.status(i, true).await);
            }
            let last = statuses
                .iter()
                .map(|s| match s {
                    Some(s) => format!("node {} applied {}", s.node_id, s.applied_index),
                    None => "a node did not answer".into(),
                })
                .collect::<Vec<_>>()
                .join(", ");
            let all: Option<Vec<ClusterStatus>> = statuses.into_iter().collect();
            if let Some(all) = all {
                let first = all[0].applied_index;
                if first > 0 && all.iter().all(|s| s.applied_index == first) {
                    let digests: Vec<String> = all
                        .iter()
                        .map(|s| s.digest.clone().unwrap_or_default())
                        .collect();
                    // The digest was read after the index; re-check that nothing moved.
                    if digests.iter().all(|d| *d == digests[0]) {
                        return Ok(digests);
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "replicas did not converge within {within:?} ({last}); logs in {}",
                    self.dir.path().display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `GET /metrics` from node i over a plain HTTP/1.1 connection: (status line and headers,
    /// body).
    pub async fn scrape(&self, i: usize) -> (String, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = format!("127.0.0.1:{}", self.metrics_ports[i]);
        let mut stream = tokio::net::TcpStream::connect(&addr)
            .await
            .unwrap_or_else(|e| panic!("connect to the metrics endpoint {addr}: {e}"));
        stream
            .write_all(
                format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .unwrap();
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
            .await
            .expect("the metrics endpoint answers within 10 s")
            .unwrap();
        let text = String::from_utf8(raw).expect("metrics are UTF-8");
        let (head, body) = text
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("not an HTTP response: {text}"));
        let chunked = head
            .lines()
            .any(|l| l.eq_ignore_ascii_case("transfer-encoding: chunked"));
        let body = if chunked {
            dechunk(body)
        } else {
            body.to_string()
        };
        (head.to_string(), body)
    }

    /// The client the ticket helpers act with (a human without roles: `tickets` allows all).
    pub fn ticket_client(&self) -> Client {
        self.client(Identity::new("alice", ActorKind::Human, &[]))
    }

    /// Applies [`TICKETS`] as workflow `name`, whose `waiting` expires after `after`
    /// (e.g. `2s`, `1h`).
    pub async fn define_tickets(&self, name: &str, after: &str) {
        let source = TICKETS
            .replace("workflow: tickets", &format!("workflow: {name}"))
            .replace("after: 2s", &format!("after: {after}"));
        self.ticket_client()
            .apply_definition(
                &lockstep_client::request_id(),
                &source,
                lockstep_client::Provenance::default(),
            )
            .await
            .unwrap();
    }

    /// Creates an instance of `tickets`; returns its id.
    pub async fn create_ticket(&self) -> String {
        self.ticket_client()
            .create(
                &lockstep_client::request_id(),
                "tickets",
                None,
                &serde_json::json!({}),
            )
            .await
            .unwrap()
            .instance_id
    }

    /// Instance `id`'s state, read linearizably.
    pub async fn state_of(&self, id: &str) -> String {
        self.ticket_client()
            .get(
                lockstep_client::by_id(id),
                pb::ReadConsistency::Linearizable,
            )
            .await
            .unwrap()
            .instance
            .state
    }

    /// Applies the example purchase-order workflow as the admin.
    pub async fn define_po(&self) {
        let r = self
            .admin()
            .apply_definition(
                &lockstep_client::request_id(),
                PO,
                lockstep_client::Provenance {
                    repository: "test".into(),
                    commit: "c0ffee".into(),
                    path: "purchase-order.yaml".into(),
                },
            )
            .await
            .unwrap();
        assert_eq!(r.workflow, "purchase-order");
    }

    /// Waits until every running node's log says the replicated log format allows group
    /// commit (`format_gate.rs`), at most `within`.
    pub async fn wait_for_group_commit(&self, within: Duration) {
        let started = Instant::now();
        while !self
            .running()
            .into_iter()
            .all(|i| self.log(i).contains(GROUP_COMMIT_ON))
        {
            assert!(
                started.elapsed() < within,
                "the log format was not raised within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.log_path(i)).unwrap_or_default()
    }

    /// While this file exists, node i aborts at its next apply, after the entries are
    /// committed and before their batch is written (and removes the file first).
    pub fn crash_file(&self, i: usize) -> PathBuf {
        self.dir
            .path()
            .join(format!("node{}.crash-in-apply", i + 1))
    }

    /// Waits for node i's process to exit by itself, and forgets it (so it can be restarted).
    pub async fn wait_for_exit(&mut self, i: usize, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            let child = self.children[i].as_mut().expect("node is running");
            if let Some(status) = child.try_wait().unwrap() {
                self.children[i] = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "node {} did not exit within {within:?}",
                i + 1
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Unmounted before the temporary directory holding their backing files goes.
        self.disks.clear();
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

/// Decodes an HTTP/1.1 chunked body.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").expect("chunk size line");
        let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16)
            .expect("hex chunk size");
        if size == 0 {
            return out;
        }
        out.push_str(&rest[..size]);
        body = rest[size..]
            .strip_prefix("\r\n")
            .expect("chunk ends with CRLF");
    }
}

/// Creates a purchase order `key` under one request id, retrying failures (a crashed or
/// powerless node, an election) with the same id until `within` has passed; the instance id
/// it was acknowledged with. A refusal fails the test.
pub async fn create_with_retries(client: &Client, key: &str, within: Duration) -> String {
    let id = lockstep_client::request_id();
    let data = serde_json::json!({"amount": 100, "requester": "alice"});
    let deadline = Instant::now() + within;
    loop {
        match client.create(&id, "purchase-order", Some(key), &data).await {
            Ok(change) => return change.instance_id,
            Err(e) => {
                assert!(e.refusal_code().is_none(), "{key} refused: {e}");
                assert!(Instant::now() < deadline, "{key} not acknowledged: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The value of an unlabelled counter or gauge in a Prometheus text body.
/// libfaketime, if installed (`/usr/lib/<arch>/faketime/libfaketime.so.1`).
pub fn libfaketime() -> Option<PathBuf> {
    std::fs::read_dir("/usr/lib")
        .ok()?
        .flatten()
        .map(|e| e.path().join("faketime/libfaketime.so.1"))
        .find(|p| p.exists())
}

pub fn counter(body: &str, name: &str) -> u64 {
    metric(body, name)
}

/// The value of a gauge line of `/metrics`, e.g. `lockstep_clock_offset_seconds{peer="1"}`.
pub fn gauge(body: &str, name: &str) -> f64 {
    metric(body, name)
}

fn metric<T: std::str::FromStr>(body: &str, name: &str) -> T {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{body}"))
}

pub fn admin_identity() -> Identity {
    Identity::new("admin", ActorKind::Human, &["admin"])
}

pub fn alice() -> Identity {
    Identity::new("alice", ActorKind::Human, &["requester"])
}

pub fn bob() -> Identity {
    Identity::new("bob", ActorKind::Human, &["approver"])
}
