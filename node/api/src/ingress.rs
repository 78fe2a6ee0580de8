//! Ingress: HTTP from outside the fleet to a service. A member configured with an HTTP listener
//! (`[ingress] listen`) serves the ingress rules that name it: a request whose `Host` and path
//! match a rule goes to the rule's service over the mesh (`crate::services`), and its answer comes
//! back; a request no rule matches is answered 404. An ingress rule is a fleet object
//! ([`crate::objects`]): signed by an operator, kept by every member.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Answer;
use crate::command::commands;
use crate::workload::SpecError;

/// Longest path prefix a rule names.
pub const MAX_PATH: usize = 256;
/// Longest host name a rule names.
pub const MAX_HOST: usize = 253;

fn invalid<T>(message: impl Into<String>) -> Result<T, SpecError> {
    Err(SpecError::Invalid(message.into()))
}

/// What an operator signs for an ingress rule.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IngressSpec {
    /// The member whose HTTP listener serves the rule: its peer id or name.
    pub node: String,
    /// The `Host` it matches, without a port (`web.example.com`), or `*` for any host.
    pub host: String,
    /// The path prefix it matches, from `/` (`/api` matches `/api` and `/api/...`).
    pub path: String,
    /// The service its requests go to (`service.create`).
    pub service: String,
}

impl IngressSpec {
    /// Checks its form.
    pub fn check(&self) -> Result<(), SpecError> {
        if self.node.is_empty() || self.node.len() > 64 {
            return invalid("node is a member's peer id or name, 1 to 64 characters");
        }
        let host_ok = self.host == "*"
            || (!self.host.is_empty()
                && self.host.len() <= MAX_HOST
                && self.host.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-'
                }));
        if !host_ok {
            return invalid(format!(
                "host is * or a lowercase host name of at most {MAX_HOST} characters (a-z, 0-9, '.', '-')"
            ));
        }
        let path_ok = self.path.starts_with('/')
            && self.path.len() <= MAX_PATH
            && self.path.bytes().all(|b| b.is_ascii_graphic());
        if !path_ok {
            return invalid(format!(
                "path starts with / and has at most {MAX_PATH} printable characters, no spaces"
            ));
        }
        crate::configs::check_name("service", &self.service)
    }

    /// How well the rule matches a request for `host` (lowercase, no port) and `path`: `None`
    /// when it does not; otherwise higher is better (an exact host beats `*`, then the longer
    /// prefix wins).
    pub fn matches(&self, host: &str, path: &str) -> Option<(bool, usize)> {
        let exact = self.host == host;
        if !exact && self.host != "*" {
            return None;
        }
        let prefix = self.path.trim_end_matches('/');
        let inside = path == prefix
            || path
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('/'));
        inside.then_some((exact, prefix.len()))
    }
}

/// `ingress.create`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IngressCreateParams {
    /// Its name: 1 to 32 of `a-z 0-9 -`.
    pub name: String,
    /// What it maps.
    pub spec: IngressSpec,
}

/// Commands that name one ingress rule.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IngressRef {
    /// The rule's name.
    pub name: String,
}

/// An ingress rule at its latest revision.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Ingress {
    /// Its name.
    pub name: String,
    /// Its revision.
    pub revision: u64,
    /// What it maps.
    pub spec: IngressSpec,
    /// The operator that signed this revision.
    pub signed_by: String,
    /// When it was signed, Unix ms.
    pub signed_at_ms: u64,
}

impl Answer for Ingress {}

/// `ingress.list`'s answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IngressListing {
    /// The fleet's ingress rules, by name.
    pub ingresses: Vec<Ingress>,
}

impl Answer for IngressListing {}

commands! {
    /// `ingress.create`.
    IngressCreate = "ingress.create", Operate, IngressCreateParams => Ingress,
        "Map a host and path prefix on one member's HTTP listener to a service";
    /// `ingress.list`.
    IngressList = "ingress.list", Read, crate::NoParams => IngressListing,
        "The fleet's ingress rules";
    /// `ingress.delete`.
    IngressDelete = "ingress.delete", Operate, IngressRef => crate::configs::Deleted,
        "Delete an ingress rule (its requests are answered 404 from then on)";
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(host: &str, path: &str) -> IngressSpec {
        IngressSpec {
            node: "edge".to_owned(),
            host: host.to_owned(),
            path: path.to_owned(),
            service: "web".to_owned(),
        }
    }

    #[test]
    fn an_exact_host_beats_any_and_the_longer_prefix_wins_on_segment_bounds() {
        let any = rule("*", "/");
        let api = rule("*", "/api/");
        let site = rule("web.example", "/");
        assert_eq!(any.matches("x", "/anything"), Some((false, 0)));
        assert_eq!(api.matches("x", "/api"), Some((false, 4)));
        assert_eq!(api.matches("x", "/api/v1"), Some((false, 4)));
        assert_eq!(api.matches("x", "/apix"), None);
        assert_eq!(site.matches("other", "/"), None);
        assert!(site.matches("web.example", "/") > any.matches("web.example", "/"));
        assert!(api.matches("x", "/api/v1") > any.matches("x", "/api/v1"));
    }

    #[test]
    fn malformed_rules_are_refused() {
        assert!(rule("*", "/").check().is_ok());
        for bad in [
            rule("Web.Example", "/"),
            rule("a b", "/"),
            rule("*", "api"),
            rule("*", "/a b"),
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }
}
