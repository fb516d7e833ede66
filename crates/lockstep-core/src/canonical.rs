//! Canonical encodings and the hashes built on them.
//!
//! The canonical form of a value is its JSON with object keys sorted and no whitespace (serde
//! struct fields become object keys, so they are sorted too). It does not depend on how a YAML
//! file was formatted, only on what it says; its SHA-256 is the definition version, and audit
//! records are chained over it.

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::definition::Definition;

/// The canonical JSON bytes of a value.
pub fn canonical_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Going through `serde_json::Value` sorts every object's keys (its map is a BTreeMap).
    let tree = serde_json::to_value(value).expect("definition and audit types serialize to JSON");
    serde_json::to_vec(&tree).expect("a JSON value serializes")
}

/// SHA-256 in hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The definition version: hex SHA-256 of the canonical form.
pub fn definition_version(definition: &Definition) -> String {
    sha256_hex(&canonical_json(definition))
}

/// The hash of a chained record: SHA-256 over the previous hash and the canonical record.
pub fn chain_hash(prev_hash: &[u8; 32], canonical_record: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(prev_hash);
    hasher.update(canonical_record);
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting_does_not_change_the_version() {
        let a = "workflow: w\nstates: {a: {initial: true, terminal: false}, b: {terminal: true}}\ntransitions: {go: {from: a, to: b, system: true}}\n";
        let b = "# a comment\nworkflow: w\ntransitions:\n  go: { to: b, from: a, system: true }\nstates:\n  b: { terminal: true }\n  a: { initial: true }\n";
        let da: Definition = serde_yaml_ng::from_str(a).unwrap();
        let db: Definition = serde_yaml_ng::from_str(b).unwrap();
        assert_eq!(definition_version(&da), definition_version(&db));
        let dc: Definition = serde_yaml_ng::from_str(&b.replace("to: b", "to: a")).unwrap();
        assert_ne!(definition_version(&da), definition_version(&dc));
    }
}
