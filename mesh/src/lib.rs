//! The Clawbernetes mesh: how nodes find each other and exchange signed claims.
//!
//! This crate grows into the libp2p swarm, the fleet view and the invoke RPC. It starts with the
//! one thing every peer must agree on first: the names of the gossip topics, which are namespaced
//! by network so that a devnet node never hears localnet offers.

use std::fmt;

/// The gossip topics every network carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TopicKind {
    /// Signed node announcements (inventory), periodic and on change.
    Inventory,
    /// Signed market offers.
    Offers,
    /// Signed market bids.
    Bids,
}

impl TopicKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Inventory => "inventory",
            Self::Offers => "offers",
            Self::Bids => "bids",
        }
    }
}

/// A network name that is not usable in topic names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("network name {0:?} must be 1 to 32 characters of a-z, 0-9 and '-'")]
pub struct InvalidNetworkName(pub String);

/// A gossip topic name: `claw/<network>/<kind>/1`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TopicName(String);

impl TopicName {
    /// The topic of `kind` on `network` (`localnet`, `devnet`, `mainnet` or a private fleet id).
    pub fn new(network: &str, kind: TopicKind) -> Result<Self, InvalidNetworkName> {
        let valid = !network.is_empty()
            && network.len() <= 32
            && network
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid {
            return Err(InvalidNetworkName(network.to_owned()));
        }
        Ok(Self(format!("claw/{network}/{}/1", kind.as_str())))
    }

    /// The topic as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_namespaced_by_network() {
        assert_eq!(
            TopicName::new("localnet", TopicKind::Inventory)
                .unwrap()
                .as_str(),
            "claw/localnet/inventory/1"
        );
        assert_eq!(
            TopicName::new("fleet-7", TopicKind::Offers)
                .unwrap()
                .to_string(),
            "claw/fleet-7/offers/1"
        );
        assert_ne!(
            TopicName::new("devnet", TopicKind::Bids).unwrap(),
            TopicName::new("localnet", TopicKind::Bids).unwrap()
        );
    }

    #[test]
    fn network_names_that_could_escape_the_namespace_are_refused() {
        for bad in ["", "Local", "a/b", "net work", &"x".repeat(33)] {
            assert!(TopicName::new(bad, TopicKind::Bids).is_err(), "{bad:?}");
        }
    }
}
