//! What one console snapshot of a 1,000-node fleet costs the bridge: turning the mesh view's
//! members into the console's nodes, and encoding the snapshot with a live reading for each of
//! the 8,000 GPUs and 200 workloads (what `console.snapshot` answers every time a Fleet tab asks;
//! the fan-out that gathers the readings is one `gpu.metrics` per node every 5 s, measured as the
//! mesh's invoke round trip in BENCHMARKS.md).
//!
//! `cargo bench -p claw-bridge --bench console` (`CLAW_BENCH_NODES` changes the fleet size).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use claw_api::Role;
use claw_api::console::{ConsoleReading, ConsoleSnapshot, ConsoleWorkload, SignedIn};
use claw_attestation::{GpuDevice, HardwareInventory, HostInfo, NodeIdentity, NvmlStatus};
use claw_mesh::{FleetMember, NodeAnnouncement};

const ROUNDS: usize = 50;

fn member(i: usize) -> FleetMember {
    let gpus: Vec<GpuDevice> = (0..8)
        .map(|g| GpuDevice {
            index: g,
            uuid: format!("GPU-{i:08x}-{g}"),
            model: "NVIDIA H100 80GB HBM3".into(),
            memory_total_bytes: 80 << 30,
            pci_bus_id: None,
            compute_capability: None,
            ecc: None,
            power_limit_mw: None,
            max_clocks: None,
            temperature_c: Some(50),
            simulated: false,
        })
        .collect();
    FleetMember {
        peer_id: NodeIdentity::generate().peer_id(),
        announcement: NodeAnnouncement {
            name: format!("gpu-node-{i}"),
            network: "bench".into(),
            region: Some(["eu-west", "us-east", "ap-south"][i % 3].into()),
            labels: BTreeMap::new(),
            software_version: "0.1.0".into(),
            listen_addrs: vec![],
            allocated_gpus: gpus.iter().take(i % 5).map(|g| g.uuid.clone()).collect(),
            inventory: HardwareInventory {
                host: HostInfo::default(),
                nvml: NvmlStatus::Unavailable {
                    reason: "bench".into(),
                },
                gpus,
            },
            running_workloads: (i % 5) as u32,
            taints: Vec::new(),
            reachability: Default::default(),
            membership: None,
            cordoned: i.is_multiple_of(97),
        },
        seq: 1,
        issued_at_ms: 1_765_000_000_000,
        expires_at_ms: u64::MAX,
        standing: claw_mesh::Standing::Open,
    }
}

fn reading(member: &FleetMember, g: usize, tick: usize) -> ConsoleReading {
    let gpu = &member.announcement.inventory.gpus[g];
    ConsoleReading {
        uuid: gpu.uuid.clone(),
        index: gpu.index,
        utilization_gpu_pct: Some(((g * 13 + tick) % 100) as u32),
        temperature_c: Some(40 + ((g + tick) % 40) as u32),
        memory_used_bytes: Some(((g + tick) % 80) as u64 * 1_000_000_000),
        memory_total_bytes: Some(gpu.memory_total_bytes),
        power_usage_mw: Some(350_000),
    }
}

fn percentile(sorted: &[Duration], p: usize) -> f64 {
    let index = (sorted.len() * p).div_ceil(100).saturating_sub(1);
    sorted[index.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

fn main() {
    let nodes: usize = std::env::var("CLAW_BENCH_NODES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    let members: Vec<FleetMember> = (0..nodes).map(member).collect();
    let workloads: Vec<ConsoleWorkload> = (0..200)
        .map(|w| ConsoleWorkload {
            node: format!("gpu-node-{}", w * 5 % nodes.max(1)),
            id: format!("wl-{w:012x}"),
            name: Some(format!("train-{w}")),
            image: "registry.example/trainer:1.4".into(),
            state: "running".into(),
            gpus: vec![format!("GPU-{:08x}-0", w * 5)],
            simulated_gpus: false,
            created_ms: 1_765_000_000_000 - w as u64 * 60_000,
            reason: None,
            deployment: None,
        })
        .collect();
    let mut build = Vec::new();
    let mut encode = Vec::new();
    let mut bytes = 0;
    for tick in 0..ROUNDS {
        let started = Instant::now();
        let snapshot = ConsoleSnapshot {
            at_ms: 1_765_000_000_000,
            signed_in: SignedIn {
                with: "OpenClaw gateway".into(),
                name: None,
                role: Role::Read,
            },
            scope: "bridge".into(),
            withheld: Vec::new(),
            silent_after_ms: 21_000,
            nodes: members
                .iter()
                .map(|m| {
                    m.announcement
                        .console_node(m.peer_id.to_string(), false, Some(m.issued_at_ms))
                })
                .collect(),
            readings: members
                .iter()
                .flat_map(|m| (0..8).map(move |g| reading(m, g, tick)))
                .collect(),
            workloads: workloads.clone(),
            deployments: None,
            offers: None,
            leases: None,
            history: None,
        };
        build.push(started.elapsed());
        let started = Instant::now();
        let encoded = serde_json::to_vec(&snapshot).expect("encodes");
        encode.push(started.elapsed());
        bytes = std::hint::black_box(encoded).len();
    }
    build.sort();
    encode.sort();
    println!(
        "| console snapshot, {nodes} nodes × 8 GPUs, readings for every GPU, 200 workloads | value |"
    );
    println!("|---|---|");
    println!(
        "| build from the mesh view (p50 / p95) | {:.2} ms / {:.2} ms |",
        percentile(&build, 50),
        percentile(&build, 95)
    );
    println!(
        "| encode as JSON (p50 / p95) | {:.2} ms / {:.2} ms |",
        percentile(&encode, 50),
        percentile(&encode, 95)
    );
    println!("| size | {:.2} MB |", bytes as f64 / 1e6);
}
