//! Sealing: data encrypted to a set of nodes, each named by its peer id, which only those nodes
//! can open.
//!
//! Each node's X25519 key is its Ed25519 identity in Montgomery form (the public half follows
//! from the peer id alone, so no key is announced or looked up; using one key for Ed25519 and an
//! X25519 KEM is shown sound in <https://eprint.iacr.org/2021/509>). One sealing draws a fresh data
//! key and a fresh ephemeral X25519 key: the plaintext is encrypted once under the data key
//! (AES-256-GCM-SIV), and the data key is wrapped for each recipient under a key derived from the
//! Diffie-Hellman of the ephemeral key and the recipient's. The caller's `context` (what the data
//! is, e.g. a network, a name and a revision) is authenticated by every layer, so a sealed value
//! opens only as what it was sealed as.

use std::collections::BTreeMap;

use aes_gcm_siv::aead::{Aead as _, KeyInit as _, Payload};
use aes_gcm_siv::{Aes256GcmSiv, Nonce};
use curve25519_dalek::MontgomeryPoint;
use ed25519_dalek::VerifyingKey;
use libp2p_identity::PeerId;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use crate::identity::{NodeIdentity, ed25519_key_of};

/// Domain separation of the key-wrapping keys.
const WRAP_DOMAIN: &[u8] = b"clawbernetes/seal/v1/wrap";
const NONCE_LEN: usize = 12;
const KEY_LEN: usize = 32;
/// A wrapped data key: the key and its tag.
const WRAPPED_LEN: usize = KEY_LEN + 16;

/// Data sealed to a set of nodes.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed {
    /// The ephemeral X25519 public key of this sealing.
    pub ephemeral: [u8; 32],
    /// The nonce of the data's encryption.
    pub nonce: [u8; NONCE_LEN],
    /// The data, encrypted under the data key.
    pub ciphertext: Vec<u8>,
    /// Each recipient's wrapped copy of the data key.
    pub recipients: BTreeMap<PeerId, Vec<u8>>,
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealed")
            .field("bytes", &self.ciphertext.len())
            .field("recipients", &self.recipients.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Why data could not be sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// A recipient's peer id embeds no Ed25519 key.
    #[error("{0} is not a peer id made from an Ed25519 key")]
    NotEd25519(PeerId),
    /// There is no recipient.
    #[error("sealed data needs at least one recipient")]
    NoRecipient,
    /// This node is not among the recipients.
    #[error("this node is not one the data is sealed to")]
    NotRecipient,
    /// The data or a wrapped key does not open: tampered, or sealed as something else.
    #[error("the sealed data does not open (tampered, or sealed for another context)")]
    Tampered,
}

fn montgomery_of(peer: &PeerId) -> Result<MontgomeryPoint, SealError> {
    let bytes = ed25519_key_of(peer).ok_or(SealError::NotEd25519(*peer))?;
    let key = VerifyingKey::from_bytes(&bytes).map_err(|_| SealError::NotEd25519(*peer))?;
    Ok(key.to_montgomery())
}

/// The key that wraps the data key for one recipient.
fn wrapping_key(
    shared: &MontgomeryPoint,
    ephemeral: &[u8; 32],
    recipient: &MontgomeryPoint,
    context: &[u8],
) -> Result<Zeroizing<[u8; KEY_LEN]>, SealError> {
    // A low-order point gives an all-zero secret: no recipient key does that.
    if shared.as_bytes() == &[0u8; 32] {
        return Err(SealError::Tampered);
    }
    let mut hash = Sha256::new();
    hash.update(WRAP_DOMAIN);
    hash.update(shared.as_bytes());
    hash.update(ephemeral);
    hash.update(recipient.as_bytes());
    hash.update(Sha256::digest(context));
    Ok(Zeroizing::new(hash.finalize().into()))
}

fn cipher(key: &[u8; KEY_LEN]) -> Aes256GcmSiv {
    Aes256GcmSiv::new(key.into())
}

/// Seals `plaintext` to `recipients` as `context`.
pub fn seal(plaintext: &[u8], recipients: &[PeerId], context: &[u8]) -> Result<Sealed, SealError> {
    if recipients.is_empty() {
        return Err(SealError::NoRecipient);
    }
    let points = recipients
        .iter()
        .map(|peer| Ok((*peer, montgomery_of(peer)?)))
        .collect::<Result<Vec<_>, SealError>>()?;
    let mut rng = rand::rngs::OsRng;
    let mut data_key = Zeroizing::new([0u8; KEY_LEN]);
    rng.fill_bytes(data_key.as_mut());
    let mut ephemeral_secret = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(ephemeral_secret.as_mut());
    let ephemeral = MontgomeryPoint::mul_base_clamped(*ephemeral_secret).to_bytes();
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    let ciphertext = cipher(&data_key)
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad: context,
            },
        )
        .map_err(|_| SealError::Tampered)?;
    let mut wrapped = BTreeMap::new();
    for (peer, point) in points {
        let shared = point.mul_clamped(*ephemeral_secret);
        let key = wrapping_key(&shared, &ephemeral, &point, context)?;
        // Each wrapping key is used once (fresh ephemeral key per sealing): a zero nonce is safe.
        let copy = cipher(&key)
            .encrypt(
                Nonce::from_slice(&[0u8; NONCE_LEN]),
                Payload {
                    msg: data_key.as_slice(),
                    aad: context,
                },
            )
            .map_err(|_| SealError::Tampered)?;
        wrapped.insert(peer, copy);
    }
    Ok(Sealed {
        ephemeral,
        nonce,
        ciphertext,
        recipients: wrapped,
    })
}

impl NodeIdentity {
    /// Opens data sealed to this node as `context`.
    pub fn open(&self, sealed: &Sealed, context: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let wrapped = sealed
            .recipients
            .get(&self.peer_id())
            .ok_or(SealError::NotRecipient)?;
        if wrapped.len() != WRAPPED_LEN {
            return Err(SealError::Tampered);
        }
        let own = self.public_key().to_montgomery();
        let scalar = Zeroizing::new(self.scalar_bytes());
        let shared = MontgomeryPoint(sealed.ephemeral).mul_clamped(*scalar);
        let key = wrapping_key(&shared, &sealed.ephemeral, &own, context)?;
        let data_key = Zeroizing::new(
            cipher(&key)
                .decrypt(
                    Nonce::from_slice(&[0u8; NONCE_LEN]),
                    Payload {
                        msg: wrapped,
                        aad: context,
                    },
                )
                .map_err(|_| SealError::Tampered)?,
        );
        let data_key: Zeroizing<[u8; KEY_LEN]> = Zeroizing::new(
            data_key
                .as_slice()
                .try_into()
                .map_err(|_| SealError::Tampered)?,
        );
        cipher(&data_key)
            .decrypt(
                Nonce::from_slice(&sealed.nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad: context,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| SealError::Tampered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_recipient_opens_and_nobody_else_does() {
        let (a, b, outsider) = (
            NodeIdentity::generate(),
            NodeIdentity::generate(),
            NodeIdentity::generate(),
        );
        let sealed = seal(b"hunter2", &[a.peer_id(), b.peer_id()], b"net/secret/db/1").unwrap();
        assert_eq!(
            a.open(&sealed, b"net/secret/db/1").unwrap().as_slice(),
            b"hunter2"
        );
        assert_eq!(
            b.open(&sealed, b"net/secret/db/1").unwrap().as_slice(),
            b"hunter2"
        );
        assert_eq!(
            outsider.open(&sealed, b"net/secret/db/1"),
            Err(SealError::NotRecipient)
        );
        // The outsider lists itself under a recipient's wrapped key: it still cannot open it.
        let mut stolen = sealed.clone();
        let copy = stolen.recipients[&a.peer_id()].clone();
        stolen.recipients.insert(outsider.peer_id(), copy);
        assert_eq!(
            outsider.open(&stolen, b"net/secret/db/1"),
            Err(SealError::Tampered)
        );
        assert!(!sealed.ciphertext.windows(7).any(|w| w == b"hunter2"));
    }

    #[test]
    fn a_sealed_value_opens_only_as_what_it_was_sealed_as() {
        let a = NodeIdentity::generate();
        let sealed = seal(b"v", &[a.peer_id()], b"net/secret/db/1").unwrap();
        assert_eq!(
            a.open(&sealed, b"net/secret/other/1"),
            Err(SealError::Tampered)
        );
        let mut flipped = sealed.clone();
        flipped.ciphertext[0] ^= 1;
        assert_eq!(
            a.open(&flipped, b"net/secret/db/1"),
            Err(SealError::Tampered)
        );
        let mut low_order = sealed;
        low_order.ephemeral = [0u8; 32];
        assert_eq!(
            a.open(&low_order, b"net/secret/db/1"),
            Err(SealError::Tampered)
        );
    }

    #[test]
    fn every_sealing_is_fresh() {
        let a = NodeIdentity::generate();
        let one = seal(b"same", &[a.peer_id()], b"c").unwrap();
        let two = seal(b"same", &[a.peer_id()], b"c").unwrap();
        assert_ne!(one.ephemeral, two.ephemeral);
        assert_ne!(one.ciphertext, two.ciphertext);
        assert_eq!(seal(b"x", &[], b"c"), Err(SealError::NoRecipient));
    }
}
