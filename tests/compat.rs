//! The compatibility suite: real clients against real servers (Debian's and PyPI's packages),
//! each through every way meshlet can sit between them, each compared with the same pair
//! unmeshed. A user's check that their stack survives the mesh; the README's compatibility table
//! is this test's output.
//!
//! Servers in the server pod: Redis, MariaDB, PostgreSQL, nghttpd (h2c), Python's http.server,
//! and the suite's own peers (`tests/data/compat/peers.py`: HTTP/1.1 under an HTTP rule, an
//! SMTP-style greeting server, half-close, WebSockets, gRPC). Clients in the client pod:
//! redis-cli, mariadb, psql, h2load, curl, and peers.py's clients (http.client, smtplib,
//! websockets, grpcio). Without the packages the test skips, unless
//! MESHLET_REQUIRE_COMPAT_TESTS=1 (CI).

mod common;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const CLIENT: &str = "/ns/default/sa/client";
const SERVER: &str = "/ns/default/sa/server";

/// One way the pair is set up: each side's proxy configuration, or `None` for unmeshed.
struct Setup {
    name: &'static str,
    client: Option<&'static str>,
    server: Option<&'static str>,
}

/// The server pod's proxy: every port open to anyone, and peers.py's HTTP/1.1 port (8001) under
/// an HTTP rule, so that its requests are parsed and checked one by one, as HTTP rules do.
macro_rules! server_policy {
    ($mode:literal) => {
        concat!(
            "inbound:\n  mode: ",
            $mode,
            "\n  policy:\n",
            "    - {ports: [8001], from: [\"*\"], http: [{}]}\n",
            "    - {ports: [\"1-8000\", \"8002-65535\"], from: [\"*\"]}\n",
        )
    };
}
const STRICT: &str = server_policy!("strict");
const PERMISSIVE: &str = server_policy!("permissive");
const PER_CONNECTION: &str = "outbound: {transport: per_connection}";

const SETUPS: &[Setup] = &[
    Setup {
        name: "unmeshed (control)",
        client: None,
        server: None,
    },
    Setup {
        name: "strict, pooled",
        client: Some(""),
        server: Some(STRICT),
    },
    Setup {
        name: "strict, per connection",
        client: Some(PER_CONNECTION),
        server: Some(STRICT),
    },
    Setup {
        name: "permissive, pooled",
        client: Some(""),
        server: Some(PERMISSIVE),
    },
    Setup {
        name: "permissive, per connection",
        client: Some(PER_CONNECTION),
        server: Some(PERMISSIVE),
    },
    Setup {
        name: "unmeshed client, permissive server",
        client: None,
        server: Some(PERMISSIVE),
    },
    Setup {
        name: "meshed client (auto), unmeshed server",
        client: Some(""),
        server: None,
    },
];

/// Programs the suite needs, from Debian's packages (and grpcio from PyPI, in a venv).
const TOOLS: &[&str] = &[
    "redis-server",
    "redis-cli",
    "mariadbd",
    "mariadb-install-db",
    "mariadb",
    "psql",
    "nghttpd",
    "h2load",
    "curl",
    "setpriv",
    "openssl",
];

fn postgres_bin() -> Option<PathBuf> {
    let dir = std::fs::read_dir("/usr/lib/postgresql").ok()?;
    dir.flatten()
        .map(|e| e.path().join("bin"))
        .find(|p| p.join("initdb").exists())
}

fn grpc_python() -> Option<PathBuf> {
    let venv = std::env::var_os("MESHLET_COMPAT_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("target/compat-venv/bin/python")
        });
    let ok = Command::new(&venv)
        .args(["-c", "import grpc, grpc_health.v1, websockets"])
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some(venv)
}

fn tools_or_skip(test: &str) -> Option<(PathBuf, PathBuf)> {
    let mut missing: Vec<String> = TOOLS
        .iter()
        .filter(|t| meshlet_lab::netns::which(t).is_none())
        .map(|t| t.to_string())
        .collect();
    let pg = postgres_bin();
    if pg.is_none() {
        missing.push("postgresql (initdb)".into());
    }
    let py = grpc_python();
    if py.is_none() {
        missing
            .push("grpcio and websockets (./test.sh installs them into target/compat-venv)".into());
    }
    if missing.is_empty() {
        return Some((pg?, py?));
    }
    let why = format!("missing {}", missing.join(", "));
    if std::env::var("MESHLET_REQUIRE_COMPAT_TESTS").as_deref() == Ok("1") {
        panic!("{test}: MESHLET_REQUIRE_COMPAT_TESTS=1 but {why}");
    }
    eprintln!("SKIPPED {test}: {why} (set MESHLET_REQUIRE_COMPAT_TESTS=1 to make this a failure)");
    None
}

/// The suite's own Python peers (servers and clients no package ships as a command).
fn peers_py() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/compat/peers.py")
}

/// Initialized data directories, made once and copied for each setup.
struct Templates {
    mariadb: PathBuf,
    postgres: PathBuf,
    www: PathBuf,
    dir: tempfile::TempDir,
}

fn sh(cmd: &mut Command) -> String {
    let out = run(cmd).unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn templates(pg: &Path) -> Templates {
    let dir = tempfile::Builder::new()
        .prefix("meshlet-compat-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mariadb = dir.path().join("mariadb");
    sh(Command::new("mariadb-install-db")
        .arg("--user=root")
        .arg(format!("--datadir={}", mariadb.display()))
        .args(["--skip-test-db", "--auth-root-authentication-method=normal"]));
    let postgres = dir.path().join("postgres");
    std::fs::create_dir(&postgres).unwrap();
    sh(Command::new("chown")
        .arg("postgres:postgres")
        .arg(&postgres));
    sh(Command::new("setpriv")
        .args([
            "--reuid",
            "postgres",
            "--regid",
            "postgres",
            "--clear-groups",
        ])
        .arg(pg.join("initdb"))
        .args(["-A", "trust", "-U", "postgres", "-D"])
        .arg(&postgres));
    let hba = postgres.join("pg_hba.conf");
    let mut rules = std::fs::read_to_string(&hba).unwrap();
    rules.push_str("host all all 0.0.0.0/0 trust\n");
    std::fs::write(&hba, rules).unwrap();
    // A certificate of its own, so that clients can ask for TLS (sslmode=require): the app's
    // TLS then travels inside meshlet's, or, from an unmeshed caller, past a permissive pod.
    sh(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args([
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=postgres.compat.invalid",
            "-keyout",
        ])
        .arg(postgres.join("server.key"))
        .arg("-out")
        .arg(postgres.join("server.crt")));
    sh(Command::new("chown")
        .arg("postgres:postgres")
        .arg(postgres.join("server.key"))
        .arg(postgres.join("server.crt")));
    std::fs::set_permissions(
        postgres.join("server.key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let conf = postgres.join("postgresql.conf");
    let mut settings = std::fs::read_to_string(&conf).unwrap();
    settings.push_str("ssl = on\n");
    std::fs::write(&conf, settings).unwrap();
    let www = dir.path().join("www");
    std::fs::create_dir(&www).unwrap();
    std::fs::write(www.join("small"), "hello\n").unwrap();
    let big: Vec<u8> = (0..64u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(www.join("big"), big).unwrap();
    Templates {
        mariadb,
        postgres,
        www,
        dir,
    }
}

/// Starts Redis in `pod` on 6379, for anyone, without persistence.
fn start_redis(mesh: &mut Mesh, pod: &Pod) {
    let mut redis = mesh.lab.cmd(pod, "redis-server");
    redis.args([
        "--port",
        "6379",
        "--bind",
        "0.0.0.0",
        "--protected-mode",
        "no",
    ]);
    redis.args(["--save", "", "--appendonly", "no"]);
    let log = mesh.dir.join("redis.log");
    mesh.lab
        .spawn_until("redis", redis, &log, "Ready to accept")
        .unwrap();
}

/// Starts every server in `pod`, with its own copies of the data directories.
fn start_servers(mesh: &mut Mesh, pod: &Pod, t: &Templates, pg: &Path, py: &Path) {
    let base = mesh.dir.join("servers");
    std::fs::create_dir_all(&base).unwrap();
    let copy = |from: &Path, name: &str| {
        let to = base.join(name);
        sh(Command::new("cp").arg("-a").arg(from).arg(&to));
        to
    };
    let mariadb = copy(&t.mariadb, "mariadb");
    let postgres = copy(&t.postgres, "postgres");
    start_redis(mesh, pod);
    let log = |name: &str| mesh.dir.join(format!("{name}.log"));

    let mut maria = mesh.lab.cmd(pod, "mariadbd");
    maria
        .arg("--no-defaults")
        .arg("--user=root")
        .arg(format!("--datadir={}", mariadb.display()))
        .arg(format!("--socket={}/sock", mariadb.display()))
        .args([
            "--port=3306",
            "--bind-address=0.0.0.0",
            "--skip-grant-tables",
        ])
        .arg("--skip-name-resolve");
    mesh.lab
        .spawn_until("mariadb", maria, &log("mariadb"), "ready for connections")
        .unwrap();

    let mut pgcmd = mesh.lab.cmd(pod, "setpriv");
    pgcmd
        .args([
            "--reuid",
            "postgres",
            "--regid",
            "postgres",
            "--clear-groups",
        ])
        .arg(pg.join("postgres"))
        .arg("-D")
        .arg(&postgres)
        .args(["-c", "listen_addresses=*", "-p", "5432", "-k"])
        .arg(&postgres);
    mesh.lab
        .spawn_until(
            "postgres",
            pgcmd,
            &log("postgres"),
            "ready to accept connections",
        )
        .unwrap();

    let mut h2 = mesh.lab.cmd(pod, "nghttpd");
    h2.args(["--no-tls", "-d"]).arg(&t.www).arg("8080");
    mesh.lab.spawn("nghttpd", h2, &log("nghttpd")).unwrap();

    let mut http = mesh.lab.cmd(pod, "python3");
    http.args(["-m", "http.server", "8000", "--bind", "0.0.0.0", "-d"])
        .arg(&t.www);
    mesh.lab.spawn("http.server", http, &log("http")).unwrap();

    let mut peers = mesh.lab.cmd(pod, py);
    peers.arg(peers_py()).arg("serve");
    mesh.lab
        .spawn_until("peers", peers, &log("peers"), "listening")
        .unwrap();
    // nghttpd and http.server say nothing when ready: wait until their ports answer.
    for (port, version) in [(8080u16, "--http2-prior-knowledge"), (8000, "--http1.1")] {
        Lab::wait_for(Duration::from_secs(10), || {
            run(mesh.lab.cmd(pod, "curl").args([
                "-s",
                version,
                "-o",
                "/dev/null",
                &format!("http://127.0.0.1:{port}/small"),
            ]))
            .map(|_| ())
        })
        .unwrap();
    }
}

/// One client's exchange: what it printed that must match the control, or why it failed.
struct Cell {
    protocol: &'static str,
    outcome: Result<String, String>,
    took: Duration,
    stderr: String,
}

fn client(
    mesh: &Mesh,
    pod: &Pod,
    protocol: &'static str,
    shell: &str,
    digest: fn(&str) -> String,
) -> Cell {
    let started = Instant::now();
    let out = mesh
        .lab
        .cmd(pod, "timeout")
        .args(["60", "sh", "-c", shell])
        .output()
        .unwrap();
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let outcome = if out.status.success() {
        Ok(digest(&stdout))
    } else {
        Err(format!(
            "exit {}: {} {}",
            out.status,
            stdout.trim(),
            stderr.trim()
        ))
    };
    Cell {
        protocol,
        outcome,
        took,
        stderr,
    }
}

fn same(s: &str) -> String {
    s.trim().to_owned()
}

/// h2load's own summary line: requests done, succeeded, failed.
fn h2load_summary(s: &str) -> String {
    s.lines()
        .find(|l| l.trim_start().starts_with("requests:"))
        .map(|l| l.split(',').take(4).collect::<Vec<_>>().join(","))
        .unwrap_or_else(|| s.to_owned())
}

fn redis_pipe(s: &str) -> String {
    s.lines()
        .filter(|l| !l.contains("All data transferred"))
        .map(|l| l.trim().to_owned())
        .collect::<Vec<_>>()
        .join(" | ")
}

fn exercise(mesh: &Mesh, client_pod: &Pod, server: Ipv4Addr, py: &Path) -> Vec<Cell> {
    let s = server.to_string();
    let peer = |client: &str| format!("{} {} {client} {s}", py.display(), peers_py().display());
    vec![
        client(
            mesh,
            client_pod,
            "curl: keep-alive, 64 MiB download",
            &format!("curl -s -o /dev/null -w '%{{http_code}} %{{size_download}} %{{num_connects}}\\n' http://{s}:8000/small http://{s}:8000/big"),
            same,
        ),
        client(
            mesh,
            client_pod,
            "h2load: h2c, 4 connections × 100 streams",
            &format!("h2load -n 4000 -c 4 -m 100 http://{s}:8080/small"),
            h2load_summary,
        ),
        client(
            mesh,
            client_pod,
            "http.client: keep-alive, pipelining, chunked upload, 100-continue (HTTP rule)",
            &peer("http11"),
            same,
        ),
        client(
            mesh,
            client_pod,
            "grpcio: health, 16 MiB unary, streams both ways, deadline",
            &peer("grpc"),
            same,
        ),
        client(
            mesh,
            client_pod,
            "websockets: 100 messages, 1 MiB binary, ping",
            &peer("ws"),
            same,
        ),
        client(
            mesh,
            client_pod,
            "smtplib: greeting (server speaks first), 140 kB mail",
            &peer("smtp"),
            same,
        ),
        client(
            mesh,
            client_pod,
            "TCP half-close: client shuts first, then server shuts first",
            &peer("halfclose"),
            same,
        ),
        client(
            mesh,
            client_pod,
            "Redis pub/sub: a subscriber held open",
            &peer("redis-pubsub"),
            same,
        ),
        client(
            mesh,
            client_pod,
            "redis-cli: PING, SET/GET, 10k pipelined SETs",
            &format!("redis-cli -h {s} PING && redis-cli -h {s} SET k v && redis-cli -h {s} GET k && i=0; while [ $i -lt 10000 ]; do printf 'SET k%d %d\\r\\n' $i $i; i=$((i+1)); done | redis-cli -h {s} --pipe"),
            redis_pipe,
        ),
        client(
            mesh,
            client_pod,
            "mariadb: query (server speaks first), 1 MB row",
            &format!("mariadb -h {s} -P 3306 -u root --skip-ssl -N -e \"SELECT 1+1; SELECT LENGTH(REPEAT('x', 1000000))\""),
            same,
        ),
        client(
            mesh,
            client_pod,
            "psql: sslmode disable, prefer and require, 10 MB COPY",
            &format!("psql 'host={s} user=postgres sslmode=disable' -Atc 'select 1+1' && psql 'host={s} user=postgres sslmode=prefer' -Atc 'select ssl from pg_stat_ssl where pid = pg_backend_pid()' && psql 'host={s} user=postgres sslmode=require' -Atc 'select version from pg_stat_ssl where pid = pg_backend_pid()' && psql 'host={s} user=postgres sslmode=disable' -Atc \"COPY (SELECT repeat('x', 1000) FROM generate_series(1, 10000)) TO STDOUT\" | wc -c"),
            same,
        ),
    ]
}

/// A client pod and a server pod, each meshed as `setup` says.
fn pair(setup: &Setup, name: &str) -> (Mesh, Pod, Pod) {
    let mut mesh = Mesh::new(name, exe()).unwrap();
    let client_pod = mesh.lab.add_pod("client", 1).unwrap();
    let server_pod = mesh.lab.add_pod("server", 2).unwrap();
    for (pod, path, yaml) in [
        (&client_pod, CLIENT, setup.client),
        (&server_pod, SERVER, setup.server),
    ] {
        if let Some(yaml) = yaml {
            let dir = mesh.issue(pod, path).unwrap();
            mesh.init(pod, &[]).unwrap();
            mesh.start_proxy(pod, &dir, yaml).unwrap();
        }
    }
    (mesh, client_pod, server_pod)
}

fn run_setup(setup: &Setup, index: usize, t: &Templates, pg: &Path, py: &Path) -> Vec<Cell> {
    let (mut mesh, client_pod, server_pod) = pair(setup, &format!("compat{index}"));
    start_servers(&mut mesh, &server_pod, t, pg, py);
    exercise(&mesh, &client_pod, server_pod.ip, py)
}

#[test]
fn real_clients_and_servers_behave_through_every_setup_as_unmeshed() {
    let test = "real_clients_and_servers_behave_through_every_setup_as_unmeshed";
    if !root_or_skip(test) {
        return;
    }
    let Some((pg, py)) = tools_or_skip(test) else {
        return;
    };
    let t = templates(&pg);

    let results: Vec<Vec<Cell>> = SETUPS
        .iter()
        .enumerate()
        .map(|(i, setup)| run_setup(setup, i, &t, &pg, &py))
        .collect();

    // The table, as the README shows it.
    let control = &results[0];
    let mut table = format!(
        "| protocol | {} |\n|---|{}\n",
        SETUPS
            .iter()
            .map(|s| s.name)
            .collect::<Vec<_>>()
            .join(" | "),
        "---|".repeat(SETUPS.len())
    );
    let mut differ = Vec::new();
    for (row, cell) in control.iter().enumerate() {
        assert!(
            cell.outcome.is_ok(),
            "the unmeshed control of {} fails: {:?}",
            cell.protocol,
            cell.outcome
        );
        table.push_str(&format!("| {} |", cell.protocol));
        for (setup, cells) in SETUPS.iter().zip(&results) {
            let got = &cells[row];
            if got.outcome == cell.outcome {
                table.push_str(&format!(" ✔ {:.2} s |", got.took.as_secs_f64()));
            } else {
                table.push_str(" ✘ |");
                differ.push(format!(
                    "{} / {}: {:?}, unmeshed: {:?}",
                    cell.protocol, setup.name, got.outcome, cell.outcome
                ));
            }
        }
        table.push('\n');
    }
    println!("{table}");
    let row = |name: &str| {
        control
            .iter()
            .position(|c| c.protocol.starts_with(name))
            .unwrap()
    };
    let unmeshed_to_permissive = SETUPS
        .iter()
        .position(|s| s.name == "unmeshed client, permissive server")
        .unwrap();
    let mariadb = &results[unmeshed_to_permissive][row("mariadb")];
    println!(
        "server-first (MariaDB) from an unmeshed client through a permissive pod: {:.3} s for the whole query, unmeshed {:.3} s",
        mariadb.took.as_secs_f64(),
        control[row("mariadb")].took.as_secs_f64()
    );
    let greeting_after = |cell: &Cell| -> f64 {
        cell.stderr
            .lines()
            .find_map(|l| l.strip_prefix("greeting after "))
            .and_then(|l| l.trim_end_matches(" s").parse().ok())
            .unwrap_or(f64::INFINITY)
    };
    let smtp = greeting_after(&results[unmeshed_to_permissive][row("smtplib")]);
    println!(
        "server-first (SMTP greeting, first connection) from an unmeshed client through a permissive pod: {smtp:.3} s, unmeshed {:.3} s",
        greeting_after(&control[row("smtplib")])
    );
    assert!(
        differ.is_empty(),
        "cells that differ from unmeshed:\n{}",
        differ.join("\n")
    );
    // The greeting waits timeouts.server_first (300 ms), never first_byte (10 s).
    assert!(smtp < 0.5, "SMTP greeting after {smtp} s");
    assert!(
        mariadb.took < control[row("mariadb")].took + Duration::from_secs(2),
        "{:?}",
        mariadb.took
    );
    drop(t.dir);
}

#[test]
fn auto_sends_no_plaintext_to_a_silent_server_when_only_an_icmp_refusal_says_no_proxy() {
    let test = "auto_sends_no_plaintext_to_a_silent_server_when_only_an_icmp_refusal_says_no_proxy";
    if !root_or_skip(test) || tools_or_skip(test).is_none() {
        return;
    }
    let mut mesh = Mesh::new("autoicmp", exe()).unwrap();
    let client = mesh.lab.add_pod("client", 1).unwrap();
    let server = mesh.lab.add_pod("server", 2).unwrap();
    let dir = mesh.issue(&client, CLIENT).unwrap();
    mesh.init(&client, &[]).unwrap();
    mesh.start_proxy(&client, &dir, "").unwrap();
    start_redis(&mut mesh, &server);
    // A router or a node's reject rule, not the server itself, refuses meshlet's port.
    run(mesh.lab.cmd(&server, "iptables").args([
        "-A",
        "INPUT",
        "-p",
        "tcp",
        "--dport",
        "15006",
        "-j",
        "REJECT",
        "--reject-with",
        "icmp-port-unreachable",
    ]))
    .unwrap();

    let out = mesh
        .lab
        .cmd(&client, "redis-cli")
        .args(["-h", &server.ip.to_string(), "PING"])
        .output()
        .unwrap();

    assert_ne!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "PONG",
        "an ICMP refusal is not the destination's answer: no plaintext"
    );
    let proxy_log = log_with(
        &mesh.dir.join("client/proxy.log"),
        &["silence proves nothing"],
    );
    assert!(
        proxy_log.contains("silence proves nothing"),
        "the refusal says why: {proxy_log}"
    );
}

/// What the slow part of the suite holds open, per setup: (what, peers.py client and its
/// arguments). Each runs in the client pod at the same time as the others.
const HELD_OPEN: &[(&str, &str)] = &[
    (
        "HTTP/1.1 keep-alive idle 2 then 8 more minutes (HTTP rule)",
        "idle 120 480",
    ),
    (
        "HTTP/1.1 long-poll answered after 30 s (HTTP rule)",
        "poll 30",
    ),
    (
        "Redis pub/sub subscriber idle 10 minutes",
        "redis-pubsub 600",
    ),
];

/// Connections held idle for minutes behave as unmeshed in every setup (all setups at once:
/// about 10 minutes of waiting). `./test.sh` runs it beside the rest of the suite.
#[test]
#[ignore = "10 minutes of idle connections; ./test.sh runs it in the background of the rest"]
fn connections_held_idle_for_minutes_behave_as_unmeshed() {
    let test = "connections_held_idle_for_minutes_behave_as_unmeshed";
    if !root_or_skip(test) {
        return;
    }
    let Some((_pg, py)) = tools_or_skip(test) else {
        return;
    };
    let results: Vec<Vec<Result<String, String>>> = std::thread::scope(|scope| {
        let running: Vec<_> = SETUPS
            .iter()
            .enumerate()
            .map(|(i, setup)| {
                let py = &py;
                scope.spawn(move || {
                    let (mut mesh, client_pod, server_pod) = pair(setup, &format!("idle{i}"));
                    start_redis(&mut mesh, &server_pod);
                    let mut peers = mesh.lab.cmd(&server_pod, py);
                    peers.arg(peers_py()).arg("serve");
                    let log = mesh.dir.join("peers.log");
                    mesh.lab
                        .spawn_until("peers", peers, &log, "listening")
                        .unwrap();
                    let host = server_pod.ip.to_string();
                    let clients: Vec<_> = HELD_OPEN
                        .iter()
                        .map(|(_, args)| {
                            mesh.lab
                                .cmd(&client_pod, "timeout")
                                .arg("900")
                                .arg(py)
                                .arg(peers_py())
                                .args(args.split(' ').take(1))
                                .arg(&host)
                                .args(args.split(' ').skip(1))
                                .stdout(std::process::Stdio::piped())
                                .stderr(std::process::Stdio::piped())
                                .spawn()
                                .unwrap()
                        })
                        .collect();
                    let outcomes: Vec<_> = clients
                        .into_iter()
                        .map(|c| {
                            let out = c.wait_with_output().unwrap();
                            let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                            if out.status.success() {
                                Ok(stdout)
                            } else {
                                Err(format!(
                                    "exit {}: {stdout} {}",
                                    out.status,
                                    String::from_utf8_lossy(&out.stderr).trim()
                                ))
                            }
                        })
                        .collect();
                    drop(mesh);
                    outcomes
                })
            })
            .collect();
        running.into_iter().map(|r| r.join().unwrap()).collect()
    });

    let control = &results[0];
    let mut differ = Vec::new();
    for (row, (what, _)) in HELD_OPEN.iter().enumerate() {
        assert!(
            control[row].is_ok(),
            "the unmeshed control of {what} fails: {:?}",
            control[row]
        );
        for (setup, outcomes) in SETUPS.iter().zip(&results) {
            let verdict = if outcomes[row] == control[row] {
                "✔"
            } else {
                "✘"
            };
            println!("{what} / {}: {verdict} {:?}", setup.name, outcomes[row]);
            if outcomes[row] != control[row] {
                differ.push(format!(
                    "{what} / {}: {:?}, unmeshed: {:?}",
                    setup.name, outcomes[row], control[row]
                ));
            }
        }
    }
    assert!(
        differ.is_empty(),
        "held-open connections that differ from unmeshed:\n{}",
        differ.join("\n")
    );
}
