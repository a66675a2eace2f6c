//! Outbound: an app's connection, redirected to us, leaves as mTLS to the peer's proxy (or
//! plain, per `outbound.mtls` and `outbound.destinations`).
//!
//! accept → original destination → route → connect (mTLS or plain) → copy.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tracing::{debug, info, warn};

use crate::config::MtlsMode;
use crate::connector::{self, ConnectError};
use crate::copy;
use crate::metrics::OUTBOUND;
use crate::orig_dst::OriginalDst;
use crate::Shared;

pub async fn handle(
    shared: Arc<Shared>,
    mut app: TcpStream,
    peer: SocketAddr,
    dst_mode: OriginalDst,
    _permit: OwnedSemaphorePermit,
) {
    let _active = shared.metrics.track(OUTBOUND);
    let dst = match dst_mode.of(&app, peer) {
        Ok(dst) => dst,
        Err(e) => {
            return refuse(
                &shared,
                peer,
                None,
                "no_original_dst",
                &format!("not a redirected connection: {e}"),
            );
        }
    };
    if dst.port() == shared.config.outbound.port
        && (dst.ip().is_loopback() || dst.ip().is_unspecified())
    {
        return refuse(
            &shared,
            peer,
            Some(dst),
            "loop",
            "connection to the outbound port itself",
        );
    }
    let route = shared.routes.lookup(dst);
    match route.mode {
        MtlsMode::Off => plain(&shared, app, peer, dst).await,
        MtlsMode::Mtls => {
            let timeout = shared.config.timeouts.handshake;
            match connector::open_mesh(&shared, dst, route.identities.as_deref(), timeout, false)
                .await
            {
                Ok((mut upstream, id)) => {
                    debug!(%peer, %dst, server = %id, "outbound mTLS established");
                    shared.metrics.opened(OUTBOUND, "mtls");
                    copy::bidirectional(OUTBOUND, &shared.metrics, &mut app, &mut upstream).await;
                }
                Err(e) => mesh_failed(
                    &shared,
                    peer,
                    dst,
                    &e,
                    "mtls is required for this destination; nothing was sent",
                ),
            }
        }
        MtlsMode::Auto => {
            let generation = shared.store.generation();
            if shared.routes.known_plain(dst, generation) {
                return plain(&shared, app, peer, dst).await;
            }
            // A destination that has proved to be a meshlet peer is held to it: no failure
            // downgrades it while remembered. Others are probed, so that a server which does
            // not speak meshlet can be told from a meshlet peer we must not trust.
            let proven = shared.routes.known_mesh(dst);
            let timeout = shared.config.outbound.auto_detect_timeout;
            match connector::open_mesh(&shared, dst, None, timeout, !proven).await {
                Ok((mut upstream, id)) => {
                    debug!(%peer, %dst, server = %id, "outbound mTLS established (auto)");
                    shared.routes.remember_mesh(dst);
                    shared.metrics.opened(OUTBOUND, "mtls");
                    copy::bidirectional(OUTBOUND, &shared.metrics, &mut app, &mut upstream).await;
                }
                Err(e) if !proven && e.peer_is_not_mesh() => {
                    info!(%peer, %dst, reason = e.reason(), error = %e, "auto: destination does not speak meshlet; falling back to plaintext");
                    shared.metrics.auto_fallbacks.inc();
                    shared.routes.remember_plain(dst, generation);
                    plain(&shared, app, peer, dst).await
                }
                Err(e) => {
                    let consequence = if proven {
                        "auto: this destination proved to be a meshlet peer, so it is never sent plaintext"
                    } else if matches!(e, ConnectError::HandshakeTimeout { .. }) {
                        "auto: silence proves nothing, so no plaintext fallback (set mtls: off for a plain server that never answers a TLS ClientHello)"
                    } else {
                        "auto: no plaintext fallback for this failure"
                    };
                    mesh_failed(&shared, peer, dst, &e, consequence)
                }
            }
        }
    }
}

async fn plain(shared: &Shared, mut app: TcpStream, peer: SocketAddr, dst: SocketAddr) {
    match connector::connect_tcp(dst, shared.config.timeouts.connect).await {
        Ok(mut upstream) => {
            shared.metrics.opened(OUTBOUND, "plain");
            copy::bidirectional(OUTBOUND, &shared.metrics, &mut app, &mut upstream).await;
        }
        Err(e) => refuse(
            shared,
            peer,
            Some(dst),
            "connect_failed",
            &format!("cannot connect to {dst}: {e}"),
        ),
    }
}

fn mesh_failed(
    shared: &Shared,
    peer: SocketAddr,
    dst: SocketAddr,
    err: &ConnectError,
    consequence: &str,
) {
    if err.is_handshake_failure() {
        shared.metrics.handshake_failed(OUTBOUND, err.reason());
    }
    refuse(
        shared,
        peer,
        Some(dst),
        err.reason(),
        &format!("{err}; {consequence}"),
    );
}

fn refuse(
    shared: &Shared,
    peer: SocketAddr,
    dst: Option<SocketAddr>,
    reason: &'static str,
    detail: &str,
) {
    shared.metrics.refused(OUTBOUND, reason);
    warn!(direction = OUTBOUND, %peer, dst = ?dst, reason, "connection refused: {detail}");
}
