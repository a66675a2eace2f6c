//! The proxy's configuration: the README's YAML contract, every key also settable by flag and by
//! `MESHLET_*` environment variable (flag and env win over the file, the file over defaults).
//!
//! A wrong configuration is refused with the file, the key and the reason.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use meshlet_defaults::issuer::TOKEN_FILE;
use meshlet_defaults::values::{BUNDLE_FILE, CERT_FILE, IDENTITY_DIR, KEY_FILE};
use meshlet_defaults::{parse_duration, PortRange};
use meshlet_identity::issuer_client::{HttpsUrl, IssuerSource};
use meshlet_identity::spiffe_id::validate_trust_domain;
use meshlet_identity::{workload_api, IdentityFiles, Source, SpiffeId};
use serde::{Deserialize, Deserializer};
use serde_norway::{Mapping, Value};

use crate::app_probe::AppProbe;
use crate::id_match::IdMatch;
use crate::inbound::http_path::PathMatch;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub trust_domain: String,
    pub identity: IdentityConfig,
    pub inbound: InboundConfig,
    pub outbound: OutboundConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
    /// Runtime worker threads; 0 = one per available CPU.
    pub workers: usize,
    pub timeouts: Timeouts,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub bundle: PathBuf,
    pub spiffe_endpoint_socket: Option<String>,
    /// `meshlet issuer`'s address: the SVID is asked for with `token`, the bundle read from
    /// `bundle`; `cert` and `key` are not used.
    pub issuer: Option<HttpsUrl>,
    pub token: PathBuf,
}

/// `inbound.mode`: the injector writes it too, so its values are the contract's.
pub use meshlet_defaults::InboundMode;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InboundConfig {
    pub port: u16,
    pub mode: InboundMode,
    pub policy: Option<Vec<RuleConfig>>,
    /// Connections handled at once; further ones wait in the kernel's accept queue.
    pub max_connections: usize,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub ports: Vec<PortSpec>,
    /// Exact SPIFFE IDs, prefixes ending in `/*`, or `*` (anyone, even unauthenticated callers
    /// in permissive mode). Absent: any SVID of the trust domain.
    #[serde(default)]
    pub from: Option<Vec<IdMatch>>,
    #[serde(default)]
    pub http: Option<Vec<HttpRuleConfig>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpRuleConfig {
    /// Absent: any method.
    #[serde(default)]
    pub methods: Option<Vec<HttpMethod>>,
    /// Exact paths, or prefixes ending in `*`. Absent: any path.
    #[serde(default)]
    pub paths: Option<Vec<PathMatch>>,
}

/// An HTTP method as written in a request line: upper-case letters.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct HttpMethod(String);

impl HttpMethod {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for HttpMethod {
    type Error = String;

    fn try_from(m: String) -> Result<Self, String> {
        if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(format!(
                "{m:?} is not an HTTP method in upper case (GET, POST, ...)"
            ));
        }
        Ok(HttpMethod(m))
    }
}

/// A port or an inclusive range, written `8080` or `"8000-8100"` (the form `meshlet init`'s
/// flags take too).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortSpec(pub PortRange);

impl PortSpec {
    pub fn contains(&self, port: u16) -> bool {
        self.0.contains(port)
    }
}

impl<'de> Deserialize<'de> for PortSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let text = match Value::deserialize(d)? {
            Value::Number(n) => n.to_string(),
            Value::String(s) => s,
            _ => {
                return Err(D::Error::custom(
                    "a port is a number (8080) or a range (\"8000-8100\")",
                ))
            }
        };
        text.parse().map(PortSpec).map_err(D::Error::custom)
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MtlsMode {
    /// mTLS when the peer proves to be a meshlet proxy, otherwise plain.
    Auto,
    /// mTLS required: never falls back.
    Mtls,
    /// Plain pass-through.
    Off,
}

impl fmt::Display for MtlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MtlsMode::Auto => "auto",
            MtlsMode::Mtls => "mtls",
            MtlsMode::Off => "off",
        })
    }
}

/// How app connections travel between two meshlet proxies.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// As HTTP/2 CONNECT streams over a few long-lived mTLS connections per peer: no TLS
    /// handshake per app connection.
    Pooled,
    /// One mTLS connection per app connection.
    PerConnection,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboundConfig {
    pub port: u16,
    pub mtls: MtlsMode,
    pub transport: Transport,
    pub destinations: Vec<DestinationConfig>,
    /// How long `auto` remembers that a destination is not a meshlet proxy.
    #[serde(deserialize_with = "duration")]
    pub auto_fallback_ttl: Duration,
    /// How long `auto` waits for a TLS answer before deciding the peer is not a meshlet proxy.
    #[serde(deserialize_with = "duration")]
    pub auto_detect_timeout: Duration,
    pub max_connections: usize,
    /// Pooled transport: a connection that averages this many bytes per second for at least
    /// a second gives its destination connections of their own (see `bulk`); 0: never.
    pub bulk_rate: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    #[serde(deserialize_with = "cidr")]
    pub cidr: IpNet,
    #[serde(default)]
    pub ports: Option<Vec<PortSpec>>,
    pub mtls: MtlsMode,
    #[serde(default, deserialize_with = "spiffe_ids")]
    pub identities: Option<Vec<SpiffeId>>,
}

fn cidr<'de, D: Deserializer<'de>>(d: D) -> Result<IpNet, D::Error> {
    parse_cidr(&String::deserialize(d)?).map_err(serde::de::Error::custom)
}

fn spiffe_ids<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<SpiffeId>>, D::Error> {
    Option::<Vec<String>>::deserialize(d)?
        .map(|ids| {
            ids.iter()
                .map(|id| SpiffeId::parse(id).map_err(serde::de::Error::custom))
                .collect()
        })
        .transpose()
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub address: SocketAddr,
    /// The app's kubelet probes the admin server runs, by `<container>/<kind>` (see
    /// `app_probe`); written by `meshlet inject`.
    pub app_probes: BTreeMap<String, AppProbe>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// TCP connect to a backend or peer.
    #[serde(deserialize_with = "duration")]
    pub connect: Duration,
    /// A whole TLS handshake; also the wait for a pooled caller's HTTP/2 preface after it,
    /// and for a peer to answer a pooled stream.
    #[serde(deserialize_with = "duration")]
    pub handshake: Duration,
    /// Inbound: how long to wait for the caller's first bytes before deciding what it speaks.
    #[serde(deserialize_with = "duration")]
    pub first_byte: Duration,
    /// Inbound, permissive mode: a caller silent this long after connecting is a plaintext
    /// client of a server-speaks-first app (a meshlet proxy sends its ClientHello at once).
    #[serde(deserialize_with = "duration")]
    pub server_first: Duration,
    /// Inbound HTTP: how long a caller's keep-alive connection may sit idle between requests.
    #[serde(deserialize_with = "duration")]
    pub http_idle: Duration,
    /// Grace period for open connections at shutdown.
    #[serde(deserialize_with = "duration")]
    pub drain: Duration,
}

/// Above any sensible sidecar: each connection holds descriptors and memory.
pub const MAX_CONNECTIONS: usize = 1_000_000;

/// The deepest nesting of YAML collections accepted. meshlet's deepest key is a few levels
/// down; the YAML parser's time grows with the square of the depth, so a file of 100,000 `[`
/// would hang it.
const MAX_NESTING: usize = 32;

fn check_nesting(text: &str) -> Result<(), String> {
    meshlet_defaults::check_yaml_nesting(text, MAX_NESTING)
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let v = Value::deserialize(d)?;
    match &v {
        Value::Number(n) => n
            .as_u64()
            .map(Duration::from_secs)
            .ok_or_else(|| serde::de::Error::custom(format!("{n} is not a duration"))),
        Value::String(s) => parse_duration(s).map_err(serde::de::Error::custom),
        _ => Err(serde::de::Error::custom(
            "a duration is written like 500ms, 5s, 2m or 1h",
        )),
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            trust_domain: "cluster.local".into(),
            identity: IdentityConfig::default(),
            inbound: InboundConfig::default(),
            outbound: OutboundConfig::default(),
            admin: AdminConfig::default(),
            log: LogConfig::default(),
            workers: 1,
            timeouts: Timeouts::default(),
        }
    }
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            cert: Path::new(IDENTITY_DIR).join(CERT_FILE),
            key: Path::new(IDENTITY_DIR).join(KEY_FILE),
            bundle: Path::new(IDENTITY_DIR).join(BUNDLE_FILE),
            spiffe_endpoint_socket: None,
            issuer: None,
            token: Path::new(IDENTITY_DIR).join(TOKEN_FILE),
        }
    }
}

impl Default for InboundConfig {
    fn default() -> Self {
        InboundConfig {
            port: meshlet_defaults::INBOUND_PORT,
            mode: InboundMode::Strict,
            policy: None,
            max_connections: 16384,
        }
    }
}

impl Default for OutboundConfig {
    fn default() -> Self {
        OutboundConfig {
            port: meshlet_defaults::OUTBOUND_PORT,
            mtls: MtlsMode::Auto,
            transport: Transport::Pooled,
            destinations: Vec::new(),
            auto_fallback_ttl: Duration::from_secs(60),
            auto_detect_timeout: Duration::from_secs(2),
            max_connections: 16384,
            bulk_rate: 64 << 20,
        }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            address: SocketAddr::from(([0, 0, 0, 0], meshlet_defaults::ADMIN_PORT)),
            app_probes: BTreeMap::new(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            handshake: Duration::from_secs(10),
            first_byte: Duration::from_secs(10),
            server_first: Duration::from_millis(300),
            http_idle: Duration::from_secs(3600),
            drain: Duration::from_secs(30),
        }
    }
}

/// Why a configuration was refused: where, which key, and the reason.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: {key}: {reason}")]
pub struct ConfigError {
    pub source_name: String,
    pub key: String,
    pub reason: String,
}

/// One `key = value` from a flag or an environment variable.
#[derive(Clone, Debug)]
pub struct Override {
    /// Dotted key, e.g. `inbound.mode`.
    pub key: &'static str,
    pub value: String,
    /// Where it came from, for messages (`--inbound-mode` or `MESHLET_INBOUND_MODE`).
    pub origin: String,
    /// The value is YAML (lists, numbers); otherwise it is taken as a plain string.
    pub yaml: bool,
}

impl Config {
    /// Reads the file (if any), applies the overrides, checks everything.
    pub fn load(file: Option<&Path>, overrides: &[Override]) -> Result<Config, ConfigError> {
        let source_name = file
            .map(|f| f.display().to_string())
            .unwrap_or_else(|| "configuration".into());
        let text = match file {
            Some(path) => meshlet_identity::files::read_text(path).map_err(|e| ConfigError {
                source_name: source_name.clone(),
                key: "(file)".into(),
                reason: format!("cannot read: {e}"),
            })?,
            None => String::new(),
        };
        Self::parse(&text, &source_name, overrides)
    }

    /// Parses configuration text (as a file holds it; `source_name` names it in errors), applies
    /// the overrides, checks everything.
    pub fn parse(
        text: &str,
        source_name: &str,
        overrides: &[Override],
    ) -> Result<Config, ConfigError> {
        let err = |key: &str, reason: String| ConfigError {
            source_name: source_name.to_owned(),
            key: key.into(),
            reason,
        };
        check_nesting(text).map_err(|reason| err("(syntax)", reason))?;
        let mut tree = if text.trim().is_empty() {
            Value::Mapping(Mapping::new())
        } else {
            serde_norway::from_str::<Value>(text).map_err(|e| err("(syntax)", e.to_string()))?
        };
        if tree.is_null() {
            tree = Value::Mapping(Mapping::new());
        }
        for o in overrides {
            let value = if o.yaml {
                check_nesting(&o.value)
                    .map_err(|reason| err(o.key, format!("{}: {reason}", o.origin)))?;
                serde_norway::from_str::<Value>(&o.value)
                    .map_err(|e| err(o.key, format!("{} is not valid YAML: {e}", o.origin)))?
            } else {
                Value::String(o.value.clone())
            };
            set_path(&mut tree, o.key, value).map_err(|reason| err(o.key, reason))?;
        }
        let config: Config = serde_path_to_error::deserialize(tree).map_err(|e| {
            let key = e.path().to_string();
            err(
                if key == "." || key.is_empty() {
                    "(top level)"
                } else {
                    &key
                },
                e.into_inner().to_string(),
            )
        })?;
        config
            .validate()
            .map_err(|(key, reason)| err(&key, reason))?;
        Ok(config)
    }

    /// Checks what types alone cannot.
    fn validate(&self) -> Result<(), (String, String)> {
        validate_trust_domain(&self.trust_domain)
            .map_err(|e| ("trust_domain".into(), e.to_string()))?;
        for (key, port) in [
            ("inbound.port", self.inbound.port),
            ("outbound.port", self.outbound.port),
        ] {
            if port == 0 {
                return Err((key.into(), "0 is not a port".into()));
            }
        }
        if self.inbound.port == self.outbound.port {
            return Err((
                "outbound.port".into(),
                format!("equals inbound.port ({})", self.inbound.port),
            ));
        }
        if self.admin.address.port() == self.inbound.port
            || self.admin.address.port() == self.outbound.port
        {
            return Err((
                "admin.address".into(),
                "uses the port of a proxy listener".into(),
            ));
        }
        for (key, n) in [
            ("inbound.max_connections", self.inbound.max_connections),
            ("outbound.max_connections", self.outbound.max_connections),
        ] {
            if n == 0 {
                return Err((key.into(), "must be at least 1".into()));
            }
            if n > MAX_CONNECTIONS {
                return Err((
                    key.into(),
                    format!("{n} is above the limit of {MAX_CONNECTIONS}"),
                ));
            }
        }
        // Bounded so that no deadline computed from them can overflow, and so that a typo
        // (a missing unit, an extra digit) is caught at start rather than felt in production.
        let hour = Duration::from_secs(3600);
        for (key, value, min, max) in [
            (
                "timeouts.connect",
                self.timeouts.connect,
                Duration::from_millis(1),
                hour,
            ),
            (
                "timeouts.handshake",
                self.timeouts.handshake,
                Duration::from_millis(1),
                hour,
            ),
            (
                "timeouts.first_byte",
                self.timeouts.first_byte,
                Duration::from_millis(1),
                hour,
            ),
            (
                "timeouts.server_first",
                self.timeouts.server_first,
                Duration::from_millis(50),
                hour,
            ),
            (
                "timeouts.http_idle",
                self.timeouts.http_idle,
                Duration::from_secs(1),
                7 * 24 * hour,
            ),
            ("timeouts.drain", self.timeouts.drain, Duration::ZERO, hour),
            (
                "outbound.auto_detect_timeout",
                self.outbound.auto_detect_timeout,
                Duration::from_millis(1),
                hour,
            ),
            (
                "outbound.auto_fallback_ttl",
                self.outbound.auto_fallback_ttl,
                Duration::ZERO,
                24 * hour,
            ),
        ] {
            if value < min || value > max {
                return Err((
                    key.into(),
                    format!("{value:?} is out of range ({min:?} to {max:?})"),
                ));
            }
        }
        if self.workers > 1024 {
            return Err((
                "workers".into(),
                format!(
                    "{} worker threads is not sensible (0 = one per CPU)",
                    self.workers
                ),
            ));
        }
        meshlet_defaults::values::check_log_level(&self.log.level)
            .map_err(|e| ("log.level".into(), e))?;
        for (i, rule) in self.inbound.policy.iter().flatten().enumerate() {
            let at = |field: &str| format!("inbound.policy[{i}].{field}");
            if rule.ports.is_empty() {
                return Err((at("ports"), "a rule names at least one port".into()));
            }
        }
        for (i, d) in self.outbound.destinations.iter().enumerate() {
            let at = |field: &str| format!("outbound.destinations[{i}].{field}");
            if d.identities.is_some() && d.mtls != MtlsMode::Mtls {
                return Err((
                    at("identities"),
                    format!(
                        "pinning identities needs mtls: mtls (this destination is {})",
                        d.mtls
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Where the identity comes from: the SPIRE agent, the issuer, or files (the default). Two
    /// sources at once is a mistake, said by key.
    pub fn identity_source(&self) -> Result<Source, String> {
        let id = &self.identity;
        match (&id.spiffe_endpoint_socket, &id.issuer) {
            (Some(_), Some(_)) => Err(
                "identity.spiffe_endpoint_socket and identity.issuer are two identity sources; set one"
                    .into(),
            ),
            (Some(socket), None) => workload_api::socket_path(socket)
                .map(Source::WorkloadApi)
                .map_err(|e| format!("identity.spiffe_endpoint_socket: {e}")),
            (None, Some(url)) => Ok(Source::Issuer(IssuerSource {
                url: url.clone(),
                token: id.token.clone(),
                bundle: id.bundle.clone(),
            })),
            (None, None) => Ok(Source::Files(self.identity_files())),
        }
    }

    pub fn identity_files(&self) -> IdentityFiles {
        IdentityFiles {
            cert: self.identity.cert.clone(),
            key: self.identity.key.clone(),
            bundle: self.identity.bundle.clone(),
        }
    }
}

/// Parses a CIDR or a bare address (a host route).
pub fn parse_cidr(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .map(|n| n.trunc())
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{text:?} is not a CIDR (e.g. 198.18.0.0/15 or 2001:2::/48)"))
}

/// Sets `a.b.c` in a YAML tree, creating mappings on the way.
fn set_path(tree: &mut Value, key: &str, value: Value) -> Result<(), String> {
    let mut node = tree;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let map = match node {
            Value::Mapping(m) => m,
            _ => {
                return Err(format!(
                    "cannot set {key}: {} is not a mapping in the file",
                    parts[..i].join(".")
                ))
            }
        };
        let k = Value::String((*part).to_owned());
        if i + 1 == parts.len() {
            map.insert(k, value);
            return Ok(());
        }
        node = map
            .entry(k)
            .or_insert_with(|| Value::Mapping(Mapping::new()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn ov(key: &'static str, value: &str, yaml: bool) -> Override {
        Override {
            key,
            value: value.into(),
            origin: format!("--{key}"),
            yaml,
        }
    }

    fn refused(text: &str) -> ConfigError {
        Config::load(Some(file(text).path()), &[]).unwrap_err()
    }

    #[test]
    fn durations_and_sizes_out_of_range_are_refused_with_the_key() {
        for (text, key) in [
            (
                "timeouts: {first_byte: 18446744073709551615}",
                "timeouts.first_byte",
            ),
            ("timeouts: {drain: 999999999999999999d}", "timeouts.drain"),
            ("timeouts: {handshake: 0s}", "timeouts.handshake"),
            ("timeouts: {connect: 2h}", "timeouts.connect"),
            (
                "outbound: {auto_fallback_ttl: 400d}",
                "outbound.auto_fallback_ttl",
            ),
            (
                "inbound: {max_connections: 99999999999}",
                "inbound.max_connections",
            ),
        ] {
            let e = refused(text);
            assert!(e.key.starts_with(key), "{text}: {e}");
        }
    }

    #[test]
    fn deeply_nested_yaml_is_refused_quickly() {
        let started = std::time::Instant::now();
        let e = refused(&"[".repeat(100_000));
        assert!(e.reason.contains("nested deeper"), "{e}");
        let e = refused(&format!("inbound: {}", "{a: ".repeat(40)));
        assert!(e.reason.contains("nested deeper"), "{e}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        // Brackets in quotes and comments are text.
        assert!(Config::load(
            Some(file("log: {level: \"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\"}\n").path()),
            &[]
        )
        .is_err_and(|e| e.key == "log.level"));
    }

    #[test]
    fn an_unknown_empty_key_is_reported_at_the_top_level() {
        // Found by the configuration fuzzer: the key in the message was empty.
        let e = refused("'': (H");
        assert_eq!(e.key, "(top level)", "{e}");
    }

    #[test]
    fn a_configuration_that_never_ends_is_refused() {
        let e = Config::load(Some(Path::new("/dev/zero")), &[]).unwrap_err();
        assert!(e.reason.contains("larger than"), "{e}");
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = Config::load(None, &[]).unwrap();
        assert_eq!(c.trust_domain, "cluster.local");
        assert_eq!(c.inbound.port, 15006);
        assert_eq!(c.inbound.mode, InboundMode::Strict);
        assert_eq!(c.outbound.port, 15001);
        assert_eq!(c.outbound.mtls, MtlsMode::Auto);
        assert_eq!(c.admin.address.to_string(), "0.0.0.0:15021");
        assert_eq!(c.workers, 1);
        assert_eq!(
            c.identity.cert,
            PathBuf::from("/var/run/secrets/meshlet/tls.crt")
        );
    }

    #[test]
    fn the_design_example_parses() {
        let f = file(
            r#"
trust_domain: cluster.local
identity: {cert: /x/tls.crt, key: /x/tls.key, bundle: /x/ca.crt}
inbound:
  port: 15006
  mode: permissive
  policy:
    - ports: [8080, "9000-9100"]
      from: [spiffe://cluster.local/ns/default/sa/pod-worker, "spiffe://cluster.local/ns/x/*"]
      http:
        - methods: [GET]
          paths: [/headers, "/api/*"]
outbound:
  mtls: auto
  destinations:
    - cidr: 198.18.0.0/15
      ports: [8080]
      mtls: mtls
      identities: [spiffe://cluster.local/ns/default/sa/echo]
admin: {address: "127.0.0.1:15021"}
log: {format: json, level: debug}
workers: 0
timeouts: {connect: 2s, drain: 500ms}
"#,
        );
        let c = Config::load(Some(f.path()), &[]).unwrap();
        assert_eq!(c.inbound.mode, InboundMode::Permissive);
        let rule = &c.inbound.policy.as_ref().unwrap()[0];
        assert_eq!(
            rule.ports[1],
            PortSpec(PortRange {
                first: 9000,
                last: 9100
            })
        );
        assert_eq!(c.outbound.destinations[0].mtls, MtlsMode::Mtls);
        assert_eq!(c.timeouts.drain, Duration::from_millis(500));
        assert_eq!(c.log.format, LogFormat::Json);
    }

    #[test]
    fn an_unknown_key_is_refused_with_file_and_key() {
        let f = file("inbound:\n  mdoe: strict\n");
        let e = Config::load(Some(f.path()), &[]).unwrap_err();
        assert_eq!(e.source_name, f.path().display().to_string());
        assert!(e.to_string().contains("mdoe"), "{e}");
    }

    #[test]
    fn a_bad_value_is_refused_naming_the_key() {
        let f = file("outbound:\n  destinations:\n    - cidr: 198.18.0.0/33\n      mtls: mtls\n");
        let e = Config::load(Some(f.path()), &[]).unwrap_err();
        assert_eq!(e.key, "outbound.destinations[0].cidr");
        let f = file("inbound:\n  mode: strcit\n");
        let e = Config::load(Some(f.path()), &[]).unwrap_err();
        assert_eq!(e.key, "inbound.mode");
        let f = file("inbound:\n  policy:\n    - ports: [70000]\n");
        assert!(Config::load(Some(f.path()), &[]).is_err());
        let f = file("inbound:\n  policy:\n    - ports: [80]\n      from: [\"spiffe://td/a*\"]\n");
        let e = Config::load(Some(f.path()), &[]).unwrap_err();
        assert_eq!(e.key, "inbound.policy[0].from[0]");
    }

    #[test]
    fn pinned_identities_require_mtls() {
        let f = file("outbound:\n  destinations:\n    - cidr: 198.18.0.0/15\n      mtls: auto\n      identities: [spiffe://cluster.local/x]\n");
        let e = Config::load(Some(f.path()), &[]).unwrap_err();
        assert_eq!(e.key, "outbound.destinations[0].identities");
    }

    #[test]
    fn overrides_win_over_the_file() {
        let f = file("inbound:\n  mode: strict\n  port: 15006\n");
        let c = Config::load(
            Some(f.path()),
            &[
                ov("inbound.mode", "permissive", false),
                ov("inbound.port", "16006", true),
                ov("trust_domain", "prod.example", false),
                ov(
                    "outbound.destinations",
                    "[{cidr: 198.18.0.0/15, mtls: off}]",
                    true,
                ),
            ],
        )
        .unwrap();
        assert_eq!(c.inbound.mode, InboundMode::Permissive);
        assert_eq!(c.inbound.port, 16006);
        assert_eq!(c.trust_domain, "prod.example");
        assert_eq!(c.outbound.destinations[0].mtls, MtlsMode::Off);
        let e = Config::load(None, &[ov("inbound.port", "abc", true)]).unwrap_err();
        assert_eq!(e.key, "inbound.port");
    }
}
