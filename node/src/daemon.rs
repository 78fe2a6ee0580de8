//! `clawnode run`: join the mesh, announce this node, answer commands, serve the control API.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use claw_attestation::{GpuProbe, read_secret};
use claw_bridge::gateway::{CommandFuture, GatewayConfig, GatewayHandler};
use claw_mesh::{
    InvokeRequest, Mesh, MeshConfig, MeshEvent, MeshHandle, Multiaddr, SwarmKey, TopicKind,
};
use clawnode::access::Role;
use clawnode::commands::NodeCommands;
use clawnode::control::{self, ControlState};
use clawnode::metrics;
use clawnode::workloads::Workloads;
use clawnode::{DataDir, Store, node_services, open_gpu_probe, sign_announcement};
use tokio::net::TcpListener;

/// Name of the optional private-fleet key in the data directory.
const SWARM_KEY_FILE: &str = "swarm.key";

/// Command-line overrides of the `[mesh]` and `[gateway]` config.
#[derive(Debug, Default)]
pub(crate) struct RunOverrides {
    pub(crate) listen: Vec<String>,
    pub(crate) bootstrap: Vec<String>,
    pub(crate) gateway: Option<String>,
    pub(crate) metrics: Option<String>,
}

/// The node's commands, served to the OpenClaw gateway with the role its config gives it.
struct GatewayCommands {
    commands: NodeCommands,
    role: Role,
}

impl GatewayHandler for GatewayCommands {
    fn handle(
        &self,
        command: String,
        params: serde_json::Value,
        timeout: Duration,
        idempotency_key: Option<String>,
    ) -> CommandFuture {
        let commands = self.commands.clone();
        let role = self.role;
        Box::pin(async move {
            let mut request = InvokeRequest::new(command, timeout).with_params(params);
            request.idempotency_key = idempotency_key;
            commands.invoke_for_gateway(role, request).await
        })
    }
}

/// The gateway's token: `$CLAWNODE_GATEWAY_TOKEN`, else `gateway.token_file`.
fn gateway_token(dir: &DataDir) -> Result<String> {
    if let Ok(token) = std::env::var("CLAWNODE_GATEWAY_TOKEN")
        && !token.is_empty()
    {
        return Ok(token);
    }
    let Some(file) = &dir.config().gateway.token_file else {
        bail!(
            "connecting to a gateway needs its token: set CLAWNODE_GATEWAY_TOKEN or gateway.token_file"
        );
    };
    let bytes = read_secret(std::path::Path::new(file))
        .with_context(|| format!("reading the gateway token from {file}"))?;
    let token = String::from_utf8(bytes).context("the gateway token file is not text")?;
    Ok(token.trim().to_owned())
}

fn parse_addrs(what: &str, addrs: &[String]) -> Result<Vec<Multiaddr>> {
    addrs
        .iter()
        .map(|a| {
            a.parse::<Multiaddr>()
                .with_context(|| format!("{what} address {a:?} is not a multiaddr"))
        })
        .collect()
}

fn mesh_config(dir: &DataDir, overrides: &RunOverrides) -> Result<MeshConfig> {
    let section = &dir.config().mesh;
    let listen = if overrides.listen.is_empty() {
        &section.listen
    } else {
        &overrides.listen
    };
    let mut bootstrap = section.bootstrap.clone();
    bootstrap.extend(overrides.bootstrap.iter().cloned());
    let key_path = dir.root().join(SWARM_KEY_FILE);
    let swarm_key = if key_path.exists() {
        let text = read_secret(&key_path)?;
        let text = String::from_utf8(text).context("swarm.key is not text")?;
        let key: SwarmKey = text
            .parse()
            .map_err(|e: String| anyhow::anyhow!("{}: {e}", key_path.display()))?;
        tracing::info!(fingerprint = %key.fingerprint(), "private fleet");
        Some(key)
    } else {
        None
    };
    let mut listen = parse_addrs("listen", listen)?;
    let quic = section.quic && swarm_key.is_none();
    if !quic {
        let before = listen.len();
        listen.retain(|a| !a.to_string().contains("/quic"));
        if listen.len() < before {
            tracing::warn!(
                "QUIC listen addresses dropped: QUIC is off (private fleets use TCP only)"
            );
        }
    }
    Ok(MeshConfig {
        network: dir.config().network.name.clone(),
        listen,
        bootstrap: parse_addrs("bootstrap", &bootstrap)?,
        quic,
        swarm_key,
        mdns: section.mdns,
        announce_interval: Duration::from_secs(section.announce_interval_secs),
        missed_intervals: section.missed_intervals,
        max_clock_skew: dir.config().attestation.max_clock_skew(),
        known_peers_file: Some(dir.root().join("known-peers.json")),
        allow_colocated_peers: section.allow_colocated_peers,
        ..MeshConfig::default()
    })
}

/// Every interval: bring workloads in line with Docker (so exited containers free their GPUs),
/// then sign and publish the node's announcement.
async fn announce_forever(
    dir: Arc<DataDir>,
    store: Store,
    probe: Arc<GpuProbe>,
    workloads: Workloads,
    mesh: MeshHandle,
) {
    let interval = Duration::from_secs(dir.config().mesh.announce_interval_secs);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(error) = workloads.reconcile().await {
            tracing::debug!(%error, "workloads not reconciled");
        }
        let draining = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || store.draining()).await
        };
        if matches!(draining, Ok(Ok(true))) {
            match workloads.drain(None).await {
                Ok(outcomes) if !outcomes.is_empty() => {
                    tracing::info!(?outcomes, "draining: stopping what still runs");
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "draining: workloads not stopped"),
            }
        }
        let addrs: Vec<String> = mesh
            .listen_addrs()
            .await
            .unwrap_or_default()
            .iter()
            .map(ToString::to_string)
            .collect();
        let (dir, store, probe) = (Arc::clone(&dir), store.clone(), Arc::clone(&probe));
        let signed =
            tokio::task::spawn_blocking(move || sign_announcement(&dir, &store, &probe, addrs))
                .await;
        match signed {
            Ok(Ok(envelope)) => {
                if let Err(error) = mesh.announce(envelope.to_bytes()).await {
                    tracing::warn!(%error, "announcement not published");
                }
            }
            Ok(Err(error)) => {
                tracing::error!(%error, "cannot sign announcement")
            }
            Err(error) => tracing::error!(%error, "announcement task failed"),
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(error) => {
                    tracing::warn!(%error, "cannot watch SIGTERM");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
}

/// Runs the node until Ctrl-C or SIGTERM.
pub(crate) async fn run(dir: DataDir, overrides: RunOverrides, json: bool) -> Result<()> {
    let dir = Arc::new(dir);
    let store = dir.open_store()?;
    let probe = Arc::new({
        let dir = Arc::clone(&dir);
        tokio::task::spawn_blocking(move || open_gpu_probe(&dir))
            .await
            .context("probing GPUs")?
    });
    let config = mesh_config(&dir, &overrides)?;
    let services = {
        let (dir, store, probe) = (Arc::clone(&dir), store.clone(), Arc::clone(&probe));
        tokio::task::spawn_blocking(move || node_services(&dir, store, probe))
            .await
            .context("preparing the node's services")?
    };
    let commands = NodeCommands::new(services);
    match commands.workloads().reconcile().await {
        Ok(report) => tracing::info!(?report, "workloads reconciled with Docker"),
        Err(error) => {
            tracing::warn!(%error, "workloads not reconciled (retried every announce interval)")
        }
    }
    let mesh = Mesh::spawn(dir.identity(), config, Arc::new(commands.clone()))
        .context("starting the mesh")?;
    let handle = mesh.handle.clone();

    let control_addr = &dir.config().control.listen;
    let listener = TcpListener::bind(control_addr)
        .await
        .with_context(|| format!("binding the control API on {control_addr}"))?;
    let bound = listener.local_addr()?;
    if !bound.ip().is_loopback() {
        bail!("the control API must listen on loopback, not {bound}");
    }
    let token = control::issue_token(dir.root())?;
    control::write_address(dir.root(), bound).context("recording the control address")?;
    let state = ControlState::new(
        token,
        handle.clone(),
        commands.clone(),
        dir.config().network.name.clone(),
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut server_stop = stop_rx.clone();
    let server = tokio::spawn(control::serve(listener, state, async move {
        let _ = server_stop.wait_for(|stop| *stop).await;
    }));
    let metrics_listen = overrides
        .metrics
        .clone()
        .or_else(|| dir.config().metrics.listen.clone());
    let metrics_addr = match metrics_listen {
        None => None,
        Some(listen) => {
            let listener = TcpListener::bind(&listen)
                .await
                .with_context(|| format!("binding the metrics endpoint on {listen}"))?;
            let bound = listener.local_addr()?;
            if !bound.ip().is_loopback() {
                bail!("the metrics endpoint must listen on loopback, not {bound}");
            }
            clawnode::record_address(dir.root(), metrics::ADDR_FILE, bound)
                .context("recording the metrics address")?;
            let sources = metrics::MetricsSources {
                invokes: commands.invoke_metrics().clone(),
                mesh: handle.clone(),
                store: store.clone(),
                probe: Arc::clone(&probe),
            };
            let mut metrics_stop = stop_rx.clone();
            tokio::spawn(async move {
                let served = metrics::serve(listener, sources, async move {
                    let _ = metrics_stop.wait_for(|stop| *stop).await;
                })
                .await;
                if let Err(error) = served {
                    tracing::error!(%error, "metrics endpoint failed");
                }
            });
            Some(bound)
        }
    };
    let announcer = tokio::spawn(announce_forever(
        Arc::clone(&dir),
        store,
        probe,
        commands.workloads().clone(),
        handle.clone(),
    ));
    let market = commands.market().clone();
    market.attach(handle.clone());
    let market_task = tokio::spawn(market.clone().run(Duration::from_secs(
        dir.config().mesh.announce_interval_secs,
    )));
    let mut events = mesh.events;
    let watcher = tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            match event {
                MeshEvent::Fleet(change) => tracing::info!(?change, "fleet"),
                MeshEvent::Connected(_) => market.peer_connected(),
                MeshEvent::Gossip {
                    kind: TopicKind::Offers,
                    envelope,
                } => market.ingest_offer(&envelope),
                _ => {}
            }
        }
    });

    let gateway_url = overrides
        .gateway
        .clone()
        .or_else(|| dir.config().gateway.url.clone());
    let gateway = match gateway_url {
        None => None,
        Some(url) => {
            let role = dir.config().gateway.role;
            let config = GatewayConfig {
                url,
                token: gateway_token(&dir)?,
                display_name: dir.config().node.name.clone().unwrap_or_else(|| {
                    format!("clawnode-{}", &handle.local_peer_id().to_string()[..12])
                }),
                caps: vec!["gpu".to_owned(), "containers".to_owned()],
                commands: NodeCommands::names_for(role)
                    .into_iter()
                    .map(str::to_owned)
                    .collect(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
            };
            let handler = Arc::new(GatewayCommands {
                commands: commands.clone(),
                role,
            });
            let identity = Arc::new(
                claw_attestation::NodeIdentity::load(&dir.root().join("identity.key"))
                    .context("loading the node identity for the gateway")?,
            );
            Some(tokio::spawn(claw_bridge::gateway::run_node(
                identity,
                config,
                handler,
                stop_rx.clone(),
                None,
            )))
        }
    };

    // Wait for the listeners so that what we print can be used to join this node.
    let addrs = handle.wait_listen_addrs(Duration::from_secs(2)).await;
    let peer = handle.local_peer_id();
    let joinable: Vec<String> = addrs.iter().map(|a| format!("{a}/p2p/{peer}")).collect();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "peer_id": peer.to_string(),
                "control": bound.to_string(),
                "metrics": metrics_addr.map(|a| a.to_string()),
                "listen_addrs": joinable,
            })
        );
    } else {
        println!("clawnode running: peer {peer}");
        println!(
            "control API  http://{bound} (token in {}/control.token)",
            dir.root().display()
        );
        if let Some(addr) = metrics_addr {
            println!("metrics      http://{addr}/metrics");
        }
        for addr in &joinable {
            println!("join with    --bootstrap {addr}");
        }
    }

    let mut gateway_error = None;
    match gateway {
        Some(mut gateway) => {
            tokio::select! {
                () = shutdown_signal() => {}
                ended = &mut gateway => {
                    if let Ok(Err(error)) = ended {
                        gateway_error = Some(error);
                    }
                }
            }
        }
        None => shutdown_signal().await,
    }
    tracing::info!("stopping");
    let _ = stop_tx.send(true);
    announcer.abort();
    market_task.abort();
    handle.shutdown().await;
    let _ = tokio::time::timeout(Duration::from_secs(5), mesh.task).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    watcher.abort();
    control::remove_address(dir.root());
    clawnode::forget_address(dir.root(), metrics::ADDR_FILE);
    drop(stop_rx);
    match gateway_error {
        Some(error) => Err(error).context("the OpenClaw gateway connection"),
        None => Ok(()),
    }
}
