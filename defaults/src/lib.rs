//! The contract that the capture rules (`meshlet init`), the proxy, the injector and the lab
//! must agree on, defined once: the defaults (uid, ports), the small forms they all write
//! values in (port ranges, durations), the proxy's configuration keys with their flags and
//! variables (`keys`), the values the injector writes for the proxy (`values`), and how the
//! sidecar asks `meshlet issuer` for its SVID (`issuer`). Each
//! default can be changed by flag or configuration; the two sides must then be given the
//! same values.
#![forbid(unsafe_code)]

pub mod issuer;
pub mod keys;
pub mod values;

pub use values::InboundMode;

/// The proxy's uid: its own connections are exempt from capture.
pub const PROXY_UID: u32 = 1337;
/// Where captured inbound connections are redirected.
pub const INBOUND_PORT: u16 = 15006;
/// Where captured outbound connections are redirected.
pub const OUTBOUND_PORT: u16 = 15001;
/// Admin and health (`/live`, `/ready`, `/metrics`); never captured.
pub const ADMIN_PORT: u16 = 15021;
/// `meshlet check` connects to this port on loopback: the capture rules redirect it to the
/// admin port, so an answer proves the rules are installed and run. Nothing listens on it.
pub const CHECK_PORT: u16 = 15022;

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

/// Written as it is parsed: `8080` or `8000-8100`.
impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
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

/// Parses `24h`, `30m`, `90s`, `7d` or plain seconds.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let (num, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 90s, 30m, 24h, 7d)"))?;
    let per = match unit {
        "" | "s" => 1u64,
        "ms" => return Ok(std::time::Duration::from_millis(n)),
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => {
            return Err(format!(
                "{text:?} has an unknown unit {unit:?} (use ms, s, m, h or d)"
            ))
        }
    };
    n.checked_mul(per)
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("{text:?} is too long a duration"))
}

/// Refuses YAML text whose flow collections (`[`, `{`) or block indentation nest deeper than
/// `max` levels, before a parser sees it: the YAML parser's time grows with the square of the
/// depth, so 100,000 `[` would hang it for seconds. Quoted strings and comments are skipped.
pub fn check_yaml_nesting(text: &str, max: usize) -> Result<(), String> {
    let too_deep = || format!("nested deeper than {max} levels; refused");
    let mut depth = 0usize;
    for line in text.lines() {
        let indent = line.len() - line.trim_start_matches([' ', '-']).len();
        if indent / 2 > max * 2 {
            return Err(too_deep());
        }
        let mut quote: Option<char> = None;
        let mut escaped = false;
        for c in line.chars() {
            if escaped {
                escaped = false;
                continue;
            }
            match (quote, c) {
                // In a double-quoted scalar a backslash escapes the next character.
                (Some('"'), '\\') => escaped = true,
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '\'' | '"') => quote = Some(c),
                (None, '#') => break,
                (None, '[' | '{') => {
                    depth += 1;
                    if depth > max {
                        return Err(too_deep());
                    }
                }
                (None, ']' | '}') => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
    }
    Ok(())
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

    #[test]
    fn durations_take_units_and_refuse_overflow() {
        assert_eq!(
            parse_duration("90s"),
            Ok(std::time::Duration::from_secs(90))
        );
        assert_eq!(
            parse_duration("2m"),
            Ok(std::time::Duration::from_secs(120))
        );
        assert_eq!(
            parse_duration("500ms"),
            Ok(std::time::Duration::from_millis(500))
        );
        assert_eq!(parse_duration("7"), Ok(std::time::Duration::from_secs(7)));
        assert!(parse_duration("999999999999999999d").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn nesting_counts_brackets_outside_strings_and_escaped_quotes_stay_inside() {
        assert!(check_yaml_nesting(&"[".repeat(40), 32).is_err());
        assert!(check_yaml_nesting(&format!("k: \"{}\"", "[".repeat(40)), 32).is_ok());
        let escaped = format!("k: \"a\\\"{}\"", "{".repeat(40));
        assert!(check_yaml_nesting(&escaped, 32).is_ok(), "{escaped}");
        assert!(check_yaml_nesting(&format!("k: '{}'", "{".repeat(40)), 32).is_ok());
    }
}
