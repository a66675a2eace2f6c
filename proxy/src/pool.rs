//! The pooled transport, client side: app connections to a peer become HTTP/2 CONNECT streams
//! over one long-lived mTLS connection to that peer's proxy, so a new app connection costs no
//! TLS handshake.
//!
//! A pooled connection is keyed by the peer's IP (any captured port of that IP reaches the same
//! proxy), carries streams between exactly one pair of identities (ours at the time it was made,
//! and the peer's it proved), and is not reused once our identity or trust bundle has changed:
//! the next app connection opens a fresh one and the old one drains as its streams end.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Empty;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use meshlet_identity::SpiffeId;
use tracing::{debug, info};

use crate::connector::{check_pins, connect_tls, own_connection, ConnectError, Upstream};
use crate::metrics::OUTBOUND;
use crate::Shared;

/// Header a peer sets when it refuses a stream because the pooled connection is stale.
pub const RETRY_HEADER: &str = "meshlet-retry";

/// Flow-control windows: large enough that one stream can fill a fast link.
pub const STREAM_WINDOW: u32 = 4 << 20;
pub const CONNECTION_WINDOW: u32 = 16 << 20;
pub const MAX_FRAME: u32 = 1 << 20;
/// Bytes hyper may buffer per stream before asking the writer to wait.
pub const SEND_BUF: usize = 4 << 20;

#[derive(Clone)]
struct PooledConn {
    /// Tells this connection from a later one in the same slot.
    id: u64,
    sender: SendRequest<Empty<Bytes>>,
    peer: SpiffeId,
    generation: u64,
}

type Slot = Arc<tokio::sync::Mutex<Option<PooledConn>>>;

/// Peers remembered before dead entries are swept, so talking to many addresses over time
/// cannot grow the pool without bound.
const MAX_PEERS: usize = 1024;

#[derive(Default)]
pub struct Pool {
    slots: Mutex<HashMap<IpAddr, Slot>>,
    /// Peers that answered the pooled ALPN with the per-connection one.
    no_mux: Mutex<HashMap<IpAddr, ()>>,
}

impl Pool {
    fn slot(&self, ip: IpAddr) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if slots.len() >= MAX_PEERS && !slots.contains_key(&ip) {
            // Forget peers whose pooled connection is gone (a slot being filled is kept).
            slots.retain(|_, slot| match slot.try_lock() {
                Ok(conn) => conn.as_ref().is_some_and(|c| !c.sender.is_closed()),
                Err(_) => true,
            });
        }
        slots.entry(ip).or_default().clone()
    }

    /// Drops the pooled connection `id` from its slot, unless another one has replaced it.
    async fn forget(&self, ip: IpAddr, id: u64) {
        let slot = self.slot(ip);
        let mut guard = slot.lock().await;
        if guard.as_ref().is_some_and(|c| c.id == id) {
            *guard = None;
        }
    }

    fn peer_lacks_mux(&self, ip: IpAddr) -> bool {
        self.no_mux
            .lock()
            .map(|m| m.contains_key(&ip))
            .unwrap_or(false)
    }

    /// A stream to `dst` over a pooled connection (opening one if needed), or, for a peer that
    /// does not speak the pooled transport, a connection of its own.
    pub async fn open(
        &self,
        shared: &Shared,
        dst: SocketAddr,
        pins: Option<&[SpiffeId]>,
        handshake_timeout: Duration,
    ) -> Result<(Upstream, SpiffeId), ConnectError> {
        if self.peer_lacks_mux(dst.ip()) {
            return own_connection(shared, dst, pins, handshake_timeout).await;
        }
        // One retry: a stale or broken pooled connection is replaced once.
        for attempt in 0..2 {
            let conn = match self.pooled(shared, dst, handshake_timeout).await? {
                Ok(conn) => conn,
                Err(direct) => return Ok(direct),
            };
            check_pins(dst, &conn.peer, pins)?;
            // A peer that vanished without closing (or hangs) would leave the app connection
            // waiting for the keep-alive to notice: a stream is due within the handshake timeout.
            let opened = tokio::time::timeout(handshake_timeout, stream(conn.sender.clone(), dst))
                .await
                .unwrap_or(Err(StreamError::TimedOut));
            match opened {
                Ok(io) => {
                    shared
                        .metrics
                        .mux_streams
                        .get_or_create(&crate::metrics::DirLabels {
                            direction: OUTBOUND,
                        })
                        .inc();
                    return Ok((Upstream::Stream(io), conn.peer));
                }
                Err(StreamError::Stale) if attempt == 0 => {
                    debug!(%dst, "pooled connection is stale on the peer's side; reconnecting");
                    self.forget(dst.ip(), conn.id).await;
                }
                Err(StreamError::Hyper(err)) if attempt == 0 => {
                    // Closed under us (GOAWAY, reset): one fresh connection is worth a try.
                    debug!(%dst, error = %err, "pooled connection failed; reconnecting");
                    self.forget(dst.ip(), conn.id).await;
                }
                Err(StreamError::TimedOut) if attempt == 0 => {
                    debug!(%dst, "pooled connection did not answer a stream request; reconnecting");
                    self.forget(dst.ip(), conn.id).await;
                }
                Err(StreamError::TimedOut) => {
                    self.forget(dst.ip(), conn.id).await;
                    return Err(ConnectError::StreamTimeout {
                        dst,
                        after: handshake_timeout,
                    });
                }
                Err(StreamError::Stale) => {
                    return Err(ConnectError::StreamRefused {
                        dst,
                        why: "pooled connection stale twice".into(),
                    })
                }
                Err(StreamError::Refused(why)) => {
                    return Err(ConnectError::StreamRefused { dst, why })
                }
                Err(StreamError::Hyper(err)) => {
                    self.forget(dst.ip(), conn.id).await;
                    return Err(ConnectError::Pool { dst, err });
                }
            }
        }
        Err(ConnectError::StreamRefused {
            dst,
            why: "no usable pooled connection".into(),
        })
    }

    /// The live pooled connection to `dst`'s IP, opened when missing, dead or stale.
    /// `Ok(Err(upstream))` when the peer chose the per-connection transport instead.
    async fn pooled(
        &self,
        shared: &Shared,
        dst: SocketAddr,
        handshake_timeout: Duration,
    ) -> Result<Result<PooledConn, (Upstream, SpiffeId)>, ConnectError> {
        let slot = self.slot(dst.ip());
        let mut guard = slot.lock().await;
        let generation = shared.store.generation();
        if let Some(conn) = guard.as_ref() {
            if !conn.sender.is_closed() && conn.generation == generation {
                return Ok(Ok(conn.clone()));
            }
        }
        *guard = None;
        // Boxed: dialing is rare and its state large; inline, it would size every app
        // connection's task.
        let dialed = Box::pin(self.dial(shared, dst, handshake_timeout, generation)).await?;
        if let Ok(pooled) = &dialed {
            *guard = Some(pooled.clone());
        }
        Ok(dialed)
    }

    /// Opens a pooled connection to `dst` (or, if the peer declines, one of its own).
    async fn dial(
        &self,
        shared: &Shared,
        dst: SocketAddr,
        handshake_timeout: Duration,
        generation: u64,
    ) -> Result<Result<PooledConn, (Upstream, SpiffeId)>, ConnectError> {
        let conn = connect_tls(
            shared,
            dst,
            shared.tls.client_mux.clone(),
            handshake_timeout,
        )
        .await?;
        if !conn.mux {
            if let Ok(mut m) = self.no_mux.lock() {
                if m.len() >= MAX_PEERS {
                    m.clear();
                }
                m.insert(dst.ip(), ());
            }
            return Ok(Err((Upstream::Tls(Box::new(conn.stream)), conn.peer)));
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
        let peer = conn.peer.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(%dst, error = %e, "pooled connection ended");
            }
        });
        shared
            .metrics
            .mux_connections
            .get_or_create(&crate::metrics::DirLabels {
                direction: OUTBOUND,
            })
            .inc();
        info!(%dst, %peer, "pooled connection to a peer proxy opened");
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Ok(Ok(PooledConn {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            sender,
            peer,
            generation,
        }))
    }
}

enum StreamError {
    Stale,
    Refused(String),
    Hyper(hyper::Error),
    TimedOut,
}

/// Opens one CONNECT stream naming the app connection's original destination.
async fn stream(
    mut sender: SendRequest<Empty<Bytes>>,
    dst: SocketAddr,
) -> Result<TokioIo<hyper::upgrade::Upgraded>, StreamError> {
    sender.ready().await.map_err(StreamError::Hyper)?;
    let req = Request::builder()
        .method(Method::CONNECT)
        .uri(dst.to_string())
        .body(Empty::<Bytes>::new())
        .map_err(|e| StreamError::Refused(e.to_string()))?;
    let mut resp = sender.send_request(req).await.map_err(StreamError::Hyper)?;
    match resp.status() {
        StatusCode::OK => {}
        StatusCode::SERVICE_UNAVAILABLE if resp.headers().contains_key(RETRY_HEADER) => {
            return Err(StreamError::Stale)
        }
        status => {
            let why = match status {
                StatusCode::FORBIDDEN => "denied by the peer's policy".to_owned(),
                StatusCode::SERVICE_UNAVAILABLE => "the peer's app is unreachable".to_owned(),
                other => format!("status {other}"),
            };
            return Err(StreamError::Refused(why));
        }
    }
    hyper::upgrade::on(&mut resp)
        .await
        .map(TokioIo::new)
        .map_err(StreamError::Hyper)
}
