//! Runs a [`Schedule`]'s faults against a [`Cluster`], healing each before the next, and
//! records when each was active.

use std::sync::Arc;

use anyhow::Context;
use std::time::{Duration, Instant};

use lockstep_client::{Client, Identity, Options};
use lockstep_core::ActorKind;

use crate::cluster::Cluster;
use crate::history::FaultWindow;
use crate::proxy::LinkMode;
use crate::schedule::{Fault, Schedule, Step};

/// The leader (without a known leader, a node picked by the seed stands in for it) and the
/// others, rotated by the pick: the first of them is the follower a fault takes.
fn picks(n: usize, pick: usize, leader: Option<usize>) -> (usize, Vec<usize>) {
    let l = leader.unwrap_or(pick % n);
    let mut others: Vec<usize> = (0..n).filter(|i| *i != l).collect();
    let count = others.len().max(1);
    others.rotate_left(pick % count);
    (l, others)
}

fn nodes(list: &[usize]) -> String {
    let names: Vec<String> = list.iter().map(|i| (i + 1).to_string()).collect();
    format!("node {}", names.join(","))
}

/// Applies one fault; returns what it did, for the timeline, or why the harness could not
/// apply it (a power cut whose disk would not unmount or mount again).
pub fn apply(cluster: &mut Cluster, step: &Step, leader: Option<usize>) -> anyhow::Result<String> {
    let n = cluster.len();
    let pick = step.pick as usize;
    let (l, others) = picks(n, pick, leader);
    let known = if leader.is_some() {
        "leader"
    } else {
        "no leader known; picked"
    };
    let f = others[0];
    let minority = (n - 1) / 2;
    Ok(match step.fault {
        Fault::PartitionFollower => {
            let rest: Vec<usize> = (0..n).filter(|i| *i != f).collect();
            cluster.partition(&[vec![f], rest]);
            format!("{} cut off", nodes(&[f]))
        }
        Fault::PartitionLeaderMinority => {
            let mut small = vec![l];
            small.extend(&others[..minority - 1]);
            let big: Vec<usize> = others[minority - 1..].to_vec();
            cluster.partition(&[small.clone(), big.clone()]);
            format!("{} ({known} {}) | {}", nodes(&small), l + 1, nodes(&big))
        }
        Fault::IsolateLeader => {
            cluster.partition(&[vec![l], others.clone()]);
            format!("{} ({known}) isolated", nodes(&[l]))
        }
        Fault::ResetLeader => {
            cluster.partition_with(&[vec![l], others.clone()], LinkMode::Reset);
            format!("{} ({known}) isolated, its connections reset", nodes(&[l]))
        }
        Fault::AsymmetricLeader => {
            for j in &others {
                cluster.set_link(l, *j, LinkMode::Drop);
            }
            format!(
                "{} ({known}) cannot reach the others; they reach it",
                nodes(&[l])
            )
        }
        Fault::BridgeLeader => {
            let half = others.len() / 2;
            let mut a = others[..half].to_vec();
            let mut b = others[half..].to_vec();
            a.push(l);
            b.push(l);
            cluster.partition(&[a.clone(), b.clone()]);
            format!(
                "{} | {} bridged by {} ({known})",
                nodes(&others[..half]),
                nodes(&others[half..]),
                l + 1
            )
        }
        Fault::Delay(ms) => {
            cluster.all_links(LinkMode::Delay(Duration::from_millis(ms)));
            format!("every peer link +{ms} ms each way")
        }
        Fault::SlowDisk(ms) => {
            // Even picks slow the leader's disk (its log appends gate every commit), odd
            // picks a follower's.
            let (victim, who) = if pick.is_multiple_of(2) {
                (l, known)
            } else {
                (f, "follower")
            };
            match cluster.slow_disk(victim, ms) {
                Ok(()) => format!("{} ({who}) disk syncs +{ms} ms", nodes(&[victim])),
                Err(e) => format!("slowing the disk of {} failed: {e:#}", nodes(&[victim])),
            }
        }
        Fault::KillLeader => {
            cluster.kill9(l);
            format!("kill -9 {} ({known})", nodes(&[l]))
        }
        Fault::KillFollower => {
            cluster.kill9(f);
            format!("kill -9 {}", nodes(&[f]))
        }
        Fault::KillMajority => {
            let mut victims = vec![l];
            victims.extend(&others[..n / 2]);
            for v in &victims {
                cluster.kill9(*v);
            }
            format!("kill -9 {} ({known} {})", nodes(&victims), l + 1)
        }
        Fault::PauseLeader => {
            cluster.pause(l, true);
            format!("SIGSTOP {} ({known})", nodes(&[l]))
        }
        Fault::PauseFollower => {
            cluster.pause(f, true);
            format!("SIGSTOP {}", nodes(&[f]))
        }
        Fault::RestartAll => {
            for i in 0..n {
                cluster.kill9(i);
            }
            "kill -9 every node".into()
        }
        Fault::PowerCutLeader => {
            let lost = cluster.power_cut(l)?;
            format!(
                "power cut of {} ({known}): {lost} unsynced bytes lost",
                nodes(&[l])
            )
        }
        Fault::PowerCutAll => {
            // Killed first, all of them, so that no node sees another's disk die first.
            for i in 0..n {
                cluster.kill9(i);
            }
            let mut lost = 0;
            for i in 0..n {
                lost += cluster.power_cut(i)?;
            }
            format!("power cut of every node: {lost} unsynced bytes lost")
        }
        Fault::ClockJump(by) => {
            cluster.jump_clock(l, by)?;
            format!("the wall clock of {} ({known}) jumps {by:+} s", nodes(&[l]))
        }
        // Asynchronous: see `run`.
        Fault::Membership => (f + 1).to_string(),
        Fault::ReplaceNode => {
            cluster.kill9(f);
            (f + 1).to_string()
        }
        // Its memtables were flushed by the snapshot `run` asked of it just before.
        Fault::CorruptStore => {
            cluster.kill9(f);
            let file = cluster.corrupt_largest_sst(f)?;
            cluster.restart(f)?;
            format!(
                "{} killed, 16 bytes flipped in its {file}, restarted on it",
                nodes(&[f])
            )
        }
        Fault::DiskFailure(full) => {
            use lockstep_lossydisk::DiskFault;
            let fault = if full {
                DiskFault::Full
            } else {
                DiskFault::Failing
            };
            cluster.fail_disk(f, Some(fault))?;
            format!(
                "the disk of {} fails every write and sync with {}",
                nodes(&[f]),
                if full { "ENOSPC" } else { "EIO" }
            )
        }
        Fault::RemoveLeader => (l + 1).to_string(),
    })
}

fn admin_identity() -> Identity {
    Identity::new("chaos-admin", ActorKind::Human, &["admin"])
}

fn admin(cluster: &Cluster) -> Client {
    cluster.client(0, admin_identity(), Options::default())
}

/// Removes the node in slot `f` from the voters (if it runs, it keeps running, outside the
/// cluster).
async fn remove(cluster: &Cluster, f: usize) -> Result<(), lockstep_client::Error> {
    admin(cluster).remove(cluster.id(f)).await.map(|_| ())
}

/// Adds the node in slot `f` (back) as a learner (which waits until it caught up) and
/// promotes it, retrying for up to 60 s.
async fn readd(cluster: &Cluster, f: usize) -> anyhow::Result<()> {
    let client = admin(cluster);
    let id = cluster.id(f);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while Instant::now() < deadline {
        let result = match client.add_learner(id, &cluster.endpoint(f)).await {
            Ok(_) => client.promote(vec![id]).await.map(|_| ()),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => return Ok(()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    anyhow::bail!("node {id} could not be added back within 60 s: {last}")
}

/// How long after a corrupt-store fault ends its node may take to exit: the scrub at its
/// start reads the bad block at once, and it exits `failstop::EXIT_GRACE` (3 s) later.
pub const CORRUPT_EXIT_WITHIN: Duration = Duration::from_secs(10);

/// `failstop::EXIT_CORRUPT`: the status of a node that found its store corrupt.
const EXIT_CORRUPT: i32 = 65;

/// How long after a disk-failure fault ends its node may take to exit: its storage failed at
/// its first write under the workload, and it exits `failstop::EXIT_GRACE` (3 s) later.
pub const DISK_FAILURE_EXIT_WITHIN: Duration = Duration::from_secs(6);

/// Concurrent writers of an overload burst: far above what the cluster commits, so admission
/// control must refuse most of them.
pub const BURST_WRITERS: usize = 256;

/// How long a stopped burst waits for its writers' requests in flight before cutting them
/// off. Without a bound, a burst during `restart-all` held the fault open until every
/// writer's request to a dead node had timed out (4.6 s instead of 2.8 s on seed 10).
pub const BURST_STOP_GRACE: Duration = Duration::from_millis(250);

/// What a burst's writers did: committed, refused `OVERLOADED`, failed otherwise.
#[derive(Default)]
struct BurstCounts {
    ok: std::sync::atomic::AtomicU64,
    refused: std::sync::atomic::AtomicU64,
    failed: std::sync::atomic::AtomicU64,
}

/// A running burst: writers creating `chaos-burst` instances back to back, coming back 50 ms
/// after a refusal or failure, until stopped.
struct Burst {
    stop: tokio::sync::watch::Sender<bool>,
    writers: tokio::task::JoinSet<()>,
    counts: Arc<BurstCounts>,
}

impl Burst {
    fn start(cluster: &Cluster, pick: usize) -> Burst {
        use std::sync::atomic::Ordering::Relaxed;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let options = Options {
            retry_overloaded: false,
            ..crate::workload::client_options()
        };
        let counts = Arc::new(BurstCounts::default());
        let mut writers = tokio::task::JoinSet::new();
        for w in 0..BURST_WRITERS {
            let client = cluster.client(
                pick + w,
                Identity::new("chaos-burst", ActorKind::Service, &[]),
                options.clone(),
            );
            let stopped = stopped.clone();
            let counts = Arc::clone(&counts);
            writers.spawn(async move {
                while !*stopped.borrow() {
                    let created = client
                        .create(
                            &lockstep_client::request_id(),
                            crate::workflow::BURST_NAME,
                            None,
                            &serde_json::json!({}),
                        )
                        .await;
                    let counter = match created {
                        Ok(_) => &counts.ok,
                        Err(lockstep_client::Error::Overloaded { .. }) => &counts.refused,
                        Err(_) => &counts.failed,
                    };
                    counter.fetch_add(1, Relaxed);
                    if created.is_err() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            });
        }
        Burst {
            stop,
            writers,
            counts,
        }
    }

    /// Stops the writers, cutting off requests still in flight after [`BURST_STOP_GRACE`] (so
    /// the fault heals on time); says what they did.
    async fn stop(mut self) -> String {
        use std::sync::atomic::Ordering::Relaxed;
        let _ = self.stop.send(true);
        let drained = tokio::time::timeout(BURST_STOP_GRACE, async {
            while self.writers.join_next().await.is_some() {}
        })
        .await
        .is_ok();
        let cut_off = if drained { 0 } else { self.writers.len() };
        self.writers.abort_all();
        while self.writers.join_next().await.is_some() {}
        let c = &self.counts;
        format!(
            ", with a burst of {BURST_WRITERS} writers: {} committed, {} refused OVERLOADED, {} failed otherwise, {cut_off} cut off in flight",
            c.ok.load(Relaxed),
            c.refused.load(Relaxed),
            c.failed.load(Relaxed)
        )
    }
}

/// Runs every step at its time (relative to `start`) and heals it after its hold time.
pub async fn run(
    cluster: &mut Cluster,
    schedule: &Schedule,
    start: Instant,
    mut on_step: impl FnMut(&str),
) -> anyhow::Result<Vec<FaultWindow>> {
    let mut windows = Vec::new();
    for step in &schedule.steps {
        tokio::time::sleep_until((start + Duration::from_millis(step.at_ms)).into()).await;
        let leader = cluster.leader(Duration::from_millis(1_500)).await;
        let began = start.elapsed();
        let corrupted = if step.fault == Fault::CorruptStore {
            let f = picks(cluster.len(), step.pick as usize, leader).1[0];
            // A snapshot is a checkpoint: it flushes the follower's memtables into SST files.
            // The request only triggers it, so wait (asking again now and then) until the
            // store holds a file to corrupt; a node just healed from a partition may first
            // have to catch up.
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                cluster
                    .client(f, admin_identity(), Options::default())
                    .snapshot_on(0)
                    .await
                    .with_context(|| {
                        format!("a snapshot on node {} before corrupting it", cluster.id(f))
                    })?;
                for _ in 0..20 {
                    if cluster.has_sst_to_corrupt(f) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                if cluster.has_sst_to_corrupt(f) || Instant::now() >= deadline {
                    break;
                }
            }
            Some(f)
        } else {
            None
        };
        let mut detail = apply(cluster, step, leader)
            .with_context(|| format!("applying {}", step.fault.name()))?;
        let mut removed = None;
        if matches!(
            step.fault,
            Fault::Membership | Fault::RemoveLeader | Fault::ReplaceNode
        ) {
            let f: usize = detail.parse::<usize>().unwrap_or(1) - 1;
            let id = cluster.id(f);
            let killed = if step.fault == Fault::ReplaceNode {
                "killed (kill -9) and "
            } else {
                ""
            };
            detail = match remove(cluster, f).await {
                Ok(()) => {
                    removed = Some(f);
                    format!("node {id} {killed}removed from the voters")
                }
                Err(e) => format!("node {id} {killed}not removed: {e}"),
            };
        }
        if let Some(second) = step.also {
            // The second fault picks its follower from a rotated pick, so that it is not
            // always the first fault's.
            let also = Step {
                fault: second,
                pick: step.pick.rotate_left(17),
                ..step.clone()
            };
            let more = apply(cluster, &also, leader).with_context(|| {
                format!("applying {} with {}", second.name(), step.fault.name())
            })?;
            detail.push_str(&format!(", and at once {}: {more}", second.name()));
        }
        let burst = step
            .burst
            .then(|| Burst::start(cluster, step.pick as usize));
        if burst.is_some() {
            detail.push_str(", under a burst of writes");
        }
        on_step(&format!("{}: {detail}", step.fault.name()));
        tokio::time::sleep(Duration::from_millis(step.hold_ms)).await;
        if let Some(burst) = burst {
            detail.push_str(&burst.stop().await);
        }
        // A node whose disk failed must fail stop: NOT_SERVING, then exit with status 74
        // after its 3 s grace (waited for here, so that the heal restarts it).
        for d in cluster.failing_disks() {
            let id = cluster.id(d);
            match cluster.wait_exit(d, DISK_FAILURE_EXIT_WITHIN).await {
                Some(status) => detail.push_str(&format!("; node {id} exited ({status})")),
                None => {
                    cluster.kill9(d);
                    detail.push_str(&format!(
                        "; node {id} DID NOT EXIT within {DISK_FAILURE_EXIT_WITHIN:?} of the fault's end (killed)"
                    ));
                }
            }
        }
        // A node on a corrupt store must find it and stop (status 65) rather than serve or
        // vote from it; then it is re-seeded: removed, and replaced by a fresh node.
        if let Some(f) = corrupted {
            let id = cluster.id(f);
            match cluster.wait_exit(f, CORRUPT_EXIT_WITHIN).await {
                Some(status) if status.code() == Some(EXIT_CORRUPT) => {
                    detail.push_str(&format!("; node {id} found it and stopped ({status})"))
                }
                other => {
                    cluster.kill9(f);
                    anyhow::bail!(
                        "node {id} did not stop with status {EXIT_CORRUPT} on its corrupt store within {CORRUPT_EXIT_WITHIN:?} of the fault's end ({other:?}); its log:\n{}",
                        cluster.log_tail(f, 20)
                    );
                }
            }
            match remove(cluster, f).await {
                Ok(()) => {
                    removed = Some(f);
                    detail.push_str(", removed from the voters");
                }
                Err(e) => detail.push_str(&format!(", not removed: {e}")),
            }
        }
        if let Some(f) =
            removed.filter(|_| matches!(step.fault, Fault::ReplaceNode | Fault::CorruptStore))
        {
            let id = cluster.replace(f)?;
            detail.push_str(&format!(
                "; a fresh node {id} (empty data directory) took its place"
            ));
        }
        cluster.heal()?;
        if let Some(f) = removed {
            // A node that cannot rejoin is a finding, not a harness error: the run goes on and
            // the convergence checker reports the replica that was left behind.
            match readd(cluster, f).await {
                Ok(()) if matches!(step.fault, Fault::ReplaceNode | Fault::CorruptStore) => {
                    detail.push_str(", added as a learner (caught up) and promoted")
                }
                Ok(()) => detail.push_str(", then added back and promoted"),
                Err(e) => {
                    detail.push_str(&format!("; ADDING IT BACK FAILED: {e:#}"));
                    on_step(&detail);
                }
            }
        }
        windows.push(FaultWindow {
            name: match step.also {
                Some(second) => format!("{}&{}", step.fault.name(), second.name()),
                None => step.fault.name(),
            },
            detail,
            start_us: began.as_micros() as u64,
            end_us: start.elapsed().as_micros() as u64,
        });
    }
    Ok(windows)
}
