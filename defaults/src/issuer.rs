//! What the sidecar, the injector and `meshlet issuer` agree on: where the issuer is, how it
//! is asked for an SVID, the token that proves the caller's service account, and the
//! ConfigMap that carries the trust bundle into every namespace.

/// The audience the projected service-account token is requested for, and the only one the
/// issuer accepts: a token made for another audience (the API server's own, a vault's) is
/// never good for an SVID.
pub const TOKEN_AUDIENCE: &str = "meshlet";
/// The token's file in the identity directory (beside the bundle, `ca.crt`).
pub const TOKEN_FILE: &str = "token";
/// What the injector asks the kubelet for: the shortest lifetime Kubernetes allows. The kubelet
/// renews the file at 80 % of it.
pub const TOKEN_EXPIRATION_SECONDS: u32 = 600;
/// The issuer refuses tokens that live longer than this: a pod's token is short-lived.
pub const MAX_TOKEN_LIFETIME_SECONDS: u64 = 24 * 3600;

/// `POST` here: `Authorization: Bearer <token>`, a PEM CSR as the body.
pub const SVID_PATH: &str = "/v1/svid";
pub const CSR_CONTENT_TYPE: &str = "application/pkcs10";
/// The answer: the SVID's chain, leaf first, PEM.
pub const CHAIN_CONTENT_TYPE: &str = "application/pem-certificate-chain";
/// The largest CSR the issuer reads (an ECDSA CSR is about 400 bytes).
pub const MAX_CSR_BYTES: usize = 16 * 1024;

/// Where the sidecar finds the issuer unless told otherwise: deploy/issuer.yaml's Service.
pub const DEFAULT_URL: &str = "https://meshlet-issuer.meshlet-system.svc";
/// The ConfigMap the issuer keeps in every namespace, holding the trust bundle as `ca.crt`.
pub const BUNDLE_CONFIGMAP: &str = "meshlet-ca-bundle";
