//! Operator commands over the control API: `invoke` (with a progress display for long
//! operations), `ps`, `logs` and `health`.

use std::io::{IsTerminal as _, Write as _};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use clap::Args;
use claw_api::node::{NodeDrain, NodeHealth};
use claw_api::workload::{ListParams, LogsParams, WorkloadList, WorkloadLogs, WorkloadRun};
use claw_api::{Command, NoParams};
use clawnode::control::{ControlClient, InvokeBody};
use clawnode::workloads::ProgressReport;
use rand::RngCore as _;
use serde_json::Value;

use crate::{GlobalArgs, print_json, print_table};

/// Commands whose progress is worth showing while they run.
const LONG_COMMANDS: &[&str] = &[WorkloadRun::NAME, NodeDrain::NAME];

#[derive(Debug, Args)]
pub(crate) struct InvokeArgs {
    /// Command name, e.g. gpu.list.
    command: String,
    /// Params as a JSON object.
    #[arg(long, default_value = "{}")]
    params: String,
    /// Peer id of the node to run it on (default: this node).
    #[arg(long)]
    node: Option<String>,
    /// Give up waiting after this many milliseconds (at most 120,000).
    #[arg(long, default_value_t = 30_000)]
    timeout_ms: u64,
    /// Idempotency key: a retry with the same key does not start the work twice.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Run the command under this API key (`auth.create_key` makes one): with no more than
    /// the key allows. Read from the environment rather than the command line where you can.
    #[arg(long, env = "CLAWNODE_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct PsArgs {
    /// Also list stopped, exited, failed and lost workloads.
    #[arg(long, short)]
    all: bool,
    /// Show it again every 2 s until interrupted.
    #[arg(long)]
    watch: bool,
    /// Peer id of the node to ask (default: this node).
    #[arg(long)]
    node: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct LogsArgs {
    /// Workload id or name.
    workload: String,
    /// Last N lines.
    #[arg(long, default_value_t = 100)]
    tail: u32,
    /// Only lines after this Unix time (seconds).
    #[arg(long)]
    since: Option<u32>,
    /// Peer id of the node that runs it (default: this node).
    #[arg(long)]
    node: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct HealthArgs {
    /// Peer id of the node to ask (default: this node).
    #[arg(long)]
    node: Option<String>,
}

/// Runs command `C` on this node (or on `node`, through it) with typed params; its answer,
/// decoded by `C`'s own definition. With an idempotency key, the node's progress is shown while
/// it runs (unless the output is JSON).
pub(crate) fn call<C: Command>(
    global: &GlobalArgs,
    params: &C::Params,
    node: Option<String>,
    key: Option<String>,
) -> Result<C::Answer> {
    let client = ControlClient::connect(&global.data_dir)?;
    let body = InvokeBody {
        command: C::NAME.to_owned(),
        params: serde_json::to_value(params).context("encoding the params")?,
        node,
        deadline_ms: Some(120_000),
        idempotency_key: key.clone(),
        api_key: None,
    };
    let answer = match key.filter(|_| !global.json) {
        Some(key) => with_progress(&client, &body, &key)?,
        None => client.invoke(&body)?,
    };
    Ok(C::decode(answer)?)
}

/// A fresh idempotency key, `<prefix>-` and 32 hex digits.
pub(crate) fn fresh_key(prefix: &str) -> String {
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{prefix}-{}", hex::encode(bytes))
}

pub(crate) fn invoke(global: &GlobalArgs, args: InvokeArgs) -> Result<()> {
    let params: Value = serde_json::from_str(&args.params).context("--params is not JSON")?;
    let client = ControlClient::connect(&global.data_dir)?;
    let long = LONG_COMMANDS.contains(&args.command.as_str()) && args.node.is_none();
    let key = args
        .idempotency_key
        .or_else(|| long.then(|| fresh_key("cli")));
    let body = InvokeBody {
        command: args.command,
        params,
        node: args.node,
        deadline_ms: Some(args.timeout_ms),
        idempotency_key: key.clone(),
        api_key: args.api_key.map(claw_mesh::ApiToken::new),
    };
    let answer = match key.filter(|_| long && !global.json) {
        Some(key) => with_progress(&client, &body, &key)?,
        None => client.invoke(&body)?,
    };
    print_json(&answer);
    Ok(())
}

/// Runs the invoke on a thread while this one polls the node for its progress and draws it on
/// stderr: one updating line on a terminal, a line per stage otherwise.
pub(crate) fn with_progress(client: &ControlClient, body: &InvokeBody, key: &str) -> Result<Value> {
    let terminal = std::io::stderr().is_terminal();
    std::thread::scope(|scope| {
        let call = scope.spawn(|| client.invoke(body));
        let started = Instant::now();
        let mut last_stage = String::new();
        while !call.is_finished() {
            std::thread::sleep(Duration::from_millis(200));
            let Ok(answer) = client.get(&format!("/v1/progress?key={key}")) else {
                continue;
            };
            let Ok(report) = serde_json::from_value::<ProgressReport>(answer["progress"].clone())
            else {
                continue;
            };
            let line = progress_line(&report, started.elapsed());
            if terminal {
                eprint!("\r\x1b[2K{line}");
                let _ = std::io::stderr().flush();
            } else if report.stage != last_stage && !report.stage.is_empty() {
                eprintln!("{line}");
            }
            last_stage = report.stage;
        }
        if terminal && !last_stage.is_empty() {
            eprint!("\r\x1b[2K");
        }
        match call.join() {
            Ok(result) => result.map_err(Into::into),
            Err(_) => anyhow::bail!("the invoke thread panicked"),
        }
    })
}

fn progress_line(report: &ProgressReport, elapsed: Duration) -> String {
    let amount = if report.total == 0 {
        String::new()
    } else if report.total > 10_000 {
        format!(
            " {:.1}/{:.1} MiB",
            report.done as f64 / 1_048_576.0,
            report.total as f64 / 1_048_576.0
        )
    } else {
        format!(" {}/{}", report.done, report.total)
    };
    format!("{}{amount} ({} s)", report.stage, elapsed.as_secs())
}

/// How often `--watch` shows a view again.
const WATCH_EVERY: Duration = Duration::from_secs(2);

/// Runs `show` once, or with `watch` every 2 s until interrupted: on a terminal the screen is
/// cleared first, otherwise each view follows the last (with `--json`, one document per view). A
/// failed view (the node restarting) is reported on stderr and the watch goes on.
pub(crate) fn watching(watch: bool, mut show: impl FnMut() -> Result<()>) -> Result<()> {
    if !watch {
        return show();
    }
    let terminal = std::io::stdout().is_terminal();
    loop {
        if terminal {
            print!("\x1b[2J\x1b[H");
        }
        if let Err(error) = show() {
            eprintln!("error: {error:#}");
        }
        let _ = std::io::stdout().flush();
        std::thread::sleep(WATCH_EVERY);
    }
}

pub(crate) fn ps(global: &GlobalArgs, args: PsArgs) -> Result<()> {
    watching(args.watch, || ps_once(global, args.all, args.node.clone()))
}

fn ps_once(global: &GlobalArgs, all: bool, node: Option<String>) -> Result<()> {
    let params = ListParams {
        all,
        ..ListParams::default()
    };
    let answer = call::<WorkloadList>(global, &params, node, None)?;
    if global.json {
        print_json(&answer);
        return Ok(());
    }
    let workloads = answer.workloads;
    let now = claw_attestation::unix_millis(std::time::SystemTime::now());
    let rows: Vec<Vec<String>> = workloads
        .iter()
        .map(|w| {
            let gpus = if w.gpus.is_empty() {
                "-".to_owned()
            } else if w.simulated_gpus {
                format!("{} (simulated)", w.gpus.len())
            } else {
                w.gpus.len().to_string()
            };
            vec![
                w.id.clone(),
                w.name.clone().unwrap_or_else(|| "-".into()),
                w.image.clone(),
                w.state.to_string(),
                gpus,
                age(now.saturating_sub(w.created_ms)),
                w.reason.clone().unwrap_or_default(),
            ]
        })
        .collect();
    print_table(
        &["ID", "NAME", "IMAGE", "STATE", "GPUS", "AGE", "REASON"],
        &rows,
    );
    Ok(())
}

/// Now, Unix ms.
pub(crate) fn now_ms() -> u64 {
    claw_attestation::unix_millis(std::time::SystemTime::now())
}

/// A Unix-ms time as UTC text.
pub(crate) fn when(ms: Option<u64>) -> String {
    ms.and_then(|ms| i64::try_from(ms).ok())
        .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
        .map_or("-".to_owned(), |t| {
            t.strftime("%Y-%m-%d %H:%M UTC").to_string()
        })
}

fn age(ms: u64) -> String {
    let secs = ms / 1000;
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86_400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

pub(crate) fn logs(global: &GlobalArgs, args: LogsArgs) -> Result<()> {
    let params = LogsParams {
        workload: args.workload,
        tail: Some(args.tail),
        since: args.since,
    };
    let answer = call::<WorkloadLogs>(global, &params, args.node, None)?;
    if global.json {
        print_json(&answer);
        return Ok(());
    }
    for line in &answer.lines {
        if line.stream == "stderr" {
            eprintln!("{}", line.line);
        } else {
            println!("{}", line.line);
        }
    }
    if answer.truncated {
        eprintln!("(output cut at the node's limit; use --tail for fewer lines)");
    }
    Ok(())
}

pub(crate) fn health(global: &GlobalArgs, args: HealthArgs) -> Result<()> {
    let report = call::<NodeHealth>(global, &NoParams {}, args.node, None)?;
    if global.json {
        print_json(&serde_json::to_value(&report)?);
        return Ok(());
    }
    let cordoned = if report.cordoned { " (cordoned)" } else { "" };
    println!("{}{cordoned}\n", report.status);
    let rows: Vec<Vec<String>> = report
        .checks
        .iter()
        .map(|c| vec![c.component.clone(), c.status.to_string(), c.detail.clone()])
        .collect();
    print_table(&["COMPONENT", "STATUS", "DETAIL"], &rows);
    Ok(())
}
