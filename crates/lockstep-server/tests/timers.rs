//! The leader-only timer service on real 3-node clusters: failover, stale timers, a full stop,
//! and a frozen old leader.

mod common;

use std::time::Duration;

use common::{Cluster, Settings, TICKETS_DUE};
use lockstep_client::model::{AuditKind, TimerFiring};
use lockstep_client::{AuditRecord, Client, Identity, by_id, pb, request_id};
use lockstep_core::{ActorKind, Timestamp};

const DUE: Duration = TICKETS_DUE;

fn client(cluster: &Cluster) -> Client {
    cluster.ticket_client()
}

async fn history(cluster: &Cluster, id: &str) -> Vec<AuditRecord> {
    client(cluster).history(by_id(id), 0).await.unwrap()
}

/// Waits until every id has timed out (or panics after 30 s).
async fn all_timed_out(cluster: &Cluster, ids: &[String]) {
    for _ in 0..300 {
        let mut all = true;
        for id in ids {
            all &= cluster.state_of(id).await == "timed_out";
        }
        if all {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("not every instance timed out");
}

/// The one `timer_fired` record of an instance (asserting there is exactly one).
async fn the_fire(cluster: &Cluster, id: &str) -> AuditRecord {
    let mut fires: Vec<_> = history(cluster, id)
        .await
        .into_iter()
        .filter(|r| r.record.kind == AuditKind::TimerFired)
        .collect();
    assert_eq!(fires.len(), 1, "{id} fired {} times", fires.len());
    let fire = fires.remove(0);
    assert_eq!(fire.record.actor.id, "system:timer", "{fire:?}");
    fire
}

/// The firing a `timer_fired` record carries.
fn firing(fire: &AuditRecord) -> &TimerFiring {
    fire.record
        .timer
        .as_ref()
        .unwrap_or_else(|| panic!("a timer_fired record names its timer: {fire:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_due_during_a_leader_kill_fires_exactly_once_after_failover() {
    let mut cluster = Cluster::start(Settings::default());
    cluster.leader().await;
    cluster.define_tickets("tickets", "2s").await;
    let ids = vec![cluster.create_ticket().await, cluster.create_ticket().await];
    // Kill the leader before the timers fall due; they fall due while the cluster elects.
    tokio::time::sleep(DUE - Duration::from_millis(300)).await;
    let leader = cluster.leader().await;
    cluster.kill9(leader);
    all_timed_out(&cluster, &ids).await;
    for id in &ids {
        let fire = the_fire(&cluster, id).await;
        let timer = firing(&fire);
        let (due, fired) = (timer.due_at, timer.fired_at);
        assert!(fired >= due, "fired before due: {timer:?}");
        assert_eq!(
            timer.lateness_ms,
            ((fired.as_micros() - due.as_micros()) / 1000) as u64,
            "lateness is recorded: {timer:?}"
        );
    }
    // Bring the old leader back: it catches up and nothing fires again.
    cluster.restart(leader);
    let digests = cluster.converged_digests().await;
    assert!(digests.iter().all(|d| d == &digests[0]), "{digests:?}");
    for id in &ids {
        the_fire(&cluster, id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_whose_instance_left_the_state_never_acts() {
    let cluster = Cluster::start(Settings::default());
    cluster.leader().await;
    cluster.define_tickets("tickets", "2s").await;
    let id = cluster.create_ticket().await;
    client(&cluster)
        .transition(
            &request_id(),
            by_id(&id),
            "leave",
            &serde_json::Value::Null,
            None,
        )
        .await
        .unwrap();
    tokio::time::sleep(DUE + Duration::from_secs(1)).await;
    assert_eq!(cluster.state_of(&id).await, "handled");
    let kinds: Vec<AuditKind> = history(&cluster, &id)
        .await
        .into_iter()
        .map(|r| r.record.kind)
        .collect();
    assert_eq!(
        kinds,
        [AuditKind::Created, AuditKind::Transition],
        "the cancelled timer left no trace"
    );
    let got = client(&cluster)
        .get(by_id(&id), pb::ReadConsistency::Linearizable)
        .await
        .unwrap()
        .instance;
    assert!(
        got.timers.is_empty(),
        "no timer stays armed: {:?}",
        got.timers
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_due_during_a_full_cluster_stop_all_fire_once_in_due_order() {
    let mut cluster = Cluster::start(Settings::default());
    cluster.leader().await;
    cluster.define_tickets("tickets", "2s").await;
    // Staggered due times, 150 ms apart.
    let mut ids = Vec::new();
    for _ in 0..8 {
        ids.push(cluster.create_ticket().await);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    for i in 0..3 {
        cluster.stop(i);
    }
    // Everything falls due while no node runs.
    tokio::time::sleep(DUE + Duration::from_secs(1)).await;
    for i in 0..3 {
        cluster.restart(i);
    }
    cluster.leader().await;
    all_timed_out(&cluster, &ids).await;
    let mut fires = Vec::new();
    for id in &ids {
        let fire = the_fire(&cluster, id).await;
        fires.push((fire.global_seq, firing(&fire).due_at));
    }
    // In the global audit order, the fires follow due order.
    fires.sort_by_key(|(seq, _)| *seq);
    let dues: Vec<Timestamp> = fires.iter().map(|(_, due)| *due).collect();
    let mut sorted = dues.clone();
    sorted.sort();
    assert_eq!(dues, sorted, "fired in due order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_old_leader_cannot_make_a_timer_act_twice() {
    let cluster = Cluster::start(Settings::default());
    let old = cluster.leader().await;
    cluster.define_tickets("tickets", "2s").await;
    let ids = vec![cluster.create_ticket().await, cluster.create_ticket().await];
    // Freeze the leader (it keeps its sockets and still believes it leads) before the timers
    // fall due; the others elect a new leader, which fires them.
    tokio::time::sleep(DUE - Duration::from_millis(500)).await;
    cluster.pause(old, true);
    let survivors: Vec<String> = (0..3)
        .filter(|i| *i != old)
        .map(|i| cluster.endpoint(i))
        .collect();
    let c = cluster.client_for(&survivors, Identity::new("alice", ActorKind::Human, &[]));
    for id in &ids {
        let mut done = false;
        for _ in 0..300 {
            let s = c
                .get(by_id(id), pb::ReadConsistency::Linearizable)
                .await
                .unwrap()
                .instance
                .state;
            if s == "timed_out" {
                done = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            done,
            "{id} did not time out while the old leader was frozen"
        );
    }
    // Thaw it: whatever it proposes as a stale leader never commits, and it rejoins.
    cluster.pause(old, false);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let digests = cluster.converged_digests().await;
    assert!(digests.iter().all(|d| d == &digests[0]), "{digests:?}");
    for id in &ids {
        the_fire(&cluster, id).await;
    }
    let verify = cluster.admin().verify_audit().await.unwrap();
    assert!(verify.ok(), "{verify:?}");
}

/// The timer service scans the due index from a cursor (the due time it has reached); a
/// timer armed later with an earlier due time than the cursor must still fire. Here the
/// service first sees only a timer due in an hour, then one due in 2 s is armed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_armed_due_before_the_scan_cursor_still_fires() {
    let cluster = Cluster::start(Settings::default());
    cluster.leader().await;
    cluster.define_tickets("later", "1h").await;
    cluster.define_tickets("tickets", "2s").await;
    let hour = client(&cluster)
        .create(&request_id(), "later", None, &serde_json::json!({}))
        .await
        .unwrap()
        .instance_id;
    // Long enough for the service to look at the index and park its cursor an hour ahead.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let soon = cluster.create_ticket().await;
    all_timed_out(&cluster, std::slice::from_ref(&soon)).await;
    assert_eq!(cluster.state_of(&hour).await, "waiting");
    the_fire(&cluster, &soon).await;
}

/// More overdue timers than the service keeps in flight (`TIMERS_FIRE_IN_FLIGHT_MAX` batches
/// of `TIMERS_FIRE_BATCH_MAX`) when a leader appears after a full stop: each fires exactly
/// once, and the fires follow due order across the batches that were in flight together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_larger_than_the_fires_in_flight_fires_once_each_in_due_order() {
    use lockstep_server::timers::{TIMERS_FIRE_BATCH_MAX, TIMERS_FIRE_IN_FLIGHT_MAX};
    const CREATORS: usize = 32;
    let expiry = Duration::from_secs(20);
    let mut cluster = Cluster::start(Settings::default());
    cluster.leader().await;
    cluster
        .define_tickets("many", &format!("{}s", expiry.as_secs()))
        .await;
    let c = std::sync::Arc::new(client(&cluster));
    let total = TIMERS_FIRE_BATCH_MAX * (TIMERS_FIRE_IN_FLIGHT_MAX + 2);
    let mut creators = tokio::task::JoinSet::new();
    for _ in 0..CREATORS {
        let c = std::sync::Arc::clone(&c);
        creators.spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..total / CREATORS {
                let created = c
                    .create(&request_id(), "many", None, &serde_json::json!({}))
                    .await
                    .unwrap();
                ids.push(created.instance_id);
            }
            ids
        });
    }
    let mut armed = std::collections::HashSet::new();
    while let Some(ids) = creators.join_next().await {
        armed.extend(ids.unwrap());
    }
    let all_armed = std::time::Instant::now();
    assert_eq!(armed.len(), total);
    for i in 0..3 {
        cluster.stop(i);
    }
    // Every timer falls due while no node runs.
    tokio::time::sleep_until((all_armed + expiry + Duration::from_secs(1)).into()).await;
    for i in 0..3 {
        cluster.restart(i);
    }
    cluster.leader().await;
    let c = client(&cluster);
    let mut fires: Vec<(String, Timestamp)> = Vec::new();
    for _ in 0..600 {
        fires.clear();
        let mut feed = c.tail(0, false).await.unwrap();
        while let Some(r) = feed.next().await.unwrap() {
            if r.record.kind == AuditKind::TimerFired && r.record.workflow == "many" {
                let due = firing(&r).due_at;
                fires.push((r.record.instance_id, due));
            }
        }
        if fires.len() >= total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fired: std::collections::HashSet<&String> = fires.iter().map(|(id, _)| id).collect();
    assert_eq!(fires.len(), total, "every timer fires, none twice");
    assert_eq!(fired.len(), total, "every timer fires, none twice");
    assert!(fired.iter().all(|id| armed.contains(*id)));
    // The feed is in global (log) order.
    let dues: Vec<Timestamp> = fires.iter().map(|(_, due)| *due).collect();
    assert!(
        dues.windows(2).all(|w| w[0] <= w[1]),
        "fired out of due order"
    );
}
