//! Certificate and bundle rotation in kubelet-style directories while a connection stays open.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use meshlet_identity::issue::{Ca, Pem};
use meshlet_identity::{crypto_provider, Identity, IdentityFiles, IdentityStore, Source};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Writes the files the way the kubelet updates a projected volume: a new timestamped
/// directory, then an atomic rename of the `..data` symlink onto it.
fn kubelet_write(dir: &Path, generation: u32, leaf: &Pem, bundle: &str) {
    let data = format!("..{generation}_data");
    let target = dir.join(&data);
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join("tls.crt"), &leaf.cert).unwrap();
    std::fs::write(target.join("tls.key"), &leaf.key).unwrap();
    std::fs::write(target.join("ca.crt"), bundle).unwrap();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&data, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for name in ["tls.crt", "tls.key", "ca.crt"] {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{name}"), &link).unwrap();
        }
    }
}

fn load(dir: &Path) -> Arc<IdentityStore> {
    let identity = Identity::load(&IdentityFiles::in_dir(dir), TD, &crypto_provider()).unwrap();
    Arc::new(IdentityStore::new(identity))
}

async fn still_echoes(conn: &mut TcpStream, step: &str) {
    let msg = format!("alive at {step}");
    conn.write_all(msg.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(5), conn.read_exact(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("open connection stalled at {step}"))
        .unwrap_or_else(|e| panic!("open connection broke at {step}: {e}"));
    assert_eq!(buf, msg.as_bytes());
}

async fn new_connection_works(addr: std::net::SocketAddr) -> bool {
    roundtrip(addr, b"new")
        .await
        .map(|r| r == b"new")
        .unwrap_or(false)
}

async fn rotations(running: &meshlet_proxy::Running, result: &str) -> f64 {
    metric(
        &metrics(running).await,
        &format!(r#"meshlet_identity_rotations_total{{result="{result}"}}"#),
    )
}

#[tokio::test]
async fn rotation_of_bundles_and_leaves_applies_to_new_handshakes_and_spares_open_connections() {
    let ca1 = Ca::new(TD, DAY).unwrap();
    let ca2 = Ca::new(TD, DAY).unwrap();
    let both = format!("{}{}", ca1.pem.cert, ca2.pem.cert);
    let tmp = tempfile::tempdir().unwrap();
    let (server_dir, client_dir) = (tmp.path().join("server"), tmp.path().join("client"));
    let server_leaf = leaf(&ca1, "/ns/default/sa/echo", |_| {});
    let client_leaf = leaf(&ca1, "/ns/default/sa/pod-worker", |_| {});
    kubelet_write(&server_dir, 1, &server_leaf, &both);
    kubelet_write(&client_dir, 1, &client_leaf, &ca1.pem.cert);

    let echo = echo().await;
    let server_store = load(&server_dir);
    let server = proxy(config(""), server_store.clone(), echo.addr, echo.addr).await;
    let target = server.inbound_addrs[0];
    let client_store = load(&client_dir);
    let client = proxy(
        config("outbound: {mtls: mtls}"),
        client_store.clone(),
        target,
        target,
    )
    .await;
    for (store, dir, running) in [
        (&server_store, &server_dir, &server),
        (&client_store, &client_dir, &client),
    ] {
        let (_, follower) = Source::Files(IdentityFiles::in_dir(dir))
            .first(TD)
            .await
            .unwrap();
        let metrics = running.metrics.clone();
        follower
            .follow(store.clone(), move |update| metrics.rotation(update))
            .unwrap();
    }
    let entry = client.outbound_addrs[0];
    let mut open = TcpStream::connect(entry).await.unwrap();
    still_echoes(&mut open, "start").await;

    // 1. The client's bundle gains the second CA.
    kubelet_write(&client_dir, 2, &client_leaf, &both);
    eventually("client applies the new bundle", async || {
        rotations(&client, "applied").await == 1.0
    })
    .await;
    still_echoes(&mut open, "client bundle + CA2").await;

    // 2. The server's leaf is re-issued by the second CA.
    let server_leaf2 = leaf(&ca2, "/ns/default/sa/echo", |_| {});
    kubelet_write(&server_dir, 2, &server_leaf2, &both);
    eventually("server applies the new leaf", async || {
        rotations(&server, "applied").await == 1.0
    })
    .await;
    assert!(
        new_connection_works(entry).await,
        "CA2 leaf must be trusted by the client now"
    );
    still_echoes(&mut open, "server leaf from CA2").await;

    // 3. The second CA leaves the client's bundle: new handshakes must now fail.
    kubelet_write(&client_dir, 3, &client_leaf, &ca1.pem.cert);
    eventually("client applies the reduced bundle", async || {
        rotations(&client, "applied").await == 2.0
    })
    .await;
    assert!(
        !new_connection_works(entry).await,
        "the bundle reload must be real"
    );
    assert_metric(
        &client,
        r#"meshlet_tls_handshake_failures_total{direction="outbound",reason="unknown_issuer"}"#,
        1.0,
    )
    .await;
    still_echoes(&mut open, "CA2 removed").await;

    // 4. Restored.
    kubelet_write(&client_dir, 4, &client_leaf, &both);
    eventually("client applies the restored bundle", async || {
        rotations(&client, "applied").await == 3.0
    })
    .await;
    assert!(new_connection_works(entry).await);
    still_echoes(&mut open, "CA2 restored").await;

    // 5. A broken certificate written in place is refused and the previous identity kept.
    let before = client_store.current().certified_key.cert.clone();
    std::fs::write(
        client_dir.join("..4_data/tls.crt"),
        "-----BEGIN CERTIFICATE-----\nnot base64\n",
    )
    .unwrap();
    eventually("client refuses the broken certificate", async || {
        rotations(&client, "refused").await >= 1.0
    })
    .await;
    assert_eq!(client_store.current().certified_key.cert, before);
    assert!(
        new_connection_works(entry).await,
        "the last good identity stays in use"
    );
    still_echoes(&mut open, "broken certificate").await;

    // 6. A key that does not match the certificate is refused as well.
    tokio::time::sleep(Duration::from_millis(600)).await; // let late events of step 5 settle
    let refused_before = rotations(&client, "refused").await;
    let other = leaf(&ca1, "/ns/default/sa/pod-worker", |_| {});
    let mismatched = Pem {
        cert: client_leaf.cert.clone(),
        key: other.key,
    };
    kubelet_write(&client_dir, 5, &mismatched, &both);
    eventually("client refuses the mismatched pair", async || {
        rotations(&client, "refused").await > refused_before
    })
    .await;
    assert_eq!(client_store.current().certified_key.cert, before);
    assert!(new_connection_works(entry).await);
    still_echoes(&mut open, "mismatched pair").await;
}
