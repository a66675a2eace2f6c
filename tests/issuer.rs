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
use std::sync::Arc;
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
    let ca_dir = mesh.dir.join("ca");
    write_file(&ca_dir, "ca.crt", &ca.pem.cert, false).unwrap();
    write_file(&ca_dir, "ca.key", &ca.pem.key, true).unwrap();
    write_file(&ca_dir, "bundle.crt", &ca.pem.cert, false).unwrap();
    let issuer = SocketAddr::from((issuer_pod.ip, 8443));
    let mut cmd = mesh.lab.cmd(&issuer_pod, exe());
    cmd.args(["issuer", "--listen", &issuer.to_string(), "--ttl", ttl])
        .args(["--name", &issuer_pod.ip.to_string()])
        .arg("--ca-dir")
        .arg(&ca_dir)
        .args(["--api-server", &api.url()])
        .arg("--api-token")
        .arg(&api.token_file)
        .arg("--api-ca")
        .arg(&api.ca_file);
    let log = mesh.dir.join("issuer.log");
    mesh.lab
        .spawn_until("issuer", cmd, &log, "meshlet issuer listening")
        .unwrap();
    Cluster {
        mesh,
        api,
        ca,
        issuer,
        pods: vec![echo, worker, attacker],
    }
}

impl Cluster {
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
        &std::fs::read_to_string(c.mesh.dir.join("issuer.log")).unwrap(),
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
