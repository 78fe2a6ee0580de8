//! The node's part in the MOLT market: the order book built from gossip, the offers this node
//! publishes for its free GPUs, and leases on both sides.
//!
//! A lease is negotiated over the mesh's request-response commands (`market.lease.*`, answered
//! by the provider for the buyer that signed the bid) and settled on chain through the escrow in
//! `claw_market::settlement`. Both sides persist every step in the store before they answer or
//! send anything, so a `kill -9` of either side at any point is picked up again by the periodic
//! [`Market::tick`], and a settlement is never paid twice (it is looked up on chain first).

mod arbiter;
mod buyer;
mod provider;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use claw_attestation::{GpuProbe, SignedPayload, VerifiedEnvelope, Verifier, unix_millis};
use claw_market::book::{BookEntry, OrderBook};
use claw_market::lease::{LeaseReceipt, LeaseState, LeaseTerms};
use claw_market::order::Offer;
use claw_market::settlement::{ChainClient, Escrow, EscrowTerms, MoltMint};
use claw_mesh::{ErrorCode, InvokeFailure, MeshHandle, PeerId};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use solana_keypair::Keypair;
use solana_pubkey::Pubkey;

pub use arbiter::ArbitrateParams;
pub use buyer::{
    BidParams, CancelParams, LeaseWorkload, PaymentChoice, ReceiptsParams, ReputationParams,
    RevokeParams,
};
pub use provider::{EndParams, FundParams, LeaseRequestParams, SellParams, StatusParams};

use crate::store::Store;
use crate::workloads::Workloads;
use crate::{DataDir, StoreError};

/// Largest signed envelope or transaction accepted in a market command, base-64 text.
const MAX_BLOB_CHARS: usize = 16 * 1024;
/// How long a buyer waits for a provider's answer to a lease step.
const LEASE_CALL_DEADLINE: Duration = Duration::from_secs(30);
/// How long a lease's signed terms and receipt stay verifiable beyond the lease itself.
const LEASE_PROOF_SLACK: Duration = Duration::from_secs(30 * 86_400);

/// Which side of a lease this node is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// This node rents its GPUs out.
    Provider,
    /// This node pays for the GPUs.
    Buyer,
}

/// A lease as this node keeps it. Written before every step is answered or sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseRecord {
    /// The lease id.
    pub lease_id: String,
    /// This node's side.
    pub side: Side,
    /// Where the lease is.
    pub state: LeaseState,
    /// The other party's peer id.
    pub counterparty: String,
    /// The GPUs reserved (provider side: the allocation; buyer side: as the terms say).
    pub gpus: Vec<String>,
    /// The provider-signed terms, once accepted.
    pub terms: Option<LeaseTerms>,
    /// The terms envelope, base-64, as signed.
    pub terms_envelope: Option<String>,
    /// The escrow's multisig (base-58), once chosen.
    pub multisig: Option<String>,
    /// The escrow's vault (base-58), once chosen.
    pub vault: Option<String>,
    /// The funding transaction's signature.
    pub funding_signature: Option<String>,
    /// The workload running for the lease (on the provider).
    pub workload_id: Option<String>,
    /// When the workload started, Unix ms.
    pub started_ms: Option<u64>,
    /// The provider-signed receipt, once completed.
    pub receipt: Option<LeaseReceipt>,
    /// The receipt envelope, base-64.
    pub receipt_envelope: Option<String>,
    /// The settlement (or refund) transaction's signature.
    pub settlement_signature: Option<String>,
    /// Streaming: MOLT base units pulled so far, as last read from the chain.
    #[serde(default)]
    pub pulled: u64,
    /// Streaming: when the provider last pulled, Unix ms.
    #[serde(default)]
    pub last_pull_ms: Option<u64>,
    /// Why the lease is where it is, when that needs saying.
    pub reason: Option<String>,
    /// When it was recorded, Unix ms.
    pub created_ms: u64,
    /// Each state it entered, with when.
    pub history: Vec<(LeaseState, u64)>,
}

impl LeaseRecord {
    fn new(lease_id: String, side: Side, counterparty: String) -> Self {
        let now = now_ms();
        Self {
            lease_id,
            side,
            state: LeaseState::Requested,
            counterparty,
            gpus: Vec::new(),
            terms: None,
            terms_envelope: None,
            multisig: None,
            vault: None,
            funding_signature: None,
            workload_id: None,
            started_ms: None,
            receipt: None,
            receipt_envelope: None,
            settlement_signature: None,
            pulled: 0,
            last_pull_ms: None,
            reason: None,
            created_ms: now,
            history: vec![(LeaseState::Requested, now)],
        }
    }

    /// A provider-side lease just requested, for store tests.
    #[cfg(test)]
    pub(crate) fn for_tests(lease_id: &str) -> Self {
        Self::new(lease_id.to_owned(), Side::Provider, "peer".to_owned())
    }

    /// Moves the lease to `next`; a move that is not allowed is refused, a move to where it is
    /// does nothing.
    fn advance(&mut self, next: LeaseState) -> Result<(), InvokeFailure> {
        if !self.state.may_become(next) {
            return Err(InvokeFailure::new(
                ErrorCode::Conflict,
                format!(
                    "lease {} is {}, it cannot become {next}",
                    self.lease_id, self.state
                ),
            ));
        }
        if self.state != next {
            self.state = next;
            self.history.push((next, now_ms()));
        }
        Ok(())
    }

    /// Whether the lease is paid by streaming.
    fn is_stream(&self) -> bool {
        self.terms
            .as_ref()
            .is_some_and(|t| matches!(t.payment, claw_market::lease::Payment::Stream { .. }))
    }

    /// The escrow of this lease, once its terms and addresses are known.
    fn escrow(&self) -> Result<Escrow, InvokeFailure> {
        let (Some(terms), Some(multisig), Some(vault)) = (&self.terms, &self.multisig, &self.vault)
        else {
            return Err(InvokeFailure::new(
                ErrorCode::Conflict,
                format!("lease {} has no escrow yet", self.lease_id),
            ));
        };
        Ok(Escrow {
            terms: EscrowTerms {
                lease_id: self.lease_id.clone(),
                buyer: address(&terms.buyer_wallet)?,
                provider: address(&terms.provider_wallet)?,
                arbiter: address(&terms.arbiter_wallet)?,
                amount: terms.amount,
            },
            multisig: address(multisig)?,
            vault: address(vault)?,
        })
    }

    /// The summary the market commands answer with.
    fn summary(&self) -> Value {
        json!({
            "lease_id": self.lease_id,
            "side": self.side,
            "state": self.state,
            "counterparty": self.counterparty,
            "gpus": self.gpus,
            "gpu_model": self.terms.as_ref().map(|t| &t.gpu_model),
            "simulated": self.terms.as_ref().map(|t| t.simulated),
            "hours": self.terms.as_ref().map(|t| t.hours),
            "price_per_gpu_hour": self.terms.as_ref().map(|t| t.price_per_gpu_hour.to_string()),
            "amount": self.terms.as_ref().map(|t| t.amount.to_string()),
            "payment": self.terms.as_ref().map(|t| t.payment),
            "pulled": self.is_stream().then(|| claw_market::Molt::from_base_units(self.pulled).to_string()),
            "vault": self.vault,
            "funding_signature": self.funding_signature,
            "workload_id": self.workload_id,
            "started_ms": self.started_ms,
            "served_secs": self.receipt.as_ref().map(|r| r.served_secs),
            "to_provider": self.receipt.as_ref().map(|r| r.to_provider.to_string()),
            "to_buyer": self.receipt.as_ref().map(|r| r.to_buyer.to_string()),
            "settlement_signature": self.settlement_signature,
            "reason": self.reason,
            "created_ms": self.created_ms,
            "history": self.history,
        })
    }
}

fn now_ms() -> u64 {
    unix_millis(SystemTime::now())
}

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

fn store_failure(error: StoreError) -> InvokeFailure {
    failure(ErrorCode::Internal, error.to_string())
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

/// Verifies a base-64 envelope of kind `T` signed by `signer`, and opens it.
fn open_signed<T: SignedPayload>(
    verifier: &Verifier,
    what: &str,
    text: &str,
    signer: &PeerId,
) -> Result<(T, VerifiedEnvelope), InvokeFailure> {
    let bytes = decode_blob(what, text)?;
    let verified = verifier
        .verify_at(&bytes, None, now_ms())
        .map_err(|e| failure(ErrorCode::InvalidParams, format!("{what}: {e}")))?;
    if verified.signer_peer_id() != *signer {
        return Err(failure(
            ErrorCode::Unauthorized,
            format!(
                "{what} is signed by {}, not {signer}",
                verified.signer_peer_id()
            ),
        ));
    }
    let payload = verified
        .open::<T>()
        .map_err(|e| failure(ErrorCode::InvalidParams, format!("{what}: {e}")))?;
    Ok((payload, verified))
}

/// Where MOLT lives for this node.
struct Chain {
    client: ChainClient,
    mint: MoltMint,
}

impl Chain {
    /// Checks on chain that `escrow` holds its amount in MOLT under a 2-of-3 multisig of exactly
    /// its three parties; `CONFLICT` says what is wrong when it does not.
    async fn verify_escrow(&self, escrow: &Escrow) -> Result<(), InvokeFailure> {
        escrow
            .verify_funded(&self.client, &self.mint)
            .await
            .map_err(|e| {
                failure(
                    ErrorCode::Conflict,
                    format!("the escrow is not funded as the terms say: {e}"),
                )
            })
    }
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
    verifier: Verifier,
    wallet: Result<Keypair, String>,
    chain: Result<Chain, String>,
    book: Mutex<OrderBook>,
    mesh: OnceLock<MeshHandle>,
    published: Mutex<HashMap<String, Published>>,
    /// Leases a command is working on right now; the periodic upkeep leaves them alone.
    busy: Mutex<std::collections::HashSet<String>>,
    /// When each provider was last asked for its offers, Unix ms.
    asked: Mutex<HashMap<PeerId, u64>>,
    /// What this node knows of each provider's record: its own leases' outcomes, replaced by the
    /// receipts checked on chain whenever `market.reputation` asks.
    reputation: Mutex<HashMap<[u8; 32], claw_market::lease::Reputation>>,
    /// Serialises lease steps on this node, so that two calls for one lease never interleave.
    steps: tokio::sync::Mutex<()>,
    offers_changed: tokio::sync::Notify,
    /// When set (Unix ms), offers are published again at that time even if unchanged: a peer
    /// joined after they were last published, and gossip does not replay.
    republish_at_ms: std::sync::atomic::AtomicU64,
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
                verifier,
                wallet,
                chain,
                book: Mutex::new(book),
                mesh: OnceLock::new(),
                published: Mutex::default(),
                asked: Mutex::default(),
                busy: Mutex::default(),
                reputation: Mutex::default(),
                steps: tokio::sync::Mutex::new(()),
                offers_changed: tokio::sync::Notify::new(),
                republish_at_ms: std::sync::atomic::AtomicU64::new(0),
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

    fn local_peer(&self) -> PeerId {
        self.inner.dir.identity().peer_id()
    }

    async fn on_store<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, InvokeFailure> {
        let store = self.inner.store.clone();
        tokio::task::spawn_blocking(move || work(&store))
            .await
            .map_err(|e| failure(ErrorCode::Internal, format!("store task failed: {e}")))?
            .map_err(store_failure)
    }

    async fn save(&self, record: &LeaseRecord) -> Result<(), InvokeFailure> {
        let record = record.clone();
        self.on_store(move |store| store.put_lease(&record)).await
    }

    async fn load(&self, lease_id: &str) -> Result<LeaseRecord, InvokeFailure> {
        let id = lease_id.to_owned();
        self.on_store(move |store| store.lease(&id))
            .await?
            .ok_or_else(|| failure(ErrorCode::NotFound, format!("no lease {lease_id} here")))
    }

    /// A settlement of `escrow` paying `release`, fees paid by `other_signer`, signed for the
    /// multisig by this node's wallet and `other_signer`, with this wallet's signature only: the
    /// wire form, base-64, for `other_signer` to check, co-sign and send.
    async fn half_signed_settlement(
        &self,
        escrow: &Escrow,
        release: claw_market::settlement::Release,
        other_signer: &Pubkey,
    ) -> Result<String, InvokeFailure> {
        let wallet = self.wallet()?;
        let chain = self.chain()?;
        let me = solana_signer::Signer::pubkey(wallet);
        let (blockhash, _) = chain
            .client
            .latest_blockhash()
            .await
            .map_err(chain_failure)?;
        let mut tx = escrow
            .settlement_transaction(
                &chain.mint,
                release,
                other_signer,
                [&me, other_signer],
                blockhash,
            )
            .map_err(chain_failure)?;
        tx.try_partial_sign(&[wallet], blockhash)
            .map_err(|e| failure(ErrorCode::Internal, format!("signing the settlement: {e}")))?;
        let wire =
            bincode1::serialize(&tx).map_err(|e| failure(ErrorCode::Internal, e.to_string()))?;
        Ok(encode_blob(&wire))
    }

    /// Checks a settlement of `escrow` that `other_signer` signed: exactly `release`, fees paid
    /// by this node's wallet, signed for the multisig by `other_signer` and this wallet. Then
    /// adds this wallet's signature and sends it.
    async fn cosign_and_send(
        &self,
        escrow: &Escrow,
        wire: &[u8],
        release: claw_market::settlement::Release,
        other_signer: &Pubkey,
    ) -> Result<solana_signature::Signature, InvokeFailure> {
        let wallet = self.wallet()?;
        let chain = self.chain()?;
        let me = solana_signer::Signer::pubkey(wallet);
        let mut tx = escrow
            .check_settlement(&chain.mint, wire, release, &me, [other_signer, &me])
            .map_err(|e| failure(ErrorCode::Conflict, format!("settlement refused: {e}")))?;
        let blockhash = tx.message.recent_blockhash;
        tx.try_partial_sign(&[wallet], blockhash)
            .map_err(|e| failure(ErrorCode::Internal, format!("co-signing: {e}")))?;
        let (_, last_valid) = chain
            .client
            .latest_blockhash()
            .await
            .map_err(chain_failure)?;
        let landed = chain
            .client
            .submit_signed(&tx, last_valid)
            .await
            .map_err(chain_failure)?;
        Ok(landed.signature)
    }

    /// Marks `lease_id` as worked on by a command until the guard is dropped.
    fn busy(&self, lease_id: &str) -> BusyLease {
        self.inner
            .busy
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(lease_id.to_owned());
        BusyLease {
            market: self.clone(),
            lease_id: lease_id.to_owned(),
        }
    }

    /// Whether a command is working on `lease_id`.
    fn is_busy(&self, lease_id: &str) -> bool {
        self.inner
            .busy
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(lease_id)
    }

    /// Signs `payload` with the node key and the store's next sequence, valid for `ttl`.
    async fn sign<T: SignedPayload + Send + 'static>(
        &self,
        ttl: Duration,
        payload: T,
    ) -> Result<String, InvokeFailure> {
        let dir = Arc::clone(&self.inner.dir);
        let store = self.inner.store.clone();
        let envelope =
            tokio::task::spawn_blocking(move || crate::seal_next(&dir, &store, ttl, &payload))
                .await
                .map_err(|e| failure(ErrorCode::Internal, format!("signing task failed: {e}")))?
                .map_err(store_failure)?;
        Ok(encode_blob(&envelope.to_bytes()))
    }

    /// The node's GPUs or cordon changed outside the market: publish its offers again now.
    pub fn offers_changed(&self) {
        self.inner.offers_changed.notify_one();
    }

    /// A peer connected: publish the offers again shortly (once its subscriptions are known), so
    /// that its book has them without waiting for their renewal.
    pub fn peer_connected(&self) {
        self.inner
            .republish_at_ms
            .store(now_ms() + 1500, std::sync::atomic::Ordering::Relaxed);
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
        let known = self
            .inner
            .reputation
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        known.get(provider).copied().unwrap_or_default().score()
    }

    /// Periodic work: publishes or renews offers, expires lapsed reservations, completes and
    /// settles leases, and picks up any step a crash interrupted. Errors are logged; the next
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
        if let Err(error) = self.provider_tick().await {
            tracing::warn!(%error, "provider lease upkeep");
        }
        if let Err(error) = self.buyer_tick().await {
            tracing::warn!(%error, "buyer lease upkeep");
        }
        if let Err(error) = self.publish_offers().await {
            tracing::debug!(%error, "offers not published");
        }
        self.sync_book().await;
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
        let missing: Vec<PeerId> = mesh
            .fleet()
            .into_iter()
            .filter(|m| m.peer_id != local && m.announcement.free_gpu_count() > 0)
            .filter(|m| !m.announcement.cordoned)
            .map(|m| m.peer_id)
            .filter(|peer| {
                claw_attestation::ed25519_key_of(peer).is_some_and(|key| !known.contains(&key))
            })
            .collect();
        for peer in missing {
            {
                let mut asked = self
                    .inner
                    .asked
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if asked.get(&peer).is_some_and(|at| now < at + 30_000) {
                    continue;
                }
                asked.insert(peer, now);
            }
            let request =
                claw_mesh::InvokeRequest::new("market.offers.signed", Duration::from_secs(3));
            let Ok(answer) = mesh.invoke(peer, request).await else {
                continue;
            };
            for text in answer["offers"].as_array().into_iter().flatten().take(16) {
                let Some(bytes) = text.as_str().and_then(|t| decode_blob("offer", t).ok()) else {
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
    pub fn signed_offers(&self) -> Value {
        let published = self
            .inner
            .published
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let offers: Vec<&String> = published
            .values()
            .filter(|p| !p.offer.withdrawn)
            .map(|p| &p.envelope)
            .collect();
        json!({ "offers": offers })
    }

    /// Runs [`Market::tick`] every `interval`, and publishes offers as soon as GPUs are taken or
    /// freed by a lease.
    pub async fn run(self, interval: Duration) {
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
    pub fn offers(&self, params: OffersParams) -> Result<Value, InvokeFailure> {
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
        let offers: Vec<Value> = entries
            .into_iter()
            .take(params.limit.unwrap_or(100).min(1000))
            .map(|e| {
                let peer = claw_attestation::SignerKey(e.provider).peer_id();
                json!({
                    "provider": peer.map(|p| p.to_string()),
                    "node": peer.and_then(|p| names.get(&p).cloned()),
                    "offer_id": e.offer.offer_id,
                    "gpu_model": e.offer.gpu_model,
                    "gpus": e.offer.gpus,
                    "vram_mib": e.offer.vram_mib,
                    "price_per_gpu_hour": e.offer.price_per_gpu_hour.to_string(),
                    "min_hours": e.offer.min_hours,
                    "max_hours": e.offer.max_hours,
                    "region": e.offer.region,
                    "interruptible": e.offer.interruptible,
                    "simulated": e.offer.simulated,
                    "attested": e.attested,
                    "reputation": self.reputation_of(&e.provider),
                    "wallet": e.offer.wallet,
                    "expires_ms": e.expires_ms,
                })
            })
            .collect();
        Ok(json!({ "network": self.inner.dir.config().network.name, "offers": offers }))
    }

    /// `market.leases`: this node's leases on both sides, newest first.
    pub async fn leases(&self, params: LeasesParams) -> Result<Value, InvokeFailure> {
        let state: Option<LeaseState> = params
            .state
            .as_deref()
            .map(|s| serde_json::from_value(json!(s)))
            .transpose()
            .map_err(|_| failure(ErrorCode::InvalidParams, "state: not a lease state"))?;
        let mut records = self.on_store(Store::leases).await?;
        records.reverse();
        let leases: Vec<Value> = records
            .iter()
            .filter(|r| state.is_none_or(|s| r.state == s))
            .filter(|r| params.side.is_none_or(|s| r.side == s))
            .map(LeaseRecord::summary)
            .collect();
        Ok(json!({ "leases": leases }))
    }

    /// `wallet.balance`: the node wallet's SOL and MOLT.
    pub async fn balance(&self) -> Result<Value, InvokeFailure> {
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
        Ok(json!({
            "address": wallet.to_string(),
            "lamports": lamports,
            "sol": format!("{}.{:09}", lamports / 1_000_000_000, lamports % 1_000_000_000),
            "molt": molt.to_string(),
            "molt_base_units": molt.base_units(),
            "rpc_url": chain.client.url(),
        }))
    }
}

/// Keeps a lease out of the periodic upkeep while a command works on it.
struct BusyLease {
    market: Market,
    lease_id: String,
}

impl Drop for BusyLease {
    fn drop(&mut self) {
        self.market
            .inner
            .busy
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.lease_id);
    }
}

/// `market.offers`.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OffersParams {
    /// Only models whose name contains this (e.g. `H100`).
    #[serde(default)]
    pub model: Option<String>,
    /// Only offers at or below this price per GPU-hour, MOLT (e.g. `1.5`).
    #[serde(default)]
    pub max_price: Option<String>,
    /// Only offers of at least this many GPUs on one node.
    #[serde(default)]
    pub min_gpus: Option<u32>,
    /// At most this many offers (default 100).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// `market.leases`.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LeasesParams {
    /// Only leases in this state (`requested`, `accepted`, `funded`, `running`, `completed`,
    /// `settled`, `refunded`, `disputed`, `expired`).
    #[serde(default)]
    pub state: Option<String>,
    /// Only leases where this node is on this side.
    #[serde(default)]
    pub side: Option<Side>,
}
