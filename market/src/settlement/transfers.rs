//! Token transfers read out of a transaction's instructions: what the chain shows moved, from
//! which account, to which, on whose authority. Memos play no part.

use solana_pubkey::Pubkey;
use solana_transaction::versioned::VersionedTransaction;
use spl_token_interface::instruction::TokenInstruction;

use super::token::token_program;
use crate::Molt;

/// One SPL Token transfer in a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenTransfer {
    /// The token account debited.
    pub source: Pubkey,
    /// The token account credited.
    pub destination: Pubkey,
    /// The owner, delegate or multisig that authorised it.
    pub authority: Pubkey,
    /// How much.
    pub amount: Molt,
}

/// Every `Transfer` and `TransferChecked` of the SPL Token program among the transaction's
/// top-level instructions. Accounts behind address lookup tables cannot be resolved from the
/// transaction alone; such instructions are skipped (settlements are legacy transactions).
pub fn token_transfers(tx: &VersionedTransaction) -> Vec<TokenTransfer> {
    let keys = tx.message.static_account_keys();
    let key = |index: u8| keys.get(usize::from(index)).copied();
    tx.message
        .instructions()
        .iter()
        .filter(|ix| key(ix.program_id_index) == Some(token_program()))
        .filter_map(|ix| {
            let (amount, [source, destination, authority]) =
                match TokenInstruction::unpack(&ix.data).ok()? {
                    TokenInstruction::Transfer { amount } => (
                        amount,
                        [
                            *ix.accounts.first()?,
                            *ix.accounts.get(1)?,
                            *ix.accounts.get(2)?,
                        ],
                    ),
                    TokenInstruction::TransferChecked { amount, .. } => (
                        amount,
                        [
                            *ix.accounts.first()?,
                            *ix.accounts.get(2)?,
                            *ix.accounts.get(3)?,
                        ],
                    ),
                    _ => return None,
                };
            Some(TokenTransfer {
                source: key(source)?,
                destination: key(destination)?,
                authority: key(authority)?,
                amount: Molt::from_base_units(amount),
            })
        })
        .collect()
}
