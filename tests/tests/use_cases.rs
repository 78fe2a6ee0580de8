//! The seed's conversations, one test each, at the level the agent works at: the OpenClaw
//! plugin's tools, called through a real OpenClaw gateway, answered by `claw-bridge` from a fleet
//! of `clawnode run` processes on loopback running real containers on the Docker Engine and
//! settling MOLT on the embedded chain.
//!
//! - ML training: what the fleet has, then a job placed on the node with the free GPUs.
//! - Multi-node batch processing: one job on every node, a result per node, and a clear failure
//!   for the node that cannot run it.
//! - GPU cluster monitoring: the health report finds the node whose Docker stopped; the node is
//!   drained, its workloads stop as soon as Docker is back, and the work runs elsewhere.
//! - Cost optimisation with MOLT: providers rent out idle GPUs, the cheapest offer is found, bid
//!   on, leased and run, and the lease is ended and settled on chain.
//! - "GPU 2 seems slow": live NVML readings per GPU; where the machine has no NVIDIA GPU the test
//!   says it was skipped and why.
//! - Canary deployments: "update the inference server to the new version, but do it safely": a
//!   deployment, a canary of the new image beside it, watched, then promoted to every replica.
//!   And as the seed tells it: 10 % of the service's traffic to the new version, its latency and
//!   error rate watched, promoted to 50 % and then to all by the fleet itself.
//!
//! - Secrets and configs: "the server needs the HF token": a secret sealed to two nodes and a
//!   config, a deployment that takes them as env and files and runs only on those nodes, then
//!   "rotate the token": the replicas roll onto the new value, which no answer ever shows.
//!
//! Each test runs its own fleet; they take turns, as each fleet is several processes and a gateway.
//! Needs Node 24 with openclaw, the Docker Engine and the local test image (`scripts/test.sh`).

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use claw_tests::{
    AgentFleet, Clawnode, DockerProxy, NodeSpec, check_contract, eventually, gateway_parts, metric,
    plugin_fields,
};
use serde_json::{Value, json};

/// A workload that runs until stopped, and stops at once on SIGTERM.
const SERVE: [&str; 3] = ["sh", "-c", "trap 'exit 0' TERM; sleep 300 & wait"];

/// One fleet at a time.
static ONE_FLEET: Mutex<()> = Mutex::new(());

fn one_fleet() -> MutexGuard<'static, ()> {
    ONE_FLEET.lock().unwrap_or_else(PoisonError::into_inner)
}

/// n1, n2 and n3 with these many simulated H100s; n2 (index 1) holds the chain and is the bridge's
/// market node.
fn n1_n2_n3(gpus: [u32; 3]) -> Vec<NodeSpec> {
    ["n1", "n2", "n3"]
        .into_iter()
        .zip(gpus)
        .map(|(name, count)| NodeSpec::new(name, count))
        .collect()
}

fn lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}

/// "I need to fine-tune on 4 GPUs": the agent reads the fleet and the GPU inventory, deploys, and
/// the bridge places the job on the only node with 4 free GPUs; the next job goes where GPUs are
/// still free, and one that fits nowhere is refused with the reason.
#[test]
fn ml_training_finds_the_free_gpus_and_deploys_there() {
    let Some((node24, openclaw, image)) = gateway_parts() else {
        return;
    };
    let _turn = one_fleet();
    let fleet = AgentFleet::start(node24, openclaw, &n1_n2_n3([4, 1, 2]), 1, json!({}));

    let (text, _) = fleet.tool("claw_fleet_status", json!({}));
    assert_eq!(
        lines(&text)[0],
        "3 nodes; GPUs: 7 total, 7 free, 0 allocated (7 simulated); 0 running workloads",
        "{text}"
    );
    let (text, inventory) = fleet.tool("claw_gpu_inventory", json!({"model": "H100"}));
    assert!(text.starts_with("7 GPUs, 7 free"), "{text}");
    let on_n1 = inventory["gpus"]
        .as_array()
        .expect("gpus")
        .iter()
        .filter(|g| g["node"] == "n1" && g["simulated"] == true)
        .count();
    assert_eq!(on_n1, 4, "{inventory}");

    // "Deploying... workload fine-tune running."
    let (text, deployed) = fleet.tool(
        "claw_deploy",
        json!({"image": image, "command": SERVE, "gpus": 4, "name": "fine-tune"}),
    );
    assert_eq!(
        deployed["node"], "n1",
        "only n1 has 4 free GPUs: {deployed}"
    );
    assert_eq!(deployed["workload"]["state"], "running", "{deployed}");
    assert!(
        text.starts_with(&format!(
            "deployed {} (running) on n1",
            deployed["workload"]["id"].as_str().expect("id")
        )),
        "{text}"
    );
    assert_eq!(fleet.running_containers("n1").len(), 1);

    // The fleet now shows the four GPUs taken, and the job.
    let text = eventually(Duration::from_secs(20), "the job in fleet status", || {
        let (text, status) = fleet.tool("claw_fleet_status", json!({}));
        (status["running_workloads"] == 1).then_some(text)
    });
    assert!(text.contains("7 total, 3 free, 4 allocated"), "{text}");
    assert!(text.contains("- n1: 0/4 GPUs free, 1 workload"), "{text}");

    // A 2-GPU job goes to n3, where two are free; a third fits nowhere.
    let (_, second) = fleet.tool(
        "claw_deploy",
        json!({"image": image, "command": SERVE, "gpus": 2}),
    );
    assert_eq!(second["node"], "n3", "{second}");
    assert_eq!(fleet.running_containers("n3").len(), 1);
    let (text, _) = fleet.tool(
        "claw_deploy",
        json!({"image": image, "command": SERVE, "gpus": 2}),
    );
    assert!(text.starts_with("error CONFLICT"), "{text}");
    assert!(text.contains("no node has 2 free GPU(s)"), "{text}");
}

/// "Run this data processing job on every node": one call starts it everywhere; each node
/// answers for itself, the node without enough GPUs says why, and the others complete it.
#[test]
fn batch_job_runs_on_every_node_with_a_result_for_each() {
    let Some((node24, openclaw, image)) = gateway_parts() else {
        return;
    };
    let _turn = one_fleet();
    let fleet = AgentFleet::start(node24, openclaw, &n1_n2_n3([2, 1, 2]), 1, json!({}));

    let job = json!({
        "image": image,
        "command": ["sh", "-c", "echo processed $((6 * 7)) records"],
        "gpus": 2,
        "name": "batch",
    });
    let (text, answer) = fleet.tool(
        "claw_multi_invoke",
        json!({"command": "workload.run", "params": job}),
    );
    let report = lines(&text);
    assert_eq!(
        report[0], "workload.run on 3 nodes: 2 succeeded, 1 failed",
        "{text}"
    );
    let n2 = report
        .iter()
        .find(|l| l.starts_with("- n2: "))
        .expect("a line for n2");
    assert!(n2.starts_with("- n2: error CONFLICT: "), "{text}");
    assert!(
        n2.contains("GPU"),
        "the failure names what is missing: {n2}"
    );
    for node in ["n1", "n3"] {
        assert!(
            report
                .iter()
                .any(|l| l.starts_with(&format!("- {node}: ok ("))),
            "{text}"
        );
    }
    let started: Vec<(String, String)> = answer["results"]
        .as_array()
        .expect("results")
        .iter()
        .filter(|r| r["ok"] == true)
        .map(|r| {
            (
                r["node"].as_str().expect("node").to_owned(),
                r["result"]["id"].as_str().expect("workload id").to_owned(),
            )
        })
        .collect();
    assert_eq!(started.len(), 2, "{answer}");

    // Both runs complete, with exit code 0 and their output.
    let exited = eventually(Duration::from_secs(60), "both batch runs to exit", || {
        let (_, listed) = fleet.tool("claw_workloads", json!({"state": "exited"}));
        let done: Vec<Value> = listed["workloads"]
            .as_array()?
            .iter()
            .filter(|w| w["name"] == "batch")
            .cloned()
            .collect();
        (done.len() == 2).then_some(done)
    });
    assert!(exited.iter().all(|w| w["exit_code"] == 0), "{exited:?}");
    for (node, id) in &started {
        let (text, logs) = fleet.tool(
            "claw_multi_invoke",
            json!({"command": "workload.logs", "params": {"workload": id}, "nodes": [node]}),
        );
        assert!(text.contains("1 succeeded, 0 failed"), "{text}");
        assert!(
            logs["results"][0]["result"]
                .to_string()
                .contains("processed 42 records"),
            "{logs}"
        );
    }
}

/// "Give me a daily health report" — one node's Docker has stopped, and the report says which
/// and why. "Do it": the node is drained. Its workload cannot be stopped while Docker is down, so
/// the node keeps at it, and once Docker is back the workload is gone from it. The work is
/// deployed again and lands elsewhere, never on the cordoned node.
#[test]
fn daily_health_report_then_drain_the_degraded_node() {
    let Some((node24, openclaw, image)) = gateway_parts() else {
        return;
    };
    let _turn = one_fleet();
    let sockets = tempfile::tempdir().expect("temp dir");
    let mut docker = DockerProxy::start(&sockets.path().join("docker.sock"));
    let mut nodes = n1_n2_n3([2, 1, 2]);
    nodes[2].docker_socket = Some(docker.path().to_path_buf());
    let fleet = AgentFleet::start(
        node24,
        openclaw,
        &nodes,
        1,
        json!({"healthIntervalMs": 1000}),
    );

    // A workload on n3, as the day began.
    let (text, started) = fleet.tool(
        "claw_multi_invoke",
        json!({
            "command": "workload.run",
            "params": {"image": image, "command": SERVE, "gpus": 2, "name": "inference"},
            "nodes": ["n3"],
        }),
    );
    assert!(text.contains("1 succeeded, 0 failed"), "{text}");
    let workload = started["results"][0]["result"]["id"]
        .as_str()
        .expect("workload id")
        .to_owned();
    assert_eq!(fleet.running_containers("n3").len(), 1);

    // Docker stops on n3.
    docker.stop();
    let report = eventually(
        Duration::from_secs(30),
        "n3 unhealthy in the health report",
        || {
            let (text, _) = fleet.tool("claw_node_health", json!({}));
            text.lines()
                .any(|l| l.starts_with("- n3: unhealthy"))
                .then_some(text)
        },
    );
    let n3_line = report
        .lines()
        .find(|l| l.starts_with("- n3: "))
        .expect("n3's line");
    assert!(
        n3_line.contains("docker: "),
        "the reason is Docker: {report}"
    );
    assert!(report.contains("1 unhealthy"), "{report}");
    for healthy in ["n1", "n2"] {
        let line = report
            .lines()
            .find(|l| l.starts_with(&format!("- {healthy}: ")))
            .expect("a line per node");
        assert!(!line.contains("unhealthy"), "{report}");
    }
    // The plugin's health service saw n3 go bad, and logs it as a transition.
    let watched = eventually(
        Duration::from_secs(30),
        "n3's transition in the health service",
        || {
            let output =
                fleet
                    .gateway
                    .cli(&["gateway", "call", "clawbernetes.fleet-status", "--json"]);
            let status: Value = serde_json::from_slice(&output.stdout).ok()?;
            status["transitions"]
                .as_array()?
                .iter()
                .find(|t| t["node"] == "n3" && t["to"] == "unhealthy")
                .cloned()
        },
    );
    assert_eq!(watched["kind"], "degraded", "{watched}");

    // "Do it": drain n3. Docker is down, so the workload is still running, and the node says so.
    let (text, drained) = fleet.tool("claw_drain", json!({"node": "n3"}));
    assert!(
        text.starts_with("n3 cordoned; 0 of 1 workload stopped; 1 still running"),
        "{text}"
    );
    assert_eq!(drained["drain"]["pending"], 1, "{drained}");
    assert_eq!(fleet.running_containers("n3").len(), 1);

    // Docker is back: the node finishes the drain on its own.
    docker.resume();
    eventually(Duration::from_secs(30), "n3's container to stop", || {
        fleet.running_containers("n3").is_empty().then_some(())
    });
    let remaining = eventually(
        Duration::from_secs(30),
        "n3's workload to leave the running list",
        || {
            let (text, listed) =
                fleet.tool("claw_workloads", json!({"node": "n3", "state": "running"}));
            (listed["workloads"].as_array()?.is_empty()).then_some(text)
        },
    );
    assert!(remaining.starts_with("0 workloads"), "{remaining}");
    let (_, stopped) = fleet.tool("claw_workloads", json!({"node": "n3"}));
    assert!(
        stopped["workloads"]
            .as_array()
            .expect("workloads")
            .iter()
            .any(|w| w["id"] == workload.as_str() && w["state"] == "stopped"),
        "{stopped}"
    );
    // n3 is healthy again but cordoned: the work runs elsewhere.
    let (_, moved) = fleet.tool(
        "claw_deploy",
        json!({"image": image, "command": SERVE, "gpus": 2, "name": "inference"}),
    );
    assert_eq!(moved["node"], "n1", "n3 is cordoned, n2 too small: {moved}");
    eventually(
        Duration::from_secs(20),
        "n3 cordoned and empty, the work on n1",
        || {
            let (text, _) = fleet.tool("claw_fleet_status", json!({}));
            (text.contains("- n3: 2/2 GPUs free, 0 workloads, cordoned")
                && text.contains("- n1: 0/2 GPUs free, 1 workload"))
            .then_some(())
        },
    );

    // n3's own metrics tell the same story.
    let scraped = fleet.node("n3").process.scrape_metrics();
    assert_eq!(
        metric(
            &scraped,
            r#"clawnode_invokes_total{command="node.drain",outcome="ok"}"#
        ),
        Some(1.0),
        "{scraped}"
    );
    assert_eq!(
        metric(&scraped, r#"clawnode_workloads{state="stopped"}"#),
        Some(1.0),
        "{scraped}"
    );
}

/// "Can I rent out GPUs?" and "Find me cheap H100s": the agent puts two providers' idle GPUs on
/// the market at their prices, finds the offers cheapest first, bids within the budget and gets a
/// running lease from the cheapest, then ends it; the lease settles on chain pro rata, to the
/// base unit, and the provider's metrics count what it was paid. The provider then stops selling
/// and its offer leaves the book.
#[test]
fn molt_rent_out_find_the_cheapest_bid_lease_run_settle() {
    let Some((node24, openclaw, image)) = gateway_parts() else {
        return;
    };
    let _turn = one_fleet();
    let nodes: Vec<NodeSpec> = ["dear", "buyer", "cheap"]
        .into_iter()
        .map(|name| {
            let mut node = NodeSpec::new(name, if name == "buyer" { 1 } else { 2 });
            node.price = None;
            node
        })
        .collect();
    let fleet = AgentFleet::start(node24, openclaw, &nodes, 1, json!({}));
    let (_, offers) = fleet.tool("claw_market_offers", json!({}));
    assert_eq!(offers["offers"], json!([]), "nobody sells yet: {offers}");

    // "Rent out our idle GPUs": each provider at its price; the offers appear, cheapest first.
    for (node, price) in [("cheap", "0.95"), ("dear", "1.5")] {
        let (text, _) = fleet.tool(
            "claw_rent_out",
            json!({"price_per_gpu_hour": price, "nodes": [node]}),
        );
        assert_eq!(
            text,
            format!("selling at {price} MOLT/GPU-hour on 1 of 1 node\n- {node}: 2 GPUs on offer")
        );
    }
    let (text, offers) = eventually(
        Duration::from_secs(30),
        "both providers' offers in the book",
        || {
            let (text, offers) = fleet.tool("claw_market_offers", json!({}));
            (offers["offers"].as_array()?.len() == 2).then_some((text, offers))
        },
    );
    let listed: Vec<(&str, &str)> = offers["offers"]
        .as_array()
        .expect("offers")
        .iter()
        .map(|o| {
            (
                o["node"].as_str().unwrap_or_default(),
                o["price_per_gpu_hour"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(listed, [("cheap", "0.95"), ("dear", "1.5")], "{offers}");
    assert!(text.contains("MOLT/GPU-hour"), "{text}");

    // Bid at most 1 MOLT per GPU-hour for one H100 for an hour: the cheap provider's lease runs.
    let (text, bid) = fleet.tool(
        "claw_market_bid",
        json!({
            "models": ["NVIDIA H100 80GB HBM3"], "gpus": 1, "hours": 1, "max_price": "1",
            "accept_simulated": true, "workload": {"image": image, "command": SERVE},
        }),
    );
    let lease = &bid["lease"];
    assert_eq!(lease["state"], "running", "{bid}");
    assert_eq!(lease["amount"], "0.95", "{bid}");
    let lease_id = lease["lease_id"].as_str().expect("lease id").to_owned();
    assert!(
        text.starts_with(&format!("lease {lease_id} running: 0.95 MOLT")),
        "{text}"
    );
    assert_eq!(fleet.running_containers("cheap").len(), 1);
    assert!(fleet.running_containers("dear").is_empty());
    let (_, wallet) = fleet.tool("claw_wallet", json!({}));
    assert_eq!(wallet["molt"], "99.05", "0.95 MOLT in escrow: {wallet}");

    // Ended after a few seconds: paid pro rata for the time served, the rest back.
    std::thread::sleep(Duration::from_secs(2));
    let (text, ended) = fleet.tool("claw_lease_end", json!({"lease_id": lease_id}));
    assert_eq!(ended["state"], "settled", "{ended}");
    let served = ended["served_secs"].as_u64().expect("served seconds");
    assert!(served >= 1, "{ended}");
    let to_provider = 950_000 * served / 3600;
    let base_units = |molt: &Value| -> u64 {
        let text = molt.as_str().expect("a MOLT amount");
        let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
        whole.parse::<u64>().expect("whole MOLT") * 1_000_000
            + format!("{fraction:0<6}").parse::<u64>().expect("fraction")
    };
    assert_eq!(base_units(&ended["to_provider"]), to_provider, "{ended}");
    assert_eq!(
        base_units(&ended["to_buyer"]),
        950_000 - to_provider,
        "{ended}"
    );
    assert!(
        text.starts_with(&format!("lease {lease_id} settled: ")),
        "{text}"
    );
    let (_, wallet) = fleet.tool("claw_wallet", json!({}));
    assert_eq!(
        base_units(&wallet["molt"]),
        100_000_000 - to_provider,
        "{wallet}"
    );
    let (text, _) = fleet.tool("claw_leases", json!({}));
    assert!(
        text.contains(&format!("- {lease_id} (buyer): settled")),
        "{text}"
    );

    // The cheap provider stops selling: its offer leaves the book.
    let (text, _) = fleet.tool("claw_rent_out", json!({"stop": true, "nodes": ["cheap"]}));
    assert_eq!(
        text,
        "stopped selling on 1 of 1 node\n- cheap: 0 GPUs on offer"
    );
    eventually(
        Duration::from_secs(30),
        "only the dear offer in the book",
        || {
            let (_, offers) = fleet.tool("claw_market_offers", json!({}));
            let nodes: Vec<&str> = offers["offers"]
                .as_array()?
                .iter()
                .filter_map(|o| o["node"].as_str())
                .collect();
            (nodes == ["dear"]).then_some(())
        },
    );

    // The provider's container is gone; its metrics count the lease and what it was paid.
    eventually(
        Duration::from_secs(20),
        "the provider's container to stop",
        || fleet.running_containers("cheap").is_empty().then_some(()),
    );
    let scraped = eventually(
        Duration::from_secs(30),
        "the settled lease in the provider's metrics",
        || {
            let scraped = fleet.node("cheap").process.scrape_metrics();
            (metric(
                &scraped,
                r#"clawnode_leases{side="provider",state="settled"}"#,
            ) == Some(1.0))
            .then_some(scraped)
        },
    );
    assert_eq!(
        metric(
            &scraped,
            r#"clawnode_molt_settled_base_units_total{side="provider",to="provider"}"#
        ),
        Some(to_provider as f64),
        "{scraped}"
    );
    assert!(
        metric(
            &scraped,
            r#"clawnode_gossip_messages_total{topic="inventory",verdict="accepted"}"#
        )
        .is_some_and(|n| n > 0.0),
        "{scraped}"
    );
    assert!(
        metric(&scraped, "clawnode_mesh_peers").is_some_and(|n| n >= 2.0),
        "{scraped}"
    );
    // Announcements' ages on arrival, in seconds: the fleet is on one machine, so they
    // arrive within seconds of signing.
    let arrived = metric(
        &scraped,
        r#"clawnode_gossip_delivery_age_seconds_count{topic="inventory"}"#,
    )
    .unwrap_or(0.0);
    assert!(arrived > 0.0, "{scraped}");
    assert!(
        metric(
            &scraped,
            r#"clawnode_gossip_delivery_age_seconds_bucket{le="10.0",topic="inventory"}"#
        )
        .is_some_and(|within| within > 0.0 && within <= arrived),
        "{scraped}"
    );
    assert_eq!(
        metric(
            &scraped,
            r#"clawnode_mesh_hole_punches_total{outcome="failed"}"#
        ),
        Some(0.0),
        "no NAT on loopback: {scraped}"
    );
}

/// "GPU 2 seems slow": the agent reads every GPU's live utilisation, temperature and throttle
/// reasons from NVML. That needs an NVIDIA GPU; on a machine without one the test says it was
/// skipped, and why.
#[test]
fn slow_gpu_is_diagnosed_from_live_nvml_readings() {
    let Some((node24, openclaw, _image)) = gateway_parts() else {
        return;
    };
    let probe_dir = tempfile::tempdir().expect("temp dir");
    let probe = Clawnode::new(probe_dir.path());
    probe.ok(&["init"]);
    let inventory = probe.ok(&["--json", "inventory"]).json();
    let real_gpus = inventory["inventory"]["gpus"]
        .as_array()
        .expect("the signed inventory's GPUs")
        .iter()
        .filter(|g| g["simulated"] == false)
        .count();
    if real_gpus == 0 {
        eprintln!(
            "SKIPPED: this machine has no NVIDIA GPU (NVML: {}), so there are no live \
             utilisation, temperature or throttle readings to diagnose; the test runs in full \
             on a machine with one",
            inventory["inventory"]["nvml"]
        );
        return;
    }
    let _turn = one_fleet();
    let mut gpu_node = NodeSpec::new("gpu-node", 0);
    gpu_node.price = None;
    let fleet = AgentFleet::start(
        node24,
        openclaw,
        &[gpu_node, NodeSpec::new("n2", 1)],
        1,
        json!({}),
    );
    let (text, live) = fleet.tool("claw_gpu_inventory", json!({"live": true}));
    let real: Vec<&Value> = live["gpus"]
        .as_array()
        .expect("gpus")
        .iter()
        .filter(|g| g["node"] == "gpu-node")
        .collect();
    assert_eq!(real.len(), real_gpus, "{text}");
    let (text, metrics) = fleet.tool(
        "claw_multi_invoke",
        json!({"command": "gpu.metrics", "nodes": ["gpu-node"]}),
    );
    assert!(text.contains("1 succeeded"), "{text}");
    let readings = metrics["results"][0]["result"]["gpus"]
        .as_array()
        .expect("readings");
    assert_eq!(readings.len(), real_gpus, "{metrics}");
    for reading in readings {
        assert!(reading["utilization_gpu_pct"].is_u64(), "{reading}");
        assert!(reading["temperature_c"].is_u64(), "{reading}");
        assert!(reading["throttle_reasons"].is_array(), "{reading}");
    }
}

#[test]
fn a_canary_of_a_new_image_is_watched_then_promoted() {
    let Some((node24, openclaw, image)) = gateway_parts() else {
        return;
    };
    let _turn = one_fleet();
    // The new version: the same image under a new tag, made here (nothing is pulled).
    let new_image = "clawbernetes/busybox:canary-v2";
    let tagged = std::process::Command::new("docker")
        .args(["tag", &image, new_image])
        .status()
        .expect("docker tag");
    assert!(tagged.success(), "tagging the new version");
    let fleet = AgentFleet::start(node24, openclaw, &n1_n2_n3([1, 1, 1]), 1, json!({}));
    // Each answer carries the fields the plugin reads.
    let fields = plugin_fields();

    let (text, created) = fleet.tool(
        "claw_deployment_create",
        json!({
            "name": "inference",
            "image": image,
            "replicas": 3,
            "command": SERVE,
            "strategy": "canary",
            "canary_steps": [33],
            "health_command": ["true"],
        }),
    );
    assert!(
        text.contains("created deployment inference revision 1: 3 replicas"),
        "{text}"
    );
    check_contract(&fields, "deploy.create", &created);
    let status = |want: &dyn Fn(&str) -> bool, what: &str| {
        eventually(Duration::from_secs(90), what, || {
            let (text, details) =
                fleet.tool("claw_deployment_status", json!({"name": "inference"}));
            want(&text).then_some((text, details))
        })
    };
    let (text, ready) = status(&|t| t.contains("3 of 3 ready"), "3 replicas ready");
    assert_eq!(text.matches(", running, healthy").count(), 3, "{text}");
    check_contract(&fields, "deploy.status", &ready);

    // "Update the inference server to the new model version, but do it safely."
    let (text, updated) = fleet.tool(
        "claw_deployment_update",
        json!({"name": "inference", "image": new_image}),
    );
    assert!(
        text.contains("revision 2") && text.contains("canary at 33%"),
        "{text}"
    );
    check_contract(&fields, "deploy.update", &updated);
    let (text, details) = status(
        &|t| {
            t.matches("revision 2, running, healthy").count() == 1
                && t.matches("revision 1, running, healthy").count() == 2
                && t.matches("\n- on ").count() == 3
        },
        "the canary beside the stable version (1 of 3)",
    );
    let revisions: Vec<u64> = details["replicas"]
        .as_array()
        .expect("replicas")
        .iter()
        .filter_map(|r| r["revision"].as_u64())
        .collect();
    assert_eq!(
        (
            revisions.iter().filter(|r| **r == 2).count(),
            revisions.len()
        ),
        (1, 3),
        "one canary of three: {text}"
    );

    // The canary looks good: promote it to every replica.
    let (text, promoted) = fleet.tool("claw_deployment_promote", json!({"name": "inference"}));
    assert!(text.contains("canary promoted to all"), "{text}");
    check_contract(&fields, "deploy.promote", &promoted);
    let (text, details) = status(
        &|t| t.contains("3 of 3 ready") && !t.contains("revision 1,"),
        "every replica on the new version",
    );
    assert_eq!(details["spec"]["template"]["image"], new_image, "{text}");
    let (text, listed) = fleet.tool("claw_deployments", json!({}));
    assert!(
        text.contains("1 deployment") && text.contains(new_image),
        "{text}"
    );
    check_contract(&fields, "deploy.list", &listed);
    // Back to the canary on request: a new revision with the earlier spec.
    let (text, rolled) = fleet.tool("claw_deployment_rollback", json!({"name": "inference"}));
    assert!(
        text.contains("revision 4") && text.contains("canary at 33%"),
        "{text}"
    );
    check_contract(&fields, "deploy.rollback", &rolled);
    let (text, deleted) = fleet.tool("claw_deployment_delete", json!({"name": "inference"}));
    assert!(text.contains("deleted deployment inference"), "{text}");
    check_contract(&fields, "deploy.delete", &deleted);
    let _ = std::process::Command::new("docker")
        .args(["rmi", new_image])
        .status();
}

/// The body of `GET path` at `addr` when it is answered 200, else `None`.
fn ok_body(addr: &str, path: &str) -> Option<String> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: inference\r\n\r\n").ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    (head.split(' ').nth(1) == Some("200")).then(|| body.to_owned())
}

/// "Update the inference server to the new model version, but do it safely", as the seed tells
/// it: the server is reached through a service and an ingress rule on n1; the agent deploys it
/// as a canary watched on that service, then updates it. The new version takes 10 % of the
/// requests, the status shows both versions' requests, error rates and p99 latency, and the
/// fleet promotes it to 50 % and then to every replica by itself.
#[test]
fn a_canary_takes_a_share_of_the_traffic_and_is_promoted_on_its_latency_and_errors() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let Some((node24, openclaw, image)) = gateway_parts() else {
        return;
    };
    let _turn = one_fleet();
    let specs = vec![
        NodeSpec::new("n1", 1).edge(),
        NodeSpec::new("n2", 1),
        NodeSpec::new("n3", 1),
    ];
    let fleet = AgentFleet::start(node24, openclaw, &specs, 1, json!({}));
    let fields = plugin_fields();
    let listener = std::fs::read_to_string(fleet.nodes[0].cli.data_dir().join("ingress.addr"))
        .expect("n1's ingress listener");

    let (text, _) = fleet.tool(
        "claw_service_create",
        json!({"name": "inference", "selector": {"clawbernetes-deployment": "inference"}, "port": 8080}),
    );
    assert!(text.contains("created service inference"), "{text}");
    let (text, _) = fleet.tool(
        "claw_ingress_create",
        json!({"name": "inference", "node": "n1", "host": "*", "path": "/", "service": "inference"}),
    );
    assert!(text.contains("created ingress"), "{text}");
    // An HTTP server whose /cgi-bin/model answers the model version it runs.
    let script = "mkdir -p /www/cgi-bin; \
        printf '#!/bin/sh\\necho \"Content-Type: text/plain\"\\necho\\necho \"%s\"\\n' \"$MODEL\" \
          > /www/cgi-bin/model; chmod +x /www/cgi-bin/model; exec httpd -f -p 8080 -h /www";
    let (text, _) = fleet.tool(
        "claw_deployment_create",
        json!({
            "name": "inference",
            "image": image,
            "replicas": 2,
            "command": ["sh", "-c", script],
            "env": {"MODEL": "v1"},
            "strategy": "canary",
            "canary_steps": [10, 50],
            "canary_service": "inference",
            "canary_interval_s": 5,
            "canary_max_error_percent": 1,
            "canary_max_p99_ms": 2000,
            "canary_min_requests": 20,
        }),
    );
    assert!(
        text.contains("created deployment inference revision 1"),
        "{text}"
    );
    let model = |listener: &str| -> Option<String> {
        let body = ok_body(listener, "/cgi-bin/model")?;
        body.lines().find(|l| l.starts_with('v')).map(str::to_owned)
    };
    let first = eventually(Duration::from_secs(90), "v1 through n1's ingress", || {
        model(&listener)
    });
    assert_eq!(first, "v1");

    // The users' requests, from here on.
    let stop = Arc::new(AtomicBool::new(false));
    let answers: Arc<Mutex<Vec<String>>> = Arc::default();
    let client = {
        let (stop, answers, listener) = (Arc::clone(&stop), Arc::clone(&answers), listener.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some(answer) = model(&listener) {
                    answers
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(answer);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let status = |want: &dyn Fn(&str) -> bool, what: &str| {
        eventually(Duration::from_secs(120), what, || {
            let (text, details) =
                fleet.tool("claw_deployment_status", json!({"name": "inference"}));
            want(&text).then_some((text, details))
        })
    };

    // "Update the inference server to the new model version, but do it safely."
    let (text, _) = fleet.tool(
        "claw_deployment_update",
        json!({"name": "inference", "image": image, "env": {"MODEL": "v2"}}),
    );
    assert!(
        text.contains("revision 2") && text.contains("canary at 10%"),
        "{text}"
    );
    let (text, details) = status(
        &|t| {
            t.contains("canary on service inference: 10% of traffic to the new revision; new: ")
                && !t.contains("new: 0 requests")
        },
        "10 % of the traffic on v2, measured",
    );
    check_contract(&fields, "deploy.status", &details);
    assert!(text.contains("p99 ") && text.contains("% errors"), "{text}");
    let (text, _) = status(
        &|t| t.contains("canary: step 1 (10 % of traffic) passed, now at 50 %"),
        "the fleet promoting v2 to 50 %",
    );
    assert!(
        text.contains("50% of traffic to the new revision"),
        "{text}"
    );
    let (text, _) = status(
        &|t| {
            t.contains("100% of traffic to the new revision")
                && t.contains("2 of 2 ready")
                && !t.contains("revision 1,")
        },
        "v2 on every replica",
    );
    assert!(!text.contains("failed"), "{text}");
    stop.store(true, Ordering::Relaxed);
    client.join().expect("the client");
    let answers = answers.lock().unwrap_or_else(PoisonError::into_inner);
    let v2 = answers.iter().filter(|a| *a == "v2").count();
    assert!(
        v2 > 0 && v2 < answers.len(),
        "the users met both versions while it rolled: {v2} of {}",
        answers.len()
    );
    assert!(
        answers.iter().all(|a| a == "v1" || a == "v2"),
        "{answers:?}"
    );
}

/// "The inference server needs our HF token, and this config": the agent stores the token as a
/// secret sealed to n1 and n2 and the settings as a config, deploys with both, and rotates the
/// token later; the replicas run only on n1 and n2 and roll onto the new token, and no tool's
/// answer (text or details) holds either token.
#[test]
fn a_secret_and_a_config_reach_a_deployment_and_a_rotation_rolls_it() {
    let Some((node24, openclaw, image)) = gateway_parts() else {
        return;
    };
    let _turn = one_fleet();
    let fleet = AgentFleet::start(node24, openclaw, &n1_n2_n3([1, 1, 1]), 1, json!({}));
    let fields = plugin_fields();
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let (first, second) = (
        format!("hf_first_{stamp:x}"),
        format!("hf_second_{stamp:x}"),
    );
    let mut answers: Vec<(String, Value)> = Vec::new();

    let (text, created) = fleet.tool(
        "claw_secret_create",
        json!({"name": "hf", "data": {"token": first}, "nodes": ["n1", "n2"]}),
    );
    assert!(
        text.contains("created secret hf revision 1: keys token; sealed to 2 nodes"),
        "{text}"
    );
    check_contract(&fields, "secret.create", &created);
    answers.push((text, created));
    let (text, config) = fleet.tool(
        "claw_config_create",
        json!({"name": "serving", "data": {"batch": "8"}}),
    );
    assert!(
        text.contains("created config serving revision 1: keys batch"),
        "{text}"
    );
    check_contract(&fields, "config.create", &config);

    let (text, deployed) = fleet.tool(
        "claw_deployment_create",
        json!({
            "name": "llm",
            "image": image,
            "replicas": 2,
            "command": SERVE,
            "env_from": {"HF_TOKEN": "secret:hf:token", "BATCH": "config:serving:batch"},
            "files": ["secret:hf:/run/secrets/hf"],
        }),
    );
    assert!(text.contains("created deployment llm revision 1"), "{text}");
    answers.push((text, deployed));
    let holding = |value: &str| -> Vec<&str> {
        ["n1", "n2", "n3"]
            .into_iter()
            .flat_map(|node| {
                fleet
                    .running_containers(node)
                    .into_iter()
                    .map(move |container| (node, container))
            })
            .filter(|(_, container)| {
                let seen = std::process::Command::new("docker")
                    .args(["exec", container, "sh", "-c"])
                    .arg("echo \"$HF_TOKEN $BATCH\"; cat /run/secrets/hf/token")
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                seen == format!("{value} 8\n{value}")
            })
            .map(|(node, _)| node)
            .collect()
    };
    let mut nodes = eventually(
        Duration::from_secs(90),
        "two replicas with the token",
        || {
            let nodes = holding(&first);
            (nodes.len() == 2).then_some(nodes)
        },
    );
    nodes.sort_unstable();
    assert_eq!(
        nodes,
        ["n1", "n2"],
        "replicas only where the secret is sealed"
    );

    // "Rotate the token."
    let (text, rotated) = fleet.tool(
        "claw_secret_rotate",
        json!({"name": "hf", "data": {"token": second}}),
    );
    assert!(
        text.contains("rotated secret hf revision 2") && text.contains("rolled deployments llm"),
        "{text}"
    );
    check_contract(&fields, "secret.rotate", &rotated);
    answers.push((text, rotated));
    eventually(
        Duration::from_secs(120),
        "the replicas on the new token",
        || (holding(&second).len() == 2 && holding(&first).is_empty()).then_some(()),
    );

    for (tool, args, command) in [
        (
            "claw_secret_describe",
            json!({"name": "hf"}),
            "secret.describe",
        ),
        ("claw_secrets", json!({}), "secret.list"),
        ("claw_config_get", json!({"name": "serving"}), "config.get"),
        ("claw_configs", json!({}), "config.list"),
        (
            "claw_deployment_status",
            json!({"name": "llm"}),
            "deploy.status",
        ),
    ] {
        let (text, details) = fleet.tool(tool, args);
        check_contract(&fields, command, &details);
        answers.push((text, details));
    }
    let (text, _) = fleet.tool("claw_deployment_delete", json!({"name": "llm"}));
    assert!(text.contains("deleted deployment llm"), "{text}");
    let (text, deleted) = fleet.tool("claw_secret_delete", json!({"name": "hf"}));
    assert!(text.contains("deleted secret hf (revision 3)"), "{text}");
    check_contract(&fields, "secret.delete", &deleted);
    let (_, deleted) = fleet.tool("claw_config_delete", json!({"name": "serving"}));
    check_contract(&fields, "config.delete", &deleted);
    let shown = serde_json::to_string(&answers).expect("answers");
    for token in [&first, &second] {
        assert!(!shown.contains(token.as_str()), "an answer shows the token");
    }
}
