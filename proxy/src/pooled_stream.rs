//! One app connection's bytes on a pooled connection: an HTTP/2 CONNECT stream read and written
//! as a byte stream, the same on both halves of the pooled transport (`outbound::pooled_client`,
//! `inbound::pooled_server`).
//!
//! Written straight on the `h2` crate's stream handles: a write becomes a DATA frame that the
//! connection's own task sends, and a read takes the next DATA frame's bytes. No task of its
//! own and no channel between the copy and the connection, so a request costs one task hop
//! per side (the copy's) and nothing more.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub struct PooledStream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// Bytes of the last DATA frame not yet read.
    unread: Bytes,
    /// END_STREAM sent: our side of the app connection is done writing.
    ended: bool,
}

impl PooledStream {
    pub fn new(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        PooledStream {
            send,
            recv,
            unread: Bytes::new(),
            ended: false,
        }
    }
}

/// A stream-level error as the copy sees it: the peer's reset is a reset connection, as it would
/// be on TCP; anything else keeps its text.
fn io_error(e: h2::Error) -> io::Error {
    if e.is_reset() || e.is_go_away() {
        return io::Error::new(io::ErrorKind::ConnectionReset, e);
    }
    match e.into_io() {
        Some(io) => io,
        None => io::Error::other("pooled stream failed"),
    }
}

impl AsyncRead for PooledStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while this.unread.is_empty() {
            match ready!(this.recv.poll_data(cx)) {
                // END_STREAM: the peer's side is done writing.
                None => return Poll::Ready(Ok(())),
                Some(Ok(data)) => {
                    // The window reopens as frames arrive; what is held unread is one frame.
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    this.unread = data;
                }
                Some(Err(e)) if e.reason() == Some(h2::Reason::NO_ERROR) => {
                    return Poll::Ready(Ok(()))
                }
                Some(Err(e)) => return Poll::Ready(Err(io_error(e))),
            }
        }
        let n = this.unread.len().min(buf.remaining());
        buf.put_slice(&this.unread.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for PooledStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let this = self.get_mut();
        loop {
            // Capacity is the peer's window less what h2 already holds for this stream
            // (bounded by the connection's send buffer): a slow reader holds the writer here.
            this.send.reserve_capacity(buf.len());
            match ready!(this.send.poll_capacity(cx)) {
                None => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the pooled stream is closed",
                    )))
                }
                Some(Err(e)) => return Poll::Ready(Err(io_error(e))),
                Some(Ok(0)) => continue,
                Some(Ok(capacity)) => {
                    let n = capacity.min(buf.len());
                    this.send
                        .send_data(Bytes::copy_from_slice(&buf[..n]), false)
                        .map_err(io_error)?;
                    return Poll::Ready(Ok(n));
                }
            }
        }
    }

    /// The connection's task writes what is sent; there is nothing to flush here.
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Half-closes: END_STREAM, after whatever is still queued.
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.ended {
            this.ended = true;
            this.send.send_data(Bytes::new(), true).map_err(io_error)?;
        }
        Poll::Ready(Ok(()))
    }
}
