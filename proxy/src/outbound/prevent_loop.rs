//! Admission rule: an app connection addressed to the proxy's own outbound listener is a loop
//! (a misconfigured capture rule). The inbound side's rule is `inbound::destination`.

use std::net::SocketAddr;

use crate::reason::Reason;
use crate::refusal::Refusal;

/// Outbound: an app connection whose original destination is our outbound listener on
/// loopback or the wildcard address would be redirected to us forever.
pub fn outbound(dst: SocketAddr, outbound_port: u16) -> Result<(), Refusal> {
    if dst.port() == outbound_port && (dst.ip().is_loopback() || dst.ip().is_unspecified()) {
        return Err(Refusal::new(Reason::Loop, "connection to the outbound port itself").at(dst));
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
            Reason::Loop
        );
        assert!(outbound("0.0.0.0:15001".parse().unwrap(), 15001).is_err());
        assert!(outbound("198.18.0.2:15001".parse().unwrap(), 15001).is_ok());
        assert!(outbound("127.0.0.1:8080".parse().unwrap(), 15001).is_ok());
    }
}
