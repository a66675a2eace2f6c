//! Why a certificate or a TLS handshake was refused, as types. Code decides on these variants;
//! the label (`label()`) is only for metrics and logs, and stays as the README documents it.

/// Why a peer's certificate (or our own, at load) is not a valid X.509-SVID for us.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CertReason {
    /// It cannot be parsed, or rustls refused it for a reason of its own.
    BadCertificate,
    /// No, several or an invalid URI SAN, or a SPIFFE ID without a path.
    BadSpiffeId,
    /// A certificate after the leaf is not a signing CA, or no chain could be built.
    BadChain,
    CaAsLeaf,
    BadKeyUsage,
    WrongTrustDomain,
    Expired,
    NotYetValid,
    MissingEku,
    UnknownIssuer,
    BadSignature,
}

impl CertReason {
    pub fn label(self) -> &'static str {
        match self {
            CertReason::BadCertificate => "bad_certificate",
            CertReason::BadSpiffeId => "bad_spiffe_id",
            CertReason::BadChain => "bad_chain",
            CertReason::CaAsLeaf => "ca_as_leaf",
            CertReason::BadKeyUsage => "bad_key_usage",
            CertReason::WrongTrustDomain => "wrong_trust_domain",
            CertReason::Expired => "expired",
            CertReason::NotYetValid => "not_yet_valid",
            CertReason::MissingEku => "missing_eku",
            CertReason::UnknownIssuer => "unknown_issuer",
            CertReason::BadSignature => "bad_signature",
        }
    }
}

/// What a failed handshake's rustls error says happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TlsFailure {
    /// The peer's certificate was refused.
    Certificate(CertReason),
    /// The peer sent an alert (it refused us).
    RejectedByPeer,
    /// No common application protocol: not a meshlet peer.
    NoAlpn,
    /// No common TLS version or cipher suite.
    Incompatible,
    /// What the peer sent is not TLS.
    NotTls,
    /// A client without a certificate.
    NoClientCertificate,
    Other,
}

impl TlsFailure {
    pub fn label(self) -> &'static str {
        match self {
            TlsFailure::Certificate(c) => c.label(),
            TlsFailure::RejectedByPeer => "rejected_by_peer",
            TlsFailure::NoAlpn => "no_alpn",
            TlsFailure::Incompatible => "incompatible",
            TlsFailure::NotTls => "not_tls",
            TlsFailure::NoClientCertificate => "no_client_certificate",
            TlsFailure::Other => "other",
        }
    }
}
