//! The admin port is bounded apart from the data plane.

mod common;

use common::*;
use meshlet_identity::issue::Ca;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

#[tokio::test]
async fn a_flood_of_idle_admin_connections_is_capped_and_the_data_plane_goes_on() {
    let ca = Ca::new(TD, DAY).unwrap();
    let echo = echo().await;
    let server = proxy_for(&ca, "/s", "inbound: {mode: permissive}", echo.addr).await;
    let admin = server.admin_addr.unwrap();
    let mut held = Vec::new();
    for _ in 0..meshlet_proxy::admin::MAX_CONNECTIONS {
        held.push(TcpStream::connect(admin).await.unwrap());
    }

    let mut extra = TcpStream::connect(admin).await.unwrap();
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
