//! `meshlet proxy`: load configuration and identity, build the runtime, serve until told to stop.

use std::sync::Arc;

use anyhow::Context;
use meshlet_identity::IdentityStore;
use meshlet_proxy::args::ProxyArgs;
use meshlet_proxy::config::{Config, LogFormat};
use meshlet_proxy::Listeners;

use crate::Failure;

pub fn run(args: ProxyArgs) -> Result<(), Failure> {
    let config = args
        .load()
        .map_err(|e| Failure::Usage(format!("invalid configuration: {e}")))?;
    init_logging(&config);
    let source = config
        .identity_source()
        .map_err(|e| Failure::Usage(format!("invalid configuration: {e}")))?;

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
        // Before anything can announce readiness: see `termination_signal`.
        let mut stop = Box::pin(meshlet_proxy::termination_signal());
        let trust_domain = config.trust_domain.clone();
        // The identity first: from the SPIRE agent or the issuer (waiting for it) or from
        // files; then keep it current from wherever it came, counting every update.
        let (identity, follower) = tokio::select! {
            first = source.first(&trust_domain) => first.context("cannot load the workload identity")?,
            _ = stop.as_mut() => return Ok(()),
        };
        let store = Arc::new(IdentityStore::new(identity));
        let listeners = Listeners::from_config(&config);
        let running = meshlet_proxy::start(config, store.clone(), listeners).await?;
        let metrics = running.metrics.clone();
        let _following = follower
            .follow(store, move |update| metrics.rotation(update))
            .map_err(anyhow::Error::msg)?;
        let lifecycle = running.lifecycle.clone();
        tokio::spawn(async move {
            stop.await;
            lifecycle.begin_shutdown();
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
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let _ = match config.log.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
