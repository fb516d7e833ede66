//! The definition language as Rust types (DESIGN §2).
//!
//! These types are exactly what a YAML file may contain: unknown keys are refused, and the JSON
//! Schema in `schema/workflow.schema.json` is generated from them. Durations, percentages and
//! calendar hours stay text here and are parsed by [`crate::validate`], so that each kind of
//! mistake gets its own diagnostic code and location.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One workflow definition: a declared state machine with its time and trust constraints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    /// The workflow's name; instances are created by this name.
    pub workflow: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A JSON Schema for the instance data. Creation data and every data update are checked
    /// against it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<serde_json::Map<String, serde_json::Value>>")]
    pub data: Option<serde_json::Value>,
    /// Who may create instances. Without it, any authenticated actor may.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create: Option<CreateDef>,
    /// Business calendars by name, used by SLAs and expiries.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub calendars: BTreeMap<String, CalendarDef>,
    /// The states by name. Exactly one is `initial`.
    pub states: BTreeMap<String, StateDef>,
    /// Named SLA clocks.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub slas: BTreeMap<String, SlaDef>,
    /// The transitions by name: the only way state changes.
    pub transitions: BTreeMap<String, TransitionDef>,
    /// Events that, when they match no transition from the current state, are recorded as
    /// ignored instead of refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore_events: Vec<String>,
    /// Data fields kept in an index, with their type, e.g. `{ customer_id: string, amount:
    /// number }` (a dotted name is a nested field): `lockstep list --where` filters on them
    /// without a scan. An index covers the instances of the versions that declare it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub index: BTreeMap<String, IndexType>,
}

/// The type of an indexed data field: instances whose value has another type (or none) are
/// not in the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum IndexType {
    String,
    Number,
}

impl IndexType {
    pub fn name(self) -> &'static str {
        match self {
            IndexType::String => "string",
            IndexType::Number => "number",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateDef {
    /// CEL permission predicate over `actor`, `instance` (the new instance) and `now`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StateDef {
    #[serde(default, skip_serializing_if = "is_false")]
    pub initial: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub terminal: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A scheduled exit: after this long in the state, the engine takes `transition`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<ExpiryDef>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExpiryDef {
    pub after: DurationText,
    /// A `system: true` transition from this state.
    pub transition: String,
    /// Measure `after` in business time of this calendar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calendar: Option<String>,
}

/// A business calendar: when the clock of a business-time SLA runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CalendarDef {
    /// An IANA time zone such as `Europe/Berlin`.
    pub timezone: String,
    /// Working hours by day or day range: `mon-fri: "09:00-17:00"`, `sat: "10:00-12:00,13:00-15:00"`.
    pub weekly: BTreeMap<String, String>,
    /// Whole days off, as `YYYY-MM-DD` in the calendar's time zone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holidays: Vec<String>,
}

/// An SLA clock (ServiceNow / JSM semantics).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SlaDef {
    /// Starts the clock when the instance enters one of these states.
    pub start: StateTrigger,
    /// Stops the clock for good when the instance enters one of these states.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<StateTrigger>,
    /// The clock does not run while the instance is in one of these states.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<PauseDef>,
    /// Restarts the clock with a full budget when the instance enters one of these states.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset: Option<StateTrigger>,
    /// The budget.
    pub within: DurationText,
    /// Count the budget in business time of this calendar instead of calendar time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calendar: Option<String>,
    /// Warning thresholds as percentages of the budget, e.g. `[50%, 75%]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warn_at: Vec<String>,
    /// The transition taken by `system:sla` on breach.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_breach: Option<ActionDef>,
    /// A CEL condition evaluated when the clock would start; the SLA applies only if it holds
    /// (for example severity-dependent SLAs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StateTrigger {
    pub enter: OneOrMany,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PauseDef {
    #[serde(rename = "in")]
    pub states: OneOrMany,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionDef {
    pub transition: String,
}

/// A declared move from one or more states to one state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TransitionDef {
    pub from: OneOrMany,
    pub to: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The inbound event that takes this transition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<String>,
    /// CEL permission predicate over `actor`, `instance`, `payload`, `now`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<String>,
    /// CEL condition over `instance`, `payload`, `now` (and `actor`) that must hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<String>,
    /// Only the engine (`system:*` actors) takes this transition.
    #[serde(default, skip_serializing_if = "is_false")]
    pub system: bool,
    /// Refused before this gate opens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<GateDef>,
    /// Refused as expired after this gate closes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<GateDef>,
    /// A JSON Schema for the payload of this transition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<serde_json::Map<String, serde_json::Value>>")]
    pub payload: Option<serde_json::Value>,
    /// What the outside world is asked to do once the transition is committed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub effects: Vec<EffectDef>,
}

/// A time gate: a duration after entering the state, or a timestamp held in a data field plus
/// an optional offset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum GateDef {
    AfterEntering(DurationText),
    Field(FieldGate),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FieldGate {
    /// A top-level field of the instance data holding an RFC 3339 timestamp.
    pub field: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<DurationText>,
}

/// One effect: exactly one of `task` or `emit`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EffectDef {
    /// A task for a worker queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskDef>,
    /// A named event on the change feed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emit: Option<EmitDef>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmitDef {
    pub event: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskDef {
    pub queue: String,
    #[serde(rename = "type")]
    pub task_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryDef>,
    /// The lease: a worker that neither completes nor heartbeats within it loses the task.
    pub timeout: DurationText,
    /// Transition taken with the worker as actor and the result as payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_complete: Option<String>,
    /// `system: true` transition taken when the retry policy is exhausted; without it an
    /// incident is opened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_exhausted: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryDef {
    pub max_attempts: u32,
    #[serde(default)]
    pub backoff: Backoff,
    pub initial: DurationText,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<DurationText>,
    /// Growth factor of exponential backoff (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multiplier: Option<u32>,
    #[serde(default)]
    pub jitter: Jitter,
    /// Give up once this long has passed since the first attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_total: Option<DurationText>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Backoff {
    #[default]
    Fixed,
    Exponential,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Jitter {
    #[default]
    None,
    /// Uniform in `[0, delay]`.
    Full,
    /// Uniform in `[delay/2, delay]`.
    Equal,
}

/// A state name or a list of state names.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn iter(&self) -> impl Iterator<Item = &String> {
        match self {
            OneOrMany::One(one) => std::slice::from_ref(one).iter(),
            OneOrMany::Many(many) => many.iter(),
        }
    }
}

/// A duration as written, e.g. `16h`; parsed by the validator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DurationText(pub String);

impl JsonSchema for DurationText {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^([0-9]+(ms|s|m|h|d|w))+$",
            "description": "A duration such as 30d, 16h, 1h30m, 45s or 500ms."
        })
    }
}

fn is_false(value: &bool) -> bool {
    !*value
}
