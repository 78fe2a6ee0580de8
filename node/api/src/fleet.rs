//! The gateway bridge's fleet commands: one call for the whole fleet, not one per node. The
//! bridge also forwards some market commands to its market node; those are the node's own
//! definitions (see [`crate::BRIDGE_COMMANDS`]).

use std::borrow::Cow;
use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::command::commands;
use crate::{Answer, CommandDescription, NoParams};

commands! {
    /// `fleet.capabilities`.
    FleetCapabilities = "fleet.capabilities", Read, NoParams => BridgeCapabilities,
        "The bridge's commands with the JSON schema of their params";
    /// `fleet.status`.
    FleetStatus = "fleet.status", Read, NoParams => Value,
        "Nodes, GPUs by model (total, allocated, free, simulated), cordons and alerts, from the mesh view: no fan-out";
    /// `fleet.gpus`.
    FleetGpus = "fleet.gpus", Read, GpusParams => Value,
        "Every GPU in the fleet with its node and availability; live metrics on request";
    /// `fleet.deploy`.
    FleetDeploy = "fleet.deploy", Operate, DeployParams => Value,
        "Place a workload: the node with free GPUs of the model that scores best on free GPUs, utilisation, temperature and health runs it; answers the node and why";
    /// `fleet.workloads`.
    FleetWorkloads = "fleet.workloads", Read, WorkloadsParams => Value,
        "Workloads across the fleet, filtered by state, image or node";
    /// `fleet.invoke`.
    FleetInvoke = "fleet.invoke", Operate, InvokeParams => Value,
        "Run any node command on chosen or all nodes with bounded concurrency; per-node result and timing";
    /// `fleet.health`.
    FleetHealth = "fleet.health", Read, NoParams => Value,
        "Every node's health, with counts of healthy, degraded, unhealthy and unreachable nodes";
    /// `fleet.drain`.
    FleetDrain = "fleet.drain", Operate, DrainParams => Value,
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
