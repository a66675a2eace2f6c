//! The kubelet's probes of a meshed app in strict mode: the kubelet, on the node, probes the
//! proxy's admin port; the proxy runs the app's original probe over loopback and answers with
//! its result. The kubelet's plaintext request to the app port itself is refused. And `meshlet
//! check` inside the pod tells whether the capture rules are in and the proxy is ready.

mod common;

use std::net::Ipv4Addr;

use common::*;

const APP_PORT: u16 = 8080;

const PROBES: &str = "admin:
  app_probes:
    app/readiness: {port: 8080, probe: {httpGet: {path: /ready, port: http}, timeoutSeconds: 2}}
    app/liveness: {port: 8080, probe: {tcpSocket: {port: 8080}}}
    app/startup: {port: 8080, probe: {httpGet: {path: /status/503, port: 8080}}}
    grpc/readiness: {port: 8080, probe: {grpc: {port: 8080}}}
";

/// What the kubelet gets for GET http://ip:port/path from the node: the status, 0 when the
/// connection is refused or closed without an answer.
fn kubelet_get(lab: &Lab, ip: Ipv4Addr, port: u16, path: &str) -> u16 {
    let out = lab
        .node_cmd("curl")
        .unwrap()
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
        ])
        .arg(format!("http://{ip}:{port}{path}"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

#[test]
fn the_kubelet_probes_the_app_through_the_admin_port_and_strict_mode_stays_strict() {
    if !root_or_skip("probes") {
        return;
    }
    let mut mesh = Mesh::new("probe", exe()).unwrap();
    let pod = mesh.lab.add_pod("app", 1).unwrap();
    let id = mesh.issue(&pod, "/ns/default/sa/app").unwrap();
    mesh.init(&pod, &[]).unwrap();
    mesh.start_proxy(&pod, &id, PROBES).unwrap();
    mesh.start_app(&pod, APP_PORT).unwrap();
    let health =
        |lab: &Lab, kind: &str| kubelet_get(lab, pod.ip, 15021, &format!("/app-health/app/{kind}"));

    // App up: the HTTP, TCP and gRPC probes pass; an HTTP probe the app answers with 503 fails.
    assert_eq!(health(&mesh.lab, "readiness"), 200);
    assert_eq!(health(&mesh.lab, "liveness"), 200);
    assert_eq!(health(&mesh.lab, "startup"), 503);
    assert_eq!(health(&mesh.lab, "unknown"), 404);
    let grpc = |lab: &Lab| kubelet_get(lab, pod.ip, 15021, "/app-health/grpc/readiness");
    assert_eq!(grpc(&mesh.lab), 200);
    // The kubelet's own plaintext probe of the app port is refused in strict mode.
    assert_eq!(kubelet_get(&mesh.lab, pod.ip, APP_PORT, "/ready"), 0);

    // App down: all fail.
    mesh.lab
        .stop(
            &format!("app-app-{APP_PORT}"),
            std::time::Duration::from_secs(2),
        )
        .unwrap();
    assert_eq!(health(&mesh.lab, "readiness"), 503);
    assert_eq!(health(&mesh.lab, "liveness"), 503);
    assert_eq!(grpc(&mesh.lab), 503);
}

#[test]
fn another_pod_flooding_the_admin_port_cannot_fail_the_kubelets_probes() {
    if !root_or_skip("another_pod_flooding_the_admin_port_cannot_fail_the_kubelets_probes") {
        return;
    }
    let mut mesh = Mesh::new("adminflood", exe()).unwrap();
    let pod = mesh.lab.add_pod("app", 1).unwrap();
    let evil = mesh.lab.add_pod("evil", 5).unwrap();
    let id = mesh.issue(&pod, "/ns/default/sa/app").unwrap();
    mesh.init(&pod, &[]).unwrap();
    mesh.start_proxy(&pod, &id, PROBES).unwrap();
    mesh.start_app(&pod, APP_PORT).unwrap();
    let admin = std::net::SocketAddr::from((pod.ip, 15021));

    let _flood = flood::start(&evil, admin, 300);
    let passed = (0..20)
        .filter(|_| {
            kubelet_get(&mesh.lab, pod.ip, 15021, "/app-health/app/liveness") == 200
                && kubelet_get(&mesh.lab, pod.ip, 15021, "/ready") == 200
        })
        .count();

    assert_eq!(passed, 20, "the kubelet's probes during the flood");
}

#[test]
fn meshlet_check_passes_in_a_meshed_pod_and_names_what_is_missing_otherwise() {
    if !root_or_skip("check") {
        return;
    }
    let mut mesh = Mesh::new("check", exe()).unwrap();
    let meshed = mesh.lab.add_pod("meshed", 1).unwrap();
    let bare = mesh.lab.add_pod("bare", 2).unwrap();
    for pod in [&meshed, &bare] {
        let id = mesh
            .issue(pod, &format!("/ns/default/sa/{}", pod.name))
            .unwrap();
        mesh.start_proxy(pod, &id, "").unwrap();
    }
    mesh.init(&meshed, &[]).unwrap();
    let check_with = |pod: &Pod, extra: &[&str]| {
        let mut cmd = mesh.lab.cmd_as(pod, 1337, exe());
        cmd.arg("check").args(extra);
        output(cmd)
    };
    let check = |pod: &Pod| check_with(pod, &[]);

    let (out, _, ok) = check(&meshed);
    assert!(ok, "{out}");
    assert!(out.contains("[ok]   proxy"), "{out}");
    assert!(out.contains("[ok]   capture"), "{out}");
    assert!(
        out.contains("spiffe://cluster.local/ns/default/sa/meshed from files ("),
        "{out}"
    );

    // The lab issues SVIDs for an hour: asking for more fails the identity check alone.
    let (out, err, ok) = check_with(&meshed, &["--min-validity", "2h"]);
    assert!(!ok);
    assert!(out.contains("[FAIL] identity"), "{out}");
    assert!(out.contains("not being renewed"), "{out}");
    assert!(err.contains("1 check(s) failed"), "{err}");

    let (out, err, ok) = check(&bare);
    assert!(!ok);
    assert!(out.contains("[FAIL] capture"), "{out}");
    assert!(out.contains("meshlet-init"), "{out}");
    assert!(err.contains("1 check(s) failed"), "{err}");
}
