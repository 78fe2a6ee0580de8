//! Two nodes started in one process through the library's runtime ([`Node::start`]), over
//! loopback: they find each other, answer each other over the mesh, and [`NodeHandle::stop`]
//! ends everything the node started, a command still running included, with its audit record
//! written and the store free for the next start.

use std::path::Path;
use std::time::{Duration, Instant};

use claw_api::Role;
use claw_attestation::SimulatedGpuProfile;
use claw_mesh::InvokeRequest;
use clawnode::{DataDir, Node, NodeConfig, NodeHandle, NodeOptions};
use serde_json::json;

const SLEEP: &str = "/bin/sleep";

fn init(root: &Path, gpus: u32) -> DataDir {
    let mut config = NodeConfig::default();
    config.gpu.simulated = vec![SimulatedGpuProfile {
        model: "NVIDIA H100 80GB HBM3".to_owned(),
        count: gpus,
        memory_mib: 81_559,
    }];
    config.mesh.listen = vec!["/ip4/127.0.0.1/tcp/0".to_owned()];
    config.mesh.quic = false;
    config.mesh.mdns = false;
    config.mesh.announce_interval_secs = 1;
    config.system_run.allowlist = vec![SLEEP.to_owned()];
    DataDir::init(root, &config, false)
        .expect("init the data directory")
        .0
}

async fn start(root: &Path, bootstrap: Vec<String>) -> NodeHandle {
    let options = NodeOptions {
        bootstrap,
        metrics: Some("127.0.0.1:0".to_owned()),
        ..NodeOptions::default()
    };
    Node::start(DataDir::open(root).expect("open"), options)
        .await
        .expect("the node starts")
}

async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(found) = check() {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_started_as_a_library_meet_answer_and_stop_with_nothing_left_running() {
    if !Path::new(SLEEP).exists() {
        panic!("{SLEEP} is needed for a command that outlasts the stop");
    }
    let temp = tempfile::tempdir().expect("temp dir");
    let (root_a, root_b) = (temp.path().join("a"), temp.path().join("b"));
    init(&root_a, 2);
    init(&root_b, 1);
    let a = start(&root_a, vec![]).await;
    let joinable = a.joinable_addrs(Duration::from_secs(5)).await;
    assert!(!joinable.is_empty(), "node a reports where to join it");
    let b = start(&root_b, joinable).await;
    assert!(
        root_a.join("control.addr").exists(),
        "the control address is recorded"
    );

    let (peer_a, peer_b) = (a.peer_id(), b.peer_id());
    eventually("each node to see the other's announcement", || {
        let a_sees_b = a.mesh().fleet().iter().any(|m| m.peer_id == peer_b);
        let b_sees_a = b.mesh().fleet().iter().any(|m| m.peer_id == peer_a);
        (a_sees_b && b_sees_a).then_some(())
    })
    .await;

    let gpus = b
        .mesh()
        .invoke(
            peer_a,
            InvokeRequest::new("gpu.list", Duration::from_secs(10)),
        )
        .await
        .expect("b lists a's GPUs over the mesh");
    let listed = gpus["gpus"].as_array().map(Vec::len);
    assert_eq!(listed, Some(2), "a's two simulated GPUs: {gpus}");

    // A command that is still running when the node is told to stop.
    let commands = a.commands().clone();
    let running = tokio::spawn(async move {
        let request = InvokeRequest::new("system.run", Duration::from_secs(10))
            .with_params(json!({ "argv": [SLEEP, "3"] }));
        commands.invoke_for_gateway(Role::Admin, request).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopping = Instant::now();
    assert_eq!(
        a.stop().await,
        0,
        "every task of node a ended within the grace"
    );
    let stop_took = stopping.elapsed();
    assert!(
        stop_took >= Duration::from_millis(2_500),
        "stop waited for the running command (it returned after {stop_took:?})"
    );
    assert!(
        !root_a.join("control.addr").exists(),
        "the address is forgotten"
    );

    let answer = running
        .await
        .expect("the caller's task")
        .expect("system.run answered");
    assert_eq!(
        answer["exit_code"],
        json!(0),
        "the sleep ran to its end: {answer}"
    );

    // Nothing holds node a's store any more: it opens again (once sled's flusher has let go of
    // its file lock), with one record for the command.
    let dir = DataDir::open(&root_a).expect("open");
    let store = eventually("node a's store to be free", || dir.open_store().ok()).await;
    let audit = store.recent_audit(100).expect("audit log");
    let records: Vec<_> = audit.iter().filter(|r| r.command == "system.run").collect();
    assert_eq!(
        records.len(),
        1,
        "one audit record for the command: {audit:?}"
    );
    assert_eq!(records[0].outcome, "ok");
    assert_eq!(b.stop().await, 0, "every task of node b ended");
}
