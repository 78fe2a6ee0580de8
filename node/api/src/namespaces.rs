//! Namespaces: named shares of the fleet with quotas. A workload names its namespace
//! (`workload.run`'s `namespace`, and so a deployment's or job's template); the node admitting it
//! counts what the namespace holds across the fleet now (the GPUs, CPUs, memory and workloads of
//! the active workloads each member reports) and refuses a start that would pass a quota, with
//! the quota named. A namespace is a fleet object ([`crate::objects`]).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Answer;
use crate::command::commands;
use crate::workload::SpecError;

/// A namespace's limits; an absent one is unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    /// GPUs held at once.
    #[serde(default)]
    pub gpus: Option<u64>,
    /// CPU limit, in thousandths of a core, summed over its workloads (a workload without a
    /// CPU limit counts one core).
    #[serde(default)]
    pub cpu_millis: Option<u64>,
    /// Memory limit, MiB, summed (a workload without one counts 1024).
    #[serde(default)]
    pub memory_mib: Option<u64>,
    /// Active workloads.
    #[serde(default)]
    pub workloads: Option<u64>,
}

/// What an operator signs for a namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NamespaceSpec {
    /// Its quota.
    #[serde(default)]
    pub quota: Quota,
}

/// What a namespace holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Usage {
    /// GPUs.
    pub gpus: u64,
    /// CPU, thousandths of a core.
    pub cpu_millis: u64,
    /// Memory, MiB.
    pub memory_mib: u64,
    /// Active workloads.
    pub workloads: u64,
}

impl Answer for Usage {}

impl std::ops::Add for Usage {
    type Output = Self;
    fn add(self, other: Self) -> Self {
        Self {
            gpus: self.gpus.saturating_add(other.gpus),
            cpu_millis: self.cpu_millis.saturating_add(other.cpu_millis),
            memory_mib: self.memory_mib.saturating_add(other.memory_mib),
            workloads: self.workloads.saturating_add(other.workloads),
        }
    }
}

impl Usage {
    /// What one workload with these limits counts for.
    pub fn of_workload(gpus: u64, cpus: Option<f64>, memory_mib: Option<u64>) -> Self {
        Self {
            gpus,
            cpu_millis: cpus.map_or(1000, |c| (c * 1000.0).ceil() as u64),
            memory_mib: memory_mib.unwrap_or(1024),
            workloads: 1,
        }
    }
}

impl Quota {
    /// The first quota `usage` passes: `(quota, held, limit)`.
    pub fn exceeded(&self, usage: &Usage) -> Option<(&'static str, u64, u64)> {
        [
            ("gpus", usage.gpus, self.gpus),
            ("cpu_millis", usage.cpu_millis, self.cpu_millis),
            ("memory_mib", usage.memory_mib, self.memory_mib),
            ("workloads", usage.workloads, self.workloads),
        ]
        .into_iter()
        .find_map(|(name, held, limit)| limit.filter(|l| held > *l).map(|l| (name, held, l)))
    }
}

impl NamespaceSpec {
    /// Checks its form.
    pub fn check(&self) -> Result<(), SpecError> {
        Ok(())
    }
}

/// `namespace.create`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NamespaceCreateParams {
    /// Its name: 1 to 32 of `a-z 0-9 -`.
    pub name: String,
    /// Its quota.
    pub spec: NamespaceSpec,
}

/// Commands that name one namespace.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NamespaceRef {
    /// The namespace.
    pub name: String,
}

/// A namespace at its latest revision.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Namespace {
    /// Its name.
    pub name: String,
    /// Its revision.
    pub revision: u64,
    /// Its quota.
    pub spec: NamespaceSpec,
}

impl Answer for Namespace {}

/// `namespace.list`'s answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NamespaceListing {
    /// The fleet's namespaces.
    pub namespaces: Vec<Namespace>,
}

impl Answer for NamespaceListing {}

commands! {
    /// `namespace.create`.
    NamespaceCreate = "namespace.create", Operate, NamespaceCreateParams => Namespace,
        "Create a namespace with GPU, CPU, memory and workload quotas, enforced when a workload in it starts";
    /// `namespace.list`.
    NamespaceList = "namespace.list", Read, crate::NoParams => NamespaceListing,
        "The fleet's namespaces and their quotas";
    /// `namespace.delete`.
    NamespaceDelete = "namespace.delete", Operate, NamespaceRef => crate::configs::Deleted,
        "Delete a namespace (its running workloads go on; new ones in it are refused)";
    /// `namespace.usage`.
    NamespaceUsage = "namespace.usage", Read, NamespaceRef => Usage,
        "What a namespace's active workloads on this node hold";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_quota_passed_is_named() {
        let quota = Quota {
            gpus: Some(2),
            workloads: Some(3),
            ..Quota::default()
        };
        let held = Usage::of_workload(2, None, None) + Usage::of_workload(1, Some(0.5), Some(10));
        assert_eq!(quota.exceeded(&held), Some(("gpus", 3, 2)));
        assert_eq!(held.cpu_millis, 1500);
        assert_eq!(quota.exceeded(&Usage::of_workload(2, None, None)), None);
    }
}
