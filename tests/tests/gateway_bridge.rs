//! `claw-bridge` presents a fleet of three `clawnode run` processes to the real OpenClaw gateway
//! as one node: `fleet.status` lists the three nodes from the mesh view, `fleet.deploy` starts a
//! real container on the node it chose and says why, `fleet.invoke` reaches every node with a
//! result per node, and failures come back as typed errors through the gateway. The gateway is
//! restarted and the bridge reconnects; a bridge with a wrong token stops with a clear error.
//!
//! The OpenClaw plugin is installed in that gateway: it loads with its tools, service and
//! method, its node-invoke policy admits the bridge's commands without an allowlist, and its
//! tools answer through the gateway's HTTP tool endpoint.
//!
//! Needs Node 24 with openclaw, the Docker Engine and the local test image (`scripts/test.sh`).

use std::process::Command;
use std::time::Duration;

use claw_tests::{
    AgentFleet, DockerProxy, Hold, NodeSpec, TOKEN, check_contract, eventually, gateway_parts,
    node_containers, plugin_fields, run_with_deadline, workspace_binary, write_secret,
};
use serde_json::{Value, json};

/// A workload that runs until stopped, and stops at once on SIGTERM.
const SERVE: [&str; 3] = ["sh", "-c", "trap 'exit 0' TERM; sleep 300 & wait"];

#[test]
fn the_bridge_presents_three_nodes_as_one_openclaw_node() {
    let Some((node24, openclaw, image)) = gateway_parts() else {
        return;
    };
    let mut fleet = AgentFleet::start(
        node24,
        openclaw,
        &[
            NodeSpec::new("n1", 2),
            NodeSpec::new("n2", 1),
            NodeSpec::new("n3", 2),
        ],
        1,
        json!({"healthIntervalMs": 1000}),
    );
    let inspected =
        fleet
            .gateway
            .cli_local(&["plugins", "inspect", "clawbernetes", "--runtime", "--json"]);
    let inspected: Value = serde_json::from_slice(&inspected.stdout).expect("plugins inspect JSON");
    assert_eq!(inspected["plugin"]["status"], "loaded", "{inspected}");
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(claw_tests::plugin_path().join("openclaw.plugin.json"))
            .expect("the plugin's manifest"),
    )
    .expect("manifest JSON");
    let mut loaded: Vec<&str> = inspected["plugin"]["toolNames"]
        .as_array()
        .expect("tool names")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let mut declared: Vec<&str> = manifest["contracts"]["tools"]
        .as_array()
        .expect("declared tools")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    loaded.sort_unstable();
    declared.sort_unstable();
    assert_eq!(
        loaded, declared,
        "the gateway loaded every tool the manifest declares"
    );
    assert_eq!(
        inspected["services"],
        json!(["clawbernetes-health", "clawbernetes-console"])
    );
    assert_eq!(
        inspected["gatewayMethods"],
        json!(["clawbernetes.fleet-status"])
    );
    let call = |command: &str, params: &Value| fleet.call(command, params);
    let gateway = &fleet.gateway;
    let device_id = fleet.device_id.clone();

    // One call for the whole fleet, from the bridge's mesh view.
    let status = eventually(
        Duration::from_secs(60),
        "three nodes in fleet.status",
        || {
            let status = call("fleet.status", &json!({})).ok()?;
            (status["node_count"] == 3).then_some(status)
        },
    );
    assert_eq!(status["gpus"]["total"], 5);
    assert_eq!(status["gpus"]["simulated"], 5);
    let names: Vec<&str> = status["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n["node"].as_str())
        .collect();
    assert_eq!(names, ["n1", "n2", "n3"]);

    // The agent's tools, through the gateway's HTTP tool endpoint: one bridge call each.
    let tool = gateway.tool("claw_fleet_status", json!({}));
    assert_eq!(tool["ok"], true, "{tool}");
    assert_eq!(tool["result"]["details"]["node_count"], 3);
    let text = tool["result"]["content"][0]["text"].as_str().expect("text");
    assert!(text.starts_with("3 nodes; GPUs: 5 total, 5 free"), "{text}");
    let health = gateway.tool("claw_node_health", json!({}));
    assert!(
        health["result"]["content"][0]["text"]
            .as_str()
            .is_some_and(|t| t.contains("n1: healthy") || t.contains("n1: degraded")),
        "{health}"
    );
    let refused = gateway.tool("claw_drain", json!({"node": "no-such-node"}));
    assert!(
        refused["result"]["content"][0]["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("error NOT_FOUND")),
        "{refused}"
    );
    // The background service has watched the three nodes join.
    let watched = eventually(
        Duration::from_secs(30),
        "the health service's snapshot",
        || {
            let output = gateway.cli(&["gateway", "call", "clawbernetes.fleet-status", "--json"]);
            let status: Value = serde_json::from_slice(&output.stdout).ok()?;
            (status["transitions"].as_array()?.len() >= 3).then_some(status)
        },
    );
    let joined: Vec<&str> = watched["transitions"]
        .as_array()
        .expect("transitions")
        .iter()
        .filter(|t| t["kind"] == "joined")
        .filter_map(|t| t["node"].as_str())
        .collect();
    assert_eq!(joined.len(), 3, "{watched}");

    // Placement, through the deploy tool: two GPUs fit on n1 or n3, never on n2.
    let deploy = gateway.tool(
        "claw_deploy",
        json!({"image": image, "command": SERVE, "gpus": 2}),
    );
    assert_eq!(deploy["ok"], true, "{deploy}");
    let deployed = deploy["result"]["details"].clone();
    assert!(
        deploy["result"]["content"][0]["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("deployed ")),
        "{deploy}"
    );
    let chosen = deployed["node"].as_str().expect("node").to_owned();
    assert!(chosen == "n1" || chosen == "n3", "{deployed}");
    assert!(deployed["why"]["score"].is_number(), "{deployed}");
    assert_eq!(deployed["considered"].as_array().map(Vec::len), Some(2));
    assert_eq!(deployed["workload"]["state"], "running");
    let peer = deployed["peer_id"].as_str().expect("peer");
    assert_eq!(node_containers(peer, false).len(), 1);
    eventually(
        Duration::from_secs(20),
        "the workload in fleet.status",
        || {
            let status = call("fleet.status", &json!({})).ok()?;
            (status["running_workloads"] == 1).then_some(())
        },
    );
    let listed = call("fleet.workloads", &json!({"state": "running"})).expect("workloads");
    assert_eq!(listed["workloads"][0]["node"], chosen.as_str());
    // Three GPUs fit nowhere now.
    let refused = call("fleet.deploy", &json!({"image": image, "gpus": 3})).expect_err("no room");
    // (Through the plugin's invoke policy the CLI shows the node's message, not its code.)
    assert!(refused.contains("no node has 3 free GPU(s)"), "{refused}");

    // Every node answers, each with its own result and timing.
    let health = call("fleet.invoke", &json!({"command": "node.health"})).expect("invoke");
    assert_eq!(health["nodes"], 3);
    assert_eq!(health["succeeded"], 3, "{health}");
    assert!(
        health["results"]
            .as_array()
            .expect("results")
            .iter()
            .all(|r| r["ms"].is_number())
    );
    let missing = call(
        "fleet.invoke",
        &json!({"command": "workload.inspect", "params": {"workload": "no-such"}}),
    )
    .expect("invoke");
    assert_eq!(missing["failed"], 3);
    assert!(
        missing["results"]
            .as_array()
            .expect("results")
            .iter()
            .all(|r| r["error"]["code"] == "NOT_FOUND")
    );
    // A failing fleet command is an error through the gateway.
    let failed = call("fleet.drain", &json!({"node": "no-such-node"})).expect_err("unknown node");
    assert!(
        failed.contains("no node \"no-such-node\" in the fleet"),
        "{failed}"
    );
    let bad = call("fleet.status", &json!({"unexpected": 1})).expect_err("strict params");
    assert!(bad.contains("unknown field `unexpected`"), "{bad}");

    // The answers carry every field the OpenClaw plugin reads.
    let contract = plugin_fields();
    let status = call("fleet.status", &json!({})).expect("status");
    check_contract(&contract, "fleet.status", &status);
    check_contract(
        &contract,
        "fleet.gpus",
        &call("fleet.gpus", &json!({})).expect("gpus"),
    );
    check_contract(&contract, "fleet.deploy", &deployed);
    check_contract(&contract, "fleet.workloads", &listed);
    check_contract(&contract, "fleet.invoke", &health);
    check_contract(
        &contract,
        "fleet.health",
        &call("fleet.health", &json!({})).expect("health"),
    );
    let drained = call("fleet.drain", &json!({"node": "n2"})).expect("drain n2");
    check_contract(&contract, "fleet.drain", &drained);

    // Services, ingress rules, policies and namespaces through the bridge, which signs them:
    // each is created, listed by a member and deleted.
    for (family, spec, list_field) in [
        (
            "service",
            json!({"selector": {"app": "web"}, "port": 8080}),
            "services",
        ),
        (
            "ingress",
            json!({"node": "n1", "host": "*", "path": "/", "service": "web"}),
            "ingresses",
        ),
        (
            "policy",
            json!({"scope": "leases", "max_gpus": 8}),
            "policies",
        ),
        ("namespace", json!({"quota": {"gpus": 4}}), "namespaces"),
    ] {
        let (create, list, delete) = (
            format!("{family}.create"),
            format!("{family}.list"),
            format!("{family}.delete"),
        );
        let created = call(&create, &json!({"name": "agent-made", "spec": spec})).expect(&create);
        check_contract(&contract, &create, &created);
        assert_eq!(created["name"], "agent-made", "{created}");
        let listed = call(&list, &json!({})).expect(&list);
        check_contract(&contract, &list, &listed);
        assert_eq!(listed[list_field][0]["name"], "agent-made", "{listed}");
        let again = call(&create, &json!({"name": "agent-made", "spec": spec}))
            .expect_err("a name is taken while live");
        assert!(again.contains("exists"), "{again}");
        let deleted = call(&delete, &json!({"name": "agent-made"})).expect(&delete);
        check_contract(&contract, &delete, &deleted);
        assert_eq!(deleted["revision"], 2, "{deleted}");
    }

    // An API key through the gateway, as the plugin sends it (the params' reserved `api_key`):
    // the bridge signs the key; a call under it runs with no more than it allows, checked by
    // the bridge and by every node the call reaches; revoked, it is refused.
    let created = call(
        "auth.create_key",
        &json!({"name": "agent", "role": "read", "families": ["fleet"], "expires_in_s": 600}),
    )
    .expect("auth.create_key");
    check_contract(&contract, "auth.create_key", &created);
    let key = created["api_key"].as_str().expect("the key").to_owned();
    let status = eventually(Duration::from_secs(30), "the key on the members", || {
        call("fleet.status", &json!({"api_key": key})).ok()
    });
    assert_eq!(status["node_count"], 3);
    let refused = call("fleet.drain", &json!({"node": "n2", "api_key": key}))
        .expect_err("a read key cannot drain");
    assert!(refused.contains("needs the operate role"), "{refused}");
    let refused = call("config.list", &json!({"api_key": key})).expect_err("not its family");
    assert!(refused.contains("families fleet, not config"), "{refused}");
    let fleet_only = call(
        "auth.create_key",
        &json!({"name": "fleet-ops", "role": "operate", "families": ["fleet"], "expires_in_s": 600}),
    )
    .expect("auth.create_key");
    let fleet_only = fleet_only["api_key"].as_str().expect("the key").to_owned();
    // Each node the bridge reaches checks the key itself: node.health is not in its families.
    let invoked = eventually(
        Duration::from_secs(30),
        "each node to refuse node.health",
        || {
            let invoked = call(
                "fleet.invoke",
                &json!({"command": "node.health", "api_key": fleet_only}),
            )
            .ok()?;
            invoked["results"]
                .as_array()?
                .iter()
                .all(|r| {
                    r["error"]["code"] == "UNAUTHORIZED"
                        && r["error"]["message"]
                            .as_str()
                            .is_some_and(|m| m.contains("families fleet, not node"))
                })
                .then_some(invoked)
        },
    );
    assert_eq!(invoked["failed"], 3, "{invoked}");
    let listed = call("auth.list_keys", &json!({})).expect("auth.list_keys");
    check_contract(&contract, "auth.list_keys", &listed);
    assert!(!listed.to_string().contains(&key));
    let revoked = call("auth.revoke_key", &json!({"name": "agent"})).expect("revoke");
    check_contract(&contract, "auth.revoke_key", &revoked);
    eventually(Duration::from_secs(10), "the revoked key refused", || {
        call("fleet.status", &json!({"api_key": key}))
            .err()
            .filter(|e| e.contains("is revoked"))
    });

    // The market through the plugin: offers, a bid that really leases and runs, leases, wallet.
    let offers = eventually(
        Duration::from_secs(30),
        "an offer in the market node's book",
        || {
            let offers = gateway.tool("claw_market_offers", json!({}));
            (!offers["result"]["details"]["offers"].as_array()?.is_empty()).then_some(offers)
        },
    );
    assert!(
        offers["result"]["content"][0]["text"]
            .as_str()
            .is_some_and(|t| t.contains("MOLT/GPU-hour")),
        "{offers}"
    );
    let bid = gateway.tool(
        "claw_market_bid",
        json!({
            "models": ["NVIDIA H100 80GB HBM3"], "gpus": 1, "hours": 1, "max_price": "1",
            "accept_simulated": true, "workload": {"image": image, "command": SERVE},
        }),
    );
    let lease = &bid["result"]["details"]["lease"];
    assert_eq!(lease["state"], "running", "{bid}");
    let lease_id = lease["lease_id"].as_str().expect("lease id");
    assert!(
        bid["result"]["content"][0]["text"]
            .as_str()
            .is_some_and(|t| t.starts_with(&format!("lease {lease_id} running"))),
        "{bid}"
    );
    let leases = gateway.tool("claw_leases", json!({}));
    assert!(
        leases["result"]["content"][0]["text"]
            .as_str()
            .is_some_and(|t| t.contains(lease_id)),
        "{leases}"
    );
    let wallet = gateway.tool("claw_wallet", json!({}));
    assert_eq!(
        wallet["result"]["details"]["molt"], "99",
        "1 MOLT is in escrow: {wallet}"
    );
    let gpus = gateway.tool("claw_gpu_inventory", json!({}));
    assert_eq!(
        gpus["result"]["details"]["gpus"].as_array().map(Vec::len),
        Some(5)
    );
    let workloads = eventually(
        Duration::from_secs(20),
        "the deployed and the leased workload",
        || {
            let answer = gateway.tool("claw_workloads", json!({"state": "running"}));
            (answer["result"]["details"]["workloads"].as_array()?.len() == 2).then_some(answer)
        },
    );
    assert!(
        workloads["result"]["content"][0]["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("2 workloads"))
    );
    let everywhere = gateway.tool("claw_multi_invoke", json!({"command": "gpu.list"}));
    assert!(
        everywhere["result"]["content"][0]["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("gpu.list on 3 nodes: 3 succeeded")),
        "{everywhere}"
    );

    // The gateway restarts: the bridge reconnects on its own.
    fleet.gateway.stop();
    fleet.gateway.start();
    eventually(
        Duration::from_secs(60),
        "fleet.status after the restart",
        || {
            let output = fleet.gateway.invoke(&device_id, "fleet.status", "{}");
            let answer: Value = serde_json::from_slice(&output.stdout).ok()?;
            (output.status.success() && answer["payload"]["node_count"] == 3).then_some(())
        },
    );

    // A bridge that requires API keys answers only calls that carry one.
    let created = fleet
        .call(
            "auth.create_key",
            &json!({"name": "required", "role": "read", "expires_in_s": 600}),
        )
        .expect("auth.create_key");
    let required = created["api_key"].as_str().expect("the key").to_owned();
    fleet.restart_bridge_with(&["--require-api-key"], Some(&required));
    let refused = fleet
        .call("fleet.status", &json!({}))
        .expect_err("no key, no answer");
    assert!(
        refused.contains("only calls that carry an API key"),
        "{refused}"
    );

    // A bridge with a wrong token stops at once with a clear error.
    let wrong_token = fleet.dir.path().join("wrong.token");
    write_secret(&wrong_token, "not-the-token");
    let started = std::time::Instant::now();
    let refused = run_with_deadline(
        Command::new(workspace_binary("claw-bridge"))
            .args(["run", "--data-dir"])
            .arg(fleet.dir.path().join("bridge-2"))
            .args(["--gateway", &fleet.gateway.url(), "--token-file"])
            .arg(&wrong_token)
            .args(["--listen", "/ip4/127.0.0.1/tcp/0"])
            .env("RUST_LOG", "warn"),
        Duration::from_secs(60),
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(stderr.contains("refused the token"), "{stderr}");
    assert!(!stderr.contains("not-the-token") && !stderr.contains(TOKEN));
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "no retry storm"
    );
}

/// The agent's deploy is retried after the bridge dies mid-call: the tool call keeps its id, the
/// plugin makes it the idempotency key, the restarted bridge sends the retry to the node it had
/// chosen (by then the worse-scored one, its GPUs taken), and that node answers with the
/// workload the first attempt started. One workload in all; a new call starts a second.
#[test]
fn a_deploy_retried_after_the_bridge_restarts_starts_one_workload() {
    let Some((node24, openclaw, image)) = gateway_parts() else {
        return;
    };
    // Each workload.run waits 5 s at its first Docker call: the window to kill the bridge in.
    let sockets = tempfile::tempdir().expect("temp dir");
    let _docker = DockerProxy::holding(
        &sockets.path().join("docker.sock"),
        Hold::ImageChecks,
        Duration::from_secs(5),
    );
    let mut specs = [NodeSpec::new("n1", 2), NodeSpec::new("n2", 2)];
    for spec in &mut specs {
        spec.docker_socket = Some(sockets.path().join("docker.sock"));
    }
    let mut fleet = AgentFleet::start(
        node24,
        openclaw,
        &specs,
        0,
        json!({"healthIntervalMs": 60000, "invokeTimeoutMs": 60000}),
    );
    let deploy = json!({"image": image, "command": SERVE, "gpus": 2});
    let tools = fleet.gateway.tools();
    let first = std::thread::spawn({
        let deploy = deploy.clone();
        move || tools.call("claw_deploy", deploy, Some("agent-call-1"))
    });
    let listed = |node: &claw_tests::FleetNode| -> Vec<Value> {
        node.cli
            .invoke(None, "workload.list", &json!({"all": true}))
            .ok()
            .and_then(|l| l["workloads"].as_array().cloned())
            .unwrap_or_default()
    };
    let (chosen, started) = eventually(
        Duration::from_secs(30),
        "the first attempt's workload on a node",
        || {
            fleet.nodes.iter().enumerate().find_map(|(i, node)| {
                let workloads = listed(node);
                workloads.first().map(|w| (i, w["id"].clone()))
            })
        },
    );
    fleet.restart_bridge();
    let interrupted = first.join().expect("the first call's thread");
    eprintln!("the interrupted call answered: {interrupted}");

    let retried = fleet
        .gateway
        .tools()
        .call("claw_deploy", deploy.clone(), Some("agent-call-1"));
    assert_eq!(retried["ok"], true, "{retried}");
    let details = &retried["result"]["details"];
    assert_eq!(details["workload"]["id"], started, "{retried}");
    assert_eq!(details["node"], fleet.nodes[chosen].name, "{retried}");
    assert_eq!(details["retried"], true, "{retried}");
    let text = retried["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default();
    assert!(text.starts_with("deployed "), "{text}");
    let records: usize = fleet.nodes.iter().map(|n| listed(n).len()).sum();
    assert_eq!(records, 1, "one workload across the fleet");
    eventually(
        Duration::from_secs(30),
        "the workload's one container",
        || {
            let containers: usize = fleet
                .nodes
                .iter()
                .map(|n| node_containers(&n.process.peer_id, true).len())
                .sum();
            (containers == 1).then_some(())
        },
    );

    // Another call is another deploy: it lands on the other node.
    let other = fleet
        .gateway
        .tools()
        .call("claw_deploy", deploy, Some("agent-call-2"));
    assert_eq!(other["ok"], true, "{other}");
    let details = &other["result"]["details"];
    assert_ne!(details["workload"]["id"], started, "{other}");
    assert_eq!(details["node"], fleet.nodes[1 - chosen].name, "{other}");
}
