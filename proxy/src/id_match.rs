//! Who a policy rule admits: an exact SPIFFE ID, every ID under a path prefix, or anyone.

use meshlet_identity::SpiffeId;

/// One entry of a rule's `from`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum IdMatch {
    /// `*`: anyone, including unauthenticated callers (permissive mode).
    Anyone,
    Exact(SpiffeId),
    /// `spiffe://td/ns/x/*`: stored without the `*`, so it ends in `/` and matches whole segments.
    Prefix(String),
}

impl TryFrom<String> for IdMatch {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        Self::parse(&text)
    }
}

impl IdMatch {
    pub fn parse(text: &str) -> Result<Self, String> {
        if text == "*" {
            return Ok(IdMatch::Anyone);
        }
        if let Some(prefix) = text.strip_suffix("/*") {
            SpiffeId::parse(prefix).map_err(|e| format!("prefix {text:?}: {e}"))?;
            return Ok(IdMatch::Prefix(format!("{prefix}/")));
        }
        if text.contains('*') {
            return Err(format!("{text:?}: '*' is only allowed as a whole last segment (spiffe://td/ns/x/*) or alone"));
        }
        SpiffeId::parse(text)
            .map(IdMatch::Exact)
            .map_err(|e| e.to_string())
    }

    pub fn matches(&self, caller: Option<&SpiffeId>) -> bool {
        match (self, caller) {
            (IdMatch::Anyone, _) => true,
            (IdMatch::Exact(id), Some(c)) => id == c,
            (IdMatch::Prefix(p), Some(c)) => c.as_str().starts_with(p.as_str()),
            (_, None) => false,
        }
    }
}
