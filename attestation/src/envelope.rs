//! Signed envelopes: the one wire form for every claim a node makes to the network.
//!
//! # Wire layout (version 1)
//!
//! ```text
//! offset  size  field
//! 0       1     version (1)
//! 1       1     payload kind (see PayloadKind)
//! 2       32    signer: Ed25519 public key
//! 34      8     sequence number, little endian, per signer, strictly increasing
//! 42      8     issued-at, Unix milliseconds, little endian
//! 50      8     expires-at, Unix milliseconds, little endian
//! 58      4     payload length, little endian
//! 62      n     payload: the kind's type in bincode's standard encoding
//! 62+n    64    Ed25519 signature
//! ```
//!
//! The signature covers [`SIGNING_DOMAIN`] followed by every byte before the signature, so the
//! node key's signatures in other protocols (libp2p records, OpenClaw device proofs) can never be
//! passed off as envelopes, and no field can be moved into another. Decoding is exact: a length
//! that does not add up, an unknown version or kind, or a payload with trailing bytes is malformed.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ed25519_dalek::{Signature, VerifyingKey};
use libp2p_identity::PeerId;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest as _, Sha256};

use crate::identity::{NodeIdentity, peer_id_of};

/// Prefix of every signed message; changes with the wire version.
pub const SIGNING_DOMAIN: &[u8] = b"clawbernetes/signed-envelope/v1\n";

/// Current wire version.
const VERSION: u8 = 1;
const HEADER_LEN: usize = 62;
const SIGNATURE_LEN: usize = 64;

/// Default cap on an encoded envelope: gossipsub's own message cap.
pub const DEFAULT_MAX_ENVELOPE_BYTES: usize = 64 * 1024;

/// Default tolerated clock difference between signer and verifier.
pub const DEFAULT_MAX_CLOCK_SKEW: Duration = Duration::from_secs(30);

/// How long a fleet object's envelope may be valid, in days.
const FLEET_OBJECT_LIFETIME_DAYS: u64 = 3650;

/// What an envelope's payload is. The kind is signed, so a payload of one kind can never be
/// accepted as another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum PayloadKind {
    /// A node's signed hardware inventory.
    Inventory,
    /// An answer to a verifier's freshness challenge.
    Freshness,
    /// A node's announcement to its fleet: inventory plus allocation state and addresses.
    Announcement,
    /// A provider's market offer.
    Offer,
    /// A buyer's market bid.
    Bid,
    /// A provider's accepted lease terms.
    LeaseTerms,
    /// A buyer's acceptance of lease terms, naming them by digest and the escrow it funds.
    LeaseAcceptance,
    /// A provider's account of a lease's use so far (the final one ends the lease).
    UsageCheckpoint,
    /// A fleet object (deployment, job, ...) at one revision, signed by a fleet operator.
    FleetObject,
    /// What a node signs about a backup it made: the volume, the archive's size and digest.
    BackupManifest,
    /// A lease party's report of a settled lease: the terms both signed and the settlement's
    /// transaction, for every node to check on chain and keep in its price history.
    TradeReport,
    /// A fleet operator's word that a peer is a member of its fleet.
    Membership,
}

impl PayloadKind {
    fn to_byte(self) -> u8 {
        match self {
            Self::Inventory => 1,
            Self::Freshness => 2,
            Self::Announcement => 3,
            Self::Offer => 4,
            Self::Bid => 5,
            Self::LeaseTerms => 6,
            // 7 was the first lease protocol's receipt; it is never reused.
            Self::LeaseAcceptance => 8,
            Self::UsageCheckpoint => 9,
            Self::FleetObject => 10,
            Self::BackupManifest => 11,
            Self::TradeReport => 12,
            Self::Membership => 13,
        }
    }

    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(Self::Inventory),
            2 => Some(Self::Freshness),
            3 => Some(Self::Announcement),
            4 => Some(Self::Offer),
            5 => Some(Self::Bid),
            6 => Some(Self::LeaseTerms),
            8 => Some(Self::LeaseAcceptance),
            9 => Some(Self::UsageCheckpoint),
            10 => Some(Self::FleetObject),
            11 => Some(Self::BackupManifest),
            12 => Some(Self::TradeReport),
            13 => Some(Self::Membership),
            _ => None,
        }
    }

    /// The longest an envelope of this kind may be valid (expiry minus issue time). Gossiped
    /// claims about the present live at most a day; a lease's evidence must outlive the longest
    /// lease (366 days) by the time a dispute may take. A fleet object stands until an operator
    /// replaces it, so it is signed for ten years; newer revisions, not expiry, retire it. With the expiry check this also bounds
    /// `issued_at` from below: nothing older than its kind's lifetime is accepted.
    pub fn max_lifetime(self) -> Duration {
        const HOUR: u64 = 3600;
        Duration::from_secs(match self {
            Self::Freshness => HOUR,
            Self::Inventory | Self::Announcement | Self::Offer | Self::Bid | Self::TradeReport => {
                24 * HOUR
            }
            Self::LeaseTerms | Self::LeaseAcceptance | Self::UsageCheckpoint => 400 * 24 * HOUR,
            Self::FleetObject => FLEET_OBJECT_LIFETIME_DAYS * 24 * HOUR,
            // A backup is restored long after it was made.
            Self::BackupManifest => 10 * 366 * 24 * HOUR,
            // A member is admitted for a year at most, then again.
            Self::Membership => 366 * 24 * HOUR,
        })
    }
}

impl fmt::Display for PayloadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Inventory => "inventory",
            Self::Freshness => "freshness",
            Self::Announcement => "announcement",
            Self::Offer => "offer",
            Self::Bid => "bid",
            Self::LeaseTerms => "lease terms",
            Self::LeaseAcceptance => "lease acceptance",
            Self::UsageCheckpoint => "usage checkpoint",
            Self::FleetObject => "fleet object",
            Self::BackupManifest => "backup manifest",
            Self::TradeReport => "trade report",
            Self::Membership => "fleet membership",
        })
    }
}

/// A type that travels inside a signed envelope.
pub trait SignedPayload: Serialize + DeserializeOwned {
    /// The kind written into (and required of) envelopes carrying this type.
    const KIND: PayloadKind;
}

/// Why an envelope was not accepted. Each failure has its own variant so that callers can count,
/// score and report them separately.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// Larger than the verifier accepts; nothing else was looked at.
    #[error("envelope is {size} bytes, more than the {max}-byte limit")]
    Oversize {
        /// Encoded size.
        size: usize,
        /// The verifier's limit.
        max: usize,
    },
    /// Not a well-formed envelope or payload.
    #[error("malformed envelope: {0}")]
    Malformed(String),
    /// A well-formed envelope of another kind than the one asked for.
    #[error("expected an envelope of kind {expected}, found {found}")]
    WrongKind {
        /// The kind asked for.
        expected: PayloadKind,
        /// The kind in the envelope.
        found: PayloadKind,
    },
    /// Signed by a key other than the expected one.
    #[error("signed by {found}, expected {expected}")]
    WrongSigner {
        /// The peer that should have signed.
        expected: SignerKey,
        /// The peer that did.
        found: SignerKey,
    },
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// Past its expiry.
    #[error("expired at {expires_at_ms} ms, now {now_ms} ms")]
    Expired {
        /// The envelope's expiry.
        expires_at_ms: u64,
        /// The verifier's clock.
        now_ms: u64,
    },
    /// Issued further in the future than the clock-skew bound allows.
    #[error(
        "issued at {issued_at_ms} ms, beyond now ({now_ms} ms) plus the {max_skew_ms} ms skew bound"
    )]
    NotYetValid {
        /// The envelope's issue time.
        issued_at_ms: u64,
        /// The verifier's clock.
        now_ms: u64,
        /// The tolerated skew.
        max_skew_ms: u64,
    },
    /// Valid for longer than its kind allows.
    #[error("valid for {lifetime_ms} ms, more than the {max_ms} ms a {kind} may be")]
    LifetimeTooLong {
        /// The envelope's kind.
        kind: PayloadKind,
        /// Expiry minus issue time.
        lifetime_ms: u64,
        /// The kind's maximum.
        max_ms: u64,
    },
    /// Sequence not newer than one already accepted from the same signer.
    #[error("replayed sequence {seq} from {signer}: last accepted was {last_seen}")]
    Replay {
        /// The signer.
        signer: SignerKey,
        /// The envelope's sequence.
        seq: u64,
        /// The highest sequence accepted before.
        last_seen: u64,
    },
}

/// A signer's raw Ed25519 public key, shown as its libp2p peer id. Errors carry this rather than
/// a `PeerId` to stay small.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SignerKey(pub [u8; 32]);

impl SignerKey {
    /// The signer's peer id, or `None` if the bytes are not a valid Ed25519 key.
    pub fn peer_id(&self) -> Option<PeerId> {
        VerifyingKey::from_bytes(&self.0)
            .ok()
            .map(|k| peer_id_of(&k))
    }
}

impl fmt::Display for SignerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.peer_id() {
            Some(peer) => write!(f, "{peer}"),
            None => write!(f, "invalid key {}", hex::encode(self.0)),
        }
    }
}

impl fmt::Debug for SignerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SignerKey({self})")
    }
}

/// A decoded envelope whose signature has not been checked yet.
#[derive(Clone, PartialEq, Eq)]
pub struct Envelope {
    kind: PayloadKind,
    /// Compressed Ed25519 point; decompressed only when the signature is checked, so decoding
    /// stays cheap for envelopes that fail cheaper checks.
    signer: [u8; 32],
    seq: u64,
    issued_at_ms: u64,
    expires_at_ms: u64,
    payload: Vec<u8>,
    signature: Signature,
}

impl fmt::Debug for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envelope")
            .field("kind", &self.kind)
            .field("signer", &hex::encode(self.signer))
            .field("seq", &self.seq)
            .field("issued_at_ms", &self.issued_at_ms)
            .field("expires_at_ms", &self.expires_at_ms)
            .field("payload_len", &self.payload.len())
            .finish_non_exhaustive()
    }
}

/// The time-related fields of an envelope being sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// Unix milliseconds when the claim was made.
    pub issued_at_ms: u64,
    /// How long verifiers should accept it.
    pub ttl: Duration,
}

impl Validity {
    /// Valid from now for `ttl`.
    pub fn from_now(ttl: Duration) -> Self {
        Self {
            issued_at_ms: unix_millis(SystemTime::now()),
            ttl,
        }
    }
}

fn payload_config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encodes a payload in the canonical payload encoding.
fn encode_payload<T: Serialize>(payload: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(payload, payload_config())
        .expect("payload types serialise to bincode without failure")
}

impl Envelope {
    /// Signs `payload` as `identity`, with sequence `seq`.
    ///
    /// Sequence numbers must strictly increase per signer (and per kind), or verifiers that track
    /// replays will drop the envelope.
    pub fn seal<T: SignedPayload>(
        identity: &NodeIdentity,
        seq: u64,
        validity: Validity,
        payload: &T,
    ) -> Self {
        let ttl_ms = u64::try_from(validity.ttl.as_millis()).unwrap_or(u64::MAX);
        let mut envelope = Self {
            kind: T::KIND,
            signer: identity.public_key().to_bytes(),
            seq,
            issued_at_ms: validity.issued_at_ms,
            expires_at_ms: validity.issued_at_ms.saturating_add(ttl_ms),
            payload: encode_payload(payload),
            signature: Signature::from_bytes(&[0; SIGNATURE_LEN]),
        };
        envelope.signature = identity.sign(&envelope.signed_message());
        envelope
    }

    /// The kind of payload inside.
    pub fn kind(&self) -> PayloadKind {
        self.kind
    }

    /// The signer's public key as it appears on the wire (not yet checked to be a valid key).
    pub fn signer_bytes(&self) -> &[u8; 32] {
        &self.signer
    }

    /// The signer's public key, if the envelope names a valid Ed25519 key.
    pub fn signer(&self) -> Result<VerifyingKey, VerifyError> {
        VerifyingKey::from_bytes(&self.signer)
            .map_err(|_| VerifyError::Malformed("signer is not an Ed25519 public key".to_owned()))
    }

    /// The signer's sequence number.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Unix milliseconds when it was signed.
    pub fn issued_at_ms(&self) -> u64 {
        self.issued_at_ms
    }

    /// Unix milliseconds after which it is no longer valid.
    pub fn expires_at_ms(&self) -> u64 {
        self.expires_at_ms
    }

    /// The length of the encoded form.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.payload.len() + SIGNATURE_LEN
    }

    /// The wire form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.write_unsigned(&mut out);
        out.extend_from_slice(&self.signature.to_bytes());
        out
    }

    /// SHA-256 of the wire form: the name other claims use to refer to this one.
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.to_bytes()).into()
    }

    /// Decodes the wire form exactly. The signature is not checked here; see [`Verifier`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, VerifyError> {
        let malformed = |what: &str| VerifyError::Malformed(what.to_owned());
        if bytes.len() < HEADER_LEN + SIGNATURE_LEN {
            return Err(VerifyError::Malformed(format!(
                "{} bytes is shorter than the smallest envelope",
                bytes.len()
            )));
        }
        if bytes[0] != VERSION {
            return Err(VerifyError::Malformed(format!(
                "unknown wire version {}",
                bytes[0]
            )));
        }
        let kind = PayloadKind::from_byte(bytes[1])
            .ok_or_else(|| VerifyError::Malformed(format!("unknown payload kind {}", bytes[1])))?;
        let signer: [u8; 32] = bytes[2..34].try_into().map_err(|_| malformed("signer"))?;
        let seq = read_u64(&bytes[34..42]);
        let issued_at_ms = read_u64(&bytes[42..50]);
        let expires_at_ms = read_u64(&bytes[50..58]);
        let payload_len = u32::from_le_bytes(
            bytes[58..62]
                .try_into()
                .map_err(|_| malformed("payload length"))?,
        ) as usize;
        let expected_len = HEADER_LEN
            .checked_add(payload_len)
            .and_then(|n| n.checked_add(SIGNATURE_LEN));
        if expected_len != Some(bytes.len()) {
            return Err(VerifyError::Malformed(format!(
                "payload length {payload_len} does not match the {}-byte envelope",
                bytes.len()
            )));
        }
        if expires_at_ms <= issued_at_ms {
            return Err(malformed("expiry is not after the issue time"));
        }
        let signature_bytes: [u8; SIGNATURE_LEN] = bytes[bytes.len() - SIGNATURE_LEN..]
            .try_into()
            .map_err(|_| malformed("signature"))?;
        Ok(Self {
            kind,
            signer,
            seq,
            issued_at_ms,
            expires_at_ms,
            payload: bytes[HEADER_LEN..HEADER_LEN + payload_len].to_vec(),
            signature: Signature::from_bytes(&signature_bytes),
        })
    }

    fn write_unsigned(&self, out: &mut Vec<u8>) {
        out.push(VERSION);
        out.push(self.kind.to_byte());
        out.extend_from_slice(&self.signer);
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.issued_at_ms.to_le_bytes());
        out.extend_from_slice(&self.expires_at_ms.to_le_bytes());
        let len = u32::try_from(self.payload.len()).expect("payloads are far below 4 GiB");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&self.payload);
    }

    /// The exact bytes the signature covers.
    fn signed_message(&self) -> Vec<u8> {
        let mut message =
            Vec::with_capacity(SIGNING_DOMAIN.len() + HEADER_LEN + self.payload.len());
        message.extend_from_slice(SIGNING_DOMAIN);
        self.write_unsigned(&mut message);
        message
    }
}

fn read_u64(bytes: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    buf.copy_from_slice(bytes);
    u64::from_le_bytes(buf)
}

/// An envelope whose size, form, signature and validity window have been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedEnvelope {
    envelope: Envelope,
    signer: VerifyingKey,
}

impl VerifiedEnvelope {
    /// The checked envelope.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// The key that signed it.
    pub fn signer(&self) -> &VerifyingKey {
        &self.signer
    }

    /// The signer's libp2p peer id.
    pub fn signer_peer_id(&self) -> PeerId {
        peer_id_of(&self.signer)
    }

    /// Decodes the payload as `T`, which must be the envelope's kind.
    pub fn open<T: SignedPayload>(&self) -> Result<T, VerifyError> {
        if self.envelope.kind != T::KIND {
            return Err(VerifyError::WrongKind {
                expected: T::KIND,
                found: self.envelope.kind,
            });
        }
        decode_payload(&self.envelope.payload)
    }

    /// Gives back the envelope.
    pub fn into_envelope(self) -> Envelope {
        self.envelope
    }
}

/// Decodes a payload, rejecting trailing bytes and anything over the envelope cap.
fn decode_payload<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, VerifyError> {
    let config = payload_config().with_limit::<DEFAULT_MAX_ENVELOPE_BYTES>();
    let (value, read) = bincode::serde::decode_from_slice(bytes, config)
        .map_err(|e| VerifyError::Malformed(format!("payload: {e}")))?;
    if read != bytes.len() {
        return Err(VerifyError::Malformed(format!(
            "payload has {} trailing bytes",
            bytes.len() - read
        )));
    }
    Ok(value)
}

/// The fewest signatures [`Verifier::verify_batch_at`] checks as a batch: below this, one by
/// one costs less.
pub const MIN_BATCH: usize = 4;

/// Stateless checks on envelopes: size, form, signer, signature, and validity window.
///
/// Replay protection needs memory of what was seen; it lives in [`ReplayGuard`].
#[derive(Debug, Clone)]
pub struct Verifier {
    max_envelope_bytes: usize,
    max_clock_skew: Duration,
}

impl Default for Verifier {
    fn default() -> Self {
        Self {
            max_envelope_bytes: DEFAULT_MAX_ENVELOPE_BYTES,
            max_clock_skew: DEFAULT_MAX_CLOCK_SKEW,
        }
    }
}

impl Verifier {
    /// A verifier with the default limits: 64 KiB envelopes, 30 s of clock skew.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the largest accepted encoded envelope (default 64 KiB).
    pub fn with_max_envelope_bytes(mut self, max: usize) -> Self {
        self.max_envelope_bytes = max;
        self
    }

    /// Sets how far in the future an envelope may be issued (default 30 s).
    pub fn with_max_clock_skew(mut self, skew: Duration) -> Self {
        self.max_clock_skew = skew;
        self
    }

    /// Decodes and checks one envelope against the local clock.
    pub fn verify(&self, bytes: &[u8]) -> Result<VerifiedEnvelope, VerifyError> {
        self.verify_at(bytes, None, unix_millis(SystemTime::now()))
    }

    /// Decodes and checks one envelope at time `now_ms`, optionally requiring a signer.
    pub fn verify_at(
        &self,
        bytes: &[u8],
        expected_signer: Option<&VerifyingKey>,
        now_ms: u64,
    ) -> Result<VerifiedEnvelope, VerifyError> {
        let (envelope, signer) = self.precheck(bytes, expected_signer, now_ms)?;
        signer
            .verify_strict(&envelope.signed_message(), &envelope.signature)
            .map_err(|_| VerifyError::BadSignature)?;
        Ok(VerifiedEnvelope { envelope, signer })
    }

    /// Checks an envelope's size, form and signature, but not its validity window: for evidence
    /// kept after it was verified on receipt (lease terms, checkpoints), which must stay readable
    /// once it expires. Never use it on what arrives from the network.
    pub fn verify_ignoring_time(&self, bytes: &[u8]) -> Result<VerifiedEnvelope, VerifyError> {
        if bytes.len() > self.max_envelope_bytes {
            return Err(VerifyError::Oversize {
                size: bytes.len(),
                max: self.max_envelope_bytes,
            });
        }
        let envelope = Envelope::from_bytes(bytes)?;
        let signer = envelope.signer()?;
        signer
            .verify_strict(&envelope.signed_message(), &envelope.signature)
            .map_err(|_| VerifyError::BadSignature)?;
        Ok(VerifiedEnvelope { envelope, signer })
    }

    /// Checks many envelopes at once with Ed25519 batch verification.
    ///
    /// Results come back in input order. When the batch fails as a whole, each envelope is
    /// verified on its own so that one forgery does not condemn its neighbours. Fewer than
    /// [`MIN_BATCH`] signatures are checked one by one, which is cheaper at that size.
    pub fn verify_batch_at(
        &self,
        items: &[&[u8]],
        now_ms: u64,
    ) -> Vec<Result<VerifiedEnvelope, VerifyError>> {
        let mut results: Vec<Result<(Envelope, VerifyingKey), VerifyError>> = items
            .iter()
            .map(|bytes| self.precheck(bytes, None, now_ms))
            .collect();
        let pending: Vec<usize> = results
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.is_ok().then_some(i))
            .collect();
        let candidates: Vec<&(Envelope, VerifyingKey)> = pending
            .iter()
            .filter_map(|&i| results[i].as_ref().ok())
            .collect();
        let messages: Vec<Vec<u8>> = candidates.iter().map(|(e, _)| e.signed_message()).collect();
        let message_refs: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
        let signatures: Vec<Signature> = candidates.iter().map(|(e, _)| e.signature).collect();
        let keys: Vec<VerifyingKey> = candidates.iter().map(|(_, k)| *k).collect();
        let batch_ok = candidates.len() >= MIN_BATCH
            && ed25519_dalek::verify_batch(&message_refs, &signatures, &keys).is_ok();
        if !batch_ok {
            for (slot, &i) in pending.iter().enumerate() {
                if keys[slot]
                    .verify_strict(message_refs[slot], &signatures[slot])
                    .is_err()
                {
                    results[i] = Err(VerifyError::BadSignature);
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.map(|(envelope, signer)| VerifiedEnvelope { envelope, signer }))
            .collect()
    }

    /// Every check except the signature itself; returns the decompressed signer key too.
    fn precheck(
        &self,
        bytes: &[u8],
        expected_signer: Option<&VerifyingKey>,
        now_ms: u64,
    ) -> Result<(Envelope, VerifyingKey), VerifyError> {
        if bytes.len() > self.max_envelope_bytes {
            return Err(VerifyError::Oversize {
                size: bytes.len(),
                max: self.max_envelope_bytes,
            });
        }
        let envelope = Envelope::from_bytes(bytes)?;
        let signer = envelope.signer()?;
        if let Some(expected) = expected_signer
            && expected != &signer
        {
            return Err(VerifyError::WrongSigner {
                expected: SignerKey(expected.to_bytes()),
                found: SignerKey(signer.to_bytes()),
            });
        }
        let max_skew_ms = u64::try_from(self.max_clock_skew.as_millis()).unwrap_or(u64::MAX);
        if envelope.issued_at_ms > now_ms.saturating_add(max_skew_ms) {
            return Err(VerifyError::NotYetValid {
                issued_at_ms: envelope.issued_at_ms,
                now_ms,
                max_skew_ms,
            });
        }
        if envelope.expires_at_ms <= now_ms {
            return Err(VerifyError::Expired {
                expires_at_ms: envelope.expires_at_ms,
                now_ms,
            });
        }
        let lifetime_ms = envelope.expires_at_ms.saturating_sub(envelope.issued_at_ms);
        let max_ms = u64::try_from(envelope.kind.max_lifetime().as_millis()).unwrap_or(u64::MAX);
        if lifetime_ms > max_ms {
            return Err(VerifyError::LifetimeTooLong {
                kind: envelope.kind,
                lifetime_ms,
                max_ms,
            });
        }
        Ok((envelope, signer))
    }
}

/// Remembers the highest sequence accepted per signer and kind, and refuses anything not newer.
///
/// Sequences are tracked per kind because different kinds travel on different gossip topics and
/// may arrive out of order relative to each other; within one kind they must strictly increase.
/// Memory is bounded: when `capacity` signers are tracked, the one seen longest ago is forgotten,
/// found in O(log n) from an index by last use (no scan of the whole map on the gossip path).
#[derive(Debug)]
pub struct ReplayGuard {
    last_seen: HashMap<([u8; 32], PayloadKind), SeenSeq>,
    /// The same entries by when each was last admitted (a counter, so every key is distinct).
    by_use: std::collections::BTreeMap<u64, ([u8; 32], PayloadKind)>,
    capacity: usize,
    clock: u64,
}

#[derive(Debug, Clone, Copy)]
struct SeenSeq {
    seq: u64,
    touched: u64,
}

impl ReplayGuard {
    /// A guard that tracks up to `capacity` (signer, kind) pairs.
    pub fn new(capacity: usize) -> Self {
        Self {
            last_seen: HashMap::new(),
            by_use: std::collections::BTreeMap::new(),
            capacity: capacity.max(1),
            clock: 0,
        }
    }

    /// Accepts `envelope` if its sequence is newer than any accepted before from its signer for
    /// its kind, and records it.
    pub fn admit(&mut self, envelope: &VerifiedEnvelope) -> Result<(), VerifyError> {
        let e = &envelope.envelope;
        let key = (e.signer, e.kind);
        self.clock += 1;
        if let Some(seen) = self.last_seen.get_mut(&key) {
            if e.seq <= seen.seq {
                return Err(VerifyError::Replay {
                    signer: SignerKey(e.signer),
                    seq: e.seq,
                    last_seen: seen.seq,
                });
            }
            self.by_use.remove(&seen.touched);
            *seen = SeenSeq {
                seq: e.seq,
                touched: self.clock,
            };
            self.by_use.insert(self.clock, key);
            return Ok(());
        }
        if self.last_seen.len() >= self.capacity
            && let Some((_, oldest)) = self.by_use.pop_first()
        {
            self.last_seen.remove(&oldest);
        }
        self.by_use.insert(self.clock, key);
        self.last_seen.insert(
            key,
            SeenSeq {
                seq: e.seq,
                touched: self.clock,
            },
        );
        Ok(())
    }

    /// The highest sequence accepted from `signer` for `kind`, if any.
    pub fn last_seen(&self, signer: &VerifyingKey, kind: PayloadKind) -> Option<u64> {
        self.last_seen
            .get(&(signer.to_bytes(), kind))
            .map(|s| s.seq)
    }
}

/// Remembers each accepted envelope's (signer, kind, sequence) until it expires, and refuses a
/// different envelope with the same triple.
///
/// For claims that are independent objects (offers, bids) rather than successive versions of one
/// state: two offers from one provider may arrive in either order and both count, but neither can
/// be replayed while it is valid. The very same envelope arriving again (a late copy on another
/// path) is [`Seen::Again`], not a replay: honest forwarders are not blamed for it. Memory is
/// bounded: expired entries go first, then the ones expiring soonest, each in O(log n) from an
/// index by expiry (no scan of the whole set).
#[derive(Debug)]
pub struct SeenEnvelopes {
    /// (signer, kind, sequence) → (expiry, envelope digest).
    seen: HashMap<SeenKey, (u64, [u8; 32])>,
    /// The same entries by expiry.
    by_expiry: std::collections::BTreeSet<(u64, SeenKey)>,
    capacity: usize,
}

type SeenKey = ([u8; 32], PayloadKind, u64);

/// What [`SeenEnvelopes::admit`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Not seen before: remembered now.
    New,
    /// This very envelope was admitted before (and has not expired).
    Again,
}

impl SeenEnvelopes {
    /// Remembers up to `capacity` envelopes.
    pub fn new(capacity: usize) -> Self {
        Self {
            seen: HashMap::new(),
            by_expiry: std::collections::BTreeSet::new(),
            capacity: capacity.max(1),
        }
    }

    /// Envelopes remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether none is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Admits `envelope` at `now_ms`: [`Seen::New`] and remembered until it expires, or
    /// [`Seen::Again`] for the same envelope again; a replay error for a different envelope with
    /// the same signer, kind and sequence that has not expired.
    pub fn admit(&mut self, envelope: &VerifiedEnvelope, now_ms: u64) -> Result<Seen, VerifyError> {
        let e = &envelope.envelope;
        let key = (e.signer, e.kind, e.seq);
        let digest = e.digest();
        if let Some(&(expires, seen_digest)) = self.seen.get(&key)
            && expires > now_ms
        {
            if seen_digest == digest {
                return Ok(Seen::Again);
            }
            return Err(VerifyError::Replay {
                signer: SignerKey(e.signer),
                seq: e.seq,
                last_seen: e.seq,
            });
        }
        self.forget(&key);
        while let Some(&(expires, oldest)) = self.by_expiry.first()
            && (expires <= now_ms || self.seen.len() >= self.capacity)
        {
            self.forget(&oldest);
        }
        self.seen.insert(key, (e.expires_at_ms, digest));
        self.by_expiry.insert((e.expires_at_ms, key));
        Ok(Seen::New)
    }

    fn forget(&mut self, key: &SeenKey) {
        if let Some((expires, _)) = self.seen.remove(key) {
            self.by_expiry.remove(&(expires, *key));
        }
    }
}

/// Milliseconds since the Unix epoch (0 for clocks set before it).
pub fn unix_millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Note {
        text: String,
        value: u64,
    }

    impl SignedPayload for Note {
        const KIND: PayloadKind = PayloadKind::Inventory;
    }

    const NOW: u64 = 1_800_000_000_000;

    fn note() -> Note {
        Note {
            text: "H100 x8".into(),
            value: 42,
        }
    }

    fn sealed(identity: &NodeIdentity, seq: u64) -> Envelope {
        let validity = Validity {
            issued_at_ms: NOW,
            ttl: Duration::from_secs(60),
        };
        Envelope::seal(identity, seq, validity, &note())
    }

    #[test]
    fn seal_encode_decode_verify_open() {
        let identity = NodeIdentity::generate();
        let bytes = sealed(&identity, 7).to_bytes();
        let verified = Verifier::new()
            .verify_at(&bytes, Some(&identity.public_key()), NOW + 1)
            .unwrap();
        assert_eq!(verified.envelope().seq(), 7);
        assert_eq!(verified.signer_peer_id(), identity.peer_id());
        assert_eq!(verified.open::<Note>().unwrap(), note());
    }

    #[test]
    fn wrong_signer_is_named() {
        let signer = NodeIdentity::generate();
        let other = NodeIdentity::generate();
        let bytes = sealed(&signer, 1).to_bytes();
        let err = Verifier::new()
            .verify_at(&bytes, Some(&other.public_key()), NOW)
            .unwrap_err();
        assert_eq!(
            err,
            VerifyError::WrongSigner {
                expected: SignerKey(other.public_key().to_bytes()),
                found: SignerKey(signer.public_key().to_bytes())
            }
        );
    }

    #[test]
    fn signature_from_another_key_is_bad() {
        let signer = NodeIdentity::generate();
        let forger = NodeIdentity::generate();
        let mut bytes = sealed(&forger, 1).to_bytes();
        // Claim to be `signer` while keeping the forger's signature.
        bytes[2..34].copy_from_slice(signer.public_key().as_bytes());
        assert_eq!(
            Verifier::new().verify_at(&bytes, None, NOW),
            Err(VerifyError::BadSignature)
        );
    }

    #[test]
    fn validity_window_is_enforced() {
        let identity = NodeIdentity::generate();
        let bytes = sealed(&identity, 1).to_bytes();
        let verifier = Verifier::new();
        assert!(matches!(
            verifier.verify_at(&bytes, None, NOW + 60_000),
            Err(VerifyError::Expired { .. })
        ));
        assert!(verifier.verify_at(&bytes, None, NOW - 30_000).is_ok());
        assert!(matches!(
            verifier.verify_at(&bytes, None, NOW - 30_001),
            Err(VerifyError::NotYetValid { .. })
        ));
    }

    #[test]
    fn a_lifetime_longer_than_the_kind_allows_is_refused() {
        let identity = NodeIdentity::generate();
        let max = PayloadKind::Inventory.max_lifetime();
        let at_most = |ttl| {
            let validity = Validity {
                issued_at_ms: NOW,
                ttl,
            };
            Envelope::seal(&identity, 1, validity, &note()).to_bytes()
        };
        let verifier = Verifier::new();
        assert!(verifier.verify_at(&at_most(max), None, NOW).is_ok());
        assert!(matches!(
            verifier.verify_at(&at_most(max + Duration::from_millis(1)), None, NOW),
            Err(VerifyError::LifetimeTooLong {
                kind: PayloadKind::Inventory,
                ..
            })
        ));
        // So nothing issued longer ago than the kind's lifetime is accepted.
        let old = Validity {
            issued_at_ms: NOW - 25 * 3_600_000,
            ttl: Duration::from_secs(26 * 3600),
        };
        assert!(
            verifier
                .verify_at(
                    &Envelope::seal(&identity, 2, old, &note()).to_bytes(),
                    None,
                    NOW
                )
                .is_err()
        );
    }

    #[test]
    fn oversize_is_rejected_before_decoding() {
        let verifier = Verifier::new().with_max_envelope_bytes(100);
        let identity = NodeIdentity::generate();
        let bytes = sealed(&identity, 1).to_bytes();
        assert_eq!(
            verifier.verify_at(&bytes, None, NOW),
            Err(VerifyError::Oversize {
                size: bytes.len(),
                max: 100
            })
        );
        let garbage = vec![0xffu8; DEFAULT_MAX_ENVELOPE_BYTES + 1];
        assert!(matches!(
            Verifier::new().verify_at(&garbage, None, NOW),
            Err(VerifyError::Oversize { .. })
        ));
    }

    #[test]
    fn malformed_inputs_are_rejected() {
        let identity = NodeIdentity::generate();
        let bytes = sealed(&identity, 1).to_bytes();
        let verifier = Verifier::new();
        for bad in [
            &bytes[..10],
            &bytes[..bytes.len() - 1],
            &[bytes.as_slice(), &[0]].concat()[..],
        ] {
            assert!(
                matches!(
                    verifier.verify_at(bad, None, NOW),
                    Err(VerifyError::Malformed(_))
                ),
                "{} bytes accepted",
                bad.len()
            );
        }
        let mut wrong_version = bytes.clone();
        wrong_version[0] = 9;
        assert!(matches!(
            verifier.verify_at(&wrong_version, None, NOW),
            Err(VerifyError::Malformed(m)) if m.contains("version")
        ));
    }

    #[test]
    fn payload_with_trailing_bytes_is_malformed_even_when_signed() {
        let identity = NodeIdentity::generate();
        let mut envelope = sealed(&identity, 1);
        envelope.payload.push(0);
        envelope.signature = identity.sign(&envelope.signed_message());
        let verified = Verifier::new()
            .verify_at(&envelope.to_bytes(), None, NOW)
            .unwrap();
        assert!(matches!(
            verified.open::<Note>(),
            Err(VerifyError::Malformed(m)) if m.contains("trailing")
        ));
    }

    #[test]
    fn replay_guard_requires_newer_sequences_per_kind() {
        let identity = NodeIdentity::generate();
        let verifier = Verifier::new();
        let mut guard = ReplayGuard::new(16);
        let v5 = verifier
            .verify_at(&sealed(&identity, 5).to_bytes(), None, NOW)
            .unwrap();
        let v4 = verifier
            .verify_at(&sealed(&identity, 4).to_bytes(), None, NOW)
            .unwrap();
        guard.admit(&v5).unwrap();
        assert!(matches!(
            guard.admit(&v5),
            Err(VerifyError::Replay {
                seq: 5,
                last_seen: 5,
                ..
            })
        ));
        assert!(matches!(
            guard.admit(&v4),
            Err(VerifyError::Replay { seq: 4, .. })
        ));
        assert_eq!(
            guard.last_seen(&identity.public_key(), PayloadKind::Inventory),
            Some(5)
        );
    }

    #[test]
    fn replay_guard_memory_is_bounded() {
        let verifier = Verifier::new();
        let mut guard = ReplayGuard::new(2);
        let identities: Vec<_> = (0..3).map(|_| NodeIdentity::generate()).collect();
        for identity in &identities {
            let v = verifier
                .verify_at(&sealed(identity, 1).to_bytes(), None, NOW)
                .unwrap();
            guard.admit(&v).unwrap();
        }
        assert_eq!(guard.last_seen.len(), 2);
        assert_eq!(guard.by_use.len(), 2);
        assert_eq!(
            guard.last_seen(&identities[0].public_key(), PayloadKind::Inventory),
            None
        );
        // A signer admitted again is used most recently: the other one goes next.
        let again = verifier
            .verify_at(&sealed(&identities[1], 2).to_bytes(), None, NOW)
            .unwrap();
        guard.admit(&again).unwrap();
        let newcomer = NodeIdentity::generate();
        let v = verifier
            .verify_at(&sealed(&newcomer, 1).to_bytes(), None, NOW)
            .unwrap();
        guard.admit(&v).unwrap();
        assert_eq!(
            guard.last_seen(&identities[1].public_key(), PayloadKind::Inventory),
            Some(2)
        );
        assert_eq!(
            guard.last_seen(&identities[2].public_key(), PayloadKind::Inventory),
            None
        );
        assert_eq!((guard.last_seen.len(), guard.by_use.len()), (2, 2));
    }

    #[test]
    fn seen_envelopes_accept_any_order_and_copies_but_never_a_second_envelope() {
        let identity = NodeIdentity::generate();
        let verifier = Verifier::new();
        let mut seen = SeenEnvelopes::new(2);
        let open =
            |envelope: Envelope| verifier.verify_at(&envelope.to_bytes(), None, NOW).unwrap();
        let v7 = open(sealed(&identity, 7));
        let v3 = open(sealed(&identity, 3));
        assert_eq!(seen.admit(&v7, NOW), Ok(Seen::New));
        assert_eq!(seen.admit(&v3, NOW), Ok(Seen::New));
        // The same envelope again is a copy; another one under sequence 7 is a replay.
        assert_eq!(seen.admit(&v7, NOW), Ok(Seen::Again));
        let other = Note {
            text: "A100 x1".into(),
            value: 1,
        };
        let validity = Validity {
            issued_at_ms: NOW,
            ttl: Duration::from_secs(60),
        };
        let forged = open(Envelope::seal(&identity, 7, validity, &other));
        assert!(matches!(
            seen.admit(&forged, NOW),
            Err(VerifyError::Replay { seq: 7, .. })
        ));
        // Once expired it is forgotten (and would fail verification anyway).
        assert_eq!(seen.admit(&forged, NOW + 60_000), Ok(Seen::New));
        assert!(seen.len() <= 2);
        // Full, the entry expiring soonest goes first.
        let mut full = SeenEnvelopes::new(2);
        for seq in 1..=3 {
            let validity = Validity {
                issued_at_ms: NOW,
                ttl: Duration::from_secs(60 + seq),
            };
            full.admit(
                &open(Envelope::seal(&identity, seq, validity, &note())),
                NOW,
            )
            .unwrap();
        }
        assert_eq!(full.len(), 2);
        assert_eq!(full.by_expiry.len(), 2);
        assert!(full.seen.keys().all(|(_, _, seq)| *seq != 1));
    }

    #[test]
    fn batch_isolates_the_forgery() {
        let identity = NodeIdentity::generate();
        let mut encoded: Vec<Vec<u8>> = (1..=8).map(|s| sealed(&identity, s).to_bytes()).collect();
        let last = encoded[3].len() - 1;
        encoded[3][last] ^= 0x01;
        let refs: Vec<&[u8]> = encoded.iter().map(Vec::as_slice).collect();
        let results = Verifier::new().verify_batch_at(&refs, NOW);
        for (i, result) in results.iter().enumerate() {
            if i == 3 {
                assert_eq!(result, &Err(VerifyError::BadSignature));
            } else {
                assert_eq!(result.as_ref().unwrap().envelope().seq(), i as u64 + 1);
            }
        }
    }

    #[test]
    fn batch_of_valid_envelopes_all_pass() {
        let identity = NodeIdentity::generate();
        let encoded: Vec<Vec<u8>> = (1..=64).map(|s| sealed(&identity, s).to_bytes()).collect();
        let refs: Vec<&[u8]> = encoded.iter().map(Vec::as_slice).collect();
        assert!(
            Verifier::new()
                .verify_batch_at(&refs, NOW)
                .iter()
                .all(Result::is_ok)
        );
    }
}
