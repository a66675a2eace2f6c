//! The pooled transport, server half (the client half is `outbound::pooled_client`, the wire
//! they share `pooled_wire`): one authenticated mTLS connection from a peer proxy carries many
//! app connections as HTTP/2 CONNECT streams. Each stream names its original destination,
//! which must pass the `destination` rule, and enters the app through `deliver` on its own. A
//! stream marked as riding a connection dialed through a Service address (`THROUGH_HEADER`)
//! goes where that connection itself arrived, which is where the node's translation sent it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::SystemTime;

use ::http::{Method, Request, Response, StatusCode};
use bytes::Bytes;
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use meshlet_identity::SpiffeId;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{oneshot, Notify};
use tracing::debug;

use super::context::Inbound;
use super::deliver::{deliver, Answer, Caller};
use super::destination::{self, NotOnThisPod};
use crate::locate;
use crate::metrics::{DirLabels, INBOUND};
use crate::orig_dst::OriginalDst;
use crate::pooled_wire::{
    CONNECTION_WINDOW, LOCATED_HEADER, MAX_FRAME, NOT_LOCATED_HEADER, REACHED_HEADER, RETRY_HEADER,
    SEND_BUF, STREAM_WINDOW, THROUGH_HEADER,
};
use crate::reason::Reason;
use crate::refusal::{Refusal, Refused};

/// Streams one pooled connection may carry at once.
const MAX_STREAMS: u32 = 16384;

struct ConnCtx {
    inbound: Arc<Inbound>,
    caller: SpiffeId,
    peer: SocketAddr,
    /// Where the pooled connection itself arrived (an address of this pod): told to a peer whose
    /// stream names another address.
    outer_dst: SocketAddr,
    dst_mode: OriginalDst,
    /// Our identity generation when the connection was authenticated.
    generation: u64,
    /// When the caller's certificate chain expires: no stream is accepted after that, since a
    /// fresh handshake with it would be refused.
    caller_not_after: SystemTime,
    stale: Notify,
}

/// Serves a pooled connection until the peer closes it (or it drains after a rotation).
pub async fn serve<S>(
    inbound: Arc<Inbound>,
    tls: S,
    peer: SocketAddr,
    outer_dst: SocketAddr,
    caller: SpiffeId,
    caller_not_after: SystemTime,
    dst_mode: OriginalDst,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    inbound
        .metrics
        .mux_connections
        .get_or_create(&DirLabels::of(INBOUND))
        .inc();
    let ctx = Arc::new(ConnCtx {
        generation: inbound.store.generation(),
        caller_not_after,
        inbound,
        caller,
        peer,
        outer_dst,
        dst_mode,
        stale: Notify::new(),
    });
    let service_ctx = ctx.clone();
    let service = hyper::service::service_fn(move |req| {
        let ctx = service_ctx.clone();
        async move { Ok::<_, Infallible>(stream(&ctx, req).await) }
    });
    let mut conn = pin!(
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME)
            .max_send_buf_size(SEND_BUF)
            .adaptive_window(false)
            .max_concurrent_streams(MAX_STREAMS)
            .serve_connection(TokioIo::new(tls), service)
    );
    let mut draining = false;
    let caller_expires = tokio::time::sleep(
        caller_not_after
            .duration_since(SystemTime::now())
            .unwrap_or_default(),
    );
    let mut caller_expires = pin!(caller_expires);
    loop {
        tokio::select! {
            _ = caller_expires.as_mut(), if !draining => {
                debug!(%peer, caller = %ctx.caller, "caller's certificate expired; draining its pooled connection");
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            result = conn.as_mut() => {
                if let Err(e) = result {
                    debug!(%peer, error = %e, "pooled connection ended with an error");
                }
                return;
            }
            _ = ctx.stale.notified(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = ctx.inbound.lifecycle.shutting_down(), if !draining => {
                // GOAWAY: the peer opens no new streams here; the open ones finish.
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

fn reply(status: StatusCode) -> Response<Empty<Bytes>> {
    let mut resp = Response::new(Empty::new());
    *resp.status_mut() = status;
    resp
}

fn refuse(ctx: &ConnCtx, refusal: Refusal, status: StatusCode) -> Response<Empty<Bytes>> {
    refusal
        .by(&ctx.caller)
        .record(&ctx.inbound.metrics, INBOUND, Refused::Stream, ctx.peer);
    reply(status)
}

/// How a stream's caller learns the verdict: the status of its CONNECT, then (admitted) the
/// upgraded stream.
struct StreamAnswer {
    verdict: oneshot::Sender<StatusCode>,
    upgrade: OnUpgrade,
    inbound: Arc<Inbound>,
}

impl Answer for StreamAnswer {
    type Stream = TokioIo<Upgraded>;
    const TAKES_PERMIT: bool = true;

    fn unread(&self) -> &[u8] {
        &[]
    }

    async fn admitted(self) -> Option<Self::Stream> {
        self.inbound
            .metrics
            .mux_streams
            .get_or_create(&DirLabels::of(INBOUND))
            .inc();
        self.verdict.send(StatusCode::OK).ok()?;
        self.upgrade.await.ok().map(TokioIo::new)
    }

    fn refused(self, refusal: &Refusal) {
        let status = match refusal.reason {
            Reason::Overloaded | Reason::AppUnreachable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::FORBIDDEN,
        };
        let _ = self.verdict.send(status);
    }
}

async fn stream(ctx: &ConnCtx, mut req: Request<Incoming>) -> Response<Empty<Bytes>> {
    let inbound = &ctx.inbound;
    if inbound.store.generation() != ctx.generation || SystemTime::now() >= ctx.caller_not_after {
        // Authenticated with an identity or bundle we no longer hold, or with a caller
        // certificate that has since expired: drain, and let the peer redial (its fresh
        // handshake is judged by today's rules).
        ctx.stale.notify_one();
        let mut resp = reply(StatusCode::SERVICE_UNAVAILABLE);
        resp.headers_mut().insert(
            RETRY_HEADER,
            ::http::HeaderValue::from_static("stale-connection"),
        );
        return resp;
    }
    if req.method() != Method::CONNECT {
        return refuse(
            ctx,
            Refusal::new(Reason::BadStream, "not a CONNECT request"),
            StatusCode::METHOD_NOT_ALLOWED,
        );
    }
    let Some(named) = req
        .uri()
        .authority()
        .and_then(|a| a.as_str().parse::<SocketAddr>().ok())
    else {
        return refuse(
            ctx,
            Refusal::new(Reason::BadStream, "CONNECT without an ip:port authority"),
            StatusCode::BAD_REQUEST,
        );
    };
    let captured = matches!(ctx.dst_mode, OriginalDst::Kernel);
    let through = req.headers().contains_key(THROUGH_HEADER);
    if let (true, false, Some(token)) = (captured, through, req.headers().get(LOCATED_HEADER)) {
        // A located stream goes only where this proxy's own locate answer said, to this
        // caller: a token from elsewhere (a lying answer, a relayed request) is refused.
        if !locate::claim_header(&inbound.located, token, ctx.peer.ip(), named) {
            let mut resp = refuse(
                ctx,
                Refusal::new(
                    Reason::NotLocated,
                    "stream names a locate this proxy did not answer for this caller and address",
                )
                .at(named),
                StatusCode::FORBIDDEN,
            );
            resp.headers_mut()
                .insert(NOT_LOCATED_HEADER, ::http::HeaderValue::from_static("1"));
            return resp;
        }
    }
    // A through stream names the Service address its client dialed; it is delivered where the
    // pooled connection arrived, which the same rule must admit (a connection dialed straight
    // at one of the proxy's ports stays refused).
    let target = if through { ctx.outer_dst } else { named };
    let dst = match destination::admit(&inbound.local, &inbound.proxy_ports, ctx.dst_mode, target) {
        Ok(dst) => dst,
        Err(NotOnThisPod::ForeignAddress(_)) if !through && !named.ip().is_loopback() => {
            // Most likely a virtual destination (a Service address the node translated):
            // say where this connection really arrived, so the peer can name it.
            debug!(peer = %ctx.peer, %named, reached = %ctx.outer_dst, "stream names another address; telling the peer where it arrived");
            let mut resp = reply(StatusCode::MISDIRECTED_REQUEST);
            if let Ok(v) = ::http::HeaderValue::from_str(&ctx.outer_dst.to_string()) {
                resp.headers_mut().insert(REACHED_HEADER, v);
            }
            return resp;
        }
        Err(e) => return refuse(ctx, e.into(), StatusCode::FORBIDDEN),
    };
    let (verdict, heard) = oneshot::channel();
    let answer = StreamAnswer {
        verdict,
        upgrade: hyper::upgrade::on(&mut req),
        inbound: inbound.clone(),
    };
    let (inbound, caller, peer) = (inbound.clone(), ctx.caller.clone(), ctx.peer);
    tokio::spawn(async move {
        if let Err(refusal) = deliver(&inbound, Caller::Mesh(caller), peer, dst, answer).await {
            refusal.record(&inbound.metrics, INBOUND, Refused::Stream, peer);
        }
    });
    let mut resp = reply(heard.await.unwrap_or(StatusCode::SERVICE_UNAVAILABLE));
    if through {
        if let Ok(v) = ::http::HeaderValue::from_str(&dst.addr().to_string()) {
            resp.headers_mut().insert(REACHED_HEADER, v);
        }
    }
    resp
}
