//! Load specs (`--spec FILE`): the user's own workflows, actors and mix of steps, in YAML.
//!
//! A spec names the workflow files to apply, the actors (each optionally with its own token),
//! pools of instances made before the run, the steps of the mix with their weights, and task
//! workers. Every unit of work is one step, chosen by weight from the unit's sequence number
//! (so a run is reproducible): a create (then transitions on the new instance), an event by
//! business key, a get of a pool instance, or a list. Keys, data and payloads are templates
//! (see [`template`]). The file is checked like a definition: unknown keys, wrong types and
//! broken references are reported with their line and column, and nothing starts.
//!
//! `benches/specs/` ships the built-in mixes as specs; `schema/bench-spec.schema.json` is the
//! JSON Schema editors complete them with (`lockstep-bench schema` prints it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lockstep_client::{
    Client, Credentials, Error, Identity, Options, by_id, by_key, pb, request_id,
};
use lockstep_core::source::{FileKind, SourceMap, parse_yaml};
use lockstep_core::{Code, Diagnostic};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::load::{Measured, Outcome, StepMeasured, Workload, mix};
use crate::scenarios::{Ended, ended, outcome};
use crate::template::{Context, Template};

/// Largest spec file.
const SPEC_BYTES_MAX: usize = 256 * 1024;
/// Deepest nesting in a spec file.
const SPEC_DEPTH_MAX: usize = 32;
/// Most steps in the mix.
pub(crate) const STEPS_MAX: usize = 32;
/// Most transitions a step takes on the instance it created.
const THEN_MAX: usize = 16;
/// Most actors, pools and workflow files.
const ACTORS_MAX: usize = 1_000;
const POOLS_MAX: usize = 16;
const WORKFLOWS_MAX: usize = 64;
/// Most instances in one pool, and in all pools together.
const POOL_INSTANCES_MAX: usize = 100_000;
/// Most task workers in all, and the longest service time.
const WORKERS_MAX: usize = 1_024;
const SERVICE_TIME_MAX: Duration = Duration::from_secs(600);
/// Largest weight of a step.
const WEIGHT_MAX: u32 = 1_000_000;
/// Concurrent creates while filling a pool.
const POOL_FILL_CLIENTS: usize = 16;
/// How long a worker's poll waits for a task.
const POLL_WAIT: Duration = Duration::from_millis(500);

/// A load spec, as written in YAML.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "lockstep-bench load spec")]
pub(crate) struct SpecFile {
    /// Workflow definition files applied before the run, relative to the spec file,
    /// e.g. `[../../examples/workflows/purchase-order.yaml]`.
    workflows: Vec<String>,
    /// The actors the steps act as, by id. On a secure cluster give each its own token
    /// (`token_env`); otherwise every actor acts as the subject of the bench's credential.
    actors: BTreeMap<String, ActorSpec>,
    /// Instances made before the run, by pool name, for `get` steps to read.
    #[serde(default)]
    pools: BTreeMap<String, PoolSpec>,
    /// The mix: every unit of work is one step, chosen by weight.
    steps: Vec<StepSpec>,
    /// Task workers polling their queue for the whole run, beside the steps.
    #[serde(default)]
    workers: Vec<WorkerSpec>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum KindSpec {
    #[default]
    Human,
    Service,
    Worker,
}

impl KindSpec {
    fn actor_kind(self) -> lockstep_core::engine::ActorKind {
        use lockstep_core::engine::ActorKind;
        match self {
            KindSpec::Human => ActorKind::Human,
            KindSpec::Service => ActorKind::Service,
            KindSpec::Worker => ActorKind::Worker,
        }
    }
}

/// An actor: its kind and roles (the identity a development-mode cluster reads from
/// headers), and where its token is on a secure cluster.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ActorSpec {
    #[serde(default)]
    kind: KindSpec,
    #[serde(default)]
    roles: Vec<String>,
    /// The environment variable that holds this actor's JWT, e.g. `BOB_TOKEN`: its calls
    /// then authenticate as the token's subject (with the bench's `--tls-ca`).
    #[serde(default)]
    token_env: Option<String>,
}

/// Instances of one workflow made before the run.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct PoolSpec {
    workflow: String,
    /// How many, from 1 to 100000.
    count: usize,
    /// The actor that creates them.
    actor: String,
    /// Business key template (`{n}`: the instance's number in the pool).
    #[serde(default)]
    key: Option<String>,
    /// Instance data template.
    #[serde(default = "empty_object")]
    data: serde_json::Value,
}

fn empty_object() -> serde_json::Value {
    serde_json::json!({})
}

fn one() -> u32 {
    1
}

/// One step of the mix: exactly one of `create`, `event`, `get` and `list`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct StepSpec {
    /// The step's name in the report.
    name: String,
    /// Its share of the units: weight / the sum of all weights (default 1).
    #[serde(default = "one")]
    weight: u32,
    /// The actor that takes it.
    actor: String,
    #[serde(default)]
    create: Option<CreateSpec>,
    /// Transitions taken in order on the instance `create` made, each one operation.
    #[serde(default)]
    then: Vec<ThenSpec>,
    #[serde(default)]
    event: Option<EventSpec>,
    #[serde(default)]
    get: Option<GetSpec>,
    #[serde(default)]
    list: Option<ListSpec>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct CreateSpec {
    workflow: String,
    /// Business key template, e.g. `order-{run}-{counter}`.
    #[serde(default)]
    key: Option<String>,
    /// Instance data template.
    #[serde(default = "empty_object")]
    data: serde_json::Value,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ThenSpec {
    transition: String,
    /// Payload template.
    #[serde(default)]
    payload: Option<serde_json::Value>,
    /// Who takes it (default: the step's actor).
    #[serde(default)]
    actor: Option<String>,
}

/// An inbound event routed by (workflow, business key).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct EventSpec {
    workflow: String,
    /// Business key template, e.g. `device-{random:0..511}`.
    key: String,
    /// The event name a transition declares with `on:`.
    name: String,
    #[serde(default = "empty_object")]
    payload: serde_json::Value,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
enum ConsistencySpec {
    #[default]
    Linearizable,
    Stale,
}

impl ConsistencySpec {
    fn pb(self) -> pb::ReadConsistency {
        match self {
            ConsistencySpec::Linearizable => pb::ReadConsistency::Linearizable,
            ConsistencySpec::Stale => pb::ReadConsistency::Stale,
        }
    }
}

/// A get by id of a random instance of a pool.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct GetSpec {
    pool: String,
    #[serde(default)]
    consistency: ConsistencySpec,
}

/// One page of a workflow's instances, optionally in one state.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ListSpec {
    workflow: String,
    #[serde(default)]
    state: Option<String>,
    /// Instances per page, from 1 to 1000 (default 20).
    #[serde(default = "page_size")]
    page_size: u32,
    #[serde(default)]
    consistency: ConsistencySpec,
}

fn page_size() -> u32 {
    20
}

/// Task workers on one queue: each polls one task, works on it for a service time drawn
/// from the distribution, and completes it with `result`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct WorkerSpec {
    queue: String,
    /// How many workers, from 1 to 1024 in all.
    count: usize,
    /// The actor they act as (kind `worker`).
    actor: String,
    #[serde(default)]
    service_time: ServiceTimeSpec,
    /// The completion's result template.
    #[serde(default = "empty_object")]
    result: serde_json::Value,
}

/// A service-time distribution, e.g. `{ distribution: exponential, mean: 20ms }`.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(tag = "distribution", rename_all = "snake_case", deny_unknown_fields)]
enum ServiceTimeSpec {
    /// No work: complete at once.
    #[default]
    None,
    Fixed {
        time: String,
    },
    Uniform {
        min: String,
        max: String,
    },
    Exponential {
        mean: String,
    },
}

/// A checked spec, ready to run.
#[derive(Debug)]
pub(crate) struct Spec {
    /// The spec's file name, for the report.
    pub(crate) name: String,
    /// The workflow files' texts, by file name.
    pub(crate) workflows: Vec<(String, String)>,
    actors: BTreeMap<String, Actor>,
    pools: Vec<Pool>,
    steps: Vec<Step>,
    /// Cumulative weights, for choosing a step.
    cumulative: Vec<u64>,
    workers: Vec<Workers>,
}

#[derive(Debug, Clone)]
struct Actor {
    kind: KindSpec,
    roles: Vec<String>,
    token_env: Option<String>,
}

#[derive(Debug)]
struct Pool {
    name: String,
    workflow: String,
    count: usize,
    actor: String,
    key: Option<Template>,
    data: Template,
}

#[derive(Debug)]
struct Step {
    name: Arc<str>,
    actor: String,
    action: Action,
}

#[derive(Debug)]
enum Action {
    Create {
        workflow: String,
        key: Option<Template>,
        data: Template,
        then: Vec<Then>,
    },
    Event {
        workflow: String,
        key: Template,
        name: String,
        payload: Template,
    },
    Get {
        pool: usize,
        consistency: pb::ReadConsistency,
    },
    List {
        workflow: String,
        state: Option<String>,
        page_size: u32,
        consistency: pb::ReadConsistency,
    },
}

#[derive(Debug)]
struct Then {
    transition: String,
    payload: Option<Template>,
    actor: Option<String>,
}

#[derive(Debug)]
struct Workers {
    queue: String,
    count: usize,
    actor: String,
    service: ServiceTime,
    result: Template,
}

#[derive(Clone, Copy, Debug)]
enum ServiceTime {
    None,
    Fixed(Duration),
    Uniform(Duration, Duration),
    Exponential(Duration),
}

impl ServiceTime {
    /// A draw for the `n`th task of a worker.
    fn draw(self, n: u64) -> Duration {
        let unit = (mix(n) >> 11) as f64 / (1u64 << 53) as f64;
        match self {
            ServiceTime::None => Duration::ZERO,
            ServiceTime::Fixed(d) => d,
            ServiceTime::Uniform(lo, hi) => lo + (hi - lo).mul_f64(unit),
            ServiceTime::Exponential(mean) => {
                mean.mul_f64(-(1.0 - unit).ln()).min(SERVICE_TIME_MAX)
            }
        }
    }
}

/// The kind of file a spec is, for [`parse_yaml`]'s messages.
fn file_kind() -> FileKind {
    FileKind {
        noun: "load spec",
        schema: "schema/bench-spec.schema.json",
        empty_hint: "start with `workflows:`, `actors:` and `steps:` (see benches/specs/)",
        bytes_max: SPEC_BYTES_MAX,
        depth_max: SPEC_DEPTH_MAX,
        bytes_limit: "the spec size limit",
        depth_limit: "the spec depth limit",
    }
}

/// The JSON Schema of spec files, pretty-printed with a trailing newline.
pub(crate) fn schema() -> String {
    let schema = schemars::schema_for!(SpecFile);
    let mut text = serde_json::to_string_pretty(&schema).expect("a schema serializes");
    text.push('\n');
    text
}

/// Every problem of a spec, each located, as one message.
#[derive(Debug)]
pub(crate) struct SpecErrors(pub(crate) Vec<Diagnostic>);

impl std::fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "the load spec is not valid:")?;
        for d in &self.0 {
            writeln!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SpecErrors {}

/// Reads and checks the spec at `path`, and reads the workflow files it names.
pub(crate) fn load(path: &Path) -> anyhow::Result<Spec> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read the load spec {}: {e}", path.display()))?;
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let file = path.display().to_string();
    let mut spec = parse(Some(&file), &text).map_err(SpecErrors)?;
    spec.name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or(file);
    spec.workflows = spec
        .workflows
        .iter()
        .map(|(name, _)| {
            let p: PathBuf = dir.join(name);
            std::fs::read_to_string(&p)
                .map(|t| (name.clone(), t))
                .map_err(|e| {
                    anyhow::anyhow!(
                        "the load spec names the workflow file {name}, which cannot be read at {}: {e}; paths are relative to the spec file",
                        p.display()
                    )
                })
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(spec)
}

/// Parses and checks a spec's text (`file` names it in messages). The workflow files are
/// only named here; [`load`] reads them.
pub(crate) fn parse(file: Option<&str>, text: &str) -> Result<Spec, Vec<Diagnostic>> {
    let (raw, map) = parse_yaml::<SpecFile>(file, text, &file_kind())?;
    let mut check = Check {
        map: &map,
        problems: Vec::new(),
    };
    let spec = check.spec(raw);
    if check.problems.is_empty() {
        Ok(spec)
    } else {
        Err(check.problems)
    }
}

/// The checks after parsing: limits, references between parts, templates.
struct Check<'a> {
    map: &'a SourceMap,
    problems: Vec<Diagnostic>,
}

impl Check<'_> {
    fn problem(&mut self, code: Code, path: &str, message: String, hint: &str) {
        self.problems
            .push(self.map.place(Diagnostic::error(code, path, message, hint)));
    }

    fn count(&mut self, path: &str, what: &str, n: usize, max: usize, min: usize) {
        if n < min || n > max {
            self.problem(
                Code::LimitExceeded,
                path,
                format!("{n} {what}: a spec takes from {min} to {max}"),
                "change the count",
            );
        }
    }

    fn template(&mut self, path: &str, value: &serde_json::Value) -> Template {
        match Template::compile(value) {
            Ok(t) => t,
            Err(e) => {
                self.problem(
                    Code::InvalidValue,
                    path,
                    format!("bad template: {e}"),
                    "placeholders are {counter}, {n}, {random:LO..HI}, {choice:a|b}, {now}, {now+DURATION}, {actor} and {run}; write {{ and }} for braces",
                );
                Template::compile(&serde_json::Value::Null).expect("null compiles")
            }
        }
    }

    fn actor(&mut self, path: &str, actor: &str, actors: &BTreeMap<String, ActorSpec>) {
        if !actors.contains_key(actor) {
            let known = actors.keys().cloned().collect::<Vec<_>>().join(", ");
            self.problem(
                Code::InvalidValue,
                path,
                format!("no actor `{actor}` under `actors:` (it has: {known})"),
                "name one of the actors, or add it under `actors:`",
            );
        }
    }

    fn duration(&mut self, path: &str, text: &str) -> Duration {
        match crate::parse_duration(text) {
            Ok(d) if d <= SERVICE_TIME_MAX => d,
            Ok(_) => {
                self.problem(
                    Code::LimitExceeded,
                    path,
                    format!("`{text}` is longer than the longest service time (10m)"),
                    "give a shorter duration",
                );
                Duration::ZERO
            }
            Err(e) => {
                self.problem(
                    Code::InvalidDuration,
                    path,
                    format!("`{text}` is not a duration: {e}"),
                    "write e.g. `20ms`, `1.5s` or `2m`",
                );
                Duration::ZERO
            }
        }
    }

    fn spec(&mut self, raw: SpecFile) -> Spec {
        self.count(
            "workflows",
            "workflow files",
            raw.workflows.len(),
            WORKFLOWS_MAX,
            0,
        );
        self.count("actors", "actors", raw.actors.len(), ACTORS_MAX, 1);
        self.count("pools", "pools", raw.pools.len(), POOLS_MAX, 0);
        self.count("steps", "steps", raw.steps.len(), STEPS_MAX, 1);
        for (id, a) in &raw.actors {
            if let Some(var) = &a.token_env
                && (var.is_empty() || var.contains('='))
            {
                self.problem(
                    Code::InvalidValue,
                    &format!("actors.{id}.token_env"),
                    format!("`{var}` is not an environment variable name"),
                    "name the variable that holds the actor's JWT, e.g. `BOB_TOKEN`",
                );
            }
        }
        let mut pools = Vec::new();
        let mut pooled = 0usize;
        for (name, p) in &raw.pools {
            let path = format!("pools.{name}");
            self.count(
                &format!("{path}.count"),
                "instances",
                p.count,
                POOL_INSTANCES_MAX,
                1,
            );
            pooled += p.count;
            self.actor(&format!("{path}.actor"), &p.actor, &raw.actors);
            let key = p
                .key
                .as_ref()
                .map(|k| self.template(&format!("{path}.key"), &serde_json::json!(k)));
            let data = self.template(&format!("{path}.data"), &p.data);
            pools.push(Pool {
                name: name.clone(),
                workflow: p.workflow.clone(),
                count: p.count,
                actor: p.actor.clone(),
                key,
                data,
            });
        }
        if pooled > POOL_INSTANCES_MAX {
            self.count("pools", "pooled instances", pooled, POOL_INSTANCES_MAX, 0);
        }
        let mut steps = Vec::new();
        let mut cumulative = Vec::new();
        let mut total = 0u64;
        let mut names = std::collections::BTreeSet::new();
        for (i, s) in raw.steps.iter().enumerate() {
            let path = format!("steps[{i}]");
            if !names.insert(s.name.clone()) {
                self.problem(
                    Code::DuplicateKey,
                    &format!("{path}.name"),
                    format!("two steps are named `{}`", s.name),
                    "give every step its own name: the report has a row per step",
                );
            }
            if s.weight == 0 || s.weight > WEIGHT_MAX {
                self.problem(
                    Code::InvalidValue,
                    &format!("{path}.weight"),
                    format!("weight {}: give 1 to {WEIGHT_MAX}", s.weight),
                    "a step's share of the units is its weight over the sum of all weights",
                );
            }
            total += u64::from(s.weight);
            cumulative.push(total);
            self.actor(&format!("{path}.actor"), &s.actor, &raw.actors);
            let given = [
                s.create.is_some(),
                s.event.is_some(),
                s.get.is_some(),
                s.list.is_some(),
            ]
            .iter()
            .filter(|g| **g)
            .count();
            if given != 1 {
                self.problem(
                    Code::InvalidValue,
                    &path,
                    format!(
                        "step `{}` has {given} actions: give exactly one of `create`, `event`, `get` and `list`",
                        s.name
                    ),
                    "split it into several steps with their own weights",
                );
            }
            if !s.then.is_empty() && s.create.is_none() {
                self.problem(
                    Code::InvalidValue,
                    &format!("{path}.then"),
                    "`then` takes transitions on the instance `create` made: this step creates none".into(),
                    "add `create:` to the step, or drop `then:`",
                );
            }
            if s.then.len() > THEN_MAX {
                self.count(
                    &format!("{path}.then"),
                    "transitions",
                    s.then.len(),
                    THEN_MAX,
                    0,
                );
            }
            let action = if let Some(c) = &s.create {
                let then = s
                    .then
                    .iter()
                    .enumerate()
                    .map(|(j, t)| {
                        let tp = format!("{path}.then[{j}]");
                        if let Some(a) = &t.actor {
                            self.actor(&format!("{tp}.actor"), a, &raw.actors);
                        }
                        Then {
                            transition: t.transition.clone(),
                            payload: t
                                .payload
                                .as_ref()
                                .map(|p| self.template(&format!("{tp}.payload"), p)),
                            actor: t.actor.clone(),
                        }
                    })
                    .collect();
                Action::Create {
                    workflow: c.workflow.clone(),
                    key: c.key.as_ref().map(|k| {
                        self.template(&format!("{path}.create.key"), &serde_json::json!(k))
                    }),
                    data: self.template(&format!("{path}.create.data"), &c.data),
                    then,
                }
            } else if let Some(e) = &s.event {
                Action::Event {
                    workflow: e.workflow.clone(),
                    key: self.template(&format!("{path}.event.key"), &serde_json::json!(e.key)),
                    name: e.name.clone(),
                    payload: self.template(&format!("{path}.event.payload"), &e.payload),
                }
            } else if let Some(g) = &s.get {
                let pool = pools.iter().position(|p| p.name == g.pool);
                if pool.is_none() {
                    self.problem(
                        Code::InvalidValue,
                        &format!("{path}.get.pool"),
                        format!("no pool `{}` under `pools:`", g.pool),
                        "name a pool, or add one under `pools:` (the instances a get reads)",
                    );
                }
                Action::Get {
                    pool: pool.unwrap_or(0),
                    consistency: g.consistency.pb(),
                }
            } else if let Some(l) = &s.list {
                if !(1..=1000).contains(&l.page_size) {
                    self.problem(
                        Code::InvalidValue,
                        &format!("{path}.list.page_size"),
                        format!("page size {}: give 1 to 1000", l.page_size),
                        "lockstepd answers at most 1000 instances a page",
                    );
                }
                Action::List {
                    workflow: l.workflow.clone(),
                    state: l.state.clone(),
                    page_size: l.page_size,
                    consistency: l.consistency.pb(),
                }
            } else {
                Action::List {
                    workflow: String::new(),
                    state: None,
                    page_size: 1,
                    consistency: pb::ReadConsistency::Stale,
                }
            };
            steps.push(Step {
                name: Arc::from(s.name.as_str()),
                actor: s.actor.clone(),
                action,
            });
        }
        let mut workers = Vec::new();
        let mut worker_count = 0usize;
        for (i, w) in raw.workers.iter().enumerate() {
            let path = format!("workers[{i}]");
            self.count(&format!("{path}.count"), "workers", w.count, WORKERS_MAX, 1);
            worker_count += w.count;
            self.actor(&format!("{path}.actor"), &w.actor, &raw.actors);
            if raw
                .actors
                .get(&w.actor)
                .is_some_and(|a| a.kind != KindSpec::Worker)
            {
                self.problem(
                    Code::InvalidValue,
                    &format!("{path}.actor"),
                    format!("actor `{}` is not of kind `worker`", w.actor),
                    "task workers act as worker actors: give the actor `kind: worker`",
                );
            }
            let sp = format!("{path}.service_time");
            let service = match &w.service_time {
                ServiceTimeSpec::None => ServiceTime::None,
                ServiceTimeSpec::Fixed { time } => ServiceTime::Fixed(self.duration(&sp, time)),
                ServiceTimeSpec::Uniform { min, max } => {
                    let (lo, hi) = (self.duration(&sp, min), self.duration(&sp, max));
                    if lo > hi {
                        self.problem(
                            Code::InvalidValue,
                            &sp,
                            format!("min {min} is above max {max}"),
                            "swap them",
                        );
                    }
                    ServiceTime::Uniform(lo, hi.max(lo))
                }
                ServiceTimeSpec::Exponential { mean } => {
                    ServiceTime::Exponential(self.duration(&sp, mean))
                }
            };
            workers.push(Workers {
                queue: w.queue.clone(),
                count: w.count,
                actor: w.actor.clone(),
                service,
                result: self.template(&format!("{path}.result"), &w.result),
            });
        }
        if worker_count > WORKERS_MAX {
            self.count("workers", "workers in all", worker_count, WORKERS_MAX, 0);
        }
        Spec {
            name: String::new(),
            workflows: raw
                .workflows
                .into_iter()
                .map(|w| (w, String::new()))
                .collect(),
            actors: raw
                .actors
                .into_iter()
                .map(|(id, a)| {
                    (
                        id,
                        Actor {
                            kind: a.kind,
                            roles: a.roles,
                            token_env: a.token_env,
                        },
                    )
                })
                .collect(),
            pools,
            steps,
            cumulative,
            workers,
        }
    }
}

impl Spec {
    /// The step of unit `sequence`, chosen by weight.
    fn step(&self, sequence: u64) -> &Step {
        let total = *self.cumulative.last().expect("at least one step");
        let r = mix(sequence ^ 0x5EED) % total;
        let i = self.cumulative.partition_point(|c| *c <= r);
        &self.steps[i]
    }

    /// Each step's expected share of the units, for the report.
    pub(crate) fn shares(&self) -> Vec<(String, f64)> {
        let total = *self.cumulative.last().expect("at least one step") as f64;
        let mut previous = 0;
        self.steps
            .iter()
            .zip(&self.cumulative)
            .map(|(s, c)| {
                let share = (c - previous) as f64 / total;
                previous = *c;
                (s.name.to_string(), share)
            })
            .collect()
    }

    /// Task workers in all.
    pub(crate) fn worker_count(&self) -> usize {
        self.workers.iter().map(|w| w.count).sum()
    }
}

/// Where a run's units come from: the run's id (the `{run}` placeholder, the same on every
/// agent), the level's first counter (each level's units start again at sequence 0), and
/// this process's share of the counter space (agent `index` of `of`), so that `{counter}` is
/// unique across levels and agents.
#[derive(Clone, Debug)]
pub(crate) struct RunId {
    pub(crate) run: String,
    pub(crate) base: u64,
    pub(crate) index: u64,
    pub(crate) of: u64,
}

/// Counters each level may use: a level's are `level * LEVEL_COUNTERS ..`.
const LEVEL_COUNTERS: u64 = 1 << 40;

impl RunId {
    /// A run on one process, with a fresh id.
    pub(crate) fn fresh() -> RunId {
        RunId {
            run: format!("{:08x}", mix(crate::load::micros_now() as u64) as u32),
            base: 0,
            index: 0,
            of: 1,
        }
    }

    /// The same run at level `level` (from 0) of its sweep.
    pub(crate) fn at_level(&self, level: usize) -> RunId {
        RunId {
            base: level as u64 * LEVEL_COUNTERS,
            ..self.clone()
        }
    }
}

/// A spec's clients: one set of connections per actor.
#[derive(Debug)]
struct ActorClients {
    by_actor: BTreeMap<String, Vec<Arc<Client>>>,
}

impl ActorClients {
    fn new(
        spec: &Spec,
        endpoints: &[String],
        base: &Credentials,
        connections: usize,
    ) -> anyhow::Result<ActorClients> {
        let per_actor = connections.div_ceil(spec.actors.len()).max(1);
        let mut by_actor = BTreeMap::new();
        for (id, a) in &spec.actors {
            let mut credentials = base.clone();
            if let Some(var) = &a.token_env {
                let token = std::env::var(var).map_err(|_| {
                    anyhow::anyhow!(
                        "actor `{id}` takes its token from the environment variable {var}, which is not set: export it (the actor's JWT) before the run"
                    )
                })?;
                credentials.token = Some(token.trim().to_string());
            }
            let roles: Vec<&str> = a.roles.iter().map(String::as_str).collect();
            let identity = Identity::new(id, a.kind.actor_kind(), &roles);
            let options = Options {
                retry_overloaded: false,
                ..Options::default()
            };
            let clients = (0..per_actor)
                .map(|_| {
                    Client::with_credentials(
                        endpoints,
                        Some(identity.clone()),
                        options.clone(),
                        credentials.clone(),
                    )
                    .map(Arc::new)
                    .map_err(anyhow::Error::msg)
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            by_actor.insert(id.clone(), clients);
        }
        Ok(ActorClients { by_actor })
    }

    fn pick(&self, actor: &str, sequence: u64) -> &Client {
        let clients = &self.by_actor[actor];
        &clients[(sequence % clients.len() as u64) as usize]
    }
}

/// Applies the spec's workflows, as its first actor with the `admin` role (or its first
/// actor), waiting up to 30 s for a leader.
pub(crate) async fn apply_workflows(
    spec: &Spec,
    endpoints: &[String],
    base: &Credentials,
) -> anyhow::Result<()> {
    let clients = ActorClients::new(spec, endpoints, base, spec.actors.len())?;
    let admin = spec
        .actors
        .iter()
        .find(|(_, a)| a.roles.iter().any(|r| r == "admin"))
        .or_else(|| spec.actors.iter().next())
        .map(|(id, _)| id.clone())
        .expect("at least one actor");
    let client = clients.pick(&admin, 0);
    let hint = format!(
        "the spec's workflows are applied as `{admin}`: give an actor the `admin` role (and, on a secure cluster, its token)"
    );
    for (name, text) in &spec.workflows {
        crate::apply_workflow(client, name, text, &hint).await?;
    }
    Ok(())
}

/// Makes the spec's pools; returns each pool's instance ids, in the order of `spec.pools`.
pub(crate) async fn fill_pools(
    spec: &Spec,
    endpoints: &[String],
    base: &Credentials,
    run: &RunId,
) -> anyhow::Result<Vec<Vec<String>>> {
    let clients = Arc::new(ActorClients::new(spec, endpoints, base, POOL_FILL_CLIENTS)?);
    let mut all = Vec::new();
    for (p_index, pool) in spec.pools.iter().enumerate() {
        let mut fillers = tokio::task::JoinSet::new();
        for filler in 0..POOL_FILL_CLIENTS {
            let clients = Arc::clone(&clients);
            let (actor, workflow) = (pool.actor.clone(), pool.workflow.clone());
            let (count, run) = (pool.count, run.clone());
            let key = pool.key.clone();
            let data = pool.data.clone();
            fillers.spawn(async move {
                let mut ids = Vec::new();
                for n in (filler..count).step_by(POOL_FILL_CLIENTS) {
                    let ctx = Context {
                        counter: n as u64,
                        n: n as u64,
                        actor: &actor,
                        run: &run.run,
                        seed: mix(n as u64 ^ (p_index as u64) << 40),
                    };
                    let key = key.as_ref().map(|k| k.render_string(&ctx));
                    let c = clients
                        .pick(&actor, filler as u64)
                        .create(&request_id(), &workflow, key.as_deref(), &data.render(&ctx))
                        .await?;
                    ids.push((n, c.instance_id));
                }
                Ok::<_, Error>(ids)
            });
        }
        let mut ids = Vec::with_capacity(pool.count);
        while let Some(joined) = fillers.join_next().await {
            ids.extend(joined?.map_err(|e| {
                anyhow::anyhow!("filling pool `{}` ({}): {e}", pool.name, pool.workflow)
            })?);
        }
        ids.sort();
        all.push(ids.into_iter().map(|(_, id)| id).collect());
    }
    Ok(all)
}

/// The spec as a [`Workload`]: each unit runs the step its sequence chooses.
#[derive(Debug)]
pub(crate) struct SpecLoad {
    spec: Arc<Spec>,
    clients: ActorClients,
    pools: Vec<Vec<String>>,
    run: RunId,
}

impl SpecLoad {
    pub(crate) fn new(
        spec: Arc<Spec>,
        endpoints: &[String],
        base: &Credentials,
        connections: usize,
        pools: Vec<Vec<String>>,
        run: RunId,
    ) -> anyhow::Result<SpecLoad> {
        anyhow::ensure!(
            pools.len() == spec.pools.len(),
            "{} pools given for a spec with {}",
            pools.len(),
            spec.pools.len()
        );
        let clients = ActorClients::new(&spec, endpoints, base, connections)?;
        Ok(SpecLoad {
            spec,
            clients,
            pools,
            run,
        })
    }
}

impl Workload for SpecLoad {
    async fn run_once(&self, sequence: u64, start: Instant) -> Outcome {
        let step = self.spec.step(sequence);
        let counter = self.run.base + sequence * self.run.of + self.run.index;
        let ctx = Context {
            counter,
            n: counter,
            actor: &step.actor,
            run: &self.run.run,
            seed: mix(counter),
        };
        let client = self.clients.pick(&step.actor, sequence);
        let mut o = match &step.action {
            Action::Create {
                workflow,
                key,
                data,
                then,
            } => {
                let key = key.as_ref().map(|k| k.render_string(&ctx));
                let created = client
                    .create(&request_id(), workflow, key.as_deref(), &data.render(&ctx))
                    .await;
                let mut t = Instant::now();
                let mut results = vec![(start, t, ended(&created))];
                if let Ok(c) = created {
                    for th in then {
                        let actor = th.actor.as_deref().unwrap_or(&step.actor);
                        let ctx = Context { actor, ..ctx };
                        let payload = th
                            .payload
                            .as_ref()
                            .map_or(serde_json::Value::Null, |p| p.render(&ctx));
                        let taken = self
                            .clients
                            .pick(actor, sequence)
                            .transition(
                                &request_id(),
                                by_id(&c.instance_id),
                                &th.transition,
                                &payload,
                                None,
                            )
                            .await;
                        let now = Instant::now();
                        let how = ended(&taken);
                        let stop = how != Ended::Ok;
                        results.push((t, now, how));
                        t = now;
                        if stop {
                            break;
                        }
                    }
                }
                outcome(&results)
            }
            Action::Event {
                workflow,
                key,
                name,
                payload,
            } => {
                let sent = client
                    .send_event(
                        &request_id(),
                        by_key(workflow, &key.render_string(&ctx)),
                        name,
                        &payload.render(&ctx),
                    )
                    .await;
                outcome(&[(start, Instant::now(), ended(&sent))])
            }
            Action::Get { pool, consistency } => {
                let ids = &self.pools[*pool];
                let id = &ids[(mix(counter ^ 0x6E7) % ids.len() as u64) as usize];
                let got = client.get(by_id(id), *consistency).await;
                outcome(&[(start, Instant::now(), ended(&got))])
            }
            Action::List {
                workflow,
                state,
                page_size,
                consistency,
            } => {
                let listed = client
                    .list(pb::ListInstancesRequest {
                        workflow: workflow.clone(),
                        state: state.clone().unwrap_or_default(),
                        page_size: *page_size,
                        consistency: *consistency as i32,
                        ..Default::default()
                    })
                    .await;
                outcome(&[(start, Instant::now(), ended(&listed))])
            }
        };
        o.step = Some(Arc::clone(&step.name));
        o
    }
}

/// The spec's task workers for one level: they poll from now until `end` and count what
/// they complete between `measure_from` and `end`, as a row per queue (`worker <queue>`:
/// each operation one task, its latency from the poll to the acknowledged completion).
pub(crate) fn start_workers(
    spec: &Spec,
    endpoints: &[String],
    base: &Credentials,
    share: (usize, usize),
    measure_from: Instant,
    end: Instant,
    run: &RunId,
) -> anyhow::Result<tokio::task::JoinSet<(String, StepMeasured)>> {
    let clients = ActorClients::new(spec, endpoints, base, 1)?;
    let mut set = tokio::task::JoinSet::new();
    for w in &spec.workers {
        // This process's share of the queue's workers (agent `share.0` of `share.1`).
        let count = w.count / share.1 + usize::from(share.0 < w.count % share.1);
        for i in 0..count {
            let client = Arc::clone(&clients.by_actor[&w.actor][0]);
            let (queue, service) = (w.queue.clone(), w.service);
            let result = w.result.clone();
            let (actor, run) = (w.actor.clone(), run.run.clone());
            let seed = (i as u64) << 32 | share.0 as u64;
            set.spawn(async move {
                let mut m = StepMeasured::new();
                let mut n = 0u64;
                while Instant::now() < end {
                    let t0 = Instant::now();
                    let wait = POLL_WAIT.min(end.saturating_duration_since(t0));
                    let leased = match client.poll_tasks(&queue, 1, wait).await {
                        Ok(t) => t,
                        Err(e) => {
                            if t0 >= measure_from {
                                m.add(&outcome(&[(t0, Instant::now(), ended::<()>(&Err(e)))]));
                            }
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    for task in leased {
                        n += 1;
                        tokio::time::sleep(service.draw(seed ^ n)).await;
                        let ctx = Context {
                            counter: n,
                            n,
                            actor: &actor,
                            run: &run,
                            seed: mix(seed ^ n),
                        };
                        let done = client
                            .complete_task(&request_id(), &task.lease, &result.render(&ctx))
                            .await;
                        let t1 = Instant::now();
                        if t0 >= measure_from && t1 <= end {
                            m.add(&outcome(&[(t0, t1, ended(&done))]));
                        }
                    }
                }
                (format!("worker {queue}"), m)
            });
        }
    }
    Ok(set)
}

/// Adds the workers' figures to `measured` as step rows.
pub(crate) async fn join_workers(
    mut set: tokio::task::JoinSet<(String, StepMeasured)>,
    measured: &mut Measured,
) {
    while let Some(joined) = set.join_next().await {
        if let Ok((name, m)) = joined {
            measured
                .steps
                .entry(name)
                .or_insert_with(StepMeasured::new)
                .merge(&m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
workflows: [po.yaml]
actors:
  alice: { roles: [requester, admin] }
  feed: { kind: service }
  w: { kind: worker }
pools:
  orders: { workflow: purchase-order, count: 10, actor: alice, data: { amount: 5, requester: alice } }
steps:
  - name: order
    weight: 8
    actor: alice
    create: { workflow: purchase-order, key: "po-{run}-{counter}", data: { amount: "{random:1..100}", requester: "{actor}" } }
    then: [ { transition: submit } ]
  - { name: read, actor: alice, get: { pool: orders } }
  - { name: list, actor: alice, list: { workflow: purchase-order, consistency: stale } }
workers:
  - { queue: q, count: 2, actor: w, service_time: { distribution: exponential, mean: 5ms } }
"#;

    #[test]
    fn a_good_spec_parses_with_its_shares() {
        let spec = parse(Some("good.yaml"), GOOD).unwrap();
        let shares = spec.shares();
        assert_eq!(shares[0], ("order".to_string(), 0.8));
        assert_eq!(spec.worker_count(), 2);
        // The weights hold over many units.
        let orders = (0..10_000u64)
            .filter(|s| &*spec.step(*s).name == "order")
            .count();
        assert!((7_700..8_300).contains(&orders), "{orders}");
    }

    fn errors(text: &str) -> Vec<String> {
        parse(Some("bad.yaml"), text)
            .unwrap_err()
            .iter()
            .map(|d| d.to_string())
            .collect()
    }

    #[test]
    fn mistakes_are_located() {
        let unknown = errors(&GOOD.replace("weight: 8", "wieght: 8"));
        assert_eq!(unknown.len(), 1);
        assert!(unknown[0].contains("bad.yaml:11:"), "{unknown:?}");
        assert!(unknown[0].contains("unknown field `wieght`"), "{unknown:?}");

        let actor = errors(&GOOD.replace("{ name: read, actor: alice", "{ name: read, actor: bob"));
        assert!(actor[0].contains("bad.yaml:15:"), "{actor:?}");
        assert!(actor[0].contains("no actor `bob`"), "{actor:?}");

        let pool = errors(&GOOD.replace("get: { pool: orders }", "get: { pool: order }"));
        assert!(pool[0].contains("no pool `order`"), "{pool:?}");

        let template = errors(&GOOD.replace("{random:1..100}", "{random:100..1}"));
        assert!(template[0].contains("bad.yaml:13:"), "{template:?}");
        assert!(template[0].contains("bad template"), "{template:?}");

        let worker = errors(&GOOD.replace("w: { kind: worker }", "w: { kind: human }"));
        assert!(worker[0].contains("not of kind `worker`"), "{worker:?}");

        let two = errors(&GOOD.replace(
            "get: { pool: orders }",
            "get: { pool: orders }, list: { workflow: x }",
        ));
        assert!(two[0].contains("2 actions"), "{two:?}");

        let duration = errors(&GOOD.replace("mean: 5ms", "mean: soon"));
        assert!(duration[0].contains("not a duration"), "{duration:?}");
    }

    #[test]
    fn counters_are_unique_across_levels_and_agents() {
        let run = RunId::fresh();
        let mut seen = std::collections::BTreeSet::new();
        for level in 0..3 {
            for index in 0..4 {
                let r = RunId {
                    index,
                    of: 4,
                    ..run.at_level(level)
                };
                for sequence in 0..100 {
                    assert!(seen.insert(r.base + sequence * r.of + r.index));
                }
            }
        }
    }

    #[test]
    fn service_times_follow_their_distribution() {
        let mean = Duration::from_millis(20);
        let draws: Vec<Duration> = (0..20_000)
            .map(|n| ServiceTime::Exponential(mean).draw(n))
            .collect();
        let average = draws.iter().sum::<Duration>() / draws.len() as u32;
        assert!(
            average > Duration::from_millis(18) && average < Duration::from_millis(22),
            "{average:?}"
        );
        let (lo, hi) = (Duration::from_millis(10), Duration::from_millis(30));
        assert!((0..1000).all(|n| {
            let d = ServiceTime::Uniform(lo, hi).draw(n);
            d >= lo && d <= hi
        }));
    }

    #[test]
    fn the_committed_schema_is_current() {
        let committed = include_str!("../../schema/bench-spec.schema.json");
        assert!(
            committed == schema(),
            "schema/bench-spec.schema.json is stale: run `lockstep-bench schema > schema/bench-spec.schema.json`"
        );
    }

    #[test]
    fn the_shipped_specs_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("specs");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                seen += 1;
            }
        }
        assert!(seen >= 4, "{seen} specs in {}", dir.display());
    }
}
