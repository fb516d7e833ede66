//! The workflow the chaos workload drives: small, with a state expiry timer, a task with a
//! short lease and retries, and an SLA, so that every kind of replicated timer is exercised.
//!
//! ```text
//! open ──start──▶ working ──finish (task on_complete)──▶ done
//!  │ expire (3 s, timer)  │ give_up (task exhausted)
//!  ▼                      ▼
//! expired             cancelled ◀──cancel── open | working
//! ```

pub const NAME: &str = "chaos";

/// State expiry of `open`.
pub const EXPIRES_MS: i64 = 3_000;
/// The `work` SLA budget (calendar time in `working`).
pub const SLA_WITHIN_MS: i64 = 2_000;
/// The task queue.
pub const QUEUE: &str = "chaos";
/// A task lease's timeout (`timeout: 2s`): without a heartbeat it expires this long after
/// it was granted.
pub const LEASE_TIMEOUT_MS: i64 = 2_000;

pub const SOURCE: &str = r#"
workflow: chaos
data:
  type: object
  properties:
    op: { type: string }
states:
  open: { initial: true, expires: { after: 3s, transition: expire } }
  working: {}
  done: { terminal: true }
  expired: { terminal: true }
  cancelled: { terminal: true }
slas:
  work:
    start: { enter: working }
    stop: { enter: [done, cancelled] }
    within: 2s
transitions:
  start:
    from: open
    to: working
    allow: "actor.kind == 'human'"
    effects:
      - task:
          queue: chaos
          type: work
          timeout: 2s
          retry: { max_attempts: 4, backoff: fixed, initial: 300ms }
          on_complete: finish
          on_exhausted: give_up
  finish: { from: working, to: done, allow: "actor.kind == 'worker'" }
  cancel: { from: [open, working], to: cancelled, allow: "actor.kind == 'human'" }
  expire: { from: open, to: expired, system: true }
  give_up: { from: working, to: cancelled, system: true }
"#;

/// The states a transition may be taken from.
pub fn from_states(transition: &str) -> &'static [&'static str] {
    match transition {
        "start" | "expire" => &["open"],
        "finish" | "give_up" => &["working"],
        "cancel" => &["open", "working"],
        _ => &[],
    }
}

/// The workflow of the overload bursts (`nemesis::BURST_WRITERS`): instances apart from the
/// checked workload's, one audited write each.
pub const BURST_NAME: &str = "chaos-burst";

pub const BURST_SOURCE: &str = r#"
workflow: chaos-burst
data: { type: object }
states:
  created: { initial: true }
  closed: { terminal: true }
transitions:
  close: { from: created, to: closed, allow: "true" }
"#;

#[cfg(test)]
mod tests {
    #[test]
    fn the_workflow_is_valid_and_matches_the_constants() {
        let checked = lockstep_core::check(
            Some("chaos.yaml"),
            super::SOURCE,
            &lockstep_core::Limits::default(),
        );
        let errors: Vec<String> = checked
            .diagnostics
            .iter()
            .filter(|d| d.severity == lockstep_core::Severity::Error)
            .map(|d| d.to_string())
            .collect();
        assert!(errors.is_empty(), "{errors:?}");
        assert!(checked.compiled.is_some());
        assert!(super::SOURCE.contains("after: 3s") && super::EXPIRES_MS == 3_000);
        assert!(super::SOURCE.contains("within: 2s") && super::SLA_WITHIN_MS == 2_000);
    }
}
