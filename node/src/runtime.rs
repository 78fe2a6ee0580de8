//! A running node. [`Node::start`] brings up everything `clawnode run` serves (the mesh, the
//! control API, metrics, the announcer, the market and the gateway client) and returns a
//! [`NodeHandle`]. Every service is spawned through one [`Tasks`], so [`NodeHandle::stop`] stops
//! them one way and waits for them, the commands still running included.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use claw_attestation::{GpuProbe, KeyFileError, NodeIdentity, read_secret};
use claw_bridge::gateway::{
    CommandFuture, GatewayCall, GatewayConfig, GatewayError, GatewayHandler,
};
use claw_bridge::tls::GatewayTls;
use claw_mesh::{
    InvokeRequest, Mesh, MeshConfig, MeshError, MeshEvent, MeshHandle, Multiaddr, PeerId, SwarmKey,
    TopicKind,
};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::access::Role;
use crate::commands::NodeCommands;
use crate::control::{self, ControlState};
use crate::controller::Deployments;
use crate::tasks::Tasks;
use crate::workloads::Workloads;
use crate::{DataDir, DataDirError, Store, metrics, node_services, open_gpu_probe};

/// Name of the optional private-fleet key in the data directory.
const SWARM_KEY_FILE: &str = "swarm.key";

/// Every this many announce intervals a member catches up on fleet objects from a random peer.
const OBJECT_SYNC_INTERVALS: u32 = 10;

/// The deployment controller's round: the announce interval, or this when that is longer, so
/// that a change an operator signs is acted on at once.
const CONTROLLER_ROUND_AT_MOST: Duration = Duration::from_secs(2);

/// How long [`NodeHandle::stop`] waits for running commands and services to end.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// What the command line sets over the config's `[mesh]`, `[gateway]` and `[metrics]`.
#[derive(Debug, Clone, Default)]
pub struct NodeOptions {
    /// Listen addresses; the config's when empty.
    pub listen: Vec<String>,
    /// Peers to dial, besides the config's.
    pub bootstrap: Vec<String>,
    /// The OpenClaw gateway's URL, over the config's.
    pub gateway: Option<String>,
    /// Where to serve `/metrics`, over the config's.
    pub metrics: Option<String>,
}

/// Why a node did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// An address in the config or options is not a multiaddr.
    #[error("{what} address {addr:?} is not a multiaddr")]
    Address {
        /// Which list it was in.
        what: &'static str,
        /// The address as given.
        addr: String,
    },
    /// `swarm.key` could not be read or parsed.
    #[error("{path}: {reason}")]
    SwarmKey {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The store could not be opened or read.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// A secret file (token, identity) could not be read or written.
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
    /// A listener could not be bound.
    #[error("binding the {what} on {addr}: {source}")]
    Bind {
        /// Which service.
        what: &'static str,
        /// The address asked for.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// A local service was asked to listen beyond loopback.
    #[error("the {what} must listen on loopback, not {addr}")]
    NotLoopback {
        /// Which service.
        what: &'static str,
        /// Where it would have listened.
        addr: SocketAddr,
    },
    /// Recording where a service listens failed.
    #[error("recording the {what} address: {source}")]
    Record {
        /// Which service.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The mesh did not start.
    #[error("starting the mesh: {0}")]
    Mesh(#[from] MeshError),
    /// A gateway was asked for without its token.
    #[error(
        "connecting to a gateway needs its token: set CLAWNODE_GATEWAY_TOKEN or gateway.token_file"
    )]
    GatewayToken,
    /// A `gateway.pin_sha256` is not a certificate's SHA-256.
    #[error("gateway.pin_sha256: {0}")]
    GatewayTls(claw_bridge::tls::TlsError),
    /// The gateway token file is not text.
    #[error("the gateway token file {0} is not text")]
    GatewayTokenText(String),
    /// A start-up step that runs off the async threads failed.
    #[error("{what} failed: {source}")]
    Task {
        /// Which step.
        what: &'static str,
        /// Why.
        source: tokio::task::JoinError,
    },
}

/// Why a running node stopped by itself.
#[derive(Debug, thiserror::Error)]
pub enum NodeFailure {
    /// The gateway refused the node for good (a wrong token, a bad URL).
    #[error("the OpenClaw gateway connection: {0}")]
    Gateway(#[from] GatewayError),
}

/// Starts nodes; see [`Node::start`].
#[derive(Debug)]
pub struct Node;

impl Node {
    /// Starts the node in `dir`: reconciles its workloads with Docker, joins the mesh, serves
    /// the control API (and metrics, and the gateway, where configured) and announces itself
    /// every interval. Must be called within a tokio runtime.
    pub async fn start(dir: DataDir, options: NodeOptions) -> Result<NodeHandle, StartError> {
        let dir = Arc::new(dir);
        let tasks = Tasks::new();
        let store = dir.open_store()?;
        let probe = Arc::new(
            off_thread("probing GPUs", {
                let dir = Arc::clone(&dir);
                move || open_gpu_probe(&dir)
            })
            .await?,
        );
        let mesh_config = mesh_config(&dir, &options)?;
        let services = off_thread("preparing the node's services", {
            let (dir, store, probe, tasks) = (
                Arc::clone(&dir),
                store.clone(),
                Arc::clone(&probe),
                tasks.clone(),
            );
            move || node_services(&dir, store, probe, tasks)
        })
        .await?;
        let commands = NodeCommands::new(services);
        if let Err(error) = commands.workloads().mount_sized_volumes().await {
            tracing::warn!(%error, "size-limited volumes not mounted (mounted again when used)");
        }
        match commands.workloads().reconcile().await {
            Ok(report) => tracing::info!(?report, "workloads reconciled with Docker"),
            Err(error) => {
                tracing::warn!(%error, "workloads not reconciled (retried every announce interval)")
            }
        }
        let mesh = Mesh::spawn(dir.identity(), mesh_config, Arc::new(commands.clone()))?;
        let handle = mesh.handle.clone();
        watch_mesh(&tasks, mesh, &commands);

        let control_addr = serve_control(&dir, &tasks, &handle, &commands).await?;
        let metrics_addr =
            serve_metrics(&dir, &tasks, &options, &handle, &commands, &store).await?;
        let ingress_addr = serve_ingress(&dir, &tasks, &handle, &commands).await?;
        tasks.spawn_service(announce_forever(
            Arc::clone(&dir),
            store,
            probe,
            commands.clone(),
            handle.clone(),
        ));
        let market = commands.market().clone();
        market.attach(handle.clone());
        let interval = Duration::from_secs(dir.config().mesh.announce_interval_secs);
        tasks.spawn_service(market.run(interval));
        commands.backups().attach(handle.clone());
        tasks.spawn_service(commands.services().clone().run(handle.clone()));
        let objects = commands.objects().clone();
        objects.attach(handle.clone());
        tasks.spawn_service(objects.run(interval * OBJECT_SYNC_INTERVALS));
        let deployments = commands.deployments().clone();
        deployments.attach(handle.clone());
        tasks.spawn_service(
            deployments
                .clone()
                .run(interval.min(CONTROLLER_ROUND_AT_MOST)),
        );
        tasks.spawn_service(deployments.check_health());
        let jobs = commands.jobs().clone();
        jobs.attach(handle.clone());
        tasks.spawn_service(jobs.run(interval.min(CONTROLLER_ROUND_AT_MOST)));
        let failure = connect_gateway(&dir, &tasks, &options, &handle, &commands)?;
        Ok(NodeHandle {
            dir,
            control_addr,
            metrics_addr,
            ingress_addr,
            mesh: handle,
            commands,
            tasks,
            failure,
        })
    }
}

/// A running node: where it listens, its mesh and commands, and the one way to stop it.
#[derive(Debug)]
pub struct NodeHandle {
    dir: Arc<DataDir>,
    control_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    ingress_addr: Option<SocketAddr>,
    mesh: MeshHandle,
    commands: NodeCommands,
    tasks: Tasks,
    failure: Option<oneshot::Receiver<NodeFailure>>,
}

impl NodeHandle {
    /// The node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.mesh.local_peer_id()
    }

    /// Where the control API listens (loopback).
    pub fn control_addr(&self) -> SocketAddr {
        self.control_addr
    }

    /// Where `/metrics` is served, when it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Where the ingress listener serves HTTP, when it does.
    pub fn ingress_addr(&self) -> Option<SocketAddr> {
        self.ingress_addr
    }

    /// The node's data directory.
    pub fn data_dir(&self) -> &DataDir {
        &self.dir
    }

    /// The node's mesh.
    pub fn mesh(&self) -> &MeshHandle {
        &self.mesh
    }

    /// The node's commands, as the control API and the mesh run them.
    pub fn commands(&self) -> &NodeCommands {
        &self.commands
    }

    /// The addresses other nodes can join this one on (`…/p2p/<peer>`), once the listeners are
    /// up or `wait` has passed.
    pub async fn joinable_addrs(&self, wait: Duration) -> Vec<String> {
        let peer = self.peer_id();
        self.mesh
            .wait_listen_addrs(wait)
            .await
            .iter()
            .map(|a| format!("{a}/p2p/{peer}"))
            .collect()
    }

    /// Completes when a service stopped for good by itself; pending forever while all run.
    pub async fn failed(&mut self) -> NodeFailure {
        match self.failure.as_mut() {
            Some(failure) => match failure.await {
                Ok(failure) => failure,
                Err(_) => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    }

    /// Stops the node: every service is asked to stop through one token, the mesh leaves, and
    /// the commands still running are waited for (up to 10 s). Returns how many tasks were still
    /// running after that (0 when everything ended).
    pub async fn stop(self) -> usize {
        tracing::info!("stopping");
        let unfinished = self.tasks.stop(STOP_GRACE).await;
        if unfinished > 0 {
            tracing::warn!(unfinished, "tasks still running after the stop grace");
        }
        control::remove_address(self.dir.root());
        crate::forget_address(self.dir.root(), metrics::ADDR_FILE);
        unfinished
    }
}

async fn off_thread<T: Send + 'static>(
    what: &'static str,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, StartError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|source| StartError::Task { what, source })
}

/// The mesh's event loop, left through its shutdown command when the node stops, and the task
/// that reads its events for the market.
fn watch_mesh(tasks: &Tasks, mesh: Mesh, commands: &NodeCommands) {
    let Mesh {
        handle,
        mut events,
        task,
    } = mesh;
    let stopping = tasks.stopping();
    tasks.spawn(async move {
        stopping.await;
        handle.shutdown().await;
        let _ = task.await;
    });
    let market = commands.market().clone();
    let objects = commands.objects().clone();
    tasks.spawn_service(async move {
        while let Some(event) = events.recv().await {
            match event {
                MeshEvent::Fleet(change) => tracing::info!(?change, "fleet"),
                MeshEvent::Connected(peer) => {
                    market.peer_connected(peer);
                    objects.peer_connected(peer);
                }
                MeshEvent::Gossip {
                    kind: TopicKind::Offers,
                    envelope,
                } => market.ingest_offer(&envelope),
                MeshEvent::Gossip {
                    kind: TopicKind::Objects,
                    envelope,
                } => objects.gossiped(envelope),
                MeshEvent::Pending {
                    kind: TopicKind::Trades,
                    envelope,
                    claim,
                } => market.trade_reported(envelope, claim),
                _ => {}
            }
        }
    });
}

async fn bind_loopback(what: &'static str, addr: &str) -> Result<TcpListener, StartError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind {
            what,
            addr: addr.to_owned(),
            source,
        })?;
    let bound = listener.local_addr().map_err(|source| StartError::Bind {
        what,
        addr: addr.to_owned(),
        source,
    })?;
    if !bound.ip().is_loopback() {
        return Err(StartError::NotLoopback { what, addr: bound });
    }
    Ok(listener)
}

async fn serve_control(
    dir: &Arc<DataDir>,
    tasks: &Tasks,
    mesh: &MeshHandle,
    commands: &NodeCommands,
) -> Result<SocketAddr, StartError> {
    const WHAT: &str = "control API";
    let listener = bind_loopback(WHAT, &dir.config().control.listen).await?;
    let bound = listener
        .local_addr()
        .map_err(|source| StartError::Record { what: WHAT, source })?;
    let token = control::issue_token(dir.root())?;
    control::write_address(dir.root(), bound)
        .map_err(|source| StartError::Record { what: WHAT, source })?;
    let state = ControlState::new(
        token,
        mesh.clone(),
        commands.clone(),
        Arc::clone(dir),
        tasks.token(),
    );
    let stopping = tasks.stopping();
    tasks.spawn(async move {
        if let Err(error) = control::serve(listener, state, stopping).await {
            tracing::error!(%error, "control API failed");
        }
    });
    Ok(bound)
}

/// Serves HTTP for the ingress rules that name this member, when `ingress.listen` is set.
async fn serve_ingress(
    dir: &DataDir,
    tasks: &Tasks,
    mesh: &MeshHandle,
    commands: &NodeCommands,
) -> Result<Option<SocketAddr>, StartError> {
    const WHAT: &str = "ingress listener";
    let Some(listen) = dir.config().ingress.listen.clone() else {
        return Ok(None);
    };
    let bind_error = |source| StartError::Bind {
        what: WHAT,
        addr: listen.clone(),
        source,
    };
    let listener = TcpListener::bind(&listen).await.map_err(bind_error)?;
    let bound = listener.local_addr().map_err(bind_error)?;
    crate::record_address(dir.root(), crate::ingress::ADDR_FILE, bound)
        .map_err(|source| StartError::Record { what: WHAT, source })?;
    let name = crate::announced_name(dir.config(), || {
        claw_attestation::probe_host(dir.root()).hostname
    });
    let ingress = crate::ingress::Ingress::new(
        commands.objects().clone(),
        commands.services().clone(),
        mesh.local_peer_id(),
        name,
    );
    tasks.spawn_service(ingress.serve(listener));
    tracing::info!(%bound, "ingress listener serving");
    Ok(Some(bound))
}

async fn serve_metrics(
    dir: &DataDir,
    tasks: &Tasks,
    options: &NodeOptions,
    mesh: &MeshHandle,
    commands: &NodeCommands,
    store: &Store,
) -> Result<Option<SocketAddr>, StartError> {
    const WHAT: &str = "metrics endpoint";
    let Some(listen) = options
        .metrics
        .clone()
        .or_else(|| dir.config().metrics.listen.clone())
    else {
        return Ok(None);
    };
    let listener = bind_loopback(WHAT, &listen).await?;
    let bound = listener
        .local_addr()
        .map_err(|source| StartError::Record { what: WHAT, source })?;
    crate::record_address(dir.root(), metrics::ADDR_FILE, bound)
        .map_err(|source| StartError::Record { what: WHAT, source })?;
    let sources = metrics::MetricsSources {
        invokes: commands.invoke_metrics().clone(),
        mesh: mesh.clone(),
        store: store.clone(),
        probe: Arc::clone(commands.probe()),
    };
    let stopping = tasks.stopping();
    tasks.spawn(async move {
        if let Err(error) = metrics::serve(listener, sources, stopping).await {
            tracing::error!(%error, "metrics endpoint failed");
        }
    });
    Ok(Some(bound))
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
        call: GatewayCall,
    ) -> CommandFuture {
        let commands = self.commands.clone();
        let role = self.role;
        Box::pin(async move {
            let mut request = InvokeRequest::new(command, call.timeout).with_params(params);
            request.idempotency_key = call.idempotency_key;
            request.api_key = call.api_key;
            commands.invoke_for_gateway(role, request).await
        })
    }
}

/// Connects to the OpenClaw gateway, where one is configured. The receiver gets the reason
/// the connection stopped for good, if it does.
fn connect_gateway(
    dir: &DataDir,
    tasks: &Tasks,
    options: &NodeOptions,
    mesh: &MeshHandle,
    commands: &NodeCommands,
) -> Result<Option<oneshot::Receiver<NodeFailure>>, StartError> {
    let Some(url) = options
        .gateway
        .clone()
        .or_else(|| dir.config().gateway.url.clone())
    else {
        return Ok(None);
    };
    let section = &dir.config().gateway;
    let role = section.role;
    let tls = GatewayTls::from_settings(
        section.ca_file.as_ref().map(PathBuf::from),
        &section.pin_sha256,
    )
    .map_err(StartError::GatewayTls)?;
    let config = GatewayConfig {
        url,
        tls,
        token: gateway_token(dir)?,
        display_name: dir
            .config()
            .node
            .name
            .clone()
            .unwrap_or_else(|| format!("clawnode-{}", &mesh.local_peer_id().to_string()[..12])),
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
    let identity = Arc::new(NodeIdentity::load(&dir.root().join("identity.key"))?);
    let (failed, failure) = oneshot::channel();
    let stop = tasks.token();
    tasks.spawn(async move {
        if let Err(error) =
            claw_bridge::gateway::run_node(identity, config, handler, stop, None).await
        {
            let _ = failed.send(NodeFailure::Gateway(error));
        }
    });
    Ok(Some(failure))
}

/// The gateway's token: `$CLAWNODE_GATEWAY_TOKEN`, else `gateway.token_file`.
fn gateway_token(dir: &DataDir) -> Result<String, StartError> {
    if let Ok(token) = std::env::var("CLAWNODE_GATEWAY_TOKEN")
        && !token.is_empty()
    {
        return Ok(token);
    }
    let Some(file) = &dir.config().gateway.token_file else {
        return Err(StartError::GatewayToken);
    };
    let bytes = read_secret(std::path::Path::new(file))?;
    let token = String::from_utf8(bytes).map_err(|_| StartError::GatewayTokenText(file.clone()))?;
    Ok(token.trim().to_owned())
}

fn parse_addrs(what: &'static str, addrs: &[String]) -> Result<Vec<Multiaddr>, StartError> {
    addrs
        .iter()
        .map(|a| {
            a.parse::<Multiaddr>().map_err(|_| StartError::Address {
                what,
                addr: a.clone(),
            })
        })
        .collect()
}

fn swarm_key(dir: &DataDir) -> Result<Option<SwarmKey>, StartError> {
    let path = dir.root().join(SWARM_KEY_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let invalid = |reason: String| StartError::SwarmKey {
        path: path.clone(),
        reason,
    };
    let text = read_secret(&path)?;
    let text = String::from_utf8(text).map_err(|_| invalid("not text".to_owned()))?;
    let key: SwarmKey = text.parse().map_err(invalid)?;
    tracing::info!(fingerprint = %key.fingerprint(), "private fleet");
    Ok(Some(key))
}

/// The operators whose membership credentials this node honours: its operators and admins with
/// `[access] members_only`, else none (every peer counts).
fn fleet_operators(access: &crate::config::AccessSection) -> Vec<claw_mesh::PeerId> {
    if !access.members_only {
        return Vec::new();
    }
    access
        .operators
        .iter()
        .chain(&access.admins)
        .filter_map(|peer| peer.parse().ok())
        .collect()
}

fn mesh_config(dir: &DataDir, options: &NodeOptions) -> Result<MeshConfig, StartError> {
    let section = &dir.config().mesh;
    let listen = if options.listen.is_empty() {
        &section.listen
    } else {
        &options.listen
    };
    let mut bootstrap = section.bootstrap.clone();
    bootstrap.extend(options.bootstrap.iter().cloned());
    let swarm_key = swarm_key(dir)?;
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
        relay_server: section.relay_server,
        relays: parse_addrs("relays", &section.relays)?,
        external_addrs: parse_addrs("external_addrs", &section.external_addrs)?,
        nat_probe_private_addresses: section.nat_probe_private_addresses,
        fleet_operators: fleet_operators(&dir.config().access),
        ..MeshConfig::default()
    })
}

/// Every interval: bring workloads in line with Docker (so exited containers free their GPUs),
/// keep stopping what runs while the node drains, then sign and publish the node's announcement
/// when it is due: every interval in a fleet of up to 50 nodes, less often in a larger one
/// ([`claw_mesh::paced_interval`]).
async fn announce_forever(
    dir: Arc<DataDir>,
    store: Store,
    probe: Arc<GpuProbe>,
    commands: NodeCommands,
    mesh: MeshHandle,
) {
    let workloads = commands.workloads();
    let interval = Duration::from_secs(dir.config().mesh.announce_interval_secs);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut published: Option<tokio::time::Instant> = None;
    loop {
        tick.tick().await;
        if let Err(error) = workloads.reconcile().await {
            tracing::debug!(%error, "workloads not reconciled");
        }
        keep_draining(&store, workloads, commands.deployments()).await;
        let paced = mesh.announce_interval();
        // Due within half a tick counts as due: ticks do not land exactly.
        if published.is_some_and(|at| at.elapsed() + interval / 2 < paced) {
            continue;
        }
        let addrs = crate::listen_addr_texts(&mesh).await;
        let reachability = mesh.reachability();
        let (dir, store, probe) = (Arc::clone(&dir), store.clone(), Arc::clone(&probe));
        let signed = tokio::task::spawn_blocking(move || {
            crate::sign_announcement(&dir, &store, &probe, addrs, reachability, paced)
        })
        .await;
        match signed {
            Ok(Ok(envelope)) => {
                if let Err(error) = mesh.announce(envelope.to_bytes()).await {
                    tracing::warn!(%error, "announcement not published");
                } else {
                    published = Some(tokio::time::Instant::now());
                }
            }
            Ok(Err(error)) => tracing::error!(%error, "cannot sign announcement"),
            Err(error) => tracing::error!(%error, "announcement task failed"),
        }
    }
}

/// While the node is draining, stops what still runs.
async fn keep_draining(store: &Store, workloads: &Workloads, deployments: &Deployments) {
    if !matches!(store.run(|store| store.draining()).await, Ok(true)) {
        return;
    }
    match workloads.drain(None, deployments.moving().await).await {
        Ok(outcomes) if !outcomes.is_empty() => {
            tracing::info!(?outcomes, "draining: stopping what still runs");
        }
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "draining: workloads not stopped"),
    }
}
