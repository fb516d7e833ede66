//! What a change to a definition means: the review diff of two versions of one workflow.
//!
//! Three views of the same change, each computed from the declared definitions alone:
//! - **structure**: states, transitions, SLAs, calendars and the workflow's own settings added,
//!   removed or changed, field by field;
//! - **trust**: per role (`'x' in actor.roles`) and actor kind (`actor.kind == 'y'`) named in
//!   an `allow`, the transitions it gains or loses, and those whose predicate changed in a way
//!   these two forms do not capture (listed for review, never guessed);
//! - **time**: SLA budgets, calendars, warnings, gates and expiries.
//!
//! Nothing here evaluates an expression: a predicate is read as text, so the diff of two
//! versions is the same wherever it runs.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::definition::Definition;

/// Where in a definition a change is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Section {
    /// The workflow's own settings: description, data schema, `create`, `ignore_events`.
    Workflow,
    State,
    Transition,
    Sla,
    Calendar,
}

impl Section {
    pub fn as_str(self) -> &'static str {
        match self {
            Section::Workflow => "workflow",
            Section::State => "state",
            Section::Transition => "transition",
            Section::Sla => "sla",
            Section::Calendar => "calendar",
        }
    }
}

/// One field of an item, before and after (`None`: absent on that side).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FieldChange {
    pub field: String,
    pub old: Option<Value>,
    pub new: Option<Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ItemChange {
    Added,
    Removed,
    Changed { fields: Vec<FieldChange> },
}

/// A state, transition, SLA, calendar or workflow setting that differs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StructureChange {
    pub section: Section,
    /// The item's name (`description`, `data`, … for the workflow's settings).
    pub name: String,
    pub change: ItemChange,
}

/// Who a trust change concerns.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", content = "name", rename_all = "snake_case")]
pub enum Principal {
    /// Actors holding this role (`'x' in actor.roles`).
    Role(String),
    /// Actors of this kind (`actor.kind == 'y'`).
    ActorKind(String),
    /// The engine (`system: true`).
    System,
    /// Whoever an `allow` admits that names no role or kind (e.g. `true`, or a predicate on
    /// the actor's id or the instance's data).
    Anyone,
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Principal::Role(r) => write!(f, "role {r}"),
            Principal::ActorKind(k) => write!(f, "kind {k}"),
            Principal::System => write!(f, "the engine"),
            Principal::Anyone => write!(f, "anyone the predicate admits"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TrustEffect {
    /// The principal may take the transition now and could not before.
    Gains,
    /// The principal could take the transition before and may not now.
    Loses,
    /// The principal is named on both sides, but the predicate around it changed beyond
    /// roles and kinds: read it (the whole `allow` of each side).
    NeedsReview {
        old: Option<String>,
        new: Option<String>,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrustChange {
    pub principal: Principal,
    pub transition: String,
    pub effect: TrustEffect,
    /// The `allow` that decides it on the side that admits the principal, when it says more
    /// than roles and kinds (a gain or a loss is then conditional on it).
    pub condition: Option<String>,
}

/// A change to when things happen: a budget, calendar, warning, gate or expiry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TimeChange {
    pub section: Section,
    pub name: String,
    pub field: String,
    pub old: Option<Value>,
    pub new: Option<Value>,
}

/// The review diff of two versions of one workflow.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DefinitionDiff {
    pub workflow: String,
    pub structure: Vec<StructureChange>,
    pub trust: Vec<TrustChange>,
    pub time: Vec<TimeChange>,
}

impl DefinitionDiff {
    pub fn is_empty(&self) -> bool {
        self.structure.is_empty()
    }
}

/// Fields that say when something happens (SLA budgets and calendars, warnings, gates,
/// expiries); a calendar is time as a whole.
const TIME_FIELDS: [&str; 6] = [
    "within",
    "calendar",
    "warn_at",
    "not_before",
    "not_after",
    "expires",
];

/// The diff of `old` and `new`, two versions of the same workflow.
pub fn diff(old: &Definition, new: &Definition) -> DefinitionDiff {
    let mut structure = Vec::new();
    for field in ["description", "data", "create", "ignore_events"] {
        let (a, b) = (member(old, field), member(new, field));
        if a != b {
            structure.push(StructureChange {
                section: Section::Workflow,
                name: field.to_string(),
                change: ItemChange::Changed {
                    fields: vec![FieldChange {
                        field: field.to_string(),
                        old: a,
                        new: b,
                    }],
                },
            });
        }
    }
    structure.extend(items(Section::State, &old.states, &new.states));
    structure.extend(items(
        Section::Transition,
        &old.transitions,
        &new.transitions,
    ));
    structure.extend(items(Section::Sla, &old.slas, &new.slas));
    structure.extend(items(Section::Calendar, &old.calendars, &new.calendars));
    let time = time_changes(&structure);
    DefinitionDiff {
        workflow: new.workflow.clone(),
        trust: trust(old, new),
        structure,
        time,
    }
}

/// A top-level member of a definition as JSON (`None` when absent or empty).
fn member(definition: &Definition, field: &str) -> Option<Value> {
    let value = serde_json::to_value(definition).ok()?;
    value.get(field).cloned()
}

fn as_fields<T: Serialize>(item: &T) -> BTreeMap<String, Value> {
    match serde_json::to_value(item) {
        Ok(Value::Object(map)) => map.into_iter().collect(),
        Ok(other) => BTreeMap::from([("value".to_string(), other)]),
        Err(_) => BTreeMap::new(),
    }
}

/// The named items of one section, added, removed or changed field by field.
fn items<T: Serialize>(
    section: Section,
    old: &BTreeMap<String, T>,
    new: &BTreeMap<String, T>,
) -> Vec<StructureChange> {
    let names: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    let mut out = Vec::new();
    for name in names {
        let change = match (old.get(name), new.get(name)) {
            (None, Some(_)) => ItemChange::Added,
            (Some(_), None) => ItemChange::Removed,
            (Some(a), Some(b)) => {
                let (a, b) = (as_fields(a), as_fields(b));
                let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
                let fields: Vec<FieldChange> = keys
                    .into_iter()
                    .filter(|k| a.get(*k) != b.get(*k))
                    .map(|k| FieldChange {
                        field: k.clone(),
                        old: a.get(k).cloned(),
                        new: b.get(k).cloned(),
                    })
                    .collect();
                if fields.is_empty() {
                    continue;
                }
                ItemChange::Changed { fields }
            }
            (None, None) => continue,
        };
        out.push(StructureChange {
            section,
            name: name.clone(),
            change,
        });
    }
    out
}

/// The time view: changed time fields, and calendars and timed items added or removed.
fn time_changes(structure: &[StructureChange]) -> Vec<TimeChange> {
    let mut out = Vec::new();
    for item in structure {
        match (&item.change, item.section) {
            (ItemChange::Changed { fields }, section) => {
                for f in fields {
                    if section == Section::Calendar || TIME_FIELDS.contains(&f.field.as_str()) {
                        out.push(TimeChange {
                            section,
                            name: item.name.clone(),
                            field: f.field.clone(),
                            old: f.old.clone(),
                            new: f.new.clone(),
                        });
                    }
                }
            }
            (ItemChange::Added | ItemChange::Removed, Section::Sla | Section::Calendar) => {
                let added = item.change == ItemChange::Added;
                out.push(TimeChange {
                    section: item.section,
                    name: item.name.clone(),
                    field: String::new(),
                    old: (!added).then(|| Value::String("present".into())),
                    new: added.then(|| Value::String("present".into())),
                });
            }
            _ => {}
        }
    }
    out
}

/// The principals an `allow` names, and whether it says anything beyond them (a condition).
#[derive(Debug, Default, PartialEq)]
struct Admits {
    principals: BTreeSet<Principal>,
    /// The `allow` as written.
    allow: Option<String>,
    /// The predicate, when it is more than an `||` of role and kind tests.
    condition: Option<String>,
}

/// Who may take a transition, read from its declaration.
fn admits(system: bool, allow: Option<&str>) -> Admits {
    if system {
        return Admits {
            principals: BTreeSet::from([Principal::System]),
            allow: None,
            condition: None,
        };
    }
    let Some(allow) = allow else {
        return Admits::default();
    };
    let (principals, rest) = principals_of(allow);
    let simple = rest
        .chars()
        .all(|c| c.is_whitespace() || matches!(c, '|' | '(' | ')'));
    let mut principals = principals;
    if principals.is_empty() {
        principals.insert(Principal::Anyone);
    }
    Admits {
        principals,
        allow: Some(allow.to_string()),
        condition: (!simple).then(|| allow.to_string()),
    }
}

/// The role and kind tests of a predicate (`'x' in actor.roles`, `actor.kind == 'y'`, with
/// either quote), and the text left once they are taken out.
fn principals_of(predicate: &str) -> (BTreeSet<Principal>, String) {
    let mut found = BTreeSet::new();
    let mut rest = String::with_capacity(predicate.len());
    let mut i = 0;
    let bytes = predicate.as_bytes();
    while i < bytes.len() {
        let tail = &predicate[i..];
        // 'role' in actor.roles
        if let Some((name, len)) = quoted(tail)
            && let Some(after) = tail[len..].trim_start().strip_prefix("in")
            && let Some(after) = after.trim_start().strip_prefix("actor.roles")
        {
            found.insert(Principal::Role(name.to_string()));
            i = predicate.len() - after.len();
            continue;
        }
        // actor.kind == 'kind'
        if let Some(after) = tail.strip_prefix("actor.kind")
            && let Some(after) = after.trim_start().strip_prefix("==")
            && let Some((name, len)) = quoted(after.trim_start())
        {
            found.insert(Principal::ActorKind(name.to_string()));
            i = predicate.len() - (after.trim_start().len() - len);
            continue;
        }
        let c = tail.chars().next().expect("not at the end");
        rest.push(c);
        i += c.len_utf8();
    }
    (found, rest)
}

/// A quoted string at the start of `text` (single or double quotes, no escapes): its content
/// and the length taken, quotes included.
fn quoted(text: &str) -> Option<(&str, usize)> {
    let quote = text.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let end = text[1..].find(quote)?;
    Some((&text[1..1 + end], end + 2))
}

/// The trust view: per principal and transition, what changed.
fn trust(old: &Definition, new: &Definition) -> Vec<TrustChange> {
    let names: BTreeSet<&String> = old
        .transitions
        .keys()
        .chain(new.transitions.keys())
        .collect();
    let mut out = Vec::new();
    for name in names {
        let side = |d: &Definition| {
            d.transitions
                .get(name)
                .map(|t| admits(t.system, t.allow.as_deref()))
                .unwrap_or_default()
        };
        let (before, after) = (side(old), side(new));
        if before == after {
            continue;
        }
        let principals: BTreeSet<&Principal> =
            before.principals.iter().chain(&after.principals).collect();
        for principal in principals {
            let (had, has) = (
                before.principals.contains(principal),
                after.principals.contains(principal),
            );
            let (effect, condition) = match (had, has) {
                (false, true) => (TrustEffect::Gains, after.condition.clone()),
                (true, false) => (TrustEffect::Loses, before.condition.clone()),
                (true, true) if before.condition != after.condition => (
                    TrustEffect::NeedsReview {
                        old: before.allow.clone(),
                        new: after.allow.clone(),
                    },
                    None,
                ),
                _ => continue,
            };
            out.push(TrustChange {
                principal: principal.clone(),
                transition: name.clone(),
                effect,
                condition,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Definition {
        crate::source::parse_definition(None, text, &crate::Limits::default())
            .expect("the test definition parses")
            .0
    }

    #[test]
    fn a_diff_names_what_was_added_changed_and_who_gains() {
        let old = parse(
            "workflow: w\nstates:\n  a: { initial: true }\n  b: { terminal: true }\ntransitions:\n  go: { from: a, to: b, allow: \"'x' in actor.roles\" }\n",
        );
        let new = parse(
            "workflow: w\nstates:\n  a: { initial: true, expires: { after: 1d, transition: go } }\n  b: {}\n  c: { terminal: true }\ntransitions:\n  go: { from: a, to: b, allow: \"'x' in actor.roles || actor.kind == 'service'\" }\n  end: { from: b, to: c, system: true }\n",
        );
        let d = diff(&old, &new);
        let summary: Vec<(Section, &str, &str)> = d
            .structure
            .iter()
            .map(|c| {
                let kind = match &c.change {
                    ItemChange::Added => "added",
                    ItemChange::Removed => "removed",
                    ItemChange::Changed { .. } => "changed",
                };
                (c.section, c.name.as_str(), kind)
            })
            .collect();
        assert_eq!(
            summary,
            [
                (Section::State, "a", "changed"),
                (Section::State, "b", "changed"),
                (Section::State, "c", "added"),
                (Section::Transition, "end", "added"),
                (Section::Transition, "go", "changed"),
            ]
        );
        let trust: Vec<(String, &str, &TrustEffect)> = d
            .trust
            .iter()
            .map(|t| (t.principal.to_string(), t.transition.as_str(), &t.effect))
            .collect();
        assert_eq!(
            trust,
            [
                ("the engine".to_string(), "end", &TrustEffect::Gains),
                ("kind service".to_string(), "go", &TrustEffect::Gains),
            ]
        );
        assert_eq!(d.time.len(), 1, "{:?}", d.time);
        assert_eq!(
            (d.time[0].name.as_str(), d.time[0].field.as_str()),
            ("a", "expires")
        );
        assert!(diff(&old, &old).is_empty());
    }

    #[test]
    fn roles_and_kinds_are_read_from_either_quote_and_the_rest_is_a_condition() {
        let (found, rest) =
            principals_of("'approver' in actor.roles || \"director\" in actor.roles");
        assert_eq!(
            found,
            BTreeSet::from([
                Principal::Role("approver".into()),
                Principal::Role("director".into())
            ])
        );
        assert_eq!(rest.trim(), "||");
        let a = admits(false, Some("actor.kind == 'worker'"));
        assert_eq!(
            a.principals,
            BTreeSet::from([Principal::ActorKind("worker".into())])
        );
        assert_eq!(a.condition, None);
        let a = admits(
            false,
            Some("'approver' in actor.roles && actor.id != instance.data.requester"),
        );
        assert_eq!(
            a.principals,
            BTreeSet::from([Principal::Role("approver".into())])
        );
        assert!(a.condition.is_some());
        let a = admits(false, Some("actor.id == instance.data.requester"));
        assert_eq!(a.principals, BTreeSet::from([Principal::Anyone]));
        assert!(a.condition.is_some());
        assert_eq!(admits(false, None), Admits::default());
        assert_eq!(
            admits(true, None).principals,
            BTreeSet::from([Principal::System])
        );
    }
}
