//! Why a connection, a pooled stream or a request was refused, as one type, and the direction
//! it was refused in. Code decides on variants (`auto`'s fallback, a pooled stream's status);
//! `label()` is what metrics and logs show, as the README documents it.

use meshlet_identity::{CertReason, TlsFailure};

/// The side of the proxy a connection came through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn label(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// Why policy denied a caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Denied {
    /// No policy, and the caller is of another trust domain.
    ForeignTrustDomain,
    /// No rule lets this caller call this port.
    NoMatchingRule,
    /// No HTTP rule of the port lets this caller make this request.
    HttpRule,
}

/// Why something was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The connection was not redirected to us (no original destination).
    NoOriginalDst,
    /// The caller closed or sent nothing usable before its first bytes were read.
    NoData,
    /// The destination is one of the proxy's own ports.
    Loop,
    /// The destination is not an address of this pod.
    ForeignTarget,
    /// Plaintext in strict mode.
    Plaintext,
    /// TLS without meshlet's ALPN: in strict mode from a caller, or from a destination that
    /// said by its alert that it cannot speak meshlet.
    ForeignTls,
    /// Bytes that cannot be HTTP on a port with HTTP rules.
    NotHttp,
    /// A pooled stream request that is not a CONNECT to an ip:port.
    BadStream,
    /// A located stream whose token this proxy did not give.
    NotLocated,
    /// `inbound.max_connections` reached.
    Overloaded,
    AppUnreachable,
    Policy(Denied),
    /// An HTTP path that cannot be normalized safely.
    UnsafePath,
    /// An HTTP request whose target cannot be rebuilt.
    BadTarget,
    /// What the handshake's TLS error says.
    Tls(TlsFailure),
    /// The handshake did not finish in time.
    Timeout,
    /// The peer closed during the handshake.
    Eof,
    /// The peer reset the connection during the handshake.
    Reset,
    /// Another I/O error during the handshake.
    Io,
    /// Outbound: the destination could not be connected to.
    ConnectFailed,
    /// The destination completed TLS but is not a meshlet proxy.
    NotMesh,
    /// The destination's identity is not among those pinned for it.
    IdentityMismatch,
    /// The peer proxy did not answer a pooled stream request in time.
    StreamTimeout,
    /// The peer proxy refused a pooled stream.
    StreamRefused,
    /// The pooled connection failed.
    PoolError,
}

impl Reason {
    /// A certificate refused for `why`.
    pub fn certificate(why: CertReason) -> Self {
        Reason::Tls(TlsFailure::Certificate(why))
    }

    pub fn label(self) -> &'static str {
        match self {
            Reason::NoOriginalDst => "no_original_dst",
            Reason::NoData => "no_data",
            Reason::Loop => "loop",
            Reason::ForeignTarget => "foreign_target",
            Reason::Plaintext => "plaintext",
            Reason::ForeignTls => "foreign_tls",
            Reason::NotHttp => "not_http",
            Reason::BadStream => "bad_stream",
            Reason::NotLocated => "not_located",
            Reason::Overloaded => "overloaded",
            Reason::AppUnreachable => "app_unreachable",
            Reason::Policy(Denied::ForeignTrustDomain) => "foreign_trust_domain",
            Reason::Policy(Denied::NoMatchingRule) => "no_matching_rule",
            Reason::Policy(Denied::HttpRule) => "http_rule",
            Reason::UnsafePath => "unsafe_path",
            Reason::BadTarget => "bad_target",
            Reason::Tls(f) => f.label(),
            Reason::Timeout => "timeout",
            Reason::Eof => "eof",
            Reason::Reset => "reset",
            Reason::Io => "io",
            Reason::ConnectFailed => "connect_failed",
            Reason::NotMesh => "not_mesh",
            Reason::IdentityMismatch => "identity_mismatch",
            Reason::StreamTimeout => "stream_timeout",
            Reason::StreamRefused => "stream_refused",
            Reason::PoolError => "pool_error",
        }
    }

    /// A handshake that ended this way was the destination's own answer that it does not speak
    /// meshlet: something that is not TLS, TLS without meshlet's ALPN, or a close or reset.
    /// A timeout proves nothing, and a certificate failure is a meshlet peer we must not trust.
    pub fn says_not_mesh(self) -> bool {
        matches!(
            self,
            Reason::Tls(TlsFailure::NotTls | TlsFailure::NoAlpn)
                | Reason::ForeignTls
                | Reason::Eof
                | Reason::Reset
                | Reason::NotMesh
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_destinations_own_answer_says_it_is_not_mesh() {
        for not_mesh in [
            Reason::Tls(TlsFailure::NotTls),
            Reason::Tls(TlsFailure::NoAlpn),
            Reason::ForeignTls,
            Reason::Eof,
            Reason::Reset,
            Reason::NotMesh,
        ] {
            assert!(not_mesh.says_not_mesh(), "{not_mesh:?}");
        }
        for mesh_or_unknown in [
            Reason::Timeout,
            Reason::Io,
            Reason::Tls(TlsFailure::RejectedByPeer),
            Reason::certificate(CertReason::UnknownIssuer),
            Reason::certificate(CertReason::Expired),
            Reason::IdentityMismatch,
            Reason::StreamTimeout,
        ] {
            assert!(!mesh_or_unknown.says_not_mesh(), "{mesh_or_unknown:?}");
        }
    }
}
