//! Binding listeners and the accept loop shared by both directions.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, warn};

/// Binds a listening socket. IPv6 sockets are v6-only (the IPv4 listener is separate);
/// `Ok(None)` when the address is IPv6 and this host has no IPv6.
pub fn bind(addr: SocketAddr) -> anyhow::Result<Option<TcpListener>> {
    let socket = match Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)) {
        Ok(s) => s,
        Err(e) if addr.is_ipv6() => {
            warn!(%addr, error = %e, "IPv6 unavailable; not listening on it");
            return Ok(None);
        }
        Err(e) => return Err(e).with_context(|| format!("{addr}: cannot create socket")),
    };
    if addr.is_ipv6() {
        socket
            .set_only_v6(true)
            .with_context(|| format!("{addr}: IPV6_V6ONLY"))?;
    }
    socket
        .set_reuse_address(true)
        .with_context(|| format!("{addr}: SO_REUSEADDR"))?;
    // Accepted sockets inherit TCP_NODELAY from the listener: one system call per listener
    // instead of one per connection.
    socket
        .set_tcp_nodelay(true)
        .with_context(|| format!("{addr}: TCP_NODELAY"))?;
    socket.set_nonblocking(true)?;
    if let Err(e) = socket.bind(&addr.into()) {
        if addr.is_ipv6() && e.kind() == std::io::ErrorKind::AddrNotAvailable {
            warn!(%addr, "IPv6 address unavailable; not listening on it");
            return Ok(None);
        }
        return Err(e)
            .with_context(|| format!("{addr}: cannot listen (is another proxy running?)"));
    }
    socket
        .listen(1024)
        .with_context(|| format!("{addr}: listen"))?;
    Ok(Some(TcpListener::from_std(socket.into())?))
}

/// Accepts until `stop` turns true (shutdown). At most as many connections as the semaphore has permits are
/// handled at once (pooled streams take permits from the same semaphore); beyond that, callers
/// wait in the kernel's accept queue. The handler holds the permit for as long as it runs.
pub async fn serve<F, Fut>(
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    limit: Arc<Semaphore>,
    handler: F,
) where
    F: Fn(TcpStream, SocketAddr, OwnedSemaphorePermit) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        match accepted {
            Ok((conn, peer)) => {
                // At the limit, this connection waits for a slot and the next ones wait in the
                // kernel's accept queue. The slot is taken after accept so that the limit counts
                // connections being handled, not the loop waiting for the next one.
                let permit = tokio::select! {
                    p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                    _ = stop.wait_for(|s| *s) => return,
                };
                // The handler's future is spawned as it is: wrapping it in another async block
                // would store it twice in the task (rustc keeps the captured future and the
                // awaited one apart) and double what every connection costs to spawn and hold.
                tokio::spawn(handler(conn, peer, permit));
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Raises the soft limit on open files to the hard limit: every proxied connection holds two
/// descriptors, and the usual soft limit of 1024 would cap a sidecar at a few hundred.
pub fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => debug!(from = soft, to = hard, "raised the open-files limit"),
            Err(e) => warn!(error = %e, soft, hard, "cannot raise the open-files limit"),
        },
        Ok(_) => {}
        Err(e) => warn!(error = %e, "cannot read the open-files limit"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_connections_have_nagle_off() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap().unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();

        let (conn, _) = listener.accept().await.unwrap();

        assert!(conn.nodelay().unwrap(), "inherited from the listener");
    }
}
