//! Streaming payment, the second mode: the buyer approves the provider as delegate of its MOLT
//! account for a capped allowance; the provider pulls `rate × elapsed` as it serves; the buyer can
//! revoke at any time; the token program itself refuses a pull past the cap.

use solana_keypair::Keypair;
use solana_pubkey::Pubkey;
use solana_signer::Signer as _;

use super::client::{ChainClient, Landed, SettlementError};
use super::token::{MoltMint, memo, token_program};
use crate::{MOLT_DECIMALS, Molt};

/// What a stream owes after `elapsed_secs` at `rate_per_hour`, less what was already pulled,
/// never past `cap`.
pub fn amount_due(rate_per_hour: Molt, elapsed_secs: u64, already_pulled: Molt, cap: Molt) -> Molt {
    let earned = u128::from(rate_per_hour.base_units()) * u128::from(elapsed_secs) / 3600;
    let earned = u64::try_from(earned)
        .unwrap_or(u64::MAX)
        .min(cap.base_units());
    Molt::from_base_units(earned.saturating_sub(already_pulled.base_units()))
}

/// The buyer lets `provider` pull up to `cap` from its MOLT account for `lease_id`.
pub async fn approve_stream(
    client: &ChainClient,
    mint: &MoltMint,
    buyer: &Keypair,
    provider: &Pubkey,
    cap: Molt,
    lease_id: &str,
) -> Result<Landed, SettlementError> {
    let approve = spl_token_interface::instruction::approve_checked(
        &token_program(),
        &mint.account_of(&buyer.pubkey()),
        &mint.address(),
        provider,
        &buyer.pubkey(),
        &[],
        cap.base_units(),
        MOLT_DECIMALS as u8,
    )
    .map_err(|e| SettlementError::Rpc(e.to_string()))?;
    let instructions = [
        approve,
        memo(&format!("clawbernetes lease {lease_id} stream approve")),
    ];
    client.submit(&instructions, buyer, &[]).await
}

/// The provider, as delegate, pulls `amount` from the buyer's account into its own.
pub async fn pull(
    client: &ChainClient,
    mint: &MoltMint,
    provider: &Keypair,
    buyer: &Pubkey,
    amount: Molt,
    lease_id: &str,
) -> Result<Landed, SettlementError> {
    let instructions = [
        mint.create_account_instruction(&provider.pubkey(), &provider.pubkey()),
        mint.transfer_instruction(
            &mint.account_of(buyer),
            &mint.account_of(&provider.pubkey()),
            &provider.pubkey(),
            &[],
            amount,
        )?,
        memo(&format!("clawbernetes lease {lease_id} stream pull")),
    ];
    client.submit(&instructions, provider, &[]).await
}

/// The buyer withdraws the allowance.
pub async fn revoke(
    client: &ChainClient,
    mint: &MoltMint,
    buyer: &Keypair,
    lease_id: &str,
) -> Result<Landed, SettlementError> {
    let revoke = spl_token_interface::instruction::revoke(
        &token_program(),
        &mint.account_of(&buyer.pubkey()),
        &buyer.pubkey(),
        &[],
    )
    .map_err(|e| SettlementError::Rpc(e.to_string()))?;
    let instructions = [
        revoke,
        memo(&format!("clawbernetes lease {lease_id} stream revoke")),
    ];
    client.submit(&instructions, buyer, &[]).await
}
