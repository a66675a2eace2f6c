//! `meshlet issuer` as an identity source: the sidecar's half of the issuer's protocol.
//!
//! The key is made here, in memory, and never written anywhere; the issuer sees only a CSR and
//! the pod's service-account token, and answers with the SVID's chain. The issuer is verified
//! with the pod's own trust bundle (the file the issuer publishes as a ConfigMap), by the name
//! in its address. Renewal starts at about half the SVID's remaining life, with jitter, so the
//! pods of a Deployment do not all ask at once; while the issuer cannot be reached the current
//! SVID stays in use and the asking goes on with backoff. A new bundle (a CA rotation) is
//! answered with a renewal, so our own certificate follows the bundle.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use meshlet_defaults::issuer::{CHAIN_CONTENT_TYPE, CSR_CONTENT_TYPE, SVID_PATH};
use rcgen::{CertificateParams, KeyPair};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::bundle::TrustBundles;
use crate::rotation::{self, Trigger, Update};
use crate::source::{parse_certs, Identity, IdentityStore, Part};

/// How long one request may take, connect to answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer read (a chain of a few certificates is a few KiB).
const MAX_ANSWER_BYTES: usize = 64 * 1024;
const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The issuer's address: `https://host[:port]`, nothing after it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct IssuerUrl {
    /// As written, for messages.
    pub url: String,
    host: String,
    port: u16,
}

impl std::str::FromStr for IssuerUrl {
    type Err = String;
    fn from_str(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| format!("{url:?}: the issuer is spoken to over https:// only"))?;
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
        Ok(IssuerUrl {
            url: url.to_owned(),
            host: host.to_owned(),
            port,
        })
    }
}

impl TryFrom<String> for IssuerUrl {
    type Error = String;
    fn try_from(url: String) -> Result<Self, String> {
        url.parse()
    }
}

/// What the sidecar needs to ask the issuer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuerSource {
    pub url: IssuerUrl,
    /// The projected service-account token (audience `meshlet`), re-read for every request:
    /// the kubelet renews it.
    pub token: PathBuf,
    /// The trust bundle: it verifies the issuer and, with the SVID, the mesh's peers.
    pub bundle: PathBuf,
}

/// Why asking the issuer failed; the current SVID (if any) stays in use.
#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    #[error("{}: {reason}", path.display())]
    File { path: PathBuf, reason: String },
    #[error("cannot reach the issuer {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("the issuer {url} refused: {status} {message}")]
    Refused {
        url: String,
        status: u16,
        message: String,
    },
    #[error("the issuer {url} answered with an unusable SVID: {reason}")]
    BadAnswer { url: String, reason: String },
    #[error("making the key or the CSR: {0}")]
    Key(String),
}

impl IssuerSource {
    /// Asks for a new SVID with a new key, once.
    pub async fn request(&self, trust_domain: &str) -> Result<Identity, IssuerError> {
        let bundle_pem = read(&self.bundle, crate::files::MAX_FILE_BYTES)?;
        let anchors = parse_certs(&bundle_pem).map_err(|reason| IssuerError::File {
            path: self.bundle.clone(),
            reason,
        })?;
        let token = read(&self.token, 64 * 1024)?;
        let token = String::from_utf8(token)
            .ok()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty() && !t.contains(char::is_whitespace))
            .ok_or_else(|| IssuerError::File {
                path: self.token.clone(),
                reason: "not a service-account token (empty, or not one line of text)".into(),
            })?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| IssuerError::Key(e.to_string()))?;
        let csr = CertificateParams::default()
            .serialize_request(&key)
            .and_then(|csr| csr.pem())
            .map_err(|e| IssuerError::Key(e.to_string()))?;
        let chain_pem = tokio::time::timeout(
            REQUEST_TIMEOUT,
            self.post(&anchors, &token, csr.into_bytes()),
        )
        .await
        .map_err(|_| self.unreachable(format!("no answer within {REQUEST_TIMEOUT:?}")))??;
        let bad = |reason: String| IssuerError::BadAnswer {
            url: self.url.url.clone(),
            reason,
        };
        let chain = parse_certs(&chain_pem).map_err(bad)?;
        let mut bundles = TrustBundles::default();
        bundles.insert(trust_domain, anchors).map_err(|reason| IssuerError::File {
            path: self.bundle.clone(),
            reason,
        })?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Identity::from_parts(
            chain,
            key,
            bundles,
            trust_domain,
            &crate::crypto_provider(),
        )
        .map_err(|(part, reason)| match part {
            Part::Bundle => IssuerError::File {
                path: self.bundle.clone(),
                reason,
            },
            Part::Cert | Part::Key => bad(reason),
        })
    }

    fn unreachable(&self, reason: String) -> IssuerError {
        IssuerError::Unreachable {
            url: self.url.url.clone(),
            reason,
        }
    }

    async fn post(
        &self,
        anchors: &[rustls_pki_types::CertificateDer<'static>],
        token: &str,
        csr: Vec<u8>,
    ) -> Result<Vec<u8>, IssuerError> {
        let mut roots = rustls::RootCertStore::empty();
        for anchor in anchors {
            roots
                .add(anchor.clone())
                .map_err(|e| IssuerError::File {
                    path: self.bundle.clone(),
                    reason: format!("a certificate of the bundle is not a usable anchor: {e}"),
                })?;
        }
        let tls = rustls::ClientConfig::builder_with_provider(crate::crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| IssuerError::Key(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let address = self.resolve().await?;
        let tcp = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|e| self.unreachable(format!("{address}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(self.url.host.clone())
            .map_err(|e| self.unreachable(e.to_string()))?;
        let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(name, tcp)
            .await
            .map_err(|e| self.unreachable(format!("TLS with {address}: {e}")))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.unreachable(e.to_string()))?;
        tokio::spawn(conn);
        let request = http::Request::post(SVID_PATH)
            .header(http::header::HOST, self.url.host.as_str())
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
            .header(http::header::CONTENT_TYPE, CSR_CONTENT_TYPE)
            .header(http::header::ACCEPT, CHAIN_CONTENT_TYPE)
            .body(Full::new(Bytes::from(csr)))
            .map_err(|e| IssuerError::Key(e.to_string()))?;
        let answer = sender
            .send_request(request)
            .await
            .map_err(|e| self.unreachable(e.to_string()))?;
        let status = answer.status();
        let body = Limited::new(answer.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| self.unreachable(format!("reading the answer: {e}")))?
            .to_bytes();
        if status != http::StatusCode::OK {
            let message = String::from_utf8_lossy(&body[..body.len().min(512)])
                .trim()
                .to_owned();
            return Err(IssuerError::Refused {
                url: self.url.url.clone(),
                status: status.as_u16(),
                message,
            });
        }
        Ok(body.to_vec())
    }

    async fn resolve(&self) -> Result<SocketAddr, IssuerError> {
        let target = (self.url.host.as_str(), self.url.port);
        tokio::net::lookup_host(target)
            .await
            .map_err(|e| self.unreachable(format!("resolving {}: {e}", self.url.host)))?
            .next()
            .ok_or_else(|| self.unreachable(format!("{} has no address", self.url.host)))
    }

    /// Asks until an SVID comes, with backoff: the proxy is not ready before it has one.
    pub async fn first(&self, trust_domain: &str) -> Identity {
        let mut backoff = BACKOFF_START;
        loop {
            match self.request(trust_domain).await {
                Ok(identity) => {
                    info!(id = %identity.id, issuer = %self.url.url, expires = %crate::svid::fmt_time(identity.not_after), "SVID issued");
                    return identity;
                }
                Err(e) => {
                    warn!(error = %e, retry_in = ?backoff, "waiting for an SVID from the issuer")
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Renews the SVID in `store` until the process ends: at about half its remaining life, at
    /// once when the bundle file changes, with backoff while the issuer cannot be reached.
    pub async fn follow<F>(self, store: Arc<IdentityStore>, trust_domain: String, on_update: F)
    where
        F: Fn(Update) + Send + 'static,
    {
        let (changed, mut bundle_changes) = mpsc::channel::<()>(1);
        let bundle = self.bundle.clone();
        let mut last = std::fs::read(&bundle).ok();
        let _watching = crate::watch::watch(&[&self.bundle], move |_| {
            let now = std::fs::read(&bundle).ok();
            if now.is_some() && last != now {
                last = now;
                let _ = changed.try_send(());
            }
        })
        .map_err(|e| warn!(error = %e, "the bundle file is not watched; it is read at each renewal"))
        .ok();
        let mut renew_at = renewal_time(&store.current(), SystemTime::now());
        let mut backoff = BACKOFF_START;
        loop {
            let wait = renew_at
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            let trigger = tokio::select! {
                _ = tokio::time::sleep(wait) => Trigger::Renewal,
                Some(()) = bundle_changes.recv() => Trigger::FileChange,
            };
            match self.request(&trust_domain).await {
                Ok(identity) => {
                    backoff = BACKOFF_START;
                    let update = rotation::apply(&store, Ok(identity), trigger);
                    renew_at = renewal_time(&store.current(), SystemTime::now());
                    on_update(update);
                }
                Err(e) => {
                    let current = store.current();
                    warn!(error = %e, why = trigger.label(), retry_in = ?backoff, seconds_left = current.seconds_left(SystemTime::now()), "SVID not renewed; keeping the current one");
                    rotation::warn_if_expiring(&current);
                    renew_at = SystemTime::now() + backoff;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    on_update(Update::Unavailable);
                }
            }
        }
    }
}

/// When to renew: between 40 % and 60 % of the life left from `now`.
fn renewal_time(identity: &Identity, now: SystemTime) -> SystemTime {
    let left = identity.not_after.duration_since(now).unwrap_or_default();
    let mut byte = [0u8; 1];
    let _ = crate::crypto_provider().secure_random.fill(&mut byte);
    let fraction = 0.4 + 0.2 * (f64::from(byte[0]) / 255.0);
    now + left.mul_f64(fraction)
}

fn read(path: &Path, cap: u64) -> Result<Vec<u8>, IssuerError> {
    crate::files::read_capped(path, cap).map_err(|e| IssuerError::File {
        path: path.to_owned(),
        reason: format!("cannot read: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issuer_address_is_https_with_a_host_and_maybe_a_port() {
        let u: IssuerUrl = "https://meshlet-issuer.meshlet-system.svc".parse().unwrap();
        assert_eq!((u.host.as_str(), u.port), ("meshlet-issuer.meshlet-system.svc", 443));
        let u: IssuerUrl = "https://198.18.0.9:8443/".parse().unwrap();
        assert_eq!((u.host.as_str(), u.port), ("198.18.0.9", 8443));
        let u: IssuerUrl = "https://[2001:2::9]:8443".parse().unwrap();
        assert_eq!((u.host.as_str(), u.port), ("2001:2::9", 8443));
        for bad in [
            "http://issuer",
            "https://",
            "https://issuer/v1/svid",
            "https://issuer:https",
            "https://user@issuer",
            "issuer:443",
        ] {
            assert!(bad.parse::<IssuerUrl>().is_err(), "{bad} was accepted");
        }
    }
}
