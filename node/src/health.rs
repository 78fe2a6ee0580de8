//! `node.health`: whether the node can do its job, from live checks of NVML, Docker, disk,
//! memory and the GPUs themselves. The verdict is the worst of the checks.

use std::path::Path;

use claw_attestation::{GpuMetrics, NvmlStatus};

pub use claw_api::node::{HealthCheck, HealthReport, HealthStatus};

/// What the checks read, gathered by the caller.
#[derive(Debug)]
pub struct HealthInputs<'a> {
    /// NVML's status.
    pub nvml: &'a NvmlStatus,
    /// A reading of each GPU.
    pub gpus: &'a [GpuMetrics],
    /// The Docker Engine's version, or why it is unreachable.
    pub docker: Result<String, String>,
    /// The data directory, whose filesystem is checked.
    pub data_dir: &'a Path,
    /// Whether the node is cordoned.
    pub cordoned: bool,
}

fn check(component: &str, status: HealthStatus, detail: impl Into<String>) -> HealthCheck {
    HealthCheck {
        component: component.to_owned(),
        status,
        detail: detail.into(),
    }
}

const GIB: u64 = 1024 * 1024 * 1024;

/// Throttle reasons that mean the GPU is in trouble (not merely idle or capped by settings).
const TROUBLE_THROTTLES: &[&str] = &[
    "hw_slowdown",
    "sw_thermal_slowdown",
    "hw_thermal_slowdown",
    "hw_power_brake_slowdown",
];

/// Runs every check. Blocking: reads the OS.
pub fn assess(inputs: &HealthInputs<'_>) -> HealthReport {
    use HealthStatus::{Degraded, Healthy, Unhealthy};
    let mut checks = Vec::new();
    checks.push(match inputs.nvml {
        NvmlStatus::Loaded { driver_version, .. } => check(
            "nvml",
            Healthy,
            format!("NVML loaded, driver {driver_version}"),
        ),
        NvmlStatus::Unavailable { reason } => check(
            "nvml",
            Degraded,
            format!("{reason}; this node can offer no real GPUs"),
        ),
    });
    checks.push(match &inputs.docker {
        Ok(version) => check("docker", Healthy, format!("Docker Engine {version}")),
        Err(reason) => check(
            "docker",
            Unhealthy,
            format!("{reason}; workloads cannot run"),
        ),
    });

    let mut system = sysinfo::System::new();
    system.refresh_memory();
    let (total, available) = (system.total_memory(), system.available_memory());
    let pct = |part: u64, whole: u64| {
        if whole == 0 {
            0.0
        } else {
            part as f64 * 100.0 / whole as f64
        }
    };
    let memory_pct = pct(available, total);
    let memory_detail = format!(
        "{:.1} GiB of {:.1} GiB available ({memory_pct:.0}%)",
        available as f64 / GIB as f64,
        total as f64 / GIB as f64
    );
    checks.push(check(
        "memory",
        if memory_pct < 2.0 {
            Unhealthy
        } else if memory_pct < 5.0 {
            Degraded
        } else {
            Healthy
        },
        memory_detail,
    ));

    let host = claw_attestation::probe_host(inputs.data_dir);
    let disk_pct = pct(host.disk_available_bytes, host.disk_total_bytes);
    let disk_detail = format!(
        "{:.1} GiB of {:.1} GiB free where {} lives ({disk_pct:.0}%)",
        host.disk_available_bytes as f64 / GIB as f64,
        host.disk_total_bytes as f64 / GIB as f64,
        inputs.data_dir.display()
    );
    checks.push(check(
        "disk",
        if host.disk_available_bytes < GIB || disk_pct < 2.0 {
            Unhealthy
        } else if disk_pct < 10.0 {
            Degraded
        } else {
            Healthy
        },
        disk_detail,
    ));

    checks.extend(inputs.gpus.iter().map(gpu_check));
    let status = checks.iter().map(|c| c.status).max().unwrap_or(Healthy);
    HealthReport {
        status,
        reasons: checks
            .iter()
            .filter(|c| c.status != Healthy)
            .cloned()
            .collect(),
        checks,
        cordoned: inputs.cordoned,
    }
}

/// One GPU's check: degraded on uncorrected ECC errors, critical Xid errors, trouble throttling
/// or 90 °C and more; a simulated GPU has no readings and is healthy.
fn gpu_check(gpu: &GpuMetrics) -> HealthCheck {
    use HealthStatus::{Degraded, Healthy};
    let component = format!("gpu:{}", gpu.uuid);
    if gpu.simulated {
        return check(&component, Healthy, "simulated GPU: no readings");
    }
    let mut problems = Vec::new();
    if let Some(ecc) = &gpu.ecc
        && ecc.uncorrected_volatile.unwrap_or(0) > 0
    {
        problems.push(format!(
            "{} uncorrected ECC errors",
            ecc.uncorrected_volatile.unwrap_or(0)
        ));
    }
    if let Some(xid) = &gpu.xid_errors
        && xid.count > 0
    {
        problems.push(format!(
            "{} critical Xid errors (last {})",
            xid.count,
            xid.last.map_or("unknown".to_owned(), |x| x.to_string())
        ));
    }
    let throttles: Vec<&String> = gpu
        .throttle_reasons
        .iter()
        .filter(|r| TROUBLE_THROTTLES.contains(&r.as_str()))
        .collect();
    if !throttles.is_empty() {
        problems.push(format!("throttled: {throttles:?}"));
    }
    if let Some(temp) = gpu.temperature_c
        && temp >= 90
    {
        problems.push(format!("{temp} °C"));
    }
    if problems.is_empty() {
        check(
            &component,
            Healthy,
            format!(
                "{}: {} °C, {}% busy",
                gpu.model,
                gpu.temperature_c.map_or("?".to_owned(), |t| t.to_string()),
                gpu.utilization_gpu_pct
                    .map_or("?".to_owned(), |u| u.to_string())
            ),
        )
    } else {
        check(
            &component,
            Degraded,
            format!("{}: {}", gpu.model, problems.join("; ")),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use claw_attestation::{EccState, XidErrors};

    fn gpu(uuid: &str) -> GpuMetrics {
        GpuMetrics {
            uuid: uuid.to_owned(),
            index: 0,
            model: "NVIDIA H100".to_owned(),
            utilization_gpu_pct: Some(10),
            utilization_memory_pct: Some(1),
            memory_used_bytes: Some(1),
            memory_total_bytes: Some(2),
            temperature_c: Some(40),
            power_usage_mw: Some(1),
            power_limit_mw: Some(2),
            clocks: None,
            throttle_reasons: Vec::new(),
            ecc: None,
            xid_errors: Some(XidErrors::default()),
            processes: Vec::new(),
            simulated: false,
        }
    }

    #[test]
    fn the_verdict_is_the_worst_check_with_its_reasons() {
        let nvml = NvmlStatus::Loaded {
            driver_version: "550".into(),
            nvml_version: "12".into(),
            cuda_driver_version: None,
        };
        let dir = std::env::temp_dir();
        let healthy = [gpu("GPU-a")];
        let report = assess(&HealthInputs {
            nvml: &nvml,
            gpus: &healthy,
            docker: Ok("28".into()),
            data_dir: &dir,
            cordoned: false,
        });
        let gpu_check = report
            .checks
            .iter()
            .find(|c| c.component == "gpu:GPU-a")
            .unwrap();
        assert_eq!(gpu_check.status, HealthStatus::Healthy);

        let mut hot = gpu("GPU-b");
        hot.throttle_reasons = vec!["hw_thermal_slowdown".into()];
        let mut broken = gpu("GPU-c");
        broken.ecc = Some(EccState {
            enabled: true,
            corrected_volatile: Some(0),
            uncorrected_volatile: Some(3),
        });
        broken.xid_errors = Some(XidErrors {
            count: 2,
            last: Some(79),
        });
        let report = assess(&HealthInputs {
            nvml: &nvml,
            gpus: &[hot, broken],
            docker: Err("no socket at /x".into()),
            data_dir: &dir,
            cordoned: true,
        });
        assert_eq!(report.status, HealthStatus::Unhealthy);
        let reason = |c: &str| {
            report
                .reasons
                .iter()
                .find(|r| r.component == c)
                .unwrap()
                .clone()
        };
        assert_eq!(reason("docker").status, HealthStatus::Unhealthy);
        assert!(reason("gpu:GPU-b").detail.contains("hw_thermal_slowdown"));
        let broken = reason("gpu:GPU-c");
        assert!(broken.detail.contains("3 uncorrected ECC") && broken.detail.contains("last 79"));
        assert!(report.cordoned);
    }

    #[test]
    fn a_missing_nvml_is_reported_with_its_reason() {
        let nvml = NvmlStatus::Unavailable {
            reason: "NVML could not be initialised: libnvidia-ml.so not found".into(),
        };
        let report = assess(&HealthInputs {
            nvml: &nvml,
            gpus: &[],
            docker: Ok("28".into()),
            data_dir: &std::env::temp_dir(),
            cordoned: false,
        });
        let nvml = report
            .reasons
            .iter()
            .find(|r| r.component == "nvml")
            .unwrap();
        assert_eq!(nvml.status, HealthStatus::Degraded);
        assert!(nvml.detail.contains("libnvidia-ml.so not found"));
        assert!(report.status >= HealthStatus::Degraded);
    }
}
