//! Who may run a command: three roles, each including the one before.

/// What a caller may do. Ordered: a higher role may do everything a lower one may.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Inspect: GPUs, health, workload lists and stats.
    Read,
    /// Run, stop and exec into workloads; label, cordon and drain the node.
    Operate,
    /// Everything, including `system.run`.
    Admin,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Read => "read",
            Self::Operate => "operate",
            Self::Admin => "admin",
        })
    }
}
