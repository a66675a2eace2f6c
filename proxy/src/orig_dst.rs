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
    pub fn of(&self, stream: &TcpStream) -> io::Result<SocketAddr> {
        match self {
            OriginalDst::Fixed(addr) => Ok(*addr),
            OriginalDst::Kernel => {
                let sock = socket2::SockRef::from(stream);
                let addr = if stream.local_addr()?.is_ipv4() {
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
