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
use std::time::{Duration, Instant};

use claw_mesh::{FleetMember, InvokeRequest, MeshHandle, PeerId};
use futures::StreamExt as _;
use schemars::JsonSchema;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::gateway::{CommandFailure, CommandFuture, GatewayHandler};

/// Most node calls in flight at once for one fleet command.
const DEFAULT_CONCURRENCY: usize = 16;
/// Deadline of one node call when the command gives none.
const NODE_DEADLINE: Duration = Duration::from_secs(10);

fn failure(code: &str, message: impl Into<String>) -> CommandFailure {
    CommandFailure {
        code: code.to_owned(),
        message: message.into(),
    }
}

fn schema<T: JsonSchema>() -> Value {
    serde_json::to_value(schemars::schema_for!(T)).unwrap_or(Value::Null)
}

fn parse<T: DeserializeOwned>(command: &str, params: Value) -> Result<T, CommandFailure> {
    let params = if params.is_null() { json!({}) } else { params };
    serde_json::from_value(params).map_err(|e| failure("INVALID_PARAMS", format!("{command}: {e}")))
}

/// Commands that take no params.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct NoParams {}

/// `fleet.gpus`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct GpusParams {
    /// Only GPUs whose model contains this.
    #[serde(default)]
    model: Option<String>,
    /// Also read live metrics from every node (`gpu.metrics`, fanned out).
    #[serde(default)]
    live: bool,
}

/// `fleet.invoke`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct InvokeParams {
    /// Any node command, e.g. `node.health`.
    command: String,
    /// Its params.
    #[serde(default)]
    params: Value,
    /// Nodes by peer id or name; every node when absent.
    #[serde(default)]
    nodes: Option<Vec<String>>,
    /// Most calls in flight (default 16).
    #[serde(default)]
    concurrency: Option<usize>,
    /// Deadline per node, ms (default 10,000).
    #[serde(default)]
    timeout_ms: Option<u64>,
}

/// `fleet.workloads`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct WorkloadsParams {
    /// Only workloads in this state (`running`, `exited`, …).
    #[serde(default)]
    state: Option<String>,
    /// Only workloads whose image contains this.
    #[serde(default)]
    image: Option<String>,
    /// Only this node (peer id or name).
    #[serde(default)]
    node: Option<String>,
}

/// `fleet.drain`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct DrainParams {
    /// The node, by peer id or name.
    node: String,
}

/// `fleet.deploy`: what to run and on what kind of GPUs; the bridge picks the node.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct DeployParams {
    /// Image reference.
    image: String,
    /// Command and arguments.
    #[serde(default)]
    command: Vec<String>,
    /// A display name.
    #[serde(default)]
    name: Option<String>,
    /// Environment variables (passed to the container, never stored).
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// GPUs needed on one node.
    #[serde(default)]
    gpus: u32,
    /// Only GPUs whose model contains this (e.g. `H100`).
    #[serde(default)]
    model: Option<String>,
    /// Minimum memory per GPU, MiB.
    #[serde(default)]
    min_memory_mib: u64,
    /// CPU limit in cores.
    #[serde(default)]
    cpus: Option<f64>,
    /// Memory limit, MiB.
    #[serde(default)]
    memory_mib: Option<u64>,
    /// Labels for the container.
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// Params forwarded as they are to the market node.
#[derive(Debug, Deserialize, JsonSchema)]
struct ForwardedParams {}

struct Spec {
    name: &'static str,
    description: &'static str,
    params: fn() -> Value,
}

const COMMANDS: &[Spec] = &[
    Spec {
        name: "fleet.capabilities",
        description: "The bridge's commands with the JSON schema of their params",
        params: schema::<NoParams>,
    },
    Spec {
        name: "fleet.status",
        description: "Nodes, GPUs by model (total, allocated, free, simulated), cordons and alerts, from the mesh view: no fan-out",
        params: schema::<NoParams>,
    },
    Spec {
        name: "fleet.gpus",
        description: "Every GPU in the fleet with its node and availability; live metrics on request",
        params: schema::<GpusParams>,
    },
    Spec {
        name: "fleet.deploy",
        description: "Place a workload: the node with free GPUs of the model that scores best on free GPUs, utilisation, temperature and health runs it; answers the node and why",
        params: schema::<DeployParams>,
    },
    Spec {
        name: "fleet.workloads",
        description: "Workloads across the fleet, filtered by state, image or node",
        params: schema::<WorkloadsParams>,
    },
    Spec {
        name: "fleet.invoke",
        description: "Run any node command on chosen or all nodes with bounded concurrency; per-node result and timing",
        params: schema::<InvokeParams>,
    },
    Spec {
        name: "fleet.health",
        description: "Every node's health, with counts of healthy, degraded, unhealthy and unreachable nodes",
        params: schema::<NoParams>,
    },
    Spec {
        name: "fleet.drain",
        description: "Cordon a node and stop its workloads",
        params: schema::<DrainParams>,
    },
    Spec {
        name: "market.offers",
        description: "GPU offers in the order book (through the market node)",
        params: schema::<ForwardedParams>,
    },
    Spec {
        name: "market.bid",
        description: "Bid, lease and run, or why no match (through the market node)",
        params: schema::<ForwardedParams>,
    },
    Spec {
        name: "market.leases",
        description: "Leases of the market node",
        params: schema::<ForwardedParams>,
    },
    Spec {
        name: "market.lease.cancel",
        description: "End a lease the market node bought and settle it: pro rata for the time served, the rest back (through the market node)",
        params: schema::<ForwardedParams>,
    },
    Spec {
        name: "wallet.balance",
        description: "SOL and MOLT of the market node's wallet",
        params: schema::<ForwardedParams>,
    },
];

/// The fleet commands, served to the gateway. Cheap to clone.
#[derive(Clone)]
pub struct FleetCommands {
    mesh: MeshHandle,
    market_node: Option<PeerId>,
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
    result: Result<Value, CommandFailure>,
    ms: f64,
}

impl NodeAnswer {
    fn to_json(&self) -> Value {
        let mut value = json!({
            "node": self.member.announcement.name,
            "peer_id": self.member.peer_id.to_string(),
            "ms": self.ms,
            "ok": self.result.is_ok(),
        });
        match &self.result {
            Ok(result) => value["result"] = result.clone(),
            Err(error) => value["error"] = json!({"code": error.code, "message": error.message}),
        }
        value
    }
}

impl FleetCommands {
    /// Fleet commands over `mesh`; market commands go to `market_node` when one is given.
    pub fn new(mesh: MeshHandle, market_node: Option<PeerId>) -> Self {
        Self { mesh, market_node }
    }

    /// The exact names of the commands, as declared to the gateway.
    pub fn names() -> Vec<String> {
        COMMANDS.iter().map(|c| c.name.to_owned()).collect()
    }

    fn members(&self) -> Vec<FleetMember> {
        let mut members = self.mesh.fleet();
        members.sort_by(|a, b| {
            (&a.announcement.name, a.peer_id).cmp(&(&b.announcement.name, b.peer_id))
        });
        members
    }

    /// The fleet member a peer id or name names.
    fn resolve(&self, node: &str) -> Result<FleetMember, CommandFailure> {
        self.members()
            .into_iter()
            .find(|m| m.peer_id.to_string() == node || m.announcement.name == node)
            .ok_or_else(|| {
                failure(
                    "NOT_FOUND",
                    format!("no node {node:?} in the fleet (fleet.status lists them)"),
                )
            })
    }

    async fn call(
        &self,
        peer: PeerId,
        command: &str,
        params: Value,
        deadline: Duration,
    ) -> Result<Value, CommandFailure> {
        let request = InvokeRequest::new(command, deadline).with_params(params);
        self.mesh
            .invoke(peer, request)
            .await
            .map_err(|e| failure(&e.code.to_string(), e.message))
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
                let result = self.call(member.peer_id, command, params, deadline).await;
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

    fn status(&self) -> Value {
        let now = claw_attestation::unix_millis(std::time::SystemTime::now());
        let mut by_model: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
        let mut alerts = Vec::new();
        let members = self.members();
        let nodes: Vec<Value> = members
            .iter()
            .map(|m| {
                let a = &m.announcement;
                let allocated: std::collections::HashSet<&String> = a.allocated_gpus.iter().collect();
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
                json!({
                    "node": a.name,
                    "peer_id": m.peer_id.to_string(),
                    "region": a.region,
                    "labels": a.labels,
                    "cordoned": a.cordoned,
                    "gpus": a.inventory.gpus.len(),
                    "free_gpus": a.free_gpu_count(),
                    "allocated_gpus": a.allocated_gpus.len(),
                    "running_workloads": a.running_workloads,
                    "simulated": a.inventory.gpus.iter().any(|g| g.simulated),
                    "models": a.inventory.gpus.iter().map(|g| g.model.clone()).collect::<std::collections::BTreeSet<_>>(),
                    "software_version": a.software_version,
                    "announced_ms_ago": now.saturating_sub(m.issued_at_ms),
                })
            })
            .collect();
        let totals = by_model
            .values()
            .fold((0, 0, 0), |t, m| (t.0 + m.0, t.1 + m.1, t.2 + m.2));
        json!({
            "nodes": nodes,
            "node_count": nodes.len(),
            "running_workloads": members.iter().map(|m| u64::from(m.announcement.running_workloads)).sum::<u64>(),
            "gpus": {"total": totals.0, "free": totals.1, "allocated": totals.0 - totals.1, "simulated": totals.2},
            "gpus_by_model": by_model.iter().map(|(model, (total, free, simulated))| (model.clone(), json!({"total": total, "free": free, "allocated": total - free, "simulated": simulated}))).collect::<serde_json::Map<_, _>>(),
            "alerts": alerts,
        })
    }

    async fn gpus(&self, params: GpusParams) -> Value {
        let members = self.members();
        let mut live: BTreeMap<String, Value> = BTreeMap::new();
        if params.live {
            for answer in self
                .fan_out(
                    members.clone(),
                    "gpu.metrics",
                    &Value::Null,
                    DEFAULT_CONCURRENCY,
                    NODE_DEADLINE,
                )
                .await
            {
                if let Ok(result) = answer.result {
                    for gpu in result["gpus"].as_array().into_iter().flatten() {
                        if let Some(uuid) = gpu["uuid"].as_str() {
                            live.insert(uuid.to_owned(), gpu.clone());
                        }
                    }
                }
            }
        }
        let gpus: Vec<Value> = members
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
            .map(|(m, g, allocated)| {
                json!({
                    "node": m.announcement.name,
                    "peer_id": m.peer_id.to_string(),
                    "uuid": g.uuid,
                    "model": g.model,
                    "memory_mib": g.memory_total_bytes / (1024 * 1024),
                    "simulated": g.simulated,
                    "allocated": allocated,
                    "metrics": live.get(&g.uuid),
                })
            })
            .collect();
        json!({ "gpus": gpus })
    }

    async fn invoke(&self, params: InvokeParams) -> Result<Value, CommandFailure> {
        if params.command.is_empty()
            || params.command.len() > claw_mesh::MAX_COMMAND_LEN
            || params.command.starts_with("fleet.")
        {
            return Err(failure("INVALID_PARAMS", "command must be a node command"));
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
        Ok(json!({
            "command": params.command,
            "nodes": answers.len(),
            "succeeded": ok,
            "failed": answers.len() - ok,
            "results": answers.iter().map(NodeAnswer::to_json).collect::<Vec<_>>(),
        }))
    }

    async fn health(&self) -> Value {
        let answers = self
            .fan_out(
                self.members(),
                "node.health",
                &Value::Null,
                DEFAULT_CONCURRENCY,
                NODE_DEADLINE,
            )
            .await;
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for answer in &answers {
            let status = match &answer.result {
                Ok(result) => result["status"].as_str().unwrap_or("unknown"),
                Err(_) => "unreachable",
            };
            *counts.entry(status).or_default() += 1;
        }
        json!({ "summary": counts, "nodes": answers.iter().map(NodeAnswer::to_json).collect::<Vec<_>>() })
    }

    async fn workloads(&self, params: WorkloadsParams) -> Result<Value, CommandFailure> {
        let members = match &params.node {
            Some(node) => vec![self.resolve(node)?],
            None => self.members(),
        };
        let answers = self
            .fan_out(
                members,
                "workload.list",
                &json!({"all": true}),
                DEFAULT_CONCURRENCY,
                NODE_DEADLINE,
            )
            .await;
        let mut workloads = Vec::new();
        let mut unreachable = Vec::new();
        for answer in answers {
            match answer.result {
                Ok(result) => {
                    for workload in result["workloads"].as_array().into_iter().flatten() {
                        let state_ok = params
                            .state
                            .as_ref()
                            .is_none_or(|s| workload["state"] == s.as_str());
                        let image_ok = params.image.as_ref().is_none_or(|i| {
                            workload["image"]
                                .as_str()
                                .is_some_and(|w| w.contains(i.as_str()))
                        });
                        if state_ok && image_ok {
                            let mut workload = workload.clone();
                            workload["node"] = json!(answer.member.announcement.name);
                            workload["peer_id"] = json!(answer.member.peer_id.to_string());
                            workloads.push(workload);
                        }
                    }
                }
                Err(error) => unreachable
                    .push(json!({"node": answer.member.announcement.name, "error": error.message})),
            }
        }
        Ok(json!({ "workloads": workloads, "unreachable": unreachable }))
    }

    async fn deploy(&self, params: DeployParams) -> Result<Value, CommandFailure> {
        let wanted = params.gpus as usize;
        let model = params.model.clone();
        let fits = |g: &claw_attestation::GpuDevice| {
            model.as_ref().is_none_or(|m| g.model.contains(m.as_str()))
                && g.memory_total_bytes / (1024 * 1024) >= params.min_memory_mib
        };
        let feasible: Vec<FleetMember> = self
            .members()
            .into_iter()
            .filter(|m| !m.announcement.cordoned)
            .filter(|m| {
                let a = &m.announcement;
                a.inventory
                    .gpus
                    .iter()
                    .filter(|g| fits(g) && !a.allocated_gpus.contains(&g.uuid))
                    .count()
                    >= wanted
            })
            .collect();
        if feasible.is_empty() {
            return Err(failure(
                "CONFLICT",
                format!(
                    "no node has {wanted} free GPU(s){}{}; fleet.status shows what is free",
                    model
                        .as_ref()
                        .map(|m| format!(" of model {m}"))
                        .unwrap_or_default(),
                    if params.min_memory_mib > 0 {
                        format!(" with {} MiB", params.min_memory_mib)
                    } else {
                        String::new()
                    },
                ),
            ));
        }
        // Live readings for the score, from the feasible nodes only.
        // Both readings at once; each answer list is sorted by node name, so they pair up.
        let (metrics, health) = futures::join!(
            self.fan_out(
                feasible.clone(),
                "gpu.metrics",
                &Value::Null,
                DEFAULT_CONCURRENCY,
                Duration::from_secs(3),
            ),
            self.fan_out(
                feasible.clone(),
                "node.health",
                &Value::Null,
                DEFAULT_CONCURRENCY,
                Duration::from_secs(3),
            ),
        );
        let mut candidates: Vec<(f64, Value, FleetMember)> = Vec::new();
        for (m, h) in metrics.into_iter().zip(health) {
            let a = &m.member.announcement;
            let status = h
                .result
                .as_ref()
                .ok()
                .and_then(|r| r["status"].as_str().map(str::to_owned))
                .unwrap_or_else(|| "unreachable".to_owned());
            if status == "unhealthy" || status == "unreachable" {
                continue;
            }
            let free = a
                .inventory
                .gpus
                .iter()
                .filter(|g| fits(g) && !a.allocated_gpus.contains(&g.uuid))
                .count();
            let total = a.inventory.gpus.iter().filter(|g| fits(g)).count().max(1);
            let readings: Vec<&Value> = m
                .result
                .as_ref()
                .ok()
                .and_then(|r| r["gpus"].as_array())
                .map(|g| g.iter().collect())
                .unwrap_or_default();
            let mean = |field: &str, scale: f64| {
                let values: Vec<f64> = readings.iter().filter_map(|g| g[field].as_f64()).collect();
                if values.is_empty() {
                    0.5
                } else {
                    1.0 - (values.iter().sum::<f64>() / values.len() as f64 / scale).clamp(0.0, 1.0)
                }
            };
            let free_score = free as f64 / total as f64;
            let util_score = mean("utilization_gpu_pct", 100.0);
            let temp_score = mean("temperature_c", 100.0);
            let health_score = if status == "healthy" { 1.0 } else { 0.5 };
            let score =
                35.0 * free_score + 25.0 * util_score + 20.0 * temp_score + 20.0 * health_score;
            let why = json!({
                "node": a.name,
                "peer_id": m.member.peer_id.to_string(),
                "score": (score * 10.0).round() / 10.0,
                "free_gpus": free,
                "free_share": free_score,
                "idle_share": util_score,
                "cool_share": temp_score,
                "health": status,
            });
            candidates.push((score, why, m.member));
        }
        candidates.sort_by(|a, b| {
            b.0.total_cmp(&a.0)
                .then_with(|| a.2.announcement.name.cmp(&b.2.announcement.name))
        });
        let considered: Vec<Value> = candidates.iter().map(|(_, why, _)| why.clone()).collect();
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
        // The best first; if another deploy took its GPUs meanwhile (the mesh view lags by up
        // to an announce interval), the next. When every one refuses, each refusal is said.
        let mut refusals = Vec::new();
        for (_, why, member) in candidates {
            match self
                .call(
                    member.peer_id,
                    "workload.run",
                    run.clone(),
                    Duration::from_secs(120),
                )
                .await
            {
                Ok(workload) => {
                    return Ok(json!({
                        "node": member.announcement.name,
                        "peer_id": member.peer_id.to_string(),
                        "why": why,
                        "considered": considered,
                        "workload": workload,
                    }));
                }
                Err(error) if error.code == "CONFLICT" || error.code == "UNAVAILABLE" => {
                    refusals.push(format!("{}: {}", member.announcement.name, error.message));
                }
                Err(error) => return Err(error),
            }
        }
        Err(failure(
            "CONFLICT",
            if refusals.is_empty() {
                format!("no node has {wanted} free GPU(s) and is healthy and reachable")
            } else {
                format!(
                    "no node has {wanted} free GPU(s) now: {}",
                    refusals.join("; ")
                )
            },
        ))
    }

    async fn forward(
        &self,
        command: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value, CommandFailure> {
        let Some(node) = self.market_node else {
            return Err(failure(
                "UNAVAILABLE",
                "the bridge has no market node: start it with --market-node <peer id>",
            ));
        };
        self.call(node, command, params, timeout).await
    }

    async fn dispatch(
        &self,
        command: String,
        params: Value,
        timeout: Duration,
    ) -> Result<Value, CommandFailure> {
        let c = command.as_str();
        match c {
            "fleet.capabilities" => {
                parse::<NoParams>(c, params)?;
                Ok(
                    json!({ "commands": COMMANDS.iter().map(|s| json!({"name": s.name, "description": s.description, "params": (s.params)()})).collect::<Vec<_>>() }),
                )
            }
            "fleet.status" => {
                parse::<NoParams>(c, params)?;
                Ok(self.status())
            }
            "fleet.gpus" => Ok(self.gpus(parse(c, params)?).await),
            "fleet.deploy" => self.deploy(parse(c, params)?).await,
            "fleet.workloads" => self.workloads(parse(c, params)?).await,
            "fleet.invoke" => self.invoke(parse(c, params)?).await,
            "fleet.health" => {
                parse::<NoParams>(c, params)?;
                Ok(self.health().await)
            }
            "fleet.drain" => {
                let params: DrainParams = parse(c, params)?;
                let member = self.resolve(&params.node)?;
                let drained = self
                    .call(
                        member.peer_id,
                        "node.drain",
                        Value::Null,
                        Duration::from_secs(120),
                    )
                    .await?;
                Ok(
                    json!({ "node": member.announcement.name, "peer_id": member.peer_id.to_string(), "drain": drained }),
                )
            }
            "market.offers"
            | "market.bid"
            | "market.leases"
            | "market.lease.cancel"
            | "wallet.balance" => self.forward(c, params, timeout).await,
            other => Err(failure(
                "UNKNOWN_COMMAND",
                format!("no command {other:?}; fleet.capabilities lists them"),
            )),
        }
    }
}

impl GatewayHandler for FleetCommands {
    fn handle(
        &self,
        command: String,
        params: Value,
        timeout: Duration,
        _idempotency_key: Option<String>,
    ) -> CommandFuture {
        let commands = self.clone();
        Box::pin(async move { commands.dispatch(command, params, timeout).await })
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
