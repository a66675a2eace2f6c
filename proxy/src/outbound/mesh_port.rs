//! For `auto`: is there a meshlet proxy at the destination's address? Asked only when the
//! destination is silent to our ClientHello (a Redis or any server that waits for a whole
//! command answers nothing), since silence alone proves nothing.
//!
//! The question is a TCP connect to meshlet's own inbound port on the destination's address.
//! A meshlet proxy listens there. A pod without one answers with a TCP reset, from its own
//! address: an answer its app cannot give, and nothing an attacker on the path could not already
//! forge today (it can forge a non-TLS answer to the ClientHello). A refusal by ICMP is
//! different: it comes from a router or a node's reject rule (kube-proxy's nftables mode rejects
//! a Service address's unknown ports that way), says nothing about the pods behind it, and is
//! told apart by the extended error the kernel queues for it (`IP_RECVERR`).

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{recvmsg, setsockopt, sockopt, MsgFlags};
use socket2::{Domain, Protocol, Socket, Type};

/// What the destination's address answered on meshlet's port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// A TCP reset from the address itself: no meshlet proxy there.
    NoProxy,
    /// Something listens: a meshlet proxy (or the app on that very port).
    Listening,
    /// No answer in time, an ICMP refusal, or another error: nothing learned.
    Unknown,
}

/// Whether the destination of an `auto` probe has answered as meshlet would (a completed TLS
/// handshake, a live pooled connection to it, a locate answer), set by the connector as the
/// attempt goes. A destination that has answered is not silent: a slow stream or a slow
/// located pod after that must never be taken for "no proxy" and sent plaintext.
#[derive(Debug, Default)]
pub struct Answered(AtomicBool);

impl Answered {
    pub fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Asks `ip` whether it has a listener on `port` (meshlet's inbound port), within `timeout`.
pub async fn ask(ip: IpAddr, port: u16, timeout: Duration) -> Answer {
    ask_inner(SocketAddr::new(ip, port), timeout)
        .await
        .unwrap_or(Answer::Unknown)
}

async fn ask_inner(addr: SocketAddr, timeout: Duration) -> io::Result<Answer> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )?;
    match addr {
        SocketAddr::V4(_) => setsockopt(&socket, sockopt::Ipv4RecvErr, &true),
        SocketAddr::V6(_) => setsockopt(&socket, sockopt::Ipv6RecvErr, &true),
    }
    .map_err(io::Error::from)?;
    // The connect consumes the socket; a second handle to it reads its error queue after.
    let errors = socket.try_clone()?;
    let socket = tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(socket));
    Ok(
        match tokio::time::timeout(timeout, socket.connect(addr)).await {
            Ok(Ok(_)) => Answer::Listening,
            Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => refused_by(&errors),
            Ok(Err(_)) | Err(_) => Answer::Unknown,
        },
    )
}

/// A refused connect: by the destination's TCP reset, or by an ICMP error from elsewhere.
fn refused_by(socket: &Socket) -> Answer {
    let mut data = [0u8; 64];
    let mut iov = [IoSliceMut::new(&mut data)];
    let mut cmsg = nix::cmsg_space!(nix::libc::sock_extended_err, nix::libc::sockaddr_in6);
    match recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_ERRQUEUE | MsgFlags::MSG_DONTWAIT,
    ) {
        // An ICMP error was queued: not the destination's own answer.
        Ok(_) => Answer::Unknown,
        Err(Errno::EAGAIN) => Answer::NoProxy,
        Err(_) => Answer::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_reset_from_the_address_means_no_proxy_and_a_listener_means_one() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listener.local_addr().unwrap();
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let t = Duration::from_secs(2);

        assert_eq!(ask(open.ip(), open.port(), t).await, Answer::Listening);
        assert_eq!(ask(closed.ip(), closed.port(), t).await, Answer::NoProxy);
    }
}
