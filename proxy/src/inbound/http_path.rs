//! Path normalization and matching for HTTP policy, so that a forbidden path cannot be reached
//! through an allowed prefix with encodings, dot segments or duplicate slashes.

/// An exact path, or a prefix when written with a trailing `*`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
}

impl TryFrom<String> for PathMatch {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        Self::parse(&text)
    }
}

impl PathMatch {
    pub fn parse(text: &str) -> Result<Self, String> {
        if !text.starts_with('/') {
            return Err(format!("{text:?} does not start with '/'"));
        }
        if text[..text.len() - usize::from(text.ends_with('*'))].contains('*') {
            return Err(format!(
                "{text:?}: '*' is only allowed at the end (prefix match)"
            ));
        }
        match text.strip_suffix('*') {
            Some(prefix) => Ok(PathMatch::Prefix(prefix.to_owned())),
            None => Ok(PathMatch::Exact(text.to_owned())),
        }
    }

    /// `path` must be the output of [`normalize`].
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
        }
    }
}

/// Why a path was refused outright.
#[derive(Debug, PartialEq, Eq)]
pub struct Unsafe(pub &'static str);

/// A request path as policy sees it and as the app receives it.
#[derive(Debug, PartialEq, Eq)]
pub struct Normalized {
    /// Decoded and normalized: what policy rules are matched against.
    pub path: String,
    /// The same path re-encoded for the request line: every byte other than an unreserved
    /// character, a sub-delimiter, `:`, `@` or `/` is percent-encoded, so the app reads exactly
    /// the path that was matched (an encoded `?` stays encoded, it does not become a query).
    pub wire: String,
}

/// Decodes and normalizes the path part of a request target (query and fragment removed):
/// percent-decoding, `.` and `..` resolution, duplicate slashes merged.
///
/// Refused, because they cannot be normalized without guessing how the app will read them:
/// encoded `/` or `\`, NUL or control characters, invalid encodings, and an encoded `%`
/// (`%25`): a path that still holds a percent sign after one decoding was encoded twice, and an
/// app that decodes it again would see a path policy never saw (the class of Envoy's
/// CVE-2021-39156).
pub fn normalize(target: &str) -> Result<Normalized, Unsafe> {
    let path = target.split(['?', '#']).next().unwrap_or("");
    if !path.starts_with('/') {
        return Err(Unsafe("the path does not start with '/'"));
    }
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = |c: u8| (c as char).to_digit(16);
            let (Some(h), Some(l)) = (
                bytes.get(i + 1).and_then(|c| hex(*c)),
                bytes.get(i + 2).and_then(|c| hex(*c)),
            ) else {
                return Err(Unsafe("invalid percent-encoding"));
            };
            let c = (h * 16 + l) as u8;
            if c == b'/' || c == b'\\' {
                return Err(Unsafe("encoded slash or backslash"));
            }
            if c < 0x20 || c == 0x7f {
                return Err(Unsafe("encoded control character"));
            }
            if c == b'%' {
                return Err(Unsafe("encoded percent sign (double encoding)"));
            }
            decoded.push(c);
            i += 3;
        } else {
            if b == b'\\' {
                return Err(Unsafe("backslash in path"));
            }
            if b < 0x20 || b == 0x7f {
                return Err(Unsafe("control character in path"));
            }
            decoded.push(b);
            i += 1;
        }
    }
    let decoded =
        String::from_utf8(decoded).map_err(|_| Unsafe("path is not UTF-8 once decoded"))?;
    let mut segments: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    if out.is_empty() || (trailing && !segments.is_empty()) {
        out.push('/');
    }
    let wire = encode(&out);
    Ok(Normalized { path: out, wire })
}

/// Percent-encodes every byte that may not appear as itself in a path (RFC 3986 `pchar` and
/// `/`), and `%` itself.
fn encode(path: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(path.len());
    for &b in path.as_bytes() {
        let keep = b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&b);
        if keep {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 15) as usize] as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normalize(target: &str) -> Result<String, Unsafe> {
        super::normalize(target).map(|n| n.path)
    }

    fn wire(target: &str) -> String {
        super::normalize(target).unwrap().wire
    }

    #[test]
    fn plain_paths_stay_as_they_are() {
        assert_eq!(normalize("/headers").unwrap(), "/headers");
        assert_eq!(normalize("/").unwrap(), "/");
        assert_eq!(normalize("/a/b/").unwrap(), "/a/b/");
    }

    #[test]
    fn query_and_fragment_are_not_part_of_the_path() {
        assert_eq!(normalize("/headers?x=/admin").unwrap(), "/headers");
        assert_eq!(normalize("/headers#/admin").unwrap(), "/headers");
        assert_eq!(normalize("/admin%3Fx=1").unwrap(), "/admin?x=1");
        assert_eq!(
            wire("/admin%3Fx=1"),
            "/admin%3Fx=1",
            "still a path for the app"
        );
    }

    #[test]
    fn double_encoding_is_refused() {
        assert!(normalize("/public/%252e%252e/admin").is_err());
        assert!(normalize("/public/..%252fadmin").is_err());
        assert!(normalize("/100%25").is_err());
    }

    #[test]
    fn the_app_receives_the_matched_path_encoded_for_a_request_line() {
        assert_eq!(wire("/head%65rs"), "/headers");
        assert_eq!(wire("/a%20b/%C3%A9"), "/a%20b/%C3%A9");
        assert_eq!(wire("/public/%2e%2e/admin"), "/admin");
        assert_eq!(wire("/a:b@c;d=e"), "/a:b@c;d=e");
    }

    #[test]
    fn dot_segments_and_double_slashes_are_resolved() {
        assert_eq!(normalize("/public/../admin").unwrap(), "/admin");
        assert_eq!(normalize("/public/./x").unwrap(), "/public/x");
        assert_eq!(normalize("//admin").unwrap(), "/admin");
        assert_eq!(normalize("/public//..//admin").unwrap(), "/admin");
        assert_eq!(normalize("/../../admin").unwrap(), "/admin");
    }

    #[test]
    fn encoded_dots_are_decoded_before_resolving() {
        assert_eq!(normalize("/public/%2e%2e/admin").unwrap(), "/admin");
        assert_eq!(normalize("/public/%2E./admin").unwrap(), "/admin");
        assert_eq!(normalize("/head%65rs").unwrap(), "/headers");
    }

    #[test]
    fn what_cannot_be_normalized_safely_is_refused() {
        assert!(normalize("/public%2f..%2fadmin").is_err());
        assert!(normalize("/public%5c..%5cadmin").is_err());
        assert!(normalize("/a\\b").is_err());
        assert!(normalize("/a%00b").is_err());
        assert!(normalize("/a%zz").is_err());
        assert!(normalize("/a%2").is_err());
        assert!(normalize("*").is_err());
        assert!(normalize("http://x/a").is_err());
    }

    #[test]
    fn an_allowed_prefix_does_not_reach_a_forbidden_path() {
        let allowed = PathMatch::parse("/public/*").unwrap();
        for trick in [
            "/public/../admin",
            "/public/%2e%2e/admin",
            "/public/..%2fadmin",
            "//public/../admin",
            "/public/%252e%252e/admin",
            "/public/..%252fadmin",
        ] {
            if let Ok(p) = normalize(trick) {
                assert!(!allowed.matches(&p), "{trick} -> {p} matched");
            }
        }
        let exact = PathMatch::parse("/headers").unwrap();
        assert!(!exact.matches(&normalize("/headers-1").unwrap()));
        assert!(!exact.matches(&normalize("/headers/").unwrap()));
        assert!(exact.matches(&normalize("/headers?a=b").unwrap()));
    }
}
