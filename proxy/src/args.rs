//! `meshlet proxy` flags: `--config FILE` and one flag per configuration key, each also read
//! from a `MESHLET_*` environment variable. Flags and env override the file.

use std::path::PathBuf;
use std::sync::OnceLock;

use clap::{Arg, ArgMatches, Command};
use meshlet_defaults::keys::{Key, CONFIG_ENV, KEYS, SPIFFE_ENDPOINT_SOCKET};

use crate::config::{Config, ConfigError, Override};

/// The keys, each with its flag and variable (derived from the key by `meshlet-defaults`),
/// made once: clap borrows the names for the life of the process.
struct Named {
    key: Key,
    flag: String,
    env: String,
}

fn keys() -> &'static [Named] {
    static NAMED: OnceLock<Vec<Named>> = OnceLock::new();
    NAMED.get_or_init(|| {
        KEYS.iter()
            .map(|k| Named {
                key: *k,
                flag: k.flag(),
                env: k.env(),
            })
            .collect()
    })
}

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
                .env(CONFIG_ENV)
                .value_name("FILE")
                .value_parser(clap::value_parser!(PathBuf))
                .help("YAML configuration file (all keys optional)"),
        );
        keys().iter().fold(cmd, |cmd, k| {
            cmd.arg(
                Arg::new(k.key.key)
                    .long(k.flag.as_str())
                    .env(k.env.as_str())
                    .value_name(if k.key.yaml { "YAML" } else { "VALUE" })
                    .help(k.key.help),
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
                let k = &keys()[*i];
                Override {
                    key: k.key.key,
                    value: value.clone(),
                    origin: format!("--{} (or {})", k.flag, k.env),
                    yaml: k.key.yaml,
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
            .any(|(i, _)| KEYS[*i] == SPIFFE_ENDPOINT_SOCKET);
        if !socket_given {
            if let Ok(socket) = std::env::var("SPIFFE_ENDPOINT_SOCKET") {
                overrides.push(Override {
                    key: SPIFFE_ENDPOINT_SOCKET.key,
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
                .try_get_matches_from(["proxy", &format!("--{}", k.flag()), value])
                .unwrap();
            let args = ProxyArgs::from_arg_matches(&m).unwrap();
            let o = args.overrides();
            assert_eq!(o.len(), 1);
            assert_eq!(o[0].key, k.key);
        }
    }
}
