//! `meshlet webhook` over HTTPS, as the API server calls it: a real AdmissionReview in, the
//! response's JSONPatch applied with a JSON-patch library, the resulting Pod validated as
//! Kubernetes. The serving certificate is replaced on disk and picked up without a restart.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use serde_json::{json, Value};

const HOST: &str = "meshlet-webhook.meshlet-system.svc";

struct Webhook {
    child: Child,
    port: u16,
    /// What it logged so far.
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn meshlet(args: &[&str]) {
    let (_, err, code) = meshlet_with_input(args, "");
    assert_eq!(code, 0, "meshlet {args:?}: {err}");
}

/// A CA in `dir/NAME-ca` and a serving certificate for the webhook's Service name in `out`.
fn issue(dir: &Path, name: &str, out: &Path) {
    let ca = dir.join(format!("{name}-ca"));
    meshlet(&[
        "cert",
        "ca",
        "--trust-domain",
        "cluster.local",
        "--out",
        ca.to_str().unwrap(),
    ]);
    meshlet(&[
        "cert",
        "issue",
        "--ca",
        ca.to_str().unwrap(),
        "--spiffe-id",
        "spiffe://cluster.local/ns/meshlet-system/sa/meshlet-webhook",
        "--dns",
        HOST,
        "--out",
        out.to_str().unwrap(),
    ]);
}

fn start(dir: &Path) -> Webhook {
    let srv = dir.join("serving");
    let mut child = Command::new(exe())
        .args([
            "webhook",
            "--listen",
            "127.0.0.1:0",
            "--image",
            "meshlet:test",
        ])
        .arg("--cert")
        .arg(srv.join("tls.crt"))
        .arg("--key")
        .arg(srv.join("tls.key"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let port = loop {
        let line = lines.next().expect("the webhook exited").unwrap();
        if let Some(addr) = line.split("address=").nth(1) {
            let addr = addr.split_whitespace().next().unwrap();
            break addr.rsplit(':').next().unwrap().parse().unwrap();
        }
    };
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = log.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            keep.lock().unwrap().push(line);
        }
    });
    Webhook { child, port, log }
}

/// POSTs `body` to the webhook trusting `ca`; (HTTP status, body).
fn post(w: &Webhook, ca: &Path, path: &str, body: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", "--max-time", "5", "--cacert"])
        .arg(ca)
        .arg("--resolve")
        .arg(format!("{HOST}:{}:127.0.0.1", w.port))
        .args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            body,
        ])
        .arg(format!("https://{HOST}:{}{path}", w.port))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (status.trim().parse().unwrap_or(0), body.to_owned())
}

fn review(pod: &Value) -> String {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "e911857d-c318-11e8-bbad-025000000001",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "namespace": "shop",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
            "dryRun": false,
        }
    })
    .to_string()
}

fn shop_pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "cart-7d4b9c-",
            "namespace": "shop",
            "labels": {"app": "cart"},
            "annotations": {"meshlet.io/exclude-outbound-ports": "5432"},
        },
        "spec": {
            "serviceAccountName": "cart",
            "containers": [{
                "name": "cart",
                "image": "cart:1.4",
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 2},
                "livenessProbe": {"tcpSocket": {"port": 8080}},
            }],
        }
    })
}

#[test]
fn an_admission_review_gets_a_patch_that_makes_a_valid_injected_pod() {
    let dir = tempfile::tempdir().unwrap();
    issue(dir.path(), "first", &dir.path().join("serving"));
    let w = start(dir.path());
    let ca = dir.path().join("first-ca/ca.crt");

    let (status, body) = post(&w, &ca, "/inject", &review(&shop_pod()));
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    let r = &answer["response"];
    assert_eq!(r["uid"], "e911857d-c318-11e8-bbad-025000000001");
    assert_eq!(r["allowed"], true);
    assert_eq!(r["patchType"], "JSONPatch");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(r["patch"].as_str().unwrap())
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
    let mut pod = shop_pod();
    json_patch::patch(&mut pod, &patch).unwrap();

    let spec = &pod["spec"];
    assert_eq!(spec["initContainers"][0]["name"], "meshlet-init");
    assert_eq!(
        spec["initContainers"][0]["args"],
        json!(["init", "--exclude-outbound-ports", "5432"])
    );
    assert_eq!(spec["initContainers"][1]["name"], "meshlet");
    assert_eq!(spec["initContainers"][1]["image"], "meshlet:test");
    assert_eq!(spec["volumes"][0]["secret"]["secretName"], "cart-svid");
    assert_eq!(
        spec["containers"][0]["readinessProbe"],
        json!({"httpGet": {"path": "/app-health/cart/readiness", "port": 15021}, "periodSeconds": 2})
    );

    if let Some(validator) = validator_or_skip("webhook_patch_validates") {
        let mut pod = pod.clone();
        pod["metadata"]["name"] = json!("cart-7d4b9c-x2x9q");
        let file = dir.path().join("pod.json");
        std::fs::write(&file, pod.to_string()).unwrap();
        kubernetes_validate(&validator, &[&file]).unwrap();
    }

    // The patched pod comes back (reinvocation): no second injection.
    let (_, body) = post(&w, &ca, "/inject", &review(&pod));
    let again: Value = serde_json::from_str(&body).unwrap();
    assert!(again["response"].get("patch").is_none(), "{body}");

    // Not an AdmissionReview: 400, not a crash.
    assert_eq!(post(&w, &ca, "/inject", "{\"kind\": \"Pod\"}").0, 400);
    assert_eq!(post(&w, &ca, "/inject", "not json").0, 400);
}

#[test]
fn a_new_serving_certificate_on_disk_is_served_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let serving = dir.path().join("serving");
    issue(dir.path(), "old", &serving);
    let w = start(dir.path());
    let (old_ca, new_ca) = (
        dir.path().join("old-ca/ca.crt"),
        dir.path().join("new-ca/ca.crt"),
    );
    assert_eq!(
        post(&w, &old_ca, "/healthz", "").0,
        404,
        "healthz is GET only"
    );

    // As a Secret volume does it: the new pair is written aside, then swapped in by rename.
    let staged = dir.path().join("staged");
    issue(dir.path(), "new", &staged);
    for f in ["tls.key", "tls.crt"] {
        std::fs::rename(staged.join(f), serving.join(f)).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, _) = post(&w, &new_ca, "/inject", &review(&shop_pod()));
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was not picked up"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        post(&w, &old_ca, "/inject", &review(&shop_pod())).0,
        0,
        "old CA no longer matches"
    );
}

/// The webhook's peak resident memory so far (VmHWM), in KiB.
fn peak_kib(w: &Webhook) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", w.child.id())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// A review whose Pod carries `filler` as an annotation value, or as a JSON array.
fn big_review(filler: Value) -> String {
    let mut pod = shop_pod();
    pod["metadata"]["annotations"]["filler"] = filler;
    review(&pod)
}

/// POSTs each body in its own curl, all at once; their HTTP statuses.
fn post_all_at_once(w: &Webhook, ca: &Path, bodies: &[String]) -> Vec<u16> {
    let dir = tempfile::tempdir().unwrap();
    let children: Vec<_> = bodies
        .iter()
        .enumerate()
        .map(|(i, body)| {
            let file = dir.path().join(format!("{i}.json"));
            std::fs::write(&file, body).unwrap();
            Command::new("curl")
                .args([
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--max-time",
                    "20",
                ])
                .arg("--cacert")
                .arg(ca)
                .arg("--resolve")
                .arg(format!("{HOST}:{}:127.0.0.1", w.port))
                .args(["-H", "Content-Type: application/json", "--data-binary"])
                .arg(format!("@{}", file.display()))
                .arg(format!("https://{HOST}:{}/inject", w.port))
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .unwrap_or(0)
        })
        .collect()
}

#[test]
fn a_burst_of_maximum_size_reviews_fits_the_shipped_memory_limit() {
    let dir = tempfile::tempdir().unwrap();
    issue(dir.path(), "first", &dir.path().join("serving"));
    let w = start(dir.path());
    let ca = dir.path().join("first-ca/ca.crt");
    // Dense JSON (a value every two bytes, 16 times its size once parsed) just under the body
    // cap, and a Pod as large as the API server can send (1.5 MiB of annotation).
    let zeros = big_review(Value::Array(vec![json!(0); 900_000]));
    let large_pod = big_review(json!("x".repeat(1_500_000)));
    let mut bodies = vec![zeros; 12];
    bodies.extend(vec![large_pod; 12]);

    let statuses = post_all_at_once(&w, &ca, &bodies);
    let peak = peak_kib(&w);

    println!(
        "peak resident memory after 24 concurrent maximum-size reviews: {} MiB",
        peak / 1024
    );
    // Refused: 413 when counted, 503 when the body budget is spent (the connection may be
    // closed before curl reads the answer: 0).
    assert!(
        statuses[..12]
            .iter()
            .all(|&s| s == 413 || s == 503 || s == 0),
        "dense JSON is never parsed: {statuses:?}"
    );
    assert!(
        statuses[12..]
            .iter()
            .all(|&s| s == 200 || s == 503 || s == 0),
        "the large Pods are reviewed or told to retry: {statuses:?}"
    );
    assert!(statuses[12..].contains(&200), "{statuses:?}");
    // deploy/webhook.yaml limits the webhook to 64Mi.
    assert!(peak < 48 * 1024, "peak {} MiB", peak / 1024);
    let (status, _) = post(&w, &ca, "/inject", &review(&shop_pod()));
    assert_eq!(status, 200, "still serving");
}

/// Opens `n` TLS connections that send `partial` and never finish; how many are still open
/// after `after`.
fn still_open_after(
    w: &Webhook,
    ca: &Path,
    n: usize,
    partial: &'static [u8],
    after: Duration,
) -> usize {
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in meshlet_identity::source::parse_certs(&std::fs::read(ca).unwrap()).unwrap() {
        roots.add(cert).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let port = w.port;
    rt.block_on(async move {
        let mut tasks = Vec::new();
        for _ in 0..n {
            let connector = connector.clone();
            tasks.push(tokio::spawn(async move {
                let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .unwrap();
                let name = rustls_pki_types::ServerName::try_from(HOST).unwrap();
                let mut tls = connector.connect(name, tcp).await.unwrap();
                tls.write_all(partial).await.unwrap();
                let mut buf = [0u8; 512];
                // Open until the server closes it, or `after` passes.
                tokio::time::timeout(after, async {
                    while let Ok(n) = tls.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                    }
                })
                .await
                .is_err()
            }));
        }
        let mut open = 0;
        for t in tasks {
            open += usize::from(t.await.unwrap());
        }
        open
    })
}

#[test]
fn unfinished_headers_and_stalled_bodies_do_not_hold_connections() {
    let dir = tempfile::tempdir().unwrap();
    issue(dir.path(), "first", &dir.path().join("serving"));
    let w = start(dir.path());
    let ca = dir.path().join("first-ca/ca.crt");

    let headers = still_open_after(
        &w,
        &ca,
        50,
        b"POST /inject HTTP/1.1\r\nHost: x\r\n",
        Duration::from_secs(12),
    );
    let bodies = still_open_after(
        &w,
        &ca,
        30,
        b"POST /inject HTTP/1.1\r\nHost: x\r\nContent-Length: 1500000\r\n\r\n{\"apiVersion\":",
        Duration::from_secs(15),
    );

    assert_eq!(headers, 0, "connections with unfinished headers still open");
    assert_eq!(bodies, 0, "connections with stalled bodies still open");
}

#[test]
fn every_decision_is_logged_with_the_pod_and_the_request_uid() {
    let dir = tempfile::tempdir().unwrap();
    issue(dir.path(), "first", &dir.path().join("serving"));
    let w = start(dir.path());
    let ca = dir.path().join("first-ca/ca.crt");
    let mut opted_out = shop_pod();
    opted_out["metadata"]["annotations"]["meshlet.io/inject"] = json!("false");

    let (injected, _) = post(&w, &ca, "/inject", &review(&shop_pod()));
    let (left, _) = post(&w, &ca, "/inject", &review(&opted_out));
    std::thread::sleep(Duration::from_millis(200));

    assert_eq!((injected, left), (200, 200));
    let log = w.log.lock().unwrap().join("\n");
    for decision in ["sidecar injected", "left as it is"] {
        assert!(
            log.lines().any(|l| l.contains(decision)
                && l.contains("namespace=shop")
                && l.contains("generate_name=cart-7d4b9c-")
                && l.contains("uid=e911857d-c318-11e8-bbad-025000000001")),
            "{decision}: {log}"
        );
    }
}
