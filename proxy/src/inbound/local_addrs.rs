//! The addresses of this pod: the only places the inbound side may deliver a caller's bytes.
//!
//! A caller controls the destination the kernel reports for its connection (a route through
//! this pod is enough) and the address a pooled stream names. The inbound proxy dials the app
//! with its own uid, outside capture, and passes the caller's identity along: were it to dial
//! whatever it is told, it would lend the pod's network position and identity to anyone. So it
//! dials only an address assigned to one of the pod's interfaces, never loopback (no caller
//! reaches the pod's loopback through the network), and never a proxy or admin port.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use tracing::warn;

/// Interface addresses are re-read at most this often, and only when an unknown one is asked
/// about: a caller naming foreign addresses in a loop costs one system call per interval.
const REFRESH_EVERY: Duration = Duration::from_secs(1);

pub struct LocalAddrs {
    state: RwLock<State>,
}

struct State {
    addrs: HashSet<IpAddr>,
    read_at: Option<Instant>,
}

impl Default for LocalAddrs {
    fn default() -> Self {
        LocalAddrs {
            state: RwLock::new(State {
                addrs: HashSet::new(),
                read_at: None,
            }),
        }
    }
}

impl LocalAddrs {
    /// Whether `ip` is assigned to one of this network namespace's interfaces (loopback
    /// addresses excluded).
    pub fn contains(&self, ip: IpAddr) -> bool {
        if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() {
            return false;
        }
        if let Ok(state) = self.state.read() {
            if state.addrs.contains(&ip) {
                return true;
            }
            if state.read_at.is_some_and(|t| t.elapsed() < REFRESH_EVERY) {
                return false;
            }
        }
        let Ok(mut state) = self.state.write() else {
            return false;
        };
        if state.read_at.is_none_or(|t| t.elapsed() >= REFRESH_EVERY) {
            match interface_addrs() {
                Ok(addrs) => state.addrs = addrs,
                Err(e) => warn!(error = %e, "cannot read this pod's interface addresses"),
            }
            state.read_at = Some(Instant::now());
        }
        state.addrs.contains(&ip)
    }
}

fn interface_addrs() -> nix::Result<HashSet<IpAddr>> {
    Ok(nix::ifaddrs::getifaddrs()?
        .filter_map(|ifa| ifa.address)
        .filter_map(|a| {
            if let Some(v4) = a.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .filter(|ip| !ip.is_loopback())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_unassigned_addresses_are_not_local() {
        let local = LocalAddrs::default();
        assert!(!local.contains("127.0.0.1".parse().unwrap()));
        assert!(!local.contains("::1".parse().unwrap()));
        assert!(!local.contains("0.0.0.0".parse().unwrap()));
        // TEST-NET-2 (RFC 5737) is never assigned on a test machine.
        assert!(!local.contains("198.51.100.77".parse().unwrap()));
    }

    #[test]
    fn an_address_of_an_interface_is_local() {
        let Some(ip) = interface_addrs().unwrap().into_iter().next() else {
            eprintln!("no non-loopback interface address here; nothing to check");
            return;
        };
        assert!(LocalAddrs::default().contains(ip));
    }
}
