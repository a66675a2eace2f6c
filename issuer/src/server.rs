//! The issuer's HTTPS front: `POST /v1/svid` (a bearer token and a PEM CSR; the answer is the
//! SVID's chain), `GET /healthz`, `GET /metrics`. Every pod can reach it, so what one caller can
//! make it hold is bounded: connections, requests in flight (beyond them: 429 at once, before
//! the API server is asked anything), the CSR's size, and the time to send it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use meshlet_defaults::issuer::{CHAIN_CONTENT_TYPE, MAX_CSR_BYTES, SVID_PATH};
use meshlet_identity::https::{self, reply};
use meshlet_identity::SpiffeId;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{info, warn};

use crate::authority::{Authority, CaFiles};
use crate::csr::{self, CsrRejected};
use crate::kube::{Api, ApiConfig};
use crate::token_review::{self, TokenRejected};

/// Connections open at once; further ones are closed at once.
pub const MAX_CONNECTIONS: usize = 512;
/// Requests being reviewed and signed at once; further ones get 429.
pub const MAX_IN_FLIGHT: usize = 32;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// How to run an issuer.
#[derive(Clone, Debug)]
pub struct IssuerConfig {
    pub listen: SocketAddr,
    pub trust_domain: String,
    pub ca: CaFiles,
    /// `(namespace, name)` of the Secret to make a CA in when the files are not there.
    pub bootstrap: Option<(String, String)>,
    /// How long an SVID lives.
    pub ttl: Duration,
    /// The names and addresses the issuer is reached by (its serving certificate's).
    pub serving_names: Vec<String>,
    pub api: ApiConfig,
    /// How often the bundle's ConfigMaps are checked; `None`: not published.
    pub publish_every: Option<Duration>,
    /// The webhook's serving certificate and caBundle to keep; `None`: someone else does.
    pub webhook: Option<crate::webhook_tls::WebhookTls>,
}

/// A running issuer.
pub struct Running {
    pub address: SocketAddr,
    pub authority: Arc<Authority>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Serves until the process ends.
    pub async fn wait(mut self) {
        if let Some(accept) = self.tasks.pop() {
            let _ = accept.await;
        }
    }

    /// Stops listening and publishing (tests: "the issuer is down").
    pub fn stop(&self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

struct Shared {
    api: Api,
    authority: Arc<Authority>,
    trust_domain: String,
    ttl: Duration,
    in_flight: Semaphore,
    requests: Family<ResultLabels, Counter>,
    registry: Registry,
}

/// Loads the CA (or makes one), listens, and serves.
pub async fn start(config: IssuerConfig) -> Result<Running, String> {
    meshlet_identity::seed_random(&meshlet_identity::crypto_provider())
        .map_err(|e| format!("seeding the random number generator: {e}"))?;
    let api = Api::new(&config.api)?;
    let authority = match (&config.bootstrap, Path::new(&config.ca.cert).exists()) {
        (Some((namespace, name)), false) => {
            let signing =
                crate::bootstrap::ensure_ca(&api, namespace, name, &config.trust_domain).await?;
            Authority::new(signing, config.serving_names.clone())?
        }
        _ => Authority::load(&config.ca, config.serving_names.clone())?,
    };
    authority.follow(config.ca.clone())?;
    let mut tasks = Vec::new();
    if let Some(every) = config.publish_every {
        tasks.push(tokio::spawn(crate::publish::run(
            api.clone(),
            authority.bundle(),
            every,
        )));
    }
    if let Some(webhook) = config.webhook.clone() {
        tasks.push(tokio::spawn(crate::webhook_tls::run(
            api.clone(),
            authority.clone(),
            webhook,
        )));
    }
    let mut tls = rustls::ServerConfig::builder_with_provider(meshlet_identity::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(authority.clone());
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    let requests = Family::<ResultLabels, Counter>::default();
    let mut registry = Registry::with_prefix("meshlet_issuer");
    registry.register(
        "requests",
        "SVID requests, by result (issued, or why refused)",
        requests.clone(),
    );
    let shared = Arc::new(Shared {
        api,
        authority: authority.clone(),
        trust_domain: config.trust_domain.clone(),
        ttl: config.ttl,
        in_flight: Semaphore::new(MAX_IN_FLIGHT),
        requests,
        registry,
    });
    info!(%address, trust_domain = %config.trust_domain, ttl = ?config.ttl, "meshlet issuer listening");
    tasks.push(tokio::spawn(accept_loop(listener, acceptor, shared)));
    Ok(Running {
        address,
        authority,
        tasks,
    })
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
) {
    https::serve_tls(
        listener,
        acceptor,
        MAX_CONNECTIONS,
        HANDSHAKE_TIMEOUT,
        move |tls, peer| {
            let shared = shared.clone();
            async move {
                let service = hyper::service::service_fn(move |req| {
                    let shared = shared.clone();
                    async move { Ok::<_, Infallible>(handle(req, peer, &shared).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .keep_alive(false)
                    .max_buf_size(MAX_CSR_BYTES * 2)
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            }
        },
    )
    .await
}

/// Why a request got no SVID: the answer's status comes from the type.
enum Refusal {
    Busy,
    Token(TokenRejected),
    Csr(CsrRejected),
    /// The CSR did not arrive within the time allowed.
    SlowBody,
    /// The connection failed while the CSR was sent.
    BrokenBody,
    BadIdentity(String),
    Signing(String),
}

impl Refusal {
    fn status(&self) -> StatusCode {
        match self {
            Refusal::Busy => StatusCode::TOO_MANY_REQUESTS,
            Refusal::Token(TokenRejected::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::Token(TokenRejected::NotServiceAccount(_) | TokenRejected::NotBoundToPod) => {
                StatusCode::FORBIDDEN
            }
            Refusal::Token(_) => StatusCode::UNAUTHORIZED,
            Refusal::Csr(CsrRejected::TooLarge) => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::Csr(CsrRejected::NotPem(_) | CsrRejected::Malformed(_)) => {
                StatusCode::BAD_REQUEST
            }
            Refusal::Csr(_) | Refusal::BadIdentity(_) => StatusCode::FORBIDDEN,
            Refusal::SlowBody => StatusCode::REQUEST_TIMEOUT,
            Refusal::BrokenBody => StatusCode::BAD_REQUEST,
            Refusal::Signing(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The metric's label.
    fn label(&self) -> &'static str {
        match self {
            Refusal::Busy => "busy",
            Refusal::Token(TokenRejected::Unavailable(_)) => "api_unavailable",
            Refusal::Token(_) => "token_refused",
            Refusal::Csr(_) | Refusal::SlowBody | Refusal::BrokenBody => "bad_request",
            Refusal::BadIdentity(_) => "token_refused",
            Refusal::Signing(_) => "signing_failed",
        }
    }

    fn message(&self) -> String {
        match self {
            Refusal::Busy => format!("too many requests in flight ({MAX_IN_FLIGHT}); retry"),
            Refusal::Token(e) => e.to_string(),
            Refusal::Csr(e) => e.to_string(),
            Refusal::SlowBody => format!("the CSR did not arrive within {BODY_TIMEOUT:?}"),
            Refusal::BrokenBody => "the connection failed while the CSR was sent".into(),
            Refusal::BadIdentity(e) => e.clone(),
            Refusal::Signing(e) => format!("signing failed: {e}"),
        }
    }
}

async fn handle(
    req: Request<Incoming>,
    peer: SocketAddr,
    shared: &Shared,
) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        (&Method::GET, "/metrics") => {
            let mut text = String::new();
            let _ = prometheus_client::encoding::text::encode(&mut text, &shared.registry);
            reply(StatusCode::OK, "text/plain; version=0.0.4", text)
        }
        (&Method::POST, SVID_PATH) => match issue(req, shared).await {
            Ok((id, pod, chain)) => {
                shared
                    .requests
                    .get_or_create(&ResultLabels { result: "issued" })
                    .inc();
                info!(%peer, %id, %pod, ttl = ?shared.ttl, "SVID issued");
                reply(StatusCode::OK, CHAIN_CONTENT_TYPE, chain)
            }
            Err(refusal) => {
                let (status, message) = (refusal.status(), refusal.message());
                shared
                    .requests
                    .get_or_create(&ResultLabels {
                        result: refusal.label(),
                    })
                    .inc();
                warn!(%peer, status = status.as_u16(), reason = %message, "SVID request refused");
                let mut answer = reply(status, "text/plain", format!("{message}\n"));
                if status == StatusCode::TOO_MANY_REQUESTS {
                    answer.headers_mut().insert(
                        http::header::RETRY_AFTER,
                        http::HeaderValue::from_static("1"),
                    );
                }
                answer
            }
        },
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            format!("not found: POST {SVID_PATH}, GET /healthz, GET /metrics\n"),
        ),
    }
}

/// Token, then CSR, then signature: the answer's parts.
async fn issue(
    req: Request<Incoming>,
    shared: &Shared,
) -> Result<(SpiffeId, String, String), Refusal> {
    let _permit = shared.in_flight.try_acquire().map_err(|_| Refusal::Busy)?;
    let token = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or("")
        .to_owned();
    if token.is_empty() {
        return Err(Refusal::Token(TokenRejected::Missing));
    }
    let body = Limited::new(req.into_body(), MAX_CSR_BYTES);
    let body = match tokio::time::timeout(BODY_TIMEOUT, body.collect()).await {
        Err(_) => return Err(Refusal::SlowBody),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(Refusal::Csr(CsrRejected::TooLarge))
        }
        Ok(Err(_)) => return Err(Refusal::BrokenBody),
        Ok(Ok(b)) => b.to_bytes(),
    };
    let caller = token_review::review(&shared.api, &token)
        .await
        .map_err(Refusal::Token)?;
    let id = SpiffeId::parse(&format!(
        "spiffe://{}/ns/{}/sa/{}",
        shared.trust_domain, caller.namespace, caller.service_account
    ))
    .map_err(|e| Refusal::BadIdentity(format!("no SPIFFE ID for this service account: {e}")))?;
    let key = csr::accept(&body, &id).map_err(Refusal::Csr)?;
    let chain = shared
        .authority
        .issue(&id, &key, shared.ttl)
        .map_err(Refusal::Signing)?;
    let pod = format!(
        "{}/{} ({})",
        caller.namespace, caller.pod_name, caller.pod_uid
    );
    Ok((id, pod, chain))
}
