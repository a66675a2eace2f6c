//! Keeping the identity current: the certificate, key and bundle files are re-read when their
//! directories change (the kubelet swaps a `..data` symlink; other tools rewrite files in
//! place), on SIGHUP, and periodically (which also catches a leaf approaching expiry).
//! A set that does not load and validate as a whole is never swapped in.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meshlet_identity::{Identity, IdentityFiles, IdentityStore};
use notify::{RecursiveMode, Watcher};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::metrics::{Metrics, ResultLabels};

/// Changes closer together than this are read as one (a Secret update touches several files).
const DEBOUNCE: Duration = Duration::from_millis(250);
/// Re-read even without events: a safety net for filesystems that do not report changes.
const PERIODIC: Duration = Duration::from_secs(30);

/// What prompted a reload: an operator's SIGHUP deserves an answer even when nothing changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    FileChange,
    Sighup,
    Periodic,
    WorkloadApi,
}

impl Trigger {
    fn label(self) -> &'static str {
        match self {
            Trigger::FileChange => "file change",
            Trigger::Sighup => "SIGHUP",
            Trigger::Periodic => "periodic check",
            Trigger::WorkloadApi => "Workload API update",
        }
    }
}

/// What a reload did.
#[derive(Debug, PartialEq, Eq)]
pub enum Reload {
    Applied,
    Unchanged,
    Refused,
}

/// Reads the files again and swaps them in if they are valid and different.
pub fn reload(
    store: &IdentityStore,
    files: &IdentityFiles,
    trust_domain: &str,
    metrics: &Metrics,
    trigger: Trigger,
) -> Reload {
    let provider = meshlet_identity::crypto_provider();
    let loaded = Identity::load(files, trust_domain, &provider).map_err(|e| e.to_string());
    apply(store, loaded, metrics, trigger)
}

/// Swaps in a freshly loaded identity when it differs from the current one; a load that failed
/// is counted and logged, and the current identity stays.
pub fn apply(
    store: &IdentityStore,
    loaded: Result<Identity, String>,
    metrics: &Metrics,
    trigger: Trigger,
) -> Reload {
    let why = trigger.label();
    match loaded {
        Ok(new) => {
            if new.same_as(&store.current()) {
                if trigger == Trigger::Sighup {
                    info!(why, "identity files reloaded: unchanged");
                } else {
                    debug!(why, "identity unchanged");
                }
                return Reload::Unchanged;
            }
            let id = new.id.clone();
            let expires = meshlet_identity::svid::fmt_time(new.not_after);
            warn_if_expiring(&new);
            store.replace(new);
            metrics
                .rotations
                .get_or_create(&ResultLabels { result: "applied" })
                .inc();
            info!(why, %id, %expires, "identity rotated: new handshakes use the new certificate and bundle");
            Reload::Applied
        }
        Err(e) => {
            metrics
                .rotations
                .get_or_create(&ResultLabels { result: "refused" })
                .inc();
            warn!(why, error = %e, "identity update refused; keeping the current certificate and bundle");
            Reload::Refused
        }
    }
}

/// Warns when less than a fifth of the certificate's lifetime is left.
pub fn warn_if_expiring(identity: &Identity) {
    let now = SystemTime::now();
    let total = identity
        .not_after
        .duration_since(identity.not_before)
        .unwrap_or_default();
    let left = identity.not_after.duration_since(now).unwrap_or_default();
    if left < total / 5 {
        warn!(id = %identity.id, seconds_left = left.as_secs(), "the SVID is close to expiry and has not been renewed");
    }
}

/// Watches the identity files until the process ends. Fails only if no watch can be set up.
pub fn spawn_watcher(
    store: Arc<IdentityStore>,
    files: IdentityFiles,
    trust_domain: String,
    metrics: Arc<Metrics>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let changed = Arc::new(Notify::new());
    let notify_changed = changed.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(e) = event {
            if !e.kind.is_access() {
                notify_changed.notify_one();
            }
        }
    })?;
    let dirs: BTreeSet<PathBuf> = [&files.cert, &files.key, &files.bundle]
        .iter()
        .map(|p| {
            p.parent()
                .map(|d| {
                    if d.as_os_str().is_empty() {
                        PathBuf::from(".")
                    } else {
                        d.to_owned()
                    }
                })
                .unwrap_or_else(|| PathBuf::from("/"))
        })
        .collect();
    for dir in &dirs {
        watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot watch {} for certificate changes: {e}",
                    dir.display()
                )
            })?;
    }
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    Ok(tokio::spawn(async move {
        let _watcher = watcher; // dropping it would stop the events
        let mut tick = tokio::time::interval(PERIODIC);
        tick.tick().await;
        loop {
            let trigger = tokio::select! {
                _ = changed.notified() => {
                    tokio::time::sleep(DEBOUNCE).await;
                    Trigger::FileChange
                }
                Some(_) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => Trigger::Sighup,
                _ = tick.tick() => Trigger::Periodic,
            };
            reload(&store, &files, &trust_domain, &metrics, trigger);
        }
    }))
}
