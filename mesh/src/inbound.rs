//! Inbound connection caps per source address, so that one host (or one network) with many
//! keys cannot take every connection slot a node has and decide whom it hears (an eclipse).
//!
//! Counted are established inbound connections by the remote IP address, and by its network
//! (the /24 of an IPv4 address, the /48 of an IPv6 one). A connection past either cap is
//! refused before its handshake when the count is already full, and again once established (the
//! count may have grown meanwhile). Outbound connections are never refused here: together with
//! the inbound ceiling below the total (`MeshConfig::reserved_outbound`), a node can always dial
//! out to peers it chose.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::net::IpAddr;
use std::task::{Context, Poll};

use libp2p::core::transport::PortUse;
use libp2p::core::{ConnectedPoint, Endpoint};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::behaviour::{ConnectionClosed, ConnectionEstablished};
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm, dummy,
};
use libp2p::{Multiaddr, PeerId};

/// The caps: `None` counts nothing (many nodes on one host, as in tests and local fleets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InboundCaps {
    /// Inbound connections from one IP address.
    pub(crate) per_ip: u32,
    /// Inbound connections from one network (IPv4 /24, IPv6 /48).
    pub(crate) per_network: u32,
}

/// Why an inbound connection was refused.
#[derive(Debug)]
pub(crate) struct InboundCapReached {
    what: &'static str,
    cap: u32,
}

impl fmt::Display for InboundCapReached {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} inbound connections from one {} already",
            self.cap, self.what
        )
    }
}

impl std::error::Error for InboundCapReached {}

/// The behaviour that applies [`InboundCaps`].
#[derive(Debug, Default)]
pub(crate) struct InboundLimits {
    caps: Option<InboundCaps>,
    by_connection: HashMap<ConnectionId, IpAddr>,
    per_ip: HashMap<IpAddr, u32>,
    per_network: HashMap<IpAddr, u32>,
}

impl InboundLimits {
    pub(crate) fn new(caps: Option<InboundCaps>) -> Self {
        Self {
            caps,
            ..Self::default()
        }
    }

    /// Refuses a connection from `remote` when a cap is already full.
    fn check(&self, remote: &Multiaddr) -> Result<(), ConnectionDenied> {
        let (Some(caps), Some(ip)) = (self.caps, ip_of(remote)) else {
            return Ok(());
        };
        if self.per_ip.get(&ip).copied().unwrap_or(0) >= caps.per_ip {
            return Err(ConnectionDenied::new(InboundCapReached {
                what: "address",
                cap: caps.per_ip,
            }));
        }
        if self.per_network.get(&network_of(ip)).copied().unwrap_or(0) >= caps.per_network {
            return Err(ConnectionDenied::new(InboundCapReached {
                what: "network",
                cap: caps.per_network,
            }));
        }
        Ok(())
    }

    fn count(&mut self, connection: ConnectionId, remote: &Multiaddr) {
        if self.caps.is_none() {
            return;
        }
        if let Some(ip) = ip_of(remote) {
            self.by_connection.insert(connection, ip);
            *self.per_ip.entry(ip).or_default() += 1;
            *self.per_network.entry(network_of(ip)).or_default() += 1;
        }
    }

    fn forget(&mut self, connection: ConnectionId) {
        let Some(ip) = self.by_connection.remove(&connection) else {
            return;
        };
        for (map, key) in [
            (&mut self.per_ip, ip),
            (&mut self.per_network, network_of(ip)),
        ] {
            if let Some(count) = map.get_mut(&key) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    map.remove(&key);
                }
            }
        }
    }
}

/// The IP address a multiaddr starts from, if it has one. A relayed connection has none of its
/// own (its address is the relay's): the relay's circuit limits bound those.
pub(crate) fn ip_of(address: &Multiaddr) -> Option<IpAddr> {
    if crate::nat::is_relayed(address) {
        return None;
    }
    address.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

/// The network an address is counted in: its IPv4 /24 or IPv6 /48.
pub(crate) fn network_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::V4([a, b, c, 0].into())
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6([s[0], s[1], s[2], 0, 0, 0, 0, 0].into())
        }
    }
}

impl NetworkBehaviour for InboundLimits {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        _local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.check(remote_addr)
    }

    fn handle_established_inbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        _peer: PeerId,
        _local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.check(remote_addr)?;
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        _peer: PeerId,
        _addr: &Multiaddr,
        _role_override: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm<'_>) {
        match event {
            FromSwarm::ConnectionEstablished(ConnectionEstablished {
                connection_id,
                endpoint: ConnectedPoint::Listener { send_back_addr, .. },
                ..
            }) => self.count(connection_id, send_back_addr),
            FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, .. }) => {
                self.forget(connection_id);
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _peer: PeerId,
        _connection: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(ip: &str) -> Multiaddr {
        format!("/ip4/{ip}/tcp/4001").parse().unwrap()
    }

    #[test]
    fn one_address_and_one_network_get_at_most_their_caps_and_get_room_back_on_close() {
        let mut limits = InboundLimits::new(Some(InboundCaps {
            per_ip: 2,
            per_network: 3,
        }));
        let connection = |n: usize| ConnectionId::new_unchecked(n);
        limits.check(&tcp("203.0.113.7")).unwrap();
        limits.count(connection(1), &tcp("203.0.113.7"));
        limits.count(connection(2), &tcp("203.0.113.7"));
        let refused = limits.check(&tcp("203.0.113.7")).unwrap_err();
        let why = refused.downcast_ref::<InboundCapReached>().unwrap();
        assert_eq!(
            (why.what, why.cap),
            ("address", 2),
            "third from one address"
        );
        limits.check(&tcp("203.0.113.8")).unwrap();
        limits.count(connection(3), &tcp("203.0.113.8"));
        let refused = limits.check(&tcp("203.0.113.9")).unwrap_err();
        let why = refused.downcast_ref::<InboundCapReached>().unwrap();
        assert_eq!((why.what, why.cap), ("network", 3));
        limits.check(&tcp("198.51.100.1")).unwrap();
        limits.forget(connection(1));
        limits.check(&tcp("203.0.113.9")).unwrap();
        limits.forget(connection(2));
        limits.forget(connection(3));
        assert!(limits.per_ip.is_empty() && limits.per_network.is_empty());
    }

    #[test]
    fn without_caps_nothing_is_counted_or_refused() {
        let mut limits = InboundLimits::new(None);
        for n in 0..100 {
            limits.check(&tcp("127.0.0.1")).unwrap();
            limits.count(ConnectionId::new_unchecked(n), &tcp("127.0.0.1"));
        }
        assert!(limits.by_connection.is_empty());
    }

    #[test]
    fn ipv6_networks_are_their_slash_48() {
        let a: IpAddr = "2001:db8:1:2::5".parse().unwrap();
        let b: IpAddr = "2001:db8:1:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:2::1".parse().unwrap();
        assert_eq!(network_of(a), network_of(b));
        assert_ne!(network_of(a), network_of(c));
    }
}
