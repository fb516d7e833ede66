//! Encoding of internal messages: bincode 1.3 inside the store's versioned envelope.

use serde::Serialize;
use serde::de::DeserializeOwned;

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    lockstep_store::envelope::encode(value)
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, tonic::Status> {
    lockstep_store::envelope::decode(lockstep_store::Family::RaftMeta, b"rpc", bytes)
        .map_err(|e| tonic::Status::invalid_argument(format!("undecodable internal message: {e}")))
}
