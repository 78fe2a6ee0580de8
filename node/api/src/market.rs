//! The market's commands: selling, the order book, bids and leases, the lease steps one node
//! sends another, arbitration, reputation and the wallet.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::NoParams;
use crate::command::commands;
use crate::workload::{Isolation, RunParams};

commands! {
    /// `market.sell`.
    MarketSell = "market.sell", Operate, SellParams => Value,
        "Rent out this node's free GPUs at a price per GPU-hour (or change it), or stop selling; offers are published or withdrawn at once";
    /// `market.offers`.
    MarketOffers = "market.offers", Read, OffersParams => Value,
        "GPU offers in this node's order book (from gossip), cheapest first, with filters";
    /// `market.bid`.
    MarketBid = "market.bid", Operate, BidParams => Value,
        "Match a bid against the order book and, with a workload, lease the best offer in one call: budget check, signed bid, provider-signed terms, escrow funded on chain, workload started; or say why nothing matches";
    /// `market.leases`.
    MarketLeases = "market.leases", Operate, LeasesParams => Value,
        "This node's leases, as buyer and as provider, with their state";
    /// `market.lease.cancel`.
    MarketLeaseCancel = "market.lease.cancel", Operate, CancelParams => Value,
        "End a lease this node bought and settle it: pro rata for the time served, the rest refunded";
    /// `market.lease.revoke`.
    MarketLeaseRevoke = "market.lease.revoke", Operate, RevokeParams => Value,
        "Withdraw a streaming lease's allowance on chain at once; the provider's next pull is refused and it stops the workload";
    /// `market.reputation`.
    MarketReputation = "market.reputation", Operate, ReputationParams => Value,
        "A provider's reputation from facts this node checks itself: its own leases with it, and the provider's receipts whose escrow (derived from terms both parties signed, with this node's arbiter) the chain shows settled";
    /// `market.arbitrate`.
    MarketArbitrate = "market.arbitrate", Read, ArbitrateParams => Value,
        "(arbiter) Rule on a lease's escrow for its buyer or provider, on terms both signed, the funding's block time and the usage checkpoints either side shows; answers the release signed by the arbiter";
    /// `market.offers.signed`.
    MarketOffersSigned = "market.offers.signed", Read, NoParams => Value,
        "This node's current offers, as the signed envelopes it gossiped (for peers that joined after)";
    /// `market.receipts`.
    MarketReceipts = "market.receipts", Read, ReceiptsParams => Value,
        "The leases this node served as a provider, with their terms, the buyer's acceptance and the final checkpoint, for anyone to check against the chain";
    /// `market.lease.request`.
    MarketLeaseRequest = "market.lease.request", Read, LeaseRequestParams => Value,
        "(buyer to provider) Ask for a lease on an offer with a bid signed by the caller and by its funded wallet; answers with signed terms and reserved GPUs";
    /// `market.lease.fund`.
    MarketLeaseFund = "market.lease.fund", Read, FundParams => Value,
        "(buyer to provider) The buyer's signed acceptance and its funding: verify the derived escrow (or allowance) on chain and start the workload on the reserved GPUs";
    /// `market.lease.end`.
    MarketLeaseEnd = "market.lease.end", Read, EndParams => Value,
        "(buyer to provider) End the lease; answers with the final usage checkpoint and the provider-signed settlement";
    /// `market.lease.status`.
    MarketLeaseStatus = "market.lease.status", Read, StatusParams => Value,
        "(buyer or arbiter to a lease's party) Where the lease is, with the latest usage checkpoint";
    /// `wallet.balance`.
    WalletBalance = "wallet.balance", Operate, NoParams => Value,
        "The node wallet's SOL and MOLT balances";
}

/// Which side of a lease a node is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LeaseSide {
    /// Rents its GPUs out.
    Provider,
    /// Pays for the GPUs.
    Buyer,
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
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
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
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
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
