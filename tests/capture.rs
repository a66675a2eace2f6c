//! `meshlet init` in real network namespaces: the rules it writes, idempotence, clean-up,
//! both backends, and where connections really land.

mod common;

use common::*;

#[test]
fn init_writes_commented_rules_in_own_chains() {
    if !root_or_skip("init_writes_commented_rules_in_own_chains") {
        return;
    }
    let mut lab = Lab::new("rules").unwrap();
    let pod = lab.add_pod("app", 1).unwrap();
    run(lab.cmd(&pod, exe()).args(["init", "--backend", "nft"])).unwrap();
    let rules = nat_rules(&lab, &pod, "iptables-nft-save");
    for chain in [
        "MESHLET_INBOUND",
        "MESHLET_IN_REDIRECT",
        "MESHLET_OUTPUT",
        "MESHLET_REDIRECT",
    ] {
        assert!(
            rules.contains(&format!(":{chain} -")),
            "{chain} missing:\n{rules}"
        );
    }
    assert_eq!(count(&rules, "-j MESHLET_INBOUND"), 1, "{rules}");
    assert_eq!(count(&rules, "-j MESHLET_OUTPUT"), 1, "{rules}");
    assert!(rules.contains("--uid-owner 1337"), "{rules}");
    assert!(
        rules.contains("--to-ports 15006") && rules.contains("--to-ports 15001"),
        "{rules}"
    );
    for line in rules.lines().filter(|l| l.starts_with("-A ")) {
        assert!(
            line.contains("--comment \"meshlet: "),
            "rule without a comment: {line}"
        );
    }
    // The pod has a global IPv6 address, so --ipv6 auto programs IPv6 too.
    let v6 = nat_rules(&lab, &pod, "ip6tables-nft-save");
    assert_eq!(count(&v6, "-j MESHLET_OUTPUT"), 1, "{v6}");
}

#[test]
fn init_twice_leaves_exactly_one_current_rule_set() {
    if !root_or_skip("init_twice_leaves_exactly_one_current_rule_set") {
        return;
    }
    let mut lab = Lab::new("twice").unwrap();
    let pod = lab.add_pod("app", 1).unwrap();
    let init = |args: &[&str]| run(lab.cmd(&pod, exe()).arg("init").args(args)).unwrap();
    init(&[]);
    let first = nat_rules(&lab, &pod, "iptables-save");
    init(&[]);
    assert_eq!(
        nat_rules(&lab, &pod, "iptables-save"),
        first,
        "same flags twice must give the same rules"
    );
    init(&["--exclude-inbound-ports", "22", "--proxy-uid", "2000"]);
    let changed = nat_rules(&lab, &pod, "iptables-save");
    assert_eq!(count(&changed, "-j MESHLET_INBOUND"), 1, "{changed}");
    assert_eq!(count(&changed, "-j MESHLET_OUTPUT"), 1, "{changed}");
    assert!(
        changed.contains("--uid-owner 2000") && !changed.contains("--uid-owner 1337"),
        "stale rules left:\n{changed}"
    );
    assert!(changed.contains("--dports 22 "), "{changed}");
}

#[test]
fn cleanup_removes_everything_from_both_families() {
    if !root_or_skip("cleanup_removes_everything_from_both_families") {
        return;
    }
    let mut lab = Lab::new("cleanup").unwrap();
    let pod = lab.add_pod("app", 1).unwrap();
    run(lab.cmd(&pod, exe()).args(["init", "--ipv6", "on"])).unwrap();
    assert!(nat_rules(&lab, &pod, "ip6tables-save").contains("MESHLET"));
    run(lab.cmd(&pod, exe()).args(["init", "--cleanup"])).unwrap();
    for tool in [
        "iptables-save",
        "ip6tables-save",
        "iptables-legacy-save",
        "ip6tables-legacy-save",
    ] {
        let rules = nat_rules(&lab, &pod, tool);
        assert!(
            !rules.contains("MESHLET"),
            "{tool} still shows meshlet rules:\n{rules}"
        );
    }
    // Cleaning up a clean namespace is fine.
    run(lab.cmd(&pod, exe()).args(["init", "--cleanup"])).unwrap();
}

#[test]
fn legacy_backend_is_used_when_forced_or_when_it_already_holds_rules() {
    if !root_or_skip("legacy_backend_is_used_when_forced_or_when_it_already_holds_rules") {
        return;
    }
    let mut lab = Lab::new("legacy").unwrap();
    let pod = lab.add_pod("app", 1).unwrap();
    run(lab
        .cmd(&pod, exe())
        .args(["init", "--backend", "legacy", "--ipv6", "off"]))
    .unwrap();
    assert!(nat_rules(&lab, &pod, "iptables-legacy-save").contains("MESHLET_OUTPUT"));
    assert!(!nat_rules(&lab, &pod, "iptables-nft-save").contains("MESHLET"));
    run(lab.cmd(&pod, exe()).args(["init", "--cleanup"])).unwrap();
    assert!(!nat_rules(&lab, &pod, "iptables-legacy-save").contains("MESHLET"));

    // Someone else's legacy rule makes auto choose legacy, and says why.
    run(lab
        .cmd(&pod, "iptables-legacy")
        .args(["-A", "INPUT", "-p", "udp", "--dport", "9", "-j", "DROP"]))
    .unwrap();
    let (_, log, ok) = output({
        let mut c = lab.cmd(&pod, exe());
        c.args(["init", "--ipv6", "off"]);
        c
    });
    assert!(ok, "{log}");
    assert!(
        log.contains("legacy") && log.contains("already holds"),
        "the choice is logged with its reason: {log}"
    );
    assert!(nat_rules(&lab, &pod, "iptables-legacy-save").contains("MESHLET_OUTPUT"));
    assert!(!nat_rules(&lab, &pod, "iptables-nft-save").contains("MESHLET"));
}

#[test]
fn dry_run_prints_the_restore_input_and_applies_nothing() {
    if !root_or_skip("dry_run_prints_the_restore_input_and_applies_nothing") {
        return;
    }
    let mut lab = Lab::new("dryrun").unwrap();
    let pod = lab.add_pod("app", 1).unwrap();
    let (out, _, ok) = output({
        let mut c = lab.cmd(&pod, exe());
        c.args([
            "init",
            "--dry-run",
            "--ipv6",
            "off",
            "--exclude-outbound-cidrs",
            "198.19.0.0/16",
        ]);
        c
    });
    assert!(ok);
    assert!(
        out.contains("*nat") && out.contains("-d 198.19.0.0/16 ") && out.contains("COMMIT"),
        "{out}"
    );
    assert!(!nat_rules(&lab, &pod, "iptables-save").contains("MESHLET"));
}

#[test]
fn bad_flags_exit_2_naming_the_value() {
    for (flag, value) in [
        ("--exclude-inbound-ports", "80,99999"),
        ("--include-inbound-ports", "9000-8000"),
        ("--exclude-outbound-cidrs", "198.18.0.0/40"),
    ] {
        let out = std::process::Command::new(exe())
            .args(["init", "--dry-run", flag, value])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag} {value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(flag), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
}

/// Starts `demo-app origdst` on `listen` in `pod` and returns its log path.
fn origdst(
    lab: &mut Lab,
    pod: &Pod,
    listen: &str,
    dir: &std::path::Path,
    uid: Option<u32>,
) -> std::path::PathBuf {
    let log = dir.join(format!(
        "origdst-{}-{}.log",
        pod.name,
        listen.replace([':', '[', ']'], "_")
    ));
    let mut cmd = match uid {
        Some(uid) => lab.cmd_as(pod, uid, exe()),
        None => lab.cmd(pod, exe()),
    };
    cmd.args(["demo-app", "origdst", "--listen", listen]);
    lab.spawn_until(
        &format!("origdst-{}-{listen}", pod.name),
        cmd,
        &log,
        "listening",
    )
    .unwrap();
    log
}

fn connect(lab: &Lab, pod: &Pod, addr: &str, uid: Option<u32>) -> bool {
    let mut cmd = match uid {
        Some(uid) => lab.cmd_as(pod, uid, exe()),
        None => lab.cmd(pod, exe()),
    };
    cmd.args(["demo-app", "get", "--timeout", "2s", "--addr", addr, "/"]);
    cmd.output().map(|o| o.status.success()).unwrap_or(false)
}

#[test]
fn captured_connections_land_on_the_proxy_ports_with_their_original_destination() {
    if !root_or_skip("captured_connections_land_on_the_proxy_ports_with_their_original_destination")
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut lab = Lab::new("landing").unwrap();
    let app = lab.add_pod("app", 1).unwrap();
    let peer = lab.add_pod("peer", 2).unwrap();
    run(lab.cmd(&app, exe()).arg("init")).unwrap();

    // Outbound, IPv4 and IPv6: the app dials the peer; the outbound port receives it.
    let out4 = origdst(&mut lab, &app, "127.0.0.1:15001", dir.path(), Some(1337));
    let out6 = origdst(&mut lab, &app, "[::1]:15001", dir.path(), Some(1337));
    let _ = connect(&lab, &app, "198.18.0.2:8080", None);
    let _ = connect(&lab, &app, "[2001:2::2]:8080", None);
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    assert!(
        read(&out4).contains("original destination 198.18.0.2:8080"),
        "{}",
        read(&out4)
    );
    assert!(
        read(&out6).contains("original destination [2001:2::2]:8080"),
        "{}",
        read(&out6)
    );

    // The proxy's own uid is not redirected: it reaches the peer's app directly.
    let mut peer_app = lab.cmd(&peer, exe());
    peer_app.args(["demo-app", "serve", "--listen", "0.0.0.0:8080"]);
    lab.spawn_until(
        "peer-app",
        peer_app,
        &dir.path().join("peer-app.log"),
        "listening",
    )
    .unwrap();
    assert!(
        connect(&lab, &app, "198.18.0.2:8080", Some(1337)),
        "uid 1337 must bypass the capture"
    );
    // Loopback traffic of the app is not captured either.
    let mut local = lab.cmd(&app, exe());
    local.args(["demo-app", "serve", "--listen", "127.0.0.1:7070"]);
    lab.spawn_until(
        "local-app",
        local,
        &dir.path().join("local.log"),
        "listening",
    )
    .unwrap();
    assert!(connect(&lab, &app, "127.0.0.1:7070", None));

    // Inbound: a connection from the peer to an app port lands on the inbound port...
    let inbound = origdst(&mut lab, &app, "0.0.0.0:15006", dir.path(), Some(1337));
    let _ = connect(&lab, &peer, "198.18.0.1:8080", None);
    assert!(
        read(&inbound).contains("original destination 198.18.0.1:8080"),
        "{}",
        read(&inbound)
    );
    // ...but one to the admin port 15021 is not captured.
    let mut admin = lab.cmd(&app, exe());
    admin.args(["demo-app", "serve", "--listen", "0.0.0.0:15021"]);
    lab.spawn_until("admin", admin, &dir.path().join("admin.log"), "listening")
        .unwrap();
    assert!(
        connect(&lab, &peer, "198.18.0.1:15021", None),
        "15021 must not be redirected"
    );
    assert!(!read(&inbound).contains(":15021"), "{}", read(&inbound));
}

#[test]
fn without_net_admin_init_says_what_it_needs() {
    if !root_or_skip("without_net_admin_init_says_what_it_needs") {
        return;
    }
    let mut lab = Lab::new("nocap").unwrap();
    let pod = lab.add_pod("app", 1).unwrap();
    // An unprivileged user in the pod: the restore tools are refused by the kernel.
    let (_, err, ok) = output({
        let mut c = lab.cmd_as(&pod, 65534, exe());
        c.args(["init", "--backend", "nft", "--ipv6", "off"]);
        c
    });
    assert!(!ok);
    assert!(
        err.contains("NET_ADMIN") && err.contains("securityContext"),
        "{err}"
    );
    assert_eq!(
        err.trim()
            .lines()
            .filter(|l| l.starts_with("meshlet:"))
            .count(),
        1,
        "{err}"
    );
}
