//! `meshlet issuer`: signs short-lived SVIDs for pods that prove their service account
//! (meshlet-issuer). This parses its flags; deploy/issuer.yaml runs it.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use meshlet_issuer::authority::CaFiles;
use meshlet_issuer::bootstrap::{CA_BUNDLE, CA_CERT, CA_KEY};
use meshlet_issuer::kube::ApiConfig;
use meshlet_issuer::webhook_tls::WebhookTls;
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
    /// Directory of the CA (the Secret meshlet-ca mounted); followed, so a rotation needs no
    /// restart.
    #[arg(long, value_name = "DIR", default_value = "/etc/meshlet-ca")]
    ca_dir: PathBuf,
    /// The names of its files: `meshlet` (ca.crt and ca.key sign, bundle.crt is published:
    /// `meshlet cert ca`, or what --bootstrap-secret makes) or `cert-manager` (a CA
    /// Certificate's Secret: tls.crt and tls.key sign, ca.crt is published).
    #[arg(long, value_enum, default_value_t = CaLayout::Meshlet)]
    ca_layout: CaLayout,
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
    /// Keep the admission webhook's TLS Secret (NAMESPACE/NAME) signed by the CA, and its
    /// MutatingWebhookConfiguration's caBundle equal to the bundle. Leave it out when
    /// cert-manager does that.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    webhook_secret: Option<String>,
    /// The MutatingWebhookConfiguration whose caBundle is kept (with --webhook-secret).
    #[arg(long, default_value = "meshlet-injector")]
    webhook_configuration: String,
    /// The name the API server calls the webhook by (with --webhook-secret).
    #[arg(long, default_value = "meshlet-webhook.meshlet-system.svc")]
    webhook_name: String,
}

/// The file names of a CA directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum CaLayout {
    Meshlet,
    CertManager,
}

impl CaLayout {
    fn files(self, dir: &std::path::Path) -> CaFiles {
        let (cert, key, bundle) = match self {
            CaLayout::Meshlet => (CA_CERT, CA_KEY, CA_BUNDLE),
            CaLayout::CertManager => ("tls.crt", "tls.key", "ca.crt"),
        };
        CaFiles {
            cert: dir.join(cert),
            key: dir.join(key),
            bundle: dir.join(bundle),
        }
    }
}

/// `NAMESPACE/NAME` of a flag.
fn namespaced(flag: &str, s: &str) -> Result<(String, String), String> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_owned(), name.to_owned()))
        }
        _ => Err(format!("{flag}: {s:?}: expected NAMESPACE/NAME")),
    }
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
        let bootstrap = self
            .bootstrap_secret
            .as_deref()
            .map(|s| namespaced("--bootstrap-secret", s))
            .transpose()?;
        let webhook = match self.webhook_secret.as_deref() {
            None => None,
            Some(s) => {
                let (namespace, secret) = namespaced("--webhook-secret", s)?;
                Some(WebhookTls {
                    namespace,
                    secret,
                    configuration: self.webhook_configuration.clone(),
                    dns_name: self.webhook_name.clone(),
                })
            }
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
            ca: self.ca_layout.files(&self.ca_dir),
            bootstrap,
            ttl,
            serving_names: self.names,
            api,
            publish_every: (!publish.is_zero()).then_some(publish),
            webhook,
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
        let running = meshlet_issuer::start(config)
            .await
            .map_err(Failure::Runtime)?;
        running.wait().await;
        Ok(())
    })
}
