//! Tells, from a caller's first bytes, whether it speaks meshlet's mTLS, other TLS, or plaintext.
//! Only the ClientHello's ALPN extension is read; nothing is decrypted here.

use crate::locate::{self, Parse};
use crate::tls::{ALPN_MESH, ALPN_MUX};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// A ClientHello offering one of meshlet's ALPNs.
    Mesh,
    /// TLS, but not from a meshlet proxy.
    ForeignTls,
    /// Not TLS at all.
    Plain,
    /// A peer proxy asking which pod address this connection reached (see `locate`).
    Locate(locate::Request),
    /// Need more bytes to tell.
    Incomplete,
}

/// Largest ClientHello record accepted for inspection (a TLS record is at most 16 KiB + header).
pub const MAX_HELLO: usize = 5 + 16384;

pub fn classify(buf: &[u8]) -> Protocol {
    if buf.is_empty() {
        return Protocol::Incomplete;
    }
    match locate::parse_request(buf) {
        Parse::Request(req) => return Protocol::Locate(req),
        Parse::Incomplete => return Protocol::Incomplete,
        Parse::No => {}
    }
    if buf[0] != 0x16 {
        return Protocol::Plain;
    }
    if buf.len() < 5 {
        return Protocol::Incomplete;
    }
    if buf[1] != 0x03 {
        return Protocol::Plain;
    }
    let record_len = u16::from_be_bytes([buf[3], buf[4]]) as usize;
    if buf.len() < 5 + record_len {
        return Protocol::Incomplete;
    }
    match hello_offers_mesh_alpn(&buf[5..5 + record_len]) {
        Some(true) => Protocol::Mesh,
        _ => Protocol::ForeignTls,
    }
}

/// A minimal bounds-checked reader.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| b[0] as usize)
    }
    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
    }
    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| ((b[0] as usize) << 16) | ((b[1] as usize) << 8) | b[2] as usize)
    }
}

/// `None` when the handshake message is not a well-formed ClientHello contained in this record.
fn hello_offers_mesh_alpn(record: &[u8]) -> Option<bool> {
    let mut r = Reader(record);
    if r.u8()? != 1 {
        return None; // not a ClientHello
    }
    let len = r.u24()?;
    let mut r = Reader(r.take(len)?);
    r.take(2 + 32)?; // legacy_version, random
    let sid = r.u8()?;
    r.take(sid)?;
    let suites = r.u16()?;
    r.take(suites)?;
    let compression = r.u8()?;
    r.take(compression)?;
    let ext_len = r.u16()?;
    let mut exts = Reader(r.take(ext_len)?);
    while !exts.0.is_empty() {
        let ty = exts.u16()?;
        let len = exts.u16()?;
        let body = exts.take(len)?;
        if ty == 0x0010 {
            let mut alpn = Reader(body);
            let list_len = alpn.u16()?;
            let mut list = Reader(alpn.take(list_len)?);
            while !list.0.is_empty() {
                let n = list.u8()?;
                let proto = list.take(n)?;
                if proto == ALPN_MESH || proto == ALPN_MUX {
                    return Some(true);
                }
            }
            return Some(false);
        }
    }
    Some(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(alpns: &[&[u8]]) -> Vec<u8> {
        let mut alpn_list = Vec::new();
        for a in alpns {
            alpn_list.push(a.len() as u8);
            alpn_list.extend_from_slice(a);
        }
        let mut ext = Vec::new();
        if !alpns.is_empty() {
            ext.extend_from_slice(&[0x00, 0x10]);
            ext.extend_from_slice(&((alpn_list.len() + 2) as u16).to_be_bytes());
            ext.extend_from_slice(&(alpn_list.len() as u16).to_be_bytes());
            ext.extend_from_slice(&alpn_list);
        }
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[7u8; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0x00, 0x02, 0x13, 0x01]);
        body.extend_from_slice(&[0x01, 0x00]);
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut hs = vec![0x01];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        let mut rec = vec![0x16, 0x03, 0x01];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    #[test]
    fn a_hello_with_a_mesh_alpn_is_mesh() {
        assert_eq!(classify(&hello(&[b"h2", ALPN_MESH])), Protocol::Mesh);
        assert_eq!(classify(&hello(&[ALPN_MUX, ALPN_MESH])), Protocol::Mesh);
    }

    #[test]
    fn other_tls_is_foreign() {
        assert_eq!(
            classify(&hello(&[b"h2", b"http/1.1"])),
            Protocol::ForeignTls
        );
        assert_eq!(classify(&hello(&[])), Protocol::ForeignTls);
    }

    #[test]
    fn plaintext_is_plain_and_partial_input_is_incomplete() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Protocol::Plain);
        let h = hello(&[ALPN_MESH]);
        for cut in [1, 4, 5, h.len() - 1] {
            assert_eq!(classify(&h[..cut]), Protocol::Incomplete, "cut at {cut}");
        }
        assert_eq!(classify(&[]), Protocol::Incomplete);
    }

    #[test]
    fn a_locate_request_is_recognised_whole_and_waited_for_when_partial() {
        assert_eq!(
            classify(locate::LOCATE_V1),
            Protocol::Locate(locate::Request::V1)
        );
        assert_eq!(classify(&locate::LOCATE_V1[..3]), Protocol::Incomplete);
        assert_eq!(classify(b"\0other"), Protocol::Plain);
    }

    #[test]
    fn garbage_in_a_tls_record_is_foreign_never_a_panic() {
        let mut h = hello(&[ALPN_MESH]);
        for i in 5..h.len() {
            let saved = h[i];
            h[i] = 0xff;
            let _ = classify(&h);
            h[i] = saved;
        }
        assert_eq!(
            classify(&[0x16, 0x03, 0x01, 0x00, 0x01, 0x02]),
            Protocol::ForeignTls
        );
    }
}
