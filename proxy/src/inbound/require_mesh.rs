//! Admission rule: in `strict` mode only meshlet mTLS is accepted; plaintext and foreign TLS
//! are refused before anything reaches the app. In `permissive` mode they pass to policy as
//! unauthenticated callers.

use super::detect::Protocol;
use crate::config::InboundMode;
use crate::reason::Reason;
use crate::refusal::Refusal;

/// `protocol` is what the caller's first bytes showed (never `Mesh` or `Locate` here).
pub fn check(mode: InboundMode, protocol: Protocol) -> Result<(), Refusal> {
    if mode == InboundMode::Permissive {
        return Ok(());
    }
    let (reason, what) = match protocol {
        Protocol::ForeignTls => (Reason::ForeignTls, "TLS without meshlet's ALPN"),
        Protocol::Incomplete => (Reason::Plaintext, "nothing within the first-byte timeout"),
        _ => (Reason::Plaintext, "plaintext"),
    };
    Err(Refusal::new(
        reason,
        format!("{what} in strict mode (only meshlet mTLS is accepted)"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_mode_refuses_plaintext_and_foreign_tls_and_permissive_lets_them_through() {
        assert_eq!(
            check(InboundMode::Strict, Protocol::Plain)
                .unwrap_err()
                .reason,
            Reason::Plaintext
        );
        assert_eq!(
            check(InboundMode::Strict, Protocol::ForeignTls)
                .unwrap_err()
                .reason,
            Reason::ForeignTls
        );
        assert_eq!(
            check(InboundMode::Strict, Protocol::Incomplete)
                .unwrap_err()
                .reason,
            Reason::Plaintext
        );
        assert!(check(InboundMode::Permissive, Protocol::Plain).is_ok());
        assert!(check(InboundMode::Permissive, Protocol::ForeignTls).is_ok());
    }
}
