//! The commands a node answers, locally through the control API and remotely over the mesh.
//!
//! Each command has typed params (unknown fields rejected) with a JSON schema that
//! `node.capabilities` returns, a role it needs, and a typed error. Each runs in its own task
//! under the request's deadline; blocking work (NVML, the OS, the store) goes to the blocking
//! pool, so a slow command never delays another or the mesh. A command that outlives its deadline
//! is answered with `TIMEOUT` but finishes in the background, so the store never holds half a
//! change. Every invocation is appended to the audit log.

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use claw_api::audit::{AuditLog, AuditQueryCommand};
use claw_api::auth::{
    ApiKeyInfo, AuthCreateKey, AuthListKeys, AuthRevokeKey, AuthWhoAmI, DEFAULT_NAMESPACE, KeyRef,
    WhoAmI, namespaces_named,
};
use claw_api::autoscale::{
    AutoscaleAdjust, AutoscaleChange, AutoscaleCreate, AutoscaleCreateParams, AutoscaleDelete,
    AutoscaleRef, AutoscaleStatusCommand,
};
use claw_api::configs::{
    ConfigCreate, ConfigDelete, ConfigGet, ConfigList, ConfigRef, ConfigUpdate, ValuesChange,
};
use claw_api::cron::{
    CronBidCommand, CronChange, CronCreate, CronCreateParams, CronDelete, CronList,
    CronLogsCommand, CronRef, CronResume, CronStatusCommand, CronSuspend, CronTrigger,
};
use claw_api::deploy::{
    DeployCreate, DeployDelete, DeployHistory, DeployList, DeployPause, DeployPromote,
    DeployReplicaStart, DeployReplicaStop, DeployReplicas, DeployResume, DeployRollback,
    DeployStatus, DeployUpdate, DeploymentRef,
};
use claw_api::ingress::{IngressCreate, IngressDelete, IngressList, IngressRef};
use claw_api::jobs::{
    JobCreate, JobCreateParams, JobDelete, JobList, JobLogsCommand, JobPodStart, JobPodStop,
    JobPods, JobRef, JobStatusCommand,
};
use claw_api::market::{
    Arbitration, BidOutcome, Lease, LeaseEnd, LeaseGrant, LeaseListing, LeaseStatus,
    MarketArbitrate, MarketBid, MarketHistory, MarketLeaseCancel, MarketLeaseEnd, MarketLeaseFund,
    MarketLeaseRequest, MarketLeaseRevoke, MarketLeaseStatus, MarketLeases, MarketOffers,
    MarketOffersSigned, MarketReceipts, MarketReputation, MarketSell, MarketTradesSigned,
    OfferListing, ProviderReputation, ReceiptListing, SellReport, WalletBalance,
};
use claw_api::namespaces::{
    NamespaceCreate, NamespaceDelete, NamespaceList, NamespaceRef, NamespaceUsage,
};
use claw_api::node::{
    Capabilities, Cordon, DrainReport, GpuCordon, GpuCordonState, GpuList, GpuListing, GpuMetrics,
    GpuMetricsParams, GpuReading, GpuReadings, GpuRef, GpuUncordon, LabelParams, Labels,
    NodeCapabilities, NodeCordon, NodeDrain, NodeHealth, NodeLabel, NodeUncordon, SystemInfo,
    SystemRun, SystemRunOutput, SystemRunParams,
};
use claw_api::objects::ObjectKind;
use claw_api::objects::{ObjectPut, ObjectSync};
use claw_api::policies::{
    Origin, PolicyCreate, PolicyDelete, PolicyList, PolicyRef, PolicyValidate, ValidateParams,
};
use claw_api::secrets::{
    SecretCreate, SecretDelete, SecretDescribe, SecretList, SecretRef, SecretRotate,
};
use claw_api::services::{
    LookupParams, NetworkLookup, NetworkStatusCommand, ServiceCreate, ServiceDelete,
    ServiceEndpoints, ServiceForward, ServiceForwards, ServiceList, ServiceRef, ServiceUnforward,
    UnforwardParams,
};
use claw_api::storage::{
    BackupCreate, BackupDelete, BackupImport, BackupKeys, BackupList, BackupRead, BackupReceive,
    BackupRef, BackupRestore, ImportParams, KeyBackupParams, VolumeCreate, VolumeDelete,
    VolumeList, VolumeRef, VolumeSnapshot,
};
use claw_api::taints::{
    MAX_TAINTS, NodeTaint, NodeTaints, NodeUntaint, SystemWhich, Taint, TaintEffect, TaintParams,
    UntaintParams, Which, WhichParams,
};
use claw_api::workload::{
    ContainerExec, ExecOutput, ExecParams, ListParams, LogTail, LogsParams, RunParams, StopParams,
    Workload, WorkloadDetail, WorkloadInspect, WorkloadList, WorkloadListing, WorkloadLogs,
    WorkloadRef, WorkloadRun, WorkloadStats, WorkloadStop, WorkloadUsage,
};
use claw_api::{Command as _, NODE_COMMANDS, NoParams, Router, node_command, node_descriptions};
use claw_attestation::{GpuProbe, HostInfo, XidWatcher, probe_host};
use claw_mesh::{
    ErrorCode, HandlerFuture, InvokeFailure, InvokeHandler, InvokeRequest, InvokeResponse, PeerId,
};
use futures::FutureExt as _;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::access::{AccessPolicy, Role};
use crate::config::SystemRunSection;
use crate::controller::{Deployments, Jobs};
use crate::health::{HealthInputs, HealthReport, assess};
use crate::market::{
    ArbitrateParams, BidParams, CancelParams, EndParams, FundParams, LeaseRequestParams,
    LeasesParams, Market, OffersParams, ReceiptsParams, ReputationParams, RevokeParams, SellParams,
    StatusParams,
};
use crate::objects::FleetObjects;
use crate::store::{AuditRecord, Store};
use crate::system_run::{self, SystemRunError};
use crate::workloads::{ProgressBoard, WorkloadRecord, Workloads};

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

    /// The caller as the audit log and `auth.whoami` name it.
    fn label(self) -> String {
        self.owner()
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

/// Commands a lessee may run on the workload of its lease, though it has only the read role.
const LESSEE_COMMANDS: &[&str] = &[WorkloadStop::NAME, WorkloadLogs::NAME, ContainerExec::NAME];

/// What a command runs with besides its params.
#[derive(Debug, Clone)]
struct Call {
    /// Who asks.
    principal: Caller,
    /// The role it has here.
    role: Role,
    /// The caller's idempotency key, for commands that act.
    idempotency_key: Option<String>,
    /// The API key the call carried, checked.
    key: Option<ApiKeyInfo>,
}

/// Who ran what, for the audit log.
struct Audited {
    caller: String,
    role: Role,
    /// The API key's name, when the call carried one.
    api_key: Option<String>,
    command: String,
    params_sha256: String,
}

impl Call {
    /// The calling peer, for commands only a mesh peer may run (a gateway is no peer).
    fn peer(&self) -> Result<PeerId, InvokeFailure> {
        match self.principal {
            Caller::Peer(peer) => Ok(peer),
            Caller::Gateway => Err(InvokeFailure::new(
                ErrorCode::Unauthorized,
                "only a mesh peer may run this command",
            )),
        }
    }
}

/// The node's handlers, one per command of [`NODE_COMMANDS`].
fn router() -> &'static Router<NodeCommands, Call> {
    static ROUTER: OnceLock<Router<NodeCommands, Call>> = OnceLock::new();
    ROUTER.get_or_init(|| {
        Router::<NodeCommands, Call>::new()
            .route::<NodeCapabilities, _, _>(|node, call, params| {
                std::future::ready(node.capabilities(call, params))
            })
            .route::<NodeHealth, _, _>(NodeCommands::health)
            .route::<GpuList, _, _>(NodeCommands::gpu_list)
            .route::<GpuMetrics, _, _>(NodeCommands::gpu_metrics)
            .route::<SystemInfo, _, _>(NodeCommands::system_info)
            .route::<NodeLabel, _, _>(NodeCommands::label)
            .route::<NodeTaint, _, _>(|node, _, TaintParams { taint }| async move {
                node.change_taints(Some(taint), None).await
            })
            .route::<NodeUntaint, _, _>(|node, _, params| async move {
                node.change_taints(None, Some(params)).await
            })
            .route::<SystemWhich, _, _>(|_, _, params| async move { which(params).await })
            .route::<AuthCreateKey, _, _>(|node, _, params| async move {
                node.services.objects.create_key(params).await
            })
            .route::<AuthListKeys, _, _>(|node, _, NoParams {}| async move {
                node.services.objects.keys().await
            })
            .route::<AuthRevokeKey, _, _>(|node, _, KeyRef { name }| async move {
                node.services.objects.revoke_key(&name).await
            })
            .route::<AuthWhoAmI, _, _>(|_, call, NoParams {}| async move {
                Ok(WhoAmI {
                    caller: call.principal.label(),
                    role: call.role,
                    key: call.key,
                })
            })
            .route::<AuditQueryCommand, _, _>(|node, _, query| async move {
                let limit = query.limit().map_err(|e| invalid(e.to_string()))?;
                let records = node
                    .services
                    .store
                    .run(move |s| s.query_audit(limit, |r| query.matches(r)))
                    .await?;
                Ok(AuditLog { records })
            })
            .route::<NodeCordon, _, _>(|node, _, NoParams {}| node.set_cordon(true))
            .route::<NodeUncordon, _, _>(|node, _, NoParams {}| node.set_cordon(false))
            .route::<NodeDrain, _, _>(NodeCommands::drain)
            .route::<GpuCordon, _, _>(|node, _, GpuRef { gpu }| node.set_gpu_cordon(gpu, true))
            .route::<GpuUncordon, _, _>(|node, _, GpuRef { gpu }| node.set_gpu_cordon(gpu, false))
            .route::<SystemRun, _, _>(NodeCommands::system_run)
            .route::<WorkloadRun, _, _>(NodeCommands::workload_run)
            .route::<WorkloadStop, _, _>(NodeCommands::workload_stop)
            .route::<WorkloadList, _, _>(NodeCommands::workload_list)
            .route::<WorkloadInspect, _, _>(NodeCommands::workload_inspect)
            .route::<WorkloadLogs, _, _>(NodeCommands::workload_logs)
            .route::<WorkloadStats, _, _>(NodeCommands::workload_stats)
            .route::<ContainerExec, _, _>(NodeCommands::container_exec)
            .route::<MarketSell, _, _>(NodeCommands::market_sell)
            .route::<MarketOffers, _, _>(|node, call, params| {
                std::future::ready(node.market_offers(call, params))
            })
            .route::<MarketBid, _, _>(NodeCommands::market_bid)
            .route::<MarketLeases, _, _>(NodeCommands::market_leases)
            .route::<MarketLeaseCancel, _, _>(NodeCommands::market_cancel)
            .route::<MarketLeaseRevoke, _, _>(NodeCommands::market_revoke)
            .route::<MarketReputation, _, _>(NodeCommands::market_reputation)
            .route::<MarketArbitrate, _, _>(NodeCommands::market_arbitrate)
            .route::<MarketOffersSigned, _, _>(|node, _, NoParams {}| async move {
                Ok(node.services.market.signed_offers())
            })
            .route::<MarketReceipts, _, _>(NodeCommands::market_receipts)
            .route::<MarketHistory, _, _>(|node, _, params| async move {
                node.services.market.history(params).await
            })
            .route::<MarketTradesSigned, _, _>(|node, _, params| async move {
                node.services.market.signed_trades(params).await
            })
            .route::<MarketLeaseRequest, _, _>(NodeCommands::lease_request)
            .route::<MarketLeaseFund, _, _>(NodeCommands::lease_fund)
            .route::<MarketLeaseEnd, _, _>(NodeCommands::lease_end)
            .route::<MarketLeaseStatus, _, _>(NodeCommands::lease_status)
            .route::<WalletBalance, _, _>(|node, _, NoParams {}| async move {
                node.services.market.balance().await
            })
            .route::<DeployCreate, _, _>(|node, _, params| async move {
                node.services.objects.create_deployment(params).await
            })
            .route::<DeployUpdate, _, _>(|node, _, params| async move {
                node.services.objects.update_deployment(params).await
            })
            .route::<DeployStatus, _, _>(|node, _, DeploymentRef { name }| async move {
                node.services.deployments.status(&name).await
            })
            .route::<DeployReplicas, _, _>(|node, call, params| async move {
                node.services.deployments.report(call.peer()?, params).await
            })
            .route::<DeployReplicaStart, _, _>(|node, call, params| async move {
                node.services.deployments.start(call.peer()?, params).await
            })
            .route::<DeployReplicaStop, _, _>(|node, call, params| async move {
                node.services.deployments.stop(call.peer()?, params).await
            })
            .route::<DeployList, _, _>(|node, _, NoParams {}| async move {
                node.services.objects.deployments().await
            })
            .route::<DeployHistory, _, _>(|node, _, DeploymentRef { name }| async move {
                node.services.objects.deployment_history(&name).await
            })
            .route::<DeployRollback, _, _>(|node, _, params| async move {
                node.services.objects.rollback_deployment(params).await
            })
            .route::<DeployPause, _, _>(|node, _, DeploymentRef { name }| async move {
                node.services.objects.pause_deployment(&name, true).await
            })
            .route::<DeployResume, _, _>(|node, _, DeploymentRef { name }| async move {
                node.services.objects.pause_deployment(&name, false).await
            })
            .route::<DeployPromote, _, _>(|node, _, DeploymentRef { name }| async move {
                node.services.objects.promote_deployment(&name).await
            })
            .route::<DeployDelete, _, _>(|node, _, DeploymentRef { name }| async move {
                node.services.objects.delete_deployment(&name).await
            })
            .route::<JobCreate, _, _>(|node, _, JobCreateParams { name, spec }| async move {
                node.services.objects.create_job(&name, spec).await
            })
            .route::<JobStatusCommand, _, _>(|node, _, JobRef { name }| async move {
                node.services.jobs.job_status(&name).await
            })
            .route::<JobList, _, _>(|node, _, NoParams {}| async move {
                node.services.jobs.job_list().await
            })
            .route::<JobLogsCommand, _, _>(|node, _, params| async move {
                node.services.jobs.job_logs(params).await
            })
            .route::<JobDelete, _, _>(|node, _, JobRef { name }| async move {
                node.services.objects.delete_job(&name).await
            })
            .route::<JobPods, _, _>(|node, call, params| async move {
                node.services.jobs.report(call.peer()?, params).await
            })
            .route::<JobPodStart, _, _>(|node, call, params| async move {
                node.services.jobs.start(call.peer()?, params).await
            })
            .route::<JobPodStop, _, _>(|node, call, params| async move {
                node.services.jobs.stop(call.peer()?, params).await
            })
            .route::<CronCreate, _, _>(|node, _, CronCreateParams { name, spec }| async move {
                node.services
                    .objects
                    .change_cron(&name, CronChange::Create(Box::new(spec)))
                    .await
            })
            .route::<CronList, _, _>(|node, _, NoParams {}| async move {
                node.services.jobs.cron_list().await
            })
            .route::<CronStatusCommand, _, _>(|node, _, CronRef { name }| async move {
                node.services.jobs.cron_status(&name).await
            })
            .route::<CronTrigger, _, _>(|node, _, CronRef { name }| async move {
                node.services
                    .objects
                    .change_cron(&name, CronChange::Trigger)
                    .await
            })
            .route::<CronSuspend, _, _>(|node, _, CronRef { name }| async move {
                node.services
                    .objects
                    .change_cron(&name, CronChange::Suspend(true))
                    .await
            })
            .route::<CronResume, _, _>(|node, _, CronRef { name }| async move {
                node.services
                    .objects
                    .change_cron(&name, CronChange::Suspend(false))
                    .await
            })
            .route::<CronDelete, _, _>(|node, _, CronRef { name }| async move {
                node.services.objects.delete_cron(&name).await
            })
            .route::<CronLogsCommand, _, _>(|node, _, params| async move {
                node.services.jobs.cron_logs(params).await
            })
            .route::<CronBidCommand, _, _>(|node, call, params| async move {
                node.services.jobs.cron_bid(call.peer()?, params).await
            })
            .route::<AutoscaleCreate, _, _>(
                |node, _, AutoscaleCreateParams { name, spec }| async move {
                    node.services
                        .objects
                        .change_autoscaler(&name, AutoscaleChange::Create(Box::new(spec)))
                        .await
                },
            )
            .route::<AutoscaleAdjust, _, _>(|node, _, params| async move {
                let name = params.name.clone();
                node.services
                    .objects
                    .change_autoscaler(&name, AutoscaleChange::Adjust(params))
                    .await
            })
            .route::<AutoscaleStatusCommand, _, _>(|node, _, AutoscaleRef { name }| async move {
                node.services.deployments.autoscale_status(&name).await
            })
            .route::<AutoscaleDelete, _, _>(|node, _, AutoscaleRef { name }| async move {
                node.services.objects.delete_autoscaler(&name).await
            })
            .route::<ConfigCreate, _, _>(|node, _, params| async move {
                node.services
                    .objects
                    .put_config(params, ValuesChange::Create)
                    .await
            })
            .route::<ConfigUpdate, _, _>(|node, _, params| async move {
                node.services
                    .objects
                    .put_config(params, ValuesChange::Update)
                    .await
            })
            .route::<ConfigGet, _, _>(|node, _, ConfigRef { name }| async move {
                node.services.objects.config(&name).await
            })
            .route::<ConfigList, _, _>(|node, _, NoParams {}| async move {
                node.services.objects.configs().await
            })
            .route::<ConfigDelete, _, _>(|node, _, ConfigRef { name }| async move {
                node.services
                    .objects
                    .delete_values(ObjectKind::Config, &name)
                    .await
            })
            .route::<SecretCreate, _, _>(|node, _, params| async move {
                node.services
                    .objects
                    .put_secret(params, ValuesChange::Create)
                    .await
            })
            .route::<SecretRotate, _, _>(|node, _, params| async move {
                node.services
                    .objects
                    .put_secret(params, ValuesChange::Update)
                    .await
            })
            .route::<SecretDescribe, _, _>(|node, _, SecretRef { name }| async move {
                node.services.objects.secret(&name).await
            })
            .route::<SecretList, _, _>(|node, _, NoParams {}| async move {
                node.services.objects.secrets().await
            })
            .route::<SecretDelete, _, _>(|node, _, SecretRef { name }| async move {
                node.services
                    .objects
                    .delete_values(ObjectKind::Secret, &name)
                    .await
            })
            .route::<VolumeCreate, _, _>(|node, _, params| async move {
                Ok(node
                    .services
                    .workloads
                    .create_volume(&params.name, params.size_mib)
                    .await?)
            })
            .route::<VolumeList, _, _>(|node, _, NoParams {}| async move {
                Ok(node.services.workloads.volumes().await?)
            })
            .route::<VolumeDelete, _, _>(|node, _, VolumeRef { name }| async move {
                Ok(node.services.workloads.delete_volume(&name).await?)
            })
            .route::<VolumeSnapshot, _, _>(|node, _, VolumeRef { name }| async move {
                node.services.backups.create(&name, None, None).await
            })
            .route::<BackupCreate, _, _>(|node, _, params| async move {
                node.services
                    .backups
                    .create(
                        &params.volume,
                        params.node.as_deref(),
                        params.path.as_deref(),
                    )
                    .await
            })
            .route::<BackupList, _, _>(|node, _, NoParams {}| async move {
                node.services.backups.list().await
            })
            .route::<BackupRestore, _, _>(|node, _, params| async move {
                node.services
                    .backups
                    .restore(&params.backup, &params.volume, params.size_mib)
                    .await
            })
            .route::<BackupImport, _, _>(|node, _, ImportParams { path, backup }| async move {
                node.services.backups.import(&path, &backup).await
            })
            .route::<BackupDelete, _, _>(|node, _, BackupRef { backup }| async move {
                node.services.backups.delete(&backup).await
            })
            .route::<BackupReceive, _, _>(|node, call, params| async move {
                node.services.backups.receive(call.peer()?, params).await
            })
            .route::<BackupKeys, _, _>(|node, _, KeyBackupParams { to }| async move {
                node.services.backups.seal_keys(&to, &node.services.access)
            })
            .route::<BackupRead, _, _>(|node, call, params| async move {
                node.services.backups.read(call.peer()?, params).await
            })
            .route::<ServiceCreate, _, _>(|node, _, params| async move {
                node.services.objects.create_service(params).await
            })
            .route::<ServiceList, _, _>(|node, _, NoParams {}| async move {
                node.services.objects.services().await
            })
            .route::<IngressCreate, _, _>(|node, _, params| async move {
                node.services.objects.create_ingress(params).await
            })
            .route::<IngressList, _, _>(|node, _, NoParams {}| async move {
                node.services.objects.ingresses().await
            })
            .route::<IngressDelete, _, _>(|node, _, IngressRef { name }| async move {
                node.services
                    .objects
                    .delete_values(ObjectKind::Ingress, &name)
                    .await
            })
            .route::<ServiceDelete, _, _>(|node, _, ServiceRef { name }| async move {
                node.services
                    .objects
                    .delete_values(ObjectKind::Service, &name)
                    .await
            })
            .route::<ServiceEndpoints, _, _>(|node, _, ServiceRef { name }| async move {
                node.services.services.endpoints(&name).await
            })
            .route::<ServiceForward, _, _>(|node, _, params| async move {
                node.services.services.forward(params).await
            })
            .route::<ServiceUnforward, _, _>(|node, _, UnforwardParams { listen }| async move {
                node.services.services.unforward(&listen)
            })
            .route::<ServiceForwards, _, _>(|node, _, NoParams {}| async move {
                Ok(node.services.services.forwards())
            })
            .route::<NetworkStatusCommand, _, _>(|node, _, NoParams {}| async move {
                node.services.services.network().await
            })
            .route::<NetworkLookup, _, _>(|node, _, LookupParams { peer }| async move {
                node.services.services.lookup(&peer).await
            })
            .route::<NamespaceCreate, _, _>(|node, _, params| async move {
                node.services.objects.create_namespace(params).await
            })
            .route::<NamespaceList, _, _>(|node, _, NoParams {}| async move {
                node.services.objects.namespaces().await
            })
            .route::<NamespaceDelete, _, _>(|node, _, NamespaceRef { name }| async move {
                node.services
                    .objects
                    .delete_values(ObjectKind::Namespace, &name)
                    .await
            })
            .route::<NamespaceUsage, _, _>(|node, _, NamespaceRef { name }| async move {
                node.services.objects.local_usage(&name).await
            })
            .route::<PolicyCreate, _, _>(|node, _, params| async move {
                node.services.objects.create_policy(params).await
            })
            .route::<PolicyList, _, _>(|node, _, NoParams {}| async move {
                node.services.objects.policies().await
            })
            .route::<PolicyDelete, _, _>(|node, _, PolicyRef { name }| async move {
                node.services
                    .objects
                    .delete_values(ObjectKind::Policy, &name)
                    .await
            })
            .route::<PolicyValidate, _, _>(
                |node, _, ValidateParams { workload, lease }| async move {
                    let origin = if lease { Origin::Lease } else { Origin::Fleet };
                    node.services.objects.verdict(&workload, origin).await
                },
            )
            .route::<ObjectPut, _, _>(|node, _, params| async move {
                node.services.objects.put(params).await
            })
            .route::<ObjectSync, _, _>(|node, _, params| async move {
                node.services.objects.page(params).await
            })
    })
}

/// A workload as `principal` with `role` may see it: whole for operators and for its own owner;
/// to the read role, others' workloads without their command line, owner, labels or key.
/// `record` as `principal` may see it: whole for operators and for whoever started it, else
/// redacted.
fn view_for(record: &WorkloadRecord, principal: Caller, role: Role) -> Workload {
    record.view(role < Role::Operate && record.owner != principal.owner())
}

fn invalid(message: impl Into<String>) -> InvokeFailure {
    InvokeFailure::new(ErrorCode::InvalidParams, message)
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
    /// The fleet objects this member keeps (deployments).
    pub objects: FleetObjects,
    /// Backups of this node's volumes, and copies other members made.
    pub backups: crate::backups::Backups,
    /// Forwards to services and leased containers, and this node's end of others' streams.
    pub services: crate::services::Services,
    /// Deployments' replicas here, and the controller of those this member controls.
    pub deployments: Deployments,
    /// Jobs' and cron jobs' pods here, and the controller of those this member controls.
    pub jobs: Jobs,
    /// Invokes answered, for the metrics.
    pub invokes: crate::metrics::InvokeMetrics,
    /// Where each command's task is spawned, so that a stopping node waits for it.
    pub tasks: crate::tasks::Tasks,
    /// Whether a call from the gateway without an API key is refused.
    pub gateway_requires_key: bool,
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

impl NodeCommands {
    /// Commands served from `services`.
    pub fn new(services: NodeServices) -> Self {
        Self {
            services: Arc::new(services),
        }
    }

    /// The latest `limit` audit records, newest first.
    pub async fn recent_audit(&self, limit: usize) -> Result<Vec<AuditRecord>, crate::StoreError> {
        self.services
            .store
            .run(move |store| store.recent_audit(limit))
            .await
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
        NODE_COMMANDS.iter().map(|c| c.name).collect()
    }

    /// Names of the commands a caller with `role` may run.
    pub fn names_for(role: Role) -> Vec<&'static str> {
        NODE_COMMANDS
            .iter()
            .filter(|c| c.role <= role)
            .map(|c| c.name)
            .collect()
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
        let record = self
            .services
            .store
            .run(move |store| store.lease(&lease))
            .await;
        matches!(record, Ok(Some(r))
            if r.side == claw_market::lease::Side::Provider && r.counterparty == peer.to_string())
    }

    /// The namespaces a call acts in, for an API key's scope: those its params name, the
    /// namespace of the workload it names, and the namespaces the spec of the deployment, job,
    /// cron job or autoscaler it names names (each of these without one is in `default`).
    async fn namespaces_acted_in(&self, command: &str, params: &Value) -> Vec<String> {
        let mut found = namespaces_named(params);
        if let Some(reference) = params.get("workload").and_then(Value::as_str)
            && let Some(namespace) = self.services.workloads.namespace_of(reference).await
        {
            found.push(namespace);
        }
        let kind = match command.split('.').next() {
            Some("deploy") => Some(ObjectKind::Deployment),
            Some("job") => Some(ObjectKind::Job),
            Some("cron") => Some(ObjectKind::CronJob),
            Some("autoscale") => Some(ObjectKind::Autoscaler),
            _ => None,
        };
        if let Some(kind) = kind
            && let Some(name) = params.get("name").and_then(Value::as_str)
            && let Some(spec) = self.services.objects.spec_json(kind, name).await
        {
            let named = namespaces_named(&spec);
            if named.is_empty() {
                found.push(DEFAULT_NAMESPACE.to_owned());
            }
            found.extend(named);
        }
        found.sort();
        found.dedup();
        found
    }

    /// The market service.
    pub fn market(&self) -> &Market {
        &self.services.market
    }

    /// The fleet objects this member keeps.
    pub fn objects(&self) -> &FleetObjects {
        &self.services.objects
    }

    /// This node's backups.
    pub fn backups(&self) -> &crate::backups::Backups {
        &self.services.backups
    }

    /// This node's service forwards and streams.
    pub fn services(&self) -> &crate::services::Services {
        &self.services.services
    }

    /// Deployments' replicas and controllers.
    pub fn deployments(&self) -> &Deployments {
        &self.services.deployments
    }

    /// Jobs' and cron jobs' pods and controllers.
    pub fn jobs(&self) -> &Jobs {
        &self.services.jobs
    }

    /// The GPUs.
    pub fn probe(&self) -> &Arc<GpuProbe> {
        &self.services.probe
    }

    /// The node's store.
    pub fn store(&self) -> &Store {
        &self.services.store
    }

    /// Invokes answered so far, by command and outcome.
    pub fn invoke_metrics(&self) -> &crate::metrics::InvokeMetrics {
        &self.services.invokes
    }

    /// Checks that the command exists, that the caller may run it (within its API key's scope,
    /// when it carries one), and the params' size.
    async fn authorize(
        &self,
        caller: Caller,
        role: Role,
        key: Option<&ApiKeyInfo>,
        request: &InvokeRequest,
    ) -> Result<(), InvokeFailure> {
        let Some(spec) = node_command(&request.command) else {
            return Err(InvokeFailure::new(
                ErrorCode::UnknownCommand,
                format!(
                    "no command {:?}; node.capabilities lists them",
                    request.command
                ),
            ));
        };
        if role < spec.role && !self.is_lessee(caller, spec.name, &request.params).await {
            let who = match caller {
                Caller::Peer(peer) => format!("peer {peer}"),
                Caller::Gateway => "the gateway".to_owned(),
            };
            return Err(InvokeFailure::new(
                ErrorCode::Unauthorized,
                format!(
                    "{} needs the {} role; {who} has {role}",
                    spec.name, spec.role
                ),
            ));
        }
        if let Some(key) = key {
            let acted_in = self.namespaces_acted_in(spec.name, &request.params).await;
            if let Some(refusal) = key.refusal(spec.name, spec.role, &acted_in) {
                return Err(InvokeFailure::new(ErrorCode::Unauthorized, refusal));
            }
        }
        let size = request.params.to_string().len();
        if size > MAX_PARAMS_BYTES {
            return Err(invalid(format!(
                "params are {size} bytes, more than the {MAX_PARAMS_BYTES}-byte limit"
            )));
        }
        Ok(())
    }
}

/// The handlers, one per command; the router parses their params and encodes their answers.
impl NodeCommands {
    fn capabilities(
        self,
        call: Call,
        NoParams {}: NoParams,
    ) -> Result<Capabilities, InvokeFailure> {
        Ok(Capabilities {
            commands: node_descriptions().into(),
            caller_role: call.role,
        })
    }

    async fn gpu_list(self, _: Call, NoParams {}: NoParams) -> Result<GpuListing, InvokeFailure> {
        let probe = Arc::clone(&self.services.probe);
        let cordoned = self
            .services
            .store
            .run(|store| store.cordoned_gpus())
            .await?;
        blocking(move || GpuListing {
            nvml: probe.status(),
            gpus: probe.devices(),
            cordoned,
        })
        .await
    }

    async fn gpu_metrics(
        self,
        _: Call,
        params: GpuMetricsParams,
    ) -> Result<GpuReadings, InvokeFailure> {
        let holders = self
            .services
            .workloads
            .allocations()
            .await
            .map_err(InvokeFailure::from)?;
        let services = Arc::clone(&self.services);
        let (nvml, metrics) = blocking(move || {
            (
                services.probe.status(),
                services.probe.metrics(services.xids.as_ref()),
            )
        })
        .await?;
        let gpus: Vec<GpuReading> = metrics
            .into_iter()
            .filter(|m| params.gpu.as_ref().is_none_or(|g| *g == m.uuid))
            .map(|metrics| GpuReading {
                workload: holders
                    .get(&metrics.uuid)
                    .filter(|holder| **holder != crate::store::Holder::Cordon)
                    .map(ToString::to_string),
                metrics,
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
        Ok(GpuReadings { nvml, gpus })
    }

    async fn system_info(self, _: Call, NoParams {}: NoParams) -> Result<HostInfo, InvokeFailure> {
        let dir = self.services.data_dir.clone();
        blocking(move || probe_host(&dir)).await
    }

    async fn health(self, _: Call, NoParams {}: NoParams) -> Result<HealthReport, InvokeFailure> {
        let docker = self
            .services
            .workloads
            .engine_version()
            .await
            .map_err(|e| e.to_string());
        let services = Arc::clone(&self.services);
        blocking(move || {
            let nvml = services.probe.status();
            let gpus = services.probe.metrics(services.xids.as_ref());
            let cordoned = services.store.cordoned().unwrap_or(false);
            assess(&HealthInputs {
                nvml: &nvml,
                gpus: &gpus,
                docker,
                data_dir: &services.data_dir,
                cordoned,
            })
        })
        .await
    }

    async fn label(self, _: Call, params: LabelParams) -> Result<Labels, InvokeFailure> {
        for (key, value) in &params.set {
            if key.is_empty() || key.len() > 64 || value.len() > 256 {
                return Err(invalid(format!(
                    "label {key:?}: keys 1 to 64 characters, values at most 256"
                )));
            }
        }
        self.services
            .store
            .run(move |store| {
                let mut labels = store.labels()?;
                for key in &params.remove {
                    labels.remove(key);
                }
                labels.extend(params.set);
                if labels.len() > 64 {
                    return Ok(Err(invalid("a node has at most 64 labels")));
                }
                store.set_labels(&labels)?;
                Ok(Ok(Labels { labels }))
            })
            .await?
    }

    /// `node.taint` (`add`) and `node.untaint` (`remove`): the taints now, and the workloads a
    /// `NoExecute` taint evicted.
    async fn change_taints(
        self,
        add: Option<Taint>,
        remove: Option<UntaintParams>,
    ) -> Result<NodeTaints, InvokeFailure> {
        if let Some(taint) = &add {
            taint.check().map_err(|e| invalid(e.to_string()))?;
        }
        let taints = self
            .services
            .store
            .run(move |store| {
                let mut taints = store.taints()?;
                if let Some(taint) = add {
                    taints.retain(|t| (&t.key, t.effect) != (&taint.key, taint.effect));
                    taints.push(taint);
                }
                if let Some(remove) = remove {
                    taints.retain(|t| {
                        t.key != remove.key || remove.effect.is_some_and(|e| e != t.effect)
                    });
                }
                if taints.len() > MAX_TAINTS {
                    return Ok(Err(invalid(format!(
                        "a node has at most {MAX_TAINTS} taints"
                    ))));
                }
                taints.sort();
                store.set_taints(&taints)?;
                Ok(Ok(taints))
            })
            .await??;
        tracing::info!(taints = ?taints.iter().map(Taint::to_text).collect::<Vec<_>>(), "node taints changed");
        self.services.market.offers_changed();
        let evicted = self.evict(&taints).await?;
        Ok(NodeTaints { taints, evicted })
    }

    /// Stops this node's workloads that do not tolerate one of its `NoExecute` taints: a
    /// replica, job pod or cron pod by its spec's tolerations, any other by none. A lease's
    /// container runs its term.
    async fn evict(&self, taints: &[Taint]) -> Result<Vec<String>, InvokeFailure> {
        let executing: Vec<&Taint> = taints
            .iter()
            .filter(|t| t.effect == TaintEffect::NoExecute)
            .collect();
        if executing.is_empty() {
            return Ok(Vec::new());
        }
        let objects = &self.services.objects;
        let mut evicted = Vec::new();
        for workload in self.services.workloads.active().await? {
            if self
                .services
                .workloads
                .lease_of(&workload.id)
                .await
                .is_some()
            {
                continue;
            }
            let tolerations = match ObjectKind::parse_key(&workload.owner) {
                Some((ObjectKind::Deployment, name)) => objects
                    .deployment(name)
                    .await
                    .map(|d| d.spec.tolerations)
                    .unwrap_or_default(),
                Some((ObjectKind::Job, name)) => objects
                    .job(name)
                    .await
                    .map(|j| j.spec.tolerations)
                    .unwrap_or_default(),
                Some((ObjectKind::CronJob, name)) => objects
                    .cron(name)
                    .await
                    .ok()
                    .and_then(|c| c.spec.job)
                    .map(|j| j.tolerations)
                    .unwrap_or_default(),
                _ => Vec::new(),
            };
            if executing
                .iter()
                .all(|t| claw_api::taints::tolerated(t, &tolerations))
            {
                continue;
            }
            let stop = StopParams {
                workload: workload.id.clone(),
                timeout_secs: None,
                remove: false,
            };
            match self.services.workloads.stop(stop).await {
                Ok(_) => {
                    tracing::info!(workload = %workload.id, "evicted by a NoExecute taint");
                    evicted.push(workload.id);
                }
                Err(error) => tracing::warn!(workload = %workload.id, %error, "not evicted"),
            }
        }
        Ok(evicted)
    }

    async fn set_cordon(self, cordon: bool) -> Result<Cordon, InvokeFailure> {
        self.services
            .store
            .run(move |store| store.set_cordoned(cordon))
            .await?;
        tracing::info!(cordoned = cordon, "node cordon changed");
        self.services.market.offers_changed();
        Ok(Cordon { cordoned: cordon })
    }

    async fn set_gpu_cordon(
        self,
        gpu: String,
        cordoned: bool,
    ) -> Result<GpuCordonState, InvokeFailure> {
        if !self.services.probe.devices().iter().any(|d| d.uuid == gpu) {
            return Err(InvokeFailure::new(
                ErrorCode::NotFound,
                format!("no GPU {gpu:?} on this node (gpu.list shows them)"),
            ));
        }
        let uuid = gpu.clone();
        let held_by = self
            .services
            .store
            .run(move |store| {
                store.set_gpu_cordoned(&uuid, cordoned)?;
                Ok(store
                    .allocations()?
                    .remove(&uuid)
                    .filter(|holder| *holder != crate::store::Holder::Cordon))
            })
            .await?
            .map(|holder| holder.to_string());
        tracing::info!(gpu, cordoned, "GPU cordon changed");
        self.services.market.offers_changed();
        Ok(GpuCordonState {
            gpu,
            cordoned,
            held_by,
        })
    }

    async fn drain(self, call: Call, NoParams {}: NoParams) -> Result<DrainReport, InvokeFailure> {
        self.services
            .store
            .run(|store| store.set_draining())
            .await?;
        self.services.market.offers_changed();
        let moving = self.services.deployments.moving().await;
        let outcomes = self
            .services
            .workloads
            .drain(call.idempotency_key.as_deref(), moving)
            .await?;
        let pending = outcomes.iter().filter(|o| o.outcome != "stopped").count();
        Ok(DrainReport {
            cordoned: true,
            workloads: outcomes,
            pending,
            note: (pending > 0).then(|| {
                "the node keeps stopping the pending workloads every announce interval until none runs; \
                 a deployment's replicas are started elsewhere first (stopped here at the latest 2 minutes \
                 into the drain)"
                    .to_owned()
            }),
        })
    }

    async fn system_run(
        self,
        _: Call,
        params: SystemRunParams,
    ) -> Result<SystemRunOutput, InvokeFailure> {
        system_run::run(&self.services.system_run, params)
            .await
            .map_err(|e| match e {
                SystemRunError::Invalid(m) => invalid(m),
                SystemRunError::NotAllowed(m) => InvokeFailure::new(ErrorCode::Unauthorized, m),
                spawn @ SystemRunError::Spawn { .. } => {
                    InvokeFailure::new(ErrorCode::NotFound, spawn.to_string())
                }
            })
    }

    async fn workload_run(self, call: Call, params: RunParams) -> Result<Workload, InvokeFailure> {
        let started = self
            .services
            .workloads
            .run(call.principal.owner(), params, call.idempotency_key)
            .await?;
        Ok(started.view(false))
    }

    async fn workload_stop(self, _: Call, params: StopParams) -> Result<Workload, InvokeFailure> {
        Ok(self.services.workloads.stop(params).await?.view(false))
    }

    async fn workload_list(
        self,
        call: Call,
        params: ListParams,
    ) -> Result<WorkloadListing, InvokeFailure> {
        let workloads = self.services.workloads.list(params).await?;
        Ok(WorkloadListing {
            workloads: workloads
                .iter()
                .map(|w| view_for(w, call.principal, call.role))
                .collect(),
        })
    }

    async fn workload_inspect(
        self,
        call: Call,
        params: WorkloadRef,
    ) -> Result<WorkloadDetail, InvokeFailure> {
        let (record, container) = self.services.workloads.inspect(params).await?;
        Ok(WorkloadDetail {
            workload: view_for(&record, call.principal, call.role),
            container,
        })
    }

    async fn workload_logs(self, _: Call, params: LogsParams) -> Result<LogTail, InvokeFailure> {
        Ok(self.services.workloads.logs(params).await?)
    }

    async fn workload_stats(
        self,
        _: Call,
        params: WorkloadRef,
    ) -> Result<WorkloadUsage, InvokeFailure> {
        Ok(self.services.workloads.stats(params).await?)
    }

    async fn container_exec(
        self,
        _: Call,
        params: ExecParams,
    ) -> Result<ExecOutput, InvokeFailure> {
        Ok(self.services.workloads.exec(params).await?)
    }

    async fn market_sell(self, _: Call, params: SellParams) -> Result<SellReport, InvokeFailure> {
        self.services.market.sell(params).await
    }

    fn market_offers(self, _: Call, params: OffersParams) -> Result<OfferListing, InvokeFailure> {
        self.services.market.offers(params)
    }

    async fn market_bid(self, call: Call, params: BidParams) -> Result<BidOutcome, InvokeFailure> {
        self.services
            .market
            .bid(params, call.idempotency_key.as_deref())
            .await
    }

    async fn market_leases(
        self,
        _: Call,
        params: LeasesParams,
    ) -> Result<LeaseListing, InvokeFailure> {
        self.services.market.leases(params).await
    }

    async fn market_cancel(self, _: Call, params: CancelParams) -> Result<Lease, InvokeFailure> {
        self.services.market.cancel(params).await
    }

    async fn market_revoke(self, _: Call, params: RevokeParams) -> Result<Lease, InvokeFailure> {
        self.services.market.revoke(params).await
    }

    async fn market_reputation(
        self,
        _: Call,
        params: ReputationParams,
    ) -> Result<ProviderReputation, InvokeFailure> {
        self.services.market.reputation(params).await
    }

    async fn market_receipts(
        self,
        _: Call,
        params: ReceiptsParams,
    ) -> Result<ReceiptListing, InvokeFailure> {
        self.services.market.receipts(params).await
    }

    /// The peer a market step is attributed to (the gateway acts for the node there).
    fn market_peer(&self, call: &Call) -> PeerId {
        call.principal.peer(self.services.access.local())
    }

    async fn market_arbitrate(
        self,
        call: Call,
        params: ArbitrateParams,
    ) -> Result<Arbitration, InvokeFailure> {
        let peer = self.market_peer(&call);
        self.services.market.arbitrate(peer, params).await
    }

    async fn lease_request(
        self,
        call: Call,
        params: LeaseRequestParams,
    ) -> Result<LeaseGrant, InvokeFailure> {
        let peer = self.market_peer(&call);
        self.services.market.lease_request(peer, params).await
    }

    async fn lease_fund(
        self,
        call: Call,
        params: FundParams,
    ) -> Result<LeaseStatus, InvokeFailure> {
        let peer = self.market_peer(&call);
        self.services.market.lease_fund(peer, params).await
    }

    async fn lease_end(self, call: Call, params: EndParams) -> Result<LeaseEnd, InvokeFailure> {
        let peer = self.market_peer(&call);
        self.services.market.lease_end(peer, params).await
    }

    async fn lease_status(
        self,
        call: Call,
        params: StatusParams,
    ) -> Result<LeaseStatus, InvokeFailure> {
        let peer = self.market_peer(&call);
        self.services.market.lease_status(peer, params).await
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
        self.audited(Caller::Gateway, role, request).await
    }

    /// Authorises and runs `request` under its deadline, then appends it to the audit log, all
    /// in one task of its own: a caller that stops waiting (a gateway's `node.invoke.cancel`, a
    /// mesh deadline shorter than the request's) drops only its wait, so the command is never cut
    /// halfway and its one audit record is always written. Past the deadline the caller is
    /// answered `TIMEOUT` and the command goes on in that task to its end.
    async fn audited(
        &self,
        caller: Caller,
        role: Role,
        request: InvokeRequest,
    ) -> Result<Value, InvokeFailure> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        self.services
            .tasks
            .spawn(self.clone().run_and_audit(caller, role, request, answer));
        answered.await.unwrap_or_else(|_| {
            Err(InvokeFailure::new(
                ErrorCode::Internal,
                "the command's task ended without an answer",
            ))
        })
    }

    async fn run_and_audit(
        self,
        caller: Caller,
        role: Role,
        request: InvokeRequest,
        answer: tokio::sync::oneshot::Sender<Result<Value, InvokeFailure>>,
    ) {
        let command = request.command.clone();
        let params_sha256 = audit_digest(&command, &request.params);
        let started = Instant::now();
        let mut unfinished = None;
        let key = match &request.api_key {
            None if caller == Caller::Gateway && self.services.gateway_requires_key => {
                Err(InvokeFailure::new(
                    ErrorCode::Unauthorized,
                    "this node answers only gateway calls that carry an API key \
                     (gateway.require_api_key; auth.create_key makes one)",
                ))
            }
            None => Ok(None),
            Some(token) => self.services.objects.key_of(token).await.map(Some),
        };
        // A call with a key runs with the lower of its caller's role and the key's.
        let role = match &key {
            Ok(Some(key)) => role.min(key.role),
            _ => role,
        };
        let key_name = match (&key, &request.api_key) {
            (Ok(Some(key)), _) => Some(key.name.clone()),
            (Err(_), Some(token)) => token.parts().ok().map(|(name, _)| name.to_owned()),
            _ => None,
        };
        let authorized = match key {
            Err(refused) => Err(refused),
            Ok(key) => self
                .authorize(caller, role, key.as_ref(), &request)
                .await
                .map(|()| key),
        };
        let result = match authorized {
            Err(refused) => Err(refused),
            Ok(key) => {
                let deadline = Duration::from_millis(request.deadline_ms);
                let call = Call {
                    principal: caller,
                    role,
                    idempotency_key: request.idempotency_key,
                    key,
                };
                // A panicking handler is answered and audited as INTERNAL, like any failure.
                let mut work = AssertUnwindSafe(router().dispatch(
                    self.clone(),
                    call,
                    &request.command,
                    request.params,
                ))
                .catch_unwind();
                match tokio::time::timeout(deadline, &mut work).await {
                    Ok(Ok(result)) => result,
                    Ok(Err(_)) => Err(InvokeFailure::new(
                        ErrorCode::Internal,
                        format!("{command} failed on the node"),
                    )),
                    Err(_) => {
                        unfinished = Some(work);
                        Err(InvokeFailure::new(
                            ErrorCode::Timeout,
                            format!(
                                "no answer within {} ms; the command goes on in the background",
                                deadline.as_millis()
                            ),
                        ))
                    }
                }
            }
        };
        let audited = Audited {
            caller: caller.label(),
            role,
            api_key: key_name,
            command,
            params_sha256,
        };
        self.audit(audited, started, &result).await;
        let _ = answer.send(result);
        if let Some(work) = unfinished {
            let _ = work.await;
        }
    }

    /// Counts and logs one invocation, and appends its record to the audit log.
    async fn audit(
        &self,
        Audited {
            caller,
            role,
            api_key,
            command,
            params_sha256,
        }: Audited,
        started: Instant,
        result: &Result<Value, InvokeFailure>,
    ) {
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let outcome = match result {
            Ok(_) => "ok".to_owned(),
            Err(failure) => failure.code.to_string(),
        };
        tracing::info!(
            caller,
            %role,
            api_key = api_key.as_deref(),
            command,
            outcome,
            duration_ms,
            "invoke"
        );
        let known = node_command(&command).map(|c| c.name);
        self.services
            .invokes
            .record(known.unwrap_or("unknown"), &outcome);
        let record = AuditRecord {
            at_ms: claw_attestation::unix_millis(std::time::SystemTime::now()),
            caller,
            role: Some(role.to_string()),
            api_key,
            command,
            params_sha256,
            outcome,
            duration_ms,
        };
        match self
            .services
            .store
            .run(move |store| store.append_audit(&record))
            .await
        {
            Ok(()) => {}
            Err(error) => tracing::error!(%error, "audit log write failed"),
        }
    }
}

/// `system.which`: each program's path on the node's `PATH`, or `None`.
async fn which(params: WhichParams) -> Result<Which, InvokeFailure> {
    params.check().map_err(|e| invalid(e.to_string()))?;
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::PermissionsExt as _;
        let path = std::env::var_os("PATH").unwrap_or_default();
        let dirs: Vec<std::path::PathBuf> = std::env::split_paths(&path).collect();
        let found = params
            .programs
            .into_iter()
            .map(|program| {
                let at = dirs.iter().map(|d| d.join(&program)).find(|candidate| {
                    std::fs::metadata(candidate)
                        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                });
                (program, at.map(|p| p.display().to_string()))
            })
            .collect();
        Which { found }
    })
    .await
    .map_err(|e| InvokeFailure::new(ErrorCode::Internal, e.to_string()))
}

/// The digest of a command's params the audit log keeps. A secret's values are left out first:
/// a digest of a short password is a guess away from the password.
fn audit_digest(command: &str, params: &Value) -> String {
    let carries_secret = [SecretCreate::NAME, SecretRotate::NAME].contains(&command);
    let text = match params {
        Value::Object(fields) if carries_secret => {
            let mut fields = fields.clone();
            if let Some(Value::Object(data)) = fields.get_mut("data") {
                data.values_mut().for_each(|v| *v = Value::Null);
            }
            Value::Object(fields).to_string()
        }
        _ if carries_secret => String::new(),
        other => other.to_string(),
    };
    hex::encode(Sha256::digest(text))
}

impl InvokeHandler for NodeCommands {
    fn handle(&self, caller: PeerId, request: InvokeRequest) -> HandlerFuture {
        let commands = self.clone();
        Box::pin(async move {
            let role = commands.services.access.role_of(&caller);
            let result = commands.audited(Caller::Peer(caller), role, request).await;
            InvokeResponse::from(result)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn every_command_of_the_catalogue_is_routed_and_nothing_else() {
        let routed: BTreeSet<&str> = router().names().collect();
        let listed: BTreeSet<&str> = NODE_COMMANDS.iter().map(|c| c.name).collect();
        assert_eq!(routed, listed);
        for name in LESSEE_COMMANDS {
            assert!(listed.contains(name), "{name}");
        }
    }

    #[test]
    fn capabilities_describe_the_catalogue() {
        let described = node_descriptions();
        assert_eq!(described.len(), NODE_COMMANDS.len());
        let label = described.iter().find(|c| c.name == "node.label").unwrap();
        assert_eq!(label.role, Role::Operate);
        assert_eq!(label.params["additionalProperties"], false);
        assert!(label.params["properties"]["set"].is_object());
    }
}
