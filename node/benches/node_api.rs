//! Node agent benchmarks, against a real `clawnode run` process and the real Docker Engine:
//!
//! 1. local control API invoke throughput with 100 concurrent clients (`node.capabilities` and
//!    `gpu.list`, each audited to the store);
//! 2. `workload.run` to a running container, against `docker run -d` of the same image measured
//!    in the same run (target ≤ 1.1×), and the same with the tenant profile (its own network and
//!    firewall rules made, included; target ≤ 1.2×), with what Docker alone takes for a container
//!    on a network of its own (`docker network create` + `docker run -d --network`) beside it;
//! 3. where NVML loads, `gpu.metrics` against one `nvidia-smi --query-gpu` call (target ≥ 50×).
//!
//! Run with `cargo bench -p clawnode --bench node_api` (or `scripts/bench.sh node`). Needs the
//! Docker Engine and an image (`CLAW_TEST_IMAGE`, default `clawbernetes/busybox:test`, which
//! `scripts/test.sh` builds).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clawnode::control::{ControlClient, InvokeBody};
use serde_json::{Value, json};

const CLIENTS: usize = 100;
const THROUGHPUT_SECS: u64 = 5;
const RUNS: usize = 15;

struct NodeProcess {
    child: Child,
    data_dir: PathBuf,
}

impl NodeProcess {
    fn start(root: &Path) -> Self {
        let binary = env!("CARGO_BIN_EXE_clawnode");
        let data_dir = root.join("node");
        let init = Command::new(binary)
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["init", "--simulated-gpu", "NVIDIA H100 80GB HBM3:8:81559"])
            .output()
            .expect("clawnode init");
        assert!(
            init.status.success(),
            "{}",
            String::from_utf8_lossy(&init.stderr)
        );
        let child = Command::new(binary)
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--json", "run", "--listen", "/ip4/127.0.0.1/tcp/0"])
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("clawnode run");
        let deadline = Instant::now() + Duration::from_secs(30);
        while ControlClient::connect(&data_dir).is_err() {
            assert!(Instant::now() < deadline, "the node did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, data_dir }
    }

    fn client(&self) -> ControlClient {
        ControlClient::connect(&self.data_dir).expect("control API")
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn invoke(client: &ControlClient, command: &str, params: Value) -> Value {
    client
        .invoke(&InvokeBody {
            command: command.to_owned(),
            params,
            node: None,
            deadline_ms: Some(60_000),
            idempotency_key: None,
            api_key: None,
        })
        .unwrap_or_else(|e| panic!("{command}: {e}"))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn throughput(node: &NodeProcess, command: &str) {
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let latencies: Vec<Duration> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let client = node.client();
                let stop = &stop;
                scope.spawn(move || {
                    let mut latencies = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let t = Instant::now();
                        invoke(&client, command, Value::Null);
                        latencies.push(t.elapsed());
                    }
                    latencies
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs(THROUGHPUT_SECS));
        stop.store(true, Ordering::Relaxed);
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("worker"))
            .collect()
    });
    let elapsed = started.elapsed();
    let mut sorted = latencies;
    sorted.sort();
    println!(
        "control API {command:<18} {CLIENTS} clients: {:>7.0} invokes/s  p50 {:.2} ms  p99 {:.2} ms  ({} calls)",
        sorted.len() as f64 / elapsed.as_secs_f64(),
        ms(percentile(&sorted, 0.5)),
        ms(percentile(&sorted, 0.99)),
        sorted.len()
    );
}

fn docker(args: &[&str]) -> String {
    let output = Command::new("docker").args(args).output().expect("docker");
    assert!(
        output.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn workload_run_against_docker_run(node: &NodeProcess, image: &str) {
    let client = node.client();
    let mut ours = Vec::new();
    let mut tenants = Vec::new();
    let mut theirs = Vec::new();
    let mut theirs_networked = Vec::new();
    // Interleaved so that both see the same engine state; the first of each warms up.
    for i in 0..=RUNS {
        let t = Instant::now();
        let id = docker(&[
            "run",
            "-d",
            "--label",
            "clawbernetes-bench=1",
            image,
            "sleep",
            "300",
        ]);
        let docker_time = t.elapsed();
        let t = Instant::now();
        let record = invoke(
            &client,
            "workload.run",
            json!({"image": image, "command": ["sleep", "300"], "gpus": 1}),
        );
        let our_time = t.elapsed();
        assert_eq!(record["state"], "running");
        let t = Instant::now();
        let tenant = invoke(
            &client,
            "workload.run",
            json!({"image": image, "command": ["sleep", "300"], "gpus": 1, "isolation": "tenant"}),
        );
        let tenant_time = t.elapsed();
        assert_eq!(tenant["state"], "running", "{tenant}");
        let network = format!("clawbernetes-bench-{i}");
        let t = Instant::now();
        docker(&[
            "network",
            "create",
            "-o",
            &format!("com.docker.network.bridge.name=clb-{i}"),
            &network,
        ]);
        let networked = docker(&[
            "run",
            "-d",
            "--network",
            &network,
            "--label",
            "clawbernetes-bench=1",
            image,
            "sleep",
            "300",
        ]);
        let networked_time = t.elapsed();
        if i > 0 {
            theirs.push(docker_time);
            ours.push(our_time);
            tenants.push(tenant_time);
            theirs_networked.push(networked_time);
        }
        docker(&["rm", "-f", &networked]);
        docker(&["network", "rm", &network]);
        invoke(
            &client,
            "workload.stop",
            json!({"workload": tenant["id"], "remove": true, "timeout_secs": 1}),
        );
        docker(&["rm", "-f", &id]);
        invoke(
            &client,
            "workload.stop",
            json!({"workload": record["id"], "remove": true, "timeout_secs": 1}),
        );
    }
    ours.sort();
    tenants.sort();
    theirs.sort();
    theirs_networked.sort();
    let (ours_p50, theirs_p50) = (percentile(&ours, 0.5), percentile(&theirs, 0.5));
    let tenant_p50 = percentile(&tenants, 0.5);
    println!(
        "workload.run to running: p50 {:.1} ms (min {:.1}, max {:.1})",
        ms(ours_p50),
        ms(ours[0]),
        ms(ours[ours.len() - 1])
    );
    println!(
        "docker run -d          : p50 {:.1} ms (min {:.1}, max {:.1})",
        ms(theirs_p50),
        ms(theirs[0]),
        ms(theirs[theirs.len() - 1])
    );
    println!(
        "ratio (p50): {:.2}x  (target <= 1.10x, {RUNS} runs each, same image, interleaved)",
        ours_p50.as_secs_f64() / theirs_p50.as_secs_f64()
    );
    println!(
        "workload.run, tenant   : p50 {:.1} ms (min {:.1}, max {:.1})",
        ms(tenant_p50),
        ms(tenants[0]),
        ms(tenants[tenants.len() - 1])
    );
    println!(
        "tenant ratio (p50): {:.2}x  (target <= 1.20x, its network and rules included)",
        tenant_p50.as_secs_f64() / theirs_p50.as_secs_f64()
    );
    let networked_p50 = percentile(&theirs_networked, 0.5);
    println!(
        "docker network create + docker run -d --network: p50 {:.1} ms (min {:.1}, max {:.1}), {:.2}x docker run -d",
        ms(networked_p50),
        ms(theirs_networked[0]),
        ms(theirs_networked[theirs_networked.len() - 1]),
        networked_p50.as_secs_f64() / theirs_p50.as_secs_f64()
    );
    println!(
        "tenant against Docker's own network + run (p50): {:.2}x",
        tenant_p50.as_secs_f64() / networked_p50.as_secs_f64()
    );
}

fn gpu_metrics_against_nvidia_smi(node: &NodeProcess) {
    let client = node.client();
    let metrics = invoke(&client, "gpu.metrics", Value::Null);
    if let Some(reason) = metrics["nvml"]["unavailable"]["reason"].as_str() {
        println!("gpu.metrics vs nvidia-smi: SKIPPED, no NVIDIA GPU here ({reason})");
        return;
    }
    let mut ours = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        invoke(&client, "gpu.metrics", Value::Null);
        ours.push(t.elapsed());
    }
    let mut theirs = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let output = Command::new("nvidia-smi")
            .args([
                "--query-gpu=uuid,utilization.gpu,utilization.memory,memory.used,memory.total,temperature.gpu,power.draw,power.limit,clocks.gr,clocks.sm,clocks.mem,clocks_throttle_reasons.active,ecc.errors.uncorrected.volatile.total",
                "--format=csv,noheader",
            ])
            .output()
            .expect("nvidia-smi");
        assert!(output.status.success());
        theirs.push(t.elapsed());
    }
    ours.sort();
    theirs.sort();
    let (a, b) = (percentile(&ours, 0.5), percentile(&theirs, 0.5));
    println!(
        "gpu.metrics (control API, {} GPUs): p50 {:.2} ms; nvidia-smi --query-gpu: p50 {:.1} ms; {:.0}x faster (target >= 50x)",
        metrics["gpus"].as_array().map_or(0, Vec::len),
        ms(a),
        ms(b),
        b.as_secs_f64() / a.as_secs_f64()
    );
}

fn main() {
    // `cargo test --benches` runs bench binaries with `--bench` absent; do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let image =
        std::env::var("CLAW_TEST_IMAGE").unwrap_or_else(|_| "clawbernetes/busybox:test".to_owned());
    let root = tempfile::tempdir().expect("temp dir");
    let node = NodeProcess::start(root.path());
    throughput(&node, "node.capabilities");
    throughput(&node, "gpu.list");
    workload_run_against_docker_run(&node, &image);
    gpu_metrics_against_nvidia_smi(&node);
}
