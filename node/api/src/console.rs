//! The fleet console: what its page shows ([`ConsoleSnapshot`]) and the page itself
//! ([`PAGE`], [`SCRIPT`], [`STYLE`]).
//!
//! A node serves the page on its control API's listener and streams its own snapshots to it; the
//! bridge answers `console.snapshot` for the whole fleet it presents and `console.page` with the
//! same files, so that the OpenClaw plugin can show the same console as a tab of the gateway's
//! Control UI. The page writes every string from the fleet as text, never as markup.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::command::commands;
use crate::deploy::{DEPLOYMENT_LABEL, Deployment};
use crate::market::{LeaseListing, OfferListing, PriceHistory};
use crate::workload::{Workload, WorkloadState};
use crate::{Answer, NoParams, Role};

/// The console's page.
pub const PAGE: &str = include_str!("../console/index.html");
/// The console's script.
pub const SCRIPT: &str = include_str!("../console/app.js");
/// The console's style.
pub const STYLE: &str = include_str!("../console/app.css");

/// Trades, leases, offers and workloads a snapshot lists at most.
pub const LISTED: usize = 200;

commands! {
    /// `console.snapshot`.
    ConsoleSnapshotCommand = "console.snapshot", Read, NoParams => ConsoleSnapshot,
        "Everything the fleet console shows, as of now: every node with its GPUs, live GPU readings, workloads, the order book, leases and price history (each part only as far as the caller may read it)";
    /// `console.page`.
    ConsolePage = "console.page", Read, NoParams => ConsoleFiles,
        "The console's page, script and style, for a host that shows the console (the OpenClaw plugin's Fleet tab)";
}

/// Who the console shows as signed in.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SignedIn {
    /// How: `control token`, `API key` or `OpenClaw gateway`.
    pub with: String,
    /// The API key's name, when one was given.
    pub name: Option<String>,
    /// What the viewer may do.
    pub role: Role,
}

/// What the console shows, as of `at_ms`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsoleSnapshot {
    /// When it was taken, Unix ms.
    pub at_ms: u64,
    /// Who is looking.
    pub signed_in: SignedIn,
    /// Where it was taken: `node` (one node's own console) or `bridge` (the whole fleet a bridge
    /// presents).
    pub scope: String,
    /// What the viewer may not read (or what could not be read), and why.
    pub withheld: Vec<String>,
    /// A node whose latest announcement is older than this is shown silent (it leaves the
    /// view once it misses its configured number of intervals).
    pub silent_after_ms: u64,
    /// The nodes that announce themselves, the serving node first when it is one.
    pub nodes: Vec<ConsoleNode>,
    /// Real GPUs as NVML read them moments ago, by UUID (simulated GPUs have no readings).
    pub readings: Vec<ConsoleReading>,
    /// Workloads, newest first, at most [`LISTED`].
    pub workloads: Vec<ConsoleWorkload>,
    /// The fleet's deployments.
    pub deployments: Option<Vec<ConsoleDeployment>>,
    /// The order book.
    pub offers: Option<OfferListing>,
    /// Leases, at most [`LISTED`].
    pub leases: Option<LeaseListing>,
    /// Price history of the last 30 days.
    pub history: Option<PriceHistory>,
}

impl Answer for ConsoleSnapshot {}

/// One node as the console lists it: what its latest signed announcement says.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsoleNode {
    /// Its peer id.
    pub peer_id: String,
    /// Whether it is the node serving the console.
    pub local: bool,
    /// Its name (peer-supplied).
    pub name: String,
    /// Its region (peer-supplied).
    pub region: Option<String>,
    /// Whether it is cordoned.
    pub cordoned: bool,
    /// Workloads it runs.
    pub running_workloads: u32,
    /// Its software version (peer-supplied).
    pub software_version: String,
    /// How peers reach it: `public`, `relayed`, `private` or `unknown`.
    pub reachability: String,
    /// When its latest announcement was signed, Unix ms (`None` for the serving node).
    pub announced_ms: Option<u64>,
    /// Its GPUs.
    pub gpus: Vec<ConsoleGpu>,
}

/// One GPU as the console lists it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsoleGpu {
    /// Its UUID.
    pub uuid: String,
    /// Its model (peer-supplied).
    pub model: String,
    /// Its memory, MiB.
    pub memory_mib: u64,
    /// Whether it is simulated.
    pub simulated: bool,
    /// Whether a workload or lease holds it.
    pub allocated: bool,
}

/// What the console shows of one GPU's reading: the part of `gpu.metrics` it draws, which keeps
/// a 1,000-node fleet's snapshot to a few hundred bytes a node.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsoleReading {
    /// Which GPU.
    pub uuid: String,
    /// Its NVML index on its node.
    pub index: u32,
    /// Percent of the last sample period a kernel ran.
    pub utilization_gpu_pct: Option<u32>,
    /// Core temperature, °C.
    pub temperature_c: Option<u32>,
    /// Device memory in use.
    pub memory_used_bytes: Option<u64>,
    /// Device memory in all.
    pub memory_total_bytes: Option<u64>,
    /// Power draw, mW.
    pub power_usage_mw: Option<u32>,
}

impl From<&claw_attestation::GpuMetrics> for ConsoleReading {
    fn from(m: &claw_attestation::GpuMetrics) -> Self {
        Self {
            uuid: m.uuid.clone(),
            index: m.index,
            utilization_gpu_pct: m.utilization_gpu_pct,
            temperature_c: m.temperature_c,
            memory_used_bytes: m.memory_used_bytes,
            memory_total_bytes: m.memory_total_bytes,
            power_usage_mw: m.power_usage_mw,
        }
    }
}

/// A workload, without its environment (which may hold secrets).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsoleWorkload {
    /// The name of the node it runs on.
    pub node: String,
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: Option<String>,
    /// Its image.
    pub image: String,
    /// Its state.
    pub state: String,
    /// The GPUs it holds.
    pub gpus: Vec<String>,
    /// Whether those GPUs are simulated.
    pub simulated_gpus: bool,
    /// When it was created, Unix ms.
    pub created_ms: u64,
    /// Why it is in its state, when it says.
    pub reason: Option<String>,
    /// The deployment it is a replica of.
    pub deployment: Option<String>,
}

impl ConsoleWorkload {
    /// `workload`, running on the node named `node`.
    pub fn of(node: String, workload: Workload) -> Self {
        Self {
            node,
            deployment: workload.labels.get(DEPLOYMENT_LABEL).cloned(),
            id: workload.id,
            name: workload.name,
            image: workload.image,
            state: workload.state.to_string(),
            gpus: workload.gpus,
            simulated_gpus: workload.simulated_gpus,
            created_ms: workload.created_ms,
            reason: workload.reason,
        }
    }
}

/// A deployment as the console lists it: its current revision's outline (not its spec's
/// environment), and how many of its replicas run among the workloads seen.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsoleDeployment {
    /// Its name.
    pub name: String,
    /// Its current revision.
    pub revision: u64,
    /// The image its replicas run.
    pub image: String,
    /// Replicas it asks for.
    pub replicas: u32,
    /// `rolling`, `canary` or `blue_green`.
    pub strategy: String,
    /// Whether it is paused.
    pub paused: bool,
    /// When its current revision was signed, Unix ms.
    pub signed_at_ms: u64,
    /// Its replicas running among the workloads seen (on the serving node, or in the whole
    /// fleet through the bridge).
    pub running: u32,
}

impl ConsoleDeployment {
    /// `deployment`, with `running` its running replicas by deployment name
    /// ([`running_replicas`]).
    pub fn of(deployment: &Deployment, running: &BTreeMap<String, u32>) -> Self {
        Self {
            name: deployment.name.clone(),
            revision: deployment.revision,
            image: deployment.spec.template.image.clone(),
            replicas: deployment.spec.replicas,
            strategy: deployment.spec.strategy.name().to_owned(),
            paused: deployment.spec.paused,
            signed_at_ms: deployment.signed_at_ms,
            running: running.get(&deployment.name).copied().unwrap_or(0),
        }
    }
}

/// How many replicas of each deployment run among `workloads`.
pub fn running_replicas(workloads: &[ConsoleWorkload]) -> BTreeMap<String, u32> {
    let running = WorkloadState::Running.to_string();
    let mut counted = BTreeMap::new();
    for deployment in workloads
        .iter()
        .filter(|w| w.state == running)
        .filter_map(|w| w.deployment.as_ref())
    {
        *counted.entry(deployment.clone()).or_insert(0u32) += 1;
    }
    counted
}

/// The console's files, as [`PAGE`], [`SCRIPT`] and [`STYLE`] hold them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsoleFiles {
    /// The page (HTML).
    pub page: String,
    /// Its script.
    pub script: String,
    /// Its style.
    pub style: String,
}

impl Answer for ConsoleFiles {}

impl ConsoleFiles {
    /// The files this build holds.
    pub fn of_this_build() -> Self {
        Self {
            page: PAGE.to_owned(),
            script: SCRIPT.to_owned(),
            style: STYLE.to_owned(),
        }
    }
}
