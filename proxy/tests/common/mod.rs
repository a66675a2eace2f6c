//! In-process harness: certificates made at test time, backends on loopback, and proxies whose
//! listeners bind ephemeral ports with fixed original destinations (no iptables needed).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshlet_identity::issue::{Ca, LeafSpec, Pem};
use meshlet_identity::{crypto_provider, Identity, IdentityStore, SpiffeId};
use meshlet_proxy::config::{Config, Override};
use meshlet_proxy::{Listeners, OriginalDst, Running};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const TD: &str = "cluster.local";
pub const DAY: Duration = Duration::from_secs(86400);

pub fn id(path: &str) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://{TD}{path}")).unwrap()
}

pub fn store(ca: &Ca, leaf: &Pem) -> Arc<IdentityStore> {
    let identity = Identity::from_pem(
        leaf.cert.as_bytes(),
        leaf.key.as_bytes(),
        ca.pem.cert.as_bytes(),
        TD,
        &crypto_provider(),
    )
    .unwrap_or_else(|(part, e)| panic!("{part:?}: {e}"));
    Arc::new(IdentityStore::new(identity))
}

/// A configuration from YAML text, as a file would give it.
pub fn config(yaml: &str) -> Config {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        f.path(),
        format!("timeouts: {{drain: 1s, handshake: 2s, first_byte: 1s}}\n{yaml}"),
    )
    .unwrap();
    Config::load(Some(f.path()), &[] as &[Override]).unwrap()
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Starts a proxy whose inbound connections all go to `inbound_dst` and outbound ones to
/// `outbound_dst`, with an admin server on an ephemeral port.
pub async fn proxy(
    cfg: Config,
    store: Arc<IdentityStore>,
    inbound_dst: SocketAddr,
    outbound_dst: SocketAddr,
) -> Running {
    let listeners = Listeners {
        inbound: vec![loopback()],
        outbound: vec![loopback()],
        admin: Some(loopback()),
        inbound_dst: OriginalDst::Fixed(inbound_dst),
        outbound_dst: OriginalDst::Fixed(outbound_dst),
    };
    meshlet_proxy::start(cfg, store, listeners).await.unwrap()
}

/// An echo server: echoes bytes, and after the caller's FIN finishes and closes. Counts accepts.
pub struct Echo {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
}

pub async fn echo() -> Echo {
    let l = TcpListener::bind(loopback()).await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                    let _ = w.shutdown().await;
                }
            });
        }
    });
    Echo { addr, accepted }
}

/// A server that records every byte it receives and never answers.
pub struct Recorder {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<u8>>>,
}

pub async fn recorder() -> Recorder {
    recorder_answering(None).await
}

/// A recorder that writes `answer` each time what it received holds the end of a request
/// head (`\r\n\r\n`): an HTTP/1 app that knows nothing of bodies.
pub async fn recorder_answering(answer: Option<&'static [u8]>) -> Recorder {
    let l = TcpListener::bind(loopback()).await.unwrap();
    let addr = l.local_addr().unwrap();
    let received = Arc::new(Mutex::new(Vec::new()));
    let rec = received.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let rec = rec.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    rec.lock().unwrap().extend_from_slice(&buf[..n]);
                    let head_ended = buf[..n].windows(4).any(|w| w == b"\r\n\r\n");
                    if let (Some(answer), true) = (answer, head_ended) {
                        let _ = s.write_all(answer).await;
                    }
                }
            });
        }
    });
    Recorder { addr, received }
}

/// Sends `data`, half-closes, and returns everything read until EOF (or an error).
pub async fn roundtrip(addr: SocketAddr, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(data).await?;
    s.shutdown().await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no EOF within 10s"))??;
    Ok(out)
}

/// Fetches the admin server's metrics text.
pub async fn metrics(running: &Running) -> String {
    let addr = running.admin_addr.unwrap();
    let r = meshlet_lab::app::get(addr, "GET", &[], &["/metrics".to_owned()])
        .await
        .unwrap();
    r[0].1.clone()
}

/// The value of one metric line (name with labels exactly as printed), or 0 when absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.trim().split(' ').next()?.parse().ok())
        })
        .unwrap_or(0.0)
}

/// Polls until `f` holds or fails the test after 5 s.
pub async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    for _ in 0..100 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// A leaf with the default SVID properties, then modified by `tweak`.
pub fn leaf(ca: &Ca, path: &str, tweak: impl FnOnce(&mut LeafSpec)) -> Pem {
    let mut spec = LeafSpec::svid(&id(path), DAY);
    tweak(&mut spec);
    ca.issue(&spec).unwrap()
}

/// A proxy with a fresh SVID for `path` issued by `ca`; every connection goes to `dst`.
pub async fn proxy_for(ca: &Ca, path: &str, yaml: &str, dst: SocketAddr) -> Running {
    proxy(config(yaml), store(ca, &leaf(ca, path, |_| {})), dst, dst).await
}

/// Asserts one metric series of a running proxy, showing all metrics when it differs.
pub async fn assert_metric(running: &Running, series: &str, want: f64) {
    let text = metrics(running).await;
    assert_eq!(metric(&text, series), want, "{series}\n{text}");
}

/// A client proxy and the server proxy it talks to.
pub struct Pair {
    pub client: Running,
    pub server: Running,
}

/// client proxy (`/ns/default/sa/pod-worker`, outbound) → mTLS → server proxy
/// (`/ns/default/sa/echo`, inbound) → `backend`.
pub async fn pair(ca: &Ca, client_yaml: &str, server_yaml: &str, backend: SocketAddr) -> Pair {
    let server = proxy_for(ca, "/ns/default/sa/echo", server_yaml, backend).await;
    let target = server.inbound_addrs[0];
    let client = proxy_for(ca, "/ns/default/sa/pod-worker", client_yaml, target).await;
    Pair { client, server }
}
