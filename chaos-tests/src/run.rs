//! One run: start a cluster behind proxies, apply the workflow, run the workload while the
//! schedule's faults come and go, heal, let timers and tasks settle, read everything back, run
//! the checkers, and leave a results folder when something failed (or when asked).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use lockstep_client::{Client, ClusterStatus, Identity, request_id};
use lockstep_core::ActorKind;
use serde::Serialize;
use tokio::sync::watch;

use crate::checks::{self, AuditEntry, CheckReport, FinalInstance, Observation, Replica};
use crate::cluster::{Cluster, NodeSetup};
use crate::history::{self, FaultWindow, Op, Outcome};
use crate::schedule::Schedule;
use crate::workload::{self, Keys, Recorder, client_options};
use crate::{nemesis, report, workflow};

#[derive(Clone, Debug)]
pub struct RunConfig {
    pub lockstepd: PathBuf,
    /// Run folders go under it: `<results>/seed-<seed>`.
    pub results: PathBuf,
    pub clients: u32,
    pub workers: u32,
    /// Keep the folder (logs, data, history) even when every check passed.
    pub keep: bool,
}

/// What one run did and found.
#[derive(Clone, Debug, Serialize)]
pub struct RunSummary {
    pub seed: u64,
    pub schedule: String,
    pub nodes: usize,
    pub faults: usize,
    pub ops: usize,
    pub ok: usize,
    pub fail: usize,
    pub unknown: usize,
    pub checks: Vec<CheckReport>,
    pub passed: bool,
    /// Set when the run could not be carried out (not a checker finding).
    pub error: Option<String>,
    pub folder: Option<PathBuf>,
    pub seconds: f64,
}

/// Where `lockstepd` is: next to this binary (target/debug).
pub fn default_lockstepd() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("lockstepd")))
        .unwrap_or_else(|| PathBuf::from("lockstepd"))
}

fn admin(cluster: &Cluster) -> Client {
    cluster.client(
        0,
        Identity::new("chaos-admin", ActorKind::Human, &["admin", "operator"]),
        lockstep_client::Options::default(),
    )
}

async fn apply_definition(cluster: &Cluster) -> anyhow::Result<()> {
    cluster
        .leader(Duration::from_secs(30))
        .await
        .context("no leader within 30 s of start")?;
    let client = admin(cluster);
    for source in [workflow::SOURCE, workflow::BURST_SOURCE] {
        let id = request_id();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match client
                .apply_definition(&id, source, lockstep_client::Provenance::default())
                .await
            {
                Ok(_) => break,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                Err(e) => anyhow::bail!("applying the workflow: {e}"),
            }
        }
    }
    Ok(())
}

/// Waits until every node answers with the same applied index and digest.
async fn converge(cluster: &Cluster, within: Duration) -> anyhow::Result<Vec<ClusterStatus>> {
    let deadline = Instant::now() + within;
    let mut last = String::new();
    loop {
        let mut all = Vec::new();
        for i in 0..cluster.len() {
            all.push(cluster.status(i, true).await);
        }
        if let Some(all) = all.into_iter().collect::<Option<Vec<_>>>() {
            let first = &all[0];
            if all
                .iter()
                .all(|s| s.applied_index == first.applied_index && s.digest == first.digest)
            {
                return Ok(all);
            }
            last = all
                .iter()
                .map(|s| {
                    format!(
                        "node {} applied {} digest {:.12}",
                        s.node_id,
                        s.applied_index,
                        s.digest.as_deref().unwrap_or_default()
                    )
                })
                .collect::<Vec<_>>()
                .join("; ");
        }
        if Instant::now() >= deadline {
            anyhow::bail!("replicas did not converge within {within:?}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A create of the burst workflow (no timers, no tasks), retried for up to 30 s; a failure is
/// left to the checkers (the timers checker then sees the end as of the last write).
async fn sentinel(admin: &Client) {
    let id = request_id();
    let deadline = Instant::now() + Duration::from_secs(30);
    while admin
        .create(&id, workflow::BURST_NAME, None, &serde_json::json!({}))
        .await
        .is_err()
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Reads every replica's digest and audit verification (whatever state they are in).
async fn replicas(cluster: &Cluster) -> Vec<Replica> {
    let mut out = Vec::new();
    for i in 0..cluster.len() {
        let probe = cluster.client_for(
            &[cluster.endpoint(i)],
            Identity::new("chaos-admin", ActorKind::Human, &["admin", "auditor"]),
            client_options(),
        );
        let status = cluster.status(i, true).await;
        let verify = probe.verify_audit().await;
        out.push(match (status, verify) {
            (Some(s), Ok(v)) => Replica {
                node: s.node_id,
                applied_index: s.applied_index,
                digest: s.digest.unwrap_or_default(),
                audit_ok: v.ok(),
                audit_reason: v.broken.map(|b| b.reason).unwrap_or_default(),
                head_seq: v.head_seq,
                head_hash: v.head_hash,
            },
            (s, v) => Replica {
                node: i as u64 + 1,
                applied_index: s.as_ref().map_or(0, |s| s.applied_index),
                digest: s.and_then(|s| s.digest).unwrap_or_default(),
                audit_ok: false,
                audit_reason: match v {
                    Ok(_) => "status did not answer".into(),
                    Err(e) => format!("audit verification did not answer: {e}"),
                },
                head_seq: 0,
                head_hash: String::new(),
            },
        });
    }
    out
}

/// Aborts a background task when the run ends, however it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs the schedule of `seed`.
pub async fn run(
    config: &RunConfig,
    schedule: &Schedule,
    mut progress: impl FnMut(&str),
) -> RunSummary {
    let started = Instant::now();
    let folder = config.results.join(format!("seed-{}", schedule.seed));
    let _ = std::fs::remove_dir_all(&folder);
    let mut summary = RunSummary {
        seed: schedule.seed,
        schedule: schedule.describe(),
        nodes: schedule.nodes,
        faults: schedule.steps.len(),
        ops: 0,
        ok: 0,
        fail: 0,
        unknown: 0,
        checks: Vec::new(),
        passed: false,
        error: None,
        folder: None,
        seconds: 0.0,
    };
    let mut ops = Vec::new();
    let mut faults = Vec::new();
    let outcome = run_inner(
        config,
        schedule,
        &folder,
        &mut ops,
        &mut faults,
        &mut progress,
    )
    .await;
    summary.ops = ops.len();
    summary.ok = ops.iter().filter(|o| o.outcome == Outcome::Ok).count();
    summary.fail = ops.iter().filter(|o| o.outcome == Outcome::Fail).count();
    summary.unknown = ops.iter().filter(|o| o.outcome == Outcome::Unknown).count();
    match outcome {
        Ok((reports, obs)) => {
            summary.passed = reports.iter().all(CheckReport::ok);
            summary.checks = reports;
            if !summary.passed || config.keep {
                write_artifacts(&folder, schedule, &summary, &ops, &faults, Some(&obs));
            }
        }
        Err(e) => {
            summary.error = Some(format!("{e:#}"));
            write_artifacts(&folder, schedule, &summary, &ops, &faults, None);
        }
    }
    summary.seconds = started.elapsed().as_secs_f64();
    if summary.passed && !config.keep {
        let _ = std::fs::remove_dir_all(&folder);
    } else {
        // Data directories are large and rarely needed; logs and the history stay.
        if !config.keep {
            for i in 1..=schedule.nodes {
                let _ = std::fs::remove_dir_all(folder.join(format!("node{i}")));
                let _ = std::fs::remove_dir_all(folder.join(format!("disk{i}")));
            }
        }
        summary.folder = Some(folder);
    }
    summary
}

async fn run_inner(
    config: &RunConfig,
    schedule: &Schedule,
    folder: &Path,
    ops_out: &mut Vec<Op>,
    faults_out: &mut Vec<FaultWindow>,
    progress: &mut impl FnMut(&str),
) -> anyhow::Result<(Vec<CheckReport>, Observation)> {
    progress("starting cluster");
    let mut cluster = Cluster::start(
        &config.lockstepd,
        folder,
        schedule.nodes,
        NodeSetup {
            skews: schedule.skews.clone(),
            lossy_disks: schedule.needs_lossy_disks(),
            mutation: schedule.mutation.clone(),
            secure: schedule.secure,
            clock_files: schedule.has_clock_jump(),
        },
    )
    .await?;
    apply_definition(&cluster).await?;

    let start = Instant::now();
    let start_wall_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    let rec = Arc::new(Recorder::new(start));
    let keys = Arc::new(Keys::default());
    let (stop_clients, clients_stopped) = watch::channel(false);
    let (stop_workers, workers_stopped) = watch::channel(false);
    let (feed_until, feed_target) = watch::channel(None);
    let received = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = tokio::task::JoinSet::new();
    for p in 0..config.clients {
        let identity = Identity::new(&format!("client-{p}"), ActorKind::Human, &[]);
        let client = cluster.client(p as usize, identity.clone(), client_options());
        let readers = cluster
            .endpoints()
            .iter()
            .map(|e| {
                cluster.client_for(std::slice::from_ref(e), identity.clone(), client_options())
            })
            .collect();
        tasks.spawn(workload::client(
            p,
            client,
            readers,
            Arc::clone(&rec),
            Arc::clone(&keys),
            schedule.process_seed(p as u64),
            clients_stopped.clone(),
        ));
    }
    for w in 0..config.workers {
        let p = 100 + w;
        let client = cluster.client(
            (w + 1) as usize,
            // One identity for every worker process, as the pods of one worker deployment
            // share a service account: only the lease token fences one from another.
            Identity::new(workload::WORKER_ID, ActorKind::Worker, &[]),
            client_options(),
        );
        tasks.spawn(workload::worker(
            p,
            client,
            Arc::clone(&rec),
            schedule.process_seed(p as u64),
            workers_stopped.clone(),
        ));
    }
    let feed_clients = cluster
        .endpoints()
        .iter()
        .map(|e| {
            cluster.client_for(
                std::slice::from_ref(e),
                Identity::new("chaos-feed", ActorKind::Service, &["auditor"]),
                client_options(),
            )
        })
        .collect();
    let mut consumer = AbortOnDrop(tokio::spawn(workload::consumer(
        feed_clients,
        schedule.process_seed(999),
        Arc::clone(&received),
        feed_target,
    )));

    progress("faults and workload");
    let nemesis = nemesis::run(&mut cluster, schedule, start, |s| progress(s)).await;
    tokio::time::sleep_until((start + Duration::from_millis(schedule.duration_ms)).into()).await;
    cluster.heal()?;
    *faults_out = nemesis?;
    progress("healing, timers settling");
    let _ = stop_clients.send(true);
    // Long enough for the last instances to expire (3 s), their tasks to finish or exhaust
    // and their SLAs (2 s) to breach.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let _ = stop_workers.send(true);
    while tasks.join_next().await.is_some() {}

    progress("converging");
    let admin = admin(&cluster);
    // The sentinel: one write after everything settled moves cluster time to now, so the
    // timers checker can tell that nothing armed is overdue at the end.
    sentinel(&admin).await;
    // Timers armed by the last operations (a lease left behind by a refused late completion
    // expires 2 s later, its retry 300 ms after that) may still fire while the harness reads
    // the cluster back: read again until the replicas, the feed and the final reads all saw
    // the same applied index (at most three times; then the checkers judge what was read).
    let key_list = keys.all().await;
    let mut reads = 0;
    let (statuses, finals_raw, audit, replicas) = loop {
        reads += 1;
        let statuses = converge(&cluster, Duration::from_secs(60)).await;
        let finals_raw = workload::final_reads(&admin, &key_list).await?;
        let feed = workload::read_feed(&admin).await?;
        let audit: Vec<AuditEntry> = feed
            .iter()
            .map(AuditEntry::from_record)
            .collect::<anyhow::Result<_>>()?;
        let replicas = replicas(&cluster).await;
        let still = match &statuses {
            Ok(all) => replicas.iter().all(|r| {
                r.applied_index == all[0].applied_index && r.head_seq == audit.len() as u64
            }),
            Err(_) => true,
        };
        if still || reads == 3 {
            break (statuses, finals_raw, audit, replicas);
        }
        progress("the cluster moved while it was read back; reading again");
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    let _ = feed_until.send(Some(audit.len() as u64));
    let _ = (&mut consumer.0).await;
    let end_cluster_us = match &statuses {
        Ok(all) => all
            .iter()
            .filter_map(|s| s.cluster_time)
            .map(|t| t.as_micros())
            .max()
            .unwrap_or(0),
        Err(_) => audit.iter().map(|r| r.at_us).max().unwrap_or(0),
    };

    let mut finals = BTreeMap::new();
    for (key, inst) in finals_raw {
        if let Some(i) = inst {
            let sla = i.slas.get("work").map(|s| (s.breached, s.consumed_ms));
            let tasks = workload::task_statuses(&i);
            finals.insert(
                key.clone(),
                FinalInstance {
                    key,
                    id: i.id,
                    state: i.state,
                    version: i.version,
                    sla,
                    timers: i
                        .timers
                        .iter()
                        .map(|t| {
                            let due = t.due_at.as_micros();
                            (t.id.clone(), due)
                        })
                        .collect(),
                    tasks,
                },
            );
        }
    }
    let key_of: BTreeMap<String, String> = finals
        .values()
        .map(|f| (f.id.clone(), f.key.clone()))
        .collect();
    let mut ops = rec.ops();
    for op in &mut ops {
        if op.key.is_empty()
            && let Some(k) = op.instance.as_ref().and_then(|i| key_of.get(i))
        {
            op.key = k.clone();
        }
    }
    *ops_out = ops.clone();
    let obs = Observation {
        ops,
        audit,
        finals,
        replicas,
        feed: received.lock().expect("not poisoned").clone(),
        end_cluster_us,
        faults: faults_out.clone(),
        start_wall_us,
        clock_offset_us: schedule.skews.iter().map(|s| s.abs()).max().unwrap_or(0) * 1_000_000,
    };
    let silent = cluster.silent_nodes();
    anyhow::ensure!(
        silent.is_empty(),
        "nodes {:?} sent nothing through their peer proxies: they do not dial peers through --peer-via, so the faults did not apply",
        silent.iter().map(|i| i + 1).collect::<Vec<_>>()
    );
    progress("checking");
    let mut reports = checks::run_all(&obs);
    if let Err(e) = statuses {
        reports[2].problems.insert(0, format!("{e:#}"));
    }
    drop(cluster);
    Ok((reports, obs))
}

fn write_artifacts(
    folder: &Path,
    schedule: &Schedule,
    summary: &RunSummary,
    ops: &[Op],
    faults: &[FaultWindow],
    obs: Option<&Observation>,
) {
    let _ = std::fs::create_dir_all(folder);
    let header = format!(
        "Lockstep chaos run, seed {} ({}).\nReplay: lockstep-chaos run --seed {} --nodes {} --duration {}ms\n{} operations: {} ok, {} fail, {} unknown.{}",
        schedule.seed,
        schedule.describe(),
        schedule.seed,
        schedule.nodes,
        schedule.duration_ms,
        summary.ops,
        summary.ok,
        summary.fail,
        summary.unknown,
        summary
            .error
            .as_ref()
            .map(|e| format!("\nThe run could not be completed: {e}"))
            .unwrap_or_default()
    );
    let _ = std::fs::write(folder.join("history.jsonl"), history::to_jsonl(ops, faults));
    let _ = std::fs::write(
        folder.join("schedule.json"),
        serde_json::to_string_pretty(schedule).unwrap_or_default(),
    );
    let _ = std::fs::write(
        folder.join("timeline.txt"),
        report::timeline(&header, ops, faults, &summary.checks),
    );
    let _ = std::fs::write(
        folder.join("latency.svg"),
        report::latency_svg(
            &format!("seed {}: {}", schedule.seed, schedule.describe()),
            ops,
            faults,
        ),
    );
    if let Some(obs) = obs {
        let _ = std::fs::write(
            folder.join("observation.json"),
            serde_json::to_string(obs).unwrap_or_default(),
        );
    }
    let _ = std::fs::write(
        folder.join("summary.json"),
        serde_json::to_string_pretty(summary).unwrap_or_default(),
    );
}
