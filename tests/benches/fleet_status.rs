//! `fleet.status` through the real OpenClaw gateway for a 100-node mesh, against the seed's way
//! in the same run: every node its own OpenClaw node, and one `node.invoke` per node fanned out
//! through the gateway.
//!
//! In one process: 100 mesh nodes (TCP + Noise + Yamux, gossipsub, Kademlia), each announcing a
//! signed inventory of 8 simulated GPUs every 10 s and connected to the gateway as its own node
//! answering `gpu.list`; and the bridge, a mesh peer connected as one more node. Each node may
//! hold 128 connections: at 64, early nodes fill up with Kademlia's connections and refuse
//! late joiners, which then stay alone. The gateway
//! (openclaw 2026.9.6 on Node 24) runs as its own process. An operator connection approves the
//! 101 capability surfaces, then measures, 30 rounds each: one `node.invoke` of `fleet.status` on
//! the bridge, and one round of `node.invoke` of `gpu.list` on every node (16 in flight).
//!
//! ```text
//! cargo build --release -p clawnode -p claw-bridge
//! CLAW_NODE24=… CLAW_OPENCLAW=… cargo bench -p claw-tests --bench fleet_status
//! ```
//! (`scripts/bench.sh fleet` finds Node 24 and openclaw where `scripts/test.sh` installed them.)

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use claw_attestation::{
    Envelope, HardwareInventory, HostInfo, NodeIdentity, NvmlStatus, SimulatedGpuProfile, Validity,
};
use claw_bridge::fleet::{FleetCommands, NoMeshCommands};
use claw_bridge::gateway::{CommandFuture, GatewayCall, GatewayConfig, GatewayHandler};
use claw_bridge::operator::OperatorClient;
use claw_mesh::{Mesh, MeshConfig, MeshHandle, NodeAnnouncement};
use claw_tests::{OpenClawGateway, TOKEN};
use futures::StreamExt as _;
use serde_json::{Value, json};

const ROUNDS: usize = 30;

/// Answers `gpu.list` with the node's inventory, as a node would.
struct GpuList(Value);

impl GatewayHandler for GpuList {
    fn handle(&self, command: String, _: Value, _: GatewayCall) -> CommandFuture {
        let answer = self.0.clone();
        Box::pin(async move {
            match command.as_str() {
                "gpu.list" => Ok(answer),
                other => Err(claw_mesh::InvokeFailure::new(
                    claw_mesh::ErrorCode::UnknownCommand,
                    format!("no command {other}"),
                )),
            }
        })
    }
}

/// A bench node's inventory: 8 simulated H100s, as the node's GPU probe declares them.
fn inventory(identity: &NodeIdentity) -> HardwareInventory {
    let profile = SimulatedGpuProfile {
        model: "NVIDIA H100 80GB HBM3".into(),
        count: 8,
        memory_mib: 81_920,
    };
    HardwareInventory {
        host: HostInfo::default(),
        nvml: NvmlStatus::Unavailable {
            reason: "bench node".into(),
        },
        gpus: (0..profile.count)
            .map(|i| profile.device(i, &identity.public_key()))
            .collect(),
    }
}

fn mesh_config(bootstrap: Vec<claw_mesh::Multiaddr>) -> MeshConfig {
    MeshConfig {
        network: "localnet".to_owned(),
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr")],
        bootstrap,
        allow_colocated_peers: true,
        announce_interval: Duration::from_secs(10),
        missed_intervals: 6,
        max_connections: 128,
        ..MeshConfig::default()
    }
}

fn percentiles(mut samples: Vec<f64>) -> (f64, f64) {
    samples.sort_by(f64::total_cmp);
    let at = |p: f64| samples[((samples.len() as f64 - 1.0) * p).round() as usize];
    (at(0.5), at(0.95))
}

fn gateway_client(
    identity: Arc<NodeIdentity>,
    url: &str,
    name: String,
    commands: Vec<String>,
    handler: Arc<dyn GatewayHandler>,
    stop: tokio_util::sync::CancellationToken,
) {
    let config = GatewayConfig {
        url: url.to_owned(),
        tls: claw_bridge::tls::GatewayTls::default(),
        token: TOKEN.to_owned(),
        display_name: name,
        caps: vec!["gpu".to_owned()],
        commands,
        version: "bench".to_owned(),
    };
    tokio::spawn(claw_bridge::gateway::run_node(
        identity, config, handler, stop, None,
    ));
}

fn main() {
    let (Ok(node24), Ok(openclaw)) = (std::env::var("CLAW_NODE24"), std::env::var("CLAW_OPENCLAW"))
    else {
        eprintln!(
            "fleet_status needs CLAW_NODE24 and CLAW_OPENCLAW (scripts/test.sh installs both)"
        );
        std::process::exit(2);
    };
    let nodes: usize = std::env::var("CLAW_BENCH_NODES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut allow = FleetCommands::names();
    allow.push("gpu.list".to_owned());
    let mut gateway = OpenClawGateway::new(node24, openclaw, &dir.path().join("gateway"), &allow);
    gateway.start();
    let url = gateway.url();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let stop = tokio_util::sync::CancellationToken::new();
        let started = Instant::now();
        let mut meshes: Vec<MeshHandle> = Vec::new();
        let mut device_ids = Vec::new();
        let mut seeds: Vec<claw_mesh::Multiaddr> = Vec::new();
        for i in 0..nodes {
            let name = format!("node-{i:03}");
            let identity = Arc::new(NodeIdentity::generate());
            // Three earlier nodes, spread over the fleet so that no node fills its connections.
            let bootstrap: Vec<claw_mesh::Multiaddr> = if seeds.is_empty() {
                vec![]
            } else {
                (0..3).map(|k| seeds[(i * 7 + k * 13) % seeds.len()].clone()).collect()
            };
            let mesh = Mesh::spawn(&identity, mesh_config(bootstrap), Arc::new(NoMeshCommands)).expect("mesh");
            let handle = mesh.handle.clone();
            let mut events = mesh.events;
            tokio::spawn(async move { while events.recv().await.is_some() {} });
            let addr = loop {
                if let Some(addr) = handle.listen_addrs().await.ok().and_then(|a| a.first().cloned()) {
                    break addr;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            };
            seeds.push(format!("{addr}/p2p/{}", handle.local_peer_id()).parse().expect("addr"));
            let inventory = inventory(&identity);
            let announcement = NodeAnnouncement {
                name: name.clone(),
                network: "localnet".into(),
                region: None,
                labels: BTreeMap::new(),
                software_version: "bench".into(),
                listen_addrs: vec![],
                inventory: inventory.clone(),
                allocated_gpus: vec![],
                running_workloads: 0,
                taints: Vec::new(),
                reachability: Default::default(),
                membership: None,
                cordoned: false,
            };
            let announcer = handle.clone();
            let signer = Arc::clone(&identity);
            tokio::spawn(async move {
                let mut seq = 1;
                loop {
                    let bytes = Envelope::seal(&signer, seq, Validity::from_now(Duration::from_secs(120)), &announcement).to_bytes();
                    let _ = announcer.announce(bytes).await;
                    seq += 1;
                    tokio::time::sleep(Duration::from_secs(10)).await;
                }
            });
            device_ids.push(identity.device().id());
            gateway_client(
                identity,
                &url,
                name,
                vec!["gpu.list".to_owned()],
                Arc::new(GpuList(json!({"gpus": inventory.gpus}))),
                stop.clone(),
            );
            meshes.push(handle);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let bridge_identity = Arc::new(NodeIdentity::generate());
        // The bridge joins through the three newest nodes, which have the most room.
        let bridge_seeds = seeds.iter().rev().take(3).cloned().collect();
        let bridge = Mesh::spawn(&bridge_identity, mesh_config(bridge_seeds), Arc::new(NoMeshCommands)).expect("bridge mesh");
        let mut bridge_events = bridge.events;
        tokio::spawn(async move { while bridge_events.recv().await.is_some() {} });
        let bridge_device = bridge_identity.device().id();
        gateway_client(
            Arc::clone(&bridge_identity),
            &url,
            "clawbernetes-fleet".to_owned(),
            FleetCommands::names(),
            Arc::new(FleetCommands::new(
                bridge.handle.clone(),
                None,
                claw_bridge::placements::Placements::in_memory().expect("placements"),
            )),
            stop.clone(),
        );
        eprintln!("{nodes} nodes and the bridge started in {:.1} s", started.elapsed().as_secs_f64());

        let operator_identity = NodeIdentity::generate();
        let connect_deadline = Instant::now() + Duration::from_secs(90);
        let operator = loop {
            // The gateway answers UNAVAILABLE while its sidecars start.
            match OperatorClient::connect(&url, TOKEN, &operator_identity).await {
                Ok(operator) => break operator,
                Err(error) if Instant::now() < connect_deadline && (error.contains("UNAVAILABLE") || error.contains("503")) => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(error) => panic!("operator: {error}"),
            }
        };
        // Approve every capability surface.
        let mut approved = std::collections::HashSet::new();
        let deadline = Instant::now() + Duration::from_secs(300);
        while approved.len() < nodes + 1 {
            assert!(Instant::now() < deadline, "only {} of {} surfaces approved", approved.len(), nodes + 1);
            let list = operator.call("node.pair.list", json!({})).await.expect("node.pair.list");
            for request in list["pending"].as_array().into_iter().flatten() {
                let (Some(id), Some(node)) = (request["requestId"].as_str(), request["nodeId"].as_str()) else { continue };
                if operator.call("node.pair.approve", json!({"requestId": id})).await.is_ok() {
                    approved.insert(node.to_owned());
                }
            }
            for paired in list["paired"].as_array().into_iter().flatten() {
                if let Some(node) = paired["nodeId"].as_str() {
                    approved.insert(node.to_owned());
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let invoke = |node: String, command: &'static str, n: u64| {
            let operator = &operator;
            async move {
                let started = Instant::now();
                let answer = operator
                    .call("node.invoke", json!({"nodeId": node, "command": command, "params": {}, "timeoutMs": 30_000, "idempotencyKey": format!("bench-{n}")}))
                    .await;
                (answer, started.elapsed().as_secs_f64() * 1000.0)
            }
        };
        // The bridge's view converges, and every node answers.
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut key = 0u64;
        loop {
            key += 1;
            let (answer, _) = invoke(bridge_device.clone(), "fleet.status", key).await;
            if answer.as_ref().is_ok_and(|a| a["payload"]["node_count"] == nodes) {
                break;
            }
            if Instant::now() > deadline {
                let peers = bridge.handle.connected_peers().await.map(|p| p.len());
                let views: Vec<usize> = meshes.iter().step_by(10).map(|m| m.fleet().len()).collect();
                let node_peers: Vec<usize> = futures::future::join_all(meshes.iter().step_by(10).map(|m| m.connected_peers())).await.into_iter().map(|p| p.map(|p| p.len()).unwrap_or(0)).collect();
                panic!("the bridge sees {:?} nodes, with {peers:?} connections; every 10th node sees {views:?} with {node_peers:?} connections", answer.map(|a| a["payload"]["node_count"].clone()));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }

        let mut bridge_ms = Vec::new();
        let mut fan_out_ms = Vec::new();
        let mut fan_out_failures = 0;
        for _ in 0..ROUNDS {
            key += 1;
            let (answer, ms) = invoke(bridge_device.clone(), "fleet.status", key).await;
            let status = answer.expect("fleet.status");
            assert_eq!(status["payload"]["gpus"]["total"], nodes * 8);
            bridge_ms.push(ms);
            let round = Instant::now();
            let calls = device_ids.iter().enumerate().map(|(i, node)| invoke(node.clone(), "gpu.list", key * 1000 + i as u64));
            let answers: Vec<_> = futures::stream::iter(calls).buffer_unordered(16).collect().await;
            fan_out_failures += answers.iter().filter(|(a, _)| a.is_err()).count();
            fan_out_ms.push(round.elapsed().as_secs_f64() * 1000.0);
        }
        let (b50, b95) = percentiles(bridge_ms);
        let (f50, f95) = percentiles(fan_out_ms);
        println!("fleet view of {nodes} nodes through the OpenClaw gateway, {ROUNDS} rounds (ms)");
        println!("{:<58} {:>9} {:>9}", "", "p50", "p95");
        println!("{:<58} {b50:>9.1} {b95:>9.1}", "bridge: one node.invoke of fleet.status");
        println!("{:<58} {f50:>9.1} {f95:>9.1}", format!("seed's way: {nodes} node.invoke of gpu.list, 16 in flight"));
        println!("failed per-node calls: {fan_out_failures} of {}", ROUNDS * nodes);
        println!("ratio (p50): {:.1}x", f50 / b50);
    });
}
