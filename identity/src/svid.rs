//! The X.509-SVID rules for a leaf certificate, checked with x509-parser.
//!
//! Chain building and signatures are webpki's job (see `verify`); this module checks what makes a
//! certificate an SVID: exactly one URI SAN holding a valid SPIFFE ID, not a CA, digitalSignature.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::reason::CertReason;
use crate::spiffe_id::{SpiffeId, SpiffeIdError};

/// What a valid SVID leaf says about itself.
#[derive(Clone, Debug)]
pub struct SvidInfo {
    pub id: SpiffeId,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

#[derive(Debug, thiserror::Error)]
pub enum SvidError {
    #[error("certificate cannot be parsed: {0}")]
    Unparsable(String),
    #[error("certificate has no URI SAN (an SVID carries exactly one spiffe:// URI)")]
    NoUriSan,
    #[error("certificate has {0} URI SANs (an SVID carries exactly one)")]
    SeveralUriSans(usize),
    #[error("URI SAN: {0}")]
    BadId(#[from] SpiffeIdError),
    #[error(
        "SPIFFE ID {0} has no path: an X.509-SVID's ID must name a workload under its trust domain"
    )]
    NoPath(String),
    #[error("certificate {0} after the leaf is not a CA with the keyCertSign key usage: an SVID's chain holds only its signing CAs")]
    NotASigningCa(usize),
    #[error("certificate is a CA (basicConstraints cA=true) and cannot be used as a leaf")]
    CaAsLeaf,
    #[error("certificate lacks the digitalSignature key usage")]
    NoDigitalSignature,
    #[error("leaf certificate has the keyCertSign or cRLSign key usage")]
    SigningUsage,
    #[error("trust domain {found:?} is not the expected {expected:?}")]
    WrongTrustDomain { found: String, expected: String },
    #[error("certificate expired at {0}")]
    Expired(String),
    #[error("certificate is not valid before {0}")]
    NotYetValid(String),
    #[error("certificate's extended key usage lacks {0}")]
    MissingEku(&'static str),
}

impl SvidError {
    /// Why, as a type (its label is for metrics).
    pub fn reason(&self) -> CertReason {
        match self {
            SvidError::Unparsable(_) => CertReason::BadCertificate,
            SvidError::NoUriSan
            | SvidError::SeveralUriSans(_)
            | SvidError::BadId(_)
            | SvidError::NoPath(_) => CertReason::BadSpiffeId,
            SvidError::NotASigningCa(_) => CertReason::BadChain,
            SvidError::CaAsLeaf => CertReason::CaAsLeaf,
            SvidError::NoDigitalSignature | SvidError::SigningUsage => CertReason::BadKeyUsage,
            SvidError::WrongTrustDomain { .. } => CertReason::WrongTrustDomain,
            SvidError::Expired(_) => CertReason::Expired,
            SvidError::NotYetValid(_) => CertReason::NotYetValid,
            SvidError::MissingEku(_) => CertReason::MissingEku,
        }
    }
}

/// Checks the SVID rules that do not depend on the chain, and returns the ID and validity.
pub fn check_leaf(der: &[u8]) -> Result<SvidInfo, SvidError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| SvidError::Unparsable(e.to_string()))?;
    let id = spiffe_id_of(&cert)?;
    if let Ok(Some(bc)) = cert.basic_constraints() {
        if bc.value.ca {
            return Err(SvidError::CaAsLeaf);
        }
    }
    if id.path().is_empty() {
        return Err(SvidError::NoPath(id.to_string()));
    }
    match cert.key_usage() {
        Ok(Some(ku)) => {
            if !ku.value.digital_signature() {
                return Err(SvidError::NoDigitalSignature);
            }
            if ku.value.key_cert_sign() || ku.value.crl_sign() {
                return Err(SvidError::SigningUsage);
            }
        }
        Ok(None) => return Err(SvidError::NoDigitalSignature),
        Err(e) => return Err(SvidError::Unparsable(e.to_string())),
    }
    Ok(SvidInfo {
        id,
        not_before: to_system_time(cert.validity().not_before.timestamp()),
        not_after: to_system_time(cert.validity().not_after.timestamp()),
    })
}

/// Every certificate after the leaf (`position`, 1 for the first) must be a signing CA: cA=true
/// and keyCertSign. webpki checks only the certificates it puts on the path, so one that is
/// not on it would otherwise pass unread.
pub fn check_signing_ca(der: &[u8], position: usize) -> Result<(), SvidError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| SvidError::Unparsable(e.to_string()))?;
    let is_ca = matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
    let signs = matches!(cert.key_usage(), Ok(Some(ku)) if ku.value.key_cert_sign());
    if is_ca && signs {
        Ok(())
    } else {
        Err(SvidError::NotASigningCa(position))
    }
}

/// Our own SVID must serve both directions: when EKU is present it needs both purposes.
pub fn check_own_eku(der: &[u8]) -> Result<(), SvidError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| SvidError::Unparsable(e.to_string()))?;
    if let Ok(Some(eku)) = cert.extended_key_usage() {
        if !eku.value.any {
            if !eku.value.server_auth {
                return Err(SvidError::MissingEku("serverAuth"));
            }
            if !eku.value.client_auth {
                return Err(SvidError::MissingEku("clientAuth"));
            }
        }
    }
    Ok(())
}

impl SvidInfo {
    /// Validity against the clock, for our own certificate (peers' are checked by webpki).
    pub fn check_time(&self, now: SystemTime) -> Result<(), SvidError> {
        if now > self.not_after {
            return Err(SvidError::Expired(fmt_time(self.not_after)));
        }
        if now < self.not_before {
            return Err(SvidError::NotYetValid(fmt_time(self.not_before)));
        }
        Ok(())
    }
}

/// The SPIFFE ID of a certificate, enforcing exactly one URI SAN.
pub fn spiffe_id_of(cert: &X509Certificate<'_>) -> Result<SpiffeId, SvidError> {
    let uris: Vec<&str> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some(*u),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(SvidError::Unparsable(e.to_string())),
    };
    match uris.as_slice() {
        [] => Err(SvidError::NoUriSan),
        [one] => Ok(SpiffeId::parse(one)?),
        many => Err(SvidError::SeveralUriSans(many.len())),
    }
}

/// The SPIFFE ID of a DER certificate (for a peer whose chain was already verified).
pub fn spiffe_id_of_der(der: &[u8]) -> Result<SpiffeId, SvidError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| SvidError::Unparsable(e.to_string()))?;
    spiffe_id_of(&cert)
}

/// When the first certificate of a verified chain expires: after that, the chain would no
/// longer verify. `None` when a certificate cannot be parsed.
pub fn chain_not_after<C: AsRef<[u8]>>(chain: &[C]) -> Option<SystemTime> {
    chain
        .iter()
        .map(|der| {
            x509_parser::parse_x509_certificate(der.as_ref())
                .ok()
                .map(|(_, cert)| to_system_time(cert.validity().not_after.timestamp()))
        })
        .try_fold(None::<SystemTime>, |min, t| {
            let t = t?;
            Some(Some(min.map_or(t, |m| m.min(t))))
        })
        .flatten()
}

fn to_system_time(unix: i64) -> SystemTime {
    if unix >= 0 {
        UNIX_EPOCH + Duration::from_secs(unix as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(unix.unsigned_abs())
    }
}

/// RFC 3339 in UTC, for messages.
pub fn fmt_time(t: SystemTime) -> String {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    };
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("@{secs}"))
}
