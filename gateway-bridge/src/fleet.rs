//! The fleet command surface the bridge offers the gateway: one call for the whole fleet, not
//! one per node.
//!
//! `fleet.status` and `fleet.gpus` are computed from the bridge's own mesh view (the nodes'
//! verified announcements) with no round trip; the others fan out over the mesh's invoke RPC
//! with bounded concurrency and a deadline per node. `fleet.deploy` places a workload: nodes
//! with enough free GPUs of the asked model are scored on free GPUs, utilisation, temperature
//! and health, and the best runs `workload.run`. Market commands are forwarded to the node
//! named as the bridge's market node. The bridge needs the operate role on the nodes it drives
//! (its peer id in their `access.operators`).

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use claw_api::auth::{
    ApiToken, AuthCreateKey, AuthListKeys, AuthRevokeKey, AuthWhoAmI, WhoAmI, namespaces_named,
};
use claw_api::autoscale::{
    AutoscaleAdjust, AutoscaleChange, AutoscaleCreate, AutoscaleCreateParams, AutoscaleDelete,
    AutoscaleRef, AutoscaleStatusCommand,
};
use claw_api::configs::{
    ConfigCreate, ConfigDelete, ConfigGet, ConfigList, ConfigRef, ConfigUpdate, ValuesChange,
};
use claw_api::console::{ConsoleFiles, ConsolePage, ConsoleSnapshotCommand};
use claw_api::cron::{
    CronChange, CronCreate, CronCreateParams, CronDelete, CronList, CronLogsCommand, CronRef,
    CronResume, CronStatusCommand, CronSuspend, CronTrigger,
};
use claw_api::deploy::{
    Change, CreateParams, DeployCreate, DeployDelete, DeployHistory, DeployList, DeployPause,
    DeployPromote, DeployResume, DeployRollback, DeployStatus, DeployUpdate, DeploymentRef,
    RollbackParams,
};
use claw_api::fleet::{
    BridgeCapabilities, DeployParams, Deployment, DrainParams, FleetCapabilities, FleetDeploy,
    FleetDrain, FleetDrainReport, FleetGpu, FleetGpuListing, FleetGpus, FleetHealth,
    FleetHealthReport, FleetInvoke, FleetNode, FleetOverview, FleetStatus, FleetWorkloadListing,
    FleetWorkloads, GpuCounts, GpusParams, InvokeParams, InvokeReport, NodeCondition, NodeFailure,
    NodeResult, NodeWorkload, PlacementScore, WorkloadsParams,
};
use claw_api::ingress::{IngressCreate, IngressDelete, IngressList, IngressRef};
use claw_api::jobs::{
    JobCreate, JobCreateParams, JobDelete, JobList, JobLogsCommand, JobRef, JobStatusCommand,
};
use claw_api::market::{
    MarketBid, MarketHistory, MarketLeaseCancel, MarketLeases, MarketOffers, WalletBalance,
};
use claw_api::namespaces::{NamespaceCreate, NamespaceDelete, NamespaceList, NamespaceRef};
use claw_api::node::{GpuMetrics, GpuReading, HealthStatus, NodeDrain, NodeHealth};
use claw_api::objects::ObjectKind;
use claw_api::policies::{PolicyCreate, PolicyDelete, PolicyList, PolicyRef};
use claw_api::secrets::{
    SecretCreate, SecretDelete, SecretDescribe, SecretList, SecretRef, SecretRotate,
};
use claw_api::services::{ServiceCreate, ServiceDelete, ServiceList, ServiceRef};
use claw_api::workload::{Workload, WorkloadList, WorkloadRun};
use claw_api::{
    BRIDGE_COMMANDS, Command, ErrorCode, InvokeFailure, NoParams, Router, bridge_descriptions,
};
use claw_mesh::{FleetMember, InvokeRequest, MeshHandle, PeerId};
use futures::StreamExt as _;
use serde::Serialize;
use serde_json::{Value, json};

use crate::gateway::{CommandFuture, GatewayCall, GatewayHandler};

mod console;
mod deployments;
mod jobs;
mod keys;
mod objects;
mod values;
use crate::placements::{Placement, PlacementError, Placements};

/// Most node calls in flight at once for one fleet command.
const DEFAULT_CONCURRENCY: usize = 16;
/// Deadline of one node call when the command gives none.
const NODE_DEADLINE: Duration = Duration::from_secs(10);
/// Members asked, one after another, to check a call's API key.
const KEY_CHECK_MEMBERS: usize = 3;
/// Deadline of one member's key check.
const KEY_CHECK_DEADLINE: Duration = Duration::from_secs(5);

/// What a fleet command is called with, besides its params.
#[derive(Debug, Clone)]
struct Call {
    /// How long the gateway waits.
    timeout: Duration,
    /// The caller's idempotency key, passed on to the node that acts.
    idempotency_key: Option<String>,
}

/// The bridge's handlers, one per command of [`BRIDGE_COMMANDS`].
fn router() -> &'static Router<FleetCommands, Call> {
    static ROUTER: OnceLock<Router<FleetCommands, Call>> = OnceLock::new();
    ROUTER.get_or_init(|| {
        Router::<FleetCommands, Call>::new()
            .route::<FleetCapabilities, _, _>(|_, _, NoParams {}| async {
                Ok(BridgeCapabilities {
                    commands: bridge_descriptions().into(),
                })
            })
            .route::<FleetStatus, _, _>(|fleet, _, _| async move { Ok(fleet.status()) })
            .route::<FleetGpus, _, _>(
                |fleet, _, params| async move { Ok(fleet.gpus(params).await) },
            )
            .route::<FleetDeploy, _, _>(|fleet, call, params| async move {
                fleet.deploy(params, call.idempotency_key).await
            })
            .route::<FleetWorkloads, _, _>(|fleet, _, params| async move {
                fleet.workloads(params).await
            })
            .route::<FleetInvoke, _, _>(
                |fleet, _, params| async move { fleet.invoke(params).await },
            )
            .route::<FleetHealth, _, _>(|fleet, _, _| async move { Ok(fleet.health().await) })
            .route::<FleetDrain, _, _>(|fleet, _, params| async move { fleet.drain(params).await })
            .route::<MarketOffers, _, _>(|fleet, call, params| async move {
                fleet.forward::<MarketOffers>(&params, call).await
            })
            .route::<MarketBid, _, _>(|fleet, call, params| async move {
                fleet.forward::<MarketBid>(&params, call).await
            })
            .route::<MarketLeases, _, _>(|fleet, call, params| async move {
                fleet.forward::<MarketLeases>(&params, call).await
            })
            .route::<MarketLeaseCancel, _, _>(|fleet, call, params| async move {
                fleet.forward::<MarketLeaseCancel>(&params, call).await
            })
            .route::<WalletBalance, _, _>(|fleet, call, params| async move {
                fleet.forward::<WalletBalance>(&params, call).await
            })
            // Every member keeps the price history and checks each trade on chain itself.
            .route::<MarketHistory, _, _>(|fleet, call, params| async move {
                fleet.ask_member::<MarketHistory>(&params, call).await
            })
            .route::<ConsoleSnapshotCommand, _, _>(|fleet, call, NoParams {}| async move {
                Ok(fleet.console_snapshot(call).await)
            })
            .route::<ConsolePage, _, _>(|_, _, NoParams {}| async {
                Ok(ConsoleFiles::of_this_build())
            })
            .route::<DeployStatus, _, _>(|fleet, call, params| async move {
                fleet.ask_member::<DeployStatus>(&params, call).await
            })
            .route::<DeployList, _, _>(|fleet, call, params| async move {
                fleet.ask_member::<DeployList>(&params, call).await
            })
            .route::<DeployHistory, _, _>(|fleet, call, params| async move {
                fleet.ask_member::<DeployHistory>(&params, call).await
            })
            .route::<DeployCreate, _, _>(|fleet, call, CreateParams { name, spec }| async move {
                fleet
                    .deployment_changed(&name, Change::Create(Box::new(spec)), call)
                    .await
            })
            .route::<DeployUpdate, _, _>(|fleet, call, params| async move {
                let name = params.name.clone();
                fleet
                    .deployment_changed(&name, Change::Update(Box::new(params)), call)
                    .await
            })
            .route::<DeployRollback, _, _>(
                |fleet, call, RollbackParams { name, revision }| async move {
                    fleet
                        .deployment_changed(&name, Change::Rollback(revision), call)
                        .await
                },
            )
            .route::<DeployPromote, _, _>(|fleet, call, DeploymentRef { name }| async move {
                fleet.deployment_changed(&name, Change::Promote, call).await
            })
            .route::<DeployPause, _, _>(|fleet, call, DeploymentRef { name }| async move {
                fleet
                    .deployment_changed(&name, Change::Pause(true), call)
                    .await
            })
            .route::<DeployResume, _, _>(|fleet, call, DeploymentRef { name }| async move {
                fleet
                    .deployment_changed(&name, Change::Pause(false), call)
                    .await
            })
            .route::<DeployDelete, _, _>(|fleet, call, DeploymentRef { name }| async move {
                fleet.deployment_deleted(&name, call).await
            })
            .route::<JobStatusCommand, _, _>(|fleet, call, params| async move {
                fleet.ask_member::<JobStatusCommand>(&params, call).await
            })
            .route::<JobList, _, _>(|fleet, call, params| async move {
                fleet.ask_member::<JobList>(&params, call).await
            })
            .route::<JobLogsCommand, _, _>(|fleet, call, params| async move {
                fleet.ask_member::<JobLogsCommand>(&params, call).await
            })
            .route::<JobCreate, _, _>(|fleet, call, JobCreateParams { name, spec }| async move {
                fleet.job_created(&name, spec, call).await
            })
            .route::<JobDelete, _, _>(|fleet, call, JobRef { name }| async move {
                fleet.job_deleted(&name, call).await
            })
            .route::<CronList, _, _>(|fleet, call, params| async move {
                fleet.ask_member::<CronList>(&params, call).await
            })
            .route::<CronStatusCommand, _, _>(|fleet, call, params| async move {
                fleet.ask_member::<CronStatusCommand>(&params, call).await
            })
            .route::<CronLogsCommand, _, _>(|fleet, call, params| async move {
                fleet.ask_member::<CronLogsCommand>(&params, call).await
            })
            .route::<CronCreate, _, _>(|fleet, call, CronCreateParams { name, spec }| async move {
                fleet
                    .cron_changed(&name, CronChange::Create(Box::new(spec)), call)
                    .await
            })
            .route::<CronTrigger, _, _>(|fleet, call, CronRef { name }| async move {
                fleet.cron_changed(&name, CronChange::Trigger, call).await
            })
            .route::<CronSuspend, _, _>(|fleet, call, CronRef { name }| async move {
                fleet
                    .cron_changed(&name, CronChange::Suspend(true), call)
                    .await
            })
            .route::<CronResume, _, _>(|fleet, call, CronRef { name }| async move {
                fleet
                    .cron_changed(&name, CronChange::Suspend(false), call)
                    .await
            })
            .route::<CronDelete, _, _>(|fleet, call, CronRef { name }| async move {
                fleet.cron_deleted(&name, call).await
            })
            .route::<AutoscaleStatusCommand, _, _>(|fleet, call, params| async move {
                fleet
                    .ask_member::<AutoscaleStatusCommand>(&params, call)
                    .await
            })
            .route::<AutoscaleCreate, _, _>(
                |fleet, call, AutoscaleCreateParams { name, spec }| async move {
                    fleet
                        .autoscaler_changed(&name, AutoscaleChange::Create(Box::new(spec)), call)
                        .await
                },
            )
            .route::<AutoscaleAdjust, _, _>(|fleet, call, params| async move {
                let name = params.name.clone();
                fleet
                    .autoscaler_changed(&name, AutoscaleChange::Adjust(params), call)
                    .await
            })
            .route::<AutoscaleDelete, _, _>(|fleet, call, AutoscaleRef { name }| async move {
                fleet.autoscaler_deleted(&name, call).await
            })
            .route::<ConfigCreate, _, _>(|fleet, call, params| async move {
                fleet.config_put(params, ValuesChange::Create, call).await
            })
            .route::<ConfigUpdate, _, _>(|fleet, call, params| async move {
                fleet.config_put(params, ValuesChange::Update, call).await
            })
            .route::<ConfigGet, _, _>(|fleet, call, params| async move {
                fleet.ask_member::<ConfigGet>(&params, call).await
            })
            .route::<ConfigList, _, _>(|fleet, call, params| async move {
                fleet.ask_member::<ConfigList>(&params, call).await
            })
            .route::<ConfigDelete, _, _>(|fleet, call, ConfigRef { name }| async move {
                fleet.values_deleted(ObjectKind::Config, &name, call).await
            })
            .route::<SecretCreate, _, _>(|fleet, call, params| async move {
                fleet.secret_put(params, ValuesChange::Create, call).await
            })
            .route::<SecretRotate, _, _>(|fleet, call, params| async move {
                fleet.secret_put(params, ValuesChange::Update, call).await
            })
            .route::<SecretDescribe, _, _>(|fleet, call, params| async move {
                fleet.ask_member::<SecretDescribe>(&params, call).await
            })
            .route::<SecretList, _, _>(|fleet, call, params| async move {
                fleet.ask_member::<SecretList>(&params, call).await
            })
            .route::<SecretDelete, _, _>(|fleet, call, SecretRef { name }| async move {
                fleet.values_deleted(ObjectKind::Secret, &name, call).await
            })
            .route::<ServiceCreate, _, _>(|fleet, call, params| async move {
                fleet.service_create(params, call).await
            })
            .route::<ServiceList, _, _>(|fleet, call, params| async move {
                fleet.ask_member::<ServiceList>(&params, call).await
            })
            .route::<ServiceDelete, _, _>(|fleet, call, ServiceRef { name }| async move {
                fleet.plain_deleted(ObjectKind::Service, &name, call).await
            })
            .route::<IngressCreate, _, _>(|fleet, call, params| async move {
                fleet.ingress_create(params, call).await
            })
            .route::<IngressList, _, _>(|fleet, call, params| async move {
                fleet.ask_member::<IngressList>(&params, call).await
            })
            .route::<IngressDelete, _, _>(|fleet, call, IngressRef { name }| async move {
                fleet.plain_deleted(ObjectKind::Ingress, &name, call).await
            })
            .route::<PolicyCreate, _, _>(|fleet, call, params| async move {
                fleet.policy_create(params, call).await
            })
            .route::<PolicyList, _, _>(|fleet, call, params| async move {
                fleet.ask_member::<PolicyList>(&params, call).await
            })
            .route::<PolicyDelete, _, _>(|fleet, call, PolicyRef { name }| async move {
                fleet.plain_deleted(ObjectKind::Policy, &name, call).await
            })
            .route::<NamespaceCreate, _, _>(|fleet, call, params| async move {
                fleet.namespace_create(params, call).await
            })
            .route::<NamespaceList, _, _>(|fleet, call, params| async move {
                fleet.ask_member::<NamespaceList>(&params, call).await
            })
            .route::<NamespaceDelete, _, _>(|fleet, call, NamespaceRef { name }| async move {
                fleet
                    .plain_deleted(ObjectKind::Namespace, &name, call)
                    .await
            })
            .route::<AuthCreateKey, _, _>(|fleet, call, params| async move {
                fleet.create_key(params, call).await
            })
            .route::<AuthListKeys, _, _>(|fleet, call, params| async move {
                fleet.ask_member::<AuthListKeys>(&params, call).await
            })
            .route::<AuthRevokeKey, _, _>(|fleet, call, params| async move {
                fleet.revoke_key(params, call).await
            })
    })
}

/// How long a node may take to start a deployed workload (image pulls included).
const DEPLOY_DEADLINE: Duration = Duration::from_secs(120);

fn placement_failure(error: PlacementError) -> InvokeFailure {
    InvokeFailure::new(ErrorCode::Internal, error.to_string())
}

/// What a deploy needs of a node's GPUs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PlacementRequest {
    gpus: usize,
    model: Option<String>,
    min_memory_mib: u64,
}

impl PlacementRequest {
    fn fits(&self, gpu: &claw_attestation::GpuDevice) -> bool {
        self.model
            .as_ref()
            .is_none_or(|m| gpu.model.contains(m.as_str()))
            && gpu.memory_total_bytes / (1024 * 1024) >= self.min_memory_mib
    }

    /// The GPUs of `member` that fit, free and in all.
    fn counts(&self, member: &FleetMember) -> (usize, usize) {
        let a = &member.announcement;
        let fitting = a.inventory.gpus.iter().filter(|g| self.fits(g));
        let total = fitting.clone().count();
        let free = fitting
            .filter(|g| !a.allocated_gpus.contains(&g.uuid))
            .count();
        (free, total)
    }

    fn free_on(&self, member: &FleetMember) -> usize {
        self.counts(member).0
    }

    /// "2 free GPU(s) of model H100 with 40000 MiB".
    fn describe(&self) -> String {
        let mut text = format!("{} free GPU(s)", self.gpus);
        if let Some(model) = &self.model {
            text.push_str(&format!(" of model {model}"));
        }
        if self.min_memory_mib > 0 {
            text.push_str(&format!(" with {} MiB", self.min_memory_mib));
        }
        text
    }
}

/// What the placement score reads of one GPU's `gpu.metrics` reading.
#[derive(Debug, Clone, Copy, PartialEq)]
struct GpuLoad {
    utilization_pct: Option<f64>,
    temperature_c: Option<f64>,
}

/// What the score reads of one node.
#[derive(Debug, Clone)]
struct NodeReadings {
    member: FleetMember,
    /// `node.health`'s status; `None` when the node did not answer.
    health: Option<HealthStatus>,
    /// Its GPUs' live readings (none when it did not answer).
    gpus: Vec<GpuLoad>,
}

/// A node that may take the deploy, with its score and the reasons the answer gives.
#[derive(Debug, Clone)]
struct Ranked {
    score: f64,
    why: PlacementScore,
    member: FleetMember,
}

/// Orders the nodes for a deploy, best first: 35 points for the share of fitting GPUs free, 25
/// for idleness and 20 for coolness (means over its GPUs; half marks without readings), 20 for
/// health (half when degraded). Unhealthy and unreachable nodes are left out; ties go by name.
fn rank(request: &PlacementRequest, nodes: Vec<NodeReadings>) -> Vec<Ranked> {
    let mut ranked: Vec<Ranked> = nodes
        .into_iter()
        .filter_map(|node| {
            let status = node.health?;
            if status == HealthStatus::Unhealthy {
                return None;
            }
            let (free, total) = request.counts(&node.member);
            let mean_left = |read: fn(&GpuLoad) -> Option<f64>, scale: f64| {
                let values: Vec<f64> = node.gpus.iter().filter_map(read).collect();
                if values.is_empty() {
                    0.5
                } else {
                    let mean = values.iter().sum::<f64>() / values.len() as f64;
                    1.0 - (mean / scale).clamp(0.0, 1.0)
                }
            };
            let free_share = free as f64 / total.max(1) as f64;
            let idle_share = mean_left(|g| g.utilization_pct, 100.0);
            let cool_share = mean_left(|g| g.temperature_c, 100.0);
            let health_share = if status == HealthStatus::Healthy {
                1.0
            } else {
                0.5
            };
            let score =
                35.0 * free_share + 25.0 * idle_share + 20.0 * cool_share + 20.0 * health_share;
            let why = PlacementScore {
                node: node.member.announcement.name.clone(),
                peer_id: node.member.peer_id.to_string(),
                score: (score * 10.0).round() / 10.0,
                free_gpus: free,
                free_share,
                idle_share,
                cool_share,
                health: status,
            };
            Some(Ranked {
                score,
                why,
                member: node.member,
            })
        })
        .collect();
    ranked.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| a.member.announcement.name.cmp(&b.member.announcement.name))
    });
    ranked
}

/// The fleet commands, served to the gateway. Cheap to clone.
#[derive(Clone)]
pub struct FleetCommands {
    mesh: MeshHandle,
    market_node: Option<PeerId>,
    placements: Placements,
    /// What the bridge signs deployment changes with, as a fleet operator.
    signer: Option<std::sync::Arc<deployments::Signer>>,
    /// The API key of the gateway call being answered: checked before the command runs, and
    /// carried on every node call it makes, so each node checks it too.
    api_key: Option<ApiToken>,
    /// Whether a gateway call without an API key is refused.
    require_api_key: bool,
    /// The console's newest fan-out, shared by its viewers.
    console: std::sync::Arc<console::ConsoleCache>,
}

impl std::fmt::Debug for FleetCommands {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetCommands")
            .field("market_node", &self.market_node)
            .finish_non_exhaustive()
    }
}

/// One node's answer in a fan-out.
struct NodeAnswer {
    member: FleetMember,
    result: Result<Value, InvokeFailure>,
    ms: f64,
}

impl NodeAnswer {
    /// This answer as its part of a fleet answer, the node's answer read by `read`.
    fn into_result<T>(self, read: impl FnOnce(Value) -> Result<T, InvokeFailure>) -> NodeResult<T> {
        NodeResult::new(
            self.member.announcement.name,
            self.member.peer_id.to_string(),
            self.ms,
            self.result.and_then(read),
        )
    }
}

impl FleetCommands {
    /// Fleet commands over `mesh`; market commands go to `market_node` when one is given.
    /// Deploys with an idempotency key are recorded in `placements`.
    pub fn new(mesh: MeshHandle, market_node: Option<PeerId>, placements: Placements) -> Self {
        Self {
            mesh,
            market_node,
            placements,
            signer: None,
            api_key: None,
            require_api_key: false,
            console: std::sync::Arc::default(),
        }
    }

    /// Refuses gateway calls that carry no API key, when `required`.
    #[must_use]
    pub fn requiring_api_keys(mut self, required: bool) -> Self {
        self.require_api_key = required;
        self
    }

    /// Signs deployment changes with `identity` for `network`: the nodes keep them when they
    /// list the bridge's peer id as an operator. Without it, `deploy.*` changes are refused.
    #[must_use]
    pub fn signing_as(
        mut self,
        identity: std::sync::Arc<claw_attestation::NodeIdentity>,
        network: String,
    ) -> Self {
        self.signer = Some(std::sync::Arc::new(deployments::Signer::new(
            identity, network,
        )));
        self
    }

    /// The exact names of the commands, as declared to the gateway.
    pub fn names() -> Vec<String> {
        BRIDGE_COMMANDS.iter().map(|c| c.name.to_owned()).collect()
    }

    /// The fleet: members only, where the bridge trusts fleet operators (`--fleet-operator`).
    fn members(&self) -> Vec<FleetMember> {
        let mut members = self.mesh.fleet_members();
        members.sort_by(|a, b| {
            (&a.announcement.name, a.peer_id).cmp(&(&b.announcement.name, b.peer_id))
        });
        members
    }

    /// The fleet member a peer id, or a name no other member announces, names.
    fn resolve(&self, node: &str) -> Result<FleetMember, InvokeFailure> {
        let members = self.members();
        if let Some(member) = members.iter().find(|m| m.peer_id.to_string() == node) {
            return Ok(member.clone());
        }
        let mut named = members.into_iter().filter(|m| m.announcement.name == node);
        match (named.next(), named.next()) {
            (Some(member), None) => Ok(member),
            (Some(_), Some(_)) => Err(InvokeFailure::new(
                ErrorCode::InvalidParams,
                format!(
                    "more than one node announces the name {node:?}: name it by peer id \
                     (fleet.status lists them)"
                ),
            )),
            _ => Err(InvokeFailure::new(
                ErrorCode::NotFound,
                format!("no node {node:?} in the fleet (fleet.status lists them)"),
            )),
        }
    }

    async fn call(
        &self,
        peer: PeerId,
        command: &str,
        params: Value,
        deadline: Duration,
        idempotency_key: Option<String>,
    ) -> Result<Value, InvokeFailure> {
        let mut request = InvokeRequest::new(command, deadline).with_params(params);
        request.idempotency_key = idempotency_key;
        request.api_key.clone_from(&self.api_key);
        self.mesh.invoke(peer, request).await
    }

    /// Checks the call's API key against `command` and its params: a member says what the key
    /// may do (`auth.whoami`, under the key), and the bridge refuses what is outside it. Members
    /// are asked in order until one answers; a refusal of the key itself is final.
    async fn check_key(&self, command: &str, params: &Value) -> Result<(), InvokeFailure> {
        let Some(spec) = BRIDGE_COMMANDS.iter().find(|c| c.name == command) else {
            return Ok(()); // the router answers UNKNOWN_COMMAND
        };
        let mut failure = InvokeFailure::new(
            ErrorCode::Unavailable,
            "no fleet member answered to check the API key",
        );
        for member in self.members().into_iter().take(KEY_CHECK_MEMBERS) {
            let answer = self
                .call(
                    member.peer_id,
                    AuthWhoAmI::NAME,
                    json!({}),
                    KEY_CHECK_DEADLINE,
                    None,
                )
                .await;
            match answer.and_then(AuthWhoAmI::decode) {
                Ok(WhoAmI { key: Some(key), .. }) => {
                    let acted_in = namespaces_named(params);
                    return match key.refusal(spec.name, spec.role, &acted_in) {
                        Some(refusal) => Err(InvokeFailure::new(ErrorCode::Unauthorized, refusal)),
                        None => Ok(()),
                    };
                }
                Ok(WhoAmI { key: None, .. }) => {
                    failure = InvokeFailure::new(
                        ErrorCode::Internal,
                        "the member did not take the call's API key",
                    );
                }
                Err(refused) if refused.code == ErrorCode::Unauthorized => return Err(refused),
                Err(other) => failure = other,
            }
        }
        Err(failure)
    }

    /// Calls `command` on each of `members`, at most `concurrency` at a time.
    async fn fan_out(
        &self,
        members: Vec<FleetMember>,
        command: &str,
        params: &Value,
        concurrency: usize,
        deadline: Duration,
    ) -> Vec<NodeAnswer> {
        let calls = members.into_iter().map(|member| {
            let params = params.clone();
            async move {
                let started = Instant::now();
                let result = self
                    .call(member.peer_id, command, params, deadline, None)
                    .await;
                NodeAnswer {
                    member,
                    result,
                    ms: (started.elapsed().as_secs_f64() * 1_000_000.0).round() / 1000.0,
                }
            }
        });
        let mut answers: Vec<NodeAnswer> = futures::stream::iter(calls)
            .buffer_unordered(concurrency.clamp(1, 256))
            .collect()
            .await;
        answers.sort_by(|a, b| {
            (&a.member.announcement.name, a.member.peer_id)
                .cmp(&(&b.member.announcement.name, b.member.peer_id))
        });
        answers
    }

    /// `fleet.status`: the mesh view, counted.
    fn status(&self) -> FleetOverview {
        let now = claw_attestation::unix_millis(std::time::SystemTime::now());
        let mut by_model: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
        let mut alerts = Vec::new();
        let members = self.members();
        let nodes: Vec<FleetNode> = members
            .iter()
            .map(|m| {
                let a = &m.announcement;
                let allocated: std::collections::HashSet<&String> =
                    a.allocated_gpus.iter().collect();
                for gpu in &a.inventory.gpus {
                    let entry = by_model.entry(gpu.model.clone()).or_default();
                    entry.0 += 1;
                    if !allocated.contains(&gpu.uuid) {
                        entry.1 += 1;
                    }
                    if gpu.simulated {
                        entry.2 += 1;
                    }
                }
                if a.cordoned {
                    alerts.push(format!("{} is cordoned", a.name));
                }
                if a.inventory.gpus.is_empty() {
                    alerts.push(format!("{} reports no GPUs", a.name));
                }
                FleetNode {
                    node: a.name.clone(),
                    peer_id: m.peer_id.to_string(),
                    region: a.region.clone(),
                    labels: a.labels.clone(),
                    cordoned: a.cordoned,
                    gpus: a.inventory.gpus.len(),
                    free_gpus: a.free_gpu_count(),
                    allocated_gpus: a.allocated_gpus.len(),
                    running_workloads: a.running_workloads,
                    simulated: a.inventory.gpus.iter().any(|g| g.simulated),
                    models: a.inventory.gpus.iter().map(|g| g.model.clone()).collect(),
                    software_version: a.software_version.clone(),
                    reachability: a.reachability_text().to_owned(),
                    announced_ms_ago: now.saturating_sub(m.issued_at_ms),
                }
            })
            .collect();
        let counts = |(total, free, simulated): (usize, usize, usize)| GpuCounts {
            total,
            free,
            allocated: total - free,
            simulated,
        };
        let totals = by_model
            .values()
            .fold((0, 0, 0), |t, m| (t.0 + m.0, t.1 + m.1, t.2 + m.2));
        FleetOverview {
            node_count: nodes.len(),
            nodes,
            running_workloads: members
                .iter()
                .map(|m| u64::from(m.announcement.running_workloads))
                .sum(),
            gpus: counts(totals),
            gpus_by_model: by_model
                .into_iter()
                .map(|(model, tally)| (model, counts(tally)))
                .collect(),
            alerts,
        }
    }

    /// `fleet.gpus`: the mesh view's GPUs, with each one's `gpu.metrics` reading when asked.
    async fn gpus(&self, params: GpusParams) -> FleetGpuListing {
        let members = self.members();
        let mut live: BTreeMap<String, GpuReading> = BTreeMap::new();
        if params.live {
            for answer in self
                .fan_out(
                    members.clone(),
                    GpuMetrics::NAME,
                    &Value::Null,
                    DEFAULT_CONCURRENCY,
                    NODE_DEADLINE,
                )
                .await
            {
                if let Ok(readings) = answer.result.and_then(GpuMetrics::decode) {
                    for gpu in readings.gpus {
                        live.insert(gpu.metrics.uuid.clone(), gpu);
                    }
                }
            }
        }
        let gpus = members
            .iter()
            .flat_map(|m| {
                let allocated = &m.announcement.allocated_gpus;
                m.announcement
                    .inventory
                    .gpus
                    .iter()
                    .map(move |g| (m, g, allocated.contains(&g.uuid)))
            })
            .filter(|(_, g, _)| {
                params
                    .model
                    .as_ref()
                    .is_none_or(|model| g.model.contains(model.as_str()))
            })
            .map(|(m, g, allocated)| FleetGpu {
                node: m.announcement.name.clone(),
                peer_id: m.peer_id.to_string(),
                uuid: g.uuid.clone(),
                model: g.model.clone(),
                memory_mib: g.memory_total_bytes / (1024 * 1024),
                simulated: g.simulated,
                allocated,
                metrics: live.get(&g.uuid).cloned(),
            })
            .collect();
        FleetGpuListing { gpus }
    }

    /// `fleet.invoke`: any node command on the nodes named, each answer passed on as it came.
    async fn invoke(&self, params: InvokeParams) -> Result<InvokeReport, InvokeFailure> {
        if params.command.is_empty()
            || params.command.len() > claw_mesh::MAX_COMMAND_LEN
            || params.command.starts_with("fleet.")
        {
            return Err(InvokeFailure::new(
                ErrorCode::InvalidParams,
                "command must be a node command",
            ));
        }
        let members = match &params.nodes {
            None => self.members(),
            Some(nodes) => nodes
                .iter()
                .map(|n| self.resolve(n))
                .collect::<Result<_, _>>()?,
        };
        let deadline =
            Duration::from_millis(params.timeout_ms.unwrap_or(10_000).clamp(100, 120_000));
        let answers = self
            .fan_out(
                members,
                &params.command,
                &params.params,
                params.concurrency.unwrap_or(DEFAULT_CONCURRENCY),
                deadline,
            )
            .await;
        let ok = answers.iter().filter(|a| a.result.is_ok()).count();
        Ok(InvokeReport {
            command: params.command,
            nodes: answers.len(),
            succeeded: ok,
            failed: answers.len() - ok,
            results: answers.into_iter().map(|a| a.into_result(Ok)).collect(),
        })
    }

    /// `fleet.health`: `node.health` on every node, decoded with its definition. A node whose
    /// answer does not decode counts as `unknown`, with the decoding error as its failure.
    async fn health(&self) -> FleetHealthReport {
        let answers = self
            .fan_out(
                self.members(),
                NodeHealth::NAME,
                &Value::Null,
                DEFAULT_CONCURRENCY,
                NODE_DEADLINE,
            )
            .await;
        let mut summary: BTreeMap<NodeCondition, usize> = BTreeMap::new();
        let nodes = answers
            .into_iter()
            .map(|answer| {
                let reached = answer.result.is_ok();
                let part = answer.into_result(NodeHealth::decode);
                let condition = match &part.result {
                    Some(report) => NodeCondition::from(report.status),
                    None if reached => NodeCondition::Unknown,
                    None => NodeCondition::Unreachable,
                };
                *summary.entry(condition).or_default() += 1;
                part
            })
            .collect();
        FleetHealthReport { summary, nodes }
    }

    /// `fleet.workloads`: `workload.list` on the nodes, decoded with its definition and
    /// filtered; a node that fails or answers what does not decode is listed as unreachable.
    async fn workloads(
        &self,
        params: WorkloadsParams,
    ) -> Result<FleetWorkloadListing, InvokeFailure> {
        let members = match &params.node {
            Some(node) => vec![self.resolve(node)?],
            None => self.members(),
        };
        let answers = self
            .fan_out(
                members,
                WorkloadList::NAME,
                &json!({"all": true}),
                DEFAULT_CONCURRENCY,
                NODE_DEADLINE,
            )
            .await;
        let mut workloads = Vec::new();
        let mut unreachable = Vec::new();
        for answer in answers {
            match answer.result.and_then(WorkloadList::decode) {
                Ok(listing) => {
                    let matches = |workload: &Workload| {
                        params
                            .state
                            .as_ref()
                            .is_none_or(|s| workload.state.to_string() == *s)
                            && params
                                .image
                                .as_ref()
                                .is_none_or(|i| workload.image.contains(i.as_str()))
                    };
                    workloads.extend(listing.workloads.into_iter().filter(matches).map(
                        |workload| NodeWorkload {
                            workload,
                            node: answer.member.announcement.name.clone(),
                            peer_id: answer.member.peer_id.to_string(),
                        },
                    ));
                }
                Err(error) => unreachable.push(NodeFailure {
                    node: answer.member.announcement.name,
                    error: error.message,
                }),
            }
        }
        Ok(FleetWorkloadListing {
            workloads,
            unreachable,
        })
    }

    /// `fleet.deploy`: `workload.run` on the best-scored node with room, or, for a retried
    /// idempotency key, on the node placed before.
    async fn deploy(
        &self,
        params: DeployParams,
        idempotency_key: Option<String>,
    ) -> Result<Deployment, InvokeFailure> {
        let run = json!({
            "image": params.image,
            "command": params.command,
            "name": params.name,
            "env": params.env,
            "gpus": params.gpus,
            "cpus": params.cpus,
            "memory_mib": params.memory_mib,
            "labels": params.labels,
        });
        // A retry goes back to the node the first attempt chose: it answers with the workload
        // the key started (scores have changed since, as that workload took its GPUs).
        if let Some(key) = &idempotency_key
            && let Some(placed) = self.placements.get(key).await.map_err(placement_failure)?
            && let Ok(member) = self.resolve(&placed.peer_id)
        {
            match self.start_on(&member, &run, Some(key)).await {
                Ok(workload) => {
                    return Ok(Deployment {
                        node: member.announcement.name,
                        peer_id: placed.peer_id,
                        why: placed.why,
                        considered: placed.considered,
                        workload,
                        retried: true,
                    });
                }
                Err(e) if matches!(e.code, ErrorCode::Conflict | ErrorCode::Unavailable) => {
                    tracing::info!(node = %member.announcement.name, error = %e, "the placed node refuses a retried deploy; placing it again");
                }
                Err(e) => return Err(e),
            }
        }
        let request = PlacementRequest {
            gpus: params.gpus as usize,
            model: params.model.clone(),
            min_memory_mib: params.min_memory_mib,
        };
        let feasible: Vec<FleetMember> = self
            .members()
            .into_iter()
            .filter(|m| !m.announcement.cordoned && request.free_on(m) >= request.gpus)
            .collect();
        if feasible.is_empty() {
            return Err(InvokeFailure::new(
                ErrorCode::Conflict,
                format!(
                    "no node has {}; fleet.status shows what is free",
                    request.describe()
                ),
            ));
        }
        let ranked = rank(&request, self.readings(feasible).await);
        let considered: Vec<PlacementScore> = ranked.iter().map(|r| r.why.clone()).collect();
        // The best first; if another deploy took its GPUs meanwhile (the mesh view lags by up
        // to an announce interval), the next. When every one refuses, each refusal is said.
        let mut refusals = Vec::new();
        for ranked in ranked {
            let member = ranked.member;
            if let Some(key) = &idempotency_key {
                let placement = Placement {
                    peer_id: member.peer_id.to_string(),
                    why: ranked.why.clone(),
                    considered: considered.clone(),
                    at_ms: claw_attestation::unix_millis(std::time::SystemTime::now()),
                };
                self.placements
                    .record(key, &placement)
                    .await
                    .map_err(placement_failure)?;
            }
            match self
                .start_on(&member, &run, idempotency_key.as_deref())
                .await
            {
                Ok(workload) => {
                    return Ok(Deployment {
                        node: member.announcement.name,
                        peer_id: member.peer_id.to_string(),
                        why: ranked.why,
                        considered,
                        workload,
                        retried: false,
                    });
                }
                Err(error)
                    if error.code == ErrorCode::Conflict
                        || error.code == ErrorCode::Unavailable =>
                {
                    refusals.push(format!("{}: {}", member.announcement.name, error.message));
                }
                Err(error) => return Err(error),
            }
        }
        Err(InvokeFailure::new(
            ErrorCode::Conflict,
            if refusals.is_empty() {
                format!(
                    "no node has {} and is healthy and reachable",
                    request.describe()
                )
            } else {
                format!(
                    "no node has {} now: {}",
                    request.describe(),
                    refusals.join("; ")
                )
            },
        ))
    }

    /// `workload.run` on `member`, with the caller's idempotency key when it gave one; its
    /// answer decoded with the command's definition.
    async fn start_on(
        &self,
        member: &FleetMember,
        run: &Value,
        key: Option<&str>,
    ) -> Result<Workload, InvokeFailure> {
        self.call(
            member.peer_id,
            WorkloadRun::NAME,
            run.clone(),
            DEPLOY_DEADLINE,
            key.map(str::to_owned),
        )
        .await
        .and_then(WorkloadRun::decode)
    }

    /// What the score reads of each of `members`: GPU metrics and health, both at once.
    async fn readings(&self, members: Vec<FleetMember>) -> Vec<NodeReadings> {
        let (metrics, health) = futures::join!(
            self.fan_out(
                members.clone(),
                GpuMetrics::NAME,
                &Value::Null,
                DEFAULT_CONCURRENCY,
                Duration::from_secs(3),
            ),
            self.fan_out(
                members,
                NodeHealth::NAME,
                &Value::Null,
                DEFAULT_CONCURRENCY,
                Duration::from_secs(3),
            ),
        );
        // Each answer list is sorted by node name, so they pair up.
        metrics
            .into_iter()
            .zip(health)
            .map(|(m, h)| {
                let gpus = m
                    .result
                    .and_then(GpuMetrics::decode)
                    .map(|readings| {
                        readings
                            .gpus
                            .iter()
                            .map(|g| GpuLoad {
                                utilization_pct: g.metrics.utilization_gpu_pct.map(f64::from),
                                temperature_c: g.metrics.temperature_c.map(f64::from),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let health = h
                    .result
                    .ok()
                    .and_then(|r| NodeHealth::decode(r).ok())
                    .map(|report| report.status);
                NodeReadings {
                    member: m.member,
                    health,
                    gpus,
                }
            })
            .collect()
    }

    /// `fleet.drain`: `node.drain` on one node, its answer decoded with the command's
    /// definition.
    async fn drain(&self, params: DrainParams) -> Result<FleetDrainReport, InvokeFailure> {
        let member = self.resolve(&params.node)?;
        let drain = self
            .call(
                member.peer_id,
                NodeDrain::NAME,
                Value::Null,
                Duration::from_secs(120),
                None,
            )
            .await
            .and_then(NodeDrain::decode)?;
        Ok(FleetDrainReport {
            node: member.announcement.name,
            peer_id: member.peer_id.to_string(),
            drain,
        })
    }

    /// Command `C` on the market node, with the params the bridge parsed; its answer is decoded
    /// with the command's definition, so the gateway gets only what the definition says.
    async fn forward<C: Command>(
        &self,
        params: &impl Serialize,
        call: Call,
    ) -> Result<C::Answer, InvokeFailure> {
        let Some(node) = self.market_node else {
            return Err(InvokeFailure::new(
                ErrorCode::Unavailable,
                "the bridge has no market node: start it with --market-node <peer id>",
            ));
        };
        let params = serde_json::to_value(params)
            .map_err(|e| InvokeFailure::new(ErrorCode::Internal, format!("cannot encode: {e}")))?;
        self.call(node, C::NAME, params, call.timeout, call.idempotency_key)
            .await
            .and_then(C::decode)
    }
}

impl GatewayHandler for FleetCommands {
    fn handle(&self, command: String, params: Value, call: GatewayCall) -> CommandFuture {
        let mut commands = self.clone();
        commands.api_key = call.api_key;
        let call = Call {
            timeout: call.timeout,
            idempotency_key: call.idempotency_key,
        };
        Box::pin(async move {
            if commands.api_key.is_some() {
                commands.check_key(&command, &params).await?;
            } else if commands.require_api_key {
                return Err(InvokeFailure::new(
                    ErrorCode::Unauthorized,
                    "this bridge answers only calls that carry an API key (the plugin's apiKey \
                     setting; auth.create_key makes one)",
                ));
            }
            router().dispatch(commands, call, &command, params).await
        })
    }
}

/// The bridge's answer to peers that invoke it over the mesh: it serves the gateway only.
#[derive(Debug)]
pub struct NoMeshCommands;

impl claw_mesh::InvokeHandler for NoMeshCommands {
    fn handle(&self, _caller: PeerId, request: InvokeRequest) -> claw_mesh::HandlerFuture {
        Box::pin(async move {
            claw_mesh::InvokeResponse::Error(claw_mesh::InvokeFailure::new(
                claw_mesh::ErrorCode::UnknownCommand,
                format!("the bridge answers no mesh commands ({})", request.command),
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use claw_attestation::{
        HardwareInventory, HostInfo, NodeIdentity, NvmlStatus, SimulatedGpuProfile,
    };
    use claw_mesh::NodeAnnouncement;

    use super::*;
    use HealthStatus::{Degraded, Healthy, Unhealthy};

    /// A member named `name` with one simulated GPU per `(model, memory_mib)`, the first
    /// `allocated` of them taken.
    fn node(name: &str, gpus: &[(&str, u64)], allocated: usize) -> FleetMember {
        let identity = NodeIdentity::generate();
        let gpus: Vec<_> = gpus
            .iter()
            .zip(0..)
            .map(|(&(model, memory_mib), index)| {
                let profile = SimulatedGpuProfile {
                    model: model.to_owned(),
                    count: 1,
                    memory_mib,
                };
                profile.device(index, &identity.public_key())
            })
            .collect();
        FleetMember {
            peer_id: identity.peer_id(),
            announcement: NodeAnnouncement {
                name: name.to_owned(),
                network: "localnet".to_owned(),
                region: None,
                labels: BTreeMap::new(),
                software_version: "test".to_owned(),
                listen_addrs: vec![],
                allocated_gpus: gpus
                    .iter()
                    .take(allocated)
                    .map(|g| g.uuid.clone())
                    .collect(),
                inventory: HardwareInventory {
                    host: HostInfo::default(),
                    nvml: NvmlStatus::Unavailable {
                        reason: "test".to_owned(),
                    },
                    gpus,
                },
                cordoned: false,
                running_workloads: 0,
                taints: Vec::new(),
                reachability: Default::default(),
                membership: None,
            },
            seq: 1,
            issued_at_ms: 0,
            expires_at_ms: u64::MAX,
            standing: claw_mesh::Standing::Open,
        }
    }

    /// Two H100s, the first `allocated` taken.
    fn two_gpus(name: &str, allocated: usize) -> FleetMember {
        node(name, &[("NVIDIA H100", 81_559); 2], allocated)
    }

    fn readings(
        member: FleetMember,
        health: Option<HealthStatus>,
        util: f64,
        temp: f64,
    ) -> NodeReadings {
        let gpus = member
            .announcement
            .inventory
            .gpus
            .iter()
            .map(|_| GpuLoad {
                utilization_pct: Some(util),
                temperature_c: Some(temp),
            })
            .collect();
        NodeReadings {
            member,
            health,
            gpus,
        }
    }

    fn order(ranked: &[Ranked]) -> Vec<&str> {
        ranked
            .iter()
            .map(|r| r.member.announcement.name.as_str())
            .collect()
    }

    const ANY: PlacementRequest = PlacementRequest {
        gpus: 1,
        model: None,
        min_memory_mib: 0,
    };

    #[test]
    fn every_bridge_command_is_routed_and_nothing_else() {
        let routed: Vec<&str> = router().names().collect();
        let mut listed: Vec<&str> = BRIDGE_COMMANDS.iter().map(|c| c.name).collect();
        listed.sort_unstable();
        assert_eq!(routed, listed);
    }

    #[test]
    fn free_idle_cool_healthy_nodes_come_first() {
        let ranked = rank(
            &ANY,
            vec![
                readings(two_gpus("busy", 0), Some(Healthy), 90.0, 40.0),
                readings(two_gpus("idle", 0), Some(Healthy), 0.0, 40.0),
                readings(two_gpus("hot", 0), Some(Healthy), 0.0, 85.0),
                readings(two_gpus("half", 1), Some(Healthy), 0.0, 40.0),
                readings(two_gpus("degraded", 0), Some(Degraded), 0.0, 40.0),
            ],
        );
        assert_eq!(order(&ranked), ["idle", "hot", "degraded", "half", "busy"]);
        let best = &ranked[0];
        assert_eq!(best.why.free_gpus, 2);
        assert_eq!(best.why.health, Healthy);
        // 35 free + 25 idle + 20 × 0.6 cool + 20 healthy.
        assert_eq!(best.why.score, 92.0);
    }

    #[test]
    fn unhealthy_and_unreachable_nodes_are_left_out_and_ties_go_by_name() {
        let ranked = rank(
            &ANY,
            vec![
                readings(two_gpus("n3", 0), Some(Healthy), 10.0, 50.0),
                readings(two_gpus("n1", 0), Some(Healthy), 10.0, 50.0),
                readings(two_gpus("sick", 0), Some(Unhealthy), 0.0, 30.0),
                readings(two_gpus("gone", 0), None, 0.0, 30.0),
            ],
        );
        assert_eq!(order(&ranked), ["n1", "n3"]);
    }

    #[test]
    fn without_readings_a_node_gets_half_marks_and_only_fitting_gpus_count() {
        let mixed = node(
            "mixed",
            &[("NVIDIA H100", 81_559), ("NVIDIA A10", 24_000)],
            0,
        );
        let request = PlacementRequest {
            gpus: 1,
            model: Some("H100".to_owned()),
            min_memory_mib: 40_000,
        };
        assert_eq!(request.counts(&mixed), (1, 1));
        let silent = NodeReadings {
            member: mixed,
            health: Some(Healthy),
            gpus: vec![],
        };
        let ranked = rank(&request, vec![silent]);
        // 35 free + 25 × 0.5 + 20 × 0.5 + 20 healthy.
        assert_eq!(ranked[0].why.score, 77.5);
        assert_eq!(
            request.describe(),
            "1 free GPU(s) of model H100 with 40000 MiB"
        );
    }
}
