//! The pooled transport, server half (the client half is `outbound::pooled_client`, the wire
//! they share `pooled_wire`): one authenticated mTLS connection from a peer proxy carries many
//! app connections as HTTP/2 CONNECT streams. Each stream names its original destination,
//! which must pass the `destination` rule, and enters the app through `deliver` on its own. A
//! stream marked as riding a connection dialed through a Service address (`THROUGH_HEADER`)
//! goes where that connection itself arrived, which is where the node's translation sent it.
//!
//! The connection's task reads frames and accepts streams; each stream gets one task of its own,
//! which judges it, answers its CONNECT and then carries its bytes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use ::http::{HeaderValue, Method, Request, Response, StatusCode};
use bytes::Bytes;
use h2::server::SendResponse;
use h2::RecvStream;
use meshlet_identity::SpiffeId;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tracing::debug;

use super::context::Inbound;
use super::deliver::{deliver, Answer, Caller};
use super::destination::{self, NotOnThisPod};
use crate::locate;
use crate::metrics::{DirLabels, INBOUND};
use crate::orig_dst::OriginalDst;
use crate::pooled_stream::PooledStream;
use crate::pooled_wire::{
    CONNECTION_WINDOW, LOCATED_HEADER, MAX_FRAME, MAX_HEADER_LIST, NOT_LOCATED_HEADER,
    REACHED_HEADER, RETRY_HEADER, SEND_BUF, STREAM_WINDOW, THROUGH_HEADER,
};
use crate::reason::{Denied, Reason};
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
    /// Told by a stream that found the connection stale: drain it.
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
    let handshake = h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_send_buffer_size(SEND_BUF)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_concurrent_streams(MAX_STREAMS)
        .handshake::<_, Bytes>(tls);
    // The caller's HTTP/2 preface is due at once (a meshlet client sends it with its first
    // flight): a caller that completed mTLS and then stays silent would otherwise hold this
    // connection, and its `inbound.max_connections` slot, for as long as it likes, whatever
    // the policy grants it.
    let mut conn = match tokio::time::timeout(inbound.timeouts.handshake, handshake).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "pooled connection failed before its first stream");
            return;
        }
        Err(_) => {
            let detail = format!(
                "no HTTP/2 preface within timeouts.handshake ({:?}) after the mTLS handshake",
                inbound.timeouts.handshake
            );
            Refusal::new(Reason::Timeout, detail).by(&caller).record(
                &inbound.metrics,
                INBOUND,
                Refused::Connection,
                peer,
            );
            return;
        }
    };
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
    let mut draining = false;
    let caller_expires = tokio::time::sleep(
        caller_not_after
            .duration_since(SystemTime::now())
            .unwrap_or_default(),
    );
    let mut caller_expires = std::pin::pin!(caller_expires);
    // A caller that no policy rule lets call any port of this pod gets its first stream
    // answered (a 403, so that its proxy says why) and no more: it holds its slot for at most
    // `timeouts.handshake`, however it behaves, instead of for as long as it likes.
    let granted = ctx.inbound.policy.grants_anything(&ctx.caller);
    let refused_by = tokio::time::sleep(ctx.inbound.timeouts.handshake);
    let mut refused_by = std::pin::pin!(refused_by);
    let mut answered = false;
    loop {
        tokio::select! {
            _ = refused_by.as_mut(), if !granted => {
                if !answered {
                    let refusal = Refusal::new(
                        Reason::Policy(Denied::NoMatchingRule),
                        "no policy rule lets this caller call any port of this pod, and its pooled connection opened no stream within timeouts.handshake",
                    );
                    refusal.by(&ctx.caller).record(&ctx.inbound.metrics, INBOUND, Refused::Connection, peer);
                }
                return;
            }
            _ = caller_expires.as_mut(), if !draining => {
                debug!(%peer, caller = %ctx.caller, "caller's certificate expired; draining its pooled connection");
                draining = true;
                conn.graceful_shutdown();
            }
            accepted = conn.accept() => match accepted {
                Some(Ok((req, respond))) => {
                    let task = ctx.clone();
                    tokio::spawn(async move { stream(&task, req, respond).await });
                    if !granted && !answered {
                        answered = true;
                        debug!(%peer, caller = %ctx.caller, "no policy rule grants this caller anything: its pooled connection takes no further stream");
                        draining = true;
                        conn.graceful_shutdown();
                    }
                }
                Some(Err(e)) => {
                    debug!(%peer, error = %e, "pooled connection ended with an error");
                    return;
                }
                // Closed, and every stream done.
                None => return,
            },
            _ = ctx.stale.notified(), if !draining => {
                draining = true;
                conn.graceful_shutdown();
            }
            _ = ctx.inbound.lifecycle.shutting_down(), if !draining => {
                // GOAWAY: the peer opens no new streams here; the open ones finish.
                draining = true;
                conn.graceful_shutdown();
            }
        }
    }
}

/// Answers a stream that goes no further: its status (and headers), and the end of it.
fn reply(
    mut respond: SendResponse<Bytes>,
    status: StatusCode,
    header: Option<(&'static str, HeaderValue)>,
) {
    let mut resp = Response::new(());
    *resp.status_mut() = status;
    if let Some((name, value)) = header {
        resp.headers_mut().insert(name, value);
    }
    // The peer may have reset the stream already; then there is nobody to tell.
    let _ = respond.send_response(resp, true);
}

fn refuse(
    ctx: &ConnCtx,
    respond: SendResponse<Bytes>,
    refusal: Refusal,
    status: StatusCode,
    header: Option<(&'static str, HeaderValue)>,
) {
    refusal
        .by(&ctx.caller)
        .record(&ctx.inbound.metrics, INBOUND, Refused::Stream, ctx.peer);
    reply(respond, status, header);
}

/// How a stream's caller learns the verdict: the status of its CONNECT, then (admitted) the
/// stream's bytes both ways.
struct StreamAnswer {
    respond: SendResponse<Bytes>,
    recv: RecvStream,
    /// For a through stream, the backend address told to the client with the 200.
    reached: Option<HeaderValue>,
    inbound: Arc<Inbound>,
}

impl Answer for StreamAnswer {
    type Stream = PooledStream;
    const TAKES_PERMIT: bool = true;

    fn unread(&self) -> &[u8] {
        &[]
    }

    async fn admitted(mut self) -> Option<Self::Stream> {
        self.inbound
            .metrics
            .mux_streams
            .get_or_create(&DirLabels::of(INBOUND))
            .inc();
        let mut resp = Response::new(());
        if let Some(reached) = self.reached {
            resp.headers_mut().insert(REACHED_HEADER, reached);
        }
        let send = self.respond.send_response(resp, false).ok()?;
        Some(PooledStream::new(send, self.recv))
    }

    fn refused(self, refusal: &Refusal) {
        let status = match refusal.reason {
            Reason::Overloaded | Reason::AppUnreachable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::FORBIDDEN,
        };
        reply(self.respond, status, None);
    }
}

/// One stream, in a task of its own: judged, answered, and (admitted) carried into the app.
async fn stream(ctx: &ConnCtx, req: Request<RecvStream>, respond: SendResponse<Bytes>) {
    let inbound = &ctx.inbound;
    if inbound.store.generation() != ctx.generation || SystemTime::now() >= ctx.caller_not_after {
        // Authenticated with an identity or bundle we no longer hold, or with a caller
        // certificate that has since expired: drain, and let the peer redial (its fresh
        // handshake is judged by today's rules).
        ctx.stale.notify_one();
        let retry = (RETRY_HEADER, HeaderValue::from_static("stale-connection"));
        return reply(respond, StatusCode::SERVICE_UNAVAILABLE, Some(retry));
    }
    if req.method() != Method::CONNECT {
        let refusal = Refusal::new(Reason::BadStream, "not a CONNECT request");
        return refuse(ctx, respond, refusal, StatusCode::METHOD_NOT_ALLOWED, None);
    }
    let Some(named) = req
        .uri()
        .authority()
        .and_then(|a| a.as_str().parse::<SocketAddr>().ok())
    else {
        let refusal = Refusal::new(Reason::BadStream, "CONNECT without an ip:port authority");
        return refuse(ctx, respond, refusal, StatusCode::BAD_REQUEST, None);
    };
    let captured = matches!(ctx.dst_mode, OriginalDst::Kernel);
    let through = req.headers().contains_key(THROUGH_HEADER);
    if let (true, false, Some(token)) = (captured, through, req.headers().get(LOCATED_HEADER)) {
        // A located stream goes only where this proxy's own locate answer said, to this
        // caller: a token from elsewhere (a lying answer, a relayed request) is refused.
        if !locate::claim_header(&inbound.located, token, ctx.peer.ip(), named) {
            let refusal = Refusal::new(
                Reason::NotLocated,
                "stream names a locate this proxy did not answer for this caller and address",
            )
            .at(named);
            let not_located = (NOT_LOCATED_HEADER, HeaderValue::from_static("1"));
            return refuse(
                ctx,
                respond,
                refusal,
                StatusCode::FORBIDDEN,
                Some(not_located),
            );
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
            let reached = HeaderValue::from_str(&ctx.outer_dst.to_string())
                .ok()
                .map(|v| (REACHED_HEADER, v));
            return reply(respond, StatusCode::MISDIRECTED_REQUEST, reached);
        }
        Err(e) => return refuse(ctx, respond, e.into(), StatusCode::FORBIDDEN, None),
    };
    let answer = StreamAnswer {
        respond,
        recv: req.into_body(),
        reached: through
            .then(|| HeaderValue::from_str(&dst.addr().to_string()).ok())
            .flatten(),
        inbound: inbound.clone(),
    };
    if let Err(refusal) = deliver(
        inbound,
        Caller::Mesh(ctx.caller.clone()),
        ctx.peer,
        dst,
        answer,
    )
    .await
    {
        refusal.record(&inbound.metrics, INBOUND, Refused::Stream, ctx.peer);
    }
}
