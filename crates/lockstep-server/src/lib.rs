//! `lockstepd`: one node of a Lockstep cluster.
//!
//! - [`config`]: TOML file, flags and environment, checked with clear errors.
//! - [`cluster`]: the write path's vocabulary (`WriteError`, forwarding messages, the
//!   leader's wall clock), [`cluster::batcher`] (group commit of concurrent proposals into
//!   one entry, with a lane for the engine's own work) and [`cluster::read_index`]; it
//!   imports nothing above it. [`node`]: the Raft node on RocksDB, the write path (stamp
//!   cluster time, propose, forward to the leader) and linearizable reads; [`admission`]: the
//!   adaptive limit on client work a node admits; [`quota`]: per-actor and per-role rates;
//!   [`format_gate`]: the cluster-version gate for log formats; [`clock`]: the clock offset
//!   guard (a node whose wall clock disagrees with a quorum's does not lead).
//! - [`network`] and [`raft_service`]: Raft messages between nodes over gRPC.
//! - [`api`]: the public gRPC services, [`status`]: refusals as gRPC statuses.
//! - [`leader`]: the leader-only services' trait and driver (a lifecycle: became leader, step,
//!   became follower, and an apply hook); [`timers`]: the timer service; [`dispatch`]: the
//!   outbox dispatcher; [`webhooks`]: webhook delivery (one task per subscription on the leader), with
//!   [`webhook_http`] (its settings, allow-list, signing and one POST). The binary registers them.
//! - [`tasks`]: the worker-facing task queue service.
//! - [`metrics`]: Prometheus metrics and their HTTP endpoint; [`telemetry`]: OpenTelemetry
//!   traces over OTLP (`--otlp-endpoint`), continuing a caller's `traceparent`.
//! - [`trust`]: TLS, peer and client authentication (certificates, JWTs), the layer that
//!   admits public calls; [`policy`]: the cluster policy; [`security_log`]: refused attempts.
//! - [`backup`]: online and offline checkpoints, and restoring one as a new one-node cluster.
//! - [`space`]: the space alarm (client writes refused with `NO_SPACE` before the disk is full).
//! - [`failstop`]: when storage fails, NOT_SERVING, `UNAVAILABLE` answers, and an exit for the
//!   supervisor to restart the node; a store found corrupt stops the node until it is
//!   re-seeded. [`scrub`]: the background scrub that finds latent corruption.

pub mod admission;
pub mod api;
pub mod backup;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod console;
pub mod dispatch;
pub mod failstop;
pub mod format_gate;
pub mod leader;
pub mod leader_hint;
pub mod metrics;
pub mod network;
pub mod node;
pub mod policy;
pub mod polls;
pub mod quota;
pub mod raft_service;
pub mod schedules;
pub mod scrub;
pub mod security_log;
pub mod settings;
pub mod snapshot_policy;
pub mod space;
pub mod status;
pub mod tasks;
pub mod telemetry;
pub mod timers;
pub mod tls_accept;
pub mod trust;
pub mod webhook_http;
pub mod webhooks;
pub mod wire;
