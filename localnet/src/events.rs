//! What the chain tells its PubSub subscribers, and how it gets to them.
//!
//! ```text
//!  RPC handler ──┐ lock: execute, queue events in the chain's outbox
//!  slot ticker ──┤ lock: tick,    queue a slot event
//!                └─► SharedChain::publish ── order lock, take the outbox (chain lock only for
//!                                            the take), broadcast ──► each PubSub connection
//! ```
//!
//! Events are queued under the chain lock, in chain order, and broadcast outside it. The order
//! lock makes taking and broadcasting one step, so subscribers see events in chain order however
//! many threads publish. The broadcast channel is bounded: a connection that falls
//! [`EVENT_BUFFER`] events behind is disconnected rather than buffered for.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use sha2::{Digest as _, Sha256};
use solana_account::Account;
use solana_pubkey::Pubkey;
use solana_signature::Signature;
use solana_transaction_error::TransactionError;
use tokio::sync::broadcast;

use crate::chain::Chain;

/// Events a subscriber may fall behind by before it is disconnected.
pub(crate) const EVENT_BUFFER: usize = 4096;
/// Events the outbox holds if nobody publishes (never reached: every change publishes).
const MAX_PENDING: usize = 65_536;

/// Something that happened on the chain.
#[derive(Debug, Clone)]
pub(crate) enum ChainEvent {
    /// A new slot began.
    Slot(SlotInfo),
    /// A transaction (or airdrop) landed.
    Transaction(Arc<LandedTransaction>),
}

/// A new slot, as `slotNotification` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SlotInfo {
    pub(crate) slot: u64,
    pub(crate) parent: u64,
    /// Everything landed is final at once, so the root is the slot itself.
    pub(crate) root: u64,
}

/// A landed transaction.
#[derive(Debug)]
pub(crate) struct LandedTransaction {
    /// Counts landed transactions; orders account states (see [`Chain::watch`]).
    pub(crate) sequence: u64,
    pub(crate) signature: Signature,
    pub(crate) slot: u64,
    pub(crate) err: Option<TransactionError>,
    pub(crate) logs: Vec<String>,
    /// Every account the message names (`logsSubscribe`'s `mentions`).
    pub(crate) mentions: Vec<Pubkey>,
    /// The state after it of the accounts it names that someone watches.
    pub(crate) accounts: Vec<WatchedAccount>,
}

/// An account someone subscribed to, as a transaction left it.
#[derive(Debug)]
pub(crate) struct WatchedAccount {
    pub(crate) address: Pubkey,
    /// A missing account is the default one: no lamports, no data, owned by the system program.
    pub(crate) account: Account,
    pub(crate) digest: AccountDigest,
}

/// A digest of what a subscriber sees change: lamports, owner, executable flag and data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AccountDigest([u8; 32]);

impl AccountDigest {
    pub(crate) fn of(account: &Account) -> Self {
        Self(
            Sha256::new()
                .chain_update(account.lamports.to_le_bytes())
                .chain_update(account.owner.as_ref())
                .chain_update([u8::from(account.executable)])
                .chain_update(&account.data)
                .finalize()
                .into(),
        )
    }
}

/// The chain's side of publishing: the events not yet broadcast and the accounts watched.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    enabled: bool,
    pending: VecDeque<ChainEvent>,
    watched: HashMap<Pubkey, usize>,
    sequence: u64,
}

impl Outbox {
    /// Starts queueing events (not while a ledger replays).
    pub(crate) fn enable(&mut self) {
        self.enabled = true;
    }

    pub(crate) fn is_enabled(&self) -> bool {
        self.enabled
    }

    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    pub(crate) fn take(&mut self) -> VecDeque<ChainEvent> {
        std::mem::take(&mut self.pending)
    }

    /// The number of transactions landed so far.
    pub(crate) fn sequence(&self) -> u64 {
        self.sequence
    }

    pub(crate) fn is_watched(&self, address: &Pubkey) -> bool {
        self.watched.contains_key(address)
    }

    pub(crate) fn watch(&mut self, address: Pubkey) {
        *self.watched.entry(address).or_default() += 1;
    }

    pub(crate) fn unwatch(&mut self, address: &Pubkey) {
        if let Some(count) = self.watched.get_mut(address) {
            *count -= 1;
            if *count == 0 {
                self.watched.remove(address);
            }
        }
    }

    pub(crate) fn push_slot(&mut self, slot: u64) {
        self.push(ChainEvent::Slot(SlotInfo {
            slot,
            parent: slot.saturating_sub(1),
            root: slot,
        }));
    }

    /// Queues a landed transaction; `sequence` is filled in here.
    pub(crate) fn push_transaction(&mut self, mut landed: LandedTransaction) {
        self.sequence += 1;
        landed.sequence = self.sequence;
        self.push(ChainEvent::Transaction(Arc::new(landed)));
    }

    fn push(&mut self, event: ChainEvent) {
        if !self.enabled {
            return;
        }
        if self.pending.len() >= MAX_PENDING {
            self.pending.pop_front();
            tracing::warn!(
                limit = MAX_PENDING,
                "chain events were not published; the oldest was dropped"
            );
        }
        self.pending.push_back(event);
    }
}

/// The chain behind its lock, and the channel its events go out on.
#[derive(Debug)]
pub(crate) struct SharedChain {
    chain: Mutex<Chain>,
    order: Mutex<()>,
    sender: broadcast::Sender<ChainEvent>,
}

impl SharedChain {
    /// Shares `chain` and starts queueing its events.
    pub(crate) fn new(mut chain: Chain) -> Self {
        chain.outbox_mut().enable();
        Self {
            chain: Mutex::new(chain),
            order: Mutex::new(()),
            sender: broadcast::channel(EVENT_BUFFER).0,
        }
    }

    /// Locks the chain. Hold the guard briefly, and never while waiting on I/O.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Chain> {
        self.chain.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Broadcasts the chain's queued events, in chain order, outside the chain lock.
    pub(crate) fn publish(&self) {
        let _order = self.order.lock().unwrap_or_else(PoisonError::into_inner);
        let events = self.lock().outbox_mut().take();
        for event in events {
            // An error only says that nobody listens right now.
            let _ = self.sender.send(event);
        }
    }

    /// Events from now on.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<ChainEvent> {
        self.sender.subscribe()
    }

    /// Advances one slot and publishes it.
    pub(crate) fn tick(&self) {
        self.lock().tick();
        self.publish();
    }
}
