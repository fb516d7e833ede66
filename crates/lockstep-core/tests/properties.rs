//! Property tests of the pure engine (DESIGN §2-§4).
//!
//! * `evaluate` never panics, whatever the command sequence, payloads and times;
//! * a refusal changes nothing;
//! * evaluation is deterministic down to the serialized bytes;
//! * time spent paused never counts against an SLA budget;
//! * business-time arithmetic agrees with a naive minute-by-minute reference.
//!
//! Case counts are modest so the file runs quickly in debug builds; raise them with
//! `PROPTEST_CASES=10000 cargo test -p lockstep-core --test properties` for a longer soak.

use std::collections::{BTreeMap, BTreeSet};

use lockstep_core::calendar::Calendar;
use lockstep_core::definition::CalendarDef;
use lockstep_core::engine::LeaseToken;
use lockstep_core::sla::SlaStatus;
use lockstep_core::{
    Actor, ActorKind, Command, CompiledDefinition, Instance, Limits, Outcome, RefusalCode,
    Timestamp, evaluate, validate,
};
use proptest::prelude::*;
use serde_json::{Value, json};

const PURCHASE_ORDER: &str = include_str!("../../../examples/workflows/purchase-order.yaml");

fn purchase_order() -> CompiledDefinition {
    validate::compile(
        Some("purchase-order.yaml"),
        PURCHASE_ORDER,
        &Limits::default(),
    )
    .expect("the example workflow compiles")
}

/// 2026-11-16T08:00:00Z, a Monday; the sequences run into the Christmas holidays and past the
/// end of daylight saving time in the following year's spring.
const EPOCH_MS: i64 = 1_795_334_400_000;

// ---------------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------------

fn key() -> BoxedStrategy<String> {
    prop_oneof![
        4 => prop::sample::select(vec!["amount", "requester", "supplier", "po_number", "note", "data", "due", ""]).prop_map(str::to_owned),
        1 => ".{0,12}",
    ].boxed()
}

fn json_leaf() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        (0.0f64..20_000.0).prop_map(|n| json!(n)),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Value::Number)),
        ".{0,24}".prop_map(Value::String),
        prop::sample::select(vec![
            "alice",
            "bob",
            "2026-12-01T09:00:00Z",
            "not a time",
            "\u{0}",
            "🦀"
        ])
        .prop_map(|s| Value::String(s.into())),
    ]
    .boxed()
}

/// Arbitrary JSON, including documents that break the engine's limits: deep nesting, long
/// strings, long arrays and wide objects.
fn json_any() -> BoxedStrategy<Value> {
    let nested = json_leaf().prop_recursive(5, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    prop_oneof![
        8 => nested,
        1 => (1usize..80, json_leaf(), any::<bool>()).prop_map(|(depth, leaf, arrays)| {
            (0..depth).fold(leaf, |v, _| if arrays { Value::Array(vec![v]) } else { json!({ "data": v }) })
        }),
        1 => (60_000usize..70_000).prop_map(|n| json!({ "data": { "note": "x".repeat(n) } })),
        1 => (990usize..1010).prop_map(|n| Value::Array((0..n).map(|i| json!(i)).collect())),
        1 => (990usize..1010).prop_map(|n| json!({ "data": Value::Object((0..n).map(|i| (format!("k{i}"), json!(i))).collect()) })),
    ].boxed()
}

/// Payloads: mostly plausible merge patches, sometimes anything.
fn payload() -> BoxedStrategy<Value> {
    prop_oneof![
        3 => Just(Value::Null),
        1 => Just(json!({})),
        2 => (prop::option::of(0.0f64..20_000.0), prop::option::of(".{0,8}"))
            .prop_map(|(amount, note)| json!({ "data": { "amount": amount, "note": note } })),
        1 => json_any().prop_map(|v| json!({ "data": v })),
        2 => json_any(),
    ]
    .boxed()
}

fn actor() -> BoxedStrategy<Actor> {
    let known = prop::sample::select(vec![
        ("alice", ActorKind::Human, vec!["requester"]),
        ("bob", ActorKind::Human, vec!["approver"]),
        ("dave", ActorKind::Human, vec!["approver", "director"]),
        ("olga", ActorKind::Human, vec!["operator"]),
        ("erp-worker", ActorKind::Worker, vec![]),
        ("shipping", ActorKind::Service, vec![]),
        ("system:timer", ActorKind::System, vec![]),
    ])
    .prop_map(|(id, kind, roles)| Actor::new(id, kind, &roles));
    let kind = prop::sample::select(vec![
        ActorKind::Human,
        ActorKind::Service,
        ActorKind::Worker,
        ActorKind::System,
    ]);
    let role = prop_oneof![
        prop::sample::select(vec!["approver", "director", "operator", "requester"])
            .prop_map(str::to_owned),
        ".{0,8}"
    ];
    let random = (
        ".{0,12}",
        kind,
        prop::collection::vec(role, 0..4),
        prop::collection::btree_map(".{0,6}", json_leaf(), 0..3),
    )
        .prop_map(|(id, kind, roles, claims)| Actor {
            id,
            kind,
            roles,
            claims,
            authn: "test".into(),
        });
    prop_oneof![4 => known, 1 => random].boxed()
}

fn transition_name() -> BoxedStrategy<String> {
    prop_oneof![
        6 => prop::sample::select(vec!["submit", "ask", "answer", "approve", "place", "fail", "reject", "withdraw", "escalate", "abandon", "deliver"])
            .prop_map(str::to_owned),
        1 => ".{0,16}",
    ].boxed()
}

/// A reference to something on the current instance (a timer, task or incident): either the
/// n-th existing one, or a made-up id.
#[derive(Clone, Debug)]
enum Pick {
    Existing(usize),
    Made(String),
}

fn pick() -> BoxedStrategy<Pick> {
    prop_oneof![4 => any::<usize>().prop_map(Pick::Existing), 1 => ".{0,24}".prop_map(Pick::Made)]
        .boxed()
}

fn resolve_pick<'a>(pick: &Pick, ids: impl Iterator<Item = &'a String>) -> String {
    let ids: Vec<&String> = ids.collect();
    match pick {
        Pick::Existing(n) if !ids.is_empty() => ids[n % ids.len()].clone(),
        Pick::Existing(n) => format!("missing-{n}"),
        Pick::Made(s) => s.clone(),
    }
}

/// A command before it is bound to the current instance (which timers, tasks and leases it
/// names is decided when it runs).
#[derive(Clone, Debug)]
enum Op {
    Create {
        valid: bool,
        data: Value,
        actor: Actor,
        amount: f64,
    },
    Transition {
        name: String,
        payload: Value,
        actor: Actor,
        expected_version: Option<Option<u64>>,
    },
    /// One of the transitions leaving the current state, usually by an actor who may take it.
    Guided {
        which: usize,
        proper: bool,
        payload: Value,
        actor: Actor,
    },
    Event {
        event: String,
        payload: Value,
        actor: Actor,
    },
    FireTimer(Pick),
    Lease {
        task: Pick,
        worker: Actor,
        term: u64,
    },
    Heartbeat {
        task: Pick,
        token: Option<LeaseToken>,
        worker: Actor,
    },
    Complete {
        task: Pick,
        token: Option<LeaseToken>,
        result: Value,
        worker: Actor,
    },
    Fail {
        task: Pick,
        token: Option<LeaseToken>,
        error: String,
        retryable: bool,
        worker: Actor,
    },
    Resolve {
        incident: Pick,
        retry_task: bool,
        actor: Actor,
    },
}

/// `None` means "the task's current lease token", if it has one.
fn token() -> BoxedStrategy<Option<LeaseToken>> {
    prop_oneof![3 => Just(None), 1 => (any::<u64>(), any::<u32>()).prop_map(|(term, attempt)| Some(LeaseToken { term, attempt }))].boxed()
}

fn op() -> BoxedStrategy<Op> {
    prop_oneof![
        1 => (any::<bool>(), json_any(), actor(), 0.0f64..20_000.0).prop_map(|(valid, data, actor, amount)| Op::Create { valid, data, actor, amount }),
        12 => (transition_name(), payload(), actor(), prop::option::weighted(0.2, prop::option::of(0u64..12)))
            .prop_map(|(name, payload, actor, expected_version)| Op::Transition { name, payload, actor, expected_version }),
        2 => (prop_oneof![Just("shipment.delivered".to_string()), ".{0,16}"], payload(), actor()).prop_map(|(event, payload, actor)| Op::Event { event, payload, actor }),
        16 => (any::<usize>(), prop::bool::weighted(0.8), prop_oneof![3 => Just(Value::Null), 1 => payload()], actor())
            .prop_map(|(which, proper, payload, actor)| Op::Guided { which, proper, payload, actor }),
        2 => pick().prop_map(Op::FireTimer),
        3 => (pick(), actor(), 0u64..4).prop_map(|(task, worker, term)| Op::Lease { task, worker, term }),
        1 => (pick(), token(), actor()).prop_map(|(task, token, worker)| Op::Heartbeat { task, token, worker }),
        2 => (pick(), token(), payload(), actor()).prop_map(|(task, token, result, worker)| Op::Complete { task, token, result, worker }),
        2 => (pick(), token(), ".{0,16}", any::<bool>(), actor()).prop_map(|(task, token, error, retryable, worker)| Op::Fail { task, token, error, retryable, worker }),
        1 => (pick(), any::<bool>(), actor()).prop_map(|(incident, retry_task, actor)| Op::Resolve { incident, retry_task, actor }),
    ].boxed()
}

/// How far the cluster clock moves before a command.
fn advance() -> BoxedStrategy<i64> {
    prop_oneof![
        20 => 0i64..120_000,                       // up to two minutes
        20 => 0i64..3 * 86_400_000,                // up to three days
        3 => 0i64..400 * 86_400_000,               // up to a year and a bit
        1 => Just(i64::MAX / 4),                   // off the end of time (clamped)
        2 => -86_400_000i64..0,                    // a clock running backwards (never in a real log)
    ]
    .boxed()
}

fn script() -> impl Strategy<Value = (bool, f64, Vec<(i64, Op)>)> {
    (
        prop::bool::weighted(0.85),
        0.0f64..20_000.0,
        prop::collection::vec((advance(), op()), 1..32),
    )
}

/// Binds an operation to the current instance.
fn command(
    definition: &CompiledDefinition,
    op: &Op,
    instance: Option<&Instance>,
    n: usize,
) -> Command {
    let empty = Instance::default_like();
    let inst = instance.unwrap_or(&empty);
    let task_id = |p: &Pick| resolve_pick(p, inst.tasks.keys());
    let lease = |task: &str, token: &Option<LeaseToken>| {
        token
            .or_else(|| inst.tasks.get(task).and_then(|t| t.lease))
            .unwrap_or(LeaseToken {
                term: 0,
                attempt: 0,
            })
    };
    match op {
        Op::Create {
            valid,
            data,
            actor,
            amount,
        } => Command::Create {
            instance_id: format!("po-{n}"),
            key: None,
            data: if *valid {
                json!({ "amount": amount, "requester": "alice" })
            } else {
                data.clone()
            },
            actor: actor.clone(),
        },
        Op::Transition {
            name,
            payload,
            actor,
            expected_version,
        } => Command::Transition {
            transition: name.clone(),
            payload: payload.clone(),
            actor: actor.clone(),
            expected_version: expected_version.map(|v| v.unwrap_or(inst.version)),
        },
        Op::Guided {
            which,
            proper,
            payload,
            actor,
        } => {
            // Mostly the transitions people take; the engine's own (system) ones one time in eight.
            let system = which % 8 == 0;
            let names: Vec<&str> = definition
                .transitions_from(&inst.state)
                .filter(|t| t.system == system)
                .map(|t| t.name.as_str())
                .collect();
            let name = if names.is_empty() {
                "submit"
            } else {
                names[which % names.len()]
            };
            let actor = if *proper {
                proper_actor(name, *which)
            } else {
                actor.clone()
            };
            Command::Transition {
                transition: name.to_string(),
                payload: payload.clone(),
                actor,
                expected_version: None,
            }
        }
        Op::Event {
            event,
            payload,
            actor,
        } => Command::Event {
            event: event.clone(),
            payload: payload.clone(),
            actor: actor.clone(),
        },
        Op::FireTimer(p) => Command::FireTimer {
            timer_id: resolve_pick(p, inst.timers.keys()),
        },
        Op::Lease { task, worker, term } => Command::LeaseTask {
            task_id: task_id(task),
            worker: worker.clone(),
            term: *term,
        },
        Op::Heartbeat {
            task,
            token,
            worker,
        } => {
            let id = task_id(task);
            Command::HeartbeatTask {
                token: lease(&id, token),
                task_id: id,
                worker: worker.clone(),
            }
        }
        Op::Complete {
            task,
            token,
            result,
            worker,
        } => {
            let id = task_id(task);
            Command::CompleteTask {
                token: lease(&id, token),
                task_id: id,
                result: result.clone(),
                worker: worker.clone(),
            }
        }
        Op::Fail {
            task,
            token,
            error,
            retryable,
            worker,
        } => {
            let id = task_id(task);
            Command::FailTask {
                token: lease(&id, token),
                task_id: id,
                error: error.clone(),
                retryable: *retryable,
                worker: worker.clone(),
            }
        }
        Op::Resolve {
            incident,
            retry_task,
            actor,
        } => Command::ResolveIncident {
            incident_id: resolve_pick(incident, inst.incidents.keys()),
            retry_task: *retry_task,
            actor: actor.clone(),
        },
    }
}

/// An actor the purchase-order workflow lets take `transition` (system transitions get the
/// engine, which is refused: only timers take them).
fn proper_actor(transition: &str, which: usize) -> Actor {
    match transition {
        "submit" | "answer" | "withdraw" => Actor::new("alice", ActorKind::Human, &["requester"]),
        "ask" | "approve" | "reject" if which.is_multiple_of(3) => {
            Actor::new("dave", ActorKind::Human, &["approver", "director"])
        }
        "ask" | "approve" | "reject" => Actor::new("bob", ActorKind::Human, &["approver"]),
        "place" => Actor::new("erp-worker", ActorKind::Worker, &[]),
        "deliver" => Actor::new("shipping", ActorKind::Service, &[]),
        _ => Actor::system("test"),
    }
}

trait DefaultLike {
    fn default_like() -> Self;
}

impl DefaultLike for Instance {
    /// An empty instance, only used to resolve picks when there is no instance yet.
    fn default_like() -> Instance {
        Instance {
            id: String::new(),
            workflow: String::new(),
            definition_version: String::new(),
            key: None,
            state: String::new(),
            data: Value::Null,
            created_by: String::new(),
            created_at: Timestamp::from_micros(0),
            entered_at: Timestamp::from_micros(0),
            updated_at: Timestamp::from_micros(0),
            version: 0,
            slas: BTreeMap::new(),
            timers: BTreeMap::new(),
            tasks: BTreeMap::new(),
            incidents: BTreeMap::new(),
        }
    }
}

/// Runs a script, calling `check` with every evaluation (definition, instance before, command,
/// time, outcome), and applying applied changes to the running instance.
fn run_script(
    definition: &CompiledDefinition,
    script: &(bool, f64, Vec<(i64, Op)>),
    mut check: impl FnMut(Option<&Instance>, &Command, Timestamp, &Outcome) -> Result<(), TestCaseError>,
) -> Result<(), TestCaseError> {
    let (create_first, amount, ops) = script;
    let mut now_ms = EPOCH_MS;
    let mut instance: Option<Instance> = None;
    let mut steps: Vec<Op> = Vec::new();
    if *create_first {
        steps.push(Op::Create {
            valid: true,
            data: Value::Null,
            actor: Actor::new("alice", ActorKind::Human, &["requester"]),
            amount: *amount,
        });
    }
    let mut advances = vec![0i64; steps.len()];
    for (advance, op) in ops {
        advances.push(*advance);
        steps.push(op.clone());
    }
    for (n, (op, advance)) in steps.iter().zip(advances).enumerate() {
        now_ms = now_ms.saturating_add(advance);
        let at = Timestamp::from_millis(now_ms);
        let command = command(definition, op, instance.as_ref(), n);
        let outcome = evaluate(definition, instance.as_ref(), &command, at);
        check(instance.as_ref(), &command, at, &outcome)?;
        if let Outcome::Applied(change) = outcome {
            instance = Some(change.instance);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// a, b, c: robustness, refusals, determinism
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Property a: arbitrary command sequences never panic `evaluate` (a panic fails the case).
    #[test]
    fn evaluate_never_panics_on_arbitrary_command_sequences(script in script()) {
        let definition = purchase_order();
        run_script(&definition, &script, |_, _, _, outcome| {
            // Touch the whole outcome, as the state machine would.
            let bytes = serde_json::to_vec(outcome).expect("an outcome always serializes");
            prop_assert!(!bytes.is_empty());
            if let Outcome::Applied(change) = outcome {
                let _ = change.instance.sla_views(&definition, change.audit.at);
            }
            Ok(())
        })?;
    }

    /// Property b: a refused command leaves the instance exactly as it was and carries no change.
    #[test]
    fn refusal_leaves_instance_unchanged_and_carries_no_change(script in script()) {
        let definition = purchase_order();
        let (create_first, amount, ops) = &script;
        let mut now_ms = EPOCH_MS;
        let mut instance: Option<Instance> = None;
        if *create_first {
            let create = Op::Create { valid: true, data: Value::Null, actor: Actor::new("alice", ActorKind::Human, &["requester"]), amount: *amount };
            let outcome = evaluate(&definition, None, &command(&definition, &create, None, 0), Timestamp::from_millis(now_ms));
            instance = outcome.change().map(|c| c.instance.clone());
        }
        for (n, (advance, op)) in ops.iter().enumerate() {
            now_ms = now_ms.saturating_add(*advance);
            let at = Timestamp::from_millis(now_ms);
            let command = command(&definition, op, instance.as_ref(), n + 1);
            let before = instance.clone();
            let before_bytes = serde_json::to_vec(&before).unwrap();
            let outcome = evaluate(&definition, instance.as_ref(), &command, at);
            // Whatever the outcome, the instance handed in is untouched.
            prop_assert_eq!(&instance, &before);
            prop_assert_eq!(serde_json::to_vec(&instance).unwrap(), before_bytes);
            match outcome {
                Outcome::Refused(refusal) => {
                    prop_assert!(outcome_has_no_change(&Outcome::Refused(refusal.clone())));
                    prop_assert!(!refusal.message.is_empty(), "a refusal explains itself: {:?}", refusal);
                    if refusal.code == RefusalCode::GateNotYetOpen {
                        let earliest = refusal.earliest_at;
                        prop_assert!(earliest.is_some_and(|e| e > at), "a closed gate names a later opening time: {:?}", refusal);
                    }
                    // The instance the caller keeps is the one from before: nothing to apply.
                }
                Outcome::Applied(change) => {
                    // The invariants apply checks before it writes a change (a broken one
                    // stops the node) hold for every change the engine emits.
                    prop_assert_eq!(change.check(&definition, instance.as_ref()), Ok(()));
                    let previous = instance.as_ref().map(|i| i.version).unwrap_or(0);
                    prop_assert_eq!(change.instance.version, previous + 1, "every applied change bumps the version");
                    prop_assert_eq!(change.audit.instance_version, change.instance.version);
                    instance = Some(change.instance);
                }
            }
        }
    }

    /// Property c: the same definition, instance, command and time give byte-identical outcomes,
    /// even from two independently compiled definitions and independently cloned instances.
    #[test]
    fn identical_inputs_give_byte_identical_outcomes(script in script()) {
        let first = purchase_order();
        let second = purchase_order();
        let mut copies: Vec<Option<Instance>> = Vec::new();
        run_script(&first, &script, |instance, command, at, outcome| {
            let copy: Option<Instance> = instance.cloned();
            copies.push(copy.clone());
            let command_copy: Command = serde_json::from_slice(&serde_json::to_vec(command).unwrap()).unwrap();
            let again = evaluate(&second, copy.as_ref(), &command_copy, at);
            let a = serde_json::to_vec(outcome).unwrap();
            let b = serde_json::to_vec(&again).unwrap();
            prop_assert!(a == b, "outcomes differ for {:?} at {}:\n{}\n{}", command, at, String::from_utf8_lossy(&a), String::from_utf8_lossy(&b));
            Ok(())
        })?;
    }
}

fn outcome_has_no_change(outcome: &Outcome) -> bool {
    outcome.change().is_none() && outcome.refusal().is_some()
}

// ---------------------------------------------------------------------------------------------
// The minute-by-minute business-time reference (independent of lockstep_core::calendar)
// ---------------------------------------------------------------------------------------------

/// A calendar as plain data, checked against by counting minutes.
#[derive(Clone, Debug)]
struct RefCalendar {
    timezone: &'static str,
    /// Working intervals in minutes after local midnight, Monday (0) to Sunday (6).
    weekly: [Vec<(u32, u32)>; 7],
    /// Holidays as (year, month, day).
    holidays: BTreeSet<(i64, u32, u32)>,
}

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl RefCalendar {
    fn def(&self) -> CalendarDef {
        let hhmm = |m: u32| format!("{:02}:{:02}", m / 60, m % 60);
        let weekly = self
            .weekly
            .iter()
            .enumerate()
            .filter(|(_, hours)| !hours.is_empty())
            .map(|(day, hours)| {
                (
                    DAY_NAMES[day].to_string(),
                    hours
                        .iter()
                        .map(|&(a, b)| format!("{}-{}", hhmm(a), hhmm(b)))
                        .collect::<Vec<_>>()
                        .join(","),
                )
            })
            .collect();
        let holidays = self
            .holidays
            .iter()
            .map(|(y, m, d)| format!("{y:04}-{m:02}-{d:02}"))
            .collect();
        CalendarDef {
            timezone: self.timezone.into(),
            weekly,
            holidays,
        }
    }

    /// Whether the minute starting at `unix_minute` is working time: its local wall-clock time
    /// is inside the weekly hours of a day that is not a holiday.
    fn working_minute(&self, tz: &jiff::tz::TimeZone, unix_minute: i64) -> bool {
        let instant = jiff::Timestamp::from_second(unix_minute * 60).unwrap();
        let local_seconds = unix_minute * 60 + i64::from(tz.to_offset(instant).seconds());
        let day = local_seconds.div_euclid(86_400);
        let minute_of_day = (local_seconds.rem_euclid(86_400) / 60) as u32;
        let weekday = (day + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
        if self.holidays.contains(&civil_from_days(day)) {
            return false;
        }
        self.weekly[weekday]
            .iter()
            .any(|&(open, close)| open <= minute_of_day && minute_of_day < close)
    }

    /// Business minutes in `[a, b)` (both in unix minutes).
    fn minutes_between(&self, tz: &jiff::tz::TimeZone, a: i64, b: i64) -> u64 {
        (a..b).filter(|&m| self.working_minute(tz, m)).count() as u64
    }
}

/// (year, month, day) of a day number since 1970-01-01 (H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn unix_minute(t: Timestamp) -> i64 {
    t.as_millis().div_euclid(60_000)
}

fn ts_minute(m: i64) -> Timestamp {
    Timestamp::from_millis(m * 60_000)
}

/// 2026-01-01T00:00Z in unix minutes.
const YEAR_2026_MINUTE: i64 = 29_457_600;

fn ref_calendar() -> impl Strategy<Value = RefCalendar> {
    let zone = prop::sample::select(vec![
        "UTC",
        "Europe/Berlin",
        "America/New_York",
        "Asia/Kolkata",
        "Australia/Sydney",
    ]);
    // One to two disjoint intervals inside 06:00-22:00, per working day.
    let day = prop_oneof![
        1 => Just(Vec::new()),
        3 => (360u32..1320, 1u32..960).prop_map(|(a, len)| vec![(a, (a + len).min(1320))]),
        2 => (360u32..1320, 1u32..480, 0u32..240, 1u32..480).prop_map(|(a, l1, gap, l2)| {
            let b = (a + l1).min(1320);
            let c = b + gap + 1;
            if c >= 1320 { vec![(a, b)] } else { vec![(a, b), (c, (c + l2).min(1320))] }
        }),
    ];
    // Holidays within the span the intervals below can reach (2026 to early 2028).
    let holidays = prop::collection::btree_set(0i64..800, 0..12).prop_map(|days| {
        days.into_iter()
            .map(|d| civil_from_days(YEAR_2026_MINUTE / 1440 + d))
            .collect::<BTreeSet<_>>()
    });
    (zone, prop::array::uniform7(day), holidays)
        .prop_filter("at least one working day", |(_, weekly, _)| {
            weekly.iter().any(|d| !d.is_empty())
        })
        .prop_map(|(timezone, weekly, holidays)| RefCalendar {
            timezone,
            weekly,
            holidays,
        })
}

/// A minute-aligned start in 2026-2027 and a span of up to three weeks, in minutes.
fn interval() -> impl Strategy<Value = (i64, i64)> {
    (
        0i64..2 * 365 * 1440,
        prop_oneof![1 => 0i64..1440, 2 => 0i64..21 * 1440],
    )
        .prop_map(|(start, len)| (YEAR_2026_MINUTE + start, len))
}

// ---------------------------------------------------------------------------------------------
// d: SLA pauses
// ---------------------------------------------------------------------------------------------

/// The purchase-order calendar, written out for the reference.
fn purchase_order_calendar() -> RefCalendar {
    let mut weekly: [Vec<(u32, u32)>; 7] = Default::default();
    for day in weekly.iter_mut().take(5) {
        day.push((9 * 60, 17 * 60));
    }
    RefCalendar {
        timezone: "Europe/Berlin",
        weekly,
        holidays: [(2026, 12, 24), (2026, 12, 25), (2026, 12, 26)]
            .into_iter()
            .collect(),
    }
}

/// Gaps between commands, in minutes: often short, sometimes days (across weekends/holidays).
fn gap_minutes() -> impl Strategy<Value = i64> {
    prop_oneof![2 => 0i64..120, 2 => 0i64..1440, 1 => 0i64..4 * 1440]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Property d: an SLA's consumed budget is the business time of its running intervals only;
    /// whatever time is spent paused (waiting on the requester) never counts.
    #[test]
    fn paused_time_never_counts_against_the_sla_budget(
        start in 0i64..60 * 1440,
        to_submit in gap_minutes(),
        gaps in prop::collection::vec((gap_minutes(), gap_minutes()), 0..6),
        end_paused in any::<bool>(),
        tail in gap_minutes(),
    ) {
        let definition = purchase_order();
        let reference = purchase_order_calendar();
        let tz = jiff::tz::TimeZone::get(reference.timezone).unwrap();
        let alice = Actor::new("alice", ActorKind::Human, &["requester"]);
        let bob = Actor::new("bob", ActorKind::Human, &["approver"]);
        // Starts between mid-November 2026 and mid-January 2027: across the Christmas holidays.
        let mut now = YEAR_2026_MINUTE + 318 * 1440 + start;
        let create = Command::Create { instance_id: "po-sla".into(), key: None, data: json!({ "amount": 500.0, "requester": "alice" }), actor: alice.clone() };
        let mut instance = applied(evaluate(&definition, None, &create, ts_minute(now)))?;
        prop_assert!(instance.slas.is_empty(), "the SLA starts only on submit");

        // (command, actor, minute) in order; the SLA runs from submit to ask, and from answer to ask.
        let mut schedule = Vec::new();
        now += to_submit;
        schedule.push(("submit", alice.clone(), now));
        let count = gaps.len();
        for (i, (running, paused)) in gaps.iter().enumerate() {
            now += running;
            schedule.push(("ask", bob.clone(), now));
            if i + 1 < count || !end_paused {
                now += paused;
                schedule.push(("answer", alice.clone(), now));
            }
        }
        let end = now + tail;

        let mut expected_minutes = 0u64;
        let mut running_since: Option<i64> = None;
        for (name, actor, minute) in schedule {
            let command = Command::Transition { transition: name.into(), payload: Value::Null, actor, expected_version: Some(instance.version) };
            instance = applied(evaluate(&definition, Some(&instance), &command, ts_minute(minute)))
                .map_err(|e| TestCaseError::fail(format!("`{name}` at minute {minute}: {e}")))?;
            match name {
                "submit" | "answer" => running_since = Some(minute),
                _ => {
                    let since = running_since.take().expect("ask follows a running interval");
                    expected_minutes += reference.minutes_between(&tz, since, minute);
                }
            }
            let view = &instance.sla_views(&definition, ts_minute(minute))["approval"];
            prop_assert_eq!(view.consumed_ms, expected_minutes * 60_000, "after `{}` at minute {}", name, minute);
            prop_assert_eq!(view.status, if name == "ask" { SlaStatus::Paused } else { SlaStatus::Running });
        }
        if let Some(since) = running_since {
            expected_minutes += reference.minutes_between(&tz, since, end);
        }
        let view = &instance.sla_views(&definition, ts_minute(end))["approval"];
        prop_assert_eq!(view.consumed_ms, expected_minutes * 60_000, "at the end, minute {}", end);
        prop_assert_eq!(view.remaining_ms, 16 * 3_600_000 - i64::try_from(expected_minutes * 60_000).unwrap());
    }
}

fn applied(outcome: Outcome) -> Result<Instance, TestCaseError> {
    match outcome {
        Outcome::Applied(change) => Ok(change.instance),
        Outcome::Refused(refusal) => Err(TestCaseError::fail(format!("refused: {refusal:?}"))),
    }
}

// ---------------------------------------------------------------------------------------------
// e: business-time arithmetic against the reference
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Property e (between): business time in [a, b) is the number of working minutes, × 60 000.
    #[test]
    fn calendar_between_counts_working_minutes(reference in ref_calendar(), (a, len) in interval()) {
        let calendar = Calendar::compile(&reference.def(), &Limits::default()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let tz = jiff::tz::TimeZone::get(reference.timezone).unwrap();
        let b = a + len;
        let expected = reference.minutes_between(&tz, a, b) * 60_000;
        prop_assert_eq!(calendar.between(ts_minute(a), ts_minute(b)), expected, "between {} and {} with {:?}", ts_minute(a), ts_minute(b), reference.def());
        // The empty and reversed intervals hold no business time.
        prop_assert_eq!(calendar.between(ts_minute(b), ts_minute(a)), 0);
    }

    /// Property e (add): `add(a, ms)` is the earliest t with between(a, t) == ms.
    #[test]
    fn calendar_add_is_the_earliest_instant_reaching_the_budget(reference in ref_calendar(), (a, len) in interval(), fraction in 0.0f64..=1.0) {
        let calendar = Calendar::compile(&reference.def(), &Limits::default()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let tz = jiff::tz::TimeZone::get(reference.timezone).unwrap();
        // A budget reachable within the interval, so the reference stays cheap.
        let available = reference.minutes_between(&tz, a, a + len);
        let minutes = ((available as f64) * fraction).round() as u64;
        let ms = minutes * 60_000;
        let t = calendar.add(ts_minute(a), ms);
        prop_assert!(t.is_some(), "add({}, {} min) found no instant with {:?}", ts_minute(a), minutes, reference.def());
        let t = t.unwrap();
        if ms == 0 {
            prop_assert_eq!(t, ts_minute(a));
            return Ok(());
        }
        prop_assert_eq!(t.as_millis().rem_euclid(60_000), 0, "minute-aligned inputs give a minute-aligned end, got {}", t);
        let tm = unix_minute(t);
        prop_assert!(tm > a && tm <= a + len, "add({}, {} min) = {} lies outside the interval that holds that much business time", ts_minute(a), minutes, t);
        prop_assert_eq!(reference.minutes_between(&tz, a, tm), minutes, "reference between(a, add(a, ms)) with {:?}", reference.def());
        prop_assert_eq!(calendar.between(ts_minute(a), t), ms, "calendar between(a, add(a, ms))");
        // One minute earlier is short: the minute before t is working time and is needed.
        prop_assert!(reference.minutes_between(&tz, a, tm - 1) < minutes, "one minute before add(a, ms) = {} already holds the budget", t);
        prop_assert!(calendar.between(ts_minute(a), Timestamp::from_millis(t.as_millis() - 1)) < ms, "one millisecond before add(a, ms) is short");
    }
}
