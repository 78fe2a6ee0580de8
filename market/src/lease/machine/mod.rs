//! The lease protocol as a pure state machine: [`handle`] takes a lease's record, one typed
//! [`Input`] and the time, and answers the next record and the [`Effect`]s to carry out, or a
//! [`LeaseError`] that leaves the record as it was. It does no I/O and reads no clock.
//!
//! A driver (the node) keeps one record per lease and per side. For every input it calls
//! [`handle`], **persists the new record, then carries out the effects**, and feeds what they
//! produce back as inputs. A crash after the record is saved loses nothing: effects are derived
//! from the record, so the next [`Input::Tick`] asks for any effect that may not have happened
//! again, and every effect is safe to carry out twice (a workload is started once per lease, the
//! escrow's derived accounts can be created once, the chain refuses a second settlement).

mod buyer;
mod provider;

use serde::{Deserialize, Serialize};

use super::{
    ContainerState, LeaseAcceptance, LeaseError, LeaseId, LeaseOutcome, LeaseState, LeaseTerms,
    Payment, Side, Signed, UsageCheckpoint,
};
use crate::Molt;
use crate::settlement::{Release, SettlementFact, amount_due, pro_rata};

/// The protocol's timings, each with the default a node uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeasePolicy {
    /// Tolerated difference between the parties' clocks and the chain's (default 5 s).
    pub clock_slack_ms: u64,
    /// A reservation whose terms were never signed (a crash in between) is released after this
    /// (default 60 s).
    pub unsigned_reservation_ms: u64,
    /// A funded lease whose workload has not started after this ends with a refund (default
    /// 35 min: an image pull may take 30).
    pub start_timeout_ms: u64,
    /// A provider takes a completed lease its buyer has not co-signed to the arbiter after this
    /// (default 10 min).
    pub dispute_after_ms: u64,
    /// A buyer whose provider has not answered for this long asks the arbiter (default 2 min).
    pub unreachable_grace_ms: u64,
}

impl Default for LeasePolicy {
    fn default() -> Self {
        Self {
            clock_slack_ms: 5_000,
            unsigned_reservation_ms: 60_000,
            start_timeout_ms: 35 * 60_000,
            dispute_after_ms: 10 * 60_000,
            unreachable_grace_ms: 120_000,
        }
    }
}

/// The funding as the chain shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Funding {
    /// The funding transaction (escrow) or first allowance (stream).
    pub signature: String,
    /// Its slot.
    pub slot: u64,
    /// Its block time, Unix ms: where the lease's clock starts.
    pub funded_at_ms: u64,
}

/// How the provider ended a lease, fixed when it did so that the final checkpoint is the same
/// however often it is signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ending {
    /// How it ended.
    pub outcome: LeaseOutcome,
    /// Seconds served.
    pub served_secs: u64,
    /// The container then.
    pub container: ContainerState,
    /// When, Unix ms.
    pub at_ms: u64,
}

/// A stream as last read from the chain.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamProgress {
    /// Pulled by the provider so far.
    pub pulled: Molt,
    /// What the provider may still pull.
    pub allowance: Molt,
    /// The newest transaction read (base-58); the next reading starts after it.
    pub cursor: Option<String>,
    /// When it was read, Unix ms.
    pub read_ms: u64,
    /// When the provider last pulled, Unix ms.
    pub last_pull_ms: Option<u64>,
    /// The newest pull's transaction (base-58), once one was read.
    #[serde(default)]
    pub last_pull: Option<String>,
}

/// A lease as one party keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseRecord {
    /// The lease.
    pub lease_id: LeaseId,
    /// This party's side.
    pub side: Side,
    /// Where the lease is.
    pub state: LeaseState,
    /// The other party's peer id.
    pub counterparty: String,
    /// The GPUs reserved.
    pub gpus: Vec<String>,
    /// The provider-signed terms, once signed.
    pub terms: Option<Signed<LeaseTerms>>,
    /// The buyer-signed acceptance, once signed.
    pub acceptance: Option<Signed<LeaseAcceptance>>,
    /// The funding on chain.
    pub funding: Option<Funding>,
    /// The workload running for the lease (provider).
    pub workload_id: Option<String>,
    /// When the workload started, Unix ms (provider's clock).
    pub started_ms: Option<u64>,
    /// The checkpoint that counts so far.
    pub checkpoint: Option<Signed<UsageCheckpoint>>,
    /// How the lease ended (provider: fixed at completion; buyer: from the final checkpoint).
    pub ending: Option<Ending>,
    /// The settlement on chain.
    pub settlement: Option<SettlementFact>,
    /// Streams: what the chain shows.
    pub stream: Option<StreamProgress>,
    /// Since when the counterparty has not answered, Unix ms.
    pub unreachable_since_ms: Option<u64>,
    /// Why the lease is where it is, when that needs saying.
    pub reason: Option<String>,
    /// When it was recorded, Unix ms.
    pub created_ms: u64,
    /// Each state it entered, with when.
    pub history: Vec<(LeaseState, u64)>,
}

/// What happens to a lease.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Input {
    /// Time passed: deadlines, due checkpoints, and effects a crash may have cut short.
    Tick,
    /// Provider: the terms for the reserved GPUs are signed.
    TermsSigned(Signed<LeaseTerms>),
    /// Buyer: the acceptance of the terms is signed.
    AcceptanceSigned(Signed<LeaseAcceptance>),
    /// The lease is funded: on the provider, the buyer's acceptance arrived and the escrow (or
    /// allowance) was verified on chain; on the buyer, its funding landed.
    Funded {
        /// The buyer's acceptance (provider side).
        acceptance: Option<Signed<LeaseAcceptance>>,
        /// The funding on chain.
        funding: Funding,
    },
    /// Buyer: the funding could not be sent.
    FundingFailed(String),
    /// Provider: the workload started. Buyer: the provider says which workload runs the lease.
    WorkloadStarted {
        /// Its id.
        workload_id: String,
    },
    /// Provider: the workload could not start.
    WorkloadFailed(String),
    /// Provider: the workload stopped running on its own.
    WorkloadEnded {
        /// Its exit code, when known.
        exit_code: Option<i64>,
        /// Why, in words (out of memory, say), when the node knows.
        reason: Option<String>,
    },
    /// The buyer ends the lease (on the provider: the buyer's request; on the buyer: its
    /// operator's).
    EndRequested(String),
    /// A usage checkpoint: signed by this provider, or received by the buyer.
    Checkpoint(Signed<UsageCheckpoint>),
    /// A stream as read from the chain.
    StreamRead(StreamProgress),
    /// Buyer: the stream's allowance was withdrawn at its end; what the chain shows after.
    StreamClosed(StreamProgress),
    /// The chain shows the escrow settled.
    Settled(SettlementFact),
    /// The escrow was settled on the arbiter's ruling, as the chain shows.
    Arbitrated(SettlementFact),
    /// Buyer: the provider refused to go on with a funded lease.
    CounterpartyRefused(String),
    /// The counterparty did not answer.
    CounterpartyUnreachable,
    /// The counterparty answered.
    CounterpartyAnswered,
    /// Buyer: why the provider says the lease ended (peer text: kept short, marked as the
    /// provider's, and never a state change).
    CounterpartySaid(String),
}

impl Input {
    fn name(&self) -> &'static str {
        match self {
            Self::Tick => "a tick",
            Self::TermsSigned(_) => "signed terms",
            Self::AcceptanceSigned(_) => "a signed acceptance",
            Self::Funded { .. } => "a funding",
            Self::FundingFailed(_) => "a failed funding",
            Self::WorkloadStarted { .. } => "a started workload",
            Self::WorkloadFailed(_) => "a workload that did not start",
            Self::WorkloadEnded { .. } => "a workload that ended",
            Self::EndRequested(_) => "a request to end",
            Self::Checkpoint(_) => "a checkpoint",
            Self::StreamRead(_) => "a stream reading",
            Self::StreamClosed(_) => "a closed stream",
            Self::Settled(_) => "a settlement",
            Self::Arbitrated(_) => "an arbitrated settlement",
            Self::CounterpartyRefused(_) => "a refusal",
            Self::CounterpartyUnreachable => "an unreachable counterparty",
            Self::CounterpartyAnswered => "an answer",
            Self::CounterpartySaid(_) => "the counterparty's account",
        }
    }
}

/// What a driver must do for a lease, after it saved the record.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Effect {
    /// Provider: GPUs were reserved or released; publish the offers anew.
    OffersChanged,
    /// Provider: delete the record of a lapsed reservation (and count the lapse against the
    /// buyer).
    Forget,
    /// Provider: start the buyer's workload on the reserved GPUs (at most once per lease).
    StartWorkload,
    /// Provider: stop the lease's workload.
    StopWorkload,
    /// Provider: sign this checkpoint and feed it back as [`Input::Checkpoint`].
    SignCheckpoint(UsageCheckpoint),
    /// Provider: pull `amount` of a stream's earnings, only if the chain still shows `pulled`
    /// pulled so far (a pull decided on an older reading is skipped, never made twice).
    Pull {
        /// How much.
        amount: Molt,
        /// What the reading it was decided on showed pulled.
        pulled: Molt,
    },
    /// Streams: read pulled and allowance from the chain; feed [`Input::StreamRead`].
    ReadStream,
    /// Buyer: sign the acceptance of the terms; feed [`Input::AcceptanceSigned`].
    SignAcceptance,
    /// Buyer: fund the lease (derived escrow, or the first allowance) unless the chain shows it
    /// funded; `may_send` is false once the reservation has lapsed (then only look).
    Fund {
        /// Whether a funding may still be sent.
        may_send: bool,
    },
    /// Buyer: set the stream's allowance to this.
    Approve(Molt),
    /// Buyer: withdraw the stream's allowance, then read the stream; feed
    /// [`Input::StreamClosed`].
    Revoke,
    /// Buyer: hand the provider the acceptance and the funding (`market.lease.fund`).
    SendFunding,
    /// Buyer: ask the provider for its latest checkpoint.
    FetchCheckpoint,
    /// Buyer: ask the provider to end the lease; its answer carries the final checkpoint and the
    /// settlement it signed.
    RequestEnd,
    /// Buyer: co-sign and send the provider's settlement, which must pay exactly this.
    Cosign(Release),
    /// Look on chain for the escrow's settlement; feed [`Input::Settled`].
    WatchSettlement,
    /// Ask the arbiter to rule, showing the checkpoints held.
    AskArbiter,
}

/// A record and the effects to carry out once it is saved.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The lease's new record.
    pub record: LeaseRecord,
    /// What to do, in order.
    pub effects: Vec<Effect>,
}

impl LeaseRecord {
    /// Provider: GPUs reserved for a buyer's bid, terms not yet signed.
    pub fn reserved(lease_id: LeaseId, buyer_peer: String, gpus: Vec<String>, now_ms: u64) -> Self {
        Self::new(
            lease_id,
            Side::Provider,
            LeaseState::Requested,
            buyer_peer,
            gpus,
            now_ms,
        )
    }

    /// Buyer: terms a provider answered with, already checked against the bid. The first effect
    /// is to sign the acceptance.
    pub fn bought(terms: Signed<LeaseTerms>, now_ms: u64) -> Result<Step, LeaseError> {
        let provider = terms
            .signer_peer()
            .map(|p| p.to_string())
            .ok_or_else(|| LeaseError::Malformed("the terms' signer is not a peer".to_owned()))?;
        let mut record = Self::new(
            terms.payload().lease_id.clone(),
            Side::Buyer,
            LeaseState::Accepted,
            provider,
            terms.payload().gpus.clone(),
            now_ms,
        );
        record.terms = Some(terms);
        Ok(Step {
            record,
            effects: vec![Effect::SignAcceptance],
        })
    }

    fn new(
        lease_id: LeaseId,
        side: Side,
        state: LeaseState,
        counterparty: String,
        gpus: Vec<String>,
        now_ms: u64,
    ) -> Self {
        Self {
            lease_id,
            side,
            state,
            counterparty,
            gpus,
            terms: None,
            acceptance: None,
            funding: None,
            workload_id: None,
            started_ms: None,
            checkpoint: None,
            ending: None,
            settlement: None,
            stream: None,
            unreachable_since_ms: None,
            reason: None,
            created_ms: now_ms,
            history: vec![(state, now_ms)],
        }
    }

    /// The signed terms.
    pub fn terms(&self) -> Result<&Signed<LeaseTerms>, LeaseError> {
        self.terms.as_ref().ok_or(LeaseError::NotNow {
            lease: self.lease_id.clone(),
            state: self.state,
            input: "a step that needs signed terms",
        })
    }

    /// Whether the lease is paid by streaming.
    pub fn is_stream(&self) -> bool {
        self.terms
            .as_ref()
            .is_some_and(|t| matches!(t.payload().payment, Payment::Stream { .. }))
    }

    /// When the lease's clock started: the funding's block time.
    pub fn funded_at_ms(&self) -> Option<u64> {
        self.funding.as_ref().map(|f| f.funded_at_ms)
    }

    /// When the lease entered `state`, if it did.
    pub fn entered(&self, state: LeaseState) -> Option<u64> {
        self.history
            .iter()
            .find(|(s, _)| *s == state)
            .map(|(_, at)| *at)
    }

    /// A stream's first allowance: one pull's worth (at most the amount); it is topped up as
    /// checkpoints arrive.
    pub fn first_allowance(&self) -> Option<Molt> {
        let terms = self.terms.as_ref()?.payload();
        Some(terms.per_pull().min(terms.amount))
    }

    /// How an escrow splits on the lease's ending (or, before it ended, on the checkpoint that
    /// counts so far).
    pub fn release(&self) -> Option<Release> {
        let terms = self.terms.as_ref()?.payload();
        let served = match (&self.ending, &self.checkpoint) {
            (Some(ending), _) => ending.served_secs,
            (None, Some(checkpoint)) => checkpoint.payload().served_secs,
            (None, None) => 0,
        };
        Some(pro_rata(terms.amount, served, terms.total_secs()))
    }

    fn enter(&mut self, next: LeaseState, now_ms: u64) -> Result<(), LeaseError> {
        if !self.state.may_become(next) {
            return Err(LeaseError::NotNow {
                lease: self.lease_id.clone(),
                state: self.state,
                input: "a move to that state",
            });
        }
        if self.state != next {
            self.state = next;
            self.history.push((next, now_ms));
        }
        Ok(())
    }

    fn not_now(&self, input: &Input) -> LeaseError {
        LeaseError::NotNow {
            lease: self.lease_id.clone(),
            state: self.state,
            input: input.name(),
        }
    }

    /// Settles the lease on a fact the chain shows: refunded when the workload never started (or,
    /// for a lease settled before it ended, when the provider got nothing).
    fn settle(&mut self, fact: SettlementFact, now_ms: u64) -> Result<(), LeaseError> {
        let refunded = match self.ending {
            Some(ending) => ending.outcome == LeaseOutcome::NeverStarted,
            None => fact.to_provider.base_units() == 0,
        };
        self.settlement = Some(fact);
        self.enter(
            if refunded {
                LeaseState::Refunded
            } else {
                LeaseState::Settled
            },
            now_ms,
        )
    }

    /// What a stream's provider has earned for `served_secs`, less what it pulled.
    fn stream_due(&self, served_secs: u64) -> Option<Molt> {
        let terms = self.terms.as_ref()?.payload();
        let pulled = self.stream.as_ref().map(|s| s.pulled).unwrap_or_default();
        Some(amount_due(
            terms.rate_per_hour(),
            served_secs,
            pulled,
            terms.amount,
        ))
    }
}

/// The protocol's one entry point: the record after `input` at `now_ms`, and the effects to
/// carry out once it is saved. An input that does not apply, or a message that fails its checks,
/// is an error and changes nothing.
pub fn handle(
    record: &LeaseRecord,
    input: Input,
    now_ms: u64,
    policy: &LeasePolicy,
) -> Result<Step, LeaseError> {
    let mut next = record.clone();
    let mut effects = Vec::new();
    match record.side {
        Side::Provider => provider::step(&mut next, input, now_ms, policy, &mut effects)?,
        Side::Buyer => buyer::step(&mut next, input, now_ms, policy, &mut effects)?,
    }
    Ok(Step {
        record: next,
        effects,
    })
}
