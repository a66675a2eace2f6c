//! Which iptables the rules go to: legacy (x_tables) or nft, the way Istio settled on after many
//! field reports. Mixing the two in one namespace makes both misbehave, so `auto` follows
//! whatever already holds rules: legacy when legacy has rules, else nft, else plain `iptables`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// IPv4 or IPv6: which tool family (`iptables-*` or `ip6tables-*`) handles it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// What the user asked for with `--backend`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendChoice {
    Auto,
    Legacy,
    Nft,
}

/// A concrete set of iptables tools.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Legacy,
    Nft,
    /// `iptables-restore` as found on PATH, when neither variant is installed by name.
    Plain,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Legacy => "legacy",
            Backend::Nft => "nft",
            Backend::Plain => "plain",
        })
    }
}

/// The two tools of one backend and family.
#[derive(Clone, Debug)]
pub struct Tools {
    pub save: PathBuf,
    pub restore: PathBuf,
}

impl Backend {
    /// Tool base names, e.g. `iptables-nft-save` / `ip6tables-nft-restore`.
    pub fn tool_names(self, family: Family) -> (String, String) {
        let base = match family {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        };
        let variant = match self {
            Backend::Legacy => "-legacy",
            Backend::Nft => "-nft",
            Backend::Plain => "",
        };
        (
            format!("{base}{variant}-save"),
            format!("{base}{variant}-restore"),
        )
    }

    /// The installed tools, or the name of the first one missing.
    pub fn tools(self, family: Family) -> Result<Tools, String> {
        let (save, restore) = self.tool_names(family);
        Ok(Tools {
            save: find_tool(&save).ok_or(save)?,
            restore: find_tool(&restore).ok_or(restore)?,
        })
    }
}

/// Looks a tool up on PATH and in the sbin directories, which a non-root PATH often lacks.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Counts `-A` rules the legacy backend holds in this namespace, both families, all tables.
fn legacy_rule_count() -> usize {
    [Family::V4, Family::V6]
        .into_iter()
        .filter_map(|f| Backend::Legacy.tools(f).ok())
        .filter_map(|t| Command::new(&t.save).output().ok())
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.starts_with("-A "))
                .count()
        })
        .sum()
}

/// Picks the backend and says why.
pub fn choose(choice: BackendChoice) -> Result<(Backend, String), String> {
    let usable = |b: Backend| b.tools(Family::V4).is_ok();
    match choice {
        BackendChoice::Legacy => Ok((Backend::Legacy, "forced by --backend legacy".into())),
        BackendChoice::Nft => Ok((Backend::Nft, "forced by --backend nft".into())),
        BackendChoice::Auto => {
            if usable(Backend::Legacy) {
                let rules = legacy_rule_count();
                if rules > 0 {
                    return Ok((
                        Backend::Legacy,
                        format!("iptables-legacy already holds {rules} rules in this namespace"),
                    ));
                }
            }
            if usable(Backend::Nft) {
                Ok((
                    Backend::Nft,
                    "no legacy rules in this namespace; nft is installed".into(),
                ))
            } else if usable(Backend::Plain) {
                Ok((
                    Backend::Plain,
                    "neither iptables-legacy nor iptables-nft is installed by name".into(),
                ))
            } else {
                Err("no iptables tools found (iptables-restore, iptables-nft-restore or iptables-legacy-restore): install the iptables package in the init image".into())
            }
        }
    }
}

/// Whether the namespace has a global IPv6 address (what `--ipv6 auto` decides on).
pub fn has_global_ipv6() -> bool {
    // Columns: address, ifindex, prefix length, scope, flags, name. Scope 00 is global.
    std::fs::read_to_string("/proc/net/if_inet6")
        .map(|text| {
            text.lines().any(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                cols.len() >= 6 && cols[3] == "00" && cols[5] != "lo"
            })
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_names_follow_the_debian_layout() {
        assert_eq!(
            Backend::Nft.tool_names(Family::V6),
            ("ip6tables-nft-save".into(), "ip6tables-nft-restore".into())
        );
        assert_eq!(
            Backend::Plain.tool_names(Family::V4),
            ("iptables-save".into(), "iptables-restore".into())
        );
    }
}
