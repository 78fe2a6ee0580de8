//! The chain itself: LiteSVM with the real SPL Token, Associated Token Account and Memo programs,
//! plus what a cluster has and LiteSVM does not: slots that advance with the clock, a window of
//! recent blockhashes, signature statuses and per-address history.
//!
//! A transaction lands at most once. Its signature is refused while its blockhash is usable
//! (a cluster's status cache), and the blockhashes are this chain's own: each one hashes a secret
//! drawn when the process starts with the slot, so no blockhash of an earlier run (or of another
//! chain) is ever valid again, and a transaction signed before a restart can never land after it.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use litesvm::LiteSVM;
use litesvm::types::{FailedTransactionMetadata, TransactionMetadata};
use sha2::{Digest as _, Sha256};
use solana_hash::Hash;
use solana_program_pack::Pack as _;
use solana_pubkey::Pubkey;
use solana_signature::Signature;
use solana_transaction::versioned::VersionedTransaction;
use solana_transaction_error::TransactionError;

use crate::events::{AccountDigest, LandedTransaction, Outbox, WatchedAccount};
use crate::journal::{Entry, Journal};

/// Blockhashes stay usable for this many slots, as on a real cluster.
pub const BLOCKHASH_WINDOW: u64 = 150;
/// Signature statuses kept; the oldest are forgotten first.
const MAX_STATUSES: usize = 200_000;
/// Transactions whose full details (`getTransaction`) are kept.
const MAX_DETAILS: usize = 50_000;
/// Signatures kept per address for `getSignaturesForAddress`.
const MAX_HISTORY_PER_ADDRESS: usize = 1_000;
/// Most lamports one airdrop may ask for (1,000 SOL).
pub const MAX_AIRDROP_LAMPORTS: u64 = 1_000_000_000_000;

const MEMO_PROGRAMS: [&str; 2] = [
    "Memo1UhkJRfHyvLMcVucJwxXeuD728EqVDDwQDxFMNo",
    "MemoSq4gqABAXKb96qnH8TysNcWxMyWCqXgDLGmfcHr",
];

/// What the chain recorded about a transaction.
#[derive(Debug, Clone)]
pub(crate) struct TransactionRecord {
    /// The slot it landed in.
    pub slot: u64,
    /// Unix seconds when it landed.
    pub block_time: i64,
    /// Why it failed, if it did.
    pub err: Option<TransactionError>,
    /// Its memos, as Solana's RPC formats them (`[len] text; …`).
    pub memo: Option<String>,
}

/// What `getTransaction` answers about a landed transaction.
#[derive(Debug, Clone)]
pub(crate) struct TransactionDetails {
    /// The transaction as sent; `None` for the faucet's airdrops.
    pub(crate) transaction: Option<VersionedTransaction>,
    /// Fee paid, lamports.
    pub(crate) fee: u64,
    /// Balances of the message's accounts before and after.
    pub(crate) pre_balances: Vec<u64>,
    pub(crate) post_balances: Vec<u64>,
    /// Program logs.
    pub(crate) logs: Vec<String>,
    /// Compute units used.
    pub(crate) compute_units: u64,
}

/// Why a transaction was not executed at all.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SubmitError {
    /// Its blockhash is not among the recent ones.
    #[error("Blockhash not found")]
    BlockhashNotFound,
    /// It ran, but could not be written to the ledger on disk.
    #[error("the chain's ledger could not be written: {0}")]
    Journal(std::io::Error),
    /// It failed; nothing but the fee was charged (and nothing at all when simulated).
    #[error("transaction failed: {err}")]
    Failed {
        /// The error.
        err: TransactionError,
        /// Program logs.
        logs: Vec<String>,
        /// Compute units used.
        compute_units: u64,
    },
}

/// The outcome of a simulation.
#[derive(Debug, Clone)]
pub(crate) struct Simulation {
    /// Why it would fail, if it would.
    pub err: Option<TransactionError>,
    /// Program logs.
    pub logs: Vec<String>,
    /// Compute units it would use.
    pub compute_units: u64,
}

/// The chain's state. Not thread-safe on its own; [`crate::EmbeddedChain`] guards it.
pub(crate) struct Chain {
    svm: LiteSVM,
    slot: u64,
    /// Drawn at start; every blockhash of this run hashes it with its slot.
    blockhash_secret: [u8; 32],
    recent: VecDeque<(Hash, u64)>,
    statuses: HashMap<Signature, TransactionRecord>,
    status_order: VecDeque<Signature>,
    history: HashMap<Pubkey, VecDeque<Signature>>,
    journal: Option<Journal>,
    details: HashMap<Signature, TransactionDetails>,
    detail_order: VecDeque<Signature>,
    /// Events for PubSub subscribers, and the accounts they watch.
    outbox: Outbox,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chain")
            .field("slot", &self.slot)
            .field("transactions", &self.statuses.len())
            .finish()
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Chain {
    /// A fresh chain at slot 0 with the SPL programs loaded.
    pub(crate) fn new() -> Self {
        // Blockhashes are this chain's own, checked here against a window as a cluster does;
        // LiteSVM alone accepts only its latest.
        let svm = LiteSVM::new().with_blockhash_check(false);
        let blockhash_secret: [u8; 32] = rand::random();
        let mut chain = Self {
            recent: VecDeque::from([(blockhash_at(&blockhash_secret, 0), 0)]),
            svm,
            slot: 0,
            blockhash_secret,
            statuses: HashMap::new(),
            status_order: VecDeque::new(),
            history: HashMap::new(),
            journal: None,
            details: HashMap::new(),
            detail_order: VecDeque::new(),
            outbox: Outbox::default(),
        };
        chain.set_clock();
        chain
    }

    /// A chain whose changes are journaled in `ledger`; what the journal holds is replayed first.
    pub(crate) fn open(ledger: &Path) -> std::io::Result<Self> {
        let (journal, entries) = Journal::open(ledger)?;
        let mut chain = Self::new();
        let replayed = entries.len();
        for (slot, entry) in entries {
            // Each slot had its own blockhash; replaying in a fresh one keeps equal transfers of
            // different slots apart.
            if slot > chain.slot {
                chain.slot = slot - 1;
                chain.tick();
            }
            let outcome = match entry {
                Entry::Airdrop { to, lamports } => chain.airdrop(&to, lamports).map(|_| ()),
                Entry::Transaction(bytes) => {
                    match bincode1::deserialize::<VersionedTransaction>(&bytes) {
                        Ok(tx) => chain.execute(tx, true).map(|_| ()),
                        Err(e) => {
                            tracing::error!(%e, "unreadable transaction in the chain journal");
                            continue;
                        }
                    }
                }
            };
            if let Err(error) = outcome {
                tracing::error!(%error, "a journaled change did not replay");
            }
        }
        chain.tick();
        chain.journal = Some(journal);
        if replayed > 0 {
            tracing::info!(replayed, slot = chain.slot, "chain ledger replayed");
        }
        Ok(chain)
    }

    fn journal(&mut self, entry: &Entry) -> Result<(), SubmitError> {
        match &mut self.journal {
            None => Ok(()),
            Some(journal) => journal.append(self.slot, entry).map_err(|e| {
                tracing::error!(error = %e, "the chain ledger could not be written");
                SubmitError::Journal(e)
            }),
        }
    }

    fn set_clock(&mut self) {
        let mut clock = self.svm.get_sysvar::<solana_clock::Clock>();
        clock.slot = self.slot;
        clock.unix_timestamp = unix_now();
        self.svm.set_sysvar(&clock);
    }

    /// Advances one slot: a new blockhash, the clock moved on.
    pub(crate) fn tick(&mut self) {
        self.slot += 1;
        self.svm.expire_blockhash();
        self.set_clock();
        self.recent
            .push_back((blockhash_at(&self.blockhash_secret, self.slot), self.slot));
        while self.recent.len() as u64 > BLOCKHASH_WINDOW {
            self.recent.pop_front();
        }
        self.outbox.push_slot(self.slot);
    }

    /// The events not yet published, and the accounts subscribers watch.
    pub(crate) fn outbox_mut(&mut self) -> &mut Outbox {
        &mut self.outbox
    }

    /// Whether events wait to be published.
    pub(crate) fn has_events(&self) -> bool {
        self.outbox.has_pending()
    }

    /// Starts reporting `address`'s changes in transaction events. Returns its state now and the
    /// sequence number of the last landed transaction: later events carry higher ones.
    pub(crate) fn watch(&mut self, address: &Pubkey) -> (AccountDigest, u64) {
        self.outbox.watch(*address);
        let account = self.svm.get_account(address).unwrap_or_default();
        (AccountDigest::of(&account), self.outbox.sequence())
    }

    /// Undoes one [`Chain::watch`] of `address`.
    pub(crate) fn unwatch(&mut self, address: &Pubkey) {
        self.outbox.unwatch(address);
    }

    pub(crate) fn slot(&self) -> u64 {
        self.slot
    }

    /// The latest blockhash and the last block height it is valid at.
    pub(crate) fn latest_blockhash(&self) -> (Hash, u64) {
        let latest = self.recent.back().map_or_else(
            || blockhash_at(&self.blockhash_secret, self.slot),
            |(hash, _)| *hash,
        );
        (latest, self.slot + BLOCKHASH_WINDOW)
    }

    pub(crate) fn is_blockhash_valid(&self, hash: &Hash) -> bool {
        self.recent.iter().any(|(h, _)| h == hash)
    }

    pub(crate) fn account(&self, address: &Pubkey) -> Option<solana_account::Account> {
        self.svm.get_account(address)
    }

    pub(crate) fn balance(&self, address: &Pubkey) -> u64 {
        self.svm.get_balance(address).unwrap_or(0)
    }

    pub(crate) fn rent_exempt_minimum(&self, len: usize) -> u64 {
        self.svm.minimum_balance_for_rent_exemption(len)
    }

    /// A token account's amount and its mint's decimals; `None` when it is not one.
    pub(crate) fn token_balance(&self, address: &Pubkey) -> Option<(u64, u8)> {
        let account = self.svm.get_account(address)?;
        if account.owner != spl_token_interface::id() {
            return None;
        }
        let token = spl_token_interface::state::Account::unpack(&account.data).ok()?;
        let mint = self.svm.get_account(&token.mint)?;
        let mint = spl_token_interface::state::Mint::unpack(&mint.data).ok()?;
        Some((token.amount, mint.decimals))
    }

    pub(crate) fn details(&self, signature: &Signature) -> Option<&TransactionDetails> {
        self.details.get(signature)
    }

    pub(crate) fn status(&self, signature: &Signature) -> Option<&TransactionRecord> {
        self.statuses.get(signature)
    }

    /// Signatures touching `address`, newest first.
    pub(crate) fn signatures_for(&self, address: &Pubkey) -> Vec<(Signature, TransactionRecord)> {
        self.history
            .get(address)
            .map(|sigs| {
                sigs.iter()
                    .rev()
                    .filter_map(|s| self.statuses.get(s).map(|r| (*s, r.clone())))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Gives `lamports` from the chain's faucet.
    pub(crate) fn airdrop(&mut self, to: &Pubkey, lamports: u64) -> Result<Signature, SubmitError> {
        let faucet = self.svm.airdrop_pubkey();
        let keys = vec![faucet, *to];
        let pre_balances = self.balances(&keys);
        match self.svm.airdrop(to, lamports) {
            Ok(meta) => {
                let signature = self.record(&meta, keys, None, None, pre_balances);
                self.journal(&Entry::Airdrop { to: *to, lamports })?;
                Ok(signature)
            }
            Err(FailedTransactionMetadata { err, meta }) => Err(SubmitError::Failed {
                err,
                logs: meta.logs,
                compute_units: meta.compute_units_consumed,
            }),
        }
    }

    /// Executes a transaction and records it.
    pub(crate) fn submit(&mut self, tx: VersionedTransaction) -> Result<Signature, SubmitError> {
        self.execute(tx, false)
    }

    fn execute(
        &mut self,
        tx: VersionedTransaction,
        replaying: bool,
    ) -> Result<Signature, SubmitError> {
        if !replaying && !self.is_blockhash_valid(tx.message.recent_blockhash()) {
            return Err(SubmitError::BlockhashNotFound);
        }
        // Its blockhash is usable, so its status is still kept (statuses outlive the window).
        if let Some(signature) = tx.signatures.first()
            && self.statuses.contains_key(signature)
        {
            return Err(SubmitError::Failed {
                err: TransactionError::AlreadyProcessed,
                logs: Vec::new(),
                compute_units: 0,
            });
        }
        let wire = if replaying || self.journal.is_none() {
            None
        } else {
            bincode1::serialize(&tx).ok()
        };
        let keys: Vec<Pubkey> = tx.message.static_account_keys().to_vec();
        let memo = memos(&tx);
        let pre_balances = self.balances(&keys);
        let sent = tx.clone();
        match self.svm.send_transaction(tx) {
            Ok(meta) => {
                let signature = self.record(&meta, keys, memo, Some(sent), pre_balances);
                if let Some(wire) = wire {
                    self.journal(&Entry::Transaction(wire))?;
                }
                Ok(signature)
            }
            Err(FailedTransactionMetadata { err, meta }) => Err(SubmitError::Failed {
                err,
                logs: meta.logs,
                compute_units: meta.compute_units_consumed,
            }),
        }
    }

    /// Records a landed transaction under its signature and every account it names.
    fn balances(&self, keys: &[Pubkey]) -> Vec<u64> {
        keys.iter().map(|k| self.balance(k)).collect()
    }

    fn record(
        &mut self,
        meta: &TransactionMetadata,
        keys: Vec<Pubkey>,
        memo: Option<String>,
        transaction: Option<VersionedTransaction>,
        pre_balances: Vec<u64>,
    ) -> Signature {
        let signature = meta.signature;
        self.publish_landed(meta, &keys);
        let details = TransactionDetails {
            transaction,
            fee: meta.fee,
            post_balances: self.balances(&keys),
            pre_balances,
            logs: meta.logs.clone(),
            compute_units: meta.compute_units_consumed,
        };
        self.details.insert(signature, details);
        self.detail_order.push_back(signature);
        if self.detail_order.len() > MAX_DETAILS
            && let Some(old) = self.detail_order.pop_front()
        {
            self.details.remove(&old);
        }
        let record = TransactionRecord {
            slot: self.slot,
            block_time: unix_now(),
            err: None,
            memo,
        };
        for key in keys {
            let sigs = self.history.entry(key).or_default();
            sigs.push_back(signature);
            if sigs.len() > MAX_HISTORY_PER_ADDRESS {
                sigs.pop_front();
            }
        }
        self.statuses.insert(signature, record);
        self.status_order.push_back(signature);
        // Forget the oldest statuses, but never one whose blockhash may still be usable: that
        // status is what refuses the transaction a second time.
        while self.status_order.len() > MAX_STATUSES {
            let Some(oldest) = self.status_order.front() else {
                break;
            };
            if self
                .statuses
                .get(oldest)
                .is_some_and(|r| r.slot + BLOCKHASH_WINDOW >= self.slot)
            {
                break;
            }
            if let Some(old) = self.status_order.pop_front() {
                self.statuses.remove(&old);
            }
        }
        signature
    }

    /// Queues the event of a landed transaction, with the watched accounts it names.
    fn publish_landed(&mut self, meta: &TransactionMetadata, keys: &[Pubkey]) {
        if !self.outbox.is_enabled() {
            return;
        }
        let accounts = keys
            .iter()
            .filter(|key| self.outbox.is_watched(key))
            .map(|address| {
                let account = self.svm.get_account(address).unwrap_or_default();
                WatchedAccount {
                    address: *address,
                    digest: AccountDigest::of(&account),
                    account,
                }
            })
            .collect();
        self.outbox.push_transaction(LandedTransaction {
            sequence: 0,
            signature: meta.signature,
            slot: self.slot,
            err: None,
            logs: meta.logs.clone(),
            mentions: keys.to_vec(),
            accounts,
        });
    }

    /// Runs a transaction without keeping its effects.
    pub(crate) fn simulate(&self, tx: VersionedTransaction) -> Simulation {
        match self.svm.simulate_transaction(tx) {
            Ok(info) => Simulation {
                err: None,
                logs: info.meta.logs,
                compute_units: info.meta.compute_units_consumed,
            },
            Err(failed) => Simulation {
                err: Some(failed.err),
                logs: failed.meta.logs,
                compute_units: failed.meta.compute_units_consumed,
            },
        }
    }
}

/// The blockhash of `slot` in the run whose secret is `secret`.
fn blockhash_at(secret: &[u8; 32], slot: u64) -> Hash {
    let digest: [u8; 32] = Sha256::new()
        .chain_update(b"clawbernetes/localnet/blockhash\n")
        .chain_update(secret)
        .chain_update(slot.to_le_bytes())
        .finalize()
        .into();
    Hash::new_from_array(digest)
}

/// The transaction's memos in the RPC's format: `[len] text`, joined by `; `.
fn memos(tx: &VersionedTransaction) -> Option<String> {
    let keys = tx.message.static_account_keys();
    let texts: Vec<String> = tx
        .message
        .instructions()
        .iter()
        .filter(|ix| {
            keys.get(usize::from(ix.program_id_index))
                .is_some_and(|k| MEMO_PROGRAMS.contains(&k.to_string().as_str()))
        })
        .map(|ix| {
            let text = String::from_utf8_lossy(&ix.data);
            format!("[{}] {text}", ix.data.len())
        })
        .collect();
    (!texts.is_empty()).then(|| texts.join("; "))
}
