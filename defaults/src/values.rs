//! The values of the proxy's configuration that the injector also writes: parsed here, so
//! that an annotation is refused exactly when the proxy would refuse the variable it becomes.

use std::str::FromStr;

/// Where the pod's identity files are mounted, and their names (a TLS Secret's and
/// csi-driver-spiffe's layout): the proxy's defaults, the injector's mounts, `meshlet check`.
pub const IDENTITY_DIR: &str = "/var/run/secrets/meshlet";
pub const CERT_FILE: &str = "tls.crt";
pub const KEY_FILE: &str = "tls.key";
pub const BUNDLE_FILE: &str = "ca.crt";

/// `inbound.mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InboundMode {
    /// Only meshlet mTLS is accepted.
    #[default]
    Strict,
    /// Plaintext and foreign TLS are let in as unauthenticated callers, still under policy.
    Permissive,
}

impl InboundMode {
    pub fn as_str(self) -> &'static str {
        match self {
            InboundMode::Strict => "strict",
            InboundMode::Permissive => "permissive",
        }
    }
}

impl FromStr for InboundMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "strict" => Ok(InboundMode::Strict),
            "permissive" => Ok(InboundMode::Permissive),
            _ => Err(format!("{s:?}: expected strict or permissive")),
        }
    }
}

/// `log.level`: a level, or a filter of `target=level` directives separated by commas.
pub fn check_log_level(level: &str) -> Result<(), String> {
    let ok = !level.is_empty()
        && level.split(',').all(|d| {
            let lvl = d.rsplit('=').next().unwrap_or("");
            matches!(
                lvl.trim().to_ascii_lowercase().as_str(),
                "trace" | "debug" | "info" | "warn" | "error" | "off"
            )
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{level:?} is not a level or filter (trace, debug, info, warn, error, or e.g. meshlet_proxy=debug)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_filters_pass_and_anything_else_is_refused() {
        for ok in ["info", "debug", "meshlet_proxy=debug,info", "off"] {
            assert!(check_log_level(ok).is_ok(), "{ok}");
        }
        for bad in ["", "loud", "meshlet=verbose"] {
            assert!(check_log_level(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn inbound_modes_read_as_the_configuration_writes_them() {
        for mode in [InboundMode::Strict, InboundMode::Permissive] {
            assert_eq!(mode.as_str().parse(), Ok(mode));
        }
        assert!("Strict".parse::<InboundMode>().is_err());
    }
}
