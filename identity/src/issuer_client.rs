//! `meshlet issuer` as an identity source: the sidecar's half of the issuer's protocol.
//!
//! The key is made here, in memory, and never written anywhere; the issuer sees only a CSR and
//! the pod's service-account token, and answers with the SVID's chain. The issuer is verified
//! with the pod's own trust bundle (the file the issuer publishes as a ConfigMap), by the name
//! in its address. Renewal starts at about half the SVID's remaining life, with jitter, so the
//! pods of a Deployment do not all ask at once; while the issuer cannot be reached the current
//! SVID stays in use and the asking goes on with backoff. A new bundle (a CA rotation) is
//! answered with a renewal, so our own certificate follows the bundle.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use meshlet_defaults::issuer::{CHAIN_CONTENT_TYPE, CSR_CONTENT_TYPE, SVID_PATH};
use rcgen::{CertificateParams, KeyPair};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::bundle::TrustBundles;
use crate::https;
pub use crate::https::HttpsUrl;
use crate::rotation::{self, Trigger, Update};
use crate::source::{parse_certs, Identity, IdentityStore, Part};

/// The largest answer read (a chain of a few certificates is a few KiB).
const MAX_ANSWER_BYTES: usize = 64 * 1024;
const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// What the sidecar needs to ask the issuer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuerSource {
    pub url: HttpsUrl,
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
        let chain_pem = self.post(&anchors, &token, csr.into_bytes()).await?;
        let bad = |reason: String| IssuerError::BadAnswer {
            url: self.url.url.clone(),
            reason,
        };
        let chain = parse_certs(&chain_pem).map_err(bad)?;
        let mut bundles = TrustBundles::default();
        bundles
            .insert(trust_domain, anchors)
            .map_err(|reason| IssuerError::File {
                path: self.bundle.clone(),
                reason,
            })?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Identity::from_parts(chain, key, bundles, trust_domain, &crate::crypto_provider()).map_err(
            |(part, reason)| match part {
                Part::Bundle => IssuerError::File {
                    path: self.bundle.clone(),
                    reason,
                },
                Part::Cert | Part::Key => bad(reason),
            },
        )
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
        let client =
            https::Client::new(self.url.clone(), anchors).map_err(|reason| IssuerError::File {
                path: self.bundle.clone(),
                reason,
            })?;
        let request = http::Request::post(SVID_PATH)
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
            .header(http::header::CONTENT_TYPE, CSR_CONTENT_TYPE)
            .header(http::header::ACCEPT, CHAIN_CONTENT_TYPE)
            .body(Bytes::from(csr))
            .map_err(|e| IssuerError::Key(e.to_string()))?;
        let (status, body) = client
            .send(request, MAX_ANSWER_BYTES)
            .await
            .map_err(|reason| self.unreachable(reason))?;
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
        .map_err(
            |e| warn!(error = %e, "the bundle file is not watched; it is read at each renewal"),
        )
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
