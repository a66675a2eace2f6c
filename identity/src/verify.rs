//! Peer verification by SPIFFE ID, and the rustls verifiers that use it.
//!
//! A peer passes when its leaf is a valid SVID (see `svid`), its trust domain has a bundle, and
//! webpki builds a chain from the leaf to that bundle for the right purpose (serverAuth or
//! clientAuth, required only when the certificate has an EKU extension) at the current time.
//! The DNS name or IP the client dialed plays no part: identity is the SPIFFE ID.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::bundle::TrustBundles;
use crate::source::IdentityStore;
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
    /// A short, stable label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            PeerError::Svid(e) => e.reason(),
            PeerError::UnknownTrustDomain(_) => "wrong_trust_domain",
            PeerError::Chain(e) => match e {
                webpki::Error::CertExpired { .. } => "expired",
                webpki::Error::CertNotValidYet { .. } => "not_yet_valid",
                webpki::Error::UnknownIssuer => "unknown_issuer",
                webpki::Error::CaUsedAsEndEntity => "ca_as_leaf",
                webpki::Error::RequiredEkuNotFoundContext(_) => "missing_eku",
                webpki::Error::InvalidSignatureForPublicKey
                | webpki::Error::UnsupportedSignatureAlgorithmContext(_)
                | webpki::Error::UnsupportedSignatureAlgorithmForPublicKeyContext(_) => {
                    "bad_signature"
                }
                _ => "bad_chain",
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

/// The rustls error a verification failure becomes; `reason_of` reads the label back.
fn to_rustls(err: PeerError) -> rustls::Error {
    let cert_err = match &err {
        PeerError::Chain(webpki::Error::UnknownIssuer) => CertificateError::UnknownIssuer,
        _ => CertificateError::Other(rustls::OtherError(Arc::new(err))),
    };
    rustls::Error::InvalidCertificate(cert_err)
}

/// The metric label of a failed handshake, from the rustls error it produced.
pub fn reason_of(err: &rustls::Error) -> &'static str {
    match err {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => "unknown_issuer",
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => other
            .0
            .downcast_ref::<PeerError>()
            .map(PeerError::reason)
            .unwrap_or("bad_certificate"),
        rustls::Error::InvalidCertificate(_) => "bad_certificate",
        rustls::Error::AlertReceived(_) => "rejected_by_peer",
        rustls::Error::NoApplicationProtocol => "no_alpn",
        rustls::Error::PeerIncompatible(_) => "incompatible",
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => "not_tls",
        rustls::Error::NoCertificatesPresented => "no_client_certificate",
        _ => "other",
    }
}

/// What both verifiers share: the store (read on every handshake, so a rotated bundle applies to
/// the next connection) and the crypto provider.
#[derive(Debug)]
struct Checker {
    store: Arc<IdentityStore>,
    provider: Arc<CryptoProvider>,
}

impl Checker {
    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: Usage,
    ) -> Result<(), rustls::Error> {
        let identity = self.store.current();
        verify_peer(
            &identity.bundles,
            &self.provider,
            end_entity,
            intermediates,
            now,
            usage,
        )
        .map(|_| ())
        .map_err(to_rustls)
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn no_tls12() -> Result<HandshakeSignatureValid, rustls::Error> {
    Err(rustls::Error::General("TLS 1.2 is not accepted".into()))
}

/// Verifies servers for our TLS client (serverAuth; the server name plays no part).
#[derive(Debug)]
pub struct SpiffeServerVerifier(Checker);

impl SpiffeServerVerifier {
    pub fn new(store: Arc<IdentityStore>, provider: Arc<CryptoProvider>) -> Self {
        SpiffeServerVerifier(Checker { store, provider })
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0
            .verify(end_entity, intermediates, now, Usage::Server)
            .map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        no_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.schemes()
    }
}

/// Verifies clients for our TLS server (clientAuth); a client certificate is mandatory.
#[derive(Debug)]
pub struct SpiffeClientVerifier(Checker);

impl SpiffeClientVerifier {
    pub fn new(store: Arc<IdentityStore>, provider: Arc<CryptoProvider>) -> Self {
        SpiffeClientVerifier(Checker { store, provider })
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0
            .verify(end_entity, intermediates, now, Usage::Client)
            .map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        no_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.schemes()
    }
}
