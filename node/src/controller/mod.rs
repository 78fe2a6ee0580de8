//! Deployment controllers with no central registry. Every member runs [`Deployments::run`];
//! for each deployment, the member first in [`plan::ranking`] over the live fleet view controls
//! it, and the others stand by. A controller claims the deployment with an epoch one above the
//! highest any node reports, and every read and action it sends carries that claim: a node keeps
//! the highest claim it has seen (its fence) and refuses actions under it, so a controller that
//! was cut off cannot act once another took over. When the controller dies, it leaves the
//! others' views after the announce silence, and the next member in the ranking takes over.
//!
//! Nodes answer the controller's `deploy.replicas`, `deploy.replica.start` and
//! `deploy.replica.stop` only from one of the deployment's two first-ranked members in their own
//! view, and start only what an operator signed: the template of a revision of the deployment
//! they keep themselves.

mod autoscale;
mod canary;
mod jobs;
pub mod plan;

pub(crate) use canary::{Split, Tag};
pub use jobs::{Jobs, KeptBid};

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use claw_api::deploy::{
    DeployReplicas, DeploymentSpec, DeploymentStatus, Fence, HealthCheck, PlacedReplica, Probe,
    Replica, ReplicaHealth, ReplicaReport, ReplicaStartParams, ReplicaStopParams, ReplicasParams,
    RolloutStrategy,
};
use claw_api::taints::{Taint, TaintEffect, Toleration, tolerated};
use claw_api::workload::{ExecParams, ListParams, StopParams, Workload, WorkloadState};
use claw_mesh::{ErrorCode, FleetMember, InvokeFailure, InvokeRequest, MeshHandle, PeerId};
use futures::StreamExt as _;

use crate::now_ms;
use crate::objects::FleetObjects;
use crate::store::{ObjectKind, Store};
use crate::workloads::{WorkloadRecord, Workloads};
use plan::{Action, Candidate, Goal, is_available, ranking, template_digest};

use claw_api::deploy::DEPLOYMENT_LABEL;
/// Label with the revision a replica was started from.
const REVISION_LABEL: &str = "clawbernetes-revision";
/// Label with the digest of the template a replica runs.
pub(crate) const TEMPLATE_LABEL: &str = "clawbernetes-template";
/// How long into a drain a node leaves its deployments' replicas for their controllers to move;
/// after it, the drain stops them itself.
const MOVE_GRACE_MS: u64 = 120_000;
/// How many nodes one read asks at a time.
const NODES_ASKED_AT_ONCE: usize = 32;
/// How long a controller waits for one node's answer.
const NODE_DEADLINE: Duration = Duration::from_secs(5);
/// How long a controller waits for a node to start or stop a container (image pulls included).
const ACTION_DEADLINE: Duration = Duration::from_secs(60);
/// How many of a deployment's first-ranked members a node takes controller calls from: the
/// controller, and the one that takes over when views differ for a moment.
const CONTROLLER_CANDIDATES: usize = 2;

/// What this member holds as a deployment's controller.
#[derive(Debug, Default)]
struct Held {
    epoch: u64,
    /// Each node's last report, for a node that misses one round.
    reports: HashMap<PeerId, ReplicaReport>,
    /// Revisions found failing their health checks (told to every node with each read).
    failed: std::collections::BTreeSet<u64>,
    /// The autoscaler's record, when the deployment has one (`None` until read from the
    /// members).
    scale: Option<claw_api::autoscale::ScaleRecord>,
    /// When the autoscaler's metric was last read, Unix ms.
    measured_ms: u64,
    /// The canary record, when the deployment's canary names a service (`None` until read
    /// from the members or decided).
    canary: Option<claw_api::canary::CanaryRecord>,
}

/// A replica's health checks so far, on its node.
#[derive(Debug, Clone, Copy)]
struct Checked {
    health: ReplicaHealth,
    successes: u32,
    failures: u32,
    next_at_ms: u64,
}

struct Inner {
    local: PeerId,
    /// Whose canary traffic tallies count: members that may reach services here.
    access: crate::access::AccessPolicy,
    probe: Arc<claw_attestation::GpuProbe>,
    objects: FleetObjects,
    workloads: Workloads,
    store: Store,
    mesh: OnceLock<MeshHandle>,
    /// Why replicas are missing, per deployment this member controls.
    pending: Notes,
    /// This node's replicas' health, by workload id.
    health: Mutex<HashMap<String, Checked>>,
    /// The canary traffic this node's forwards and ingress carried.
    canary_traffic: canary::CanaryTraffic,
}

/// Deployments' replicas on this node, and the controller of the deployments this member
/// controls. Cheap to clone.
#[derive(Clone)]
pub struct Deployments {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Deployments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deployments").finish_non_exhaustive()
    }
}

fn failure(code: ErrorCode, message: impl Into<String>) -> InvokeFailure {
    InvokeFailure::new(code, message)
}

fn key_of(name: &str) -> String {
    ObjectKind::Deployment.key(name)
}

/// What a controller says of the objects it controls (why work waits), by object, for its
/// reports to carry.
#[derive(Debug, Default)]
struct Notes(Mutex<HashMap<String, String>>);

impl Notes {
    fn set(&self, key: &str, note: Option<String>) {
        let mut notes = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match note {
            Some(note) => notes.insert(key.to_owned(), note),
            None => notes.remove(key),
        };
    }

    fn get(&self, key: &str) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .cloned()
    }
}

/// The epoch a controller taking over claims: one above the highest fence any node reports.
fn next_epoch(fences: impl Iterator<Item = u64>) -> u64 {
    fences.max().unwrap_or(0).saturating_add(1)
}

/// Why a controller does not act yet, when most of the `members` it sees did not take its
/// claim (a member with a partial view of the fleet, joining or cut off, may rank itself
/// first); `None` once most did.
fn not_accepted(answered: usize, members: usize) -> Option<String> {
    (answered * 2 <= members).then(|| {
        format!("waiting for most members to accept this controller ({answered} of {members})")
    })
}

/// Refuses a controller call from `caller` unless it is one of the first-ranked live members,
/// in this node's view of the fleet, for the object under `key`.
fn check_candidate(mesh: &MeshHandle, key: &str, caller: PeerId) -> Result<(), InvokeFailure> {
    let members = mesh.fleet_members().into_iter().map(|m| m.peer_id);
    if ranking(key, members)
        .iter()
        .take(CONTROLLER_CANDIDATES)
        .any(|p| *p == caller)
    {
        Ok(())
    } else {
        Err(failure(
            ErrorCode::Unauthorized,
            format!("{caller} does not control {key} as this node sees the fleet"),
        ))
    }
}

/// Whether a record a controller hands over (`fence`) was written under the claim the caller
/// holds (`epoch`): a node keeps only such records.
fn written_by(fence: Option<&Fence>, caller: PeerId, epoch: u64) -> bool {
    fence.is_some_and(|f| f.epoch == epoch && f.controller == caller.to_string())
}

/// Admits `caller`'s claim at `epoch` on the object whose fence is kept under `fence_key`, or
/// says who holds a higher one (a [`is_fenced`] failure).
async fn admit_claim(
    store: &Store,
    fence_key: &str,
    caller: PeerId,
    epoch: u64,
) -> Result<(), InvokeFailure> {
    let claim = Fence {
        epoch,
        controller: caller.to_string(),
    };
    let key = fence_key.to_owned();
    match store.run(move |s| s.admit_fence(&key, &claim)).await? {
        Ok(()) => Ok(()),
        Err(held) => Err(failure(
            ErrorCode::Conflict,
            format!(
                "fenced: {} controls {fence_key} at epoch {}",
                held.controller, held.epoch
            ),
        )),
    }
}

/// Whether a node refused an action because another controller holds a higher claim.
fn is_fenced(error: &InvokeFailure) -> bool {
    error.code == ErrorCode::Conflict && error.message.starts_with("fenced")
}

/// Calls command `C` on `peer` over the mesh, with `deadline`.
async fn call_peer<C: claw_api::Command>(
    mesh: &MeshHandle,
    peer: PeerId,
    params: &C::Params,
    deadline: Duration,
) -> Result<C::Answer, InvokeFailure> {
    let request = InvokeRequest::new(C::NAME, deadline).with_params(
        serde_json::to_value(params).map_err(|e| failure(ErrorCode::Internal, e.to_string()))?,
    );
    C::decode(mesh.invoke(peer, request).await?)
}

/// A replica as reported, from its workload record (`None` when the record is not a replica),
/// with its health where it is checked.
fn replica_of(record: &WorkloadRecord, health: Option<ReplicaHealth>) -> Option<Replica> {
    Some(Replica {
        workload: record.id.clone(),
        revision: record.labels.get(REVISION_LABEL)?.parse().ok()?,
        template: record.labels.get(TEMPLATE_LABEL)?.clone(),
        state: record.state,
        health,
        created_ms: record.created_ms,
    })
}

impl Deployments {
    /// The deployments service of the node `access` is the policy of, whose GPUs `probe`
    /// reads (for autoscalers on GPU utilisation).
    pub fn new(
        access: crate::access::AccessPolicy,
        probe: Arc<claw_attestation::GpuProbe>,
        objects: FleetObjects,
        workloads: Workloads,
        store: Store,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                local: access.local(),
                access,
                probe,
                objects,
                workloads,
                store,
                mesh: OnceLock::new(),
                pending: Notes::default(),
                health: Mutex::default(),
                canary_traffic: canary::CanaryTraffic::default(),
            }),
        }
    }

    /// The health of this node's replica `workload` by its deployment's check; `None` when it
    /// has no check (or is no replica).
    pub fn replica_health(&self, workload: &str) -> Option<ReplicaHealth> {
        self.inner
            .health
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(workload)
            .map(|checked| checked.health)
    }

    /// Which of this node's workloads a drain leaves running for now: the replicas of live,
    /// unpaused deployments, for the first two minutes of the drain (their controller starts
    /// them elsewhere, then stops them here).
    pub async fn moving(&self) -> impl Fn(&WorkloadRecord) -> bool + use<> {
        let since = self
            .inner
            .store
            .run(|s| s.draining_since())
            .await
            .ok()
            .flatten();
        let within_grace = since.is_none_or(|since| now_ms() < since + MOVE_GRACE_MS);
        let mut moving = std::collections::BTreeSet::new();
        if within_grace && let Ok(listing) = self.inner.objects.deployments().await {
            moving.extend(
                listing
                    .deployments
                    .into_iter()
                    .filter(|d| !d.spec.paused)
                    .map(|d| d.name),
            );
        }
        move |record: &WorkloadRecord| {
            record
                .labels
                .get(DEPLOYMENT_LABEL)
                .is_some_and(|name| moving.contains(name))
        }
    }

    /// Connects the service to the running mesh.
    pub fn attach(&self, mesh: MeshHandle) {
        let _ = self.inner.mesh.set(mesh);
    }

    fn mesh(&self) -> Result<&MeshHandle, InvokeFailure> {
        self.inner
            .mesh
            .get()
            .ok_or_else(|| failure(ErrorCode::Unavailable, "the mesh is not up"))
    }

    /// Refuses controller calls from a peer that is not one of the deployment's first-ranked
    /// live members in this node's view.
    ///
    /// The deployment must be one this node keeps, so that what controllers make a node write
    /// (fences, failed revisions) is bounded by the objects it keeps.
    async fn check_controller(&self, caller: PeerId, name: &str) -> Result<(), InvokeFailure> {
        self.inner.objects.deployment(name).await?;
        check_candidate(self.mesh()?, &key_of(name), caller)
    }

    /// Admits `caller`'s claim at `epoch`, or says who holds a higher one.
    async fn fence(&self, caller: PeerId, name: &str, epoch: u64) -> Result<(), InvokeFailure> {
        admit_claim(&self.inner.store, name, caller, epoch).await
    }

    /// This node's active replicas of deployment `name`.
    async fn local_replicas(&self, name: &str) -> Result<Vec<WorkloadRecord>, InvokeFailure> {
        let params = ListParams {
            state: None,
            labels: BTreeMap::from([(DEPLOYMENT_LABEL.to_owned(), name.to_owned())]),
            gpu: None,
            all: false,
        };
        Ok(self.inner.workloads.recorded(params).await?)
    }

    /// `deploy.replicas`: this node's replicas of a deployment and its fence. With an epoch,
    /// the caller must be a controller candidate and its claim is admitted first (a lower one
    /// is not an error: the report's fence tells the caller it was superseded).
    pub async fn report(
        &self,
        caller: PeerId,
        params: ReplicasParams,
    ) -> Result<ReplicaReport, InvokeFailure> {
        let name = params.name;
        let mut failed_now = Vec::new();
        let mut readings = Vec::new();
        if let Some(epoch) = params.epoch {
            self.check_controller(caller, &name).await?;
            if self.fence(caller, &name, epoch).await.is_ok() {
                failed_now = params.failed.into_iter().take(16).collect();
                if let Some(record) = params.scale {
                    self.keep_scale(caller, &name, epoch, record).await?;
                }
                if let Some(record) = params.canary {
                    self.keep_canary(caller, &name, epoch, record).await?;
                }
            }
        }
        let records = self.local_replicas(&name).await?;
        if params.epoch.is_some()
            && params.measure
            && let Some(autoscaler) = self.inner.objects.autoscaler_of(&name).await?
        {
            readings = self.measure(&records, &autoscaler.spec.metric).await;
        }
        let mut replicas: Vec<Replica> = {
            let health = self
                .inner
                .health
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            records
                .iter()
                .filter_map(|r| replica_of(r, health.get(&r.id).map(|c| c.health)))
                .collect()
        };
        // A replica the checks have not reached yet is starting, where it is checked at all.
        for replica in replicas.iter_mut().filter(|r| r.health.is_none()) {
            let checked = self
                .inner
                .objects
                .deployment_at(&name, replica.revision)
                .await?
                .is_some_and(|spec| spec.health.is_some());
            if checked {
                replica.health = Some(ReplicaHealth::Starting);
            }
        }
        let key = name.clone();
        let (fence, failed, draining, scale) = self
            .inner
            .store
            .run(move |s| {
                Ok((
                    s.fence(&key)?,
                    s.add_failed_revisions(&key, &failed_now)?,
                    s.draining()?,
                    s.scale(&key)?,
                ))
            })
            .await?;
        let pending = self.inner.pending.get(&name);
        let (canary, traffic) = self.canary_report(&name).await?;
        Ok(ReplicaReport {
            name,
            fence,
            replicas,
            pending,
            failed,
            draining,
            scale,
            readings,
            canary,
            traffic,
        })
    }

    /// `deploy.replica.start`: one replica of the revision the controller names, from this
    /// node's own copy of it (caught up from the controller when this node is behind).
    pub async fn start(
        &self,
        caller: PeerId,
        params: ReplicaStartParams,
    ) -> Result<Workload, InvokeFailure> {
        let name = params.name;
        self.check_controller(caller, &name).await?;
        self.fence(caller, &name, params.epoch).await?;
        let objects = &self.inner.objects;
        let mut spec = objects.deployment_at(&name, params.revision).await?;
        if spec.is_none() && caller != self.inner.local {
            objects.catch_up(caller).await?;
            spec = objects.deployment_at(&name, params.revision).await?;
        }
        let Some(spec) = spec else {
            return Err(failure(
                ErrorCode::NotFound,
                format!(
                    "deployment {name:?} at revision {} is not kept here, or was deleted",
                    params.revision
                ),
            ));
        };
        refuse_if_tainted(&self.inner.store, &spec.tolerations).await?;
        for (secret, needed) in &spec.secret_revisions {
            let mut kept = objects.secret_revision(secret).await.unwrap_or(0);
            if kept < *needed && caller != self.inner.local {
                objects.catch_up(caller).await?;
                kept = objects.secret_revision(secret).await.unwrap_or(0);
            }
            if kept < *needed {
                return Err(crate::workloads::WorkloadError::from(
                    crate::objects::ValuesError::Behind(secret.clone(), kept, *needed),
                )
                .into());
            }
        }
        let mut run = spec.template.clone();
        let mut suffix = [0u8; 3];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut suffix);
        run.name = Some(format!("{name}-{}", hex::encode(suffix)));
        run.labels.insert(DEPLOYMENT_LABEL.to_owned(), name.clone());
        run.labels
            .insert(REVISION_LABEL.to_owned(), params.revision.to_string());
        run.labels
            .insert(TEMPLATE_LABEL.to_owned(), template_digest(&spec));
        let record = self
            .inner
            .workloads
            .run(format!("deployment/{name}"), run, None)
            .await?;
        tracing::info!(deployment = %name, workload = %record.id, revision = params.revision, "replica started");
        Ok(record.view(false))
    }

    /// `deploy.replica.stop`: stops (and removes) one of this node's replicas of the deployment.
    pub async fn stop(
        &self,
        caller: PeerId,
        params: ReplicaStopParams,
    ) -> Result<Workload, InvokeFailure> {
        self.check_controller(caller, &params.name).await?;
        self.fence(caller, &params.name, params.epoch).await?;
        self.stop_replica(&params.name, &params.workload).await
    }

    async fn stop_replica(&self, name: &str, workload: &str) -> Result<Workload, InvokeFailure> {
        let ours = self
            .local_replicas(name)
            .await?
            .into_iter()
            .any(|r| r.id == workload);
        if !ours {
            return Err(failure(
                ErrorCode::NotFound,
                format!("no running replica {workload} of deployment {name:?} here"),
            ));
        }
        let params = StopParams {
            workload: workload.to_owned(),
            timeout_secs: None,
            remove: true,
        };
        let record = self.inner.workloads.stop(params).await?;
        tracing::info!(deployment = %name, workload, "replica stopped");
        Ok(record.view(false))
    }

    /// Calls command `C` on `peer`, or on this node itself directly.
    async fn ask(
        &self,
        peer: PeerId,
        params: ReplicasParams,
    ) -> Result<ReplicaReport, InvokeFailure> {
        if peer == self.inner.local {
            return self.report(peer, params).await;
        }
        call_peer::<DeployReplicas>(self.mesh()?, peer, &params, NODE_DEADLINE).await
    }

    /// Every listed member's report on a deployment, asked with `params`, 32 at a time.
    async fn gather(
        &self,
        params: &ReplicasParams,
        peers: Vec<PeerId>,
    ) -> Vec<(PeerId, Result<ReplicaReport, InvokeFailure>)> {
        let asks = peers.into_iter().map(|peer| {
            let params = params.clone();
            let this = self.clone();
            async move { (peer, this.ask(peer, params).await) }
        });
        futures::stream::iter(asks)
            .buffer_unordered(NODES_ASKED_AT_ONCE)
            .collect()
            .await
    }

    /// `deploy.status`: the deployment as this member keeps it, its controller as this member
    /// sees the fleet, and the replicas every live member reports.
    pub async fn status(&self, name: &str) -> Result<DeploymentStatus, InvokeFailure> {
        let deployment = self.inner.objects.deployment(name).await?;
        let members = self.mesh()?.fleet_members();
        let controller = ranking(&key_of(name), members.iter().map(|m| m.peer_id))
            .first()
            .map(ToString::to_string);
        let template = template_digest(&deployment.spec);
        let mut status = DeploymentStatus {
            deployment,
            controller,
            replicas: Vec::new(),
            ready: 0,
            failed_revisions: Vec::new(),
            pending: None,
            unreachable: Vec::new(),
            autoscaled: None,
            canary: None,
        };
        let mut scale: Option<claw_api::autoscale::ScaleRecord> = None;
        let mut canaries = Vec::new();
        for (peer, report) in self.gather(&read_only(name), peers(&members)).await {
            let node_name: String = members
                .iter()
                .find(|m| m.peer_id == peer)
                .map(|m| m.announcement.name.chars().take(64).collect())
                .unwrap_or_default();
            match report {
                Ok(report) => {
                    if status.controller.as_deref() == Some(peer.to_string().as_str()) {
                        status.pending = report.pending;
                    }
                    if let Some(record) = report.scale
                        && scale.as_ref().is_none_or(|s| record.is_newer_than(s))
                    {
                        scale = Some(record);
                    }
                    status.failed_revisions.extend(report.failed);
                    let traffic = self.counted_traffic(peer, report.traffic, &report.replicas);
                    canaries.push((report.canary, traffic));
                    for replica in report.replicas {
                        if replica.template == template && is_available(&replica) {
                            status.ready += 1;
                        }
                        status.replicas.push(PlacedReplica {
                            node: peer.to_string(),
                            node_name: node_name.clone(),
                            replica,
                        });
                    }
                }
                Err(_) => status.unreachable.push(peer.to_string()),
            }
        }
        status.failed_revisions.sort_unstable();
        status.failed_revisions.dedup();
        if self.inner.objects.autoscaler_of(name).await?.is_some() {
            status.autoscaled = scale.map(|s| s.replicas);
        }
        status.canary = Self::canary_status(&status.deployment, &canaries);
        Ok(status)
    }
}

/// The controller.
impl Deployments {
    /// Controls the deployments this member is first-ranked for, every `every`, and stops this
    /// node's replicas of deleted deployments.
    pub async fn run(self, every: Duration) {
        let mut held: HashMap<String, Held> = HashMap::new();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(error) = self.round(&mut held).await {
                tracing::warn!(%error, "deployment controller round failed");
            }
        }
    }

    async fn round(&self, held: &mut HashMap<String, Held>) -> Result<(), InvokeFailure> {
        let deployments = self.inner.objects.deployments().await?.deployments;
        let autoscalers = self.inner.objects.autoscalers().await?;
        let members = self.mesh()?.fleet_members();
        held.retain(|name, _| deployments.iter().any(|d| &d.name == name));
        for deployment in &deployments {
            let name = &deployment.name;
            let first = ranking(&key_of(name), members.iter().map(|m| m.peer_id))
                .first()
                .copied();
            if first != Some(self.inner.local) {
                if held.remove(name).is_some() {
                    tracing::info!(deployment = %name, "no longer its controller");
                    self.set_pending(name, None);
                }
                continue;
            }
            let state = held.entry(name.clone()).or_default();
            let autoscaler = autoscalers.iter().find(|a| &a.spec.deployment == name);
            if let Err(error) = self.control(deployment, autoscaler, &members, state).await {
                tracing::warn!(deployment = %name, %error, "controller step failed");
                if error.code == ErrorCode::Conflict {
                    held.remove(name);
                }
            }
        }
        self.retire_deleted().await;
        Ok(())
    }

    fn set_pending(&self, name: &str, pending: Option<String>) {
        self.inner.pending.set(name, pending);
    }

    /// One round for one deployment this member controls.
    async fn control(
        &self,
        deployment: &claw_api::deploy::Deployment,
        autoscaler: Option<&claw_api::autoscale::Autoscaler>,
        members: &[FleetMember],
        held: &mut Held,
    ) -> Result<(), InvokeFailure> {
        let name = &deployment.name;
        if held.epoch == 0 {
            let reports = self.gather(&read_only(name), peers(members)).await;
            held.epoch = next_epoch(
                reports
                    .into_iter()
                    .filter_map(|(_, report)| report.ok()?.fence.map(|f| f.epoch)),
            );
            tracing::info!(deployment = %name, epoch = held.epoch, "taking control");
        }
        let claim = Fence {
            epoch: held.epoch,
            controller: self.inner.local.to_string(),
        };
        let mut replicas = BTreeMap::new();
        let mut answered = Vec::new();
        let params = ReplicasParams {
            name: name.clone(),
            epoch: Some(held.epoch),
            failed: held.failed.iter().copied().collect(),
            scale: held.scale.clone().filter(|_| autoscaler.is_some()),
            measure: self.due_measure(autoscaler, held),
            canary: held.canary.clone(),
        };
        let mut readings = Vec::new();
        let mut scales = Vec::new();
        let mut canaries = Vec::new();
        for (peer, report) in self.gather(&params, peers(members)).await {
            match report {
                Ok(mut report) => {
                    readings.append(&mut report.readings);
                    scales.extend(report.scale.take());
                    held.failed.extend(&report.failed);
                    if report.fence.as_ref().is_some_and(|f| *f > claim) {
                        return Err(failure(
                            ErrorCode::Conflict,
                            format!("{peer} reports a higher claim; standing down"),
                        ));
                    }
                    answered.push(peer);
                    let traffic = std::mem::take(&mut report.traffic);
                    let traffic = self.counted_traffic(peer, traffic, &report.replicas);
                    canaries.push((report.canary.take(), traffic));
                    held.reports.insert(peer, report);
                }
                Err(error) => tracing::debug!(%peer, %error, "no replica report this round"),
            }
        }
        // A member that missed this round keeps its last report's replicas, so that a slow
        // node does not get its replicas doubled; one that left the view has none.
        held.reports
            .retain(|peer, _| members.iter().any(|m| m.peer_id == *peer));
        for (peer, report) in &held.reports {
            let mut list = report.replicas.clone();
            if report.draining {
                // A draining node's replicas are moved: to the plan they run another template,
                // retired once enough replicas serve elsewhere.
                for replica in &mut list {
                    replica.template = format!("draining:{}", replica.template);
                }
            }
            replicas.insert(*peer, list);
        }
        if deployment.spec.paused {
            self.set_pending(name, None);
            return Ok(());
        }
        if let Some(note) = not_accepted(answered.len(), members.len()) {
            self.set_pending(name, Some(note));
            return Ok(());
        }
        let mut candidates = candidates(
            deployment.spec.gpu_model.as_deref(),
            &deployment.spec.tolerations,
            members,
            &answered,
        );
        only_sealed_to(
            &self.inner.objects,
            &deployment.spec.template,
            &mut candidates,
        )
        .await;
        let scaled = autoscale::scale(autoscaler, deployment, held, &claim, scales, &readings);
        let deployment = &scaled;
        // This member keeps the record it decided on at once, so that its reports (and
        // `deploy.status`) show the count it plans with; the others get it with the next read.
        if let Some(record) = held.scale.clone() {
            let key = name.clone();
            self.inner
                .store
                .run(move |s| s.put_scale(&key, &record))
                .await?;
        }
        let analysed = self
            .analyse(deployment, held, &claim, canaries, &replicas)
            .await?;
        let deployment = &analysed;
        let failed_analysis = held
            .canary
            .as_ref()
            .filter(|r| r.failed)
            .and_then(|r| r.note.clone());
        let (goal, note) = self
            .goal(deployment, &replicas, &mut held.failed, failed_analysis)
            .await?;
        let plan = plan::plan(&goal, &replicas, &candidates);
        let actions = plan
            .actions
            .into_iter()
            .map(|action| self.act(name, held.epoch, action));
        for outcome in futures::future::join_all(actions).await {
            outcome?;
        }
        let note = match (note, plan.pending) {
            (Some(note), Some(pending)) => Some(format!("{note}; {pending}")),
            (note, pending) => note.or(pending),
        };
        self.set_pending(name, note);
        Ok(())
    }

    /// What deployment `deployment` should run now, and a note when it is not its current
    /// revision: a revision whose replicas turn unhealthy is added to `failed` and rolled back
    /// from, to the newest earlier revision with another template that did not fail; a canary
    /// keeps that revision as its stable one beside the new.
    async fn goal(
        &self,
        deployment: &claw_api::deploy::Deployment,
        replicas: &BTreeMap<PeerId, Vec<Replica>>,
        failed: &mut std::collections::BTreeSet<u64>,
        failed_analysis: Option<String>,
    ) -> Result<(Goal, Option<String>), InvokeFailure> {
        let spec = &deployment.spec;
        let revision = deployment.revision;
        let template = template_digest(spec);
        let unhealthy = replicas
            .values()
            .flatten()
            .filter(|r| r.template == template && r.health == Some(ReplicaHealth::Unhealthy))
            .count();
        // Only a rollout rolls back: with no other template left, a replica that turns
        // unhealthy is replaced instead.
        let rolling_out = replicas
            .values()
            .flatten()
            .any(|r| r.state.is_active() && r.template != template);
        if unhealthy > 0 && rolling_out && spec.health.is_some() && failed.insert(revision) {
            tracing::warn!(deployment = %deployment.name, revision, unhealthy, "revision fails its health check: rolling back");
        }
        let history = self
            .inner
            .objects
            .deployment_history(&deployment.name)
            .await?;
        let earlier = history.revisions.iter().find_map(|kept| {
            let kept_spec = kept.spec.as_ref()?;
            let kept_template = template_digest(kept_spec);
            (kept.revision < revision
                && !failed.contains(&kept.revision)
                && kept_template != template)
                .then(|| (kept.revision, kept_spec.clone(), kept_template))
        });
        if !failed.contains(&revision) {
            let stable = earlier.map(|(kept, _, template)| (kept, template));
            return Ok((Goal::of(spec, revision, stable), None));
        }
        match earlier {
            Some((kept, kept_spec, _)) => {
                let rolled = DeploymentSpec {
                    template: kept_spec.template,
                    gpu_model: kept_spec.gpu_model,
                    strategy: match &spec.strategy {
                        RolloutStrategy::Canary { .. } => RolloutStrategy::default(),
                        other => other.clone(),
                    },
                    ..spec.clone()
                };
                let note = match failed_analysis {
                    Some(why) => format!("{why}; rolled back to revision {kept}'s template"),
                    None => format!(
                        "revision {revision} failed its health check: rolled back to revision {kept}'s template"
                    ),
                };
                Ok((Goal::of(&rolled, kept, None), Some(note)))
            }
            None => Ok((
                Goal::of(spec, revision, None),
                Some(format!(
                    "revision {revision} fails its health check, and no earlier revision is kept to go back to"
                )),
            )),
        }
    }

    /// Carries out one action; a fenced node ends the round (another controller took over).
    async fn act(&self, name: &str, epoch: u64, action: Action) -> Result<(), InvokeFailure> {
        let (peer, outcome) = match action {
            Action::Start { node, revision } => {
                let params = ReplicaStartParams {
                    name: name.to_owned(),
                    revision,
                    epoch,
                };
                let outcome = if node == self.inner.local {
                    self.start(node, params).await.map(drop)
                } else {
                    self.call::<claw_api::deploy::DeployReplicaStart>(node, &params)
                        .await
                };
                (node, outcome)
            }
            Action::Stop { node, workload } => {
                let params = ReplicaStopParams {
                    name: name.to_owned(),
                    workload,
                    epoch,
                };
                let outcome = if node == self.inner.local {
                    self.stop(node, params).await.map(drop)
                } else {
                    self.call::<claw_api::deploy::DeployReplicaStop>(node, &params)
                        .await
                };
                (node, outcome)
            }
        };
        match outcome {
            Err(error) if is_fenced(&error) => Err(error),
            Err(error) => {
                tracing::warn!(deployment = %name, %peer, %error, "replica action failed");
                Ok(())
            }
            Ok(()) => Ok(()),
        }
    }

    async fn call<C: claw_api::Command>(
        &self,
        peer: PeerId,
        params: &C::Params,
    ) -> Result<(), InvokeFailure> {
        call_peer::<C>(self.mesh()?, peer, params, ACTION_DEADLINE)
            .await
            .map(drop)
    }

    /// Stops this node's replicas of deployments that were deleted.
    async fn retire_deleted(&self) {
        let params = ListParams {
            state: None,
            labels: BTreeMap::new(),
            gpu: None,
            all: false,
        };
        let Ok(records) = self.inner.workloads.recorded(params).await else {
            return;
        };
        let mut names: Vec<&String> = records
            .iter()
            .filter_map(|r| r.labels.get(DEPLOYMENT_LABEL))
            .collect();
        names.sort();
        names.dedup();
        for name in names {
            if !matches!(self.inner.objects.deployment_deleted(name).await, Ok(true)) {
                continue;
            }
            for record in records
                .iter()
                .filter(|r| r.labels.get(DEPLOYMENT_LABEL) == Some(name))
            {
                if let Err(error) = self.stop_replica(name, &record.id).await {
                    tracing::warn!(deployment = %name, %error, "replica of a deleted deployment not stopped");
                }
            }
        }
    }
}

/// Health checks of this node's replicas.
impl Deployments {
    /// Checks this node's replicas whose deployment has a health check, each at its interval,
    /// until the node stops; `deploy.replicas` reports what they found.
    pub async fn check_health(self) {
        let mut checks: HashMap<(String, u64), Option<HealthCheck>> = HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.check_round(&mut checks).await;
        }
    }

    async fn check_round(&self, checks: &mut HashMap<(String, u64), Option<HealthCheck>>) {
        let params = ListParams {
            state: Some(WorkloadState::Running),
            labels: BTreeMap::new(),
            gpu: None,
            all: false,
        };
        let Ok(records) = self.inner.workloads.recorded(params).await else {
            return;
        };
        let now = now_ms();
        let mut due = Vec::new();
        for record in &records {
            let (Some(name), Some(replica)) = (
                record.labels.get(DEPLOYMENT_LABEL),
                replica_of(record, None),
            ) else {
                continue;
            };
            let key = (name.clone(), replica.revision);
            if !checks.contains_key(&key) {
                let check = self
                    .inner
                    .objects
                    .deployment_at(name, replica.revision)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|spec| spec.health);
                checks.insert(key.clone(), check);
            }
            let Some(check) = checks.get(&key).cloned().flatten() else {
                continue;
            };
            let next_at_ms = self
                .inner
                .health
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(record.id.clone())
                .or_insert(Checked {
                    health: ReplicaHealth::Starting,
                    successes: 0,
                    failures: 0,
                    next_at_ms: record.created_ms + u64::from(check.initial_delay_secs) * 1000,
                })
                .next_at_ms;
            if now >= next_at_ms {
                due.push((record.id.clone(), check));
            }
        }
        let outcomes = futures::future::join_all(due.iter().map(|(id, check)| async move {
            (
                id,
                check,
                self.probe(id, &check.probe, check.timeout_secs).await,
            )
        }))
        .await;
        let mut health = self
            .inner
            .health
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (id, check, passed) in outcomes {
            if let Some(state) = health.get_mut(id.as_str()) {
                if passed {
                    state.successes += 1;
                    state.failures = 0;
                    if state.successes >= check.success_threshold {
                        state.health = ReplicaHealth::Healthy;
                    }
                } else {
                    state.failures += 1;
                    state.successes = 0;
                    if state.failures >= check.failure_threshold {
                        state.health = ReplicaHealth::Unhealthy;
                    }
                }
                state.next_at_ms = now + u64::from(check.interval_secs) * 1000;
            }
        }
        health.retain(|id, _| records.iter().any(|r| &r.id == id));
        checks.retain(|(name, revision), _| {
            records.iter().any(|r| {
                r.labels.get(DEPLOYMENT_LABEL) == Some(name)
                    && r.labels.get(REVISION_LABEL) == Some(&revision.to_string())
            })
        });
    }

    /// One check of workload `id`: whether it passed within `timeout_secs`.
    async fn probe(&self, id: &str, probe: &Probe, timeout_secs: u32) -> bool {
        let deadline = Duration::from_secs(u64::from(timeout_secs));
        match probe {
            Probe::Exec { argv } => {
                let params = ExecParams {
                    workload: id.to_owned(),
                    argv: argv.clone(),
                    timeout_secs: Some(timeout_secs),
                };
                matches!(self.inner.workloads.exec(params).await,
                    Ok(output) if output.exit_code == Some(0) && !output.timed_out)
            }
            Probe::Tcp { port } => {
                let Some(ip) = self.inner.workloads.container_ip(id).await else {
                    return false;
                };
                matches!(
                    tokio::time::timeout(deadline, tokio::net::TcpStream::connect((ip, *port)))
                        .await,
                    Ok(Ok(_))
                )
            }
            Probe::Http { port, path } => {
                let Some(ip) = self.inner.workloads.container_ip(id).await else {
                    return false;
                };
                matches!(
                    tokio::time::timeout(deadline, http_status(ip, *port, path)).await,
                    Ok(Some(200..=399))
                )
            }
        }
    }
}

/// The status code of `GET path` on `ip:port` (HTTP/1.0, the status line only).
async fn http_status(ip: std::net::IpAddr, port: u16, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect((ip, port)).await.ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {ip}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut head = [0u8; 64];
    let read = stream.read(&mut head).await.ok()?;
    let line = std::str::from_utf8(&head[..read]).ok()?;
    let mut parts = line.split(' ');
    parts
        .next()
        .filter(|version| version.starts_with("HTTP/"))?;
    parts.next()?.parse().ok()
}

/// The members a deployment's replicas or a job's pods may go to: those that answered this round and are not
/// cordoned, with their free GPUs of the deployment's model, in the fleet view's order.
fn candidates(
    gpu_model: Option<&str>,
    tolerations: &[Toleration],
    members: &[FleetMember],
    answered: &[PeerId],
) -> Vec<Candidate> {
    // The taints the work does not tolerate: whether one keeps it off, whether one avoids it.
    let untolerated = |announcement: &claw_mesh::NodeAnnouncement| {
        let taints: Vec<Taint> = announcement
            .taints
            .iter()
            .filter_map(|t| Taint::parse(t))
            .filter(|t| !tolerated(t, tolerations))
            .collect();
        (
            taints
                .iter()
                .any(|t| t.effect != TaintEffect::PreferNoSchedule),
            taints
                .iter()
                .any(|t| t.effect == TaintEffect::PreferNoSchedule),
        )
    };
    let mut avoided = Vec::new();
    let mut list: Vec<Candidate> = members
        .iter()
        .map(|member| {
            let announcement = &member.announcement;
            let free_gpus = announcement
                .inventory
                .gpus
                .iter()
                .filter(|g| gpu_model.is_none_or(|m| g.model.contains(m)))
                .filter(|g| !announcement.allocated_gpus.contains(&g.uuid))
                .count();
            let (kept_off, avoid) = untolerated(announcement);
            if avoid {
                avoided.push(member.peer_id);
            }
            Candidate {
                node: member.peer_id,
                free_gpus,
                schedulable: !announcement.cordoned
                    && !kept_off
                    && answered.contains(&member.peer_id),
            }
        })
        .collect();
    // PreferNoSchedule: such a node is used only while no other can be.
    let others = list
        .iter()
        .any(|c| c.schedulable && !avoided.contains(&c.node));
    if others {
        for candidate in &mut list {
            if avoided.contains(&candidate.node) {
                candidate.schedulable = false;
            }
        }
    }
    list
}

/// Refuses to start work here that does not tolerate one of this node's `NoSchedule` or
/// `NoExecute` taints: a controller that has not yet seen a new taint places elsewhere next.
async fn refuse_if_tainted(store: &Store, tolerations: &[Toleration]) -> Result<(), InvokeFailure> {
    let taints = store.run(|s| s.taints()).await?;
    match taints
        .iter()
        .find(|t| t.effect != TaintEffect::PreferNoSchedule && !tolerated(t, tolerations))
    {
        None => Ok(()),
        Some(taint) => Err(failure(
            ErrorCode::Unavailable,
            format!(
                "this node is tainted {} and takes no such work",
                taint.to_text()
            ),
        )),
    }
}

/// Leaves schedulable only the candidates every secret `template` uses is sealed to: no other
/// node could start it.
async fn only_sealed_to(
    objects: &FleetObjects,
    template: &claw_api::workload::RunParams,
    candidates: &mut [Candidate],
) {
    for (kind, name) in template.sources() {
        if kind != claw_api::workload::SourceKind::Secret {
            continue;
        }
        let nodes = objects.secret_nodes(&name).await.unwrap_or_default();
        for candidate in candidates.iter_mut() {
            candidate.schedulable &= nodes.contains(&candidate.node);
        }
    }
}

/// The params of a plain read of deployment `name` (no claim).
fn read_only(name: &str) -> ReplicasParams {
    ReplicasParams {
        name: name.to_owned(),
        epoch: None,
        failed: Vec::new(),
        scale: None,
        canary: None,
        measure: false,
    }
}

fn peers(members: &[FleetMember]) -> Vec<PeerId> {
    members.iter().map(|m| m.peer_id).collect()
}
