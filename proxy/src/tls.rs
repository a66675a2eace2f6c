//! TLS between meshlet proxies: TLS 1.3 only, one crypto provider, both sides authenticated by
//! SPIFFE ID. Both configs read the identity store per handshake, so rotation needs no rebuild.
//! Session resumption is off on both sides: every connection is authenticated against the
//! current bundle and authorized against the current policy (cf. Envoy CVE-2022-21654).

use std::sync::Arc;

use meshlet_identity::source::StoreCertResolver;
use meshlet_identity::svid::spiffe_id_of_der;
use meshlet_identity::{IdentityStore, SpiffeClientVerifier, SpiffeId, SpiffeServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, CommonState, ServerConfig};

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

    let mut client = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier::new(
            store.clone(),
            provider,
        )))
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
    })
}

/// The SPIFFE ID of the authenticated peer of a finished handshake.
pub fn peer_id(conn: &CommonState) -> Option<SpiffeId> {
    conn.peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|leaf| spiffe_id_of_der(leaf).ok())
}

/// The reason label of a failed handshake, from the io::Error tokio-rustls returns.
pub fn failure_reason(err: &std::io::Error) -> &'static str {
    if let Some(tls) = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        return meshlet_identity::verify::reason_of(tls);
    }
    match err.kind() {
        std::io::ErrorKind::UnexpectedEof => "eof",
        std::io::ErrorKind::ConnectionReset => "reset",
        std::io::ErrorKind::TimedOut => "timeout",
        _ => "io",
    }
}
