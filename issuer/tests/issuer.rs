//! `meshlet issuer` over HTTPS, against a stand-in API server (tests/support/api_server.rs)
//! that answers TokenReview as the real one does. Every refusal starts from a caller's
//! position: a token it holds, a CSR it wrote.

mod support;

use std::time::Duration;

use meshlet_identity::issue::Ca;
use meshlet_identity::issuer_client::IssuerSource;
use support::*;

const DAY: Duration = Duration::from_secs(86400);

struct World {
    dir: tempfile::TempDir,
    api: ApiServer,
    ca: Ca,
    issuer: meshlet_issuer::Running,
}

async fn world(ttl: Duration) -> World {
    let dir = tempfile::tempdir().unwrap();
    let api = ApiServer::start(loopback(), dir.path()).await;
    let ca = Ca::new(TD, DAY).unwrap();
    let files = write_ca(&dir.path().join("ca"), &ca, &ca.pem.cert);
    let issuer = meshlet_issuer::start(config(&api, files, ttl, loopback()))
        .await
        .unwrap();
    World {
        dir,
        api,
        ca,
        issuer,
    }
}

#[tokio::test]
async fn a_pods_token_gets_an_svid_for_exactly_its_service_account_and_nothing_else() {
    let w = world(Duration::from_secs(3600)).await;
    let token = w
        .api
        .mint(Token::for_pod("shop", "web", "web-1", "meshlet"));
    let (status, chain) = ask(&w.issuer, &w.ca.pem.cert, &token, csr(&[]).into_bytes()).await;
    assert_eq!(status, 200, "{chain}");
    let (uris, others, life) = names_of(&chain);
    assert_eq!(uris, ["spiffe://cluster.local/ns/shop/sa/web"]);
    assert!(others.is_empty(), "other names: {others:?}");
    // LeafSpec back-dates a minute against clock skew.
    assert_eq!(life, Duration::from_secs(3600 + 60));

    // The sidecar's own half: a key in memory, the SVID validated whole.
    let (token_file, bundle_file) = pod_files(w.dir.path(), "web-1", &token, &w.ca.pem.cert);
    let source = IssuerSource {
        url: format!("https://{}", w.issuer.address).parse().unwrap(),
        token: token_file,
        bundle: bundle_file,
    };
    let identity = source.request(TD).await.unwrap();
    assert_eq!(
        identity.id.as_str(),
        "spiffe://cluster.local/ns/shop/sa/web"
    );
}

#[tokio::test]
async fn tokens_that_prove_no_pod_of_a_service_account_get_no_svid() {
    let w = world(DAY).await;
    let mut expired = Token::for_pod("shop", "web", "web-2", "meshlet");
    expired.issued -= Duration::from_secs(1200);
    expired.expires -= Duration::from_secs(1200);
    let expired = w.api.mint(expired);
    let other_audience = w.api.mint(Token::for_pod(
        "shop",
        "web",
        "web-3",
        "https://kubernetes.default.svc",
    ));
    let deleted = w
        .api
        .mint(Token::for_pod("shop", "web", "web-4", "meshlet"));
    w.api.delete_pod("shop", "web-4");
    let mut unbound = Token::for_pod("shop", "web", "web-5", "meshlet");
    unbound.pod = None;
    let unbound = w.api.mint(unbound);
    let mut long_lived = Token::for_pod("shop", "web", "web-6", "meshlet");
    long_lived.expires += Duration::from_secs(365 * 86400);
    let long_lived = w.api.mint(long_lived);
    for (what, token, want, says) in [
        ("expired", expired.as_str(), 401, "token has expired"),
        (
            "made for another audience",
            &other_audience,
            401,
            "audiences",
        ),
        ("of a deleted pod", &deleted, 401, "not found"),
        ("bound to no pod", &unbound, 403, "not bound to a pod"),
        ("that lives a year", &long_lived, 401, "at most"),
        (
            "unknown",
            "eyJhbGciOiJSUzI1NiJ9.e30.forged",
            401,
            "invalid bearer token",
        ),
        ("empty", "", 401, "no bearer token"),
    ] {
        let (status, text) = ask(&w.issuer, &w.ca.pem.cert, token, csr(&[]).into_bytes()).await;
        assert_eq!(status, want, "a token {what}: {text}");
        assert!(text.contains(says), "a token {what}: {text}");
    }
}

#[tokio::test]
async fn a_csr_that_asks_for_more_than_the_callers_own_svid_is_refused() {
    let w = world(DAY).await;
    let token = w
        .api
        .mint(Token::for_pod("shop", "web", "web-1", "meshlet"));
    let huge = vec![b'A'; meshlet_defaults::issuer::MAX_CSR_BYTES + 1];
    for (what, body, want, says) in [
        (
            "another identity",
            csr(&["spiffe://cluster.local/ns/shop/sa/admin"]).into_bytes(),
            403,
            "asks for spiffe://cluster.local/ns/shop/sa/admin",
        ),
        (
            "another trust domain",
            csr(&["spiffe://evil.example/ns/shop/sa/web"]).into_bytes(),
            403,
            "asks for spiffe://evil.example",
        ),
        (
            "a DNS name",
            csr(&["db.shop.svc"]).into_bytes(),
            403,
            "name the issuer does not grant",
        ),
        ("nothing parseable", b"not a csr".to_vec(), 400, "not a PEM"),
        (
            "a broken request",
            b"-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n"
                .to_vec(),
            400,
            "does not parse",
        ),
        ("a huge body", huge, 413, "larger than"),
    ] {
        let (status, text) = ask(&w.issuer, &w.ca.pem.cert, &token, body).await;
        assert_eq!(status, want, "a CSR with {what}: {text}");
        assert!(text.contains(says), "a CSR with {what}: {text}");
    }
    // Its own SPIFFE ID may be asked for: that is what it gets anyway.
    let own = csr(&["spiffe://cluster.local/ns/shop/sa/web"]);
    assert_eq!(
        ask(&w.issuer, &w.ca.pem.cert, &token, own.into_bytes())
            .await
            .0,
        200
    );
}

#[tokio::test]
async fn a_flood_is_answered_at_once_with_429_and_the_issuer_keeps_issuing() {
    let w = world(DAY).await;
    let token = w
        .api
        .mint(Token::for_pod("shop", "web", "web-1", "meshlet"));
    w.api.slow_reviews(Duration::from_millis(300));
    let mut calls = Vec::new();
    for _ in 0..200 {
        let (issuer_addr, bundle, token) = (w.issuer.address, w.ca.pem.cert.clone(), token.clone());
        calls.push(tokio::spawn(async move {
            let anchors = meshlet_identity::source::parse_certs(bundle.as_bytes()).unwrap();
            let client = meshlet_identity::https::Client::new(
                format!("https://{issuer_addr}").parse().unwrap(),
                &anchors,
            )
            .unwrap();
            let request = http::Request::post(meshlet_defaults::issuer::SVID_PATH)
                .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
                .body(bytes::Bytes::from(csr(&[])))
                .unwrap();
            client.send(request, 1 << 20).await.map(|(s, _)| s.as_u16())
        }));
    }
    let mut statuses = Vec::new();
    for c in calls {
        statuses.push(c.await.unwrap().unwrap());
    }
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    let issued = statuses.iter().filter(|s| **s == 200).count();
    assert!(
        issued >= meshlet_issuer::server::MAX_IN_FLIGHT,
        "{statuses:?}"
    );
    assert!(
        statuses.contains(&429),
        "more than the issuer holds at once were in flight"
    );
    // Every request was reviewed, or refused before the API server was asked.
    assert_eq!(w.api.reviews(), issued as u64);
    w.api.slow_reviews(Duration::ZERO);
    let (status, _) = ask(&w.issuer, &w.ca.pem.cert, &token, csr(&[]).into_bytes()).await;
    assert_eq!(status, 200, "the issuer issues again after the flood");
}

#[tokio::test]
async fn the_bundle_is_published_in_every_namespace_and_follows_the_ca_files() {
    let dir = tempfile::tempdir().unwrap();
    let api = ApiServer::start(loopback(), dir.path()).await;
    let old = Ca::new(TD, DAY).unwrap();
    let files = write_ca(&dir.path().join("ca"), &old, &old.pem.cert);
    let mut cfg = config(&api, files, DAY, loopback());
    cfg.publish_every = Some(Duration::from_millis(200));
    let _issuer = meshlet_issuer::start(cfg).await.unwrap();
    for ns in ["default", "meshlet-system"] {
        eventually(&format!("the bundle in {ns}"), 10, async || {
            api.configmap(ns, "meshlet-ca-bundle", "ca.crt").as_deref()
                == Some(old.pem.cert.as_str())
        })
        .await;
    }
    api.add_namespace("shop");
    eventually("the bundle in a new namespace", 10, async || {
        api.configmap("shop", "meshlet-ca-bundle", "ca.crt")
            .is_some()
    })
    .await;
    // Step one of a CA rotation: the new CA joins the bundle.
    let new = Ca::new(TD, DAY).unwrap();
    let both = format!("{}{}", old.pem.cert, new.pem.cert);
    write_ca(&dir.path().join("ca"), &old, &both);
    for ns in ["default", "shop"] {
        eventually(&format!("both CAs in {ns}"), 10, async || {
            api.configmap(ns, "meshlet-ca-bundle", "ca.crt").as_deref() == Some(both.as_str())
        })
        .await;
    }
}

#[tokio::test]
async fn a_new_ca_that_is_not_in_the_bundle_yet_is_never_used() {
    let w = world(DAY).await;
    let token = w
        .api
        .mint(Token::for_pod("shop", "web", "web-1", "meshlet"));
    let new = Ca::new(TD, DAY).unwrap();
    // Out of order: the new CA signs before the pods trust it.
    write_ca(&w.dir.path().join("ca"), &new, &w.ca.pem.cert);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (status, chain) = ask(&w.issuer, &w.ca.pem.cert, &token, csr(&[]).into_bytes()).await;
    assert_eq!(status, 200);
    let leaf = meshlet_identity::source::parse_certs(chain.as_bytes()).unwrap();
    let old_only = meshlet_identity::source::parse_certs(w.ca.pem.cert.as_bytes()).unwrap();
    let mut bundles = meshlet_identity::TrustBundles::default();
    bundles.insert(TD, old_only).unwrap();
    meshlet_identity::verify::verify_peer(
        &bundles,
        &meshlet_identity::crypto_provider(),
        &leaf[0],
        &[],
        rustls_pki_types::UnixTime::now(),
        meshlet_identity::Usage::Client,
    )
    .expect("still signed by the CA the pods trust");
}

#[tokio::test]
async fn the_first_issuers_of_a_cluster_make_one_ca_and_both_sign_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let api = ApiServer::start(loopback(), dir.path()).await;
    // The Secret's mount, empty until the kubelet sees the Secret (the volume is optional).
    let empty = dir.path().join("no-ca-yet");
    std::fs::create_dir_all(&empty).unwrap();
    let files = meshlet_issuer::authority::CaFiles {
        cert: empty.join("ca.crt"),
        key: empty.join("ca.key"),
        bundle: empty.join("bundle.crt"),
    };
    let mut a = config(&api, files.clone(), DAY, loopback());
    a.bootstrap = Some(("meshlet-system".into(), "meshlet-ca".into()));
    let b = a.clone();
    let (a, b) = tokio::join!(meshlet_issuer::start(a), meshlet_issuer::start(b));
    let (a, b) = (a.unwrap(), b.unwrap());
    let secret = api
        .secret("meshlet-system", "meshlet-ca")
        .expect("the Secret was made");
    use base64::Engine;
    let ca_cert = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(secret["data"]["ca.crt"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    let token = api.mint(Token::for_pod("shop", "web", "web-1", "meshlet"));
    for issuer in [&a, &b] {
        let (status, text) = ask(issuer, &ca_cert, &token, csr(&[]).into_bytes()).await;
        assert_eq!(status, 200, "{text}");
    }
}

fn decoded(b64: &Value) -> String {
    use base64::Engine;
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap())
            .unwrap(),
    )
    .unwrap()
}

/// The webhook's serving certificate, verified as the API server would: by the caBundle, for
/// the Service's name.
fn verifies_for(ca_bundle: &str, cert_pem: &str, name: &str) -> bool {
    let anchors = meshlet_identity::source::parse_certs(ca_bundle.as_bytes()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for a in anchors {
        roots.add(a).unwrap();
    }
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        std::sync::Arc::new(roots),
        meshlet_identity::crypto_provider(),
    )
    .build()
    .unwrap();
    let chain = meshlet_identity::source::parse_certs(cert_pem.as_bytes()).unwrap();
    verifier
        .verify_server_cert(
            &chain[0],
            &[],
            &rustls_pki_types::ServerName::try_from(name.to_owned()).unwrap(),
            &[],
            rustls_pki_types::UnixTime::now(),
        )
        .is_ok()
}

use rustls::client::danger::ServerCertVerifier;
use serde_json::{json, Value};

#[tokio::test]
async fn the_webhooks_certificate_and_ca_bundle_are_kept_by_the_issuer_through_a_ca_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let api = ApiServer::start(loopback(), dir.path()).await;
    api.add_webhook_configuration(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "meshlet-injector"},
        "webhooks": [
            {"name": "namespace.inject.meshlet.io", "clientConfig": {"service": {"name": "meshlet-webhook", "namespace": "meshlet-system", "path": "/inject"}}},
            {"name": "pod.inject.meshlet.io", "clientConfig": {"service": {"name": "meshlet-webhook", "namespace": "meshlet-system", "path": "/inject-annotated"}}},
        ],
    }));
    let old = Ca::new(TD, DAY).unwrap();
    let ca_dir = dir.path().join("ca");
    let files = write_ca(&ca_dir, &old, &old.pem.cert);
    let mut cfg = config(&api, files, DAY, loopback());
    let name = "meshlet-webhook.meshlet-system.svc";
    cfg.webhook = Some(meshlet_issuer::webhook_tls::WebhookTls {
        namespace: "meshlet-system".into(),
        secret: "meshlet-webhook-tls".into(),
        configuration: "meshlet-injector".into(),
        dns_name: name.into(),
    });
    let _issuer = meshlet_issuer::start(cfg).await.unwrap();
    let state = |api: &ApiServer| {
        let hooks = api.webhook_configuration("meshlet-injector").unwrap();
        let bundles: Vec<String> = hooks["webhooks"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|w| w["clientConfig"].get("caBundle").map(decoded))
            .collect();
        let cert = api
            .secret("meshlet-system", "meshlet-webhook-tls")
            .map(|s| decoded(&s["data"]["tls.crt"]));
        (bundles, cert)
    };
    eventually("the webhook's Secret and caBundle", 10, async || {
        let (bundles, cert) = state(&api);
        bundles.len() == 2
            && bundles.iter().all(|b| *b == old.pem.cert)
            && cert.is_some_and(|c| verifies_for(&old.pem.cert, &c, name))
    })
    .await;
    // The CA rotates. Step 1: the API server trusts both, the old CA still signs.
    let new = Ca::new(TD, DAY).unwrap();
    let both = format!("{}{}", old.pem.cert, new.pem.cert);
    write_ca(&ca_dir, &old, &both);
    eventually("a caBundle of both roots", 10, async || {
        state(&api).0.iter().all(|b| *b == both)
    })
    .await;
    // Step 2: the new CA signs, the bundle unchanged. The webhook moves to the new CA now,
    // while both are trusted, not at step 3 when the old root goes.
    write_ca(&ca_dir, &new, &both);
    eventually(
        "a certificate from the new CA while both roots are trusted",
        10,
        async || {
            let (bundles, cert) = state(&api);
            bundles.iter().all(|b| *b == both)
                && cert.is_some_and(|c| verifies_for(&new.pem.cert, &c, name))
        },
    )
    .await;
    // Step 3: the old root out.
    write_ca(&ca_dir, &new, &new.pem.cert);
    eventually("a caBundle of the new root alone", 10, async || {
        let (bundles, cert) = state(&api);
        bundles.iter().all(|b| *b == new.pem.cert)
            && cert.is_some_and(|c| verifies_for(&new.pem.cert, &c, name))
    })
    .await;
}
