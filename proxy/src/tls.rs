//! TLS between meshlet proxies: TLS 1.3 only, one crypto provider, both sides authenticated by
//! SPIFFE ID. Both configs read the identity store per handshake, so rotation needs no rebuild.
//! Session resumption is off on both sides: every connection is authenticated against the
//! current bundle and authorized against the current policy (cf. Envoy CVE-2022-21654).

use std::sync::{Arc, Mutex};

use meshlet_identity::source::StoreCertResolver;
use meshlet_identity::svid::spiffe_id_of_der;
use meshlet_identity::{
    IdentityStore, SpiffeClientVerifier, SpiffeId, SpiffeServerVerifier, TlsFailure,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{
    AlertDescription, ClientConfig, CommonState, DigitallySignedStruct, ServerConfig,
    SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::reason::Reason;

/// The ALPN that marks mesh traffic: one mTLS connection per app connection.
pub const ALPN_MESH: &[u8] = b"meshlet/1";
/// The ALPN of the pooled transport: app connections as HTTP/2 CONNECT streams over one mTLS
/// connection between two proxies.
pub const ALPN_MUX: &[u8] = b"meshlet-mux/1";

/// The rustls configurations of a proxy.
#[derive(Clone)]
pub struct TlsConfigs {
    pub server: Arc<ServerConfig>,
    /// Offers only the per-connection transport.
    pub client: Arc<ClientConfig>,
    /// Offers the pooled transport first, the per-connection one as a fallback.
    pub client_mux: Arc<ClientConfig>,
    /// The strict server verifier, wrapped by [`ProbeVerifier`] for `auto` probes.
    server_verifier: Arc<SpiffeServerVerifier>,
}

pub fn configs(
    store: Arc<IdentityStore>,
    provider: Arc<CryptoProvider>,
) -> Result<TlsConfigs, rustls::Error> {
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(SpiffeClientVerifier::new(
            store.clone(),
            provider.clone(),
        )))
        .with_cert_resolver(Arc::new(StoreCertResolver(store.clone())));
    // The server's order decides: pooled when the client offers it.
    server.alpn_protocols = vec![ALPN_MUX.to_vec(), ALPN_MESH.to_vec()];
    server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    server.send_tls13_tickets = 0;

    let server_verifier = Arc::new(SpiffeServerVerifier::new(store.clone(), provider.clone()));
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(server_verifier.clone())
        .with_client_cert_resolver(Arc::new(StoreCertResolver(store)));
    client.resumption = rustls::client::Resumption::disabled();
    client.enable_sni = false;
    let mut client_mux = client.clone();
    client.alpn_protocols = vec![ALPN_MESH.to_vec()];
    client_mux.alpn_protocols = vec![ALPN_MUX.to_vec(), ALPN_MESH.to_vec()];
    Ok(TlsConfigs {
        server: Arc::new(server),
        client: Arc::new(client),
        client_mux: Arc::new(client_mux),
        server_verifier,
    })
}

impl TlsConfigs {
    /// A client configuration for an `auto` probe of a destination not yet known to be a
    /// meshlet proxy, and the verdict its verifier will record.
    ///
    /// `auto` must tell a server that does not speak meshlet (fall back to plaintext) from a
    /// meshlet peer we must not trust (refuse). The server's ALPN answer tells them apart, but
    /// rustls checks the certificate before we can read the ALPN. So the probe's verifier
    /// records a certificate failure instead of aborting; the caller reads the ALPN first and
    /// then the verdict. The app's bytes are never sent before both pass.
    pub fn probe(&self, base: &Arc<ClientConfig>) -> (Arc<ClientConfig>, Arc<ProbeVerifier>) {
        let verifier = Arc::new(ProbeVerifier {
            inner: self.server_verifier.clone(),
            failure: Mutex::new(None),
        });
        let mut config = ClientConfig::clone(base);
        config
            .dangerous()
            .set_certificate_verifier(verifier.clone());
        (Arc::new(config), verifier)
    }
}

/// A server verifier that records (rather than raises) a certificate failure: see
/// [`TlsConfigs::probe`]. Signatures are still checked, so a completed handshake proves the
/// server holds the key of the certificate it showed.
#[derive(Debug)]
pub struct ProbeVerifier {
    inner: Arc<SpiffeServerVerifier>,
    failure: Mutex<Option<rustls::Error>>,
}

impl ProbeVerifier {
    /// The certificate failure of the handshake, if there was one.
    pub fn failure(&self) -> Option<rustls::Error> {
        self.failure.lock().ok().and_then(|mut f| f.take())
    }
}

impl ServerCertVerifier for ProbeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(verified) => Ok(verified),
            Err(e) => {
                if let Ok(mut f) = self.failure.lock() {
                    *f = Some(e);
                }
                Ok(ServerCertVerified::assertion())
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The SPIFFE ID of the authenticated peer of a finished handshake.
pub fn peer_id(conn: &CommonState) -> Option<SpiffeId> {
    conn.peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|leaf| spiffe_id_of_der(leaf).ok())
}

/// Why a handshake failed, from the io::Error tokio-rustls returns.
pub fn failure_reason(err: &std::io::Error) -> Reason {
    if let Some(tls) = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        // Alerts by which a TLS server says it cannot speak meshlet (no common ALPN, version
        // or cipher suite, or it wants a name we do not send): it is not a meshlet proxy.
        if let rustls::Error::AlertReceived(
            AlertDescription::NoApplicationProtocol
            | AlertDescription::ProtocolVersion
            | AlertDescription::HandshakeFailure
            | AlertDescription::InsufficientSecurity
            | AlertDescription::UnrecognisedName,
        ) = tls
        {
            return Reason::ForeignTls;
        }
        // A handshake message no TLS server sends first (an echo of our ClientHello, say).
        if let rustls::Error::InappropriateHandshakeMessage { .. } = tls {
            return Reason::Tls(TlsFailure::NotTls);
        }
        return Reason::Tls(meshlet_identity::verifiers::failure_of(tls));
    }
    match err.kind() {
        std::io::ErrorKind::UnexpectedEof => Reason::Eof,
        std::io::ErrorKind::ConnectionReset => Reason::Reset,
        std::io::ErrorKind::TimedOut => Reason::Timeout,
        _ => Reason::Io,
    }
}
