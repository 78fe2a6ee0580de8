//! Taints: marks an operator puts on a node that keep work away from it unless the work
//! tolerates them. `NoSchedule` keeps new replicas and pods off; `PreferNoSchedule` uses the
//! node only while no other can take them; `NoExecute` also evicts the node's workloads that do
//! not tolerate it (leases excepted: a lease's container runs its term). A node announces its
//! taints to the fleet, as `key[=value]:Effect`, and the controllers place by them. Also here:
//! `system.which`, which programs the node has.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Answer;
use crate::command::commands;
use crate::workload::{SpecError, is_simple_name};

/// Most taints one node carries.
pub const MAX_TAINTS: usize = 32;
/// Most programs one `system.which` asks about.
const MAX_PROGRAMS: usize = 32;

/// What a taint does to work that does not tolerate it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize, JsonSchema,
)]
pub enum TaintEffect {
    /// No new replicas or pods are placed here.
    NoSchedule,
    /// Placed here only while no other node can take them.
    PreferNoSchedule,
    /// As `NoSchedule`, and the node's workloads that do not tolerate it are stopped.
    NoExecute,
}

impl TaintEffect {
    fn as_str(self) -> &'static str {
        match self {
            Self::NoSchedule => "NoSchedule",
            Self::PreferNoSchedule => "PreferNoSchedule",
            Self::NoExecute => "NoExecute",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        [Self::NoSchedule, Self::PreferNoSchedule, Self::NoExecute]
            .into_iter()
            .find(|e| e.as_str() == text)
    }
}

/// A taint on a node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Taint {
    /// Its key: 1 to 63 of `a-z 0-9 -`.
    pub key: String,
    /// An optional value (at most 63 bytes, no `:` or `=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// What it does.
    pub effect: TaintEffect,
}

impl Taint {
    /// Checks its form.
    pub fn check(&self) -> Result<(), SpecError> {
        let value_ok = self
            .value
            .as_ref()
            .is_none_or(|v| v.len() <= 63 && !v.contains([':', '=']) && !v.is_empty());
        if !is_simple_name(&self.key, 63) || !value_ok {
            return Err(SpecError::Invalid(
                "a taint's key is 1 to 63 of a-z, 0-9 and '-'; its value at most 63 bytes \
                 without ':' or '='"
                    .to_owned(),
            ));
        }
        Ok(())
    }

    /// As announced: `key[=value]:Effect`.
    pub fn to_text(&self) -> String {
        match &self.value {
            Some(value) => format!("{}={value}:{}", self.key, self.effect.as_str()),
            None => format!("{}:{}", self.key, self.effect.as_str()),
        }
    }

    /// Reads an announced taint; `None` when it is not one.
    pub fn parse(text: &str) -> Option<Self> {
        let (head, effect) = text.rsplit_once(':')?;
        let (key, value) = match head.split_once('=') {
            Some((key, value)) => (key, Some(value.to_owned())),
            None => (head, None),
        };
        let taint = Self {
            key: key.to_owned(),
            value,
            effect: TaintEffect::parse(effect)?,
        };
        taint.check().ok().map(|()| taint)
    }
}

/// Work's leave to run on nodes with a taint.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Toleration {
    /// The taint's key.
    pub key: String,
    /// Only taints with this effect; any effect when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<TaintEffect>,
}

/// Whether `tolerations` tolerate `taint`.
pub fn tolerated(taint: &Taint, tolerations: &[Toleration]) -> bool {
    tolerations
        .iter()
        .any(|t| t.key == taint.key && t.effect.is_none_or(|e| e == taint.effect))
}

/// Checks a list of tolerations.
pub fn check_tolerations(tolerations: &[Toleration]) -> Result<(), SpecError> {
    if tolerations.len() > MAX_TAINTS || tolerations.iter().any(|t| !is_simple_name(&t.key, 63)) {
        return Err(SpecError::Invalid(format!(
            "at most {MAX_TAINTS} tolerations, keys 1 to 63 of a-z, 0-9 and '-'"
        )));
    }
    Ok(())
}

/// `node.taint`: add a taint (one with the same key and effect is replaced).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaintParams {
    /// The taint.
    #[serde(flatten)]
    pub taint: Taint,
}

/// `node.untaint`: remove taints by key (and effect, when given).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UntaintParams {
    /// The key.
    pub key: String,
    /// Only this effect.
    #[serde(default)]
    pub effect: Option<TaintEffect>,
}

/// The node's taints now, and what a `NoExecute` taint evicted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeTaints {
    /// Its taints.
    pub taints: Vec<Taint>,
    /// Workloads stopped because they do not tolerate a `NoExecute` taint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub evicted: Vec<String>,
}

impl Answer for NodeTaints {}

/// `system.which`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WhichParams {
    /// Program names (no `/`), 1 to 32 of them.
    pub programs: Vec<String>,
}

impl WhichParams {
    /// Checks the names.
    pub fn check(&self) -> Result<(), SpecError> {
        let bad = |p: &String| {
            p.is_empty()
                || p.len() > 64
                || p.contains('/')
                || p.starts_with('.')
                || p.bytes().any(|b| b.is_ascii_control() || b == b' ')
        };
        if self.programs.is_empty()
            || self.programs.len() > MAX_PROGRAMS
            || self.programs.iter().any(bad)
        {
            return Err(SpecError::Invalid(format!(
                "programs: 1 to {MAX_PROGRAMS} names of at most 64 bytes, without '/'"
            )));
        }
        Ok(())
    }
}

/// `system.which`'s answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Which {
    /// Each program asked about → where it is on the node's `PATH`, or `null`.
    pub found: BTreeMap<String, Option<String>>,
}

impl Answer for Which {}

commands! {
    /// `node.taint`.
    NodeTaint = "node.taint", Operate, TaintParams => NodeTaints,
        "Taint the node (NoSchedule, PreferNoSchedule, NoExecute): work that does not tolerate it is kept off, and NoExecute evicts it";
    /// `node.untaint`.
    NodeUntaint = "node.untaint", Operate, UntaintParams => NodeTaints,
        "Remove the node's taints with a key (and effect)";
    /// `system.which`.
    SystemWhich = "system.which", Read, WhichParams => Which,
        "Which of a list of programs exist on the node, and where";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taints_read_back_as_announced_and_tolerations_match_key_and_effect() {
        let taint = Taint {
            key: "gpu-maint".into(),
            value: Some("fw".into()),
            effect: TaintEffect::NoExecute,
        };
        assert_eq!(taint.to_text(), "gpu-maint=fw:NoExecute");
        assert_eq!(Taint::parse(&taint.to_text()), Some(taint.clone()));
        assert_eq!(Taint::parse("k:Sometimes"), None);
        assert_eq!(Taint::parse("Bad:NoSchedule"), None);
        let any = Toleration {
            key: "gpu-maint".into(),
            effect: None,
        };
        let other = Toleration {
            key: "gpu-maint".into(),
            effect: Some(TaintEffect::NoSchedule),
        };
        assert!(tolerated(&taint, &[any]));
        assert!(!tolerated(&taint, &[other]));
        assert!(
            WhichParams {
                programs: vec!["../bin/sh".into()]
            }
            .check()
            .is_err()
        );
    }
}
