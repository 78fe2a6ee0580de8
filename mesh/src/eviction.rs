//! Room for late joiners. Inbound connections may take one slot more than their share; when that
//! slot is taken the node drops its least useful inbound peer, so it is never full for long and
//! a peer joining late is always admitted somewhere. Least useful: no gossip topic shared with
//! this node first (a peer that only takes a slot), then the lowest gossip score, then the
//! newest. A peer gets a grace period to subscribe before it can be chosen, and the newcomer is
//! dropped itself only when every other inbound peer is still within its grace.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::PeerId;

/// How long a new inbound peer has to subscribe and prove useful before it may be dropped.
pub(crate) const GRACE: Duration = Duration::from_secs(10);

/// One inbound peer as eviction sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct InboundPeer {
    pub(crate) peer: PeerId,
    pub(crate) since: Instant,
    pub(crate) shares_topic: bool,
    pub(crate) score: f64,
}

/// The peer to drop so that `newcomer` can stay, among `inbound` (which includes it).
pub(crate) fn least_useful(inbound: &[InboundPeer], newcomer: &PeerId, now: Instant) -> PeerId {
    inbound
        .iter()
        .filter(|p| &p.peer != newcomer && now.duration_since(p.since) >= GRACE)
        .min_by(|a, b| {
            a.shares_topic
                .cmp(&b.shares_topic)
                .then(a.score.total_cmp(&b.score))
                .then(b.since.cmp(&a.since))
        })
        .map_or(*newcomer, |p| p.peer)
}

/// When each peer with an inbound connection first connected in, and how many inbound
/// connections are open.
#[derive(Debug, Default)]
pub(crate) struct InboundPeers {
    since: HashMap<PeerId, (Instant, u32)>,
    connections: usize,
}

impl InboundPeers {
    pub(crate) fn opened(&mut self, peer: PeerId, now: Instant) {
        self.since.entry(peer).or_insert((now, 0)).1 += 1;
        self.connections += 1;
    }

    pub(crate) fn closed(&mut self, peer: &PeerId) {
        if let Some((_, open)) = self.since.get_mut(peer) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                self.since.remove(peer);
            }
            self.connections = self.connections.saturating_sub(1);
        }
    }

    pub(crate) fn connections(&self) -> usize {
        self.connections
    }

    pub(crate) fn peers(&self) -> impl Iterator<Item = (PeerId, Instant)> + '_ {
        self.since.iter().map(|(peer, (since, _))| (*peer, *since))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_sharing_no_topic_goes_first_then_the_lowest_score_then_the_newest() {
        let now = Instant::now();
        let old = now - Duration::from_secs(60);
        let newer = now - Duration::from_secs(30);
        let peer = |shares_topic, score, since| InboundPeer {
            peer: PeerId::random(),
            since,
            shares_topic,
            score,
        };
        let newcomer = peer(false, 0.0, now);
        let useful = peer(true, 5.0, old);
        let poor = peer(true, -1.0, old);
        let idle_old = peer(false, 0.0, old);
        let idle_newer = peer(false, 0.0, newer);
        let all = [newcomer, useful, poor, idle_old, idle_newer];
        assert_eq!(least_useful(&all, &newcomer.peer, now), idle_newer.peer);
        let subscribed = [newcomer, useful, poor];
        assert_eq!(least_useful(&subscribed, &newcomer.peer, now), poor.peer);
        // Everyone else still within the grace: the newcomer itself goes.
        let young = peer(false, 0.0, now - Duration::from_secs(1));
        assert_eq!(
            least_useful(&[newcomer, young], &newcomer.peer, now),
            newcomer.peer
        );
    }

    #[test]
    fn counts_follow_connections() {
        let mut inbound = InboundPeers::default();
        let (a, b) = (PeerId::random(), PeerId::random());
        let now = Instant::now();
        inbound.opened(a, now);
        inbound.opened(a, now);
        inbound.opened(b, now);
        assert_eq!(inbound.connections(), 3);
        inbound.closed(&a);
        assert_eq!(inbound.peers().count(), 2);
        inbound.closed(&a);
        inbound.closed(&PeerId::random());
        assert_eq!((inbound.connections(), inbound.peers().count()), (1, 1));
    }
}
