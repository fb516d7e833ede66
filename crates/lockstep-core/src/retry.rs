//! Retry policy arithmetic for tasks: fixed or exponential backoff, deterministic jitter, a
//! maximum number of attempts and a maximum total time.

use sha2::{Digest, Sha256};

use crate::definition::{Backoff, Jitter};

/// A compiled retry policy. Durations are in milliseconds.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub backoff: Backoff,
    pub initial_ms: u64,
    pub max_ms: u64,
    pub multiplier: u32,
    pub jitter: Jitter,
    pub max_total_ms: Option<u64>,
}

impl RetryPolicy {
    /// One attempt, no retries: what a task without a `retry` block gets.
    pub fn once() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 1,
            backoff: Backoff::Fixed,
            initial_ms: 0,
            max_ms: 0,
            multiplier: 2,
            jitter: Jitter::None,
            max_total_ms: None,
        }
    }

    /// The delay before attempt `attempt + 1`, after attempt `attempt` (1-based) failed.
    /// The jitter is drawn from a hash of the task id and the attempt, so every replica and
    /// every re-evaluation computes the same delay.
    pub fn delay_ms(&self, task_id: &str, attempt: u32) -> u64 {
        let base = match self.backoff {
            Backoff::Fixed => self.initial_ms,
            Backoff::Exponential => {
                let exponent = attempt.saturating_sub(1).min(63);
                let factor = u64::from(self.multiplier)
                    .checked_pow(exponent)
                    .unwrap_or(u64::MAX);
                self.initial_ms.saturating_mul(factor)
            }
        };
        let capped = if self.max_ms > 0 {
            base.min(self.max_ms)
        } else {
            base
        };
        match self.jitter {
            Jitter::None => capped,
            Jitter::Full => unit_draw(task_id, attempt, capped),
            Jitter::Equal => capped / 2 + unit_draw(task_id, attempt, capped - capped / 2),
        }
    }

    /// Whether another attempt may start after attempt `attempt` failed, given the time spent
    /// since the first attempt began and the delay that would come before it.
    pub fn may_retry(&self, attempt: u32, elapsed_ms: u64, delay_ms: u64) -> bool {
        if attempt >= self.max_attempts {
            return false;
        }
        match self.max_total_ms {
            Some(total) => elapsed_ms.saturating_add(delay_ms) <= total,
            None => true,
        }
    }
}

/// A deterministic draw in `[0, bound]` from the task id and attempt.
fn unit_draw(task_id: &str, attempt: u32, bound: u64) -> u64 {
    if bound == 0 {
        return 0;
    }
    let mut hasher = Sha256::new();
    hasher.update(task_id.as_bytes());
    hasher.update(attempt.to_be_bytes());
    let digest = hasher.finalize();
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(bytes) % (bound + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(backoff: Backoff, jitter: Jitter) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 6,
            backoff,
            initial_ms: 2000,
            max_ms: 300_000,
            multiplier: 2,
            jitter,
            max_total_ms: Some(600_000),
        }
    }

    #[test]
    fn exponential_doubles_and_caps() {
        let p = policy(Backoff::Exponential, Jitter::None);
        let delays: Vec<u64> = (1..=10).map(|a| p.delay_ms("t", a)).collect();
        assert_eq!(
            delays,
            [
                2000, 4000, 8000, 16000, 32000, 64000, 128000, 256000, 300000, 300000
            ]
        );
        assert_eq!(policy(Backoff::Fixed, Jitter::None).delay_ms("t", 5), 2000);
    }

    #[test]
    fn jitter_is_deterministic_and_bounded() {
        let p = policy(Backoff::Exponential, Jitter::Full);
        for attempt in 1..20 {
            let d = p.delay_ms("task-1", attempt);
            assert_eq!(d, p.delay_ms("task-1", attempt));
            assert!(d <= policy(Backoff::Exponential, Jitter::None).delay_ms("task-1", attempt));
        }
        let e = policy(Backoff::Fixed, Jitter::Equal).delay_ms("task-2", 1);
        assert!((1000..=2000).contains(&e));
        assert_ne!(p.delay_ms("task-1", 3), p.delay_ms("task-2", 3));
    }

    #[test]
    fn stops_at_attempts_and_total_time() {
        let p = policy(Backoff::Fixed, Jitter::None);
        assert!(p.may_retry(5, 0, 2000));
        assert!(!p.may_retry(6, 0, 2000));
        assert!(!p.may_retry(1, 599_000, 2000));
    }
}
