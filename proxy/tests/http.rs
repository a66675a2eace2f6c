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
