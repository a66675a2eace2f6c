//! Shared by the issuer's tests: a stand-in API server, a CA on disk, an issuer, and a client
//! that asks it as the sidecar does.
#![allow(dead_code)]

pub mod api_server;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use meshlet_defaults::issuer::{CSR_CONTENT_TYPE, SVID_PATH};
use meshlet_identity::https::Client;
use meshlet_identity::issue::{write_file, Ca};
use meshlet_issuer::authority::CaFiles;
use meshlet_issuer::kube::ApiConfig;
use meshlet_issuer::{IssuerConfig, Running};

pub use api_server::{ApiServer, Token};

pub const TD: &str = "cluster.local";

/// A CA written where `meshlet issuer --ca-dir` reads it, with `bundle` as bundle.crt.
pub fn write_ca(dir: &Path, ca: &Ca, bundle: &str) -> CaFiles {
    write_file(dir, "ca.crt", &ca.pem.cert, false).unwrap();
    write_file(dir, "ca.key", &ca.pem.key, true).unwrap();
    write_file(dir, "bundle.crt", bundle, false).unwrap();
    CaFiles {
        cert: dir.join("ca.crt"),
        key: dir.join("ca.key"),
        bundle: dir.join("bundle.crt"),
    }
}

/// An issuer on loopback (or `listen`) for `api`.
pub fn config(api: &ApiServer, ca: CaFiles, ttl: Duration, listen: SocketAddr) -> IssuerConfig {
    IssuerConfig {
        listen,
        trust_domain: TD.into(),
        ca,
        bootstrap: None,
        ttl,
        serving_names: vec![listen.ip().to_string()],
        api: ApiConfig {
            url: api.url().parse().unwrap(),
            token: api.token_file.clone(),
            ca: api.ca_file.clone(),
        },
        publish_every: None,
        webhook: None,
    }
}

pub fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A CSR for a fresh key, asking for `sans` (DNS names or URIs).
pub fn csr(sans: &[&str]) -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = sans
        .iter()
        .map(|s| match s.strip_prefix("spiffe://") {
            Some(_) => rcgen::SanType::URI((*s).try_into().unwrap()),
            None => rcgen::SanType::DnsName((*s).try_into().unwrap()),
        })
        .collect();
    params.serialize_request(&key).unwrap().pem().unwrap()
}

/// POSTs `body` with `token` as the sidecar does: the status and the answer's text.
pub async fn ask(issuer: &Running, bundle_pem: &str, token: &str, body: Vec<u8>) -> (u16, String) {
    let anchors = meshlet_identity::source::parse_certs(bundle_pem.as_bytes()).unwrap();
    let url = format!("https://{}", issuer.address).parse().unwrap();
    let client = Client::new(url, &anchors).unwrap();
    let request = http::Request::post(SVID_PATH)
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .header(http::header::CONTENT_TYPE, CSR_CONTENT_TYPE)
        .body(Bytes::from(body))
        .unwrap();
    let (status, text) = client.send(request, 1 << 20).await.unwrap();
    (status.as_u16(), String::from_utf8_lossy(&text).into_owned())
}

/// The URI SANs and DNS SANs of the first certificate of a PEM chain, and its lifetime.
pub fn names_of(chain_pem: &str) -> (Vec<String>, Vec<String>, Duration) {
    use x509_parser::prelude::*;
    let der = meshlet_identity::source::parse_certs(chain_pem.as_bytes()).unwrap();
    let (_, cert) = X509Certificate::from_der(der[0].as_ref()).unwrap();
    let (mut uris, mut dns) = (Vec::new(), Vec::new());
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(u) => uris.push(u.to_string()),
                GeneralName::DNSName(d) => dns.push(d.to_string()),
                other => dns.push(format!("{other:?}")),
            }
        }
    }
    let v = cert.validity();
    let life = (v.not_after.timestamp() - v.not_before.timestamp()) as u64;
    (uris, dns, Duration::from_secs(life))
}

/// Waits until `f` holds, for at most `secs` seconds.
pub async fn eventually(what: &str, secs: u64, mut f: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// A directory for one test, and the paths of a pod's token and bundle in it.
pub fn pod_files(dir: &Path, pod: &str, token: &str, bundle: &str) -> (PathBuf, PathBuf) {
    let d = dir.join(pod);
    std::fs::create_dir_all(&d).unwrap();
    write_file(&d, "token", token, false).unwrap();
    write_file(&d, "ca.crt", bundle, false).unwrap();
    (d.join("token"), d.join("ca.crt"))
}
