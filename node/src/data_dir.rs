//! The node's data directory: identity, wallet, config and store, in one place.
//!
//! ```text
//! <data dir>/            mode 0700
//!   identity.key         node Ed25519 seed, 0600
//!   wallet.json          Solana keypair (solana-keygen format), 0600
//!   config.toml          NodeConfig
//!   store/               sled database
//! ```

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use claw_attestation::{KeyFileError, NodeIdentity, WalletKeypair};

use crate::config::{ConfigError, NodeConfig};
use crate::store::{Store, StoreError};

const IDENTITY_FILE: &str = "identity.key";
const WALLET_FILE: &str = "wallet.json";
const CONFIG_FILE: &str = "config.toml";
const STORE_DIR: &str = "store";
const MEMBERSHIP_FILE: &str = "membership.cred";
/// A credential is a few hundred bytes; anything far larger is not one.
const MAX_MEMBERSHIP_BYTES: usize = 4096;

/// Why the data directory could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataDirError {
    /// Nothing has been initialised there.
    #[error("no clawnode data directory at {0}: run `clawnode init --data-dir {0}` first")]
    NotInitialised(String),
    /// `init` was asked to run where an identity already exists.
    #[error(
        "{path} already holds a node identity (peer {peer_id}); pass --force to replace it (the wallet is kept)"
    )]
    AlreadyInitialised {
        /// The data directory.
        path: String,
        /// The existing identity's peer id, or why it could not be read.
        peer_id: String,
    },
    /// A key file failed to load or save.
    #[error(transparent)]
    Key(#[from] KeyFileError),
    /// The config failed to load.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The store failed to open.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The operating system refused an operation.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// What `init` did to an existing wallet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalletOutcome {
    /// A new wallet was generated.
    Created,
    /// An existing wallet was kept.
    Kept,
}

/// Creates `root` (mode 0700) when it is not there, and makes it owner-only.
fn make_root(root: &Path) -> Result<(), DataDirError> {
    let io = |source| DataDirError::Io {
        path: root.display().to_string(),
        source,
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)
        .map_err(io)?;
    fs::set_permissions(root, fs::Permissions::from_mode(0o700)).map_err(io)
}

/// Writes `config` into `root` when it holds none, or always with `replace`, and loads what
/// is there.
fn write_config(
    root: &Path,
    config: &NodeConfig,
    replace: bool,
) -> Result<NodeConfig, DataDirError> {
    let config_path = root.join(CONFIG_FILE);
    if replace || !config_path.exists() {
        let tmp = config_path.with_extension("toml.tmp");
        fs::write(&tmp, config.to_toml())
            .and_then(|()| fs::rename(&tmp, &config_path))
            .map_err(|source| DataDirError::Io {
                path: config_path.display().to_string(),
                source,
            })?;
    }
    Ok(NodeConfig::load(&config_path)?)
}

/// An initialised data directory, with its identity, wallet and config loaded.
#[derive(Debug)]
pub struct DataDir {
    root: PathBuf,
    identity: NodeIdentity,
    wallet: WalletKeypair,
    config: NodeConfig,
}

impl DataDir {
    /// Creates identity, wallet and default config in `root`.
    ///
    /// An existing identity is replaced only with `force`; an existing wallet is always kept,
    /// since replacing it could strand funds. `config` is written when there is none yet, or
    /// when `force` is set.
    pub fn init(
        root: &Path,
        config: &NodeConfig,
        force: bool,
    ) -> Result<(Self, WalletOutcome), DataDirError> {
        config.validate()?;
        make_root(root)?;

        let identity_path = root.join(IDENTITY_FILE);
        if identity_path.exists() && !force {
            let peer_id = NodeIdentity::load(&identity_path)
                .map(|id| id.peer_id().to_string())
                .unwrap_or_else(|e| format!("unreadable: {e}"));
            return Err(DataDirError::AlreadyInitialised {
                path: root.display().to_string(),
                peer_id,
            });
        }
        let identity = NodeIdentity::generate();
        identity.save(&identity_path, force)?;

        let wallet_path = root.join(WALLET_FILE);
        let (wallet, outcome) = if wallet_path.exists() {
            (WalletKeypair::load(&wallet_path)?, WalletOutcome::Kept)
        } else {
            let wallet = WalletKeypair::generate();
            wallet.save(&wallet_path, false)?;
            (wallet, WalletOutcome::Created)
        };

        let config = write_config(root, config, force)?;
        Ok((
            Self {
                root: root.to_path_buf(),
                identity,
                wallet,
                config,
            },
            outcome,
        ))
    }

    /// Makes `root` a data directory for a node whose keys came from a key backup
    /// (`backup.keys`): the same peer id and wallet, a fresh store, and `config` unless one
    /// is there. Refused where an identity or a wallet already is.
    pub fn restore(
        root: &Path,
        identity: &NodeIdentity,
        wallet: &WalletKeypair,
        config: &NodeConfig,
    ) -> Result<Self, DataDirError> {
        config.validate()?;
        for file in [IDENTITY_FILE, WALLET_FILE] {
            let path = root.join(file);
            if path.exists() {
                return Err(KeyFileError::AlreadyExists { path }.into());
            }
        }
        make_root(root)?;
        identity.save(&root.join(IDENTITY_FILE), false)?;
        wallet.save(&root.join(WALLET_FILE), false)?;
        write_config(root, config, false)?;
        Self::open(root)
    }

    /// Opens an initialised data directory.
    pub fn open(root: &Path) -> Result<Self, DataDirError> {
        let identity_path = root.join(IDENTITY_FILE);
        if !root.is_dir() || !identity_path.exists() {
            return Err(DataDirError::NotInitialised(root.display().to_string()));
        }
        let identity = NodeIdentity::load(&identity_path)?;
        let wallet = WalletKeypair::load(&root.join(WALLET_FILE))?;
        let config_path = root.join(CONFIG_FILE);
        let config = if config_path.exists() {
            NodeConfig::load(&config_path)?
        } else {
            NodeConfig::default()
        };
        Ok(Self {
            root: root.to_path_buf(),
            identity,
            wallet,
            config,
        })
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The node identity.
    pub fn identity(&self) -> &NodeIdentity {
        &self.identity
    }

    /// The Solana wallet.
    pub fn wallet(&self) -> &WalletKeypair {
        &self.wallet
    }

    /// The configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// The fleet membership credential this node was given (`clawnode membership install`), if any:
    /// announced with the node, so peers that trust its operator count it a member.
    pub fn membership(&self) -> Option<Vec<u8>> {
        fs::read(self.root.join(MEMBERSHIP_FILE))
            .ok()
            .filter(|bytes| bytes.len() <= MAX_MEMBERSHIP_BYTES)
    }

    /// Keeps `credential` as this node's membership (atomically), replacing any before it. A
    /// running node announces it from its next announcement.
    pub fn set_membership(&self, credential: &[u8]) -> Result<(), DataDirError> {
        let path = self.root.join(MEMBERSHIP_FILE);
        let tmp = path.with_extension("tmp");
        fs::write(&tmp, credential)
            .and_then(|()| fs::rename(&tmp, &path))
            .map_err(|source| DataDirError::Io {
                path: path.display().to_string(),
                source,
            })
    }

    /// Changes the config through `edit`, validates it, and writes it back (atomically; every
    /// setting `edit` leaves alone is kept). A running node reads it at its next start.
    pub fn update_config(
        &mut self,
        edit: impl FnOnce(&mut NodeConfig),
    ) -> Result<&NodeConfig, DataDirError> {
        let mut config = self.config.clone();
        edit(&mut config);
        config.validate()?;
        let path = self.root.join(CONFIG_FILE);
        let tmp = path.with_extension("toml.tmp");
        fs::write(&tmp, config.to_toml())
            .and_then(|()| fs::rename(&tmp, &path))
            .map_err(|source| DataDirError::Io {
                path: path.display().to_string(),
                source,
            })?;
        self.config = config;
        Ok(&self.config)
    }

    /// Opens the node's store. Only one process may hold it at a time.
    pub fn open_store(&self) -> Result<Store, DataDirError> {
        Ok(Store::open(&self.root.join(STORE_DIR))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_then_open() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("node");
        let (created, outcome) = DataDir::init(&root, &NodeConfig::default(), false).unwrap();
        assert_eq!(outcome, WalletOutcome::Created);
        let mode = fs::metadata(&root).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let opened = DataDir::open(&root).unwrap();
        assert_eq!(opened.identity().peer_id(), created.identity().peer_id());
        assert_eq!(opened.wallet().address(), created.wallet().address());
    }

    #[test]
    fn init_refuses_to_replace_an_identity_without_force_and_keeps_the_wallet_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let (first, _) = DataDir::init(dir.path(), &NodeConfig::default(), false).unwrap();
        let err = DataDir::init(dir.path(), &NodeConfig::default(), false).unwrap_err();
        assert!(
            err.to_string()
                .contains(&first.identity().peer_id().to_string()),
            "{err}"
        );
        let (second, outcome) = DataDir::init(dir.path(), &NodeConfig::default(), true).unwrap();
        assert_eq!(outcome, WalletOutcome::Kept);
        assert_ne!(second.identity().peer_id(), first.identity().peer_id());
        assert_eq!(second.wallet().address(), first.wallet().address());
    }

    #[test]
    fn open_without_init_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let err = DataDir::open(&dir.path().join("missing")).unwrap_err();
        assert!(err.to_string().contains("clawnode init"), "{err}");
    }
}
