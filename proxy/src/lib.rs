//! The meshlet data plane.
//!
//! Follow one connection: `listener` accepts it, then `inbound` (`accept`: the `destination`
//! rule, first bytes, mTLS terminated; a pooled connection's streams via `pooled_server`; every
//! caller into the app through `deliver`: `require_mesh`, `policy`, `require_http`, the permit,
//! the app, bytes or `http`) or `outbound` (`accept`: `routes` decide, the `connector` opens
//! mTLS to the peer proxy — a stream via `pooled_client` and, for a Service address, `locate`,
//! or a connection of its own via `dial` — or plain), and `copy` moves the bytes. A refusal
//! ends in `refusal`, the one place that counts and logs it, under a typed `reason`. `tls` and
//! meshlet-identity decide who is who; `admin` and `metrics` tell the operator.
//!
//! Each side gets a context built once in [`start`]: [`inbound::context::Inbound`],
//! [`outbound::accept::Outbound`] (which owns the [`outbound::connector::Connector`]) and
//! [`admin::Admin`]; readiness and shutdown are the [`lifecycle::Lifecycle`] they share.
#![forbid(unsafe_code)]

pub mod admin;
pub mod admin_slots;
pub mod app_probe;
pub mod args;
pub mod config;
pub mod copy;
pub mod dial;
pub mod expiring;
pub mod id_match;
pub mod inbound;
pub mod lifecycle;
pub mod listener;
pub mod locate;
pub mod metrics;
pub mod orig_dst;
pub mod outbound;
pub mod pooled_stream;
pub mod pooled_wire;
pub mod read_ahead;
pub mod reason;
pub mod refusal;
pub mod rewind;
pub mod tls;
pub mod wake_floor;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use meshlet_identity::IdentityStore;
use tokio::sync::Semaphore;
use tracing::{info, warn};

pub use config::Config;
pub use orig_dst::OriginalDst;

/// Where the listeners bind and how they learn original destinations. The defaults follow the
/// configuration; tests bind ephemeral loopback ports with a fixed destination.
#[derive(Clone, Debug)]
pub struct Listeners {
    pub inbound: Vec<SocketAddr>,
    pub outbound: Vec<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub inbound_dst: OriginalDst,
    pub outbound_dst: OriginalDst,
}

impl Listeners {
    pub fn from_config(config: &Config) -> Self {
        Listeners {
            inbound: vec![
                SocketAddr::from(([0, 0, 0, 0], config.inbound.port)),
                SocketAddr::from(([0u16; 8], config.inbound.port)),
            ],
            outbound: vec![
                SocketAddr::from(([127, 0, 0, 1], config.outbound.port)),
                SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 1], config.outbound.port)),
            ],
            admin: Some(config.admin.address),
            inbound_dst: OriginalDst::Kernel,
            outbound_dst: OriginalDst::Kernel,
        }
    }
}

/// A started proxy.
pub struct Running {
    pub inbound: Arc<inbound::context::Inbound>,
    pub outbound: Arc<outbound::accept::Outbound>,
    pub metrics: Arc<metrics::Metrics>,
    pub lifecycle: Arc<lifecycle::Lifecycle>,
    drain: std::time::Duration,
    pub inbound_addrs: Vec<SocketAddr>,
    pub outbound_addrs: Vec<SocketAddr>,
    pub admin_addr: Option<SocketAddr>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    limits: Vec<(Arc<Semaphore>, usize)>,
}

/// Binds every listener and starts serving. Fails (with the address) when a bind fails, except
/// IPv6 wildcard/loopback binds on a host without IPv6, which are skipped with a warning.
pub async fn start(
    config: Config,
    store: Arc<IdentityStore>,
    listeners: Listeners,
) -> anyhow::Result<Running> {
    let provider = meshlet_identity::crypto_provider();
    meshlet_identity::seed_random(&provider).context("seeding the random number generator")?;
    let tls = tls::configs(store.clone(), provider).context("building the TLS configuration")?;
    let metrics = Arc::new(metrics::Metrics::new());
    let lifecycle = Arc::new(lifecycle::Lifecycle::default());
    let inbound_limit = Arc::new(Semaphore::new(config.inbound.max_connections));
    let outbound_limit = Arc::new(Semaphore::new(config.outbound.max_connections));
    let limits = vec![
        (inbound_limit.clone(), config.inbound.max_connections),
        (outbound_limit.clone(), config.outbound.max_connections),
    ];
    let inbound = Arc::new(inbound::context::Inbound {
        mode: config.inbound.mode,
        timeouts: config.timeouts.clone(),
        tls: tls.server.clone(),
        policy: inbound::policy::Policy::new(
            &config.trust_domain,
            config.inbound.policy.as_deref(),
        ),
        local: inbound::local_addrs::LocalAddrs::default(),
        proxy_ports: inbound::destination::ProxyPorts {
            inbound: config.inbound.port,
            outbound: config.outbound.port,
            admin: config.admin.address.port(),
        },
        limit: inbound_limit.clone(),
        http: inbound::app_clients::AppClients::new(config.timeouts.connect),
        store: store.clone(),
        metrics: metrics.clone(),
        lifecycle: lifecycle.clone(),
        located: locate::Located::default(),
    });
    let outbound = Arc::new(outbound::accept::Outbound {
        port: config.outbound.port,
        timeouts: config.timeouts.clone(),
        auto_detect_timeout: config.outbound.auto_detect_timeout,
        mesh_port: config.inbound.port,
        routes: outbound::routes::Routes::new(&config.outbound),
        connector: outbound::connector::Connector::new(
            dial::Dialer {
                tls,
                store: store.clone(),
                metrics: metrics.clone(),
                connect_timeout: config.timeouts.connect,
            },
            config.outbound.transport,
            config.outbound.bulk_rate,
        ),
        store: store.clone(),
        metrics: metrics.clone(),
    });

    listener::raise_fd_limit();
    tokio::spawn(wake_floor::keep());
    let mut tasks = Vec::new();
    let mut inbound_addrs = Vec::new();
    let mut outbound_addrs = Vec::new();

    for addr in &listeners.inbound {
        let Some(l) = listener::bind(*addr)? else {
            continue;
        };
        inbound_addrs.push(l.local_addr()?);
        let (ib, dst, lim) = (
            inbound.clone(),
            listeners.inbound_dst,
            inbound_limit.clone(),
        );
        tasks.push(tokio::spawn(listener::serve(
            l,
            lifecycle.subscribe(),
            lim,
            move |conn, peer, permit| inbound::accept::handle(ib.clone(), conn, peer, dst, permit),
        )));
    }
    for addr in &listeners.outbound {
        let Some(l) = listener::bind(*addr)? else {
            continue;
        };
        outbound_addrs.push(l.local_addr()?);
        let (ob, dst, lim) = (
            outbound.clone(),
            listeners.outbound_dst,
            outbound_limit.clone(),
        );
        tasks.push(tokio::spawn(listener::serve(
            l,
            lifecycle.subscribe(),
            lim,
            move |conn, peer, permit| outbound::accept::handle(ob.clone(), conn, peer, dst, permit),
        )));
    }
    if inbound_addrs.is_empty() || outbound_addrs.is_empty() {
        anyhow::bail!("no inbound or no outbound listener could be bound");
    }
    let admin_addr = match listeners.admin {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("admin.address {addr}: cannot listen"))?;
            let local = l.local_addr()?;
            let state = Arc::new(admin::Admin {
                metrics: metrics.clone(),
                store: store.clone(),
                lifecycle: lifecycle.clone(),
                app_probes: config.admin.app_probes.clone(),
                identity_source: config
                    .identity_source()
                    .map(|s| s.describe())
                    .unwrap_or_else(|e| e),
            });
            tasks.push(tokio::spawn(admin::serve(l, state)));
            Some(local)
        }
        None => None,
    };
    lifecycle.set_ready(true);
    info!(
        identity = %store.current().id,
        inbound = ?inbound_addrs,
        outbound = ?outbound_addrs,
        admin = ?admin_addr,
        "meshlet proxy ready"
    );
    Ok(Running {
        inbound,
        outbound,
        metrics,
        lifecycle,
        drain: config.timeouts.drain,
        inbound_addrs,
        outbound_addrs,
        admin_addr,
        tasks,
        limits,
    })
}

impl Running {
    /// Waits for a shutdown request, stops accepting, lets open connections finish for up to
    /// the drain timeout, then returns.
    pub async fn wait(self) {
        let mut rx = self.lifecycle.subscribe();
        while !*rx.borrow_and_update() {
            if rx.changed().await.is_err() {
                break;
            }
        }
        self.lifecycle.set_ready(false);
        let drain = self.drain;
        info!(
            ?drain,
            "shutting down: no new connections, draining open ones"
        );
        let all_returned = async {
            for (sem, n) in &self.limits {
                // Every permit back means every connection of that listener has finished.
                let _ = sem.acquire_many(*n as u32).await;
            }
        };
        if tokio::time::timeout(drain, all_returned).await.is_err() {
            warn!(
                ?drain,
                "drain timeout reached with connections still open; closing them"
            );
        }
        for t in self.tasks {
            t.abort();
        }
    }

    pub fn shutdown(&self) {
        self.lifecycle.begin_shutdown();
    }
}

/// Resolves after SIGTERM or SIGINT, or never if the handlers cannot be installed. The handlers
/// are installed when this is called, not when the future is first polled: call it before
/// announcing readiness, or a prompt SIGTERM would find the default action (exit at once).
pub fn termination_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            warn!("cannot install signal handlers; stop with POST /shutdown");
            std::future::pending::<()>().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => info!("SIGTERM received"),
            _ = int.recv() => info!("SIGINT received"),
        }
    }
}
