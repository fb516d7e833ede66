//! Business calendars and business-time arithmetic.
//!
//! A calendar is a time zone, working hours per weekday and a list of holidays. Business time
//! is the time inside working hours: adding 16 business hours to Friday 15:00 in a 09:00–17:00
//! calendar lands on Tuesday 15:00. Civil times are resolved with `jiff` against a bundled time
//! zone database, so every replica agrees; on DST days the working hours are the local wall
//! clock hours (a gap shortens the day, a fold lengthens it), as people experience them.

use std::collections::BTreeSet;

use jiff::civil::{Date, Weekday};
use jiff::tz::TimeZone;

use crate::definition::CalendarDef;
use crate::limits::Limits;
use crate::time::Timestamp;

/// Minutes after local midnight; `24 * 60` is the end of the day.
type Minutes = u32;

/// Why a calendar definition does not compile: which part is wrong and how to write it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CalendarError {
    #[error("`{timezone}` is not an IANA time zone; write e.g. Europe/Berlin or America/New_York")]
    UnknownTimeZone { timezone: String },
    #[error("`{day}` is given working hours twice in `weekly`; list each day once")]
    DayTwice { day: &'static str },
    #[error(
        "the calendar has no working hours; add e.g. `mon-fri: \"09:00-17:00\"` under `weekly`"
    )]
    NoWorkingHours,
    #[error("{count} holidays is more than calendar_holidays_max ({max})")]
    TooManyHolidays { count: usize, max: usize },
    #[error("holiday `{text}` is not a date; write YYYY-MM-DD, e.g. 2026-12-24")]
    NotADate { text: String },
    #[error(
        "`{name}` is not a weekday; use mon, tue, wed, thu, fri, sat, sun, a range like mon-fri, or a list like sat,sun"
    )]
    NotAWeekday { name: String },
    #[error("`{range}` runs backwards; write ranges from Monday towards Sunday, e.g. mon-fri")]
    DaysBackwards { range: String },
    #[error("`{range}` is not a range of hours; write e.g. \"09:00-17:00\"")]
    NotAnHourRange { range: String },
    #[error("`{range}` ends before it starts; write the opening time first, e.g. \"09:00-17:00\"")]
    EndsBeforeStart { range: String },
    #[error("working hours `{hours}` overlap; list disjoint ranges")]
    HoursOverlap { hours: String },
    #[error("`{text}` is not a time of day; write HH:MM between 00:00 and 24:00")]
    NotATimeOfDay { text: String },
}

/// A compiled business calendar.
#[derive(Clone, Debug)]
pub struct Calendar {
    tz: TimeZone,
    /// Working intervals for Monday (index 0) through Sunday (index 6), sorted, disjoint.
    weekly: [Vec<(Minutes, Minutes)>; 7],
    holidays: BTreeSet<Date>,
    scan_days_max: u32,
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl Calendar {
    /// Compiles a calendar definition; the error says which part is wrong and how to write it.
    pub fn compile(def: &CalendarDef, limits: &Limits) -> Result<Calendar, CalendarError> {
        let tz = TimeZone::get(&def.timezone).map_err(|_| CalendarError::UnknownTimeZone {
            timezone: def.timezone.clone(),
        })?;
        let mut weekly: [Vec<(Minutes, Minutes)>; 7] = Default::default();
        let mut defined = [false; 7];
        for (days, hours) in &def.weekly {
            let intervals = parse_hours(hours)?;
            for day in parse_days(days)? {
                if defined[day] {
                    return Err(CalendarError::DayTwice { day: DAYS[day] });
                }
                defined[day] = true;
                weekly[day] = intervals.clone();
            }
        }
        if weekly.iter().all(Vec::is_empty) {
            return Err(CalendarError::NoWorkingHours);
        }
        if def.holidays.len() > limits.calendar_holidays_max {
            return Err(CalendarError::TooManyHolidays {
                count: def.holidays.len(),
                max: limits.calendar_holidays_max,
            });
        }
        let mut holidays = BTreeSet::new();
        for text in &def.holidays {
            let date: Date = text
                .parse()
                .map_err(|_| CalendarError::NotADate { text: text.clone() })?;
            holidays.insert(date);
        }
        Ok(Calendar {
            tz,
            weekly,
            holidays,
            scan_days_max: limits.calendar_scan_days_max,
        })
    }

    /// The instant at which `business_ms` of business time have passed since `start`, or
    /// `None` if the calendar has no such time within its scan limit.
    pub fn add(&self, start: Timestamp, business_ms: u64) -> Option<Timestamp> {
        if business_ms == 0 {
            return Some(start);
        }
        // Counted in microseconds, the resolution of cluster time: an interval that does not
        // start on a whole millisecond would otherwise drop a fraction at every close.
        let mut remaining = i64::try_from(business_ms)
            .unwrap_or(i64::MAX)
            .saturating_mul(1000);
        let mut date = self.local_date(start);
        for _ in 0..self.scan_days_max {
            for (open, close) in self.day_intervals(date) {
                if close <= start {
                    continue;
                }
                let from = open.max(start);
                let available = close.as_micros() - from.as_micros();
                if remaining <= available {
                    return Some(Timestamp::from_micros(from.as_micros() + remaining));
                }
                remaining -= available;
            }
            date = date.tomorrow().ok()?;
        }
        None
    }

    /// Business milliseconds in `[from, to)` (a part of a millisecond is not counted).
    pub fn between(&self, from: Timestamp, to: Timestamp) -> u64 {
        self.between_micros(from, to) / 1000
    }

    /// Business microseconds in `[from, to)`, the resolution `add` counts in.
    pub fn between_micros(&self, from: Timestamp, to: Timestamp) -> u64 {
        if to <= from {
            return 0;
        }
        let mut total: i64 = 0;
        let mut date = self.local_date(from);
        let last = self.local_date(to);
        for _ in 0..self.scan_days_max {
            for (open, close) in self.day_intervals(date) {
                let a = open.max(from);
                let b = close.min(to);
                total += (b.as_micros() - a.as_micros()).max(0);
            }
            if date >= last {
                break;
            }
            match date.tomorrow() {
                Ok(next) => date = next,
                Err(_) => break,
            }
        }
        u64::try_from(total).unwrap_or(0)
    }

    /// Whether `at` lies inside working hours.
    pub fn is_working(&self, at: Timestamp) -> bool {
        self.day_intervals(self.local_date(at))
            .iter()
            .any(|&(open, close)| open <= at && at < close)
    }

    /// Whether the local day of `at` has working hours (not a holiday, not a closed weekday).
    pub fn is_open_day(&self, at: Timestamp) -> bool {
        !self.day_intervals(self.local_date(at)).is_empty()
    }

    fn local_date(&self, at: Timestamp) -> Date {
        self.tz.to_datetime(at.to_jiff()).date()
    }

    /// The working intervals of one local date, as absolute instants.
    fn day_intervals(&self, date: Date) -> Vec<(Timestamp, Timestamp)> {
        if self.holidays.contains(&date) {
            return Vec::new();
        }
        let index = date.weekday().to_monday_zero_offset() as usize;
        self.weekly[index]
            .iter()
            .filter_map(|&(open, close)| {
                let a = self.instant(date, open)?;
                let b = self.instant(date, close)?;
                (a < b).then_some((a, b))
            })
            .collect()
    }

    fn instant(&self, date: Date, minutes: Minutes) -> Option<Timestamp> {
        let (date, minutes) = if minutes >= 24 * 60 {
            (date.tomorrow().ok()?, minutes - 24 * 60)
        } else {
            (date, minutes)
        };
        let time = jiff::civil::Time::new((minutes / 60) as i8, (minutes % 60) as i8, 0, 0).ok()?;
        let instant = self.tz.to_timestamp(date.to_datetime(time)).ok()?;
        Some(Timestamp::from_jiff(instant))
    }

    pub fn weekday_name(day: Weekday) -> &'static str {
        DAYS[day.to_monday_zero_offset() as usize]
    }
}

fn parse_days(text: &str) -> Result<Vec<usize>, CalendarError> {
    let lookup = |name: &str| {
        DAYS.iter()
            .position(|d| *d == name.trim())
            .ok_or_else(|| CalendarError::NotAWeekday {
                name: name.to_string(),
            })
    };
    let mut days = Vec::new();
    for part in text.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (lookup(a)?, lookup(b)?);
                if a > b {
                    return Err(CalendarError::DaysBackwards {
                        range: part.to_string(),
                    });
                }
                days.extend(a..=b);
            }
            None => days.push(lookup(part)?),
        }
    }
    Ok(days)
}

fn parse_hours(text: &str) -> Result<Vec<(Minutes, Minutes)>, CalendarError> {
    let mut intervals = Vec::new();
    for part in text.split(',') {
        let (a, b) = part
            .split_once('-')
            .ok_or_else(|| CalendarError::NotAnHourRange {
                range: part.to_string(),
            })?;
        let (a, b) = (parse_clock(a)?, parse_clock(b)?);
        if a >= b {
            return Err(CalendarError::EndsBeforeStart {
                range: part.to_string(),
            });
        }
        intervals.push((a, b));
    }
    intervals.sort_unstable();
    if intervals.windows(2).any(|w| w[0].1 > w[1].0) {
        return Err(CalendarError::HoursOverlap {
            hours: text.to_string(),
        });
    }
    Ok(intervals)
}

fn parse_clock(text: &str) -> Result<Minutes, CalendarError> {
    let text = text.trim();
    let bad = || CalendarError::NotATimeOfDay {
        text: text.to_string(),
    };
    let (h, m) = text.split_once(':').ok_or_else(bad)?;
    let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if m >= 60 || h > 24 || (h == 24 && m != 0) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    pub(crate) fn berlin() -> Calendar {
        let def = CalendarDef {
            timezone: "Europe/Berlin".into(),
            weekly: BTreeMap::from([("mon-fri".to_string(), "09:00-17:00".to_string())]),
            holidays: vec!["2026-12-24".into(), "2026-12-25".into()],
        };
        Calendar::compile(&def, &Limits::default()).unwrap()
    }

    fn at(text: &str) -> Timestamp {
        Timestamp::parse_rfc3339(text).unwrap()
    }

    #[test]
    fn adds_across_a_weekend() {
        // Friday 2026-11-27 15:00 Berlin (14:00Z) + 16h business = Tuesday 15:00 Berlin.
        let end = berlin()
            .add(at("2026-11-27T14:00:00Z"), 16 * 3_600_000)
            .unwrap();
        assert_eq!(end, at("2026-12-01T14:00:00Z"));
    }

    #[test]
    fn keeps_microseconds_across_a_close() {
        // 0.4 ms past the hour on Friday 15:00 Berlin; 4 business hours end on Monday 11:00
        // Berlin, the same 0.4 ms past (not a whole millisecond rounded at Friday's close).
        let start = at("2026-11-27T14:00:00.0004Z");
        let end = berlin().add(start, 4 * 3_600_000).unwrap();
        assert_eq!(end, at("2026-11-30T10:00:00.0004Z"));
        assert_eq!(berlin().between(start, end), 4 * 3_600_000);
        assert_eq!(
            berlin().between(start, at("2026-11-30T10:00:00.0003Z")),
            4 * 3_600_000 - 1,
            "a part of a millisecond is not counted"
        );
    }

    #[test]
    fn skips_holidays() {
        // Wednesday 2026-12-23 16:00 Berlin + 2h: 1h that day, Thu/Fri are holidays... Fri 25th
        // is a holiday, Thu 24th too, so the second hour is Monday 28th 09:00-10:00.
        let end = berlin()
            .add(at("2026-12-23T15:00:00Z"), 2 * 3_600_000)
            .unwrap();
        assert_eq!(end, at("2026-12-28T09:00:00Z"));
        assert_eq!(
            berlin().between(at("2026-12-23T15:00:00Z"), end),
            2 * 3_600_000
        );
    }

    #[test]
    fn refuses_bad_calendars() {
        let mut def = CalendarDef {
            timezone: "Mars/Olympus".into(),
            weekly: BTreeMap::new(),
            holidays: vec![],
        };
        assert!(
            Calendar::compile(&def, &Limits::default())
                .unwrap_err()
                .to_string()
                .contains("IANA")
        );
        def.timezone = "UTC".into();
        assert!(
            Calendar::compile(&def, &Limits::default())
                .unwrap_err()
                .to_string()
                .contains("no working hours")
        );
        def.weekly.insert("mon-fri".into(), "17:00-09:00".into());
        assert!(
            Calendar::compile(&def, &Limits::default())
                .unwrap_err()
                .to_string()
                .contains("ends before")
        );
        def.weekly.insert("mon-fri".into(), "9-17".into());
        assert!(
            Calendar::compile(&def, &Limits::default())
                .unwrap_err()
                .to_string()
                .contains("not a time of day")
        );
        def.weekly.insert("mon-fri".into(), "09:00-17:00".into());
        def.weekly.insert("fri".into(), "09:00-12:00".into());
        assert!(
            Calendar::compile(&def, &Limits::default())
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
    }
}
