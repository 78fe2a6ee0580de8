//! Streaming payment: the buyer approves the provider as delegate of its MOLT account for a small
//! allowance (one pull's worth ahead), renewed as usage checkpoints arrive; the provider pulls
//! what it has earned; the token program refuses a pull past the allowance, so a provider that
//! pulls early or too much takes at most the allowance more than it served. What was pulled is
//! read from the chain, by both sides alike.

use solana_keypair::Keypair;
use solana_pubkey::Pubkey;
use solana_signature::Signature;
use solana_signer::Signer as _;

use super::client::{ChainClient, Landed, SettlementError};
use super::escrow::SettlementFact;
use super::token::{MoltMint, memo, token_program};
use super::transfers::token_transfers;
use crate::lease::LeaseId;
use crate::{MOLT_DECIMALS, Molt};

/// History entries read per look at a stream.
const STREAM_SCAN: usize = 200;

/// What a stream owes after `elapsed_secs` at `rate_per_hour`, less what was already pulled,
/// never past `cap`.
pub fn amount_due(rate_per_hour: Molt, elapsed_secs: u64, already_pulled: Molt, cap: Molt) -> Molt {
    let earned = u128::from(rate_per_hour.base_units()) * u128::from(elapsed_secs) / 3600;
    let earned = u64::try_from(earned)
        .unwrap_or(u64::MAX)
        .min(cap.base_units());
    Molt::from_base_units(earned.saturating_sub(already_pulled.base_units()))
}

/// The buyer sets the allowance `provider` may pull from its MOLT account to `allowance`
/// (replacing what was left of the last one), decided on a reading that showed `pulled_before`
/// pulled (named in the memo, so that two top-ups at different points are two transactions).
pub async fn approve_allowance(
    client: &ChainClient,
    mint: &MoltMint,
    buyer: &Keypair,
    provider: &Pubkey,
    allowance: Molt,
    pulled_before: Molt,
    lease: &LeaseId,
) -> Result<Landed, SettlementError> {
    let approve = spl_token_interface::instruction::approve_checked(
        &token_program(),
        &mint.account_of(&buyer.pubkey()),
        &mint.address(),
        provider,
        &buyer.pubkey(),
        &[],
        allowance.base_units(),
        MOLT_DECIMALS as u8,
    )
    .map_err(|e| SettlementError::Rpc(e.to_string()))?;
    let instructions = [
        approve,
        memo(&format!(
            "clawbernetes lease {lease} stream allowance after {}",
            pulled_before.base_units()
        )),
    ];
    client.submit(&instructions, buyer, &[]).await
}

/// The provider, as delegate, pulls `amount` from the buyer's account into its own, decided on a
/// reading that showed `pulled_before` pulled. The memo names that reading, so the same decision
/// sent twice within a blockhash's life is one transaction, which lands once.
pub async fn pull(
    client: &ChainClient,
    mint: &MoltMint,
    provider: &Keypair,
    buyer: &Pubkey,
    amount: Molt,
    pulled_before: Molt,
    lease: &LeaseId,
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
        memo(&format!(
            "{}{}",
            pull_memo(lease),
            pulled_before.base_units()
        )),
    ];
    client.submit(&instructions, provider, &[]).await
}

/// How the memo of each of `lease`'s pulls begins (the reading it was decided on follows).
fn pull_memo(lease: &LeaseId) -> String {
    format!("clawbernetes lease {lease} stream pull after ")
}

/// What transaction `signature` shows of a pull of `lease`'s stream: what it moved from
/// `buyer`'s MOLT account, on `provider`'s authority as its delegate, into the provider's
/// account, as a settlement fact (nothing to the buyer or others). `None` unless it landed, did
/// not fail, moved something that way, and its memo (in a transaction the provider signed, as
/// the transfer's authority) names `lease`, so that one lease's pull cannot stand for another's.
pub async fn pull_fact(
    client: &ChainClient,
    mint: &MoltMint,
    signature: &Signature,
    buyer: &Pubkey,
    provider: &Pubkey,
    lease: &LeaseId,
) -> Result<Option<SettlementFact>, SettlementError> {
    let Some(fetched) = client.transaction(signature).await? else {
        return Ok(None);
    };
    let message = &fetched.transaction.message;
    let keys = message.static_account_keys();
    let wanted = pull_memo(lease);
    let names_lease = message.instructions().iter().any(|ix| {
        keys.get(usize::from(ix.program_id_index)) == Some(&spl_memo_interface::v3::id())
            && std::str::from_utf8(&ix.data).is_ok_and(|text| text.starts_with(&wanted))
    });
    let (from, to) = (mint.account_of(buyer), mint.account_of(provider));
    let moved = token_transfers(&fetched.transaction)
        .iter()
        .filter(|t| t.source == from && t.destination == to && t.authority == *provider)
        .try_fold(Molt::default(), |sum, t| sum.checked_add(t.amount));
    match moved {
        Some(moved) if !fetched.failed && names_lease && moved.base_units() > 0 => {
            Ok(Some(SettlementFact {
                signature: signature.to_string(),
                slot: fetched.slot,
                to_provider: moved,
                to_buyer: Molt::default(),
                to_others: Molt::default(),
                block_time_ms: fetched.block_time_ms,
            }))
        }
        _ => Ok(None),
    }
}

/// The buyer withdraws the allowance.
pub async fn revoke(
    client: &ChainClient,
    mint: &MoltMint,
    buyer: &Keypair,
    lease: &LeaseId,
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
        memo(&format!("clawbernetes lease {lease} stream revoke")),
    ];
    client.submit(&instructions, buyer, &[]).await
}

/// Where a stream stands on chain, as either side reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StreamReading {
    /// Moved from the buyer's account on the provider's authority since the lease was funded.
    pub pulled: Molt,
    /// What the provider may still pull.
    pub allowance: Molt,
    /// The newest transaction read; the next reading starts after it.
    pub cursor: Option<Signature>,
    /// The newest of those pulls' transactions.
    pub last_pull: Option<Signature>,
}

/// Reads a stream: the allowance left to `provider` on `buyer`'s MOLT account, and what the
/// provider pulled since `since_slot` (the lease's funding), continuing from `last`'s cursor so
/// each transaction is fetched once.
pub async fn read_stream(
    client: &ChainClient,
    mint: &MoltMint,
    buyer: &Pubkey,
    provider: &Pubkey,
    since_slot: u64,
    last: StreamReading,
) -> Result<StreamReading, SettlementError> {
    let account = mint.account_of(buyer);
    let state = mint.read_account(client, &account).await?;
    let allowance = state
        .delegate
        .filter(|(delegate, _)| delegate == provider)
        .map(|(_, left)| left)
        .unwrap_or_default();
    let entries = client.history(&account, last.cursor, STREAM_SCAN).await?;
    let mut pulled = last.pulled;
    // Newest first: the first pull found is the newest.
    let mut newest_pull = None;
    for entry in entries.iter().filter(|e| !e.failed && e.slot >= since_slot) {
        let Some(fetched) = client.transaction(&entry.signature).await? else {
            continue;
        };
        if fetched.failed {
            continue;
        }
        for transfer in token_transfers(&fetched.transaction) {
            if transfer.source == account && transfer.authority == *provider {
                pulled = pulled.checked_add(transfer.amount).unwrap_or(pulled);
                newest_pull.get_or_insert(entry.signature);
            }
        }
    }
    Ok(StreamReading {
        pulled,
        allowance,
        cursor: entries.first().map(|e| e.signature).or(last.cursor),
        last_pull: newest_pull.or(last.last_pull),
    })
}
