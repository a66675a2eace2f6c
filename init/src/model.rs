//! What to capture: the parsed, validated form of `meshlet init`'s flags.

use ipnet::IpNet;

pub use meshlet_defaults::PortRange;

/// How many of multiport's 15 slots an entry takes (a range takes two).
pub(crate) fn multiport_weight(range: &PortRange) -> usize {
    if range.first == range.last {
        1
    } else {
        2
    }
}

/// A port range as iptables writes it (`8000:8100`).
pub(crate) fn iptables_ports(range: &PortRange) -> String {
    if range.first == range.last {
        range.first.to_string()
    } else {
        format!("{}:{}", range.first, range.last)
    }
}

/// Ports to capture: all of them (`*`) or a list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortSelection {
    All,
    List(Vec<PortRange>),
}

/// Destinations to capture: all of them (`*`) or a list of CIDRs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CidrSelection {
    All,
    List(Vec<IpNet>),
}

/// Everything the capture rules depend on. The defaults are the README's (`meshlet init`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaptureConfig {
    pub proxy_uid: u32,
    pub proxy_gid: Option<u32>,
    pub inbound_port: u16,
    pub outbound_port: u16,
    pub admin_port: u16,
    pub include_inbound_ports: PortSelection,
    pub exclude_inbound_ports: Vec<PortRange>,
    pub include_outbound_cidrs: CidrSelection,
    pub exclude_outbound_cidrs: Vec<IpNet>,
    pub exclude_outbound_ports: Vec<PortRange>,
    pub include_outbound_ports: PortSelection,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            proxy_uid: meshlet_defaults::PROXY_UID,
            proxy_gid: None,
            inbound_port: meshlet_defaults::INBOUND_PORT,
            outbound_port: meshlet_defaults::OUTBOUND_PORT,
            admin_port: meshlet_defaults::ADMIN_PORT,
            include_inbound_ports: PortSelection::All,
            exclude_inbound_ports: Vec::new(),
            include_outbound_cidrs: CidrSelection::All,
            exclude_outbound_cidrs: Vec::new(),
            exclude_outbound_ports: Vec::new(),
            include_outbound_ports: PortSelection::All,
        }
    }
}

/// A flag value that could not be understood; the message names the value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct ParseError(pub String);

/// Parses `P,P-Q,...`. An empty string is an empty list. Ranges are inclusive.
pub fn parse_ports(flag: &str, value: &str) -> Result<Vec<PortRange>, ParseError> {
    let mut out = Vec::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        out.push(
            item.parse::<PortRange>()
                .map_err(|why| ParseError(format!("{flag}: {why}")))?,
        );
    }
    Ok(out)
}

/// Parses `*` or `P,P-Q,...`.
pub fn parse_port_selection(flag: &str, value: &str) -> Result<PortSelection, ParseError> {
    if value.trim() == "*" {
        Ok(PortSelection::All)
    } else {
        parse_ports(flag, value).map(PortSelection::List)
    }
}

/// Parses `CIDR,CIDR,...`; a bare address is taken as a host route (/32 or /128).
pub fn parse_cidrs(flag: &str, value: &str) -> Result<Vec<IpNet>, ParseError> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| {
            item.parse::<IpNet>()
                .or_else(|_| item.parse::<std::net::IpAddr>().map(IpNet::from))
                .map(|net| net.trunc())
                .map_err(|_| {
                    ParseError(format!(
                        "{flag}: {item:?} is not a CIDR (expected e.g. 198.18.0.0/15 or 2001:2::/48)"
                    ))
                })
        })
        .collect()
}

/// Parses `*` or `CIDR,...`.
pub fn parse_cidr_selection(flag: &str, value: &str) -> Result<CidrSelection, ParseError> {
    if value.trim() == "*" {
        Ok(CidrSelection::All)
    } else {
        parse_cidrs(flag, value).map(CidrSelection::List)
    }
}

impl CaptureConfig {
    /// The `meshlet init` flags that give this configuration: only the values that differ
    /// from the defaults, in the order of `--help`. The inverse of the parsers above.
    pub fn to_flags(&self) -> Vec<String> {
        fn join<T: std::fmt::Display>(items: &[T]) -> String {
            items.iter().map(T::to_string).collect::<Vec<_>>().join(",")
        }
        let ports = |p: &PortSelection| match p {
            PortSelection::All => "*".to_owned(),
            PortSelection::List(l) => join(l),
        };
        let cidrs = |c: &CidrSelection| match c {
            CidrSelection::All => "*".to_owned(),
            CidrSelection::List(l) => join(l),
        };
        let d = CaptureConfig::default();
        let mut flags = Vec::new();
        let mut flag = |name: &str, value: String, default: String| {
            if value != default {
                flags.push(format!("--{name}"));
                flags.push(value);
            }
        };
        flag(
            "proxy-uid",
            self.proxy_uid.to_string(),
            d.proxy_uid.to_string(),
        );
        if let Some(gid) = self.proxy_gid {
            flag("proxy-gid", gid.to_string(), String::new());
        }
        flag(
            "inbound-port",
            self.inbound_port.to_string(),
            d.inbound_port.to_string(),
        );
        flag(
            "outbound-port",
            self.outbound_port.to_string(),
            d.outbound_port.to_string(),
        );
        flag(
            "admin-port",
            self.admin_port.to_string(),
            d.admin_port.to_string(),
        );
        let star = || "*".to_owned();
        flag(
            "include-inbound-ports",
            ports(&self.include_inbound_ports),
            star(),
        );
        flag(
            "exclude-inbound-ports",
            join(&self.exclude_inbound_ports),
            String::new(),
        );
        flag(
            "include-outbound-cidrs",
            cidrs(&self.include_outbound_cidrs),
            star(),
        );
        flag(
            "exclude-outbound-cidrs",
            join(&self.exclude_outbound_cidrs),
            String::new(),
        );
        flag(
            "exclude-outbound-ports",
            join(&self.exclude_outbound_ports),
            String::new(),
        );
        flag(
            "include-outbound-ports",
            ports(&self.include_outbound_ports),
            star(),
        );
        flags
    }

    /// Refuses combinations that would capture the proxy's own traffic or make no sense.
    pub fn validate(&self) -> Result<(), ParseError> {
        let ports = [
            ("--inbound-port", self.inbound_port),
            ("--outbound-port", self.outbound_port),
            ("--admin-port", self.admin_port),
        ];
        for (name, port) in ports {
            if port == 0 {
                return Err(ParseError(format!("{name}: 0 is not a port")));
            }
        }
        if self.inbound_port == self.outbound_port {
            return Err(ParseError(format!(
                "--inbound-port and --outbound-port are both {}: they must differ",
                self.inbound_port
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn flags_are_rendered_back_only_where_they_differ_from_the_defaults() {
        assert!(CaptureConfig::default().to_flags().is_empty());
        let cfg = CaptureConfig {
            include_inbound_ports: PortSelection::List(vec![]),
            exclude_outbound_ports: parse_ports("x", "53, 9000-9100").unwrap(),
            exclude_outbound_cidrs: parse_cidrs("x", "198.19.0.1").unwrap(),
            ..CaptureConfig::default()
        };
        assert_eq!(
            cfg.to_flags(),
            [
                "--include-inbound-ports",
                "",
                "--exclude-outbound-cidrs",
                "198.19.0.1/32",
                "--exclude-outbound-ports",
                "53,9000-9100"
            ]
        );
    }

    use super::*;

    #[test]
    fn ports_accept_singles_and_ranges() {
        let got = parse_ports("--x", "80, 8000-8100,443").unwrap();
        assert_eq!(
            got,
            vec![
                PortRange::single(80),
                PortRange {
                    first: 8000,
                    last: 8100
                },
                PortRange::single(443)
            ]
        );
    }

    #[test]
    fn a_bad_port_is_named_in_the_error() {
        let err = parse_ports("--exclude-inbound-ports", "80,70000").unwrap_err();
        assert!(err.0.contains("\"70000\""), "{err}");
        assert!(err.0.contains("--exclude-inbound-ports"), "{err}");
        assert!(parse_ports("--x", "0").is_err());
        assert!(parse_ports("--x", "abc").is_err());
        assert!(parse_ports("--x", "90-80")
            .unwrap_err()
            .0
            .contains("reversed"));
    }

    #[test]
    fn empty_port_list_is_empty() {
        assert_eq!(parse_ports("--x", "").unwrap(), vec![]);
        assert_eq!(
            parse_port_selection("--x", "*").unwrap(),
            PortSelection::All
        );
    }

    #[test]
    fn cidrs_are_parsed_and_truncated() {
        let got = parse_cidrs("--x", "198.18.5.1/16,2001:2::1").unwrap();
        assert_eq!(got[0].to_string(), "198.18.0.0/16");
        assert_eq!(got[1].to_string(), "2001:2::1/128");
        let err = parse_cidrs("--exclude-outbound-cidrs", "198.18.0.0/33").unwrap_err();
        assert!(err.0.contains("198.18.0.0/33"), "{err}");
    }

    #[test]
    fn equal_proxy_ports_are_refused() {
        let cfg = CaptureConfig {
            outbound_port: 15006,
            ..CaptureConfig::default()
        };
        assert!(cfg.validate().is_err());
    }
}
