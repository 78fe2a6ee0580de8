//! Price history: what GPU-hours cleared at.
//!
//! A party to a settled lease reports it with its evidence: the terms the provider signed, the
//! buyer's signed acceptance of exactly those terms, and a transaction that paid the provider:
//! an escrow lease's settlement, or a streaming lease's newest pull. Every node that receives a
//! report checks it before keeping the trade: the signatures, that the lease id is the one the
//! provider derives from the buyer's bid (so no one can pass another lease's payment off as its
//! own), and, on chain, that the transaction paid the provider for this lease: it moved the
//! escrow derived from the terms, or it moved MOLT from the buyer's account on the provider's
//! authority as the buyer's delegate, under a memo naming the lease. Nothing a reporter says
//! about the price counts; it is read from the terms. The region is the provider's word, so it
//! counts only in the provider's own report.

use std::collections::BTreeMap;

use claw_api::market::{PaymentChoice, PriceDay, Trade};
use claw_attestation::{PayloadKind, SignedPayload};
use serde::{Deserialize, Serialize};
use solana_pubkey::Pubkey;
use solana_signature::Signature;

use crate::Molt;
use crate::lease::{LeaseAcceptance, LeaseError, LeaseId, LeaseRecord, LeaseTerms, Signed};
use crate::order::text_ok;
use crate::settlement::{ChainClient, Escrow, MoltMint, SettlementError, SettlementFact};

/// A lease party's report of a settled lease, signed by the reporter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TradeReport {
    /// The provider-signed terms.
    pub terms: Signed<LeaseTerms>,
    /// The buyer's signed acceptance of them.
    pub acceptance: Signed<LeaseAcceptance>,
    /// The transaction that paid the provider, base-58: an escrow lease's settlement, or a
    /// streaming lease's newest pull.
    pub settlement: String,
    /// The provider's region; kept only from the provider's own report.
    pub region: Option<String>,
}

impl SignedPayload for TradeReport {
    const KIND: PayloadKind = PayloadKind::TradeReport;
}

/// Why a trade report is not kept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReportError {
    /// The terms or acceptance fail their checks.
    #[error("the lease evidence does not hold: {0}")]
    Evidence(#[from] LeaseError),
    /// The reporter is neither the provider nor the buyer.
    #[error("the reporter is not a party to lease {0}")]
    NotAParty(LeaseId),
    /// The settlement signature or region cannot be read.
    #[error("malformed report: {0}")]
    Malformed(String),
    /// The chain does not show the settlement (or pull), or it paid the provider nothing.
    #[error("the chain shows no settlement of lease {0} that paid its provider")]
    NotSettled(LeaseId),
}

/// What a report's transaction must show on chain, read from its terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Evidence {
    /// An escrow lease: the settlement moved this escrow.
    Escrow(Escrow),
    /// A streaming lease: a pull from the buyer's MOLT account on the provider's authority.
    Stream {
        /// The lease.
        lease: LeaseId,
        /// The buyer's wallet.
        buyer: Pubkey,
        /// The provider's wallet.
        provider: Pubkey,
    },
}

impl Evidence {
    /// What the chain shows of transaction `signature` as this evidence: the settlement (or the
    /// pull) and what it paid, or `None` when it shows no such transaction.
    pub async fn fact(
        &self,
        client: &ChainClient,
        mint: &MoltMint,
        signature: &Signature,
    ) -> Result<Option<SettlementFact>, SettlementError> {
        match self {
            Self::Escrow(escrow) => escrow.settlement_fact(client, mint, signature).await,
            Self::Stream {
                lease,
                buyer,
                provider,
            } => {
                crate::settlement::pull_fact(client, mint, signature, buyer, provider, lease).await
            }
        }
    }
}

impl TradeReport {
    /// The report of `record`, a lease this node was party to, once the chain showed it paid
    /// the provider: an escrow settled with something to the provider, or a stream with a pull
    /// read; `None` otherwise. `region` is this node's, and is sent only when it is the
    /// provider.
    pub fn of_record(record: &LeaseRecord, region: Option<&str>) -> Option<Self> {
        let terms = record.terms.clone()?;
        let settlement = match Escrow::of(terms.payload()).ok()? {
            Some(_) => record
                .settlement
                .as_ref()
                .filter(|fact| fact.to_provider.base_units() > 0)?
                .signature
                .clone(),
            None => record
                .stream
                .as_ref()
                .filter(|stream| stream.pulled.base_units() > 0)?
                .last_pull
                .clone()?,
        };
        let provider = record.side == crate::lease::Side::Provider;
        Some(Self {
            terms,
            acceptance: record.acceptance.clone()?,
            settlement,
            region: region.filter(|r| provider && text_ok(r)).map(str::to_owned),
        })
    }

    /// The checks that need no chain: the terms add up, their lease id is derived from the bid
    /// and the provider's key, the buyer accepted exactly them, `reporter` (an Ed25519 key) is
    /// one of the two. Answers what the chain must show, and the transaction to look up there.
    pub fn check(
        &self,
        reporter: &[u8; 32],
        clock_slack_ms: u64,
    ) -> Result<(Evidence, Signature), ReportError> {
        let terms = self.terms.payload();
        terms.validate()?;
        self.terms.check_lease_id()?;
        self.acceptance.check_against(&self.terms, clock_slack_ms)?;
        if *reporter != self.terms.signer() && *reporter != self.acceptance.signer() {
            return Err(ReportError::NotAParty(terms.lease_id.clone()));
        }
        if self.region.as_deref().is_some_and(|r| !text_ok(r)) {
            return Err(ReportError::Malformed(
                "a region is 1 to 64 printable characters, as in offers".to_owned(),
            ));
        }
        let signature: Signature = self
            .settlement
            .parse()
            .map_err(|_| ReportError::Malformed("the settlement is not a signature".to_owned()))?;
        let evidence = match Escrow::of(terms)? {
            Some(escrow) => Evidence::Escrow(escrow),
            None => {
                let parties = terms.parties()?;
                Evidence::Stream {
                    lease: terms.lease_id.clone(),
                    buyer: parties.buyer,
                    provider: parties.provider,
                }
            }
        };
        Ok((evidence, signature))
    }

    /// The trade, given what the chain shows of the report's transaction as its
    /// [`Evidence`] (`None`: it shows no such transaction). `settled_ms` stands in for the
    /// block time when the cluster keeps none.
    pub fn trade(
        &self,
        reporter: &[u8; 32],
        fact: Option<&SettlementFact>,
        settled_ms: u64,
    ) -> Result<Trade, ReportError> {
        let terms = self.terms.payload();
        let fact = fact
            .filter(|f| {
                f.to_provider.base_units() > 0
                    && f.to_provider <= terms.amount
                    && f.signature == self.settlement
            })
            .ok_or_else(|| ReportError::NotSettled(terms.lease_id.clone()))?;
        let peer = |signed_by: Option<claw_attestation::PeerId>| {
            signed_by.map(|p| p.to_string()).unwrap_or_default()
        };
        Ok(Trade {
            lease_id: terms.lease_id.to_string(),
            gpu_model: terms.gpu_model.clone(),
            region: self
                .region
                .clone()
                .filter(|_| *reporter == self.terms.signer()),
            simulated: terms.simulated,
            gpus: u32::try_from(terms.gpus.len()).unwrap_or(u32::MAX),
            hours: terms.hours,
            price_per_gpu_hour: terms.price_per_gpu_hour.to_string(),
            payment: match terms.payment {
                crate::lease::Payment::Escrow => PaymentChoice::Escrow,
                crate::lease::Payment::Stream { .. } => PaymentChoice::Stream,
            },
            paid_to_provider: fact.to_provider.to_string(),
            settled_ms: fact.block_time_ms.unwrap_or(settled_ms),
            settlement: fact.signature.clone(),
            slot: fact.slot,
            provider: peer(self.terms.signer_peer()),
            buyer: peer(self.acceptance.signer_peer()),
        })
    }
}

/// The UTC day of a Unix-ms time, `YYYY-MM-DD`.
pub fn utc_day(ms: u64) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
        .map(|t| t.to_zoned(jiff::tz::TimeZone::UTC).date().to_string())
        .unwrap_or_else(|| "out of range".to_owned())
}

/// The nearest-rank `percent` percentile of `sorted` (ascending, not empty).
fn percentile(sorted: &[Molt], percent: usize) -> Molt {
    let rank = (percent * sorted.len()).div_ceil(100).max(1);
    sorted[rank.min(sorted.len()) - 1]
}

/// The clearing prices of `trades` per UTC day, GPU model, region and simulated or not, oldest
/// day first: each trade one sample of its price per GPU-hour. A trade whose price does not read
/// as MOLT (never the case for what [`TradeReport::trade`] made) is left out.
pub fn price_days<'a>(trades: impl IntoIterator<Item = &'a Trade>) -> Vec<PriceDay> {
    type Key = (String, String, Option<String>, bool);
    let mut groups: BTreeMap<Key, (Vec<Molt>, u64)> = BTreeMap::new();
    for trade in trades {
        let Ok(price) = trade.price_per_gpu_hour.parse::<Molt>() else {
            continue;
        };
        let key = (
            utc_day(trade.settled_ms),
            trade.gpu_model.clone(),
            trade.region.clone(),
            trade.simulated,
        );
        let (prices, gpu_hours) = groups.entry(key).or_default();
        prices.push(price);
        *gpu_hours = gpu_hours.saturating_add(u64::from(trade.gpus) * u64::from(trade.hours));
    }
    groups
        .into_iter()
        .map(
            |((day, gpu_model, region, simulated), (mut prices, gpu_hours))| {
                prices.sort_unstable();
                PriceDay {
                    day,
                    gpu_model,
                    region,
                    simulated,
                    trades: prices.len(),
                    gpu_hours,
                    min: prices[0].to_string(),
                    p50: percentile(&prices, 50).to_string(),
                    p90: percentile(&prices, 90).to_string(),
                    max: prices[prices.len() - 1].to_string(),
                }
            },
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trade(day_ms: u64, model: &str, price: &str) -> Trade {
        Trade {
            lease_id: "ls-0000000000000000".to_owned(),
            gpu_model: model.to_owned(),
            region: None,
            simulated: false,
            gpus: 2,
            hours: 3,
            price_per_gpu_hour: price.to_owned(),
            payment: PaymentChoice::Escrow,
            paid_to_provider: price.to_owned(),
            settled_ms: day_ms,
            settlement: String::new(),
            slot: 0,
            provider: String::new(),
            buyer: String::new(),
        }
    }

    #[test]
    fn percentiles_are_nearest_rank_per_day_and_model() {
        const DAY: u64 = 86_400_000;
        // 2026-12-07 00:00 UTC.
        let monday = 1_796_601_600_000;
        assert_eq!(utc_day(monday), "2026-12-07");
        assert_eq!(utc_day(monday + DAY - 1), "2026-12-07");
        let mut trades: Vec<Trade> = (1..=10)
            .map(|n| trade(monday + n * 1000, "H100", &format!("{n}.5")))
            .collect();
        trades.push(trade(monday + DAY, "H100", "7"));
        trades.push(trade(monday + 5, "A100", "1"));
        let days = price_days(&trades);
        assert_eq!(days.len(), 3);
        let (a100, h100, next) = (&days[0], &days[1], &days[2]);
        assert_eq!((a100.gpu_model.as_str(), a100.trades), ("A100", 1));
        assert_eq!(
            (a100.min.as_str(), a100.p50.as_str(), a100.max.as_str()),
            ("1", "1", "1")
        );
        assert_eq!(h100.day, "2026-12-07");
        assert_eq!(h100.trades, 10);
        assert_eq!(h100.gpu_hours, 60);
        assert_eq!(h100.min, "1.5");
        // Ten samples: the 5th is the median, the 9th the 90th percentile.
        assert_eq!(h100.p50, "5.5");
        assert_eq!(h100.p90, "9.5");
        assert_eq!(h100.max, "10.5");
        assert_eq!((next.day.as_str(), next.p50.as_str()), ("2026-12-08", "7"));
    }
}
