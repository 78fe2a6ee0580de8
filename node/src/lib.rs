//! `clawnode`: the Clawbernetes node agent.
//!
//! A node owns a data directory ([`DataDir`]) with its identity, wallet, config and store, reads
//! its hardware, and signs what it claims about it ([`sign_inventory`]). The binary in
//! `src/main.rs` is a thin CLI over this library.

pub mod commands;
pub mod config;
pub mod control;
mod data_dir;
pub mod store;

use claw_attestation::{Envelope, GpuProbe, HardwareInventory, Validity};

pub use config::NodeConfig;
pub use data_dir::{DataDir, DataDirError, WalletOutcome};
pub use store::{Store, StoreError};

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
    let seq = store.next_sequence()?;
    let validity = Validity::from_now(dir.config().attestation.inventory_ttl());
    let envelope = Envelope::seal(dir.identity(), seq, validity, &inventory);
    store.put_latest_inventory(&envelope.to_bytes())?;
    Ok((inventory, envelope))
}

/// Opens the GPU probe the node's config asks for.
pub fn open_gpu_probe(dir: &DataDir) -> GpuProbe {
    GpuProbe::open(&dir.config().gpu.simulated, &dir.identity().public_key())
}
