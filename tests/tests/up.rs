//! `clawnode up` starts a whole local fleet (the chain, providers serving their metrics, a funded
//! buyer) that a user can bid on at once, stops every process it started on SIGTERM and leaves no
//! container behind, and a second run reuses the first's chain, wallets and identities.

use std::process::{Command, Stdio};
use std::time::Duration;

use claw_tests::{Clawnode, Up, free_port_pair, http_get, node_containers, required_part};
use serde_json::{Value, json};

fn alive(pid: u64) -> bool {
    Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Stops `up` cleanly; answers the pids it had started.
fn stop(up: Up, ready: &Value) -> Vec<u64> {
    up.stop();
    ready["pids"]
        .as_array()
        .expect("pids")
        .iter()
        .filter_map(|p| p["pid"].as_u64())
        .collect()
}

#[test]
fn one_command_starts_a_fleet_that_trades_and_stops_without_leftovers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let fleet = dir.path().join("fleet");
    let port = free_port_pair();
    let (first, ready) = Up::start(&fleet, 2, port);
    // How long it took is reported (speed is measured by benchmarks, not asserted here).
    assert!(ready["ready_ms"].is_u64(), "{ready}");
    let offers = ready["offers"].as_array().expect("offers");
    assert_eq!(offers.len(), 2, "{ready}");
    assert!(
        offers.iter().all(|o| o["simulated"] == true),
        "simulated GPUs are marked"
    );
    assert_eq!(ready["buyer"]["wallet"]["molt"], "1000");
    let mint = ready["molt_mint"].as_str().expect("mint").to_owned();

    // The buyer is usable from the CLI at once: a bid matches without paying.
    let buyer = Clawnode::new(&fleet.join("buyer"));
    let bid = buyer
        .ok(&[
            "--json",
            "market",
            "bid",
            "--model",
            "NVIDIA H100 80GB HBM3",
            "--max-price",
            "2",
            "--accept-simulated",
        ])
        .json();
    assert_eq!(bid["matched"], true, "{bid}");
    assert_eq!(ready["docker"]["reachable"], true, "{ready}");
    // The commands it suggests run as printed, from a shell whose PATH has no clawnode.
    let steps = ready["try"].as_array().expect("next steps");
    assert!(steps.len() >= 3, "{ready}");
    for step in steps {
        let step = step.as_str().expect("a command");
        let ran = claw_tests::run_with_deadline(
            std::process::Command::new("sh")
                .args(["-c", step])
                .env("PATH", "/usr/bin:/bin")
                .env("RUST_LOG", "warn"),
            Duration::from_secs(60),
        );
        assert!(
            ran.status.success(),
            "{step}: {}",
            String::from_utf8_lossy(&ran.stderr)
        );
    }
    // Every provider serves its metrics, its simulated GPUs counted as such.
    for node in ready["nodes"].as_array().expect("nodes") {
        let url = node["metrics"].as_str().expect("metrics URL");
        let addr = url
            .strip_prefix("http://")
            .and_then(|u| u.strip_suffix("/metrics"))
            .expect("http://ADDR/metrics");
        let scraped = http_get(addr, "/metrics");
        assert!(
            claw_tests::metric(
                &scraped,
                r#"clawnode_gpus{model="NVIDIA H100 80GB HBM3",simulated="true"}"#
            )
            .is_some_and(|n| n >= 1.0),
            "{scraped}"
        );
    }

    // The console it names answers with its page (the streams need the node's token).
    let console = ready["console"].as_str().expect("console URL");
    let addr = console
        .strip_prefix("http://")
        .and_then(|u| u.strip_suffix("/console"))
        .expect("http://ADDR/console");
    let page = http_get(addr, "/console");
    assert!(
        page.contains("<title>Clawbernetes console</title>"),
        "{page}"
    );

    // A workload on a provider, to be stopped and removed with the fleet.
    let provider = Clawnode::new(std::path::Path::new(
        ready["nodes"][0]["data_dir"].as_str().expect("data dir"),
    ));
    let provider_peer = ready["nodes"][0]["peer_id"]
        .as_str()
        .expect("peer")
        .to_owned();
    let image = required_part(
        "CLAW_TEST_IMAGE",
        "the Docker Engine and the local busybox test image",
    );
    let mut tenant_workload = None;
    if let Some(image) = &image {
        let started = provider
            .invoke(
                None,
                "workload.run",
                &json!({"image": image, "command": ["sh", "-c", "trap 'exit 0' TERM; sleep 300 & wait"]}),
            )
            .expect("workload.run on a provider");
        assert_eq!(started["state"], "running", "{started}");
        // And a tenant, as a lease would start it: its network and firewall rules go too.
        let tenant = provider
            .invoke(
                None,
                "workload.run",
                &json!({"image": image, "isolation": "tenant", "command": ["sleep", "300"]}),
            )
            .expect("a tenant workload.run on a provider");
        tenant_workload = tenant["id"].as_str().map(str::to_owned);
        let id = tenant_workload.as_deref().expect("tenant id");
        assert_eq!(claw_tests::tenant_networks(id), 1);
        assert!(claw_tests::tenant_firewall_rules(id) > 0);
    }

    let pids = stop(first, &ready);
    assert_eq!(
        pids.len(),
        5,
        "chain, arbiter, two nodes and the buyer: {ready}"
    );
    std::thread::sleep(Duration::from_millis(500));
    for pid in &pids {
        assert!(!alive(*pid), "process {pid} outlived clawnode up");
    }
    if image.is_some() {
        assert!(
            node_containers(&provider_peer, true).is_empty(),
            "no container is left behind"
        );
    }
    if let Some(id) = &tenant_workload {
        assert_eq!(
            claw_tests::tenant_networks(id),
            0,
            "no tenant network is left"
        );
        assert_eq!(
            claw_tests::tenant_firewall_rules(id),
            0,
            "no firewall rule is left"
        );
    }

    // Again: the same chain (its mint), the same wallets, no second airdrop.
    let (second, again) = Up::start(&fleet, 2, port);
    assert_eq!(again["molt_mint"], mint.as_str());
    assert_eq!(again["buyer"]["wallet"]["molt"], "1000");
    assert_eq!(again["buyer"]["peer_id"], ready["buyer"]["peer_id"]);
    for pid in stop(second, &again) {
        assert!(!alive(pid), "process {pid} outlived clawnode up");
    }
}

/// Without a Docker Engine, `up` still brings the fleet up and says so once, in one line, with
/// no node's warnings in its output (they go to the processes' logs).
#[test]
fn without_docker_up_says_so_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port_pair();
    let mut child = Command::new(claw_tests::workspace_binary("clawnode"))
        .arg("--data-dir")
        .arg(dir.path().join("fleet"))
        .args(["up", "--nodes", "2", "--rpc-port", &port.to_string()])
        .env_remove("CLAWNODE_DATA_DIR")
        .env(
            "DOCKER_HOST",
            format!("unix://{}/no-docker.sock", dir.path().display()),
        )
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("clawnode up");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        let mut seen = String::new();
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            seen.push_str(&line);
            seen.push('\n');
            if line.starts_with("Ctrl-C stops the fleet") {
                break;
            }
        }
        let _ = tx.send(seen);
    });
    let printed = rx.recv_timeout(Duration::from_secs(120));
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let output = child.wait_with_output().expect("up exits");
    let printed = printed.expect("up reports its fleet within 120 s");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        printed.matches("Docker is not reachable").count(),
        1,
        "{printed}"
    );
    assert!(printed.contains("Install Debian's docker.io"), "{printed}");
    assert!(
        !printed.contains("WARN") && !stderr.contains("WARN"),
        "no node's warnings in up's output:\n{printed}\n{stderr}"
    );
    let logs = dir.path().join("fleet/logs");
    assert!(logs.join("node-1.log").exists(), "{printed}");
}
