//! Twenty buyers bid at once on one provider with twenty free GPUs and a local image: how long
//! each waits from its bid to its running container, with and (in the same run) without another
//! lease's image pull stalled at the same time.
//!
//! Separate processes on loopback: the embedded chain, one provider with 21 simulated GPUs whose
//! Docker Engine is reached through a proxy that holds every image pull for 20 s (as a slow
//! registry would), and 21 buyer nodes. Round 1: the twenty bid at once. Round 2: the 21st buyer
//! first bids for an image the provider must pull (stalled), then the twenty bid at once while it
//! waits. Every lease is then cancelled and settled on chain. The figures are each buyer node's
//! own `phases_ms.total` (bid → running). Beside them, in the same run, what Docker alone takes
//! to start twenty containers at once through its CLI: on the default bridge, and each on a
//! network of its own as a lease's tenant container is.
//!
//! ```text
//! cargo build --release -p clawnode
//! CLAW_TEST_IMAGE=clawbernetes/busybox:test cargo bench -p claw-tests --bench concurrent_bids
//! ```

use std::time::{Duration, Instant};

use claw_tests::{Clawnode, DockerProxy, Localnet, RunningNode, eventually};
use serde_json::{Value, json};

const BUYERS: usize = 20;
/// The workload: runs until stopped, and stops at once on SIGTERM.
const SERVE: [&str; 3] = ["sh", "-c", "trap 'exit 0' TERM; sleep 300 & wait"];
/// How long the proxy holds an image pull.
const PULL_STALL: Duration = Duration::from_secs(20);

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

fn bid(image: &str) -> Value {
    json!({
        "models": ["NVIDIA H100 80GB HBM3"],
        "gpus": 1,
        "hours": 1,
        "max_price": "1",
        "accept_simulated": true,
        "workload": {"image": image, "command": SERVE},
    })
}

/// The twenty bid at once: each one's bid → running, ms, and its lease.
fn round(buyers: &[Clawnode], image: &str) -> (Vec<f64>, Vec<(usize, String)>) {
    let answers: Vec<Value> = std::thread::scope(|scope| {
        let handles: Vec<_> = buyers
            .iter()
            .map(|buyer| scope.spawn(|| invoke(buyer, "market.bid", &bid(image))))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a bid"))
            .collect()
    });
    let mut totals = Vec::new();
    let mut leases = Vec::new();
    for (i, answer) in answers.iter().enumerate() {
        assert_eq!(answer["lease"]["state"], "running", "buyer {i}: {answer}");
        totals.push(answer["phases_ms"]["total"].as_f64().expect("total"));
        leases.push((
            i,
            answer["lease"]["lease_id"]
                .as_str()
                .expect("lease")
                .to_owned(),
        ));
    }
    (totals, leases)
}

fn settle_all(buyers: &[Clawnode], leases: &[(usize, String)]) {
    std::thread::scope(|scope| {
        for (i, lease) in leases {
            let buyer = &buyers[*i];
            scope.spawn(move || {
                let settled = invoke(buyer, "market.lease.cancel", &json!({"lease_id": lease}));
                assert_eq!(settled["state"], "settled", "{settled}");
            });
        }
    });
}

/// Twenty `docker run -d` at once (each after `docker network create` of its own network when
/// `networked`): each one's wall time, ms. Everything is removed after.
fn docker_at_once(image: &str, networked: bool) -> Vec<f64> {
    let docker = |args: &[&str]| {
        let output = std::process::Command::new("docker")
            .args(args)
            .output()
            .expect("docker");
        assert!(
            output.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    };
    let started: Vec<(f64, String)> = std::thread::scope(|scope| {
        let runs: Vec<_> = (0..BUYERS)
            .map(|i| {
                scope.spawn(move || {
                    let t = Instant::now();
                    let network = format!("clawbernetes-anchor-{i}");
                    let mut args = vec!["run", "-d", "--label", "clawbernetes-bench=1"];
                    if networked {
                        let bridge = format!("com.docker.network.bridge.name=cla-{i}");
                        docker(&["network", "create", "-o", &bridge, &network]);
                        args.extend(["--network", network.as_str()]);
                    }
                    args.extend([image, "sleep", "300"]);
                    let id = docker(&args);
                    (t.elapsed().as_secs_f64() * 1000.0, id)
                })
            })
            .collect();
        runs.into_iter()
            .map(|r| r.join().expect("docker run"))
            .collect()
    });
    for (i, (_, id)) in started.iter().enumerate() {
        docker(&["rm", "-f", id]);
        if networked {
            docker(&["network", "rm", &format!("clawbernetes-anchor-{i}")]);
        }
    }
    started.into_iter().map(|(ms, _)| ms).collect()
}

fn main() {
    let Ok(image) = std::env::var("CLAW_TEST_IMAGE") else {
        eprintln!(
            "concurrent_bids needs CLAW_TEST_IMAGE (a local image with busybox) and the Docker Engine; scripts/test.sh prepares both"
        );
        std::process::exit(2);
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let holder = Clawnode::new(&dir.path().join("faucet"));
    holder.ok(&["init"]);
    let localnet = Localnet::start(&holder);
    holder.ok(&["wallet", "airdrop", "--sol", "10", "--molt", "1000"]);
    let market = format!("arbiter = {:?}\n", localnet.faucet);
    let docker = DockerProxy::with_slow_pulls(&dir.path().join("docker.sock"), PULL_STALL);
    let provider_cli = Clawnode::new(&dir.path().join("provider"));
    provider_cli.ok(&[
        "init",
        "--simulated-gpu",
        &format!("NVIDIA H100 80GB HBM3:{}:81559", BUYERS + 1),
    ]);
    provider_cli.configure_market(
        &format!("{market}price_per_gpu_hour = \"1\"\n"),
        &localnet.chain_config(),
    );
    provider_cli.edit_config(|text| {
        text.replace(
            "[workloads]\n",
            &format!(
                "[workloads]\ndocker_socket = {:?}\n",
                docker.path().display()
            ),
        )
    });
    let provider = RunningNode::start(&provider_cli, &[]);
    let buyers: Vec<Clawnode> = (0..=BUYERS)
        .map(|i| {
            let cli = Clawnode::new(&dir.path().join(format!("buyer-{i}")));
            cli.ok(&["init"]);
            cli.configure_market(&market, &localnet.chain_config());
            cli.ok(&["wallet", "airdrop", "--sol", "2"]);
            let address = cli.ok(&["wallet", "address"]).stdout.trim().to_owned();
            holder.ok(&["wallet", "transfer", &address, "20"]);
            cli
        })
        .collect();
    let _running: Vec<RunningNode> = buyers
        .iter()
        .map(|b| RunningNode::start(b, &provider.listen_addrs))
        .collect();
    for buyer in &buyers {
        eventually(Duration::from_secs(60), "the offer in every book", || {
            let offers = invoke(buyer, "market.offers", &json!({}));
            (offers["offers"].as_array()?.len() == 1).then_some(())
        });
    }
    let (slow, twenty) = buyers.split_last().expect("buyers");

    // Warm-up: the image used once, every buyer's token account created.
    let (_, leases) = round(twenty, &image);
    settle_all(twenty, &leases);
    std::thread::sleep(Duration::from_secs(3));

    let (mut alone, leases) = round(twenty, &image);
    settle_all(twenty, &leases);
    std::thread::sleep(Duration::from_secs(3));

    // The slow lease: its image must be pulled, and the pull is held.
    let stalled = std::thread::scope(|scope| {
        let stalled = scope.spawn(|| {
            let started = Instant::now();
            let answer = invoke(slow, "market.bid", &bid("clawbernetes/not-here:stalled"));
            (answer, started.elapsed())
        });
        std::thread::sleep(Duration::from_millis(1500));
        let (during, leases) = round(twenty, &image);
        settle_all(twenty, &leases);
        let (answer, waited) = stalled.join().expect("the stalled bid");
        (during, answer, waited)
    });
    let (mut during, answer, waited) = stalled;
    std::thread::sleep(Duration::from_secs(3));
    let mut docker_plain = docker_at_once(&image, false);
    std::thread::sleep(Duration::from_secs(3));
    let mut docker_networked = docker_at_once(&image, true);

    println!("{BUYERS} buyers bidding at once on one provider, bid → running (ms)");
    println!("{:<44} {:>9} {:>9} {:>9}", "", "p50", "p95", "max");
    let row = |name: &str, series: &mut Vec<f64>| {
        let max = series.iter().copied().fold(0.0, f64::max);
        println!(
            "{name:<44} {:>9.1} {:>9.1} {:>9.1}",
            percentile(series, 0.5),
            percentile(series, 0.95),
            max
        );
    };
    row("alone", &mut alone);
    row("while another lease's image pull is stalled", &mut during);
    row("docker run -d, 20 at once (CLI)", &mut docker_plain);
    row(
        "docker network create + run, 20 at once",
        &mut docker_networked,
    );
    println!(
        "the stalled lease answered after {:.1} s: {} ({})",
        waited.as_secs_f64(),
        answer["lease"]["state"],
        answer["lease"]["reason"].as_str().unwrap_or("")
    );
}
