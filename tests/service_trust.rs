//! A member of the mesh cannot steer another pod's connections (README "Calls to a Service
//! address", security model). The attacker is an unmeshed pod holding a valid SVID of another
//! identity, answering meshlet's pooled transport with lies: a `421` naming the victim's
//! address as where its connection "really" arrived, and locate answers naming the victim's
//! other port. A peer may refuse a connection, never move it.

mod common;

use std::net::SocketAddr;

use common::liar::{self, Lies};
use common::*;

const WORKER: &str = "/ns/default/sa/pod-worker";
const ECHO: &str = "/ns/default/sa/echo";
const OTHER: &str = "/ns/default/sa/other";

struct Scene {
    mesh: Mesh,
    worker: Pod,
    echo: Pod,
    evil: Pod,
    seen: liar::Seen,
}

/// worker (meshed with `worker_yaml`) and echo (meshed; HTTP apps on 8080 and 9000), and the
/// unmeshed evil pod with an SVID of `sa/other` lying on 8080.
fn scene(name: &str, worker_yaml: impl FnOnce(&Pod) -> String) -> Scene {
    let mut mesh = Mesh::new(name, exe()).unwrap();
    let worker = mesh.lab.add_pod("worker", 1).unwrap();
    let echo = mesh.lab.add_pod("echo", 2).unwrap();
    let evil = mesh.lab.add_pod("evil", 5).unwrap();
    let dir = mesh.issue(&echo, ECHO).unwrap();
    mesh.init(&echo, &[]).unwrap();
    mesh.start_proxy(&echo, &dir, "").unwrap();
    mesh.start_app(&echo, 8080).unwrap();
    mesh.start_app(&echo, 9000).unwrap();
    let dir = mesh.issue(&worker, WORKER).unwrap();
    mesh.init(&worker, &[]).unwrap();
    let yaml = worker_yaml(&echo);
    mesh.start_proxy(&worker, &dir, &yaml).unwrap();
    let evil_id = mesh.issue(&evil, OTHER).unwrap();
    let seen = liar::start(
        &evil,
        &evil_id,
        8080,
        Lies {
            reached: vec![SocketAddr::from((echo.ip, 8080))],
            located: SocketAddr::from((echo.ip, 9000)),
        },
    );
    Scene {
        mesh,
        worker,
        echo,
        evil,
        seen,
    }
}

fn no_pins(_: &Pod) -> String {
    String::new()
}

fn echo_pinned(echo: &Pod) -> String {
    format!(
        "outbound:\n  destinations:\n    - cidr: {}/32\n      mtls: mtls\n      identities: [spiffe://cluster.local{ECHO}]\n",
        echo.ip
    )
}

/// Calls echo `n` times, each over a new connection, and asserts echo answered each one.
fn echo_answers_every_call(s: &Scene, n: usize, path: &str) {
    let echo = SocketAddr::from((s.echo.ip, 8080));
    let replies = s.mesh.get_each_new(&s.worker, echo, n, &[path]).unwrap();
    assert_eq!(replies.len(), n, "every call to echo answered: {replies:?}");
    for r in &replies {
        assert!(
            r.status == 200 && r.body.contains("hello from echo"),
            "a call to echo was not answered by echo: {r:?}; the liar saw {:?}",
            s.seen.all()
        );
    }
}

fn evil_never_saw_a_stream_for(s: &Scene, victim: &Pod) {
    let leaked: Vec<_> = s
        .seen
        .all()
        .into_iter()
        .filter(|e| e.starts_with("connect ") && e.contains(&victim.ip.to_string()))
        .collect();
    assert!(
        leaked.is_empty(),
        "the liar was handed streams meant for {}: {leaked:?}",
        victim.name
    );
}

fn a_421_does_not_hand_the_victims_calls_to_the_liar(name: &str, yaml: fn(&Pod) -> String) {
    let s = scene(name, yaml);
    let evil = SocketAddr::from((s.evil.ip, 8080));

    // worker calls evil first, before it has any connection to echo.
    let _ = s.mesh.get_each_new(&s.worker, evil, 2, &["/for-evil"]);

    assert!(
        s.seen.all().iter().any(|e| e.starts_with("connect ")),
        "the scene is as intended: the liar answered a pooled stream: {:?}",
        s.seen.all()
    );
    echo_answers_every_call(&s, 5, "/for-echo");
    evil_never_saw_a_stream_for(&s, &s.echo);
}

#[test]
fn a_peer_that_claims_to_have_reached_another_pod_is_never_used_for_that_pod() {
    if !root_or_skip("a_peer_that_claims_to_have_reached_another_pod_is_never_used_for_that_pod") {
        return;
    }
    a_421_does_not_hand_the_victims_calls_to_the_liar("hijack", no_pins);
}

#[test]
fn a_lie_about_a_pinned_destination_does_not_lock_it_out() {
    if !root_or_skip("a_lie_about_a_pinned_destination_does_not_lock_it_out") {
        return;
    }
    a_421_does_not_hand_the_victims_calls_to_the_liar("hijackpin", echo_pinned);
}

#[test]
fn a_locate_answer_cannot_send_a_callers_bytes_to_another_pods_port() {
    if !root_or_skip("a_locate_answer_cannot_send_a_callers_bytes_to_another_pods_port") {
        return;
    }
    let s = scene("steer", no_pins);
    // worker already holds a pooled connection to echo, as any busy client does.
    echo_answers_every_call(&s, 1, "/warm");
    let evil = SocketAddr::from((s.evil.ip, 8080));

    // Until worker has located evil once (a loaded machine may time out a first handshake).
    let mut replies = Vec::new();
    for _ in 0..5 {
        replies.extend(
            s.mesh
                .get_each_new(&s.worker, evil, 3, &["/for-evil"])
                .unwrap_or_default(),
        );
        if s.seen.all().iter().any(|e| e == "locate") {
            break;
        }
    }

    assert!(
        s.seen.all().iter().any(|e| e == "locate"),
        "the scene is as intended: worker located evil: {:?}",
        s.seen.all()
    );
    for r in &replies {
        assert!(
            !r.body.contains("hello from echo"),
            "bytes meant for evil reached echo's port 9000, authenticated as worker: {r:?}"
        );
    }
    let app_9000 = std::fs::read_to_string(s.mesh.dir.join("echo-app-9000.log")).unwrap();
    assert!(
        !app_9000.contains("/for-evil"),
        "echo's app on 9000 saw a request meant for evil: {app_9000}"
    );
    echo_answers_every_call(&s, 3, "/after");
}

#[test]
fn a_service_backend_that_lies_about_where_it_was_reached_gets_no_more_than_its_share() {
    if !root_or_skip(
        "a_service_backend_that_lies_about_where_it_was_reached_gets_no_more_than_its_share",
    ) {
        return;
    }
    // Two honest backends of echo and the liar behind one Service address. Every answer of
    // the liar claims another address: echo-a's, then addresses where no pod is.
    let mut mesh = Mesh::new("svclies", exe()).unwrap();
    let worker = mesh.lab.add_pod("worker", 1).unwrap();
    let backends = [
        mesh.lab.add_pod("echo-a", 21).unwrap(),
        mesh.lab.add_pod("echo-b", 22).unwrap(),
    ];
    let evil = mesh.lab.add_pod("evil", 5).unwrap();
    for b in &backends {
        let dir = mesh.issue(b, ECHO).unwrap();
        mesh.init(b, &[]).unwrap();
        mesh.start_proxy(b, &dir, "").unwrap();
        mesh.start_app(b, 8080).unwrap();
    }
    let dir = mesh.issue(&worker, WORKER).unwrap();
    mesh.init(&worker, &[]).unwrap();
    mesh.start_proxy(&worker, &dir, "").unwrap();
    let evil_id = mesh.issue(&evil, OTHER).unwrap();
    let mut claims = vec![SocketAddr::from((backends[0].ip, 8080))];
    claims.extend((100..110).map(|i| SocketAddr::from(([198, 18, 0, i], 8080))));
    let seen = liar::start(
        &evil,
        &evil_id,
        8080,
        Lies {
            reached: claims,
            located: SocketAddr::from((backends[0].ip, 8080)),
        },
    );
    let vip = std::net::Ipv4Addr::new(198, 18, 9, 30);
    let svc = SocketAddr::from((vip, 80));
    // The Service is in use, then the liar becomes one of its backends.
    let honest = [backends[0].ip, backends[1].ip].map(|ip| (ip, 8080));
    mesh.lab.set_service(vip, 80, &honest).unwrap();
    mesh.get_each_new(&worker, svc, 3, &["/warm"]).unwrap();
    let targets = [backends[0].ip, backends[1].ip, evil.ip].map(|ip| (ip, 8080));
    mesh.lab.set_service(vip, 80, &targets).unwrap();

    // The app calls the Service in rounds of new connections, as a busy client does, until
    // the liar has taken some (the client samples a Service's backends a few times a second).
    let round = || {
        let replies = mesh.get_each_new(&worker, svc, 15, &["/svc"]).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        shares_of(&replies, &["echo-a", "echo-b", "liar"])
    };
    let started = std::time::Instant::now();
    while round()[2] == 0 && started.elapsed() < std::time::Duration::from_secs(10) {}
    // And for a few seconds more, while the client fills its samples of the Service.
    let found = std::time::Instant::now();
    while found.elapsed() < std::time::Duration::from_secs(3) {
        round();
    }
    let got = (0..6).fold(vec![0; 3], |sum, _| {
        sum.iter().zip(round()).map(|(s, n)| s + n).collect()
    });

    let log = std::fs::read_to_string(mesh.dir.join("worker/proxy.log")).unwrap();
    assert!(
        seen.all().iter().any(|e| e.starts_with("connect ")),
        "the scene is as intended: the liar took streams through the Service: {:?}",
        seen.all()
    );
    // Its share is one backend's of three (30 of 90): its many names count as one, and the
    // name of echo-a's pod proves nothing for a certificate that is not echo-a's. (Were each
    // name a backend of its own, the liar's share would be most of the calls.)
    assert!(
        got[2] <= 40,
        "the liar's lies won it more than its share: {got:?}; the worker's log:\n{log}"
    );
    assert!(
        got[0] >= 15 && got[1] >= 15,
        "the honest backends kept their shares: {got:?}"
    );
}
