//! The engine's vocabulary: actors, instances, timers, tasks, incidents, commands, refusals,
//! effects, changes and outcomes.

use super::*;

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

    pub(crate) fn cel(&self) -> cel::Value {
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

    pub(crate) fn cel(&self) -> cel::Value {
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
    /// The lease holder hands the task back unfinished (a worker stopping): it is ready again
    /// at once and the attempt does not count against its retry policy. Appended last (log
    /// format 6): older entries keep their variant indexes.
    ReleaseTask {
        task_id: String,
        token: LeaseToken,
        worker: Actor,
    },
    /// Erasure: the named data fields (dotted paths) are replaced by digests of their values
    /// ([`crate::redact`]), in any state; the data schema is not checked against the digests.
    /// Who may is the cluster policy's business (`redact_data`). Appended last (log format 7).
    Redact {
        fields: Vec<String>,
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
    /// No webhook subscription has this name (`lockstep subscriptions`). Appended last.
    UnknownSubscription,
    /// No schedule has this name (`lockstep schedules`). Appended last.
    UnknownSchedule,
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
            RefusalCode::UnknownSubscription => "UNKNOWN_SUBSCRIPTION",
            RefusalCode::UnknownSchedule => "UNKNOWN_SCHEDULE",
        }
    }

    pub fn parse(text: &str) -> Option<RefusalCode> {
        ALL_REFUSALS.iter().copied().find(|c| c.as_str() == text)
    }
}

const ALL_REFUSALS: [RefusalCode; 27] = [
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
    RefusalCode::UnknownSubscription,
    RefusalCode::UnknownSchedule,
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

    pub(crate) fn with_predicate(mut self, predicate: &str) -> Refusal {
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
