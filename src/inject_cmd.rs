//! `meshlet inject`: manifests in (files, folders, stdin), injected manifests out (stdout).
//! What happened to each workload goes to stderr; a workload that cannot be injected as
//! asked (a bad annotation) fails the whole run, so a pipe into `kubectl apply` never applies
//! half of it.

use std::io::Read;
use std::path::{Path, PathBuf};

use clap::Args;
use meshlet_inject::pod::Outcome;
use meshlet_inject::{manifest, workload, IdentitySource, Settings, SidecarMode};

use crate::Failure;

/// Options shared by `meshlet inject` and `meshlet webhook`: the defaults that annotations
/// override per workload.
#[derive(Args, Debug, Clone)]
pub struct InjectDefaults {
    /// The meshlet image for the init container and the sidecar.
    #[arg(long, default_value = concat!("meshlet:", env!("CARGO_PKG_VERSION")))]
    pub image: String,
    /// `native` (an init container with restartPolicy Always; Kubernetes ≥ 1.29) or `classic`
    /// (a regular container started first, for older clusters).
    #[arg(long, default_value = "native", value_parser = parse_sidecar)]
    pub sidecar: SidecarMode,
    /// Where the SVID comes from: `issuer` (meshlet issuer, deploy/issuer.yaml: no Secret),
    /// `secret` (the Secret `<serviceAccount>-svid`), `secret:NAME`, `csi-spiffe` (cert-manager
    /// csi-driver-spiffe) or `spire` (SPIFFE CSI driver).
    #[arg(long, default_value = "secret", value_parser = parse_identity)]
    pub identity: IdentitySource,
    /// Where sidecars with the `issuer` identity ask for their SVID.
    #[arg(long, value_name = "URL", default_value = meshlet_defaults::issuer::DEFAULT_URL, value_parser = parse_issuer_url)]
    pub issuer_url: String,
}

fn parse_issuer_url(s: &str) -> Result<String, String> {
    s.parse::<meshlet_identity::https::HttpsUrl>()?;
    Ok(s.to_owned())
}

fn parse_sidecar(s: &str) -> Result<SidecarMode, String> {
    s.parse()
}

fn parse_identity(s: &str) -> Result<IdentitySource, String> {
    s.parse()
}

impl InjectDefaults {
    pub fn settings(&self) -> Settings {
        Settings {
            issuer_url: self.issuer_url.clone(),
            ..Settings::defaults(&self.image, self.sidecar, self.identity.clone())
        }
    }
}

#[derive(Args, Debug)]
pub struct InjectArgs {
    /// Files or folders of YAML/JSON manifests; `-` or nothing reads stdin.
    #[arg(value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// Remove what injection added instead.
    #[arg(long)]
    uninject: bool,
    #[command(flatten)]
    defaults: InjectDefaults,
}

pub fn run(args: InjectArgs) -> Result<(), Failure> {
    let mut docs = Vec::new();
    for source in sources(&args.paths)? {
        let (name, text) = match &source {
            None => {
                let mut text = String::new();
                std::io::stdin()
                    .read_to_string(&mut text)
                    .map_err(|e| Failure::Usage(format!("stdin: {e}")))?;
                ("stdin".to_owned(), text)
            }
            Some(path) => (
                path.display().to_string(),
                std::fs::read_to_string(path)
                    .map_err(|e| Failure::Usage(format!("{}: {e}", path.display())))?,
            ),
        };
        docs.extend(manifest::parse(&text).map_err(|e| Failure::Usage(format!("{name}: {e}")))?);
    }
    let settings = args.defaults.settings();
    let mut failed = Vec::new();
    for doc in docs.iter_mut() {
        let report = if args.uninject {
            workload::uninject(doc)
        } else {
            workload::inject(doc, &settings)
        };
        for (what, outcome) in report {
            match outcome {
                Ok(Outcome::Injected { warnings }) => {
                    let verb = if args.uninject {
                        "uninjected"
                    } else {
                        "injected"
                    };
                    eprintln!("meshlet: {verb} {what}");
                    for w in warnings {
                        eprintln!("meshlet: warning: {what}: {w}");
                    }
                }
                Ok(Outcome::Unchanged { reason }) => {
                    eprintln!("meshlet: left {what} as it is: {reason}")
                }
                Err(e) => failed.push(format!("{what}: {e}")),
            }
        }
    }
    if !failed.is_empty() {
        return Err(Failure::Usage(failed.join("; ")));
    }
    let out = manifest::render(&docs).map_err(Failure::Runtime)?;
    print!("{out}");
    Ok(())
}

/// The inputs in order: `None` for stdin, files as given, a folder's YAML/JSON files sorted.
fn sources(paths: &[PathBuf]) -> Result<Vec<Option<PathBuf>>, Failure> {
    if paths.is_empty() {
        return Ok(vec![None]);
    }
    let mut out = Vec::new();
    for p in paths {
        if p == Path::new("-") {
            out.push(None);
        } else if p.is_dir() {
            out.extend(folder(p)?.into_iter().map(Some));
        } else {
            out.push(Some(p.clone()));
        }
    }
    Ok(out)
}

fn folder(dir: &Path) -> Result<Vec<PathBuf>, Failure> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| Failure::Usage(format!("{}: {e}", dir.display())))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| Failure::Usage(format!("{}: {e}", dir.display())))?
            .path();
        if path.is_dir() {
            files.extend(folder(&path)?);
        } else if path
            .extension()
            .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
        {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}
