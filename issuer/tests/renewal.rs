//! Proxies whose SVIDs come from `meshlet issuer` (in-process, on loopback), with lifetimes of
//! seconds: traffic between them keeps flowing across renewals, while the issuer is down, and
//! through a CA rotation in three steps. A "kubelet" task copies the published ConfigMap into
//! each pod's bundle file, as the kubelet refreshes a ConfigMap volume.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshlet_identity::issue::{write_file, Ca};
use meshlet_identity::issuer_client::IssuerSource;
use meshlet_identity::{IdentityStore, Source};
use meshlet_proxy::config::{Config, Override};
use meshlet_proxy::{Listeners, OriginalDst};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DAY: Duration = Duration::from_secs(86400);

struct Pod {
    proxy: meshlet_proxy::Running,
    store: Arc<IdentityStore>,
    bundle: PathBuf,
}

/// A meshed pod of service account `sa` whose proxy asks `issuer` for its SVID.
async fn meshed(
    api: &ApiServer,
    issuer: SocketAddr,
    dir: &std::path::Path,
    name: &str,
    bundle_pem: &str,
    inbound_dst: SocketAddr,
    outbound_dst: SocketAddr,
) -> Pod {
    let token = api.mint(Token::for_pod("default", name, name, "meshlet"));
    let (token, bundle) = pod_files(dir, name, &token, bundle_pem);
    let source = Source::Issuer(IssuerSource {
        url: format!("https://{issuer}").parse().unwrap(),
        token,
        bundle: bundle.clone(),
    });
    let (identity, follower) = source.first(TD).await.unwrap();
    let store = Arc::new(IdentityStore::new(identity));
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(&file, "timeouts: {drain: 1s, handshake: 2s}\n").unwrap();
    let config = Config::load(Some(&file), &[] as &[Override]).unwrap();
    let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let listeners = Listeners {
        inbound: vec![local],
        outbound: vec![local],
        admin: Some(local),
        inbound_dst: OriginalDst::Fixed(inbound_dst),
        outbound_dst: OriginalDst::Fixed(outbound_dst),
    };
    let proxy = meshlet_proxy::start(config, store.clone(), listeners)
        .await
        .unwrap();
    let metrics = proxy.metrics.clone();
    follower
        .follow(store.clone(), move |u| metrics.rotation(u))
        .unwrap();
    Pod {
        proxy,
        store,
        bundle,
    }
}

async fn echo() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = conn.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// worker → mTLS → echo's proxy → the echo server; both SVIDs from the issuer.
async fn two_pods(
    api: &ApiServer,
    issuer: SocketAddr,
    dir: &std::path::Path,
    bundle: &str,
) -> (Pod, Pod) {
    let backend = echo().await;
    let server = meshed(api, issuer, dir, "echo", bundle, backend, backend).await;
    let target = server.proxy.inbound_addrs[0];
    let client = meshed(api, issuer, dir, "worker", bundle, target, target).await;
    (client, server)
}

/// A new app connection every 20 ms through the client's outbound port, until stopped; every
/// failure is kept.
struct Traffic {
    done: Arc<Mutex<(usize, Vec<String>)>>,
    task: tokio::task::JoinHandle<()>,
}

fn traffic(to: SocketAddr) -> Traffic {
    let done = Arc::new(Mutex::new((0, Vec::new())));
    let d = done.clone();
    let task = tokio::spawn(async move {
        let mut n = 0u64;
        loop {
            n += 1;
            let message = format!("request {n}\n");
            let result = tokio::time::timeout(Duration::from_secs(3), async {
                let mut conn = tokio::net::TcpStream::connect(to).await?;
                conn.write_all(message.as_bytes()).await?;
                conn.shutdown().await?;
                let mut back = Vec::new();
                conn.read_to_end(&mut back).await?;
                Ok::<_, std::io::Error>(back)
            })
            .await;
            let failure = match result {
                Ok(Ok(back)) if back == message.as_bytes() => None,
                Ok(Ok(back)) => Some(format!(
                    "{n}: answered {:?}",
                    String::from_utf8_lossy(&back)
                )),
                Ok(Err(e)) => Some(format!("{n}: {e}")),
                Err(_) => Some(format!("{n}: timed out")),
            };
            {
                let mut d = d.lock().unwrap();
                match failure {
                    None => d.0 += 1,
                    Some(f) => d.1.push(f),
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    Traffic { done, task }
}

impl Traffic {
    /// Stops, and asserts every request succeeded and there were at least `min`.
    fn all_succeeded(self, min: usize) {
        self.task.abort();
        let (ok, failures) = self.done.lock().unwrap().clone();
        assert!(
            failures.is_empty(),
            "{} failed of {}: {failures:?}",
            failures.len(),
            ok + failures.len()
        );
        assert!(ok >= min, "only {ok} requests");
    }
}

async fn admin_metrics(pod: &Pod) -> String {
    let mut conn = tokio::net::TcpStream::connect(pod.proxy.admin_addr.unwrap())
        .await
        .unwrap();
    conn.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).await.unwrap();
    text
}

fn counted(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_keeps_flowing_across_renewals_of_svids_that_live_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let api = ApiServer::start(loopback(), dir.path()).await;
    let ca = Ca::new(TD, DAY).unwrap();
    let files = write_ca(&dir.path().join("ca"), &ca, &ca.pem.cert);
    let issuer = meshlet_issuer::start(config(&api, files, Duration::from_secs(3), loopback()))
        .await
        .unwrap();
    let (client, server) = two_pods(&api, issuer.address, dir.path(), &ca.pem.cert).await;
    let flow = traffic(client.proxy.outbound_addrs[0]);
    let (c0, s0) = (client.store.generation(), server.store.generation());
    eventually("three renewals on each side", 20, async || {
        client.store.generation() >= c0 + 3 && server.store.generation() >= s0 + 3
    })
    .await;
    flow.all_succeeded(20);
    let text = admin_metrics(&client).await;
    assert!(
        counted(
            &text,
            "meshlet_identity_rotations_total{result=\"applied\"}"
        ) >= 3.0,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_issuer_is_down_the_proxy_keeps_its_svid_and_renews_when_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let api = ApiServer::start(loopback(), dir.path()).await;
    let ca = Ca::new(TD, DAY).unwrap();
    let files = write_ca(&dir.path().join("ca"), &ca, &ca.pem.cert);
    let cfg = config(&api, files, Duration::from_secs(12), loopback());
    let issuer = meshlet_issuer::start(cfg.clone()).await.unwrap();
    let (client, server) = two_pods(&api, issuer.address, dir.path(), &ca.pem.cert).await;
    let flow = traffic(client.proxy.outbound_addrs[0]);
    issuer.stop();
    let before = client.store.generation();
    eventually("a renewal that finds the issuer down", 15, async || {
        let text = admin_metrics(&client).await;
        counted(
            &text,
            "meshlet_identity_rotations_total{result=\"unavailable\"}",
        ) >= 1.0
    })
    .await;
    assert_eq!(client.store.generation(), before, "the SVID in use stays");
    let mut again = cfg;
    again.listen = issuer.address;
    let back = loop {
        match meshlet_issuer::start(again.clone()).await {
            Ok(running) => break running,
            Err(e) if e.contains("cannot listen") => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("{e}"),
        }
    };
    eventually("a renewal once the issuer is back", 10, async || {
        client.store.generation() > before
    })
    .await;
    let left = client
        .store
        .current()
        .seconds_left(std::time::SystemTime::now());
    assert!(left > 8, "a fresh SVID: {left} s left");
    flow.all_succeeded(20);
    drop((server, back));
}

/// A pod's bundle file follows the namespace's ConfigMap, as the kubelet's volume does.
fn kubelet(api: ApiServer, pods: Vec<PathBuf>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if let Some(bundle) = api.configmap("default", "meshlet-ca-bundle", "ca.crt") {
                for file in &pods {
                    if std::fs::read_to_string(file).ok().as_deref() != Some(bundle.as_str()) {
                        let dir = file.parent().unwrap();
                        write_file(dir, "ca.crt", &bundle, false).unwrap();
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

fn anchors(pod: &Pod) -> usize {
    pod.store
        .current()
        .bundles
        .anchors(TD)
        .map_or(0, |a| a.len())
}

/// True when the pod's SVID chains to `ca` alone.
fn signed_by(pod: &Pod, ca: &Ca) -> bool {
    let only = meshlet_identity::source::parse_certs(ca.pem.cert.as_bytes()).unwrap();
    let mut bundles = meshlet_identity::TrustBundles::default();
    bundles.insert(TD, only).unwrap();
    let identity = pod.store.current();
    meshlet_identity::verify::verify_peer(
        &bundles,
        &meshlet_identity::crypto_provider(),
        &identity.certified_key.cert[0],
        &[],
        rustls_pki_types::UnixTime::now(),
        meshlet_identity::Usage::Client,
    )
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_rotation_in_three_steps_fails_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let api = ApiServer::start(loopback(), dir.path()).await;
    let old = Ca::new(TD, DAY).unwrap();
    let new = Ca::new(TD, DAY).unwrap();
    let ca_dir = dir.path().join("ca");
    let files = write_ca(&ca_dir, &old, &old.pem.cert);
    let mut cfg = config(&api, files, Duration::from_secs(4), loopback());
    cfg.publish_every = Some(Duration::from_millis(200));
    let issuer = meshlet_issuer::start(cfg).await.unwrap();
    let (client, server) = two_pods(&api, issuer.address, dir.path(), &old.pem.cert).await;
    let _kubelet = kubelet(
        api.clone(),
        vec![client.bundle.clone(), server.bundle.clone()],
    );
    let flow = traffic(client.proxy.outbound_addrs[0]);

    // 1. Both roots in the bundle; the old CA still signs.
    let both = format!("{}{}", old.pem.cert, new.pem.cert);
    write_ca(&ca_dir, &old, &both);
    eventually("both roots trusted by both pods", 20, async || {
        anchors(&client) == 2 && anchors(&server) == 2
    })
    .await;
    // 2. The new CA signs; every SVID is renewed from it within a lifetime.
    write_ca(&ca_dir, &new, &both);
    eventually("both SVIDs signed by the new CA", 20, async || {
        signed_by(&client, &new) && signed_by(&server, &new)
    })
    .await;
    // 3. The old root out.
    write_ca(&ca_dir, &new, &new.pem.cert);
    eventually("only the new root trusted", 20, async || {
        anchors(&client) == 1 && anchors(&server) == 1
    })
    .await;
    assert!(signed_by(&client, &new) && !signed_by(&client, &old));
    tokio::time::sleep(Duration::from_secs(1)).await;
    flow.all_succeeded(50);
    drop(issuer);
}
