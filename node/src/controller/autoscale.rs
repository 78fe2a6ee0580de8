//! Autoscaling a deployment. The deployment's controller reads the autoscaler's metric on every
//! running replica through the replica's node (`deploy.replicas` with `measure`, every few
//! seconds), decides with [`ScaleRecord::decide`], and keeps the count and each decision in a
//! scale record it hands every member with its reads (fenced like the rest of its calls), so
//! the next controller goes on from the count and the cooldown the last one left. The count
//! replaces the spec's `replicas` in the controller's plan; the deployment's own revision does
//! not change.

use claw_api::autoscale::{
    AutoscaleStatus, Autoscaler, DECISIONS_KEPT, Metric, ScaleDecision, ScaleRecord,
};
use claw_api::deploy::{Deployment, Fence, Reading};
use claw_api::workload::{ExecParams, WorkloadRef, WorkloadState};
use claw_mesh::{ErrorCode, InvokeFailure, PeerId};

use super::{
    CONTROLLER_CANDIDATES, Deployments, Held, failure, key_of, ranking, read_only, written_by,
};
use crate::now_ms;
use crate::workloads::WorkloadRecord;

/// How often a controller reads an autoscaler's metric.
const MEASURE_EVERY_MS: u64 = 5_000;
/// How long one replica's reading may take.
const READING_DEADLINE_SECS: u32 = 5;

impl Deployments {
    /// Whether to read the metric this round: the deployment has an autoscaler and the last
    /// reading is old enough.
    pub(super) fn due_measure(&self, autoscaler: Option<&Autoscaler>, held: &mut Held) -> bool {
        let now = now_ms();
        if autoscaler.is_none() || now < held.measured_ms.saturating_add(MEASURE_EVERY_MS) {
            return false;
        }
        held.measured_ms = now;
        true
    }

    /// Keeps a scale record a controller hands this node, when the controller wrote it under
    /// the claim it holds and it is within bounds.
    pub(super) async fn keep_scale(
        &self,
        caller: PeerId,
        name: &str,
        epoch: u64,
        record: ScaleRecord,
    ) -> Result<(), InvokeFailure> {
        if !written_by(record.fence.as_ref(), caller, epoch) {
            return Ok(());
        }
        record
            .check()
            .map_err(|e| failure(ErrorCode::InvalidParams, e))?;
        let key = name.to_owned();
        self.inner
            .store
            .run(move |s| s.put_scale(&key, &record))
            .await?;
        Ok(())
    }

    /// Reads `metric` on each of `records` that runs.
    pub(super) async fn measure(
        &self,
        records: &[WorkloadRecord],
        metric: &Metric,
    ) -> Vec<Reading> {
        let running = records.iter().filter(|r| r.state == WorkloadState::Running);
        let reads = running.map(|record| async move {
            let outcome = self.read_metric(record, metric).await;
            Reading {
                workload: record.id.clone(),
                value: outcome.as_ref().ok().copied(),
                error: outcome.err(),
            }
        });
        futures::future::join_all(reads).await
    }

    async fn read_metric(&self, record: &WorkloadRecord, metric: &Metric) -> Result<f64, String> {
        let workloads = &self.inner.workloads;
        let value = match metric {
            Metric::GpuUtilization => {
                let probe = std::sync::Arc::clone(&self.inner.probe);
                let readings = tokio::task::spawn_blocking(move || probe.metrics(None))
                    .await
                    .map_err(|e| e.to_string())?;
                let values: Vec<f64> = readings
                    .iter()
                    .filter(|m| record.gpus.contains(&m.uuid))
                    .filter_map(|m| m.utilization_gpu_pct.map(f64::from))
                    .collect();
                if values.is_empty() {
                    return Err("no GPU reading (simulated GPUs have none)".to_owned());
                }
                values.iter().sum::<f64>() / values.len() as f64
            }
            Metric::Cpu => workloads
                .stats(WorkloadRef {
                    workload: record.id.clone(),
                })
                .await
                .map_err(|e| e.to_string())?
                .cpu_percent
                .ok_or("no CPU sample yet")?,
            Metric::File { path } => {
                let output = workloads
                    .exec(ExecParams {
                        workload: record.id.clone(),
                        argv: vec!["cat".to_owned(), path.clone()],
                        timeout_secs: Some(READING_DEADLINE_SECS),
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                if output.exit_code != Some(0) {
                    return Err(format!("cat {path} failed"));
                }
                parse_number(&output.stdout)?
            }
            Metric::Http { port, path } => {
                let ip = workloads
                    .container_ip(&record.id)
                    .await
                    .ok_or("the container has no address")?;
                let deadline = std::time::Duration::from_secs(u64::from(READING_DEADLINE_SECS));
                let body = tokio::time::timeout(deadline, http_body(ip, *port, path))
                    .await
                    .map_err(|_| "the endpoint did not answer in time".to_owned())??;
                parse_number(&body)?
            }
        };
        if value.is_finite() {
            Ok(value)
        } else {
            Err("not a finite number".to_owned())
        }
    }

    /// `autoscale.status`: the autoscaler and the newest scale record among the deployment's
    /// controller, the next in line and this member.
    pub async fn autoscale_status(&self, name: &str) -> Result<AutoscaleStatus, InvokeFailure> {
        let autoscaler = self.inner.objects.autoscaler(name).await?;
        let deployment = autoscaler.spec.deployment.clone();
        let members = self.mesh()?.fleet_members();
        let ranked = ranking(&key_of(&deployment), members.iter().map(|m| m.peer_id));
        let controller = ranked.first().map(ToString::to_string);
        let mut asked: Vec<PeerId> = ranked.into_iter().take(CONTROLLER_CANDIDATES).collect();
        if !asked.contains(&self.inner.local) {
            asked.push(self.inner.local);
        }
        let mut scale: Option<ScaleRecord> = None;
        for (_, report) in self.gather(&read_only(&deployment), asked).await {
            if let Some(record) = report.ok().and_then(|r| r.scale)
                && scale.as_ref().is_none_or(|s| record.is_newer_than(s))
            {
                scale = Some(record);
            }
        }
        Ok(AutoscaleStatus {
            autoscaler,
            controller,
            scale,
        })
    }
}

/// A number from a reading's text: the first line, trimmed, at most 64 bytes.
fn parse_number(text: &str) -> Result<f64, String> {
    let first = text.lines().next().unwrap_or_default().trim();
    if first.len() > 64 {
        return Err("the reading is over 64 bytes".to_owned());
    }
    // What the file or endpoint holds goes back to the controller only as a number: a reading
    // that is not one says so without echoing it.
    first
        .parse::<f64>()
        .map_err(|_| "the reading is not a number".to_owned())
}

/// The body of `GET path` on `ip:port` (HTTP/1.0, at most 4 KiB, 2xx only).
async fn http_body(ip: std::net::IpAddr, port: u16, path: &str) -> Result<String, String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect((ip, port))
        .await
        .map_err(|e| e.to_string())?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {ip}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream
        .take(4096)
        .read_to_end(&mut response)
        .await
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP response")?;
    let ok = head
        .split(' ')
        .nth(1)
        .is_some_and(|status| status.starts_with('2'));
    if !ok {
        return Err(format!(
            "the endpoint answered {:?}",
            head.lines().next().unwrap_or_default()
        ));
    }
    Ok(body.to_owned())
}

/// The deployment as its controller runs it this round: with an autoscaler, at the count the
/// scale record holds after this round's decision (the record is taken from the newest one the
/// members reported when this controller has none yet).
pub(super) fn scale(
    autoscaler: Option<&Autoscaler>,
    deployment: &Deployment,
    held: &mut Held,
    claim: &Fence,
    reported: Vec<ScaleRecord>,
    readings: &[Reading],
) -> Deployment {
    let Some(autoscaler) = autoscaler else {
        held.scale = None;
        return deployment.clone();
    };
    let now = now_ms();
    let record = held.scale.get_or_insert_with(|| {
        let mut newest = reported
            .into_iter()
            .reduce(|a, b| if b.is_newer_than(&a) { b } else { a })
            .unwrap_or_else(|| ScaleRecord {
                replicas: deployment.spec.replicas,
                ..ScaleRecord::default()
            });
        newest.fence = Some(claim.clone());
        newest.version = 0;
        newest
    });
    let before = record.clone();
    let values: Vec<f64> = readings.iter().filter_map(|r| r.value).collect();
    let mean = (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64);
    if mean.is_some() {
        record.value = mean;
    }
    if let Some((to, reason)) = record.decide(&autoscaler.spec, record.replicas, mean, now) {
        tracing::info!(deployment = %deployment.name, from = record.replicas, to, %reason, "autoscaled");
        record.decisions.push(ScaleDecision {
            at_ms: now,
            from: record.replicas,
            to,
            value: mean,
            reason,
        });
        let excess = record.decisions.len().saturating_sub(DECISIONS_KEPT);
        record.decisions.drain(..excess);
        record.replicas = to;
        record.changed_ms = now;
    }
    if *record != before {
        record.version += 1;
    }
    let mut scaled = deployment.clone();
    scaled.spec.replicas = record.replicas;
    scaled
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reading_is_one_short_number() {
        assert_eq!(parse_number("42.5\n"), Ok(42.5));
        assert_eq!(parse_number(" 7 \nignored"), Ok(7.0));
        assert!(parse_number("high").is_err());
        assert!(parse_number(&"9".repeat(65)).is_err());
    }
}
