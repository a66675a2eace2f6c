//! One place ends a refused connection, stream or request: the reason, the counters, the one
//! log line.
//!
//! Handlers return `Result<_, Refusal>`; whatever refused (an admission rule, a TLS handshake,
//! policy, the peer), the refusal is counted under its reason and logged once with the peer,
//! the destination and the caller's identity when known. A handshake failure is counted as one
//! only when it is one (`Refusal::handshake`); a policy denial is one when its reason is. A
//! refused HTTP request is counted with the port's requests, not as a refused connection: its
//! connection stays usable.

use std::net::SocketAddr;

use meshlet_identity::SpiffeId;
use tracing::warn;

use crate::metrics::{HttpLabels, Metrics};
use crate::reason::{Direction, Reason};

/// What was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Connection,
    /// A stream of a pooled connection.
    Stream,
    /// One HTTP request on a port with HTTP rules.
    Request,
}

impl Refused {
    fn noun(self) -> &'static str {
        match self {
            Refused::Connection => "connection",
            Refused::Stream => "stream",
            Refused::Request => "request",
        }
    }
}

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
    pub reason: Reason,
    pub detail: String,
    kind: Kind,
    caller: Option<String>,
    dst: Option<SocketAddr>,
}

impl Refusal {
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Refusal {
            kind: match reason {
                Reason::Policy(_) => Kind::Policy,
                _ => Kind::Other,
            },
            reason,
            detail: detail.into(),
            caller: None,
            dst: None,
        }
    }

    pub fn handshake(reason: Reason, detail: impl Into<String>) -> Self {
        Refusal {
            kind: Kind::Handshake,
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

    /// Counts and logs the refusal. `port` labels a refused request (the port it was sent to).
    pub fn record(self, metrics: &Metrics, direction: Direction, what: Refused, peer: SocketAddr) {
        let reason = self.reason.label();
        match what {
            Refused::Request => {
                let port = self.dst.map_or(0, |d| d.port());
                metrics
                    .http_requests
                    .get_or_create(&HttpLabels {
                        port: port.to_string(),
                        decision: "denied",
                        reason,
                    })
                    .inc();
            }
            Refused::Connection | Refused::Stream => {
                metrics.refused(direction, reason);
                match self.kind {
                    Kind::Handshake => metrics.handshake_failed(direction, reason),
                    Kind::Policy => metrics.policy_denied(direction, reason),
                    Kind::Other => {}
                }
            }
        }
        warn!(
            direction = direction.label(),
            %peer,
            dst = ?self.dst,
            identity = self.caller.as_deref().unwrap_or("-"),
            reason,
            "{} refused: {}",
            what.noun(),
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
    fn a_refusal_is_counted_once_under_its_reason_and_only_its_kind_and_a_request_as_a_request() {
        let m = Metrics::new();
        let peer = "198.18.0.1:1000".parse().unwrap();

        let out = Direction::Outbound;
        Refusal::new(Reason::StreamRefused, "the peer said no").record(
            &m,
            out,
            Refused::Connection,
            peer,
        );
        let unknown_issuer = Reason::certificate(meshlet_identity::CertReason::UnknownIssuer);
        Refusal::handshake(unknown_issuer, "x").record(&m, out, Refused::Connection, peer);
        let denied = Reason::Policy(crate::reason::Denied::NoMatchingRule);
        Refusal::new(denied, "y").record(&m, Direction::Inbound, Refused::Stream, peer);
        let request = Refusal::new(Reason::UnsafePath, "z").at("198.18.0.2:8080".parse().unwrap());
        request.record(&m, Direction::Inbound, Refused::Request, peer);

        let refused =
            r#"meshlet_connections_refused_total{direction="outbound",reason="stream_refused"}"#;
        assert_eq!(count(&m, refused), 1.0);
        let no_handshake =
            r#"meshlet_tls_handshake_failures_total{direction="outbound",reason="stream_refused"}"#;
        assert_eq!(count(&m, no_handshake), 0.0);
        let handshake =
            r#"meshlet_tls_handshake_failures_total{direction="outbound",reason="unknown_issuer"}"#;
        assert_eq!(count(&m, handshake), 1.0);
        let denied =
            r#"meshlet_policy_denials_total{direction="inbound",reason="no_matching_rule"}"#;
        assert_eq!(count(&m, denied), 1.0);
        let request =
            r#"meshlet_http_requests_total{port="8080",decision="denied",reason="unsafe_path"}"#;
        assert_eq!(count(&m, request), 1.0);
        let not_a_connection =
            r#"meshlet_connections_refused_total{direction="inbound",reason="unsafe_path"}"#;
        assert_eq!(count(&m, not_a_connection), 0.0);
    }
}
