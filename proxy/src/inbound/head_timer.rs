//! Times an HTTP/1 request head from its first byte, not from the idle wait before it.
//!
//! hyper's own `header_read_timeout` starts when the server begins waiting for the next
//! request, so it also closes idle keep-alive connections, which client pools keep far longer
//! (Go: 90 s, Envoy: an hour) — and the client's next request on one fails. This wrapper
//! leaves an idle connection alone for `idle` (at least an hour by default), and once a
//! request's first bytes arrive, gives its head `head` to complete: a caller that trickles its
//! headers is still cut off. HTTP/2 (its preface seen first) is passed through untouched: its
//! frames (pings, window updates) arrive between requests and are not request heads.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Shared between the connection's reader and its request handler.
#[derive(Default)]
pub struct InFlight(AtomicBool);

impl InFlight {
    /// A request's head is complete: its handler runs.
    pub fn start(&self) {
        self.0.store(true, Ordering::Release);
    }
    /// Its response is on its way: what arrives next is the next request.
    pub fn finish(&self) {
        self.0.store(false, Ordering::Release);
    }
    fn busy(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

const H2_PREFACE_START: &[u8] = b"PRI * HTTP/2.0";

pub struct HeadTimer<S> {
    inner: S,
    in_flight: Arc<InFlight>,
    head: Duration,
    idle: Duration,
    /// Armed for a head (true) or for idleness (false).
    timing_head: bool,
    deadline: Pin<Box<Sleep>>,
    /// HTTP/2, or not known yet (`None`).
    h2: Option<bool>,
    /// A request was in flight at the last read.
    was_busy: bool,
}

impl<S> HeadTimer<S> {
    pub fn new(inner: S, in_flight: Arc<InFlight>, head: Duration, idle: Duration) -> Self {
        HeadTimer {
            inner,
            in_flight,
            head,
            idle,
            timing_head: false,
            deadline: Box::pin(tokio::time::sleep(idle)),
            h2: None,
            was_busy: false,
        }
    }

    fn arm(&mut self, timing_head: bool) {
        self.timing_head = timing_head;
        let after = if timing_head { self.head } else { self.idle };
        self.deadline.as_mut().reset(Instant::now() + after);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for HeadTimer<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if this.h2 == Some(true) {
            return result;
        }
        let busy = this.in_flight.busy();
        if busy != this.was_busy {
            // A request began (no head is being read) or ended (idleness starts now).
            this.was_busy = busy;
            this.arm(false);
        }
        match &result {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                let got = &buf.filled()[before..];
                if this.h2.is_none() {
                    let n = got.len().min(H2_PREFACE_START.len());
                    this.h2 = Some(got[..n] == H2_PREFACE_START[..n]);
                    if this.h2 == Some(true) {
                        return result;
                    }
                }
                if busy {
                    // A body, or the next request pipelined: the head timer starts again once
                    // this request is done and more bytes arrive.
                    this.arm(false);
                } else if !this.timing_head {
                    this.arm(true);
                }
                result
            }
            Poll::Pending if !busy => {
                match this.deadline.as_mut().poll(cx) {
                    Poll::Ready(()) if this.timing_head => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "request head not complete in time (timeouts.first_byte)",
                    ))),
                    // Idle past `timeouts.http_idle` between requests: end it as if closed.
                    Poll::Ready(()) => Poll::Ready(Ok(())),
                    Poll::Pending => Poll::Pending,
                }
            }
            // A request is being handled: neither head nor idle time runs.
            _ => result,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for HeadTimer<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
