//! Deployment controllers across `clawnode run` processes on the real Docker Engine: a
//! deployment's replicas spread over the fleet, come back elsewhere when a node is killed with
//! `-9`, are trimmed when it returns, roll to a new template even when the controller itself is
//! killed halfway, cannot be touched by a member that does not control the deployment, and go
//! when it is deleted.
//!
//! Needs the Docker Engine and the locally built test image (`scripts/test.sh` prepares both).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use claw_tests::{Clawnode, RunningNode, eventually, remove_node_containers, required_part};
use clawnode::controller::plan::ranking;
use serde_json::{Value, json};

/// A member process on its own data directory; its containers are removed when it is dropped.
struct Member {
    cli: Clawnode,
    running: Option<RunningNode>,
    peer_id: String,
    _dir: tempfile::TempDir,
}

impl Member {
    /// An initialised member that takes fleet objects signed by `operator` (itself when
    /// `None`), announcing every second.
    fn new(operator: Option<&str>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let cli = Clawnode::new(&dir.path().join("node"));
        cli.init_with_simulated_gpus(1);
        let peer_id = cli.ok(&["--json", "identity"]).json()["peer_id"]
            .as_str()
            .expect("peer id")
            .to_owned();
        cli.ok(&["configure", "--operator", operator.unwrap_or(&peer_id)]);
        let path = cli.data_dir().join("config.toml");
        let text = std::fs::read_to_string(&path).expect("config");
        let text = text
            .replace("announce_interval_secs = 10", "announce_interval_secs = 1")
            .replace(
                "allow_colocated_peers = false",
                "allow_colocated_peers = true",
            );
        std::fs::write(&path, text).expect("config rewritten");
        Self {
            cli,
            running: None,
            peer_id,
            _dir: dir,
        }
    }

    fn start(&mut self, bootstrap: &[String]) {
        self.running = Some(RunningNode::start(&self.cli, bootstrap));
    }

    fn kill(&mut self) {
        if let Some(running) = self.running.take() {
            running.kill();
        }
    }

    fn alive(&self) -> bool {
        self.running.is_some()
    }

    /// Addresses others can join this member on, while it runs.
    fn joinable(&self) -> Vec<String> {
        self.running
            .as_ref()
            .map(|r| r.listen_addrs.clone())
            .unwrap_or_default()
    }

    /// Whether this member's fleet view holds `peer`.
    fn sees(&self, peer: &str) -> bool {
        let fleet = self.cli.run(&["fleet", "--json"]);
        fleet.success && fleet.stdout.contains(peer)
    }

    fn invoke(&self, command: &str, params: &Value) -> Result<Value, String> {
        self.cli.invoke(None, command, params)
    }

    fn status(&self) -> Option<Value> {
        self.invoke("deploy.status", &json!({"name": "web"})).ok()
    }

    /// This member's replicas of `web` of `revision`, in any state.
    fn replicas_of(&self, revision: u64) -> usize {
        let labels = json!({"clawbernetes-deployment": "web", "clawbernetes-revision": revision.to_string()});
        self.invoke("workload.list", &json!({"labels": labels, "all": true}))
            .ok()
            .and_then(|list| list["workloads"].as_array().map(Vec::len))
            .unwrap_or(0)
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
        remove_node_containers(&self.peer_id);
    }
}

/// A status's replicas: node → how many, and the revisions they run.
fn placement(status: &Value) -> (BTreeMap<String, usize>, BTreeSet<u64>) {
    let mut nodes = BTreeMap::new();
    let mut revisions = BTreeSet::new();
    for replica in status["replicas"].as_array().into_iter().flatten() {
        *nodes
            .entry(replica["node"].as_str().unwrap_or_default().to_owned())
            .or_insert(0) += 1;
        revisions.extend(replica["revision"].as_u64());
    }
    (nodes, revisions)
}

/// Waits until `member`'s status shows `ready` replicas of `revision` running, no other, on
/// distinct live nodes with none unreachable; returns the status and how long that took.
fn settled(
    member: &Member,
    revision: u64,
    ready: u64,
    limit: Duration,
    what: &str,
) -> (Value, Duration) {
    let started = Instant::now();
    let mut last = Value::Null;
    loop {
        if let Some(status) = member.status() {
            let (nodes, revisions) = placement(&status);
            let count: usize = nodes.values().sum();
            if status["ready"] == json!(ready)
                && count == ready as usize
                && nodes.len() == ready as usize
                && revisions == BTreeSet::from([revision])
                && status["unreachable"].as_array().is_some_and(Vec::is_empty)
            {
                return (status, started.elapsed());
            }
            last = status;
        }
        assert!(
            started.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}; last status: {last:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn test_image() -> Option<String> {
    required_part(
        "CLAW_TEST_IMAGE",
        "the Docker Engine and the local busybox test image",
    )
}

#[test]
fn a_deployment_survives_a_killed_node_and_a_killed_controller_and_refuses_other_members() {
    let Some(image) = test_image() else { return };
    let mut operator = Member::new(None);
    operator.start(&[]);
    let seed = operator
        .running
        .as_ref()
        .map(|r| r.listen_addrs.clone())
        .expect("addresses");
    let operator_id = operator.peer_id.clone();
    let mut members = vec![operator];
    for _ in 0..3 {
        let mut member = Member::new(Some(&operator_id));
        member.start(&seed);
        members.push(member);
    }

    let spec = json!({
        "replicas": 3,
        "template": {
            "image": image,
            "command": ["sh", "-c", "trap 'exit 0' TERM; sleep 600 & wait"],
            "env": {"V": "1"},
        },
        "strategy": {"type": "rolling", "max_surge": 1, "max_unavailable": 0},
    });
    eventually(
        Duration::from_secs(30),
        "the deployment to be created",
        || {
            members[0]
                .invoke("deploy.create", &json!({"name": "web", "spec": spec}))
                .ok()
        },
    );
    let (status, took) = settled(
        &members[0],
        1,
        3,
        Duration::from_secs(90),
        "3 replicas on 3 nodes",
    );
    eprintln!("3 replicas running on 3 nodes {took:?} after create");

    // Kill a node that runs a replica and does not control the deployment.
    let controller = status["controller"]
        .as_str()
        .expect("a controller")
        .to_owned();
    let (nodes, _) = placement(&status);
    let victim = members
        .iter()
        .position(|m| m.peer_id != controller && nodes.contains_key(&m.peer_id))
        .expect("a replica outside the controller");
    let witness = members
        .iter()
        .position(|m| m.peer_id != controller && m.peer_id != members[victim].peer_id)
        .expect("a third member");
    members[victim].kill();
    let (status, took) = settled(
        &members[witness],
        1,
        3,
        Duration::from_secs(60),
        "the lost replica to run on another node",
    );
    eprintln!("node killed: its replica ran elsewhere after {took:?}");
    let (nodes, _) = placement(&status);
    assert!(!nodes.contains_key(&members[victim].peer_id), "{status}");

    // The node comes back with its container still running (a kill leaves Docker's
    // containers be): it is adopted, and the surplus replica goes.
    let join = members[witness].joinable();
    members[victim].start(&join);
    let victim_id = members[victim].peer_id.clone();
    eventually(
        Duration::from_secs(60),
        "the returning node in the fleet",
        || members[witness].sees(&victim_id).then_some(()),
    );
    settled(
        &members[witness],
        1,
        3,
        Duration::from_secs(60),
        "3 replicas again once the surplus one stopped",
    );

    // A member that is neither the controller nor next in line cannot act for the deployment.
    let peers = members.iter().map(|m| m.peer_id.parse().expect("peer id"));
    let ranked: Vec<String> = ranking("deployment/web", peers)
        .iter()
        .map(ToString::to_string)
        .collect();
    let outsider = members
        .iter()
        .find(|m| m.peer_id == ranked[3])
        .expect("the last-ranked member");
    let target = members
        .iter()
        .find(|m| m.peer_id != outsider.peer_id)
        .expect("another member");
    let fenced = outsider
        .cli
        .invoke(
            Some(&target.peer_id),
            "deploy.replicas",
            &json!({"name": "web", "epoch": 1_000_000}),
        )
        .expect_err("an outsider cannot raise the fence");
    assert!(fenced.contains("UNAUTHORIZED"), "{fenced}");
    let started = outsider.cli.invoke(
        Some(&target.peer_id),
        "deploy.replica.start",
        &json!({"name": "web", "revision": 1, "epoch": 1_000_000}),
    );
    assert!(
        started.as_ref().is_err_and(|e| e.contains("UNAUTHORIZED")),
        "{started:?}"
    );
    let report = target
        .invoke("deploy.replicas", &json!({"name": "web"}))
        .expect("the target's own report");
    assert!(
        report["fence"]["epoch"]
            .as_u64()
            .is_some_and(|e| e < 1_000_000),
        "{report}"
    );

    // A new template rolls out; the controller is killed as soon as the rollout has begun,
    // and the next member finishes it.
    let status = members[witness].status().expect("status");
    let controller = status["controller"]
        .as_str()
        .expect("controller")
        .to_owned();
    let updater = members
        .iter()
        .position(|m| m.peer_id == operator_id)
        .expect("the operator");
    members[updater]
        .invoke("deploy.update", &json!({"name": "web", "env": {"V": "2"}}))
        .expect("update");
    let controller_index = members
        .iter()
        .position(|m| m.peer_id == controller)
        .expect("controller member");
    let observer = members
        .iter()
        .position(|m| m.peer_id != controller && m.alive())
        .expect("an observer");
    eventually(Duration::from_secs(60), "the rollout to begin", || {
        let (_, revisions) = placement(&members[observer].status()?);
        revisions.contains(&2).then_some(())
    });
    members[controller_index].kill();
    let (status, took) = settled(
        &members[observer],
        2,
        3,
        Duration::from_secs(90),
        "the rollout to finish under the next controller",
    );
    eprintln!("controller killed mid-rollout: finished {took:?} later");
    assert_ne!(status["controller"].as_str(), Some(controller.as_str()));
    let started: usize = members
        .iter()
        .filter(|m| m.alive())
        .map(|m| m.replicas_of(2))
        .sum();
    assert_eq!(
        started, 3,
        "no replica of the new revision was started twice"
    );

    // The old controller returns (with its old replica's container): the deployment settles
    // on the new template again.
    let join = members[observer].joinable();
    members[controller_index].start(&join);
    eventually(
        Duration::from_secs(60),
        "the old controller in the fleet",
        || members[observer].sees(&controller).then_some(()),
    );
    settled(
        &members[observer],
        2,
        3,
        Duration::from_secs(60),
        "the returning controller's old replica to stop",
    );

    // Deleted: every replica goes.
    members[updater]
        .invoke("deploy.delete", &json!({"name": "web"}))
        .expect("delete");
    eventually(Duration::from_secs(60), "every replica to stop", || {
        members
            .iter()
            .filter(|m| m.alive())
            .all(|m| {
                m.invoke(
                    "workload.list",
                    &json!({"labels": {"clawbernetes-deployment": "web"}, "all": false}),
                )
                .ok()
                .and_then(|l| l["workloads"].as_array().map(Vec::is_empty))
                .unwrap_or(false)
            })
            .then_some(())
    });
}
