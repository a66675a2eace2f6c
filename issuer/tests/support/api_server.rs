//! A stand-in for the Kubernetes API server, for tests: it answers the few calls the issuer
//! makes as the real one does — TokenReview (authenticated only for a known token that has not
//! expired, whose audiences meet the ones asked for, and whose bound pod still exists with the
//! same uid; the answer's audiences are the intersection, its user carries the pod in `extra`),
//! namespaces, ConfigMaps by name across namespaces, and Secrets. It requires the issuer's own
//! bearer token on every call. It is not a Kubernetes: no RBAC, no watch, no validation beyond
//! what these calls need.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use meshlet_identity::issue::{Ca, LeafSpec};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;
use serde_json::{json, Value};

/// A token the stand-in knows.
#[derive(Clone, Debug)]
pub struct Token {
    pub namespace: String,
    pub service_account: String,
    pub audiences: Vec<String>,
    /// `(name, uid)` of the pod it is bound to; `None`: a token bound to nothing.
    pub pod: Option<(String, String)>,
    pub issued: SystemTime,
    pub expires: SystemTime,
}

impl Token {
    /// A pod's projected token for `audience`, valid for ten minutes.
    pub fn for_pod(namespace: &str, sa: &str, pod: &str, audience: &str) -> Self {
        let now = SystemTime::now();
        Token {
            namespace: namespace.into(),
            service_account: sa.into(),
            audiences: vec![audience.into()],
            pod: Some((pod.into(), format!("uid-{pod}"))),
            issued: now,
            expires: now + Duration::from_secs(600),
        }
    }
}

#[derive(Default)]
struct State {
    /// The JWT text → what it stands for.
    tokens: BTreeMap<String, Token>,
    /// `namespace/name` → uid.
    pods: BTreeMap<String, String>,
    namespaces: Vec<String>,
    /// `(namespace, name)` → object.
    configmaps: BTreeMap<(String, String), Value>,
    secrets: BTreeMap<(String, String), Value>,
    /// MutatingWebhookConfigurations by name.
    webhooks: BTreeMap<String, Value>,
    version: u64,
    reviews: u64,
    /// How long a TokenReview takes (a busy API server).
    review_delay: Duration,
}

/// The running stand-in.
#[derive(Clone)]
pub struct ApiServer {
    pub address: SocketAddr,
    /// The CA that signed its serving certificate (the issuer's `--api-ca`).
    pub ca_file: PathBuf,
    /// The issuer's own token (`--api-token`).
    pub token_file: PathBuf,
    state: Arc<Mutex<State>>,
}

const ISSUER_TOKEN: &str = "issuer-service-account-token";

impl ApiServer {
    /// Listens on `listen` (loopback, or an address of the namespace the caller is in).
    pub async fn start(listen: SocketAddr, dir: &Path) -> Self {
        let ca = Ca::new("api.test", Duration::from_secs(86400)).unwrap();
        let mut spec = LeafSpec::svid(
            &"spiffe://api.test/x".parse().unwrap(),
            Duration::from_secs(86400),
        );
        spec.uris.clear();
        spec.ips = vec![listen.ip()];
        let serving = ca.issue(&spec).unwrap();
        let ca_file = dir.join("api-ca.crt");
        let token_file = dir.join("api-token");
        std::fs::write(&ca_file, &ca.pem.cert).unwrap();
        std::fs::write(&token_file, ISSUER_TOKEN).unwrap();
        let chain = meshlet_identity::source::parse_certs(serving.cert.as_bytes()).unwrap();
        let key = PrivateKeyDer::from_pem_slice(serving.key.as_bytes()).unwrap();
        let tls = rustls::ServerConfig::builder_with_provider(meshlet_identity::crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind(listen).await.unwrap();
        let address = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            namespaces: vec!["default".into(), "meshlet-system".into()],
            ..State::default()
        }));
        let s = state.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let (acceptor, s) = (acceptor.clone(), s.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(conn).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req| {
                        let s = s.clone();
                        async move { Ok::<_, Infallible>(answer(req, &s).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        ApiServer {
            address,
            ca_file,
            token_file,
            state,
        }
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.address)
    }

    /// Makes a JWT-shaped token for `token` (its claims say when it was issued and expires),
    /// and the pod it is bound to exist.
    pub fn mint(&self, token: Token) -> String {
        let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_secs();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let mut st = self.state.lock().unwrap();
        st.version += 1;
        let claims = json!({
            "aud": token.audiences,
            "iat": secs(token.issued),
            "exp": secs(token.expires),
            "sub": format!("system:serviceaccount:{}:{}", token.namespace, token.service_account),
            "jti": st.version,
        });
        let jwt = format!(
            "{}.{}.{}",
            b64(br#"{"alg":"RS256","kid":"stand-in"}"#),
            b64(claims.to_string().as_bytes()),
            b64(format!("signature-{}", st.version).as_bytes())
        );
        if let Some((pod, uid)) = &token.pod {
            st.pods
                .insert(format!("{}/{pod}", token.namespace), uid.clone());
        }
        if !st.namespaces.contains(&token.namespace) {
            st.namespaces.push(token.namespace.clone());
        }
        st.tokens.insert(jwt.clone(), token);
        jwt
    }

    /// Deletes a pod: its tokens stop being authenticated.
    pub fn delete_pod(&self, namespace: &str, pod: &str) {
        self.state
            .lock()
            .unwrap()
            .pods
            .remove(&format!("{namespace}/{pod}"));
    }

    pub fn add_namespace(&self, namespace: &str) {
        self.state.lock().unwrap().namespaces.push(namespace.into());
    }

    /// `data["ca.crt"]` of the ConfigMap `name` in `namespace`.
    pub fn configmap(&self, namespace: &str, name: &str, key: &str) -> Option<String> {
        let st = self.state.lock().unwrap();
        st.configmaps
            .get(&(namespace.into(), name.into()))
            .and_then(|cm| cm["data"][key].as_str().map(str::to_owned))
    }

    pub fn secret(&self, namespace: &str, name: &str) -> Option<Value> {
        let st = self.state.lock().unwrap();
        st.secrets.get(&(namespace.into(), name.into())).cloned()
    }

    /// Creates a MutatingWebhookConfiguration.
    pub fn add_webhook_configuration(&self, object: Value) {
        let mut st = self.state.lock().unwrap();
        st.version += 1;
        let mut object = object;
        object["metadata"]["resourceVersion"] = json!(st.version.to_string());
        let name = object["metadata"]["name"].as_str().unwrap().to_owned();
        st.webhooks.insert(name, object);
    }

    pub fn webhook_configuration(&self, name: &str) -> Option<Value> {
        self.state.lock().unwrap().webhooks.get(name).cloned()
    }

    /// Makes every TokenReview take `delay`.
    pub fn slow_reviews(&self, delay: Duration) {
        self.state.lock().unwrap().review_delay = delay;
    }

    /// How many TokenReviews were answered.
    pub fn reviews(&self) -> u64 {
        self.state.lock().unwrap().reviews
    }
}

async fn answer(req: http::Request<Incoming>, state: &Mutex<State>) -> http::Response<Full<Bytes>> {
    let authorized = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {ISSUER_TOKEN}"));
    let method = req.method().clone();
    let uri = req.uri().clone();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if !authorized {
        return reply(401, status_object(401, "Unauthorized"));
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let path = uri.path();
    if path.ends_with("/tokenreviews") {
        let delay = state.lock().unwrap().review_delay;
        tokio::time::sleep(delay).await;
    }
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let mut st = state.lock().unwrap();
    match (method.as_str(), parts.as_slice()) {
        ("POST", ["apis", "authentication.k8s.io", "v1", "tokenreviews"]) => {
            st.reviews += 1;
            reply(
                201,
                json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "status": review(&st, &body["spec"])}),
            )
        }
        ("GET", ["api", "v1", "namespaces"]) => {
            let items: Vec<Value> = st
                .namespaces
                .iter()
                .map(|n| json!({"metadata": {"name": n}, "status": {"phase": "Active"}}))
                .collect();
            reply(200, json!({"kind": "NamespaceList", "items": items}))
        }
        ("GET", ["api", "v1", "configmaps"]) => {
            let wanted = uri
                .query()
                .and_then(|q| q.strip_prefix("fieldSelector=metadata.name%3D"))
                .unwrap_or("");
            let items: Vec<Value> = st
                .configmaps
                .iter()
                .filter(|((_, name), _)| name == wanted)
                .map(|(_, v)| v.clone())
                .collect();
            reply(200, json!({"kind": "ConfigMapList", "items": items}))
        }
        ("POST", ["api", "v1", "namespaces", ns, kind @ ("configmaps" | "secrets")]) => {
            let name = body["metadata"]["name"].as_str().unwrap_or("").to_owned();
            st.version += 1;
            let version = st.version.to_string();
            let map = if *kind == "configmaps" {
                &mut st.configmaps
            } else {
                &mut st.secrets
            };
            let key = (ns.to_string(), name);
            if map.contains_key(&key) {
                return reply(409, status_object(409, "AlreadyExists"));
            }
            let mut object = body.clone();
            object["metadata"]["namespace"] = json!(ns);
            object["metadata"]["resourceVersion"] = json!(version);
            map.insert(key, object.clone());
            reply(201, object)
        }
        ("PUT", ["api", "v1", "namespaces", ns, kind @ ("configmaps" | "secrets"), name]) => {
            st.version += 1;
            let version = st.version.to_string();
            let key = (ns.to_string(), name.to_string());
            let map = if *kind == "configmaps" {
                &mut st.configmaps
            } else {
                &mut st.secrets
            };
            replace(map, key, &body, version)
        }
        (
            "GET",
            ["apis", "admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations", name],
        ) => match st.webhooks.get(*name) {
            Some(w) => reply(200, w.clone()),
            None => reply(404, status_object(404, "NotFound")),
        },
        (
            "PUT",
            ["apis", "admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations", name],
        ) => {
            st.version += 1;
            let version = st.version.to_string();
            replace(&mut st.webhooks, name.to_string(), &body, version)
        }
        ("GET", ["api", "v1", "namespaces", ns, "secrets", name]) => {
            match st.secrets.get(&(ns.to_string(), name.to_string())) {
                Some(s) => reply(200, s.clone()),
                None => reply(404, status_object(404, "NotFound")),
            }
        }
        _ => reply(404, status_object(404, "NotFound")),
    }
}

/// An update: refused unless it names the version it replaces (optimistic concurrency).
fn replace<K: Ord>(
    map: &mut BTreeMap<K, Value>,
    key: K,
    body: &Value,
    version: String,
) -> http::Response<Full<Bytes>> {
    let Some(current) = map.get(&key) else {
        return reply(404, status_object(404, "NotFound"));
    };
    if current["metadata"]["resourceVersion"] != body["metadata"]["resourceVersion"] {
        return reply(409, status_object(409, "Conflict"));
    }
    let mut object = body.clone();
    object["metadata"]["resourceVersion"] = json!(version);
    map.insert(key, object.clone());
    reply(200, object)
}

/// As the API server's authenticator answers: unauthenticated with an error, or the user.
fn review(st: &State, spec: &Value) -> Value {
    let unauthenticated = |error: &str| json!({"authenticated": false, "error": error, "user": {}});
    let Some(token) = spec["token"].as_str().and_then(|t| st.tokens.get(t)) else {
        return unauthenticated("invalid bearer token");
    };
    if SystemTime::now() > token.expires {
        return unauthenticated("invalid bearer token, token has expired");
    }
    let asked: Vec<String> = spec["audiences"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let audiences: Vec<&String> = token
        .audiences
        .iter()
        .filter(|a| asked.contains(a))
        .collect();
    if audiences.is_empty() {
        return unauthenticated(
            "invalid bearer token, token audiences are invalid for the target audiences",
        );
    }
    let mut extra = json!({});
    if let Some((pod, uid)) = &token.pod {
        match st.pods.get(&format!("{}/{pod}", token.namespace)) {
            Some(existing) if existing == uid => {}
            _ => return unauthenticated(&format!("invalid bearer token, pod \"{pod}\" not found")),
        }
        extra = json!({
            "authentication.kubernetes.io/pod-name": [pod],
            "authentication.kubernetes.io/pod-uid": [uid],
        });
    }
    json!({
        "authenticated": true,
        "user": {
            "username": format!("system:serviceaccount:{}:{}", token.namespace, token.service_account),
            "uid": "sa-uid",
            "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{}", token.namespace), "system:authenticated"],
            "extra": extra,
        },
        "audiences": audiences,
    })
}

fn status_object(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code, "message": reason})
}

fn reply(status: u16, body: Value) -> http::Response<Full<Bytes>> {
    http::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}
