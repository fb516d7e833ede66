//! The clock offset guard (`src/clock.rs`) on real 3-node clusters whose node 1 (the one that
//! bootstraps, so the first to lead) runs a minute ahead under libfaketime.
//!
//! With the guard a node whose clock is off by more than `max_clock_offset` from a quorum
//! never leads for longer than a bound and stamps nothing, so cluster time, expiries and
//! gates keep real time. Without it (`--max-clock-offset off`), the fast node leads, stamps
//! times a minute ahead, and after it dies the next leader keeps cluster time frozen (time
//! never goes back): an expiry due in 2 s does not fire for a minute.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Cluster, Settings, TICKETS_DUE, gauge};
use lockstep_client::{Identity, Role};
use lockstep_core::ActorKind;

/// How far node 1's wall clock runs ahead.
const AHEAD_S: i64 = 60;
/// The most a node whose clock is off may lead at a stretch: the guard's first judgement
/// (a ping round, 100 ms apart while unknown) plus two election timeouts of the test
/// cluster (500 ms to 1 s each) is about 2.2 s; the bound leaves room for a loaded machine.
const LEADS_AT_MOST: Duration = Duration::from_secs(5);
/// An expiry fires within this of its due time once the cluster is healthy (a correctness
/// bound with a wide margin, as the chaos timers checker's).
const FIRES_WITHIN: Duration = Duration::from_secs(5);

const DUE: Duration = TICKETS_DUE;

fn settings(args: &[&str]) -> Settings {
    Settings {
        skews: vec![AHEAD_S, 0, 0],
        node_args: args.iter().map(|a| a.to_string()).collect(),
        ..Settings::default()
    }
}

/// How far the cluster time node i has applied is ahead of this process's clock, in seconds
/// (waiting up to 10 s for the node to have applied a stamped command at all).
async fn cluster_time_ahead_s(cluster: &Cluster, i: usize) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = cluster.status(i, false).await;
        if let Some(at) = status.and_then(|s| s.cluster_time) {
            return (at.as_micros() - jiff::Timestamp::now().as_microsecond()) as f64 / 1e6;
        }
        assert!(
            Instant::now() < deadline,
            "node {} applied no stamped command within 10 s",
            i + 1
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Watches node 1 (index 0) every 100 ms and records its longest stretch as leader.
struct LeaderWatch {
    longest_ms: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl LeaderWatch {
    fn start(cluster: &Cluster) -> LeaderWatch {
        let probe = cluster.client_for(
            &[cluster.endpoint(0)],
            Identity::new("probe", ActorKind::Human, &[]),
        );
        let longest_ms = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (longest, stopped) = (Arc::clone(&longest_ms), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut since: Option<Instant> = None;
            while !stopped.load(Ordering::Relaxed) {
                let leads =
                    matches!(probe.status_of(0, false).await, Ok(s) if s.role == Role::Leader);
                match (leads, since) {
                    (true, None) => since = Some(Instant::now()),
                    (false, Some(_)) => since = None,
                    _ => {}
                }
                if let Some(s) = since {
                    longest.fetch_max(s.elapsed().as_millis() as u64, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        LeaderWatch { longest_ms, stop }
    }

    fn longest(&self) -> Duration {
        Duration::from_millis(self.longest_ms.load(Ordering::Relaxed))
    }
}

impl Drop for LeaderWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Creates an instance and waits until its 2 s expiry has fired; returns how long after its
/// due time (real time) that was seen.
async fn expiry_lateness(cluster: &Cluster) -> Duration {
    let created = Instant::now();
    let id = cluster.create_ticket().await;
    loop {
        if cluster.state_of(&id).await == "timed_out" {
            return created.elapsed().saturating_sub(DUE);
        }
        assert!(
            created.elapsed() < DUE + FIRES_WITHIN,
            "{id}'s 2 s expiry had not fired {:?} after it was created; logs in {}",
            created.elapsed(),
            cluster.dir.path().display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_a_minute_ahead_never_leads_long_and_time_keeps_real_time() {
    if common::libfaketime().is_none() {
        panic!("this test needs libfaketime: run scripts/prereqs (it installs Debian's faketime)");
    }
    let mut cluster = Cluster::start(settings(&[]));
    let watch = LeaderWatch::start(&cluster);
    let leader = cluster.leader().await;
    cluster.define_tickets("tickets", "2s").await;
    let first = expiry_lateness(&cluster).await;
    for i in 1..3 {
        let ahead = cluster_time_ahead_s(&cluster, i).await;
        assert!(
            ahead < 2.0,
            "node {}'s cluster time is {ahead:.1} s ahead of real time",
            i + 1
        );
    }
    // Kill the good leader: node 1 could win the election if its clock were not held
    // against it. The other good node leads (with node 1's vote), and time stays true.
    let good = if leader == 0 { 1 } else { leader };
    cluster.kill9(good);
    let after_kill = expiry_lateness(&cluster).await;
    cluster.restart(good);
    let again = cluster.leader().await;
    assert_ne!(again, 0, "node 1, a minute ahead, leads");
    let after_restart = expiry_lateness(&cluster).await;
    assert!(
        watch.longest() <= LEADS_AT_MOST,
        "node 1 led for {:?} at a stretch (at most {LEADS_AT_MOST:?})",
        watch.longest()
    );
    eprintln!(
        "expiry lateness: {first:?}, {after_kill:?} after a leader kill, {after_restart:?} after its restart; node 1 led at most {:?} at a stretch",
        watch.longest()
    );
    // The peers see the offset, and node 1 knows it may not lead.
    let (_, body) = cluster.scrape(again).await;
    let offset = gauge(&body, r#"lockstep_clock_offset_seconds{peer="1"}"#);
    assert!(
        (offset - AHEAD_S as f64).abs() < 2.0,
        "node {} measured node 1 at {offset} s",
        again + 1
    );
    assert_eq!(gauge(&body, "lockstep_clock_within_max_offset"), 1.0);
    let (_, body) = cluster.scrape(0).await;
    assert_eq!(gauge(&body, "lockstep_clock_within_max_offset"), 0.0);
    let log = cluster.log(0);
    assert!(
        log.contains("more than max_clock_offset (500ms) from a quorum"),
        "node 1 did not say why it does not lead:\n{log}"
    );
    let log = cluster.log(again);
    assert!(
        log.contains("node 1's wall clock is 60.0s ahead of this node's"),
        "node {} did not warn of node 1's clock:\n{log}",
        again + 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_guard_a_fast_leader_freezes_cluster_time_after_it_dies() {
    if common::libfaketime().is_none() {
        panic!("this test needs libfaketime: run scripts/prereqs (it installs Debian's faketime)");
    }
    let mut cluster = Cluster::start(settings(&["--max-clock-offset", "off"]));
    // Node 1 bootstraps, so it usually leads first; if not, kill leaders until it does.
    let mut leader = cluster.leader().await;
    for _ in 0..10 {
        if leader == 0 {
            break;
        }
        cluster.kill9(leader);
        tokio::time::sleep(Duration::from_secs(1)).await;
        cluster.restart(leader);
        leader = cluster.leader().await;
    }
    assert_eq!(leader, 0, "node 1 never led");
    cluster.define_tickets("tickets", "2s").await;
    // Node 1 stamps times a minute ahead; its timer service, on the same clock, fires on time.
    cluster.create_ticket().await;
    let ahead = cluster_time_ahead_s(&cluster, 0).await;
    assert!(
        ahead > (AHEAD_S - 5) as f64,
        "the fast leader stamped only {ahead:.1} s ahead"
    );
    // The fast leader dies: the next one never moves cluster time back, so it stays
    // frozen and an expiry due in 2 s has not fired well after.
    cluster.kill9(0);
    cluster.leader().await;
    let id = cluster.create_ticket().await;
    tokio::time::sleep(DUE + FIRES_WITHIN + Duration::from_secs(1)).await;
    assert_eq!(
        cluster.state_of(&id).await,
        "waiting",
        "the expiry fired: cluster time was not frozen"
    );
    let ahead = cluster_time_ahead_s(&cluster, 1).await;
    assert!(
        ahead > (AHEAD_S - 15) as f64,
        "cluster time is only {ahead:.1} s ahead of real time"
    );
}
