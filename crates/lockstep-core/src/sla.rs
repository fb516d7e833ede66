//! SLA clocks (DESIGN §4): start, stop, pause / resume, reset; calendar or business time;
//! a warning ladder and a breach.
//!
//! A clock stores how much budget it had consumed at `since` and whether it is running. All
//! derived facts (consumed now, remaining, when the next warning or the breach falls due) are
//! computed from that, so pausing simply settles the consumed time and stops adding to it:
//! time spent paused never counts.

use serde::{Deserialize, Serialize};

use crate::calendar::Calendar;
use crate::time::Timestamp;
use crate::validate::SlaSpec;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlaStatus {
    Running,
    Paused,
    Stopped,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlaClock {
    pub status: SlaStatus,
    pub budget_ms: u64,
    /// Budget consumed up to `since`.
    pub consumed_ms: u64,
    /// When the clock last started running, or when it was last settled.
    pub since: Timestamp,
    pub started_at: Timestamp,
    /// Warning thresholds (percent) already reached.
    pub warned: Vec<u8>,
    pub breached_at: Option<Timestamp>,
}

/// Something an SLA clock will reach if it keeps running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Milestone {
    Warning(u8),
    Breach,
}

/// Time measured by an optional business calendar: business milliseconds with one, wall-clock
/// milliseconds without.
#[derive(Clone, Copy, Debug)]
pub struct Clock<'a>(pub Option<&'a Calendar>);

impl Clock<'_> {
    pub fn elapsed(self, from: Timestamp, to: Timestamp) -> u64 {
        match self.0 {
            Some(calendar) => calendar.between(from, to),
            None => to.ms_since(from),
        }
    }

    /// Like [`Clock::elapsed`], in microseconds.
    pub fn elapsed_micros(self, from: Timestamp, to: Timestamp) -> u64 {
        match self.0 {
            Some(calendar) => calendar.between_micros(from, to),
            None => u64::try_from(to.as_micros().saturating_sub(from.as_micros())).unwrap_or(0),
        }
    }

    pub fn advance(self, from: Timestamp, ms: u64) -> Option<Timestamp> {
        match self.0 {
            Some(calendar) => calendar.add(from, ms),
            None => Some(from.add_ms(ms)),
        }
    }
}

impl SlaClock {
    pub fn start(spec: &SlaSpec, at: Timestamp) -> SlaClock {
        SlaClock {
            status: SlaStatus::Running,
            budget_ms: spec.budget_ms,
            consumed_ms: 0,
            since: at,
            started_at: at,
            warned: Vec::new(),
            breached_at: None,
        }
    }

    pub fn consumed_at(&self, clock: Clock, at: Timestamp) -> u64 {
        match self.status {
            SlaStatus::Running => self
                .consumed_ms
                .saturating_add(clock.elapsed(self.since, at)),
            SlaStatus::Paused | SlaStatus::Stopped => self.consumed_ms,
        }
    }

    /// Remaining budget at `at`; negative once overrun.
    pub fn remaining_at(&self, clock: Clock, at: Timestamp) -> i64 {
        let consumed = i64::try_from(self.consumed_at(clock, at)).unwrap_or(i64::MAX);
        i64::try_from(self.budget_ms)
            .unwrap_or(i64::MAX)
            .saturating_sub(consumed)
    }

    fn settle(&mut self, clock: Clock, at: Timestamp) {
        self.consumed_ms = self.consumed_at(clock, at);
        self.since = at;
    }

    pub fn pause(&mut self, clock: Clock, at: Timestamp) {
        if self.status == SlaStatus::Running {
            self.settle(clock, at);
            self.status = SlaStatus::Paused;
        }
    }

    pub fn resume(&mut self, at: Timestamp) {
        if self.status == SlaStatus::Paused {
            self.since = at;
            self.status = SlaStatus::Running;
        }
    }

    pub fn stop(&mut self, clock: Clock, at: Timestamp) {
        if self.status != SlaStatus::Stopped {
            self.settle(clock, at);
            self.status = SlaStatus::Stopped;
        }
    }

    /// The milestones still ahead and when each falls due if the clock keeps running.
    pub fn upcoming(&self, spec: &SlaSpec, clock: Clock) -> Vec<(Milestone, Timestamp)> {
        if self.status != SlaStatus::Running {
            return Vec::new();
        }
        let mut out = Vec::new();
        let mut reach = |milestone, threshold_ms: u64| {
            let left = threshold_ms.saturating_sub(self.consumed_ms);
            if let Some(due) = clock.advance(self.since, left) {
                out.push((milestone, due));
            }
        };
        for &p in &spec.warn_at {
            if !self.warned.contains(&p) && self.breached_at.is_none() {
                reach(Milestone::Warning(p), self.budget_ms * u64::from(p) / 100);
            }
        }
        if self.breached_at.is_none() {
            reach(Milestone::Breach, self.budget_ms);
        }
        out
    }

    /// A summary for queries and scenario expectations.
    pub fn view(&self, clock: Clock, at: Timestamp) -> SlaView {
        SlaView {
            status: self.status,
            warned: self.warned.last().copied(),
            breached: self.breached_at.is_some(),
            consumed_ms: self.consumed_at(clock, at),
            remaining_ms: self.remaining_at(clock, at),
        }
    }
}

/// An SLA as a query sees it at a given time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlaView {
    pub status: SlaStatus,
    /// The highest warning threshold reached, in percent.
    pub warned: Option<u8>,
    pub breached: bool,
    pub consumed_ms: u64,
    pub remaining_ms: i64,
}

/// How the clock of `spec` reacts to the instance entering `state`. `applies` says whether
/// the SLA's `when` condition holds, and is only asked when the clock would start.
pub fn on_enter(
    spec: &SlaSpec,
    current: Option<SlaClock>,
    state: &str,
    at: Timestamp,
    clock: Clock,
    applies: impl FnOnce() -> bool,
) -> Option<SlaClock> {
    let mut next = match current {
        Some(mut c) if spec.stop.contains(state) => {
            c.stop(clock, at);
            return Some(c);
        }
        // A reset restarts the clock only if the SLA still applies (its `when` may have
        // stopped holding since it started); otherwise the old clock stays as it was.
        Some(c) if spec.reset.contains(state) => Some(if applies() {
            SlaClock::start(spec, at)
        } else {
            c
        }),
        Some(c) => Some(c),
        None if spec.start.contains(state) && applies() => Some(SlaClock::start(spec, at)),
        None => None,
    };
    if let Some(c) = next.as_mut() {
        if spec.pause.contains(state) {
            c.pause(clock, at);
        } else {
            c.resume(at);
        }
    }
    next
}
