//! More load than one machine makes: `lockstep-bench agent` processes take a share of each
//! level of a `--spec` run from one controller (`lockstep-bench --spec F --agents A,B`).
//!
//! Per level the controller reads each agent's clock a few times and keeps the reading with
//! the shortest round trip (offset = agent clock - the midpoint of the request's send and
//! receive on the controller's clock, NTP's estimate); it then names one start instant on its
//! own clock, moved by each agent's offset, so that every agent starts its share at the same
//! moment however their clocks differ. Each agent runs its clients (or its share of the
//! rate, and of the task workers) against the cluster and answers, when the window has
//! ended, its HdrHistograms in the V2 serialization format with its counts; the controller
//! merges them into the level's figures. The protocol is gRPC
//! (`benches/proto/agent/agent.proto`), on the agent's `--listen` address, without TLS:
//! run agents on a network you trust.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use lockstep_client::Credentials;

use crate::load::{self, Driven, Measured, StepMeasured, Window, micros_now};
use crate::spec::{self, RunId, Spec, SpecLoad};

#[allow(clippy::all, clippy::pedantic)]
pub(crate) mod pb {
    tonic::include_proto!("lockstep.bench.agent.v1");
}

/// Clock readings per agent per level; the one with the shortest round trip is kept.
const CLOCK_READINGS: usize = 5;
/// How far ahead of now a level starts, beyond the slowest agent's round trip: time for the
/// run requests to arrive and the agents to connect their clients.
const START_LEAD: Duration = Duration::from_secs(1);
/// Most agents one controller drives.
pub(crate) const AGENTS_MAX: usize = 64;
/// Largest message between controller and agent (histograms of many steps, pool ids).
const MESSAGE_BYTES_MAX: usize = 64 << 20;

/// One level's share of a spec run, wherever it runs.
#[derive(Clone, Debug)]
pub(crate) struct Share {
    pub(crate) endpoints: Vec<String>,
    pub(crate) connections: usize,
    /// Closed loop: clients. Open loop: `None`, and `rate` units per second.
    pub(crate) concurrency: Option<usize>,
    pub(crate) rate: f64,
    pub(crate) window: Window,
    pub(crate) run: RunId,
    pub(crate) pools: Vec<Vec<String>>,
}

/// Runs `share` of `spec` from `start` (sleeping until then), with the spec's task workers
/// (this process's share of them), and answers what it measured.
pub(crate) async fn run_share(
    spec: Arc<Spec>,
    share: &Share,
    credentials: &Credentials,
    start: Instant,
    bar: &indicatif::ProgressBar,
    probe: Option<&crate::cost::Probe>,
) -> anyhow::Result<Driven> {
    let load = Arc::new(SpecLoad::new(
        Arc::clone(&spec),
        &share.endpoints,
        credentials,
        share.connections,
        share.pools.clone(),
        share.run.clone(),
    )?);
    tokio::time::sleep_until(start.into()).await;
    let measure_from = Instant::now() + share.window.warmup;
    let end = measure_from + share.window.duration;
    let workers = spec::start_workers(
        &spec,
        &share.endpoints,
        credentials,
        (share.run.index as usize, share.run.of as usize),
        measure_from,
        end,
        &share.run,
    )?;
    let mut driven = match share.concurrency {
        Some(c) => load::closed_measured(load, c, share.window, bar, probe).await,
        None => load::open_measured(load, share.rate, share.window, bar, probe).await,
    };
    spec::join_workers(workers, &mut driven.measured).await;
    Ok(driven)
}

fn serialize(h: &Histogram<u64>) -> Vec<u8> {
    let mut out = Vec::new();
    V2Serializer::new()
        .serialize(h, &mut out)
        .expect("a histogram serializes into memory");
    out
}

fn deserialize(bytes: &[u8], what: &str) -> anyhow::Result<Histogram<u64>> {
    Deserializer::new()
        .deserialize(&mut std::io::Cursor::new(bytes))
        .map_err(|e| {
            anyhow::anyhow!("an agent sent a histogram ({what}) that does not decode: {e:?}")
        })
}

/// What a share measured, as an agent answers it.
fn reply(driven: &Driven, started_late: Duration) -> pb::RunReply {
    let m = &driven.measured;
    pb::RunReply {
        ok: serialize(&m.ok),
        refused: serialize(&m.refused),
        refusals_by_code: m.codes.clone().into_iter().collect(),
        errors: m.errors,
        late: driven.late,
        dropped: driven.dropped,
        steps: m
            .steps
            .iter()
            .map(|(name, s)| pb::StepFigures {
                step: name.clone(),
                ok: serialize(&s.ok),
                refused: s.refused,
                refusals_by_code: s.codes.clone().into_iter().collect(),
                errors: s.errors,
            })
            .collect(),
        started_late_us: started_late.as_micros() as u64,
    }
}

/// The controller's side of [`reply`]: adds an agent's figures into `into`.
fn merge_reply(
    into: &mut Measured,
    late: &mut u64,
    dropped: &mut u64,
    r: &pb::RunReply,
) -> anyhow::Result<()> {
    let mut m = Measured::new();
    m.ok.add(deserialize(&r.ok, "ok")?)
        .context("an agent's histogram has other bounds")?;
    m.refused
        .add(deserialize(&r.refused, "refused")?)
        .context("an agent's histogram has other bounds")?;
    m.codes = r.refusals_by_code.clone().into_iter().collect();
    m.errors = r.errors;
    for s in &r.steps {
        let mut step = StepMeasured::new();
        step.ok
            .add(deserialize(&s.ok, &s.step)?)
            .context("an agent's step histogram has other bounds")?;
        step.refused = s.refused;
        step.codes = s.refusals_by_code.clone().into_iter().collect();
        step.errors = s.errors;
        m.steps.insert(s.step.clone(), step);
    }
    into.merge(&m);
    *late += r.late;
    *dropped += r.dropped;
    Ok(())
}

/// The instant a Unix time in microseconds (on this machine's clock) falls at.
fn instant_at(unix: i64) -> (Instant, Duration) {
    let now = Instant::now();
    let ahead = unix - micros_now();
    if ahead >= 0 {
        (now + Duration::from_micros(ahead as u64), Duration::ZERO)
    } else {
        (now, Duration::from_micros(ahead.unsigned_abs()))
    }
}

/// The agent's service.
struct AgentService {
    credentials: Credentials,
}

#[tonic::async_trait]
impl pb::agent_server::Agent for AgentService {
    async fn clock(
        &self,
        _: tonic::Request<pb::ClockRequest>,
    ) -> Result<tonic::Response<pb::ClockReply>, tonic::Status> {
        Ok(tonic::Response::new(pb::ClockReply {
            unix_micros: micros_now(),
        }))
    }

    async fn run(
        &self,
        request: tonic::Request<pb::RunRequest>,
    ) -> Result<tonic::Response<pb::RunReply>, tonic::Status> {
        let r = request.into_inner();
        let spec = spec::parse(Some(&r.spec_name), &r.spec_yaml).map_err(|problems| {
            tonic::Status::invalid_argument(spec::SpecErrors(problems).to_string())
        })?;
        if r.of == 0 || r.index >= r.of {
            return Err(tonic::Status::invalid_argument(format!(
                "agent index {} of {}: the index must be below the count",
                r.index, r.of
            )));
        }
        let share = Share {
            endpoints: r.endpoints,
            connections: r.connections.max(1) as usize,
            concurrency: (!r.open_loop).then_some(r.concurrency as usize),
            rate: r.rate,
            window: Window {
                warmup: Duration::from_millis(r.warmup_ms),
                duration: Duration::from_millis(r.duration_ms),
            },
            run: RunId {
                run: r.run,
                base: r.counter_base,
                index: u64::from(r.index),
                of: u64::from(r.of),
            },
            pools: r.pools.into_iter().map(|p| p.instance_ids).collect(),
        };
        if share.concurrency == Some(0) || (share.concurrency.is_none() && share.rate <= 0.0) {
            // A share of nothing: the level had fewer clients than agents.
            let (start, _) = instant_at(r.start_unix_micros);
            tokio::time::sleep_until((start + share.window.warmup + share.window.duration).into())
                .await;
            return Ok(tonic::Response::new(reply(
                &Driven::empty(),
                Duration::ZERO,
            )));
        }
        let (start, started_late) = instant_at(r.start_unix_micros);
        note(&format!(
            "run {} ({} of {}): {} from {:?}",
            share.run.run,
            share.run.index + 1,
            share.run.of,
            share
                .concurrency
                .map_or(format!("{}/s", share.rate), |c| format!("{c} client(s)")),
            share.window.warmup + share.window.duration
        ));
        let bar = indicatif::ProgressBar::hidden();
        let driven = run_share(Arc::new(spec), &share, &self.credentials, start, &bar, None)
            .await
            .map_err(|e| tonic::Status::failed_precondition(e.to_string()))?;
        Ok(tonic::Response::new(reply(&driven, started_late)))
    }
}

fn note(text: &str) {
    eprintln!("lockstep-bench agent: {text}");
}

/// `lockstep-bench agent`: serves controllers on `listen` until killed.
pub(crate) async fn serve(listen: SocketAddr, credentials: Credentials) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the agent's address {listen}"))?;
    note(&format!("listening on {}", listener.local_addr()?));
    tonic::transport::Server::builder()
        .add_service(
            pb::agent_server::AgentServer::new(AgentService { credentials })
                .max_decoding_message_size(MESSAGE_BYTES_MAX)
                .max_encoding_message_size(MESSAGE_BYTES_MAX),
        )
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
        .await
        .context("serving the agent protocol")
}

/// One agent as the controller sees it.
#[derive(Clone, Debug)]
pub(crate) struct Remote {
    pub(crate) address: String,
    client: pb::agent_client::AgentClient<tonic::transport::Channel>,
}

/// What the controller measured of one agent in one level.
#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct AgentFigures {
    pub(crate) address: String,
    /// The agent's clock minus the controller's, estimated (µs).
    pub(crate) clock_offset_us: i64,
    /// The round trip of the clock reading the offset came from (µs): the estimate's error
    /// is at most half of it.
    pub(crate) clock_rtt_us: u64,
    /// How much later than asked the agent started (µs).
    pub(crate) started_late_us: u64,
    pub(crate) operations: u64,
}

/// Connects to every agent (`host:port`).
pub(crate) async fn connect(addresses: &[String]) -> anyhow::Result<Vec<Remote>> {
    let mut remotes = Vec::new();
    for a in addresses {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{a}"))
            .with_context(|| format!("`{a}` is not an agent address: give host:port"))?
            .connect_timeout(Duration::from_secs(5));
        let channel = endpoint.connect().await.with_context(|| {
            format!(
                "cannot reach the agent at {a}: start `lockstep-bench agent --listen {a}` there"
            )
        })?;
        remotes.push(Remote {
            address: a.clone(),
            client: pb::agent_client::AgentClient::new(channel)
                .max_decoding_message_size(MESSAGE_BYTES_MAX)
                .max_encoding_message_size(MESSAGE_BYTES_MAX),
        });
    }
    Ok(remotes)
}

/// The agent's clock offset and the round trip it was read in (µs).
async fn clock(remote: &Remote) -> anyhow::Result<(i64, u64)> {
    let mut best: Option<(i64, u64)> = None;
    for _ in 0..CLOCK_READINGS {
        let sent = micros_now();
        let t0 = Instant::now();
        let reading = remote
            .client
            .clone()
            .clock(pb::ClockRequest {})
            .await
            .with_context(|| format!("reading the clock of the agent at {}", remote.address))?
            .into_inner()
            .unix_micros;
        let rtt = t0.elapsed().as_micros() as u64;
        let midpoint = sent + (rtt / 2) as i64;
        if best.is_none_or(|(_, r)| rtt < r) {
            best = Some((reading - midpoint, rtt));
        }
    }
    Ok(best.expect("at least one reading"))
}

/// Splits `total` over `parts`: the first `total % parts` get one more.
pub(crate) fn split(total: usize, parts: usize, index: usize) -> usize {
    total / parts + usize::from(index < total % parts)
}

/// Runs one level over the agents: each gets its share of the clients (or of the rate), all
/// start at the same instant, and their figures merge into one.
pub(crate) async fn run_level(
    remotes: &[Remote],
    spec_text: &str,
    spec_name: &str,
    share: &Share,
    probe: Option<&crate::cost::Probe>,
) -> anyhow::Result<(Driven, Vec<AgentFigures>)> {
    let mut clocks = Vec::new();
    for r in remotes {
        clocks.push(clock(r).await?);
    }
    let slowest = clocks.iter().map(|(_, rtt)| *rtt).max().unwrap_or(0);
    let start = micros_now() + (START_LEAD.as_micros() as i64) + 2 * slowest as i64;
    let of = remotes.len();
    // The nodes' counters, sampled here around the agents' common window.
    let sampler = probe.cloned().map(|p| {
        let (at, _) = instant_at(start);
        let (from, to) = (
            at + share.window.warmup,
            at + share.window.warmup + share.window.duration,
        );
        tokio::spawn(async move {
            tokio::time::sleep_until(from.into()).await;
            let before = crate::cost::Sample::take(&p).await;
            tokio::time::sleep_until(to.into()).await;
            (before, crate::cost::Sample::take(&p).await)
        })
    });
    let mut calls = tokio::task::JoinSet::new();
    for (i, (remote, (offset, _))) in remotes.iter().zip(&clocks).enumerate() {
        let request = pb::RunRequest {
            spec_yaml: spec_text.to_string(),
            spec_name: spec_name.to_string(),
            endpoints: share.endpoints.clone(),
            connections: split(share.connections, of, i).max(1) as u32,
            open_loop: share.concurrency.is_none(),
            concurrency: share.concurrency.map_or(0, |c| split(c, of, i) as u32),
            rate: share.rate / of as f64,
            warmup_ms: share.window.warmup.as_millis() as u64,
            duration_ms: share.window.duration.as_millis() as u64,
            start_unix_micros: start + offset,
            run: share.run.run.clone(),
            counter_base: share.run.base,
            index: i as u32,
            of: of as u32,
            pools: share
                .pools
                .iter()
                .map(|ids| pb::Pool {
                    instance_ids: ids.clone(),
                })
                .collect(),
        };
        let mut client = remote.client.clone();
        let address = remote.address.clone();
        calls.spawn(async move {
            let answer = client.run(request).await;
            (i, address, answer)
        });
    }
    let mut replies = vec![None; of];
    while let Some(joined) = calls.join_next().await {
        let (i, address, answer) = joined?;
        let r = answer
            .map_err(|s| {
                anyhow::anyhow!("the agent at {address} failed its share: {}", s.message())
            })?
            .into_inner();
        replies[i] = Some(r);
    }
    let samples = match sampler {
        Some(s) => Some(s.await?),
        None => None,
    };
    let mut driven = Driven {
        samples,
        ..Driven::empty()
    };
    let mut figures = Vec::new();
    for (i, r) in replies.into_iter().enumerate() {
        let r = r.expect("every agent answered");
        merge_reply(
            &mut driven.measured,
            &mut driven.late,
            &mut driven.dropped,
            &r,
        )?;
        let ops = deserialize(&r.ok, "ok")?.len();
        figures.push(AgentFigures {
            address: remotes[i].address.clone(),
            clock_offset_us: clocks[i].0,
            clock_rtt_us: clocks[i].1,
            started_late_us: r.started_late_us,
            operations: ops,
        });
    }
    Ok((driven, figures))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up() {
        for (total, parts) in [(1, 3), (16, 3), (256, 7), (5, 5)] {
            let sum: usize = (0..parts).map(|i| split(total, parts, i)).sum();
            assert_eq!(sum, total);
        }
    }

    #[test]
    fn replies_merge_into_one_histogram() {
        let mut a = Measured::new();
        let mut b = Measured::new();
        for us in 1..=1000u64 {
            a.ok.record(us).unwrap();
            b.ok.record(us + 1000).unwrap();
        }
        b.codes.insert("OVERLOADED".into(), 3);
        let mut step = StepMeasured::new();
        step.ok.record(500).unwrap();
        b.steps.insert("order".into(), step);
        let driven = |m: Measured| Driven {
            measured: m,
            late: 1,
            dropped: 2,
            samples: None,
        };
        let (ra, rb) = (
            reply(&driven(a), Duration::ZERO),
            reply(&driven(b), Duration::ZERO),
        );
        let mut merged = Measured::new();
        let (mut late, mut dropped) = (0, 0);
        merge_reply(&mut merged, &mut late, &mut dropped, &ra).unwrap();
        merge_reply(&mut merged, &mut late, &mut dropped, &rb).unwrap();
        assert_eq!(merged.ok.len(), 2000);
        // The median of the merged latencies is the boundary between the two agents'.
        let p50 = merged.ok.value_at_quantile(0.5);
        assert!((995..=1005).contains(&p50), "{p50}");
        assert_eq!(merged.codes["OVERLOADED"], 3);
        assert_eq!(merged.steps["order"].ok.len(), 1);
        assert_eq!((late, dropped), (2, 4));
    }

    #[test]
    fn a_start_in_the_past_starts_now_and_says_how_late() {
        let (_, late) = instant_at(micros_now() - 250_000);
        assert!(late >= Duration::from_millis(249), "{late:?}");
        let (at, late) = instant_at(micros_now() + 500_000);
        assert_eq!(late, Duration::ZERO);
        assert!(at > Instant::now() + Duration::from_millis(400));
    }
}
