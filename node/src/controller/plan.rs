//! What a deployment's controller decides, as pure functions: who controls an object
//! ([`ranking`]), and which replicas to start and stop this round ([`plan`]) from what the nodes
//! reported and what the fleet view says they have free.

use std::collections::BTreeMap;

use claw_api::deploy::{DeploymentSpec, Replica, RolloutStrategy};
use claw_api::workload::WorkloadState;
use claw_mesh::PeerId;
use sha2::{Digest as _, Sha256};

/// `peers` ordered by how strongly each is chosen to control the object under `key`
/// (rendezvous hashing): every member that sees the same peers picks the same first one, and
/// when it leaves, the next one takes over without anything else moving.
pub fn ranking(key: &str, peers: impl IntoIterator<Item = PeerId>) -> Vec<PeerId> {
    let mut scored: Vec<([u8; 32], PeerId)> = peers
        .into_iter()
        .map(|peer| {
            let mut hash = Sha256::new();
            hash.update(key.as_bytes());
            hash.update([0]);
            hash.update(peer.to_bytes());
            (hash.finalize().into(), peer)
        })
        .collect();
    scored.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    scored.dedup_by(|a, b| a.1 == b.1);
    scored.into_iter().map(|(_, peer)| peer).collect()
}

/// Digest of what a replica runs (its template and GPU model): revisions that change only the
/// replica count or the pause keep their replicas.
pub fn template_digest(spec: &DeploymentSpec) -> String {
    let text = serde_json::to_string(&(&spec.template, &spec.gpu_model)).unwrap_or_default();
    hex::encode(&Sha256::digest(text.as_bytes())[..8])
}

/// A node the controller may place replicas on, as the fleet view and its report show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The node.
    pub node: PeerId,
    /// GPUs of the deployment's model free on it.
    pub free_gpus: usize,
    /// Whether it takes new workloads (not cordoned, and it answered this round).
    pub schedulable: bool,
}

/// One change to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start a replica of the current template on `node`.
    Start {
        /// Where.
        node: PeerId,
    },
    /// Stop replica `workload` on `node`.
    Stop {
        /// Where.
        node: PeerId,
        /// Which.
        workload: String,
    },
}

/// This round's changes, and why replicas are still missing if they are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// What to do, stops first.
    pub actions: Vec<Action>,
    /// Why some replicas cannot be placed now.
    pub pending: Option<String>,
}

fn is_running(replica: &Replica) -> bool {
    replica.state == WorkloadState::Running
}

/// The changes that bring `replicas` (per node; active ones) toward `spec`, whose template has
/// digest `template`, within the strategy's surge and unavailability:
/// - surplus replicas of the current template go (from the most crowded node, starting ones
///   before running ones, newest first), never taking the running count under
///   `replicas - max_unavailable`;
/// - old replicas go while enough others run (most crowded node first, then oldest);
/// - new ones start while the total stays within `replicas + max_surge`, each on the
///   schedulable candidate with the fewest of this template's replicas, then the fewest of any,
///   then the most free GPUs, then the order given;
/// - once settled, a node holding two more than another that could take one hands one over
///   (started there first, within the surge).
pub fn plan(
    spec: &DeploymentSpec,
    template: &str,
    replicas: &BTreeMap<PeerId, Vec<Replica>>,
    candidates: &[Candidate],
) -> Plan {
    let RolloutStrategy::Rolling {
        max_surge,
        max_unavailable,
    } = spec.strategy;
    let (max_surge, max_unavailable) = (max_surge as usize, max_unavailable as usize);
    let desired = spec.replicas as usize;
    let min_running = desired.saturating_sub(max_unavailable);
    let mut tally = Tally::default();
    let (mut new, mut old) = (Vec::new(), Vec::new());
    for (node, list) in replicas {
        for replica in list.iter().filter(|r| r.state.is_active()) {
            let current = replica.template == template;
            tally.add(*node, current);
            if current {
                new.push((*node, replica));
            } else {
                old.push((*node, replica));
            }
        }
    }
    let mut running = new
        .iter()
        .chain(&old)
        .filter(|(_, r)| is_running(r))
        .count();
    let mut actions = Vec::new();

    // Surplus of the current template.
    while new.len() > desired {
        let index = pick(&new, |(node, r)| {
            (
                std::cmp::Reverse(tally.total(node)),
                is_running(r),
                std::cmp::Reverse(r.created_ms),
            )
        });
        if is_running(new[index].1) && running <= min_running {
            break;
        }
        let (node, replica) = new.remove(index);
        running -= usize::from(is_running(replica));
        tally.remove(node, true);
        actions.push(stop(node, replica));
    }

    // Old replicas, while enough others run.
    let mut kept_old = old.len();
    let mut old_running: Vec<(PeerId, &Replica)> =
        old.iter().filter(|(_, r)| is_running(r)).copied().collect();
    while running > min_running && !old_running.is_empty() {
        let index = pick(&old_running, |(node, r)| {
            (std::cmp::Reverse(tally.total(node)), r.created_ms)
        });
        let (node, replica) = old_running.remove(index);
        running -= 1;
        kept_old -= 1;
        tally.remove(node, false);
        actions.push(stop(node, replica));
    }

    // New ones, within the surge.
    let missing = desired.saturating_sub(new.len());
    let ceiling = if kept_old == 0 {
        desired
    } else {
        desired + max_surge
    };
    let room = ceiling.saturating_sub(new.len() + kept_old).min(missing);
    let gpus = spec.template.gpus.unwrap_or(0) as usize;
    let mut free: Vec<Candidate> = candidates
        .iter()
        .filter(|c| c.schedulable)
        .cloned()
        .collect();
    let mut unplaced = 0;
    for _ in 0..room {
        match place(&mut free, &tally, gpus) {
            Some(node) => {
                tally.add(node, true);
                actions.push(Action::Start { node });
            }
            None => unplaced += 1,
        }
    }

    // Settled but lopsided: hand one replica over to the least loaded node that can take it.
    let settled = actions.is_empty()
        && kept_old == 0
        && new.len() == desired
        && new.iter().all(|(_, r)| is_running(r));
    if settled && max_surge > 0 {
        let crowded = new
            .iter()
            .map(|(node, _)| tally.total(node))
            .max()
            .unwrap_or(0);
        if let Some(node) = place(&mut free, &tally, gpus)
            && tally.total(&node) + 2 <= crowded
        {
            actions.push(Action::Start { node });
        }
    }

    let pending = (unplaced > 0).then(|| {
        let what = match (&spec.gpu_model, gpus) {
            (_, 0) => "room".to_owned(),
            (Some(model), n) => format!("{n} free {model} GPU(s)"),
            (None, n) => format!("{n} free GPU(s)"),
        };
        format!(
            "{unplaced} replica(s) pending: no schedulable member has {what} for another replica"
        )
    });
    Plan { actions, pending }
}

/// Replicas per node: of the current template, and of any.
#[derive(Debug, Default)]
struct Tally {
    current: BTreeMap<PeerId, usize>,
    total: BTreeMap<PeerId, usize>,
}

impl Tally {
    fn add(&mut self, node: PeerId, current: bool) {
        *self.total.entry(node).or_default() += 1;
        if current {
            *self.current.entry(node).or_default() += 1;
        }
    }

    fn remove(&mut self, node: PeerId, current: bool) {
        if let Some(count) = self.total.get_mut(&node) {
            *count = count.saturating_sub(1);
        }
        if current && let Some(count) = self.current.get_mut(&node) {
            *count = count.saturating_sub(1);
        }
    }

    fn total(&self, node: &PeerId) -> usize {
        self.total.get(node).copied().unwrap_or(0)
    }

    fn current(&self, node: &PeerId) -> usize {
        self.current.get(node).copied().unwrap_or(0)
    }
}

/// The index of the item with the lowest `key` (the first of equals).
fn pick<T, K: Ord>(items: &[T], key: impl Fn(&T) -> K) -> usize {
    items
        .iter()
        .enumerate()
        .min_by_key(|(index, item)| (key(item), *index))
        .map_or(0, |(index, _)| index)
}

/// The candidate a new replica goes to, its GPUs taken from `free`.
fn place(free: &mut [Candidate], tally: &Tally, gpus: usize) -> Option<PeerId> {
    let fitting: Vec<usize> = (0..free.len())
        .filter(|i| free[*i].free_gpus >= gpus)
        .collect();
    let best = fitting.into_iter().min_by_key(|i| {
        let c = &free[*i];
        (
            tally.current(&c.node),
            tally.total(&c.node),
            std::cmp::Reverse(c.free_gpus),
            *i,
        )
    })?;
    free[best].free_gpus -= gpus;
    Some(free[best].node)
}

fn stop(node: PeerId, replica: &Replica) -> Action {
    Action::Stop {
        node,
        workload: replica.workload.clone(),
    }
}

#[cfg(test)]
mod tests {
    use claw_api::workload::RunParams;

    use super::*;

    fn spec(replicas: u32, gpus: u32, surge: u32, unavailable: u32) -> DeploymentSpec {
        let template: RunParams =
            serde_json::from_value(serde_json::json!({"image": "busybox", "gpus": gpus})).unwrap();
        DeploymentSpec {
            replicas,
            template,
            gpu_model: None,
            strategy: RolloutStrategy::Rolling {
                max_surge: surge,
                max_unavailable: unavailable,
            },
            paused: false,
        }
    }

    fn replica(id: &str, template: &str, state: WorkloadState, created_ms: u64) -> Replica {
        Replica {
            workload: id.to_owned(),
            revision: 1,
            template: template.to_owned(),
            state,
            created_ms,
        }
    }

    fn nodes(count: usize, free: usize) -> (Vec<PeerId>, Vec<Candidate>) {
        let peers: Vec<PeerId> = (0..count).map(|_| PeerId::random()).collect();
        let candidates = peers
            .iter()
            .map(|node| Candidate {
                node: *node,
                free_gpus: free,
                schedulable: true,
            })
            .collect();
        (peers, candidates)
    }

    fn starts(plan: &Plan) -> Vec<PeerId> {
        plan.actions
            .iter()
            .filter_map(|a| match a {
                Action::Start { node } => Some(*node),
                Action::Stop { .. } => None,
            })
            .collect()
    }

    fn stops(plan: &Plan) -> Vec<String> {
        plan.actions
            .iter()
            .filter_map(|a| match a {
                Action::Stop { workload, .. } => Some(workload.clone()),
                Action::Start { .. } => None,
            })
            .collect()
    }

    #[test]
    fn the_same_peers_rank_the_same_way_and_a_leaving_peer_moves_only_its_objects() {
        let peers: Vec<PeerId> = (0..5).map(|_| PeerId::random()).collect();
        let first = ranking("deployment/web", peers.clone());
        let mut reversed = peers.clone();
        reversed.reverse();
        assert_eq!(ranking("deployment/web", reversed), first);
        let without_winner: Vec<PeerId> =
            peers.iter().copied().filter(|p| *p != first[0]).collect();
        assert_eq!(ranking("deployment/web", without_winner)[0], first[1]);
        let controllers: std::collections::BTreeSet<PeerId> = (0..50)
            .map(|i| ranking(&format!("deployment/d{i}"), peers.clone())[0])
            .collect();
        assert!(controllers.len() > 2, "objects spread over controllers");
    }

    #[test]
    fn replicas_spread_over_nodes_and_wait_when_no_gpu_is_free() {
        let (_, candidates) = nodes(3, 1);
        let plan = plan(&spec(3, 1, 1, 0), "t1", &BTreeMap::new(), &candidates);
        let mut placed = starts(&plan);
        placed.sort();
        placed.dedup();
        assert_eq!(placed.len(), 3, "one replica per node: {plan:?}");
        assert_eq!(plan.pending, None);

        let more = super::plan(&spec(5, 1, 1, 0), "t1", &BTreeMap::new(), &candidates);
        assert_eq!(starts(&more).len(), 3);
        assert!(
            more.pending
                .as_deref()
                .unwrap()
                .starts_with("2 replica(s) pending"),
            "{more:?}"
        );
    }

    #[test]
    fn a_lost_replica_is_replaced_on_another_node() {
        let (peers, mut candidates) = nodes(3, 1);
        let mut replicas = BTreeMap::new();
        replicas.insert(
            peers[0],
            vec![replica("a", "t1", WorkloadState::Running, 1)],
        );
        replicas.insert(
            peers[1],
            vec![replica("b", "t1", WorkloadState::Running, 1)],
        );
        candidates[0].free_gpus = 0;
        candidates[1].free_gpus = 0;
        let plan = plan(&spec(3, 1, 1, 0), "t1", &replicas, &candidates);
        assert_eq!(starts(&plan), [peers[2]]);
        candidates[2].schedulable = false;
        let stuck = super::plan(&spec(3, 1, 1, 0), "t1", &replicas, &candidates);
        assert!(starts(&stuck).is_empty() && stuck.pending.is_some());
    }

    #[test]
    fn a_rolling_update_surges_then_retires_old_replicas_as_new_ones_run() {
        let (peers, candidates) = nodes(2, 4);
        let old = |id: &str, at| replica(id, "old", WorkloadState::Running, at);
        let mut replicas = BTreeMap::new();
        replicas.insert(peers[0], vec![old("a", 1), old("b", 2)]);
        replicas.insert(peers[1], vec![old("c", 3)]);
        // max_surge 1, max_unavailable 0: one new, nothing stopped yet.
        let first = plan(&spec(3, 0, 1, 0), "new", &replicas, &candidates);
        assert_eq!(
            (starts(&first).len(), stops(&first).len()),
            (1, 0),
            "{first:?}"
        );
        // The new one starting: still nothing stopped, nothing more started.
        replicas
            .get_mut(&peers[1])
            .unwrap()
            .push(replica("n1", "new", WorkloadState::Creating, 4));
        let waiting = plan(&spec(3, 0, 1, 0), "new", &replicas, &candidates);
        assert!(waiting.actions.is_empty(), "{waiting:?}");
        // Running: one old goes (the oldest), and its place is taken by another new one.
        replicas.get_mut(&peers[1]).unwrap()[1].state = WorkloadState::Running;
        let next = plan(&spec(3, 0, 1, 0), "new", &replicas, &candidates);
        assert_eq!(stops(&next), ["a"]);
        assert_eq!(starts(&next).len(), 1);
    }

    #[test]
    fn without_surge_an_old_replica_goes_first_and_surplus_new_ones_are_stopped() {
        let (peers, candidates) = nodes(1, 0);
        let mut replicas = BTreeMap::new();
        replicas.insert(
            peers[0],
            vec![
                replica("a", "old", WorkloadState::Running, 1),
                replica("b", "old", WorkloadState::Running, 2),
            ],
        );
        let plan = plan(&spec(2, 0, 0, 1), "new", &replicas, &candidates);
        assert_eq!(stops(&plan), ["a"]);
        assert_eq!(starts(&plan).len(), 1);

        let mut surplus = BTreeMap::new();
        surplus.insert(
            peers[0],
            vec![
                replica("x", "new", WorkloadState::Running, 1),
                replica("y", "new", WorkloadState::Running, 5),
                replica("z", "new", WorkloadState::Creating, 3),
            ],
        );
        let shrink = super::plan(&spec(1, 0, 1, 0), "new", &surplus, &candidates);
        assert_eq!(stops(&shrink), ["z", "y"]);
        assert!(starts(&shrink).is_empty());
    }

    #[test]
    fn a_rollout_ends_spread_and_a_lopsided_deployment_is_evened_out() {
        let (peers, candidates) = nodes(3, 0);
        let mut replicas: BTreeMap<PeerId, Vec<Replica>> = BTreeMap::new();
        for (index, node) in peers.iter().enumerate() {
            replicas.insert(
                *node,
                vec![replica(
                    &format!("old{index}"),
                    "old",
                    WorkloadState::Running,
                    index as u64,
                )],
            );
        }
        // Play the rollout out: each round's starts run at once.
        let mut next_id = 0;
        for _ in 0..10 {
            let round = plan(&spec(3, 0, 1, 0), "new", &replicas, &candidates);
            for action in round.actions {
                match action {
                    Action::Start { node } => {
                        next_id += 1;
                        replicas.entry(node).or_default().push(replica(
                            &format!("new{next_id}"),
                            "new",
                            WorkloadState::Running,
                            100 + next_id,
                        ));
                    }
                    Action::Stop { node, workload } => {
                        replicas
                            .get_mut(&node)
                            .unwrap()
                            .retain(|r| r.workload != workload);
                    }
                }
            }
        }
        for node in &peers {
            let list = &replicas[node];
            assert_eq!(
                list.len(),
                1,
                "one replica per node at the end: {replicas:?}"
            );
            assert_eq!(list[0].template, "new");
        }

        let mut lopsided = BTreeMap::new();
        lopsided.insert(
            peers[0],
            vec![
                replica("a", "new", WorkloadState::Running, 1),
                replica("b", "new", WorkloadState::Running, 2),
            ],
        );
        lopsided.insert(
            peers[1],
            vec![replica("c", "new", WorkloadState::Running, 3)],
        );
        let even = plan(&spec(3, 0, 1, 0), "new", &lopsided, &candidates);
        assert_eq!(starts(&even), [peers[2]], "{even:?}");
    }
}
