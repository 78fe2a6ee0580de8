//! `claw-bridge`: presents a Clawbernetes fleet to an OpenClaw gateway as one node.
//!
//! It is a mesh peer without GPUs: it keeps the fleet view from the nodes' signed announcements
//! and answers the gateway's fleet commands from it, fanning out over the mesh where a command
//! needs the nodes themselves.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use claw_attestation::NodeIdentity;
use claw_bridge::fleet::{FleetCommands, NoMeshCommands};
use claw_bridge::gateway::{GatewayConfig, run_node};
use claw_bridge::placements::Placements;
use claw_bridge::tls::GatewayTls;
use claw_mesh::{Mesh, MeshConfig, Multiaddr, PeerId};

const IDENTITY_FILE: &str = "identity.key";

/// Clawbernetes gateway bridge.
#[derive(Debug, Parser)]
#[command(name = "claw-bridge", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the bridge's identity in its data directory if there is none, and print its peer
    /// id (for the nodes' `access.operators`) and OpenClaw device id.
    Identity {
        /// The bridge's data directory.
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Print the OpenClaw device id and public key derived from a node identity key.
    DeviceIdentity {
        /// The node identity key file (e.g. <data dir>/identity.key).
        #[arg(long)]
        identity_key: PathBuf,
    },
    /// Join the mesh and serve the fleet to the gateway until stopped.
    Run(Box<RunArgs>),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The bridge's data directory (identity, known peers).
    #[arg(long)]
    data_dir: PathBuf,
    /// The gateway, e.g. ws://127.0.0.1:18789, or wss://… for one on another host.
    #[arg(long)]
    gateway: String,
    /// A PEM file of CA certificates trusted for a wss:// gateway, beside the system's roots.
    #[arg(long)]
    gateway_ca_file: Option<PathBuf>,
    /// Trust only the wss:// gateway certificate with this SHA-256 (64 hex digits, colons
    /// allowed; repeatable), e.g. a self-signed one.
    #[arg(long)]
    gateway_pin_sha256: Vec<String>,
    /// A file (mode 0600) holding the gateway's token; else $CLAW_BRIDGE_TOKEN.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Peer to join through, ending in /p2p/<peer id> (repeatable).
    #[arg(long)]
    bootstrap: Vec<String>,
    /// Multiaddr to listen on (repeatable).
    #[arg(long, default_values_t = vec!["/ip4/0.0.0.0/tcp/7947".to_owned()])]
    listen: Vec<String>,
    /// The network: localnet, devnet, mainnet or a private fleet id.
    #[arg(long, default_value = "localnet")]
    network: String,
    /// The node whose wallet the market commands use (peer id).
    #[arg(long)]
    market_node: Option<String>,
    /// Name shown in the gateway's node list.
    #[arg(long, default_value = "clawbernetes-fleet")]
    name: String,
    /// Accept peers on this machine's addresses (many nodes on one host).
    #[arg(long)]
    allow_colocated_peers: bool,
    /// A fleet operator's peer id (repeatable). With any, the bridge presents, deploys to,
    /// invokes and drains only the peers one of them admitted (`clawnode membership issue`);
    /// others on the network are market counterparties. Without, every peer counts: keep that
    /// to local fleets and private fleets behind a swarm key.
    #[arg(long, value_name = "PEER_ID")]
    fleet_operator: Vec<String>,
    /// Answer only gateway calls that carry an API key (`auth.create_key`; the plugin's
    /// `apiKey` setting), each within what its key allows.
    #[arg(long)]
    require_api_key: bool,
}

fn main() -> ExitCode {
    claw_bridge::logs::init("info", false);
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_or_create(data_dir: &Path) -> anyhow::Result<NodeIdentity> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let path = data_dir.join(IDENTITY_FILE);
    if path.exists() {
        return NodeIdentity::load(&path).with_context(|| format!("loading {}", path.display()));
    }
    let identity = NodeIdentity::generate();
    identity
        .save(&path, false)
        .with_context(|| format!("saving {}", path.display()))?;
    Ok(identity)
}

fn token(args: &RunArgs) -> anyhow::Result<String> {
    if let Some(file) = &args.token_file {
        let bytes = claw_attestation::read_secret(file)
            .with_context(|| format!("reading the gateway token from {}", file.display()))?;
        return Ok(String::from_utf8(bytes)
            .context("the token file is not text")?
            .trim()
            .to_owned());
    }
    match std::env::var("CLAW_BRIDGE_TOKEN") {
        Ok(token) if !token.is_empty() => Ok(token),
        _ => bail!("the gateway's token is needed: --token-file or $CLAW_BRIDGE_TOKEN"),
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Identity { data_dir } => {
            let identity = load_or_create(&data_dir)?;
            let out = serde_json::json!({
                "peer_id": identity.peer_id().to_string(),
                "device_id": identity.device().id(),
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(())
        }
        Command::DeviceIdentity { identity_key } => {
            let identity = NodeIdentity::load(&identity_key)
                .with_context(|| format!("loading {}", identity_key.display()))?;
            let device = identity.device();
            let out = serde_json::json!({
                "id": device.id(),
                "publicKey": device.public_key_base64url(),
                "peerId": identity.peer_id().to_string(),
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(())
        }
        Command::Run(args) => {
            let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
            runtime.block_on(serve(*args))
        }
    }
}

async fn serve(args: RunArgs) -> anyhow::Result<()> {
    let identity = Arc::new(load_or_create(&args.data_dir)?);
    let token = token(&args)?;
    let parse = |what: &str, addrs: &[String]| {
        addrs
            .iter()
            .map(|a| {
                a.parse::<Multiaddr>()
                    .with_context(|| format!("{what} {a:?} is not a multiaddr"))
            })
            .collect::<anyhow::Result<Vec<_>>>()
    };
    let market_node = args
        .market_node
        .as_deref()
        .map(|p| {
            p.parse::<PeerId>()
                .with_context(|| format!("--market-node {p:?} is not a peer id"))
        })
        .transpose()?;
    let config = MeshConfig {
        network: args.network.clone(),
        listen: parse("--listen", &args.listen)?,
        bootstrap: parse("--bootstrap", &args.bootstrap)?,
        known_peers_file: Some(args.data_dir.join("known-peers.json")),
        allow_colocated_peers: args.allow_colocated_peers,
        fleet_operators: args
            .fleet_operator
            .iter()
            .map(|p| {
                p.parse::<PeerId>()
                    .with_context(|| format!("--fleet-operator {p:?} is not a peer id"))
            })
            .collect::<anyhow::Result<_>>()?,
        ..MeshConfig::default()
    };
    if config.fleet_operators.is_empty() && config.network != "localnet" {
        tracing::warn!(
            network = %config.network,
            "no --fleet-operator: every peer on the network counts as a fleet member, so the \
             bridge may deploy to, invoke and drain strangers; name the operator whose \
             credentials admit your nodes"
        );
    }
    let mesh =
        Mesh::spawn(&identity, config, Arc::new(NoMeshCommands)).context("starting the mesh")?;
    let handle = mesh.handle.clone();
    let mut events = mesh.events;
    let drain = tokio::spawn(async move { while events.recv().await.is_some() {} });
    let addrs = handle.wait_listen_addrs(Duration::from_secs(2)).await;
    let peer = handle.local_peer_id();
    println!(
        "{}",
        serde_json::json!({
            "peer_id": peer.to_string(),
            "device_id": identity.device().id(),
            "listen_addrs": addrs.iter().map(|a| format!("{a}/p2p/{peer}")).collect::<Vec<_>>(),
        })
    );
    let tls = GatewayTls::from_settings(args.gateway_ca_file.clone(), &args.gateway_pin_sha256)
        .context("--gateway-pin-sha256")?;
    let gateway = GatewayConfig {
        url: args.gateway.clone(),
        tls,
        token,
        display_name: args.name.clone(),
        caps: vec!["fleet".to_owned()],
        commands: FleetCommands::names(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let placements = Placements::open(&args.data_dir).with_context(|| {
        format!(
            "opening the placement record in {}",
            args.data_dir.display()
        )
    })?;
    let commands = Arc::new(
        FleetCommands::new(handle.clone(), market_node, placements)
            .signing_as(Arc::clone(&identity), args.network.clone())
            .requiring_api_keys(args.require_api_key),
    );
    let mut client = tokio::spawn(run_node(identity, gateway, commands, stop.clone(), None));
    let outcome = tokio::select! {
        _ = tokio::signal::ctrl_c() => Ok(()),
        ended = &mut client => match ended {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(anyhow::Error::new(error).context("the OpenClaw gateway connection")),
            Err(error) => Err(anyhow::anyhow!("the gateway task failed: {error}")),
        },
    };
    stop.cancel();
    handle.shutdown().await;
    let _ = tokio::time::timeout(Duration::from_secs(5), mesh.task).await;
    drain.abort();
    outcome
}
