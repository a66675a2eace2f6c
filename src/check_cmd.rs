//! `meshlet check` (run inside a meshed pod: `kubectl exec POD -c meshlet -- meshlet check`)
//! and `meshlet wait-ready` (the classic sidecar's postStart hook). One line per check, with
//! what to do when it fails; the exit code is 1 when any check fails.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use clap::Args;

use crate::Failure;

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// The proxy's admin address.
    #[arg(long, default_value = "127.0.0.1:15021")]
    admin: SocketAddr,
    /// The self-check port the capture rules redirect to the admin port.
    #[arg(long, default_value_t = meshlet_defaults::CHECK_PORT)]
    check_port: u16,
    /// An identity with less time left than this fails the check.
    #[arg(long, default_value = "5m", value_parser = meshlet_defaults::parse_duration)]
    min_validity: Duration,
}

#[derive(Args, Debug)]
pub struct WaitReadyArgs {
    /// The proxy's admin address.
    #[arg(long, default_value = "127.0.0.1:15021")]
    admin: SocketAddr,
    /// Give up after this long (exit 1).
    #[arg(long, default_value = "120s", value_parser = meshlet_defaults::parse_duration)]
    timeout: Duration,
}

/// The outcome of one check: what was seen, or what is wrong and how to fix it.
type Verdict = Result<String, (String, String)>;

pub fn run(args: CheckArgs) -> Result<(), Failure> {
    let checks: [(&str, Verdict); 3] = [
        ("proxy", ready(args.admin)),
        ("capture", capture(args.check_port)),
        ("identity", identity(&args)),
    ];
    let mut failed = 0;
    for (name, verdict) in checks {
        match verdict {
            Ok(seen) => println!("[ok]   {name:<9} {seen}"),
            Err((wrong, fix)) => {
                failed += 1;
                println!("[FAIL] {name:<9} {wrong}\n       {:<9} fix: {fix}", "");
            }
        }
    }
    if failed > 0 {
        return Err(Failure::Runtime(format!("{failed} check(s) failed")));
    }
    Ok(())
}

pub fn wait_ready(args: WaitReadyArgs) -> Result<(), Failure> {
    let start = Instant::now();
    loop {
        match get(args.admin, "/ready") {
            Ok((200, _)) => return Ok(()),
            result if start.elapsed() >= args.timeout => {
                let last = match result {
                    Ok((status, _)) => format!("/ready answered {status}"),
                    Err(e) => e,
                };
                return Err(Failure::Runtime(format!(
                    "the proxy was not ready within {}s ({last})",
                    args.timeout.as_secs()
                )));
            }
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn ready(admin: SocketAddr) -> Verdict {
    let logs = "see `kubectl logs POD -c meshlet` for why".to_owned();
    match get(admin, "/ready") {
        Ok((200, _)) => Ok(format!("ready ({admin}/ready answered 200)")),
        Ok((status, body)) => Err((
            format!("not ready: /ready answered {status} {}", body.trim()),
            logs,
        )),
        Err(e) => Err((format!("the admin server does not answer: {e}"), logs)),
    }
}

fn capture(check_port: u16) -> Verdict {
    let probe = SocketAddr::from(([127, 0, 0, 1], check_port));
    match get(probe, "/live") {
        Ok((200, _)) => Ok(format!(
            "rules installed and run: a test connection to {probe} was redirected to the proxy"
        )),
        Ok((status, _)) => Err((
            format!("{probe} answered {status}, not the proxy's /live"),
            format!("something else listens on port {check_port}; the capture rules may be missing"),
        )),
        Err(e) => Err((
            format!("a test connection to {probe} was not redirected ({e})"),
            "the capture rules are not installed: did the meshlet-init container run (it needs NET_ADMIN and NET_RAW)? `kubectl logs POD -c meshlet-init`".into(),
        )),
    }
}

fn identity(args: &CheckArgs) -> Verdict {
    let fix = "see `kubectl logs POD -c meshlet`; check the identity volume (issuer token and bundle, Secret, csi-driver-spiffe or SPIRE)";
    let (status, text) = get(args.admin, "/identity")
        .map_err(|e| (format!("cannot read /identity: {e}"), fix.to_owned()))?;
    if status != 200 {
        return Err((format!("/identity answered {status}"), fix.to_owned()));
    }
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
            .map(str::trim)
    };
    let (Some(id), Some(source), Some(seconds_left)) = (
        field("id"),
        field("source"),
        field("seconds_left").and_then(|v| v.parse::<i64>().ok()),
    ) else {
        return Err(("the proxy reports no identity".to_owned(), fix.to_owned()));
    };
    let left = Duration::from_secs(seconds_left.max(0).unsigned_abs());
    if left < args.min_validity {
        return Err((
            format!("{id} from {source} has {} left", human(left)),
            "the certificate is not being renewed: check the issuer (meshlet issuer, cert-manager, SPIRE) or the Secret".into(),
        ));
    }
    Ok(format!("{id} from {source}, {} left", human(left)))
}

fn human(d: Duration) -> String {
    meshlet_identity::inspect::human(i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A plain HTTP/1.0 GET: (status, body). The admin server is local; two seconds is plenty.
fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    const LIMIT: u64 = 1 << 20;
    let timeout = Duration::from_secs(2);
    let mut conn =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("{addr}: {e}"))?;
    let _ = conn.set_read_timeout(Some(timeout));
    let _ = conn.set_write_timeout(Some(timeout));
    conn.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .map_err(|e| format!("{addr}: {e}"))?;
    let mut text = String::new();
    conn.take(LIMIT)
        .read_to_string(&mut text)
        .map_err(|e| format!("{addr}: {e}"))?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("{addr}: not an HTTP answer"))?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok((status, body.to_owned()))
}
