//! The market's commands: selling, the order book, bids and leases, the lease steps one node
//! sends another, arbitration, reputation and the wallet.

use std::collections::BTreeMap;

use crate::command::commands;
use crate::workload::{Isolation, RunParams};
use crate::{Answer, NoParams};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

commands! {
    /// `market.sell`.
    MarketSell = "market.sell", Operate, SellParams => SellReport,
        "Rent out this node's free GPUs at a price per GPU-hour (or change it), optionally only within a daily window in a time zone, or stop selling; offers are published or withdrawn at once";
    /// `market.offers`.
    MarketOffers = "market.offers", Read, OffersParams => OfferListing,
        "GPU offers in this node's order book (from gossip), cheapest first, with filters";
    /// `market.bid`.
    MarketBid = "market.bid", Operate, BidParams => BidOutcome,
        "Match a bid against the order book and, with a workload, lease the best offer in one call: budget check, signed bid, provider-signed terms, escrow funded on chain, workload started; or say why nothing matches";
    /// `market.leases`.
    MarketLeases = "market.leases", Operate, LeasesParams => LeaseListing,
        "This node's leases, as buyer and as provider, with their state";
    /// `market.lease.cancel`.
    MarketLeaseCancel = "market.lease.cancel", Operate, CancelParams => Lease,
        "End a lease this node bought and settle it: pro rata for the time served, the rest refunded";
    /// `market.lease.revoke`.
    MarketLeaseRevoke = "market.lease.revoke", Operate, RevokeParams => Lease,
        "Withdraw a streaming lease's allowance on chain at once; the provider's next pull is refused and it stops the workload";
    /// `market.reputation`.
    MarketReputation = "market.reputation", Operate, ReputationParams => ProviderReputation,
        "A provider's reputation from facts this node checks itself: its own leases with it, and the provider's receipts whose escrow (derived from terms both parties signed, with this node's arbiter) the chain shows settled";
    /// `market.arbitrate`.
    MarketArbitrate = "market.arbitrate", Read, ArbitrateParams => Arbitration,
        "(arbiter) Rule on a lease's escrow for its buyer or provider, on terms both signed, the funding's block time and the usage checkpoints either side shows; answers the release signed by the arbiter";
    /// `market.offers.signed`.
    MarketOffersSigned = "market.offers.signed", Read, NoParams => SignedOffers,
        "This node's current offers, as the signed envelopes it gossiped (for peers that joined after)";
    /// `market.history`.
    MarketHistory = "market.history", Read, HistoryParams => PriceHistory,
        "What GPU-hours cleared at: every settled lease this node has seen reported and checked on chain (terms both parties signed, and the settlement transaction that paid the provider), with min, p50, p90 and max per day, GPU model and region";
    /// `market.trades.signed`.
    MarketTradesSigned = "market.trades.signed", Read, TradesParams => SignedTrades,
        "(node to node) The trade reports this node keeps, as signed envelopes, for a peer to check on chain itself (a node that joined late catches up this way)";
    /// `market.receipts`.
    MarketReceipts = "market.receipts", Read, ReceiptsParams => ReceiptListing,
        "The leases this node served as a provider, with their terms, the buyer's acceptance and the final checkpoint, for anyone to check against the chain";
    /// `market.lease.request`.
    MarketLeaseRequest = "market.lease.request", Read, LeaseRequestParams => LeaseGrant,
        "(buyer to provider) Ask for a lease on an offer with a bid signed by the caller and by its funded wallet; answers with signed terms and reserved GPUs";
    /// `market.lease.fund`.
    MarketLeaseFund = "market.lease.fund", Read, FundParams => LeaseStatus,
        "(buyer to provider) The buyer's signed acceptance and its funding: verify the derived escrow (or allowance) on chain and start the workload on the reserved GPUs";
    /// `market.lease.end`.
    MarketLeaseEnd = "market.lease.end", Read, EndParams => LeaseEnd,
        "(buyer to provider) End the lease; answers with the final usage checkpoint and the provider-signed settlement";
    /// `market.lease.status`.
    MarketLeaseStatus = "market.lease.status", Read, StatusParams => LeaseStatus,
        "(buyer or arbiter to a lease's party) Where the lease is, with the latest usage checkpoint";
    /// `wallet.balance`.
    WalletBalance = "wallet.balance", Operate, NoParams => WalletHoldings,
        "The node wallet's SOL and MOLT balances";
}

/// Which side of a lease a node is on (`claw-market` calls it `Side`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LeaseSide {
    /// Rents its GPUs out.
    Provider,
    /// Pays for the GPUs.
    Buyer,
}

impl LeaseSide {
    /// The side as the wire spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Provider => "provider",
            Self::Buyer => "buyer",
        }
    }
}

impl std::fmt::Display for LeaseSide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a lease is. Both sides keep it; it only moves forward. The one definition: the lease
/// state machine (`claw-market`) and the commands' answers both use it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum LeaseState {
    /// Provider: GPUs reserved, terms not yet signed.
    Requested,
    /// The provider signed terms and reserved the GPUs; the buyer has until the terms'
    /// funding deadline.
    Accepted,
    /// The escrow (or first allowance) is on chain and the buyer's acceptance is held.
    Funded,
    /// The buyer's workload runs on the reserved GPUs.
    Running,
    /// The provider signed the final checkpoint; the escrow awaits release.
    Completed,
    /// The escrow was released to the provider (its share) and the buyer (the rest), or a
    /// stream's last pull is done.
    Settled,
    /// Everything went back to the buyer: the workload never started.
    Refunded,
    /// The buyer refused the provider's account, or a party stopped answering: the arbiter
    /// rules with the other party.
    Disputed,
    /// The reservation lapsed before funding, or was cancelled.
    Expired,
}

impl LeaseState {
    /// Whether the lease can still change.
    pub fn is_open(self) -> bool {
        !matches!(self, Self::Settled | Self::Refunded | Self::Expired)
    }

    /// Whether the lease holds GPUs on the provider.
    pub fn holds_gpus(self) -> bool {
        matches!(
            self,
            Self::Requested | Self::Accepted | Self::Funded | Self::Running
        )
    }

    /// Whether a lease may move from `self` to `next`.
    pub fn may_become(self, next: Self) -> bool {
        use LeaseState::*;
        self == next
            || matches!(
                (self, next),
                (Requested, Accepted | Expired)
                    | (Accepted, Funded | Expired | Disputed)
                    | (Funded, Running | Completed | Disputed | Settled | Refunded)
                    | (Running, Completed | Disputed | Settled | Refunded)
                    | (Completed, Settled | Refunded | Disputed)
                    | (Disputed, Settled | Refunded)
            )
    }

    /// The state as the wire spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requested => "requested",
            Self::Accepted => "accepted",
            Self::Funded => "funded",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Settled => "settled",
            Self::Refunded => "refunded",
            Self::Disputed => "disputed",
            Self::Expired => "expired",
        }
    }
}

impl std::fmt::Display for LeaseState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the buyer pays for a lease, as its signed terms say (`claw-market` calls it `Payment`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum LeasePayment {
    /// The whole amount locked in the lease's 2-of-3 escrow up front, released pro rata at the
    /// end.
    Escrow,
    /// The buyer approves the provider as delegate of its MOLT account in small allowances (one
    /// pull's worth beyond what the latest checkpoint shows earned, renewed as checkpoints
    /// arrive); the provider pulls what it has earned every `pull_secs` and stops the workload
    /// when it goes unpaid.
    Stream {
        /// Seconds between pulls.
        pull_secs: u32,
    },
}

/// What the provider saw of a lease's container when it signed a checkpoint (`claw-market`
/// calls it `ContainerState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum LeaseContainer {
    /// It never started.
    NotStarted,
    /// It runs.
    Running,
    /// It exited on its own.
    Exited {
        /// Its exit code, when known.
        code: Option<i64>,
    },
    /// The provider stopped it (the lease ended).
    Stopped,
}

/// `market.offers`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
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
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LeasesParams {
    /// Only leases in this state (`requested`, `accepted`, `funded`, `running`, `completed`,
    /// `settled`, `refunded`, `disputed`, `expired`).
    #[serde(default)]
    pub state: Option<String>,
    /// Only leases where this node is on this side.
    #[serde(default)]
    pub side: Option<LeaseSide>,
}

/// What the buyer runs on leased GPUs.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
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
    /// CPU limit in cores (at most what the offer's GPUs come with).
    #[serde(default)]
    pub cpus: Option<f64>,
    /// Memory limit in MiB (at most what the offer's GPUs come with).
    #[serde(default)]
    pub memory_mib: Option<u64>,
    /// Keep the container's root filesystem writable (default read-only, with a tmpfs `/tmp`).
    #[serde(default)]
    pub writable_root: bool,
}

impl LeaseWorkload {
    /// The workload as the provider runs it: always under the tenant profile.
    pub fn into_run_params(self) -> RunParams {
        RunParams {
            image: self.image,
            command: self.command,
            name: None,
            env: self.env,
            env_from: BTreeMap::new(),
            files: Vec::new(),
            volume_mounts: Vec::new(),
            namespace: None,
            ports: Vec::new(),
            volumes: Vec::new(),
            gpus: None,
            gpu_uuids: None,
            cpus: self.cpus,
            memory_mib: self.memory_mib,
            restart: Default::default(),
            labels: BTreeMap::new(),
            isolation: Isolation::Tenant,
            writable_root: self.writable_root,
        }
    }
}

/// `market.bid`: what the buyer wants, what it pays at most, and what to run.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PaymentChoice {
    /// A 2-of-3 escrow.
    #[default]
    Escrow,
    /// A delegate allowance the provider pulls from.
    Stream,
}

/// `market.lease.revoke`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeParams {
    /// The streaming lease.
    pub lease_id: String,
}

/// `market.lease.cancel`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelParams {
    /// The lease.
    pub lease_id: String,
}

/// `market.reputation`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReputationParams {
    /// The provider's peer id.
    pub provider: String,
}

/// `market.receipts`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReceiptsParams {
    /// At most this many, newest first (default 100).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// `market.history`: which trades, and how many to list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HistoryParams {
    /// Only this GPU model (exact, as in offers).
    #[serde(default)]
    pub model: Option<String>,
    /// Only this region.
    #[serde(default)]
    pub region: Option<String>,
    /// Only trades settled at or after this time, Unix ms (default: the last 7 days).
    #[serde(default)]
    pub since_ms: Option<u64>,
    /// Only trades settled before this time, Unix ms.
    #[serde(default)]
    pub until_ms: Option<u64>,
    /// List at most this many trades, newest first (default 100, at most 1,000); the daily
    /// figures count every matching trade.
    #[serde(default)]
    pub limit: Option<usize>,
}

/// `market.trades.signed`: which reports to answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TradesParams {
    /// Only trades settled at or after this time, Unix ms.
    #[serde(default)]
    pub since_ms: Option<u64>,
}

/// `market.lease.request`: a buyer asks for a lease on one of this node's offers.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseRequestParams {
    /// The buyer's signed bid envelope, base-64; its signer must be the caller.
    pub bid: String,
    /// The offer the bid matched.
    pub offer_id: u64,
    /// Pay by streaming (the provider pulls as it serves) instead of an escrow.
    #[serde(default)]
    pub stream: bool,
    /// The bid wallet's signature (base-58) of the bid, showing the caller controls the wallet.
    pub wallet_signature: String,
}

/// `market.lease.fund`: the buyer's acceptance, its funding, and its workload.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FundParams {
    /// The lease.
    pub lease_id: String,
    /// The buyer-signed acceptance of the terms, base-64.
    pub acceptance: String,
    /// The funding transaction (escrow) or first allowance (stream), base-58.
    pub funding_signature: String,
    /// What to run on the leased GPUs.
    pub workload: LeaseWorkload,
}

/// `market.lease.end`: the buyer ends the lease (or collects the settlement of one that ended).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EndParams {
    /// The lease.
    pub lease_id: String,
}

/// `market.lease.status`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusParams {
    /// The lease.
    pub lease_id: String,
}

/// `market.sell`: sell this node's free GPUs at a price (or change it), or stop selling.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SellParams {
    /// MOLT per GPU-hour, e.g. "0.95"; not with `stop`.
    #[serde(default)]
    pub price_per_gpu_hour: Option<String>,
    /// Sell nothing: every offer is withdrawn (running leases go on).
    #[serde(default)]
    pub stop: bool,
    /// Sell only within this daily window: offers appear when it opens and leave when it
    /// closes, and no offer lets a lease run past its close. Absent: at any time.
    #[serde(default)]
    pub window: Option<SellWindow>,
}

/// A daily selling window, read in a time zone: `from` to `until` each day (past midnight when
/// `until` is earlier, e.g. 22:00 to 06:00).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SellWindow {
    /// When it opens, `HH:MM` local time.
    pub from: String,
    /// When it closes, `HH:MM` local time.
    pub until: String,
    /// The IANA time zone, e.g. `Europe/Paris`. Default `UTC`.
    #[serde(default = "utc")]
    pub time_zone: String,
}

fn utc() -> String {
    "UTC".to_owned()
}

/// `HH:MM` as a civil time.
fn clock(text: &str) -> Option<jiff::civil::Time> {
    let (hours, minutes) = text.split_once(':')?;
    if hours.len() != 2 || minutes.len() != 2 {
        return None;
    }
    jiff::civil::Time::new(hours.parse().ok()?, minutes.parse().ok()?, 0, 0).ok()
}

impl SellWindow {
    /// Checks the times and the zone.
    pub fn check(&self) -> Result<(), String> {
        let (Some(from), Some(until)) = (clock(&self.from), clock(&self.until)) else {
            return Err("window.from and window.until are HH:MM (00:00 to 23:59)".to_owned());
        };
        if from == until {
            return Err("window.from and window.until must differ".to_owned());
        }
        crate::schedule::time_zone(&self.time_zone).map_err(|e| e.to_string())?;
        Ok(())
    }

    /// When the window that is open at `now_ms` closes, Unix ms; `None` while it is closed
    /// (or the window does not check).
    pub fn open_until(&self, now_ms: u64) -> Option<u64> {
        let (from, until) = (clock(&self.from)?, clock(&self.until)?);
        let zone = crate::schedule::time_zone(&self.time_zone).ok()?;
        let now = jiff::Timestamp::from_millisecond(i64::try_from(now_ms).ok()?).ok()?;
        let local = now.to_zoned(zone.clone());
        let (date, time) = (local.date(), local.time());
        let closes_on = if from < until {
            (from <= time && time < until).then_some(date)
        } else if time >= from {
            date.tomorrow().ok()
        } else {
            (time < until).then_some(date)
        }?;
        let close = closes_on.to_datetime(until).to_zoned(zone).ok()?;
        u64::try_from(close.timestamp().as_millisecond()).ok()
    }
}

/// `market.arbitrate`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ArbitrateParams {
    /// The provider-signed terms envelope, base-64.
    pub terms: String,
    /// The buyer-signed acceptance envelope, base-64.
    pub acceptance: String,
    /// The funding transaction (base-58).
    pub funding_signature: String,
    /// The usage checkpoints the asking party holds, base-64 (at most 8).
    #[serde(default)]
    pub checkpoints: Vec<String>,
}

/// `market.sell`'s answer: the decision and the offers as published now.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SellReport {
    /// Whether the node sells now.
    pub selling: bool,
    /// The base price, MOLT per GPU-hour (none once it stopped selling).
    pub price_per_gpu_hour: Option<String>,
    /// Its offers, one per GPU model, as last published.
    pub offers: Vec<OwnOffer>,
    /// The daily window it sells in, when it has one.
    #[serde(default)]
    pub window: Option<SellWindow>,
}

/// One of this node's offers as it published it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OwnOffer {
    /// GPU model, as NVML names it.
    pub gpu_model: String,
    /// GPUs on offer (0 when withdrawn).
    pub gpus: u32,
    /// MOLT per GPU-hour, with the utilisation markup.
    pub price_per_gpu_hour: String,
    /// Whether the GPUs are simulated.
    pub simulated: bool,
    /// Whether the offer is withdrawn (its GPUs are taken, or the node stopped selling).
    pub withdrawn: bool,
}

/// `market.offers`' answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OfferListing {
    /// The network whose book this is.
    pub network: String,
    /// Cheapest first, then oldest.
    pub offers: Vec<BookOffer>,
}

/// An offer in the order book, as its provider signed it and as this node rates it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BookOffer {
    /// The provider's peer id (none when its signing key is not a peer's).
    pub provider: Option<String>,
    /// The provider node's name, when its announcement reached this node.
    pub node: Option<String>,
    /// The offer's id among its provider's.
    pub offer_id: u64,
    /// GPU model, as NVML names it.
    pub gpu_model: String,
    /// GPUs offered, on one node.
    pub gpus: u32,
    /// Memory per GPU, MiB.
    pub vram_mib: u64,
    /// MOLT per GPU-hour.
    pub price_per_gpu_hour: String,
    /// Shortest lease, hours.
    pub min_hours: u32,
    /// Longest lease, hours.
    pub max_hours: u32,
    /// Where the provider is, if it says.
    pub region: Option<String>,
    /// Whether the lease may be interrupted.
    pub interruptible: bool,
    /// Whether the GPUs are simulated (as the provider's signed inventory says).
    pub simulated: bool,
    /// CPU a leased GPU comes with, thousandths of a core.
    pub cpu_millis_per_gpu: u32,
    /// Memory a leased GPU comes with, MiB.
    pub memory_mib_per_gpu: u64,
    /// Most processes in a lease's container.
    pub pids_limit: u32,
    /// Whether the provider's announcement shows real (NVML) GPUs of the model.
    pub attested: bool,
    /// The provider's reputation here, 0 to 100.
    pub reputation: u32,
    /// The provider's settlement wallet (base-58).
    pub wallet: String,
    /// When the signed offer expires, Unix ms.
    pub expires_ms: u64,
}

/// `market.bid`'s answer, in one of three shapes: nothing matched (`matched` false, with
/// `explanation`, `considered`, `reasons` and `nearest`); a match without a workload (`matched`
/// true, `offer`, `leased` false); or a lease (`matched` and `leased` true, `offer`, `lease` and
/// `phases_ms`). A field outside its shape is absent.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BidOutcome {
    /// Whether an offer matches the bid.
    pub matched: bool,
    /// Nothing matched: why, in one sentence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub explanation: Option<String>,
    /// Nothing matched: offers of the acceptable models in the book.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub considered: Option<usize>,
    /// Nothing matched: each constraint that ruled offers out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasons: Option<Vec<NoMatchReason>>,
    /// Nothing matched: up to three nearest offers, cheapest first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nearest: Option<Vec<NearOffer>>,
    /// A match: the best offer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offer: Option<MatchedOffer>,
    /// A match: whether it was leased (only a bid with a workload leases).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leased: Option<bool>,
    /// Leased: the lease as it stood when the bid answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<Lease>,
    /// Leased: how long each phase took, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phases_ms: Option<BidPhases>,
}

/// A constraint of a bid that ruled offers out.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoMatchReason {
    /// The constraint (`model`, `price`, …).
    pub constraint: String,
    /// How many offers it ruled out.
    pub offers: usize,
    /// A sentence about it.
    pub why: String,
}

/// One of the offers nearest an unmatched bid.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NearOffer {
    /// The provider's peer id (none when its signing key is not a peer's).
    pub provider: Option<String>,
    /// GPU model.
    pub gpu_model: String,
    /// GPUs offered.
    pub gpus: u32,
    /// MOLT per GPU-hour.
    pub price_per_gpu_hour: String,
    /// Whether the GPUs are simulated.
    pub simulated: bool,
    /// The bid's constraints it fails.
    pub fails: Vec<String>,
}

/// The offer a bid matched, and what leasing it costs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MatchedOffer {
    /// The provider's peer id.
    pub provider: String,
    /// The offer's id among its provider's.
    pub offer_id: u64,
    /// GPU model.
    pub gpu_model: String,
    /// MOLT per GPU-hour.
    pub price_per_gpu_hour: String,
    /// Whether the GPUs are simulated.
    pub simulated: bool,
    /// What the lease costs, MOLT: price × GPUs × hours.
    pub total: String,
}

/// How long each phase of a leasing bid took, ms (to the microsecond).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BidPhases {
    /// Matching against the order book.
    #[serde(rename = "match")]
    pub matching: f64,
    /// Signing the bid and getting the provider's signed terms.
    pub lease_request: f64,
    /// From the lease's record to its funding (none if it was not funded).
    pub escrow_funding: Option<f64>,
    /// From the funding to the workload running (none if it does not run).
    pub workload_start: Option<f64>,
    /// Accepting, funding and starting, as this call waited for them.
    pub accept_fund_start: f64,
    /// The whole call.
    pub total: f64,
}

/// A lease as this node keeps it, as the market commands answer it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Lease {
    /// `ls-` and 16 hex digits.
    pub lease_id: String,
    /// This node's side.
    pub side: LeaseSide,
    /// Where the lease is.
    pub state: LeaseState,
    /// The other party's peer id.
    pub counterparty: String,
    /// UUIDs of the GPUs reserved.
    pub gpus: Vec<String>,
    /// GPU model (once terms are signed, as are the fields below that come from them).
    pub gpu_model: Option<String>,
    /// Whether the GPUs are simulated.
    pub simulated: Option<bool>,
    /// Lease length, hours.
    pub hours: Option<u32>,
    /// MOLT per GPU-hour.
    pub price_per_gpu_hour: Option<String>,
    /// What the lease costs, MOLT.
    pub amount: Option<String>,
    /// How the buyer pays.
    pub payment: Option<LeasePayment>,
    /// Streams: MOLT the provider pulled so far.
    pub pulled: Option<String>,
    /// Escrows: the derived multisig's address.
    pub multisig: Option<String>,
    /// Escrows: the derived vault's address.
    pub vault: Option<String>,
    /// The funding transaction, once funded.
    pub funding_signature: Option<String>,
    /// When the lease's clock started: the funding's block time, Unix ms.
    pub funded_at_ms: Option<u64>,
    /// The workload running the lease.
    pub workload_id: Option<String>,
    /// When the workload started, Unix ms (the provider's clock).
    pub started_ms: Option<u64>,
    /// The number of the checkpoint that counts so far.
    pub checkpoint_seq: Option<u32>,
    /// Seconds served: as the lease ended, else as the latest checkpoint says.
    pub served_secs: Option<u64>,
    /// MOLT to the provider: settled, else the split once the lease ended, else pulled.
    pub to_provider: Option<String>,
    /// MOLT back to the buyer: settled, else the split once the lease ended.
    pub to_buyer: Option<String>,
    /// The settlement transaction, once the chain shows it.
    pub settlement_signature: Option<String>,
    /// Why the lease is where it is, when that needs saying.
    pub reason: Option<String>,
    /// Who must act next on an open lease, in words.
    pub waiting_for: Option<String>,
    /// When it was recorded, Unix ms.
    pub created_ms: u64,
    /// Each state it entered, with when (Unix ms).
    pub history: Vec<(LeaseState, u64)>,
}

/// `market.leases`' answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseListing {
    /// Newest first.
    pub leases: Vec<Lease>,
}

/// `market.reputation`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderReputation {
    /// The provider's peer id.
    pub provider: String,
    /// 0 to 100; 50 with no history.
    pub score: u32,
    /// Leases served and settled.
    pub served: u32,
    /// Leases refunded because the provider never started them.
    pub never_started: u32,
    /// Leases the arbiter had to settle.
    pub disputed: u32,
    /// The provider's receipts this call proved on chain.
    pub receipts_proven_on_chain: u32,
    /// The provider's receipts that did not hold up.
    pub receipts_not_proven: u32,
}

/// `market.arbitrate`'s answer: the escrow was settled already, or the arbiter's ruling.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum Arbitration {
    /// The ruling, with the release the arbiter signed.
    Ruled(ArbiterRuling),
    /// The chain shows the escrow settled already: nothing to rule on.
    AlreadySettled(SettledEscrow),
}

/// The arbiter's ruling on an escrow.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ArbiterRuling {
    /// The lease.
    pub lease_id: String,
    /// Always false here: the escrow awaits this release.
    pub settled: bool,
    /// The seconds served it pays for.
    pub served_secs: u64,
    /// The number of the checkpoint that counted, if any did.
    pub checkpoint_counted: Option<u32>,
    /// Checkpoints shown that were not considered, and why.
    pub set_aside: Vec<String>,
    /// MOLT to the provider.
    pub to_provider: String,
    /// MOLT back to the buyer.
    pub to_buyer: String,
    /// The same, in base units.
    pub to_provider_base_units: u64,
    /// The same, in base units.
    pub to_buyer_base_units: u64,
    /// The settlement transaction signed by the arbiter, base-64, for the asking party to check,
    /// co-sign and send.
    pub settlement: String,
}

/// An escrow the chain shows settled.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SettledEscrow {
    /// The lease.
    pub lease_id: String,
    /// Always true here.
    pub settled: bool,
    /// The settlement transaction.
    pub settlement_signature: String,
}

/// `market.offers.signed`' answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SignedOffers {
    /// The signed offer envelopes, base-64, as gossiped.
    pub offers: Vec<String>,
}

/// `market.history`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PriceHistory {
    /// Per UTC day, GPU model, region and whether the GPUs were simulated: the clearing prices'
    /// spread, oldest day first.
    pub days: Vec<PriceDay>,
    /// The trades, newest first, at most `limit`.
    pub trades: Vec<Trade>,
    /// Trades that match, listed or not.
    pub matching: usize,
}

/// One day's clearing prices for one GPU model in one region. Each settled lease is one sample
/// (its price per GPU-hour); percentiles are nearest-rank.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PriceDay {
    /// The UTC day, `YYYY-MM-DD`.
    pub day: String,
    /// The GPU model, as the provider's terms name it (peer-supplied text).
    pub gpu_model: String,
    /// The region the provider stated, if any (peer-supplied text).
    pub region: Option<String>,
    /// Whether these GPUs were simulated.
    pub simulated: bool,
    /// Settled leases.
    pub trades: usize,
    /// GPU-hours those leases were for.
    pub gpu_hours: u64,
    /// Lowest price per GPU-hour, MOLT.
    pub min: String,
    /// Median price per GPU-hour, MOLT.
    pub p50: String,
    /// 90th percentile price per GPU-hour, MOLT.
    pub p90: String,
    /// Highest price per GPU-hour, MOLT.
    pub max: String,
}

/// One settled lease as the price history keeps it, with what anyone needs to check it on chain.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Trade {
    /// The lease.
    pub lease_id: String,
    /// The GPU model (peer-supplied text).
    pub gpu_model: String,
    /// The provider's stated region (peer-supplied text).
    pub region: Option<String>,
    /// Whether the GPUs were simulated.
    pub simulated: bool,
    /// GPUs leased.
    pub gpus: u32,
    /// Hours leased.
    pub hours: u32,
    /// The agreed price per GPU-hour, MOLT.
    pub price_per_gpu_hour: String,
    /// How the lease was paid: `escrow`, or `stream` (the provider pulled as it served).
    #[serde(default)]
    pub payment: PaymentChoice,
    /// What the settlement paid the provider, MOLT (less than the whole when the lease ended
    /// early); for a stream, what its newest pull paid.
    pub paid_to_provider: String,
    /// The settlement's block time (a stream's: its newest pull's), Unix ms.
    pub settled_ms: u64,
    /// The settlement transaction, or a stream's newest pull (base-58), for anyone to look up.
    pub settlement: String,
    /// Its slot.
    pub slot: u64,
    /// The provider's peer id.
    pub provider: String,
    /// The buyer's peer id.
    pub buyer: String,
}

/// `market.trades.signed`' answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SignedTrades {
    /// Signed trade report envelopes, base-64, newest first.
    pub reports: Vec<String>,
}

/// `market.receipts`' answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReceiptListing {
    /// Newest first.
    pub receipts: Vec<LeaseReceipt>,
}

/// The evidence of a lease a provider served, for anyone to check against the chain.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseReceipt {
    /// The lease.
    pub lease_id: String,
    /// The provider-signed terms envelope, base-64.
    pub terms: String,
    /// The buyer-signed acceptance envelope, base-64.
    pub acceptance: String,
    /// The final usage checkpoint envelope, base-64.
    pub checkpoint: String,
}

/// `market.lease.request`'s answer: the lease and its terms (the same for the same bid).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseGrant {
    /// The lease, derived from the bid and the provider's key.
    pub lease_id: String,
    /// The provider-signed terms envelope, base-64.
    pub terms: String,
    /// Where the lease is on the provider.
    pub state: LeaseState,
}

/// `market.lease.fund`'s and `market.lease.status`' answer: where a lease is on the node asked.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseStatus {
    /// The lease.
    pub lease_id: String,
    /// The answering node's side.
    pub side: LeaseSide,
    /// Where the lease is.
    pub state: LeaseState,
    /// The workload running the lease.
    pub workload_id: Option<String>,
    /// When the workload started, Unix ms (the provider's clock).
    pub started_ms: Option<u64>,
    /// The latest usage checkpoint envelope, base-64.
    pub checkpoint: Option<String>,
    /// The container as that checkpoint saw it.
    pub container: Option<LeaseContainer>,
    /// Why the lease is where it is, when that needs saying.
    pub reason: Option<String>,
}

/// `market.lease.end`'s answer: how the lease ended, or that its reservation lapsed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum LeaseEnd {
    /// The lease ended (now or before).
    Ended(LeaseEnding),
    /// The reservation lapsed unfunded and was forgotten.
    Lapsed(LapsedLease),
}

/// A lease the provider ended, with the settlement it signed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseEnding {
    /// The lease.
    pub lease_id: String,
    /// The answering node's side.
    pub side: LeaseSide,
    /// Where the lease is.
    pub state: LeaseState,
    /// The workload that ran the lease.
    pub workload_id: Option<String>,
    /// When the workload started, Unix ms (the provider's clock).
    pub started_ms: Option<u64>,
    /// The final usage checkpoint envelope (or the latest), base-64.
    pub checkpoint: Option<String>,
    /// The container as that checkpoint saw it.
    pub container: Option<LeaseContainer>,
    /// Why the lease is where it is, when that needs saying.
    pub reason: Option<String>,
    /// Escrows that completed: the settlement transaction signed by the provider, base-64, for
    /// the buyer to check, co-sign and send.
    pub settlement: Option<String>,
}

/// A reservation that lapsed before the buyer ended it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LapsedLease {
    /// The lease.
    pub lease_id: String,
    /// Always `expired`.
    pub state: LeaseState,
}

/// `wallet.balance`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WalletHoldings {
    /// The wallet's address (base-58).
    pub address: String,
    /// SOL, in lamports.
    pub lamports: u64,
    /// SOL, with nine decimals.
    pub sol: String,
    /// MOLT.
    pub molt: String,
    /// MOLT, in base units.
    pub molt_base_units: u64,
    /// The chain's JSON-RPC endpoint.
    pub rpc_url: String,
}

impl Answer for SellReport {}
impl Answer for OfferListing {}
impl Answer for BidOutcome {}
impl Answer for Lease {}
impl Answer for LeaseListing {}
impl Answer for ProviderReputation {}
impl Answer for Arbitration {}
impl Answer for SignedOffers {}
impl Answer for ReceiptListing {}
impl Answer for PriceHistory {}
impl Answer for SignedTrades {}
impl Answer for LeaseGrant {}
impl Answer for LeaseStatus {}
impl Answer for LeaseEnd {}
impl Answer for WalletHoldings {}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::{Command as _, round_trip};

    #[test]
    fn a_leases_workload_cannot_name_the_fleets_configs_or_secrets() {
        // A buyer's workload is parsed strictly: it has no field that reaches a secret.
        let named = serde_json::from_value::<LeaseWorkload>(json!({
            "image": "a",
            "env_from": {"STOLEN": {"secret": "db", "key": "password"}},
        }));
        assert!(named.unwrap_err().to_string().contains("env_from"));
        let mounted = serde_json::from_value::<LeaseWorkload>(json!({
            "image": "a",
            "files": [{"secret": "db", "path": "/x"}],
        }));
        assert!(mounted.is_err());
        let plain: LeaseWorkload = serde_json::from_value(json!({"image": "a"})).unwrap();
        assert!(plain.into_run_params().sources().is_empty());
    }

    #[test]
    fn a_bid_answers_in_three_shapes() {
        let offer = json!({
            "provider": "12D3KooWprovider", "offer_id": 7, "gpu_model": "NVIDIA H100 80GB HBM3",
            "price_per_gpu_hour": "1.2", "simulated": true, "total": "1.2",
        });
        let unmatched = round_trip::<MarketBid>(json!({
            "matched": false,
            "explanation": "no offer matches: 2 offers cost more than 1 MOLT/GPU-hour",
            "considered": 2,
            "reasons": [{"constraint": "price", "offers": 2, "why": "2 offers cost more"}],
            "nearest": [{
                "provider": null, "gpu_model": "NVIDIA H100 80GB HBM3", "gpus": 1,
                "price_per_gpu_hour": "1.2", "simulated": true, "fails": ["price"],
            }],
        }));
        assert!(!unmatched.matched && unmatched.leased.is_none() && unmatched.offer.is_none());
        let matched = round_trip::<MarketBid>(
            json!({"matched": true, "offer": offer.clone(), "leased": false}),
        );
        assert_eq!(matched.leased, Some(false));
        assert!(matched.explanation.is_none() && matched.lease.is_none());
        let refused = MarketBid::decode(json!({"matched": true, "offer": offer, "extra": 1}));
        assert!(refused.is_err(), "unknown fields are refused");
    }

    #[test]
    fn a_lease_end_is_an_ending_or_a_lapse() {
        let ended = round_trip::<MarketLeaseEnd>(json!({
            "lease_id": "ls-0123456789abcdef", "side": "provider", "state": "completed",
            "workload_id": "wl-0123456789ab", "started_ms": 1, "checkpoint": "AAAA",
            "container": "stopped", "reason": null, "settlement": null,
        }));
        assert!(matches!(ended, LeaseEnd::Ended(e) if e.state == LeaseState::Completed));
        let lapsed = round_trip::<MarketLeaseEnd>(
            json!({"lease_id": "ls-0123456789abcdef", "state": "expired"}),
        );
        assert!(matches!(lapsed, LeaseEnd::Lapsed(l) if l.state == LeaseState::Expired));
    }

    #[test]
    fn an_arbitration_is_a_ruling_or_a_settlement() {
        let ruled = round_trip::<MarketArbitrate>(json!({
            "lease_id": "ls-0123456789abcdef", "settled": false, "served_secs": 60,
            "checkpoint_counted": null, "set_aside": [], "to_provider": "0.02",
            "to_buyer": "1.18", "to_provider_base_units": 20000,
            "to_buyer_base_units": 1180000, "settlement": "AAAA",
        }));
        assert!(matches!(ruled, Arbitration::Ruled(r) if r.checkpoint_counted.is_none()));
        let settled = round_trip::<MarketArbitrate>(json!({
            "lease_id": "ls-0123456789abcdef", "settled": true, "settlement_signature": "5xyz",
        }));
        assert!(matches!(settled, Arbitration::AlreadySettled(_)));
    }

    #[test]
    fn payments_containers_and_states_keep_their_wire_form() {
        fn wire(value: &impl Serialize) -> Value {
            serde_json::to_value(value).expect("encodes")
        }
        assert_eq!(wire(&LeasePayment::Escrow), json!("escrow"));
        assert_eq!(
            wire(&LeasePayment::Stream { pull_secs: 30 }),
            json!({"stream": {"pull_secs": 30}})
        );
        assert_eq!(wire(&LeaseContainer::NotStarted), json!("not_started"));
        assert_eq!(
            wire(&LeaseContainer::Exited { code: None }),
            json!({"exited": {"code": null}})
        );
        for state in [
            LeaseState::Requested,
            LeaseState::Accepted,
            LeaseState::Funded,
            LeaseState::Running,
            LeaseState::Completed,
            LeaseState::Settled,
            LeaseState::Refunded,
            LeaseState::Disputed,
            LeaseState::Expired,
        ] {
            assert_eq!(wire(&state), json!(state.to_string()));
        }
        for side in [LeaseSide::Provider, LeaseSide::Buyer] {
            assert_eq!(wire(&side), json!(side.to_string()));
        }
    }
}

#[cfg(test)]
mod window_tests {
    use super::*;

    fn window(from: &str, until: &str, zone: &str) -> SellWindow {
        SellWindow {
            from: from.into(),
            until: until.into(),
            time_zone: zone.into(),
        }
    }

    /// Unix ms of a UTC date and time.
    fn at(text: &str) -> u64 {
        let ts: jiff::Timestamp = text.parse().unwrap();
        u64::try_from(ts.as_millisecond()).unwrap()
    }

    #[test]
    fn a_window_is_open_between_its_times_in_its_zone() {
        let day = window("08:00", "18:00", "Europe/Paris");
        assert!(day.check().is_ok());
        // 07:30 UTC is 08:30 in Paris in January: open until 17:00 UTC.
        assert_eq!(
            day.open_until(at("2026-01-10T07:30:00Z")),
            Some(at("2026-01-10T17:00:00Z"))
        );
        assert_eq!(day.open_until(at("2026-01-10T06:30:00Z")), None);
        assert_eq!(day.open_until(at("2026-01-10T17:00:00Z")), None);
        let night = window("22:00", "06:00", "UTC");
        assert_eq!(
            night.open_until(at("2026-01-10T23:00:00Z")),
            Some(at("2026-01-11T06:00:00Z"))
        );
        assert_eq!(
            night.open_until(at("2026-01-11T05:00:00Z")),
            Some(at("2026-01-11T06:00:00Z"))
        );
        assert_eq!(night.open_until(at("2026-01-11T12:00:00Z")), None);
        for bad in [
            window("8:00", "18:00", "UTC"),
            window("08:00", "24:00", "UTC"),
            window("08:00", "08:00", "UTC"),
            window("08:00", "18:00", "Nowhere/Else"),
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }
}
