//! Outbound: an app's connection, redirected to us, leaves as mTLS to the peer's proxy (or
//! plain, per `outbound.mtls` and `outbound.destinations`).
//!
//! accept → original destination → route → connect (mTLS or plain) → copy.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tracing::{debug, info};

use crate::config::MtlsMode;
use crate::connector::{self, ConnectError};
use crate::copy;
use crate::metrics::OUTBOUND;
use crate::orig_dst::OriginalDst;
use crate::refusal::Refusal;
use crate::{prevent_loop, Shared};

pub async fn handle(
    shared: Arc<Shared>,
    app: TcpStream,
    peer: SocketAddr,
    dst_mode: OriginalDst,
    _permit: OwnedSemaphorePermit,
) {
    let _active = shared.metrics.track(OUTBOUND);
    if let Err(refusal) = serve(&shared, app, peer, dst_mode).await {
        refusal.record(&shared.metrics, OUTBOUND, "connection", peer);
    }
}

async fn serve(
    shared: &Shared,
    mut app: TcpStream,
    peer: SocketAddr,
    dst_mode: OriginalDst,
) -> Result<(), Refusal> {
    let dst = dst_mode.of(&app, peer).map_err(|e| {
        Refusal::new(
            "no_original_dst",
            format!("not a redirected connection: {e}"),
        )
    })?;
    prevent_loop::outbound(dst, shared.config.outbound.port)?;
    let route = shared.routes.lookup(dst);
    match route.mode {
        MtlsMode::Off => plain(shared, app, dst).await,
        MtlsMode::Mtls => {
            let timeout = shared.config.timeouts.handshake;
            let (mut upstream, id) = shared
                .connector
                .open_mesh(dst, route.identities.as_deref(), timeout, false)
                .await
                .map_err(|e| {
                    refusal(
                        &e,
                        "mtls is required for this destination; nothing was sent",
                    )
                    .at(dst)
                })?;
            debug!(%peer, %dst, server = %id, "outbound mTLS established");
            shared.metrics.opened(OUTBOUND, "mtls");
            copy::bidirectional(OUTBOUND, &shared.metrics, &mut app, &mut upstream).await;
            Ok(())
        }
        MtlsMode::Auto => {
            let generation = shared.store.generation();
            if shared.routes.known_plain(dst, generation) {
                return plain(shared, app, dst).await;
            }
            // A destination that has proved to be a meshlet peer is held to it: no failure
            // downgrades it while remembered. Others are probed, so that a server which does
            // not speak meshlet can be told from a meshlet peer we must not trust.
            let proven = shared.routes.known_mesh(dst);
            let timeout = shared.config.outbound.auto_detect_timeout;
            match shared
                .connector
                .open_mesh(dst, None, timeout, !proven)
                .await
            {
                Ok((mut upstream, id)) => {
                    debug!(%peer, %dst, server = %id, "outbound mTLS established (auto)");
                    shared.routes.remember_mesh(dst);
                    shared.metrics.opened(OUTBOUND, "mtls");
                    copy::bidirectional(OUTBOUND, &shared.metrics, &mut app, &mut upstream).await;
                    Ok(())
                }
                Err(e) if !proven && e.peer_is_not_mesh() => {
                    info!(%peer, %dst, reason = e.reason(), error = %e, "auto: destination does not speak meshlet; falling back to plaintext");
                    shared.metrics.auto_fallbacks.inc();
                    shared.routes.remember_plain(dst, generation);
                    plain(shared, app, dst).await
                }
                Err(e) => {
                    let consequence = if proven {
                        "auto: this destination proved to be a meshlet peer, so it is never sent plaintext"
                    } else if matches!(e, ConnectError::HandshakeTimeout { .. }) {
                        "auto: silence proves nothing, so no plaintext fallback (set mtls: off for a plain server that never answers a TLS ClientHello)"
                    } else {
                        "auto: no plaintext fallback for this failure"
                    };
                    Err(refusal(&e, consequence).at(dst))
                }
            }
        }
    }
}

async fn plain(shared: &Shared, mut app: TcpStream, dst: SocketAddr) -> Result<(), Refusal> {
    let mut upstream = connector::connect_tcp(dst, shared.config.timeouts.connect)
        .await
        .map_err(|e| {
            Refusal::new("connect_failed", format!("cannot connect to {dst}: {e}")).at(dst)
        })?;
    shared.metrics.opened(OUTBOUND, "plain");
    copy::bidirectional(OUTBOUND, &shared.metrics, &mut app, &mut upstream).await;
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
