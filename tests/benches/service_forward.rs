//! What a service forward costs against reaching the container directly: two `clawnode run`
//! processes on loopback; an HTTP server (busybox httpd) in a container on the second serves a
//! 32 MiB file and a 6-byte page; the first opens `service.forward` to it and serves it over
//! HTTP through an ingress rule. Measured on the same run, through the forward (local TCP →
//! libp2p stream over Noise and Yamux → the far node → the container), through the ingress (the
//! same, with HTTP/1.1 parsed and proxied at the first node) and directly to the container's
//! address:
//! - throughput: 5 downloads of the 32 MiB file, MB/s (best and median);
//! - round trip: 50 GETs of the small page, each on a new connection, p50 and p95.
//!
//! ```text
//! scripts/test.sh's setup (Docker and the test image), then
//! cargo build --release --workspace --bins
//! CLAW_TEST_IMAGE=clawbernetes/busybox:test cargo bench -p claw-tests --bench service_forward
//! ```

use std::io::{Read as _, Write as _};
use std::time::{Duration, Instant};

use claw_tests::deployments::Member;
use claw_tests::eventually;
use serde_json::json;

const DOWNLOADS: usize = 5;
const PINGS: usize = 50;
const BLOB_MIB: usize = 32;

/// `GET path` on a new connection to `addr`: the body's length and how long it took.
fn get(addr: &str, path: &str) -> (usize, Duration) {
    let started = Instant::now();
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").expect("request");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("answer");
    let took = started.elapsed();
    let body = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(0, |at| answer.len() - at - 4);
    (body, took)
}

fn percentile(samples: &mut [f64], share: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    let index = ((samples.len() as f64 - 1.0) * share).round() as usize;
    samples[index]
}

fn measure(addr: &str) -> (f64, f64, f64, f64) {
    let mut rates: Vec<f64> = (0..DOWNLOADS)
        .map(|_| {
            let (bytes, took) = get(addr, "/blob");
            assert_eq!(bytes, BLOB_MIB << 20, "the whole file");
            bytes as f64 / 1e6 / took.as_secs_f64()
        })
        .collect();
    let mut pings: Vec<f64> = (0..PINGS)
        .map(|_| get(addr, "/").1.as_secs_f64() * 1000.0)
        .collect();
    let best = rates.iter().copied().fold(0.0, f64::max);
    (
        best,
        percentile(&mut rates, 0.5),
        percentile(&mut pings, 0.5),
        percentile(&mut pings, 0.95),
    )
}

fn main() {
    let Ok(image) = std::env::var("CLAW_TEST_IMAGE") else {
        eprintln!("service_forward: skipped, CLAW_TEST_IMAGE names no local test image");
        return;
    };
    // The forwarder also serves HTTP for ingress rules.
    let mut forwarder = Member::new(None);
    forwarder.cli.ok(&["configure", "--ingress", "127.0.0.1:0"]);
    forwarder.start(&[]);
    let mut server = Member::new(Some(&forwarder.peer_id));
    server.start(&forwarder.joinable());
    let (forwarder, server) = (&forwarder, &server);
    eventually(
        Duration::from_secs(60),
        "the members to see each other",
        || (forwarder.sees(&server.peer_id) && server.sees(&forwarder.peer_id)).then_some(()),
    );
    let script = format!(
        "mkdir -p /www && echo hello > /www/index.html && \
         dd if=/dev/zero of=/www/blob bs=1048576 count={BLOB_MIB} 2>/dev/null && \
         exec httpd -f -p 8080 -h /www"
    );
    let run = server
        .invoke(
            "workload.run",
            &json!({"image": image, "command": ["sh", "-c", script], "labels": {"app": "bench"}}),
        )
        .expect("workload.run");
    let workload = run["id"].as_str().expect("id").to_owned();
    forwarder
        .invoke(
            "service.create",
            &json!({"name": "bench", "spec": {"selector": {"app": "bench"}, "port": 8080}}),
        )
        .expect("service.create");
    let container = eventually(Duration::from_secs(30), "the container", || {
        let inspected = server
            .invoke("workload.inspect", &json!({"workload": workload}))
            .ok()?;
        inspected["container"]["id"].as_str().map(str::to_owned)
    });
    let output = std::process::Command::new("docker")
        .args([
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            &container,
        ])
        .output()
        .expect("docker inspect");
    let direct = format!("{}:8080", String::from_utf8_lossy(&output.stdout).trim());
    eventually(Duration::from_secs(30), "the server", || {
        std::net::TcpStream::connect(&direct).ok()
    });
    let forward = eventually(Duration::from_secs(30), "the forward", || {
        forwarder
            .invoke("service.forward", &json!({"service": "bench"}))
            .ok()
    });
    let forwarded = forward["listen"].as_str().expect("listen").to_owned();
    eventually(
        Duration::from_secs(60),
        "an answer through the forward",
        || (get(&forwarded, "/").0 == 6).then_some(()),
    );

    forwarder
        .invoke(
            "ingress.create",
            &json!({"name": "bench", "spec": {"node": forwarder.peer_id, "host": "*", "path": "/", "service": "bench"}}),
        )
        .expect("ingress.create");
    let ingress = std::fs::read_to_string(forwarder.cli.data_dir().join("ingress.addr"))
        .expect("the ingress listener");
    eventually(
        Duration::from_secs(60),
        "an answer through the ingress",
        || (get(&ingress, "/").0 == 6).then_some(()),
    );

    let (direct_best, direct_median, direct_p50, direct_p95) = measure(&direct);
    let (fwd_best, fwd_median, fwd_p50, fwd_p95) = measure(&forwarded);
    let (ing_best, ing_median, ing_p50, ing_p95) = measure(&ingress);
    println!(
        "service_forward: {DOWNLOADS} downloads of {BLOB_MIB} MiB, {PINGS} small GETs each on a new connection"
    );
    println!(
        "direct to the container   {direct_best:8.1} MB/s best, {direct_median:8.1} MB/s median; round trip p50 {direct_p50:.2} ms, p95 {direct_p95:.2} ms"
    );
    println!(
        "through service.forward   {fwd_best:8.1} MB/s best, {fwd_median:8.1} MB/s median; round trip p50 {fwd_p50:.2} ms, p95 {fwd_p95:.2} ms"
    );
    println!(
        "through the ingress       {ing_best:8.1} MB/s best, {ing_median:8.1} MB/s median; round trip p50 {ing_p50:.2} ms, p95 {ing_p95:.2} ms"
    );
    println!(
        "forwarded / direct        {:.2}× throughput; +{:.2} ms round trip (p50)",
        fwd_median / direct_median,
        fwd_p50 - direct_p50
    );
    println!(
        "ingress / direct          {:.2}× throughput; +{:.2} ms round trip (p50)",
        ing_median / direct_median,
        ing_p50 - direct_p50
    );
    server
        .invoke(
            "workload.stop",
            &json!({"workload": workload, "remove": true}),
        )
        .expect("stop");
}
