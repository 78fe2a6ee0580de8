//! Helpers for in-process mesh tests: nodes on loopback that announce themselves periodically.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use claw_attestation::{
    Envelope, GpuDevice, HardwareInventory, HostInfo, NodeIdentity, NvmlStatus, Validity,
};
use claw_mesh::{
    ErrorCode, HandlerFuture, InvokeFailure, InvokeHandler, InvokeRequest, InvokeResponse, Mesh,
    MeshConfig, MeshEvent, MeshHandle, Multiaddr, NodeAnnouncement, PeerId, SwarmKey,
};
use tokio::task::JoinHandle;

/// Answers `echo` (returns params), `sleep` (params: ms) and nothing else.
pub struct TestHandler;

impl InvokeHandler for TestHandler {
    fn handle(&self, caller: PeerId, request: InvokeRequest) -> HandlerFuture {
        Box::pin(async move {
            match request.command.as_str() {
                "echo" => InvokeResponse::Ok(serde_json::json!({
                    "params": request.params,
                    "caller": caller.to_string(),
                })),
                "sleep" => {
                    let ms = request.params.as_u64().unwrap_or(0);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    InvokeResponse::Ok(serde_json::json!({ "slept_ms": ms }))
                }
                other => InvokeResponse::Error(InvokeFailure::new(
                    ErrorCode::UnknownCommand,
                    format!("no command {other}"),
                )),
            }
        })
    }
}

pub struct TestNode {
    pub identity: Arc<NodeIdentity>,
    /// Gossip deliveries and rejections, with the time each arrived.
    pub events: Arc<std::sync::Mutex<Vec<(std::time::Instant, MeshEvent)>>>,
    pub handle: MeshHandle,
    pub addr: Multiaddr,
    seq: Arc<AtomicU64>,
    mesh_task: JoinHandle<()>,
    tasks: Vec<JoinHandle<()>>,
}

/// A bare libp2p peer with only its own new key and `behaviour` (TCP, Noise, Yamux): an
/// attacker or stranger that speaks libp2p but is no fleet node. Its connections stay open
/// while it runs.
pub fn stranger<B: libp2p::swarm::NetworkBehaviour>(
    behaviour: impl FnOnce(&libp2p::identity::Keypair) -> B,
) -> libp2p::Swarm<B> {
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default(),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )
        .expect("tcp")
        .with_behaviour(behaviour)
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(600)))
        .build()
}

pub fn test_config(network: &str) -> MeshConfig {
    MeshConfig {
        network: network.to_owned(),
        announce_interval: Duration::from_millis(1000),
        missed_intervals: 3,
        allow_colocated_peers: true,
        heartbeat_interval: Duration::from_millis(200),
        ..MeshConfig::default()
    }
}

pub fn announcement(name: &str, network: &str) -> NodeAnnouncement {
    NodeAnnouncement {
        name: name.to_owned(),
        network: network.to_owned(),
        region: None,
        labels: BTreeMap::new(),
        software_version: "test".into(),
        listen_addrs: vec![],
        inventory: HardwareInventory {
            host: HostInfo::default(),
            nvml: NvmlStatus::Unavailable {
                reason: "test node".into(),
            },
            gpus: vec![GpuDevice {
                index: 0,
                uuid: format!("GPU-sim-{name}"),
                model: "NVIDIA H100 80GB HBM3".into(),
                memory_total_bytes: 80 << 30,
                pci_bus_id: None,
                compute_capability: None,
                ecc: None,
                power_limit_mw: None,
                max_clocks: None,
                temperature_c: None,
                simulated: true,
            }],
        },
        allocated_gpus: vec![],
        running_workloads: 0,
        taints: Vec::new(),
        reachability: Default::default(),
        membership: None,
        cordoned: false,
    }
}

pub fn sign(identity: &NodeIdentity, seq: u64, announcement: &NodeAnnouncement) -> Vec<u8> {
    Envelope::seal(
        identity,
        seq,
        Validity::from_now(Duration::from_secs(60)),
        announcement,
    )
    .to_bytes()
}

impl TestNode {
    /// Starts a node that announces itself every `config.announce_interval`.
    pub async fn start(name: &str, config: MeshConfig) -> Self {
        let identity = Arc::new(NodeIdentity::generate());
        Self::start_with(identity, name, config, true).await
    }

    pub async fn start_with(
        identity: Arc<NodeIdentity>,
        name: &str,
        config: MeshConfig,
        announce: bool,
    ) -> Self {
        let network = config.network.clone();
        let interval = config.announce_interval;
        let mesh = Mesh::spawn(&identity, config, Arc::new(TestHandler)).expect("mesh starts");
        let handle = mesh.handle.clone();
        let mut receiver = mesh.events;
        let events = Arc::new(std::sync::Mutex::new(Vec::new()));
        let recorded = Arc::clone(&events);
        let drain = tokio::spawn(async move {
            while let Some(event) = receiver.recv().await {
                // A claim held for the application's verdict: these tests judge a `TestReport`
                // by what it says, and record one they accept as delivered.
                let event = match event {
                    MeshEvent::Pending {
                        kind,
                        envelope,
                        claim,
                    } => {
                        if envelope.open::<TestReport>().is_ok_and(|r| r.holds) {
                            claim.accept();
                            MeshEvent::Gossip { kind, envelope }
                        } else {
                            claim.reject();
                            continue;
                        }
                    }
                    event => event,
                };
                if matches!(
                    event,
                    MeshEvent::Gossip { .. } | MeshEvent::GossipRejected { .. }
                ) {
                    recorded
                        .lock()
                        .expect("not poisoned")
                        .push((std::time::Instant::now(), event));
                }
            }
        });
        let addr = loop {
            let addrs = handle.listen_addrs().await.expect("mesh runs");
            if let Some(a) = addrs.into_iter().next() {
                break a.with_p2p(identity.peer_id()).expect("no peer id yet");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let seq = Arc::new(AtomicU64::new(1));
        let mut tasks = vec![drain];
        if announce {
            let (identity, handle, seq, name) = (
                identity.clone(),
                handle.clone(),
                seq.clone(),
                name.to_owned(),
            );
            let listen = addr.to_string();
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(interval);
                loop {
                    tick.tick().await;
                    let n = seq.fetch_add(1, Ordering::SeqCst);
                    let mut claim = announcement(&name, &network);
                    claim.listen_addrs = vec![listen.clone()];
                    let bytes = sign(&identity, n, &claim);
                    if handle.announce(bytes).await.is_err() {
                        break;
                    }
                }
            }));
        }
        Self {
            identity,
            events,
            handle,
            addr,
            seq,
            mesh_task: mesh.task,
            tasks,
        }
    }

    pub fn peer_id(&self) -> PeerId {
        self.identity.peer_id()
    }

    pub fn sees(&self) -> Vec<PeerId> {
        self.handle.fleet().into_iter().map(|m| m.peer_id).collect()
    }

    pub async fn stop(self) {
        for task in &self.tasks {
            task.abort();
        }
        self.handle.shutdown().await;
        // The mesh saves what it must (known peers) on the way out.
        let _ = tokio::time::timeout(Duration::from_secs(5), self.mesh_task).await;
        for task in self.tasks {
            task.abort();
        }
    }
}

/// Waits until `check` holds, polling every 50 ms; `Err` after `limit`, with `what` logged.
pub async fn wait_until(
    limit: Duration,
    what: &str,
    mut check: impl FnMut() -> bool,
) -> Result<(), ()> {
    let start = tokio::time::Instant::now();
    while !check() {
        if start.elapsed() >= limit {
            eprintln!("timed out after {limit:?} waiting for {what}");
            return Err(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

pub fn with_key(mut config: MeshConfig, key: Option<SwarmKey>) -> MeshConfig {
    config.swarm_key = key;
    config
}

/// A TCP transport that only dials, from source address `source`: a host other than the one
/// the nodes under test run on, on this machine's loopback (127.0.0.0/8 is all local).
struct DialFrom {
    source: std::net::IpAddr,
}

impl libp2p::core::Transport for DialFrom {
    type Output = libp2p::tcp::tokio::TcpStream;
    type Error = std::io::Error;
    type ListenerUpgrade = std::future::Pending<Result<Self::Output, Self::Error>>;
    type Dial = futures::future::BoxFuture<'static, Result<Self::Output, Self::Error>>;

    fn listen_on(
        &mut self,
        _id: libp2p::core::transport::ListenerId,
        addr: Multiaddr,
    ) -> Result<(), libp2p::core::transport::TransportError<Self::Error>> {
        Err(libp2p::core::transport::TransportError::MultiaddrNotSupported(addr))
    }

    fn remove_listener(&mut self, _id: libp2p::core::transport::ListenerId) -> bool {
        false
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        _opts: libp2p::core::transport::DialOpts,
    ) -> Result<Self::Dial, libp2p::core::transport::TransportError<Self::Error>> {
        use libp2p::multiaddr::Protocol;
        let mut parts = addr.iter();
        let target = match (parts.next(), parts.next()) {
            (Some(Protocol::Ip4(ip)), Some(Protocol::Tcp(port))) => {
                std::net::SocketAddr::from((ip, port))
            }
            _ => return Err(libp2p::core::transport::TransportError::MultiaddrNotSupported(addr)),
        };
        let source = self.source;
        Ok(Box::pin(async move {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(std::net::SocketAddr::new(source, 0))?;
            let stream = socket.connect(target).await?;
            stream.set_nodelay(true)?;
            Ok(libp2p::tcp::tokio::TcpStream(stream))
        }))
    }

    fn poll(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<libp2p::core::transport::TransportEvent<Self::ListenerUpgrade, Self::Error>>
    {
        std::task::Poll::Pending
    }
}

/// What a Sybil key runs: gossip on the network's topics (it looks like a fleet node) that
/// it never forwards (it validates nothing), and identify as a claw peer.
#[derive(libp2p::swarm::NetworkBehaviour)]
pub struct SybilBehaviour {
    gossipsub: libp2p::gossipsub::Behaviour,
    identify: libp2p::identify::Behaviour,
}

/// A Sybil: a new key on host `source` that speaks the fleet's gossip on `network` and drops
/// everything it hears. Dial with it; it cannot be dialled.
pub fn sybil(source: std::net::Ipv4Addr, network: &str) -> libp2p::Swarm<SybilBehaviour> {
    use libp2p::core::Transport as _;
    use libp2p::core::upgrade::Version;
    use libp2p::gossipsub;
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_other_transport(|key| {
            DialFrom {
                source: source.into(),
            }
            .upgrade(Version::V1)
            .authenticate(libp2p::noise::Config::new(key).expect("noise"))
            .multiplex(libp2p::yamux::Config::default())
        })
        .expect("transport")
        .with_behaviour(|key| {
            let config = gossipsub::ConfigBuilder::default()
                .validation_mode(gossipsub::ValidationMode::Anonymous)
                .validate_messages()
                .build()
                .expect("gossipsub config");
            SybilBehaviour {
                gossipsub: gossipsub::Behaviour::new(
                    gossipsub::MessageAuthenticity::Anonymous,
                    config,
                )
                .expect("gossipsub"),
                identify: libp2p::identify::Behaviour::new(libp2p::identify::Config::new(
                    "/claw/id/1.0.0".to_owned(),
                    key.public(),
                )),
            }
        })
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(600)))
        .build();
    for kind in claw_mesh::TopicKind::ALL {
        let name = claw_mesh::TopicName::new(network, kind).expect("topic");
        swarm
            .behaviour_mut()
            .gossipsub
            .subscribe(&gossipsub::IdentTopic::new(name.as_str()))
            .expect("subscribe");
    }
    swarm
}

/// A trade report as these tests gossip it: the application's verdict is what it says.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct TestReport {
    /// Whether the application finds it true.
    pub holds: bool,
}

impl claw_attestation::SignedPayload for TestReport {
    const KIND: claw_attestation::PayloadKind = claw_attestation::PayloadKind::TradeReport;
}
