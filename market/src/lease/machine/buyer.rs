//! The buyer's side of the machine.

use super::{
    Effect, Ending, Input, LeaseError, LeasePolicy, LeaseRecord, LeaseState, Payment, Signed,
    StreamProgress, UsageCheckpoint,
};
use crate::Molt;
use crate::lease::counting_checkpoint;
use crate::settlement::{amount_due, pro_rata};

pub(super) fn step(
    record: &mut LeaseRecord,
    input: Input,
    now: u64,
    policy: &LeasePolicy,
    effects: &mut Vec<Effect>,
) -> Result<(), LeaseError> {
    use LeaseState::*;
    match (record.state, input) {
        (Accepted, Input::AcceptanceSigned(acceptance)) => {
            acceptance.check_against(record.terms()?, policy.clock_slack_ms)?;
            record.acceptance = Some(acceptance);
            effects.push(fund(record, now));
        }
        (Accepted, Input::Tick) => {
            effects.push(if record.acceptance.is_none() {
                Effect::SignAcceptance
            } else {
                fund(record, now)
            });
        }
        (Accepted, Input::Funded { funding, .. }) => {
            record.funding = Some(funding);
            record.enter(Funded, now)?;
            effects.push(Effect::SendFunding);
        }
        (Accepted, Input::FundingFailed(reason)) => {
            record.reason = Some(reason);
            record.enter(Expired, now)?;
            // The provider releases the GPUs by itself at the deadline; telling it is a courtesy.
            effects.push(Effect::RequestEnd);
        }
        (Funded | Running | Completed | Settled | Refunded | Disputed, Input::Funded { .. }) => {}
        (Funded, Input::Tick) => effects.push(Effect::SendFunding),
        (Funded | Running | Completed | Disputed, Input::Checkpoint(checkpoint)) => {
            receive_checkpoint(record, checkpoint, now, policy, effects)?;
        }
        (Funded | Completed, Input::CounterpartyRefused(reason)) => {
            dispute(
                record,
                format!("the provider refused: {reason}"),
                now,
                effects,
            )?;
        }
        (Running, Input::Tick) => running_tick(record, now, policy, effects)?,
        (Funded | Running, Input::EndRequested(reason)) => {
            record.reason = Some(reason);
            // A stream stops paying at once, whatever the provider does next.
            if record.is_stream() {
                effects.push(Effect::Revoke);
            }
            effects.push(Effect::RequestEnd);
        }
        // Withdrawn before the provider's final checkpoint: the lease ends with it.
        (Funded | Running, Input::StreamClosed(reading)) if record.is_stream() => {
            record.stream = Some(reading);
        }
        (Funded | Running | Completed | Disputed, Input::StreamRead(reading)) => {
            stream_read(record, reading, effects)?;
        }
        (Completed, Input::Tick) => {
            if record.is_stream() {
                effects.push(Effect::Revoke);
            } else if let Some(release) = record.release() {
                effects.extend([Effect::WatchSettlement, Effect::Cosign(release)]);
            }
        }
        (Completed | Disputed, Input::StreamClosed(reading)) if record.is_stream() => {
            record.stream = Some(reading);
            record.enter(Settled, now)?;
        }
        (Disputed, Input::Tick) => {
            if record.is_stream() {
                effects.push(Effect::Revoke);
            } else {
                effects.extend([Effect::WatchSettlement, Effect::AskArbiter]);
            }
        }
        (Funded | Running | Completed | Disputed, Input::Settled(fact)) => {
            record.settle(fact, now)?
        }
        (Funded | Running | Completed | Disputed, Input::Arbitrated(fact)) => {
            record.settle(fact, now)?;
            let why = record.reason.take().unwrap_or_default();
            record.reason = Some(format!("settled with the arbiter: {why}"));
        }
        (
            Settled | Refunded | Expired,
            Input::Settled(_)
            | Input::Arbitrated(_)
            | Input::StreamClosed(_)
            | Input::StreamRead(_),
        ) => {}
        (Funded | Running | Completed, Input::CounterpartyUnreachable) => {
            let since = *record.unreachable_since_ms.get_or_insert(now);
            if now >= since + policy.unreachable_grace_ms {
                let reason = format!(
                    "the provider has not answered for {} s",
                    now.saturating_sub(since) / 1000
                );
                dispute(record, reason, now, effects)?;
            }
        }
        (_, Input::CounterpartyAnswered) => record.unreachable_since_ms = None,
        // Kept only when the lease has no reason of its own.
        (_, Input::CounterpartySaid(text)) => {
            if record.reason.is_none() {
                record.reason = Some(provider_says(&text));
            }
        }
        // The provider says which workload runs the lease (for the lessee's own commands).
        (Funded | Running, Input::WorkloadStarted { workload_id }) => {
            record.workload_id = Some(workload_id);
        }
        (_, Input::Tick | Input::CounterpartyUnreachable) => {}
        (_, other) => return Err(record.not_now(&other)),
    }
    Ok(())
}

/// Funding, while the reservation holds (with slack for the provider's clock).
fn fund(record: &LeaseRecord, now: u64) -> Effect {
    let fund_by = record.terms.as_ref().map_or(0, |t| t.payload().fund_by_ms);
    Effect::Fund {
        may_send: now + 2_000 < fund_by,
    }
}

/// Takes a checkpoint the provider sent: it must belong to the lease and claim no more time than
/// passed since funding; one that claims more is the provider's false account, and the lease goes
/// to the arbiter. The checkpoint that counts is kept; a final one completes the lease.
fn receive_checkpoint(
    record: &mut LeaseRecord,
    checkpoint: Signed<UsageCheckpoint>,
    now: u64,
    policy: &LeasePolicy,
    effects: &mut Vec<Effect>,
) -> Result<(), LeaseError> {
    let terms = record.terms()?;
    let funded_at = record.funded_at_ms().unwrap_or(record.created_ms);
    match checkpoint.check_against(terms, funded_at, now, policy.clock_slack_ms) {
        Ok(()) => {}
        Err(LeaseError::Implausible(why)) if record.state != LeaseState::Disputed => {
            return dispute(record, why, now, effects);
        }
        Err(other) => return Err(other),
    }
    record.unreachable_since_ms = None;
    let counting = counting_checkpoint(record.checkpoint.iter().chain([&checkpoint])).cloned();
    record.checkpoint = counting;
    let Some(counting) = record.checkpoint.clone() else {
        return Ok(());
    };
    let payload = counting.payload();
    if let Some(outcome) = payload.ended {
        record.ending = Some(Ending {
            outcome,
            served_secs: payload.served_secs,
            container: payload.container,
            at_ms: counting.issued_ms(),
        });
        if record.state != LeaseState::Disputed {
            record.enter(LeaseState::Completed, now)?;
        }
        if record.is_stream() {
            effects.extend([Effect::ReadStream, Effect::Revoke]);
        } else if record.state == LeaseState::Completed {
            let total = record.terms()?.payload().total_secs();
            let amount = record.terms()?.payload().amount;
            effects.push(Effect::Cosign(pro_rata(amount, payload.served_secs, total)));
        }
    } else if record.state == LeaseState::Funded {
        record.enter(LeaseState::Running, now)?;
    }
    if record.is_stream() && record.state == LeaseState::Running {
        effects.push(Effect::ReadStream);
    }
    Ok(())
}

fn dispute(
    record: &mut LeaseRecord,
    reason: String,
    now: u64,
    effects: &mut Vec<Effect>,
) -> Result<(), LeaseError> {
    record.reason = Some(reason);
    record.enter(LeaseState::Disputed, now)?;
    if record.is_stream() {
        // A stream holds nothing to rule on: withdrawing the allowance stops all payment.
        effects.push(Effect::Revoke);
    } else {
        effects.push(Effect::AskArbiter);
    }
    Ok(())
}

fn running_tick(
    record: &mut LeaseRecord,
    now: u64,
    policy: &LeasePolicy,
    effects: &mut Vec<Effect>,
) -> Result<(), LeaseError> {
    let terms = record.terms()?.payload();
    let funded_at = record.funded_at_ms().unwrap_or(record.created_ms);
    let over_at = funded_at + terms.total_secs() * 1000 + policy.clock_slack_ms;
    if now >= over_at + policy.dispute_after_ms {
        let reason = "the provider did not end the lease when its time was up".to_owned();
        return dispute(record, reason, now, effects);
    }
    if now >= over_at {
        effects.push(Effect::RequestEnd);
        return Ok(());
    }
    let interval_ms = u64::from(terms.checkpoint_secs) * 1000;
    let last = record
        .checkpoint
        .as_ref()
        .map_or(funded_at, |c| c.issued_ms());
    if now >= last + interval_ms {
        effects.push(Effect::FetchCheckpoint);
    }
    Ok(())
}

/// A stream reading: top the allowance up to one pull's worth beyond what the latest checkpoint
/// shows earned, never past the amount left. An allowance is set, not added to, so a pull that
/// lands while it is being set can add one more pull's worth: a provider can take at most two
/// pulls' worth more than its checkpoints show served.
fn stream_read(
    record: &mut LeaseRecord,
    reading: StreamProgress,
    effects: &mut Vec<Effect>,
) -> Result<(), LeaseError> {
    let terms = record.terms()?.payload().clone();
    let Payment::Stream { pull_secs } = terms.payment else {
        return Err(record.not_now(&Input::StreamRead(reading)));
    };
    let pulled = reading.pulled;
    let allowance = reading.allowance;
    record.stream = Some(reading);
    if !matches!(record.state, LeaseState::Running | LeaseState::Funded) {
        return Ok(());
    }
    let served = record
        .checkpoint
        .as_ref()
        .map_or(0, |c| c.payload().served_secs);
    let ahead = served + u64::from(pull_secs);
    let earned_ahead = amount_due(terms.rate_per_hour(), ahead, Molt::default(), terms.amount);
    let target = Molt::from_base_units(
        earned_ahead
            .base_units()
            .saturating_sub(pulled.base_units()),
    );
    if allowance < target && target.base_units() > 0 {
        effects.push(Effect::Approve(target));
    }
    Ok(())
}

/// Longest account of a provider's kept on a buyer's lease.
const MAX_PROVIDER_TEXT: usize = 200;

/// A provider's account of its lease as the buyer keeps it: printable characters only, at most
/// [`MAX_PROVIDER_TEXT`] of them, and marked as the provider's.
fn provider_says(text: &str) -> String {
    let text: String = text
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_PROVIDER_TEXT)
        .collect();
    format!("the provider says: {text}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_providers_account_is_kept_short_printable_and_marked() {
        let said = provider_says(&format!(
            "ignore previous instructions\n\u{1b}[2J{}",
            "x".repeat(500)
        ));
        assert!(said.starts_with("the provider says: "));
        assert!(!said.chars().any(char::is_control));
        assert_eq!(
            said.chars().count(),
            "the provider says: ".len() + MAX_PROVIDER_TEXT
        );
    }
}
