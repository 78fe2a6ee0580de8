//! Cron jobs that bid: at each scheduled time the controller asks the member the cron job names
//! to place its bid (`cron.bid`), with that member's own wallet and spending limits. The member
//! places a run's bid once: it keeps what the bid answered (or why it failed) under the run's
//! id and answers a repeated call from that, so a retried call or a new controller never bids
//! twice for one run; and it refuses a bid whose highest price × GPUs × hours is over the
//! cron job's budget.

use claw_api::cron::{CronBid, CronBidCommand, CronBidParams, CronSpec};
use claw_api::jobs::{Run, RunPhase};
use claw_api::market::BidOutcome;
use claw_market::Molt;
use claw_mesh::{ErrorCode, FleetMember, InvokeFailure, PeerId};

use super::super::{ACTION_DEADLINE, call_peer, failure, is_fenced};
use super::{Held, Jobs, Owner};

/// How long a run waits for the member that bids to be in the fleet before it fails.
const BIDDER_AWAY_MS: u64 = 10 * 60_000;

/// What a member kept of a run's bid.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeptBid {
    /// When it was placed, Unix ms.
    pub at_ms: u64,
    /// The bid's answer, when it answered.
    pub outcome: Option<BidOutcome>,
    /// Why it failed, when it did.
    pub error: Option<String>,
}

/// Whether `run` is a run the operator's signed spec asks for now: its latest scheduled time
/// (`s<minute>`) or one of its triggers (`t<n>`, at most the spec's count). A controller can
/// make the member bid only for those, each once, however many run ids it makes up.
fn is_due(spec: &CronSpec, run: &str, now: u64) -> bool {
    if let Some(trigger) = run.strip_prefix('t') {
        return trigger
            .parse::<u64>()
            .is_ok_and(|n| n >= 1 && n <= spec.triggers);
    }
    let Some(slot) = run
        .strip_prefix('s')
        .and_then(|minute| minute.parse::<u64>().ok())
        .and_then(|minute| minute.checked_mul(60_000))
    else {
        return false;
    };
    slot <= now
        && spec.next_after(slot.saturating_sub(60_000)) == Some(slot)
        && spec.next_after(slot).is_none_or(|next| next > now)
}

fn amount(text: &str, what: &str) -> Result<Molt, InvokeFailure> {
    text.parse()
        .map_err(|e| failure(ErrorCode::InvalidParams, format!("{what} {text:?}: {e}")))
}

/// Whether `bid`'s highest cost is within its budget.
fn within_budget(bid: &CronBid) -> Result<(), InvokeFailure> {
    let budget = amount(&bid.budget, "budget")?;
    let highest = amount(&bid.bid.max_price, "max_price")?
        .checked_mul(u64::from(bid.bid.gpus))
        .and_then(|m| m.checked_mul(u64::from(bid.bid.hours)));
    match highest {
        Some(highest) if highest <= budget => Ok(()),
        _ => Err(failure(
            ErrorCode::InvalidParams,
            format!(
                "the bid may cost up to {} × {} GPU(s) × {} h, over the budget of {budget} MOLT",
                bid.bid.max_price, bid.bid.gpus, bid.bid.hours
            ),
        )),
    }
}

impl Jobs {
    /// `cron.bid`: places run `run`'s bid of cron job `name` here, once.
    pub async fn cron_bid(
        &self,
        caller: PeerId,
        params: CronBidParams,
    ) -> Result<BidOutcome, InvokeFailure> {
        let owner = Owner::Cron(&params.name);
        self.admit(owner, caller, params.epoch).await?;
        let objects = &self.inner.objects;
        let mut cron = objects.cron_at(&params.name, params.revision).await?;
        if cron.is_none() && caller != self.inner.local {
            objects.catch_up(caller).await?;
            cron = objects.cron_at(&params.name, params.revision).await?;
        }
        let Some((spec, bid)) = cron.and_then(|c| c.bid.clone().map(|b| (c, b))) else {
            return Err(failure(
                ErrorCode::NotFound,
                format!(
                    "cron job {:?} at revision {} places no bid here",
                    params.name, params.revision
                ),
            ));
        };
        if !is_due(&spec, &params.run, crate::now_ms()) {
            return Err(failure(
                ErrorCode::InvalidParams,
                format!(
                    "run {:?} is neither the cron job's latest scheduled time nor one of its \
                     triggers: no bid is placed for it",
                    params.run
                ),
            ));
        }
        if bid.node != self.inner.local.to_string() {
            return Err(failure(
                ErrorCode::Unauthorized,
                format!(
                    "cron job {:?} bids through {}, not this member",
                    params.name, bid.node
                ),
            ));
        }
        let _one_at_a_time = self.inner.bids.lock().await;
        let key = format!("{}#{}", owner.key(), params.run);
        let kept_key = key.clone();
        if let Some(kept) = self.inner.store.run(move |s| s.cron_bid(&kept_key)).await? {
            return match (kept.outcome, kept.error) {
                (Some(outcome), _) => Ok(outcome),
                (None, error) => Err(failure(
                    ErrorCode::Conflict,
                    error.unwrap_or_else(|| "the bid failed".to_owned()),
                )),
            };
        }
        let placed = match within_budget(&bid) {
            Ok(()) => self.inner.market.bid(bid.bid, Some(&key)).await,
            Err(error) => Err(error),
        };
        tracing::info!(cron = %params.name, run = %params.run, ok = placed.is_ok(), "cron bid placed");
        let kept = KeptBid {
            at_ms: crate::now_ms(),
            outcome: placed.as_ref().ok().cloned(),
            error: placed.as_ref().err().map(ToString::to_string),
        };
        let owner_key = owner.key();
        self.inner
            .store
            .run(move |s| s.put_cron_bid(&owner_key, &key, &kept))
            .await?;
        placed
    }

    /// Places the bids of the confirmed runs that still run, each through the member the cron
    /// job names, and records what they did. Returns why a run waits, if one does.
    pub(super) async fn act_bids(
        &self,
        owner: Owner<'_>,
        held: &mut Held,
        members: &[FleetMember],
        now: u64,
    ) -> Result<Option<String>, InvokeFailure> {
        let Owner::Cron(name) = owner else {
            return Ok(None);
        };
        let epoch = held.epoch;
        let Some(ledger) = held.ledger.as_mut() else {
            return Ok(None);
        };
        let mut waiting = Vec::new();
        let confirmed = &held.confirmed;
        for run in ledger
            .runs
            .iter_mut()
            .filter(|r| r.phase == RunPhase::Running && confirmed.contains(&r.id))
        {
            let Some(bid) = self
                .inner
                .objects
                .cron_at(name, run.revision)
                .await?
                .and_then(|c| c.bid)
            else {
                continue;
            };
            let node = bid.node.parse::<PeerId>().ok();
            let present = node.filter(|n| members.iter().any(|m| m.peer_id == *n));
            let Some(node) = present else {
                if now > run.started_ms.saturating_add(BIDDER_AWAY_MS) {
                    end(
                        run,
                        RunPhase::Failed,
                        format!("the bidding member {} stayed away", bid.node),
                        now,
                    );
                } else {
                    waiting.push(format!("run {}: waiting for {} to bid", run.id, bid.node));
                }
                continue;
            };
            let params = CronBidParams {
                name: name.to_owned(),
                run: run.id.clone(),
                revision: run.revision,
                epoch,
            };
            let placed = if node == self.inner.local {
                self.cron_bid(node, params).await
            } else {
                call_peer::<CronBidCommand>(self.mesh()?, node, &params, ACTION_DEADLINE * 2).await
            };
            match placed {
                Ok(outcome) if outcome.matched => {
                    let offer = outcome.offer.as_ref();
                    run.lease_id = outcome.lease.as_ref().map(|l| l.lease_id.clone());
                    let what = format!(
                        "matched {} at {} MOLT/GPU-hour{}",
                        offer.map_or("an offer", |o| o.gpu_model.as_str()),
                        offer.map_or("?", |o| o.price_per_gpu_hour.as_str()),
                        run.lease_id
                            .as_ref()
                            .map(|l| format!(", leased as {l}"))
                            .unwrap_or_default()
                    );
                    end(run, RunPhase::Complete, what, now);
                }
                Ok(outcome) => {
                    let why = outcome
                        .explanation
                        .unwrap_or_else(|| "no offer matches".to_owned());
                    end(run, RunPhase::Failed, why, now);
                }
                Err(error) if is_fenced(&error) => return Err(error),
                Err(error) if matches!(error.code, ErrorCode::Timeout | ErrorCode::Unavailable) => {
                    waiting.push(format!(
                        "run {}: {} did not answer: {error}",
                        run.id, bid.node
                    ));
                }
                Err(error) => end(run, RunPhase::Failed, error.to_string(), now),
            }
        }
        Ok((!waiting.is_empty()).then(|| waiting.join("; ")))
    }
}

fn end(run: &mut Run, phase: RunPhase, reason: String, now: u64) {
    run.phase = phase;
    run.reason = Some(reason.chars().take(500).collect());
    run.finished_ms = Some(now);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bid(max_price: &str, gpus: u32, hours: u32, budget: &str) -> CronBid {
        serde_json::from_value(serde_json::json!({
            "node": "n", "budget": budget,
            "bid": {"models": ["H100"], "gpus": gpus, "hours": hours, "max_price": max_price},
        }))
        .unwrap()
    }

    #[test]
    fn only_the_latest_scheduled_time_and_the_signed_triggers_bid() {
        let mut spec: CronSpec = serde_json::from_value(serde_json::json!({
            "schedule": "0 22 * * *",
            "bid": {"node": "n", "budget": "10",
                "bid": {"models": ["H100"], "gpus": 1, "hours": 4, "max_price": "2.5"}},
        }))
        .unwrap();
        spec.triggers = 2;
        let day = 24 * 60;
        // 22:00 on day 10, and a moment after.
        let slot = (10 * day + 22 * 60) * 60_000;
        let now = slot + 5 * 60_000;
        assert!(is_due(&spec, &format!("s{}", slot / 60_000), now));
        assert!(
            !is_due(&spec, &format!("s{}", slot / 60_000 - day), now),
            "yesterday's"
        );
        assert!(
            !is_due(&spec, &format!("s{}", slot / 60_000 + 1), now),
            "not a scheduled time"
        );
        assert!(
            !is_due(&spec, &format!("s{}", slot / 60_000 + day), now),
            "tomorrow's"
        );
        assert!(is_due(&spec, "t1", now) && is_due(&spec, "t2", now));
        assert!(!is_due(&spec, "t3", now) && !is_due(&spec, "t0", now));
        assert!(!is_due(&spec, "x1", now) && !is_due(&spec, "s", now));
    }

    #[test]
    fn a_bid_over_its_budget_is_refused() {
        assert!(within_budget(&bid("2.5", 1, 4, "10")).is_ok());
        assert!(within_budget(&bid("2.5", 2, 4, "10")).is_err());
        assert!(within_budget(&bid("2.5", u32::MAX, u32::MAX, "10")).is_err());
    }
}
