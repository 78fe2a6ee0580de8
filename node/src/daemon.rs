//! `clawnode run`: join the mesh, announce this node, answer commands, serve the control API.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use claw_attestation::{GpuProbe, read_secret};
use claw_mesh::{Mesh, MeshConfig, MeshEvent, MeshHandle, Multiaddr, SwarmKey, TopicKind};
use clawnode::commands::NodeCommands;
use clawnode::control::{self, ControlState};
use clawnode::workloads::Workloads;
use clawnode::{DataDir, Store, node_services, open_gpu_probe, sign_announcement};
use tokio::net::TcpListener;

/// Name of the optional private-fleet key in the data directory.
const SWARM_KEY_FILE: &str = "swarm.key";

/// Command-line overrides of the `[mesh]` config.
#[derive(Debug, Default)]
pub(crate) struct RunOverrides {
    pub(crate) listen: Vec<String>,
    pub(crate) bootstrap: Vec<String>,
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

    // Wait for the listeners so that what we print can be used to join this node.
    let mut addrs = Vec::new();
    for _ in 0..100 {
        addrs = handle.listen_addrs().await.unwrap_or_default();
        if !addrs.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let peer = handle.local_peer_id();
    let joinable: Vec<String> = addrs.iter().map(|a| format!("{a}/p2p/{peer}")).collect();
    if json {
        println!(
            "{}",
            serde_json::json!({"peer_id": peer.to_string(), "control": bound.to_string(), "listen_addrs": joinable})
        );
    } else {
        println!("clawnode running: peer {peer}");
        println!(
            "control API  http://{bound} (token in {}/control.token)",
            dir.root().display()
        );
        for addr in &joinable {
            println!("join with    --bootstrap {addr}");
        }
    }

    shutdown_signal().await;
    tracing::info!("stopping");
    let _ = stop_tx.send(true);
    announcer.abort();
    market_task.abort();
    handle.shutdown().await;
    let _ = tokio::time::timeout(Duration::from_secs(5), mesh.task).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    watcher.abort();
    control::remove_address(dir.root());
    drop(stop_rx);
    Ok(())
}
