//! The proxy's configuration keys that a flag and an environment variable also set: the one
//! list `meshlet proxy`'s flags are made from and the injector writes its variables with. The
//! flag and the variable are derived from the key, never written by hand: `inbound.mode` is
//! `--inbound-mode` and `MESHLET_INBOUND_MODE`.

/// A configuration key settable by flag and by environment variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    /// The key, as in the YAML file.
    pub key: &'static str,
    pub help: &'static str,
    /// The value is YAML (numbers, lists), not a plain string.
    pub yaml: bool,
}

impl Key {
    /// `--` + this: the key with `.` and `_` as `-`.
    pub fn flag(&self) -> String {
        self.key.replace(['.', '_'], "-")
    }

    /// `MESHLET_` + the key upper-cased, with `.` as `_`.
    pub fn env(&self) -> String {
        format!("{ENV_PREFIX}{}", self.key.replace('.', "_").to_uppercase())
    }
}

/// Every variable meshlet reads starts with this.
pub const ENV_PREFIX: &str = "MESHLET_";
/// The configuration file's variable (`--config`).
pub const CONFIG_ENV: &str = "MESHLET_CONFIG";

const fn key(key: &'static str, help: &'static str, yaml: bool) -> Key {
    Key { key, help, yaml }
}

pub const TRUST_DOMAIN: Key = key("trust_domain", "trust_domain", false);
pub const SPIFFE_ENDPOINT_SOCKET: Key = key(
    "identity.spiffe_endpoint_socket",
    "identity.spiffe_endpoint_socket: SPIRE Workload API socket",
    false,
);
pub const IDENTITY_ISSUER: Key = key(
    "identity.issuer",
    "identity.issuer: the meshlet issuer's https:// address (the SVID is asked for, never read from files)",
    false,
);
pub const IDENTITY_TOKEN: Key = key(
    "identity.token",
    "identity.token: the service-account token shown to the issuer",
    false,
);
pub const INBOUND_MODE: Key = key("inbound.mode", "inbound.mode: strict | permissive", false);
pub const OUTBOUND_DESTINATIONS: Key = key(
    "outbound.destinations",
    "outbound.destinations, as YAML (a list)",
    true,
);
pub const APP_PROBES: Key = key(
    "admin.app_probes",
    "admin.app_probes, as YAML or JSON (written by meshlet inject)",
    true,
);
pub const LOG_LEVEL: Key = key(
    "log.level",
    "log.level: trace | debug | info | warn | error (or a filter)",
    false,
);

/// Every key settable by flag and environment.
pub const KEYS: &[Key] = &[
    TRUST_DOMAIN,
    key(
        "identity.cert",
        "identity.cert: certificate chain, leaf first",
        false,
    ),
    key(
        "identity.key",
        "identity.key: private key (PKCS#8, SEC1 or PKCS#1)",
        false,
    ),
    key(
        "identity.bundle",
        "identity.bundle: trust anchors of the trust domain",
        false,
    ),
    SPIFFE_ENDPOINT_SOCKET,
    IDENTITY_ISSUER,
    IDENTITY_TOKEN,
    key("inbound.port", "inbound.port", true),
    INBOUND_MODE,
    key(
        "inbound.policy",
        "inbound.policy, as YAML (a list of rules)",
        true,
    ),
    key("inbound.max_connections", "inbound.max_connections", true),
    key("outbound.port", "outbound.port", true),
    key("outbound.mtls", "outbound.mtls: auto | mtls | off", false),
    key(
        "outbound.transport",
        "outbound.transport: pooled | per_connection",
        false,
    ),
    OUTBOUND_DESTINATIONS,
    key(
        "outbound.auto_fallback_ttl",
        "outbound.auto_fallback_ttl (e.g. 60s)",
        false,
    ),
    key(
        "outbound.auto_detect_timeout",
        "outbound.auto_detect_timeout (e.g. 2s)",
        false,
    ),
    key(
        "outbound.bulk_rate",
        "outbound.bulk_rate: bytes/s that make a destination bulk (0 = never)",
        true,
    ),
    key("outbound.max_connections", "outbound.max_connections", true),
    key("admin.address", "admin.address (host:port)", false),
    APP_PROBES,
    key("log.format", "log.format: text | json", false),
    LOG_LEVEL,
    key(
        "workers",
        "workers: runtime worker threads (0 = one per CPU)",
        true,
    ),
    key("timeouts.connect", "timeouts.connect", false),
    key("timeouts.handshake", "timeouts.handshake", false),
    key("timeouts.first_byte", "timeouts.first_byte", false),
    key(
        "timeouts.server_first",
        "timeouts.server_first: permissive mode's wait before a silent caller is plaintext",
        false,
    ),
    key(
        "timeouts.http_idle",
        "timeouts.http_idle: how long an inbound HTTP keep-alive connection may idle",
        false,
    ),
    key(
        "timeouts.drain",
        "timeouts.drain: grace period for open connections at shutdown",
        false,
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_variables_are_derived_from_the_key() {
        assert_eq!(INBOUND_MODE.flag(), "inbound-mode");
        assert_eq!(INBOUND_MODE.env(), "MESHLET_INBOUND_MODE");
        assert_eq!(
            SPIFFE_ENDPOINT_SOCKET.env(),
            "MESHLET_IDENTITY_SPIFFE_ENDPOINT_SOCKET"
        );
        assert_eq!(APP_PROBES.flag(), "admin-app-probes");
    }

    #[test]
    fn no_two_keys_share_a_flag_or_a_variable() {
        let mut flags: Vec<String> = KEYS.iter().map(Key::flag).collect();
        let mut envs: Vec<String> = KEYS.iter().map(Key::env).collect();
        envs.push(CONFIG_ENV.to_owned());
        flags.sort();
        envs.sort();
        flags.dedup();
        envs.dedup();
        assert_eq!(flags.len(), KEYS.len());
        assert_eq!(envs.len(), KEYS.len() + 1);
    }

    /// The README's configuration reference: its YAML block, and the keys in it (a mapping
    /// that is not empty is a section; anything else is a key).
    fn readme_keys() -> (String, Vec<String>) {
        let readme = include_str!("../../README.md");
        let section = &readme[readme
            .find("## Configuration reference")
            .expect("the README has a configuration reference")..];
        let start = section.find("```yaml\n").expect("with a YAML block") + 8;
        let block = &section[start..start + section[start..].find("```").unwrap()];
        let value: serde_norway::Value = serde_norway::from_str(block).unwrap();
        fn walk(prefix: &str, v: &serde_norway::Value, out: &mut Vec<String>) {
            match v.as_mapping() {
                Some(m) if !m.is_empty() || prefix.is_empty() => {
                    for (k, v) in m {
                        let k = k.as_str().unwrap();
                        let path = if prefix.is_empty() {
                            k.to_owned()
                        } else {
                            format!("{prefix}.{k}")
                        };
                        walk(&path, v, out);
                    }
                }
                _ => out.push(prefix.to_owned()),
            }
        }
        let mut keys = Vec::new();
        walk("", &value, &mut keys);
        (block.to_owned(), keys)
    }

    #[test]
    fn the_readmes_configuration_reference_holds_every_key_and_no_other() {
        let (block, documented) = readme_keys();
        for key in &documented {
            assert!(
                KEYS.iter().any(|k| k.key == key),
                "the README documents {key}, which no flag or variable sets"
            );
        }
        for k in KEYS {
            let leaf = k.key.rsplit('.').next().unwrap();
            assert!(
                documented.iter().any(|d| d == k.key) || block.contains(&format!("# {leaf}:")),
                "the README's configuration reference lacks {}",
                k.key
            );
        }
    }
}
