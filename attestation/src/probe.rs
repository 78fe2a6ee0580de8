//! Reading the machine: GPUs through NVML, host facts through the operating system.
//!
//! NVML is loaded at run time (`libnvidia-ml.so`), so the same binary runs on machines without a
//! driver; there the probe reports NVML as unavailable, with NVML's own reason, and lists no real
//! GPUs. All calls here block; async callers run them on a blocking thread.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use nvml_wrapper::bitmasks::device::ThrottleReasons;
use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enum_wrappers::device::{Clock, EccCounter, MemoryError, TemperatureSensor};
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, Nvml, cuda_driver_version_major, cuda_driver_version_minor};
use sysinfo::{Disks, System};

use crate::inventory::{
    ComputeCapability, EccState, GpuClocks, GpuDevice, GpuLiveMetrics, GpuMetrics, GpuProcess,
    HardwareInventory, HostInfo, NvmlStatus, SimulatedGpuProfile, XidErrors,
};

/// A handle on the node's GPUs: NVML when it loads, plus any simulated devices the config asks
/// for. Opening NVML is slow (tens of milliseconds), so keep one probe and reuse it.
pub struct GpuProbe {
    nvml: Result<Nvml, String>,
    simulated: Vec<GpuDevice>,
}

impl std::fmt::Debug for GpuProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuProbe")
            .field("nvml_loaded", &self.nvml.is_ok())
            .field("simulated", &self.simulated.len())
            .finish()
    }
}

impl GpuProbe {
    /// Loads NVML and prepares the simulated devices declared by `simulated` profiles.
    ///
    /// Simulated devices get stable UUIDs derived from the node key, so they keep their identity
    /// across restarts, and are listed after the real ones.
    pub fn open(simulated: &[SimulatedGpuProfile], node_key: &VerifyingKey) -> Self {
        let nvml = Nvml::init().map_err(|e| format!("NVML could not be initialised: {e}"));
        if let Err(reason) = &nvml {
            tracing::info!(%reason, "no NVIDIA GPUs will be reported");
        }
        let mut probe = Self {
            nvml,
            simulated: Vec::new(),
        };
        let first_index = probe.real_device_count();
        let mut index = first_index;
        for profile in simulated {
            for _ in 0..profile.count {
                probe.simulated.push(profile.device(index, node_key));
                index += 1;
            }
        }
        probe
    }

    fn real_device_count(&self) -> u32 {
        self.nvml
            .as_ref()
            .ok()
            .and_then(|n| n.device_count().ok())
            .unwrap_or(0)
    }

    /// Whether NVML answered, and its versions or its reason.
    pub fn status(&self) -> NvmlStatus {
        match &self.nvml {
            Ok(nvml) => NvmlStatus::Loaded {
                driver_version: nvml
                    .sys_driver_version()
                    .unwrap_or_else(|e| format!("unknown ({e})")),
                nvml_version: nvml
                    .sys_nvml_version()
                    .unwrap_or_else(|e| format!("unknown ({e})")),
                cuda_driver_version: nvml.sys_cuda_driver_version().ok().map(|v| {
                    format!(
                        "{}.{}",
                        cuda_driver_version_major(v),
                        cuda_driver_version_minor(v)
                    )
                }),
            },
            Err(reason) => NvmlStatus::Unavailable {
                reason: reason.clone(),
            },
        }
    }

    /// Every GPU: real devices NVML lists (a device NVML cannot open is logged and skipped), then
    /// simulated ones.
    pub fn devices(&self) -> Vec<GpuDevice> {
        let mut devices = Vec::new();
        if let Ok(nvml) = &self.nvml {
            for index in 0..self.real_device_count() {
                match nvml.device_by_index(index) {
                    Ok(device) => devices.push(describe(index, &device)),
                    Err(error) => tracing::warn!(index, %error, "NVML cannot open GPU"),
                }
            }
        }
        devices.extend(self.simulated.iter().cloned());
        devices
    }

    /// The real GPUs NVML can open, with their index and UUID.
    fn real_devices(&self) -> Vec<(u32, Device<'_>, String)> {
        let Ok(nvml) = &self.nvml else {
            return Vec::new();
        };
        (0..self.real_device_count())
            .filter_map(|index| {
                let device = nvml.device_by_index(index).ok()?;
                let uuid = device.uuid().ok()?;
                Some((index, device, uuid))
            })
            .collect()
    }

    /// Live readings for every GPU; simulated GPUs have none and say so.
    pub fn live_metrics(&self) -> Vec<GpuLiveMetrics> {
        let mut metrics = Vec::new();
        for (_, device, uuid) in self.real_devices() {
            metrics.push(GpuLiveMetrics {
                uuid,
                utilization_pct: device.utilization_rates().ok().map(|u| u.gpu),
                memory_used_bytes: device.memory_info().ok().map(|m| m.used),
                temperature_c: device.temperature(TemperatureSensor::Gpu).ok(),
                power_usage_mw: device.power_usage().ok(),
                simulated: false,
            });
        }
        metrics.extend(self.simulated.iter().map(|d| GpuLiveMetrics {
            uuid: d.uuid.clone(),
            utilization_pct: None,
            memory_used_bytes: None,
            temperature_c: None,
            power_usage_mw: None,
            simulated: true,
        }));
        metrics
    }

    /// A full monitoring reading of every GPU, with the Xid errors `xids` has seen (when a watcher
    /// runs). One NVML query per attribute; no external process.
    pub fn metrics(&self, xids: Option<&XidWatcher>) -> Vec<GpuMetrics> {
        let xid_counts = xids.map(XidWatcher::counts);
        let mut metrics = Vec::new();
        for (index, device, uuid) in self.real_devices() {
            let utilization = device.utilization_rates().ok();
            let memory = device.memory_info().ok();
            let clocks = GpuClocks {
                graphics_mhz: device.clock_info(Clock::Graphics).ok(),
                sm_mhz: device.clock_info(Clock::SM).ok(),
                memory_mhz: device.clock_info(Clock::Memory).ok(),
            };
            let any_clock = clocks.graphics_mhz.is_some()
                || clocks.sm_mhz.is_some()
                || clocks.memory_mhz.is_some();
            let mut processes: Vec<GpuProcess> = device
                .running_compute_processes()
                .unwrap_or_default()
                .into_iter()
                .map(|p| GpuProcess {
                    pid: p.pid,
                    used_memory_bytes: match p.used_gpu_memory {
                        UsedGpuMemory::Used(bytes) => Some(bytes),
                        UsedGpuMemory::Unavailable => None,
                    },
                })
                .collect();
            processes.sort_by_key(|p| p.pid);
            metrics.push(GpuMetrics {
                xid_errors: xid_counts
                    .as_ref()
                    .map(|c| c.get(&uuid).cloned().unwrap_or_default()),
                index,
                model: device.name().unwrap_or_default(),
                utilization_gpu_pct: utilization.as_ref().map(|u| u.gpu),
                utilization_memory_pct: utilization.as_ref().map(|u| u.memory),
                memory_used_bytes: memory.as_ref().map(|m| m.used),
                memory_total_bytes: memory.as_ref().map(|m| m.total),
                temperature_c: device.temperature(TemperatureSensor::Gpu).ok(),
                power_usage_mw: device.power_usage().ok(),
                power_limit_mw: device.enforced_power_limit().ok(),
                clocks: any_clock.then_some(clocks),
                throttle_reasons: device
                    .current_throttle_reasons()
                    .map(throttle_reason_names)
                    .unwrap_or_default(),
                ecc: ecc_state(&device),
                processes,
                simulated: false,
                uuid,
            });
        }
        metrics.extend(self.simulated.iter().map(|d| GpuMetrics {
            uuid: d.uuid.clone(),
            index: d.index,
            model: d.model.clone(),
            utilization_gpu_pct: None,
            utilization_memory_pct: None,
            memory_used_bytes: None,
            memory_total_bytes: Some(d.memory_total_bytes),
            temperature_c: None,
            power_usage_mw: None,
            power_limit_mw: None,
            clocks: None,
            throttle_reasons: Vec::new(),
            ecc: None,
            xid_errors: None,
            processes: Vec::new(),
            simulated: true,
        }));
        metrics
    }

    /// The full inventory: host facts (disk measured where `data_dir` lives), NVML status, GPUs.
    pub fn inventory(&self, data_dir: &Path) -> HardwareInventory {
        HardwareInventory {
            host: probe_host(data_dir),
            nvml: self.status(),
            gpus: self.devices(),
        }
    }
}

/// Names of the reasons clocks are held down, in NVML's terms, lower-case. Idle is not a
/// throttle anyone needs to hear about.
fn throttle_reason_names(reasons: ThrottleReasons) -> Vec<String> {
    let named = [
        (
            ThrottleReasons::APPLICATIONS_CLOCKS_SETTING,
            "applications_clocks_setting",
        ),
        (ThrottleReasons::SW_POWER_CAP, "sw_power_cap"),
        (ThrottleReasons::HW_SLOWDOWN, "hw_slowdown"),
        (ThrottleReasons::SYNC_BOOST, "sync_boost"),
        (ThrottleReasons::SW_THERMAL_SLOWDOWN, "sw_thermal_slowdown"),
        (ThrottleReasons::HW_THERMAL_SLOWDOWN, "hw_thermal_slowdown"),
        (
            ThrottleReasons::HW_POWER_BRAKE_SLOWDOWN,
            "hw_power_brake_slowdown",
        ),
        (
            ThrottleReasons::DISPLAY_CLOCK_SETTING,
            "display_clock_setting",
        ),
    ];
    named
        .iter()
        .filter(|(flag, _)| reasons.contains(*flag))
        .map(|(_, name)| (*name).to_owned())
        .collect()
}

fn ecc_state(device: &Device<'_>) -> Option<EccState> {
    device.is_ecc_enabled().ok().map(|mode| EccState {
        enabled: mode.currently_enabled,
        corrected_volatile: device
            .total_ecc_errors(MemoryError::Corrected, EccCounter::Volatile)
            .ok(),
        uncorrected_volatile: device
            .total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile)
            .ok(),
    })
}

/// Watches NVML for critical Xid errors on every GPU, on its own thread with its own NVML
/// handle, and counts them per GPU. Stops when dropped.
#[derive(Debug)]
pub struct XidWatcher {
    counts: Arc<Mutex<HashMap<String, XidErrors>>>,
    stop: Arc<AtomicBool>,
}

impl XidWatcher {
    /// Starts watching; `None` when NVML or its event API is unavailable (the reason is logged).
    pub fn start() -> Option<Self> {
        let counts = Arc::new(Mutex::new(HashMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let (thread_counts, thread_stop) = (Arc::clone(&counts), Arc::clone(&stop));
        let spawned = std::thread::Builder::new()
            .name("nvml-xid".to_owned())
            .spawn(move || watch_xids(&thread_counts, &thread_stop, &ready_tx));
        if let Err(error) = spawned {
            tracing::warn!(%error, "cannot start the Xid watcher thread");
            return None;
        }
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Some(Self { counts, stop }),
            Ok(Err(reason)) => {
                tracing::info!(%reason, "Xid errors are not watched");
                None
            }
            Err(_) => {
                stop.store(true, Ordering::Relaxed);
                tracing::warn!("the Xid watcher did not start within 10 s");
                None
            }
        }
    }

    /// Xid errors seen so far, by GPU UUID.
    pub fn counts(&self) -> HashMap<String, XidErrors> {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for XidWatcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn watch_xids(
    counts: &Mutex<HashMap<String, XidErrors>>,
    stop: &AtomicBool,
    ready: &std::sync::mpsc::SyncSender<Result<(), String>>,
) {
    let nvml = match Nvml::init() {
        Ok(nvml) => nvml,
        Err(error) => {
            let _ = ready.send(Err(format!("NVML could not be initialised: {error}")));
            return;
        }
    };
    let mut set = match nvml.create_event_set() {
        Ok(set) => set,
        Err(error) => {
            let _ = ready.send(Err(format!("NVML events are unavailable: {error}")));
            return;
        }
    };
    let mut watched = 0;
    for index in 0..nvml.device_count().unwrap_or(0) {
        let Ok(device) = nvml.device_by_index(index) else {
            continue;
        };
        match device.register_events(EventTypes::CRITICAL_XID_ERROR, set) {
            Ok(registered) => {
                set = registered;
                watched += 1;
            }
            Err(error) => {
                let _ = ready.send(Err(format!(
                    "GPU {index} does not report Xid events: {}",
                    error.error
                )));
                return;
            }
        }
    }
    if watched == 0 {
        let _ = ready.send(Err("no GPU to watch".to_owned()));
        return;
    }
    let _ = ready.send(Ok(()));
    while !stop.load(Ordering::Relaxed) {
        match set.wait(1_000) {
            Ok(event) => {
                let Ok(uuid) = event.device.uuid() else {
                    continue;
                };
                let code = match event.event_data {
                    Some(XidError::Value(code)) => Some(code),
                    _ => None,
                };
                tracing::warn!(gpu = %uuid, xid = ?code, "critical Xid error");
                let mut counts = counts.lock().unwrap_or_else(PoisonError::into_inner);
                let entry = counts.entry(uuid).or_default();
                entry.count += 1;
                entry.last = code.or(entry.last);
            }
            Err(NvmlError::Timeout) => {}
            Err(error) => {
                tracing::warn!(%error, "Xid watcher stopped");
                return;
            }
        }
    }
}

fn describe(index: u32, device: &Device<'_>) -> GpuDevice {
    let ecc = ecc_state(device);
    let clocks = GpuClocks {
        graphics_mhz: device.max_clock_info(Clock::Graphics).ok(),
        sm_mhz: device.max_clock_info(Clock::SM).ok(),
        memory_mhz: device.max_clock_info(Clock::Memory).ok(),
    };
    let any_clock =
        clocks.graphics_mhz.is_some() || clocks.sm_mhz.is_some() || clocks.memory_mhz.is_some();
    GpuDevice {
        index,
        uuid: device
            .uuid()
            .unwrap_or_else(|e| format!("GPU-unknown-{index} ({e})")),
        model: device.name().unwrap_or_else(|e| format!("unknown ({e})")),
        memory_total_bytes: device.memory_info().map(|m| m.total).unwrap_or(0),
        pci_bus_id: device.pci_info().ok().map(|p| p.bus_id),
        compute_capability: device.cuda_compute_capability().ok().and_then(|c| {
            Some(ComputeCapability {
                major: u32::try_from(c.major).ok()?,
                minor: u32::try_from(c.minor).ok()?,
            })
        }),
        ecc,
        power_limit_mw: device.enforced_power_limit().ok(),
        max_clocks: any_clock.then_some(clocks),
        temperature_c: device.temperature(TemperatureSensor::Gpu).ok(),
        simulated: false,
    }
}

/// Host facts: OS, kernel, CPU, memory, and the filesystem that holds `data_dir`.
pub fn probe_host(data_dir: &Path) -> HostInfo {
    let mut system = System::new();
    system.refresh_memory();
    system.refresh_cpu_all();
    let (disk_total_bytes, disk_available_bytes) = disk_space(data_dir);
    HostInfo {
        hostname: System::host_name().unwrap_or_default(),
        os: System::long_os_version().unwrap_or_else(|| System::name().unwrap_or_default()),
        kernel: System::kernel_version().unwrap_or_default(),
        arch: System::cpu_arch(),
        cpu_model: system
            .cpus()
            .first()
            .map(|c| c.brand().trim().to_owned())
            .unwrap_or_default(),
        cpu_logical_cores: u32::try_from(system.cpus().len()).unwrap_or(u32::MAX),
        cpu_physical_cores: System::physical_core_count().and_then(|n| u32::try_from(n).ok()),
        memory_total_bytes: system.total_memory(),
        disk_total_bytes,
        disk_available_bytes,
    }
}

/// Total and available bytes of the mounted filesystem with the longest mount point that
/// contains `path`.
fn disk_space(path: &Path) -> (u64, u64) {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let disks = Disks::new_with_refreshed_list();
    disks
        .list()
        .iter()
        .filter(|d| path.starts_with(d.mount_point()))
        .max_by_key(|d| d.mount_point().as_os_str().len())
        .map(|d| (d.total_space(), d.available_space()))
        .unwrap_or((0, 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NodeIdentity;

    fn h100() -> SimulatedGpuProfile {
        SimulatedGpuProfile {
            model: "NVIDIA H100 80GB HBM3".into(),
            count: 2,
            memory_mib: 81_559,
        }
    }

    #[test]
    fn simulated_devices_are_marked_and_stable() {
        let identity = NodeIdentity::generate();
        let probe = GpuProbe::open(&[h100()], &identity.public_key());
        let simulated: Vec<_> = probe
            .devices()
            .into_iter()
            .filter(|d| d.simulated)
            .collect();
        assert_eq!(simulated.len(), 2);
        assert!(simulated.iter().all(|d| d.uuid.starts_with("GPU-sim-")));
        assert_ne!(simulated[0].uuid, simulated[1].uuid);
        assert_eq!(simulated[0].memory_total_bytes, 81_559 * 1024 * 1024);
        assert!(simulated[0].temperature_c.is_none(), "no made-up readings");
        let again = GpuProbe::open(&[h100()], &identity.public_key());
        assert_eq!(again.devices().iter().filter(|d| d.simulated).count(), 2);
        assert_eq!(
            again.devices(),
            probe.devices().into_iter().collect::<Vec<_>>()
        );
        let live = probe.live_metrics();
        assert!(
            live.iter()
                .filter(|m| m.simulated)
                .all(|m| m.utilization_pct.is_none() && m.temperature_c.is_none())
        );
    }

    #[test]
    fn without_nvml_the_reason_is_reported() {
        let identity = NodeIdentity::generate();
        let probe = GpuProbe::open(&[], &identity.public_key());
        match probe.status() {
            NvmlStatus::Unavailable { reason } => {
                assert!(reason.contains("NVML"), "{reason}");
                assert!(probe.devices().is_empty());
                eprintln!("NVML absent on this machine (as expected without a GPU): {reason}");
            }
            NvmlStatus::Loaded { driver_version, .. } => {
                eprintln!("NVML present (driver {driver_version}); real devices listed");
                assert!(probe.devices().iter().all(|d| !d.simulated));
            }
        }
    }

    #[test]
    fn host_facts_are_read_from_the_machine() {
        let host = probe_host(Path::new("/"));
        assert!(host.cpu_logical_cores >= 1);
        assert!(host.memory_total_bytes > 0);
        assert!(host.disk_total_bytes > 0);
        assert!(host.disk_available_bytes <= host.disk_total_bytes);
        assert!(!host.kernel.is_empty());
        let expected = std::thread::available_parallelism().unwrap().get() as u32;
        assert!(host.cpu_logical_cores >= expected);
    }
}
