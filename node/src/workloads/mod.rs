//! Container workloads on the Docker Engine, with their GPUs.
//!
//! Every workload is recorded in the store before its container exists, and its GPUs are
//! allocated in the same transaction, so no GPU is ever given to two workloads. Containers carry
//! `io.clawbernetes.*` labels naming the workload, the node and the GPUs, which lets
//! [`Workloads::reconcile`] rebuild the picture after a crash: records whose container is gone
//! are marked `lost` with the reason, containers whose record is gone are adopted.

mod docker;
mod mounts;
mod progress;
mod sized_volumes;
/// The workload commands' params, from the command surface.
pub mod spec {
    pub use claw_api::workload::*;
}
mod tenant;
mod value_files;
mod volumes;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStatsResponse,
    ContainerSummaryStateEnum, DeviceRequest, HostConfig, PortBinding, RestartPolicyNameEnum,
};
use claw_mesh::{ErrorCode, InvokeFailure, PeerId};
use rand::RngCore as _;
use serde::Serialize;

pub use crate::store::WorkloadRecord;
pub use claw_api::node::DrainOutcome;
pub use claw_api::workload::WorkloadState;
use claw_api::workload::{
    ContainerState, ExecOutput, LogLine, LogTail, PublishedPort, WorkloadUsage,
};
pub use progress::{ProgressBoard, ProgressReport};
use spec::{
    ExecParams, GpuRequest, Isolation, LABEL_PREFIX, ListParams, LogsParams, RestartPolicy,
    RunParams, SpecError, StopParams, WorkloadRef,
};

use crate::config::WorkloadsSection;
use crate::store::{AdmitError, Admitted, GpuChoice, Holder, Store, StoreError};
use docker::Engine;
pub(crate) use docker::EngineError;

const LABEL_WORKLOAD: &str = "io.clawbernetes.workload";
const LABEL_NODE: &str = "io.clawbernetes.node";
const LABEL_GPUS: &str = "io.clawbernetes.gpus";
const LABEL_OWNER: &str = "io.clawbernetes.owner";
const LABEL_NAME: &str = "io.clawbernetes.name";
const LABEL_IMAGE: &str = "io.clawbernetes.image";
const LABEL_CREATED: &str = "io.clawbernetes.created-ms";
const LABEL_ISOLATION: &str = "io.clawbernetes.isolation";
/// Environment variables only the node sets: GPU visibility, and the node's own.
const NODE_ENV: &[&str] = &["NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES"];
/// Under the data directory: staging points of pinned host volumes.
const MOUNTS_DIR: &str = "mounts";
/// Idempotency keys of leased workloads: this, then the lease id. Callers may not use it.
const LEASE_KEY_PREFIX: &str = "lease/";
/// Under the data directory: the logs of removed tenant containers.
const SAVED_LOGS_DIR: &str = "workload-logs";
/// Most log text one `workload.logs` returns.
const MAX_LOG_BYTES: usize = 1024 * 1024;
/// How often ended workloads' leftovers are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// How long to wait, and how often, for Docker to take in a killed container's OOM event.
const OOM_SETTLE: Duration = Duration::from_millis(300);
const OOM_SETTLE_TRIES: usize = 10;
/// Most output kept per stream of one `container.exec`.
const MAX_EXEC_BYTES: usize = 256 * 1024;

impl WorkloadRecord {
    fn container_name(&self) -> String {
        format!("claw-{}", self.id)
    }

    fn set_state(&mut self, state: WorkloadState, reason: Option<String>) {
        self.state = state;
        self.reason = reason;
        self.updated_ms = now_ms();
    }
}

/// A drain's outcome for a replica its deployment's controller moves.
pub const MOVING: &str = "moving: its deployment starts it elsewhere first, then stops it here";

use crate::now_ms;

/// Why a workload command failed.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// Params are malformed or out of range.
    #[error("{0}")]
    Invalid(String),
    /// Params are well-formed but not permitted here.
    #[error("{0}")]
    NotPermitted(String),
    /// No such workload, image or container.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the node's state (GPUs taken, name in use, not running).
    #[error("{0}")]
    Conflict(String),
    /// The node cannot take it now (cordoned, Docker down).
    #[error("{0}")]
    Unavailable(String),
    /// Docker did not answer in time.
    #[error("{0}")]
    Timeout(String),
    /// Anything else.
    #[error("{0}")]
    Internal(String),
}

impl WorkloadError {
    /// A short reason fit to send to a lessee: this node's own checks of the spec are said in
    /// full, anything from Docker or a registry only by its kind (its text could describe the
    /// provider's network).
    pub fn summary(&self) -> String {
        match self {
            Self::Invalid(message) | Self::NotPermitted(message) => {
                message.chars().take(200).collect()
            }
            Self::NotFound(_) => "the image or container was not found".to_owned(),
            Self::Conflict(_) => "it conflicts with the node's state".to_owned(),
            Self::Unavailable(_) => "the node cannot run workloads now".to_owned(),
            Self::Timeout(_) => "Docker did not answer in time".to_owned(),
            Self::Internal(_) => "an internal error on the provider".to_owned(),
        }
    }
}

impl From<WorkloadError> for InvokeFailure {
    fn from(error: WorkloadError) -> Self {
        let code = match &error {
            WorkloadError::Invalid(_) => ErrorCode::InvalidParams,
            WorkloadError::NotPermitted(_) => ErrorCode::Unauthorized,
            WorkloadError::NotFound(_) => ErrorCode::NotFound,
            WorkloadError::Conflict(_) => ErrorCode::Conflict,
            WorkloadError::Unavailable(_) => ErrorCode::Unavailable,
            WorkloadError::Timeout(_) => ErrorCode::Timeout,
            WorkloadError::Internal(_) => ErrorCode::Internal,
        };
        InvokeFailure::new(code, error.to_string())
    }
}

impl From<SpecError> for WorkloadError {
    fn from(error: SpecError) -> Self {
        match error {
            SpecError::Invalid(m) => Self::Invalid(m),
            SpecError::NotPermitted(m) => Self::NotPermitted(m),
        }
    }
}

impl From<EngineError> for WorkloadError {
    fn from(error: EngineError) -> Self {
        match error {
            EngineError::Unavailable(_) => Self::Unavailable(error.to_string()),
            EngineError::NotFound(m) => Self::NotFound(m),
            EngineError::Conflict(m) => Self::Conflict(m),
            EngineError::Timeout(_) => Self::Timeout(error.to_string()),
            EngineError::Failed(m) => Self::Internal(m),
        }
    }
}

impl From<StoreError> for WorkloadError {
    fn from(error: StoreError) -> Self {
        Self::Internal(error.to_string())
    }
}

/// What [`Workloads::reconcile`] changed.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct ReconcileReport {
    /// Workloads whose container is running, as recorded.
    pub running: usize,
    /// Records whose container exited since it was last seen.
    pub exited: Vec<String>,
    /// Records whose container disappeared.
    pub lost: Vec<String>,
    /// Records whose container was never created (the node stopped first).
    pub failed: Vec<String>,
    /// Containers found without a record, now recorded.
    pub adopted: Vec<String>,
}

/// The node's workloads. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Workloads {
    engine: Result<Engine, String>,
    store: Store,
    node: String,
    gpus: Arc<Vec<String>>,
    simulated: Arc<HashSet<String>>,
    config: Arc<WorkloadsSection>,
    /// The roots host volumes may come from.
    roots: Arc<Vec<mounts::VolumeRoot>>,
    /// The node's data directory (staging points, saved logs).
    data_dir: Arc<std::path::PathBuf>,
    /// The filesystems of size-limited volumes.
    sized: sized_volumes::SizedVolumes,
    /// Set once the node found it can firewall tenant networks.
    tenant_ready: Arc<tokio::sync::OnceCell<()>>,
    /// When leftovers of ended workloads were last swept, Unix ms.
    last_sweep_ms: Arc<std::sync::atomic::AtomicU64>,
    /// Workloads between admission and a running container, which reconcile must leave alone.
    in_flight: Arc<Mutex<HashSet<String>>>,
    progress: ProgressBoard,
    /// The fleet's configs and secrets, which workloads use by name.
    objects: crate::objects::FleetObjects,
}

/// What a workload takes from the fleet's configs and secrets, read when it starts: never
/// stored, never printed.
#[derive(Default)]
struct Resolved {
    /// Environment variables.
    env: Vec<(String, zeroize::Zeroizing<String>)>,
    /// Files, per mount.
    mounts: Vec<value_files::MountFiles>,
    /// The binds of the named volumes it mounts.
    volume_binds: Vec<String>,
}

impl From<crate::objects::ValuesError> for WorkloadError {
    fn from(error: crate::objects::ValuesError) -> Self {
        use crate::objects::ValuesError as E;
        let message = error.to_string();
        match error {
            E::NotFound(..) => Self::NotFound(message),
            E::NoKey(..) => Self::Invalid(message),
            E::NotAllowed(_) | E::Unreadable(..) => Self::NotPermitted(message),
            E::Behind(..) => Self::Unavailable(message),
            E::Store(_) => Self::Internal(message),
        }
    }
}

/// The container's environment: the caller's variables, less those the node sets (GPU
/// visibility is the node's to set, whatever the params or the image say), then the node's.
fn container_env(record: &WorkloadRecord, params: &RunParams, resolved: &Resolved) -> Vec<String> {
    let mut env: Vec<String> = params
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain(resolved.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .filter(|(k, _)| !NODE_ENV.contains(k) && !k.starts_with("CLAWBERNETES_"))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    env.push(format!("CLAWBERNETES_WORKLOAD={}", record.id));
    env.push(format!("CLAWBERNETES_GPUS={}", record.gpus.join(",")));
    env.push(format!(
        "NVIDIA_VISIBLE_DEVICES={}",
        if record.gpus.is_empty() {
            "void".to_owned()
        } else {
            record.gpus.join(",")
        }
    ));
    env.push(format!(
        "CUDA_VISIBLE_DEVICES={}",
        (0..record.gpus.len())
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",")
    ));
    env
}

impl Workloads {
    /// Workloads of node `node` on the Docker Engine from `config`, allocating from `gpus`
    /// (UUIDs in inventory order; those in `simulated` get no device request).
    pub fn new(
        store: Store,
        node: PeerId,
        gpus: Vec<String>,
        simulated: HashSet<String>,
        config: WorkloadsSection,
        data_dir: &std::path::Path,
        objects: crate::objects::FleetObjects,
    ) -> Self {
        let engine = Engine::connect(config.docker_socket.as_deref()).map_err(|e| e.to_string());
        let root = |path: &String, writable| {
            std::path::Path::new(path)
                .canonicalize()
                .ok()
                .map(|path| mounts::VolumeRoot { path, writable })
        };
        let roots = config
            .writable_volume_roots
            .iter()
            .filter_map(|p| root(p, true))
            .chain(config.volume_roots.iter().filter_map(|p| root(p, false)))
            .collect();
        Self {
            engine,
            store,
            node: node.to_string(),
            gpus: Arc::new(gpus),
            simulated: Arc::new(simulated),
            config: Arc::new(config),
            roots: Arc::new(roots),
            data_dir: Arc::new(data_dir.to_path_buf()),
            sized: sized_volumes::SizedVolumes::new(data_dir),
            tenant_ready: Arc::default(),
            last_sweep_ms: Arc::default(),
            in_flight: Arc::default(),
            progress: ProgressBoard::default(),
            objects,
        }
    }

    /// Reads the config and secret values `params` uses, from this member's copy; a secret's
    /// are opened with this node's key.
    async fn resolve(&self, params: &RunParams) -> Result<Resolved, WorkloadError> {
        let mut values = HashMap::new();
        for (kind, name) in params.sources() {
            let read = self.objects.values(kind, &name).await?;
            values.insert((kind, name), read);
        }
        let lookup = |source: Result<(spec::SourceKind, String), SpecError>| {
            let source = source?;
            values
                .get(&source)
                .ok_or_else(|| WorkloadError::Internal("a source was not read".to_owned()))
                .map(|read| (source, read))
        };
        let mut resolved = Resolved {
            volume_binds: self.volume_binds(&params.volume_mounts).await?,
            ..Resolved::default()
        };
        for (env, reference) in &params.env_from {
            let ((kind, name), read) = lookup(reference.source())?;
            let value = read.get(&reference.key).ok_or_else(|| {
                crate::objects::ValuesError::NoKey(kind.as_str(), name, reference.key.clone())
            })?;
            resolved
                .env
                .push((env.clone(), zeroize::Zeroizing::new(value.to_owned())));
        }
        for mount in &params.files {
            let (_, read) = lookup(mount.source())?;
            resolved.mounts.push(value_files::MountFiles {
                path: mount.path.clone(),
                files: read
                    .iter()
                    .map(|(k, v)| (k.to_owned(), zeroize::Zeroizing::new(v.to_owned())))
                    .collect(),
            });
        }
        Ok(resolved)
    }

    /// Refuses `params` when a fleet policy does, naming the policy and the rule.
    pub async fn admissible(
        &self,
        params: &RunParams,
        origin: claw_api::policies::Origin,
    ) -> Result<(), WorkloadError> {
        self.objects
            .admit_workload(params, origin)
            .await
            .map_err(|refused| match refused.code {
                ErrorCode::Unauthorized => WorkloadError::NotPermitted(refused.message),
                _ => WorkloadError::Internal(refused.message),
            })
    }

    fn value_files(&self) -> std::path::PathBuf {
        value_files::root(&self.node)
    }

    /// Whether this node can run tenant workloads (every lease's): it must be able to firewall
    /// their networks. Once it could, it is not asked again.
    pub async fn tenant_ready(&self) -> Result<(), String> {
        if self.tenant_ready.initialized() {
            return Ok(());
        }
        self.engine_version()
            .await
            .map_err(|e| format!("tenant workloads need Docker: {e}"))?;
        tenant::check(&self.node).await?;
        let _ = self.tenant_ready.set(());
        Ok(())
    }

    fn staging(&self) -> std::path::PathBuf {
        self.data_dir.join(MOUNTS_DIR)
    }

    fn saved_logs(&self, id: &str) -> std::path::PathBuf {
        self.data_dir.join(SAVED_LOGS_DIR).join(format!("{id}.log"))
    }

    /// Progress of long operations, by idempotency key.
    pub fn progress(&self) -> &ProgressBoard {
        &self.progress
    }

    fn engine(&self) -> Result<&Engine, WorkloadError> {
        self.engine
            .as_ref()
            .map_err(|e| WorkloadError::Unavailable(e.clone()))
    }

    /// The Docker Engine's version, or why it is unreachable.
    pub async fn engine_version(&self) -> Result<String, WorkloadError> {
        Ok(self.engine()?.version().await?)
    }

    /// GPU UUID → the workload or lease holding it.
    pub async fn allocations(&self) -> Result<BTreeMap<String, Holder>, WorkloadError> {
        Ok(self.store.run(|store| store.allocations()).await?)
    }

    /// Starts a workload owned by `owner` (a peer id, or `openclaw-gateway`). With an idempotency
    /// key this owner used before, answers with the workload that key started instead of
    /// starting another, for as long as that workload's record lives (restarts included).
    pub async fn run(
        &self,
        owner: String,
        params: RunParams,
        idempotency_key: Option<String>,
    ) -> Result<WorkloadRecord, WorkloadError> {
        if let Some(key) = &idempotency_key
            && key.starts_with(LEASE_KEY_PREFIX)
        {
            return Err(WorkloadError::Invalid(format!(
                "idempotency keys starting with {LEASE_KEY_PREFIX:?} are the node's own, for leased workloads"
            )));
        }
        self.start(owner, params, idempotency_key, None).await
    }

    /// Starts the workload of lease `lease_id` for its lessee on the GPUs the lease reserved
    /// (any GPUs the params name are ignored). The lease id is the idempotency key, so a
    /// retried start answers with the workload already started.
    pub async fn run_leased(
        &self,
        lessee: PeerId,
        mut params: RunParams,
        lease_id: &str,
        gpus: Vec<String>,
    ) -> Result<WorkloadRecord, WorkloadError> {
        params.gpus = None;
        params.gpu_uuids = None;
        params
            .labels
            .insert("clawbernetes-lease".to_owned(), lease_id.to_owned());
        let choice = GpuChoice::Reserved(lease_id.to_owned(), gpus);
        self.start(
            lessee.to_string(),
            params,
            Some(format!("{LEASE_KEY_PREFIX}{lease_id}")),
            Some(choice),
        )
        .await
    }

    async fn start(
        &self,
        owner: String,
        params: RunParams,
        idempotency_key: Option<String>,
        reserved: Option<GpuChoice>,
    ) -> Result<WorkloadRecord, WorkloadError> {
        let gpus = params.check()?;
        mounts::check_roots(&params.volumes, &self.roots)?;
        if reserved.is_some() && (!params.sources().is_empty() || !params.volume_mounts.is_empty())
        {
            return Err(WorkloadError::NotPermitted(
                "a lease's workload cannot use the fleet's configs, secrets or volumes".to_owned(),
            ));
        }
        let origin = if reserved.is_some() {
            claw_api::policies::Origin::Lease
        } else {
            claw_api::policies::Origin::Fleet
        };
        self.admissible(&params, origin).await?;
        if let Some(namespace) = &params.namespace {
            let asked = match &gpus {
                GpuRequest::None => 0,
                GpuRequest::Count(n) => u64::from(*n),
                GpuRequest::Uuids(uuids) => uuids.len() as u64,
            };
            let adding =
                claw_api::namespaces::Usage::of_workload(asked, params.cpus, params.memory_mib);
            self.objects
                .admit_in_namespace(namespace, adding)
                .await
                .map_err(|refused| match refused.code {
                    ErrorCode::Unauthorized => WorkloadError::NotPermitted(refused.message),
                    ErrorCode::NotFound => WorkloadError::NotFound(refused.message),
                    _ => WorkloadError::Internal(refused.message),
                })?;
        }
        let resolved = self.resolve(&params).await?;
        if params.isolation == Isolation::Tenant {
            self.tenant_ready()
                .await
                .map_err(WorkloadError::Unavailable)?;
        }
        if self.store.run(move |store| store.cordoned()).await? {
            return Err(WorkloadError::Unavailable(
                "this node is cordoned and takes no new workloads (node.uncordon lifts it)"
                    .to_owned(),
            ));
        }
        let engine = self.engine()?.clone();
        let mut id_bytes = [0u8; 6];
        rand::rngs::OsRng.fill_bytes(&mut id_bytes);
        let created_ms = now_ms();
        let record = WorkloadRecord {
            id: format!("wl-{}", hex::encode(id_bytes)),
            name: params.name.clone(),
            image: params.image.clone(),
            command: params.command.clone(),
            owner,
            gpus: Vec::new(),
            simulated_gpus: false,
            container_id: None,
            state: WorkloadState::Creating,
            reason: None,
            exit_code: None,
            restart: params.restart,
            labels: params.labels.clone(),
            idempotency_key: idempotency_key.clone(),
            created_ms,
            updated_ms: created_ms,
            isolation: params.isolation,
            namespace: params.namespace.clone(),
            cpu_millis: params.cpus.map(|c| (c * 1000.0).ceil() as u64),
            memory_mib: params.memory_mib,
        };
        let choice = match (reserved, &gpus) {
            (Some(choice), _) => choice,
            (None, GpuRequest::None) => GpuChoice::Count(0),
            (None, GpuRequest::Count(n)) => GpuChoice::Count(*n as usize),
            (None, GpuRequest::Uuids(uuids)) => GpuChoice::Exactly(uuids.clone()),
        };
        self.in_flight_set(&record.id, true);
        let admitted = self.admit(record.clone(), choice).await;
        let mut record = match admitted {
            Ok(Admitted::New(record)) => record,
            Ok(Admitted::Existing(existing)) => {
                self.in_flight_set(&record.id, false);
                return Ok(existing);
            }
            Err(error) => {
                self.in_flight_set(&record.id, false);
                return Err(error);
            }
        };
        record.simulated_gpus = record.gpus.iter().any(|g| self.simulated.contains(g));
        let progress = self.progress.track(idempotency_key.as_deref());
        let started = self
            .create_container(&engine, &record, &params, &resolved, &progress)
            .await;
        drop(resolved);
        let failure = match started {
            Ok(container_id) => {
                record.container_id = Some(container_id);
                record.set_state(WorkloadState::Running, None);
                None
            }
            Err(error) => {
                self.clean_up(&record).await;
                record.set_state(WorkloadState::Failed, Some(error.to_string()));
                Some(error)
            }
        };
        let saved = {
            let record = record.clone();
            self.store
                .run(move |store| store.update_workload(&record))
                .await
        };
        self.in_flight_set(&record.id, false);
        saved?;
        tracing::info!(workload = %record.id, image = %record.image, gpus = ?record.gpus, state = %record.state, "workload.run");
        match failure {
            Some(error) => Err(error),
            None => Ok(record),
        }
    }

    /// Pins the host volumes (before anything can take long), makes sure of the image, opens a
    /// tenant's network, then creates and starts the container.
    async fn create_container(
        &self,
        engine: &Engine,
        record: &WorkloadRecord,
        params: &RunParams,
        resolved: &Resolved,
        progress: &progress::Progress,
    ) -> Result<String, WorkloadError> {
        let pinned = {
            let (id, volumes) = (record.id.clone(), params.volumes.clone());
            let (roots, staging) = (Arc::clone(&self.roots), self.staging());
            tokio::task::spawn_blocking(move || mounts::pin(&id, &volumes, &roots, &staging))
                .await
                .map_err(|e| WorkloadError::Internal(format!("pinning task failed: {e}")))??
        };
        progress.stage(format!("checking image {}", params.image));
        engine.ensure_image(&params.image, progress).await?;
        let files = if resolved.mounts.is_empty() {
            Vec::new()
        } else {
            let (root, id) = (self.value_files(), record.id.clone());
            let mounts: Vec<value_files::MountFiles> = resolved
                .mounts
                .iter()
                .map(|m| value_files::MountFiles {
                    path: m.path.clone(),
                    files: m.files.clone(),
                })
                .collect();
            tokio::task::spawn_blocking(move || value_files::write(&root, &id, &mounts))
                .await
                .map_err(|e| WorkloadError::Internal(format!("value files task failed: {e}")))?
                .map_err(WorkloadError::Unavailable)?
        };
        let mut body = self.container_body(record, params, &pinned.points, resolved, &files);
        if record.isolation == Isolation::Tenant {
            progress.stage("opening the tenant network");
            let labels = HashMap::from([
                (LABEL_NODE.to_owned(), self.node.clone()),
                (LABEL_WORKLOAD.to_owned(), record.id.clone()),
            ]);
            let (network, user) = tokio::try_join!(
                tenant::open_network(engine, &self.node, &record.id, labels, &self.config.tenant),
                engine.image_user(&params.image),
            )?;
            let limits = tenant::limits(
                &self.config.tenant,
                record.gpus.len(),
                params.cpus,
                params.memory_mib,
                std::thread::available_parallelism().map_or(1, |n| n.get() as u64),
            );
            tenant::harden(
                &mut body,
                &network,
                limits,
                &self.config.tenant,
                params.writable_root,
                user,
            );
        }
        progress.stage("starting container");
        Ok(engine
            .create_and_start(&record.container_name(), body)
            .await?)
    }

    /// Releases what a workload held outside its container: pinned volumes, and a tenant's
    /// network and firewall rules. Best effort: what is left is found by reconcile.
    async fn clean_up(&self, record: &WorkloadRecord) {
        let (id, staging, files) = (record.id.clone(), self.staging(), self.value_files());
        let _ = tokio::task::spawn_blocking(move || {
            mounts::release(&id, &staging);
            value_files::remove(&files, &id);
        })
        .await;
        if record.isolation == Isolation::Tenant
            && let Ok(engine) = self.engine()
            && let Err(error) = tenant::close_network(engine, &self.node, &record.id).await
        {
            tracing::warn!(workload = %record.id, %error, "tenant network not removed yet");
        }
    }

    /// Keeps the last logs of a tenant's container, then removes it: nothing of a tenant stays
    /// on the node but its logs, for `log_retention_days`.
    async fn retire_container(
        &self,
        engine: &Engine,
        record: &WorkloadRecord,
    ) -> Result<(), WorkloadError> {
        let Some(container) = &record.container_id else {
            return Ok(());
        };
        match engine.logs(container, 10_000, None, MAX_LOG_BYTES).await {
            Ok((lines, _)) => {
                let text: String = lines
                    .iter()
                    .map(|l| format!("{} {}\n", l.stream, l.line))
                    .collect();
                let path = self.saved_logs(&record.id);
                let saved = tokio::task::spawn_blocking(move || {
                    if let Some(dir) = path.parent() {
                        std::fs::create_dir_all(dir)?;
                    }
                    std::fs::write(&path, text)
                })
                .await;
                if !matches!(saved, Ok(Ok(()))) {
                    tracing::warn!(workload = %record.id, "the logs of a removed container were not kept");
                }
            }
            Err(EngineError::NotFound(_)) => return Ok(()),
            Err(error) => return Err(error.into()),
        }
        engine.remove(container).await?;
        Ok(())
    }

    fn is_in_flight(&self, id: &str) -> bool {
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(id)
    }

    /// Whether the store holds workload `id` as active now (an unreadable store says yes).
    async fn is_active_now(&self, id: &str) -> bool {
        let id = id.to_owned();
        match self.store.run(move |store| store.workload(&id)).await {
            Ok(record) => record.is_some_and(|r| r.state.is_active()),
            Err(_) => true,
        }
    }

    fn in_flight_set(&self, id: &str, present: bool) {
        let mut in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if present {
            in_flight.insert(id.to_owned());
        } else {
            in_flight.remove(id);
        }
    }

    async fn admit(
        &self,
        record: WorkloadRecord,
        choice: GpuChoice,
    ) -> Result<Admitted, WorkloadError> {
        for attempt in 0..2 {
            let gpus = Arc::clone(&self.gpus);
            let (candidate, wanted) = (record.clone(), choice.clone());
            let outcome = self
                .store
                .run(move |store| Ok(store.admit_workload(candidate, &wanted, &gpus)))
                .await?;
            match outcome {
                Ok(admitted) => return Ok(admitted),
                // Containers that exited since the last reconcile still hold GPUs: release
                // them, then try once more.
                Err(AdmitError::GpusUnavailable { .. }) if attempt == 0 => {
                    if let Err(error) = self.reconcile().await {
                        tracing::debug!(%error, "reconcile before retrying admission failed");
                    }
                }
                Err(AdmitError::GpusUnavailable { message, free }) => {
                    return Err(WorkloadError::Conflict(format!(
                        "{message}; free GPUs: {}",
                        if free.is_empty() {
                            "none".to_owned()
                        } else {
                            free.join(", ")
                        }
                    )));
                }
                Err(AdmitError::NameTaken(name)) => {
                    return Err(WorkloadError::Conflict(format!(
                        "an active workload is already named {name:?}"
                    )));
                }
                Err(AdmitError::Store(error)) => return Err(error.into()),
            }
        }
        Err(WorkloadError::Internal(
            "admission did not settle".to_owned(),
        ))
    }

    fn container_body(
        &self,
        record: &WorkloadRecord,
        params: &RunParams,
        volume_points: &[std::path::PathBuf],
        resolved: &Resolved,
        value_files: &[(std::path::PathBuf, String)],
    ) -> ContainerCreateBody {
        let mut labels: HashMap<String, String> = params
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.insert(LABEL_WORKLOAD.to_owned(), record.id.clone());
        labels.insert(LABEL_NODE.to_owned(), self.node.clone());
        labels.insert(LABEL_GPUS.to_owned(), record.gpus.join(","));
        labels.insert(LABEL_OWNER.to_owned(), record.owner.clone());
        labels.insert(LABEL_IMAGE.to_owned(), record.image.clone());
        labels.insert(LABEL_CREATED.to_owned(), record.created_ms.to_string());
        if let Some(name) = &record.name {
            labels.insert(LABEL_NAME.to_owned(), name.clone());
        }
        if record.isolation == Isolation::Tenant {
            labels.insert(LABEL_ISOLATION.to_owned(), "tenant".to_owned());
        }
        let env = container_env(record, params, resolved);
        let real_gpus: Vec<String> = record
            .gpus
            .iter()
            .filter(|g| !self.simulated.contains(*g))
            .cloned()
            .collect();
        let device_requests = (!real_gpus.is_empty()).then(|| {
            vec![DeviceRequest {
                driver: Some("nvidia".to_owned()),
                device_ids: Some(real_gpus),
                capabilities: Some(vec![vec!["gpu".to_owned()]]),
                ..DeviceRequest::default()
            }]
        });
        let mut port_bindings = HashMap::new();
        let mut exposed = Vec::new();
        for port in &params.ports {
            let key = format!(
                "{}/{}",
                port.container,
                match port.protocol {
                    spec::PortProtocol::Tcp => "tcp",
                    spec::PortProtocol::Udp => "udp",
                }
            );
            exposed.push(key.clone());
            port_bindings.insert(
                key,
                Some(vec![PortBinding {
                    host_ip: Some(self.config.publish_address.clone()),
                    host_port: Some(port.host.map(|p| p.to_string()).unwrap_or_default()),
                }]),
            );
        }
        let binds: Vec<String> = params
            .volumes
            .iter()
            .zip(volume_points)
            .map(|(v, host)| {
                format!(
                    "{}:{}:{}",
                    host.display(),
                    v.container,
                    if v.read_only { "ro" } else { "rw" }
                )
            })
            .chain(
                value_files
                    .iter()
                    .map(|(host, container)| format!("{}:{container}:ro", host.display())),
            )
            .chain(resolved.volume_binds.iter().cloned())
            .collect();
        let restart = match params.restart {
            RestartPolicy::No => RestartPolicyNameEnum::NO,
            RestartPolicy::OnFailure => RestartPolicyNameEnum::ON_FAILURE,
            RestartPolicy::Always => RestartPolicyNameEnum::ALWAYS,
            RestartPolicy::UnlessStopped => RestartPolicyNameEnum::UNLESS_STOPPED,
        };
        ContainerCreateBody {
            image: Some(params.image.clone()),
            cmd: (!params.command.is_empty()).then(|| params.command.clone()),
            env: Some(env),
            labels: Some(labels),
            exposed_ports: (!exposed.is_empty()).then_some(exposed),
            host_config: Some(HostConfig {
                binds: (!binds.is_empty()).then_some(binds),
                port_bindings: (!port_bindings.is_empty()).then_some(port_bindings),
                device_requests,
                nano_cpus: params.cpus.map(|c| (c * 1e9) as i64),
                memory: params
                    .memory_mib
                    .map(|m| i64::try_from(m.saturating_mul(1024 * 1024)).unwrap_or(i64::MAX)),
                restart_policy: Some(bollard::models::RestartPolicy {
                    name: Some(restart),
                    maximum_retry_count: None,
                }),
                ..HostConfig::default()
            }),
            ..ContainerCreateBody::default()
        }
    }

    /// The active workloads (starting or running), as the store records them.
    pub async fn active(&self) -> Result<Vec<WorkloadRecord>, WorkloadError> {
        let all = self.store.run(|store| store.workloads()).await?;
        Ok(all.into_iter().filter(|w| w.state.is_active()).collect())
    }

    /// The address of workload `id`'s container on its Docker network, which this host reaches.
    pub async fn container_address(&self, id: &str) -> Result<std::net::IpAddr, WorkloadError> {
        let record = self.find(id).await?;
        let container = record
            .container_id
            .ok_or_else(|| WorkloadError::Conflict(format!("{id} has no container")))?;
        let inspected = self
            .engine()?
            .inspect(&container)
            .await?
            .ok_or_else(|| WorkloadError::NotFound(format!("{id}'s container is gone")))?;
        inspected
            .network_settings
            .and_then(|n| n.networks)
            .into_iter()
            .flat_map(|networks| networks.into_values())
            .filter_map(|network| network.ip_address)
            .find_map(|ip| ip.parse().ok())
            .ok_or_else(|| WorkloadError::Conflict(format!("{id}'s container has no address")))
    }

    /// The lease a workload (id or name) was started for, if it was.
    pub async fn lease_of(&self, reference: &str) -> Option<String> {
        let record = self.find(reference).await.ok()?;
        record
            .idempotency_key
            .as_deref()
            .and_then(|k| k.strip_prefix(LEASE_KEY_PREFIX))
            .map(str::to_owned)
    }

    /// The workload started for lease `lease_id`, if there is one.
    pub async fn leased(&self, lease_id: &str) -> Option<WorkloadRecord> {
        let key = format!("{LEASE_KEY_PREFIX}{lease_id}");
        self.store
            .run(move |store| store.workloads())
            .await
            .ok()?
            .into_iter()
            .find(|w| w.idempotency_key.as_deref() == Some(key.as_str()))
    }

    /// Finds a workload by id, or by name (the active one, else the newest).
    /// The peer that started the workload `reference` names (id or name), if there is one.
    pub async fn owner_of(&self, reference: &str) -> Option<String> {
        self.find(reference).await.ok().map(|w| w.owner)
    }

    /// The namespace of the workload `reference` names (`default` when it names none), if
    /// there is such a workload.
    pub async fn namespace_of(&self, reference: &str) -> Option<String> {
        let record = self.find(reference).await.ok()?;
        Some(
            record
                .namespace
                .unwrap_or_else(|| claw_api::auth::DEFAULT_NAMESPACE.to_owned()),
        )
    }

    async fn find(&self, reference: &str) -> Result<WorkloadRecord, WorkloadError> {
        if reference.is_empty() || reference.len() > 64 {
            return Err(WorkloadError::Invalid(
                "workload must be an id or name of 1 to 64 characters".to_owned(),
            ));
        }
        let reference_owned = reference.to_owned();
        let found = self
            .store
            .run(move |store| {
                if let Some(record) = store.workload(&reference_owned)? {
                    return Ok(Some(record));
                }
                let named: Vec<WorkloadRecord> = store
                    .workloads()?
                    .into_iter()
                    .filter(|w| w.name.as_deref() == Some(reference_owned.as_str()))
                    .collect();
                Ok(named
                    .iter()
                    .find(|w| w.state.is_active())
                    .or_else(|| named.last())
                    .cloned())
            })
            .await?;
        found.ok_or_else(|| {
            WorkloadError::NotFound(format!(
                "no workload {reference:?} on this node (workload.list shows them)"
            ))
        })
    }

    /// Stops a workload and releases its GPUs. Stopping a workload that is not running answers
    /// with its record (and removes its container when asked).
    pub async fn stop(&self, params: StopParams) -> Result<WorkloadRecord, WorkloadError> {
        let mut record = self.find(&params.workload).await?;
        let timeout = Duration::from_secs(u64::from(
            params
                .timeout_secs
                .unwrap_or(self.config.stop_timeout_secs)
                .min(3600),
        ));
        let engine = self.engine()?;
        if record.state == WorkloadState::Creating {
            return Err(WorkloadError::Conflict(format!(
                "workload {} is still starting; stop it once it runs",
                record.id
            )));
        }
        if let Some(container) = &record.container_id
            && record.state == WorkloadState::Running
        {
            engine.stop(container, timeout).await?;
        }
        let was_active = record.state.is_active();
        if was_active {
            let exit_code = match &record.container_id {
                Some(container) => engine
                    .inspect(container)
                    .await?
                    .and_then(|c| c.state.and_then(|s| s.exit_code)),
                None => None,
            };
            record.exit_code = exit_code;
            record.set_state(
                WorkloadState::Stopped,
                Some("stopped on request".to_owned()),
            );
            let saved = record.clone();
            self.store
                .run(move |store| store.update_workload(&saved))
                .await?;
            tracing::info!(workload = %record.id, "workload.stop");
        }
        // A tenant's container always goes (its logs are kept); another's when asked.
        if record.isolation == Isolation::Tenant {
            self.retire_container(engine, &record).await?;
        } else if params.remove
            && let Some(container) = &record.container_id
        {
            engine.remove(container).await?;
        }
        if was_active || params.remove || record.isolation == Isolation::Tenant {
            self.clean_up(&record).await;
        }
        Ok(record)
    }

    /// Workloads matching `params`, oldest first, after bringing their states up to date.
    pub async fn list(&self, params: ListParams) -> Result<Vec<WorkloadRecord>, WorkloadError> {
        if let Err(error) = self.reconcile().await {
            tracing::debug!(%error, "listing from the store alone");
        }
        self.recorded(params).await
    }

    /// Workloads matching `params`, as the store has them (Docker is not asked; the node
    /// reconciles every announce interval): for the node's own frequent reads, such as its
    /// deployments' replicas.
    pub async fn recorded(&self, params: ListParams) -> Result<Vec<WorkloadRecord>, WorkloadError> {
        let records = self.store.run(move |store| store.workloads()).await?;
        Ok(records
            .into_iter()
            .filter(|w| params.all || w.state.is_active())
            .filter(|w| params.state.is_none_or(|s| s == w.state))
            .filter(|w| params.gpu.as_ref().is_none_or(|g| w.gpus.contains(g)))
            .filter(|w| {
                params
                    .labels
                    .iter()
                    .all(|(k, v)| w.labels.get(k) == Some(v))
            })
            .collect())
    }

    /// The record and what Docker says about its container.
    pub async fn inspect(
        &self,
        params: WorkloadRef,
    ) -> Result<(WorkloadRecord, Option<ContainerState>), WorkloadError> {
        let record = self.find(&params.workload).await?;
        let container = match &record.container_id {
            Some(id) => self.engine()?.inspect(id).await?.map(describe_container),
            None => None,
        };
        Ok((record, container))
    }

    /// The address the workload's running container has on its Docker network, for checks
    /// the node makes of it (a deployment's TCP and HTTP health checks).
    pub async fn container_ip(&self, reference: &str) -> Option<std::net::IpAddr> {
        let record = self.find(reference).await.ok()?;
        let container = record.container_id?;
        let inspected = self.engine().ok()?.inspect(&container).await.ok()??;
        inspected
            .network_settings?
            .networks?
            .into_values()
            .filter_map(|endpoint| endpoint.ip_address)
            .find_map(|ip| ip.parse().ok())
    }

    /// The workload's recent output.
    pub async fn logs(&self, params: LogsParams) -> Result<LogTail, WorkloadError> {
        let tail = params.tail.unwrap_or(100);
        if !(1..=10_000).contains(&tail) {
            return Err(WorkloadError::Invalid("tail must be 1 to 10000".to_owned()));
        }
        let record = self.find(&params.workload).await?;
        let container = record.container_id.as_deref().ok_or_else(|| {
            WorkloadError::NotFound(format!("workload {} never had a container", record.id))
        })?;
        match self
            .engine()?
            .logs(container, tail, params.since, MAX_LOG_BYTES)
            .await
        {
            Ok((lines, truncated)) => Ok(LogTail {
                workload: record.id,
                lines,
                truncated,
                kept: false,
            }),
            Err(EngineError::NotFound(_)) => self.kept_logs(&record, tail).await,
            Err(other) => Err(other.into()),
        }
    }

    /// The logs kept of a removed container, its last `tail` lines.
    async fn kept_logs(
        &self,
        record: &WorkloadRecord,
        tail: u32,
    ) -> Result<LogTail, WorkloadError> {
        let path = self.saved_logs(&record.id);
        let text = tokio::task::spawn_blocking(move || std::fs::read_to_string(path))
            .await
            .map_err(|e| WorkloadError::Internal(format!("log task failed: {e}")))?
            .map_err(|_| {
                WorkloadError::NotFound(format!(
                    "the container of workload {} was removed, and its logs with it",
                    record.id
                ))
            })?;
        let mut lines: Vec<LogLine> = text
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(stream, line)| LogLine {
                stream: stream.to_owned(),
                line: line.to_owned(),
            })
            .collect();
        let skip = lines.len().saturating_sub(tail as usize);
        Ok(LogTail {
            workload: record.id.clone(),
            lines: lines.split_off(skip),
            truncated: false,
            kept: true,
        })
    }

    /// One sample of the workload's CPU, memory, network and process use.
    pub async fn stats(&self, params: WorkloadRef) -> Result<WorkloadUsage, WorkloadError> {
        let record = self.find(&params.workload).await?;
        if record.state != WorkloadState::Running {
            return Err(WorkloadError::Conflict(format!(
                "workload {} is {}, not running",
                record.id, record.state
            )));
        }
        let container = record.container_id.as_deref().unwrap_or_default();
        let stats = self.engine()?.stats(container).await?;
        Ok(describe_stats(&record, &stats))
    }

    /// Runs a program inside the workload's running container.
    pub async fn exec(&self, params: ExecParams) -> Result<ExecOutput, WorkloadError> {
        params.check()?;
        let record = self.find(&params.workload).await?;
        let container = match (&record.state, &record.container_id) {
            (WorkloadState::Running, Some(container)) => container.clone(),
            _ => {
                return Err(WorkloadError::Conflict(format!(
                    "workload {} is {}, not running",
                    record.id, record.state
                )));
            }
        };
        let timeout = Duration::from_secs(u64::from(params.timeout_secs.unwrap_or(30)));
        let output = self
            .engine()?
            .exec(&container, &params.argv, timeout, MAX_EXEC_BYTES)
            .await?;
        Ok(ExecOutput {
            workload: record.id,
            exit_code: output.exit_code,
            stdout: output.stdout,
            stderr: output.stderr,
            truncated: output.truncated,
            timed_out: output.timed_out,
        })
    }

    /// Stops every active workload gracefully (the caller cordons first), reporting each, except
    /// those `moving` picks (a deployment's replicas, which their controller starts elsewhere
    /// before it stops them here): they are reported as moving.
    pub async fn drain(
        &self,
        idempotency_key: Option<&str>,
        moving: impl Fn(&WorkloadRecord) -> bool,
    ) -> Result<Vec<DrainOutcome>, WorkloadError> {
        let _ = self.reconcile().await;
        let active: Vec<WorkloadRecord> = self
            .store
            .run(move |store| store.workloads())
            .await?
            .into_iter()
            .filter(|w| w.state.is_active())
            .collect();
        let progress = self.progress.track(idempotency_key);
        progress.stage("draining");
        let total = active.len() as u64;
        progress.advance(0, total);
        let mut outcomes = Vec::with_capacity(active.len());
        for (done, record) in active.into_iter().enumerate() {
            if moving(&record) {
                outcomes.push(DrainOutcome {
                    workload: record.id,
                    outcome: MOVING.to_owned(),
                });
                continue;
            }
            let stopped = self
                .stop(StopParams {
                    workload: record.id.clone(),
                    timeout_secs: None,
                    remove: false,
                })
                .await;
            outcomes.push(DrainOutcome {
                workload: record.id,
                outcome: match stopped {
                    Ok(_) => "stopped".to_owned(),
                    Err(error) => error.to_string(),
                },
            });
            progress.advance(done as u64 + 1, total);
        }
        Ok(outcomes)
    }

    /// Brings the store in line with Docker's labelled containers: records whose container
    /// exited or vanished are updated (releasing their GPUs), records never given a container
    /// are marked failed, and containers without a record are adopted with their GPUs.
    pub async fn reconcile(&self) -> Result<ReconcileReport, WorkloadError> {
        let engine = self.engine()?;
        let containers = engine.list_labelled(LABEL_NODE, &self.node).await?;
        let mut by_workload = HashMap::new();
        for container in containers {
            let id = container
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_WORKLOAD))
                .cloned();
            if let Some(id) = id {
                by_workload.insert(id, container);
            }
        }
        let records = self.store.run(move |store| store.workloads()).await?;
        let in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut report = ReconcileReport::default();
        let mut changed = Vec::new();
        let known: HashSet<String> = records.iter().map(|r| r.id.clone()).collect();
        for mut record in records {
            if !record.state.is_active() || in_flight.contains(&record.id) {
                continue;
            }
            let seen = record.state;
            match by_workload.get(&record.id) {
                None if record.state == WorkloadState::Creating => {
                    record.set_state(
                        WorkloadState::Failed,
                        Some("the node stopped before the container was started".to_owned()),
                    );
                    report.failed.push(record.id.clone());
                    changed.push((record, seen));
                }
                None => {
                    record.set_state(
                        WorkloadState::Lost,
                        Some(format!(
                            "container {} is gone from Docker (removed outside clawnode, or the engine lost it)",
                            record.container_id.as_deref().unwrap_or("?")
                        )),
                    );
                    report.lost.push(record.id.clone());
                    changed.push((record, seen));
                }
                Some(container) => {
                    let state = container.state.unwrap_or(ContainerSummaryStateEnum::EMPTY);
                    if matches!(
                        state,
                        ContainerSummaryStateEnum::EXITED | ContainerSummaryStateEnum::DEAD
                    ) {
                        let mut state = match &container.id {
                            Some(id) => engine.inspect(id).await?.and_then(|c| c.state),
                            None => None,
                        };
                        // Docker may report the exit before it has taken in the OOM event: a
                        // container killed (137) is looked at again, briefly, before the reason
                        // is written for good.
                        for _ in 0..OOM_SETTLE_TRIES {
                            let killed = state.as_ref().and_then(|s| s.exit_code) == Some(137);
                            let oom = state.as_ref().and_then(|s| s.oom_killed) == Some(true);
                            let (true, false, Some(id)) = (killed, oom, &container.id) else {
                                break;
                            };
                            tokio::time::sleep(OOM_SETTLE).await;
                            state = engine.inspect(id).await?.and_then(|c| c.state);
                        }
                        let exit_code = state.as_ref().and_then(|s| s.exit_code);
                        let out_of_memory = state.as_ref().and_then(|s| s.oom_killed) == Some(true);
                        record.exit_code = exit_code;
                        record.set_state(
                            WorkloadState::Exited,
                            Some(format!(
                                "the container exited{}{}",
                                exit_code
                                    .map(|c| format!(" with code {c}"))
                                    .unwrap_or_default(),
                                if out_of_memory {
                                    " (killed: out of memory)"
                                } else {
                                    ""
                                }
                            )),
                        );
                        report.exited.push(record.id.clone());
                        changed.push((record, seen));
                    } else {
                        report.running += 1;
                        if record.state != WorkloadState::Running
                            || record.container_id != container.id
                        {
                            record.container_id.clone_from(&container.id);
                            record.set_state(WorkloadState::Running, None);
                            changed.push((record, seen));
                        }
                    }
                }
            }
        }
        let mut adopted = Vec::new();
        for (id, container) in &by_workload {
            if known.contains(id) || in_flight.contains(id) {
                continue;
            }
            adopted.push(self.adoptee(id, container));
            report.adopted.push(id.clone());
        }
        if !changed.is_empty() || !adopted.is_empty() {
            self.store
                .run(move |store| {
                    for (record, seen) in &changed {
                        // A command that changed the record meanwhile (a stop) has the last word.
                        store.update_workload_from(record, Some(*seen))?;
                    }
                    for record in &adopted {
                        store.adopt_workload(record)?;
                    }
                    Ok(())
                })
                .await?;
        }
        let changes =
            report.exited.len() + report.lost.len() + report.failed.len() + report.adopted.len();
        if changes > 0 {
            tracing::info!(?report, "workloads reconciled with Docker");
        }
        self.sweep(engine, &in_flight).await;
        Ok(report)
    }

    /// Removes what ended workloads left behind: a tenant's container (its logs kept), networks,
    /// firewall rules and pinned volumes of workloads no longer active (a crash, or a container
    /// that exited by itself), and kept logs past their retention. At most every
    /// [`SWEEP_EVERY`].
    async fn sweep(&self, engine: &Engine, in_flight: &HashSet<String>) {
        let now = now_ms();
        let last = self
            .last_sweep_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        if last != 0 && now < last + SWEEP_EVERY.as_millis() as u64 {
            return;
        }
        self.last_sweep_ms
            .store(now, std::sync::atomic::Ordering::Relaxed);
        let Ok(records) = self.store.run(move |store| store.workloads()).await else {
            return;
        };
        let active: HashSet<&str> = records
            .iter()
            .filter(|r| r.state.is_active())
            .map(|r| r.id.as_str())
            .chain(in_flight.iter().map(String::as_str))
            .collect();
        for record in records
            .iter()
            .filter(|r| !active.contains(r.id.as_str()) && r.isolation == Isolation::Tenant)
        {
            if let Err(error) = self.retire_container(engine, record).await {
                tracing::debug!(workload = %record.id, %error, "ended tenant container not removed yet");
            }
        }
        let mut leftovers: HashSet<String> = mounts::pinned_workloads(&self.staging())
            .into_iter()
            .chain(value_files::workloads(&self.value_files()))
            .collect();
        // The firewall is read once this node has run a tenant (in this run or before a crash).
        if self.tenant_ready.initialized()
            || records.iter().any(|r| r.isolation == Isolation::Tenant)
        {
            leftovers.extend(
                tenant::tagged_workloads(&self.node)
                    .await
                    .unwrap_or_default(),
            );
            if let Ok(networks) = engine.networks_labelled(LABEL_NODE, &self.node).await {
                leftovers.extend(
                    networks
                        .into_iter()
                        .filter_map(|(_, labels)| labels.get(LABEL_WORKLOAD).cloned()),
                );
            }
        }
        for id in leftovers
            .into_iter()
            .filter(|id| !active.contains(id.as_str()))
        {
            // Started since the records were read: not a leftover.
            if self.is_in_flight(&id) || self.is_active_now(&id).await {
                continue;
            }
            let isolation = records
                .iter()
                .find(|r| r.id == id)
                .map_or(Isolation::Tenant, |r| r.isolation);
            let mut ended = self.adoptee(&id, &bollard::models::ContainerSummary::default());
            ended.isolation = isolation;
            self.clean_up(&ended).await;
            tracing::info!(workload = %id, "resources of an ended workload removed");
        }
        self.prune_kept_logs().await;
    }

    /// Deletes kept logs older than the tenant retention.
    async fn prune_kept_logs(&self) {
        let dir = self.data_dir.join(SAVED_LOGS_DIR);
        let keep = Duration::from_secs(u64::from(self.config.tenant.log_retention_days) * 86_400);
        let _ = tokio::task::spawn_blocking(move || {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let old = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|at| at.elapsed().is_ok_and(|age| age > keep));
                if old {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        })
        .await;
    }

    /// A record rebuilt from a container's labels.
    fn adoptee(&self, id: &str, container: &bollard::models::ContainerSummary) -> WorkloadRecord {
        let labels = container.labels.clone().unwrap_or_default();
        let labels_isolation_tenant = labels.get(LABEL_ISOLATION).is_some_and(|i| i == "tenant");
        let gpus: Vec<String> = labels
            .get(LABEL_GPUS)
            .map(|g| {
                g.split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let running = !matches!(
            container.state,
            Some(ContainerSummaryStateEnum::EXITED | ContainerSummaryStateEnum::DEAD)
        );
        let created_ms = labels
            .get(LABEL_CREATED)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(now_ms);
        WorkloadRecord {
            id: id.to_owned(),
            name: labels.get(LABEL_NAME).cloned(),
            image: labels
                .get(LABEL_IMAGE)
                .cloned()
                .or_else(|| container.image.clone())
                .unwrap_or_default(),
            command: Vec::new(),
            owner: labels.get(LABEL_OWNER).cloned().unwrap_or_default(),
            simulated_gpus: gpus.iter().any(|g| self.simulated.contains(g)),
            gpus,
            container_id: container.id.clone(),
            state: if running {
                WorkloadState::Running
            } else {
                WorkloadState::Exited
            },
            reason: Some("adopted from Docker: the store had no record of it".to_owned()),
            exit_code: None,
            restart: RestartPolicy::No,
            labels: labels
                .into_iter()
                .filter(|(k, _)| !k.starts_with(LABEL_PREFIX))
                .collect(),
            idempotency_key: None,
            created_ms,
            updated_ms: now_ms(),
            isolation: if labels_isolation_tenant {
                Isolation::Tenant
            } else {
                Isolation::Shared
            },
            namespace: None,
            cpu_millis: None,
            memory_mib: None,
        }
    }
}

fn describe_container(container: ContainerInspectResponse) -> ContainerState {
    let state = container.state.unwrap_or_default();
    let mut ports = Vec::new();
    if let Some(map) = container.network_settings.and_then(|n| n.ports) {
        for (key, bindings) in map {
            let (port, protocol) = key.split_once('/').unwrap_or((&key, "tcp"));
            for binding in bindings.unwrap_or_default() {
                ports.push(PublishedPort {
                    container: port.parse::<u16>().ok(),
                    protocol: protocol.to_owned(),
                    host_ip: binding.host_ip,
                    host: binding.host_port.and_then(|p| p.parse::<u16>().ok()),
                });
            }
        }
    }
    ContainerState {
        id: container.id,
        status: state.status.map(|s| s.to_string()),
        running: state.running,
        exit_code: state.exit_code,
        oom_killed: state.oom_killed,
        started_at: state.started_at,
        finished_at: state.finished_at,
        error: state.error.filter(|e| !e.is_empty()),
        ports,
    }
}

fn describe_stats(record: &WorkloadRecord, stats: &ContainerStatsResponse) -> WorkloadUsage {
    let cpu = stats.cpu_stats.as_ref();
    let pre = stats.precpu_stats.as_ref();
    let total = |s: Option<&bollard::models::ContainerCpuStats>| {
        s.and_then(|s| s.cpu_usage.as_ref())
            .and_then(|u| u.total_usage)
    };
    let system =
        |s: Option<&bollard::models::ContainerCpuStats>| s.and_then(|s| s.system_cpu_usage);
    let cpu_percent = match (total(cpu), total(pre), system(cpu), system(pre)) {
        (Some(t), Some(pt), Some(s), Some(ps)) if s > ps && t >= pt => {
            let cpus = cpu.and_then(|c| c.online_cpus).unwrap_or(1);
            Some((t - pt) as f64 / (s - ps) as f64 * f64::from(cpus) * 100.0)
        }
        _ => None,
    };
    let memory = stats.memory_stats.as_ref();
    let (rx, tx) = stats
        .networks
        .as_ref()
        .map(|n| {
            n.values().fold((0u64, 0u64), |(rx, tx), s| {
                (rx + s.rx_bytes.unwrap_or(0), tx + s.tx_bytes.unwrap_or(0))
            })
        })
        .unwrap_or_default();
    WorkloadUsage {
        workload: record.id.clone(),
        cpu_percent,
        memory_used_bytes: memory.and_then(|m| m.usage),
        memory_limit_bytes: memory.and_then(|m| m.limit),
        network_rx_bytes: rx,
        network_tx_bytes: tx,
        pids: stats.pids_stats.as_ref().and_then(|p| p.current),
        gpus: record.gpus.clone(),
    }
}
