//! `lockstep-bench` against a secure cluster (TLS, authenticated callers) with the CLI's
//! credential flags and environment variables: a bearer token, then a client certificate;
//! without a credential it stops at once, saying what to give.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

mod common;

use common::show;

use lockstep_client::Identity;
use lockstep_core::ActorKind;
use lockstep_testpki::Pki;

fn bench_path() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_lockstep-bench"))
}

/// A one-node secure cluster: `lockstepd` (built with the workspace, next to the bench)
/// with TLS, the PKI's CA and its JWT issuer. Killed on drop.
struct SecureNode {
    child: Child,
    endpoint: String,
}

impl SecureNode {
    fn start(pki: &Pki, data_dir: &Path) -> SecureNode {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let endpoint = format!("127.0.0.1:{port}");
        let lockstepd = bench_path().with_file_name("lockstepd");
        assert!(
            lockstepd.is_file(),
            "no lockstepd at {}: build the workspace (`cargo build --workspace --all-targets`)",
            lockstepd.display()
        );
        let log = std::fs::File::create(data_dir.with_extension("log")).unwrap();
        let child = Command::new(lockstepd)
            .args(pki.node_args(1))
            .args(["--id", "1", "--listen", &endpoint])
            .args(["--initial-members", &format!("1={endpoint}")])
            .args(["--heartbeat-ms", "100", "--election-timeout-ms", "500"])
            .arg("--data-dir")
            .arg(data_dir)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn lockstepd");
        SecureNode { child, endpoint }
    }
}

impl Drop for SecureNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the bench for a 2 s transitions level against `node` with `args` and `env`, writing
/// its JSON report to `json`.
fn run(node: &SecureNode, args: &[&str], env: &[(&str, &str)], json: &Path) -> Output {
    common::bench()
        .args(["--endpoints", &node.endpoint])
        .args(["--concurrency", "2", "--duration", "2s", "--warmup", "0s"])
        .arg("--json")
        .arg(json)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run lockstep-bench")
}

/// The measured level of a report: (operations, errors).
fn measured(json: &Path) -> (u64, u64) {
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    let level = &report["lockstep"][0];
    (
        level["operations"].as_u64().unwrap(),
        level["errors"].as_u64().unwrap(),
    )
}

#[test]
fn the_bench_runs_against_a_secure_cluster_with_a_token_or_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path().join("pki"));
    let node = SecureNode::start(&pki, &dir.path().join("node1"));
    let ca = pki.dir.join("ca.pem");
    let ca = ca.to_str().unwrap();

    // Without a credential the node cannot tell who is calling: refused, and said so at once.
    let json = dir.path().join("none.json");
    let out = run(&node, &["--tls-ca", ca], &[], &json);
    assert!(!out.status.success(), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unauthenticated") && stderr.contains("--token"),
        "{}",
        show(&out)
    );

    // A bearer token in the environment, as for the CLI: the bench acts as its subject.
    let carol = Identity::new("carol", ActorKind::Human, &["admin", "requester"]);
    let token = pki.token(&carol);
    let json = dir.path().join("token.json");
    let out = run(
        &node,
        &["--tls-ca", ca, "--actor", "carol"],
        &[("LOCKSTEP_TOKEN", &token)],
        &json,
    );
    assert!(out.status.success(), "{}", show(&out));
    let (operations, errors) = measured(&json);
    assert!(operations > 0 && errors == 0, "{}", show(&out));

    // A client certificate (mTLS) naming the actor, its kind and roles.
    pki.issue(
        "dave",
        "dave",
        &["kind:human", "role:requester", "role:admin"],
        false,
    );
    let (cert, key) = (pki.dir.join("dave.pem"), pki.dir.join("dave-key.pem"));
    let json = dir.path().join("cert.json");
    let out = run(
        &node,
        &[
            "--tls-ca",
            ca,
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--actor",
            "dave",
        ],
        &[],
        &json,
    );
    assert!(out.status.success(), "{}", show(&out));
    let (operations, errors) = measured(&json);
    assert!(operations > 0 && errors == 0, "{}", show(&out));
}
