//! Five `clawnode run` processes on loopback form a mesh; `clawnode fleet` on one lists all five;
//! a node killed with SIGKILL leaves the view after its expiry; SIGTERM stops a node cleanly.

use std::time::{Duration, Instant};

use claw_tests::{Clawnode, RunningNode, announce_every_second, eventually};

fn fleet_peers(node: &Clawnode) -> Option<Vec<String>> {
    let finished = node.run(&["fleet", "--json"]);
    if !finished.success {
        return None;
    }
    let mut peers: Vec<String> = finished.json()["members"]
        .as_array()?
        .iter()
        .filter_map(|m| m["peer_id"].as_str().map(str::to_owned))
        .collect();
    peers.sort();
    Some(peers)
}

#[test]
fn five_processes_form_a_fleet_and_a_killed_one_leaves_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let nodes: Vec<Clawnode> = (0..5)
        .map(|i| {
            let node = Clawnode::new(&dir.path().join(format!("node{i}")));
            let gpu = format!("NVIDIA L4:{}:23034", i + 1);
            node.ok(&["init", "--simulated-gpu", &gpu]);
            announce_every_second(&node);
            node
        })
        .collect();
    let first = RunningNode::start(&nodes[0], &[]);
    let mut running = vec![first];
    for node in &nodes[1..] {
        let seed = running[0].listen_addrs.clone();
        running.push(RunningNode::start(node, &seed));
    }
    let mut expected: Vec<String> = running.iter().map(|r| r.peer_id.clone()).collect();
    expected.sort();

    let started = Instant::now();
    for node in [&nodes[0], &nodes[3]] {
        eventually(
            Duration::from_secs(30),
            "all five nodes in the fleet",
            || fleet_peers(node).filter(|peers| peers == &expected),
        );
    }
    eprintln!("5 processes converged in {:?}", started.elapsed());

    let table = nodes[3].ok(&["fleet"]).stdout;
    assert!(table.contains("5 node(s)"), "{table}");
    assert!(table.contains("NVIDIA L4"), "{table}");
    let status = nodes[3].ok(&["fleet", "--json"]).json()["status"].clone();
    assert_eq!(status["gpus"], 1 + 2 + 3 + 4 + 5);
    assert_eq!(status["simulated_gpus"], 15);

    // A command through the mesh: node 3 asks node 1 for its GPUs.
    let remote = nodes[3]
        .ok(&[
            "invoke",
            "gpu.list",
            "--node",
            &running[1].peer_id,
            "--json",
        ])
        .json();
    assert_eq!(remote["gpus"].as_array().map(Vec::len), Some(2));
    // Node 1 audited the call, naming node 3 as the caller.
    let audit = nodes[1].ok(&["audit", "--json"]).json();
    let records = audit["records"].as_array().expect("records");
    assert!(
        records.iter().any(|r| r["command"] == "gpu.list"
            && r["caller"] == running[3].peer_id.as_str()
            && r["outcome"] == "ok"),
        "{audit}"
    );
    // A walk of the fleet's DHT from node 3 towards node 1 finds node 1 first.
    let lookup = nodes[3]
        .ok(&[
            "invoke",
            "network.lookup",
            "--params",
            &serde_json::json!({ "peer": running[1].peer_id }).to_string(),
            "--json",
        ])
        .json();
    let closest: Vec<&str> = lookup["closest"]
        .as_array()
        .expect("closest peers")
        .iter()
        .filter_map(|p| p.as_str())
        .collect();
    assert_eq!(
        closest.first(),
        Some(&running[1].peer_id.as_str()),
        "{lookup}"
    );
    assert!(
        closest.len() <= 4 && !closest.contains(&running[3].peer_id.as_str()),
        "the walk answers other fleet members only: {lookup}"
    );
    assert!(lookup["took_ms"].as_u64().is_some(), "{lookup}");
    let refused = nodes[3].fails(&[
        "invoke",
        "network.lookup",
        "--params",
        r#"{"peer":"not-a-peer-id"}"#,
    ]);
    assert!(
        refused.stderr.contains("INVALID_PARAMS") && refused.stderr.contains("not a peer id"),
        "{}",
        refused.stderr
    );

    let refused = nodes[1].fails(&["audit", "--limit", "0"]);
    assert!(
        refused.stderr.contains("INVALID_PARAMS"),
        "{}",
        refused.stderr
    );

    // The control API refuses a wrong token.
    let token_path = nodes[4].data_dir().join("control.token");
    let token = std::fs::read(&token_path).expect("token written by run");
    std::fs::write(&token_path, "0".repeat(token.len())).expect("token replaced");
    let denied = nodes[4].fails(&["fleet"]);
    assert!(denied.stderr.contains("UNAUTHORIZED"), "{}", denied.stderr);
    std::fs::write(&token_path, &token).expect("token restored");
    nodes[4].ok(&["fleet"]);

    let victim = running.remove(2);
    let victim_id = victim.peer_id.clone();
    victim.kill();
    let killed = Instant::now();
    eventually(Duration::from_secs(20), "the killed node to leave", || {
        fleet_peers(&nodes[0]).filter(|peers| peers.len() == 4 && !peers.contains(&victim_id))
    });
    eprintln!("killed node left the view after {:?}", killed.elapsed());

    let refused = nodes[2].fails(&["fleet"]);
    assert!(
        refused.stderr.contains("not answering") || refused.stderr.contains("no running node"),
        "{}",
        refused.stderr
    );

    let last = running.pop().expect("four still run");
    assert!(last.terminate(), "SIGTERM did not stop the node cleanly");
    let gone = nodes[4].fails(&["fleet"]);
    assert!(gone.stderr.contains("no running node"), "{}", gone.stderr);
}
