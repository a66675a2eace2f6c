//! `meshlet demo`: two meshed pods and an outsider in network namespaces, and the story of what
//! meshlet does for them, told with evidence gathered on the spot.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;

use crate::mesh::Mesh;
use crate::netns::{self, contains, Capture, Lab};

const PREFIX: &str = "meshlet-demo";
const WORKER: &str = "/ns/default/sa/pod-worker";
const ECHO: &str = "/ns/default/sa/echo";

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// leave the pods running afterwards and print how to poke at them
    #[arg(long)]
    keep: bool,
    /// remove what an earlier `meshlet demo --keep` left behind, then exit
    #[arg(long)]
    cleanup: bool,
}

fn work_dir() -> PathBuf {
    std::env::temp_dir().join(PREFIX)
}

/// Removes the namespaces, processes and files of any earlier demo.
fn clean_leftovers() -> usize {
    let n = netns::remove_prefix(PREFIX);
    let _ = std::fs::remove_dir_all(work_dir());
    n
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    netns::check_privileges().map_err(|e| anyhow::anyhow!("meshlet demo {e}"))?;
    if args.cleanup {
        let n = clean_leftovers();
        println!("removed {n} demo namespaces and {}", work_dir().display());
        return Ok(());
    }
    clean_leftovers();
    // Ctrl-C: the pods' processes share our terminal and get the signal too; remove the rest.
    std::thread::spawn(|| {
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            if rt.block_on(tokio::signal::ctrl_c()).is_ok() {
                eprintln!("\ninterrupted: cleaning up");
                clean_leftovers();
                std::process::exit(130);
            }
        }
    });
    let exe = std::env::current_exe().context("cannot find the meshlet binary")?;
    let result = story(&exe, args.keep);
    if result.is_err() || !args.keep {
        clean_leftovers();
    }
    result
}

fn step(n: u32, text: &str) {
    println!("\n[{n}/5] {text}");
}

fn story(exe: &std::path::Path, keep: bool) -> anyhow::Result<()> {
    let mut mesh = Mesh::in_dir(Lab::with_prefix(PREFIX)?, &work_dir(), exe)?;
    let client = mesh.lab.add_pod("worker", 1)?;
    let server = mesh.lab.add_pod("echo", 2)?;
    let outsider = mesh.lab.add_pod("outsider", 3)?;

    println!("meshlet demo: three pods in network namespaces on one bridge (nothing touches the host network)\n");
    println!(
        "  worker    {:<12} spiffe://cluster.local{WORKER}   meshed",
        client.ip
    );
    println!(
        "  echo      {:<12} spiffe://cluster.local{ECHO}         meshed, HTTP app on :8080",
        server.ip
    );
    println!(
        "  outsider  {:<12} (no certificate, no sidecar)",
        outsider.ip
    );
    println!("\n  policy on echo:8080: only {WORKER} may call, and only GET /headers");

    let client_id = mesh.issue(&client, WORKER)?;
    let server_id = mesh.issue(&server, ECHO)?;
    mesh.init(&client, &[])?;
    mesh.init(&server, &[])?;
    mesh.start_app(&server, 8080)?;
    mesh.start_proxy(&client, &client_id, "")?;
    let policy = format!(
        "inbound:\n  policy:\n    - ports: [8080]\n      from: [spiffe://cluster.local{WORKER}]\n      http:\n        - methods: [GET]\n          paths: [/headers]\n"
    );
    mesh.start_proxy(&server, &server_id, &policy)?;

    let target: SocketAddr = SocketAddr::new(server.ip.into(), 8080);
    let capture = Capture::start(&mesh.lab, &mesh.dir)?;

    step(1, &format!("worker calls http://{target}/headers by its plain address (the app knows nothing of TLS)"));
    let reply = mesh.get(&client, target, &["/headers"])?.remove(0);
    println!("      → HTTP {}", reply.status);
    for line in reply.body.lines().take(3) {
        println!("        {line}");
    }
    if reply.status != 200 {
        bail!(
            "expected 200 from echo, got {}: {}",
            reply.status,
            reply.body
        );
    }

    step(
        2,
        "echo's app learned who called, from the header its sidecar added:",
    );
    let xfcc = reply
        .body
        .lines()
        .find(|l| l.starts_with("header x-forwarded-client-cert:"))
        .context("the app did not receive x-forwarded-client-cert")?;
    println!("        {}", xfcc.trim_start_matches("header "));
    if !xfcc.contains(&format!("URI=spiffe://cluster.local{WORKER}")) {
        bail!("the caller's SPIFFE ID is missing from {xfcc:?}");
    }

    step(
        3,
        "on the wire between the pods it was mutual TLS 1.3 (tcpdump on the bridge):",
    );
    let pcap = capture.finish()?;
    let plaintext = [
        &b"GET /headers"[..],
        b"hello from echo",
        b"x-forwarded-client-cert",
    ];
    let leaked: Vec<&str> = plaintext
        .iter()
        .filter(|p| contains(&pcap, p))
        .map(|p| std::str::from_utf8(p).unwrap_or("?"))
        .collect();
    let tls13 = contains(&pcap, &[0x00, 0x2b, 0x00, 0x02, 0x03, 0x04]);
    let alpn = contains(&pcap, b"meshlet/1");
    let records = pcap.windows(3).filter(|w| w == &[0x17, 0x03, 0x03]).count();
    println!("        captured {} bytes of TCP", pcap.len());
    println!(
        "        ServerHello selected TLS 1.3 (supported_versions 0x0304): {}",
        yes(tls13)
    );
    println!(
        "        ClientHello offered the mesh ALPN meshlet/1:              {}",
        yes(alpn)
    );
    println!("        encrypted application-data records seen:                  {records}");
    println!(
        "        request or response visible in plaintext:                 {}",
        if leaked.is_empty() {
            "none".to_owned()
        } else {
            leaked.join(", ")
        }
    );
    if !leaked.is_empty() || !tls13 || !alpn {
        bail!("the capture does not show mTLS only");
    }

    step(
        4,
        &format!("outsider (no sidecar, no certificate) calls the same http://{target}/headers"),
    );
    match mesh.get(&outsider, target, &["/headers"]) {
        Ok(r) => bail!("the outsider got an answer: HTTP {}", r[0].status),
        Err(_) => println!("      → refused: echo's sidecar closed the connection (strict mode accepts only mesh mTLS)"),
    }

    step(
        5,
        "worker asks for a path the policy does not allow: GET /admin",
    );
    let denied = mesh.get(&client, target, &["/admin"])?.remove(0);
    println!("      → HTTP {} {}", denied.status, denied.body.trim());
    if denied.status != 403 {
        bail!("expected 403, got {}", denied.status);
    }

    if keep {
        println!("\nthe pods are still up (--keep). Try:");
        println!(
            "  sudo ip netns exec {0} {1} demo-app get --addr {target} /headers",
            client.ns,
            exe.display()
        );
        println!(
            "  sudo ip netns exec {0} {1} demo-app get --addr 127.0.0.1:15021 /metrics",
            server.ns,
            exe.display()
        );
        println!("  sudo ip netns exec {0} iptables-save -t nat", client.ns);
        println!("  logs and certificates: {}", mesh.dir.display());
        println!("remove it all with: sudo {} demo --cleanup", exe.display());
        mesh.lab.keep();
    } else {
        drop(mesh);
        println!("\ndone: namespaces, rules, processes and files removed.");
    }
    Ok(())
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "NO"
    }
}
