//! What a deployment's controller decides, as pure functions: who controls an object
//! ([`ranking`]), and which replicas to start and stop this round ([`plan`]) from what the nodes
//! reported and what the fleet view says they have free.

use std::collections::BTreeMap;

use claw_api::deploy::{DeploymentSpec, Replica, ReplicaHealth, RolloutStrategy};
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

/// Digest of what a replica runs (its template, GPU model and the secret revisions it needs):
/// revisions that change only the replica count or the pause keep their replicas.
pub fn template_digest(spec: &DeploymentSpec) -> String {
    let text = if spec.secret_revisions.is_empty() {
        serde_json::to_string(&(&spec.template, &spec.gpu_model))
    } else {
        serde_json::to_string(&(&spec.template, &spec.gpu_model, &spec.secret_revisions))
    }
    .unwrap_or_default();
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
    /// Start a replica of `revision`'s template on `node`.
    Start {
        /// Where.
        node: PeerId,
        /// Which revision's template.
        revision: u64,
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

/// A template replicas should run, and how many.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    /// The template's digest ([`template_digest`]).
    pub template: String,
    /// The revision to start it from.
    pub revision: u64,
    /// How many replicas should run it.
    pub count: usize,
}

/// What a deployment should look like now: the revision rolled to (and, for a canary, the
/// stable revision beside it), within the surge and unavailability allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Goal {
    /// The revision rolled to.
    pub current: Share,
    /// The stable revision a canary keeps beside it.
    pub stable: Option<Share>,
    /// Replicas that may run above the total during a change.
    pub max_surge: usize,
    /// Replicas that may be unavailable below the total during a change.
    pub max_unavailable: usize,
    /// GPUs each replica takes.
    pub gpus: usize,
    /// What those GPUs must be, for the pending note.
    pub gpu_model: Option<String>,
}

impl Goal {
    /// The goal of `spec` at `revision`: the share of replicas on it (for a canary at a step,
    /// the step's share, the rest on `stable`), and the strategy's limits. `stable` is the
    /// revision a canary keeps beside the new one (the newest earlier one with another
    /// template); without one, a canary rolls like a rolling update.
    pub fn of(spec: &DeploymentSpec, revision: u64, stable: Option<(u64, String)>) -> Self {
        let replicas = spec.replicas as usize;
        let mut goal = Self {
            current: Share {
                template: template_digest(spec),
                revision,
                count: replicas,
            },
            stable: None,
            max_surge: 1,
            max_unavailable: 0,
            gpus: spec.template.gpus.unwrap_or(0) as usize,
            gpu_model: spec.gpu_model.clone(),
        };
        match &spec.strategy {
            RolloutStrategy::Rolling {
                max_surge,
                max_unavailable,
            } => {
                goal.max_surge = *max_surge as usize;
                goal.max_unavailable = *max_unavailable as usize;
            }
            RolloutStrategy::BlueGreen => goal.max_surge = replicas.max(1),
            RolloutStrategy::Canary { steps, step, .. } => {
                if let (Some(percent), Some((revision, template))) =
                    (steps.get(*step as usize), stable)
                {
                    let canaries = canary_replicas(replicas, *percent);
                    goal.current.count = canaries;
                    goal.stable = Some(Share {
                        template,
                        revision,
                        count: replicas - canaries,
                    });
                }
            }
        }
        goal
    }

    fn total(&self) -> usize {
        self.current.count + self.stable.as_ref().map_or(0, |s| s.count)
    }
}

/// How many of `replicas` run the new revision at a canary step of `percent`: that share,
/// rounded up, at least one (none of none).
pub fn canary_replicas(replicas: usize, percent: u32) -> usize {
    (replicas * percent as usize)
        .div_ceil(100)
        .clamp(replicas.min(1), replicas)
}

/// Whether a replica serves: running, and healthy where it is checked.
pub fn is_available(replica: &Replica) -> bool {
    replica.state == WorkloadState::Running
        && replica.health.is_none_or(|h| h == ReplicaHealth::Healthy)
}

/// The changes that bring `replicas` (per node; active ones) toward `goal`:
/// - surplus replicas of a wanted template go (from the most crowded node, unavailable ones
///   before available ones, newest first), never taking the available count under
///   `total - max_unavailable`;
/// - replicas of other templates go: unavailable ones at once, available ones while enough
///   others serve (most crowded node first, then oldest);
/// - wanted replicas start while the total stays within `total + max_surge` (the current
///   template first), each on the schedulable candidate with the fewest of that template, then
///   the fewest of any, then the most free GPUs, then the order given;
/// - once settled, a node holding two more than another that could take one hands one over
///   (started there first, within the surge).
pub fn plan(
    goal: &Goal,
    replicas: &BTreeMap<PeerId, Vec<Replica>>,
    candidates: &[Candidate],
) -> Plan {
    let shares: Vec<&Share> = std::iter::once(&goal.current).chain(&goal.stable).collect();
    let min_available = goal.total().saturating_sub(goal.max_unavailable);
    let mut tally = Tally::default();
    let mut wanted: Vec<Vec<(PeerId, &Replica)>> = vec![Vec::new(); shares.len()];
    let mut others = Vec::new();
    for (node, list) in replicas {
        for replica in list.iter().filter(|r| r.state.is_active()) {
            let share = shares.iter().position(|s| s.template == replica.template);
            tally.add(*node, share == Some(0));
            match share {
                Some(index) => wanted[index].push((*node, replica)),
                None => others.push((*node, replica)),
            }
        }
    }
    let mut available = wanted
        .iter()
        .flatten()
        .chain(&others)
        .filter(|(_, r)| is_available(r))
        .count();
    let mut actions = Vec::new();

    // Replicas of a wanted template that turned unhealthy are replaced.
    for (index, group) in wanted.iter_mut().enumerate() {
        group.retain(|(node, replica)| {
            let sick = replica.state == WorkloadState::Running
                && replica.health == Some(ReplicaHealth::Unhealthy);
            if sick {
                tally.remove(*node, index == 0);
                actions.push(stop(*node, replica));
            }
            !sick
        });
    }

    // Surplus of a wanted template.
    for (index, share) in shares.iter().enumerate() {
        let group = &mut wanted[index];
        while group.len() > share.count {
            let pick_index = pick(group, |(node, r)| {
                (
                    std::cmp::Reverse(tally.total(node)),
                    is_available(r),
                    std::cmp::Reverse(r.created_ms),
                )
            });
            let (node, replica) = group[pick_index];
            if is_available(replica) && available <= min_available {
                break;
            }
            group.remove(pick_index);
            available -= usize::from(is_available(replica));
            tally.remove(node, index == 0);
            actions.push(stop(node, replica));
        }
    }

    // Other templates: unavailable ones go at once (those still starting are left to start:
    // a stop would be refused meanwhile), available ones while enough others serve.
    let mut kept_others = 0;
    let mut serving = Vec::new();
    for (node, replica) in &others {
        if is_available(replica) {
            serving.push((*node, *replica));
        } else if replica.state == WorkloadState::Running {
            tally.remove(*node, false);
            actions.push(stop(*node, replica));
        } else {
            kept_others += 1;
        }
    }
    while available > min_available && !serving.is_empty() {
        let index = pick(&serving, |(node, r)| {
            (std::cmp::Reverse(tally.total(node)), r.created_ms)
        });
        let (node, replica) = serving.remove(index);
        available -= 1;
        tally.remove(node, false);
        actions.push(stop(node, replica));
    }
    kept_others += serving.len();

    // Wanted replicas, within the surge.
    let present: usize = wanted.iter().map(Vec::len).sum::<usize>() + kept_others;
    let changing = kept_others > 0
        || shares
            .iter()
            .zip(&wanted)
            .any(|(share, group)| group.len() > share.count);
    let ceiling = if changing {
        goal.total() + goal.max_surge
    } else {
        goal.total()
    };
    let mut room = ceiling.saturating_sub(present);
    let mut free: Vec<Candidate> = candidates
        .iter()
        .filter(|c| c.schedulable)
        .cloned()
        .collect();
    let mut unplaced = 0;
    for (index, share) in shares.iter().enumerate() {
        let missing = share.count.saturating_sub(wanted[index].len());
        for _ in 0..missing {
            if room == 0 {
                break;
            }
            room -= 1;
            match place(&mut free, &tally, goal.gpus) {
                Some(node) => {
                    tally.add(node, index == 0);
                    actions.push(Action::Start {
                        node,
                        revision: share.revision,
                    });
                }
                None => unplaced += 1,
            }
        }
    }

    // Settled but lopsided: hand one replica over to the least loaded node that can take it.
    let settled = actions.is_empty()
        && others.is_empty()
        && goal.stable.is_none()
        && wanted[0].len() == goal.current.count
        && wanted[0].iter().all(|(_, r)| is_available(r));
    if settled && goal.max_surge > 0 {
        let crowded = wanted[0]
            .iter()
            .map(|(node, _)| tally.total(node))
            .max()
            .unwrap_or(0);
        if let Some(node) = place(&mut free, &tally, goal.gpus)
            && tally.total(&node) + 2 <= crowded
        {
            actions.push(Action::Start {
                node,
                revision: goal.current.revision,
            });
        }
    }

    let pending = (unplaced > 0).then(|| {
        let what = match (&goal.gpu_model, goal.gpus) {
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
    use super::*;

    /// The goal of `replicas` replicas of template `new` (revision 1) taking `gpus` GPUs.
    fn goal(replicas: usize, gpus: usize, surge: usize, unavailable: usize) -> Goal {
        Goal {
            current: Share {
                template: "new".to_owned(),
                revision: 1,
                count: replicas,
            },
            stable: None,
            max_surge: surge,
            max_unavailable: unavailable,
            gpus,
            gpu_model: None,
        }
    }

    fn replica(id: &str, template: &str, state: WorkloadState, created_ms: u64) -> Replica {
        Replica {
            workload: id.to_owned(),
            revision: 1,
            template: template.to_owned(),
            state,
            health: None,
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
                Action::Start { node, .. } => Some(*node),
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
        let plan = plan(&goal(3, 1, 1, 0), &BTreeMap::new(), &candidates);
        let mut placed = starts(&plan);
        placed.sort();
        placed.dedup();
        assert_eq!(placed.len(), 3, "one replica per node: {plan:?}");
        assert_eq!(plan.pending, None);

        let more = super::plan(&goal(5, 1, 1, 0), &BTreeMap::new(), &candidates);
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
            vec![replica("a", "new", WorkloadState::Running, 1)],
        );
        replicas.insert(
            peers[1],
            vec![replica("b", "new", WorkloadState::Running, 1)],
        );
        candidates[0].free_gpus = 0;
        candidates[1].free_gpus = 0;
        let plan = plan(&goal(3, 1, 1, 0), &replicas, &candidates);
        assert_eq!(starts(&plan), [peers[2]]);
        candidates[2].schedulable = false;
        let stuck = super::plan(&goal(3, 1, 1, 0), &replicas, &candidates);
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
        let first = plan(&goal(3, 0, 1, 0), &replicas, &candidates);
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
        let waiting = plan(&goal(3, 0, 1, 0), &replicas, &candidates);
        assert!(waiting.actions.is_empty(), "{waiting:?}");
        // Running: one old goes (the oldest), and its place is taken by another new one.
        replicas.get_mut(&peers[1]).unwrap()[1].state = WorkloadState::Running;
        let next = plan(&goal(3, 0, 1, 0), &replicas, &candidates);
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
        let plan = plan(&goal(2, 0, 0, 1), &replicas, &candidates);
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
        let shrink = super::plan(&goal(1, 0, 1, 0), &surplus, &candidates);
        assert_eq!(stops(&shrink), ["z", "y"]);
        assert!(starts(&shrink).is_empty());
    }

    #[test]
    fn a_canary_runs_its_share_beside_the_stable_revision_and_swaps_one_at_a_time() {
        let spec: DeploymentSpec = serde_json::from_value(serde_json::json!({
            "replicas": 4,
            "template": {"image": "busybox", "env": {"V": "2"}},
            "strategy": {"type": "canary", "steps": [25, 50]},
        }))
        .unwrap();
        let goal = Goal::of(&spec, 2, Some((1, "old".to_owned())));
        assert_eq!(
            (goal.current.count, goal.stable.as_ref().unwrap().count),
            (1, 3)
        );
        let mut promoted = spec.clone();
        promoted.strategy = RolloutStrategy::Canary {
            analysis: None,
            steps: vec![25, 50],
            step: 2,
        };
        let all = Goal::of(&promoted, 3, Some((1, "old".to_owned())));
        assert_eq!(
            (all.current.count, all.stable),
            (4, None),
            "promoted past the last step"
        );
        assert_eq!(
            Goal::of(&spec, 2, None).current.count,
            4,
            "no stable revision: roll"
        );

        let (peers, candidates) = nodes(4, 0);
        let template = goal.current.template.clone();
        let mut replicas: BTreeMap<PeerId, Vec<Replica>> = BTreeMap::new();
        for (index, node) in peers.iter().enumerate() {
            replicas.insert(
                *node,
                vec![replica(
                    &format!("s{index}"),
                    "old",
                    WorkloadState::Running,
                    index as u64,
                )],
            );
        }
        let first = plan(&goal, &replicas, &candidates);
        assert!(
            stops(&first).is_empty(),
            "nothing stops before the canary serves: {first:?}"
        );
        assert_eq!(
            first.actions,
            [Action::Start {
                node: starts(&first)[0],
                revision: 2
            }]
        );
        let canary_node = starts(&first)[0];
        let mut canary = replica("c1", &template, WorkloadState::Running, 10);
        canary.health = Some(ReplicaHealth::Starting);
        replicas.get_mut(&canary_node).unwrap().push(canary);
        let waiting = plan(&goal, &replicas, &candidates);
        assert!(
            waiting.actions.is_empty(),
            "a canary still starting is not available: {waiting:?}"
        );
        replicas.get_mut(&canary_node).unwrap()[1].health = Some(ReplicaHealth::Healthy);
        let swap = plan(&goal, &replicas, &candidates);
        let stopped = stops(&swap);
        assert_eq!(stopped.len(), 1, "{swap:?}");
        assert_eq!(
            replicas[&canary_node][0].workload, stopped[0],
            "the stable replica beside the canary goes"
        );
        assert!(starts(&swap).is_empty());
    }

    #[test]
    fn an_unhealthy_replica_is_replaced_and_every_old_one_stays() {
        let (peers, candidates) = nodes(2, 0);
        let mut replicas: BTreeMap<PeerId, Vec<Replica>> = BTreeMap::new();
        let mut sick = replica("n1", "new", WorkloadState::Running, 5);
        sick.health = Some(ReplicaHealth::Unhealthy);
        replicas.insert(
            peers[0],
            vec![replica("a", "old", WorkloadState::Running, 1), sick],
        );
        replicas.insert(
            peers[1],
            vec![replica("b", "old", WorkloadState::Running, 2)],
        );
        let plan = plan(&goal(2, 0, 1, 0), &replicas, &candidates);
        assert_eq!(
            stops(&plan),
            ["n1"],
            "the sick one is replaced, the old ones stay: {plan:?}"
        );
        assert_eq!(
            starts(&plan).len(),
            1,
            "a replacement, within the surge: {plan:?}"
        );
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
            let round = plan(&goal(3, 0, 1, 0), &replicas, &candidates);
            for action in round.actions {
                match action {
                    Action::Start { node, .. } => {
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
        let even = plan(&goal(3, 0, 1, 0), &lopsided, &candidates);
        assert_eq!(starts(&even), [peers[2]], "{even:?}");
    }
}
