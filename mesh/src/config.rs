//! Mesh configuration: one struct, every default documented and usable as is.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use libp2p::Multiaddr;
use libp2p::pnet::PreSharedKey;

/// How a node joins and behaves in the mesh.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    /// Network name: `localnet`, `devnet`, `mainnet` or a private fleet id. Default `localnet`.
    pub network: String,
    /// Addresses to listen on. Default `/ip4/127.0.0.1/tcp/0`.
    pub listen: Vec<Multiaddr>,
    /// Peers to dial at start and to seed Kademlia with; each should end in `/p2p/<peer id>`.
    /// Default none.
    pub bootstrap: Vec<Multiaddr>,
    /// Pre-shared key of a private fleet. When set, the transport is TCP → pnet → Noise → Yamux
    /// and QUIC is off; peers without the same key cannot connect. Default none.
    pub swarm_key: Option<SwarmKey>,
    /// Also dial (and, with a `/quic-v1` listen address, listen) over QUIC. Ignored in private
    /// fleets, where pnet needs TCP. Default on.
    pub quic: bool,
    /// Discover peers on the local network with mDNS. Default off.
    pub mdns: bool,
    /// How often the node re-announces itself. Default 10 s.
    pub announce_interval: Duration,
    /// Announcement intervals a node may miss before it leaves the view. Default 3.
    pub missed_intervals: u32,
    /// Largest gossip message accepted or sent. Default 16 KiB.
    pub max_message_bytes: usize,
    /// Longest deadline an invoke may ask for. Default 120 s.
    pub max_invoke_deadline: Duration,
    /// Established connections kept at most. Default 256.
    pub max_connections: u32,
    /// Of `max_connections`, how many inbound connections may never take: room for the node's
    /// own dials to peers it chose. Default 32. Inbound connections may take one slot more for a
    /// moment: taking it makes the node drop its least useful inbound peer (no shared gossip
    /// topic, then the lowest score, then the newest), so a late joiner always finds room.
    pub reserved_outbound: u32,
    /// Inbound connections from one IP address at most. Default 8. Not counted with
    /// `allow_colocated_peers`.
    pub max_inbound_per_ip: u32,
    /// Inbound connections from one network (IPv4 /24, IPv6 /48) at most. Default 32. Not
    /// counted with `allow_colocated_peers`.
    pub max_inbound_per_network: u32,
    /// Invokes in flight at once on one connection, each way. A gateway bridge forwards an
    /// agent's calls to a node over one connection, so this bounds that fan-out; a peer past it
    /// gets `unavailable` instead of a queue. Default 256.
    pub max_concurrent_invokes: usize,
    /// How long a connection no protocol needs stays open. Default 60 s: gossip-mesh links are
    /// kept regardless, and others (invokes, Kademlia) are re-dialled on demand, so each node
    /// holds a handful of connections rather than one to every peer it ever queried.
    pub idle_connection_timeout: Duration,
    /// Tolerated clock skew for envelopes from peers. Default 30 s.
    pub max_clock_skew: Duration,
    /// File where known peers are remembered so a restarted node rejoins. Default none.
    pub known_peers_file: Option<PathBuf>,
    /// Drop gossipsub's IP-colocation penalty and the inbound caps per address and network, for
    /// many peers on one host (tests, local fleets). Default off; production keeps both.
    pub allow_colocated_peers: bool,
    /// Gossipsub heartbeat. Default 1 s.
    pub heartbeat_interval: Duration,
    /// Serve as a circuit relay (v2) for nodes behind NAT. Needs an address peers can dial:
    /// one in `external_addrs`, or one AutoNAT confirms. Default off.
    pub relay_server: bool,
    /// Relays to listen through, each ending in `/p2p/<peer id>`. With none, a node that
    /// AutoNAT finds private picks up to two connected peers that serve as relays. Default none.
    pub relays: Vec<Multiaddr>,
    /// Addresses peers can reach this node at (a public IP, a port forward), taken as
    /// confirmed without probing. Default none: AutoNAT finds them.
    pub external_addrs: Vec<Multiaddr>,
    /// Let AutoNAT probes count private IP addresses (10/8, 192.168/16, …) as reachable, and
    /// answer probes from peers at such addresses, for fleets whose shared network is private
    /// (a campus, a VPC, a lab). A probe only ever dials back the address it came from.
    /// Default off: only global addresses count.
    pub nat_probe_private_addresses: bool,
    /// The fleet operators this node trusts: a peer whose announcement carries a membership
    /// credential one of them signed is a fleet member; others are strangers (market
    /// counterparties). Default none: every peer counts as a member (local and private fleets).
    pub fleet_operators: Vec<libp2p::PeerId>,
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self {
            network: "localnet".to_owned(),
            listen: vec![
                "/ip4/127.0.0.1/tcp/0"
                    .parse()
                    .expect("a literal multiaddr parses"),
            ],
            bootstrap: Vec::new(),
            swarm_key: None,
            quic: true,
            mdns: false,
            announce_interval: Duration::from_secs(10),
            missed_intervals: 3,
            max_message_bytes: 16 * 1024,
            max_invoke_deadline: Duration::from_secs(120),
            max_connections: 256,
            reserved_outbound: 32,
            max_inbound_per_ip: 8,
            max_inbound_per_network: 32,
            max_concurrent_invokes: 256,
            idle_connection_timeout: Duration::from_secs(60),
            max_clock_skew: Duration::from_secs(30),
            known_peers_file: None,
            allow_colocated_peers: false,
            heartbeat_interval: Duration::from_secs(1),
            relay_server: false,
            relays: Vec::new(),
            external_addrs: Vec::new(),
            nat_probe_private_addresses: false,
            fleet_operators: Vec::new(),
        }
    }
}

/// Fleets up to this many nodes announce at the configured interval; larger ones stretch it so
/// that a node receives about this many announcements per interval, whatever the fleet's size.
pub const PACED_FROM_MEMBERS: usize = 50;
/// The longest pacing stretches the announcement interval to.
pub const MAX_PACED_INTERVAL: Duration = Duration::from_secs(300);

/// How often a node announces itself in a fleet of `members` nodes (its view's size), when its
/// configured interval is `configured`: that interval up to [`PACED_FROM_MEMBERS`] nodes, then
/// stretched in proportion, at most [`MAX_PACED_INTERVAL`] (or `configured`, if longer). Every
/// node announcing to every node costs each node in proportion to the fleet's size; paced, a
/// node handles about as many announcements a second in a fleet of 200 as in one of 50, and a
/// silent node takes as much longer to leave the views (missed intervals of the paced length).
pub fn paced_interval(configured: Duration, members: usize) -> Duration {
    if members <= PACED_FROM_MEMBERS {
        return configured;
    }
    let longest = MAX_PACED_INTERVAL.max(configured);
    u32::try_from(members)
        .ok()
        .and_then(|members| configured.checked_mul(members))
        .map_or(longest, |stretched| {
            (stretched / PACED_FROM_MEMBERS as u32).min(longest)
        })
}

/// How long a node signs its announcement for when it announces every `interval`: `missed`
/// intervals and 30 s of slack for clocks and queues.
pub fn announcement_validity(interval: Duration, missed: u32) -> Duration {
    interval * missed.max(1) + Duration::from_secs(30)
}

/// A private fleet's pre-shared key (the IPFS `swarm.key` format).
#[derive(Clone, Copy)]
pub struct SwarmKey(pub(crate) PreSharedKey);

impl std::fmt::Debug for SwarmKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is a secret; only its fingerprint is ever shown.
        write!(f, "SwarmKey(fingerprint {})", self.0.fingerprint())
    }
}

impl SwarmKey {
    /// A key from 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(PreSharedKey::new(bytes))
    }

    /// The public fingerprint, safe to log, for telling keys apart.
    pub fn fingerprint(&self) -> String {
        self.0.fingerprint().to_string()
    }
}

impl FromStr for SwarmKey {
    type Err = String;

    /// Parses the `swarm.key` text format (`/key/swarm/psk/1.0.0/`, `/base16/`, 64 hex digits).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        PreSharedKey::from_str(text)
            .map(Self)
            .map_err(|e| format!("invalid swarm key: {e}"))
    }
}

impl std::fmt::Display for SwarmKey {
    /// The `swarm.key` text format. This prints the secret: write it to files, never to logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}
