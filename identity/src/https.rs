//! HTTPS for meshlet's control plane. The client makes the few calls meshlet makes itself
//! (the sidecar asking the issuer, the issuer asking the API server): TLS 1.3 (the API server
//! and the issuer both speak it), verified by name against the anchors given, HTTP/1.1, one
//! connection per call (the calls are rare: one per SVID), every call bounded in time and in
//! what it reads. The server half is the accept loop the webhook and the issuer share: every
//! pod can reach them, so connections are counted and handshakes timed.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls_pki_types::{CertificateDer, ServerName};

/// Accepts TLS connections until the process ends and hands each to `serve`: at most
/// `max_connections` open at once (a newcomer beyond them is closed at once), each handshake
/// within `handshake`.
pub async fn serve_tls<F, Fut>(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    max_connections: usize,
    handshake: Duration,
    serve: F,
) where
    F: Fn(tokio_rustls::server::TlsStream<tokio::net::TcpStream>, std::net::SocketAddr) -> Fut
        + Send
        + Sync
        + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let serve = Arc::new(serve);
    let connections = Arc::new(tokio::sync::Semaphore::new(max_connections));
    loop {
        let (conn, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = connections.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection refused: {max_connections} already open");
            continue;
        };
        let (acceptor, serve) = (acceptor.clone(), serve.clone());
        tokio::spawn(async move {
            let _slot = slot;
            match tokio::time::timeout(handshake, acceptor.accept(conn)).await {
                Ok(Ok(tls)) => serve(tls, peer).await,
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

/// A whole answer: status, content type, body.
pub fn reply(
    status: http::StatusCode,
    content_type: &'static str,
    body: String,
) -> http::Response<Full<Bytes>> {
    let mut resp = http::Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    resp
}

/// How long one call may take, connect to the last byte of the answer.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// An HTTPS address: `https://host[:port]`, nothing after it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct HttpsUrl {
    /// As written, for messages.
    pub url: String,
    host: String,
    port: u16,
}

impl std::str::FromStr for HttpsUrl {
    type Err = String;
    fn from_str(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| format!("{url:?}: expected an https:// address"))?;
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
            return Err(format!(
                "{url:?}: expected https://host or https://host:port, without a path"
            ));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(':') && !p.contains(']') => (
                h,
                p.parse::<u16>()
                    .map_err(|_| format!("{url:?}: {p:?} is not a port"))?,
            ),
            _ => (authority, 443),
        };
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        ServerName::try_from(host.to_owned())
            .map_err(|e| format!("{url:?}: {host:?} is not a host name or address: {e}"))?;
        Ok(HttpsUrl {
            url: url.to_owned(),
            host: host.to_owned(),
            port,
        })
    }
}

impl TryFrom<String> for HttpsUrl {
    type Error = String;
    fn try_from(url: String) -> Result<Self, String> {
        url.parse()
    }
}

impl HttpsUrl {
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

/// Calls one HTTPS server, verified with the anchors it was made with.
#[derive(Clone)]
pub struct Client {
    url: HttpsUrl,
    tls: Arc<rustls::ClientConfig>,
}

impl Client {
    /// Fails when an anchor is not a usable CA certificate.
    pub fn new(url: HttpsUrl, anchors: &[CertificateDer<'static>]) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        for anchor in anchors {
            roots
                .add(anchor.clone())
                .map_err(|e| format!("a certificate of the bundle is not a usable anchor: {e}"))?;
        }
        let tls = rustls::ClientConfig::builder_with_provider(crate::crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Client {
            url,
            tls: Arc::new(tls),
        })
    }

    pub fn url(&self) -> &HttpsUrl {
        &self.url
    }

    /// Sends `request` (its path; the host is ours) and reads at most `max_answer` bytes of the
    /// answer. Errors say where it failed: resolving, connecting, TLS, or the exchange.
    pub async fn send(
        &self,
        request: http::Request<Bytes>,
        max_answer: usize,
    ) -> Result<(http::StatusCode, Bytes), String> {
        tokio::time::timeout(CALL_TIMEOUT, self.exchange(request, max_answer))
            .await
            .map_err(|_| format!("no answer within {CALL_TIMEOUT:?}"))?
    }

    async fn exchange(
        &self,
        request: http::Request<Bytes>,
        max_answer: usize,
    ) -> Result<(http::StatusCode, Bytes), String> {
        let target = (self.url.host.as_str(), self.url.port);
        let address = tokio::net::lookup_host(target)
            .await
            .map_err(|e| format!("resolving {}: {e}", self.url.host))?
            .next()
            .ok_or_else(|| format!("{} has no address", self.url.host))?;
        let tcp = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|e| format!("connecting to {address}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(self.url.host.clone()).map_err(|e| e.to_string())?;
        let stream = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {address}: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let (mut parts, body) = request.into_parts();
        let host = match self.url.port {
            443 => self.url.host.clone(),
            port => format!("{}:{port}", self.url.host),
        };
        parts.headers.insert(
            http::header::HOST,
            http::HeaderValue::from_str(&host).map_err(|e| e.to_string())?,
        );
        let answer = sender
            .send_request(http::Request::from_parts(parts, Full::new(body)))
            .await
            .map_err(|e| e.to_string())?;
        let status = answer.status();
        let body = Limited::new(answer.into_body(), max_answer)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        Ok((status, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_https_with_a_host_and_maybe_a_port() {
        let u: HttpsUrl = "https://meshlet-issuer.meshlet-system.svc".parse().unwrap();
        assert_eq!(
            (u.host.as_str(), u.port),
            ("meshlet-issuer.meshlet-system.svc", 443)
        );
        let u: HttpsUrl = "https://198.18.0.9:8443/".parse().unwrap();
        assert_eq!((u.host.as_str(), u.port), ("198.18.0.9", 8443));
        let u: HttpsUrl = "https://[2001:2::9]:8443".parse().unwrap();
        assert_eq!((u.host.as_str(), u.port), ("2001:2::9", 8443));
        for bad in [
            "http://issuer",
            "https://",
            "https://issuer/v1/svid",
            "https://issuer:https",
            "https://user@issuer",
            "issuer:443",
        ] {
            assert!(bad.parse::<HttpsUrl>().is_err(), "{bad} was accepted");
        }
    }
}
