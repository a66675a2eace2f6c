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
            reached: SocketAddr::from((echo.ip, 8080)),
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
