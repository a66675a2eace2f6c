//! The one way into the app. Every caller comes here once its destination has passed the
//! destination rule (a [`PodDst`] is made only by `destination::admit`): an mTLS connection, a
//! plaintext caller of a permissive pod, or a stream of a pooled connection. Here, in this
//! order: strict mode's rule for unauthenticated callers, policy, the HTTP rule for plaintext,
//! the connection permit, the app connect, and then the bytes or HTTP, request by request.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use meshlet_identity::SpiffeId;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::OwnedSemaphorePermit;
use tracing::debug;

use super::context::Inbound;
use super::destination::PodDst;
use super::detect::Protocol;
use super::policy::Access;
use super::{http, require_http, require_mesh};
use crate::metrics::INBOUND;
use crate::reason::Reason;
use crate::refusal::Refusal;
use crate::{copy, dial};

/// Who is calling.
#[derive(Debug, Clone)]
pub enum Caller {
    /// Authenticated by mTLS.
    Mesh(SpiffeId),
    /// Not authenticated: what its first bytes showed (plaintext, foreign TLS, or nothing yet).
    Plain(Protocol),
}

impl Caller {
    fn id(&self) -> Option<&SpiffeId> {
        match self {
            Caller::Mesh(id) => Some(id),
            Caller::Plain(_) => None,
        }
    }

    /// The refusal, naming the caller for the log when it is authenticated.
    fn named(&self, refusal: Refusal) -> Refusal {
        match self.id() {
            Some(id) => refusal.by(id),
            None => refusal,
        }
    }
}

/// How a caller hands over its stream, and hears that it is refused.
pub trait Answer: Send {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Whether it takes a connection permit here (a pooled stream counts against
    /// `inbound.max_connections` like a connection of its own); a connection holds the one its
    /// listener took.
    const TAKES_PERMIT: bool;
    /// What the caller sent that is already read (replayed to the app first).
    fn unread(&self) -> &[u8];
    /// Admitted, and the app reached: the stream that carries the app's bytes (`None`: the
    /// caller is gone).
    fn admitted(self) -> impl Future<Output = Option<Self::Stream>> + Send;
    /// Refused: how the caller learns it (a connection is closed; a stream gets a status).
    fn refused(self, refusal: &Refusal);
}

/// A connection of its own: admitted as it is, refused by being closed.
pub struct Connection<S>(pub S);

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Answer for Connection<S>
where
    S: Unread,
{
    type Stream = S;
    const TAKES_PERMIT: bool = false;

    fn unread(&self) -> &[u8] {
        self.0.unread()
    }

    async fn admitted(self) -> Option<S> {
        Some(self.0)
    }

    fn refused(self, _: &Refusal) {}
}

/// A stream that may hold bytes already read from the caller.
pub trait Unread {
    fn unread(&self) -> &[u8];
}

impl<S> Unread for crate::rewind::Rewind<S> {
    fn unread(&self) -> &[u8] {
        crate::rewind::Rewind::unread(self)
    }
}

impl<S> Unread for tokio_rustls::server::TlsStream<S> {
    fn unread(&self) -> &[u8] {
        &[]
    }
}

impl<S: Unread> Unread for Box<S> {
    fn unread(&self) -> &[u8] {
        S::unread(self)
    }
}

/// Delivers `caller`'s stream to the app at `dst`, or refuses it.
pub async fn deliver<A: Answer>(
    inbound: &Arc<Inbound>,
    caller: Caller,
    peer: SocketAddr,
    dst: PodDst,
    answer: A,
) -> Result<(), Refusal> {
    let dst = dst.addr();
    let admitted = admit(inbound, &caller, dst, A::TAKES_PERMIT, answer.unread());
    let (access, permit) = match admitted {
        Ok(admitted) => admitted,
        Err(refusal) => {
            answer.refused(&refusal);
            return Err(caller.named(refusal));
        }
    };
    // A stream that took its own permit is counted as a connection of its own.
    let _active = permit.as_ref().map(|_| inbound.metrics.track(INBOUND));
    let tls = match caller {
        Caller::Mesh(_) => "mtls",
        Caller::Plain(protocol) => {
            debug!(%peer, %dst, ?protocol, ?access, "permissive: an unauthenticated caller");
            "plain"
        }
    };
    inbound.metrics.opened(INBOUND, tls);
    match access {
        Access::Tcp => {
            let mut app = match dial::connect_tcp(dst, inbound.timeouts.connect).await {
                Ok(app) => app,
                Err(e) => {
                    let detail = format!("cannot connect to the app at {dst}: {e}");
                    let refusal = Refusal::new(Reason::AppUnreachable, detail).at(dst);
                    answer.refused(&refusal);
                    return Err(caller.named(refusal));
                }
            };
            if let Some(mut stream) = answer.admitted().await {
                copy::bidirectional(INBOUND, &inbound.metrics, &mut stream, &mut app).await;
            }
        }
        Access::Http => {
            if let Some(stream) = answer.admitted().await {
                let caller = match caller {
                    Caller::Mesh(id) => Some(id),
                    Caller::Plain(_) => None,
                };
                // Boxed: only HTTP ports need the HTTP server's state.
                Box::pin(http::serve_inbound(
                    inbound.clone(),
                    stream,
                    peer,
                    dst,
                    caller,
                ))
                .await;
            }
        }
    }
    drop(permit);
    Ok(())
}

/// The admission rules, in order: the access policy grants, and the permit taken for it.
fn admit(
    inbound: &Inbound,
    caller: &Caller,
    dst: SocketAddr,
    takes_permit: bool,
    unread: &[u8],
) -> Result<(Access, Option<OwnedSemaphorePermit>), Refusal> {
    let at = |r: Refusal| r.at(dst);
    if let Caller::Plain(protocol) = caller {
        require_mesh::check(inbound.mode, *protocol).map_err(at)?;
    }
    let access = inbound
        .policy
        .check_connection(caller.id(), dst.port())
        .map_err(|d| at(d.into()))?;
    if let (Caller::Plain(protocol), Access::Http) = (caller, access) {
        require_http::check(*protocol, unread).map_err(at)?;
    }
    let permit = match takes_permit {
        false => None,
        true => Some(inbound.limit.clone().try_acquire_owned().map_err(|_| {
            at(Refusal::new(
                Reason::Overloaded,
                "inbound.max_connections reached",
            ))
        })?),
    };
    Ok((access, permit))
}
