//! Durations as written in definitions: `30d`, `16h`, `1h30m`, `2s`, `500ms`.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// How to write a duration, for every error that a text is not one.
const DURATION_HINT: &str = "write a duration such as 30d, 16h, 1h30m, 45s or 500ms";

/// Why a text is not a [`Duration`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration; {}", DURATION_HINT)]
    Empty,
    #[error(
        "`{text}` is not a duration: expected a number at `{at}`; {}",
        DURATION_HINT
    )]
    ExpectedNumber { text: String, at: String },
    #[error("`{text}` is not a duration: number too large")]
    NumberTooLarge { text: String },
    #[error(
        "`{text}` is not a duration: `{number}` has no unit; {}",
        DURATION_HINT
    )]
    NoUnit { text: String, number: u64 },
    #[error("`{text}` is not a duration: unknown unit `{unit}`; {}", DURATION_HINT)]
    UnknownUnit { text: String, unit: String },
    #[error("`{text}` is too long a duration")]
    TooLong { text: String },
}

/// A non-negative duration with millisecond precision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration {
    ms: u64,
}

impl Duration {
    pub const ZERO: Duration = Duration { ms: 0 };

    pub fn from_ms(ms: u64) -> Duration {
        Duration { ms }
    }

    /// `ms` rounded up to whole seconds, for people: `2s` for 1,500 ms, `16h` for 57,600,000
    /// (what the CLI and the console print for waits, budgets and overdue times).
    pub fn for_people(ms: u64) -> Duration {
        Duration::from_ms(ms.div_ceil(1000) * 1000)
    }

    pub fn as_ms(self) -> u64 {
        self.ms
    }

    /// Parses a sequence of `<integer><unit>` parts; units are `w`, `d`, `h`, `m`, `s`, `ms`.
    pub fn parse(text: &str) -> Result<Duration, DurationError> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(DurationError::Empty);
        }
        let bytes = trimmed.as_bytes();
        let mut total: u64 = 0;
        let mut i = 0;
        while i < bytes.len() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            if start == i {
                return Err(DurationError::ExpectedNumber {
                    text: text.to_string(),
                    at: trimmed[start..].to_string(),
                });
            }
            let number: u64 =
                trimmed[start..i]
                    .parse()
                    .map_err(|_| DurationError::NumberTooLarge {
                        text: text.to_string(),
                    })?;
            let unit_start = i;
            while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
                i += 1;
            }
            let unit_ms: u64 = match &trimmed[unit_start..i] {
                "ms" => 1,
                "s" => 1000,
                "m" => 60_000,
                "h" => 3_600_000,
                "d" => 86_400_000,
                "w" => 7 * 86_400_000,
                "" => {
                    return Err(DurationError::NoUnit {
                        text: text.to_string(),
                        number,
                    });
                }
                other => {
                    return Err(DurationError::UnknownUnit {
                        text: text.to_string(),
                        unit: other.to_string(),
                    });
                }
            };
            total = number
                .checked_mul(unit_ms)
                .and_then(|part| total.checked_add(part))
                .ok_or_else(|| DurationError::TooLong {
                    text: text.to_string(),
                })?;
        }
        Ok(Duration { ms: total })
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ms == 0 {
            return write!(f, "0s");
        }
        let mut rest = self.ms;
        for (unit, size) in [
            ("d", 86_400_000u64),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1000),
            ("ms", 1),
        ] {
            if rest >= size {
                write!(f, "{}{unit}", rest / size)?;
                rest %= size;
            }
        }
        Ok(())
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Duration::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: Result<u64, &str>) {
        match (Duration::parse(text), expected) {
            (Ok(d), Ok(ms)) => assert_eq!(d.as_ms(), ms, "{text}"),
            (Err(e), Err(fragment)) => assert!(e.to_string().contains(fragment), "{text}: {e}"),
            (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn for_people_rounds_up_to_whole_seconds() {
        assert_eq!(Duration::for_people(57_600_000).to_string(), "16h");
        assert_eq!(Duration::for_people(1_500).to_string(), "2s");
        assert_eq!(Duration::for_people(0).to_string(), "0s");
    }

    #[test]
    fn parses_units_and_sums() {
        check("30d", Ok(30 * 86_400_000));
        check("1h30m", Ok(5_400_000));
        check("500ms", Ok(500));
        check("2w", Ok(14 * 86_400_000));
        check("10", Err("has no unit"));
        check("5y", Err("unknown unit `y`"));
        check("", Err("empty duration"));
        check("h", Err("expected a number"));
        check("99999999999999999999d", Err("too large"));
    }

    #[test]
    fn display_round_trips() {
        for text in ["1d2h3m4s5ms", "16h", "0s", "90m"] {
            let d = Duration::parse(text).unwrap();
            assert_eq!(Duration::parse(&d.to_string()).unwrap(), d);
        }
    }
}
