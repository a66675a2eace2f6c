//! What the inbound side needs, built once per proxy and shared by every connection.

use std::sync::Arc;

use meshlet_identity::IdentityStore;
use rustls::ServerConfig;
use tokio::sync::Semaphore;

use super::app_clients::AppClients;
use super::destination::ProxyPorts;
use super::local_addrs::LocalAddrs;
use super::policy::Policy;
use crate::config::{InboundMode, Timeouts};
use crate::lifecycle::Lifecycle;
use crate::locate;
use crate::metrics::Metrics;

pub struct Inbound {
    pub mode: InboundMode,
    pub timeouts: Timeouts,
    pub tls: Arc<ServerConfig>,
    pub policy: Policy,
    /// This pod's addresses: the only ones the inbound side dials.
    pub local: LocalAddrs,
    /// The proxy's own ports (inbound, outbound, admin): never a destination.
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
