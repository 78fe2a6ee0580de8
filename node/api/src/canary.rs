//! Canary analysis: a canary deployment that names a service sends each step's share of that
//! service's traffic to the new revision, and its controller promotes it step by step, or rolls
//! it back, on what the service measures of each revision: requests, errors and latency.
//!
//! The members that carry the service's traffic (forwards and ingress) measure it per template
//! since the step began; the controller sums their tallies ([`RevisionTraffic`]) and judges
//! them against the deployment's [`CanaryAnalysis`]. Its progress is a [`CanaryRecord`] every
//! member keeps, so a new controller takes over where the last one was and every member splits
//! the traffic alike.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::deploy::Fence;
use crate::workload::{SpecError, is_simple_name};

/// Buckets of a latency histogram ([`RevisionTraffic::latency`]).
pub const LATENCY_BUCKETS: usize = 64;
/// The upper bound of the first bucket, in milliseconds; each next bound is 1.2 times it, and
/// the last bucket holds everything beyond the one before (about 40 s).
const FIRST_BOUND_MS: f64 = 0.5;
const BOUND_RATIO: f64 = 1.2;
/// Tallies (per template and endpoint node) a member keeps per deployment.
pub const TALLIES_KEPT: usize = 64;
/// Longest note a record keeps.
const MAX_NOTE: usize = 512;

/// How a canary is watched: the service whose traffic is split and measured, how long each
/// step is watched, and what it must stay within.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CanaryAnalysis {
    /// The service whose traffic the steps split, by weight, between the new revision and the
    /// stable one, and whose measurements gate each step.
    pub service: String,
    /// How long each step is watched before the next, in seconds (5 to 86,400; default 600).
    #[serde(default = "default_interval")]
    pub interval_secs: u32,
    /// The highest share of the new revision's requests that may fail, in percent (0 to 100;
    /// default 1). A request fails when the endpoint's container does not take the connection,
    /// brings no answer, or (through an ingress) answers with a 5xx status.
    #[serde(default = "default_error_percent")]
    pub max_error_percent: f64,
    /// The highest 99th-percentile latency the new revision may show, in milliseconds (time to
    /// the first byte of the answer); unchecked when absent.
    #[serde(default)]
    pub max_p99_ms: Option<u32>,
    /// Requests the new revision must have served in a step before it is judged (1 to
    /// 1,000,000; default 20).
    #[serde(default = "default_min_requests")]
    pub min_requests: u32,
}

fn default_interval() -> u32 {
    600
}

fn default_error_percent() -> f64 {
    1.0
}

fn default_min_requests() -> u32 {
    20
}

impl CanaryAnalysis {
    /// Checks every field.
    pub fn check(&self) -> Result<(), SpecError> {
        let invalid = |m: &str| Err(SpecError::Invalid(format!("strategy.analysis.{m}")));
        if !is_simple_name(&self.service, 32) {
            return invalid("service must name a service (1 to 32 of a-z, 0-9 and '-')");
        }
        if !(5..=86_400).contains(&self.interval_secs) {
            return invalid("interval_secs must be 5 to 86400");
        }
        if !(0.0..=100.0).contains(&self.max_error_percent) {
            return invalid("max_error_percent must be 0 to 100");
        }
        if self.max_p99_ms == Some(0) {
            return invalid("max_p99_ms must be at least 1");
        }
        if !(1..=1_000_000).contains(&self.min_requests) {
            return invalid("min_requests must be 1 to 1000000");
        }
        Ok(())
    }

    /// What to do with a canary step whose new revision measured `canary` (the stable one
    /// `stable`), watched for `watched_ms`, with `serving` telling whether the step's canary
    /// replicas all serve. A step fails as soon as enough requests show it out of bounds; it
    /// passes once watched for the whole interval with enough requests inside them.
    pub fn judge(
        &self,
        canary: &TrafficSummary,
        stable: &TrafficSummary,
        watched_ms: u64,
        serving: bool,
    ) -> Verdict {
        let measured = format!(
            "new revision: {}; stable: {}",
            canary.describe(),
            stable.describe()
        );
        if canary.requests >= u64::from(self.min_requests) {
            if canary.error_percent > self.max_error_percent {
                return Verdict::Fail(format!(
                    "error rate {:.1} % over the allowed {} % ({measured})",
                    canary.error_percent, self.max_error_percent
                ));
            }
            if let (Some(max), Some(p99)) = (self.max_p99_ms, canary.p99_ms)
                && p99 > f64::from(max)
            {
                return Verdict::Fail(format!(
                    "p99 latency {p99:.1} ms over the allowed {max} ms ({measured})"
                ));
            }
        }
        if !serving {
            return Verdict::Wait(format!(
                "waiting for the step's new replicas to serve ({measured})"
            ));
        }
        let interval_ms = u64::from(self.interval_secs) * 1000;
        if watched_ms < interval_ms {
            return Verdict::Wait(format!(
                "watched {} of {} s ({measured})",
                watched_ms / 1000,
                self.interval_secs
            ));
        }
        if canary.requests < u64::from(self.min_requests) {
            return Verdict::Wait(format!(
                "waiting for traffic: {} of {} requests ({measured})",
                canary.requests, self.min_requests
            ));
        }
        Verdict::Pass(measured)
    }
}

/// A step's judgement ([`CanaryAnalysis::judge`]), with what was measured.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Keep watching.
    Wait(String),
    /// Move on to the next step.
    Pass(String),
    /// Roll the new revision back.
    Fail(String),
}

/// A canary's progress, written by its controller and kept by every member: which template is
/// under test, the step it reached (the spec's own step, or further by analysis), and since when
/// that step's traffic is measured.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CanaryRecord {
    /// The claim of the controller that wrote it.
    pub fence: Option<Fence>,
    /// Its version under that claim.
    pub version: u64,
    /// The digest of the template under test (the current revision's).
    pub template: String,
    /// The step reached: `steps.len()` means promoted to every replica.
    pub step: u32,
    /// When the step began, Unix ms: its traffic is measured from here.
    pub since_ms: u64,
    /// Whether the template failed its analysis and was rolled back.
    #[serde(default)]
    pub failed: bool,
    /// The last judgement, with what was measured.
    #[serde(default)]
    pub note: Option<String>,
}

impl CanaryRecord {
    /// Whether this record was written after `other`.
    pub fn is_newer_than(&self, other: &CanaryRecord) -> bool {
        (&self.fence, self.version) > (&other.fence, other.version)
    }

    /// Checks the bounds every member keeps to.
    pub fn check(&self) -> Result<(), String> {
        if self.template.len() > 128
            || self.step > 10
            || self.note.as_ref().is_some_and(|n| n.len() > MAX_NOTE)
        {
            return Err(format!(
                "a canary record holds a template digest of at most 128 bytes, a step of at most \
                 10 and a note of at most {MAX_NOTE} bytes"
            ));
        }
        Ok(())
    }

    /// Sets the note, cut to the length kept.
    pub fn set_note(&mut self, note: String) {
        let mut note = note;
        if note.len() > MAX_NOTE {
            let mut end = MAX_NOTE;
            while !note.is_char_boundary(end) {
                end -= 1;
            }
            note.truncate(end);
        }
        self.note = Some(note);
    }
}

/// What one member measured of one template's traffic through a service since a step began.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RevisionTraffic {
    /// The template's digest.
    pub template: String,
    /// The peer id of the node whose endpoints took the requests.
    #[serde(default)]
    pub node: String,
    /// Requests (a forwarded connection, or a request through an ingress).
    pub requests: u64,
    /// Of them, those that failed.
    pub errors: u64,
    /// Answered requests per latency bucket (time to the answer's first byte): bucket 0 up to
    /// 0.5 ms, each next bound 1.2 times the one before, the last one open-ended.
    pub latency: Vec<u64>,
}

impl RevisionTraffic {
    /// An empty tally for `template` on `node`'s endpoints.
    pub fn new(template: String, node: String) -> Self {
        Self {
            template,
            node,
            requests: 0,
            errors: 0,
            latency: vec![0; LATENCY_BUCKETS],
        }
    }

    /// Counts one request: failed, or answered after `latency_ms`.
    pub fn count(&mut self, outcome: Result<f64, ()>) {
        self.requests += 1;
        match outcome {
            Ok(latency_ms) => {
                if self.latency.len() != LATENCY_BUCKETS {
                    self.latency.resize(LATENCY_BUCKETS, 0);
                }
                self.latency[bucket_of(latency_ms)] += 1;
            }
            Err(()) => self.errors += 1,
        }
    }

    /// Adds `other`'s counts (a tally from another member); a malformed one is refused.
    pub fn add(&mut self, other: &RevisionTraffic) -> Result<(), String> {
        if other.latency.len() > LATENCY_BUCKETS || other.errors > other.requests {
            return Err(format!(
                "a traffic tally has at most {LATENCY_BUCKETS} latency buckets and no more \
                 errors than requests"
            ));
        }
        self.requests = self.requests.saturating_add(other.requests);
        self.errors = self.errors.saturating_add(other.errors);
        self.latency.resize(LATENCY_BUCKETS, 0);
        for (mine, theirs) in self.latency.iter_mut().zip(&other.latency) {
            *mine = mine.saturating_add(*theirs);
        }
        Ok(())
    }

    /// Requests, error rate and p99.
    pub fn summary(&self) -> TrafficSummary {
        let answered: u64 = self.latency.iter().sum();
        let p99_ms = (answered > 0).then(|| {
            let rank = answered.saturating_mul(99).div_ceil(100).max(1);
            let mut seen = 0;
            let bucket = self
                .latency
                .iter()
                .position(|count| {
                    seen += count;
                    seen >= rank
                })
                .unwrap_or(LATENCY_BUCKETS - 1);
            upper_bound_ms(bucket)
        });
        TrafficSummary {
            requests: self.requests,
            errors: self.errors,
            error_percent: if self.requests == 0 {
                0.0
            } else {
                self.errors as f64 * 100.0 / self.requests as f64
            },
            p99_ms,
        }
    }
}

/// The bucket a latency falls in.
fn bucket_of(latency_ms: f64) -> usize {
    if latency_ms.is_nan() || latency_ms <= FIRST_BOUND_MS {
        return 0;
    }
    let index = ((latency_ms / FIRST_BOUND_MS).ln() / BOUND_RATIO.ln()).ceil();
    (index as usize).min(LATENCY_BUCKETS - 1)
}

/// The upper bound of `bucket` in milliseconds (the last bucket reports its lower bound).
fn upper_bound_ms(bucket: usize) -> f64 {
    let bucket = bucket.min(LATENCY_BUCKETS - 2);
    FIRST_BOUND_MS * BOUND_RATIO.powi(bucket as i32)
}

/// A revision's traffic in a step, summed over the members.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrafficSummary {
    /// Requests.
    pub requests: u64,
    /// Of them, those that failed.
    pub errors: u64,
    /// Errors per 100 requests.
    pub error_percent: f64,
    /// The 99th-percentile latency in milliseconds (the bound of its histogram bucket, within
    /// 20 %), when any request was answered.
    #[serde(default)]
    pub p99_ms: Option<f64>,
}

impl TrafficSummary {
    fn describe(&self) -> String {
        let p99 = self
            .p99_ms
            .map_or("no answers".to_owned(), |p| format!("p99 {p:.1} ms"));
        format!(
            "{} requests, {:.1} % errors, {p99}",
            self.requests, self.error_percent
        )
    }
}

/// `deploy.status`'s account of a canary under analysis.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CanaryStatus {
    /// The service whose traffic is split.
    pub service: String,
    /// The step reached (`steps.len()` when promoted to every replica).
    pub step: u32,
    /// The share of the service's traffic the new revision takes, in percent.
    pub traffic_percent: u32,
    /// When the step began, Unix ms.
    pub since_ms: u64,
    /// The new revision's traffic in this step.
    pub canary: TrafficSummary,
    /// The stable revision's traffic in this step.
    pub stable: TrafficSummary,
    /// Whether the new revision failed its analysis and was rolled back.
    pub failed: bool,
    /// The controller's last judgement.
    #[serde(default)]
    pub note: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn analysis() -> CanaryAnalysis {
        serde_json::from_value(serde_json::json!({
            "service": "web", "interval_secs": 10, "max_error_percent": 5.0,
            "max_p99_ms": 100, "min_requests": 20,
        }))
        .unwrap()
    }

    fn traffic(requests: u64, errors: u64, latency_ms: f64) -> TrafficSummary {
        let mut tally = RevisionTraffic::new("t".into(), "n".into());
        for i in 0..requests {
            tally.count(if i < errors { Err(()) } else { Ok(latency_ms) });
        }
        tally.summary()
    }

    #[test]
    fn p99_is_read_from_the_histogram_within_its_bucket() {
        let mut tally = RevisionTraffic::new("t".into(), "n".into());
        for _ in 0..990 {
            tally.count(Ok(10.0));
        }
        for _ in 0..10 {
            tally.count(Ok(400.0));
        }
        let p99 = tally.summary().p99_ms.unwrap();
        assert!((10.0..12.0).contains(&p99), "{p99}");
        tally.count(Ok(400.0));
        let p99 = tally.summary().p99_ms.unwrap();
        assert!((400.0..480.0).contains(&p99), "{p99}");
        assert_eq!(bucket_of(0.1), 0);
        assert_eq!(bucket_of(1e9), LATENCY_BUCKETS - 1);
        assert_eq!(bucket_of(f64::NAN), 0);
    }

    #[test]
    fn a_step_fails_early_passes_after_its_interval_and_waits_for_traffic() {
        let a = analysis();
        let stable = traffic(100, 0, 5.0);
        let judged = |canary: &TrafficSummary, watched_ms, serving| {
            a.judge(canary, &stable, watched_ms, serving)
        };
        assert!(
            matches!(judged(&traffic(20, 2, 5.0), 1_000, true), Verdict::Fail(w) if w.contains("error rate 10.0 %"))
        );
        assert!(
            matches!(judged(&traffic(20, 0, 300.0), 1_000, false), Verdict::Fail(w) if w.contains("p99 latency"))
        );
        // Too few requests to judge: errors do not fail it yet, and it waits past the interval.
        assert!(matches!(
            judged(&traffic(5, 5, 5.0), 1_000, true),
            Verdict::Wait(_)
        ));
        assert!(
            matches!(judged(&traffic(5, 0, 5.0), 60_000, true), Verdict::Wait(w) if w.contains("5 of 20 requests"))
        );
        assert!(
            matches!(judged(&traffic(50, 1, 5.0), 9_999, true), Verdict::Wait(w) if w.contains("watched 9 of 10 s"))
        );
        assert!(matches!(
            judged(&traffic(50, 1, 5.0), 10_000, false),
            Verdict::Wait(_)
        ));
        assert!(matches!(
            judged(&traffic(50, 1, 5.0), 10_000, true),
            Verdict::Pass(_)
        ));
    }

    #[test]
    fn analysis_settings_and_tallies_from_peers_are_bounded() {
        let mut a = analysis();
        assert!(a.check().is_ok());
        a.interval_secs = 1;
        assert!(a.check().is_err());
        a = analysis();
        a.max_error_percent = 101.0;
        assert!(a.check().is_err());
        a = analysis();
        a.service = "Not A Name".into();
        assert!(a.check().is_err());
        let mut sum = RevisionTraffic::new("t".into(), "n".into());
        let mut lying = RevisionTraffic::new("t".into(), "n".into());
        lying.errors = 3;
        assert!(sum.add(&lying).is_err());
        lying.errors = 0;
        lying.latency = vec![1; LATENCY_BUCKETS + 1];
        assert!(sum.add(&lying).is_err());
        let mut record = CanaryRecord {
            fence: None,
            version: 1,
            template: "t".into(),
            step: 0,
            since_ms: 0,
            failed: false,
            note: None,
        };
        record.set_note("é".repeat(400));
        assert!(record.check().is_ok());
    }
}
