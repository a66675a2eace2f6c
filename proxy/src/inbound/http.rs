//! HTTP on inbound policy ports: every request is authorized by method and normalized path, the
//! app learns the caller's identity in `x-forwarded-client-cert`, and a refused request gets
//! `403 Access denied` without ever reaching the app. The connection stays usable either way.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, CONNECTION, CONTENT_LENGTH, UPGRADE};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshlet_identity::SpiffeId;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, warn};

use super::context::Inbound;
use super::head_timer::{HeadTimer, InFlight};
use super::http_path;
use crate::metrics::{HttpLabels, INBOUND};
use crate::reason::Reason;
use crate::refusal::{Refusal, Refused};

pub const XFCC: &str = "x-forwarded-client-cert";

type Body = BoxBody<Bytes, hyper::Error>;

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut resp = Response::new(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|e| match e {})
            .boxed(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain"),
    );
    resp
}

/// Serves HTTP/1.1 or HTTP/2 until the caller closes it. `caller`: the authenticated SPIFFE ID,
/// or `None` for a plaintext caller of a permissive pod, whose requests are checked as an
/// unauthenticated caller's.
pub async fn serve_inbound<S>(
    inbound: Arc<Inbound>,
    stream: S,
    peer: SocketAddr,
    dst: SocketAddr,
    caller: Option<SpiffeId>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ctx = Arc::new(RequestCtx {
        by: caller
            .as_ref()
            .map(|c| format!("By={};URI={}", inbound.store.current().id, c)),
        port_label: dst.port().to_string(),
        caller,
        dst,
        peer,
    });
    let in_flight = Arc::new(InFlight::default());
    let service = hyper::service::service_fn(|req: Request<Incoming>| {
        let (ctx, inbound, in_flight) = (ctx.clone(), inbound.clone(), in_flight.clone());
        async move {
            in_flight.start();
            let resp = handle_request(&inbound, &ctx, req).await;
            in_flight.finish();
            Ok::<_, Infallible>(resp)
        }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // hyper's header timeout would also time the idle wait between requests: HeadTimer times
    // each head from its first byte instead, so a trickling caller is still cut off.
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(None);
    let stream = HeadTimer::new(
        stream,
        in_flight.clone(),
        inbound.timeouts.first_byte,
        inbound.timeouts.http_idle,
    );
    if let Err(e) = builder
        .serve_connection_with_upgrades(TokioIo::new(stream), service)
        .await
    {
        debug!(%peer, error = %e, "HTTP connection ended with an error");
    }
}

struct RequestCtx {
    caller: Option<SpiffeId>,
    /// The `x-forwarded-client-cert` value for this connection (none when unauthenticated).
    by: Option<String>,
    port_label: String,
    dst: SocketAddr,
    peer: SocketAddr,
}

async fn handle_request(
    inbound: &Inbound,
    ctx: &RequestCtx,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let port = ctx.dst.port();
    let method = req.method().as_str().to_owned();
    let raw_path = req.uri().path().to_owned();
    let refuse = |refusal: Refusal| {
        let refusal = refusal.at(ctx.dst);
        let refusal = match &ctx.caller {
            Some(caller) => refusal.by(caller),
            None => refusal,
        };
        refusal.record(&inbound.metrics, INBOUND, Refused::Request, ctx.peer);
    };
    let normalized = match http_path::normalize(&raw_path) {
        Ok(n) => n,
        Err(unsafe_path) => {
            refuse(Refusal::new(
                Reason::UnsafePath,
                format!(
                    "{method} {raw_path}: path cannot be normalized safely ({})",
                    unsafe_path.0
                ),
            ));
            return text(
                StatusCode::BAD_REQUEST,
                "Bad request: path cannot be normalized safely\n",
            );
        }
    };
    let path = &normalized.path;
    if let Err(denial) = inbound
        .policy
        .check_request(ctx.caller.as_ref(), port, &method, path)
    {
        refuse(denial.into());
        return text(StatusCode::FORBIDDEN, "Access denied\n");
    }
    inbound
        .metrics
        .http_requests
        .get_or_create(&HttpLabels {
            port: ctx.port_label.clone(),
            decision: "allowed",
            reason: "policy",
        })
        .inc();

    // Forward what was matched: the normalized path, with the original query.
    let target = match req.uri().query() {
        Some(q) => format!("http://{}{}?{}", ctx.dst, normalized.wire, q),
        None => format!("http://{}{}", ctx.dst, normalized.wire),
    };
    let Ok(uri) = target.parse::<Uri>() else {
        refuse(Refusal::new(
            Reason::BadTarget,
            format!("{method} {path}: the request's target cannot be rebuilt"),
        ));
        return text(StatusCode::BAD_REQUEST, "Bad request\n");
    };
    let is_h2 = req.version() == http::Version::HTTP_2;
    if is_h2 && req.headers().get(http::header::HOST).is_none() {
        if let Some(authority) = req.uri().authority().cloned() {
            if let Ok(v) = HeaderValue::from_str(authority.as_str()) {
                req.headers_mut().insert(http::header::HOST, v);
            }
        }
    }
    *req.uri_mut() = uri;
    let headers = req.headers_mut();
    // Whatever the caller sent in it, the app only ever sees what the proxy authenticated.
    headers.remove(XFCC);
    if let Some(v) = ctx
        .by
        .as_deref()
        .and_then(|by| HeaderValue::from_str(by).ok())
    {
        headers.insert(XFCC, v);
    }

    let wants_upgrade = req.headers().contains_key(UPGRADE)
        && req
            .headers()
            .get(CONNECTION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade"));
    // A body of unknown length goes to an HTTP/1 app chunked. An app that does not speak
    // chunked would read the rest as the next request on a reused connection, one that policy
    // never saw: such a request gets an app connection of its own, closed after it.
    if !is_h2
        && !wants_upgrade
        && !hyper::body::Body::is_end_stream(req.body())
        && !req.headers().contains_key(CONTENT_LENGTH)
    {
        req.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    let caller_upgrade = wants_upgrade.then(|| hyper::upgrade::on(&mut req));

    let client = if is_h2 {
        &inbound.http.h2
    } else {
        &inbound.http.h1
    };
    let result = client.request(req).await;
    let mut resp = match result {
        Ok(r) => r,
        Err(e) if caller_body_failed(&e) => {
            // The head may have reached the app; the app connection is dropped with the error.
            warn!(caller = %caller_name(&ctx.caller), peer = %ctx.peer, error = %e, "request refused: malformed request body");
            return text(StatusCode::BAD_REQUEST, "Bad request: malformed body\n");
        }
        Err(e) => {
            warn!(caller = %caller_name(&ctx.caller), dst = %ctx.dst, error = %e, "app unreachable for an allowed request");
            return text(StatusCode::SERVICE_UNAVAILABLE, "Service unavailable\n");
        }
    };
    if let (Some(caller_upgrade), StatusCode::SWITCHING_PROTOCOLS) = (caller_upgrade, resp.status())
    {
        let app_upgrade = hyper::upgrade::on(&mut resp);
        let metrics = inbound.metrics.clone();
        tokio::spawn(async move {
            match (caller_upgrade.await, app_upgrade.await) {
                (Ok(c), Ok(a)) => {
                    let (mut c, mut a) = (TokioIo::new(c), TokioIo::new(a));
                    crate::copy::bidirectional(INBOUND, &metrics, &mut c, &mut a).await;
                }
                (c, a) => debug!(caller_ok = c.is_ok(), app_ok = a.is_ok(), "upgrade failed"),
            }
        });
    }
    resp.map(|b| b.boxed())
}

/// Whether a failed forward failed because the caller's request body was malformed (an
/// invalid chunk, say), rather than because of the app.
fn caller_body_failed(err: &hyper_util::client::legacy::Error) -> bool {
    let mut source = std::error::Error::source(err);
    while let Some(e) = source {
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            if h.is_user() {
                return true;
            }
        }
        source = e.source();
    }
    false
}

fn caller_name(caller: &Option<SpiffeId>) -> String {
    caller.as_ref().map_or_else(
        || "an unauthenticated caller".to_owned(),
        ToString::to_string,
    )
}
