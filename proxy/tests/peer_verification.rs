//! Each reason to refuse a peer's certificate, seen from a running proxy: a bad client is
//! refused by the inbound side, a bad server by the outbound side, and the backend is never
//! reached.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use common::*;
use meshlet_identity::issue::{Ca, LeafSpec, Pem};
use meshlet_identity::source::parse_certs;
use meshlet_identity::{crypto_provider, SpiffeClientVerifier, SpiffeId, SpiffeServerVerifier};
use rcgen::ExtendedKeyUsagePurpose;
use rustls::pki_types::{PrivateKeyDer, ServerName};
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn key(pem: &Pem) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_slice(pem.key.as_bytes()).unwrap()
}

/// The bad certificates, each with the reason label the proxy must report.
fn bad_leaves(ca: &Ca) -> Vec<(&'static str, Pem)> {
    let other_ca = Ca::new(TD, DAY).unwrap();
    let foreign_ca = Ca::new("other.example", DAY).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let foreign_id = SpiffeId::parse("spiffe://other.example/ns/x/sa/y").unwrap();
    vec![
        ("unknown_issuer", leaf(&other_ca, "/ns/x/sa/y", |_| {})),
        (
            "wrong_trust_domain",
            foreign_ca.issue(&LeafSpec::svid(&foreign_id, DAY)).unwrap(),
        ),
        (
            "bad_spiffe_id",
            leaf(ca, "/ns/x/sa/y", |s| {
                s.uris.push("spiffe://cluster.local/ns/x/sa/z".into())
            }),
        ),
        (
            "expired",
            leaf(ca, "/ns/x/sa/y", |s| {
                s.not_before = now - time::Duration::days(2);
                s.not_after = now - time::Duration::days(1);
            }),
        ),
        (
            "not_yet_valid",
            leaf(ca, "/ns/x/sa/y", |s| {
                s.not_before = now + time::Duration::days(1);
                s.not_after = now + time::Duration::days(2);
            }),
        ),
        ("ca_as_leaf", leaf(ca, "/ns/x/sa/y", |s| s.is_ca = true)),
    ]
}

#[tokio::test]
async fn the_inbound_side_refuses_each_bad_client_certificate_with_its_reason() {
    let ca = Ca::new(TD, DAY).unwrap();
    let echo = echo().await;
    let server = proxy_for(&ca, "/ns/default/sa/echo", "", echo.addr).await;
    // The client verifies the server properly; only its own certificate is bad.
    let verifying_store = store(&ca, &leaf(&ca, "/ns/default/sa/checker", |_| {}));
    let mut cases = bad_leaves(&ca);
    cases.push((
        "missing_eku",
        leaf(&ca, "/ns/x/sa/y", |s| {
            s.eku = Some(vec![ExtendedKeyUsagePurpose::ServerAuth])
        }),
    ));
    for (reason, bad) in cases {
        let mut cfg = rustls::ClientConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier::new(
                verifying_store.clone(),
                crypto_provider(),
            )))
            .with_client_auth_cert(parse_certs(bad.cert.as_bytes()).unwrap(), key(&bad))
            .unwrap();
        cfg.alpn_protocols = vec![b"meshlet/1".to_vec()];
        let tcp = TcpStream::connect(server.inbound_addrs[0]).await.unwrap();
        let name = ServerName::try_from("127.0.0.1").unwrap();
        // In TLS 1.3 the client finishes first; the refusal shows on the first read.
        if let Ok(mut tls) = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
        {
            let _ = tls.write_all(b"hello").await;
            let mut buf = [0u8; 16];
            let n = tls.read(&mut buf).await.unwrap_or(0);
            assert_eq!(n, 0, "{reason}: the server must not answer");
        }
        let series = format!(
            r#"meshlet_tls_handshake_failures_total{{direction="inbound",reason="{reason}"}}"#
        );
        eventually(&series, async || {
            metric(&metrics(&server).await, &series) == 1.0
        })
        .await;
    }
    assert_eq!(
        echo.accepted.load(Ordering::SeqCst),
        0,
        "no bad client may reach the app"
    );
}

#[tokio::test]
async fn the_outbound_side_refuses_each_bad_server_certificate_with_its_reason() {
    let ca = Ca::new(TD, DAY).unwrap();
    let client_store = store(&ca, &leaf(&ca, "/ns/default/sa/pod-worker", |_| {}));
    let mut cases = bad_leaves(&ca);
    cases.push((
        "missing_eku",
        leaf(&ca, "/ns/x/sa/y", |s| {
            s.eku = Some(vec![ExtendedKeyUsagePurpose::ClientAuth])
        }),
    ));
    for (reason, bad) in cases {
        // A fake "meshlet proxy" that presents the bad certificate and records what it receives.
        let mut cfg = rustls::ServerConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_client_cert_verifier(Arc::new(SpiffeClientVerifier::new(
                client_store.clone(),
                crypto_provider(),
            )))
            .with_single_cert(parse_certs(bad.cert.as_bytes()).unwrap(), key(&bad))
            .unwrap();
        cfg.alpn_protocols = vec![b"meshlet/1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let got = Arc::new(std::sync::Mutex::new(Vec::new()));
        let rec = got.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                if let Ok(mut tls) = acceptor.accept(s).await {
                    let mut buf = vec![0u8; 1024];
                    while let Ok(n) = tls.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        rec.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                }
            }
        });
        let client = proxy(
            config("outbound: {mtls: mtls}"),
            client_store.clone(),
            addr,
            addr,
        )
        .await;
        let answer = roundtrip(client.outbound_addrs[0], b"app data")
            .await
            .unwrap_or_default();
        assert!(answer.is_empty(), "{reason}");
        let m = metrics(&client).await;
        let series = format!(
            r#"meshlet_tls_handshake_failures_total{{direction="outbound",reason="{reason}"}}"#
        );
        assert_eq!(metric(&m, &series), 1.0, "{reason}: {m}");
        assert!(
            got.lock().unwrap().is_empty(),
            "{reason}: application data reached a bad server"
        );
    }
}
