//! The app's kubelet probes, run by the proxy. Injection rewrites each httpGet, tcpSocket or
//! grpc probe of an app container to `GET /app-health/<container>/<kind>` on the admin port and
//! hands the original here (`admin.app_probes`); the admin server runs it against the app over
//! loopback — the proxy's own traffic, never captured — and answers with the result. The
//! kubelet's plaintext request therefore never reaches an app port, and strict mode can stay
//! strict.
//!
//! The checks follow the kubelet's rules: HTTP succeeds on a status from 200 to 399, TCP when
//! the connection opens, gRPC when `grpc.health.v1.Health/Check` answers SERVING.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use serde::Deserialize;
use tokio::net::TcpStream;

use meshlet_identity::grpc;

/// One probe as configured: the port its original resolves to and what to run there.
#[derive(Clone, Debug, Deserialize)]
#[serde(try_from = "RawAppProbe")]
pub struct AppProbe {
    pub port: u16,
    pub check: Check,
    pub timeout: Duration,
}

#[derive(Clone, Debug)]
pub enum Check {
    Http {
        path: PathAndQuery,
        headers: Vec<(HeaderName, HeaderValue)>,
    },
    Tcp,
    Grpc {
        service: String,
    },
}

/// `{port, probe}`: `probe` is the container's original probe as Kubernetes writes it
/// (other fields of it, like periodSeconds, are the kubelet's and ignored here).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAppProbe {
    port: u16,
    probe: KubeProbe,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct KubeProbe {
    http_get: Option<KubeHttpGet>,
    tcp_socket: Option<serde::de::IgnoredAny>,
    grpc: Option<KubeGrpc>,
    timeout_seconds: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct KubeHttpGet {
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    scheme: Option<String>,
    #[serde(default)]
    http_headers: Vec<KubeHeader>,
}

#[derive(Deserialize)]
struct KubeHeader {
    name: String,
    value: String,
}

#[derive(Deserialize)]
struct KubeGrpc {
    #[serde(default)]
    service: Option<String>,
}

/// The kubelet's own limit for a probe timeout is far above this; a probe is a quick check.
const MAX_TIMEOUT_SECONDS: u64 = 600;

impl TryFrom<RawAppProbe> for AppProbe {
    type Error = String;

    fn try_from(raw: RawAppProbe) -> Result<Self, String> {
        if raw.port == 0 {
            return Err("port 0 is not a port".into());
        }
        let seconds = raw.probe.timeout_seconds.unwrap_or(1);
        if !(1..=MAX_TIMEOUT_SECONDS).contains(&seconds) {
            return Err(format!(
                "timeoutSeconds {seconds} is outside 1-{MAX_TIMEOUT_SECONDS}"
            ));
        }
        let check = match (raw.probe.http_get, raw.probe.tcp_socket, raw.probe.grpc) {
            (Some(h), None, None) => {
                if h.scheme.as_deref().is_some_and(|s| s != "HTTP") {
                    return Err("only HTTP httpGet probes are run by the proxy".into());
                }
                let path = h.path.unwrap_or_else(|| "/".into());
                let path = if path.starts_with('/') {
                    path
                } else {
                    format!("/{path}")
                };
                let path = path
                    .parse::<PathAndQuery>()
                    .map_err(|e| format!("httpGet.path {path:?}: {e}"))?;
                let headers = h
                    .http_headers
                    .into_iter()
                    .map(|KubeHeader { name, value }| {
                        let n = name
                            .parse::<HeaderName>()
                            .map_err(|e| format!("httpHeaders name {name:?}: {e}"))?;
                        let v = value
                            .parse::<HeaderValue>()
                            .map_err(|e| format!("httpHeaders {name} value: {e}"))?;
                        Ok((n, v))
                    })
                    .collect::<Result<_, String>>()?;
                Check::Http { path, headers }
            }
            (None, Some(_), None) => Check::Tcp,
            (None, None, Some(g)) => Check::Grpc {
                service: g.service.unwrap_or_default(),
            },
            _ => return Err("a probe needs exactly one of httpGet, tcpSocket, grpc".into()),
        };
        Ok(AppProbe {
            port: raw.port,
            check,
            timeout: Duration::from_secs(seconds),
        })
    }
}

/// grpc.health.v1 messages.
mod health {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct HealthCheckRequest {
        #[prost(string, tag = "1")]
        pub service: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct HealthCheckResponse {
        #[prost(int32, tag = "1")]
        pub status: i32,
    }
    pub const SERVING: i32 = 1;
}

impl AppProbe {
    /// Runs the probe against the app on loopback: Ok(what it saw) or Err(why it failed).
    pub async fn run(&self) -> Result<String, String> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        match tokio::time::timeout(self.timeout, self.run_at(addr)).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "no answer from {addr} within {}s",
                self.timeout.as_secs()
            )),
        }
    }

    async fn run_at(&self, addr: SocketAddr) -> Result<String, String> {
        let conn = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        match &self.check {
            Check::Tcp => Ok(format!("connected to {addr}")),
            Check::Http { path, headers } => http_get(conn, addr, path, headers).await,
            Check::Grpc { service } => grpc_check(conn, addr, service).await,
        }
    }
}

async fn http_get(
    conn: TcpStream,
    addr: SocketAddr,
    path: &PathAndQuery,
    headers: &[(HeaderName, HeaderValue)],
) -> Result<String, String> {
    let (mut sender, driver) = hyper::client::conn::http1::handshake(TokioIo::new(conn))
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    tokio::spawn(driver);
    let mut req = http::Request::get(path.as_str())
        .header(http::header::HOST, addr.to_string())
        .header(http::header::USER_AGENT, "kube-probe (meshlet)")
        .header(http::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request for {path}: {e}"))?;
    for (name, value) in headers {
        req.headers_mut().insert(name.clone(), value.clone());
    }
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("GET {path} on {addr}: {e}"))?;
    let status = resp.status();
    if (200..400).contains(&status.as_u16()) {
        Ok(format!("GET {path} on {addr}: {status}"))
    } else {
        Err(format!("GET {path} on {addr}: {status}"))
    }
}

async fn grpc_check(conn: TcpStream, addr: SocketAddr, service: &str) -> Result<String, String> {
    let (mut sender, driver) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(conn))
            .await
            .map_err(|e| format!("HTTP/2 with {addr}: {e}"))?;
    tokio::spawn(driver);
    let body = grpc::frame(&health::HealthCheckRequest {
        service: service.to_owned(),
    });
    let req = http::Request::post(format!("http://{addr}/grpc.health.v1.Health/Check"))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header("te", "trailers")
        .body(Full::new(body))
        .map_err(|e| format!("gRPC request: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("gRPC Health/Check on {addr}: {e}"))?;
    if let Some(err) = grpc::failure(resp.headers()) {
        return Err(format!("gRPC Health/Check on {addr}: {err}"));
    }
    let collected = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("gRPC Health/Check on {addr}: {e}"))?;
    if let Some(err) = collected.trailers().and_then(grpc::failure) {
        return Err(format!("gRPC Health/Check on {addr}: {err}"));
    }
    let mut data = BytesMut::from(collected.to_bytes().as_ref());
    let message = grpc::take_message(&mut data, 64 << 10)
        .map_err(|e| format!("gRPC Health/Check on {addr}: {e}"))?
        .ok_or_else(|| format!("gRPC Health/Check on {addr}: truncated answer"))?;
    let status = health::HealthCheckResponse::decode(message)
        .map_err(|e| format!("gRPC Health/Check on {addr}: {e}"))?
        .status;
    if status == health::SERVING {
        Ok(format!("gRPC Health/Check on {addr}: SERVING"))
    } else {
        Err(format!(
            "gRPC Health/Check on {addr}: status {status}, not SERVING"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<AppProbe, String> {
        serde_norway::from_str::<AppProbe>(yaml).map_err(|e| e.to_string())
    }

    #[test]
    fn the_kubernetes_probe_is_parsed_into_a_check() {
        let p = parse(
            "port: 8080\nprobe: {httpGet: {path: healthz, port: http, httpHeaders: [{name: X-Probe, value: a}]}, timeoutSeconds: 3, periodSeconds: 5}",
        )
        .unwrap();
        assert_eq!(p.port, 8080);
        assert_eq!(p.timeout, Duration::from_secs(3));
        match p.check {
            Check::Http { path, headers } => {
                assert_eq!(path.as_str(), "/healthz");
                assert_eq!(headers[0].0, "x-probe");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse("port: 9090\nprobe: {grpc: {port: 9090}}")
                .unwrap()
                .check,
            Check::Grpc { .. }
        ));
    }

    #[test]
    fn probes_the_proxy_cannot_run_are_refused_at_start() {
        for bad in [
            "port: 8080\nprobe: {exec: {command: [true]}}",
            "port: 8080\nprobe: {httpGet: {port: 8443, scheme: HTTPS}}",
            "port: 8080\nprobe: {tcpSocket: {port: 1}, httpGet: {port: 1}}",
            "port: 0\nprobe: {tcpSocket: {port: 1}}",
            "port: 8080\nprobe: {tcpSocket: {port: 1}, timeoutSeconds: 0}",
            "port: 8080\nprobe: {httpGet: {path: \"/a b\"}}",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
