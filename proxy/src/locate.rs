//! Which pod does a virtual destination lead to, this time?
//!
//! In a cluster most calls go to a Service address, which the node's load balancer (kube-proxy,
//! a CNI) translates per TCP connection to one backend pod, often on another port. A pooled
//! connection crosses that translation once, so it cannot carry the app connections that follow
//! to the backends the balancer would have chosen for them. For each app connection to a
//! destination known to be virtual, the client proxy therefore opens a plain TCP connection to
//! it — the balancer picks a backend, exactly as it would have for the app — and asks the proxy
//! there which address it reached. The app connection then rides the pooled connection to that
//! pod, named by the pod's own address, which the server checks is its own.
//!
//! The answer is unauthenticated, like the balancer's choice itself: an attacker in the path
//! could steer us to another pod, but that pod must still pass mTLS (and pinned identities),
//! and nothing of the app is sent on this connection. It reveals to its caller only the address
//! and port the caller just reached.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::connector::connect_tcp;

/// What a client proxy sends: cannot be the start of TLS, HTTP or any text protocol.
pub const LOCATE_REQUEST: &[u8] = b"\0meshlet-locate/1\n";

/// Longest answer: "[v6 address]:port\n".
const MAX_ANSWER: usize = 64;

/// The server's answer: the address this connection reached, as the kernel reports it.
pub fn answer(reached: SocketAddr) -> String {
    format!("{reached}\n")
}

/// Asks the meshlet proxy behind `dst` which pod address and port a connection to `dst`
/// reaches. The answer must be a unicast address of `dst`'s family.
pub async fn locate(dst: SocketAddr, timeout: Duration) -> io::Result<SocketAddr> {
    let exchange = async {
        let mut conn = connect_tcp(dst, timeout).await?;
        conn.write_all(LOCATE_REQUEST).await?;
        let mut buf = [0u8; MAX_ANSWER];
        let mut len = 0;
        // The server answers and closes first, so TIME_WAIT stays on its side.
        loop {
            let n = conn.read(&mut buf[len..]).await?;
            if n == 0 {
                break;
            }
            len += n;
            if len == buf.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "locate answer too long",
                ));
            }
        }
        parse_answer(dst, &buf[..len])
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no locate answer in time"))?
}

fn parse_answer(dst: SocketAddr, answer: &[u8]) -> io::Result<SocketAddr> {
    let bad = |why: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{why}: {:?}", String::from_utf8_lossy(answer)),
        )
    };
    let text = std::str::from_utf8(answer)
        .ok()
        .and_then(|t| t.strip_suffix('\n'))
        .ok_or_else(|| bad("not a meshlet locate answer"))?;
    let reached: SocketAddr = text
        .parse()
        .map_err(|_| bad("not a meshlet locate answer"))?;
    let ip = reached.ip();
    if reached.is_ipv4() != dst.is_ipv4()
        || ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || reached.port() == 0
    {
        return Err(bad("unusable address in locate answer"));
    }
    Ok(reached)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dst() -> SocketAddr {
        "198.18.9.10:80".parse().unwrap()
    }

    #[test]
    fn an_answer_names_a_pod_address_and_port() {
        assert_eq!(
            parse_answer(
                dst(),
                answer("198.18.0.21:8080".parse().unwrap()).as_bytes()
            )
            .unwrap(),
            "198.18.0.21:8080".parse::<SocketAddr>().unwrap()
        );
    }

    #[test]
    fn loopback_other_families_and_garbage_are_refused() {
        for bad in [
            &b"127.0.0.1:8080\n"[..],
            b"[2001:2::5]:8080\n",
            b"0.0.0.0:8080\n",
            b"198.18.0.21:0\n",
            b"198.18.0.21:8080",
            b"HTTP/1.1 400 Bad Request\r\n",
            b"",
        ] {
            assert!(
                parse_answer(dst(), bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[tokio::test]
    async fn a_server_that_is_not_meshlet_gives_no_answer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut c, _) = listener.accept().await.unwrap();
            let _ = c.write_all(b"SSH-2.0-OpenSSH_9.2\r\n").await;
        });

        assert!(locate(addr, Duration::from_secs(2)).await.is_err());
    }
}
