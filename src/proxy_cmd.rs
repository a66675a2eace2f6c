//! `meshlet proxy`: load configuration and identity, build the runtime, serve until told to stop.

use std::sync::Arc;

use anyhow::Context;
use meshlet_identity::{Identity, IdentityStore};
use meshlet_proxy::args::ProxyArgs;
use meshlet_proxy::config::{Config, LogFormat};
use meshlet_proxy::{rotation, spire, Listeners};

use crate::Failure;

pub fn run(args: ProxyArgs) -> Result<(), Failure> {
    let config = args
        .load()
        .map_err(|e| Failure::Usage(format!("invalid configuration: {e}")))?;
    init_logging(&config);
    let spire_socket = config
        .identity
        .spiffe_endpoint_socket
        .as_deref()
        .map(spire::socket_path)
        .transpose()
        .map_err(|e| {
            Failure::Usage(format!(
                "invalid configuration: identity.spiffe_endpoint_socket: {e}"
            ))
        })?;

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
        let files = config.identity_files();
        // The identity first: from the SPIRE agent (waiting for it) or from files.
        let (identity, source) = match &spire_socket {
            Some(socket) => {
                let (identity, stream) = tokio::select! {
                    first = spire::first_identity(socket, &trust_domain) => first,
                    _ = stop.as_mut() => return Ok(()),
                };
                let source = Source::WorkloadApi {
                    socket: socket.clone(),
                    stream,
                };
                (identity, source)
            }
            None => {
                let provider = meshlet_identity::crypto_provider();
                let identity = Identity::load(&files, &trust_domain, &provider)
                    .context("cannot load the workload identity")?;
                rotation::warn_if_expiring(&identity);
                (identity, Source::Files)
            }
        };
        let store = Arc::new(IdentityStore::new(identity));
        let listeners = Listeners::from_config(&config);
        let running = meshlet_proxy::start(config, store.clone(), listeners).await?;
        let metrics = running.metrics.clone();
        // Then keep it current, from wherever it came.
        let _source = match source {
            Source::WorkloadApi { socket, stream } => {
                tokio::spawn(spire::follow(socket, stream, store, trust_domain, metrics))
            }
            Source::Files => rotation::spawn_watcher(store, files, trust_domain, metrics)?,
        };
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

/// Where the workload identity comes from, and so what keeps it current.
enum Source {
    /// The SPIRE agent's Workload API: its stream of updates.
    WorkloadApi {
        socket: std::path::PathBuf,
        stream: spire::SvidStream,
    },
    /// Files: watched, re-read on SIGHUP and periodically.
    Files,
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
