//! Who may enter the Kademlia routing table: at most a few peers per IP address and per network
//! (IPv4 /24, IPv6 /48), so that one host with many keys cannot fill the table and answer every
//! lookup itself. Kademlia inserts nothing on its own (`BucketInserts::Manual`); the event loop
//! asks [`RoutingQuota::admits`] before each insert and keeps the quota in step with the table
//! from its `RoutingUpdated` events. Relayed addresses carry the relay's IP, not the peer's, so
//! they are not counted (the relay's own circuit limits bound them).

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm, dummy,
};
use libp2p::{Multiaddr, PeerId};

use crate::fleet::FleetView;
use crate::inbound::{ip_of, network_of};

/// `address` without a trailing `/p2p/<peer>`: the swarm adds it when it dials, and the same
/// address written both ways would be dialled twice (two connections, one of them refused).
pub(crate) fn without_peer(mut address: Multiaddr, peer: &PeerId) -> Multiaddr {
    if matches!(address.iter().last(), Some(libp2p::multiaddr::Protocol::P2p(p)) if &p == peer) {
        address.pop();
    }
    address
}

/// Addresses taken from one announcement at most.
const MAX_ANNOUNCED_ADDRESSES: usize = 16;

/// Gives the swarm a fleet node's addresses when it dials that node: those the node signed into
/// its latest announcement, less any this node listens on itself ([`AnnouncedAddresses::is_own`]).
/// So every node in the view can be dialled (invokes, leases) whether or not it holds a
/// routing-table slot. It also keeps the node's own listen addresses, which the event loop asks
/// about before it puts an address into the routing table.
#[derive(Debug)]
pub(crate) struct AnnouncedAddresses {
    fleet: Arc<RwLock<FleetView>>,
    own: Vec<Multiaddr>,
}

impl AnnouncedAddresses {
    pub(crate) fn new(fleet: Arc<RwLock<FleetView>>) -> Self {
        Self {
            fleet,
            own: Vec::new(),
        }
    }

    fn of(&self, peer: &PeerId) -> Vec<Multiaddr> {
        let fleet = self.fleet.read().unwrap_or_else(|p| p.into_inner());
        let Some(member) = fleet.get(peer) else {
            return Vec::new();
        };
        member
            .announcement
            .listen_addrs
            .iter()
            .take(MAX_ANNOUNCED_ADDRESSES)
            .filter_map(|a| a.parse::<Multiaddr>().ok())
            .map(|a| without_peer(a, peer))
            .filter(|a| crate::swarm::usable_address(a) && !self.is_own(a))
            .collect()
    }

    /// Whether this node listens on `address` (written without a `/p2p` suffix). Peers on
    /// other hosts announce loopback and private addresses too, often with the same port;
    /// dialling one reaches this node, and the swarm then fails the whole dial (wrong peer)
    /// before it tries the addresses that work. (The swarm's own check of listened addresses
    /// did not catch these in the multi-host test.)
    pub(crate) fn is_own(&self, address: &Multiaddr) -> bool {
        self.own.contains(address)
    }
}

impl NetworkBehaviour for AnnouncedAddresses {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: Option<PeerId>,
        _: &[Multiaddr],
        _: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        Ok(peer.map(|peer| self.of(&peer)).unwrap_or_default())
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm<'_>) {
        match event {
            FromSwarm::NewListenAddr(new) => self.own.push(new.addr.clone()),
            FromSwarm::ExpiredListenAddr(gone) => self.own.retain(|a| a != gone.addr),
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

/// Peers from one IP address in the routing table at most.
pub(crate) const PER_IP: usize = 2;
/// Peers from one network in the routing table at most.
pub(crate) const PER_NETWORK: usize = 8;

#[derive(Debug, Default)]
pub(crate) struct RoutingQuota {
    /// Off for many nodes on one host (tests, local fleets).
    enforced: bool,
    /// Each peer in the table, by the IP it was counted under.
    counted: HashMap<PeerId, IpAddr>,
    per_ip: HashMap<IpAddr, HashSet<PeerId>>,
    per_network: HashMap<IpAddr, HashSet<PeerId>>,
}

impl RoutingQuota {
    pub(crate) fn new(enforced: bool) -> Self {
        Self {
            enforced,
            ..Self::default()
        }
    }

    /// Whether `peer`, reached at `address`, may go into the table now.
    pub(crate) fn admits(&self, peer: &PeerId, address: &Multiaddr) -> bool {
        if !self.enforced || self.counted.contains_key(peer) {
            return true;
        }
        let Some(ip) = ip_of(address) else {
            return true;
        };
        let held = |map: &HashMap<IpAddr, HashSet<PeerId>>, key: IpAddr| {
            map.get(&key).map_or(0, HashSet::len)
        };
        held(&self.per_ip, ip) < PER_IP && held(&self.per_network, network_of(ip)) < PER_NETWORK
    }

    /// The table took `peer` (reached at `addresses`); false when it is over quota (it came in
    /// by a path the loop did not ask about) and should be taken out again.
    pub(crate) fn inserted<'a>(
        &mut self,
        peer: PeerId,
        mut addresses: impl Iterator<Item = &'a Multiaddr>,
    ) -> bool {
        if !self.enforced || self.counted.contains_key(&peer) {
            return true;
        }
        let Some(ip) = addresses.find_map(ip_of) else {
            return true;
        };
        let address = Multiaddr::from(ip);
        if !self.admits(&peer, &address) {
            return false;
        }
        self.counted.insert(peer, ip);
        self.per_ip.entry(ip).or_default().insert(peer);
        self.per_network
            .entry(network_of(ip))
            .or_default()
            .insert(peer);
        true
    }

    /// The table let `peer` go.
    pub(crate) fn removed(&mut self, peer: &PeerId) {
        let Some(ip) = self.counted.remove(peer) else {
            return;
        };
        for (map, key) in [
            (&mut self.per_ip, ip),
            (&mut self.per_network, network_of(ip)),
        ] {
            if let Some(peers) = map.get_mut(&key) {
                peers.remove(peer);
                if peers.is_empty() {
                    map.remove(&key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Multiaddr {
        text.parse().expect("multiaddr")
    }

    #[test]
    fn one_address_gets_two_entries_and_one_network_eight() {
        let mut quota = RoutingQuota::new(true);
        let flood = at("/ip4/203.0.113.9/tcp/4001");
        let admitted: Vec<PeerId> = (0..10)
            .map(|_| PeerId::random())
            .filter(|peer| {
                quota.admits(peer, &flood) && quota.inserted(*peer, std::iter::once(&flood))
            })
            .collect();
        assert_eq!(admitted.len(), PER_IP);
        // Others of the same /24: up to eight in all.
        let mut neighbours = 0;
        for host in 10..30 {
            let address = at(&format!("/ip4/203.0.113.{host}/tcp/4001"));
            let peer = PeerId::random();
            if quota.admits(&peer, &address) && quota.inserted(peer, std::iter::once(&address)) {
                neighbours += 1;
            }
        }
        assert_eq!(neighbours, PER_NETWORK - PER_IP);
        // Elsewhere, and through relays, peers still get in.
        let elsewhere = at("/ip4/198.51.100.1/tcp/4001");
        assert!(quota.admits(&PeerId::random(), &elsewhere));
        let relayed = at(
            "/ip4/203.0.113.9/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit",
        );
        assert!(quota.admits(&PeerId::random(), &relayed));
        // A slot freed by the table is taken again.
        quota.removed(&admitted[0]);
        assert!(quota.admits(&PeerId::random(), &flood));
        // An entry over quota that arrived some other way is reported for removal.
        let late = PeerId::random();
        quota.inserted(PeerId::random(), std::iter::once(&flood));
        assert!(!quota.inserted(late, std::iter::once(&flood)));
    }

    #[test]
    fn an_address_is_written_one_way_whatever_its_source() {
        let peer = PeerId::random();
        let bare = at("/ip4/10.0.0.1/tcp/4001");
        let suffixed = bare.clone().with_p2p(peer).expect("no peer id yet");
        assert_eq!(without_peer(suffixed, &peer), bare);
        // Another peer's id (a relay's, in a circuit address) stays.
        let relay = PeerId::random();
        let circuit = bare
            .clone()
            .with_p2p(relay)
            .expect("relay")
            .with(libp2p::multiaddr::Protocol::P2pCircuit);
        assert_eq!(without_peer(circuit.clone(), &peer), circuit);
    }

    #[test]
    fn nothing_is_counted_for_local_fleets() {
        let mut quota = RoutingQuota::new(false);
        let local = at("/ip4/127.0.0.1/tcp/4001");
        for _ in 0..50 {
            let peer = PeerId::random();
            assert!(quota.admits(&peer, &local) && quota.inserted(peer, std::iter::once(&local)));
        }
    }
}
