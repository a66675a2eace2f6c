//! The first start of an issuer in a cluster without a CA: make one and keep it in the Secret
//! that holds the CA from then on (`meshlet-ca`, keys `ca.crt`, `ca.key`, `bundle.crt`), so a
//! new user applies deploy/ and makes no Secret. Two replicas starting together agree: the one
//! that is second to create it reads what the first made. An existing Secret is never changed.

use std::time::Duration;

use base64::Engine;
use meshlet_identity::issue::Ca;
use serde_json::{json, Value};
use tracing::info;

use crate::authority::Signing;
use crate::kube::{self, Api};

/// The Secret's keys, and the files its mount holds.
pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const CA_BUNDLE: &str = "bundle.crt";
/// How long a CA made here lives.
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 86400);

/// The CA in `namespace/name`, made first if there is none.
pub async fn ensure_ca(
    api: &Api,
    namespace: &str,
    name: &str,
    trust_domain: &str,
) -> Result<Signing, String> {
    let path = format!("/api/v1/namespaces/{namespace}/secrets/{name}");
    for _ in 0..3 {
        let (status, secret) = api
            .call(http::Method::GET, &path, None)
            .await
            .map_err(|e| e.to_string())?;
        match status {
            s if s.is_success() => return signing_of(&secret, namespace, name),
            http::StatusCode::NOT_FOUND => {}
            s => return Err(format!("GET {path}: {}", kube::message(s, &secret))),
        }
        let ca = Ca::new(trust_domain, CA_LIFETIME).map_err(|e| e.to_string())?;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let body = json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/managed-by": "meshlet-issuer"}},
            "data": {CA_CERT: b64(&ca.pem.cert), CA_KEY: b64(&ca.pem.key), CA_BUNDLE: b64(&ca.pem.cert)},
        });
        let (status, answer) = api
            .call(
                http::Method::POST,
                &format!("/api/v1/namespaces/{namespace}/secrets"),
                Some(&body),
            )
            .await
            .map_err(|e| e.to_string())?;
        match status {
            s if s.is_success() => {
                info!(secret = %format!("{namespace}/{name}"), trust_domain, "no CA yet: made one (back it up: deploy/README.md)");
                return Signing::from_pem(&ca.pem.cert, &ca.pem.key, &ca.pem.cert);
            }
            // Another replica made it first: read that one.
            http::StatusCode::CONFLICT => continue,
            s => {
                return Err(format!(
                    "creating the Secret {namespace}/{name}: {}",
                    kube::message(s, &answer)
                ))
            }
        }
    }
    Err(format!(
        "the Secret {namespace}/{name} could neither be read nor made"
    ))
}

fn signing_of(secret: &Value, namespace: &str, name: &str) -> Result<Signing, String> {
    let field = |key: &str| -> Result<String, String> {
        let b64 = secret["data"][key]
            .as_str()
            .ok_or_else(|| format!("the Secret {namespace}/{name} has no {key}"))?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("the Secret {namespace}/{name}: {key}: {e}"))?;
        String::from_utf8(bytes)
            .map_err(|_| format!("the Secret {namespace}/{name}: {key} is not PEM"))
    };
    let cert = field(CA_CERT)?;
    let bundle = field(CA_BUNDLE).or_else(|_| field(CA_CERT))?;
    Signing::from_pem(&cert, &field(CA_KEY)?, &bundle)
        .map_err(|e| format!("the Secret {namespace}/{name}: {e}"))
}
