//! The `clawnode` command line.

mod autoscale_cli;
mod chain_cli;
mod daemon;
mod deploy_cli;
mod job_cli;
mod market_cli;
mod membership_cli;
mod ops;
mod storage_cli;
mod up;
mod values_cli;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use clap::{Args, Parser, Subcommand};
use claw_attestation::{
    Envelope, GpuDevice, HardwareInventory, NvmlStatus, SimulatedGpuProfile, VerifiedEnvelope,
    Verifier, peer_id_of,
};
use clawnode::control::{ControlClient, FleetMemberView};
use clawnode::store::AuditRecord;
use clawnode::{DataDir, NodeConfig, WalletOutcome, open_gpu_probe, sign_inventory};
use serde_json::json;

/// Clawbernetes node agent: GPU inventory, mesh membership and workloads.
#[derive(Debug, Parser)]
#[command(name = "clawnode", version, about)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
pub(crate) struct GlobalArgs {
    /// Directory holding the node's identity, wallet, config and store.
    #[arg(long, global = true, env = "CLAWNODE_DATA_DIR", default_value_os_t = default_data_dir())]
    pub(crate) data_dir: PathBuf,
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// Write logs (stderr) as one JSON object per line. The level comes from RUST_LOG.
    #[arg(long, global = true, env = "CLAWNODE_LOG_JSON")]
    pub(crate) log_json: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the node identity, a Solana wallet and a default config.
    Init(InitArgs),
    /// Change settings in the node's config.toml, keeping every other one; safe to repeat
    /// (node/deploy/bootstrap.sh uses it). A running node reads them at its next start.
    Configure(ConfigureArgs),
    /// Show the node's peer id, OpenClaw device id and wallet address.
    Identity,
    /// Read the hardware, sign the inventory and show it.
    Inventory(InventoryArgs),
    /// Join the mesh, announce this node and answer commands until stopped.
    Run(RunArgs),
    /// Show the fleet as the running node on this data directory sees it.
    Fleet {
        /// Show it again every 2 s until interrupted.
        #[arg(long)]
        watch: bool,
    },
    /// Fleet membership: admit a peer (as its operator) or install the credential it got.
    Membership {
        #[command(subcommand)]
        command: membership_cli::MembershipCommand,
    },
    /// Run a command on the running node, or through it on a peer.
    Invoke(ops::InvokeArgs),
    /// List the running node's workloads.
    Ps(ops::PsArgs),
    /// Show a workload's recent output.
    Logs(ops::LogsArgs),
    /// Show whether the node is healthy, degraded or unhealthy, and why.
    Health(ops::HealthArgs),
    /// Start a whole local fleet: the embedded chain, provider nodes, a funded buyer, and the
    /// bridge to an OpenClaw gateway with --gateway. Ctrl-C stops it.
    Up(up::UpArgs),
    /// Run the embedded Solana localnet: MOLT mint, funded faucet, JSON-RPC on loopback.
    Localnet(chain_cli::LocalnetArgs),
    /// The node's Solana wallet: address, balances, localnet airdrops, MOLT transfers.
    #[command(subcommand)]
    Wallet(chain_cli::WalletCommand),
    /// The GPU market: offers, bids that lease and run, leases, cancel.
    #[command(subcommand)]
    Market(market_cli::MarketCommand),
    /// The fleet's deployments: replicas kept running across the fleet, changed by operators.
    #[command(subcommand)]
    Deploy(deploy_cli::DeployCommand),
    /// The fleet's jobs: pods run to completion across the fleet.
    #[command(subcommand)]
    Job(job_cli::JobCommand),
    /// The fleet's cron jobs: jobs run on a schedule in a time zone.
    #[command(subcommand)]
    Cron(job_cli::CronCommand),
    /// The fleet's autoscalers: deployments scaled on a metric between a min and a max.
    #[command(subcommand)]
    Autoscale(autoscale_cli::AutoscaleCommand),
    /// The fleet's configs: named plain values workloads use as env or files.
    #[command(subcommand)]
    Config(values_cli::ConfigCommand),
    /// The fleet's secrets: values sealed to the nodes allowed to use them, never shown.
    #[command(subcommand)]
    Secret(values_cli::SecretCommand),
    /// The node's named volumes: Docker volumes workloads mount by name.
    #[command(subcommand)]
    Volume(storage_cli::VolumeCommand),
    /// Backups of the node's volumes, signed with their digest, kept here or on another member.
    #[command(subcommand)]
    Backup(storage_cli::BackupCommand),
    /// Show the running node's audit log: every command it answered, newest first.
    Audit {
        /// How many records.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Multiaddr to listen on (repeatable); replaces `mesh.listen` from the config.
    #[arg(long, value_name = "MULTIADDR")]
    listen: Vec<String>,
    /// Peer to join through, ending in /p2p/<peer id> (repeatable); added to `mesh.bootstrap`.
    #[arg(long, value_name = "MULTIADDR")]
    bootstrap: Vec<String>,
    /// Also connect to this OpenClaw gateway as its own node (e.g. ws://127.0.0.1:18789); the
    /// token comes from $CLAWNODE_GATEWAY_TOKEN or gateway.token_file.
    #[arg(long, value_name = "URL")]
    gateway: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics (loopback only); replaces
    /// `metrics.listen` from the config.
    #[arg(long, value_name = "ADDR", env = "CLAWNODE_METRICS")]
    metrics: Option<String>,
}

#[derive(Debug, Args)]
struct ConfigureArgs {
    /// The node's name in the fleet (`node.name`).
    #[arg(long)]
    name: Option<String>,
    /// The OpenClaw gateway to connect to as a node (`gateway.url`), e.g. ws://10.0.0.2:18789.
    #[arg(long, value_name = "URL")]
    gateway: Option<String>,
    /// The file holding the gateway token (`gateway.token_file`; keep it 0600).
    #[arg(long, value_name = "PATH")]
    gateway_token_file: Option<String>,
    /// A peer to join through, ending in /p2p/<peer id> (repeatable; added to `mesh.bootstrap`
    /// unless already there).
    #[arg(long, value_name = "MULTIADDR")]
    bootstrap: Vec<String>,
    /// Mesh addresses to listen on (repeatable; replace `mesh.listen`).
    #[arg(long, value_name = "MULTIADDR")]
    listen: Vec<String>,
    /// A peer given the operate role (repeatable; added to `access.operators` unless there).
    #[arg(long, value_name = "PEER_ID")]
    operator: Vec<String>,
    /// A peer given the admin role (repeatable; added to `access.admins` unless there).
    #[arg(long, value_name = "PEER_ID")]
    admin: Vec<String>,
    /// Serve Prometheus metrics on this loopback address (`metrics.listen`).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
    /// Serve HTTP for the ingress rules that name this node on this address
    /// (`ingress.listen`), e.g. 0.0.0.0:80.
    #[arg(long, value_name = "ADDR")]
    ingress: Option<String>,
}

#[derive(Debug, Args)]
struct InitArgs {
    /// Replace an existing node identity (an existing wallet is always kept).
    #[arg(long)]
    force: bool,
    /// Network to join: localnet, devnet, mainnet or a private fleet id.
    #[arg(long, default_value = "localnet")]
    network: String,
    /// Declare simulated GPUs, as MODEL:COUNT:MEMORY_MIB (repeatable). They are marked
    /// `simulated` in every signed report.
    #[arg(long = "simulated-gpu", value_name = "MODEL:COUNT:MEMORY_MIB", value_parser = parse_simulated_gpu)]
    simulated_gpus: Vec<SimulatedGpuProfile>,
}

#[derive(Debug, Args)]
struct InventoryArgs {
    /// Decode and verify the signed report again before printing it.
    #[arg(long)]
    verify: bool,
    /// Verify a saved report from FILE instead of reading this machine.
    #[arg(long, value_name = "FILE", conflicts_with = "save")]
    from: Option<PathBuf>,
    /// Also write the signed report's wire bytes to FILE.
    #[arg(long, value_name = "FILE")]
    save: Option<PathBuf>,
}

fn default_data_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".clawnode")
}

fn parse_simulated_gpu(spec: &str) -> Result<SimulatedGpuProfile, String> {
    let mut parts = spec.rsplitn(3, ':');
    let (Some(memory), Some(count), Some(model)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("{spec:?} is not MODEL:COUNT:MEMORY_MIB"));
    };
    let profile = SimulatedGpuProfile {
        model: model.to_owned(),
        count: count
            .parse()
            .map_err(|_| format!("GPU count {count:?} is not a number"))?,
        memory_mib: memory
            .parse()
            .map_err(|_| format!("GPU memory {memory:?} is not a number of MiB"))?,
    };
    profile.validate()?;
    Ok(profile)
}

/// A reader that stops reading (`clawnode fleet --json | head`) closes the pipe; printing to it
/// then panics inside `println!`. That is the reader's choice, not a failure: exit quietly, as
/// Unix tools do, and leave every other panic to the default hook.
fn exit_quietly_on_closed_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info);
    }));
}

fn main() -> ExitCode {
    exit_quietly_on_closed_pipe();
    let cli = Cli::parse();
    init_logging(
        if matches!(cli.command, Command::Run(_) | Command::Localnet(_)) {
            "info"
        } else {
            "warn"
        },
        cli.global.log_json,
    );
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(default_level: &str, json: bool) {
    claw_bridge::logs::init(default_level, json);
}

fn run(cli: Cli) -> Result<()> {
    let global = &cli.global;
    match cli.command {
        Command::Init(args) => init(global, args),
        Command::Configure(args) => configure(global, args),
        Command::Identity => identity(global),
        Command::Inventory(args) => inventory(global, args),
        Command::Run(args) => {
            let dir = DataDir::open(&global.data_dir)?;
            let options = clawnode::NodeOptions {
                listen: args.listen,
                bootstrap: args.bootstrap,
                gateway: args.gateway,
                metrics: args.metrics,
            };
            let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
            runtime.block_on(daemon::run(dir, options, global.json))
        }
        Command::Fleet { watch } => ops::watching(watch, || fleet(global)),
        Command::Membership { command } => membership_cli::membership(global, command),
        Command::Invoke(args) => ops::invoke(global, args),
        Command::Ps(args) => ops::ps(global, args),
        Command::Logs(args) => ops::logs(global, args),
        Command::Health(args) => ops::health(global, args),
        Command::Localnet(args) => chain_cli::localnet(global, &args),
        Command::Up(args) => up::up(global, args),
        Command::Wallet(command) => chain_cli::wallet(global, command),
        Command::Market(command) => market_cli::market(global, command),
        Command::Deploy(command) => deploy_cli::deploy(global, command),
        Command::Job(command) => job_cli::job(global, command),
        Command::Cron(command) => job_cli::cron(global, command),
        Command::Autoscale(command) => autoscale_cli::autoscale(global, command),
        Command::Config(command) => values_cli::config(global, command),
        Command::Secret(command) => values_cli::secret(global, command),
        Command::Volume(command) => storage_cli::volume(global, command),
        Command::Backup(command) => storage_cli::backup(global, command),
        Command::Audit { limit } => audit(global, limit),
    }
}

fn audit(global: &GlobalArgs, limit: usize) -> Result<()> {
    let client = ControlClient::connect(&global.data_dir)?;
    let answer = client.get(&format!("/v1/audit?limit={limit}"))?;
    if global.json {
        print_json(&answer);
        return Ok(());
    }
    let records: Vec<AuditRecord> = serde_json::from_value(answer["records"].clone())
        .context("the node answered an unexpected audit shape")?;
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            vec![
                r.at_ms.to_string(),
                r.caller.clone(),
                r.command.clone(),
                r.outcome.clone(),
                format!("{} ms", r.duration_ms),
            ]
        })
        .collect();
    print_table(
        &["AT (UNIX MS)", "CALLER", "COMMAND", "OUTCOME", "TOOK"],
        &rows,
    );
    Ok(())
}

fn fleet(global: &GlobalArgs) -> Result<()> {
    let client = ControlClient::connect(&global.data_dir)?;
    let answer = client.get("/v1/fleet")?;
    if global.json {
        print_json(&answer);
        return Ok(());
    }
    let members: Vec<FleetMemberView> = serde_json::from_value(answer["members"].clone())
        .context("the node answered an unexpected fleet shape")?;
    let rows: Vec<Vec<String>> = members
        .iter()
        .map(|m| {
            let simulated = if m.simulated_gpus > 0 {
                format!(" ({} simulated)", m.simulated_gpus)
            } else {
                String::new()
            };
            vec![
                m.peer_id.clone(),
                m.name.clone(),
                m.region.clone().unwrap_or_else(|| "-".into()),
                format!("{}/{}{simulated}", m.free_gpus, m.gpus),
                if m.models.is_empty() {
                    "-".into()
                } else {
                    m.models.join(", ")
                },
                m.reachability.clone(),
                m.path.clone().unwrap_or_else(|| "-".into()),
                m.standing.clone(),
                m.software_version.clone(),
            ]
        })
        .collect();
    print_table(
        &[
            "PEER",
            "NAME",
            "REGION",
            "FREE/GPUS",
            "MODELS",
            "REACHABILITY",
            "PATH",
            "FLEET",
            "VERSION",
        ],
        &rows,
    );
    println!("\n{} node(s)", members.len());
    Ok(())
}

fn configure(global: &GlobalArgs, args: ConfigureArgs) -> Result<()> {
    let mut dir = DataDir::open(&global.data_dir)?;
    let config = dir
        .update_config(|config| {
            if let Some(name) = args.name {
                config.node.name = Some(name);
            }
            if let Some(url) = args.gateway {
                config.gateway.url = Some(url);
            }
            if let Some(file) = args.gateway_token_file {
                config.gateway.token_file = Some(file);
            }
            for peer in args.bootstrap {
                if !config.mesh.bootstrap.contains(&peer) {
                    config.mesh.bootstrap.push(peer);
                }
            }
            if !args.listen.is_empty() {
                config.mesh.listen = args.listen;
            }
            for operator in args.operator {
                if !config.access.operators.contains(&operator) {
                    config.access.operators.push(operator);
                }
            }
            for admin in args.admin {
                if !config.access.admins.contains(&admin) {
                    config.access.admins.push(admin);
                }
            }
            if let Some(metrics) = args.metrics {
                config.metrics.listen = Some(metrics);
            }
            if let Some(ingress) = args.ingress {
                config.ingress.listen = Some(ingress);
            }
        })
        .context("updating the config")?;
    if global.json {
        print_json(&serde_json::to_value(config).context("config as JSON")?);
    } else {
        println!("updated {}", dir.root().join("config.toml").display());
    }
    Ok(())
}

fn init(global: &GlobalArgs, args: InitArgs) -> Result<()> {
    let mut config = NodeConfig::default();
    config.network.name = args.network;
    config.gpu.simulated = args.simulated_gpus;
    let (dir, wallet) = DataDir::init(&global.data_dir, &config, args.force)?;
    if global.json {
        let mut out = identity_json(&dir);
        out["wallet_created"] = json!(wallet == WalletOutcome::Created);
        print_json(&out);
    } else {
        println!("initialised {}", dir.root().display());
        print_identity(&dir);
        if wallet == WalletOutcome::Kept {
            println!("(existing wallet kept)");
        }
        println!(
            "\nnext: clawnode --data-dir {} inventory",
            dir.root().display()
        );
    }
    Ok(())
}

fn identity(global: &GlobalArgs) -> Result<()> {
    let dir = DataDir::open(&global.data_dir)?;
    if global.json {
        print_json(&identity_json(&dir));
    } else {
        print_identity(&dir);
    }
    Ok(())
}

fn identity_json(dir: &DataDir) -> serde_json::Value {
    let device = dir.identity().device();
    json!({
        "peer_id": dir.identity().peer_id().to_string(),
        "device_id": device.id(),
        "device_public_key": device.public_key_base64url(),
        "wallet_address": dir.wallet().address(),
        "network": dir.config().network.name,
        "data_dir": dir.root().display().to_string(),
    })
}

fn print_identity(dir: &DataDir) {
    let device = dir.identity().device();
    println!("peer id      {}", dir.identity().peer_id());
    println!("device id    {}", device.id());
    println!("public key   {}", device.public_key_base64url());
    println!("wallet       {}", dir.wallet().address());
    println!("network      {}", dir.config().network.name);
    println!("data dir     {}", dir.root().display());
}

fn inventory(global: &GlobalArgs, args: InventoryArgs) -> Result<()> {
    if let Some(path) = &args.from {
        return verify_saved_inventory(global, path);
    }
    let dir = DataDir::open(&global.data_dir)?;
    let store = dir.open_store()?;
    let probe = open_gpu_probe(&dir);
    let (inventory, envelope) = sign_inventory(&dir, &store, &probe)?;
    let wire = envelope.to_bytes();
    if let Some(path) = &args.save {
        std::fs::write(path, &wire).with_context(|| format!("writing {}", path.display()))?;
    }
    let verified = if args.verify {
        let verifier =
            Verifier::new().with_max_clock_skew(dir.config().attestation.max_clock_skew());
        let checked = verifier
            .verify_at(
                &wire,
                Some(&dir.identity().public_key()),
                claw_attestation::unix_millis(std::time::SystemTime::now()),
            )
            .context("the report this node just signed does not verify")?;
        let decoded: HardwareInventory = checked.open().context("decoding the signed report")?;
        if decoded != inventory {
            bail!("the signed report decodes to something other than what was signed");
        }
        Some(checked)
    } else {
        None
    };
    print_inventory(global.json, &inventory, &envelope, verified.as_ref());
    Ok(())
}

fn verify_saved_inventory(global: &GlobalArgs, path: &Path) -> Result<()> {
    const LIMIT: u64 = claw_attestation::DEFAULT_MAX_ENVELOPE_BYTES as u64;
    let len = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    if len > LIMIT {
        bail!(
            "{} is {len} bytes, larger than any signed report ({LIMIT})",
            path.display()
        );
    }
    let wire = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let verified = Verifier::new()
        .verify(&wire)
        .with_context(|| format!("{} does not verify", path.display()))?;
    let inventory: HardwareInventory = verified
        .open()
        .with_context(|| format!("{} is not a hardware report", path.display()))?;
    print_inventory(
        global.json,
        &inventory,
        verified.envelope(),
        Some(&verified),
    );
    Ok(())
}

fn print_inventory(
    json: bool,
    inventory: &HardwareInventory,
    envelope: &Envelope,
    verified: Option<&VerifiedEnvelope>,
) {
    let signer = envelope
        .signer()
        .map(|k| peer_id_of(&k).to_string())
        .unwrap_or_else(|e| e.to_string());
    let wire = envelope.to_bytes();
    if json {
        print_json(&json!({
            "signer": signer,
            "seq": envelope.seq(),
            "issued_at_ms": envelope.issued_at_ms(),
            "expires_at_ms": envelope.expires_at_ms(),
            "size_bytes": wire.len(),
            "digest": hex::encode(envelope.digest()),
            "envelope": STANDARD.encode(&wire),
            "verified": verified.is_some(),
            "inventory": inventory,
        }));
        return;
    }
    let host = &inventory.host;
    println!("node       {signer}");
    println!(
        "host       {} ({}, kernel {}, {})",
        host.hostname, host.os, host.kernel, host.arch
    );
    let physical = host
        .cpu_physical_cores
        .map(|n| format!(", {n} physical"))
        .unwrap_or_default();
    println!(
        "cpu        {} ({} logical{physical})",
        host.cpu_model, host.cpu_logical_cores
    );
    println!("memory     {}", gib(host.memory_total_bytes));
    println!(
        "disk       {} free of {}",
        gib(host.disk_available_bytes),
        gib(host.disk_total_bytes)
    );
    match &inventory.nvml {
        NvmlStatus::Loaded {
            driver_version,
            cuda_driver_version,
            ..
        } => println!(
            "nvml       driver {driver_version}, CUDA {}",
            cuda_driver_version.as_deref().unwrap_or("unknown")
        ),
        NvmlStatus::Unavailable { reason } => println!("nvml       unavailable: {reason}"),
    }
    if inventory.gpus.is_empty() {
        println!("gpus       none");
    } else {
        println!();
        print_gpu_table(&inventory.gpus);
        println!();
    }
    println!(
        "signed     seq {}, {} bytes, valid {} s, digest {}",
        envelope.seq(),
        wire.len(),
        (envelope.expires_at_ms() - envelope.issued_at_ms()) / 1000,
        hex::encode(&envelope.digest()[..8])
    );
    if verified.is_some() {
        println!("verified   signature, signer and validity window check out");
    }
}

fn print_gpu_table(gpus: &[GpuDevice]) {
    let rows: Vec<[String; 7]> = gpus
        .iter()
        .map(|g| {
            [
                g.index.to_string(),
                g.model.clone(),
                gib(g.memory_total_bytes),
                g.uuid.clone(),
                g.pci_bus_id.clone().unwrap_or_else(|| "-".into()),
                g.temperature_c
                    .map(|t| format!("{t} C"))
                    .unwrap_or_else(|| "-".into()),
                if g.simulated { "SIMULATED" } else { "" }.to_owned(),
            ]
        })
        .collect();
    let rows: Vec<Vec<String>> = rows.into_iter().map(Vec::from).collect();
    print_table(
        &["IDX", "MODEL", "MEMORY", "UUID", "PCI", "TEMP", ""],
        &rows,
    );
}

/// Prints left-aligned columns sized to their widest cell.
pub(crate) fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let text: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// Prints an answer as indented JSON. Answers are plain data: they always encode.
pub(crate) fn print_json(value: &impl serde::Serialize) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(error) => eprintln!("error: the answer does not encode: {error}"),
    }
}
