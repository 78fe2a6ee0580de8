//! The hardware inventory a node signs and gossips: host facts and one entry per GPU.
//!
//! Every GPU attribute that NVML could not report is `None`, never a guess. Simulated GPUs carry
//! `simulated: true` inside the signed report so that buyers can refuse them.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::envelope::{PayloadKind, SignedPayload};

/// A node's signed description of its machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HardwareInventory {
    /// CPU, memory, disk and operating system.
    pub host: HostInfo,
    /// Whether NVML answered, and if not, why.
    pub nvml: NvmlStatus,
    /// Real GPUs from NVML, then simulated ones if the node's config asks for them.
    pub gpus: Vec<GpuDevice>,
}

impl SignedPayload for HardwareInventory {
    const KIND: PayloadKind = PayloadKind::Inventory;
}

impl HardwareInventory {
    /// True when any GPU in the report is simulated.
    pub fn has_simulated_gpus(&self) -> bool {
        self.gpus.iter().any(|g| g.simulated)
    }
}

/// Host facts, read from the operating system.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HostInfo {
    /// The machine's host name.
    pub hostname: String,
    /// Operating system name and version, e.g. "Debian GNU/Linux 12".
    pub os: String,
    /// Kernel release.
    pub kernel: String,
    /// CPU architecture, e.g. "x86_64".
    pub arch: String,
    /// CPU model string.
    pub cpu_model: String,
    /// Logical CPUs.
    pub cpu_logical_cores: u32,
    /// Physical cores, where the OS reports them.
    pub cpu_physical_cores: Option<u32>,
    /// Installed memory.
    pub memory_total_bytes: u64,
    /// Size of the filesystem holding the node's data directory.
    pub disk_total_bytes: u64,
    /// Free space on that filesystem.
    pub disk_available_bytes: u64,
}

/// What NVML said when the node asked it for GPUs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum NvmlStatus {
    /// NVML loaded; versions as it reported them.
    Loaded {
        /// NVIDIA driver version.
        driver_version: String,
        /// NVML library version.
        nvml_version: String,
        /// Highest CUDA version the driver supports, e.g. "12.4".
        cuda_driver_version: Option<String>,
    },
    /// NVML could not be used, so the report lists no real GPUs.
    Unavailable {
        /// Why, in NVML's words.
        reason: String,
    },
}

/// One GPU, as NVML reports it (or as a simulated profile declares it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GpuDevice {
    /// Position in the node's list (NVML index for real devices).
    pub index: u32,
    /// Stable device UUID ("GPU-…"; simulated ones start "GPU-sim-").
    pub uuid: String,
    /// Product name, e.g. "NVIDIA H100 80GB HBM3".
    pub model: String,
    /// Total device memory.
    pub memory_total_bytes: u64,
    /// PCI bus id, e.g. "00000000:3B:00.0".
    pub pci_bus_id: Option<String>,
    /// CUDA compute capability.
    pub compute_capability: Option<ComputeCapability>,
    /// ECC mode and error counts.
    pub ecc: Option<EccState>,
    /// Enforced power limit in milliwatts.
    pub power_limit_mw: Option<u32>,
    /// Maximum clocks.
    pub max_clocks: Option<GpuClocks>,
    /// Core temperature when the report was made, in °C.
    pub temperature_c: Option<u32>,
    /// True for a device that exists only in the node's configuration.
    pub simulated: bool,
}

/// CUDA compute capability, e.g. 9.0 for Hopper.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ComputeCapability {
    /// Major version.
    pub major: u32,
    /// Minor version.
    pub minor: u32,
}

/// ECC mode and the volatile (since last driver load) error counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EccState {
    /// Whether ECC is on now.
    pub enabled: bool,
    /// Corrected errors since the driver loaded.
    pub corrected_volatile: Option<u64>,
    /// Uncorrected errors since the driver loaded.
    pub uncorrected_volatile: Option<u64>,
}

/// Clock frequencies in MHz.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GpuClocks {
    /// Graphics clock.
    pub graphics_mhz: Option<u32>,
    /// Streaming-multiprocessor clock.
    pub sm_mhz: Option<u32>,
    /// Memory clock.
    pub memory_mhz: Option<u32>,
}

/// Live readings of one GPU, as carried in freshness proofs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GpuLiveMetrics {
    /// Which GPU.
    pub uuid: String,
    /// GPU utilisation over NVML's last sample period, percent.
    pub utilization_pct: Option<u32>,
    /// Device memory in use.
    pub memory_used_bytes: Option<u64>,
    /// Core temperature, °C.
    pub temperature_c: Option<u32>,
    /// Power draw in milliwatts.
    pub power_usage_mw: Option<u32>,
    /// True for a simulated GPU: it has no readings.
    pub simulated: bool,
}

/// A full reading of one GPU for monitoring (`gpu.metrics`): everything NVML reports about its
/// current state. A value NVML cannot give is `None`; simulated GPUs have no readings at all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GpuMetrics {
    /// Which GPU.
    pub uuid: String,
    /// NVML index.
    pub index: u32,
    /// Model name.
    pub model: String,
    /// Percent of the last sample period a kernel ran.
    pub utilization_gpu_pct: Option<u32>,
    /// Percent of the last sample period device memory was read or written.
    pub utilization_memory_pct: Option<u32>,
    /// Device memory in use.
    pub memory_used_bytes: Option<u64>,
    /// Device memory in all.
    pub memory_total_bytes: Option<u64>,
    /// Core temperature, °C.
    pub temperature_c: Option<u32>,
    /// Power draw, mW.
    pub power_usage_mw: Option<u32>,
    /// Enforced power limit, mW.
    pub power_limit_mw: Option<u32>,
    /// Current clocks.
    pub clocks: Option<GpuClocks>,
    /// Why clocks are held down right now (e.g. `hw_thermal_slowdown`, `sw_power_cap`); empty
    /// when they are not.
    pub throttle_reasons: Vec<String>,
    /// ECC mode and volatile error counts.
    pub ecc: Option<EccState>,
    /// Critical Xid errors seen since the node started, and the last one's code.
    pub xid_errors: Option<XidErrors>,
    /// Compute processes on the GPU.
    pub processes: Vec<GpuProcess>,
    /// True for a simulated GPU.
    pub simulated: bool,
}

/// Critical Xid errors NVML reported for a GPU.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct XidErrors {
    /// How many since the node started watching.
    pub count: u64,
    /// The last Xid code, when NVML gave one.
    pub last: Option<u64>,
}

/// A process using a GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GpuProcess {
    /// Host process id.
    pub pid: u32,
    /// Device memory it uses, when NVML can tell.
    pub used_memory_bytes: Option<u64>,
}

/// A simulated GPU model a node declares in its config for local fleets and demos.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SimulatedGpuProfile {
    /// Product name to report, e.g. "NVIDIA H100 80GB HBM3".
    pub model: String,
    /// How many devices of this model.
    pub count: u32,
    /// Memory per device, MiB.
    pub memory_mib: u64,
}

impl SimulatedGpuProfile {
    /// Largest number of simulated devices one profile may declare.
    pub const MAX_COUNT: u32 = 64;
    /// Longest accepted model name.
    pub const MAX_MODEL_LEN: usize = 96;

    /// The device at position `index` of the node with `node_key`: marked simulated, with a UUID
    /// derived from the node's key and the index, so it is stable across restarts and distinct
    /// between nodes.
    pub fn device(&self, index: u32, node_key: &ed25519_dalek::VerifyingKey) -> GpuDevice {
        use sha2::{Digest as _, Sha256};
        let mut hasher = Sha256::new();
        hasher.update(b"clawbernetes/simulated-gpu/v1");
        hasher.update(node_key.as_bytes());
        hasher.update(index.to_le_bytes());
        let h = hex::encode(&hasher.finalize()[..14]);
        GpuDevice {
            index,
            uuid: format!(
                "GPU-sim-{}-{}-{}-{}",
                &h[0..4],
                &h[4..8],
                &h[8..12],
                &h[12..28]
            ),
            model: self.model.clone(),
            memory_total_bytes: self.memory_mib.saturating_mul(1024 * 1024),
            pci_bus_id: None,
            compute_capability: None,
            ecc: None,
            power_limit_mw: None,
            max_clocks: None,
            temperature_c: None,
            simulated: true,
        }
    }

    /// Checks the profile's bounds, naming the first problem found.
    pub fn validate(&self) -> Result<(), String> {
        if self.model.trim().is_empty() || self.model.len() > Self::MAX_MODEL_LEN {
            return Err(format!(
                "simulated GPU model must be 1 to {} characters",
                Self::MAX_MODEL_LEN
            ));
        }
        if self.count == 0 || self.count > Self::MAX_COUNT {
            return Err(format!(
                "simulated GPU count must be 1 to {}, got {}",
                Self::MAX_COUNT,
                self.count
            ));
        }
        if self.memory_mib == 0 || self.memory_mib > 1 << 22 {
            return Err(format!(
                "simulated GPU memory must be 1 MiB to 4 TiB, got {} MiB",
                self.memory_mib
            ));
        }
        Ok(())
    }
}
