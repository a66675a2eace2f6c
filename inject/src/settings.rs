//! Per-workload settings: the injector's defaults (flags of `meshlet inject` and `meshlet
//! webhook`) overridden by annotations under one prefix on the pod template. Every annotation
//! parses into the type the injector uses, so a bad value is refused here, naming the
//! annotation, and nothing later can fail on it.

use std::collections::BTreeMap;
use std::str::FromStr;

use ipnet::IpNet;
use meshlet_defaults::values::check_log_level;
use meshlet_defaults::InboundMode;
use meshlet_identity::spiffe_id::validate_trust_domain;
use meshlet_init::model::{
    parse_cidr_selection, parse_cidrs, parse_port_selection, parse_ports, CaptureConfig,
};

/// The prefix of every annotation (and label) meshlet reads.
pub const PREFIX: &str = "meshlet.io/";

/// The annotations, one table: name (after the prefix), what it sets. The README's table is
/// checked against this list by a test.
pub const ANNOTATIONS: &[(&str, &str)] = &[
    ("inject", "`false` leaves the workload alone (`true` opts a pod in to the webhook)"),
    ("sidecar", "`native` (default; Kubernetes ≥ 1.29) or `classic`"),
    ("identity", "`issuer` (meshlet issuer: a projected token and the published bundle, no Secret; the default of deploy/'s webhook), `secret` (Secret `<serviceAccount>-svid`; the default of `meshlet inject`), `secret:NAME`, `csi-spiffe` (cert-manager csi-driver-spiffe) or `spire` (SPIFFE CSI driver, `csi.spiffe.io`)"),
    ("trust-domain", "the trust domain (default `cluster.local`)"),
    ("inbound-mode", "`strict` (default) or `permissive`"),
    ("include-inbound-ports", "ports captured inbound: `*` (default) or a list (`8080,9000-9100`)"),
    ("exclude-inbound-ports", "ports never captured inbound"),
    ("include-outbound-ports", "destination ports captured outbound: `*` (default) or a list"),
    ("exclude-outbound-ports", "destination ports never captured outbound"),
    ("include-outbound-cidrs", "destinations captured outbound: `*` (default) or CIDRs"),
    ("exclude-outbound-cidrs", "destinations never captured outbound (CIDRs)"),
    ("mtls-cidrs", "destinations that must be reached over mTLS, never plaintext (CIDRs)"),
    ("policy", "a ConfigMap holding the proxy's configuration file (`meshlet.yaml`: policy and more)"),
    (
        "image",
        "the meshlet image for the init container and the sidecar; honoured by `meshlet inject`, but by the webhook only for images its operator lists with `--allow-image` (otherwise ignored with a warning: a pod's author must not choose what runs as root with `NET_ADMIN`)",
    ),
    ("proxy-cpu-request", "the sidecar's CPU request (default `10m`)"),
    ("proxy-memory-request", "the sidecar's memory request (default `16Mi`)"),
    ("proxy-cpu-limit", "the sidecar's CPU limit (default: none)"),
    ("proxy-memory-limit", "the sidecar's memory limit (default `64Mi`)"),
    ("log-level", "the proxy's log level (`debug` logs every authentication)"),
];

/// Native sidecar (an init container with `restartPolicy: Always`) or a regular container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SidecarMode {
    Native,
    Classic,
}

impl FromStr for SidecarMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "native" => Ok(SidecarMode::Native),
            "classic" => Ok(SidecarMode::Classic),
            _ => Err(format!("{s:?}: expected native or classic")),
        }
    }
}

/// Where the sidecar's SVID comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdentitySource {
    /// A Secret with tls.crt, tls.key and ca.crt; `None` means `<serviceAccount>-svid`.
    Secret(Option<String>),
    /// cert-manager's csi-driver-spiffe (driver `spiffe.csi.cert-manager.io`): the same three
    /// files, issued per pod and rotated.
    CsiSpiffe,
    /// The SPIRE agent's Workload API socket, mounted by the SPIFFE CSI driver (`csi.spiffe.io`).
    Spire,
    /// `meshlet issuer`: the pod's projected service-account token (audience `meshlet`) and the
    /// bundle the issuer publishes (ConfigMap `meshlet-ca-bundle`); the key never leaves memory.
    Issuer,
}

impl FromStr for IdentitySource {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "secret" => Ok(IdentitySource::Secret(None)),
            "csi-spiffe" => Ok(IdentitySource::CsiSpiffe),
            "spire" => Ok(IdentitySource::Spire),
            "issuer" => Ok(IdentitySource::Issuer),
            _ => match s.strip_prefix("secret:") {
                Some(name) => Ok(IdentitySource::Secret(Some(dns_name(name)?))),
                None => Err(format!(
                    "{s:?}: expected issuer, secret, secret:NAME, csi-spiffe or spire"
                )),
            },
        }
    }
}

/// A Kubernetes resource quantity (`10m`, `64Mi`, `1.5`, `2e3`): digits with an optional
/// fraction and one suffix the API server accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quantity(pub String);

impl FromStr for Quantity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let digits_end = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (number, suffix) = s.split_at(digits_end);
        let number_ok = !number.is_empty()
            && number.matches('.').count() <= 1
            && number.chars().any(|c| c.is_ascii_digit());
        let suffix_ok = matches!(
            suffix,
            "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei"
        ) || (suffix.starts_with(['e', 'E'])
            && suffix.len() > 1
            && suffix[1..]
                .trim_start_matches(['+', '-'])
                .parse::<u32>()
                .is_ok());
        if number_ok && suffix_ok {
            Ok(Quantity(s.to_owned()))
        } else {
            Err(format!(
                "{s:?} is not a Kubernetes quantity (e.g. 10m, 64Mi)"
            ))
        }
    }
}

/// A DNS-1123 subdomain (Secret and ConfigMap names).
fn dns_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} is not a valid object name (lower-case letters, digits, '-' and '.')"
        ))
    }
}

/// Everything the injector decides for one workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub sidecar: SidecarMode,
    pub identity: IdentitySource,
    pub trust_domain: Option<String>,
    pub inbound_mode: Option<InboundMode>,
    /// What `meshlet-init` captures (its flags).
    pub capture: CaptureConfig,
    pub mtls_cidrs: Vec<IpNet>,
    pub policy: Option<String>,
    pub image: String,
    /// Which `meshlet.io/image` overrides are honoured: `None` any (the operator runs `meshlet
    /// inject` on their own manifests), `Some(list)` only those (the webhook, where the pod's
    /// author writes the annotation and the init container runs as root with NET_ADMIN).
    pub allowed_images: Option<Vec<String>>,
    /// An image override that was not honoured, for the warning.
    pub ignored_image: Option<String>,
    pub cpu_request: Option<Quantity>,
    pub memory_request: Option<Quantity>,
    pub cpu_limit: Option<Quantity>,
    pub memory_limit: Option<Quantity>,
    pub log_level: Option<String>,
    /// Where sidecars with the `issuer` identity ask for their SVID.
    pub issuer_url: String,
}

impl Settings {
    /// The defaults when no annotation says otherwise, with the given image and sidecar mode.
    pub fn defaults(image: &str, sidecar: SidecarMode, identity: IdentitySource) -> Self {
        Settings {
            sidecar,
            identity,
            trust_domain: None,
            inbound_mode: None,
            capture: CaptureConfig::default(),
            mtls_cidrs: Vec::new(),
            policy: None,
            image: image.to_owned(),
            allowed_images: None,
            ignored_image: None,
            cpu_request: Some(Quantity("10m".into())),
            memory_request: Some(Quantity("16Mi".into())),
            cpu_limit: None,
            memory_limit: Some(Quantity("64Mi".into())),
            log_level: None,
            issuer_url: meshlet_defaults::issuer::DEFAULT_URL.to_owned(),
        }
    }

    /// These settings overridden by the pod template's annotations. Unknown annotations under
    /// the prefix are refused too: a misspelled one would otherwise be silently ignored.
    pub fn with_annotations(
        mut self,
        annotations: &BTreeMap<String, String>,
    ) -> Result<Self, AnnotationError> {
        for (name, value) in annotations {
            let Some(key) = name.strip_prefix(PREFIX) else {
                continue;
            };
            let bad = |reason: String| AnnotationError {
                annotation: name.clone(),
                reason,
            };
            let v = value.trim();
            match key {
                "inject" => {
                    parse_switch(v).map_err(bad)?;
                }
                "sidecar" => self.sidecar = v.parse().map_err(bad)?,
                "identity" => self.identity = v.parse().map_err(bad)?,
                "trust-domain" => self.trust_domain = Some(trust_domain(v).map_err(bad)?),
                "inbound-mode" => self.inbound_mode = Some(v.parse().map_err(bad)?),
                // The capture annotations take exactly what `meshlet init` takes.
                "include-inbound-ports" => {
                    self.capture.include_inbound_ports =
                        parse_port_selection(name, v).map_err(|e| bad(e.0))?
                }
                "exclude-inbound-ports" => {
                    self.capture.exclude_inbound_ports =
                        parse_ports(name, v).map_err(|e| bad(e.0))?
                }
                "include-outbound-ports" => {
                    self.capture.include_outbound_ports =
                        parse_port_selection(name, v).map_err(|e| bad(e.0))?
                }
                "exclude-outbound-ports" => {
                    self.capture.exclude_outbound_ports =
                        parse_ports(name, v).map_err(|e| bad(e.0))?
                }
                "include-outbound-cidrs" => {
                    self.capture.include_outbound_cidrs =
                        parse_cidr_selection(name, v).map_err(|e| bad(e.0))?
                }
                "exclude-outbound-cidrs" => {
                    self.capture.exclude_outbound_cidrs =
                        parse_cidrs(name, v).map_err(|e| bad(e.0))?
                }
                "mtls-cidrs" => self.mtls_cidrs = parse_cidrs(name, v).map_err(|e| bad(e.0))?,
                "policy" => self.policy = Some(dns_name(v).map_err(bad)?),
                "image" => {
                    if v.is_empty() || v.contains(char::is_whitespace) {
                        return Err(bad(format!("{v:?} is not an image reference")));
                    }
                    match &self.allowed_images {
                        Some(allowed) if v != self.image && !allowed.iter().any(|a| a == v) => {
                            self.ignored_image = Some(v.to_owned());
                        }
                        _ => self.image = v.to_owned(),
                    }
                }
                "proxy-cpu-request" => self.cpu_request = Some(v.parse().map_err(bad)?),
                "proxy-memory-request" => self.memory_request = Some(v.parse().map_err(bad)?),
                "proxy-cpu-limit" => self.cpu_limit = Some(v.parse().map_err(bad)?),
                "proxy-memory-limit" => self.memory_limit = Some(v.parse().map_err(bad)?),
                "log-level" => {
                    check_log_level(v).map_err(bad)?;
                    self.log_level = Some(v.to_owned());
                }
                // Written by the injector itself; not a setting.
                INJECTED_KEY => {}
                _ => {
                    return Err(bad(format!(
                        "unknown meshlet annotation; known: {}",
                        ANNOTATIONS
                            .iter()
                            .map(|(k, _)| format!("{PREFIX}{k}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )))
                }
            }
        }
        self.capture.validate().map_err(|e| AnnotationError {
            annotation: format!("{PREFIX}*-ports / {PREFIX}*-cidrs"),
            reason: e.0,
        })?;
        Ok(self)
    }
}

/// The annotation (after the prefix) the injector writes on what it injected.
pub const INJECTED_KEY: &str = "injected";

/// `meshlet.io/inject` on a pod template: Some(true/false) when present.
pub fn inject_switch(
    annotations: &BTreeMap<String, String>,
) -> Result<Option<bool>, AnnotationError> {
    let name = format!("{PREFIX}inject");
    annotations
        .get(&name)
        .map(|v| {
            parse_switch(v.trim()).map_err(|reason| AnnotationError {
                annotation: name.clone(),
                reason,
            })
        })
        .transpose()
}

fn parse_switch(v: &str) -> Result<bool, String> {
    match v {
        "true" | "enabled" => Ok(true),
        "false" | "disabled" => Ok(false),
        _ => Err(format!("{v:?}: expected true or false")),
    }
}

/// A trust domain as the proxy reads `trust_domain` (meshlet-identity's rule).
fn trust_domain(v: &str) -> Result<String, String> {
    validate_trust_domain(v)
        .map(|()| v.to_owned())
        .map_err(|e| e.to_string())
}

/// An annotation with a value the injector cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {annotation}: {reason}")]
pub struct AnnotationError {
    pub annotation: String,
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn defaults() -> Settings {
        Settings::defaults(
            "meshlet:test",
            SidecarMode::Native,
            IdentitySource::Secret(None),
        )
    }

    #[test]
    fn annotations_override_the_defaults_into_typed_values() {
        let s = defaults()
            .with_annotations(&annotations(&[
                ("meshlet.io/sidecar", "classic"),
                ("meshlet.io/identity", "secret:echo-tls"),
                ("meshlet.io/exclude-inbound-ports", "9090, 9100-9200"),
                ("meshlet.io/mtls-cidrs", "198.18.0.0/15,2001:2::/48"),
                ("meshlet.io/proxy-memory-limit", "128Mi"),
                ("app.kubernetes.io/name", "not ours"),
            ]))
            .unwrap();
        assert_eq!(s.sidecar, SidecarMode::Classic);
        assert_eq!(s.identity, IdentitySource::Secret(Some("echo-tls".into())));
        assert_eq!(
            s.capture.to_flags(),
            ["--exclude-inbound-ports", "9090,9100-9200"]
        );
        assert_eq!(s.mtls_cidrs.len(), 2);
        assert_eq!(s.memory_limit, Some(Quantity("128Mi".into())));
    }

    #[test]
    fn a_bad_or_misspelled_annotation_is_refused_by_name() {
        for (name, value) in [
            ("meshlet.io/exclude-inbound-ports", "http"),
            ("meshlet.io/mtls-cidrs", "198.18.0.0/33"),
            ("meshlet.io/proxy-cpu-request", "lots"),
            ("meshlet.io/identity", "vault"),
            ("meshlet.io/policy", "Bad_Name"),
            ("meshlet.io/inbound-mod", "strict"),
        ] {
            let err = defaults()
                .with_annotations(&annotations(&[(name, value)]))
                .unwrap_err();
            assert_eq!(err.annotation, name);
        }
    }

    #[test]
    fn quantities_follow_the_api_servers_forms() {
        for ok in ["10m", "64Mi", "1", "0.5", "2e3", "1Gi"] {
            assert!(ok.parse::<Quantity>().is_ok(), "{ok}");
        }
        for bad in ["", "m", "1..2", "64MB", "ten"] {
            assert!(bad.parse::<Quantity>().is_err(), "{bad}");
        }
    }
}
