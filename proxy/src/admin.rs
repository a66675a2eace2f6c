//! The admin server: `/live`, `/ready`, `/metrics`, `POST /shutdown` (loopback callers only),
//! and `/app-health/<container>/<kind>`: the app's kubelet probes, run by the proxy (`app_probe`).

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::{debug, info};

use meshlet_identity::IdentityStore;

use crate::app_probe::AppProbe;
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;

/// What the admin server reads and controls.
pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub store: Arc<IdentityStore>,
    pub lifecycle: Arc<Lifecycle>,
    /// By `<container>/<kind>`.
    pub app_probes: BTreeMap<String, AppProbe>,
}

/// Admin connections open at once. Beyond this a new one is closed at once: the admin port
/// answers probes and scrapes, and a flood of idle connections to it must not take the file
/// descriptors the data plane needs.
pub const MAX_CONNECTIONS: usize = 256;

/// Admin connections one address may hold at once. The port is reachable from every pod (the
/// kubelet must reach it), so without this one pod holding the slots would fail every probe of
/// this pod — and the kubelet would restart its app. A kubelet probes over one connection at a
/// time per probe; a scraper over one.
pub const MAX_PER_PEER: usize = 8;

/// How many admin connections each address holds.
#[derive(Default)]
struct PerPeer(Mutex<HashMap<IpAddr, usize>>);

/// A connection's place in [`PerPeer`], given back when it ends.
struct PeerSlot {
    peers: Arc<PerPeer>,
    ip: IpAddr,
}

impl PerPeer {
    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<PeerSlot> {
        let mut held = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = held.entry(ip).or_default();
        if *n >= MAX_PER_PEER {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            peers: self.clone(),
            ip,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut held = self.peers.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = held.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.ip);
            }
        }
    }
}

pub async fn serve(listener: TcpListener, admin: Arc<Admin>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let peers = Arc::new(PerPeer::default());
    loop {
        let Ok((conn, peer)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            continue;
        };
        let Some(peer_slot) = peers.take(peer.ip()) else {
            debug!(%peer, "admin connection refused: this address already holds {MAX_PER_PEER}");
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%peer, "admin connection refused: {MAX_CONNECTIONS} already open");
            continue;
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let _slots = (slot, peer_slot);
            let service = hyper::service::service_fn(|req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(route(&admin, peer, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                // Also bounds how long an idle keep-alive connection holds its slot.
                .header_read_timeout(std::time::Duration::from_secs(5))
                .serve_connection(TokioIo::new(conn), service);
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "admin connection error");
            }
        });
    }
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    resp
}

async fn route(admin: &Admin, peer: SocketAddr, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if let Some(name) = req.uri().path().strip_prefix("/app-health/") {
        return app_health(admin, req.method(), name).await;
    }
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/live") => reply(StatusCode::OK, "text/plain", "live\n"),
        (&Method::GET, "/ready") => {
            if admin.lifecycle.is_ready() {
                reply(StatusCode::OK, "text/plain", "ready\n")
            } else {
                reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n")
            }
        }
        (&Method::GET, "/metrics") => {
            let seconds_left = admin.store.current().seconds_left(SystemTime::now());
            admin.metrics.cert_expiry_seconds.set(seconds_left);
            reply(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                admin.metrics.encode(),
            )
        }
        (&Method::POST, "/shutdown") => {
            if peer.ip().is_loopback() {
                info!(%peer, "shutdown requested through the admin server");
                admin.lifecycle.begin_shutdown();
                reply(StatusCode::OK, "text/plain", "shutting down\n")
            } else {
                reply(
                    StatusCode::FORBIDDEN,
                    "text/plain",
                    "shutdown is only accepted from loopback\n",
                )
            }
        }
        (_, "/live" | "/ready" | "/metrics" | "/shutdown") => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed\n",
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /live, /ready, /metrics, POST /shutdown, /app-health/<container>/<kind>\n",
        ),
    }
}

/// Runs one of the app's probes; 200 when it passes, 503 with the reason when it does not.
async fn app_health(admin: &Admin, method: &Method, name: &str) -> Response<Full<Bytes>> {
    if method != Method::GET {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed\n",
        );
    }
    let Some(probe) = admin.app_probes.get(name) else {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            format!("no app probe {name:?} is configured (admin.app_probes)\n"),
        );
    };
    match probe.run().await {
        Ok(seen) => reply(StatusCode::OK, "text/plain", format!("{seen}\n")),
        Err(why) => {
            debug!(probe = name, reason = %why, "app probe failed");
            reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("{why}\n"),
            )
        }
    }
}
