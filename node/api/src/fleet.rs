//! The gateway bridge's fleet commands: one call for the whole fleet, not one per node. The
//! bridge also forwards some market commands to its market node; those are the node's own
//! definitions (see [`crate::BRIDGE_COMMANDS`]).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::command::commands;
use crate::node::{DrainReport, HealthReport, HealthStatus};
use crate::workload::Workload;
use crate::{Answer, CommandDescription, InvokeFailure, NoParams};

commands! {
    /// `fleet.capabilities`.
    FleetCapabilities = "fleet.capabilities", Read, NoParams => BridgeCapabilities,
        "The bridge's commands with the JSON schema of their params";
    /// `fleet.status`.
    FleetStatus = "fleet.status", Read, NoParams => FleetOverview,
        "Nodes, GPUs by model (total, allocated, free, simulated), cordons and alerts, from the mesh view: no fan-out";
    /// `fleet.gpus`.
    FleetGpus = "fleet.gpus", Read, GpusParams => FleetGpuListing,
        "Every GPU in the fleet with its node and availability; live metrics on request";
    /// `fleet.deploy`.
    FleetDeploy = "fleet.deploy", Operate, DeployParams => Deployment,
        "Place a workload: the node with free GPUs of the model that scores best on free GPUs, utilisation, temperature and health runs it; answers the node and why";
    /// `fleet.workloads`.
    FleetWorkloads = "fleet.workloads", Read, WorkloadsParams => FleetWorkloadListing,
        "Workloads across the fleet, filtered by state, image or node";
    /// `fleet.invoke`.
    FleetInvoke = "fleet.invoke", Operate, InvokeParams => InvokeReport,
        "Run any node command on chosen or all nodes with bounded concurrency; per-node result and timing";
    /// `fleet.health`.
    FleetHealth = "fleet.health", Read, NoParams => FleetHealthReport,
        "Every node's health, with counts of healthy, degraded, unhealthy and unreachable nodes";
    /// `fleet.drain`.
    FleetDrain = "fleet.drain", Operate, DrainParams => FleetDrainReport,
        "Cordon a node and stop its workloads";
}

/// `fleet.capabilities`' answer.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BridgeCapabilities {
    /// Every command the bridge answers.
    pub commands: Cow<'static, [CommandDescription]>,
}

impl Answer for BridgeCapabilities {}

/// `fleet.status`' answer: the fleet as the bridge's mesh view holds it (each node's latest
/// signed announcement), without asking any node.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FleetOverview {
    /// Every node, by name.
    pub nodes: Vec<FleetNode>,
    /// How many nodes there are.
    pub node_count: usize,
    /// Workloads running over all of them, as they announce.
    pub running_workloads: u64,
    /// The fleet's GPUs.
    pub gpus: GpuCounts,
    /// The fleet's GPUs by model name.
    pub gpus_by_model: BTreeMap<String, GpuCounts>,
    /// What needs an operator's eye, one sentence each: cordoned nodes and nodes that report
    /// no GPUs.
    pub alerts: Vec<String>,
}

/// GPUs counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GpuCounts {
    /// All of them.
    pub total: usize,
    /// Those no workload holds.
    pub free: usize,
    /// Those a workload holds (`total - free`).
    pub allocated: usize,
    /// Those that are simulated (no device behind them).
    pub simulated: usize,
}

/// One node in `fleet.status`, as its latest announcement describes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FleetNode {
    /// Its name, as it announces it.
    pub node: String,
    /// Its peer id.
    pub peer_id: String,
    /// Where it is, if its operator said.
    pub region: Option<String>,
    /// Its operator's labels.
    pub labels: BTreeMap<String, String>,
    /// Whether it takes no new workloads.
    pub cordoned: bool,
    /// How many GPUs it has.
    pub gpus: usize,
    /// How many of them no workload holds.
    pub free_gpus: usize,
    /// How many GPUs it reports held by workloads.
    pub allocated_gpus: usize,
    /// Workloads running on it.
    pub running_workloads: u32,
    /// Whether any of its GPUs is simulated.
    pub simulated: bool,
    /// The models of its GPUs.
    pub models: BTreeSet<String>,
    /// Its `clawnode` version.
    pub software_version: String,
    /// How peers reach it: `public`, `relayed` (behind NAT, through a relay), `private` (behind
    /// NAT, no relay yet) or `unknown` (not yet probed).
    pub reachability: String,
    /// How old its announcement is, ms.
    pub announced_ms_ago: u64,
}

/// `fleet.gpus`' answer.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FleetGpuListing {
    /// Every GPU (of the model asked for), by node name.
    pub gpus: Vec<FleetGpu>,
}

/// One GPU in `fleet.gpus`, as its node announces it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FleetGpu {
    /// Its node's name.
    pub node: String,
    /// Its node's peer id.
    pub peer_id: String,
    /// Its UUID.
    pub uuid: String,
    /// Its model name.
    pub model: String,
    /// Its memory, MiB.
    pub memory_mib: u64,
    /// Whether it is simulated.
    pub simulated: bool,
    /// Whether a workload holds it.
    pub allocated: bool,
    /// Its entry in its node's `gpu.metrics` answer, when `live` was asked for and the node
    /// answered with a reading that decodes.
    pub metrics: Option<crate::node::GpuReading>,
}

/// `fleet.deploy`'s answer: where the workload runs, and why there.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Deployment {
    /// The chosen node's name.
    pub node: String,
    /// The chosen node's peer id.
    pub peer_id: String,
    /// The chosen node's score and what it was computed from.
    pub why: PlacementScore,
    /// Every node that had room, best first.
    pub considered: Vec<PlacementScore>,
    /// The workload, as the chosen node's `workload.run` answered it.
    pub workload: Workload,
    /// Whether this answers a retry (the caller's idempotency key was placed before): the
    /// node chosen then answered with the workload that key started (present only then).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retried: bool,
}

/// How well a node suits a deploy: the score `fleet.deploy` ranks nodes by, and its parts.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlacementScore {
    /// The node's name.
    pub node: String,
    /// The node's peer id.
    pub peer_id: String,
    /// Out of 100, to one decimal: 35 for free GPUs, 25 for idleness, 20 for coolness and 20
    /// for health.
    pub score: f64,
    /// Its free GPUs that fit the deploy.
    pub free_gpus: usize,
    /// The share of its fitting GPUs that are free, 0 to 1.
    pub free_share: f64,
    /// One less its GPUs' mean utilisation, 0 to 1 (one half without readings).
    pub idle_share: f64,
    /// One less its GPUs' mean temperature over 100 °C, 0 to 1 (one half without readings).
    pub cool_share: f64,
    /// Its `node.health` status.
    pub health: HealthStatus,
}

/// `fleet.workloads`' answer.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FleetWorkloadListing {
    /// The workloads that match, by node name, each node's oldest first.
    pub workloads: Vec<NodeWorkload>,
    /// The nodes whose workloads are missing from the list, and why.
    pub unreachable: Vec<NodeFailure>,
}

/// A workload with its node: one JSON object, the workload's fields beside `node` and
/// `peer_id`. Unknown fields are still refused: serde hands the workload only its own fields
/// and refuses whatever neither it nor the node's fields take (a test pins both ways).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeWorkload {
    /// The workload, as its node's `workload.list` answered it.
    #[serde(flatten)]
    pub workload: Workload,
    /// Its node's name.
    pub node: String,
    /// Its node's peer id.
    pub peer_id: String,
}

/// A node a fan-out got nothing usable from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeFailure {
    /// Its name.
    pub node: String,
    /// What went wrong.
    pub error: String,
}

/// `fleet.invoke`'s answer.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InvokeReport {
    /// The node command that was run.
    pub command: String,
    /// How many nodes it was run on.
    pub nodes: usize,
    /// How many answered.
    pub succeeded: usize,
    /// How many failed.
    pub failed: usize,
    /// Each node's answer, as it sent it, or its failure, by node name.
    pub results: Vec<NodeResult<Value>>,
}

/// One node's part of a fan-out: its answer or its failure, and how long it took.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, bound(deserialize = "T: Deserialize<'de>"))]
#[schemars(rename = "NodeResult_for_{T}")]
pub struct NodeResult<T> {
    /// The node's name.
    pub node: String,
    /// The node's peer id.
    pub peer_id: String,
    /// How long its call took, ms (to the microsecond).
    pub ms: f64,
    /// Whether it answered (where the bridge reads the answer: with one it could read).
    pub ok: bool,
    /// Its answer (present only when `ok`; a `null` answer is kept).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    #[schemars(with = "T")]
    pub result: Option<T>,
    /// Why there is no answer (present only when not `ok`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "InvokeFailure")]
    pub error: Option<InvokeFailure>,
}

impl<T> NodeResult<T> {
    /// The part of node `node` (`peer_id`) whose call took `ms` and ended in `outcome`.
    pub fn new(node: String, peer_id: String, ms: f64, outcome: Result<T, InvokeFailure>) -> Self {
        let ok = outcome.is_ok();
        let (result, error) = match outcome {
            Ok(answer) => (Some(answer), None),
            Err(failure) => (None, Some(failure)),
        };
        Self {
            node,
            peer_id,
            ms,
            ok,
            result,
            error,
        }
    }
}

/// Decodes a field that is there as `Some`, `null` included: a node command may answer `null`,
/// and a plain `Option` would read that as no answer.
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

/// `fleet.health`'s answer.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FleetHealthReport {
    /// How many nodes are in each condition (`healthy`, `degraded`, `unhealthy`, `unknown`:
    /// it answered with no report the bridge can read, `unreachable`); a condition no node is
    /// in is left out.
    pub summary: BTreeMap<NodeCondition, usize>,
    /// Each node's `node.health` answer, or why there is none, by node name.
    pub nodes: Vec<NodeResult<HealthReport>>,
}

/// A node's condition in `fleet.health`'s summary: its health status, or why it has none.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum NodeCondition {
    /// It is healthy.
    Healthy,
    /// It works, with a problem worth attention.
    Degraded,
    /// It cannot do its job.
    Unhealthy,
    /// It answered, but not with a health report the bridge can read.
    Unknown,
    /// It did not answer.
    Unreachable,
}

impl From<HealthStatus> for NodeCondition {
    fn from(status: HealthStatus) -> Self {
        match status {
            HealthStatus::Healthy => Self::Healthy,
            HealthStatus::Degraded => Self::Degraded,
            HealthStatus::Unhealthy => Self::Unhealthy,
        }
    }
}

/// `fleet.drain`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FleetDrainReport {
    /// The node's name.
    pub node: String,
    /// The node's peer id.
    pub peer_id: String,
    /// Its `node.drain` answer.
    pub drain: DrainReport,
}

impl Answer for FleetOverview {}
impl Answer for FleetGpuListing {}
impl Answer for Deployment {}
impl Answer for FleetWorkloadListing {}
impl Answer for InvokeReport {}
impl Answer for FleetHealthReport {}
impl Answer for FleetDrainReport {}

/// `fleet.gpus`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GpusParams {
    /// Only GPUs whose model contains this.
    #[serde(default)]
    pub model: Option<String>,
    /// Also read live metrics from every node (`gpu.metrics`, fanned out).
    #[serde(default)]
    pub live: bool,
}

/// `fleet.invoke`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InvokeParams {
    /// Any node command, e.g. `node.health`.
    pub command: String,
    /// Its params.
    #[serde(default)]
    pub params: Value,
    /// Nodes by peer id or name; every node when absent.
    #[serde(default)]
    pub nodes: Option<Vec<String>>,
    /// Most calls in flight (default 16).
    #[serde(default)]
    pub concurrency: Option<usize>,
    /// Deadline per node, ms (default 10,000).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// `fleet.workloads`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkloadsParams {
    /// Only workloads in this state (`running`, `exited`, …).
    #[serde(default)]
    pub state: Option<String>,
    /// Only workloads whose image contains this.
    #[serde(default)]
    pub image: Option<String>,
    /// Only this node (peer id or name).
    #[serde(default)]
    pub node: Option<String>,
}

/// `fleet.drain`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DrainParams {
    /// The node, by peer id or name.
    pub node: String,
}

/// `fleet.deploy`: what to run and on what kind of GPUs; the bridge picks the node.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployParams {
    /// Image reference.
    pub image: String,
    /// Command and arguments.
    #[serde(default)]
    pub command: Vec<String>,
    /// A display name.
    #[serde(default)]
    pub name: Option<String>,
    /// Environment variables (passed to the container, never stored).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// GPUs needed on one node.
    #[serde(default)]
    pub gpus: u32,
    /// Only GPUs whose model contains this (e.g. `H100`).
    #[serde(default)]
    pub model: Option<String>,
    /// Minimum memory per GPU, MiB.
    #[serde(default)]
    pub min_memory_mib: u64,
    /// CPU limit in cores.
    #[serde(default)]
    pub cpus: Option<f64>,
    /// Memory limit, MiB.
    #[serde(default)]
    pub memory_mib: Option<u64>,
    /// Labels for the container.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::{Command as _, round_trip};

    /// `object` with `key` set to `value`.
    fn with(mut object: Value, key: &str, value: Value) -> Value {
        object[key] = value;
        object
    }

    /// A workload as `workload.list` and `workload.run` answer it.
    fn workload() -> Value {
        json!({
            "id": "wl-0123456789ab", "name": null, "image": "busybox", "command": ["sleep", "9"],
            "owner": "12D3KooWowner", "gpus": ["GPU-1"], "simulated_gpus": true,
            "container_id": "c0ffee", "state": "running", "reason": null, "exit_code": null,
            "restart": "no", "labels": {"team": "a"}, "idempotency_key": null, "created_ms": 1,
            "updated_ms": 2, "isolation": "shared",
        })
    }

    fn health_report() -> Value {
        json!({
            "status": "degraded",
            "reasons": [{"component": "disk", "status": "degraded", "detail": "92% used"}],
            "checks": [{"component": "disk", "status": "degraded", "detail": "92% used"}],
            "cordoned": false,
        })
    }

    #[test]
    fn the_status_keeps_its_wire_form() {
        let counts = json!({"total": 2, "free": 1, "allocated": 1, "simulated": 2});
        let status = round_trip::<FleetStatus>(json!({
            "nodes": [{
                "node": "n1", "peer_id": "12D3KooWn1", "region": null, "labels": {"rack": "4"},
                "cordoned": true, "gpus": 2, "free_gpus": 1, "allocated_gpus": 1,
                "running_workloads": 1, "simulated": true, "models": ["NVIDIA H100"],
                "software_version": "0.1.0", "reachability": "relayed", "announced_ms_ago": 1200,
            }],
            "node_count": 1,
            "running_workloads": 1,
            "gpus": counts.clone(),
            "gpus_by_model": {"NVIDIA H100": counts},
            "alerts": ["n1 is cordoned"],
        }));
        assert_eq!(status.gpus.allocated, 1);
        let extra = json!({"nodes": [], "node_count": 0, "running_workloads": 0, "alerts": [],
            "gpus": {"total": 0, "free": 0, "allocated": 0, "simulated": 0, "spare": 0},
            "gpus_by_model": {}});
        assert!(
            FleetStatus::decode(extra).is_err(),
            "unknown fields are refused"
        );
    }

    #[test]
    fn a_gpu_has_metrics_only_when_read_live() {
        let gpu = json!({
            "node": "n1", "peer_id": "12D3KooWn1", "uuid": "GPU-1", "model": "NVIDIA H100",
            "memory_mib": 81_559, "simulated": false, "allocated": false, "metrics": null,
        });
        let reading = json!({
            "uuid": "GPU-1", "index": 0, "model": "NVIDIA H100",
            "utilization_gpu_pct": 12, "utilization_memory_pct": null,
            "memory_used_bytes": null, "memory_total_bytes": null, "temperature_c": 41,
            "power_usage_mw": null, "power_limit_mw": null, "clocks": null,
            "throttle_reasons": [], "ecc": null, "xid_errors": null, "processes": [],
            "simulated": false, "workload": null,
        });
        let live = with(gpu.clone(), "metrics", reading);
        let listing = round_trip::<FleetGpus>(json!({"gpus": [gpu, live]}));
        assert!(listing.gpus[0].metrics.is_none() && listing.gpus[1].metrics.is_some());
    }

    #[test]
    fn a_deploy_says_why_and_whether_it_was_retried() {
        let why = json!({
            "node": "n1", "peer_id": "12D3KooWn1", "score": 92.0, "free_gpus": 2,
            "free_share": 1.0, "idle_share": 1.0, "cool_share": 0.6, "health": "healthy",
        });
        let first = json!({
            "node": "n1", "peer_id": "12D3KooWn1", "why": why.clone(), "considered": [why],
            "workload": workload(),
        });
        let placed = round_trip::<FleetDeploy>(first.clone());
        assert!(!placed.retried);
        assert_eq!(placed.why.health, HealthStatus::Healthy);
        let retried = round_trip::<FleetDeploy>(with(first, "retried", json!(true)));
        assert!(retried.retried);
    }

    /// `fleet.workloads` puts `node` and `peer_id` beside the workload's fields, as the bridge
    /// did by hand; serde's flatten keeps that form both ways and still refuses unknown fields.
    #[test]
    fn a_node_workload_is_the_workload_with_its_node_and_refuses_unknown_fields() {
        let record: Workload = serde_json::from_value(workload()).expect("a workload");
        let mut by_hand = serde_json::to_value(&record).expect("encodes");
        by_hand["node"] = json!("n1");
        by_hand["peer_id"] = json!("12D3KooWn1");
        let typed = NodeWorkload {
            workload: record.clone(),
            node: "n1".to_owned(),
            peer_id: "12D3KooWn1".to_owned(),
        };
        assert_eq!(serde_json::to_value(&typed).expect("encodes"), by_hand);

        let redacted = json!({
            "id": "wl-0123456789ab", "name": "web", "image": "busybox", "command": [],
            "owner": null, "gpus": [], "simulated_gpus": false, "container_id": null,
            "state": "exited", "reason": "exited with 0", "exit_code": 0, "restart": "no",
            "labels": {}, "idempotency_key": null, "created_ms": 1, "updated_ms": 2,
            "isolation": "tenant", "redacted": true, "node": "n2", "peer_id": "12D3KooWn2",
        });
        let listing = round_trip::<FleetWorkloads>(json!({
            "workloads": [by_hand.clone(), redacted],
            "unreachable": [{"node": "n3", "error": "timed out"}],
        }));
        assert_eq!(listing.workloads[0], typed);
        assert!(listing.workloads[1].workload.redacted);

        let decode = |workload: Value| {
            FleetWorkloads::decode(json!({"workloads": [workload], "unreachable": []}))
        };
        // A stray key, and one of `workload.inspect`'s beside the record.
        for key in ["extra", "container"] {
            let refused = decode(with(by_hand.clone(), key, json!(1)))
                .expect_err("unknown fields are refused");
            assert!(refused.message.contains("unknown field"), "{refused:?}");
        }
        let mut nodeless = by_hand.clone();
        nodeless.as_object_mut().expect("object").remove("node");
        assert!(decode(nodeless).is_err(), "the node is required");
        let mut idless = by_hand;
        idless.as_object_mut().expect("object").remove("id");
        assert!(
            decode(idless).is_err(),
            "the workload's fields are required"
        );

        // The schema lists both parts' fields, and no others.
        let schema = serde_json::to_value(schemars::schema_for!(NodeWorkload)).expect("schema");
        assert_eq!(schema["additionalProperties"], false, "{schema}");
        let properties = schema["properties"].as_object().expect("properties");
        for field in workload().as_object().expect("object").keys() {
            assert!(properties.contains_key(field), "{field}: {schema}");
        }
        assert!(properties.contains_key("node") && properties.contains_key("peer_id"));
    }

    #[test]
    fn an_invoke_keeps_each_answer_as_the_node_sent_it() {
        let report = round_trip::<FleetInvoke>(json!({
            "command": "workload.inspect", "nodes": 3, "succeeded": 2, "failed": 1,
            "results": [
                {"node": "n1", "peer_id": "12D3KooWn1", "ms": 1.25, "ok": true,
                 "result": {"anything": [1, 2]}},
                {"node": "n2", "peer_id": "12D3KooWn2", "ms": 0.5, "ok": true, "result": null},
                {"node": "n3", "peer_id": "12D3KooWn3", "ms": 10_000.0, "ok": false,
                 "error": {"code": "NOT_FOUND", "message": "no workload \"x\""}},
            ],
        }));
        assert_eq!(
            report.results[1].result,
            Some(Value::Null),
            "a null answer is kept"
        );
        assert_eq!(
            report.results[2].error.as_ref().map(|e| e.code),
            Some(crate::ErrorCode::NotFound)
        );
        let part = NodeResult::new(
            "n1".to_owned(),
            "12D3KooWn1".to_owned(),
            1.0,
            Err::<Value, _>(InvokeFailure::new(crate::ErrorCode::Timeout, "late")),
        );
        assert_eq!(
            serde_json::to_value(part).expect("encodes"),
            json!({"node": "n1", "peer_id": "12D3KooWn1", "ms": 1.0, "ok": false,
                   "error": {"code": "TIMEOUT", "message": "late"}})
        );
    }

    #[test]
    fn fleet_health_counts_conditions_over_typed_reports() {
        let health = round_trip::<FleetHealth>(json!({
            "summary": {"degraded": 1, "unreachable": 1},
            "nodes": [
                {"node": "n1", "peer_id": "12D3KooWn1", "ms": 2.0, "ok": true,
                 "result": health_report()},
                {"node": "n2", "peer_id": "12D3KooWn2", "ms": 10_000.0, "ok": false,
                 "error": {"code": "TIMEOUT", "message": "no answer in 10s"}},
            ],
        }));
        assert_eq!(health.summary.get(&NodeCondition::Degraded), Some(&1));
        for condition in [
            NodeCondition::Healthy,
            NodeCondition::Degraded,
            NodeCondition::Unhealthy,
            NodeCondition::Unknown,
            NodeCondition::Unreachable,
        ] {
            let key = serde_json::to_value(condition).expect("encodes");
            assert!(key.as_str().is_some_and(|k| !k.is_empty()), "{key}");
        }
        let odd = json!({"summary": {}, "nodes": [{"node": "n1", "peer_id": "p", "ms": 1.0,
            "ok": true, "result": with(health_report(), "extra", json!(1))}]});
        assert!(
            FleetHealth::decode(odd).is_err(),
            "the report is decoded strictly"
        );
    }

    #[test]
    fn a_drain_carries_the_nodes_report() {
        let drained = round_trip::<FleetDrain>(json!({
            "node": "n2", "peer_id": "12D3KooWn2",
            "drain": {"cordoned": true, "workloads": [{"workload": "wl-0123456789ab",
                "outcome": "stopped"}], "pending": 0, "note": null},
        }));
        assert!(drained.drain.cordoned);
    }
}
