//! Node-key backups: a node's identity and wallet keys, sealed ([`crate::seal`]) to one other
//! key, so that a lost or replaced machine can take its place again (same peer id, same
//! wallet) while the backup itself is worth nothing to whoever holds the file.
//!
//! A backup is one small file:
//!
//! ```text
//! "CLAWKEYS" | version 1 | network length (1 byte) | network | node public key (32)
//!   | recipient public key (32) | ephemeral X25519 key (32) | nonce (12) | wrapped key (48)
//!   | ciphertext (96 + 16)
//! ```
//!
//! Everything before the ephemeral key is the sealing's context, so the header cannot be
//! changed without the backup failing to open; once open, the keys must be the node's the
//! header names.

use std::collections::BTreeMap;

use zeroize::Zeroizing;

use crate::identity::{NodeIdentity, peer_id_of};
use crate::sealing::{SealError, Sealed, seal};
use crate::wallet::WalletKeypair;
use crate::{PeerId, VerifyingKey, ed25519_key_of};

const MAGIC: &[u8; 8] = b"CLAWKEYS";
const VERSION: u8 = 1;
/// The plaintext: the identity's seed, then the wallet's 64 keypair bytes.
const PLAINTEXT_LEN: usize = 32 + 64;
const TAG_LEN: usize = 16;
const WRAPPED_LEN: usize = 32 + TAG_LEN;
/// The longest network name a backup carries.
const MAX_NETWORK_LEN: usize = 64;
/// The size of every backup's fixed part after the network name.
const BODY_LEN: usize = 32 + 32 + 32 + 12 + WRAPPED_LEN + PLAINTEXT_LEN + TAG_LEN;

/// Why a node-key backup could not be made or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyBackupError {
    /// The bytes are not a node-key backup of this version.
    #[error("not a node-key backup: {0}")]
    Malformed(&'static str),
    /// The backup is sealed to another key than the one opening it.
    #[error("this backup is sealed to {sealed_to}, not to {opener}")]
    NotRecipient {
        /// The key it is sealed to (a peer id).
        sealed_to: String,
        /// The key that tried to open it (a peer id).
        opener: String,
    },
    /// Sealing or opening failed (a changed file fails here).
    #[error(transparent)]
    Seal(#[from] SealError),
}

/// A node's keys, as a backup holds them.
pub struct NodeKeys {
    /// The node's identity (its peer id).
    pub identity: NodeIdentity,
    /// Its Solana wallet.
    pub wallet: WalletKeypair,
}

impl std::fmt::Debug for NodeKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeKeys")
            .field("peer_id", &self.identity.peer_id())
            .field("wallet", &self.wallet.address())
            .finish()
    }
}

/// What a backup's header says, readable without opening it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyBackupHeader {
    /// The network the node belongs to.
    pub network: String,
    /// The node whose keys it holds.
    pub node: PeerId,
    /// The key it is sealed to.
    pub sealed_to: PeerId,
}

fn header_bytes(network: &str, node: &VerifyingKey, recipient: &[u8; 32]) -> Vec<u8> {
    let mut header = Vec::with_capacity(MAGIC.len() + 2 + network.len() + 64);
    header.extend_from_slice(MAGIC);
    header.push(VERSION);
    header.push(network.len() as u8);
    header.extend_from_slice(network.as_bytes());
    header.extend_from_slice(node.as_bytes());
    header.extend_from_slice(recipient);
    header
}

/// Seals `identity`'s and `wallet`'s secret keys, of a node in `network`, to `recipient`
/// (a peer id made from an Ed25519 key): the backup's bytes.
pub fn seal_node_keys(
    identity: &NodeIdentity,
    wallet: &WalletKeypair,
    network: &str,
    recipient: &PeerId,
) -> Result<Vec<u8>, KeyBackupError> {
    if network.len() > MAX_NETWORK_LEN {
        return Err(KeyBackupError::Malformed("the network name is too long"));
    }
    let recipient_key = ed25519_key_of(recipient).ok_or(SealError::NotEd25519(*recipient))?;
    let header = header_bytes(network, &identity.public_key(), &recipient_key);
    let mut plaintext = Zeroizing::new([0u8; PLAINTEXT_LEN]);
    plaintext[..32].copy_from_slice(identity.seed().as_slice());
    plaintext[32..].copy_from_slice(wallet.keypair_bytes().as_slice());
    let sealed = seal(plaintext.as_slice(), &[*recipient], &header)?;
    let wrapped = sealed
        .recipients
        .get(recipient)
        .ok_or(SealError::NoRecipient)?;
    let mut out = header;
    out.extend_from_slice(&sealed.ephemeral);
    out.extend_from_slice(&sealed.nonce);
    out.extend_from_slice(wrapped);
    out.extend_from_slice(&sealed.ciphertext);
    Ok(out)
}

/// Splits a backup into its header (the sealing's context), what the header says, and the
/// sealed part.
fn parse(bytes: &[u8]) -> Result<(&[u8], KeyBackupHeader, Sealed), KeyBackupError> {
    let malformed = KeyBackupError::Malformed;
    let rest = bytes
        .strip_prefix(MAGIC.as_slice())
        .ok_or(malformed("it does not start with CLAWKEYS"))?;
    let (&version, rest) = rest.split_first().ok_or(malformed("it is cut short"))?;
    if version != VERSION {
        return Err(malformed("unknown version"));
    }
    let (&network_len, rest) = rest.split_first().ok_or(malformed("it is cut short"))?;
    let network_len = usize::from(network_len);
    if network_len > MAX_NETWORK_LEN || rest.len() != network_len + BODY_LEN {
        return Err(malformed("it has the wrong length"));
    }
    let (network, rest) = rest.split_at(network_len);
    let network = std::str::from_utf8(network)
        .map_err(|_| malformed("the network name is not UTF-8"))?
        .to_owned();
    let take = |rest: &mut &[u8], n: usize| {
        let (head, tail) = rest.split_at(n);
        *rest = tail;
        head.to_vec()
    };
    let mut rest = rest;
    let node_key = take(&mut rest, 32);
    let recipient_key = take(&mut rest, 32);
    let header_len = bytes.len() - rest.len();
    let ephemeral: [u8; 32] = take(&mut rest, 32)
        .try_into()
        .map_err(|_| malformed("it is cut short"))?;
    let nonce: [u8; 12] = take(&mut rest, 12)
        .try_into()
        .map_err(|_| malformed("it is cut short"))?;
    let wrapped = take(&mut rest, WRAPPED_LEN);
    let ciphertext = rest.to_vec();
    let peer = |key: &[u8]| -> Result<PeerId, KeyBackupError> {
        let bytes: [u8; 32] = key.try_into().map_err(|_| malformed("bad key"))?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| malformed("bad key"))?;
        Ok(peer_id_of(&key))
    };
    let header = KeyBackupHeader {
        network,
        node: peer(&node_key)?,
        sealed_to: peer(&recipient_key)?,
    };
    let sealed = Sealed {
        ephemeral,
        nonce,
        ciphertext,
        recipients: BTreeMap::from([(header.sealed_to, wrapped)]),
    };
    Ok((&bytes[..header_len], header, sealed))
}

impl NodeIdentity {
    /// Opens a node-key backup sealed to this key: the node's keys, checked against the
    /// header (a backup whose header or body was changed does not open).
    pub fn open_node_keys(
        &self,
        bytes: &[u8],
    ) -> Result<(KeyBackupHeader, NodeKeys), KeyBackupError> {
        let (context, header, sealed) = parse(bytes)?;
        if header.sealed_to != self.peer_id() {
            return Err(KeyBackupError::NotRecipient {
                sealed_to: header.sealed_to.to_string(),
                opener: self.peer_id().to_string(),
            });
        }
        let plaintext = self.open(&sealed, context)?;
        if plaintext.len() != PLAINTEXT_LEN {
            return Err(SealError::Tampered.into());
        }
        let mut seed = Zeroizing::new([0u8; 32]);
        seed.copy_from_slice(&plaintext[..32]);
        let identity = NodeIdentity::from_seed(*seed);
        let mut keypair = Zeroizing::new([0u8; 64]);
        keypair.copy_from_slice(&plaintext[32..]);
        let wallet = WalletKeypair::from_keypair_bytes(&keypair).ok_or(SealError::Tampered)?;
        if identity.peer_id() != header.node {
            return Err(SealError::Tampered.into());
        }
        Ok((header, NodeKeys { identity, wallet }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backup_opens_only_for_its_recipient_and_only_unchanged() {
        let node = NodeIdentity::generate();
        let wallet = WalletKeypair::generate();
        let admin = NodeIdentity::generate();
        let bytes = seal_node_keys(&node, &wallet, "fleet-a", &admin.peer_id()).unwrap();

        let (_, header, _) = parse(&bytes).unwrap();
        assert_eq!(header.node, node.peer_id());
        assert_eq!(header.sealed_to, admin.peer_id());
        assert_eq!(header.network, "fleet-a");

        let (_, keys) = admin.open_node_keys(&bytes).unwrap();
        assert_eq!(keys.identity.peer_id(), node.peer_id());
        assert_eq!(keys.wallet.address(), wallet.address());
        assert_eq!(*keys.wallet.keypair_bytes(), *wallet.keypair_bytes());

        // The node itself, or anyone else, cannot open it.
        for other in [&node, &NodeIdentity::generate()] {
            assert!(matches!(
                other.open_node_keys(&bytes),
                Err(KeyBackupError::NotRecipient { .. })
            ));
        }
        // Every single changed byte is refused, header included.
        for at in 0..bytes.len() {
            let mut changed = bytes.clone();
            changed[at] ^= 0x01;
            assert!(admin.open_node_keys(&changed).is_err(), "byte {at}");
        }
        assert!(admin.open_node_keys(&bytes[..bytes.len() - 1]).is_err());
        // A header naming another node, re-pointed at the same admin, does not open.
        let other = NodeIdentity::generate();
        let mut swapped = bytes.clone();
        let at = MAGIC.len() + 2 + "fleet-a".len();
        swapped[at..at + 32].copy_from_slice(other.public_key().as_bytes());
        assert!(matches!(
            admin.open_node_keys(&swapped),
            Err(KeyBackupError::Seal(SealError::Tampered))
        ));
    }
}
