//! Workload identity for meshlet: what a SPIFFE ID is, what makes an X.509 certificate a valid
//! SVID, how a peer's certificate is verified (by SPIFFE ID, never by DNS name), where our own
//! SVID and trust bundle come from and what keeps them current (`follow`: files or the
//! Workload API or `meshlet issuer`), and how certificates are issued for demos and tests.
#![forbid(unsafe_code)]

pub mod bundle;
pub mod files;
pub mod follow;
pub mod grpc;
pub mod https;
pub mod inspect;
pub mod issue;
pub mod issuer_client;
pub mod reason;
pub mod rotation;
pub mod source;
pub mod spiffe_id;
pub mod svid;
pub mod verifiers;
pub mod verify;
pub mod watch;
pub mod workload_api;

pub use bundle::TrustBundles;
pub use follow::{Follower, Source};
pub use reason::{CertReason, TlsFailure};
pub use source::{Identity, IdentityFiles, IdentityStore, LoadError};
pub use spiffe_id::SpiffeId;
pub use svid::{SvidError, SvidInfo};
pub use verifiers::{SpiffeClientVerifier, SpiffeServerVerifier};
pub use verify::{PeerError, Usage};

/// The one crypto provider of the whole tree.
pub fn crypto_provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Makes the provider's random number generator ready now, rather than in the first TLS
/// handshake. aws-lc seeds it from CPU jitter entropy the first time anything in the process
/// asks for random bytes: about 400 million instructions, 40 ms or more of a core. Left to the
/// first handshake, that stalls the first connection after start (and every other connection
/// on the same runtime thread) instead of the start-up, before readiness is reported.
pub fn seed_random(provider: &rustls::crypto::CryptoProvider) -> Result<(), rustls::Error> {
    let mut scratch = [0u8; 32];
    provider
        .secure_random
        .fill(&mut scratch)
        .map_err(|_| rustls::Error::FailedToGetRandomBytes)
}
