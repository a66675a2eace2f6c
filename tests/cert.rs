//! `meshlet cert`: the files it writes, that openssl and meshlet accept them, and inspection.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::exe;
use meshlet_identity::{crypto_provider, Identity, IdentityFiles};

fn meshlet(args: &[&str]) -> std::process::Output {
    Command::new(exe()).args(args).output().unwrap()
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn ca_and_issue_write_svids_that_openssl_and_meshlet_accept() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, app) = (dir.path().join("ca"), dir.path().join("app"));
    let out = meshlet(&[
        "cert",
        "ca",
        "--trust-domain",
        "cluster.local",
        "--out",
        ca.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mode(&ca.join("ca.key")), 0o600);
    let out = meshlet(&[
        "cert",
        "issue",
        "--ca",
        ca.to_str().unwrap(),
        "--spiffe-id",
        "spiffe://cluster.local/ns/default/sa/app",
        "--dns",
        "app.default.svc",
        "--ttl",
        "2h",
        "--out",
        app.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mode(&app.join("tls.key")), 0o600);

    if common::which_openssl() {
        let verify = Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(app.join("ca.crt"))
            .arg(app.join("tls.crt"))
            .output()
            .unwrap();
        assert!(
            verify.status.success(),
            "openssl verify: {}",
            String::from_utf8_lossy(&verify.stdout)
        );
    } else if std::env::var("MESHLET_REQUIRE_ROOT_TESTS").as_deref() == Ok("1") {
        panic!("openssl is needed for this check (apt-get install -y openssl)");
    }

    let identity = Identity::load(
        &IdentityFiles::in_dir(&app),
        "cluster.local",
        &crypto_provider(),
    )
    .unwrap();
    assert_eq!(
        identity.id.as_str(),
        "spiffe://cluster.local/ns/default/sa/app"
    );
    let left = identity.seconds_left(std::time::SystemTime::now());
    assert!((7000..=7200).contains(&left), "--ttl 2h gave {left}s");
}

#[test]
fn inspect_tells_an_svid_from_a_ca_in_text_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, app) = (dir.path().join("ca"), dir.path().join("app"));
    assert!(meshlet(&[
        "cert",
        "ca",
        "--trust-domain",
        "prod.example",
        "--out",
        ca.to_str().unwrap()
    ])
    .status
    .success());
    assert!(meshlet(&[
        "cert",
        "issue",
        "--ca",
        ca.to_str().unwrap(),
        "--spiffe-id",
        "spiffe://prod.example/api",
        "--out",
        app.to_str().unwrap()
    ])
    .status
    .success());

    let text = String::from_utf8(
        meshlet(&["cert", "inspect", app.join("tls.crt").to_str().unwrap()]).stdout,
    )
    .unwrap();
    assert!(
        text.contains("SPIFFE ID:   spiffe://prod.example/api"),
        "{text}"
    );
    assert!(text.contains("ECDSA P-256"), "{text}");
    assert!(text.contains("valid SVID:  yes"), "{text}");

    let json = meshlet(&[
        "cert",
        "inspect",
        "--json",
        ca.join("ca.crt").to_str().unwrap(),
    ]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["is_ca"], true);
    assert_eq!(v["valid_svid"], false);
    assert!(v["svid_problem"].as_str().unwrap().contains("CA"), "{v}");
    assert!(v["seconds_left"].as_i64().unwrap() > 86400);
}

#[test]
fn a_malformed_spiffe_id_is_refused_with_exit_2_and_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    assert!(meshlet(&[
        "cert",
        "ca",
        "--trust-domain",
        "cluster.local",
        "--out",
        ca.to_str().unwrap()
    ])
    .status
    .success());
    for bad in [
        "spiffe://cluster.local/a//b",
        "https://cluster.local/x",
        "spiffe://cluster.local/a/../b",
    ] {
        let out = meshlet(&[
            "cert",
            "issue",
            "--ca",
            ca.to_str().unwrap(),
            "--spiffe-id",
            bad,
            "--out",
            dir.path().join("x").to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("--spiffe-id") && err.contains("not a valid SPIFFE ID"),
            "{err}"
        );
    }
    let out = meshlet(&[
        "cert",
        "ca",
        "--trust-domain",
        "Bad_Domain/x",
        "--out",
        dir.path().join("y").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_wrong_proxy_configuration_is_refused_with_file_key_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("meshlet.yaml");
    std::fs::write(&file, "inbound:\n  mode: lenient\n").unwrap();
    let out = meshlet(&["proxy", "--config", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(file.to_str().unwrap())
            && err.contains("inbound.mode")
            && err.contains("lenient"),
        "{err}"
    );
    let out = Command::new(exe())
        .args(["proxy"])
        .env("MESHLET_OUTBOUND_MTLS", "sometimes")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("outbound.mtls"));
    // Valid configuration but no certificate files: a runtime failure naming the file.
    let out = meshlet(&["proxy", "--identity-cert", "/nonexistent/tls.crt"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/tls.crt"));
}

#[test]
fn the_files_written_are_named_as_they_are_whatever_the_out_directory_ends_with() {
    let dir = tempfile::tempdir().unwrap();
    let ca = format!("{}/ca/", dir.path().display());
    let app = format!("{}/app/", dir.path().display());

    let made = meshlet(&[
        "cert",
        "ca",
        "--trust-domain",
        "cluster.local",
        "--out",
        &ca,
    ]);
    let issued = meshlet(&[
        "cert",
        "issue",
        "--ca",
        &ca,
        "--spiffe-id",
        "spiffe://cluster.local/ns/a/sa/b",
        "--out",
        &app,
    ]);

    for out in [made, issued] {
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{text}");
        assert!(!text.replace("spiffe://", "").contains("//"), "{text}");
    }
}

#[test]
fn durations_read_the_same_in_every_command() {
    use meshlet_identity::inspect::human;
    assert_eq!(human(7020), "1h57m");
    assert_eq!(human(86_280), "23h58m");
    assert_eq!(human(90_000), "1d1h");
    assert_eq!(human(117), "1m57s");
}
