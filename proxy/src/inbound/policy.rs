//! Authorization: who may call which port, and on HTTP ports which requests.
//!
//! A connection or request is allowed when any rule allows it. Without a policy, any SVID of
//! our trust domain may call any port (and, in permissive mode, unauthenticated callers pass).

use meshlet_identity::SpiffeId;

use crate::config::RuleConfig;
use crate::reason::{Denied, Reason};
use crate::refusal::Refusal;

/// What a connection may do once admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Bytes are copied as they are.
    Tcp,
    /// Every request is checked with [`Policy::check_request`].
    Http,
}

/// Why something was refused: the reason and a sentence for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    pub reason: Denied,
    pub detail: String,
}

impl From<Denial> for Refusal {
    fn from(d: Denial) -> Self {
        Refusal::new(Reason::Policy(d.reason), d.detail)
    }
}

#[derive(Clone, Debug)]
pub struct Policy {
    trust_domain: String,
    /// Parsed by the configuration already: nothing here can fail.
    rules: Option<Vec<RuleConfig>>,
}

fn caller_name(caller: Option<&SpiffeId>) -> &str {
    caller
        .map(SpiffeId::as_str)
        .unwrap_or("an unauthenticated caller")
}

impl Policy {
    pub fn new(trust_domain: &str, rules: Option<&[RuleConfig]>) -> Self {
        Policy {
            trust_domain: trust_domain.to_owned(),
            rules: rules.map(<[RuleConfig]>::to_vec),
        }
    }

    fn caller_matches(&self, rule: &RuleConfig, caller: Option<&SpiffeId>) -> bool {
        match &rule.from {
            None => caller.is_some_and(|c| c.trust_domain() == self.trust_domain),
            Some(list) => list.iter().any(|m| m.matches(caller)),
        }
    }

    /// Decides on a new connection to `port` from `caller` (`None`: not authenticated).
    pub fn check_connection(&self, caller: Option<&SpiffeId>, port: u16) -> Result<Access, Denial> {
        let Some(rules) = &self.rules else {
            return match caller {
                Some(c) if c.trust_domain() != self.trust_domain => Err(Denial {
                    reason: Denied::ForeignTrustDomain,
                    detail: format!(
                        "{c} is not of trust domain {} and no policy admits it",
                        self.trust_domain
                    ),
                }),
                _ => Ok(Access::Tcp),
            };
        };
        let on_port = || {
            rules
                .iter()
                .filter(|r| r.ports.iter().any(|p| p.contains(port)))
        };
        if !on_port().any(|r| self.caller_matches(r, caller)) {
            return Err(Denial {
                reason: Denied::NoMatchingRule,
                detail: format!(
                    "no policy rule lets {} call port {port}",
                    caller_name(caller)
                ),
            });
        }
        Ok(if on_port().any(|r| r.http.is_some()) {
            Access::Http
        } else {
            Access::Tcp
        })
    }

    /// Whether `caller` may call any port of this pod at all: a pooled connection from a
    /// caller that may call none carries nothing but refusals (see `pooled_server`).
    pub fn grants_anything(&self, caller: &SpiffeId) -> bool {
        match &self.rules {
            None => caller.trust_domain() == self.trust_domain,
            Some(rules) => rules.iter().any(|r| self.caller_matches(r, Some(caller))),
        }
    }

    /// Decides on one HTTP request; `path` must already be normalized (see `http_path`).
    pub fn check_request(
        &self,
        caller: Option<&SpiffeId>,
        port: u16,
        method: &str,
        path: &str,
    ) -> Result<(), Denial> {
        let allowed = self.rules.iter().flatten().any(|r| {
            r.ports.iter().any(|p| p.contains(port))
                && self.caller_matches(r, caller)
                && match &r.http {
                    None => true,
                    Some(hs) => hs.iter().any(|h| {
                        h.methods
                            .as_ref()
                            .is_none_or(|ms| ms.iter().any(|m| m.as_str() == method))
                            && h.paths
                                .as_ref()
                                .is_none_or(|ps| ps.iter().any(|p| p.matches(path)))
                    }),
                }
        });
        if allowed || self.rules.is_none() {
            Ok(())
        } else {
            Err(Denial {
                reason: Denied::HttpRule,
                detail: format!(
                    "no policy rule lets {} {method} {path} on port {port}",
                    caller_name(caller)
                ),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }

    fn policy(yaml: &str) -> Policy {
        let rules: Vec<RuleConfig> = serde_norway::from_str(yaml).unwrap();
        Policy::new("cluster.local", Some(&rules))
    }

    #[test]
    fn without_a_policy_any_svid_of_the_trust_domain_may_call() {
        let p = Policy::new("cluster.local", None);
        assert_eq!(
            p.check_connection(Some(&id("spiffe://cluster.local/a")), 80),
            Ok(Access::Tcp)
        );
        assert!(p
            .check_connection(Some(&id("spiffe://other.example/a")), 80)
            .is_err());
    }

    #[test]
    fn exact_and_prefix_identities_match_whole_segments() {
        let p = policy("- ports: [8080]\n  from: [spiffe://cluster.local/ns/default/sa/worker, \"spiffe://cluster.local/ns/team/*\"]\n");
        assert!(p
            .check_connection(
                Some(&id("spiffe://cluster.local/ns/default/sa/worker")),
                8080
            )
            .is_ok());
        assert!(p
            .check_connection(Some(&id("spiffe://cluster.local/ns/team/sa/x")), 8080)
            .is_ok());
        assert!(p
            .check_connection(Some(&id("spiffe://cluster.local/ns/teamster/sa/x")), 8080)
            .is_err());
        assert!(p
            .check_connection(
                Some(&id("spiffe://cluster.local/ns/default/sa/worker2")),
                8080
            )
            .is_err());
        assert!(p
            .check_connection(
                Some(&id("spiffe://cluster.local/ns/default/sa/worker")),
                9090
            )
            .is_err());
        assert!(p.check_connection(None, 8080).is_err());
    }

    #[test]
    fn a_caller_no_rule_names_is_granted_nothing_whatever_the_port() {
        let p = policy("- ports: [8080]\n  from: [spiffe://cluster.local/ns/default/sa/worker]\n- ports: [9090]\n  from: [\"spiffe://cluster.local/ns/team/*\"]\n");

        assert!(p.grants_anything(&id("spiffe://cluster.local/ns/default/sa/worker")));
        assert!(p.grants_anything(&id("spiffe://cluster.local/ns/team/sa/x")));
        assert!(!p.grants_anything(&id("spiffe://cluster.local/ns/default/sa/other")));
        let none = Policy::new("cluster.local", None);
        assert!(none.grants_anything(&id("spiffe://cluster.local/ns/default/sa/other")));
        assert!(!none.grants_anything(&id("spiffe://other.example/ns/default/sa/other")));
    }

    #[test]
    fn star_admits_unauthenticated_callers() {
        let p = policy("- ports: [\"8000-8100\"]\n  from: [\"*\"]\n");
        assert!(p.check_connection(None, 8050).is_ok());
        assert!(p.check_connection(None, 8101).is_err());
    }

    #[test]
    fn http_rules_make_the_port_http_and_check_each_request() {
        let p = policy("- ports: [8080]\n  from: [spiffe://cluster.local/ns/default/sa/worker]\n  http:\n    - methods: [GET]\n      paths: [/headers]\n");
        let w = id("spiffe://cluster.local/ns/default/sa/worker");
        assert_eq!(p.check_connection(Some(&w), 8080), Ok(Access::Http));
        assert!(p.check_request(Some(&w), 8080, "GET", "/headers").is_ok());
        assert!(p
            .check_request(Some(&w), 8080, "GET", "/headers-1")
            .is_err());
        assert!(p.check_request(Some(&w), 8080, "POST", "/headers").is_err());
        assert!(p
            .check_request(
                Some(&id("spiffe://cluster.local/ns/default/sa/other")),
                8080,
                "GET",
                "/headers"
            )
            .is_err());
    }
}
