//! An attacking pod that holds as many idle TCP connections to an address as it can, and
//! reopens each one the server closes. It runs in a thread of the test process that has entered
//! the pod's network namespace; dropping the handle stops it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::Pod;

pub struct Flood {
    stop: Arc<AtomicBool>,
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Starts holding `n` connections from `pod` to `to`.
pub fn start(pod: &Pod, to: SocketAddr, n: usize) -> Flood {
    let stop = Arc::new(AtomicBool::new(false));
    let running = stop.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    super::in_pod(pod, move || async move {
        for i in 0..n {
            let running = running.clone();
            tokio::spawn(async move {
                while !running.load(Ordering::Relaxed) {
                    if let Ok(mut s) = tokio::net::TcpStream::connect(to).await {
                        let mut buf = [0u8; 64];
                        // Held until the server closes it.
                        let _ = tokio::io::AsyncReadExt::read(&mut s, &mut buf).await;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            });
            if i + 1 == n {
                let _ = ready_tx.send(());
            }
        }
        while !running.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let _ = ready_rx.recv();
    // Let the connections open.
    std::thread::sleep(Duration::from_millis(500));
    Flood { stop }
}
