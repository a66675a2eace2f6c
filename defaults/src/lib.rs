//! The defaults that the capture rules (`meshlet init`), the proxy, the injector and the lab must
//! agree on, defined once. Each can be changed by flag or configuration; the two sides must then
//! be given the same values.
#![forbid(unsafe_code)]

/// The proxy's uid: its own connections are exempt from capture.
pub const PROXY_UID: u32 = 1337;
/// Where captured inbound connections are redirected.
pub const INBOUND_PORT: u16 = 15006;
/// Where captured outbound connections are redirected.
pub const OUTBOUND_PORT: u16 = 15001;
/// Admin and health (`/live`, `/ready`, `/metrics`); never captured.
pub const ADMIN_PORT: u16 = 15021;

/// A port or an inclusive range of ports, written `8080` or `8000-8100`: the form the capture
/// flags and the proxy's configuration share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn single(port: u16) -> Self {
        PortRange {
            first: port,
            last: port,
        }
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl std::str::FromStr for PortRange {
    type Err = String;

    /// Ports are 1-65535; a range is not reversed.
    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || {
            format!("{text:?} is not a port or port range (ports are 1-65535, ranges look like 8000-8100)")
        };
        let port = |s: &str| {
            s.trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(bad)
        };
        let range = match text.split_once('-') {
            Some((a, b)) => PortRange {
                first: port(a)?,
                last: port(b)?,
            },
            None => PortRange::single(port(text)?),
        };
        if range.first > range.last {
            return Err(format!(
                "range {text:?} is reversed (first port above last)"
            ));
        }
        Ok(range)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_ranges_parse_and_nonsense_does_not() {
        assert_eq!("8080".parse(), Ok(PortRange::single(8080)));
        assert_eq!(
            " 8000-8100".parse(),
            Ok(PortRange {
                first: 8000,
                last: 8100
            })
        );
        for bad in ["0", "65536", "9-8", "x", "1-", ""] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad}");
        }
        assert!(PortRange { first: 1, last: 3 }.contains(3));
    }
}
