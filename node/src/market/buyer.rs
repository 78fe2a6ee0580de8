//! The buyer's side: `market.bid` (match, budget, lease, fund, run — or say why not),
//! `market.lease.cancel`, settling completed leases, and reputation from providers' receipts.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use claw_market::Molt;
use claw_market::lease::{LeaseOutcome, LeaseReceipt, LeaseState, Payment, Reputation};
use claw_market::order::Bid;
use claw_market::settlement::{SettlementError, approve_stream, open_escrow_at, revoke};
use claw_mesh::{ErrorCode, InvokeFailure, InvokeRequest, PeerId, TopicKind};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use solana_keypair::Keypair;
use solana_signer::Signer as _;

use super::provider::check_terms;
use super::{
    LEASE_CALL_DEADLINE, LeaseRecord, Market, Side, chain_failure, decode_blob, failure, now_ms,
    open_signed,
};
use crate::workloads::spec::RunParams;

/// What the buyer runs on leased GPUs.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseWorkload {
    /// Image reference; the provider must have it or be able to pull it.
    pub image: String,
    /// Command and arguments.
    #[serde(default)]
    pub command: Vec<String>,
    /// Environment variables; passed to the container, never stored.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// CPU limit in cores.
    #[serde(default)]
    pub cpus: Option<f64>,
    /// Memory limit in MiB.
    #[serde(default)]
    pub memory_mib: Option<u64>,
}

impl LeaseWorkload {
    pub(super) fn into_run_params(self) -> RunParams {
        RunParams {
            image: self.image,
            command: self.command,
            name: None,
            env: self.env,
            ports: Vec::new(),
            volumes: Vec::new(),
            gpus: None,
            gpu_uuids: None,
            cpus: self.cpus,
            memory_mib: self.memory_mib,
            restart: Default::default(),
            labels: BTreeMap::new(),
        }
    }
}

/// `market.bid`: what the buyer wants, what it pays at most, and what to run.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BidParams {
    /// Acceptable GPU models (any of them), as NVML names them.
    pub models: Vec<String>,
    /// GPUs wanted, on one node.
    pub gpus: u32,
    /// Lease length, hours.
    pub hours: u32,
    /// Highest price per GPU-hour, MOLT (e.g. `1.5`).
    pub max_price: String,
    /// Minimum memory per GPU, MiB.
    #[serde(default)]
    pub min_vram_mib: u64,
    /// Only offers from this region.
    #[serde(default)]
    pub region: Option<String>,
    /// Only offers backed by real, NVML-attested GPUs.
    #[serde(default)]
    pub attested_only: bool,
    /// Minimum provider reputation, 0 to 100.
    #[serde(default)]
    pub min_reputation: u32,
    /// Whether simulated GPUs are acceptable. Default no.
    #[serde(default)]
    pub accept_simulated: bool,
    /// What to run once the escrow is funded. Without it, the bid only matches and explains
    /// (nothing is signed or paid).
    #[serde(default)]
    pub workload: Option<LeaseWorkload>,
    /// How to pay: `escrow` (default: the whole amount locked, released pro rata at the end) or
    /// `stream` (the provider pulls as it serves, up to the amount; one stream per wallet).
    #[serde(default)]
    pub payment: PaymentChoice,
}

/// How a bid pays.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PaymentChoice {
    /// A 2-of-3 escrow.
    #[default]
    Escrow,
    /// A delegate allowance the provider pulls from.
    Stream,
}

/// `market.lease.revoke`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeParams {
    /// The streaming lease.
    pub lease_id: String,
}

/// `market.lease.cancel`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelParams {
    /// The lease.
    pub lease_id: String,
}

/// `market.reputation`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReputationParams {
    /// The provider's peer id.
    pub provider: String,
}

/// `market.receipts`.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReceiptsParams {
    /// At most this many, newest first (default 100).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// Milliseconds since `since`, to the microsecond.
fn elapsed_ms(since: Instant) -> f64 {
    (since.elapsed().as_secs_f64() * 1_000_000.0).round() / 1000.0
}

impl Market {
    /// Invokes a lease step on the provider.
    pub(super) async fn call_peer(
        &self,
        provider: &str,
        command: &str,
        params: Value,
    ) -> Result<Value, InvokeFailure> {
        let peer: PeerId = provider.parse().map_err(|_| {
            failure(
                ErrorCode::Internal,
                format!("{provider:?} is not a peer id"),
            )
        })?;
        let request = InvokeRequest::new(command, LEASE_CALL_DEADLINE).with_params(params);
        self.mesh()?
            .invoke(peer, request)
            .await
            .map_err(|e| InvokeFailure::new(e.code, format!("provider {provider}: {}", e.message)))
    }

    /// MOLT committed to leases this node bought in the last 24 hours.
    async fn spent_today(&self) -> Result<Molt, InvokeFailure> {
        let since = now_ms().saturating_sub(86_400_000);
        let records = self.on_store(crate::store::Store::leases).await?;
        Ok(records
            .iter()
            .filter(|r| r.side == Side::Buyer && r.created_ms >= since)
            .filter(|r| !matches!(r.state, LeaseState::Expired | LeaseState::Refunded))
            .filter_map(|r| r.terms.as_ref().map(|t| t.amount))
            .fold(Molt::default(), |sum, a| sum.checked_add(a).unwrap_or(sum)))
    }

    /// `market.bid`: matches against the book; without a match, says why per constraint with
    /// the nearest offers. With a match and a workload: checks the budget (before anything is
    /// signed), signs the bid, asks the provider for the lease, checks its terms, funds the
    /// escrow, and has the provider start the workload. Each phase is timed.
    pub async fn bid(
        &self,
        params: BidParams,
        progress_key: Option<&str>,
    ) -> Result<Value, InvokeFailure> {
        let started = Instant::now();
        let progress = self.inner.workloads.progress().track(progress_key);
        let max_price: Molt = params
            .max_price
            .parse()
            .map_err(|e| failure(ErrorCode::InvalidParams, format!("max_price: {e}")))?;
        let wallet = self.wallet()?.pubkey();
        let bid = Bid {
            models: params.models.clone(),
            gpus: params.gpus,
            min_vram_mib: params.min_vram_mib,
            region: params.region.clone(),
            attested_only: params.attested_only,
            min_reputation: params.min_reputation,
            max_price_per_gpu_hour: max_price,
            hours: params.hours,
            wallet: wallet.to_string(),
            accept_simulated: params.accept_simulated,
        };
        bid.validate()
            .map_err(|e| failure(ErrorCode::InvalidParams, e.to_string()))?;
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
            Err(why) => {
                let nearest: Vec<Value> = why
                    .nearest
                    .iter()
                    .map(|(entry, failed)| {
                        json!({
                            "provider": claw_attestation::SignerKey(entry.provider).peer_id().map(|p| p.to_string()),
                            "gpu_model": entry.offer.gpu_model,
                            "gpus": entry.offer.gpus,
                            "price_per_gpu_hour": entry.offer.price_per_gpu_hour.to_string(),
                            "simulated": entry.offer.simulated,
                            "fails": failed.iter().map(ToString::to_string).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                let reasons: Vec<Value> = why
                    .reasons
                    .iter()
                    .map(|(constraint, count, text)| json!({"constraint": constraint.to_string(), "offers": count, "why": text}))
                    .collect();
                return Ok(json!({
                    "matched": false,
                    "explanation": why.to_string(),
                    "considered": why.considered,
                    "reasons": reasons,
                    "nearest": nearest,
                }));
            }
        };
        let match_ms = elapsed_ms(started);
        let provider = claw_attestation::SignerKey(matched.entry.provider)
            .peer_id()
            .ok_or_else(|| failure(ErrorCode::Internal, "offer signer is not a peer"))?;
        let offer_json = json!({
            "provider": provider.to_string(),
            "offer_id": matched.entry.offer.offer_id,
            "gpu_model": matched.entry.offer.gpu_model,
            "price_per_gpu_hour": matched.entry.offer.price_per_gpu_hour.to_string(),
            "simulated": matched.entry.offer.simulated,
            "total": matched.total.to_string(),
        });
        let Some(workload) = params.workload else {
            return Ok(json!({ "matched": true, "offer": offer_json, "leased": false }));
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
            let records = self.on_store(crate::store::Store::leases).await?;
            if let Some(open) = records
                .iter()
                .find(|r| r.side == Side::Buyer && r.is_stream() && r.state.holds_gpus())
            {
                return Err(failure(
                    ErrorCode::Conflict,
                    format!(
                        "lease {} already streams from this wallet (a token account has one delegate); end it first",
                        open.lease_id
                    ),
                ));
            }
        }

        progress.stage(format!("requesting the lease from {provider}"));
        let phase = Instant::now();
        let bid_ttl = Duration::from_secs(300);
        let bid_envelope = self.sign(bid_ttl, bid.clone()).await?;
        let bid_bytes = decode_blob("bid", &bid_envelope)?;
        if let Err(error) = self
            .mesh()?
            .publish(TopicKind::Bids, bid_bytes.clone())
            .await
        {
            tracing::debug!(%error, "bid not gossiped");
        }
        let bid_digest = claw_attestation::Envelope::from_bytes(&bid_bytes)
            .map_err(|e| failure(ErrorCode::Internal, e.to_string()))?
            .digest();
        let answer = self
            .call_peer(
                &provider.to_string(),
                "market.lease.request",
                json!({ "bid": bid_envelope, "offer_id": matched.entry.offer.offer_id, "stream": stream }),
            )
            .await?;
        let terms_text = answer["terms"]
            .as_str()
            .ok_or_else(|| failure(ErrorCode::Internal, "the provider answered without terms"))?;
        let terms = check_terms(&self.inner.verifier, terms_text, &provider)?;
        let refuse = |m: String| Err(failure(ErrorCode::Conflict, format!("terms refused: {m}")));
        if terms.bid_digest != bid_digest || terms.buyer_peer != self.local_peer().to_string() {
            return refuse("they are for another bid".to_owned());
        }
        if terms.buyer_wallet != wallet.to_string() || terms.arbiter_wallet != arbiter {
            return refuse(format!(
                "wallet or arbiter differ (arbiter {})",
                terms.arbiter_wallet
            ));
        }
        if terms.provider_wallet != matched.entry.offer.wallet
            || terms.price_per_gpu_hour > max_price
            || terms.gpus.len() != params.gpus as usize
            || terms.hours != params.hours
        {
            return refuse("price, GPUs or hours are not what was bid".to_owned());
        }
        if matches!(terms.payment, Payment::Stream { .. }) != stream {
            return refuse("the payment mode is not the one asked for".to_owned());
        }
        budget.allows(terms.amount, spent).map_err(|e| {
            failure(
                ErrorCode::Unauthorized,
                format!("over budget, nothing was paid: {e}"),
            )
        })?;
        let _busy = self.busy(&terms.lease_id);
        let mut record =
            LeaseRecord::new(terms.lease_id.clone(), Side::Buyer, provider.to_string());
        record.gpus = terms.gpus.clone();
        record.terms = Some(terms.clone());
        record.terms_envelope = Some(terms_text.to_owned());
        record.advance(LeaseState::Accepted)?;
        // Where the money goes is recorded before it is sent, so a crash can find it.
        let (multisig, vault) = (Keypair::new(), Keypair::new());
        if !stream {
            record.multisig = Some(multisig.pubkey().to_string());
            record.vault = Some(vault.pubkey().to_string());
        }
        self.save(&record).await?;
        let request_ms = elapsed_ms(phase);

        let phase = Instant::now();
        let chain = self.chain()?;
        let landed = if stream {
            progress.stage(format!(
                "allowing the provider to pull up to {} MOLT",
                terms.amount
            ));
            let provider_wallet = super::address(&terms.provider_wallet)?;
            approve_stream(
                &chain.client,
                &chain.mint,
                self.wallet()?,
                &provider_wallet,
                terms.amount,
                &terms.lease_id,
            )
            .await
        } else {
            progress.stage(format!("funding the escrow ({} MOLT)", terms.amount));
            let escrow = record.escrow()?;
            open_escrow_at(
                &chain.client,
                &chain.mint,
                self.wallet()?,
                escrow.terms.clone(),
                &multisig,
                &vault,
            )
            .await
            .map(|(_, landed)| landed)
        };
        let landed = match landed {
            Ok(landed) => landed,
            Err(e) => {
                tracing::warn!(lease = %record.lease_id, error = %e, "lease not funded");
                let error = failure(chain_failure_code(&e), format!("funding the lease: {e}"));
                record.reason = Some(error.message.clone());
                self.end_at_provider(&record).await;
                record.advance(LeaseState::Expired)?;
                self.save(&record).await?;
                return Err(error);
            }
        };
        record.funding_signature = Some(landed.signature.to_string());
        record.advance(LeaseState::Funded)?;
        self.save(&record).await?;
        let fund_ms = elapsed_ms(phase);

        progress.stage("starting the workload on the provider");
        let phase = Instant::now();
        let answer = self
            .call_peer(
                &provider.to_string(),
                "market.lease.fund",
                json!({
                    "lease_id": record.lease_id,
                    "multisig": record.multisig,
                    "vault": record.vault,
                    "workload": workload,
                }),
            )
            .await?;
        let start_ms = elapsed_ms(phase);
        match answer["state"].as_str() {
            Some("running") => {
                record.workload_id = answer["workload_id"].as_str().map(str::to_owned);
                record.started_ms = answer["started_ms"].as_u64();
                record.advance(LeaseState::Running)?;
                self.save(&record).await?;
            }
            _ => {
                record.reason = answer["reason"].as_str().map(str::to_owned);
                self.save(&record).await?;
                progress.stage("the provider did not start the workload: refunding");
                self.settle(&mut record).await?;
            }
        }
        tracing::info!(lease = %record.lease_id, state = %record.state, "bid done");
        Ok(json!({
            "matched": true,
            "leased": true,
            "offer": offer_json,
            "lease": record.summary(),
            "phases_ms": {
                "match": match_ms,
                "lease_request": request_ms,
                "escrow_funding": fund_ms,
                "workload_start": start_ms,
                "total": elapsed_ms(started),
            },
        }))
    }

    /// Collects the provider's receipt and settlement for a lease, checks both, co-signs and
    /// sends it, unless it is on chain already.
    async fn settle(&self, record: &mut LeaseRecord) -> Result<(), InvokeFailure> {
        let answer = match self
            .call_peer(
                &record.counterparty,
                "market.lease.end",
                json!({ "lease_id": record.lease_id }),
            )
            .await
        {
            Ok(answer) => answer,
            Err(error)
                if matches!(error.code, ErrorCode::Unavailable | ErrorCode::Timeout)
                    && !record.is_stream()
                    && record.vault.is_some()
                    && matches!(
                        record.state,
                        LeaseState::Funded | LeaseState::Running | LeaseState::Completed
                    )
                    && self.inner.dir.config().market.arbiter_peer.is_some() =>
            {
                return self.settle_without_provider(record, error).await;
            }
            Err(error) => return Err(error),
        };
        let provider: PeerId = record
            .counterparty
            .parse()
            .map_err(|_| failure(ErrorCode::Internal, "counterparty is not a peer id"))?;
        let terms = record
            .terms
            .clone()
            .ok_or_else(|| failure(ErrorCode::Internal, "lease without terms"))?;
        let Some(receipt_text) = answer["receipt"].as_str() else {
            record.reason = Some("the provider ended the lease before it was funded".to_owned());
            record.advance(LeaseState::Expired)?;
            self.save(record).await?;
            return Ok(());
        };
        let (receipt, _) =
            open_signed::<LeaseReceipt>(&self.inner.verifier, "receipt", receipt_text, &provider)?;
        let funded_at = record
            .history
            .iter()
            .find(|(s, _)| *s == LeaseState::Funded)
            .map_or(record.created_ms, |(_, at)| *at);
        let plausible = receipt.served_secs <= now_ms().saturating_sub(funded_at) / 1000 + 5;
        if let Err(error) = receipt
            .check(&terms)
            .map_err(|e| e.to_string())
            .and_then(|()| {
                if plausible {
                    Ok(())
                } else {
                    Err("more time served than has passed since funding".to_owned())
                }
            })
        {
            record.reason = Some(format!("receipt disputed: {error}"));
            record.advance(LeaseState::Disputed)?;
            self.save(record).await?;
            return Err(failure(
                ErrorCode::Conflict,
                format!("lease {}: {error}", record.lease_id),
            ));
        }
        record.receipt = Some(receipt.clone());
        record.receipt_envelope = Some(receipt_text.to_owned());
        record.advance(LeaseState::Completed)?;
        self.save(record).await?;
        if record.is_stream() {
            // Nothing to settle: the provider pulled as it served. Withdraw what is left of the
            // allowance so that nothing more can be pulled.
            self.revoke_allowance(record).await?;
            record.advance(final_state(receipt.outcome))?;
            self.save(record).await?;
            self.remember_outcome(&provider, record.state, Some(receipt.outcome));
            tracing::info!(lease = %record.lease_id, pulled = %receipt.to_provider, "streaming lease ended");
            return Ok(());
        }
        let escrow = record.escrow()?;
        let chain = self.chain()?;
        let settled = match escrow
            .find_settlement(&chain.client)
            .await
            .map_err(chain_failure)?
        {
            Some(signature) => signature,
            None => {
                let Some(wire) = answer["settlement"].as_str() else {
                    return Err(failure(
                        ErrorCode::Internal,
                        "the provider sent no settlement",
                    ));
                };
                let wire = decode_blob("settlement", wire)?;
                self.cosign_and_send(&escrow, &wire, receipt.release(), &escrow.terms.provider)
                    .await?
            }
        };
        record.settlement_signature = Some(settled.to_string());
        record.advance(final_state(receipt.outcome))?;
        self.save(record).await?;
        self.remember_outcome(&provider, record.state, Some(receipt.outcome));
        tracing::info!(lease = %record.lease_id, state = %record.state, to_provider = %receipt.to_provider, to_buyer = %receipt.to_buyer, "lease settled");
        Ok(())
    }

    /// The provider does not answer: the arbiter rules, on the receipt this node holds if the
    /// lease ended, else by asking the provider itself.
    async fn settle_without_provider(
        &self,
        record: &mut LeaseRecord,
        unanswered: InvokeFailure,
    ) -> Result<(), InvokeFailure> {
        let expected = record.receipt.as_ref().map(LeaseReceipt::release);
        let signature = self
            .settle_with_arbiter(record, expected)
            .await
            .map_err(|e| {
                failure(
                    e.code,
                    format!(
                        "the provider does not answer ({}); the arbiter: {}",
                        unanswered.message, e.message
                    ),
                )
            })?;
        let refunded = expected.is_none_or(|r| r.to_provider == Molt::default());
        record.settlement_signature = Some(signature);
        record.reason = Some("settled with the arbiter: the provider did not answer".to_owned());
        record.advance(LeaseState::Disputed)?;
        record.advance(if refunded {
            LeaseState::Refunded
        } else {
            LeaseState::Settled
        })?;
        self.save(record).await?;
        tracing::info!(lease = %record.lease_id, state = %record.state, "lease settled with the arbiter");
        Ok(())
    }

    fn remember_outcome(
        &self,
        provider: &PeerId,
        state: LeaseState,
        outcome: Option<LeaseOutcome>,
    ) {
        let Some(key) = claw_attestation::ed25519_key_of(provider) else {
            return;
        };
        let mut known = self
            .inner
            .reputation
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        known.entry(key).or_default().record(state, outcome);
    }

    /// Withdraws the provider's remaining allowance on this node's MOLT account, if it still has
    /// one.
    async fn revoke_allowance(&self, record: &mut LeaseRecord) -> Result<(), InvokeFailure> {
        let chain = self.chain()?;
        let wallet = self.wallet()?;
        let Some(terms) = &record.terms else {
            return Ok(());
        };
        let provider_wallet = super::address(&terms.provider_wallet)?;
        let account = chain
            .mint
            .read_account(&chain.client, &chain.mint.account_of(&wallet.pubkey()))
            .await
            .map_err(chain_failure)?;
        if account.delegate.is_some_and(|(d, _)| d == provider_wallet) {
            let landed = revoke(&chain.client, &chain.mint, wallet, &record.lease_id)
                .await
                .map_err(chain_failure)?;
            record.settlement_signature = Some(landed.signature.to_string());
        }
        Ok(())
    }

    /// `market.lease.revoke`: withdraws a streaming lease's allowance on chain at once, without
    /// asking the provider; its next pull is refused and it stops the workload.
    pub async fn revoke(&self, params: RevokeParams) -> Result<Value, InvokeFailure> {
        let _step = self.inner.steps.lock().await;
        let mut record = self.load(&params.lease_id).await?;
        if record.side != Side::Buyer || !record.is_stream() {
            return Err(failure(
                ErrorCode::Conflict,
                format!(
                    "lease {} is not a streaming lease this node bought",
                    record.lease_id
                ),
            ));
        }
        self.revoke_allowance(&mut record).await?;
        record.reason = Some("the allowance was revoked".to_owned());
        self.save(&record).await?;
        Ok(record.summary())
    }

    /// `market.lease.cancel`: ends a lease this node bought and settles it: pro rata for the time
    /// served, the rest back; everything back if the workload never started.
    pub async fn cancel(&self, params: CancelParams) -> Result<Value, InvokeFailure> {
        let _step = self.inner.steps.lock().await;
        let mut record = self.load(&params.lease_id).await?;
        if record.side != Side::Buyer {
            return Err(failure(
                ErrorCode::Conflict,
                format!(
                    "lease {} was sold by this node; its buyer ends it",
                    record.lease_id
                ),
            ));
        }
        if record.state.is_open() && record.state != LeaseState::Disputed {
            self.settle(&mut record).await?;
        }
        Ok(record.summary())
    }

    /// Tells the provider that `record`'s lease is over. Best effort: an unfunded or unstarted
    /// lease also lapses on the provider by itself.
    async fn end_at_provider(&self, record: &LeaseRecord) {
        let _ = self
            .call_peer(
                &record.counterparty,
                "market.lease.end",
                json!({"lease_id": record.lease_id}),
            )
            .await;
    }

    /// Where the provider says `record`'s lease is.
    async fn provider_status(&self, record: &LeaseRecord) -> Result<Value, InvokeFailure> {
        self.call_peer(
            &record.counterparty,
            "market.lease.status",
            json!({"lease_id": record.lease_id}),
        )
        .await
    }

    /// Buyer upkeep: follows running leases on their provider and settles those that ended.
    pub(super) async fn buyer_tick(&self) -> Result<(), InvokeFailure> {
        let records = self.on_store(crate::store::Store::leases).await?;
        for record in records
            .into_iter()
            .filter(|r| r.side == Side::Buyer && r.state.is_open())
            .filter(|r| !self.is_busy(&r.lease_id))
        {
            let _step = self.inner.steps.lock().await;
            let mut record = self.load(&record.lease_id).await?;
            match record.state {
                LeaseState::Running => {
                    let status = self.provider_status(&record).await;
                    if let Ok(status) = status
                        && matches!(
                            status["state"].as_str(),
                            Some("completed" | "settled" | "refunded")
                        )
                        && let Err(error) = self.settle(&mut record).await
                    {
                        tracing::warn!(lease = %record.lease_id, %error, "settlement not done yet");
                    }
                }
                // Funded, and the provider may have started the workload before this node
                // heard of it: follow it rather than end it.
                LeaseState::Funded => {
                    let status = self.provider_status(&record).await;
                    match status {
                        Ok(status) if status["state"] == "running" => {
                            record.workload_id = status["workload_id"].as_str().map(str::to_owned);
                            record.started_ms = status["started_ms"].as_u64();
                            record.advance(LeaseState::Running)?;
                            self.save(&record).await?;
                        }
                        // Not started, or the provider does not answer: end it, with the
                        // arbiter when the provider is gone.
                        _ => {
                            if let Err(error) = self.settle(&mut record).await {
                                tracing::warn!(lease = %record.lease_id, %error, "settlement not done yet");
                            }
                        }
                    }
                }
                // Completed but not yet settled: the provider's end step answers with the
                // receipt and the settlement.
                LeaseState::Completed => {
                    if let Err(error) = self.settle(&mut record).await {
                        tracing::warn!(lease = %record.lease_id, %error, "settlement not done yet");
                    }
                }
                // A stream approved just before a crash, never started: end it and withdraw
                // the allowance.
                LeaseState::Accepted
                    if record.is_stream() && now_ms() > record.created_ms + 60_000 =>
                {
                    self.end_at_provider(&record).await;
                    self.revoke_allowance(&mut record).await?;
                    record.reason = Some("the stream was never started".to_owned());
                    record.advance(LeaseState::Expired)?;
                    self.save(&record).await?;
                }
                LeaseState::Accepted if record.is_stream() => {}
                // The escrow may have landed before a crash: look for it.
                LeaseState::Accepted => {
                    let escrow = record.escrow()?;
                    let chain = self.chain()?;
                    match escrow.verify_funded(&chain.client, &chain.mint).await {
                        Ok(()) => {
                            record.advance(LeaseState::Funded)?;
                            self.save(&record).await?;
                        }
                        Err(SettlementError::AccountMissing(_))
                            if now_ms() > record.created_ms + 60_000 =>
                        {
                            self.end_at_provider(&record).await;
                            record.reason = Some("the escrow was never funded".to_owned());
                            record.advance(LeaseState::Expired)?;
                            self.save(&record).await?;
                        }
                        Err(_) => {}
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// `market.receipts`: the receipts this node signed as a provider, newest first, for anyone
    /// to check against the chain.
    pub async fn receipts(&self, params: ReceiptsParams) -> Result<Value, InvokeFailure> {
        let mut records = self.on_store(crate::store::Store::leases).await?;
        records.reverse();
        let receipts: Vec<Value> = records
            .iter()
            .filter(|r| r.side == Side::Provider)
            .filter_map(|r| {
                Some(json!({
                    "lease_id": r.lease_id,
                    "state": r.state,
                    "terms": r.terms_envelope.clone()?,
                    "receipt": r.receipt_envelope.clone()?,
                }))
            })
            .take(params.limit.unwrap_or(100).min(1000))
            .collect();
        Ok(json!({ "receipts": receipts }))
    }

    /// `market.reputation`: fetches the provider's receipts, keeps those it signed whose
    /// settlement is found on chain (by the lease's memo in the escrow vault's history), and
    /// scores them. Nothing the provider says about itself counts unless the chain agrees.
    pub async fn reputation(&self, params: ReputationParams) -> Result<Value, InvokeFailure> {
        let provider: PeerId = params.provider.parse().map_err(|_| {
            failure(
                ErrorCode::InvalidParams,
                format!("{:?} is not a peer id", params.provider),
            )
        })?;
        let answer = self
            .call_peer(&params.provider, "market.receipts", json!({ "limit": 100 }))
            .await?;
        let chain = self.chain()?;
        let mut reputation = Reputation::default();
        let (mut checked, mut unproven) = (0u32, 0u32);
        for item in answer["receipts"]
            .as_array()
            .into_iter()
            .flatten()
            .take(100)
        {
            let (Some(terms_text), Some(receipt_text)) =
                (item["terms"].as_str(), item["receipt"].as_str())
            else {
                continue;
            };
            let Ok(terms) = check_terms(&self.inner.verifier, terms_text, &provider) else {
                unproven += 1;
                continue;
            };
            let Ok((receipt, _)) = open_signed::<LeaseReceipt>(
                &self.inner.verifier,
                "receipt",
                receipt_text,
                &provider,
            ) else {
                unproven += 1;
                continue;
            };
            if receipt.check(&terms).is_err() {
                unproven += 1;
                continue;
            }
            let Ok(vault) = receipt.vault.parse() else {
                unproven += 1;
                continue;
            };
            let memo = format!("clawbernetes lease {} settle", receipt.lease_id);
            match chain.client.find_memo(&vault, &memo).await {
                Ok(Some(_)) => {
                    checked += 1;
                    let state = if receipt.outcome == LeaseOutcome::NeverStarted {
                        LeaseState::Refunded
                    } else {
                        LeaseState::Settled
                    };
                    reputation.record(state, Some(receipt.outcome));
                }
                _ => unproven += 1,
            }
        }
        if let Some(key) = claw_attestation::ed25519_key_of(&provider) {
            self.inner
                .reputation
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(key, reputation);
        }
        Ok(json!({
            "provider": params.provider,
            "score": reputation.score(),
            "served": reputation.served,
            "never_started": reputation.never_started,
            "disputed": reputation.disputed,
            "receipts_checked_on_chain": checked,
            "receipts_not_proven": unproven,
        }))
    }
}

/// Where a lease ends up once its money has moved: refunded if it never started, else settled.
pub(super) fn final_state(outcome: LeaseOutcome) -> LeaseState {
    match outcome {
        LeaseOutcome::NeverStarted => LeaseState::Refunded,
        LeaseOutcome::Served => LeaseState::Settled,
    }
}

fn chain_failure_code(error: &SettlementError) -> ErrorCode {
    match error {
        SettlementError::InsufficientFunds(_) => ErrorCode::Conflict,
        SettlementError::RpcUnreachable { .. } | SettlementError::BlockhashExpired(_) => {
            ErrorCode::Unavailable
        }
        _ => ErrorCode::Internal,
    }
}
