//! Quotas: per-actor and per-role rates for writes and task polls, from the cluster policy.
//!
//! ```toml
//! [quotas.actors.batch-importer]
//! writes_per_second = 50
//! writes_burst = 100
//!
//! [quotas.roles.requester]
//! writes_per_second = 20
//! polls_per_second = 5
//! ```
//!
//! An actor's own quota applies if the policy sets one (for that kind of request), else the
//! most generous quota among its roles', else none. A role's quota is per actor: each actor
//! holding the role has a bucket of its own. Each bucket holds `burst` tokens (default: one
//! second's worth, at least 1) and refills at the rate; a request takes one token or is
//! refused with `RESOURCE_EXHAUSTED` / `QUOTA_EXCEEDED`, naming the quota, with the time until
//! the next token as its retry-after hint.
//!
//! Writes are counted where they are admitted to the log, on the leader (a follower forwards
//! them first), so a write quota holds cluster-wide whichever node the caller reaches. Polls
//! are counted by the node that serves them. Buckets are kept for at most
//! [`QUOTA_BUCKETS_MAX`] (quota, actor) pairs; when full, the buckets idle longest (full ones)
//! are dropped first.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lockstep_core::Actor;
use serde::Deserialize;

/// Most (quota, actor) buckets a node keeps.
pub const QUOTA_BUCKETS_MAX: usize = 100_000;
/// Highest rate a quota may set, per second.
pub const QUOTA_RATE_MAX: f64 = 1_000_000.0;

/// What a quota limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Writes,
    Polls,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Writes => "writes",
            Kind::Polls => "polls",
        }
    }
}

/// One quota table of the policy, as written.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QuotaRule {
    pub writes_per_second: Option<f64>,
    pub writes_burst: Option<u32>,
    pub polls_per_second: Option<f64>,
    pub polls_burst: Option<u32>,
}

/// A rate and burst.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: u32,
}

impl QuotaRule {
    fn rate(&self, kind: Kind) -> Option<Rate> {
        let (rate, burst) = match kind {
            Kind::Writes => (self.writes_per_second, self.writes_burst),
            Kind::Polls => (self.polls_per_second, self.polls_burst),
        };
        rate.map(|per_second| Rate {
            per_second,
            burst: burst.unwrap_or_else(|| per_second.ceil().max(1.0) as u32),
        })
    }

    fn check(&self, name: &str) -> Result<(), QuotaError> {
        let bad = |reason: String| QuotaError {
            quota: name.to_string(),
            reason,
        };
        for (field, rate) in [
            ("writes_per_second", self.writes_per_second),
            ("polls_per_second", self.polls_per_second),
        ] {
            if let Some(r) = rate
                && !(r > 0.0 && r <= QUOTA_RATE_MAX)
            {
                return Err(bad(format!(
                    "{field} = {r} is out of range: give a rate above 0 and at most {QUOTA_RATE_MAX} per second"
                )));
            }
        }
        for (field, burst) in [
            ("writes_burst", self.writes_burst),
            ("polls_burst", self.polls_burst),
        ] {
            if burst == Some(0) {
                return Err(bad(format!(
                    "{field} = 0 would refuse every request: give at least 1 (default: one second's worth)"
                )));
            }
        }
        if self.writes_burst.is_some() && self.writes_per_second.is_none()
            || self.polls_burst.is_some() && self.polls_per_second.is_none()
        {
            return Err(bad(
                "a burst without its rate: set writes_per_second (or polls_per_second) too".into(),
            ));
        }
        Ok(())
    }
}

/// A quota of the cluster policy that cannot be enforced as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("quota {quota}: {reason}")]
pub struct QuotaError {
    /// `actor:ID` or `role:NAME`.
    pub quota: String,
    pub reason: String,
}

/// The `[quotas]` section of the cluster policy.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Quotas {
    #[serde(default)]
    pub actors: BTreeMap<String, QuotaRule>,
    #[serde(default)]
    pub roles: BTreeMap<String, QuotaRule>,
}

impl Quotas {
    pub fn check(&self) -> Result<(), QuotaError> {
        for (id, rule) in &self.actors {
            rule.check(&format!("actor:{id}"))?;
        }
        for (role, rule) in &self.roles {
            rule.check(&format!("role:{role}"))?;
        }
        Ok(())
    }

    /// The quota that applies to `actor` for `kind`: its name (`actor:ID` or `role:NAME`)
    /// and rate.
    pub fn applying(&self, actor: &Actor, kind: Kind) -> Option<(String, Rate)> {
        if let Some(rate) = self.actors.get(&actor.id).and_then(|r| r.rate(kind)) {
            return Some((format!("actor:{}", actor.id), rate));
        }
        actor
            .roles
            .iter()
            .filter_map(|role| {
                let rate = self.roles.get(role)?.rate(kind)?;
                Some((format!("role:{role}"), rate))
            })
            .max_by(|a, b| {
                (a.1.per_second, a.1.burst)
                    .partial_cmp(&(b.1.per_second, b.1.burst))
                    .unwrap_or(std::cmp::Ordering::Equal)
            })
    }
}

/// A refusal: the caller is over its quota.
#[derive(Clone, Debug, PartialEq)]
pub struct OverQuota {
    pub quota: String,
    pub kind: Kind,
    pub rate: Rate,
    pub retry_after: Duration,
}

impl OverQuota {
    pub fn message(&self, actor: &str) -> String {
        format!(
            "actor `{actor}` is over its {} quota {} ({} per second, bursts of {}) and nothing was done; retry after {} ms with the same request id, or ask for a larger quota in the cluster policy",
            self.kind.as_str(),
            self.quota,
            self.rate.per_second,
            self.rate.burst,
            self.retry_after.as_millis().max(1)
        )
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The buckets of one node.
#[derive(Debug, Default)]
pub struct QuotaBuckets {
    buckets: Mutex<HashMap<(String, Kind, String), Bucket>>,
}

impl QuotaBuckets {
    /// Takes one token from the bucket of `actor` under the quota that applies to it, if any.
    pub fn take(&self, quotas: &Quotas, actor: &Actor, kind: Kind) -> Result<(), OverQuota> {
        self.take_at(quotas, actor, kind, Instant::now())
    }

    fn take_at(
        &self,
        quotas: &Quotas,
        actor: &Actor,
        kind: Kind,
        now: Instant,
    ) -> Result<(), OverQuota> {
        let Some((quota, rate)) = quotas.applying(actor, kind) else {
            return Ok(());
        };
        let mut buckets = self.buckets.lock().expect("quota lock");
        if buckets.len() >= QUOTA_BUCKETS_MAX {
            // Full buckets are the same as no bucket: drop them first.
            buckets.retain(|(q, k, _), b| {
                let r = quotas.applying_rate(q, *k);
                r.is_some_and(|r| refill(b, r, now) < f64::from(r.burst))
            });
            if buckets.len() >= QUOTA_BUCKETS_MAX {
                buckets.clear();
            }
        }
        let key = (quota.clone(), kind, actor.id.clone());
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: f64::from(rate.burst),
            at: now,
        });
        bucket.tokens = refill(bucket, rate, now);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let retry_after = Duration::from_secs_f64((1.0 - bucket.tokens) / rate.per_second);
        Err(OverQuota {
            quota,
            kind,
            rate,
            retry_after,
        })
    }
}

impl Quotas {
    /// The rate of the quota named `name` for `kind`, if the policy still has it.
    fn applying_rate(&self, name: &str, kind: Kind) -> Option<Rate> {
        if let Some(id) = name.strip_prefix("actor:") {
            return self.actors.get(id)?.rate(kind);
        }
        self.roles.get(name.strip_prefix("role:")?)?.rate(kind)
    }
}

/// The tokens of `b` at `now`, refilled at `rate` since it was last used.
fn refill(b: &Bucket, rate: Rate, now: Instant) -> f64 {
    let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
    (b.tokens + elapsed * rate.per_second).min(f64::from(rate.burst))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lockstep_core::ActorKind;

    fn quotas(text: &str) -> Quotas {
        let q: Quotas = toml::from_str(text).unwrap();
        q.check().unwrap();
        q
    }

    #[test]
    fn an_actors_own_quota_wins_then_the_most_generous_role() {
        let q = quotas(
            r#"
            [actors.alice]
            writes_per_second = 1
            [roles.bulk]
            writes_per_second = 5
            [roles.big]
            writes_per_second = 50
            polls_per_second = 2
            "#,
        );
        let alice = Actor::new("alice", ActorKind::Human, &["big"]);
        assert_eq!(q.applying(&alice, Kind::Writes).unwrap().0, "actor:alice");
        // Alice's own quota says nothing of polls: her roles' does.
        assert_eq!(q.applying(&alice, Kind::Polls).unwrap().0, "role:big");
        let bob = Actor::new("bob", ActorKind::Human, &["bulk", "big"]);
        let (name, rate) = q.applying(&bob, Kind::Writes).unwrap();
        assert_eq!((name.as_str(), rate.burst), ("role:big", 50));
        let carol = Actor::new("carol", ActorKind::Human, &["other"]);
        assert!(q.applying(&carol, Kind::Writes).is_none());
    }

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let q = quotas("[actors.a]\nwrites_per_second = 2\nwrites_burst = 3\n");
        let a = Actor::new("a", ActorKind::Service, &[]);
        let b = QuotaBuckets::default();
        let t0 = Instant::now();
        for _ in 0..3 {
            b.take_at(&q, &a, Kind::Writes, t0).unwrap();
        }
        let refused = b.take_at(&q, &a, Kind::Writes, t0).unwrap_err();
        assert_eq!(refused.quota, "actor:a");
        assert_eq!(refused.retry_after, Duration::from_millis(500));
        assert!(refused.message("a").contains("actor:a"));
        // Half a second later, one more token.
        let t1 = t0 + Duration::from_millis(500);
        b.take_at(&q, &a, Kind::Writes, t1).unwrap();
        assert!(b.take_at(&q, &a, Kind::Writes, t1).is_err());
        // Polls have no quota here.
        for _ in 0..100 {
            b.take_at(&q, &a, Kind::Polls, t1).unwrap();
        }
    }

    #[test]
    fn each_actor_of_a_role_has_its_own_bucket() {
        let q = quotas("[roles.r]\nwrites_per_second = 1\n");
        let b = QuotaBuckets::default();
        let now = Instant::now();
        let x = Actor::new("x", ActorKind::Human, &["r"]);
        let y = Actor::new("y", ActorKind::Human, &["r"]);
        b.take_at(&q, &x, Kind::Writes, now).unwrap();
        assert!(b.take_at(&q, &x, Kind::Writes, now).is_err());
        b.take_at(&q, &y, Kind::Writes, now).unwrap();
    }

    #[test]
    fn bad_quotas_are_refused_with_what_to_write() {
        for (text, expected) in [
            ("[actors.a]\nwrites_per_second = 0\n", "above 0"),
            (
                "[actors.a]\nwrites_per_second = 1\nwrites_burst = 0\n",
                "at least 1",
            ),
            ("[roles.r]\npolls_burst = 3\n", "a burst without its rate"),
        ] {
            let q: Quotas = toml::from_str(text).unwrap();
            let e = q.check().unwrap_err().to_string();
            assert!(e.contains(expected), "{text}: {e}");
        }
        assert!(toml::from_str::<Quotas>("[actors.a]\nwrites = 1\n").is_err());
    }
}
