//! `lockstep certs` makes certificates a secure `lockstepd` accepts, and the CLI's `--tls-*`
//! flags use them: a one-node secure cluster, real processes, real sockets.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn lockstep() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lockstep"))
}

/// `lockstepd` is built next to `lockstep` by a workspace build.
fn lockstepd() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_lockstep")).with_file_name("lockstepd");
    assert!(
        path.is_file(),
        "lockstepd not found at {}: build the workspace (cargo build --workspace --all-targets)",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    lockstep_client::loopback::free_port().expect("a free loopback port")
}

struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn certificates_from_lockstep_certs_secure_a_node_and_its_clients() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let out = lockstep()
        .args(["certs", "--out"])
        .arg(&certs)
        .args([
            "--node",
            "1=127.0.0.1,localhost",
            "--client",
            "bob::admin,auditor",
            "--client",
            "erp:worker",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    for f in [
        "ca.pem",
        "node-1.pem",
        "node-1-key.pem",
        "client-bob.pem",
        "client-erp-key.pem",
    ] {
        assert!(certs.join(f).is_file(), "{f} missing: {}", text(&out));
    }

    let port = free_port();
    let endpoint = format!("127.0.0.1:{port}");
    let log = std::fs::File::create(dir.path().join("node.log")).unwrap();
    let _node = Node(
        Command::new(lockstepd())
            .args(["--id", "1", "--listen", &endpoint, "--data-dir"])
            .arg(dir.path().join("data"))
            .arg("--tls-cert")
            .arg(certs.join("node-1.pem"))
            .arg("--tls-key")
            .arg(certs.join("node-1-key.pem"))
            .arg("--tls-ca")
            .arg(certs.join("ca.pem"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let as_client = |name: &str, args: &[&str]| {
        let mut c = lockstep();
        c.args(["--endpoints", &endpoint, "--timeout", "10s", "--tls-ca"])
            .arg(certs.join("ca.pem"));
        if !name.is_empty() {
            c.arg("--tls-cert")
                .arg(certs.join(format!("client-{name}.pem")))
                .arg("--tls-key")
                .arg(certs.join(format!("client-{name}-key.pem")));
        }
        c.args(args).output().unwrap()
    };

    // The node comes up over TLS; bob's certificate authenticates him.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = as_client("bob", &["cluster", "status"]);
        if o.status.success() && String::from_utf8_lossy(&o.stdout).contains("Leader") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no leader over TLS: {}\nnode log:\n{}",
            text(&o),
            std::fs::read_to_string(dir.path().join("node.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Without a client certificate (or token): refused, exit 1, and told how to authenticate.
    let o = as_client("", &["--as", "admin", "--roles", "admin", "get", "i-1"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("authorization: Bearer"),
        "{}",
        text(&o)
    );
    // The worker's certificate names a worker without roles: the policy keeps it out of audit.
    let o = as_client("erp", &["audit", "security"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    // Bob (role auditor) reads the security log: both refusals are there.
    let o = as_client("bob", &["audit", "security", "--output", "json"]);
    assert!(o.status.success(), "{}", text(&o));
    let logs: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let events = logs[0]["events"].as_array().unwrap();
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "authentication" && e["code"] == "UNAUTHENTICATED"),
        "{events:#?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "authorization" && e["actor"] == "erp"),
        "{events:#?}"
    );
}
