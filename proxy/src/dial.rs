//! Dialing peers: plain TCP, and the mTLS handshake with a peer's meshlet proxy, with the
//! errors either can end in. Used by the outbound connector and the pooled client, and by the
//! inbound side to reach the app and by `locate`.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use meshlet_identity::{IdentityStore, SpiffeId};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::metrics::Metrics;
use crate::metrics::OUTBOUND;
use crate::outbound::mesh_port::Answered;
use crate::pooled_stream::PooledStream;
use crate::read_ahead::ReadAhead;
use crate::reason::Reason;
use crate::tls::{self, TlsConfigs, ALPN_MESH, ALPN_MUX};

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot connect to {dst}: {err}")]
    Connect { dst: SocketAddr, err: io::Error },
    #[error("TLS handshake with {dst} timed out after {after:?}")]
    HandshakeTimeout { dst: SocketAddr, after: Duration },
    #[error("TLS handshake with {dst} failed ({}): {err}", reason.label())]
    Handshake {
        dst: SocketAddr,
        reason: Reason,
        err: io::Error,
    },
    #[error("{dst} completed TLS but is not a meshlet proxy (no meshlet ALPN)")]
    NotMesh { dst: SocketAddr },
    #[error("{dst} answered as a meshlet proxy but its certificate was refused ({}): {err}", reason.label())]
    Untrusted {
        dst: SocketAddr,
        reason: Reason,
        err: rustls::Error,
    },
    #[error("{dst} presented {got}, which is not among the identities pinned for it ({allowed})")]
    IdentityMismatch {
        dst: SocketAddr,
        got: String,
        allowed: String,
    },
    #[error("the peer proxy at {dst} did not answer a stream request within {after:?}")]
    StreamTimeout { dst: SocketAddr, after: Duration },
    #[error("the peer proxy refused a stream to {dst}: {why}")]
    StreamRefused { dst: SocketAddr, why: String },
    #[error("pooled connection to {dst} failed: {err}")]
    Pool { dst: SocketAddr, err: h2::Error },
}

impl ConnectError {
    pub fn reason(&self) -> Reason {
        match self {
            ConnectError::Connect { .. } => Reason::ConnectFailed,
            ConnectError::HandshakeTimeout { .. } => Reason::Timeout,
            ConnectError::Handshake { reason, .. } => *reason,
            ConnectError::NotMesh { .. } => Reason::NotMesh,
            ConnectError::Untrusted { reason, .. } => *reason,
            ConnectError::IdentityMismatch { .. } => Reason::IdentityMismatch,
            ConnectError::StreamTimeout { .. } => Reason::StreamTimeout,
            ConnectError::StreamRefused { .. } => Reason::StreamRefused,
            ConnectError::Pool { .. } => Reason::PoolError,
        }
    }

    /// A TLS-level failure (as opposed to TCP, or a peer that answered but said no).
    pub fn is_handshake_failure(&self) -> bool {
        matches!(
            self,
            ConnectError::HandshakeTimeout { .. }
                | ConnectError::Handshake { .. }
                | ConnectError::NotMesh { .. }
                | ConnectError::Untrusted { .. }
                | ConnectError::IdentityMismatch { .. }
        )
    }

    /// For `auto`: the destination demonstrably does not speak meshlet, so plaintext may be
    /// sent to it. Only its own answer to our ClientHello proves that: something that is not
    /// TLS, TLS without meshlet's ALPN (completed, or refused with an alert that says so), or
    /// a close or reset. A timeout proves nothing (a busy or flooded meshlet peer is silent
    /// too), and a certificate or identity failure is a meshlet peer we must not trust.
    pub fn peer_is_not_mesh(&self) -> bool {
        match self {
            ConnectError::NotMesh { .. } => true,
            ConnectError::Handshake { reason, .. } => reason.says_not_mesh(),
            _ => false,
        }
    }
}

/// TCP connect with a timeout, Nagle off.
pub async fn connect_tcp(dst: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(dst))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connect timed out after {timeout:?}"),
            )
        })??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// An authenticated connection to a peer proxy.
pub struct MeshConn {
    pub stream: TlsStream<ReadAhead<TcpStream>>,
    pub peer: SpiffeId,
    /// When the peer's certificate chain expires.
    pub peer_not_after: std::time::SystemTime,
    /// The peer chose the pooled transport.
    pub mux: bool,
}

/// Opens authenticated connections to peer proxies. Built once per proxy.
pub struct Dialer {
    pub tls: TlsConfigs,
    pub store: Arc<IdentityStore>,
    pub metrics: Arc<Metrics>,
    pub connect_timeout: Duration,
}

impl Dialer {
    /// Connects to `dst` and completes an mTLS handshake with the meshlet proxy there. With
    /// `probe`, a certificate failure is reported only once the server has shown meshlet's ALPN
    /// (see [`crate::tls::TlsConfigs::probe`]), so that `auto` can tell the two apart, and a
    /// completed handshake is recorded in it.
    pub async fn connect_tls(
        &self,
        dst: SocketAddr,
        config: Arc<ClientConfig>,
        handshake_timeout: Duration,
        probe: Option<&Answered>,
    ) -> Result<MeshConn, ConnectError> {
        connect_tls(self, dst, config, handshake_timeout, probe).await
    }

    /// An mTLS connection of its own to the peer at `dst` (ALPN `meshlet/1`).
    pub async fn own_connection(
        &self,
        dst: SocketAddr,
        pins: Option<&[SpiffeId]>,
        handshake_timeout: Duration,
        probe: Option<&Answered>,
    ) -> Result<(Upstream, SpiffeId), ConnectError> {
        // Boxed: the handshake's state is large and short-lived; inline, it would size the task
        // of every outbound connection for its whole life.
        let conn =
            Box::pin(self.connect_tls(dst, self.tls.client.clone(), handshake_timeout, probe))
                .await?;
        check_pins(dst, &conn.peer, pins)?;
        Ok((Upstream::Tls(Box::new(conn.stream)), conn.peer))
    }
}

async fn connect_tls(
    dialer: &Dialer,
    dst: SocketAddr,
    config: Arc<ClientConfig>,
    handshake_timeout: Duration,
    probe: Option<&Answered>,
) -> Result<MeshConn, ConnectError> {
    let (config, verdict) = if probe.is_some() {
        let (config, verdict) = dialer.tls.probe(&config);
        (config, Some(verdict))
    } else {
        (config, None)
    };
    let tcp = connect_tcp(dst, dialer.connect_timeout)
        .await
        .map_err(|err| ConnectError::Connect { dst, err })?;
    let started = Instant::now();
    let handshake = TlsConnector::from(config)
        .connect(ServerName::IpAddress(dst.ip().into()), ReadAhead::new(tcp));
    let mut stream = match tokio::time::timeout(handshake_timeout, handshake).await {
        Err(_) => {
            return Err(ConnectError::HandshakeTimeout {
                dst,
                after: handshake_timeout,
            })
        }
        Ok(Err(err)) => {
            return Err(ConnectError::Handshake {
                dst,
                reason: tls::failure_reason(&err),
                err,
            })
        }
        Ok(Ok(s)) => s,
    };
    if let Some(answered) = probe {
        answered.set();
    }
    let conn = stream.get_ref().1;
    let mux = match conn.alpn_protocol() {
        Some(p) if p == ALPN_MUX => true,
        Some(p) if p == ALPN_MESH => false,
        _ => return Err(ConnectError::NotMesh { dst }),
    };
    if let Some(err) = verdict.and_then(|v| v.failure()) {
        return Err(ConnectError::Untrusted {
            dst,
            reason: Reason::Tls(meshlet_identity::verifiers::failure_of(&err)),
            err,
        });
    }
    // The verifier accepted the chain, so the leaf has exactly one valid SPIFFE ID.
    let Some(peer) = tls::peer_id(conn) else {
        return Err(ConnectError::NotMesh { dst });
    };
    let Some(peer_not_after) = conn
        .peer_certificates()
        .and_then(meshlet_identity::svid::chain_not_after)
    else {
        return Err(ConnectError::NotMesh { dst });
    };
    if mux {
        stream.get_mut().0.enable();
    }
    dialer
        .metrics
        .handshake_seconds
        .get_or_create(&crate::metrics::DirLabels::of(OUTBOUND))
        .observe(started.elapsed().as_secs_f64());
    Ok(MeshConn {
        stream,
        peer,
        peer_not_after,
        mux,
    })
}

/// Refuses a peer whose identity is not among the pinned ones.
pub fn check_pins(
    dst: SocketAddr,
    peer: &SpiffeId,
    pins: Option<&[SpiffeId]>,
) -> Result<(), ConnectError> {
    match pins {
        Some(pins) if !pins.contains(peer) => Err(ConnectError::IdentityMismatch {
            dst,
            got: peer.to_string(),
            allowed: pins
                .iter()
                .map(SpiffeId::as_str)
                .collect::<Vec<_>>()
                .join(", "),
        }),
        _ => Ok(()),
    }
}

/// The upstream side of a proxied app connection to a mesh peer.
pub enum Upstream {
    /// An mTLS connection of its own.
    Tls(Box<TlsStream<ReadAhead<TcpStream>>>),
    /// A stream over a pooled mTLS connection.
    Stream(PooledStream),
}

impl AsyncRead for Upstream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Upstream::Stream(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Upstream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Upstream::Stream(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Upstream::Stream(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Upstream::Stream(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
