//! The lease protocol's state machine, driven from both sides at once through random
//! interleavings: messages delivered late, twice, or replayed from another lease; either side
//! crashing after any effect (losing the effects it had not carried out) and restarting from its
//! saved record; the provider vanishing for good. The chain here is a model of what the SPL
//! programs enforce (balances, a vault only two of three keys can empty, an allowance the
//! delegate cannot exceed); the real programs are exercised by the settlement suite and the
//! multi-process tests.
//!
//! Every run must end with: the lease settled at most once, MOLT conserved to the base unit
//! (buyer + provider + vault), no funded lease left with funds in the vault, both sides agreeing
//! with the chain, and the provider paid no more than the time its workload really ran (streams:
//! plus at most the allowance ahead).

use std::collections::VecDeque;
use std::time::Duration;

use claw_attestation::{Envelope, NodeIdentity, SignedPayload, Validity, Verifier};
use claw_market::Molt;
use claw_market::lease::machine::{Funding, StreamProgress, handle};
use claw_market::lease::ruling::{Case, rule};
use claw_market::lease::{
    ContainerState, Effect, Input, LeaseAcceptance, LeaseError, LeaseId, LeasePolicy, LeaseRecord,
    LeaseState, LeaseTerms, Payment, Signed, UsageCheckpoint,
};
use claw_market::settlement::{Release, SettlementFact, pro_rata};
use proptest::prelude::*;
use solana_pubkey::Pubkey;

const START: u64 = 1_900_000_000_000;
const BUYER_MOLT: u64 = 100_000_000;

fn seal<T: SignedPayload>(identity: &NodeIdentity, seq: u64, now: u64, payload: &T) -> Signed<T> {
    let validity = Validity {
        issued_at_ms: now,
        ttl: Duration::from_secs(30 * 86_400),
    };
    let bytes = Envelope::seal(identity, seq, validity, payload).to_bytes();
    Signed::verify(&Verifier::new(), &bytes, now).expect("own envelope verifies")
}

/// What the SPL programs would enforce, reduced to balances.
#[derive(Debug, Default)]
struct Chain {
    buyer: u64,
    provider: u64,
    vault: u64,
    funded: Option<Funding>,
    settled: Option<SettlementFact>,
    settlements: u32,
    allowance: u64,
    pulled: u64,
}

impl Chain {
    /// Two keys release the vault: once; a second release finds it empty and fails.
    fn release(&mut self, release: Release, now: u64) -> Option<SettlementFact> {
        if let Some(fact) = &self.settled {
            return Some(fact.clone());
        }
        if self.vault == 0 {
            return None;
        }
        assert_eq!(
            release.to_provider.base_units() + release.to_buyer.base_units(),
            self.vault,
            "a release pays out exactly the vault"
        );
        self.provider += release.to_provider.base_units();
        self.buyer += release.to_buyer.base_units();
        self.vault = 0;
        self.settlements += 1;
        let fact = SettlementFact {
            signature: format!("settle-{now}"),
            slot: now / 400,
            to_provider: release.to_provider,
            to_buyer: release.to_buyer,
            to_others: Molt::default(),
            block_time_ms: Some(now),
        };
        self.settled = Some(fact.clone());
        Some(fact)
    }

    fn stream(&self, now: u64) -> StreamProgress {
        StreamProgress {
            pulled: Molt::from_base_units(self.pulled),
            allowance: Molt::from_base_units(self.allowance),
            cursor: None,
            read_ms: now,
            last_pull_ms: None,
            last_pull: None,
        }
    }
}

struct Party {
    identity: NodeIdentity,
    record: Option<LeaseRecord>,
    queue: VecDeque<Effect>,
    seq: u64,
}

impl Party {
    fn new() -> Self {
        Self {
            identity: NodeIdentity::generate(),
            record: None,
            queue: VecDeque::new(),
            seq: 0,
        }
    }

    fn sign<T: SignedPayload>(&mut self, now: u64, payload: &T) -> Signed<T> {
        self.seq += 1;
        seal(&self.identity, self.seq, now, payload)
    }
}

struct World {
    now: u64,
    policy: LeasePolicy,
    provider: Party,
    buyer: Party,
    chain: Chain,
    provider_up: bool,
    /// Checkpoints and acceptances of another lease, for replays.
    foreign_checkpoint: Signed<UsageCheckpoint>,
    foreign_acceptance: Signed<LeaseAcceptance>,
    /// When the workload really ran.
    ran_from: Option<u64>,
    ran_until: Option<u64>,
    workload_fails: bool,
}

fn terms_for(
    lease_id: LeaseId,
    buyer: &NodeIdentity,
    wallets: [Pubkey; 3],
    stream: bool,
    now: u64,
) -> LeaseTerms {
    LeaseTerms {
        lease_id,
        network: "localnet".to_owned(),
        offer_id: 1,
        bid_digest: [9; 32],
        buyer_peer: buyer.peer_id().to_string(),
        buyer_wallet: wallets[0].to_string(),
        provider_wallet: wallets[1].to_string(),
        arbiter_wallet: wallets[2].to_string(),
        gpu_model: "NVIDIA H100 80GB HBM3".to_owned(),
        gpus: vec!["GPU-0".to_owned()],
        simulated: true,
        price_per_gpu_hour: Molt::from_base_units(3_600_000),
        hours: 1,
        amount: Molt::from_base_units(3_600_000),
        payment: if stream {
            Payment::Stream { pull_secs: 60 }
        } else {
            Payment::Escrow
        },
        fund_by_ms: now + 120_000,
        checkpoint_secs: 60,
    }
}

impl World {
    fn new(stream: bool, workload_fails: bool) -> Self {
        let mut provider = Party::new();
        let mut buyer = Party::new();
        let wallets = [
            Pubkey::new_unique(),
            Pubkey::new_unique(),
            Pubkey::new_unique(),
        ];
        let now = START;
        let lease_id = LeaseId::derive(&[9; 32], &provider.identity.public_key().to_bytes());
        let terms = terms_for(lease_id.clone(), &buyer.identity, wallets, stream, now);
        let signed_terms = provider.sign(now, &terms);
        let policy = LeasePolicy::default();

        // Another lease between the same parties, whose messages get replayed into this one.
        let other_id = LeaseId::derive(&[8; 32], &provider.identity.public_key().to_bytes());
        let other_terms = provider.sign(
            now,
            &terms_for(other_id.clone(), &buyer.identity, wallets, stream, now),
        );
        let foreign_checkpoint = provider.sign(
            now,
            &UsageCheckpoint {
                lease_id: other_id,
                terms_digest: other_terms.digest(),
                seq: 0,
                served_secs: 3600,
                container: ContainerState::Exited { code: Some(0) },
                ended: Some(claw_market::lease::LeaseOutcome::Served),
            },
        );
        let other_acceptance = LeaseAcceptance::of(&other_terms).expect("acceptance");
        let foreign_acceptance = buyer.sign(now, &other_acceptance);

        let reserved = LeaseRecord::reserved(
            lease_id,
            buyer.identity.peer_id().to_string(),
            terms.gpus.clone(),
            now,
        );
        let step = handle(
            &reserved,
            Input::TermsSigned(signed_terms.clone()),
            now,
            &policy,
        )
        .expect("terms signed");
        provider.record = Some(step.record);
        let bought = LeaseRecord::bought(signed_terms, now).expect("bought");
        buyer.record = Some(bought.record);
        buyer.queue.extend(bought.effects);
        Self {
            now,
            policy,
            provider,
            buyer,
            chain: Chain {
                buyer: BUYER_MOLT,
                ..Chain::default()
            },
            provider_up: true,
            foreign_checkpoint,
            foreign_acceptance,
            ran_from: None,
            ran_until: None,
            workload_fails,
        }
    }

    fn terms(&self) -> LeaseTerms {
        self.buyer
            .record
            .as_ref()
            .and_then(|r| r.terms.as_ref())
            .map(|t| t.payload().clone())
            .expect("terms")
    }

    /// Feeds the provider an input; its effects are queued. Errors are answered to the caller.
    fn feed_provider(&mut self, input: Input) -> Result<(), LeaseError> {
        let Some(record) = &self.provider.record else {
            return Err(LeaseError::Malformed("no such lease".to_owned()));
        };
        let step = handle(record, input, self.now, &self.policy)?;
        check_monotonic(record, &step.record);
        self.provider.record = Some(step.record);
        self.provider.queue.extend(step.effects);
        Ok(())
    }

    fn feed_buyer(&mut self, input: Input) -> Result<(), LeaseError> {
        let record = self
            .buyer
            .record
            .as_ref()
            .expect("the buyer keeps its record");
        let step = handle(record, input, self.now, &self.policy)?;
        check_monotonic(record, &step.record);
        self.buyer.record = Some(step.record);
        self.buyer.queue.extend(step.effects);
        Ok(())
    }

    /// Carries out the provider's effects until none is left (what a provider answering a call
    /// does before it answers).
    fn drain_provider(&mut self) {
        let mut budget = 64;
        while budget > 0 && self.run_provider() {
            budget -= 1;
        }
    }

    fn provider_checkpoint(&self) -> Option<Signed<UsageCheckpoint>> {
        self.provider
            .record
            .as_ref()
            .and_then(|r| r.checkpoint.clone())
    }

    fn run_provider(&mut self) -> bool {
        let Some(effect) = self.provider.queue.pop_front() else {
            return false;
        };
        let now = self.now;
        let outcome = match effect {
            Effect::OffersChanged | Effect::AskArbiter if self.provider.record.is_none() => Ok(()),
            Effect::OffersChanged => Ok(()),
            Effect::Forget => {
                self.provider.record = None;
                self.provider.queue.clear();
                Ok(())
            }
            Effect::StartWorkload => {
                if self.workload_fails {
                    self.feed_provider(Input::WorkloadFailed("image not found".to_owned()))
                } else {
                    self.ran_from.get_or_insert(now);
                    self.feed_provider(Input::WorkloadStarted {
                        workload_id: "wl-1".to_owned(),
                    })
                }
            }
            Effect::StopWorkload => {
                if self.ran_from.is_some() {
                    self.ran_until.get_or_insert(now);
                }
                Ok(())
            }
            Effect::SignCheckpoint(checkpoint) => {
                if checkpoint.ended.is_some() && self.ran_from.is_some() {
                    self.ran_until.get_or_insert(now);
                }
                let signed = self.provider.sign(now, &checkpoint);
                self.feed_provider(Input::Checkpoint(signed))
            }
            Effect::Pull { amount, pulled } => {
                let amount = amount.base_units();
                if pulled.base_units() == self.chain.pulled
                    && amount <= self.chain.allowance
                    && amount <= self.chain.buyer
                {
                    self.chain.allowance -= amount;
                    self.chain.buyer -= amount;
                    self.chain.provider += amount;
                    self.chain.pulled += amount;
                }
                Ok(())
            }
            Effect::ReadStream => self.feed_provider(Input::StreamRead(self.chain.stream(now))),
            Effect::WatchSettlement => match self.chain.settled.clone() {
                Some(fact) => self.feed_provider(Input::Settled(fact)),
                None => Ok(()),
            },
            Effect::AskArbiter => {
                let fact = self.arbitrate(true);
                match fact {
                    Some(fact) => self.feed_provider(Input::Arbitrated(fact)),
                    None => Ok(()),
                }
            }
            other => panic!("a provider was asked to {other:?}"),
        };
        if let Err(error) = outcome {
            panic!("the provider refused its own step: {error}");
        }
        true
    }

    fn run_buyer(&mut self) -> bool {
        let Some(effect) = self.buyer.queue.pop_front() else {
            return false;
        };
        let now = self.now;
        let outcome: Result<(), LeaseError> = match effect {
            Effect::SignAcceptance => {
                let record = self.buyer.record.as_ref().expect("record");
                let acceptance = LeaseAcceptance::of(record.terms().expect("terms")).expect("of");
                let signed = self.buyer.sign(now, &acceptance);
                self.feed_buyer(Input::AcceptanceSigned(signed))
            }
            Effect::Fund { may_send } => self.fund(may_send),
            Effect::SendFunding => self.send_funding(),
            Effect::FetchCheckpoint => self.call_provider(|world| {
                let checkpoint = world.provider_checkpoint();
                match checkpoint {
                    Some(c) => world.feed_buyer(Input::Checkpoint(c)),
                    None => Ok(()),
                }
            }),
            Effect::RequestEnd => self.call_provider(|world| world.end_at_provider()),
            Effect::Cosign(release) => self.call_provider(|world| {
                world.end_at_provider()?;
                let provider_release = world
                    .provider
                    .record
                    .as_ref()
                    .and_then(LeaseRecord::release);
                match provider_release {
                    Some(r) if r == release => match world.chain.release(release, world.now) {
                        Some(fact) => world.feed_buyer(Input::Settled(fact)),
                        None => Ok(()),
                    },
                    _ => world.feed_buyer(Input::CounterpartyRefused(
                        "the provider's settlement differs".to_owned(),
                    )),
                }
            }),
            // Like the driver, an allowance is only granted to a lease still running.
            Effect::Approve(allowance) => {
                let running =
                    self.buyer.record.as_ref().is_some_and(|r| {
                        matches!(r.state, LeaseState::Funded | LeaseState::Running)
                    });
                if running {
                    self.chain.allowance = allowance.base_units();
                }
                Ok(())
            }
            Effect::Revoke => {
                self.chain.allowance = 0;
                self.feed_buyer(Input::StreamClosed(self.chain.stream(now)))
            }
            Effect::ReadStream => self.feed_buyer(Input::StreamRead(self.chain.stream(now))),
            Effect::WatchSettlement => match self.chain.settled.clone() {
                Some(fact) => self.feed_buyer(Input::Settled(fact)),
                None => Ok(()),
            },
            Effect::AskArbiter => match self.arbitrate(false) {
                Some(fact) => self.feed_buyer(Input::Arbitrated(fact)),
                None => Ok(()),
            },
            other => panic!("a buyer was asked to {other:?}"),
        };
        // A buyer's step can be refused only for what the provider sent (a refused checkpoint).
        if let Err(error) = outcome {
            assert!(
                matches!(
                    error,
                    LeaseError::NotNow { .. }
                        | LeaseError::WrongTerms(_)
                        | LeaseError::WrongLease { .. }
                ),
                "unexpected refusal: {error}"
            );
        }
        true
    }

    fn fund(&mut self, may_send: bool) -> Result<(), LeaseError> {
        let record = self.buyer.record.as_ref().expect("record");
        let terms = self.terms();
        if let Some(funding) = self.chain.funded.clone() {
            return self.feed_buyer(Input::Funded {
                acceptance: None,
                funding,
            });
        }
        if !may_send {
            return self.feed_buyer(Input::FundingFailed("the reservation lapsed".to_owned()));
        }
        match terms.payment {
            Payment::Escrow => {
                self.chain.buyer -= terms.amount.base_units();
                self.chain.vault += terms.amount.base_units();
            }
            Payment::Stream { .. } => {
                self.chain.allowance = record.first_allowance().expect("allowance").base_units();
            }
        }
        let funding = Funding {
            signature: "fund".to_owned(),
            slot: self.now / 400,
            funded_at_ms: self.now,
        };
        self.chain.funded = Some(funding.clone());
        self.feed_buyer(Input::Funded {
            acceptance: None,
            funding,
        })
    }

    fn send_funding(&mut self) -> Result<(), LeaseError> {
        self.call_provider(|world| {
            let buyer = world.buyer.record.as_ref().expect("record");
            let (Some(acceptance), Some(funding)) =
                (buyer.acceptance.clone(), buyer.funding.clone())
            else {
                return Ok(());
            };
            let before = world.provider.record.as_ref().map(|r| r.state);
            let answer = world.feed_provider(Input::Funded {
                acceptance: Some(acceptance),
                funding,
            });
            world.drain_provider();
            match answer {
                Err(error) => {
                    let fund_by = world.terms().fund_by_ms;
                    assert!(
                        before != Some(LeaseState::Accepted) || world.now > fund_by,
                        "the provider refused an honest funding in time: {error}"
                    );
                    world.feed_buyer(Input::CounterpartyRefused(error.to_string()))
                }
                Ok(()) => match world.provider_checkpoint() {
                    Some(checkpoint) => world.feed_buyer(Input::Checkpoint(checkpoint)),
                    None => Ok(()),
                },
            }
        })
    }

    /// The provider's `market.lease.end`: ends the lease if it runs, answers the final checkpoint.
    fn end_at_provider(&mut self) -> Result<(), LeaseError> {
        let state = self.provider.record.as_ref().map(|r| r.state);
        match state {
            None => {
                return self.feed_buyer(Input::CounterpartyRefused("no such lease".to_owned()));
            }
            Some(LeaseState::Funded | LeaseState::Running | LeaseState::Accepted) => {
                self.feed_provider(Input::EndRequested("ended by the buyer".to_owned()))?;
                self.drain_provider();
            }
            _ => {}
        }
        match self.provider_checkpoint() {
            Some(checkpoint) if checkpoint.payload().ended.is_some() => {
                self.feed_buyer(Input::Checkpoint(checkpoint))
            }
            _ => Ok(()),
        }
    }

    /// A call from the buyer to the provider: answered only while the provider is up.
    fn call_provider(
        &mut self,
        call: impl FnOnce(&mut Self) -> Result<(), LeaseError>,
    ) -> Result<(), LeaseError> {
        if !self.provider_up {
            return self.feed_buyer(Input::CounterpartyUnreachable);
        }
        self.feed_buyer(Input::CounterpartyAnswered)?;
        call(self)
    }

    /// The arbiter rules on the evidence both sides can show (the provider's only while it is
    /// up), and releases the vault with the party that asked.
    fn arbitrate(&mut self, asked_by_provider: bool) -> Option<SettlementFact> {
        if let Some(fact) = &self.chain.settled {
            return Some(fact.clone());
        }
        let buyer = self.buyer.record.as_ref()?;
        let terms = buyer.terms.clone()?;
        let acceptance = buyer.acceptance.clone()?;
        let funded_at = self.chain.funded.as_ref()?.funded_at_ms;
        let mut checkpoints: Vec<Signed<UsageCheckpoint>> =
            buyer.checkpoint.iter().cloned().collect();
        if asked_by_provider || self.provider_up {
            checkpoints.extend(self.provider_checkpoint());
        }
        let ruling = rule(&Case {
            terms: &terms,
            acceptance: &acceptance,
            funded_at_ms: funded_at,
            checkpoints: &checkpoints,
            now_ms: self.now,
            clock_slack_ms: self.policy.clock_slack_ms,
        })
        .expect("the arbiter rules on honest evidence");
        self.chain.release(ruling.release, self.now)
    }

    fn tick_both(&mut self) {
        if self.provider_up {
            let _ = self.feed_provider(Input::Tick);
        }
        let _ = self.feed_buyer(Input::Tick);
    }

    fn apply(&mut self, action: &Action) {
        match *action {
            Action::Advance(secs) => self.now += u64::from(secs) * 1000,
            Action::TickProvider if self.provider_up => {
                let _ = self.feed_provider(Input::Tick);
            }
            Action::TickBuyer => {
                let _ = self.feed_buyer(Input::Tick);
            }
            Action::RunProvider if self.provider_up => {
                self.run_provider();
            }
            Action::RunBuyer => {
                self.run_buyer();
            }
            Action::CrashProvider => self.provider.queue.clear(),
            Action::CrashBuyer => self.buyer.queue.clear(),
            Action::ProviderDown => self.provider_up = false,
            Action::ProviderUp => self.provider_up = true,
            Action::WorkloadExits if self.provider_up => {
                let _ = self.feed_provider(Input::WorkloadEnded {
                    exit_code: Some(0),
                    reason: None,
                });
            }
            Action::BuyerEnds => {
                let _ = self.feed_buyer(Input::EndRequested(
                    "the buyer's operator ended it".to_owned(),
                ));
            }
            Action::ReplayForeign => {
                let before_buyer = self.buyer.record.clone();
                let foreign = Input::Checkpoint(self.foreign_checkpoint.clone());
                assert!(
                    self.feed_buyer(foreign).is_err(),
                    "a checkpoint of another lease"
                );
                assert_eq!(self.buyer.record, before_buyer);
                if let Some(before) = self.provider.record.clone() {
                    let funding = Funding {
                        signature: "other".to_owned(),
                        slot: 1,
                        funded_at_ms: self.now,
                    };
                    let foreign = Input::Funded {
                        acceptance: Some(self.foreign_acceptance.clone()),
                        funding,
                    };
                    let refused = self.feed_provider(foreign);
                    if before.state == LeaseState::Accepted {
                        assert!(refused.is_err(), "an acceptance of another lease");
                    }
                    assert_eq!(
                        self.provider.record.as_ref().map(|r| r.state),
                        Some(before.state)
                    );
                }
            }
            Action::Duplicate => {
                if let Some(checkpoint) = self.provider_checkpoint() {
                    let _ = self.feed_buyer(Input::Checkpoint(checkpoint.clone()));
                    let _ = self.feed_buyer(Input::Checkpoint(checkpoint));
                }
            }
            _ => {}
        }
    }

    /// Lets time pass and both sides work until the lease is over (the provider stays as it is:
    /// up, or gone for good).
    fn finish(&mut self) {
        for _ in 0..400 {
            let buyer_done = self
                .buyer
                .record
                .as_ref()
                .is_none_or(|r| !r.state.is_open());
            let provider_done = !self.provider_up
                || self
                    .provider
                    .record
                    .as_ref()
                    .is_none_or(|r| !r.state.is_open());
            if buyer_done && provider_done {
                return;
            }
            self.now += 30_000;
            self.tick_both();
            for _ in 0..64 {
                let a = self.provider_up && self.run_provider();
                let b = self.run_buyer();
                if !a && !b {
                    break;
                }
            }
        }
        panic!(
            "the lease never ended: buyer {:?}, provider {:?}",
            self.buyer
                .record
                .as_ref()
                .map(|r| (r.state, r.reason.clone())),
            self.provider
                .record
                .as_ref()
                .map(|r| (r.state, r.reason.clone()))
        );
    }

    fn check_invariants(&self) {
        let chain = &self.chain;
        assert_eq!(
            chain.buyer + chain.provider + chain.vault,
            BUYER_MOLT,
            "MOLT is conserved to the base unit"
        );
        assert!(chain.settlements <= 1, "the escrow is released once");
        assert_eq!(chain.vault, 0, "no funds are left in the vault");
        let terms = self.terms();
        let ran_secs = match (self.ran_from, self.ran_until) {
            (Some(from), Some(until)) => (until - from) / 1000,
            (Some(from), None) => (self.now - from) / 1000,
            _ => 0,
        };
        let fair = pro_rata(terms.amount, ran_secs, terms.total_secs()).to_provider;
        match terms.payment {
            Payment::Escrow => {
                assert!(
                    chain.provider <= fair.base_units(),
                    "the provider got {} for {ran_secs} s served (fair: {fair})",
                    chain.provider
                );
                let buyer = self.buyer.record.as_ref().expect("buyer record");
                if let Some(fact) = &chain.settled {
                    assert_eq!(
                        buyer.settlement.as_ref(),
                        Some(fact),
                        "the buyer agrees with the chain"
                    );
                    // A provider whose reservation lapsed before the funding reached it never held
                    // the escrow; any other follows the chain.
                    if self.provider_up
                        && let Some(provider) = &self.provider.record
                        && provider.state != LeaseState::Expired
                    {
                        assert_eq!(
                            provider.settlement.as_ref(),
                            Some(fact),
                            "the provider agrees"
                        );
                    }
                } else {
                    assert!(chain.funded.is_none(), "a funded lease is settled");
                    assert_eq!(buyer.state, LeaseState::Expired);
                }
            }
            Payment::Stream { .. } => {
                let ahead = 2 * terms.per_pull().base_units();
                assert!(
                    chain.provider <= fair.base_units() + ahead,
                    "a stream paid {} for {ran_secs} s served (fair {fair}, allowance ahead {ahead})",
                    chain.provider
                );
                assert_eq!(chain.allowance, 0, "nothing more can be pulled");
                let buyer = self.buyer.record.as_ref().expect("buyer record");
                if chain.funded.is_some() {
                    let recorded = buyer.stream.as_ref().map_or(0, |s| s.pulled.base_units());
                    assert_eq!(
                        recorded, chain.pulled,
                        "the buyer records what the chain shows pulled"
                    );
                }
            }
        }
    }
}

/// Every record a step produces only moves forward and never forgets a settlement.
fn check_monotonic(before: &LeaseRecord, after: &LeaseRecord) {
    assert!(
        before.state.may_become(after.state),
        "{} -> {}",
        before.state,
        after.state
    );
    if before.settlement.is_some() {
        assert_eq!(
            before.settlement, after.settlement,
            "a settlement is never rewritten"
        );
    }
}

#[derive(Debug, Clone)]
enum Action {
    Advance(u16),
    TickProvider,
    TickBuyer,
    RunProvider,
    RunBuyer,
    CrashProvider,
    CrashBuyer,
    ProviderDown,
    ProviderUp,
    WorkloadExits,
    BuyerEnds,
    ReplayForeign,
    Duplicate,
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        3 => (1u16..900).prop_map(Action::Advance),
        3 => Just(Action::TickProvider),
        3 => Just(Action::TickBuyer),
        6 => Just(Action::RunProvider),
        6 => Just(Action::RunBuyer),
        1 => Just(Action::CrashProvider),
        1 => Just(Action::CrashBuyer),
        1 => Just(Action::ProviderDown),
        2 => Just(Action::ProviderUp),
        1 => Just(Action::WorkloadExits),
        1 => Just(Action::BuyerEnds),
        1 => Just(Action::ReplayForeign),
        1 => Just(Action::Duplicate),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn any_interleaving_settles_once_and_conserves_molt(
        stream in any::<bool>(),
        workload_fails in proptest::bool::weighted(0.1),
        vanishes in proptest::bool::weighted(0.2),
        script in proptest::collection::vec(action(), 0..120),
    ) {
        let mut world = World::new(stream, workload_fails);
        for action in &script {
            world.apply(action);
        }
        world.provider_up = !vanishes;
        world.finish();
        world.check_invariants();
    }
}

#[test]
fn the_happy_path_pays_pro_rata_for_time_served() {
    let mut world = World::new(false, false);
    for _ in 0..8 {
        world.apply(&Action::RunBuyer);
    }
    assert_eq!(
        world.buyer.record.as_ref().map(|r| r.state),
        Some(LeaseState::Running)
    );
    world.apply(&Action::Advance(900));
    world.apply(&Action::BuyerEnds);
    while world.run_buyer() {}
    world.finish();
    world.check_invariants();
    // A quarter of the hour served: a quarter of the escrow, to the base unit.
    assert_eq!(world.chain.provider, 900_000);
    assert_eq!(world.chain.buyer, BUYER_MOLT - 900_000);
    assert_eq!(
        world.buyer.record.as_ref().map(|r| r.state),
        Some(LeaseState::Settled)
    );
}

#[test]
fn a_provider_that_vanishes_is_paid_for_its_last_checkpoint() {
    let mut world = World::new(false, false);
    for _ in 0..8 {
        world.apply(&Action::RunBuyer);
    }
    // Checkpoints every minute; the buyer fetches them.
    for _ in 0..10 {
        world.apply(&Action::Advance(60));
        world.tick_both();
        while world.run_provider() || world.run_buyer() {}
    }
    let held = world
        .buyer
        .record
        .as_ref()
        .and_then(|r| r.checkpoint.clone())
        .expect("a checkpoint");
    world.apply(&Action::ProviderDown);
    world.finish();
    world.check_invariants();
    let served = held.payload().served_secs;
    assert!((540..=600).contains(&served), "{served}");
    assert_eq!(
        world.chain.provider,
        served * 1000,
        "paid per second of the checkpoint"
    );
    let buyer = world.buyer.record.as_ref().expect("record");
    assert_eq!(buyer.state, LeaseState::Settled);
    assert!(
        buyer
            .history
            .iter()
            .any(|(s, _)| *s == LeaseState::Disputed)
    );
}

#[test]
fn a_lapsed_reservation_is_forgotten_and_cannot_be_funded() {
    let mut world = World::new(false, false);
    world.apply(&Action::Advance(300));
    world.apply(&Action::TickProvider);
    world.drain_provider();
    assert!(
        world.provider.record.is_none(),
        "the provider forgot the lapsed reservation"
    );
    world.finish();
    world.check_invariants();
    assert_eq!(world.chain.buyer, BUYER_MOLT);
    assert_eq!(
        world.buyer.record.as_ref().map(|r| r.state),
        Some(LeaseState::Expired)
    );
}
