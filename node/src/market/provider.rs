//! The provider's side: publishing offers for free GPUs, and answering the buyer's lease steps
//! (`market.lease.request`, `.fund`, `.end`, `.status`).

use std::collections::BTreeMap;
use std::time::Duration;

use claw_market::Molt;
use claw_market::book::{BookEntry, OrderBook};
use claw_market::lease::{LeaseOutcome, LeaseReceipt, LeaseState, LeaseTerms, Payment};
use claw_market::order::{Bid, Offer};
use claw_market::settlement::{amount_due, pro_rata, pull};
use claw_mesh::{ErrorCode, InvokeFailure, PeerId, TopicKind};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use solana_signer::Signer as _;

use super::buyer::LeaseWorkload;
use super::{
    LEASE_PROOF_SLACK, LeaseRecord, Market, Published, Side, address, chain_failure, decode_blob,
    failure, now_ms, open_signed,
};
use crate::store::AdmitError;
use crate::workloads::spec::StopParams;

/// `market.lease.request`: a buyer asks for a lease on one of this node's offers.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseRequestParams {
    /// The buyer's signed bid envelope, base-64; its signer must be the caller.
    pub bid: String,
    /// The offer the bid matched.
    pub offer_id: u64,
    /// Pay by streaming (the provider pulls as it serves) instead of an escrow.
    #[serde(default)]
    pub stream: bool,
}

/// `market.lease.fund`: the buyer says the escrow is funded and hands over its workload.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FundParams {
    /// The lease.
    pub lease_id: String,
    /// The escrow's 2-of-3 multisig address (escrow leases).
    #[serde(default)]
    pub multisig: Option<String>,
    /// The escrow's token account (escrow leases).
    #[serde(default)]
    pub vault: Option<String>,
    /// What to run on the leased GPUs.
    pub workload: LeaseWorkload,
}

/// `market.lease.end`: the buyer ends the lease (or collects the settlement of one that ended).
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EndParams {
    /// The lease.
    pub lease_id: String,
}

/// `market.lease.status`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusParams {
    /// The lease.
    pub lease_id: String,
}

/// `market.sell`: sell this node's free GPUs at a price (or change it), or stop selling.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SellParams {
    /// MOLT per GPU-hour, e.g. "0.95"; not with `stop`.
    #[serde(default)]
    pub price_per_gpu_hour: Option<String>,
    /// Sell nothing: every offer is withdrawn (running leases go on).
    #[serde(default)]
    pub stop: bool,
}

/// A stable offer id per GPU model, so a renewed offer replaces the last one.
fn offer_id_of(model: &str) -> u64 {
    let digest = Sha256::digest(model.as_bytes());
    u64::from_be_bytes(digest[..8].try_into().unwrap_or_default())
}

/// The price per GPU-hour with `taken` of the node's `total` GPUs in use: the base price plus
/// that share of the markup (rounded down).
fn offer_price(base: Molt, markup: Molt, taken: u64, total: u64) -> Molt {
    let share =
        u128::from(markup.base_units()) * u128::from(taken.min(total)) / u128::from(total.max(1));
    let price = u128::from(base.base_units()) + share;
    Molt::from_base_units(u64::try_from(price).unwrap_or(u64::MAX))
}

impl Market {
    /// The lease id for a bid on this provider: the same bid always names the same lease, so
    /// a retried request finds the lease it made.
    fn lease_id_for(&self, bid_digest: &[u8; 32]) -> String {
        let mut hasher = Sha256::new();
        hasher.update(bid_digest);
        hasher.update(self.local_peer().to_bytes());
        format!("ls-{}", &hex::encode(hasher.finalize())[..16])
    }

    /// Publishes an offer per GPU model with the GPUs free now, withdraws offers whose GPUs are
    /// all taken, and renews offers at half their lifetime.
    pub(super) async fn publish_offers(&self) -> Result<(), InvokeFailure> {
        let config = self.inner.dir.config();
        let decided = self.on_store(|store| store.selling()).await?;
        let price = match decided {
            Some(Some(price)) => Some(
                price
                    .parse::<Molt>()
                    .map_err(|e| failure(ErrorCode::Internal, format!("stored price: {e}")))?,
            ),
            Some(None) => None,
            None => config.market.price(),
        };
        let last_price = self
            .inner
            .published
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .map(|p| p.offer.price_per_gpu_hour)
            .next();
        // Not selling: withdraw what was published, or do nothing.
        let (price, selling) = match (price, last_price) {
            (Some(price), _) => (price, true),
            (None, Some(last)) => (last, false),
            (None, None) => return Ok(()),
        };
        self.arbiter()?;
        let wallet = self.wallet()?.pubkey().to_string();
        let (allocated, inventory_digest) = self
            .on_store(|store| {
                let digest = store
                    .latest_inventory()?
                    .map(|bytes| <[u8; 32]>::from(Sha256::digest(bytes)))
                    .unwrap_or_default();
                Ok((store.allocations()?, digest))
            })
            .await?;
        let cordoned = self.on_store(|store| store.cordoned()).await?;
        let mut by_model: BTreeMap<String, (u32, u32, u64, bool)> = BTreeMap::new();
        for gpu in self.inner.probe.devices() {
            let entry = by_model.entry(gpu.model.clone()).or_default();
            entry.1 += 1;
            if selling && !allocated.contains_key(&gpu.uuid) && !cordoned {
                entry.0 += 1;
            }
            entry.2 = gpu.memory_total_bytes / (1024 * 1024);
            entry.3 |= gpu.simulated;
        }
        let now = now_ms();
        let republish_at = self
            .inner
            .republish_at_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        let republish = republish_at != 0 && now >= republish_at;
        if republish {
            self.inner
                .republish_at_ms
                .store(0, std::sync::atomic::Ordering::Relaxed);
        }
        let ttl = Duration::from_secs(config.market.offer_ttl_secs);
        let markup = config.market.markup();
        for (model, (free, total, vram_mib, simulated)) in by_model {
            let taken = u64::from(total.saturating_sub(free));
            let price = offer_price(price, markup, taken, u64::from(total));
            let offer = Offer {
                offer_id: offer_id_of(&model),
                gpu_model: model.clone(),
                gpus: free.max(1),
                vram_mib,
                price_per_gpu_hour: price,
                min_hours: config.market.min_hours,
                max_hours: config.market.max_hours,
                available_from_ms: now,
                available_until_ms: now
                    + u64::from(config.market.max_hours) * 3_600_000
                    + 3_600_000,
                network: config.network.name.clone(),
                region: config.node.region.clone(),
                wallet: wallet.clone(),
                inventory_digest,
                interruptible: config.market.interruptible,
                simulated,
                withdrawn: free == 0,
            };
            let previous = self
                .inner
                .published
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(&model)
                .cloned();
            let same = |p: &Published| {
                p.offer.gpus == offer.gpus
                    && p.offer.withdrawn == offer.withdrawn
                    && p.offer.price_per_gpu_hour == offer.price_per_gpu_hour
            };
            let fresh = |p: &Published| now < p.at_ms + config.market.offer_ttl_secs * 500;
            match &previous {
                Some(p) if same(p) && (p.offer.withdrawn || fresh(p)) && !republish => continue,
                None if offer.withdrawn => continue,
                _ => {}
            }
            offer
                .validate()
                .map_err(|e| failure(ErrorCode::Internal, e.to_string()))?;
            let envelope = self.sign(ttl, offer.clone()).await?;
            let bytes = decode_blob("offer", &envelope)?;
            let verified = self
                .inner
                .verifier
                .verify(&bytes)
                .map_err(|e| failure(ErrorCode::Internal, format!("own offer: {e}")))?;
            self.ingest_offer(&verified);
            match self.mesh()?.publish(TopicKind::Offers, bytes).await {
                Ok(()) | Err(claw_mesh::MeshError::NoPeers) => {}
                Err(error) => return Err(failure(ErrorCode::Unavailable, error.to_string())),
            }
            tracing::info!(model, gpus = offer.gpus, price = %offer.price_per_gpu_hour, withdrawn = offer.withdrawn, "offer published");
            self.inner
                .published
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(
                    model,
                    Published {
                        offer,
                        at_ms: now,
                        envelope,
                    },
                );
        }
        Ok(())
    }

    /// `market.sell`: records the decision (it outlives restarts and overrides the config's
    /// price), publishes or withdraws the offers at once, and answers with them.
    pub async fn sell(&self, params: SellParams) -> Result<Value, InvokeFailure> {
        let price = match (params.price_per_gpu_hour, params.stop) {
            (Some(text), false) => {
                let price: Molt = text.parse().map_err(|e| {
                    failure(
                        ErrorCode::InvalidParams,
                        format!("price_per_gpu_hour {text:?}: {e}"),
                    )
                })?;
                if price.base_units() == 0 {
                    return Err(failure(
                        ErrorCode::InvalidParams,
                        "price_per_gpu_hour must be more than 0",
                    ));
                }
                self.arbiter()?;
                self.wallet()?;
                Some(price.to_string())
            }
            (None, true) => None,
            _ => {
                return Err(failure(
                    ErrorCode::InvalidParams,
                    "give price_per_gpu_hour to sell, or stop: true to stop selling",
                ));
            }
        };
        let selling = price.clone();
        self.on_store(move |store| store.set_selling(selling.as_deref()))
            .await?;
        tracing::info!(
            price = price.as_deref().unwrap_or("none"),
            "selling changed"
        );
        self.publish_offers().await?;
        let offers: Vec<Value> = self
            .inner
            .published
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .map(|p| {
                json!({
                    "gpu_model": p.offer.gpu_model,
                    "gpus": if p.offer.withdrawn { 0 } else { p.offer.gpus },
                    "price_per_gpu_hour": p.offer.price_per_gpu_hour.to_string(),
                    "simulated": p.offer.simulated,
                    "withdrawn": p.offer.withdrawn,
                })
            })
            .collect();
        Ok(json!({
            "selling": price.is_some(),
            "price_per_gpu_hour": price,
            "offers": offers,
        }))
    }

    /// `market.lease.request`: verifies the bid (signed by the caller, unexpired, matching
    /// the offer), reserves the GPUs and answers with signed terms. The same bid always gets
    /// the same lease.
    pub async fn lease_request(
        &self,
        caller: PeerId,
        params: LeaseRequestParams,
    ) -> Result<Value, InvokeFailure> {
        let (bid, verified) =
            open_signed::<Bid>(&self.inner.verifier, "bid", &params.bid, &caller)?;
        bid.validate()
            .map_err(|e| failure(ErrorCode::InvalidParams, e.to_string()))?;
        let bid_digest = verified.envelope().digest();
        let lease_id = self.lease_id_for(&bid_digest);
        let _step = self.inner.steps.lock().await;
        if let Some(existing) = self
            .on_store({
                let id = lease_id.clone();
                move |store| store.lease(&id)
            })
            .await?
            && let Some(terms) = existing.terms_envelope
        {
            return Ok(json!({ "lease_id": lease_id, "terms": terms, "state": existing.state }));
        }
        let arbiter = self.arbiter()?;
        let config = self.inner.dir.config();
        let published = self
            .inner
            .published
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .find(|p| p.offer.offer_id == params.offer_id)
            .cloned();
        let Some(published) = published.filter(|p| !p.offer.withdrawn) else {
            return Err(failure(
                ErrorCode::Conflict,
                format!("offer {} is no longer open on this node", params.offer_id),
            ));
        };
        let offer = published.offer;
        // The bid must match the offer exactly as any peer's matching would decide it.
        let mut book = OrderBook::new(&config.network.name);
        book.insert(BookEntry {
            provider: self.inner.dir.identity().public_key().to_bytes(),
            seq: 1,
            issued_ms: published.at_ms,
            expires_ms: published.at_ms + config.market.offer_ttl_secs * 1000,
            attested: !offer.simulated,
            offer: offer.clone(),
        })
        .map_err(|e| failure(ErrorCode::Internal, e.to_string()))?;
        let matched = book
            .best_match(&bid, now_ms(), &|_| 100)
            .map_err(|why| failure(ErrorCode::Conflict, why.to_string()))?;
        let candidates: Vec<String> = self
            .inner
            .probe
            .devices()
            .into_iter()
            .filter(|d| d.model == offer.gpu_model)
            .map(|d| d.uuid)
            .collect();
        let record = LeaseRecord::new(lease_id.clone(), Side::Provider, caller.to_string());
        let reserved = {
            let record = record.clone();
            let count = bid.gpus as usize;
            let store = self.inner.store.clone();
            tokio::task::spawn_blocking(move || {
                store.reserve_for_lease(&record, count, &candidates)
            })
            .await
            .map_err(|e| failure(ErrorCode::Internal, format!("store task failed: {e}")))?
        };
        let mut record = match reserved {
            Ok(record) => record,
            Err(AdmitError::GpusUnavailable { message, .. }) => {
                self.inner.offers_changed.notify_one();
                return Err(failure(
                    ErrorCode::Conflict,
                    format!(
                        "the GPUs of offer {} were taken by another lease ({message})",
                        offer.offer_id
                    ),
                ));
            }
            Err(other) => return Err(failure(ErrorCode::Internal, other.to_string())),
        };
        let terms = LeaseTerms {
            lease_id: lease_id.clone(),
            network: config.network.name.clone(),
            offer_id: offer.offer_id,
            bid_digest,
            buyer_peer: caller.to_string(),
            buyer_wallet: bid.wallet.clone(),
            provider_wallet: offer.wallet.clone(),
            arbiter_wallet: arbiter,
            gpu_model: offer.gpu_model.clone(),
            gpus: record.gpus.clone(),
            simulated: offer.simulated,
            price_per_gpu_hour: offer.price_per_gpu_hour,
            hours: bid.hours,
            amount: matched.total,
            payment: if params.stream {
                Payment::Stream {
                    pull_secs: config.market.stream_pull_secs,
                }
            } else {
                Payment::Escrow
            },
            fund_by_ms: now_ms() + config.market.fund_within_secs * 1000,
        };
        terms
            .validate()
            .map_err(|e| failure(ErrorCode::Internal, e.to_string()))?;
        let ttl = Duration::from_secs(terms.total_secs()) + LEASE_PROOF_SLACK;
        let envelope = self.sign(ttl, terms.clone()).await?;
        record.terms = Some(terms);
        record.terms_envelope = Some(envelope.clone());
        record.advance(LeaseState::Accepted)?;
        self.save(&record).await?;
        self.inner.offers_changed.notify_one();
        tracing::info!(lease = %lease_id, buyer = %caller, gpus = ?record.gpus, "lease accepted");
        Ok(json!({ "lease_id": lease_id, "terms": envelope, "state": record.state }))
    }

    fn own_lease(record: &LeaseRecord, caller: &PeerId) -> Result<(), InvokeFailure> {
        if record.side != Side::Provider || record.counterparty != caller.to_string() {
            return Err(failure(
                ErrorCode::Unauthorized,
                format!(
                    "lease {} is not {caller}'s lease on this node",
                    record.lease_id
                ),
            ));
        }
        Ok(())
    }

    /// `market.lease.fund`: verifies the escrow on chain (2 of exactly buyer, provider and
    /// arbiter; the agreed amount of MOLT), then starts the buyer's workload on the reserved
    /// GPUs. A workload that cannot start ends the lease at once with a refund receipt.
    pub async fn lease_fund(
        &self,
        caller: PeerId,
        params: FundParams,
    ) -> Result<Value, InvokeFailure> {
        let _step = self.inner.steps.lock().await;
        let mut record = self.load(&params.lease_id).await?;
        Self::own_lease(&record, &caller)?;
        match record.state {
            LeaseState::Accepted => {}
            LeaseState::Funded
            | LeaseState::Running
            | LeaseState::Completed
            | LeaseState::Settled
            | LeaseState::Refunded => {
                return Ok(self.fund_answer(&record));
            }
            other => {
                return Err(failure(
                    ErrorCode::Conflict,
                    format!(
                        "lease {} is {other}: {}",
                        record.lease_id,
                        record.reason.clone().unwrap_or_default()
                    ),
                ));
            }
        }
        let terms = record
            .terms
            .clone()
            .ok_or_else(|| failure(ErrorCode::Internal, "accepted lease without terms"))?;
        if now_ms() > terms.fund_by_ms {
            record.reason = Some("the escrow was not funded in time".to_owned());
            record.advance(LeaseState::Expired)?;
            self.save(&record).await?;
            self.inner.offers_changed.notify_one();
            return Err(failure(
                ErrorCode::Conflict,
                format!("lease {}: the reservation lapsed", record.lease_id),
            ));
        }
        let chain = self.chain()?;
        match terms.payment {
            Payment::Escrow => {
                let (Some(multisig), Some(vault)) = (&params.multisig, &params.vault) else {
                    return Err(failure(
                        ErrorCode::InvalidParams,
                        "an escrow lease is funded with its multisig and vault",
                    ));
                };
                address(multisig)?;
                address(vault)?;
                record.multisig = Some(multisig.clone());
                record.vault = Some(vault.clone());
                let escrow = record.escrow()?;
                chain.verify_escrow(&escrow).await?;
                tracing::info!(lease = %record.lease_id, %vault, "escrow verified on chain");
            }
            Payment::Stream { .. } => {
                let buyer = address(&terms.buyer_wallet)?;
                let account = chain
                    .mint
                    .read_account(&chain.client, &chain.mint.account_of(&buyer))
                    .await
                    .map_err(|e| {
                        failure(
                            ErrorCode::Conflict,
                            format!("the buyer's MOLT account: {e}"),
                        )
                    })?;
                let me = self.wallet()?.pubkey();
                let allowed = account.delegate.filter(|(d, _)| *d == me).map(|(_, a)| a);
                if allowed < Some(terms.amount) || account.amount < terms.amount {
                    return Err(failure(
                        ErrorCode::Conflict,
                        format!(
                            "the stream is not funded as agreed: {} MOLT allowed to this provider and {} MOLT held, {} needed",
                            allowed.unwrap_or_default(),
                            account.amount,
                            terms.amount
                        ),
                    ));
                }
                tracing::info!(lease = %record.lease_id, allowance = %terms.amount, "stream allowance verified on chain");
            }
        }
        record.advance(LeaseState::Funded)?;
        self.save(&record).await?;
        self.start_workload(&mut record, caller, params.workload)
            .await?;
        Ok(self.fund_answer(&record))
    }

    async fn start_workload(
        &self,
        record: &mut LeaseRecord,
        lessee: PeerId,
        workload: LeaseWorkload,
    ) -> Result<(), InvokeFailure> {
        let params = workload.into_run_params();
        match self
            .inner
            .workloads
            .run_leased(lessee, params, &record.lease_id, record.gpus.clone())
            .await
        {
            Ok(started) => {
                record.workload_id = Some(started.id.clone());
                record.started_ms = Some(now_ms());
                record.advance(LeaseState::Running)?;
                self.save(record).await?;
                tracing::info!(lease = %record.lease_id, workload = %started.id, "lease running");
            }
            Err(error) => {
                tracing::warn!(lease = %record.lease_id, %error, "lease workload did not start");
                record.reason = Some(format!("the workload did not start: {error}"));
                self.complete(record, LeaseOutcome::NeverStarted).await?;
            }
        }
        Ok(())
    }

    fn fund_answer(&self, record: &LeaseRecord) -> Value {
        json!({
            "lease_id": record.lease_id,
            "state": record.state,
            "workload_id": record.workload_id,
            "started_ms": record.started_ms,
            "reason": record.reason,
        })
    }

    /// Ends a funded or running lease: stops its workload, measures the time served, signs the
    /// receipt and records the lease completed.
    async fn complete(
        &self,
        record: &mut LeaseRecord,
        outcome: LeaseOutcome,
    ) -> Result<(), InvokeFailure> {
        let terms = record
            .terms
            .clone()
            .ok_or_else(|| failure(ErrorCode::Internal, "lease without terms"))?;
        if let Some(workload) = &record.workload_id {
            let stopped = self
                .inner
                .workloads
                .stop(StopParams {
                    workload: workload.clone(),
                    timeout_secs: Some(10),
                    remove: false,
                })
                .await;
            if let Err(error) = stopped {
                tracing::debug!(lease = %record.lease_id, %error, "workload already stopped");
            }
        }
        let ended_ms = now_ms();
        let (started_ms, served_secs) = match (outcome, record.started_ms) {
            (LeaseOutcome::Served, Some(started)) => (
                started,
                (ended_ms.saturating_sub(started) / 1000).min(terms.total_secs()),
            ),
            _ => (0, 0),
        };
        let outcome = if served_secs == 0 && record.started_ms.is_none() {
            LeaseOutcome::NeverStarted
        } else {
            outcome
        };
        let release = match terms.payment {
            Payment::Escrow => pro_rata(terms.amount, served_secs, terms.total_secs()),
            Payment::Stream { .. } => {
                if outcome == LeaseOutcome::Served {
                    // The last pull, for the time served up to now, when the stream allows it.
                    if let Err(error) = self.pull_due(record, &terms, served_secs).await {
                        tracing::info!(lease = %record.lease_id, %error, "final pull refused");
                    }
                }
                claw_market::settlement::Release {
                    to_provider: Molt::from_base_units(record.pulled),
                    to_buyer: Molt::default(),
                }
            }
        };
        let terms_digest = record
            .terms_envelope
            .as_deref()
            .map(|t| decode_blob("terms", t))
            .transpose()?
            .map(|bytes| <[u8; 32]>::from(Sha256::digest(bytes)))
            .unwrap_or_default();
        let receipt = LeaseReceipt {
            lease_id: record.lease_id.clone(),
            terms_digest,
            outcome,
            started_ms,
            ended_ms: if started_ms == 0 { 0 } else { ended_ms },
            served_secs,
            to_provider: release.to_provider,
            to_buyer: release.to_buyer,
            vault: record.vault.clone().unwrap_or_default(),
        };
        let ttl = LEASE_PROOF_SLACK;
        let envelope = self.sign(ttl, receipt.clone()).await?;
        record.receipt = Some(receipt);
        record.receipt_envelope = Some(envelope);
        record.advance(LeaseState::Completed)?;
        if let Payment::Stream { .. } = terms.payment {
            // Streamed money has already moved: nothing is left to settle.
            record.advance(if outcome == LeaseOutcome::NeverStarted {
                LeaseState::Refunded
            } else {
                LeaseState::Settled
            })?;
        }
        self.save(record).await?;
        self.inner.offers_changed.notify_one();
        tracing::info!(lease = %record.lease_id, served_secs, to_provider = %release.to_provider, "lease completed");
        Ok(())
    }

    /// `market.lease.end`: ends the caller's lease if it is still open, and answers with the
    /// signed receipt and the settlement transaction, signed by this provider for the escrow,
    /// for the buyer to check, co-sign and send.
    pub async fn lease_end(
        &self,
        caller: PeerId,
        params: EndParams,
    ) -> Result<Value, InvokeFailure> {
        let _step = self.inner.steps.lock().await;
        let mut record = self.load(&params.lease_id).await?;
        Self::own_lease(&record, &caller)?;
        match record.state {
            LeaseState::Funded => {
                self.complete(&mut record, LeaseOutcome::NeverStarted)
                    .await?
            }
            LeaseState::Running => self.complete(&mut record, LeaseOutcome::Served).await?,
            LeaseState::Completed | LeaseState::Settled | LeaseState::Refunded => {}
            LeaseState::Accepted => {
                record.reason = Some("cancelled by the buyer before funding".to_owned());
                record.advance(LeaseState::Expired)?;
                self.save(&record).await?;
                self.inner.offers_changed.notify_one();
                return Ok(json!({ "lease_id": record.lease_id, "state": record.state }));
            }
            other => {
                return Err(failure(
                    ErrorCode::Conflict,
                    format!("lease {} is {other}", record.lease_id),
                ));
            }
        }
        let settlement = if record.settlement_signature.is_some() || record.is_stream() {
            None
        } else {
            Some(self.provider_signed_settlement(&record).await?)
        };
        Ok(json!({
            "lease_id": record.lease_id,
            "state": record.state,
            "receipt": record.receipt_envelope,
            "settlement": settlement,
            "settlement_signature": record.settlement_signature,
        }))
    }

    /// The settlement of a completed lease, signed by this provider: the receipt's split, fees
    /// paid by the buyer, signed for the multisig by provider and buyer.
    async fn provider_signed_settlement(
        &self,
        record: &LeaseRecord,
    ) -> Result<String, InvokeFailure> {
        let receipt = record
            .receipt
            .as_ref()
            .ok_or_else(|| failure(ErrorCode::Internal, "completed lease without receipt"))?;
        let escrow = record.escrow()?;
        self.half_signed_settlement(&escrow, receipt.release(), &escrow.terms.buyer)
            .await
    }

    /// `market.lease.status`: where the caller's lease is on this provider.
    pub async fn lease_status(
        &self,
        caller: PeerId,
        params: StatusParams,
    ) -> Result<Value, InvokeFailure> {
        // Anyone may ask (the buyer, the arbiter): the receipt is public, as `market.receipts`.
        let _ = caller;
        let record = self.load(&params.lease_id).await?;
        if record.side != Side::Provider {
            return Err(failure(
                ErrorCode::NotFound,
                format!("no lease {} sold here", record.lease_id),
            ));
        }
        Ok(json!({
            "lease_id": record.lease_id,
            "state": record.state,
            "workload_id": record.workload_id,
            "started_ms": record.started_ms,
            "receipt": record.receipt_envelope,
            "reason": record.reason,
        }))
    }

    /// Pulls what a streaming lease has earned for `served_secs` and not yet been paid. What was
    /// paid is read from the chain (the allowance left), so a pull that landed before a crash is
    /// never pulled again. A revoked or exhausted allowance, or a buyer out of MOLT, is an error.
    async fn pull_due(
        &self,
        record: &mut LeaseRecord,
        terms: &LeaseTerms,
        served_secs: u64,
    ) -> Result<(), InvokeFailure> {
        let chain = self.chain()?;
        let wallet = self.wallet()?;
        let buyer = address(&terms.buyer_wallet)?;
        let account = chain
            .mint
            .read_account(&chain.client, &chain.mint.account_of(&buyer))
            .await
            .map_err(chain_failure)?;
        let Some(left) = account
            .delegate
            .filter(|(d, _)| *d == wallet.pubkey())
            .map(|(_, left)| left)
        else {
            return Err(failure(
                ErrorCode::Conflict,
                "the buyer revoked the allowance, or it is used up",
            ));
        };
        let pulled = terms.amount.base_units().saturating_sub(left.base_units());
        record.pulled = pulled;
        let due = amount_due(
            terms.rate_per_hour(),
            served_secs,
            Molt::from_base_units(pulled),
            terms.amount,
        );
        record.last_pull_ms = Some(now_ms());
        if due.base_units() > 0 {
            pull(
                &chain.client,
                &chain.mint,
                wallet,
                &buyer,
                due,
                &record.lease_id,
            )
            .await
            .map_err(chain_failure)?;
            record.pulled = pulled + due.base_units();
            tracing::info!(lease = %record.lease_id, %due, total = record.pulled, "stream pulled");
        }
        self.save(record).await
    }

    /// Whether a completed lease has waited for its buyer's co-signature long enough to take it
    /// to the arbiter.
    fn dispute_due(&self, record: &LeaseRecord, now: u64) -> bool {
        let market = &self.inner.dir.config().market;
        let completed = record
            .history
            .iter()
            .find(|(s, _)| *s == LeaseState::Completed)
            .map(|(_, at)| *at);
        market.arbiter_peer.is_some()
            && record
                .receipt
                .as_ref()
                .is_some_and(|r| r.outcome == LeaseOutcome::Served)
            && completed.is_some_and(|at| now >= at + market.dispute_after_secs * 1000)
    }

    /// Provider upkeep: lapsed reservations are released; leases whose time is up or whose
    /// workload stopped are completed; completed leases are marked settled once the settlement
    /// is found on chain.
    pub(super) async fn provider_tick(&self) -> Result<(), InvokeFailure> {
        let records = self.on_store(crate::store::Store::leases).await?;
        let now = now_ms();
        for record in records
            .into_iter()
            .filter(|r| r.side == Side::Provider && r.state.is_open())
        {
            let _step = self.inner.steps.lock().await;
            let mut record = self.load(&record.lease_id).await?;
            let Some(terms) = record.terms.clone() else {
                // Reserved, but the terms were never signed (a crash in between): release.
                if now > record.created_ms + 60_000 {
                    record.reason = Some("the terms were never signed".to_owned());
                    record.advance(LeaseState::Expired)?;
                    self.save(&record).await?;
                }
                continue;
            };
            match record.state {
                LeaseState::Accepted if now > terms.fund_by_ms => {
                    record.reason = Some("the escrow was not funded in time".to_owned());
                    record.advance(LeaseState::Expired)?;
                    self.save(&record).await?;
                    self.inner.offers_changed.notify_one();
                    tracing::info!(lease = %record.lease_id, "reservation lapsed; GPUs released");
                }
                LeaseState::Running if record.is_stream() => {
                    let started = record.started_ms.unwrap_or(now);
                    let Payment::Stream { pull_secs } = terms.payment else {
                        continue;
                    };
                    let served = (now.saturating_sub(started) / 1000).min(terms.total_secs());
                    let due =
                        record.last_pull_ms.unwrap_or(started) + u64::from(pull_secs) * 1000 <= now;
                    let time_up = served >= terms.total_secs();
                    if due || time_up {
                        match self.pull_due(&mut record, &terms, served).await {
                            Ok(()) if !time_up => {}
                            Ok(()) => self.complete(&mut record, LeaseOutcome::Served).await?,
                            Err(error) => {
                                tracing::info!(lease = %record.lease_id, %error, "stream stopped: the pull was refused");
                                record.reason =
                                    Some(format!("the stream stopped: {}", error.message));
                                self.complete(&mut record, LeaseOutcome::Served).await?;
                            }
                        }
                    }
                }
                LeaseState::Running => {
                    let started = record.started_ms.unwrap_or(now);
                    let time_up = now >= started + terms.total_secs() * 1000;
                    let workload_ended = match &record.workload_id {
                        Some(id) => {
                            let id = id.clone();
                            self.on_store(move |store| store.workload(&id))
                                .await?
                                .is_none_or(|w| !w.state.is_active())
                        }
                        None => true,
                    };
                    if time_up || workload_ended {
                        self.complete(&mut record, LeaseOutcome::Served).await?;
                    }
                }
                LeaseState::Completed => {
                    let escrow = record.escrow()?;
                    let chain = self.chain()?;
                    if let Some(signature) = escrow
                        .find_settlement(&chain.client)
                        .await
                        .map_err(chain_failure)?
                    {
                        let refunded = record
                            .receipt
                            .as_ref()
                            .is_some_and(|r| r.outcome == LeaseOutcome::NeverStarted);
                        record.settlement_signature = Some(signature.to_string());
                        record.advance(if refunded {
                            LeaseState::Refunded
                        } else {
                            LeaseState::Settled
                        })?;
                        self.save(&record).await?;
                        tracing::info!(lease = %record.lease_id, %signature, "lease settled on chain");
                    } else if self.dispute_due(&record, now) {
                        // The buyer has not co-signed the settlement: the arbiter and this
                        // provider release it per the receipt.
                        let release = record.receipt.as_ref().map(LeaseReceipt::release);
                        match self.settle_with_arbiter(&record, release).await {
                            Ok(signature) => {
                                record.settlement_signature = Some(signature.clone());
                                record.reason = Some(
                                    "settled with the arbiter: the buyer did not co-sign"
                                        .to_owned(),
                                );
                                record.advance(LeaseState::Settled)?;
                                self.save(&record).await?;
                                tracing::info!(lease = %record.lease_id, %signature, "lease settled with the arbiter");
                            }
                            Err(error) => {
                                tracing::warn!(lease = %record.lease_id, %error, "the arbiter did not settle the lease")
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Checks a terms envelope a provider answered with.
pub(super) fn check_terms(
    verifier: &claw_attestation::Verifier,
    text: &str,
    provider: &PeerId,
) -> Result<LeaseTerms, InvokeFailure> {
    let (terms, _) = open_signed::<LeaseTerms>(verifier, "lease terms", text, provider)?;
    terms
        .validate()
        .map_err(|e| failure(ErrorCode::InvalidParams, e.to_string()))?;
    Ok(terms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_markup_follows_utilisation() {
        let base = Molt::from_base_units(1_000_000);
        let markup = Molt::from_base_units(800_000);
        assert_eq!(offer_price(base, markup, 0, 8), base);
        assert_eq!(offer_price(base, markup, 2, 8).base_units(), 1_200_000);
        assert_eq!(offer_price(base, markup, 8, 8).base_units(), 1_800_000);
        assert_eq!(offer_price(base, Molt::default(), 5, 8), base);
        let huge = Molt::from_base_units(u64::MAX);
        assert_eq!(offer_price(huge, huge, 1, 1).base_units(), u64::MAX);
    }

    #[test]
    fn offers_keep_their_id_per_model() {
        assert_eq!(
            offer_id_of("NVIDIA H100 80GB HBM3"),
            offer_id_of("NVIDIA H100 80GB HBM3")
        );
        assert_ne!(
            offer_id_of("NVIDIA H100 80GB HBM3"),
            offer_id_of("NVIDIA A100-SXM4-80GB")
        );
    }
}
