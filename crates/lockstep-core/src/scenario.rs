//! Offline scenario tests: steps, actors, time travel and expectations, run against the pure
//! engine with no cluster (`lockstep test`).
//!
//! Time only moves when a step says so. Advancing time fires every armed timer that falls due,
//! in due order and each at its due time, exactly as the cluster's timer service would.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::definition::DurationText;
use crate::duration::{Duration, DurationError};
use crate::engine::{
    Actor, ActorKind, Command, Instance, LeaseToken, Outcome, TaskStatus, TimerKind, evaluate,
};
use crate::sla::{SlaStatus, SlaView};
use crate::time::{Timestamp, TimestampError};
use crate::validate::CompiledDefinition;

/// A scenario file: one workflow, named actors, several scenarios.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioFile {
    /// Path of the workflow definition, relative to the scenario file.
    pub workflow: String,
    #[serde(default)]
    pub actors: BTreeMap<String, ActorSpec>,
    /// Default start time of every scenario (RFC 3339).
    #[serde(default)]
    pub start: Option<String>,
    pub scenarios: Vec<Scenario>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActorSpec {
    #[serde(default = "human")]
    pub kind: ActorKind,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub claims: BTreeMap<String, serde_json::Value>,
}

fn human() -> ActorKind {
    ActorKind::Human
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub start: Option<String>,
    pub steps: Vec<Step>,
}

/// One step: at most one action, then expectations.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    #[serde(default)]
    pub create: Option<CreateStep>,
    #[serde(default)]
    pub transition: Option<String>,
    #[serde(default)]
    pub event: Option<String>,
    /// The actor taking the action, by name from `actors`.
    #[serde(default, rename = "as")]
    pub actor: Option<String>,
    #[serde(default)]
    pub payload: Option<serde_json::Value>,
    #[serde(default)]
    pub expected_version: Option<u64>,
    /// Moves cluster time forward, firing due timers.
    #[serde(default)]
    pub advance: Option<DurationText>,
    /// Moves cluster time to an RFC 3339 instant, firing due timers.
    #[serde(default)]
    pub advance_to: Option<String>,
    #[serde(default)]
    pub lease_task: Option<TaskStep>,
    #[serde(default)]
    pub complete_task: Option<TaskStep>,
    #[serde(default)]
    pub fail_task: Option<TaskStep>,
    #[serde(default)]
    pub resolve_incident: Option<ResolveStep>,
    #[serde(default)]
    pub expect: Option<Expect>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateStep {
    #[serde(default)]
    pub key: Option<String>,
    pub data: serde_json::Value,
}

/// Acts on the oldest task of `queue` that suits the action.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskStep {
    pub queue: String,
    #[serde(default)]
    pub result: Option<serde_json::Value>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default = "yes")]
    pub retryable: bool,
}

fn yes() -> bool {
    true
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolveStep {
    #[serde(default)]
    pub retry: bool,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    #[serde(default)]
    pub state: Option<String>,
    /// A refusal code such as `FORBIDDEN`; the step's action must be refused with it.
    #[serde(default)]
    pub refused: Option<String>,
    /// SLA name → `running`, `paused`, `stopped`, `warned`, `breached` or `absent`.
    #[serde(default)]
    pub sla: BTreeMap<String, String>,
    /// Exactly the armed timers, by label (`expiry:<state>`, `sla:<name>:warn<p>`,
    /// `sla:<name>:breach`, `task:<queue>:lease`, `task:<queue>:retry`), each with its due
    /// time or `any`.
    #[serde(default)]
    pub timers: Option<BTreeMap<String, String>>,
    /// Queue → status of its newest task (`ready`, `leased`, `backoff`, `completed`, `exhausted`).
    #[serde(default)]
    pub tasks: BTreeMap<String, String>,
    /// Number of open incidents.
    #[serde(default)]
    pub incidents: Option<usize>,
    /// A subset of the instance data that must match.
    #[serde(default)]
    pub data: Option<serde_json::Value>,
    /// The current cluster time.
    #[serde(default)]
    pub now: Option<String>,
}

/// Why a scenario file does not parse, or a step cannot run or did not do what it expected.
/// The message is what `lockstep test` reports for the step.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("scenario file: {0}")]
    Parse(serde_yaml_ng::Error),
    #[error(transparent)]
    Duration(#[from] DurationError),
    #[error(transparent)]
    Timestamp(#[from] TimestampError),
    // The step is written wrong for its situation.
    #[error("this step needs `as: <actor>`")]
    NoActor,
    #[error("actor `{name}` is not declared under `actors`")]
    UnknownActor { name: String },
    #[error("no instance yet: start with a `create` step")]
    NoInstance,
    #[error("a scenario creates one instance; `create` appears twice")]
    CreateTwice,
    #[error("advance_to {target} is before the current time {now}")]
    AdvanceBackwards { target: String, now: Timestamp },
    #[error("no open incident to resolve")]
    NoOpenIncident,
    #[error("no {status:?} task on queue `{queue}`")]
    NoTask { status: TaskStatus, queue: String },
    // The engine refused an action the step did not expect it to refuse.
    #[error("refused {code}: {message}")]
    Refused { code: &'static str, message: String },
    #[error("lease refused: {message}")]
    LeaseRefused { message: String },
    #[error("timer {timer_id} refused: {message}")]
    TimerRefused { timer_id: String, message: String },
    // The step expected a refusal.
    #[error("expected refusal {expected}, got {code}: {message}")]
    OtherRefusal {
        expected: String,
        code: &'static str,
        message: String,
    },
    #[error("expected refusal {expected}, but the action was applied")]
    Applied { expected: String },
    #[error("expected refusal {expected}, but the step has no action")]
    NoAction { expected: String },
    // An expectation about the instance or the clock does not hold.
    #[error("expected time {want}, it is {now}")]
    Time { want: Timestamp, now: Timestamp },
    #[error("expected state `{want}`, instance is in `{got}`")]
    State { want: String, got: String },
    #[error("expected SLA `{name}` to be {want}, it is {got} ({view:?})")]
    Sla {
        name: String,
        want: String,
        got: &'static str,
        view: Option<SlaView>,
    },
    #[error("expected timers {want:?}, armed are {got:?}")]
    Timers { want: Vec<String>, got: Vec<String> },
    #[error("expected timer {label} due at {want}, it is due at {got}")]
    TimerDue {
        label: String,
        want: Timestamp,
        got: Timestamp,
    },
    #[error("expected the newest task on `{queue}` to be {want}, it is {got}")]
    Task {
        queue: String,
        want: String,
        got: String,
    },
    #[error("expected {want} open incident(s), there are {open}")]
    Incidents { want: usize, open: usize },
    #[error("instance data differs at `{path}`: {data}")]
    Data {
        path: String,
        data: serde_json::Value,
    },
}

/// A step that did not do what it expected.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Failure {
    pub scenario: String,
    /// 1-based step number.
    pub step: usize,
    pub message: String,
}

/// The result of one scenario.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ScenarioReport {
    pub scenario: String,
    pub steps: usize,
    pub failure: Option<Failure>,
}

/// Parses a scenario file.
pub fn parse(text: &str) -> Result<ScenarioFile, ScenarioError> {
    serde_yaml_ng::from_str(text).map_err(ScenarioError::Parse)
}

/// Runs every scenario of a file against a compiled definition.
pub fn run_file(file: &ScenarioFile, definition: &CompiledDefinition) -> Vec<ScenarioReport> {
    file.scenarios
        .iter()
        .map(|s| run(file, s, definition))
        .collect()
}

fn run(
    file: &ScenarioFile,
    scenario: &Scenario,
    definition: &CompiledDefinition,
) -> ScenarioReport {
    let mut sim = Sim {
        file,
        definition,
        instance: None,
        now: Timestamp::from_micros(0),
        instance_id: slug(&scenario.name),
    };
    let fail = |step: usize, message: String| ScenarioReport {
        scenario: scenario.name.clone(),
        steps: scenario.steps.len(),
        failure: Some(Failure {
            scenario: scenario.name.clone(),
            step,
            message,
        }),
    };
    let start = scenario.start.as_ref().or(file.start.as_ref());
    if let Some(start) = start {
        match Timestamp::parse_rfc3339(start) {
            Ok(t) => sim.now = t,
            Err(e) => return fail(0, format!("start: {e}")),
        }
    }
    for (i, step) in scenario.steps.iter().enumerate() {
        if let Err(e) = sim.step(step) {
            return fail(i + 1, e.to_string());
        }
    }
    ScenarioReport {
        scenario: scenario.name.clone(),
        steps: scenario.steps.len(),
        failure: None,
    }
}

fn slug(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

/// A label for a timer that does not depend on generated ids.
pub fn timer_label(instance: &Instance, kind: &TimerKind) -> String {
    let queue = |task_id: &str| {
        instance
            .tasks
            .get(task_id)
            .map(|t| t.queue.clone())
            .unwrap_or_else(|| task_id.to_string())
    };
    match kind {
        TimerKind::StateExpiry { state, .. } => format!("expiry:{state}"),
        TimerKind::SlaWarning { sla, percent } => format!("sla:{sla}:warn{percent}"),
        TimerKind::SlaBreach { sla } => format!("sla:{sla}:breach"),
        TimerKind::TaskLease { task_id, .. } => format!("task:{}:lease", queue(task_id)),
        TimerKind::TaskRetry { task_id, .. } => format!("task:{}:retry", queue(task_id)),
    }
}

struct Sim<'a> {
    file: &'a ScenarioFile,
    definition: &'a CompiledDefinition,
    instance: Option<Instance>,
    now: Timestamp,
    instance_id: String,
}

impl Sim<'_> {
    fn actor(&self, step: &Step) -> Result<Actor, ScenarioError> {
        let name = step.actor.as_deref().ok_or(ScenarioError::NoActor)?;
        let spec = self
            .file
            .actors
            .get(name)
            .ok_or_else(|| ScenarioError::UnknownActor {
                name: name.to_string(),
            })?;
        Ok(Actor {
            id: name.to_string(),
            kind: spec.kind,
            roles: spec.roles.clone(),
            claims: spec.claims.clone(),
            authn: "scenario".into(),
        })
    }

    fn instance(&self) -> Result<&Instance, ScenarioError> {
        self.instance.as_ref().ok_or(ScenarioError::NoInstance)
    }

    fn step(&mut self, step: &Step) -> Result<(), ScenarioError> {
        let outcome = self.act(step)?;
        let expect = step.expect.clone().unwrap_or_default();
        match (&outcome, &expect.refused) {
            (Some(Outcome::Refused(r)), Some(code)) if r.code.as_str() == code => {}
            (Some(Outcome::Refused(r)), Some(code)) => {
                return Err(ScenarioError::OtherRefusal {
                    expected: code.clone(),
                    code: r.code.as_str(),
                    message: r.message.clone(),
                });
            }
            (Some(Outcome::Refused(r)), None) => {
                return Err(ScenarioError::Refused {
                    code: r.code.as_str(),
                    message: r.message.clone(),
                });
            }
            (Some(Outcome::Applied(_)), Some(code)) => {
                return Err(ScenarioError::Applied {
                    expected: code.clone(),
                });
            }
            (None, Some(code)) => {
                return Err(ScenarioError::NoAction {
                    expected: code.clone(),
                });
            }
            (Some(Outcome::Applied(change)), None) => self.instance = Some(change.instance.clone()),
            (None, None) => {}
        }
        self.check(&expect)
    }

    fn act(&mut self, step: &Step) -> Result<Option<Outcome>, ScenarioError> {
        if let Some(d) = &step.advance {
            let ms = Duration::parse(&d.0)?.as_ms();
            self.advance_to(self.now.add_ms(ms))?;
            return Ok(None);
        }
        if let Some(t) = &step.advance_to {
            let target = Timestamp::parse_rfc3339(t)?;
            if target < self.now {
                return Err(ScenarioError::AdvanceBackwards {
                    target: t.clone(),
                    now: self.now,
                });
            }
            self.advance_to(target)?;
            return Ok(None);
        }
        let payload = step.payload.clone().unwrap_or(serde_json::Value::Null);
        let command = if let Some(create) = &step.create {
            if self.instance.is_some() {
                return Err(ScenarioError::CreateTwice);
            }
            Command::Create {
                instance_id: self.instance_id.clone(),
                key: create.key.clone(),
                data: create.data.clone(),
                actor: self.actor(step)?,
            }
        } else if let Some(t) = &step.transition {
            Command::Transition {
                transition: t.clone(),
                payload,
                actor: self.actor(step)?,
                expected_version: step.expected_version,
            }
        } else if let Some(e) = &step.event {
            Command::Event {
                event: e.clone(),
                payload,
                actor: self.actor(step)?,
            }
        } else if let Some(t) = &step.lease_task {
            let task_id = self.task_on(&t.queue, TaskStatus::Ready)?;
            Command::LeaseTask {
                task_id,
                worker: self.actor(step)?,
                term: 1,
            }
        } else if let Some(t) = step.complete_task.as_ref().or(step.fail_task.as_ref()) {
            return self.finish_task(step, t).map(Some);
        } else if let Some(r) = &step.resolve_incident {
            let instance = self.instance()?;
            let incident = instance
                .incidents
                .values()
                .find(|i| i.resolved_at.is_none())
                .ok_or(ScenarioError::NoOpenIncident)?;
            Command::ResolveIncident {
                incident_id: incident.id.clone(),
                retry_task: r.retry,
                actor: self.actor(step)?,
            }
        } else {
            return Ok(None);
        };
        Ok(Some(evaluate(
            self.definition,
            self.instance.as_ref(),
            &command,
            self.now,
        )))
    }

    /// Leases the task if it is ready, then completes or fails it.
    fn finish_task(&mut self, step: &Step, t: &TaskStep) -> Result<Outcome, ScenarioError> {
        let worker = self.actor(step)?;
        let task_id = match self.task_on(&t.queue, TaskStatus::Leased) {
            Ok(id) => id,
            Err(_) => {
                let id = self.task_on(&t.queue, TaskStatus::Ready)?;
                let lease = Command::LeaseTask {
                    task_id: id.clone(),
                    worker: worker.clone(),
                    term: 1,
                };
                match evaluate(self.definition, self.instance.as_ref(), &lease, self.now) {
                    Outcome::Applied(change) => self.instance = Some(change.instance),
                    Outcome::Refused(r) => {
                        return Err(ScenarioError::LeaseRefused { message: r.message });
                    }
                }
                id
            }
        };
        let task = &self.instance()?.tasks[&task_id];
        let token = task.lease.unwrap_or(LeaseToken {
            term: 0,
            attempt: 0,
        });
        let command = match (&step.complete_task, &step.fail_task) {
            (Some(_), _) => Command::CompleteTask {
                task_id,
                token,
                result: t.result.clone().unwrap_or(serde_json::json!({})),
                worker,
            },
            _ => Command::FailTask {
                task_id,
                token,
                error: t.error.clone().unwrap_or_else(|| "failed".into()),
                retryable: t.retryable,
                worker,
            },
        };
        Ok(evaluate(
            self.definition,
            self.instance.as_ref(),
            &command,
            self.now,
        ))
    }

    fn task_on(&self, queue: &str, status: TaskStatus) -> Result<String, ScenarioError> {
        let instance = self.instance()?;
        instance
            .tasks
            .values()
            .filter(|t| t.queue == queue && t.status == status)
            .min_by_key(|t| t.created)
            .map(|t| t.id.clone())
            .ok_or_else(|| ScenarioError::NoTask {
                status,
                queue: queue.to_string(),
            })
    }

    /// Fires due timers in order, each at its due time, then sets the clock to `target`.
    fn advance_to(&mut self, target: Timestamp) -> Result<(), ScenarioError> {
        // Bounded: a definition cannot arm timers faster than this without a bug.
        for _ in 0..10_000 {
            let Some(instance) = &self.instance else {
                break;
            };
            let next = instance
                .timers
                .values()
                .filter(|t| t.due_at <= target)
                .min_by_key(|t| (t.due_at, t.id.clone()));
            let Some(timer) = next else { break };
            self.now = self.now.max(timer.due_at);
            let command = Command::FireTimer {
                timer_id: timer.id.clone(),
            };
            match evaluate(self.definition, Some(instance), &command, self.now) {
                Outcome::Applied(change) => self.instance = Some(change.instance),
                Outcome::Refused(r) => {
                    return Err(ScenarioError::TimerRefused {
                        timer_id: timer.id.clone(),
                        message: r.message,
                    });
                }
            }
        }
        self.now = target;
        Ok(())
    }

    fn check(&self, expect: &Expect) -> Result<(), ScenarioError> {
        if let Some(now) = &expect.now {
            let want = Timestamp::parse_rfc3339(now)?;
            if want != self.now {
                return Err(ScenarioError::Time {
                    want,
                    now: self.now,
                });
            }
        }
        let needs_instance = expect.state.is_some()
            || !expect.sla.is_empty()
            || expect.timers.is_some()
            || !expect.tasks.is_empty()
            || expect.incidents.is_some()
            || expect.data.is_some();
        if !needs_instance {
            return Ok(());
        }
        let instance = self.instance()?;
        if let Some(state) = &expect.state
            && *state != instance.state
        {
            return Err(ScenarioError::State {
                want: state.clone(),
                got: instance.state.clone(),
            });
        }
        let views = instance.sla_views(self.definition, self.now);
        for (name, want) in &expect.sla {
            let got = match views.get(name) {
                None => "absent",
                Some(v) if v.breached => "breached",
                Some(v) if v.status == SlaStatus::Stopped => "stopped",
                Some(v) if v.status == SlaStatus::Paused => "paused",
                Some(v) if v.warned.is_some() => "warned",
                Some(_) => "running",
            };
            if got != want {
                return Err(ScenarioError::Sla {
                    name: name.clone(),
                    want: want.clone(),
                    got,
                    view: views.get(name).cloned(),
                });
            }
        }
        if let Some(want) = &expect.timers {
            let got: BTreeMap<String, Timestamp> = instance
                .timers
                .values()
                .map(|t| (timer_label(instance, &t.kind), t.due_at))
                .collect();
            if !got.keys().eq(want.keys()) {
                return Err(ScenarioError::Timers {
                    want: want.keys().cloned().collect(),
                    got: got.keys().cloned().collect(),
                });
            }
            for (label, due) in want {
                if due != "any" {
                    let due_at = Timestamp::parse_rfc3339(due)?;
                    if got[label] != due_at {
                        return Err(ScenarioError::TimerDue {
                            label: label.clone(),
                            want: due_at,
                            got: got[label],
                        });
                    }
                }
            }
        }
        for (queue, want) in &expect.tasks {
            let newest = instance
                .tasks
                .values()
                .filter(|t| t.queue == *queue)
                .max_by_key(|t| t.created);
            let got = newest
                .map(|t| format!("{:?}", t.status).to_lowercase())
                .unwrap_or_else(|| "none".into());
            if got != *want {
                return Err(ScenarioError::Task {
                    queue: queue.clone(),
                    want: want.clone(),
                    got,
                });
            }
        }
        if let Some(want) = expect.incidents {
            let open = instance
                .incidents
                .values()
                .filter(|i| i.resolved_at.is_none())
                .count();
            if open != want {
                return Err(ScenarioError::Incidents { want, open });
            }
        }
        if let Some(want) = &expect.data
            && let Some(path) = json_mismatch(want, &instance.data, "data")
        {
            return Err(ScenarioError::Data {
                path,
                data: instance.data.clone(),
            });
        }
        Ok(())
    }
}

/// The first path at which `want` is not contained in `got`.
fn json_mismatch(want: &serde_json::Value, got: &serde_json::Value, path: &str) -> Option<String> {
    match (want, got) {
        (serde_json::Value::Object(w), serde_json::Value::Object(g)) => {
            w.iter().find_map(|(k, v)| match g.get(k) {
                Some(gv) => json_mismatch(v, gv, &format!("{path}.{k}")),
                None => Some(format!("{path}.{k}")),
            })
        }
        (serde_json::Value::Number(a), serde_json::Value::Number(b))
            if a.as_f64() == b.as_f64() =>
        {
            None
        }
        (w, g) if w == g => None,
        _ => Some(path.to_string()),
    }
}
