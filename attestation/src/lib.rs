//! Identity and attestation for Clawbernetes nodes.
//!
//! Every node has one Ed25519 key ([`NodeIdentity`]); its libp2p `PeerId` and its OpenClaw device
//! identity both derive from it. Everything a node claims to the network travels as a signed
//! [`Envelope`]: domain-separated, canonically encoded, with an issue time, an expiry and a
//! per-signer sequence number. A [`Verifier`] checks form, signer, signature and validity window,
//! and a [`ReplayGuard`] refuses sequences that are not newer than ones already seen.
//!
//! The first claims are the node's [`HardwareInventory`] (read from NVML, or explicitly
//! simulated) and [`FreshnessProof`]s, which answer a verifier's nonce with live metrics.
//!
//! ```
//! use std::time::Duration;
//! use claw_attestation::{Envelope, HostInfo, HardwareInventory, NodeIdentity, NvmlStatus,
//!     Validity, Verifier};
//!
//! let identity = NodeIdentity::generate();
//! let inventory = HardwareInventory {
//!     host: HostInfo::default(),
//!     nvml: NvmlStatus::Unavailable { reason: "no driver".into() },
//!     gpus: vec![],
//! };
//! let wire = Envelope::seal(&identity, 1, Validity::from_now(Duration::from_secs(60)), &inventory)
//!     .to_bytes();
//! let verified = Verifier::new().verify(&wire).unwrap();
//! assert_eq!(verified.open::<HardwareInventory>().unwrap(), inventory);
//! ```

mod envelope;
mod freshness;
mod identity;
mod inventory;
mod key_backup;
mod keyfile;
mod probe;
mod sealing;
mod wallet;

pub use envelope::{
    DEFAULT_MAX_CLOCK_SKEW, DEFAULT_MAX_ENVELOPE_BYTES, Envelope, MIN_BATCH, PayloadKind,
    ReplayGuard, SIGNING_DOMAIN, Seen, SeenEnvelopes, SignedPayload, SignerKey, Validity,
    VerifiedEnvelope, Verifier, VerifyError, unix_millis,
};
pub use freshness::{FreshnessChallenge, FreshnessError, FreshnessProof};
pub use identity::{DeviceIdentity, NodeIdentity, ed25519_key_of, peer_id_of};
pub use inventory::{
    ComputeCapability, EccState, GpuClocks, GpuDevice, GpuLiveMetrics, GpuMetrics, GpuProcess,
    HardwareInventory, HostInfo, NvmlStatus, SimulatedGpuProfile, XidErrors,
};
pub use key_backup::{KeyBackupError, KeyBackupHeader, NodeKeys, seal_node_keys};
pub use keyfile::{KeyFileError, read_secret, write_secret};
pub use probe::{GpuProbe, XidWatcher, probe_host};
pub use sealing::{SealError, Sealed, seal};
pub use wallet::WalletKeypair;

pub use ed25519_dalek::VerifyingKey;
pub use libp2p_identity::PeerId;
