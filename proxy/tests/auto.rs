//! `outbound.mtls: auto` is opportunistic but never downgrades a meshlet peer: plaintext goes
//! only to a destination whose own answer shows that it does not speak meshlet.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use common::*;
use meshlet_identity::issue::{Ca, LeafSpec};
use meshlet_identity::{crypto_provider, Identity};
use rustls_pki_types::pem::PemObject;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

const FORWARD: u8 = 0;
const CLOSE: u8 = 1;

/// A TCP relay in front of a server that records what the client sends, and can be switched
/// to close every new connection at once (a meshlet peer that restarts, or an attacker).
struct Relay {
    addr: SocketAddr,
    from_client: Arc<Mutex<Vec<u8>>>,
    mode: Arc<AtomicU8>,
}

async fn relay(to: SocketAddr) -> Relay {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let from_client = Arc::new(Mutex::new(Vec::new()));
    let mode = Arc::new(AtomicU8::new(FORWARD));
    let (rec, m) = (from_client.clone(), mode.clone());
    tokio::spawn(async move {
        while let Ok((client, _)) = l.accept().await {
            if m.load(Ordering::SeqCst) == CLOSE {
                continue; // dropped: closed on the ClientHello
            }
            let rec = rec.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(to).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = async {
                    let mut buf = [0u8; 16384];
                    loop {
                        use tokio::io::AsyncReadExt;
                        match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                rec.lock().unwrap().extend_from_slice(&buf[..n]);
                                if sw.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = sw.shutdown().await;
                };
                let down = async {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                    let _ = cw.shutdown().await;
                };
                tokio::join!(up, down);
            });
        }
    });
    Relay {
        addr,
        from_client,
        mode,
    }
}

fn identity(ca: &Ca, path: &str, bundle: &str) -> Identity {
    let leaf = leaf(ca, path, |_| {});
    Identity::from_pem(
        leaf.cert.as_bytes(),
        leaf.key.as_bytes(),
        bundle.as_bytes(),
        TD,
        &crypto_provider(),
    )
    .unwrap_or_else(|(part, e)| panic!("{part:?}: {e}"))
}

#[tokio::test]
async fn a_meshlet_peer_with_an_untrusted_certificate_is_refused_and_never_sent_plaintext() {
    let (old_ca, new_ca) = (Ca::new(TD, DAY).unwrap(), Ca::new(TD, DAY).unwrap());
    let both = format!("{}{}", old_ca.pem.cert, new_ca.pem.cert);
    let echo = echo().await;
    // The server already holds a certificate of the new CA; the client's bundle lacks it.
    let server_store = Arc::new(meshlet_identity::IdentityStore::new(identity(
        &new_ca,
        "/ns/default/sa/echo",
        &both,
    )));
    let server = proxy(config(""), server_store, echo.addr, echo.addr).await;
    let wire = relay(server.inbound_addrs[0]).await;
    let client_store = Arc::new(meshlet_identity::IdentityStore::new(identity(
        &old_ca,
        "/ns/default/sa/pod-worker",
        &old_ca.pem.cert,
    )));
    let client = proxy(
        config("outbound: {mtls: auto}"),
        client_store.clone(),
        wire.addr,
        wire.addr,
    )
    .await;

    let got = roundtrip(client.outbound_addrs[0], b"TOP-SECRET-PAYLOAD").await;

    assert!(got.unwrap_or_default().is_empty(), "refused");
    let seen = wire.from_client.lock().unwrap().clone();
    assert!(
        !contains(&seen, b"TOP-SECRET-PAYLOAD"),
        "plaintext crossed the wire"
    );
    let m = metrics(&client).await;
    assert_eq!(
        metric(&m, "meshlet_outbound_auto_fallbacks_total"),
        0.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            r#"meshlet_tls_handshake_failures_total{direction="outbound",reason="unknown_issuer"}"#
        ),
        1.0,
        "{m}"
    );

    // The bundle is fixed: the very next call goes through, over mTLS.
    client_store.replace(identity(&old_ca, "/ns/default/sa/pod-worker", &both));
    let got = roundtrip(client.outbound_addrs[0], b"after the fix").await;

    assert_eq!(got.unwrap(), b"after the fix");
    assert_metric(
        &client,
        r#"meshlet_connections_opened_total{direction="outbound",tls="mtls"}"#,
        1.0,
    )
    .await;
}

#[tokio::test]
async fn a_proven_meshlet_peer_that_closes_on_the_hello_is_refused_not_downgraded() {
    let ca = Ca::new(TD, DAY).unwrap();
    let echo = echo().await;
    let server = proxy_for(&ca, "/ns/default/sa/echo", "", echo.addr).await;
    let wire = relay(server.inbound_addrs[0]).await;
    let client = proxy_for(
        &ca,
        "/ns/default/sa/pod-worker",
        "outbound: {mtls: auto, transport: per_connection}",
        wire.addr,
    )
    .await;
    assert_eq!(
        roundtrip(client.outbound_addrs[0], b"proof").await.unwrap(),
        b"proof"
    );

    wire.mode.store(CLOSE, Ordering::SeqCst);
    let before = wire.from_client.lock().unwrap().len();
    let got = roundtrip(client.outbound_addrs[0], b"TOP-SECRET-PAYLOAD").await;

    assert!(got.unwrap_or_default().is_empty());
    assert_eq!(wire.from_client.lock().unwrap().len(), before);
    assert_eq!(
        echo.accepted.load(Ordering::SeqCst),
        1,
        "only the proof reached the app"
    );
    assert_metric(&client, "meshlet_outbound_auto_fallbacks_total", 0.0).await;
}

#[tokio::test]
async fn an_unknown_destination_that_closes_on_the_hello_gets_plaintext() {
    let ca = Ca::new(TD, DAY).unwrap();
    let echo = echo().await;
    let wire = relay(echo.addr).await;
    wire.mode.store(CLOSE, Ordering::SeqCst);
    let client = proxy_for(
        &ca,
        "/ns/default/sa/pod-worker",
        "outbound: {mtls: auto}",
        wire.addr,
    )
    .await;

    let _ = roundtrip(client.outbound_addrs[0], b"hello").await;

    assert_metric(&client, "meshlet_outbound_auto_fallbacks_total", 1.0).await;
}

#[tokio::test]
async fn a_tls_server_without_the_meshlet_alpn_gets_plaintext_whatever_its_certificate() {
    // A web server's certificate: a DNS name, no SPIFFE ID, from a CA we do not trust.
    let web_ca = Ca::new("example.invalid", DAY).unwrap();
    let mut spec = LeafSpec::svid(&id("/unused"), DAY);
    spec.uris.clear();
    spec.dns = vec!["web.example.invalid".into()];
    let web = web_ca.issue(&spec).unwrap();
    let certs = meshlet_identity::source::parse_certs(web.cert.as_bytes()).unwrap();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(web.key.as_bytes()).unwrap();
    let server_config = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let web_addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicU8::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = acceptor.accept(s).await;
            });
        }
    });
    let ca = Ca::new(TD, DAY).unwrap();
    let client = proxy_for(
        &ca,
        "/ns/default/sa/pod-worker",
        "outbound: {mtls: auto}",
        web_addr,
    )
    .await;

    let _ = roundtrip(client.outbound_addrs[0], b"\x16\x03\x01 the app's own TLS").await;

    let m = metrics(&client).await;
    assert_eq!(
        metric(&m, "meshlet_outbound_auto_fallbacks_total"),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            r#"meshlet_connections_opened_total{direction="outbound",tls="plain"}"#
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "the probe, then the app's connection"
    );
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A server that, like Redis, answers nothing until it has a whole command line, then replies.
async fn waits_for_a_whole_line() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut line = Vec::new();
                let mut byte = [0u8; 1];
                while s.read(&mut byte).await.unwrap_or(0) == 1 {
                    line.push(byte[0]);
                    if line.ends_with(b"\r\n") {
                        let _ = s.write_all(b"+PONG\r\n").await;
                        line.clear();
                    }
                }
            });
        }
    });
    addr
}

/// A client proxy with `outbound` whose meshlet port (`inbound.port`) nobody listens on at
/// `dst`'s address, so that asking it gets a TCP reset: "no meshlet proxy there".
async fn client_where_no_proxy_listens(
    ca: &Ca,
    outbound: &str,
    dst: SocketAddr,
) -> meshlet_proxy::Running {
    let no_proxy_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let yaml = format!("inbound: {{port: {no_proxy_port}}}\noutbound: {outbound}");
    proxy_for(ca, "/ns/default/sa/pod-worker", &yaml, dst).await
}

#[tokio::test]
async fn a_silent_server_at_an_address_without_a_meshlet_proxy_gets_plaintext_at_once() {
    let ca = Ca::new(TD, DAY).unwrap();
    let server = waits_for_a_whole_line().await;
    let client =
        client_where_no_proxy_listens(&ca, "{mtls: auto, auto_detect_timeout: 10s}", server).await;

    for _ in 0..2 {
        let started = std::time::Instant::now();
        let mut s = TcpStream::connect(client.outbound_addrs[0]).await.unwrap();
        s.write_all(b"PING\r\n").await.unwrap();
        let mut reply = [0u8; 7];
        use tokio::io::AsyncReadExt;
        s.read_exact(&mut reply).await.unwrap();

        assert_eq!(&reply, b"+PONG\r\n");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "not after auto_detect_timeout: {:?}",
            started.elapsed()
        );
    }
    assert_metric(&client, "meshlet_outbound_auto_fallbacks_total", 1.0).await;
}

/// A meshlet peer (a valid SVID, the pooled transport's ALPN) that takes `delay` to answer each
/// stream, as a loaded peer does, then echoes; it counts connections that do not start with a
/// TLS record (plaintext).
async fn slow_to_open_streams(ca: &Ca, delay: std::time::Duration) -> (SocketAddr, Arc<AtomicU8>) {
    use hyper::{Request, Response};
    let svid = leaf(ca, "/ns/default/sa/echo", |_| {});
    let certs = meshlet_identity::source::parse_certs(svid.cert.as_bytes()).unwrap();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(svid.key.as_bytes()).unwrap();
    let mut server_config = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    server_config.alpn_protocols = vec![b"meshlet-mux/1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let plaintext = Arc::new(AtomicU8::new(0));
    let count = plaintext.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let (acceptor, count) = (acceptor.clone(), count.clone());
            tokio::spawn(async move {
                let mut first = [0u8; 1];
                if s.peek(&mut first).await.is_err() || first[0] != 0x16 {
                    count.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                let Ok(tls) = acceptor.accept(s).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |mut req: Request<_>| async move {
                    let upgrade = hyper::upgrade::on(&mut req);
                    tokio::spawn(async move {
                        if let Ok(io) = upgrade.await {
                            let (mut r, mut w) = tokio::io::split(hyper_util::rt::TokioIo::new(io));
                            let _ = tokio::io::copy(&mut r, &mut w).await;
                            let _ = w.shutdown().await;
                        }
                    });
                    tokio::time::sleep(delay).await;
                    Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Empty::<
                        bytes::Bytes,
                    >::new()))
                });
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
            });
        }
    });
    (addr, plaintext)
}

#[tokio::test]
async fn a_destination_that_completed_the_handshake_is_never_sent_plaintext_however_slow_its_stream(
) {
    let ca = Ca::new(TD, DAY).unwrap();
    let (peer, plaintext) = slow_to_open_streams(&ca, std::time::Duration::from_millis(300)).await;
    let client = client_where_no_proxy_listens(&ca, "{mtls: auto}", peer).await;

    let got = roundtrip(client.outbound_addrs[0], b"TOP-SECRET-PAYLOAD").await;

    assert_eq!(plaintext.load(Ordering::SeqCst), 0, "plaintext was sent");
    assert_eq!(got.unwrap(), b"TOP-SECRET-PAYLOAD", "carried over mTLS");
    assert_metric(&client, "meshlet_outbound_auto_fallbacks_total", 0.0).await;
}
