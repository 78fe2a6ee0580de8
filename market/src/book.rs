//! The order book every peer builds from gossiped offers, and deterministic matching that says
//! why when nothing matches.
//!
//! Offers are kept per node (never aggregated) and indexed per GPU model in price order, so a
//! bid looks only at the cheapest offers of the models it accepts and stops at its price limit.
//! The best match is the cheapest feasible offer; ties go to the higher reputation, then the
//! older offer, then the provider key, so every peer picks the same one.

use std::collections::HashMap;
use std::fmt;

use crate::Molt;
use crate::order::{Bid, Offer, OrderError};

/// A provider's signing key (the envelope signer).
pub type ProviderKey = [u8; 32];

/// An offer in the book, with what its envelope said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BookEntry {
    /// Who signed it.
    pub provider: ProviderKey,
    /// The envelope's sequence.
    pub seq: u64,
    /// When it was signed, Unix ms.
    pub issued_ms: u64,
    /// When it expires, Unix ms.
    pub expires_ms: u64,
    /// Whether a verified inventory with real GPUs backs it.
    pub attested: bool,
    /// The offer.
    pub offer: Offer,
}

/// What inserting an offer did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// A new offer.
    Added,
    /// A newer version of a known offer.
    Replaced,
    /// The provider withdrew it.
    Withdrawn,
    /// An older or equal version than the one held; ignored.
    Stale,
}

/// A bid's match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match {
    /// The offer.
    pub entry: BookEntry,
    /// What the lease costs: price × GPUs × hours.
    pub total: Molt,
}

/// A constraint of a bid that offers can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Constraint {
    /// No offer of an acceptable model.
    Model,
    /// The offer expired, or the GPUs are not available for the whole lease from now.
    Availability,
    /// Simulated GPUs, and the bid does not accept them.
    Simulated,
    /// Not backed by an attested inventory.
    Attested,
    /// Another region.
    Region,
    /// Fewer GPUs on the node than asked for.
    Gpus,
    /// Less memory per GPU.
    Vram,
    /// The lease length is outside the offer's min/max hours.
    Hours,
    /// The provider's reputation is below the bid's minimum.
    Reputation,
    /// Above the bid's max price.
    Price,
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Model => "model",
            Self::Availability => "availability",
            Self::Simulated => "simulated",
            Self::Attested => "attested",
            Self::Region => "region",
            Self::Gpus => "gpus",
            Self::Vram => "vram",
            Self::Hours => "hours",
            Self::Reputation => "reputation",
            Self::Price => "price",
        })
    }
}

/// Why a bid matched nothing: per constraint, how many offers of the acceptable models it ruled
/// out, and the nearest offers (those that fail the fewest constraints, cheapest first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoMatch {
    /// Offers of the acceptable models in the book.
    pub considered: usize,
    /// For each constraint that ruled offers out: how many, and a sentence about it.
    pub reasons: Vec<(Constraint, usize, String)>,
    /// Up to three nearest offers, with the constraints each fails.
    pub nearest: Vec<(BookEntry, Vec<Constraint>)>,
}

impl fmt::Display for NoMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reasons: Vec<&str> = self
            .reasons
            .iter()
            .map(|(_, _, text)| text.as_str())
            .collect();
        write!(f, "no offer matches: {}", reasons.join("; "))
    }
}

/// Offers one provider may hold in a book (an honest provider has one per GPU model it sells).
pub const MAX_OFFERS_PER_PROVIDER: usize = 32;
/// Offers a book holds in all.
pub const MAX_OFFERS: usize = 50_000;

/// The order book of one network. Bounded: at most [`MAX_OFFERS_PER_PROVIDER`] offers per
/// provider and [`MAX_OFFERS`] in all; past either, new offers are refused (replacing an offer
/// held is always possible).
#[derive(Debug, Default)]
pub struct OrderBook {
    network: String,
    entries: HashMap<(ProviderKey, u64), BookEntry>,
    /// Offers held per provider.
    per_provider: HashMap<ProviderKey, usize>,
    /// Per model, keys in (price, issued, provider) order.
    by_model: HashMap<String, Vec<(ProviderKey, u64)>>,
}

fn sort_key(entry: &BookEntry) -> (u64, u64, ProviderKey) {
    (
        entry.offer.price_per_gpu_hour.base_units(),
        entry.issued_ms,
        entry.provider,
    )
}

impl OrderBook {
    /// An empty book for `network`.
    pub fn new(network: &str) -> Self {
        Self {
            network: network.to_owned(),
            ..Self::default()
        }
    }

    /// Offers held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the book is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every offer, cheapest first.
    pub fn offers(&self) -> Vec<&BookEntry> {
        let mut all: Vec<&BookEntry> = self.entries.values().collect();
        all.sort_by_key(|e| sort_key(e));
        all
    }

    fn unindex(&mut self, key: (ProviderKey, u64)) -> Option<BookEntry> {
        let entry = self.entries.remove(&key)?;
        if let Some(count) = self.per_provider.get_mut(&key.0) {
            *count -= 1;
            if *count == 0 {
                self.per_provider.remove(&key.0);
            }
        }
        if let Some(list) = self.by_model.get_mut(&entry.offer.gpu_model) {
            list.retain(|k| *k != key);
            if list.is_empty() {
                self.by_model.remove(&entry.offer.gpu_model);
            }
        }
        Some(entry)
    }

    /// Adds a verified offer (the caller checked the envelope's signature, expiry and replay).
    pub fn insert(&mut self, entry: BookEntry) -> Result<Inserted, OrderError> {
        entry.offer.validate()?;
        if entry.offer.network != self.network {
            return Err(OrderError(format!(
                "offer for network {:?} in the {:?} book",
                entry.offer.network, self.network
            )));
        }
        let key = (entry.provider, entry.offer.offer_id);
        let replaced = match self.entries.get(&key) {
            Some(held) if held.seq >= entry.seq => return Ok(Inserted::Stale),
            Some(_) => {
                self.unindex(key);
                true
            }
            None => false,
        };
        if entry.offer.withdrawn {
            return Ok(Inserted::Withdrawn);
        }
        if !replaced {
            let held = self.per_provider.get(&entry.provider).copied().unwrap_or(0);
            if held >= MAX_OFFERS_PER_PROVIDER {
                return Err(OrderError(format!(
                    "the provider holds {held} offers already, the most one provider may"
                )));
            }
            if self.entries.len() >= MAX_OFFERS {
                return Err(OrderError(format!(
                    "the book is full ({MAX_OFFERS} offers)"
                )));
            }
        }
        *self.per_provider.entry(entry.provider).or_default() += 1;
        let list = self
            .by_model
            .entry(entry.offer.gpu_model.clone())
            .or_default();
        let position = list
            .binary_search_by(|k| {
                self.entries
                    .get(k)
                    .map(sort_key)
                    .cmp(&Some(sort_key(&entry)))
            })
            .unwrap_or_else(|p| p);
        list.insert(position, key);
        self.entries.insert(key, entry);
        Ok(if replaced {
            Inserted::Replaced
        } else {
            Inserted::Added
        })
    }

    /// Drops offers that expired by `now_ms`; returns how many.
    pub fn prune(&mut self, now_ms: u64) -> usize {
        let expired: Vec<(ProviderKey, u64)> = self
            .entries
            .iter()
            .filter(|(_, e)| e.expires_ms <= now_ms)
            .map(|(k, _)| *k)
            .collect();
        for key in &expired {
            self.unindex(*key);
        }
        expired.len()
    }

    /// Every constraint of `bid` that `entry` fails at `now_ms`.
    fn failures(bid: &Bid, entry: &BookEntry, now_ms: u64, reputation: u32) -> Vec<Constraint> {
        let offer = &entry.offer;
        let mut failed = Vec::new();
        let lease_end = now_ms.max(offer.available_from_ms) + u64::from(bid.hours) * 3_600_000;
        if entry.expires_ms <= now_ms || lease_end > offer.available_until_ms {
            failed.push(Constraint::Availability);
        }
        if offer.simulated && !bid.accept_simulated {
            failed.push(Constraint::Simulated);
        }
        if bid.attested_only && !entry.attested {
            failed.push(Constraint::Attested);
        }
        if bid
            .region
            .as_ref()
            .is_some_and(|r| offer.region.as_ref() != Some(r))
        {
            failed.push(Constraint::Region);
        }
        if offer.gpus < bid.gpus {
            failed.push(Constraint::Gpus);
        }
        if offer.vram_mib < bid.min_vram_mib {
            failed.push(Constraint::Vram);
        }
        if bid.hours < offer.min_hours || bid.hours > offer.max_hours {
            failed.push(Constraint::Hours);
        }
        if reputation < bid.min_reputation {
            failed.push(Constraint::Reputation);
        }
        if offer.price_per_gpu_hour > bid.max_price_per_gpu_hour {
            failed.push(Constraint::Price);
        }
        failed
    }

    /// The best feasible offer for `bid` at `now_ms`, or why there is none. `reputation` gives
    /// a provider's reputation (0 to 100) from receipts and settlements.
    pub fn best_match(
        &self,
        bid: &Bid,
        now_ms: u64,
        reputation: &impl Fn(&ProviderKey) -> u32,
    ) -> Result<Match, NoMatch> {
        self.best_match_excluding(bid, now_ms, reputation, None)
    }

    /// [`Self::best_match`] among the offers of every provider but `excluded` (a node that
    /// buys does not lease from itself).
    pub fn best_match_excluding(
        &self,
        bid: &Bid,
        now_ms: u64,
        reputation: &impl Fn(&ProviderKey) -> u32,
        excluded: Option<&ProviderKey>,
    ) -> Result<Match, NoMatch> {
        let mut best: Option<(&BookEntry, u32)> = None;
        for model in &bid.models {
            let Some(list) = self.by_model.get(model) else {
                continue;
            };
            for key in list {
                let Some(entry) = self.entries.get(key) else {
                    continue;
                };
                if excluded == Some(&entry.provider) {
                    continue;
                }
                let price = entry.offer.price_per_gpu_hour;
                if price > bid.max_price_per_gpu_hour {
                    break;
                }
                if let Some((held, _)) = best
                    && price > held.offer.price_per_gpu_hour
                {
                    break;
                }
                let rep = reputation(&entry.provider);
                if !Self::failures(bid, entry, now_ms, rep).is_empty() {
                    continue;
                }
                let better = match best {
                    None => true,
                    Some((held, held_rep)) => {
                        (
                            price,
                            std::cmp::Reverse(rep),
                            entry.issued_ms,
                            entry.provider,
                        ) < (
                            held.offer.price_per_gpu_hour,
                            std::cmp::Reverse(held_rep),
                            held.issued_ms,
                            held.provider,
                        )
                    }
                };
                if better {
                    best = Some((entry, rep));
                }
            }
        }
        match best {
            Some((entry, _)) => Ok(Match {
                total: entry
                    .offer
                    .cost(bid.gpus, bid.hours)
                    .unwrap_or(Molt::from_base_units(u64::MAX)),
                entry: entry.clone(),
            }),
            None => Err(self.explain(bid, now_ms, reputation, excluded)),
        }
    }

    /// Why nothing matches `bid`.
    fn explain(
        &self,
        bid: &Bid,
        now_ms: u64,
        reputation: &impl Fn(&ProviderKey) -> u32,
        excluded: Option<&ProviderKey>,
    ) -> NoMatch {
        let candidates: Vec<&BookEntry> = bid
            .models
            .iter()
            .filter_map(|m| self.by_model.get(m))
            .flatten()
            .filter_map(|k| self.entries.get(k))
            .filter(|e| excluded != Some(&e.provider))
            .collect();
        let models = bid.models.join(" or ");
        if candidates.is_empty() {
            let mut available: Vec<&str> = self.by_model.keys().map(String::as_str).collect();
            available.sort_unstable();
            return NoMatch {
                considered: 0,
                reasons: vec![(
                    Constraint::Model,
                    0,
                    format!(
                        "no offers of {models} (offered models: {})",
                        if available.is_empty() {
                            "none".to_owned()
                        } else {
                            available.join(", ")
                        }
                    ),
                )],
                nearest: Vec::new(),
            };
        }
        let mut counts: HashMap<Constraint, usize> = HashMap::new();
        let mut scored: Vec<(&BookEntry, Vec<Constraint>)> = Vec::new();
        for entry in &candidates {
            let failed = Self::failures(bid, entry, now_ms, reputation(&entry.provider));
            for c in &failed {
                *counts.entry(*c).or_default() += 1;
            }
            scored.push((entry, failed));
        }
        let n = candidates.len();
        let noun = |count: usize| if count == 1 { "offer" } else { "offers" };
        let mut reasons: Vec<(Constraint, usize, String)> = counts
            .into_iter()
            .map(|(constraint, count)| {
                let all = if count == n { "all" } else { "" };
                let prefix = if count == n {
                    format!("{n} {models} {}, {all}", noun(n))
                } else {
                    format!("{count} of {n} {models} {}", noun(n))
                };
                let detail = Self::failure_detail(constraint, prefix, bid, &candidates);
                (constraint, count, detail)
            })
            .collect();
        reasons.sort_by_key(|(c, count, _)| (std::cmp::Reverse(*count), *c));
        scored.sort_by_key(|(e, failed)| (failed.len(), sort_key(e)));
        NoMatch {
            considered: n,
            reasons,
            nearest: scored
                .into_iter()
                .take(3)
                .map(|(e, failed)| (e.clone(), failed))
                .collect(),
        }
    }

    /// One failed constraint's sentence: `prefix` says how many offers fail it, the rest what
    /// the bid asked and the nearest the candidates come.
    fn failure_detail(
        constraint: Constraint,
        prefix: String,
        bid: &Bid,
        candidates: &[&BookEntry],
    ) -> String {
        match constraint {
            Constraint::Price => {
                let cheapest = candidates
                    .iter()
                    .map(|e| e.offer.price_per_gpu_hour)
                    .min()
                    .unwrap_or_default();
                format!(
                    "{prefix} above your max price {}/h: cheapest {cheapest}/h",
                    bid.max_price_per_gpu_hour
                )
            }
            Constraint::Gpus => {
                let most = candidates.iter().map(|e| e.offer.gpus).max().unwrap_or(0);
                format!(
                    "{prefix} with fewer than {} GPUs per node: most {most}",
                    bid.gpus
                )
            }
            Constraint::Vram => {
                let most = candidates
                    .iter()
                    .map(|e| e.offer.vram_mib)
                    .max()
                    .unwrap_or(0);
                format!(
                    "{prefix} under {} MiB per GPU: most {most} MiB",
                    bid.min_vram_mib
                )
            }
            Constraint::Hours => format!("{prefix} not for {} hours", bid.hours),
            Constraint::Region => format!(
                "{prefix} outside region {}",
                bid.region.as_deref().unwrap_or("?")
            ),
            Constraint::Simulated => {
                format!("{prefix} of simulated GPUs, which you do not accept")
            }
            Constraint::Attested => format!("{prefix} without attested GPUs"),
            Constraint::Reputation => {
                format!(
                    "{prefix} from providers below reputation {}",
                    bid.min_reputation
                )
            }
            Constraint::Availability => {
                format!("{prefix} not available for {} hours from now", bid.hours)
            }
            Constraint::Model => prefix,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H100: &str = "NVIDIA H100 80GB HBM3";
    const NOW: u64 = 1_800_000_000_000;

    fn molt(text: &str) -> Molt {
        text.parse().unwrap()
    }

    fn entry(provider: u8, id: u64, price: &str, gpus: u32) -> BookEntry {
        BookEntry {
            provider: [provider; 32],
            seq: 1,
            issued_ms: NOW - u64::from(provider) * 1000,
            expires_ms: NOW + 600_000,
            attested: true,
            offer: Offer {
                offer_id: id,
                gpu_model: H100.to_owned(),
                gpus,
                vram_mib: 81_559,
                price_per_gpu_hour: molt(price),
                min_hours: 1,
                max_hours: 48,
                available_from_ms: NOW - 1,
                available_until_ms: NOW + 100 * 3_600_000,
                network: "localnet".to_owned(),
                region: Some("eu-west".to_owned()),
                wallet: "W".to_owned(),
                inventory_digest: [0; 32],
                interruptible: false,
                simulated: false,
                withdrawn: false,
                cpu_millis_per_gpu: 4000,
                memory_mib_per_gpu: 32_768,
                pids_limit: 4096,
            },
        }
    }

    #[test]
    fn a_provider_holds_a_bounded_number_of_offers() {
        let mut book = OrderBook::new("localnet");
        for id in 0..MAX_OFFERS_PER_PROVIDER as u64 {
            book.insert(entry(1, id, "1", 1)).unwrap();
        }
        let refused = book.insert(entry(1, 999, "1", 1)).unwrap_err();
        assert!(refused.0.contains("32 offers"), "{refused}");
        // Replacing one it holds stays possible, and another provider is not held back.
        let mut newer = entry(1, 0, "0.5", 1);
        newer.seq = 2;
        assert_eq!(book.insert(newer).unwrap(), Inserted::Replaced);
        book.insert(entry(2, 999, "1", 1)).unwrap();
        // Once one expires, there is room again.
        let mut expiring = entry(1, 1, "1", 1);
        expiring.seq = 3;
        expiring.expires_ms = NOW - 1;
        book.insert(expiring).unwrap();
        assert_eq!(book.prune(NOW), 1);
        book.insert(entry(1, 999, "1", 1)).unwrap();
        assert_eq!(book.len(), MAX_OFFERS_PER_PROVIDER + 1);
    }

    fn bid(max: &str, gpus: u32) -> Bid {
        Bid {
            models: vec![H100.to_owned()],
            gpus,
            min_vram_mib: 80_000,
            region: None,
            attested_only: false,
            min_reputation: 0,
            max_price_per_gpu_hour: molt(max),
            hours: 8,
            wallet: "B".to_owned(),
            accept_simulated: false,
        }
    }

    fn no_rep(_: &ProviderKey) -> u32 {
        50
    }

    #[test]
    fn the_cheapest_feasible_offer_wins_then_reputation_then_age() {
        let mut book = OrderBook::new("localnet");
        book.insert(entry(1, 1, "2.5", 8)).unwrap();
        book.insert(entry(2, 1, "1.9", 2)).unwrap(); // cheapest, but too few GPUs
        book.insert(entry(3, 1, "2.1", 4)).unwrap();
        book.insert(entry(4, 1, "2.1", 4)).unwrap();
        let m = book.best_match(&bid("3", 4), NOW, &no_rep).unwrap();
        // Same price: provider 4's offer is older (issued earlier).
        assert_eq!(m.entry.provider, [4; 32]);
        assert_eq!(m.total, molt("67.2"));
        let favour_three = |p: &ProviderKey| if p[0] == 3 { 90 } else { 10 };
        let m = book.best_match(&bid("3", 4), NOW, &favour_three).unwrap();
        assert_eq!(m.entry.provider, [3; 32], "reputation breaks the price tie");
    }

    #[test]
    fn a_buyer_never_matches_its_own_offer() {
        let mut book = OrderBook::new("localnet");
        book.insert(entry(1, 1, "1", 8)).unwrap();
        book.insert(entry(2, 1, "2", 8)).unwrap();
        let m = book
            .best_match_excluding(&bid("3", 1), NOW, &no_rep, Some(&[1; 32]))
            .unwrap();
        assert_eq!(m.entry.provider, [2; 32]);
        let why = book
            .best_match_excluding(&bid("1.5", 1), NOW, &no_rep, Some(&[1; 32]))
            .unwrap_err();
        assert_eq!(why.considered, 1, "its own offer is not even considered");
    }

    #[test]
    fn newer_versions_replace_older_ones_and_withdrawals_remove() {
        let mut book = OrderBook::new("localnet");
        assert_eq!(book.insert(entry(1, 1, "2", 8)).unwrap(), Inserted::Added);
        let mut newer = entry(1, 1, "1", 8);
        newer.seq = 2;
        assert_eq!(book.insert(newer.clone()).unwrap(), Inserted::Replaced);
        assert_eq!(book.insert(entry(1, 1, "0.5", 8)).unwrap(), Inserted::Stale);
        assert_eq!(
            book.best_match(&bid("5", 1), NOW, &no_rep)
                .unwrap()
                .entry
                .offer
                .price_per_gpu_hour,
            molt("1")
        );
        let mut gone = newer;
        gone.seq = 3;
        gone.offer.withdrawn = true;
        assert_eq!(book.insert(gone).unwrap(), Inserted::Withdrawn);
        assert!(book.is_empty());
        let mut other = entry(1, 2, "1", 8);
        other.offer.network = "devnet".to_owned();
        assert!(book.insert(other).is_err());
    }

    #[test]
    fn no_match_says_why_per_constraint_with_the_nearest_offers() {
        let mut book = OrderBook::new("localnet");
        for (p, price) in [(1, "1.2"), (2, "1.5"), (3, "1.3")] {
            book.insert(entry(p, 1, price, 8)).unwrap();
        }
        let why = book.best_match(&bid("1", 4), NOW, &no_rep).unwrap_err();
        assert_eq!(why.considered, 3);
        assert_eq!(why.reasons[0].0, Constraint::Price);
        assert!(
            why.to_string().contains(
                "3 NVIDIA H100 80GB HBM3 offers, all above your max price 1/h: cheapest 1.2/h"
            ),
            "{why}"
        );
        assert_eq!(why.nearest[0].0.provider, [1; 32]);
        let mut wants_a100 = bid("9", 1);
        wants_a100.models = vec!["NVIDIA A100".to_owned()];
        let why = book.best_match(&wants_a100, NOW, &no_rep).unwrap_err();
        assert!(
            why.to_string()
                .contains("no offers of NVIDIA A100 (offered models: NVIDIA H100 80GB HBM3)"),
            "{why}"
        );
        let mut simulated = entry(9, 1, "0.1", 8);
        simulated.offer.simulated = true;
        book.insert(simulated).unwrap();
        let why = book.best_match(&bid("1", 16), NOW, &no_rep).unwrap_err();
        let constraints: Vec<Constraint> = why.reasons.iter().map(|r| r.0).collect();
        assert!(
            constraints.contains(&Constraint::Gpus) && constraints.contains(&Constraint::Simulated),
            "{why}"
        );
    }

    #[test]
    fn expired_offers_never_match_and_are_pruned() {
        let mut book = OrderBook::new("localnet");
        let mut old = entry(1, 1, "1", 8);
        old.expires_ms = NOW - 1;
        book.insert(old).unwrap();
        assert!(book.best_match(&bid("5", 1), NOW, &no_rep).is_err());
        assert_eq!(book.prune(NOW), 1);
        assert!(book.is_empty());
    }
}
