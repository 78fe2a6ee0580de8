//! The Clawbernetes mesh: how nodes find each other and exchange signed claims, with no central
//! registry.
//!
//! One task owns the libp2p swarm (TCP + Noise + Yamux, QUIC optional, pnet for private fleets;
//! gossipsub, Kademlia, identify, ping, request-response). The application holds a cheap
//! [`MeshHandle`] and receives [`MeshEvent`]s. Every gossiped claim is a signed envelope, verified
//! once before gossipsub forwards it; invalid ones are rejected so peer scoring punishes the
//! sender. Each peer keeps a [`FleetView`] of verified node announcements, from which fleet
//! status is computed with no network round trip.

mod config;
mod eviction;
mod fleet;
mod inbound;
mod invoke;
mod known_peers;
mod membership;
mod nat;
mod pending;
mod routing;
mod stats;
mod swarm;
mod verify;

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use claw_attestation::NodeIdentity;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub use config::{
    MAX_PACED_INTERVAL, MeshConfig, PACED_FROM_MEMBERS, SwarmKey, announcement_validity,
    paced_interval,
};
pub use fleet::{
    FleetChange, FleetMember, FleetStatus, FleetView, MAX_FLEET_MEMBERS, NodeAnnouncement,
};
pub use invoke::{
    ApiToken, ErrorCode, HandlerFuture, InvokeFailure, InvokeHandler, InvokeRequest,
    InvokeResponse, MAX_COMMAND_LEN, MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES,
};
pub use libp2p::{Multiaddr, PeerId};
pub use membership::{FleetMembership, MAX_MEMBERSHIP_DAYS, MembershipError, Standing};
pub use nat::{ConnectionPath, Reachability, is_relayed};
pub use pending::PendingClaim;
pub use stats::{DELIVERY_AGE_BOUNDS_MS, DeliveryAges, GossipVerdict, HolePunch, MeshCounters};

use swarm::{Command, EventLoop};

/// Why a mesh operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MeshError {
    /// The configuration cannot be used.
    #[error("mesh configuration: {0}")]
    Config(String),
    /// A transport could not be set up, listen or dial.
    #[error("transport: {0}")]
    Transport(String),
    /// The mesh refused to publish or accept a claim.
    #[error("rejected: {0}")]
    Rejected(String),
    /// No peer is subscribed to the topic yet.
    #[error("no peers to publish to")]
    NoPeers,
    /// The mesh task has stopped.
    #[error("the mesh has stopped")]
    Stopped,
}

/// Something the application may want to react to.
#[derive(Debug)]
#[non_exhaustive]
pub enum MeshEvent {
    /// The fleet view changed.
    Fleet(FleetChange),
    /// A first connection to a peer opened.
    Connected(PeerId),
    /// The last connection to a peer closed.
    Disconnected(PeerId),
    /// A verified offer, bid or fleet object arrived on its topic (not sent for our own
    /// publications).
    Gossip {
        /// Which topic.
        kind: TopicKind,
        /// The verified envelope; open it as the topic's payload type.
        envelope: Box<claw_attestation::VerifiedEnvelope>,
    },
    /// A verified trade report: held back, neither forwarded nor judged, until the
    /// application answers through `claim` (whether the chain shows its settlement).
    Pending {
        /// Which topic.
        kind: TopicKind,
        /// The verified envelope; open it as the topic's payload type.
        envelope: Box<claw_attestation::VerifiedEnvelope>,
        /// The answer the mesh waits for.
        claim: PendingClaim,
    },
    /// A gossiped claim failed verification and was rejected.
    GossipRejected {
        /// The peer that forwarded it.
        source: PeerId,
        /// Why.
        reason: String,
    },
}

/// A cheap, cloneable handle on a running mesh node.
#[derive(Debug, Clone)]
pub struct MeshHandle {
    local_peer_id: PeerId,
    commands: mpsc::Sender<Command>,
    fleet: Arc<RwLock<FleetView>>,
    stats: Arc<stats::MeshStats>,
    nat: Arc<RwLock<nat::NatView>>,
    streams: Streams,
}

/// The raw-stream side of the swarm (libp2p-stream's control), which works beside the event
/// loop: streams are opened and accepted without going through it.
#[derive(Clone)]
struct Streams(libp2p_stream::Control);

impl std::fmt::Debug for Streams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streams").finish_non_exhaustive()
    }
}

pub use libp2p::{Stream, StreamProtocol};
/// Inbound streams of one protocol.
pub use libp2p_stream::IncomingStreams;

/// A running mesh node: its handle, its events, and its task.
#[derive(Debug)]
pub struct Mesh {
    /// Talk to the mesh through this.
    pub handle: MeshHandle,
    /// Fleet changes and other events; read it, or events are dropped once 1024 are queued.
    pub events: mpsc::Receiver<MeshEvent>,
    /// The event-loop task; it ends after [`MeshHandle::shutdown`].
    pub task: JoinHandle<()>,
}

impl Mesh {
    /// Starts a mesh node with `identity`, answering invokes with `handler`.
    ///
    /// Must be called within a tokio runtime.
    pub fn spawn(
        identity: &NodeIdentity,
        config: MeshConfig,
        handler: Arc<dyn InvokeHandler>,
    ) -> Result<Self, MeshError> {
        let topics = swarm::Topics::new(&config.network)?;
        let fleet = Arc::new(RwLock::new(FleetView::new(
            config.announce_interval,
            config.missed_intervals,
        )));
        let swarm = swarm::build_swarm(identity, &config, &topics, Arc::clone(&fleet))?;
        let streams = Streams(swarm.behaviour().stream_control());
        let (commands_tx, commands_rx) = mpsc::channel(256);
        let (events_tx, events_rx) = mpsc::channel(1024);
        let local_peer_id = identity.peer_id();
        let mut event_loop = EventLoop::new(
            swarm,
            config,
            commands_rx,
            events_tx,
            Arc::clone(&fleet),
            handler,
            topics,
        );
        let stats = event_loop.stats();
        let nat = event_loop.nat_view();
        event_loop.start()?;
        let task = tokio::spawn(event_loop.run());
        Ok(Self {
            handle: MeshHandle {
                local_peer_id,
                commands: commands_tx,
                fleet,
                stats,
                nat,
                streams,
            },
            events: events_rx,
            task,
        })
    }
}

impl MeshHandle {
    /// This node's peer id.
    pub fn local_peer_id(&self) -> PeerId {
        self.local_peer_id
    }

    /// Connected peers and gossip verdicts, read without asking the event loop.
    pub fn counters(&self) -> MeshCounters {
        self.stats.snapshot()
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, MeshError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(make(reply))
            .await
            .map_err(|_| MeshError::Stopped)?;
        answer.await.map_err(|_| MeshError::Stopped)
    }

    /// Publishes this node's signed [`NodeAnnouncement`] envelope and records it in the local
    /// view. Being alone in the mesh is not an error.
    pub async fn announce(&self, envelope: Vec<u8>) -> Result<(), MeshError> {
        self.ask(|reply| Command::Announce { envelope, reply })
            .await?
    }

    /// Publishes an already-signed envelope on a topic of this node's network, as is.
    pub async fn publish(&self, kind: TopicKind, envelope: Vec<u8>) -> Result<(), MeshError> {
        self.ask(|reply| Command::Publish {
            kind,
            envelope,
            reply,
        })
        .await?
    }

    /// Invokes `request.command` on `peer` and waits at most `request.deadline_ms`.
    pub async fn invoke(
        &self,
        peer: PeerId,
        request: InvokeRequest,
    ) -> Result<serde_json::Value, InvokeFailure> {
        let deadline = Duration::from_millis(request.deadline_ms);
        let command = request.command.clone();
        let stopped = || InvokeFailure::new(ErrorCode::Unavailable, "the mesh has stopped");
        let call = self.ask(|reply| Command::Invoke {
            peer,
            request,
            reply,
        });
        match tokio::time::timeout(deadline, call).await {
            Err(_) => Err(InvokeFailure::new(
                ErrorCode::Timeout,
                format!(
                    "{command} on {peer}: no answer within {} ms",
                    deadline.as_millis()
                ),
            )),
            Ok(Err(_)) => Err(stopped()),
            Ok(Ok(Err(failure))) => Err(failure),
            Ok(Ok(Ok(InvokeResponse::Ok(value)))) => Ok(value),
            Ok(Ok(Ok(InvokeResponse::Error(failure)))) => Err(failure),
        }
    }

    /// Dials an address (ending in `/p2p/<peer>` to also seed Kademlia).
    pub async fn dial(&self, address: Multiaddr) -> Result<(), MeshError> {
        self.ask(|reply| Command::Dial { address, reply }).await?
    }

    /// Peers that provide GPUs of `model`, found through Kademlia without the gossip view.
    pub async fn find_providers(&self, model: &str) -> Result<HashSet<PeerId>, MeshError> {
        let model = model.to_owned();
        self.ask(|reply| Command::FindProviders { model, reply })
            .await
    }

    /// Stores a small value in the DHT under `key` (namespaced by network).
    pub async fn put_record(&self, key: &str, value: Vec<u8>) -> Result<(), MeshError> {
        let key = key.to_owned();
        self.ask(|reply| Command::PutRecord { key, value, reply })
            .await?
    }

    /// Looks a value up in the DHT.
    pub async fn get_record(&self, key: &str) -> Result<Option<Vec<u8>>, MeshError> {
        let key = key.to_owned();
        self.ask(|reply| Command::GetRecord { key, reply }).await
    }

    /// The peers closest to `key` in the DHT, found by walking it (at most 30 s). Refused
    /// while 16 walks are under way already.
    pub async fn closest_peers(&self, key: PeerId) -> Result<Vec<PeerId>, MeshError> {
        self.ask(|reply| Command::ClosestPeers { key, reply })
            .await?
    }

    /// Addresses this node listens on.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, MeshError> {
        self.ask(|reply| Command::ListenAddrs { reply }).await
    }

    /// Addresses this node listens on, waiting up to `patience` for the listeners to come up
    /// (none when they do not).
    pub async fn wait_listen_addrs(&self, patience: Duration) -> Vec<Multiaddr> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let addrs = self.listen_addrs().await.unwrap_or_default();
            if !addrs.is_empty() || tokio::time::Instant::now() >= deadline {
                return addrs;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Peers with an open connection.
    pub async fn connected_peers(&self) -> Result<Vec<PeerId>, MeshError> {
        self.ask(|reply| Command::ConnectedPeers { reply }).await
    }

    /// Gossipsub's score for `peer`, if it has one.
    pub async fn peer_score(&self, peer: PeerId) -> Result<Option<f64>, MeshError> {
        self.ask(|reply| Command::PeerScore { peer, reply }).await
    }

    /// Opens a raw stream to `peer` on `protocol`, dialling it when it is not connected.
    pub async fn open_stream(
        &self,
        peer: PeerId,
        protocol: StreamProtocol,
    ) -> Result<Stream, MeshError> {
        let mut control = self.streams.0.clone();
        control
            .open_stream(peer, protocol)
            .await
            .map_err(|e| MeshError::Transport(format!("stream to {peer}: {e}")))
    }

    /// The streams peers open on `protocol`; once per protocol.
    pub fn accept_streams(&self, protocol: StreamProtocol) -> Result<IncomingStreams, MeshError> {
        let mut control = self.streams.0.clone();
        control
            .accept(protocol)
            .map_err(|e| MeshError::Transport(e.to_string()))
    }

    /// Every node in the local fleet view, including this one once it has announced.
    pub fn fleet(&self) -> Vec<FleetMember> {
        self.read_fleet(FleetView::members)
    }

    /// The nodes in the view that are members of this node's fleet now: all of them when it
    /// trusts no fleet operator, else those a trusted operator admitted (strangers are left
    /// out: they are market counterparties, never placed on, invoked or drained as the fleet).
    pub fn fleet_members(&self) -> Vec<FleetMember> {
        let now = claw_attestation::unix_millis(std::time::SystemTime::now());
        self.read_fleet(FleetView::members)
            .into_iter()
            .filter(|m| m.standing.is_member(now))
            .collect()
    }

    /// Fleet-wide counts from the local view: no network round trip.
    pub fn fleet_status(&self) -> FleetStatus {
        self.read_fleet(FleetView::status)
    }

    /// How often this node, and every node of a fleet the size of its view, announces itself:
    /// the configured interval, paced beyond 50 nodes ([`paced_interval`]).
    pub fn announce_interval(&self) -> std::time::Duration {
        self.read_fleet(FleetView::announce_interval)
    }

    /// Whether peers can dial this node, as AutoNAT last found: no network round trip.
    pub fn reachability(&self) -> Reachability {
        self.nat
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .reachability()
    }

    /// How this node is connected to `peer` now: directly, only through relays, or not at all.
    pub fn connection_path(&self, peer: &PeerId) -> Option<ConnectionPath> {
        self.nat
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .path(peer)
    }

    fn read_fleet<T>(&self, read: impl FnOnce(&FleetView) -> T) -> T {
        let view = self.fleet.read().unwrap_or_else(|p| p.into_inner());
        read(&view)
    }

    /// Stops the mesh task, saving known peers.
    pub async fn shutdown(&self) {
        let _ = self.commands.send(Command::Shutdown).await;
    }
}

use std::fmt;

/// The gossip topics every network carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TopicKind {
    /// Signed node announcements (inventory), periodic and on change.
    Inventory,
    /// Signed market offers.
    Offers,
    /// Signed market bids.
    Bids,
    /// Fleet objects (deployments, jobs, ...) signed by operators.
    Objects,
    /// Reports of settled leases, for every node's price history.
    Trades,
}

impl TopicKind {
    /// Every topic, in a fixed order.
    pub const ALL: [TopicKind; 5] = [
        Self::Inventory,
        Self::Offers,
        Self::Bids,
        Self::Objects,
        Self::Trades,
    ];

    /// The topic's short name, as in its gossipsub topic and in metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inventory => "inventory",
            Self::Offers => "offers",
            Self::Bids => "bids",
            Self::Objects => "objects",
            Self::Trades => "trades",
        }
    }
}

/// A network name that is not usable in topic names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("network name {0:?} must be 1 to 32 characters of a-z, 0-9 and '-'")]
pub struct InvalidNetworkName(pub String);

/// A gossip topic name: `claw/<network>/<kind>/1`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TopicName(String);

impl TopicName {
    /// The topic of `kind` on `network` (`localnet`, `devnet`, `mainnet` or a private fleet id).
    pub fn new(network: &str, kind: TopicKind) -> Result<Self, InvalidNetworkName> {
        let valid = !network.is_empty()
            && network.len() <= 32
            && network
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid {
            return Err(InvalidNetworkName(network.to_owned()));
        }
        Ok(Self(format!("claw/{network}/{}/1", kind.as_str())))
    }

    /// The topic as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_namespaced_by_network() {
        assert_eq!(
            TopicName::new("localnet", TopicKind::Inventory)
                .unwrap()
                .as_str(),
            "claw/localnet/inventory/1"
        );
        assert_eq!(
            TopicName::new("fleet-7", TopicKind::Offers)
                .unwrap()
                .to_string(),
            "claw/fleet-7/offers/1"
        );
        assert_ne!(
            TopicName::new("devnet", TopicKind::Bids).unwrap(),
            TopicName::new("localnet", TopicKind::Bids).unwrap()
        );
    }

    #[test]
    fn network_names_that_could_escape_the_namespace_are_refused() {
        for bad in ["", "Local", "a/b", "net work", &"x".repeat(33)] {
            assert!(TopicName::new(bad, TopicKind::Bids).is_err(), "{bad:?}");
        }
    }
}
