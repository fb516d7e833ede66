//! A client in another language, built from the .proto files alone: `tests/python/e2e.py`
//! generates Python stubs from `proto/lockstep/v1/lockstep.proto` with grpc_tools.protoc and
//! drives the purchase-order workflow (apply, create, transitions, refusals read from
//! google.rpc.ErrorInfo, history) against a follower of a real 3-node cluster, so every write
//! it makes is forwarded to the leader.
//!
//! The Python packages live in a venv outside the clone made by `scripts/python-env`
//! (`scripts/test` runs it first); `LOCKSTEP_PY_VENV` moves it.

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{Cluster, Settings};

/// The whole script normally takes a few seconds; this only stops a hang.
const SCRIPT_DEADLINE: Duration = Duration::from_secs(180);

/// The venv's interpreter. A missing venv fails the test (it is not skipped): the Python
/// client is part of what CI proves.
fn venv_python() -> PathBuf {
    let venv = std::env::var_os("LOCKSTEP_PY_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/lockstep-pyenv"));
    let python = venv.join("bin").join("python");
    assert!(
        python.is_file(),
        "no Python env at {} (no {}): run scripts/python-env first; it creates the venv with \
         the pinned packages of tests/python/requirements.txt (scripts/test runs it before cargo test)",
        venv.display(),
        python.display()
    );
    python
}

/// Runs `python script args…` with its output in files under `dir`; kills it at the deadline.
fn run_script(
    python: &Path,
    script: &Path,
    args: &[String],
    dir: &Path,
) -> (Option<ExitStatus>, String, String) {
    let out_path = dir.join("python.stdout");
    let err_path = dir.join("python.stderr");
    let mut child = Command::new(python)
        .arg(script)
        .args(args)
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).unwrap())
        .stderr(File::create(&err_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", python.display()));
    let deadline = Instant::now() + SCRIPT_DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    (status, read(&out_path), read(&err_path))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_from_the_proto_drives_a_follower() {
    let python = venv_python();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let script = repo.join("tests/python/e2e.py");
    assert!(script.is_file(), "no {}", script.display());

    let cluster = Cluster::start(Settings::default());
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    let args = vec![cluster.endpoint(follower), "--expect-follower".to_string()];
    let dir = cluster.dir.path().to_path_buf();
    let (status, stdout, stderr) =
        tokio::task::spawn_blocking(move || run_script(&python, &script, &args, &dir))
            .await
            .unwrap();

    let report = format!(
        "tests/python/e2e.py against follower node {} ({}), leader node {}\n\
         ---- python stdout ----\n{stdout}\n---- python stderr ----\n{stderr}",
        follower + 1,
        cluster.endpoint(follower),
        leader + 1
    );
    let Some(status) = status else {
        panic!(
            "the script did not finish within {} s\n{report}",
            SCRIPT_DEADLINE.as_secs()
        );
    };
    assert!(
        status.success(),
        "the script exited with {status}\n{report}"
    );
    assert!(
        stdout.contains("\nPASS: "),
        "the script exited 0 without its PASS line\n{report}"
    );
    // What the follower forwarded reached every replica.
    cluster.converged_digests().await;
}
