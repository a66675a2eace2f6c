//! A timer always due within [`FLOOR`], so that the connection timeouts (seconds long) never
//! make the runtime wake up early.
//!
//! tokio's timer driver wakes its thread (a write to an eventfd, and one more `epoll_wait`) when
//! a timer is armed that falls due before the earliest one it was already going to wake for. An
//! idle proxy has no timer due soon, so each new connection's first timeout (the stream's on the
//! client, the app connect's on the server) cost two system calls of about forty per connection
//! for the pair (bench/count.py, `--by-syscall`). With this floor, only timers shorter than it
//! (detection timeouts of a few hundred milliseconds) still do; the floor itself costs one
//! wakeup per [`FLOOR`].

use std::time::Duration;

/// Shorter than every connection timeout the proxy arms per connection (`timeouts.connect`,
/// `timeouts.handshake`: 5 and 10 s by default, and a second at the least that is sensible).
pub const FLOOR: Duration = Duration::from_secs(1);

/// Runs for the life of the runtime.
pub async fn keep() {
    let mut tick = tokio::time::interval(FLOOR);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
    }
}
