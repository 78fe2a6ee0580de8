//! `clawnode`: the Clawbernetes node agent.
//!
//! A node owns a data directory ([`DataDir`]) with its identity, wallet, config and store, reads
//! its hardware, and signs what it claims about it ([`sign_inventory`]). [`Node::start`] runs it
//! (mesh, control API, metrics, announcer, market, gateway client) and returns a [`NodeHandle`]
//! whose `stop` is the one way to stop it; every task goes through one [`Tasks`]. Commands are
//! answered by [`commands::NodeCommands`], state is kept by [`Store`] (with the GPU ledger), and
//! containers are run by [`workloads::Workloads`]. The binary in `src/main.rs` is a thin CLI over
//! this library.

pub mod access;
pub mod backups;
pub mod chain;
pub mod commands;
pub mod config;
mod console;
pub mod control;
pub mod controller;
mod data_dir;
pub mod health;
pub mod ingress;
pub mod market;
pub mod metrics;
pub mod objects;
pub mod runtime;
pub mod services;
pub mod store;
pub mod system_run;
mod tasks;
pub mod workloads;

use std::time::Duration;

use claw_attestation::{Envelope, GpuProbe, HardwareInventory, SignedPayload, Validity};
use claw_mesh::NodeAnnouncement;

pub use config::NodeConfig;
pub use data_dir::{DataDir, DataDirError, WalletOutcome};
pub use runtime::{Node, NodeFailure, NodeHandle, NodeOptions, StartError};
pub use store::{Store, StoreError};
pub use tasks::Tasks;

/// The time now, Unix milliseconds.
pub(crate) fn now_ms() -> u64 {
    claw_attestation::unix_millis(std::time::SystemTime::now())
}

/// Records atomically, in `file` under the data directory, where one of the running node's
/// loopback services listens, for the CLI and scripts to find.
pub fn record_address(
    data_dir: &std::path::Path,
    file: &str,
    addr: std::net::SocketAddr,
) -> std::io::Result<()> {
    let path = data_dir.join(file);
    let tmp = path.with_extension("addr.tmp");
    std::fs::write(&tmp, addr.to_string())?;
    std::fs::rename(tmp, path)
}

/// The name this node announces: the configured one, else the host's name (asked only then).
pub(crate) fn announced_name(config: &NodeConfig, hostname: impl FnOnce() -> String) -> String {
    config.node.name.clone().unwrap_or_else(hostname)
}

/// Forgets an address [`record_address`] wrote, when the node stops.
pub fn forget_address(data_dir: &std::path::Path, file: &str) {
    let _ = std::fs::remove_file(data_dir.join(file));
}

/// Signs `payload` as this node with the store's next sequence number, valid for `ttl`.
pub(crate) fn seal_next<T: SignedPayload>(
    dir: &DataDir,
    store: &Store,
    ttl: Duration,
    payload: &T,
) -> Result<Envelope, StoreError> {
    let seq = store.next_sequence()?;
    Ok(Envelope::seal(
        dir.identity(),
        seq,
        Validity::from_now(ttl),
        payload,
    ))
}

/// Reads the machine (NVML, host, simulated GPUs from the config), signs the inventory with the
/// node key and the next sequence number, and records it as the node's latest.
///
/// Blocking: NVML and the store are synchronous.
pub fn sign_inventory(
    dir: &DataDir,
    store: &Store,
    probe: &GpuProbe,
) -> Result<(HardwareInventory, Envelope), StoreError> {
    let inventory = probe.inventory(dir.root());
    let ttl = dir.config().attestation.inventory_ttl();
    let envelope = seal_next(dir, store, ttl, &inventory)?;
    store.put_latest_inventory(&envelope.to_bytes())?;
    Ok((inventory, envelope))
}

/// The addresses the node's mesh listens on, as multiaddr text (none when the mesh is gone).
pub(crate) async fn listen_addr_texts(mesh: &claw_mesh::MeshHandle) -> Vec<String> {
    mesh.listen_addrs()
        .await
        .unwrap_or_default()
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// The node's announcement to its fleet as it stands: current inventory, the GPUs allocated to
/// workloads, whether it is cordoned, the addresses it listens on and whether peers can dial it
/// (`reachability`, from the mesh), name, region, labels (the config's, then those set with
/// `node.label`) and version.
///
/// Blocking: NVML and the store are synchronous.
pub fn announcement(
    dir: &DataDir,
    store: &Store,
    probe: &GpuProbe,
    listen_addrs: Vec<String>,
    reachability: claw_mesh::Reachability,
) -> Result<NodeAnnouncement, StoreError> {
    let config = dir.config();
    let inventory = probe.inventory(dir.root());
    let mut labels = config.node.labels.clone();
    labels.extend(store.labels()?);
    Ok(NodeAnnouncement {
        name: announced_name(config, || inventory.host.hostname.clone()),
        network: config.network.name.clone(),
        region: config.node.region.clone(),
        labels,
        software_version: env!("CARGO_PKG_VERSION").to_owned(),
        listen_addrs,
        inventory,
        allocated_gpus: store.allocations()?.into_keys().collect(),
        running_workloads: u32::try_from(
            store.workloads_in(workloads::WorkloadState::Running)?.len(),
        )
        .unwrap_or(u32::MAX),
        cordoned: store.cordoned()?,
        taints: store.taints()?.iter().map(|t| t.to_text()).collect(),
        reachability,
        membership: dir.membership(),
    })
}

/// Signs the node's [`announcement`], published every `interval` (the configured one, paced to
/// the fleet's size). It stays valid for the configured number of missed intervals plus 30 s of
/// slack.
///
/// Blocking: NVML and the store are synchronous.
pub fn sign_announcement(
    dir: &DataDir,
    store: &Store,
    probe: &GpuProbe,
    listen_addrs: Vec<String>,
    reachability: claw_mesh::Reachability,
    interval: Duration,
) -> Result<Envelope, StoreError> {
    let announcement = announcement(dir, store, probe, listen_addrs, reachability)?;
    let ttl = claw_mesh::announcement_validity(interval, dir.config().mesh.missed_intervals);
    seal_next(dir, store, ttl, &announcement)
}

/// Everything the node's commands need, from its data directory: the access policy and the
/// workload service (GPUs from `probe`, Docker from the config) and the Xid watcher. Commands
/// and lease steps are spawned through `tasks`.
///
/// Blocking: reads NVML.
pub(crate) fn node_services(
    dir: &std::sync::Arc<DataDir>,
    store: Store,
    probe: std::sync::Arc<GpuProbe>,
    tasks: Tasks,
) -> commands::NodeServices {
    let config = dir.config();
    let peer = dir.identity().peer_id();
    let devices = probe.devices();
    let simulated = devices
        .iter()
        .filter(|d| d.simulated)
        .map(|d| d.uuid.clone())
        .collect();
    let gpus = devices.into_iter().map(|d| d.uuid).collect();
    let access = access::AccessPolicy::new(peer, &config.access);
    let objects =
        objects::FleetObjects::new(std::sync::Arc::clone(dir), store.clone(), access.clone());
    let workloads = workloads::Workloads::new(
        store.clone(),
        peer,
        gpus,
        simulated,
        config.workloads.clone(),
        dir.root(),
        objects.clone(),
    );
    let market = market::Market::new(
        std::sync::Arc::clone(dir),
        store.clone(),
        std::sync::Arc::clone(&probe),
        workloads.clone(),
        tasks.clone(),
    );
    let deployments = controller::Deployments::new(
        access.clone(),
        std::sync::Arc::clone(&probe),
        objects.clone(),
        workloads.clone(),
        store.clone(),
    );
    let jobs = controller::Jobs::new(
        peer,
        objects.clone(),
        workloads.clone(),
        store.clone(),
        market.clone(),
    );
    let backups =
        backups::Backups::new(std::sync::Arc::clone(dir), store.clone(), workloads.clone());
    let services = services::Services::new(
        objects.clone(),
        workloads.clone(),
        deployments.clone(),
        store.clone(),
        access.clone(),
    );
    commands::NodeServices {
        xids: claw_attestation::XidWatcher::start(),
        backups,
        services,
        market,
        objects,
        deployments,
        jobs,
        probe,
        data_dir: dir.root().to_path_buf(),
        store,
        access,
        workloads,
        system_run: config.system_run.clone(),
        invokes: metrics::InvokeMetrics::default(),
        tasks,
        gateway_requires_key: config.gateway.require_api_key,
    }
}

/// Opens the GPU probe the node's config asks for.
pub fn open_gpu_probe(dir: &DataDir) -> GpuProbe {
    GpuProbe::open(&dir.config().gpu.simulated, &dir.identity().public_key())
}
