//! The admin server: `/live`, `/ready`, `/metrics`, `POST /shutdown` (loopback callers only),
//! and `/app-health/<container>/<kind>`: the app's kubelet probes, run by the proxy (`app_probe`).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::{debug, info};

use meshlet_identity::IdentityStore;

use crate::admin_slots::{Slots, MAX_CONNECTIONS, MAX_PER_PEER};
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
    /// Where the identity comes from (`Source::describe`).
    pub identity_source: String,
}

pub async fn serve(listener: TcpListener, admin: Arc<Admin>) {
    let slots = Slots::new(MAX_CONNECTIONS, MAX_PER_PEER);
    loop {
        let Ok((conn, peer)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            continue;
        };
        let slot = match slots.take(peer.ip()) {
            Ok(slot) => slot,
            Err(refused) => {
                debug!(%peer, reason = refused.reason(), "admin connection refused");
                continue;
            }
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(route(&admin, peer, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                // Also bounds how long an idle keep-alive connection holds its slot.
                .header_read_timeout(std::time::Duration::from_secs(5))
                .serve_connection(TokioIo::new(conn), service);
            tokio::select! {
                done = conn => if let Err(e) = done {
                    debug!(%peer, error = %e, "admin connection error");
                },
                _ = slot.evicted.notified() => {
                    debug!(%peer, "admin connection closed: its slot went to an address holding fewer");
                }
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
        (&Method::GET, "/identity") => {
            let identity = admin.store.current();
            let text = format!(
                "id: {}\nsource: {}\nexpires: {}\nseconds_left: {}\n",
                identity.id,
                admin.identity_source,
                meshlet_identity::svid::fmt_time(identity.not_after),
                identity.seconds_left(SystemTime::now()),
            );
            reply(StatusCode::OK, "text/plain", text)
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
        (_, "/live" | "/ready" | "/metrics" | "/identity" | "/shutdown") => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed\n",
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /live, /ready, /metrics, /identity, POST /shutdown, /app-health/<container>/<kind>\n",
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
