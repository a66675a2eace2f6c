//! Admission rule: a port with HTTP rules is handled as HTTP for every caller. A plaintext
//! caller of a permissive pod is parsed and checked request by request as the unauthenticated
//! caller it is; bytes that cannot be HTTP there (foreign TLS, anything but a request line or
//! the HTTP/2 preface) are refused before the app sees them: failing closed, never passing
//! opaque bytes past rules the port declares.

use super::detect::Protocol;
use crate::reason::Reason;
use crate::refusal::Refusal;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Longest method token worth reading as one (WebDAV's are the longest in use).
const MAX_METHOD: usize = 24;

/// `first_bytes`: what the caller sent so far (possibly nothing yet, possibly one byte).
pub fn check(protocol: Protocol, first_bytes: &[u8]) -> Result<(), Refusal> {
    if protocol == Protocol::ForeignTls {
        return Err(Refusal::new(
            Reason::NotHttp,
            "TLS without meshlet's ALPN on a port with HTTP rules",
        ));
    }
    if could_be_http(first_bytes) {
        Ok(())
    } else {
        Err(Refusal::new(
            Reason::NotHttp,
            "bytes that are not an HTTP request on a port with HTTP rules",
        ))
    }
}

/// Whether `bytes` can begin an HTTP/1 request (`METHOD SP`) or the HTTP/2 preface.
fn could_be_http(bytes: &[u8]) -> bool {
    let n = bytes.len().min(H2_PREFACE.len());
    if bytes[..n] == H2_PREFACE[..n] {
        return true;
    }
    let method_len = bytes
        .iter()
        .take_while(|b| b.is_ascii_uppercase() || **b == b'-' || **b == b'_')
        .count();
    match bytes.get(method_len) {
        None => method_len <= MAX_METHOD,
        Some(b' ') => (1..=MAX_METHOD).contains(&method_len),
        Some(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_and_the_h2_preface_pass_even_when_cut_short() {
        for ok in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"DELETE /small HTTP/1.1\r\n",
            b"G",
            b"",
            b"PROPFIND ",
            &H2_PREFACE[..5],
            H2_PREFACE,
        ] {
            assert!(
                check(Protocol::Plain, ok).is_ok(),
                "{:?}",
                String::from_utf8_lossy(ok)
            );
        }
    }

    #[test]
    fn other_bytes_and_foreign_tls_are_refused_as_not_http() {
        for bad in [
            &b"\x00\x00\x00\x08\x04\xd2\x16\x2f"[..],
            b"*3\r\n$3\r\nSET\r\n",
            b"get / HTTP/1.1\r\n",
            b" GET /",
            b"SSH-2.0-OpenSSH",
        ] {
            assert_eq!(
                check(Protocol::Plain, bad).unwrap_err().reason,
                Reason::NotHttp,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            check(Protocol::ForeignTls, &[0x16, 3, 1])
                .unwrap_err()
                .reason,
            Reason::NotHttp
        );
    }
}
