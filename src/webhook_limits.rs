//! What `meshlet webhook` will hold for its callers, so that a burst of requests (the API
//! server's, or anyone's in the cluster network: the port is reachable from pods) fits the
//! Deployment's memory limit (`deploy/webhook.yaml`: 64Mi) with room:
//!
//! - a body is at most [`MAX_BODY`]: the API server sends a Pod of at most etcd's 1.5 MiB
//!   (`--max-request-bytes`), in its AdmissionReview envelope;
//! - the bodies being received at once hold at most [`BODY_BUDGET`] bytes together; beyond it a
//!   request is answered 503 at once rather than buffered;
//! - a body must arrive within [`BODY_TIMEOUT`] (the API server gives a webhook at most 10 s)
//!   and request headers within [`HEADER_TIMEOUT`] of the connection going idle;
//! - a body holds at most [`MAX_JSON_VALUES`] JSON values, counted before parsing: parsed, a
//!   value costs up to 16 times its text (`[0,0,…]`), and a Pod has far fewer;
//! - at most [`REVIEWS_AT_ONCE`] bodies are parsed and reviewed at a time;
//! - at most [`MAX_CONNECTIONS`] connections are open, each with at most
//!   [`MAX_STREAMS`] HTTP/2 requests;
//! - what a caller may send before the webhook reads it (and counts it against the budget) is
//!   small: HTTP/2 flow-control windows of [`STREAM_WINDOW`] per request and
//!   [`CONNECTION_WINDOW`] per connection, an HTTP/1 read buffer of at most [`READ_BUFFER`].
//!   (hyper's defaults, 2 MiB per stream and 5 MiB per connection, let two dozen callers park
//!   40 MiB in buffers the budget never sees, more the slower the webhook reads.)
//!
//! Peak: BODY_BUDGET + REVIEWS_AT_ONCE × (a Pod, parsed, patched and answered: ~6 times its
//! text, ~10 MiB) + the process;
//! under 48 MiB, measured by `tests/webhook.rs`.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub const MAX_BODY: usize = 2 << 20;
pub const BODY_BUDGET: usize = 8 << 20;
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
pub const MAX_JSON_VALUES: usize = 100_000;
pub const REVIEWS_AT_ONCE: usize = 1;
pub const MAX_CONNECTIONS: usize = 64;
pub const MAX_STREAMS: u32 = 8;
pub const STREAM_WINDOW: u32 = 64 << 10;
pub const CONNECTION_WINDOW: u32 = MAX_STREAMS * STREAM_WINDOW;
pub const READ_BUFFER: usize = 64 << 10;

/// Budget permits are KiB.
const KIB: usize = 1024;

/// Why a body was not taken.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the body is larger than {MAX_BODY} bytes (a Pod is at most 1.5 MiB)")]
    TooLarge,
    #[error("the webhook is receiving too many bodies at once; retry")]
    Busy,
    #[error("the body did not arrive within {BODY_TIMEOUT:?}")]
    TimedOut,
    #[error("cannot read the body: {0}")]
    Read(hyper::Error),
    #[error("the body holds more than {MAX_JSON_VALUES} JSON values, more than any Pod")]
    TooManyValues,
}

/// The shared limits of one webhook server.
pub struct Limits {
    budget: Arc<Semaphore>,
    pub reviews: Semaphore,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            budget: Arc::new(Semaphore::new(BODY_BUDGET / KIB)),
            reviews: Semaphore::new(REVIEWS_AT_ONCE),
        }
    }
}

impl Limits {
    /// Reads a whole body within the limits; the permit keeps its bytes in the budget until
    /// dropped.
    pub async fn read(&self, body: Incoming) -> Result<(Bytes, OwnedSemaphorePermit), BodyError> {
        tokio::time::timeout(BODY_TIMEOUT, self.read_inner(body))
            .await
            .map_err(|_| BodyError::TimedOut)?
    }

    async fn read_inner(
        &self,
        mut body: Incoming,
    ) -> Result<(Bytes, OwnedSemaphorePermit), BodyError> {
        let mut held = self
            .budget
            .clone()
            .try_acquire_many_owned(1)
            .map_err(|_| BodyError::Busy)?;
        let mut buf = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(BodyError::Read)?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if buf.len() + data.len() > MAX_BODY {
                return Err(BodyError::TooLarge);
            }
            let want = (buf.len() + data.len()).div_ceil(KIB);
            let more = want.saturating_sub(held.num_permits());
            if more > 0 {
                let extra = self
                    .budget
                    .clone()
                    .try_acquire_many_owned(u32::try_from(more).map_err(|_| BodyError::TooLarge)?)
                    .map_err(|_| BodyError::Busy)?;
                held.merge(extra);
            }
            buf.extend_from_slice(&data);
        }
        if json_values(&buf) > MAX_JSON_VALUES {
            return Err(BodyError::TooManyValues);
        }
        Ok((buf.freeze(), held))
    }
}

/// An upper bound of the number of values in a JSON text, without parsing it: every value
/// but the first follows a `,`, a `:` or an opening bracket outside a string.
pub fn json_values(text: &[u8]) -> usize {
    let (mut n, mut in_string, mut escaped) = (1, false, false);
    for &b in text {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b',' | b':' | b'[' | b'{' => n += 1,
            _ => {}
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_counted_outside_strings_only() {
        assert!(json_values(br#"{"a":[1,2,3]}"#) >= 5);
        assert_eq!(
            json_values(br#""a,b:[c{\"d,""#),
            1,
            "punctuation and escaped quotes inside a string count nothing"
        );
        let zeros = format!("[{}0]", "0,".repeat(1000));
        assert!(json_values(zeros.as_bytes()) > 1000);
    }
}
