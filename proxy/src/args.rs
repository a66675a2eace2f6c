//! `meshlet proxy` flags: `--config FILE` and one flag per configuration key, each also read
//! from a `MESHLET_*` environment variable. Flags and env override the file.

use std::path::PathBuf;

use clap::{Arg, ArgMatches, Command};

use crate::config::{Config, ConfigError, Override};

/// A configuration key settable by flag and by environment variable.
struct Key {
    /// The configuration key, as in the YAML file.
    key: &'static str,
    /// `--` + the key with `.` and `_` as `-` (a unit test checks the derivation).
    flag: &'static str,
    /// `MESHLET_` + the key upper-cased with `.` as `_` (likewise checked).
    env: &'static str,
    help: &'static str,
    /// The value is YAML (numbers, lists), not a plain string.
    yaml: bool,
}

const fn key(
    key: &'static str,
    flag: &'static str,
    env: &'static str,
    help: &'static str,
    yaml: bool,
) -> Key {
    Key {
        key,
        flag,
        env,
        help,
        yaml,
    }
}

/// Every key settable by flag and environment: the one list the flags, the variables and the
/// overrides are made from.
const KEYS: &[Key] = &[
    key(
        "trust_domain",
        "trust-domain",
        "MESHLET_TRUST_DOMAIN",
        "trust_domain",
        false,
    ),
    key(
        "identity.cert",
        "identity-cert",
        "MESHLET_IDENTITY_CERT",
        "identity.cert: certificate chain, leaf first",
        false,
    ),
    key(
        "identity.key",
        "identity-key",
        "MESHLET_IDENTITY_KEY",
        "identity.key: private key (PKCS#8, SEC1 or PKCS#1)",
        false,
    ),
    key(
        "identity.bundle",
        "identity-bundle",
        "MESHLET_IDENTITY_BUNDLE",
        "identity.bundle: trust anchors of the trust domain",
        false,
    ),
    key(
        "identity.spiffe_endpoint_socket",
        "identity-spiffe-endpoint-socket",
        "MESHLET_IDENTITY_SPIFFE_ENDPOINT_SOCKET",
        "identity.spiffe_endpoint_socket: SPIRE Workload API socket",
        false,
    ),
    key(
        "inbound.port",
        "inbound-port",
        "MESHLET_INBOUND_PORT",
        "inbound.port",
        true,
    ),
    key(
        "inbound.mode",
        "inbound-mode",
        "MESHLET_INBOUND_MODE",
        "inbound.mode: strict | permissive",
        false,
    ),
    key(
        "inbound.policy",
        "inbound-policy",
        "MESHLET_INBOUND_POLICY",
        "inbound.policy, as YAML (a list of rules)",
        true,
    ),
    key(
        "inbound.max_connections",
        "inbound-max-connections",
        "MESHLET_INBOUND_MAX_CONNECTIONS",
        "inbound.max_connections",
        true,
    ),
    key(
        "outbound.port",
        "outbound-port",
        "MESHLET_OUTBOUND_PORT",
        "outbound.port",
        true,
    ),
    key(
        "outbound.mtls",
        "outbound-mtls",
        "MESHLET_OUTBOUND_MTLS",
        "outbound.mtls: auto | mtls | off",
        false,
    ),
    key(
        "outbound.transport",
        "outbound-transport",
        "MESHLET_OUTBOUND_TRANSPORT",
        "outbound.transport: pooled | per_connection",
        false,
    ),
    key(
        "outbound.destinations",
        "outbound-destinations",
        "MESHLET_OUTBOUND_DESTINATIONS",
        "outbound.destinations, as YAML (a list)",
        true,
    ),
    key(
        "outbound.auto_fallback_ttl",
        "outbound-auto-fallback-ttl",
        "MESHLET_OUTBOUND_AUTO_FALLBACK_TTL",
        "outbound.auto_fallback_ttl (e.g. 60s)",
        false,
    ),
    key(
        "outbound.auto_detect_timeout",
        "outbound-auto-detect-timeout",
        "MESHLET_OUTBOUND_AUTO_DETECT_TIMEOUT",
        "outbound.auto_detect_timeout (e.g. 2s)",
        false,
    ),
    key(
        "outbound.bulk_rate",
        "outbound-bulk-rate",
        "MESHLET_OUTBOUND_BULK_RATE",
        "outbound.bulk_rate: bytes/s that make a destination bulk (0 = never)",
        true,
    ),
    key(
        "outbound.max_connections",
        "outbound-max-connections",
        "MESHLET_OUTBOUND_MAX_CONNECTIONS",
        "outbound.max_connections",
        true,
    ),
    key(
        "admin.address",
        "admin-address",
        "MESHLET_ADMIN_ADDRESS",
        "admin.address (host:port)",
        false,
    ),
    key(
        "admin.app_probes",
        "admin-app-probes",
        "MESHLET_ADMIN_APP_PROBES",
        "admin.app_probes, as YAML or JSON (written by meshlet inject)",
        true,
    ),
    key(
        "log.format",
        "log-format",
        "MESHLET_LOG_FORMAT",
        "log.format: text | json",
        false,
    ),
    key(
        "log.level",
        "log-level",
        "MESHLET_LOG_LEVEL",
        "log.level: trace | debug | info | warn | error (or a filter)",
        false,
    ),
    key(
        "workers",
        "workers",
        "MESHLET_WORKERS",
        "workers: runtime worker threads (0 = one per CPU)",
        true,
    ),
    key(
        "timeouts.connect",
        "timeouts-connect",
        "MESHLET_TIMEOUTS_CONNECT",
        "timeouts.connect",
        false,
    ),
    key(
        "timeouts.handshake",
        "timeouts-handshake",
        "MESHLET_TIMEOUTS_HANDSHAKE",
        "timeouts.handshake",
        false,
    ),
    key(
        "timeouts.first_byte",
        "timeouts-first-byte",
        "MESHLET_TIMEOUTS_FIRST_BYTE",
        "timeouts.first_byte",
        false,
    ),
    key(
        "timeouts.server_first",
        "timeouts-server-first",
        "MESHLET_TIMEOUTS_SERVER_FIRST",
        "timeouts.server_first: permissive mode's wait before a silent caller is plaintext",
        false,
    ),
    key(
        "timeouts.http_idle",
        "timeouts-http-idle",
        "MESHLET_TIMEOUTS_HTTP_IDLE",
        "timeouts.http_idle: how long an inbound HTTP keep-alive connection may idle",
        false,
    ),
    key(
        "timeouts.drain",
        "timeouts-drain",
        "MESHLET_TIMEOUTS_DRAIN",
        "timeouts.drain: grace period for open connections at shutdown",
        false,
    ),
];

/// `meshlet proxy`'s arguments: the configuration file and the keys given by flag or variable.
#[derive(Debug, Default, Clone)]
pub struct ProxyArgs {
    /// YAML configuration file (all keys optional).
    pub config: Option<PathBuf>,
    /// (index into KEYS, value) for every key given.
    given: Vec<(usize, String)>,
}

impl clap::FromArgMatches for ProxyArgs {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(ProxyArgs {
            config: m.get_one::<PathBuf>("config").cloned(),
            given: KEYS
                .iter()
                .enumerate()
                .filter_map(|(i, k)| m.get_one::<String>(k.key).map(|v| (i, v.clone())))
                .collect(),
        })
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl clap::Args for ProxyArgs {
    fn augment_args(cmd: Command) -> Command {
        let cmd = cmd.arg(
            Arg::new("config")
                .long("config")
                .env("MESHLET_CONFIG")
                .value_name("FILE")
                .value_parser(clap::value_parser!(PathBuf))
                .help("YAML configuration file (all keys optional)"),
        );
        KEYS.iter().fold(cmd, |cmd, k| {
            cmd.arg(
                Arg::new(k.key)
                    .long(k.flag)
                    .env(k.env)
                    .value_name(if k.yaml { "YAML" } else { "VALUE" })
                    .help(k.help),
            )
        })
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl ProxyArgs {
    /// The overrides, in the order of KEYS.
    pub fn overrides(&self) -> Vec<Override> {
        self.given
            .iter()
            .map(|(i, value)| {
                let k = &KEYS[*i];
                Override {
                    key: k.key,
                    value: value.clone(),
                    origin: format!("--{} (or {})", k.flag, k.env),
                    yaml: k.yaml,
                }
            })
            .collect()
    }

    /// The effective configuration. `SPIFFE_ENDPOINT_SOCKET` is honoured as SPIFFE specifies.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let mut overrides = Vec::new();
        let socket_given = self
            .given
            .iter()
            .any(|(i, _)| KEYS[*i].key == "identity.spiffe_endpoint_socket");
        if !socket_given {
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Args, FromArgMatches};

    #[test]
    fn flags_and_variables_are_derived_from_the_keys() {
        for k in KEYS {
            assert_eq!(k.flag, k.key.replace(['.', '_'], "-"), "{}", k.key);
            assert_eq!(
                k.env,
                format!("MESHLET_{}", k.key.replace('.', "_").to_uppercase()),
                "{}",
                k.key
            );
        }
    }

    #[test]
    fn every_key_is_a_configuration_key_that_a_flag_sets() {
        let cmd = ProxyArgs::augment_args(Command::new("proxy"));
        for k in KEYS {
            let value = if k.key == "inbound.policy" || k.key == "outbound.destinations" {
                "[]"
            } else if k.key == "admin.app_probes" {
                "{}"
            } else {
                "1"
            };
            let m = cmd
                .clone()
                .try_get_matches_from(["proxy", &format!("--{}", k.flag), value])
                .unwrap();
            let args = ProxyArgs::from_arg_matches(&m).unwrap();
            let o = args.overrides();
            assert_eq!(o.len(), 1);
            assert_eq!(o[0].key, k.key);
        }
    }
}
