//! Accepting an inbound connection: its original destination, the destination rule, the
//! caller's first bytes, and then a locate answer, the mTLS handshake, or a plaintext caller.
//!
//! accept → original destination → `destination` → first bytes → (mesh TLS: handshake,
//! caller's SPIFFE ID, a pooled connection's streams | plaintext or foreign TLS) → `deliver`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio_rustls::TlsAcceptor;
use tracing::debug;

use super::context::Inbound;
use super::deliver::{deliver, Caller, Connection};
use super::destination::{self, PodDst};
use super::detect::{self, Protocol};
use super::pooled_server;
use crate::config::InboundMode;
use crate::locate;
use crate::metrics::{DirLabels, INBOUND};
use crate::orig_dst::OriginalDst;
use crate::read_ahead::ReadAhead;
use crate::reason::Reason;
use crate::refusal::{Refusal, Refused};
use crate::rewind::Rewind;
use crate::tls;

pub async fn handle(
    inbound: Arc<Inbound>,
    conn: TcpStream,
    peer: SocketAddr,
    dst_mode: OriginalDst,
    _permit: OwnedSemaphorePermit,
) {
    let _active = inbound.metrics.track(INBOUND);
    if let Err(refusal) = serve(&inbound, conn, peer, dst_mode).await {
        refusal.record(&inbound.metrics, INBOUND, Refused::Connection, peer);
    }
}

/// Admission (destination, first bytes), then a locate answer, the mesh handshake or a
/// plaintext caller.
async fn serve(
    inbound: &Arc<Inbound>,
    mut conn: TcpStream,
    peer: SocketAddr,
    dst_mode: OriginalDst,
) -> Result<(), Refusal> {
    let named = dst_mode.of(&conn, peer).map_err(|e| {
        Refusal::new(
            Reason::NoOriginalDst,
            format!("not a redirected connection: {e}"),
        )
    })?;
    let dst = destination::admit(&inbound.local, &inbound.proxy_ports, dst_mode, named)?;

    let (protocol, first_bytes) = sniff(&mut conn, inbound).await.map_err(|e| {
        Refusal::new(Reason::NoData, format!("caller sent nothing usable: {e}")).at(dst.addr())
    })?;
    match protocol {
        Protocol::Locate(request) => {
            // Not app traffic: nothing reaches the app, so neither mode nor policy applies.
            debug!(%peer, dst = %dst.addr(), "locate: telling a peer proxy which address it reached");
            if let locate::Request::V2 { token } = request {
                inbound.located.remember(token, peer.ip(), dst.addr());
            }
            let _ = conn.write_all(locate::answer(dst.addr()).as_bytes()).await;
            Ok(())
        }
        Protocol::Mesh => {
            let stream = Rewind::new(first_bytes, conn);
            mesh(inbound, stream, peer, dst, dst_mode)
                .await
                .map_err(|r| r.at(dst.addr()))
        }
        other => {
            let caller = Connection(Rewind::new(first_bytes, conn));
            deliver(inbound, Caller::Plain(other), peer, dst, caller).await
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
    dst: PodDst,
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
        Err(_) => {
            return Err(Refusal::handshake(
                Reason::Timeout,
                "TLS handshake timed out",
            ))
        }
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
        .get_or_create(&DirLabels::of(INBOUND))
        .observe(started.elapsed().as_secs_f64());
    let caller = tls::peer_id(tls.get_ref().1).ok_or_else(|| {
        Refusal::new(
            Reason::certificate(meshlet_identity::CertReason::BadSpiffeId),
            "verified client certificate without a SPIFFE ID",
        )
    })?;
    let pooled = tls.get_ref().1.alpn_protocol() == Some(tls::ALPN_MUX);
    // The counterpart of Cilium's "Successfully authenticated" line, at debug level.
    debug!(%peer, dst = %dst.addr(), %caller, pooled, "caller authenticated: mTLS handshake done, SVID verified");
    if pooled {
        let caller_not_after = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(meshlet_identity::svid::chain_not_after)
            .ok_or_else(|| {
                Refusal::new(
                    Reason::certificate(meshlet_identity::CertReason::BadCertificate),
                    "verified client chain without a readable expiry",
                )
                .by(&caller)
            })?;
        tls.get_mut().0.enable();
        // Pooled: each stream carries its own destination and is authorized on its own.
        // Boxed: the HTTP/2 server's state is only needed by this rare, long-lived connection;
        // inline, it would size every inbound connection's task.
        Box::pin(pooled_server::serve(
            inbound.clone(),
            tls,
            peer,
            dst.addr(),
            caller,
            caller_not_after,
            dst_mode,
        ))
        .await;
        return Ok(());
    }
    deliver(inbound, Caller::Mesh(caller), peer, dst, Connection(tls)).await
}
