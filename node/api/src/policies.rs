//! Policies: rules every node enforces when it admits a workload, whoever asks (`workload.run`,
//! a deployment's replica, a job's pod, a lease's container), and that a deployment or job is
//! checked against when it is created. A policy is a fleet object ([`crate::objects`]): signed
//! by an operator, kept by every member. Every rule of every policy applies; a refusal names the
//! policy and the rule.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Answer;
use crate::command::commands;
use crate::workload::{GpuRequest, RunParams, SpecError};

/// Most patterns one rule lists.
const MAX_PATTERNS: usize = 64;

/// Which workloads a policy governs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PolicyScope {
    /// Every workload. The default.
    #[default]
    All,
    /// The fleet's own workloads (not leases).
    Fleet,
    /// Leased workloads (strangers' containers) only.
    Leases,
}

/// What an operator signs for a policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// Which workloads it governs.
    #[serde(default)]
    pub scope: PolicyScope,
    /// Images allowed: when any is given, an image must match one. `*` matches any run of
    /// characters, e.g. `registry.example/team/*`.
    #[serde(default)]
    pub images_allow: Vec<String>,
    /// Images refused, even when allowed above.
    #[serde(default)]
    pub images_deny: Vec<String>,
    /// The most GPUs one workload takes.
    #[serde(default)]
    pub max_gpus: Option<u32>,
    /// Label keys every workload must carry.
    #[serde(default)]
    pub required_labels: Vec<String>,
    /// Host directories workloads may mount from (each host path must lie under one); when
    /// none is given, any the node's own roots allow.
    #[serde(default)]
    pub volume_roots: Vec<String>,
}

/// What a workload asks, as a policy reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The fleet's own (an operator's, a deployment's, a job's).
    Fleet,
    /// A lease's.
    Lease,
}

/// `*` globbing: `*` matches any run of characters, everything else itself.
fn matches(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let [first, middle @ .., last] = parts.as_slice() else {
        return pattern == text;
    };
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

fn under(path: &str, root: &str) -> bool {
    let root = root.trim_end_matches('/');
    path == root
        || path
            .strip_prefix(root)
            .is_some_and(|rest| rest.starts_with('/'))
}

impl PolicySpec {
    /// Checks its form.
    pub fn check(&self) -> Result<(), SpecError> {
        let lists = [
            &self.images_allow,
            &self.images_deny,
            &self.required_labels,
            &self.volume_roots,
        ];
        if lists
            .iter()
            .any(|l| l.len() > MAX_PATTERNS || l.iter().any(|p| p.is_empty() || p.len() > 256))
        {
            return Err(SpecError::Invalid(format!(
                "each rule lists at most {MAX_PATTERNS} entries of 1 to 256 bytes"
            )));
        }
        if self.volume_roots.iter().any(|r| !r.starts_with('/')) {
            return Err(SpecError::Invalid(
                "volume_roots are absolute paths".to_owned(),
            ));
        }
        Ok(())
    }

    /// The first rule `params` (from `origin`) breaks: `(rule, why)`.
    pub fn violation(&self, params: &RunParams, origin: Origin) -> Option<(&'static str, String)> {
        let governed = match self.scope {
            PolicyScope::All => true,
            PolicyScope::Fleet => origin == Origin::Fleet,
            PolicyScope::Leases => origin == Origin::Lease,
        };
        if !governed {
            return None;
        }
        let image = &params.image;
        if !self.images_allow.is_empty() && !self.images_allow.iter().any(|p| matches(p, image)) {
            return Some((
                "images_allow",
                format!("image {image:?} matches no allowed pattern"),
            ));
        }
        if let Some(pattern) = self.images_deny.iter().find(|p| matches(p, image)) {
            return Some((
                "images_deny",
                format!("image {image:?} matches {pattern:?}"),
            ));
        }
        if let Some(max) = self.max_gpus {
            let asked = match params.check() {
                Ok(GpuRequest::Count(n)) => n,
                Ok(GpuRequest::Uuids(uuids)) => u32::try_from(uuids.len()).unwrap_or(u32::MAX),
                _ => 0,
            };
            if asked > max {
                return Some(("max_gpus", format!("{asked} GPUs asked, at most {max}")));
            }
        }
        if let Some(key) = self
            .required_labels
            .iter()
            .find(|k| !params.labels.contains_key(*k))
        {
            return Some(("required_labels", format!("label {key:?} is missing")));
        }
        if !self.volume_roots.is_empty()
            && let Some(volume) = params
                .volumes
                .iter()
                .find(|v| !self.volume_roots.iter().any(|r| under(&v.host, r)))
        {
            return Some((
                "volume_roots",
                format!("host path {:?} is under no allowed root", volume.host),
            ));
        }
        None
    }
}

/// `policy.create`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyCreateParams {
    /// Its name: 1 to 32 of `a-z 0-9 -`.
    pub name: String,
    /// Its rules.
    pub spec: PolicySpec,
}

/// Commands that name one policy.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyRef {
    /// The policy's name.
    pub name: String,
}

/// A policy at its latest revision.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Its name.
    pub name: String,
    /// Its revision.
    pub revision: u64,
    /// Its rules.
    pub spec: PolicySpec,
    /// The operator that signed it.
    pub signed_by: String,
    /// When, Unix ms.
    pub signed_at_ms: u64,
}

impl Answer for Policy {}

/// `policy.list`'s answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyListing {
    /// The fleet's policies, by name.
    pub policies: Vec<Policy>,
}

impl Answer for PolicyListing {}

/// `policy.validate`: would this workload be admitted?
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidateParams {
    /// The workload, as `workload.run` takes it.
    pub workload: RunParams,
    /// Judge it as a lease's workload. Default false.
    #[serde(default)]
    pub lease: bool,
}

/// One broken rule.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Violation {
    /// The policy.
    pub policy: String,
    /// The rule.
    pub rule: String,
    /// Why.
    pub reason: String,
}

/// `policy.validate`'s answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Verdict {
    /// Whether every policy admits it.
    pub allowed: bool,
    /// Each policy's first broken rule.
    pub violations: Vec<Violation>,
}

impl Answer for Verdict {}

commands! {
    /// `policy.create`.
    PolicyCreate = "policy.create", Operate, PolicyCreateParams => Policy,
        "Create a policy: image allow and deny patterns, max GPUs per workload, required labels, allowed volume roots; every node enforces it at admission";
    /// `policy.list`.
    PolicyList = "policy.list", Read, crate::NoParams => PolicyListing,
        "The fleet's policies";
    /// `policy.delete`.
    PolicyDelete = "policy.delete", Operate, PolicyRef => crate::configs::Deleted,
        "Delete a policy";
    /// `policy.validate`.
    PolicyValidate = "policy.validate", Read, ValidateParams => Verdict,
        "Whether the fleet's policies admit a workload, and which rules it breaks, without running it";
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(json: serde_json::Value) -> RunParams {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn each_rule_names_itself_and_scope_picks_the_workloads() {
        let policy = PolicySpec {
            images_allow: vec!["registry.example/*".into()],
            images_deny: vec!["*:latest".into()],
            max_gpus: Some(2),
            required_labels: vec!["team".into()],
            volume_roots: vec!["/data".into()],
            ..PolicySpec::default()
        };
        let ok = run(
            serde_json::json!({"image": "registry.example/a:1", "gpus": 2,
            "labels": {"team": "x"}, "volumes": [{"host": "/data/a", "container": "/a"}]}),
        );
        assert_eq!(policy.violation(&ok, Origin::Fleet), None);
        let rule = |json| {
            policy
                .violation(&run(json), Origin::Fleet)
                .map(|(rule, _)| rule)
        };
        assert_eq!(
            rule(serde_json::json!({"image": "other/a:1", "labels": {"team": "x"}})),
            Some("images_allow")
        );
        assert_eq!(
            rule(
                serde_json::json!({"image": "registry.example/a:latest", "labels": {"team": "x"}})
            ),
            Some("images_deny")
        );
        assert_eq!(
            rule(
                serde_json::json!({"image": "registry.example/a:1", "gpus": 3, "labels": {"team": "x"}})
            ),
            Some("max_gpus")
        );
        assert_eq!(
            rule(serde_json::json!({"image": "registry.example/a:1"})),
            Some("required_labels")
        );
        assert_eq!(
            rule(
                serde_json::json!({"image": "registry.example/a:1", "labels": {"team": "x"},
            "volumes": [{"host": "/database", "container": "/a"}]})
            ),
            Some("volume_roots")
        );
        let leases_only = PolicySpec {
            scope: PolicyScope::Leases,
            images_deny: vec!["*".into()],
            ..PolicySpec::default()
        };
        assert!(leases_only.violation(&ok, Origin::Fleet).is_none());
        assert!(leases_only.violation(&ok, Origin::Lease).is_some());
        assert!(matches("a*b*c", "a-b-c") && !matches("a*b", "a-c") && matches("x", "x"));
    }
}
