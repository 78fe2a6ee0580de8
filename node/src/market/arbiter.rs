//! The arbiter: the third key of every escrow. A node with `market.arbitrate` signs, with the
//! party that asks, the release `claw_market::lease::ruling` allows, and nothing else:
//!
//! - only on terms both parties signed (the provider's terms and the buyer's acceptance of
//!   exactly them), for the escrow derived from them, with the lease's clock starting at the
//!   funding transaction's block time as the chain shows it;
//! - on the checkpoints the asking party shows (each must belong to the lease and claim no more
//!   time than had passed since funding, or the request is refused) and those the other party
//!   shows when the arbiter asks it (it has a few seconds to answer; what does not hold up is set
//!   aside); the one that counts sets the time served, capped by the time passed since funding.
//!   No proven checkpoint: everything back to the buyer.
//!
//! So a buyer whose provider vanished is refunded what the provider's checkpoints do not cover,
//! and a provider whose buyer will not co-sign is paid what its final checkpoint shows.

use std::time::Duration;

use claw_api::Command as _;
use claw_api::market::{
    ArbiterRuling, Arbitration, MarketArbitrate, MarketLeaseStatus, SettledEscrow, StatusParams,
};
use claw_market::lease::ruling::{Case, rule};
use claw_market::lease::{
    Input, LeaseAcceptance, LeaseRecord, LeaseTerms, Signed, UsageCheckpoint,
};
use claw_market::settlement::{Escrow, Release};
use claw_mesh::{ErrorCode, InvokeFailure, InvokeRequest, PeerId};

use super::{ArbitrateParams, Market, address, failure, now_ms};

/// Most checkpoints one ruling is asked to consider.
const MAX_CHECKPOINTS: usize = 8;
/// How long the arbiter waits for the other party's evidence.
const EVIDENCE_DEADLINE: Duration = Duration::from_secs(5);

impl Market {
    /// `market.arbitrate`: rules on an escrow whose parties cannot settle it together, and
    /// answers the release signed by the arbiter for the caller to co-sign and send.
    pub async fn arbitrate(
        &self,
        caller: PeerId,
        params: ArbitrateParams,
    ) -> Result<Arbitration, InvokeFailure> {
        if !self.inner.dir.config().market.arbitrate {
            return Err(failure(
                ErrorCode::Unavailable,
                "this node is not an arbiter",
            ));
        }
        if params.checkpoints.len() > MAX_CHECKPOINTS {
            return Err(failure(
                ErrorCode::InvalidParams,
                format!("at most {MAX_CHECKPOINTS} checkpoints"),
            ));
        }
        let terms = self.open_signed::<LeaseTerms>("terms", &params.terms, None)?;
        let provider = terms
            .signer_peer()
            .ok_or_else(|| failure(ErrorCode::InvalidParams, "the terms' signer is not a peer"))?;
        let buyer: PeerId = terms
            .payload()
            .buyer_peer
            .parse()
            .map_err(|_| failure(ErrorCode::InvalidParams, "the terms name no buyer peer"))?;
        let acceptance =
            self.open_signed::<LeaseAcceptance>("acceptance", &params.acceptance, Some(&buyer))?;
        if terms.payload().arbiter_wallet != self.wallet_address()?.to_string() {
            return Err(failure(
                ErrorCode::Unauthorized,
                "this node is not the arbiter of that lease",
            ));
        }
        let caller_is_buyer = caller == buyer;
        if !caller_is_buyer && caller != provider {
            return Err(failure(
                ErrorCode::Unauthorized,
                "only the lease's buyer or provider may ask for a ruling",
            ));
        }
        let escrow = Escrow::of(terms.payload())
            .map_err(|e| super::driver::refusal(&e))?
            .ok_or_else(|| {
                failure(
                    ErrorCode::Conflict,
                    "a streamed lease has no escrow to rule on",
                )
            })?;
        if let Some(fact) = self.settlement_on_chain(&escrow).await? {
            return Ok(Arbitration::AlreadySettled(SettledEscrow {
                lease_id: terms.payload().lease_id.to_string(),
                settled: true,
                settlement_signature: fact.signature,
            }));
        }
        let chain = self.chain()?;
        escrow
            .verify_funded(&chain.client, &chain.mint)
            .await
            .map_err(|e| {
                failure(
                    ErrorCode::Conflict,
                    format!("the escrow is not funded: {e}"),
                )
            })?;
        let funding = params.funding_signature.parse().map_err(|_| {
            failure(
                ErrorCode::InvalidParams,
                "funding_signature is not a signature",
            )
        })?;
        let funded_at_ms = escrow
            .funding_time(&chain.client, &funding)
            .await
            .map_err(|e| failure(ErrorCode::Conflict, format!("the funding: {e}")))?;
        // What the asking party shows must hold up: a checkpoint of another lease, or one
        // claiming more time than passed since funding, is refused with its reason.
        let mut checkpoints = Vec::new();
        for text in &params.checkpoints {
            let checkpoint = self.open_kept_checkpoint(text, &provider)?;
            checkpoint
                .check_against(&terms, funded_at_ms, now_ms(), self.policy().clock_slack_ms)
                .map_err(|e| super::driver::refusal(&e))?;
            checkpoints.push(checkpoint);
        }
        let other = if caller_is_buyer { provider } else { buyer };
        checkpoints.extend(self.evidence_of(other, &terms, &provider).await);
        let ruling = rule(&Case {
            terms: &terms,
            acceptance: &acceptance,
            funded_at_ms,
            checkpoints: &checkpoints,
            now_ms: now_ms(),
            clock_slack_ms: self.policy().clock_slack_ms,
        })
        .map_err(|e| super::driver::refusal(&e))?;
        let cosigner = if caller_is_buyer {
            escrow.parties.buyer
        } else {
            escrow.parties.provider
        };
        let settlement = self
            .half_signed_settlement(&escrow, ruling.release, &cosigner)
            .await?;
        tracing::info!(lease = %terms.payload().lease_id, %caller, served_secs = ruling.served_secs, basis = ?ruling.basis, to_provider = %ruling.release.to_provider, to_buyer = %ruling.release.to_buyer, "arbitrated");
        Ok(Arbitration::Ruled(ArbiterRuling {
            lease_id: terms.payload().lease_id.to_string(),
            settled: false,
            served_secs: ruling.served_secs,
            checkpoint_counted: ruling.basis,
            set_aside: ruling.set_aside,
            to_provider: ruling.release.to_provider.to_string(),
            to_buyer: ruling.release.to_buyer.to_string(),
            to_provider_base_units: ruling.release.to_provider.base_units(),
            to_buyer_base_units: ruling.release.to_buyer.base_units(),
            settlement,
        }))
    }

    /// A checkpoint shown to the arbiter: signed by the provider (its validity window is not
    /// required: a dispute may come after a checkpoint expired).
    fn open_kept_checkpoint(
        &self,
        text: &str,
        provider: &PeerId,
    ) -> Result<Signed<UsageCheckpoint>, InvokeFailure> {
        let bytes = super::decode_blob("checkpoint", text)?;
        let verified = self
            .inner
            .verifier
            .verify_ignoring_time(&bytes)
            .map_err(|e| failure(ErrorCode::InvalidParams, format!("checkpoint: {e}")))?;
        let signed = Signed::<UsageCheckpoint>::from_verified(&verified)
            .map_err(|e| failure(ErrorCode::InvalidParams, format!("checkpoint: {e}")))?;
        if signed.signer_peer() != Some(*provider) {
            return Err(failure(
                ErrorCode::InvalidParams,
                "a checkpoint not signed by the lease's provider",
            ));
        }
        Ok(signed)
    }

    /// The latest checkpoint the other party holds, if it answers in time.
    async fn evidence_of(
        &self,
        party: PeerId,
        terms: &Signed<LeaseTerms>,
        provider: &PeerId,
    ) -> Option<Signed<UsageCheckpoint>> {
        let params = serde_json::to_value(StatusParams {
            lease_id: terms.payload().lease_id.to_string(),
        })
        .ok()?;
        let request =
            InvokeRequest::new(MarketLeaseStatus::NAME, EVIDENCE_DEADLINE).with_params(params);
        let answered = self.mesh().ok()?.invoke(party, request).await;
        let status = match answered.and_then(MarketLeaseStatus::decode) {
            Ok(status) => status,
            Err(error) => {
                tracing::info!(lease = %terms.payload().lease_id, %party, error = %error.message, "the other party shows no evidence");
                return None;
            }
        };
        self.open_kept_checkpoint(status.checkpoint.as_deref()?, provider)
            .ok()
    }

    /// Asks the configured arbiter to rule on `record`'s escrow, showing the checkpoint this
    /// node holds; co-signs the release it answers (which must pay out exactly the escrow) and
    /// sends it. Answers the settlement as the chain shows it.
    pub(super) async fn ask_arbiter(
        &self,
        record: &LeaseRecord,
    ) -> Result<Vec<Input>, InvokeFailure> {
        let terms = record.terms().map_err(|e| super::driver::refusal(&e))?;
        let Some(escrow) = Escrow::of(terms.payload()).map_err(|e| super::driver::refusal(&e))?
        else {
            return Ok(Vec::new());
        };
        if let Some(fact) = self.settlement_on_chain(&escrow).await? {
            return Ok(vec![Input::Settled(fact)]);
        }
        let (Some(acceptance), Some(funding)) = (&record.acceptance, &record.funding) else {
            return Err(failure(
                ErrorCode::Conflict,
                format!("lease {} has no funded escrow to rule on", record.lease_id),
            ));
        };
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
                    format!(
                        "lease {} needs its arbiter ({}) to settle, and no market.arbiter_peer is configured to reach it",
                        record.lease_id,
                        terms.payload().arbiter_wallet
                    ),
                )
            })?;
        let arbitration = self
            .call_peer::<MarketArbitrate>(
                &arbiter_peer,
                &ArbitrateParams {
                    terms: terms.text(),
                    acceptance: acceptance.text(),
                    funding_signature: funding.signature.clone(),
                    checkpoints: record.checkpoint.iter().map(Signed::text).collect(),
                },
            )
            .await
            .map_err(|e| {
                failure(
                    e.code,
                    format!(
                        "the arbiter ({arbiter_peer}) must act to settle lease {}: {}",
                        record.lease_id, e.message
                    ),
                )
            })?;
        let ruling = match arbitration {
            Arbitration::AlreadySettled(_) => {
                return Ok(self
                    .settlement_on_chain(&escrow)
                    .await?
                    .map(Input::Settled)
                    .into_iter()
                    .collect());
            }
            Arbitration::Ruled(ruling) => ruling,
        };
        // What the arbiter signed is checked against this release before it is co-signed.
        let release = Release {
            to_provider: claw_market::Molt::from_base_units(ruling.to_provider_base_units),
            to_buyer: claw_market::Molt::from_base_units(ruling.to_buyer_base_units),
        };
        let arbiter = address(&terms.payload().arbiter_wallet)?;
        let fact = self
            .cosign_and_send(&escrow, &ruling.settlement, release, &arbiter)
            .await?;
        tracing::info!(lease = %record.lease_id, to_provider = %fact.to_provider, to_buyer = %fact.to_buyer, "settled with the arbiter");
        Ok(vec![Input::Arbitrated(fact)])
    }
}
