//! Reputation from proven facts only: outcomes of leases whose settlement the asking node found on
//! chain itself. Nothing a provider says about itself counts, and no peer can replace what a node
//! learned: facts are kept per lease, and a lease's fact is recorded once.

use std::collections::{HashMap, HashSet, VecDeque};

use serde::{Deserialize, Serialize};

use super::{LeaseId, LeaseOutcome};

/// Providers a book remembers; the one updated longest ago is forgotten first.
const MAX_PROVIDERS: usize = 10_000;
/// Leases remembered per provider; the oldest fact is forgotten first.
const MAX_LEASES_PER_PROVIDER: usize = 1_000;

/// A provider's track record: counts of proven outcomes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reputation {
    /// Leases served and settled between the parties.
    pub served: u32,
    /// Leases refunded because the provider never started them.
    pub never_started: u32,
    /// Leases the arbiter had to settle.
    pub disputed: u32,
}

impl Reputation {
    /// A score from 0 to 100: the share of good outcomes with one good and one bad assumed
    /// (so a provider with no history scores 50, and one lease moves it only part way).
    pub fn score(&self) -> u32 {
        let good = u64::from(self.served) + 1;
        let total = good + u64::from(self.never_started) + u64::from(self.disputed) + 1;
        u32::try_from(good * 100 / total).unwrap_or(100)
    }
}

/// How a lease ended, as the chain proved it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProvenOutcome {
    /// Settled by buyer and provider.
    Settled(LeaseOutcome),
    /// Settled by the arbiter with one party.
    Arbitrated,
}

#[derive(Debug, Default)]
struct Record {
    leases: HashSet<LeaseId>,
    order: VecDeque<LeaseId>,
    reputation: Reputation,
    outcomes: HashMap<LeaseId, ProvenOutcome>,
}

/// What one node knows of providers' records. Bounded in providers and leases per provider.
#[derive(Debug, Default)]
pub struct ReputationBook {
    providers: HashMap<[u8; 32], Record>,
    updated: VecDeque<[u8; 32]>,
}

impl ReputationBook {
    /// An empty book.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a proven outcome of `lease` with `provider` (Ed25519 key). A lease already
    /// recorded keeps its first fact: the chain settles a lease once. Answers whether it was new.
    pub fn record(&mut self, provider: [u8; 32], lease: &LeaseId, outcome: ProvenOutcome) -> bool {
        if !self.providers.contains_key(&provider)
            && self.providers.len() >= MAX_PROVIDERS
            && let Some(oldest) = self.updated.pop_front()
        {
            self.providers.remove(&oldest);
        }
        let record = self.providers.entry(provider).or_default();
        if !record.leases.insert(lease.clone()) {
            return false;
        }
        record.order.push_back(lease.clone());
        record.outcomes.insert(lease.clone(), outcome);
        count(&mut record.reputation, outcome, 1);
        if record.order.len() > MAX_LEASES_PER_PROVIDER
            && let Some(old) = record.order.pop_front()
        {
            record.leases.remove(&old);
            if let Some(outcome) = record.outcomes.remove(&old) {
                count(&mut record.reputation, outcome, -1);
            }
        }
        self.updated.retain(|p| *p != provider);
        self.updated.push_back(provider);
        true
    }

    /// The provider's record; empty when nothing is known.
    pub fn of(&self, provider: &[u8; 32]) -> Reputation {
        self.providers
            .get(provider)
            .map(|r| r.reputation)
            .unwrap_or_default()
    }
}

fn count(reputation: &mut Reputation, outcome: ProvenOutcome, delta: i32) {
    let field = match outcome {
        ProvenOutcome::Settled(LeaseOutcome::Served) => &mut reputation.served,
        ProvenOutcome::Settled(LeaseOutcome::NeverStarted) => &mut reputation.never_started,
        ProvenOutcome::Arbitrated => &mut reputation.disputed,
    };
    *field = field.saturating_add_signed(delta);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_counts_once_and_scores_move_part_way() {
        let mut book = ReputationBook::new();
        let provider = [7; 32];
        assert_eq!(book.of(&provider).score(), 50);
        for i in 0..8u8 {
            let lease = LeaseId::derive(&[i; 32], &provider);
            assert!(book.record(
                provider,
                &lease,
                ProvenOutcome::Settled(LeaseOutcome::Served)
            ));
            // The same lease told again, with another outcome, changes nothing.
            assert!(!book.record(provider, &lease, ProvenOutcome::Arbitrated));
        }
        assert_eq!(book.of(&provider).score(), 90);
        let refunded = LeaseId::derive(&[99; 32], &provider);
        book.record(
            provider,
            &refunded,
            ProvenOutcome::Settled(LeaseOutcome::NeverStarted),
        );
        assert_eq!(book.of(&provider).score(), 81);
    }

    #[test]
    fn the_book_is_bounded_per_provider() {
        let mut book = ReputationBook::new();
        let provider = [1; 32];
        for i in 0..(MAX_LEASES_PER_PROVIDER as u32 + 10) {
            let mut digest = [0u8; 32];
            digest[..4].copy_from_slice(&i.to_le_bytes());
            book.record(
                provider,
                &LeaseId::derive(&digest, &provider),
                ProvenOutcome::Arbitrated,
            );
        }
        assert_eq!(
            book.of(&provider).disputed as usize,
            MAX_LEASES_PER_PROVIDER
        );
    }
}
