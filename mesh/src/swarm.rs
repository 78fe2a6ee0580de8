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
//! channel; gossip is validated here, once per message, before gossipsub forwards it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use claw_attestation::{
    NodeIdentity, ReplayGuard, VerifiedEnvelope, Verifier, VerifyError, unix_millis,
};
use futures::StreamExt as _;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::upgrade::Version;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, MessageId, TopicHash};
use libp2p::kad::{self, store::MemoryStore};
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent, behaviour::toggle::Toggle};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, Transport as _, connection_limits, identify, mdns,
    noise, ping, tcp, yamux,
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
use crate::{MeshError, MeshEvent, TopicKind, TopicName};

const INVOKE_PROTOCOL: StreamProtocol = StreamProtocol::new("/claw/invoke/1");
const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/claw/kad/1.0.0");
const IDENTIFY_PROTOCOL: &str = "/claw/id/1.0.0";

#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    limits: connection_limits::Behaviour,
    gossipsub: gossipsub::Behaviour,
    kad: kad::Behaviour<MemoryStore>,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    invoke: request_response::json::Behaviour<InvokeRequest, InvokeResponse>,
    mdns: Toggle<mdns::tokio::Behaviour>,
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
    pending_invokes:
        HashMap<OutboundRequestId, oneshot::Sender<Result<InvokeResponse, InvokeFailure>>>,
    pending_providers: HashMap<kad::QueryId, (HashSet<PeerId>, oneshot::Sender<HashSet<PeerId>>)>,
    verifier: Verifier,
    replay_guard: ReplayGuard,
    inventory_topic: TopicHash,
    inventory_ident: IdentTopic,
    provided_models: HashSet<String>,
    known_peers: KnownPeers,
    bootstrap_peers: HashSet<PeerId>,
    listen_addrs: Vec<Multiaddr>,
}

impl std::fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLoop")
            .field("local_peer_id", &self.local_peer_id)
            .finish_non_exhaustive()
    }
}

/// SHA-256 of the message data: identical claims get identical ids whoever forwards them.
fn message_id(message: &gossipsub::Message) -> MessageId {
    MessageId::from(Sha256::digest(&message.data).to_vec())
}

fn gossipsub_behaviour(
    config: &MeshConfig,
    topic: &TopicHash,
) -> Result<gossipsub::Behaviour, MeshError> {
    let gossip_config = gossipsub::ConfigBuilder::default()
        .validation_mode(gossipsub::ValidationMode::Anonymous)
        .validate_messages()
        .message_id_fn(message_id)
        .max_transmit_size(config.max_message_bytes)
        .heartbeat_interval(config.heartbeat_interval)
        .duplicate_cache_time(Duration::from_secs(120))
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
    params.topics.insert(topic.clone(), topic_params);
    let thresholds = gossipsub::PeerScoreThresholds::default();
    behaviour
        .with_peer_score(params, thresholds)
        .map_err(|e| MeshError::Config(format!("gossipsub scoring: {e}")))?;
    Ok(behaviour)
}

pub(crate) fn build_swarm(
    identity: &NodeIdentity,
    config: &MeshConfig,
    inventory_topic: &TopicHash,
) -> Result<Swarm<Behaviour>, MeshError> {
    let keypair = identity.libp2p_keypair();
    let behaviour = |key: &libp2p::identity::Keypair| -> Result<Behaviour, Box<dyn std::error::Error + Send + Sync>> {
        let local = key.public().to_peer_id();
        let mut kad_config = kad::Config::new(KAD_PROTOCOL);
        kad_config.set_query_timeout(Duration::from_secs(30));
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
                    .with_max_established_per_peer(Some(2))
                    .with_max_pending_incoming(Some(64)),
            ),
            gossipsub: gossipsub_behaviour(config, inventory_topic)?,
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
                    .with_request_timeout(config.max_invoke_deadline + Duration::from_secs(5)),
            ),
            mdns: Toggle::from(mdns),
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
            .with_behaviour(behaviour)
            .map_err(|e| build_error(&e))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(idle))
            .build()
    } else if config.quic {
        libp2p::SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .map_err(|e| build_error(&e))?
            .with_quic()
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
            .with_behaviour(behaviour)
            .map_err(|e| build_error(&e))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(idle))
            .build()
    };
    Ok(swarm)
}

/// Key under which providers of a GPU model are recorded in Kademlia.
pub(crate) fn provider_key(network: &str, model: &str) -> kad::RecordKey {
    kad::RecordKey::new(&format!("claw/{network}/gpu-model/{model}"))
}

impl EventLoop {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        swarm: Swarm<Behaviour>,
        config: MeshConfig,
        commands: mpsc::Receiver<Command>,
        events: mpsc::Sender<MeshEvent>,
        fleet: Arc<RwLock<FleetView>>,
        handler: Arc<dyn InvokeHandler>,
        inventory_ident: IdentTopic,
    ) -> Self {
        let (answers_tx, answers_rx) = mpsc::channel(256);
        let verifier = Verifier::new()
            .with_max_envelope_bytes(config.max_message_bytes)
            .with_max_clock_skew(config.max_clock_skew);
        let known_peers = KnownPeers::load(config.known_peers_file.clone());
        Self {
            local_peer_id: *swarm.local_peer_id(),
            swarm,
            commands,
            events,
            fleet,
            handler,
            answers_tx,
            answers_rx,
            pending_invokes: HashMap::new(),
            pending_providers: HashMap::new(),
            verifier,
            replay_guard: ReplayGuard::new(100_000),
            inventory_topic: inventory_ident.hash(),
            inventory_ident,
            provided_models: HashSet::new(),
            known_peers,
            bootstrap_peers: HashSet::new(),
            listen_addrs: Vec::new(),
            config,
        }
    }

    /// Starts listening, subscribes, dials bootstrap and remembered peers.
    pub(crate) fn start(&mut self) -> Result<(), MeshError> {
        for address in self.config.listen.clone() {
            self.swarm
                .listen_on(address.clone())
                .map_err(|e| MeshError::Transport(format!("listen on {address}: {e}")))?;
        }
        self.swarm
            .behaviour_mut()
            .gossipsub
            .subscribe(&self.inventory_ident)
            .map_err(|e| MeshError::Config(format!("subscribe: {e}")))?;
        let mut seeds: Vec<Multiaddr> = self.config.bootstrap.clone();
        seeds.extend(self.known_peers.addresses());
        for address in seeds {
            if let Some(peer) = peer_of(&address) {
                if peer == self.local_peer_id {
                    continue;
                }
                self.swarm
                    .behaviour_mut()
                    .kad
                    .add_address(&peer, address.clone());
                self.bootstrap_peers.insert(peer);
            }
            if let Err(error) = self.swarm.dial(address.clone()) {
                tracing::warn!(%address, %error, "cannot dial bootstrap peer");
            }
        }
        if !self.bootstrap_peers.is_empty() {
            let _ = self.swarm.behaviour_mut().kad.bootstrap();
        }
        Ok(())
    }

    pub(crate) async fn run(mut self) {
        let mut expiry = tokio::time::interval(Duration::from_millis(500));
        expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut persist = tokio::time::interval(Duration::from_secs(30));
        persist.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                _ = expiry.tick() => self.expire(),
                _ = persist.tick() => self.known_peers.save(),
            }
        }
        self.known_peers.save();
        tracing::info!(peer = %self.local_peer_id, "mesh stopped");
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
                let result = TopicName::new(&self.config.network, kind)
                    .map_err(|e| MeshError::Config(e.to_string()))
                    .and_then(|topic| self.publish(IdentTopic::new(topic.as_str()), envelope));
                let _ = reply.send(result);
            }
            Command::Invoke {
                peer,
                request,
                reply,
            } => {
                let id = self
                    .swarm
                    .behaviour_mut()
                    .invoke
                    .send_request(&peer, request);
                self.pending_invokes.insert(id, reply);
            }
            Command::Dial { address, reply } => {
                if let Some(peer) = peer_of(&address) {
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer, address.clone());
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
        let topic = self.inventory_ident.clone();
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
        let announcement: NodeAnnouncement = verified.open()?;
        if announcement.network != self.config.network {
            return Err(VerifyError::Malformed(format!(
                "announcement for network {:?} on {:?}",
                announcement.network, self.config.network
            )));
        }
        let envelope = verified.envelope();
        let member = FleetMember {
            peer_id: verified.signer_peer_id(),
            announcement,
            seq: envelope.seq(),
            issued_at_ms: envelope.issued_at_ms(),
            expires_at_ms: envelope.expires_at_ms(),
        };
        Ok((member, verified))
    }

    fn record_member(&mut self, member: FleetMember) {
        let peer = member.peer_id;
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

    fn on_gossip(&mut self, source: PeerId, id: MessageId, message: gossipsub::Message) {
        let outcome = if message.topic != self.inventory_topic {
            Err(VerifyError::Malformed("unexpected topic".to_owned()))
        } else {
            self.verify_announcement(&message.data)
                .and_then(|(member, verified)| {
                    self.replay_guard.admit(&verified)?;
                    Ok(member)
                })
        };
        let acceptance = match outcome {
            Ok(member) => {
                if member.peer_id != self.local_peer_id {
                    self.record_member(member);
                }
                MessageAcceptance::Accept
            }
            Err(error) => {
                tracing::warn!(%source, %error, "rejected gossip");
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
            .report_message_validation_result(&id, &source, acceptance);
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
                for address in info.listen_addrs.iter().filter(|a| usable_address(a)) {
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer_id, address.clone());
                }
                self.known_peers.remember(peer_id, &info.listen_addrs);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(event)) => self.on_kad_event(event),
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                for (peer, address) in found {
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer, address.clone());
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
                peer_id, endpoint, ..
            } => {
                tracing::debug!(peer = %peer_id, address = %endpoint.get_remote_address(), "connected");
                self.emit(MeshEvent::Connected(peer_id));
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                self.emit(MeshEvent::Disconnected(peer_id));
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
                    if let Some(reply) = self.pending_invokes.remove(&request_id) {
                        let _ = reply.send(Ok(response));
                    }
                }
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                if let Some(reply) = self.pending_invokes.remove(&request_id) {
                    let code = match error {
                        request_response::OutboundFailure::Timeout => ErrorCode::Timeout,
                        _ => ErrorCode::Unavailable,
                    };
                    let _ = reply.send(Err(InvokeFailure::new(
                        code,
                        format!("invoke on {peer} failed: {error}"),
                    )));
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "inbound invoke failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn on_kad_event(&mut self, event: kad::Event) {
        if let kad::Event::OutboundQueryProgressed {
            id, result, step, ..
        } = event
        {
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
                kad::QueryResult::Bootstrap(Err(error)) => {
                    tracing::debug!(%error, "kademlia bootstrap incomplete");
                    return;
                }
                _ => return,
            }
            if step.last
                && let Some((found, reply)) = self.pending_providers.remove(&id)
            {
                let _ = reply.send(found);
            }
        }
    }
}

/// The peer id at the end of a multiaddr, if any.
fn peer_of(address: &Multiaddr) -> Option<PeerId> {
    address.iter().find_map(|p| match p {
        libp2p::multiaddr::Protocol::P2p(peer) => Some(peer),
        _ => None,
    })
}

/// Addresses worth storing: not unspecified.
fn usable_address(address: &Multiaddr) -> bool {
    !address.iter().any(|p| match p {
        libp2p::multiaddr::Protocol::Ip4(ip) => ip.is_unspecified(),
        libp2p::multiaddr::Protocol::Ip6(ip) => ip.is_unspecified(),
        _ => false,
    })
}
