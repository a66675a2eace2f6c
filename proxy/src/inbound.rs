//! Inbound: a caller's connection to an app port, redirected to us, is identified, authorized
//! and passed to the app.
//!
//! accept → original destination → first bytes → (mesh TLS: handshake, caller's SPIFFE ID |
//! plaintext or foreign TLS: refused in strict mode) → policy → app (bytes, or HTTP per request).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use meshlet_identity::IdentityStore;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tracing::debug;

use crate::config::{InboundMode, Timeouts};
use crate::connector;
use crate::copy;
use crate::detect::{self, Protocol};
use crate::http::AppClients;
use crate::local_addrs::LocalAddrs;
use crate::metrics::Metrics;
use crate::metrics::{DirLabels, INBOUND};
use crate::on_this_pod::ProxyPorts;
use crate::orig_dst::OriginalDst;
use crate::policy::Access;
use crate::policy::Policy;
use crate::read_ahead::ReadAhead;
use crate::refusal::Refusal;
use crate::rewind::Rewind;
use crate::{
    http, lifecycle::Lifecycle, locate, mux, on_this_pod, prevent_loop, require_http, require_mesh,
    tls,
};

/// What the inbound side needs, built once per proxy.
pub struct Inbound {
    pub mode: InboundMode,
    /// Our own inbound port (never a destination).
    pub port: u16,
    pub timeouts: Timeouts,
    pub tls: Arc<ServerConfig>,
    pub policy: Policy,
    /// This pod's addresses: the only ones the inbound side dials.
    pub local: LocalAddrs,
    pub proxy_ports: ProxyPorts,
    /// Connections and pooled streams handled at once (`inbound.max_connections`).
    pub limit: Arc<Semaphore>,
    pub http: AppClients,
    pub store: Arc<IdentityStore>,
    pub metrics: Arc<Metrics>,
    pub lifecycle: Arc<Lifecycle>,
    /// Tokens of the locates this proxy answered, for the pooled streams that follow them.
    pub located: locate::Located,
}

pub async fn handle(
    inbound: Arc<Inbound>,
    conn: TcpStream,
    peer: SocketAddr,
    dst_mode: OriginalDst,
    _permit: OwnedSemaphorePermit,
) {
    let _active = inbound.metrics.track(INBOUND);
    if let Err(refusal) = serve(&inbound, conn, peer, dst_mode).await {
        refusal.record(&inbound.metrics, INBOUND, "connection", peer);
    }
}

/// Admission (destination, first bytes, mode), then the mesh handshake or a plaintext pass.
async fn serve(
    inbound: &Arc<Inbound>,
    mut conn: TcpStream,
    peer: SocketAddr,
    dst_mode: OriginalDst,
) -> Result<(), Refusal> {
    let dst = dst_mode.of(&conn, peer).map_err(|e| {
        Refusal::new(
            "no_original_dst",
            format!("not a redirected connection: {e}"),
        )
    })?;
    let dst = match dst_mode {
        OriginalDst::Kernel => on_this_pod::check(&inbound.local, &inbound.proxy_ports, dst)
            .map_err(|e| Refusal::new(e.reason(), e.to_string()).at(dst))?,
        // A fixed destination is the operator's, not the caller's.
        OriginalDst::Fixed(dst) => {
            prevent_loop::inbound_fixed(dst, &[inbound.port])?;
            dst
        }
    };

    let (protocol, first_bytes) = sniff(&mut conn, inbound)
        .await
        .map_err(|e| Refusal::new("no_data", format!("caller sent nothing usable: {e}")).at(dst))?;
    match protocol {
        Protocol::Locate(request) => {
            // Not app traffic: nothing reaches the app, so neither mode nor policy applies.
            debug!(%peer, %dst, "locate: telling a peer proxy which address it reached");
            if let locate::Request::V2 { token } = request {
                inbound.located.remember(token, peer.ip(), dst);
            }
            let _ = conn.write_all(locate::answer(dst).as_bytes()).await;
            Ok(())
        }
        Protocol::Mesh => {
            let stream = Rewind::new(first_bytes, conn);
            mesh(inbound, stream, peer, dst, dst_mode)
                .await
                .map_err(|r| r.at(dst))
        }
        other => {
            require_mesh::check(inbound.mode, other).map_err(|r| r.at(dst))?;
            let access = inbound
                .policy
                .check_connection(None, dst.port())
                .map_err(|d| Refusal::policy(d.reason, d.detail).at(dst))?;
            if access == Access::Http {
                require_http::check(other, &first_bytes).map_err(|r| r.at(dst))?;
            }
            debug!(%peer, %dst, ?other, ?access, "permissive: an unauthenticated caller");
            inbound.metrics.opened(INBOUND, "plain");
            let caller = Rewind::new(first_bytes, conn);
            match access {
                Access::Tcp => to_app(inbound, caller, dst).await,
                Access::Http => {
                    Box::pin(http::serve_inbound(
                        inbound.clone(),
                        caller,
                        peer,
                        dst,
                        None,
                    ))
                    .await;
                    Ok(())
                }
            }
        }
    }
}

/// Reads the caller's first bytes until the protocol is known. `Incomplete` means the caller
/// said nothing before the timeout (a server-speaks-first protocol, or an idle client).
///
/// In permissive mode a caller that stays silent for `timeouts.server_first` is not a meshlet
/// proxy, which sends its ClientHello as soon as it is connected: it is a plaintext client of an
/// app that speaks first (MySQL, SMTP, FTP), and waiting longer would only delay the app's
/// greeting. Strict mode refuses it after `timeouts.first_byte`, as before.
async fn sniff(conn: &mut TcpStream, inbound: &Inbound) -> std::io::Result<(Protocol, Vec<u8>)> {
    let start = tokio::time::Instant::now();
    let deadline = start + inbound.timeouts.first_byte;
    let silence = match inbound.mode {
        InboundMode::Permissive => start + inbound.timeouts.server_first,
        InboundMode::Strict => deadline,
    }
    .min(deadline);
    // A meshlet proxy writes a locate request whole, at once: a prefix of one that goes no
    // further is waited for no longer than silence is.
    let locate_prefix = |buf: &[u8]| locate::parse_request(buf) == locate::Parse::Incomplete;
    let mut buf = Vec::with_capacity(2048);
    loop {
        let deadline = if buf.is_empty() || locate_prefix(&buf) {
            silence
        } else {
            deadline
        };
        if buf.len() == buf.capacity() {
            if buf.len() >= detect::MAX_HELLO {
                return Ok((Protocol::ForeignTls, buf));
            }
            buf.reserve((buf.len() * 2).min(detect::MAX_HELLO) - buf.len());
        }
        match tokio::time::timeout_at(deadline, conn.read_buf(&mut buf)).await {
            Err(_) => {
                let p = if buf.is_empty() {
                    Protocol::Incomplete
                } else if locate_prefix(&buf) {
                    // Not a locate request after all, and not TLS: plaintext.
                    Protocol::Plain
                } else {
                    match detect::classify(&buf) {
                        Protocol::Incomplete => Protocol::ForeignTls,
                        p => p,
                    }
                };
                return Ok((p, buf));
            }
            Ok(Err(e)) => return Err(e),
            Ok(Ok(0)) => {
                if buf.is_empty() {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "closed before sending anything",
                    ));
                }
                let p = detect::classify(&buf);
                return Ok((
                    if p == Protocol::Incomplete {
                        Protocol::Plain
                    } else {
                        p
                    },
                    buf,
                ));
            }
            Ok(Ok(_)) => match detect::classify(&buf) {
                Protocol::Incomplete => continue,
                p => return Ok((p, buf)),
            },
        }
    }
}

async fn mesh(
    inbound: &Arc<Inbound>,
    stream: Rewind<TcpStream>,
    peer: SocketAddr,
    dst: SocketAddr,
    dst_mode: OriginalDst,
) -> Result<(), Refusal> {
    let started = Instant::now();
    let acceptor = TlsAcceptor::from(inbound.tls.clone());
    // Boxed, like the result below: the handshake's state is large, and inline it would size
    // (and be copied with) the task of every inbound connection for its whole life.
    let handshake = Box::pin(tokio::time::timeout(
        inbound.timeouts.handshake,
        acceptor.accept(ReadAhead::new(stream)),
    ));
    let mut tls = match handshake.await {
        Err(_) => return Err(Refusal::handshake("timeout", "TLS handshake timed out")),
        Ok(Err(e)) => {
            return Err(Refusal::handshake(
                tls::failure_reason(&e),
                format!("TLS handshake failed: {e}"),
            ))
        }
        Ok(Ok(tls)) => Box::new(tls),
    };
    inbound
        .metrics
        .handshake_seconds
        .get_or_create(&DirLabels { direction: INBOUND })
        .observe(started.elapsed().as_secs_f64());
    let caller = tls::peer_id(tls.get_ref().1).ok_or_else(|| {
        Refusal::new(
            "bad_spiffe_id",
            "verified client certificate without a SPIFFE ID",
        )
    })?;
    let pooled = tls.get_ref().1.alpn_protocol() == Some(tls::ALPN_MUX);
    // The counterpart of Cilium's "Successfully authenticated" line, at debug level.
    debug!(%peer, %dst, %caller, pooled, "caller authenticated: mTLS handshake done, SVID verified");
    if pooled {
        let caller_not_after = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(meshlet_identity::svid::chain_not_after)
            .ok_or_else(|| {
                Refusal::new(
                    "bad_certificate",
                    "verified client chain without a readable expiry",
                )
                .by(&caller)
            })?;
        tls.get_mut().0.enable();
        // Pooled: each stream carries its own destination and is authorized on its own.
        // Boxed: the HTTP/2 server's state is only needed by this rare, long-lived connection;
        // inline, it would size every inbound connection's task.
        Box::pin(mux::serve(
            inbound.clone(),
            tls,
            peer,
            dst,
            caller,
            caller_not_after,
            dst_mode,
        ))
        .await;
        return Ok(());
    }
    let access = inbound
        .policy
        .check_connection(Some(&caller), dst.port())
        .map_err(|d| Refusal::policy(d.reason, d.detail).by(&caller))?;
    inbound.metrics.opened(INBOUND, "mtls");
    match access {
        Access::Tcp => to_app(inbound, tls, dst).await.map_err(|r| r.by(&caller)),
        Access::Http => {
            // Boxed: only HTTP ports need the HTTP server's state.
            Box::pin(http::serve_inbound(
                inbound.clone(),
                tls,
                peer,
                dst,
                Some(caller),
            ))
            .await;
            Ok(())
        }
    }
}

/// Connects to the app at its original address (as the proxy's uid, so not captured again).
async fn to_app<S>(inbound: &Inbound, mut caller: S, dst: SocketAddr) -> Result<(), Refusal>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut app = connector::connect_tcp(dst, inbound.timeouts.connect)
        .await
        .map_err(|e| {
            Refusal::new(
                "app_unreachable",
                format!("cannot connect to the app at {dst}: {e}"),
            )
        })?;
    copy::bidirectional(INBOUND, &inbound.metrics, &mut caller, &mut app).await;
    Ok(())
}
