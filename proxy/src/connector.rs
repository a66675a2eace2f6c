//! Opening connections to upstreams: plain TCP, or mTLS to the peer's meshlet proxy.
//!
//! This is the seam where the transport between proxies is chosen. Today: one mTLS connection
//! per app connection (ALPN `meshlet/1`). A pooled, multiplexed transport slots in beside
//! [`connect_mesh`] with its own ALPN.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use meshlet_identity::SpiffeId;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::metrics::OUTBOUND;
use crate::tls::{self, ALPN_MESH};
use crate::Shared;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot connect to {dst}: {err}")]
    Connect { dst: SocketAddr, err: io::Error },
    #[error("TLS handshake with {dst} timed out after {after:?}")]
    HandshakeTimeout { dst: SocketAddr, after: Duration },
    #[error("TLS handshake with {dst} failed ({reason}): {err}")]
    Handshake {
        dst: SocketAddr,
        reason: &'static str,
        err: io::Error,
    },
    #[error("{dst} completed TLS but is not a meshlet proxy (no meshlet ALPN)")]
    NotMesh { dst: SocketAddr },
    #[error("{dst} presented {got}, which is not among the identities pinned for it ({allowed})")]
    IdentityMismatch {
        dst: SocketAddr,
        got: String,
        allowed: String,
    },
}

impl ConnectError {
    pub fn reason(&self) -> &'static str {
        match self {
            ConnectError::Connect { .. } => "connect_failed",
            ConnectError::HandshakeTimeout { .. } => "timeout",
            ConnectError::Handshake { reason, .. } => reason,
            ConnectError::NotMesh { .. } => "not_mesh",
            ConnectError::IdentityMismatch { .. } => "identity_mismatch",
        }
    }

    /// For `auto`: the peer did not prove to be a meshlet proxy (and was reachable).
    pub fn peer_is_not_mesh(&self) -> bool {
        !matches!(self, ConnectError::Connect { .. })
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

/// Connects to `dst` and completes an mTLS handshake with the meshlet proxy there. Nothing of
/// the application is sent: the caller starts copying only after this returns `Ok`.
pub async fn connect_mesh(
    shared: &Shared,
    dst: SocketAddr,
    pins: Option<&[SpiffeId]>,
    handshake_timeout: Duration,
) -> Result<(TlsStream<TcpStream>, SpiffeId), ConnectError> {
    let tcp = connect_tcp(dst, shared.config.timeouts.connect)
        .await
        .map_err(|err| ConnectError::Connect { dst, err })?;
    let started = Instant::now();
    let connector = TlsConnector::from(shared.tls.client.clone());
    let handshake = connector.connect(ServerName::IpAddress(dst.ip().into()), tcp);
    let stream = match tokio::time::timeout(handshake_timeout, handshake).await {
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
    let conn = stream.get_ref().1;
    if conn.alpn_protocol() != Some(ALPN_MESH) {
        return Err(ConnectError::NotMesh { dst });
    }
    // The verifier accepted the chain, so the leaf has exactly one valid SPIFFE ID.
    let Some(id) = tls::peer_id(conn) else {
        return Err(ConnectError::NotMesh { dst });
    };
    if let Some(pins) = pins {
        if !pins.contains(&id) {
            let allowed = pins
                .iter()
                .map(SpiffeId::as_str)
                .collect::<Vec<_>>()
                .join(", ");
            return Err(ConnectError::IdentityMismatch {
                dst,
                got: id.to_string(),
                allowed,
            });
        }
    }
    shared
        .metrics
        .handshake_seconds
        .get_or_create(&crate::metrics::DirLabels {
            direction: OUTBOUND,
        })
        .observe(started.elapsed().as_secs_f64());
    Ok((stream, id))
}
