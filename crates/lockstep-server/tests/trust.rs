//! Trust on real `lockstepd` processes over real sockets (issue 7): TLS everywhere, peers
//! authenticated by certificates, clients by JWTs or client certificates, the cluster policy,
//! the security log, and a tamper-evident audit trail.

mod common;

use std::time::Duration;

use common::{Cluster, PO, Pki, Settings, sign_with};
use lockstep_client::{
    Client, Credentials, Error, Identity, Options, RefusalKind, SecurityEvent, by_key, request_id,
};
use lockstep_core::{ActorKind, RefusalCode};
use lockstep_proto::v1::internal::RaftMessage;
use lockstep_proto::v1::internal::raft_client::RaftClient;
use lockstep_store::{Batch, Durability, Family, RocksOptions, RocksStore, Store, keys};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity as TlsIdentity};

fn who(actor: &str, roles: &[&str]) -> Identity {
    Identity::new(actor, ActorKind::Human, roles)
}

fn po(requester: &str) -> serde_json::Value {
    serde_json::json!({"amount": 500, "requester": requester})
}

async fn define(cluster: &Cluster) {
    cluster
        .admin()
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

/// A client of one endpoint with explicit credentials (a short timeout: refusals are not
/// retried, and a client that cannot connect should not wait long).
fn raw_client(
    cluster: &Cluster,
    i: usize,
    identity: Option<Identity>,
    credentials: Credentials,
) -> Client {
    Client::with_credentials(
        &[cluster.endpoint(i)],
        identity,
        Options {
            total_timeout: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(5),
            ..Options::default()
        },
        credentials,
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_cluster_authenticates_callers_and_applies_the_policy() {
    let cluster = Cluster::start_secure(Settings::default(), None);
    let pki = cluster.pki.as_ref().unwrap();
    // Electing a leader and replicating the definition needs the nodes' mTLS to work.
    cluster.leader().await;
    define(&cluster).await;
    let on = |identity: Identity| cluster.client_for(&[cluster.endpoint(0)], identity);

    // No credentials: refused, and told how to authenticate. The dev headers naming an admin
    // do nothing.
    let anonymous = raw_client(
        &cluster,
        0,
        Some(who("admin", &["admin"])),
        Credentials {
            tls: Some(pki.tls(None)),
            token: None,
        },
    );
    match anonymous.status(false).await.unwrap_err() {
        Error::Unauthenticated(m) => assert!(m.contains("Bearer"), "{m}"),
        other => panic!("expected UNAUTHENTICATED, got {other}"),
    }

    // Bad tokens: expired, signed by another key, for another audience.
    let bad = |token: String| {
        raw_client(
            &cluster,
            0,
            None,
            Credentials {
                tls: Some(pki.tls(None)),
                token: Some(token),
            },
        )
    };
    let alice = who("alice", &["requester"]);
    let expired = pki.sign(&Pki::claims(&alice, -600));
    match bad(expired).status(false).await.unwrap_err() {
        Error::Unauthenticated(m) => assert!(m.contains("expired"), "{m}"),
        other => panic!("expected UNAUTHENTICATED, got {other}"),
    }
    let stranger = rcgen::KeyPair::generate().unwrap();
    let forged = sign_with(&stranger, &Pki::claims(&alice, 600));
    match bad(forged).status(false).await.unwrap_err() {
        Error::Unauthenticated(m) => assert!(m.contains("signature"), "{m}"),
        other => panic!("expected UNAUTHENTICATED, got {other}"),
    }
    let mut elsewhere = Pki::claims(&alice, 600);
    elsewhere["aud"] = "another-cluster".into();
    assert!(matches!(
        bad(pki.sign(&elsewhere)).status(false).await.unwrap_err(),
        Error::Unauthenticated(_)
    ));

    // Separation of duties through gRPC with JWT actors.
    let created = on(alice.clone())
        .create(&request_id(), "purchase-order", Some("PO-1"), &po("alice"))
        .await
        .unwrap();
    on(alice.clone())
        .transition(
            &request_id(),
            by_key("purchase-order", "PO-1"),
            "submit",
            &serde_json::Value::Null,
            None,
        )
        .await
        .unwrap();
    // A time gate: `withdraw` opens an hour after submission.
    let gated = on(alice.clone())
        .transition(
            &request_id(),
            by_key("purchase-order", "PO-1"),
            "withdraw",
            &serde_json::Value::Null,
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(
        gated.refusal_code(),
        Some(RefusalCode::GateNotYetOpen),
        "{gated}"
    );
    let refused = on(who("alice", &["requester", "approver"]))
        .transition(
            &request_id(),
            by_key("purchase-order", "PO-1"),
            "approve",
            &serde_json::Value::Null,
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(
        refused.refusal_code(),
        Some(RefusalCode::Forbidden),
        "{refused}"
    );

    // A forged actor header is ignored: mallory's token with headers claiming to be bob the
    // approver acts as mallory, who may not approve.
    let mallory = raw_client(
        &cluster,
        0,
        Some(who("bob", &["approver"])),
        Credentials {
            tls: Some(pki.tls(None)),
            token: Some(pki.token(&who("mallory", &[]))),
        },
    );
    let refused = mallory
        .transition(
            &request_id(),
            by_key("purchase-order", "PO-1"),
            "approve",
            &serde_json::Value::Null,
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(
        refused.refusal_code(),
        Some(RefusalCode::Forbidden),
        "{refused}"
    );

    let approved = on(who("bob", &["approver"]))
        .transition(
            &request_id(),
            by_key("purchase-order", "PO-1"),
            "approve",
            &serde_json::Value::Null,
            None,
        )
        .await
        .unwrap();
    assert_eq!(approved.state, "approved");
    let auditor = who("ada", &["auditor"]);
    let history = on(auditor.clone())
        .history(lockstep_client::by_id(&created.instance_id), 0)
        .await
        .unwrap();
    let actors: Vec<(&str, &str)> = history
        .iter()
        .map(|r| (r.record.actor.id.as_str(), r.record.actor.authn.as_str()))
        .collect();
    assert_eq!(
        actors,
        vec![("alice", "jwt"), ("alice", "jwt"), ("bob", "jwt")],
        "the audit names the authenticated actors"
    );
    // The command journal holds payloads and token claims: a reader of the workflow who may
    // not read audit is refused it; an auditor gets every record's command.
    match on(alice.clone())
        .history_with_commands(lockstep_client::by_id(&created.instance_id), 0)
        .await
        .unwrap_err()
    {
        Error::PermissionDenied(m) => assert!(m.contains("read_audit"), "{m}"),
        other => panic!("expected PERMISSION_DENIED, got {other}"),
    }
    // Webhook subscriptions send audit records out: the policy's manage_subscriptions
    // (admin by default), checked before anything else about the request.
    match on(auditor.clone())
        .create_subscription(
            &lockstep_client::request_id(),
            "feed",
            "https://hooks.example/feed",
            "feed",
            Default::default(),
            None,
        )
        .await
        .unwrap_err()
    {
        Error::PermissionDenied(m) => assert!(m.contains("manage_subscriptions"), "{m}"),
        other => panic!("expected PERMISSION_DENIED, got {other}"),
    }
    let journaled = on(auditor.clone())
        .history_with_commands(lockstep_client::by_id(&created.instance_id), 0)
        .await
        .unwrap();
    assert_eq!(journaled.len(), 3);

    // A client certificate from the CA: CN is the actor, OU role:* its roles.
    let (cert, key) = pki.issue(
        "client-carol",
        "carol",
        &["kind:human", "role:approver"],
        false,
    );
    let carol = raw_client(
        &cluster,
        0,
        None,
        Credentials {
            tls: Some(pki.tls(Some((cert, key)))),
            token: None,
        },
    );
    carol
        .create(&request_id(), "purchase-order", Some("PO-2"), &po("carol"))
        .await
        .unwrap();
    let history = carol
        .history(by_key("purchase-order", "PO-2"), 0)
        .await
        .unwrap();
    let actor = &history[0].record.actor;
    assert_eq!(actor.id, "carol");
    assert_eq!(actor.authn, "mtls");
    assert_eq!(actor.roles, vec!["approver".to_string()]);

    // The default policy: admin applies, admin or auditor reads audit.
    match on(alice.clone())
        .apply_definition(&request_id(), PO, lockstep_client::Provenance::default())
        .await
        .unwrap_err()
    {
        Error::PermissionDenied(m) => assert!(m.contains("apply_definitions"), "{m}"),
        other => panic!("expected PERMISSION_DENIED, got {other}"),
    }
    assert!(matches!(
        on(alice.clone()).verify_audit().await.unwrap_err(),
        Error::PermissionDenied(_)
    ));
    assert!(on(auditor.clone()).verify_audit().await.unwrap().ok());

    // Node 1's security log holds each kind of refusal it saw.
    let log = on(auditor.clone()).security_log_of(0, 0, 0).await.unwrap();
    assert_eq!(log.node_id, 1);
    let has = |kind: RefusalKind, code: &str, actor: Option<&str>| {
        log.events
            .iter()
            .any(|e| e.kind == kind && e.code == code && e.actor.as_deref() == actor)
    };
    assert!(
        has(RefusalKind::Authentication, "UNAUTHENTICATED", None),
        "{:#?}",
        log.events
    );
    assert!(
        log.events
            .iter()
            .any(|e| e.kind == RefusalKind::Authentication && e.reason.contains("expired")),
        "{:#?}",
        log.events
    );
    assert!(
        has(RefusalKind::Engine, "FORBIDDEN", Some("alice")),
        "{:#?}",
        log.events
    );
    assert!(
        has(RefusalKind::Engine, "GATE_NOT_YET_OPEN", Some("alice")),
        "{:#?}",
        log.events
    );
    assert!(
        has(RefusalKind::Engine, "FORBIDDEN", Some("mallory")),
        "the forged header did not make the refusal bob's: {:#?}",
        log.events
    );
    assert!(
        has(
            RefusalKind::Authorization,
            "PERMISSION_DENIED",
            Some("alice")
        ),
        "{:#?}",
        log.events
    );
    // The log is itself behind the policy.
    assert!(matches!(
        on(alice).security_log_of(0, 0, 0).await.unwrap_err(),
        Error::PermissionDenied(_)
    ));
}

/// A channel to node `i`'s internal service with the given TLS client identity.
fn peer_channel(
    cluster: &Cluster,
    i: usize,
    ca_pem: &str,
    identity: Option<(String, String)>,
) -> RaftClient<tonic::transport::Channel> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
    if let Some((cert, key)) = identity {
        tls = tls.identity(TlsIdentity::from_pem(cert, key));
    }
    let channel = Endpoint::from_shared(format!("https://{}", cluster.endpoint(i)))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect_lazy();
    RaftClient::new(channel)
}

async fn vote_as(
    client: &mut RaftClient<tonic::transport::Channel>,
    from_node: u64,
) -> Result<(), tonic::Status> {
    let mut request = tonic::Request::new(RaftMessage {
        payload: Vec::new(),
        from_node,
    });
    request.set_timeout(Duration::from_secs(5));
    client.vote(request).await.map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_need_a_member_certificate_from_the_cluster_ca() {
    // A policy file: the audit reader is named by id, not role.
    let cluster = Cluster::start_secure(
        Settings::default(),
        Some("[read_audit]\nactors = [\"ada\"]\n"),
    );
    let pki = cluster.pki.as_ref().unwrap();
    cluster.leader().await;
    let ca = pki.ca_pem.clone();

    // A node certificate from the cluster CA, but node 4 is not a member.
    let node4 = pki.issue("node-4", "node-4", &[], true);
    let refused = vote_as(&mut peer_channel(&cluster, 0, &ca, Some(node4.clone())), 4)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("not a member"), "{refused:?}");
    // The same certificate claiming to be member 2.
    let refused = vote_as(&mut peer_channel(&cluster, 0, &ca, Some(node4)), 2)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert!(refused.message().contains("names node 4"), "{refused:?}");
    // A client certificate is not a node certificate; no certificate at all is refused too.
    let carol = pki.issue("client-carol", "carol", &["role:admin"], false);
    let refused = vote_as(&mut peer_channel(&cluster, 0, &ca, Some(carol)), 2)
        .await
        .unwrap_err();
    assert!(
        refused.message().contains("not a node certificate"),
        "{refused:?}"
    );
    let refused = vote_as(&mut peer_channel(&cluster, 0, &ca, None), 2)
        .await
        .unwrap_err();
    assert!(
        refused.message().contains("without a node certificate"),
        "{refused:?}"
    );

    // A certificate for node 2 from another CA fails the TLS handshake: nothing reaches the
    // Raft service.
    let other = Pki::new(cluster.dir.path().join("other-ca"));
    let impostor = other.issue("node-2", "node-2", &[], true);
    let failed = vote_as(&mut peer_channel(&cluster, 0, &ca, Some(impostor)), 2)
        .await
        .unwrap_err();
    assert_ne!(failed.code(), tonic::Code::PermissionDenied, "{failed:?}");

    assert!(matches!(
        cluster
            .client_for(&[cluster.endpoint(0)], who("bea", &["auditor"]))
            .security_log_of(0, 0, 0)
            .await
            .unwrap_err(),
        Error::PermissionDenied(_)
    ));
    let log = cluster
        .client_for(&[cluster.endpoint(0)], who("ada", &[]))
        .security_log_of(0, 0, 0)
        .await
        .unwrap();
    let peer: Vec<&SecurityEvent> = log
        .events
        .iter()
        .filter(|e| e.kind == RefusalKind::Peer)
        .collect();
    assert_eq!(peer.len(), 4, "{:#?}", log.events);
    // The impostor's failed handshake is there too, with its address and rustls' reason.
    let tls: Vec<&SecurityEvent> = log
        .events
        .iter()
        .filter(|e| e.kind == RefusalKind::Tls)
        .collect();
    assert!(!tls.is_empty(), "{:#?}", log.events);
    assert!(
        tls.iter().all(|e| e.code == "TLS_HANDSHAKE_FAILED"
            && e.remote
                .as_deref()
                .is_some_and(|r| r.starts_with("127.0.0.1:"))
            && e.reason.contains("certificate")),
        "{tls:#?}"
    );
    assert!(peer.iter().any(|e| e.actor.as_deref() == Some("node 4")));
    assert!(
        peer.iter()
            .all(|e| e.method.starts_with("/lockstep.v1.internal.Raft/"))
    );

    // The members still work together.
    define(&cluster).await;
    cluster.converged_digests().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_one_nodes_audit_is_named_by_verify_on_that_node_only() {
    let mut cluster = Cluster::start_secure(Settings::default(), None);
    let leader = cluster.leader().await;
    define(&cluster).await;
    let alice = cluster.client(who("alice", &["requester"]));
    for key in ["PO-1", "PO-2"] {
        alice
            .create(&request_id(), "purchase-order", Some(key), &po("alice"))
            .await
            .unwrap();
        alice
            .transition(
                &request_id(),
                by_key("purchase-order", key),
                "submit",
                &serde_json::Value::Null,
                None,
            )
            .await
            .unwrap();
    }
    cluster.converged_digests().await;
    let victim = (leader + 1) % 3;
    cluster.stop(victim);

    // Flip one byte inside one audit record: the `to` state of PO-2's submit ("submitted").
    let store_dir = cluster
        .dir
        .path()
        .join(format!("node{}", victim + 1))
        .join("rocksdb");
    let tampered_seq = {
        let store = RocksStore::open(&store_dir, &RocksOptions::default()).unwrap();
        let rows = store
            .range(Family::Audit, &keys::u64_key(1), None, 100)
            .unwrap();
        assert!(
            rows.len() >= 4,
            "2 creates and 2 submits at least: {}",
            rows.len()
        );
        let (key, mut value) = rows
            .iter()
            .rev()
            .find(|(_, v)| v.windows(9).any(|w| w == b"submitted"))
            .cloned()
            .expect("a submit record");
        let at = value.windows(9).position(|w| w == b"submitted").unwrap();
        value[at] ^= 0x01; // "submitted" -> "rubmitted"
        let mut batch = Batch::default();
        batch.put(Family::Audit, key.clone(), value);
        store.write(batch, Durability::Sync).unwrap();
        keys::read_u64(&key).unwrap()
    };
    cluster.restart(victim);

    let auditor = who("ada", &["auditor"]);
    for i in 0..3 {
        let verdict = cluster
            .client_for(&[cluster.endpoint(i)], auditor.clone())
            .verify_audit()
            .await
            .unwrap();
        if i == victim {
            let broken = verdict
                .broken
                .as_ref()
                .unwrap_or_else(|| panic!("node {} should see the tampering", i + 1));
            assert_eq!(broken.seq, tampered_seq, "{verdict:?}");
            assert!(broken.reason.contains("hash"), "{verdict:?}");
        } else {
            assert!(verdict.ok(), "node {}: {verdict:?}", i + 1);
            assert!(verdict.records_checked >= tampered_seq);
        }
    }
}

fn lockstepd(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_lockstepd"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn a_secure_node_names_missing_or_wrong_trust_settings_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let o = lockstepd(&["--id", "1", "--data-dir", data]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--tls-cert, --tls-key, --tls-ca are missing"),
        "{err}"
    );
    let pki = Pki::new(dir.path().join("pki"));
    let (cert, key) = pki.node_files(2);
    let ca = pki.dir.join("ca.pem");
    let (cert, key, ca) = (
        cert.to_str().unwrap(),
        key.to_str().unwrap(),
        ca.to_str().unwrap(),
    );
    // --dev is plaintext: TLS settings with it are a contradiction.
    let o = lockstepd(&["--id", "1", "--data-dir", data, "--dev", "--tls-cert", cert]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--dev runs without TLS"), "{err}");
    // Node 2's certificate does not make node 1.
    let args = [
        "--id",
        "1",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data,
        "--tls-cert",
        cert,
        "--tls-key",
        key,
        "--tls-ca",
        ca,
    ];
    let o = lockstepd(&args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("must have CN=node-1"), "{err}");
    // JWT settings come together.
    let mut with_jwt = args.to_vec();
    with_jwt.extend(["--jwt-issuer", "https://idp.example"]);
    let o = lockstepd(&with_jwt);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("missing --jwt-keys, --jwt-audience"), "{err}");
}
