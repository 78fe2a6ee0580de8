//! Bid → running container on loopback, by phase, against `docker run` of the same image in the
//! same run.
//!
//! Separate processes: the embedded chain (`clawnode localnet`), one provider with 8 simulated
//! GPUs and a buyer, on the real Docker Engine with the local test image. Each round bids for
//! one GPU with a workload (`market.bid`: match, signed bid, provider-signed terms, escrow funded
//! and verified on chain, container started on the reserved GPU), then cancels and settles the
//! lease (timed separately). The phases are the buyer node's own measurements; "CLI wall" adds
//! the `clawnode invoke` process around it.
//!
//! ```text
//! cargo build --release -p clawnode
//! CLAW_TEST_IMAGE=clawbernetes/busybox:test cargo bench -p claw-tests --bench bid_to_running
//! ```

use std::process::Command;
use std::time::{Duration, Instant};

use claw_tests::{Clawnode, Localnet, RunningNode, eventually, run_with_deadline};
use serde_json::{Value, json};

const ROUNDS: usize = 20;
/// The workload: runs until stopped, and stops at once on SIGTERM.
const SERVE: [&str; 3] = ["sh", "-c", "trap 'exit 0' TERM; sleep 300 & wait"];

fn invoke(node: &Clawnode, command: &str, params: &Value) -> Value {
    let params = params.to_string();
    node.ok(&[
        "invoke",
        command,
        "--params",
        &params,
        "--timeout-ms",
        "120000",
    ])
    .json()
}

fn percentile(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    let rank = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[rank.min(samples.len() - 1)]
}

fn main() {
    let Ok(image) = std::env::var("CLAW_TEST_IMAGE") else {
        eprintln!(
            "bid_to_running needs CLAW_TEST_IMAGE (a local image with busybox) and the Docker Engine; scripts/test.sh prepares both"
        );
        std::process::exit(2);
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let buyer_cli = Clawnode::new(&dir.path().join("buyer"));
    buyer_cli.ok(&["init"]);
    let localnet = Localnet::start(&buyer_cli);
    let market = format!("arbiter = {:?}\n", localnet.faucet);
    let provider_cli = Clawnode::new(&dir.path().join("provider"));
    provider_cli.ok(&["init", "--simulated-gpu", "NVIDIA H100 80GB HBM3:8:81559"]);
    provider_cli.configure_market(
        &format!("{market}price_per_gpu_hour = \"1\"\n"),
        &localnet.chain_config(),
    );
    buyer_cli.configure_market(&market, "");
    buyer_cli.ok(&["wallet", "airdrop", "--sol", "50", "--molt", "1000"]);
    let provider = RunningNode::start(&provider_cli, &[]);
    let _buyer = RunningNode::start(&buyer_cli, &provider.listen_addrs);
    eventually(Duration::from_secs(30), "the provider's offer", || {
        let offers = invoke(&buyer_cli, "market.offers", &json!({}));
        (offers["offers"].as_array()?.len() == 1).then_some(())
    });
    let bid = json!({
        "models": ["NVIDIA H100 80GB HBM3"],
        "gpus": 1,
        "hours": 1,
        "max_price": "1",
        "accept_simulated": true,
        "workload": {"image": image, "command": SERVE},
    });

    let phases = [
        "match",
        "lease_request",
        "escrow_funding",
        "workload_start",
        "total",
    ];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); phases.len()];
    let (mut wall, mut settle) = (Vec::new(), Vec::new());
    for round in 0..=ROUNDS {
        let started = Instant::now();
        let answer = invoke(&buyer_cli, "market.bid", &bid);
        let elapsed = started.elapsed().as_secs_f64() * 1000.0;
        assert_eq!(answer["lease"]["state"], "running", "{answer}");
        let lease = answer["lease"]["lease_id"]
            .as_str()
            .expect("lease")
            .to_owned();
        let started = Instant::now();
        let settled = invoke(
            &buyer_cli,
            "market.lease.cancel",
            &json!({"lease_id": lease}),
        );
        let settle_ms = started.elapsed().as_secs_f64() * 1000.0;
        assert_eq!(settled["state"], "settled", "{settled}");
        if round == 0 {
            continue; // warm-up: first image use, first ATA creation
        }
        for (phase, series) in phases.iter().zip(&mut samples) {
            series.push(answer["phases_ms"][phase].as_f64().expect("phase"));
        }
        wall.push(elapsed);
        settle.push(settle_ms);
    }

    let mut docker = Vec::new();
    for _ in 0..ROUNDS {
        let started = Instant::now();
        let output = run_with_deadline(
            Command::new("docker")
                .args(["run", "-d", &image])
                .args(SERVE),
            Duration::from_secs(60),
        );
        docker.push(started.elapsed().as_secs_f64() * 1000.0);
        assert!(output.status.success(), "docker run failed");
        let id = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        let _ = run_with_deadline(
            Command::new("docker").args(["rm", "-f", &id]),
            Duration::from_secs(60),
        );
    }

    println!("bid → running container, {ROUNDS} rounds after one warm-up (ms)");
    println!("{:<34} {:>9} {:>9}", "phase", "p50", "p95");
    let row = |name: &str, series: &mut Vec<f64>| {
        println!(
            "{name:<34} {:>9.3} {:>9.3}",
            percentile(series, 0.5),
            percentile(series, 0.95)
        );
    };
    for (phase, series) in phases.iter().zip(&mut samples) {
        row(phase, series);
    }
    row("CLI wall (clawnode invoke)", &mut wall);
    row("cancel + settle on chain", &mut settle);
    row("baseline: docker run -d (CLI)", &mut docker);
}
