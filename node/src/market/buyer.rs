//! The buyer's side: `market.bid` (match, budget, lease, fund, run — or say why not),
//! `market.lease.cancel` and `.revoke`, the buyer's effects, and reputation from facts this node
//! checks on chain itself.

use std::time::{Duration, Instant};

use claw_api::market::{
    self as api, BidOutcome, BidPhases, EndParams, FundParams, Lease, LeaseEnd, LeaseReceipt,
    LeaseRequestParams, LeaseStatus, MarketLeaseEnd, MarketLeaseFund, MarketLeaseRequest,
    MarketLeaseStatus, MarketReceipts, MatchedOffer, NearOffer, NoMatchReason, ProviderReputation,
    ReceiptListing, StatusParams,
};
use claw_market::Molt;
use claw_market::book::{Match, NoMatch};
use claw_market::lease::{
    Effect, Input, LeaseAcceptance, LeaseId, LeaseOutcome, LeaseRecord, LeaseState, LeaseTerms,
    ProvenOutcome, Side, Signed, TermsExpectation, UsageCheckpoint, wallet_proof_message,
};
use claw_market::order::Bid;
use claw_market::settlement::{
    Escrow, Release, SettlementError, approve_allowance, pro_rata, revoke,
};
use claw_mesh::{ErrorCode, InvokeFailure, PeerId, TopicKind};
use solana_signer::Signer as _;

use super::provider::progress;
use super::{
    BidParams, CancelParams, LEASE_PROOF_SLACK, Market, PaymentChoice, ReceiptsParams,
    ReputationParams, RevokeParams, address, chain_failure, failure, lease_id, now_ms, summary,
};

/// How long `market.bid` follows a lease whose workload is still starting before it answers.
const START_FOLLOW: Duration = Duration::from_secs(60);

/// Milliseconds since `since`, to the microsecond.
fn elapsed_ms(since: Instant) -> f64 {
    (since.elapsed().as_secs_f64() * 1_000_000.0).round() / 1000.0
}

/// How a failed call to the counterparty reaches the machine.
fn call_failed(error: &InvokeFailure) -> Vec<Input> {
    match error.code {
        ErrorCode::Unavailable | ErrorCode::Timeout => vec![Input::CounterpartyUnreachable],
        ErrorCode::NotFound | ErrorCode::Conflict | ErrorCode::Unauthorized => {
            vec![Input::CounterpartyRefused(error.message.clone())]
        }
        _ => Vec::new(),
    }
}

/// What a provider's answer to a lease step says, whichever step it answered.
struct ProviderSays<'a> {
    /// Where the lease is on the provider.
    state: api::LeaseState,
    /// The workload running the lease there.
    workload_id: Option<&'a str>,
    /// Its latest checkpoint envelope, base-64, not yet verified.
    checkpoint: Option<&'a str>,
    /// Why the lease is where it is.
    reason: Option<&'a str>,
}

impl<'a> From<&'a LeaseStatus> for ProviderSays<'a> {
    fn from(status: &'a LeaseStatus) -> Self {
        Self {
            state: status.state,
            workload_id: status.workload_id.as_deref(),
            checkpoint: status.checkpoint.as_deref(),
            reason: status.reason.as_deref(),
        }
    }
}

impl<'a> From<&'a LeaseEnd> for ProviderSays<'a> {
    fn from(end: &'a LeaseEnd) -> Self {
        match end {
            LeaseEnd::Ended(ended) => Self {
                state: ended.state,
                workload_id: ended.workload_id.as_deref(),
                checkpoint: ended.checkpoint.as_deref(),
                reason: ended.reason.as_deref(),
            },
            LeaseEnd::Lapsed(lapsed) => Self {
                state: lapsed.state,
                workload_id: None,
                checkpoint: None,
                reason: None,
            },
        }
    }
}

fn terms_of(record: &LeaseRecord) -> Result<&LeaseTerms, InvokeFailure> {
    record
        .terms()
        .map(Signed::payload)
        .map_err(|e| super::driver::refusal(&e))
}

fn escrow_of(record: &LeaseRecord) -> Result<Option<Escrow>, InvokeFailure> {
    Escrow::of(terms_of(record)?).map_err(|e| super::driver::refusal(&e))
}

impl Market {
    /// MOLT committed to leases this node bought in the last 24 hours.
    async fn spent_today(&self) -> Result<Molt, InvokeFailure> {
        let since = now_ms().saturating_sub(86_400_000);
        let records = self.inner.store.run(crate::store::Store::leases).await?;
        Ok(records
            .iter()
            .filter(|r| r.side == Side::Buyer && r.created_ms >= since)
            .filter(|r| !matches!(r.state, LeaseState::Expired | LeaseState::Refunded))
            .filter_map(|r| r.terms.as_ref().map(|t| t.payload().amount))
            .fold(Molt::default(), |sum, a| sum.checked_add(a).unwrap_or(sum)))
    }

    /// `market.bid`: matches against the book; without a match, says why per constraint with
    /// the nearest offers. With a match and a workload: checks the budget (before anything is
    /// signed), signs the bid (and proves the wallet with it), asks the provider for the lease,
    /// checks its terms, then drives the lease: acceptance signed, escrow funded at its derived
    /// addresses, workload handed over and started. Each phase is timed.
    pub async fn bid(
        &self,
        params: BidParams,
        progress_key: Option<&str>,
    ) -> Result<BidOutcome, InvokeFailure> {
        let started = Instant::now();
        let progress = self.inner.workloads.progress().track(progress_key);
        let bid = self.bid_of(&params)?;
        progress.stage("matching against the order book");
        let matched = {
            let book = self
                .inner
                .book
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let own = self.inner.dir.identity().public_key().to_bytes();
            book.best_match_excluding(&bid, now_ms(), &|p| self.reputation_of(p), Some(&own))
        };
        let matched = match matched {
            Ok(matched) => matched,
            Err(why) => return Ok(unmatched(&why)),
        };
        let match_ms = elapsed_ms(started);
        let provider = claw_attestation::SignerKey(matched.entry.provider)
            .peer_id()
            .ok_or_else(|| failure(ErrorCode::Internal, "offer signer is not a peer"))?;
        let offer = MatchedOffer {
            provider: provider.to_string(),
            offer_id: matched.entry.offer.offer_id,
            gpu_model: matched.entry.offer.gpu_model.clone(),
            price_per_gpu_hour: matched.entry.offer.price_per_gpu_hour.to_string(),
            simulated: matched.entry.offer.simulated,
            total: matched.total.to_string(),
        };
        let Some(workload) = params.workload else {
            return Ok(BidOutcome {
                offer: Some(offer),
                leased: Some(false),
                ..matched_only()
            });
        };
        // Spend safety: nothing is signed before the budget allows the lease.
        let budget = self.inner.dir.config().market.budget();
        let spent = self.spent_today().await?;
        budget.allows(matched.total, spent).map_err(|e| {
            failure(
                ErrorCode::Unauthorized,
                format!("over budget, nothing was signed: {e}"),
            )
        })?;
        let arbiter = self.arbiter()?;
        self.chain()?;
        let stream = params.payment == PaymentChoice::Stream;
        if stream {
            self.one_stream_per_wallet().await?;
        }

        progress.stage(format!("requesting the lease from {provider}"));
        let phase = Instant::now();
        let terms = self
            .checked_terms(&bid, &matched, provider, &arbiter, stream)
            .await?;
        budget.allows(terms.payload().amount, spent).map_err(|e| {
            failure(
                ErrorCode::Unauthorized,
                format!("over budget, nothing was paid: {e}"),
            )
        })?;
        let lease = terms.payload().lease_id.clone();
        let request_ms = elapsed_ms(phase);

        progress.stage(format!(
            "lease {lease}: accepting the terms, funding {} MOLT and starting the workload",
            terms.payload().amount
        ));
        let phase = Instant::now();
        let bought =
            LeaseRecord::bought(terms, now_ms()).map_err(|e| super::driver::refusal(&e))?;
        self.inner
            .workload_specs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(lease.clone(), workload);
        {
            let _guard = self.inner.locks.lock(&lease).await;
            if self.load(&lease).await?.is_none() {
                self.save(&bought.record).await?;
            }
            self.drive_locked(&lease, Input::Tick).await?;
        }
        let record = self.follow_start(&lease).await?;
        let fund_ms = record
            .entered(LeaseState::Funded)
            .map(|at| at.saturating_sub(record.created_ms) as f64);
        let start_ms = record
            .entered(LeaseState::Running)
            .zip(record.entered(LeaseState::Funded))
            .map(|(running, funded)| running.saturating_sub(funded) as f64);
        if record.state != LeaseState::Running {
            progress.stage(format!(
                "lease {lease} is {}: {}",
                record.state,
                record.reason.as_deref().unwrap_or("")
            ));
        }
        tracing::info!(lease = %lease, state = %record.state, "bid done");
        Ok(BidOutcome {
            offer: Some(offer),
            leased: Some(true),
            lease: Some(summary(&record, self.arbiter_peer().as_deref())),
            phases_ms: Some(BidPhases {
                matching: match_ms,
                lease_request: request_ms,
                escrow_funding: fund_ms,
                workload_start: start_ms,
                accept_fund_start: elapsed_ms(phase),
                total: elapsed_ms(started),
            }),
            ..matched_only()
        })
    }

    /// The bid `params` describe, paid from this node's wallet, validated.
    fn bid_of(&self, params: &BidParams) -> Result<Bid, InvokeFailure> {
        let max_price: Molt = params
            .max_price
            .parse()
            .map_err(|e| failure(ErrorCode::InvalidParams, format!("max_price: {e}")))?;
        let bid = Bid {
            models: params.models.clone(),
            gpus: params.gpus,
            min_vram_mib: params.min_vram_mib,
            region: params.region.clone(),
            attested_only: params.attested_only,
            min_reputation: params.min_reputation,
            max_price_per_gpu_hour: max_price,
            hours: params.hours,
            wallet: self.wallet()?.pubkey().to_string(),
            accept_simulated: params.accept_simulated,
        };
        bid.validate()
            .map_err(|e| failure(ErrorCode::InvalidParams, e.to_string()))?;
        Ok(bid)
    }

    /// Signs `bid`, asks the matched provider for the lease, and checks the terms it answers
    /// against the bid, the offer and this node's arbiter before anything else is signed.
    async fn checked_terms(
        &self,
        bid: &Bid,
        matched: &Match,
        provider: PeerId,
        arbiter: &str,
        stream: bool,
    ) -> Result<Signed<LeaseTerms>, InvokeFailure> {
        let (bid_signed, terms) = self
            .request_lease(bid, &matched.entry.offer, &provider, stream)
            .await?;
        terms
            .check_for_bid(&TermsExpectation {
                bid,
                bid_digest: bid_signed.digest(),
                bid_issued_ms: bid_signed.issued_ms(),
                buyer_peer: self.local_peer().to_string(),
                provider_key: matched.entry.provider,
                provider_wallet: &matched.entry.offer.wallet,
                arbiter_wallet: arbiter,
                stream,
                clock_slack_ms: self.policy().clock_slack_ms,
            })
            .map_err(|e| failure(ErrorCode::Conflict, format!("terms refused: {e}")))?;
        Ok(terms)
    }

    /// A token account has one delegate: one stream per wallet at a time.
    async fn one_stream_per_wallet(&self) -> Result<(), InvokeFailure> {
        let records = self.inner.store.run(crate::store::Store::leases).await?;
        if let Some(open) = records
            .iter()
            .find(|r| r.side == Side::Buyer && r.is_stream() && r.state.is_open())
        {
            return Err(failure(
                ErrorCode::Conflict,
                format!(
                    "lease {} already streams from this wallet (a token account has one delegate); end it first",
                    open.lease_id
                ),
            ));
        }
        Ok(())
    }

    /// Signs the bid and the wallet's proof of it, and asks the provider for the lease: its
    /// answer is the terms it signed, verified here.
    async fn request_lease(
        &self,
        bid: &Bid,
        offer: &claw_market::order::Offer,
        provider: &PeerId,
        stream: bool,
    ) -> Result<(Signed<Bid>, Signed<LeaseTerms>), InvokeFailure> {
        let signed = self.sign(Duration::from_secs(300), bid.clone()).await?;
        if let Err(error) = self
            .mesh()?
            .publish(TopicKind::Bids, signed.envelope().to_vec())
            .await
        {
            tracing::debug!(%error, "bid not gossiped");
        }
        let proof = self
            .wallet()?
            .sign_message(&wallet_proof_message(&signed.digest()));
        let grant = self
            .call_peer::<MarketLeaseRequest>(
                &provider.to_string(),
                &LeaseRequestParams {
                    bid: signed.text(),
                    offer_id: offer.offer_id,
                    stream,
                    wallet_signature: proof.to_string(),
                },
            )
            .await?;
        let terms = self.open_signed::<LeaseTerms>("lease terms", &grant.terms, Some(provider))?;
        Ok((signed, terms))
    }

    /// Follows a lease whose workload is still starting (an image pull), for a while.
    async fn follow_start(&self, lease: &LeaseId) -> Result<LeaseRecord, InvokeFailure> {
        let deadline = Instant::now() + START_FOLLOW;
        loop {
            let record = self
                .load(lease)
                .await?
                .ok_or_else(|| failure(ErrorCode::Internal, "the lease record vanished"))?;
            if record.state != LeaseState::Funded || Instant::now() > deadline {
                return Ok(record);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
            self.drive(lease, Input::Tick).await?;
        }
    }

    /// Carries out one of the buyer's effects; answers what it produced.
    pub(super) async fn buyer_effect(&self, record: &LeaseRecord, effect: Effect) -> Vec<Input> {
        let outcome = match effect {
            Effect::SignAcceptance => self.sign_acceptance(record).await,
            Effect::Fund { may_send } => self.fund(record, may_send).await,
            Effect::SendFunding => self.send_funding(record).await,
            Effect::FetchCheckpoint => self.fetch_checkpoint(record).await,
            Effect::RequestEnd => self.request_end(record).await,
            Effect::Cosign(release) => self.cosign(record, release).await,
            Effect::WatchSettlement => self.watch_settlement(record).await,
            Effect::AskArbiter => self.ask_arbiter(record).await,
            Effect::ReadStream => self.read_stream_input(record).await,
            Effect::Approve(allowance) => self.approve(record, allowance).await,
            Effect::Revoke => self.revoke_stream(record).await,
            other => {
                tracing::error!(lease = %record.lease_id, ?other, "a buyer cannot do that");
                Ok(Vec::new())
            }
        };
        outcome.unwrap_or_else(|error| {
            tracing::info!(lease = %record.lease_id, error = %error.message, "lease step not done; the next tick tries again");
            Vec::new()
        })
    }

    async fn sign_acceptance(&self, record: &LeaseRecord) -> Result<Vec<Input>, InvokeFailure> {
        let terms = record.terms().map_err(|e| super::driver::refusal(&e))?;
        let acceptance = LeaseAcceptance::of(terms).map_err(|e| super::driver::refusal(&e))?;
        let ttl = Duration::from_secs(terms.payload().total_secs()) + LEASE_PROOF_SLACK;
        Ok(vec![Input::AcceptanceSigned(
            self.sign(ttl, acceptance).await?,
        )])
    }

    /// Funds the lease unless the chain shows it funded (after a crash, say): the escrow at its
    /// derived addresses, or the stream's first allowance.
    async fn fund(
        &self,
        record: &LeaseRecord,
        may_send: bool,
    ) -> Result<Vec<Input>, InvokeFailure> {
        let chain = self.chain()?;
        let terms = terms_of(record)?;
        let landed = match escrow_of(record)? {
            Some(escrow) => {
                if escrow.exists(&chain.client).await.map_err(chain_failure)? {
                    escrow
                        .verify_funded(&chain.client, &chain.mint)
                        .await
                        .map_err(chain_failure)?;
                    let history = chain
                        .client
                        .history(&escrow.multisig(), None, 1000)
                        .await
                        .map_err(chain_failure)?;
                    let first = history.iter().rev().find(|e| !e.failed).ok_or_else(|| {
                        failure(ErrorCode::Internal, "a funded escrow without history")
                    })?;
                    first.signature
                } else if !may_send {
                    return Ok(vec![Input::FundingFailed(
                        "the reservation lapsed before the escrow was funded".to_owned(),
                    )]);
                } else {
                    match escrow
                        .fund(&chain.client, &chain.mint, self.wallet()?)
                        .await
                    {
                        Ok(landed) => landed.signature,
                        Err(
                            error @ (SettlementError::InsufficientFunds(_)
                            | SettlementError::TransactionFailed { .. }),
                        ) => {
                            return Ok(vec![Input::FundingFailed(format!(
                                "funding the escrow: {error}"
                            ))]);
                        }
                        Err(other) => return Err(chain_failure(other)),
                    }
                }
            }
            None => {
                if !may_send {
                    return Ok(vec![Input::FundingFailed(
                        "the reservation lapsed before the stream was allowed".to_owned(),
                    )]);
                }
                let allowance = record.first_allowance().unwrap_or_default();
                approve_allowance(
                    &chain.client,
                    &chain.mint,
                    self.wallet()?,
                    &address(&terms.provider_wallet)?,
                    allowance,
                    Molt::default(),
                    &record.lease_id,
                )
                .await
                .map_err(chain_failure)?
                .signature
            }
        };
        let fetched = chain
            .client
            .transaction(&landed)
            .await
            .map_err(chain_failure)?
            .ok_or_else(|| failure(ErrorCode::Unavailable, format!("{landed} is not found yet")))?;
        let funding = claw_market::lease::machine::Funding {
            signature: landed.to_string(),
            slot: fetched.slot,
            funded_at_ms: fetched.block_time_ms.unwrap_or_else(now_ms),
        };
        tracing::info!(lease = %record.lease_id, signature = %landed, "lease funded");
        Ok(vec![Input::Funded {
            acceptance: None,
            funding,
        }])
    }

    /// What the provider's answer tells: the workload running the lease, and a checkpoint.
    fn provider_answer(&self, record: &LeaseRecord, says: ProviderSays<'_>) -> Vec<Input> {
        let mut inputs = vec![Input::CounterpartyAnswered];
        if record.workload_id.is_none()
            && let Some(id) = says.workload_id
        {
            inputs.push(Input::WorkloadStarted {
                workload_id: id.chars().take(64).collect(),
            });
        }
        inputs.extend(self.checkpoint_from(record, says.checkpoint));
        if matches!(
            says.state,
            api::LeaseState::Completed | api::LeaseState::Refunded | api::LeaseState::Settled
        ) && let Some(said) = says.reason
        {
            inputs.push(Input::CounterpartySaid(said.to_owned()));
        }
        inputs
    }

    /// Verifies a checkpoint the provider sent.
    fn checkpoint_from(&self, record: &LeaseRecord, text: Option<&str>) -> Option<Input> {
        let text = text?;
        let provider: PeerId = record.counterparty.parse().ok()?;
        match self.open_signed::<UsageCheckpoint>("checkpoint", text, Some(&provider)) {
            Ok(signed) => Some(Input::Checkpoint(signed)),
            Err(error) => {
                tracing::warn!(lease = %record.lease_id, error = %error.message, "the provider sent a checkpoint that does not verify");
                None
            }
        }
    }

    /// Hands the provider the acceptance, the funding and the workload (again, on a retry).
    async fn send_funding(&self, record: &LeaseRecord) -> Result<Vec<Input>, InvokeFailure> {
        let spec = self
            .inner
            .workload_specs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&record.lease_id)
            .cloned();
        let (Some(acceptance), Some(funding)) = (&record.acceptance, &record.funding) else {
            return Ok(Vec::new());
        };
        let Some(spec) = spec else {
            return Ok(vec![Input::EndRequested(
                "the workload to run was lost in a restart before the provider had it".to_owned(),
            )]);
        };
        let status = match self
            .call_peer::<MarketLeaseFund>(
                &record.counterparty,
                &FundParams {
                    lease_id: record.lease_id.to_string(),
                    acceptance: acceptance.text(),
                    funding_signature: funding.signature.clone(),
                    workload: spec,
                },
            )
            .await
        {
            Ok(status) => status,
            Err(error) => return Ok(call_failed(&error)),
        };
        if status.state != api::LeaseState::Funded {
            self.inner
                .workload_specs
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&record.lease_id);
        }
        let mut inputs = self.provider_answer(record, ProviderSays::from(&status));
        if status.state == api::LeaseState::Expired {
            inputs.push(Input::CounterpartyRefused(format!(
                "the provider let the reservation lapse: {}",
                status.reason.as_deref().unwrap_or("")
            )));
        }
        Ok(inputs)
    }

    async fn fetch_checkpoint(&self, record: &LeaseRecord) -> Result<Vec<Input>, InvokeFailure> {
        match self
            .call_peer::<MarketLeaseStatus>(
                &record.counterparty,
                &StatusParams {
                    lease_id: record.lease_id.to_string(),
                },
            )
            .await
        {
            Ok(status) => Ok(self.provider_answer(record, ProviderSays::from(&status))),
            Err(error) => Ok(call_failed(&error)),
        }
    }

    /// Asks the provider to end the lease; keeps the settlement it signed for the co-signature.
    async fn request_end(&self, record: &LeaseRecord) -> Result<Vec<Input>, InvokeFailure> {
        let end = match self.end_on_provider(record).await {
            Ok(end) => end,
            Err(error) => return Ok(call_failed(&error)),
        };
        if let LeaseEnd::Ended(ended) = &end
            && let Some(settlement) = &ended.settlement
        {
            self.inner
                .settlements
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(record.lease_id.clone(), settlement.as_bytes().to_vec());
        }
        let says = ProviderSays::from(&end);
        let lapsed = says.state == api::LeaseState::Expired;
        let mut inputs = self.provider_answer(record, says);
        if lapsed && record.state == LeaseState::Funded {
            inputs.push(Input::CounterpartyRefused(
                "the provider let the reservation lapse".to_owned(),
            ));
        }
        Ok(inputs)
    }

    /// Asks the provider to end the lease (or for how it ended).
    async fn end_on_provider(&self, record: &LeaseRecord) -> Result<LeaseEnd, InvokeFailure> {
        self.call_peer::<MarketLeaseEnd>(
            &record.counterparty,
            &EndParams {
                lease_id: record.lease_id.to_string(),
            },
        )
        .await
    }

    /// Co-signs the provider's settlement if it pays exactly `release`.
    async fn cosign(
        &self,
        record: &LeaseRecord,
        release: Release,
    ) -> Result<Vec<Input>, InvokeFailure> {
        let Some(escrow) = escrow_of(record)? else {
            return Ok(Vec::new());
        };
        if let Some(fact) = self.settlement_on_chain(&escrow).await? {
            return Ok(vec![Input::Settled(fact)]);
        }
        let held = self
            .inner
            .settlements
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&record.lease_id);
        let text = match held {
            Some(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            None => match self.end_on_provider(record).await {
                Ok(LeaseEnd::Ended(ended)) => match ended.settlement {
                    Some(text) => text,
                    None => return Ok(Vec::new()),
                },
                Ok(LeaseEnd::Lapsed(_)) => return Ok(Vec::new()),
                Err(error) => return Ok(call_failed(&error)),
            },
        };
        let provider = escrow.parties.provider;
        match self
            .cosign_and_send(&escrow, &text, release, &provider)
            .await
        {
            Ok(fact) => {
                tracing::info!(lease = %record.lease_id, to_provider = %fact.to_provider, to_buyer = %fact.to_buyer, "lease settled");
                Ok(vec![Input::Settled(fact)])
            }
            Err(refused) if refused.code == ErrorCode::Conflict => {
                Ok(vec![Input::CounterpartyRefused(refused.message)])
            }
            Err(other) => Err(other),
        }
    }

    async fn approve(
        &self,
        record: &LeaseRecord,
        allowance: Molt,
    ) -> Result<Vec<Input>, InvokeFailure> {
        // Granted only to a lease still running as stored now: an allowance must never outlive
        // the lease's revocation.
        let current = self.load(&record.lease_id).await?;
        if current.is_none_or(|r| !matches!(r.state, LeaseState::Funded | LeaseState::Running)) {
            return Ok(Vec::new());
        }
        let chain = self.chain()?;
        let terms = terms_of(record)?;
        let pulled = record.stream.as_ref().map(|s| s.pulled).unwrap_or_default();
        approve_allowance(
            &chain.client,
            &chain.mint,
            self.wallet()?,
            &address(&terms.provider_wallet)?,
            allowance,
            pulled,
            &record.lease_id,
        )
        .await
        .map_err(chain_failure)?;
        tracing::info!(lease = %record.lease_id, %allowance, %pulled, "stream allowance topped up");
        Ok(Vec::new())
    }

    /// Withdraws the provider's allowance (if it still has one) and reads what was pulled.
    async fn revoke_stream(&self, record: &LeaseRecord) -> Result<Vec<Input>, InvokeFailure> {
        let chain = self.chain()?;
        let wallet = self.wallet()?;
        let provider = address(&terms_of(record)?.provider_wallet)?;
        let account = chain
            .mint
            .read_account(&chain.client, &chain.mint.account_of(&wallet.pubkey()))
            .await
            .map_err(chain_failure)?;
        if account.delegate.is_some_and(|(d, _)| d == provider) {
            revoke(&chain.client, &chain.mint, wallet, &record.lease_id)
                .await
                .map_err(chain_failure)?;
        }
        let reading = self.stream_reading(record).await?;
        Ok(vec![Input::StreamClosed(progress(reading))])
    }

    /// `market.lease.revoke`: withdraws a streaming lease's allowance on chain at once, without
    /// waiting for the provider, and ends the lease: the provider's next pull is refused, and it
    /// signs the final checkpoint (or, gone, is paid what it already pulled).
    pub async fn revoke(&self, params: RevokeParams) -> Result<Lease, InvokeFailure> {
        let lease = lease_id(&params.lease_id)?;
        let record = self
            .load(&lease)
            .await?
            .ok_or_else(|| failure(ErrorCode::NotFound, format!("no lease {lease} here")))?;
        if record.side != Side::Buyer || !record.is_stream() {
            return Err(failure(
                ErrorCode::Conflict,
                format!("lease {lease} is not a streaming lease this node bought"),
            ));
        }
        let record = self
            .drive(
                &lease,
                Input::EndRequested("the allowance was revoked".to_owned()),
            )
            .await?
            .unwrap_or(record);
        Ok(summary(&record, self.arbiter_peer().as_deref()))
    }

    /// `market.lease.cancel`: ends a lease this node bought and settles it: pro rata for the time
    /// served, the rest back; everything back if the workload never started.
    pub async fn cancel(&self, params: CancelParams) -> Result<Lease, InvokeFailure> {
        let lease = lease_id(&params.lease_id)?;
        let record = self
            .load(&lease)
            .await?
            .ok_or_else(|| failure(ErrorCode::NotFound, format!("no lease {lease} here")))?;
        if record.side != Side::Buyer {
            return Err(failure(
                ErrorCode::Conflict,
                format!("lease {lease} was sold by this node; its buyer ends it"),
            ));
        }
        let record = match record.state {
            LeaseState::Funded | LeaseState::Running => {
                self.drive(
                    &lease,
                    Input::EndRequested("cancelled by the buyer".to_owned()),
                )
                .await?
            }
            LeaseState::Accepted => {
                self.drive(
                    &lease,
                    Input::FundingFailed("cancelled by the buyer before funding".to_owned()),
                )
                .await?
            }
            _ => self.drive(&lease, Input::Tick).await?,
        }
        .unwrap_or(record);
        Ok(summary(&record, self.arbiter_peer().as_deref()))
    }

    /// Remembers a settled lease's outcome among the provider's proven facts.
    pub(super) fn learn_outcome(&self, record: &LeaseRecord) {
        let (Some(terms), Some(fact)) = (&record.terms, &record.settlement) else {
            return;
        };
        if record.side != Side::Buyer {
            return;
        }
        let arbitrated = record
            .history
            .iter()
            .any(|(s, _)| *s == LeaseState::Disputed)
            || record
                .release()
                .is_some_and(|r| r.to_provider != fact.to_provider);
        let outcome = if arbitrated {
            ProvenOutcome::Arbitrated
        } else if fact.to_provider.base_units() == 0 {
            ProvenOutcome::Settled(LeaseOutcome::NeverStarted)
        } else {
            ProvenOutcome::Settled(LeaseOutcome::Served)
        };
        self.inner
            .reputation
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .record(terms.signer(), &record.lease_id, outcome);
    }

    /// `market.receipts`: the leases this node served as a provider, with the evidence anyone
    /// can check against the chain: terms, the buyer's acceptance, the funding and the final
    /// checkpoint.
    pub async fn receipts(&self, params: ReceiptsParams) -> Result<ReceiptListing, InvokeFailure> {
        let mut records = self.inner.store.run(crate::store::Store::leases).await?;
        records.reverse();
        let receipts = records
            .iter()
            .filter(|r| r.side == Side::Provider)
            .filter(|r| matches!(r.state, LeaseState::Settled | LeaseState::Refunded))
            .filter_map(|r| {
                Some(LeaseReceipt {
                    lease_id: r.lease_id.to_string(),
                    terms: r.terms.as_ref()?.text(),
                    acceptance: r.acceptance.as_ref()?.text(),
                    checkpoint: r.checkpoint.as_ref()?.text(),
                })
            })
            .take(params.limit.unwrap_or(100).min(1000))
            .collect();
        Ok(ReceiptListing { receipts })
    }

    /// `market.reputation`: the provider's record from facts this node checks itself: its own
    /// leases with the provider, and the provider's receipts whose escrow — derived from terms
    /// the buyer signed too, with this node's arbiter as third key — the chain shows settled.
    /// What is learned is added per lease; nothing replaces it.
    pub async fn reputation(
        &self,
        params: ReputationParams,
    ) -> Result<ProviderReputation, InvokeFailure> {
        let provider: PeerId = params.provider.parse().map_err(|_| {
            failure(
                ErrorCode::InvalidParams,
                format!("{:?} is not a peer id", params.provider),
            )
        })?;
        let key = claw_attestation::ed25519_key_of(&provider)
            .ok_or_else(|| failure(ErrorCode::InvalidParams, "not an Ed25519 peer id"))?;
        for record in self.inner.store.run(crate::store::Store::leases).await? {
            self.learn_outcome(&record);
        }
        let arbiter = self.arbiter()?;
        let shown = self
            .call_peer::<MarketReceipts>(&params.provider, &ReceiptsParams { limit: Some(100) })
            .await?;
        let (mut proven, mut unproven) = (0u32, 0u32);
        for item in shown.receipts.iter().take(100) {
            match self.prove_receipt(&provider, &arbiter, item).await {
                Some((lease, outcome)) => {
                    proven += 1;
                    self.inner
                        .reputation
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .record(key, &lease, outcome);
                }
                None => unproven += 1,
            }
        }
        let reputation = self
            .inner
            .reputation
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .of(&key);
        Ok(ProviderReputation {
            provider: params.provider,
            score: reputation.score(),
            served: reputation.served,
            never_started: reputation.never_started,
            disputed: reputation.disputed,
            receipts_proven_on_chain: proven,
            receipts_not_proven: unproven,
        })
    }

    /// One receipt's outcome, if the chain proves it: both signatures, the trusted arbiter, the
    /// derived escrow settled, and the split the final checkpoint asks for (else arbitrated).
    async fn prove_receipt(
        &self,
        provider: &PeerId,
        arbiter: &str,
        item: &LeaseReceipt,
    ) -> Option<(LeaseId, ProvenOutcome)> {
        let terms = self.open_signed_kept::<LeaseTerms>(&item.terms, provider)?;
        let buyer: PeerId = terms.payload().buyer_peer.parse().ok()?;
        let acceptance = self.open_signed_kept::<LeaseAcceptance>(&item.acceptance, &buyer)?;
        let checkpoint = self.open_signed_kept::<UsageCheckpoint>(&item.checkpoint, provider)?;
        terms.check_lease_id().ok()?;
        acceptance
            .check_against(&terms, self.policy().clock_slack_ms)
            .ok()?;
        if terms.payload().arbiter_wallet != arbiter
            || checkpoint.payload().terms_digest != terms.digest()
        {
            return None;
        }
        let escrow = Escrow::of(terms.payload()).ok()??;
        let fact = self.settlement_on_chain(&escrow).await.ok()??;
        let asked = pro_rata(
            terms.payload().amount,
            checkpoint.payload().served_secs,
            terms.payload().total_secs(),
        );
        let outcome =
            if checkpoint.payload().ended.is_none() || asked.to_provider != fact.to_provider {
                ProvenOutcome::Arbitrated
            } else if fact.to_provider.base_units() == 0 {
                ProvenOutcome::Settled(LeaseOutcome::NeverStarted)
            } else {
                ProvenOutcome::Settled(LeaseOutcome::Served)
            };
        Some((terms.payload().lease_id.clone(), outcome))
    }

    /// Opens evidence kept past its own validity (a settled lease's terms may have expired).
    fn open_signed_kept<T: claw_attestation::SignedPayload>(
        &self,
        text: &str,
        signer: &PeerId,
    ) -> Option<Signed<T>> {
        let bytes = super::decode_blob("evidence", text).ok()?;
        let verified = self.inner.verifier.verify_ignoring_time(&bytes).ok()?;
        let signed = Signed::<T>::from_verified(&verified).ok()?;
        (signed.signer_peer() == Some(*signer)).then_some(signed)
    }
}

/// `market.bid`'s answer for a match, before its offer and lease are filled in.
fn matched_only() -> BidOutcome {
    BidOutcome {
        matched: true,
        explanation: None,
        considered: None,
        reasons: None,
        nearest: None,
        offer: None,
        leased: None,
        lease: None,
        phases_ms: None,
    }
}

/// `market.bid`'s answer when nothing matched: why, per constraint, with the nearest offers.
fn unmatched(why: &NoMatch) -> BidOutcome {
    let nearest = why
        .nearest
        .iter()
        .map(|(entry, failed)| NearOffer {
            provider: claw_attestation::SignerKey(entry.provider)
                .peer_id()
                .map(|p| p.to_string()),
            gpu_model: entry.offer.gpu_model.clone(),
            gpus: entry.offer.gpus,
            price_per_gpu_hour: entry.offer.price_per_gpu_hour.to_string(),
            simulated: entry.offer.simulated,
            fails: failed.iter().map(ToString::to_string).collect(),
        })
        .collect();
    let reasons = why
        .reasons
        .iter()
        .map(|(constraint, count, text)| NoMatchReason {
            constraint: constraint.to_string(),
            offers: *count,
            why: text.clone(),
        })
        .collect();
    BidOutcome {
        matched: false,
        explanation: Some(why.to_string()),
        considered: Some(why.considered),
        reasons: Some(reasons),
        nearest: Some(nearest),
        offer: None,
        leased: None,
        lease: None,
        phases_ms: None,
    }
}
