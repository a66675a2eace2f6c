//! The admission webhook's serving certificate, so that deploy/ needs no Secret made by hand:
//! the issuer keeps the webhook's TLS Secret signed by the current CA (made again when it is
//! missing, signed by another CA, or has less than a third of its year left), and the
//! MutatingWebhookConfiguration's `caBundle` equal to the bundle. The bundle is written first:
//! the API server trusts the new certificate before the webhook presents it. Leave it off
//! (no `--webhook-secret`) when cert-manager does this instead.

use std::time::Duration;

use base64::Engine;
use meshlet_identity::issue::LeafSpec;
use serde_json::{json, Value};
use tracing::{info, warn};

use crate::authority::Authority;
use crate::kube::{self, Api};

/// How long the webhook's certificate lives.
const LIFETIME: Duration = Duration::from_secs(365 * 86400);
/// How often it is checked (and at once when the bundle changes).
const EVERY: Duration = Duration::from_secs(3600);

/// What the issuer keeps for the webhook.
#[derive(Clone, Debug)]
pub struct WebhookTls {
    pub namespace: String,
    /// The TLS Secret the webhook mounts.
    pub secret: String,
    /// The MutatingWebhookConfiguration whose webhooks call it.
    pub configuration: String,
    /// The name the API server calls it by (`<service>.<namespace>.svc`).
    pub dns_name: String,
}

/// Keeps both current until the process ends: checked every hour and whenever the CA or the
/// bundle changes (a new CA signs with the bundle unchanged in a rotation's second step, and
/// the webhook must move to it then, while the API server still trusts both).
pub async fn run(api: Api, authority: std::sync::Arc<Authority>, want: WebhookTls) {
    let mut changes = authority.signing_changes();
    loop {
        changes.borrow_and_update();
        let bundle = authority.current_bundle();
        if let Err(e) = once(&api, &authority, &want, &bundle).await {
            warn!(error = %e, "the webhook's certificate or caBundle is not up to date");
        }
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            changed = changes.changed() => if changed.is_err() { return },
        }
    }
}

/// One check: the caBundle first, then the Secret.
pub async fn once(
    api: &Api,
    authority: &Authority,
    want: &WebhookTls,
    bundle: &str,
) -> Result<(), String> {
    let b64 = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
    let ca_bundle = b64(bundle.as_bytes());
    let path = format!(
        "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{}",
        want.configuration
    );
    let mut configuration = get(api, &path).await?.ok_or_else(|| {
        format!(
            "the MutatingWebhookConfiguration {} does not exist",
            want.configuration
        )
    })?;
    let mut changed = false;
    for webhook in configuration["webhooks"]
        .as_array_mut()
        .into_iter()
        .flatten()
    {
        if webhook["clientConfig"]["caBundle"].as_str() != Some(ca_bundle.as_str()) {
            webhook["clientConfig"]["caBundle"] = json!(ca_bundle);
            changed = true;
        }
    }
    if changed {
        put(api, &path, &configuration).await?;
        info!(configuration = %want.configuration, "webhook caBundle set to the trust bundle");
    }
    let path = format!(
        "/api/v1/namespaces/{}/secrets/{}",
        want.namespace, want.secret
    );
    let existing = get(api, &path).await?;
    let fresh = existing
        .as_ref()
        .and_then(|s| s["data"]["tls.crt"].as_str())
        .and_then(|c| base64::engine::general_purpose::STANDARD.decode(c).ok())
        .is_some_and(|pem| authority.signed_recently(&pem, LIFETIME / 3));
    if fresh {
        return Ok(());
    }
    let spec = LeafSpec::server(std::slice::from_ref(&want.dns_name), LIFETIME);
    let pem = authority.issue_leaf(&spec)?;
    let mut secret = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": want.secret, "namespace": want.namespace, "labels": {"app.kubernetes.io/managed-by": "meshlet-issuer"}},
        "data": {"tls.crt": b64(pem.cert.as_bytes()), "tls.key": b64(pem.key.as_bytes())},
    });
    match existing {
        Some(old) => {
            secret["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
            put(api, &path, &secret).await?;
        }
        None => {
            let (status, answer) = api
                .call(
                    http::Method::POST,
                    &format!("/api/v1/namespaces/{}/secrets", want.namespace),
                    Some(&secret),
                )
                .await
                .map_err(|e| e.to_string())?;
            if !status.is_success() && status != http::StatusCode::CONFLICT {
                return Err(format!(
                    "creating {}: {}",
                    want.secret,
                    kube::message(status, &answer)
                ));
            }
        }
    }
    info!(secret = %format!("{}/{}", want.namespace, want.secret), name = %want.dns_name, "webhook serving certificate issued");
    Ok(())
}

async fn get(api: &Api, path: &str) -> Result<Option<Value>, String> {
    let (status, answer) = api
        .call(http::Method::GET, path, None)
        .await
        .map_err(|e| e.to_string())?;
    match status {
        s if s.is_success() => Ok(Some(answer)),
        http::StatusCode::NOT_FOUND => Ok(None),
        s => Err(format!("GET {path}: {}", kube::message(s, &answer))),
    }
}

async fn put(api: &Api, path: &str, body: &Value) -> Result<(), String> {
    let (status, answer) = api
        .call(http::Method::PUT, path, Some(body))
        .await
        .map_err(|e| e.to_string())?;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("PUT {path}: {}", kube::message(status, &answer)))
    }
}
