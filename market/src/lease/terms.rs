//! The terms a provider signs, the buyer's signed acceptance of them, and the checks each party
//! makes of the other's message.

use claw_attestation::{PayloadKind, SignedPayload};
use serde::{Deserialize, Serialize};
use solana_pubkey::Pubkey;

use super::{LeaseError, LeaseId, Payment, Signed};
use crate::Molt;
use crate::order::Bid;
use crate::settlement::EscrowAddresses;

/// Longest GPU UUID or model name in terms.
const MAX_TEXT: usize = 96;
/// Longest lease, hours (366 days).
pub(crate) const MAX_HOURS: u32 = 24 * 366;

/// What a buyer's wallet signs to show it controls the wallet a bid names: this prefix, then the
/// bid envelope's digest. The signature travels with `market.lease.request`.
pub fn wallet_proof_message(bid_digest: &[u8; 32]) -> Vec<u8> {
    let mut message = b"clawbernetes/lease-request/v2\n".to_vec();
    message.extend_from_slice(bid_digest);
    message
}

/// The terms a provider signs when it accepts a bid: what is leased, for how long, at what price,
/// and the three keys of the escrow. They count once the buyer has signed its acceptance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseTerms {
    /// Derived from the bid and the provider's key ([`LeaseId::derive`]).
    pub lease_id: LeaseId,
    /// The network the lease is on.
    pub network: String,
    /// The offer accepted.
    pub offer_id: u64,
    /// SHA-256 of the buyer's signed bid envelope.
    pub bid_digest: [u8; 32],
    /// The buyer's peer id.
    pub buyer_peer: String,
    /// The buyer's wallet (base-58): funds the escrow, and its base key.
    pub buyer_wallet: String,
    /// The provider's wallet (base-58).
    pub provider_wallet: String,
    /// The arbiter's wallet (base-58): the escrow's third key.
    pub arbiter_wallet: String,
    /// GPU model.
    pub gpu_model: String,
    /// UUIDs of the GPUs reserved for the lease.
    pub gpus: Vec<String>,
    /// Whether they are simulated.
    pub simulated: bool,
    /// Price per GPU-hour.
    pub price_per_gpu_hour: Molt,
    /// Lease length, hours.
    pub hours: u32,
    /// What the buyer escrows (or, streaming, at most pays): price × GPUs × hours.
    pub amount: Molt,
    /// How it is paid.
    pub payment: Payment,
    /// The reservation lapses unless the lease is funded by then, Unix ms.
    pub fund_by_ms: u64,
    /// The provider signs a usage checkpoint at least this often while the lease runs.
    pub checkpoint_secs: u32,
}

impl SignedPayload for LeaseTerms {
    const KIND: PayloadKind = PayloadKind::LeaseTerms;
}

/// The escrow's three keys, read from terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parties {
    /// The buyer's wallet.
    pub buyer: Pubkey,
    /// The provider's wallet.
    pub provider: Pubkey,
    /// The arbiter's wallet.
    pub arbiter: Pubkey,
}

fn wallet(what: &str, text: &str) -> Result<Pubkey, LeaseError> {
    text.parse()
        .map_err(|_| LeaseError::Malformed(format!("{what} {text:?} is not a wallet address")))
}

impl LeaseTerms {
    /// The lease length in seconds.
    pub fn total_secs(&self) -> u64 {
        u64::from(self.hours) * 3600
    }

    /// What the lease costs per hour: price × GPUs.
    pub fn rate_per_hour(&self) -> Molt {
        let gpus = u64::try_from(self.gpus.len()).unwrap_or(u64::MAX);
        self.price_per_gpu_hour
            .checked_mul(gpus)
            .unwrap_or(Molt::from_base_units(u64::MAX))
    }

    /// The three keys, distinct: with two keys alike, one party would hold two of the escrow's
    /// three signatures and could release it alone.
    pub fn parties(&self) -> Result<Parties, LeaseError> {
        let parties = Parties {
            buyer: wallet("the buyer's wallet", &self.buyer_wallet)?,
            provider: wallet("the provider's wallet", &self.provider_wallet)?,
            arbiter: wallet("the arbiter's wallet", &self.arbiter_wallet)?,
        };
        if parties.buyer == parties.provider
            || parties.buyer == parties.arbiter
            || parties.provider == parties.arbiter
        {
            return Err(LeaseError::Malformed(format!(
                "lease {}: buyer, provider and arbiter must hold three different wallets",
                self.lease_id
            )));
        }
        Ok(parties)
    }

    /// The escrow derived from the buyer's wallet and the lease id; `None` for a stream.
    pub fn escrow(&self) -> Result<Option<EscrowAddresses>, LeaseError> {
        match self.payment {
            Payment::Escrow => {
                let buyer = wallet("the buyer's wallet", &self.buyer_wallet)?;
                Ok(Some(EscrowAddresses::derive(&buyer, &self.lease_id)))
            }
            Payment::Stream { .. } => Ok(None),
        }
    }

    /// Checks the terms add up on their own: ranges, distinct wallets, and the amount is
    /// price × GPUs × hours.
    pub fn validate(&self) -> Result<(), LeaseError> {
        let bad = |m: &str| {
            Err(LeaseError::Malformed(format!(
                "lease {}: {m}",
                self.lease_id
            )))
        };
        if self.gpus.is_empty() || self.gpus.len() > 64 {
            return bad("a lease holds 1 to 64 GPUs");
        }
        let text_ok =
            |t: &str| !t.is_empty() && t.len() <= MAX_TEXT && !t.contains(char::is_control);
        if !self.gpus.iter().all(|g| text_ok(g)) || !text_ok(&self.gpu_model) {
            return bad("GPU names are 1 to 96 printable characters");
        }
        if self.buyer_peer.is_empty() || self.buyer_peer.len() > 128 || self.network.len() > 64 {
            return bad("the buyer's peer id or the network is too long");
        }
        if !(1..=MAX_HOURS).contains(&self.hours) {
            return bad("a lease lasts 1 to 8784 hours");
        }
        if let Payment::Stream { pull_secs } = self.payment
            && !(1..=3600).contains(&pull_secs)
        {
            return bad("a stream pulls every 1 to 3600 seconds");
        }
        if !(1..=3600).contains(&self.checkpoint_secs) {
            return bad("checkpoints come every 1 to 3600 seconds");
        }
        let gpus = u64::try_from(self.gpus.len()).unwrap_or(u64::MAX);
        let expected = self
            .price_per_gpu_hour
            .checked_mul(gpus)
            .and_then(|m| m.checked_mul(u64::from(self.hours)));
        if expected != Some(self.amount) || self.amount.base_units() == 0 {
            return bad("the amount is not price × GPUs × hours");
        }
        self.parties()?;
        Ok(())
    }

    /// What a stream allows the provider to pull per pull interval (at least one base unit);
    /// the whole amount for an escrow.
    pub fn per_pull(&self) -> Molt {
        match self.payment {
            Payment::Escrow => self.amount,
            Payment::Stream { pull_secs } => {
                let share =
                    u128::from(self.rate_per_hour().base_units()) * u128::from(pull_secs) / 3600;
                let share = u64::try_from(share).unwrap_or(u64::MAX).max(1);
                Molt::from_base_units(share.min(self.amount.base_units()))
            }
        }
    }
}

/// What a buyer expects of the terms answering its bid.
#[derive(Debug, Clone)]
pub struct TermsExpectation<'a> {
    /// The bid it signed.
    pub bid: &'a Bid,
    /// The bid envelope's digest.
    pub bid_digest: [u8; 32],
    /// When the bid was signed, Unix ms.
    pub bid_issued_ms: u64,
    /// The buyer's own peer id.
    pub buyer_peer: String,
    /// The provider whose offer matched (Ed25519 key).
    pub provider_key: [u8; 32],
    /// The matched offer's wallet.
    pub provider_wallet: &'a str,
    /// The arbiter the buyer trusts (wallet).
    pub arbiter_wallet: &'a str,
    /// Whether the buyer asked to stream.
    pub stream: bool,
    /// Tolerated clock difference, ms.
    pub clock_slack_ms: u64,
}

impl Signed<LeaseTerms> {
    /// Checks the lease id is the one the signer derives from the bid the terms name: terms
    /// signed by anyone else cannot take over another provider's lease (and its escrow, which
    /// is derived from the lease id).
    pub fn check_lease_id(&self) -> Result<(), LeaseError> {
        let terms = self.payload();
        let derived = LeaseId::derive(&terms.bid_digest, &self.signer());
        if derived != terms.lease_id {
            return Err(LeaseError::WrongLease {
                expected: derived,
                found: terms.lease_id.clone(),
            });
        }
        Ok(())
    }

    /// The buyer's checks of terms a provider answered its bid with: signed by the matched
    /// provider, for this bid (lease id derived from it), not dated before the bid, with the
    /// buyer's wallet, the offer's wallet and the trusted arbiter, and what was bid.
    pub fn check_for_bid(&self, expect: &TermsExpectation<'_>) -> Result<(), LeaseError> {
        let terms = self.payload();
        terms.validate()?;
        if self.signer() != expect.provider_key {
            return Err(LeaseError::WrongSigner {
                what: "lease terms",
                expected: "the provider whose offer matched".to_owned(),
            });
        }
        let lease_id = LeaseId::derive(&expect.bid_digest, &expect.provider_key);
        if terms.bid_digest != expect.bid_digest || terms.lease_id != lease_id {
            return Err(LeaseError::WrongLease {
                expected: lease_id,
                found: terms.lease_id.clone(),
            });
        }
        if self.issued_ms() + expect.clock_slack_ms < expect.bid_issued_ms {
            return Err(LeaseError::Backdated {
                what: "the terms",
                before: "the bid",
            });
        }
        let bad = |m: String| Err(LeaseError::Malformed(format!("terms refused: {m}")));
        if terms.buyer_peer != expect.buyer_peer || terms.buyer_wallet != expect.bid.wallet {
            return bad("they name another buyer".to_owned());
        }
        if terms.provider_wallet != expect.provider_wallet
            || terms.arbiter_wallet != expect.arbiter_wallet
        {
            return bad(format!(
                "the provider's wallet or the arbiter differ (arbiter {})",
                terms.arbiter_wallet
            ));
        }
        if !expect.bid.models.contains(&terms.gpu_model)
            || terms.price_per_gpu_hour > expect.bid.max_price_per_gpu_hour
            || terms.gpus.len() != expect.bid.gpus as usize
            || terms.hours != expect.bid.hours
            || (terms.simulated && !expect.bid.accept_simulated)
        {
            return bad("model, price, GPUs or hours are not what was bid".to_owned());
        }
        if matches!(terms.payment, Payment::Stream { .. }) != expect.stream {
            return bad("the payment mode is not the one asked for".to_owned());
        }
        Ok(())
    }
}

/// The buyer's signed acceptance of terms: it names them by digest and the escrow it funds, so
/// terms count only with both parties' signatures and the escrow is bound to them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseAcceptance {
    /// The lease.
    pub lease_id: LeaseId,
    /// SHA-256 of the provider-signed terms envelope.
    pub terms_digest: [u8; 32],
    /// The provider's peer id.
    pub provider_peer: String,
    /// The escrow the buyer funds (escrow leases), as derived from the terms.
    pub escrow: Option<EscrowAddresses>,
}

impl SignedPayload for LeaseAcceptance {
    const KIND: PayloadKind = PayloadKind::LeaseAcceptance;
}

impl LeaseAcceptance {
    /// The acceptance of `terms` a buyer signs.
    pub fn of(terms: &Signed<LeaseTerms>) -> Result<Self, LeaseError> {
        let provider_peer = terms
            .signer_peer()
            .map(|p| p.to_string())
            .ok_or_else(|| LeaseError::Malformed("the terms' signer is not a peer".to_owned()))?;
        Ok(Self {
            lease_id: terms.payload().lease_id.clone(),
            terms_digest: terms.digest(),
            provider_peer,
            escrow: terms.payload().escrow()?,
        })
    }
}

impl Signed<LeaseAcceptance> {
    /// Checks the acceptance is the buyer's, of exactly `terms`, not dated before them, and
    /// names the escrow derived from them.
    pub fn check_against(
        &self,
        terms: &Signed<LeaseTerms>,
        clock_slack_ms: u64,
    ) -> Result<(), LeaseError> {
        let acceptance = self.payload();
        let lease = &terms.payload().lease_id;
        if acceptance.lease_id != *lease {
            return Err(LeaseError::WrongLease {
                expected: lease.clone(),
                found: acceptance.lease_id.clone(),
            });
        }
        if acceptance.terms_digest != terms.digest()
            || !terms.is_signed_by(&acceptance.provider_peer)
        {
            return Err(LeaseError::WrongTerms(lease.clone()));
        }
        if !self.is_signed_by(&terms.payload().buyer_peer) {
            return Err(LeaseError::WrongSigner {
                what: "the acceptance",
                expected: terms.payload().buyer_peer.clone(),
            });
        }
        if self.issued_ms() + clock_slack_ms < terms.issued_ms() {
            return Err(LeaseError::Backdated {
                what: "the acceptance",
                before: "the terms",
            });
        }
        let derived = terms.payload().escrow()?;
        if acceptance.escrow != derived {
            let (multisig, vault) = derived
                .map(|e| (e.multisig.to_string(), e.vault.to_string()))
                .unwrap_or_default();
            return Err(LeaseError::WrongEscrow {
                lease: lease.clone(),
                multisig,
                vault,
            });
        }
        Ok(())
    }
}
