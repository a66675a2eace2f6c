//! The pooled transport, client half (the server half is `inbound::pooled_server`, the wire
//! they share `pooled_wire`): app connections to a peer become HTTP/2 CONNECT streams
//! over one long-lived mTLS connection to that peer's proxy, so a new app connection costs no
//! TLS handshake.
//!
//! A pooled connection is keyed by the pod IP it reached (any captured port of a pod reaches the
//! same proxy), carries streams between exactly one pair of identities (ours at the time it was
//! made, and the peer's it proved), and is not reused once our identity or trust bundle has
//! changed: the next app connection opens a fresh one and the old one drains as its streams end.
//!
//! A pooled connection is filed under the address it was dialed to and nowhere else: whatever a
//! peer answers, it never carries streams meant for another pod.
//!
//! Virtual destinations (Service addresses that the node translates to a backend pod per TCP
//! connection) are learned when a connection dialed to one reaches a pod that refuses a stream
//! naming it (421); from then on app connections to them ride pooled connections dialed through
//! them, balanced over the backends those reached (`service`). Backends of the previous
//! release do not take such streams: app connections to a Service that has them are first
//! located (`locate`) and ride the pooled connection dialed to the located pod, which must
//! confirm the locate's token.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use http::{Method, Request, StatusCode};
use meshlet_identity::SpiffeId;
use tracing::{debug, info};

use super::first_bytes::FirstBytes;
use super::mesh_port::Answered;
use super::pooled_conn::{dial_pooled, Dialed, PooledConn};
use super::service::{Services, Taken, Through};
use crate::dial::{check_pins, ConnectError, Dialer, Upstream};
use crate::expiring::ExpiringMap;
use crate::locate;
use crate::metrics::OUTBOUND;
use crate::pooled_stream::PooledStream;
use crate::pooled_wire::{
    LOCATED_HEADER, NOT_LOCATED_HEADER, REACHED_HEADER, RETRY_HEADER, THROUGH_HEADER,
};

/// How long a destination found to be virtual is remembered. Service addresses are stable; the
/// bound only keeps a reused address from being treated as virtual forever.
const VIRTUAL_TTL: Duration = Duration::from_secs(600);

type Slot = Arc<tokio::sync::Mutex<Option<PooledConn>>>;

/// Peers remembered before dead entries are swept, so talking to many addresses over time
/// cannot grow the pool without bound.
const MAX_PEERS: usize = 1024;

pub struct Pool {
    dialer: Arc<Dialer>,
    slots: Mutex<HashMap<IpAddr, Slot>>,
    /// Peers that answered the pooled ALPN with the per-connection one.
    no_mux: Mutex<HashMap<IpAddr, ()>>,
    /// Destinations found to be virtual, until when.
    virtual_dsts: ExpiringMap<SocketAddr, Virtual>,
    /// The pooled connections dialed through virtual destinations.
    services: Services,
}

/// Where a stream is sent and how it was decided.
enum Target {
    /// The destination as the app dialed it (a pod address, as far as we know).
    AsDialed(SocketAddr),
    /// A virtual destination whose pod for this connection is still to be located.
    ToLocate,
    /// The pod a virtual destination led to this time, and the token it must confirm.
    Located(locate::Answer),
}

/// How app connections to a virtual destination are carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Virtual {
    /// Over pooled connections dialed through it, balanced over the backends they reached.
    Spread,
    /// Each is located, then rides the pooled connection to the pod that confirms it: for a
    /// destination with backends of the previous release, which do not take through streams.
    /// Tried again after [`THROUGH_TTL`].
    Locate,
    /// Each takes mTLS of its own through the destination: its pods cannot be located or do
    /// not confirm their locates (a node that source-NATs Service traffic, backends without
    /// meshlet, or an answer that lied). Retried after [`THROUGH_TTL`].
    Through,
}

/// How long "locating does not work here" is remembered: short, so that a passing failure
/// costs little, and long enough that a destination where it never works pays a failed locate
/// about once a minute rather than on every connection.
const THROUGH_TTL: Duration = Duration::from_secs(60);

impl Pool {
    pub fn new(dialer: Arc<Dialer>) -> Self {
        Pool {
            slots: Mutex::default(),
            no_mux: Mutex::default(),
            virtual_dsts: ExpiringMap::new(MAX_PEERS),
            services: Services::new(dialer.clone()),
            dialer,
        }
    }

    fn slot(&self, ip: IpAddr) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if slots.len() >= MAX_PEERS && !slots.contains_key(&ip) {
            // Forget peers whose pooled connection is gone (a slot being filled is kept).
            slots.retain(|_, slot| match slot.try_lock() {
                Ok(conn) => conn.as_ref().is_some_and(|c| !c.is_closed()),
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

    fn remember_virtual(&self, dst: SocketAddr, how: Virtual) {
        let before = self.virtual_dsts.get(dst);
        let ttl = match how {
            Virtual::Spread => VIRTUAL_TTL,
            Virtual::Locate | Virtual::Through => THROUGH_TTL,
        };
        self.virtual_dsts.insert(dst, how, ttl);
        if before != Some(how) {
            match how {
                Virtual::Spread => {
                    info!(%dst, "virtual destination (translated by the node): connections ride pooled connections dialed through it")
                }
                Virtual::Locate => {
                    info!(%dst, secs = THROUGH_TTL.as_secs(), "virtual destination with backends of the previous release: each connection is located first for a while")
                }
                Virtual::Through => {
                    info!(%dst, secs = THROUGH_TTL.as_secs(), "virtual destination whose pods cannot be located or did not confirm a locate: connections take mTLS of their own through it for a while")
                }
            }
        }
    }

    /// mTLS of its own to `dst`, through the node's translation.
    async fn through(
        &self,
        dst: SocketAddr,
        pins: Option<&[SpiffeId]>,
        handshake_timeout: Duration,
        probe: Option<&Answered>,
    ) -> Result<(Upstream, SpiffeId), ConnectError> {
        self.dialer
            .own_connection(dst, pins, handshake_timeout, probe)
            .await
    }

    /// A stream to `dst` over a pooled connection (opening one if needed), or, for a peer that
    /// does not speak the pooled transport or a virtual destination that cannot be located, a
    /// connection of its own. `probe`: see [`crate::tls::TlsConfigs::probe`]. `first`: the
    /// app's first bytes, sent ahead of the peer's answer only on a stream over a connection
    /// dialed to `dst` itself (see `first_bytes`).
    pub async fn open(
        &self,
        dst: SocketAddr,
        pins: Option<&[SpiffeId]>,
        handshake_timeout: Duration,
        probe: Option<&Answered>,
        first: &mut FirstBytes<'_>,
    ) -> Result<(Upstream, SpiffeId), ConnectError> {
        if self.peer_lacks_mux(dst.ip()) {
            return self.through(dst, pins, handshake_timeout, probe).await;
        }
        let mut target = match self.virtual_dsts.get(dst) {
            None => Target::AsDialed(dst),
            Some(Virtual::Spread) => {
                // Boxed: inline, its state would size every app connection's task.
                return Box::pin(self.spread(dst, pins, handshake_timeout, probe, first)).await;
            }
            Some(Virtual::Locate) => Target::ToLocate,
            Some(Virtual::Through) => {
                return self.through(dst, pins, handshake_timeout, probe).await
            }
        };
        // A stale or broken pooled connection is replaced once.
        let mut retried = false;
        loop {
            let (addr, token) = match target {
                Target::AsDialed(a) => (a, None),
                Target::Located(answer) => (answer.pod, Some(answer.token)),
                Target::ToLocate => match self.locate(dst).await {
                    Some(answer) => {
                        // Only meshlet answers a locate request.
                        if let Some(answered) = probe {
                            answered.set();
                        }
                        target = Target::Located(answer);
                        (answer.pod, Some(answer.token))
                    }
                    None => {
                        self.remember_virtual(dst, Virtual::Through);
                        return self.through(dst, pins, handshake_timeout, probe).await;
                    }
                },
            };
            // Keyed by the address dialed, never re-filed: a pooled connection only ever
            // carries streams to the pod that the network routed its own dial to.
            let conn = match self.pooled(addr, handshake_timeout, probe).await? {
                Dialed::Pooled(conn) => conn,
                Dialed::Own(upstream, peer) if token.is_none() => {
                    check_pins(dst, &peer, pins)?;
                    return Ok((upstream, peer));
                }
                // A located pod that declines pooling cannot confirm the locate on a
                // connection of its own: go through the destination itself.
                Dialed::Own(..) => return self.through(dst, pins, handshake_timeout, probe).await,
            };
            check_pins(dst, &conn.peer, pins)?;
            // A located pod is only as good as the answer that named it until it confirms the
            // locate's token: it gets nothing of the app before that.
            let carries = matches!(target, Target::AsDialed(_));
            let early = carries.then_some(&mut *first);
            let err = match self
                .open_stream(&conn, addr, Name::Token(token), handshake_timeout, early)
                .await
            {
                Ok((io, _)) => {
                    if carries {
                        first.accepted();
                    }
                    return Ok((Upstream::Stream(io), conn.peer));
                }
                Err(err) => err,
            };
            match err {
                StreamError::Misdirected if matches!(target, Target::AsDialed(_)) => {
                    // The connection dialed to `dst` reached a pod that `dst` is not an address
                    // of: the node translated it, so `dst` is virtual. Whatever else the peer
                    // says is not used. The connection was dialed to `dst`, so it may carry
                    // streams to `dst`, as the first of the samples of its backends.
                    self.remember_virtual(dst, Virtual::Spread);
                    self.forget(addr.ip(), conn.id).await;
                    self.services.adopt(dst, conn);
                    return Box::pin(self.spread(dst, pins, handshake_timeout, probe, first)).await;
                }
                StreamError::Misdirected | StreamError::NotLocated if token.is_some() => {
                    // The pod named by the locate answer did not confirm it: the answer was
                    // wrong or a lie, or the node hides our address. Only the destination
                    // itself decides where this goes.
                    debug!(%dst, named = %addr, "the pod a locate answer named did not confirm it");
                    self.remember_virtual(dst, Virtual::Through);
                    return self.through(dst, pins, handshake_timeout, probe).await;
                }
                StreamError::Misdirected | StreamError::NotLocated => {
                    self.forget(addr.ip(), conn.id).await;
                    return Err(ConnectError::StreamRefused {
                        dst,
                        why: format!("the peer at {addr} says the stream is not for it"),
                    });
                }
                StreamError::Stale | StreamError::H2(_) | StreamError::TimedOut if !retried => {
                    // Stale on the peer's side, closed under us (GOAWAY, reset), or silent: one
                    // fresh connection is worth a try.
                    debug!(%dst, %addr, "pooled connection unusable; reconnecting");
                    retried = true;
                    self.forget(addr.ip(), conn.id).await;
                }
                StreamError::TimedOut => {
                    self.forget(addr.ip(), conn.id).await;
                    return Err(ConnectError::StreamTimeout {
                        dst,
                        after: handshake_timeout,
                    });
                }
                StreamError::Stale => {
                    return Err(ConnectError::StreamRefused {
                        dst,
                        why: "pooled connection stale twice".into(),
                    })
                }
                StreamError::Refused(why) => return Err(ConnectError::StreamRefused { dst, why }),
                StreamError::H2(err) => {
                    self.forget(addr.ip(), conn.id).await;
                    return Err(ConnectError::Pool { dst, err });
                }
            }
        }
    }

    /// A stream to the virtual destination `dst` over a pooled connection dialed through it
    /// (see `service`). Backends of the previous release answer 421: the destination is then
    /// located for a while instead.
    async fn spread(
        &self,
        dst: SocketAddr,
        pins: Option<&[SpiffeId]>,
        handshake_timeout: Duration,
        probe: Option<&Answered>,
        first_bytes: &mut FirstBytes<'_>,
    ) -> Result<(Upstream, SpiffeId), ConnectError> {
        // A sample that closed under us (its backend went away) is dropped and another taken;
        // a few of them can be dead at once.
        let mut tries = 0;
        loop {
            tries += 1;
            let Taken { conn, first } = match self.services.take(dst, handshake_timeout).await? {
                Through::Sample(taken) => taken,
                Through::Own(upstream, peer) => {
                    check_pins(dst, &peer, pins)?;
                    return Ok((upstream, peer));
                }
            };
            if let Err(e) = check_pins(dst, &conn.peer, pins) {
                self.services.drop_sample(dst, conn.id);
                return Err(e);
            }
            // An authenticated meshlet peer behind this address: not silent.
            if let Some(answered) = probe {
                answered.set();
            }
            // Dialed through `dst` itself: the stream ends where the node sent the connection.
            let err = match self
                .open_stream(
                    &conn,
                    dst,
                    Name::Through,
                    handshake_timeout,
                    Some(&mut *first_bytes),
                )
                .await
            {
                Ok((io, reached)) => {
                    first_bytes.accepted();
                    if first {
                        self.services
                            .reached(dst, &conn, reached, handshake_timeout);
                    }
                    return Ok((Upstream::Stream(io), conn.peer));
                }
                Err(err) => err,
            };
            self.services.drop_sample(dst, conn.id);
            match err {
                StreamError::Misdirected => {
                    // A backend of the previous release: it does not know through streams.
                    self.services.forget(dst);
                    self.remember_virtual(dst, Virtual::Locate);
                    return Box::pin(self.open(dst, pins, handshake_timeout, probe, first_bytes))
                        .await;
                }
                StreamError::Stale | StreamError::H2(_) | StreamError::TimedOut
                    if tries < SPREAD_TRIES =>
                {
                    debug!(%dst, "pooled connection through a Service unusable; taking another");
                }
                StreamError::TimedOut => {
                    return Err(ConnectError::StreamTimeout {
                        dst,
                        after: handshake_timeout,
                    })
                }
                StreamError::Stale | StreamError::NotLocated => {
                    return Err(ConnectError::StreamRefused {
                        dst,
                        why: "no pooled connection through the Service took the stream".into(),
                    })
                }
                StreamError::Refused(why) => return Err(ConnectError::StreamRefused { dst, why }),
                StreamError::H2(err) => return Err(ConnectError::Pool { dst, err }),
            }
        }
    }

    /// Opens a stream on `conn` (counted once open), sending the app's `early` bytes ahead of
    /// the answer. A peer that vanished without closing (or hangs) would leave the app
    /// connection waiting for the keep-alive to notice: a stream is due within the handshake
    /// timeout.
    async fn open_stream(
        &self,
        conn: &PooledConn,
        dst: SocketAddr,
        name: Name,
        handshake_timeout: Duration,
        early: Option<&mut FirstBytes<'_>>,
    ) -> Result<(PooledStream, Option<SocketAddr>), StreamError> {
        let opening = stream(conn.sender.clone(), dst, name, early);
        let opened = tokio::time::timeout(handshake_timeout, opening)
            .await
            .unwrap_or(Err(StreamError::TimedOut));
        if opened.is_ok() {
            self.dialer
                .metrics
                .mux_streams
                .get_or_create(&crate::metrics::DirLabels::of(OUTBOUND))
                .inc();
        }
        opened
    }

    /// The pod a virtual destination leads to for this connection; `None` (logged) when it
    /// cannot be told, e.g. a backend without meshlet.
    async fn locate(&self, dst: SocketAddr) -> Option<locate::Answer> {
        match locate::locate(dst, self.dialer.connect_timeout).await {
            Ok(answer) => Some(answer),
            Err(e) => {
                debug!(%dst, error = %e, "cannot locate the pod behind a virtual destination; connecting through it");
                None
            }
        }
    }

    /// The live pooled connection to `dst`'s IP, opened when missing, dead or stale.
    async fn pooled(
        &self,
        dst: SocketAddr,
        handshake_timeout: Duration,
        probe: Option<&Answered>,
    ) -> Result<Dialed, ConnectError> {
        let slot = self.slot(dst.ip());
        let mut guard = slot.lock().await;
        let generation = self.dialer.store.generation();
        if let Some(conn) = guard.as_ref() {
            if conn.usable(generation) && conn.born.elapsed() < REDIAL_AFTER {
                // An authenticated meshlet peer at this address: not silent.
                if let Some(answered) = probe {
                    answered.set();
                }
                return Ok(Dialed::Pooled(conn.clone()));
            }
        }
        *guard = None;
        // Boxed: dialing is rare and its state large; inline, it would size every app
        // connection's task.
        let dialed = Box::pin(dial_pooled(
            &self.dialer,
            dst,
            handshake_timeout,
            generation,
            probe,
        ))
        .await?;
        if let Dialed::Own(..) = &dialed {
            if let Ok(mut m) = self.no_mux.lock() {
                if m.len() >= MAX_PEERS {
                    m.clear();
                }
                m.insert(dst.ip(), ());
            }
        }
        if let Dialed::Pooled(pooled) = &dialed {
            *guard = Some(pooled.clone());
        }
        Ok(dialed)
    }
}

/// How long a pooled connection dialed to a destination not known to be virtual takes new
/// streams; then the next one is dialed afresh (streams under way stay where they are). A
/// Service address whose first pooled connection reached a backend that accepts streams naming
/// the Service address (a lying one: a meshlet backend refuses them) is thereby learned within
/// this time, as soon as a fresh dial reaches an honest backend; for a pod address it costs one
/// handshake per peer in this time.
const REDIAL_AFTER: Duration = Duration::from_secs(30);

/// How often a stream to a Service is tried on another of its pooled connections.
const SPREAD_TRIES: usize = 3;

enum StreamError {
    Stale,
    /// The peer's pod does not have the named address.
    Misdirected,
    /// The peer holds no locate token of ours for the named address.
    NotLocated,
    Refused(String),
    H2(h2::Error),
    TimedOut,
}

/// How a stream says where it goes.
enum Name {
    /// To the named address on the peer's pod, with the token of the locate that found it, if
    /// it was located.
    Token(Option<u128>),
    /// To wherever the pooled connection arrived (it was dialed through the named Service).
    Through,
}

/// Opens one CONNECT stream naming the app connection's destination, with the app's `early`
/// bytes sent while the peer answers (it judges the stream before it reads them, and drops
/// them if it refuses); for a through stream, also the backend the peer says the connection
/// reached.
async fn stream(
    sender: SendRequest<Bytes>,
    dst: SocketAddr,
    name: Name,
    early: Option<&mut FirstBytes<'_>>,
) -> Result<(PooledStream, Option<SocketAddr>), StreamError> {
    // Waits while the peer's limit of concurrent streams is reached.
    let mut sender = sender.ready().await.map_err(StreamError::H2)?;
    let mut req = Request::builder()
        .method(Method::CONNECT)
        .uri(dst.to_string());
    match name {
        Name::Token(Some(token)) => req = req.header(LOCATED_HEADER, locate::token_header(token)),
        Name::Token(None) => {}
        Name::Through => req = req.header(THROUGH_HEADER, "1"),
    }
    let req = req
        .body(())
        .map_err(|e| StreamError::Refused(e.to_string()))?;
    let (response, mut send) = sender.send_request(req, false).map_err(StreamError::H2)?;
    let resp = match early {
        Some(first) => first.send_until(&mut send, response).await,
        None => response.await,
    }
    .map_err(StreamError::H2)?;
    match resp.status() {
        StatusCode::OK => {}
        StatusCode::SERVICE_UNAVAILABLE if resp.headers().contains_key(RETRY_HEADER) => {
            return Err(StreamError::Stale)
        }
        StatusCode::MISDIRECTED_REQUEST => return Err(StreamError::Misdirected),
        StatusCode::FORBIDDEN if resp.headers().contains_key(NOT_LOCATED_HEADER) => {
            return Err(StreamError::NotLocated)
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
    let reached = resp
        .headers()
        .get(REACHED_HEADER)
        .and_then(|v| v.to_str().ok()?.parse().ok());
    Ok((PooledStream::new(send, resp.into_body()), reached))
}
