//! The arbiter's rule, pure: given the evidence, the only release it will sign.
//!
//! It rules only on terms both parties signed (the provider's terms, the buyer's acceptance of
//! exactly them), on the escrow derived from them, with the lease's clock starting at the funding
//! transaction's block time (read from the chain by the caller). Of the checkpoints shown — by the
//! party asking, and by the other when it answers — those that belong to the lease and claim no
//! more time than had passed are considered, and the one that counts
//! ([`counting_checkpoint`]) sets the time served. No checkpoint means nothing was proven served:
//! everything goes back to the buyer.

use super::{
    LeaseAcceptance, LeaseError, LeaseTerms, Payment, Signed, UsageCheckpoint, counting_checkpoint,
};
use crate::settlement::{Release, pro_rata};

/// The evidence before the arbiter.
#[derive(Debug, Clone, Copy)]
pub struct Case<'a> {
    /// The provider-signed terms.
    pub terms: &'a Signed<LeaseTerms>,
    /// The buyer-signed acceptance.
    pub acceptance: &'a Signed<LeaseAcceptance>,
    /// The funding's block time, Unix ms, as the chain shows it.
    pub funded_at_ms: u64,
    /// Every checkpoint shown, by either party.
    pub checkpoints: &'a [Signed<UsageCheckpoint>],
    /// The arbiter's clock, Unix ms.
    pub now_ms: u64,
    /// Tolerated clock difference, ms.
    pub clock_slack_ms: u64,
}

/// What the arbiter rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruling {
    /// The split it signs.
    pub release: Release,
    /// The seconds served it pays for.
    pub served_secs: u64,
    /// The number of the checkpoint that counted, if any did.
    pub basis: Option<u32>,
    /// Checkpoints shown that were not considered, and why.
    pub set_aside: Vec<String>,
}

/// Rules on `case`.
pub fn rule(case: &Case<'_>) -> Result<Ruling, LeaseError> {
    let terms = case.terms.payload();
    terms.validate()?;
    if terms.payment != Payment::Escrow {
        return Err(LeaseError::Malformed(format!(
            "lease {}: a streamed lease has no escrow to rule on",
            terms.lease_id
        )));
    }
    case.acceptance
        .check_against(case.terms, case.clock_slack_ms)?;
    let mut set_aside = Vec::new();
    let considered: Vec<&Signed<UsageCheckpoint>> = case
        .checkpoints
        .iter()
        .filter(|c| {
            match c.check_against(
                case.terms,
                case.funded_at_ms,
                case.now_ms,
                case.clock_slack_ms,
            ) {
                Ok(()) => true,
                Err(why) => {
                    set_aside.push(format!("checkpoint {}: {why}", c.payload().seq));
                    false
                }
            }
        })
        .collect();
    let counting = counting_checkpoint(considered.iter().copied());
    let elapsed_secs = (case.now_ms.saturating_sub(case.funded_at_ms) + case.clock_slack_ms) / 1000;
    let served_secs = counting
        .map_or(0, |c| c.payload().served_secs)
        .min(elapsed_secs)
        .min(terms.total_secs());
    Ok(Ruling {
        release: pro_rata(terms.amount, served_secs, terms.total_secs()),
        served_secs,
        basis: counting.map(|c| c.payload().seq),
        set_aside,
    })
}
