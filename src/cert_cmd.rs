//! `meshlet cert`: a throwaway CA, SVIDs, and inspection.

use std::path::PathBuf;

use clap::Subcommand;
use meshlet_identity::issue::{parse_duration, write_file, write_svid_dir, Ca, LeafSpec};
use meshlet_identity::SpiffeId;

use crate::Failure;

#[derive(Subcommand, Debug)]
pub enum CertCommand {
    /// Create a CA for a trust domain: writes ca.crt and ca.key (mode 0600).
    Ca {
        #[arg(long)]
        trust_domain: String,
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// validity of the CA
        #[arg(long, default_value = "365d")]
        ttl: String,
    },
    /// Issue an X.509-SVID: writes tls.crt, tls.key (0600) and ca.crt.
    Issue {
        /// directory holding ca.crt and ca.key
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        #[arg(long)]
        spiffe_id: String,
        /// an extra DNS SAN (may be repeated)
        #[arg(long)]
        dns: Vec<String>,
        #[arg(long, default_value = "24h")]
        ttl: String,
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Show what a certificate holds and whether it is a valid SVID.
    Inspect {
        file: PathBuf,
        /// machine-readable output
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: CertCommand) -> Result<(), Failure> {
    let runtime = |e: meshlet_identity::issue::IssueError| Failure::Runtime(e.to_string());
    match cmd {
        CertCommand::Ca {
            trust_domain,
            out,
            ttl,
        } => {
            let ttl = parse_duration(&ttl).map_err(|e| Failure::Usage(format!("--ttl: {e}")))?;
            let ca = Ca::new(&trust_domain, ttl).map_err(|e| match e {
                meshlet_identity::issue::IssueError::Invalid(m) => {
                    Failure::Usage(format!("--trust-domain: {m}"))
                }
                other => runtime(other),
            })?;
            write_file(&out, "ca.crt", &ca.pem.cert, false).map_err(runtime)?;
            write_file(&out, "ca.key", &ca.pem.key, true).map_err(runtime)?;
            println!(
                "wrote {} and {} for trust domain {trust_domain}",
                out.join("ca.crt").display(),
                out.join("ca.key").display()
            );
        }
        CertCommand::Issue {
            ca,
            spiffe_id,
            dns,
            ttl,
            out,
        } => {
            let id = SpiffeId::parse(&spiffe_id)
                .map_err(|e| Failure::Usage(format!("--spiffe-id: {e}")))?;
            let ttl = parse_duration(&ttl).map_err(|e| Failure::Usage(format!("--ttl: {e}")))?;
            let authority = Ca::load(&ca).map_err(runtime)?;
            let mut spec = LeafSpec::svid(&id, ttl);
            spec.dns = dns;
            let leaf = authority.issue(&spec).map_err(|e| match e {
                meshlet_identity::issue::IssueError::Invalid(m) => Failure::Usage(m),
                other => runtime(other),
            })?;
            write_svid_dir(&out, &leaf, &authority.pem.cert).map_err(runtime)?;
            println!(
                "wrote {}, {} and {} for {id}",
                out.join("tls.crt").display(),
                out.join("tls.key").display(),
                out.join("ca.crt").display()
            );
        }
        CertCommand::Inspect { file, json } => {
            let pem = std::fs::read(&file)
                .map_err(|e| Failure::Runtime(format!("{}: {e}", file.display())))?;
            let info = meshlet_identity::inspect::inspect_pem(&pem)
                .map_err(|e| Failure::Runtime(format!("{}: {e}", file.display())))?;
            if json {
                let text = serde_json::to_string_pretty(&info)
                    .map_err(|e| Failure::Runtime(e.to_string()))?;
                println!("{text}");
            } else {
                print!("{}", info.to_text());
            }
        }
    }
    Ok(())
}
