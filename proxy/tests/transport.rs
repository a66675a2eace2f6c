//! A client proxy and a server proxy on loopback: what crosses between them, and how.

mod common;

use common::*;
use meshlet_identity::issue::Ca;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn app_bytes_cross_the_mesh_and_both_sides_count_an_mtls_connection() {
    let ca = Ca::new(TD, DAY).unwrap();
    let echo = echo().await;
    let p = pair(&ca, "outbound: {mtls: mtls}", "", echo.addr).await;
    let got = roundtrip(p.client.outbound_addrs[0], b"hello through the mesh")
        .await
        .unwrap();
    assert_eq!(got, b"hello through the mesh");
    let server_metrics = metrics(&p.server).await;
    assert_eq!(
        metric(
            &server_metrics,
            r#"meshlet_connections_opened_total{direction="inbound",tls="mtls"}"#
        ),
        1.0
    );
    assert!(
        server_metrics
            .contains("meshlet_tls_handshake_duration_seconds_count{direction=\"inbound\"} 1"),
        "{server_metrics}"
    );
    let client_metrics = metrics(&p.client).await;
    assert_eq!(
        metric(
            &client_metrics,
            r#"meshlet_connections_opened_total{direction="outbound",tls="mtls"}"#
        ),
        1.0
    );
    assert!(metric(&client_metrics, "meshlet_certificate_expiry_seconds") > 3600.0);
}

#[tokio::test]
async fn half_close_reaches_the_far_side_and_back() {
    let ca = Ca::new(TD, DAY).unwrap();
    let echo = echo().await;
    let p = pair(&ca, "outbound: {mtls: mtls}", "", echo.addr).await;
    // The echo server only closes after it sees our FIN; reading to EOF proves both FINs crossed.
    let mut s = TcpStream::connect(p.client.outbound_addrs[0])
        .await
        .unwrap();
    s.write_all(b"first").await.unwrap();
    s.shutdown().await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out, b"first");
}

#[tokio::test]
async fn a_large_transfer_arrives_intact() {
    let ca = Ca::new(TD, DAY).unwrap();
    let echo = echo().await;
    let p = pair(&ca, "outbound: {mtls: mtls}", "", echo.addr).await;
    let n = meshlet_lab::app::send_and_check(p.client.outbound_addrs[0], 32 * 1024 * 1024)
        .await
        .unwrap();
    assert_eq!(n, 32 * 1024 * 1024);
}

#[tokio::test]
async fn a_pinned_identity_that_does_not_match_refuses_the_connection() {
    let ca = Ca::new(TD, DAY).unwrap();
    let echo = echo().await;
    let client_yaml = "outbound:\n  destinations:\n    - {cidr: 127.0.0.0/8, mtls: mtls, identities: [spiffe://cluster.local/ns/default/sa/not-echo]}\n";
    let p = pair(&ca, client_yaml, "", echo.addr).await;
    let got = roundtrip(p.client.outbound_addrs[0], b"secret")
        .await
        .unwrap_or_default();
    assert!(got.is_empty());
    assert_eq!(
        echo.accepted.load(Ordering::SeqCst),
        0,
        "the backend must not be reached"
    );
    assert_metric(
        &p.client,
        r#"meshlet_tls_handshake_failures_total{direction="outbound",reason="identity_mismatch"}"#,
        1.0,
    )
    .await;
}

#[tokio::test]
async fn a_pinned_identity_that_matches_is_accepted() {
    let ca = Ca::new(TD, DAY).unwrap();
    let echo = echo().await;
    let client_yaml = "outbound:\n  destinations:\n    - {cidr: 127.0.0.0/8, ports: [\"1-65535\"], mtls: mtls, identities: [spiffe://cluster.local/ns/default/sa/echo]}\n";
    let p = pair(&ca, client_yaml, "", echo.addr).await;
    assert_eq!(
        roundtrip(p.client.outbound_addrs[0], b"ok").await.unwrap(),
        b"ok"
    );
}

#[tokio::test]
async fn mtls_to_a_plain_server_fails_without_sending_application_bytes() {
    let ca = Ca::new(TD, DAY).unwrap();
    let rec = recorder().await;
    let client_store = store(&ca, &leaf(&ca, "/ns/default/sa/pod-worker", |_| {}));
    let client = proxy(
        config("outbound: {mtls: mtls}"),
        client_store,
        rec.addr,
        rec.addr,
    )
    .await;
    let got = roundtrip(client.outbound_addrs[0], b"TOP-SECRET-PAYLOAD")
        .await
        .unwrap_or_default();
    assert!(got.is_empty());
    let seen = rec.received.lock().unwrap().clone();
    assert!(
        !seen.is_empty() && seen[0] == 0x16,
        "only a TLS ClientHello may reach the server"
    );
    assert!(
        !seen.windows(18).any(|w| w == b"TOP-SECRET-PAYLOAD"),
        "plaintext leaked"
    );
}

#[tokio::test]
async fn auto_falls_back_to_plaintext_for_a_plain_server_and_remembers_it() {
    let ca = Ca::new(TD, DAY).unwrap();
    let echo = echo().await;
    let client_store = store(&ca, &leaf(&ca, "/ns/default/sa/pod-worker", |_| {}));
    let client = proxy(
        config("outbound: {mtls: auto, auto_detect_timeout: 500ms}"),
        client_store,
        echo.addr,
        echo.addr,
    )
    .await;
    // The echo server answers the ClientHello with the ClientHello itself: not TLS from a proxy.
    assert_eq!(
        roundtrip(client.outbound_addrs[0], b"plain one")
            .await
            .unwrap(),
        b"plain one"
    );
    assert_eq!(
        roundtrip(client.outbound_addrs[0], b"plain two")
            .await
            .unwrap(),
        b"plain two"
    );
    let m = metrics(&client).await;
    assert_eq!(
        metric(&m, "meshlet_outbound_auto_fallbacks_total"),
        1.0,
        "the second connection must not probe again: {m}"
    );
    assert_eq!(
        metric(
            &m,
            r#"meshlet_connections_opened_total{direction="outbound",tls="plain"}"#
        ),
        2.0
    );
    // Probe + two real connections.
    assert_eq!(echo.accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn auto_uses_mtls_when_the_peer_is_a_meshlet_proxy() {
    let ca = Ca::new(TD, DAY).unwrap();
    let echo = echo().await;
    let p = pair(&ca, "outbound: {mtls: auto}", "", echo.addr).await;
    assert_eq!(
        roundtrip(p.client.outbound_addrs[0], b"x").await.unwrap(),
        b"x"
    );
    let m = metrics(&p.client).await;
    assert_eq!(
        metric(
            &m,
            r#"meshlet_connections_opened_total{direction="outbound",tls="mtls"}"#
        ),
        1.0
    );
    assert_eq!(metric(&m, "meshlet_outbound_auto_fallbacks_total"), 0.0);
}

#[tokio::test]
async fn off_passes_bytes_in_plaintext() {
    let ca = Ca::new(TD, DAY).unwrap();
    let rec = recorder().await;
    let client_store = store(&ca, &leaf(&ca, "/ns/default/sa/pod-worker", |_| {}));
    let client = proxy(
        config("outbound: {mtls: off}"),
        client_store,
        rec.addr,
        rec.addr,
    )
    .await;
    let mut s = TcpStream::connect(client.outbound_addrs[0]).await.unwrap();
    s.write_all(b"visible").await.unwrap();
    eventually("the recorder sees the bytes", async || {
        rec.received.lock().unwrap().as_slice() == b"visible"
    })
    .await;
}

#[tokio::test]
async fn strict_inbound_refuses_plaintext_and_permissive_passes_it() {
    let ca = Ca::new(TD, DAY).unwrap();
    let echo = echo().await;
    let strict = proxy_for(&ca, "/s", "", echo.addr).await;
    let got = roundtrip(strict.inbound_addrs[0], b"GET / HTTP/1.1\r\n\r\n")
        .await
        .unwrap_or_default();
    assert!(got.is_empty());
    assert_eq!(echo.accepted.load(Ordering::SeqCst), 0);
    assert_metric(
        &strict,
        r#"meshlet_connections_refused_total{direction="inbound",reason="plaintext"}"#,
        1.0,
    )
    .await;

    let permissive = proxy_for(&ca, "/p", "inbound: {mode: permissive}", echo.addr).await;
    let got = roundtrip(permissive.inbound_addrs[0], b"GET / HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(got, b"GET / HTTP/1.1\r\n\r\n");
}

#[tokio::test]
async fn a_caller_not_named_by_the_policy_is_refused() {
    let ca = Ca::new(TD, DAY).unwrap();
    let echo = echo().await;
    let server_yaml = "inbound:\n  policy:\n    - ports: [\"1-65535\"]\n      from: [spiffe://cluster.local/ns/default/sa/someone-else]\n";
    let p = pair(&ca, "outbound: {mtls: mtls}", server_yaml, echo.addr).await;
    let got = roundtrip(p.client.outbound_addrs[0], b"hi")
        .await
        .unwrap_or_default();
    assert!(got.is_empty());
    assert_eq!(echo.accepted.load(Ordering::SeqCst), 0);
    assert_metric(
        &p.server,
        r#"meshlet_policy_denials_total{direction="inbound",reason="no_matching_rule"}"#,
        1.0,
    )
    .await;
}

#[tokio::test]
async fn a_backend_that_refuses_closes_the_callers_connection_promptly() {
    let ca = Ca::new(TD, DAY).unwrap();
    // A port with nothing listening.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let p = pair(&ca, "outbound: {mtls: mtls}", "", dead).await;
    let started = std::time::Instant::now();
    let got = roundtrip(p.client.outbound_addrs[0], b"anyone?")
        .await
        .unwrap_or_default();
    assert!(got.is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn garbage_and_silent_callers_do_not_disturb_other_connections() {
    let ca = Ca::new(TD, DAY).unwrap();
    let echo = echo().await;
    let p = pair(&ca, "outbound: {mtls: mtls}", "", echo.addr).await;
    let inbound = p.server.inbound_addrs[0];
    // A truncated ClientHello, random bytes, and a silent connection, all left open.
    let mut bad = Vec::new();
    for junk in [
        &[0x16u8, 0x03, 0x01, 0x40, 0x00, 0x01][..],
        &[0xde, 0xad, 0xbe, 0xef][..],
        &[][..],
    ] {
        let mut s = TcpStream::connect(inbound).await.unwrap();
        s.write_all(junk).await.unwrap();
        bad.push(s);
    }
    assert_eq!(
        roundtrip(p.client.outbound_addrs[0], b"still fine")
            .await
            .unwrap(),
        b"still fine"
    );
    drop(bad);
}

#[tokio::test]
async fn admin_reports_liveness_readiness_and_shuts_down_from_loopback() {
    let ca = Ca::new(TD, DAY).unwrap();
    let echo = echo().await;
    let running = proxy_for(&ca, "/a", "", echo.addr).await;
    let admin = running.admin_addr.unwrap();
    let r = meshlet_lab::app::get(
        admin,
        "GET",
        &[],
        &["/live".into(), "/ready".into(), "/nope".into()],
    )
    .await
    .unwrap();
    assert_eq!((r[0].0, r[1].0, r[2].0), (200, 200, 404));
    let r = meshlet_lab::app::get(admin, "POST", &[], &["/shutdown".into()])
        .await
        .unwrap();
    assert_eq!(r[0].0, 200);
    tokio::time::timeout(Duration::from_secs(5), running.wait())
        .await
        .expect("the proxy stops after POST /shutdown");
}

#[tokio::test]
async fn shutdown_lets_an_open_connection_finish_within_the_drain_period() {
    let ca = Ca::new(TD, DAY).unwrap();
    let echo = echo().await;
    let p = pair(&ca, "outbound: {mtls: mtls}", "", echo.addr).await;
    let mut s = TcpStream::connect(p.client.outbound_addrs[0])
        .await
        .unwrap();
    s.write_all(b"before").await.unwrap();
    let mut buf = [0u8; 6];
    s.read_exact(&mut buf).await.unwrap();
    p.client.shutdown();
    let client_addr = p.client.outbound_addrs[0];
    let admin = p.client.admin_addr.unwrap();
    let waiter = tokio::spawn(p.client.wait());
    // The established connection still works while draining; new ones are not accepted.
    s.write_all(b"during").await.unwrap();
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"during");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ready = meshlet_lab::app::get(admin, "GET", &[], &["/ready".into()])
        .await
        .unwrap();
    assert_eq!(ready[0].0, 503, "a draining proxy is not ready");
    assert!(roundtrip(client_addr, b"new")
        .await
        .map(|v| v.is_empty())
        .unwrap_or(true));
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await.unwrap();
    tokio::time::timeout(Duration::from_secs(3), waiter)
        .await
        .expect("drained")
        .unwrap();
}
