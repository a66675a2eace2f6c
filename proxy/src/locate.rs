//! Which pod does a virtual destination lead to, this time — told in a way only that pod can
//! confirm.
//!
//! In a cluster most calls go to a Service address, which the node's load balancer (kube-proxy,
//! a CNI) translates per TCP connection to one backend pod, often on another port. A pooled
//! connection crosses that translation once, so it cannot carry the app connections that follow
//! to the backends the balancer would have chosen for them. For each app connection to a
//! destination known to be virtual, the client proxy therefore opens a plain TCP connection to
//! it — the balancer picks a backend, exactly as it would have for the app — and sends a locate
//! request carrying a fresh random token. The proxy there answers with the address it reached
//! and remembers, for a few seconds, that this token arrived from this caller's address at that
//! pod address and port ([`Located`]).
//!
//! The answer itself proves nothing: whoever the balancer chose may name any pod and port. The
//! client therefore sends the app connection's stream, over the pooled mTLS connection it
//! dialed to the named pod itself, with the token (`pooled_wire::LOCATED_HEADER`), and the server
//! accepts it only when it holds that token from that same caller address, for exactly the
//! address named, and consumes it. A lying answer names a pod that never saw the token and the
//! stream is refused; the client then connects through the Service address on its own. So the
//! backend and port of each app connection are the balancer's choice, verified by mTLS at the
//! pod that received the balancer's connection; a peer can make a call fail, never move it.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::dial::connect_tcp;
use crate::expiring::ExpiringMap;

/// Every locate request starts with this: it cannot be the start of TLS, HTTP or any text
/// protocol.
pub const LOCATE_PREFIX: &[u8] = b"\0meshlet-locate/";
/// The first release's request: answered (for clients of that release), remembers nothing.
pub const LOCATE_V1: &[u8] = b"\0meshlet-locate/1\n";
/// `LOCATE_PREFIX` + "2 " + 32 hex digits + "\n".
const V2_LEN: usize = LOCATE_PREFIX.len() + 2 + 32 + 1;
/// Longest request worth waiting for.
pub const MAX_REQUEST: usize = V2_LEN;

/// Longest answer: "[v6 address]:port\n".
const MAX_ANSWER: usize = 64;

/// How long a server keeps a token for the stream that follows its locate.
const TOKEN_TTL: Duration = Duration::from_secs(10);
/// Tokens a server keeps at once: a flood of locates evicts the oldest, which costs their
/// clients a fallback connection, never a wrong destination.
const MAX_TOKENS: usize = 4096;

/// A locate request, as the server parsed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// From a client of the first release: no token.
    V1,
    V2 {
        token: u128,
    },
}

/// What a locate request is, from its first bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Parse {
    /// Not a locate request.
    No,
    /// A prefix of one: more bytes needed.
    Incomplete,
    Request(Request),
}

pub fn parse_request(buf: &[u8]) -> Parse {
    let n = buf.len().min(LOCATE_PREFIX.len());
    if buf[..n] != LOCATE_PREFIX[..n] {
        return Parse::No;
    }
    if buf.starts_with(LOCATE_V1) {
        return Parse::Request(Request::V1);
    }
    if LOCATE_V1.starts_with(buf) {
        return Parse::Incomplete;
    }
    let rest = &buf[LOCATE_PREFIX.len()..];
    let want = b"2 ";
    let m = rest.len().min(want.len());
    if rest[..m] != want[..m] {
        return Parse::No;
    }
    if buf.len() < V2_LEN {
        return if rest[m..].iter().all(u8::is_ascii_hexdigit) {
            Parse::Incomplete
        } else {
            Parse::No
        };
    }
    let hex = &buf[LOCATE_PREFIX.len() + 2..V2_LEN - 1];
    let token = std::str::from_utf8(hex)
        .ok()
        .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
        .and_then(|h| u128::from_str_radix(h, 16).ok());
    match (token, buf[V2_LEN - 1]) {
        (Some(token), b'\n') => Parse::Request(Request::V2 { token }),
        _ => Parse::No,
    }
}

fn request_v2(token: u128) -> Vec<u8> {
    let mut req = LOCATE_PREFIX.to_vec();
    req.extend_from_slice(format!("2 {token:032x}\n").as_bytes());
    req
}

/// The server's answer: the address this connection reached, as the kernel reports it.
pub fn answer(reached: SocketAddr) -> String {
    format!("{reached}\n")
}

/// The tokens of recent locates, kept by the server until the stream that follows claims one.
pub struct Located {
    tokens: ExpiringMap<u128, (IpAddr, SocketAddr)>,
}

impl Default for Located {
    fn default() -> Self {
        Located {
            tokens: ExpiringMap::new(MAX_TOKENS),
        }
    }
}

impl Located {
    /// A locate with `token` from `caller` arrived at `reached`.
    pub fn remember(&self, token: u128, caller: IpAddr, reached: SocketAddr) {
        self.tokens.insert(token, (caller, reached), TOKEN_TTL);
    }

    /// Claims `token` for a stream from `caller` naming `named`: true only when this proxy
    /// answered that token's locate, from the same address, at exactly that address. The token
    /// is used up either way.
    pub fn claim(&self, token: u128, caller: IpAddr, named: SocketAddr) -> bool {
        self.tokens
            .take(token)
            .is_some_and(|(from, reached)| from == caller && reached == named)
    }
}

/// Claims the token of a stream's `pooled_wire::LOCATED_HEADER` (see [`Located::claim`]); a header
/// that is not 32 hex digits claims nothing.
pub fn claim_header(
    located: &Located,
    header: &http::HeaderValue,
    caller: IpAddr,
    named: SocketAddr,
) -> bool {
    header
        .to_str()
        .ok()
        .filter(|v| v.len() == 32)
        .and_then(|v| u128::from_str_radix(v, 16).ok())
        .is_some_and(|token| located.claim(token, caller, named))
}

/// The header value carrying `token`.
pub fn token_header(token: u128) -> String {
    format!("{token:032x}")
}

/// The random source of locate tokens: the one crypto provider's, built once (a provider is
/// a few allocations, and every located app connection needs a token).
fn random() -> &'static dyn rustls::crypto::SecureRandom {
    static RANDOM: std::sync::OnceLock<&'static dyn rustls::crypto::SecureRandom> =
        std::sync::OnceLock::new();
    *RANDOM.get_or_init(|| rustls::crypto::aws_lc_rs::default_provider().secure_random)
}

/// A located pod address, and the token that lets the pod confirm it.
#[derive(Clone, Copy, Debug)]
pub struct Answer {
    pub pod: SocketAddr,
    pub token: u128,
}

/// Asks the meshlet proxy behind `dst` which pod address and port a connection to `dst`
/// reaches. The answer must be a unicast address of `dst`'s family.
pub async fn locate(dst: SocketAddr, timeout: Duration) -> io::Result<Answer> {
    let mut token = [0u8; 16];
    random()
        .fill(&mut token)
        .map_err(|_| io::Error::other("no random token for a locate request"))?;
    let token = u128::from_be_bytes(token);
    let exchange = async {
        let mut conn = connect_tcp(dst, timeout).await?;
        conn.write_all(&request_v2(token)).await?;
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
    let pod = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no locate answer in time"))??;
    Ok(Answer { pod, token })
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

    #[test]
    fn both_releases_requests_parse_and_their_prefixes_wait() {
        let v2 = request_v2(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        assert_eq!(
            parse_request(&v2),
            Parse::Request(Request::V2 {
                token: 0x0123_4567_89ab_cdef_0011_2233_4455_6677
            })
        );
        assert_eq!(parse_request(LOCATE_V1), Parse::Request(Request::V1));
        for cut in [
            1,
            5,
            LOCATE_PREFIX.len(),
            LOCATE_PREFIX.len() + 3,
            v2.len() - 1,
        ] {
            assert_eq!(parse_request(&v2[..cut]), Parse::Incomplete, "cut at {cut}");
        }
        assert_eq!(parse_request(b"\0other"), Parse::No);
        assert_eq!(parse_request(b"GET / HTTP/1.1\r\n"), Parse::No);
        let mut bad = v2.clone();
        bad[LOCATE_PREFIX.len() + 4] = b'z';
        assert_eq!(parse_request(&bad), Parse::No);
        let mut unterminated = v2;
        *unterminated.last_mut().unwrap() = b' ';
        assert_eq!(parse_request(&unterminated), Parse::No);
    }

    #[test]
    fn a_token_confirms_only_its_own_caller_and_address_and_only_once() {
        let located = Located::default();
        let caller: IpAddr = "198.18.0.1".parse().unwrap();
        let pod: SocketAddr = "198.18.0.21:8080".parse().unwrap();
        located.remember(7, caller, pod);
        assert!(
            !located.claim(7, "198.18.0.5".parse().unwrap(), pod),
            "another caller cannot use a token it relayed"
        );
        located.remember(7, caller, pod);
        assert!(
            !located.claim(7, caller, "198.18.0.21:9000".parse().unwrap()),
            "nor another port"
        );
        located.remember(7, caller, pod);
        assert!(located.claim(7, caller, pod));
        assert!(!located.claim(7, caller, pod), "a token is used once");
        assert!(!located.claim(8, caller, pod), "nor one never handed out");
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
