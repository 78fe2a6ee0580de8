//! Freshness proofs: a verifier sends a random nonce; the node answers with live GPU readings and
//! the digest of its current signed inventory, signed. A proof cannot be prepared in advance (the
//! nonce is fresh) nor replayed later (its age is checked).

use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use rand::RngCore as _;
use serde::{Deserialize, Serialize};

use crate::envelope::{
    Envelope, PayloadKind, SignedPayload, Validity, Verifier, VerifyError, unix_millis,
};
use crate::identity::NodeIdentity;
use crate::inventory::GpuLiveMetrics;

/// A verifier's challenge: 32 random bytes the answer must echo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FreshnessChallenge {
    /// The nonce.
    pub nonce: [u8; 32],
}

impl FreshnessChallenge {
    /// A challenge with a nonce from the operating system's random source.
    pub fn random() -> Self {
        let mut nonce = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        Self { nonce }
    }
}

/// The node's signed answer to a [`FreshnessChallenge`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FreshnessProof {
    /// The challenge's nonce, echoed.
    pub nonce: [u8; 32],
    /// SHA-256 of the node's current signed inventory envelope.
    pub inventory_digest: [u8; 32],
    /// Live readings taken when answering.
    pub gpus: Vec<GpuLiveMetrics>,
}

impl SignedPayload for FreshnessProof {
    const KIND: PayloadKind = PayloadKind::Freshness;
}

/// Why a freshness proof was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FreshnessError {
    /// The envelope itself did not verify.
    #[error(transparent)]
    Envelope(#[from] VerifyError),
    /// The proof answers another challenge.
    #[error("the proof answers another nonce")]
    NonceMismatch,
    /// The proof was made too long ago.
    #[error("the proof is {age_ms} ms old, more than the {max_age_ms} ms allowed")]
    Stale {
        /// How old it is.
        age_ms: u64,
        /// The verifier's bound.
        max_age_ms: u64,
    },
    /// The proof vouches for another inventory than the one the verifier holds.
    #[error("the proof refers to another inventory than the one expected")]
    InventoryMismatch,
}

impl FreshnessProof {
    /// Answers `challenge` as `identity`, sealing the proof with a short lifetime.
    pub fn answer(
        identity: &NodeIdentity,
        seq: u64,
        challenge: &FreshnessChallenge,
        inventory_digest: [u8; 32],
        gpus: Vec<GpuLiveMetrics>,
    ) -> Envelope {
        let proof = Self {
            nonce: challenge.nonce,
            inventory_digest,
            gpus,
        };
        Envelope::seal(
            identity,
            seq,
            Validity::from_now(Duration::from_secs(60)),
            &proof,
        )
    }

    /// Checks a proof: signature by `signer`, nonce, age at `now_ms` within `max_age`, and, when
    /// given, the inventory it vouches for.
    pub fn verify_at(
        bytes: &[u8],
        signer: &VerifyingKey,
        challenge: &FreshnessChallenge,
        expected_inventory: Option<&[u8; 32]>,
        max_age: Duration,
        now_ms: u64,
    ) -> Result<Self, FreshnessError> {
        let verified = Verifier::new().verify_at(bytes, Some(signer), now_ms)?;
        let proof: Self = verified.open()?;
        if proof.nonce != challenge.nonce {
            return Err(FreshnessError::NonceMismatch);
        }
        let age_ms = now_ms.saturating_sub(verified.envelope().issued_at_ms());
        let max_age_ms = u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX);
        if age_ms > max_age_ms {
            return Err(FreshnessError::Stale { age_ms, max_age_ms });
        }
        if let Some(expected) = expected_inventory
            && expected != &proof.inventory_digest
        {
            return Err(FreshnessError::InventoryMismatch);
        }
        Ok(proof)
    }

    /// [`FreshnessProof::verify_at`] against the local clock.
    pub fn verify(
        bytes: &[u8],
        signer: &VerifyingKey,
        challenge: &FreshnessChallenge,
        expected_inventory: Option<&[u8; 32]>,
        max_age: Duration,
    ) -> Result<Self, FreshnessError> {
        let now = unix_millis(std::time::SystemTime::now());
        Self::verify_at(bytes, signer, challenge, expected_inventory, max_age, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> Vec<GpuLiveMetrics> {
        vec![GpuLiveMetrics {
            uuid: "GPU-sim-1".into(),
            utilization_pct: None,
            memory_used_bytes: None,
            temperature_c: None,
            power_usage_mw: None,
            simulated: true,
        }]
    }

    #[test]
    fn answered_challenge_verifies() {
        let node = NodeIdentity::generate();
        let challenge = FreshnessChallenge::random();
        let wire = FreshnessProof::answer(&node, 1, &challenge, [9; 32], metrics()).to_bytes();
        let proof = FreshnessProof::verify(
            &wire,
            &node.public_key(),
            &challenge,
            Some(&[9; 32]),
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(proof.gpus, metrics());
    }

    #[test]
    fn another_nonce_signer_inventory_or_age_is_refused() {
        let node = NodeIdentity::generate();
        let challenge = FreshnessChallenge::random();
        let envelope = FreshnessProof::answer(&node, 1, &challenge, [9; 32], metrics());
        let wire = envelope.to_bytes();
        let key = node.public_key();
        let max_age = Duration::from_secs(5);
        let now = envelope.issued_at_ms();
        assert_eq!(
            FreshnessProof::verify_at(
                &wire,
                &key,
                &FreshnessChallenge::random(),
                None,
                max_age,
                now
            ),
            Err(FreshnessError::NonceMismatch)
        );
        let stranger = NodeIdentity::generate().public_key();
        assert!(matches!(
            FreshnessProof::verify_at(&wire, &stranger, &challenge, None, max_age, now),
            Err(FreshnessError::Envelope(VerifyError::WrongSigner { .. }))
        ));
        assert_eq!(
            FreshnessProof::verify_at(&wire, &key, &challenge, Some(&[1; 32]), max_age, now),
            Err(FreshnessError::InventoryMismatch)
        );
        assert!(matches!(
            FreshnessProof::verify_at(&wire, &key, &challenge, None, max_age, now + 5_001),
            Err(FreshnessError::Stale { age_ms: 5_001, .. })
        ));
    }
}
