//! Chaos tests for Lockstep: real `lockstepd` clusters behind fault-injecting proxies, a
//! recorded workload, and one checker per invariant of DESIGN §3–§6. See README.md.

pub mod checks;
pub mod cluster;
pub mod history;
pub mod mutations;
pub mod nemesis;
pub mod proxy;
pub mod report;
pub mod run;
pub mod schedule;
pub mod wgl;
pub mod workflow;
pub mod workload;

/// Parses `20s`, `1500ms`, `2m` or a plain number of seconds into milliseconds.
pub fn parse_duration_ms(text: &str) -> anyhow::Result<u64> {
    let t = text.trim();
    let (num, mult) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1_000)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60_000)
    } else {
        (t, 1_000)
    };
    num.trim()
        .parse::<u64>()
        .map(|n| n * mult)
        .map_err(|_| anyhow::anyhow!("`{text}` is not a duration like 20s, 1500ms or 2m"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations() {
        assert_eq!(super::parse_duration_ms("20s").unwrap(), 20_000);
        assert_eq!(super::parse_duration_ms("1500ms").unwrap(), 1_500);
        assert_eq!(super::parse_duration_ms("2m").unwrap(), 120_000);
        assert_eq!(super::parse_duration_ms("7").unwrap(), 7_000);
        assert!(super::parse_duration_ms("soon").is_err());
    }
}
