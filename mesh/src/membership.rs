//! Fleet membership: who belongs to an operator's fleet, as opposed to who merely shares its
//! network. An operator's key signs a [`FleetMembership`] naming a peer; the peer carries that
//! credential in every announcement, and a node that trusts the operator (its configured fleet
//! operators) counts the peer a member until the credential expires. Other peers stay in the
//! view as market counterparties; a bridge deploys, invokes and drains only on members.

use std::time::{Duration, SystemTime};

use claw_attestation::{
    Envelope, NodeIdentity, PayloadKind, SignedPayload, Validity, Verifier, unix_millis,
};
use libp2p::PeerId;
use serde::{Deserialize, Serialize};

/// Longest a credential is signed for (the envelope kind's own bound).
pub const MAX_MEMBERSHIP_DAYS: u64 = 366;

/// An operator's word that `member` belongs to its fleet on `network`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetMembership {
    /// The member's peer id.
    pub member: String,
    /// The network the fleet is on; a credential is worth nothing on another.
    pub network: String,
}

impl SignedPayload for FleetMembership {
    const KIND: PayloadKind = PayloadKind::Membership;
}

/// What a peer in the view is to this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// This node trusts no fleet operator: every peer counts (local and private fleets).
    Open,
    /// A trusted operator admitted it, until `until_ms`.
    Member {
        /// Who signed its credential.
        operator: PeerId,
        /// When the credential expires (Unix ms).
        until_ms: u64,
    },
    /// Not admitted by any operator this node trusts: a market counterparty only.
    Stranger,
}

impl Standing {
    /// Whether the peer counts as a fleet member at `now_ms`.
    pub fn is_member(&self, now_ms: u64) -> bool {
        match self {
            Self::Open => true,
            Self::Member { until_ms, .. } => now_ms < *until_ms,
            Self::Stranger => false,
        }
    }

    /// `open`, `member` or `stranger` (a lapsed credential reads `stranger`).
    pub fn as_str(&self, now_ms: u64) -> &'static str {
        match self {
            Self::Open => "open",
            _ if self.is_member(now_ms) => "member",
            _ => "stranger",
        }
    }
}

/// Why a credential does not make its bearer a member.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MembershipError {
    /// The bytes are not a valid, current, signed membership.
    #[error("not a valid membership credential: {0}")]
    Invalid(String),
    /// It names another peer.
    #[error("the credential admits {named}, not {bearer}")]
    OtherMember {
        /// Who it names.
        named: String,
        /// Who carries it.
        bearer: PeerId,
    },
    /// It is for another network.
    #[error("the credential is for network {0:?}")]
    OtherNetwork(String),
    /// Its signer is not one of the operators this node trusts.
    #[error("the credential is signed by {0}, who is not a fleet operator here")]
    UntrustedOperator(PeerId),
}

impl FleetMembership {
    /// Signs a credential admitting `member` to `operator`'s fleet on `network` for `valid_for`
    /// (at most [`MAX_MEMBERSHIP_DAYS`]).
    pub fn issue(
        operator: &NodeIdentity,
        member: PeerId,
        network: &str,
        valid_for: Duration,
    ) -> Vec<u8> {
        let valid_for = valid_for.min(PayloadKind::Membership.max_lifetime());
        let payload = Self {
            member: member.to_string(),
            network: network.to_owned(),
        };
        // A credential replaces none before it: its issue time orders them, not a sequence.
        let seq = unix_millis(SystemTime::now());
        Envelope::seal(operator, seq, Validity::from_now(valid_for), &payload).to_bytes()
    }

    /// Checks that `credential` admits `bearer` on `network`, signed by one of `operators` and
    /// current at `now_ms`: the signing operator and when the credential expires.
    pub fn check(
        credential: &[u8],
        bearer: PeerId,
        network: &str,
        operators: &[PeerId],
        now_ms: u64,
    ) -> Result<(PeerId, u64), MembershipError> {
        let (operator, until_ms) = Self::read(credential, bearer, network, now_ms)?;
        if !operators.contains(&operator) {
            return Err(MembershipError::UntrustedOperator(operator));
        }
        Ok((operator, until_ms))
    }

    /// [`FleetMembership::check`] short of trusting its signer: a valid, current credential
    /// for `bearer` on `network`, with who signed it and when it expires. Whether that signer
    /// counts is each peer's own call; a member keeps any credential that names it.
    pub fn read(
        credential: &[u8],
        bearer: PeerId,
        network: &str,
        now_ms: u64,
    ) -> Result<(PeerId, u64), MembershipError> {
        let verified = Verifier::new()
            .verify_at(credential, None, now_ms)
            .map_err(|e| MembershipError::Invalid(e.to_string()))?;
        let membership: Self = verified
            .open()
            .map_err(|e| MembershipError::Invalid(e.to_string()))?;
        if membership.member != bearer.to_string() {
            return Err(MembershipError::OtherMember {
                named: membership.member,
                bearer,
            });
        }
        if membership.network != network {
            return Err(MembershipError::OtherNetwork(membership.network));
        }
        Ok((
            verified.signer_peer_id(),
            verified.envelope().expires_at_ms(),
        ))
    }

    /// The standing a peer announcing `credential` has with a node trusting `operators`.
    pub fn standing(
        credential: Option<&[u8]>,
        bearer: PeerId,
        network: &str,
        operators: &[PeerId],
        now_ms: u64,
    ) -> Standing {
        if operators.is_empty() {
            return Standing::Open;
        }
        credential
            .and_then(|bytes| Self::check(bytes, bearer, network, operators, now_ms).ok())
            .map_or(Standing::Stranger, |(operator, until_ms)| {
                Standing::Member { operator, until_ms }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn now() -> u64 {
        unix_millis(SystemTime::now())
    }

    #[test]
    fn only_a_trusted_operators_credential_for_its_bearer_admits_it() {
        let operator = NodeIdentity::generate();
        let member = NodeIdentity::generate();
        let stranger = NodeIdentity::generate();
        let operators = [operator.peer_id()];
        let credential = FleetMembership::issue(&operator, member.peer_id(), "devnet", DAY);

        let (signer, until) =
            FleetMembership::check(&credential, member.peer_id(), "devnet", &operators, now())
                .expect("admitted");
        assert_eq!(signer, operator.peer_id());
        assert!(until > now() + DAY.as_millis() as u64 - 60_000);

        // Carried by someone else: a copy of a member's credential admits nobody else.
        assert!(matches!(
            FleetMembership::check(&credential, stranger.peer_id(), "devnet", &operators, now()),
            Err(MembershipError::OtherMember { .. })
        ));
        // Another network.
        assert_eq!(
            FleetMembership::check(&credential, member.peer_id(), "mainnet", &operators, now()),
            Err(MembershipError::OtherNetwork("devnet".into()))
        );
        // Self-signed: the stranger admits itself.
        let own = FleetMembership::issue(&stranger, stranger.peer_id(), "devnet", DAY);
        assert_eq!(
            FleetMembership::check(&own, stranger.peer_id(), "devnet", &operators, now()),
            Err(MembershipError::UntrustedOperator(stranger.peer_id()))
        );
        // Read without trust, it is the stranger's own word: what its CLI installs.
        assert_eq!(
            FleetMembership::read(&own, stranger.peer_id(), "devnet", now()).map(|(by, _)| by),
            Ok(stranger.peer_id())
        );
        // Expired.
        let later = now() + 2 * DAY.as_millis() as u64;
        assert!(matches!(
            FleetMembership::check(&credential, member.peer_id(), "devnet", &operators, later),
            Err(MembershipError::Invalid(_))
        ));
        // Tampered: one byte of the signature changed.
        let mut forged = credential.clone();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        assert!(matches!(
            FleetMembership::check(&forged, member.peer_id(), "devnet", &operators, now()),
            Err(MembershipError::Invalid(_))
        ));
    }

    #[test]
    fn standing_follows_the_trusted_operators() {
        let operator = NodeIdentity::generate();
        let member = NodeIdentity::generate();
        let credential = FleetMembership::issue(&operator, member.peer_id(), "devnet", DAY);
        let at = now();
        let open = FleetMembership::standing(None, member.peer_id(), "devnet", &[], at);
        assert_eq!(open, Standing::Open);
        assert!(open.is_member(at));
        let standing = FleetMembership::standing(
            Some(&credential),
            member.peer_id(),
            "devnet",
            &[operator.peer_id()],
            at,
        );
        assert!(standing.is_member(at));
        assert_eq!(standing.as_str(at), "member");
        assert!(
            !standing.is_member(at + 2 * DAY.as_millis() as u64),
            "lapses"
        );
        let stranger =
            FleetMembership::standing(None, member.peer_id(), "devnet", &[operator.peer_id()], at);
        assert_eq!(stranger.as_str(at), "stranger");
    }
}
