//! The demo app: an HTTP server that answers with what it saw, a TCP echo server, and the tiny
//! clients the demo and the tests drive them with (so no curl is needed inside the pods).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Args, Subcommand};
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Args, Debug)]
pub struct AppArgs {
    #[command(subcommand)]
    command: AppCommand,
}

#[derive(Subcommand, Debug)]
enum AppCommand {
    /// HTTP server answering every request with the caller's address and request headers.
    Serve {
        #[arg(long, default_value = "0.0.0.0:8080")]
        listen: SocketAddr,
        #[arg(long, default_value = "app")]
        name: String,
    },
    /// TCP server echoing bytes back; on the caller's FIN it finishes writing and closes.
    Echo {
        #[arg(long, default_value = "0.0.0.0:9000")]
        listen: SocketAddr,
    },
    /// HTTP/1.1 client: one connection, the given paths requested in order (keep-alive).
    Get {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value = "GET")]
        method: String,
        /// extra header, `name: value` (may be repeated)
        #[arg(long)]
        header: Vec<String>,
        #[arg(long, default_value = "5s")]
        timeout: String,
        /// one JSON object per response: {"status": N, "body": "..."}
        #[arg(long)]
        json: bool,
        /// request the paths this many times, each time over a new connection
        #[arg(long, default_value_t = 1)]
        connections: usize,
        paths: Vec<String>,
    },
    /// Accepts connections and prints each one's original destination (SO_ORIGINAL_DST), to
    /// check capture rules without a proxy.
    Origdst {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Sends N bytes to an echo server, half-closes, and checks that exactly they come back.
    Send {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        bytes: usize,
    },
}

pub fn run(args: AppArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match args.command {
            AppCommand::Serve { listen, name } => until_terminated(serve_http(listen, name)).await,
            AppCommand::Echo { listen } => until_terminated(serve_echo(listen)).await,
            AppCommand::Get {
                addr,
                method,
                header,
                timeout,
                json,
                connections,
                paths,
            } => {
                let timeout = parse_secs(&timeout)?;
                let mut results = Vec::new();
                for _ in 0..connections {
                    results.extend(
                        tokio::time::timeout(timeout, get(addr, &method, &header, &paths))
                            .await
                            .with_context(|| {
                                format!("no answer from {addr} within {timeout:?}")
                            })??,
                    );
                }
                for (status, body) in results {
                    if json {
                        println!("{}", serde_json::json!({"status": status, "body": body}));
                        continue;
                    }
                    println!("HTTP {status}");
                    print!("{body}");
                    if !body.ends_with('\n') {
                        println!();
                    }
                }
                Ok(())
            }
            AppCommand::Origdst { listen } => {
                until_terminated(print_original_destinations(listen)).await
            }
            AppCommand::Send { addr, bytes } => {
                let n = send_and_check(addr, bytes).await?;
                println!("echoed {n} bytes intact");
                Ok(())
            }
        }
    })
}

/// Runs a server until SIGTERM or SIGINT, then exits 0. As a container's PID 1 the process has
/// no default signal actions, so without handlers a rollout waits the whole grace period.
async fn until_terminated(
    server: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    tokio::select! {
        result = server => result,
        _ = term.recv() => Ok(()),
        _ = int.recv() => Ok(()),
    }
}

fn parse_secs(text: &str) -> anyhow::Result<Duration> {
    meshlet_defaults::parse_duration(text).map_err(anyhow::Error::msg)
}

/// Starts the HTTP app; answers `hello from NAME` and what it saw.
pub async fn serve_http(listen: SocketAddr, name: String) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    eprintln!("demo app {name} listening on {listen}");
    loop {
        let (conn, peer) = listener.accept().await?;
        let name = name.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let name = name.clone();
                async move { Ok::<_, Infallible>(describe(&name, peer, &req)) }
            });
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(TokioIo::new(conn), service)
                    .await;
        });
    }
}

/// grpc.health.v1 `Check` answered SERVING (an encoded HealthCheckResponse{status: 1} in one
/// uncompressed gRPC frame), so probes of gRPC apps can be tested against the demo app.
fn grpc_serving() -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(&[0, 0, 0, 0, 2, 0x08, 0x01])));
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", http::HeaderValue::from_static("0"));
    resp
}

fn describe(name: &str, peer: SocketAddr, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() == "/grpc.health.v1.Health/Check" {
        return grpc_serving();
    }
    let mut body = format!(
        "hello from {name}\ncaller address: {peer}\nrequest: {} {}\n",
        req.method(),
        req.uri()
    );
    for (k, v) in req.headers() {
        body.push_str(&format!(
            "header {}: {}\n",
            k,
            v.to_str().unwrap_or("(binary)")
        ));
    }
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    // `/status/N` answers with status N, for tests of what a caller makes of failures.
    if let Some(code) = req
        .uri()
        .path()
        .strip_prefix("/status/")
        .and_then(|c| c.parse::<u16>().ok())
        .and_then(|c| http::StatusCode::from_u16(c).ok())
    {
        *resp.status_mut() = code;
    }
    resp
}

async fn print_original_destinations(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    eprintln!("origdst listening on {listen}");
    loop {
        let (conn, peer) = listener.accept().await?;
        let sock = socket2::SockRef::from(&conn);
        let dst = if listen.is_ipv4() {
            sock.original_dst_v4()
        } else {
            sock.original_dst_v6()
        };
        match dst.map(|a| a.as_socket()) {
            Ok(Some(dst)) => eprintln!("from {peer} original destination {dst}"),
            Ok(None) | Err(_) => eprintln!("from {peer} original destination none"),
        }
    }
}

async fn serve_echo(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    eprintln!("echo listening on {listen}");
    loop {
        let (mut conn, _) = listener.accept().await?;
        tokio::spawn(async move {
            let (mut r, mut w) = conn.split();
            if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                let _ = w.shutdown().await;
            }
        });
    }
}

/// Requests `paths` in order over one HTTP/1.1 connection; returns (status, body) of each.
pub async fn get(
    addr: SocketAddr,
    method: &str,
    headers: &[String],
    paths: &[String],
) -> anyhow::Result<Vec<(u16, String)>> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut out = Vec::new();
    for path in paths {
        let mut req = Request::builder()
            .method(method)
            .uri(path.as_str())
            .header("host", addr.to_string());
        for h in headers {
            let Some((k, v)) = h.split_once(':') else {
                bail!("--header {h:?}: expected `name: value`")
            };
            req = req.header(k.trim(), v.trim());
        }
        let resp = sender
            .send_request(req.body(Empty::<Bytes>::new())?)
            .await
            .context("request failed")?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        out.push((status, String::from_utf8_lossy(&body).into_owned()));
    }
    Ok(out)
}

/// Writes `n` patterned bytes, half-closes, reads the echo until EOF and compares.
pub async fn send_and_check(addr: SocketAddr, n: usize) -> anyhow::Result<usize> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    let (mut r, mut w) = stream.into_split();
    let writer = tokio::spawn(async move {
        let chunk: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
        let mut left = n;
        while left > 0 {
            let k = left.min(chunk.len());
            w.write_all(&chunk[..k]).await?;
            left -= k;
        }
        w.shutdown().await?;
        Ok::<_, std::io::Error>(())
    });
    let mut got = 0usize;
    let mut buf = vec![0u8; 65536];
    loop {
        let k = r.read(&mut buf).await?;
        if k == 0 {
            break;
        }
        for (i, b) in buf[..k].iter().enumerate() {
            if *b != (((got + i) % 65536) % 251) as u8 {
                bail!("byte {} differs after the round trip", got + i);
            }
        }
        got += k;
    }
    writer.await??;
    if got != n {
        bail!("sent {n} bytes but {got} came back");
    }
    Ok(got)
}
