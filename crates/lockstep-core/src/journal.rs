//! The command journal, and replay: how another definition version would have treated the
//! instances that already ran.
//!
//! Audit records hold payload digests, not payloads, so they cannot be evaluated again. From
//! log format 5 apply also writes, beside every instance audit record, a [`JournalEntry`]:
//! the command exactly as the engine decided it (creation data, payloads, the instance an
//! event was routed to, the timer that fired), the cross-instance [`Facts`] apply looked up,
//! the rule switches of the log format and the cluster time. Evaluation depends only on
//! (definition, instance, command, facts, rules, cluster time), so [`replay`] is exact:
//!
//! - the **old path** evaluates each entry under the version that decided it and must arrive
//!   at the recorded state and version at every step (a journal that does not is reported,
//!   never guessed around);
//! - the **new path** evaluates the same commands under the new version from the create on.
//!   Time is the new version's own: its timers fire when they fall due, except that a timer
//!   the old path also fired (same id, same due time) fires when it really fired, so that
//!   replaying an instance under its own version reproduces its history exactly.
//!
//! The differences are per command (refused where the old version applied it, or another
//! target state), per timer (fired on one path only), and at the end of the history (state,
//! and each SLA's budget, breach time and status under the new calendars).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::engine::{
    Actor, Command, Facts, Instance, Outcome, RefusalCode, Rules, TimerKind, evaluate_with,
};
use crate::migrate::{Migration, migrate};
use crate::sla::SlaStatus;
use crate::time::Timestamp;
use crate::validate::CompiledDefinition;

/// Most timers the new path of one instance may fire in a replay: a definition whose timers
/// re-arm themselves forever stops here with a clear error instead of looping.
pub const REPLAY_TIMER_FIRES_MAX: usize = 10_000;

/// What apply journals beside record `seq` of an instance's audit chain.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// The cluster time the change was applied at.
    pub at: Timestamp,
    /// The definition version that decided it (for a migration: the version moved to).
    pub definition_version: String,
    /// The instance's state after it.
    pub state: String,
    pub step: JournalStep,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JournalStep {
    /// A command the engine decided, and what it decided on.
    Command {
        command: Command,
        facts: Facts,
        /// [`Rules::lease_expiry_guard`] as the replicated log format set it.
        lease_expiry_guard: bool,
        /// For a timer fire: when the fired timer was due.
        timer_due: Option<Timestamp>,
    },
    /// An operator moved the instance to another version (`lockstep migrate`).
    Migrate { plan: Migration, actor: Actor },
}

impl JournalEntry {
    /// The command as a person reads it: `transition approve by bob`.
    pub fn describe(&self) -> String {
        match &self.step {
            JournalStep::Migrate { plan, actor } => format!(
                "migration {} → {} by {}",
                short(&plan.from_version),
                short(&plan.to_version),
                actor.id
            ),
            JournalStep::Command { command, .. } => describe(command),
        }
    }
}

/// A command as a person reads it.
pub fn describe(command: &Command) -> String {
    match command {
        Command::Create { actor, key, .. } => match key {
            Some(key) => format!("create with key {key} by {}", actor.id),
            None => format!("create by {}", actor.id),
        },
        Command::Transition {
            transition, actor, ..
        } => format!("transition {transition} by {}", actor.id),
        Command::Event { event, actor, .. } => format!("event {event} by {}", actor.id),
        Command::FireTimer { timer_id } => format!("timer {timer_id}"),
        Command::LeaseTask {
            task_id, worker, ..
        } => format!("lease of task {task_id} by {}", worker.id),
        Command::HeartbeatTask {
            task_id, worker, ..
        } => format!("heartbeat of task {task_id} by {}", worker.id),
        Command::CompleteTask {
            task_id, worker, ..
        } => format!("completion of task {task_id} by {}", worker.id),
        Command::FailTask {
            task_id, worker, ..
        } => format!("failure of task {task_id} by {}", worker.id),
        Command::ResolveIncident {
            incident_id, actor, ..
        } => format!("resolution of incident {incident_id} by {}", actor.id),
        Command::ReleaseTask {
            task_id, worker, ..
        } => format!("release of task {task_id} by {}", worker.id),
        Command::Redact { fields, actor } => {
            format!("redaction of {} by {}", fields.join(", "), actor.id)
        }
    }
}

fn short(version: &str) -> &str {
    &version[..version.len().min(12)]
}

/// Why an instance cannot be replayed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotReplayable {
    #[error(
        "it has no journal: the instance was created, and last changed, before the cluster kept journals (log format 5), so its commands are not known"
    )]
    Empty,
    #[error(
        "its journal starts at record {0}, not at its creation: the instance was created before the cluster kept journals (log format 5), so its first commands are not known"
    )]
    Incomplete(u64),
    #[error("its journal has no record {0} (it goes from {1} to {2})")]
    Gap(u64, u64, u64),
    #[error("record {seq} was decided by version {version}, which was not given to the replay")]
    UnknownVersion { seq: u64, version: String },
    #[error(
        "record {seq} ({what}) does not reproduce under its own version: {reason}; the journal and the record disagree, which is a bug to report"
    )]
    Diverged {
        seq: u64,
        what: String,
        reason: String,
    },
    #[error(
        "its data fields {fields} were redacted at record {seq}: their values are gone, so its commands cannot be evaluated again"
    )]
    Redacted { seq: u64, fields: String },
    #[error(
        "the new version fires more than {REPLAY_TIMER_FIRES_MAX} timers for this instance (REPLAY_TIMER_FIRES_MAX); its timers re-arm without end"
    )]
    TooManyFires,
}

/// Where the new version would have differed, for one instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Replay {
    pub instance_id: String,
    /// The cluster time of the last record: the end of the replayed history.
    #[serde(with = "crate::time::rfc3339")]
    pub until: Timestamp,
    /// The state the instance is in (the old path's end).
    pub old_state: String,
    /// The state the new version would have left it in (`None`: it would not have been
    /// created).
    pub new_state: Option<String>,
    pub differences: Vec<Difference>,
    /// The SLAs whose outlook differs at `until`, by name.
    pub slas: BTreeMap<String, SlaDifference>,
}

impl Replay {
    /// Whether the new version treats this instance exactly as the old one did.
    pub fn same(&self) -> bool {
        self.differences.is_empty()
            && self.slas.is_empty()
            && self.new_state.as_deref() == Some(self.old_state.as_str())
    }
}

/// One step where the two versions part.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Difference {
    /// The old version applied the command; the new one refuses it.
    Refused {
        seq: u64,
        #[serde(with = "crate::time::rfc3339")]
        at: Timestamp,
        command: String,
        old_state: String,
        code: RefusalCode,
        message: String,
    },
    /// Both apply it, into different states.
    OtherState {
        seq: u64,
        #[serde(with = "crate::time::rfc3339")]
        at: Timestamp,
        command: String,
        old_state: String,
        new_state: String,
    },
    /// A timer fired on the old path that the new version does not fire then.
    OldTimerOnly {
        seq: u64,
        #[serde(with = "crate::time::rfc3339")]
        at: Timestamp,
        timer_id: String,
        old_state: String,
    },
    /// The new version fires a timer that the old one did not fire then.
    NewTimerOnly {
        #[serde(with = "crate::time::rfc3339")]
        at: Timestamp,
        timer_id: String,
        new_state: String,
    },
}

/// An SLA at the end of the history, on each path (`None`: not kept on that path).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlaDifference {
    pub old: Option<SlaOutlook>,
    pub new: Option<SlaOutlook>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlaOutlook {
    pub status: SlaStatus,
    pub budget_ms: u64,
    /// When it breached, if it has.
    #[serde(with = "crate::time::rfc3339::option")]
    pub breached_at: Option<Timestamp>,
    /// When it will breach if nothing happens (its armed breach timer), if it has not.
    #[serde(with = "crate::time::rfc3339::option")]
    pub breach_due: Option<Timestamp>,
}

fn outlooks(instance: Option<&Instance>) -> BTreeMap<String, SlaOutlook> {
    let Some(instance) = instance else {
        return BTreeMap::new();
    };
    instance
        .slas
        .iter()
        .map(|(name, clock)| {
            let breach_due = instance.timers.values().find_map(|t| match &t.kind {
                TimerKind::SlaBreach { sla } if sla == name => Some(t.due_at),
                _ => None,
            });
            (
                name.clone(),
                SlaOutlook {
                    status: clock.status,
                    budget_ms: clock.budget_ms,
                    breached_at: clock.breached_at,
                    breach_due,
                },
            )
        })
        .collect()
}

/// A timer the new path fired.
struct NewFire {
    at: Timestamp,
    timer_id: String,
    due: Timestamp,
    state: String,
}

/// Replays one instance's journal (`(record seq, entry)`, in record order) under `to`.
/// `versions` gives the definition of every version the journal names (the old path).
pub fn replay<'d>(
    journal: &[(u64, JournalEntry)],
    versions: impl Fn(&str) -> Option<&'d CompiledDefinition>,
    to: &CompiledDefinition,
) -> Result<Replay, NotReplayable> {
    if let Some((seq, fields)) = journal.iter().find_map(|(seq, e)| match &e.step {
        JournalStep::Command {
            command: Command::Redact { fields, .. },
            ..
        } => Some((*seq, fields.join(", "))),
        _ => None,
    }) {
        return Err(NotReplayable::Redacted { seq, fields });
    }
    let (old, armed_before) = old_path(journal, &versions)?;
    let (_, last) = journal.last().expect("old_path refuses an empty journal");
    let instance_id = old.id.clone();
    // Timers the old path fired, by (id, due time) → when they fired, and the record.
    let recorded: HashMap<(String, Timestamp), (Timestamp, u64)> = journal
        .iter()
        .filter_map(|(seq, e)| match &e.step {
            JournalStep::Command {
                command: Command::FireTimer { timer_id },
                timer_due: Some(due),
                ..
            } => Some(((timer_id.clone(), *due), (e.at, *seq))),
            _ => None,
        })
        .collect();
    let expected = expected_states(journal, to);
    let mut new: Option<Instance> = None;
    let mut fires: Vec<NewFire> = Vec::new();
    let mut differences = Vec::new();
    let mut clock = Clock {
        last: Timestamp::MIN,
    };
    for (((seq, entry), expected), held) in journal.iter().zip(&expected).zip(&armed_before) {
        let JournalStep::Command {
            command,
            facts,
            lease_expiry_guard,
            ..
        } = &entry.step
        else {
            // The new version governs from the create on: a migration has nothing to do.
            continue;
        };
        if matches!(command, Command::FireTimer { .. }) {
            // The old path's timers are compared with the new path's fires below.
            continue;
        }
        fire_due(
            to,
            &mut new,
            &recorded,
            held,
            Until::Before(entry.at),
            &mut fires,
            &mut clock,
        )?;
        let rules = Rules {
            lease_expiry_guard: *lease_expiry_guard,
            mutation: None,
        };
        let at = clock.next(entry.at);
        match evaluate_with(to, new.as_ref(), command, at, rules, facts) {
            Outcome::Applied(change) => {
                if change.instance.state != *expected {
                    differences.push(Difference::OtherState {
                        seq: *seq,
                        at: entry.at,
                        command: entry.describe(),
                        old_state: entry.state.clone(),
                        new_state: change.instance.state.clone(),
                    });
                }
                new = Some(change.instance);
            }
            Outcome::Refused(refusal) => {
                differences.push(Difference::Refused {
                    seq: *seq,
                    at: entry.at,
                    command: entry.describe(),
                    old_state: entry.state.clone(),
                    code: refusal.code,
                    message: refusal.message,
                });
                if new.is_none() {
                    // Not created: every later command would be refused for that alone.
                    break;
                }
            }
        }
    }
    fire_due(
        to,
        &mut new,
        &recorded,
        &armed(&old),
        Until::Through(last.at),
        &mut fires,
        &mut clock,
    )?;
    differences.extend(timer_differences(journal, &expected, &fires));
    differences.sort_by_key(|d| match d {
        Difference::Refused { at, .. }
        | Difference::OtherState { at, .. }
        | Difference::OldTimerOnly { at, .. }
        | Difference::NewTimerOnly { at, .. } => *at,
    });
    let (old_slas, new_slas) = (outlooks(Some(&old)), outlooks(new.as_ref()));
    let slas = old_slas
        .keys()
        .chain(new_slas.keys())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter(|name| old_slas.get(*name) != new_slas.get(*name))
        .map(|name| {
            (
                name.clone(),
                SlaDifference {
                    old: old_slas.get(name).cloned(),
                    new: new_slas.get(name).cloned(),
                },
            )
        })
        .collect();
    Ok(Replay {
        instance_id,
        until: last.at,
        old_state: old.state,
        new_state: new.map(|i| i.state),
        differences,
        slas,
    })
}

/// The state each record left the instance in, as `to` names it: when the instance was
/// later migrated to `to`, a record before the migration is named through the migrations'
/// state mappings (`submitted` recorded under v1 is `in_review` once v2 renamed it).
fn expected_states(journal: &[(u64, JournalEntry)], to: &CompiledDefinition) -> Vec<String> {
    let last_into_to = journal.iter().rposition(|(_, e)| {
        matches!(&e.step, JournalStep::Migrate { plan, .. } if plan.to_version == to.version)
    });
    journal
        .iter()
        .enumerate()
        .map(|(i, (_, entry))| {
            let mut state = entry.state.clone();
            if let Some(last) = last_into_to.filter(|last| i < *last) {
                for (_, later) in &journal[i + 1..=last] {
                    if let JournalStep::Migrate { plan, .. } = &later.step {
                        state = plan.target(&state).to_string();
                    }
                }
            }
            state
        })
        .collect()
}

/// The old path: every entry under the version that decided it, checked against the record.
/// Timers armed on an instance, as (id, due time).
type Armed = BTreeSet<(String, Timestamp)>;

/// The timers armed on an instance.
fn armed(instance: &Instance) -> Armed {
    instance
        .timers
        .values()
        .map(|t| (t.id.clone(), t.due_at))
        .collect()
}

/// The old path's end, and before each entry the timers it had armed then: a timer that was
/// due but had not fired yet when a command came (the timer service is never instant) must
/// not fire before that command on the new path either.
fn old_path<'d>(
    journal: &[(u64, JournalEntry)],
    versions: &impl Fn(&str) -> Option<&'d CompiledDefinition>,
) -> Result<(Instance, Vec<Armed>), NotReplayable> {
    let Some((first, _)) = journal.first() else {
        return Err(NotReplayable::Empty);
    };
    if *first != 1 {
        return Err(NotReplayable::Incomplete(*first));
    }
    let definition = |seq: u64, version: &str| {
        versions(version).ok_or_else(|| NotReplayable::UnknownVersion {
            seq,
            version: version.to_string(),
        })
    };
    let mut instance: Option<Instance> = None;
    let mut armed_before = Vec::with_capacity(journal.len());
    for (i, (seq, entry)) in journal.iter().enumerate() {
        armed_before.push(instance.as_ref().map(armed).unwrap_or_default());
        let expected = i as u64 + 1;
        if *seq != expected {
            return Err(NotReplayable::Gap(expected, expected - 1, *seq));
        }
        let decided_by = definition(*seq, &entry.definition_version)?;
        let outcome = match &entry.step {
            JournalStep::Command {
                command,
                facts,
                lease_expiry_guard,
                ..
            } => {
                let rules = Rules {
                    lease_expiry_guard: *lease_expiry_guard,
                    mutation: None,
                };
                evaluate_with(
                    decided_by,
                    instance.as_ref(),
                    command,
                    entry.at,
                    rules,
                    facts,
                )
            }
            JournalStep::Migrate { plan, actor } => {
                let from = definition(*seq, &plan.from_version)?;
                let Some(before) = &instance else {
                    return Err(diverged(
                        *seq,
                        entry,
                        "a migration before the create".into(),
                    ));
                };
                migrate(from, decided_by, before, plan, actor, entry.at)
            }
        };
        match outcome {
            Outcome::Applied(change)
                if change.instance.state == entry.state && change.instance.version == *seq =>
            {
                instance = Some(change.instance);
            }
            Outcome::Applied(change) => {
                return Err(diverged(
                    *seq,
                    entry,
                    format!(
                        "it gives state {} at version {}, the record says {} at {seq}",
                        change.instance.state, change.instance.version, entry.state
                    ),
                ));
            }
            Outcome::Refused(refusal) => {
                return Err(diverged(
                    *seq,
                    entry,
                    format!(
                        "it is refused {}: {}",
                        refusal.code.as_str(),
                        refusal.message
                    ),
                ));
            }
        }
    }
    let instance = instance.expect("a journal that starts at record 1 creates the instance");
    Ok((instance, armed_before))
}

fn diverged(seq: u64, entry: &JournalEntry, reason: String) -> NotReplayable {
    NotReplayable::Diverged {
        seq,
        what: entry.describe(),
        reason,
    }
}

/// Cluster time on the new path: it never runs backwards. (Apply makes it strictly
/// increasing per proposal, but the timers of one `FireTimers` proposal share its time.)
struct Clock {
    last: Timestamp,
}

impl Clock {
    fn next(&mut self, at: Timestamp) -> Timestamp {
        self.last = self.last.max(at);
        self.last
    }
}

#[derive(Clone, Copy)]
enum Until {
    /// Timers due strictly before this time (a command recorded then came first).
    Before(Timestamp),
    /// Timers due up to and including this time (the end of the history).
    Through(Timestamp),
}

impl Until {
    fn admits(self, at: Timestamp) -> bool {
        match self {
            Until::Before(t) => at < t,
            Until::Through(t) => at <= t,
        }
    }
}

/// Fires the new path's timers that fall due by `until`, earliest first. A timer the old
/// path fired with the same id and due time fires when it really fired, in the order of its
/// record (timers fired by one proposal share a time); any other when due, unless the old
/// path still held it armed then (`held`: it had not fired yet, whatever its due time).
fn fire_due(
    to: &CompiledDefinition,
    new: &mut Option<Instance>,
    recorded: &HashMap<(String, Timestamp), (Timestamp, u64)>,
    held: &Armed,
    until: Until,
    fires: &mut Vec<NewFire>,
    clock: &mut Clock,
) -> Result<(), NotReplayable> {
    loop {
        let Some(instance) = new.as_ref() else {
            return Ok(());
        };
        let next = instance
            .timers
            .values()
            .filter(|t| !held.contains(&(t.id.clone(), t.due_at)))
            .map(|t| {
                let (when, order) = recorded
                    .get(&(t.id.clone(), t.due_at))
                    .copied()
                    .unwrap_or((t.due_at, u64::MAX));
                (when.max(t.due_at), order, t.id.clone(), t.due_at)
            })
            .min();
        let Some((when, _, timer_id, due)) = next.filter(|(when, ..)| until.admits(*when)) else {
            return Ok(());
        };
        if fires.len() >= REPLAY_TIMER_FIRES_MAX {
            return Err(NotReplayable::TooManyFires);
        }
        let at = clock.next(when);
        let command = Command::FireTimer {
            timer_id: timer_id.clone(),
        };
        match evaluate_with(
            to,
            Some(instance),
            &command,
            at,
            Rules::CURRENT,
            &Facts::default(),
        ) {
            Outcome::Applied(change) => {
                fires.push(NewFire {
                    at,
                    timer_id,
                    due,
                    state: change.instance.state.clone(),
                });
                *new = Some(change.instance);
            }
            Outcome::Refused(_) => {
                // An armed timer that is due always fires; drop it rather than loop.
                if let Some(instance) = new.as_mut() {
                    instance.timers.remove(&timer_id);
                }
            }
        }
    }
}

/// The old path's timer fires against the new path's: a fire of the same timer (id and due
/// time) at the same time is the same step; anything else fired on one path only.
fn timer_differences(
    journal: &[(u64, JournalEntry)],
    expected: &[String],
    fires: &[NewFire],
) -> Vec<Difference> {
    let mut unmatched: Vec<Option<&NewFire>> = fires.iter().map(Some).collect();
    let mut out = Vec::new();
    for ((seq, entry), expected) in journal.iter().zip(expected) {
        let JournalStep::Command {
            command: Command::FireTimer { timer_id },
            timer_due,
            ..
        } = &entry.step
        else {
            continue;
        };
        let found = unmatched.iter_mut().find(|f| {
            f.is_some_and(|f| {
                &f.timer_id == timer_id && Some(f.due) == *timer_due && f.at == entry.at
            })
        });
        match found.and_then(Option::take) {
            Some(fire) if fire.state != *expected => out.push(Difference::OtherState {
                seq: *seq,
                at: entry.at,
                command: entry.describe(),
                old_state: entry.state.clone(),
                new_state: fire.state.clone(),
            }),
            Some(_) => {}
            None => out.push(Difference::OldTimerOnly {
                seq: *seq,
                at: entry.at,
                timer_id: timer_id.clone(),
                old_state: entry.state.clone(),
            }),
        }
    }
    out.extend(
        unmatched
            .into_iter()
            .flatten()
            .map(|f| Difference::NewTimerOnly {
                at: f.at,
                timer_id: f.timer_id.clone(),
                new_state: f.state.clone(),
            }),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{ActorKind, TimerKind};
    use crate::limits::Limits;
    use crate::validate::compile;

    const PURCHASE_ORDER: &str = include_str!("../../../examples/workflows/purchase-order.yaml");

    fn version(source: &str) -> CompiledDefinition {
        compile(Some("purchase-order.yaml"), source, &Limits::default()).unwrap()
    }

    /// The example, with an approval SLA of 8 business hours and approvals only up to 100.
    fn stricter() -> CompiledDefinition {
        let source = PURCHASE_ORDER
            .replace("within: 16h", "within: 8h")
            .replace("amount <= 10000.0", "amount <= 100.0");
        version(&source)
    }

    fn at(text: &str) -> Timestamp {
        Timestamp::parse_rfc3339(text).unwrap()
    }

    /// Runs `commands` through `definition` as apply does, journaling each applied one.
    struct Recorder<'d> {
        definition: &'d CompiledDefinition,
        instance: Option<Instance>,
        journal: Vec<(u64, JournalEntry)>,
    }

    impl<'d> Recorder<'d> {
        fn new(definition: &'d CompiledDefinition) -> Self {
            Recorder {
                definition,
                instance: None,
                journal: Vec::new(),
            }
        }

        fn apply(&mut self, command: Command, when: &str) {
            let when = at(when);
            let timer_due = match (&command, &self.instance) {
                (Command::FireTimer { timer_id }, Some(i)) => {
                    i.timers.get(timer_id).map(|t| t.due_at)
                }
                _ => None,
            };
            let facts = Facts::default();
            let outcome = evaluate_with(
                self.definition,
                self.instance.as_ref(),
                &command,
                when,
                Rules::CURRENT,
                &facts,
            );
            let Outcome::Applied(change) = outcome else {
                panic!("{command:?} is refused: {outcome:?}");
            };
            self.journal.push((
                change.instance.version,
                JournalEntry {
                    at: when,
                    definition_version: self.definition.version.clone(),
                    state: change.instance.state.clone(),
                    step: JournalStep::Command {
                        command,
                        facts,
                        lease_expiry_guard: true,
                        timer_due,
                    },
                },
            ));
            self.instance = Some(change.instance);
        }

        fn timer(&self, percent: u8) -> String {
            let i = self.instance.as_ref().unwrap();
            i.timers
                .values()
                .find(
                    |t| matches!(t.kind, TimerKind::SlaWarning { percent: p, .. } if p == percent),
                )
                .map(|t| t.id.clone())
                .unwrap()
        }
    }

    fn create() -> Command {
        Command::Create {
            instance_id: "i-7".into(),
            key: Some("PO-7".into()),
            data: serde_json::json!({ "amount": 120.0, "requester": "alice" }),
            actor: Actor::new("alice", ActorKind::Human, &["requester"]),
        }
    }

    fn transition(name: &str, actor: &str, roles: &[&str]) -> Command {
        Command::Transition {
            transition: name.into(),
            payload: serde_json::json!({}),
            actor: Actor::new(actor, ActorKind::Human, roles),
            expected_version: None,
        }
    }

    /// Created, submitted on Monday at 09:00 Berlin, approved by bob at 11:00.
    fn approved(definition: &CompiledDefinition) -> Vec<(u64, JournalEntry)> {
        let mut r = Recorder::new(definition);
        r.apply(create(), "2026-11-30T07:59:00Z");
        r.apply(
            transition("submit", "alice", &["requester"]),
            "2026-11-30T08:00:00Z",
        );
        r.apply(
            transition("approve", "bob", &["approver"]),
            "2026-11-30T10:00:00Z",
        );
        r.journal
    }

    #[test]
    fn replaying_under_its_own_version_reproduces_the_history_exactly() {
        let v1 = version(PURCHASE_ORDER);
        let mut r = Recorder::new(&v1);
        r.apply(create(), "2026-11-30T07:59:00Z");
        r.apply(
            transition("submit", "alice", &["requester"]),
            "2026-11-30T08:00:00Z",
        );
        // The 50% warning (8 business hours of 16) falls due at 17:00 Berlin and fires 3 s
        // late: the replay must fire it when it really fired, not when it was due.
        let warning = r.timer(50);
        r.apply(
            Command::FireTimer { timer_id: warning },
            "2026-11-30T16:00:03Z",
        );
        r.apply(
            transition("approve", "bob", &["approver"]),
            "2026-12-01T09:00:00Z",
        );
        let replay = replay(&r.journal, |v| (v == v1.version).then_some(&v1), &v1).unwrap();
        assert!(replay.same(), "{replay:#?}");
        assert_eq!(replay.old_state, "approved");
        assert_eq!(replay.until, at("2026-12-01T09:00:00Z"));
    }

    #[test]
    fn a_timer_that_was_due_but_not_yet_fired_when_a_command_came_stays_unfired() {
        // The 50% warning falls due at 17:00 Berlin; the approval lands 200 ms later, before
        // the timer service fired it, and stops the clock (cancelling the warning).
        let v1 = version(PURCHASE_ORDER);
        let mut r = Recorder::new(&v1);
        r.apply(create(), "2026-11-30T07:59:00Z");
        r.apply(
            transition("submit", "alice", &["requester"]),
            "2026-11-30T08:00:00Z",
        );
        r.apply(
            transition("approve", "bob", &["approver"]),
            "2026-11-30T16:00:00.200Z",
        );
        let replay = replay(&r.journal, |v| (v == v1.version).then_some(&v1), &v1).unwrap();
        assert!(replay.same(), "{replay:#?}");
    }

    #[test]
    fn a_stricter_version_refuses_the_approval_and_keeps_a_shorter_sla() {
        let (v1, v2) = (version(PURCHASE_ORDER), stricter());
        let journal = approved(&v1);
        let replay = replay(&journal, |v| (v == v1.version).then_some(&v1), &v2).unwrap();
        assert!(!replay.same());
        assert_eq!(replay.old_state, "approved");
        assert_eq!(replay.new_state.as_deref(), Some("submitted"));
        match replay.differences.as_slice() {
            [
                Difference::Refused {
                    seq: 3,
                    command,
                    old_state,
                    code: RefusalCode::GuardFalse,
                    ..
                },
            ] => {
                assert_eq!(command, "transition approve by bob");
                assert_eq!(old_state, "approved");
            }
            other => panic!("{other:#?}"),
        }
        // Approved, the old clock stopped; on the new path it still runs, 8 business hours
        // from Monday 09:00 Berlin: it would breach at 17:00 the same day.
        let sla = &replay.slas["approval"];
        let (old, new) = (sla.old.as_ref().unwrap(), sla.new.as_ref().unwrap());
        assert_eq!(
            (old.status, old.budget_ms),
            (SlaStatus::Stopped, 16 * 3_600_000)
        );
        assert_eq!(
            (new.status, new.budget_ms),
            (SlaStatus::Running, 8 * 3_600_000)
        );
        assert_eq!(new.breach_due, Some(at("2026-11-30T16:00:00Z")));
    }

    #[test]
    fn timers_fire_on_the_new_versions_own_schedule() {
        let (v1, v2) = (version(PURCHASE_ORDER), stricter());
        let mut r = Recorder::new(&v1);
        r.apply(create(), "2026-11-30T07:59:00Z");
        r.apply(
            transition("submit", "alice", &["requester"]),
            "2026-11-30T08:00:00Z",
        );
        let warning = r.timer(50);
        r.apply(
            Command::FireTimer {
                timer_id: warning.clone(),
            },
            "2026-11-30T16:00:03Z",
        );
        let replay = replay(&r.journal, |v| (v == v1.version).then_some(&v1), &v2).unwrap();
        // Under 8h the 50% and 75% warnings fall due at 13:00 and 15:00 Berlin and the
        // breach at 17:00, which escalates; the old 50% warning at 17:00:03 is not one of them.
        assert_eq!(replay.new_state.as_deref(), Some("escalated"));
        let new_only: Vec<(Timestamp, &str)> = replay
            .differences
            .iter()
            .filter_map(|d| match d {
                Difference::NewTimerOnly { at, new_state, .. } => Some((*at, new_state.as_str())),
                _ => None,
            })
            .collect();
        assert_eq!(
            new_only,
            [
                (at("2026-11-30T12:00:00Z"), "submitted"),
                (at("2026-11-30T14:00:00Z"), "submitted"),
                (at("2026-11-30T16:00:00Z"), "escalated"),
            ]
        );
        assert!(
            replay.differences.iter().any(|d| matches!(d,
                Difference::OldTimerOnly { seq: 3, timer_id, .. } if *timer_id == warning)),
            "{replay:#?}"
        );
    }

    #[test]
    fn a_journal_that_does_not_start_at_the_create_is_not_replayable() {
        let v1 = version(PURCHASE_ORDER);
        let journal = approved(&v1);
        let err = replay(&journal[1..], |v| (v == v1.version).then_some(&v1), &v1).unwrap_err();
        assert_eq!(err, NotReplayable::Incomplete(2));
        assert!(
            err.to_string()
                .contains("created before the cluster kept journals")
        );
        let gap = [journal[0].clone(), journal[2].clone()];
        let err = replay(&gap, |v| (v == v1.version).then_some(&v1), &v1).unwrap_err();
        assert_eq!(err, NotReplayable::Gap(2, 1, 3));
        let err = replay(&journal, |_| None, &v1).unwrap_err();
        assert!(
            matches!(err, NotReplayable::UnknownVersion { seq: 1, .. }),
            "{err}"
        );
    }

    #[test]
    fn a_journal_that_disagrees_with_its_record_is_reported_not_replayed() {
        let v1 = version(PURCHASE_ORDER);
        let mut journal = approved(&v1);
        journal[2].1.state = "rejected".into();
        let err = replay(&journal, |v| (v == v1.version).then_some(&v1), &v1).unwrap_err();
        assert!(
            matches!(&err, NotReplayable::Diverged { seq: 3, .. }),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("gives state approved at version 3, the record says rejected"),
            "{err}"
        );
    }

    #[test]
    fn a_journal_entry_survives_json_and_bincode() {
        let v1 = version(PURCHASE_ORDER);
        let journal = approved(&v1);
        for (_, entry) in &journal {
            let text = serde_json::to_string(entry).unwrap();
            assert_eq!(&serde_json::from_str::<JournalEntry>(&text).unwrap(), entry);
            let bytes = bincode::serialize(entry).unwrap();
            assert_eq!(
                &bincode::deserialize::<JournalEntry>(&bytes).unwrap(),
                entry
            );
        }
    }
}
