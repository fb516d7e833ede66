//! Serde helpers for JSON values inside types that are also stored with bincode.
//!
//! bincode cannot decode self-describing data such as `serde_json::Value`. These helpers keep
//! JSON values native in human-readable formats (JSON, YAML: canonical encodings and APIs) and
//! store them as JSON text in binary formats (bincode: the Raft log and RocksDB).

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub mod value {
    use super::*;

    pub fn serialize<S: Serializer>(v: &serde_json::Value, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            v.serialize(s)
        } else {
            s.serialize_str(&v.to_string())
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<serde_json::Value, D::Error> {
        if d.is_human_readable() {
            serde_json::Value::deserialize(d)
        } else {
            let text = String::deserialize(d)?;
            serde_json::from_str(&text).map_err(D::Error::custom)
        }
    }
}

pub mod option {
    use super::*;

    pub fn serialize<S: Serializer>(
        v: &Option<serde_json::Value>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            v.serialize(s)
        } else {
            v.as_ref().map(|v| v.to_string()).serialize(s)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<serde_json::Value>, D::Error> {
        if d.is_human_readable() {
            Option::<serde_json::Value>::deserialize(d)
        } else {
            match Option::<String>::deserialize(d)? {
                Some(text) => serde_json::from_str(&text)
                    .map(Some)
                    .map_err(D::Error::custom),
                None => Ok(None),
            }
        }
    }
}

pub mod map {
    use std::collections::BTreeMap;

    use super::*;

    pub fn serialize<S: Serializer>(
        v: &BTreeMap<String, serde_json::Value>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            v.serialize(s)
        } else {
            let text: BTreeMap<&String, String> =
                v.iter().map(|(k, v)| (k, v.to_string())).collect();
            text.serialize(s)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, serde_json::Value>, D::Error> {
        if d.is_human_readable() {
            BTreeMap::<String, serde_json::Value>::deserialize(d)
        } else {
            let text = BTreeMap::<String, String>::deserialize(d)?;
            text.into_iter()
                .map(|(k, v)| {
                    serde_json::from_str(&v)
                        .map(|v| (k, v))
                        .map_err(D::Error::custom)
                })
                .collect()
        }
    }
}
