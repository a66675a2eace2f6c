//! Shared by the end-to-end tests: root check, meshes of pods, small assertions.
#![allow(dead_code)]

pub mod flood;
pub mod liar;

use std::path::Path;
use std::process::Command;

#[allow(unused_imports)]
pub use meshlet_lab::mesh::Mesh;
#[allow(unused_imports)]
pub use meshlet_lab::netns::{contains, run, Capture, Lab, Pod};

/// Runs `work` on a thread of its own that has entered `pod`'s network namespace, in a
/// single-threaded tokio runtime: the sockets it opens are the pod's. For the attackers the
/// security tests play (an unmeshed pod's programs).
pub fn in_pod<F, Fut>(pod: &Pod, work: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let netns = format!("/var/run/netns/{}", pod.ns);
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&netns).unwrap();
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(work());
    });
}

pub fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_meshlet"))
}

/// True when the test can run. Without root it skips with a message, unless
/// MESHLET_REQUIRE_ROOT_TESTS=1, where a skip is a failure.
pub fn root_or_skip(test: &str) -> bool {
    match meshlet_lab::netns::check_privileges() {
        Ok(()) => true,
        Err(why) => {
            if std::env::var("MESHLET_REQUIRE_ROOT_TESTS").as_deref() == Ok("1") {
                panic!("{test}: MESHLET_REQUIRE_ROOT_TESTS=1 but this test cannot run: {why}");
            }
            eprintln!(
                "SKIPPED {test}: {why} (set MESHLET_REQUIRE_ROOT_TESTS=1 to make this a failure)"
            );
            false
        }
    }
}

/// `iptables-save`-style dump of the nat table with the given tool, without comments/counters.
pub fn nat_rules(lab: &Lab, pod: &Pod, save_tool: &str) -> String {
    let out = run(lab.cmd(pod, save_tool).args(["-t", "nat"])).unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            if l.starts_with(':') {
                l.split(' ').take(2).collect::<Vec<_>>().join(" ")
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A proxy's log once it holds every one of `needles`, or as it is after 10 s. A refused
/// connection is closed when its handler returns, and its log line is written just after: a
/// caller can see the close before the line is there.
pub fn log_with(path: &Path, needles: &[&str]) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        if needles.iter().all(|n| log.contains(n)) || std::time::Instant::now() > deadline {
            return log;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

pub fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

/// Runs a command in a pod and returns stdout, stderr and success.
pub fn output(mut cmd: Command) -> (String, String, bool) {
    let out = cmd.output().unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.success(),
    )
}

pub fn which_openssl() -> bool {
    meshlet_lab::netns::which("openssl").is_some()
}

/// `kubernetes-validate` (PyPI), from MESHLET_KUBERNETES_VALIDATE or the PATH. Without it the
/// test skips with a message, unless MESHLET_REQUIRE_MANIFEST_TESTS=1 (set by CI).
pub fn validator_or_skip(test: &str) -> Option<std::path::PathBuf> {
    let found = std::env::var_os("MESHLET_KUBERNETES_VALIDATE")
        .map(std::path::PathBuf::from)
        .filter(|p| p.exists())
        .or_else(|| meshlet_lab::netns::which("kubernetes-validate"));
    if found.is_none() {
        let why = "kubernetes-validate is not installed (./test.sh installs it from PyPI)";
        if std::env::var("MESHLET_REQUIRE_MANIFEST_TESTS").as_deref() == Ok("1") {
            panic!("{test}: MESHLET_REQUIRE_MANIFEST_TESTS=1 but {why}");
        }
        eprintln!("SKIPPED {test}: {why}");
    }
    found
}

/// The oldest Kubernetes meshlet supports (native sidecars); the newest is the validator's
/// default.
pub const OLDEST_KUBERNETES: &str = "1.29.0";

/// Validates manifests strictly (an unknown field is an error) against the oldest supported
/// Kubernetes and the newest the validator knows. Err holds the validator's report.
pub fn kubernetes_validate(validator: &Path, files: &[&Path]) -> Result<(), String> {
    for version in [Some(OLDEST_KUBERNETES), None] {
        let mut cmd = Command::new(validator);
        cmd.args(["--strict", "--quiet"]);
        if let Some(v) = version {
            cmd.args(["-k", v]);
        }
        let out = cmd.args(files).output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "kubernetes-validate {} failed:\n{}{}",
                version.unwrap_or("(newest)"),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    Ok(())
}

/// Runs `meshlet` with `args`, `stdin` as input: (stdout, stderr, exit code).
pub fn meshlet_with_input(args: &[&str], stdin: &str) -> (String, String, i32) {
    use std::io::Write;
    let mut child = Command::new(exe())
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.code().unwrap_or(-1),
    )
}

/// How many of `replies` each named backend answered; fails on a reply from none of them.
pub fn shares_of(replies: &[meshlet_lab::mesh::Reply], names: &[&str]) -> Vec<usize> {
    let mut counts = vec![0; names.len()];
    for r in replies {
        assert_eq!(r.status, 200, "{}", r.body);
        let i = names
            .iter()
            .position(|n| r.body.contains(&format!("hello from {n}\n")))
            .unwrap_or_else(|| panic!("answered by none of {names:?}: {}", r.body));
        counts[i] += 1;
    }
    counts
}
