//! Webhook subscriptions (DESIGN §9, "Outbound"): which audit records a subscriber is sent,
//! and where it is in the audit chain.
//!
//! A subscription is a replicated object: a name, a target URL, a [`Filter`], the name of a
//! signing secret (each node reads the secret itself from its own configuration, so secrets
//! are never replicated), a cursor (the last global audit sequence handled: delivered or
//! filtered out) and whether it is paused. The leader delivers the records after the cursor
//! in sequence order and moves the cursor through the log, so a new leader resumes from it.
//! This module holds what every replica must decide the same way: the checks on a new
//! subscription, and which records a filter matches.

use serde::{Deserialize, Serialize};

use crate::audit::{AuditKind, AuditRecord};
use crate::engine::Actor;
use crate::time::Timestamp;

/// Most subscriptions a cluster holds.
pub const SUBSCRIPTIONS_MAX: usize = 64;
/// Longest subscription or secret name, in bytes.
pub const SUBSCRIPTION_NAME_MAX: usize = 64;
/// Longest target URL, in bytes.
pub const SUBSCRIPTION_URL_MAX: usize = 2048;
/// Most entries in each list of a filter (workflows, kinds, events).
pub const FILTER_ENTRIES_MAX: usize = 32;
/// Longest pause reason or last error kept, in bytes (longer ones are cut).
pub const SUBSCRIPTION_ERROR_MAX: usize = 512;

/// The kinds a filter names, each a group of audit record kinds.
pub const RECORD_KINDS: [&str; 13] = [
    "created",
    "transition",
    "event_ignored",
    "timer",
    "sla_warning",
    "sla_breach",
    "task",
    "incident",
    "migration",
    "redacted",
    "definition",
    "subscription",
    "schedule",
];

/// The filter kind an audit record kind belongs to (one of [`RECORD_KINDS`]).
pub fn kind_of(kind: &AuditKind) -> &'static str {
    match kind {
        AuditKind::Created => "created",
        AuditKind::Transition => "transition",
        AuditKind::EventIgnored => "event_ignored",
        AuditKind::TimerFired => "timer",
        AuditKind::SlaWarning => "sla_warning",
        AuditKind::SlaBreach => "sla_breach",
        AuditKind::TaskLeased
        | AuditKind::TaskHeartbeat
        | AuditKind::TaskCompleted
        | AuditKind::TaskFailed
        | AuditKind::TaskRetryDue
        | AuditKind::TaskReleased => "task",
        AuditKind::TaskExhausted | AuditKind::IncidentResolved => "incident",
        AuditKind::Migration => "migration",
        AuditKind::Redacted => "redacted",
        AuditKind::DefinitionApplied => "definition",
        AuditKind::SubscriptionChanged => "subscription",
        AuditKind::ScheduleChanged => "schedule",
    }
}

/// Which records a subscription is sent. An empty list matches everything; the lists are
/// combined with "and": a record of a listed workflow, of a listed kind, that emitted a
/// listed event.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    pub workflows: Vec<String>,
    /// Names from [`RECORD_KINDS`].
    pub kinds: Vec<String>,
    /// `emit` event names (e.g. `incident.page_secondary`): only records whose change
    /// emitted one of them.
    pub events: Vec<String>,
}

impl Filter {
    /// Whether `record`, which emitted `emitted`, is sent.
    pub fn matches(&self, record: &AuditRecord, emitted: &[String]) -> bool {
        (self.workflows.is_empty() || self.workflows.contains(&record.workflow))
            && (self.kinds.is_empty() || self.kinds.iter().any(|k| k == kind_of(&record.kind)))
            && (self.events.is_empty() || self.events.iter().any(|e| emitted.contains(e)))
    }

    /// Checks the lists: bounded, and every kind known.
    pub fn check(&self) -> Result<(), String> {
        for (what, list) in [
            ("workflows", &self.workflows),
            ("kinds", &self.kinds),
            ("events", &self.events),
        ] {
            if list.len() > FILTER_ENTRIES_MAX {
                return Err(format!(
                    "the filter lists {} {what}, more than FILTER_ENTRIES_MAX ({FILTER_ENTRIES_MAX}); split it into several subscriptions",
                    list.len()
                ));
            }
            if let Some(bad) = list.iter().find(|e| e.is_empty() || e.len() > 256) {
                return Err(format!(
                    "filter {what} entry `{bad}` must be 1 to 256 bytes"
                ));
            }
        }
        if let Some(bad) = self
            .kinds
            .iter()
            .find(|k| !RECORD_KINDS.contains(&k.as_str()))
        {
            return Err(format!(
                "unknown record kind `{bad}`; kinds are {}",
                RECORD_KINDS.join(", ")
            ));
        }
        Ok(())
    }
}

/// Why a subscription is not being delivered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Paused {
    pub at: Timestamp,
    /// The operator who paused it, or `system:webhooks` when delivery gave up.
    pub by: String,
    pub reason: String,
}

/// A subscription as replicated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    pub name: String,
    pub url: String,
    pub filter: Filter,
    /// The name of the signing secret each node reads from its webhook settings.
    pub secret: String,
    /// The last global audit sequence handled (delivered, or not matched).
    pub cursor: u64,
    pub paused: Option<Paused>,
    /// The last delivery error, kept until a delivery succeeds.
    pub last_error: Option<String>,
    pub created_by: String,
    pub created_at: Timestamp,
    /// Which life of the subscription this is: the cluster time (micros) of its create, or of
    /// its last resume from a pause. Delivery progress names the generation it was made in,
    /// and progress of an older one (a task of a deleted namesake, or from before a pause)
    /// changes nothing.
    pub generation: i64,
}

/// The audit record of a change to a subscription: `change` is `create`, `pause`, `resume` or
/// `delete` (in `transition`), by `actor`; the note names the subscription, its target and
/// filter, and the reason of a pause. Not tied to an instance.
pub fn changed(change: &str, s: &Subscription, actor: &Actor, at: Timestamp) -> AuditRecord {
    let f = &s.filter;
    let mut note = format!(
        "subscription {} to {} (workflows [{}], kinds [{}], events [{}], secret {}, cursor {})",
        s.name,
        s.url,
        f.workflows.join(", "),
        f.kinds.join(", "),
        f.events.join(", "),
        s.secret,
        s.cursor
    );
    if let Some(p) = &s.paused {
        note.push_str(&format!(": {}", p.reason));
    }
    AuditRecord {
        kind: AuditKind::SubscriptionChanged,
        workflow: String::new(),
        instance_id: String::new(),
        definition_version: String::new(),
        transition: Some(change.to_string()),
        from: None,
        to: None,
        actor: actor.record(),
        at,
        instance_version: 0,
        payload_digest: None,
        predicates: Vec::new(),
        timer: None,
        task_id: None,
        sla: None,
        note: Some(note),
    }
}

/// Checks a subscription's or a secret's name: 1 to 64 bytes of `a-z`, `0-9`, `-`, `_`, `.`.
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= SUBSCRIPTION_NAME_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} `{name}` must be 1 to {SUBSCRIPTION_NAME_MAX} characters of a-z, 0-9, `-`, `_` and `.`"
        ))
    }
}

/// Checks a target URL's shape: `http://` or `https://`, a host, no credentials, bounded.
/// (Whether a node may connect to it is each node's allow-list, checked at connect time.)
pub fn check_url(url: &str) -> Result<(), String> {
    if url.len() > SUBSCRIPTION_URL_MAX {
        return Err(format!(
            "the URL is {} bytes, more than SUBSCRIPTION_URL_MAX ({SUBSCRIPTION_URL_MAX})",
            url.len()
        ));
    }
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| format!("URL `{url}` must start with https:// or http://"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return Err(format!(
            "URL `{url}` carries credentials; put none in the URL (requests are signed with the subscription's secret)"
        ));
    }
    if authority.is_empty() || authority.starts_with(':') {
        return Err(format!("URL `{url}` has no host"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "URL `{url}` contains whitespace or control characters"
        ));
    }
    Ok(())
}

/// Cuts an error or reason to [`SUBSCRIPTION_ERROR_MAX`] bytes, on a character boundary.
pub fn bounded_error(text: &str) -> String {
    if text.len() <= SUBSCRIPTION_ERROR_MAX {
        return text.to_string();
    }
    let mut end = SUBSCRIPTION_ERROR_MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::ActorRecord;

    fn record(workflow: &str, kind: AuditKind) -> AuditRecord {
        AuditRecord {
            kind,
            workflow: workflow.into(),
            instance_id: "i-1".into(),
            definition_version: "v1".into(),
            transition: None,
            from: None,
            to: None,
            actor: ActorRecord {
                id: "a".into(),
                kind: "human".into(),
                roles: vec![],
                authn: "dev".into(),
            },
            at: Timestamp::from_micros(0),
            instance_version: 1,
            payload_digest: None,
            predicates: vec![],
            timer: None,
            task_id: None,
            sla: None,
            note: None,
        }
    }

    #[test]
    fn an_empty_filter_matches_everything_and_lists_combine_with_and() {
        let all = Filter::default();
        assert!(all.matches(&record("po", AuditKind::Created), &[]));
        let f = Filter {
            workflows: vec!["incident".into()],
            kinds: vec!["transition".into(), "sla_breach".into()],
            events: vec![],
        };
        assert!(f.matches(&record("incident", AuditKind::Transition), &[]));
        assert!(f.matches(&record("incident", AuditKind::SlaBreach), &[]));
        assert!(!f.matches(&record("incident", AuditKind::TaskLeased), &[]));
        assert!(!f.matches(&record("po", AuditKind::Transition), &[]));
        let pages = Filter {
            events: vec!["incident.page_secondary".into()],
            ..Filter::default()
        };
        let r = record("incident", AuditKind::Transition);
        assert!(!pages.matches(&r, &[]));
        assert!(!pages.matches(&r, &["incident.page_manager".into()]));
        assert!(pages.matches(&r, &["incident.page_secondary".into()]));
    }

    #[test]
    fn every_audit_kind_belongs_to_a_listed_kind() {
        use AuditKind::*;
        for k in [
            Created,
            Transition,
            EventIgnored,
            TimerFired,
            SlaWarning,
            SlaBreach,
            TaskLeased,
            TaskHeartbeat,
            TaskCompleted,
            TaskFailed,
            TaskRetryDue,
            TaskExhausted,
            IncidentResolved,
            DefinitionApplied,
            Migration,
            TaskReleased,
            Redacted,
            SubscriptionChanged,
            ScheduleChanged,
        ] {
            assert!(RECORD_KINDS.contains(&kind_of(&k)), "{k:?}");
        }
    }

    #[test]
    fn bad_names_urls_and_filters_are_refused_with_the_reason() {
        assert!(check_name("subscription", "pager-1").is_ok());
        let e = check_name("subscription", "Pager 1").unwrap_err();
        assert!(e.contains("a-z"), "{e}");
        assert!(check_url("https://hooks.example/x?y=1").is_ok());
        assert!(check_url("http://127.0.0.1:8080/").is_ok());
        assert!(check_url("ftp://x").unwrap_err().contains("https://"));
        assert!(
            check_url("https://u:p@host/")
                .unwrap_err()
                .contains("credentials")
        );
        assert!(check_url("http:///path").unwrap_err().contains("no host"));
        let e = Filter {
            kinds: vec!["breach".into()],
            ..Filter::default()
        }
        .check()
        .unwrap_err();
        assert!(e.contains("sla_breach"), "{e}");
        let long = "é".repeat(SUBSCRIPTION_ERROR_MAX);
        assert!(bounded_error(&long).len() <= SUBSCRIPTION_ERROR_MAX + "…".len());
    }
}
