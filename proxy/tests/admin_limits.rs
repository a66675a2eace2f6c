//! The admin port is bounded apart from the data plane.

mod common;

use common::*;
use meshlet_identity::issue::Ca;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A connection to `to` from the loopback address `from`, as if from another pod.
async fn connect_from(from: [u8; 4], to: std::net::SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(std::net::SocketAddr::from((from, 0))).unwrap();
    socket.connect(to).await.unwrap()
}

async fn status_of(mut s: TcpStream, path: &str) -> String {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

#[tokio::test]
async fn one_address_holding_admin_connections_cannot_fail_anyone_elses_probes() {
    let ca = Ca::new(TD, DAY).unwrap();
    let echo = echo().await;
    let server = proxy_for(&ca, "/s", "inbound: {mode: permissive}", echo.addr).await;
    let admin = server.admin_addr.unwrap();
    // An attacking pod holds as many idle connections as it can get (300).
    let mut held = Vec::new();
    for _ in 0..300 {
        held.push(connect_from([127, 0, 0, 9], admin).await);
    }

    let mut statuses = Vec::new();
    for _ in 0..20 {
        statuses.push(status_of(connect_from([127, 0, 0, 1], admin).await, "/ready").await);
    }

    assert!(
        statuses.iter().all(|s| s == "HTTP/1.1 200 OK"),
        "the kubelet's probes pass during the flood: {statuses:?}"
    );
    assert_eq!(
        roundtrip(server.inbound_addrs[0], b"still serving")
            .await
            .unwrap(),
        b"still serving"
    );
    drop(held);
}

#[tokio::test]
async fn a_flood_of_idle_admin_connections_is_capped_and_the_data_plane_goes_on() {
    let ca = Ca::new(TD, DAY).unwrap();
    let echo = echo().await;
    let server = proxy_for(&ca, "/s", "inbound: {mode: permissive}", echo.addr).await;
    let admin = server.admin_addr.unwrap();
    // Many addresses, a few connections each, up to the cap.
    let mut held = Vec::new();
    for i in 0..meshlet_proxy::admin_slots::MAX_CONNECTIONS {
        let from = [127, 1, (i / 4) as u8, 1 + (i % 4) as u8];
        held.push(connect_from(from, admin).await);
    }
    // Accepted in order: the last one has its slot once it is served.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    let mut extra = connect_from([127, 2, 0, 1], admin).await;
    let mut buf = [0u8; 1];
    let closed = tokio::time::timeout(std::time::Duration::from_secs(2), extra.read(&mut buf))
        .await
        .expect("the connection past the cap is closed at once");

    assert!(matches!(closed, Ok(0) | Err(_)));
    assert_eq!(
        roundtrip(server.inbound_addrs[0], b"still serving")
            .await
            .unwrap(),
        b"still serving"
    );
    drop(held);
}

#[tokio::test]
async fn dozens_of_addresses_each_holding_its_share_cannot_fail_the_kubelets_probes() {
    let ca = Ca::new(TD, DAY).unwrap();
    let echo = echo().await;
    let server = proxy_for(&ca, "/s", "inbound: {mode: permissive}", echo.addr).await;
    let admin = server.admin_addr.unwrap();
    // 40 attacking pods, each holding as many as one address may (320 > every slot).
    let attackers: Vec<[u8; 4]> = (0..40).map(|i| [127, 3, 0, 1 + i]).collect();
    let mut held = Vec::new();
    for from in &attackers {
        for _ in 0..meshlet_proxy::admin_slots::MAX_PER_PEER {
            held.push(connect_from(*from, admin).await);
        }
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    let mut statuses = Vec::new();
    for _ in 0..20 {
        statuses.push(status_of(connect_from([127, 0, 0, 1], admin).await, "/ready").await);
        // The attackers reopen what was closed.
        for from in &attackers {
            held.push(connect_from(*from, admin).await);
        }
    }

    assert!(
        statuses.iter().all(|s| s == "HTTP/1.1 200 OK"),
        "the kubelet's probes pass during the flood: {statuses:?}"
    );
    drop(held);
}
