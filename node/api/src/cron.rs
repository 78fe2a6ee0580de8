//! Cron jobs: a job, or a market bid, started on a five-field schedule read in a time zone. A cron job is a
//! fleet object ([`crate::objects`]) signed by an operator; its controller starts a run of its
//! job at each scheduled time, once, even across controller failover: the run is written to the
//! ledger most members keep ([`crate::jobs::RunLedger`]) before any pod of it starts.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::command::commands;
use crate::jobs::{JobSpec, Run};
use crate::market::{BidOutcome, BidParams};
use crate::schedule::{Schedule, time_zone};
use crate::workload::SpecError;
use crate::{Answer, ErrorCode, InvokeFailure};

/// Longest starting deadline: one day.
pub const MAX_STARTING_DEADLINE_SECS: u64 = 24 * 3600;

/// What to do when a scheduled time comes while an earlier run still runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConcurrencyPolicy {
    /// Start the new run beside it.
    #[default]
    Allow,
    /// Skip the new run.
    Forbid,
    /// Stop the running one, then start the new run.
    Replace,
}

/// A cron job: when, and what.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CronSpec {
    /// Five fields, minute hour day-of-month month day-of-week, e.g. `0 2 * * *` or
    /// `*/15 8-18 * * mon-fri`.
    pub schedule: String,
    /// The IANA time zone the schedule is read in, e.g. `Europe/Paris`. Default `UTC`.
    #[serde(default = "utc")]
    pub time_zone: String,
    /// What a scheduled time does while an earlier run still runs. Default `allow`.
    #[serde(default)]
    pub concurrency_policy: ConcurrencyPolicy,
    /// A scheduled time missed by more than this many seconds (no controller, say) is skipped;
    /// without it only the latest missed time runs.
    #[serde(default)]
    pub starting_deadline_secs: Option<u64>,
    /// Suspended: no scheduled runs start (running ones go on; `cron.trigger` still runs).
    #[serde(default)]
    pub suspend: bool,
    /// The job each run runs; or
    #[serde(default)]
    pub job: Option<JobSpec>,
    /// the market bid each run places (exactly one of `job` and `bid`).
    #[serde(default)]
    pub bid: Option<CronBid>,
    /// How many times operators triggered it by hand (`cron.trigger` adds one).
    #[serde(default)]
    pub triggers: u64,
}

fn utc() -> String {
    "UTC".to_owned()
}

/// A bid a cron job places at each scheduled time: `market.bid` on the member named, with its
/// wallet, never over the budget.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CronBid {
    /// The member that bids and pays (peer id): its own wallet and its own spending limits.
    pub node: String,
    /// `market.bid`'s params; with a workload, a match is leased and the workload started.
    pub bid: BidParams,
    /// The most one run may commit, MOLT: the bid's highest price × GPUs × hours must be
    /// within it, or the run fails without bidding.
    pub budget: String,
}

/// A MOLT amount (digits, at most 6 decimals) in millionths, or `None` when `text` is not one.
fn micro_molt(text: &str) -> Option<u128> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let digits = |part: &str| part.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty()
        || whole.len() > 12
        || fraction.len() > 6
        || !digits(whole)
        || !digits(fraction)
        || (text.contains('.') && fraction.is_empty())
    {
        return None;
    }
    let padded = format!("{fraction:0<6}");
    Some(whole.parse::<u128>().ok()? * 1_000_000 + padded.parse::<u128>().ok()?)
}

impl CronBid {
    fn check(&self) -> Result<(), SpecError> {
        let invalid = |m: &str| Err(SpecError::Invalid(m.to_owned()));
        if self.node.is_empty()
            || self.node.len() > 64
            || !self.node.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return invalid("bid.node must be a peer id");
        }
        let (Some(budget), Some(price)) =
            (micro_molt(&self.budget), micro_molt(&self.bid.max_price))
        else {
            return invalid("bid.budget and bid.bid.max_price are MOLT amounts, e.g. 12.5");
        };
        if self.bid.models.is_empty() || self.bid.gpus == 0 || self.bid.hours == 0 {
            return invalid("bid.bid needs models, gpus and hours");
        }
        if price * u128::from(self.bid.gpus) * u128::from(self.bid.hours) > budget {
            return invalid(
                "bid: max_price × gpus × hours is over the budget; raise the budget or bid less",
            );
        }
        Ok(())
    }
}

impl CronSpec {
    /// Checks every field: the schedule parses, the time zone is known, the job is valid.
    pub fn check(&self) -> Result<(), SpecError> {
        Schedule::parse(&self.schedule).map_err(|e| SpecError::Invalid(e.to_string()))?;
        time_zone(&self.time_zone).map_err(|e| SpecError::Invalid(e.to_string()))?;
        if let Some(secs) = self.starting_deadline_secs
            && !(1..=MAX_STARTING_DEADLINE_SECS).contains(&secs)
        {
            return Err(SpecError::Invalid(format!(
                "starting_deadline_secs must be 1 to {MAX_STARTING_DEADLINE_SECS}"
            )));
        }
        match (&self.job, &self.bid) {
            (Some(job), None) => job.check(),
            (None, Some(bid)) => bid.check(),
            _ => Err(SpecError::Invalid(
                "a cron job runs either a job or a bid: give exactly one".to_owned(),
            )),
        }
    }

    /// The first scheduled time after `after_ms`, Unix ms (`None` when the schedule never
    /// fires, or the spec does not check).
    pub fn next_after(&self, after_ms: u64) -> Option<u64> {
        let schedule = Schedule::parse(&self.schedule).ok()?;
        let zone = time_zone(&self.time_zone).ok()?;
        schedule.next_after(after_ms, &zone)
    }
}

/// A change an operator asks of a cron job: what `cron.create`, `trigger`, `suspend`,
/// `resume` and `delete` sign as its next revision.
#[derive(Debug, Clone)]
pub enum CronChange {
    /// A new cron job.
    Create(Box<CronSpec>),
    /// One run now.
    Trigger,
    /// Suspended (`true`) or resumed.
    Suspend(bool),
    /// Deleted.
    Delete,
}

impl CronChange {
    /// The spec the next revision of cron job `name` carries (`None` deletes it), given its
    /// live spec; refused the way the commands answer. Nodes and the bridge both decide with it.
    pub fn next_spec(
        self,
        name: &str,
        live: Option<&CronSpec>,
    ) -> Result<Option<CronSpec>, InvokeFailure> {
        let invalid = |e: SpecError| InvokeFailure::new(ErrorCode::InvalidParams, e.to_string());
        crate::jobs::check_name(name).map_err(invalid)?;
        let live_spec = || {
            live.cloned()
                .ok_or_else(|| crate::jobs::not_found("cron job", name, "cron.list"))
        };
        let next = match self {
            Self::Create(spec) => {
                if live.is_some() {
                    return Err(InvokeFailure::new(
                        ErrorCode::Conflict,
                        format!("cron job {name:?} exists; delete it first to replace it"),
                    ));
                }
                Some(*spec)
            }
            Self::Trigger => {
                let mut spec = live_spec()?;
                spec.triggers = spec.triggers.saturating_add(1);
                Some(spec)
            }
            Self::Suspend(suspend) => {
                let mut spec = live_spec()?;
                spec.suspend = suspend;
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

/// `cron.bid`: the controller asks the member a cron job names to place a run's bid.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CronBidParams {
    /// The cron job.
    pub name: String,
    /// The run.
    pub run: String,
    /// The cron job's revision whose bid to place.
    pub revision: u64,
    /// The controller's epoch.
    pub epoch: u64,
}

/// `cron.logs`: what a cron job's run's pods printed.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CronLogsParams {
    /// The cron job.
    pub name: String,
    /// The run (`s…` or `t…`, from `cron.status`); the newest when absent.
    #[serde(default)]
    pub run: Option<String>,
    /// Only this attempt's workload; every attempt's otherwise.
    #[serde(default)]
    pub attempt: Option<String>,
    /// Last N lines of each attempt. Default 50, at most 1000.
    #[serde(default)]
    pub tail: Option<u32>,
}

/// `cron.create`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CronCreateParams {
    /// Its name, unique among the fleet's cron jobs: 1 to 32 of `a-z 0-9 -`.
    pub name: String,
    /// When and what.
    pub spec: CronSpec,
}

/// Names a cron job.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CronRef {
    /// The cron job's name.
    pub name: String,
}

/// A cron job as every member keeps it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CronJob {
    /// Its name.
    pub name: String,
    /// Its revision; every change adds one.
    pub revision: u64,
    /// When and what.
    pub spec: CronSpec,
    /// The operator that signed this revision (peer id).
    pub signed_by: String,
    /// When, Unix ms.
    pub signed_at_ms: u64,
}

impl Answer for CronJob {}

/// One cron job in `cron.list`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CronSummary {
    /// Its name.
    pub name: String,
    /// Its revision.
    pub revision: u64,
    /// Its schedule.
    pub schedule: String,
    /// The schedule's time zone.
    pub time_zone: String,
    /// Whether it is suspended.
    pub suspended: bool,
    /// The latest scheduled time handled, Unix ms, as this member's ledger has it.
    pub last_slot_ms: Option<u64>,
    /// The next scheduled time, Unix ms.
    pub next_ms: Option<u64>,
    /// Runs still running.
    pub active_runs: u32,
}

/// `cron.list`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CronListing {
    /// The fleet's cron jobs, by name.
    pub cron_jobs: Vec<CronSummary>,
}

impl Answer for CronListing {}

/// `cron.status`: a cron job, its controller and its recent runs.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CronStatus {
    /// The cron job.
    #[serde(flatten)]
    pub cron: CronJob,
    /// The member that controls it, as this member sees the fleet.
    pub controller: Option<String>,
    /// The latest scheduled time handled, Unix ms.
    pub last_slot_ms: Option<u64>,
    /// The next scheduled time, Unix ms.
    pub next_ms: Option<u64>,
    /// Its newest runs, oldest first.
    pub runs: Vec<Run>,
    /// Scheduled times skipped or missed, and why.
    pub skipped: Vec<String>,
    /// Why pods are not running yet, as the controller last saw it.
    pub pending: Option<String>,
}

impl Answer for CronStatus {}

/// `cron.delete`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CronDeleted {
    /// The cron job.
    pub name: String,
    /// The revision that deleted it.
    pub revision: u64,
}

impl Answer for CronDeleted {}

commands! {
    /// `cron.create`.
    CronCreate = "cron.create", Operate, CronCreateParams => CronJob,
        "Create a cron job: a job run on a five-field schedule in a time zone";
    /// `cron.list`.
    CronList = "cron.list", Read, crate::NoParams => CronListing,
        "The fleet's cron jobs, their last and next scheduled times";
    /// `cron.status`.
    CronStatusCommand = "cron.status", Read, CronRef => CronStatus,
        "A cron job's spec, controller, recent runs and skipped times";
    /// `cron.trigger`.
    CronTrigger = "cron.trigger", Operate, CronRef => CronJob,
        "Run a cron job's job once now, whatever its schedule";
    /// `cron.suspend`.
    CronSuspend = "cron.suspend", Operate, CronRef => CronJob,
        "Suspend a cron job: no scheduled runs until resumed";
    /// `cron.resume`.
    CronResume = "cron.resume", Operate, CronRef => CronJob,
        "Resume a suspended cron job";
    /// `cron.delete`.
    CronDelete = "cron.delete", Operate, CronRef => CronDeleted,
        "Delete a cron job; its running pods are stopped";
    /// `cron.logs`.
    CronLogsCommand = "cron.logs", Operate, CronLogsParams => crate::jobs::JobLogs,
        "What a cron job's run's pods printed, per attempt (the newest run by default)";
    /// `cron.bid`.
    CronBidCommand = "cron.bid", Read, CronBidParams => BidOutcome,
        "Place a cron job's bid for one run here, once (the cron job's controller only)";
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn spec(value: serde_json::Value) -> CronSpec {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn a_cron_spec_checks_its_schedule_zone_and_job() {
        let good = spec(json!({"schedule": "*/5 * * * *", "job": {"template": {"image": "a"}}}));
        let bid = json!({"node": "12D3KooWabc", "budget": "10",
            "bid": {"models": ["H100"], "gpus": 1, "hours": 4, "max_price": "2.5"}});
        assert!(
            spec(json!({"schedule": "0 22 * * *", "bid": bid}))
                .check()
                .is_ok()
        );
        for bad in [
            json!({"schedule": "0 22 * * *"}),
            json!({"schedule": "0 22 * * *", "bid": bid, "job": {"template": {"image": "a"}}}),
            json!({"schedule": "0 22 * * *", "bid": {"node": "n", "budget": "1.",
                "bid": {"models": ["H100"], "gpus": 1, "hours": 4, "max_price": "2"}}}),
            json!({"schedule": "0 22 * * *", "bid": {"node": "n", "budget": "9.999999",
                "bid": {"models": ["H100"], "gpus": 1, "hours": 4, "max_price": "2.5"}}}),
        ] {
            assert!(spec(bad.clone()).check().is_err(), "{bad}");
        }
        assert_eq!(
            (good.time_zone.as_str(), good.concurrency_policy),
            ("UTC", ConcurrencyPolicy::Allow)
        );
        assert!(good.check().is_ok());
        assert_eq!(good.next_after(0), Some(300_000));
        for bad in [
            json!({"schedule": "* * *", "job": {"template": {"image": "a"}}}),
            json!({"schedule": "* * * * *", "time_zone": "Mars/Olympus",
                "job": {"template": {"image": "a"}}}),
            json!({"schedule": "* * * * *", "starting_deadline_secs": 0,
                "job": {"template": {"image": "a"}}}),
            json!({"schedule": "* * * * *", "job": {"template": {"image": "a"}, "completions": 0}}),
        ] {
            assert!(spec(bad.clone()).check().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_trigger_counts_up_and_a_suspend_keeps_the_rest() {
        let live = spec(json!({"schedule": "0 2 * * *", "job": {"template": {"image": "a"}}}));
        let triggered = CronChange::Trigger
            .next_spec("nightly", Some(&live))
            .unwrap()
            .unwrap();
        assert_eq!(triggered.triggers, 1);
        let suspended = CronChange::Suspend(true)
            .next_spec("nightly", Some(&triggered))
            .unwrap()
            .unwrap();
        assert!(suspended.suspend && suspended.triggers == 1);
        assert_eq!(
            CronChange::Trigger
                .next_spec("nightly", None)
                .unwrap_err()
                .code,
            ErrorCode::NotFound
        );
        assert_eq!(
            CronChange::Create(Box::new(live.clone()))
                .next_spec("nightly", Some(&live))
                .unwrap_err()
                .code,
            ErrorCode::Conflict
        );
        assert!(
            CronChange::Delete
                .next_spec("nightly", Some(&live))
                .unwrap()
                .is_none()
        );
    }
}
