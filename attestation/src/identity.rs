//! The node's Ed25519 identity: one key from which the libp2p `PeerId` and the OpenClaw device
//! identity both derive.

use std::fmt;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use libp2p_identity::{Keypair, PeerId};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use crate::keyfile::{self, KeyFileError};

/// Length of the secret seed stored in an identity key file.
const SEED_LEN: usize = 32;

/// A node's long-lived signing identity.
///
/// The key file holds exactly the 32-byte Ed25519 seed and must be readable by its owner only.
pub struct NodeIdentity {
    signing_key: SigningKey,
}

impl fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("public_key", &hex::encode(self.public_key().as_bytes()))
            .finish_non_exhaustive()
    }
}

impl NodeIdentity {
    /// Creates a fresh identity from the operating system's random source.
    pub fn generate() -> Self {
        Self {
            signing_key: SigningKey::generate(&mut rand::rngs::OsRng),
        }
    }

    /// Creates an identity from a 32-byte Ed25519 seed.
    pub fn from_seed(seed: [u8; SEED_LEN]) -> Self {
        Self {
            signing_key: SigningKey::from_bytes(&seed),
        }
    }

    /// Loads the identity from `path`, refusing files that group or others can access.
    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        let contents = Zeroizing::new(keyfile::read_secret(path)?);
        let seed: [u8; SEED_LEN] = contents.as_slice().try_into().map_err(|_| {
            KeyFileError::corrupt(
                path,
                format!(
                    "expected a {SEED_LEN}-byte Ed25519 seed, found {} bytes",
                    contents.len()
                ),
            )
        })?;
        let seed = Zeroizing::new(seed);
        Ok(Self::from_seed(*seed))
    }

    /// Writes the identity to `path` with mode 0600; an existing file is replaced only when
    /// `overwrite` is set.
    pub fn save(&self, path: &Path, overwrite: bool) -> Result<(), KeyFileError> {
        let seed = Zeroizing::new(self.signing_key.to_bytes());
        keyfile::write_secret(path, seed.as_slice(), overwrite)
    }

    /// The 32-byte Ed25519 seed, for a sealed key backup.
    pub(crate) fn seed(&self) -> Zeroizing<[u8; SEED_LEN]> {
        Zeroizing::new(self.signing_key.to_bytes())
    }

    /// The Ed25519 public key.
    pub fn public_key(&self) -> VerifyingKey {
        self.signing_key.verifying_key()
    }

    /// Signs `message` with the node key. Callers add their own domain separation.
    pub(crate) fn sign(&self, message: &[u8]) -> ed25519_dalek::Signature {
        self.signing_key.sign(message)
    }

    /// The same key as a libp2p keypair, for the swarm's transport identity.
    pub fn libp2p_keypair(&self) -> Keypair {
        let mut seed = self.signing_key.to_bytes();
        // `ed25519_from_bytes` zeroizes the buffer it is given.
        Keypair::ed25519_from_bytes(&mut seed)
            .expect("a 32-byte buffer is always a valid ed25519 secret")
    }

    /// The X25519 secret of the node key (the first half of its expanded Ed25519 secret), for
    /// opening sealed data.
    pub(crate) fn scalar_bytes(&self) -> [u8; 32] {
        self.signing_key.to_scalar_bytes()
    }

    /// The libp2p peer id derived from the node key.
    pub fn peer_id(&self) -> PeerId {
        peer_id_of(&self.public_key())
    }

    /// The OpenClaw device identity of this node.
    pub fn device(&self) -> DeviceIdentity<'_> {
        DeviceIdentity { identity: self }
    }
}

/// The libp2p `PeerId` of an Ed25519 public key.
pub fn peer_id_of(key: &VerifyingKey) -> PeerId {
    let public = libp2p_identity::ed25519::PublicKey::try_from_bytes(key.as_bytes())
        .expect("a VerifyingKey is always a valid ed25519 public key");
    PeerId::from_public_key(&public.into())
}

/// The Ed25519 public key a peer id was made from, when it embeds one (an identity multihash of
/// an Ed25519 key, as every Clawbernetes peer id is); the inverse of [`peer_id_of`].
pub fn ed25519_key_of(peer: &PeerId) -> Option<[u8; 32]> {
    let multihash = peer.as_ref();
    if multihash.code() != 0 {
        return None;
    }
    libp2p_identity::PublicKey::try_decode_protobuf(multihash.digest())
        .ok()?
        .try_into_ed25519()
        .ok()
        .map(|key| key.to_bytes())
}

/// The OpenClaw view of a node identity: device id, public key and payload signatures, encoded
/// the way the gateway expects them (lowercase hex SHA-256 id, base64url without padding).
#[derive(Debug, Clone, Copy)]
pub struct DeviceIdentity<'a> {
    identity: &'a NodeIdentity,
}

impl DeviceIdentity<'_> {
    /// Lowercase hex SHA-256 of the raw 32-byte public key.
    pub fn id(&self) -> String {
        hex::encode(Sha256::digest(self.identity.public_key().as_bytes()))
    }

    /// The raw public key, base64url without padding.
    pub fn public_key_base64url(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.identity.public_key().as_bytes())
    }

    /// Signs the UTF-8 bytes of a gateway auth payload; the signature is base64url without padding.
    pub fn sign_payload(&self, payload: &str) -> String {
        URL_SAFE_NO_PAD.encode(self.identity.sign(payload.as_bytes()).to_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vector_identity() -> NodeIdentity {
        let mut seed = [0u8; 32];
        for (i, b) in seed.iter_mut().enumerate() {
            *b = i as u8;
        }
        NodeIdentity::from_seed(seed)
    }

    /// The test vector from the OpenClaw protocol notes (RFC 8032 Ed25519, computed independently).
    #[test]
    fn device_identity_matches_the_gateway_vector() {
        let identity = vector_identity();
        let device = identity.device();
        assert_eq!(
            device.public_key_base64url(),
            "A6EHv_POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg"
        );
        assert_eq!(
            device.id(),
            "56475aa75463474c0285df5dbf2bcab73da651358839e9b77481b2eab107708c"
        );
        let payload = format!(
            "v3|{}|node-host|node|node||1737264000000|secret-token|nonce-123|linux|",
            device.id()
        );
        assert_eq!(
            device.sign_payload(&payload),
            "YqFUMIn9ayiqrAtp_EQyrBzkbODIyX4id8DvzYpnvSYjeJzjcZmDYQC8EX7iUwYZT6DJTILvAaegunVom4JGCA"
        );
    }

    #[test]
    fn peer_id_comes_from_the_same_key() {
        let identity = vector_identity();
        assert_eq!(
            identity.peer_id(),
            identity.libp2p_keypair().public().to_peer_id()
        );
    }

    #[test]
    fn save_and_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.key");
        let identity = NodeIdentity::generate();
        identity.save(&path, false).unwrap();
        let loaded = NodeIdentity::load(&path).unwrap();
        assert_eq!(loaded.public_key(), identity.public_key());
    }

    #[test]
    fn truncated_key_file_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.key");
        keyfile::write_secret(&path, &[7u8; 31], false).unwrap();
        let err = NodeIdentity::load(&path).unwrap_err();
        assert!(matches!(err, KeyFileError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("31 bytes"));
    }

    #[test]
    fn a_peer_id_gives_back_its_key() {
        let identity = NodeIdentity::generate();
        let key = identity.public_key();
        assert_eq!(ed25519_key_of(&peer_id_of(&key)), Some(key.to_bytes()));
        // A peer id that hashes its key (SHA-256 multihash) embeds none.
        let mut bytes = vec![0x12, 0x20];
        bytes.extend([7u8; 32]);
        let hashed = PeerId::from_bytes(&bytes).expect("a peer id");
        assert_eq!(ed25519_key_of(&hashed), None);
    }
}
