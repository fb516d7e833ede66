//! What the client answers: domain types, converted from the protobuf messages at the edge so
//! that callers never read wire fields (issue 19).
//!
//! Where the engine already has the concept and the wire carries all of it, the engine's type
//! is reused ([`Incident`], [`TimerKind`], [`TaskStatus`], [`LeaseToken`], [`SlaView`], the
//! engine's part of an [`AuditRecord`]); otherwise a small struct holds what the wire carries,
//! as for the cluster administration answers ([`ClusterStatus`], [`Membership`],
//! [`SnapshotInfo`], [`BackupInfo`], [`AuditVerification`], [`SecurityLog`]).
//! Times are [`Timestamp`]s, instance data, task inputs and results are JSON values, and an
//! empty wire string that means "none" is `None`.
//!
//! Conversions are built from the typed fields, never from the deprecated `*_json` strings
//! (`tasks_json`, `incidents_json`, `kind_json`), which the server still fills for one
//! release. A message that does not convert (a time that is not RFC 3339, data that is not
//! JSON, a name the engine does not know) is [`Error::Decode`]: the node and this client do
//! not speak the same version of the API.

use std::collections::BTreeMap;

pub use lockstep_core::audit::{ActorRecord, AuditKind, PredicateTrace, TimerFiring};
pub use lockstep_core::engine::{Availability, Incident, LeaseToken, TaskStatus, TimerKind};
pub use lockstep_core::sla::{SlaStatus, SlaView};
use lockstep_core::{AuditRecord as EngineRecord, Timestamp};

use crate::{Error, pb};

/// The engine's enums that the wire carries by name (`task_completed`, `ready`, `running`):
/// the names are the engine's own serde names, parsed at the edge and spelled back for people
/// and JSON output.
pub trait Named: Sized {
    /// The name as the wire and the engine's JSON spell it.
    fn name(&self) -> String;
    /// The value of a name, `None` for a name the engine does not know.
    fn from_name(name: &str) -> Option<Self>;
}

macro_rules! named_by_serde {
    ($($t:ty),*) => {$(
        impl Named for $t {
            fn name(&self) -> String {
                match serde_json::to_value(self) {
                    Ok(serde_json::Value::String(name)) => name,
                    _ => unreachable!("a unit variant serializes as its name"),
                }
            }

            fn from_name(name: &str) -> Option<Self> {
                serde_json::from_value(serde_json::Value::String(name.into())).ok()
            }
        }
    )*};
}

named_by_serde!(AuditKind, TaskStatus, SlaStatus);

/// How a read was served.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadInfo {
    /// Served from the node's replica as it was, without a quorum check.
    pub stale: bool,
    pub node_id: u64,
    pub applied_index: u64,
}

/// The outcome of an applied write on an instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceChange {
    pub instance_id: String,
    /// The instance version after the change.
    pub version: u64,
    pub state: String,
    /// Global sequence of the audit record written with the change.
    pub audit_seq: u64,
}

/// One run of a workflow definition, as a read returns it.
#[derive(Clone, Debug, PartialEq)]
pub struct Instance {
    pub id: String,
    pub workflow: String,
    pub definition_version: String,
    /// The business key, unique per workflow.
    pub key: Option<String>,
    pub state: String,
    pub data: serde_json::Value,
    pub created_by: String,
    pub created_at: Timestamp,
    pub entered_at: Timestamp,
    pub updated_at: Timestamp,
    /// Incremented by every applied change.
    pub version: u64,
    /// The SLAs as the node saw them when it answered, by name.
    pub slas: BTreeMap<String, SlaView>,
    /// Armed timers, by id.
    pub timers: Vec<Timer>,
    /// Tasks, by id.
    pub tasks: Vec<Task>,
    /// Incidents, by id.
    pub incidents: Vec<Incident>,
}

impl Instance {
    pub fn task(&self, id: &str) -> Option<&Task> {
        self.tasks.iter().find(|t| t.id == id)
    }

    /// Incidents not resolved yet.
    pub fn open_incidents(&self) -> impl Iterator<Item = &Incident> {
        self.incidents.iter().filter(|i| i.resolved_at.is_none())
    }
}

/// An armed timer of an instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timer {
    pub id: String,
    pub due_at: Timestamp,
    pub kind: TimerKind,
}

impl Timer {
    /// The kind's name: `state_expiry`, `sla_warning`, `sla_breach`, `task_lease` or
    /// `task_retry`.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            TimerKind::StateExpiry { .. } => "state_expiry",
            TimerKind::SlaWarning { .. } => "sla_warning",
            TimerKind::SlaBreach { .. } => "sla_breach",
            TimerKind::TaskLease { .. } => "task_lease",
            TimerKind::TaskRetry { .. } => "task_retry",
        }
    }

    /// The SLA a warning or breach timer belongs to.
    pub fn sla(&self) -> Option<&str> {
        match &self.kind {
            TimerKind::SlaWarning { sla, .. } | TimerKind::SlaBreach { sla } => Some(sla),
            _ => None,
        }
    }
}

/// A task of an instance: created by a transition's `task` effect, leased by workers. The
/// engine's task less its retry policy, which the wire does not carry.
#[derive(Clone, Debug, PartialEq)]
pub struct Task {
    pub id: String,
    pub queue: String,
    pub task_type: String,
    /// The transition whose effect created the task.
    pub origin: String,
    pub status: TaskStatus,
    /// Attempts started so far (0 before the first lease).
    pub attempt: u32,
    /// The lease, while leased: its token, the worker holding it and its expiry.
    pub lease: Option<LeaseToken>,
    pub worker: Option<String>,
    pub lease_expires_at: Option<Timestamp>,
    pub first_attempt_at: Option<Timestamp>,
    pub timeout_ms: u64,
    /// The transitions taken when it completes and when its retries are exhausted.
    pub on_complete: Option<String>,
    pub on_exhausted: Option<String>,
    pub last_error: Option<String>,
    pub input: serde_json::Value,
    /// Once completed, the worker's result.
    pub result: Option<serde_json::Value>,
    /// The instance version whose change created it, and the effect's position in it.
    pub created_version: u64,
    pub created_effect: u32,
}

/// A stored audit record: the engine's record, where it sits in the chains and the Raft log,
/// and its complete JSON.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditRecord {
    pub global_seq: u64,
    pub instance_seq: u64,
    pub raft_term: u64,
    pub raft_index: u64,
    /// What happened: kind, instance, transition, actor, time, predicates, timer firing.
    pub record: EngineRecord,
    /// Hex hashes of the previous record and of this one in the global chain.
    pub prev_hash: String,
    pub hash: String,
    /// The complete record as the node stores it, the canonical form the hash chains cover:
    /// a verifier recomputes the chains from it.
    pub record_json: String,
    /// The command that made the record (asked for with `Client::history_with_commands`;
    /// `None` otherwise, and for records applied before log format 5).
    pub journal: Option<lockstep_core::journal::JournalEntry>,
}

/// Where a definition came from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Provenance {
    pub repository: String,
    pub commit: String,
    pub path: String,
}

/// An applied version of a workflow definition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Definition {
    pub workflow: String,
    /// SHA-256 of the canonical form.
    pub version: String,
    /// The YAML source as applied.
    pub source: String,
    pub provenance: Provenance,
    pub applied_by: String,
    pub applied_at: Timestamp,
}

/// A workflow and its latest definition version (`Definitions/List`; `source` is empty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkflowSummary {
    pub workflow: String,
    pub latest: Definition,
    /// How many versions were applied.
    pub versions: u32,
}

/// A page of workflows; `next_page_token` asks for the next one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkflowPage {
    pub workflows: Vec<WorkflowSummary>,
    pub next_page_token: Option<String>,
}

/// The answer to applying a definition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppliedDefinition {
    pub workflow: String,
    pub version: String,
    /// False when this exact version was already applied.
    pub created: bool,
}

/// An instance and how the read was served.
#[derive(Clone, Debug, PartialEq)]
pub struct InstanceRead {
    pub instance: Instance,
    pub read: ReadInfo,
}

/// A page of a listing; `next_page_token` asks for the next one.
#[derive(Clone, Debug, PartialEq)]
pub struct InstancePage {
    pub instances: Vec<Instance>,
    pub next_page_token: Option<String>,
    pub read: ReadInfo,
    /// How many instances match, from the counts apply keeps; `None` when the filters
    /// combine more than one of state, SLA status and incidents, use `updated_since`, or the
    /// cluster's log format is older than 4.
    pub total: Option<u64>,
    /// With data filters (`where`): the workflow's versions that do not index every filtered
    /// field, whose instances the page cannot include.
    pub uncovered_versions: Vec<String>,
}

/// A transition the caller may take now, or once its gate opens (`Instances/Actions`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Action {
    pub transition: String,
    /// The state it leads to.
    pub to: String,
    pub availability: Availability,
    /// Its `allow` or `guard` reads the payload: only an attempt can decide it.
    pub depends_on_payload: bool,
}

/// What the caller may do with one instance now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actions {
    pub instance_id: String,
    pub workflow: String,
    pub state: String,
    pub version: u64,
    pub actions: Vec<Action>,
    /// The cluster time they were decided at.
    pub at: Timestamp,
    pub read: ReadInfo,
}

/// An instance of the caller's inbox, with what the caller may do with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboxItem {
    pub instance_id: String,
    pub workflow: String,
    pub key: Option<String>,
    pub state: String,
    pub version: u64,
    pub updated_at: Timestamp,
    pub actions: Vec<Action>,
}

/// A page of the caller's inbox (`Instances/Inbox`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboxPage {
    pub items: Vec<InboxItem>,
    /// Asks for the next page; `None` once every named workflow and state was read.
    pub next_page_token: Option<String>,
    /// The scan stopped at the server's limit before the page was full.
    pub truncated: bool,
    /// Instances the server read to answer.
    pub scanned: u32,
    pub at: Timestamp,
    pub read: ReadInfo,
}

/// One instance a migration moved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigratedInstance {
    pub instance_id: String,
    pub from_state: String,
    pub to_state: String,
    /// The instance's version after the migration.
    pub version: u64,
    /// Global sequence of the migration's audit record.
    pub audit_seq: u64,
}

/// What one migration call did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigrationBatch {
    pub instances: Vec<MigratedInstance>,
    /// How many instances this call migrated.
    pub migrated: u32,
    /// With `all`: more instances may remain; call again with `next_page_token`.
    pub more: bool,
    pub next_page_token: Option<String>,
    /// The full versions migrated from and to (the request may name prefixes).
    pub from_version: String,
    pub to_version: String,
}

/// A leased task, named by its instance and id, with the fencing token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskLease {
    pub instance_id: String,
    pub task_id: String,
    pub token: LeaseToken,
    /// The W3C trace the task was created in (a poll's [`LeasedTask`] sets it): the client
    /// sends it as `traceparent` with the lease's heartbeats, completion, failure and release,
    /// so the worker's answer joins that trace.
    pub traceparent: Option<String>,
}

/// A task a poll leased to the caller.
#[derive(Clone, Debug, PartialEq)]
pub struct LeasedTask {
    pub lease: TaskLease,
    pub workflow: String,
    pub queue: String,
    pub task_type: String,
    pub input: serde_json::Value,
    /// Cluster time after which the lease expires unless a heartbeat extends it.
    pub lease_expires_at: Timestamp,
    /// The transition whose effect created the task.
    pub origin: String,
}

/// The answer to a heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    /// The new lease expiry.
    pub lease_expires_at: Timestamp,
    /// Global sequence of the `task_heartbeat` audit record.
    pub audit_seq: u64,
}

/// A node's part in Raft, as its status reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower,
    Candidate,
    /// Replicates the log but does not vote (a node being added).
    Learner,
    /// Raft on the node is shutting down.
    Shutdown,
}

impl Role {
    const ALL: [Role; 5] = [
        Role::Leader,
        Role::Follower,
        Role::Candidate,
        Role::Learner,
        Role::Shutdown,
    ];

    /// The name as the wire and `lockstep cluster status` spell it: `Leader`, `Follower`,
    /// `Candidate`, `Learner`, `Shutdown`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "Leader",
            Role::Follower => "Follower",
            Role::Candidate => "Candidate",
            Role::Learner => "Learner",
            Role::Shutdown => "Shutdown",
        }
    }

    fn from_name(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// A member of the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    /// Its host:port.
    pub addr: String,
    /// False for a learner.
    pub voter: bool,
}

/// What one node says about itself and the cluster (`Cluster/Status`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterStatus {
    pub node_id: u64,
    pub role: Role,
    /// The leader this node knows of, and its address.
    pub leader_id: Option<u64>,
    pub leader_addr: Option<String>,
    pub term: u64,
    pub last_log_index: u64,
    pub applied_index: u64,
    /// The last log index of the node's latest snapshot (0: none yet).
    pub snapshot_index: u64,
    /// SHA-256 over the state families at `applied_index`, when it was asked for.
    pub digest: Option<String>,
    pub members: Vec<Member>,
    /// The cluster time of the node's state; `None` before anything was applied.
    pub cluster_time: Option<Timestamp>,
    /// Why the node is short of disk space and refuses client writes (`NO_SPACE`), if it is.
    pub space_alarm: Option<String>,
    /// Free bytes of the data directory's file system and bytes the store holds, at the last
    /// check of the space alarm.
    pub data_dir_free_bytes: u64,
    pub store_bytes: u64,
    /// The replicated log format the node applied, and the highest its build reads (the
    /// cluster-version gate raises the first once every member's second reaches it).
    pub log_format: u32,
    pub log_format_readable: u32,
}

/// The members after a membership change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Membership {
    pub members: Vec<Member>,
}

/// A snapshot a node built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The last log index it covers.
    pub last_index: u64,
}

/// A backup checkpoint a node wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupInfo {
    /// The node that wrote it, and where: a path on that node, not on the caller's machine.
    pub node_id: u64,
    pub path: String,
    /// The last log index and term applied in it.
    pub applied_index: u64,
    pub applied_term: u64,
    /// Bytes of its files (SST files are hard links to the live store's until compaction
    /// replaces them).
    pub bytes: u64,
}

/// Where an audit chain breaks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainBreak {
    /// The first broken record.
    pub seq: u64,
    pub reason: String,
}

/// A node's verification of its audit chains (`Audit/Verify`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditVerification {
    pub records_checked: u64,
    /// Where the chains break; `None` when they verify.
    pub broken: Option<ChainBreak>,
    /// The newest record and its global chain hash (hex).
    pub head_seq: u64,
    pub head_hash: String,
    /// The record asked about (0: none), and its chain hash if the chain verified through it
    /// (`None` beyond the head or at a broken record).
    pub at_seq: u64,
    pub at_hash: Option<String>,
}

impl AuditVerification {
    /// The chains verify.
    pub fn ok(&self) -> bool {
        self.broken.is_none()
    }
}

/// What kind of refusal a security log entry records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalKind {
    /// A call without valid credentials.
    Authentication,
    /// The cluster policy refused an authenticated actor.
    Authorization,
    /// The engine refused a command for a trust reason or a time gate.
    Engine,
    /// A Raft or forwarding message from a caller that is not a member node.
    Peer,
    /// A connection whose TLS handshake failed.
    Tls,
}

impl RefusalKind {
    const ALL: [RefusalKind; 5] = [
        RefusalKind::Authentication,
        RefusalKind::Authorization,
        RefusalKind::Engine,
        RefusalKind::Peer,
        RefusalKind::Tls,
    ];

    /// The name as the wire spells it: `authentication`, `authorization`, `engine`, `peer`,
    /// `tls`.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalKind::Authentication => "authentication",
            RefusalKind::Authorization => "authorization",
            RefusalKind::Engine => "engine",
            RefusalKind::Peer => "peer",
            RefusalKind::Tls => "tls",
        }
    }

    fn from_name(name: &str) -> Option<RefusalKind> {
        RefusalKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl std::fmt::Display for RefusalKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// A refused attempt a node saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecurityEvent {
    /// Position in the node's log, from 1.
    pub seq: u64,
    /// The node's wall clock.
    pub at: Timestamp,
    pub kind: RefusalKind,
    /// The gRPC method or the refused command.
    pub method: String,
    /// The actor id, `node <id>` for peers, when known.
    pub actor: Option<String>,
    /// The caller's address, when known.
    pub remote: Option<String>,
    /// A refusal code (`FORBIDDEN`, `GATE_EXPIRED`, ...) or a gRPC status code name.
    pub code: String,
    pub reason: String,
}

/// A page of one node's security log (`Audit/SecurityLog`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecurityLog {
    pub node_id: u64,
    /// Oldest first.
    pub events: Vec<SecurityEvent>,
    /// Entries the node recorded since it started, including those no longer kept.
    pub total: u64,
    /// How many entries the node keeps.
    pub capacity: u32,
}

// ---------------------------------------------------------------------------------------------
// From the wire.

fn decode(what: &'static str, reason: impl Into<String>) -> Error {
    Error::Decode {
        what,
        reason: reason.into(),
    }
}

fn timestamp(what: &'static str, field: &str, text: &str) -> Result<Timestamp, Error> {
    Timestamp::parse_rfc3339(text).map_err(|e| decode(what, format!("{field}: {e}")))
}

/// An RFC 3339 time, or `None` for the empty string.
fn optional_timestamp(
    what: &'static str,
    field: &str,
    text: &str,
) -> Result<Option<Timestamp>, Error> {
    if text.is_empty() {
        return Ok(None);
    }
    timestamp(what, field, text).map(Some)
}

/// A JSON text, or `None` for the empty string.
fn optional_json(
    what: &'static str,
    field: &str,
    text: &str,
) -> Result<Option<serde_json::Value>, Error> {
    if text.is_empty() {
        return Ok(None);
    }
    serde_json::from_str(text)
        .map(Some)
        .map_err(|e| decode(what, format!("{field} is not valid JSON: {e}")))
}

fn named<T: Named>(what: &'static str, field: &str, name: &str) -> Result<T, Error> {
    T::from_name(name).ok_or_else(|| decode(what, format!("{field} `{name}` is unknown")))
}

/// `None` for a string the wire left empty.
fn non_empty(text: String) -> Option<String> {
    (!text.is_empty()).then_some(text)
}

fn required<T>(what: &'static str, field: &str, value: Option<T>) -> Result<T, Error> {
    value.ok_or_else(|| decode(what, format!("{field} is missing")))
}

/// Adds the id of the message that failed to convert to the reason.
fn within(id: &str, e: Error) -> Error {
    match e {
        Error::Decode { what, reason } => decode(what, format!("{id}: {reason}")),
        other => other,
    }
}

impl From<pb::ReadInfo> for ReadInfo {
    fn from(r: pb::ReadInfo) -> ReadInfo {
        ReadInfo {
            stale: r.stale,
            node_id: r.node_id,
            applied_index: r.applied_index,
        }
    }
}

impl From<pb::InstanceChange> for InstanceChange {
    fn from(c: pb::InstanceChange) -> InstanceChange {
        InstanceChange {
            instance_id: c.instance_id,
            version: c.version,
            state: c.state,
            audit_seq: c.audit_seq,
        }
    }
}

impl TryFrom<pb::Instance> for Instance {
    type Error = Error;

    fn try_from(i: pb::Instance) -> Result<Instance, Error> {
        const WHAT: &str = "instance";
        let id = i.id.clone();
        let convert = || -> Result<Instance, Error> {
            Ok(Instance {
                data: optional_json(WHAT, "data_json", &i.data_json)?
                    .unwrap_or(serde_json::Value::Null),
                created_at: timestamp(WHAT, "created_at", &i.created_at)?,
                entered_at: timestamp(WHAT, "entered_at", &i.entered_at)?,
                updated_at: timestamp(WHAT, "updated_at", &i.updated_at)?,
                slas: i
                    .slas
                    .into_iter()
                    .map(sla)
                    .collect::<Result<BTreeMap<_, _>, Error>>()?,
                timers: i
                    .timers
                    .into_iter()
                    .map(Timer::try_from)
                    .collect::<Result<_, _>>()?,
                tasks: i
                    .tasks
                    .into_iter()
                    .map(Task::try_from)
                    .collect::<Result<_, _>>()?,
                incidents: i
                    .incidents
                    .into_iter()
                    .map(incident)
                    .collect::<Result<_, _>>()?,
                id: i.id,
                workflow: i.workflow,
                definition_version: i.definition_version,
                key: non_empty(i.key),
                state: i.state,
                created_by: i.created_by,
                version: i.version,
            })
        };
        convert().map_err(|e| within(&id, e))
    }
}

fn sla(s: pb::Sla) -> Result<(String, SlaView), Error> {
    const WHAT: &str = "SLA";
    let status = named(WHAT, "status", &s.status).map_err(|e| within(&s.name, e))?;
    let warned = match s.warned_percent {
        0 => None,
        percent => Some(u8::try_from(percent).map_err(|_| {
            decode(
                WHAT,
                format!("{}: warned_percent {percent} is over 255", s.name),
            )
        })?),
    };
    let view = SlaView {
        status,
        warned,
        breached: s.breached,
        consumed_ms: s.consumed_ms,
        remaining_ms: s.remaining_ms,
    };
    Ok((s.name, view))
}

impl TryFrom<pb::Timer> for Timer {
    type Error = Error;

    fn try_from(t: pb::Timer) -> Result<Timer, Error> {
        const WHAT: &str = "timer";
        let kind = match t.kind.as_str() {
            "state_expiry" => TimerKind::StateExpiry {
                state: t.state,
                transition: t.transition,
            },
            "sla_warning" => TimerKind::SlaWarning {
                sla: t.sla,
                percent: u8::try_from(t.percent).map_err(|_| {
                    decode(WHAT, format!("{}: percent {} is over 255", t.id, t.percent))
                })?,
            },
            "sla_breach" => TimerKind::SlaBreach { sla: t.sla },
            "task_lease" => TimerKind::TaskLease {
                task_id: t.task_id,
                attempt: t.attempt,
            },
            "task_retry" => TimerKind::TaskRetry {
                task_id: t.task_id,
                attempt: t.attempt,
            },
            other => return Err(decode(WHAT, format!("{}: kind `{other}` is unknown", t.id))),
        };
        Ok(Timer {
            due_at: timestamp(WHAT, "due_at", &t.due_at).map_err(|e| within(&t.id, e))?,
            id: t.id,
            kind,
        })
    }
}

impl TryFrom<pb::Task> for Task {
    type Error = Error;

    fn try_from(t: pb::Task) -> Result<Task, Error> {
        const WHAT: &str = "task";
        let id = t.id.clone();
        let convert = || -> Result<Task, Error> {
            Ok(Task {
                status: named(WHAT, "status", &t.status)?,
                lease: t.lease.map(|l| LeaseToken {
                    term: l.term,
                    attempt: l.attempt,
                }),
                lease_expires_at: optional_timestamp(
                    WHAT,
                    "lease_expires_at",
                    &t.lease_expires_at,
                )?,
                first_attempt_at: optional_timestamp(
                    WHAT,
                    "first_attempt_at",
                    &t.first_attempt_at,
                )?,
                input: optional_json(WHAT, "input_json", &t.input_json)?
                    .unwrap_or(serde_json::Value::Null),
                result: optional_json(WHAT, "result_json", &t.result_json)?,
                id: t.id,
                queue: t.queue,
                task_type: t.task_type,
                origin: t.origin,
                attempt: t.attempt,
                worker: non_empty(t.worker),
                timeout_ms: t.timeout_ms,
                on_complete: non_empty(t.on_complete),
                on_exhausted: non_empty(t.on_exhausted),
                last_error: non_empty(t.last_error),
                created_version: t.created_version,
                created_effect: t.created_effect,
            })
        };
        convert().map_err(|e| within(&id, e))
    }
}

fn incident(i: pb::Incident) -> Result<Incident, Error> {
    const WHAT: &str = "incident";
    let id = i.id.clone();
    let convert = || -> Result<Incident, Error> {
        Ok(Incident {
            opened_at: timestamp(WHAT, "opened_at", &i.opened_at)?,
            resolved_at: optional_timestamp(WHAT, "resolved_at", &i.resolved_at)?,
            id: i.id,
            task_id: non_empty(i.task_id),
            reason: i.reason,
        })
    };
    convert().map_err(|e| within(&id, e))
}

impl TryFrom<pb::AuditRecord> for AuditRecord {
    type Error = Error;

    fn try_from(r: pb::AuditRecord) -> Result<AuditRecord, Error> {
        const WHAT: &str = "audit record";
        let seq = r.global_seq.to_string();
        let convert = || -> Result<AuditRecord, Error> {
            let timer = match r.timer {
                Some(t) => Some(TimerFiring {
                    due_at: timestamp(WHAT, "timer.due_at", &t.due_at)?,
                    fired_at: timestamp(WHAT, "timer.fired_at", &t.fired_at)?,
                    timer_id: t.timer_id,
                    lateness_ms: t.lateness_ms,
                }),
                None => None,
            };
            let record = EngineRecord {
                kind: named(WHAT, "kind", &r.kind)?,
                at: timestamp(WHAT, "at", &r.at)?,
                workflow: r.workflow,
                instance_id: r.instance_id,
                definition_version: r.definition_version,
                transition: non_empty(r.transition),
                from: non_empty(r.from),
                to: non_empty(r.to),
                actor: ActorRecord {
                    id: r.actor_id,
                    kind: r.actor_kind,
                    roles: r.actor_roles,
                    authn: r.actor_authn,
                },
                instance_version: r.instance_version,
                payload_digest: non_empty(r.payload_digest),
                predicates: r
                    .predicates
                    .into_iter()
                    .map(|p| PredicateTrace {
                        role: p.role,
                        expression: p.expression,
                        result: p.result,
                    })
                    .collect(),
                timer,
                task_id: non_empty(r.task_id),
                sla: non_empty(r.sla),
                note: non_empty(r.note),
            };
            Ok(AuditRecord {
                global_seq: r.global_seq,
                instance_seq: r.instance_seq,
                raft_term: r.raft_term,
                raft_index: r.raft_index,
                record,
                prev_hash: r.prev_hash,
                hash: r.hash,
                record_json: r.record_json,
                journal: match r.journal_json.as_str() {
                    "" => None,
                    text => Some(serde_json::from_str(text).map_err(|e| {
                        decode(WHAT, format!("journal_json is not a journal entry: {e}"))
                    })?),
                },
            })
        };
        convert().map_err(|e| within(&format!("#{seq}"), e))
    }
}

impl From<pb::Provenance> for Provenance {
    fn from(p: pb::Provenance) -> Provenance {
        Provenance {
            repository: p.repository,
            commit: p.commit,
            path: p.path,
        }
    }
}

impl From<Provenance> for pb::Provenance {
    fn from(p: Provenance) -> pb::Provenance {
        pb::Provenance {
            repository: p.repository,
            commit: p.commit,
            path: p.path,
        }
    }
}

impl TryFrom<pb::Definition> for Definition {
    type Error = Error;

    fn try_from(d: pb::Definition) -> Result<Definition, Error> {
        const WHAT: &str = "definition";
        Ok(Definition {
            applied_at: timestamp(WHAT, "applied_at", &d.applied_at)
                .map_err(|e| within(&format!("{}@{}", d.workflow, d.version), e))?,
            workflow: d.workflow,
            version: d.version,
            source: d.source,
            provenance: d.provenance.map(Provenance::from).unwrap_or_default(),
            applied_by: d.applied_by,
        })
    }
}

impl TryFrom<pb::ListDefinitionsResponse> for WorkflowPage {
    type Error = Error;

    fn try_from(r: pb::ListDefinitionsResponse) -> Result<WorkflowPage, Error> {
        let workflows = r
            .workflows
            .into_iter()
            .map(|w| {
                let latest =
                    required("workflow", "latest", w.latest).map_err(|e| within(&w.workflow, e))?;
                Ok(WorkflowSummary {
                    latest: latest.try_into()?,
                    workflow: w.workflow,
                    versions: w.versions,
                })
            })
            .collect::<Result<_, Error>>()?;
        Ok(WorkflowPage {
            workflows,
            next_page_token: non_empty(r.next_page_token),
        })
    }
}

impl From<pb::ApplyDefinitionResponse> for AppliedDefinition {
    fn from(r: pb::ApplyDefinitionResponse) -> AppliedDefinition {
        AppliedDefinition {
            workflow: r.workflow,
            version: r.version,
            created: r.created,
        }
    }
}

impl TryFrom<pb::GetInstanceResponse> for InstanceRead {
    type Error = Error;

    fn try_from(r: pb::GetInstanceResponse) -> Result<InstanceRead, Error> {
        const WHAT: &str = "instance read";
        Ok(InstanceRead {
            instance: required(WHAT, "instance", r.instance)?.try_into()?,
            read: required(WHAT, "read", r.read)?.into(),
        })
    }
}

impl TryFrom<pb::ListInstancesResponse> for InstancePage {
    type Error = Error;

    fn try_from(r: pb::ListInstancesResponse) -> Result<InstancePage, Error> {
        Ok(InstancePage {
            instances: r
                .instances
                .into_iter()
                .map(Instance::try_from)
                .collect::<Result<_, _>>()?,
            next_page_token: non_empty(r.next_page_token),
            read: required("instance page", "read", r.read)?.into(),
            total: r.total,
            uncovered_versions: r.uncovered_versions,
        })
    }
}

impl TryFrom<pb::Action> for Action {
    type Error = Error;

    fn try_from(a: pb::Action) -> Result<Action, Error> {
        let availability = match optional_timestamp("action", "opens_at", &a.opens_at)
            .map_err(|e| within(&a.transition, e))?
        {
            None => Availability::Now,
            Some(opens_at) => Availability::Gated { opens_at },
        };
        Ok(Action {
            transition: a.transition,
            to: a.to,
            availability,
            depends_on_payload: a.depends_on_payload,
        })
    }
}

fn actions(list: Vec<pb::Action>) -> Result<Vec<Action>, Error> {
    list.into_iter().map(Action::try_from).collect()
}

impl TryFrom<pb::ActionsResponse> for Actions {
    type Error = Error;

    fn try_from(r: pb::ActionsResponse) -> Result<Actions, Error> {
        const WHAT: &str = "actions";
        Ok(Actions {
            at: timestamp(WHAT, "at", &r.at)?,
            read: required(WHAT, "read", r.read)?.into(),
            actions: actions(r.actions).map_err(|e| within(&r.instance_id, e))?,
            instance_id: r.instance_id,
            workflow: r.workflow,
            state: r.state,
            version: r.version,
        })
    }
}

impl TryFrom<pb::InboxItem> for InboxItem {
    type Error = Error;

    fn try_from(i: pb::InboxItem) -> Result<InboxItem, Error> {
        let id = i.instance_id.clone();
        let convert = || -> Result<InboxItem, Error> {
            Ok(InboxItem {
                updated_at: timestamp("inbox item", "updated_at", &i.updated_at)?,
                actions: actions(i.actions)?,
                instance_id: i.instance_id,
                workflow: i.workflow,
                key: non_empty(i.key),
                state: i.state,
                version: i.version,
            })
        };
        convert().map_err(|e| within(&id, e))
    }
}

impl TryFrom<pb::InboxResponse> for InboxPage {
    type Error = Error;

    fn try_from(r: pb::InboxResponse) -> Result<InboxPage, Error> {
        const WHAT: &str = "inbox page";
        Ok(InboxPage {
            items: r
                .items
                .into_iter()
                .map(InboxItem::try_from)
                .collect::<Result<_, _>>()?,
            next_page_token: non_empty(r.next_page_token),
            truncated: r.truncated,
            scanned: r.scanned,
            at: timestamp(WHAT, "at", &r.at)?,
            read: required(WHAT, "read", r.read)?.into(),
        })
    }
}

impl From<pb::MigrateInstancesResponse> for MigrationBatch {
    fn from(r: pb::MigrateInstancesResponse) -> MigrationBatch {
        MigrationBatch {
            instances: r
                .instances
                .into_iter()
                .map(|m| MigratedInstance {
                    instance_id: m.instance_id,
                    from_state: m.from_state,
                    to_state: m.to_state,
                    version: m.version,
                    audit_seq: m.audit_seq,
                })
                .collect(),
            migrated: r.migrated,
            more: r.more,
            next_page_token: non_empty(r.next_page_token),
            from_version: r.from_version,
            to_version: r.to_version,
        }
    }
}

impl TryFrom<pb::TaskLease> for TaskLease {
    type Error = Error;

    fn try_from(l: pb::TaskLease) -> Result<TaskLease, Error> {
        let token = required("task lease", "token", l.token)
            .map_err(|e| within(&format!("{}/{}", l.instance_id, l.task_id), e))?;
        Ok(TaskLease {
            instance_id: l.instance_id,
            task_id: l.task_id,
            token: LeaseToken {
                term: token.term,
                attempt: token.attempt,
            },
            traceparent: None,
        })
    }
}

impl From<&TaskLease> for pb::TaskLease {
    fn from(l: &TaskLease) -> pb::TaskLease {
        pb::TaskLease {
            instance_id: l.instance_id.clone(),
            task_id: l.task_id.clone(),
            token: Some(pb::LeaseToken {
                term: l.token.term,
                attempt: l.token.attempt,
            }),
        }
    }
}

impl TryFrom<pb::LeasedTask> for LeasedTask {
    type Error = Error;

    fn try_from(t: pb::LeasedTask) -> Result<LeasedTask, Error> {
        const WHAT: &str = "leased task";
        let mut lease: TaskLease = required(WHAT, "lease", t.lease)?.try_into()?;
        lease.traceparent = Some(t.traceparent).filter(|t| !t.is_empty());
        let convert = || -> Result<LeasedTask, Error> {
            Ok(LeasedTask {
                input: optional_json(WHAT, "input_json", &t.input_json)?
                    .unwrap_or(serde_json::Value::Null),
                lease_expires_at: timestamp(WHAT, "lease_expires_at", &t.lease_expires_at)?,
                workflow: t.workflow,
                queue: t.queue,
                task_type: t.task_type,
                origin: t.origin,
                lease: lease.clone(),
            })
        };
        convert().map_err(|e| within(&format!("{}/{}", lease.instance_id, lease.task_id), e))
    }
}

impl TryFrom<pb::HeartbeatTaskResponse> for Heartbeat {
    type Error = Error;

    fn try_from(h: pb::HeartbeatTaskResponse) -> Result<Heartbeat, Error> {
        Ok(Heartbeat {
            lease_expires_at: timestamp("heartbeat", "lease_expires_at", &h.lease_expires_at)?,
            audit_seq: h.audit_seq,
        })
    }
}

impl From<pb::Member> for Member {
    fn from(m: pb::Member) -> Member {
        Member {
            id: m.id,
            addr: m.addr,
            voter: m.voter,
        }
    }
}

fn members(list: Vec<pb::Member>) -> Vec<Member> {
    list.into_iter().map(Member::from).collect()
}

impl TryFrom<pb::ClusterStatus> for ClusterStatus {
    type Error = Error;

    fn try_from(s: pb::ClusterStatus) -> Result<ClusterStatus, Error> {
        const WHAT: &str = "cluster status";
        let node = format!("node {}", s.node_id);
        let convert = || -> Result<ClusterStatus, Error> {
            Ok(ClusterStatus {
                role: Role::from_name(&s.role)
                    .ok_or_else(|| decode(WHAT, format!("role `{}` is unknown", s.role)))?,
                cluster_time: optional_timestamp(WHAT, "cluster_time", &s.cluster_time)?,
                node_id: s.node_id,
                leader_id: (s.leader_id != 0).then_some(s.leader_id),
                leader_addr: non_empty(s.leader_addr),
                term: s.term,
                last_log_index: s.last_log_index,
                applied_index: s.applied_index,
                snapshot_index: s.snapshot_index,
                digest: non_empty(s.digest),
                members: members(s.members),
                space_alarm: non_empty(s.space_alarm),
                data_dir_free_bytes: s.data_dir_free_bytes,
                store_bytes: s.store_bytes,
                log_format: s.log_format,
                log_format_readable: s.log_format_readable,
            })
        };
        convert().map_err(|e| within(&node, e))
    }
}

impl From<pb::MembershipResponse> for Membership {
    fn from(r: pb::MembershipResponse) -> Membership {
        Membership {
            members: members(r.members),
        }
    }
}

impl From<pb::SnapshotResponse> for SnapshotInfo {
    fn from(r: pb::SnapshotResponse) -> SnapshotInfo {
        SnapshotInfo {
            last_index: r.last_index,
        }
    }
}

impl From<pb::BackupResponse> for BackupInfo {
    fn from(r: pb::BackupResponse) -> BackupInfo {
        BackupInfo {
            node_id: r.node_id,
            path: r.path,
            applied_index: r.applied_index,
            applied_term: r.applied_term,
            bytes: r.bytes,
        }
    }
}

impl From<pb::VerifyAuditResponse> for AuditVerification {
    fn from(r: pb::VerifyAuditResponse) -> AuditVerification {
        AuditVerification {
            records_checked: r.records_checked,
            broken: (!r.ok).then_some(ChainBreak {
                seq: r.broken_seq,
                reason: r.reason,
            }),
            head_seq: r.head_seq,
            head_hash: r.head_hash,
            at_seq: r.at_seq,
            at_hash: non_empty(r.at_hash),
        }
    }
}

impl TryFrom<pb::SecurityEvent> for SecurityEvent {
    type Error = Error;

    fn try_from(e: pb::SecurityEvent) -> Result<SecurityEvent, Error> {
        const WHAT: &str = "security event";
        let seq = format!("#{}", e.seq);
        let convert = || -> Result<SecurityEvent, Error> {
            Ok(SecurityEvent {
                at: timestamp(WHAT, "at", &e.at)?,
                kind: RefusalKind::from_name(&e.kind)
                    .ok_or_else(|| decode(WHAT, format!("kind `{}` is unknown", e.kind)))?,
                seq: e.seq,
                method: e.method,
                actor: non_empty(e.actor),
                remote: non_empty(e.remote),
                code: e.code,
                reason: e.reason,
            })
        };
        convert().map_err(|err| within(&seq, err))
    }
}

impl TryFrom<pb::SecurityLogResponse> for SecurityLog {
    type Error = Error;

    fn try_from(r: pb::SecurityLogResponse) -> Result<SecurityLog, Error> {
        Ok(SecurityLog {
            events: r
                .events
                .into_iter()
                .map(SecurityEvent::try_from)
                .collect::<Result<_, _>>()
                .map_err(|e| within(&format!("node {}", r.node_id), e))?,
            node_id: r.node_id,
            total: r.total,
            capacity: r.capacity,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        Timestamp::parse_rfc3339(text).unwrap()
    }

    #[allow(deprecated)]
    fn wire_instance() -> pb::Instance {
        pb::Instance {
            id: "i-1".into(),
            workflow: "po".into(),
            definition_version: "abc".into(),
            key: String::new(),
            state: "billing".into(),
            data_json: r#"{"amount":5}"#.into(),
            created_by: "alice".into(),
            created_at: "2026-01-02T03:04:05Z".into(),
            entered_at: "2026-01-02T03:04:05.25Z".into(),
            updated_at: "2026-01-02T03:04:06.000001Z".into(),
            version: 3,
            slas: vec![pb::Sla {
                name: "approval".into(),
                status: "running".into(),
                breached: false,
                warned_percent: 80,
                remaining_ms: -5,
                consumed_ms: 10,
            }],
            timers: vec![pb::Timer {
                id: "t-1".into(),
                due_at: "2026-01-03T00:00:00Z".into(),
                kind: "sla_warning".into(),
                sla: "approval".into(),
                percent: 80,
                // The deprecated JSON disagrees on purpose: the typed fields win.
                kind_json: "garbage".into(),
                ..Default::default()
            }],
            tasks_json: "garbage".into(),
            incidents_json: "garbage".into(),
            tasks: vec![pb::Task {
                id: "k-1".into(),
                queue: "erp".into(),
                task_type: "bill".into(),
                origin: "approve".into(),
                status: "leased".into(),
                attempt: 2,
                lease: Some(pb::LeaseToken {
                    term: 7,
                    attempt: 2,
                }),
                worker: "w".into(),
                lease_expires_at: "2026-01-02T03:05:00Z".into(),
                first_attempt_at: "2026-01-02T03:04:30Z".into(),
                timeout_ms: 30_000,
                on_complete: "billed".into(),
                on_exhausted: String::new(),
                last_error: "timeout".into(),
                input_json: r#"{"n":1}"#.into(),
                result_json: String::new(),
                created_version: 2,
                created_effect: 0,
            }],
            incidents: vec![pb::Incident {
                id: "n-1".into(),
                task_id: "k-1".into(),
                reason: "exhausted".into(),
                opened_at: "2026-01-02T03:04:40Z".into(),
                resolved_at: String::new(),
            }],
        }
    }

    #[test]
    fn an_instance_converts_from_its_typed_fields() {
        let i = Instance::try_from(wire_instance()).unwrap();
        assert_eq!(i.key, None);
        assert_eq!(i.data, serde_json::json!({"amount": 5}));
        assert_eq!(i.entered_at.to_string(), "2026-01-02T03:04:05.25Z");
        assert_eq!(i.updated_at.to_string(), "2026-01-02T03:04:06.000001Z");
        let sla = &i.slas["approval"];
        assert_eq!(
            (sla.status, sla.warned, sla.remaining_ms),
            (SlaStatus::Running, Some(80), -5)
        );
        assert_eq!(
            i.timers[0].kind,
            TimerKind::SlaWarning {
                sla: "approval".into(),
                percent: 80
            }
        );
        assert_eq!(i.timers[0].kind_name(), "sla_warning");
        let task = i.task("k-1").unwrap();
        assert_eq!(task.status, TaskStatus::Leased);
        assert_eq!(
            task.lease,
            Some(LeaseToken {
                term: 7,
                attempt: 2
            })
        );
        assert_eq!(task.lease_expires_at, Some(at("2026-01-02T03:05:00Z")));
        assert_eq!(task.on_exhausted, None);
        assert_eq!(task.result, None);
        assert_eq!(task.input, serde_json::json!({"n": 1}));
        assert_eq!(i.open_incidents().count(), 1);
        assert_eq!(i.incidents[0].task_id.as_deref(), Some("k-1"));
    }

    /// One malformed field, and the message that names it.
    fn check_malformed(spoil: impl FnOnce(&mut pb::Instance), expected: &str) {
        let mut wire = wire_instance();
        spoil(&mut wire);
        let err = Instance::try_from(wire).unwrap_err();
        assert!(matches!(err, Error::Decode { .. }), "{err:?}");
        assert_eq!(err.to_string(), expected);
    }

    #[test]
    fn a_malformed_instance_is_a_decode_error_that_names_the_field() {
        check_malformed(
            |i| i.data_json = "{not json".into(),
            "the node sent a malformed instance: i-1: data_json is not valid JSON: key must be a string at line 1 column 2; is this client as new as the cluster?",
        );
        check_malformed(
            |i| i.tasks[0].status = "sleeping".into(),
            "the node sent a malformed task: i-1: k-1: status `sleeping` is unknown; is this client as new as the cluster?",
        );
        check_malformed(
            |i| i.timers[0].kind = "alarm".into(),
            "the node sent a malformed timer: i-1: t-1: kind `alarm` is unknown; is this client as new as the cluster?",
        );
        check_malformed(
            |i| i.incidents[0].opened_at = "yesterday".into(),
            &format!(
                "the node sent a malformed incident: i-1: n-1: opened_at: {}; is this client as new as the cluster?",
                Timestamp::parse_rfc3339("yesterday").unwrap_err()
            ),
        );
    }

    #[test]
    fn an_audit_record_converts_and_keeps_its_json() {
        let wire = pb::AuditRecord {
            global_seq: 9,
            instance_seq: 2,
            kind: "timer_fired".into(),
            workflow: "po".into(),
            instance_id: "i-1".into(),
            transition: "expire".into(),
            from: "open".into(),
            to: "expired".into(),
            actor_id: "system:timer".into(),
            actor_kind: "system".into(),
            at: "2026-01-02T03:04:05Z".into(),
            hash: "h".into(),
            record_json: r#"{"global_seq":9}"#.into(),
            timer: Some(pb::TimerFiring {
                timer_id: "t-1".into(),
                due_at: "2026-01-02T03:04:04Z".into(),
                fired_at: "2026-01-02T03:04:05Z".into(),
                lateness_ms: 1000,
            }),
            ..Default::default()
        };
        let r = AuditRecord::try_from(wire).unwrap();
        assert_eq!(r.record.kind, AuditKind::TimerFired);
        assert_eq!(r.record.kind.name(), "timer_fired");
        assert_eq!(r.record.payload_digest, None);
        assert_eq!(r.record.timer.unwrap().lateness_ms, 1000);
        assert_eq!(r.record_json, r#"{"global_seq":9}"#);
        let bad = pb::AuditRecord {
            global_seq: 4,
            kind: "teleported".into(),
            ..Default::default()
        };
        assert_eq!(
            AuditRecord::try_from(bad).unwrap_err().to_string(),
            "the node sent a malformed audit record: #4: kind `teleported` is unknown; is this client as new as the cluster?"
        );
    }

    fn wire_status() -> pb::ClusterStatus {
        pb::ClusterStatus {
            node_id: 2,
            leader_id: 0,
            leader_addr: String::new(),
            term: 3,
            role: "Follower".into(),
            cluster_time: "2026-01-02T03:04:05Z".into(),
            members: vec![pb::Member {
                id: 1,
                addr: "127.0.0.1:7101".into(),
                voter: true,
            }],
            store_bytes: 4096,
            log_format: 8,
            log_format_readable: 9,
            ..Default::default()
        }
    }

    #[test]
    fn a_cluster_status_converts_and_empty_means_none() {
        let s = ClusterStatus::try_from(wire_status()).unwrap();
        assert_eq!(s.role, Role::Follower);
        assert_eq!(format!("{:<10}|", s.role), "Follower  |");
        assert_eq!((s.leader_id, s.leader_addr), (None, None));
        assert_eq!((s.digest, s.space_alarm), (None, None));
        assert_eq!(s.cluster_time, Some(at("2026-01-02T03:04:05Z")));
        assert_eq!(s.members[0].addr, "127.0.0.1:7101");
        assert_eq!((s.log_format, s.log_format_readable), (8, 9));
        let fresh = pb::ClusterStatus {
            cluster_time: String::new(),
            leader_id: 1,
            leader_addr: "127.0.0.1:7101".into(),
            ..wire_status()
        };
        let s = ClusterStatus::try_from(fresh).unwrap();
        assert_eq!(s.cluster_time, None);
        assert_eq!(s.leader_id, Some(1));
        let bad = pb::ClusterStatus {
            role: "Witness".into(),
            ..wire_status()
        };
        assert_eq!(
            ClusterStatus::try_from(bad).unwrap_err().to_string(),
            "the node sent a malformed cluster status: node 2: role `Witness` is unknown; is this client as new as the cluster?"
        );
    }

    #[test]
    fn an_audit_verification_is_ok_without_a_break() {
        let sound = AuditVerification::from(pb::VerifyAuditResponse {
            ok: true,
            records_checked: 5,
            head_seq: 5,
            head_hash: "ab".into(),
            at_seq: 9,
            ..Default::default()
        });
        assert!(sound.ok());
        assert_eq!(sound.at_hash, None);
        let broken = AuditVerification::from(pb::VerifyAuditResponse {
            ok: false,
            broken_seq: 3,
            reason: "hash mismatch".into(),
            ..Default::default()
        });
        assert!(!broken.ok());
        assert_eq!(
            broken.broken,
            Some(ChainBreak {
                seq: 3,
                reason: "hash mismatch".into()
            })
        );
    }

    #[test]
    fn a_security_log_converts_its_events() {
        let event = pb::SecurityEvent {
            seq: 7,
            at: "2026-01-02T03:04:05.5Z".into(),
            kind: "authorization".into(),
            method: "/lockstep.v1.Cluster/Backup".into(),
            actor: "alice".into(),
            remote: String::new(),
            code: "PERMISSION_DENIED".into(),
            reason: "needs admin".into(),
        };
        let log = SecurityLog::try_from(pb::SecurityLogResponse {
            events: vec![event.clone()],
            total: 7,
            node_id: 1,
            capacity: 1024,
        })
        .unwrap();
        let e = &log.events[0];
        assert_eq!(e.kind, RefusalKind::Authorization);
        assert_eq!(e.at.to_string(), "2026-01-02T03:04:05.5Z");
        assert_eq!(
            (e.actor.as_deref(), e.remote.as_deref()),
            (Some("alice"), None)
        );
        let bad = pb::SecurityLogResponse {
            events: vec![pb::SecurityEvent {
                kind: "burglary".into(),
                ..event
            }],
            node_id: 1,
            ..Default::default()
        };
        assert_eq!(
            SecurityLog::try_from(bad).unwrap_err().to_string(),
            "the node sent a malformed security event: node 1: #7: kind `burglary` is unknown; is this client as new as the cluster?"
        );
    }

    #[test]
    fn engine_names_round_trip() {
        for status in [
            TaskStatus::Ready,
            TaskStatus::Leased,
            TaskStatus::Backoff,
            TaskStatus::Completed,
            TaskStatus::Exhausted,
        ] {
            assert_eq!(TaskStatus::from_name(&status.name()), Some(status));
        }
        assert_eq!(AuditKind::DefinitionApplied.name(), "definition_applied");
        assert_eq!(SlaStatus::from_name("paused"), Some(SlaStatus::Paused));
        assert_eq!(SlaStatus::from_name("Paused"), None);
    }
}
