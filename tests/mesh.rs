//! Meshed pods in network namespaces with `meshlet init` and `meshlet proxy` as uid 1337.

mod common;

use std::net::SocketAddr;

use common::*;

const WORKER: &str = "/ns/default/sa/pod-worker";
const ECHO: &str = "/ns/default/sa/echo";

fn addr(pod: &Pod, port: u16) -> SocketAddr {
    SocketAddr::new(pod.ip.into(), port)
}

#[test]
fn a_client_pod_reaches_a_server_pod_and_the_wire_shows_only_tls() {
    if !root_or_skip("a_client_pod_reaches_a_server_pod_and_the_wire_shows_only_tls") {
        return;
    }
    let mut mesh = Mesh::new("wire", exe()).unwrap();
    let client = mesh.lab.add_pod("client", 1).unwrap();
    let server = mesh.lab.add_pod("server", 2).unwrap();
    for (pod, path) in [(&client, WORKER), (&server, ECHO)] {
        let dir = mesh.issue(pod, path).unwrap();
        mesh.init(pod, &[]).unwrap();
        mesh.start_proxy(pod, &dir, "").unwrap();
    }
    mesh.start_app(&server, 8080).unwrap();
    mesh.start_echo(&server, 9000).unwrap();

    let capture = Capture::start(&mesh.lab, &mesh.dir).unwrap();
    let reply = mesh
        .get(&client, addr(&server, 8080), &["/hello-mesh"])
        .unwrap()
        .remove(0);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(reply.body.contains("hello from server"));
    // IPv6 goes through the mesh as well.
    let v6 = SocketAddr::new(server.ip6.into(), 8080);
    assert_eq!(
        mesh.get(&client, v6, &["/hello-v6"]).unwrap()[0].status,
        200
    );
    // A large transfer with half-close, across the namespaces.
    mesh.echo_roundtrip(&client, addr(&server, 9000), 8 * 1024 * 1024)
        .unwrap();
    let pcap = capture.finish().unwrap();

    assert!(
        contains(&pcap, b"meshlet/1"),
        "the mesh ALPN is on the wire"
    );
    assert!(
        contains(&pcap, &[0x00, 0x2b, 0x00, 0x02, 0x03, 0x04]),
        "TLS 1.3 was negotiated"
    );
    for plaintext in [
        &b"/hello-mesh"[..],
        b"/hello-v6",
        b"hello from server",
        b"x-forwarded-client-cert",
    ] {
        assert!(
            !contains(&pcap, plaintext),
            "{} crossed the wire in plaintext",
            String::from_utf8_lossy(plaintext)
        );
    }
}

#[test]
fn a_pod_without_the_mesh_is_refused_in_strict_mode_and_passes_in_permissive_mode() {
    if !root_or_skip(
        "a_pod_without_the_mesh_is_refused_in_strict_mode_and_passes_in_permissive_mode",
    ) {
        return;
    }
    let mut mesh = Mesh::new("modes", exe()).unwrap();
    let outsider = mesh.lab.add_pod("outsider", 1).unwrap();
    let strict = mesh.lab.add_pod("strict", 2).unwrap();
    let permissive = mesh.lab.add_pod("permissive", 3).unwrap();
    for (pod, extra) in [
        (&strict, ""),
        (&permissive, "inbound:\n  mode: permissive\n"),
    ] {
        let dir = mesh.issue(pod, ECHO).unwrap();
        mesh.init(pod, &[]).unwrap();
        mesh.start_proxy(pod, &dir, extra).unwrap();
        mesh.start_app(pod, 8080).unwrap();
    }
    assert!(
        mesh.get(&outsider, addr(&strict, 8080), &["/"]).is_err(),
        "strict must refuse plaintext"
    );
    let log = log_with(
        &mesh.dir.join("strict/proxy.log"),
        &["connection refused", "198.18.0.1", "plaintext"],
    );
    assert!(
        log.contains("connection refused")
            && log.contains("198.18.0.1")
            && log.contains("plaintext"),
        "{log}"
    );
    let reply = mesh
        .get(&outsider, addr(&permissive, 8080), &["/"])
        .unwrap()
        .remove(0);
    assert_eq!(reply.status, 200);
    assert!(
        !reply.body.contains("x-forwarded-client-cert"),
        "no identity for a plaintext caller"
    );
}

#[test]
fn an_mtls_destination_without_a_mesh_peer_fails_with_nothing_in_plaintext_and_auto_reaches_it() {
    if !root_or_skip("an_mtls_destination_without_a_mesh_peer_fails_with_nothing_in_plaintext_and_auto_reaches_it") {
        return;
    }
    let mut mesh = Mesh::new("nopeer", exe()).unwrap();
    let strict_client = mesh.lab.add_pod("mtls", 1).unwrap();
    let auto_client = mesh.lab.add_pod("auto", 2).unwrap();
    let plain = mesh.lab.add_pod("plain", 3).unwrap();
    mesh.start_app(&plain, 8080).unwrap();
    let mtls = "outbound:\n  destinations:\n    - cidr: 198.18.0.3/32\n      mtls: mtls\n";
    let auto = "outbound:\n  mtls: auto\n  auto_detect_timeout: 1s\n";
    for (pod, extra) in [(&strict_client, mtls), (&auto_client, auto)] {
        let dir = mesh.issue(pod, WORKER).unwrap();
        mesh.init(pod, &[]).unwrap();
        mesh.start_proxy(pod, &dir, extra).unwrap();
    }
    let capture = Capture::start(&mesh.lab, &mesh.dir).unwrap();
    assert!(mesh
        .get(&strict_client, addr(&plain, 8080), &["/must-not-leak"])
        .is_err());
    let pcap = capture.finish().unwrap();
    assert!(
        !contains(&pcap, b"/must-not-leak"),
        "application bytes were sent in plaintext"
    );
    let log = log_with(&mesh.dir.join("mtls/proxy.log"), &["mtls is required"]);
    assert!(log.contains("mtls is required"), "{log}");

    let reply = mesh
        .get(&auto_client, addr(&plain, 8080), &["/auto"])
        .unwrap()
        .remove(0);
    assert_eq!(reply.status, 200);
    let log = std::fs::read_to_string(mesh.dir.join("auto/proxy.log")).unwrap();
    assert!(log.contains("falling back to plaintext"), "{log}");
}

#[test]
fn the_demo_tells_its_story_and_leaves_nothing_behind() {
    if !root_or_skip("the_demo_tells_its_story_and_leaves_nothing_behind") {
        return;
    }
    let out = std::process::Command::new(exe())
        .arg("demo")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for step in [
        "[1/5]",
        "[2/5]",
        "[3/5]",
        "[4/5]",
        "[5/5]",
        "URI=spiffe://cluster.local/ns/default/sa/pod-worker",
        "HTTP 403",
    ] {
        assert!(stdout.contains(step), "missing {step:?} in:\n{stdout}");
    }
    let namespaces = run(std::process::Command::new("ip").args(["netns", "list"])).unwrap();
    assert!(
        !String::from_utf8_lossy(&namespaces.stdout).contains("meshlet-demo"),
        "the demo left namespaces behind"
    );
    assert!(
        !std::env::temp_dir().join("meshlet-demo").exists(),
        "the demo left files behind"
    );
}

#[test]
fn sighup_reloads_the_identity_and_sigterm_stops_the_proxy_cleanly() {
    if !root_or_skip("sighup_reloads_the_identity_and_sigterm_stops_the_proxy_cleanly") {
        return;
    }
    let mut mesh = Mesh::new("signals", exe()).unwrap();
    let pod = mesh.lab.add_pod("pod", 1).unwrap();
    let dir = mesh.issue(&pod, ECHO).unwrap();
    let log = mesh.start_proxy(&pod, &dir, "").unwrap();
    let pid = mesh.lab.pid("proxy-pod").unwrap();
    run(std::process::Command::new("kill").args(["-HUP", &pid.to_string()])).unwrap();
    Lab::wait_for(std::time::Duration::from_secs(5), || {
        let text = std::fs::read_to_string(&log)?;
        anyhow::ensure!(text.contains("identity files reloaded"), "no reload yet");
        Ok(())
    })
    .unwrap();
    let status = mesh
        .lab
        .stop("proxy-pod", std::time::Duration::from_secs(5))
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(std::fs::read_to_string(&log)
        .unwrap()
        .contains("meshlet proxy stopped"));
}
