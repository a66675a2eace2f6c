//! One place ends a refused connection or stream: the reason, the counters, the one log line.
//!
//! Handlers return `Result<_, Refusal>`; whatever refused (an admission rule, a TLS handshake,
//! policy, the peer), the refusal is counted under its reason and logged once with the peer,
//! the destination and the caller's identity when known. A handshake failure is counted as one
//! only when it is one (`Refusal::handshake`), a policy denial likewise.

use std::net::SocketAddr;

use meshlet_identity::SpiffeId;
use tracing::warn;

use crate::metrics::Metrics;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// An admission rule or a failure that is neither of the two below.
    Other,
    /// The TLS handshake failed (also counted in `tls_handshake_failures_total`).
    Handshake,
    /// Policy denied the caller (also counted in `policy_denials_total`).
    Policy,
}

/// Why a connection (or a pooled stream) was refused.
#[derive(Debug)]
pub struct Refusal {
    pub reason: &'static str,
    pub detail: String,
    kind: Kind,
    caller: Option<String>,
    dst: Option<SocketAddr>,
}

impl Refusal {
    pub fn new(reason: &'static str, detail: impl Into<String>) -> Self {
        Refusal {
            reason,
            detail: detail.into(),
            kind: Kind::Other,
            caller: None,
            dst: None,
        }
    }

    pub fn handshake(reason: &'static str, detail: impl Into<String>) -> Self {
        Refusal {
            kind: Kind::Handshake,
            ..Refusal::new(reason, detail)
        }
    }

    pub fn policy(reason: &'static str, detail: impl Into<String>) -> Self {
        Refusal {
            kind: Kind::Policy,
            ..Refusal::new(reason, detail)
        }
    }

    /// The authenticated caller, for the log line.
    pub fn by(mut self, caller: &SpiffeId) -> Self {
        self.caller = Some(caller.to_string());
        self
    }

    /// The destination the caller asked for, for the log line.
    pub fn at(mut self, dst: SocketAddr) -> Self {
        self.dst = Some(dst);
        self
    }

    pub fn is_handshake_failure(&self) -> bool {
        self.kind == Kind::Handshake
    }

    /// Counts and logs the refusal of a connection (`what` = "connection") or a pooled stream.
    pub fn record(
        self,
        metrics: &Metrics,
        direction: &'static str,
        what: &'static str,
        peer: SocketAddr,
    ) {
        metrics.refused(direction, self.reason);
        match self.kind {
            Kind::Handshake => metrics.handshake_failed(direction, self.reason),
            Kind::Policy => metrics.policy_denied(direction, self.reason),
            Kind::Other => {}
        }
        warn!(
            direction,
            %peer,
            dst = ?self.dst,
            identity = self.caller.as_deref().unwrap_or("-"),
            reason = self.reason,
            "{what} refused: {}",
            self.detail
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(m: &Metrics, series: &str) -> f64 {
        m.encode()
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    }

    #[test]
    fn a_refusal_is_counted_once_under_its_reason_and_only_its_kind() {
        let m = Metrics::new();
        let peer = "198.18.0.1:1000".parse().unwrap();

        Refusal::new("stream_refused", "the peer said no").record(
            &m,
            "outbound",
            "connection",
            peer,
        );
        Refusal::handshake("unknown_issuer", "x").record(&m, "outbound", "connection", peer);
        Refusal::policy("not_allowed", "y").record(&m, "inbound", "connection", peer);

        let refused =
            r#"meshlet_connections_refused_total{direction="outbound",reason="stream_refused"}"#;
        assert_eq!(count(&m, refused), 1.0);
        let no_handshake =
            r#"meshlet_tls_handshake_failures_total{direction="outbound",reason="stream_refused"}"#;
        assert_eq!(count(&m, no_handshake), 0.0);
        let handshake =
            r#"meshlet_tls_handshake_failures_total{direction="outbound",reason="unknown_issuer"}"#;
        assert_eq!(count(&m, handshake), 1.0);
        let denied = r#"meshlet_policy_denials_total{direction="inbound",reason="not_allowed"}"#;
        assert_eq!(count(&m, denied), 1.0);
    }
}
