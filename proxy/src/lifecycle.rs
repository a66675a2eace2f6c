//! Readiness and shutdown, shared by the listeners, the pooled connections and the admin server.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

pub struct Lifecycle {
    ready: AtomicBool,
    shutdown: watch::Sender<bool>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            ready: AtomicBool::new(false),
            shutdown: watch::channel(false).0,
        }
    }
}

impl Lifecycle {
    /// Listeners bound and identity loaded (and not draining).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Asks the proxy to stop accepting and drain (SIGTERM, POST /shutdown).
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// A receiver that turns true when shutdown begins.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Resolves once shutdown has begun.
    pub async fn shutting_down(&self) {
        let _ = self.subscribe().wait_for(|s| *s).await;
    }
}
