//! The tutorial's Cilium mutual-authentication scenario, replayed with meshlet in network
//! namespaces with the policies of examples/kubernetes/cilium-mutual-auth/ (their ConfigMaps).

mod common;

use std::net::SocketAddr;

use common::*;

/// The section at `key:` of the meshlet configuration that an example manifest's ConfigMap
/// holds (its `meshlet.yaml`); the identity paths are the harness's.
fn section(file: &str, key: &str) -> String {
    let path = format!(
        "{}/examples/kubernetes/cilium-mutual-auth/{file}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap();
    let config: Vec<&str> = text
        .lines()
        .skip_while(|l| l.trim() != "meshlet.yaml: |")
        .skip(1)
        .take_while(|l| l.starts_with("    "))
        .map(|l| &l[4..])
        .collect();
    let section: Vec<&str> = config
        .iter()
        .skip_while(|l| !l.starts_with(&format!("{key}:")))
        .enumerate()
        .take_while(|(i, l)| *i == 0 || l.starts_with(' '))
        .map(|(_, l)| *l)
        .collect();
    assert!(!section.is_empty(), "{path}: its ConfigMap has no {key}");
    section.join("\n") + "\n"
}

#[test]
fn the_tutorials_mutual_auth_policy_holds_request_by_request() {
    if !root_or_skip("the_tutorials_mutual_auth_policy_holds_request_by_request") {
        return;
    }
    let mut mesh = Mesh::new("policy", exe()).unwrap();
    let worker = mesh.lab.add_pod("worker", 1).unwrap();
    let echo = mesh.lab.add_pod("echo", 2).unwrap();
    let other = mesh.lab.add_pod("other", 3).unwrap();
    let outsider = mesh.lab.add_pod("outsider", 4).unwrap();
    let pods = [
        (
            &worker,
            "/ns/default/sa/pod-worker",
            section("pod-worker.yaml", "outbound"),
        ),
        (
            &echo,
            "/ns/default/sa/echo",
            section("echo.yaml", "inbound"),
        ),
        (&other, "/ns/default/sa/other", String::new()),
    ];
    for (pod, id, extra) in pods {
        let dir = mesh.issue(pod, id).unwrap();
        mesh.init(pod, &[]).unwrap();
        mesh.start_proxy(pod, &dir, &extra).unwrap();
    }
    mesh.start_app(&echo, 8080).unwrap();
    let target = SocketAddr::new(echo.ip.into(), 8080);

    // pod-worker GET /headers → 200, and the app sees the caller's SPIFFE ID.
    let ok = mesh.get(&worker, target, &["/headers"]).unwrap().remove(0);
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert!(
        ok.body.contains("header x-forwarded-client-cert: By=spiffe://cluster.local/ns/default/sa/echo;URI=spiffe://cluster.local/ns/default/sa/pod-worker"),
        "{}",
        ok.body
    );

    // GET /headers-1 and POST /headers → 403 Access denied; the app never sees them.
    let denied = mesh
        .get(&worker, target, &["/headers-1"])
        .unwrap()
        .remove(0);
    assert_eq!((denied.status, denied.body.trim()), (403, "Access denied"));
    let post = mesh
        .request(&worker, target, "POST", &[], &["/headers"])
        .unwrap()
        .remove(0);
    assert_eq!((post.status, post.body.trim()), (403, "Access denied"));

    // An allowed and a refused request on one keep-alive connection behave independently.
    let mixed = mesh
        .get(&worker, target, &["/headers", "/headers-1", "/headers"])
        .unwrap();
    assert_eq!(
        mixed.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![200, 403, 200]
    );

    // A forged x-forwarded-client-cert never reaches the app.
    let forged = "x-forwarded-client-cert: By=spiffe://cluster.local/ns/default/sa/echo;URI=spiffe://cluster.local/ns/kube-system/sa/admin";
    let reply = mesh
        .request(&worker, target, "GET", &[forged], &["/headers"])
        .unwrap()
        .remove(0);
    assert_eq!(reply.status, 200);
    assert!(!reply.body.contains("kube-system"), "{}", reply.body);
    assert_eq!(
        reply.body.matches("x-forwarded-client-cert").count(),
        1,
        "{}",
        reply.body
    );

    // Path tricks: normalized before matching, and the app receives what was matched.
    let dotted = mesh
        .get(&worker, target, &["/public/../headers"])
        .unwrap()
        .remove(0);
    assert_eq!(dotted.status, 200);
    assert!(
        dotted.body.contains("request: GET /headers\n"),
        "{}",
        dotted.body
    );
    assert_eq!(
        mesh.get(&worker, target, &["/headers/..%2fadmin"]).unwrap()[0].status,
        400
    );
    assert_eq!(
        mesh.get(&worker, target, &["/headers/../admin"]).unwrap()[0].status,
        403
    );

    // Another identity, and a pod without the mesh, are refused outright.
    assert!(
        mesh.get(&other, target, &["/headers"]).is_err(),
        "another identity must be refused"
    );
    assert!(
        mesh.get(&outsider, target, &["/headers"]).is_err(),
        "a pod without the mesh must be refused"
    );

    let log = log_with(
        &mesh.dir.join("echo/proxy.log"),
        &[
            "request refused",
            "/headers-1",
            "connection refused",
            "sa/other",
        ],
    );
    assert!(
        log.contains("request refused")
            && log.contains("/headers-1")
            && log.contains("sa/pod-worker"),
        "{log}"
    );
    assert!(
        log.contains("connection refused") && log.contains("sa/other"),
        "{log}"
    );

    let metrics = mesh
        .get(&echo, "127.0.0.1:15021".parse().unwrap(), &["/metrics"])
        .unwrap()
        .remove(0)
        .body;
    let denied_line = metrics
        .lines()
        .find(|l| {
            l.starts_with(
                r#"meshlet_http_requests_total{port="8080",decision="denied",reason="http_rule"}"#,
            )
        })
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(denied_line.ends_with(" 4"), "{denied_line}");
}
