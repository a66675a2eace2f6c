//! Inbound: a caller's connection to an app port, redirected to us, is identified, authorized
//! and passed to the app.
//!
//! accept → original destination → first bytes → (mesh TLS: handshake, caller's SPIFFE ID |
//! plaintext or foreign TLS: refused in strict mode) → policy → app (bytes, or HTTP per request).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use meshlet_identity::SpiffeId;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use crate::config::InboundMode;
use crate::connector;
use crate::copy;
use crate::detect::{self, Protocol};
use crate::metrics::{DirLabels, INBOUND};
use crate::orig_dst::OriginalDst;
use crate::policy::Access;
use crate::read_ahead::ReadAhead;
use crate::rewind::Rewind;
use crate::{http, locate, mux, on_this_pod, tls, Shared};

pub async fn handle(
    shared: Arc<Shared>,
    mut conn: TcpStream,
    peer: SocketAddr,
    dst_mode: OriginalDst,
    _permit: OwnedSemaphorePermit,
) {
    let _active = shared.metrics.track(INBOUND);
    let dst = match dst_mode.of(&conn, peer) {
        Ok(dst) => dst,
        Err(e) => {
            return refuse(
                &shared,
                peer,
                None,
                None,
                "no_original_dst",
                &format!("not a redirected connection: {e}"),
            );
        }
    };
    let dst = match dst_mode {
        OriginalDst::Kernel => match on_this_pod::check(&shared.local, &shared.proxy_ports, dst) {
            Ok(dst) => dst,
            Err(e) => return refuse(&shared, peer, Some(dst), None, e.reason(), &e.to_string()),
        },
        // A fixed destination is the operator's, not the caller's.
        OriginalDst::Fixed(dst) if dst.port() == shared.config.inbound.port => {
            return refuse(
                &shared,
                peer,
                Some(dst),
                None,
                "loop",
                "connection to the inbound port itself",
            );
        }
        OriginalDst::Fixed(dst) => dst,
    };

    let (protocol, first_bytes) = match sniff(&mut conn, &shared).await {
        Ok(found) => found,
        Err(e) => {
            return refuse(
                &shared,
                peer,
                Some(dst),
                None,
                "no_data",
                &format!("caller sent nothing usable: {e}"),
            )
        }
    };
    if protocol == Protocol::Locate {
        // Not app traffic: nothing reaches the app, so neither mode nor policy applies.
        debug!(%peer, %dst, "locate: telling a peer proxy which address it reached");
        let _ = conn.write_all(locate::answer(dst).as_bytes()).await;
        return;
    }
    let stream = Rewind::new(first_bytes, conn);
    match protocol {
        Protocol::Mesh => mesh(&shared, stream, peer, dst, dst_mode).await,
        other => {
            let what = match other {
                Protocol::ForeignTls => "TLS without meshlet's ALPN",
                Protocol::Incomplete => "nothing within the first-byte timeout",
                _ => "plaintext",
            };
            if shared.config.inbound.mode == InboundMode::Strict {
                let reason = if other == Protocol::ForeignTls {
                    "foreign_tls"
                } else {
                    "plaintext"
                };
                return refuse(
                    &shared,
                    peer,
                    Some(dst),
                    None,
                    reason,
                    &format!("{what} in strict mode (only meshlet mTLS is accepted)"),
                );
            }
            if let Err(d) = shared.policy.check_connection(None, dst.port()) {
                shared.metrics.policy_denied(INBOUND, d.reason);
                return refuse(&shared, peer, Some(dst), None, d.reason, &d.detail);
            }
            debug!(%peer, %dst, "permissive: passing {what} through");
            shared.metrics.opened(INBOUND, "plain");
            to_app(&shared, stream, peer, dst, None).await;
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
) {
    let started = Instant::now();
    let acceptor = TlsAcceptor::from(shared.tls.server.clone());
    // Boxed, like the result below: the handshake's state is large, and inline it would size
    // (and be copied with) the task of every inbound connection for its whole life.
    let handshake = Box::pin(tokio::time::timeout(
        shared.config.timeouts.handshake,
        acceptor.accept(ReadAhead::new(stream)),
    ));
    let mut tls = match handshake.await {
        Err(_) => {
            shared.metrics.handshake_failed(INBOUND, "timeout");
            return refuse(
                shared,
                peer,
                Some(dst),
                None,
                "handshake_timeout",
                "TLS handshake timed out",
            );
        }
        Ok(Err(e)) => {
            let reason = tls::failure_reason(&e);
            shared.metrics.handshake_failed(INBOUND, reason);
            return refuse(
                shared,
                peer,
                Some(dst),
                None,
                reason,
                &format!("TLS handshake failed: {e}"),
            );
        }
        Ok(Ok(tls)) => Box::new(tls),
    };
    shared
        .metrics
        .handshake_seconds
        .get_or_create(&DirLabels { direction: INBOUND })
        .observe(started.elapsed().as_secs_f64());
    let Some(caller) = tls::peer_id(tls.get_ref().1) else {
        return refuse(
            shared,
            peer,
            Some(dst),
            None,
            "bad_spiffe_id",
            "verified client certificate without a SPIFFE ID",
        );
    };
    if tls.get_ref().1.alpn_protocol() == Some(tls::ALPN_MUX) {
        let Some(caller_not_after) = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(meshlet_identity::svid::chain_not_after)
        else {
            return refuse(
                shared,
                peer,
                Some(dst),
                Some(&caller),
                "bad_certificate",
                "verified client chain without a readable expiry",
            );
        };
        tls.get_mut().0.enable();
        // Pooled: each stream carries its own destination and is authorized on its own.
        // Boxed: the HTTP/2 server's state is only needed by this rare, long-lived connection;
        // inline, it would size every inbound connection's task.
        return Box::pin(mux::serve(
            shared.clone(),
            tls,
            peer,
            dst,
            caller,
            caller_not_after,
            dst_mode,
        ))
        .await;
    }
    match shared.policy.check_connection(Some(&caller), dst.port()) {
        Err(d) => {
            shared.metrics.policy_denied(INBOUND, d.reason);
            refuse(shared, peer, Some(dst), Some(&caller), d.reason, &d.detail)
        }
        Ok(Access::Tcp) => {
            shared.metrics.opened(INBOUND, "mtls");
            to_app(shared, tls, peer, dst, Some(&caller)).await
        }
        Ok(Access::Http) => {
            shared.metrics.opened(INBOUND, "mtls");
            // Boxed: only HTTP ports need the HTTP server's state.
            Box::pin(http::serve_inbound(shared.clone(), tls, peer, dst, caller)).await
        }
    }
}

/// Connects to the app at its original address (as the proxy's uid, so not captured again).
async fn to_app<S>(
    shared: &Shared,
    mut caller: S,
    peer: SocketAddr,
    dst: SocketAddr,
    id: Option<&SpiffeId>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match connector::connect_tcp(dst, shared.config.timeouts.connect).await {
        Ok(mut app) => copy::bidirectional(INBOUND, &shared.metrics, &mut caller, &mut app).await,
        Err(e) => refuse(
            shared,
            peer,
            Some(dst),
            id,
            "app_unreachable",
            &format!("cannot connect to the app at {dst}: {e}"),
        ),
    }
}

fn refuse(
    shared: &Shared,
    peer: SocketAddr,
    dst: Option<SocketAddr>,
    id: Option<&SpiffeId>,
    reason: &'static str,
    detail: &str,
) {
    shared.metrics.refused(INBOUND, reason);
    warn!(
        direction = INBOUND,
        %peer,
        dst = ?dst,
        identity = id.map(SpiffeId::as_str).unwrap_or("-"),
        reason,
        "connection refused: {detail}"
    );
}
