//! Admission rule: the inbound side delivers only to the pod it serves, never to one of the
//! proxy's own ports.
//!
//! Checked for every inbound connection and for every stream a pooled connection opens: a
//! [`PodDst`] is made only here, and [`super::deliver`] takes nothing else. See `local_addrs`
//! for why a destination the kernel reports cannot be trusted as it comes.

use std::net::SocketAddr;

use super::local_addrs::LocalAddrs;
use crate::orig_dst::OriginalDst;
use crate::reason::Reason;
use crate::refusal::Refusal;

/// A destination that passed the rule: an app port of this pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodDst(SocketAddr);

impl PodDst {
    pub fn addr(self) -> SocketAddr {
        self.0
    }
}

/// Why a destination is not one the inbound side may dial.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotOnThisPod {
    #[error("{0} is not an address of this pod")]
    ForeignAddress(SocketAddr),
    #[error("{0} is a port of the proxy itself")]
    ProxyPort(SocketAddr),
}

impl NotOnThisPod {
    pub fn reason(&self) -> Reason {
        match self {
            NotOnThisPod::ForeignAddress(_) => Reason::ForeignTarget,
            NotOnThisPod::ProxyPort(_) => Reason::Loop,
        }
    }
}

impl From<NotOnThisPod> for Refusal {
    fn from(e: NotOnThisPod) -> Self {
        let dst = match e {
            NotOnThisPod::ForeignAddress(dst) | NotOnThisPod::ProxyPort(dst) => dst,
        };
        Refusal::new(e.reason(), e.to_string()).at(dst)
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

/// Where a caller that `named` a destination may be delivered. With captured traffic the
/// destination is the caller's and must be this pod's; a fixed destination is the operator's
/// (no capture rules), and must still not be a port of the proxy.
pub fn admit(
    local: &LocalAddrs,
    ports: &ProxyPorts,
    mode: OriginalDst,
    named: SocketAddr,
) -> Result<PodDst, NotOnThisPod> {
    match mode {
        OriginalDst::Kernel => check(local, ports, named),
        OriginalDst::Fixed(dst) if ports.contains(dst.port()) => Err(NotOnThisPod::ProxyPort(dst)),
        OriginalDst::Fixed(dst) => Ok(PodDst(dst)),
    }
}

fn check(local: &LocalAddrs, ports: &ProxyPorts, dst: SocketAddr) -> Result<PodDst, NotOnThisPod> {
    if ports.contains(dst.port()) {
        return Err(NotOnThisPod::ProxyPort(dst));
    }
    if !local.contains(dst.ip()) {
        return Err(NotOnThisPod::ForeignAddress(dst));
    }
    Ok(PodDst(dst))
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
            Reason::ForeignTarget
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

    #[test]
    fn a_fixed_destination_is_taken_as_it_is_but_never_on_a_proxy_port() {
        let app: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let local = LocalAddrs::default();
        assert_eq!(
            admit(
                &local,
                &PORTS,
                OriginalDst::Fixed(app),
                "198.51.100.9:1".parse().unwrap()
            ),
            Ok(PodDst(app))
        );
        for port in [15006, 15001, 15021] {
            let fixed = SocketAddr::from(([127, 0, 0, 1], port));
            assert_eq!(
                admit(&local, &PORTS, OriginalDst::Fixed(fixed), app),
                Err(NotOnThisPod::ProxyPort(fixed))
            );
        }
    }
}
