//! The provider's side: publishing offers for free GPUs, answering the buyer's lease steps
//! (`market.lease.request`, `.fund`, `.end`, `.status`) and carrying out the provider's effects.
//!
//! A reservation costs its asker something: the bid must be signed by the caller, its wallet must
//! sign the bid too (so the caller controls it) and hold the lease's amount on chain, open
//! reservations are capped per peer and per wallet, a lapsed reservation is deleted and its bid
//! cannot reserve again, and a peer or wallet whose reservations keep lapsing is refused for a
//! while.

use std::collections::BTreeMap;
use std::time::Duration;

use claw_api::market::{
    LapsedLease, LeaseEnd, LeaseEnding, LeaseGrant, LeaseStatus, OwnOffer, SellReport, SellWindow,
};
use claw_market::Molt;
use claw_market::book::{BookEntry, OrderBook};
use claw_market::lease::machine::Funding;
use claw_market::lease::{
    Effect, Input, LeaseAcceptance, LeaseId, LeaseRecord, LeaseState, LeaseTerms, Payment, Side,
    Signed, UsageCheckpoint, wallet_proof_message,
};
use claw_market::order::{Bid, Offer};
use claw_market::settlement::{Escrow, StreamReading, pull, read_stream};
use claw_mesh::{ErrorCode, InvokeFailure, PeerId, TopicKind};
use sha2::{Digest as _, Sha256};
use solana_signer::Signer as _;

use super::{
    EndParams, FundParams, LEASE_PROOF_SLACK, LeaseRequestParams, Market, Published, SellParams,
    StatusParams, address, chain_failure, failure, lease_id, now_ms,
};
use crate::store::AdmitError;
use crate::workloads::spec::StopParams;

/// The longest a bid may be valid for to ask for a lease: its lapsed reservation is remembered
/// (so the bid cannot reserve again) until it expires.
const MAX_BID_LIFETIME_MS: u64 = 15 * 60_000;
/// How long `market.lease.fund` waits for the workload to start before it answers that it is
/// starting (the buyer follows with `market.lease.status`).
const FUND_ANSWER_WITHIN: Duration = Duration::from_secs(20);

/// Whether to sell now, the most hours an offer allows and until when it is open: within a
/// daily window, offers exist only while it is open, and allow no lease past its close (none
/// when fewer than `min_hours` are left); without one, the config's hours.
fn selling_hours(
    window: Option<&SellWindow>,
    selling: bool,
    market: &crate::config::MarketSection,
    now: u64,
) -> (bool, u32, u64) {
    let always = now + u64::from(market.max_hours) * 3_600_000 + 3_600_000;
    let Some(window) = window.filter(|_| selling) else {
        return (selling, market.max_hours, always);
    };
    match window.open_until(now) {
        Some(close) => {
            let left = u32::try_from(close.saturating_sub(now) / 3_600_000).unwrap_or(u32::MAX);
            let hours = market.max_hours.min(left);
            (
                hours >= market.min_hours,
                hours.max(market.min_hours),
                close,
            )
        }
        None => (false, market.max_hours, always),
    }
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
    /// Publishes an offer per GPU model with the GPUs free now, withdraws offers whose GPUs are
    /// all taken, and renews offers at half their lifetime.
    pub(super) async fn publish_offers(&self) -> Result<(), InvokeFailure> {
        let config = self.inner.dir.config();
        let Some((price, selling)) = self.selling_price().await? else {
            return Ok(());
        };
        self.arbiter()?;
        let wallet = self.wallet()?.pubkey().to_string();
        let (allocated, inventory_digest, window) = self
            .inner
            .store
            .run(|store| {
                let digest = store
                    .latest_inventory()?
                    .map(|bytes| <[u8; 32]>::from(Sha256::digest(bytes)))
                    .unwrap_or_default();
                Ok((store.allocations()?, digest, store.selling_window()?))
            })
            .await?;
        let now = now_ms();
        let (selling, max_hours, until_ms) =
            selling_hours(window.as_ref(), selling, &config.market, now);
        let cordoned = self.inner.store.run(|store| store.cordoned()).await?;
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
        let tenant = &config.workloads.tenant;
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
                max_hours,
                available_from_ms: now,
                available_until_ms: until_ms,
                network: config.network.name.clone(),
                region: config.node.region.clone(),
                wallet: wallet.clone(),
                inventory_digest,
                interruptible: config.market.interruptible,
                simulated,
                withdrawn: free == 0,
                cpu_millis_per_gpu: tenant.cpu_millis_per_gpu,
                memory_mib_per_gpu: tenant.memory_mib_per_gpu,
                pids_limit: tenant.pids_limit,
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
                    && p.offer.max_hours == offer.max_hours
                    && p.offer.price_per_gpu_hour == offer.price_per_gpu_hour
            };
            let fresh = |p: &Published| now < p.at_ms + config.market.offer_ttl_secs * 500;
            match &previous {
                Some(p) if same(p) && (p.offer.withdrawn || fresh(p)) && !republish => continue,
                None if offer.withdrawn => continue,
                _ => {}
            }
            self.publish_offer(model, offer, ttl, now).await?;
        }
        Ok(())
    }

    /// The price offers go out at, and whether the node sells at all: the decision made with
    /// `market.sell`, else the config's; a node that cannot isolate tenants sells nothing. Not
    /// selling, offers already published are withdrawn at their last price; `None` when there
    /// is nothing to publish or withdraw.
    async fn selling_price(&self) -> Result<Option<(Molt, bool)>, InvokeFailure> {
        let decided = self.inner.store.run(|store| store.selling()).await?;
        let price = match decided {
            Some(Some(price)) => Some(
                price
                    .parse::<Molt>()
                    .map_err(|e| failure(ErrorCode::Internal, format!("stored price: {e}")))?,
            ),
            Some(None) => None,
            None => self.inner.dir.config().market.price(),
        };
        let last_price = self
            .inner
            .published
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .map(|p| p.offer.price_per_gpu_hour)
            .next();
        // A node that cannot keep tenants apart from it sells nothing.
        let price = match (price, self.inner.workloads.tenant_ready().await) {
            (Some(_), Err(reason)) => {
                let mut said = self
                    .inner
                    .not_selling
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                // Said once per reason, not at every renewal.
                if said.as_deref() != Some(reason.as_str()) {
                    tracing::warn!(%reason, "not selling: leases run as tenants, and this node cannot isolate them");
                    *said = Some(reason);
                }
                None
            }
            (price, ready) => {
                if ready.is_ok() {
                    *self
                        .inner
                        .not_selling
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
                }
                price
            }
        };
        // Not selling: withdraw what was published, or do nothing.
        Ok(match (price, last_price) {
            (Some(price), _) => Some((price, true)),
            (None, Some(last)) => Some((last, false)),
            (None, None) => None,
        })
    }

    /// Signs `offer`, takes it into this node's own book, gossips it, and remembers it as the
    /// published offer for `model`.
    async fn publish_offer(
        &self,
        model: String,
        offer: Offer,
        ttl: Duration,
        now: u64,
    ) -> Result<(), InvokeFailure> {
        offer
            .validate()
            .map_err(|e| failure(ErrorCode::Internal, e.to_string()))?;
        let signed = self.sign(ttl, offer.clone()).await?;
        let envelope = signed.text();
        let bytes = signed.envelope().to_vec();
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
        Ok(())
    }

    /// `market.sell`: records the decision (it outlives restarts and overrides the config's
    /// price), publishes or withdraws the offers at once, and answers with them.
    pub async fn sell(&self, params: SellParams) -> Result<SellReport, InvokeFailure> {
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
                self.inner
                    .workloads
                    .tenant_ready()
                    .await
                    .map_err(|reason| {
                        failure(
                            ErrorCode::Unavailable,
                            format!("this node cannot sell: a lease's workload runs as a tenant, and {reason}"),
                        )
                    })?;
                Some(price.to_string())
            }
            (None, true) if params.window.is_none() => None,
            _ => {
                return Err(failure(
                    ErrorCode::InvalidParams,
                    "give price_per_gpu_hour (and a window, if any) to sell, or stop: true to stop selling",
                ));
            }
        };
        if let Some(window) = &params.window {
            window
                .check()
                .map_err(|e| failure(ErrorCode::InvalidParams, e))?;
        }
        let selling = price.clone();
        let window = params.window.clone();
        self.inner
            .store
            .run(move |store| store.set_selling(selling.as_deref(), window.as_ref()))
            .await?;
        tracing::info!(
            price = price.as_deref().unwrap_or("none"),
            "selling changed"
        );
        self.publish_offers().await?;
        let offers = self
            .inner
            .published
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .map(|p| OwnOffer {
                gpu_model: p.offer.gpu_model.clone(),
                gpus: if p.offer.withdrawn { 0 } else { p.offer.gpus },
                price_per_gpu_hour: p.offer.price_per_gpu_hour.to_string(),
                simulated: p.offer.simulated,
                withdrawn: p.offer.withdrawn,
            })
            .collect();
        Ok(SellReport {
            selling: price.is_some(),
            price_per_gpu_hour: price,
            offers,
            window: params.window,
        })
    }

    /// `market.lease.request`: checks the bid and its asker (see the module doc), reserves the
    /// GPUs and answers with signed terms. The same bid always gets the same lease.
    pub async fn lease_request(
        &self,
        caller: PeerId,
        params: LeaseRequestParams,
    ) -> Result<LeaseGrant, InvokeFailure> {
        let bid = self.open_signed::<Bid>("bid", &params.bid, Some(&caller))?;
        bid.payload()
            .validate()
            .map_err(|e| failure(ErrorCode::InvalidParams, e.to_string()))?;
        let lease = LeaseId::derive(
            &bid.digest(),
            &self.inner.dir.identity().public_key().to_bytes(),
        );
        if let Some(existing) = self.load(&lease).await?
            && let Some(terms) = &existing.terms
        {
            return Ok(LeaseGrant {
                lease_id: lease.to_string(),
                terms: terms.text(),
                state: existing.state,
            });
        }
        self.inner
            .workloads
            .tenant_ready()
            .await
            .map_err(|reason| failure(ErrorCode::Unavailable, format!("not selling: {reason}")))?;
        self.check_asker(&caller, &bid, &lease, &params.wallet_signature)
            .await?;
        let (offer, matched_total) = self.matched_offer(&bid, params.offer_id)?;
        self.check_wallet_holds(&bid.payload().wallet, matched_total)
            .await?;
        let record = self.reserve(&lease, &caller, &bid, &offer).await?;
        let terms = self.terms_for(
            &lease,
            &caller,
            &bid,
            &offer,
            record.gpus.clone(),
            matched_total,
            params.stream,
        )?;
        let ttl = Duration::from_secs(terms.total_secs()) + LEASE_PROOF_SLACK;
        let signed = self.sign(ttl, terms).await?;
        let text = signed.text();
        let record = self
            .drive(&lease, Input::TermsSigned(signed))
            .await?
            .ok_or_else(|| failure(ErrorCode::Internal, "the reservation vanished"))?;
        tracing::info!(lease = %lease, buyer = %caller, gpus = ?record.gpus, "lease accepted");
        Ok(LeaseGrant {
            lease_id: lease.to_string(),
            terms: text,
            state: record.state,
        })
    }

    /// Refuses an asker that does not control the bid's wallet, whose bid lapsed before, or whose
    /// reservations keep lapsing.
    async fn check_asker(
        &self,
        caller: &PeerId,
        bid: &Signed<Bid>,
        lease: &LeaseId,
        wallet_signature: &str,
    ) -> Result<(), InvokeFailure> {
        let wallet = address(&bid.payload().wallet)?;
        let signature: solana_signature::Signature = wallet_signature.parse().map_err(|_| {
            failure(
                ErrorCode::InvalidParams,
                "wallet_signature is not a signature",
            )
        })?;
        if !signature.verify(wallet.as_ref(), &wallet_proof_message(&bid.digest())) {
            return Err(failure(
                ErrorCode::Unauthorized,
                format!("the bid names wallet {wallet}, which did not sign it"),
            ));
        }
        let lifetime = bid.issued_ms();
        let expires = claw_attestation::Envelope::from_bytes(bid.envelope())
            .map(|e| e.expires_at_ms())
            .unwrap_or(u64::MAX);
        if expires.saturating_sub(lifetime) > MAX_BID_LIFETIME_MS {
            return Err(failure(
                ErrorCode::InvalidParams,
                "a bid asking for a lease may be valid for 15 minutes at most",
            ));
        }
        let market = &self.inner.dir.config().market;
        let keys = [format!("peer:{caller}"), format!("wallet:{wallet}")];
        let since = now_ms().saturating_sub(market.lapse_window_secs * 1000);
        let lease = lease.clone();
        let (lapsed_bid, lapses) = self
            .inner
            .store
            .run(move |store| {
                let counts: Vec<u32> = keys
                    .iter()
                    .map(|k| store.lapses_since(k, since))
                    .collect::<Result<_, _>>()?;
                Ok((
                    store.lapsed_lease(lease.as_str())?,
                    counts.into_iter().max().unwrap_or(0),
                ))
            })
            .await?;
        if lapsed_bid {
            return Err(failure(
                ErrorCode::Conflict,
                "this bid's reservation lapsed unfunded; sign a new bid",
            ));
        }
        if lapses >= market.lapses_before_refusal {
            return Err(failure(
                ErrorCode::Unavailable,
                format!(
                    "{lapses} reservations of this peer or wallet lapsed unfunded in the last {} s; try again later",
                    market.lapse_window_secs
                ),
            ));
        }
        Ok(())
    }

    /// The open offer the bid asks for, and what the bid would pay for it, as any peer's matching
    /// would decide it.
    fn matched_offer(
        &self,
        bid: &Signed<Bid>,
        offer_id: u64,
    ) -> Result<(Offer, Molt), InvokeFailure> {
        let config = self.inner.dir.config();
        let published = self
            .inner
            .published
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .find(|p| p.offer.offer_id == offer_id)
            .cloned();
        let Some(published) = published.filter(|p| !p.offer.withdrawn) else {
            return Err(failure(
                ErrorCode::Conflict,
                format!("offer {offer_id} is no longer open on this node"),
            ));
        };
        let mut book = OrderBook::new(&config.network.name);
        book.insert(BookEntry {
            provider: self.inner.dir.identity().public_key().to_bytes(),
            seq: 1,
            issued_ms: published.at_ms,
            expires_ms: published.at_ms + config.market.offer_ttl_secs * 1000,
            attested: !published.offer.simulated,
            offer: published.offer.clone(),
        })
        .map_err(|e| failure(ErrorCode::Internal, e.to_string()))?;
        let matched = book
            .best_match(bid.payload(), now_ms(), &|_| 100)
            .map_err(|why| failure(ErrorCode::Conflict, why.to_string()))?;
        Ok((published.offer, matched.total))
    }

    /// Refuses a bid whose wallet does not hold the lease's amount of MOLT on chain.
    async fn check_wallet_holds(&self, wallet: &str, amount: Molt) -> Result<(), InvokeFailure> {
        let chain = self.chain()?;
        let held = chain
            .mint
            .balance(&chain.client, &address(wallet)?)
            .await
            .map_err(chain_failure)?;
        if held < amount {
            return Err(failure(
                ErrorCode::Conflict,
                format!("wallet {wallet} holds {held} MOLT, less than the lease's {amount}"),
            ));
        }
        Ok(())
    }

    /// Reserves the GPUs under the per-peer and per-wallet caps on open reservations.
    async fn reserve(
        &self,
        lease: &LeaseId,
        caller: &PeerId,
        bid: &Signed<Bid>,
        offer: &Offer,
    ) -> Result<LeaseRecord, InvokeFailure> {
        let cap = self.inner.dir.config().market.max_open_reservations as usize;
        let candidates: Vec<String> = self
            .inner
            .probe
            .devices()
            .into_iter()
            .filter(|d| d.model == offer.gpu_model)
            .map(|d| d.uuid)
            .collect();
        let _admission = self.inner.admission.lock().await;
        let peer = caller.to_string();
        let wallet = bid.payload().wallet.clone();
        let open = self
            .inner
            .store
            .run(move |store| {
                Ok(store
                    .leases()?
                    .into_iter()
                    .filter(|r| r.side == Side::Provider)
                    .filter(|r| matches!(r.state, LeaseState::Requested | LeaseState::Accepted))
                    .filter(|r| {
                        r.counterparty == peer
                            || r.terms
                                .as_ref()
                                .is_some_and(|t| t.payload().buyer_wallet == wallet)
                    })
                    .count())
            })
            .await?;
        if open >= cap {
            return Err(failure(
                ErrorCode::Conflict,
                format!(
                    "{open} reservations of this peer or wallet are open and unfunded; fund or cancel them first"
                ),
            ));
        }
        let record = LeaseRecord::reserved(lease.clone(), caller.to_string(), Vec::new(), now_ms());
        let count = bid.payload().gpus as usize;
        let reserved = self
            .inner
            .store
            .run(move |store| Ok(store.reserve_for_lease(&record, count, &candidates)))
            .await?;
        match reserved {
            Ok(record) => Ok(record),
            Err(AdmitError::GpusUnavailable { message, .. }) => {
                self.inner.offers_changed.notify_one();
                Err(failure(
                    ErrorCode::Conflict,
                    format!(
                        "the GPUs of offer {} were taken by another lease ({message})",
                        offer.offer_id
                    ),
                ))
            }
            Err(other) => Err(failure(ErrorCode::Internal, other.to_string())),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn terms_for(
        &self,
        lease: &LeaseId,
        caller: &PeerId,
        bid: &Signed<Bid>,
        offer: &Offer,
        gpus: Vec<String>,
        amount: Molt,
        stream: bool,
    ) -> Result<LeaseTerms, InvokeFailure> {
        let config = self.inner.dir.config();
        let terms = LeaseTerms {
            lease_id: lease.clone(),
            network: config.network.name.clone(),
            offer_id: offer.offer_id,
            bid_digest: bid.digest(),
            buyer_peer: caller.to_string(),
            buyer_wallet: bid.payload().wallet.clone(),
            provider_wallet: offer.wallet.clone(),
            arbiter_wallet: self.arbiter()?,
            gpu_model: offer.gpu_model.clone(),
            gpus,
            simulated: offer.simulated,
            price_per_gpu_hour: offer.price_per_gpu_hour,
            hours: bid.payload().hours,
            amount,
            payment: if stream {
                Payment::Stream {
                    pull_secs: config.market.stream_pull_secs,
                }
            } else {
                Payment::Escrow
            },
            fund_by_ms: now_ms() + config.market.fund_within_secs * 1000,
            checkpoint_secs: config.market.checkpoint_secs,
        };
        terms
            .validate()
            .map_err(|e| failure(ErrorCode::Conflict, e.to_string()))?;
        Ok(terms)
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

    /// `market.lease.fund`: takes the buyer's acceptance, checks the funding on chain (the escrow
    /// at its derived addresses, 2 of exactly buyer, provider and arbiter, the amount, and the
    /// funding transaction's block time; or the allowance), then starts the workload. Answers
    /// once it runs, or after [`FUND_ANSWER_WITHIN`] with where it is.
    pub async fn lease_fund(
        &self,
        caller: PeerId,
        params: FundParams,
    ) -> Result<LeaseStatus, InvokeFailure> {
        let lease = lease_id(&params.lease_id)?;
        let record = self
            .load(&lease)
            .await?
            .ok_or_else(|| failure(ErrorCode::NotFound, format!("no lease {lease} here")))?;
        Self::own_lease(&record, &caller)?;
        let acceptance =
            self.open_signed::<LeaseAcceptance>("acceptance", &params.acceptance, Some(&caller))?;
        // The acceptance must be of exactly these terms and name their escrow before anything is
        // looked up on chain.
        acceptance
            .check_against(
                record.terms().map_err(|e| super::driver::refusal(&e))?,
                self.policy().clock_slack_ms,
            )
            .map_err(|e| super::driver::refusal(&e))?;
        let input = match record.state {
            LeaseState::Accepted => Input::Funded {
                funding: self
                    .verify_funding(&record, &params.funding_signature)
                    .await?,
                acceptance: Some(acceptance),
            },
            _ => Input::Tick,
        };
        if matches!(record.state, LeaseState::Accepted | LeaseState::Funded) {
            self.inner
                .workload_specs
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(lease.clone(), params.workload);
        }
        let market = self.clone();
        let driven = {
            let lease = lease.clone();
            market
                .inner
                .tasks
                .clone()
                .spawn(async move { market.drive(&lease, input).await })
        };
        match tokio::time::timeout(FUND_ANSWER_WITHIN, driven).await {
            Ok(Ok(Err(refused))) => return Err(refused),
            Ok(Err(e)) => {
                return Err(failure(
                    ErrorCode::Internal,
                    format!("lease step failed: {e}"),
                ));
            }
            Ok(Ok(Ok(_))) | Err(_) => {}
        }
        let record = self
            .load(&lease)
            .await?
            .ok_or_else(|| failure(ErrorCode::NotFound, format!("lease {lease} lapsed")))?;
        Ok(status_answer(&record))
    }

    /// What the chain shows of a lease's funding, checked against its terms.
    async fn verify_funding(
        &self,
        record: &LeaseRecord,
        signature: &str,
    ) -> Result<Funding, InvokeFailure> {
        let terms = record
            .terms()
            .map_err(|e| super::driver::refusal(&e))?
            .payload();
        let chain = self.chain()?;
        let parsed: solana_signature::Signature = signature.parse().map_err(|_| {
            failure(
                ErrorCode::InvalidParams,
                "funding_signature is not a signature",
            )
        })?;
        let refused = |e| {
            failure(
                ErrorCode::Conflict,
                format!("the lease is not funded as its terms say: {e}"),
            )
        };
        let fetched = chain
            .client
            .transaction(&parsed)
            .await
            .map_err(chain_failure)?
            .ok_or_else(|| {
                failure(
                    ErrorCode::Conflict,
                    format!("no transaction {signature} on chain"),
                )
            })?;
        match Escrow::of(terms).map_err(|e| super::driver::refusal(&e))? {
            Some(escrow) => {
                escrow
                    .verify_funded(&chain.client, &chain.mint)
                    .await
                    .map_err(refused)?;
                let funded_at_ms = escrow
                    .funding_time(&chain.client, &parsed)
                    .await
                    .map_err(refused)?;
                tracing::info!(lease = %record.lease_id, vault = %escrow.vault(), "escrow verified on chain");
                Ok(Funding {
                    signature: signature.to_owned(),
                    slot: fetched.slot,
                    funded_at_ms,
                })
            }
            None => {
                let buyer = address(&terms.buyer_wallet)?;
                let account = chain
                    .mint
                    .read_account(&chain.client, &chain.mint.account_of(&buyer))
                    .await
                    .map_err(refused)?;
                let me = self.wallet_address()?;
                let allowed = account.delegate.filter(|(d, _)| *d == me).map(|(_, a)| a);
                let first = terms.per_pull().min(terms.amount);
                let touches = fetched
                    .transaction
                    .message
                    .static_account_keys()
                    .contains(&chain.mint.account_of(&buyer));
                if fetched.failed || !touches || allowed < Some(first) || account.amount < first {
                    return Err(failure(
                        ErrorCode::Conflict,
                        format!(
                            "the stream is not funded as agreed: {} MOLT allowed to this provider, {} MOLT held, {first} needed",
                            allowed.unwrap_or_default(),
                            account.amount,
                        ),
                    ));
                }
                Ok(Funding {
                    signature: signature.to_owned(),
                    slot: fetched.slot,
                    funded_at_ms: fetched.block_time_ms.unwrap_or_else(now_ms),
                })
            }
        }
    }

    /// `market.lease.end`: ends the caller's lease if it is still open, and answers with the
    /// final checkpoint and, for an escrow, the settlement signed by this provider for the buyer
    /// to check, co-sign and send.
    pub async fn lease_end(
        &self,
        caller: PeerId,
        params: EndParams,
    ) -> Result<LeaseEnd, InvokeFailure> {
        let lease = lease_id(&params.lease_id)?;
        let record = self
            .load(&lease)
            .await?
            .ok_or_else(|| failure(ErrorCode::NotFound, format!("no lease {lease} here")))?;
        Self::own_lease(&record, &caller)?;
        let record = match self
            .drive(&lease, Input::EndRequested("ended by the buyer".to_owned()))
            .await
        {
            Ok(Some(record)) => record,
            Ok(None) => {
                return Ok(LeaseEnd::Lapsed(LapsedLease {
                    lease_id: lease.to_string(),
                    state: LeaseState::Expired,
                }));
            }
            // Already over: answer what it ended with.
            Err(_) => self
                .load(&lease)
                .await?
                .ok_or_else(|| failure(ErrorCode::NotFound, format!("no lease {lease} here")))?,
        };
        let settlement = match (&record.ending, record.state, record.release()) {
            (Some(_), LeaseState::Completed, Some(release)) if !record.is_stream() => {
                let terms = record
                    .terms()
                    .map_err(|e| super::driver::refusal(&e))?
                    .payload();
                let escrow = Escrow::of(terms)
                    .map_err(|e| super::driver::refusal(&e))?
                    .ok_or_else(|| {
                        failure(ErrorCode::Internal, "an escrow lease without escrow")
                    })?;
                let buyer = escrow.parties.buyer;
                Some(
                    self.half_signed_settlement(&escrow, release, &buyer)
                        .await?,
                )
            }
            _ => None,
        };
        let status = status_answer(&record);
        Ok(LeaseEnd::Ended(LeaseEnding {
            lease_id: status.lease_id,
            side: status.side,
            state: status.state,
            workload_id: status.workload_id,
            started_ms: status.started_ms,
            checkpoint: status.checkpoint,
            container: status.container,
            reason: status.reason,
            settlement,
        }))
    }

    /// `market.lease.status`: where a lease is, with the latest checkpoint, for its
    /// counterparty or the configured arbiter (the arbiter gathers both sides' evidence).
    pub async fn lease_status(
        &self,
        caller: PeerId,
        params: StatusParams,
    ) -> Result<LeaseStatus, InvokeFailure> {
        let lease = lease_id(&params.lease_id)?;
        let record = self
            .load(&lease)
            .await?
            .ok_or_else(|| failure(ErrorCode::NotFound, format!("no lease {lease} here")))?;
        let arbiter = self.inner.dir.config().market.arbiter_peer.clone();
        let caller = caller.to_string();
        if record.counterparty != caller && arbiter.as_deref() != Some(caller.as_str()) {
            return Err(failure(
                ErrorCode::Unauthorized,
                format!("lease {lease} is not {caller}'s"),
            ));
        }
        Ok(status_answer(&record))
    }

    /// Deletes a reservation that lapsed unfunded and counts the lapse against its buyer's peer
    /// and wallet; its bid cannot reserve again before it expires.
    pub(super) async fn forget(&self, record: &LeaseRecord) -> Result<(), InvokeFailure> {
        let mut keys = vec![format!("peer:{}", record.counterparty)];
        keys.extend(
            record
                .terms
                .as_ref()
                .map(|t| format!("wallet:{}", t.payload().buyer_wallet)),
        );
        let bid_expires_ms = record.created_ms + MAX_BID_LIFETIME_MS;
        let (record, now) = (record.clone(), now_ms());
        let lease = record.lease_id.clone();
        self.inner
            .store
            .run(move |store| store.forget_lapsed_lease(&record, &keys, now, bid_expires_ms))
            .await?;
        self.inner
            .workload_specs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&lease);
        tracing::info!(lease = %lease, "reservation lapsed; forgotten");
        Ok(())
    }

    /// Provider upkeep of one lease: a workload that stopped by itself ends its lease, then the
    /// machine's deadlines and due steps.
    pub(super) async fn provider_tick(&self, record: &LeaseRecord) -> Result<(), InvokeFailure> {
        let lease = record.lease_id.clone();
        let _guard = self.inner.locks.lock(&lease).await;
        let Some(record) = self.load(&lease).await? else {
            return Ok(());
        };
        if record.state == LeaseState::Running
            && let Some(id) = record.workload_id.clone()
        {
            let workload = self
                .inner
                .store
                .run(move |store| store.workload(&id))
                .await?;
            if workload.as_ref().is_none_or(|w| !w.state.is_active()) {
                let exit_code = workload.as_ref().and_then(|w| w.exit_code);
                let reason = workload
                    .and_then(|w| w.reason)
                    .map(|r| format!("the workload ended: {r}"));
                self.drive_locked(&lease, Input::WorkloadEnded { exit_code, reason })
                    .await?;
            }
        }
        self.drive_locked(&lease, Input::Tick).await.map(|_| ())
    }

    /// Carries out one of the provider's effects; answers what it produced.
    pub(super) async fn provider_effect(&self, record: &LeaseRecord, effect: Effect) -> Vec<Input> {
        let outcome = match effect {
            Effect::OffersChanged => {
                self.inner.offers_changed.notify_one();
                Ok(Vec::new())
            }
            Effect::StartWorkload => self.start_workload(record).await,
            Effect::StopWorkload => self.stop_workload(record).await,
            Effect::SignCheckpoint(checkpoint) => self.sign_checkpoint(record, checkpoint).await,
            Effect::Pull { amount, pulled } => self.pull_stream(record, amount, pulled).await,
            Effect::ReadStream => self.read_stream_input(record).await,
            Effect::WatchSettlement => self.watch_settlement(record).await,
            Effect::AskArbiter => self.ask_arbiter(record).await,
            other => {
                tracing::error!(lease = %record.lease_id, ?other, "a provider cannot do that");
                Ok(Vec::new())
            }
        };
        outcome.unwrap_or_else(|error| {
            tracing::info!(lease = %record.lease_id, error = %error.message, "lease step not done; the next tick tries again");
            Vec::new()
        })
    }

    async fn start_workload(&self, record: &LeaseRecord) -> Result<Vec<Input>, InvokeFailure> {
        let spec = self
            .inner
            .workload_specs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&record.lease_id)
            .cloned();
        // After a restart the workload comes again with the buyer's next funding call.
        let Some(spec) = spec else {
            return Ok(Vec::new());
        };
        let lessee: PeerId = record
            .counterparty
            .parse()
            .map_err(|_| failure(ErrorCode::Internal, "the buyer is not a peer id"))?;
        let started = self
            .inner
            .workloads
            .run_leased(
                lessee,
                spec.into_run_params(),
                record.lease_id.as_str(),
                record.gpus.clone(),
            )
            .await;
        self.inner
            .workload_specs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&record.lease_id);
        Ok(vec![match started {
            Ok(workload) => Input::WorkloadStarted {
                workload_id: workload.id,
            },
            Err(error) => {
                tracing::warn!(lease = %record.lease_id, %error, "lease workload did not start");
                Input::WorkloadFailed(format!("the workload did not start: {}", error.summary()))
            }
        }])
    }

    async fn stop_workload(&self, record: &LeaseRecord) -> Result<Vec<Input>, InvokeFailure> {
        // A workload started just before a crash may be unknown to the record: find it by the
        // lease it was started for.
        let known = match &record.workload_id {
            Some(id) => Some(id.clone()),
            None => self
                .inner
                .workloads
                .leased(record.lease_id.as_str())
                .await
                .map(|w| w.id),
        };
        if let Some(workload) = &known {
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
        Ok(Vec::new())
    }

    async fn sign_checkpoint(
        &self,
        record: &LeaseRecord,
        checkpoint: UsageCheckpoint,
    ) -> Result<Vec<Input>, InvokeFailure> {
        let total = record
            .terms
            .as_ref()
            .map_or(0, |t| t.payload().total_secs());
        let ttl = Duration::from_secs(total) + LEASE_PROOF_SLACK;
        Ok(vec![Input::Checkpoint(self.sign(ttl, checkpoint).await?)])
    }

    /// Reads the lease's stream from the chain, from where the last reading stopped.
    pub(super) async fn stream_reading(
        &self,
        record: &LeaseRecord,
    ) -> Result<StreamReading, InvokeFailure> {
        let terms = record
            .terms()
            .map_err(|e| super::driver::refusal(&e))?
            .payload();
        let chain = self.chain()?;
        let last = record.stream.as_ref();
        let since = StreamReading {
            pulled: last.map(|s| s.pulled).unwrap_or_default(),
            allowance: Molt::default(),
            cursor: last
                .and_then(|s| s.cursor.as_deref())
                .and_then(|c| c.parse().ok()),
            last_pull: last
                .and_then(|s| s.last_pull.as_deref())
                .and_then(|p| p.parse().ok()),
        };
        read_stream(
            &chain.client,
            &chain.mint,
            &address(&terms.buyer_wallet)?,
            &address(&terms.provider_wallet)?,
            record.funding.as_ref().map_or(0, |f| f.slot),
            since,
        )
        .await
        .map_err(chain_failure)
    }

    pub(super) async fn read_stream_input(
        &self,
        record: &LeaseRecord,
    ) -> Result<Vec<Input>, InvokeFailure> {
        let reading = self.stream_reading(record).await?;
        Ok(vec![Input::StreamRead(progress(reading))])
    }

    /// Pulls `amount` if the chain still shows `pulled` pulled (a pull decided on an older
    /// reading is skipped), then reads the stream again.
    async fn pull_stream(
        &self,
        record: &LeaseRecord,
        amount: Molt,
        pulled: Molt,
    ) -> Result<Vec<Input>, InvokeFailure> {
        let reading = self.stream_reading(record).await?;
        if reading.pulled == pulled {
            let terms = record
                .terms()
                .map_err(|e| super::driver::refusal(&e))?
                .payload();
            let chain = self.chain()?;
            pull(
                &chain.client,
                &chain.mint,
                self.wallet()?,
                &address(&terms.buyer_wallet)?,
                amount,
                pulled,
                &record.lease_id,
            )
            .await
            .map_err(chain_failure)?;
            tracing::info!(lease = %record.lease_id, %amount, "stream pulled");
        }
        self.read_stream_input(record).await
    }

    pub(super) async fn watch_settlement(
        &self,
        record: &LeaseRecord,
    ) -> Result<Vec<Input>, InvokeFailure> {
        let terms = record
            .terms()
            .map_err(|e| super::driver::refusal(&e))?
            .payload();
        let Some(escrow) = Escrow::of(terms).map_err(|e| super::driver::refusal(&e))? else {
            return Ok(Vec::new());
        };
        Ok(self
            .settlement_on_chain(&escrow)
            .await?
            .map(Input::Settled)
            .into_iter()
            .collect())
    }
}

/// A stream reading as the machine takes it.
pub(super) fn progress(reading: StreamReading) -> claw_market::lease::machine::StreamProgress {
    claw_market::lease::machine::StreamProgress {
        pulled: reading.pulled,
        allowance: reading.allowance,
        cursor: reading.cursor.map(|c| c.to_string()),
        read_ms: now_ms(),
        last_pull_ms: None,
        last_pull: reading.last_pull.map(|p| p.to_string()),
    }
}

/// A lease's state and latest checkpoint, as the lease commands answer.
pub(super) fn status_answer(record: &LeaseRecord) -> LeaseStatus {
    LeaseStatus {
        lease_id: record.lease_id.to_string(),
        side: record.side,
        state: record.state,
        workload_id: record.workload_id.clone(),
        started_ms: record.started_ms,
        checkpoint: record.checkpoint.as_ref().map(Signed::text),
        container: record.checkpoint.as_ref().map(|c| c.payload().container),
        reason: record.reason.clone(),
    }
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
