//! Prometheus metrics, served as text by the admin server.
//!
//! Label sets are small and fixed (`&'static str`), so recording a connection costs a few atomic
//! operations and no allocation after the first time a label set is seen.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

pub use crate::reason::Direction;

pub const INBOUND: Direction = Direction::Inbound;
pub const OUTBOUND: Direction = Direction::Outbound;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirLabels {
    pub direction: &'static str,
}

impl DirLabels {
    pub fn of(direction: Direction) -> Self {
        DirLabels {
            direction: direction.label(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnLabels {
    pub direction: &'static str,
    /// `mtls` or `plain`.
    pub tls: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub direction: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub direction: &'static str,
    /// `ok` (both sides closed cleanly) or `error` (a reset or I/O error ended it).
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ByteLabels {
    pub direction: &'static str,
    /// `sent` (from the side that connected) or `received` (towards it).
    pub flow: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub port: String,
    pub decision: &'static str,
    pub reason: &'static str,
}

pub struct Metrics {
    pub registry: Registry,
    pub opened: Family<ConnLabels, Counter>,
    pub active: Family<DirLabels, Gauge>,
    pub closed: Family<OutcomeLabels, Counter>,
    pub refused: Family<ReasonLabels, Counter>,
    pub handshake_failures: Family<ReasonLabels, Counter>,
    pub policy_denials: Family<ReasonLabels, Counter>,
    pub bytes: Family<ByteLabels, Counter>,
    pub handshake_seconds: Family<DirLabels, Histogram>,
    pub cert_expiry_seconds: Gauge,
    pub rotations: Family<ResultLabels, Counter>,
    pub auto_fallbacks: Counter,
    pub bulk_destinations: Counter,
    pub http_requests: Family<HttpLabels, Counter>,
    pub mux_connections: Family<DirLabels, Counter>,
    pub mux_streams: Family<DirLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("meshlet");
        let opened = Family::<ConnLabels, Counter>::default();
        let active = Family::<DirLabels, Gauge>::default();
        let closed = Family::<OutcomeLabels, Counter>::default();
        let refused = Family::<ReasonLabels, Counter>::default();
        let handshake_failures = Family::<ReasonLabels, Counter>::default();
        let policy_denials = Family::<ReasonLabels, Counter>::default();
        let bytes = Family::<ByteLabels, Counter>::default();
        let handshake_seconds = Family::<DirLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.0002, 2.0, 14))) as fn() -> Histogram,
        );
        let cert_expiry_seconds = Gauge::default();
        let rotations = Family::<ResultLabels, Counter>::default();
        let auto_fallbacks = Counter::default();
        let bulk_destinations = Counter::default();
        let http_requests = Family::<HttpLabels, Counter>::default();
        let mux_connections = Family::<DirLabels, Counter>::default();
        let mux_streams = Family::<DirLabels, Counter>::default();
        registry.register(
            "connections_opened",
            "Connections accepted, by direction and whether mTLS was used",
            opened.clone(),
        );
        registry.register(
            "connections_active",
            "Connections open now, by direction",
            active.clone(),
        );
        registry.register(
            "connections_closed",
            "Connections closed after being proxied, by direction and outcome",
            closed.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections refused, by direction and reason",
            refused.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed, by direction and reason",
            handshake_failures.clone(),
        );
        registry.register(
            "policy_denials",
            "Connections denied by the authorization policy, by direction and reason",
            policy_denials.clone(),
        );
        registry.register(
            "bytes",
            "Bytes proxied, by direction and flow (sent: from the connecting side)",
            bytes.clone(),
        );
        registry.register(
            "tls_handshake_duration_seconds",
            "Duration of successful TLS handshakes",
            handshake_seconds.clone(),
        );
        registry.register(
            "certificate_expiry_seconds",
            "Seconds until the current SVID expires",
            cert_expiry_seconds.clone(),
        );
        registry.register(
            "identity_rotations",
            "Identity updates: applied, refused, or the source unavailable (issuer unreachable)",
            rotations.clone(),
        );
        registry.register(
            "outbound_auto_fallbacks",
            "Outbound auto connections that fell back to plaintext",
            auto_fallbacks.clone(),
        );
        registry.register(
            "outbound_bulk_destinations",
            "Destinations marked as carrying bulk transfers (their connections skip the pool)",
            bulk_destinations.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests on policy ports, by port and decision",
            http_requests.clone(),
        );
        registry.register(
            "pooled_connections",
            "Pooled mTLS connections opened between proxies, by direction",
            mux_connections.clone(),
        );
        registry.register(
            "pooled_streams",
            "App connections carried as streams over pooled connections, by direction",
            mux_streams.clone(),
        );
        Metrics {
            registry,
            opened,
            active,
            closed,
            refused,
            handshake_failures,
            policy_denials,
            bytes,
            handshake_seconds,
            cert_expiry_seconds,
            rotations,
            auto_fallbacks,
            bulk_destinations,
            http_requests,
            mux_connections,
            mux_streams,
        }
    }

    /// Counts a connection as active until the guard is dropped.
    pub fn track(&self, direction: Direction) -> ActiveGuard {
        let gauge = self.active.get_or_create(&DirLabels::of(direction)).clone();
        gauge.inc();
        ActiveGuard(gauge)
    }

    /// Counts an identity update that was applied or refused, or a source that could not be
    /// asked (`identity_rotations_total`).
    pub fn rotation(&self, update: meshlet_identity::rotation::Update) {
        use meshlet_identity::rotation::Update;
        let result = match update {
            Update::Applied => "applied",
            Update::Refused => "refused",
            Update::Unavailable => "unavailable",
            Update::Unchanged => return,
        };
        self.rotations.get_or_create(&ResultLabels { result }).inc();
    }

    pub fn refused(&self, direction: Direction, reason: &'static str) {
        self.refused
            .get_or_create(&ReasonLabels {
                direction: direction.label(),
                reason,
            })
            .inc();
    }

    pub fn policy_denied(&self, direction: Direction, reason: &'static str) {
        self.policy_denials
            .get_or_create(&ReasonLabels {
                direction: direction.label(),
                reason,
            })
            .inc();
    }

    pub fn handshake_failed(&self, direction: Direction, reason: &'static str) {
        self.handshake_failures
            .get_or_create(&ReasonLabels {
                direction: direction.label(),
                reason,
            })
            .inc();
    }

    pub fn opened(&self, direction: Direction, tls: &'static str) {
        self.opened
            .get_or_create(&ConnLabels {
                direction: direction.label(),
                tls,
            })
            .inc();
    }

    pub fn closed(&self, direction: Direction, outcome: &'static str, sent: u64, received: u64) {
        self.closed
            .get_or_create(&OutcomeLabels {
                direction: direction.label(),
                outcome,
            })
            .inc();
        self.bytes
            .get_or_create(&ByteLabels {
                direction: direction.label(),
                flow: "sent",
            })
            .inc_by(sent);
        self.bytes
            .get_or_create(&ByteLabels {
                direction: direction.label(),
                flow: "received",
            })
            .inc_by(received);
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Decrements the active-connections gauge on drop.
pub struct ActiveGuard(Gauge);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
