//! Trust bundles: the CA certificates that anchor each trust domain we accept peers from.

use std::collections::HashMap;

use rustls_pki_types::{CertificateDer, TrustAnchor};

/// Trust anchors keyed by trust domain. A peer whose trust domain has no entry is refused.
#[derive(Clone, Debug, Default)]
pub struct TrustBundles {
    anchors: HashMap<String, Vec<TrustAnchor<'static>>>,
    certs: HashMap<String, Vec<CertificateDer<'static>>>,
}

impl TrustBundles {
    /// Adds (or replaces) the bundle of one trust domain.
    pub fn insert(
        &mut self,
        trust_domain: &str,
        certs: Vec<CertificateDer<'static>>,
    ) -> Result<(), String> {
        if certs.is_empty() {
            return Err(format!(
                "the trust bundle of {trust_domain} holds no certificate"
            ));
        }
        let anchors = certs
            .iter()
            .enumerate()
            .map(|(i, c)| {
                webpki::anchor_from_trusted_cert(c)
                    .map(|a| a.to_owned())
                    .map_err(|e| {
                        format!(
                            "certificate #{} of the bundle is not a usable trust anchor: {e}",
                            i + 1
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.anchors.insert(trust_domain.to_owned(), anchors);
        self.certs.insert(trust_domain.to_owned(), certs);
        Ok(())
    }

    pub fn anchors(&self, trust_domain: &str) -> Option<&[TrustAnchor<'static>]> {
        self.anchors.get(trust_domain).map(Vec::as_slice)
    }

    /// True when both hold the same certificates for the same trust domains.
    pub fn same_as(&self, other: &TrustBundles) -> bool {
        self.certs == other.certs
    }
}
