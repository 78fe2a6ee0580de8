//! The arbiter: the third key of every escrow. A node with `market.arbitrate` signs, with one of
//! the parties, the release that the evidence supports, and nothing else:
//!
//! - with a receipt the provider signed that checks against its terms (a pro-rata split for a
//!   time served no longer than has passed since the terms were signed), that split: this pays
//!   a provider whose buyer never co-signed, and settles a buyer whose provider vanished after
//!   ending the lease;
//! - without one, the arbiter asks the provider itself: a lease it reports as never started is
//!   refunded in full; one it reports running is refused (end it with the provider); a provider
//!   that does not answer leaves nothing to rule on, and the request is refused.

use claw_market::Molt;
use claw_market::lease::{LeaseReceipt, LeaseTerms, Payment};
use claw_market::settlement::{Escrow, EscrowTerms, Release};
use claw_mesh::{ErrorCode, InvokeFailure, PeerId};
use serde::Deserialize;
use serde_json::{Value, json};
use solana_signer::Signer as _;

use super::{Market, address, chain_failure, decode_blob, failure, now_ms, open_signed};

/// `market.arbitrate`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ArbitrateParams {
    /// The provider-signed terms envelope, base-64.
    pub terms: String,
    /// The provider-signed receipt envelope, base-64, if the lease ended.
    #[serde(default)]
    pub receipt: Option<String>,
    /// The escrow's multisig.
    pub multisig: String,
    /// The escrow's vault.
    pub vault: String,
}

impl Market {
    /// `market.arbitrate`: rules on an escrow whose parties cannot settle it together, and
    /// answers the release signed by the arbiter for the caller to co-sign and send.
    pub async fn arbitrate(
        &self,
        caller: PeerId,
        params: ArbitrateParams,
    ) -> Result<Value, InvokeFailure> {
        if !self.inner.dir.config().market.arbitrate {
            return Err(failure(
                ErrorCode::Unavailable,
                "this node is not an arbiter",
            ));
        }
        let bytes = decode_blob("terms", &params.terms)?;
        let verified = self
            .inner
            .verifier
            .verify_at(&bytes, None, now_ms())
            .map_err(|e| failure(ErrorCode::InvalidParams, format!("terms: {e}")))?;
        let provider = verified.signer_peer_id();
        let issued_ms = verified.envelope().issued_at_ms();
        let terms = verified
            .open::<LeaseTerms>()
            .map_err(|e| failure(ErrorCode::InvalidParams, format!("terms: {e}")))?;
        terms
            .validate()
            .map_err(|e| failure(ErrorCode::InvalidParams, e.to_string()))?;
        let arbiter = self.wallet()?;
        if terms.arbiter_wallet != arbiter.pubkey().to_string() {
            return Err(failure(
                ErrorCode::Unauthorized,
                "this node is not the arbiter of that lease",
            ));
        }
        let caller_is_buyer = caller.to_string() == terms.buyer_peer;
        if !caller_is_buyer && caller != provider {
            return Err(failure(
                ErrorCode::Unauthorized,
                "only the lease's buyer or provider may ask for a ruling",
            ));
        }
        if terms.payment != Payment::Escrow {
            return Err(failure(
                ErrorCode::Conflict,
                "a streamed lease has no escrow to rule on",
            ));
        }
        let escrow = Escrow {
            terms: EscrowTerms {
                lease_id: terms.lease_id.clone(),
                buyer: address(&terms.buyer_wallet)?,
                provider: address(&terms.provider_wallet)?,
                arbiter: arbiter.pubkey(),
                amount: terms.amount,
            },
            multisig: address(&params.multisig)?,
            vault: address(&params.vault)?,
        };
        let chain = self.chain()?;
        if let Some(signature) = escrow
            .find_settlement(&chain.client)
            .await
            .map_err(chain_failure)?
        {
            return Ok(
                json!({ "lease_id": terms.lease_id, "settled": true, "settlement_signature": signature.to_string() }),
            );
        }
        chain.verify_escrow(&escrow).await?;

        let receipt_text: Option<String> = match params.receipt {
            Some(receipt) => Some(receipt),
            None => {
                let status = self
                    .call_peer(&provider.to_string(), "market.lease.status", json!({ "lease_id": terms.lease_id }))
                    .await
                    .map_err(|e| {
                        failure(
                            ErrorCode::Unavailable,
                            format!("the provider does not answer ({}); without its receipt nothing shows what was served", e.message),
                        )
                    })?;
                match status["state"].as_str() {
                    Some("running") => {
                        return Err(failure(
                            ErrorCode::Conflict,
                            "the provider reports the lease running: end it with the provider",
                        ));
                    }
                    _ => status["receipt"].as_str().map(str::to_owned),
                }
            }
        };
        let (release, ruling) = match receipt_text {
            Some(text) => {
                let (receipt, _) =
                    open_signed::<LeaseReceipt>(&self.inner.verifier, "receipt", &text, &provider)?;
                receipt
                    .check(&terms)
                    .map_err(|e| failure(ErrorCode::Conflict, e.to_string()))?;
                if receipt.served_secs > now_ms().saturating_sub(issued_ms) / 1000 {
                    return Err(failure(
                        ErrorCode::Conflict,
                        "the receipt claims more time than has passed since the terms",
                    ));
                }
                (receipt.release(), "the split of the provider's receipt")
            }
            None => (
                Release {
                    to_provider: Molt::default(),
                    to_buyer: terms.amount,
                },
                "a full refund: the provider reports the lease never started",
            ),
        };
        let cosigner = if caller_is_buyer {
            escrow.terms.buyer
        } else {
            escrow.terms.provider
        };
        let settlement = self
            .half_signed_settlement(&escrow, release, &cosigner)
            .await?;
        tracing::info!(lease = %terms.lease_id, %caller, ruling, to_provider = %release.to_provider, to_buyer = %release.to_buyer, "arbitrated");
        Ok(json!({
            "lease_id": terms.lease_id,
            "settled": false,
            "ruling": ruling,
            "to_provider": release.to_provider.to_string(),
            "to_buyer": release.to_buyer.to_string(),
            "settlement": settlement,
        }))
    }

    /// Asks the configured arbiter to rule on `record`'s escrow, co-signs the release it answers
    /// after checking it is exactly `expected` (or a full refund when `expected` is `None` and the
    /// caller is the buyer), and sends it. Answers the settlement's signature.
    pub(super) async fn settle_with_arbiter(
        &self,
        record: &super::LeaseRecord,
        expected: Option<Release>,
    ) -> Result<String, InvokeFailure> {
        let arbiter_peer = self
            .inner
            .dir
            .config()
            .market
            .arbiter_peer
            .clone()
            .ok_or_else(|| {
                failure(
                    ErrorCode::Unavailable,
                    "no market.arbiter_peer is configured to rule on it",
                )
            })?;
        let escrow = record.escrow()?;
        let answer = self
            .call_peer(
                &arbiter_peer,
                "market.arbitrate",
                json!({
                    "terms": record.terms_envelope,
                    "receipt": record.receipt_envelope,
                    "multisig": record.multisig,
                    "vault": record.vault,
                }),
            )
            .await?;
        if answer["settled"] == true {
            return Ok(answer["settlement_signature"]
                .as_str()
                .unwrap_or_default()
                .to_owned());
        }
        let release = expected.unwrap_or(Release {
            to_provider: Molt::default(),
            to_buyer: escrow.terms.amount,
        });
        let wire = decode_blob(
            "settlement",
            answer["settlement"].as_str().unwrap_or_default(),
        )?;
        let signature = self
            .cosign_and_send(&escrow, &wire, release, &escrow.terms.arbiter)
            .await?;
        Ok(signature.to_string())
    }
}
