//! Admission rule: in `strict` mode only meshlet mTLS is accepted; plaintext and foreign TLS
//! are refused before anything reaches the app. In `permissive` mode they pass to policy as
//! unauthenticated callers.

use crate::config::InboundMode;
use crate::detect::Protocol;
use crate::refusal::Refusal;

/// `protocol` is what the caller's first bytes showed (never `Mesh` or `Locate` here).
pub fn check(mode: InboundMode, protocol: Protocol) -> Result<(), Refusal> {
    if mode == InboundMode::Permissive {
        return Ok(());
    }
    let (reason, what) = match protocol {
        Protocol::ForeignTls => ("foreign_tls", "TLS without meshlet's ALPN"),
        Protocol::Incomplete => ("plaintext", "nothing within the first-byte timeout"),
        _ => ("plaintext", "plaintext"),
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
            "plaintext"
        );
        assert_eq!(
            check(InboundMode::Strict, Protocol::ForeignTls)
                .unwrap_err()
                .reason,
            "foreign_tls"
        );
        assert_eq!(
            check(InboundMode::Strict, Protocol::Incomplete)
                .unwrap_err()
                .reason,
            "plaintext"
        );
        assert!(check(InboundMode::Permissive, Protocol::Plain).is_ok());
        assert!(check(InboundMode::Permissive, Protocol::ForeignTls).is_ok());
    }
}
