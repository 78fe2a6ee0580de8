//! Who may run which command on this node.
//!
//! Three roles, each including the one before: `read` for every fleet member (a peer that got
//! through the mesh's network and swarm-key checks), `operate` for the operators the config lists,
//! `admin` for the configured admins and for the node itself (the local control API).

use std::collections::HashSet;

pub use claw_api::Role;
use claw_mesh::PeerId;

use crate::config::AccessSection;

/// The node's access policy: its own id, and the operators and admins from its config.
#[derive(Debug, Clone)]
pub struct AccessPolicy {
    local: PeerId,
    operators: HashSet<PeerId>,
    admins: HashSet<PeerId>,
}

impl AccessPolicy {
    /// The policy for the node `local` with `section`'s lists. Entries that are not peer ids
    /// were refused when the config was validated; any left are skipped.
    pub fn new(local: PeerId, section: &AccessSection) -> Self {
        let parse = |ids: &[String]| ids.iter().filter_map(|id| id.parse().ok()).collect();
        Self {
            local,
            operators: parse(&section.operators),
            admins: parse(&section.admins),
        }
    }

    /// This node's own peer id.
    pub fn local(&self) -> PeerId {
        self.local
    }

    /// Whether `peer`'s signature counts on fleet objects here: the configured operators and
    /// admins. The node itself counts only when listed, as it must be on every other member for
    /// its objects to be kept there.
    pub fn is_operator(&self, peer: &PeerId) -> bool {
        self.operators.contains(peer) || self.admins.contains(peer)
    }

    /// Whether `peer` is one of the configured admins (the node itself only when listed).
    pub fn is_admin(&self, peer: &PeerId) -> bool {
        self.admins.contains(peer)
    }

    /// The role `caller` has here.
    pub fn role_of(&self, caller: &PeerId) -> Role {
        if *caller == self.local || self.admins.contains(caller) {
            Role::Admin
        } else if self.operators.contains(caller) {
            Role::Operate
        } else {
            Role::Read
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_follow_the_config_and_the_node_itself_is_admin() {
        let (local, operator, admin, stranger) = (
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
        );
        let policy = AccessPolicy::new(
            local,
            &AccessSection {
                operators: vec![operator.to_string(), "not-a-peer".to_owned()],
                admins: vec![admin.to_string()],
                members_only: false,
            },
        );
        assert_eq!(policy.role_of(&local), Role::Admin);
        assert_eq!(policy.role_of(&admin), Role::Admin);
        assert_eq!(policy.role_of(&operator), Role::Operate);
        assert_eq!(policy.role_of(&stranger), Role::Read);
        assert!(Role::Read < Role::Operate && Role::Operate < Role::Admin);
        assert!(policy.is_operator(&operator) && policy.is_operator(&admin));
        assert!(!policy.is_operator(&local) && !policy.is_operator(&stranger));
    }
}
