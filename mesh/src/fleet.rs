//! Node announcements and the fleet view every peer builds from them.
//!
//! The view maps each signer to its latest verified announcement (highest sequence wins) and
//! forgets a node after it misses a configured number of announcement intervals, or when its
//! announcement expires, whichever comes first. Fleet status is computed from this view alone.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use claw_attestation::{HardwareInventory, PayloadKind, SignedPayload};
use libp2p::PeerId;
use serde::{Deserialize, Serialize};

use crate::nat::Reachability;

/// What a node tells its fleet about itself, signed and gossiped periodically and on change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeAnnouncement {
    /// Human-readable node name.
    pub name: String,
    /// Network the node belongs to; must match the topic it arrives on.
    pub network: String,
    /// Where the node is, if configured.
    pub region: Option<String>,
    /// Operator labels.
    pub labels: BTreeMap<String, String>,
    /// `clawnode` version.
    pub software_version: String,
    /// Addresses the node listens on (multiaddr text).
    pub listen_addrs: Vec<String>,
    /// The node's hardware.
    pub inventory: HardwareInventory,
    /// UUIDs of GPUs currently allocated to workloads.
    pub allocated_gpus: Vec<String>,
    /// The node takes no new workloads (an operator cordoned or drained it).
    pub cordoned: bool,
    /// Workloads running on the node.
    pub running_workloads: u32,
    /// Its taints, as `key[=value]:Effect` (work that does not tolerate them is kept off).
    /// (Announcements are bincode: every field is always written.)
    pub taints: Vec<String>,
    /// Whether peers can dial it, as its AutoNAT probes found.
    pub reachability: Reachability,
    /// The membership credential a fleet operator signed for it (a [`crate::FleetMembership`]
    /// envelope), if it was admitted to one.
    pub membership: Option<Vec<u8>>,
}

impl SignedPayload for NodeAnnouncement {
    const KIND: PayloadKind = PayloadKind::Announcement;
}

impl NodeAnnouncement {
    /// GPUs not allocated to any workload.
    pub fn free_gpu_count(&self) -> usize {
        self.inventory
            .gpus
            .iter()
            .filter(|g| !self.allocated_gpus.contains(&g.uuid))
            .count()
    }

    /// How peers reach the node: `public` (they can dial it), `relayed` (behind NAT, listening
    /// through a relay), `private` (behind NAT, no relay yet) or `unknown` (not yet probed).
    pub fn reachability_text(&self) -> &'static str {
        match self.reachability {
            Reachability::Public => "public",
            _ if self
                .listen_addrs
                .iter()
                .any(|a| a.parse().is_ok_and(|a| crate::nat::is_relayed(&a))) =>
            {
                "relayed"
            }
            other => other.as_str(),
        }
    }

    /// The node as the fleet console lists it: `local` when it is the node serving the
    /// console, `announced_ms` when this announcement was signed (none for the serving node).
    pub fn console_node(
        &self,
        peer_id: String,
        local: bool,
        announced_ms: Option<u64>,
    ) -> claw_api::console::ConsoleNode {
        claw_api::console::ConsoleNode {
            peer_id,
            local,
            name: self.name.clone(),
            region: self.region.clone(),
            cordoned: self.cordoned,
            running_workloads: self.running_workloads,
            software_version: self.software_version.clone(),
            reachability: self.reachability_text().to_owned(),
            announced_ms,
            gpus: self
                .inventory
                .gpus
                .iter()
                .map(|g| claw_api::console::ConsoleGpu {
                    uuid: g.uuid.clone(),
                    model: g.model.clone(),
                    memory_mib: g.memory_total_bytes / (1024 * 1024),
                    simulated: g.simulated,
                    allocated: self.allocated_gpus.contains(&g.uuid),
                })
                .collect(),
        }
    }
}

/// One node as a peer sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetMember {
    /// The node.
    pub peer_id: PeerId,
    /// Its latest verified announcement.
    pub announcement: NodeAnnouncement,
    /// That announcement's sequence number.
    pub seq: u64,
    /// When that announcement was signed (Unix ms).
    pub issued_at_ms: u64,
    /// When it expires (Unix ms).
    pub expires_at_ms: u64,
    /// What it is to this node: a member of the fleet it trusts, or a stranger.
    pub standing: crate::Standing,
}

/// Changes to the fleet view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FleetChange {
    /// A node appeared.
    Joined(PeerId),
    /// A known node sent a newer announcement.
    Updated(PeerId),
    /// A node expired from the view.
    Left(PeerId),
}

#[derive(Debug, Clone)]
struct Entry {
    member: FleetMember,
    refreshed: Instant,
}

/// Fleet-wide counts, computed from the view with no network round trip.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FleetStatus {
    /// Nodes in the view.
    pub nodes: usize,
    /// GPUs across them.
    pub gpus: usize,
    /// GPUs not allocated.
    pub free_gpus: usize,
    /// Simulated GPUs among them.
    pub simulated_gpus: usize,
    /// GPUs per model: (total, free).
    pub by_model: BTreeMap<String, (usize, usize)>,
}

/// Nodes a fleet view holds. Announcements are signed but anyone can make keys, so the view is
/// bounded: when it is full, nodes it does not know yet are not taken in until others leave.
pub const MAX_FLEET_MEMBERS: usize = 4096;

/// PeerId → latest verified announcement, for at most [`MAX_FLEET_MEMBERS`] nodes.
#[derive(Debug)]
pub struct FleetView {
    entries: HashMap<PeerId, Entry>,
    announce_interval: Duration,
    missed_intervals: u32,
}

impl FleetView {
    /// A view that forgets nodes silent for `missed_intervals` announcement intervals: the
    /// configured `announce_interval`, paced to the view's size as nodes pace their own
    /// announcements ([`crate::paced_interval`]).
    pub fn new(announce_interval: Duration, missed_intervals: u32) -> Self {
        Self {
            entries: HashMap::new(),
            announce_interval,
            missed_intervals: missed_intervals.max(1),
        }
    }

    /// How often nodes of a fleet this size announce themselves: the configured interval,
    /// paced to the view's size ([`crate::paced_interval`]).
    pub fn announce_interval(&self) -> Duration {
        crate::paced_interval(self.announce_interval, self.entries.len())
    }

    /// How long a node may stay silent before it leaves this view now.
    pub fn max_silence(&self) -> Duration {
        self.announce_interval() * self.missed_intervals
    }

    /// Records a verified announcement; older or equal sequences than the one held are ignored.
    pub fn upsert(&mut self, member: FleetMember, now: Instant) -> Option<FleetChange> {
        let peer = member.peer_id;
        let full = self.entries.len() >= MAX_FLEET_MEMBERS;
        match self.entries.get_mut(&peer) {
            Some(entry) if entry.member.seq >= member.seq => None,
            Some(entry) => {
                *entry = Entry {
                    member,
                    refreshed: now,
                };
                Some(FleetChange::Updated(peer))
            }
            None if full => {
                tracing::debug!(%peer, "fleet view full: a new node is not taken in");
                None
            }
            None => {
                self.entries.insert(
                    peer,
                    Entry {
                        member,
                        refreshed: now,
                    },
                );
                Some(FleetChange::Joined(peer))
            }
        }
    }

    /// Drops nodes that have been silent too long or whose announcement expired.
    pub fn expire(&mut self, now: Instant, now_ms: u64) -> Vec<FleetChange> {
        let mut gone = Vec::new();
        let silence = self.max_silence();
        self.entries.retain(|peer, entry| {
            let keep = now.duration_since(entry.refreshed) <= silence
                && entry.member.expires_at_ms > now_ms;
            if !keep {
                gone.push(FleetChange::Left(*peer));
            }
            keep
        });
        gone
    }

    /// One node.
    pub fn get(&self, peer: &PeerId) -> Option<&FleetMember> {
        self.entries.get(peer).map(|e| &e.member)
    }

    /// Every node, ordered by peer id.
    pub fn members(&self) -> Vec<FleetMember> {
        let mut members: Vec<FleetMember> =
            self.entries.values().map(|e| e.member.clone()).collect();
        members.sort_by_key(|m| m.peer_id);
        members
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no node is known.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Fleet-wide counts.
    pub fn status(&self) -> FleetStatus {
        let mut status = FleetStatus {
            nodes: self.entries.len(),
            ..FleetStatus::default()
        };
        for entry in self.entries.values() {
            let a = &entry.member.announcement;
            for gpu in &a.inventory.gpus {
                let free = !a.allocated_gpus.contains(&gpu.uuid);
                status.gpus += 1;
                status.free_gpus += usize::from(free);
                status.simulated_gpus += usize::from(gpu.simulated);
                let slot = status.by_model.entry(gpu.model.clone()).or_default();
                slot.0 += 1;
                slot.1 += usize::from(free);
            }
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use claw_attestation::{HostInfo, NvmlStatus};

    fn member(seq: u64, expires_at_ms: u64) -> FleetMember {
        FleetMember {
            peer_id: PeerId::random(),
            announcement: NodeAnnouncement {
                name: "n".into(),
                network: "localnet".into(),
                region: None,
                labels: BTreeMap::new(),
                software_version: "0".into(),
                listen_addrs: vec![],
                inventory: HardwareInventory {
                    host: HostInfo::default(),
                    nvml: NvmlStatus::Unavailable {
                        reason: "none".into(),
                    },
                    gpus: vec![],
                },
                allocated_gpus: vec![],
                running_workloads: 0,
                taints: Vec::new(),
                reachability: Default::default(),
                membership: None,
                cordoned: false,
            },
            seq,
            issued_at_ms: 0,
            expires_at_ms,
            standing: crate::Standing::Open,
        }
    }

    #[test]
    fn highest_sequence_wins() {
        let mut view = FleetView::new(Duration::from_secs(10), 3);
        let now = Instant::now();
        let first = member(5, u64::MAX);
        let peer = first.peer_id;
        assert_eq!(
            view.upsert(first.clone(), now),
            Some(FleetChange::Joined(peer))
        );
        let mut older = first.clone();
        older.seq = 4;
        older.announcement.name = "old".into();
        assert_eq!(view.upsert(older, now), None);
        assert_eq!(view.get(&peer).unwrap().announcement.name, "n");
        let mut newer = first;
        newer.seq = 6;
        assert_eq!(view.upsert(newer, now), Some(FleetChange::Updated(peer)));
    }

    #[test]
    fn silent_and_expired_nodes_leave() {
        let mut view = FleetView::new(Duration::from_secs(10), 3);
        let start = Instant::now();
        let quiet = member(1, u64::MAX);
        let expiring = member(1, 1_000);
        view.upsert(quiet.clone(), start);
        view.upsert(expiring.clone(), start);
        assert_eq!(
            view.expire(start, 1_000),
            vec![FleetChange::Left(expiring.peer_id)]
        );
        assert_eq!(view.len(), 1);
        assert!(view.expire(start + Duration::from_secs(30), 0).is_empty());
        assert_eq!(
            view.expire(start + Duration::from_secs(31), 0),
            vec![FleetChange::Left(quiet.peer_id)]
        );
        assert!(view.is_empty());
    }

    #[test]
    fn a_large_fleet_paces_its_announcements_and_its_views_wait_as_long() {
        let ten = Duration::from_secs(10);
        assert_eq!(crate::paced_interval(ten, 1), ten);
        assert_eq!(crate::paced_interval(ten, 50), ten);
        assert_eq!(crate::paced_interval(ten, 200), Duration::from_secs(40));
        assert_eq!(crate::paced_interval(ten, 1000), Duration::from_secs(200));
        assert_eq!(
            crate::paced_interval(ten, MAX_FLEET_MEMBERS),
            crate::MAX_PACED_INTERVAL
        );
        let hour = Duration::from_secs(3600);
        assert_eq!(crate::paced_interval(hour, 200), hour);
        // A view of 100 nodes waits three paced intervals (20 s each) for a silent one.
        let mut view = FleetView::new(ten, 3);
        let start = Instant::now();
        let members: Vec<FleetMember> = (0..100).map(|_| member(1, u64::MAX)).collect();
        for m in &members {
            view.upsert(m.clone(), start);
        }
        assert_eq!(view.max_silence(), Duration::from_secs(60));
        assert!(view.expire(start + Duration::from_secs(59), 0).is_empty());
        assert_eq!(view.expire(start + Duration::from_secs(61), 0).len(), 100);
    }

    #[test]
    fn a_full_view_takes_no_new_node_but_keeps_updating_known_ones() {
        let mut view = FleetView::new(Duration::from_secs(10), 3);
        let now = Instant::now();
        let known: Vec<FleetMember> = (0..MAX_FLEET_MEMBERS)
            .map(|_| member(1, u64::MAX))
            .collect();
        for m in &known {
            assert!(view.upsert(m.clone(), now).is_some());
        }
        assert_eq!(view.upsert(member(1, u64::MAX), now), None);
        assert_eq!(view.len(), MAX_FLEET_MEMBERS);
        let mut newer = known[0].clone();
        newer.seq = 2;
        assert_eq!(
            view.upsert(newer, now),
            Some(FleetChange::Updated(known[0].peer_id))
        );
        // Once nodes leave, new ones are taken in again.
        let silence = view.max_silence();
        assert_eq!(
            view.expire(now + silence + Duration::from_secs(1), 0).len(),
            MAX_FLEET_MEMBERS
        );
        assert!(view.upsert(member(1, u64::MAX), now).is_some());
    }
}
