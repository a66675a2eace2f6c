//! Following files that change under us: the kubelet swaps a `..data` symlink in the files'
//! directory, other tools rewrite files in place. A callback runs after their directories
//! change (changes within a short while read as one), on SIGHUP, and periodically (a safety
//! net for filesystems that report nothing, which also lets a caller notice time passing).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::Notify;

use crate::rotation::Trigger;

/// Changes closer together than this are read as one (a Secret update touches several files).
const DEBOUNCE: Duration = Duration::from_millis(250);
/// Called even without events.
pub const PERIODIC: Duration = Duration::from_secs(30);

/// Calls `changed` whenever `files` may have changed, until the process ends. Fails only when
/// no watch can be set up on one of their directories.
pub fn watch<F>(files: &[&Path], mut changed: F) -> Result<tokio::task::JoinHandle<()>, String>
where
    F: FnMut(Trigger) + Send + 'static,
{
    let events = Arc::new(Notify::new());
    let notify_events = events.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(e) = event {
            if !e.kind.is_access() {
                notify_events.notify_one();
            }
        }
    })
    .map_err(|e| format!("cannot watch files: {e}"))?;
    let dirs: BTreeSet<PathBuf> = files.iter().map(|p| directory_of(p)).collect();
    for dir in &dirs {
        watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(|e| format!("cannot watch {} for changes: {e}", dir.display()))?;
    }
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    Ok(tokio::spawn(async move {
        let _watcher = watcher; // dropping it would stop the events
        let mut tick = tokio::time::interval(PERIODIC);
        tick.tick().await;
        loop {
            let trigger = tokio::select! {
                _ = events.notified() => {
                    tokio::time::sleep(DEBOUNCE).await;
                    Trigger::FileChange
                }
                Some(_) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => Trigger::Sighup,
                _ = tick.tick() => Trigger::Periodic,
            };
            changed(trigger);
        }
    }))
}

fn directory_of(file: &Path) -> PathBuf {
    match file.parent() {
        Some(d) if d.as_os_str().is_empty() => PathBuf::from("."),
        Some(d) => d.to_owned(),
        None => PathBuf::from("/"),
    }
}
