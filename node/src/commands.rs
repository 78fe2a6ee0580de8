//! The commands a node answers, locally through the control API and remotely over the mesh.
//!
//! Each command has typed params (unknown fields rejected) with a JSON schema that
//! `node.capabilities` returns, a role it needs, and a typed error. Each runs in its own task
//! under the request's deadline; blocking work (NVML, the OS, the store) goes to the blocking
//! pool, so a slow command never delays another or the mesh. A command that outlives its deadline
//! is answered with `TIMEOUT` but finishes in the background, so the store never holds half a
//! change. Every invocation is appended to the audit log.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use claw_attestation::{GpuProbe, XidWatcher, probe_host};
use claw_mesh::{
    ErrorCode, HandlerFuture, InvokeFailure, InvokeHandler, InvokeRequest, InvokeResponse, PeerId,
};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::access::{AccessPolicy, Role};
use crate::config::SystemRunSection;
use crate::health::{HealthInputs, assess};
use crate::market::{
    ArbitrateParams, BidParams, CancelParams, EndParams, FundParams, LeaseRequestParams,
    LeasesParams, Market, OffersParams, ReceiptsParams, ReputationParams, RevokeParams, SellParams,
    StatusParams,
};
use crate::store::{AuditRecord, Store};
use crate::system_run::{self, SystemRunError, SystemRunParams};
use crate::workloads::spec::{
    ExecParams, ListParams, LogsParams, RunParams, StopParams, WorkloadRef,
};
use crate::workloads::{ProgressBoard, Workloads};

/// Who invokes a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    /// A mesh peer (authenticated by Noise), or this node itself through its control API.
    Peer(PeerId),
    /// The OpenClaw gateway this node serves, with the role its config gives it: a principal of
    /// its own, never the node.
    Gateway,
}

/// Who owns a workload the gateway starts.
const GATEWAY_OWNER: &str = "openclaw-gateway";

impl Caller {
    /// The peer id market steps are attributed to (the gateway acts for the node there).
    fn peer(self, local: PeerId) -> PeerId {
        match self {
            Self::Peer(peer) => peer,
            Self::Gateway => local,
        }
    }

    /// Who owns a workload this caller starts.
    fn owner(self) -> String {
        match self {
            Self::Peer(peer) => peer.to_string(),
            Self::Gateway => GATEWAY_OWNER.to_owned(),
        }
    }
}

/// Largest params a command accepts, as JSON text.
pub const MAX_PARAMS_BYTES: usize = 64 * 1024;

/// A command's name, what it does, who may run it, and the JSON schema of its params.
struct CommandSpec {
    name: &'static str,
    description: &'static str,
    role: Role,
    params: fn() -> Value,
}

fn schema<T: JsonSchema>() -> Value {
    serde_json::to_value(schemars::schema_for!(T)).unwrap_or(Value::Null)
}

/// Params of commands that take none: `null` or `{}`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct NoParams {}

/// `gpu.metrics`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct GpuMetricsParams {
    /// Only this GPU (UUID).
    #[serde(default)]
    gpu: Option<String>,
}

/// `node.label`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct LabelParams {
    /// Labels to set (key → value).
    #[serde(default)]
    set: BTreeMap<String, String>,
    /// Label keys to remove.
    #[serde(default)]
    remove: Vec<String>,
}

const COMMANDS: &[CommandSpec] = &[
    CommandSpec {
        name: "node.capabilities",
        description: "List the commands this node answers, with the role each needs and the JSON schema of its params",
        role: Role::Read,
        params: schema::<NoParams>,
    },
    CommandSpec {
        name: "node.health",
        description: "healthy / degraded / unhealthy, with the reasons: NVML, Docker, disk, memory, GPU errors and throttling",
        role: Role::Read,
        params: schema::<NoParams>,
    },
    CommandSpec {
        name: "gpu.list",
        description: "List GPUs from NVML (and simulated ones, marked), with NVML's status",
        role: Role::Read,
        params: schema::<NoParams>,
    },
    CommandSpec {
        name: "gpu.metrics",
        description: "Live GPU readings from NVML: utilisation, memory, temperature, power, clocks, throttle reasons, ECC and Xid errors, processes, and the workload holding each GPU",
        role: Role::Read,
        params: schema::<GpuMetricsParams>,
    },
    CommandSpec {
        name: "system.info",
        description: "Host facts: OS, kernel, CPU, memory, disk",
        role: Role::Read,
        params: schema::<NoParams>,
    },
    CommandSpec {
        name: "node.label",
        description: "Set or remove node labels (announced to the fleet)",
        role: Role::Operate,
        params: schema::<LabelParams>,
    },
    CommandSpec {
        name: "node.cordon",
        description: "Take no new workloads; running ones continue",
        role: Role::Operate,
        params: schema::<NoParams>,
    },
    CommandSpec {
        name: "node.uncordon",
        description: "Take new workloads again",
        role: Role::Operate,
        params: schema::<NoParams>,
    },
    CommandSpec {
        name: "node.drain",
        description: "Cordon the node and stop every workload gracefully, reporting each; workloads that cannot be stopped now (Docker unreachable) are stopped once they can",
        role: Role::Operate,
        params: schema::<NoParams>,
    },
    CommandSpec {
        name: "system.run",
        description: "Run an allowlisted program (argv, no shell) with a timeout and capped output",
        role: Role::Admin,
        params: schema::<SystemRunParams>,
    },
    CommandSpec {
        name: "workload.run",
        description: "Start a container workload on Docker, with GPUs by count or UUID",
        role: Role::Operate,
        params: schema::<RunParams>,
    },
    CommandSpec {
        name: "workload.stop",
        description: "Stop a workload gracefully and release its GPUs",
        role: Role::Operate,
        params: schema::<StopParams>,
    },
    CommandSpec {
        name: "workload.list",
        description: "List workloads, optionally filtered by state, labels or GPU",
        role: Role::Read,
        params: schema::<ListParams>,
    },
    CommandSpec {
        name: "workload.inspect",
        description: "A workload's record and its container's state and ports",
        role: Role::Read,
        params: schema::<WorkloadRef>,
    },
    CommandSpec {
        name: "workload.logs",
        description: "A workload's recent output (tail, since)",
        role: Role::Operate,
        params: schema::<LogsParams>,
    },
    CommandSpec {
        name: "workload.stats",
        description: "One sample of a workload's CPU, memory, network and process use",
        role: Role::Read,
        params: schema::<WorkloadRef>,
    },
    CommandSpec {
        name: "container.exec",
        description: "Run a program inside a workload's running container",
        role: Role::Operate,
        params: schema::<ExecParams>,
    },
    CommandSpec {
        name: "market.sell",
        description: "Rent out this node's free GPUs at a price per GPU-hour (or change it), or stop selling; offers are published or withdrawn at once",
        role: Role::Operate,
        params: schema::<SellParams>,
    },
    CommandSpec {
        name: "market.offers",
        description: "GPU offers in this node's order book (from gossip), cheapest first, with filters",
        role: Role::Read,
        params: schema::<OffersParams>,
    },
    CommandSpec {
        name: "market.bid",
        description: "Match a bid against the order book and, with a workload, lease the best offer in one call: budget check, signed bid, provider-signed terms, escrow funded on chain, workload started; or say why nothing matches",
        role: Role::Operate,
        params: schema::<BidParams>,
    },
    CommandSpec {
        name: "market.leases",
        description: "This node's leases, as buyer and as provider, with their state",
        role: Role::Operate,
        params: schema::<LeasesParams>,
    },
    CommandSpec {
        name: "market.lease.cancel",
        description: "End a lease this node bought and settle it: pro rata for the time served, the rest refunded",
        role: Role::Operate,
        params: schema::<CancelParams>,
    },
    CommandSpec {
        name: "market.lease.revoke",
        description: "Withdraw a streaming lease's allowance on chain at once; the provider's next pull is refused and it stops the workload",
        role: Role::Operate,
        params: schema::<RevokeParams>,
    },
    CommandSpec {
        name: "market.reputation",
        description: "A provider's reputation from facts this node checks itself: its own leases with it, and the provider's receipts whose escrow (derived from terms both parties signed, with this node's arbiter) the chain shows settled",
        role: Role::Operate,
        params: schema::<ReputationParams>,
    },
    CommandSpec {
        name: "market.arbitrate",
        description: "(arbiter) Rule on a lease's escrow for its buyer or provider, on terms both signed, the funding's block time and the usage checkpoints either side shows; answers the release signed by the arbiter",
        role: Role::Read,
        params: schema::<ArbitrateParams>,
    },
    CommandSpec {
        name: "market.offers.signed",
        description: "This node's current offers, as the signed envelopes it gossiped (for peers that joined after)",
        role: Role::Read,
        params: schema::<NoParams>,
    },
    CommandSpec {
        name: "market.receipts",
        description: "The leases this node served as a provider, with their terms, the buyer's acceptance and the final checkpoint, for anyone to check against the chain",
        role: Role::Read,
        params: schema::<ReceiptsParams>,
    },
    CommandSpec {
        name: "market.lease.request",
        description: "(buyer to provider) Ask for a lease on an offer with a bid signed by the caller and by its funded wallet; answers with signed terms and reserved GPUs",
        role: Role::Read,
        params: schema::<LeaseRequestParams>,
    },
    CommandSpec {
        name: "market.lease.fund",
        description: "(buyer to provider) The buyer's signed acceptance and its funding: verify the derived escrow (or allowance) on chain and start the workload on the reserved GPUs",
        role: Role::Read,
        params: schema::<FundParams>,
    },
    CommandSpec {
        name: "market.lease.end",
        description: "(buyer to provider) End the lease; answers with the final usage checkpoint and the provider-signed settlement",
        role: Role::Read,
        params: schema::<EndParams>,
    },
    CommandSpec {
        name: "market.lease.status",
        description: "(buyer or arbiter to a lease's party) Where the lease is, with the latest usage checkpoint",
        role: Role::Read,
        params: schema::<StatusParams>,
    },
    CommandSpec {
        name: "wallet.balance",
        description: "The node wallet's SOL and MOLT balances",
        role: Role::Operate,
        params: schema::<NoParams>,
    },
];

/// Commands a lessee may run on the workload of its lease, though it has only the read role.
const LESSEE_COMMANDS: &[&str] = &["workload.stop", "workload.logs", "container.exec"];

/// The command table as `node.capabilities` answers it, built once.
fn capabilities() -> Value {
    static TABLE: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    TABLE
        .get_or_init(|| {
            COMMANDS
                .iter()
                .map(|c| json!({"name": c.name, "description": c.description, "role": c.role, "params": (c.params)()}))
                .collect()
        })
        .clone()
}

/// A workload as `principal` with `role` may see it: whole for operators and for its own owner;
/// to the read role, others' workloads without their command line, owner, labels or key.
fn redacted(
    record: &crate::workloads::WorkloadRecord,
    principal: Caller,
    role: Role,
) -> Result<Value, InvokeFailure> {
    let mut value = to_value(record)?;
    if role >= Role::Operate || record.owner == principal.owner() {
        return Ok(value);
    }
    value["command"] = json!([]);
    value["owner"] = Value::Null;
    value["labels"] = json!({});
    value["idempotency_key"] = Value::Null;
    value["redacted"] = json!(true);
    Ok(value)
}

fn invalid(message: impl Into<String>) -> InvokeFailure {
    InvokeFailure::new(ErrorCode::InvalidParams, message)
}

/// Parses params strictly; `null` counts as `{}`.
fn parse<T: DeserializeOwned>(command: &str, params: Value) -> Result<T, InvokeFailure> {
    let params = if params.is_null() { json!({}) } else { params };
    serde_json::from_value(params).map_err(|e| invalid(format!("{command}: {e}")))
}

fn to_value(value: impl Serialize) -> Result<Value, InvokeFailure> {
    serde_json::to_value(value)
        .map_err(|e| InvokeFailure::new(ErrorCode::Internal, format!("cannot encode: {e}")))
}

/// Everything the commands work with.
#[derive(Debug)]
pub struct NodeServices {
    /// The GPUs.
    pub probe: Arc<GpuProbe>,
    /// Critical Xid errors, where NVML reports them.
    pub xids: Option<XidWatcher>,
    /// The data directory (disk is measured where it lives).
    pub data_dir: PathBuf,
    /// The store (audit log, labels, cordon).
    pub store: Store,
    /// Who may do what.
    pub access: AccessPolicy,
    /// Container workloads.
    pub workloads: Workloads,
    /// `system.run` limits.
    pub system_run: SystemRunSection,
    /// The market: order book, offers, leases.
    pub market: Market,
    /// Invokes answered, for the metrics.
    pub invokes: crate::metrics::InvokeMetrics,
}

/// The node's command table. Cheap to clone.
#[derive(Debug, Clone)]
pub struct NodeCommands {
    services: Arc<NodeServices>,
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, InvokeFailure> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| InvokeFailure::new(ErrorCode::Internal, format!("command task failed: {e}")))
}

fn store_failure(error: crate::StoreError) -> InvokeFailure {
    InvokeFailure::new(ErrorCode::Internal, error.to_string())
}

impl NodeCommands {
    /// Commands served from `services`.
    pub fn new(services: NodeServices) -> Self {
        Self {
            services: Arc::new(services),
        }
    }

    /// The latest `limit` audit records, newest first.
    pub fn recent_audit(&self, limit: usize) -> Result<Vec<AuditRecord>, crate::StoreError> {
        self.services.store.recent_audit(limit)
    }

    /// Progress of long operations, by idempotency key.
    pub fn progress(&self) -> &ProgressBoard {
        self.services.workloads.progress()
    }

    /// The node's workloads.
    pub fn workloads(&self) -> &Workloads {
        &self.services.workloads
    }

    /// Names of every command, for announcing and for the gateway.
    pub fn names() -> Vec<&'static str> {
        COMMANDS.iter().map(|c| c.name).collect()
    }

    /// Names of the commands a caller with `role` may run.
    pub fn names_for(role: Role) -> Vec<&'static str> {
        COMMANDS
            .iter()
            .filter(|c| c.role <= role)
            .map(|c| c.name)
            .collect()
    }

    async fn run(
        &self,
        principal: Caller,
        role: Role,
        request: InvokeRequest,
    ) -> Result<Value, InvokeFailure> {
        let s = &self.services;
        let caller = principal.peer(s.access.local());
        let InvokeRequest {
            command,
            params,
            idempotency_key,
            ..
        } = request;
        let command = command.as_str();
        match command {
            "node.capabilities" => {
                parse::<NoParams>(command, params)?;
                Ok(json!({ "commands": capabilities(), "caller_role": role }))
            }
            "gpu.list" => {
                parse::<NoParams>(command, params)?;
                let probe = Arc::clone(&s.probe);
                blocking(move || json!({ "nvml": probe.status(), "gpus": probe.devices() })).await
            }
            "gpu.metrics" => {
                let params: GpuMetricsParams = parse(command, params)?;
                let holders = s
                    .workloads
                    .allocations()
                    .await
                    .map_err(InvokeFailure::from)?;
                let services = Arc::clone(s);
                let (nvml, metrics) = blocking(move || {
                    (
                        services.probe.status(),
                        services.probe.metrics(services.xids.as_ref()),
                    )
                })
                .await?;
                let gpus: Vec<Value> = metrics
                    .into_iter()
                    .filter(|m| params.gpu.as_ref().is_none_or(|g| *g == m.uuid))
                    .map(|m| {
                        let holder = holders.get(&m.uuid).cloned();
                        let mut value = json!(m);
                        value["workload"] = json!(holder);
                        value
                    })
                    .collect();
                if let Some(gpu) = &params.gpu
                    && gpus.is_empty()
                {
                    return Err(InvokeFailure::new(
                        ErrorCode::NotFound,
                        format!("no GPU {gpu} on this node"),
                    ));
                }
                Ok(json!({ "nvml": nvml, "gpus": gpus }))
            }
            "system.info" => {
                parse::<NoParams>(command, params)?;
                let dir = s.data_dir.clone();
                blocking(move || json!(probe_host(&dir))).await
            }
            "node.health" => {
                parse::<NoParams>(command, params)?;
                let docker = s
                    .workloads
                    .engine_version()
                    .await
                    .map_err(|e| e.to_string());
                let services = Arc::clone(s);
                blocking(move || {
                    let nvml = services.probe.status();
                    let gpus = services.probe.metrics(services.xids.as_ref());
                    let cordoned = services.store.cordoned().unwrap_or(false);
                    to_value(assess(&HealthInputs {
                        nvml: &nvml,
                        gpus: &gpus,
                        docker,
                        data_dir: &services.data_dir,
                        cordoned,
                    }))
                })
                .await?
            }
            "node.label" => {
                let params: LabelParams = parse(command, params)?;
                for (key, value) in &params.set {
                    if key.is_empty() || key.len() > 64 || value.len() > 256 {
                        return Err(invalid(format!(
                            "label {key:?}: keys 1 to 64 characters, values at most 256"
                        )));
                    }
                }
                let store = s.store.clone();
                blocking(move || {
                    let mut labels = store.labels()?;
                    for key in &params.remove {
                        labels.remove(key);
                    }
                    labels.extend(params.set);
                    if labels.len() > 64 {
                        return Ok(Err(invalid("a node has at most 64 labels")));
                    }
                    store.set_labels(&labels)?;
                    Ok(Ok(json!({ "labels": labels })))
                })
                .await?
                .map_err(store_failure)?
            }
            "node.cordon" | "node.uncordon" => {
                parse::<NoParams>(command, params)?;
                let cordon = command == "node.cordon";
                let store = s.store.clone();
                blocking(move || store.set_cordoned(cordon))
                    .await?
                    .map_err(store_failure)?;
                tracing::info!(cordoned = cordon, "node cordon changed");
                s.market.offers_changed();
                Ok(json!({ "cordoned": cordon }))
            }
            "node.drain" => {
                parse::<NoParams>(command, params)?;
                let store = s.store.clone();
                blocking(move || store.set_draining())
                    .await?
                    .map_err(store_failure)?;
                s.market.offers_changed();
                let outcomes = s.workloads.drain(idempotency_key.as_deref()).await?;
                let pending = outcomes.iter().filter(|o| o.outcome != "stopped").count();
                Ok(json!({
                    "cordoned": true,
                    "workloads": outcomes,
                    "pending": pending,
                    "note": (pending > 0).then_some(
                        "the node keeps stopping the pending workloads every announce interval until none runs"
                    ),
                }))
            }
            "system.run" => {
                let params: SystemRunParams = parse(command, params)?;
                let output = system_run::run(&s.system_run, params)
                    .await
                    .map_err(|e| match e {
                        SystemRunError::Invalid(m) => invalid(m),
                        SystemRunError::NotAllowed(m) => {
                            InvokeFailure::new(ErrorCode::Unauthorized, m)
                        }
                        spawn @ SystemRunError::Spawn { .. } => {
                            InvokeFailure::new(ErrorCode::NotFound, spawn.to_string())
                        }
                    })?;
                to_value(output)
            }
            "workload.run" => {
                let params: RunParams = parse(command, params)?;
                to_value(
                    s.workloads
                        .run(principal.owner(), params, idempotency_key)
                        .await?,
                )
            }
            "workload.stop" => to_value(s.workloads.stop(parse(command, params)?).await?),
            "workload.list" => {
                let workloads = s.workloads.list(parse(command, params)?).await?;
                let workloads: Vec<Value> = workloads
                    .iter()
                    .map(|w| redacted(w, principal, role))
                    .collect::<Result<_, _>>()?;
                Ok(json!({ "workloads": workloads }))
            }
            "workload.inspect" => {
                let mut answer = s.workloads.inspect(parse(command, params)?).await?;
                if let Ok(record) = serde_json::from_value::<crate::workloads::WorkloadRecord>(
                    answer["workload"].clone(),
                ) {
                    answer["workload"] = redacted(&record, principal, role)?;
                }
                Ok(answer)
            }
            "workload.logs" => Ok(s.workloads.logs(parse(command, params)?).await?),
            "workload.stats" => Ok(s.workloads.stats(parse(command, params)?).await?),
            "container.exec" => Ok(s.workloads.exec(parse(command, params)?).await?),
            "market.offers" => s.market.offers(parse(command, params)?),
            "market.sell" => s.market.sell(parse(command, params)?).await,
            "market.bid" => {
                s.market
                    .bid(parse(command, params)?, idempotency_key.as_deref())
                    .await
            }
            "market.leases" => s.market.leases(parse(command, params)?).await,
            "market.lease.cancel" => s.market.cancel(parse(command, params)?).await,
            "market.lease.revoke" => s.market.revoke(parse(command, params)?).await,
            "market.reputation" => s.market.reputation(parse(command, params)?).await,
            "market.receipts" => s.market.receipts(parse(command, params)?).await,
            "market.offers.signed" => {
                parse::<NoParams>(command, params)?;
                Ok(s.market.signed_offers())
            }
            "market.arbitrate" => s.market.arbitrate(caller, parse(command, params)?).await,
            "market.lease.request" => {
                s.market
                    .lease_request(caller, parse(command, params)?)
                    .await
            }
            "market.lease.fund" => s.market.lease_fund(caller, parse(command, params)?).await,
            "market.lease.end" => s.market.lease_end(caller, parse(command, params)?).await,
            "market.lease.status" => s.market.lease_status(caller, parse(command, params)?).await,
            "wallet.balance" => {
                parse::<NoParams>(command, params)?;
                s.market.balance().await
            }
            other => Err(InvokeFailure::new(
                ErrorCode::UnknownCommand,
                format!("no command {other:?}; node.capabilities lists them"),
            )),
        }
    }

    /// Whether `caller` is the buyer of the lease whose workload a lessee command names: a
    /// lessee manages its own lease's workload, and nothing else (not even workloads it started
    /// otherwise, nor the gateway anything).
    async fn is_lessee(&self, caller: Caller, command: &str, params: &Value) -> bool {
        let Caller::Peer(peer) = caller else {
            return false;
        };
        if !LESSEE_COMMANDS.contains(&command) {
            return false;
        }
        let Some(reference) = params.get("workload").and_then(Value::as_str) else {
            return false;
        };
        let Some(lease) = self.services.workloads.lease_of(reference).await else {
            return false;
        };
        let store = self.services.store.clone();
        let record = blocking(move || store.lease(&lease)).await;
        matches!(record, Ok(Ok(Some(r)))
            if r.side == claw_market::lease::Side::Provider && r.counterparty == peer.to_string())
    }

    /// The market service.
    pub fn market(&self) -> &Market {
        &self.services.market
    }

    /// Invokes answered so far, by command and outcome.
    pub fn invoke_metrics(&self) -> &crate::metrics::InvokeMetrics {
        &self.services.invokes
    }

    /// Checks the caller's role and the params' size, then runs the command in its own task
    /// under the request's deadline.
    async fn authorize_and_run(
        &self,
        caller: Caller,
        role: Role,
        request: InvokeRequest,
    ) -> (Role, Result<Value, InvokeFailure>) {
        let Some(spec) = COMMANDS.iter().find(|c| c.name == request.command) else {
            return (
                role,
                Err(InvokeFailure::new(
                    ErrorCode::UnknownCommand,
                    format!(
                        "no command {:?}; node.capabilities lists them",
                        request.command
                    ),
                )),
            );
        };
        if role < spec.role && !self.is_lessee(caller, spec.name, &request.params).await {
            let who = match caller {
                Caller::Peer(peer) => format!("peer {peer}"),
                Caller::Gateway => "the gateway".to_owned(),
            };
            return (
                role,
                Err(InvokeFailure::new(
                    ErrorCode::Unauthorized,
                    format!(
                        "{} needs the {} role; {who} has {role}",
                        spec.name, spec.role
                    ),
                )),
            );
        }
        let size = request.params.to_string().len();
        if size > MAX_PARAMS_BYTES {
            return (
                role,
                Err(invalid(format!(
                    "params are {size} bytes, more than the {MAX_PARAMS_BYTES}-byte limit"
                ))),
            );
        }
        let deadline = Duration::from_millis(request.deadline_ms);
        let commands = self.clone();
        let task = tokio::spawn(async move { commands.run(caller, role, request).await });
        let result = match tokio::time::timeout(deadline, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(InvokeFailure::new(
                ErrorCode::Internal,
                format!("command task failed: {join}"),
            )),
            Err(_) => Err(InvokeFailure::new(
                ErrorCode::Timeout,
                format!(
                    "no answer within {} ms; the command goes on in the background",
                    deadline.as_millis()
                ),
            )),
        };
        (role, result)
    }
}

impl NodeCommands {
    /// Runs a command for the OpenClaw gateway this node is connected to, with the role its
    /// config gives the gateway. Audited with the caller `openclaw-gateway`.
    pub async fn invoke_for_gateway(
        &self,
        role: Role,
        request: InvokeRequest,
    ) -> Result<Value, InvokeFailure> {
        self.audited(GATEWAY_OWNER.to_owned(), Caller::Gateway, role, request)
            .await
    }

    /// Authorises and runs `request`, then appends it to the audit log.
    async fn audited(
        &self,
        caller_label: String,
        caller: Caller,
        role: Role,
        request: InvokeRequest,
    ) -> Result<Value, InvokeFailure> {
        let command = request.command.clone();
        let params_sha256 = hex::encode(Sha256::digest(request.params.to_string()));
        let started = Instant::now();
        let (role, result) = self.authorize_and_run(caller, role, request).await;
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let outcome = match &result {
            Ok(_) => "ok".to_owned(),
            Err(failure) => failure.code.to_string(),
        };
        tracing::info!(caller = caller_label, %role, command, outcome, duration_ms, "invoke");
        let known = COMMANDS.iter().find(|c| c.name == command).map(|c| c.name);
        self.services
            .invokes
            .record(known.unwrap_or("unknown"), &outcome);
        let record = AuditRecord {
            at_ms: claw_attestation::unix_millis(std::time::SystemTime::now()),
            caller: caller_label,
            role: Some(role.to_string()),
            command,
            params_sha256,
            outcome,
            duration_ms,
        };
        let store = self.services.store.clone();
        match tokio::task::spawn_blocking(move || store.append_audit(&record)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(%error, "audit log write failed"),
            Err(error) => tracing::error!(%error, "audit log task failed"),
        }
        result
    }
}

impl InvokeHandler for NodeCommands {
    fn handle(&self, caller: PeerId, request: InvokeRequest) -> HandlerFuture {
        let commands = self.clone();
        Box::pin(async move {
            let role = commands.services.access.role_of(&caller);
            let result = commands
                .audited(caller.to_string(), Caller::Peer(caller), role, request)
                .await;
            InvokeResponse::from(result)
        })
    }
}
