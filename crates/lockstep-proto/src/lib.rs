//! Generated gRPC types and services. Only this crate, the server and the client know the
//! wire format; domain types convert at that edge.

#![allow(missing_debug_implementations, clippy::all)]

pub mod v1 {
    tonic::include_proto!("lockstep.v1");

    pub mod internal {
        tonic::include_proto!("lockstep.v1.internal");
    }
}

/// The names both sides of the wire spell: request metadata (headers) and the keys of the
/// `google.rpc.ErrorInfo` metadata a refusal carries. Defined once, here, for the server,
/// the Rust client and anyone reading the source to write another client.
pub mod names {
    /// Development mode: the caller's actor id, its kind (`human`, `service`, `worker`) and
    /// its roles (comma-separated). A secure cluster takes the actor from credentials.
    pub const ACTOR_HEADER: &str = "x-lockstep-actor";
    pub const ACTOR_KIND_HEADER: &str = "x-lockstep-actor-kind";
    pub const ROLES_HEADER: &str = "x-lockstep-roles";
    /// `1`: a follower answers `UNAVAILABLE` with the leader's address instead of forwarding
    /// the write.
    pub const NO_FORWARD_HEADER: &str = "x-lockstep-no-forward";
    /// Response metadata: the leader's address, where the client should send its next write.
    pub const LEADER_HEADER: &str = "x-lockstep-leader";

    /// The `ErrorInfo` domain of every Lockstep error.
    pub const ERROR_DOMAIN: &str = "lockstep.dev";
    /// `ErrorInfo` metadata: the predicate that refused (`FORBIDDEN`, `GUARD_FALSE`).
    pub const PREDICATE: &str = "predicate";
    /// `ErrorInfo` metadata: when a closed gate opens (RFC 3339).
    pub const EARLIEST_AT: &str = "earliest_at";
    /// `ErrorInfo` metadata of `NOT_LEADER`: the leader's id and address.
    pub const LEADER_ID: &str = "leader_id";
    pub const LEADER_ADDR: &str = "leader_addr";
    /// `ErrorInfo` metadata of `OVERLOADED`, `QUOTA_EXCEEDED`, `NO_SPACE`: how long to wait
    /// before retrying (milliseconds), and the quota exceeded.
    pub const RETRY_AFTER_MS: &str = "retry_after_ms";
    pub const QUOTA: &str = "quota";
}

/// The encoded file descriptor set, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/lockstep_descriptor.bin"));
