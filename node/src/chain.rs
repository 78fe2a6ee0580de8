//! Where this node's MOLT lives: the cluster URL and mint from the config, or from the
//! `localnet.json` that `clawnode localnet` writes, and the node wallet as a Solana signer.

use std::str::FromStr as _;

use claw_attestation::WalletKeypair;
use claw_market::settlement::MoltMint;
use serde::{Deserialize, Serialize};
use solana_keypair::Keypair;
use solana_pubkey::Pubkey;

use crate::DataDir;

/// Name of the file `clawnode localnet` writes into its data directory.
pub const LOCALNET_INFO_FILE: &str = "localnet.json";

/// What `clawnode localnet` wrote for the wallet and market commands to find.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalnetInfo {
    /// The chain's JSON-RPC URL.
    pub rpc_url: String,
    /// The MOLT mint.
    pub molt_mint: String,
    /// The faucet wallet's address.
    pub faucet: String,
}

/// Why the chain settings cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ChainSettingsError(pub String);

/// The cluster URL and MOLT mint for a data directory: the config's, else those of the
/// `localnet.json` beside it when it names the same URL.
pub fn chain_settings(dir: &DataDir) -> Result<(String, Option<MoltMint>), ChainSettingsError> {
    let chain = &dir.config().chain;
    if let Some(mint) = &chain.molt_mint {
        let mint = Pubkey::from_str(mint).map_err(|_| {
            ChainSettingsError(format!("chain.molt_mint {mint:?} is not an address"))
        })?;
        return Ok((chain.rpc_url.clone(), Some(MoltMint::at(mint))));
    }
    let info: Option<LocalnetInfo> = std::fs::read(dir.root().join(LOCALNET_INFO_FILE))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok());
    match info {
        Some(info) if info.rpc_url == chain.rpc_url => {
            let mint = Pubkey::from_str(&info.molt_mint)
                .map_err(|_| ChainSettingsError("localnet.json's mint is not an address".into()))?;
            Ok((chain.rpc_url.clone(), Some(MoltMint::at(mint))))
        }
        _ => Ok((chain.rpc_url.clone(), None)),
    }
}

/// A wallet keypair as a Solana signer.
pub fn to_keypair(wallet: &WalletKeypair) -> Result<Keypair, ChainSettingsError> {
    Keypair::try_from(&wallet.keypair_bytes()[..])
        .map_err(|e| ChainSettingsError(format!("wallet keypair: {e}")))
}
