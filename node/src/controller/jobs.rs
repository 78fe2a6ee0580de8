//! Job and cron job controllers. As for deployments, the member first in [`ranking`] over the
//! live fleet view controls each job and cron job, claims it with an epoch above every node's
//! fence, and carries the claim in every call; nodes take `job.pods`, `job.pod.start` and
//! `job.pod.stop` only from one of its two first-ranked members, and start only what an operator
//! signed (a revision of the job, or of the cron job, that they keep themselves).
//!
//! What the runs did is a [`RunLedger`] the controller hands every member with its reads; a
//! member keeps the newest it is given. The controller starts the pods of a run only once most
//! members keep a ledger with that run in it, and a new controller goes on from the newest
//! ledger most members report. So a cron job's scheduled time runs once across failover, and a
//! completion counted once stays counted when the node that ran the pod is gone.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use claw_api::cron::{
    ConcurrencyPolicy, CronListing, CronLogsParams, CronSpec, CronStatus, CronSummary,
};
use claw_api::deploy::Fence;
use claw_api::jobs::{
    Attempt, AttemptLogs, AttemptState, JobListing, JobLogs, JobLogsParams, JobPodStart,
    JobPodStop, JobPods, JobSpec, JobStatus, JobSummary, Pod, PodReport, PodStartParams,
    PodStopParams, PodsParams, RUNS_KEPT, Run, RunCause, RunLedger, RunPhase,
};
use claw_api::workload::{
    ListParams, LogsParams, StopParams, Workload, WorkloadLogs, WorkloadState,
};
use claw_mesh::{ErrorCode, FleetMember, InvokeFailure, MeshHandle, PeerId};
use futures::StreamExt as _;

use super::plan::ranking;

mod cron_bids;
use super::{
    ACTION_DEADLINE, CONTROLLER_CANDIDATES, NODE_DEADLINE, NODES_ASKED_AT_ONCE, Notes, admit_claim,
    call_peer, candidates, check_candidate, failure, is_fenced, next_epoch, not_accepted,
    only_sealed_to, refuse_if_tainted, written_by,
};
use crate::market::Market;
use crate::now_ms;
use crate::objects::FleetObjects;
use crate::store::{ObjectKind, Store};
use crate::workloads::{WorkloadRecord, Workloads};
pub use cron_bids::KeptBid;

/// Label naming the job or cron job (`<kind>/<name>`) a pod belongs to.
const OWNER_LABEL: &str = "clawbernetes-owner";
/// Label with the run a pod belongs to.
const RUN_LABEL: &str = "clawbernetes-run";
/// Label with the revision whose spec a pod runs.
const REVISION_LABEL: &str = "clawbernetes-revision";
/// Most attempts `job.logs` reads at once.
const LOGGED_ATTEMPTS: usize = 20;

/// A job or a cron job: whose pods these are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner<'a> {
    Job(&'a str),
    Cron(&'a str),
}

impl<'a> Owner<'a> {
    fn parse(key: &'a str) -> Result<Self, InvokeFailure> {
        match ObjectKind::parse_key(key) {
            Some((ObjectKind::Job, name)) => Ok(Self::Job(name)),
            Some((ObjectKind::CronJob, name)) => Ok(Self::Cron(name)),
            _ => Err(failure(
                ErrorCode::InvalidParams,
                format!("{key:?} names no job or cron job (job/<name> or cron/<name>)"),
            )),
        }
    }

    fn kind(self) -> ObjectKind {
        match self {
            Self::Job(_) => ObjectKind::Job,
            Self::Cron(_) => ObjectKind::CronJob,
        }
    }

    fn name(self) -> &'a str {
        match self {
            Self::Job(name) | Self::Cron(name) => name,
        }
    }

    fn key(self) -> String {
        self.kind().key(self.name())
    }
}

/// What this member holds as a job's or cron job's controller.
#[derive(Debug, Default)]
struct Held {
    epoch: u64,
    /// The ledger as this controller keeps it (`None` until read from the members).
    ledger: Option<RunLedger>,
    /// The ledger version each member last reported keeping.
    acked: HashMap<PeerId, u64>,
    /// Runs most members keep (their pods may start).
    confirmed: BTreeSet<String>,
}

struct Inner {
    local: PeerId,
    objects: FleetObjects,
    workloads: Workloads,
    store: Store,
    market: Market,
    mesh: OnceLock<MeshHandle>,
    /// Why pods are not running, per owner this member controls.
    pending: Notes,
    /// Cron bids are placed one at a time, so that a run's bid is placed once.
    bids: tokio::sync::Mutex<()>,
}

/// Jobs' and cron jobs' pods on this node, and the controller of those this member controls.
/// Cheap to clone.
#[derive(Clone)]
pub struct Jobs {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs").finish_non_exhaustive()
    }
}

/// A pod as reported, from its workload record (`None` when the record is not a pod).
fn pod_of(record: &WorkloadRecord) -> Option<Pod> {
    let state = match record.state {
        WorkloadState::Creating | WorkloadState::Running => AttemptState::Running,
        WorkloadState::Exited if record.exit_code == Some(0) => AttemptState::Succeeded,
        WorkloadState::Exited | WorkloadState::Stopped | WorkloadState::Failed => {
            AttemptState::Failed
        }
        WorkloadState::Lost => AttemptState::Lost,
    };
    Some(Pod {
        run: record.labels.get(RUN_LABEL)?.clone(),
        workload: record.id.clone(),
        state,
        exit_code: record.exit_code,
        created_ms: record.created_ms,
    })
}

/// The job a run of `owner` runs, at `revision`.
async fn job_spec_at(
    objects: &FleetObjects,
    owner: Owner<'_>,
    revision: u64,
) -> Result<Option<JobSpec>, InvokeFailure> {
    Ok(match owner {
        Owner::Job(name) => objects.job_at(name, revision).await?,
        Owner::Cron(name) => objects.cron_at(name, revision).await?.and_then(|c| c.job),
    })
}

impl Jobs {
    /// The jobs service of node `local`; cron jobs that bid do it through `market`.
    pub fn new(
        local: PeerId,
        objects: FleetObjects,
        workloads: Workloads,
        store: Store,
        market: Market,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                local,
                objects,
                workloads,
                store,
                market,
                mesh: OnceLock::new(),
                pending: Notes::default(),
                bids: tokio::sync::Mutex::new(()),
            }),
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

    /// The live spec of `owner`'s current revision, or NOT_FOUND: what a run started now runs
    /// and how many attempts its runs may keep (`None`: a cron job that bids).
    async fn current(&self, owner: Owner<'_>) -> Result<(u64, Option<JobSpec>), InvokeFailure> {
        let objects = &self.inner.objects;
        Ok(match owner {
            Owner::Job(name) => {
                let job = objects.job(name).await?;
                (job.revision, Some(job.spec))
            }
            Owner::Cron(name) => {
                let cron = objects.cron(name).await?;
                (cron.revision, cron.spec.job)
            }
        })
    }

    /// Checks a controller call on `owner` from `caller`, and admits its claim at `epoch`.
    async fn admit(
        &self,
        owner: Owner<'_>,
        caller: PeerId,
        epoch: u64,
    ) -> Result<Option<JobSpec>, InvokeFailure> {
        let (_, spec) = self.current(owner).await?;
        check_candidate(self.mesh()?, &owner.key(), caller)?;
        admit_claim(&self.inner.store, &owner.key(), caller, epoch).await?;
        Ok(spec)
    }

    /// This node's pods of `owner`, finished ones too.
    async fn local_pods(&self, owner: Owner<'_>) -> Result<Vec<WorkloadRecord>, InvokeFailure> {
        let params = ListParams {
            state: None,
            labels: BTreeMap::from([(OWNER_LABEL.to_owned(), owner.key())]),
            gpu: None,
            all: true,
        };
        Ok(self.inner.workloads.recorded(params).await?)
    }

    /// `job.pods`: this node's pods of a job or cron job and the ledger it keeps. With an
    /// epoch, the caller must be a controller candidate; its claim is admitted first and its
    /// ledger kept when newer and within bounds (a lower claim is not an error: the report's
    /// fence tells the caller it was superseded).
    pub async fn report(
        &self,
        caller: PeerId,
        params: PodsParams,
    ) -> Result<PodReport, InvokeFailure> {
        let owner = Owner::parse(&params.owner)?;
        let key = owner.key();
        if let Some(epoch) = params.epoch {
            let spec = self.current(owner).await?.1;
            check_candidate(self.mesh()?, &key, caller)?;
            let admitted = admit_claim(&self.inner.store, &key, caller, epoch)
                .await
                .is_ok();
            if admitted && let Some(ledger) = params.ledger {
                let claimed = written_by(ledger.fence.as_ref(), caller, epoch);
                ledger
                    .check(spec.as_ref().map_or(0, JobSpec::max_attempts))
                    .map_err(|e| failure(ErrorCode::InvalidParams, e))?;
                if claimed {
                    let owner_key = key.clone();
                    self.inner
                        .store
                        .run(move |s| s.put_ledger(&owner_key, &ledger))
                        .await?;
                }
            }
        }
        let pods = self
            .local_pods(owner)
            .await?
            .iter()
            .filter_map(pod_of)
            .collect();
        let owner_key = key.clone();
        let (fence, ledger) = self
            .inner
            .store
            .run(move |s| Ok((s.fence(&owner_key)?, s.ledger(&owner_key)?)))
            .await?;
        let pending = self.inner.pending.get(&key);
        Ok(PodReport {
            owner: key,
            fence,
            ledger,
            pods,
            pending,
        })
    }

    /// `job.pod.start`: one pod of a run, from this node's own copy of the revision (caught
    /// up from the controller when this node is behind). A node runs at most `parallelism`
    /// pods of one run, and of one owner at most that for every run a ledger keeps.
    pub async fn start(
        &self,
        caller: PeerId,
        params: PodStartParams,
    ) -> Result<Workload, InvokeFailure> {
        let owner = Owner::parse(&params.owner)?;
        self.admit(owner, caller, params.epoch).await?;
        let objects = &self.inner.objects;
        let mut spec = job_spec_at(objects, owner, params.revision).await?;
        if spec.is_none() && caller != self.inner.local {
            objects.catch_up(caller).await?;
            spec = job_spec_at(objects, owner, params.revision).await?;
        }
        let Some(spec) = spec else {
            return Err(failure(
                ErrorCode::NotFound,
                format!(
                    "{} at revision {} is not kept here, or was deleted",
                    owner.key(),
                    params.revision
                ),
            ));
        };
        refuse_if_tainted(&self.inner.store, &spec.tolerations).await?;
        if params.run.is_empty()
            || params.run.len() > 32
            || !params.run.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(failure(
                ErrorCode::InvalidParams,
                "a run id is 1 to 32 of a-z 0-9",
            ));
        }
        let active: Vec<Pod> = self
            .local_pods(owner)
            .await?
            .iter()
            .filter_map(pod_of)
            .filter(|p| p.state == AttemptState::Running)
            .collect();
        let of_run = active.iter().filter(|p| p.run == params.run).count();
        let parallelism = spec.parallelism as usize;
        if of_run >= parallelism || active.len() >= parallelism * RUNS_KEPT {
            return Err(failure(
                ErrorCode::Conflict,
                format!(
                    "{} runs {of_run} pods of run {} here already (parallelism {parallelism})",
                    owner.key(),
                    params.run
                ),
            ));
        }
        let mut run = spec.template.clone();
        let mut suffix = [0u8; 3];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut suffix);
        run.name = Some(format!("{}-{}", owner.name(), hex::encode(suffix)));
        run.labels.insert(OWNER_LABEL.to_owned(), owner.key());
        run.labels.insert(RUN_LABEL.to_owned(), params.run.clone());
        run.labels
            .insert(REVISION_LABEL.to_owned(), params.revision.to_string());
        let record = self.inner.workloads.run(owner.key(), run, None).await?;
        tracing::info!(owner = %owner.key(), run = %params.run, workload = %record.id, "pod started");
        Ok(record.view(false))
    }

    /// `job.pod.stop`: stops one of this node's running pods of the owner (kept, with its logs).
    pub async fn stop(
        &self,
        caller: PeerId,
        params: PodStopParams,
    ) -> Result<Workload, InvokeFailure> {
        let owner = Owner::parse(&params.owner)?;
        self.admit(owner, caller, params.epoch).await?;
        self.stop_pod(owner, &params.workload).await
    }

    async fn stop_pod(&self, owner: Owner<'_>, workload: &str) -> Result<Workload, InvokeFailure> {
        let ours = self
            .local_pods(owner)
            .await?
            .into_iter()
            .any(|r| r.id == workload && r.state.is_active());
        if !ours {
            return Err(failure(
                ErrorCode::NotFound,
                format!("no running pod {workload} of {} here", owner.key()),
            ));
        }
        let params = StopParams {
            workload: workload.to_owned(),
            timeout_secs: Some(5),
            remove: false,
        };
        let record = self.inner.workloads.stop(params).await?;
        tracing::info!(owner = %owner.key(), workload, "pod stopped");
        Ok(record.view(false))
    }

    /// `owner`'s report from `peer`, or from this node itself directly.
    async fn ask(&self, peer: PeerId, params: PodsParams) -> Result<PodReport, InvokeFailure> {
        if peer == self.inner.local {
            return self.report(peer, params).await;
        }
        call_peer::<JobPods>(self.mesh()?, peer, &params, NODE_DEADLINE).await
    }

    /// Every listed member's report on `owner`, 32 asked at a time; `params_for` gives each
    /// one's params.
    async fn gather(
        &self,
        peers: Vec<PeerId>,
        params_for: impl Fn(PeerId) -> PodsParams,
    ) -> Vec<(PeerId, Result<PodReport, InvokeFailure>)> {
        let asks = peers.into_iter().map(|peer| {
            let params = params_for(peer);
            let this = self.clone();
            async move { (peer, this.ask(peer, params).await) }
        });
        futures::stream::iter(asks)
            .buffer_unordered(NODES_ASKED_AT_ONCE)
            .collect()
            .await
    }

    /// The controller's view of `owner`: who it is, and a report with its pending note and
    /// the newest ledger among its own, the next in line's and this member's (a member that
    /// just came back keeps an old one until the controller hands it the current one).
    async fn controller_report(
        &self,
        owner: Owner<'_>,
    ) -> Result<(Option<PeerId>, PodReport), InvokeFailure> {
        let members = self.mesh()?.fleet_members();
        let ranked = ranking(&owner.key(), members.iter().map(|m| m.peer_id));
        let controller = ranked.first().copied();
        let mut asked: Vec<PeerId> = ranked.into_iter().take(CONTROLLER_CANDIDATES).collect();
        if !asked.contains(&self.inner.local) {
            asked.push(self.inner.local);
        }
        let reports = self
            .gather(asked, |_| PodsParams {
                owner: owner.key(),
                epoch: None,
                ledger: None,
            })
            .await;
        let mut newest: Option<RunLedger> = None;
        let mut chosen = None;
        for (peer, report) in reports {
            let Ok(report) = report else { continue };
            if let Some(ledger) = &report.ledger
                && newest.as_ref().is_none_or(|n| ledger.is_newer_than(n))
            {
                newest = Some(ledger.clone());
            }
            if Some(peer) == controller || chosen.is_none() {
                chosen = Some(report);
            }
        }
        let Some(mut report) = chosen else {
            return Err(failure(
                ErrorCode::Unavailable,
                format!("no member answered for {}", owner.key()),
            ));
        };
        report.ledger = newest;
        Ok((controller, report))
    }

    /// `job.status`: the job, its controller, and its run as the controller's ledger has it.
    pub async fn job_status(&self, name: &str) -> Result<JobStatus, InvokeFailure> {
        let job = self.inner.objects.job(name).await?;
        let (controller, report) = self.controller_report(Owner::Job(name)).await?;
        let id = format!("r{}", job.revision);
        let run = report
            .ledger
            .and_then(|l| l.runs.into_iter().find(|r| r.id == id));
        Ok(JobStatus {
            controller: controller.map(|c| c.to_string()),
            succeeded: run.as_ref().map_or(0, Run::succeeded),
            failed: run.as_ref().map_or(0, Run::failed),
            active: run.as_ref().map_or(0, Run::active),
            run,
            pending: report.pending,
            job,
        })
    }

    /// `job.list`: the fleet's jobs, each as far as this member's ledger has it.
    pub async fn job_list(&self) -> Result<JobListing, InvokeFailure> {
        let mut jobs = Vec::new();
        for job in self.inner.objects.jobs().await? {
            let key = ObjectKind::Job.key(&job.name);
            let ledger = self.inner.store.run(move |s| s.ledger(&key)).await?;
            let id = format!("r{}", job.revision);
            let run = ledger.and_then(|l| l.runs.into_iter().find(|r| r.id == id));
            jobs.push(JobSummary {
                name: job.name,
                revision: job.revision,
                phase: run.as_ref().map(|r| r.phase),
                succeeded: run.as_ref().map_or(0, Run::succeeded),
                completions: job.spec.completions,
            });
        }
        Ok(JobListing { jobs })
    }

    /// `job.logs`: each attempt's output, read from its node with `workload.logs` (which that
    /// node answers only to its operators).
    pub async fn job_logs(&self, params: JobLogsParams) -> Result<JobLogs, InvokeFailure> {
        let status = self.job_status(&params.name).await?;
        let run = status.run.map(|r| (r.id, r.attempts));
        self.run_logs(params.name, run, params.attempt, params.tail)
            .await
    }

    /// `cron.logs`: each attempt's output of one of a cron job's runs (the newest by default).
    pub async fn cron_logs(&self, params: CronLogsParams) -> Result<JobLogs, InvokeFailure> {
        let status = self.cron_status(&params.name).await?;
        let run = match &params.run {
            Some(id) => status
                .runs
                .into_iter()
                .find(|r| &r.id == id)
                .ok_or_else(|| {
                    failure(
                        ErrorCode::NotFound,
                        format!(
                            "cron job {:?} keeps no run {id:?}; cron.status lists its runs",
                            params.name
                        ),
                    )
                })?,
            None => status.runs.into_iter().next_back().ok_or_else(|| {
                failure(
                    ErrorCode::NotFound,
                    format!("cron job {:?} has not run yet", params.name),
                )
            })?,
        };
        self.run_logs(
            params.name,
            Some((run.id, run.attempts)),
            params.attempt,
            params.tail,
        )
        .await
    }

    /// Each attempt's output (the newest 20 attempts, or the one `attempt` names), read from
    /// its node with `workload.logs`, which that node answers only to its operators.
    async fn run_logs(
        &self,
        name: String,
        run: Option<(String, Vec<Attempt>)>,
        attempt: Option<String>,
        tail: Option<u32>,
    ) -> Result<JobLogs, InvokeFailure> {
        let tail = tail.unwrap_or(50);
        if !(1..=1000).contains(&tail) {
            return Err(failure(ErrorCode::InvalidParams, "tail must be 1 to 1000"));
        }
        let (run, mut attempts) = run.map_or((None, Vec::new()), |(id, a)| (Some(id), a));
        if let Some(wanted) = &attempt {
            attempts.retain(|a| &a.workload == wanted);
            if attempts.is_empty() {
                return Err(failure(
                    ErrorCode::NotFound,
                    format!("{name:?} has no attempt {wanted:?}"),
                ));
            }
        }
        let skip = attempts.len().saturating_sub(LOGGED_ATTEMPTS);
        let reads = attempts.into_iter().skip(skip).map(|attempt| async move {
            let logs = LogsParams {
                workload: attempt.workload.clone(),
                tail: Some(tail),
                since: None,
            };
            let read = match attempt.node.parse::<PeerId>() {
                Ok(node) if node == self.inner.local => {
                    self.inner.workloads.logs(logs).await.map_err(Into::into)
                }
                Ok(node) => match self.mesh() {
                    Ok(mesh) => call_peer::<WorkloadLogs>(mesh, node, &logs, NODE_DEADLINE).await,
                    Err(error) => Err(error),
                },
                Err(_) => Err(failure(ErrorCode::Internal, "the attempt names no peer")),
            };
            match read {
                Ok(tail) => AttemptLogs {
                    attempt,
                    lines: tail.lines,
                    unavailable: None,
                },
                Err(error) => AttemptLogs {
                    attempt,
                    lines: Vec::new(),
                    unavailable: Some(error.to_string()),
                },
            }
        });
        Ok(JobLogs {
            name,
            run,
            attempts: futures::future::join_all(reads).await,
        })
    }

    /// `cron.status`: the cron job, its controller, and its runs as the controller's ledger
    /// has them.
    pub async fn cron_status(&self, name: &str) -> Result<CronStatus, InvokeFailure> {
        let cron = self.inner.objects.cron(name).await?;
        let (controller, report) = self.controller_report(Owner::Cron(name)).await?;
        let ledger = report.ledger.unwrap_or_default();
        let from = ledger.last_slot_ms.unwrap_or(0).max(now_ms());
        Ok(CronStatus {
            controller: controller.map(|c| c.to_string()),
            last_slot_ms: ledger.last_slot_ms,
            next_ms: (!cron.spec.suspend)
                .then(|| cron.spec.next_after(from))
                .flatten(),
            runs: ledger.runs,
            skipped: ledger.skipped,
            pending: report.pending,
            cron,
        })
    }

    /// `cron.list`: the fleet's cron jobs, as this member's ledgers have them.
    pub async fn cron_list(&self) -> Result<CronListing, InvokeFailure> {
        let mut cron_jobs = Vec::new();
        for cron in self.inner.objects.crons().await? {
            let key = ObjectKind::CronJob.key(&cron.name);
            let ledger = self
                .inner
                .store
                .run(move |s| s.ledger(&key))
                .await?
                .unwrap_or_default();
            let from = ledger.last_slot_ms.unwrap_or(0).max(now_ms());
            let active = ledger
                .runs
                .iter()
                .filter(|r| r.phase == RunPhase::Running)
                .count();
            cron_jobs.push(CronSummary {
                name: cron.name,
                revision: cron.revision,
                next_ms: (!cron.spec.suspend)
                    .then(|| cron.spec.next_after(from))
                    .flatten(),
                schedule: cron.spec.schedule,
                time_zone: cron.spec.time_zone,
                suspended: cron.spec.suspend,
                last_slot_ms: ledger.last_slot_ms,
                active_runs: u32::try_from(active).unwrap_or(u32::MAX),
            });
        }
        Ok(CronListing { cron_jobs })
    }
}

/// The controller.
impl Jobs {
    /// Controls the jobs and cron jobs this member is first-ranked for, every `every`, and
    /// stops this node's pods of deleted ones.
    pub async fn run(self, every: Duration) {
        let mut held: HashMap<String, Held> = HashMap::new();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(error) = self.round(&mut held).await {
                tracing::warn!(%error, "job controller round failed");
            }
        }
    }

    async fn round(&self, held: &mut HashMap<String, Held>) -> Result<(), InvokeFailure> {
        let objects = &self.inner.objects;
        let mut owners: Vec<String> = objects
            .jobs()
            .await?
            .into_iter()
            .map(|j| ObjectKind::Job.key(&j.name))
            .collect();
        owners.extend(
            objects
                .crons()
                .await?
                .into_iter()
                .map(|c| ObjectKind::CronJob.key(&c.name)),
        );
        let members = self.mesh()?.fleet_members();
        held.retain(|key, _| owners.contains(key));
        for key in &owners {
            let first = ranking(key, members.iter().map(|m| m.peer_id))
                .first()
                .copied();
            if first != Some(self.inner.local) {
                if held.remove(key).is_some() {
                    tracing::info!(owner = %key, "no longer its controller");
                    self.set_pending(key, None);
                }
                continue;
            }
            let Ok(owner) = Owner::parse(key) else {
                continue;
            };
            let state = held.entry(key.clone()).or_default();
            if let Err(error) = self.control(owner, &members, state).await {
                tracing::warn!(owner = %key, %error, "job controller step failed");
                if error.code == ErrorCode::Conflict {
                    held.remove(key);
                }
            }
        }
        self.retire_deleted().await;
        Ok(())
    }

    fn set_pending(&self, key: &str, pending: Option<String>) {
        self.inner.pending.set(key, pending);
    }

    /// One round for one job or cron job this member controls: read every member (handing
    /// each the ledger it lacks), bring the ledger up to date with what they report, then
    /// start and stop pods of the runs most members keep.
    async fn control(
        &self,
        owner: Owner<'_>,
        members: &[FleetMember],
        held: &mut Held,
    ) -> Result<(), InvokeFailure> {
        let key = owner.key();
        let peers: Vec<PeerId> = members.iter().map(|m| m.peer_id).collect();
        if held.epoch == 0 {
            let unclaimed = |_| PodsParams {
                owner: key.clone(),
                epoch: None,
                ledger: None,
            };
            let reports = self.gather(peers.clone(), unclaimed).await;
            held.epoch = next_epoch(
                reports
                    .into_iter()
                    .filter_map(|(_, report)| report.ok()?.fence.map(|f| f.epoch)),
            );
            tracing::info!(owner = %key, epoch = held.epoch, "taking control");
        }
        let claim = Fence {
            epoch: held.epoch,
            controller: self.inner.local.to_string(),
        };
        let sent_version = held.ledger.as_ref().map(|l| l.version);
        let reports = {
            let ledger = held.ledger.clone();
            let acked = &held.acked;
            self.gather(peers, |peer| PodsParams {
                owner: key.clone(),
                epoch: Some(claim.epoch),
                ledger: ledger
                    .clone()
                    .filter(|l| acked.get(&peer) != Some(&l.version)),
            })
            .await
        };
        let mut answered = BTreeMap::new();
        for (peer, report) in reports {
            match report {
                Ok(report) => {
                    if report.fence.as_ref().is_some_and(|f| *f > claim) {
                        return Err(failure(
                            ErrorCode::Conflict,
                            format!("{peer} reports a higher claim; standing down"),
                        ));
                    }
                    answered.insert(peer, report);
                }
                Err(error) => tracing::debug!(%peer, %error, "no pod report this round"),
            }
        }
        if let Some(note) = not_accepted(answered.len(), members.len()) {
            self.set_pending(&key, Some(note));
            return Ok(());
        }
        // Which members keep the ledger as sent; once most do, its runs are confirmed.
        held.acked = answered
            .iter()
            .filter_map(|(peer, report)| {
                let ledger = report.ledger.as_ref()?;
                (ledger.fence.as_ref() == Some(&claim)).then_some((*peer, ledger.version))
            })
            .collect();
        if let Some(version) = sent_version {
            let keeping = held.acked.values().filter(|v| **v == version).count();
            if keeping * 2 > members.len()
                && let Some(ledger) = &held.ledger
            {
                held.confirmed = ledger.runs.iter().map(|r| r.id.clone()).collect();
            }
        }
        let ledger = held.ledger.get_or_insert_with(|| {
            let mut newest = answered
                .values()
                .filter_map(|r| r.ledger.clone())
                .reduce(|a, b| if b.is_newer_than(&a) { b } else { a })
                .unwrap_or_default();
            newest.fence = Some(claim.clone());
            newest.version = 0;
            newest
        });
        let before = ledger.clone();
        let now = now_ms();
        let (revision, spec) = self.current(owner).await?;
        if let Some(spec) = &spec {
            observe(ledger, &answered, members, spec.max_attempts(), now);
            settle(ledger, spec, now);
        }
        let note = match owner {
            Owner::Job(_) => {
                let id = format!("r{revision}");
                if !ledger.runs.iter().any(|r| r.id == id) {
                    ledger
                        .runs
                        .push(new_run(id, revision, RunCause::Created, now));
                }
                None
            }
            Owner::Cron(name) => {
                let cron = self.inner.objects.cron(name).await?;
                schedule(ledger, &cron.spec, revision, cron.signed_at_ms, now)
            }
        };
        let pending = match &spec {
            Some(spec) => {
                self.act(owner, held, members, &answered, (revision, spec), now)
                    .await?
            }
            None => self.act_bids(owner, held, members, now).await?,
        };
        if let Some(ledger) = &mut held.ledger
            && *ledger != before
        {
            ledger.version += 1;
        }
        let note = match (note, pending) {
            (Some(a), Some(b)) => Some(format!("{a}; {b}")),
            (a, b) => a.or(b),
        };
        self.set_pending(&key, note);
        Ok(())
    }

    /// Starts the missing pods of the confirmed runs that still run, and stops the pods of
    /// runs that are over (or unknown). Returns why pods wait, if they do.
    async fn act(
        &self,
        owner: Owner<'_>,
        held: &mut Held,
        members: &[FleetMember],
        answered: &BTreeMap<PeerId, PodReport>,
        (revision, current): (u64, &JobSpec),
        now: u64,
    ) -> Result<Option<String>, InvokeFailure> {
        let Some(ledger) = held.ledger.as_mut() else {
            return Ok(None);
        };
        let key = owner.key();
        let mut stops = Vec::new();
        for (peer, report) in answered {
            for pod in report
                .pods
                .iter()
                .filter(|p| p.state == AttemptState::Running)
            {
                let running = ledger
                    .runs
                    .iter()
                    .any(|r| r.id == pod.run && r.phase == RunPhase::Running);
                if !running {
                    stops.push((*peer, pod.workload.clone()));
                }
            }
        }
        for (node, workload) in stops {
            let params = PodStopParams {
                owner: key.clone(),
                workload,
                epoch: held.epoch,
            };
            let outcome = if node == self.inner.local {
                self.stop(node, params).await.map(drop)
            } else {
                call_peer::<JobPodStop>(self.mesh()?, node, &params, ACTION_DEADLINE)
                    .await
                    .map(drop)
            };
            match outcome {
                Err(error) if is_fenced(&error) => return Err(error),
                Err(error) => tracing::warn!(owner = %key, %node, %error, "pod not stopped"),
                Ok(()) => {}
            }
        }
        let mut waiting = Vec::new();
        let answered_peers: Vec<PeerId> = answered.keys().copied().collect();
        for run in ledger
            .runs
            .iter_mut()
            .filter(|r| r.phase == RunPhase::Running && held.confirmed.contains(&r.id))
        {
            let spec = if run.revision == revision {
                current.clone()
            } else {
                match job_spec_at(&self.inner.objects, owner, run.revision).await? {
                    Some(spec) => spec,
                    None => continue,
                }
            };
            let missing = spec
                .completions
                .saturating_sub(run.succeeded())
                .min(spec.parallelism)
                .saturating_sub(run.active());
            if missing == 0 {
                continue;
            }
            let mut room = candidates(
                spec.gpu_model.as_deref(),
                &spec.tolerations,
                members,
                &answered_peers,
            );
            only_sealed_to(&self.inner.objects, &spec.template, &mut room).await;
            let gpus = spec.template.gpus.unwrap_or(0) as usize;
            // Pods spread: each goes to the node running fewest of the run's pods, with room
            // for its GPUs beside those placed this round.
            let mut placed: HashMap<PeerId, usize> = HashMap::new();
            for attempt in run
                .attempts
                .iter()
                .filter(|a| a.state == AttemptState::Running)
            {
                if let Ok(node) = attempt.node.parse() {
                    *placed.entry(node).or_default() += 1;
                }
            }
            let mut new_here: HashMap<PeerId, usize> = HashMap::new();
            let mut started = 0;
            for _ in 0..missing {
                let count =
                    |map: &HashMap<PeerId, usize>, node| map.get(node).copied().unwrap_or(0);
                let choice = room
                    .iter()
                    .filter(|c| {
                        c.schedulable && c.free_gpus >= gpus * (1 + count(&new_here, &c.node))
                    })
                    .min_by_key(|c| count(&placed, &c.node))
                    .map(|c| c.node);
                let Some(node) = choice else {
                    break;
                };
                *placed.entry(node).or_default() += 1;
                *new_here.entry(node).or_default() += 1;
                let params = PodStartParams {
                    owner: key.clone(),
                    run: run.id.clone(),
                    revision: run.revision,
                    epoch: held.epoch,
                };
                let outcome = if node == self.inner.local {
                    self.start(node, params).await
                } else {
                    call_peer::<JobPodStart>(self.mesh()?, node, &params, ACTION_DEADLINE).await
                };
                match outcome {
                    Ok(workload) => {
                        started += 1;
                        run.attempts.push(Attempt {
                            workload: workload.id,
                            node: node.to_string(),
                            state: AttemptState::Running,
                            exit_code: None,
                            started_ms: now,
                            finished_ms: None,
                        });
                    }
                    Err(error) if is_fenced(&error) => return Err(error),
                    Err(error) => {
                        tracing::warn!(owner = %key, run = %run.id, %node, %error, "pod not started");
                    }
                }
            }
            if started < missing {
                let need = if gpus > 0 {
                    format!("{gpus} free GPU(s)")
                } else {
                    "room".to_owned()
                };
                waiting.push(format!(
                    "run {}: {} pod(s) pending (waiting for a node with {need})",
                    run.id,
                    missing - started
                ));
            }
        }
        Ok((!waiting.is_empty()).then(|| waiting.join("; ")))
    }

    /// Stops this node's pods of jobs and cron jobs that were deleted.
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
        let mut owners: Vec<&String> = records
            .iter()
            .filter_map(|r| r.labels.get(OWNER_LABEL))
            .collect();
        owners.sort();
        owners.dedup();
        for key in owners {
            let Ok(owner) = Owner::parse(key) else {
                continue;
            };
            if !matches!(
                self.inner.objects.deleted(owner.kind(), owner.name()).await,
                Ok(true)
            ) {
                continue;
            }
            for record in records
                .iter()
                .filter(|r| r.labels.get(OWNER_LABEL) == Some(key))
            {
                if let Err(error) = self.stop_pod(owner, &record.id).await {
                    tracing::warn!(owner = %key, %error, "pod of a deleted owner not stopped");
                }
            }
        }
    }
}

fn new_run(id: String, revision: u64, cause: RunCause, now: u64) -> Run {
    Run {
        id,
        revision,
        cause,
        started_ms: now,
        phase: RunPhase::Running,
        reason: None,
        finished_ms: None,
        attempts: Vec::new(),
        lease_id: None,
    }
}

/// Brings the attempts of the runs that still run up to date with what the members report: a
/// pod's state and exit code as its node reports it; a running attempt whose node left the
/// fleet, or answered without it, is lost; a pod no attempt names (a start whose answer was
/// lost, perhaps by an earlier controller) is taken in, up to `max_attempts`. A finished
/// attempt never changes again.
fn observe(
    ledger: &mut RunLedger,
    answered: &BTreeMap<PeerId, PodReport>,
    members: &[FleetMember],
    max_attempts: usize,
    now: u64,
) {
    for run in ledger
        .runs
        .iter_mut()
        .filter(|r| r.phase == RunPhase::Running)
    {
        for (peer, report) in answered {
            for pod in report.pods.iter().filter(|p| p.run == run.id) {
                let known = run.attempts.iter().any(|a| a.workload == pod.workload);
                if !known && run.attempts.len() < max_attempts {
                    run.attempts.push(Attempt {
                        workload: pod.workload.clone(),
                        node: peer.to_string(),
                        state: AttemptState::Running,
                        exit_code: None,
                        started_ms: pod.created_ms,
                        finished_ms: None,
                    });
                }
            }
        }
        for attempt in run
            .attempts
            .iter_mut()
            .filter(|a| a.state == AttemptState::Running)
        {
            let node: Option<PeerId> = attempt.node.parse().ok();
            let member = node.is_some_and(|n| members.iter().any(|m| m.peer_id == n));
            let report = node.and_then(|n| answered.get(&n));
            let seen = report.and_then(|r| r.pods.iter().find(|p| p.workload == attempt.workload));
            let next = match (member, report, seen) {
                (false, _, _) | (true, Some(_), None) => Some((AttemptState::Lost, None)),
                (true, _, Some(pod)) if pod.state.is_finished() => Some((pod.state, pod.exit_code)),
                _ => None,
            };
            if let Some((state, exit_code)) = next {
                attempt.state = state;
                attempt.exit_code = exit_code;
                attempt.finished_ms = Some(now);
            }
        }
    }
}

/// Ends the runs that are done: complete once `completions` attempts succeeded; failed past
/// the backoff limit or the deadline.
fn settle(ledger: &mut RunLedger, spec: &JobSpec, now: u64) {
    for run in ledger
        .runs
        .iter_mut()
        .filter(|r| r.phase == RunPhase::Running)
    {
        let outcome = if run.succeeded() >= spec.completions {
            Some((RunPhase::Complete, None))
        } else if run.failed() > spec.backoff_limit {
            Some((
                RunPhase::Failed,
                Some(format!(
                    "{} pods failed or were lost (backoff_limit {})",
                    run.failed(),
                    spec.backoff_limit
                )),
            ))
        } else if spec
            .active_deadline_secs
            .is_some_and(|secs| now > run.started_ms.saturating_add(secs.saturating_mul(1000)))
        {
            Some((
                RunPhase::Failed,
                Some("active_deadline_secs passed".to_owned()),
            ))
        } else {
            None
        };
        if let Some((phase, reason)) = outcome {
            run.phase = phase;
            run.reason = reason;
            run.finished_ms = Some(now);
        }
    }
}

/// Records a cron job's due scheduled time and trigger as new runs, under its concurrency
/// policy and starting deadline. Returns a note when a time was skipped.
fn schedule(
    ledger: &mut RunLedger,
    spec: &CronSpec,
    revision: u64,
    signed_at_ms: u64,
    now: u64,
) -> Option<String> {
    let mut note = None;
    if spec.triggers > ledger.triggers {
        ledger.triggers = spec.triggers;
        let id = format!("t{}", spec.triggers);
        let cause = RunCause::Triggered {
            trigger: spec.triggers,
        };
        note = add_run(ledger, spec, new_run(id, revision, cause, now));
    }
    let from = ledger.last_slot_ms.unwrap_or(signed_at_ms);
    let mut due = None;
    let mut missed = 0u32;
    let mut after = from;
    while let Some(slot) = spec.next_after(after).filter(|s| *s <= now) {
        missed += u32::from(due.is_some());
        due = Some(slot);
        after = slot;
        if missed >= 10_000 {
            break;
        }
    }
    let slot = due?;
    ledger.last_slot_ms = Some(slot);
    if spec.suspend {
        return note;
    }
    if missed > 0 {
        skip(ledger, format!("{missed} earlier scheduled time(s) missed"));
    }
    let late_ms = now.saturating_sub(slot);
    if let Some(secs) = spec.starting_deadline_secs
        && late_ms > secs.saturating_mul(1000)
    {
        let reason = format!(
            "the time at {slot} ms was missed by {} s (starting_deadline_secs {secs})",
            late_ms / 1000
        );
        skip(ledger, reason.clone());
        return Some(reason);
    }
    let id = format!("s{}", slot / 60_000);
    let cause = RunCause::Scheduled { slot_ms: slot };
    add_run(ledger, spec, new_run(id, revision, cause, now)).or(note)
}

/// Adds `run` under the concurrency policy, keeping the newest [`RUNS_KEPT`] runs. Returns a
/// note when it was skipped.
fn add_run(ledger: &mut RunLedger, spec: &CronSpec, run: Run) -> Option<String> {
    let active: Vec<usize> = ledger
        .runs
        .iter()
        .enumerate()
        .filter(|(_, r)| r.phase == RunPhase::Running)
        .map(|(i, _)| i)
        .collect();
    match spec.concurrency_policy {
        ConcurrencyPolicy::Forbid if !active.is_empty() => {
            let reason = format!(
                "run {} skipped: run {} still runs (concurrency_policy forbid)",
                run.id, ledger.runs[active[0]].id
            );
            skip(ledger, reason.clone());
            return Some(reason);
        }
        ConcurrencyPolicy::Replace => {
            for index in active {
                let replaced = &mut ledger.runs[index];
                replaced.phase = RunPhase::Failed;
                replaced.reason = Some(format!("replaced by run {}", run.id));
                replaced.finished_ms = Some(run.started_ms);
            }
        }
        _ => {}
    }
    while ledger.runs.len() >= RUNS_KEPT {
        match ledger
            .runs
            .iter()
            .position(|r| r.phase != RunPhase::Running)
        {
            Some(oldest) => {
                ledger.runs.remove(oldest);
            }
            None => {
                let reason = format!("run {} skipped: {RUNS_KEPT} runs still run", run.id);
                skip(ledger, reason.clone());
                return Some(reason);
            }
        }
    }
    ledger.runs.push(run);
    None
}

fn skip(ledger: &mut RunLedger, reason: String) {
    ledger.skipped.push(reason);
    let excess = ledger.skipped.len().saturating_sub(RUNS_KEPT);
    ledger.skipped.drain(..excess);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cron(schedule: &str, policy: ConcurrencyPolicy) -> CronSpec {
        serde_json::from_value(serde_json::json!({
            "schedule": schedule,
            "concurrency_policy": policy,
            "job": {"template": {"image": "busybox"}},
        }))
        .unwrap()
    }

    const MINUTE: u64 = 60_000;

    #[test]
    fn each_scheduled_time_makes_one_run_and_forbid_skips_while_one_runs() {
        let spec = cron("* * * * *", ConcurrencyPolicy::Forbid);
        let mut ledger = RunLedger::default();
        assert_eq!(
            schedule(&mut ledger, &spec, 1, 10 * MINUTE, 10 * MINUTE + 5),
            None
        );
        assert!(ledger.runs.is_empty(), "no time is due yet");
        schedule(&mut ledger, &spec, 1, 10 * MINUTE, 11 * MINUTE + 5);
        assert_eq!(ledger.runs.len(), 1);
        assert_eq!(ledger.runs[0].id, "s11");
        // The same time again adds nothing.
        schedule(&mut ledger, &spec, 1, 10 * MINUTE, 11 * MINUTE + 900);
        assert_eq!(ledger.runs.len(), 1);
        // The next time, while s11 still runs, is skipped under forbid.
        let note = schedule(&mut ledger, &spec, 1, 10 * MINUTE, 12 * MINUTE + 5);
        assert!(note.unwrap().contains("forbid"));
        assert_eq!(
            (ledger.runs.len(), ledger.last_slot_ms),
            (1, Some(12 * MINUTE))
        );
        ledger.runs[0].phase = RunPhase::Complete;
        schedule(&mut ledger, &spec, 1, 10 * MINUTE, 13 * MINUTE + 5);
        assert_eq!(ledger.runs.last().unwrap().id, "s13");
    }

    #[test]
    fn replace_ends_the_running_run_and_missed_times_run_once() {
        let spec = cron("* * * * *", ConcurrencyPolicy::Replace);
        let mut ledger = RunLedger::default();
        schedule(&mut ledger, &spec, 1, 0, MINUTE + 1);
        // Five minutes with no controller: only the latest time runs.
        schedule(&mut ledger, &spec, 1, 0, 6 * MINUTE + 1);
        let ids: Vec<&str> = ledger.runs.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["s1", "s6"]);
        assert_eq!(ledger.runs[0].phase, RunPhase::Failed);
        assert!(ledger.skipped.last().unwrap().contains("4 earlier"));
        let mut late = cron("* * * * *", ConcurrencyPolicy::Allow);
        late.starting_deadline_secs = Some(10);
        let mut ledger = RunLedger::default();
        assert!(schedule(&mut ledger, &late, 1, 0, MINUTE + 30_000).is_some());
        assert!(ledger.runs.is_empty());
    }

    #[test]
    fn a_run_completes_fails_past_its_backoff_limit_or_deadline() {
        let spec: JobSpec = serde_json::from_value(serde_json::json!({
            "template": {"image": "busybox"}, "completions": 2, "backoff_limit": 1,
            "active_deadline_secs": 60,
        }))
        .unwrap();
        let attempt = |state| Attempt {
            workload: "wl".into(),
            node: "n".into(),
            state,
            exit_code: None,
            started_ms: 0,
            finished_ms: None,
        };
        let mut ledger = RunLedger::default();
        let mut run = new_run("r1".into(), 1, RunCause::Created, 0);
        run.attempts = vec![
            attempt(AttemptState::Succeeded),
            attempt(AttemptState::Lost),
        ];
        ledger.runs.push(run.clone());
        settle(&mut ledger, &spec, 1);
        assert_eq!(ledger.runs[0].phase, RunPhase::Running);
        ledger.runs[0]
            .attempts
            .push(attempt(AttemptState::Succeeded));
        settle(&mut ledger, &spec, 2);
        assert_eq!(ledger.runs[0].phase, RunPhase::Complete);
        run.attempts.push(attempt(AttemptState::Failed));
        ledger.runs = vec![run.clone()];
        settle(&mut ledger, &spec, 3);
        assert_eq!(ledger.runs[0].phase, RunPhase::Failed);
        run.attempts.truncate(1);
        ledger.runs = vec![run];
        settle(&mut ledger, &spec, 61_000);
        assert_eq!(
            ledger.runs[0].reason.as_deref(),
            Some("active_deadline_secs passed")
        );
    }
}
