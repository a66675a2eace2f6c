//! The CA the issuer signs with and the bundle it publishes, read from files (the Secret
//! `meshlet-ca` mounted) and followed: a new set is swapped in whole, or not at all.
//!
//! The one rule that makes a CA rotation safe is checked here: the signing CA must be in the
//! bundle. A new CA that the pods do not trust yet is never used, so the rotation's steps
//! cannot be taken out of order (deploy/README.md, "Rotating the CA").

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use meshlet_identity::issue::{Ca, LeafSpec};
use meshlet_identity::SpiffeId;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;
use tracing::{info, warn};
use x509_parser::prelude::{FromDer, X509Certificate};

/// How long the issuer's own serving certificate lives; it is made again every hour.
const SERVING_LIFETIME: Duration = Duration::from_secs(24 * 3600);
const SERVING_REFRESH: Duration = Duration::from_secs(3600);

/// The files of the CA: its certificate and key, and the bundle to publish.
#[derive(Clone, Debug)]
pub struct CaFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub bundle: PathBuf,
}

/// A CA and bundle that belong together.
pub struct Signing {
    ca: Ca,
    /// The bundle as published (PEM), and its certificates.
    pub bundle_pem: String,
    pub anchors: Vec<CertificateDer<'static>>,
    /// The signing CA's subject, as certificates it signs name their issuer.
    subject: Vec<u8>,
}

impl Signing {
    /// Checks that the parts fit: the key is the certificate's, the certificate is a CA of our
    /// trust domain's bundle.
    pub fn from_pem(cert: &str, key: &str, bundle: &str) -> Result<Self, String> {
        let ca = Ca::from_pem(cert, key).map_err(|e| e.to_string())?;
        let anchors = meshlet_identity::source::parse_certs(bundle.as_bytes())
            .map_err(|e| format!("the bundle: {e}"))?;
        let signing = CertificateDer::from_pem_slice(cert.as_bytes())
            .map_err(|e| format!("the CA certificate: {e}"))?;
        if !anchors.contains(&signing) {
            return Err("the signing CA is not in the bundle: the pods would refuse what it signs; add it to the bundle first".into());
        }
        let subject = x509_parser::parse_x509_certificate(signing.as_ref())
            .map_err(|e| format!("the CA certificate: {e}"))?
            .1
            .subject()
            .as_raw()
            .to_vec();
        Ok(Signing {
            ca,
            bundle_pem: bundle.to_owned(),
            anchors,
            subject,
        })
    }

    fn read(files: &CaFiles) -> Result<Self, String> {
        let read = |p: &PathBuf| {
            meshlet_identity::files::read_text(p).map_err(|e| format!("{}: {e}", p.display()))
        };
        Self::from_pem(
            &read(&files.cert)?,
            &read(&files.key)?,
            &read(&files.bundle)?,
        )
    }
}

/// The current signing set and the serving certificate made from it.
pub struct Authority {
    signing: ArcSwap<Signing>,
    serving: ArcSwap<CertifiedKey>,
    serving_names: Vec<String>,
    bundle_changes: tokio::sync::watch::Sender<String>,
    /// Counts every swap of the signing set (a new CA with the same bundle too).
    signing_changes: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").finish_non_exhaustive()
    }
}

impl Authority {
    /// `serving_names`: the DNS names and addresses the issuer is reached by.
    pub fn new(signing: Signing, serving_names: Vec<String>) -> Result<Arc<Self>, String> {
        let serving = serving_key(&signing.ca, &serving_names)?;
        let (bundle_changes, _) = tokio::sync::watch::channel(signing.bundle_pem.clone());
        Ok(Arc::new(Authority {
            signing: ArcSwap::from_pointee(signing),
            serving: ArcSwap::from_pointee(serving),
            serving_names,
            bundle_changes,
            signing_changes: tokio::sync::watch::channel(0).0,
        }))
    }

    /// Reads the files now (a start-up error names the file).
    pub fn load(files: &CaFiles, serving_names: Vec<String>) -> Result<Arc<Self>, String> {
        Self::new(Signing::read(files)?, serving_names)
    }

    /// The published bundle, now and whenever it changes.
    pub fn bundle(&self) -> tokio::sync::watch::Receiver<String> {
        self.bundle_changes.subscribe()
    }

    /// Changes whenever the signing set is swapped, the CA or the bundle.
    pub fn signing_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.signing_changes.subscribe()
    }

    /// The published bundle as it is now.
    pub fn current_bundle(&self) -> String {
        self.signing.load().bundle_pem.clone()
    }

    /// Signs an SVID for `id` and the CSR's key: the chain, PEM.
    pub fn issue(
        &self,
        id: &SpiffeId,
        key: &rcgen::PublicKey,
        ttl: Duration,
    ) -> Result<String, String> {
        let spec = LeafSpec::svid(id, ttl);
        self.signing
            .load()
            .ca
            .issue_for_key(&spec, key)
            .map_err(|e| e.to_string())
    }

    /// Signs any leaf (the webhook's serving certificate) with a fresh key.
    pub fn issue_leaf(&self, spec: &LeafSpec) -> Result<meshlet_identity::issue::Pem, String> {
        self.signing
            .load()
            .ca
            .issue(spec)
            .map_err(|e| e.to_string())
    }

    /// True when the first certificate of `pem` was signed by the current CA and has more than
    /// `min_left` before it expires.
    pub fn signed_recently(&self, pem: &[u8], min_left: Duration) -> bool {
        let Some((issuer, not_after)) = issuer_and_expiry(pem) else {
            return false;
        };
        let now = OffsetDateTime::now_utc().unix_timestamp();
        issuer == self.signing.load().subject && not_after - now > min_left.as_secs() as i64
    }

    /// Swaps in a new signing set and makes a serving certificate from it.
    pub fn replace(&self, signing: Signing) -> Result<(), String> {
        let serving = serving_key(&signing.ca, &self.serving_names)?;
        let bundle = signing.bundle_pem.clone();
        self.signing.store(Arc::new(signing));
        self.serving.store(Arc::new(serving));
        self.bundle_changes.send_if_modified(|b| {
            let changed = *b != bundle;
            *b = bundle;
            changed
        });
        self.signing_changes.send_modify(|n| *n += 1);
        Ok(())
    }

    /// Follows the files (directory events, SIGHUP, every 30 s) and renews the serving
    /// certificate every hour, until the process ends.
    pub fn follow(self: &Arc<Self>, files: CaFiles) -> Result<(), String> {
        let me = self.clone();
        let mut last = bytes_of(&files);
        let watched = [files.cert.clone(), files.key.clone(), files.bundle.clone()];
        let paths: Vec<&std::path::Path> = watched.iter().map(PathBuf::as_path).collect();
        meshlet_identity::watch::watch(&paths, move |_| {
            let now = bytes_of(&files);
            if now == last {
                return;
            }
            last = now;
            match Signing::read(&files).and_then(|s| me.replace(s)) {
                Ok(()) => {
                    info!(cert = %files.cert.display(), bundle = %files.bundle.display(), "CA or bundle reloaded: new SVIDs are signed with it")
                }
                Err(e) => warn!(error = %e, "CA or bundle not reloaded; keeping the current ones"),
            }
        })?;
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SERVING_REFRESH);
            tick.tick().await;
            loop {
                tick.tick().await;
                match serving_key(&me.signing.load().ca, &me.serving_names) {
                    Ok(key) => me.serving.store(Arc::new(key)),
                    Err(e) => warn!(error = %e, "serving certificate not renewed"),
                }
            }
        });
        Ok(())
    }
}

fn bytes_of(files: &CaFiles) -> Option<(Vec<u8>, Vec<u8>, Vec<u8>)> {
    Some((
        std::fs::read(&files.cert).ok()?,
        std::fs::read(&files.key).ok()?,
        std::fs::read(&files.bundle).ok()?,
    ))
}

impl rustls::server::ResolvesServerCert for Authority {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.serving.load_full())
    }
}

/// The issuer's serving certificate: its names, serverAuth only, and no SPIFFE ID, so it is
/// never an identity in the mesh.
fn serving_key(ca: &Ca, names: &[String]) -> Result<CertifiedKey, String> {
    let spec = LeafSpec::server(names, SERVING_LIFETIME);
    let pem = ca
        .issue(&spec)
        .map_err(|e| format!("the serving certificate: {e}"))?;
    let chain = meshlet_identity::source::parse_certs(pem.cert.as_bytes())?;
    let key = PrivateKeyDer::from_pem_slice(pem.key.as_bytes()).map_err(|e| e.to_string())?;
    CertifiedKey::from_der(chain, key, &meshlet_identity::crypto_provider())
        .map_err(|e| e.to_string())
}

/// The issuer and expiry of the first certificate of a PEM chain.
fn issuer_and_expiry(pem: &[u8]) -> Option<(Vec<u8>, i64)> {
    let der = meshlet_identity::source::parse_certs(pem).ok()?;
    let (_, cert) = X509Certificate::from_der(der.first()?.as_ref()).ok()?;
    Some((
        cert.issuer().as_raw().to_vec(),
        cert.validity().not_after.timestamp(),
    ))
}
