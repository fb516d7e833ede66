//! Task queues, fenced leases, retries, incidents and the change feed on real 3-node clusters.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::{Cluster, Settings};
use lockstep_client::model::{AuditKind, TaskStatus};
use lockstep_client::worker::{TaskFailure, WorkerOptions};
use lockstep_client::{AuditRecord, Client, Identity, Instance, by_id, pb, request_id};
use lockstep_core::{ActorKind, RefusalCode};
use lockstep_proto::names;

/// A workflow with a short lease and a quick fixed backoff, so leases expire and retries run
/// within a test. `ship` has `on_exhausted`; `bill` opens an incident when exhausted.
const JOBS: &str = r#"
workflow: jobs
data: { type: object }
states:
  open: { initial: true }
  shipping: {}
  billing: {}
  shipped: { terminal: true }
  billed: { terminal: true }
  failed: { terminal: true }
transitions:
  ship:
    from: open
    to: shipping
    allow: "true"
    effects:
      - task:
          queue: shipping
          type: ship
          timeout: 1s
          retry: { max_attempts: 3, backoff: fixed, initial: 400ms }
          on_complete: shipped
          on_exhausted: give_up
  bill:
    from: open
    to: billing
    allow: "true"
    effects:
      - task:
          queue: billing
          type: bill
          timeout: 5s
          retry: { max_attempts: 2, backoff: fixed, initial: 200ms }
          on_complete: billed
  shipped: { from: shipping, to: shipped, allow: "actor.kind == 'worker'" }
  billed: { from: billing, to: billed, allow: "actor.kind == 'worker'" }
  give_up: { from: shipping, to: failed, system: true }
"#;

fn human(cluster: &Cluster) -> Client {
    cluster.client(Identity::new("alice", ActorKind::Human, &["operator"]))
}

fn worker(cluster: &Cluster, name: &str, node: usize) -> Client {
    cluster.client_for(
        &[cluster.endpoint(node)],
        Identity::new(name, ActorKind::Worker, &[]),
    )
}

async fn define(cluster: &Cluster) {
    human(cluster)
        .apply_definition(&request_id(), JOBS, lockstep_client::Provenance::default())
        .await
        .unwrap();
}

async fn start_job(cluster: &Cluster, transition: &str) -> String {
    let c = human(cluster);
    let id = c
        .create(&request_id(), "jobs", None, &serde_json::json!({}))
        .await
        .unwrap()
        .instance_id;
    c.transition(
        &request_id(),
        by_id(&id),
        transition,
        &serde_json::Value::Null,
        None,
    )
    .await
    .unwrap();
    id
}

async fn instance(cluster: &Cluster, id: &str) -> Instance {
    human(cluster)
        .get(by_id(id), pb::ReadConsistency::Linearizable)
        .await
        .unwrap()
        .instance
}

/// The instance as the wire carries it, deprecated JSON fields included (a raw call: the
/// client answers domain types).
async fn wire_instance(cluster: &Cluster, id: &str) -> pb::Instance {
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", cluster.endpoint(0)))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut request = tonic::Request::new(pb::GetInstanceRequest {
        instance: Some(by_id(id)),
        consistency: pb::ReadConsistency::Linearizable as i32,
    });
    let md = request.metadata_mut();
    md.insert(names::ACTOR_HEADER, "alice".parse().unwrap());
    md.insert(names::ACTOR_KIND_HEADER, "human".parse().unwrap());
    md.insert(names::ROLES_HEADER, "operator".parse().unwrap());
    pb::instances_client::InstancesClient::new(channel)
        .get(request)
        .await
        .unwrap()
        .into_inner()
        .instance
        .unwrap()
}

async fn kinds(cluster: &Cluster, id: &str) -> Vec<AuditKind> {
    human(cluster)
        .history(by_id(id), 0)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.record.kind)
        .collect()
}

async fn wait_for_state(cluster: &Cluster, id: &str, state: &str) -> Instance {
    for _ in 0..200 {
        let i = instance(cluster, id).await;
        if i.state == state {
            return i;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "instance {id} never reached `{state}`: {:?}",
        kinds(cluster, id).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_worker_loses_its_lease_and_its_late_completion_is_refused() {
    let cluster = Cluster::start(Settings::default());
    let leader = cluster.leader().await;
    define(&cluster).await;
    let id = start_job(&cluster, "ship").await;
    // The first worker polls through a follower and then stalls past its 1 s lease.
    let follower = (leader + 1) % 3;
    let slow = worker(&cluster, "slow", follower);
    let first = slow
        .poll_tasks("shipping", 1, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(first.len(), 1, "the ready task is leased");
    let stale = first[0].lease.clone();
    assert_eq!(stale.token.attempt, 1);
    // Only the lease holder may heartbeat it.
    let thief = worker(&cluster, "thief", leader);
    let err = thief
        .heartbeat_task(&request_id(), &stale)
        .await
        .unwrap_err();
    assert_eq!(err.refusal_code(), Some(RefusalCode::Forbidden), "{err}");
    // A second worker waits on another node; it gets the task once the lease expired and
    // the 400 ms backoff passed: attempt 2, a new token.
    let fast = worker(&cluster, "fast", (leader + 2) % 3);
    let second = fast
        .poll_tasks("shipping", 1, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        second.len(),
        1,
        "the task came back after its lease expired"
    );
    let fresh = second[0].lease.clone();
    assert_eq!(fresh.token.attempt, 2);
    let done = fast
        .complete_task(
            &request_id(),
            &fresh,
            &serde_json::json!({"data": {"tracking": "T-1"}}),
        )
        .await
        .unwrap();
    assert_eq!(done.state, "shipped", "on_complete took `shipped`");
    // The stalled worker wakes up and tries to complete: refused, nothing changes.
    let late = slow
        .complete_task(&request_id(), &stale, &serde_json::json!({}))
        .await
        .unwrap_err();
    assert_eq!(late.refusal_code(), Some(RefusalCode::StaleLease), "{late}");
    let i = instance(&cluster, &id).await;
    assert_eq!(i.state, "shipped");
    assert_eq!(i.data["tracking"], "T-1", "the result became the payload");
    let history = human(&cluster).history(by_id(&id), 0).await.unwrap();
    let completed: Vec<_> = history
        .iter()
        .filter(|r| r.record.kind == AuditKind::TaskCompleted)
        .collect();
    assert_eq!(completed.len(), 1, "completed exactly once");
    assert_eq!(completed[0].record.actor.id, "fast");
    assert_eq!(
        completed[0].record.task_id.as_ref(),
        Some(&fresh.task_id),
        "the completion names its task"
    );
    assert!(
        history
            .iter()
            .any(|r| r.record.kind == AuditKind::TaskFailed && r.record.actor.id == "system:lease"),
        "the expiry is audited: {:?}",
        kinds(&cluster, &id).await
    );
    // A poll that finds nothing answers empty after its wait.
    let none = fast
        .poll_tasks("shipping", 4, Duration::from_millis(300))
        .await
        .unwrap();
    assert!(none.is_empty());
    // A human cannot poll.
    let err = human(&cluster)
        .poll_tasks("shipping", 1, Duration::ZERO)
        .await
        .unwrap_err();
    assert!(
        matches!(err, lockstep_client::Error::PermissionDenied(_)),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_follow_the_policy_in_cluster_time_and_exhaustion_takes_the_declared_path() {
    let cluster = Cluster::start(Settings::default());
    cluster.leader().await;
    define(&cluster).await;
    // `ship` fails three times (its max_attempts) and takes `on_exhausted: give_up`.
    let ship = start_job(&cluster, "ship").await;
    let w = worker(&cluster, "w", 0);
    let mut leased_at = Vec::new();
    for attempt in 1..=3u32 {
        let tasks = w
            .poll_tasks("shipping", 1, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(tasks.len(), 1, "attempt {attempt} was offered");
        let lease = tasks[0].lease.clone();
        assert_eq!(lease.token.attempt, attempt);
        w.fail_task(
            &request_id(),
            &lease,
            &format!("carrier down ({attempt})"),
            true,
        )
        .await
        .unwrap();
        leased_at.push(attempt);
    }
    let failed = wait_for_state(&cluster, &ship, "failed").await;
    assert_eq!(failed.state, "failed");
    let history = human(&cluster).history(by_id(&ship), 0).await.unwrap();
    // Each retry became ready no earlier than 400 ms (cluster time) after the failure.
    let time = |r: &AuditRecord| r.record.at;
    let failures: Vec<_> = history
        .iter()
        .filter(|r| r.record.kind == AuditKind::TaskFailed)
        .collect();
    let retries: Vec<_> = history
        .iter()
        .filter(|r| r.record.kind == AuditKind::TaskRetryDue)
        .collect();
    assert_eq!(
        (failures.len(), retries.len()),
        (3, 2),
        "{:?}",
        kinds(&cluster, &ship).await
    );
    for (f, r) in failures.iter().zip(&retries) {
        let gap_ms = (time(r).as_micros() - time(f).as_micros()) / 1000;
        assert!(gap_ms >= 400, "retry came {gap_ms} ms after the failure");
    }
    assert_eq!(leased_at, [1, 2, 3]);

    // `bill` has no on_exhausted: exhausting it opens an incident, which an operator resolves
    // with a retry; a worker then completes it.
    let bill = start_job(&cluster, "bill").await;
    for _ in 0..2 {
        let tasks = w
            .poll_tasks("billing", 1, Duration::from_secs(10))
            .await
            .unwrap();
        let lease = tasks[0].lease.clone();
        w.fail_task(&request_id(), &lease, "ledger locked", true)
            .await
            .unwrap();
    }
    let stuck = instance(&cluster, &bill).await;
    assert_eq!(stuck.state, "billing");
    // The typed incidents of the API, and the deprecated JSON field, say the same.
    #[allow(deprecated)]
    let from_json: BTreeMap<String, serde_json::Value> =
        serde_json::from_str(&wire_instance(&cluster, &bill).await.incidents_json).unwrap();
    assert_eq!(stuck.incidents.len(), 1, "{:?}", stuck.incidents);
    let incident = stuck.incidents[0].clone();
    let incident_id = incident.id.clone();
    assert!(incident.reason.contains("ledger locked"), "{incident:?}");
    assert!(incident.resolved_at.is_none(), "open: {incident:?}");
    assert_eq!(from_json[&incident_id]["reason"], incident.reason.as_str());
    let task = stuck
        .task(incident.task_id.as_deref().unwrap_or_default())
        .expect("the incident names the instance's task");
    assert_eq!(task.status, TaskStatus::Exhausted);
    assert!(
        task.last_error
            .as_ref()
            .is_some_and(|e| e.contains("ledger locked")),
        "{task:?}"
    );
    // The instance with the open incident is what `list --incidents` finds, and only it.
    let workflow_name = stuck.workflow.clone();
    let with_incidents = |open_incidents| pb::ListInstancesRequest {
        workflow: workflow_name.clone(),
        open_incidents,
        ..Default::default()
    };
    let listed = human(&cluster).list(with_incidents(true)).await.unwrap();
    let ids: Vec<&str> = listed.instances.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids, [bill.as_str()]);
    assert!(
        human(&cluster)
            .list(with_incidents(false))
            .await
            .unwrap()
            .instances
            .len()
            > 1
    );
    // A non-operator may not resolve it.
    let err = cluster
        .client(Identity::new("mallory", ActorKind::Human, &[]))
        .resolve_incident(&request_id(), by_id(&bill), &incident_id, true)
        .await
        .unwrap_err();
    assert_eq!(err.refusal_code(), Some(RefusalCode::Forbidden), "{err}");
    human(&cluster)
        .resolve_incident(&request_id(), by_id(&bill), &incident_id, true)
        .await
        .unwrap();
    let tasks = w
        .poll_tasks("billing", 1, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        tasks.len(),
        1,
        "the resolved incident's task is ready again"
    );
    w.complete_task(&request_id(), &tasks[0].lease, &serde_json::json!({}))
        .await
        .unwrap();
    assert_eq!(instance(&cluster, &bill).await.state, "billed");
    let open = human(&cluster).list(with_incidents(true)).await.unwrap();
    assert!(open.instances.is_empty(), "{:?}", open.instances);
    let kinds = kinds(&cluster, &bill).await;
    assert!(kinds.contains(&AuditKind::IncidentResolved), "{kinds:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_killed_while_tasks_are_leased_loses_none_and_completes_each_once() {
    let mut cluster = Cluster::start(Settings::default());
    cluster.leader().await;
    define(&cluster).await;
    const JOBS_N: usize = 12;
    let mut ids = Vec::new();
    for _ in 0..JOBS_N {
        ids.push(start_job(&cluster, "bill").await);
    }
    // A worker library instance with every endpoint, slow enough that the kill lands while it
    // holds leases and while the outbox still has work.
    let client = Arc::new(cluster.client(Identity::new("w", ActorKind::Worker, &[])));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut options = WorkerOptions::new("billing");
    options.concurrency = 3;
    options.poll_wait = Duration::from_secs(2);
    let worker = tokio::spawn(lockstep_client::worker::run(
        client,
        options,
        |_task| async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok::<_, TaskFailure>(serde_json::json!({}))
        },
        stopped,
    ));
    tokio::time::sleep(Duration::from_millis(700)).await;
    let leader = cluster.leader().await;
    cluster.kill9(leader);
    for id in &ids {
        wait_for_state(&cluster, id, "billed").await;
    }
    stop.send(true).unwrap();
    let stats = worker.await.unwrap().unwrap();
    assert!(stats.completed >= 1, "{stats:?}");
    // Every task completed exactly once, whatever the worker saw.
    for id in &ids {
        let kinds = kinds(&cluster, id).await;
        let completed = kinds
            .iter()
            .filter(|k| **k == AuditKind::TaskCompleted)
            .count();
        assert_eq!(completed, 1, "{id}: {kinds:?}");
    }
    // The survivors agree, and the outbox was dispatched and acknowledged on the new leader.
    let digests = cluster.converged_digests().await;
    assert!(digests.iter().all(|d| d == &digests[0]), "{digests:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_feed_consumer_resumes_on_another_node_with_no_gap_and_no_duplicate() {
    let mut cluster = Cluster::start(Settings::default());
    let leader = cluster.leader().await;
    define(&cluster).await;
    for _ in 0..10 {
        start_job(&cluster, "ship").await;
    }
    // Read part of the feed from a follower, then lose that node.
    let first_node = (leader + 1) % 3;
    let reader = cluster.client_for(
        &[cluster.endpoint(first_node)],
        Identity::new("auditor", ActorKind::Human, &[]),
    );
    let mut stream = reader.tail(1, true).await.unwrap();
    let mut seen: Vec<AuditRecord> = Vec::new();
    while seen.len() < 7 {
        seen.push(stream.next().await.unwrap().unwrap());
    }
    drop(stream);
    cluster.kill9(first_node);
    // More writes while the consumer is away.
    for _ in 0..5 {
        start_job(&cluster, "bill").await;
    }
    // Resume from the cursor on another node.
    let other = (leader + 2) % 3;
    let cursor = seen.last().unwrap().global_seq + 1;
    let resumed = cluster.client_for(
        &[cluster.endpoint(other)],
        Identity::new("auditor", ActorKind::Human, &[]),
    );
    let mut stream = resumed.tail(cursor, false).await.unwrap();
    while let Some(r) = stream.next().await.unwrap() {
        seen.push(r);
    }
    // Gap-free and duplicate-free: 1, 2, 3, ... in order.
    let seqs: Vec<u64> = seen.iter().map(|r| r.global_seq).collect();
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected);
    assert!(
        seqs.len() >= 1 + 20 + 10,
        "definition + 10 ship jobs + 5 bill jobs: {}",
        seqs.len()
    );
    // And it matches every surviving replica's audit log, hash for hash.
    for node in cluster.running() {
        let c = cluster.client_for(
            &[cluster.endpoint(node)],
            Identity::new("auditor", ActorKind::Human, &[]),
        );
        let mut s = c.tail(1, false).await.unwrap();
        let mut hashes = Vec::new();
        while let Some(r) = s.next().await.unwrap() {
            hashes.push(r.hash);
        }
        let ours: Vec<String> = seen.iter().map(|r| r.hash.clone()).collect();
        assert_eq!(hashes[..ours.len()], ours[..], "node {}", node + 1);
    }
}

/// A completion sent the moment its lease expires (by the lease expiry the poll answered) is
/// refused `STALE_LEASE`, whether the leader's lease-expiry timer fired first or not: the
/// engine compares the lease with the command's cluster time (log format 3), so a late
/// worker never wins the race with the timer. Several jobs, so that some completions reach
/// the leader before its timer fire would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_at_the_lease_expiry_is_refused_whoever_wins_the_race() {
    let cluster = Cluster::start(Settings::default());
    let leader = cluster.leader().await;
    define(&cluster).await;
    // The lease-expiry guard is on once the cluster-version gate raised the log format.
    cluster.wait_for_group_commit(Duration::from_secs(30)).await;
    let w = worker(&cluster, "late", leader);
    let mut refusals = Vec::new();
    for _ in 0..6 {
        let id = start_job(&cluster, "ship").await;
        let leased = w
            .poll_tasks("shipping", 1, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(leased.len(), 1);
        let expires = leased[0].lease_expires_at.to_jiff();
        let wait = expires.duration_since(jiff::Timestamp::now());
        if let Ok(wait) = Duration::try_from(wait) {
            tokio::time::sleep(wait).await;
        }
        let late = w
            .complete_task(&request_id(), &leased[0].lease, &serde_json::json!({}))
            .await
            .unwrap_err();
        assert_eq!(late.refusal_code(), Some(RefusalCode::StaleLease), "{late}");
        assert_ne!(instance(&cluster, &id).await.state, "shipped");
        refusals.push(late.to_string());
    }
    // Each refusal names why: the lease expired at a time, or it is no longer the lease.
    for r in &refusals {
        assert!(r.contains("expired at") || r.contains("is stale"), "{r}");
    }
}

/// Long polls waiting on a follower look at their queue when an apply made a task ready (or
/// at the recheck), not on every write the follower applies; a task made ready reaches them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_polls_wake_for_ready_tasks_not_for_every_write() {
    let cluster = Cluster::start(Settings::default());
    let leader = cluster.leader().await;
    let follower = (0..3).find(|&i| i != leader).unwrap();
    define(&cluster).await;
    let looks = |body: &str| common::counter(body, "lockstep_task_poll_looks_total");
    let (_, before) = cluster.scrape(follower).await;
    let wait = Duration::from_secs(3);
    let polls: Vec<_> = (0..4)
        .map(|n| {
            let w = worker(&cluster, &format!("idle-{n}"), follower);
            tokio::spawn(async move { w.poll_tasks("shipping", 1, wait).await.unwrap() })
        })
        .collect();
    // Writes that make no task ready, applied on the follower while the polls wait.
    let c = human(&cluster);
    let started = std::time::Instant::now();
    let mut writes = 0;
    while started.elapsed() < wait - Duration::from_millis(500) {
        c.create(&request_id(), "jobs", None, &serde_json::json!({}))
            .await
            .unwrap();
        writes += 1;
    }
    for p in polls {
        assert!(p.await.unwrap().is_empty(), "no task was ready");
    }
    let (_, after) = cluster.scrape(follower).await;
    let looked = looks(&after) - looks(&before);
    // Each poll looks once as it arrives and once per 250 ms recheck: 4 × (1 + 12), with
    // room for a late answer; a look per applied write would be 4 × `writes`.
    assert!(
        writes >= 40,
        "only {writes} writes in {wait:?}: too few to tell"
    );
    assert!(
        looked <= 4 * 16,
        "4 polls waiting {wait:?} looked {looked} times while the follower applied {writes} writes"
    );
    // A task made ready wakes a poll waiting on the follower.
    let w = worker(&cluster, "busy", follower);
    let poll = tokio::spawn(async move {
        w.poll_tasks("shipping", 1, Duration::from_secs(20))
            .await
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let id = start_job(&cluster, "ship").await;
    let leased = poll.await.unwrap();
    assert_eq!(leased.len(), 1, "{leased:?}");
    assert_eq!(leased[0].lease.instance_id, id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_worker_releases_what_it_cannot_finish_and_another_takes_it_at_once() {
    let cluster = Cluster::start(Settings::default());
    cluster.leader().await;
    // Tasks/Release is log format 6, which the gate raises once the nodes are up (group
    // commit on means the current format).
    cluster.wait_for_group_commit(Duration::from_secs(30)).await;
    define(&cluster).await;
    let id = start_job(&cluster, "bill").await;
    // A worker whose handler never finishes, stopped with a drain time of 300 ms.
    let client = Arc::new(cluster.client(Identity::new("stuck", ActorKind::Worker, &[])));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut options = WorkerOptions::new("billing");
    options.poll_wait = Duration::from_secs(2);
    options.drain = Some(Duration::from_millis(300));
    let running = tokio::spawn(lockstep_client::worker::run(
        client,
        options,
        |_task| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<_, TaskFailure>(serde_json::json!({}))
        },
        stopped,
    ));
    for _ in 0..100 {
        if instance(&cluster, &id).await.tasks[0].status == TaskStatus::Leased {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        instance(&cluster, &id).await.tasks[0].status,
        TaskStatus::Leased
    );
    stop.send(true).unwrap();
    let stats = running.await.unwrap().unwrap();
    assert_eq!((stats.released, stats.completed), (1, 0), "{stats:?}");
    let task = &instance(&cluster, &id).await.tasks[0];
    assert_eq!(task.status, TaskStatus::Ready, "{task:?}");
    assert_eq!(task.worker, None);

    // Ready at once: another worker leases it long before the 5 s lease would have expired,
    // with a new token; the released one stays stale.
    let other = worker(&cluster, "other", 0);
    let leased = other
        .poll_tasks("billing", 1, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(leased.len(), 1, "the released task is ready again");
    let lease = &leased[0].lease;
    assert_eq!(lease.instance_id, id);
    assert_eq!(lease.token.attempt, 2);
    let stale = lockstep_client::model::TaskLease {
        token: lockstep_core::engine::LeaseToken {
            attempt: 1,
            ..lease.token
        },
        ..lease.clone()
    };
    match other.release_task(&request_id(), &stale).await {
        Err(lockstep_client::Error::Refused(r)) => assert_eq!(r.code, RefusalCode::StaleLease),
        other => panic!("a released lease is stale, got {other:?}"),
    }
    other
        .complete_task(&request_id(), lease, &serde_json::json!({}))
        .await
        .unwrap();
    wait_for_state(&cluster, &id, "billed").await;
    let kinds = kinds(&cluster, &id).await;
    assert!(kinds.contains(&AuditKind::TaskReleased), "{kinds:?}");
}
