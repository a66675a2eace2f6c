//! `meshlet proxy` flags: `--config FILE` and one flag per configuration key, each also read
//! from a `MESHLET_*` environment variable. Flags and env override the file.

use std::path::PathBuf;

use clap::Args;

use crate::config::{Config, ConfigError, Override};

#[derive(Args, Debug, Default)]
pub struct ProxyArgs {
    /// YAML configuration file (all keys optional).
    #[arg(long, env = "MESHLET_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// trust_domain
    #[arg(long, env = "MESHLET_TRUST_DOMAIN")]
    pub trust_domain: Option<String>,
    /// identity.cert: certificate chain, leaf first
    #[arg(long, env = "MESHLET_IDENTITY_CERT", value_name = "FILE")]
    pub identity_cert: Option<String>,
    /// identity.key: private key (PKCS#8, SEC1 or PKCS#1)
    #[arg(long, env = "MESHLET_IDENTITY_KEY", value_name = "FILE")]
    pub identity_key: Option<String>,
    /// identity.bundle: trust anchors of the trust domain
    #[arg(long, env = "MESHLET_IDENTITY_BUNDLE", value_name = "FILE")]
    pub identity_bundle: Option<String>,
    /// identity.spiffe_endpoint_socket: SPIRE Workload API socket
    #[arg(
        long,
        env = "MESHLET_IDENTITY_SPIFFE_ENDPOINT_SOCKET",
        value_name = "URI"
    )]
    pub identity_spiffe_endpoint_socket: Option<String>,
    /// inbound.port
    #[arg(long, env = "MESHLET_INBOUND_PORT")]
    pub inbound_port: Option<String>,
    /// inbound.mode: strict | permissive
    #[arg(long, env = "MESHLET_INBOUND_MODE")]
    pub inbound_mode: Option<String>,
    /// inbound.policy, as YAML (a list of rules)
    #[arg(long, env = "MESHLET_INBOUND_POLICY", value_name = "YAML")]
    pub inbound_policy: Option<String>,
    /// inbound.max_connections
    #[arg(long, env = "MESHLET_INBOUND_MAX_CONNECTIONS")]
    pub inbound_max_connections: Option<String>,
    /// outbound.port
    #[arg(long, env = "MESHLET_OUTBOUND_PORT")]
    pub outbound_port: Option<String>,
    /// outbound.mtls: auto | mtls | off
    #[arg(long, env = "MESHLET_OUTBOUND_MTLS")]
    pub outbound_mtls: Option<String>,
    /// outbound.transport: pooled | per_connection
    #[arg(long, env = "MESHLET_OUTBOUND_TRANSPORT")]
    pub outbound_transport: Option<String>,
    /// outbound.destinations, as YAML (a list)
    #[arg(long, env = "MESHLET_OUTBOUND_DESTINATIONS", value_name = "YAML")]
    pub outbound_destinations: Option<String>,
    /// outbound.auto_fallback_ttl (e.g. 60s)
    #[arg(long, env = "MESHLET_OUTBOUND_AUTO_FALLBACK_TTL")]
    pub outbound_auto_fallback_ttl: Option<String>,
    /// outbound.auto_detect_timeout (e.g. 2s)
    #[arg(long, env = "MESHLET_OUTBOUND_AUTO_DETECT_TIMEOUT")]
    pub outbound_auto_detect_timeout: Option<String>,
    /// outbound.max_connections
    #[arg(long, env = "MESHLET_OUTBOUND_MAX_CONNECTIONS")]
    pub outbound_max_connections: Option<String>,
    /// admin.address (host:port)
    #[arg(long, env = "MESHLET_ADMIN_ADDRESS")]
    pub admin_address: Option<String>,
    /// log.format: text | json
    #[arg(long, env = "MESHLET_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// log.level: trace | debug | info | warn | error (or a filter)
    #[arg(long, env = "MESHLET_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// workers: runtime worker threads (0 = one per CPU)
    #[arg(long, env = "MESHLET_WORKERS")]
    pub workers: Option<String>,
    /// timeouts.connect
    #[arg(long, env = "MESHLET_TIMEOUTS_CONNECT")]
    pub timeouts_connect: Option<String>,
    /// timeouts.handshake
    #[arg(long, env = "MESHLET_TIMEOUTS_HANDSHAKE")]
    pub timeouts_handshake: Option<String>,
    /// timeouts.first_byte
    #[arg(long, env = "MESHLET_TIMEOUTS_FIRST_BYTE")]
    pub timeouts_first_byte: Option<String>,
    /// timeouts.drain: grace period for open connections at shutdown
    #[arg(long, env = "MESHLET_TIMEOUTS_DRAIN")]
    pub timeouts_drain: Option<String>,
}

impl ProxyArgs {
    /// The overrides, as (key, value, flag name, parsed as YAML?).
    pub fn overrides(&self) -> Vec<Override> {
        let table: [(&'static str, &Option<String>, &str, bool); 24] = [
            ("trust_domain", &self.trust_domain, "--trust-domain", false),
            (
                "identity.cert",
                &self.identity_cert,
                "--identity-cert",
                false,
            ),
            ("identity.key", &self.identity_key, "--identity-key", false),
            (
                "identity.bundle",
                &self.identity_bundle,
                "--identity-bundle",
                false,
            ),
            (
                "identity.spiffe_endpoint_socket",
                &self.identity_spiffe_endpoint_socket,
                "--identity-spiffe-endpoint-socket",
                false,
            ),
            ("inbound.port", &self.inbound_port, "--inbound-port", true),
            ("inbound.mode", &self.inbound_mode, "--inbound-mode", false),
            (
                "inbound.policy",
                &self.inbound_policy,
                "--inbound-policy",
                true,
            ),
            (
                "inbound.max_connections",
                &self.inbound_max_connections,
                "--inbound-max-connections",
                true,
            ),
            (
                "outbound.port",
                &self.outbound_port,
                "--outbound-port",
                true,
            ),
            (
                "outbound.mtls",
                &self.outbound_mtls,
                "--outbound-mtls",
                false,
            ),
            (
                "outbound.transport",
                &self.outbound_transport,
                "--outbound-transport",
                false,
            ),
            (
                "outbound.destinations",
                &self.outbound_destinations,
                "--outbound-destinations",
                true,
            ),
            (
                "outbound.auto_fallback_ttl",
                &self.outbound_auto_fallback_ttl,
                "--outbound-auto-fallback-ttl",
                false,
            ),
            (
                "outbound.auto_detect_timeout",
                &self.outbound_auto_detect_timeout,
                "--outbound-auto-detect-timeout",
                false,
            ),
            (
                "outbound.max_connections",
                &self.outbound_max_connections,
                "--outbound-max-connections",
                true,
            ),
            (
                "admin.address",
                &self.admin_address,
                "--admin-address",
                false,
            ),
            ("log.format", &self.log_format, "--log-format", false),
            ("log.level", &self.log_level, "--log-level", false),
            ("workers", &self.workers, "--workers", true),
            (
                "timeouts.connect",
                &self.timeouts_connect,
                "--timeouts-connect",
                false,
            ),
            (
                "timeouts.handshake",
                &self.timeouts_handshake,
                "--timeouts-handshake",
                false,
            ),
            (
                "timeouts.first_byte",
                &self.timeouts_first_byte,
                "--timeouts-first-byte",
                false,
            ),
            (
                "timeouts.drain",
                &self.timeouts_drain,
                "--timeouts-drain",
                false,
            ),
        ];
        table
            .into_iter()
            .filter_map(|(key, value, flag, yaml)| {
                value.as_ref().map(|v| Override {
                    key,
                    value: v.clone(),
                    origin: format!(
                        "{flag} (or MESHLET_{})",
                        key.replace('.', "_").to_uppercase()
                    ),
                    yaml,
                })
            })
            .collect()
    }

    /// The effective configuration. `SPIFFE_ENDPOINT_SOCKET` is honoured as SPIFFE specifies.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let mut overrides = Vec::new();
        if self.identity_spiffe_endpoint_socket.is_none() {
            if let Ok(socket) = std::env::var("SPIFFE_ENDPOINT_SOCKET") {
                overrides.push(Override {
                    key: "identity.spiffe_endpoint_socket",
                    value: socket,
                    origin: "SPIFFE_ENDPOINT_SOCKET".into(),
                    yaml: false,
                });
            }
        }
        overrides.extend(self.overrides());
        Config::load(self.config.as_deref(), &overrides)
    }
}
