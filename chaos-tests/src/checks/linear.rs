//! Per-instance linearizability (Wing–Gong, [`crate::wgl`]).
//!
//! Each instance is a versioned register: its value is (state, version). The history of one
//! business key holds the client's operations on it and the changes nobody in the history
//! asked for (timer fires, task leases, retries, SLA records), taken from the audit log after
//! healing. Writes are identified in the audit log by the tag their payload carries, so an
//! acknowledged or unknown write that took effect is placed with the version and the states
//! its audit record shows; an unknown write with no record did not happen and is left out.
//! Changes without a client operation may take effect any time after the key's first call.
//!
//! What a violation means: some client saw a value that no single order of the operations,
//! respecting real time, explains — a stale read, a lost or reordered acknowledged write, or
//! a refusal (`NOT_ALLOWED_FROM_STATE`) based on a state the instance was not in.

use std::collections::{BTreeMap, HashMap};

use super::{CheckReport, Observation};
use crate::history::{Op, OpKind, Outcome, tag_digest};
use crate::wgl::{self, Entry, Model};
use crate::workflow::from_states;

/// (state, version); `None` before creation.
type Value = Option<(String, u64)>;

#[derive(Clone, Debug)]
pub enum Step {
    /// A change producing `version`; from `from` (if known) to `to` (unchanged if `None`).
    Write {
        version: u64,
        from: Option<String>,
        to: Option<String>,
        what: String,
    },
    /// A read that saw this value (`None`: not found).
    Read { value: Value, what: String },
    /// A refusal because the instance was not in any of these states.
    NotFrom {
        states: &'static [&'static str],
        what: String,
    },
    /// `ALREADY_EXISTS`.
    Exists { what: String },
}

#[derive(Debug)]
pub struct Instance;

impl Model for Instance {
    type State = Value;
    type Op = Step;
    fn init(&self) -> Value {
        None
    }
    fn step(&self, cur: &Value, op: &Step) -> Option<Value> {
        match (op, cur) {
            (Step::Write { version, to, .. }, None) => {
                (*version == 1).then(|| Some((to.clone().unwrap_or_default(), 1)))
            }
            (
                Step::Write {
                    version, from, to, ..
                },
                Some((state, v)),
            ) => {
                let from_ok = from.as_ref().is_none_or(|f| f == state);
                (*version == v + 1 && from_ok)
                    .then(|| Some((to.clone().unwrap_or_else(|| state.clone()), *version)))
            }
            (Step::Read { value, .. }, _) => (value == cur).then(|| cur.clone()),
            (Step::NotFrom { states, .. }, Some((state, _))) => {
                (!states.contains(&state.as_str())).then(|| cur.clone())
            }
            (Step::NotFrom { .. }, None) => None,
            (Step::Exists { .. }, Some(_)) => Some(cur.clone()),
            (Step::Exists { .. }, None) => None,
        }
    }
}

fn describe(op: &Op) -> String {
    format!(
        "op {} (process {}, {:?}{}, {:.3}s..{}) → {:?}{}{}",
        op.id,
        op.process,
        op.kind,
        op.transition
            .as_ref()
            .map(|t| format!(" {t}"))
            .unwrap_or_default(),
        op.invoke_us as f64 / 1e6,
        if op.outcome == Outcome::Unknown {
            "?".to_string()
        } else {
            format!("{:.3}s", op.complete_us as f64 / 1e6)
        },
        op.outcome,
        match (&op.state, op.version) {
            (Some(s), Some(v)) => format!(" {s} v{v}"),
            _ => String::new(),
        },
        op.code
            .as_ref()
            .map(|c| format!(" {c}"))
            .unwrap_or_default()
    )
}

/// The per-key histories as WGL entries.
pub fn entries(obs: &Observation) -> BTreeMap<String, Vec<Entry<Step>>> {
    let by_instance = obs.by_instance();
    let mut keys: BTreeMap<String, Vec<&Op>> = BTreeMap::new();
    for op in &obs.ops {
        keys.entry(op.key.clone()).or_default().push(op);
    }
    let mut out = BTreeMap::new();
    for (key, ops) in keys {
        let records = obs
            .finals
            .get(&key)
            .and_then(|f| by_instance.get(f.id.as_str()))
            .cloned()
            .unwrap_or_default();
        let mut by_digest: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, r) in records.iter().enumerate() {
            if let Some(d) = &r.payload_digest {
                by_digest.entry(d.as_str()).or_default().push(i);
            }
        }
        let mut claimed = vec![false; records.len()];
        let first_call = ops.iter().map(|o| o.invoke_us).min().unwrap_or(0);
        let mut list = Vec::new();
        for op in ops {
            let what = describe(op);
            if op.is_write() {
                let digest = op.tag.as_deref().map(tag_digest);
                // Heartbeats and failures carry no payload: their answer named the record.
                let found = digest
                    .as_deref()
                    .and_then(|d| by_digest.get(d))
                    .and_then(|v| v.first().copied())
                    .or_else(|| op.seq.and_then(|s| records.iter().position(|r| r.seq == s)));
                if let Some(i) = found {
                    claimed[i] = true;
                    let r = records[i];
                    let ret = if op.outcome == Outcome::Ok {
                        op.complete_us
                    } else {
                        // Unknown: took effect at some time after its call. (A failed write
                        // that took effect is the writes checker's finding.)
                        u64::MAX
                    };
                    list.push(Entry {
                        call: op.invoke_us,
                        ret,
                        op: Step::Write {
                            version: r.version,
                            from: r.from.clone(),
                            to: r.to.clone(),
                            what,
                        },
                    });
                    continue;
                }
                match op.outcome {
                    // An acknowledged heartbeat or failure whose record is missing is the
                    // tasks checker's finding; its answer gave no version to place it by.
                    Outcome::Ok if matches!(op.kind, OpKind::Heartbeat | OpKind::Fail) => {}
                    Outcome::Ok => list.push(Entry {
                        // Acknowledged but absent from the log: place it as acknowledged.
                        call: op.invoke_us,
                        ret: op.complete_us,
                        op: Step::Write {
                            version: op.version.unwrap_or(0),
                            from: None,
                            to: op.state.clone(),
                            what,
                        },
                    }),
                    Outcome::Fail => match (op.kind, op.code.as_deref()) {
                        (OpKind::Transition, Some("NOT_ALLOWED_FROM_STATE")) => list.push(Entry {
                            call: op.invoke_us,
                            ret: op.complete_us,
                            op: Step::NotFrom {
                                states: from_states(op.transition.as_deref().unwrap_or("")),
                                what,
                            },
                        }),
                        (OpKind::Create, Some("ALREADY_EXISTS")) => list.push(Entry {
                            call: op.invoke_us,
                            ret: op.complete_us,
                            op: Step::Exists { what },
                        }),
                        // Refused because the instance does not exist: it saw no instance,
                        // so after an acknowledged create it is a violation.
                        (_, Some("UNKNOWN_INSTANCE" | "NOT_FOUND")) => list.push(Entry {
                            call: op.invoke_us,
                            ret: op.complete_us,
                            op: Step::Read { value: None, what },
                        }),
                        _ => {}
                    },
                    Outcome::Unknown => {}
                }
            } else {
                match (op.outcome, op.code.as_deref()) {
                    (Outcome::Ok, _) => list.push(Entry {
                        call: op.invoke_us,
                        ret: op.complete_us,
                        op: Step::Read {
                            value: op.state.clone().zip(op.version),
                            what,
                        },
                    }),
                    (Outcome::Fail, Some("NOT_FOUND" | "UNKNOWN_INSTANCE")) => list.push(Entry {
                        call: op.invoke_us,
                        ret: op.complete_us,
                        op: Step::Read { value: None, what },
                    }),
                    _ => {}
                }
            }
        }
        // Changes no client operation asked for (timers, leases, retries, SLA records).
        let mut last_version = 0;
        for (i, r) in records.iter().enumerate() {
            if r.version <= last_version {
                continue;
            }
            last_version = r.version;
            if claimed[i] {
                continue;
            }
            list.push(Entry {
                call: first_call,
                ret: u64::MAX,
                op: Step::Write {
                    version: r.version,
                    from: r.from.clone(),
                    to: r.to.clone(),
                    what: format!(
                        "audit #{} {}{} v{} (no client op)",
                        r.seq,
                        r.kind,
                        r.transition
                            .as_ref()
                            .map(|t| format!(" {t}"))
                            .unwrap_or_default(),
                        r.version
                    ),
                },
            });
        }
        out.insert(key, list);
    }
    out
}

fn step_what(s: &Step) -> &str {
    match s {
        Step::Write { what, .. }
        | Step::Read { what, .. }
        | Step::NotFrom { what, .. }
        | Step::Exists { what } => what,
    }
}

pub fn check(obs: &Observation) -> CheckReport {
    let mut report = CheckReport::new("linearizable");
    for (key, list) in entries(obs) {
        report.checked += 1;
        if let Err(cx) = wgl::check(&Instance, &list) {
            let prefix: Vec<String> = cx
                .prefix
                .iter()
                .map(|i| format!("    ok  {}", step_what(&list[*i].op)))
                .collect();
            let pending: Vec<String> = cx
                .pending
                .iter()
                .map(|i| format!("    ??  {}", step_what(&list[*i].op)))
                .collect();
            report.problems.push(format!(
                "instance {key}: not linearizable; longest legal order reaches {:?}:\n{}\n  then none of these can be placed:\n{}",
                cx.state,
                prefix.join("\n"),
                pending.join("\n")
            ));
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::testkit::*;

    #[test]
    fn a_consistent_history_passes() {
        let r = check(&good());
        assert!(r.ok(), "{:?}", r.problems);
        assert_eq!(r.checked, 1);
    }

    #[test]
    fn a_stale_read_fails() {
        let mut obs = good();
        // Invoked after `start` was acknowledged, yet it saw the instance still open.
        obs.ops.push(read(4, "k1", (60, 70), "open", 1));
        let r = check(&obs);
        assert!(!r.ok());
        assert!(r.problems[0].contains("op 4"), "{}", r.problems[0]);
    }

    #[test]
    fn a_read_concurrent_with_the_write_may_see_the_old_value() {
        let mut obs = good();
        obs.ops.push(read(4, "k1", (15, 28), "open", 1));
        assert!(check(&obs).ok());
    }

    #[test]
    fn a_lost_write_fails() {
        let mut obs = good();
        // `start` was acknowledged but its record is gone, and the instance expired instead.
        obs.audit[1] = record(
            2,
            "i1",
            2,
            "timer_fired",
            Some("expire"),
            (Some("open"), Some("expired")),
            25,
            None,
        );
        obs.ops.truncate(2);
        obs.ops.push(read(3, "k1", (40, 50), "expired", 2));
        assert!(!check(&obs).ok());
    }

    #[test]
    fn a_refusal_from_a_state_the_instance_was_not_in_fails() {
        let mut obs = good();
        // `cancel` is allowed from working; refusing it after `start` was acknowledged is wrong.
        obs.ops
            .push(transition(4, "k1", "cancel", (60, 70), Outcome::Fail, None));
        assert!(!check(&obs).ok());
        // Refusing a second `start` is right.
        let mut obs = good();
        obs.ops
            .push(transition(4, "k1", "start", (60, 70), Outcome::Fail, None));
        assert!(check(&obs).ok());
    }

    #[test]
    fn an_unknown_write_that_took_effect_may_land_late() {
        let mut obs = good();
        obs.ops[1].outcome = Outcome::Unknown;
        obs.ops[1].complete_us = 35;
        // A read before the unknown write's record, after its call.
        obs.ops.insert(2, read(9, "k1", (32, 33), "open", 1));
        assert!(check(&obs).ok());
    }

    #[test]
    fn timer_fires_without_client_ops_are_placed_by_version() {
        let mut obs = good();
        obs.ops = vec![
            create(1, "k1", (0, 10)),
            read(2, "k1", (20, 30), "open", 1),
            read(3, "k1", (40, 50), "expired", 2),
        ];
        obs.audit[1] = record(
            2,
            "i1",
            2,
            "timer_fired",
            Some("expire"),
            (Some("open"), Some("expired")),
            45,
            None,
        );
        assert!(check(&obs).ok());
        // But the fire cannot go back in time.
        obs.ops.push(read(4, "k1", (60, 70), "open", 1));
        assert!(!check(&obs).ok());
    }

    /// An instance that a client saw created, refused later as unknown: a violation.
    #[test]
    fn unknown_instance_after_an_acknowledged_create_fails() {
        let mut obs = good();
        let mut t = transition(4, "k1", "cancel", (60, 70), Outcome::Fail, None);
        t.code = Some("UNKNOWN_INSTANCE".into());
        obs.ops.push(t);
        assert!(!check(&obs).ok());
        // Before the create was acknowledged, it may not have existed yet.
        let mut obs = good();
        let mut t = transition(4, "k1", "cancel", (1, 3), Outcome::Fail, None);
        t.code = Some("UNKNOWN_INSTANCE".into());
        obs.ops.push(t);
        assert!(check(&obs).ok(), "{:?}", check(&obs).problems);
    }
}
