//! The API server, as the issuer calls it: JSON over HTTPS with its own service account's
//! token (re-read for every call: the kubelet renews it), the cluster's CA verifying the server.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use meshlet_identity::https::{self, HttpsUrl};
use serde_json::Value;

/// In-cluster defaults: where every pod finds the API server and its own credentials.
pub const IN_CLUSTER_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
pub const IN_CLUSTER_CA: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";

/// The largest answer read: a list of ConfigMaps of every namespace is the biggest.
const MAX_ANSWER: usize = 32 << 20;

/// How to reach the API server.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    pub url: HttpsUrl,
    pub token: PathBuf,
    pub ca: PathBuf,
}

impl ApiConfig {
    /// From `KUBERNETES_SERVICE_HOST` and `KUBERNETES_SERVICE_PORT`, as every pod has them.
    pub fn in_cluster() -> Result<Self, String> {
        let host = std::env::var("KUBERNETES_SERVICE_HOST").map_err(|_| {
            "KUBERNETES_SERVICE_HOST is not set: not in a pod? give --api-server".to_owned()
        })?;
        let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        Ok(ApiConfig {
            url: format!("https://{host}:{port}").parse()?,
            token: IN_CLUSTER_TOKEN.into(),
            ca: IN_CLUSTER_CA.into(),
        })
    }
}

/// A call that did not get an answer, or got one that is not JSON.
#[derive(Debug, thiserror::Error)]
#[error("the API server {url}: {reason}")]
pub struct ApiError {
    pub url: String,
    pub reason: String,
}

/// The API server.
#[derive(Clone)]
pub struct Api {
    client: https::Client,
    token: PathBuf,
}

impl Api {
    /// Reads the CA now: a wrong path is a start-up error, not a failure at the first call.
    pub fn new(config: &ApiConfig) -> Result<Self, String> {
        let pem = read(&config.ca)?;
        let anchors = meshlet_identity::source::parse_certs(&pem)
            .map_err(|e| format!("{}: {e}", config.ca.display()))?;
        let client = https::Client::new(config.url.clone(), &anchors)
            .map_err(|e| format!("{}: {e}", config.ca.display()))?;
        Ok(Api {
            client,
            token: config.token.clone(),
        })
    }

    /// One call: the status and the JSON answer (`Null` when the body is empty).
    pub async fn call(
        &self,
        method: http::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(http::StatusCode, Value), ApiError> {
        let fail = |reason: String| ApiError {
            url: self.client.url().url.clone(),
            reason,
        };
        let token = read(&self.token).map_err(fail)?;
        let token = String::from_utf8_lossy(&token).trim().to_owned();
        let mut request = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
            .header(http::header::ACCEPT, "application/json");
        if body.is_some() {
            request = request.header(http::header::CONTENT_TYPE, "application/json");
        }
        let bytes = body.map(|b| b.to_string()).unwrap_or_default();
        let request = request
            .body(Bytes::from(bytes))
            .map_err(|e| fail(e.to_string()))?;
        let (status, answer) = self.client.send(request, MAX_ANSWER).await.map_err(fail)?;
        if answer.is_empty() {
            return Ok((status, Value::Null));
        }
        let value = serde_json::from_slice(&answer)
            .map_err(|e| fail(format!("{status}, and not JSON: {e}")))?;
        Ok((status, value))
    }
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    meshlet_identity::files::read_capped(path, 1 << 20)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// The message of a `Status` the API server answered with, or the status code.
pub fn message(status: http::StatusCode, answer: &Value) -> String {
    match answer.get("message").and_then(Value::as_str) {
        Some(m) => format!("{status}: {m}"),
        None => status.to_string(),
    }
}
