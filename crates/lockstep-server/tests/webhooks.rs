//! Webhooks against a real HTTP receiver started by the test, on a real 3-node cluster:
//! records arrive at least once, in order, signed, through 500s, a hang, the receiver being
//! down and a leader kill; a target that keeps failing pauses its subscription, and a resume
//! delivers from the cursor; nothing reaches a target off the allow-list.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use common::*;
use hmac::{Hmac, Mac};
use lockstep_client::{Client, pb, request_id};
use lockstep_core::RefusalCode;
use sha2::Sha256;

/// A workflow whose `page` transition emits `pages.paged`.
const PAGES: &str = r#"
workflow: pages
data: { type: object }
states:
  open: { initial: true }
  paged: { terminal: true }
transitions:
  page: { from: open, to: paged, allow: "true", effects: [{ emit: { event: pages.paged } }] }
"#;

const SECRET_NEW: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SECRET_OLD: &str = "the-previous-secret-still-valid";

/// One request as the receiver got it.
#[derive(Clone, Debug)]
struct Received {
    id: u64,
    timestamp: String,
    signature: String,
    body: Bytes,
}

/// How the receiver answers, changed by the test as it goes.
#[derive(Default)]
struct Behaviour {
    /// Answer 500 to this many requests first.
    fail: AtomicUsize,
    /// Hold the next request longer than the nodes' timeout.
    hang_once: AtomicBool,
    /// Answer 500 to everything.
    broken: AtomicBool,
}

#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Received>>>,
    behaviour: Arc<Behaviour>,
}

impl Receiver {
    /// Serves on `addr` until the returned task is aborted (then the port refuses).
    async fn serve(&self, addr: SocketAddr) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let me = me.clone();
                async move { me.answer(headers, body).await }
            }),
        );
        let listener = bind_again(addr).await;
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        })
    }

    async fn answer(&self, headers: HeaderMap, body: Bytes) -> StatusCode {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        if self.behaviour.hang_once.swap(false, Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        self.got.lock().unwrap().push(Received {
            id: header("webhook-id")
                .parse()
                .expect("webhook-id is the global sequence"),
            timestamp: header("webhook-timestamp"),
            signature: header("webhook-signature"),
            body,
        });
        let failing = self.behaviour.broken.load(Ordering::SeqCst)
            || self
                .behaviour
                .fail
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
        if failing {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::NO_CONTENT
        }
    }

    fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }
}

/// Binds `addr`, retrying while the previous listener's port is still being released.
async fn bind_again(addr: SocketAddr) -> tokio::net::TcpListener {
    let started = Instant::now();
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) if started.elapsed() < Duration::from_secs(10) => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot bind {addr}: {e}"),
        }
    }
}

fn free_addr(ip: &str) -> SocketAddr {
    let l = std::net::TcpListener::bind(format!("{ip}:0")).unwrap();
    l.local_addr().unwrap()
}

fn sign(secret: &str, id: &str, timestamp: &str, body: &[u8]) -> String {
    let key = match secret.strip_prefix("whsec_") {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap(),
        None => secret.as_bytes().to_vec(),
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

/// A 3-node cluster whose nodes allow 127.0.0.1 only and hold the `pager` secret (rotating:
/// both values) and `ops`.
fn cluster_with_webhooks(extra: &str) -> (Cluster, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("webhooks.toml");
    std::fs::write(
        &file,
        format!(
            "allow = [\"127.0.0.1/32\"]\ntimeout = \"1s\"\n{extra}\n[secrets]\npager = [\"{SECRET_NEW}\", \"{SECRET_OLD}\"]\nops = \"ops-secret-of-enough-bytes\"\n"
        ),
    )
    .unwrap();
    let cluster = Cluster::start(Settings {
        node_args: vec!["--webhooks".into(), file.display().to_string()],
        ..Settings::default()
    });
    (cluster, dir)
}

/// Creates a subscription once the log format allows it (a new cluster raises it shortly
/// after it starts).
async fn create(
    client: &Client,
    name: &str,
    url: &str,
    secret: &str,
    filter: pb::SubscriptionFilter,
) -> Result<pb::Subscription, lockstep_client::Error> {
    let id = request_id();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client
            .create_subscription(&id, name, url, secret, filter.clone(), None)
            .await
        {
            Err(e) if e.to_string().contains("log format") && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => return other,
        }
    }
}

fn tickets_filter() -> pb::SubscriptionFilter {
    pb::SubscriptionFilter {
        workflows: vec!["tickets".into()],
        kinds: vec!["created".into(), "transition".into()],
        events: vec![],
    }
}

/// The global sequences after `after` of records the tickets filter matches, read from
/// the audit feed.
async fn expected(client: &Client, after: u64) -> Vec<u64> {
    let mut feed = client.tail(after + 1, false).await.unwrap();
    let mut seqs = Vec::new();
    while let Some(r) = feed.next().await.unwrap() {
        let kind = lockstep_core::subscription::kind_of(&r.record.kind);
        if r.record.workflow == "tickets" && (kind == "created" || kind == "transition") {
            seqs.push(r.global_seq);
        }
    }
    seqs
}

/// Waits until `receiver` has been delivered every one of `seqs` (2xx answers aside, it
/// records every attempt).
async fn wait_for(receiver: &Receiver, seqs: &[u64], within: Duration) {
    let started = Instant::now();
    loop {
        let got: BTreeSet<u64> = receiver.received().iter().map(|r| r.id).collect();
        if seqs.iter().all(|s| got.contains(s)) {
            return;
        }
        assert!(
            started.elapsed() < within,
            "within {within:?} the receiver got {got:?} of {seqs:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn create_tickets(cluster: &Cluster, n: usize) {
    let client = cluster.ticket_client();
    for _ in 0..n {
        let id = request_id();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match client
                .create(&id, "tickets", None, &serde_json::json!({}))
                .await
            {
                Ok(_) => break,
                Err(e) => {
                    assert!(e.refusal_code().is_none(), "{e}");
                    assert!(Instant::now() < deadline, "not created: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_matching_record_arrives_in_order_and_signed_through_failures_and_a_leader_kill() {
    let (mut cluster, _settings) =
        cluster_with_webhooks("attempts = 1000\nbackoff_max = \"300ms\"");
    let admin = cluster.admin();
    cluster.define_tickets("tickets", "2s").await;
    let addr = free_addr("127.0.0.1");
    let receiver = Receiver::default();
    let mut server = receiver.serve(addr).await;
    let url = format!("http://{addr}/hook");

    // Off the allow-list: refused at once, and its receiver never hears from the cluster.
    let outsider_addr = free_addr("127.0.0.2");
    let outsider = Receiver::default();
    let _outsider_server = outsider.serve(outsider_addr).await;
    let refused = create(
        &admin,
        "outsider",
        &format!("http://{outsider_addr}/hook"),
        "pager",
        tickets_filter(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(refused.contains("allow-list"), "{refused}");
    // Bad requests are refused with what to change.
    let unknown_secret = create(&admin, "x", &url, "nope", tickets_filter())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        unknown_secret.contains("no signing secret named `nope`"),
        "{unknown_secret}"
    );
    let bad_kind = create(
        &admin,
        "x",
        &url,
        "pager",
        pb::SubscriptionFilter {
            kinds: vec!["breach".into()],
            ..pb::SubscriptionFilter::default()
        },
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(bad_kind.contains("sla_breach"), "{bad_kind}");
    // (Only the policy's manage_subscriptions may subscribe: tests/trust.rs, on a secure
    // cluster; a development cluster lets every caller.)
    let subscription = create(&admin, "tickets", &url, "pager", tickets_filter())
        .await
        .unwrap();
    let start = subscription.cursor;
    assert!(!subscription.paused);
    let again = create(&admin, "tickets", &url, "pager", tickets_filter())
        .await
        .unwrap_err();
    assert_eq!(again.refusal_code(), Some(RefusalCode::AlreadyExists));

    // 500s, then a hang longer than the nodes' 1 s timeout.
    receiver.behaviour.fail.store(2, Ordering::SeqCst);
    receiver.behaviour.hang_once.store(true, Ordering::SeqCst);
    create_tickets(&cluster, 4).await;
    // A transition of one of them too; its timer firings (kind `timer`) must not arrive.
    let id = cluster.create_ticket().await;
    cluster
        .ticket_client()
        .transition(
            &request_id(),
            lockstep_client::by_id(&id),
            "leave",
            &serde_json::json!({}),
            None,
        )
        .await
        .unwrap();
    let first = expected(&admin, start).await;
    assert_eq!(first.len(), 6, "5 created, 1 transition: {first:?}");
    wait_for(&receiver, &first, Duration::from_secs(30)).await;

    // The receiver goes down; while it is down the leader is killed and more is written.
    server.abort();
    let _ = server.await;
    create_tickets(&cluster, 3).await;
    let leader = cluster.leader().await;
    cluster.kill9(leader);
    create_tickets(&cluster, 3).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    server = receiver.serve(addr).await;
    let all = expected(&admin, start).await;
    assert_eq!(all.len(), 12, "{all:?}");
    wait_for(&receiver, &all, Duration::from_secs(60)).await;
    // Timer firings happened (the tickets expire after 2 s) and were not sent.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let received = receiver.received();
    // Nothing but matching records; every one signed with both secrets of the rotation.
    let allowed: BTreeSet<u64> = all.iter().copied().collect();
    let mut last = 0;
    let mut firsts = Vec::new();
    for r in &received {
        assert!(
            allowed.contains(&r.id),
            "record {} does not match the filter",
            r.id
        );
        let expected_sigs = [
            sign(SECRET_NEW, &r.id.to_string(), &r.timestamp, &r.body),
            sign(SECRET_OLD, &r.id.to_string(), &r.timestamp, &r.body),
        ];
        let sent: Vec<&str> = r.signature.split(' ').collect();
        assert_eq!(sent, expected_sigs, "record {}", r.id);
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["data"]["global_seq"], r.id);
        assert_eq!(body["data"]["record"]["global_seq"], r.id);
        assert_eq!(body["data"]["subscription"], "tickets");
        assert!(body["type"].as_str().unwrap().starts_with("lockstep."));
        // In order: a record is never sent after a later one, except when a new leader
        // re-sends from the replicated cursor (at least once).
        if r.id > last {
            assert!(
                firsts.last().is_none_or(|l| *l < r.id),
                "{} arrived after {firsts:?}",
                r.id
            );
            firsts.push(r.id);
            last = r.id;
        }
    }
    assert_eq!(firsts, all, "every matching record arrived, in order");
    assert!(outsider.received().is_empty());

    // The cursor moved through the log: the subscription has caught up, with no error left.
    let started = Instant::now();
    loop {
        let s = admin.subscription("tickets").await.unwrap();
        if s.cursor >= *all.last().unwrap() && s.last_error.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the cursor stays at {} (error {:?})",
            s.cursor,
            s.last_error
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Subscriptions, their cursors and the emitted events are replicated state: the
    // surviving replicas hold the same.
    let digests = cluster.converged_digests().await;
    assert!(digests.windows(2).all(|w| w[0] == w[1]), "{digests:?}");
    drop(server);
}

/// A cluster with the webhook settings `extra`, the tickets workflow, a receiver answering
/// 500 to everything, and a subscription `tickets` to it.
struct FailingTarget {
    cluster: Cluster,
    _settings: tempfile::TempDir,
    admin: Client,
    receiver: Receiver,
    _server: tokio::task::JoinHandle<()>,
    subscription: pb::Subscription,
}

async fn failing_target(extra: &str) -> FailingTarget {
    let (cluster, settings) = cluster_with_webhooks(extra);
    let admin = cluster.admin();
    cluster.define_tickets("tickets", "1h").await;
    let addr = free_addr("127.0.0.1");
    let receiver = Receiver::default();
    let server = receiver.serve(addr).await;
    receiver.behaviour.broken.store(true, Ordering::SeqCst);
    let subscription = create(
        &admin,
        "tickets",
        &format!("http://{addr}/hook"),
        "ops",
        tickets_filter(),
    )
    .await
    .unwrap();
    FailingTarget {
        cluster,
        _settings: settings,
        admin,
        receiver,
        _server: server,
        subscription,
    }
}

/// The subscription `tickets` once delivery has paused it, at most 30 s after `started`.
async fn paused_by_delivery(admin: &Client, started: Instant) -> pb::Subscription {
    loop {
        let s = admin.subscription("tickets").await.unwrap();
        if s.paused {
            assert_eq!(s.paused_by, "system:webhooks");
            return s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "not paused: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscription_that_falls_more_than_lag_max_behind_while_failing_is_paused() {
    // Attempts never run out here: only the lag can pause it.
    let FailingTarget {
        cluster,
        admin,
        receiver,
        subscription,
        ..
    } = failing_target("attempts = 100000\nlag_max = 3\nbackoff_max = \"100ms\"").await;
    // The first ticket is being retried when the others arrive: the lag grows past 3.
    create_tickets(&cluster, 1).await;
    let started = Instant::now();
    while receiver.received().is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "nothing was sent"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    create_tickets(&cluster, 5).await;
    let paused = paused_by_delivery(&admin, started).await;
    assert!(
        paused.paused_reason.contains("more than lag_max (3)")
            && paused.paused_reason.contains("500"),
        "{}",
        paused.paused_reason
    );
    // Nothing was skipped: the cursor stands before the first ticket, and a resume after the
    // repair delivers all six.
    let all = expected(&admin, subscription.cursor).await;
    assert_eq!(all.len(), 6);
    assert!(paused.cursor < all[0], "{paused:?}");
    receiver.behaviour.broken.store(false, Ordering::SeqCst);
    admin
        .resume_subscription(&request_id(), "tickets")
        .await
        .unwrap();
    wait_for(&receiver, &all, Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_target_that_keeps_failing_is_paused_and_resume_delivers_from_the_cursor() {
    let FailingTarget {
        cluster,
        admin,
        receiver,
        subscription,
        ..
    } = failing_target("attempts = 3\nbackoff_max = \"200ms\"").await;
    create_tickets(&cluster, 3).await;

    // Three failed attempts of the first record pause the subscription, with the error.
    let paused = paused_by_delivery(&admin, Instant::now()).await;
    assert!(
        paused.paused_reason.contains("3 attempts failed") && paused.paused_reason.contains("500"),
        "{}",
        paused.paused_reason
    );
    // Nothing matching was delivered: the cursor stands before the first ticket (it passed
    // only the subscription's own `subscription_changed` record, which the filter skips).
    let first_ticket = expected(&admin, subscription.cursor).await[0];
    assert!(paused.cursor < first_ticket, "{paused:?}");
    let listed = admin.subscriptions().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].paused);
    let attempts = receiver.received().len();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        receiver.received().len(),
        attempts,
        "a paused subscription sends nothing"
    );

    // Repaired and resumed: every record arrives, from the cursor, none lost or reordered.
    receiver.behaviour.broken.store(false, Ordering::SeqCst);
    let resumed = admin
        .resume_subscription(&request_id(), "tickets")
        .await
        .unwrap();
    assert!(!resumed.paused && resumed.last_error.is_empty());
    let all = expected(&admin, subscription.cursor).await;
    assert_eq!(all.len(), 3);
    wait_for(&receiver, &all, Duration::from_secs(30)).await;

    // The leader's metrics count the attempts by outcome, and the lag falls to 0.
    let leader = cluster.leader().await;
    let started = Instant::now();
    loop {
        let (_, metrics) = cluster.scrape(leader).await;
        let series = |outcome: &str| {
            format!(
                "lockstep_webhook_deliveries_total{{subscription=\"tickets\",outcome=\"{outcome}\"}}"
            )
        };
        let lag = "lockstep_webhook_lag_records{subscription=\"tickets\"}";
        if metrics.contains(&series("delivered")) && gauge(&metrics, lag) == 0.0 {
            assert!(counter(&metrics, &series("failed")) >= 3, "{metrics}");
            assert!(counter(&metrics, &series("delivered")) >= 3, "{metrics}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{metrics}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A filter on emitted event names: only the change that emitted `pages.paged` is sent.
    admin
        .apply_definition(&request_id(), PAGES, lockstep_client::Provenance::default())
        .await
        .unwrap();
    let pages_addr = free_addr("127.0.0.1");
    let pages = Receiver::default();
    let _pages_server = pages.serve(pages_addr).await;
    create(
        &admin,
        "paged",
        &format!("http://{pages_addr}/hook"),
        "ops",
        pb::SubscriptionFilter {
            events: vec!["pages.paged".into()],
            ..pb::SubscriptionFilter::default()
        },
    )
    .await
    .unwrap();
    let mut paged_seqs = Vec::new();
    for _ in 0..2 {
        let created = admin
            .create(&request_id(), "pages", None, &serde_json::json!({}))
            .await
            .unwrap();
        let paged = admin
            .transition(
                &request_id(),
                lockstep_client::by_id(&created.instance_id),
                "page",
                &serde_json::json!({}),
                None,
            )
            .await
            .unwrap();
        paged_seqs.push(paged.audit_seq);
    }
    wait_for(&pages, &paged_seqs, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got: Vec<u64> = pages.received().iter().map(|r| r.id).collect();
    assert_eq!(
        got, paged_seqs,
        "only the records whose change emitted the event"
    );
    let body: serde_json::Value = serde_json::from_slice(&pages.received()[0].body).unwrap();
    assert_eq!(body["data"]["emitted"], serde_json::json!(["pages.paged"]));
    assert_eq!(body["type"], "lockstep.transition");

    // An operator's pause and a delete; unknown names are refused NOT_FOUND.
    let p = admin
        .pause_subscription(&request_id(), "tickets", "receiver maintenance")
        .await
        .unwrap();
    assert!(p.paused && p.paused_reason == "receiver maintenance" && p.paused_by == "admin");
    let d = admin
        .delete_subscription(&request_id(), "tickets")
        .await
        .unwrap();
    assert_eq!(d.name, "tickets");
    let left: Vec<String> = admin
        .subscriptions()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(left, ["paged"]);
    let gone = admin
        .resume_subscription(&request_id(), "tickets")
        .await
        .unwrap_err();
    assert_eq!(gone.refusal_code(), Some(RefusalCode::UnknownSubscription));
    let gone = admin.subscription("tickets").await.unwrap_err();
    assert_eq!(gone.refusal_code(), Some(RefusalCode::UnknownSubscription));
}
