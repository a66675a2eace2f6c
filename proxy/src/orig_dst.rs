//! The address an app originally dialed, before iptables redirected it to us.

use std::io;
use std::net::SocketAddr;

use tokio::net::TcpStream;

/// How a listener learns the original destination of its connections.
#[derive(Clone, Copy, Debug)]
pub enum OriginalDst {
    /// From the kernel: `SO_ORIGINAL_DST` / `IP6T_SO_ORIGINAL_DST` (connections redirected by
    /// `meshlet init`).
    Kernel,
    /// Every connection goes to this address: for running the proxy without capture rules
    /// (in-process tests, explicit tunnels).
    Fixed(SocketAddr),
}

impl OriginalDst {
    /// `peer` is the caller's address as accepted: its family is the socket's (listeners are
    /// v6-only), which saves asking the kernel for the local address.
    pub fn of(&self, stream: &TcpStream, peer: SocketAddr) -> io::Result<SocketAddr> {
        match self {
            OriginalDst::Fixed(addr) => Ok(*addr),
            OriginalDst::Kernel => {
                let sock = socket2::SockRef::from(stream);
                let addr = if peer.is_ipv4() {
                    sock.original_dst_v4()?
                } else {
                    sock.original_dst_v6()?
                };
                addr.as_socket()
                    .ok_or_else(|| io::Error::other("original destination is not an IP address"))
            }
        }
    }
}
