//! Autoscalers: a deployment's replica count kept between `min` and `max` so that a metric its
//! replicas show stays near a target. An autoscaler is a fleet object ([`crate::objects`])
//! signed by an operator; the deployment's controller measures the metric on every replica
//! (through each replica's node), decides, and records each decision and its reason in a scale
//! record it keeps on every member, fenced like its replicas, so the next controller goes on
//! from the count and the cooldown the last one left.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::command::commands;
use crate::deploy::{Fence, MAX_REPLICAS};
use crate::workload::SpecError;
use crate::{Answer, ErrorCode, InvokeFailure};

/// Decisions a scale record keeps (the newest).
pub const DECISIONS_KEPT: usize = 20;
/// Longest cooldown: one hour.
pub const MAX_COOLDOWN_SECS: u32 = 3600;

/// What an autoscaler measures on each replica.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Metric {
    /// The mean utilisation of the replica's GPUs, in percent, as NVML reads it on its node
    /// (simulated GPUs have no reading).
    GpuUtilization,
    /// The replica's container CPU use, in percent of one CPU.
    Cpu,
    /// A number the workload publishes in a file inside its container.
    File {
        /// The file's absolute path inside the container.
        path: String,
    },
    /// A number the workload publishes as the body of an HTTP GET on its port.
    Http {
        /// The port inside the container.
        port: u16,
        /// The path, starting with `/`.
        #[serde(default = "root")]
        path: String,
    },
}

fn root() -> String {
    "/".to_owned()
}

/// An autoscaler: which deployment, between which counts, on which metric.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AutoscaleSpec {
    /// The deployment it scales.
    pub deployment: String,
    /// Fewest replicas, 1 to 64.
    pub min: u32,
    /// Most replicas, `min` to 64.
    pub max: u32,
    /// What it measures.
    pub metric: Metric,
    /// The value the mean of the replicas' readings should stay near (within 10 %).
    pub target: f64,
    /// Seconds after a change before the count may go down, 0 to 3600. Default 60. The count
    /// goes up as soon as the metric says so.
    #[serde(default = "sixty")]
    pub cooldown_secs: u32,
}

fn sixty() -> u32 {
    60
}

impl AutoscaleSpec {
    /// Checks every field.
    pub fn check(&self) -> Result<(), SpecError> {
        let invalid = |m: &str| Err(SpecError::Invalid(m.to_owned()));
        crate::deploy::check_name(&self.deployment)?;
        if self.min == 0 || self.min > self.max || self.max > MAX_REPLICAS {
            return invalid("min and max: 1 <= min <= max <= 64");
        }
        if !self.target.is_finite() || self.target <= 0.0 || self.target > 1e12 {
            return invalid("target must be a positive number");
        }
        if self.cooldown_secs > MAX_COOLDOWN_SECS {
            return invalid("cooldown_secs must be 0 to 3600");
        }
        match &self.metric {
            Metric::File { path }
                if !path.starts_with('/')
                    || path.len() > 1024
                    || path.bytes().any(|b| b.is_ascii_control()) =>
            {
                invalid("metric.path: an absolute path of at most 1 KiB")
            }
            Metric::Http { port: 0, .. } => invalid("metric.port must be 1 to 65535"),
            Metric::Http { path, .. }
                if !path.starts_with('/')
                    || path.len() > 1024
                    || path.bytes().any(|b| b.is_ascii_control() || b == b' ') =>
            {
                invalid("metric.path: starting with '/', no spaces, at most 1 KiB")
            }
            _ => Ok(()),
        }
    }
}

/// One decision of an autoscaler.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScaleDecision {
    /// When, Unix ms.
    pub at_ms: u64,
    /// The count before.
    pub from: u32,
    /// The count after.
    pub to: u32,
    /// The mean reading it decided on, when there was one.
    #[serde(default)]
    pub value: Option<f64>,
    /// Why, in words.
    pub reason: String,
}

/// The count an autoscaler keeps a deployment at, as the deployment's controller keeps it on
/// every member. A member keeps the record with the highest `(fence, version)` it was given.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScaleRecord {
    /// The claim of the controller that wrote it.
    pub fence: Option<Fence>,
    /// Its version under that claim.
    pub version: u64,
    /// The replica count decided.
    pub replicas: u32,
    /// When the count last changed, Unix ms (the cooldown counts from here).
    pub changed_ms: u64,
    /// The last mean reading, when there was one.
    #[serde(default)]
    pub value: Option<f64>,
    /// The newest decisions, oldest first (the last 20).
    pub decisions: Vec<ScaleDecision>,
}

impl ScaleRecord {
    /// Whether this record was written after `other`.
    pub fn is_newer_than(&self, other: &ScaleRecord) -> bool {
        (&self.fence, self.version) > (&other.fence, other.version)
    }

    /// Checks the bounds every member keeps to.
    pub fn check(&self) -> Result<(), String> {
        let finite = |v: Option<f64>| v.is_none_or(f64::is_finite);
        if self.replicas > MAX_REPLICAS
            || self.decisions.len() > DECISIONS_KEPT
            || !finite(self.value)
            || self
                .decisions
                .iter()
                .any(|d| d.reason.len() > 256 || !finite(d.value))
        {
            return Err(format!(
                "a scale record holds at most {MAX_REPLICAS} replicas and {DECISIONS_KEPT} \
                 decisions with reasons of at most 256 bytes"
            ));
        }
        Ok(())
    }

    /// The next count for `spec` from `current`, given the mean reading `value` at `now`:
    /// up at once when the mean is over the target by more than 10 % (by the ratio, at most
    /// double); down by the ratio once the cooldown since the last change passed; within
    /// `min..=max` whatever the reading. Returns the new count and why, or `None` to stay.
    pub fn decide(
        &self,
        spec: &AutoscaleSpec,
        current: u32,
        value: Option<f64>,
        now: u64,
    ) -> Option<(u32, String)> {
        let clamped = current.clamp(spec.min, spec.max);
        if clamped != current {
            return Some((
                clamped,
                format!("{current} is outside min {} and max {}", spec.min, spec.max),
            ));
        }
        let value = value?;
        let ratio = value / spec.target;
        if (ratio - 1.0).abs() <= 0.1 {
            return None;
        }
        let wanted = (f64::from(current) * ratio).ceil();
        let desired = if ratio > 1.0 {
            wanted
                .min(f64::from(current) * 2.0)
                .max(f64::from(current) + 1.0)
        } else {
            wanted
        };
        // In range 0..=128 after the clamps above: the cast keeps the value.
        let desired =
            (desired.clamp(0.0, f64::from(MAX_REPLICAS)) as u32).clamp(spec.min, spec.max);
        if desired == current {
            return None;
        }
        let cooled = now >= self.changed_ms + u64::from(spec.cooldown_secs) * 1000;
        if desired < current && !cooled {
            return None;
        }
        let direction = if desired > current { "over" } else { "under" };
        Some((
            desired,
            format!(
                "mean {value:.1} is {direction} the target {:.1}: {current} -> {desired} replicas",
                spec.target
            ),
        ))
    }
}

/// `autoscale.create`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AutoscaleCreateParams {
    /// Its name, unique among the fleet's autoscalers: 1 to 32 of `a-z 0-9 -`.
    pub name: String,
    /// What it scales and how.
    pub spec: AutoscaleSpec,
}

/// Names an autoscaler.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AutoscaleRef {
    /// The autoscaler's name.
    pub name: String,
}

/// `autoscale.adjust`: a new revision with the fields given changed.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AutoscaleAdjustParams {
    /// The autoscaler.
    pub name: String,
    /// A new minimum.
    #[serde(default)]
    pub min: Option<u32>,
    /// A new maximum.
    #[serde(default)]
    pub max: Option<u32>,
    /// A new target.
    #[serde(default)]
    pub target: Option<f64>,
    /// A new cooldown.
    #[serde(default)]
    pub cooldown_secs: Option<u32>,
}

/// A change an operator asks of an autoscaler; nodes and the bridge decide with
/// [`AutoscaleChange::next_spec`].
#[derive(Debug, Clone)]
pub enum AutoscaleChange {
    /// A new autoscaler.
    Create(Box<AutoscaleSpec>),
    /// The fields given changed.
    Adjust(AutoscaleAdjustParams),
    /// Deleted.
    Delete,
}

impl AutoscaleChange {
    /// The spec the next revision of autoscaler `name` carries (`None` deletes it), given its
    /// live spec; refused the way the commands answer.
    pub fn next_spec(
        self,
        name: &str,
        live: Option<&AutoscaleSpec>,
    ) -> Result<Option<AutoscaleSpec>, InvokeFailure> {
        let invalid = |e: SpecError| InvokeFailure::new(ErrorCode::InvalidParams, e.to_string());
        crate::jobs::check_name(name).map_err(invalid)?;
        let live_spec = || {
            live.cloned()
                .ok_or_else(|| crate::jobs::not_found("autoscaler", name, "autoscale.status"))
        };
        let next = match self {
            Self::Create(spec) => {
                if live.is_some() {
                    return Err(InvokeFailure::new(
                        ErrorCode::Conflict,
                        format!("autoscaler {name:?} exists; autoscale.adjust changes it"),
                    ));
                }
                Some(*spec)
            }
            Self::Adjust(adjust) => {
                let mut spec = live_spec()?;
                if adjust.min.is_none()
                    && adjust.max.is_none()
                    && adjust.target.is_none()
                    && adjust.cooldown_secs.is_none()
                {
                    return Err(InvokeFailure::new(
                        ErrorCode::InvalidParams,
                        "autoscale.adjust changes nothing: name a field to change",
                    ));
                }
                spec.min = adjust.min.unwrap_or(spec.min);
                spec.max = adjust.max.unwrap_or(spec.max);
                spec.target = adjust.target.unwrap_or(spec.target);
                spec.cooldown_secs = adjust.cooldown_secs.unwrap_or(spec.cooldown_secs);
                Some(spec)
            }
            Self::Delete => {
                live_spec()?;
                None
            }
        };
        if let Some(spec) = &next {
            spec.check().map_err(invalid)?;
        }
        Ok(next)
    }
}

/// An autoscaler as every member keeps it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Autoscaler {
    /// Its name.
    pub name: String,
    /// Its revision; every change adds one.
    pub revision: u64,
    /// What it scales and how.
    pub spec: AutoscaleSpec,
    /// The operator that signed this revision (peer id).
    pub signed_by: String,
    /// When, Unix ms.
    pub signed_at_ms: u64,
}

impl Answer for Autoscaler {}

/// `autoscale.status`: the autoscaler and what it decided.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AutoscaleStatus {
    /// The autoscaler.
    #[serde(flatten)]
    pub autoscaler: Autoscaler,
    /// The deployment's controller, which measures and decides.
    pub controller: Option<String>,
    /// The count decided and its decisions, as the newest record of the controller, the next
    /// in line and this member has it; absent before the first decision.
    pub scale: Option<ScaleRecord>,
}

impl Answer for AutoscaleStatus {}

/// `autoscale.delete`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AutoscalerDeleted {
    /// The autoscaler.
    pub name: String,
    /// The revision that deleted it.
    pub revision: u64,
}

impl Answer for AutoscalerDeleted {}

commands! {
    /// `autoscale.create`.
    AutoscaleCreate = "autoscale.create", Operate, AutoscaleCreateParams => Autoscaler,
        "Scale a deployment between min and max replicas on a metric (GPU utilisation, CPU, or a number the workload publishes) toward a target";
    /// `autoscale.status`.
    AutoscaleStatusCommand = "autoscale.status", Read, AutoscaleRef => AutoscaleStatus,
        "An autoscaler's spec, the count it decided and each decision with its reason";
    /// `autoscale.adjust`.
    AutoscaleAdjust = "autoscale.adjust", Operate, AutoscaleAdjustParams => Autoscaler,
        "Change an autoscaler's min, max, target or cooldown (a new revision)";
    /// `autoscale.delete`.
    AutoscaleDelete = "autoscale.delete", Operate, AutoscaleRef => AutoscalerDeleted,
        "Delete an autoscaler; the deployment goes back to its own replica count";
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn spec() -> AutoscaleSpec {
        serde_json::from_value(json!({
            "deployment": "web", "min": 1, "max": 4,
            "metric": {"type": "file", "path": "/tmp/load"}, "target": 50.0,
            "cooldown_secs": 30,
        }))
        .unwrap()
    }

    #[test]
    fn a_spec_is_checked_and_parsed_strictly() {
        assert!(spec().check().is_ok());
        let bad = |change: serde_json::Value| {
            let mut value = serde_json::to_value(spec()).unwrap();
            for (k, v) in change.as_object().unwrap() {
                value[k] = v.clone();
            }
            serde_json::from_value::<AutoscaleSpec>(value).map_or(true, |s| s.check().is_err())
        };
        assert!(bad(json!({"min": 0})));
        assert!(bad(json!({"min": 5})));
        assert!(bad(json!({"max": 65})));
        assert!(bad(json!({"target": -1.0})));
        assert!(bad(json!({"metric": {"type": "file", "path": "relative"}})));
        assert!(bad(json!({"extra": 1})));
    }

    #[test]
    fn it_scales_up_at_once_and_down_after_the_cooldown() {
        let spec = spec();
        let record = ScaleRecord {
            changed_ms: 1_000,
            ..ScaleRecord::default()
        };
        // Within 10 % of the target: stay.
        assert_eq!(record.decide(&spec, 2, Some(54.0), 2_000), None);
        // Twice the target: double (at most).
        let (to, reason) = record.decide(&spec, 1, Some(100.0), 2_000).unwrap();
        assert_eq!(to, 2);
        assert!(reason.contains("over"), "{reason}");
        assert_eq!(record.decide(&spec, 2, Some(400.0), 2_000).unwrap().0, 4);
        // Under the target: only once the cooldown passed.
        assert_eq!(record.decide(&spec, 4, Some(10.0), 2_000), None);
        let (to, reason) = record.decide(&spec, 4, Some(10.0), 31_000).unwrap();
        assert_eq!(to, 1);
        assert!(reason.contains("under"), "{reason}");
        // Out of range whatever the reading; no reading, no change.
        assert_eq!(record.decide(&spec, 9, None, 2_000).unwrap().0, 4);
        assert_eq!(record.decide(&spec, 2, None, 2_000), None);
    }
}
