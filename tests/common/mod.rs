//! Shared by the end-to-end tests: root check, meshes of pods, small assertions.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

#[allow(unused_imports)]
pub use meshlet_lab::mesh::Mesh;
#[allow(unused_imports)]
pub use meshlet_lab::netns::{contains, run, Capture, Lab, Pod};

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
