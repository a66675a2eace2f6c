//! `meshlet issuer` and meshed pods as processes in network namespaces (needs root): the
//! sidecars ask the issuer pod for their SVIDs over the network, traffic between them keeps
//! flowing across renewals of SVIDs that live seconds, and an unmeshed pod flooding the issuer
//! gets 429s while the issuer stays within its Deployment's 64Mi. The API server is the
//! stand-in of issuer/tests/support/api_server.rs, in a pod of its own.

#[path = "../issuer/tests/support/api_server.rs"]
mod api_server;
mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api_server::{ApiServer, Token};
use common::*;
use meshlet_defaults::PROXY_UID;
use meshlet_identity::issue::{write_file, Ca};

/// The pods, the issuer process, and the stand-in API server.
struct Cluster {
    mesh: Mesh,
    api: ApiServer,
    ca: Ca,
    issuer: SocketAddr,
    issuer_pod: Pod,
    ttl: String,
    /// How many times the issuer was started (each start logs to its own file).
    starts: usize,
    pods: Vec<Pod>,
}

fn cluster(purpose: &str, ttl: &str) -> Cluster {
    let mut mesh = Mesh::new(purpose, exe()).unwrap();
    let api_pod = mesh.lab.add_pod("api", 1).unwrap();
    let issuer_pod = mesh.lab.add_pod("issuer", 2).unwrap();
    let echo = mesh.lab.add_pod("echo", 3).unwrap();
    let worker = mesh.lab.add_pod("worker", 4).unwrap();
    let attacker = mesh.lab.add_pod("attacker", 5).unwrap();

    let (tx, rx) = std::sync::mpsc::channel();
    let (listen, dir) = (SocketAddr::from((api_pod.ip, 6443)), mesh.dir.clone());
    in_pod(&api_pod, move || async move {
        tx.send(ApiServer::start(listen, &dir).await).unwrap();
        std::future::pending::<()>().await;
    });
    let api = rx.recv_timeout(Duration::from_secs(10)).unwrap();

    let ca = Ca::new("cluster.local", Duration::from_secs(86400)).unwrap();
    let issuer = SocketAddr::from((issuer_pod.ip, 8443));
    let mut c = Cluster {
        mesh,
        api,
        ca,
        issuer,
        issuer_pod,
        ttl: ttl.to_owned(),
        starts: 0,
        pods: vec![echo, worker, attacker],
    };
    c.write_ca(&c.ca, &c.ca.pem.cert);
    c.start_issuer();
    c
}

impl Cluster {
    /// Starts (or starts again) `meshlet issuer` in its pod, publishing the bundle every second.
    fn start_issuer(&mut self) {
        self.starts += 1;
        let mut cmd = self.mesh.lab.cmd(&self.issuer_pod, exe());
        cmd.args([
            "issuer",
            "--listen",
            &self.issuer.to_string(),
            "--ttl",
            &self.ttl,
        ])
        .args([
            "--name",
            &self.issuer_pod.ip.to_string(),
            "--publish-every",
            "1s",
        ])
        .arg("--ca-dir")
        .arg(self.mesh.dir.join("ca"))
        .args(["--api-server", &self.api.url()])
        .arg("--api-token")
        .arg(&self.api.token_file)
        .arg("--api-ca")
        .arg(&self.api.ca_file);
        let log = self.mesh.dir.join(format!("issuer-{}.log", self.starts));
        self.mesh
            .lab
            .spawn_until("issuer", cmd, &log, "meshlet issuer listening")
            .unwrap();
    }

    fn stop_issuer(&mut self) {
        self.mesh
            .lab
            .stop("issuer", Duration::from_secs(2))
            .unwrap();
    }

    /// Writes the CA directory the issuer follows: the signing pair and the bundle.
    fn write_ca(&self, signing: &Ca, bundle: &str) {
        let dir = self.mesh.dir.join("ca");
        write_file(&dir, "ca.crt", &signing.pem.cert, false).unwrap();
        write_file(&dir, "ca.key", &signing.pem.key, true).unwrap();
        write_file(&dir, "bundle.crt", bundle, false).unwrap();
    }
    /// Meshes `pod`: its token and bundle where the kubelet would put them (readable by the
    /// proxy's uid), the capture rules, and a proxy that asks the issuer.
    fn mesh_pod(&mut self, pod: &Pod) {
        let token = self
            .api
            .mint(Token::for_pod("default", &pod.name, &pod.name, "meshlet"));
        let dir = self.mesh.dir.join(&pod.name).join("identity");
        write_file(&dir, "token", &token, false).unwrap();
        write_file(&dir, "ca.crt", &self.ca.pem.cert, false).unwrap();
        for entry in ["", "token", "ca.crt"] {
            std::os::unix::fs::chown(dir.join(entry), Some(PROXY_UID), Some(PROXY_UID)).unwrap();
        }
        let identity = format!(
            "identity:\n  issuer: https://{}\n  token: {}\n  bundle: {}\n",
            self.issuer,
            dir.join("token").display(),
            dir.join("ca.crt").display()
        );
        self.mesh.start_proxy_with(pod, &identity, "").unwrap();
        self.mesh.init(pod, &[]).unwrap();
    }
}

fn renewals(log: &Path) -> usize {
    count(
        &std::fs::read_to_string(log).unwrap_or_default(),
        "identity rotated",
    )
}

#[test]
fn meshed_pods_get_their_svids_from_the_issuer_pod_and_keep_talking_across_renewals() {
    if !root_or_skip(
        "meshed_pods_get_their_svids_from_the_issuer_pod_and_keep_talking_across_renewals",
    ) {
        return;
    }
    let mut c = cluster("issuer", "4s");
    let (echo, worker) = (c.pods[0].clone(), c.pods[1].clone());
    c.mesh.start_app(&echo, 8080).unwrap();
    c.mesh_pod(&echo);
    c.mesh_pod(&worker);
    let target = SocketAddr::from((echo.ip, 8080));
    // Each round a new connection: a new handshake with whatever SVIDs are current.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let logs = [
        c.mesh.dir.join("echo").join("proxy.log"),
        c.mesh.dir.join("worker").join("proxy.log"),
    ];
    let mut rounds = 0;
    while logs.iter().any(|l| renewals(l) < 3) {
        assert!(
            std::time::Instant::now() < deadline,
            "fewer than three renewals in a minute"
        );
        let replies = c.mesh.get_each_new(&worker, target, 5, &["/"]).unwrap();
        assert!(
            replies.iter().all(|r| r.status == 200),
            "round {rounds}: {:?}",
            replies.iter().map(|r| r.status).collect::<Vec<_>>()
        );
        rounds += 1;
    }
    let issued = count(
        &std::fs::read_to_string(c.mesh.dir.join("issuer-1.log")).unwrap(),
        "SVID issued",
    );
    assert!(issued >= 8, "{issued} SVIDs issued");
    let log = std::fs::read_to_string(&logs[1]).unwrap();
    assert!(
        log.contains("spiffe://cluster.local/ns/default/sa/worker"),
        "{log}"
    );
}

/// VmHWM of a process: the most it has been resident.
fn peak_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn an_unmeshed_pod_flooding_the_issuer_gets_429s_and_the_issuer_stays_within_64mi() {
    if !root_or_skip(
        "an_unmeshed_pod_flooding_the_issuer_gets_429s_and_the_issuer_stays_within_64mi",
    ) {
        return;
    }
    let c = cluster("issuerflood", "1h");
    let attacker = c.pods[2].clone();
    // The attacker holds a real pod's token (its own service account's): the reviews are the
    // expensive part, and a busy API server makes them slow.
    let token = c
        .api
        .mint(Token::for_pod("default", "attacker", "attacker", "meshlet"));
    c.api.slow_reviews(Duration::from_millis(500));
    let bundle = c.ca.pem.cert.clone();
    let issuer = c.issuer;
    let (tx, rx) = std::sync::mpsc::channel();
    in_pod(&attacker, move || async move {
        let anchors = meshlet_identity::source::parse_certs(bundle.as_bytes()).unwrap();
        let client = Arc::new(
            meshlet_identity::https::Client::new(
                format!("https://{issuer}").parse().unwrap(),
                &anchors,
            )
            .unwrap(),
        );
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        let mut calls = Vec::new();
        for _ in 0..400 {
            let (client, token, csr) = (client.clone(), token.clone(), csr.clone());
            calls.push(tokio::spawn(async move {
                let request = http::Request::post(meshlet_defaults::issuer::SVID_PATH)
                    .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
                    .body(bytes::Bytes::from(csr))
                    .unwrap();
                client.send(request, 1 << 16).await.map(|(s, _)| s.as_u16())
            }));
        }
        let mut statuses = Vec::new();
        for call in calls {
            statuses.push(call.await.unwrap());
        }
        tx.send(statuses).unwrap();
    });
    let statuses = rx.recv_timeout(Duration::from_secs(60)).unwrap();
    let answered: Vec<u16> = statuses
        .iter()
        .filter_map(|s| s.as_ref().ok().copied())
        .collect();
    assert!(answered.contains(&429), "{answered:?}");
    assert!(
        answered.iter().all(|s| *s == 200 || *s == 429),
        "{answered:?}"
    );
    let pid = c.mesh.lab.pid("issuer").unwrap();
    let peak = peak_kib(pid);
    assert!(peak < 64 * 1024, "the issuer peaked at {peak} KiB");
    eprintln!("issuer peak after the flood: {peak} KiB");
    // And it still serves.
    c.api.slow_reviews(Duration::ZERO);
    let mut c = c;
    let echo = c.pods[0].clone();
    c.mesh_pod(&echo);
}

/// HTTP requests from inside `pod` (its own sockets, captured like the app's) to `target`, a new
/// connection every 50 ms until stopped; every answer that is not a 200 is kept.
struct Traffic {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<(usize, Vec<String>)>>,
}

fn traffic(pod: &Pod, target: SocketAddr) -> Traffic {
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new((0, Vec::new())));
    let (stop2, seen2) = (stop.clone(), seen.clone());
    in_pod(pod, move || async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut n = 0;
        while !stop2.load(Ordering::Relaxed) {
            n += 1;
            let answer = tokio::time::timeout(Duration::from_secs(5), async {
                let mut conn = tokio::net::TcpStream::connect(target).await?;
                conn.write_all(b"GET / HTTP/1.0\r\nHost: echo\r\n\r\n")
                    .await?;
                let mut text = Vec::new();
                conn.read_to_end(&mut text).await?;
                Ok::<_, std::io::Error>(String::from_utf8_lossy(&text).into_owned())
            })
            .await;
            let failure = match answer {
                Ok(Ok(text))
                    if text.starts_with("HTTP/1.1 200") || text.starts_with("HTTP/1.0 200") =>
                {
                    None
                }
                Ok(Ok(text)) => Some(format!("{n}: {}", text.lines().next().unwrap_or(""))),
                Ok(Err(e)) => Some(format!("{n}: {e}")),
                Err(_) => Some(format!("{n}: timed out")),
            };
            {
                let mut seen = seen2.lock().unwrap();
                match failure {
                    None => seen.0 += 1,
                    Some(f) => seen.1.push(f),
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    Traffic { stop, seen }
}

impl Traffic {
    fn all_succeeded(self, min: usize) {
        self.stop.store(true, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(300));
        let (ok, failures) = self.seen.lock().unwrap().clone();
        assert!(
            failures.is_empty(),
            "{} of {} failed: {failures:?}",
            failures.len(),
            ok + failures.len()
        );
        assert!(ok >= min, "only {ok} requests");
    }
}

fn log_of(c: &Cluster, pod: &Pod) -> String {
    std::fs::read_to_string(c.mesh.dir.join(&pod.name).join("proxy.log")).unwrap_or_default()
}

fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn while_the_issuer_pod_is_down_meshed_pods_keep_their_svids_and_renew_once_it_is_back() {
    if !root_or_skip(
        "while_the_issuer_pod_is_down_meshed_pods_keep_their_svids_and_renew_once_it_is_back",
    ) {
        return;
    }
    let mut c = cluster("issuerdown", "10s");
    let (echo, worker) = (c.pods[0].clone(), c.pods[1].clone());
    c.mesh.start_app(&echo, 8080).unwrap();
    c.mesh_pod(&echo);
    c.mesh_pod(&worker);
    let flow = traffic(&worker, SocketAddr::from((echo.ip, 8080)));
    c.stop_issuer();
    wait_until("a renewal that finds the issuer down", 15, || {
        log_of(&c, &worker).contains("SVID not renewed; keeping the current one")
    });
    let before = count(&log_of(&c, &worker), "identity rotated");
    c.start_issuer();
    wait_until("a renewal once the issuer is back", 15, || {
        count(&log_of(&c, &worker), "identity rotated") > before
    });
    flow.all_succeeded(40);
}

#[test]
fn a_ca_rotation_in_three_steps_between_pods_fails_no_request() {
    if !root_or_skip("a_ca_rotation_in_three_steps_between_pods_fails_no_request") {
        return;
    }
    let mut c = cluster("issuerrotate", "4s");
    let (echo, worker) = (c.pods[0].clone(), c.pods[1].clone());
    c.mesh.start_app(&echo, 8080).unwrap();
    c.mesh_pod(&echo);
    c.mesh_pod(&worker);
    // The kubelet's part: each pod's bundle file follows the namespace's ConfigMap.
    let stop = Arc::new(AtomicBool::new(false));
    let files: Vec<std::path::PathBuf> = [&echo, &worker]
        .iter()
        .map(|p| c.mesh.dir.join(&p.name).join("identity"))
        .collect();
    let (api, stop2) = (c.api.clone(), stop.clone());
    let kubelet = std::thread::spawn(move || {
        while !stop2.load(Ordering::Relaxed) {
            if let Some(bundle) = api.configmap("default", "meshlet-ca-bundle", "ca.crt") {
                for dir in &files {
                    let file = dir.join("ca.crt");
                    if std::fs::read_to_string(&file).ok().as_deref() != Some(bundle.as_str()) {
                        write_file(dir, "ca.crt", &bundle, false).unwrap();
                        std::os::unix::fs::chown(&file, Some(PROXY_UID), Some(PROXY_UID)).unwrap();
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let bundle_in = |pod: &Pod| {
        std::fs::read_to_string(c.mesh.dir.join(&pod.name).join("identity/ca.crt"))
            .unwrap_or_default()
    };
    let flow = traffic(&worker, SocketAddr::from((echo.ip, 8080)));
    let (old, new) = (
        c.ca.pem.cert.clone(),
        Ca::new("cluster.local", Duration::from_secs(86400)).unwrap(),
    );
    let both = format!("{old}{}", new.pem.cert);
    // 1. Both roots; the old CA signs.
    let old_ca = Ca::from_pem(&c.ca.pem.cert, &c.ca.pem.key).unwrap();
    c.write_ca(&old_ca, &both);
    wait_until("both roots in both pods", 20, || {
        bundle_in(&echo) == both && bundle_in(&worker) == both
    });
    std::thread::sleep(Duration::from_secs(2));
    // 2. The new CA signs; within a lifetime (4 s) every SVID is renewed from it.
    c.write_ca(&new, &both);
    std::thread::sleep(Duration::from_secs(6));
    // 3. The old root out: peers trust the new CA alone, so an SVID of the old one would fail.
    c.write_ca(&new, &new.pem.cert);
    wait_until("only the new root in both pods", 20, || {
        bundle_in(&echo) == new.pem.cert && bundle_in(&worker) == new.pem.cert
    });
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    kubelet.join().unwrap();
    flow.all_succeeded(100);
    for pod in [&echo, &worker] {
        let log = log_of(&c, pod);
        assert!(
            log.contains("why=\"file change\""),
            "{}: no renewal for the new bundle:\n{log}",
            pod.name
        );
    }
}
