//! Deployments: a named set of identical replicas, each a workload on some member, kept at its
//! count across the fleet. A deployment is a fleet object ([`crate::objects`]): every change is
//! a new revision signed by an operator, every member keeps the latest and a bounded history, and
//! any member answers `deploy.status` and `deploy.history`.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::command::commands;
use crate::workload::{RunParams, SpecError, Workload, WorkloadState, is_simple_name};
use crate::{Answer, ErrorCode, InvokeFailure};

/// Most replicas one deployment asks for.
pub const MAX_REPLICAS: u32 = 64;

/// What a deployment should be: how many replicas of which container, placed how, rolled out
/// how.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeploymentSpec {
    /// How many replicas should run, 0 to 64.
    pub replicas: u32,
    /// What each replica runs: `workload.run`'s params, without `name` (replicas are named
    /// after the deployment) or `gpu_uuids` (a replica takes any free GPUs of its node). Env
    /// values are part of the signed record every member keeps: pass secrets by reference once
    /// secrets exist, never here.
    pub template: RunParams,
    /// Only nodes with GPUs whose model contains this (e.g. `H100`).
    #[serde(default)]
    pub gpu_model: Option<String>,
    /// How a new revision replaces the running one.
    #[serde(default)]
    pub strategy: RolloutStrategy,
    /// How each replica's node checks that it works. A replica counts as available only once
    /// healthy; a new revision whose replicas turn unhealthy is rolled back by itself.
    #[serde(default)]
    pub health: Option<HealthCheck>,
    /// Paused: the replicas keep running as they are, and no rollout or rescheduling happens.
    #[serde(default)]
    pub paused: bool,
    /// The revision of each secret the template uses that its replicas must start with. Set by
    /// `secret.rotate`, which signs a new revision of every deployment using the secret, so the
    /// replicas roll (by the strategy) onto the new values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_revisions: BTreeMap<String, u64>,
    /// Taints of nodes its replicas may still go to (`node.taint`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<crate::taints::Toleration>,
}

/// A replica's health check, run by its node.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// What is checked.
    pub probe: Probe,
    /// Seconds between checks, 1 to 3600. Default 10.
    #[serde(default = "ten")]
    pub interval_secs: u32,
    /// Seconds a check may take, 1 to 60. Default 5.
    #[serde(default = "five")]
    pub timeout_secs: u32,
    /// Failures in a row that make a replica unhealthy, 1 to 100. Default 3.
    #[serde(default = "three")]
    pub failure_threshold: u32,
    /// Successes in a row that make it healthy, 1 to 100. Default 1.
    #[serde(default = "one")]
    pub success_threshold: u32,
    /// Seconds after the start before the first check, at most 3600. Default 0.
    #[serde(default)]
    pub initial_delay_secs: u32,
}

/// What a health check checks, inside the replica's container or on its address.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Probe {
    /// A program run inside the container; healthy when it exits 0.
    Exec {
        /// Program and arguments (no shell unless named).
        argv: Vec<String>,
    },
    /// A TCP connection to the container's port; healthy when it opens.
    Tcp {
        /// The port inside the container.
        port: u16,
    },
    /// An HTTP GET of the container's port and path; healthy on a 2xx or 3xx status.
    Http {
        /// The port inside the container.
        port: u16,
        /// The path, starting with `/`.
        #[serde(default = "root")]
        path: String,
    },
}

fn ten() -> u32 {
    10
}

fn five() -> u32 {
    5
}

fn three() -> u32 {
    3
}

fn root() -> String {
    "/".to_owned()
}

impl HealthCheck {
    fn check(&self) -> Result<(), SpecError> {
        let in_range = (1..=3600).contains(&self.interval_secs)
            && (1..=60).contains(&self.timeout_secs)
            && (1..=100).contains(&self.failure_threshold)
            && (1..=100).contains(&self.success_threshold)
            && self.initial_delay_secs <= 3600;
        if !in_range {
            return invalid(
                "health: interval_secs 1-3600, timeout_secs 1-60, thresholds 1-100, \
                 initial_delay_secs at most 3600",
            );
        }
        match &self.probe {
            Probe::Exec { argv }
                if argv.is_empty() || argv.len() > 64 || argv.iter().any(|a| a.len() > 1024) =>
            {
                invalid("health.probe.argv: 1 to 64 arguments of at most 1 KiB")
            }
            Probe::Tcp { port: 0 } | Probe::Http { port: 0, .. } => {
                invalid("health.probe.port must be 1 to 65535")
            }
            Probe::Http { path, .. }
                if !path.starts_with('/')
                    || path.len() > 1024
                    || path.bytes().any(|b| b.is_ascii_control() || b == b' ') =>
            {
                invalid("health.probe.path: starting with '/', no spaces, at most 1 KiB")
            }
            _ => Ok(()),
        }
    }
}

/// Label naming the deployment a replica belongs to.
pub const DEPLOYMENT_LABEL: &str = "clawbernetes-deployment";

/// How a new revision replaces the running one.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum RolloutStrategy {
    /// Replace replicas a few at a time.
    Rolling {
        /// Replicas that may run above `replicas` during the rollout.
        #[serde(default = "one")]
        max_surge: u32,
        /// Replicas that may be missing below `replicas` during the rollout.
        #[serde(default)]
        max_unavailable: u32,
    },
    /// Run a share of the replicas on the new revision beside the stable one, and move on a
    /// step with `deploy.promote`, or by itself with `analysis`; after the last step, roll the
    /// rest.
    Canary {
        /// The share of replicas on the new revision at each step, in percent (1 to 99,
        /// rising), e.g. `[10, 50]`; with `analysis`, also the share of the service's traffic.
        steps: Vec<u32>,
        /// The step the deployment is at (0 is the first; `steps.len()` means promoted to all).
        #[serde(default)]
        step: u32,
        /// Split a service's traffic by the steps' weights, and promote or roll back on what it
        /// measures of the new revision.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        analysis: Option<crate::canary::CanaryAnalysis>,
    },
    /// Start a whole new set of replicas beside the old one; stop the old set once every new
    /// replica is available.
    BlueGreen,
}

impl RolloutStrategy {
    /// Its name: `rolling`, `canary` or `blue_green`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Rolling { .. } => "rolling",
            Self::Canary { .. } => "canary",
            Self::BlueGreen => "blue_green",
        }
    }
}

fn one() -> u32 {
    1
}

impl Default for RolloutStrategy {
    fn default() -> Self {
        Self::Rolling {
            max_surge: 1,
            max_unavailable: 0,
        }
    }
}

fn invalid<T>(message: impl Into<String>) -> Result<T, SpecError> {
    Err(SpecError::Invalid(message.into()))
}

/// Checks a deployment's name: 1 to 32 of `a-z 0-9 -` (replica names add a suffix to it).
pub fn check_name(name: &str) -> Result<(), SpecError> {
    if is_simple_name(name, 32) {
        Ok(())
    } else {
        invalid(format!(
            "deployment name {name:?} must be 1 to 32 of a-z, 0-9 and '-'"
        ))
    }
}

impl DeploymentSpec {
    /// Checks every field, the template's as `workload.run` would.
    pub fn check(&self) -> Result<(), SpecError> {
        if self.replicas > MAX_REPLICAS {
            return invalid(format!("replicas must be 0 to {MAX_REPLICAS}"));
        }
        if self.template.name.is_some() {
            return invalid("template.name: replicas are named after the deployment");
        }
        if self.template.gpu_uuids.is_some() {
            return invalid("template.gpu_uuids: a replica takes any free GPUs (give gpus)");
        }
        self.template.check()?;
        crate::taints::check_tolerations(&self.tolerations)?;
        if let Some(model) = &self.gpu_model
            && (model.is_empty() || model.len() > 64)
        {
            return invalid("gpu_model must be 1 to 64 bytes");
        }
        let secrets = self.template.sources();
        if let Some(name) = self
            .secret_revisions
            .keys()
            .find(|name| !secrets.contains(&(crate::workload::SourceKind::Secret, (*name).clone())))
        {
            return invalid(format!(
                "secret_revisions names {name:?}, a secret the template does not use"
            ));
        }
        match &self.strategy {
            RolloutStrategy::Rolling {
                max_surge,
                max_unavailable,
            } => {
                if *max_surge == 0 && *max_unavailable == 0 {
                    return invalid("strategy: max_surge and max_unavailable cannot both be 0");
                }
                if *max_surge > MAX_REPLICAS || *max_unavailable > MAX_REPLICAS {
                    return invalid(format!(
                        "strategy: max_surge and max_unavailable are at most {MAX_REPLICAS}"
                    ));
                }
            }
            RolloutStrategy::Canary {
                steps,
                step,
                analysis,
            } => {
                if let Some(analysis) = analysis {
                    analysis.check()?;
                }
                let rising = steps.windows(2).all(|w| w[0] < w[1]);
                if steps.is_empty()
                    || steps.len() > 10
                    || !rising
                    || steps.iter().any(|p| !(1..=99).contains(p))
                {
                    return invalid("strategy.steps: 1 to 10 rising percentages of 1 to 99");
                }
                if *step as usize > steps.len() {
                    return invalid("strategy.step is past the last step");
                }
            }
            RolloutStrategy::BlueGreen => {}
        }
        if let Some(health) = &self.health {
            health.check()?;
        }
        Ok(())
    }
}

/// A change an operator asks of a deployment: what `deploy.create`, `update`, `rollback`,
/// `promote`, `pause`, `resume` and `delete` sign as its next revision.
#[derive(Debug, Clone)]
pub enum Change {
    /// A new deployment (or one deleted before, again).
    Create(Box<DeploymentSpec>),
    /// The fields given changed.
    Update(Box<UpdateParams>),
    /// A kept revision's spec (the one before the current when `None`).
    Rollback(Option<u64>),
    /// A canary's next step.
    Promote,
    /// Paused (`true`) or resumed.
    Pause(bool),
    /// Secret `0` rotated to revision `1`: the replicas roll onto it.
    SecretRotated(String, u64),
    /// Deleted.
    Delete,
}

fn refused(code: ErrorCode, message: impl Into<String>) -> InvokeFailure {
    InvokeFailure::new(code, message)
}

fn not_found(name: &str) -> InvokeFailure {
    refused(
        ErrorCode::NotFound,
        format!("no deployment {name:?}; deploy.list lists them"),
    )
}

impl Change {
    /// The spec the next revision of deployment `name` carries (`None` deletes it), given its
    /// kept revisions, newest first; refused the way the commands answer when the change does
    /// not apply. Every tool that signs for an operator (a node, the bridge) decides with this,
    /// so they agree.
    pub fn next_spec(
        self,
        name: &str,
        kept: &[DeploymentRevision],
    ) -> Result<Option<DeploymentSpec>, InvokeFailure> {
        let invalid = |e: SpecError| refused(ErrorCode::InvalidParams, e.to_string());
        check_name(name).map_err(invalid)?;
        let live = kept.first().and_then(|r| r.spec.clone());
        let live_spec = || live.clone().ok_or_else(|| not_found(name));
        let next = match self {
            Self::Create(spec) => {
                if let (Some(current), Some(_)) = (kept.first(), &live) {
                    return Err(refused(
                        ErrorCode::Conflict,
                        format!(
                            "deployment {name:?} exists (revision {}); deploy.update changes it",
                            current.revision
                        ),
                    ));
                }
                Some(*spec)
            }
            Self::Update(update) => {
                if update.is_empty() {
                    return Err(refused(
                        ErrorCode::InvalidParams,
                        "deploy.update changes nothing: name a field to change",
                    ));
                }
                Some(update.apply(&live_spec()?))
            }
            Self::Pause(paused) => {
                let mut spec = live_spec()?;
                spec.paused = paused;
                Some(spec)
            }
            Self::Promote => {
                let mut spec = live_spec()?;
                match &mut spec.strategy {
                    RolloutStrategy::Canary { steps, step, .. }
                        if (*step as usize) < steps.len() =>
                    {
                        *step += 1;
                    }
                    RolloutStrategy::Canary { .. } => {
                        return Err(refused(
                            ErrorCode::Conflict,
                            format!("deployment {name:?} is promoted to every replica already"),
                        ));
                    }
                    _ => {
                        return Err(refused(
                            ErrorCode::InvalidParams,
                            format!("deployment {name:?} is not a canary"),
                        ));
                    }
                }
                Some(spec)
            }
            Self::Rollback(revision) => {
                live_spec()?;
                let target = match revision {
                    Some(revision) => kept.iter().find(|k| k.revision == revision),
                    None => kept.get(1),
                };
                let Some(target) = target else {
                    let revisions: Vec<String> =
                        kept.iter().map(|k| k.revision.to_string()).collect();
                    return Err(refused(
                        ErrorCode::NotFound,
                        format!(
                            "{name:?} keeps revisions {}; there is no {} to go back to",
                            revisions.join(", "),
                            revision.map_or("earlier one".to_owned(), |r| format!("revision {r}"))
                        ),
                    ));
                };
                if Some(target.revision) == kept.first().map(|k| k.revision) {
                    return Err(refused(
                        ErrorCode::InvalidParams,
                        format!("revision {} is the current one", target.revision),
                    ));
                }
                let spec = target.spec.clone().ok_or_else(|| {
                    refused(
                        ErrorCode::InvalidParams,
                        format!("revision {} deleted the deployment", target.revision),
                    )
                })?;
                // Going back to an older spec does not go back to older secret values.
                let mut spec = spec;
                spec.secret_revisions = live_spec()?.secret_revisions;
                Some(spec)
            }
            Self::SecretRotated(secret, revision) => {
                let mut spec = live_spec()?;
                spec.secret_revisions.insert(secret, revision);
                Some(spec)
            }
            Self::Delete => {
                live_spec()?;
                None
            }
        };
        if let Some(spec) = &next {
            spec.check().map_err(invalid)?;
        }
        Ok(next)
    }
}

/// `deploy.create`: a new deployment.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateParams {
    /// Its name, unique in the fleet: 1 to 32 of `a-z 0-9 -`.
    pub name: String,
    /// What it should be.
    pub spec: DeploymentSpec,
}

/// `deploy.update`: a new revision with the fields given changed; the others stay.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateParams {
    /// The deployment.
    pub name: String,
    /// A new image.
    #[serde(default)]
    pub image: Option<String>,
    /// A new command.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// New env (replaces the whole map).
    #[serde(default)]
    pub env: Option<BTreeMap<String, String>>,
    /// New env from configs and secrets (replaces the whole map).
    #[serde(default)]
    pub env_from: Option<BTreeMap<String, crate::workload::ValueRef>>,
    /// New config and secret files (replaces the whole list).
    #[serde(default)]
    pub files: Option<Vec<crate::workload::FileMount>>,
    /// A new replica count.
    #[serde(default)]
    pub replicas: Option<u32>,
    /// A new rollout strategy.
    #[serde(default)]
    pub strategy: Option<RolloutStrategy>,
    /// A new health check.
    #[serde(default)]
    pub health: Option<HealthCheck>,
}

impl UpdateParams {
    /// `spec` with this update's fields applied.
    pub fn apply(&self, spec: &DeploymentSpec) -> DeploymentSpec {
        let mut next = spec.clone();
        if let Some(image) = &self.image {
            next.template.image.clone_from(image);
        }
        if let Some(command) = &self.command {
            next.template.command.clone_from(command);
        }
        if let Some(env) = &self.env {
            next.template.env.clone_from(env);
        }
        if let Some(env_from) = &self.env_from {
            next.template.env_from.clone_from(env_from);
        }
        if let Some(files) = &self.files {
            next.template.files.clone_from(files);
        }
        let secrets = next.template.sources();
        next.secret_revisions.retain(|name, _| {
            secrets.contains(&(crate::workload::SourceKind::Secret, name.clone()))
        });
        if let Some(replicas) = self.replicas {
            next.replicas = replicas;
        }
        if let Some(strategy) = &self.strategy {
            next.strategy = strategy.clone();
        }
        if let Some(health) = &self.health {
            next.health = Some(health.clone());
        }
        next
    }

    /// Whether the update changes nothing.
    pub fn is_empty(&self) -> bool {
        self.image.is_none()
            && self.command.is_none()
            && self.env.is_none()
            && self.env_from.is_none()
            && self.files.is_none()
            && self.replicas.is_none()
            && self.strategy.is_none()
            && self.health.is_none()
    }
}

/// Names a deployment.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeploymentRef {
    /// The deployment's name.
    pub name: String,
}

/// `deploy.rollback`: a new revision whose spec is a kept earlier one's.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackParams {
    /// The deployment.
    pub name: String,
    /// The revision to go back to; the one before the current when absent.
    #[serde(default)]
    pub revision: Option<u64>,
}

/// A deployment as every member knows it: its latest revision.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Deployment {
    /// Its name.
    pub name: String,
    /// Its revision, from 1; every change adds one.
    pub revision: u64,
    /// What it should be at this revision.
    pub spec: DeploymentSpec,
    /// The operator that signed this revision (peer id).
    pub signed_by: String,
    /// When this revision was signed, Unix ms.
    pub signed_at_ms: u64,
}

impl Answer for Deployment {}

/// `deploy.list`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeploymentListing {
    /// The fleet's deployments, by name.
    pub deployments: Vec<Deployment>,
}

impl Answer for DeploymentListing {}

/// One kept revision of a deployment.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeploymentRevision {
    /// The revision.
    pub revision: u64,
    /// The spec at that revision; absent for the revision that deleted it.
    #[serde(default)]
    pub spec: Option<DeploymentSpec>,
    /// The operator that signed it.
    pub signed_by: String,
    /// When, Unix ms.
    pub signed_at_ms: u64,
}

/// `deploy.history`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeploymentHistory {
    /// The deployment.
    pub name: String,
    /// Its kept revisions, newest first (the latest 16).
    pub revisions: Vec<DeploymentRevision>,
}

impl Answer for DeploymentHistory {}

/// `deploy.delete`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeploymentDeleted {
    /// The deployment.
    pub name: String,
    /// The revision that deleted it.
    pub revision: u64,
}

impl Answer for DeploymentDeleted {}

/// A controller's claim on a deployment, as a node keeps it: actions that carry a lower claim
/// are refused, so a controller that was cut off cannot act after another took over.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Fence {
    /// The controller's epoch for the deployment; each new controller takes a higher one.
    pub epoch: u64,
    /// The controller's peer id (orders two controllers that took the same epoch).
    pub controller: String,
}

/// `deploy.replicas`: a node's replicas of a deployment; with `epoch`, asked by a controller,
/// which raises the node's fence to it first.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplicasParams {
    /// The deployment.
    pub name: String,
    /// The asking controller's epoch.
    #[serde(default)]
    pub epoch: Option<u64>,
    /// Revisions the controller found failing their health checks (and rolled back from), for
    /// the node to keep for the next controller.
    #[serde(default)]
    pub failed: Vec<u64>,
    /// The controller's scale record (the deployment has an autoscaler), for the node to keep
    /// when it is newer.
    #[serde(default)]
    pub scale: Option<crate::autoscale::ScaleRecord>,
    /// Read the deployment's autoscaler metric on each running replica here. The node reads
    /// the metric of the autoscaler it keeps itself (an operator signed it), never one the
    /// caller names.
    #[serde(default)]
    pub measure: bool,
    /// The controller's canary record (the deployment's canary names a service), for the node
    /// to keep when it is newer; the node then answers its traffic since the record's step
    /// began.
    #[serde(default)]
    pub canary: Option<crate::canary::CanaryRecord>,
}

/// One replica's reading of an autoscaler's metric.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Reading {
    /// The replica's workload.
    pub workload: String,
    /// The number read, when there was one.
    #[serde(default)]
    pub value: Option<f64>,
    /// Why there is none.
    #[serde(default)]
    pub error: Option<String>,
}

/// One replica of a deployment on a node.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Replica {
    /// The workload running it.
    pub workload: String,
    /// The deployment revision it was started from.
    pub revision: u64,
    /// Digest of the template it runs (revisions that change only the count or the pause keep
    /// their replicas).
    pub template: String,
    /// The workload's state.
    pub state: WorkloadState,
    /// Its health, when the deployment has a health check.
    #[serde(default)]
    pub health: Option<ReplicaHealth>,
    /// When it was started, Unix ms.
    pub created_ms: u64,
}

/// A replica's health as its node's checks found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReplicaHealth {
    /// Not yet checked enough times to tell.
    Starting,
    /// Passed its last `success_threshold` checks.
    Healthy,
    /// Failed its last `failure_threshold` checks.
    Unhealthy,
}

/// A node's account of a deployment.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplicaReport {
    /// The deployment.
    pub name: String,
    /// The highest controller claim the node has seen for it.
    pub fence: Option<Fence>,
    /// Its replicas on the node that are starting or running.
    pub replicas: Vec<Replica>,
    /// Set by the node that controls the deployment: why replicas are still missing (no node
    /// with the GPUs free, for one), or what a rollback did.
    #[serde(default)]
    pub pending: Option<String>,
    /// Revisions found failing their health checks, as controllers told this node.
    #[serde(default)]
    pub failed: Vec<u64>,
    /// Whether the node is draining: its replicas are to be moved elsewhere.
    #[serde(default)]
    pub draining: bool,
    /// The scale record the node keeps, when the deployment is autoscaled.
    #[serde(default)]
    pub scale: Option<crate::autoscale::ScaleRecord>,
    /// Its running replicas' readings of the metric asked for.
    #[serde(default)]
    pub readings: Vec<Reading>,
    /// The canary record the node keeps, when the deployment's canary names a service.
    #[serde(default)]
    pub canary: Option<crate::canary::CanaryRecord>,
    /// The deployment's traffic through the canary's service that this node carried since
    /// the kept record's step began, per template.
    #[serde(default)]
    pub traffic: Vec<crate::canary::RevisionTraffic>,
}

impl Answer for ReplicaReport {}

/// `deploy.replica.start`: the controller asks a node to start one replica.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplicaStartParams {
    /// The deployment.
    pub name: String,
    /// The revision whose template to run.
    pub revision: u64,
    /// The controller's epoch.
    pub epoch: u64,
}

/// `deploy.replica.stop`: the controller asks a node to stop one replica.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplicaStopParams {
    /// The deployment.
    pub name: String,
    /// The replica's workload.
    pub workload: String,
    /// The controller's epoch.
    pub epoch: u64,
}

/// One replica as `deploy.status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlacedReplica {
    /// The node's peer id.
    pub node: String,
    /// The node's name, as it announces it (a peer's claim).
    pub node_name: String,
    /// The replica.
    #[serde(flatten)]
    pub replica: Replica,
}

/// `deploy.status`: the deployment and where its replicas run, as the live members report them.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeploymentStatus {
    /// The deployment's current revision.
    #[serde(flatten)]
    pub deployment: Deployment,
    /// The member that controls it, as this member sees the fleet.
    pub controller: Option<String>,
    /// Replicas starting or running on the live members that answered.
    pub replicas: Vec<PlacedReplica>,
    /// How many of them run the current revision's template and are available (running, and
    /// healthy where there is a health check).
    pub ready: u32,
    /// Revisions found failing their health checks and rolled back from.
    pub failed_revisions: Vec<u64>,
    /// Why replicas are missing, as the controller last saw it.
    pub pending: Option<String>,
    /// Live members that did not answer (their replicas are not listed).
    pub unreachable: Vec<String>,
    /// The replica count an autoscaler decided, which the controller keeps to instead of the
    /// spec's `replicas`; absent when the deployment is not autoscaled.
    #[serde(default)]
    pub autoscaled: Option<u32>,
    /// The canary's analysis, when the deployment's canary names a service and its current
    /// revision is under test or was.
    #[serde(default)]
    pub canary: Option<crate::canary::CanaryStatus>,
}

impl Answer for DeploymentStatus {}

commands! {
    /// `deploy.create`.
    DeployCreate = "deploy.create", Operate, CreateParams => Deployment,
        "Create a deployment: replicas of a container kept running across the fleet";
    /// `deploy.update`.
    DeployUpdate = "deploy.update", Operate, UpdateParams => Deployment,
        "Change a deployment's image, command, env, replicas or strategy (a new revision)";
    /// `deploy.status`.
    DeployStatus = "deploy.status", Read, DeploymentRef => DeploymentStatus,
        "A deployment's current revision and spec, its controller and where its replicas run";
    /// `deploy.list`.
    DeployList = "deploy.list", Read, crate::NoParams => DeploymentListing,
        "The fleet's deployments";
    /// `deploy.history`.
    DeployHistory = "deploy.history", Read, DeploymentRef => DeploymentHistory,
        "A deployment's kept revisions, newest first";
    /// `deploy.rollback`.
    DeployRollback = "deploy.rollback", Operate, RollbackParams => Deployment,
        "Go back to a kept revision's spec (a new revision)";
    /// `deploy.pause`.
    DeployPause = "deploy.pause", Operate, DeploymentRef => Deployment,
        "Pause a deployment: no rollout or rescheduling until it is resumed";
    /// `deploy.resume`.
    DeployResume = "deploy.resume", Operate, DeploymentRef => Deployment,
        "Resume a paused deployment";
    /// `deploy.delete`.
    DeployDelete = "deploy.delete", Operate, DeploymentRef => DeploymentDeleted,
        "Delete a deployment; its replicas are stopped";
    /// `deploy.promote`.
    DeployPromote = "deploy.promote", Operate, DeploymentRef => Deployment,
        "Move a canary deployment to its next step (the last step promotes it to every replica)";
    /// `deploy.replicas`.
    DeployReplicas = "deploy.replicas", Read, ReplicasParams => ReplicaReport,
        "This node's replicas of a deployment and its controller fence (asked by controllers)";
    /// `deploy.replica.start`.
    DeployReplicaStart = "deploy.replica.start", Read, ReplicaStartParams => Workload,
        "Start one replica of a deployment here (the deployment's controller only)";
    /// `deploy.replica.stop`.
    DeployReplicaStop = "deploy.replica.stop", Read, ReplicaStopParams => Workload,
        "Stop one replica of a deployment here (the deployment's controller only)";
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn spec(value: serde_json::Value) -> Result<DeploymentSpec, serde_json::Error> {
        serde_json::from_value(value)
    }

    #[test]
    fn a_spec_parses_strictly_and_defaults_to_a_rolling_update() {
        let parsed = spec(json!({"replicas": 3, "template": {"image": "busybox"}})).unwrap();
        assert_eq!(parsed.strategy, RolloutStrategy::default());
        assert!(parsed.check().is_ok());
        assert!(spec(json!({"replicas": 3, "template": {"image": "a"}, "x": 1})).is_err());
        assert!(
            spec(json!({"replicas": 1, "template": {"image": "a"},
                "strategy": {"type": "rolling", "max_surge": 2, "surge": 1}}))
            .is_err()
        );
        let rolling = spec(json!({"replicas": 1, "template": {"image": "a"},
            "strategy": {"type": "rolling", "max_unavailable": 1}}))
        .unwrap();
        assert_eq!(
            rolling.strategy,
            RolloutStrategy::Rolling {
                max_surge: 1,
                max_unavailable: 1
            }
        );
    }

    #[test]
    fn a_spec_that_names_or_pins_its_replicas_is_refused() {
        for bad in [
            json!({"replicas": 1, "template": {"image": "a", "name": "x"}}),
            json!({"replicas": 1, "template": {"image": "a", "gpu_uuids": ["GPU-1"]}}),
            json!({"replicas": 65, "template": {"image": "a"}}),
            json!({"replicas": 1, "template": {"image": "-a"}}),
            json!({"replicas": 1, "template": {"image": "a"},
                "strategy": {"type": "rolling", "max_surge": 0}}),
        ] {
            assert!(spec(bad.clone()).unwrap().check().is_err(), "{bad}");
        }
        assert!(check_name("web-1").is_ok());
        assert!(check_name("Web").is_err() && check_name(&"a".repeat(33)).is_err());
    }

    #[test]
    fn a_rotation_pins_the_secret_revision_and_rollbacks_and_updates_keep_it_sound() {
        let uses = json!({"replicas": 1, "template": {"image": "a",
            "env_from": {"TOKEN": {"secret": "hf", "key": "token"}}}});
        let revision = |revision, spec: &DeploymentSpec| DeploymentRevision {
            revision,
            spec: Some(spec.clone()),
            signed_by: "op".into(),
            signed_at_ms: 1,
        };
        let first = spec(uses.clone()).unwrap();
        let mut second = first.clone();
        second.template.image = "b".into();
        let kept = [revision(2, &second), revision(1, &first)];
        let rotated = Change::SecretRotated("hf".into(), 5)
            .next_spec("web", &kept)
            .unwrap()
            .unwrap();
        assert_eq!(rotated.secret_revisions, BTreeMap::from([("hf".into(), 5)]));
        // Back to revision 1's image, but not to the older secret.
        let kept = [
            revision(3, &rotated),
            revision(2, &second),
            revision(1, &first),
        ];
        let back = Change::Rollback(Some(1))
            .next_spec("web", &kept)
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                back.template.image.as_str(),
                back.secret_revisions.get("hf")
            ),
            ("a", Some(&5))
        );
        // An update that stops using the secret forgets its pin.
        let update = UpdateParams {
            name: "web".into(),
            env_from: Some(BTreeMap::new()),
            ..UpdateParams::default()
        };
        assert!(update.apply(&rotated).secret_revisions.is_empty());
        // A pin for a secret the template does not use is refused.
        let mut stray = first;
        stray.secret_revisions.insert("other".into(), 1);
        assert!(
            stray
                .check()
                .unwrap_err()
                .to_string()
                .contains("does not use")
        );
    }

    #[test]
    fn an_update_changes_only_what_it_names() {
        let before =
            spec(json!({"replicas": 2, "template": {"image": "a", "env": {"K": "v"}}})).unwrap();
        let update = UpdateParams {
            name: "web".into(),
            image: Some("b".into()),
            ..UpdateParams::default()
        };
        let after = update.apply(&before);
        assert_eq!(after.template.image, "b");
        assert_eq!(
            (after.replicas, &after.template.env),
            (2, &before.template.env)
        );
        assert!(!update.is_empty() && UpdateParams::default().is_empty());
    }
}
