//! HTTP policy ports between a proxy pair: upgrades, HTTP/2, and what the app receives.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshlet_identity::issue::Ca;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An app that answers with the path and headers it saw, and accepts upgrades (then echoes).
async fn upgrading_app() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|mut req: Request<Incoming>| async move {
                    if req.headers().contains_key(hyper::header::UPGRADE) {
                        let on_upgrade = hyper::upgrade::on(&mut req);
                        tokio::spawn(async move {
                            if let Ok(up) = on_upgrade.await {
                                let mut io = TokioIo::new(up);
                                let mut buf = [0u8; 64];
                                while let Ok(n) = io.read(&mut buf).await {
                                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                                        break;
                                    }
                                }
                            }
                        });
                        let mut resp = Response::new(Full::new(Bytes::new()));
                        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                        resp.headers_mut()
                            .insert("upgrade", "websocket".parse().unwrap());
                        resp.headers_mut()
                            .insert("connection", "upgrade".parse().unwrap());
                        return Ok::<_, Infallible>(resp);
                    }
                    let mut body = format!("{:?} {}\n", req.version(), req.uri());
                    for (k, v) in req.headers() {
                        body.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("")));
                    }
                    Ok(Response::new(Full::new(Bytes::from(body))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(s), service)
                    .await;
            });
        }
    });
    addr
}

async fn pair_with_policy(app: SocketAddr) -> (meshlet_proxy::Running, meshlet_proxy::Running) {
    let ca = Ca::new(TD, DAY).unwrap();
    let policy = format!(
        "inbound:\n  policy:\n    - ports: [{}]\n      from: [spiffe://cluster.local/ns/default/sa/pod-worker]\n      http:\n        - methods: [GET]\n          paths: [/ws, \"/api/*\"]\n",
        app.port()
    );
    let Pair { client, server } = pair(&ca, "outbound: {mtls: mtls}", &policy, app).await;
    (client, server)
}

async fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).await.unwrap() == 0 {
            break;
        }
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

#[tokio::test]
async fn an_allowed_upgrade_is_passed_through_and_a_forbidden_one_gets_403() {
    let app = upgrading_app().await;
    let (client, _server) = pair_with_policy(app).await;

    let mut s = TcpStream::connect(client.outbound_addrs[0]).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await
    .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s.write_all(b"frames after the upgrade").await.unwrap();
    let mut buf = [0u8; 24];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"frames after the upgrade");

    let mut s = TcpStream::connect(client.outbound_addrs[0]).await.unwrap();
    s.write_all(
        b"GET /admin HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await
    .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
}

#[tokio::test]
async fn http2_from_the_caller_reaches_an_http2_app_with_the_callers_identity() {
    let app = upgrading_app().await;
    let (client, server) = pair_with_policy(app).await;
    let tcp = TcpStream::connect(client.outbound_addrs[0]).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    for (path, status) in [
        ("/api/items?x=1", 200),
        ("/api/../secret", 403),
        ("/api/a", 200),
    ] {
        let req = Request::builder()
            .uri(format!("http://app{path}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "{path}");
        let body = String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes())
            .into_owned();
        if status == 200 {
            assert!(body.starts_with("HTTP/2.0"), "{body}");
            assert!(body.contains("x-forwarded-client-cert: By=spiffe://cluster.local/ns/default/sa/echo;URI=spiffe://cluster.local/ns/default/sa/pod-worker"), "{body}");
        }
    }
    assert_metric(
        &server,
        &format!(
            r#"meshlet_http_requests_total{{port="{}",decision="allowed",reason="policy"}}"#,
            app.port()
        ),
        2.0,
    )
    .await;
}

/// An HTTP/1 app that does not speak chunked: it answers every head with a fixed response and
/// records every byte it receives.
async fn recording_app() -> (SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<u8>>>) {
    let app = recorder_answering(Some(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")).await;
    (app.addr, app.received)
}

async fn raw_request(client: &meshlet_proxy::Running, request: &[u8]) -> String {
    let mut s = TcpStream::connect(client.outbound_addrs[0]).await.unwrap();
    s.write_all(request).await.unwrap();
    read_head(&mut s).await
}

#[tokio::test]
async fn a_malformed_chunked_body_gets_400_not_503() {
    let (app, _) = recording_app().await;
    let (client, _server) = pair_with_policy(app).await;

    let head = raw_request(
        &client,
        b"GET /api/x HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    )
    .await;

    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
}

#[tokio::test]
async fn a_chunked_body_is_sent_on_an_app_connection_that_is_closed_after_it() {
    let (app, seen) = recording_app().await;
    let (client, _server) = pair_with_policy(app).await;

    let head = raw_request(
        &client,
        b"GET /api/x HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;

    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let seen = String::from_utf8_lossy(&seen.lock().unwrap()).to_ascii_lowercase();
    assert!(seen.contains("connection: close"), "{seen}");
}

/// Reads one response with a `content-length` body: its head and its body.
async fn read_response(s: &mut TcpStream) -> (String, String) {
    let head = read_head(s).await;
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.unwrap();
    (head, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn a_kept_alive_connection_idle_past_the_head_timeout_serves_its_next_request() {
    let app = upgrading_app().await;
    // The test configuration's first_byte is 1s: hyper's header timeout closed idle connections
    // after it.
    let (client, _server) = pair_with_policy(app).await;
    let mut s = TcpStream::connect(client.outbound_addrs[0]).await.unwrap();
    let request = b"GET /api/a HTTP/1.1\r\nHost: app\r\n\r\n";
    s.write_all(request).await.unwrap();
    let (head, _) = read_response(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    s.write_all(request).await.unwrap();
    let (head, _) = read_response(&mut s).await;

    assert!(
        head.starts_with("HTTP/1.1 200"),
        "the next request on an idle kept-alive connection: {head:?}"
    );
}

/// A server proxy in permissive mode whose app port allows anyone, even unauthenticated, only
/// `GET /small`.
async fn permissive_with_http_rules(app: SocketAddr) -> meshlet_proxy::Running {
    let ca = Ca::new(TD, DAY).unwrap();
    let yaml = format!(
        "inbound:\n  mode: permissive\n  policy:\n    - ports: [{}]\n      from: [\"*\"]\n      http:\n        - methods: [GET]\n          paths: [/small]\n",
        app.port()
    );
    proxy_for(&ca, "/ns/default/sa/echo", &yaml, app).await
}

#[tokio::test]
async fn permissive_mode_checks_each_plaintext_request_and_drops_a_forged_identity() {
    let app = upgrading_app().await;
    let server = permissive_with_http_rules(app).await;
    let mut s = TcpStream::connect(server.inbound_addrs[0]).await.unwrap();

    let mut answers = Vec::new();
    for (method, path) in [("GET", "/small"), ("GET", "/headers"), ("DELETE", "/small")] {
        s.write_all(
            format!(
                "{method} {path} HTTP/1.1\r\nHost: app\r\nx-forwarded-client-cert: By=x;URI=spiffe://cluster.local/ns/default/sa/admin\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        answers.push(read_response(&mut s).await);
    }

    let statuses: Vec<_> = answers
        .iter()
        .map(|(h, _)| h.lines().next().unwrap_or("").to_owned())
        .collect();
    assert_eq!(
        statuses,
        [
            "HTTP/1.1 200 OK",
            "HTTP/1.1 403 Forbidden",
            "HTTP/1.1 403 Forbidden"
        ],
        "each request of an unauthenticated caller is checked against the port's HTTP rules"
    );
    assert!(
        !answers[0].1.contains("x-forwarded-client-cert"),
        "a caller's own x-forwarded-client-cert never reaches the app: {}",
        answers[0].1
    );
    assert_metric(
        &server,
        r#"meshlet_http_requests_total{port="PORT",decision="denied",reason="http_rule"}"#
            .replace("PORT", &app.port().to_string())
            .as_str(),
        2.0,
    )
    .await;
}

#[tokio::test]
async fn permissive_mode_refuses_bytes_that_are_not_http_on_a_port_with_http_rules() {
    let (app, seen) = recording_app().await;
    let server = permissive_with_http_rules(app).await;
    for bytes in [&b"*1\r\n$4\r\nPING\r\n"[..], b"\x16\x03\x01\x00\x05hello"] {
        let mut s = TcpStream::connect(server.inbound_addrs[0]).await.unwrap();
        s.write_all(bytes).await.unwrap();
        let mut buf = Vec::new();
        let read =
            tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "closed without an answer: {read:?} {buf:?}"
        );
    }
    assert!(seen.lock().unwrap().is_empty(), "the app saw nothing");
    assert_metric(
        &server,
        r#"meshlet_connections_refused_total{direction="inbound",reason="not_http"}"#,
        2.0,
    )
    .await;
}

#[tokio::test]
async fn a_plaintext_caller_that_trickles_its_request_head_is_cut_off() {
    let app = upgrading_app().await;
    let server = permissive_with_http_rules(app).await;
    let mut s = TcpStream::connect(server.inbound_addrs[0]).await.unwrap();
    let started = std::time::Instant::now();
    s.write_all(b"GET /small HTTP/1.1\r\n").await.unwrap();
    let mut cut = false;
    for _ in 0..20 {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        if s.write_all(b"X").await.is_err() {
            cut = true;
            break;
        }
        let mut buf = [0u8; 64];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(std::time::Duration::from_millis(1), s.read(&mut buf)).await
        {
            cut = true;
            break;
        }
    }

    assert!(cut, "a trickled head is cut off");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "within first_byte (1s) of its first byte: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_kept_alive_connection_idle_past_http_idle_is_closed_between_requests() {
    let app = upgrading_app().await;
    let ca = Ca::new(TD, DAY).unwrap();
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        f.path(),
        format!(
            "timeouts: {{drain: 1s, http_idle: 1s}}\ninbound:\n  mode: permissive\n  policy:\n    - ports: [{}]\n      from: [\"*\"]\n      http: [{{methods: [GET]}}]\n",
            app.port()
        ),
    )
    .unwrap();
    let cfg = meshlet_proxy::config::Config::load(
        Some(f.path()),
        &[] as &[meshlet_proxy::config::Override],
    )
    .unwrap();
    let server = proxy(
        cfg,
        store(&ca, &leaf(&ca, "/ns/default/sa/echo", |_| {})),
        app,
        app,
    )
    .await;
    let mut s = TcpStream::connect(server.inbound_addrs[0]).await.unwrap();
    s.write_all(b"GET /a HTTP/1.1\r\nHost: app\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_response(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    let started = std::time::Instant::now();
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf)).await;

    assert!(matches!(closed, Ok(Ok(0))), "closed quietly: {closed:?}");
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(800),
        "not before http_idle: {:?}",
        started.elapsed()
    );
}
