//! Reachability across NATs, with libp2p's own parts: AutoNAT tells a node whether peers can
//! dial it; a node they cannot dial listens through circuit relays (v2) — those it is configured
//! with, or up to two connected peers that offer the relay protocol — and announces the relayed
//! addresses; DCUtR then upgrades each relayed connection to a direct one by hole punching.
//!
//! The event loop owns a [`RelaySelection`] and writes a [`NatView`] that handles read without a
//! round trip: the node's reachability and, per connected peer, whether a direct connection
//! exists or only relayed ones.
//!
//! DCUtR tries once per relayed connection, with the addresses its initiator knew then; a punch
//! lost to dropped packets, or tried before the initiator learnt its own public address, would
//! leave the two relayed for good. So after a failure the node opens a fresh relayed connection
//! to the peer ([`PunchRetries`]): the peer takes it as inbound and punches again. A few times,
//! further apart each time, only while the two are still relayed, and only while a second
//! connection to the peer fits in the per-peer limit (no connection in use is closed for it):
//! behind a symmetric NAT no punch can work, and the relay's circuits are not spent on it for
//! ever.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher as _;
use std::time::{Duration, Instant};

use libp2p::core::ConnectedPoint;
use libp2p::core::transport::ListenerId;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::ConnectionId;
use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

/// Relays a private node listens through at once when it picks them itself.
const RELAYS_WANTED: usize = 2;
/// Relay candidates remembered at most (peers that offered the relay protocol).
const MAX_CANDIDATES: usize = 32;
/// A relay that closed our listener (refused, full, gone) is tried again after this long.
const RETRY_FAILED_RELAY: Duration = Duration::from_secs(60);
/// Punches tried again per peer after the first failed, at most.
const PUNCH_RETRIES: u32 = 4;
/// The wait before the first new try; each next one waits twice as long.
const FIRST_PUNCH_RETRY: Duration = Duration::from_secs(5);
/// Peers with a punch to try again, at most (beyond it a failure is not retried).
const MAX_PUNCH_RETRIES: usize = 256;
/// How long a punch tried again may take before the next try is due anyway (DCUtR dials three
/// times, each with a 10 s deadline): a try whose connection never opens does not end the
/// retries.
const PUNCH_IN_FLIGHT: Duration = Duration::from_secs(60);

fn punch_backoff(tried: u32) -> Duration {
    FIRST_PUNCH_RETRY * 2u32.pow(tried)
}

/// Whether peers can dial this node, as AutoNAT found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reachability {
    /// Not yet probed, or the probes disagree.
    #[default]
    Unknown,
    /// Peers dialled it back at an address it announced.
    Public,
    /// Peers could not dial it back: it is behind a NAT or a firewall.
    Private,
}

impl Reachability {
    /// The name shown to people: `public`, `private` or `unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Public => "public",
            Self::Private => "private",
        }
    }
}

/// How this node is connected to a peer right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionPath {
    /// At least one connection goes straight to the peer (dialled, accepted or hole-punched).
    Direct,
    /// Every connection to the peer goes through a relay.
    Relayed,
}

impl ConnectionPath {
    /// `direct` or `relayed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Relayed => "relayed",
        }
    }
}

/// Whether an address goes through a relay (`…/p2p-circuit/…`).
pub fn is_relayed(address: &Multiaddr) -> bool {
    address.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}

/// What handles read: the node's reachability and each peer's connections.
#[derive(Debug, Default)]
pub(crate) struct NatView {
    reachability: Reachability,
    /// Per peer, its open connections and whether each is relayed. Bounded by the connection
    /// limits.
    connections: HashMap<PeerId, HashMap<ConnectionId, bool>>,
}

impl NatView {
    pub(crate) fn reachability(&self) -> Reachability {
        self.reachability
    }

    pub(crate) fn set_reachability(&mut self, reachability: Reachability) {
        self.reachability = reachability;
    }

    pub(crate) fn path(&self, peer: &PeerId) -> Option<ConnectionPath> {
        let connections = self.connections.get(peer)?;
        if connections.values().any(|relayed| !relayed) {
            Some(ConnectionPath::Direct)
        } else if connections.is_empty() {
            None
        } else {
            Some(ConnectionPath::Relayed)
        }
    }

    /// How many connections to `peer` are open.
    pub(crate) fn connections_to(&self, peer: &PeerId) -> usize {
        self.connections.get(peer).map_or(0, HashMap::len)
    }

    pub(crate) fn opened(&mut self, peer: PeerId, connection: ConnectionId, relayed: bool) {
        self.connections
            .entry(peer)
            .or_default()
            .insert(connection, relayed);
    }

    pub(crate) fn closed(&mut self, peer: &PeerId, connection: ConnectionId) {
        if let Some(connections) = self.connections.get_mut(peer) {
            connections.remove(&connection);
            if connections.is_empty() {
                self.connections.remove(peer);
            }
        }
    }
}

/// Peers whose relayed connection failed to turn direct, and when to try again.
#[derive(Debug, Default)]
pub(crate) struct PunchRetries {
    /// Per peer: the retries made so far, and when the next one is due (`None` once they are
    /// spent).
    peers: HashMap<PeerId, (u32, Option<Instant>)>,
}

impl PunchRetries {
    /// A punch with `peer` failed at `now`: the next try is due after the backoff, unless the
    /// retries are spent.
    pub(crate) fn failed(&mut self, peer: PeerId, now: Instant) {
        if !self.peers.contains_key(&peer) && self.peers.len() >= MAX_PUNCH_RETRIES {
            return;
        }
        let (tried, next) = self.peers.entry(peer).or_insert((0, None));
        *next = (*tried < PUNCH_RETRIES).then(|| now + punch_backoff(*tried));
    }

    /// The two are direct now, or apart: nothing more to try.
    pub(crate) fn settled(&mut self, peer: &PeerId) {
        self.peers.remove(peer);
    }

    /// The peers whose next try is due at `now` and who are still reached through a relay only
    /// (`view`); each counts as tried. Peers no longer connected are forgotten.
    pub(crate) fn due(&mut self, now: Instant, view: &NatView) -> Vec<PeerId> {
        let mut due = Vec::new();
        self.peers
            .retain(|peer, (tried, next)| match view.path(peer) {
                Some(ConnectionPath::Relayed) => {
                    if next.is_some_and(|at| at <= now) {
                        *tried += 1;
                        // Its failure brings the next try forward to the backoff.
                        *next = (*tried < PUNCH_RETRIES)
                            .then(|| now + PUNCH_IN_FLIGHT + punch_backoff(*tried));
                        due.push(*peer);
                    }
                    // Spent: keep the entry so a late failure is not counted as a first one.
                    true
                }
                _ => false,
            });
        due
    }
}

/// Which relays the node listens through, and which it could.
#[derive(Debug, Default)]
pub(crate) struct RelaySelection {
    /// Peers that offered the relay protocol, with an address to reach each.
    candidates: HashMap<PeerId, Multiaddr>,
    /// Addresses this node dialled each peer at: the best way back to a relay.
    dialled: HashMap<PeerId, Multiaddr>,
    /// Relay listeners open now, and the relay behind each.
    listeners: HashMap<ListenerId, PeerId>,
    /// Relays that closed a listener on us, and when; not picked again for a while.
    failed: HashMap<PeerId, Instant>,
    /// Orders candidates this process alone knows how: a peer cannot grind a key that every
    /// node picks first.
    salt: RandomState,
}

impl RelaySelection {
    /// Notes a connection, keeping the address when this node dialled it.
    pub(crate) fn connected(&mut self, peer: PeerId, endpoint: &ConnectedPoint) {
        if let ConnectedPoint::Dialer { address, .. } = endpoint
            && !is_relayed(address)
            && self.dialled.len() < MAX_CANDIDATES * 8
        {
            self.dialled.entry(peer).or_insert_with(|| address.clone());
        }
    }

    /// Forgets a peer whose last connection closed.
    pub(crate) fn disconnected(&mut self, peer: &PeerId) {
        self.dialled.remove(peer);
        self.candidates.remove(peer);
    }

    /// A peer told us (identify) it serves as a relay, listening at `listen_addrs`.
    pub(crate) fn offered(&mut self, peer: PeerId, listen_addrs: &[Multiaddr]) {
        if self.candidates.len() >= MAX_CANDIDATES && !self.candidates.contains_key(&peer) {
            return;
        }
        let address = self.dialled.get(&peer).cloned().or_else(|| {
            listen_addrs
                .iter()
                .find(|a| !is_relayed(a) && !is_loopback(a))
                .cloned()
        });
        if let Some(address) = address {
            self.candidates.insert(peer, address);
        }
    }

    /// A relay listener opened (configured or picked).
    pub(crate) fn listening(&mut self, listener: ListenerId, relay: PeerId) {
        self.listeners.insert(listener, relay);
    }

    /// A listener closed; returns the relay when it was one of ours.
    pub(crate) fn listener_closed(&mut self, listener: ListenerId) -> Option<PeerId> {
        let relay = self.listeners.remove(&listener)?;
        self.failed.insert(relay, Instant::now());
        Some(relay)
    }

    /// Circuit addresses to listen on now, so that the node holds `RELAYS_WANTED` relays.
    pub(crate) fn wanted(&mut self) -> Vec<(PeerId, Multiaddr)> {
        self.failed
            .retain(|_, failed_at| failed_at.elapsed() < RETRY_FAILED_RELAY);
        let in_use: HashSet<&PeerId> = self.listeners.values().collect();
        let missing = RELAYS_WANTED.saturating_sub(in_use.len());
        let mut picks: Vec<(&PeerId, &Multiaddr)> = self
            .candidates
            .iter()
            .filter(|(peer, _)| !in_use.contains(peer) && !self.failed.contains_key(peer))
            .collect();
        // Peers this node dialled itself (its bootstrap and remembered peers, which its operator
        // chose) before peers that dialled it; among each, an order no peer can predict.
        picks.sort_by_key(|(peer, _)| (!self.dialled.contains_key(peer), self.salt.hash_one(peer)));
        picks
            .into_iter()
            .take(missing)
            .map(|(peer, address)| (*peer, circuit_through(address, *peer)))
            .collect()
    }
}

/// The address to listen on through `relay`, reached at `address`.
pub(crate) fn circuit_through(address: &Multiaddr, relay: PeerId) -> Multiaddr {
    let mut circuit = address.clone();
    if !matches!(circuit.iter().last(), Some(Protocol::P2p(_))) {
        circuit.push(Protocol::P2p(relay));
    }
    circuit.with(Protocol::P2pCircuit)
}

fn is_loopback(address: &Multiaddr) -> bool {
    address.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_loopback(),
        Protocol::Ip6(ip) => ip.is_loopback(),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> Multiaddr {
        text.parse().expect("multiaddr")
    }

    #[test]
    fn a_private_node_picks_two_relays_and_replaces_one_that_fails() {
        let mut selection = RelaySelection::default();
        let relays: Vec<PeerId> = (0..5).map(|_| PeerId::random()).collect();
        // The node dialled the last one itself (a bootstrap peer): it is always picked.
        let chosen = relays[4];
        selection.connected(
            chosen,
            &ConnectedPoint::Dialer {
                address: addr("/ip4/10.0.0.1/tcp/4001"),
                role_override: libp2p::core::Endpoint::Dialer,
                port_use: libp2p::core::transport::PortUse::Reuse,
            },
        );
        for relay in &relays {
            selection.offered(
                *relay,
                &[addr("/ip4/127.0.0.1/tcp/1"), addr("/ip4/10.0.0.1/tcp/4001")],
            );
        }
        let picks = selection.wanted();
        assert_eq!(picks.len(), 2);
        assert_eq!(picks[0].0, chosen, "a relay the node dialled comes first");
        for (relay, circuit) in &picks {
            assert_eq!(
                circuit,
                &addr(&format!("/ip4/10.0.0.1/tcp/4001/p2p/{relay}/p2p-circuit")),
                "loopback is never a way to a relay"
            );
        }
        let first = ListenerId::next();
        let second = ListenerId::next();
        selection.listening(first, picks[0].0);
        selection.listening(second, picks[1].0);
        assert!(selection.wanted().is_empty(), "two relays are enough");

        assert_eq!(selection.listener_closed(first), Some(picks[0].0));
        let replacement = selection.wanted();
        assert_eq!(replacement.len(), 1);
        assert_ne!(
            replacement[0].0, picks[0].0,
            "the failed relay is not picked again"
        );
        assert_ne!(replacement[0].0, picks[1].0);
    }

    #[test]
    fn a_dialled_address_is_preferred_and_paths_follow_connections() {
        let mut selection = RelaySelection::default();
        let relay = PeerId::random();
        let dialled = addr("/ip4/203.0.113.7/udp/4001/quic-v1");
        selection.connected(
            relay,
            &ConnectedPoint::Dialer {
                address: dialled.clone(),
                role_override: libp2p::core::Endpoint::Dialer,
                port_use: libp2p::core::transport::PortUse::Reuse,
            },
        );
        selection.offered(relay, &[addr("/ip4/10.0.0.1/tcp/4001")]);
        assert_eq!(
            selection.wanted()[0].1,
            addr(&format!("{dialled}/p2p/{relay}/p2p-circuit"))
        );

        let mut view = NatView::default();
        let peer = PeerId::random();
        let (relayed, direct) = (
            ConnectionId::new_unchecked(1),
            ConnectionId::new_unchecked(2),
        );
        assert_eq!(view.path(&peer), None);
        view.opened(peer, relayed, true);
        assert_eq!(view.path(&peer), Some(ConnectionPath::Relayed));
        view.opened(peer, direct, false);
        assert_eq!(view.path(&peer), Some(ConnectionPath::Direct));
        view.closed(&peer, direct);
        assert_eq!(view.path(&peer), Some(ConnectionPath::Relayed));
        view.closed(&peer, relayed);
        assert_eq!(view.path(&peer), None);
    }

    #[test]
    fn a_failed_punch_is_tried_again_a_few_times_further_apart_while_relayed() {
        let mut retries = PunchRetries::default();
        let mut view = NatView::default();
        let peer = PeerId::random();
        let start = Instant::now();
        view.opened(peer, ConnectionId::new_unchecked(1), true);
        retries.failed(peer, start);
        assert!(
            retries.due(start, &view).is_empty(),
            "not before the backoff"
        );
        let mut at = start;
        // Twice as long each time: 5, 10, 20, 40 s.
        for wait in [5, 10, 20, 40].map(Duration::from_secs) {
            let early = at + wait - Duration::from_millis(1);
            assert!(retries.due(early, &view).is_empty(), "not before {wait:?}");
            assert_eq!(retries.due(at + wait, &view), vec![peer]);
            assert!(
                retries.due(at + wait, &view).is_empty(),
                "one try in flight at a time"
            );
            at += wait;
            retries.failed(peer, at);
        }
        assert!(
            retries
                .due(at + Duration::from_secs(3600), &view)
                .is_empty(),
            "spent"
        );

        // A try whose connection never opens (no failure comes) does not end the retries.
        let silent = PeerId::random();
        view.opened(silent, ConnectionId::new_unchecked(9), true);
        retries.failed(silent, start);
        let first = start + FIRST_PUNCH_RETRY;
        assert_eq!(retries.due(first, &view), vec![silent]);
        let later = first + PUNCH_IN_FLIGHT + punch_backoff(1);
        assert!(
            retries
                .due(later - Duration::from_millis(1), &view)
                .is_empty()
        );
        assert_eq!(retries.due(later, &view), vec![silent]);

        // A direct connection, or none, ends the retries.
        let other = PeerId::random();
        view.opened(other, ConnectionId::new_unchecked(2), true);
        retries.failed(other, start);
        view.opened(other, ConnectionId::new_unchecked(3), false);
        assert!(
            retries
                .due(start + Duration::from_secs(60), &view)
                .is_empty()
        );
        assert!(!retries.peers.contains_key(&other));
    }
}
