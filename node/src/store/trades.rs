//! The price history a node keeps: settled leases reported by their parties and checked on chain
//! (`claw_market::history`). Kept in settlement order, one per lease, at most `max_trades`; the
//! oldest go first.

use claw_api::market::Trade;
use serde::{Deserialize, Serialize};
use sled::Transactional as _;
use sled::transaction::ConflictableTransactionError;

use super::{Store, StoreError, decode, encode_in, transaction_error};

/// Trades a node keeps unless configured otherwise.
pub const MAX_TRADES: usize = 100_000;
/// The meta key counting kept trades.
const TRADES_COUNT_KEY: &[u8] = b"trades-count";

/// A trade as kept: what the history answers, and the signed report that proved it, to hand to
/// peers that catch up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeptTrade {
    /// The trade.
    pub trade: Trade,
    /// The signed report's envelope, base-64.
    pub report: String,
    /// Whether the provider signed the report (its region counts).
    pub from_provider: bool,
}

/// The history's key: settlement time (big-endian, so keys sort by time), then the lease.
fn time_key(trade: &Trade) -> Vec<u8> {
    [
        &trade.settled_ms.to_be_bytes()[..],
        trade.lease_id.as_bytes(),
    ]
    .concat()
}

fn count_of(bytes: Option<sled::IVec>) -> u64 {
    bytes
        .and_then(|b| <[u8; 8]>::try_from(b.as_ref()).ok())
        .map_or(0, u64::from_be_bytes)
}

/// Whether a report (from the lease's provider or not) is taken, given what is kept of its
/// lease (`None`: nothing; else whether from the provider): one trade per lease, and a
/// provider's report replaces a buyer's, since only the provider's region counts.
fn takes(held_from_provider: Option<bool>, from_provider: bool) -> bool {
    match held_from_provider {
        None => true,
        Some(held) => from_provider && !held,
    }
}

impl Store {
    /// Whether a report of `lease` (from its provider or not) would change the history: the
    /// check a node makes before it signs or looks anything up on chain.
    pub fn trade_wanted(&self, lease: &str, from_provider: bool) -> Result<bool, StoreError> {
        let held = match self.trade_leases.get(lease.as_bytes())? {
            None => None,
            Some(key) => self
                .trades
                .get(key)?
                .map(|bytes| decode::<KeptTrade>("trade", &bytes))
                .transpose()?
                .map(|kept| kept.from_provider),
        };
        Ok(takes(held, from_provider))
    }

    /// Keeps `kept` when the history [`takes`] it. Then forgets the oldest trades beyond the
    /// cap.
    /// Answers whether anything changed.
    pub fn keep_trade(&self, kept: &KeptTrade) -> Result<bool, StoreError> {
        let key = time_key(&kept.trade);
        let lease = kept.trade.lease_id.as_bytes();
        let changed = (&self.trades, &self.trade_leases, &self.meta)
            .transaction(|(trades, leases, meta)| {
                let mut count = count_of(meta.get(TRADES_COUNT_KEY)?);
                if let Some(old_key) = leases.get(lease)? {
                    let held = trades
                        .get(&old_key)?
                        .map(|bytes| decode::<KeptTrade>("trade", &bytes))
                        .transpose()
                        .map_err(ConflictableTransactionError::Abort)?
                        .map(|old| old.from_provider);
                    if !takes(held, kept.from_provider) {
                        return Ok(false);
                    }
                    trades.remove(old_key)?;
                    count = count.saturating_sub(1);
                }
                trades.insert(key.as_slice(), encode_in("trade", kept)?)?;
                leases.insert(lease, key.as_slice())?;
                meta.insert(TRADES_COUNT_KEY, &(count + 1).to_be_bytes())?;
                Ok(true)
            })
            .map_err(transaction_error)?;
        if changed {
            self.forget_oldest_trades()?;
            self.db.flush()?;
        }
        Ok(changed)
    }

    /// Forgets the oldest trades while more than the cap are kept.
    fn forget_oldest_trades(&self) -> Result<(), StoreError> {
        while count_of(self.meta.get(TRADES_COUNT_KEY)?) > self.max_trades as u64 {
            let Some((key, bytes)) = self.trades.first()? else {
                self.meta.insert(TRADES_COUNT_KEY, &0u64.to_be_bytes())?;
                return Ok(());
            };
            let lease = decode::<KeptTrade>("trade", &bytes)
                .map(|kept| kept.trade.lease_id)
                .unwrap_or_default();
            (&self.trades, &self.trade_leases, &self.meta)
                .transaction(|(trades, leases, meta)| {
                    if trades.remove(&key)?.is_some() {
                        let count = count_of(meta.get(TRADES_COUNT_KEY)?);
                        meta.insert(TRADES_COUNT_KEY, &count.saturating_sub(1).to_be_bytes())?;
                    }
                    if leases.get(lease.as_bytes())?.as_deref() == Some(&key[..]) {
                        leases.remove(lease.as_bytes())?;
                    }
                    Ok::<_, ConflictableTransactionError<StoreError>>(())
                })
                .map_err(transaction_error)?;
        }
        Ok(())
    }

    /// The newest `limit` kept trades settled at or after `since_ms`, newest first (read from
    /// the newest end: no more are decoded).
    pub fn newest_trades(&self, since_ms: u64, limit: usize) -> Result<Vec<KeptTrade>, StoreError> {
        self.trades
            .range(since_ms.to_be_bytes()..)
            .values()
            .rev()
            .take(limit)
            .map(|bytes| decode("trade", &bytes?))
            .collect()
    }

    /// Kept trades settled in `[since_ms, until_ms)`, oldest first.
    pub fn trades_between(
        &self,
        since_ms: u64,
        until_ms: u64,
    ) -> Result<Vec<KeptTrade>, StoreError> {
        if since_ms >= until_ms {
            return Ok(Vec::new());
        }
        self.trades
            .range(since_ms.to_be_bytes()..until_ms.to_be_bytes())
            .values()
            .map(|bytes| decode("trade", &bytes?))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(lease: &str, settled_ms: u64, from_provider: bool) -> KeptTrade {
        KeptTrade {
            trade: Trade {
                lease_id: lease.to_owned(),
                gpu_model: "H100".to_owned(),
                region: from_provider.then(|| "eu-west".to_owned()),
                simulated: false,
                gpus: 1,
                hours: 1,
                price_per_gpu_hour: "2".to_owned(),
                payment: claw_api::market::PaymentChoice::Escrow,
                paid_to_provider: "1".to_owned(),
                settled_ms,
                settlement: String::new(),
                slot: 0,
                provider: String::new(),
                buyer: String::new(),
            },
            report: format!("report of {lease}"),
            from_provider,
        }
    }

    #[test]
    fn one_trade_per_lease_the_providers_report_wins_and_the_oldest_go_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap().with_max_trades(2);
        assert!(store.keep_trade(&kept("ls-a", 10, false)).unwrap());
        // The same lease again from the buyer: nothing changes; from the provider: replaced.
        assert!(!store.keep_trade(&kept("ls-a", 10, false)).unwrap());
        assert!(!store.trade_wanted("ls-a", false).unwrap());
        assert!(store.trade_wanted("ls-a", true).unwrap());
        assert!(store.keep_trade(&kept("ls-a", 10, true)).unwrap());
        assert!(!store.trade_wanted("ls-a", true).unwrap());
        assert!(!store.keep_trade(&kept("ls-a", 10, false)).unwrap());
        assert!(store.keep_trade(&kept("ls-b", 30, true)).unwrap());
        assert!(store.keep_trade(&kept("ls-c", 20, true)).unwrap());
        // Three leases, room for two: the one settled first is forgotten.
        let all = store.trades_between(0, u64::MAX).unwrap();
        let leases: Vec<&str> = all.iter().map(|k| k.trade.lease_id.as_str()).collect();
        assert_eq!(leases, ["ls-c", "ls-b"]);
        assert!(store.trade_wanted("ls-a", false).unwrap());
        assert_eq!(store.trades_between(20, 30).unwrap().len(), 1);
        let newest: Vec<String> = store
            .newest_trades(0, 1)
            .unwrap()
            .into_iter()
            .map(|k| k.trade.lease_id)
            .collect();
        assert_eq!(newest, ["ls-b"]);
        assert!(store.newest_trades(31, 10).unwrap().is_empty());
        assert!(store.trades_between(30, 20).unwrap().is_empty());
    }
}
