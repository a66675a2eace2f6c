//! `meshlet cert inspect`: what a certificate file holds, and whether it is a valid SVID.

use std::time::SystemTime;

use serde::Serialize;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;

use crate::source::parse_certs;
use crate::svid::{self, fmt_time};

#[derive(Debug, Serialize)]
pub struct Inspection {
    pub subject: String,
    pub issuer: String,
    pub sans: Vec<String>,
    pub spiffe_id: Option<String>,
    pub not_before: String,
    pub not_after: String,
    pub seconds_left: i64,
    pub key_type: String,
    pub is_ca: bool,
    /// Certificates in the file after the first (intermediates).
    pub chain_length: usize,
    pub valid_svid: bool,
    /// Why it is not a valid SVID, when it is not.
    pub svid_problem: Option<String>,
}

/// Describes the first certificate of a PEM file.
pub fn inspect_pem(pem: &[u8]) -> Result<Inspection, String> {
    let certs = parse_certs(pem)?;
    let der = &certs[0];
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| format!("certificate cannot be parsed: {e}"))?;
    let sans = match cert.subject_alternative_name() {
        Ok(Some(san)) => san.value.general_names.iter().map(describe_name).collect(),
        _ => Vec::new(),
    };
    let key_type = match cert.public_key().parsed() {
        Ok(PublicKey::EC(ec)) => match ec.key_size() {
            256 => "ECDSA P-256".to_owned(),
            384 => "ECDSA P-384".to_owned(),
            n => format!("ECDSA ({n} bits)"),
        },
        Ok(PublicKey::RSA(rsa)) => format!("RSA {}", rsa.key_size()),
        Ok(_) | Err(_) => format!("{}", cert.public_key().algorithm.algorithm),
    };
    let now = SystemTime::now();
    let checked = svid::check_leaf(der).and_then(|info| {
        svid::check_own_eku(der)?;
        info.check_time(now)?;
        Ok(info)
    });
    let not_after = svid::fmt_time(to_time(cert.validity().not_after.timestamp()));
    let seconds_left = cert.validity().not_after.timestamp() - unix_now();
    Ok(Inspection {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        spiffe_id: svid::spiffe_id_of(&cert).ok().map(|id| id.to_string()),
        sans,
        not_before: fmt_time(to_time(cert.validity().not_before.timestamp())),
        not_after,
        seconds_left,
        key_type,
        is_ca: cert.is_ca(),
        chain_length: certs.len() - 1,
        valid_svid: checked.is_ok(),
        svid_problem: checked.err().map(|e| e.to_string()),
    })
}

fn describe_name(name: &GeneralName<'_>) -> String {
    match name {
        GeneralName::URI(u) => format!("URI:{u}"),
        GeneralName::DNSName(d) => format!("DNS:{d}"),
        GeneralName::IPAddress(ip) => match ip.len() {
            4 => format!("IP:{}", std::net::Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3])),
            16 => {
                let mut b = [0u8; 16];
                b.copy_from_slice(ip);
                format!("IP:{}", std::net::Ipv6Addr::from(b))
            }
            _ => "IP:?".to_owned(),
        },
        GeneralName::RFC822Name(e) => format!("email:{e}"),
        other => format!("{other:?}"),
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn to_time(unix: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(unix.max(0) as u64)
}

impl Inspection {
    /// Human-readable, one fact per line.
    pub fn to_text(&self) -> String {
        let left = if self.seconds_left >= 0 {
            format!("{} left", human(self.seconds_left))
        } else {
            format!("expired {} ago", human(-self.seconds_left))
        };
        let mut out = format!(
            "subject:     {}\nissuer:      {}\nSANs:        {}\nSPIFFE ID:   {}\nvalidity:    {} .. {} ({left})\nkey:         {}\nCA:          {}\nchain:       {} intermediate(s) after the leaf\n",
            self.subject,
            self.issuer,
            if self.sans.is_empty() { "(none)".to_owned() } else { self.sans.join(", ") },
            self.spiffe_id.as_deref().unwrap_or("(none)"),
            self.not_before,
            self.not_after,
            self.key_type,
            self.is_ca,
            self.chain_length,
        );
        match &self.svid_problem {
            None => out.push_str("valid SVID:  yes\n"),
            Some(why) => out.push_str(&format!("valid SVID:  no: {why}\n")),
        }
        out
    }
}

/// A duration for people: `23h58m`, `1d2h`, `1m57s`, `42s` — the one format every command uses.
pub fn human(secs: i64) -> String {
    match secs {
        s if s >= 86400 => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
        s if s >= 3600 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        s if s >= 60 => format!("{}m{}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}
