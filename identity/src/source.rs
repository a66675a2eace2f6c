//! Where our own SVID and trust bundle come from, and the store that lets them change at runtime.
//!
//! The store is read on every handshake (certificate resolvers and verifiers hold it), so
//! swapping in a new [`Identity`] affects new handshakes only; established connections keep
//! the keys they negotiated.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::bundle::TrustBundles;
use crate::spiffe_id::SpiffeId;
use crate::svid;
use crate::verify::{verify_peer, Usage};

/// The three files of a file-based identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityFiles {
    /// Leaf first, then intermediates.
    pub cert: PathBuf,
    /// PKCS#8, SEC1 or PKCS#1.
    pub key: PathBuf,
    /// Trust anchors of our trust domain.
    pub bundle: PathBuf,
}

impl IdentityFiles {
    /// `tls.crt`, `tls.key`, `ca.crt` in `dir`: a Kubernetes TLS Secret or csi-driver-spiffe mount.
    pub fn in_dir(dir: &Path) -> Self {
        IdentityFiles {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
            bundle: dir.join("ca.crt"),
        }
    }
}

/// A loaded, validated identity: our SVID, its key, and the bundles we trust.
pub struct Identity {
    pub id: SpiffeId,
    pub certified_key: Arc<CertifiedKey>,
    pub bundles: TrustBundles,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("id", &self.id.as_str())
            .field("not_after", &svid::fmt_time(self.not_after))
            .finish_non_exhaustive()
    }
}

/// Loading failed; `file` says which file, `reason` why.
#[derive(Debug, thiserror::Error)]
#[error("{}: {reason}", file.display())]
pub struct LoadError {
    pub file: PathBuf,
    pub reason: String,
}

impl Identity {
    /// Reads and validates the three files. Nothing partial is ever returned.
    pub fn load(
        files: &IdentityFiles,
        trust_domain: &str,
        provider: &CryptoProvider,
    ) -> Result<Self, LoadError> {
        let read = |p: &Path| {
            crate::files::read_capped(p, crate::files::MAX_FILE_BYTES).map_err(|e| LoadError {
                file: p.to_owned(),
                reason: format!("cannot read: {e}"),
            })
        };
        let (cert, key, bundle) = (read(&files.cert)?, read(&files.key)?, read(&files.bundle)?);
        Self::from_pem(&cert, &key, &bundle, trust_domain, provider).map_err(|(which, reason)| {
            LoadError {
                file: match which {
                    Part::Cert => files.cert.clone(),
                    Part::Key => files.key.clone(),
                    Part::Bundle => files.bundle.clone(),
                },
                reason,
            }
        })
    }

    /// Validates PEM material: the chain, a key that matches the leaf, and a bundle.
    pub fn from_pem(
        cert_pem: &[u8],
        key_pem: &[u8],
        bundle_pem: &[u8],
        trust_domain: &str,
        provider: &CryptoProvider,
    ) -> Result<Self, (Part, String)> {
        let chain = parse_certs(cert_pem).map_err(|e| (Part::Cert, e))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
            (
                Part::Key,
                format!("no usable private key (PKCS#8, SEC1 or PKCS#1 PEM): {e}"),
            )
        })?;
        let mut bundles = TrustBundles::default();
        bundles
            .insert(
                trust_domain,
                parse_certs(bundle_pem).map_err(|e| (Part::Bundle, e))?,
            )
            .map_err(|e| (Part::Bundle, e))?;
        Self::from_parts(chain, key, bundles, trust_domain, provider)
    }

    /// Validates decoded material (from files or the SPIFFE Workload API): the chain, a key that
    /// matches the leaf, and bundles that include our own trust domain's.
    pub fn from_parts(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        bundles: TrustBundles,
        trust_domain: &str,
        provider: &CryptoProvider,
    ) -> Result<Self, (Part, String)> {
        let Some(leaf) = chain.first() else {
            return Err((Part::Cert, "no certificate".into()));
        };
        if chain.len() > MAX_OWN_CHAIN {
            return Err((
                Part::Cert,
                format!(
                    "{} certificates; a chain of more than {MAX_OWN_CHAIN} is refused",
                    chain.len()
                ),
            ));
        }
        let info = svid::check_leaf(leaf).map_err(|e| (Part::Cert, e.to_string()))?;
        svid::check_own_eku(leaf).map_err(|e| (Part::Cert, e.to_string()))?;
        if info.id.trust_domain() != trust_domain {
            return Err((
                Part::Cert,
                format!(
                    "the SVID {} belongs to trust domain {:?}, but trust_domain is {trust_domain:?}",
                    info.id,
                    info.id.trust_domain()
                ),
            ));
        }
        info.check_time(SystemTime::now())
            .map_err(|e| (Part::Cert, e.to_string()))?;
        if bundles.anchors(trust_domain).is_none() {
            return Err((
                Part::Bundle,
                format!("no trust bundle for our own trust domain {trust_domain:?}"),
            ));
        }
        // Our chain must pass the check every peer will make (with our bundle, which peers of
        // our trust domain share): a set that would be refused everywhere is never swapped in.
        let now = rustls_pki_types::UnixTime::now();
        for usage in [Usage::Server, Usage::Client] {
            verify_peer(&bundles, provider, leaf, &chain[1..], now, usage).map_err(|e| {
                (
                    Part::Cert,
                    format!("the certificate does not chain to our own trust bundle: {e}"),
                )
            })?;
        }
        let signing_key = provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| (Part::Key, format!("unsupported private key: {e}")))?;
        let certified_key = CertifiedKey::new(chain, signing_key);
        certified_key.keys_match().map_err(|_| {
            (
                Part::Key,
                "the private key does not match the certificate".to_owned(),
            )
        })?;
        Ok(Identity {
            id: info.id,
            certified_key: Arc::new(certified_key),
            bundles,
            not_before: info.not_before,
            not_after: info.not_after,
        })
    }

    /// True when `other` has the same certificate chain and the same bundles.
    pub fn same_as(&self, other: &Identity) -> bool {
        self.certified_key.cert == other.certified_key.cert && self.bundles.same_as(&other.bundles)
    }

    /// Seconds until the SVID expires (negative once expired).
    pub fn seconds_left(&self, now: SystemTime) -> i64 {
        match self.not_after.duration_since(now) {
            Ok(d) => d.as_secs() as i64,
            Err(e) => -(e.duration().as_secs() as i64),
        }
    }
}

/// The longest chain of our own accepted (leaf and intermediates).
pub const MAX_OWN_CHAIN: usize = 8;

/// Which of the three inputs an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Cert,
    Key,
    Bundle,
}

/// Parses every `CERTIFICATE` block; at least one is required.
pub fn parse_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("malformed PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no CERTIFICATE found (empty or half-written file?)".into());
    }
    Ok(certs)
}

/// The current identity, swappable at runtime.
pub struct IdentityStore {
    current: ArcSwap<Identity>,
    generation: AtomicU64,
}

impl fmt::Debug for IdentityStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityStore")
            .field("current", &self.current.load().id.as_str())
            .field("generation", &self.generation())
            .finish()
    }
}

impl IdentityStore {
    pub fn new(identity: Identity) -> Self {
        IdentityStore {
            current: ArcSwap::from_pointee(identity),
            generation: AtomicU64::new(1),
        }
    }

    pub fn current(&self) -> Arc<Identity> {
        self.current.load_full()
    }

    /// Swaps in a new identity for every handshake that starts from now on.
    pub fn replace(&self, identity: Identity) {
        self.current.store(Arc::new(identity));
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Increases with every swap: a pooled connection compares it to know it must drain.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

/// Presents the store's current certificate, both as a server and as a client.
#[derive(Debug)]
pub struct StoreCertResolver(pub Arc<IdentityStore>);

impl rustls::server::ResolvesServerCert for StoreCertResolver {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().certified_key.clone())
    }
}

impl rustls::client::ResolvesClientCert for StoreCertResolver {
    fn resolve(
        &self,
        _hints: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().certified_key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
