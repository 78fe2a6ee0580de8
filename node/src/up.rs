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
fn spawn(fleet: &mut Fleet, name: &str, command: &mut Command) -> Result<Value> {
    let mut child = command
        .env_remove("CLAWNODE_DATA_DIR")
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_owned()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
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
    })?)
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
    let mut fleet = Fleet {
        children: Vec::new(),
        nodes: Vec::new(),
    };
    let (stop_tx, stop_rx) = std::sync::mpsc::channel();
    let _ = ctrlc_channel(stop_tx);

    // The buyer's directory holds the chain and its faucet.
    let buyer = root.join("buyer");
    if !buyer.join("config.toml").exists() {
        clawnode(&buyer, &["init"])?;
    }
    let url = format!("http://127.0.0.1:{}", args.rpc_port);
    configure(&buyer, &format!("rpc_url = {url:?}"), "")?;
    step(
        json,
        &format!("starting the embedded Solana chain on {url}"),
    );
    let mut chain = Command::new(own_binary("clawnode")?);
    chain.arg("--data-dir").arg(&buyer).args([
        "--json",
        "localnet",
        "--rpc-port",
        &args.rpc_port.to_string(),
    ]);
    let info = spawn(&mut fleet, "chain", &mut chain)?;
    let mint = info["molt_mint"]
        .as_str()
        .context("the chain's mint")?
        .to_owned();
    let chain_settings = format!("rpc_url = {url:?}\nmolt_mint = {mint:?}");
    configure(&buyer, &chain_settings, "")?;

    // The arbiter first: it is every node's way into the mesh, and every escrow's third key.
    let arbiter_dir = root.join("arbiter");
    if !arbiter_dir.join("config.toml").exists() {
        clawnode(&arbiter_dir, &["init"])?;
    }
    configure(&arbiter_dir, &chain_settings, "arbitrate = true")?;
    step(json, "starting the arbiter");
    let mut run = Command::new(own_binary("clawnode")?);
    run.arg("--data-dir").arg(&arbiter_dir).args([
        "--json",
        "run",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
    ]);
    let greeting = spawn(&mut fleet, "arbiter", &mut run)?;
    let arbiter_peer = greeting["peer_id"]
        .as_str()
        .context("the arbiter's peer id")?
        .to_owned();
    let arbiter_wallet = clawnode(&arbiter_dir, &["wallet", "address"])?
        .trim()
        .to_owned();
    let arbiter = format!("arbiter = {arbiter_wallet:?}\narbiter_peer = {arbiter_peer:?}");
    configure(&buyer, &chain_settings, &arbiter)?;

    let real_gpus = {
        let probe = claw_attestation::GpuProbe::open(
            &[],
            &claw_attestation::NodeIdentity::generate().public_key(),
        );
        probe.devices().iter().any(|d| !d.simulated)
    };
    let seed: Option<String> = greeting["listen_addrs"][0].as_str().map(str::to_owned);
    let mut peers = Vec::new();
    let mut metrics = Vec::new();
    for i in 1..=args.nodes {
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
            &chain_settings,
            &format!("{arbiter}\nprice_per_gpu_hour = {price:?}"),
        )?;
        step(json, &format!("starting node-{i}"));
        let mut run = Command::new(own_binary("clawnode")?);
        run.arg("--data-dir")
            .arg(&dir)
            .args(["--json", "run", "--listen", "/ip4/127.0.0.1/tcp/0"])
            .args(["--metrics", "127.0.0.1:0"]);
        if let Some(seed) = &seed {
            run.args(["--bootstrap", seed]);
        }
        let greeting = spawn(&mut fleet, &format!("node-{i}"), &mut run)?;
        metrics.push(greeting["metrics"].as_str().unwrap_or_default().to_owned());
        // The last run drained this node when it stopped: take work again.
        invoke(&dir, "node.uncordon", Value::Null)?;
        peers.push(greeting["peer_id"].as_str().unwrap_or_default().to_owned());
        fleet.nodes.push(dir);
    }
    step(json, "funding the buyer's wallet (10 SOL, 1,000 MOLT)");
    let balance: Value =
        serde_json::from_str(&clawnode(&buyer, &["--json", "wallet", "balance"])?)?;
    if balance["molt"].as_str().is_none_or(|m| m == "0") {
        clawnode(
            &buyer,
            &["wallet", "airdrop", "--sol", "10", "--molt", "1000"],
        )?;
    }
    step(json, "starting the buyer");
    let mut run = Command::new(own_binary("clawnode")?);
    run.arg("--data-dir")
        .arg(&buyer)
        .args(["--json", "run", "--listen", "/ip4/127.0.0.1/tcp/0"]);
    if let Some(seed) = &seed {
        run.args(["--bootstrap", seed]);
    }
    let buyer_greeting = spawn(&mut fleet, "buyer", &mut run)?;
    let buyer_peer = buyer_greeting["peer_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    if let Some(gateway) = &args.gateway {
        step(json, &format!("starting the bridge to {gateway}"));
        let mut bridge = Command::new(own_binary("claw-bridge")?);
        bridge
            .args(["run", "--data-dir"])
            .arg(root.join("bridge"))
            .args(["--gateway", gateway, "--listen", "/ip4/127.0.0.1/tcp/0"])
            .args(["--allow-colocated-peers", "--market-node", &buyer_peer]);
        if let Some(seed) = &seed {
            bridge.args(["--bootstrap", seed]);
        }
        spawn(&mut fleet, "bridge", &mut bridge)?;
    }

    step(
        json,
        "waiting for every offer to reach the buyer's order book",
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let offers = loop {
        let offers = invoke(&buyer, "market.offers", json!({}))?;
        if offers["offers"]
            .as_array()
            .is_some_and(|o| o.len() >= args.nodes as usize)
        {
            break offers;
        }
        if Instant::now() > deadline {
            bail!(
                "only {} of {} offers reached the buyer",
                offers["offers"].as_array().map_or(0, Vec::len),
                args.nodes
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let status = ControlClient::connect(&buyer)?.get("/v1/fleet")?;
    let wallet = invoke(&buyer, "wallet.balance", json!({}))?;
    let ready_ms = started.elapsed().as_millis();
    if json {
        // One line, so that a supervising program can read it as soon as the fleet is ready.
        println!(
            "{}",
            json!({
                "ready_ms": ready_ms,
                "rpc_url": url,
                "molt_mint": mint,
                "buyer": {"data_dir": buyer, "peer_id": buyer_peer, "wallet": wallet},
                "arbiter": {"data_dir": arbiter_dir, "peer_id": arbiter_peer, "wallet": arbiter_wallet},
                "nodes": fleet.nodes.iter().zip(&peers).zip(&metrics).map(|((d, p), m)| json!({"data_dir": d, "peer_id": p, "metrics": format!("http://{m}/metrics")})).collect::<Vec<_>>(),
                "pids": fleet.children.iter().map(|(n, c)| json!({"name": n, "pid": c.id()})).collect::<Vec<_>>(),
                "offers": offers["offers"],
            })
        );
    } else {
        println!(
            "\nClawbernetes fleet up in {:.1} s ({} nodes{})",
            ready_ms as f64 / 1000.0,
            args.nodes,
            if real_gpus { "" } else { ", simulated GPUs" }
        );
        let rows: Vec<Vec<String>> = status["members"]
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
        let rows: Vec<Vec<String>> = offers["offers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|o| {
                vec![
                    o["node"].as_str().unwrap_or("-").to_owned(),
                    format!(
                        "{} × {}{}",
                        o["gpus"],
                        o["gpu_model"].as_str().unwrap_or("?"),
                        if o["simulated"] == true {
                            " (simulated)"
                        } else {
                            ""
                        }
                    ),
                    format!(
                        "{} MOLT/GPU-hour",
                        o["price_per_gpu_hour"].as_str().unwrap_or("?")
                    ),
                ]
            })
            .collect();
        print_table(&["NODE", "GPUS", "PRICE"], &rows);
        println!(
            "\nBuyer wallet {}: {} MOLT, {} SOL",
            wallet["address"].as_str().unwrap_or("?"),
            wallet["molt"].as_str().unwrap_or("?"),
            wallet["sol"].as_str().unwrap_or("?")
        );
        println!("Arbiter {arbiter_peer} (wallet {arbiter_wallet}): every escrow's third key");
        let d = buyer.display();
        println!("\nTry:");
        println!("  clawnode --data-dir {d} fleet");
        println!("  clawnode --data-dir {d} market offers");
        if let Some(first) = fleet.nodes.first() {
            println!(
                "  clawnode --data-dir {} market sell --price 1.1",
                first.display()
            );
        }
        println!(
            "  clawnode --data-dir {d} market bid --model \"NVIDIA H100 80GB HBM3\" --max-price 2 --accept-simulated --image <local image> -- sleep 60"
        );
        println!(
            "  clawnode --data-dir {d} invoke node.health --node {}",
            peers.first().map_or("<peer>", String::as_str)
        );
        println!("\nPrometheus metrics:");
        for (i, addr) in metrics.iter().enumerate() {
            println!("  node-{}  http://{addr}/metrics", i + 1);
        }
        println!(
            "\nAttach a real OpenClaw gateway: CLAW_BRIDGE_TOKEN=<token> clawnode --data-dir {} up --gateway ws://127.0.0.1:18789",
            root.display()
        );
        println!(
            "Ctrl-C stops the fleet (workloads drained); its state stays in {} for the next run.",
            root.display()
        );
    }
    let _ = std::io::stdout().flush();
    let _ = stop_rx.recv();
    step(json, "stopping: draining every node, then every process");
    drop(fleet);
    Ok(())
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
