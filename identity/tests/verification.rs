//! Every refusal reason of peer verification, each with a certificate made for it.

use std::time::Duration;

use meshlet_identity::issue::{Ca, LeafSpec, Pem};
use meshlet_identity::source::{parse_certs, Part};
use meshlet_identity::verify::{verify_peer, Usage};
use meshlet_identity::{crypto_provider, Identity, SpiffeId, TrustBundles};
use rcgen::ExtendedKeyUsagePurpose;
use rustls_pki_types::UnixTime;

const TD: &str = "cluster.local";
const DAY: Duration = Duration::from_secs(86400);

fn id(path: &str) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://{TD}{path}")).unwrap()
}

fn bundles_of(ca: &Ca) -> TrustBundles {
    let mut b = TrustBundles::default();
    b.insert(TD, parse_certs(ca.pem.cert.as_bytes()).unwrap())
        .unwrap();
    b
}

fn check(bundles: &TrustBundles, leaf: &Pem, usage: Usage) -> Result<SpiffeId, &'static str> {
    let chain = parse_certs(leaf.cert.as_bytes()).unwrap();
    verify_peer(
        bundles,
        &crypto_provider(),
        &chain[0],
        &chain[1..],
        UnixTime::now(),
        usage,
    )
    .map_err(|e| e.reason().label())
}

#[test]
fn a_correct_svid_verifies_for_both_usages_and_yields_its_id() {
    let ca = Ca::new(TD, DAY).unwrap();
    let leaf = ca.issue_svid(&id("/ns/default/sa/echo"), DAY).unwrap();
    assert_eq!(
        check(&bundles_of(&ca), &leaf, Usage::Server).unwrap(),
        id("/ns/default/sa/echo")
    );
    assert!(check(&bundles_of(&ca), &leaf, Usage::Client).is_ok());
}

#[test]
fn a_certificate_from_another_ca_is_an_unknown_issuer() {
    let ours = Ca::new(TD, DAY).unwrap();
    let theirs = Ca::new(TD, DAY).unwrap();
    let leaf = theirs.issue_svid(&id("/ns/default/sa/x"), DAY).unwrap();
    assert_eq!(
        check(&bundles_of(&ours), &leaf, Usage::Client),
        Err("unknown_issuer")
    );
}

#[test]
fn another_trust_domain_is_refused() {
    let ours = Ca::new(TD, DAY).unwrap();
    let other = Ca::new("other.example", DAY).unwrap();
    let leaf = other
        .issue_svid(
            &SpiffeId::parse("spiffe://other.example/ns/a/sa/b").unwrap(),
            DAY,
        )
        .unwrap();
    assert_eq!(
        check(&bundles_of(&ours), &leaf, Usage::Client),
        Err("wrong_trust_domain")
    );
    // Even when signed by our own CA, an ID of a foreign trust domain is refused.
    let forged = ours
        .issue_svid(
            &SpiffeId::parse("spiffe://other.example/ns/a/sa/b").unwrap(),
            DAY,
        )
        .unwrap();
    assert_eq!(
        check(&bundles_of(&ours), &forged, Usage::Client),
        Err("wrong_trust_domain")
    );
}

#[test]
fn two_uri_sans_or_none_are_refused() {
    let ca = Ca::new(TD, DAY).unwrap();
    let mut spec = LeafSpec::svid(&id("/a"), DAY);
    spec.uris.push(format!("spiffe://{TD}/b"));
    assert_eq!(
        check(&bundles_of(&ca), &ca.issue(&spec).unwrap(), Usage::Client),
        Err("bad_spiffe_id")
    );
    let mut spec = LeafSpec::svid(&id("/a"), DAY);
    spec.uris.clear();
    spec.dns.push("echo.default.svc".into());
    assert_eq!(
        check(&bundles_of(&ca), &ca.issue(&spec).unwrap(), Usage::Client),
        Err("bad_spiffe_id")
    );
}

#[test]
fn expired_and_not_yet_valid_certificates_are_refused() {
    let ca = Ca::new(TD, DAY).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let mut spec = LeafSpec::svid(&id("/a"), DAY);
    spec.not_before = now - time::Duration::days(2);
    spec.not_after = now - time::Duration::days(1);
    assert_eq!(
        check(&bundles_of(&ca), &ca.issue(&spec).unwrap(), Usage::Client),
        Err("expired")
    );
    spec.not_before = now + time::Duration::hours(1);
    spec.not_after = now + time::Duration::days(1);
    assert_eq!(
        check(&bundles_of(&ca), &ca.issue(&spec).unwrap(), Usage::Client),
        Err("not_yet_valid")
    );
}

#[test]
fn a_ca_certificate_is_refused_as_a_leaf() {
    let ca = Ca::new(TD, DAY).unwrap();
    let mut spec = LeafSpec::svid(&id("/a"), DAY);
    spec.is_ca = true;
    assert_eq!(
        check(&bundles_of(&ca), &ca.issue(&spec).unwrap(), Usage::Server),
        Err("ca_as_leaf")
    );
}

#[test]
fn an_eku_without_client_auth_cannot_be_a_client() {
    let ca = Ca::new(TD, DAY).unwrap();
    let mut spec = LeafSpec::svid(&id("/a"), DAY);
    spec.eku = Some(vec![ExtendedKeyUsagePurpose::ServerAuth]);
    let leaf = ca.issue(&spec).unwrap();
    assert_eq!(
        check(&bundles_of(&ca), &leaf, Usage::Client),
        Err("missing_eku")
    );
    assert!(check(&bundles_of(&ca), &leaf, Usage::Server).is_ok());
    // Without any EKU extension the certificate is good for both.
    spec.eku = None;
    assert!(check(&bundles_of(&ca), &ca.issue(&spec).unwrap(), Usage::Client).is_ok());
}

#[test]
fn a_leaf_without_digital_signature_is_refused() {
    let ca = Ca::new(TD, DAY).unwrap();
    let mut spec = LeafSpec::svid(&id("/a"), DAY);
    spec.digital_signature = false;
    assert_eq!(
        check(&bundles_of(&ca), &ca.issue(&spec).unwrap(), Usage::Server),
        Err("bad_key_usage")
    );
}

#[test]
fn loading_refuses_a_key_that_does_not_match_the_certificate() {
    let ca = Ca::new(TD, DAY).unwrap();
    let a = ca.issue_svid(&id("/a"), DAY).unwrap();
    let b = ca.issue_svid(&id("/b"), DAY).unwrap();
    let p = crypto_provider();
    assert!(Identity::from_pem(
        a.cert.as_bytes(),
        a.key.as_bytes(),
        ca.pem.cert.as_bytes(),
        TD,
        &p
    )
    .is_ok());
    let (part, why) = Identity::from_pem(
        a.cert.as_bytes(),
        b.key.as_bytes(),
        ca.pem.cert.as_bytes(),
        TD,
        &p,
    )
    .unwrap_err();
    assert_eq!(part, Part::Key);
    assert!(why.contains("does not match"), "{why}");
}

#[test]
fn loading_refuses_our_own_svid_of_another_trust_domain_and_empty_files() {
    let ca = Ca::new(TD, DAY).unwrap();
    let a = ca.issue_svid(&id("/a"), DAY).unwrap();
    let p = crypto_provider();
    let (part, why) = Identity::from_pem(
        a.cert.as_bytes(),
        a.key.as_bytes(),
        ca.pem.cert.as_bytes(),
        "prod.example",
        &p,
    )
    .unwrap_err();
    assert_eq!(part, Part::Cert);
    assert!(why.contains("trust domain"), "{why}");
    let (part, _) =
        Identity::from_pem(b"", a.key.as_bytes(), ca.pem.cert.as_bytes(), TD, &p).unwrap_err();
    assert_eq!(part, Part::Cert);
    let (part, _) = Identity::from_pem(
        a.cert.as_bytes(),
        a.key.as_bytes(),
        b"-----BEGIN CERT",
        TD,
        &p,
    )
    .unwrap_err();
    assert_eq!(part, Part::Bundle);
}

#[test]
fn a_ca_written_to_pem_can_be_loaded_back_and_issue() {
    let ca = Ca::new(TD, DAY).unwrap();
    let again = Ca::from_pem(&ca.pem.cert, &ca.pem.key).unwrap();
    let leaf = again.issue_svid(&id("/x"), DAY).unwrap();
    assert!(check(&bundles_of(&ca), &leaf, Usage::Client).is_ok());
}

fn own(leaf: &Pem, cert_pem: &str, bundle: &Ca) -> Result<Identity, (Part, String)> {
    Identity::from_pem(
        cert_pem.as_bytes(),
        leaf.key.as_bytes(),
        bundle.pem.cert.as_bytes(),
        TD,
        &crypto_provider(),
    )
}

#[test]
fn our_own_leaf_must_chain_to_our_own_bundle() {
    let (ca, other) = (Ca::new(TD, DAY).unwrap(), Ca::new(TD, DAY).unwrap());
    let leaf = ca.issue_svid(&id("/ns/a/sa/b"), DAY).unwrap();

    let refused = own(&leaf, &leaf.cert, &other).err().unwrap();

    assert_eq!(refused.0, Part::Cert);
    assert!(
        refused.1.contains("does not chain to our own trust bundle"),
        "{}",
        refused.1
    );
    assert!(own(&leaf, &leaf.cert, &ca).is_ok());
}

#[test]
fn an_overlong_chain_of_our_own_is_refused() {
    let ca = Ca::new(TD, DAY).unwrap();
    let leaf = ca.issue_svid(&id("/ns/a/sa/b"), DAY).unwrap();
    let hundred = leaf.cert.repeat(100);

    let refused = own(&leaf, &hundred, &ca).err().unwrap();

    assert_eq!(refused.0, Part::Cert);
    assert!(refused.1.contains("100 certificates"), "{}", refused.1);
}

/// A leaf for `/ns/a/sa/b` issued by an intermediate CA with `usages` under `root`, as one PEM
/// chain (leaf, then the intermediate).
fn through_intermediate(root: &Ca, usages: Vec<rcgen::KeyUsagePurpose>) -> Pem {
    let root_issuer = rcgen::Issuer::from_ca_cert_pem(
        &root.pem.cert,
        rcgen::KeyPair::from_pem(&root.pem.key).unwrap(),
    )
    .unwrap();
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "intermediate");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = usages;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let inter = params.signed_by(&key, &root_issuer).unwrap();
    let inter_ca = Ca::from_pem(&inter.pem(), &key.serialize_pem()).unwrap();
    let leaf = inter_ca.issue_svid(&id("/ns/a/sa/b"), DAY).unwrap();
    Pem {
        cert: format!("{}{}", leaf.cert, inter.pem()),
        key: leaf.key,
    }
}

#[test]
fn a_chain_through_a_ca_without_key_cert_sign_is_refused_from_a_peer_and_as_our_own() {
    use rcgen::KeyUsagePurpose::{CrlSign, DigitalSignature, KeyCertSign};
    let root = Ca::new(TD, DAY).unwrap();
    let signing = through_intermediate(&root, vec![KeyCertSign, DigitalSignature]);
    let not_signing = through_intermediate(&root, vec![CrlSign, DigitalSignature]);

    assert!(check(&bundles_of(&root), &signing, Usage::Client).is_ok());
    assert_eq!(
        check(&bundles_of(&root), &not_signing, Usage::Client),
        Err("bad_chain")
    );
    assert!(own(&not_signing, &not_signing.cert, &root).is_err());
}

#[test]
fn a_certificate_after_the_leaf_that_is_not_a_signing_ca_is_refused() {
    let ca = Ca::new(TD, DAY).unwrap();
    let leaf = ca.issue_svid(&id("/ns/a/sa/b"), DAY).unwrap();
    let stray = ca.issue_svid(&id("/ns/a/sa/stray"), DAY).unwrap();
    let with_stray = Pem {
        cert: format!("{}{}", leaf.cert, stray.cert),
        key: leaf.key.clone(),
    };

    assert_eq!(
        check(&bundles_of(&ca), &with_stray, Usage::Server),
        Err("bad_chain")
    );
    let refused = own(&with_stray, &with_stray.cert, &ca).err().unwrap();
    assert!(refused.1.contains("keyCertSign"), "{}", refused.1);
}

#[test]
fn a_spiffe_id_without_a_path_is_refused_from_a_peer_and_as_our_own() {
    let ca = Ca::new(TD, DAY).unwrap();
    let mut spec = LeafSpec::svid(&id("/x"), DAY);
    spec.uris = vec![format!("spiffe://{TD}")];
    let rootless = ca.issue(&spec).unwrap();

    assert_eq!(
        check(&bundles_of(&ca), &rootless, Usage::Client),
        Err("bad_spiffe_id")
    );
    let refused = own(&rootless, &rootless.cert, &ca).err().unwrap();
    assert!(refused.1.contains("has no path"), "{}", refused.1);
}
