//! Releasing an escrow with another key: one party signs the settlement half way, the other
//! checks it is exactly the release it agreed to, adds its signature and sends it. What landed is
//! then read back from the chain, never taken from anyone's word.

use claw_market::settlement::{Escrow, Release, SettlementFact};
use claw_mesh::{ErrorCode, InvokeFailure};
use solana_pubkey::Pubkey;

use super::{Market, chain_failure, decode_blob, encode_blob, failure};

impl Market {
    /// A settlement of `escrow` paying `release`, fees paid by `other_signer`, signed for the
    /// multisig by this node's wallet and `other_signer`, with this wallet's signature only: the
    /// wire form, base-64, for `other_signer` to check, co-sign and send.
    pub(super) async fn half_signed_settlement(
        &self,
        escrow: &Escrow,
        release: Release,
        other_signer: &Pubkey,
    ) -> Result<String, InvokeFailure> {
        let wallet = self.wallet()?;
        let chain = self.chain()?;
        let me = self.wallet_address()?;
        let (blockhash, _) = chain
            .client
            .latest_blockhash()
            .await
            .map_err(chain_failure)?;
        let mut tx = escrow
            .settlement_transaction(
                &chain.mint,
                release,
                other_signer,
                [&me, other_signer],
                blockhash,
            )
            .map_err(chain_failure)?;
        tx.try_partial_sign(&[wallet], blockhash)
            .map_err(|e| failure(ErrorCode::Internal, format!("signing the settlement: {e}")))?;
        let wire =
            bincode1::serialize(&tx).map_err(|e| failure(ErrorCode::Internal, e.to_string()))?;
        Ok(encode_blob(&wire))
    }

    /// Checks a settlement of `escrow` that `other_signer` signed: exactly `release`, fees paid
    /// by this node's wallet, signed for the multisig by `other_signer` and this wallet. Then
    /// adds this wallet's signature, sends it, and answers the settlement as the chain shows it.
    pub(super) async fn cosign_and_send(
        &self,
        escrow: &Escrow,
        text: &str,
        release: Release,
        other_signer: &Pubkey,
    ) -> Result<SettlementFact, InvokeFailure> {
        let wire = decode_blob("settlement", text)?;
        let wallet = self.wallet()?;
        let chain = self.chain()?;
        let me = self.wallet_address()?;
        let mut tx = escrow
            .check_settlement(&chain.mint, &wire, release, &me, [other_signer, &me])
            .map_err(|e| failure(ErrorCode::Conflict, format!("settlement refused: {e}")))?;
        let blockhash = tx.message.recent_blockhash;
        tx.try_partial_sign(&[wallet], blockhash)
            .map_err(|e| failure(ErrorCode::Internal, format!("co-signing: {e}")))?;
        let (_, last_valid) = chain
            .client
            .latest_blockhash()
            .await
            .map_err(chain_failure)?;
        let landed = chain
            .client
            .submit_signed(&tx, last_valid)
            .await
            .map_err(chain_failure)?;
        escrow
            .settlement_fact(&chain.client, &chain.mint, &landed.signature)
            .await
            .map_err(chain_failure)?
            .ok_or_else(|| {
                failure(
                    ErrorCode::Internal,
                    format!("settlement {} landed but moved nothing", landed.signature),
                )
            })
    }

    /// The escrow's settlement, if the chain shows one.
    pub(super) async fn settlement_on_chain(
        &self,
        escrow: &Escrow,
    ) -> Result<Option<SettlementFact>, InvokeFailure> {
        let chain = self.chain()?;
        escrow
            .find_settlement(&chain.client, &chain.mint)
            .await
            .map_err(chain_failure)
    }
}
