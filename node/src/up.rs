//! `clawnode up`: a working local fleet in one command. Under the data directory it starts the
//! embedded chain (MOLT mint, faucet), an arbiter node (the third key of every escrow, which rules
//! when a lease's parties cannot settle it together), N provider nodes selling their GPUs
//! (simulated, and marked so, unless the machine has NVIDIA GPUs), a buyer with a funded wallet,
//! and, given `--gateway`,
//! the bridge to an OpenClaw gateway. It prints the fleet, the order book, the balances and what
//! to try next, then runs until Ctrl-C, when it drains every node, removes their containers and
//! stops every child. A second run reuses the first's identities, wallets and chain ledger.

use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use claw_api::NoParams;
use claw_api::market::{MarketOffers, OfferListing, OffersParams, WalletBalance, WalletHoldings};
use claw_api::node::{HealthStatus, NodeHealth};
use clawnode::control::{ControlClient, InvokeBody};
use serde_json::{Value, json};

use crate::{GlobalArgs, print_table};

/// `clawnode up`.
#[derive(Debug, Args)]
pub(crate) struct UpArgs {
    /// Provider nodes to start.
    #[arg(long, default_value_t = 3)]
    nodes: u32,
    /// Port of the embedded chain's JSON-RPC endpoint on 127.0.0.1.
    #[arg(long, default_value_t = 8899)]
    rpc_port: u16,
    /// Also start the bridge to this OpenClaw gateway (token in $CLAW_BRIDGE_TOKEN).
    #[arg(long)]
    gateway: Option<String>,
}

/// The children, stopped (drained first) when dropped.
struct Fleet {
    children: Vec<(String, Child)>,
    nodes: Vec<PathBuf>,
    /// Where each process's log goes (`<name>.log`), so that its warnings do not interleave
    /// with `up`'s own output.
    logs: PathBuf,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for dir in &self.nodes {
            let Ok(client) = ControlClient::connect(dir) else {
                continue;
            };
            let call = |command: &str, params: Value| {
                client.invoke(&InvokeBody {
                    command: command.to_owned(),
                    params,
                    node: None,
                    deadline_ms: Some(60_000),
                    idempotency_key: None,
                    api_key: None,
                })
            };
            let _ = call("node.drain", Value::Null);
            // No container is left behind; the workloads' records stay in the node's store.
            let Ok(listed) = call("workload.list", json!({"all": true})) else {
                continue;
            };
            for workload in listed["workloads"].as_array().into_iter().flatten() {
                if workload["container_id"].is_string() {
                    let _ = call(
                        "workload.stop",
                        json!({"workload": workload["id"], "remove": true}),
                    );
                }
            }
        }
        for (_, child) in self.children.iter_mut().rev() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        for (_, child) in &mut self.children {
            while Instant::now() < deadline {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn step(json: bool, text: &str) {
    if !json {
        eprintln!("  {text}");
        let _ = std::io::stderr().flush();
    }
}

fn own_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating clawnode")?;
    Ok(exe.with_file_name(name))
}

/// Runs `clawnode --data-dir dir <args>` to completion.
fn clawnode(dir: &Path, args: &[&str]) -> Result<String> {
    let output = Command::new(own_binary("clawnode")?)
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .env_remove("CLAWNODE_DATA_DIR")
        .env("RUST_LOG", "warn")
        .output()
        .with_context(|| format!("running clawnode {args:?}"))?;
    if !output.status.success() {
        bail!(
            "clawnode {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Starts a long-running child and reads its first stdout line (its JSON greeting).
/// The log file of process `name` under `logs`, appended to across runs.
fn log_file(logs: &Path, name: &str) -> Result<std::fs::File> {
    let path = logs.join(format!("{name}.log"));
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))
}

fn spawn(fleet: &mut Fleet, name: &str, command: &mut Command) -> Result<Value> {
    let mut child = command
        .env_remove("CLAWNODE_DATA_DIR")
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_owned()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file(&fleet.logs, name)?)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    let stdout = child.stdout.take().context("child stdout")?;
    fleet.children.push((name.to_owned(), child));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = std::io::BufReader::new(stdout);
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        let _ = tx.send(line);
        // Keep draining so the child never blocks on a full pipe.
        let _ = std::io::copy(&mut reader, &mut std::io::sink());
    });
    let line = rx
        .recv_timeout(Duration::from_secs(60))
        .with_context(|| format!("{name} did not start within 60 s"))?;
    serde_json::from_str(&line).with_context(|| format!("{name} printed {line:?}"))
}

fn invoke(dir: &Path, command: &str, params: Value) -> Result<Value> {
    let client = ControlClient::connect(dir)?;
    Ok(client.invoke(&InvokeBody {
        command: command.to_owned(),
        params,
        node: None,
        deadline_ms: Some(30_000),
        idempotency_key: None,
        api_key: None,
    })?)
}

/// Command `C` on the node in `dir`, its answer decoded with the command's definition.
fn call<C: claw_api::Command>(dir: &Path, params: &C::Params) -> Result<C::Answer> {
    let params = serde_json::to_value(params).context("encoding the params")?;
    Ok(C::decode(invoke(dir, C::NAME, params)?)?)
}

/// Writes the settings a local fleet needs into a node's config, keeping what is there.
fn configure(dir: &Path, chain: &str, market: &str) -> Result<()> {
    let path = dir.join("config.toml");
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    let mut config: toml::Table = toml::from_str(&text).context("config.toml")?;
    let chain: toml::Table = toml::from_str(chain).context("chain settings")?;
    let market: toml::Table = toml::from_str(market).context("market settings")?;
    let section = |config: &mut toml::Table, name: &str| -> Result<toml::Table> {
        Ok(config
            .remove(name)
            .map(|v| v.try_into::<toml::Table>())
            .transpose()
            .context("config section")?
            .unwrap_or_default())
    };
    let mut mesh = section(&mut config, "mesh")?;
    mesh.insert("announce_interval_secs".into(), 2.into());
    mesh.insert("allow_colocated_peers".into(), true.into());
    mesh.insert("mdns".into(), false.into());
    // The arbiter, which every node joins through, also relays for nodes behind NAT.
    if market.contains_key("arbitrate") {
        mesh.insert("relay_server".into(), true.into());
    }
    config.insert("mesh".into(), mesh.into());
    let mut chain_section = section(&mut config, "chain")?;
    chain_section.extend(chain);
    config.insert("chain".into(), chain_section.into());
    let mut market_section = section(&mut config, "market")?;
    market_section.extend(market);
    config.insert("market".into(), market_section.into());
    let text = toml::to_string_pretty(&config).context("writing config")?;
    clawnode::NodeConfig::parse(&text).context("the local fleet's config")?;
    std::fs::write(&path, text).with_context(|| format!("{}", path.display()))?;
    Ok(())
}

pub(crate) fn up(global: &GlobalArgs, args: UpArgs) -> Result<()> {
    if !(1..=16).contains(&args.nodes) {
        bail!("--nodes must be 1 to 16");
    }
    let json = global.json;
    let started = Instant::now();
    let root = global.data_dir.clone();
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let logs = root.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let mut fleet = Fleet {
        children: Vec::new(),
        nodes: Vec::new(),
        logs,
    };
    let (stop_tx, stop_rx) = std::sync::mpsc::channel();
    let _ = ctrlc_channel(stop_tx);

    // The buyer's directory holds the chain and its faucet.
    let buyer = root.join("buyer");
    let chain = start_chain(&mut fleet, json, &buyer, args.rpc_port)?;
    // The arbiter first: it is every node's way into the mesh, and every escrow's third key.
    let arbiter = start_arbiter(&mut fleet, json, &root, &chain)?;
    configure(&buyer, &chain.settings, &arbiter.settings)?;
    let real_gpus = has_real_gpus();
    let nodes = start_nodes(
        &mut fleet, json, &root, args.nodes, real_gpus, &chain, &arbiter,
    )?;
    fund_buyer(json, &buyer)?;
    let seed = arbiter.seed.as_deref();
    let buyer_peer = start_buyer(&mut fleet, json, &buyer, seed)?;
    if let Some(gateway) = &args.gateway {
        start_bridge(&mut fleet, json, gateway, &root, &buyer_peer, seed)?;
    }
    // Without Docker no provider sells (leases run as isolated containers): say so once, and
    // do not wait for offers.
    let docker = docker_on(&fleet)?;
    let offers = match &docker {
        None => wait_for_offers(json, &buyer, args.nodes)?,
        Some(_) => OfferListing {
            network: String::new(),
            offers: Vec::new(),
        },
    };
    let status = ControlClient::connect(&buyer)?.get("/v1/fleet")?;
    let wallet = call::<WalletBalance>(&buyer, &NoParams {})?;
    let summary = Summary {
        ready_ms: started.elapsed().as_millis(),
        root: &root,
        buyer: &buyer,
        buyer_peer: &buyer_peer,
        chain: &chain,
        arbiter: &arbiter,
        nodes: &nodes,
        node_count: args.nodes,
        real_gpus,
        fleet: &fleet,
        offers: &offers,
        status: &status,
        wallet: &wallet,
        docker: docker.as_deref(),
    };
    if json {
        print_json_summary(&summary);
    } else {
        print_text_summary(&summary);
    }
    let _ = std::io::stdout().flush();
    let _ = stop_rx.recv();
    step(json, "stopping: draining every node, then every process");
    drop(fleet);
    Ok(())
}

/// The embedded chain, as every node's config names it.
struct Chain {
    /// Its JSON-RPC endpoint.
    url: String,
    /// The MOLT mint it created.
    mint: String,
    /// The `[chain]` settings for a node's config.
    settings: String,
}

/// The arbiter node, which every other node dials into the mesh and every escrow names.
struct Arbiter {
    dir: PathBuf,
    peer: String,
    wallet: String,
    /// The `[market]` settings naming it, for the buyer's and the providers' configs.
    settings: String,
    /// Its first listen address, the other nodes' bootstrap peer.
    seed: Option<String>,
}

/// The provider nodes started, in order (their directories are in `Fleet::nodes`).
struct Nodes {
    peers: Vec<String>,
    /// Each node's metrics address, host and port.
    metrics: Vec<String>,
}

/// Everything the ready message reports about the fleet.
struct Summary<'a> {
    ready_ms: u128,
    root: &'a Path,
    buyer: &'a Path,
    buyer_peer: &'a str,
    chain: &'a Chain,
    arbiter: &'a Arbiter,
    nodes: &'a Nodes,
    /// The `--nodes` asked for.
    node_count: u32,
    real_gpus: bool,
    fleet: &'a Fleet,
    offers: &'a OfferListing,
    /// The buyer's `/v1/fleet`.
    status: &'a Value,
    /// The buyer's wallet balance.
    wallet: &'a WalletHoldings,
    /// Why the providers cannot reach Docker, when they cannot.
    docker: Option<&'a str>,
}

/// Why the first provider cannot reach the Docker Engine (as its `node.health` says), or `None`
/// when it can.
fn docker_on(fleet: &Fleet) -> Result<Option<String>> {
    let Some(node) = fleet.nodes.first() else {
        return Ok(None);
    };
    let health = call::<NodeHealth>(node, &NoParams {})?;
    Ok(health
        .checks
        .into_iter()
        .find(|c| c.component == "docker" && c.status != HealthStatus::Healthy)
        .map(|c| c.detail))
}

/// Initialises the buyer if new and starts the embedded chain in its directory, which then holds
/// the chain's ledger and faucet; points the buyer's config at the chain and its MOLT mint.
fn start_chain(fleet: &mut Fleet, json: bool, buyer: &Path, rpc_port: u16) -> Result<Chain> {
    if !buyer.join("config.toml").exists() {
        clawnode(buyer, &["init"])?;
    }
    let url = format!("http://127.0.0.1:{rpc_port}");
    configure(buyer, &format!("rpc_url = {url:?}"), "")?;
    step(
        json,
        &format!("starting the embedded Solana chain on {url}"),
    );
    let mut chain = Command::new(own_binary("clawnode")?);
    chain.arg("--data-dir").arg(buyer).args([
        "--json",
        "localnet",
        "--rpc-port",
        &rpc_port.to_string(),
    ]);
    let info = spawn(fleet, "chain", &mut chain)?;
    let mint = info["molt_mint"]
        .as_str()
        .context("the chain's mint")?
        .to_owned();
    let settings = format!("rpc_url = {url:?}\nmolt_mint = {mint:?}");
    configure(buyer, &settings, "")?;
    Ok(Chain {
        url,
        mint,
        settings,
    })
}

/// Initialises the arbiter if new, configures it to arbitrate and starts it; returns the peer id,
/// wallet and listen address the other nodes need to reach and name it.
fn start_arbiter(fleet: &mut Fleet, json: bool, root: &Path, chain: &Chain) -> Result<Arbiter> {
    let dir = root.join("arbiter");
    if !dir.join("config.toml").exists() {
        clawnode(&dir, &["init"])?;
    }
    configure(&dir, &chain.settings, "arbitrate = true")?;
    step(json, "starting the arbiter");
    let mut run = Command::new(own_binary("clawnode")?);
    run.arg("--data-dir")
        .arg(&dir)
        .args(["--json", "run", "--listen", "/ip4/127.0.0.1/tcp/0"]);
    let greeting = spawn(fleet, "arbiter", &mut run)?;
    let peer = greeting["peer_id"]
        .as_str()
        .context("the arbiter's peer id")?
        .to_owned();
    let wallet = clawnode(&dir, &["wallet", "address"])?.trim().to_owned();
    let settings = format!("arbiter = {wallet:?}\narbiter_peer = {peer:?}");
    let seed = greeting["listen_addrs"][0].as_str().map(str::to_owned);
    Ok(Arbiter {
        dir,
        peer,
        wallet,
        settings,
        seed,
    })
}

/// Whether this machine has real NVIDIA GPUs; without them the nodes sell simulated ones.
fn has_real_gpus() -> bool {
    let probe = claw_attestation::GpuProbe::open(
        &[],
        &claw_attestation::NodeIdentity::generate().public_key(),
    );
    probe.devices().iter().any(|d| !d.simulated)
}

/// Initialises (if new), configures and starts the provider nodes `node-1` to `node-{count}`,
/// each at its own price and bootstrapping from the arbiter, and lets each take work again.
fn start_nodes(
    fleet: &mut Fleet,
    json: bool,
    root: &Path,
    count: u32,
    real_gpus: bool,
    chain: &Chain,
    arbiter: &Arbiter,
) -> Result<Nodes> {
    let mut peers = Vec::new();
    let mut metrics = Vec::new();
    for i in 1..=count {
        let dir = root.join(format!("node-{i}"));
        if !dir.join("config.toml").exists() {
            let name = format!("node-{i}");
            let gpus = format!("NVIDIA H100 80GB HBM3:{}:81559", 1 + (i % 3) * 2);
            let mut init = vec!["init"];
            if !real_gpus {
                init.extend(["--simulated-gpu", &gpus]);
            }
            clawnode(&dir, &init)?;
            let path = dir.join("config.toml");
            let text = std::fs::read_to_string(&path)?;
            std::fs::write(&path, format!("[node]\nname = {name:?}\n\n{text}"))?;
        }
        let price = format!("{}.{}", 1 + i / 4, (i * 2) % 10);
        configure(
            &dir,
            &chain.settings,
            &format!("{}\nprice_per_gpu_hour = {price:?}", arbiter.settings),
        )?;
        step(json, &format!("starting node-{i}"));
        let mut run = Command::new(own_binary("clawnode")?);
        run.arg("--data-dir")
            .arg(&dir)
            .args(["--json", "run", "--listen", "/ip4/127.0.0.1/tcp/0"])
            .args(["--metrics", "127.0.0.1:0"]);
        if let Some(seed) = &arbiter.seed {
            run.args(["--bootstrap", seed]);
        }
        let greeting = spawn(fleet, &format!("node-{i}"), &mut run)?;
        metrics.push(greeting["metrics"].as_str().unwrap_or_default().to_owned());
        // The last run drained this node when it stopped: take work again.
        invoke(&dir, "node.uncordon", Value::Null)?;
        peers.push(greeting["peer_id"].as_str().unwrap_or_default().to_owned());
        fleet.nodes.push(dir);
    }
    Ok(Nodes { peers, metrics })
}

/// Airdrops SOL and MOLT to the buyer's wallet unless an earlier run already funded it.
fn fund_buyer(json: bool, buyer: &Path) -> Result<()> {
    step(json, "funding the buyer's wallet (10 SOL, 1,000 MOLT)");
    let balance: Value = serde_json::from_str(&clawnode(buyer, &["--json", "wallet", "balance"])?)?;
    if balance["molt"].as_str().is_none_or(|m| m == "0") {
        clawnode(
            buyer,
            &["wallet", "airdrop", "--sol", "10", "--molt", "1000"],
        )?;
    }
    Ok(())
}

/// Starts the buyer node (its directory already configured) and returns its peer id.
fn start_buyer(fleet: &mut Fleet, json: bool, buyer: &Path, seed: Option<&str>) -> Result<String> {
    step(json, "starting the buyer");
    let mut run = Command::new(own_binary("clawnode")?);
    run.arg("--data-dir")
        .arg(buyer)
        .args(["--json", "run", "--listen", "/ip4/127.0.0.1/tcp/0"]);
    if let Some(seed) = seed {
        run.args(["--bootstrap", seed]);
    }
    let greeting = spawn(fleet, "buyer", &mut run)?;
    Ok(greeting["peer_id"].as_str().unwrap_or_default().to_owned())
}

/// Starts the bridge to an OpenClaw gateway, placing its market calls through the buyer.
fn start_bridge(
    fleet: &mut Fleet,
    json: bool,
    gateway: &str,
    root: &Path,
    buyer_peer: &str,
    seed: Option<&str>,
) -> Result<()> {
    step(json, &format!("starting the bridge to {gateway}"));
    let mut bridge = Command::new(own_binary("claw-bridge")?);
    bridge
        .args(["run", "--data-dir"])
        .arg(root.join("bridge"))
        .args(["--gateway", gateway, "--listen", "/ip4/127.0.0.1/tcp/0"])
        .args(["--allow-colocated-peers", "--market-node", buyer_peer]);
    if let Some(seed) = seed {
        bridge.args(["--bootstrap", seed]);
    }
    spawn(fleet, "bridge", &mut bridge)?;
    Ok(())
}

/// Polls the buyer's order book until every node's offer is in it (at most 60 s), returning it.
fn wait_for_offers(json: bool, buyer: &Path, nodes: u32) -> Result<OfferListing> {
    step(
        json,
        "waiting for every offer to reach the buyer's order book",
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let listing = call::<MarketOffers>(buyer, &OffersParams::default())?;
        if listing.offers.len() >= nodes as usize {
            return Ok(listing);
        }
        if Instant::now() > deadline {
            bail!(
                "only {} of {} offers reached the buyer",
                listing.offers.len(),
                nodes
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Prints the ready fleet as one JSON line, so that a supervising program can read it as soon as
/// the fleet is ready.
fn print_json_summary(s: &Summary<'_>) {
    let nodes: Vec<Value> = s
        .fleet
        .nodes
        .iter()
        .zip(&s.nodes.peers)
        .zip(&s.nodes.metrics)
        .map(|((d, p), m)| {
            let metrics = format!("http://{m}/metrics");
            json!({"data_dir": d, "peer_id": p, "metrics": metrics})
        })
        .collect();
    let pids: Vec<Value> = s
        .fleet
        .children
        .iter()
        .map(|(n, c)| json!({"name": n, "pid": c.id()}))
        .collect();
    println!(
        "{}",
        json!({
            "ready_ms": s.ready_ms,
            "rpc_url": s.chain.url,
            "molt_mint": s.chain.mint,
            "buyer": {"data_dir": s.buyer, "peer_id": s.buyer_peer, "wallet": s.wallet},
            "arbiter": {"data_dir": s.arbiter.dir, "peer_id": s.arbiter.peer, "wallet": s.arbiter.wallet},
            "nodes": nodes,
            "pids": pids,
            "offers": s.offers.offers,
            "try": next_steps(s),
            "docker": match s.docker {
                None => json!({"reachable": true}),
                Some(why) => json!({"reachable": false, "detail": why}),
            },
            "logs": s.fleet.logs,
            "console": ControlClient::console_url(s.buyer).ok(),
        })
    );
}

/// Prints the ready fleet for a person: its members, the order book, the wallets, and the
/// commands to try next.
fn print_text_summary(s: &Summary<'_>) {
    println!(
        "\nClawbernetes fleet up in {:.1} s ({} nodes{})",
        s.ready_ms as f64 / 1000.0,
        s.node_count,
        if s.real_gpus { "" } else { ", simulated GPUs" }
    );
    let rows: Vec<Vec<String>> = s.status["members"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            vec![
                n["name"].as_str().unwrap_or("-").to_owned(),
                format!("{}/{}", n["free_gpus"], n["gpus"]),
                n["peer_id"].as_str().unwrap_or("-").to_owned(),
            ]
        })
        .collect();
    if !rows.is_empty() {
        print_table(&["NODE", "FREE/GPUS", "PEER"], &rows);
    }
    println!("\nOrder book:");
    print_table(&["NODE", "GPUS", "PRICE"], &order_book_rows(s.offers));
    println!(
        "\nBuyer wallet {}: {} MOLT, {} SOL",
        s.wallet.address, s.wallet.molt, s.wallet.sol
    );
    println!(
        "Arbiter {} (wallet {}): every escrow's third key",
        s.arbiter.peer, s.arbiter.wallet
    );
    if let Some(why) = s.docker {
        println!(
            "\nDocker is not reachable ({why}): no GPU is rented out, and workloads, deployment \
             replicas and leased containers will not start. Install Debian's docker.io and start dockerd \
             (scripts/test.sh does both), then run up again."
        );
    }
    print_next_steps(s);
}

/// The order book's rows for the text summary: node, GPUs (marked if simulated) and price.
fn order_book_rows(listing: &OfferListing) -> Vec<Vec<String>> {
    listing
        .offers
        .iter()
        .map(|o| {
            vec![
                o.node.clone().unwrap_or_else(|| "-".to_owned()),
                format!(
                    "{} × {}{}",
                    o.gpus,
                    o.gpu_model,
                    if o.simulated { " (simulated)" } else { "" }
                ),
                format!("{} MOLT/GPU-hour", o.price_per_gpu_hour),
            ]
        })
        .collect()
}

/// `text` quoted for a POSIX shell where it needs to be.
fn shell_quoted(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-:=@,+".contains(&b));
    if plain {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

/// The commands to try against the fleet, each runnable as printed: the `clawnode` binary by its
/// full path (it need not be on the PATH), data directories quoted for the shell.
fn next_steps(s: &Summary<'_>) -> Vec<String> {
    let clawnode = own_binary("clawnode").map_or_else(
        |_| "clawnode".to_owned(),
        |path| shell_quoted(&path.display().to_string()),
    );
    let buyer = format!(
        "{clawnode} --data-dir {}",
        shell_quoted(&s.buyer.display().to_string())
    );
    let mut steps = vec![format!("{buyer} fleet"), format!("{buyer} market offers")];
    if let Some(first) = s.fleet.nodes.first() {
        steps.push(format!(
            "{clawnode} --data-dir {} market sell --price 1.1",
            shell_quoted(&first.display().to_string())
        ));
    }
    if let Some(peer) = s.nodes.peers.first() {
        steps.push(format!("{buyer} invoke node.health --node {peer}"));
    }
    steps
}

/// Prints the commands to try against the fleet, the nodes' metrics endpoints, how to attach a
/// gateway and how to stop.
fn print_next_steps(s: &Summary<'_>) {
    println!("\nTry:");
    for step in next_steps(s) {
        println!("  {step}");
    }
    let clawnode = own_binary("clawnode").map_or_else(
        |_| "clawnode".to_owned(),
        |path| shell_quoted(&path.display().to_string()),
    );
    let d = shell_quoted(&s.buyer.display().to_string());
    println!(
        "  {clawnode} --data-dir {d} market bid --model \"NVIDIA H100 80GB HBM3\" --max-price 2 --accept-simulated --image <local image> -- sleep 60"
    );
    if let Ok(url) = ControlClient::console_url(s.buyer) {
        println!(
            "\nFleet console (this machine only): {url}\n  sign in with the token in {}",
            s.buyer.join("control.token").display()
        );
    }
    println!("\nPrometheus metrics:");
    for (i, addr) in s.nodes.metrics.iter().enumerate() {
        println!("  node-{}  http://{addr}/metrics", i + 1);
    }
    println!(
        "\nAttach a real OpenClaw gateway: CLAW_BRIDGE_TOKEN=<token> {clawnode} --data-dir {} up --gateway ws://127.0.0.1:18789",
        shell_quoted(&s.root.display().to_string())
    );
    println!("Logs of every process: {}", s.fleet.logs.display());
    println!(
        "Ctrl-C stops the fleet (workloads drained); its state stays in {} for the next run.",
        s.root.display()
    );
}

/// Sends on `stop` at Ctrl-C or SIGTERM.
fn ctrlc_channel(stop: std::sync::mpsc::Sender<()>) -> Result<()> {
    use tokio::signal::unix::{Signal, SignalKind, signal};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("signal runtime")?;
    std::thread::spawn(move || {
        runtime.block_on(async {
            // A signal whose handler cannot be installed never fires, rather than firing at once.
            async fn next(signal: &mut Option<Signal>) {
                match signal {
                    Some(signal) => {
                        signal.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            }
            let mut interrupt = signal(SignalKind::interrupt()).ok();
            let mut terminate = signal(SignalKind::terminate()).ok();
            tokio::select! {
                () = next(&mut interrupt) => {}
                () = next(&mut terminate) => {}
            }
        });
        let _ = stop.send(());
    });
    Ok(())
}
