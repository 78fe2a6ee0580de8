//! The node's Solana wallet: a keypair file in `solana-keygen`'s JSON format, kept apart from the
//! node identity so that money and mesh membership can be rotated independently.

use std::fmt;
use std::path::Path;

use ed25519_dalek::SigningKey;
use zeroize::Zeroizing;

use crate::keyfile::{self, KeyFileError};

/// A Solana keypair as `solana-keygen` writes it: a JSON array of 64 numbers, the 32-byte secret
/// seed followed by the 32-byte public key.
pub struct WalletKeypair {
    signing_key: SigningKey,
}

impl fmt::Debug for WalletKeypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WalletKeypair")
            .field("address", &self.address())
            .finish_non_exhaustive()
    }
}

impl WalletKeypair {
    /// Creates a fresh keypair from the operating system's random source.
    pub fn generate() -> Self {
        Self {
            signing_key: SigningKey::generate(&mut rand::rngs::OsRng),
        }
    }

    /// Loads a `solana-keygen` JSON keypair file, refusing files that group or others can access
    /// and files whose public half does not match their secret half.
    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        let contents = Zeroizing::new(keyfile::read_secret(path)?);
        let bytes: Zeroizing<Vec<u8>> = Zeroizing::new(
            serde_json::from_slice(&contents)
                .map_err(|e| KeyFileError::corrupt(path, format!("not a JSON byte array: {e}")))?,
        );
        if bytes.len() != 64 {
            return Err(KeyFileError::corrupt(
                path,
                format!("expected 64 bytes, found {}", bytes.len()),
            ));
        }
        let mut seed = Zeroizing::new([0u8; 32]);
        seed.copy_from_slice(&bytes[..32]);
        let signing_key = SigningKey::from_bytes(&seed);
        if signing_key.verifying_key().as_bytes() != &bytes[32..] {
            return Err(KeyFileError::corrupt(
                path,
                "public key does not match the secret key",
            ));
        }
        Ok(Self { signing_key })
    }

    /// The keypair from its 64 bytes (secret seed, then public key), when the halves match.
    pub fn from_keypair_bytes(bytes: &[u8; 64]) -> Option<Self> {
        let signing_key = SigningKey::from_keypair_bytes(bytes).ok()?;
        Some(Self { signing_key })
    }

    /// Writes the keypair in `solana-keygen` format with mode 0600.
    pub fn save(&self, path: &Path, overwrite: bool) -> Result<(), KeyFileError> {
        let json = Zeroizing::new(
            serde_json::to_vec(&self.keypair_bytes().to_vec())
                .expect("serialising a byte vector cannot fail"),
        );
        keyfile::write_secret(path, &json, overwrite)
    }

    /// The 64 keypair bytes (secret seed, then public key), as Solana's `Keypair` expects them.
    pub fn keypair_bytes(&self) -> Zeroizing<[u8; 64]> {
        Zeroizing::new(self.signing_key.to_keypair_bytes())
    }

    /// The raw 32-byte public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.signing_key.verifying_key().to_bytes()
    }

    /// The wallet address: the public key in base58, as Solana prints it.
    pub fn address(&self) -> String {
        bs58::encode(self.public_key()).into_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_in_solana_keygen_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wallet.json");
        let wallet = WalletKeypair::generate();
        wallet.save(&path, false).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let numbers: Vec<u8> = serde_json::from_str(&text).unwrap();
        assert_eq!(numbers.len(), 64);
        assert_eq!(&numbers[32..], wallet.public_key());
        let loaded = WalletKeypair::load(&path).unwrap();
        assert_eq!(loaded.address(), wallet.address());
        assert_eq!(
            bs58::decode(loaded.address()).into_vec().unwrap(),
            wallet.public_key()
        );
    }

    #[test]
    fn mismatched_public_half_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wallet.json");
        let mut bytes = WalletKeypair::generate().keypair_bytes().to_vec();
        bytes[40] ^= 1;
        keyfile::write_secret(&path, &serde_json::to_vec(&bytes).unwrap(), false).unwrap();
        let err = WalletKeypair::load(&path).unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
    }
}
