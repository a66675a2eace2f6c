//! An attacker's proxy for the security tests: an unmeshed pod holding a valid SVID of its own
//! identity that lies in every answer meshlet's transports accept from a peer. It runs in a
//! thread of the test process that has entered the pod's network namespace, and records what
//! callers sent it.
//!
//! - pooled (HTTP/2 CONNECT) streams naming its own address: `421` with `meshlet-reached`
//!   naming a victim's address; any other stream is served, and its answer names the addresses
//!   of `Lies::reached` in turn as where it arrived;
//! - locate requests: answered with a victim's address and port;
//! - any other stream or mTLS connection: accepted and served as HTTP, `hello from liar`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Pod;

/// What the liar lies about.
pub struct Lies {
    /// Named in the `meshlet-reached` header of its answers, one after the other.
    pub reached: Vec<SocketAddr>,
    /// Its answer to every locate request.
    pub located: SocketAddr,
}

/// What callers sent the liar, one line per event: `connect AUTHORITY`, `locate`, `mesh`.
#[derive(Clone, Default)]
pub struct Seen(Arc<Mutex<Vec<String>>>);

impl Seen {
    fn push(&self, what: String) {
        self.0.lock().unwrap().push(what);
    }
    pub fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

/// Starts the liar in `pod`, listening on `port` with the SVID in `identity` (tls.crt, tls.key).
pub fn start(pod: &Pod, identity: &Path, port: u16, lies: Lies) -> Seen {
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(identity.join("tls.crt"))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
    let key = PrivateKeyDer::from_pem_file(identity.join("tls.key")).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    config.alpn_protocols = vec![b"meshlet-mux/1".to_vec(), b"meshlet/1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let own = SocketAddr::from((pod.ip, port));
    let seen = Seen::default();
    let record = seen.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let lies = Arc::new((lies, std::sync::atomic::AtomicUsize::new(0)));
    super::in_pod(pod, move || async move {
        let listener = tokio::net::TcpListener::bind(("0.0.0.0", port))
            .await
            .unwrap();
        ready_tx.send(()).unwrap();
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, seen, lies) = (acceptor.clone(), record.clone(), lies.clone());
            tokio::spawn(async move {
                let _ = serve(conn, acceptor, seen, lies, own).await;
            });
        }
    });
    ready_rx.recv().unwrap();
    seen
}

async fn serve(
    mut conn: tokio::net::TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    seen: Seen,
    lies: Arc<(Lies, std::sync::atomic::AtomicUsize)>,
    own: SocketAddr,
) -> std::io::Result<()> {
    let mut first = [0u8; 1];
    conn.peek(&mut first).await?;
    if first[0] == 0 {
        let mut request = [0u8; 64];
        let _ = conn.read(&mut request).await?;
        seen.push("locate".into());
        conn.write_all(format!("{}\n", lies.0.located).as_bytes())
            .await?;
        return conn.shutdown().await;
    }
    let tls = acceptor.accept(conn).await?;
    if tls.get_ref().1.alpn_protocol() != Some(b"meshlet-mux/1") {
        seen.push("mesh".into());
        return serve_http(TokioIo::new(tls)).await;
    }
    let service = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
        let (seen, lies) = (seen.clone(), lies.clone());
        async move {
            let authority = req
                .uri()
                .authority()
                .map(|a| a.to_string())
                .unwrap_or_default();
            seen.push(format!("connect {authority}"));
            let mut resp = Response::new(Full::new(Bytes::new()));
            let (lies, turn) = &*lies;
            let n = turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let named = lies.reached[n % lies.reached.len()];
            resp.headers_mut()
                .insert("meshlet-reached", named.to_string().parse().unwrap());
            if authority == own.to_string() {
                *resp.status_mut() = StatusCode::MISDIRECTED_REQUEST;
            } else {
                let upgrade = hyper::upgrade::on(&mut req);
                tokio::spawn(async move {
                    if let Ok(io) = upgrade.await {
                        let _ = serve_http(io).await;
                    }
                });
            }
            Ok::<_, Infallible>(resp)
        }
    });
    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(tls), service)
        .await
        .map_err(std::io::Error::other)
}

async fn serve_http<I>(io: I) -> std::io::Result<()>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(|_req: Request<hyper::body::Incoming>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
            b"hello from liar\n",
        ))))
    });
    hyper::server::conn::http1::Builder::new()
        .serve_connection(io, service)
        .await
        .map_err(std::io::Error::other)
}
