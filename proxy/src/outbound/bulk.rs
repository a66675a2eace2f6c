//! The adaptive part of the pooled transport: destinations that carry bulk transfers get
//! mTLS connections of their own.
//!
//! A stream of the pooled connection costs copies per chunk that a connection of its own does
//! not (HTTP/2 framing, flow control, hyper's upgrade buffers): measured, a long transfer loses
//! about a third of its throughput on it, while short connections gain the most from it (no
//! handshake). So a connection that ran at least [`MIN_DURATION`] at an average of at least
//! `outbound.bulk_rate` bytes per second marks its destination (address and port) for
//! [`REMEMBER`]; while marked, new connections to it are dialled on their own. Short and
//! chatty connections (requests, keep-alive clients) stay pooled: their average rate is far
//! below a bulk transfer's.

use std::net::SocketAddr;
use std::time::Duration;

use crate::expiring::ExpiringMap;

/// A connection shorter than this never marks its destination, however fast.
pub const MIN_DURATION: Duration = Duration::from_secs(1);
/// How long a destination stays marked after its last bulk connection.
pub const REMEMBER: Duration = Duration::from_secs(600);
/// Marked destinations kept at most; beyond it the oldest mark is dropped.
const MAX_MARKED: usize = 4096;

pub struct BulkRule {
    /// Bytes per second; 0 turns the rule off.
    rate: u64,
    marked: ExpiringMap<SocketAddr>,
}

impl BulkRule {
    pub fn new(rate: u64) -> Self {
        BulkRule {
            rate,
            marked: ExpiringMap::new(MAX_MARKED),
        }
    }

    /// Whether new connections to `dst` should get an mTLS connection of their own.
    pub fn is_bulk(&self, dst: SocketAddr) -> bool {
        if self.rate == 0 {
            return false;
        }
        self.marked.get(dst).is_some()
    }

    /// Records a finished connection to `dst`; true when it marks the destination afresh.
    pub fn observe(&self, dst: SocketAddr, bytes: u64, lasted: Duration) -> bool {
        if self.rate == 0 || lasted < MIN_DURATION {
            return false;
        }
        if (bytes as f64) < self.rate as f64 * lasted.as_secs_f64() {
            return false;
        }
        self.marked.insert(dst, (), REMEMBER)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn dst(port: u16) -> SocketAddr {
        SocketAddr::from(([198, 18, 0, 2], port))
    }

    #[test]
    fn a_fast_long_connection_marks_its_destination_and_a_chatty_one_does_not() {
        let rule = BulkRule::new(64 * MIB);
        // keep-alive HTTP: 12 MB over 10 s is 1.2 MB/s
        assert!(!rule.observe(dst(8080), 12 * MIB, Duration::from_secs(10)));
        assert!(!rule.is_bulk(dst(8080)));
        // a fast but short connection
        assert!(!rule.observe(dst(5201), 50 * MIB, Duration::from_millis(300)));
        // a transfer at 700 MB/s for 10 s
        assert!(rule.observe(dst(5201), 7000 * MIB, Duration::from_secs(10)));
        assert!(rule.is_bulk(dst(5201)));
        assert!(
            !rule.observe(dst(5201), 7000 * MIB, Duration::from_secs(10)),
            "already marked"
        );
        assert!(!rule.is_bulk(dst(5202)), "per address and port");
    }

    #[test]
    fn rate_zero_turns_the_rule_off_and_the_marks_are_bounded() {
        let off = BulkRule::new(0);
        assert!(!off.observe(dst(1), u64::MAX, Duration::from_secs(2)));
        assert!(!off.is_bulk(dst(1)));
        let rule = BulkRule::new(1);
        for port in 1..=(MAX_MARKED as u16 + 10) {
            rule.observe(dst(port), 10, Duration::from_secs(2));
        }
        assert!(rule.marked.len() <= MAX_MARKED);
    }
}
