//! `clawnode autoscale`: the fleet's autoscalers, and the changes an operator signs.

use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};
use claw_api::autoscale::{
    AutoscaleAdjust, AutoscaleAdjustParams, AutoscaleCreate, AutoscaleCreateParams,
    AutoscaleDelete, AutoscaleRef, AutoscaleSpec, AutoscaleStatusCommand, Autoscaler,
};

use crate::{GlobalArgs, ops, print_json, print_table};

/// `clawnode autoscale …`.
#[derive(Debug, Subcommand)]
pub(crate) enum AutoscaleCommand {
    /// Scale a deployment between --min and --max replicas on a metric toward a target.
    Create(Box<CreateArgs>),
    /// An autoscaler, the count it decided and its decisions with their reasons.
    Status {
        /// The autoscaler.
        name: String,
    },
    /// Change an autoscaler's min, max, target or cooldown.
    Adjust {
        /// The autoscaler.
        name: String,
        /// A new minimum.
        #[arg(long)]
        min: Option<u32>,
        /// A new maximum.
        #[arg(long)]
        max: Option<u32>,
        /// A new target.
        #[arg(long)]
        target: Option<f64>,
        /// A new cooldown, in seconds.
        #[arg(long)]
        cooldown_secs: Option<u32>,
    },
    /// Delete an autoscaler.
    Delete {
        /// The autoscaler.
        name: String,
    },
}

/// `clawnode autoscale create`.
#[derive(Debug, Args)]
pub(crate) struct CreateArgs {
    /// The autoscaler's name (1 to 32 of a-z, 0-9 and '-').
    name: String,
    /// The deployment it scales.
    #[arg(long)]
    deployment: String,
    /// Fewest replicas.
    #[arg(long)]
    min: u32,
    /// Most replicas.
    #[arg(long)]
    max: u32,
    /// The metric, as JSON: {"type": "gpu_utilization"} | {"type": "cpu"} | {"type": "file",
    /// "path": "/run/load"} | {"type": "http", "port": N, "path": "/load"}.
    #[arg(long, value_name = "JSON")]
    metric: String,
    /// The value the replicas' mean reading should stay near.
    #[arg(long)]
    target: f64,
    /// Seconds after a change before the count may go down.
    #[arg(long, default_value_t = 60)]
    cooldown_secs: u32,
}

/// `clawnode autoscale …`: one arm per subcommand.
pub(crate) fn autoscale(global: &GlobalArgs, command: AutoscaleCommand) -> Result<()> {
    let changed = match command {
        AutoscaleCommand::Create(args) => {
            let params = AutoscaleCreateParams {
                name: args.name,
                spec: AutoscaleSpec {
                    deployment: args.deployment,
                    min: args.min,
                    max: args.max,
                    metric: serde_json::from_str(&args.metric)
                        .context("--metric is not a metric")?,
                    target: args.target,
                    cooldown_secs: args.cooldown_secs,
                },
            };
            ops::call::<AutoscaleCreate>(global, &params, None, None)?
        }
        AutoscaleCommand::Adjust {
            name,
            min,
            max,
            target,
            cooldown_secs,
        } => {
            let params = AutoscaleAdjustParams {
                name,
                min,
                max,
                target,
                cooldown_secs,
            };
            ops::call::<AutoscaleAdjust>(global, &params, None, None)?
        }
        AutoscaleCommand::Delete { name } => {
            let answer = ops::call::<AutoscaleDelete>(global, &AutoscaleRef { name }, None, None)?;
            if global.json {
                print_json(&answer);
            } else {
                println!(
                    "autoscaler {} deleted (revision {})",
                    answer.name, answer.revision
                );
            }
            return Ok(());
        }
        AutoscaleCommand::Status { name } => return status(global, name),
    };
    show(global, &changed);
    Ok(())
}

fn summary(autoscaler: &Autoscaler) -> String {
    let spec = &autoscaler.spec;
    format!(
        "autoscaler {} revision {}: deployment {}, {} to {} replicas, {} toward {}, cooldown {} s",
        autoscaler.name,
        autoscaler.revision,
        spec.deployment,
        spec.min,
        spec.max,
        serde_json::to_string(&spec.metric).unwrap_or_default(),
        spec.target,
        spec.cooldown_secs
    )
}

fn show(global: &GlobalArgs, autoscaler: &Autoscaler) {
    if global.json {
        print_json(autoscaler);
    } else {
        println!("{}", summary(autoscaler));
    }
}

fn status(global: &GlobalArgs, name: String) -> Result<()> {
    let answer = ops::call::<AutoscaleStatusCommand>(global, &AutoscaleRef { name }, None, None)?;
    if global.json {
        print_json(&answer);
        return Ok(());
    }
    println!("{}", summary(&answer.autoscaler));
    let Some(scale) = &answer.scale else {
        println!(
            "no decision yet; controller {}",
            answer.controller.as_deref().unwrap_or("-")
        );
        return Ok(());
    };
    println!(
        "{} replicas decided; last mean reading {}; controller {}",
        scale.replicas,
        scale.value.map_or("-".to_owned(), |v| format!("{v:.1}")),
        answer.controller.as_deref().unwrap_or("-")
    );
    let rows: Vec<Vec<String>> = scale
        .decisions
        .iter()
        .map(|d| {
            vec![
                d.at_ms.to_string(),
                format!("{} -> {}", d.from, d.to),
                d.reason.clone(),
            ]
        })
        .collect();
    println!();
    print_table(&["AT (UNIX MS)", "REPLICAS", "REASON"], &rows);
    Ok(())
}
