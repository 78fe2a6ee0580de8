//! Leases, the second protocol: every MOLT movement is bound to one lease and proven by both
//! parties or by the chain.
//!
//! A lease's life, and what each party signs:
//!
//! 1. The buyer asks with a signed [`Bid`](crate::order::Bid) and a signature of its wallet over
//!    the bid ([`wallet_proof_message`]), so the provider knows the caller controls the funded
//!    wallet it names.
//! 2. The provider reserves GPUs and signs [`LeaseTerms`]. The lease id is derived from the bid
//!    and the provider's key ([`LeaseId::derive`]); the escrow's addresses are derived from the
//!    buyer's wallet and the lease id, so anyone can recompute them and no escrow can back two
//!    leases.
//! 3. The buyer signs a [`LeaseAcceptance`] naming the terms' digest and the escrow, then funds
//!    the escrow (or, streaming, approves a small allowance). The terms count only with both
//!    signatures, and the lease's clock starts at the funding transaction's block time: evidence
//!    the buyer took part in, never a time the provider chose alone.
//! 4. While the workload runs, the provider signs a [`UsageCheckpoint`] every `checkpoint_secs`;
//!    the buyer keeps the latest. The final checkpoint ends the lease.
//! 5. The escrow is released by two of its three keys: provider and buyer on the final
//!    checkpoint's pro-rata split, or the arbiter with either party on the checkpoint that counts
//!    among those both sides can show ([`ruling`]). A lease is settled when the chain shows the
//!    vault's balance moved out by its multisig, never because a memo says so.
//!
//! [`machine`] holds the protocol as a pure state machine: typed inputs in, the new record and the
//! effects to carry out out. Drivers persist the record before they carry out any effect.

mod budget;
mod checkpoint;
pub mod machine;
mod reputation;
pub mod ruling;
mod signed;
mod terms;

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

pub use budget::{Budget, BudgetError};
pub use checkpoint::{UsageCheckpoint, counting_checkpoint};
/// The lease's states, sides, payment and container words are the commands' own (one definition
/// in `claw-api`), so what the machine keeps is what the commands answer.
pub use claw_api::market::{
    LeaseContainer as ContainerState, LeasePayment as Payment, LeaseSide as Side, LeaseState,
};
pub use machine::{Effect, Input, LeasePolicy, LeaseRecord, Step};
pub use reputation::{ProvenOutcome, Reputation, ReputationBook};
pub use signed::Signed;
pub use terms::{LeaseAcceptance, LeaseTerms, Parties, TermsExpectation, wallet_proof_message};

/// Why a lease message or step was refused. Each refusal has its own variant so that drivers can
/// answer it with the right code and tests can tell them apart.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LeaseError {
    /// A message that does not add up on its own (amounts, ranges, addresses).
    #[error("{0}")]
    Malformed(String),
    /// A message for another lease than the one it was given for.
    #[error("the message is for lease {found}, not {expected}")]
    WrongLease {
        /// The lease it was given for.
        expected: LeaseId,
        /// The lease it names.
        found: LeaseId,
    },
    /// A message that names other terms than the lease's.
    #[error("the message names other terms than lease {0}'s")]
    WrongTerms(LeaseId),
    /// An escrow other than the one derived from the lease.
    #[error("lease {lease} must be escrowed at multisig {multisig} and vault {vault}")]
    WrongEscrow {
        /// The lease.
        lease: LeaseId,
        /// The derived multisig.
        multisig: String,
        /// The derived vault.
        vault: String,
    },
    /// Signed by another key than the party who must sign it.
    #[error("{what} must be signed by {expected}")]
    WrongSigner {
        /// What was signed.
        what: &'static str,
        /// Who must sign it.
        expected: String,
    },
    /// Signed earlier than what it answers: terms before their bid, an acceptance before its
    /// terms.
    #[error("{what} is dated before {before}")]
    Backdated {
        /// What was signed.
        what: &'static str,
        /// What it answers.
        before: &'static str,
    },
    /// A claim about time served that the time passed does not allow.
    #[error("{0}")]
    Implausible(String),
    /// The reservation lapsed before it was funded.
    #[error("lease {lease}: the reservation lapsed at {fund_by_ms} (now {now_ms})")]
    Lapsed {
        /// The lease.
        lease: LeaseId,
        /// Its funding deadline, Unix ms.
        fund_by_ms: u64,
        /// The time of the attempt, Unix ms.
        now_ms: u64,
    },
    /// The input does not apply to a lease in this state.
    #[error("lease {lease} is {state}: {input} does not apply")]
    NotNow {
        /// The lease.
        lease: LeaseId,
        /// Where it is.
        state: LeaseState,
        /// What was given.
        input: &'static str,
    },
}

/// A lease id: `ls-` and 16 lowercase hex digits, derived from the bid and the provider's key, so
/// the same bid names the same lease on a retry and no two providers name one lease alike.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LeaseId(String);

impl LeaseId {
    const PREFIX: &'static str = "ls-";
    const HEX_DIGITS: usize = 16;

    /// The lease a provider with Ed25519 key `provider_key` makes of the bid whose envelope
    /// digest is `bid_digest`.
    pub fn derive(bid_digest: &[u8; 32], provider_key: &[u8; 32]) -> Self {
        let digest = Sha256::new()
            .chain_update(b"clawbernetes/lease-id/v2\n")
            .chain_update(bid_digest)
            .chain_update(provider_key)
            .finalize();
        Self(format!(
            "{}{}",
            Self::PREFIX,
            &hex::encode(digest)[..Self::HEX_DIGITS]
        ))
    }

    /// Reads a lease id, refusing anything but `ls-` and 16 lowercase hex digits.
    pub fn parse(text: &str) -> Result<Self, LeaseError> {
        let valid = text.len() == Self::PREFIX.len() + Self::HEX_DIGITS
            && text.starts_with(Self::PREFIX)
            && text[Self::PREFIX.len()..]
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if valid {
            Ok(Self(text.to_owned()))
        } else {
            Err(LeaseError::Malformed(format!(
                "{text:?} is not a lease id (ls- and 16 lowercase hex digits)"
            )))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for LeaseId {
    type Error = LeaseError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        Self::parse(&text)
    }
}

impl From<LeaseId> for String {
    fn from(id: LeaseId) -> Self {
        id.0
    }
}

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LeaseId({})", self.0)
    }
}

/// How a lease ended, as its final checkpoint says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseOutcome {
    /// The workload ran (to the end of the lease, until it exited, or until the buyer ended it).
    Served,
    /// The workload never started: everything goes back to the buyer.
    NeverStarted,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_ids_are_derived_and_parsed_strictly() {
        let id = LeaseId::derive(&[1; 32], &[2; 32]);
        assert_eq!(id, LeaseId::derive(&[1; 32], &[2; 32]));
        assert_ne!(id, LeaseId::derive(&[1; 32], &[3; 32]));
        assert_eq!(LeaseId::parse(id.as_str()), Ok(id.clone()));
        for bad in [
            "",
            "ls-",
            "ls-0011223344556677aa",
            "ls-00112233445566ZZ",
            "ls-00112233445566AA",
            "xx-0011223344556677",
        ] {
            assert!(LeaseId::parse(bad).is_err(), "{bad:?}");
        }
        let json = serde_json::to_string(&id).expect("json");
        assert_eq!(json, format!("\"{id}\""));
        assert!(serde_json::from_str::<LeaseId>("\"ls-nothex0000000000\"").is_err());
    }

    #[test]
    fn states_only_move_forward() {
        use LeaseState::*;
        assert!(Requested.may_become(Accepted));
        assert!(Running.may_become(Running));
        assert!(Funded.may_become(Refunded));
        assert!(!Settled.may_become(Running));
        assert!(!Expired.may_become(Funded));
        assert!(!Completed.may_become(Running));
        assert!(Accepted.holds_gpus() && !Completed.holds_gpus());
    }
}
