//! The app's first bytes, sent on a pooled stream before the peer has answered its CONNECT.
//!
//! Waiting for the answer before reading the app would cost every new app connection a round
//! trip between the proxies before its first byte leaves. Instead, a stream carries whatever
//! the app has sent, and goes on sending what it sends, until the peer answers. The peer judges
//! the stream before it reads any of them and drops them if it refuses
//! (`inbound::pooled_server`).
//!
//! They are held until a stream that carried them is accepted, so a retry on another pooled
//! connection sends them again, and a path that does not carry them (a connection of its own, a
//! located stream, see `pooled_client`) gets them first from the copy. At most `MAX` bytes are
//! held; then reading waits for the answer.

use bytes::{BufMut, Bytes, BytesMut};
use h2::SendStream;
use tokio::net::TcpStream;

/// The most held before the peer answers: an HTTP request head with its cookies fits.
const MAX: usize = 16 * 1024;

/// What the app has sent before its path is open.
pub struct FirstBytes<'a> {
    app: &'a TcpStream,
    /// Read from the app, not yet delivered on an accepted stream.
    held: BytesMut,
    /// The app finished sending (or its connection failed): the copy will see that itself.
    done: bool,
    /// Delivered on an accepted stream.
    delivered: usize,
}

impl<'a> FirstBytes<'a> {
    pub fn new(app: &'a TcpStream) -> Self {
        FirstBytes {
            app,
            held: BytesMut::new(),
            done: false,
            delivered: 0,
        }
    }

    /// Sends what is held on `send`, then what the app sends, until `answer` (the peer's answer
    /// to the stream) is ready; returns the answer. A stream that cannot take them (the peer
    /// reset it) stops taking them: its answer says why.
    pub async fn send_until<F: std::future::Future>(
        &mut self,
        send: &mut SendStream<Bytes>,
        answer: F,
    ) -> F::Output {
        // Within the stream's first window (at most MAX): h2 sends them without waiting for
        // capacity.
        let mut sending = self.held.is_empty()
            || send
                .send_data(Bytes::copy_from_slice(&self.held), false)
                .is_ok();
        let mut answer = std::pin::pin!(answer);
        loop {
            if sending {
                if let Some(read) = self.read_waiting() {
                    sending = send.send_data(read, false).is_ok();
                    continue;
                }
            }
            tokio::select! {
                biased;
                answered = answer.as_mut() => return answered,
                _ = self.app.readable(), if sending && self.wants_more() => {}
            }
        }
    }

    /// The stream that carried what is held was accepted: it is delivered.
    pub fn accepted(&mut self) {
        self.delivered += self.held.len();
        self.held.clear();
    }

    /// What the copy must send first (read, never delivered), and how many bytes were
    /// delivered before it.
    pub fn into_rest(self) -> (Bytes, usize) {
        (self.held.freeze(), self.delivered)
    }

    fn wants_more(&self) -> bool {
        !self.done && self.held.len() < MAX
    }

    /// What the app has sent and we have not yet read, up to the bound, without waiting.
    fn read_waiting(&mut self) -> Option<Bytes> {
        if !self.wants_more() {
            return None;
        }
        let before = self.held.len();
        let mut room = (&mut self.held).limit(MAX - before);
        match self.app.try_read_buf(&mut room) {
            Ok(0) => {
                self.done = true;
                None
            }
            Ok(n) => Some(Bytes::copy_from_slice(&self.held[before..before + n])),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
            // The copy reads the same socket and reports it.
            Err(_) => {
                self.done = true;
                None
            }
        }
    }
}
