//! The SPIFFE Workload API as the identity source, against a fake agent on a unix socket.

mod common;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use common::*;
use hyper::body::{Body, Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshlet_identity::issue::{Ca, Pem};
use meshlet_identity::source::parse_certs;
use meshlet_identity::workload_api::{self, proto};
use meshlet_identity::{
    crypto_provider, grpc, IdentityStore, Source, SpiffeId, SpiffeServerVerifier,
};
use rustls::pki_types::{PrivateKeyDer, ServerName};
use rustls_pki_types::pem::PemObject;
use tokio::net::{TcpStream, UnixListener};
use tokio::sync::mpsc;

/// A response body fed by a channel: one gRPC message per update.
struct ChannelBody(mpsc::UnboundedReceiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|m| m.map(|b| Ok(Frame::data(b))))
    }
}

/// A fake SPIRE agent: every FetchX509SVID call gets the updates pushed with `send`.
#[derive(Clone, Default)]
struct FakeAgent {
    calls: Arc<Mutex<Vec<mpsc::UnboundedSender<Bytes>>>>,
    last: Arc<Mutex<Option<Bytes>>>,
}

impl FakeAgent {
    fn start(path: &std::path::Path) -> Self {
        let agent = FakeAgent::default();
        let listener = UnixListener::bind(path).unwrap();
        let a = agent.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let a = a.clone();
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req: http::Request<Incoming>| {
                            let a = a.clone();
                            async move {
                                assert_eq!(req.uri().path(), workload_api::FETCH_X509_SVID);
                                assert_eq!(
                                    req.headers().get(workload_api::SECURITY_HEADER).unwrap(),
                                    "true"
                                );
                                let (tx, rx) = mpsc::unbounded_channel();
                                if let Some(last) = a.last.lock().unwrap().clone() {
                                    let _ = tx.send(last);
                                }
                                a.calls.lock().unwrap().push(tx);
                                let resp = http::Response::builder()
                                    .header("content-type", "application/grpc")
                                    .body(ChannelBody(rx))
                                    .unwrap();
                                Ok::<_, Infallible>(resp)
                            }
                        });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(conn), service)
                        .await;
                });
            }
        });
        agent
    }

    fn send(&self, update: &proto::X509SvidResponse) {
        let frame = grpc::frame(update);
        *self.last.lock().unwrap() = Some(frame.clone());
        self.calls
            .lock()
            .unwrap()
            .retain(|tx| tx.send(frame.clone()).is_ok());
    }
}

fn der_of(pem: &str) -> Vec<u8> {
    parse_certs(pem.as_bytes())
        .unwrap()
        .iter()
        .flat_map(|c| c.as_ref().to_vec())
        .collect()
}

fn update(ca: &Ca, svid: &Pem, id: &str) -> proto::X509SvidResponse {
    let key = PrivateKeyDer::from_pem_slice(svid.key.as_bytes()).unwrap();
    proto::X509SvidResponse {
        svids: vec![proto::X509Svid {
            spiffe_id: id.into(),
            x509_svid: der_of(&svid.cert),
            x509_svid_key: key.secret_der().to_vec(),
            bundle: der_of(&ca.pem.cert),
            hint: String::new(),
        }],
        ..Default::default()
    }
}

/// The SPIFFE ID the server presents to a new TLS client.
async fn presented_id(
    addr: std::net::SocketAddr,
    verifying: Arc<IdentityStore>,
    client: &Pem,
) -> Option<SpiffeId> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier::new(
            verifying,
            crypto_provider(),
        )))
        .with_client_auth_cert(
            parse_certs(client.cert.as_bytes()).unwrap(),
            PrivateKeyDer::from_pem_slice(client.key.as_bytes()).unwrap(),
        )
        .unwrap();
    cfg.alpn_protocols = vec![b"meshlet/1".to_vec()];
    let tcp = TcpStream::connect(addr).await.ok()?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .ok()?;
    meshlet_proxy::tls::peer_id(tls.get_ref().1)
}

#[tokio::test]
async fn updates_from_the_workload_api_are_used_by_the_next_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let agent = FakeAgent::start(&socket);
    let ca = Ca::new(TD, DAY).unwrap();
    let v1 = "spiffe://cluster.local/ns/default/sa/echo-v1";
    let v2 = "spiffe://cluster.local/ns/default/sa/echo-v2";

    // The proxy waits for the agent's first SVID.
    let waiting = tokio::spawn({
        let socket = socket.clone();
        async move { Source::WorkloadApi(socket).first(TD).await.unwrap() }
    });
    agent.send(&update(
        &ca,
        &leaf(&ca, "/ns/default/sa/echo-v1", |_| {}),
        v1,
    ));
    let (identity, follower) = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap();
    let store = Arc::new(IdentityStore::new(identity));
    let echo = echo().await;
    let server = proxy(config(""), store.clone(), echo.addr, echo.addr).await;
    let counted = server.metrics.clone();
    follower
        .follow(store.clone(), move |update| counted.rotation(update))
        .unwrap();

    let client = leaf(&ca, "/ns/default/sa/pod-worker", |_| {});
    let verifying = common::store(&ca, &client);
    let addr = server.inbound_addrs[0];
    assert_eq!(
        presented_id(addr, verifying.clone(), &client)
            .await
            .unwrap()
            .as_str(),
        v1
    );

    // A rotation pushed by the agent is used by the next handshake.
    agent.send(&update(
        &ca,
        &leaf(&ca, "/ns/default/sa/echo-v2", |_| {}),
        v2,
    ));
    eventually("the new SVID is presented", async || {
        presented_id(addr, verifying.clone(), &client)
            .await
            .map(|id| id.as_str() == v2)
            .unwrap_or(false)
    })
    .await;

    // An SVID of another trust domain is refused; the current one stays.
    let other_ca = Ca::new("other.example", DAY).unwrap();
    let foreign = other_ca
        .issue_svid(&SpiffeId::parse("spiffe://other.example/x").unwrap(), DAY)
        .unwrap();
    agent.send(&update(&other_ca, &foreign, "spiffe://other.example/x"));
    let refused = r#"meshlet_identity_rotations_total{result="refused"}"#;
    eventually("the foreign SVID is refused", async || {
        metric(&metrics(&server).await, refused) == 1.0
    })
    .await;
    assert_eq!(
        presented_id(addr, verifying.clone(), &client)
            .await
            .unwrap()
            .as_str(),
        v2
    );

    // Federated bundles: a peer of another trust domain now passes the TLS handshake (the
    // policy, absent here, still admits only our own trust domain).
    let mut federated = update(&ca, &leaf(&ca, "/ns/default/sa/echo-v2", |_| {}), v2);
    federated
        .federated_bundles
        .insert("spiffe://other.example".into(), der_of(&other_ca.pem.cert));
    agent.send(&federated);
    eventually("the federated bundle is applied", async || {
        store.current().bundles.anchors("other.example").is_some()
    })
    .await;
    let before = metrics(&server).await;
    let mut foreign_client_cfg = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier::new(
            verifying.clone(),
            crypto_provider(),
        )))
        .with_client_auth_cert(
            parse_certs(foreign.cert.as_bytes()).unwrap(),
            PrivateKeyDer::from_pem_slice(foreign.key.as_bytes()).unwrap(),
        )
        .unwrap();
    foreign_client_cfg.alpn_protocols = vec![b"meshlet/1".to_vec()];
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(foreign_client_cfg))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap();
    let _ = tokio::io::AsyncWriteExt::write_all(&mut tls, b"x").await;
    let mut buf = [0u8; 1];
    let _ = tokio::io::AsyncReadExt::read(&mut tls, &mut buf).await;
    let denial =
        r#"meshlet_policy_denials_total{direction="inbound",reason="foreign_trust_domain"}"#;
    eventually("the federated peer reaches policy", async || {
        metric(&metrics(&server).await, denial) == 1.0
    })
    .await;
    let failures = |m: &str| {
        m.lines()
            .filter(|l| l.starts_with("meshlet_tls_handshake_failures_total"))
            .count()
    };
    assert_eq!(
        failures(&metrics(&server).await),
        failures(&before),
        "the handshake itself must succeed"
    );
}

#[tokio::test]
async fn the_proxy_reconnects_when_the_agent_goes_away() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let agent = FakeAgent::start(&socket);
    let ca = Ca::new(TD, DAY).unwrap();
    agent.send(&update(
        &ca,
        &leaf(&ca, "/a", |_| {}),
        "spiffe://cluster.local/a",
    ));
    let (identity, follower) = Source::WorkloadApi(socket.clone()).first(TD).await.unwrap();
    let store = Arc::new(IdentityStore::new(identity));
    let metrics = Arc::new(meshlet_proxy::metrics::Metrics::new());
    let counted = metrics.clone();
    follower
        .follow(store.clone(), move |update| counted.rotation(update))
        .unwrap();
    // The agent restarts: its streams end, a new agent listens on the same socket.
    agent.calls.lock().unwrap().clear();
    std::fs::remove_file(&socket).unwrap();
    let agent2 = FakeAgent::start(&socket);
    agent2.send(&update(
        &ca,
        &leaf(&ca, "/b", |_| {}),
        "spiffe://cluster.local/b",
    ));
    eventually("the SVID of the new agent is used", async || {
        store.current().id.as_str() == "spiffe://cluster.local/b"
    })
    .await;
}
