//! The versioned envelope around every stored value: a magic byte, a format version, then the
//! bincode 1.3 encoding. A value that does not decode gives a clear error naming the family
//! and key, never a panic.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Error, Family, Result};

const MAGIC: u8 = 0x4c; // 'L'
/// The current encoding version. Bump it, and keep decoding the old one, when a stored type
/// changes incompatibly.
pub const VERSION: u8 = 1;

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![MAGIC, VERSION];
    bincode::serialize_into(&mut out, value)
        .expect("in-memory bincode encoding of our own types cannot fail");
    out
}

pub fn decode<T: DeserializeOwned>(family: Family, key: &[u8], bytes: &[u8]) -> Result<T> {
    let corrupt = |reason: String| Error::Corrupt {
        family,
        key: crate::keys::show(key),
        reason,
    };
    match bytes {
        [MAGIC, VERSION, body @ ..] => {
            bincode::deserialize(body).map_err(|e| corrupt(format!("cannot decode: {e}")))
        }
        [MAGIC, version, ..] => Err(corrupt(format!(
            "envelope version {version} is not supported by this build (it reads version {VERSION}); upgrade lockstepd"
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
    }
}
