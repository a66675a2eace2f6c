//! Admission rule: a connection addressed to one of the proxy's own listeners is a loop (a
//! misconfigured capture rule, or a caller trying to reach the proxy through itself).

use std::net::SocketAddr;

use crate::refusal::Refusal;

/// Outbound: an app connection whose original destination is our outbound listener on
/// loopback or the wildcard address would be redirected to us forever.
pub fn outbound(dst: SocketAddr, outbound_port: u16) -> Result<(), Refusal> {
    if dst.port() == outbound_port && (dst.ip().is_loopback() || dst.ip().is_unspecified()) {
        return Err(Refusal::new("loop", "connection to the outbound port itself").at(dst));
    }
    Ok(())
}

/// Inbound with a fixed destination (no capture rules): it must not be a proxy port. With
/// captured traffic, `on_this_pod` covers this together with the address.
pub fn inbound_fixed(dst: SocketAddr, proxy_ports: &[u16]) -> Result<(), Refusal> {
    if proxy_ports.contains(&dst.port()) {
        return Err(Refusal::new("loop", "destination is a port of the proxy itself").at(dst));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outbound_port_on_loopback_is_a_loop_but_on_another_host_is_not() {
        assert_eq!(
            outbound("127.0.0.1:15001".parse().unwrap(), 15001)
                .unwrap_err()
                .reason,
            "loop"
        );
        assert!(outbound("0.0.0.0:15001".parse().unwrap(), 15001).is_err());
        assert!(outbound("198.18.0.2:15001".parse().unwrap(), 15001).is_ok());
        assert!(outbound("127.0.0.1:8080".parse().unwrap(), 15001).is_ok());
    }

    #[test]
    fn a_fixed_inbound_destination_on_a_proxy_port_is_a_loop() {
        assert!(inbound_fixed("127.0.0.1:15006".parse().unwrap(), &[15006, 15001]).is_err());
        assert!(inbound_fixed("127.0.0.1:8080".parse().unwrap(), &[15006, 15001]).is_ok());
    }
}
