//! `evaluate(definition, instance, command, at) -> Outcome`: the pure engine.
//!
//! An outcome is either a [`Refusal`] that changes nothing, or a [`Change`]: the new instance,
//! its audit record, the timers to arm and cancel and the effects to dispatch. The caller (the
//! replicated state machine) writes all of it in one batch. Evaluation reads no clock: `at` is
//! the cluster time stamped by the leader.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::audit::{ActorRecord, AuditKind, AuditRecord, PredicateTrace, TimerFiring};
use crate::canonical::{canonical_json, sha256_hex};
use crate::expr::{Expression, Scope, json_value, map_value, string_value, timestamp_value};
use crate::limits::check_json_shape;
use crate::retry::RetryPolicy;
use crate::sla::{Clock, Milestone, SlaClock, SlaView, on_enter};
use crate::time::Timestamp;
use crate::validate::{CompiledDefinition, EffectSpec, Gate, TransitionSpec};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorKind {
    Human,
    Service,
    Worker,
    System,
}

impl ActorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::Human => "human",
            ActorKind::Service => "service",
            ActorKind::Worker => "worker",
            ActorKind::System => "system",
        }
    }
}

/// The authenticated principal behind a command. It comes from credentials checked at the
/// edge, never from a field the caller fills in.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Actor {
    pub id: String,
    pub kind: ActorKind,
    pub roles: Vec<String>,
    #[serde(with = "crate::json_field::map")]
    pub claims: BTreeMap<String, serde_json::Value>,
    /// How the actor was authenticated: `jwt`, `mtls`, `dev-header`, `engine`.
    pub authn: String,
}

impl Actor {
    /// The engine itself, e.g. `system:sla` or `system:timer`.
    pub fn system(name: &str) -> Actor {
        Actor {
            id: format!("system:{name}"),
            kind: ActorKind::System,
            roles: Vec::new(),
            claims: BTreeMap::new(),
            authn: "engine".into(),
        }
    }

    pub fn new(id: &str, kind: ActorKind, roles: &[&str]) -> Actor {
        Actor {
            id: id.into(),
            kind,
            roles: roles.iter().map(|r| r.to_string()).collect(),
            claims: BTreeMap::new(),
            authn: "test".into(),
        }
    }

    pub(crate) fn record(&self) -> ActorRecord {
        ActorRecord {
            id: self.id.clone(),
            kind: self.kind.as_str().into(),
            roles: self.roles.clone(),
            authn: self.authn.clone(),
        }
    }

    fn cel(&self) -> cel::Value {
        let claims: serde_json::Map<String, serde_json::Value> =
            self.claims.clone().into_iter().collect();
        map_value(vec![
            ("id", string_value(&self.id)),
            ("kind", string_value(self.kind.as_str())),
            (
                "roles",
                cel::Value::List(std::sync::Arc::new(
                    self.roles.iter().map(|r| string_value(r)).collect(),
                )),
            ),
            ("claims", json_value(&serde_json::Value::Object(claims))),
            ("authn", string_value(&self.authn)),
        ])
    }
}

/// One run of a definition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    pub id: String,
    pub workflow: String,
    pub definition_version: String,
    pub key: Option<String>,
    pub state: String,
    #[serde(with = "crate::json_field::value")]
    pub data: serde_json::Value,
    pub created_by: String,
    pub created_at: Timestamp,
    pub entered_at: Timestamp,
    pub updated_at: Timestamp,
    /// Incremented by every applied change; `expected_version` compares against it.
    pub version: u64,
    pub slas: BTreeMap<String, SlaClock>,
    /// Armed timers by id. A timer fires only while it is in this map.
    pub timers: BTreeMap<String, Timer>,
    pub tasks: BTreeMap<String, Task>,
    pub incidents: BTreeMap<String, Incident>,
}

impl Instance {
    /// SLA views at `at`, by SLA name.
    pub fn sla_views(
        &self,
        definition: &CompiledDefinition,
        at: Timestamp,
    ) -> BTreeMap<String, SlaView> {
        self.slas
            .iter()
            .map(|(name, clock)| {
                let cal = definition
                    .slas
                    .get(name)
                    .and_then(|s| s.calendar.as_ref())
                    .and_then(|c| definition.calendars.get(c));
                (name.clone(), clock.view(Clock(cal), at))
            })
            .collect()
    }

    fn cel(&self) -> cel::Value {
        map_value(vec![
            ("id", string_value(&self.id)),
            ("workflow", string_value(&self.workflow)),
            (
                "key",
                self.key
                    .as_deref()
                    .map(string_value)
                    .unwrap_or(cel::Value::Null),
            ),
            ("state", string_value(&self.state)),
            ("data", json_value(&self.data)),
            ("created_by", string_value(&self.created_by)),
            ("entered_at", timestamp_value(self.entered_at)),
            (
                "version",
                cel::Value::Int(i64::try_from(self.version).unwrap_or(i64::MAX)),
            ),
        ])
    }
}

/// A replicated timer: fired only through the log, and only while armed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timer {
    pub id: String,
    pub instance_id: String,
    pub due_at: Timestamp,
    pub kind: TimerKind,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimerKind {
    StateExpiry { state: String, transition: String },
    SlaWarning { sla: String, percent: u8 },
    SlaBreach { sla: String },
    TaskLease { task_id: String, attempt: u32 },
    TaskRetry { task_id: String, attempt: u32 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Waiting for a worker to lease it.
    Ready,
    Leased,
    /// Failed, waiting for its retry backoff to pass.
    Backoff,
    Completed,
    /// The retry policy is exhausted.
    Exhausted,
}

/// The fencing token of a lease: the Raft term in which it was granted and the attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseToken {
    pub term: u64,
    pub attempt: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: String,
    pub queue: String,
    pub task_type: String,
    /// The transition whose effect created the task.
    pub origin: String,
    /// Creation order on the instance: (instance version that created it, effect index).
    pub created: (u64, u32),
    #[serde(with = "crate::json_field::value")]
    pub input: serde_json::Value,
    pub status: TaskStatus,
    pub attempt: u32,
    pub first_attempt_at: Option<Timestamp>,
    pub lease: Option<LeaseToken>,
    pub worker: Option<String>,
    pub lease_expires_at: Option<Timestamp>,
    pub retry: RetryPolicy,
    pub timeout_ms: u64,
    pub on_complete: Option<String>,
    pub on_exhausted: Option<String>,
    pub last_error: Option<String>,
    #[serde(with = "crate::json_field::option")]
    pub result: Option<serde_json::Value>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incident {
    pub id: String,
    pub task_id: Option<String>,
    pub reason: String,
    pub opened_at: Timestamp,
    pub resolved_at: Option<Timestamp>,
}

/// What an actor, or the engine, asks of an instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    Create {
        instance_id: String,
        key: Option<String>,
        #[serde(with = "crate::json_field::value")]
        data: serde_json::Value,
        actor: Actor,
    },
    Transition {
        transition: String,
        #[serde(with = "crate::json_field::value")]
        payload: serde_json::Value,
        actor: Actor,
        expected_version: Option<u64>,
    },
    Event {
        event: String,
        #[serde(with = "crate::json_field::value")]
        payload: serde_json::Value,
        actor: Actor,
    },
    FireTimer {
        timer_id: String,
    },
    LeaseTask {
        task_id: String,
        worker: Actor,
        term: u64,
    },
    HeartbeatTask {
        task_id: String,
        token: LeaseToken,
        worker: Actor,
    },
    CompleteTask {
        task_id: String,
        token: LeaseToken,
        #[serde(with = "crate::json_field::value")]
        result: serde_json::Value,
        worker: Actor,
    },
    FailTask {
        task_id: String,
        token: LeaseToken,
        error: String,
        retryable: bool,
        worker: Actor,
    },
    ResolveIncident {
        incident_id: String,
        retry_task: bool,
        actor: Actor,
    },
}

/// Why a command was refused. Codes are stable and machine-readable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RefusalCode {
    /// The definition does not allow this transition from the current state.
    NotAllowedFromState,
    UnknownTransition,
    /// The `guard` predicate is false.
    GuardFalse,
    /// The `allow` predicate is false, or the transition has none for this actor.
    Forbidden,
    /// A `system: true` transition asked by a non-system actor, or the reverse.
    SystemOnly,
    /// A predicate failed to evaluate.
    PredicateError,
    GateNotYetOpen,
    GateExpired,
    PayloadInvalid,
    VersionConflict,
    LimitExceeded,
    EventUnmatched,
    TimerNotArmed,
    TaskNotFound,
    TaskNotReady,
    StaleLease,
    IncidentNotFound,
    WrongWorkflow,
    AlreadyExists,
    /// The workflow has no applied definition.
    UnknownWorkflow,
    /// No instance has this id (or business key).
    UnknownInstance,
    /// A definition did not validate.
    DefinitionInvalid,
    /// The workflow has no applied definition with this version.
    UnknownVersion,
    /// A migration's state mapping or selection does not fit the two versions or an
    /// instance (unknown or unmapped state, a terminal state mapped to a live one, ...).
    MigrationInvalid,
    /// The request id was already used, within the dedup retention, by a different request
    /// (another kind, target, transition, payload or actor). Last, so that refusals stored in
    /// the dedup table by earlier versions decode unchanged.
    RequestIdReused,
}

impl RefusalCode {
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalCode::NotAllowedFromState => "NOT_ALLOWED_FROM_STATE",
            RefusalCode::UnknownTransition => "UNKNOWN_TRANSITION",
            RefusalCode::GuardFalse => "GUARD_FALSE",
            RefusalCode::Forbidden => "FORBIDDEN",
            RefusalCode::SystemOnly => "SYSTEM_ONLY",
            RefusalCode::PredicateError => "PREDICATE_ERROR",
            RefusalCode::GateNotYetOpen => "GATE_NOT_YET_OPEN",
            RefusalCode::GateExpired => "GATE_EXPIRED",
            RefusalCode::PayloadInvalid => "PAYLOAD_INVALID",
            RefusalCode::VersionConflict => "VERSION_CONFLICT",
            RefusalCode::LimitExceeded => "LIMIT_EXCEEDED",
            RefusalCode::EventUnmatched => "EVENT_UNMATCHED",
            RefusalCode::TimerNotArmed => "TIMER_NOT_ARMED",
            RefusalCode::TaskNotFound => "TASK_NOT_FOUND",
            RefusalCode::TaskNotReady => "TASK_NOT_READY",
            RefusalCode::StaleLease => "STALE_LEASE",
            RefusalCode::IncidentNotFound => "INCIDENT_NOT_FOUND",
            RefusalCode::WrongWorkflow => "WRONG_WORKFLOW",
            RefusalCode::AlreadyExists => "ALREADY_EXISTS",
            RefusalCode::UnknownWorkflow => "UNKNOWN_WORKFLOW",
            RefusalCode::UnknownInstance => "UNKNOWN_INSTANCE",
            RefusalCode::DefinitionInvalid => "DEFINITION_INVALID",
            RefusalCode::UnknownVersion => "UNKNOWN_VERSION",
            RefusalCode::MigrationInvalid => "MIGRATION_INVALID",
            RefusalCode::RequestIdReused => "REQUEST_ID_REUSED",
        }
    }

    pub fn parse(text: &str) -> Option<RefusalCode> {
        ALL_REFUSALS.iter().copied().find(|c| c.as_str() == text)
    }
}

const ALL_REFUSALS: [RefusalCode; 25] = [
    RefusalCode::NotAllowedFromState,
    RefusalCode::UnknownTransition,
    RefusalCode::GuardFalse,
    RefusalCode::Forbidden,
    RefusalCode::SystemOnly,
    RefusalCode::PredicateError,
    RefusalCode::GateNotYetOpen,
    RefusalCode::GateExpired,
    RefusalCode::PayloadInvalid,
    RefusalCode::VersionConflict,
    RefusalCode::LimitExceeded,
    RefusalCode::EventUnmatched,
    RefusalCode::TimerNotArmed,
    RefusalCode::TaskNotFound,
    RefusalCode::TaskNotReady,
    RefusalCode::StaleLease,
    RefusalCode::IncidentNotFound,
    RefusalCode::WrongWorkflow,
    RefusalCode::AlreadyExists,
    RefusalCode::UnknownWorkflow,
    RefusalCode::UnknownInstance,
    RefusalCode::DefinitionInvalid,
    RefusalCode::UnknownVersion,
    RefusalCode::MigrationInvalid,
    RefusalCode::RequestIdReused,
];

/// A refused command: nothing changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub code: RefusalCode,
    pub message: String,
    /// The predicate or gate that refused, as written in the definition.
    pub predicate: Option<String>,
    /// For a gate not yet open: the earliest time at which the command would pass it.
    pub earliest_at: Option<Timestamp>,
}

impl Refusal {
    pub fn new(code: RefusalCode, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
            predicate: None,
            earliest_at: None,
        }
    }

    fn with_predicate(mut self, predicate: &str) -> Refusal {
        self.predicate = Some(predicate.to_string());
        self
    }
}

/// What a committed change asks the outside world to do.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    /// A task became ready for a worker on `queue`.
    TaskReady {
        task_id: String,
        queue: String,
        task_type: String,
    },
    /// A named event for the change feed.
    Emit { event: String },
}

/// An applied command.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub instance: Instance,
    pub audit: AuditRecord,
    /// Timers to arm (or re-arm with a new due time).
    pub timers_armed: Vec<Timer>,
    /// Ids of timers to cancel (including the one that fired).
    pub timers_cancelled: Vec<String>,
    pub effects: Vec<Effect>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)]
pub enum Outcome {
    Applied(Box<Change>),
    Refused(Refusal),
}

impl Outcome {
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            Outcome::Refused(r) => Some(r),
            Outcome::Applied(_) => None,
        }
    }

    pub fn change(&self) -> Option<&Change> {
        match self {
            Outcome::Applied(c) => Some(c),
            Outcome::Refused(_) => None,
        }
    }
}

/// Evaluates one command. `instance` is `None` only for [`Command::Create`].
/// Names the task a task command acted on in its audit record.
fn with_task(mut change: Change, task_id: &str) -> Change {
    change.audit.task_id = Some(task_id.to_string());
    change
}

/// Rules of evaluation that changed after commands were already in replicated logs.
///
/// A replica must decide an old log entry as the build that proposed it did, or replicas of
/// different builds (a rolling upgrade) and a replica replaying its log would diverge. So a
/// rule that refuses what was accepted before is switched on by the replicated log format
/// (`lockstep_raft::format`), at the same log index on every replica; [`Rules::CURRENT`] is
/// everything this build decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rules {
    /// Heartbeat, Complete and Fail with a lease token whose lease expired at the command's
    /// cluster time are refused `STALE_LEASE`, whether or not the lease-expiry timer fired
    /// (without it, a late worker's completion was accepted until the timer fired).
    pub lease_expiry_guard: bool,
    /// A deliberate bug for the mutation smoke ([`crate::mutation`]); `None` everywhere but
    /// in a debug build of `lockstepd` run with `LOCKSTEP_MUTATION`.
    pub mutation: Option<crate::mutation::Mutation>,
}

impl Rules {
    /// Every rule of this build.
    pub const CURRENT: Rules = Rules {
        lease_expiry_guard: true,
        mutation: None,
    };
    /// The rules of commit 5e60e31 and earlier (log formats 1 and 2).
    pub const BEFORE_LEASE_GUARD: Rules = Rules {
        lease_expiry_guard: false,
        mutation: None,
    };
}

/// Evaluates `command` under every rule of this build ([`Rules::CURRENT`]).
pub fn evaluate(
    definition: &CompiledDefinition,
    instance: Option<&Instance>,
    command: &Command,
    at: Timestamp,
) -> Outcome {
    evaluate_under(definition, instance, command, at, Rules::CURRENT)
}

/// Evaluates `command` under `rules` (as the replicated log format decides them).
pub fn evaluate_under(
    definition: &CompiledDefinition,
    instance: Option<&Instance>,
    command: &Command,
    at: Timestamp,
    rules: Rules,
) -> Outcome {
    let result = match (command, instance) {
        (
            Command::Create {
                instance_id,
                key,
                data,
                actor,
            },
            None,
        ) => create(definition, instance_id, key.as_deref(), data, actor, at),
        (Command::Create { instance_id, .. }, Some(_)) => Err(Refusal::new(
            RefusalCode::AlreadyExists,
            format!("instance `{instance_id}` already exists"),
        )),
        (_, None) => Err(Refusal::new(
            RefusalCode::TaskNotFound,
            "the command needs an existing instance",
        )),
        (command, Some(instance))
            if instance.workflow != definition.name()
                || instance.definition_version != definition.version =>
        {
            Err(Refusal::new(
                RefusalCode::WrongWorkflow,
                format!(
                    "instance `{}` runs {}@{}, not {}@{} ({command:?})",
                    instance.id,
                    instance.workflow,
                    short(&instance.definition_version),
                    definition.name(),
                    short(&definition.version)
                ),
            ))
        }
        (command, Some(instance)) => Eval {
            definition,
            at,
            rules,
            before: instance,
        }
        .run(command),
    };
    match result {
        Ok(change) => Outcome::Applied(Box::new(change)),
        Err(refusal) => Outcome::Refused(refusal),
    }
}

pub(crate) fn short(version: &str) -> &str {
    &version[..version.len().min(12)]
}

fn create(
    definition: &CompiledDefinition,
    id: &str,
    key: Option<&str>,
    data: &serde_json::Value,
    actor: &Actor,
    at: Timestamp,
) -> Result<Change, Refusal> {
    check_data(definition, data)?;
    let mut instance = Instance {
        id: id.to_string(),
        workflow: definition.name().to_string(),
        definition_version: definition.version.clone(),
        key: key.map(str::to_owned),
        state: definition.initial.clone(),
        data: data.clone(),
        created_by: actor.id.clone(),
        created_at: at,
        entered_at: at,
        updated_at: at,
        version: 1,
        slas: BTreeMap::new(),
        timers: BTreeMap::new(),
        tasks: BTreeMap::new(),
        incidents: BTreeMap::new(),
    };
    let mut predicates = Vec::new();
    if let Some(allow) = &definition.create_allow {
        let scope = Scope::new(actor.cel(), instance.cel(), cel::Value::Null, at);
        predicate(
            allow,
            &scope,
            "create.allow",
            RefusalCode::Forbidden,
            &mut predicates,
        )?;
    }
    let mut work = Work {
        definition,
        at,
        instance: &mut instance,
        effects: Vec::new(),
        predicates,
        notes: Vec::new(),
    };
    work.enter_state(None);
    let Work {
        effects,
        predicates,
        notes,
        ..
    } = work;
    let audit = AuditRecord {
        kind: AuditKind::Created,
        workflow: instance.workflow.clone(),
        instance_id: instance.id.clone(),
        definition_version: instance.definition_version.clone(),
        transition: None,
        from: None,
        to: Some(instance.state.clone()),
        actor: actor.record(),
        at,
        instance_version: instance.version,
        payload_digest: Some(sha256_hex(&canonical_json(data))),
        predicates,
        timer: None,
        task_id: None,
        sla: None,
        note: join_notes(notes),
    };
    let timers_armed = instance.timers.values().cloned().collect();
    Ok(Change {
        instance,
        audit,
        timers_armed,
        timers_cancelled: Vec::new(),
        effects,
    })
}

/// Size and shape limits shared by instance data and payloads; `what` and `bytes_max` name
/// which limit applies.
fn check_json_limits(
    what: &str,
    value: &serde_json::Value,
    bytes_max: (&str, usize),
    definition: &CompiledDefinition,
) -> Result<(), Refusal> {
    let (limit_name, limit) = bytes_max;
    let size = serde_json::to_vec(value)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > limit {
        return Err(Refusal::new(
            RefusalCode::LimitExceeded,
            format!("{what} is {size} bytes, more than {limit_name} ({limit})"),
        ));
    }
    check_json_shape(value, &definition.limits)
        .map_err(|e| Refusal::new(RefusalCode::LimitExceeded, format!("{what}: {e}")))
}

pub(crate) fn check_data(
    definition: &CompiledDefinition,
    data: &serde_json::Value,
) -> Result<(), Refusal> {
    check_json_limits(
        "instance data",
        data,
        ("data_bytes_max", definition.limits.data_bytes_max),
        definition,
    )?;
    if !data.is_object() {
        return Err(Refusal::new(
            RefusalCode::PayloadInvalid,
            "instance data must be a JSON object",
        ));
    }
    if let Some(schema) = &definition.data_schema {
        schema.check(data).map_err(|e| {
            Refusal::new(
                RefusalCode::PayloadInvalid,
                format!("instance data does not match the data schema {e}"),
            )
        })?;
    }
    Ok(())
}

fn check_payload(
    definition: &CompiledDefinition,
    payload: &serde_json::Value,
) -> Result<(), Refusal> {
    check_json_limits(
        "payload",
        payload,
        ("payload_bytes_max", definition.limits.payload_bytes_max),
        definition,
    )
}

fn predicate(
    expr: &Expression,
    scope: &Scope,
    role: &str,
    code: RefusalCode,
    trace: &mut Vec<PredicateTrace>,
) -> Result<(), Refusal> {
    match expr.eval_bool(scope) {
        Ok(result) => {
            trace.push(PredicateTrace {
                role: role.into(),
                expression: expr.source().into(),
                result,
            });
            if result {
                Ok(())
            } else {
                let what = if code == RefusalCode::Forbidden {
                    "permission predicate"
                } else {
                    "guard"
                };
                Err(Refusal::new(
                    code,
                    format!("the {what} `{}` ({role}) is false", expr.source()),
                )
                .with_predicate(expr.source()))
            }
        }
        Err(e) => Err(
            Refusal::new(RefusalCode::PredicateError, format!("{role}: {e}"))
                .with_predicate(expr.source()),
        ),
    }
}

pub(crate) fn join_notes(notes: Vec<String>) -> Option<String> {
    (!notes.is_empty()).then(|| notes.join("; "))
}

/// Evaluation of a command against an existing instance.
struct Eval<'a> {
    definition: &'a CompiledDefinition,
    at: Timestamp,
    rules: Rules,
    before: &'a Instance,
}

/// How a transition is being taken.
struct Taking<'a> {
    actor: &'a Actor,
    payload: &'a serde_json::Value,
    expected_version: Option<u64>,
}

impl Eval<'_> {
    fn run(&self, command: &Command) -> Result<Change, Refusal> {
        match command {
            Command::Create { .. } => unreachable!("handled by evaluate"),
            Command::Transition {
                transition,
                payload,
                actor,
                expected_version,
            } => {
                let spec = self.transition_spec(transition)?;
                let taking = Taking {
                    actor,
                    payload,
                    expected_version: *expected_version,
                };
                self.finish(AuditKind::Transition, actor, Some(payload), |w| {
                    w.take(spec, &taking)
                })
            }
            Command::Event {
                event,
                payload,
                actor,
            } => self.event(event, payload, actor),
            Command::FireTimer { timer_id } => self.fire(timer_id),
            Command::LeaseTask {
                task_id,
                worker,
                term,
            } => self.lease(task_id, worker, *term),
            Command::HeartbeatTask {
                task_id,
                token,
                worker,
            } => {
                self.leased_task(task_id, token, worker)?;
                self.finish(AuditKind::TaskHeartbeat, worker, None, |w| {
                    w.extend_lease(task_id);
                    Ok(None)
                })
                .map(|c| with_task(c, task_id))
            }
            Command::CompleteTask {
                task_id,
                token,
                result,
                worker,
            } => {
                self.leased_task(task_id, token, worker)?;
                check_payload(self.definition, result)?;
                self.finish(AuditKind::TaskCompleted, worker, Some(result), |w| {
                    w.complete(task_id, result, worker)
                })
                .map(|c| with_task(c, task_id))
            }
            Command::FailTask {
                task_id,
                token,
                error,
                retryable,
                worker,
            } => {
                self.leased_task(task_id, token, worker)?;
                self.finish(AuditKind::TaskFailed, worker, None, |w| {
                    w.fail(task_id, error, *retryable)
                })
                .map(|c| with_task(c, task_id))
            }
            Command::ResolveIncident {
                incident_id,
                retry_task,
                actor,
            } => self.resolve(incident_id, *retry_task, actor),
        }
    }

    fn transition_spec(&self, name: &str) -> Result<&TransitionSpec, Refusal> {
        self.definition.transitions.get(name).ok_or_else(|| {
            Refusal::new(
                RefusalCode::UnknownTransition,
                format!(
                    "workflow `{}` has no transition `{name}`; from `{}` it allows: {}",
                    self.definition.name(),
                    self.before.state,
                    self.allowed_here()
                ),
            )
        })
    }

    fn allowed_here(&self) -> String {
        let names: Vec<&str> = self
            .definition
            .transitions_from(&self.before.state)
            .map(|t| t.name.as_str())
            .collect();
        if names.is_empty() {
            "nothing".into()
        } else {
            names.join(", ")
        }
    }

    /// Runs `body` on a copy of the instance and, if it succeeds, packages the change with its
    /// audit record and the timer differences.
    fn finish(
        &self,
        kind: AuditKind,
        actor: &Actor,
        payload: Option<&serde_json::Value>,
        body: impl FnOnce(&mut Work) -> Result<Option<String>, Refusal>,
    ) -> Result<Change, Refusal> {
        let mut instance = self.before.clone();
        let mut work = Work {
            definition: self.definition,
            at: self.at,
            instance: &mut instance,
            effects: Vec::new(),
            predicates: Vec::new(),
            notes: Vec::new(),
        };
        let transition = body(&mut work)?;
        let Work {
            effects,
            predicates,
            notes,
            ..
        } = work;
        self.package(
            instance, kind, transition, actor, payload, predicates, notes, effects, None,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn package(
        &self,
        mut instance: Instance,
        kind: AuditKind,
        transition: Option<String>,
        actor: &Actor,
        payload: Option<&serde_json::Value>,
        predicates: Vec<PredicateTrace>,
        notes: Vec<String>,
        effects: Vec<Effect>,
        timer: Option<TimerFiring>,
    ) -> Result<Change, Refusal> {
        instance.version += 1;
        instance.updated_at = self.at;
        let mut timers_armed = Vec::new();
        let mut timers_cancelled = Vec::new();
        for (id, timer) in &instance.timers {
            if self.before.timers.get(id) != Some(timer) {
                timers_armed.push(timer.clone());
            }
        }
        for id in self.before.timers.keys() {
            if !instance.timers.contains_key(id) {
                timers_cancelled.push(id.clone());
            }
        }
        let moved = transition.is_some();
        let audit = AuditRecord {
            kind,
            workflow: instance.workflow.clone(),
            instance_id: instance.id.clone(),
            definition_version: instance.definition_version.clone(),
            transition,
            from: moved.then(|| self.before.state.clone()),
            to: moved.then(|| instance.state.clone()),
            actor: actor.record(),
            at: self.at,
            instance_version: instance.version,
            payload_digest: payload.map(|p| sha256_hex(&canonical_json(p))),
            predicates,
            timer,
            task_id: None,
            sla: None,
            note: join_notes(notes),
        };
        Ok(Change {
            instance,
            audit,
            timers_armed,
            timers_cancelled,
            effects,
        })
    }

    fn event(
        &self,
        event: &str,
        payload: &serde_json::Value,
        actor: &Actor,
    ) -> Result<Change, Refusal> {
        let matched = self
            .definition
            .transitions_from(&self.before.state)
            .find(|t| t.on.as_deref() == Some(event));
        match matched {
            Some(spec) => {
                let taking = Taking { actor, payload, expected_version: None };
                self.finish(AuditKind::Transition, actor, Some(payload), |w| w.take(spec, &taking))
            }
            None if self.definition.ignore_events.contains(event) => self.finish(AuditKind::EventIgnored, actor, Some(payload), |w| {
                w.notes.push(format!("event `{event}` matched no transition from `{}` and is ignored by definition", w.instance.state));
                Ok(None)
            }),
            None => {
                let accepted: Vec<&str> = self.definition.transitions_from(&self.before.state).filter_map(|t| t.on.as_deref()).collect();
                let accepted = if accepted.is_empty() { "none".to_string() } else { accepted.join(", ") };
                Err(Refusal::new(RefusalCode::EventUnmatched, format!("event `{event}` matches no transition from state `{}`; events accepted there: {accepted}", self.before.state)))
            }
        }
    }

    fn fire(&self, timer_id: &str) -> Result<Change, Refusal> {
        let Some(timer) = self.before.timers.get(timer_id) else {
            return Err(Refusal::new(
                RefusalCode::TimerNotArmed,
                format!(
                    "timer `{timer_id}` is not armed on instance `{}` (already fired or cancelled)",
                    self.before.id
                ),
            ));
        };
        // Ids are reused when a timer is armed again (an SLA reset, a task's next retry): a
        // fire proposed for an earlier arming must not fire the new one early.
        if timer.due_at > self.at {
            return Err(Refusal::new(
                RefusalCode::TimerNotArmed,
                format!(
                    "timer `{timer_id}` on instance `{}` is armed again, due at {}, after this fire at {}: the fire was for an earlier arming, which already fired or was cancelled",
                    self.before.id, timer.due_at, self.at
                ),
            ));
        }
        let firing = TimerFiring {
            timer_id: timer.id.clone(),
            due_at: timer.due_at,
            fired_at: self.at,
            lateness_ms: self.at.ms_since(timer.due_at),
        };
        let mut instance = self.before.clone();
        instance.timers.remove(timer_id);
        let mut work = Work {
            definition: self.definition,
            at: self.at,
            instance: &mut instance,
            effects: Vec::new(),
            predicates: Vec::new(),
            notes: Vec::new(),
        };
        let mut fires_again = false;
        let (kind, actor, transition, sla, task_id) = match &timer.kind {
            TimerKind::StateExpiry { transition, .. } => {
                let actor = Actor::system("timer");
                let taken = work.engine_transition(transition, &actor);
                if taken.is_some()
                    && self.rules.mutation == Some(crate::mutation::Mutation::TimerFiresTwice)
                {
                    // The bug: the fired timer stays armed, and fires once more (then, the
                    // instance being out of its state, nothing is taken and it is removed).
                    work.instance.timers.insert(timer.id.clone(), timer.clone());
                    fires_again = true;
                }
                (AuditKind::TimerFired, actor, taken, None, None)
            }
            TimerKind::SlaWarning { sla, percent } => {
                if let Some(clock) = work.instance.slas.get_mut(sla) {
                    clock.warned.push(*percent);
                }
                work.effects.push(Effect::Emit {
                    event: "sla.warning".into(),
                });
                work.notes
                    .push(format!("SLA `{sla}` reached {percent}% of its budget"));
                work.refresh_sla_timers();
                (
                    AuditKind::SlaWarning,
                    Actor::system("sla"),
                    None,
                    Some(sla.clone()),
                    None,
                )
            }
            TimerKind::SlaBreach { sla } => {
                if let Some(clock) = work.instance.slas.get_mut(sla) {
                    clock.breached_at = Some(self.at);
                }
                work.effects.push(Effect::Emit {
                    event: "sla.breach".into(),
                });
                let actor = Actor::system("sla");
                let action = self
                    .definition
                    .slas
                    .get(sla)
                    .and_then(|s| s.on_breach.clone());
                let taken = action.and_then(|t| work.engine_transition(&t, &actor));
                work.refresh_sla_timers();
                (AuditKind::SlaBreach, actor, taken, Some(sla.clone()), None)
            }
            TimerKind::TaskLease { task_id, attempt } => {
                let taken = work.fail(
                    task_id,
                    &format!("lease of attempt {attempt} expired"),
                    true,
                )?;
                (
                    AuditKind::TaskFailed,
                    Actor::system("lease"),
                    taken,
                    None,
                    Some(task_id.clone()),
                )
            }
            TimerKind::TaskRetry { task_id, .. } => {
                if let Some(task) = work.instance.tasks.get_mut(task_id) {
                    task.status = TaskStatus::Ready;
                    work.effects.push(Effect::TaskReady {
                        task_id: task.id.clone(),
                        queue: task.queue.clone(),
                        task_type: task.task_type.clone(),
                    });
                }
                (
                    AuditKind::TaskRetryDue,
                    Actor::system("retry"),
                    None,
                    None,
                    Some(task_id.clone()),
                )
            }
        };
        let Work {
            effects,
            predicates,
            notes,
            ..
        } = work;
        let mut change = self.package(
            instance,
            kind,
            transition,
            &actor,
            None,
            predicates,
            notes,
            effects,
            Some(firing),
        )?;
        change.audit.sla = sla;
        change.audit.task_id = task_id;
        if !fires_again && !change.timers_cancelled.iter().any(|id| id == timer_id) {
            change.timers_cancelled.push(timer_id.to_string());
        }
        Ok(change)
    }

    fn task(&self, task_id: &str) -> Result<&Task, Refusal> {
        self.before.tasks.get(task_id).ok_or_else(|| {
            Refusal::new(
                RefusalCode::TaskNotFound,
                format!("instance `{}` has no task `{task_id}`", self.before.id),
            )
        })
    }

    fn lease(&self, task_id: &str, worker: &Actor, term: u64) -> Result<Change, Refusal> {
        let task = self.task(task_id)?;
        if task.status != TaskStatus::Ready {
            return Err(Refusal::new(
                RefusalCode::TaskNotReady,
                format!("task `{task_id}` is {:?}, not ready to lease", task.status),
            ));
        }
        let mut change = self.finish(AuditKind::TaskLeased, worker, None, |w| {
            let at = w.at;
            let task = w.instance.tasks.get_mut(task_id).expect("checked above");
            task.status = TaskStatus::Leased;
            task.attempt += 1;
            task.first_attempt_at.get_or_insert(at);
            task.lease = Some(LeaseToken {
                term,
                attempt: task.attempt,
            });
            task.worker = Some(worker.id.clone());
            w.extend_lease(task_id);
            Ok(None)
        })?;
        change.audit.task_id = Some(task_id.to_string());
        Ok(change)
    }

    fn leased_task(
        &self,
        task_id: &str,
        token: &LeaseToken,
        worker: &Actor,
    ) -> Result<(), Refusal> {
        let task = self.task(task_id)?;
        let holds = if self.rules.mutation == Some(crate::mutation::Mutation::LeaseTermOnly) {
            task.lease.as_ref().map(|l| l.term) == Some(token.term)
        } else {
            task.lease.as_ref() == Some(token)
        };
        if task.status != TaskStatus::Leased || !holds {
            let current = match (&task.status, &task.lease) {
                (TaskStatus::Leased, Some(l)) => {
                    format!("the current lease is term {} attempt {}", l.term, l.attempt)
                }
                (status, _) => format!("the task is {status:?}"),
            };
            return Err(Refusal::new(
                RefusalCode::StaleLease,
                format!(
                    "lease token term {} attempt {} of worker `{}` is stale for task `{task_id}`: {current}; poll for a new task",
                    token.term, token.attempt, worker.id
                ),
            ));
        }
        if task.worker.as_deref() != Some(worker.id.as_str()) {
            return Err(Refusal::new(
                RefusalCode::Forbidden,
                format!(
                    "task `{task_id}` is leased to worker `{}`, not `{}`: only the lease holder may heartbeat, complete or fail it",
                    task.worker.as_deref().unwrap_or("?"),
                    worker.id
                ),
            ));
        }
        if self.rules.lease_expiry_guard
            && let Some(expired) = task.lease_expires_at.filter(|e| *e <= self.at)
        {
            return Err(Refusal::new(
                RefusalCode::StaleLease,
                format!(
                    "the lease of worker `{}` on task `{task_id}` (term {} attempt {}) expired at {expired}, {} before this command at {}; the task goes back to its queue: poll for a new task, and heartbeat more often than the task's timeout ({})",
                    worker.id,
                    token.term,
                    token.attempt,
                    crate::time::human_ms(self.at.ms_since(expired)),
                    self.at,
                    crate::time::human_ms(task.timeout_ms)
                ),
            ));
        }
        Ok(())
    }

    fn resolve(
        &self,
        incident_id: &str,
        retry_task: bool,
        actor: &Actor,
    ) -> Result<Change, Refusal> {
        let incident = self
            .before
            .incidents
            .get(incident_id)
            .filter(|i| i.resolved_at.is_none());
        let Some(incident) = incident else {
            return Err(Refusal::new(
                RefusalCode::IncidentNotFound,
                format!(
                    "instance `{}` has no open incident `{incident_id}`",
                    self.before.id
                ),
            ));
        };
        if !actor.roles.iter().any(|r| r == "operator") {
            return Err(Refusal::new(
                RefusalCode::Forbidden,
                format!(
                    "actor `{}` needs the `operator` role to resolve incidents",
                    actor.id
                ),
            ));
        }
        let task_id = incident.task_id.clone();
        self.finish(AuditKind::IncidentResolved, actor, None, |w| {
            if let Some(i) = w.instance.incidents.get_mut(incident_id) {
                i.resolved_at = Some(w.at);
            }
            if let (true, Some(task_id)) = (retry_task, &task_id)
                && let Some(task) = w.instance.tasks.get_mut(task_id)
            {
                task.status = TaskStatus::Ready;
                task.attempt = 0;
                task.first_attempt_at = None;
                task.lease = None;
                w.effects.push(Effect::TaskReady {
                    task_id: task.id.clone(),
                    queue: task.queue.clone(),
                    task_type: task.task_type.clone(),
                });
                w.notes
                    .push(format!("task `{task_id}` retried by operator"));
            }
            Ok(None)
        })
    }
}

/// A change in progress on a copy of the instance.
pub(crate) struct Work<'a> {
    pub(crate) definition: &'a CompiledDefinition,
    pub(crate) at: Timestamp,
    pub(crate) instance: &'a mut Instance,
    pub(crate) effects: Vec<Effect>,
    pub(crate) predicates: Vec<PredicateTrace>,
    pub(crate) notes: Vec<String>,
}

impl Work<'_> {
    fn scope(&self, actor: &Actor, payload: &serde_json::Value) -> Scope {
        Scope::new(
            actor.cel(),
            self.instance.cel(),
            json_value(payload),
            self.at,
        )
    }

    /// Checks every rule of `spec` for this instance and actor, then takes the transition.
    /// Returns the transition's name for the audit record.
    fn take(&mut self, spec: &TransitionSpec, taking: &Taking) -> Result<Option<String>, Refusal> {
        let instance = &*self.instance;
        if let Some(expected) = taking.expected_version
            && expected != instance.version
        {
            return Err(Refusal::new(
                RefusalCode::VersionConflict,
                format!(
                    "expected version {expected} but instance `{}` is at version {}; read it again and retry",
                    instance.id, instance.version
                ),
            ));
        }
        if !spec.from.contains(&instance.state) {
            let from: Vec<&str> = spec.from.iter().map(String::as_str).collect();
            return Err(Refusal::new(
                RefusalCode::NotAllowedFromState,
                format!(
                    "transition `{}` is not allowed from state `{}`; it leaves only from: {}",
                    spec.name,
                    instance.state,
                    from.join(", ")
                ),
            ));
        }
        let is_system = taking.actor.kind == ActorKind::System;
        if spec.system != is_system {
            let message = if spec.system {
                format!(
                    "transition `{}` is taken only by the engine (`system: true`), not by `{}`",
                    spec.name, taking.actor.id
                )
            } else {
                format!(
                    "the engine actor `{}` may not take the non-system transition `{}`",
                    taking.actor.id, spec.name
                )
            };
            return Err(Refusal::new(RefusalCode::SystemOnly, message));
        }
        check_payload(self.definition, taking.payload)?;
        if let Some(schema) = &spec.payload {
            schema.check(taking.payload).map_err(|e| {
                Refusal::new(
                    RefusalCode::PayloadInvalid,
                    format!("payload of `{}` does not match its schema {e}", spec.name),
                )
            })?;
        }
        let scope = self.scope(taking.actor, taking.payload);
        if !spec.system {
            match &spec.allow {
                Some(allow) => predicate(
                    allow,
                    &scope,
                    "allow",
                    RefusalCode::Forbidden,
                    &mut self.predicates,
                )?,
                None => {
                    return Err(Refusal::new(
                        RefusalCode::Forbidden,
                        format!(
                            "transition `{}` has no `allow` predicate, so no human or service actor may take it",
                            spec.name
                        ),
                    ));
                }
            }
        }
        self.gates(spec)?;
        if let Some(guard) = &spec.guard {
            predicate(
                guard,
                &scope,
                "guard",
                RefusalCode::GuardFalse,
                &mut self.predicates,
            )?;
        }
        let new_data = merged_data(&self.instance.data, taking.payload);
        if let Some(data) = &new_data {
            check_data(self.definition, data)?;
        }
        self.apply_transition(spec, new_data, taking.payload);
        Ok(Some(spec.name.clone()))
    }

    fn gates(&self, spec: &TransitionSpec) -> Result<(), Refusal> {
        if let Some(gate) = &spec.not_before {
            let open_at = self.gate_time(gate, spec)?;
            if self.at < open_at {
                let mut r = Refusal::new(
                    RefusalCode::GateNotYetOpen,
                    format!(
                        "transition `{}` opens at {open_at} (not_before); try again then",
                        spec.name
                    ),
                );
                r.earliest_at = Some(open_at);
                r.predicate = Some(format!("not_before {}", describe_gate(gate)));
                return Err(r);
            }
        }
        if let Some(gate) = &spec.not_after {
            let close_at = self.gate_time(gate, spec)?;
            if self.at > close_at {
                let mut r = Refusal::new(
                    RefusalCode::GateExpired,
                    format!(
                        "transition `{}` closed at {close_at} (not_after)",
                        spec.name
                    ),
                );
                r.predicate = Some(format!("not_after {}", describe_gate(gate)));
                return Err(r);
            }
        }
        Ok(())
    }

    fn gate_time(&self, gate: &Gate, spec: &TransitionSpec) -> Result<Timestamp, Refusal> {
        match gate {
            Gate::AfterEntering(ms) => Ok(self.instance.entered_at.add_ms(*ms)),
            Gate::Field { field, offset_ms } => {
                let text = self.instance.data.get(field).and_then(|v| v.as_str());
                let base = text.and_then(|t| Timestamp::parse_rfc3339(t).ok()).ok_or_else(|| {
                    Refusal::new(RefusalCode::PredicateError, format!("the gate of `{}` reads data field `{field}`, which does not hold an RFC 3339 timestamp", spec.name))
                })?;
                Ok(base.add_ms(*offset_ms))
            }
        }
    }

    /// Moves the instance: data, state, SLA clocks, expiry timer and effects.
    fn apply_transition(
        &mut self,
        spec: &TransitionSpec,
        new_data: Option<serde_json::Value>,
        payload: &serde_json::Value,
    ) {
        if let Some(data) = new_data {
            self.instance.data = data;
        }
        let from = std::mem::replace(&mut self.instance.state, spec.to.clone());
        self.instance.entered_at = self.at;
        self.enter_state(Some(&from));
        for (i, effect) in spec.effects.iter().enumerate() {
            match effect {
                EffectSpec::Emit(event) => self.effects.push(Effect::Emit {
                    event: event.clone(),
                }),
                EffectSpec::Task(task) => {
                    let id = format!("{}/{}/{i}", self.instance.id, self.instance.version + 1);
                    self.prune_tasks();
                    self.instance.tasks.insert(
                        id.clone(),
                        Task {
                            id: id.clone(),
                            queue: task.queue.clone(),
                            task_type: task.task_type.clone(),
                            origin: spec.name.clone(),
                            created: (self.instance.version + 1, i as u32),
                            input: serde_json::json!({ "data": self.instance.data, "payload": payload }),
                            status: TaskStatus::Ready,
                            attempt: 0,
                            first_attempt_at: None,
                            lease: None,
                            worker: None,
                            lease_expires_at: None,
                            retry: task.retry.clone(),
                            timeout_ms: task.timeout_ms,
                            on_complete: task.on_complete.clone(),
                            on_exhausted: task.on_exhausted.clone(),
                            last_error: None,
                            result: None,
                        },
                    );
                    self.effects.push(Effect::TaskReady {
                        task_id: id,
                        queue: task.queue.clone(),
                        task_type: task.task_type.clone(),
                    });
                }
            }
        }
    }

    /// Keeps the task map bounded: drops the oldest finished tasks beyond the limit.
    fn prune_tasks(&mut self) {
        let max = self.definition.limits.instance_tasks_max.saturating_sub(1);
        let mut finished: Vec<(u64, u32, String)> = self
            .instance
            .tasks
            .values()
            .filter(|t| matches!(t.status, TaskStatus::Completed | TaskStatus::Exhausted))
            .map(|t| (t.created.0, t.created.1, t.id.clone()))
            .collect();
        finished.sort();
        let excess = self.instance.tasks.len().saturating_sub(max);
        for (_, _, id) in finished.into_iter().take(excess) {
            self.instance.tasks.remove(&id);
        }
    }

    /// Entry into the current state: expiry timer and SLA clocks.
    pub(crate) fn enter_state(&mut self, _from: Option<&str>) {
        let state = self.instance.state.clone();
        self.instance
            .timers
            .retain(|_, t| !matches!(t.kind, TimerKind::StateExpiry { .. }));
        if let Some(expiry) = self
            .definition
            .states
            .get(&state)
            .and_then(|s| s.expires.as_ref())
        {
            let cal = expiry
                .calendar
                .as_ref()
                .and_then(|c| self.definition.calendars.get(c));
            if let Some(due_at) = Clock(cal).advance(self.at, expiry.after_ms) {
                let id = format!("{}:expiry:{}", self.instance.id, self.instance.version + 1);
                let kind = TimerKind::StateExpiry {
                    state: state.clone(),
                    transition: expiry.transition.clone(),
                };
                self.instance.timers.insert(
                    id.clone(),
                    Timer {
                        id,
                        instance_id: self.instance.id.clone(),
                        due_at,
                        kind,
                    },
                );
            }
        }
        for (name, spec) in &self.definition.slas {
            let clock = Clock(
                spec.calendar
                    .as_ref()
                    .and_then(|c| self.definition.calendars.get(c)),
            );
            let current = self.instance.slas.remove(name);
            // Converting the instance for CEL is costly: only an SLA with `when` needs it.
            let scope_instance = spec.when.as_ref().map(|_| self.instance.cel());
            let mut trace = None;
            let next = on_enter(spec, current, &state, self.at, clock, || match &spec.when {
                None => true,
                Some(when) => {
                    let instance = scope_instance.unwrap_or(cel::Value::Null);
                    let scope = Scope::new(cel::Value::Null, instance, cel::Value::Null, self.at);
                    // A `when` that fails to evaluate does not start the SLA; the audit says so.
                    let result = when.eval_bool(&scope);
                    trace = Some((when.source().to_string(), result.clone()));
                    result.unwrap_or(false)
                }
            });
            if let Some((expression, result)) = trace {
                match result {
                    Ok(result) => self.predicates.push(PredicateTrace {
                        role: format!("sla.{name}.when"),
                        expression,
                        result,
                    }),
                    Err(e) => self.notes.push(format!("SLA `{name}` not started: {e}")),
                }
            }
            if let Some(clock) = next {
                self.instance.slas.insert(name.clone(), clock);
            }
        }
        self.refresh_sla_timers();
    }

    /// Recomputes the armed SLA timers from the clocks.
    pub(crate) fn refresh_sla_timers(&mut self) {
        self.instance.timers.retain(|_, t| {
            !matches!(
                t.kind,
                TimerKind::SlaWarning { .. } | TimerKind::SlaBreach { .. }
            )
        });
        for (name, clock) in &self.instance.slas {
            let Some(spec) = self.definition.slas.get(name) else {
                continue;
            };
            let cal = Clock(
                spec.calendar
                    .as_ref()
                    .and_then(|c| self.definition.calendars.get(c)),
            );
            for (milestone, due_at) in clock.upcoming(spec, cal) {
                let (id, kind) = match milestone {
                    Milestone::Warning(p) => (
                        format!("{}:sla:{name}:warn{p}", self.instance.id),
                        TimerKind::SlaWarning {
                            sla: name.clone(),
                            percent: p,
                        },
                    ),
                    Milestone::Breach => (
                        format!("{}:sla:{name}:breach", self.instance.id),
                        TimerKind::SlaBreach { sla: name.clone() },
                    ),
                };
                self.instance.timers.insert(
                    id.clone(),
                    Timer {
                        id,
                        instance_id: self.instance.id.clone(),
                        due_at,
                        kind,
                    },
                );
            }
        }
    }

    /// A transition the engine takes on its own (expiry, breach, exhaustion). If it does not
    /// apply now, the reason is noted and the instance stays where it is.
    fn engine_transition(&mut self, name: &str, actor: &Actor) -> Option<String> {
        let Some(spec) = self.definition.transitions.get(name) else {
            self.notes
                .push(format!("transition `{name}` is not declared"));
            return None;
        };
        let payload = serde_json::Value::Null;
        let taking = Taking {
            actor,
            payload: &payload,
            expected_version: None,
        };
        match self.take(spec, &taking) {
            Ok(taken) => taken,
            Err(refusal) => {
                self.notes
                    .push(format!("`{name}` not taken: {}", refusal.message));
                None
            }
        }
    }

    fn extend_lease(&mut self, task_id: &str) {
        let at = self.at;
        let Some(task) = self.instance.tasks.get_mut(task_id) else {
            return;
        };
        let expires = at.add_ms(task.timeout_ms);
        task.lease_expires_at = Some(expires);
        let id = format!("{task_id}:lease");
        let kind = TimerKind::TaskLease {
            task_id: task_id.to_string(),
            attempt: task.attempt,
        };
        self.instance.timers.insert(
            id.clone(),
            Timer {
                id,
                instance_id: self.instance.id.clone(),
                due_at: expires,
                kind,
            },
        );
    }

    fn complete(
        &mut self,
        task_id: &str,
        result: &serde_json::Value,
        worker: &Actor,
    ) -> Result<Option<String>, Refusal> {
        self.instance.timers.remove(&format!("{task_id}:lease"));
        let task = self.instance.tasks.get_mut(task_id).expect("lease checked");
        task.status = TaskStatus::Completed;
        task.lease = None;
        task.result = Some(result.clone());
        let Some(next) = task.on_complete.clone() else {
            return Ok(None);
        };
        let Some(spec) = self.definition.transitions.get(&next) else {
            return Ok(None);
        };
        let taking = Taking {
            actor: worker,
            payload: result,
            expected_version: None,
        };
        let saved = self.instance.clone();
        match self.take(spec, &taking) {
            Ok(taken) => Ok(taken),
            Err(refusal) => {
                // The work is done either way; a refused follow-up is an incident for operators.
                *self.instance = saved;
                self.open_incident(
                    Some(task_id),
                    format!("on_complete `{next}` refused: {}", refusal.message),
                );
                Ok(None)
            }
        }
    }

    /// A failed attempt: retry after backoff, or exhaust the policy.
    fn fail(
        &mut self,
        task_id: &str,
        error: &str,
        retryable: bool,
    ) -> Result<Option<String>, Refusal> {
        self.instance.timers.remove(&format!("{task_id}:lease"));
        let at = self.at;
        let Some(task) = self.instance.tasks.get_mut(task_id) else {
            return Err(Refusal::new(
                RefusalCode::TaskNotFound,
                format!("no task `{task_id}`"),
            ));
        };
        task.lease = None;
        task.last_error = Some(error.to_string());
        let delay = task.retry.delay_ms(task_id, task.attempt);
        let elapsed = task.first_attempt_at.map(|t| at.ms_since(t)).unwrap_or(0);
        if retryable && task.retry.may_retry(task.attempt, elapsed, delay) {
            task.status = TaskStatus::Backoff;
            let id = format!("{task_id}:retry");
            let kind = TimerKind::TaskRetry {
                task_id: task_id.to_string(),
                attempt: task.attempt + 1,
            };
            let timer = Timer {
                id: id.clone(),
                instance_id: self.instance.id.clone(),
                due_at: at.add_ms(delay),
                kind,
            };
            self.notes.push(format!(
                "attempt {} failed ({error}); retry in {delay} ms",
                task.attempt
            ));
            self.instance.timers.insert(id, timer);
            return Ok(None);
        }
        task.status = TaskStatus::Exhausted;
        let attempts = task.attempt;
        let on_exhausted = task.on_exhausted.clone();
        self.notes.push(format!(
            "task `{task_id}` exhausted after {attempts} attempt(s): {error}"
        ));
        match on_exhausted {
            Some(next) => {
                let actor = Actor::system("retry");
                let taken = self.engine_transition(&next, &actor);
                if taken.is_none() {
                    self.open_incident(
                        Some(task_id),
                        format!("on_exhausted `{next}` could not be taken"),
                    );
                }
                Ok(taken)
            }
            None => {
                self.open_incident(
                    Some(task_id),
                    format!("retries exhausted after {attempts} attempt(s): {error}"),
                );
                Ok(None)
            }
        }
    }

    fn open_incident(&mut self, task_id: Option<&str>, reason: String) {
        let id = format!(
            "{}:incident:{}",
            self.instance.id,
            self.instance.version + 1
        );
        self.notes.push(format!("incident `{id}` opened"));
        self.instance.incidents.insert(
            id.clone(),
            Incident {
                id,
                task_id: task_id.map(str::to_owned),
                reason,
                opened_at: self.at,
                resolved_at: None,
            },
        );
    }
}

fn describe_gate(gate: &Gate) -> String {
    match gate {
        Gate::AfterEntering(ms) => format!(
            "{} after entering the state",
            crate::duration::Duration::from_ms(*ms)
        ),
        Gate::Field { field, offset_ms } => format!(
            "data.{field} + {}",
            crate::duration::Duration::from_ms(*offset_ms)
        ),
    }
}

/// A payload's `data` object is merged into the instance data (RFC 7386 merge patch).
fn merged_data(data: &serde_json::Value, payload: &serde_json::Value) -> Option<serde_json::Value> {
    let patch = payload.get("data")?;
    let mut merged = data.clone();
    merge_patch(&mut merged, patch);
    Some(merged)
}

fn merge_patch(target: &mut serde_json::Value, patch: &serde_json::Value) {
    let serde_json::Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = serde_json::Value::Object(serde_json::Map::new());
    }
    let map = target.as_object_mut().expect("made an object above");
    for (key, value) in patch {
        if value.is_null() {
            map.remove(key);
        } else {
            merge_patch(
                map.entry(key.clone()).or_insert(serde_json::Value::Null),
                value,
            );
        }
    }
}
