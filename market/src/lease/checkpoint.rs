//! Usage checkpoints: the provider's signed account of a lease's use so far. The buyer keeps the
//! latest; settlement, disputes and the arbiter use the one that counts among those either side
//! can show.

use claw_attestation::{PayloadKind, SignedPayload};
use serde::{Deserialize, Serialize};

use super::{ContainerState, LeaseError, LeaseId, LeaseOutcome, LeaseTerms, Signed};

/// A provider's signed account of a lease's use so far. `seq` counts a lease's checkpoints from
/// 0; the one with `ended` set is final and is the lease's receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageCheckpoint {
    /// The lease.
    pub lease_id: LeaseId,
    /// SHA-256 of the signed terms envelope (which names the escrow through the lease id).
    pub terms_digest: [u8; 32],
    /// This lease's checkpoint number, from 0.
    pub seq: u32,
    /// Seconds served so far.
    pub served_secs: u64,
    /// The container as the provider saw it.
    pub container: ContainerState,
    /// Set on the final checkpoint: how the lease ended.
    pub ended: Option<LeaseOutcome>,
}

impl SignedPayload for UsageCheckpoint {
    const KIND: PayloadKind = PayloadKind::UsageCheckpoint;
}

impl Signed<UsageCheckpoint> {
    /// Checks a checkpoint belongs to `terms` and claims no more time than can have passed:
    /// signed by the terms' signer, for their lease and digest, issued no later than `now_ms`
    /// (plus slack), serving no more than the lease's length nor than the time from funding
    /// (`funded_at_ms`, a block time on chain) to its own issue.
    pub fn check_against(
        &self,
        terms: &Signed<LeaseTerms>,
        funded_at_ms: u64,
        now_ms: u64,
        clock_slack_ms: u64,
    ) -> Result<(), LeaseError> {
        let checkpoint = self.payload();
        let lease = &terms.payload().lease_id;
        if checkpoint.lease_id != *lease {
            return Err(LeaseError::WrongLease {
                expected: lease.clone(),
                found: checkpoint.lease_id.clone(),
            });
        }
        if checkpoint.terms_digest != terms.digest() {
            return Err(LeaseError::WrongTerms(lease.clone()));
        }
        if self.signer() != terms.signer() {
            return Err(LeaseError::WrongSigner {
                what: "a usage checkpoint",
                expected: "the provider that signed the terms".to_owned(),
            });
        }
        let implausible = |m: String| Err(LeaseError::Implausible(format!("lease {lease}: {m}")));
        if self.issued_ms() > now_ms + clock_slack_ms {
            return implausible("the checkpoint is dated in the future".to_owned());
        }
        if checkpoint.served_secs > terms.payload().total_secs() {
            return implausible(format!(
                "{} s served is more than the lease's {} s",
                checkpoint.served_secs,
                terms.payload().total_secs()
            ));
        }
        let since_funding = self.issued_ms().saturating_sub(funded_at_ms) + clock_slack_ms;
        if checkpoint.served_secs * 1000 > since_funding {
            return implausible(format!(
                "{} s served, but only {} s passed between funding and the checkpoint",
                checkpoint.served_secs,
                since_funding / 1000
            ));
        }
        if checkpoint.ended == Some(LeaseOutcome::NeverStarted) && checkpoint.served_secs != 0 {
            return implausible("a lease that never started served no time".to_owned());
        }
        Ok(())
    }
}

/// The checkpoint that counts among `shown`, all already checked against the lease: the first
/// final one (the provider said the lease ended; nothing it signs later can serve more), else
/// the latest. Two different checkpoints with one number (a provider that signed both) count as
/// the one serving less.
pub fn counting_checkpoint<'a>(
    shown: impl IntoIterator<Item = &'a Signed<UsageCheckpoint>>,
) -> Option<&'a Signed<UsageCheckpoint>> {
    let rank = |c: &Signed<UsageCheckpoint>| {
        let p = c.payload();
        // Lower ranks win: any final before any running; among finals the earliest; among
        // running ones the latest; at a tie the one serving less.
        match p.ended {
            Some(_) => (0u8, i64::from(p.seq), p.served_secs),
            None => (1u8, -i64::from(p.seq), p.served_secs),
        }
    };
    shown.into_iter().min_by_key(|c| rank(c))
}
