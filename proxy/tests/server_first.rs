//! Server-speaks-first apps (MySQL, SMTP, FTP) behind a permissive pod: an unmeshed client gets
//! the app's greeting at once, and a meshlet client is never taken for plaintext, even when the
//! machine is busy.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use meshlet_identity::issue::Ca;
use meshlet_proxy::config::{Config, Override};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const GREETING: &[u8] = b"220 greeter ready\r\n";

/// An app that greets first, then echoes what it is sent.
async fn greeter() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                if s.write_all(GREETING).await.is_err() {
                    return;
                }
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// The shipped defaults but for a short drain: first_byte stays 10 s, as in production.
fn production_timeouts(yaml: &str) -> Config {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), format!("timeouts: {{drain: 1s}}\n{yaml}")).unwrap();
    Config::load(Some(f.path()), &[] as &[Override]).unwrap()
}

async fn permissive_server(ca: &Ca, app: SocketAddr) -> meshlet_proxy::Running {
    let leaf = leaf(ca, "/ns/default/sa/db", |_| {});
    proxy(
        production_timeouts("inbound: {mode: permissive}"),
        store(ca, &leaf),
        app,
        app,
    )
    .await
}

/// Connects, reads the greeting, sends a line and reads it back.
async fn converse(addr: SocketAddr) -> Result<Duration, String> {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut greeting = vec![0u8; GREETING.len()];
    tokio::time::timeout(Duration::from_secs(15), s.read_exact(&mut greeting))
        .await
        .map_err(|_| "no greeting".to_owned())?
        .map_err(|e| e.to_string())?;
    let waited = started.elapsed();
    if greeting != GREETING {
        return Err(format!("greeting {:?}", String::from_utf8_lossy(&greeting)));
    }
    s.write_all(b"QUIT\r\n").await.map_err(|e| e.to_string())?;
    let mut echoed = [0u8; 6];
    s.read_exact(&mut echoed).await.map_err(|e| e.to_string())?;
    if &echoed != b"QUIT\r\n" {
        return Err("bad echo".into());
    }
    Ok(waited)
}

#[tokio::test]
async fn an_unmeshed_client_of_a_server_first_app_gets_its_greeting_at_once() {
    let ca = Ca::new(TD, DAY).unwrap();
    let app = greeter().await;
    let server = permissive_server(&ca, app).await;

    let mut waits = Vec::new();
    for _ in 0..3 {
        waits.push(converse(server.inbound_addrs[0]).await.unwrap());
    }

    println!("greeting through a permissive pod, first connection included: {waits:?}");
    // The old detection waited for timeouts.first_byte (10 s) before passing a silent caller.
    assert!(
        waits.iter().all(|w| *w < Duration::from_secs(2)),
        "{waits:?}"
    );
    assert_metric(
        &server,
        r#"meshlet_connections_opened_total{direction="inbound",tls="plain"}"#,
        3.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meshlet_clients_of_a_server_first_port_are_never_taken_for_plaintext_under_load() {
    let ca = Ca::new(TD, DAY).unwrap();
    let app = greeter().await;
    let server = permissive_server(&ca, app).await;
    let client_leaf = leaf(&ca, "/ns/default/sa/pod-worker", |_| {});
    let client = proxy(
        production_timeouts("outbound: {mtls: mtls, transport: per_connection}"),
        store(&ca, &client_leaf),
        server.inbound_addrs[0],
        server.inbound_addrs[0],
    )
    .await;
    // Keep both cores busy the whole time, as other pods would.
    let stop = Arc::new(AtomicBool::new(false));
    let burners: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                }
                x
            })
        })
        .collect();

    let (total, concurrency) = (2000usize, 100usize);
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut tasks = Vec::new();
    for _ in 0..total {
        let permit = sem.clone().acquire_owned().await.unwrap();
        let addr = client.outbound_addrs[0];
        tasks.push(tokio::spawn(async move {
            let r = converse(addr).await;
            drop(permit);
            r
        }));
    }
    let mut failed = Vec::new();
    for t in tasks {
        if let Err(e) = t.await.unwrap() {
            failed.push(e);
        }
    }
    stop.store(true, Ordering::Relaxed);
    for b in burners {
        b.join().unwrap();
    }

    let text = metrics(&server).await;
    let misjudged = metric(
        &text,
        r#"meshlet_connections_opened_total{direction="inbound",tls="plain"}"#,
    );
    let mtls = metric(
        &text,
        r#"meshlet_connections_opened_total{direction="inbound",tls="mtls"}"#,
    );
    println!(
        "{total} mTLS connections to a server-first port, both cores busy: {mtls} as mTLS, misjudged as plaintext: {misjudged}"
    );
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert_eq!(misjudged, 0.0, "{text}");
    assert_eq!(mtls, total as f64);
}

#[tokio::test]
async fn a_client_whose_first_write_is_a_lone_nul_reaches_the_app_at_once() {
    let ca = Ca::new(TD, DAY).unwrap();
    let app = greeter().await;
    let server = permissive_server(&ca, app).await;
    let started = Instant::now();
    let mut s = TcpStream::connect(server.inbound_addrs[0]).await.unwrap();
    // A prefix of meshlet's locate request, and nothing more for now.
    s.write_all(b"\0").await.unwrap();

    let mut got = vec![0u8; GREETING.len() + 1];
    tokio::time::timeout(Duration::from_secs(15), s.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();

    assert_eq!(&got[..GREETING.len()], GREETING);
    assert_eq!(
        got[GREETING.len()],
        0,
        "the NUL reached the app (and came back)"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "not after first_byte (10 s): {:?}",
        started.elapsed()
    );
}
