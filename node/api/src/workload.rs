//! The params of the workload commands: typed, strictly parsed (unknown fields rejected), and
//! checked for form (sizes, names, paths) before a node touches Docker; what only a node can
//! check (its volume roots, its GPUs) it checks itself.

use std::collections::BTreeMap;
use std::path::Path;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Answer;
use crate::command::commands;

/// Label prefix the node reserves for its own bookkeeping on containers.
pub const LABEL_PREFIX: &str = "io.clawbernetes.";

const MAX_ENV: usize = 256;
const MAX_LABELS: usize = 64;
const MAX_ARGS: usize = 256;
const MAX_ARG_BYTES: usize = 8 * 1024;
const MAX_PORTS: usize = 64;
const MAX_VOLUMES: usize = 32;
const MAX_GPUS: u32 = 64;

/// `workload.run`: start a container.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunParams {
    /// Image reference, e.g. `pytorch/pytorch:2.4.0-cuda12.1-cudnn9-runtime`. Pulled when the
    /// node does not have it.
    pub image: String,
    /// Command and arguments (overrides the image's CMD).
    #[serde(default)]
    pub command: Vec<String>,
    /// A display name: 1 to 40 of `a-z 0-9 -`. Unique among the node's active workloads.
    #[serde(default)]
    pub name: Option<String>,
    /// Environment variables. Values are passed to the container and never stored or logged.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Environment variables whose values come from the fleet's configs and secrets, e.g.
    /// `{"DB_PASSWORD": {"secret": "db", "key": "password"}}`. The node that runs the workload
    /// reads them from its copy (a secret only when it is one of the nodes the secret is sealed
    /// to); the values are never stored with the workload or logged.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env_from: BTreeMap<String, ValueRef>,
    /// Configs and secrets mounted read-only as files, one file per key under `path`. The node
    /// keeps them in memory only (a tmpfs), and removes them when the workload ends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileMount>,
    /// The namespace it counts against (`namespace.create`): its quotas are checked when it
    /// starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Named volumes of this node (`volume.create`) to mount: their data outlives the
    /// workload.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<VolumeMount>,
    /// Ports to publish.
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    /// Host directories to mount; each must lie under one of the node's volume roots.
    #[serde(default)]
    pub volumes: Vec<VolumeSpec>,
    /// How many GPUs to allocate (any free ones). Exclusive with `gpu_uuids`.
    #[serde(default)]
    pub gpus: Option<u32>,
    /// Exactly these GPUs, by UUID. Exclusive with `gpus`.
    #[serde(default)]
    pub gpu_uuids: Option<Vec<String>>,
    /// CPU limit in cores (e.g. 1.5).
    #[serde(default)]
    pub cpus: Option<f64>,
    /// Memory limit in MiB.
    #[serde(default)]
    pub memory_mib: Option<u64>,
    /// Restart policy. Default `no`.
    #[serde(default)]
    pub restart: RestartPolicy,
    /// Labels to put on the container; keys must not start with `io.clawbernetes.`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `shared` (the default for operators: Docker's defaults) or `tenant` (always for a lease's
    /// workload): its own firewalled network, limits, dropped capabilities, no new privileges, a
    /// read-only root, an unprivileged user.
    #[serde(default)]
    pub isolation: Isolation,
    /// Tenant profile: keep the root filesystem writable (default read-only, with a tmpfs
    /// `/tmp`).
    #[serde(default)]
    pub writable_root: bool,
}

/// Configs or secrets one workload mounts at most.
pub const MAX_FILE_MOUNTS: usize = 16;

/// Where a value or a set of files comes from: a config or a secret of the fleet, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SourceKind {
    /// A config (`config.*`): plain values every member keeps.
    Config,
    /// A secret (`secret.*`): values sealed to the nodes allowed to use them.
    Secret,
}

impl SourceKind {
    /// How answers name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Config => "config",
            Self::Secret => "secret",
        }
    }
}

fn source_of(
    config: Option<&String>,
    secret: Option<&String>,
    what: &str,
) -> Result<(SourceKind, String), SpecError> {
    match (config, secret) {
        (Some(name), None) if is_simple_name(name, 32) => Ok((SourceKind::Config, name.clone())),
        (None, Some(name)) if is_simple_name(name, 32) => Ok((SourceKind::Secret, name.clone())),
        (Some(_), None) | (None, Some(_)) => {
            invalid(format!("{what}: names are 1 to 32 of a-z, 0-9 and '-'"))
        }
        _ => invalid(format!("{what}: give one of config or secret")),
    }
}

/// One value of a config or secret, for an environment variable.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ValueRef {
    /// A config's name (or give `secret`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    /// A secret's name (or give `config`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Which of its values.
    pub key: String,
}

impl ValueRef {
    /// Whether it is a config or a secret, and its name.
    pub fn source(&self) -> Result<(SourceKind, String), SpecError> {
        source_of(self.config.as_ref(), self.secret.as_ref(), "env_from")
    }
}

/// A config's or secret's values as files: one read-only file per key, under `path`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileMount {
    /// A config's name (or give `secret`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    /// A secret's name (or give `config`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// The directory inside the container, absolute, e.g. `/run/secrets/db`.
    pub path: String,
}

impl FileMount {
    /// Whether it is a config or a secret, and its name.
    pub fn source(&self) -> Result<(SourceKind, String), SpecError> {
        source_of(self.config.as_ref(), self.secret.as_ref(), "files")
    }
}

/// A named volume of the node, mounted into the container.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeMount {
    /// The volume's name on the node.
    pub volume: String,
    /// The directory inside the container, absolute.
    pub path: String,
    /// Mount it read-only. Default false.
    #[serde(default)]
    pub read_only: bool,
}

/// Keys of configs and secrets (file names when mounted): 1 to 64 of `A-Z a-z 0-9 . _ -`, not
/// starting with '.'.
pub fn is_value_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 64
        && !key.starts_with('.')
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn is_env_name(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 256
        && !key.as_bytes()[0].is_ascii_digit()
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn is_container_path(path: &str) -> bool {
    Path::new(path).is_absolute()
        && !path.contains(':')
        && path.len() <= 4096
        && !path.split('/').any(|part| part == "." || part == "..")
}

/// Where a workload is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadState {
    /// Recorded, GPUs allocated, container not yet running (image pull, create).
    Creating,
    /// The container is running (or restarting under its restart policy).
    Running,
    /// The container exited by itself.
    Exited,
    /// Stopped on request.
    Stopped,
    /// Could not be started.
    Failed,
    /// Its container disappeared from Docker.
    Lost,
}

impl WorkloadState {
    /// Whether the workload holds its GPUs.
    pub fn is_active(self) -> bool {
        matches!(self, Self::Creating | Self::Running)
    }
}

impl std::fmt::Display for WorkloadState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        f.write_str(&text)
    }
}

/// How a workload is kept apart from the node and from other workloads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// Docker's defaults, on the default bridge.
    #[default]
    Shared,
    /// The tenant profile (see the node's README): for workloads of strangers.
    Tenant,
}

/// A published port.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    /// Port inside the container.
    pub container: u16,
    /// Host port; Docker picks a free one when absent.
    #[serde(default)]
    pub host: Option<u16>,
    /// `tcp` (default) or `udp`.
    #[serde(default)]
    pub protocol: PortProtocol,
}

/// A port's protocol.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PortProtocol {
    /// TCP.
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

/// A host directory mounted into the container.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeSpec {
    /// Absolute host path under one of the node's volume roots.
    pub host: String,
    /// Absolute path inside the container.
    pub container: String,
    /// Mount read-only. Default false.
    #[serde(default)]
    pub read_only: bool,
}

/// When Docker restarts the container.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Never.
    #[default]
    No,
    /// When it exits non-zero.
    OnFailure,
    /// Always, until stopped.
    Always,
    /// Always, unless it was stopped.
    UnlessStopped,
}

/// Which GPUs a workload asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuRequest {
    /// None.
    None,
    /// Any `n` free GPUs.
    Count(u32),
    /// Exactly these.
    Uuids(Vec<String>),
}

/// Why params were refused, before anything was changed.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// Malformed or out of range.
    #[error("{0}")]
    Invalid(String),
    /// Well-formed but not permitted on this node.
    #[error("{0}")]
    NotPermitted(String),
}

fn invalid<T>(message: impl Into<String>) -> Result<T, SpecError> {
    Err(SpecError::Invalid(message.into()))
}

/// Names, ids and label keys: 1 to `max` of `a-z 0-9 -`, starting with a letter or digit.
pub fn is_simple_name(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn is_image_reference(image: &str) -> bool {
    !image.is_empty()
        && image.len() <= 255
        && !image.starts_with(['-', '.', '/', ':'])
        && image
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/:@".contains(&b))
}

impl RunParams {
    /// The configs and secrets the workload uses, each once.
    pub fn sources(&self) -> std::collections::BTreeSet<(SourceKind, String)> {
        self.env_from
            .values()
            .filter_map(|v| v.source().ok())
            .chain(self.files.iter().filter_map(|f| f.source().ok()))
            .collect()
    }

    /// Checks every field. Returns the GPU request. Host volumes are checked against the node's
    /// roots when they are pinned (`mounts::pin`).
    pub fn check(&self) -> Result<GpuRequest, SpecError> {
        if !is_image_reference(&self.image) {
            return invalid(format!("image {:?} is not an image reference", self.image));
        }
        if self.command.len() > MAX_ARGS || self.command.iter().any(|a| a.len() > MAX_ARG_BYTES) {
            return invalid(format!(
                "command: at most {MAX_ARGS} arguments of {MAX_ARG_BYTES} bytes"
            ));
        }
        if let Some(name) = &self.name
            && !is_simple_name(name, 40)
        {
            return invalid(format!("name {name:?} must be 1 to 40 of a-z, 0-9 and '-'"));
        }
        if self.env.len() > MAX_ENV {
            return invalid(format!("at most {MAX_ENV} env variables"));
        }
        for (key, value) in &self.env {
            if !is_env_name(key) || value.len() > 32 * 1024 || value.contains('\0') {
                return invalid(format!(
                    "env {key:?}: names are letters, digits and '_'; values at most 32 KiB"
                ));
            }
        }
        if self.env.len() + self.env_from.len() > MAX_ENV {
            return invalid(format!(
                "at most {MAX_ENV} env variables, env_from included"
            ));
        }
        for (key, value) in &self.env_from {
            if !is_env_name(key) || self.env.contains_key(key) {
                return invalid(format!(
                    "env_from {key:?}: names are letters, digits and '_', and not also in env"
                ));
            }
            value.source()?;
            if !is_value_key(&value.key) {
                return invalid(format!(
                    "env_from {key:?}: key {:?} must be 1 to 64 of A-Z, a-z, 0-9, '.', '_', '-'",
                    value.key
                ));
            }
        }
        if let Some(namespace) = &self.namespace
            && !is_simple_name(namespace, 32)
        {
            return invalid(format!(
                "namespace {namespace:?} must be 1 to 32 of a-z, 0-9 and '-'"
            ));
        }
        if self.volume_mounts.len() > MAX_VOLUMES {
            return invalid(format!("at most {MAX_VOLUMES} volume_mounts"));
        }
        for (index, mount) in self.volume_mounts.iter().enumerate() {
            if !is_simple_name(&mount.volume, 32) {
                return invalid(format!(
                    "volume_mounts: volume {:?} must be 1 to 32 of a-z, 0-9 and '-'",
                    mount.volume
                ));
            }
            let taken = self.volume_mounts[..index]
                .iter()
                .any(|m| m.path == mount.path)
                || self.volumes.iter().any(|v| v.container == mount.path);
            if !is_container_path(&mount.path) || mount.path == "/" || taken {
                return invalid(format!(
                    "volume_mounts path {:?} must be absolute, not '/', without ':', '.' or \
                     '..', and not mounted twice",
                    mount.path
                ));
            }
        }
        if self.files.len() > MAX_FILE_MOUNTS {
            return invalid(format!("at most {MAX_FILE_MOUNTS} files mounts"));
        }
        for (index, mount) in self.files.iter().enumerate() {
            mount.source()?;
            let taken = self.files[..index].iter().any(|m| m.path == mount.path)
                || self.volumes.iter().any(|v| v.container == mount.path)
                || self.volume_mounts.iter().any(|v| v.path == mount.path);
            if !is_container_path(&mount.path) || mount.path == "/" || taken {
                return invalid(format!(
                    "files path {:?} must be absolute, not '/', without ':', '.' or '..', and \
                     not mounted twice",
                    mount.path
                ));
            }
        }
        if self.labels.len() > MAX_LABELS {
            return invalid(format!("at most {MAX_LABELS} labels"));
        }
        for (key, value) in &self.labels {
            if key.starts_with(LABEL_PREFIX) {
                return invalid(format!("label {key:?}: {LABEL_PREFIX}* is reserved"));
            }
            if key.is_empty() || key.len() > 128 || value.len() > 1024 {
                return invalid(format!(
                    "label {key:?}: keys 1 to 128 bytes, values at most 1 KiB"
                ));
            }
        }
        if self.ports.len() > MAX_PORTS {
            return invalid(format!("at most {MAX_PORTS} ports"));
        }
        if self
            .ports
            .iter()
            .any(|p| p.container == 0 || p.host == Some(0))
        {
            return invalid("ports must be 1 to 65535");
        }
        if let Some(cpus) = self.cpus
            && !(cpus.is_finite() && (0.01..=1024.0).contains(&cpus))
        {
            return invalid("cpus must be 0.01 to 1024");
        }
        if let Some(mib) = self.memory_mib
            && !(6..=16 * 1024 * 1024).contains(&mib)
        {
            return invalid("memory_mib must be 6 to 16777216");
        }
        let gpus = match (self.gpus, &self.gpu_uuids) {
            (Some(_), Some(_)) => return invalid("give gpus or gpu_uuids, not both"),
            (Some(0) | None, None) => GpuRequest::None,
            (Some(n), None) if n > MAX_GPUS => return invalid(format!("at most {MAX_GPUS} gpus")),
            (Some(n), None) => GpuRequest::Count(n),
            (None, Some(uuids)) => {
                if uuids.is_empty() || uuids.len() > MAX_GPUS as usize {
                    return invalid(format!("gpu_uuids must list 1 to {MAX_GPUS} GPUs"));
                }
                let mut sorted = uuids.clone();
                sorted.sort();
                sorted.dedup();
                if sorted.len() != uuids.len() {
                    return invalid("gpu_uuids lists a GPU twice");
                }
                if uuids.iter().any(|u| u.len() > 128) {
                    return invalid("gpu_uuids: a UUID is at most 128 bytes");
                }
                GpuRequest::Uuids(uuids.clone())
            }
        };
        if self.volumes.len() > MAX_VOLUMES {
            return invalid(format!("at most {MAX_VOLUMES} volumes"));
        }
        for volume in &self.volumes {
            volume.check()?;
        }
        Ok(gpus)
    }
}

impl VolumeSpec {
    /// Checks the paths' form: absolute, without ':' or '..'.
    fn check(&self) -> Result<(), SpecError> {
        for (what, path) in [("host", &self.host), ("container", &self.container)] {
            if !is_container_path(path) {
                return invalid(format!(
                    "volume {what} path {path:?} must be absolute, without ':', '.' or '..'"
                ));
            }
        }
        Ok(())
    }
}

/// `workload.stop`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StopParams {
    /// Workload id or name.
    pub workload: String,
    /// Seconds to wait after SIGTERM before SIGKILL. Default: the node's `stop_timeout_secs`.
    #[serde(default)]
    pub timeout_secs: Option<u32>,
    /// Also remove the container (its logs go with it). Default false.
    #[serde(default)]
    pub remove: bool,
}

/// Commands that name one workload: `workload.inspect`, `workload.stats`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkloadRef {
    /// Workload id or name.
    pub workload: String,
}

/// `workload.logs`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogsParams {
    /// Workload id or name.
    pub workload: String,
    /// Last N lines. Default 100, at most 10,000.
    #[serde(default)]
    pub tail: Option<u32>,
    /// Only lines after this Unix time (seconds).
    #[serde(default)]
    pub since: Option<u32>,
}

/// `workload.list`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Only workloads in this state.
    #[serde(default)]
    pub state: Option<WorkloadState>,
    /// Only workloads carrying every one of these labels with these values.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Only workloads holding this GPU.
    #[serde(default)]
    pub gpu: Option<String>,
    /// Include stopped, exited, failed and lost workloads. Default true.
    #[serde(default = "yes")]
    pub all: bool,
}

fn yes() -> bool {
    true
}

/// `container.exec`: run a program inside a workload's container.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecParams {
    /// Workload id or name.
    pub workload: String,
    /// Program and arguments (no shell unless you name one).
    pub argv: Vec<String>,
    /// Seconds before the exec is abandoned. Default 30, at most 600.
    #[serde(default)]
    pub timeout_secs: Option<u32>,
}

impl ExecParams {
    pub fn check(&self) -> Result<(), SpecError> {
        if self.argv.is_empty() || self.argv.len() > MAX_ARGS {
            return invalid(format!("argv must have 1 to {MAX_ARGS} entries"));
        }
        if self
            .argv
            .iter()
            .any(|a| a.len() > MAX_ARG_BYTES || a.contains('\0'))
        {
            return invalid(format!(
                "argv entries are at most {MAX_ARG_BYTES} bytes, no NUL"
            ));
        }
        if self.timeout_secs.is_some_and(|t| !(1..=600).contains(&t)) {
            return invalid("timeout_secs must be 1 to 600");
        }
        Ok(())
    }
}

/// A workload as the commands answer it. A reader who neither operates the node nor started the
/// workload sees it `redacted`: without its owner, command, labels and idempotency key.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// `wl-` and 12 hex digits.
    pub id: String,
    /// The display name, if one was given.
    pub name: Option<String>,
    /// Image reference.
    pub image: String,
    /// Command and arguments, if given (empty when redacted).
    pub command: Vec<String>,
    /// Peer id of whoever started it (none when redacted).
    pub owner: Option<String>,
    /// UUIDs of its GPUs.
    pub gpus: Vec<String>,
    /// Whether its GPUs are simulated (no device was passed to the container).
    pub simulated_gpus: bool,
    /// Docker's container id, once created.
    pub container_id: Option<String>,
    /// Its state.
    pub state: WorkloadState,
    /// Why it is in that state, for `failed`, `lost` and `exited`.
    pub reason: Option<String>,
    /// Exit code once it has exited.
    pub exit_code: Option<i64>,
    /// Restart policy.
    pub restart: RestartPolicy,
    /// Its labels (without the node's own `io.clawbernetes.*` ones; empty when redacted).
    pub labels: BTreeMap<String, String>,
    /// The idempotency key it was started with (none when redacted).
    pub idempotency_key: Option<String>,
    /// When it was recorded, Unix ms.
    pub created_ms: u64,
    /// When its state last changed, Unix ms.
    pub updated_ms: u64,
    /// How it is kept apart from the node and other workloads.
    #[serde(default)]
    pub isolation: Isolation,
    /// Whether the caller's fields were withheld (present only when they were).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub redacted: bool,
}

/// `workload.list`'s answer.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkloadListing {
    /// Oldest first.
    pub workloads: Vec<Workload>,
}

/// `workload.inspect`'s answer.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkloadDetail {
    /// The record.
    pub workload: Workload,
    /// What Docker says of its container, when it has one.
    pub container: Option<ContainerState>,
}

/// A container as Docker reports it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContainerState {
    /// Docker's id.
    pub id: Option<String>,
    /// Docker's status word (`running`, `exited`, …).
    pub status: Option<String>,
    /// Whether it runs.
    pub running: Option<bool>,
    /// Its exit code, once exited.
    pub exit_code: Option<i64>,
    /// Whether the kernel killed it for memory.
    pub oom_killed: Option<bool>,
    /// When it started (RFC 3339).
    pub started_at: Option<String>,
    /// When it finished (RFC 3339).
    pub finished_at: Option<String>,
    /// Docker's error, if any.
    pub error: Option<String>,
    /// Its published ports.
    pub ports: Vec<PublishedPort>,
}

/// A container port and where the host publishes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishedPort {
    /// Port inside the container.
    pub container: Option<u16>,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// Host address it is published on.
    pub host_ip: Option<String>,
    /// Host port.
    pub host: Option<u16>,
}

/// One line of a container's output.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogLine {
    /// `stdout` or `stderr`.
    pub stream: String,
    /// The text, without its newline.
    pub line: String,
}

/// `workload.logs`' answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogTail {
    /// The workload's id.
    pub workload: String,
    /// Oldest first.
    pub lines: Vec<LogLine>,
    /// Whether the output was cut at the node's limit.
    pub truncated: bool,
    /// Whether these are the logs the node kept when it removed the container (present only
    /// then).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub kept: bool,
}

/// `workload.stats`' answer: one sample.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkloadUsage {
    /// The workload's id.
    pub workload: String,
    /// CPU use since the previous sample, in percent of one CPU.
    pub cpu_percent: Option<f64>,
    /// Memory in use.
    pub memory_used_bytes: Option<u64>,
    /// Its memory limit.
    pub memory_limit_bytes: Option<u64>,
    /// Bytes received over all its networks.
    pub network_rx_bytes: u64,
    /// Bytes sent over all its networks.
    pub network_tx_bytes: u64,
    /// Processes in it.
    pub pids: Option<u64>,
    /// UUIDs of its GPUs.
    pub gpus: Vec<String>,
}

/// `container.exec`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecOutput {
    /// The workload's id.
    pub workload: String,
    /// Exit code; none when it was killed.
    pub exit_code: Option<i64>,
    /// Standard output, lossily decoded, capped.
    pub stdout: String,
    /// Standard error, lossily decoded, capped.
    pub stderr: String,
    /// Whether either stream was cut at the cap.
    pub truncated: bool,
    /// Whether it was killed at the timeout.
    pub timed_out: bool,
}

impl Answer for Workload {}
impl Answer for WorkloadListing {}
impl Answer for WorkloadDetail {}
impl Answer for LogTail {}
impl Answer for WorkloadUsage {}
impl Answer for ExecOutput {}

commands! {
    /// `workload.run`.
    WorkloadRun = "workload.run", Operate, RunParams => Workload,
        "Start a container workload on Docker, with GPUs by count or UUID";
    /// `workload.stop`.
    WorkloadStop = "workload.stop", Operate, StopParams => Workload,
        "Stop a workload gracefully and release its GPUs";
    /// `workload.list`.
    WorkloadList = "workload.list", Read, ListParams => WorkloadListing,
        "List workloads, optionally filtered by state, labels or GPU";
    /// `workload.inspect`.
    WorkloadInspect = "workload.inspect", Read, WorkloadRef => WorkloadDetail,
        "A workload's record and its container's state and ports";
    /// `workload.logs`.
    WorkloadLogs = "workload.logs", Operate, LogsParams => LogTail,
        "A workload's recent output (tail, since)";
    /// `workload.stats`.
    WorkloadStats = "workload.stats", Read, WorkloadRef => WorkloadUsage,
        "One sample of a workload's CPU, memory, network and process use";
    /// `container.exec`.
    ContainerExec = "container.exec", Operate, ExecParams => ExecOutput,
        "Run a program inside a workload's running container";
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(json: serde_json::Value) -> Result<RunParams, serde_json::Error> {
        serde_json::from_value(json)
    }

    #[test]
    fn unknown_fields_and_wrong_types_are_refused() {
        assert!(run(serde_json::json!({"image": "a", "gpu": 1})).is_err());
        assert!(run(serde_json::json!({"image": "a", "gpus": "one"})).is_err());
        assert!(run(serde_json::json!({"image": "a", "restart": "sometimes"})).is_err());
        assert!(run(serde_json::json!({"image": "a", "restart": "on-failure"})).is_ok());
    }

    #[test]
    fn configs_and_secrets_are_named_once_and_mounted_at_plain_paths() {
        let check = |json| run(json).unwrap().check().map(|_| ());
        let ok = check(serde_json::json!({"image": "a",
            "env_from": {"DB": {"secret": "db", "key": "password"}, "MODE": {"config": "app", "key": "mode"}},
            "files": [{"secret": "db", "path": "/run/secrets/db"}]}));
        assert!(ok.is_ok(), "{ok:?}");
        for bad in [
            serde_json::json!({"image": "a", "env_from": {"DB": {"secret": "db", "config": "db", "key": "k"}}}),
            serde_json::json!({"image": "a", "env_from": {"DB": {"key": "k"}}}),
            serde_json::json!({"image": "a", "env_from": {"DB": {"secret": "db", "key": "../k"}}}),
            serde_json::json!({"image": "a", "env_from": {"1DB": {"secret": "db", "key": "k"}}}),
            serde_json::json!({"image": "a", "env": {"DB": "x"}, "env_from": {"DB": {"secret": "db", "key": "k"}}}),
            serde_json::json!({"image": "a", "files": [{"secret": "db", "path": "/"}]}),
            serde_json::json!({"image": "a", "files": [{"secret": "db", "path": "/run/../etc"}]}),
            serde_json::json!({"image": "a", "files": [{"secret": "db", "path": "/x"}, {"config": "c", "path": "/x"}]}),
            serde_json::json!({"image": "a", "files": [{"secret": "Db", "path": "/x"}]}),
        ] {
            assert!(check(bad.clone()).is_err(), "{bad}");
        }
        assert!(run(serde_json::json!({"image": "a", "env_from": {"DB": {"secret": "db", "key": "k", "x": 1}}})).is_err());
    }

    #[test]
    fn fields_are_range_checked() {
        let check = |json| {
            run(json)
                .unwrap()
                .check()
                .map(|_| ())
                .unwrap_err()
                .to_string()
        };
        assert!(check(serde_json::json!({"image": "-rm"})).contains("image"));
        assert!(check(serde_json::json!({"image": "a", "name": "Bad Name"})).contains("name"));
        assert!(
            check(serde_json::json!({"image": "a", "gpus": 1, "gpu_uuids": ["x"]}))
                .contains("not both")
        );
        assert!(
            check(serde_json::json!({"image": "a", "labels": {"io.clawbernetes.node": "x"}}))
                .contains("reserved")
        );
        assert!(check(serde_json::json!({"image": "a", "env": {"1X": "y"}})).contains("env"));
        assert!(check(serde_json::json!({"image": "a", "cpus": -1.0})).contains("cpus"));
        assert!(
            check(serde_json::json!({"image": "a", "gpu_uuids": ["x", "x"]})).contains("twice")
        );
    }

    #[test]
    fn volume_paths_are_absolute_and_plain() {
        let volume = |host: &str, container: &str| VolumeSpec {
            host: host.to_owned(),
            container: container.to_owned(),
            read_only: true,
        };
        assert!(volume("/srv/data", "/data").check().is_ok());
        for (host, container) in [
            ("srv/data", "/data"),
            ("/srv/../etc", "/data"),
            ("/srv/data", "data"),
            ("/srv:x", "/data"),
            ("/srv/./data", "/data"),
        ] {
            assert!(
                volume(host, container).check().is_err(),
                "{host} {container}"
            );
        }
    }
}
