//! Overload on real clusters: admission control refuses client writes, linearizable reads and
//! polls beyond their bounds at once, with `RESOURCE_EXHAUSTED` / `OVERLOADED` and a
//! retry-after hint, and changes nothing; the Rust client backs off and retries with the
//! same request id; the engine's own timers still fire under a flood of client writes.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Cluster, Settings, TICKETS, counter};
use lockstep_client::{Client, Error, Identity, OVERLOADED, Options, by_id, pb, request_id};
use lockstep_core::{ActorKind, Timestamp};

fn alice() -> Identity {
    Identity::new("alice", ActorKind::Human, &[])
}

/// A client of `endpoints` that returns OVERLOADED refusals instead of retrying them.
fn impatient_at(cluster: &Cluster, endpoints: &[String], identity: Identity) -> Client {
    let options = Options {
        retry_overloaded: false,
        ..Options::default()
    };
    cluster.client_with(endpoints, identity, options)
}

fn impatient(cluster: &Cluster, identity: Identity) -> Client {
    impatient_at(cluster, &cluster.endpoints(), identity)
}

fn settings(args: &[&str]) -> Settings {
    Settings {
        nodes: 3,
        node_args: args.iter().map(|a| a.to_string()).collect(),
        ..Settings::default()
    }
}

fn assert_overloaded(e: &Error) {
    match e {
        Error::Overloaded {
            reason,
            retry_after,
            message,
            ..
        } => {
            assert_eq!(reason, OVERLOADED, "{message}");
            let hint = retry_after.expect("a retry-after hint");
            assert!(
                hint > Duration::ZERO && hint <= Duration::from_secs(2),
                "{hint:?}"
            );
            assert!(message.contains("retry"), "says what to do: {message}");
        }
        other => panic!("expected OVERLOADED, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_beyond_the_admission_limit_are_refused_before_they_are_proposed() {
    // A fixed limit of 2 client writes in flight per node.
    let cluster = Cluster::start(settings(&[
        "--admission-limit-min",
        "2",
        "--admission-limit-max",
        "2",
    ]));
    let leader = cluster.leader().await;
    cluster.define_po().await;
    let client = Arc::new(impatient(&cluster, alice()));
    let data = serde_json::json!({"amount": 100, "requester": "alice"});

    // 64 creates at once, each with its own request id and business key.
    let mut calls = tokio::task::JoinSet::new();
    for n in 0..64 {
        let (client, data) = (Arc::clone(&client), data.clone());
        calls.spawn(async move {
            let (id, key) = (request_id(), format!("po-{n}"));
            let r = client
                .create(&id, "purchase-order", Some(&key), &data)
                .await;
            (id, key, r)
        });
    }
    let (mut created, mut refused) = (Vec::new(), Vec::new());
    while let Some(joined) = calls.join_next().await {
        let (id, key, r) = joined.unwrap();
        match r {
            Ok(c) => created.push(c.instance_id),
            Err(e) => {
                assert_overloaded(&e);
                refused.push((id, key));
            }
        }
    }
    assert!(
        !refused.is_empty(),
        "64 concurrent creates against a limit of 2 per node were all admitted"
    );
    assert!(!created.is_empty(), "some creates were admitted");

    // Nothing of a refused create happened: no instance, and its request id is not in the
    // dedup table, so the same request (same id) now creates the instance.
    for (_, key) in &refused {
        let got = client
            .get(
                lockstep_client::by_key("purchase-order", key),
                pb::ReadConsistency::Linearizable,
            )
            .await;
        assert!(got.is_err(), "refused create of {key} left an instance");
    }
    let patient = cluster.client(alice());
    for (id, key) in &refused {
        let c = patient
            .create(id, "purchase-order", Some(key), &data)
            .await
            .unwrap_or_else(|e| panic!("retry of the refused create {key}: {e}"));
        assert_eq!(c.state, "draft");
    }
    let list = patient
        .list(pb::ListInstancesRequest {
            workflow: "purchase-order".into(),
            page_size: 500,
            consistency: pb::ReadConsistency::Linearizable as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        list.instances.len(),
        64,
        "each create happened exactly once"
    );

    // The refusals are counted where they happened.
    let mut counted = 0;
    for i in 0..3 {
        let (_, body) = cluster.scrape(i).await;
        // A node that refused nothing has no such series yet.
        if body.contains("lockstep_overload_refusals_total{") {
            counted += counter(&body, "lockstep_overload_refusals_total{what=\"writes\"}");
        }
        if i == leader {
            assert_eq!(counter(&body, "lockstep_admission_limit"), 2);
        }
    }
    assert!(
        counted >= refused.len() as u64,
        "{counted} refusals counted for {} refused",
        refused.len()
    );

    // The default client backs off on OVERLOADED and retries with the same request id:
    // every one of another 64 concurrent creates succeeds.
    let patient = Arc::new(patient);
    let mut calls = tokio::task::JoinSet::new();
    for n in 64..128 {
        let (client, data) = (Arc::clone(&patient), data.clone());
        calls.spawn(async move {
            client
                .create(
                    &request_id(),
                    "purchase-order",
                    Some(&format!("po-{n}")),
                    &data,
                )
                .await
        });
    }
    while let Some(joined) = calls.join_next().await {
        joined.unwrap().expect("a patient client's create succeeds");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn linearizable_reads_beyond_their_bound_are_refused_and_stale_reads_are_not() {
    let cluster = Cluster::start(settings(&["--reads-in-flight-max", "1"]));
    cluster.leader().await;
    cluster.define_po().await;
    let patient = cluster.client(alice());
    let id = patient
        .create(
            &request_id(),
            "purchase-order",
            None,
            &serde_json::json!({"amount": 1, "requester": "alice"}),
        )
        .await
        .unwrap()
        .instance_id;
    let client = Arc::new(impatient(&cluster, alice()));
    // Rounds of 32 concurrent linearizable reads until one finds the one place taken.
    let mut refused = 0;
    for _ in 0..50 {
        let mut reads = tokio::task::JoinSet::new();
        for _ in 0..32 {
            let (client, id) = (Arc::clone(&client), id.clone());
            reads.spawn(async move {
                client
                    .get(by_id(&id), pb::ReadConsistency::Linearizable)
                    .await
            });
        }
        while let Some(joined) = reads.join_next().await {
            match joined.unwrap() {
                Ok(got) => assert_eq!(got.instance.id, id),
                Err(e) => {
                    assert_overloaded(&e);
                    refused += 1;
                }
            }
        }
        if refused > 0 {
            break;
        }
    }
    assert!(refused > 0, "no read was ever refused with one place");
    // Stale reads wait for nothing and are not bounded.
    for _ in 0..32 {
        client
            .get(by_id(&id), pb::ReadConsistency::Stale)
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_may_have_only_so_many_polls_waiting() {
    let cluster = Cluster::start(settings(&[]));
    cluster.leader().await;
    let worker = Identity::new("w-1", ActorKind::Worker, &[]);
    let client = Arc::new(impatient_at(&cluster, &[cluster.endpoint(0)], worker));
    let max = lockstep_server::tasks::POLLS_PER_WORKER_MAX;
    // `max` long polls of an empty queue wait on node 1...
    let mut waiting = tokio::task::JoinSet::new();
    for _ in 0..max {
        let client = Arc::clone(&client);
        waiting.spawn(async move {
            client
                .poll_tasks("nothing-here", 1, Duration::from_secs(10))
                .await
        });
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    // ...so one more by the same worker is refused at once, naming the bound.
    let started = Instant::now();
    let e = client
        .poll_tasks("nothing-here", 1, Duration::from_secs(10))
        .await
        .expect_err("one poll too many");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused at once"
    );
    assert_overloaded(&e);
    assert!(e.to_string().contains(&format!("{max} polls")), "{e}");
    // Another worker still polls.
    let other = cluster.client_for(
        &[cluster.endpoint(0)],
        Identity::new("w-2", ActorKind::Worker, &[]),
    );
    let tasks = other
        .poll_tasks("nothing-here", 1, Duration::from_millis(100))
        .await
        .unwrap();
    assert!(tasks.is_empty());
    waiting.abort_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn timers_fire_on_time_under_a_flood_of_client_writes() {
    // Admission keeps at most 64 client writes in flight per node.
    let cluster = Cluster::start(settings(&["--admission-limit-max", "64"]));
    let leader = cluster.leader().await;
    cluster.define_po().await;
    let patient = cluster.client(alice());
    patient
        .apply_definition(
            &request_id(),
            TICKETS,
            lockstep_client::Provenance::default(),
        )
        .await
        .unwrap();
    // A flood above the limit: 128 clients creating purchase orders back to back until the
    // timers are checked (at most 60 s), coming back 20 ms after a refusal. Not a fixed
    // time: with other tests' clusters on the same two cores, creating the tickets through
    // the flood took longer than a fixed 15 s flood once.
    let flooder = Arc::new(impatient(&cluster, alice()));
    let flood_ends = Instant::now() + Duration::from_secs(60);
    let checked = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..128 {
        let client = Arc::clone(&flooder);
        let checked = Arc::clone(&checked);
        flood.spawn(async move {
            let (mut ok, mut overloaded) = (0u64, 0u64);
            while Instant::now() < flood_ends && !checked.load(std::sync::atomic::Ordering::Relaxed)
            {
                match client
                    .create(
                        &request_id(),
                        "purchase-order",
                        None,
                        &serde_json::json!({"amount": 1, "requester": "alice"}),
                    )
                    .await
                {
                    Ok(_) => ok += 1,
                    Err(Error::Overloaded { .. }) => {
                        overloaded += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) => panic!("flood create failed: {e}"),
                }
            }
            (ok, overloaded)
        });
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Timers armed in the middle of the flood, by a client that retries refusals.
    let patient = Arc::new(patient);
    let mut creating = tokio::task::JoinSet::new();
    for _ in 0..5 {
        let patient = Arc::clone(&patient);
        creating.spawn(async move {
            let c = patient
                .create(&request_id(), "tickets", None, &serde_json::json!({}))
                .await
                .unwrap();
            let record = patient.history(by_id(&c.instance_id), 0).await.unwrap();
            (c.instance_id, record[0].record.at)
        });
    }
    let tickets = creating.join_all().await;
    // Each fires within BOUND of its due time, while the flood goes on: watched with stale
    // reads of the leader's replica, which wait for nothing.
    const BOUND: Duration = Duration::from_millis(1500);
    let watcher = cluster.client_for(&[cluster.endpoint(leader)], alice());
    for (id, armed_at) in &tickets {
        let due = armed_at.as_micros() + 2_000_000;
        loop {
            let got = watcher
                .get(by_id(id), pb::ReadConsistency::Stale)
                .await
                .unwrap();
            let now = Timestamp::from_jiff(jiff::Timestamp::now()).as_micros();
            if got.instance.state == "timed_out" {
                break;
            }
            let late = Duration::from_micros(u64::try_from(now - due).unwrap_or(0));
            assert!(
                late <= BOUND,
                "ticket {id} has not timed out {late:?} after its due time under the flood"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert!(
        Instant::now() < flood_ends,
        "the flood ended before the timers were checked: make it longer"
    );
    checked.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut overloaded) = (0, 0);
    while let Some(joined) = flood.join_next().await {
        let (o, r) = joined.unwrap();
        ok += o;
        overloaded += r;
    }
    assert!(ok > 0, "the flood committed writes");
    assert!(
        overloaded > 0,
        "the flood was never refused: it did not overload the cluster ({ok} committed)"
    );
}
