//! The little of gRPC's wire format meshlet speaks as a client (the SPIFFE Workload API here,
//! and the proxy's gRPC health probes of apps): length-prefixed protobuf messages in HTTP/2 bodies and the
//! `grpc-status` outcome in headers or trailers. Both callers use hyper and prost directly
//! rather than a second HTTP/2 stack.

use std::fmt;

use bytes::{Buf, Bytes, BytesMut};
use prost::Message;

/// Frames one message: a "compressed" flag byte (0), its length in four bytes, the message.
pub fn frame(message: &impl Message) -> Bytes {
    let body = message.encode_to_vec();
    let mut out = BytesMut::with_capacity(5 + body.len());
    out.extend_from_slice(&[0]);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out.freeze()
}

/// Takes the first whole message off `buf`; `Ok(None)` while it has not fully arrived.
pub fn take_message(buf: &mut BytesMut, max_len: usize) -> Result<Option<Bytes>, String> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len > max_len {
        return Err(format!(
            "gRPC message of {len} bytes is over the {max_len}-byte limit"
        ));
    }
    if buf.len() < 5 + len {
        return Ok(None);
    }
    if buf[0] != 0 {
        return Err("compressed gRPC messages are not supported".into());
    }
    buf.advance(5);
    Ok(Some(buf.split_to(len).freeze()))
}

/// A call's failure as its server reported it.
#[derive(Debug, PartialEq, Eq)]
pub struct Status {
    pub code: String,
    pub message: String,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "grpc-status {}", self.code)?;
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

/// The failure in these headers or trailers, if they report one (`grpc-status` other than 0).
pub fn failure(headers: &http::HeaderMap) -> Option<Status> {
    let code = headers.get("grpc-status")?.to_str().ok()?;
    if code == "0" {
        return None;
    }
    let message = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .unwrap_or("");
    Some(Status {
        code: code.to_string(),
        message: message.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, PartialEq, prost::Message)]
    struct Text {
        #[prost(string, tag = "1")]
        text: String,
    }

    #[test]
    fn a_framed_message_is_taken_back_whole_and_only_once_complete() {
        let framed = frame(&Text { text: "hi".into() });
        let mut buf = BytesMut::from(&framed[..framed.len() - 1]);
        assert_eq!(take_message(&mut buf, 1024), Ok(None));
        buf.extend_from_slice(&framed[framed.len() - 1..]);
        buf.extend_from_slice(b"\0\0");
        let message = take_message(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(Text::decode(message).unwrap().text, "hi");
        assert_eq!(&buf[..], b"\0\0", "the next message's bytes stay");
    }

    #[test]
    fn oversized_and_compressed_messages_are_refused() {
        let mut big = BytesMut::from(&[0, 0, 1, 0, 0][..]);
        assert!(take_message(&mut big, 1024).unwrap_err().contains("65536"));
        let mut compressed = BytesMut::from(&[1, 0, 0, 0, 0][..]);
        assert!(take_message(&mut compressed, 1024)
            .unwrap_err()
            .contains("compressed"));
    }

    #[test]
    fn status_zero_is_success_and_others_carry_their_message() {
        let mut headers = http::HeaderMap::new();
        headers.insert("grpc-status", "0".parse().unwrap());
        assert_eq!(failure(&headers), None);
        headers.insert("grpc-status", "14".parse().unwrap());
        assert_eq!(failure(&headers).unwrap().to_string(), "grpc-status 14");
        headers.insert("grpc-message", "agent not ready".parse().unwrap());
        assert_eq!(
            failure(&headers).unwrap().to_string(),
            "grpc-status 14: agent not ready"
        );
    }
}
