//! A rollout mixes releases: pods of the previous release and of this one must keep talking in
//! both directions, through a Service address and pod to pod. The previous release's binary is
//! built from git (`.ci/run` builds the commit named in `.ci/previous-release`) and named by
//! MESHLET_PREVIOUS_BIN; without it the test skips, unless MESHLET_REQUIRE_ROLLOUT_TESTS=1.
//! CI builds it beside the suite: MESHLET_PREVIOUS_BIN_WAIT (seconds) says how long the test
//! may wait for the binary to appear.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use common::*;

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 9, 20);

fn previous_or_skip(test: &str) -> Option<PathBuf> {
    let named = std::env::var_os("MESHLET_PREVIOUS_BIN").map(PathBuf::from);
    let wait = std::env::var("MESHLET_PREVIOUS_BIN_WAIT")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(std::time::Duration::ZERO, std::time::Duration::from_secs);
    let deadline = std::time::Instant::now() + wait;
    while named.as_ref().is_some_and(|p| !p.exists()) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    let bin = named.filter(|p| p.exists());
    if bin.is_none() {
        let why = "MESHLET_PREVIOUS_BIN does not name the previous release's meshlet binary";
        if std::env::var("MESHLET_REQUIRE_ROLLOUT_TESTS").as_deref() == Ok("1") {
            panic!("{test}: MESHLET_REQUIRE_ROLLOUT_TESTS=1 but {why}");
        }
        eprintln!("SKIPPED {test}: {why}");
    }
    bin
}

#[test]
fn pods_of_the_previous_release_and_of_this_one_talk_both_ways_during_a_rollout() {
    let test = "pods_of_the_previous_release_and_of_this_one_talk_both_ways_during_a_rollout";
    if !root_or_skip(test) {
        return;
    }
    let Some(previous) = previous_or_skip(test) else {
        return;
    };
    let current = exe().to_owned();
    let mut mesh = Mesh::new("rollout", &current).unwrap();
    let mut pods = Vec::new();
    for (name, index, bin) in [
        ("client-old", 1, &previous),
        ("client-new", 2, &current),
        ("backend-old", 21, &previous),
        ("backend-new", 22, &current),
    ] {
        let pod = mesh.lab.add_pod(name, index).unwrap();
        let path = if name.starts_with("client") {
            "/ns/default/sa/client"
        } else {
            "/ns/default/sa/backend"
        };
        let dir = mesh.issue(&pod, path).unwrap();
        mesh.exe = bin.clone();
        mesh.init(&pod, &[]).unwrap();
        mesh.start_proxy(&pod, &dir, "").unwrap();
        mesh.exe = current.clone();
        if name.starts_with("backend") {
            mesh.start_app(&pod, 8080).unwrap();
        }
        pods.push(pod);
    }
    let backends: Vec<_> = pods[2..].iter().map(|b| (b.ip, 8080)).collect();
    mesh.lab.set_service(VIP, 80, &backends).unwrap();

    let names = ["backend-old", "backend-new"];
    for client in &pods[..2] {
        for target in [
            SocketAddr::from((VIP, 80)),
            SocketAddr::from((pods[2].ip, 8080)),
            SocketAddr::from((pods[3].ip, 8080)),
        ] {
            // Every call answered, by one of the backends (shares_of fails otherwise).
            let round = || {
                let replies = mesh
                    .get_each_new(client, target, 20, &["/rollout"])
                    .unwrap_or_else(|e| panic!("{} → {target}: {e}", client.name));
                assert_eq!(replies.len(), 20, "{} → {target}", client.name);
                shares_of(&replies, &names)
            };
            let mut shares = round();
            if target.ip() == VIP {
                // The client learns the Service's backends from samples of the node's choice,
                // dialed while traffic flows: the first round's can all have reached one
                // backend (tests/service.rs). Calls in rounds until both releases answered.
                for _ in 0..10 {
                    if shares.iter().all(|&n| n > 0) {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    shares = round().iter().zip(&shares).map(|(a, b)| a + b).collect();
                }
                assert!(
                    shares.iter().all(|&n| n > 0),
                    "{} → the Service reaches both releases: {shares:?}",
                    client.name
                );
            }
        }
    }
}
