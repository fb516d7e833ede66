//! Prometheus metrics: what a node records as it works, and the HTTP endpoint that serves them
//! (`--metrics-listen ADDR`, `GET /metrics`, Prometheus text format 0.0.4).
//!
//! Recorded as things happen: gRPC calls (one tower layer around the whole gRPC server,
//! [`GrpcMetricsLayer`]), entries per state machine apply call (a hook on the state machine),
//! timer lateness and due timers (the timer service). Read at scrape time: Raft's term, leader
//! and indexes, and RocksDB's size estimates per column family.
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `lockstep_grpc_requests_total` | counter | `rpc` (full method path), `code` (gRPC status code name) |
//! | `lockstep_grpc_request_duration_seconds` | histogram | `rpc` |
//! | `lockstep_grpc_requests_in_flight` | gauge | |
//! | `lockstep_raft_term`, `_leader_id`, `_is_leader`, `_last_log_index`, `_committed_index`, `_applied_index`, `_snapshot_index`, `_purged_index`, `_log_bytes_since_snapshot` | gauge | |
//! | `lockstep_raft_apply_batch_entries` | histogram | |
//! | `lockstep_raft_entries_proposed_total`, `lockstep_requests_proposed_total` | counter | |
//! | `lockstep_requests_per_entry` | histogram | |
//! | `lockstep_store_synced_writes_total` (each one WAL fsync), `lockstep_raft_append_entries_sent_total`, `lockstep_read_index_rounds_total`, `lockstep_read_index_reads_total`, `lockstep_read_index_forwards_total`, `lockstep_read_index_forwarded_reads_total` | counter | |
//! | `lockstep_store_sst_files_bytes`, `_live_data_bytes`, `_memtables_bytes`, `_keys_estimate` | gauge | `family` |
//! | `lockstep_timer_lateness_seconds` | histogram | |
//! | `lockstep_timers_due` | gauge | |
//! | `lockstep_timers_fired_total` | counter | |
//! | `lockstep_schedule_tick_lateness_seconds` (leader wall clock at a schedule fire's proposal minus the tick; each acted-on tick, fired or skipped) | histogram | |
//! | `lockstep_task_poll_looks_total` (looks of long polls at their queue: one when a poll arrives, one per wake-up by a task made ready on this node or by the 250 ms recheck) | counter | |
//! | `lockstep_admission_limit`, `lockstep_admission_in_flight` (client writes), `lockstep_admission_usual_latency_seconds` | gauge | |
//! | `lockstep_overload_refusals_total` (refused with OVERLOADED before anything was done) | counter | `what` (writes, reads, polls) |
//! | `lockstep_clock_offset_seconds` (the peer's wall clock minus this node's, measured in the last 10 s) | gauge | `peer` |
//! | `lockstep_clock_within_max_offset` (1: a quorum of voters' clocks agree with this node's, so it may lead) | gauge | |
//! | `lockstep_space_alarm` (1: short of disk space, client writes refused with NO_SPACE), `lockstep_data_dir_free_bytes`, `lockstep_store_bytes` | gauge | |
//! | `lockstep_no_space_refusals_total` | counter | |
//! | `lockstep_store_corrupt` (1: a read or the scrub met a corrupt block; the node stops) | gauge | |
//! | `lockstep_scrub_passes_total`, `lockstep_scrub_bytes_total` (whole passes of the background scrub and the bytes they read back with valid checksums) | counter | |
//! | `lockstep_scrub_last_pass_timestamp_seconds` (Unix time the last whole pass ended; 0: none since start) | gauge | |
//! | `lockstep_webhook_lag_records` (audit records after the subscription's cursor, on the leader) | gauge | `subscription` (at most `SUBSCRIPTIONS_MAX`) |
//! | `lockstep_webhook_delivery_seconds` (one POST, sent to answered) | histogram | `subscription` |
//! | `lockstep_webhook_deliveries_total` | counter | `subscription`, `outcome` (`delivered`, `failed`) |
//! | `lockstep_log_format` (the replicated log format this node applied), `lockstep_log_format_readable` (the highest this build reads; the gate raises the first to the lowest of the members' second) | gauge | |
//! | `lockstep_quota_refusals_total` (refused with QUOTA_EXCEEDED) | counter | `quota` (`actor:ID`, `role:NAME`; at most [`QUOTA_LABELS_MAX`], then `other`) |

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use lockstep_raft::{Member, NodeId};
use lockstep_store::RocksStore;

use crate::admission::AdmissionStats;
use crate::cluster::read_index::RoundStats;

/// What [`Metrics::render`] reads at scrape time from the node it describes (handed in, so
/// that metrics depend on the values, not on the node).
pub struct Scrape<'a> {
    pub raft: openraft::RaftMetrics<NodeId, Member>,
    pub store: &'a RocksStore,
    pub admission: AdmissionStats,
    pub read_index: &'a RoundStats,
    /// A follower's read-index requests to the leader, shared by its concurrent reads.
    pub forwarded_reads: &'a RoundStats,
    pub clock: &'a crate::clock::ClockMonitor,
    pub space: &'a crate::space::SpaceAlarm,
}

impl std::fmt::Debug for Scrape<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scrape")
            .field("raft", &self.raft)
            .field("admission", &self.admission)
            .finish_non_exhaustive()
    }
}

/// Renders the node's metrics as Prometheus text; what `GET /metrics` calls.
pub type Render = Arc<dyn Fn() -> Result<String, std::fmt::Error> + Send + Sync>;

/// Distinct `rpc` label values kept; calls to further paths (e.g. a client probing unknown
/// methods) are counted under `rpc="other"`, so a caller cannot grow the series without bound.
pub const RPC_LABELS_MAX: usize = 128;

/// Distinct `quota` label values kept (quota names come from the policy file).
pub const QUOTA_LABELS_MAX: usize = 256;

type U64Gauge = Gauge<u64, AtomicU64>;

/// Sets a counter to a count kept elsewhere (the store, the network, the read index), copied
/// in at scrape time.
fn copy_counter(counter: &Counter, value: u64) {
    counter
        .inner()
        .store(value, std::sync::atomic::Ordering::Relaxed);
}
type HistogramFamily<S> = Family<S, Histogram, fn() -> Histogram>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcCodeLabels {
    rpc: String,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    rpc: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SubscriptionLabels {
    subscription: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    subscription: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QuotaLabels {
    quota: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WhatLabels {
    what: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FamilyLabels {
    family: &'static str,
}

fn grpc_duration_histogram() -> Histogram {
    // 0.5 ms to ~16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// A node's metrics. Cheap to record into from any task; one per process.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// The `rpc` label values in use (at most [`RPC_LABELS_MAX`]).
    rpc_labels: Mutex<HashSet<String>>,
    grpc_requests: Family<RpcCodeLabels, Counter>,
    grpc_duration: HistogramFamily<RpcLabels>,
    grpc_in_flight: Gauge,
    raft_term: U64Gauge,
    raft_leader_id: U64Gauge,
    raft_is_leader: U64Gauge,
    raft_last_log_index: U64Gauge,
    raft_committed_index: U64Gauge,
    raft_applied_index: U64Gauge,
    raft_snapshot_index: U64Gauge,
    raft_purged_index: U64Gauge,
    raft_log_bytes_since_snapshot: U64Gauge,
    apply_batch_entries: Histogram,
    entries_proposed: Counter,
    requests_proposed: Counter,
    requests_per_entry: Histogram,
    store_synced_writes: Counter,
    append_entries_sent: Counter,
    read_index_rounds: Counter,
    read_index_reads: Counter,
    read_index_forwards: Counter,
    read_index_forwarded_reads: Counter,
    store_sst_files_bytes: Family<FamilyLabels, U64Gauge>,
    store_live_data_bytes: Family<FamilyLabels, U64Gauge>,
    store_memtables_bytes: Family<FamilyLabels, U64Gauge>,
    store_keys_estimate: Family<FamilyLabels, U64Gauge>,
    timer_lateness: Histogram,
    timers_due: U64Gauge,
    timers_fired: Counter,
    schedule_lateness: Histogram,
    poll_looks: Counter,
    admission_limit: U64Gauge,
    admission_in_flight: U64Gauge,
    admission_usual_latency: Gauge<f64, std::sync::atomic::AtomicU64>,
    clock_offset: Family<PeerLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    clock_within: U64Gauge,
    space_alarm: U64Gauge,
    data_dir_free_bytes: U64Gauge,
    store_bytes: U64Gauge,
    no_space_refusals: Counter,
    store_corrupt: U64Gauge,
    scrub_passes: Counter,
    scrub_bytes: Counter,
    scrub_last_pass: U64Gauge,
    overload_refusals: Family<WhatLabels, Counter>,
    quota_refusals: Family<QuotaLabels, Counter>,
    webhook_lag: Family<SubscriptionLabels, U64Gauge>,
    webhook_latency: HistogramFamily<SubscriptionLabels>,
    webhook_deliveries: Family<DeliveryLabels, Counter>,
    log_format: U64Gauge,
    log_format_readable: U64Gauge,
    /// The `quota` label values in use (at most [`QUOTA_LABELS_MAX`]).
    quota_labels: Mutex<HashSet<String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::default(),
            rpc_labels: Mutex::new(HashSet::new()),
            grpc_requests: Family::default(),
            grpc_duration: Family::new_with_constructor(grpc_duration_histogram),
            grpc_in_flight: Gauge::default(),
            raft_term: U64Gauge::default(),
            raft_leader_id: U64Gauge::default(),
            raft_is_leader: U64Gauge::default(),
            raft_last_log_index: U64Gauge::default(),
            raft_committed_index: U64Gauge::default(),
            raft_applied_index: U64Gauge::default(),
            raft_snapshot_index: U64Gauge::default(),
            raft_purged_index: U64Gauge::default(),
            raft_log_bytes_since_snapshot: U64Gauge::default(),
            // 1 to 4096 entries.
            apply_batch_entries: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
            entries_proposed: Counter::default(),
            requests_proposed: Counter::default(),
            // 1 to 512 requests (the batcher's BATCH_REQUESTS_MAX).
            requests_per_entry: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            store_synced_writes: Counter::default(),
            append_entries_sent: Counter::default(),
            read_index_rounds: Counter::default(),
            read_index_reads: Counter::default(),
            read_index_forwards: Counter::default(),
            read_index_forwarded_reads: Counter::default(),
            admission_limit: U64Gauge::default(),
            admission_in_flight: U64Gauge::default(),
            admission_usual_latency: Gauge::default(),
            clock_offset: Family::default(),
            clock_within: U64Gauge::default(),
            space_alarm: U64Gauge::default(),
            data_dir_free_bytes: U64Gauge::default(),
            store_bytes: U64Gauge::default(),
            no_space_refusals: Counter::default(),
            store_corrupt: U64Gauge::default(),
            scrub_passes: Counter::default(),
            scrub_bytes: Counter::default(),
            scrub_last_pass: U64Gauge::default(),
            overload_refusals: Family::default(),
            quota_refusals: Family::default(),
            webhook_lag: Family::default(),
            webhook_latency: Family::new_with_constructor(grpc_duration_histogram),
            webhook_deliveries: Family::default(),
            log_format: U64Gauge::default(),
            log_format_readable: U64Gauge::default(),
            quota_labels: Mutex::new(HashSet::new()),
            store_sst_files_bytes: Family::default(),
            store_live_data_bytes: Family::default(),
            store_memtables_bytes: Family::default(),
            store_keys_estimate: Family::default(),
            // 1 ms to ~65 s.
            timer_lateness: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            timers_due: U64Gauge::default(),
            timers_fired: Counter::default(),
            schedule_lateness: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            poll_looks: Counter::default(),
        };
        let r = &mut m.registry;
        r.register(
            "lockstep_grpc_requests",
            "gRPC calls served, by full method path and gRPC status code (CANCELLED: the call ended before an answer)",
            m.grpc_requests.clone(),
        );
        r.register(
            "lockstep_grpc_request_duration_seconds",
            "Time from receiving a gRPC call to its status, by full method path",
            m.grpc_duration.clone(),
        );
        r.register(
            "lockstep_grpc_requests_in_flight",
            "gRPC calls received and not yet answered",
            m.grpc_in_flight.clone(),
        );
        let gauges = [
            ("lockstep_raft_term", "Current Raft term", &m.raft_term),
            (
                "lockstep_raft_leader_id",
                "Id of the current Raft leader as this node knows it (0: none known)",
                &m.raft_leader_id,
            ),
            (
                "lockstep_raft_is_leader",
                "1 if this node is the Raft leader, else 0",
                &m.raft_is_leader,
            ),
            (
                "lockstep_raft_last_log_index",
                "Index of the last entry appended to this node's Raft log",
                &m.raft_last_log_index,
            ),
            (
                "lockstep_raft_committed_index",
                "Index of the last entry this node knows to be committed",
                &m.raft_committed_index,
            ),
            (
                "lockstep_raft_applied_index",
                "Index of the last entry applied to this node's state machine",
                &m.raft_applied_index,
            ),
            (
                "lockstep_raft_snapshot_index",
                "Last log index included in this node's current snapshot",
                &m.raft_snapshot_index,
            ),
            (
                "lockstep_raft_purged_index",
                "Last log index purged from this node's log",
                &m.raft_purged_index,
            ),
            (
                "lockstep_raft_log_bytes_since_snapshot",
                "Bytes of log this node appended since its last snapshot (since start if none since)",
                &m.raft_log_bytes_since_snapshot,
            ),
        ];
        for (name, help, gauge) in gauges {
            r.register(name, help, gauge.clone());
        }
        r.register(
            "lockstep_raft_apply_batch_entries",
            "Entries per state machine apply call (each call is one RocksDB batch)",
            m.apply_batch_entries.clone(),
        );
        r.register(
            "lockstep_raft_entries_proposed",
            "Raft entries this node proposed (group commit puts many requests in one)",
            m.entries_proposed.clone(),
        );
        r.register(
            "lockstep_requests_proposed",
            "Requests this node proposed, in entries of one or in group-commit batches",
            m.requests_proposed.clone(),
        );
        r.register(
            "lockstep_store_synced_writes",
            "Synced RocksDB writes (each one WAL fsync): log appends, votes, purges",
            m.store_synced_writes.clone(),
        );
        r.register(
            "lockstep_raft_append_entries_sent",
            "AppendEntries RPCs this node sent, heartbeats included",
            m.append_entries_sent.clone(),
        );
        r.register(
            "lockstep_read_index_rounds",
            "Quorum rounds this leader ran for linearizable reads (shared by concurrent reads)",
            m.read_index_rounds.clone(),
        );
        r.register(
            "lockstep_admission_limit",
            "The adaptive limit on client writes admitted and not yet answered on this node",
            m.admission_limit.clone(),
        );
        r.register(
            "lockstep_admission_in_flight",
            "Client writes admitted and not yet answered on this node",
            m.admission_in_flight.clone(),
        );
        r.register(
            "lockstep_admission_usual_latency_seconds",
            "The long-term write latency admission control compares recent latency with",
            m.admission_usual_latency.clone(),
        );
        r.register(
            "lockstep_clock_offset_seconds",
            "Each peer's wall clock minus this node's, measured over the internal service in the last 10 s",
            m.clock_offset.clone(),
        );
        r.register(
            "lockstep_clock_within_max_offset",
            "1 when the clocks of a quorum of voters (this node included) are within max_clock_offset of this node's, so it may lead",
            m.clock_within.clone(),
        );
        r.register(
            "lockstep_space_alarm",
            "1 while this node is short of disk space (under --min-free-space free, or its store over --store-quota) and refuses client writes with NO_SPACE",
            m.space_alarm.clone(),
        );
        r.register(
            "lockstep_data_dir_free_bytes",
            "Bytes free on the file system of this node's data directory, at the last check",
            m.data_dir_free_bytes.clone(),
        );
        r.register(
            "lockstep_store_bytes",
            "Bytes this node's store holds (SST files and memtables), at the last check",
            m.store_bytes.clone(),
        );
        r.register(
            "lockstep_no_space_refusals",
            "Client writes refused with NO_SPACE before anything was proposed",
            m.no_space_refusals.clone(),
        );
        r.register(
            "lockstep_store_corrupt",
            "1 once a read or the background scrub met a corrupt block in this node's store: the node stops serving and must be re-seeded (deploy/README.md)",
            m.store_corrupt.clone(),
        );
        r.register(
            "lockstep_scrub_passes",
            "Whole passes of the background scrub (every key and value of the store read back with block checksums verified, outside the block cache) since start",
            m.scrub_passes.clone(),
        );
        r.register(
            "lockstep_scrub_bytes",
            "Bytes of keys and values the background scrub's whole passes read back since start",
            m.scrub_bytes.clone(),
        );
        r.register(
            "lockstep_scrub_last_pass_timestamp_seconds",
            "Unix time at which the last whole pass of the background scrub ended; 0: none since start",
            m.scrub_last_pass.clone(),
        );
        r.register(
            "lockstep_overload_refusals",
            "Requests refused with OVERLOADED before anything was proposed or waited for",
            m.overload_refusals.clone(),
        );
        r.register(
            "lockstep_log_format",
            "The replicated log format this node has applied (the cluster-version gate raises it once every member reads a newer one)",
            m.log_format.clone(),
        );
        r.register(
            "lockstep_log_format_readable",
            "The highest log format this node's build reads and writes",
            m.log_format_readable.clone(),
        );
        r.register(
            "lockstep_webhook_lag_records",
            "Audit records after a webhook subscription's cursor, as the leader last saw them",
            m.webhook_lag.clone(),
        );
        r.register(
            "lockstep_webhook_delivery_seconds",
            "Time from sending a webhook request to its answer (or failure)",
            m.webhook_latency.clone(),
        );
        r.register(
            "lockstep_webhook_deliveries",
            "Webhook requests by subscription and outcome (delivered: a 2xx answer)",
            m.webhook_deliveries.clone(),
        );
        r.register(
            "lockstep_quota_refusals",
            "Requests refused with QUOTA_EXCEEDED, by the quota of the cluster policy",
            m.quota_refusals.clone(),
        );
        r.register(
            "lockstep_read_index_reads",
            "Linearizable reads (local and forwarded) this leader answered with a read index",
            m.read_index_reads.clone(),
        );
        r.register(
            "lockstep_read_index_forwards",
            "Read-index requests this follower sent the leader (shared by concurrent reads)",
            m.read_index_forwards.clone(),
        );
        r.register(
            "lockstep_read_index_forwarded_reads",
            "Linearizable reads on this follower answered by a forwarded read index",
            m.read_index_forwarded_reads.clone(),
        );
        r.register(
            "lockstep_requests_per_entry",
            "Requests per proposed Raft entry",
            m.requests_per_entry.clone(),
        );
        let families = [
            (
                "lockstep_store_sst_files_bytes",
                "RocksDB total-sst-files-size per column family",
                &m.store_sst_files_bytes,
            ),
            (
                "lockstep_store_live_data_bytes",
                "RocksDB estimate-live-data-size per column family",
                &m.store_live_data_bytes,
            ),
            (
                "lockstep_store_memtables_bytes",
                "RocksDB size-all-mem-tables per column family",
                &m.store_memtables_bytes,
            ),
            (
                "lockstep_store_keys_estimate",
                "RocksDB estimate-num-keys per column family",
                &m.store_keys_estimate,
            ),
        ];
        for (name, help, family) in families {
            r.register(name, help, family.clone());
        }
        r.register(
            "lockstep_timer_lateness_seconds",
            "How late timers were proposed to fire: leader wall clock at proposal minus due time",
            m.timer_lateness.clone(),
        );
        r.register(
            "lockstep_timers_due",
            "Due timers found by the timer service's last scan on this node (at most one proposal's worth; 0 when not leading)",
            m.timers_due.clone(),
        );
        r.register(
            "lockstep_timers_fired",
            "Timers proposed to fire in FireTimers commands that applied",
            m.timers_fired.clone(),
        );
        r.register(
            "lockstep_schedule_tick_lateness_seconds",
            "How late schedule ticks were proposed: leader wall clock at proposal minus the tick",
            m.schedule_lateness.clone(),
        );
        r.register(
            "lockstep_task_poll_looks",
            "Looks of long polls at their queue (on arrival, when an apply made a task ready, or at the recheck)",
            m.poll_looks.clone(),
        );
        m
    }

    /// Records one apply call of `entries` entries.
    pub fn observe_apply(&self, entries: usize) {
        self.apply_batch_entries.observe(entries as f64);
    }

    /// Records the log bytes appended since this node's last snapshot (`snapshot_policy.rs`).
    pub fn observe_log_bytes_since_snapshot(&self, bytes: u64) {
        self.raft_log_bytes_since_snapshot.set(bytes);
    }

    /// Records a group the batcher proposed: `requests` requests in `entries` entries.
    /// A request refused with OVERLOADED: `what` is writes, reads or polls.
    /// A client write refused with NO_SPACE.
    pub fn observe_no_space(&self) {
        self.no_space_refusals.inc();
    }

    /// A long poll looked at its queue for ready tasks.
    pub fn observe_poll_look(&self) {
        self.poll_looks.inc();
    }

    pub fn observe_overloaded(&self, what: &'static str) {
        self.overload_refusals
            .get_or_create(&WhatLabels { what })
            .inc();
    }

    /// A webhook subscription's lag, as the leader's delivery sees it.
    pub fn observe_webhook_lag(&self, subscription: &str, lag: u64) {
        self.webhook_lag
            .get_or_create(&SubscriptionLabels {
                subscription: subscription.to_string(),
            })
            .set(lag);
    }

    /// One webhook request and its outcome.
    pub fn observe_webhook_delivery(&self, subscription: &str, seconds: f64, delivered: bool) {
        let labels = SubscriptionLabels {
            subscription: subscription.to_string(),
        };
        self.webhook_latency.get_or_create(&labels).observe(seconds);
        self.webhook_deliveries
            .get_or_create(&DeliveryLabels {
                subscription: labels.subscription,
                outcome: if delivered { "delivered" } else { "failed" },
            })
            .inc();
    }

    /// Forgets a deleted subscription's series.
    pub fn forget_subscription(&self, subscription: &str) {
        let labels = SubscriptionLabels {
            subscription: subscription.to_string(),
        };
        self.webhook_lag.remove(&labels);
        self.webhook_latency.remove(&labels);
        for outcome in ["delivered", "failed"] {
            self.webhook_deliveries.remove(&DeliveryLabels {
                subscription: labels.subscription.clone(),
                outcome,
            });
        }
    }

    /// A request refused by `quota`.
    pub fn observe_over_quota(&self, quota: &str) {
        let label = {
            let mut labels = self.quota_labels.lock().expect("quota labels lock");
            if labels.contains(quota) || labels.len() < QUOTA_LABELS_MAX {
                labels.insert(quota.to_string());
                quota.to_string()
            } else {
                "other".to_string()
            }
        };
        self.quota_refusals
            .get_or_create(&QuotaLabels { quota: label })
            .inc();
    }

    pub fn observe_proposed(&self, entries: usize, requests: usize) {
        self.entries_proposed.inc_by(entries as u64);
        self.requests_proposed.inc_by(requests as u64);
        let per_entry = requests as f64 / entries.max(1) as f64;
        for _ in 0..entries.min(requests) {
            self.requests_per_entry.observe(per_entry);
        }
    }

    /// Records the replicated log format this node applied, and the highest its build reads.
    pub fn set_log_format(&self, applied: u32, readable: u32) {
        self.log_format.set(u64::from(applied));
        self.log_format_readable.set(u64::from(readable));
    }

    /// Records the due timers a scan of the timer index found.
    pub fn set_timers_due(&self, count: usize) {
        self.timers_due.set(count as u64);
    }

    /// Records timers whose fire applied, each `lateness_micros` late.
    pub fn observe_timers_fired(&self, lateness_micros: impl IntoIterator<Item = i64>) {
        for late in lateness_micros {
            self.timer_lateness.observe(late.max(0) as f64 / 1e6);
            self.timers_fired.inc();
        }
    }

    /// A schedule tick acted on, `late_ms` after it fell due.
    pub fn observe_schedule_tick(&self, late_ms: u64) {
        self.schedule_lateness.observe(late_ms as f64 / 1e3);
    }

    fn rpc_label(&self, path: &str) -> String {
        let mut known = self.rpc_labels.lock().unwrap_or_else(|e| e.into_inner());
        if known.contains(path) {
            path.to_string()
        } else if known.len() < RPC_LABELS_MAX {
            known.insert(path.to_string());
            path.to_string()
        } else {
            "other".to_string()
        }
    }

    fn record_call(&self, rpc: String, code: &'static str, elapsed: std::time::Duration) {
        self.grpc_duration
            .get_or_create(&RpcLabels { rpc: rpc.clone() })
            .observe(elapsed.as_secs_f64());
        self.grpc_requests
            .get_or_create(&RpcCodeLabels { rpc, code })
            .inc();
    }

    /// Sets the scrape-time values (Raft, RocksDB, admission, read index) from `scrape` and
    /// encodes every metric in the Prometheus text format.
    pub fn render(&self, scrape: Scrape<'_>) -> Result<String, std::fmt::Error> {
        {
            let raft = scrape.raft;
            self.raft_term.set(raft.current_term);
            self.raft_leader_id.set(raft.current_leader.unwrap_or(0));
            self.raft_is_leader
                .set(u64::from(raft.state == openraft::ServerState::Leader));
            self.raft_last_log_index
                .set(raft.last_log_index.unwrap_or(0));
            self.raft_applied_index
                .set(raft.last_applied.map(|l| l.index).unwrap_or(0));
            self.raft_snapshot_index
                .set(raft.snapshot.map(|l| l.index).unwrap_or(0));
            self.raft_purged_index
                .set(raft.purged.map(|l| l.index).unwrap_or(0));
        }
        // Counters kept elsewhere, copied in at scrape time.
        copy_counter(&self.store_synced_writes, scrape.store.synced_writes());
        copy_counter(
            &self.append_entries_sent,
            crate::network::APPEND_ENTRIES_SENT.load(std::sync::atomic::Ordering::Relaxed),
        );
        let admission = scrape.admission;
        self.admission_limit.set(admission.limit as u64);
        self.admission_in_flight.set(admission.in_flight as u64);
        self.admission_usual_latency
            .set(admission.usual_latency_seconds);
        // Peers removed from the membership drop out rather than keep their last value.
        self.clock_offset.clear();
        for (peer, offset) in scrape.clock.offsets() {
            self.clock_offset
                .get_or_create(&PeerLabels {
                    peer: peer.to_string(),
                })
                .set(offset);
        }
        self.clock_within.set(u64::from(scrape.clock.within()));
        self.space_alarm.set(u64::from(scrape.space.raised()));
        let space = scrape.space.last();
        self.data_dir_free_bytes.set(space.free_bytes);
        self.store_bytes.set(space.store_bytes);
        self.store_corrupt
            .set(u64::from(scrape.store.corruption().is_some()));
        let scrubs = scrape.store.scrubs();
        copy_counter(
            &self.scrub_passes,
            scrubs.passes.load(std::sync::atomic::Ordering::Relaxed),
        );
        copy_counter(
            &self.scrub_bytes,
            scrubs.bytes.load(std::sync::atomic::Ordering::Relaxed),
        );
        self.scrub_last_pass.set(
            scrubs
                .last_pass_unix_seconds
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        for (stats, rounds, reads) in [
            (
                scrape.read_index,
                &self.read_index_rounds,
                &self.read_index_reads,
            ),
            (
                scrape.forwarded_reads,
                &self.read_index_forwards,
                &self.read_index_forwarded_reads,
            ),
        ] {
            copy_counter(
                rounds,
                stats.rounds.load(std::sync::atomic::Ordering::Relaxed),
            );
            copy_counter(
                reads,
                stats.reads.load(std::sync::atomic::Ordering::Relaxed),
            );
        }
        match lockstep_raft::log_store::committed(scrape.store) {
            Ok(committed) => {
                self.raft_committed_index
                    .set(committed.map(|l| l.index).unwrap_or(0));
            }
            Err(e) => tracing::warn!(error = %e, "metrics: cannot read the committed log id"),
        }
        for (family, sizes) in scrape.store.family_sizes() {
            let labels = FamilyLabels {
                family: family.name(),
            };
            self.store_sst_files_bytes
                .get_or_create(&labels)
                .set(sizes.sst_files_bytes);
            self.store_live_data_bytes
                .get_or_create(&labels)
                .set(sizes.live_data_bytes);
            self.store_memtables_bytes
                .get_or_create(&labels)
                .set(sizes.memtables_bytes);
            self.store_keys_estimate
                .get_or_create(&labels)
                .set(sizes.keys_estimate);
        }
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Serves `GET /metrics` on `listener`, each scrape answered by `render`, until `shutdown`
/// completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    render: Render,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(scrape))
        .with_state(render);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn scrape(
    axum::extract::State(render): axum::extract::State<Render>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match render() {
        Ok(text) => (
            [(
                http::header::CONTENT_TYPE,
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            )],
            text,
        )
            .into_response(),
        Err(e) => (
            http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode metrics: {e}\n"),
        )
            .into_response(),
    }
}

/// The canonical name of a gRPC status code, as in the gRPC specification.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

fn status_of(headers: &http::HeaderMap) -> Option<&'static str> {
    headers
        .get("grpc-status")
        .map(|v| code_name(tonic::Code::from_bytes(v.as_bytes())))
}

/// The tower layer that records every gRPC call the server answers: count by method and
/// status code, latency by method, calls in flight. The status is read where gRPC puts it: the
/// response headers (a trailers-only answer, as errors usually are) or the trailers at the end
/// of the response body.
#[derive(Clone, Debug)]
pub struct GrpcMetricsLayer {
    metrics: Arc<Metrics>,
}

impl GrpcMetricsLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        GrpcMetricsLayer { metrics }
    }
}

impl<S> tower_layer::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetricsService {
            inner,
            metrics: Arc::clone(&self.metrics),
        }
    }
}

#[derive(Clone, Debug)]
pub struct GrpcMetricsService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

/// The future of a tower service that wraps its inner one (the server's layers).
pub(crate) type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for GrpcMetricsService<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: http_body::Body + Unpin + Send + 'static,
{
    type Response = http::Response<MeteredBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let call = Call::start(Arc::clone(&self.metrics), request.uri().path());
        let response = self.inner.call(request);
        Box::pin(async move {
            // Dropped before an answer (client gone, deadline passed): `call` records CANCELLED.
            let mut call = call;
            match response.await {
                Ok(response) => Ok(call.wrap(response)),
                Err(e) => {
                    call.finish("UNKNOWN");
                    Err(e)
                }
            }
        })
    }
}

/// One gRPC call being measured; records itself exactly once.
#[derive(Debug)]
struct Call {
    metrics: Arc<Metrics>,
    rpc: String,
    started: Instant,
    finished: bool,
}

impl Call {
    fn start(metrics: Arc<Metrics>, path: &str) -> Call {
        metrics.grpc_in_flight.inc();
        let rpc = metrics.rpc_label(path);
        Call {
            metrics,
            rpc,
            started: Instant::now(),
            finished: false,
        }
    }

    fn finish(&mut self, code: &'static str) {
        if !self.finished {
            self.finished = true;
            self.metrics.grpc_in_flight.dec();
            self.metrics
                .record_call(std::mem::take(&mut self.rpc), code, self.started.elapsed());
        }
    }

    fn wrap<B: http_body::Body>(
        mut self,
        response: http::Response<B>,
    ) -> http::Response<MeteredBody<B>> {
        if let Some(code) = status_of(response.headers()) {
            self.finish(code);
        } else if response.body().is_end_stream() {
            // No status and nothing more to come: not a gRPC answer.
            self.finish("UNKNOWN");
        }
        let call = (!self.finished).then_some(self);
        response.map(|inner| MeteredBody { inner, call })
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.finish("CANCELLED");
    }
}

/// A response body that records its call's status when the trailers go by.
#[derive(Debug)]
pub struct MeteredBody<B> {
    inner: B,
    call: Option<Call>,
}

impl<B> http_body::Body for MeteredBody<B>
where
    B: http_body::Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Some(call) = this.call.as_mut() {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(code) = frame.trailers_ref().and_then(status_of) {
                        call.finish(code);
                    }
                }
                Poll::Ready(Some(Err(_))) | Poll::Ready(None) => call.finish("UNKNOWN"),
                Poll::Pending => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
