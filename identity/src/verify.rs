//! Peer verification by SPIFFE ID (the rustls verifiers that use it are in `verifiers`).
//!
//! A peer passes when its leaf is a valid SVID (see `svid`), its trust domain has a bundle, and
//! webpki builds a chain from the leaf to that bundle for the right purpose (serverAuth or
//! clientAuth, required only when the certificate has an EKU extension) at the current time.
//! The DNS name or IP the client dialed plays no part: identity is the SPIFFE ID.

use rustls::crypto::CryptoProvider;
use rustls_pki_types::{CertificateDer, UnixTime};

use crate::bundle::TrustBundles;
use crate::reason::CertReason;
use crate::spiffe_id::SpiffeId;
use crate::svid::{self, SvidError};

/// Which side of the handshake the peer is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    /// The peer is a server: its certificate must allow serverAuth.
    Server,
    /// The peer is a client: its certificate must allow clientAuth.
    Client,
}

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error(transparent)]
    Svid(#[from] SvidError),
    #[error("no trust bundle for the peer's trust domain {0:?}")]
    UnknownTrustDomain(String),
    #[error("chain verification failed: {0}")]
    Chain(webpki::Error),
}

impl PeerError {
    /// Why, as a type (its label is for metrics and logs).
    pub fn reason(&self) -> CertReason {
        match self {
            PeerError::Svid(e) => e.reason(),
            PeerError::UnknownTrustDomain(_) => CertReason::WrongTrustDomain,
            PeerError::Chain(e) => match e {
                webpki::Error::CertExpired { .. } => CertReason::Expired,
                webpki::Error::CertNotValidYet { .. } => CertReason::NotYetValid,
                webpki::Error::UnknownIssuer => CertReason::UnknownIssuer,
                webpki::Error::CaUsedAsEndEntity => CertReason::CaAsLeaf,
                webpki::Error::RequiredEkuNotFoundContext(_) => CertReason::MissingEku,
                webpki::Error::InvalidSignatureForPublicKey
                | webpki::Error::UnsupportedSignatureAlgorithmContext(_)
                | webpki::Error::UnsupportedSignatureAlgorithmForPublicKeyContext(_) => {
                    CertReason::BadSignature
                }
                _ => CertReason::BadChain,
            },
        }
    }
}

/// Verifies a peer's certificate chain and returns its SPIFFE ID.
pub fn verify_peer(
    bundles: &TrustBundles,
    provider: &CryptoProvider,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    usage: Usage,
) -> Result<SpiffeId, PeerError> {
    let info = svid::check_leaf(end_entity)?;
    for (i, ca) in intermediates.iter().enumerate() {
        svid::check_signing_ca(ca, i + 1)?;
    }
    let td = info.id.trust_domain();
    let anchors = bundles
        .anchors(td)
        .ok_or_else(|| PeerError::UnknownTrustDomain(td.to_owned()))?;
    let cert = webpki::EndEntityCert::try_from(end_entity).map_err(PeerError::Chain)?;
    let eku = match usage {
        Usage::Server => webpki::KeyUsage::server_auth(),
        Usage::Client => webpki::KeyUsage::client_auth(),
    };
    cert.verify_for_usage(
        provider.signature_verification_algorithms.all,
        anchors,
        intermediates,
        now,
        eku,
        None,
        None,
    )
    .map_err(PeerError::Chain)?;
    Ok(info.id)
}
