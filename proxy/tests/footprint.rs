//! What an open connection costs to hold: each accepted connection is one task whose size is
//! its handler's future, so the state kept across awaits must stay small. Large, short-lived
//! setup state (TLS handshakes, dialing a pooled connection, the HTTP/2 server of a pooled
//! connection) is boxed instead of being carried inline by every connection.

mod common;

use std::mem::size_of_val;
use std::sync::Arc;

use common::*;
use meshlet_identity::issue::Ca;
use meshlet_proxy::{inbound, outbound, OriginalDst};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The bound per connection task. Unboxed handshake state once made these 6 to 15 KB, copied
/// on every spawn and kept for the connection's life.
const MAX_TASK_BYTES: usize = 2048;

async fn accepted() -> (TcpStream, TcpStream, std::net::SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (conn, peer) = listener.accept().await.unwrap();
    (client, conn, peer)
}

fn permit() -> OwnedSemaphorePermit {
    Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap()
}

#[tokio::test]
async fn an_inbound_connection_task_stays_small() {
    let ca = Ca::new(TD, DAY).unwrap();
    let backend = echo().await;
    let running = proxy_for(&ca, "/ns/default/sa/server", "", backend.addr).await;
    let (_client, conn, peer) = accepted().await;

    let task = inbound::accept::handle(
        running.inbound.clone(),
        conn,
        peer,
        OriginalDst::Fixed(backend.addr),
        permit(),
    );

    let size = size_of_val(&task);
    assert!(size <= MAX_TASK_BYTES, "inbound task is {size} bytes");
}

#[tokio::test]
async fn an_outbound_connection_task_stays_small() {
    let ca = Ca::new(TD, DAY).unwrap();
    let backend = echo().await;
    for transport in ["pooled", "per_connection"] {
        let yaml = format!("outbound: {{transport: {transport}}}");
        let running = proxy_for(&ca, "/ns/default/sa/client", &yaml, backend.addr).await;
        let (_client, conn, peer) = accepted().await;

        let task = outbound::accept::handle(
            running.outbound.clone(),
            conn,
            peer,
            OriginalDst::Fixed(backend.addr),
            permit(),
        );

        let size = size_of_val(&task);
        assert!(
            size <= MAX_TASK_BYTES,
            "outbound task ({transport}) is {size} bytes"
        );
    }
}
