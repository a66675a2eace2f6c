//! Accepting an outbound connection: accept → original destination → route → connect (mTLS
//! or plain) → copy.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tracing::{debug, info};

use super::connector::Connector;
use super::first_bytes::FirstBytes;
use super::routes::Routes;
use super::{bulk, mesh_port, prevent_loop};
use crate::config::{MtlsMode, Timeouts};
use crate::copy;
use crate::dial::{self, ConnectError, Upstream};
use crate::metrics::{Metrics, OUTBOUND};
use crate::orig_dst::OriginalDst;
use crate::reason::Reason;
use crate::refusal::{Refusal, Refused};
use crate::rewind::Rewind;
use meshlet_identity::IdentityStore;

/// What the outbound side needs, built once per proxy.
pub struct Outbound {
    /// Our own outbound port (a destination of it on loopback is a loop).
    pub port: u16,
    pub timeouts: Timeouts,
    pub auto_detect_timeout: std::time::Duration,
    /// Meshlet's inbound port, the same on every meshed pod: `auto` asks a silent destination's
    /// address whether a proxy listens there (`mesh_port`).
    pub mesh_port: u16,
    pub routes: Routes,
    pub connector: Connector,
    pub store: Arc<IdentityStore>,
    pub metrics: Arc<Metrics>,
}

pub async fn handle(
    outbound: Arc<Outbound>,
    app: TcpStream,
    peer: SocketAddr,
    dst_mode: OriginalDst,
    _permit: OwnedSemaphorePermit,
) {
    let _active = outbound.metrics.track(OUTBOUND);
    if let Err(refusal) = serve(&outbound, app, peer, dst_mode).await {
        refusal.record(&outbound.metrics, OUTBOUND, Refused::Connection, peer);
    }
}

async fn serve(
    outbound: &Outbound,
    app: TcpStream,
    peer: SocketAddr,
    dst_mode: OriginalDst,
) -> Result<(), Refusal> {
    let dst = dst_mode.of(&app, peer).map_err(|e| {
        Refusal::new(
            Reason::NoOriginalDst,
            format!("not a redirected connection: {e}"),
        )
    })?;
    prevent_loop::outbound(dst, outbound.port)?;
    let route = outbound.routes.lookup(dst);
    match route.mode {
        MtlsMode::Off => plain(outbound, app, Bytes::new(), dst).await,
        MtlsMode::Mtls => {
            let timeout = outbound.timeouts.handshake;
            let mut first = FirstBytes::new(&app);
            let opened = outbound
                .connector
                .open_mesh(dst, route.identities.as_deref(), timeout, None, &mut first)
                .await;
            let (rest, sent) = first.into_rest();
            let (mut upstream, id) = opened.map_err(|e| {
                refusal(
                    &e,
                    "mtls is required for this destination; nothing was sent in plaintext",
                )
                .at(dst)
            })?;
            debug!(%peer, %dst, server = %id, "outbound mTLS established");
            relay_mesh(outbound, Rewind::new(rest, app), sent, &mut upstream, dst).await;
            Ok(())
        }
        MtlsMode::Auto => {
            let generation = outbound.store.generation();
            if outbound.routes.known_plain(dst, generation) {
                return plain(outbound, app, Bytes::new(), dst).await;
            }
            let mut first = FirstBytes::new(&app);
            // A destination that has proved to be a meshlet peer is held to it: no failure
            // downgrades it while remembered. Others are probed, so that a server which does
            // not speak meshlet can be told from a meshlet peer we must not trust.
            let proven = outbound.routes.known_mesh(dst);
            let timeout = outbound.auto_detect_timeout;
            let result = if proven {
                outbound
                    .connector
                    .open_mesh(dst, None, timeout, None, &mut first)
                    .await
            } else {
                let answered = mesh_port::Answered::default();
                let attempt =
                    outbound
                        .connector
                        .open_mesh(dst, None, timeout, Some(&answered), &mut first);
                // Boxed: only a destination's first connections take this path; inline, its
                // state would size every outbound connection's task.
                match Box::pin(unless_no_proxy(outbound, dst, &answered, attempt)).await {
                    Some(result) => result,
                    None => {
                        info!(%peer, %dst, port = outbound.mesh_port, "auto: destination silent to TLS and its address resets meshlet's port, so no meshlet proxy is there; falling back to plaintext");
                        outbound.metrics.auto_fallbacks.inc();
                        outbound.routes.remember_plain(dst, generation);
                        let (rest, _) = first.into_rest();
                        return plain(outbound, app, rest, dst).await;
                    }
                }
            };
            let (rest, sent) = first.into_rest();
            match result {
                Ok((mut upstream, id)) => {
                    debug!(%peer, %dst, server = %id, "outbound mTLS established (auto)");
                    if !proven {
                        outbound.routes.remember_mesh(dst);
                    }
                    relay_mesh(outbound, Rewind::new(rest, app), sent, &mut upstream, dst).await;
                    Ok(())
                }
                Err(e) if !proven && e.peer_is_not_mesh() => {
                    info!(%peer, %dst, reason = e.reason().label(), error = %e, "auto: destination does not speak meshlet; falling back to plaintext");
                    outbound.metrics.auto_fallbacks.inc();
                    outbound.routes.remember_plain(dst, generation);
                    plain(outbound, app, rest, dst).await
                }
                Err(e) => {
                    let consequence = if proven {
                        "auto: this destination proved to be a meshlet peer, so it is never sent plaintext"
                    } else if matches!(e, ConnectError::HandshakeTimeout { .. }) {
                        "auto: silence proves nothing and the address did not say that no meshlet proxy is there, so no plaintext fallback (set mtls: off for a plain server that never answers a TLS ClientHello)"
                    } else {
                        "auto: no plaintext fallback for this failure"
                    };
                    Err(refusal(&e, consequence).at(dst))
                }
            }
        }
    }
}

/// How long a destination may be silent to our ClientHello before its address is asked whether a
/// meshlet proxy listens there. A meshlet proxy answers in well under this (a ServerHello takes
/// one round trip), so a meshed destination is practically never asked; a silent server costs
/// this much once, then it is remembered as plain for `outbound.auto_fallback_ttl`.
const ASK_AFTER: std::time::Duration = std::time::Duration::from_millis(20);

/// The mTLS attempt's result, or `None` when the destination stayed silent and its address
/// answered meshlet's port with a TCP reset: no meshlet proxy is there (`mesh_port`). A
/// destination that has `answered` as meshlet would is not silent, however slow the rest.
async fn unless_no_proxy<F>(
    outbound: &Outbound,
    dst: SocketAddr,
    answered: &mesh_port::Answered,
    attempt: F,
) -> Option<Result<(Upstream, meshlet_identity::SpiffeId), ConnectError>>
where
    F: std::future::Future<Output = Result<(Upstream, meshlet_identity::SpiffeId), ConnectError>>,
{
    let mut attempt = std::pin::pin!(attempt);
    tokio::select! {
        result = &mut attempt => return Some(result),
        _ = tokio::time::sleep(ASK_AFTER) => {}
    }
    if answered.get() {
        return Some(attempt.await);
    }
    let ask = mesh_port::ask(dst.ip(), outbound.mesh_port, outbound.timeouts.connect);
    tokio::select! {
        result = &mut attempt => Some(result),
        answer = ask => match answer {
            mesh_port::Answer::NoProxy if !answered.get() => None,
            mesh_port::Answer::NoProxy => Some(attempt.await),
            mesh_port::Answer::Listening | mesh_port::Answer::Unknown => Some(attempt.await),
        },
    }
}

/// Copies an app connection over an established mTLS path (its first `sent` bytes went ahead
/// of the path's opening, `first_bytes`), then lets the connector learn from how much it
/// carried (bulk destinations get connections of their own).
async fn relay_mesh(
    outbound: &Outbound,
    mut app: Rewind<TcpStream>,
    sent: usize,
    upstream: &mut Upstream,
    dst: SocketAddr,
) {
    outbound.metrics.opened(OUTBOUND, "mtls");
    let started = Instant::now();
    let metrics = &outbound.metrics;
    let moved = copy::bidirectional_after(OUTBOUND, metrics, sent as u64, &mut app, upstream).await;
    if outbound.connector.finished(dst, moved, started.elapsed()) {
        outbound.metrics.bulk_destinations.inc();
        info!(%dst, bytes = moved, "bulk transfers to this destination: its next connections get an mTLS connection of their own for {}s", bulk::REMEMBER.as_secs());
    }
}

/// A plain connection to `dst`; `first`: what was already read from the app, sent first.
async fn plain(
    outbound: &Outbound,
    app: TcpStream,
    first: Bytes,
    dst: SocketAddr,
) -> Result<(), Refusal> {
    let mut upstream = dial::connect_tcp(dst, outbound.timeouts.connect)
        .await
        .map_err(|e| {
            Refusal::new(
                Reason::ConnectFailed,
                format!("cannot connect to {dst}: {e}"),
            )
            .at(dst)
        })?;
    outbound.metrics.opened(OUTBOUND, "plain");
    let mut app = Rewind::new(first, app);
    copy::bidirectional(OUTBOUND, &outbound.metrics, &mut app, &mut upstream).await;
    Ok(())
}

/// A failure to reach the peer proxy, counted as a handshake failure only when it is one.
fn refusal(err: &ConnectError, consequence: &str) -> Refusal {
    let detail = format!("{err}; {consequence}");
    if err.is_handshake_failure() {
        Refusal::handshake(err.reason(), detail)
    } else {
        Refusal::new(err.reason(), detail)
    }
}
