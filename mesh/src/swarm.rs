//! The one task that owns the libp2p `Swarm`.
//!
//! ```text
//!  MeshHandle ──Command──▶ ┌────────────┐ ──MeshEvent──▶ application
//!                          │ event loop │
//!  handler tasks ─reply──▶ │  (Swarm)   │ ◀── network
//!                          └────────────┘
//!                                │ writes
//!                                ▼
//!                       Arc<RwLock<FleetView>> ◀── MeshHandle reads (no round trip)
//! ```
//!
//! Inbound invokes run in their own tasks and send their answers back through a bounded
//! channel; gossip is validated once per message before gossipsub forwards it: its signature
//! off this task, in batches ([`crate::verify`]), the rest here.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use claw_attestation::{
    NodeIdentity, PayloadKind, ReplayGuard, Seen, SeenEnvelopes, VerifiedEnvelope, Verifier,
    VerifyError, unix_millis,
};
use futures::StreamExt as _;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::upgrade::Version;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, MessageId, TopicHash};
use libp2p::kad::{self, store::MemoryStore, store::RecordStore as _};
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent, behaviour::toggle::Toggle};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, Transport as _, autonat, connection_limits, dcutr,
    identify, mdns, noise, ping, relay, tcp, yamux,
};
use sha2::{Digest as _, Sha256};
use tokio::sync::{mpsc, oneshot};

use crate::config::MeshConfig;
use crate::fleet::{FleetChange, FleetMember, FleetView, NodeAnnouncement};
use crate::invoke::{
    ErrorCode, InvokeFailure, InvokeHandler, InvokeRequest, InvokeResponse, MAX_REQUEST_BYTES,
    MAX_RESPONSE_BYTES, precheck,
};
use crate::known_peers::KnownPeers;
use crate::nat::{self, NatView, PunchRetries, Reachability, RelaySelection};
use crate::pending::{JUDGED_BY_APPLICATION, MAX_WAITING_VERDICTS, PendingClaim, Verdict};
use crate::stats::{GossipVerdict, HolePunch, MeshStats};
use crate::verify::{self, Checked, Unchecked, VerifyQueue, settle_late};
use crate::{MeshError, MeshEvent, TopicKind, TopicName};

const INVOKE_PROTOCOL: StreamProtocol = StreamProtocol::new("/claw/invoke/1");
const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/claw/kad/1.0.0");
const IDENTIFY_PROTOCOL: &str = "/claw/id/1.0.0";
/// Gossipsub's duplicate cache keeps message ids this long, so an identical copy never reaches
/// validation twice within it.
const DUPLICATE_CACHE: Duration = Duration::from_secs(120);
/// How often a node with no connections dials its seeds again.
const REJOIN_INTERVAL: Duration = Duration::from_secs(5);
/// Connections to one peer at most (a relayed one and the direct one that replaces it).
const MAX_CONNECTIONS_PER_PEER: u32 = 2;
/// DHT lookups one node walks at once for its callers (each lasts at most the query timeout).
const MAX_PENDING_LOOKUPS: usize = 16;
/// Largest Kademlia record value stored for a peer (Kademlia messages are capped at 16 KiB).
const MAX_RECORD_BYTES: usize = 8 * 1024;

#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    limits: connection_limits::Behaviour,
    inbound: crate::inbound::InboundLimits,
    gossipsub: gossipsub::Behaviour,
    kad: kad::Behaviour<MemoryStore>,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    invoke: request_response::json::Behaviour<InvokeRequest, InvokeResponse>,
    mdns: Toggle<mdns::tokio::Behaviour>,
    stream: libp2p_stream::Behaviour,
    announced: crate::routing::AnnouncedAddresses,
    autonat: autonat::Behaviour,
    relay_client: relay::client::Behaviour,
    relay: Toggle<relay::Behaviour>,
    dcutr: dcutr::Behaviour,
}

impl Behaviour {
    /// A handle that opens and accepts raw streams (services), outside the event loop.
    pub(crate) fn stream_control(&self) -> libp2p_stream::Control {
        self.stream.new_control()
    }
}

/// What a handle asks the event loop to do.
#[derive(Debug)]
pub(crate) enum Command {
    Announce {
        envelope: Vec<u8>,
        reply: oneshot::Sender<Result<(), MeshError>>,
    },
    Publish {
        kind: TopicKind,
        envelope: Vec<u8>,
        reply: oneshot::Sender<Result<(), MeshError>>,
    },
    Invoke {
        peer: PeerId,
        request: InvokeRequest,
        reply: oneshot::Sender<Result<InvokeResponse, InvokeFailure>>,
    },
    Dial {
        address: Multiaddr,
        reply: oneshot::Sender<Result<(), MeshError>>,
    },
    FindProviders {
        model: String,
        reply: oneshot::Sender<HashSet<PeerId>>,
    },
    PutRecord {
        key: String,
        value: Vec<u8>,
        reply: oneshot::Sender<Result<(), MeshError>>,
    },
    GetRecord {
        key: String,
        reply: oneshot::Sender<Option<Vec<u8>>>,
    },
    ClosestPeers {
        key: PeerId,
        reply: oneshot::Sender<Result<Vec<PeerId>, MeshError>>,
    },
    ListenAddrs {
        reply: oneshot::Sender<Vec<Multiaddr>>,
    },
    ConnectedPeers {
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    PeerScore {
        peer: PeerId,
        reply: oneshot::Sender<Option<f64>>,
    },
    Shutdown,
}

pub(crate) struct EventLoop {
    swarm: Swarm<Behaviour>,
    config: MeshConfig,
    local_peer_id: PeerId,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<MeshEvent>,
    fleet: Arc<RwLock<FleetView>>,
    handler: Arc<dyn InvokeHandler>,
    answers_tx: mpsc::Sender<(ResponseChannel<InvokeResponse>, InvokeResponse)>,
    answers_rx: mpsc::Receiver<(ResponseChannel<InvokeResponse>, InvokeResponse)>,
    /// The application's verdicts on claims held back for them.
    verdicts_tx: mpsc::Sender<Verdict>,
    verdicts_rx: mpsc::Receiver<Verdict>,
    pending_invokes: HashMap<OutboundRequestId, PendingInvoke>,
    pending_providers: HashMap<kad::QueryId, (HashSet<PeerId>, oneshot::Sender<HashSet<PeerId>>)>,
    pending_puts: HashMap<kad::QueryId, oneshot::Sender<Result<(), MeshError>>>,
    pending_gets: HashMap<kad::QueryId, oneshot::Sender<Option<Vec<u8>>>>,
    pending_closest: HashMap<kad::QueryId, oneshot::Sender<Result<Vec<PeerId>, MeshError>>>,
    verifier: Verifier,
    /// Gossip waiting for, or in, a signature check.
    checks: VerifyQueue,
    checked: mpsc::Receiver<Vec<Checked>>,
    replay_guard: ReplayGuard,
    seen_claims: SeenEnvelopes,
    topics: Topics,
    provided_models: HashSet<String>,
    known_peers: KnownPeers,
    listen_addrs: Vec<Multiaddr>,
    stats: Arc<MeshStats>,
    nat: Arc<RwLock<NatView>>,
    relays: RelaySelection,
    /// Peers to punch through to again.
    punches: PunchRetries,
    routing: crate::routing::RoutingQuota,
    inbound: crate::eviction::InboundPeers,
}

impl std::fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLoop")
            .field("local_peer_id", &self.local_peer_id)
            .finish_non_exhaustive()
    }
}

/// The addresses `member` announced (signed by itself), the first 16 that parse.
fn announced_addresses(member: &crate::FleetMember) -> impl Iterator<Item = Multiaddr> + '_ {
    member
        .announcement
        .listen_addrs
        .iter()
        .take(16)
        .filter_map(|a| a.parse::<Multiaddr>().ok())
}

/// SHA-256 of the message data: identical claims get identical ids whoever forwards them.
fn message_id(message: &gossipsub::Message) -> MessageId {
    MessageId::from(Sha256::digest(&message.data).to_vec())
}

/// An invoke waiting for its answer. It keeps its request until a connection to the peer
/// opens: a dial that fails (one of several the swarm may have in flight to the peer, say to a
/// private address it announced) gets it sent once more, on whatever path opened meanwhile
/// (a relay's circuit).
struct PendingInvoke {
    reply: oneshot::Sender<Result<InvokeResponse, InvokeFailure>>,
    resend: Option<(PeerId, InvokeRequest)>,
}

/// The network's gossip topics.
#[derive(Debug, Clone)]
pub(crate) struct Topics {
    idents: Vec<(TopicKind, IdentTopic)>,
}

impl Topics {
    pub(crate) fn new(network: &str) -> Result<Self, MeshError> {
        let idents = TopicKind::ALL
            .into_iter()
            .map(|kind| {
                TopicName::new(network, kind)
                    .map(|name| (kind, IdentTopic::new(name.as_str())))
                    .map_err(|e| MeshError::Config(e.to_string()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { idents })
    }

    fn ident(&self, kind: TopicKind) -> IdentTopic {
        self.idents
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, t)| t.clone())
            .expect("every topic kind has a topic")
    }

    fn kind_of(&self, hash: &TopicHash) -> Option<TopicKind> {
        self.idents
            .iter()
            .find(|(_, t)| &t.hash() == hash)
            .map(|(k, _)| *k)
    }
}

fn gossipsub_behaviour(
    config: &MeshConfig,
    topics: &Topics,
) -> Result<gossipsub::Behaviour, MeshError> {
    let gossip_config = gossipsub::ConfigBuilder::default()
        .validation_mode(gossipsub::ValidationMode::Anonymous)
        .validate_messages()
        .message_id_fn(message_id)
        .max_transmit_size(config.max_message_bytes)
        .heartbeat_interval(config.heartbeat_interval)
        .duplicate_cache_time(DUPLICATE_CACHE)
        .build()
        .map_err(|e| MeshError::Config(format!("gossipsub: {e}")))?;
    let mut behaviour =
        gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Anonymous, gossip_config)
            .map_err(|e| MeshError::Config(format!("gossipsub: {e}")))?;

    let mut params = gossipsub::PeerScoreParams::default();
    if config.allow_colocated_peers {
        params.ip_colocation_factor_weight = 0.0;
    }
    let topic_params = gossipsub::TopicScoreParams {
        topic_weight: 1.0,
        // Announcements are sparse: do not punish mesh peers for delivering few messages.
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        // Time in the mesh earns little, so it can never outweigh an invalid message.
        time_in_mesh_weight: 0.01,
        time_in_mesh_quantum: Duration::from_secs(1),
        time_in_mesh_cap: 3600.0,
        // Every invalid claim a peer forwards costs it dearly.
        invalid_message_deliveries_weight: -100.0,
        invalid_message_deliveries_decay: 0.9,
        ..gossipsub::TopicScoreParams::default()
    };
    for (_, topic) in &topics.idents {
        params.topics.insert(topic.hash(), topic_params.clone());
    }
    let thresholds = gossipsub::PeerScoreThresholds::default();
    behaviour
        .with_peer_score(params, thresholds)
        .map_err(|e| MeshError::Config(format!("gossipsub scoring: {e}")))?;
    Ok(behaviour)
}

pub(crate) fn build_swarm(
    identity: &NodeIdentity,
    config: &MeshConfig,
    topics: &Topics,
    fleet: Arc<RwLock<FleetView>>,
) -> Result<Swarm<Behaviour>, MeshError> {
    let keypair = identity.libp2p_keypair();
    let behaviour = |key: &libp2p::identity::Keypair,
                     relay_client: relay::client::Behaviour|
     -> Result<Behaviour, Box<dyn std::error::Error + Send + Sync>> {
        let local = key.public().to_peer_id();
        let mut kad_config = kad::Config::new(KAD_PROTOCOL);
        kad_config.set_query_timeout(Duration::from_secs(30));
        // Peers' records and provider announcements are checked before they are stored.
        kad_config.set_record_filtering(kad::StoreInserts::FilterBoth);
        // Nothing enters the routing table but what the event loop admits (per-IP quotas).
        kad_config.set_kbucket_inserts(kad::BucketInserts::Manual);
        let mut kad = kad::Behaviour::with_config(local, MemoryStore::new(local), kad_config);
        kad.set_mode(Some(kad::Mode::Server));
        let mdns = if config.mdns {
            Some(mdns::tokio::Behaviour::new(mdns::Config::default(), local)?)
        } else {
            None
        };
        let invoke_codec = request_response::json::codec::Codec::default()
            .set_request_size_maximum(MAX_REQUEST_BYTES)
            .set_response_size_maximum(MAX_RESPONSE_BYTES);
        Ok(Behaviour {
            limits: connection_limits::Behaviour::new(
                connection_limits::ConnectionLimits::default()
                    .with_max_established(Some(config.max_connections))
                    // One slot past the inbound share: taking it makes the node drop its
                    // least useful inbound peer, so there is always room for a late joiner.
                    .with_max_established_incoming(Some(inbound_share(config) + 1))
                    .with_max_established_per_peer(Some(MAX_CONNECTIONS_PER_PEER))
                    .with_max_pending_incoming(Some(64)),
            ),
            inbound: crate::inbound::InboundLimits::new((!config.allow_colocated_peers).then_some(
                crate::inbound::InboundCaps {
                    per_ip: config.max_inbound_per_ip,
                    per_network: config.max_inbound_per_network,
                },
            )),
            gossipsub: gossipsub_behaviour(config, topics)?,
            kad,
            identify: identify::Behaviour::new(
                identify::Config::new(IDENTIFY_PROTOCOL.to_owned(), key.public())
                    .with_agent_version(format!("clawbernetes/{}", env!("CARGO_PKG_VERSION"))),
            ),
            ping: ping::Behaviour::new(ping::Config::new()),
            invoke: request_response::Behaviour::with_codec(
                invoke_codec,
                [(INVOKE_PROTOCOL, ProtocolSupport::Full)],
                request_response::Config::default()
                    .with_request_timeout(config.max_invoke_deadline + Duration::from_secs(5))
                    .with_max_concurrent_streams(config.max_concurrent_invokes),
            ),
            mdns: Toggle::from(mdns),
            stream: libp2p_stream::Behaviour::new(),
            announced: crate::routing::AnnouncedAddresses::new(Arc::clone(&fleet)),
            autonat: autonat::Behaviour::new(local, autonat_config(config)),
            relay_client,
            relay: Toggle::from(config.relay_server.then(|| relay_server(local))),
            dcutr: dcutr::Behaviour::new(local),
        })
    };
    let idle = config.idle_connection_timeout;
    let build_error = |e: &dyn std::fmt::Display| MeshError::Transport(e.to_string());
    let swarm = if let Some(key) = config.swarm_key {
        let psk = key.0;
        tracing::info!(fingerprint = %psk.fingerprint(), "private fleet: TCP + pnet + Noise + Yamux, QUIC off");
        libp2p::SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_other_transport(|key| {
                let noise = noise::Config::new(key)?;
                let transport = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
                    .and_then(move |socket, _| libp2p::pnet::PnetConfig::new(psk).handshake(socket))
                    .upgrade(Version::V1Lazy)
                    .authenticate(noise)
                    .multiplex(yamux::Config::default())
                    .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)));
                Ok(transport)
            })
            .map_err(|e| build_error(&e))?
            .with_relay_client(noise::Config::new, yamux::Config::default)
            .map_err(|e| build_error(&e))?
            .with_behaviour(behaviour)
            .map_err(|e| build_error(&e))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(idle))
            .build()
    } else if config.quic {
        // Public network: QUIC beside TCP.
        libp2p::SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .map_err(|e| build_error(&e))?
            .with_quic()
            .with_relay_client(noise::Config::new, yamux::Config::default)
            .map_err(|e| build_error(&e))?
            .with_behaviour(behaviour)
            .map_err(|e| build_error(&e))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(idle))
            .build()
    } else {
        libp2p::SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .map_err(|e| build_error(&e))?
            .with_relay_client(noise::Config::new, yamux::Config::default)
            .map_err(|e| build_error(&e))?
            .with_behaviour(behaviour)
            .map_err(|e| build_error(&e))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(idle))
            .build()
    };
    Ok(swarm)
}

/// Inbound connections a node keeps: its connections less those reserved for its own dials.
fn inbound_share(config: &MeshConfig) -> u32 {
    config
        .max_connections
        .saturating_sub(config.reserved_outbound)
        .max(1)
}

/// AutoNAT: a first probe soon after start, then again until sure, and every 10 minutes.
fn autonat_config(config: &MeshConfig) -> autonat::Config {
    autonat::Config {
        boot_delay: Duration::from_secs(5),
        retry_interval: Duration::from_secs(30),
        refresh_interval: Duration::from_secs(600),
        throttle_server_period: Duration::from_secs(30),
        only_global_ips: !config.nat_probe_private_addresses,
        ..autonat::Config::default()
    }
}

/// A relay that carries a fleet's traffic until hole punching takes over, and the whole of it
/// for nodes where punching fails: circuits last 10 minutes and 64 MiB (then re-dialled on
/// demand), 128 reservations, 64 circuits, 8 per peer.
fn relay_server(local: PeerId) -> relay::Behaviour {
    let mut relay = relay::Behaviour::new(
        local,
        relay::Config {
            max_reservations: 128,
            max_reservations_per_peer: 2,
            max_circuits: 64,
            max_circuits_per_peer: 8,
            max_circuit_duration: Duration::from_secs(600),
            max_circuit_bytes: 64 * 1024 * 1024,
            ..relay::Config::default()
        },
    );
    // Offered at once: the operator says this node is reachable (reservations still carry only
    // confirmed external addresses).
    relay.set_status(Some(relay::Status::Enable));
    relay
}

/// Key under which providers of a GPU model are recorded in Kademlia.
fn provider_key(network: &str, model: &str) -> kad::RecordKey {
    kad::RecordKey::new(&format!("claw/{network}/gpu-model/{model}"))
}

impl EventLoop {
    pub(crate) fn new(
        swarm: Swarm<Behaviour>,
        config: MeshConfig,
        commands: mpsc::Receiver<Command>,
        events: mpsc::Sender<MeshEvent>,
        fleet: Arc<RwLock<FleetView>>,
        handler: Arc<dyn InvokeHandler>,
        topics: Topics,
    ) -> Self {
        let (answers_tx, answers_rx) = mpsc::channel(256);
        let (verdicts_tx, verdicts_rx) = mpsc::channel(MAX_WAITING_VERDICTS);
        let verifier = Verifier::new()
            .with_max_envelope_bytes(config.max_message_bytes)
            .with_max_clock_skew(config.max_clock_skew);
        let known_peers = KnownPeers::load(config.known_peers_file.clone());
        let (checks, checked) = VerifyQueue::new(verifier.clone());
        Self {
            local_peer_id: *swarm.local_peer_id(),
            swarm,
            commands,
            events,
            fleet,
            handler,
            answers_tx,
            answers_rx,
            verdicts_tx,
            verdicts_rx,
            pending_invokes: HashMap::new(),
            pending_providers: HashMap::new(),
            pending_puts: HashMap::new(),
            pending_gets: HashMap::new(),
            pending_closest: HashMap::new(),
            verifier,
            checks,
            checked,
            replay_guard: ReplayGuard::new(100_000),
            seen_claims: SeenEnvelopes::new(200_000),
            topics,
            provided_models: HashSet::new(),
            known_peers,
            listen_addrs: Vec::new(),
            stats: Arc::default(),
            nat: Arc::default(),
            relays: RelaySelection::default(),
            punches: PunchRetries::default(),
            routing: crate::routing::RoutingQuota::new(!config.allow_colocated_peers),
            inbound: crate::eviction::InboundPeers::default(),
            config,
        }
    }

    /// The reachability view this loop keeps, for handles to read.
    pub(crate) fn nat_view(&self) -> Arc<RwLock<NatView>> {
        Arc::clone(&self.nat)
    }

    /// The counters this loop keeps, for handles to read.
    pub(crate) fn stats(&self) -> Arc<MeshStats> {
        Arc::clone(&self.stats)
    }

    /// Starts listening, subscribes, dials bootstrap and remembered peers.
    pub(crate) fn start(&mut self) -> Result<(), MeshError> {
        for address in self.config.listen.clone() {
            self.swarm
                .listen_on(address.clone())
                .map_err(|e| MeshError::Transport(format!("listen on {address}: {e:?}")))?;
        }
        for address in self.config.external_addrs.clone() {
            self.swarm.add_external_address(address);
        }
        if self.config.relay_server && self.config.external_addrs.is_empty() {
            tracing::warn!(
                "serving as a relay with no external_addrs: reservations carry an address peers \
                 can dial, so none are taken until AutoNAT confirms one"
            );
        }
        for relay in self.config.relays.clone() {
            let Some(peer) = peer_of(&relay) else {
                return Err(MeshError::Config(format!(
                    "relay {relay} must end in /p2p/<peer id>"
                )));
            };
            self.add_route(peer, relay.clone());
            let circuit = nat::circuit_through(&relay, peer);
            let listener = self
                .swarm
                .listen_on(circuit.clone())
                .map_err(|e| MeshError::Transport(format!("listen through {circuit}: {e:?}")))?;
            self.relays.listening(listener, peer);
        }
        for (_, topic) in &self.topics.idents {
            self.swarm
                .behaviour_mut()
                .gossipsub
                .subscribe(topic)
                .map_err(|e| MeshError::Config(format!("subscribe: {e}")))?;
        }
        if self.dial_seeds() > 0 {
            let _ = self.swarm.behaviour_mut().kad.bootstrap();
        }
        Ok(())
    }

    /// Dials the configured bootstrap peers and the remembered ones, seeding Kademlia with their
    /// addresses; returns how many were dialled.
    fn dial_seeds(&mut self) -> usize {
        let mut seeds: Vec<Multiaddr> = self.config.bootstrap.clone();
        seeds.extend(self.known_peers.addresses());
        let mut dialled = 0;
        for address in seeds {
            let peer = peer_of(&address);
            if peer == Some(self.local_peer_id) {
                continue;
            }
            if let Some(peer) = peer {
                self.add_route(peer, address.clone());
            }
            match self.swarm.dial(address.clone()) {
                Ok(()) => dialled += 1,
                Err(error) => tracing::warn!(%address, %error, "cannot dial seed peer"),
            }
        }
        dialled
    }

    pub(crate) async fn run(mut self) {
        let mut expiry = tokio::time::interval(Duration::from_millis(500));
        expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut persist = tokio::time::interval(Duration::from_secs(30));
        persist.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut rejoin = tokio::time::interval(REJOIN_INTERVAL);
        rejoin.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        rejoin.reset();
        loop {
            tokio::select! {
                biased;
                command = self.commands.recv() => match command {
                    Some(Command::Shutdown) | None => break,
                    Some(command) => self.on_command(command),
                },
                Some((channel, answer)) = self.answers_rx.recv() => {
                    if self.swarm.behaviour_mut().invoke.send_response(channel, answer).is_err() {
                        tracing::debug!("invoke caller went away before the answer");
                    }
                }
                Some(verdict) = self.verdicts_rx.recv() => self.on_verdict(verdict),
                Some(batch) = self.checked.recv() => {
                    self.checks.finished();
                    for (message, verified) in batch {
                        self.on_checked(message, verified);
                    }
                }
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                _ = expiry.tick() => {
                    self.expire();
                    self.punch_again();
                }
                _ = persist.tick() => self.known_peers.save(),
                _ = rejoin.tick() => {
                    self.rejoin_if_alone();
                    self.listen_through_relays();
                }
            }
        }
        self.known_peers.save();
        tracing::info!(peer = %self.local_peer_id, "mesh stopped");
    }

    /// A node with no connection (its seeds refused it, or the network dropped) dials its
    /// bootstrap and remembered peers again.
    fn rejoin_if_alone(&mut self) {
        if self.swarm.connected_peers().next().is_some() {
            return;
        }
        let dialled = self.dial_seeds();
        if dialled > 0 {
            tracing::info!(seeds = dialled, "no connections: dialled known peers again");
            let _ = self.swarm.behaviour_mut().kad.bootstrap();
        }
    }

    /// Opens a fresh relayed connection to each peer whose punch is due to be tried again:
    /// the peer takes it as inbound, and DCUtR punches once more with what both know now.
    /// Not where the per-peer connection limit leaves no room: no connection in use is closed
    /// for a punch.
    fn punch_again(&mut self) {
        let due: Vec<PeerId> = {
            let view = self.nat.read().unwrap_or_else(|p| p.into_inner());
            self.punches
                .due(Instant::now(), &view)
                .into_iter()
                .filter(|peer| view.connections_to(peer) < MAX_CONNECTIONS_PER_PEER as usize)
                .collect()
        };
        for peer in due {
            let relayed: Vec<Multiaddr> = {
                let fleet = self.fleet.read().unwrap_or_else(|p| p.into_inner());
                fleet
                    .get(&peer)
                    .map(|member| {
                        announced_addresses(member)
                            .filter(nat::is_relayed)
                            .collect()
                    })
                    .unwrap_or_default()
            };
            if relayed.is_empty() {
                tracing::debug!(%peer, "no relayed address to punch through again");
                continue;
            }
            let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                .condition(libp2p::swarm::dial_opts::PeerCondition::Always)
                .addresses(relayed)
                .build();
            match self.swarm.dial(opts) {
                Ok(()) => {
                    self.stats.count_hole_punch(HolePunch::Retried);
                    tracing::info!(%peer, "hole punching tried again through the relay");
                }
                Err(error) => tracing::debug!(%peer, %error, "cannot dial through the relay"),
            }
        }
    }

    fn emit(&self, event: MeshEvent) {
        if self.events.try_send(event).is_err() {
            tracing::debug!("mesh event dropped: the application is not keeping up");
        }
    }

    fn expire(&mut self) {
        let changes = {
            let mut fleet = self.fleet.write().unwrap_or_else(|p| p.into_inner());
            fleet.expire(Instant::now(), unix_millis(SystemTime::now()))
        };
        for change in changes {
            if let FleetChange::Left(peer) = change {
                tracing::info!(%peer, "node left the fleet view");
                self.emit(MeshEvent::Fleet(change));
            }
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Announce { envelope, reply } => {
                let result = self.announce(envelope);
                let _ = reply.send(result);
            }
            Command::Publish {
                kind,
                envelope,
                reply,
            } => {
                let topic = self.topics.ident(kind);
                let result = self.publish(topic, envelope);
                let _ = reply.send(result);
            }
            Command::Invoke {
                peer,
                request,
                reply,
            } => {
                let resend = (!self.swarm.is_connected(&peer)).then(|| (peer, request.clone()));
                let id = self
                    .swarm
                    .behaviour_mut()
                    .invoke
                    .send_request(&peer, request);
                self.pending_invokes
                    .insert(id, PendingInvoke { reply, resend });
            }
            Command::Dial { address, reply } => {
                if let Some(peer) = peer_of(&address) {
                    self.add_route(peer, address.clone());
                }
                let result = self
                    .swarm
                    .dial(address)
                    .map_err(|e| MeshError::Transport(e.to_string()));
                let _ = reply.send(result);
            }
            Command::FindProviders { model, reply } => {
                let key = provider_key(&self.config.network, &model);
                let id = self.swarm.behaviour_mut().kad.get_providers(key);
                self.pending_providers.insert(id, (HashSet::new(), reply));
            }
            Command::PutRecord { key, value, reply } => {
                let record = kad::Record::new(self.record_key(&key), value);

                match self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .put_record(record, kad::Quorum::One)
                {
                    Ok(id) => {
                        self.pending_puts.insert(id, reply);
                    }
                    Err(error) => {
                        let _ = reply.send(Err(MeshError::Rejected(error.to_string())));
                    }
                }
            }
            Command::GetRecord { key, reply } => {
                let key = self.record_key(&key);
                let id = self.swarm.behaviour_mut().kad.get_record(key);
                self.pending_gets.insert(id, reply);
            }
            Command::ClosestPeers { key, reply } => {
                if self.pending_closest.len() >= MAX_PENDING_LOOKUPS {
                    let _ = reply.send(Err(MeshError::Rejected(format!(
                        "{MAX_PENDING_LOOKUPS} DHT lookups are in flight already"
                    ))));
                    return;
                }
                let id = self.swarm.behaviour_mut().kad.get_closest_peers(key);
                self.pending_closest.insert(id, reply);
            }
            Command::ListenAddrs { reply } => {
                let _ = reply.send(self.listen_addrs.clone());
            }
            Command::ConnectedPeers { reply } => {
                let _ = reply.send(self.swarm.connected_peers().copied().collect());
            }
            Command::PeerScore { peer, reply } => {
                let _ = reply.send(self.swarm.behaviour().gossipsub.peer_score(&peer));
            }
            Command::Shutdown => {}
        }
    }

    /// Publishes our own announcement, records it in our own view, and registers us in
    /// Kademlia as a provider of each GPU model we have.
    fn announce(&mut self, envelope: Vec<u8>) -> Result<(), MeshError> {
        let (member, _) = self
            .verify_announcement(&envelope)
            .map_err(|e| MeshError::Rejected(e.to_string()))?;
        if member.peer_id != self.local_peer_id {
            return Err(MeshError::Rejected(
                "announcements must be signed by this node".to_owned(),
            ));
        }
        let models: HashSet<String> = member
            .announcement
            .inventory
            .gpus
            .iter()
            .map(|g| g.model.clone())
            .collect();
        for model in models {
            if self.provided_models.insert(model.clone()) {
                let key = provider_key(&self.config.network, &model);
                if let Err(error) = self.swarm.behaviour_mut().kad.start_providing(key) {
                    tracing::warn!(%model, %error, "cannot record GPU model provider");
                }
            }
        }
        self.record_member(member);
        let topic = self.topics.ident(TopicKind::Inventory);
        match self.publish(topic, envelope) {
            // Alone in the mesh is not an error: our own view has us, and the next announcement
            // reaches peers that join later.
            Err(MeshError::NoPeers) | Ok(()) => Ok(()),
            Err(error) => Err(error),
        }
    }

    fn publish(&mut self, topic: IdentTopic, envelope: Vec<u8>) -> Result<(), MeshError> {
        if envelope.len() > self.config.max_message_bytes {
            return Err(MeshError::Rejected(format!(
                "{} bytes exceeds the {}-byte message cap",
                envelope.len(),
                self.config.max_message_bytes
            )));
        }
        match self
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(topic, envelope)
        {
            Ok(_) => Ok(()),
            Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => Err(MeshError::NoPeers),
            Err(gossipsub::PublishError::Duplicate) => Ok(()),
            Err(error) => Err(MeshError::Rejected(error.to_string())),
        }
    }

    fn verify_announcement(
        &mut self,
        bytes: &[u8],
    ) -> Result<(FleetMember, VerifiedEnvelope), VerifyError> {
        let verified = self
            .verifier
            .verify_at(bytes, None, unix_millis(SystemTime::now()))?;
        self.member_of(verified)
    }

    /// The fleet member a verified announcement makes, with its standing.
    fn member_of(
        &mut self,
        verified: VerifiedEnvelope,
    ) -> Result<(FleetMember, VerifiedEnvelope), VerifyError> {
        let announcement: NodeAnnouncement = verified.open()?;
        if announcement.network != self.config.network {
            return Err(VerifyError::Malformed(format!(
                "announcement for network {:?} on {:?}",
                announcement.network, self.config.network
            )));
        }
        let envelope = verified.envelope();
        let peer_id = verified.signer_peer_id();
        // A credential is checked once: an announcement carrying the one already checked keeps
        // its standing (whose expiry is read at each use).
        let known = self
            .fleet
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&peer_id)
            .filter(|known| known.announcement.membership == announcement.membership)
            .map(|known| known.standing);
        let standing = known.unwrap_or_else(|| {
            crate::FleetMembership::standing(
                announcement.membership.as_deref(),
                peer_id,
                &self.config.network,
                &self.config.fleet_operators,
                unix_millis(SystemTime::now()),
            )
        });
        let member = FleetMember {
            peer_id,
            announcement,
            seq: envelope.seq(),
            issued_at_ms: envelope.issued_at_ms(),
            expires_at_ms: envelope.expires_at_ms(),
            standing,
        };
        Ok((member, verified))
    }

    fn record_member(&mut self, member: FleetMember) {
        let peer = member.peer_id;
        let addresses_changed = {
            let fleet = self.fleet.read().unwrap_or_else(|p| p.into_inner());
            fleet.get(&peer).is_none_or(|known| {
                known.announcement.listen_addrs != member.announcement.listen_addrs
            })
        };
        if peer != self.local_peer_id && addresses_changed {
            // The addresses are signed by the node itself: good enough to dial it by.
            let addresses: Vec<Multiaddr> = announced_addresses(&member)
                .filter(usable_address)
                .collect();
            for address in addresses {
                self.add_route(peer, address);
            }
        }
        let change = {
            let mut fleet = self.fleet.write().unwrap_or_else(|p| p.into_inner());
            fleet.upsert(member, Instant::now())
        };
        if let Some(change) = change {
            if matches!(change, FleetChange::Joined(_)) {
                tracing::info!(%peer, "node joined the fleet view");
            }
            self.emit(MeshEvent::Fleet(change));
        }
    }

    /// Queues a gossip message for its signature check; one on no topic of ours is rejected at
    /// once, and one that finds the queue full is ignored.
    fn on_gossip(&mut self, source: PeerId, id: MessageId, message: gossipsub::Message) {
        let Some(topic) = self.topics.kind_of(&message.topic) else {
            let unexpected = VerifyError::Malformed("unexpected topic".to_owned());
            self.judge(source, &id, None, Err(unexpected));
            return;
        };
        let unchecked = Unchecked {
            source,
            id,
            topic,
            data: message.data,
        };
        if self.checks.check_here(Instant::now()) {
            // At a fleet's usual rate one check here costs less than a hand-over.
            let now = unix_millis(SystemTime::now());
            let verified = self.verifier.verify_at(&unchecked.data, None, now);
            let verified = settle_late(&self.verifier, &unchecked.data, verified);
            self.on_checked(unchecked, verified);
        } else if self.checks.is_full() {
            tracing::debug!(%source, "gossip ignored: its check queue is full");
            self.judge(
                source,
                &unchecked.id,
                Some(topic),
                Ok(Accepted::Stale(topic)),
            );
        } else {
            self.checks.push(unchecked);
        }
    }

    /// The rest of a gossip message's checks once its signature was checked, and its verdict.
    fn on_checked(&mut self, message: Unchecked, verified: Result<VerifiedEnvelope, VerifyError>) {
        let now = unix_millis(SystemTime::now());
        let Unchecked {
            source, id, topic, ..
        } = message;
        if verify::is_late(&verified) {
            // Expired on its way, or while it waited here (a loaded node falls behind), and its
            // signature holds ([`settle_late`] checked it where the first check ran): a late
            // copy, not a forgery, so it is dropped without blaming the forwarder. Nothing
            // expired is ever taken.
            self.judge(source, &id, Some(topic), Ok(Accepted::Stale(topic)));
            return;
        }
        let outcome = match topic {
            TopicKind::Inventory => {
                verified
                    .and_then(|verified| self.member_of(verified))
                    .and_then(|(member, verified)| {
                        match self.replay_guard.admit(&verified) {
                            Ok(()) => Ok(Accepted::Announcement(Box::new(member))),
                            // An older announcement, still valid and signed by its node, was
                            // overtaken on another path: a late copy, however late, is no
                            // forgery. Drop it without blaming the forwarder (gossipsub's
                            // duplicate cache keeps the same copy from coming back at once).
                            Err(VerifyError::Replay { .. }) => {
                                Ok(Accepted::Stale(TopicKind::Inventory))
                            }
                            Err(error) => Err(error),
                        }
                    })
            }
            kind => {
                let expected = match kind {
                    TopicKind::Offers => PayloadKind::Offer,
                    TopicKind::Objects => PayloadKind::FleetObject,
                    TopicKind::Trades => PayloadKind::TradeReport,
                    _ => PayloadKind::Bid,
                };
                verified.and_then(|verified| {
                    let found = verified.envelope().kind();
                    if found != expected {
                        return Err(VerifyError::WrongKind { expected, found });
                    }
                    // A fleet object's revision is its replay guard (the store keeps the
                    // newest); its ten-year envelope would only crowd the claims out here.
                    if kind != TopicKind::Objects
                        && self.seen_claims.admit(&verified, now)? == Seen::Again
                    {
                        // A late copy of a claim taken already, on another path: honest.
                        return Ok(Accepted::Stale(kind));
                    }
                    if JUDGED_BY_APPLICATION.contains(&kind) {
                        return Ok(Accepted::Pending(kind, Box::new(verified)));
                    }
                    Ok(Accepted::Claim(kind, Box::new(verified)))
                })
            }
        };
        self.judge(source, &id, Some(topic), outcome);
    }

    /// The application answered on a claim held back for it: counted, and reported to
    /// gossipsub (which forwards it, or drops it and penalises its forwarder).
    fn on_verdict(&mut self, verdict: Verdict) {
        let counted = match verdict.acceptance {
            MessageAcceptance::Accept => GossipVerdict::Accepted,
            MessageAcceptance::Reject => {
                tracing::warn!(source = %verdict.source, topic = ?verdict.kind, "rejected gossip the application found false");
                GossipVerdict::Rejected
            }
            MessageAcceptance::Ignore => GossipVerdict::Ignored,
        };
        self.stats.count_gossip(verdict.kind, counted);
        let _ = self
            .swarm
            .behaviour_mut()
            .gossipsub
            .report_message_validation_result(&verdict.id, &verdict.source, verdict.acceptance);
    }

    /// Acts on a gossip message's outcome and reports the verdict to gossipsub.
    fn judge(
        &mut self,
        source: PeerId,
        id: &MessageId,
        topic: Option<TopicKind>,
        outcome: Result<Accepted, VerifyError>,
    ) {
        let acceptance = match outcome {
            Ok(Accepted::Announcement(member)) => {
                if member.peer_id != self.local_peer_id {
                    self.stats.observe_delivery(
                        TopicKind::Inventory,
                        unix_millis(SystemTime::now()).saturating_sub(member.issued_at_ms),
                    );
                    self.record_member(*member);
                }
                self.stats
                    .count_gossip(TopicKind::Inventory, GossipVerdict::Accepted);
                MessageAcceptance::Accept
            }
            Ok(Accepted::Claim(kind, envelope)) => {
                self.stats.count_gossip(kind, GossipVerdict::Accepted);
                self.stats.observe_delivery(
                    kind,
                    unix_millis(SystemTime::now())
                        .saturating_sub(envelope.envelope().issued_at_ms()),
                );
                self.emit(MeshEvent::Gossip { kind, envelope });
                MessageAcceptance::Accept
            }
            Ok(Accepted::Pending(kind, envelope)) => {
                self.stats.observe_delivery(
                    kind,
                    unix_millis(SystemTime::now())
                        .saturating_sub(envelope.envelope().issued_at_ms()),
                );
                // Counted, and reported to gossipsub, once the application answers.
                let claim = PendingClaim::new(id.clone(), source, kind, self.verdicts_tx.clone());
                self.emit(MeshEvent::Pending {
                    kind,
                    envelope,
                    claim,
                });
                return;
            }
            Ok(Accepted::Stale(kind)) => {
                self.stats.count_gossip(kind, GossipVerdict::Ignored);
                MessageAcceptance::Ignore
            }
            Err(error) => {
                tracing::warn!(%source, %error, "rejected gossip");
                if let Some(kind) = topic {
                    self.stats.count_gossip(kind, GossipVerdict::Rejected);
                }
                self.emit(MeshEvent::GossipRejected {
                    source,
                    reason: error.to_string(),
                });
                MessageAcceptance::Reject
            }
        };
        let _ = self
            .swarm
            .behaviour_mut()
            .gossipsub
            .report_message_validation_result(id, &source, acceptance);
    }

    fn on_inbound_invoke(
        &mut self,
        caller: PeerId,
        request: InvokeRequest,
        channel: ResponseChannel<InvokeResponse>,
    ) {
        if let Err(failure) = precheck(&request) {
            let _ = self
                .swarm
                .behaviour_mut()
                .invoke
                .send_response(channel, InvokeResponse::Error(failure));
            return;
        }
        let deadline =
            Duration::from_millis(request.deadline_ms).min(self.config.max_invoke_deadline);
        let handler = Arc::clone(&self.handler);
        let answers = self.answers_tx.clone();
        let command = request.command.clone();
        tokio::spawn(async move {
            let answer = match tokio::time::timeout(deadline, handler.handle(caller, request)).await
            {
                Ok(answer) => answer,
                Err(_) => InvokeResponse::Error(InvokeFailure::new(
                    ErrorCode::Timeout,
                    format!(
                        "{command} did not finish within {} ms",
                        deadline.as_millis()
                    ),
                )),
            };
            // Bounded: if the loop is saturated this waits, never the loop itself.
            let _ = answers.send((channel, answer)).await;
        });
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            })) => self.on_gossip(propagation_source, message_id, message),
            SwarmEvent::Behaviour(BehaviourEvent::Invoke(event)) => self.on_invoke_event(event),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                if info.protocol_version != IDENTIFY_PROTOCOL {
                    tracing::debug!(peer = %peer_id, version = %info.protocol_version, "not a claw peer");
                    return;
                }
                let addresses: Vec<Multiaddr> = info
                    .listen_addrs
                    .iter()
                    .filter(|a| usable_address(a))
                    .cloned()
                    .collect();
                for address in addresses {
                    self.add_route(peer_id, address);
                }
                self.known_peers.remember(peer_id, &info.listen_addrs);
                if info.protocols.contains(&relay::HOP_PROTOCOL_NAME) {
                    self.relays.offered(peer_id, &info.listen_addrs);
                    self.listen_through_relays();
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Autonat(autonat::Event::StatusChanged {
                new,
                ..
            })) => {
                let reachability = match new {
                    autonat::NatStatus::Public(_) => Reachability::Public,
                    autonat::NatStatus::Private => Reachability::Private,
                    autonat::NatStatus::Unknown => Reachability::Unknown,
                };
                tracing::info!(reachability = reachability.as_str(), "reachability changed");
                self.nat
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .set_reachability(reachability);
                self.listen_through_relays();
            }
            SwarmEvent::Behaviour(BehaviourEvent::RelayClient(
                relay::client::Event::ReservationReqAccepted {
                    relay_peer_id,
                    renewal: false,
                    ..
                },
            )) => {
                tracing::info!(relay = %relay_peer_id, "reachable through a relay");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(dcutr::Event {
                remote_peer_id,
                result,
            })) => match result {
                Ok(_) => {
                    self.punches.settled(&remote_peer_id);
                    self.stats.count_hole_punch(HolePunch::Direct);
                    tracing::info!(peer = %remote_peer_id, "relayed connection upgraded to a direct one")
                }
                Err(error) => {
                    self.punches.failed(remote_peer_id, Instant::now());
                    self.stats.count_hole_punch(HolePunch::Failed);
                    tracing::debug!(peer = %remote_peer_id, %error, "hole punching failed; staying relayed for now")
                }
            },
            SwarmEvent::ListenerClosed { listener_id, .. } => {
                if let Some(relay) = self.relays.listener_closed(listener_id) {
                    tracing::info!(%relay, "relay listener closed");
                    self.listen_through_relays();
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(event)) => self.on_kad_event(event),
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                for (peer, address) in found {
                    self.add_route(peer, address.clone());
                    let _ = self.swarm.dial(address);
                }
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
                self.listen_addrs.push(address);
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listen_addrs.retain(|a| a != &address);
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                connection_id,
                ..
            } => {
                tracing::debug!(peer = %peer_id, address = %endpoint.get_remote_address(), "connected");
                self.nat.write().unwrap_or_else(|p| p.into_inner()).opened(
                    peer_id,
                    connection_id,
                    endpoint.is_relayed(),
                );
                self.relays.connected(peer_id, &endpoint);
                if endpoint.is_listener() {
                    self.inbound.opened(peer_id, Instant::now());
                    let share = usize::try_from(inbound_share(&self.config)).unwrap_or(usize::MAX);
                    if self.inbound.connections() > share {
                        self.make_room(peer_id);
                    }
                }
                self.stats
                    .set_connected_peers(self.swarm.connected_peers().count());
                self.emit(MeshEvent::Connected(peer_id));
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                ..
            } => {
                if endpoint.is_listener() {
                    self.inbound.closed(&peer_id);
                }
                self.nat
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .closed(&peer_id, connection_id);
                if num_established == 0 {
                    self.relays.disconnected(&peer_id);
                    self.punches.settled(&peer_id);
                    self.stats
                        .set_connected_peers(self.swarm.connected_peers().count());
                    self.emit(MeshEvent::Disconnected(peer_id));
                }
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                ..
            } => {
                self.log_connection_error(
                    "incoming",
                    &send_back_addr.to_string(),
                    &error.to_string(),
                );
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                let who = peer_id
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "unknown peer".into());
                self.log_connection_error("outgoing", &who, &error.to_string());
            }
            _ => {}
        }
    }

    /// Inbound connections took the spare slot (`newcomer`'s): drops the least useful inbound
    /// peer, so the node keeps room for the next peer that joins late.
    fn make_room(&mut self, newcomer: PeerId) {
        let gossipsub = &self.swarm.behaviour().gossipsub;
        let subscribed: HashSet<PeerId> = gossipsub
            .all_peers()
            .filter(|(_, topics)| !topics.is_empty())
            .map(|(peer, _)| *peer)
            .collect();
        let inbound: Vec<crate::eviction::InboundPeer> = self
            .inbound
            .peers()
            .map(|(peer, since)| crate::eviction::InboundPeer {
                peer,
                since,
                shares_topic: subscribed.contains(&peer),
                score: gossipsub.peer_score(&peer).unwrap_or(0.0),
            })
            .collect();
        let victim = crate::eviction::least_useful(&inbound, &newcomer, Instant::now());
        tracing::info!(peer = %victim, "inbound slots full: dropping the least useful inbound peer");
        let _ = self.swarm.disconnect_peer_id(victim);
    }

    /// Puts `peer` at `address` into the Kademlia routing table, within the per-IP quotas.
    fn add_route(&mut self, peer: PeerId, address: Multiaddr) {
        let address = crate::routing::without_peer(address, &peer);
        if peer == self.local_peer_id || self.swarm.behaviour().announced.is_own(&address) {
            return;
        }
        if self.routing.admits(&peer, &address) {
            self.swarm.behaviour_mut().kad.add_address(&peer, address);
        } else {
            tracing::debug!(%peer, %address, "not routed: its address holds its quota already");
        }
    }

    /// A node peers cannot dial listens through relays it picked among connected peers that
    /// serve as one (configured relays are listened through from the start).
    fn listen_through_relays(&mut self) {
        let private = self
            .nat
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .reachability()
            == Reachability::Private;
        if !private || !self.config.relays.is_empty() {
            return;
        }
        for (relay, circuit) in self.relays.wanted() {
            match self.swarm.listen_on(circuit.clone()) {
                Ok(listener) => {
                    tracing::info!(%relay, "behind NAT: listening through a relay");
                    self.relays.listening(listener, relay);
                }
                Err(error) => tracing::debug!(%circuit, ?error, "cannot listen through relay"),
            }
        }
    }

    fn log_connection_error(&self, direction: &str, remote: &str, error: &str) {
        if self.config.swarm_key.is_some() {
            tracing::warn!(
                direction,
                remote,
                %error,
                "connection failed in a private fleet: the peer may not hold this fleet's swarm key"
            );
        } else {
            tracing::debug!(direction, remote, %error, "connection failed");
        }
    }

    fn on_invoke_event(&mut self, event: request_response::Event<InvokeRequest, InvokeResponse>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => self.on_inbound_invoke(peer, request, channel),
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    if let Some(pending) = self.pending_invokes.remove(&request_id) {
                        let _ = pending.reply.send(Ok(response));
                    }
                }
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                let Some(pending) = self.pending_invokes.remove(&request_id) else {
                    return;
                };
                if let (request_response::OutboundFailure::DialFailure, Some((peer, request))) =
                    (&error, pending.resend)
                {
                    tracing::debug!(%peer, "a dial failed before the invoke was sent; sending it once more");
                    let id = self
                        .swarm
                        .behaviour_mut()
                        .invoke
                        .send_request(&peer, request);
                    self.pending_invokes.insert(
                        id,
                        PendingInvoke {
                            reply: pending.reply,
                            resend: None,
                        },
                    );
                    return;
                }
                let code = match error {
                    request_response::OutboundFailure::Timeout => ErrorCode::Timeout,
                    _ => ErrorCode::Unavailable,
                };
                let _ = pending.reply.send(Err(InvokeFailure::new(
                    code,
                    format!("invoke on {peer} failed: {error}"),
                )));
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "inbound invoke failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    /// Record keys live under this network's namespace.
    fn record_key(&self, key: &str) -> kad::RecordKey {
        kad::RecordKey::new(&format!("claw/{}/record/{key}", self.config.network))
    }

    /// Stores a peer's record or provider announcement only if it belongs to this network's
    /// namespace and is small.
    fn on_kad_inbound(&mut self, request: kad::InboundRequest) {
        let namespace = format!("claw/{}/", self.config.network);
        let in_namespace = |key: &kad::RecordKey| key.as_ref().starts_with(namespace.as_bytes());
        match request {
            kad::InboundRequest::PutRecord {
                source,
                record: Some(record),
                ..
            } => {
                if in_namespace(&record.key) && record.value.len() <= MAX_RECORD_BYTES {
                    if let Err(error) = self.swarm.behaviour_mut().kad.store_mut().put(record) {
                        tracing::debug!(%source, %error, "record not stored");
                    }
                } else {
                    tracing::debug!(%source, "refused a record outside our namespace or too large");
                }
            }
            kad::InboundRequest::AddProvider {
                record: Some(record),
            } => {
                if in_namespace(&record.key)
                    && let Err(error) = self
                        .swarm
                        .behaviour_mut()
                        .kad
                        .store_mut()
                        .add_provider(record)
                {
                    tracing::debug!(%error, "provider record not stored");
                }
            }
            _ => {}
        }
    }

    fn on_kad_event(&mut self, event: kad::Event) {
        let (id, result, step) = match event {
            kad::Event::InboundRequest { request } => return self.on_kad_inbound(request),
            kad::Event::RoutablePeer { peer, address }
            | kad::Event::PendingRoutablePeer { peer, address } => {
                return self.add_route(peer, address);
            }
            kad::Event::RoutingUpdated {
                peer,
                is_new_peer,
                addresses,
                old_peer,
                ..
            } => {
                if let Some(old) = old_peer {
                    self.routing.removed(&old);
                }
                if is_new_peer && !self.routing.inserted(peer, addresses.iter()) {
                    self.swarm.behaviour_mut().kad.remove_peer(&peer);
                }
                let routed = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .kbuckets()
                    .map(|bucket| bucket.num_entries())
                    .sum();
                self.stats.set_routing_table_peers(routed);
                return;
            }
            kad::Event::OutboundQueryProgressed {
                id, result, step, ..
            } => (id, result, step),
            _ => return,
        };
        match result {
            kad::QueryResult::GetProviders(Ok(kad::GetProvidersOk::FoundProviders {
                providers,
                ..
            })) => {
                if let Some((found, _)) = self.pending_providers.get_mut(&id) {
                    found.extend(providers);
                }
            }
            kad::QueryResult::GetProviders(_) => {}
            kad::QueryResult::PutRecord(result) => {
                if let Some(reply) = self.pending_puts.remove(&id) {
                    let _ = reply.send(
                        result
                            .map(|_| ())
                            .map_err(|e| MeshError::Rejected(e.to_string())),
                    );
                }
            }
            kad::QueryResult::GetRecord(Ok(kad::GetRecordOk::FoundRecord(found))) => {
                if let Some(reply) = self.pending_gets.remove(&id) {
                    let _ = reply.send(Some(found.record.value));
                }
            }
            kad::QueryResult::GetRecord(_) => {
                if step.last
                    && let Some(reply) = self.pending_gets.remove(&id)
                {
                    let _ = reply.send(None);
                }
            }
            kad::QueryResult::GetClosestPeers(result) => {
                if let Some(reply) = self.pending_closest.remove(&id) {
                    let peers = match result {
                        Ok(ok) => ok.peers,
                        Err(kad::GetClosestPeersError::Timeout { peers, .. }) => peers,
                    };
                    let _ = reply.send(Ok(peers.into_iter().map(|p| p.peer_id).collect()));
                }
            }
            kad::QueryResult::Bootstrap(Err(error)) => {
                tracing::debug!(%error, "kademlia bootstrap incomplete");
            }
            _ => {}
        }
        if step.last
            && let Some((found, reply)) = self.pending_providers.remove(&id)
        {
            let _ = reply.send(found);
        }
    }
}

/// A gossip message that passed validation.
enum Accepted {
    Announcement(Box<FleetMember>),
    Claim(TopicKind, Box<VerifiedEnvelope>),
    /// Checked as far as the mesh can: held back for the application's verdict.
    Pending(TopicKind, Box<VerifiedEnvelope>),
    /// Valid, but older than what we hold or a copy of what we took: not forwarded, nobody
    /// penalised.
    Stale(TopicKind),
}

/// The peer id at the end of a multiaddr, if any.
fn peer_of(address: &Multiaddr) -> Option<PeerId> {
    address.iter().find_map(|p| match p {
        libp2p::multiaddr::Protocol::P2p(peer) => Some(peer),
        _ => None,
    })
}

/// Addresses worth storing: not unspecified.
pub(crate) fn usable_address(address: &Multiaddr) -> bool {
    !address.iter().any(|p| match p {
        libp2p::multiaddr::Protocol::Ip4(ip) => ip.is_unspecified(),
        libp2p::multiaddr::Protocol::Ip6(ip) => ip.is_unspecified(),
        _ => false,
    })
}
