//! `clawnode deploy`: the fleet's deployments, as this member keeps them, and the changes an
//! operator signs (create, update, rollback, pause, resume, delete).

use std::collections::BTreeMap;

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};
use claw_api::canary::CanaryAnalysis;
use claw_api::deploy::{
    CreateParams, DeployCreate, DeployDelete, DeployHistory, DeployList, DeployPause,
    DeployPromote, DeployResume, DeployRollback, DeployStatus, DeployUpdate, Deployment,
    DeploymentRef, DeploymentSpec, RollbackParams, RolloutStrategy, UpdateParams,
};
use claw_api::taints::Toleration;
use claw_api::workload::{FileMount, RunParams, ValueRef};

use crate::{GlobalArgs, ops, print_json, print_table};

/// `clawnode deploy …`.
#[derive(Debug, Subcommand)]
pub(crate) enum DeployCommand {
    /// Create a deployment: replicas of a container kept running across the fleet.
    Create(CreateArgs),
    /// Change a deployment's image, command, env or replica count (a new revision).
    Update(UpdateArgs),
    /// A deployment's current revision and spec.
    Status {
        /// The deployment.
        name: String,
    },
    /// The fleet's deployments.
    List,
    /// A deployment's kept revisions, newest first.
    History {
        /// The deployment.
        name: String,
    },
    /// Go back to a kept revision (the one before the current by default).
    Rollback {
        /// The deployment.
        name: String,
        /// The revision to go back to.
        #[arg(long)]
        revision: Option<u64>,
        /// Wait until it is rolled out, with progress on stderr.
        #[arg(long)]
        wait: bool,
    },
    /// Move a canary deployment to its next step.
    Promote {
        /// The deployment.
        name: String,
        /// Wait until it is rolled out, with progress on stderr.
        #[arg(long)]
        wait: bool,
    },
    /// Pause a deployment: no rollout or rescheduling until it is resumed.
    Pause {
        /// The deployment.
        name: String,
    },
    /// Resume a paused deployment.
    Resume {
        /// The deployment.
        name: String,
    },
    /// Delete a deployment.
    Delete {
        /// The deployment.
        name: String,
    },
}

/// `clawnode deploy create`.
#[derive(Debug, Args)]
pub(crate) struct CreateArgs {
    /// The deployment's name (1 to 32 of a-z, 0-9 and '-').
    name: String,
    /// The image each replica runs.
    #[arg(long)]
    image: String,
    /// How many replicas.
    #[arg(long, default_value_t = 1)]
    replicas: u32,
    /// GPUs per replica.
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
    /// Replicas that may run above the count during a rollout.
    #[arg(long, default_value_t = 1)]
    max_surge: u32,
    /// Replicas that may be missing during a rollout.
    #[arg(long, default_value_t = 0)]
    max_unavailable: u32,
    /// Roll out as a canary at these shares of replicas, in percent (e.g. 10,50); move on
    /// with `deploy promote`.
    #[arg(long, value_delimiter = ',', conflicts_with = "blue_green")]
    canary: Vec<u32>,
    /// Split this service's traffic by the canary's shares, and promote or roll back by
    /// itself on what the service measures of the new revision.
    #[arg(long, value_name = "SERVICE", requires = "canary")]
    canary_service: Option<String>,
    /// How long each canary step is watched, in seconds.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 600,
        requires = "canary_service"
    )]
    canary_interval: u32,
    /// The highest error rate the new revision may show, in percent.
    #[arg(
        long,
        value_name = "PERCENT",
        default_value_t = 1.0,
        requires = "canary_service"
    )]
    canary_max_errors: f64,
    /// The highest p99 latency the new revision may show, in milliseconds.
    #[arg(long, value_name = "MS", requires = "canary_service")]
    canary_max_p99_ms: Option<u32>,
    /// Requests the new revision must serve in a step before it is judged.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 20,
        requires = "canary_service"
    )]
    canary_min_requests: u32,
    /// Roll out blue-green: a whole new set, then the old one stops.
    #[arg(long)]
    blue_green: bool,
    /// Health check, as JSON: {"probe": {"type": "exec", "argv": [...]} | {"type": "tcp",
    /// "port": N} | {"type": "http", "port": N, "path": "/"}, "interval_secs", ...}.
    #[arg(long, value_name = "JSON")]
    health: Option<String>,
    /// Wait until every replica runs, with progress on stderr.
    #[arg(long)]
    wait: bool,
    /// Command and arguments for the image (after `--`).
    #[arg(last = true)]
    command: Vec<String>,
}

/// `clawnode deploy update`.
#[derive(Debug, Args)]
pub(crate) struct UpdateArgs {
    /// The deployment.
    name: String,
    /// A new image.
    #[arg(long)]
    image: Option<String>,
    /// A new replica count.
    #[arg(long)]
    replicas: Option<u32>,
    /// New env KEY=VALUE (repeatable; replaces the whole set).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// New env from secrets and configs (repeatable; replaces the whole set):
    /// NAME=secret:SECRET:KEY or NAME=config:CONFIG:KEY.
    #[arg(long = "env-from", value_name = "NAME=KIND:SOURCE:KEY")]
    env_from: Vec<String>,
    /// New secret and config files (repeatable; replaces the whole list):
    /// secret:SECRET:/PATH or config:CONFIG:/PATH.
    #[arg(long = "files", value_name = "KIND:SOURCE:/PATH")]
    files: Vec<String>,
    /// Wait until the new revision is rolled out, with progress on stderr.
    #[arg(long)]
    wait: bool,
    /// A new command (after `--`).
    #[arg(last = true)]
    command: Vec<String>,
}

/// `--env-from NAME=secret:db:password` (or `config:app:mode`): env values from the fleet's
/// configs and secrets.
pub(crate) fn value_refs(pairs: &[String]) -> Result<BTreeMap<String, ValueRef>> {
    pairs
        .iter()
        .map(|pair| {
            let parsed = pair.split_once('=').and_then(|(env, source)| {
                let (kind, rest) = source.split_once(':')?;
                let (name, key) = rest.split_once(':')?;
                let (config, secret) = sourced(kind, name)?;
                Some((
                    env.to_owned(),
                    ValueRef {
                        config,
                        secret,
                        key: key.to_owned(),
                    },
                ))
            });
            parsed.with_context(|| {
                format!(
                    "--env-from {pair:?} is not NAME=secret:SECRET:KEY or NAME=config:CONFIG:KEY"
                )
            })
        })
        .collect()
}

/// `--files secret:db:/run/secrets/db` (or `config:app:/etc/app`): a config's or secret's
/// values as files under a directory.
pub(crate) fn file_mounts(mounts: &[String]) -> Result<Vec<FileMount>> {
    mounts
        .iter()
        .map(|mount| {
            let parsed = mount.split_once(':').and_then(|(kind, rest)| {
                let (name, path) = rest.split_once(':')?;
                let (config, secret) = sourced(kind, name)?;
                Some(FileMount {
                    config,
                    secret,
                    path: path.to_owned(),
                })
            });
            parsed.with_context(|| {
                format!("--files {mount:?} is not secret:SECRET:/PATH or config:CONFIG:/PATH")
            })
        })
        .collect()
}

fn sourced(kind: &str, name: &str) -> Option<(Option<String>, Option<String>)> {
    match kind {
        "config" => Some((Some(name.to_owned()), None)),
        "secret" => Some((None, Some(name.to_owned()))),
        _ => None,
    }
}

/// `--toleration KEY` or `KEY:Effect`.
pub(crate) fn tolerations(given: &[String]) -> Result<Vec<Toleration>> {
    given
        .iter()
        .map(|text| {
            let (key, effect) = match text.split_once(':') {
                Some((key, effect)) => (
                    key,
                    Some(
                        serde_json::from_value(serde_json::Value::String(effect.to_owned()))
                            .with_context(|| {
                                format!("--toleration {text:?}: the effect is NoSchedule, PreferNoSchedule or NoExecute")
                            })?,
                    ),
                ),
                None => (text.as_str(), None),
            };
            Ok(Toleration {
                key: key.to_owned(),
                effect,
            })
        })
        .collect()
}

pub(crate) fn env_map(pairs: &[String]) -> Result<BTreeMap<String, String>> {
    pairs
        .iter()
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .with_context(|| format!("--env {pair:?} is not KEY=VALUE"))
        })
        .collect()
}

/// `clawnode deploy …`: one function per subcommand.
pub(crate) fn deploy(global: &GlobalArgs, command: DeployCommand) -> Result<()> {
    match command {
        DeployCommand::Create(args) => create(global, args),
        DeployCommand::Update(args) => {
            let params = UpdateParams {
                name: args.name,
                image: args.image,
                command: (!args.command.is_empty()).then_some(args.command),
                env: (!args.env.is_empty())
                    .then(|| env_map(&args.env))
                    .transpose()?,
                env_from: (!args.env_from.is_empty())
                    .then(|| value_refs(&args.env_from))
                    .transpose()?,
                files: (!args.files.is_empty())
                    .then(|| file_mounts(&args.files))
                    .transpose()?,
                replicas: args.replicas,
                strategy: None,
                health: None,
            };
            if params.is_empty() {
                bail!(
                    "nothing to change: give --image, --replicas, --env, --env-from, --files or a command"
                );
            }
            let answer = ops::call::<DeployUpdate>(global, &params, None, None)?;
            show(global, &answer)?;
            wait_for(global, &answer, args.wait)
        }
        DeployCommand::Status { name } => status(global, name),
        DeployCommand::List => list(global),
        DeployCommand::History { name } => history(global, name),
        DeployCommand::Rollback {
            name,
            revision,
            wait,
        } => {
            let params = RollbackParams { name, revision };
            let answer = ops::call::<DeployRollback>(global, &params, None, None)?;
            show(global, &answer)?;
            wait_for(global, &answer, wait)
        }
        DeployCommand::Promote { name, wait } => {
            let params = DeploymentRef { name };
            let answer = ops::call::<DeployPromote>(global, &params, None, None)?;
            show(global, &answer)?;
            wait_for(global, &answer, wait)
        }
        DeployCommand::Pause { name } => show(
            global,
            &ops::call::<DeployPause>(global, &DeploymentRef { name }, None, None)?,
        ),
        DeployCommand::Resume { name } => show(
            global,
            &ops::call::<DeployResume>(global, &DeploymentRef { name }, None, None)?,
        ),
        DeployCommand::Delete { name } => {
            let answer = ops::call::<DeployDelete>(global, &DeploymentRef { name }, None, None)?;
            if global.json {
                print_json(&answer);
            } else {
                println!(
                    "deployment {} deleted (revision {})",
                    answer.name, answer.revision
                );
            }
            Ok(())
        }
    }
}

/// With `wait`, follows the rollout of `deployment`'s revision on stderr until every replica
/// runs its template (and is healthy where checked); fails when the revision is rolled back
/// for failing its health check, or after 10 minutes.
fn wait_for(global: &GlobalArgs, deployment: &Deployment, wait: bool) -> Result<()> {
    if !wait {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let reference = DeploymentRef {
        name: deployment.name.clone(),
    };
    let mut last = String::new();
    loop {
        let status = ops::call::<DeployStatus>(global, &reference, None, None)?;
        let revision = status.deployment.revision;
        if status.failed_revisions.contains(&revision) {
            let check = if status.canary.as_ref().is_some_and(|c| c.failed) {
                "its canary analysis"
            } else {
                "its health check"
            };
            bail!(
                "revision {revision} failed {check} and was rolled back{}",
                status
                    .pending
                    .as_deref()
                    .map(|note| format!(": {note}"))
                    .unwrap_or_default()
            );
        }
        let wanted = status.deployment.spec.replicas as usize;
        let others = status.replicas.len().saturating_sub(status.ready as usize);
        let line = format!(
            "{}: revision {revision}, {} of {wanted} ready{}{}",
            status.deployment.name,
            status.ready,
            if others > 0 {
                format!(", {others} other replica(s)")
            } else {
                String::new()
            },
            status
                .pending
                .as_deref()
                .map(|note| format!("; {note}"))
                .unwrap_or_default()
        );
        if line != last {
            eprintln!("{line}");
            last = line;
        }
        if status.ready as usize == wanted && status.replicas.len() == wanted {
            eprintln!("{}: rolled out", status.deployment.name);
            return Ok(());
        }
        if started.elapsed() > std::time::Duration::from_secs(600) {
            bail!("not rolled out after 10 minutes: {last}");
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

fn create(global: &GlobalArgs, args: CreateArgs) -> Result<()> {
    let wait = args.wait;
    let template = RunParams {
        image: args.image,
        command: args.command,
        name: None,
        env: env_map(&args.env)?,
        env_from: value_refs(&args.env_from)?,
        files: file_mounts(&args.files)?,
        volume_mounts: Vec::new(),
        namespace: None,
        ports: Vec::new(),
        volumes: Vec::new(),
        gpus: args.gpus,
        gpu_uuids: None,
        cpus: None,
        memory_mib: None,
        restart: Default::default(),
        labels: BTreeMap::new(),
        isolation: Default::default(),
        writable_root: false,
    };
    let params = CreateParams {
        name: args.name,
        spec: DeploymentSpec {
            replicas: args.replicas,
            template,
            gpu_model: args.gpu_model,
            strategy: if args.blue_green {
                RolloutStrategy::BlueGreen
            } else if !args.canary.is_empty() {
                RolloutStrategy::Canary {
                    steps: args.canary,
                    step: 0,
                    analysis: args.canary_service.map(|service| CanaryAnalysis {
                        service,
                        interval_secs: args.canary_interval,
                        max_error_percent: args.canary_max_errors,
                        max_p99_ms: args.canary_max_p99_ms,
                        min_requests: args.canary_min_requests,
                    }),
                }
            } else {
                RolloutStrategy::Rolling {
                    max_surge: args.max_surge,
                    max_unavailable: args.max_unavailable,
                }
            },
            health: args
                .health
                .map(|text| serde_json::from_str(&text).context("--health is not a health check"))
                .transpose()?,
            paused: false,
            secret_revisions: BTreeMap::new(),
            tolerations: tolerations(&args.tolerations)?,
        },
    };
    let answer = ops::call::<DeployCreate>(global, &params, None, None)?;
    show(global, &answer)?;
    wait_for(global, &answer, wait)
}

fn summary(deployment: &Deployment) -> Vec<String> {
    let spec = &deployment.spec;
    vec![
        deployment.name.clone(),
        deployment.revision.to_string(),
        spec.replicas.to_string(),
        spec.template.image.clone(),
        spec.template.gpus.unwrap_or(0).to_string(),
        if spec.paused { "paused" } else { "active" }.to_owned(),
        deployment.signed_by.clone(),
    ]
}

const COLUMNS: [&str; 7] = [
    "NAME",
    "REVISION",
    "REPLICAS",
    "IMAGE",
    "GPUS",
    "STATE",
    "SIGNED BY",
];

fn show(global: &GlobalArgs, deployment: &Deployment) -> Result<()> {
    if global.json {
        print_json(deployment);
    } else {
        print_table(&COLUMNS, &[summary(deployment)]);
    }
    Ok(())
}

fn status(global: &GlobalArgs, name: String) -> Result<()> {
    let answer = ops::call::<DeployStatus>(global, &DeploymentRef { name }, None, None)?;
    if global.json {
        print_json(&answer);
        return Ok(());
    }
    print_table(&COLUMNS, &[summary(&answer.deployment)]);
    println!(
        "\n{} of {} ready; controller {}",
        answer.ready,
        answer.deployment.spec.replicas,
        answer.controller.as_deref().unwrap_or("-")
    );
    if let Some(pending) = &answer.pending {
        println!("{pending}");
    }
    if !answer.failed_revisions.is_empty() {
        println!(
            "revisions that failed their health check or canary analysis: {:?}",
            answer.failed_revisions
        );
    }
    if let Some(canary) = &answer.canary {
        let p99 = |p: Option<f64>| p.map_or("-".to_owned(), |p| format!("{p:.1} ms"));
        println!(
            "canary on service {}: step {}, {} % of traffic{}\n  new revision: {} requests, \
             {:.1} % errors, p99 {}\n  stable:       {} requests, {:.1} % errors, p99 {}",
            canary.service,
            canary.step + 1,
            canary.traffic_percent,
            if canary.failed { " (failed)" } else { "" },
            canary.canary.requests,
            canary.canary.error_percent,
            p99(canary.canary.p99_ms),
            canary.stable.requests,
            canary.stable.error_percent,
            p99(canary.stable.p99_ms),
        );
        if let Some(note) = &canary.note {
            println!("  {note}");
        }
    }
    let rows: Vec<Vec<String>> = answer
        .replicas
        .iter()
        .map(|r| {
            vec![
                r.replica.workload.clone(),
                r.node_name.clone(),
                r.replica.revision.to_string(),
                r.replica.state.to_string(),
                r.replica
                    .health
                    .map_or("-".to_owned(), |h| format!("{h:?}").to_lowercase()),
            ]
        })
        .collect();
    println!();
    print_table(
        &[
            "REPLICA",
            "NODE (AS IT NAMES ITSELF)",
            "REVISION",
            "STATE",
            "HEALTH",
        ],
        &rows,
    );
    for node in &answer.unreachable {
        println!("unreachable: {node}");
    }
    Ok(())
}

fn list(global: &GlobalArgs) -> Result<()> {
    let answer = ops::call::<DeployList>(global, &claw_api::NoParams {}, None, None)?;
    if global.json {
        print_json(&answer);
    } else {
        let rows: Vec<Vec<String>> = answer.deployments.iter().map(summary).collect();
        print_table(&COLUMNS, &rows);
    }
    Ok(())
}

fn history(global: &GlobalArgs, name: String) -> Result<()> {
    let answer = ops::call::<DeployHistory>(global, &DeploymentRef { name }, None, None)?;
    if global.json {
        print_json(&answer);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = answer
        .revisions
        .iter()
        .map(|r| {
            let (replicas, image) = r.spec.as_ref().map_or_else(
                || ("-".to_owned(), "(deleted)".to_owned()),
                |s| (s.replicas.to_string(), s.template.image.clone()),
            );
            vec![
                r.revision.to_string(),
                replicas,
                image,
                r.signed_at_ms.to_string(),
                r.signed_by.clone(),
            ]
        })
        .collect();
    print_table(
        &[
            "REVISION",
            "REPLICAS",
            "IMAGE",
            "SIGNED (UNIX MS)",
            "SIGNED BY",
        ],
        &rows,
    );
    Ok(())
}
