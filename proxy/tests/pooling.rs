//! The pooled transport: app connections as streams over one mTLS connection between proxies.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use common::*;
use meshlet_identity::issue::Ca;
use meshlet_identity::source::parse_certs;
use meshlet_identity::{crypto_provider, Identity, SpiffeClientVerifier};
use rustls::pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

async fn pooled_pair(
    ca: &Ca,
    client_yaml: &str,
    backend: std::net::SocketAddr,
) -> (meshlet_proxy::Running, meshlet_proxy::Running) {
    let Pair { client, server } = pair(ca, client_yaml, "", backend).await;
    (client, server)
}

const HANDSHAKES: &str = r#"meshlet_tls_handshake_duration_seconds_count{direction="inbound"}"#;

#[tokio::test]
async fn many_app_connections_share_one_handshake() {
    let ca = Ca::new(TD, DAY).unwrap();
    let echo = echo().await;
    let (client, server) = pooled_pair(&ca, "outbound: {mtls: mtls}", echo.addr).await;
    // Concurrent first connections must not each open a pooled connection.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let addr = client.outbound_addrs[0];
        tasks.push(tokio::spawn(async move {
            roundtrip(addr, format!("conn {i}").as_bytes())
                .await
                .unwrap()
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.await.unwrap(), format!("conn {i}").as_bytes());
    }
    let m = metrics(&server).await;
    assert_eq!(metric(&m, HANDSHAKES), 1.0, "{m}");
    assert_eq!(
        metric(
            &m,
            r#"meshlet_pooled_connections_total{direction="inbound"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(&m, r#"meshlet_pooled_streams_total{direction="inbound"}"#),
        20.0
    );
    assert_eq!(echo.accepted.load(Ordering::SeqCst), 20);
}

#[tokio::test]
async fn per_connection_transport_pays_a_handshake_per_connection() {
    let ca = Ca::new(TD, DAY).unwrap();
    let echo = echo().await;
    let (client, server) = pooled_pair(
        &ca,
        "outbound: {mtls: mtls, transport: per_connection}",
        echo.addr,
    )
    .await;
    for _ in 0..3 {
        assert_eq!(
            roundtrip(client.outbound_addrs[0], b"x").await.unwrap(),
            b"x"
        );
    }
    let m = metrics(&server).await;
    assert_eq!(metric(&m, HANDSHAKES), 3.0, "{m}");
    assert_eq!(
        metric(&m, r#"meshlet_pooled_streams_total{direction="inbound"}"#),
        0.0
    );
}

/// An echo server's proxy whose identity the test can renew, and a client proxy calling it.
struct Renewable {
    ca: Ca,
    server_store: Arc<meshlet_identity::IdentityStore>,
    server: meshlet_proxy::Running,
    client: meshlet_proxy::Running,
}

impl Renewable {
    async fn new() -> Self {
        let ca = Ca::new(TD, DAY).unwrap();
        let echo = echo().await;
        let server_store = store(&ca, &leaf(&ca, "/ns/default/sa/echo", |_| {}));
        let server = proxy(config(""), server_store.clone(), echo.addr, echo.addr).await;
        let client = proxy_for(
            &ca,
            "/ns/default/sa/pod-worker",
            "outbound: {mtls: mtls}",
            server.inbound_addrs[0],
        )
        .await;
        Renewable {
            ca,
            server_store,
            server,
            client,
        }
    }

    /// The server gets a new certificate: pooled connections made before are stale.
    fn renew_server(&self) {
        let renewed = leaf(&self.ca, "/ns/default/sa/echo", |_| {});
        let identity = Identity::from_pem(
            renewed.cert.as_bytes(),
            renewed.key.as_bytes(),
            self.ca.pem.cert.as_bytes(),
            TD,
            &crypto_provider(),
        )
        .unwrap();
        self.server_store.replace(identity);
    }
}

#[tokio::test]
async fn a_pooled_connection_is_replaced_after_the_server_rotates_its_identity() {
    let scene = Renewable::new().await;
    let (server, client) = (&scene.server, &scene.client);
    assert_eq!(
        roundtrip(client.outbound_addrs[0], b"before")
            .await
            .unwrap(),
        b"before"
    );
    scene.renew_server();
    // The old pooled connection refuses new streams; the client redials transparently.
    assert_eq!(
        roundtrip(client.outbound_addrs[0], b"after").await.unwrap(),
        b"after"
    );
    let m = metrics(server).await;
    assert_eq!(
        metric(
            &m,
            r#"meshlet_pooled_connections_total{direction="inbound"}"#
        ),
        2.0,
        "{m}"
    );
    assert_eq!(metric(&m, HANDSHAKES), 2.0);
}

#[tokio::test]
async fn policy_is_checked_per_stream() {
    let ca = Ca::new(TD, DAY).unwrap();
    let echo = echo().await;
    let yaml = format!("inbound:\n  policy:\n    - ports: [{}]\n      from: [spiffe://cluster.local/ns/default/sa/pod-worker]\n", echo.addr.port());
    let server = proxy_for(&ca, "/ns/default/sa/echo", &yaml, echo.addr).await;
    let target = server.inbound_addrs[0];
    let allowed = proxy_for(
        &ca,
        "/ns/default/sa/pod-worker",
        "outbound: {mtls: mtls}",
        target,
    )
    .await;
    let other = proxy_for(
        &ca,
        "/ns/default/sa/other",
        "outbound: {mtls: mtls}",
        target,
    )
    .await;
    assert_eq!(
        roundtrip(allowed.outbound_addrs[0], b"ok").await.unwrap(),
        b"ok"
    );
    assert!(roundtrip(other.outbound_addrs[0], b"no")
        .await
        .unwrap_or_default()
        .is_empty());
    assert_eq!(echo.accepted.load(Ordering::SeqCst), 1);
    assert_metric(
        &other,
        r#"meshlet_connections_refused_total{direction="outbound",reason="stream_refused"}"#,
        1.0,
    )
    .await;
    // The handshake succeeded; the peer's policy said no: not a handshake failure.
    assert_metric(
        &other,
        r#"meshlet_tls_handshake_failures_total{direction="outbound",reason="stream_refused"}"#,
        0.0,
    )
    .await;
    assert_metric(
        &server,
        r#"meshlet_policy_denials_total{direction="inbound",reason="no_matching_rule"}"#,
        1.0,
    )
    .await;
}

/// A hand-made peer proxy: an SVID for `path`, clients verified against the client's own trust
/// store, `alpn` as the only protocol it offers, and `serve` run on every authenticated
/// connection. Returns the address it listens on.
async fn fake_peer<F, Fut>(
    ca: &Ca,
    client_store: &Arc<meshlet_identity::IdentityStore>,
    path: &str,
    alpn: &[u8],
    serve: F,
) -> std::net::SocketAddr
where
    F: Fn(tokio_rustls::server::TlsStream<tokio::net::TcpStream>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let server_leaf = leaf(ca, path, |_| {});
    let mut cfg = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(Arc::new(SpiffeClientVerifier::new(
            client_store.clone(),
            crypto_provider(),
        )))
        .with_single_cert(
            parse_certs(server_leaf.cert.as_bytes()).unwrap(),
            PrivateKeyDer::from_pem_slice(server_leaf.key.as_bytes()).unwrap(),
        )
        .unwrap();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let serve = Arc::new(serve);
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let (acceptor, serve) = (acceptor.clone(), serve.clone());
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(s).await {
                    serve(tls).await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_peer_without_the_pooled_transport_gets_a_connection_per_app_connection() {
    let ca = Ca::new(TD, DAY).unwrap();
    let client_store = store(&ca, &leaf(&ca, "/ns/default/sa/pod-worker", |_| {}));
    // An older peer: speaks only meshlet/1 and echoes what it decrypts.
    let addr = fake_peer(
        &ca,
        &client_store,
        "/ns/default/sa/old",
        b"meshlet/1",
        |mut tls| async move {
            let mut buf = vec![0u8; 1024];
            while let Ok(n) = tls.read(&mut buf).await {
                if n == 0 || tls.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            let _ = tls.shutdown().await;
        },
    )
    .await;
    let client = proxy(config("outbound: {mtls: mtls}"), client_store, addr, addr).await;
    for msg in [&b"first"[..], b"second"] {
        assert_eq!(roundtrip(client.outbound_addrs[0], msg).await.unwrap(), msg);
    }
    let m = metrics(&client).await;
    assert_eq!(
        metric(&m, r#"meshlet_pooled_streams_total{direction="outbound"}"#),
        0.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            r#"meshlet_connections_opened_total{direction="outbound",tls="mtls"}"#
        ),
        2.0
    );
}

#[tokio::test]
async fn inbound_max_connections_bounds_connections_and_streams() {
    let ca = Ca::new(TD, DAY).unwrap();
    let echo = echo().await;
    // Per connection: the second caller waits until the first is done.
    let server = proxy_for(&ca, "/s", "inbound: {max_connections: 1}", echo.addr).await;
    let target = server.inbound_addrs[0];
    let client = proxy_for(
        &ca,
        "/c",
        "outbound: {mtls: mtls, transport: per_connection}",
        target,
    )
    .await;
    let mut first = tokio::net::TcpStream::connect(client.outbound_addrs[0])
        .await
        .unwrap();
    first.write_all(b"1").await.unwrap();
    let mut buf = [0u8; 1];
    first.read_exact(&mut buf).await.unwrap();
    let mut second = tokio::net::TcpStream::connect(client.outbound_addrs[0])
        .await
        .unwrap();
    second.write_all(b"2").await.unwrap();
    let early = tokio::time::timeout(
        std::time::Duration::from_millis(500),
        second.read_exact(&mut buf),
    )
    .await;
    assert!(
        early.is_err(),
        "the second connection must wait for a free slot"
    );
    drop(first);
    tokio::time::timeout(
        std::time::Duration::from_secs(3),
        second.read_exact(&mut buf),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(&buf, b"2");

    // Pooled: the pooled connection takes one slot, each stream another; beyond that, refused.
    let server = proxy_for(&ca, "/s", "inbound: {max_connections: 2}", echo.addr).await;
    let target = server.inbound_addrs[0];
    let client = proxy_for(&ca, "/c", "outbound: {mtls: mtls}", target).await;
    let mut held = tokio::net::TcpStream::connect(client.outbound_addrs[0])
        .await
        .unwrap();
    held.write_all(b"h").await.unwrap();
    if let Err(e) = held.read_exact(&mut buf).await {
        panic!("{e}: {}", metrics(&server).await);
    }
    assert!(roundtrip(client.outbound_addrs[0], b"over")
        .await
        .unwrap_or_default()
        .is_empty());
    assert_metric(
        &server,
        r#"meshlet_connections_refused_total{direction="inbound",reason="overloaded"}"#,
        1.0,
    )
    .await;
    drop(held);
    eventually("a freed slot serves streams again", async || {
        roundtrip(client.outbound_addrs[0], b"again")
            .await
            .map(|r| r == b"again")
            .unwrap_or(false)
    })
    .await;
}

#[tokio::test]
async fn a_draining_server_lets_open_streams_finish_and_takes_no_new_ones() {
    let ca = Ca::new(TD, DAY).unwrap();
    let echo = echo().await;
    let (client, server) = pooled_pair(&ca, "outbound: {mtls: mtls}", echo.addr).await;
    let mut open = tokio::net::TcpStream::connect(client.outbound_addrs[0])
        .await
        .unwrap();
    open.write_all(b"a").await.unwrap();
    let mut buf = [0u8; 1];
    open.read_exact(&mut buf).await.unwrap();
    server.shutdown();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    assert!(roundtrip(client.outbound_addrs[0], b"new")
        .await
        .unwrap_or_default()
        .is_empty());
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    open.write_all(b"b").await.unwrap();
    open.read_exact(&mut buf).await.unwrap();
    assert_eq!(
        &buf, b"b",
        "the open stream keeps working while the server drains"
    );
}

#[tokio::test]
async fn a_peer_that_never_answers_a_stream_is_given_up_within_the_handshake_timeout() {
    let ca = Ca::new(TD, DAY).unwrap();
    let client_store = store(&ca, &leaf(&ca, "/ns/default/sa/pod-worker", |_| {}));
    // A hung peer: completes TLS (pooled ALPN) and HTTP/2, then leaves every CONNECT unanswered.
    let addr = fake_peer(
        &ca,
        &client_store,
        "/ns/default/sa/hung",
        b"meshlet-mux/1",
        |tls| async move {
            let never = hyper::service::service_fn(|_req| {
                std::future::pending::<
                    Result<
                        hyper::Response<http_body_util::Empty<bytes::Bytes>>,
                        std::convert::Infallible,
                    >,
                >()
            });
            let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .serve_connection(hyper_util::rt::TokioIo::new(tls), never)
                .await;
        },
    )
    .await;
    // The test configuration's handshake timeout is 2 s; one retry on a fresh connection.
    let client = proxy(config("outbound: {mtls: mtls}"), client_store, addr, addr).await;
    let started = std::time::Instant::now();
    let mut app = tokio::net::TcpStream::connect(client.outbound_addrs[0])
        .await
        .unwrap();

    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), app.read(&mut buf))
        .await
        .expect("the app connection is still waiting after 10 s");

    assert!(matches!(read, Ok(0) | Err(_)), "closed without an answer");
    assert!(started.elapsed() < std::time::Duration::from_secs(6));
    assert_metric(
        &client,
        r#"meshlet_connections_refused_total{direction="outbound",reason="stream_timeout"}"#,
        1.0,
    )
    .await;
}

#[tokio::test]
async fn a_pooled_connection_takes_no_stream_once_the_callers_certificate_has_expired() {
    let ca = Ca::new(TD, DAY).unwrap();
    let echo = echo().await;
    let server = proxy_for(&ca, "/ns/default/sa/echo", "", echo.addr).await;
    let target = server.inbound_addrs[0];
    let short_lived = leaf(&ca, "/ns/default/sa/pod-worker", |spec| {
        spec.not_after = time::OffsetDateTime::now_utc() + time::Duration::seconds(3);
    });
    let client = proxy(config(""), store(&ca, &short_lived), target, target).await;
    assert_eq!(
        roundtrip(client.outbound_addrs[0], b"before")
            .await
            .unwrap(),
        b"before"
    );

    tokio::time::sleep(std::time::Duration::from_millis(3500)).await;
    let after = roundtrip(client.outbound_addrs[0], b"after").await;

    assert!(
        after.unwrap_or_default().is_empty(),
        "an expired caller got through"
    );
    assert_eq!(echo.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_destination_that_carried_a_bulk_transfer_gets_connections_of_its_own() {
    let ca = Ca::new(TD, DAY).unwrap();
    let echo = echo().await;
    let (client, server) =
        pooled_pair(&ca, "outbound: {mtls: mtls, bulk_rate: 1048576}", echo.addr).await;
    let addr = client.outbound_addrs[0];
    assert_eq!(roundtrip(addr, b"short").await.unwrap(), b"short");

    // 3 MiB over about 1.2 s: 2.5 MiB/s, above the 1 MiB/s of bulk_rate.
    let conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = conn.into_split();
    let reader = tokio::spawn(async move {
        let mut back = Vec::new();
        r.read_to_end(&mut back).await.unwrap();
        back.len()
    });
    let chunk = vec![7u8; 1 << 20];
    for _ in 0..3 {
        w.write_all(&chunk).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    }
    w.shutdown().await.unwrap();
    assert_eq!(reader.await.unwrap(), 3 << 20);
    assert_metric(&client, "meshlet_outbound_bulk_destinations_total", 1.0).await;

    // Both rode the pooled connection; the next three each pay a handshake of their own.
    assert_eq!(metric(&metrics(&server).await, HANDSHAKES), 1.0);
    for _ in 0..3 {
        assert_eq!(roundtrip(addr, b"x").await.unwrap(), b"x");
    }
    assert_eq!(metric(&metrics(&server).await, HANDSHAKES), 4.0);
}

#[tokio::test]
async fn chatty_connections_stay_pooled() {
    let ca = Ca::new(TD, DAY).unwrap();
    let echo = echo().await;
    let (client, server) = pooled_pair(&ca, "outbound: {mtls: mtls}", echo.addr).await;
    let addr = client.outbound_addrs[0];
    // A long-lived connection with small exchanges: far below the default 64 MiB/s.
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 5];
    for _ in 0..12 {
        conn.write_all(b"hello").await.unwrap();
        conn.read_exact(&mut buf).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    drop(conn);
    for _ in 0..3 {
        assert_eq!(roundtrip(addr, b"x").await.unwrap(), b"x");
    }
    let m = metrics(&server).await;
    assert_eq!(metric(&m, HANDSHAKES), 1.0, "{m}");
    assert_eq!(
        metric(
            &metrics(&client).await,
            "meshlet_outbound_bulk_destinations_total"
        ),
        0.0
    );
}

/// An app connection whose bytes (and FIN) are already waiting when the proxy accepts it: made
/// with blocking calls before the test yields to the proxy's tasks (a test runtime has one
/// thread), so the proxy finds them there. Returns what came back, up to EOF.
async fn spoke_first(addr: std::net::SocketAddr, data: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr)?;
    s.write_all(data)?;
    s.shutdown(std::net::Shutdown::Write)?;
    s.set_nonblocking(true)?;
    let mut s = tokio::net::TcpStream::from_std(s)?;
    let mut out = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no EOF within 10s"))??;
    Ok(out)
}

/// A peer proxy that, before it answers a CONNECT, waits up to a second for the stream's
/// first bytes and records them (in `before_answer`), then answers 200 and sends them back.
async fn peer_that_waits_for_first_bytes(
    ca: &Ca,
    client_store: &Arc<meshlet_identity::IdentityStore>,
    before_answer: Arc<std::sync::Mutex<Option<Vec<u8>>>>,
) -> std::net::SocketAddr {
    fake_peer(
        ca,
        client_store,
        "/ns/default/sa/echo",
        b"meshlet-mux/1",
        move |tls| {
            let seen = before_answer.clone();
            async move {
                let Ok(mut conn) = h2::server::handshake(tls).await else {
                    return;
                };
                let Some(Ok((req, mut respond))) = conn.accept().await else {
                    return;
                };
                tokio::spawn(async move { while conn.accept().await.is_some() {} });
                let mut body = req.into_body();
                let wait = std::time::Duration::from_secs(1);
                let early = match tokio::time::timeout(wait, body.data()).await {
                    Ok(Some(Ok(data))) => data.to_vec(),
                    _ => Vec::new(),
                };
                *seen.lock().unwrap() = Some(early.clone());
                let Ok(mut send) = respond.send_response(http::Response::new(()), false) else {
                    return;
                };
                let _ = send.send_data(early.into(), true);
                // Holds the stream until the client is done with it.
                while let Some(Ok(_)) = body.data().await {}
            }
        },
    )
    .await
}

#[tokio::test]
async fn an_apps_first_bytes_ride_with_the_streams_connect() {
    let ca = Ca::new(TD, DAY).unwrap();
    let client_store = store(&ca, &leaf(&ca, "/ns/default/sa/pod-worker", |_| {}));
    let before_answer = Arc::new(std::sync::Mutex::new(None));
    let addr = peer_that_waits_for_first_bytes(&ca, &client_store, before_answer.clone()).await;
    let client = proxy(config("outbound: {mtls: mtls}"), client_store, addr, addr).await;

    let answer = spoke_first(client.outbound_addrs[0], b"GET / HTTP/1.1\r\n\r\n")
        .await
        .unwrap();

    assert_eq!(
        before_answer.lock().unwrap().as_deref(),
        Some(&b"GET / HTTP/1.1\r\n\r\n"[..]),
        "the peer had the app's first bytes before it answered the CONNECT"
    );
    assert_eq!(answer, b"GET / HTTP/1.1\r\n\r\n");
}

#[tokio::test]
async fn bytes_an_app_sends_while_the_peer_has_not_answered_go_out_at_once() {
    let ca = Ca::new(TD, DAY).unwrap();
    let client_store = store(&ca, &leaf(&ca, "/ns/default/sa/pod-worker", |_| {}));
    let before_answer = Arc::new(std::sync::Mutex::new(None));
    let addr = peer_that_waits_for_first_bytes(&ca, &client_store, before_answer.clone()).await;
    let client = proxy(config("outbound: {mtls: mtls}"), client_store, addr, addr).await;

    // The app speaks a moment after connecting: its stream is open and unanswered by then.
    let mut app = tokio::net::TcpStream::connect(client.outbound_addrs[0])
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    app.write_all(b"late hello").await.unwrap();
    app.shutdown().await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        app.read_to_end(&mut answer),
    )
    .await
    .unwrap()
    .unwrap();

    assert_eq!(
        before_answer.lock().unwrap().as_deref(),
        Some(&b"late hello"[..]),
        "the peer had the bytes before it answered the CONNECT"
    );
    assert_eq!(answer, b"late hello");
}

#[tokio::test]
async fn first_bytes_that_a_stale_connection_refused_are_sent_again_on_the_next() {
    let scene = Renewable::new().await;
    let (server, client) = (&scene.server, &scene.client);
    assert_eq!(
        spoke_first(client.outbound_addrs[0], b"before")
            .await
            .unwrap(),
        b"before"
    );
    // The server's new identity makes the pooled connection stale: its next stream is refused
    // (with the first bytes it carried) and the client redials.
    scene.renew_server();

    let after = spoke_first(client.outbound_addrs[0], b"after")
        .await
        .unwrap();

    assert_eq!(after, b"after");
    assert_metric(
        server,
        r#"meshlet_pooled_connections_total{direction="inbound"}"#,
        2.0,
    )
    .await;
}

#[tokio::test]
async fn first_bytes_of_a_stream_the_peer_refuses_never_reach_its_app() {
    let ca = Ca::new(TD, DAY).unwrap();
    let recorder = recorder().await;
    let yaml = format!("inbound:\n  policy:\n    - ports: [{}]\n      from: [spiffe://cluster.local/ns/default/sa/pod-worker]\n", recorder.addr.port());
    let server = proxy_for(&ca, "/ns/default/sa/echo", &yaml, recorder.addr).await;
    let other = proxy_for(
        &ca,
        "/ns/default/sa/other",
        "outbound: {mtls: mtls}",
        server.inbound_addrs[0],
    )
    .await;

    let answer = spoke_first(other.outbound_addrs[0], b"not for you")
        .await
        .unwrap_or_default();

    assert!(answer.is_empty(), "{answer:?}");
    assert_metric(
        &server,
        r#"meshlet_policy_denials_total{direction="inbound",reason="no_matching_rule"}"#,
        1.0,
    )
    .await;
    assert!(recorder.received.lock().unwrap().is_empty());
}

/// A caller of the pooled transport with a valid SVID for `path`: mTLS with meshlet-mux/1
/// offered, the server verified as a meshlet client verifies it; then whatever the test does.
async fn mux_caller(
    ca: &Ca,
    path: &str,
    server: std::net::SocketAddr,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let me = leaf(ca, path, |_| {});
    let mut cfg = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(meshlet_identity::SpiffeServerVerifier::new(
            store(ca, &me),
            crypto_provider(),
        )))
        .with_client_auth_cert(
            parse_certs(me.cert.as_bytes()).unwrap(),
            PrivateKeyDer::from_pem_slice(me.key.as_bytes()).unwrap(),
        )
        .unwrap();
    cfg.alpn_protocols = vec![b"meshlet-mux/1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(server).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .unwrap()
}

const ATTACKER: &str = "/ns/default/sa/other";

/// echo's pod, whose policy lets only pod-worker call it, with `max_connections` slots; and
/// pod-worker's proxy calling it.
struct Guarded {
    server: meshlet_proxy::Running,
    worker: meshlet_proxy::Running,
}

impl Guarded {
    async fn new(ca: &Ca, echo: &Echo, max_connections: Option<usize>) -> Self {
        let limit = max_connections
            .map(|n| format!("  max_connections: {n}\n"))
            .unwrap_or_default();
        let server = proxy_for(
            ca,
            "/ns/default/sa/echo",
            &format!(
                "inbound:\n{limit}  policy:\n    - ports: [{}]\n      from: [\"spiffe://cluster.local/ns/default/sa/pod-worker\"]\n",
                echo.addr.port()
            ),
            echo.addr,
        )
        .await;
        let worker = proxy_for(
            ca,
            "/ns/default/sa/pod-worker",
            "outbound: {mtls: mtls}",
            server.inbound_addrs[0],
        )
        .await;
        Guarded { server, worker }
    }

    fn target(&self) -> std::net::SocketAddr {
        self.server.inbound_addrs[0]
    }

    /// Fails the test unless pod-worker's calls get through within a few seconds (its first
    /// tries may time out waiting for a slot), and the server counted `n` connections refused
    /// for `reason`.
    async fn slots_freed_after(&self, n: f64, reason: &str) {
        eventually("the allowed caller gets a freed slot", async || {
            roundtrip(self.worker.outbound_addrs[0], b"let through")
                .await
                .is_ok_and(|r| r == b"let through")
        })
        .await;
        let series = format!(
            r#"meshlet_connections_refused_total{{direction="inbound",reason="{reason}"}}"#
        );
        assert_metric(&self.server, &series, n).await;
    }
}

#[tokio::test]
async fn a_caller_silent_after_the_mtls_handshake_is_dropped_and_frees_its_slot() {
    let ca = Ca::new(TD, DAY).unwrap();
    let echo = echo().await;
    // Two slots: an allowed caller's pooled connection takes one, its stream the other.
    let pod = Guarded::new(&ca, &echo, Some(2)).await;
    // The attacker: a valid SVID of another identity, the pooled ALPN, and then silence
    // instead of the HTTP/2 preface, on as many connections as there are slots.
    let mut silent = [
        mux_caller(&ca, ATTACKER, pod.target()).await,
        mux_caller(&ca, ATTACKER, pod.target()).await,
    ];

    // The server's own SETTINGS may come first; then it must close (handshake timeout: 2 s).
    let dropped = tokio::time::timeout(std::time::Duration::from_secs(6), async {
        let mut buf = [0u8; 256];
        for conn in &mut silent {
            while let Ok(n) = conn.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        }
    })
    .await;

    assert!(
        dropped.is_ok(),
        "the silent caller still holds its connection after 6 s"
    );
    pod.slots_freed_after(2.0, "timeout").await;
}

#[tokio::test]
async fn a_caller_the_policy_grants_nothing_cannot_hold_slots_with_idle_pooled_connections() {
    let ca = Ca::new(TD, DAY).unwrap();
    let echo = echo().await;
    let pod = Guarded::new(&ca, &echo, Some(2)).await;
    // The attacker: a valid SVID of an identity no rule names, a complete HTTP/2 handshake on
    // the pooled ALPN (pings answered), and then no stream, on as many connections as there
    // are slots.
    let mut idle = Vec::new();
    for _ in 0..2 {
        let tls = mux_caller(&ca, ATTACKER, pod.target()).await;
        let (sender, connection) = h2::client::handshake(tls).await.unwrap();
        idle.push((sender, tokio::spawn(connection)));
    }

    // Within the handshake timeout (2 s here) the server lets them go.
    let ended = tokio::time::timeout(std::time::Duration::from_secs(6), async {
        for (_, connection) in &mut idle {
            let _ = connection.await;
        }
    })
    .await;

    assert!(
        ended.is_ok(),
        "the idle connections still hold their slots after 6 s"
    );
    pod.slots_freed_after(2.0, "no_matching_rule").await;
}

#[tokio::test]
async fn a_caller_the_policy_grants_nothing_still_hears_why_its_stream_is_refused() {
    let ca = Ca::new(TD, DAY).unwrap();
    let echo = echo().await;
    let pod = Guarded::new(&ca, &echo, None).await;
    let other = proxy_for(&ca, ATTACKER, "outbound: {mtls: mtls}", pod.target()).await;

    for _ in 0..3 {
        let answer = roundtrip(other.outbound_addrs[0], b"let me in").await;
        assert!(answer.unwrap_or_default().is_empty());
    }

    // Each app connection was refused by the destination's policy (a 403 on its stream), not
    // lost to a connection closed under it.
    assert_metric(
        &other,
        r#"meshlet_connections_refused_total{direction="outbound",reason="stream_refused"}"#,
        3.0,
    )
    .await;
    assert_eq!(echo.accepted.load(Ordering::SeqCst), 0);
}
