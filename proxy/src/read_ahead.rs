//! Read-ahead beneath TLS on pooled connections.
//!
//! rustls asks its transport for at most one record (16 KiB) at a time, so a busy pooled
//! connection — the bytes of many app connections — would cost a system call per record.
//! Reading up to [`SIZE`] at once and serving rustls from memory cuts that by up to four.
//! Until [`ReadAhead::enable`] is called the wrapper passes reads through and holds no buffer:
//! per-connection TLS streams stay as small as they were.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

/// Bytes read at once once enabled.
pub const SIZE: usize = 64 * 1024;

pub struct ReadAhead<S> {
    inner: S,
    buf: Option<Box<[u8]>>,
    start: usize,
    end: usize,
}

impl<S> ReadAhead<S> {
    pub fn new(inner: S) -> Self {
        ReadAhead {
            inner,
            buf: None,
            start: 0,
            end: 0,
        }
    }

    /// From now on, reads ask the inner stream for up to [`SIZE`] bytes.
    pub fn enable(&mut self) {
        if self.buf.is_none() {
            self.buf = Some(vec![0; SIZE].into_boxed_slice());
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(buf) = this.buf.as_mut() else {
            return Pin::new(&mut this.inner).poll_read(cx, out);
        };
        if this.start == this.end {
            if out.remaining() >= buf.len() {
                // The caller asks for as much as we would: no point in a detour.
                return Pin::new(&mut this.inner).poll_read(cx, out);
            }
            let mut fill = ReadBuf::new(buf);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut fill))?;
            this.start = 0;
            this.end = fill.filled().len();
        }
        let n = out.remaining().min(this.end - this.start);
        out.put_slice(&buf[this.start..this.start + n]);
        this.start += n;
        Poll::Ready(Ok(()))
    }
}

crate::rewind::forward_async_write!(ReadAhead);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A reader that counts how often it is asked for bytes.
    struct Counting<'a> {
        data: &'a [u8],
        reads: usize,
    }

    impl AsyncRead for Counting<'_> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            self.reads += 1;
            let n = buf.remaining().min(self.data.len());
            buf.put_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Poll::Ready(Ok(()))
        }
    }

    async fn read_in_4k_chunks<S: AsyncRead + Unpin>(s: &mut S, len: usize) -> Vec<u8> {
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        while got.len() < len {
            let n = s.read(&mut chunk).await.unwrap();
            got.extend_from_slice(&chunk[..n]);
        }
        got
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[tokio::test]
    async fn enabled_it_serves_small_reads_from_one_large_read() {
        let data = pattern(SIZE);
        let mut s = ReadAhead::new(Counting {
            data: &data,
            reads: 0,
        });
        s.enable();

        let got = read_in_4k_chunks(&mut s, data.len()).await;

        assert_eq!(got, data);
        assert_eq!(s.inner.reads, 1, "16 reads of 4 KiB, one read below");
    }

    #[tokio::test]
    async fn disabled_it_passes_every_read_through() {
        let data = pattern(3 * 4096);
        let mut s = ReadAhead::new(Counting {
            data: &data,
            reads: 0,
        });

        let got = read_in_4k_chunks(&mut s, data.len()).await;

        assert_eq!(got, data);
        assert_eq!(s.inner.reads, 3);
        assert!(s.buf.is_none(), "no buffer is held until enabled");
    }

    #[tokio::test]
    async fn end_of_stream_reaches_the_reader() {
        let data = pattern(5000);
        let mut s = ReadAhead::new(Counting {
            data: &data,
            reads: 0,
        });
        s.enable();

        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();

        assert_eq!(got, data);
    }
}
