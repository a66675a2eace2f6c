//! Admission rule: the inbound side delivers only to the pod it serves.
//!
//! Checked for every inbound connection whose destination the kernel reports, and for every
//! stream a pooled connection opens. See `local_addrs` for why the destination cannot be
//! trusted as it comes.

use std::net::SocketAddr;

use crate::local_addrs::LocalAddrs;

/// Why a destination is not one the inbound side may dial.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotOnThisPod {
    #[error("{0} is not an address of this pod")]
    ForeignAddress(SocketAddr),
    #[error("{0} is a port of the proxy itself")]
    ProxyPort(SocketAddr),
}

impl NotOnThisPod {
    pub fn reason(&self) -> &'static str {
        match self {
            NotOnThisPod::ForeignAddress(_) => "foreign_target",
            NotOnThisPod::ProxyPort(_) => "loop",
        }
    }
}

/// The ports the inbound side never dials: its own, the outbound listener's and the admin's.
#[derive(Debug, Clone, Copy)]
pub struct ProxyPorts {
    pub inbound: u16,
    pub outbound: u16,
    pub admin: u16,
}

impl ProxyPorts {
    fn contains(&self, port: u16) -> bool {
        port == self.inbound || port == self.outbound || port == self.admin
    }
}

pub fn check(
    local: &LocalAddrs,
    ports: &ProxyPorts,
    dst: SocketAddr,
) -> Result<SocketAddr, NotOnThisPod> {
    if ports.contains(dst.port()) {
        return Err(NotOnThisPod::ProxyPort(dst));
    }
    if !local.contains(dst.ip()) {
        return Err(NotOnThisPod::ForeignAddress(dst));
    }
    Ok(dst)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PORTS: ProxyPorts = ProxyPorts {
        inbound: 15006,
        outbound: 15001,
        admin: 15021,
    };

    #[test]
    fn an_address_that_is_not_the_pods_own_is_refused() {
        let dst: SocketAddr = "198.51.100.9:8080".parse().unwrap();
        assert_eq!(
            check(&LocalAddrs::default(), &PORTS, dst),
            Err(NotOnThisPod::ForeignAddress(dst))
        );
    }

    #[test]
    fn loopback_is_refused_even_on_an_app_port() {
        let dst: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(
            check(&LocalAddrs::default(), &PORTS, dst)
                .unwrap_err()
                .reason(),
            "foreign_target"
        );
    }

    #[test]
    fn proxy_and_admin_ports_are_refused() {
        for port in [15006, 15001, 15021] {
            let dst = SocketAddr::from(([198, 51, 100, 9], port));
            assert_eq!(
                check(&LocalAddrs::default(), &PORTS, dst),
                Err(NotOnThisPod::ProxyPort(dst))
            );
        }
    }
}
