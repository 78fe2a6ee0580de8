//! Leases: the terms a provider signs when it accepts a bid, the receipt it signs when the lease
//! ends, the states a lease moves through, the buyer's spending limits, and reputation computed
//! from receipts that anyone can check.

use claw_attestation::{PayloadKind, SignedPayload};
use serde::{Deserialize, Serialize};

use crate::Molt;
use crate::order::OrderError;
use crate::settlement::{Release, amount_due, pro_rata};

/// How the buyer pays for a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Payment {
    /// The whole amount is locked in a 2-of-3 escrow up front and released pro rata at the end.
    Escrow,
    /// The buyer approves the provider as delegate for the amount; the provider pulls what it
    /// has earned every `pull_secs`, and stops the workload when a pull is refused.
    Stream {
        /// Seconds between pulls.
        pull_secs: u32,
    },
}

/// The terms a provider signs when it accepts a bid: what is leased, for how long, at what
/// price, and who holds the escrow. The buyer funds exactly `amount` into a 2-of-3 escrow of
/// (buyer wallet, provider wallet, arbiter) before `fund_by_ms`, or the reservation lapses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseTerms {
    /// `ls-` and 16 hex digits; named in every memo of the lease's transfers.
    pub lease_id: String,
    /// The network the lease is on.
    pub network: String,
    /// The offer accepted.
    pub offer_id: u64,
    /// SHA-256 of the buyer's signed bid envelope.
    pub bid_digest: [u8; 32],
    /// The buyer's peer id.
    pub buyer_peer: String,
    /// The buyer's wallet (base-58).
    pub buyer_wallet: String,
    /// The provider's wallet (base-58).
    pub provider_wallet: String,
    /// The arbiter's wallet (base-58): the third key of the escrow.
    pub arbiter_wallet: String,
    /// GPU model.
    pub gpu_model: String,
    /// UUIDs of the GPUs reserved for the lease.
    pub gpus: Vec<String>,
    /// Whether they are simulated.
    pub simulated: bool,
    /// Price per GPU-hour.
    pub price_per_gpu_hour: Molt,
    /// Lease length, hours.
    pub hours: u32,
    /// What the buyer escrows (or, streaming, allows the provider to pull): price × GPUs × hours.
    pub amount: Molt,
    /// How it is paid.
    pub payment: Payment,
    /// The reservation lapses unless the escrow is funded by then, Unix ms.
    pub fund_by_ms: u64,
}

impl SignedPayload for LeaseTerms {
    const KIND: PayloadKind = PayloadKind::LeaseTerms;
}

impl LeaseTerms {
    /// The lease length in seconds.
    pub fn total_secs(&self) -> u64 {
        u64::from(self.hours) * 3600
    }

    /// What the lease costs per hour: price × GPUs.
    pub fn rate_per_hour(&self) -> Molt {
        let gpus = u64::try_from(self.gpus.len()).unwrap_or(u64::MAX);
        self.price_per_gpu_hour
            .checked_mul(gpus)
            .unwrap_or(Molt::from_base_units(u64::MAX))
    }

    /// Checks the terms are internally consistent: the amount is price × GPUs × hours.
    pub fn validate(&self) -> Result<(), OrderError> {
        let bad = |m: &str| Err(OrderError(format!("lease {}: {m}", self.lease_id)));
        if !valid_lease_id(&self.lease_id) {
            return bad("the lease id must be 1 to 64 of A-Z a-z 0-9 - _");
        }
        if self.gpus.is_empty() || self.gpus.len() > 64 {
            return bad("a lease holds 1 to 64 GPUs");
        }
        if self.hours == 0 {
            return bad("a lease lasts at least one hour");
        }
        if let Payment::Stream { pull_secs } = self.payment
            && !(1..=3600).contains(&pull_secs)
        {
            return bad("a stream pulls every 1 to 3600 seconds");
        }
        let gpus = u64::try_from(self.gpus.len()).unwrap_or(u64::MAX);
        let expected = self
            .price_per_gpu_hour
            .checked_mul(gpus)
            .and_then(|m| m.checked_mul(u64::from(self.hours)));
        if expected != Some(self.amount) {
            return bad("the amount is not price × GPUs × hours");
        }
        Ok(())
    }
}

/// Whether `id` can name a lease in memos: 1 to 64 of `A-Z a-z 0-9 - _`.
pub fn valid_lease_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// How a lease ended, as its receipt says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseOutcome {
    /// The workload ran to the end of the lease, or the buyer ended it early.
    Served,
    /// The provider never started the workload: everything goes back to the buyer.
    NeverStarted,
}

/// A provider's signed account of a lease it served: how long, and how the escrow splits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseReceipt {
    /// The lease.
    pub lease_id: String,
    /// SHA-256 of the signed terms envelope.
    pub terms_digest: [u8; 32],
    /// How it ended.
    pub outcome: LeaseOutcome,
    /// When the workload started, Unix ms (0 if it never did).
    pub started_ms: u64,
    /// When it stopped, Unix ms (0 if it never started).
    pub ended_ms: u64,
    /// Seconds served, as the provider measured them.
    pub served_secs: u64,
    /// To the provider.
    pub to_provider: Molt,
    /// Back to the buyer.
    pub to_buyer: Molt,
    /// The escrow's token account (base-58), where the settlement can be found.
    pub vault: String,
}

impl SignedPayload for LeaseReceipt {
    const KIND: PayloadKind = PayloadKind::LeaseReceipt;
}

impl LeaseReceipt {
    /// The split the receipt asks for.
    pub fn release(&self) -> Release {
        Release {
            to_provider: self.to_provider,
            to_buyer: self.to_buyer,
        }
    }

    /// Checks the receipt against its terms: the split is the pro-rata share of the escrow for
    /// the time served, and the time served fits between start and end.
    pub fn check(&self, terms: &LeaseTerms) -> Result<(), OrderError> {
        let bad = |m: &str| Err(OrderError(format!("receipt for {}: {m}", self.lease_id)));
        if self.lease_id != terms.lease_id {
            return bad("it is for another lease");
        }
        let window = self.ended_ms.saturating_sub(self.started_ms) / 1000;
        if self.served_secs > window || self.served_secs > terms.total_secs() {
            return bad("more time served than the lease or the run allows");
        }
        if self.outcome == LeaseOutcome::NeverStarted && self.served_secs != 0 {
            return bad("a lease that never started served no time");
        }
        match terms.payment {
            Payment::Escrow => {
                if self.release() != pro_rata(terms.amount, self.served_secs, terms.total_secs()) {
                    return bad("the split is not the pro-rata share of the escrow");
                }
            }
            // Streamed payments moved as they were earned: the receipt records what was pulled,
            // which can be no more than was earned.
            Payment::Stream { .. } => {
                let earned = amount_due(
                    terms.rate_per_hour(),
                    self.served_secs,
                    Molt::default(),
                    terms.amount,
                );
                if self.to_buyer != Molt::default() || self.to_provider > earned {
                    return bad("more was pulled than the time served earned");
                }
            }
        }
        Ok(())
    }
}

/// Where a lease is. Both sides persist it; every move is idempotent (moving to the state a
/// lease is in does nothing) and only forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseState {
    /// The buyer asked; no answer yet.
    Requested,
    /// The provider signed terms and reserved the GPUs.
    Accepted,
    /// The escrow holds the amount, verified on chain.
    Funded,
    /// The buyer's workload runs on the reserved GPUs.
    Running,
    /// The workload stopped; the provider signed a receipt.
    Completed,
    /// The escrow was released to the provider (pro rata) and the buyer (the rest).
    Settled,
    /// The escrow went back to the buyer: the provider never started.
    Refunded,
    /// The parties disagree; the arbiter decides with one of them.
    Disputed,
    /// The reservation lapsed before funding, or the provider refused.
    Expired,
}

impl LeaseState {
    /// Whether the lease can still change.
    pub fn is_open(self) -> bool {
        !matches!(self, Self::Settled | Self::Refunded | Self::Expired)
    }

    /// Whether the lease holds GPUs on the provider.
    pub fn holds_gpus(self) -> bool {
        matches!(self, Self::Accepted | Self::Funded | Self::Running)
    }

    /// Whether a lease may move from `self` to `next`.
    pub fn may_become(self, next: Self) -> bool {
        use LeaseState::*;
        self == next
            || matches!(
                (self, next),
                (Requested, Accepted | Expired)
                    | (Accepted, Funded | Expired)
                    | (Funded, Running | Completed | Refunded | Disputed)
                    | (Running, Completed | Disputed)
                    | (Completed, Settled | Refunded | Disputed)
                    | (Disputed, Settled | Refunded)
            )
    }
}

impl std::fmt::Display for LeaseState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Requested => "requested",
            Self::Accepted => "accepted",
            Self::Funded => "funded",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Settled => "settled",
            Self::Refunded => "refunded",
            Self::Disputed => "disputed",
            Self::Expired => "expired",
        })
    }
}

/// A buyer's spending limits, enforced before any transaction is signed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Most one lease may cost.
    pub max_per_lease: Option<Molt>,
    /// Most all leases started in the last 24 hours may cost together.
    pub max_per_day: Option<Molt>,
}

/// A lease the budget does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BudgetError {
    /// More than one lease may cost.
    #[error("the lease costs {cost} MOLT, more than the {limit} MOLT allowed per lease")]
    PerLease {
        /// The lease's cost.
        cost: Molt,
        /// The limit.
        limit: Molt,
    },
    /// More than is left of today's allowance.
    #[error(
        "the lease costs {cost} MOLT; {spent} MOLT was committed in the last 24 h of the {limit} MOLT allowed per day"
    )]
    PerDay {
        /// The lease's cost.
        cost: Molt,
        /// Committed in the last 24 hours.
        spent: Molt,
        /// The limit.
        limit: Molt,
    },
}

impl Budget {
    /// Whether a lease costing `cost` fits, with `spent_today` already committed in the last
    /// 24 hours.
    pub fn allows(&self, cost: Molt, spent_today: Molt) -> Result<(), BudgetError> {
        if let Some(limit) = self.max_per_lease
            && cost > limit
        {
            return Err(BudgetError::PerLease { cost, limit });
        }
        if let Some(limit) = self.max_per_day
            && spent_today
                .checked_add(cost)
                .is_none_or(|total| total > limit)
        {
            return Err(BudgetError::PerDay {
                cost,
                spent: spent_today,
                limit,
            });
        }
        Ok(())
    }
}

/// A provider's track record, from receipts whose settlements were found on chain.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reputation {
    /// Leases served and settled.
    pub served: u32,
    /// Leases refunded because the provider never started.
    pub never_started: u32,
    /// Leases in dispute or settled by the arbiter.
    pub disputed: u32,
}

impl Reputation {
    /// Counts one lease outcome.
    pub fn record(&mut self, state: LeaseState, outcome: Option<LeaseOutcome>) {
        match (state, outcome) {
            (LeaseState::Settled, Some(LeaseOutcome::Served)) => self.served += 1,
            (LeaseState::Refunded, _) | (_, Some(LeaseOutcome::NeverStarted)) => {
                self.never_started += 1
            }
            (LeaseState::Disputed, _) => self.disputed += 1,
            _ => {}
        }
    }

    /// A score from 0 to 100: the share of good outcomes with one good and one bad assumed
    /// (so a provider with no history scores 50, and one lease moves it only part way).
    pub fn score(&self) -> u32 {
        let good = u64::from(self.served) + 1;
        let total = good + u64::from(self.never_started) + u64::from(self.disputed) + 1;
        u32::try_from(good * 100 / total).unwrap_or(100)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms() -> LeaseTerms {
        LeaseTerms {
            lease_id: "ls-00112233aabbccdd".to_owned(),
            network: "localnet".to_owned(),
            offer_id: 1,
            bid_digest: [1; 32],
            buyer_peer: "buyer".to_owned(),
            buyer_wallet: "B".to_owned(),
            provider_wallet: "P".to_owned(),
            arbiter_wallet: "A".to_owned(),
            gpu_model: "NVIDIA H100 80GB HBM3".to_owned(),
            gpus: vec!["GPU-1".to_owned(), "GPU-2".to_owned()],
            simulated: true,
            price_per_gpu_hour: Molt::from_base_units(1_500_000),
            hours: 2,
            amount: Molt::from_base_units(6_000_000),
            payment: Payment::Escrow,
            fund_by_ms: 0,
        }
    }

    #[test]
    fn a_stream_receipt_records_no_more_than_was_earned() {
        let mut terms = terms();
        terms.payment = Payment::Stream { pull_secs: 60 };
        terms.validate().unwrap();
        assert_eq!(terms.rate_per_hour(), Molt::from_base_units(3_000_000));
        let receipt = |pulled: u64| LeaseReceipt {
            lease_id: terms.lease_id.clone(),
            terms_digest: [0; 32],
            outcome: LeaseOutcome::Served,
            started_ms: 0,
            ended_ms: 600_000,
            served_secs: 600,
            to_provider: Molt::from_base_units(pulled),
            to_buyer: Molt::default(),
            vault: String::new(),
        };
        receipt(500_000).check(&terms).unwrap();
        receipt(400_000).check(&terms).unwrap();
        assert!(receipt(500_001).check(&terms).is_err());
    }

    #[test]
    fn terms_must_add_up() {
        let good = terms();
        good.validate().unwrap();
        let mut bad = good.clone();
        bad.amount = Molt::from_base_units(5_999_999);
        assert!(bad.validate().is_err());
        let mut bad = good;
        bad.lease_id = "lease with spaces".to_owned();
        assert!(bad.validate().is_err());
    }

    #[test]
    fn a_receipt_must_ask_for_the_pro_rata_split() {
        let terms = terms();
        let fair = pro_rata(terms.amount, 1800, terms.total_secs());
        let receipt = LeaseReceipt {
            lease_id: terms.lease_id.clone(),
            terms_digest: [0; 32],
            outcome: LeaseOutcome::Served,
            started_ms: 1_000,
            ended_ms: 1_000 + 1_800_000,
            served_secs: 1800,
            to_provider: fair.to_provider,
            to_buyer: fair.to_buyer,
            vault: "V".to_owned(),
        };
        receipt.check(&terms).unwrap();
        assert_eq!(receipt.to_provider, Molt::from_base_units(1_500_000));
        let mut greedy = receipt.clone();
        greedy.to_provider = Molt::from_base_units(2_000_000);
        greedy.to_buyer = Molt::from_base_units(4_000_000);
        assert!(greedy.check(&terms).is_err());
        let mut padded = receipt;
        padded.served_secs = 3600;
        assert!(padded.check(&terms).is_err(), "more than the run lasted");
    }

    #[test]
    fn states_only_move_forward() {
        use LeaseState::*;
        assert!(Requested.may_become(Accepted));
        assert!(Running.may_become(Running));
        assert!(Funded.may_become(Refunded));
        assert!(!Settled.may_become(Running));
        assert!(!Running.may_become(Refunded), "a started lease is settled");
        assert!(!Expired.may_become(Funded));
        assert!(Accepted.holds_gpus() && !Completed.holds_gpus());
    }

    #[test]
    fn budgets_refuse_before_signing() {
        let budget = Budget {
            max_per_lease: Some(Molt::from_base_units(10_000_000)),
            max_per_day: Some(Molt::from_base_units(25_000_000)),
        };
        let cost = Molt::from_base_units(9_000_000);
        budget.allows(cost, Molt::default()).unwrap();
        assert!(matches!(
            budget.allows(Molt::from_base_units(11_000_000), Molt::default()),
            Err(BudgetError::PerLease { .. })
        ));
        assert!(matches!(
            budget.allows(cost, Molt::from_base_units(18_000_000)),
            Err(BudgetError::PerDay { .. })
        ));
        Budget::default()
            .allows(Molt::from_base_units(u64::MAX), Molt::from_base_units(1))
            .unwrap();
    }

    #[test]
    fn reputation_comes_from_outcomes() {
        let mut reputation = Reputation::default();
        assert_eq!(reputation.score(), 50);
        for _ in 0..8 {
            reputation.record(LeaseState::Settled, Some(LeaseOutcome::Served));
        }
        assert_eq!(reputation.score(), 90);
        reputation.record(LeaseState::Refunded, Some(LeaseOutcome::NeverStarted));
        assert_eq!(reputation.score(), 81);
    }
}
