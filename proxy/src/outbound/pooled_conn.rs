//! One pooled connection (an HTTP/2 client over mTLS to a peer proxy): how it is dialed and
//! when it may take new streams. The pool (`pooled_client`) files it under the address it was
//! dialed to; a Service's samples (`service`) are such connections dialed to the Service.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Empty;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use meshlet_identity::SpiffeId;
use tracing::debug;

use super::mesh_port::Answered;
use crate::dial::{ConnectError, Dialer, Upstream};
use crate::metrics::OUTBOUND;
use crate::pooled_wire::{CONNECTION_WINDOW, MAX_FRAME, SEND_BUF, STREAM_WINDOW};

#[derive(Clone)]
pub struct PooledConn {
    /// Tells this connection from a later one in the same slot.
    pub id: u64,
    pub(super) sender: SendRequest<Empty<Bytes>>,
    pub peer: SpiffeId,
    /// When the peer's certificate expires: the connection is not used past that.
    peer_not_after: std::time::SystemTime,
    generation: u64,
    /// When it was dialed (see `pooled_client::REDIAL_AFTER`).
    pub(super) born: Instant,
}

impl PooledConn {
    pub fn usable(&self, generation: u64) -> bool {
        !self.sender.is_closed()
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
    let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_send_buf_size(SEND_BUF)
        .adaptive_window(false)
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .handshake(TokioIo::new(conn.stream))
        .await
        .map_err(|err| ConnectError::Pool { dst, err })?;
    let (peer, peer_not_after) = (conn.peer.clone(), conn.peer_not_after);
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            debug!(%dst, error = %e, "pooled connection ended");
        }
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
        peer,
        peer_not_after,
        generation,
        born: Instant::now(),
    }))
}
