//! The node's own commands: what it is, its GPUs, its host, its labels and cordon, `system.run`.

use std::borrow::Cow;
use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use claw_attestation::{GpuDevice, HostInfo, NvmlStatus};

use crate::command::commands;
use crate::{Answer, CommandDescription, NoParams, Role};

commands! {
    /// `node.capabilities`.
    NodeCapabilities = "node.capabilities", Read, NoParams => Capabilities,
        "List the commands this node answers, with the role each needs and the JSON schema of its params";
    /// `node.health`.
    NodeHealth = "node.health", Read, NoParams => HealthReport,
        "healthy / degraded / unhealthy, with the reasons: NVML, Docker, disk, memory, GPU errors and throttling";
    /// `gpu.list`.
    GpuList = "gpu.list", Read, NoParams => GpuListing,
        "List GPUs from NVML (and simulated ones, marked), with NVML's status";
    /// `gpu.metrics`.
    GpuMetrics = "gpu.metrics", Read, GpuMetricsParams => GpuReadings,
        "Live GPU readings from NVML: utilisation, memory, temperature, power, clocks, throttle reasons, ECC and Xid errors, processes, and the workload holding each GPU";
    /// `system.info`.
    SystemInfo = "system.info", Read, NoParams => HostInfo,
        "Host facts: OS, kernel, CPU, memory, disk";
    /// `node.label`.
    NodeLabel = "node.label", Operate, LabelParams => Labels,
        "Set or remove node labels (announced to the fleet)";
    /// `node.cordon`.
    NodeCordon = "node.cordon", Operate, NoParams => Cordon,
        "Take no new workloads; running ones continue";
    /// `node.uncordon`.
    NodeUncordon = "node.uncordon", Operate, NoParams => Cordon,
        "Take new workloads again";
    /// `node.drain`.
    NodeDrain = "node.drain", Operate, NoParams => DrainReport,
        "Cordon the node and stop every workload gracefully, reporting each; workloads that cannot be stopped now (Docker unreachable) are stopped once they can";
    /// `gpu.cordon`.
    GpuCordon = "gpu.cordon", Operate, GpuRef => GpuCordonState,
        "Take one GPU out of scheduling: no new workload, replica or lease gets it; whoever holds it keeps it";
    /// `gpu.uncordon`.
    GpuUncordon = "gpu.uncordon", Operate, GpuRef => GpuCordonState,
        "Put a cordoned GPU back into scheduling";
    /// `system.run`.
    SystemRun = "system.run", Admin, SystemRunParams => SystemRunOutput,
        "Run an allowlisted program (argv, no shell) with a timeout and capped output";
}

/// `node.drain`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DrainReport {
    /// Always true: a drain cordons the node.
    pub cordoned: bool,
    /// Each workload that was active, and what stopping it did.
    pub workloads: Vec<DrainOutcome>,
    /// How many could not be stopped yet.
    pub pending: usize,
    /// What happens to those, when there are any.
    pub note: Option<String>,
}

/// One workload's outcome in a drain.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DrainOutcome {
    /// The workload id.
    pub workload: String,
    /// `stopped`, or the error.
    pub outcome: String,
}

/// `node.capabilities`' answer.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    /// Every command the node answers.
    pub commands: Cow<'static, [CommandDescription]>,
    /// The asking caller's role here.
    pub caller_role: Role,
}

/// `gpu.metrics`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GpuMetricsParams {
    /// Only this GPU (UUID).
    #[serde(default)]
    pub gpu: Option<String>,
}

/// `gpu.list`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GpuListing {
    /// Whether NVML answered, and if not, why.
    pub nvml: NvmlStatus,
    /// Real GPUs from NVML, then simulated ones (marked `simulated`).
    pub gpus: Vec<GpuDevice>,
    /// UUIDs of the GPUs taken out of scheduling (`gpu.cordon`).
    #[serde(default)]
    pub cordoned: Vec<String>,
}

/// Names one of the node's GPUs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GpuRef {
    /// The GPU's UUID, as `gpu.list` shows it.
    pub gpu: String,
}

/// `gpu.cordon`'s and `gpu.uncordon`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GpuCordonState {
    /// The GPU.
    pub gpu: String,
    /// Whether it is out of scheduling now.
    pub cordoned: bool,
    /// The workload or lease holding it, which keeps it.
    pub held_by: Option<String>,
}

impl Answer for GpuCordonState {}

/// `gpu.metrics`' answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GpuReadings {
    /// Whether NVML answered, and if not, why.
    pub nvml: NvmlStatus,
    /// One reading per GPU (or the one asked for).
    pub gpus: Vec<GpuReading>,
}

/// One GPU's live reading, and what holds the GPU: one JSON object with NVML's fields and
/// `workload`. Decoded by hand, since serde's `flatten` would let unknown fields through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct GpuReading {
    /// NVML's reading (none of it is guessed; simulated GPUs have no readings).
    #[serde(flatten)]
    pub metrics: claw_attestation::GpuMetrics,
    /// The workload holding it, or `lease:<id>` for a lease that reserved it; none when free.
    pub workload: Option<String>,
}

impl<'de> Deserialize<'de> for GpuReading {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let mut object = serde_json::Map::deserialize(deserializer)?;
        let workload = object
            .remove("workload")
            .ok_or_else(|| D::Error::missing_field("workload"))?;
        Ok(Self {
            workload: serde_json::from_value(workload).map_err(D::Error::custom)?,
            metrics: serde_json::from_value(serde_json::Value::Object(object))
                .map_err(D::Error::custom)?,
        })
    }
}

/// `node.label`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LabelParams {
    /// Labels to set (key → value).
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Label keys to remove.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// `node.label`'s answer: the node's labels now.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Labels {
    /// Key → value.
    pub labels: BTreeMap<String, String>,
}

/// `node.cordon` and `node.uncordon`'s answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Cordon {
    /// Whether the node takes no new workloads.
    pub cordoned: bool,
}

/// `system.run`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SystemRunParams {
    /// Absolute program path (on the node's allowlist) and its arguments.
    pub argv: Vec<String>,
    /// Seconds before the program is killed. Default and most: the node's `max_timeout_secs`.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

/// `system.run`'s answer: what the program did.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SystemRunOutput {
    /// Exit code; `None` when it was killed by a signal or the timeout.
    pub exit_code: Option<i32>,
    /// Standard output, lossily decoded, capped.
    pub stdout: String,
    /// Standard error, lossily decoded, capped.
    pub stderr: String,
    /// Whether either stream was cut at the cap.
    pub truncated: bool,
    /// Whether it was killed at the timeout.
    pub timed_out: bool,
}

/// How well a part is doing. Ordered from best to worst.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// Working.
    Healthy,
    /// Working, but with a problem worth attention.
    Degraded,
    /// Cannot do its job.
    Unhealthy,
}

impl std::fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Healthy => "healthy",
            Self::Degraded => "degraded",
            Self::Unhealthy => "unhealthy",
        })
    }
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// `nvml`, `docker`, `disk`, `memory` or `gpu:<uuid>`.
    pub component: String,
    /// Its status.
    pub status: HealthStatus,
    /// What was found.
    pub detail: String,
}

/// `node.health`'s answer: whether the node can do its job.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthReport {
    /// The worst status of any check.
    pub status: HealthStatus,
    /// The checks that are not healthy, with their reasons.
    pub reasons: Vec<HealthCheck>,
    /// Every check.
    pub checks: Vec<HealthCheck>,
    /// Whether the node is cordoned.
    pub cordoned: bool,
}

impl Answer for Capabilities {}
impl Answer for Labels {}
impl Answer for Cordon {}
impl Answer for SystemRunOutput {}
impl Answer for HealthReport {}
impl Answer for DrainReport {}
impl Answer for GpuListing {}
impl Answer for GpuReadings {}
impl Answer for HostInfo {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gpu_reading_is_the_metrics_and_its_holder_in_one_object() {
        let wire = serde_json::json!({
            "nvml": {"unavailable": {"reason": "no driver"}},
            "gpus": [{
                "uuid": "GPU-1", "index": 0, "model": "NVIDIA H100 80GB HBM3",
                "utilization_gpu_pct": null, "utilization_memory_pct": null,
                "memory_used_bytes": null, "memory_total_bytes": null, "temperature_c": null,
                "power_usage_mw": null, "power_limit_mw": null, "clocks": null,
                "throttle_reasons": [], "ecc": null, "xid_errors": null, "processes": [],
                "simulated": true, "workload": "lease:abc",
            }],
        });
        let readings: GpuReadings = serde_json::from_value(wire.clone()).expect("decodes");
        assert_eq!(readings.gpus[0].workload.as_deref(), Some("lease:abc"));
        assert!(readings.gpus[0].metrics.simulated);
        assert_eq!(serde_json::to_value(&readings).expect("encodes"), wire);
        let mut unknown = wire;
        unknown["gpus"][0]["fan_pct"] = serde_json::json!(40);
        assert!(
            serde_json::from_value::<GpuReadings>(unknown).is_err(),
            "a field neither side defines is refused"
        );
    }
}
