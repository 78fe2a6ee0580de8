//! Counters the event loop keeps for operators: how many peers are connected; what became of
//! each gossiped message (per topic: accepted, rejected as invalid, or ignored as stale); how
//! hole punching across NATs went; and how old each accepted gossip message was when it arrived
//! (its signer's clock against this node's: exact on one machine, off by the clocks' difference
//! across machines).
//! Read without a round trip through the event loop.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::TopicKind;

/// What the mesh did with a gossiped message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GossipVerdict {
    /// Verified and forwarded.
    Accepted,
    /// Failed verification; the forwarder's score was cut.
    Rejected,
    /// Valid but overtaken by a newer claim; dropped without blame.
    Ignored,
}

impl GossipVerdict {
    /// The verdict's name, for labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Rejected => "rejected",
            Self::Ignored => "ignored",
        }
    }

    const ALL: [Self; 3] = [Self::Accepted, Self::Rejected, Self::Ignored];
}

/// How a hole punch (DCUtR) across NATs went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HolePunch {
    /// A relayed connection became a direct one.
    Direct,
    /// A punch failed; the two stay relayed.
    Failed,
    /// A failed punch was tried again over a fresh relayed connection.
    Retried,
}

impl HolePunch {
    /// The outcome's name, for labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Failed => "failed",
            Self::Retried => "retried",
        }
    }

    /// Every outcome.
    pub const ALL: [Self; 3] = [Self::Direct, Self::Failed, Self::Retried];

    fn index(self) -> usize {
        match self {
            Self::Direct => 0,
            Self::Failed => 1,
            Self::Retried => 2,
        }
    }
}

/// Upper bounds of the delivery-age buckets, ms (a last, unbounded bucket follows).
pub const DELIVERY_AGE_BOUNDS_MS: [u64; 13] = [
    5, 10, 25, 50, 100, 150, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000,
];

/// How old accepted messages of one topic were on arrival.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryAges {
    /// Messages per bucket: `DELIVERY_AGE_BOUNDS_MS`, then the unbounded one.
    pub buckets: Vec<u64>,
    /// Messages counted.
    pub count: u64,
    /// Their ages summed, ms.
    pub sum_ms: u64,
}

/// A snapshot of the mesh's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshCounters {
    /// Peers with at least one open connection.
    pub connected_peers: u64,
    /// Peers in the Kademlia routing table.
    pub routing_table_peers: u64,
    /// Gossiped messages by topic and verdict, since the node started.
    pub gossip: Vec<(TopicKind, GossipVerdict, u64)>,
    /// Hole punches by outcome, since the node started.
    pub hole_punches: Vec<(HolePunch, u64)>,
    /// Ages of accepted gossip on arrival, by topic, since the node started.
    pub delivery_ages: Vec<(TopicKind, DeliveryAges)>,
}

/// The live counters, shared by the event loop (writer) and handles (readers).
#[derive(Debug, Default)]
pub(crate) struct MeshStats {
    connected_peers: AtomicU64,
    routing_table_peers: AtomicU64,
    gossip: [[AtomicU64; 3]; TopicKind::ALL.len()],
    hole_punches: [AtomicU64; 3],
    /// Per topic: the buckets (bounds and the unbounded one), then the count and the sum, ms.
    ages: [[AtomicU64; DELIVERY_AGE_BOUNDS_MS.len() + 3]; TopicKind::ALL.len()],
}

fn topic_index(kind: TopicKind) -> usize {
    match kind {
        TopicKind::Inventory => 0,
        TopicKind::Offers => 1,
        TopicKind::Bids => 2,
        TopicKind::Objects => 3,
        TopicKind::Trades => 4,
    }
}

fn verdict_index(verdict: GossipVerdict) -> usize {
    match verdict {
        GossipVerdict::Accepted => 0,
        GossipVerdict::Rejected => 1,
        GossipVerdict::Ignored => 2,
    }
}

impl MeshStats {
    pub(crate) fn set_connected_peers(&self, count: usize) {
        self.connected_peers
            .store(u64::try_from(count).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    pub(crate) fn set_routing_table_peers(&self, count: usize) {
        self.routing_table_peers
            .store(u64::try_from(count).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    pub(crate) fn count_gossip(&self, kind: TopicKind, verdict: GossipVerdict) {
        self.gossip[topic_index(kind)][verdict_index(verdict)].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_hole_punch(&self, outcome: HolePunch) {
        self.hole_punches[outcome.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// An accepted message of `kind` arrived `age_ms` after it was signed.
    pub(crate) fn observe_delivery(&self, kind: TopicKind, age_ms: u64) {
        let ages = &self.ages[topic_index(kind)];
        let bucket = DELIVERY_AGE_BOUNDS_MS
            .iter()
            .position(|bound| age_ms <= *bound)
            .unwrap_or(DELIVERY_AGE_BOUNDS_MS.len());
        ages[bucket].fetch_add(1, Ordering::Relaxed);
        ages[DELIVERY_AGE_BOUNDS_MS.len() + 1].fetch_add(1, Ordering::Relaxed);
        ages[DELIVERY_AGE_BOUNDS_MS.len() + 2].fetch_add(age_ms, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> MeshCounters {
        let mut gossip = Vec::with_capacity(9);
        for kind in TopicKind::ALL {
            for verdict in GossipVerdict::ALL {
                let count =
                    self.gossip[topic_index(kind)][verdict_index(verdict)].load(Ordering::Relaxed);
                gossip.push((kind, verdict, count));
            }
        }
        MeshCounters {
            connected_peers: self.connected_peers.load(Ordering::Relaxed),
            routing_table_peers: self.routing_table_peers.load(Ordering::Relaxed),
            gossip,
            hole_punches: HolePunch::ALL
                .into_iter()
                .map(|outcome| {
                    (
                        outcome,
                        self.hole_punches[outcome.index()].load(Ordering::Relaxed),
                    )
                })
                .collect(),
            delivery_ages: TopicKind::ALL
                .into_iter()
                .map(|kind| {
                    let ages = &self.ages[topic_index(kind)];
                    let read = |i: usize| ages[i].load(Ordering::Relaxed);
                    let buckets = DELIVERY_AGE_BOUNDS_MS.len() + 1;
                    (
                        kind,
                        DeliveryAges {
                            buckets: (0..buckets).map(read).collect(),
                            count: read(buckets),
                            sum_ms: read(buckets + 1),
                        },
                    )
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_land_in_their_topic_and_verdict() {
        let stats = MeshStats::default();
        stats.count_gossip(TopicKind::Offers, GossipVerdict::Rejected);
        stats.count_gossip(TopicKind::Offers, GossipVerdict::Rejected);
        stats.count_gossip(TopicKind::Inventory, GossipVerdict::Accepted);
        stats.set_connected_peers(4);
        stats.count_hole_punch(HolePunch::Failed);
        stats.observe_delivery(TopicKind::Offers, 3);
        stats.observe_delivery(TopicKind::Offers, 120);
        stats.observe_delivery(TopicKind::Offers, 60_000);
        let snapshot = stats.snapshot();
        assert_eq!(snapshot.connected_peers, 4);
        let count = |k, v| {
            snapshot
                .gossip
                .iter()
                .find(|(kind, verdict, _)| *kind == k && *verdict == v)
                .map(|(_, _, n)| *n)
        };
        assert_eq!(count(TopicKind::Offers, GossipVerdict::Rejected), Some(2));
        assert_eq!(
            count(TopicKind::Inventory, GossipVerdict::Accepted),
            Some(1)
        );
        assert_eq!(count(TopicKind::Bids, GossipVerdict::Ignored), Some(0));
        assert_eq!(count(TopicKind::Objects, GossipVerdict::Accepted), Some(0));
        assert_eq!(count(TopicKind::Trades, GossipVerdict::Rejected), Some(0));
        assert_eq!(snapshot.gossip.len(), 15);
        let offers = &snapshot
            .delivery_ages
            .iter()
            .find(|(kind, _)| *kind == TopicKind::Offers)
            .expect("offers")
            .1;
        assert_eq!(offers.count, 3);
        assert_eq!(offers.sum_ms, 60_123);
        assert_eq!(offers.buckets[0], 1, "3 ms: the 5 ms bucket");
        assert_eq!(offers.buckets[5], 1, "120 ms: the 150 ms bucket");
        assert_eq!(offers.buckets[13], 1, "60 s: the unbounded bucket");
        assert_eq!(offers.buckets.iter().sum::<u64>(), 3);
        assert_eq!(
            snapshot.hole_punches,
            [
                (HolePunch::Direct, 0),
                (HolePunch::Failed, 1),
                (HolePunch::Retried, 0)
            ]
        );
    }
}
