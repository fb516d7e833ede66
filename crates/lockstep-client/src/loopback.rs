//! Loopback ports for local clusters (the tests, the chaos harness): a port that is free now
//! and that an outgoing connection cannot take before the node binds it.
//!
//! Asking the kernel for port 0 and releasing it hands out a port from the ephemeral range,
//! which the next outgoing connection of any process may take before the node listens on it
//! ("address already in use"). These ports come from below Linux's default ephemeral range
//! (32768–60999) instead, each at most once per process, starting at a per-process offset so
//! that concurrent processes rarely try the same one.

use std::sync::atomic::{AtomicU32, Ordering};

/// The ports handed out: `[PORT_LOW, PORT_HIGH)`.
pub const PORT_LOW: u32 = 12_000;
pub const PORT_HIGH: u32 = 32_000;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A loopback TCP port that was free when this returned.
pub fn free_port() -> std::io::Result<u16> {
    let span = PORT_HIGH - PORT_LOW;
    let start = std::process::id().wrapping_mul(2_654_435_761) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(PORT_LOW + (start.wrapping_add(n)) % span).unwrap_or(0);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrNotAvailable,
        format!("no free loopback port in [{PORT_LOW}, {PORT_HIGH})"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_bindable_and_below_the_ephemeral_range() {
        let ports: Vec<u16> = (0..50).map(|_| free_port().unwrap()).collect();
        let distinct: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len());
        for p in ports {
            assert!((PORT_LOW..PORT_HIGH).contains(&u32::from(p)));
            std::net::TcpListener::bind(("127.0.0.1", p)).unwrap();
        }
    }
}
