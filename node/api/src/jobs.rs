//! Jobs: containers run to completion across the fleet. A job is a fleet object
//! ([`crate::objects`]) signed by an operator; the member that controls it starts its pods
//! (`parallelism` at a time) on members with room until `completions` of them exit 0, retries a
//! failed or lost pod elsewhere up to `backoff_limit` times, and gives up at
//! `active_deadline_secs`. Cron jobs ([`crate::cron`]) start runs of the same kind on schedule.
//!
//! What a job's runs did (each attempt, its node, exit code and outcome) is a [`RunLedger`] the
//! controller keeps on every member, fenced like a deployment's replicas: a completion counted
//! once stays counted when the node that ran it is gone, and the next controller goes on from
//! the ledger most members hold.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::command::commands;
use crate::deploy::Fence;
use crate::workload::{LogLine, RestartPolicy, RunParams, SpecError, Workload, is_simple_name};
use crate::{Answer, ErrorCode, InvokeFailure};

/// Most completions one job asks for.
pub const MAX_COMPLETIONS: u32 = 64;
/// Most pods one job runs at once.
pub const MAX_PARALLELISM: u32 = 16;
/// Most retries one job allows.
pub const MAX_BACKOFF_LIMIT: u32 = 20;
/// Longest active deadline: 30 days.
pub const MAX_DEADLINE_SECS: u64 = 30 * 24 * 3600;
/// Runs a ledger keeps (a cron job's newest; a job has one).
pub const RUNS_KEPT: usize = 10;

/// What a job runs and how often it may try.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// What each pod runs: `workload.run`'s params without `name` (pods are named after the
    /// job) or `gpu_uuids` (a pod takes any free GPUs of its node); `restart` must be `no` (the
    /// job retries a failed pod itself, elsewhere if need be). Env values are part of the signed
    /// record every member keeps: never put secrets here.
    pub template: RunParams,
    /// Only nodes with GPUs whose model contains this (e.g. `H100`).
    #[serde(default)]
    pub gpu_model: Option<String>,
    /// Pods that must exit 0 for the job to complete, 1 to 64. Default 1.
    #[serde(default = "one")]
    pub completions: u32,
    /// Pods run at once at most, 1 to 16. Default 1.
    #[serde(default = "one")]
    pub parallelism: u32,
    /// Failed or lost pods retried before the job fails, 0 to 20. Default 6.
    #[serde(default = "six")]
    pub backoff_limit: u32,
    /// Seconds after its start the job fails if it has not completed (its pods are stopped).
    #[serde(default)]
    pub active_deadline_secs: Option<u64>,
    /// Taints of nodes its pods may still go to (`node.taint`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<crate::taints::Toleration>,
}

fn one() -> u32 {
    1
}

fn six() -> u32 {
    6
}

fn invalid<T>(message: impl Into<String>) -> Result<T, SpecError> {
    Err(SpecError::Invalid(message.into()))
}

/// Checks a job's (or a cron job's) name: 1 to 32 of `a-z 0-9 -`.
pub fn check_name(name: &str) -> Result<(), SpecError> {
    if is_simple_name(name, 32) {
        Ok(())
    } else {
        invalid(format!("name {name:?} must be 1 to 32 of a-z, 0-9 and '-'"))
    }
}

impl JobSpec {
    /// Checks every field, the template's as `workload.run` would.
    pub fn check(&self) -> Result<(), SpecError> {
        if self.template.name.is_some() {
            return invalid("template.name: pods are named after the job");
        }
        if self.template.gpu_uuids.is_some() {
            return invalid("template.gpu_uuids: a pod takes any free GPUs (give gpus)");
        }
        if self.template.restart != RestartPolicy::No {
            return invalid("template.restart must be \"no\": the job retries failed pods itself");
        }
        self.template.check()?;
        crate::taints::check_tolerations(&self.tolerations)?;
        if let Some(model) = &self.gpu_model
            && (model.is_empty() || model.len() > 64)
        {
            return invalid("gpu_model must be 1 to 64 bytes");
        }
        if !(1..=MAX_COMPLETIONS).contains(&self.completions) {
            return invalid(format!("completions must be 1 to {MAX_COMPLETIONS}"));
        }
        if !(1..=MAX_PARALLELISM).contains(&self.parallelism) {
            return invalid(format!("parallelism must be 1 to {MAX_PARALLELISM}"));
        }
        if self.backoff_limit > MAX_BACKOFF_LIMIT {
            return invalid(format!("backoff_limit must be 0 to {MAX_BACKOFF_LIMIT}"));
        }
        if let Some(secs) = self.active_deadline_secs
            && !(1..=MAX_DEADLINE_SECS).contains(&secs)
        {
            return invalid(format!(
                "active_deadline_secs must be 1 to {MAX_DEADLINE_SECS}"
            ));
        }
        Ok(())
    }

    /// Most attempts a run of this spec makes: every completion, every retry, and the pods
    /// still running when the last one finished.
    pub fn max_attempts(&self) -> usize {
        (self.completions + self.backoff_limit + self.parallelism) as usize
    }
}

/// A change an operator asks of a job: what `job.create` and `job.delete` sign as its next
/// revision (a job's spec never changes: delete it and create it again).
#[derive(Debug, Clone)]
pub enum JobChange {
    /// A new job (or one deleted before, again).
    Create(Box<JobSpec>),
    /// Deleted.
    Delete,
}

impl JobChange {
    /// The spec the next revision of job `name` carries (`None` deletes it), given its live
    /// spec; refused the way the commands answer. Nodes and the bridge both decide with it.
    pub fn next_spec(
        self,
        name: &str,
        live: Option<&JobSpec>,
    ) -> Result<Option<JobSpec>, InvokeFailure> {
        let invalid = |e: SpecError| InvokeFailure::new(ErrorCode::InvalidParams, e.to_string());
        check_name(name).map_err(invalid)?;
        match self {
            Self::Create(spec) => {
                if live.is_some() {
                    return Err(InvokeFailure::new(
                        ErrorCode::Conflict,
                        format!("job {name:?} exists; job.delete it first to run it again"),
                    ));
                }
                spec.check().map_err(invalid)?;
                Ok(Some(*spec))
            }
            Self::Delete => match live {
                Some(_) => Ok(None),
                None => Err(not_found("job", name, "job.list")),
            },
        }
    }
}

/// `job.create`: a new job, started at once.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobCreateParams {
    /// Its name, unique among the fleet's jobs: 1 to 32 of `a-z 0-9 -`.
    pub name: String,
    /// What it runs.
    pub spec: JobSpec,
}

/// Names a job.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobRef {
    /// The job's name.
    pub name: String,
}

/// A job as every member keeps it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Job {
    /// Its name.
    pub name: String,
    /// Its revision (a job deleted and created again takes the next one).
    pub revision: u64,
    /// What it runs.
    pub spec: JobSpec,
    /// The operator that signed it (peer id).
    pub signed_by: String,
    /// When it was signed, Unix ms.
    pub signed_at_ms: u64,
}

impl Answer for Job {}

/// Where a pod's attempt is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AttemptState {
    /// Starting or running.
    Running,
    /// Exited 0: one completion.
    Succeeded,
    /// Exited non-zero, could not start, or was stopped.
    Failed,
    /// Its node left the fleet, or its container disappeared, while it ran.
    Lost,
}

impl AttemptState {
    /// Whether the attempt is over.
    pub fn is_finished(self) -> bool {
        self != Self::Running
    }
}

/// One pod of a run: one try at one completion.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Attempt {
    /// The workload that ran it, on its node.
    pub workload: String,
    /// The node's peer id.
    pub node: String,
    /// Where it is.
    pub state: AttemptState,
    /// Its exit code, once it exited.
    #[serde(default)]
    pub exit_code: Option<i64>,
    /// When it was started, Unix ms.
    pub started_ms: u64,
    /// When it was seen over, Unix ms.
    #[serde(default)]
    pub finished_ms: Option<u64>,
}

/// Why a run was started.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum RunCause {
    /// The job was created.
    Created,
    /// A cron job's scheduled time came.
    Scheduled {
        /// The scheduled time, Unix ms.
        slot_ms: u64,
    },
    /// An operator triggered a cron job (`cron.trigger`).
    Triggered {
        /// The trigger's number (the cron job's count of triggers).
        trigger: u64,
    },
}

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunPhase {
    /// Pods run or wait for room.
    Running,
    /// `completions` pods exited 0.
    Complete,
    /// Over its backoff limit or its deadline, or replaced.
    Failed,
}

/// One run of a job: its pods until enough complete.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Run {
    /// Its id: `r<revision>` for a job, `s<minute>` for a scheduled cron run, `t<trigger>` for
    /// a triggered one.
    pub id: String,
    /// The revision of the job or cron job whose spec it runs.
    pub revision: u64,
    /// Why it was started.
    pub cause: RunCause,
    /// When the controller recorded it, Unix ms (its deadline counts from here).
    pub started_ms: u64,
    /// Where it is.
    pub phase: RunPhase,
    /// Why it failed, or what it waits for.
    #[serde(default)]
    pub reason: Option<String>,
    /// When it completed or failed, Unix ms.
    #[serde(default)]
    pub finished_ms: Option<u64>,
    /// Its pods, oldest first.
    pub attempts: Vec<Attempt>,
    /// A bid's run: the lease its bid took, when it leased.
    #[serde(default)]
    pub lease_id: Option<String>,
}

impl Run {
    /// Attempts that exited 0.
    pub fn succeeded(&self) -> u32 {
        self.count(|s| s == AttemptState::Succeeded)
    }

    /// Attempts that failed or were lost.
    pub fn failed(&self) -> u32 {
        self.count(|s| matches!(s, AttemptState::Failed | AttemptState::Lost))
    }

    /// Attempts still running.
    pub fn active(&self) -> u32 {
        self.count(|s| s == AttemptState::Running)
    }

    fn count(&self, which: impl Fn(AttemptState) -> bool) -> u32 {
        let count = self.attempts.iter().filter(|a| which(a.state)).count();
        u32::try_from(count).unwrap_or(u32::MAX)
    }
}

/// What a job's or cron job's runs did, as its controller keeps it on every member. A member
/// keeps the ledger with the highest `(fence, version)` it was given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunLedger {
    /// The claim of the controller that wrote it.
    pub fence: Option<Fence>,
    /// Its version under that claim, from 1.
    pub version: u64,
    /// A cron job's latest scheduled time handled (run, skipped or missed), Unix ms.
    #[serde(default)]
    pub last_slot_ms: Option<u64>,
    /// A cron job's triggers handled.
    #[serde(default)]
    pub triggers: u64,
    /// Scheduled times skipped or missed, with why, newest last (the last 10).
    #[serde(default)]
    pub skipped: Vec<String>,
    /// The runs, oldest first (the newest 10).
    pub runs: Vec<Run>,
}

impl RunLedger {
    /// Whether this ledger was written after `other`.
    pub fn is_newer_than(&self, other: &RunLedger) -> bool {
        (&self.fence, self.version) > (&other.fence, other.version)
    }

    /// Checks that the ledger is within the bounds every member keeps to, for a spec allowing
    /// `max_attempts` attempts per run.
    pub fn check(&self, max_attempts: usize) -> Result<(), String> {
        if self.runs.len() > RUNS_KEPT || self.skipped.len() > RUNS_KEPT {
            return Err(format!("a ledger keeps at most {RUNS_KEPT} runs"));
        }
        if self.skipped.iter().any(|s| s.len() > 256) {
            return Err("a skipped slot's note is at most 256 bytes".to_owned());
        }
        for run in &self.runs {
            let long_reason = run.reason.as_ref().is_some_and(|r| r.len() > 512);
            let long_strings = run.id.len() > 32
                || run
                    .attempts
                    .iter()
                    .any(|a| a.workload.len() > 64 || a.node.len() > 64);
            if run.attempts.len() > max_attempts || long_reason || long_strings {
                return Err(format!(
                    "run {:?} is over the bounds: {max_attempts} attempts, short strings",
                    run.id.chars().take(32).collect::<String>()
                ));
            }
        }
        Ok(())
    }
}

/// `job.status`: a job, its controller and its run.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobStatus {
    /// The job.
    #[serde(flatten)]
    pub job: Job,
    /// The member that controls it, as this member sees the fleet.
    pub controller: Option<String>,
    /// Where its run is; absent until the controller started it.
    pub run: Option<Run>,
    /// Pods that exited 0.
    pub succeeded: u32,
    /// Pods that failed or were lost.
    pub failed: u32,
    /// Pods running.
    pub active: u32,
    /// Why pods are not running yet, as the controller last saw it.
    pub pending: Option<String>,
}

impl Answer for JobStatus {}

/// One job in `job.list`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobSummary {
    /// Its name.
    pub name: String,
    /// Its revision.
    pub revision: u64,
    /// Its run's phase as this member's ledger has it; absent before the run started.
    pub phase: Option<RunPhase>,
    /// Pods that exited 0.
    pub succeeded: u32,
    /// Pods it needs to exit 0.
    pub completions: u32,
}

/// `job.list`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobListing {
    /// The fleet's jobs, by name.
    pub jobs: Vec<JobSummary>,
}

impl Answer for JobListing {}

/// `job.delete`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobDeleted {
    /// The job.
    pub name: String,
    /// The revision that deleted it.
    pub revision: u64,
}

impl Answer for JobDeleted {}

/// `job.logs`: what a job's pods printed.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobLogsParams {
    /// The job.
    pub name: String,
    /// Only this attempt's workload; every attempt's otherwise.
    #[serde(default)]
    pub attempt: Option<String>,
    /// Last N lines of each attempt. Default 50, at most 1000.
    #[serde(default)]
    pub tail: Option<u32>,
}

/// One attempt's output.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AttemptLogs {
    /// The attempt.
    #[serde(flatten)]
    pub attempt: Attempt,
    /// Its output, oldest first, as its node gave it (`workload.logs` there: a peer's data).
    pub lines: Vec<LogLine>,
    /// Why there is no output: its node is gone, did not answer, or does not take `workload.logs`
    /// from the member asked (it is not an operator there).
    #[serde(default)]
    pub unavailable: Option<String>,
}

/// `job.logs`' and `cron.logs`' answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobLogs {
    /// The job (or cron job).
    pub name: String,
    /// The run whose attempts these are.
    #[serde(default)]
    pub run: Option<String>,
    /// Each attempt's output, oldest attempt first.
    pub attempts: Vec<AttemptLogs>,
}

impl Answer for JobLogs {}

/// `job.pods`: a node's pods of a job or cron job and the ledger it keeps; with `epoch`, asked
/// by the controller, which raises the node's fence to it first and may hand it a newer ledger.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PodsParams {
    /// The owner's object key: `job/<name>` or `cron/<name>`.
    pub owner: String,
    /// The asking controller's epoch.
    #[serde(default)]
    pub epoch: Option<u64>,
    /// The controller's ledger, for the node to keep when it is newer.
    #[serde(default)]
    pub ledger: Option<RunLedger>,
}

/// One pod on a node.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Pod {
    /// The run it belongs to.
    pub run: String,
    /// Its workload.
    pub workload: String,
    /// Where its attempt is, from the workload's state and exit code.
    pub state: AttemptState,
    /// Its exit code, once it exited.
    #[serde(default)]
    pub exit_code: Option<i64>,
    /// When it was started, Unix ms.
    pub created_ms: u64,
}

/// A node's account of a job or cron job.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PodReport {
    /// The owner's key.
    pub owner: String,
    /// The highest controller claim the node has seen for it.
    pub fence: Option<Fence>,
    /// The ledger the node keeps.
    pub ledger: Option<RunLedger>,
    /// Its pods on the node, the runs in the ledger's (finished ones too).
    pub pods: Vec<Pod>,
    /// Set by the controller: why pods are not running yet.
    #[serde(default)]
    pub pending: Option<String>,
}

impl Answer for PodReport {}

/// `job.pod.start`: the controller asks a node to start one pod of a run.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PodStartParams {
    /// The owner's key.
    pub owner: String,
    /// The run.
    pub run: String,
    /// The owner's revision whose spec to run.
    pub revision: u64,
    /// The controller's epoch.
    pub epoch: u64,
}

/// `job.pod.stop`: the controller asks a node to stop one pod.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PodStopParams {
    /// The owner's key.
    pub owner: String,
    /// The pod's workload.
    pub workload: String,
    /// The controller's epoch.
    pub epoch: u64,
}

/// A job refused for want of the named object.
pub fn not_found(kind: &str, name: &str, list: &str) -> InvokeFailure {
    InvokeFailure::new(
        ErrorCode::NotFound,
        format!("no {kind} {name:?}; {list} lists them"),
    )
}

commands! {
    /// `job.create`.
    JobCreate = "job.create", Operate, JobCreateParams => Job,
        "Create a job: pods run to completion across the fleet (completions, parallelism, retries)";
    /// `job.status`.
    JobStatusCommand = "job.status", Read, JobRef => JobStatus,
        "A job's spec, controller and run: each attempt's node, state and exit code";
    /// `job.list`.
    JobList = "job.list", Read, crate::NoParams => JobListing,
        "The fleet's jobs and how far each got";
    /// `job.logs`.
    JobLogsCommand = "job.logs", Operate, JobLogsParams => JobLogs,
        "What a job's pods printed, per attempt";
    /// `job.delete`.
    JobDelete = "job.delete", Operate, JobRef => JobDeleted,
        "Delete a job; its running pods are stopped";
    /// `job.pods`.
    JobPods = "job.pods", Read, PodsParams => PodReport,
        "This node's pods of a job or cron job and its run ledger (asked by controllers)";
    /// `job.pod.start`.
    JobPodStart = "job.pod.start", Read, PodStartParams => Workload,
        "Start one pod of a run here (the job's controller only)";
    /// `job.pod.stop`.
    JobPodStop = "job.pod.stop", Read, PodStopParams => Workload,
        "Stop one pod here (the job's controller only)";
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn spec(value: serde_json::Value) -> JobSpec {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn a_job_spec_defaults_to_one_pod_and_refuses_what_cannot_complete() {
        let parsed = spec(json!({"template": {"image": "busybox"}}));
        assert_eq!(
            (parsed.completions, parsed.parallelism, parsed.backoff_limit),
            (1, 1, 6)
        );
        assert!(parsed.check().is_ok());
        assert!(
            serde_json::from_value::<JobSpec>(json!({"template": {"image": "a"}, "x": 1})).is_err()
        );
        for bad in [
            json!({"template": {"image": "a", "restart": "always"}}),
            json!({"template": {"image": "a", "name": "x"}}),
            json!({"template": {"image": "a"}, "completions": 0}),
            json!({"template": {"image": "a"}, "completions": 65}),
            json!({"template": {"image": "a"}, "parallelism": 17}),
            json!({"template": {"image": "a"}, "backoff_limit": 21}),
            json!({"template": {"image": "a"}, "active_deadline_secs": 0}),
        ] {
            assert!(spec(bad.clone()).check().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_ledger_orders_by_claim_then_version_and_is_bounded() {
        let fence = |epoch| {
            Some(Fence {
                epoch,
                controller: "a".into(),
            })
        };
        let older = RunLedger {
            fence: fence(2),
            version: 9,
            ..RunLedger::default()
        };
        let newer = RunLedger {
            fence: fence(3),
            version: 1,
            ..RunLedger::default()
        };
        assert!(newer.is_newer_than(&older) && !older.is_newer_than(&newer));
        let run = Run {
            id: "r1".into(),
            revision: 1,
            cause: RunCause::Created,
            started_ms: 0,
            phase: RunPhase::Running,
            reason: None,
            finished_ms: None,
            lease_id: None,
            attempts: vec![
                Attempt {
                    workload: "wl-1".into(),
                    node: "n".into(),
                    state: AttemptState::Succeeded,
                    exit_code: Some(0),
                    started_ms: 0,
                    finished_ms: Some(1),
                };
                3
            ],
        };
        assert_eq!((run.succeeded(), run.failed(), run.active()), (3, 0, 0));
        let ledger = RunLedger {
            runs: vec![run],
            ..newer
        };
        assert!(ledger.check(3).is_ok() && ledger.check(2).is_err());
    }
}
