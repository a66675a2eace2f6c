//! Inbound: a caller's connection to an app port, redirected to us, is identified, authorized
//! and passed to the app.
//!
//! accept → original destination → first bytes → (mesh TLS: handshake, caller's SPIFFE ID |
//! plaintext or foreign TLS: refused in strict mode) → policy → app (bytes, or HTTP per request).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio_rustls::TlsAcceptor;
use tracing::debug;

use crate::connector;
use crate::copy;
use crate::detect::{self, Protocol};
use crate::metrics::{DirLabels, INBOUND};
use crate::orig_dst::OriginalDst;
use crate::policy::Access;
use crate::read_ahead::ReadAhead;
use crate::refusal::Refusal;
use crate::rewind::Rewind;
use crate::{http, locate, mux, on_this_pod, prevent_loop, require_mesh, tls, Shared};

pub async fn handle(
    shared: Arc<Shared>,
    conn: TcpStream,
    peer: SocketAddr,
    dst_mode: OriginalDst,
    _permit: OwnedSemaphorePermit,
) {
    let _active = shared.metrics.track(INBOUND);
    if let Err(refusal) = serve(&shared, conn, peer, dst_mode).await {
        refusal.record(&shared.metrics, INBOUND, "connection", peer);
    }
}

/// Admission (destination, first bytes, mode), then the mesh handshake or a plaintext pass.
async fn serve(
    shared: &Arc<Shared>,
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
        OriginalDst::Kernel => on_this_pod::check(&shared.local, &shared.proxy_ports, dst)
            .map_err(|e| Refusal::new(e.reason(), e.to_string()).at(dst))?,
        // A fixed destination is the operator's, not the caller's.
        OriginalDst::Fixed(dst) => {
            prevent_loop::inbound_fixed(dst, &[shared.config.inbound.port])?;
            dst
        }
    };

    let (protocol, first_bytes) = sniff(&mut conn, shared)
        .await
        .map_err(|e| Refusal::new("no_data", format!("caller sent nothing usable: {e}")).at(dst))?;
    match protocol {
        Protocol::Locate => {
            // Not app traffic: nothing reaches the app, so neither mode nor policy applies.
            debug!(%peer, %dst, "locate: telling a peer proxy which address it reached");
            let _ = conn.write_all(locate::answer(dst).as_bytes()).await;
            Ok(())
        }
        Protocol::Mesh => {
            let stream = Rewind::new(first_bytes, conn);
            mesh(shared, stream, peer, dst, dst_mode)
                .await
                .map_err(|r| r.at(dst))
        }
        other => {
            require_mesh::check(shared.config.inbound.mode, other).map_err(|r| r.at(dst))?;
            shared
                .policy
                .check_connection(None, dst.port())
                .map_err(|d| Refusal::policy(d.reason, d.detail).at(dst))?;
            debug!(%peer, %dst, ?other, "permissive: passing it through");
            shared.metrics.opened(INBOUND, "plain");
            to_app(shared, Rewind::new(first_bytes, conn), dst).await
        }
    }
}

/// Reads the caller's first bytes until the protocol is known. `Incomplete` means the caller
/// said nothing before the timeout (a server-speaks-first protocol, or an idle client).
async fn sniff(conn: &mut TcpStream, shared: &Shared) -> std::io::Result<(Protocol, Vec<u8>)> {
    let deadline = tokio::time::Instant::now() + shared.config.timeouts.first_byte;
    let mut buf = Vec::with_capacity(2048);
    loop {
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
                } else {
                    detect::classify(&buf)
                };
                let p = if p == Protocol::Incomplete && !buf.is_empty() {
                    Protocol::ForeignTls
                } else {
                    p
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
    shared: &Arc<Shared>,
    stream: Rewind<TcpStream>,
    peer: SocketAddr,
    dst: SocketAddr,
    dst_mode: OriginalDst,
) -> Result<(), Refusal> {
    let started = Instant::now();
    let acceptor = TlsAcceptor::from(shared.tls_server.clone());
    // Boxed, like the result below: the handshake's state is large, and inline it would size
    // (and be copied with) the task of every inbound connection for its whole life.
    let handshake = Box::pin(tokio::time::timeout(
        shared.config.timeouts.handshake,
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
    shared
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
    if tls.get_ref().1.alpn_protocol() == Some(tls::ALPN_MUX) {
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
            shared.clone(),
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
    let access = shared
        .policy
        .check_connection(Some(&caller), dst.port())
        .map_err(|d| Refusal::policy(d.reason, d.detail).by(&caller))?;
    shared.metrics.opened(INBOUND, "mtls");
    match access {
        Access::Tcp => to_app(shared, tls, dst).await.map_err(|r| r.by(&caller)),
        Access::Http => {
            // Boxed: only HTTP ports need the HTTP server's state.
            Box::pin(http::serve_inbound(shared.clone(), tls, peer, dst, caller)).await;
            Ok(())
        }
    }
}

/// Connects to the app at its original address (as the proxy's uid, so not captured again).
async fn to_app<S>(shared: &Shared, mut caller: S, dst: SocketAddr) -> Result<(), Refusal>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut app = connector::connect_tcp(dst, shared.config.timeouts.connect)
        .await
        .map_err(|e| {
            Refusal::new(
                "app_unreachable",
                format!("cannot connect to the app at {dst}: {e}"),
            )
        })?;
    copy::bidirectional(INBOUND, &shared.metrics, &mut caller, &mut app).await;
    Ok(())
}
