//! A real 3-node cluster for the CLI's online tests, and a runner for the `lockstep` binary.
//!
//! The nodes are `lockstepd` processes on loopback (started as
//! `crates/lockstep-server/tests/common/mod.rs` does), shared by every test of the binary:
//! one cluster start instead of one per test. A shared static is never dropped, so each node
//! runs under a small `sh` watchdog that holds the read end of a pipe whose write end this
//! process keeps: when the test process exits (however it exits), the pipe closes and the
//! watchdog kills its node and removes its data.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

pub const PO: &str = "examples/workflows/purchase-order.yaml";

/// The repository root: relative paths in arguments (examples/…) are resolved from it.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `lockstepd` is a binary of another crate of the workspace; a workspace build puts it next
/// to `lockstep`.
pub fn lockstepd() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_lockstep")).with_file_name("lockstepd");
    assert!(
        path.is_file(),
        "lockstepd not found at {}: the online CLI tests need the server binary of the \
         workspace; build it with `cargo build --workspace --all-targets` (or run the tests \
         with `cargo test --workspace --all-targets`)",
        path.display()
    );
    path
}

/// A port nothing listens on (bound, then released).
pub fn free_port() -> u16 {
    lockstep_client::loopback::free_port().expect("a free loopback port")
}

/// Kills the node when its stdin (a pipe from the test process) closes, then removes the
/// cluster's folder (all nodes are told at once, when the test process exits).
const WATCHDOG: &str = r#"
"$@" </dev/null >>"$WATCHDOG_LOG" 2>&1 &
node=$!
cat >/dev/null
kill -KILL "$node" 2>/dev/null
wait "$node" 2>/dev/null
rm -rf "$WATCHDOG_DIR"
exit 0
"#;

pub struct Cluster {
    pub dir: PathBuf,
    pub ports: Vec<u16>,
    /// The write ends of the watchdogs' pipes: closed when this process exits.
    lifelines: Mutex<Vec<ChildStdin>>,
    watchdogs: Mutex<Vec<Child>>,
}

impl Cluster {
    pub fn endpoint(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.ports[i])
    }

    pub fn endpoints(&self) -> String {
        (0..self.ports.len())
            .map(|i| self.endpoint(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("node{}.log", i + 1))
    }

    /// The last lines of every node's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut text = String::new();
        for i in 0..self.ports.len() {
            let log = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(30)..];
            text.push_str(&format!(
                "---- node {} log ----\n{}\n",
                i + 1,
                tail.join("\n")
            ));
        }
        text
    }

    fn start() -> Cluster {
        let binary = lockstepd();
        let dir = std::env::temp_dir().join(format!("lockstep-cli-online-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let cluster = Cluster {
            dir,
            ports: (0..3).map(|_| free_port()).collect(),
            lifelines: Mutex::new(Vec::new()),
            watchdogs: Mutex::new(Vec::new()),
        };
        let members = (0..3)
            .map(|i| format!("{}={}", i + 1, cluster.endpoint(i)))
            .collect::<Vec<_>>()
            .join(",");
        // Webhooks to loopback, signed with the secret `cli` (tests/online.rs).
        let webhooks = cluster.dir.join("webhooks.toml");
        std::fs::write(
            &webhooks,
            "allow = [\"127.0.0.1/32\"]\n[secrets]\ncli = \"cli-secret-of-enough-bytes\"\n",
        )
        .unwrap();
        for i in 0..3 {
            let data = cluster.dir.join(format!("node{}", i + 1));
            let mut command = Command::new("sh");
            command
                .arg("-c")
                .arg(WATCHDOG)
                .arg("lockstepd-watchdog")
                .arg(&binary)
                .args([
                    "--id",
                    &(i + 1).to_string(),
                    "--listen",
                    &cluster.endpoint(i),
                    "--initial-members",
                    &members,
                    "--dev",
                ])
                .arg("--webhooks")
                .arg(&webhooks)
                .arg("--data-dir")
                .arg(&data)
                .env("WATCHDOG_LOG", cluster.log_path(i))
                .env("WATCHDOG_DIR", &cluster.dir)
                .env("RUST_LOG", "info,openraft=warn")
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            clear_lockstep_env(&mut command);
            let mut child = command.spawn().expect("start sh (the node watchdog)");
            cluster
                .lifelines
                .lock()
                .unwrap()
                .push(child.stdin.take().expect("piped stdin"));
            cluster.watchdogs.lock().unwrap().push(child);
        }
        cluster.wait_for_leader();
        cluster.wait_for_log_format();
        let applied = cluster.run(&["apply", PO]);
        assert_eq!(
            applied.code,
            Some(0),
            "applying {PO}: {applied}\n{}",
            cluster.logs()
        );
        cluster
    }

    /// Waits until every node's log says the format gate raised the replicated log format
    /// (to this build's, in one step), so commands that need a recent format are accepted.
    fn wait_for_log_format(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !(0..3).all(|i| {
            std::fs::read_to_string(self.log_path(i))
                .is_ok_and(|log| log.contains("log format allows group commit"))
        }) {
            assert!(
                Instant::now() < deadline,
                "the log format was not raised within 60 s\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits (with `lockstep cluster status` itself) until every node answers and names the
    /// same leader.
    fn wait_for_leader(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let status = self.run(&["cluster", "status", "--output", "json", "--timeout", "2s"]);
            if let Ok(serde_json::Value::Array(rows)) = serde_json::from_str(&status.stdout) {
                let leaders: Vec<u64> = rows
                    .iter()
                    .map(|r| r["leader_id"].as_u64().unwrap_or(0))
                    .collect();
                if rows.len() == 3 && leaders[0] != 0 && leaders.iter().all(|l| *l == leaders[0]) {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the cluster in {} elected no leader within 60 s; last `cluster status`: {status}\n{}",
                self.dir.display(),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Writes `text` to a file in the cluster's folder (removed with it).
    pub fn file(&self, name: &str, text: &str) -> PathBuf {
        let dir = self.dir.join("files");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Runs `lockstep ARGS --endpoints <this cluster>`.
    pub fn run(&self, args: &[&str]) -> Run {
        self.run_env(args, &[])
    }

    /// Runs `lockstep ARGS` against this cluster with extra environment variables.
    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut all = vec!["--endpoints".to_string(), self.endpoints()];
        all.extend(args.iter().map(|a| a.to_string()));
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        lockstep_env(&refs, env)
    }
}

/// The one cluster of this test binary, started by the first test that needs it.
pub fn cluster() -> &'static Cluster {
    static CLUSTER: LazyLock<Cluster> = LazyLock::new(Cluster::start);
    &CLUSTER
}

/// The tests must not depend on the caller's `LOCKSTEP_*` settings (endpoints, actor, config).
pub fn clear_lockstep_env(command: &mut Command) {
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("LOCKSTEP_") {
            command.env_remove(name);
        }
    }
}

/// What one run of the `lockstep` binary did.
#[derive(Debug)]
pub struct Run {
    pub args: Vec<String>,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`lockstep {}` exited {:?}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.args.join(" "),
            self.code,
            self.stdout,
            self.stderr
        )
    }
}

impl Run {
    /// Asserts the exit code; returns self for chaining.
    #[track_caller]
    pub fn code(&self, expected: i32) -> &Run {
        assert_eq!(self.code, Some(expected), "{self}");
        self
    }

    /// Asserts exit 0.
    #[track_caller]
    pub fn ok(&self) -> &Run {
        self.code(0)
    }

    /// Stdout as one JSON document.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {self}"))
    }

    /// Stdout as JSON lines.
    #[track_caller]
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("`{line}` is not JSON ({e}): {self}"))
            })
            .collect()
    }

    /// Stderr as the one JSON error object that `--output json` prints on failure.
    #[track_caller]
    pub fn json_error(&self) -> serde_json::Value {
        let v: serde_json::Value = serde_json::from_str(&self.stderr)
            .unwrap_or_else(|e| panic!("stderr is not one JSON document ({e}): {self}"));
        assert!(v["error"].is_object(), "no `error` object: {self}");
        v["error"].clone()
    }

    /// Asserts that stdout contains every one of `parts`.
    #[track_caller]
    pub fn stdout_has(&self, parts: &[&str]) -> &Run {
        for part in parts {
            assert!(self.stdout.contains(part), "stdout lacks `{part}`: {self}");
        }
        self
    }

    /// Asserts that stderr contains every one of `parts`.
    #[track_caller]
    pub fn stderr_has(&self, parts: &[&str]) -> &Run {
        for part in parts {
            assert!(self.stderr.contains(part), "stderr lacks `{part}`: {self}");
        }
        self
    }
}

/// Runs `lockstep ARGS` from the repository root, without the caller's `LOCKSTEP_*` settings.
pub fn lockstep(args: &[&str]) -> Run {
    lockstep_env(args, &[])
}

pub fn lockstep_env(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lockstep"));
    command.args(args).current_dir(root()).stdin(Stdio::null());
    clear_lockstep_env(&mut command);
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().expect("run lockstep");
    Run {
        args: args.iter().map(|a| a.to_string()).collect(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A git repository of a test's own (made with the `git` binary; the CLI reads it through
/// gix), removed when dropped.
pub struct GitRepo {
    pub dir: PathBuf,
}

impl GitRepo {
    pub fn new(name: &str) -> GitRepo {
        let dir = std::env::temp_dir().join(format!(
            "lockstep-git-{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let repo = GitRepo { dir };
        repo.git(&["init", "-q", "-b", "main"]);
        repo
    }

    pub fn git(&self, args: &[&str]) -> String {
        let out = Command::new("git")
            .args([
                "-c",
                "user.name=Lockstep Test",
                "-c",
                "user.email=test@lockstep.invalid",
            ])
            .args(args)
            .current_dir(&self.dir)
            .output()
            .expect("run git");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Writes `text` at `path` (relative to the repository).
    pub fn write(&self, path: &str, text: &str) -> PathBuf {
        let file = self.dir.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, text).unwrap();
        file
    }

    /// Commits everything; returns the commit id.
    pub fn commit(&self, message: &str) -> String {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", message]);
        self.git(&["rev-parse", "HEAD"])
    }

    /// Runs `lockstep ARGS` in the repository.
    pub fn lockstep(&self, args: &[&str]) -> Run {
        let mut command = Command::new(env!("CARGO_BIN_EXE_lockstep"));
        command
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null());
        clear_lockstep_env(&mut command);
        let out = command.output().expect("run lockstep");
        Run {
            args: args.iter().map(|a| a.to_string()).collect(),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Drop for GitRepo {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
