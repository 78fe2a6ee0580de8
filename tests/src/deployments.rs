//! A fleet of `clawnode run` processes for the deployment tests and benches: members that take
//! fleet objects from one operator, and what `deploy.status` says about a deployment.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{Clawnode, RunningNode, remove_node_containers};

/// A member process on its own data directory; its containers are removed when it is dropped.
#[derive(Debug)]
pub struct Member {
    /// The CLI on its data directory.
    pub cli: Clawnode,
    running: Option<RunningNode>,
    /// Its peer id.
    pub peer_id: String,
    _dir: tempfile::TempDir,
}

impl Member {
    /// An initialised member that takes fleet objects signed by `operator` (itself when
    /// `None`), announcing every second.
    pub fn new(operator: Option<&str>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let cli = Clawnode::new(&dir.path().join("node"));
        cli.init_with_simulated_gpus(1);
        let peer_id = cli.ok(&["--json", "identity"]).json()["peer_id"]
            .as_str()
            .expect("peer id")
            .to_owned();
        cli.ok(&["configure", "--operator", operator.unwrap_or(&peer_id)]);
        crate::announce_every_second(&cli);
        Self {
            cli,
            running: None,
            peer_id,
            _dir: dir,
        }
    }

    /// `size` running members: the first is the operator, the others take its objects and
    /// join through it.
    pub fn fleet(size: usize) -> Vec<Self> {
        let mut operator = Self::new(None);
        operator.start(&[]);
        let seed = operator.joinable();
        let operator_id = operator.peer_id.clone();
        let mut members = vec![operator];
        for _ in 1..size {
            let mut member = Self::new(Some(&operator_id));
            member.start(&seed);
            members.push(member);
        }
        members
    }

    /// Starts `clawnode run`, joining through `bootstrap`.
    pub fn start(&mut self, bootstrap: &[String]) {
        self.running = Some(RunningNode::start(&self.cli, bootstrap));
    }

    /// Starts `clawnode run`, joining through `bootstrap`, logging down to `debug` into `log`.
    pub fn start_logged(&mut self, bootstrap: &[String], log: &std::path::Path) {
        self.running = Some(RunningNode::start_logged(&self.cli, bootstrap, log));
    }

    /// Kills the process with SIGKILL (its containers stay, as after a crash).
    pub fn kill(&mut self) {
        if let Some(running) = self.running.take() {
            running.kill();
        }
    }

    /// Whether its process runs.
    pub fn alive(&self) -> bool {
        self.running.is_some()
    }

    /// Addresses others can join this member on, while it runs.
    pub fn joinable(&self) -> Vec<String> {
        self.running
            .as_ref()
            .map(|r| r.listen_addrs.clone())
            .unwrap_or_default()
    }

    /// Whether this member's fleet view holds `peer`.
    pub fn sees(&self, peer: &str) -> bool {
        let fleet = self.cli.run(&["fleet", "--json"]);
        fleet.success && fleet.stdout.contains(peer)
    }

    /// Invokes `command` on this member through its CLI: the answer, or the error text.
    pub fn invoke(&self, command: &str, params: &Value) -> Result<Value, String> {
        self.cli.invoke(None, command, params)
    }

    /// `deploy.status` of deployment `name` on this member, when it answers.
    pub fn status(&self, name: &str) -> Option<Value> {
        self.invoke("deploy.status", &json!({ "name": name })).ok()
    }

    /// This member's replicas of deployment `name` at `revision`, in any state.
    pub fn replicas_of(&self, name: &str, revision: u64) -> usize {
        let labels =
            json!({"clawbernetes-deployment": name, "clawbernetes-revision": revision.to_string()});
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
        crate::unmount_under(self.cli.data_dir());
    }
}

impl Member {
    /// This member's replicas of deployment `name` that are starting or running.
    pub fn active_replicas(&self, name: &str) -> usize {
        let labels = json!({ "clawbernetes-deployment": name });
        self.invoke("workload.list", &json!({"labels": labels, "all": false}))
            .ok()
            .and_then(|list| list["workloads"].as_array().map(Vec::len))
            .unwrap_or(usize::MAX)
    }
}

/// The live member ranked last to control the object under `key` (`deployment/web`,
/// `job/batch`: neither its controller nor next in line, in a fleet of three or more), and
/// another live member to aim at.
pub fn outsider_and_target<'a>(members: &'a [Member], key: &str) -> (&'a Member, &'a Member) {
    let live: Vec<&Member> = members.iter().filter(|m| m.alive()).collect();
    let peers = live.iter().map(|m| m.peer_id.parse().expect("peer id"));
    let last = clawnode::controller::plan::ranking(key, peers)
        .last()
        .map(ToString::to_string)
        .expect("live members");
    let outsider = live
        .iter()
        .find(|m| m.peer_id == last)
        .expect("the last-ranked member");
    let target = live
        .iter()
        .find(|m| m.peer_id != last)
        .expect("another member");
    (outsider, target)
}

/// A status's replicas: node → how many, and the revisions they run.
pub fn placement(status: &Value) -> (BTreeMap<String, usize>, BTreeSet<u64>) {
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

/// Waits until `member`'s status of deployment `name` shows `ready` replicas of `revision`
/// running, no other, on distinct live nodes with none unreachable; returns the status and how
/// long that took.
pub fn settled(
    member: &Member,
    name: &str,
    revision: u64,
    ready: u64,
    limit: Duration,
    what: &str,
) -> (Value, Duration) {
    let started = Instant::now();
    let mut last = Value::Null;
    loop {
        if let Some(status) = member.status(name) {
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
