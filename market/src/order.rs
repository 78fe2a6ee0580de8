//! The market's signed objects: a provider's offer and a buyer's bid. Each travels in a signed
//! envelope (kinds `Offer` and `Bid`) on the network's gossip topics; the envelope carries the
//! signer, sequence, issue time and expiry, so these payloads do not repeat them.

use claw_attestation::{PayloadKind, SignedPayload};
use serde::{Deserialize, Serialize};

use crate::Molt;

/// Longest model name, region or wallet text accepted in an offer or bid.
const MAX_TEXT: usize = 64;
/// Most models a bid may list.
const MAX_MODELS: usize = 16;

/// A provider's offer of one node's free GPUs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Offer {
    /// Identifies the offer among its provider's; a newer envelope with the same id replaces it.
    pub offer_id: u64,
    /// GPU model, as NVML names it (e.g. `NVIDIA H100 80GB HBM3`).
    pub gpu_model: String,
    /// GPUs offered on this node.
    pub gpus: u32,
    /// Memory per GPU, MiB.
    pub vram_mib: u64,
    /// Price per GPU-hour.
    pub price_per_gpu_hour: Molt,
    /// Shortest lease, hours.
    pub min_hours: u32,
    /// Longest lease, hours.
    pub max_hours: u32,
    /// When the GPUs are available, Unix ms.
    pub available_from_ms: u64,
    /// Until when, Unix ms.
    pub available_until_ms: u64,
    /// The network the offer is for.
    pub network: String,
    /// Where the provider is, if it says.
    pub region: Option<String>,
    /// The provider's settlement wallet (base-58).
    pub wallet: String,
    /// Digest of the node's latest signed inventory, which backs the offer.
    pub inventory_digest: [u8; 32],
    /// Whether the lease may be interrupted.
    pub interruptible: bool,
    /// Whether the GPUs are simulated (as the signed inventory says).
    pub simulated: bool,
    /// The offer is withdrawn (its GPUs were taken).
    pub withdrawn: bool,
    /// CPU a leased GPU comes with, thousandths of a core.
    pub cpu_millis_per_gpu: u32,
    /// Memory a leased GPU comes with, MiB.
    pub memory_mib_per_gpu: u64,
    /// Most processes in a lease's container.
    pub pids_limit: u32,
}

impl SignedPayload for Offer {
    const KIND: PayloadKind = PayloadKind::Offer;
}

/// A buyer's bid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bid {
    /// Acceptable GPU models; any of them.
    pub models: Vec<String>,
    /// GPUs wanted, on one node.
    pub gpus: u32,
    /// Minimum memory per GPU, MiB.
    pub min_vram_mib: u64,
    /// Only offers from this region.
    pub region: Option<String>,
    /// Only offers backed by real, NVML-attested GPUs.
    pub attested_only: bool,
    /// Minimum provider reputation (0 to 100).
    pub min_reputation: u32,
    /// Highest price per GPU-hour.
    pub max_price_per_gpu_hour: Molt,
    /// Lease length, hours.
    pub hours: u32,
    /// The buyer's wallet (base-58).
    pub wallet: String,
    /// Whether simulated GPUs are acceptable (default no).
    pub accept_simulated: bool,
}

impl SignedPayload for Bid {
    const KIND: PayloadKind = PayloadKind::Bid;
}

/// Why an offer or bid is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct OrderError(pub String);

/// Whether `text` is fit for a model name, region or wallet: 1 to 64 bytes, no control
/// characters.
pub(crate) fn text_ok(text: &str) -> bool {
    !text.is_empty() && text.len() <= MAX_TEXT && !text.chars().any(char::is_control)
}

impl Offer {
    /// Checks every field's range.
    pub fn validate(&self) -> Result<(), OrderError> {
        let bad = |m: &str| Err(OrderError(format!("offer {}: {m}", self.offer_id)));
        if !text_ok(&self.gpu_model) || !text_ok(&self.network) || !text_ok(&self.wallet) {
            return bad("model, network and wallet are 1 to 64 printable characters");
        }
        if self.region.as_deref().is_some_and(|r| !text_ok(r)) {
            return bad("region is 1 to 64 printable characters");
        }
        if !(1..=64).contains(&self.gpus) {
            return bad("gpus must be 1 to 64");
        }
        if self.min_hours == 0 || self.min_hours > self.max_hours || self.max_hours > 24 * 366 {
            return bad("hours must satisfy 1 <= min_hours <= max_hours <= 8784");
        }
        if self.available_from_ms >= self.available_until_ms {
            return bad("the availability window is empty");
        }
        if self.price_per_gpu_hour.base_units() == 0 {
            return bad("the price must be above zero");
        }
        if self.cpu_millis_per_gpu == 0 || self.memory_mib_per_gpu == 0 || self.pids_limit == 0 {
            return bad("a GPU comes with some CPU, memory and processes");
        }
        Ok(())
    }

    /// The price of `gpus` GPUs for `hours`, or `None` on overflow.
    pub fn cost(&self, gpus: u32, hours: u32) -> Option<Molt> {
        self.price_per_gpu_hour
            .checked_mul(u64::from(gpus))?
            .checked_mul(u64::from(hours))
    }
}

impl Bid {
    /// Checks every field's range.
    pub fn validate(&self) -> Result<(), OrderError> {
        let bad = |m: &str| Err(OrderError(format!("bid: {m}")));
        if self.models.is_empty()
            || self.models.len() > MAX_MODELS
            || !self.models.iter().all(|m| text_ok(m))
        {
            return bad("models lists 1 to 16 names of 1 to 64 printable characters");
        }
        if !text_ok(&self.wallet) || self.region.as_deref().is_some_and(|r| !text_ok(r)) {
            return bad("wallet and region are 1 to 64 printable characters");
        }
        if !(1..=64).contains(&self.gpus) {
            return bad("gpus must be 1 to 64");
        }
        if !(1..=24 * 366).contains(&self.hours) {
            return bad("hours must be 1 to 8784");
        }
        if self.min_reputation > 100 {
            return bad("min_reputation is 0 to 100");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use claw_attestation::{Envelope, NodeIdentity, Validity, Verifier, VerifyError};

    use super::*;

    fn offer() -> Offer {
        Offer {
            offer_id: 7,
            gpu_model: "NVIDIA H100 80GB HBM3".to_owned(),
            gpus: 8,
            vram_mib: 81_559,
            price_per_gpu_hour: "2.25".parse().unwrap(),
            min_hours: 1,
            max_hours: 72,
            available_from_ms: 1,
            available_until_ms: 2,
            network: "localnet".to_owned(),
            region: Some("eu-west".to_owned()),
            wallet: "9vYunvsnb2PBimVMagGXs75MnbjTYdym9he1UXTX9HdC".to_owned(),
            inventory_digest: [3; 32],
            interruptible: false,
            simulated: false,
            withdrawn: false,
            cpu_millis_per_gpu: 4000,
            memory_mib_per_gpu: 32_768,
            pids_limit: 4096,
        }
    }

    #[test]
    fn offers_travel_signed_and_a_bid_envelope_is_not_an_offer() {
        let identity = NodeIdentity::generate();
        let envelope = Envelope::seal(
            &identity,
            1,
            Validity::from_now(Duration::from_secs(60)),
            &offer(),
        );
        let wire = envelope.to_bytes();
        assert!(wire.len() < 512, "an offer is {} bytes", wire.len());
        let verified = Verifier::new().verify(&wire).unwrap();
        assert_eq!(verified.open::<Offer>().unwrap(), offer());
        assert!(matches!(
            verified.open::<Bid>(),
            Err(VerifyError::WrongKind { .. })
        ));
        let mut tampered = wire.clone();
        let last = tampered.len() - 70;
        tampered[last] ^= 1;
        assert!(Verifier::new().verify(&tampered).is_err());
    }

    #[test]
    fn out_of_range_fields_are_named() {
        let mut bad = offer();
        bad.min_hours = 0;
        assert!(bad.validate().unwrap_err().to_string().contains("hours"));
        let mut bad = offer();
        bad.gpu_model = String::new();
        assert!(bad.validate().is_err());
        assert!(offer().validate().is_ok());
        assert_eq!(offer().cost(2, 10), Some("45".parse().unwrap()));
    }
}
