//! Applies rendered rules with the restore tools, atomically, and removes them again.

use std::io::Write;
use std::process::{Command, Stdio};

use tracing::{debug, info};

use crate::backend::{self, Backend, BackendChoice, Family};
use crate::model::CaptureConfig;
use crate::render;

/// When to program IPv6 as well.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ipv6Mode {
    Auto,
    On,
    Off,
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{0}")]
    NoTools(String),
    #[error("{tool} is not installed: install the iptables package in the init image")]
    ToolMissing { tool: String },
    #[error("{tool} was refused ({detail}): meshlet init needs the NET_ADMIN capability (and NET_RAW): add them to the init container's securityContext.capabilities.add, or run it as root")]
    NeedsNetAdmin { tool: String, detail: String },
    #[error("{tool} failed: {detail}")]
    Failed { tool: String, detail: String },
}

/// What was done, or with `dry_run` what would have been.
#[derive(Debug)]
pub struct ApplyReport {
    pub backend: Backend,
    pub reason: String,
    /// The exact restore input per family, in the order applied.
    pub inputs: Vec<(Family, String)>,
}

/// Installs the capture rules (replacing any earlier meshlet rules) in the current namespace.
pub fn apply(
    cfg: &CaptureConfig,
    choice: BackendChoice,
    ipv6: Ipv6Mode,
    dry_run: bool,
) -> Result<ApplyReport, ApplyError> {
    let (backend, reason) = backend::choose(choice).map_err(ApplyError::NoTools)?;
    info!(%backend, %reason, "iptables backend chosen");
    let mut families = vec![Family::V4];
    let v6 = match ipv6 {
        Ipv6Mode::On => true,
        Ipv6Mode::Off => false,
        Ipv6Mode::Auto => backend::has_global_ipv6(),
    };
    if v6 {
        families.push(Family::V6);
    }
    let mut inputs = Vec::new();
    for family in families {
        let tools = backend
            .tools(family)
            .map_err(|tool| ApplyError::ToolMissing { tool })?;
        // In a dry run without privileges the current state cannot be read; render as if empty.
        let saved = match save_nat(&tools.save) {
            Ok(s) => s,
            Err(e) if dry_run => {
                debug!(error = %e, "dry run: current rules unreadable, rendering against an empty table");
                String::new()
            }
            Err(e) => return Err(e),
        };
        let input = render::render_apply(cfg, family, &render::meshlet_jumps(&saved));
        if !dry_run {
            restore(&tools.restore, &input)?;
            info!(%family, %backend, "capture rules applied");
        }
        inputs.push((family, input));
    }
    Ok(ApplyReport {
        backend,
        reason,
        inputs,
    })
}

/// Removes every meshlet rule and chain, both families, from whichever backend holds them.
/// Returns the (backend, family, input) triples that were (or with `dry_run` would be) applied.
pub fn cleanup(dry_run: bool) -> Result<Vec<(Backend, Family, String)>, ApplyError> {
    let mut done = Vec::new();
    let mut any_tools = false;
    for backend in [Backend::Legacy, Backend::Nft, Backend::Plain] {
        for family in [Family::V4, Family::V6] {
            let Ok(tools) = backend.tools(family) else {
                continue;
            };
            any_tools = true;
            if backend == Backend::Plain && done.iter().any(|(_, f, _)| *f == family) {
                continue; // plain is one of the other two under another name
            }
            let saved = save_nat(&tools.save)?;
            if let Some(input) = render::render_cleanup(&saved) {
                if !dry_run {
                    restore(&tools.restore, &input)?;
                    info!(%backend, %family, "meshlet rules removed");
                }
                done.push((backend, family, input));
            }
        }
    }
    if !any_tools {
        return Err(ApplyError::NoTools(
            "no iptables tools found: install the iptables package in the init image".into(),
        ));
    }
    Ok(done)
}

fn save_nat(tool: &std::path::Path) -> Result<String, ApplyError> {
    let out = Command::new(tool)
        .args(["-t", "nat"])
        .output()
        .map_err(|e| ApplyError::Failed {
            tool: tool.display().to_string(),
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(classify(tool, &out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn restore(tool: &std::path::Path, input: &str) -> Result<(), ApplyError> {
    let name = tool.display().to_string();
    let failed = |detail: String| ApplyError::Failed {
        tool: name.clone(),
        detail,
    };
    let mut child = Command::new(tool)
        .arg("--noflush")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .map_err(|e| failed(e.to_string()))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| failed(e.to_string()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(classify(tool, &out.stderr))
    }
}

fn classify(tool: &std::path::Path, stderr: &[u8]) -> ApplyError {
    let detail = String::from_utf8_lossy(stderr).trim().replace('\n', "; ");
    let tool = tool.display().to_string();
    let lower = detail.to_lowercase();
    if lower.contains("permission denied")
        || lower.contains("must be root")
        || lower.contains("operation not permitted")
    {
        ApplyError::NeedsNetAdmin { tool, detail }
    } else {
        ApplyError::Failed { tool, detail }
    }
}
