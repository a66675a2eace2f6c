//! `meshlet webhook`: the mutating admission webhook. HTTPS (TLS 1.3) with a serving
//! certificate read from files and re-read when they change (a Secret mount swaps them);
//! `POST /inject` for namespaces labelled `meshlet.io/inject=enabled`, `POST /inject-annotated`
//! for pods that ask with the annotation, `GET /healthz` for its own probes. The decision is
//! `meshlet_inject::admission`, the same injection as `meshlet inject`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use clap::Args;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use meshlet_inject::admission::{self, Entry};
use meshlet_inject::Settings;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::inject_cmd::InjectDefaults;
use crate::webhook_limits::{self, BodyError, Limits};
use crate::Failure;
use meshlet_identity::https::reply;

#[derive(Args, Debug)]
pub struct WebhookArgs {
    /// Address to serve HTTPS on.
    #[arg(long, default_value = "0.0.0.0:9443")]
    listen: SocketAddr,
    /// Serving certificate chain (PEM), leaf first; re-read when it changes.
    #[arg(long, default_value = "/etc/meshlet-webhook/tls.crt")]
    cert: PathBuf,
    /// Its private key (PEM).
    #[arg(long, default_value = "/etc/meshlet-webhook/tls.key")]
    key: PathBuf,
    #[command(flatten)]
    defaults: InjectDefaults,
    /// An image a pod's `meshlet.io/image` annotation may choose instead of --image (repeat for
    /// several). Without it the annotation is ignored with a warning: a pod's author must not
    /// pick what runs as root with NET_ADMIN in the init container.
    #[arg(long = "allow-image", value_name = "IMAGE")]
    allow_image: Vec<String>,
}

pub fn run(args: WebhookArgs) -> Result<(), Failure> {
    crate::init_cli_logging();
    let pair = load_pair(&args.cert, &args.key).map_err(Failure::Usage)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(serve(args, pair))
}

/// The serving certificate, swapped whole when the files change.
#[derive(Debug)]
struct Serving(ArcSwap<CertifiedKey>);

impl ResolvesServerCert for Serving {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// The files' bytes and the key made of them.
struct Pair {
    bytes: (Vec<u8>, Vec<u8>),
    key: CertifiedKey,
}

fn load_pair(cert: &Path, key: &Path) -> Result<Pair, String> {
    let read = |p: &Path| {
        meshlet_identity::files::read_capped(p, 1 << 20)
            .map_err(|e| format!("{}: {e}", p.display()))
    };
    let (cert_pem, key_pem) = (read(cert)?, read(key)?);
    let chain = meshlet_identity::source::parse_certs(&cert_pem)
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    let private =
        PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| format!("{}: {e}", key.display()))?;
    let provider = meshlet_identity::crypto_provider();
    let certified = CertifiedKey::from_der(chain, private, &provider)
        .map_err(|e| format!("{} and {}: {e}", cert.display(), key.display()))?;
    Ok(Pair {
        bytes: (cert_pem, key_pem),
        key: certified,
    })
}

async fn serve(args: WebhookArgs, pair: Pair) -> Result<(), Failure> {
    let serving = Arc::new(Serving(ArcSwap::from_pointee(pair.key)));
    let provider = meshlet_identity::crypto_provider();
    meshlet_identity::seed_random(&provider)
        .map_err(|e| Failure::Runtime(format!("seeding the random number generator: {e}")))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Failure::Runtime(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(serving.clone());
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| Failure::Runtime(format!("cannot listen on {}: {e}", args.listen)))?;
    let local = listener
        .local_addr()
        .map_err(|e| Failure::Runtime(e.to_string()))?;
    info!(address = %local, image = %args.defaults.image, "meshlet webhook listening");
    let _following = follow_files(serving, args.cert.clone(), args.key.clone(), pair.bytes)
        .map_err(Failure::Runtime)?;
    let settings = Arc::new(meshlet_inject::settings::Settings {
        allowed_images: Some(args.allow_image.clone()),
        ..args.defaults.settings()
    });
    let limits = Arc::new(Limits::default());
    meshlet_identity::https::serve_tls(
        listener,
        acceptor,
        webhook_limits::MAX_CONNECTIONS,
        Duration::from_secs(10),
        move |tls, _peer| {
            let (settings, limits) = (settings.clone(), limits.clone());
            async move {
                let service = hyper::service::service_fn(move |req| {
                    let (settings, limits) = (settings.clone(), limits.clone());
                    async move { Ok::<_, Infallible>(handle(req, &settings, &limits).await) }
                });
                let mut builder =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                builder
                    .http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(webhook_limits::HEADER_TIMEOUT)
                    .max_buf_size(webhook_limits::READ_BUFFER);
                builder
                    .http2()
                    .timer(TokioTimer::new())
                    .max_concurrent_streams(webhook_limits::MAX_STREAMS)
                    .initial_stream_window_size(webhook_limits::STREAM_WINDOW)
                    .initial_connection_window_size(webhook_limits::CONNECTION_WINDOW)
                    .adaptive_window(false)
                    .keep_alive_interval(Duration::from_secs(30));
                let _ = builder.serve_connection(TokioIo::new(tls), service).await;
            }
        },
    )
    .await;
    Ok(())
}

/// Re-reads the certificate and key when they may have changed (meshlet-identity's file
/// follower: directory events, SIGHUP, periodically) and their bytes did; a pair that does not
/// load is reported and the last good one kept.
fn follow_files(
    serving: Arc<Serving>,
    cert: PathBuf,
    key: PathBuf,
    mut last: (Vec<u8>, Vec<u8>),
) -> Result<tokio::task::JoinHandle<()>, String> {
    let files = [cert.clone(), key.clone()];
    meshlet_identity::watch::watch(&[&files[0], &files[1]], move |_| {
        let now = (std::fs::read(&cert), std::fs::read(&key));
        let (Ok(c), Ok(k)) = now else { return };
        if (c.as_slice(), k.as_slice()) == (last.0.as_slice(), last.1.as_slice()) {
            return;
        }
        match load_pair(&cert, &key) {
            Ok(pair) => {
                serving.0.store(Arc::new(pair.key));
                last = pair.bytes;
                info!(cert = %cert.display(), "serving certificate reloaded");
            }
            Err(e) => {
                // Half of a swap, most likely; the next change or tick sees the whole of it.
                warn!(error = %e, "serving certificate not reloaded; keeping the current one");
                last = (c, k);
            }
        }
    })
}

async fn handle(
    req: Request<Incoming>,
    settings: &Settings,
    limits: &Limits,
) -> Response<Full<Bytes>> {
    let entry = match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => return reply(StatusCode::OK, "text/plain", "ok\n".into()),
        (&Method::POST, "/inject") => Entry::Namespace,
        (&Method::POST, "/inject-annotated") => Entry::Annotated,
        _ => {
            return reply(
                StatusCode::NOT_FOUND,
                "text/plain",
                "not found: POST /inject, POST /inject-annotated, GET /healthz\n".into(),
            )
        }
    };
    let (body, _budget) = match limits.read(req.into_body()).await {
        Ok(read) => read,
        Err(e) => {
            let status = match e {
                BodyError::TooLarge | BodyError::TooManyValues => StatusCode::PAYLOAD_TOO_LARGE,
                BodyError::Busy => StatusCode::SERVICE_UNAVAILABLE,
                BodyError::TimedOut => StatusCode::REQUEST_TIMEOUT,
                BodyError::Read(_) => StatusCode::BAD_REQUEST,
            };
            warn!(error = %e, "admission request refused");
            return reply(status, "text/plain", format!("{e}\n"));
        }
    };
    let Ok(_reviewing) = limits.reviews.acquire().await else {
        return reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "shutting down\n".into(),
        );
    };
    let review = match admission::Review::parse(&body) {
        Ok(review) => review,
        Err(e) => return reply(StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n")),
    };
    let answer = admission::review(&review, entry, settings);
    // One line per decision, naming the pod as the request does (a Deployment's pods have only
    // a generateName at CREATE) and the request's uid.
    let (namespace, name, generate_name, uid) = review.names();
    let r = &answer["response"];
    let path = match entry {
        Entry::Namespace => "/inject",
        Entry::Annotated => "/inject-annotated",
    };
    if r.get("patch").is_some() {
        info!(%namespace, %name, %generate_name, %uid, %path, warnings = %r["warnings"], "sidecar injected");
    } else if let Some(w) = r.get("warnings") {
        info!(%namespace, %name, %generate_name, %uid, %path, warnings = %w, "sidecar not injected");
    } else {
        info!(%namespace, %name, %generate_name, %uid, %path, "left as it is (opted out, already injected, not a CREATE, or a system namespace)");
    }
    reply(StatusCode::OK, "application/json", answer.to_string())
}
