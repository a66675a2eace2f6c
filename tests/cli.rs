//! `meshlet proxy` as a process: JSON logs, worker threads, readiness, and SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::exe;

fn threads(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Threads:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// A directory holding a CA and an SVID for `spiffe://cluster.local/ns/t/sa/cli`.
fn identity_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let out = |sub: &str| dir.path().join(sub).to_str().unwrap().to_owned();
    let ok = |args: &[&str]| {
        assert!(Command::new(exe())
            .args(args)
            .output()
            .unwrap()
            .status
            .success())
    };
    ok(&[
        "cert",
        "ca",
        "--trust-domain",
        "cluster.local",
        "--out",
        &out("ca"),
    ]);
    ok(&[
        "cert",
        "issue",
        "--ca",
        &out("ca"),
        "--spiffe-id",
        "spiffe://cluster.local/ns/t/sa/cli",
        "--out",
        &out("id"),
    ]);
    dir
}

/// A loopback port nothing listens on right now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// `meshlet proxy` with the identity in `dir`, its listeners on free ports.
fn proxy(dir: &tempfile::TempDir, admin: &str) -> Command {
    let id = |file: &str| dir.path().join("id").join(file);
    let mut cmd = Command::new(exe());
    cmd.args(["proxy", "--admin-address", admin])
        .args(["--inbound-port", &free_port().to_string()])
        .args(["--outbound-port", &free_port().to_string()])
        .arg("--identity-cert")
        .arg(id("tls.crt"))
        .arg("--identity-key")
        .arg(id("tls.key"))
        .arg("--identity-bundle")
        .arg(id("ca.crt"));
    cmd
}

#[test]
fn the_proxy_logs_json_runs_the_configured_workers_and_exits_cleanly_on_sigterm() {
    let dir = identity_dir();
    let mut child = proxy(&dir, "127.0.0.1:0")
        .args(["--log-format", "json", "--workers", "2"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let ready = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.contains("meshlet proxy ready"))
        .expect("a ready line");
    let event: serde_json::Value =
        serde_json::from_str(&ready).unwrap_or_else(|e| panic!("not JSON ({e}): {ready}"));
    assert_eq!(event["level"], "INFO");
    assert_eq!(event["identity"], "spiffe://cluster.local/ns/t/sa/cli");
    // Two runtime workers plus the main thread (and the file watcher's).
    assert!(threads(child.id()) >= 3, "threads: {}", threads(child.id()));

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the proxy did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(
        rest.iter().any(|l| l.contains("meshlet proxy stopped")),
        "{rest:?}"
    );
}

#[test]
fn wait_ready_returns_once_the_proxy_is_ready_and_fails_when_it_never_is() {
    let dir = identity_dir();
    let admin = format!("127.0.0.1:{}", free_port());
    // The hook starts before the proxy, as a classic sidecar's postStart may.
    let waiter = Command::new(exe())
        .args(["wait-ready", "--admin", &admin, "--timeout", "30s"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let mut child = proxy(&dir, &admin).stderr(Stdio::null()).spawn().unwrap();
    let waited = waiter.wait_with_output().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        waited.status.success(),
        "{}",
        String::from_utf8_lossy(&waited.stderr)
    );

    let started = Instant::now();
    let never = Command::new(exe())
        .args(["wait-ready", "--admin", &admin, "--timeout", "1s"])
        .output()
        .unwrap();
    assert_eq!(never.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&never.stderr).contains("not ready within 1s"),
        "{}",
        String::from_utf8_lossy(&never.stderr)
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn the_demo_app_as_pid_1_exits_promptly_on_sigterm() {
    if !common::root_or_skip("the_demo_app_as_pid_1_exits_promptly_on_sigterm") {
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // A new PID namespace, as in a container: the app is its PID 1.
    let mut unshare = Command::new("unshare")
        .args(["--pid", "--fork", "--"])
        .arg(exe())
        .args(["demo-app", "serve", "--name", "pid1", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(unshare.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(line.contains("listening"), "{line}");
    let children =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", unshare.id())).unwrap();
    let app: u32 = children.split_whitespace().next().unwrap().parse().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{app}/status")).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("NSpid:") && l.ends_with("\t1")),
        "the app is PID 1 in its namespace: {status}"
    );

    let started = Instant::now();
    assert!(Command::new("kill")
        .args(["-TERM", &app.to_string()])
        .status()
        .unwrap()
        .success());
    let exited = loop {
        if let Some(status) = unshare.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > Duration::from_secs(5) {
            let _ = Command::new("kill")
                .args(["-KILL", &app.to_string()])
                .status();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };

    let status = exited.expect("the app exited within 5 s of SIGTERM");
    assert!(status.success(), "{status}");
}
