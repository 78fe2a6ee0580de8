//! The node's part in the MOLT market: the order book built from gossip, the offers this node
//! publishes for its free GPUs, and leases on both sides.
//!
//! A lease follows the protocol of `claw_market::lease`: a pure state machine that this module
//! drives ([`driver`]). The steps between the parties are the mesh's request-response commands
//! (`market.lease.*`, answered by the provider for the buyer whose signed bid made the lease, and
//! `market.arbitrate` by the arbiter); money moves on chain through the escrow in
//! `claw_market::settlement`. Every record is saved before anything it decided is done, so a
//! `kill -9` of any party at any point is picked up by the periodic [`Market::tick`].

mod arbiter;
mod buyer;
mod driver;
mod history;
mod provider;
mod settle;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use base64::Engine as _;
use claw_api::Command;
use claw_api::market::{
    BookOffer, Lease, LeaseListing, MarketOffersSigned, OfferListing, SignedOffers, WalletHoldings,
};
use claw_attestation::{GpuProbe, SignedPayload, VerifiedEnvelope, Verifier};
use claw_market::book::{BookEntry, OrderBook};
use claw_market::lease::{
    LeaseId, LeasePolicy, LeaseRecord, LeaseState, ReputationBook, Side, Signed,
};
use claw_market::order::Offer;
use claw_market::settlement::{ChainClient, MoltMint};
use claw_mesh::{ErrorCode, InvokeFailure, MeshHandle, PeerId};
use serde_json::json;
use solana_keypair::Keypair;
use solana_pubkey::Pubkey;

pub use claw_api::market::{
    ArbitrateParams, BidParams, CancelParams, EndParams, FundParams, LeaseRequestParams, LeaseSide,
    LeaseWorkload, LeasesParams, OffersParams, PaymentChoice, ReceiptsParams, ReputationParams,
    RevokeParams, SellParams, StatusParams,
};

use crate::DataDir;
use crate::store::Store;
use crate::workloads::Workloads;

/// Largest signed envelope or transaction accepted in a market command, base-64 text.
const MAX_BLOB_CHARS: usize = 16 * 1024;
/// How long a buyer waits for a provider's answer to a lease step.
const LEASE_CALL_DEADLINE: Duration = Duration::from_secs(30);
/// How long a lease's signed messages stay verifiable beyond the lease itself.
const LEASE_PROOF_SLACK: Duration = Duration::from_secs(30 * 86_400);

use crate::now_ms;

fn failure(code: ErrorCode, message: impl Into<String>) -> InvokeFailure {
    InvokeFailure::new(code, message)
}

fn address(text: &str) -> Result<Pubkey, InvokeFailure> {
    text.parse().map_err(|_| {
        failure(
            ErrorCode::InvalidParams,
            format!("{text:?} is not a wallet address"),
        )
    })
}

fn chain_failure(error: claw_market::settlement::SettlementError) -> InvokeFailure {
    use claw_market::settlement::SettlementError as E;
    let code = match &error {
        E::RpcUnreachable { .. } | E::BlockhashExpired(_) => ErrorCode::Unavailable,
        E::InsufficientFunds(_) | E::WrongMint(_) | E::WrongOwner(_) | E::AccountMissing(_) => {
            ErrorCode::Conflict
        }
        _ => ErrorCode::Internal,
    };
    failure(code, format!("chain: {error}"))
}

fn encode_blob(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn decode_blob(what: &str, text: &str) -> Result<Vec<u8>, InvokeFailure> {
    if text.len() > MAX_BLOB_CHARS {
        return Err(failure(
            ErrorCode::InvalidParams,
            format!("{what} is longer than {MAX_BLOB_CHARS} characters"),
        ));
    }
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| {
            failure(
                ErrorCode::InvalidParams,
                format!("{what} is not base-64: {e}"),
            )
        })
}

fn lease_id(text: &str) -> Result<LeaseId, InvokeFailure> {
    LeaseId::parse(text).map_err(|e| failure(ErrorCode::InvalidParams, e.to_string()))
}

/// Where MOLT lives for this node.
struct Chain {
    client: ChainClient,
    mint: MoltMint,
}

/// What the node last published for one GPU model.
#[derive(Debug, Clone)]
struct Published {
    offer: Offer,
    at_ms: u64,
    /// The signed envelope, base-64, as gossiped.
    envelope: String,
}

struct Inner {
    dir: Arc<DataDir>,
    store: Store,
    probe: Arc<GpuProbe>,
    workloads: Workloads,
    /// Where lease steps are spawned, so that a stopping node waits for them.
    tasks: crate::Tasks,
    verifier: Verifier,
    wallet: Result<Keypair, String>,
    chain: Result<Chain, String>,
    book: Mutex<OrderBook>,
    mesh: OnceLock<MeshHandle>,
    published: Mutex<HashMap<String, Published>>,
    /// One lock per lease.
    locks: driver::LeaseLocks,
    /// Held only while a reservation is checked against the caps and written (no chain or
    /// network wait inside), so two requests cannot both pass a cap.
    admission: tokio::sync::Mutex<()>,
    /// Workloads buyers handed over with their funding, until started. Never stored: their
    /// env may hold secrets. A buyer hands its workload over again on every funding retry.
    workload_specs: Mutex<HashMap<LeaseId, LeaseWorkload>>,
    /// Settlements a provider signed, until this buyer co-signs them.
    settlements: Mutex<HashMap<LeaseId, Vec<u8>>>,
    /// When each provider in the view may next be asked for its offers.
    asked: Mutex<HashMap<PeerId, BookSync>>,
    /// Providers' records, from facts this node checked on chain itself.
    reputation: Mutex<ReputationBook>,
    offers_changed: tokio::sync::Notify,
    /// Why the node last refused to sell, once said.
    not_selling: Mutex<Option<String>>,
    /// When set (Unix ms), offers are published again at that time even if unchanged: a peer
    /// joined after they were last published, and gossip does not replay.
    republish_at_ms: std::sync::atomic::AtomicU64,
    /// Trade reports waiting for their check, and when each peer was last asked for its own.
    trades: history::TradeInbox,
}

/// The node's market service. Cheap to clone.
#[derive(Clone)]
pub struct Market {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Market {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Market")
            .field("network", &self.inner.dir.config().network.name)
            .finish_non_exhaustive()
    }
}

impl Market {
    /// The market service of the node in `dir`.
    pub fn new(
        dir: Arc<DataDir>,
        store: Store,
        probe: Arc<GpuProbe>,
        workloads: Workloads,
        tasks: crate::Tasks,
    ) -> Self {
        let wallet = crate::chain::to_keypair(dir.wallet()).map_err(|e| e.to_string());
        let chain = match crate::chain::chain_settings(&dir) {
            Ok((url, Some(mint))) => Ok(Chain {
                client: ChainClient::new(&url),
                mint,
            }),
            Ok((url, None)) => Err(format!(
                "no MOLT mint known for {url}: set chain.molt_mint in config.toml"
            )),
            Err(error) => Err(error.to_string()),
        };
        let verifier =
            Verifier::new().with_max_clock_skew(dir.config().attestation.max_clock_skew());
        let book = OrderBook::new(&dir.config().network.name);
        Self {
            inner: Arc::new(Inner {
                dir,
                store,
                probe,
                workloads,
                tasks,
                verifier,
                wallet,
                chain,
                book: Mutex::new(book),
                mesh: OnceLock::new(),
                published: Mutex::default(),
                locks: driver::LeaseLocks::default(),
                admission: tokio::sync::Mutex::new(()),
                workload_specs: Mutex::default(),
                settlements: Mutex::default(),
                asked: Mutex::default(),
                reputation: Mutex::default(),
                offers_changed: tokio::sync::Notify::new(),
                not_selling: Mutex::default(),
                republish_at_ms: std::sync::atomic::AtomicU64::new(0),
                trades: history::TradeInbox::default(),
            }),
        }
    }

    /// Connects the service to the running mesh (offers are published and leases negotiated
    /// through it).
    pub fn attach(&self, mesh: MeshHandle) {
        let _ = self.inner.mesh.set(mesh);
    }

    fn mesh(&self) -> Result<&MeshHandle, InvokeFailure> {
        self.inner
            .mesh
            .get()
            .ok_or_else(|| failure(ErrorCode::Unavailable, "the node has not joined the mesh"))
    }

    fn chain(&self) -> Result<&Chain, InvokeFailure> {
        self.inner
            .chain
            .as_ref()
            .map_err(|e| failure(ErrorCode::Unavailable, e.clone()))
    }

    fn wallet(&self) -> Result<&Keypair, InvokeFailure> {
        self.inner
            .wallet
            .as_ref()
            .map_err(|e| failure(ErrorCode::Internal, e.clone()))
    }

    fn wallet_address(&self) -> Result<Pubkey, InvokeFailure> {
        Ok(solana_signer::Signer::pubkey(self.wallet()?))
    }

    fn arbiter(&self) -> Result<String, InvokeFailure> {
        self.inner
            .dir
            .config()
            .market
            .arbiter
            .clone()
            .ok_or_else(|| {
                failure(
                    ErrorCode::Unavailable,
                    "no market.arbiter is configured on this node: leases need one",
                )
            })
    }

    fn arbiter_peer(&self) -> Option<String> {
        self.inner.dir.config().market.arbiter_peer.clone()
    }

    fn local_peer(&self) -> PeerId {
        self.inner.dir.identity().peer_id()
    }

    /// The protocol's timings from the config.
    fn policy(&self) -> LeasePolicy {
        let config = self.inner.dir.config();
        LeasePolicy {
            dispute_after_ms: config.market.dispute_after_secs * 1000,
            unreachable_grace_ms: config.market.unreachable_grace_secs * 1000,
            clock_slack_ms: u64::try_from(config.attestation.max_clock_skew().as_millis())
                .unwrap_or(u64::MAX)
                .min(LeasePolicy::default().clock_slack_ms),
            ..LeasePolicy::default()
        }
    }

    /// Signs `payload` with the node key and the store's next sequence, valid for `ttl`.
    async fn sign<T: SignedPayload + Send + 'static>(
        &self,
        ttl: Duration,
        payload: T,
    ) -> Result<Signed<T>, InvokeFailure> {
        let dir = Arc::clone(&self.inner.dir);
        let envelope = self
            .inner
            .store
            .run(move |store| crate::seal_next(&dir, store, ttl, &payload))
            .await?;
        let verified = self
            .inner
            .verifier
            .verify_ignoring_time(&envelope.to_bytes())
            .map_err(|e| failure(ErrorCode::Internal, format!("own envelope: {e}")))?;
        Signed::from_verified(&verified)
            .map_err(|e| failure(ErrorCode::Internal, format!("own envelope: {e}")))
    }

    /// Verifies a base-64 envelope of kind `T` from a peer, signed by `signer` when given.
    fn open_signed<T: SignedPayload>(
        &self,
        what: &str,
        text: &str,
        signer: Option<&PeerId>,
    ) -> Result<Signed<T>, InvokeFailure> {
        let bytes = decode_blob(what, text)?;
        let signed = Signed::<T>::verify(&self.inner.verifier, &bytes, now_ms())
            .map_err(|e| failure(ErrorCode::InvalidParams, format!("{what}: {e}")))?;
        if let Some(signer) = signer
            && signed.signer_peer() != Some(*signer)
        {
            return Err(failure(
                ErrorCode::Unauthorized,
                format!("{what} is not signed by {signer}"),
            ));
        }
        Ok(signed)
    }

    /// Invokes command `C` on a peer under the lease deadline, and decodes its answer with the
    /// command's definition: an answer that does not decode fails like a refusal would.
    async fn call_peer<C: Command>(
        &self,
        peer: &str,
        params: &C::Params,
    ) -> Result<C::Answer, InvokeFailure> {
        let peer_id: PeerId = peer
            .parse()
            .map_err(|_| failure(ErrorCode::Internal, format!("{peer:?} is not a peer id")))?;
        let params = serde_json::to_value(params)
            .map_err(|e| failure(ErrorCode::Internal, format!("cannot encode: {e}")))?;
        let request =
            claw_mesh::InvokeRequest::new(C::NAME, LEASE_CALL_DEADLINE).with_params(params);
        let answer = self
            .mesh()?
            .invoke(peer_id, request)
            .await
            .map_err(|e| InvokeFailure::new(e.code, format!("{peer}: {}", e.message)))?;
        C::decode(answer).map_err(|e| InvokeFailure::new(e.code, format!("{peer}: {}", e.message)))
    }

    /// The node's GPUs or cordon changed outside the market: publish its offers again now.
    pub fn offers_changed(&self) {
        self.inner.offers_changed.notify_one();
    }

    /// A peer connected: publish the offers again shortly (once its subscriptions are known), so
    /// that its book has them without waiting for their renewal, and catch up on the trades it
    /// has seen settle.
    pub fn peer_connected(&self, peer: PeerId) {
        self.inner
            .republish_at_ms
            .store(now_ms() + 1500, std::sync::atomic::Ordering::Relaxed);
        self.catch_up_trades(peer);
    }

    /// Takes a verified offer from gossip into the book. Offers for other networks or that do
    /// not validate are dropped.
    pub fn ingest_offer(&self, verified: &VerifiedEnvelope) {
        let Ok(offer) = verified.open::<Offer>() else {
            return;
        };
        let envelope = verified.envelope();
        let attested =
            !offer.simulated && self.backed_by_real_gpus(&verified.signer_peer_id(), &offer);
        let entry = BookEntry {
            provider: *envelope.signer_bytes(),
            seq: envelope.seq(),
            issued_ms: envelope.issued_at_ms(),
            expires_ms: envelope.expires_at_ms(),
            attested,
            offer,
        };
        let mut book = self
            .inner
            .book
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Err(error) = book.insert(entry) {
            tracing::debug!(%error, "offer not taken into the book");
        }
    }

    /// Whether the provider's verified announcement shows real (NVML) GPUs of the offer's model.
    fn backed_by_real_gpus(&self, provider: &PeerId, offer: &Offer) -> bool {
        let Some(mesh) = self.inner.mesh.get() else {
            return false;
        };
        mesh.fleet().iter().any(|member| {
            member.peer_id == *provider
                && member
                    .announcement
                    .inventory
                    .gpus
                    .iter()
                    .any(|g| !g.simulated && g.model == offer.gpu_model)
        })
    }

    fn reputation_of(&self, provider: &[u8; 32]) -> u32 {
        self.inner
            .reputation
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .of(provider)
            .score()
    }

    /// Periodic work: publishes or renews offers, and moves every open lease on (deadlines,
    /// checkpoints, settlements, and any step a crash interrupted). Errors are logged; the next
    /// tick tries again.
    pub async fn tick(&self) {
        {
            let mut book = self
                .inner
                .book
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            book.prune(now_ms());
        }
        if let Err(error) = self.leases_tick().await {
            tracing::warn!(%error, "lease upkeep");
        }
        if let Err(error) = self.publish_offers().await {
            tracing::debug!(%error, "offers not published");
        }
        self.sync_book().await;
    }

    /// Ticks every open lease not being worked on by a command right now, one task each, so
    /// that one slow lease never delays another.
    async fn leases_tick(&self) -> Result<(), InvokeFailure> {
        let records = self.inner.store.run(Store::leases).await?;
        let mut ticks = tokio::task::JoinSet::new();
        for record in records
            .into_iter()
            // A provider's lapsed reservation is open until it is forgotten (a crash may have
            // come in between).
            .filter(|r| {
                r.state.is_open() || (r.state == LeaseState::Expired && r.side == Side::Provider)
            })
            .filter(|r| !self.inner.locks.is_busy(&r.lease_id))
        {
            let market = self.clone();
            ticks.spawn(async move {
                let lease = record.lease_id.clone();
                let outcome = match record.side {
                    Side::Provider => market.provider_tick(&record).await,
                    Side::Buyer => market.drive(&lease, claw_market::lease::Input::Tick).await.map(|_| ()),
                };
                if let Err(error) = outcome {
                    tracing::debug!(lease = %lease, error = %error.message, "lease not moved on this tick");
                }
            });
        }
        while ticks.join_next().await.is_some() {}
        let now = now_ms();
        self.inner
            .store
            .run(move |store| store.prune_lapses(now))
            .await?;
        Ok(())
    }

    /// Asks providers that announce free GPUs but have no offer in the book for their current
    /// signed offers (gossip does not replay what was published before this node joined). Each
    /// provider is asked at most every 30 s; what it answers is verified like gossip.
    async fn sync_book(&self) {
        let Some(mesh) = self.inner.mesh.get() else {
            return;
        };
        let now = now_ms();
        let local = self.local_peer();
        let known: std::collections::HashSet<[u8; 32]> = {
            let book = self
                .inner
                .book
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            book.offers().iter().map(|e| e.provider).collect()
        };
        let fleet = mesh.fleet();
        let missing: Vec<PeerId> = fleet
            .iter()
            .filter(|m| m.peer_id != local && m.announcement.free_gpu_count() > 0)
            .filter(|m| !m.announcement.cordoned)
            .map(|m| m.peer_id)
            .filter(|peer| {
                claw_attestation::ed25519_key_of(peer).is_some_and(|key| !known.contains(&key))
            })
            .collect();
        {
            // Only peers in the view are remembered: the map is as bounded as the view.
            let members: std::collections::HashSet<PeerId> =
                fleet.iter().map(|m| m.peer_id).collect();
            self.inner
                .asked
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|peer, _| members.contains(peer));
        }
        for peer in missing {
            {
                let asked = self
                    .inner
                    .asked
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if asked.get(&peer).is_some_and(|sync| now < sync.next_ms) {
                    continue;
                }
            }
            let request =
                claw_mesh::InvokeRequest::new(MarketOffersSigned::NAME, Duration::from_secs(3));
            let answer = mesh
                .invoke(peer, request)
                .await
                .and_then(MarketOffersSigned::decode);
            {
                let mut asked = self
                    .inner
                    .asked
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                // An answer with offers in it keeps the provider at the usual pace; no answer,
                // or one with none (a node with free GPUs that does not sell), makes the wait
                // grow: its offers, once it sells, reach this node by gossip.
                let fruitless = if answer.as_ref().is_ok_and(|a| !a.offers.is_empty()) {
                    0
                } else {
                    asked.get(&peer).map_or(0, |sync| sync.fruitless) + 1
                };
                asked.insert(
                    peer,
                    BookSync {
                        next_ms: next_book_sync(now, fruitless),
                        fruitless,
                    },
                );
            }
            let Ok(answer) = answer else {
                continue;
            };
            for text in answer.offers.iter().take(16) {
                let Ok(bytes) = decode_blob("offer", text) else {
                    continue;
                };
                match self.inner.verifier.verify_at(&bytes, None, now_ms()) {
                    Ok(verified)
                        if verified.signer_peer_id() == peer
                            && verified.envelope().kind()
                                == claw_attestation::PayloadKind::Offer =>
                    {
                        self.ingest_offer(&verified);
                    }
                    Ok(_) => tracing::warn!(%peer, "a provider answered an offer it did not sign"),
                    Err(error) => {
                        tracing::warn!(%peer, %error, "a provider answered an invalid offer")
                    }
                }
            }
        }
    }

    /// `market.offers.signed`: this node's current offers, as the signed envelopes it gossiped.
    pub fn signed_offers(&self) -> SignedOffers {
        let published = self
            .inner
            .published
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        SignedOffers {
            offers: published
                .values()
                .filter(|p| !p.offer.withdrawn)
                .map(|p| p.envelope.clone())
                .collect(),
        }
    }

    /// Runs [`Market::tick`] every `interval`, and publishes offers as soon as GPUs are taken or
    /// freed by a lease.
    pub async fn run(self, interval: Duration) {
        self.inner
            .tasks
            .spawn_service(self.clone().run_trade_inbox());
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.tick().await,
                () = self.inner.offers_changed.notified() => {
                    if let Err(error) = self.publish_offers().await {
                        tracing::debug!(%error, "offers not published");
                    }
                }
            }
        }
    }

    /// `market.offers`: the book, cheapest first, filtered.
    pub fn offers(&self, params: OffersParams) -> Result<OfferListing, InvokeFailure> {
        let max_price = params
            .max_price
            .as_deref()
            .map(str::parse::<claw_market::Molt>)
            .transpose()
            .map_err(|e| failure(ErrorCode::InvalidParams, format!("max_price: {e}")))?;
        let names: HashMap<PeerId, String> = self
            .inner
            .mesh
            .get()
            .map(|m| {
                m.fleet()
                    .into_iter()
                    .map(|f| (f.peer_id, f.announcement.name))
                    .collect()
            })
            .unwrap_or_default();
        let now = now_ms();
        let book = self
            .inner
            .book
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut entries: Vec<&BookEntry> = book
            .offers()
            .into_iter()
            .filter(|e| e.expires_ms > now)
            .filter(|e| {
                params
                    .model
                    .as_ref()
                    .is_none_or(|m| e.offer.gpu_model.contains(m.as_str()))
            })
            .filter(|e| max_price.is_none_or(|p| e.offer.price_per_gpu_hour <= p))
            .filter(|e| params.min_gpus.is_none_or(|n| e.offer.gpus >= n))
            .collect();
        entries.sort_by_key(|e| (e.offer.price_per_gpu_hour, e.issued_ms, e.provider));
        let offers: Vec<BookOffer> = entries
            .into_iter()
            .take(params.limit.unwrap_or(100).min(1000))
            .map(|e| {
                let peer = claw_attestation::SignerKey(e.provider).peer_id();
                BookOffer {
                    provider: peer.map(|p| p.to_string()),
                    node: peer.and_then(|p| names.get(&p).cloned()),
                    offer_id: e.offer.offer_id,
                    gpu_model: e.offer.gpu_model.clone(),
                    gpus: e.offer.gpus,
                    vram_mib: e.offer.vram_mib,
                    price_per_gpu_hour: e.offer.price_per_gpu_hour.to_string(),
                    min_hours: e.offer.min_hours,
                    max_hours: e.offer.max_hours,
                    region: e.offer.region.clone(),
                    interruptible: e.offer.interruptible,
                    simulated: e.offer.simulated,
                    cpu_millis_per_gpu: e.offer.cpu_millis_per_gpu,
                    memory_mib_per_gpu: e.offer.memory_mib_per_gpu,
                    pids_limit: e.offer.pids_limit,
                    attested: e.attested,
                    reputation: self.reputation_of(&e.provider),
                    wallet: e.offer.wallet.clone(),
                    expires_ms: e.expires_ms,
                }
            })
            .collect();
        Ok(OfferListing {
            network: self.inner.dir.config().network.name.clone(),
            offers,
        })
    }

    /// `market.leases`: this node's leases on both sides, newest first.
    pub async fn leases(&self, params: LeasesParams) -> Result<LeaseListing, InvokeFailure> {
        let state: Option<LeaseState> = params
            .state
            .as_deref()
            .map(|s| serde_json::from_value(json!(s)))
            .transpose()
            .map_err(|_| failure(ErrorCode::InvalidParams, "state: not a lease state"))?;
        let side = params.side.map(|side| match side {
            LeaseSide::Provider => Side::Provider,
            LeaseSide::Buyer => Side::Buyer,
        });
        let mut records = self.inner.store.run(Store::leases).await?;
        records.reverse();
        let arbiter_peer = self.arbiter_peer();
        let leases = records
            .iter()
            .filter(|r| state.is_none_or(|s| r.state == s))
            .filter(|r| side.is_none_or(|s| r.side == s))
            .map(|r| summary(r, arbiter_peer.as_deref()))
            .collect();
        Ok(LeaseListing { leases })
    }

    /// `wallet.balance`: the node wallet's SOL and MOLT.
    pub async fn balance(&self) -> Result<WalletHoldings, InvokeFailure> {
        let chain = self.chain()?;
        let wallet = solana_signer::Signer::pubkey(self.wallet()?);
        let lamports = chain
            .client
            .sol_balance(&wallet)
            .await
            .map_err(chain_failure)?;
        let molt = chain
            .mint
            .balance(&chain.client, &wallet)
            .await
            .map_err(chain_failure)?;
        Ok(WalletHoldings {
            address: wallet.to_string(),
            lamports,
            sol: format!(
                "{}.{:09}",
                lamports / 1_000_000_000,
                lamports % 1_000_000_000
            ),
            molt: molt.to_string(),
            molt_base_units: molt.base_units(),
            rpc_url: chain.client.url().to_owned(),
        })
    }
}

/// Who must act next on an open lease, in words.
fn waiting_for(record: &LeaseRecord, arbiter_peer: Option<&str>) -> Option<String> {
    let arbiter = || {
        let wallet = record
            .terms
            .as_ref()
            .map_or("?", |t| t.payload().arbiter_wallet.as_str());
        match arbiter_peer {
            Some(peer) => format!("the arbiter (wallet {wallet}, peer {peer}) to rule"),
            None => format!(
                "the arbiter (wallet {wallet}) to rule: no market.arbiter_peer is configured here to reach it; set it, or ask the arbiter's operator to act"
            ),
        }
    };
    Some(match (record.state, record.side) {
        (LeaseState::Requested | LeaseState::Accepted, _) => {
            "the buyer to fund the lease".to_owned()
        }
        (LeaseState::Funded, _) => "the provider to start the workload".to_owned(),
        (LeaseState::Completed, _) if record.is_stream() => "the stream's last pull".to_owned(),
        (LeaseState::Completed, Side::Provider) => {
            "the buyer's co-signature (the arbiter after market.dispute_after_secs)".to_owned()
        }
        (LeaseState::Completed, Side::Buyer) => "the provider's settlement to co-sign".to_owned(),
        (LeaseState::Disputed, _) => arbiter(),
        _ => return None,
    })
}

/// The lease as the market commands answer it.
fn summary(record: &LeaseRecord, arbiter_peer: Option<&str>) -> Lease {
    let terms = record.terms.as_ref().map(Signed::payload);
    let escrow = terms.and_then(|t| t.escrow().ok().flatten());
    let settled = record.settlement.as_ref();
    // The split is shown once the lease ended (its final checkpoint fixes it).
    let release = record
        .release()
        .filter(|_| !record.is_stream() && record.ending.is_some());
    let pulled = record.stream.as_ref().map(|s| s.pulled);
    Lease {
        lease_id: record.lease_id.to_string(),
        side: record.side,
        state: record.state,
        counterparty: record.counterparty.clone(),
        gpus: record.gpus.clone(),
        gpu_model: terms.map(|t| t.gpu_model.clone()),
        simulated: terms.map(|t| t.simulated),
        hours: terms.map(|t| t.hours),
        price_per_gpu_hour: terms.map(|t| t.price_per_gpu_hour.to_string()),
        amount: terms.map(|t| t.amount.to_string()),
        payment: terms.map(|t| t.payment),
        pulled: record
            .is_stream()
            .then(|| pulled.unwrap_or_default().to_string()),
        multisig: escrow.map(|e| e.multisig.to_string()),
        vault: escrow.map(|e| e.vault.to_string()),
        funding_signature: record.funding.as_ref().map(|f| f.signature.clone()),
        funded_at_ms: record.funded_at_ms(),
        workload_id: record.workload_id.clone(),
        started_ms: record.started_ms,
        checkpoint_seq: record.checkpoint.as_ref().map(|c| c.payload().seq),
        served_secs: record
            .ending
            .map(|e| e.served_secs)
            .or_else(|| record.checkpoint.as_ref().map(|c| c.payload().served_secs)),
        to_provider: settled
            .map(|s| s.to_provider)
            .or(release.map(|r| r.to_provider))
            .or(pulled)
            .map(|m| m.to_string()),
        to_buyer: settled
            .map(|s| s.to_buyer)
            .or(release.map(|r| r.to_buyer))
            .map(|m| m.to_string()),
        settlement_signature: settled.map(|s| s.signature.clone()),
        reason: record.reason.clone(),
        waiting_for: waiting_for(record, arbiter_peer),
        created_ms: record.created_ms,
        history: record
            .history
            .iter()
            .map(|(state, at)| (*state, *at))
            .collect(),
    }
}

/// When a provider in the view may next be asked for its offers by [`Market::sync_book`].
#[derive(Debug, Clone, Copy)]
struct BookSync {
    next_ms: u64,
    /// Asks in a row that brought no offer: unanswered, or answered with none.
    fruitless: u32,
}

/// How often a provider that answers with offers is asked for them.
const BOOK_SYNC_EVERY_MS: u64 = 30_000;
/// The longest wait before a provider whose asks bring nothing is asked again.
const BOOK_SYNC_MAX_MS: u64 = 30 * 60_000;

/// When to ask a provider again after `fruitless` asks in a row that brought no offer: 30 s
/// after one that did, doubling with each fruitless one up to 30 min. The addresses a provider
/// announces are its own word: one that announces addresses leading nowhere (or to someone
/// else's machine) is dialled by each node a few times, then twice an hour, not every 30 s. And
/// a node with free GPUs that does not sell is not asked by every node every 30 s (which held a
/// connection open between every two nodes of a fleet).
fn next_book_sync(now_ms: u64, fruitless: u32) -> u64 {
    let wait = BOOK_SYNC_EVERY_MS
        .saturating_mul(1u64 << fruitless.min(16))
        .min(BOOK_SYNC_MAX_MS);
    now_ms.saturating_add(wait)
}

#[cfg(test)]
mod tests {
    use super::{BOOK_SYNC_EVERY_MS, BOOK_SYNC_MAX_MS, next_book_sync};

    #[test]
    fn a_provider_whose_asks_bring_no_offer_is_asked_ever_less_often() {
        assert_eq!(next_book_sync(1_000, 0), 1_000 + BOOK_SYNC_EVERY_MS);
        assert_eq!(next_book_sync(1_000, 1), 1_000 + 2 * BOOK_SYNC_EVERY_MS);
        assert_eq!(next_book_sync(1_000, 3), 1_000 + 8 * BOOK_SYNC_EVERY_MS);
        assert_eq!(next_book_sync(1_000, 6), 1_000 + BOOK_SYNC_MAX_MS);
        assert_eq!(next_book_sync(1_000, u32::MAX), 1_000 + BOOK_SYNC_MAX_MS);
        assert_eq!(next_book_sync(u64::MAX, 2), u64::MAX);
    }
}
