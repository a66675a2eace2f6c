//! What a CSR may ask for: its key, signed by that key, and nothing else. The identity comes from
//! the reviewed token, never from the CSR: a CSR that names any identity but the caller's, any
//! other name (DNS, IP, email), a CA, or an extension, is refused rather than trimmed, so a
//! caller never gets less than it asked for without knowing.

use meshlet_defaults::issuer::MAX_CSR_BYTES;
use meshlet_identity::SpiffeId;
use rcgen::{CertificateSigningRequestParams, IsCa, PublicKey, SanType};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateSigningRequestDer;

/// Why a CSR is refused.
#[derive(Debug, thiserror::Error)]
pub enum CsrRejected {
    #[error("the CSR is larger than {MAX_CSR_BYTES} bytes")]
    TooLarge,
    #[error("not a PEM CERTIFICATE REQUEST: {0}")]
    NotPem(String),
    #[error("the CSR does not parse, is not signed by its own key, or asks for an extension the issuer does not grant: {0}")]
    Malformed(String),
    #[error("the CSR asks for {asked}, but the token is {caller}'s")]
    OtherIdentity { asked: String, caller: String },
    #[error("the CSR asks for a name the issuer does not grant: {0}")]
    ExtraName(String),
    #[error("the CSR asks for a CA certificate")]
    AsksForCa,
}

/// The public key of a CSR that asks for nothing but an SVID for `caller`.
pub fn accept(pem: &[u8], caller: &SpiffeId) -> Result<PublicKey, CsrRejected> {
    if pem.len() > MAX_CSR_BYTES {
        return Err(CsrRejected::TooLarge);
    }
    let der = CertificateSigningRequestDer::from_pem_slice(pem)
        .map_err(|e| CsrRejected::NotPem(e.to_string()))?;
    // Parses and checks the signature with the CSR's own key: proof the caller holds it.
    let csr = CertificateSigningRequestParams::from_der(&der)
        .map_err(|e| CsrRejected::Malformed(e.to_string()))?;
    for name in &csr.params.subject_alt_names {
        match name {
            SanType::URI(uri) if uri.as_str() == caller.as_str() => {}
            SanType::URI(uri) if uri.as_str().starts_with("spiffe://") => {
                return Err(CsrRejected::OtherIdentity {
                    asked: uri.as_str().to_owned(),
                    caller: caller.to_string(),
                })
            }
            other => return Err(CsrRejected::ExtraName(format!("{other:?}"))),
        }
    }
    if matches!(csr.params.is_ca, IsCa::Ca(_)) {
        return Err(CsrRejected::AsksForCa);
    }
    Ok(csr.public_key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair};

    fn csr(params: CertificateParams) -> Vec<u8> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        params
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap()
            .into_bytes()
    }

    fn caller() -> SpiffeId {
        "spiffe://cluster.local/ns/shop/sa/web".parse().unwrap()
    }

    #[test]
    fn a_csr_that_asks_for_nothing_or_for_the_callers_own_id_is_accepted() {
        assert!(accept(&csr(CertificateParams::default()), &caller()).is_ok());
        let own = CertificateParams::new(vec![]).unwrap();
        let mut own = own;
        own.subject_alt_names = vec![SanType::URI(caller().as_str().try_into().unwrap())];
        assert!(accept(&csr(own), &caller()).is_ok());
    }

    #[test]
    fn a_csr_asking_for_another_identity_or_more_names_is_refused() {
        let mut other = CertificateParams::default();
        other.subject_alt_names = vec![SanType::URI(
            "spiffe://cluster.local/ns/shop/sa/admin"
                .try_into()
                .unwrap(),
        )];
        assert!(matches!(
            accept(&csr(other), &caller()),
            Err(CsrRejected::OtherIdentity { .. })
        ));
        let extra = CertificateParams::new(vec!["db.shop.svc".to_owned()]).unwrap();
        assert!(matches!(
            accept(&csr(extra), &caller()),
            Err(CsrRejected::ExtraName(_))
        ));
        let mut ca = CertificateParams::default();
        ca.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        assert!(matches!(
            accept(&csr(ca), &caller()),
            Err(CsrRejected::AsksForCa)
        ));
    }

    #[test]
    fn a_csr_that_is_not_one_is_refused_before_anything_is_signed() {
        assert!(matches!(
            accept(b"hello", &caller()),
            Err(CsrRejected::NotPem(_))
        ));
        let garbage =
            b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n";
        assert!(matches!(
            accept(garbage, &caller()),
            Err(CsrRejected::Malformed(_))
        ));
        // A CSR whose signature does not match its key: one byte of the signature flipped.
        let good = csr(CertificateParams::default());
        let mut der = CertificateSigningRequestDer::from_pem_slice(&good)
            .unwrap()
            .as_ref()
            .to_vec();
        let last = der.len() - 3;
        der[last] ^= 0x01;
        let tampered = CertificateSigningRequestDer::from(der);
        assert!(matches!(
            accept(pem_of(&tampered).as_bytes(), &caller()),
            Err(CsrRejected::Malformed(_))
        ));
        assert!(matches!(
            accept(&vec![b'A'; MAX_CSR_BYTES + 1], &caller()),
            Err(CsrRejected::TooLarge)
        ));
    }

    fn pem_of(der: &CertificateSigningRequestDer<'_>) -> String {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            lines.join("\n")
        )
    }
}
