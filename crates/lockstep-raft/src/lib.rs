//! Lockstep's replicated state machine: openraft's log storage and state machine on a
//! [`lockstep_store::Store`], applying the pure engine of `lockstep-core`.
//!
//! - [`log_store::LogStore`]: the Raft log and vote. Appends and votes are synced before they
//!   are acknowledged (DESIGN §3 invariant 5).
//! - [`state_machine::StateMachine`]: applies committed [`Proposal`]s. Each applied batch of
//!   entries is one store batch holding instances, audit records, timers, outbox, dedup entries
//!   and the last applied log id (invariant 2). Business refusals are [`Response`]s, never
//!   storage errors (invariant 6).
//! - [`read`]: queries over the applied state (instances, history, timers, digest).
//! - [`replicated`]: the limits every replica applies identically (changing one is a
//!   log-format change).

pub mod apply;
pub mod format;
pub mod log_store;
pub mod mutation;
pub mod read;
pub mod replicated;
pub mod snapshot_data;
pub mod snapshot_file;
pub mod state_machine;
pub mod trace;
pub mod types;

pub use types::{
    Body, DeliveryProgress, Member, Migrated, MigrationCursor, NodeId, Proposal, Provenance,
    Response, ScheduleOp, Selection, SubscriptionOp, Target, TaskOp, TypeConfig,
};
