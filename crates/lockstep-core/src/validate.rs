//! Static validation: a parsed [`Definition`] becomes a [`CompiledDefinition`] or a list of
//! located diagnostics, one per broken rule (DESIGN §2).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use crate::calendar::Calendar;
use crate::canonical::definition_version;
use crate::definition::{Definition, DurationText, GateDef, RetryDef, TransitionDef};
use crate::diagnostic::{Code, Diagnostic};
use crate::duration::Duration;
use crate::expr::{DataFields, Expression, compile_expr};
use crate::limits::Limits;
use crate::retry::RetryPolicy;
use crate::source::{SourceMap, parse_definition};

/// A JSON Schema compiled for validating data or payloads.
#[derive(Clone)]
pub struct Schema(Arc<jsonschema::Validator>);

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Schema")
    }
}

/// Why a value does not match a schema: the validator's reason for the first offending
/// location, and that location (a JSON pointer) unless it is the whole value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    /// The value as a whole does not match.
    #[error("{reason}")]
    Mismatch { reason: String },
    /// The part of the value at `at` does not match.
    #[error("at `{at}`: {reason}")]
    MismatchAt { at: String, reason: String },
}

/// Why a JSON Schema does not compile: the validator's reason, and the location of the
/// offending part of the schema (a JSON pointer) unless it is the whole schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidSchema {
    /// The schema as a whole is not valid.
    #[error("{reason}")]
    Whole { reason: String },
    /// The part of the schema at `at` is not valid.
    #[error("at `{at}`: {reason}")]
    At { at: String, reason: String },
}

impl Schema {
    fn compile(schema: &serde_json::Value) -> Result<Schema, InvalidSchema> {
        jsonschema::validator_for(schema)
            .map(|v| Schema(Arc::new(v)))
            .map_err(|e| {
                let at = e.instance_path().to_string();
                let reason = e.to_string();
                if at.is_empty() {
                    InvalidSchema::Whole { reason }
                } else {
                    InvalidSchema::At { at, reason }
                }
            })
    }

    /// Checks a value; the error names the first offending location.
    pub fn check(&self, value: &serde_json::Value) -> Result<(), SchemaError> {
        self.0.validate(value).map_err(|e| {
            let at = e.instance_path().to_string();
            let reason = e.to_string();
            if at.is_empty() {
                SchemaError::Mismatch { reason }
            } else {
                SchemaError::MismatchAt { at, reason }
            }
        })
    }
}

#[derive(Clone, Debug)]
pub struct StateSpec {
    pub terminal: bool,
    pub expires: Option<ExpirySpec>,
}

#[derive(Clone, Debug)]
pub struct ExpirySpec {
    pub after_ms: u64,
    pub transition: String,
    pub calendar: Option<String>,
}

/// A time gate on a transition.
#[derive(Clone, Debug)]
pub enum Gate {
    /// Milliseconds after entering the current state.
    AfterEntering(u64),
    /// A timestamp in a top-level data field, plus an offset in milliseconds.
    Field { field: String, offset_ms: u64 },
}

#[derive(Clone, Debug)]
pub struct TaskSpec {
    pub queue: String,
    pub task_type: String,
    pub retry: RetryPolicy,
    pub timeout_ms: u64,
    pub on_complete: Option<String>,
    pub on_exhausted: Option<String>,
}

#[derive(Clone, Debug)]
pub enum EffectSpec {
    Task(TaskSpec),
    Emit(String),
}

#[derive(Clone, Debug)]
pub struct TransitionSpec {
    pub name: String,
    pub from: BTreeSet<String>,
    pub to: String,
    pub on: Option<String>,
    pub allow: Option<Expression>,
    pub guard: Option<Expression>,
    pub system: bool,
    pub not_before: Option<Gate>,
    pub not_after: Option<Gate>,
    pub payload: Option<Schema>,
    pub effects: Vec<EffectSpec>,
}

#[derive(Clone, Debug)]
pub struct SlaSpec {
    pub name: String,
    pub start: BTreeSet<String>,
    pub stop: BTreeSet<String>,
    pub pause: BTreeSet<String>,
    pub reset: BTreeSet<String>,
    pub budget_ms: u64,
    pub calendar: Option<String>,
    /// Warning thresholds in percent of the budget, ascending.
    pub warn_at: Vec<u8>,
    pub on_breach: Option<String>,
    pub when: Option<Expression>,
}

/// A validated definition, ready for [`crate::evaluate`]. Expressions, schemas and calendars
/// are compiled once here.
#[derive(Clone, Debug)]
pub struct CompiledDefinition {
    pub definition: Definition,
    /// Hex SHA-256 of the canonical form: the definition version.
    pub version: String,
    pub initial: String,
    pub states: BTreeMap<String, StateSpec>,
    pub transitions: BTreeMap<String, TransitionSpec>,
    pub slas: BTreeMap<String, SlaSpec>,
    pub calendars: BTreeMap<String, Calendar>,
    pub data_schema: Option<Schema>,
    pub create_allow: Option<Expression>,
    pub ignore_events: BTreeSet<String>,
    pub limits: Limits,
}

impl CompiledDefinition {
    pub fn name(&self) -> &str {
        &self.definition.workflow
    }

    /// Transitions that may be attempted from `state`, by name.
    pub fn transitions_from<'a>(
        &'a self,
        state: &'a str,
    ) -> impl Iterator<Item = &'a TransitionSpec> + 'a {
        self.transitions
            .values()
            .filter(move |t| t.from.contains(state))
    }
}

/// The result of checking one source: the compiled definition if there were no errors, and
/// every diagnostic (warnings included), located.
#[derive(Debug)]
pub struct Checked {
    pub compiled: Option<CompiledDefinition>,
    pub diagnostics: Vec<Diagnostic>,
}

/// Parses and validates a definition source.
pub fn check(file: Option<&str>, text: &str, limits: &Limits) -> Checked {
    match parse_definition(file, text, limits) {
        Err(diagnostics) => Checked {
            compiled: None,
            diagnostics,
        },
        Ok((definition, map)) => check_definition(definition, &map, limits),
    }
}

/// Parses and validates a definition source, failing on any error.
pub fn compile(
    file: Option<&str>,
    text: &str,
    limits: &Limits,
) -> Result<CompiledDefinition, Vec<Diagnostic>> {
    let checked = check(file, text, limits);
    match checked.compiled {
        Some(compiled) => Ok(compiled),
        None => Err(checked
            .diagnostics
            .into_iter()
            .filter(Diagnostic::is_error)
            .collect()),
    }
}

/// Validates an already parsed definition.
pub fn check_definition(definition: Definition, map: &SourceMap, limits: &Limits) -> Checked {
    let mut v = Validator {
        definition: &definition,
        limits,
        diagnostics: Vec::new(),
    };
    let parts = v.run();
    let mut diagnostics: Vec<Diagnostic> =
        v.diagnostics.into_iter().map(|d| map.place(d)).collect();
    diagnostics.sort_by_key(|a| (a.line, a.column, a.code));
    let has_errors = diagnostics.iter().any(Diagnostic::is_error);
    let compiled = match parts {
        Some(parts) if !has_errors => Some(CompiledDefinition {
            version: definition_version(&definition),
            definition,
            initial: parts.initial,
            states: parts.states,
            transitions: parts.transitions,
            slas: parts.slas,
            calendars: parts.calendars,
            data_schema: parts.data_schema,
            create_allow: parts.create_allow,
            ignore_events: parts.ignore_events,
            limits: limits.clone(),
        }),
        _ => None,
    };
    Checked {
        compiled,
        diagnostics,
    }
}

struct Parts {
    initial: String,
    states: BTreeMap<String, StateSpec>,
    transitions: BTreeMap<String, TransitionSpec>,
    slas: BTreeMap<String, SlaSpec>,
    calendars: BTreeMap<String, Calendar>,
    data_schema: Option<Schema>,
    create_allow: Option<Expression>,
    ignore_events: BTreeSet<String>,
}

struct Validator<'a> {
    definition: &'a Definition,
    limits: &'a Limits,
    diagnostics: Vec<Diagnostic>,
}

impl Validator<'_> {
    fn error(
        &mut self,
        code: Code,
        path: impl Into<String>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.diagnostics
            .push(Diagnostic::error(code, path, message, hint));
    }

    fn run(&mut self) -> Option<Parts> {
        let d = self.definition;
        self.names();
        self.limits_on_size();
        let initial = self.initial_state();
        let data_schema = self.schema(d.data.as_ref(), "data", true);
        let data = data_fields(d.data.as_ref());
        let calendars = self.calendars();
        let states = self.states(&calendars);
        let transitions = self.transitions(&data);
        self.graph(initial.as_deref());
        self.events();
        self.index(&data);
        let slas = self.slas(&data, &calendars);
        self.actions();
        let create_allow = d
            .create
            .as_ref()
            .and_then(|c| c.allow.as_deref())
            .and_then(|src| self.expr(src, "create.allow", &data));
        Some(Parts {
            initial: initial?,
            states,
            transitions,
            slas,
            calendars,
            data_schema,
            create_allow,
            ignore_events: d.ignore_events.iter().cloned().collect(),
        })
    }

    fn names(&mut self) {
        let d = self.definition;
        let bad = |name: &str| {
            name.is_empty()
                || name.len() > 128
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        };
        let hint = "use 1 to 128 letters, digits, `_`, `-` or `.`";
        if bad(&d.workflow) {
            self.error(
                Code::InvalidName,
                "workflow",
                format!("`{}` is not a valid workflow name", d.workflow),
                hint,
            );
        }
        let state_names: Vec<String> = d.states.keys().filter(|n| bad(n)).cloned().collect();
        for name in state_names {
            self.error(
                Code::InvalidName,
                format!("states.{name}"),
                format!("`{name}` is not a valid state name"),
                hint,
            );
        }
        let transition_names: Vec<String> =
            d.transitions.keys().filter(|n| bad(n)).cloned().collect();
        for name in transition_names {
            self.error(
                Code::InvalidName,
                format!("transitions.{name}"),
                format!("`{name}` is not a valid transition name"),
                hint,
            );
        }
    }

    fn limits_on_size(&mut self) {
        let (states, transitions) = (
            self.definition.states.len(),
            self.definition.transitions.len(),
        );
        if states > self.limits.states_max {
            let msg = format!(
                "{states} states is more than states_max ({})",
                self.limits.states_max
            );
            self.error(
                Code::LimitExceeded,
                "states",
                msg,
                "split the workflow into several workflows linked by events",
            );
        }
        if transitions > self.limits.transitions_max {
            let msg = format!(
                "{transitions} transitions is more than transitions_max ({})",
                self.limits.transitions_max
            );
            self.error(
                Code::LimitExceeded,
                "transitions",
                msg,
                "split the workflow into several workflows linked by events",
            );
        }
    }

    fn initial_state(&mut self) -> Option<String> {
        let initial: Vec<&String> = self
            .definition
            .states
            .iter()
            .filter(|(_, s)| s.initial)
            .map(|(n, _)| n)
            .collect();
        match initial.as_slice() {
            [] => {
                self.error(
                    Code::NoInitialState,
                    "states",
                    "no state is marked `initial: true`",
                    "mark the state where every instance starts with `initial: true`",
                );
                None
            }
            [one] => Some((*one).clone()),
            [_, rest @ ..] => {
                let names: Vec<String> = initial.iter().map(|s| format!("`{s}`")).collect();
                let path = format!("states.{}.initial", rest[0]);
                self.error(
                    Code::SeveralInitialStates,
                    path,
                    format!("several states are initial: {}", names.join(", ")),
                    "keep `initial: true` on exactly one state",
                );
                None
            }
        }
    }

    fn schema(
        &mut self,
        schema: Option<&serde_json::Value>,
        path: &str,
        is_data: bool,
    ) -> Option<Schema> {
        let schema = schema?;
        match Schema::compile(schema) {
            Ok(s) => Some(s),
            Err(invalid) => {
                let what = if is_data {
                    "the data schema"
                } else {
                    "the payload schema"
                };
                let (path, what, reason) = match invalid {
                    InvalidSchema::Whole { reason } => (path.to_string(), what.to_string(), reason),
                    InvalidSchema::At { at, reason } => (
                        format!("{path}{}", at.replace('/', ".")),
                        format!("{what} at `{at}`"),
                        reason,
                    ),
                };
                self.error(
                    Code::InvalidDataSchema,
                    path,
                    format!("{what} is not a valid JSON Schema: {reason}"),
                    "fix the schema; it follows JSON Schema draft 2020-12",
                );
                None
            }
        }
    }

    fn duration(&mut self, text: &DurationText, path: &str) -> Option<u64> {
        match Duration::parse(&text.0) {
            Ok(d) if d.as_ms() > self.limits.duration_ms_max => {
                let msg = format!(
                    "`{}` is longer than duration_ms_max ({})",
                    text.0,
                    Duration::from_ms(self.limits.duration_ms_max)
                );
                self.error(Code::InvalidDuration, path, msg, "use a shorter duration");
                None
            }
            Ok(d) => Some(d.as_ms()),
            Err(e) => {
                let e = e.to_string();
                let hint = "write a duration such as 30d, 16h, 1h30m, 45s or 500ms";
                // Duration::parse ends most messages with the hint; say it once, as the hint.
                let message = e
                    .strip_suffix(&format!("; {hint}"))
                    .unwrap_or(&e)
                    .to_string();
                self.error(Code::InvalidDuration, path, message, hint);
                None
            }
        }
    }

    fn expr(&mut self, source: &str, path: &str, data: &DataFields) -> Option<Expression> {
        match compile_expr(source, path, data, self.limits) {
            Ok(e) => Some(e),
            Err(d) => {
                self.diagnostics.push(d);
                None
            }
        }
    }

    fn state_exists(&mut self, name: &str, path: &str) -> bool {
        if self.definition.states.contains_key(name) {
            return true;
        }
        let known: Vec<&str> = self.definition.states.keys().map(String::as_str).collect();
        self.error(
            Code::UnknownState,
            path,
            format!("`{name}` is not a declared state"),
            format!(
                "declare it under `states:` or use one of: {}",
                known.join(", ")
            ),
        );
        false
    }

    fn calendar_exists(&mut self, name: &str, path: &str) {
        if !self.definition.calendars.contains_key(name) {
            self.error(
                Code::UnknownCalendar,
                path,
                format!("`{name}` is not a declared calendar"),
                "declare it under `calendars:` or remove the reference to count calendar time",
            );
        }
    }

    /// `index:` names real fields (when the data schema lists its properties), within bounds.
    fn index(&mut self, data: &DataFields) {
        let index = &self.definition.index;
        if index.len() > crate::search::INDEX_FIELDS_MAX {
            self.error(
                Code::LimitExceeded,
                "index",
                format!(
                    "{} indexed fields, more than INDEX_FIELDS_MAX ({})",
                    index.len(),
                    crate::search::INDEX_FIELDS_MAX
                ),
                "index the fields lists filter on most; filter the rest of a page in the client",
            );
        }
        for field in index.keys() {
            let path = format!("index.{field}");
            if let Err(e) = crate::search::check_field_name(field) {
                self.error(
                    Code::InvalidName,
                    &path,
                    e,
                    "name a data field, e.g. customer_id or customer.id",
                );
                continue;
            }
            let top = field.split('.').next().unwrap_or(field);
            if let Some(known) = &data.0
                && !known.contains(top)
            {
                self.error(
                    Code::InvalidValue,
                    &path,
                    format!("`{top}` is not a property of the data schema"),
                    "index a field the `data` schema declares under `properties`",
                );
            }
        }
    }

    fn calendars(&mut self) -> BTreeMap<String, Calendar> {
        let mut out = BTreeMap::new();
        for (name, def) in &self.definition.calendars {
            match Calendar::compile(def, self.limits) {
                Ok(c) => {
                    out.insert(name.clone(), c);
                }
                Err(e) => self.error(
                    Code::InvalidCalendar,
                    format!("calendars.{name}"),
                    format!("calendar `{name}`: {e}"),
                    "see the calendar format in README: timezone, weekly hours, holidays",
                ),
            }
        }
        out
    }

    fn states(&mut self, _calendars: &BTreeMap<String, Calendar>) -> BTreeMap<String, StateSpec> {
        let mut out = BTreeMap::new();
        for (name, state) in &self.definition.states {
            let expires = state.expires.as_ref().and_then(|e| {
                let path = format!("states.{name}.expires");
                if let Some(cal) = &e.calendar {
                    self.calendar_exists(cal, &format!("{path}.calendar"));
                }
                let after_ms = self.duration(&e.after, &format!("{path}.after"))?;
                Some(ExpirySpec {
                    after_ms,
                    transition: e.transition.clone(),
                    calendar: e.calendar.clone(),
                })
            });
            if state.terminal && state.initial {
                self.error(
                    Code::TransitionFromTerminal,
                    format!("states.{name}"),
                    format!(
                        "`{name}` is both initial and terminal, so no instance could ever move"
                    ),
                    "remove `terminal: true` or `initial: true`",
                );
            }
            out.insert(
                name.clone(),
                StateSpec {
                    terminal: state.terminal,
                    expires,
                },
            );
        }
        out
    }

    fn transitions(&mut self, data: &DataFields) -> BTreeMap<String, TransitionSpec> {
        let mut out = BTreeMap::new();
        for (name, t) in &self.definition.transitions {
            let path = format!("transitions.{name}");
            if let Some(spec) = self.transition(name, t, &path, data) {
                out.insert(name.clone(), spec);
            }
        }
        out
    }

    fn transition(
        &mut self,
        name: &str,
        t: &TransitionDef,
        path: &str,
        data: &DataFields,
    ) -> Option<TransitionSpec> {
        let mut from = BTreeSet::new();
        for state in t.from.iter() {
            if self.state_exists(state, &format!("{path}.from")) {
                if self.definition.states[state].terminal {
                    self.error(
                        Code::TransitionFromTerminal,
                        format!("{path}.from"),
                        format!("transition `{name}` leaves `{state}`, which is terminal"),
                        format!("remove `{state}` from `from`, or drop `terminal: true` from it"),
                    );
                }
                from.insert(state.clone());
            }
        }
        self.state_exists(&t.to, &format!("{path}.to"));
        let allow = t
            .allow
            .as_deref()
            .and_then(|s| self.expr(s, &format!("{path}.allow"), data));
        let guard = t
            .guard
            .as_deref()
            .and_then(|s| self.expr(s, &format!("{path}.guard"), data));
        if t.allow.is_none() && !t.system {
            self.diagnostics.push(Diagnostic::warning(
                Code::AllowMissing,
                path,
                format!("transition `{name}` has no `allow`, so every human actor is refused"),
                "add `allow: \"<CEL over actor>\"`, or `system: true` if only the engine takes it",
            ));
        }
        let not_before = t
            .not_before
            .as_ref()
            .and_then(|g| self.gate(g, &format!("{path}.not_before"), data));
        let not_after = t
            .not_after
            .as_ref()
            .and_then(|g| self.gate(g, &format!("{path}.not_after"), data));
        let payload = self.schema(t.payload.as_ref(), &format!("{path}.payload"), false);
        let mut effects = Vec::new();
        for (i, effect) in t.effects.iter().enumerate() {
            let epath = format!("{path}.effects[{i}]");
            match (&effect.task, &effect.emit) {
                (None, Some(e)) => effects.push(EffectSpec::Emit(e.event.clone())),
                (Some(_), Some(_)) | (None, None) => {
                    self.error(
                        Code::InvalidValue,
                        epath.clone(),
                        "an effect must have exactly one of `task` or `emit`",
                        "split it into two list items, one `task:` and one `emit:`",
                    );
                }
                (Some(task), None) => {
                    let timeout_ms = self.duration(&task.timeout, &format!("{epath}.task.timeout"));
                    let retry = match &task.retry {
                        None => Some(RetryPolicy::once()),
                        Some(r) => self.retry(r, &format!("{epath}.task.retry")),
                    };
                    if let (Some(timeout_ms), Some(retry)) = (timeout_ms, retry) {
                        effects.push(EffectSpec::Task(TaskSpec {
                            queue: task.queue.clone(),
                            task_type: task.task_type.clone(),
                            retry,
                            timeout_ms,
                            on_complete: task.on_complete.clone(),
                            on_exhausted: task.on_exhausted.clone(),
                        }));
                    }
                }
            }
        }
        Some(TransitionSpec {
            name: name.to_string(),
            from,
            to: t.to.clone(),
            on: t.on.clone(),
            allow,
            guard,
            system: t.system,
            not_before,
            not_after,
            payload,
            effects,
        })
    }

    fn gate(&mut self, gate: &GateDef, path: &str, data: &DataFields) -> Option<Gate> {
        match gate {
            GateDef::AfterEntering(d) => self.duration(d, path).map(Gate::AfterEntering),
            GateDef::Field(f) => {
                if let Some(declared) = &data.0
                    && !declared.contains(&f.field)
                {
                    self.error(
                        Code::InvalidValue,
                        format!("{path}.field"),
                        format!("`{}` is not a property of the data schema", f.field),
                        "name a top-level data property that holds an RFC 3339 timestamp",
                    );
                }
                let offset_ms = match &f.offset {
                    Some(o) => self.duration(o, &format!("{path}.offset"))?,
                    None => 0,
                };
                Some(Gate::Field {
                    field: f.field.clone(),
                    offset_ms,
                })
            }
        }
    }

    fn retry(&mut self, r: &RetryDef, path: &str) -> Option<RetryPolicy> {
        let initial_ms = self.duration(&r.initial, &format!("{path}.initial"));
        let max_ms = match &r.max {
            Some(m) => self.duration(m, &format!("{path}.max")),
            None => Some(0),
        };
        let max_total_ms = match &r.max_total {
            Some(m) => self.duration(m, &format!("{path}.max_total")).map(Some),
            None => Some(None),
        };
        if r.max_attempts == 0 || r.max_attempts > 100 {
            self.error(
                Code::InvalidRetry,
                format!("{path}.max_attempts"),
                format!(
                    "max_attempts is {}; it must be between 1 and 100",
                    r.max_attempts
                ),
                "set max_attempts to the total number of tries, first one included",
            );
            return None;
        }
        let multiplier = r.multiplier.unwrap_or(2);
        if !(1..=10).contains(&multiplier) {
            self.error(
                Code::InvalidRetry,
                format!("{path}.multiplier"),
                format!("multiplier is {multiplier}; it must be between 1 and 10"),
                "use 2 for doubling",
            );
            return None;
        }
        Some(RetryPolicy {
            max_attempts: r.max_attempts,
            backoff: r.backoff,
            initial_ms: initial_ms?,
            max_ms: max_ms?,
            multiplier,
            jitter: r.jitter,
            max_total_ms: max_total_ms?,
        })
    }

    /// Reachability from the initial state and states with no way out.
    fn graph(&mut self, initial: Option<&str>) {
        let d = self.definition;
        let mut outgoing: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for t in d.transitions.values() {
            for from in t.from.iter() {
                outgoing
                    .entry(from.as_str())
                    .or_default()
                    .push(t.to.as_str());
            }
        }
        if let Some(initial) = initial {
            let mut seen = BTreeSet::from([initial]);
            let mut queue = VecDeque::from([initial]);
            while let Some(state) = queue.pop_front() {
                for next in outgoing.get(state).into_iter().flatten() {
                    if seen.insert(next) {
                        queue.push_back(next);
                    }
                }
            }
            let unreachable: Vec<&String> = d
                .states
                .keys()
                .filter(|s| !seen.contains(s.as_str()))
                .collect();
            for state in unreachable {
                self.error(
                    Code::UnreachableState,
                    format!("states.{state}"),
                    format!("state `{state}` cannot be reached from the initial state `{initial}`"),
                    "add a transition into it, or remove it",
                );
            }
        }
        let dead: Vec<&String> = d
            .states
            .iter()
            .filter(|(n, s)| !s.terminal && !outgoing.contains_key(n.as_str()))
            .map(|(n, _)| n)
            .collect();
        for state in dead {
            self.error(
                Code::DeadEndState,
                format!("states.{state}"),
                format!("state `{state}` is not terminal but no transition leaves it"),
                "add a transition out of it, or mark it `terminal: true`",
            );
        }
    }

    /// Two transitions taking the same event from the same state make routing ambiguous.
    fn events(&mut self) {
        let mut routes: BTreeMap<(&str, &str), &str> = BTreeMap::new();
        let mut problems = Vec::new();
        for (name, t) in &self.definition.transitions {
            let Some(event) = &t.on else { continue };
            for from in t.from.iter() {
                if let Some(other) = routes.insert((event.as_str(), from.as_str()), name.as_str()) {
                    problems.push((format!("transitions.{name}.on"), format!("event `{event}` in state `{from}` would take both `{other}` and `{name}`")));
                }
            }
        }
        for (path, msg) in problems {
            self.error(
                Code::AmbiguousEvent,
                path,
                msg,
                "give the transitions different events or disjoint `from` states",
            );
        }
    }

    fn slas(
        &mut self,
        data: &DataFields,
        _calendars: &BTreeMap<String, Calendar>,
    ) -> BTreeMap<String, SlaSpec> {
        let mut out = BTreeMap::new();
        for (name, sla) in &self.definition.slas {
            let path = format!("slas.{name}");
            let states = |list: Option<&crate::definition::OneOrMany>,
                          key: &str,
                          this: &mut Self|
             -> BTreeSet<String> {
                let mut set = BTreeSet::new();
                for s in list.into_iter().flat_map(|l| l.iter()) {
                    if this.state_exists(s, &format!("{path}.{key}")) {
                        set.insert(s.clone());
                    }
                }
                set
            };
            let start = states(Some(&sla.start.enter), "start", self);
            let stop = states(sla.stop.as_ref().map(|s| &s.enter), "stop", self);
            let pause = states(sla.pause.as_ref().map(|s| &s.states), "pause", self);
            let reset = states(sla.reset.as_ref().map(|s| &s.enter), "reset", self);
            if let Some(cal) = &sla.calendar {
                self.calendar_exists(cal, &format!("{path}.calendar"));
            }
            let budget = self.duration(&sla.within, &format!("{path}.within"));
            if budget == Some(0) {
                self.error(
                    Code::InvalidDuration,
                    format!("{path}.within"),
                    "an SLA budget of zero would breach at once",
                    "give the SLA a positive budget",
                );
            }
            let warn_at = self.percents(&sla.warn_at, &format!("{path}.warn_at"));
            let when = sla
                .when
                .as_deref()
                .and_then(|s| self.expr(s, &format!("{path}.when"), data));
            if let Some(budget_ms) = budget {
                out.insert(
                    name.clone(),
                    SlaSpec {
                        name: name.clone(),
                        start,
                        stop,
                        pause,
                        reset,
                        budget_ms,
                        calendar: sla.calendar.clone(),
                        warn_at,
                        on_breach: sla.on_breach.as_ref().map(|a| a.transition.clone()),
                        when,
                    },
                );
            }
        }
        out
    }

    fn percents(&mut self, list: &[String], path: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, text) in list.iter().enumerate() {
            let parsed = text
                .strip_suffix('%')
                .and_then(|n| n.trim().parse::<u8>().ok())
                .filter(|p| (1..=99).contains(p));
            match parsed {
                Some(p) if out.last().is_none_or(|last| *last < p) => out.push(p),
                Some(_) => self.error(
                    Code::InvalidPercent,
                    format!("{path}[{i}]"),
                    format!("`{text}` is not above the previous threshold"),
                    "list thresholds in ascending order, e.g. [50%, 75%]",
                ),
                None => self.error(
                    Code::InvalidPercent,
                    format!("{path}[{i}]"),
                    format!("`{text}` is not a percentage between 1% and 99%"),
                    "write thresholds like 50% or 75%",
                ),
            }
        }
        out
    }

    /// Actions the engine takes on its own must name existing `system: true` transitions;
    /// `on_complete` must name an existing transition a worker may take.
    fn actions(&mut self) {
        let d = self.definition;
        let mut checks: Vec<(String, String, Option<String>, bool)> = Vec::new();
        for (state, s) in &d.states {
            if let Some(e) = &s.expires {
                checks.push((
                    format!("states.{state}.expires.transition"),
                    e.transition.clone(),
                    Some(state.clone()),
                    true,
                ));
            }
        }
        for (name, sla) in &d.slas {
            if let Some(a) = &sla.on_breach {
                checks.push((
                    format!("slas.{name}.on_breach.transition"),
                    a.transition.clone(),
                    None,
                    true,
                ));
            }
        }
        for (name, t) in &d.transitions {
            for (i, effect) in t.effects.iter().enumerate() {
                if let Some(task) = &effect.task {
                    let base = format!("transitions.{name}.effects[{i}].task");
                    if let Some(x) = &task.on_exhausted {
                        checks.push((format!("{base}.on_exhausted"), x.clone(), None, true));
                    }
                    if let Some(x) = &task.on_complete {
                        checks.push((format!("{base}.on_complete"), x.clone(), None, false));
                    }
                }
            }
        }
        for (path, transition, from_state, must_be_system) in checks {
            let Some(t) = d.transitions.get(&transition) else {
                let known: Vec<&str> = d.transitions.keys().map(String::as_str).collect();
                self.error(
                    Code::UnknownTransition,
                    path,
                    format!("`{transition}` is not a declared transition"),
                    format!("use one of: {}", known.join(", ")),
                );
                continue;
            };
            if must_be_system && !t.system {
                self.error(
                    Code::ActionNotSystem,
                    path.clone(),
                    format!("`{transition}` is taken by the engine but is not `system: true`"),
                    format!("add `system: true` to transition `{transition}`"),
                );
            } else if !must_be_system && t.system {
                self.error(Code::ActionNotApplicable, path.clone(), format!("`{transition}` is `system: true`, so the worker completing the task could never take it"), "name a transition whose `allow` admits workers, e.g. `allow: \"actor.kind == 'worker'\"`");
            }
            if let Some(state) = from_state
                && !t.from.iter().any(|f| *f == state)
            {
                self.error(
                    Code::ActionNotApplicable,
                    path,
                    format!(
                        "`{transition}` does not leave `{state}`, so the expiry could never take it"
                    ),
                    format!("add `{state}` to the `from` of `{transition}`"),
                );
            }
        }
    }
}

/// The top-level properties a data schema declares, if it declares them.
fn data_fields(schema: Option<&serde_json::Value>) -> DataFields {
    let props = schema
        .and_then(|s| s.get("properties"))
        .and_then(|p| p.as_object());
    DataFields(props.map(|p| p.keys().cloned().collect()))
}
