//! `clawnode up` starts a whole local fleet (the chain, providers, a funded buyer) that a user
//! can bid on at once, stops every process it started on SIGTERM, and a second run reuses the
//! first's chain, wallets and identities.

use std::io::BufRead as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use claw_tests::{Clawnode, free_port, http_get, workspace_binary};
use serde_json::Value;

struct Up(Child);

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `clawnode up` and waits for its ready line.
fn up(dir: &std::path::Path, port: u16) -> (Up, Value) {
    let mut child = Command::new(workspace_binary("clawnode"))
        .arg("--data-dir")
        .arg(dir)
        .args([
            "--json",
            "up",
            "--nodes",
            "2",
            "--rpc-port",
            &port.to_string(),
        ])
        .env_remove("CLAWNODE_DATA_DIR")
        .env(
            "RUST_LOG",
            std::env::var("CLAW_TEST_NODE_LOG").unwrap_or_else(|_| "warn".to_owned()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("clawnode up");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let up = Up(child);
    let line = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("clawnode up reports its fleet");
    let ready: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
    (up, ready)
}

fn alive(pid: u64) -> bool {
    Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// SIGTERM, then waits for a clean exit; answers the pids `up` had started.
fn stop(mut up: Up, ready: &Value) -> Vec<u64> {
    let pid = up.0.id().to_string();
    Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok(Some(status)) = up.0.try_wait() {
            assert!(status.success(), "clawnode up exited with {status}");
            break;
        }
        assert!(Instant::now() < deadline, "clawnode up did not stop");
        std::thread::sleep(Duration::from_millis(100));
    }
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
    let port = free_port();
    let (first, ready) = up(&fleet, port);
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

    let pids = stop(first, &ready);
    assert_eq!(pids.len(), 4, "chain, two nodes and the buyer: {ready}");
    std::thread::sleep(Duration::from_millis(500));
    for pid in &pids {
        assert!(!alive(*pid), "process {pid} outlived clawnode up");
    }

    // Again: the same chain (its mint), the same wallets, no second airdrop.
    let (second, again) = up(&fleet, port);
    assert_eq!(again["molt_mint"], mint.as_str());
    assert_eq!(again["buyer"]["wallet"]["molt"], "1000");
    assert_eq!(again["buyer"]["peer_id"], ready["buyer"]["peer_id"]);
    for pid in stop(second, &again) {
        assert!(!alive(pid), "process {pid} outlived clawnode up");
    }
}
