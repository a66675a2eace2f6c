//! Outbound routing: which destinations get mTLS, and what `auto` has learned about peers.

use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;
use meshlet_identity::SpiffeId;

use crate::config::{MtlsMode, OutboundConfig, PortSpec};
use crate::expiring::ExpiringMap;

/// How to reach one destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub mode: MtlsMode,
    /// The server must present one of these (only with `mtls`).
    pub identities: Option<Vec<SpiffeId>>,
}

struct Entry {
    net: IpNet,
    ports: Option<Vec<PortSpec>>,
    route: Route,
}

/// Bound on remembered fallbacks, so a scan of many addresses cannot grow memory without end.
const MAX_REMEMBERED: usize = 4096;

pub struct Routes {
    entries: Vec<Entry>,
    default: Route,
    fallback_ttl: Duration,
    /// Destinations found not to be meshlet proxies: until when, and under which identity
    /// generation (ours and our bundle's) the finding was made.
    plain_until: ExpiringMap<SocketAddr, u64>,
    /// Destinations that proved to be meshlet proxies.
    mesh_until: ExpiringMap<SocketAddr>,
}

/// How long a destination that proved to be a meshlet proxy is held to mTLS under `auto`.
const MESH_TTL: Duration = Duration::from_secs(3600);

impl Routes {
    /// Built from configuration that was parsed already: nothing here can fail.
    pub fn new(config: &OutboundConfig) -> Self {
        let entries = config
            .destinations
            .iter()
            .map(|d| Entry {
                net: d.cidr,
                ports: d.ports.clone(),
                route: Route {
                    mode: d.mtls,
                    identities: d.identities.clone(),
                },
            })
            .collect();
        Routes {
            entries,
            default: Route {
                mode: config.mtls,
                identities: None,
            },
            fallback_ttl: config.auto_fallback_ttl,
            plain_until: ExpiringMap::new(MAX_REMEMBERED),
            mesh_until: ExpiringMap::new(MAX_REMEMBERED),
        }
    }

    /// The first destination entry that matches, else the default.
    pub fn lookup(&self, dst: SocketAddr) -> &Route {
        self.entries
            .iter()
            .find(|e| {
                e.net.contains(&dst.ip())
                    && e.ports
                        .as_ref()
                        .is_none_or(|ps| ps.iter().any(|p| p.contains(dst.port())))
            })
            .map(|e| &e.route)
            .unwrap_or(&self.default)
    }

    /// Whether `auto` recently learned that `dst` is not a meshlet proxy. A finding made under
    /// another identity or bundle (`generation`) is forgotten: the failure may have been ours.
    pub fn known_plain(&self, dst: SocketAddr, generation: u64) -> bool {
        match self.plain_until.get(dst) {
            Some(made_in) if made_in == generation => true,
            Some(_) => {
                self.plain_until.remove(dst);
                false
            }
            None => false,
        }
    }

    pub fn remember_plain(&self, dst: SocketAddr, generation: u64) {
        self.plain_until.insert(dst, generation, self.fallback_ttl);
    }

    /// Whether `dst` recently proved to be a meshlet proxy.
    pub fn known_mesh(&self, dst: SocketAddr) -> bool {
        self.mesh_until.get(dst).is_some()
    }

    pub fn remember_mesh(&self, dst: SocketAddr) {
        self.mesh_until.insert(dst, (), MESH_TTL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn routes(yaml: &str) -> Routes {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), yaml).unwrap();
        Routes::new(&Config::load(Some(f.path()), &[]).unwrap().outbound)
    }

    #[test]
    fn the_first_matching_destination_wins_and_ports_narrow_it() {
        let r = routes(
            "outbound:\n  mtls: off\n  destinations:\n    - {cidr: 198.18.1.0/24, ports: [8080], mtls: mtls}\n    - {cidr: 198.18.0.0/15, mtls: auto}\n",
        );
        assert_eq!(
            r.lookup("198.18.1.5:8080".parse().unwrap()).mode,
            MtlsMode::Mtls
        );
        assert_eq!(
            r.lookup("198.18.1.5:9090".parse().unwrap()).mode,
            MtlsMode::Auto
        );
        assert_eq!(
            r.lookup("198.19.200.1:80".parse().unwrap()).mode,
            MtlsMode::Auto
        );
        assert_eq!(
            r.lookup("[2001:2::1]:80".parse().unwrap()).mode,
            MtlsMode::Off
        );
    }

    #[test]
    fn auto_fallbacks_are_remembered_per_destination_until_the_ttl() {
        let r = routes("outbound:\n  auto_fallback_ttl: 1s\n");
        let a: SocketAddr = "198.18.0.1:80".parse().unwrap();
        assert!(!r.known_plain(a, 1));
        r.remember_plain(a, 1);
        assert!(r.known_plain(a, 1));
        assert!(!r.known_plain("198.18.0.1:81".parse().unwrap(), 1));
        std::thread::sleep(Duration::from_millis(1100));
        assert!(!r.known_plain(a, 1));
    }

    #[test]
    fn a_fallback_is_forgotten_when_our_identity_or_bundle_changes() {
        let r = routes("");
        let a: SocketAddr = "198.18.0.1:80".parse().unwrap();
        r.remember_plain(a, 1);

        assert!(!r.known_plain(a, 2));
        assert!(!r.known_plain(a, 1), "forgotten, not merely hidden");
    }

    #[test]
    fn a_proven_meshlet_peer_is_remembered() {
        let r = routes("");
        let a: SocketAddr = "198.18.0.1:80".parse().unwrap();
        assert!(!r.known_mesh(a));
        r.remember_mesh(a);
        assert!(r.known_mesh(a));
    }
}
