//! Issuing certificates: a throwaway CA and X.509-SVIDs for demos, tests and `meshlet cert`.
//!
//! Everything is a plain [`LeafSpec`] so tests can make the bad certificates too (two URI SANs,
//! a CA as leaf, expired, no clientAuth, ...).

use std::path::Path;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;

use crate::spiffe_id::{validate_trust_domain, SpiffeId};

#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("{0}")]
    Invalid(String),
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{path}: {err}")]
    Io { path: String, err: std::io::Error },
}

/// A certificate and its private key, both PEM.
#[derive(Clone, Debug)]
pub struct Pem {
    pub cert: String,
    pub key: String,
}

/// A certificate authority that can sign SVIDs.
pub struct Ca {
    pub pem: Pem,
    issuer: Issuer<'static, KeyPair>,
}

/// What to put in a leaf. `svid()` gives a correct SVID; tests change fields to break it.
#[derive(Clone, Debug)]
pub struct LeafSpec {
    pub uris: Vec<String>,
    pub dns: Vec<String>,
    pub ips: Vec<std::net::IpAddr>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub is_ca: bool,
    pub digital_signature: bool,
    /// `None`: no EKU extension at all.
    pub eku: Option<Vec<ExtendedKeyUsagePurpose>>,
}

impl LeafSpec {
    /// An SVID for `id`, valid from a minute ago for `ttl`, for both serverAuth and clientAuth.
    pub fn svid(id: &SpiffeId, ttl: Duration) -> Self {
        let now = OffsetDateTime::now_utc();
        LeafSpec {
            uris: vec![id.to_string()],
            dns: Vec::new(),
            ips: Vec::new(),
            not_before: now - time::Duration::minutes(1),
            not_after: now + ttl,
            is_ca: false,
            digital_signature: true,
            eku: Some(vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ]),
        }
    }
}

impl LeafSpec {
    /// A TLS server's certificate (no SPIFFE ID, so never an identity in the mesh) for these
    /// names, each a DNS name or an address, valid from a minute ago for `ttl`, serverAuth only.
    pub fn server(names: &[String], ttl: Duration) -> Self {
        let now = OffsetDateTime::now_utc();
        let (ips, dns): (Vec<&String>, Vec<&String>) = names
            .iter()
            .partition(|n| n.parse::<std::net::IpAddr>().is_ok());
        LeafSpec {
            uris: Vec::new(),
            dns: dns.into_iter().cloned().collect(),
            ips: ips.into_iter().filter_map(|i| i.parse().ok()).collect(),
            not_before: now - time::Duration::minutes(1),
            not_after: now + ttl,
            is_ca: false,
            digital_signature: true,
            eku: Some(vec![ExtendedKeyUsagePurpose::ServerAuth]),
        }
    }
}

fn serial() -> SerialNumber {
    // Unique enough for throwaway CAs: nanoseconds since the epoch plus the process id.
    let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos() as u128;
    let mut bytes = (nanos ^ ((std::process::id() as u128) << 96))
        .to_be_bytes()
        .to_vec();
    bytes[0] &= 0x7f; // positive INTEGER
    SerialNumber::from_slice(&bytes)
}

fn ia5(text: &str) -> Result<rcgen::string::Ia5String, IssueError> {
    rcgen::string::Ia5String::try_from(text.to_owned())
        .map_err(|e| IssueError::Invalid(format!("{text:?}: {e}")))
}

impl Ca {
    /// A new self-signed CA for `trust_domain`, ECDSA P-256.
    pub fn new(trust_domain: &str, ttl: Duration) -> Result<Self, IssueError> {
        validate_trust_domain(trust_domain).map_err(|e| IssueError::Invalid(e.to_string()))?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "meshlet");
        // A distinct name per CA: two CAs of one trust domain (rotation) must not be confused.
        let serial = serial();
        let tag: String = serial
            .to_bytes()
            .iter()
            .rev()
            .take(4)
            .map(|b| format!("{b:02x}"))
            .collect();
        params.distinguished_name.push(
            DnType::CommonName,
            format!("meshlet CA {trust_domain} {tag}"),
        );
        params.subject_alt_names = vec![SanType::URI(ia5(&format!("spiffe://{trust_domain}"))?)];
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(1);
        params.not_after = now + ttl;
        params.serial_number = Some(serial);
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let cert = params.self_signed(&key)?;
        let pem = Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        };
        Ok(Ca {
            pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// A CA from its PEM certificate and key (as `cert ca` wrote them).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, IssueError> {
        let key =
            KeyPair::from_pem(key_pem).map_err(|e| IssueError::Invalid(format!("CA key: {e}")))?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)
            .map_err(|e| IssueError::Invalid(format!("CA certificate: {e}")))?;
        Ok(Ca {
            pem: Pem {
                cert: cert_pem.to_owned(),
                key: key_pem.to_owned(),
            },
            issuer,
        })
    }

    /// Loads `ca.crt` and `ca.key` from a directory.
    pub fn load(dir: &Path) -> Result<Self, IssueError> {
        let read = |name: &str| {
            let path = dir.join(name);
            crate::files::read_text(&path).map_err(|err| IssueError::Io {
                path: path.display().to_string(),
                err,
            })
        };
        Self::from_pem(&read("ca.crt")?, &read("ca.key")?)
    }

    /// Signs a leaf as `spec` describes, with a fresh ECDSA P-256 key.
    pub fn issue(&self, spec: &LeafSpec) -> Result<Pem, IssueError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let cert = leaf_params(spec)?.signed_by(&key, &self.issuer)?;
        Ok(Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }

    /// Signs a leaf as `spec` describes for a key held elsewhere (the public key of a CSR whose
    /// signature was checked): the PEM certificate.
    pub fn issue_for_key(
        &self,
        spec: &LeafSpec,
        public_key: &impl rcgen::PublicKeyData,
    ) -> Result<String, IssueError> {
        Ok(leaf_params(spec)?
            .signed_by(public_key, &self.issuer)?
            .pem())
    }

    /// An SVID for `id`: the common case.
    pub fn issue_svid(&self, id: &SpiffeId, ttl: Duration) -> Result<Pem, IssueError> {
        self.issue(&LeafSpec::svid(id, ttl))
    }
}

/// The certificate a [`LeafSpec`] describes.
fn leaf_params(spec: &LeafSpec) -> Result<CertificateParams, IssueError> {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "meshlet");
    if let Some(first) = spec.uris.first() {
        params
            .distinguished_name
            .push(DnType::CommonName, first.clone());
    }
    params.subject_alt_names = spec
        .uris
        .iter()
        .map(|u| ia5(u).map(SanType::URI))
        .chain(spec.dns.iter().map(|d| ia5(d).map(SanType::DnsName)))
        .chain(spec.ips.iter().map(|ip| Ok(SanType::IpAddress(*ip))))
        .collect::<Result<_, _>>()?;
    params.not_before = spec.not_before;
    params.not_after = spec.not_after;
    params.serial_number = Some(serial());
    params.use_authority_key_identifier_extension = true;
    if spec.is_ca {
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
    } else {
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = if spec.digital_signature {
            vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ]
        } else {
            vec![KeyUsagePurpose::KeyEncipherment]
        };
    }
    if let Some(eku) = &spec.eku {
        params.extended_key_usages = eku.clone();
    }
    Ok(params)
}

/// Writes `name` under `dir`; keys get mode 0600. Written to a temporary name then renamed, so a
/// watcher never sees half a file.
pub fn write_file(dir: &Path, name: &str, contents: &str, secret: bool) -> Result<(), IssueError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |path: &Path, err| IssueError::Io {
        path: path.display().to_string(),
        err,
    };
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(|e| io(&tmp, e))?;
    file.write_all(contents.as_bytes())
        .map_err(|e| io(&tmp, e))?;
    file.sync_all().map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| io(&path, e))
}

/// Writes `tls.crt`, `tls.key` and `ca.crt` (the Kubernetes TLS Secret layout).
pub fn write_svid_dir(dir: &Path, leaf: &Pem, bundle_pem: &str) -> Result<(), IssueError> {
    write_file(dir, "tls.crt", &leaf.cert, false)?;
    write_file(dir, "tls.key", &leaf.key, true)?;
    write_file(dir, "ca.crt", bundle_pem, false)
}

/// Durations are written the same way everywhere; see [`meshlet_defaults::parse_duration`].
pub use meshlet_defaults::parse_duration;
