//! A cluster of real `lockstepd` processes on loopback, in `--dev` mode, with a
//! fault-injecting [`Proxy`] on every directed peer link: node `i` dials node `j` through
//! `proxy(i, j)` (`--peer-via`), for Raft and for forwarding to the leader. Clients dial the
//! nodes directly.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use lockstep_client::{Client, ClusterStatus, Credentials, Identity, Options, Role};
use lockstep_core::ActorKind;
use lockstep_lossydisk::LossyDisk;

use crate::proxy::{LinkMode, Proxy};

/// libfaketime, if installed (Debian's `faketime` package; `scripts/prereqs` installs it).
pub fn libfaketime() -> Option<PathBuf> {
    let dir = Path::new("/usr/lib");
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let candidate = entry.path().join("faketime/libfaketime.so.1");
        if candidate.exists() {
            return Some(candidate);
        }
    }
    None
}

/// The slow-disk shim (`slowdisk/slowdisk.c`, built by `build.rs`): preloaded into every node,
/// it delays each disk sync by the milliseconds written in the node's control file.
const SLOWDISK_SO: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/libslowdisk.so"));

fn free_port() -> std::io::Result<u16> {
    lockstep_client::loopback::free_port()
}

/// How many times the node in one slot may be replaced by a fresh one in a run
/// ([`Cluster::replace`]). The ids of every replacement are known from the start (slot `i`'s
/// `r`-th replacement is node `i + 1 + r × nodes`), so that every node dials them through
/// its proxies (`--peer-via`) without a restart.
pub const REPLACEMENTS_PER_SLOT: u64 = 4;

/// The smallest SST file [`Cluster::corrupt_largest_sst`] corrupts: a footer alone is 53 bytes,
/// so a file this long holds at least one data block.
const SST_MIN_BYTES: u64 = 128;

/// The nodes of a cluster sit in slots: slot `i` has a fixed address and fixed proxies, and
/// runs node `ids[i]` (node `i + 1` until [`Cluster::replace`] puts a fresh node in it).
#[derive(Debug)]
pub struct Cluster {
    pub dir: PathBuf,
    pub ports: Vec<u16>,
    /// The node id running in each slot.
    ids: Vec<u64>,
    /// How many times each slot's node was replaced.
    replaced: Vec<u64>,
    /// Whether each slot's disk fails writes ([`Cluster::fail_disk`]).
    failing: Vec<bool>,
    pub children: Vec<Option<Child>>,
    pub paused: Vec<bool>,
    /// Clock offset of each node in seconds (libfaketime), 0 for none.
    pub skews: Vec<i64>,
    proxies: BTreeMap<(usize, usize), Proxy>,
    lockstepd: PathBuf,
    faketime: Option<PathBuf>,
    /// The slow-disk shim, written into `dir`.
    slowdisk: PathBuf,
    /// Each node's lossy disk (its data directory, mounted over `dir/diskN`) when the
    /// schedule cuts power (`None` during a cut); empty for other schedules.
    disks: Vec<Option<LossyDisk>>,
    /// `LOCKSTEP_MUTATION` for every node (the mutation smoke), if any.
    mutation: Option<String>,
    /// The CA and JWT issuer of a secure cluster (files under `<dir>/pki`); `None`:
    /// development mode (`--dev`).
    pki: Option<lockstep_testpki::Pki>,
    /// Whether every node reads its clock offset from `nodeN.faketime` (clock jumps).
    clock_files: bool,
}

/// How the nodes of a [`Cluster`] run.
#[derive(Clone, Debug, Default)]
pub struct NodeSetup {
    /// Clock offset of each node in seconds (libfaketime), empty or 0 for none.
    pub skews: Vec<i64>,
    /// Data directories on lossy disks, so that [`Cluster::power_cut`] can cut power.
    pub lossy_disks: bool,
    /// The deliberate bug every node runs with (`LOCKSTEP_MUTATION`).
    pub mutation: Option<String>,
    /// TLS, mutual TLS between nodes, JWT clients (default: `--dev`).
    pub secure: bool,
    /// Every node's wall clock offset read from a file, so that [`Cluster::jump_clock`] can
    /// move it while the node runs.
    pub clock_files: bool,
}

impl Cluster {
    /// Starts `nodes` nodes with data and logs under `dir`.
    pub async fn start(
        lockstepd: &Path,
        dir: &Path,
        nodes: usize,
        setup: NodeSetup,
    ) -> anyhow::Result<Cluster> {
        let NodeSetup {
            skews,
            lossy_disks,
            mutation,
            secure,
            clock_files,
        } = setup;
        std::fs::create_dir_all(dir)?;
        let mut ports = Vec::new();
        for _ in 0..nodes {
            ports.push(free_port()?);
        }
        let mut proxies = BTreeMap::new();
        for i in 0..nodes {
            for (j, port) in ports.iter().enumerate() {
                if i != j {
                    let upstream: SocketAddr = format!("127.0.0.1:{port}").parse()?;
                    proxies.insert((i, j), Proxy::start(upstream).await?);
                }
            }
        }
        let faketime = if clock_files || skews.iter().any(|s| *s != 0) {
            Some(libfaketime().context("clock skew needs libfaketime (apt-get install faketime)")?)
        } else {
            None
        };
        let slowdisk = dir.join("libslowdisk.so");
        std::fs::write(&slowdisk, SLOWDISK_SO)
            .with_context(|| format!("writing {}", slowdisk.display()))?;
        let mut cluster = Cluster {
            dir: dir.to_path_buf(),
            ports,
            ids: (1..=nodes as u64).collect(),
            replaced: vec![0; nodes],
            failing: vec![false; nodes],
            children: Vec::new(),
            paused: vec![false; nodes],
            skews: if skews.is_empty() {
                vec![0; nodes]
            } else {
                skews
            },
            proxies,
            lockstepd: lockstepd.to_path_buf(),
            faketime,
            slowdisk,
            disks: Vec::new(),
            mutation,
            pki: secure.then(|| lockstep_testpki::Pki::new(dir.join("pki"))),
            clock_files,
        };
        if lossy_disks {
            for i in 0..nodes {
                let disk = cluster.mount_disk(i)?;
                cluster.disks.push(Some(disk));
            }
        }
        for i in 0..nodes {
            cluster.slow_disk(i, 0)?;
            let child = cluster.spawn(i)?;
            cluster.children.push(Some(child));
        }
        Ok(cluster)
    }

    pub fn len(&self) -> usize {
        self.ports.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }

    pub fn endpoint(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.ports[i])
    }

    pub fn endpoints(&self) -> Vec<String> {
        (0..self.len()).map(|i| self.endpoint(i)).collect()
    }

    /// The id of the node in slot `i`.
    pub fn id(&self, i: usize) -> u64 {
        self.ids[i]
    }

    /// The slot whose node has this id, if one has.
    pub fn slot_of(&self, id: u64) -> Option<usize> {
        self.ids.iter().position(|x| *x == id)
    }

    /// Every id the node in slot `j` may have in this run: its first and every replacement's.
    fn ids_of_slot(&self, j: usize) -> impl Iterator<Item = u64> + '_ {
        (0..=REPLACEMENTS_PER_SLOT).map(move |r| j as u64 + 1 + r * self.len() as u64)
    }

    /// `--initial-members` of the node in slot `i`: the first members, and a replacement
    /// itself (a node must be among its initial members; being neither the lowest id nor
    /// initialized, it does not bootstrap, and waits to be added).
    fn initial_members(&self, i: usize) -> String {
        let mut members: Vec<String> = (0..self.len())
            .map(|j| format!("{}={}", j + 1, self.endpoint(j)))
            .collect();
        if self.replaced[i] > 0 {
            members.push(format!("{}={}", self.ids[i], self.endpoint(i)));
        }
        members.join(",")
    }

    /// Puts a fresh node in slot `i`, whose node must be stopped (and removed from the
    /// voters): its data directory is emptied and its next start is as a new node with the
    /// next id of the slot, at the same address, which a caller then adds as a learner and
    /// promotes. Returns the new id.
    pub fn replace(&mut self, i: usize) -> anyhow::Result<u64> {
        anyhow::ensure!(
            !self.is_running(i),
            "node {} still runs: stop it before replacing it",
            self.ids[i]
        );
        anyhow::ensure!(
            self.replaced[i] < REPLACEMENTS_PER_SLOT,
            "slot {} was replaced {REPLACEMENTS_PER_SLOT} times already (REPLACEMENTS_PER_SLOT)",
            i + 1
        );
        // Emptied in place: on a lossy disk the directory is its mount point.
        let dir = self.data_dir(i);
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
        {
            let path = entry?.path();
            if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            }
            .with_context(|| format!("removing {}", path.display()))?;
        }
        let old = self.ids[i];
        self.replaced[i] += 1;
        self.ids[i] = i as u64 + 1 + self.replaced[i] * self.len() as u64;
        use std::io::Write;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))?;
        writeln!(
            log,
            "==== lockstep-chaos: node {old} is gone; node {} starts here, on an empty data directory ====",
            self.ids[i]
        )?;
        Ok(self.ids[i])
    }

    /// Flips the first 16 bytes of the largest SST file of node `i`'s store (it must be
    /// stopped). A block-based table begins with its first data block, and even the smallest
    /// one (an entry with its 8-byte sequence suffix, a restart point, their count and the
    /// 5-byte trailer) is longer than 16 bytes, so the flip always lands in a block whose
    /// checksum then fails. The index, filter and footer are at the end of the file, so the
    /// store still opens and only a read of that block, or the scrub, meets the corruption.
    /// The file may be small: a store flushed by frequent snapshots can hold only SST files of
    /// a few hundred bytes (LZ4), which a size floor of 4 KiB once refused to corrupt.
    /// Returns the file's name.
    /// Whether node `i`'s store holds an SST file that [`Cluster::corrupt_largest_sst`] can
    /// corrupt (a snapshot flushes memtables into SST files, but asynchronously).
    pub fn has_sst_to_corrupt(&self, i: usize) -> bool {
        let store = self.data_dir(i).join("rocksdb");
        std::fs::read_dir(&store).is_ok_and(|entries| {
            entries.flatten().any(|e| {
                let path = e.path();
                path.extension().is_some_and(|x| x == "sst")
                    && std::fs::metadata(&path).is_ok_and(|m| m.len() >= SST_MIN_BYTES)
            })
        })
    }

    pub fn corrupt_largest_sst(&self, i: usize) -> anyhow::Result<String> {
        anyhow::ensure!(
            !self.is_running(i),
            "node {} still runs: stop it before corrupting its store",
            self.ids[i]
        );
        let store = self.data_dir(i).join("rocksdb");
        let mut largest: Option<(u64, PathBuf)> = None;
        for entry in
            std::fs::read_dir(&store).with_context(|| format!("reading {}", store.display()))?
        {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "sst") {
                let len = std::fs::metadata(&path)?.len();
                if largest.as_ref().is_none_or(|(l, _)| len > *l) {
                    largest = Some((len, path));
                }
            }
        }
        let Some((len, sst)) = largest.filter(|(len, _)| *len >= SST_MIN_BYTES) else {
            anyhow::bail!(
                "node {} has no SST file of {SST_MIN_BYTES} bytes or more in {} to corrupt",
                self.ids[i],
                store.display()
            );
        };
        let mut bytes = std::fs::read(&sst)?;
        for b in &mut bytes[..16] {
            *b ^= 0xff;
        }
        std::fs::write(&sst, &bytes).with_context(|| format!("writing {}", sst.display()))?;
        let name = sst.file_name().unwrap_or_default().to_string_lossy();
        Ok(format!("{name} ({len} bytes)"))
    }

    pub fn log_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("node{}.log", i + 1))
    }

    fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("node{}", i + 1))
    }

    /// Mounts node `i`'s lossy disk: its data directory, backed by `dir/diskN`.
    fn mount_disk(&self, i: usize) -> anyhow::Result<LossyDisk> {
        let backing = self.dir.join(format!("disk{}", i + 1));
        std::fs::create_dir_all(&backing)?;
        std::fs::create_dir_all(self.data_dir(i))?;
        LossyDisk::mount(&backing, &self.data_dir(i)).with_context(|| {
            format!(
                "mounting the lossy disk of node {} for a power cut (FUSE: needs /dev/fuse and root, or fusermount3)",
                i + 1
            )
        })
    }

    /// Power cut of node `i`: the process dies and its disk loses every write it had not
    /// fsynced; the disk is mounted again at once (the machine boots) and the node restarts
    /// when the fault heals ([`Cluster::restart`]). Says how many unsynced bytes were lost.
    pub fn power_cut(&mut self, i: usize) -> anyhow::Result<u64> {
        anyhow::ensure!(
            !self.disks.is_empty(),
            "node {} has no lossy disk: power cuts need NodeSetup::lossy_disks",
            i + 1
        );
        self.kill9(i);
        let lost = match self.disks[i].take() {
            Some(disk) => {
                let lost = disk.unsynced_bytes();
                disk.power_cut()
                    .with_context(|| format!("cutting the power of node {}", i + 1))?;
                lost
            }
            None => 0,
        };
        self.disks[i] = Some(self.mount_disk(i)?);
        Ok(lost)
    }

    /// Makes node `i`'s lossy disk fail every write and sync (`Some`) or work again (`None`).
    pub fn fail_disk(
        &mut self,
        i: usize,
        fault: Option<lockstep_lossydisk::DiskFault>,
    ) -> anyhow::Result<()> {
        match self.disks.get(i) {
            Some(Some(disk)) => {
                disk.fail_writes(fault);
                self.failing[i] = fault.is_some();
                Ok(())
            }
            _ => anyhow::bail!(
                "node {} has no lossy disk: failing disks need NodeSetup::lossy_disks",
                self.ids[i]
            ),
        }
    }

    /// The slots whose disks fail ([`Cluster::fail_disk`]).
    pub fn failing_disks(&self) -> Vec<usize> {
        (0..self.len()).filter(|i| self.failing[*i]).collect()
    }

    /// Waits up to `within` for node `i`'s process to exit by itself; its exit status, and
    /// the node is then stopped (restarted by [`Cluster::heal`]). `None`: still running.
    pub async fn wait_exit(
        &mut self,
        i: usize,
        within: Duration,
    ) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            let child = self.children[i].as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                self.children[i] = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `--dev`, or a secure node's certificate, CA and JWT issuer (the default cluster policy:
    /// role admin applies and changes membership, admin or auditor reads audit).
    fn security_args(&self, i: usize) -> Vec<String> {
        let Some(pki) = &self.pki else {
            return vec!["--dev".into()];
        };
        pki.node_args(self.ids[i])
    }

    /// `--max-clock-offset` for a skewed cluster: the spread of its offsets plus 2 s.
    fn max_clock_offset(&self) -> Option<String> {
        let (lo, hi) = (
            self.skews.iter().copied().min().unwrap_or(0),
            self.skews.iter().copied().max().unwrap_or(0),
        );
        (hi != lo).then(|| format!("{}s", hi - lo + 2))
    }

    fn spawn(&self, i: usize) -> anyhow::Result<Child> {
        let members = self.initial_members(i);
        // Every id slot `j` may have, dialled through the proxy to slot `j`.
        let via = (0..self.len())
            .filter(|j| *j != i)
            .flat_map(|j| {
                let proxy = self.proxies[&(i, j)].listen;
                self.ids_of_slot(j).map(move |id| format!("{id}={proxy}"))
            })
            .collect::<Vec<_>>()
            .join(",");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))?;
        let mut cmd = Command::new(&self.lockstepd);
        cmd.args([
            "--id",
            &self.ids[i].to_string(),
            "--listen",
            &self.endpoint(i),
        ])
        .args(["--initial-members", &members, "--peer-via", &via])
        .args(self.security_args(i))
        .args(["--heartbeat-ms", "100", "--election-timeout-ms", "600"])
        // Small snapshots and a short log: snapshots are built, sent and installed while
        // faults are going on.
        .args(["--snapshot-every", "300", "--logs-to-keep", "100"])
        // Skewed schedules test a cluster whose operator accepts loose clocks: the clock
        // offset guard's bound is raised above the spread of the offsets, or no node of
        // a -4 s / +5 s schedule would agree with a quorum and none would lead.
        .args(
            self.max_clock_offset()
                .map(|m| format!("--max-clock-offset={m}")),
        )
        .arg("--data-dir")
        .arg(self.data_dir(i))
        .env("RUST_LOG", "info,openraft=warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
        let mut preload = self.slowdisk.display().to_string();
        cmd.env("LOCKSTEP_SLOWDISK_FILE", self.slowdisk_file(i));
        if let (Some(lib), skew) = (&self.faketime, self.skews[i])
            && (skew != 0 || self.clock_files)
        {
            // Only the wall clock moves; timeouts and intervals (monotonic) stay true.
            preload = format!("{preload} {}", lib.display());
            cmd.env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
            if self.clock_files {
                // Re-read at most a second after it changes (`jump_clock`).
                let file = self.clock_file(i);
                std::fs::write(&file, format!("{skew:+}"))
                    .with_context(|| format!("writing {}", file.display()))?;
                cmd.env("FAKETIME_TIMESTAMP_FILE", file)
                    .env("FAKETIME_CACHE_DURATION", "1");
            } else {
                cmd.env("FAKETIME", format!("{skew:+}"));
            }
        }
        cmd.env("LD_PRELOAD", preload);
        if let Some(m) = &self.mutation {
            cmd.env("LOCKSTEP_MUTATION", m);
        }
        cmd.spawn()
            .with_context(|| format!("spawn {}", self.lockstepd.display()))
    }

    fn clock_file(&self, i: usize) -> PathBuf {
        self.dir.join(format!("node{}.faketime", i + 1))
    }

    /// Moves node `i`'s wall clock to `by` seconds from its skew (0: back to it); the node
    /// sees it within a second (libfaketime's cache). Needs `NodeSetup::clock_files`.
    pub fn jump_clock(&self, i: usize, by: i64) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.clock_files && self.faketime.is_some(),
            "clock jumps need libfaketime and a cluster started with clock files"
        );
        let file = self.clock_file(i);
        std::fs::write(&file, format!("{:+}", self.skews[i] + by))
            .with_context(|| format!("writing {}", file.display()))
    }

    fn slowdisk_file(&self, i: usize) -> PathBuf {
        self.dir.join(format!("node{}.slowdisk", i + 1))
    }

    /// Makes every disk sync of node `i` take `ms` milliseconds longer (0: normal speed). Takes
    /// effect at the node's next sync, running or restarted.
    pub fn slow_disk(&self, i: usize, ms: u64) -> anyhow::Result<()> {
        let file = self.slowdisk_file(i);
        std::fs::write(&file, ms.to_string()).with_context(|| format!("writing {}", file.display()))
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.children[i].is_some()
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut child) = self.children[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused[i] = false;
    }

    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        if self.children[i].is_none() {
            let child = self.spawn(i)?;
            self.children[i] = Some(child);
        }
        Ok(())
    }

    /// SIGSTOP / SIGCONT: frozen with its sockets open, like a hung machine.
    pub fn pause(&mut self, i: usize, frozen: bool) {
        if let Some(child) = &self.children[i] {
            let _ = Command::new("kill")
                .arg(if frozen { "-STOP" } else { "-CONT" })
                .arg(child.id().to_string())
                .status();
            self.paused[i] = frozen;
        }
    }

    pub fn set_link(&self, from: usize, to: usize, mode: LinkMode) {
        if let Some(p) = self.proxies.get(&(from, to)) {
            p.set(mode);
        }
    }

    /// Only links inside one of `components` pass (a node may be in several: a bridge); the
    /// others drop everything.
    pub fn partition(&self, components: &[Vec<usize>]) {
        self.partition_with(components, LinkMode::Drop);
    }

    /// As [`Cluster::partition`], the links between components in mode `cut` (`Drop`, or
    /// `Reset` for a partition that closes connections).
    pub fn partition_with(&self, components: &[Vec<usize>], cut: LinkMode) {
        for (&(i, j), p) in &self.proxies {
            let together = components.iter().any(|c| c.contains(&i) && c.contains(&j));
            p.set(if together { LinkMode::Pass } else { cut });
        }
    }

    /// Nodes that never sent anything through their proxies: if there are any, they do not
    /// dial peers through them (`--peer-via` ignored) and partitions would not isolate them.
    pub fn silent_nodes(&self) -> Vec<usize> {
        (0..self.len())
            .filter(|i| {
                self.proxies
                    .iter()
                    .filter(|((from, _), _)| from == i)
                    .all(|(_, p)| p.bytes() == 0)
            })
            .collect()
    }

    pub fn all_links(&self, mode: LinkMode) {
        for p in self.proxies.values() {
            p.set(mode);
        }
    }

    /// Every link passes, every disk works, every node runs and none is paused, every clock
    /// is back at its skew.
    pub fn heal(&mut self) -> anyhow::Result<()> {
        self.all_links(LinkMode::Pass);
        for i in 0..self.len() {
            self.slow_disk(i, 0)?;
            if let Some(Some(disk)) = self.disks.get(i) {
                disk.fail_writes(None);
            }
            self.failing[i] = false;
            if self.clock_files {
                self.jump_clock(i, 0)?;
            }
            if self.paused[i] {
                self.pause(i, false);
            }
            self.restart(i)?;
        }
        Ok(())
    }

    /// A client of `endpoints` acting as `identity`: named in a header in development mode,
    /// over TLS with a bearer JWT for it on a secure cluster.
    pub fn client_for(&self, endpoints: &[String], identity: Identity, options: Options) -> Client {
        let credentials = match &self.pki {
            None => Credentials::default(),
            Some(pki) => Credentials {
                tls: Some(pki.tls(None)),
                token: Some(pki.token(&identity)),
            },
        };
        Client::with_credentials(endpoints, Some(identity), options, credentials)
            .expect("loopback endpoints are valid")
    }

    /// A client whose endpoint list starts at node `first`.
    pub fn client(&self, first: usize, identity: Identity, options: Options) -> Client {
        let mut eps = self.endpoints();
        eps.rotate_left(first % self.len());
        self.client_for(&eps, identity, options)
    }

    pub async fn status(&self, i: usize, digest: bool) -> Option<ClusterStatus> {
        if !self.is_running(i) || self.paused[i] {
            return None;
        }
        let client = self.client_for(
            &[self.endpoint(i)],
            Identity::new("chaos-probe", ActorKind::Human, &[]),
            Options {
                attempt_timeout: Duration::from_secs(3),
                ..Options::default()
            },
        );
        tokio::time::timeout(Duration::from_secs(4), client.status_of(0, digest))
            .await
            .ok()?
            .ok()
    }

    /// The slot of the first running node that reports itself leader, waiting up to `within`.
    pub async fn leader(&self, within: Duration) -> Option<usize> {
        let deadline = Instant::now() + within;
        loop {
            for i in 0..self.len() {
                if let Some(s) = self.status(i, false).await
                    && s.role == Role::Leader
                    && let Some(slot) = self.slot_of(s.node_id)
                {
                    return Some(slot);
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            if self.paused[i] {
                self.pause(i, false);
            }
            if let Some(mut child) = self.children[i].take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        // Unmounted only once no node uses them (dropping a disk cuts its power).
        self.disks.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shim really slows a sync: `sync -d FILE` (an fdatasync) under it takes at least
    /// the delay written in the control file.
    #[test]
    fn the_slow_disk_shim_delays_syncs_by_the_control_file() {
        let dir = std::env::temp_dir().join(format!("slowdisk-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let lib = dir.join("libslowdisk.so");
        std::fs::write(&lib, SLOWDISK_SO).unwrap();
        let control = dir.join("control");
        let data = dir.join("data");
        std::fs::write(&data, b"x").unwrap();
        let synced = |ms: &str| {
            std::fs::write(&control, ms).unwrap();
            let started = Instant::now();
            let status = Command::new("sync")
                .arg("-d")
                .arg(&data)
                .env("LD_PRELOAD", &lib)
                .env("LOCKSTEP_SLOWDISK_FILE", &control)
                .status()
                .unwrap();
            assert!(status.success());
            started.elapsed()
        };
        assert!(synced("400") >= Duration::from_millis(400));
        // Garbage and zero mean no delay; the call still succeeds.
        synced("0");
        synced("not a number");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
