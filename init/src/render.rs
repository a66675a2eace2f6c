//! Renders a [`CaptureConfig`] into the exact text fed to `iptables-restore --noflush`
//! (or `ip6tables-restore`). Pure functions: everything here is checked by unit tests.

use std::fmt::Write;

use ipnet::IpNet;

use crate::backend::Family;
use crate::model::{
    iptables_ports, multiport_weight, CaptureConfig, CidrSelection, PortRange, PortSelection,
};

/// meshlet's chains, in the order they are declared.
pub const CHAINS: [&str; 4] = [
    "MESHLET_INBOUND",
    "MESHLET_IN_REDIRECT",
    "MESHLET_OUTPUT",
    "MESHLET_REDIRECT",
];

/// multiport accepts at most 15 ports, a range counting as two.
const MULTIPORT_MAX: usize = 15;

/// The restore input that installs the rules for one address family.
///
/// `stale_jumps` are the `-A PREROUTING/OUTPUT ... -j MESHLET_*` lines currently installed
/// (as `iptables-save` prints them); they are deleted in the same transaction so that running
/// init again leaves exactly one jump, whatever flags the previous run had. Declaring our chains
/// under `--noflush` empties them, which removes every stale rule inside them.
pub fn render_apply(cfg: &CaptureConfig, family: Family, stale_jumps: &[String]) -> String {
    let mut out = String::from("*nat\n");
    for chain in CHAINS {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    for line in stale_jumps {
        let _ = writeln!(out, "-D {}", line.trim_start_matches("-A ").trim());
    }
    rule(
        &mut out,
        "PREROUTING",
        // Only connections addressed to this pod: a packet merely routed through it (a forged
        // route, a misconfigured peer) is never handed to the proxy, which would otherwise dial
        // its destination on the caller's behalf.
        "-p tcp -m addrtype --dst-type LOCAL",
        "capture inbound TCP addressed to this pod",
        "MESHLET_INBOUND",
    );
    rule(
        &mut out,
        "OUTPUT",
        "-p tcp",
        "capture outbound TCP",
        "MESHLET_OUTPUT",
    );

    // Inbound.
    let own_ports = [
        PortRange::single(cfg.admin_port),
        PortRange::single(cfg.inbound_port),
        PortRange::single(cfg.outbound_port),
    ];
    multiport_rules(
        &mut out,
        "MESHLET_INBOUND",
        "--dports",
        &own_ports,
        "admin and proxy ports are never captured",
        "RETURN",
    );
    multiport_rules(
        &mut out,
        "MESHLET_INBOUND",
        "--dports",
        &cfg.exclude_inbound_ports,
        "inbound port excluded by --exclude-inbound-ports",
        "RETURN",
    );
    match &cfg.include_inbound_ports {
        PortSelection::All => rule(
            &mut out,
            "MESHLET_INBOUND",
            "-p tcp",
            "all other inbound TCP goes to the proxy",
            "MESHLET_IN_REDIRECT",
        ),
        PortSelection::List(ports) => multiport_rules(
            &mut out,
            "MESHLET_INBOUND",
            "--dports",
            ports,
            "inbound port included by --include-inbound-ports",
            "MESHLET_IN_REDIRECT",
        ),
    }
    let _ = writeln!(
        out,
        "-A MESHLET_IN_REDIRECT -p tcp -m comment --comment \"meshlet: to the inbound proxy port\" -j REDIRECT --to-ports {}",
        cfg.inbound_port
    );

    // Outbound. First the self-check: `meshlet check` connects to loopback on CHECK_PORT,
    // where nothing listens, and reaches the admin server only if these chains are hooked in
    // and the kernel runs them. It comes before the uid exemption so the check works from the
    // proxy's own container.
    let loopback = match family {
        Family::V4 => "127.0.0.1/32",
        Family::V6 => "::1/128",
    };
    let _ = writeln!(
        out,
        "-A MESHLET_OUTPUT -d {loopback} -p tcp -m tcp --dport {} -m comment --comment \"meshlet: self-check (meshlet check) reaches the admin port\" -j REDIRECT --to-ports {}",
        meshlet_defaults::CHECK_PORT,
        cfg.admin_port
    );
    rule(
        &mut out,
        "MESHLET_OUTPUT",
        &format!("-m owner --uid-owner {}", cfg.proxy_uid),
        "the proxy's own traffic is never captured (uid)",
        "RETURN",
    );
    if let Some(gid) = cfg.proxy_gid {
        rule(
            &mut out,
            "MESHLET_OUTPUT",
            &format!("-m owner --gid-owner {gid}"),
            "the proxy's own traffic is never captured (gid)",
            "RETURN",
        );
    }
    rule(
        &mut out,
        "MESHLET_OUTPUT",
        "-o lo",
        "the app's loopback traffic is not captured",
        "RETURN",
    );
    multiport_rules(
        &mut out,
        "MESHLET_OUTPUT",
        "--dports",
        &cfg.exclude_outbound_ports,
        "outbound port excluded by --exclude-outbound-ports",
        "RETURN",
    );
    for net in family_nets(&cfg.exclude_outbound_cidrs, family) {
        rule(
            &mut out,
            "MESHLET_OUTPUT",
            &format!("-d {net}"),
            "destination excluded by --exclude-outbound-cidrs",
            "RETURN",
        );
    }
    // What is left is captured when both its destination and its port are included.
    let destinations: Vec<(String, &str)> = match &cfg.include_outbound_cidrs {
        CidrSelection::All => vec![(String::new(), "all other outbound TCP goes to the proxy")],
        CidrSelection::List(nets) => family_nets(nets, family)
            .map(|net| {
                (
                    format!("-d {net} "),
                    "destination included by --include-outbound-cidrs",
                )
            })
            .collect(),
    };
    for (dst, why) in destinations {
        match &cfg.include_outbound_ports {
            PortSelection::All if dst.is_empty() => rule(
                &mut out,
                "MESHLET_OUTPUT",
                "-p tcp",
                why,
                "MESHLET_REDIRECT",
            ),
            PortSelection::All => rule(
                &mut out,
                "MESHLET_OUTPUT",
                dst.trim_end(),
                why,
                "MESHLET_REDIRECT",
            ),
            PortSelection::List(ports) => multiport_rules_with(
                &mut out,
                "MESHLET_OUTPUT",
                &dst,
                "--dports",
                ports,
                "outbound port included by --include-outbound-ports",
                "MESHLET_REDIRECT",
            ),
        }
    }
    let _ = writeln!(
        out,
        "-A MESHLET_REDIRECT -p tcp -m comment --comment \"meshlet: to the outbound proxy port\" -j REDIRECT --to-ports {}",
        cfg.outbound_port
    );
    out.push_str("COMMIT\n");
    out
}

/// The restore input that removes everything meshlet installed, given what `iptables-save -t nat`
/// shows now. `None` when there is nothing of meshlet's to remove.
pub fn render_cleanup(saved_nat: &str) -> Option<String> {
    let jumps = meshlet_jumps(saved_nat);
    let present: Vec<&str> = CHAINS
        .iter()
        .copied()
        .filter(|c| {
            saved_nat
                .lines()
                .any(|l| l.trim() == format!(":{c} - [0:0]") || l.starts_with(&format!(":{c} ")))
        })
        .collect();
    if jumps.is_empty() && present.is_empty() {
        return None;
    }
    let mut out = String::from("*nat\n");
    for line in &jumps {
        let _ = writeln!(out, "-D {}", line.trim_start_matches("-A ").trim());
    }
    for chain in &present {
        let _ = writeln!(out, "-F {chain}");
    }
    for chain in &present {
        let _ = writeln!(out, "-X {chain}");
    }
    out.push_str("COMMIT\n");
    Some(out)
}

/// The `-A PREROUTING/OUTPUT ... -j MESHLET_*` lines of an `iptables-save` dump.
pub fn meshlet_jumps(saved_nat: &str) -> Vec<String> {
    saved_nat
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("-A PREROUTING ") || l.starts_with("-A OUTPUT "))
        .filter(|l| {
            l.split_whitespace()
                .collect::<Vec<_>>()
                .windows(2)
                .any(|w| w[0] == "-j" && w[1].starts_with("MESHLET_"))
        })
        .map(str::to_owned)
        .collect()
}

fn rule(out: &mut String, chain: &str, matches: &str, why: &str, target: &str) {
    let _ = writeln!(
        out,
        "-A {chain} {matches} -m comment --comment \"meshlet: {why}\" -j {target}"
    );
}

/// One rule per group of ports that fits in a multiport match.
fn multiport_rules(
    out: &mut String,
    chain: &str,
    dir: &str,
    ports: &[PortRange],
    why: &str,
    target: &str,
) {
    multiport_rules_with(out, chain, "", dir, ports, why, target)
}

/// As `multiport_rules`, with `prefix` (e.g. `-d 198.18.0.0/15 `) before the port match.
fn multiport_rules_with(
    out: &mut String,
    chain: &str,
    prefix: &str,
    dir: &str,
    ports: &[PortRange],
    why: &str,
    target: &str,
) {
    let mut group: Vec<String> = Vec::new();
    let mut weight = 0;
    let flush = |out: &mut String, group: &mut Vec<String>| {
        if !group.is_empty() {
            let matches = format!("{prefix}-p tcp -m multiport {dir} {}", group.join(","));
            rule(out, chain, &matches, why, target);
            group.clear();
        }
    };
    for port in ports {
        if weight + multiport_weight(port) > MULTIPORT_MAX {
            flush(out, &mut group);
            weight = 0;
        }
        weight += multiport_weight(port);
        group.push(iptables_ports(port));
    }
    flush(out, &mut group);
}

fn family_nets(nets: &[IpNet], family: Family) -> impl Iterator<Item = &IpNet> {
    nets.iter().filter(move |n| match family {
        Family::V4 => matches!(n, IpNet::V4(_)),
        Family::V6 => matches!(n, IpNet::V6(_)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{parse_cidrs, parse_ports};

    #[test]
    fn default_rules_match_the_expected_text() {
        let got = render_apply(&CaptureConfig::default(), Family::V4, &[]);
        let want = r#"*nat
:MESHLET_INBOUND - [0:0]
:MESHLET_IN_REDIRECT - [0:0]
:MESHLET_OUTPUT - [0:0]
:MESHLET_REDIRECT - [0:0]
-A PREROUTING -p tcp -m addrtype --dst-type LOCAL -m comment --comment "meshlet: capture inbound TCP addressed to this pod" -j MESHLET_INBOUND
-A OUTPUT -p tcp -m comment --comment "meshlet: capture outbound TCP" -j MESHLET_OUTPUT
-A MESHLET_INBOUND -p tcp -m multiport --dports 15021,15006,15001 -m comment --comment "meshlet: admin and proxy ports are never captured" -j RETURN
-A MESHLET_INBOUND -p tcp -m comment --comment "meshlet: all other inbound TCP goes to the proxy" -j MESHLET_IN_REDIRECT
-A MESHLET_IN_REDIRECT -p tcp -m comment --comment "meshlet: to the inbound proxy port" -j REDIRECT --to-ports 15006
-A MESHLET_OUTPUT -d 127.0.0.1/32 -p tcp -m tcp --dport 15022 -m comment --comment "meshlet: self-check (meshlet check) reaches the admin port" -j REDIRECT --to-ports 15021
-A MESHLET_OUTPUT -m owner --uid-owner 1337 -m comment --comment "meshlet: the proxy's own traffic is never captured (uid)" -j RETURN
-A MESHLET_OUTPUT -o lo -m comment --comment "meshlet: the app's loopback traffic is not captured" -j RETURN
-A MESHLET_OUTPUT -p tcp -m comment --comment "meshlet: all other outbound TCP goes to the proxy" -j MESHLET_REDIRECT
-A MESHLET_REDIRECT -p tcp -m comment --comment "meshlet: to the outbound proxy port" -j REDIRECT --to-ports 15001
COMMIT
"#;
        assert_eq!(got, want);
    }

    #[test]
    fn include_lists_exclusions_and_gid_render_in_order() {
        let cfg = CaptureConfig {
            proxy_uid: 2000,
            proxy_gid: Some(3000),
            inbound_port: 16006,
            outbound_port: 16001,
            admin_port: 16021,
            include_inbound_ports: PortSelection::List(
                parse_ports("--x", "8080,9000-9100").unwrap(),
            ),
            exclude_inbound_ports: parse_ports("--x", "22").unwrap(),
            include_outbound_cidrs: CidrSelection::List(
                parse_cidrs("--x", "198.18.0.0/15,2001:2::/48").unwrap(),
            ),
            exclude_outbound_cidrs: parse_cidrs("--x", "198.19.7.0/24").unwrap(),
            exclude_outbound_ports: parse_ports("--x", "53").unwrap(),
            include_outbound_ports: PortSelection::All,
        };
        let got = render_apply(&cfg, Family::V4, &[]);
        let body: Vec<&str> = got.lines().skip(7).collect();
        assert_eq!(
            body,
            vec![
                r#"-A MESHLET_INBOUND -p tcp -m multiport --dports 16021,16006,16001 -m comment --comment "meshlet: admin and proxy ports are never captured" -j RETURN"#,
                r#"-A MESHLET_INBOUND -p tcp -m multiport --dports 22 -m comment --comment "meshlet: inbound port excluded by --exclude-inbound-ports" -j RETURN"#,
                r#"-A MESHLET_INBOUND -p tcp -m multiport --dports 8080,9000:9100 -m comment --comment "meshlet: inbound port included by --include-inbound-ports" -j MESHLET_IN_REDIRECT"#,
                r#"-A MESHLET_IN_REDIRECT -p tcp -m comment --comment "meshlet: to the inbound proxy port" -j REDIRECT --to-ports 16006"#,
                r#"-A MESHLET_OUTPUT -d 127.0.0.1/32 -p tcp -m tcp --dport 15022 -m comment --comment "meshlet: self-check (meshlet check) reaches the admin port" -j REDIRECT --to-ports 16021"#,
                r#"-A MESHLET_OUTPUT -m owner --uid-owner 2000 -m comment --comment "meshlet: the proxy's own traffic is never captured (uid)" -j RETURN"#,
                r#"-A MESHLET_OUTPUT -m owner --gid-owner 3000 -m comment --comment "meshlet: the proxy's own traffic is never captured (gid)" -j RETURN"#,
                r#"-A MESHLET_OUTPUT -o lo -m comment --comment "meshlet: the app's loopback traffic is not captured" -j RETURN"#,
                r#"-A MESHLET_OUTPUT -p tcp -m multiport --dports 53 -m comment --comment "meshlet: outbound port excluded by --exclude-outbound-ports" -j RETURN"#,
                r#"-A MESHLET_OUTPUT -d 198.19.7.0/24 -m comment --comment "meshlet: destination excluded by --exclude-outbound-cidrs" -j RETURN"#,
                r#"-A MESHLET_OUTPUT -d 198.18.0.0/15 -m comment --comment "meshlet: destination included by --include-outbound-cidrs" -j MESHLET_REDIRECT"#,
                r#"-A MESHLET_REDIRECT -p tcp -m comment --comment "meshlet: to the outbound proxy port" -j REDIRECT --to-ports 16001"#,
                "COMMIT",
            ]
        );
        let v6 = render_apply(&cfg, Family::V6, &[]);
        assert!(v6.contains("-d 2001:2::/48 "), "{v6}");
        assert!(!v6.contains("198.18."), "{v6}");
    }

    #[test]
    fn included_outbound_ports_are_captured_only_for_included_destinations() {
        let cfg = CaptureConfig {
            include_outbound_cidrs: CidrSelection::List(
                parse_cidrs("x", "198.18.0.0/15,2001:2::/48").unwrap(),
            ),
            include_outbound_ports: PortSelection::List(parse_ports("x", "80,8000-8100").unwrap()),
            ..CaptureConfig::default()
        };
        let v4 = render_apply(&cfg, Family::V4, &[]);
        assert!(v4.contains(
            r#"-A MESHLET_OUTPUT -d 198.18.0.0/15 -p tcp -m multiport --dports 80,8000:8100 -m comment --comment "meshlet: outbound port included by --include-outbound-ports" -j MESHLET_REDIRECT"#
        ), "{v4}");
        assert!(!v4.contains("2001:2::/48"));
        let all_dsts = CaptureConfig {
            include_outbound_ports: PortSelection::List(parse_ports("x", "443").unwrap()),
            ..CaptureConfig::default()
        };
        let text = render_apply(&all_dsts, Family::V4, &[]);
        assert!(text.contains(r#"-A MESHLET_OUTPUT -p tcp -m multiport --dports 443 -m comment --comment "meshlet: outbound port included by --include-outbound-ports" -j MESHLET_REDIRECT"#), "{text}");
        assert!(!text.contains("all other outbound TCP"));
    }

    #[test]
    fn empty_inbound_include_list_redirects_nothing_inbound() {
        let cfg = CaptureConfig {
            include_inbound_ports: PortSelection::List(vec![]),
            ..CaptureConfig::default()
        };
        let got = render_apply(&cfg, Family::V4, &[]);
        assert!(!got.contains("-j MESHLET_IN_REDIRECT"), "{got}");
    }

    #[test]
    fn long_port_lists_are_split_into_multiport_sized_rules() {
        // 20 singles and 3 ranges: weights 20 + 6 = 26 → two rules of at most 15.
        let mut spec: Vec<String> = (1000..1020).map(|p| p.to_string()).collect();
        spec.extend(["2000-2010".into(), "3000-3010".into(), "4000-4010".into()]);
        let cfg = CaptureConfig {
            exclude_inbound_ports: parse_ports("--x", &spec.join(",")).unwrap(),
            ..CaptureConfig::default()
        };
        let got = render_apply(&cfg, Family::V4, &[]);
        let lists: Vec<&str> = got
            .lines()
            .filter(|l| l.contains("excluded by --exclude-inbound-ports"))
            .map(|l| {
                l.split("--dports ")
                    .nth(1)
                    .unwrap()
                    .split(' ')
                    .next()
                    .unwrap()
            })
            .collect();
        assert_eq!(lists.len(), 2);
        let mut seen = Vec::new();
        for list in &lists {
            let weight: usize = list
                .split(',')
                .map(|p| if p.contains(':') { 2 } else { 1 })
                .sum();
            assert!(weight <= 15, "{list} has weight {weight}");
            seen.extend(list.split(',').map(str::to_owned));
        }
        assert_eq!(seen.len(), 23, "every port appears once: {seen:?}");
    }

    #[test]
    fn stale_jumps_are_deleted_in_the_same_transaction() {
        let saved = "*nat\n:PREROUTING ACCEPT [0:0]\n:MESHLET_INBOUND - [0:0]\n-A PREROUTING -p tcp -m comment --comment \"meshlet: capture inbound TCP\" -j MESHLET_INBOUND\n-A PREROUTING -j DOCKER\n-A OUTPUT -p tcp -j MESHLET_OUTPUT\nCOMMIT\n";
        let stale = meshlet_jumps(saved);
        assert_eq!(stale.len(), 2);
        let got = render_apply(&CaptureConfig::default(), Family::V4, &stale);
        assert!(got.contains("\n-D PREROUTING -p tcp -m comment --comment \"meshlet: capture inbound TCP\" -j MESHLET_INBOUND\n"));
        assert!(got.contains("\n-D OUTPUT -p tcp -j MESHLET_OUTPUT\n"));
        assert!(!got.contains("DOCKER"));
    }

    #[test]
    fn cleanup_removes_jumps_then_chains() {
        let saved = "*nat\n:PREROUTING ACCEPT [0:0]\n:MESHLET_INBOUND - [0:0]\n:MESHLET_OUTPUT - [0:0]\n-A PREROUTING -p tcp -j MESHLET_INBOUND\n-A OUTPUT -p tcp -j MESHLET_OUTPUT\nCOMMIT\n";
        let got = render_cleanup(saved).unwrap();
        assert_eq!(
            got,
            "*nat\n-D PREROUTING -p tcp -j MESHLET_INBOUND\n-D OUTPUT -p tcp -j MESHLET_OUTPUT\n-F MESHLET_INBOUND\n-F MESHLET_OUTPUT\n-X MESHLET_INBOUND\n-X MESHLET_OUTPUT\nCOMMIT\n"
        );
        assert_eq!(
            render_cleanup("*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n"),
            None
        );
    }
}
