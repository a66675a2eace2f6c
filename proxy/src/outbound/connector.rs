//! The seam where the transport between proxies is chosen: [`Connector::open_mesh`] gives
//! either a stream over a pooled connection (ALPN `meshlet-mux/1`, see `pooled_client`) or an
//! mTLS connection of its own (ALPN `meshlet/1`, see `dial`), per `outbound.transport` and what
//! the peer supports.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use meshlet_identity::SpiffeId;

use super::bulk::BulkRule;
use super::first_bytes::FirstBytes;
use super::mesh_port::Answered;
use super::pooled_client::Pool;
use crate::config::Transport;
use crate::dial::{ConnectError, Dialer, Upstream};

/// Opens authenticated paths to peer proxies, per `outbound.transport`.
pub struct Connector {
    pub dialer: Arc<Dialer>,
    pub pool: Pool,
    pub transport: Transport,
    /// Pooled transport: which destinations get connections of their own.
    pub bulk: BulkRule,
}

impl Connector {
    pub fn new(dialer: Dialer, transport: Transport, bulk_rate: u64) -> Self {
        let dialer = Arc::new(dialer);
        Connector {
            pool: Pool::new(dialer.clone()),
            dialer,
            transport,
            bulk: BulkRule::new(bulk_rate),
        }
    }

    /// Records a finished app connection to `dst` (its bytes both ways and how long it
    /// lasted); true when it made `dst` a bulk destination.
    pub fn finished(&self, dst: SocketAddr, bytes: u64, lasted: Duration) -> bool {
        self.transport == Transport::Pooled && self.bulk.observe(dst, bytes, lasted)
    }

    /// An authenticated path to the meshlet proxy at `dst`. Of the application's bytes, only
    /// its first ones (`first_bytes`) may be sent before this returns, on a pooled stream to the
    /// peer, which judges the stream before it reads them; the caller copies the rest (what
    /// `first` holds undelivered first).
    pub async fn open_mesh(
        &self,
        dst: SocketAddr,
        pins: Option<&[SpiffeId]>,
        handshake_timeout: Duration,
        probe: Option<&Answered>,
        first: &mut FirstBytes<'_>,
    ) -> Result<(Upstream, SpiffeId), ConnectError> {
        match self.transport {
            Transport::Pooled if !self.bulk.is_bulk(dst) => {
                // Boxed: opening is short and its state (the stream's opening, with the app's
                // first bytes) large; inline, it would size every app connection's task for
                // its whole life.
                Box::pin(self.pool.open(dst, pins, handshake_timeout, probe, first)).await
            }
            Transport::Pooled | Transport::PerConnection => {
                self.dialer
                    .own_connection(dst, pins, handshake_timeout, probe)
                    .await
            }
        }
    }
}
