//! Generated gRPC types and services. Only this crate, the server and the client know the
//! wire format; domain types convert at that edge.

#![allow(missing_debug_implementations, clippy::all)]

pub mod v1 {
    tonic::include_proto!("lockstep.v1");

    pub mod internal {
        tonic::include_proto!("lockstep.v1.internal");
    }
}

/// The encoded file descriptor set, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/lockstep_descriptor.bin"));
