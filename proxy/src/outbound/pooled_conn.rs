//! One pooled connection (an HTTP/2 client over mTLS to a peer proxy): how it is dialed and
//! when it may take new streams. The pool (`pooled_client`) files it under the address it was
//! dialed to; a Service's samples (`service`) are such connections dialed to the Service.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;
use meshlet_identity::SpiffeId;
use tracing::debug;

use super::mesh_port::Answered;
use crate::dial::{ConnectError, Dialer, Upstream};
use crate::metrics::OUTBOUND;
use crate::pooled_wire::{
    CONNECTION_WINDOW, MAX_FRAME, MAX_HEADER_LIST, PING_EVERY, PING_TIMEOUT, SEND_BUF,
    STREAM_WINDOW,
};

#[derive(Clone)]
pub struct PooledConn {
    /// Tells this connection from a later one in the same slot.
    pub id: u64,
    pub(super) sender: SendRequest<Bytes>,
    /// Set when the connection's task ends (closed by either side, or its pings unanswered).
    closed: Arc<AtomicBool>,
    pub peer: SpiffeId,
    /// When the peer's certificate expires: the connection is not used past that.
    peer_not_after: std::time::SystemTime,
    generation: u64,
    /// When it was dialed (see `pooled_client::REDIAL_AFTER`).
    pub(super) born: Instant,
}

impl PooledConn {
    /// The connection ended (closed by either side, or its pings went unanswered).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    pub fn usable(&self, generation: u64) -> bool {
        !self.is_closed()
            && self.generation == generation
            && std::time::SystemTime::now() < self.peer_not_after
    }
}

/// A pooled connection, or the peer's choice of a connection of its own instead.
pub enum Dialed {
    Pooled(PooledConn),
    Own(Upstream, SpiffeId),
}

/// Opens a pooled connection to `dst` (or, if the peer declines, one of its own).
pub async fn dial_pooled(
    dialer: &Dialer,
    dst: SocketAddr,
    handshake_timeout: Duration,
    generation: u64,
    probe: Option<&Answered>,
) -> Result<Dialed, ConnectError> {
    let conn = dialer
        .connect_tls(dst, dialer.tls.client_mux.clone(), handshake_timeout, probe)
        .await?;
    if !conn.mux {
        return Ok(Dialed::Own(Upstream::Tls(Box::new(conn.stream)), conn.peer));
    }
    let (sender, mut connection) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_send_buffer_size(SEND_BUF)
        .max_header_list_size(MAX_HEADER_LIST)
        .enable_push(false)
        .handshake::<_, Bytes>(conn.stream)
        .await
        .map_err(|err| ConnectError::Pool { dst, err })?;
    let (peer, peer_not_after) = (conn.peer.clone(), conn.peer_not_after);
    let closed = Arc::new(AtomicBool::new(false));
    let ping_pong = connection.ping_pong();
    let ended = closed.clone();
    tokio::spawn(async move {
        tokio::select! {
            result = &mut connection => if let Err(e) = result {
                debug!(%dst, error = %e, "pooled connection ended");
            },
            why = keep_alive(ping_pong) => debug!(%dst, why, "pooled connection dropped"),
        }
        ended.store(true, Ordering::Relaxed);
    });
    dialer
        .metrics
        .mux_connections
        .get_or_create(&crate::metrics::DirLabels::of(OUTBOUND))
        .inc();
    debug!(%dst, %peer, "pooled connection to a peer proxy opened");
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    Ok(Dialed::Pooled(PooledConn {
        id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        sender,
        closed,
        peer,
        peer_not_after,
        generation,
        born: Instant::now(),
    }))
}

/// Pings the peer every [`PING_EVERY`]; returns (and so drops the connection, failing its
/// streams) when a ping goes unanswered for [`PING_TIMEOUT`]: a peer that vanished without
/// closing (a node lost, a cable cut) is found out instead of holding streams forever.
async fn keep_alive(ping_pong: Option<h2::PingPong>) -> &'static str {
    let Some(mut ping_pong) = ping_pong else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(PING_EVERY).await;
        match tokio::time::timeout(PING_TIMEOUT, ping_pong.ping(h2::Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            // The connection failed: its own future says why.
            Ok(Err(_)) => return std::future::pending().await,
            Err(_) => return "the peer did not answer a ping",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Aborts its tasks when the test ends.
    struct Tasks(Vec<tokio::task::JoinHandle<()>>);

    impl Drop for Tasks {
        fn drop(&mut self) {
            self.0.iter().for_each(|t| t.abort());
        }
    }

    /// The pings of a client connection (driven by a task of its own) over an in-memory pipe to
    /// an h2 server that completed its handshake and, only when `answers` is set, goes on
    /// reading (and so answers pings). The sender comes along: with none left, the client
    /// closes the connection itself.
    async fn pings_to_a_server(answers: bool) -> (h2::PingPong, SendRequest<Bytes>, Tasks) {
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(async move {
            let mut conn = h2::server::handshake(theirs)
                .await
                .expect("server handshake");
            if answers {
                while conn.accept().await.is_some() {}
            } else {
                // Holds the connection open and never reads from it again: a peer that
                // vanished without closing.
                std::future::pending::<()>().await;
            }
        });
        let (sender, mut conn) = h2::client::handshake(ours).await.expect("client handshake");
        let ping_pong = conn.ping_pong().expect("the pings of a new connection");
        let client = tokio::spawn(async move {
            let _ = conn.await;
        });
        (ping_pong, sender, Tasks(vec![server, client]))
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stops_answering_pings_is_dropped_after_the_interval_and_the_timeout() {
        let (ping_pong, _sender, _tasks) = pings_to_a_server(false).await;
        let started = tokio::time::Instant::now();
        let why = tokio::time::timeout(PING_EVERY * 4, keep_alive(Some(ping_pong)))
            .await
            .expect("the connection to a silent peer is still kept");
        assert_eq!(why, "the peer did not answer a ping");
        let took = started.elapsed();
        assert!(took >= PING_EVERY + PING_TIMEOUT, "dropped after {took:?}");
        assert!(
            took < PING_EVERY + PING_TIMEOUT + Duration::from_secs(1),
            "dropped after {took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_answers_pings_keeps_its_connection() {
        let (ping_pong, _sender, _tasks) = pings_to_a_server(true).await;
        let kept = tokio::time::timeout(PING_EVERY * 10, keep_alive(Some(ping_pong))).await;
        assert!(kept.is_err(), "dropped: {kept:?}");
    }
}
