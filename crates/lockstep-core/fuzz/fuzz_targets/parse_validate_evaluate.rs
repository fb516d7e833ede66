//! Bytes → definition text → `validate::check` → a few `evaluate` commands.
//!
//! The input is `definition text` `\0` `command bytes`. The text goes through the YAML parser,
//! the source map and static validation; if it compiles, an instance is created (with the
//! first JSON value found in the command bytes as its data, else `{}`) and the rest of the
//! bytes drive up to 32 commands: transitions and events the definition declares (and some it
//! does not), timer firings, task leases/completions/failures and incident resolutions, with
//! varying actors, payloads and time advances. Nothing may panic, and every evaluation must be
//! deterministic (evaluated twice, serialized byte for byte).
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockstep_core::engine::LeaseToken;
use lockstep_core::{evaluate, validate, Actor, ActorKind, Command, CompiledDefinition, Instance, Limits, Outcome, Timestamp};
use serde_json::{json, Value};

fuzz_target!(|data: &[u8]| {
    let (text, rest) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(text) = std::str::from_utf8(text) else { return };
    let limits = Limits::default();
    let checked = validate::check(Some("fuzz.yaml"), text, &limits);
    let Some(definition) = checked.compiled else { return };
    run(&definition, rest);
});

/// Reads the command bytes.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(first)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes([self.byte()?, self.byte()?]))
    }
}

fn run(definition: &CompiledDefinition, rest: &[u8]) {
    // Instance data: the first JSON value in the command bytes, if there is one.
    let mut stream = serde_json::Deserializer::from_slice(rest).into_iter::<Value>();
    let (data, offset) = match stream.next() {
        Some(Ok(value)) => (value, stream.byte_offset()),
        _ => (json!({}), 0),
    };
    let mut bytes = Bytes(&rest[offset.min(rest.len())..]);
    let mut at = Timestamp::parse_rfc3339("2026-11-16T09:00:00Z").expect("a valid timestamp");
    let creator = actor(bytes.byte().unwrap_or(0));
    let create = Command::Create { instance_id: "fuzz-1".into(), key: None, data, actor: creator.clone() };
    let mut instance = step(definition, None, &create, at);
    if instance.is_none() {
        // Try again with empty data, so that definitions without a data schema still run.
        let create = Command::Create { instance_id: "fuzz-1".into(), key: None, data: json!({}), actor: creator };
        instance = step(definition, None, &create, at);
    }
    let Some(mut instance) = instance else { return };

    let transitions: Vec<&str> = definition.transitions.keys().map(String::as_str).collect();
    let events: Vec<&str> = definition.transitions.values().filter_map(|t| t.on.as_deref()).collect();
    for _ in 0..32 {
        let Some(op) = bytes.byte() else { break };
        let arg = bytes.byte().unwrap_or(0);
        let who = actor(bytes.byte().unwrap_or(0));
        // Time moves forward by up to ~45 days, in steps from milliseconds to hours.
        let advance = u64::from(bytes.u16().unwrap_or(0));
        let scale = [1u64, 1_000, 60_000, 3_600_000][usize::from(op >> 6)];
        at = at.add_ms(advance.saturating_mul(scale) % (45 * 86_400_000));
        let command = match op % 8 {
            0 | 1 => Command::Transition {
                transition: pick(&transitions, arg).unwrap_or("no-such-transition").to_string(),
                payload: payload(arg),
                actor: who,
                expected_version: (arg & 0x80 != 0).then_some(instance.version),
            },
            2 => Command::Event { event: pick(&events, arg).unwrap_or("no.such.event").to_string(), payload: payload(arg), actor: who },
            3 => Command::FireTimer { timer_id: nth(instance.timers.keys(), arg) },
            4 => Command::LeaseTask { task_id: nth(instance.tasks.keys(), arg), worker: who, term: u64::from(arg & 3) },
            5 => {
                let task_id = nth(instance.tasks.keys(), arg);
                let token = lease(&instance, &task_id, arg);
                Command::CompleteTask { task_id, token, result: payload(arg), worker: who }
            }
            6 => {
                let task_id = nth(instance.tasks.keys(), arg);
                let token = lease(&instance, &task_id, arg);
                if arg & 0x40 != 0 {
                    Command::HeartbeatTask { task_id, token, worker: who }
                } else {
                    Command::FailTask { task_id, token, error: "fuzz".into(), retryable: arg & 1 == 0, worker: who }
                }
            }
            _ => Command::ResolveIncident { incident_id: nth(instance.incidents.keys(), arg), retry_task: arg & 1 == 0, actor: who },
        };
        if let Some(next) = step(definition, Some(&instance), &command, at) {
            instance = next;
        }
    }
}

/// Evaluates twice, checks determinism and that a refusal carries no change; returns the new
/// instance if the command applied.
fn step(definition: &CompiledDefinition, instance: Option<&Instance>, command: &Command, at: Timestamp) -> Option<Instance> {
    let before = instance.cloned();
    let first = evaluate(definition, instance, command, at);
    let second = evaluate(definition, before.as_ref(), command, at);
    let a = serde_json::to_vec(&first).expect("an outcome serializes");
    let b = serde_json::to_vec(&second).expect("an outcome serializes");
    assert!(a == b, "evaluate is not deterministic for {command:?}");
    assert!(instance == before.as_ref(), "evaluate changed the instance it was given");
    match first {
        Outcome::Applied(change) => Some(change.instance),
        Outcome::Refused(_) => None,
    }
}

fn pick<'a>(names: &[&'a str], arg: u8) -> Option<&'a str> {
    // One in eight picks a name the definition does not declare.
    if names.is_empty() || arg & 7 == 7 { None } else { Some(names[usize::from(arg) % names.len()]) }
}

fn nth<'a>(ids: impl Iterator<Item = &'a String>, arg: u8) -> String {
    let ids: Vec<&String> = ids.collect();
    if ids.is_empty() || arg & 7 == 7 { format!("unknown-{arg}") } else { ids[usize::from(arg) % ids.len()].clone() }
}

fn lease(instance: &Instance, task_id: &str, arg: u8) -> LeaseToken {
    let current = instance.tasks.get(task_id).and_then(|t| t.lease);
    match current {
        Some(token) if arg & 0x20 == 0 => token,
        _ => LeaseToken { term: u64::from(arg >> 4), attempt: u32::from(arg & 3) },
    }
}

fn actor(b: u8) -> Actor {
    let kind = [ActorKind::Human, ActorKind::Service, ActorKind::Worker, ActorKind::System][usize::from(b & 3)];
    let ids = ["alice", "bob", "carol", "system:fuzz"];
    let roles: Vec<&str> = ["approver", "director", "operator", "requester"].iter().enumerate().filter(|(i, _)| b & (0x10 << i) != 0).map(|(_, r)| *r).collect();
    Actor::new(ids[usize::from((b >> 2) & 3)], kind, &roles)
}

fn payload(arg: u8) -> Value {
    match arg % 5 {
        0 => Value::Null,
        1 => json!({}),
        2 => json!({ "data": { "amount": f64::from(arg) * 100.0, "note": "n" } }),
        3 => json!({ "data": { "requester": "alice", "due": "2026-12-01T09:00:00Z" } }),
        _ => json!({ "data": null }),
    }
}
