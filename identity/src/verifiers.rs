//! The rustls verifiers of both sides: a peer passes when `verify::verify_peer` accepts it
//! against the trust bundles the store holds at that handshake, and a refusal reads back as a
//! typed reason ([`failure_of`]).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::reason::{CertReason, TlsFailure};
use crate::source::IdentityStore;
use crate::verify::{verify_peer, PeerError, Usage};

/// The rustls error a verification failure becomes; [`failure_of`] reads the reason back.
fn to_rustls(err: PeerError) -> rustls::Error {
    let cert_err = match &err {
        PeerError::Chain(webpki::Error::UnknownIssuer) => CertificateError::UnknownIssuer,
        _ => CertificateError::Other(rustls::OtherError(Arc::new(err))),
    };
    rustls::Error::InvalidCertificate(cert_err)
}

/// What a failed handshake's rustls error says, as a type.
pub fn failure_of(err: &rustls::Error) -> TlsFailure {
    match err {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            TlsFailure::Certificate(CertReason::UnknownIssuer)
        }
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
            TlsFailure::Certificate(
                other
                    .0
                    .downcast_ref::<PeerError>()
                    .map_or(CertReason::BadCertificate, PeerError::reason),
            )
        }
        rustls::Error::InvalidCertificate(_) => TlsFailure::Certificate(CertReason::BadCertificate),
        rustls::Error::AlertReceived(_) => TlsFailure::RejectedByPeer,
        rustls::Error::NoApplicationProtocol => TlsFailure::NoAlpn,
        rustls::Error::PeerIncompatible(_) => TlsFailure::Incompatible,
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            TlsFailure::NotTls
        }
        rustls::Error::NoCertificatesPresented => TlsFailure::NoClientCertificate,
        _ => TlsFailure::Other,
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
