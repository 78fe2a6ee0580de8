//! Mesh benchmarks on loopback, in-process: offer propagation, warm Kademlia queries, invoke
//! round trip, fleet status from the local view against an N-invoke fan-out, and the RSS of a
//! mesh.
//!
//! `cargo bench -p claw-mesh --bench mesh` (sizes: `CLAW_BENCH_SIZES=50,200`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use claw_attestation::{
    Envelope, GpuDevice, HardwareInventory, HostInfo, NodeIdentity, NvmlStatus, PayloadKind,
    SignedPayload, Validity,
};
use claw_mesh::{
    FleetMember, FleetView, InvokeRequest, MeshEvent, NodeAnnouncement, PeerId, TopicKind,
};
use common::{TestNode, test_config};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct BenchOffer {
    index: u64,
    model: String,
    price: u64,
}

impl SignedPayload for BenchOffer {
    const KIND: PayloadKind = PayloadKind::Offer;
}

/// Established connections per in-process node.
const MAX_CONNECTIONS_PER_NODE: u32 = 64;

/// A tiny deterministic generator (xorshift) so runs pick the same topology.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// CPU seconds (user + system) this process has used so far.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses): utime is the 12th, stime 13th.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    ticks / 100.0
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

async fn start_mesh(n: usize, rng: &mut Rng) -> Vec<TestNode> {
    let mut nodes: Vec<TestNode> = Vec::with_capacity(n);
    for i in 0..n {
        let mut config = test_config("localnet");
        config.announce_interval = Duration::from_secs(10);
        config.heartbeat_interval = Duration::from_millis(700);
        // All nodes share one process and its 20,000 file descriptors (the limit here): cap
        // each node's connections so 200 nodes fit.
        config.max_connections = MAX_CONNECTIONS_PER_NODE;
        if !nodes.is_empty() {
            for _ in 0..3.min(nodes.len()) {
                let seed = &nodes[rng.below(nodes.len())];
                if !config.bootstrap.contains(&seed.addr) {
                    config.bootstrap.push(seed.addr.clone());
                }
            }
        }
        nodes.push(TestNode::start(&format!("bench-{i}"), config).await);
        // Staggered joins: 200 simultaneous Kademlia bootstraps stall 2 cores.
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    nodes
}

/// Sequence numbers must keep rising across rounds: peers refuse older ones as replays.
static NEXT_ROUND_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1_000);

async fn propagation(nodes: &[TestNode], rate: u64, seconds: u64, rng: &mut Rng) -> String {
    let n = nodes.len();
    for node in nodes {
        node.events.lock().unwrap().clear();
    }
    let count = rate * seconds;
    let seq_base = NEXT_ROUND_SEQ.fetch_add(count, std::sync::atomic::Ordering::SeqCst);
    let gap = Duration::from_micros(1_000_000 / rate);
    let mut published: HashMap<u64, (Instant, PeerId)> = HashMap::new();
    let cpu_before = cpu_seconds();
    let wall_before = Instant::now();
    let mut tick = tokio::time::interval(gap);
    for index in 0..count {
        tick.tick().await;
        let publisher = &nodes[rng.below(n)];
        let offer = BenchOffer {
            index,
            model: "NVIDIA H100 80GB HBM3".into(),
            price: 1_200_000,
        };
        let envelope = Envelope::seal(
            &publisher.identity,
            seq_base + index,
            Validity::from_now(Duration::from_secs(120)),
            &offer,
        )
        .to_bytes();
        published.insert(index, (Instant::now(), publisher.peer_id()));
        if let Err(error) = publisher.handle.publish(TopicKind::Offers, envelope).await {
            // Counted as undelivered to every other node.
            eprintln!(
                "offer {index} not published by {}: {error}",
                publisher.peer_id()
            );
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cores_busy = (cpu_seconds() - cpu_before) / wall_before.elapsed().as_secs_f64();

    let mut all = Vec::new();
    let mut per_message: HashMap<u64, Vec<Duration>> = HashMap::new();
    let mut rejected: BTreeMap<String, usize> = BTreeMap::new();
    for node in nodes {
        for (at, event) in node.events.lock().unwrap().iter() {
            if let MeshEvent::GossipRejected { reason, .. } = event {
                let class = reason.split(':').next().unwrap_or_default().to_owned();
                *rejected.entry(class).or_default() += 1;
            }
            if let MeshEvent::Gossip {
                kind: TopicKind::Offers,
                envelope,
            } = event
                && let Ok(offer) = envelope.open::<BenchOffer>()
                && let Some((sent, _)) = published.get(&offer.index)
            {
                let latency = at.duration_since(*sent);
                all.push(latency);
                per_message.entry(offer.index).or_default().push(latency);
            }
        }
    }
    all.sort();
    if !rejected.is_empty() {
        eprintln!("rejected during propagation: {rejected:?}");
    }
    let expected = count as usize * (n - 1);
    let needed = ((n - 1) as f64 * 0.95).ceil() as usize;
    let mut to_95: Vec<Duration> = per_message
        .values_mut()
        .filter(|l| l.len() >= needed)
        .map(|l| {
            l.sort();
            l[needed - 1]
        })
        .collect();
    to_95.sort();
    format!(
        "| offer propagation, {n} nodes, {rate} offers/s for {seconds} s | delivery {}/{} ({:.2} %), p50 {}, p95 {}, p99 {}, 95 % of nodes reached in {} (median over offers); {:.2} cores busy |",
        all.len(),
        expected,
        100.0 * all.len() as f64 / expected as f64,
        ms(percentile(&all, 50.0)),
        ms(percentile(&all, 95.0)),
        ms(percentile(&all, 99.0)),
        ms(percentile(&to_95, 50.0)),
        cores_busy,
    )
}

async fn kademlia(nodes: &[TestNode], rng: &mut Rng) -> Vec<String> {
    let n = nodes.len();
    for i in 0..10 {
        let node = &nodes[rng.below(n)];
        if let Err(error) = node
            .handle
            .put_record(&format!("bench/{i}"), vec![7; 64])
            .await
        {
            eprintln!("put_record bench/{i} from {}: {error}", node.peer_id());
        }
    }
    let mut closest = Vec::new();
    let mut records = Vec::new();
    let queries = if n <= 50 { 20 } else { 5 };
    for round in 0..2 {
        for _ in 0..queries {
            let asker = &nodes[rng.below(n)];
            let target = nodes[rng.below(n)].peer_id();
            let started = Instant::now();
            let peers = asker.handle.closest_peers(target).await.expect("query");
            let elapsed = started.elapsed();
            if peers.is_empty() {
                eprintln!("no closest peers found from {}", asker.peer_id());
            }
            if round == 1 {
                closest.push(elapsed);
            }
            let asker = &nodes[rng.below(n)];
            let key = format!("bench/{}", rng.below(10));
            let started = Instant::now();
            let value = asker.handle.get_record(&key).await.expect("query");
            let elapsed = started.elapsed();
            if value.is_none() {
                eprintln!("record {key} not found from {}", asker.peer_id());
            }
            if round == 1 {
                records.push(elapsed);
            }
        }
    }
    closest.sort();
    records.sort();
    vec![
        format!(
            "| warm Kademlia get_closest_peers, {n} nodes ({queries} queries) | p50 {}, p95 {} |",
            ms(percentile(&closest, 50.0)),
            ms(percentile(&closest, 95.0))
        ),
        format!(
            "| warm Kademlia get_record, {n} nodes ({queries} queries) | p50 {}, p95 {} |",
            ms(percentile(&records, 50.0)),
            ms(percentile(&records, 95.0))
        ),
    ]
}

async fn invoke_round_trip(nodes: &[TestNode]) -> String {
    let (client, server) = (&nodes[1], nodes[0].peer_id());
    let mut samples = Vec::new();
    for i in 0..1_100 {
        let request = InvokeRequest::new("echo", Duration::from_secs(5));
        let started = Instant::now();
        client.handle.invoke(server, request).await.expect("echo");
        if i >= 100 {
            samples.push(started.elapsed());
        }
    }
    samples.sort();
    format!(
        "| invoke round trip (echo, 1,000 sequential after 100 warm-up) | p50 {}, p99 {} |",
        ms(percentile(&samples, 50.0)),
        ms(percentile(&samples, 99.0))
    )
}

fn synthetic_member(i: usize) -> FleetMember {
    let gpus = (0..8)
        .map(|g| GpuDevice {
            index: g,
            uuid: format!("GPU-{i:04}-{g}"),
            model: if i.is_multiple_of(3) {
                "NVIDIA A100-SXM4-80GB"
            } else {
                "NVIDIA H100 80GB HBM3"
            }
            .into(),
            memory_total_bytes: 80 << 30,
            pci_bus_id: None,
            compute_capability: None,
            ecc: None,
            power_limit_mw: None,
            max_clocks: None,
            temperature_c: Some(50),
            simulated: false,
        })
        .collect::<Vec<_>>();
    let allocated = gpus.iter().take(i % 4).map(|g| g.uuid.clone()).collect();
    FleetMember {
        peer_id: NodeIdentity::generate().peer_id(),
        announcement: NodeAnnouncement {
            name: format!("node-{i}"),
            network: "localnet".into(),
            region: None,
            labels: BTreeMap::new(),
            software_version: "bench".into(),
            listen_addrs: vec![],
            inventory: HardwareInventory {
                host: HostInfo::default(),
                nvml: NvmlStatus::Unavailable {
                    reason: "bench".into(),
                },
                gpus,
            },
            allocated_gpus: allocated,
            running_workloads: 0,
            taints: Vec::new(),
            reachability: Default::default(),
            membership: None,
            cordoned: false,
        },
        seq: 1,
        issued_at_ms: 0,
        expires_at_ms: u64::MAX,
        standing: claw_mesh::Standing::Open,
    }
}

async fn status_against_fan_out(nodes: &[TestNode]) -> Vec<String> {
    let mut view = FleetView::new(Duration::from_secs(1200), 3);
    let now = std::time::Instant::now();
    for i in 0..1_000 {
        view.upsert(synthetic_member(i), now);
    }
    let mut status_samples = Vec::new();
    for _ in 0..200 {
        let started = Instant::now();
        let status = std::hint::black_box(view.status());
        status_samples.push(started.elapsed());
        assert_eq!(status.nodes, 1_000);
    }
    status_samples.sort();

    let caller = Arc::new(nodes[0].handle.clone());
    let peers: Vec<PeerId> = nodes[1..].iter().map(TestNode::peer_id).collect();
    let mut fan_out = Vec::new();
    for _ in 0..10 {
        let started = Instant::now();
        let semaphore = Arc::new(tokio::sync::Semaphore::new(16));
        let mut tasks = Vec::new();
        for peer in &peers {
            let (caller, semaphore, peer) = (Arc::clone(&caller), Arc::clone(&semaphore), *peer);
            tasks.push(tokio::spawn(async move {
                let _permit = semaphore.acquire().await.expect("open");
                caller
                    .invoke(peer, InvokeRequest::new("echo", Duration::from_secs(5)))
                    .await
                    .err()
                    .map(|e| e.message)
            }));
        }
        let mut failed = Vec::new();
        for task in tasks {
            if let Some(error) = task.await.expect("task") {
                failed.push(error);
            }
        }
        if !failed.is_empty() {
            eprintln!(
                "fan-out: {} of {} invokes failed: {failed:?}",
                failed.len(),
                peers.len()
            );
        }
        fan_out.push(started.elapsed());
    }
    fan_out.sort();
    vec![
        format!(
            "| fleet status from the local view, 1,000 entries (8 GPUs each) | p50 {}, p99 {} |",
            ms(percentile(&status_samples, 50.0)),
            ms(percentile(&status_samples, 99.0))
        ),
        format!(
            "| same question by fan-out: one invoke to each of {} peers, 16 in flight | p50 {} |",
            peers.len(),
            ms(percentile(&fan_out, 50.0))
        ),
    ]
}

fn main() {
    let sizes: Vec<usize> = std::env::var("CLAW_BENCH_SIZES")
        .unwrap_or_else(|_| "50,200".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut rows = Vec::new();
    runtime.block_on(async {
        let mut rng = Rng(0x5eed_1234_abcd_9876);
        for n in sizes {
            let rss_before = rss_kib();
            let started = Instant::now();
            let nodes = start_mesh(n, &mut rng).await;
            eprintln!("{n} nodes started in {:?}; warming up", started.elapsed());
            tokio::time::sleep(Duration::from_secs(10)).await;
            let rate = if n <= 50 { 20 } else { 5 };
            // Warm-up round, not reported.
            let _ = propagation(&nodes, rate, 2, &mut rng).await;
            let mut isolated = 0;
            for node in &nodes {
                if node.handle.connected_peers().await.expect("runs").is_empty() {
                    isolated += 1;
                }
            }
            eprintln!("{n} nodes: {isolated} without any connection");
            rows.push(propagation(&nodes, rate, 10, &mut rng).await);
            eprintln!("{}", rows[rows.len() - 1]);
            rows.extend(kademlia(&nodes, &mut rng).await);
            if n <= 50 {
                rows.push(invoke_round_trip(&nodes).await);
                rows.extend(status_against_fan_out(&nodes).await);
            }
            let rss = rss_kib();
            rows.push(format!(
                "| RSS of the {n}-node mesh (one process) | {:.1} MiB total, {:.1} MiB for the mesh |",
                rss as f64 / 1024.0,
                rss.saturating_sub(rss_before) as f64 / 1024.0
            ));
            eprintln!("{n} nodes measured");
            for node in nodes {
                node.stop().await;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    });
    println!("\n| measurement | result |\n|---|---|");
    for row in rows {
        println!("{row}");
    }
}
