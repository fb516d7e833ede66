//! Schedules (DESIGN §4, "Time"): recurring instance creation, decided the same way on every
//! replica.
//!
//! A schedule is a replicated object: a cron expression read in an IANA time zone, an optional
//! business calendar whose closed days are skipped, the workflow to create, a data template
//! and a business-key template rendered per tick, an overlap policy and a catch-up policy.
//! It holds its next tick; the leader proposes a fire for that tick once it is due, and apply
//! fires it (or skips it, by the policies) and moves to the following tick in the same write,
//! so a tick is acted on once whatever the leader does (a second proposal for the same tick
//! finds the schedule past it and changes nothing).
//!
//! Ticks are local times: a local time that does not exist (the clock springs forward) fires
//! at the first valid instant after the gap; one that occurs twice (the clock falls back)
//! fires once, at its first occurrence. Cron matching is the `croner` crate's, over jiff's
//! bundled time zone database, so every replica of one build computes the same instants.

use std::cmp::Ordering;

use croner::Cron;
use croner::errors::CronError;
use croner::parser::{CronParser, Seconds, Year};
use croner::time::{CivilDate, CivilDateTime, CivilTime, CronDateTime, Resolution, Weekday};
use jiff::civil::DateTime;
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::{SignedDuration, ZonedDateTime};
use serde::{Deserialize, Serialize};

use crate::audit::{AuditKind, AuditRecord};
use crate::engine::Actor;
use crate::subscription::Paused;
use crate::time::Timestamp;

/// Most schedules a cluster holds.
pub const SCHEDULES_MAX: usize = 256;
/// Longest cron expression, in bytes.
pub const CRON_TEXT_MAX: usize = 256;
/// Largest data template (as JSON) plus key template, in bytes.
pub const TEMPLATE_BYTES_MAX: usize = 16 * 1024;
/// Most missed ticks `catch_up: all` fires after downtime (the most recent ones).
pub const CATCH_UP_MAX: u32 = 100;
/// Closed days of the calendar (and repeated hours of a fall back) a search steps over
/// before it gives up: a schedule whose calendar closes every day has no next tick.
pub const TICK_SEARCH_MAX: u32 = 1000;
/// Missed ticks a catch-up counts one by one; beyond it the count says "at least".
pub const MISSED_COUNT_MAX: u64 = 1000;
/// How late a tick may fire and still be on time, unless the schedule says otherwise.
pub const CATCH_UP_WINDOW_DEFAULT_MS: u64 = 60_000;
/// The longest catch-up window a schedule may set.
pub const CATCH_UP_WINDOW_MAX_MS: u64 = 7 * 24 * 3_600_000;
/// The actor a scheduled instance is created by.
pub const SCHEDULE_ACTOR: &str = "schedule";

/// What a tick does while the instance of the previous tick is still open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// The tick is skipped.
    #[default]
    Skip,
    /// A new instance is created beside it.
    Allow,
}

/// What a schedule does with ticks that fell due while no leader could fire them (more than
/// its catch-up window late).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// Missed ticks are skipped; the schedule goes on with the first tick that is on time.
    Skip,
    /// The most recent missed tick fires once; older ones are skipped.
    #[default]
    One,
    /// Every missed tick fires, oldest first, at most `catch_up_max` of them (the most
    /// recent); older ones are skipped.
    All,
}

impl Overlap {
    pub fn name(self) -> &'static str {
        match self {
            Overlap::Skip => "skip",
            Overlap::Allow => "allow",
        }
    }

    pub fn parse(text: &str) -> Result<Overlap, String> {
        match text {
            "" | "skip" => Ok(Overlap::Skip),
            "allow" => Ok(Overlap::Allow),
            other => Err(format!(
                "overlap `{other}` is not a policy; write `skip` (no new instance while the previous one is open) or `allow`"
            )),
        }
    }
}

impl CatchUp {
    pub fn name(self) -> &'static str {
        match self {
            CatchUp::Skip => "skip",
            CatchUp::One => "one",
            CatchUp::All => "all",
        }
    }

    pub fn parse(text: &str) -> Result<CatchUp, String> {
        match text {
            "skip" => Ok(CatchUp::Skip),
            "" | "one" => Ok(CatchUp::One),
            "all" => Ok(CatchUp::All),
            other => Err(format!(
                "catch-up `{other}` is not a policy; write `skip` (missed ticks are dropped), `one` (the latest missed tick fires) or `all` (each fires, at most catch_up_max)"
            )),
        }
    }
}

/// A schedule as an operator declares it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScheduleSpec {
    pub name: String,
    /// Five fields (minute hour day-of-month month day-of-week), six with seconds first, or
    /// seven with a year last; `@daily` and the other nicknames too.
    pub cron: String,
    /// The IANA time zone the expression is read in, e.g. `Europe/Berlin`.
    pub time_zone: String,
    /// A business calendar of the workflow's latest definition: ticks on its closed days
    /// (no working hours, or a holiday) are skipped.
    pub calendar: Option<String>,
    pub workflow: String,
    /// The new instance's data; strings may hold placeholders ([`PLACEHOLDERS`]).
    #[serde(with = "crate::json_field::value")]
    pub data: serde_json::Value,
    /// The business key template (placeholders as in `data`), e.g. `review-{year}-Q{quarter}`.
    pub key: Option<String>,
    pub overlap: Overlap,
    pub catch_up: CatchUp,
    /// For `catch_up: all`: the most missed ticks fired (1 to [`CATCH_UP_MAX`]).
    pub catch_up_max: u32,
    /// How late a tick may be and still fire as on time.
    pub catch_up_window_ms: u64,
}

/// One tick: the instant and the local time it stands for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tick {
    pub at: Timestamp,
    /// The local date and time it fires at (`2026-03-08T03:00:00`: a daily 02:30 on the day
    /// the clock sprang from 02:00 to 03:00).
    pub local: String,
}

/// What a schedule did with a tick.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TickOutcome {
    Created {
        instance_id: String,
    },
    /// The create was refused (the engine's code and message); the tick is spent.
    Refused {
        code: String,
        message: String,
    },
    /// The tick did not fire, and why (overlap, catch-up).
    Skipped {
        reason: String,
    },
}

/// The last tick a schedule acted on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastTick {
    pub tick: Tick,
    /// The cluster time it was acted on.
    pub acted_at: Timestamp,
    pub outcome: TickOutcome,
}

/// A schedule as replicated.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub spec: ScheduleSpec,
    /// The next tick to act on; `None` once the expression matches no later time (or the
    /// calendar closes every day the search looked at).
    pub next: Option<Tick>,
    pub last: Option<LastTick>,
    /// The instance the last fired tick created (for the overlap policy).
    pub last_instance: Option<String>,
    pub paused: Option<Paused>,
    pub fired: u64,
    pub skipped: u64,
    pub refused: u64,
    pub created_by: String,
    pub created_at: Timestamp,
}

/// The placeholders a template may use, each `{name}`; `{{` and `}}` are literal braces.
pub const PLACEHOLDERS: [&str; 10] = [
    "tick", "tick_utc", "date", "time", "year", "month", "day", "quarter", "week", "schedule",
];

/// A compiled cron expression in its time zone.
#[derive(Clone, Debug)]
pub struct Compiled {
    cron: Cron,
    tz: TimeZone,
}

/// Checks a schedule's name: the rule of subscription names (1 to 64 bytes of `a-z`, `0-9`,
/// `-`, `_`, `.`).
pub fn check_name(name: &str) -> Result<(), String> {
    crate::subscription::check_name("schedule name", name)
}

impl ScheduleSpec {
    /// Every check that needs nothing but the spec: name, expression, zone, templates, bounds.
    /// (That the workflow and calendar exist is apply's check.)
    pub fn check(&self) -> Result<Compiled, String> {
        check_name(&self.name)?;
        if self.workflow.is_empty() {
            return Err("a schedule needs the workflow it creates instances of".into());
        }
        let compiled = Compiled::new(&self.cron, &self.time_zone)?;
        if !self.data.is_object() {
            return Err(format!(
                "the data template must be a JSON object, not `{}`",
                self.data
            ));
        }
        let bytes = self.data.to_string().len() + self.key.as_ref().map_or(0, String::len);
        if bytes > TEMPLATE_BYTES_MAX {
            return Err(format!(
                "the data and key templates take {bytes} bytes, more than TEMPLATE_BYTES_MAX ({TEMPLATE_BYTES_MAX})"
            ));
        }
        check_value(&self.data)?;
        if let Some(key) = &self.key {
            if key.is_empty() {
                return Err(
                    "the key template is empty; leave it out for instances without a business key"
                        .into(),
                );
            }
            check_template(key).map_err(|e| format!("key template: {e}"))?;
        }
        if self.catch_up_max == 0 || self.catch_up_max > CATCH_UP_MAX {
            return Err(format!(
                "catch_up_max {} must be 1 to CATCH_UP_MAX ({CATCH_UP_MAX})",
                self.catch_up_max
            ));
        }
        if self.catch_up_window_ms == 0 || self.catch_up_window_ms > CATCH_UP_WINDOW_MAX_MS {
            return Err(format!(
                "the catch-up window must be more than 0 and at most {}",
                crate::time::human_ms(CATCH_UP_WINDOW_MAX_MS)
            ));
        }
        Ok(compiled)
    }
}

impl Compiled {
    /// Compiles `cron` in `time_zone`; the error names what is wrong and how to write it.
    pub fn new(cron: &str, time_zone: &str) -> Result<Compiled, String> {
        if cron.len() > CRON_TEXT_MAX {
            return Err(format!(
                "the cron expression is {} bytes, more than CRON_TEXT_MAX ({CRON_TEXT_MAX})",
                cron.len()
            ));
        }
        let parsed = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Optional)
            .build()
            .parse(cron.trim())
            .map_err(|e| {
                format!(
                    "`{cron}` is not a cron expression ({e}); write five fields, minute hour day-of-month month day-of-week (e.g. `0 9 * * MON-FRI`), six with seconds first, or a nickname such as `@daily`"
                )
            })?;
        let tz = TimeZone::get(time_zone).map_err(|_| {
            format!(
                "`{time_zone}` is not an IANA time zone; write one such as `Europe/Berlin`, `America/New_York` or `UTC`"
            )
        })?;
        Ok(Compiled { cron: parsed, tz })
    }

    /// The expression in words (`At 09:00 on Monday`), for people.
    pub fn describe(&self) -> String {
        self.cron.describe()
    }

    /// The first tick strictly after `after` whose local time is later than `last_local` (so
    /// a local time a fall back repeats fires once) and on a day `open` accepts; `None` if the
    /// expression matches no later time, or every candidate within [`TICK_SEARCH_MAX`] falls
    /// on a closed day.
    pub fn next_after(
        &self,
        after: Timestamp,
        last_local: Option<&str>,
        open: &dyn Fn(Timestamp) -> bool,
    ) -> Option<Tick> {
        let last: Option<DateTime> = last_local.and_then(|l| l.parse().ok());
        let mut from = Local(after.to_jiff().to_zoned_datetime(self.tz.clone()));
        for _ in 0..TICK_SEARCH_MAX {
            let Local(found) = self.cron.find_next_occurrence(&from, false).ok()?;
            let local = found.datetime();
            if let Some(l) = last.filter(|l| local <= *l) {
                // The second pass of a repeated hour: go on from its end.
                let past = self.tz.to_ambiguous_zoned_datetime(l).later().ok()?;
                from = Local(if past.timestamp() > found.timestamp() {
                    past
                } else {
                    found
                });
                continue;
            }
            let tick = Tick {
                at: Timestamp::from_jiff(found.timestamp()),
                local: local.to_string(),
            };
            if open(tick.at) {
                return Some(tick);
            }
            // A closed day: go on from the end of it (a frequent schedule would otherwise
            // spend the search bound within one closed day).
            let next_day = found
                .date()
                .tomorrow()
                .ok()?
                .to_zoned_datetime(self.tz.clone())
                .ok()?;
            from = Local(next_day.checked_sub(SignedDuration::from_secs(1)).ok()?);
        }
        None
    }

    /// The zoned time of `tick`, for templates.
    pub fn zoned(&self, tick: &Tick) -> ZonedDateTime {
        tick.at.to_jiff().to_zoned_datetime(self.tz.clone())
    }
}

/// A point croner searches from: a zoned time of jiff (the workspace's version; croner's own
/// jiff support is for another major version).
#[derive(Clone, Debug)]
struct Local(ZonedDateTime);

fn civil(dt: DateTime) -> CivilDateTime {
    CivilDateTime::new(
        CivilDate::from_parts_unchecked(i32::from(dt.year()), dt.month() as u32, dt.day() as u32),
        CivilTime::from_parts_unchecked(dt.hour() as u32, dt.minute() as u32, dt.second() as u32),
    )
}

fn jiff_civil(c: CivilDateTime) -> Result<DateTime, CronError> {
    let year = i16::try_from(c.year()).map_err(|_| CronError::InvalidDate)?;
    DateTime::new(
        year,
        c.month() as i8,
        c.day() as i8,
        c.hour() as i8,
        c.minute() as i8,
        c.second() as i8,
        0,
    )
    .map_err(|_| CronError::InvalidDate)
}

impl CronDateTime for Local {
    fn to_civil(&self) -> CivilDateTime {
        civil(self.0.datetime())
    }

    fn civil_weekday(&self) -> Weekday {
        Weekday::from_days_from_sunday(self.0.weekday().to_sunday_zero_offset() as u32)
    }

    fn resolve_civil(&self, c: CivilDateTime) -> Result<Resolution<Self>, CronError> {
        let dt = jiff_civil(c)?;
        let ambiguous = self.0.time_zone().to_ambiguous_zoned_datetime(dt);
        Ok(match ambiguous.offset() {
            AmbiguousOffset::Unambiguous { .. } => Resolution::Single(Local(
                ambiguous
                    .unambiguous()
                    .map_err(|_| CronError::InvalidTime)?,
            )),
            AmbiguousOffset::Fold { .. } => Resolution::Ambiguous(
                Local(
                    ambiguous
                        .clone()
                        .earlier()
                        .map_err(|_| CronError::InvalidTime)?,
                ),
                Local(ambiguous.later().map_err(|_| CronError::InvalidTime)?),
            ),
            AmbiguousOffset::Gap { .. } => Resolution::Gap,
        })
    }

    fn checked_add_seconds(&self, seconds: i64) -> Option<Self> {
        self.0
            .checked_add(SignedDuration::from_secs(seconds))
            .ok()
            .map(Local)
    }

    fn cmp_instant(&self, other: &Self) -> Ordering {
        self.0.timestamp().cmp(&other.0.timestamp())
    }
}

fn check_value(value: &serde_json::Value) -> Result<(), String> {
    match value {
        serde_json::Value::String(s) => {
            check_template(s).map_err(|e| format!("data template: {e}"))
        }
        serde_json::Value::Array(items) => items.iter().try_for_each(check_value),
        serde_json::Value::Object(map) => map.values().try_for_each(check_value),
        _ => Ok(()),
    }
}

/// Checks a template's placeholders: each `{name}` one of [`PLACEHOLDERS`].
pub fn check_template(text: &str) -> Result<(), String> {
    expand(text, &|_| Some(String::new())).map(|_| ())
}

/// `text` with each placeholder replaced by `value(name)`.
fn expand(text: &str, value: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            out.push_str(&tail[..1]);
            rest = &tail[2..];
            continue;
        }
        if tail.starts_with('}') {
            return Err(format!(
                "`{text}` has a `}}` that closes nothing; write `}}}}` for a literal brace"
            ));
        }
        let Some(end) = tail.find('}') else {
            return Err(format!(
                "`{text}` has a `{{` that is never closed; write `{{{{` for a literal brace"
            ));
        };
        let name = &tail[1..end];
        match value(name) {
            Some(v) if PLACEHOLDERS.contains(&name) => out.push_str(&v),
            _ => {
                return Err(format!(
                    "`{{{name}}}` is not a placeholder; use one of {}",
                    PLACEHOLDERS.map(|p| format!("{{{p}}}")).join(", ")
                ));
            }
        }
        rest = &tail[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The values of the placeholders for `tick` of schedule `name`.
fn placeholder(name: &str, schedule: &str, tick: &Tick, zoned: &ZonedDateTime) -> Option<String> {
    let date = zoned.date();
    Some(match name {
        "tick" => zoned
            .timestamp()
            .display_with_offset(zoned.offset())
            .to_string(),
        "tick_utc" => zoned.timestamp().to_string(),
        "date" => date.to_string(),
        "time" => tick.local.split('T').nth(1).unwrap_or("").to_string(),
        "year" => format!("{:04}", date.year()),
        "month" => format!("{:02}", date.month()),
        "day" => format!("{:02}", date.day()),
        "quarter" => ((date.month() - 1) / 3 + 1).to_string(),
        "week" => format!("{:02}", date.iso_week_date().week()),
        "schedule" => schedule.to_string(),
        _ => return None,
    })
}

/// The data and business key of the instance `tick` creates.
pub fn render(
    spec: &ScheduleSpec,
    compiled: &Compiled,
    tick: &Tick,
) -> Result<(serde_json::Value, Option<String>), String> {
    let zoned = compiled.zoned(tick);
    let value = |name: &str| placeholder(name, &spec.name, tick, &zoned);
    fn walk(
        v: &serde_json::Value,
        value: &dyn Fn(&str) -> Option<String>,
    ) -> Result<serde_json::Value, String> {
        Ok(match v {
            serde_json::Value::String(s) => serde_json::Value::String(expand(s, value)?),
            serde_json::Value::Array(items) => serde_json::Value::Array(
                items
                    .iter()
                    .map(|i| walk(i, value))
                    .collect::<Result<_, _>>()?,
            ),
            serde_json::Value::Object(map) => serde_json::Value::Object(
                map.iter()
                    .map(|(k, i)| Ok((k.clone(), walk(i, value)?)))
                    .collect::<Result<_, String>>()?,
            ),
            other => other.clone(),
        })
    }
    let data = walk(&spec.data, &value)?;
    let key = spec.key.as_deref().map(|k| expand(k, &value)).transpose()?;
    Ok((data, key))
}

/// What to do with the tick a fire names, decided at cluster time `now`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Fire it (the overlap policy still applies); then go on with `next`.
    Fire { next: Option<Tick> },
    /// Skip it and every tick before `next` (`missed` of them, [`MISSED_COUNT_MAX`] meaning
    /// at least that many), by the catch-up policy.
    CatchUp { next: Option<Tick>, missed: u64 },
}

impl Schedule {
    /// The local time of the last tick acted on, which no later tick may repeat.
    fn last_local(&self) -> Option<&str> {
        self.last.as_ref().map(|l| l.tick.local.as_str())
    }

    /// Decides what a fire of `tick` (the schedule's next) does at `now`: on time (at most the
    /// catch-up window late) it fires; late, the catch-up policy says which of the ticks due
    /// by `now` fire.
    pub fn plan(
        &self,
        compiled: &Compiled,
        tick: &Tick,
        now: Timestamp,
        open: &dyn Fn(Timestamp) -> bool,
    ) -> Plan {
        let window = self.spec.catch_up_window_ms;
        let after = |t: &Tick| compiled.next_after(t.at, Some(&t.local), open);
        let next = after(tick);
        let late = now.as_micros() > tick.at.add_ms(window).as_micros();
        if !late {
            return Plan::Fire { next };
        }
        // The ticks due by now, oldest first, counted up to a bound.
        let mut due = vec![tick.clone()];
        let mut cursor = next.clone();
        while let Some(t) = cursor {
            if t.at > now || due.len() as u64 >= MISSED_COUNT_MAX {
                cursor = Some(t);
                break;
            }
            cursor = after(&t);
            due.push(t);
        }
        let more = cursor.as_ref().is_some_and(|t| t.at <= now);
        let keep_from = |keep: usize| -> Plan {
            // Fire the last `keep` due ticks: skip the rest.
            if more {
                // Too many to count: start again from the first tick of the catch-up window.
                let from = Timestamp::from_micros(now.as_micros() - (window as i64) * 1000);
                let restart = compiled.next_after(from, self.last_local(), open);
                return Plan::CatchUp {
                    next: restart,
                    missed: MISSED_COUNT_MAX,
                };
            }
            let skip = due.len().saturating_sub(keep);
            if skip == 0 {
                Plan::Fire { next: next.clone() }
            } else {
                Plan::CatchUp {
                    next: due.get(skip).cloned().or_else(|| cursor.clone()),
                    missed: skip as u64,
                }
            }
        };
        match self.spec.catch_up {
            CatchUp::Skip => {
                // Ticks within the window are on time; the rest are dropped.
                let on_time = due
                    .iter()
                    .filter(|t| now.as_micros() <= t.at.add_ms(window).as_micros())
                    .count();
                keep_from(on_time)
            }
            CatchUp::One => keep_from(1),
            CatchUp::All => keep_from(self.spec.catch_up_max as usize),
        }
    }

    /// Where the schedule stands after acting on `tick`.
    pub fn acted(&mut self, tick: Tick, now: Timestamp, outcome: TickOutcome, next: Option<Tick>) {
        match &outcome {
            TickOutcome::Created { instance_id } => {
                self.fired += 1;
                self.last_instance = Some(instance_id.clone());
            }
            TickOutcome::Refused { .. } => self.refused += 1,
            TickOutcome::Skipped { .. } => self.skipped += 1,
        }
        self.last = Some(LastTick {
            tick,
            acted_at: now,
            outcome,
        });
        self.next = next;
    }
}

/// The audit record of a change to a schedule: `change` is `create`, `pause`, `resume`,
/// `delete`, or `refused` (a tick whose create the engine refused), by `actor`; the note
/// names the schedule, its expression and what it creates. Not tied to an instance.
pub fn changed(
    change: &str,
    s: &Schedule,
    actor: &Actor,
    at: Timestamp,
    detail: Option<&str>,
) -> AuditRecord {
    let spec = &s.spec;
    let mut note = format!(
        "schedule {} (`{}` in {}{}) creates {} (overlap {}, catch-up {}), next tick {}",
        spec.name,
        spec.cron,
        spec.time_zone,
        spec.calendar
            .as_ref()
            .map(|c| format!(", calendar {c}"))
            .unwrap_or_default(),
        spec.workflow,
        spec.overlap.name(),
        spec.catch_up.name(),
        s.next
            .as_ref()
            .map_or_else(|| "none".to_string(), |t| t.at.to_string()),
    );
    if let Some(p) = &s.paused {
        note.push_str(&format!("; paused: {}", p.reason));
    }
    if let Some(d) = detail {
        note.push_str(&format!("; {d}"));
    }
    AuditRecord {
        kind: AuditKind::ScheduleChanged,
        workflow: spec.workflow.clone(),
        instance_id: String::new(),
        definition_version: String::new(),
        transition: Some(change.to_string()),
        from: None,
        to: None,
        actor: actor.record(),
        at,
        instance_version: 0,
        payload_digest: None,
        predicates: Vec::new(),
        timer: None,
        task_id: None,
        sla: None,
        note: Some(note),
    }
}

/// The note on the `created` record of a scheduled instance.
pub fn created_note(schedule: &str, tick: &Tick) -> String {
    format!(
        "created by schedule {schedule} for its tick {} (local {})",
        tick.at, tick.local
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        Timestamp::parse_rfc3339(text).unwrap()
    }

    fn always(_: Timestamp) -> bool {
        true
    }

    fn ticks(c: &Compiled, from: &str, n: usize) -> Vec<Tick> {
        let mut out: Vec<Tick> = Vec::new();
        let mut after = at(from);
        let mut local: Option<String> = None;
        for _ in 0..n {
            let t = c.next_after(after, local.as_deref(), &always).unwrap();
            after = t.at;
            local = Some(t.local.clone());
            out.push(t);
        }
        out
    }

    fn spec(cron: &str, tz: &str) -> ScheduleSpec {
        ScheduleSpec {
            name: "review".into(),
            cron: cron.into(),
            time_zone: tz.into(),
            calendar: None,
            workflow: "access-review".into(),
            data: serde_json::json!({"period": "{year}-Q{quarter}", "at": "{tick}"}),
            key: Some("review-{date}".into()),
            overlap: Overlap::Skip,
            catch_up: CatchUp::One,
            catch_up_max: 10,
            catch_up_window_ms: 60_000,
        }
    }

    #[test]
    fn a_daily_tick_in_a_spring_forward_gap_fires_at_the_first_valid_instant() {
        // 2026-03-08: New York jumps from 02:00 EST to 03:00 EDT.
        let c = Compiled::new("30 2 * * *", "America/New_York").unwrap();
        let t = ticks(&c, "2026-03-06T12:00:00Z", 3);
        assert_eq!(t[0].at, at("2026-03-07T02:30:00-05:00"));
        // 02:30 did not exist on the 8th: the tick fires when the gap ends, 03:00 EDT.
        assert_eq!(t[1].local, "2026-03-08T03:00:00");
        assert_eq!(t[1].at, at("2026-03-08T03:00:00-04:00"));
        assert_eq!(t[2].at, at("2026-03-09T02:30:00-04:00"));
    }

    #[test]
    fn a_local_time_repeated_by_a_fall_back_fires_once() {
        // 2026-11-01: New York falls back from 02:00 EDT to 01:00 EST.
        let daily = Compiled::new("30 1 * * *", "America/New_York").unwrap();
        let t = ticks(&daily, "2026-10-31T12:00:00Z", 3);
        assert_eq!(t[0].at, at("2026-11-01T01:30:00-04:00"));
        assert_eq!(t[1].at, at("2026-11-02T01:30:00-05:00"));
        // Every 30 minutes: 01:00 and 01:30 come once, in the first pass.
        let half = Compiled::new("*/30 * * * *", "America/New_York").unwrap();
        let t = ticks(&half, "2026-11-01T04:45:00Z", 4);
        let locals: Vec<&str> = t.iter().map(|t| t.local.as_str()).collect();
        assert_eq!(
            locals,
            [
                "2026-11-01T01:00:00",
                "2026-11-01T01:30:00",
                "2026-11-01T02:00:00",
                "2026-11-01T02:30:00"
            ]
        );
        assert_eq!(t[2].at, at("2026-11-01T02:00:00-05:00"));
        assert!(t.windows(2).all(|w| w[0].at < w[1].at));
    }

    #[test]
    fn closed_days_are_skipped() {
        let c = Compiled::new("0 9 * * *", "Europe/Berlin").unwrap();
        // Open on weekdays only (2026-12-05 is a Saturday).
        let weekday = |t: Timestamp| {
            let d = t
                .to_jiff()
                .to_zoned_datetime(TimeZone::get("Europe/Berlin").unwrap());
            d.weekday().to_monday_one_offset() <= 5
        };
        let t = c
            .next_after(at("2026-12-04T12:00:00Z"), None, &weekday)
            .unwrap();
        assert_eq!(t.at, at("2026-12-07T09:00:00+01:00"));
        // A calendar closed every day has no next tick.
        assert_eq!(
            c.next_after(at("2026-12-04T12:00:00Z"), None, &|_| false),
            None
        );
        // Every second, weekdays only: a weekend is stepped over a day at a time.
        let often = Compiled::new("* * * * * *", "Europe/Berlin").unwrap();
        let t = often
            .next_after(at("2026-12-04T22:59:59Z"), None, &weekday)
            .unwrap();
        assert_eq!(t.at, at("2026-12-07T00:00:00+01:00"));
    }

    #[test]
    fn templates_render_per_tick_and_bad_ones_are_refused_with_the_placeholders() {
        let s = spec("0 9 1 */3 *", "Europe/Berlin");
        let c = s.check().unwrap();
        let t = c
            .next_after(at("2026-09-15T00:00:00Z"), None, &always)
            .unwrap();
        let (data, key) = render(&s, &c, &t).unwrap();
        assert_eq!(data["period"], "2026-Q4");
        assert_eq!(data["at"], "2026-10-01T09:00:00+02:00");
        assert_eq!(key.as_deref(), Some("review-2026-10-01"));
        let bad = ScheduleSpec {
            key: Some("review-{yr}".into()),
            ..s.clone()
        };
        let e = bad.check().unwrap_err();
        assert!(
            e.contains("`{yr}` is not a placeholder") && e.contains("{year}"),
            "{e}"
        );
        let e = expand("{{literal}} {", &|_| Some(String::new())).unwrap_err();
        assert!(e.contains("never closed"), "{e}");
        assert_eq!(expand("{{x}}", &|_| Some(String::new())).unwrap(), "{x}");
        let e = Compiled::new("61 * * * *", "UTC").unwrap_err();
        assert!(e.contains("five fields"), "{e}");
        let e = Compiled::new("* * * * *", "Mars/Olympus").unwrap_err();
        assert!(e.contains("IANA"), "{e}");
        assert!(check_name("Quarterly Review").is_err());
    }

    fn schedule(s: ScheduleSpec, c: &Compiled, from: &str) -> Schedule {
        Schedule {
            next: c.next_after(at(from), None, &always),
            spec: s,
            last: None,
            last_instance: None,
            paused: None,
            fired: 0,
            skipped: 0,
            refused: 0,
            created_by: "alice".into(),
            created_at: at(from),
        }
    }

    #[test]
    fn missed_ticks_follow_the_catch_up_policy() {
        // Hourly; the cluster comes back at 05:10, five ticks (01:00..05:00) late or due.
        let mut s = spec("0 * * * *", "UTC");
        let c = s.check().unwrap();
        let now = at("2026-12-07T05:10:00Z");
        let plan = |s: &ScheduleSpec| {
            let sch = schedule(s.clone(), &c, "2026-12-07T00:30:00Z");
            let tick = sch.next.clone().unwrap();
            assert_eq!(tick.at, at("2026-12-07T01:00:00Z"));
            sch.plan(&c, &tick, now, &always)
        };
        // One: the latest missed tick (05:00) fires; four are skipped.
        s.catch_up = CatchUp::One;
        assert_eq!(
            plan(&s),
            Plan::CatchUp {
                next: c.next_after(at("2026-12-07T04:30:00Z"), None, &always),
                missed: 4
            }
        );
        // All, at most 2: 04:00 and 05:00 fire.
        s.catch_up = CatchUp::All;
        s.catch_up_max = 2;
        match plan(&s) {
            Plan::CatchUp { next, missed } => {
                assert_eq!(next.unwrap().at, at("2026-12-07T04:00:00Z"));
                assert_eq!(missed, 3);
            }
            other => panic!("{other:?}"),
        }
        // All, at most 10: every one fires, starting with this one.
        s.catch_up_max = 10;
        assert!(matches!(plan(&s), Plan::Fire { .. }));
        // Skip: none is within the minute's window, so all five are skipped.
        s.catch_up = CatchUp::Skip;
        match plan(&s) {
            Plan::CatchUp { next, missed } => {
                assert_eq!(next.unwrap().at, at("2026-12-07T06:00:00Z"));
                assert_eq!(missed, 5);
            }
            other => panic!("{other:?}"),
        }
        // On time (within the window) a tick always fires.
        let sch = schedule(s.clone(), &c, "2026-12-07T00:30:00Z");
        let tick = sch.next.clone().unwrap();
        assert!(matches!(
            sch.plan(&c, &tick, at("2026-12-07T01:00:30Z"), &always),
            Plan::Fire { .. }
        ));
    }

    #[test]
    fn a_long_outage_of_a_frequent_schedule_is_bounded() {
        // Every second, down for a day: the count stops at MISSED_COUNT_MAX and the schedule
        // restarts at the catch-up window.
        let mut s = spec("* * * * * *", "UTC");
        s.catch_up = CatchUp::One;
        let c = s.check().unwrap();
        let sch = schedule(s, &c, "2026-12-06T00:00:00Z");
        let tick = sch.next.clone().unwrap();
        let now = at("2026-12-07T00:00:00Z");
        match sch.plan(&c, &tick, now, &always) {
            Plan::CatchUp { next, missed } => {
                assert_eq!(missed, MISSED_COUNT_MAX);
                assert_eq!(next.unwrap().at, at("2026-12-06T23:59:01Z"));
            }
            other => panic!("{other:?}"),
        }
    }
}
