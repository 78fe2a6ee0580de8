//! Fleet membership through the real OpenClaw gateway: an operator (node n1's key) admits n1
//! and n2 to its fleet; a third node on the same network, with more free GPUs than both and
//! the same name as n2, is admitted by nobody. It tries, with only its own keys: a credential
//! it signed for itself, then a copy of n2's credential (read from n2's announcements).
//!
//! A bridge that trusts the operator (`--fleet-operator`) presents, deploys to, invokes and
//! drains members only: the stranger is never in `fleet.status`, never gets the deployment
//! (its env included) though it scores best, is not reached by a fleet-wide invoke, and the name
//! "n2" resolves to the member. Without an operator, the two "n2"s make the name ambiguous and
//! the bridge says so instead of picking one.

use std::time::Duration;

use claw_tests::{AgentFleet, NodeSpec, eventually, gateway_parts};
use serde_json::{Value, json};

const SERVE: [&str; 3] = ["sh", "-c", "trap 'exit 0' TERM; sleep 300 & wait"];

fn status_peers(status: &Value) -> Vec<String> {
    let mut peers: Vec<String> = status["nodes"]
        .as_array()
        .map(|nodes| {
            nodes
                .iter()
                .filter_map(|n| n["peer_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    peers.sort();
    peers
}

#[test]
fn a_bridge_that_trusts_an_operator_acts_on_its_members_only() {
    let Some((node24, openclaw, image)) = gateway_parts() else {
        return;
    };
    let mut fleet = AgentFleet::start(
        node24,
        openclaw,
        &[
            NodeSpec::new("n1", 1),
            NodeSpec::new("n2", 1),
            // The stranger: most free GPUs, and a member's name.
            NodeSpec::new("n2", 4),
        ],
        0,
        json!({"healthIntervalMs": 1000}),
    );
    let peer = |i: usize| fleet.nodes[i].process.peer_id.clone();
    let (n1, n2, stranger) = (peer(0), peer(1), peer(2));

    // Open fleet (no operator trusted): two nodes announce "n2", and the bridge will not guess.
    let ambiguous = fleet
        .call(
            "fleet.invoke",
            &json!({"command": "node.health", "nodes": ["n2"]}),
        )
        .expect_err("an ambiguous name");
    assert!(ambiguous.contains("more than one node"), "{ambiguous}");

    // The operator (n1's key) admits n1 and n2; each installs its credential.
    let operator = &fleet.nodes[0].cli;
    let mut credentials = Vec::new();
    for (index, member) in [(0, &n1), (1, &n2)] {
        let issued = operator
            .ok(&["--json", "membership", "issue", member, "--days", "1"])
            .json();
        assert_eq!(issued["operator"], n1.as_str());
        let credential = issued["credential"]
            .as_str()
            .expect("credential")
            .to_owned();
        fleet.nodes[index]
            .cli
            .ok(&["membership", "install", &credential]);
        credentials.push(credential);
    }
    // A credential names its member: n2's is refused by the stranger's own CLI.
    let refused = fleet.nodes[2]
        .cli
        .fails(&["membership", "install", &credentials[1]]);
    assert!(refused.stderr.contains("admits"), "{}", refused.stderr);
    // Attack 1: the stranger signs a credential for itself.
    let own = fleet.nodes[2]
        .cli
        .ok(&["--json", "membership", "issue", &stranger])
        .json();
    fleet.nodes[2].cli.ok(&[
        "membership",
        "install",
        own["credential"].as_str().expect("credential"),
    ]);

    fleet.restart_bridge_seeing(&["--fleet-operator", &n1], None, 2);
    let members = {
        let mut m = vec![n1.clone(), n2.clone()];
        m.sort();
        m
    };
    let status = fleet.call("fleet.status", &json!({})).expect("status");
    assert_eq!(status_peers(&status), members, "{status}");

    // The stranger scores best (4 free GPUs) but never gets the workload or its env.
    for _ in 0..2 {
        let deployed = fleet
            .call(
                "fleet.deploy",
                &json!({"image": image, "command": SERVE, "gpus": 1, "env": {"API_TOKEN": "s3cret"}}),
            )
            .expect("deploy");
        let on = deployed["peer_id"].as_str().unwrap_or_default().to_owned();
        assert!(members.contains(&on), "deployed on a member: {deployed}");
    }
    assert!(
        claw_tests::node_containers(&stranger, false).is_empty(),
        "nothing runs on the stranger"
    );
    let health = fleet
        .call("fleet.invoke", &json!({"command": "node.health"}))
        .expect("invoke");
    assert_eq!(health["nodes"], 2, "{health}");
    let reached: Vec<&str> = health["results"]
        .as_array()
        .expect("results")
        .iter()
        .filter_map(|r| r["peer_id"].as_str())
        .collect();
    assert!(!reached.contains(&stranger.as_str()), "{health}");
    // "n2" is the member now; the stranger cannot be named at all.
    let named = fleet
        .call(
            "fleet.invoke",
            &json!({"command": "node.health", "nodes": ["n2"]}),
        )
        .expect("n2 resolves");
    assert_eq!(named["results"][0]["peer_id"], n2.as_str(), "{named}");
    let unknown = fleet
        .call("fleet.drain", &json!({"node": stranger}))
        .expect_err("the stranger is not in the fleet");
    assert!(unknown.contains("no node"), "{unknown}");

    // Attack 2: the stranger announces a copy of n2's credential (the file written by hand, as
    // its own CLI refuses it). Announcements are signed by their sender, so the credential
    // names someone else and admits nothing.
    std::fs::write(
        fleet.nodes[2].cli.data_dir().join("membership.cred"),
        base64_decode(&credentials[1]),
    )
    .expect("write the copied credential");
    std::thread::sleep(Duration::from_secs(4));
    eventually(Duration::from_secs(10), "the fleet still of two", || {
        let status = fleet.call("fleet.status", &json!({})).ok()?;
        (status_peers(&status) == members).then_some(())
    });
    let health = fleet
        .call("fleet.invoke", &json!({"command": "node.health"}))
        .expect("invoke");
    assert_eq!(health["nodes"], 2, "{health}");
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("base64")
}
