//! `meshlet issuer`: signs short-lived SVIDs for pods that prove their service account
//! (meshlet-issuer). This parses its flags; deploy/issuer.yaml runs it.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use meshlet_issuer::authority::CaFiles;
use meshlet_issuer::bootstrap::{CA_BUNDLE, CA_CERT, CA_KEY};
use meshlet_issuer::kube::ApiConfig;
use meshlet_issuer::IssuerConfig;

use crate::Failure;

#[derive(Args, Debug)]
pub struct IssuerArgs {
    /// Address to serve HTTPS on.
    #[arg(long, default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// The trust domain of the SVIDs it signs (the sidecars' trust_domain).
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// Directory of the CA: ca.crt and ca.key sign, bundle.crt is published (the Secret
    /// meshlet-ca mounted); followed, so a rotation needs no restart.
    #[arg(long, value_name = "DIR", default_value = "/etc/meshlet-ca")]
    ca_dir: PathBuf,
    /// When --ca-dir holds no CA: read it from this Secret (NAMESPACE/NAME), making it first if
    /// there is none.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    bootstrap_secret: Option<String>,
    /// How long an SVID lives (the sidecar renews it at about half of that).
    #[arg(long, default_value = "24h")]
    ttl: String,
    /// A DNS name or address the issuer is reached by, for its serving certificate (repeat).
    #[arg(long = "name", default_values_t = default_names())]
    names: Vec<String>,
    /// The API server (default: in-cluster, from KUBERNETES_SERVICE_HOST).
    #[arg(long, value_name = "URL")]
    api_server: Option<String>,
    /// The issuer's own token for the API server.
    #[arg(long, default_value = meshlet_issuer::kube::IN_CLUSTER_TOKEN)]
    api_token: PathBuf,
    /// The CA that verifies the API server.
    #[arg(long, default_value = meshlet_issuer::kube::IN_CLUSTER_CA)]
    api_ca: PathBuf,
    /// How often the bundle's ConfigMap is checked in every namespace; 0 = not published.
    #[arg(long, default_value = "30s")]
    publish_every: String,
}

fn default_names() -> Vec<String> {
    let host = meshlet_defaults::issuer::DEFAULT_URL.trim_start_matches("https://");
    vec![host.to_owned(), format!("{host}.cluster.local")]
}

impl IssuerArgs {
    fn config(self) -> Result<IssuerConfig, String> {
        meshlet_identity::spiffe_id::validate_trust_domain(&self.trust_domain)
            .map_err(|e| format!("--trust-domain: {e}"))?;
        let duration = |flag: &str, text: &str| {
            meshlet_defaults::parse_duration(text).map_err(|e| format!("{flag}: {e}"))
        };
        let ttl = duration("--ttl", &self.ttl)?;
        if ttl.as_secs() < 2 {
            return Err("--ttl: at least 2s".into());
        }
        let publish = duration("--publish-every", &self.publish_every)?;
        let bootstrap = match &self.bootstrap_secret {
            None => None,
            Some(s) => match s.split_once('/') {
                Some((ns, name)) if !ns.is_empty() && !name.is_empty() => {
                    Some((ns.to_owned(), name.to_owned()))
                }
                _ => return Err(format!("--bootstrap-secret: {s:?}: expected NAMESPACE/NAME")),
            },
        };
        let api = match &self.api_server {
            Some(url) => ApiConfig {
                url: url.parse().map_err(|e| format!("--api-server: {e}"))?,
                token: self.api_token.clone(),
                ca: self.api_ca.clone(),
            },
            None => ApiConfig {
                token: self.api_token.clone(),
                ca: self.api_ca.clone(),
                ..ApiConfig::in_cluster()?
            },
        };
        Ok(IssuerConfig {
            listen: self.listen,
            trust_domain: self.trust_domain,
            ca: CaFiles {
                cert: self.ca_dir.join(CA_CERT),
                key: self.ca_dir.join(CA_KEY),
                bundle: self.ca_dir.join(CA_BUNDLE),
            },
            bootstrap,
            ttl,
            serving_names: self.names,
            api,
            publish_every: (!publish.is_zero()).then_some(publish),
        })
    }
}

pub fn run(args: IssuerArgs) -> Result<(), Failure> {
    crate::init_cli_logging();
    let config = args.config().map_err(Failure::Usage)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async move {
        let running = meshlet_issuer::start(config).await.map_err(Failure::Runtime)?;
        running.wait().await;
        Ok(())
    })
}
