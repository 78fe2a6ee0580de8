//! Counters the event loop keeps for operators: how many peers are connected, what became of
//! each gossiped message (per topic: accepted, rejected as invalid, or ignored as stale), and
//! how hole punching across NATs went.
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
}

/// The live counters, shared by the event loop (writer) and handles (readers).
#[derive(Debug, Default)]
pub(crate) struct MeshStats {
    connected_peers: AtomicU64,
    routing_table_peers: AtomicU64,
    gossip: [[AtomicU64; 3]; TopicKind::ALL.len()],
    hole_punches: [AtomicU64; 3],
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
