//! The versioned envelope around every stored value: a magic byte, a format version, then the
//! bincode 1.3 encoding. A value that does not decode gives a clear error naming the family
//! and key, never a panic.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Error, Family, Result};

const MAGIC: u8 = 0x4c; // 'L'
/// The version values are written with unless their type says otherwise. Version 1 is every
/// layout of commit 4410ace and earlier; a value whose layout changes is written with a higher
/// version ([`encode_as`]) so that an older build refuses it with a clear message instead of
/// misreading it, and this build keeps decoding every older version.
pub const VERSION: u8 = 1;
/// The highest version this build reads. Version 2: log entries that carry format-2 commands
/// (group-commit batches, the log-format gate) and dedup entries with a request digest.
pub const VERSION_MAX: u8 = 2;

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    encode_as(VERSION, value)
}

/// Encodes `value` under envelope `version` (at most [`VERSION_MAX`]).
pub fn encode_as<T: Serialize>(version: u8, value: &T) -> Vec<u8> {
    assert!(
        (1..=VERSION_MAX).contains(&version),
        "envelope version {version} out of range"
    );
    let mut out = vec![MAGIC, version];
    bincode::serialize_into(&mut out, value)
        .expect("in-memory bincode encoding of our own types cannot fail");
    out
}

/// The envelope version of `bytes`, if they are an envelope this build reads.
pub fn version_of(bytes: &[u8]) -> Option<u8> {
    match bytes {
        [MAGIC, version, ..] if (1..=VERSION_MAX).contains(version) => Some(*version),
        _ => None,
    }
}

pub fn decode<T: DeserializeOwned>(family: Family, key: &[u8], bytes: &[u8]) -> Result<T> {
    let corrupt = |reason: String| Error::Corrupt {
        family,
        key: crate::keys::show(key),
        reason,
    };
    match bytes {
        [MAGIC, version, body @ ..] if (1..=VERSION_MAX).contains(version) => {
            bincode::deserialize(body).map_err(|e| corrupt(format!("cannot decode: {e}")))
        }
        [MAGIC, version, ..] => Err(corrupt(format!(
            "envelope version {version} is not supported by this build (it reads versions 1 to {VERSION_MAX}); upgrade lockstepd"
        ))),
        _ => Err(corrupt("not a Lockstep envelope (bad magic byte)".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_reports_corruption() {
        let bytes = encode(&("hello".to_string(), 42u64));
        let back: (String, u64) = decode(Family::Meta, b"k", &bytes).unwrap();
        assert_eq!(back, ("hello".to_string(), 42));
        let mut flipped = bytes.clone();
        flipped.truncate(5);
        let err = decode::<(String, u64)>(Family::Meta, b"k", &flipped)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("corrupt value in meta at key \"k\": cannot decode"),
            "{err}"
        );
        let err = decode::<u64>(Family::Instances, b"\x00\x01", &[0, 1, 2])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "corrupt value in instances at key 0x0001: not a Lockstep envelope (bad magic byte)"
        );
        let err = decode::<u64>(Family::Meta, b"k", &[MAGIC, 9, 0])
            .unwrap_err()
            .to_string();
        assert!(err.contains("envelope version 9 is not supported"), "{err}");
        let v2 = encode_as(2, &7u64);
        assert_eq!(version_of(&v2), Some(2));
        assert_eq!(decode::<u64>(Family::Meta, b"k", &v2).unwrap(), 7);
        assert_eq!(version_of(&encode(&7u64)), Some(1));
    }
}
