//! `lockstepd`: one node of a Lockstep cluster.
//!
//! - [`config`]: TOML file, flags and environment, checked with clear errors.
//! - [`node`]: the Raft node on RocksDB, the write path (stamp cluster time, propose, forward
//!   to the leader) and linearizable reads.
//! - [`network`] and [`raft_service`]: Raft messages between nodes over gRPC.
//! - [`api`]: the public gRPC services, [`status`]: refusals as gRPC statuses.
//! - [`timers`]: the leader-only timer service.

pub mod api;
pub mod config;
pub mod network;
pub mod node;
pub mod raft_service;
pub mod status;
pub mod timers;
pub mod wire;
