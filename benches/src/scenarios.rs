//! The request/response scenarios against Lockstep, as [`Workload`]s for the closed- and
//! open-loop drivers:
//!
//! - `transitions`: create a purchase-order instance, then take `submit` (two audited,
//!   replicated writes, each recorded as one operation).
//! - `reads`: a read mix over a pool of purchase orders, `get` by id and `list`, with a
//!   configurable fraction of writes (creates).
//! - `events`: inbound events routed by (workflow, business key) to a pool of instances, each
//!   taking the transition declared with `on:` (as `portal.document_uploaded` does in
//!   examples/workflows/customer-onboarding.yaml).

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use lockstep_client::{
    Client, Credentials, Error, Identity, InstanceChange, Options, by_id, by_key, pb, request_id,
};
use lockstep_core::ActorKind;

use crate::load::{Outcome, Workload, mix};

/// The purchase-order instance data of every create: the Lockstep "payload" whose size the
/// etcd baseline's values copy.
pub(crate) fn purchase_order_data() -> serde_json::Value {
    order_of("alice")
}

/// A purchase order requested by `actor`, who may then `submit` it.
fn order_of(actor: &str) -> serde_json::Value {
    serde_json::json!({"amount": 100, "requester": actor})
}

/// The credentials the request/response scenarios' clients connect with (`--tls-ca`,
/// `--tls-cert`, `--tls-key`, `--token`), set once at start; none: a development-mode
/// cluster, which takes the actor from the identity headers.
static CREDENTIALS: OnceLock<Credentials> = OnceLock::new();

/// Sets the credentials of every [`bench_client`] made from now on (the first call wins).
pub(crate) fn use_credentials(credentials: Credentials) {
    let _ = CREDENTIALS.set(credentials);
}

/// A client of `identity` with its own HTTP/2 connection to every endpoint. Refusals by
/// admission control or quotas are returned, not retried: a retry would hide them in the
/// latency of the request. Against a secure cluster the credentials name the actor and the
/// identity headers are ignored.
pub(crate) fn bench_client(endpoints: &[String], identity: Identity) -> anyhow::Result<Client> {
    let options = Options {
        retry_overloaded: false,
        ..Options::default()
    };
    let credentials = CREDENTIALS.get().cloned().unwrap_or_default();
    Client::with_credentials(endpoints, Some(identity), options, credentials)
        .map_err(anyhow::Error::msg)
}

/// `count` (at least one) [`bench_client`]s of `identity`.
pub(crate) fn bench_clients(
    endpoints: &[String],
    identity: &Identity,
    count: usize,
) -> anyhow::Result<Vec<Client>> {
    (0..count.max(1))
        .map(|_| bench_client(endpoints, identity.clone()))
        .collect()
}

/// Creates a purchase order requested by `actor`.
async fn create_order(client: &Client, actor: &str) -> Result<InstanceChange, Error> {
    client
        .create(&request_id(), "purchase-order", None, &order_of(actor))
        .await
}

/// Most client connections the bench opens per endpoint.
pub(crate) const CONNECTIONS_MAX: usize = 256;
/// Most distinct actors the bench drives.
pub(crate) const ACTORS_MAX: usize = 10_000;

/// The bench's clients: `connections` of them, each with its own HTTP/2 connection to every
/// endpoint, spread over `actors` requester identities (client `i` acts as actor `i % actors`).
/// One connection carries at most the server's streams per connection (256 in `lockstepd`),
/// so an open-loop run far above capacity through one connection queues in the client and
/// never reaches the server's admission control; several actors spread quota buckets.
#[derive(Clone, Debug)]
pub(crate) struct Clients(Arc<[(Arc<Client>, String)]>);

impl Clients {
    /// `actors` requesters named `<prefix>` (one actor) or `<prefix>-<n>`, over `connections`
    /// clients (at least one per actor), each a [`bench_client`].
    pub(crate) fn new(
        endpoints: &[String],
        prefix: &str,
        actors: usize,
        connections: usize,
    ) -> anyhow::Result<Clients> {
        anyhow::ensure!(
            (1..=ACTORS_MAX).contains(&actors),
            "--actors must be from 1 to {ACTORS_MAX}, not {actors}"
        );
        anyhow::ensure!(
            (1..=CONNECTIONS_MAX).contains(&connections),
            "--connections must be from 1 to {CONNECTIONS_MAX}, not {connections}"
        );
        let clients = (0..connections.max(actors))
            .map(|i| {
                let actor = if actors == 1 {
                    prefix.to_string()
                } else {
                    format!("{prefix}-{}", i % actors)
                };
                let identity = Identity::new(&actor, ActorKind::Human, &["requester"]);
                Ok((Arc::new(bench_client(endpoints, identity)?), actor))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Clients(clients.into()))
    }

    /// The client of unit `sequence` and the actor it acts as.
    pub(crate) fn pick(&self, sequence: u64) -> (&Client, &str) {
        let (client, actor) = &self.0[(sequence % self.0.len() as u64) as usize];
        (client, actor)
    }

    pub(crate) fn first(&self) -> &Arc<Client> {
        &self.0[0].0
    }
}

/// Instances the `reads` and `events` scenarios spread their requests over.
const POOL_INSTANCES: usize = 512;
/// Concurrent creates while filling a pool.
const POOL_FILL_CLIENTS: usize = 16;
/// `reads`: one `list` per this many reads; the others are `get` by id.
const READS_PER_LIST: u64 = 10;
/// `reads`: instances per `list` page.
const LIST_PAGE_SIZE: u32 = 20;
/// Fractions are applied per ten thousand units.
const FRACTION_SCALE: u64 = 10_000;

/// How a request ended, for counting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Ended {
    Ok,
    /// Refused by admission control or a quota (nothing was done): counted apart, with
    /// the hint of when to retry and the code.
    Refused(Option<Duration>, String),
    /// Refused by the engine (its code, e.g. `INVALID_TRANSITION`): an answer, counted by code.
    Declined(&'static str),
    Failed,
}

pub(crate) fn ended<T>(result: &Result<T, Error>) -> Ended {
    match result {
        Ok(_) => Ended::Ok,
        Err(Error::Overloaded {
            retry_after,
            reason,
            ..
        }) => Ended::Refused(*retry_after, reason.clone()),
        Err(Error::Refused(r)) => Ended::Declined(r.code.as_str()),
        Err(_) => Ended::Failed,
    }
}

pub(crate) fn outcome(results: &[(Instant, Instant, Ended)]) -> Outcome {
    let mut o = Outcome::default();
    for (from, to, how) in results {
        match how {
            Ended::Ok => o.latencies.push(*to - *from),
            Ended::Refused(hint, code) => o.refused(*to - *from, *hint, code.clone()),
            Ended::Declined(code) => o.refusal_codes.push((*code).to_string()),
            Ended::Failed => o.errors += 1,
        }
    }
    o
}

/// The outcome of a unit of one request started at `start` and answered now.
pub(crate) fn one<T>(start: Instant, result: &Result<T, Error>) -> Outcome {
    outcome(&[(start, Instant::now(), ended(result))])
}

/// `transitions`: create, then `submit`.
#[derive(Debug)]
pub(crate) struct Transitions {
    pub(crate) clients: Clients,
}

impl Workload for Transitions {
    async fn run_once(&self, sequence: u64, start: Instant) -> Outcome {
        let (client, actor) = self.clients.pick(sequence);
        let created = create_order(client, actor).await;
        let t1 = Instant::now();
        let c = match created {
            Ok(c) => c,
            Err(e) => return outcome(&[(start, t1, ended::<()>(&Err(e)))]),
        };
        let submitted = client
            .transition(
                &request_id(),
                by_id(&c.instance_id),
                "submit",
                &serde_json::Value::Null,
                None,
            )
            .await;
        outcome(&[
            (start, t1, Ended::Ok),
            (t1, Instant::now(), ended(&submitted)),
        ])
    }
}

/// Creates `count` instances of `workflow` (keys `<prefix>-<n>` when `prefix` is given) and
/// returns their ids.
async fn fill_pool(
    client: &Arc<Client>,
    workflow: &'static str,
    data: serde_json::Value,
    key_prefix: Option<&'static str>,
) -> anyhow::Result<Vec<String>> {
    let mut fillers = tokio::task::JoinSet::new();
    for filler in 0..POOL_FILL_CLIENTS {
        let (client, data) = (Arc::clone(client), data.clone());
        fillers.spawn(async move {
            let mut ids = Vec::new();
            for n in (filler..POOL_INSTANCES).step_by(POOL_FILL_CLIENTS) {
                let key = key_prefix.map(|p| format!("{p}-{n}"));
                let c = client
                    .create(&request_id(), workflow, key.as_deref(), &data)
                    .await?;
                ids.push(c.instance_id);
            }
            Ok::<_, Error>(ids)
        });
    }
    let mut ids = Vec::with_capacity(POOL_INSTANCES);
    while let Some(joined) = fillers.join_next().await {
        ids.extend(joined??);
    }
    Ok(ids)
}

/// Creates only: one purchase order per unit (the quota scenario's greedy actor).
#[derive(Debug)]
pub(crate) struct Creates {
    pub(crate) clients: Clients,
}

impl Workload for Creates {
    async fn run_once(&self, sequence: u64, start: Instant) -> Outcome {
        let (client, actor) = self.clients.pick(sequence);
        one(start, &create_order(client, actor).await)
    }
}

/// `reads`: `get` and `list` of purchase orders, with `write_fraction` of units creating one.
#[derive(Debug)]
pub(crate) struct Reads {
    clients: Clients,
    pool: Vec<String>,
    writes_per_scale: u64,
    consistency: pb::ReadConsistency,
}

impl Reads {
    pub(crate) async fn new(
        clients: Clients,
        write_fraction: f64,
        consistency: pb::ReadConsistency,
    ) -> anyhow::Result<Reads> {
        assert!(
            (0.0..=1.0).contains(&write_fraction),
            "checked when parsing"
        );
        let pool = fill_pool(
            clients.first(),
            "purchase-order",
            purchase_order_data(),
            None,
        )
        .await?;
        Ok(Reads {
            clients,
            pool,
            writes_per_scale: (write_fraction * FRACTION_SCALE as f64).round() as u64,
            consistency,
        })
    }
}

impl Workload for Reads {
    async fn run_once(&self, sequence: u64, start: Instant) -> Outcome {
        let choice = mix(sequence);
        let (client, actor) = self.clients.pick(sequence);
        if choice % FRACTION_SCALE < self.writes_per_scale {
            return one(start, &create_order(client, actor).await);
        }
        if (choice >> 32).is_multiple_of(READS_PER_LIST) {
            let listed = client
                .list(pb::ListInstancesRequest {
                    workflow: "purchase-order".into(),
                    page_size: LIST_PAGE_SIZE,
                    consistency: self.consistency as i32,
                    ..Default::default()
                })
                .await;
            return one(start, &listed);
        }
        let id = &self.pool[((choice >> 16) % self.pool.len() as u64) as usize];
        let got = client.get(by_id(id), self.consistency).await;
        one(start, &got)
    }
}

/// The `events` scenario's workflow (also the `events` spec's): every `bench.delivered` event
/// takes `delivered`, which stays in `listening`, so one instance receives any number of events.
pub(crate) const EVENTS_WORKFLOW: &str = include_str!("../specs/workflows/bench-events.yaml");
const EVENTS_KEY_PREFIX: &str = "bench-key";

/// `events`: each unit sends `bench.delivered` to one instance, addressed by its business key.
#[derive(Debug)]
pub(crate) struct Events {
    clients: Vec<Client>,
    keys: usize,
}

impl Events {
    /// Applies the workflow and creates the keyed instances, as a service actor (events come
    /// from systems, and the workflow allows only service actors to deliver them).
    pub(crate) async fn new(endpoints: &[String], connections: usize) -> anyhow::Result<Events> {
        let feed = Identity::new("bench-feed", ActorKind::Service, &[]);
        let client = Arc::new(bench_client(endpoints, feed.clone())?);
        client
            .apply_definition(
                &request_id(),
                EVENTS_WORKFLOW,
                lockstep_client::Provenance::default(),
            )
            .await?;
        // Instances from an earlier run against the same cluster keep their keys: reuse them.
        let exists = client
            .get(
                by_key("bench-events", &format!("{EVENTS_KEY_PREFIX}-0")),
                pb::ReadConsistency::Linearizable,
            )
            .await
            .is_ok();
        if !exists {
            fill_pool(
                &client,
                "bench-events",
                serde_json::json!({}),
                Some(EVENTS_KEY_PREFIX),
            )
            .await?;
        }
        Ok(Events {
            clients: bench_clients(endpoints, &feed, connections)?,
            keys: POOL_INSTANCES,
        })
    }
}

impl Workload for Events {
    async fn run_once(&self, sequence: u64, start: Instant) -> Outcome {
        let key = format!("{EVENTS_KEY_PREFIX}-{}", mix(sequence) % self.keys as u64);
        let client = &self.clients[(sequence % self.clients.len() as u64) as usize];
        let sent = client
            .send_event(
                &request_id(),
                by_key("bench-events", &key),
                "bench.delivered",
                &serde_json::json!({}),
            )
            .await;
        one(start, &sent)
    }
}
