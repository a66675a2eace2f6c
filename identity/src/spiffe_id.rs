//! SPIFFE IDs (`spiffe://trust-domain/path`) as the SPIFFE ID specification defines them.

use std::fmt;
use std::str::FromStr;

/// A syntactically valid SPIFFE ID.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    text: String,
    td_end: usize,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{id:?} is not a valid SPIFFE ID: {why}")]
pub struct SpiffeIdError {
    pub id: String,
    pub why: &'static str,
}

const PREFIX: &str = "spiffe://";
const MAX_LEN: usize = 2048;

impl SpiffeId {
    pub fn parse(text: &str) -> Result<Self, SpiffeIdError> {
        let err = |why| SpiffeIdError {
            id: text.to_owned(),
            why,
        };
        if text.len() > MAX_LEN {
            return Err(err("longer than 2048 bytes"));
        }
        let rest = text
            .strip_prefix(PREFIX)
            .ok_or_else(|| err("it must start with spiffe:// (lower case)"))?;
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if td.is_empty() {
            return Err(err("the trust domain is empty"));
        }
        if !td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
        {
            return Err(err(
                "the trust domain may only hold lower-case letters, digits, '-', '.' and '_' (no port, user or upper case)",
            ));
        }
        if !path.is_empty() {
            for segment in path[1..].split('/') {
                match segment {
                    "" => return Err(err("the path has an empty segment or a trailing '/'")),
                    "." | ".." => return Err(err("the path has a '.' or '..' segment")),
                    s if !s
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)) =>
                    {
                        return Err(err(
                            "the path may only hold letters, digits, '-', '.', '_' and '/' (no query, fragment or percent-encoding)",
                        ))
                    }
                    _ => {}
                }
            }
        }
        Ok(SpiffeId {
            text: text.to_owned(),
            td_end: PREFIX.len() + td.len(),
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.text[PREFIX.len()..self.td_end]
    }

    pub fn path(&self) -> &str {
        &self.text[self.td_end..]
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Checks a trust domain name on its own (as given by `--trust-domain` or `trust_domain:`).
pub fn validate_trust_domain(td: &str) -> Result<(), SpiffeIdError> {
    if td.contains('/') {
        return Err(SpiffeIdError {
            id: td.to_owned(),
            why: "a trust domain has no '/' (give the name only, e.g. cluster.local)",
        });
    }
    SpiffeId::parse(&format!("{PREFIX}{td}"))
        .map(|_| ())
        .map_err(|e| SpiffeIdError {
            id: td.to_owned(),
            why: e.why,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_ids_parse_into_trust_domain_and_path() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/echo").unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.path(), "/ns/default/sa/echo");
        assert_eq!(SpiffeId::parse("spiffe://td").unwrap().path(), "");
    }

    #[test]
    fn malformed_ids_are_refused_with_a_reason() {
        for bad in [
            "http://cluster.local/x",
            "SPIFFE://cluster.local/x",
            "spiffe:///x",
            "spiffe://Cluster.local/x",
            "spiffe://cluster.local:8080/x",
            "spiffe://user@cluster.local/x",
            "spiffe://cluster.local/",
            "spiffe://cluster.local/a//b",
            "spiffe://cluster.local/a/../b",
            "spiffe://cluster.local/a/./b",
            "spiffe://cluster.local/a?b",
            "spiffe://cluster.local/a#b",
            "spiffe://cluster.local/a%2Fb",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad} was accepted");
        }
        assert!(validate_trust_domain("cluster.local").is_ok());
        assert!(validate_trust_domain("bad/td").is_err());
    }
}
