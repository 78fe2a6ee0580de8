//! `clawnode job` and `clawnode cron`: the fleet's jobs and cron jobs, as this member keeps
//! them, and the changes an operator signs.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};
use claw_api::cron::{
    ConcurrencyPolicy, CronBid, CronCreate, CronCreateParams, CronDelete, CronJob, CronList,
    CronLogsCommand, CronLogsParams, CronRef, CronResume, CronSpec, CronStatusCommand, CronSuspend,
    CronTrigger,
};
use claw_api::jobs::{
    Attempt, JobCreate, JobCreateParams, JobDelete, JobList, JobLogs, JobLogsCommand,
    JobLogsParams, JobRef, JobSpec, JobStatusCommand, Run, RunPhase,
};
use claw_api::workload::RunParams;

use crate::deploy_cli::{env_map, file_mounts, tolerations, value_refs};
use crate::{GlobalArgs, ops, print_json, print_table};

/// `clawnode job …`.
#[derive(Debug, Subcommand)]
pub(crate) enum JobCommand {
    /// Create a job: pods run to completion across the fleet.
    Create(Box<JobArgs>),
    /// A job's run: each attempt's node, state and exit code.
    Status {
        /// The job.
        name: String,
    },
    /// The fleet's jobs.
    List,
    /// What a job's pods printed.
    Logs {
        /// The job.
        name: String,
        /// Only this attempt (its workload id).
        #[arg(long)]
        attempt: Option<String>,
        /// Last N lines of each attempt.
        #[arg(long)]
        tail: Option<u32>,
    },
    /// Delete a job; its running pods are stopped.
    Delete {
        /// The job.
        name: String,
    },
}

/// `clawnode cron …`.
#[derive(Debug, Subcommand)]
pub(crate) enum CronCommand {
    /// Create a cron job: a job run on a schedule.
    Create(Box<CronArgs>),
    /// The fleet's cron jobs.
    List,
    /// A cron job's recent runs and skipped times.
    Status {
        /// The cron job.
        name: String,
    },
    /// What a cron job's run's pods printed (the newest run by default).
    Logs {
        /// The cron job.
        name: String,
        /// The run (from `cron status`).
        #[arg(long)]
        run: Option<String>,
        /// Only this attempt (its workload id).
        #[arg(long)]
        attempt: Option<String>,
        /// Last N lines of each attempt.
        #[arg(long)]
        tail: Option<u32>,
    },
    /// Run a cron job's job once now.
    Trigger {
        /// The cron job.
        name: String,
    },
    /// Suspend a cron job: no scheduled runs until resumed.
    Suspend {
        /// The cron job.
        name: String,
    },
    /// Resume a suspended cron job.
    Resume {
        /// The cron job.
        name: String,
    },
    /// Delete a cron job.
    Delete {
        /// The cron job.
        name: String,
    },
}

/// What a job runs, as flags.
#[derive(Debug, Args)]
pub(crate) struct JobArgs {
    /// The job's name (1 to 32 of a-z, 0-9 and '-').
    name: String,
    #[command(flatten)]
    job: JobFlags,
    /// Wait until the job completes or fails, with progress on stderr.
    #[arg(long)]
    wait: bool,
}

/// The job flags `job create` and `cron create` share.
#[derive(Debug, Args)]
struct JobFlags {
    /// The image each pod runs.
    #[arg(long)]
    image: Option<String>,
    /// Pods that must exit 0.
    #[arg(long, default_value_t = 1)]
    completions: u32,
    /// Pods run at once at most.
    #[arg(long, default_value_t = 1)]
    parallelism: u32,
    /// Failed or lost pods retried before the job fails.
    #[arg(long, default_value_t = 6)]
    backoff_limit: u32,
    /// Seconds after its start the job fails if not complete.
    #[arg(long)]
    active_deadline_secs: Option<u64>,
    /// GPUs per pod.
    #[arg(long)]
    gpus: Option<u32>,
    /// Only nodes with GPUs whose model contains this.
    #[arg(long)]
    gpu_model: Option<String>,
    /// Environment variable KEY=VALUE (repeatable). Kept in the signed record every member
    /// holds: no secrets.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Environment variable from a secret or config (repeatable): NAME=secret:SECRET:KEY or
    /// NAME=config:CONFIG:KEY.
    #[arg(long = "env-from", value_name = "NAME=KIND:SOURCE:KEY")]
    env_from: Vec<String>,
    /// A secret's or config's values as files under a directory (repeatable):
    /// secret:SECRET:/PATH or config:CONFIG:/PATH.
    #[arg(long = "files", value_name = "KIND:SOURCE:/PATH")]
    files: Vec<String>,
    /// A taint its work tolerates (repeatable): KEY or KEY:Effect (NoSchedule,
    /// PreferNoSchedule, NoExecute).
    #[arg(long = "toleration", value_name = "KEY[:EFFECT]")]
    tolerations: Vec<String>,
    /// Command and arguments for the image (after `--`).
    #[arg(last = true)]
    command: Vec<String>,
}

/// `clawnode cron create`.
#[derive(Debug, Args)]
pub(crate) struct CronArgs {
    /// The cron job's name (1 to 32 of a-z, 0-9 and '-').
    name: String,
    /// Five fields: minute hour day-of-month month day-of-week, e.g. "0 2 * * *".
    #[arg(long)]
    schedule: String,
    /// The IANA time zone the schedule is read in.
    #[arg(long, default_value = "UTC")]
    time_zone: String,
    /// allow, forbid or replace: what a scheduled time does while a run still runs.
    #[arg(long, default_value = "allow")]
    concurrency_policy: String,
    /// Skip a scheduled time missed by more than this many seconds.
    #[arg(long)]
    starting_deadline_secs: Option<u64>,
    /// Instead of a job, place this bid at each time, as JSON: market.bid's params (models,
    /// gpus, hours, max_price, workload, ...).
    #[arg(long, value_name = "JSON", requires_all = ["bid_node", "budget"], conflicts_with = "image")]
    bid: Option<String>,
    /// The member that places the bid, with its wallet (peer id).
    #[arg(long, value_name = "PEER_ID")]
    bid_node: Option<String>,
    /// The most one run's bid may commit, MOLT.
    #[arg(long)]
    budget: Option<String>,
    #[command(flatten)]
    job: JobFlags,
}

impl JobFlags {
    fn spec(self) -> Result<JobSpec> {
        let Some(image) = self.image else {
            bail!("--image is needed: the image each pod runs");
        };
        Ok(JobSpec {
            template: RunParams {
                image,
                command: self.command,
                name: None,
                env: env_map(&self.env)?,
                env_from: value_refs(&self.env_from)?,
                files: file_mounts(&self.files)?,
                volume_mounts: Vec::new(),
                namespace: None,
                ports: Vec::new(),
                volumes: Vec::new(),
                gpus: self.gpus,
                gpu_uuids: None,
                cpus: None,
                memory_mib: None,
                restart: Default::default(),
                labels: BTreeMap::new(),
                isolation: Default::default(),
                writable_root: false,
            },
            gpu_model: self.gpu_model,
            completions: self.completions,
            parallelism: self.parallelism,
            backoff_limit: self.backoff_limit,
            active_deadline_secs: self.active_deadline_secs,
            tolerations: tolerations(&self.tolerations)?,
        })
    }
}

/// `clawnode job …`: one arm per subcommand.
pub(crate) fn job(global: &GlobalArgs, command: JobCommand) -> Result<()> {
    match command {
        JobCommand::Create(args) => {
            let params = JobCreateParams {
                name: args.name,
                spec: args.job.spec()?,
            };
            let answer = ops::call::<JobCreate>(global, &params, None, None)?;
            if global.json {
                print_json(&answer);
            } else {
                println!(
                    "job {} revision {}: {} completion(s), {} at a time, of {}",
                    answer.name,
                    answer.revision,
                    answer.spec.completions,
                    answer.spec.parallelism,
                    answer.spec.template.image
                );
            }
            if args.wait {
                wait_for_job(global, &answer.name)?;
            }
            Ok(())
        }
        JobCommand::Status { name } => job_status(global, name),
        JobCommand::List => {
            let answer = ops::call::<JobList>(global, &claw_api::NoParams {}, None, None)?;
            if global.json {
                print_json(&answer);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = answer
                .jobs
                .iter()
                .map(|j| {
                    vec![
                        j.name.clone(),
                        j.revision.to_string(),
                        j.phase.map_or("starting".to_owned(), phase),
                        format!("{}/{}", j.succeeded, j.completions),
                    ]
                })
                .collect();
            print_table(&["NAME", "REVISION", "PHASE", "SUCCEEDED"], &rows);
            Ok(())
        }
        JobCommand::Logs {
            name,
            attempt,
            tail,
        } => {
            let params = JobLogsParams {
                name,
                attempt,
                tail,
            };
            let answer = ops::call::<JobLogsCommand>(global, &params, None, None)?;
            print_logs(global, &answer);
            Ok(())
        }
        JobCommand::Delete { name } => {
            let answer = ops::call::<JobDelete>(global, &JobRef { name }, None, None)?;
            if global.json {
                print_json(&answer);
            } else {
                println!("job {} deleted (revision {})", answer.name, answer.revision);
            }
            Ok(())
        }
    }
}

/// Each attempt's output under a line naming it (a node's data, printed as it came).
fn print_logs(global: &GlobalArgs, answer: &JobLogs) {
    if global.json {
        print_json(answer);
        return;
    }
    for attempt in &answer.attempts {
        println!("== {} ==", attempt_line(&attempt.attempt));
        if let Some(why) = &attempt.unavailable {
            println!("(no output: {why})");
        }
        for line in &attempt.lines {
            println!("{}", line.line);
        }
    }
}

fn phase(phase: RunPhase) -> String {
    match phase {
        RunPhase::Running => "running",
        RunPhase::Complete => "complete",
        RunPhase::Failed => "failed",
    }
    .to_owned()
}

fn attempt_line(attempt: &Attempt) -> String {
    format!(
        "{} on {}: {}{}",
        attempt.workload,
        attempt.node,
        format!("{:?}", attempt.state).to_lowercase(),
        attempt
            .exit_code
            .map(|code| format!(" (exit {code})"))
            .unwrap_or_default()
    )
}

fn attempt_rows(run: &Run) -> Vec<Vec<String>> {
    run.attempts
        .iter()
        .map(|a| {
            vec![
                a.workload.clone(),
                a.node.clone(),
                format!("{:?}", a.state).to_lowercase(),
                a.exit_code.map_or("-".to_owned(), |c| c.to_string()),
            ]
        })
        .collect()
}

const ATTEMPT_COLUMNS: [&str; 4] = ["ATTEMPT", "NODE", "STATE", "EXIT"];

fn job_status(global: &GlobalArgs, name: String) -> Result<()> {
    let answer = ops::call::<JobStatusCommand>(global, &JobRef { name }, None, None)?;
    if global.json {
        print_json(&answer);
        return Ok(());
    }
    let spec = &answer.job.spec;
    println!(
        "job {} revision {}: {}, {} of {} succeeded, {} failed, {} running; controller {}",
        answer.job.name,
        answer.job.revision,
        answer
            .run
            .as_ref()
            .map_or("starting".to_owned(), |r| phase(r.phase)),
        answer.succeeded,
        spec.completions,
        answer.failed,
        answer.active,
        answer.controller.as_deref().unwrap_or("-")
    );
    if let Some(reason) = answer.run.as_ref().and_then(|r| r.reason.as_ref()) {
        println!("{reason}");
    }
    if let Some(pending) = &answer.pending {
        println!("{pending}");
    }
    if let Some(run) = &answer.run {
        println!();
        print_table(&ATTEMPT_COLUMNS, &attempt_rows(run));
    }
    Ok(())
}

/// Follows a job on stderr until its run completes (or fails: an error), at most a day.
fn wait_for_job(global: &GlobalArgs, name: &str) -> Result<()> {
    let reference = JobRef {
        name: name.to_owned(),
    };
    let mut last = String::new();
    let started = std::time::Instant::now();
    loop {
        let status = ops::call::<JobStatusCommand>(global, &reference, None, None)?;
        let line = format!(
            "{name}: {} of {} succeeded, {} failed, {} running{}",
            status.succeeded,
            status.job.spec.completions,
            status.failed,
            status.active,
            status
                .pending
                .as_deref()
                .map(|p| format!("; {p}"))
                .unwrap_or_default()
        );
        if line != last {
            eprintln!("{line}");
            last = line;
        }
        match status.run.as_ref().map(|r| r.phase) {
            Some(RunPhase::Complete) => {
                eprintln!("{name}: complete");
                return Ok(());
            }
            Some(RunPhase::Failed) => bail!(
                "job {name} failed: {}",
                status
                    .run
                    .and_then(|r| r.reason)
                    .unwrap_or_else(|| "no reason given".to_owned())
            ),
            _ => {}
        }
        if started.elapsed() > Duration::from_secs(24 * 3600) {
            bail!("job {name} still runs after a day: {last}");
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// `clawnode cron …`: one arm per subcommand.
pub(crate) fn cron(global: &GlobalArgs, command: CronCommand) -> Result<()> {
    let changed = match command {
        CronCommand::Create(args) => {
            let concurrency_policy = match args.concurrency_policy.as_str() {
                "allow" => ConcurrencyPolicy::Allow,
                "forbid" => ConcurrencyPolicy::Forbid,
                "replace" => ConcurrencyPolicy::Replace,
                other => bail!("--concurrency-policy {other:?}: allow, forbid or replace"),
            };
            let bid = match args.bid {
                Some(text) => Some(CronBid {
                    node: args.bid_node.unwrap_or_default(),
                    bid: serde_json::from_str(&text).context("--bid is not market.bid's params")?,
                    budget: args.budget.unwrap_or_default(),
                }),
                None => None,
            };
            let params = CronCreateParams {
                name: args.name,
                spec: CronSpec {
                    schedule: args.schedule,
                    time_zone: args.time_zone,
                    concurrency_policy,
                    starting_deadline_secs: args.starting_deadline_secs,
                    suspend: false,
                    job: if bid.is_some() {
                        None
                    } else {
                        Some(args.job.spec()?)
                    },
                    bid,
                    triggers: 0,
                },
            };
            ops::call::<CronCreate>(global, &params, None, None)?
        }
        CronCommand::Trigger { name } => {
            ops::call::<CronTrigger>(global, &CronRef { name }, None, None)?
        }
        CronCommand::Suspend { name } => {
            ops::call::<CronSuspend>(global, &CronRef { name }, None, None)?
        }
        CronCommand::Resume { name } => {
            ops::call::<CronResume>(global, &CronRef { name }, None, None)?
        }
        CronCommand::Delete { name } => {
            let answer = ops::call::<CronDelete>(global, &CronRef { name }, None, None)?;
            if global.json {
                print_json(&answer);
            } else {
                println!(
                    "cron job {} deleted (revision {})",
                    answer.name, answer.revision
                );
            }
            return Ok(());
        }
        CronCommand::List => return cron_list(global),
        CronCommand::Logs {
            name,
            run,
            attempt,
            tail,
        } => {
            let params = CronLogsParams {
                name,
                run,
                attempt,
                tail,
            };
            let answer = ops::call::<CronLogsCommand>(global, &params, None, None)?;
            print_logs(global, &answer);
            return Ok(());
        }
        CronCommand::Status { name } => return cron_status(global, name),
    };
    show_cron(global, &changed);
    Ok(())
}

fn show_cron(global: &GlobalArgs, cron: &CronJob) {
    if global.json {
        print_json(cron);
        return;
    }
    println!(
        "cron job {} revision {}: \"{}\" in {}{}, next {}",
        cron.name,
        cron.revision,
        cron.spec.schedule,
        cron.spec.time_zone,
        if cron.spec.suspend {
            " (suspended)"
        } else {
            ""
        },
        ops::when(cron.spec.next_after(ops::now_ms()))
    );
}

fn cron_list(global: &GlobalArgs) -> Result<()> {
    let answer = ops::call::<CronList>(global, &claw_api::NoParams {}, None, None)?;
    if global.json {
        print_json(&answer);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = answer
        .cron_jobs
        .iter()
        .map(|c| {
            vec![
                c.name.clone(),
                c.schedule.clone(),
                c.time_zone.clone(),
                if c.suspended { "suspended" } else { "active" }.to_owned(),
                ops::when(c.last_slot_ms),
                ops::when(c.next_ms),
                c.active_runs.to_string(),
            ]
        })
        .collect();
    print_table(
        &[
            "NAME", "SCHEDULE", "ZONE", "STATE", "LAST", "NEXT", "RUNNING",
        ],
        &rows,
    );
    Ok(())
}

fn cron_status(global: &GlobalArgs, name: String) -> Result<()> {
    let answer = ops::call::<CronStatusCommand>(global, &CronRef { name }, None, None)?;
    if global.json {
        print_json(&answer);
        return Ok(());
    }
    show_cron(global, &answer.cron);
    println!(
        "last scheduled time {}; controller {}",
        ops::when(answer.last_slot_ms),
        answer.controller.as_deref().unwrap_or("-")
    );
    if let Some(pending) = &answer.pending {
        println!("{pending}");
    }
    let rows: Vec<Vec<String>> = answer
        .runs
        .iter()
        .map(|r| {
            vec![
                r.id.clone(),
                ops::when(Some(r.started_ms)),
                phase(r.phase),
                match &answer.cron.spec.job {
                    Some(job) => format!("{}/{}", r.succeeded(), job.completions),
                    None => r.lease_id.clone().unwrap_or_else(|| "-".to_owned()),
                },
                r.reason.clone().unwrap_or_default(),
            ]
        })
        .collect();
    println!();
    print_table(
        &["RUN", "STARTED", "PHASE", "SUCCEEDED / LEASE", "REASON"],
        &rows,
    );
    for skipped in &answer.skipped {
        println!("skipped: {skipped}");
    }
    Ok(())
}
