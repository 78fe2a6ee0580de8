//! The provider's side of the machine.

use super::{
    ContainerState, Effect, Ending, Input, LeaseError, LeaseOutcome, LeasePolicy, LeaseRecord,
    LeaseState, Payment, Signed, StreamProgress, UsageCheckpoint,
};

pub(super) fn step(
    record: &mut LeaseRecord,
    input: Input,
    now: u64,
    policy: &LeasePolicy,
    effects: &mut Vec<Effect>,
) -> Result<(), LeaseError> {
    use LeaseState::*;
    match (record.state, input) {
        (_, Input::Checkpoint(signed)) => receive_checkpoint(record, signed)?,
        (Requested, input) => step_requested(record, input, now, policy, effects)?,
        (Accepted, input) => step_accepted(record, input, now, policy, effects)?,
        (Expired, Input::Tick) => effects.push(Effect::Forget),
        // A funding told again (a retry) changes nothing; the driver answers where it is.
        (Funded | Running | Completed | Settled | Refunded, Input::Funded { .. }) => {}
        (Funded | Running | Completed, Input::Settled(fact)) => {
            settled(record, fact, None, now, effects)?;
        }
        (Funded | Running | Completed, Input::Arbitrated(fact)) => {
            let reason = "settled with the arbiter: the buyer did not co-sign";
            settled(record, fact, Some(reason), now, effects)?;
        }
        (Running | Completed, Input::StreamRead(reading)) => {
            stream_read(record, reading, now, effects)?
        }
        (Funded, input) => step_funded(record, input, now, policy, effects)?,
        (Running, input) => step_running(record, input, now, effects)?,
        (Completed, Input::Tick) => completed_tick(record, now, policy, effects)?,
        // Readings and settlements that arrive after the lease ended change nothing.
        (Settled | Refunded, Input::Settled(_) | Input::Arbitrated(_) | Input::StreamRead(_)) => {}
        (_, other) => ignore_or_refuse(record, other)?,
    }
    Ok(())
}

/// An input no state handles: ticks and counterparty news change nothing, anything else is
/// refused.
fn ignore_or_refuse(record: &LeaseRecord, input: Input) -> Result<(), LeaseError> {
    match input {
        Input::Tick | Input::CounterpartyAnswered | Input::CounterpartyUnreachable => Ok(()),
        other => Err(record.not_now(&other)),
    }
}

/// GPUs reserved, terms not signed yet: the signed terms accept the lease; an unsigned
/// reservation lapses after its time, or when ended.
fn step_requested(
    record: &mut LeaseRecord,
    input: Input,
    now: u64,
    policy: &LeasePolicy,
    effects: &mut Vec<Effect>,
) -> Result<(), LeaseError> {
    match input {
        Input::TermsSigned(terms) => {
            let signed = terms.payload();
            if signed.lease_id != record.lease_id || signed.gpus != record.gpus {
                return Err(LeaseError::WrongTerms(record.lease_id.clone()));
            }
            signed.validate()?;
            record.terms = Some(terms);
            record.enter(LeaseState::Accepted, now)?;
            effects.push(Effect::OffersChanged);
        }
        Input::Tick if now > record.created_ms + policy.unsigned_reservation_ms => {
            lapse(record, "the terms were never signed", now, effects)?;
        }
        Input::EndRequested(reason) => lapse(record, &reason, now, effects)?,
        other => ignore_or_refuse(record, other)?,
    }
    Ok(())
}

/// Terms signed, awaiting the buyer's funds: a funding in time with the buyer's acceptance
/// starts the workload; past `fund_by_ms`, or when ended, the reservation lapses.
fn step_accepted(
    record: &mut LeaseRecord,
    input: Input,
    now: u64,
    policy: &LeasePolicy,
    effects: &mut Vec<Effect>,
) -> Result<(), LeaseError> {
    match input {
        Input::Funded {
            acceptance,
            funding,
        } => {
            let terms = record.terms()?;
            let fund_by_ms = terms.payload().fund_by_ms;
            if now > fund_by_ms {
                return Err(LeaseError::Lapsed {
                    lease: record.lease_id.clone(),
                    fund_by_ms,
                    now_ms: now,
                });
            }
            let Some(acceptance) = acceptance else {
                return Err(LeaseError::WrongSigner {
                    what: "the acceptance",
                    expected: record.counterparty.clone(),
                });
            };
            acceptance.check_against(terms, policy.clock_slack_ms)?;
            record.acceptance = Some(acceptance);
            record.funding = Some(funding);
            record.enter(LeaseState::Funded, now)?;
            effects.push(Effect::StartWorkload);
        }
        Input::Tick if record.terms()?.payload().fund_by_ms < now => {
            lapse(record, "the lease was not funded in time", now, effects)?;
        }
        Input::EndRequested(reason) => lapse(record, &reason, now, effects)?,
        other => ignore_or_refuse(record, other)?,
    }
    Ok(())
}

/// Funded, the workload not started yet: its start makes the lease run; a failure, an end or
/// the start timeout ends it unserved, and until then each tick asks for the start again.
fn step_funded(
    record: &mut LeaseRecord,
    input: Input,
    now: u64,
    policy: &LeasePolicy,
    effects: &mut Vec<Effect>,
) -> Result<(), LeaseError> {
    match input {
        Input::WorkloadStarted { workload_id } => {
            record.workload_id = Some(workload_id);
            record.started_ms = Some(now);
            record.enter(LeaseState::Running, now)?;
            effects.push(Effect::SignCheckpoint(checkpoint(
                record,
                0,
                ContainerState::Running,
                None,
            )?));
            if record.is_stream() {
                effects.push(Effect::ReadStream);
            }
        }
        Input::WorkloadFailed(reason) => {
            end(
                record,
                LeaseOutcome::NeverStarted,
                ContainerState::NotStarted,
                &reason,
                now,
                effects,
            )?;
        }
        Input::EndRequested(reason) => {
            end(
                record,
                LeaseOutcome::NeverStarted,
                ContainerState::NotStarted,
                &reason,
                now,
                effects,
            )?;
            effects.push(Effect::StopWorkload);
        }
        Input::Tick => {
            let funded_at = record.funded_at_ms().unwrap_or(record.created_ms);
            if now > funded_at + policy.start_timeout_ms {
                let reason = "the workload did not start in time";
                end(
                    record,
                    LeaseOutcome::NeverStarted,
                    ContainerState::NotStarted,
                    reason,
                    now,
                    effects,
                )?;
                effects.push(Effect::StopWorkload);
            } else {
                effects.push(Effect::StartWorkload);
            }
        }
        other => ignore_or_refuse(record, other)?,
    }
    Ok(())
}

/// The workload runs: ticks checkpoint it and end it when its time is up; its exit or an end
/// request ends the lease served.
fn step_running(
    record: &mut LeaseRecord,
    input: Input,
    now: u64,
    effects: &mut Vec<Effect>,
) -> Result<(), LeaseError> {
    match input {
        Input::Tick => running_tick(record, now, effects)?,
        Input::WorkloadEnded { exit_code, reason } => {
            let container = ContainerState::Exited { code: exit_code };
            let reason = reason.unwrap_or_else(|| "the workload exited".to_owned());
            end(
                record,
                LeaseOutcome::Served,
                container,
                &reason,
                now,
                effects,
            )?;
        }
        Input::EndRequested(reason) => {
            end(
                record,
                LeaseOutcome::Served,
                ContainerState::Stopped,
                &reason,
                now,
                effects,
            )?;
        }
        other => ignore_or_refuse(record, other)?,
    }
    Ok(())
}

/// A signed checkpoint of this lease, in any state: kept unless it is for another lease, terms or
/// signer, older than the one held, or would replace the final one.
fn receive_checkpoint(
    record: &mut LeaseRecord,
    signed: Signed<UsageCheckpoint>,
) -> Result<(), LeaseError> {
    let terms = record.terms()?;
    let checkpoint = signed.payload();
    if checkpoint.lease_id != record.lease_id
        || checkpoint.terms_digest != terms.digest()
        || signed.signer() != terms.signer()
    {
        return Err(LeaseError::WrongTerms(record.lease_id.clone()));
    }
    let newer = record
        .checkpoint
        .as_ref()
        .is_none_or(|c| c.payload().seq <= checkpoint.seq && c.payload().ended.is_none());
    if newer {
        record.checkpoint = Some(signed);
    }
    Ok(())
}

/// The chain shows the escrow released. A lease still running was settled by its buyer and the
/// arbiter: its workload stops.
fn settled(
    record: &mut LeaseRecord,
    fact: crate::settlement::SettlementFact,
    reason: Option<&str>,
    now: u64,
    effects: &mut Vec<Effect>,
) -> Result<(), LeaseError> {
    let was_running = record.state != LeaseState::Completed;
    record.settle(fact, now)?;
    if was_running {
        record.reason = Some("the escrow was settled by the buyer and the arbiter".to_owned());
        effects.extend([Effect::StopWorkload, Effect::OffersChanged]);
    } else if let Some(reason) = reason {
        // Why the lease ended stays said.
        record.reason = Some(match record.reason.take() {
            Some(why) => format!("{why}; {reason}"),
            None => reason.to_owned(),
        });
    }
    Ok(())
}

/// A reservation that ends before funding: released, and its record forgotten.
fn lapse(
    record: &mut LeaseRecord,
    reason: &str,
    now: u64,
    effects: &mut Vec<Effect>,
) -> Result<(), LeaseError> {
    record.reason = Some(reason.to_owned());
    record.enter(LeaseState::Expired, now)?;
    effects.extend([Effect::OffersChanged, Effect::Forget]);
    Ok(())
}

/// The next checkpoint of the lease.
fn checkpoint(
    record: &LeaseRecord,
    served_secs: u64,
    container: ContainerState,
    ended: Option<LeaseOutcome>,
) -> Result<UsageCheckpoint, LeaseError> {
    let terms = record.terms()?;
    Ok(UsageCheckpoint {
        lease_id: record.lease_id.clone(),
        terms_digest: terms.digest(),
        seq: record
            .checkpoint
            .as_ref()
            .map_or(0, |c| c.payload().seq.saturating_add(1)),
        served_secs,
        container,
        ended,
    })
}

/// Seconds served by a running lease: from the workload's start, never past the lease's length
/// nor the time since funding.
fn served(record: &LeaseRecord, now: u64) -> u64 {
    let total = record
        .terms
        .as_ref()
        .map_or(0, |t| t.payload().total_secs());
    let started = record.started_ms.unwrap_or(now);
    let funded = record.funded_at_ms().unwrap_or(started);
    let from = started.max(funded);
    (now.saturating_sub(from) / 1000).min(total)
}

/// Ends the lease: the ending is fixed now, the final checkpoint asked for.
fn end(
    record: &mut LeaseRecord,
    outcome: LeaseOutcome,
    container: ContainerState,
    reason: &str,
    now: u64,
    effects: &mut Vec<Effect>,
) -> Result<(), LeaseError> {
    let served_secs = match outcome {
        LeaseOutcome::Served => served(record, now),
        LeaseOutcome::NeverStarted => 0,
    };
    record.ending = Some(Ending {
        outcome,
        served_secs,
        container,
        at_ms: now,
    });
    record.reason = Some(reason.to_owned());
    record.enter(LeaseState::Completed, now)?;
    // Stopped, or exited by itself: either way nothing of the tenant may stay on the node.
    if record.workload_id.is_some() {
        effects.push(Effect::StopWorkload);
    }
    effects.push(Effect::SignCheckpoint(checkpoint(
        record,
        served_secs,
        container,
        Some(outcome),
    )?));
    effects.push(Effect::OffersChanged);
    if record.is_stream() {
        effects.push(Effect::ReadStream);
    }
    Ok(())
}

fn running_tick(
    record: &mut LeaseRecord,
    now: u64,
    effects: &mut Vec<Effect>,
) -> Result<(), LeaseError> {
    let terms = record.terms()?.payload().clone();
    let served_secs = served(record, now);
    if served_secs >= terms.total_secs() {
        return end(
            record,
            LeaseOutcome::Served,
            ContainerState::Stopped,
            "the lease's time is up",
            now,
            effects,
        );
    }
    let interval_ms = u64::from(terms.checkpoint_secs) * 1000;
    let due = record
        .checkpoint
        .as_ref()
        .is_none_or(|c| now >= c.issued_ms() + interval_ms);
    if due {
        effects.push(Effect::SignCheckpoint(checkpoint(
            record,
            served_secs,
            ContainerState::Running,
            None,
        )?));
        // A settlement by the buyer and the arbiter ends the lease here too.
        if !record.is_stream() {
            effects.push(Effect::WatchSettlement);
        }
    }
    if let Payment::Stream { pull_secs } = terms.payment {
        let last = record
            .stream
            .as_ref()
            .and_then(|s| s.last_pull_ms)
            .or(record.started_ms)
            .unwrap_or(now);
        if now >= last + u64::from(pull_secs) * 1000 {
            effects.push(Effect::ReadStream);
        }
    }
    Ok(())
}

/// A stream reading: pull what is due and allowed; a buyer that leaves more than two pulls'
/// worth unpaid has stopped paying, and the lease ends.
fn stream_read(
    record: &mut LeaseRecord,
    mut reading: StreamProgress,
    now: u64,
    effects: &mut Vec<Effect>,
) -> Result<(), LeaseError> {
    let terms = record.terms()?.payload().clone();
    let served_secs = match &record.ending {
        Some(ending) => ending.served_secs,
        None => served(record, now),
    };
    reading.last_pull_ms = record.stream.as_ref().and_then(|s| s.last_pull_ms);
    let allowance = reading.allowance;
    let pulled = reading.pulled;
    record.stream = Some(reading);
    let due = record.stream_due(served_secs).unwrap_or_default();
    let pull = due.min(allowance);
    if pull.base_units() > 0 {
        if let Some(stream) = &mut record.stream {
            stream.last_pull_ms = Some(now);
        }
        effects.push(Effect::Pull {
            amount: pull,
            pulled,
        });
    }
    let unpaid = due.base_units() - pull.base_units();
    match record.state {
        LeaseState::Running if unpaid > 2 * terms.per_pull().base_units() => {
            end(
                record,
                LeaseOutcome::Served,
                ContainerState::Stopped,
                "the buyer stopped paying",
                now,
                effects,
            )?;
        }
        // Ended, its final checkpoint signed, and the last pull done (or nothing more allowed):
        // the stream is settled.
        LeaseState::Completed
            if pull.base_units() == 0
                && record
                    .checkpoint
                    .as_ref()
                    .is_some_and(|c| c.payload().ended.is_some()) =>
        {
            record.enter(LeaseState::Settled, now)?
        }
        _ => {}
    }
    Ok(())
}

fn completed_tick(
    record: &mut LeaseRecord,
    now: u64,
    policy: &LeasePolicy,
    effects: &mut Vec<Effect>,
) -> Result<(), LeaseError> {
    let Some(ending) = record.ending else {
        return Ok(());
    };
    if record
        .checkpoint
        .as_ref()
        .is_none_or(|c| c.payload().ended.is_none())
    {
        effects.push(Effect::SignCheckpoint(checkpoint(
            record,
            ending.served_secs,
            ending.container,
            Some(ending.outcome),
        )?));
    }
    if record.is_stream() {
        effects.push(Effect::ReadStream);
        return Ok(());
    }
    effects.push(Effect::WatchSettlement);
    let owed = record
        .release()
        .is_some_and(|r| r.to_provider.base_units() > 0);
    if owed && now >= ending.at_ms + policy.dispute_after_ms {
        effects.push(Effect::AskArbiter);
    }
    Ok(())
}
