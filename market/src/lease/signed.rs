//! A lease message with the envelope it was verified from.

use base64::Engine as _;
use claw_attestation::{PeerId, SignedPayload, SignerKey, VerifiedEnvelope, Verifier, VerifyError};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A payload with the envelope it came in: who signed it, when, its digest, and the bytes to show
/// a third party (an arbiter, a reputation check).
///
/// It is made only from a [`VerifiedEnvelope`], so it always holds a checked signature. Stored, it
/// is the envelope's base-64 text; read back, the signature is checked again (the validity window
/// is not: evidence must stay readable after it expires).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed<T> {
    payload: T,
    envelope: Vec<u8>,
    signer: [u8; 32],
    issued_ms: u64,
    digest: [u8; 32],
}

impl<T: SignedPayload> Signed<T> {
    /// Opens a verified envelope as a `T`.
    pub fn from_verified(verified: &VerifiedEnvelope) -> Result<Self, VerifyError> {
        let envelope = verified.envelope();
        Ok(Self {
            payload: verified.open::<T>()?,
            envelope: envelope.to_bytes(),
            signer: *envelope.signer_bytes(),
            issued_ms: envelope.issued_at_ms(),
            digest: envelope.digest(),
        })
    }

    /// Verifies `bytes` at `now_ms` (size, form, signature, validity window) and opens them.
    pub fn verify(verifier: &Verifier, bytes: &[u8], now_ms: u64) -> Result<Self, VerifyError> {
        Self::from_verified(&verifier.verify_at(bytes, None, now_ms)?)
    }

    /// Reads base-64 text with [`Signed::verify`].
    pub fn verify_text(verifier: &Verifier, text: &str, now_ms: u64) -> Result<Self, VerifyError> {
        Self::verify(verifier, &decode(text)?, now_ms)
    }
}

impl<T> Signed<T> {
    /// The message.
    pub fn payload(&self) -> &T {
        &self.payload
    }

    /// The envelope as signed.
    pub fn envelope(&self) -> &[u8] {
        &self.envelope
    }

    /// The envelope as base-64 text, as it travels in commands.
    pub fn text(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.envelope)
    }

    /// The signer's Ed25519 key.
    pub fn signer(&self) -> [u8; 32] {
        self.signer
    }

    /// The signer's peer id.
    pub fn signer_peer(&self) -> Option<PeerId> {
        SignerKey(self.signer).peer_id()
    }

    /// Whether `peer` signed it.
    pub fn is_signed_by(&self, peer: &str) -> bool {
        self.signer_peer().is_some_and(|p| p.to_string() == peer)
    }

    /// When the signer says it signed, Unix ms.
    pub fn issued_ms(&self) -> u64 {
        self.issued_ms
    }

    /// SHA-256 of the envelope: how other messages name it.
    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }
}

fn decode(text: &str) -> Result<Vec<u8>, VerifyError> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| VerifyError::Malformed(format!("not base-64: {e}")))
}

impl<T> Serialize for Signed<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text())
    }
}

impl<'de, T: SignedPayload> Deserialize<'de> for Signed<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let bytes = decode(&text).map_err(serde::de::Error::custom)?;
        let verified = Verifier::new()
            .verify_ignoring_time(&bytes)
            .map_err(serde::de::Error::custom)?;
        Self::from_verified(&verified).map_err(serde::de::Error::custom)
    }
}
