//! Calls to a Service address, as in a cluster: the node DNATs each connection to one backend
//! pod (kube-proxy's iptables mode, imitated in the lab's node namespace), often on another
//! port. Both transports must give each app connection the backend the node chose.

mod common;

use std::net::{Ipv4Addr, SocketAddr};

use common::*;
use meshlet_lab::mesh::Reply;

const WORKER: &str = "/ns/default/sa/pod-worker";
const ECHO: &str = "/ns/default/sa/echo";
const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 9, 10);

struct Cluster {
    mesh: Mesh,
    client: Pod,
    backends: Vec<Pod>,
}

/// A client pod and two backend pods, all meshed with `proxy_yaml`; the backends serve HTTP
/// on 8080 and echo on 9000; Service VIP:80 → 8080 and VIP:9000 → 9000.
fn cluster(name: &str, proxy_yaml: &str) -> Cluster {
    let mut mesh = Mesh::new(name, exe()).unwrap();
    let client = mesh.lab.add_pod("client", 1).unwrap();
    let backends = vec![
        mesh.lab.add_pod("backend-a", 21).unwrap(),
        mesh.lab.add_pod("backend-b", 22).unwrap(),
    ];
    let dir = mesh.issue(&client, WORKER).unwrap();
    mesh.init(&client, &[]).unwrap();
    mesh.start_proxy(&client, &dir, proxy_yaml).unwrap();
    for b in &backends {
        let dir = mesh.issue(b, ECHO).unwrap();
        mesh.init(b, &[]).unwrap();
        mesh.start_proxy(b, &dir, proxy_yaml).unwrap();
        mesh.start_app(b, 8080).unwrap();
        mesh.start_echo(b, 9000).unwrap();
    }
    let targets = |port| backends.iter().map(|b| (b.ip, port)).collect::<Vec<_>>();
    mesh.lab.set_service(VIP, 80, &targets(8080)).unwrap();
    mesh.lab.set_service(VIP, 9000, &targets(9000)).unwrap();
    Cluster {
        mesh,
        client,
        backends,
    }
}

/// How many of `replies` each backend answered; fails on any reply that is not a 200.
fn shares(replies: &[Reply]) -> (usize, usize) {
    let mut a = 0;
    let mut b = 0;
    for r in replies {
        assert_eq!(r.status, 200, "{}", r.body);
        if r.body.contains("hello from backend-a") {
            a += 1;
        } else if r.body.contains("hello from backend-b") {
            b += 1;
        } else {
            panic!("answered by neither backend: {}", r.body);
        }
    }
    (a, b)
}

/// A counter of a pod's proxy, from its /metrics (0 when absent).
fn counter(mesh: &Mesh, pod: &Pod, series: &str) -> u64 {
    let admin = SocketAddr::from(([127, 0, 0, 1], 15021));
    let text = mesh.get(pod, admin, &["/metrics"]).unwrap().remove(0).body;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

fn service_calls_reach_both_backends(name: &str, proxy_yaml: &str, pooled: bool) {
    let c = cluster(name, proxy_yaml);
    let svc = SocketAddr::from((VIP, 80));

    let replies = c.mesh.get_each_new(&c.client, svc, 40, &["/svc"]).unwrap();

    assert_eq!(replies.len(), 40, "every call answered");
    let streams: u64 = c
        .backends
        .iter()
        .map(|b| {
            counter(
                &c.mesh,
                b,
                r#"meshlet_pooled_streams_total{direction="inbound"}"#,
            )
        })
        .sum();
    if pooled {
        // The first call learns that the address is virtual; the others are located and ride
        // pooled connections (none falls back to a connection of its own).
        let log = std::fs::read_to_string(c.mesh.dir.join("client/proxy.log")).unwrap();
        assert!(
            streams >= 39,
            "located calls rode pooled streams: {streams} of 40; the client's log:\n{log}"
        );
    }
    let (a, b) = shares(&replies);
    // Binomial(40, 1/2): below 8 on either side has a probability of about 1e-5.
    assert!(
        a >= 8 && b >= 8,
        "balancing lost: backend-a {a}, backend-b {b}"
    );
    // A long session through the Service address, both ways.
    c.mesh
        .echo_roundtrip(&c.client, SocketAddr::from((VIP, 9000)), 16 * 1024 * 1024)
        .unwrap();
}

#[test]
fn service_calls_are_balanced_over_the_backends_with_the_pooled_transport() {
    if !root_or_skip("service_calls_are_balanced_over_the_backends_with_the_pooled_transport") {
        return;
    }
    service_calls_reach_both_backends("svcpooled", "", true);
}

#[test]
fn service_calls_are_balanced_over_the_backends_with_a_connection_each() {
    if !root_or_skip("service_calls_are_balanced_over_the_backends_with_a_connection_each") {
        return;
    }
    service_calls_reach_both_backends(
        "svcpercon",
        "outbound:\n  transport: per_connection\n",
        false,
    );
}

#[test]
fn service_calls_through_a_masquerading_node_are_balanced_too() {
    if !root_or_skip("service_calls_through_a_masquerading_node_are_balanced_too") {
        return;
    }
    // The backends see the node's address, not the client's. A stream on a pooled connection
    // dialed through the Service goes where that connection arrived, whoever the backend thinks
    // dialed it: masquerading changes nothing.
    let c = cluster("svcmasq", "");
    c.mesh.lab.masquerade_services().unwrap();
    let svc = SocketAddr::from((VIP, 80));

    let (a, b) = shares(&c.mesh.get_each_new(&c.client, svc, 40, &["/svc"]).unwrap());

    assert!(
        a >= 8 && b >= 8,
        "balancing lost: backend-a {a}, backend-b {b}"
    );
    let pooled = (0..2)
        .map(|i| {
            counter(
                &c.mesh,
                &c.backends[i],
                r#"meshlet_pooled_streams_total{direction="inbound"}"#,
            )
        })
        .sum::<u64>();
    let log = std::fs::read_to_string(c.mesh.dir.join("client/proxy.log")).unwrap();
    assert!(
        pooled >= 39,
        "calls rode pooled streams through the masquerading node: {pooled} of 40; the client's log:\n{log}"
    );
}

#[test]
fn a_backend_that_goes_away_only_takes_its_own_connections() {
    if !root_or_skip("a_backend_that_goes_away_only_takes_its_own_connections") {
        return;
    }
    let mut c = cluster("svcgone", "");
    let svc = SocketAddr::from((VIP, 80));
    let (a, b) = shares(
        &c.mesh
            .get_each_new(&c.client, svc, 20, &["/before"])
            .unwrap(),
    );
    assert!(a > 0 && b > 0, "both in use before: {a} / {b}");

    // backend-b is deleted: the endpoint leaves the Service, the pod's processes stop.
    let gone = c.backends.remove(1);
    c.mesh
        .lab
        .set_service(VIP, 80, &[(c.backends[0].ip, 8080)])
        .unwrap();
    c.mesh
        .lab
        .stop(
            &format!("proxy-{}", gone.name),
            std::time::Duration::from_secs(3),
        )
        .unwrap();
    let replies = c
        .mesh
        .get_each_new(&c.client, svc, 20, &["/after"])
        .unwrap();

    let (a, b) = shares(&replies);
    assert_eq!(
        (a, b),
        (20, 0),
        "every call answered, by the backend that is left"
    );
}

#[test]
fn a_backend_removed_from_the_service_but_still_running_gets_no_new_calls_after_seconds() {
    if !root_or_skip(
        "a_backend_removed_from_the_service_but_still_running_gets_no_new_calls_after_seconds",
    ) {
        return;
    }
    let c = cluster("svcremoved", "");
    let svc = SocketAddr::from((VIP, 80));
    let names = ["backend-a", "backend-b"];
    let round = |path: &str| {
        let replies = c.mesh.get_each_new(&c.client, svc, 15, &[path]).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        shares_of(&replies, &names)
    };
    // The client learns the Service's backends from samples of the node's choice, dialed while
    // traffic flows; calls in rounds until its samples have reached backend-b too.
    let mut before = round("/before");
    for _ in 0..10 {
        if before[1] > 0 {
            break;
        }
        before = round("/before");
    }
    assert!(before[1] > 0, "backend-b in use before: {before:?}");

    // backend-b leaves the Service (its readiness failed, or it is draining) but keeps running
    // with its pooled connections open. The app pauses for a few seconds (while it calls, newer
    // samples push the old ones out sooner).
    c.mesh
        .lab
        .set_service(VIP, 80, &[(c.backends[0].ip, 8080)])
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(6));
    let after = (0..4).fold(vec![0; 2], |sum, _| {
        sum.iter()
            .zip(round("/after"))
            .map(|(s, n)| s + n)
            .collect()
    });

    assert_eq!(after, vec![60, 0], "only the backend left gets new calls");
}

#[test]
fn the_inbound_side_never_relays_to_an_address_that_is_not_its_pods() {
    if !root_or_skip("the_inbound_side_never_relays_to_an_address_that_is_not_its_pods") {
        return;
    }
    let mut mesh = Mesh::new("forged", exe()).unwrap();
    let pooled = mesh.lab.add_pod("pooled", 1).unwrap();
    let echo = mesh.lab.add_pod("echo", 2).unwrap();
    let third = mesh.lab.add_pod("third", 3).unwrap();
    let per_conn = mesh.lab.add_pod("perconn", 4).unwrap();
    for (pod, path, yaml) in [
        (&pooled, WORKER, ""),
        (
            &per_conn,
            WORKER,
            "outbound:\n  transport: per_connection\n",
        ),
        (&echo, ECHO, ""),
    ] {
        let dir = mesh.issue(pod, path).unwrap();
        mesh.init(pod, &[]).unwrap();
        mesh.start_proxy(pod, &dir, yaml).unwrap();
    }
    mesh.start_app(&echo, 8080).unwrap();
    mesh.start_app(&third, 8080).unwrap();
    // 198.18.1.99 is the third pod's; the callers are told to reach it through the echo pod.
    let hidden = "198.18.1.99";
    let sh = |pod: &Pod, args: &[&str]| run(mesh.lab.cmd(pod, "ip").args(args)).unwrap();
    sh(
        &third,
        &["addr", "add", &format!("{hidden}/32"), "dev", "eth0"],
    );
    sh(
        &echo,
        &[
            "route",
            "add",
            &format!("{hidden}/32"),
            "via",
            &third.ip.to_string(),
        ],
    );
    for caller in [&pooled, &per_conn] {
        sh(
            caller,
            &[
                "route",
                "add",
                &format!("{hidden}/32"),
                "via",
                &echo.ip.to_string(),
            ],
        );
    }
    // Capture rules without the LOCAL match, as an older init or a hand-made rule set has:
    // only the proxy's own check stands in the way.
    run(mesh.lab.cmd(&echo, "iptables").args([
        "-t",
        "nat",
        "-I",
        "PREROUTING",
        "1",
        "-p",
        "tcp",
        "-d",
        hidden,
        "-j",
        "MESHLET_INBOUND",
    ]))
    .unwrap();
    let target: SocketAddr = format!("{hidden}:8080").parse().unwrap();

    for caller in [&pooled, &per_conn] {
        let got = mesh.get(caller, target, &["/via-echo"]);

        assert!(
            got.as_ref()
                .map_or(true, |r| r.iter().all(|r| r.status != 200)),
            "{}: the echo pod relayed to another pod: {got:?}",
            caller.name
        );
    }
    let (pooled_at, per_conn_at) = (format!("{}:", pooled.ip), format!("{}:", per_conn.ip));
    let echo_log = log_with(
        &mesh.dir.join("echo/proxy.log"),
        &["foreign_target", &pooled_at, &per_conn_at],
    );
    for caller in [&pooled, &per_conn] {
        assert!(
            echo_log.lines().any(|l| l.contains("foreign_target")
                && l.contains(hidden)
                && l.contains(&format!("{}:", caller.ip))),
            "{}'s refusal is logged with its reason: {echo_log}",
            caller.name
        );
    }
}

#[test]
fn a_backend_added_to_the_service_gets_calls_within_seconds() {
    if !root_or_skip("a_backend_added_to_the_service_gets_calls_within_seconds") {
        return;
    }
    let mut c = cluster("svcadded", "");
    let svc = SocketAddr::from((VIP, 80));
    let names = ["backend-a", "backend-b", "backend-c"];
    // Traffic flows before: the client knows the Service and its two backends.
    let before = shares_of(
        &c.mesh
            .get_each_new(&c.client, svc, 20, &["/before"])
            .unwrap(),
        &names,
    );
    assert_eq!(before[2], 0);

    let added = c.mesh.lab.add_pod("backend-c", 23).unwrap();
    let dir = c.mesh.issue(&added, ECHO).unwrap();
    c.mesh.init(&added, &[]).unwrap();
    c.mesh.start_proxy(&added, &dir, "").unwrap();
    c.mesh.start_app(&added, 8080).unwrap();
    c.backends.push(added);
    let targets: Vec<_> = c.backends.iter().map(|b| (b.ip, 8080)).collect();
    c.mesh.lab.set_service(VIP, 80, &targets).unwrap();
    // The app keeps calling, a round of connections every tenth of a second.
    let round = |path: &str| {
        let replies = c.mesh.get_each_new(&c.client, svc, 15, &[path]).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        shares_of(&replies, &names)
    };
    let started = std::time::Instant::now();
    while round("/finding")[2] == 0 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "the added backend got no call within 5 s"
        );
    }
    let after = (0..4).fold(vec![0; 3], |sum, _| {
        let r = round("/after");
        sum.iter().zip(r).map(|(s, n)| s + n).collect()
    });

    // An even share is 20 of 60; below 8 would mean a backend is left out most of the time.
    assert!(
        after.iter().all(|&n| n >= 8),
        "all three backends get calls: {after:?}"
    );
}
