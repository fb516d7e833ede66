//! The Raft type configuration and the commands that travel through the log.

use std::fmt;

use lockstep_core::engine::{Command, LeaseToken};
use lockstep_core::{Actor, Migration, Refusal, Timestamp};
use serde::{Deserialize, Serialize};

pub type NodeId = u64;

/// A cluster member as Raft knows it: where its Raft service and public API listen.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// host:port of the node's gRPC endpoint (Raft, forwarding and public API share it).
    pub addr: String,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.addr)
    }
}

openraft::declare_raft_types!(
    /// Lockstep's Raft types.
    pub TypeConfig:
        D = Proposal,
        R = Response,
        NodeId = NodeId,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = crate::snapshot_data::SnapshotData,
        AsyncRuntime = openraft::TokioRuntime,
);

/// One command in the log: who asked (through `request_id` for deduplication), when (the
/// cluster time stamped by the leader) and what.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    /// The client's request id; a retried request with the same id returns the first outcome.
    pub request_id: Option<String>,
    /// Cluster time stamped by the leader at proposal. Apply makes it strictly monotonic.
    pub at: Timestamp,
    pub body: Body,
}

impl fmt::Display for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.body.name(), self.at.as_micros())
    }
}

/// Where the source of a definition came from, so behaviour traces back to version control.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    pub repository: String,
    pub commit: String,
    pub path: String,
}

/// How an event or command addresses an instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    Id(String),
    Key { workflow: String, key: String },
}

/// Which instances a migration moves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Selection {
    /// These instances (at most `MIGRATION_INSTANCES_MAX`); every one must be at the source
    /// version, or the whole command is refused.
    Instances(Vec<Target>),
    /// Every instance of the workflow at the source version, in (state, id) order, resuming
    /// after `after`; one command migrates a bounded batch and says where to resume.
    All { after: Option<MigrationCursor> },
}

/// Where an all-instances migration resumes: after this (state, instance id) of the
/// workflow's state index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationCursor {
    pub state: String,
    pub instance_id: String,
}

/// One instance a migration moved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Migrated {
    pub instance_id: String,
    pub from_state: String,
    pub to_state: String,
    pub version: u64,
    pub global_seq: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum TaskOp {
    Lease {
        worker: Actor,
    },
    Heartbeat {
        token: LeaseToken,
        worker: Actor,
    },
    Complete {
        token: LeaseToken,
        #[serde(with = "lockstep_core::json_field::value")]
        result: serde_json::Value,
        worker: Actor,
    },
    Fail {
        token: LeaseToken,
        error: String,
        retryable: bool,
        worker: Actor,
    },
    /// Log format 6 (`crate::format::LOG_FORMAT_RELEASE`): appended last, so the variant
    /// indexes of older entries stay the same; proposed only once every member reads it.
    Release {
        token: LeaseToken,
        worker: Actor,
    },
}

impl TaskOp {
    /// The engine command this operation asks of task `task_id`; a lease is granted for the
    /// `term` of the entry that carries it.
    pub fn command(&self, task_id: &str, term: u64) -> Command {
        let task_id = task_id.to_string();
        match self.clone() {
            TaskOp::Lease { worker } => Command::LeaseTask {
                task_id,
                worker,
                term,
            },
            TaskOp::Heartbeat { token, worker } => Command::HeartbeatTask {
                task_id,
                token,
                worker,
            },
            TaskOp::Complete {
                token,
                result,
                worker,
            } => Command::CompleteTask {
                task_id,
                token,
                result,
                worker,
            },
            TaskOp::Fail {
                token,
                error,
                retryable,
                worker,
            } => Command::FailTask {
                task_id,
                token,
                error,
                retryable,
                worker,
            },
            TaskOp::Release { token, worker } => Command::ReleaseTask {
                task_id,
                token,
                worker,
            },
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Body {
    ApplyDefinition {
        source: String,
        provenance: Provenance,
        actor: Actor,
    },
    Create {
        workflow: String,
        key: Option<String>,
        #[serde(with = "lockstep_core::json_field::value")]
        data: serde_json::Value,
        actor: Actor,
    },
    Transition {
        target: Target,
        transition: String,
        #[serde(with = "lockstep_core::json_field::value")]
        payload: serde_json::Value,
        actor: Actor,
        expected_version: Option<u64>,
    },
    Event {
        target: Target,
        event: String,
        #[serde(with = "lockstep_core::json_field::value")]
        payload: serde_json::Value,
        actor: Actor,
    },
    /// Timers the leader found due, as (instance id, timer id).
    FireTimers { timers: Vec<(String, String)> },
    Task {
        instance_id: String,
        task_id: String,
        op: TaskOp,
    },
    ResolveIncident {
        instance_id: String,
        incident_id: String,
        retry_task: bool,
        actor: Actor,
    },
    /// The leader dispatched the outbox through `through` (a sequence): those items are
    /// removed. Idempotent: acknowledging what is already gone removes nothing.
    AckOutbox { through: u64 },
    /// Does nothing but move cluster time; used by tests and to probe the leader.
    Noop,
    /// Moves instances to another version of their definition (DESIGN §2): all of them or
    /// none, each with a `migration` audit record and its timers re-armed per the plan.
    Migrate {
        plan: Migration,
        selection: Selection,
        actor: Actor,
    },
    // The variants below are log format 2 (`crate::format`): they are appended after every
    // older variant so that bincode's variant indexes of older entries stay the same, and a
    // leader proposes them only once the whole cluster reads format 2.
    /// Group commit: many client requests in one log entry, applied in order, each with its
    /// own request id, dedup entry, outcome, audit record and strictly increasing cluster
    /// time. The outer proposal has no request id; its `at` is not used.
    Batch(Vec<Proposal>),
    /// Raises the cluster's log format (the cluster-version gate, `crate::format`): proposed
    /// by a leader once every member runs a build that reads `version`. Replicated, so every
    /// replica switches behaviour at the same entry.
    SetLogFormat { version: u32 },
    /// Erasure (log format 7, `crate::format::LOG_FORMAT_REDACT`): the named data fields of an
    /// instance, and the same paths in its command journal, replaced by digests of their
    /// values. Appended last; proposed only once every member reads format 7.
    Redact {
        target: Target,
        fields: Vec<String>,
        actor: Actor,
    },
    /// Webhook subscriptions (log format 8, `crate::format::LOG_FORMAT_WEBHOOKS`): managed
    /// by operators, and moved along by the leader's delivery. Appended last.
    Subscriptions(SubscriptionOp),
    /// A request made inside an exported trace (log format 9,
    /// `crate::format::LOG_FORMAT_TRACES`): `body` applied as if it stood alone, inside an
    /// `apply` span that continues `traceparent` (W3C, [`crate::trace`]) on every replica.
    /// The request's digest and dedup entry are those of `body`, so a retry made outside
    /// the trace is the same request. Never nested. Appended last.
    Traced {
        traceparent: String,
        body: Box<Body>,
    },
    /// Schedules (log format 10, `crate::format::LOG_FORMAT_SCHEDULES`): managed by
    /// operators, fired by the leader. Appended last.
    Schedules(ScheduleOp),
}

/// A change to the schedules (`lockstep_core::schedule`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ScheduleOp {
    /// A new schedule; its first tick is the first after the create's cluster time.
    Create {
        spec: lockstep_core::schedule::ScheduleSpec,
        actor: Actor,
    },
    /// Stops firing; ticks while paused are not caught up after a resume.
    Pause {
        name: String,
        reason: String,
        actor: Actor,
    },
    /// Fires again from the first tick after the resume.
    Resume {
        name: String,
        actor: Actor,
    },
    Delete {
        name: String,
        actor: Actor,
    },
    /// The leader found the tick at `tick` due: apply fires it, or skips it by the overlap
    /// and catch-up policies, and moves the schedule to its next tick. A fire of a tick the
    /// schedule is no longer at (a repeat after a leader change, a paused or deleted
    /// schedule) changes nothing.
    Fire {
        name: String,
        tick: Timestamp,
    },
}

/// A change to the webhook subscriptions (`lockstep_core::subscription`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum SubscriptionOp {
    /// A new subscription, delivering the records after `start_after` (the audit head at
    /// apply when `None`: only records written from now on).
    Create {
        name: String,
        url: String,
        filter: lockstep_core::subscription::Filter,
        secret: String,
        start_after: Option<u64>,
        actor: Actor,
    },
    /// Stops delivery; the cursor stays, so a resume loses and reorders nothing.
    Pause {
        name: String,
        reason: String,
        actor: Actor,
    },
    /// Delivers again from the cursor; clears the pause and the last error.
    Resume {
        name: String,
        actor: Actor,
    },
    Delete {
        name: String,
        actor: Actor,
    },
    /// The leader's delivery: cursors moved forward (never back), delivery errors, and
    /// subscriptions delivery gave up on. Updates of deleted subscriptions are ignored.
    Progress {
        updates: Vec<DeliveryProgress>,
    },
}

/// One subscription's delivery progress in a [`SubscriptionOp::Progress`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryProgress {
    pub name: String,
    /// The subscription's generation the delivery ran in: an update of another is ignored.
    pub generation: i64,
    /// The last global audit sequence handled.
    pub cursor: u64,
    /// The last delivery error (`None`: the last attempt succeeded).
    pub error: Option<String>,
    /// Delivery gave up (attempts or lag over their limits): pause with `error` as reason.
    pub pause: bool,
}

impl Body {
    pub fn name(&self) -> &'static str {
        match self {
            Body::ApplyDefinition { .. } => "apply_definition",
            Body::Create { .. } => "create",
            Body::Transition { .. } => "transition",
            Body::Event { .. } => "event",
            Body::FireTimers { .. } => "fire_timers",
            Body::Task { .. } => "task",
            Body::ResolveIncident { .. } => "resolve_incident",
            Body::AckOutbox { .. } => "ack_outbox",
            Body::Noop => "noop",
            Body::Migrate { .. } => "migrate",
            Body::Batch(_) => "batch",
            Body::SetLogFormat { .. } => "set_log_format",
            Body::Redact { .. } => "redact",
            Body::Subscriptions(_) => "subscriptions",
            Body::Traced { body, .. } => body.name(),
            Body::Schedules(_) => "schedules",
        }
    }

    /// The request itself and the trace it was made in, if any ([`Body::Traced`]).
    pub fn untraced(&self) -> (&Body, Option<&str>) {
        match self {
            Body::Traced { traceparent, body } => (body, Some(traceparent)),
            body => (body, None),
        }
    }
}

/// The result of applying one entry. Refusals are results.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// A change to an instance.
    Applied {
        instance_id: String,
        version: u64,
        state: String,
        global_seq: u64,
    },
    Refused(Refusal),
    Definition {
        workflow: String,
        version: String,
        created: bool,
    },
    TimersFired {
        fired: u32,
        stale: u32,
    },
    /// Blank and membership entries, and `Noop`.
    Empty,
    /// The instances one `Migrate` command moved; `next` is where an all-instances migration
    /// resumes when more may remain (`None`: done).
    Migrated {
        instances: Vec<Migrated>,
        next: Option<MigrationCursor>,
    },
    /// The responses of a `Body::Batch`, one per request, in order. Last, for the same reason
    /// as `Body::Batch`.
    Batch(Vec<Response>),
    /// A subscription as a `Body::Subscriptions` change left it (as it was, for a delete).
    /// Appended last.
    Subscription(Box<lockstep_core::subscription::Subscription>),
    /// A schedule as a `Body::Schedules` change left it (as it was, for a delete). Appended
    /// last.
    Schedule(Box<lockstep_core::schedule::Schedule>),
}
