//! `meshlet proxy`: load configuration and identity, build the runtime, serve until told to stop.

use std::sync::Arc;

use meshlet_identity::{Identity, IdentityStore};
use meshlet_proxy::args::ProxyArgs;
use meshlet_proxy::config::{Config, LogFormat};
use meshlet_proxy::{rotation, Listeners};

use crate::Failure;

pub fn run(args: ProxyArgs) -> Result<(), Failure> {
    let config = args
        .load()
        .map_err(|e| Failure::Usage(format!("invalid configuration: {e}")))?;
    init_logging(&config);
    if let Some(socket) = &config.identity.spiffe_endpoint_socket {
        return Err(Failure::Usage(format!(
            "identity.spiffe_endpoint_socket ({socket}): the SPIFFE Workload API is not supported by this build yet; \
             mount the SVID as files (identity.cert/key/bundle), e.g. with spiffe-helper or csi-driver-spiffe"
        )));
    }
    let provider = meshlet_identity::crypto_provider();
    let identity = Identity::load(&config.identity_files(), &config.trust_domain, &provider)
        .map_err(|e| Failure::Runtime(format!("cannot load the workload identity: {e}")))?;
    rotation::warn_if_expiring(&identity);
    let store = Arc::new(IdentityStore::new(identity));

    let workers = match config.workers {
        0 => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        n => n,
    };
    let runtime = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
    }
    .map_err(|e| Failure::Runtime(format!("cannot start the runtime: {e}")))?;

    runtime.block_on(async move {
        let listeners = Listeners::from_config(&config);
        let files = config.identity_files();
        let trust_domain = config.trust_domain.clone();
        let running = meshlet_proxy::start(config, store.clone(), listeners).await?;
        let _watcher =
            rotation::spawn_watcher(store, files, trust_domain, running.shared.metrics.clone())?;
        let shared = running.shared.clone();
        tokio::spawn(async move {
            meshlet_proxy::termination_signal().await;
            shared.begin_shutdown();
        });
        running.wait().await;
        tracing::info!("meshlet proxy stopped");
        Ok::<(), anyhow::Error>(())
    })?;
    Ok(())
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match config.log.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
