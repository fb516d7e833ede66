//! Cluster time: microseconds since the Unix epoch, stamped by the leader at proposal.
//!
//! The engine never reads a clock; it is handed a [`Timestamp`]. Conversions to civil time use
//! `jiff` with a bundled time zone database, so they do not depend on the host.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A text that is not an RFC 3339 timestamp.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not an RFC 3339 timestamp ({reason}); write e.g. 2026-12-01T09:00:00Z")]
pub struct TimestampError {
    pub text: String,
    pub reason: String,
}

/// A point in cluster time, in microseconds since 1970-01-01T00:00:00Z.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The earliest representable instant that jiff also accepts.
    pub const MIN: Timestamp = Timestamp(-377_705_116_800_000_000);
    /// The latest representable instant that jiff also accepts.
    pub const MAX: Timestamp = Timestamp(253_402_207_200_000_000);

    /// Builds a timestamp from microseconds since the epoch, clamped to the supported range.
    pub fn from_micros(micros: i64) -> Timestamp {
        Timestamp(micros.clamp(Self::MIN.0, Self::MAX.0))
    }

    pub fn from_millis(millis: i64) -> Timestamp {
        Timestamp::from_micros(millis.saturating_mul(1000))
    }

    pub fn as_micros(self) -> i64 {
        self.0
    }

    pub fn as_millis(self) -> i64 {
        self.0.div_euclid(1000)
    }

    /// Adds a duration in milliseconds, saturating at the supported range.
    pub fn add_ms(self, ms: u64) -> Timestamp {
        let micros = i64::try_from(ms).unwrap_or(i64::MAX).saturating_mul(1000);
        Timestamp::from_micros(self.0.saturating_add(micros))
    }

    /// Milliseconds from `earlier` to `self`, zero if `earlier` is later.
    pub fn ms_since(self, earlier: Timestamp) -> u64 {
        u64::try_from(self.0.saturating_sub(earlier.0).max(0) / 1000).unwrap_or(0)
    }

    pub fn to_jiff(self) -> jiff::Timestamp {
        jiff::Timestamp::from_microsecond(self.0).expect("Timestamp is kept inside jiff's range")
    }

    pub fn from_jiff(ts: jiff::Timestamp) -> Timestamp {
        Timestamp::from_micros(ts.as_microsecond())
    }

    /// Parses an RFC 3339 timestamp such as `2026-12-01T09:00:00Z`.
    pub fn parse_rfc3339(text: &str) -> Result<Timestamp, TimestampError> {
        text.parse::<jiff::Timestamp>()
            .map(Timestamp::from_jiff)
            .map_err(|e| TimestampError {
                text: text.to_string(),
                reason: e.to_string(),
            })
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_jiff())
    }
}

/// A duration for people, in the units definitions are written in: `250ms`, `30s`, `1m 30s`,
/// `16h`, `2d 4h` (the two largest non-zero units; smaller ones are dropped).
pub fn human_ms(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let units = [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1000, "s"),
    ];
    let mut rest = ms;
    let mut parts = Vec::new();
    for (size, name) in units {
        if rest >= size {
            parts.push(format!("{}{name}", rest / size));
            rest %= size;
        } else if !parts.is_empty() {
            // A zero unit between two non-zero ones still counts as one of the two.
            parts.push(String::new());
        }
        if parts.len() == 2 {
            break;
        }
    }
    parts.retain(|p| !p.is_empty());
    parts.join(" ")
}

/// Serde for a [`Timestamp`] as RFC 3339 text (for reports people read, e.g. `lockstep
/// replay --output json`; stored values keep the compact micros). Use with `#[serde(with)]`.
pub mod rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::Timestamp;

    pub fn serialize<S: Serializer>(at: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(at)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        let text = String::deserialize(d)?;
        Timestamp::parse_rfc3339(&text).map_err(serde::de::Error::custom)
    }

    /// The same for an optional timestamp (`null` when absent).
    pub mod option {
        use serde::{Deserialize, Deserializer, Serializer};

        use super::Timestamp;

        pub fn serialize<S: Serializer>(at: &Option<Timestamp>, s: S) -> Result<S::Ok, S::Error> {
            match at {
                Some(at) => s.collect_str(at),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
            Option::<String>::deserialize(d)?
                .map(|text| Timestamp::parse_rfc3339(&text).map_err(serde::de::Error::custom))
                .transpose()
        }
    }
}

#[cfg(test)]
mod human_tests {
    use super::human_ms;

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(human_ms(0), "0ms");
        assert_eq!(human_ms(250), "250ms");
        assert_eq!(human_ms(30_000), "30s");
        assert_eq!(human_ms(30_999), "30s");
        assert_eq!(human_ms(90_000), "1m 30s");
        assert_eq!(human_ms(57_600_000), "16h");
        assert_eq!(human_ms(3_600_000 + 5_000), "1h");
        assert_eq!(human_ms(2 * 86_400_000 + 4 * 3_600_000 + 60_000), "2d 4h");
    }
}
