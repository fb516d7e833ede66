//! Golden tests of `evaluate`: for each command kind, the whole outcome it emits — the
//! instance after, the audit record, the timers armed and cancelled, the effects — compared
//! with a reviewed file in `tests/golden/` (the command and its outcome, as JSON). A change
//! to the engine that moves any field of any of them shows up here as a diff, not only the
//! fields a behaviour test happens to look at (openraft's engine tests work the same way).
//!
//! One scripted run of a small workflow (`GOLDEN`) takes every command kind at least once:
//! three instances, a task that is leased, heart-beaten, failed, retried, exhausted into an
//! incident, resolved and completed, an SLA warning and a state expiry fired, an event.
//!
//! After an intended change, write the files again and review the diff:
//! `LOCKSTEP_BLESS=1 cargo test -p lockstep-core --test golden`.

use std::path::PathBuf;

use lockstep_core::engine::{Change, LeaseToken, TimerKind};
use lockstep_core::{
    Actor, ActorKind, Command, CompiledDefinition, Instance, Limits, Outcome, Timestamp, evaluate,
    validate,
};
use serde_json::json;

const GOLDEN: &str = r#"
workflow: golden
description: Every command kind of the engine, for the golden tests.
data:
  type: object
  required: [owner]
  properties:
    owner: { type: string }
    outcome: { type: string }
states:
  open: { initial: true, expires: { after: 30d, transition: abandon } }
  working: {}
  escalated: {}
  done: { terminal: true }
  dropped: { terminal: true }
slas:
  response:
    start: { enter: working }
    stop: { enter: [done, dropped] }
    within: 4h
    warn_at: [50%]
    on_breach: { transition: escalate }
transitions:
  start:
    from: open
    to: working
    allow: "actor.id == instance.data.owner"
    effects:
      - task:
          queue: jobs
          type: do-the-work
          retry: { max_attempts: 2, initial: 10s }
          timeout: 30s
          on_complete: finish
  finish: { from: [working, escalated], to: done, allow: "actor.kind == 'worker'" }
  close: { from: [working, escalated], to: done, on: job.closed, allow: "actor.kind == 'service'" }
  escalate: { from: working, to: escalated, system: true, effects: [{ emit: { event: golden.escalated } }] }
  abandon: { from: open, to: dropped, system: true }
"#;

fn definition() -> CompiledDefinition {
    validate::compile(Some("golden.yaml"), GOLDEN, &Limits::default())
        .expect("the golden workflow compiles")
}

/// 2026-11-16T08:00:00Z, a Monday, plus `seconds`.
fn at(seconds: i64) -> Timestamp {
    Timestamp::from_millis(1_795_334_400_000 + seconds * 1_000)
}

fn owner() -> Actor {
    Actor::new("olive", ActorKind::Human, &["staff"])
}

fn worker() -> Actor {
    Actor::new("w-1", ActorKind::Worker, &[])
}

/// One step of the script: its file name, the command and what `evaluate` made of it.
struct Step {
    name: String,
    command: Command,
    outcome: Outcome,
}

/// Drives instances through the script, keeping each one's latest version.
struct Script {
    definition: CompiledDefinition,
    steps: Vec<Step>,
}

impl Script {
    /// Evaluates `command` against `instance` at `at`, records the step, and returns the
    /// instance after it (the command must apply).
    fn run(
        &mut self,
        name: &str,
        instance: Option<&Instance>,
        command: Command,
        at: Timestamp,
    ) -> Instance {
        let outcome = evaluate(&self.definition, instance, &command, at);
        let after = match &outcome {
            Outcome::Applied(change) => {
                assert_eq!(change.check(&self.definition, instance), Ok(()), "{name}");
                change.instance.clone()
            }
            Outcome::Refused(r) => panic!("{name} was refused: {r:?}"),
        };
        self.steps.push(Step {
            name: format!("{:02}-{name}", self.steps.len() + 1),
            command,
            outcome,
        });
        after
    }
}

fn timer_id(instance: &Instance, kind: impl Fn(&TimerKind) -> bool) -> String {
    instance
        .timers
        .values()
        .find(|t| kind(&t.kind))
        .map(|t| t.id.clone())
        .unwrap_or_else(|| panic!("no such timer armed: {:?}", instance.timers))
}

fn token(instance: &Instance, task_id: &str) -> LeaseToken {
    instance.tasks[task_id].lease.expect("the task is leased")
}

/// The whole script; every step applies.
fn script() -> Vec<Step> {
    let mut s = Script {
        definition: definition(),
        steps: Vec::new(),
    };
    let create = |id: &str| Command::Create {
        instance_id: id.into(),
        key: Some(format!("key-{id}")),
        data: json!({ "owner": "olive" }),
        actor: owner(),
    };
    let start = Command::Transition {
        transition: "start".into(),
        payload: json!({ "outcome": "started" }),
        actor: owner(),
        expected_version: Some(1),
    };

    // Instance 1: the task's whole life.
    let i = s.run("create", None, create("i-1"), at(0));
    let i = s.run("transition", Some(&i), start.clone(), at(60));
    let task = i.tasks.keys().next().expect("start made a task").clone();
    let lease = |term| Command::LeaseTask {
        task_id: task.clone(),
        worker: worker(),
        term,
    };
    let i = s.run("lease_task", Some(&i), lease(1), at(61));
    let i = s.run(
        "heartbeat_task",
        Some(&i),
        Command::HeartbeatTask {
            task_id: task.clone(),
            token: token(&i, &task),
            worker: worker(),
        },
        at(70),
    );
    let i = s.run(
        "fail_task-retryable",
        Some(&i),
        Command::FailTask {
            task_id: task.clone(),
            token: token(&i, &task),
            error: "the ERP answered 503".into(),
            retryable: true,
            worker: worker(),
        },
        at(75),
    );
    let retry = timer_id(&i, |k| matches!(k, TimerKind::TaskRetry { .. }));
    let i = s.run(
        "fire_timer-task_retry",
        Some(&i),
        Command::FireTimer { timer_id: retry },
        at(85),
    );
    let i = s.run("lease_task-again", Some(&i), lease(2), at(86));
    let i = s.run(
        "fail_task-exhausted",
        Some(&i),
        Command::FailTask {
            task_id: task.clone(),
            token: token(&i, &task),
            error: "the ERP answered 503 again".into(),
            retryable: true,
            worker: worker(),
        },
        at(90),
    );
    let incident = i
        .incidents
        .keys()
        .next()
        .expect("an exhausted task opens an incident")
        .clone();
    let i = s.run(
        "resolve_incident",
        Some(&i),
        Command::ResolveIncident {
            incident_id: incident,
            retry_task: true,
            actor: Actor::new("oscar", ActorKind::Human, &["operator"]),
        },
        at(120),
    );
    let i = s.run("lease_task-after_incident", Some(&i), lease(2), at(121));
    s.run(
        "complete_task",
        Some(&i),
        Command::CompleteTask {
            task_id: task.clone(),
            token: token(&i, &task),
            result: json!({ "erp_id": "E-7" }),
            worker: worker(),
        },
        at(125),
    );

    // Instance 2: its SLA warns at half its budget, then an event closes it.
    let j = s.run("create-second", None, create("i-2"), at(200));
    let j = s.run("transition-second", Some(&j), start, at(260));
    let j = s.run(
        "fire_timer-sla_warning",
        Some(&j),
        Command::FireTimer {
            timer_id: timer_id(&j, |k| matches!(k, TimerKind::SlaWarning { .. })),
        },
        at(260 + 2 * 3600),
    );
    s.run(
        "event",
        Some(&j),
        Command::Event {
            event: "job.closed".into(),
            payload: json!({ "outcome": "closed by the service desk" }),
            actor: Actor::new("desk", ActorKind::Service, &[]),
        },
        at(260 + 2 * 3600 + 10),
    );

    // Instance 3: left open until its state expires.
    let k = s.run("create-third", None, create("i-3"), at(400));
    s.run(
        "fire_timer-state_expiry",
        Some(&k),
        Command::FireTimer {
            timer_id: timer_id(&k, |t| matches!(t, TimerKind::StateExpiry { .. })),
        },
        at(400 + 30 * 24 * 3600),
    );
    s.steps
}

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// Compares the steps whose file name contains `kind` with their golden files (or writes
/// them, with `LOCKSTEP_BLESS=1`).
fn check(kind: &str) {
    let bless = std::env::var_os("LOCKSTEP_BLESS").is_some_and(|v| v == "1");
    let steps: Vec<Step> = script()
        .into_iter()
        .filter(|s| s.name[3..].split('-').next() == Some(kind))
        .collect();
    assert!(!steps.is_empty(), "the script has no `{kind}` step");
    let mut wrong = Vec::new();
    for step in steps {
        let text = serde_json::to_string_pretty(&json!({
            "command": step.command,
            "outcome": step.outcome,
        }))
        .unwrap()
            + "\n";
        let path = golden_dir().join(format!("{}.json", step.name));
        if bless {
            std::fs::create_dir_all(golden_dir()).unwrap();
            std::fs::write(&path, &text).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; write it with LOCKSTEP_BLESS=1 cargo test -p lockstep-core --test golden, and review it",
                path.display()
            )
        });
        if expected != text {
            let line = expected
                .lines()
                .zip(text.lines())
                .position(|(a, b)| a != b)
                .unwrap_or_else(|| expected.lines().count().min(text.lines().count()));
            wrong.push(format!(
                "{} differs from line {}:\n  golden: {}\n  now:    {}",
                path.display(),
                line + 1,
                expected.lines().nth(line).unwrap_or("(end)"),
                text.lines().nth(line).unwrap_or("(end)"),
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{}\nIf the change is intended: LOCKSTEP_BLESS=1 cargo test -p lockstep-core --test golden, then review the diff",
        wrong.join("\n")
    );
}

#[test]
fn create() {
    check("create");
}

#[test]
fn transition() {
    check("transition");
}

#[test]
fn event() {
    check("event");
}

#[test]
fn fire_timer() {
    check("fire_timer");
}

#[test]
fn lease_task() {
    check("lease_task");
}

#[test]
fn heartbeat_task() {
    check("heartbeat_task");
}

#[test]
fn complete_task() {
    check("complete_task");
}

#[test]
fn fail_task() {
    check("fail_task");
}

#[test]
fn resolve_incident() {
    check("resolve_incident");
}

/// The script's changes, as `Change`s, are what the golden files hold: nothing is left out
/// of the comparison by serialization (a field skipped when empty is still compared).
#[test]
fn every_step_applies_and_the_files_cover_every_command_kind() {
    let steps = script();
    let kinds: std::collections::BTreeSet<&str> = steps
        .iter()
        .map(|s| s.name[3..].split('-').next().unwrap())
        .collect();
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        [
            "complete_task",
            "create",
            "event",
            "fail_task",
            "fire_timer",
            "heartbeat_task",
            "lease_task",
            "resolve_incident",
            "transition"
        ]
    );
    for step in &steps {
        let change: &Change = step.outcome.change().expect("every step applies");
        let back: Change = serde_json::from_value(serde_json::to_value(change).unwrap()).unwrap();
        assert_eq!(
            &back, change,
            "{}: the JSON form holds the whole change",
            step.name
        );
    }
}
