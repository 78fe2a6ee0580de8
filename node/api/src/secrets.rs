//! Secrets: named sets of values (passwords, tokens, keys) that workloads use by name, as
//! environment variables (`env_from`) or files (`files`).
//!
//! A secret is a fleet object ([`crate::objects`]) whose values are sealed
//! ([`claw_attestation::seal`]) to the nodes allowed to use them: every member keeps and gossips
//! the sealed record, only those nodes can open it, and only when a workload that uses it
//! starts. No command answers a secret's values; answers name its keys and its nodes.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use claw_attestation::{NodeIdentity, PeerId, SealError, Sealed};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::Answer;
use crate::command::commands;
use crate::configs::{Deleted, MAX_VALUES, check_values};
use crate::workload::SpecError;

/// Most bytes of keys and values together in one secret (before sealing).
pub const MAX_SECRET_BYTES: usize = 12 * 1024;
/// Most nodes one secret is sealed to.
pub const MAX_SECRET_NODES: usize = 64;

fn invalid<T>(message: impl Into<String>) -> Result<T, SpecError> {
    Err(SpecError::Invalid(message.into()))
}

/// What an operator signs for a secret: its keys in the clear, its values sealed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretSpec {
    /// The keys of its values, sorted.
    pub keys: Vec<String>,
    /// The sealing's ephemeral X25519 key, base-64.
    pub ephemeral: String,
    /// The nonce of the values' encryption, base-64.
    pub nonce: String,
    /// The values (a JSON object of key to value), encrypted, base-64.
    pub ciphertext: String,
    /// Peer id → the data key wrapped for that node, base-64: the nodes allowed to use it.
    pub nodes: BTreeMap<String, String>,
}

/// What a sealing is bound to: the network, the secret's name and its revision, so a sealed
/// record opens as nothing else.
fn context(network: &str, name: &str, revision: u64) -> Vec<u8> {
    format!("{network}\0secret/{name}\0{revision}").into_bytes()
}

/// A secret's values, opened: zeroed when dropped, and never printed.
pub struct SecretValues(BTreeMap<String, Zeroizing<String>>);

impl SecretValues {
    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }

    /// Every key and value.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

impl std::fmt::Debug for SecretValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretValues")
            .field("keys", &self.0.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl SecretSpec {
    /// Seals `data` to `nodes` as revision `revision` of secret `name` in `network`.
    pub fn seal(
        network: &str,
        name: &str,
        revision: u64,
        data: &BTreeMap<String, String>,
        nodes: &[PeerId],
    ) -> Result<Self, SpecError> {
        check_values("secret", data, MAX_SECRET_BYTES)?;
        if nodes.is_empty() || nodes.len() > MAX_SECRET_NODES {
            return invalid(format!(
                "a secret is sealed to 1 to {MAX_SECRET_NODES} nodes"
            ));
        }
        let plaintext = Zeroizing::new(
            serde_json::to_vec(data).map_err(|e| SpecError::Invalid(e.to_string()))?,
        );
        let sealed = claw_attestation::seal(&plaintext, nodes, &context(network, name, revision))
            .map_err(|e| SpecError::Invalid(e.to_string()))?;
        Ok(Self {
            keys: data.keys().cloned().collect(),
            ephemeral: STANDARD.encode(sealed.ephemeral),
            nonce: STANDARD.encode(sealed.nonce),
            ciphertext: STANDARD.encode(&sealed.ciphertext),
            nodes: sealed
                .recipients
                .iter()
                .map(|(peer, wrapped)| (peer.to_string(), STANDARD.encode(wrapped)))
                .collect(),
        })
    }

    /// Checks the record's form, as every member does before keeping it.
    pub fn check(&self) -> Result<(), SpecError> {
        if self.keys.is_empty() || self.keys.len() > MAX_VALUES {
            return invalid(format!("a secret holds 1 to {MAX_VALUES} values"));
        }
        if !self.keys.is_sorted() || self.keys.windows(2).any(|w| w[0] == w[1]) {
            return invalid("a secret's keys are sorted and distinct");
        }
        if let Some(key) = self.keys.iter().find(|k| !crate::workload::is_value_key(k)) {
            return invalid(format!("secret key {key:?} is not a value key"));
        }
        if self.nodes.is_empty() || self.nodes.len() > MAX_SECRET_NODES {
            return invalid(format!(
                "a secret is sealed to 1 to {MAX_SECRET_NODES} nodes"
            ));
        }
        self.sealed().map(drop)
    }

    /// The nodes allowed to use it.
    pub fn node_ids(&self) -> Vec<PeerId> {
        self.nodes.keys().filter_map(|p| p.parse().ok()).collect()
    }

    fn sealed(&self) -> Result<Sealed, SpecError> {
        let bytes = |what: &str, text: &str, max: usize| {
            if text.len() > max.div_ceil(3) * 4 {
                return invalid(format!("secret {what} is too long"));
            }
            STANDARD
                .decode(text)
                .map_err(|_| SpecError::Invalid(format!("secret {what} is not base-64")))
        };
        let fixed = |what: &str, text: &str| -> Result<[u8; 32], SpecError> {
            bytes(what, text, 32)?
                .try_into()
                .map_err(|_| SpecError::Invalid(format!("secret {what} is not 32 bytes")))
        };
        let nonce: [u8; 12] = bytes("nonce", &self.nonce, 12)?
            .try_into()
            .map_err(|_| SpecError::Invalid("secret nonce is not 12 bytes".to_owned()))?;
        let mut recipients = BTreeMap::new();
        for (peer, wrapped) in &self.nodes {
            let peer: PeerId = peer.parse().map_err(|_| {
                SpecError::Invalid(format!("secret node {peer:?} is not a peer id"))
            })?;
            if claw_attestation::ed25519_key_of(&peer).is_none() {
                return invalid(format!("secret node {peer} has no Ed25519 key"));
            }
            recipients.insert(peer, bytes("node key", wrapped, 48)?);
        }
        Ok(Sealed {
            ephemeral: fixed("ephemeral key", &self.ephemeral)?,
            nonce,
            ciphertext: bytes("ciphertext", &self.ciphertext, 2 * MAX_SECRET_BYTES)?,
            recipients,
        })
    }

    /// Opens the values with this node's `identity`, as revision `revision` of secret `name`
    /// in `network`.
    pub fn open(
        &self,
        identity: &NodeIdentity,
        network: &str,
        name: &str,
        revision: u64,
    ) -> Result<SecretValues, SealError> {
        let sealed = self.sealed().map_err(|_| SealError::Tampered)?;
        let plaintext = identity.open(&sealed, &context(network, name, revision))?;
        let values: BTreeMap<String, String> =
            serde_json::from_slice(&plaintext).map_err(|_| SealError::Tampered)?;
        // The keys in the clear must be the keys sealed.
        if !values.keys().eq(self.keys.iter()) {
            return Err(SealError::Tampered);
        }
        Ok(SecretValues(
            values
                .into_iter()
                .map(|(k, v)| (k, Zeroizing::new(v)))
                .collect(),
        ))
    }
}

/// `secret.create` and `secret.rotate`. Its values are never printed.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretParams {
    /// The secret's name: 1 to 32 of `a-z 0-9 -`.
    pub name: String,
    /// Its values by key (the whole set). At most 12 KiB in all.
    pub data: BTreeMap<String, String>,
    /// The nodes allowed to use it, by peer id or name (unique among members). Default on
    /// create: every member the signer sees now; on rotate: the nodes of the revision before.
    #[serde(default)]
    pub nodes: Option<Vec<String>>,
}

impl std::fmt::Debug for SecretParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretParams")
            .field("name", &self.name)
            .field("keys", &self.data.keys().collect::<Vec<_>>())
            .field("nodes", &self.nodes)
            .finish_non_exhaustive()
    }
}

/// Commands that name one secret.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    /// The secret's name.
    pub name: String,
}

/// A secret as answers show it: its keys and nodes, never its values.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Secret {
    /// Its name.
    pub name: String,
    /// Its revision, from 1 (each rotation is one).
    pub revision: u64,
    /// The keys of its values.
    pub keys: Vec<String>,
    /// The nodes allowed to use it (peer ids).
    pub nodes: Vec<String>,
    /// The operator that signed this revision.
    pub signed_by: String,
    /// When it was signed, Unix ms.
    pub signed_at_ms: u64,
    /// Deployments this revision rolls (on a rotation): each signed a new revision that
    /// restarts its replicas with the new values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rolled: Vec<String>,
}

impl Answer for Secret {}

/// `secret.list`'s answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretListing {
    /// The fleet's secrets, by name.
    pub secrets: Vec<Secret>,
}

impl Answer for SecretListing {}

/// Who can use what: resolves `nodes` (peer ids or member names) against the members
/// `members` (peer id and name), each once, in peer-id order. Absent: every member.
pub fn resolve_nodes(
    nodes: Option<&[String]>,
    members: &[(PeerId, String)],
) -> Result<Vec<PeerId>, SpecError> {
    let mut chosen: Vec<PeerId> = match nodes {
        None => members.iter().map(|(peer, _)| *peer).collect(),
        Some(nodes) => nodes
            .iter()
            .map(|node| {
                if let Ok(peer) = node.parse::<PeerId>() {
                    return Ok(peer);
                }
                let named: Vec<&PeerId> = members
                    .iter()
                    .filter(|(_, name)| name == node)
                    .map(|(peer, _)| peer)
                    .collect();
                match named.as_slice() {
                    [peer] => Ok(**peer),
                    [] => invalid(format!("no member is named {node:?}")),
                    _ => invalid(format!(
                        "{} members are named {node:?}: give a peer id",
                        named.len()
                    )),
                }
            })
            .collect::<Result<_, _>>()?,
    };
    chosen.sort();
    chosen.dedup();
    if chosen.is_empty() {
        return invalid("no node to seal the secret to: name them in nodes");
    }
    Ok(chosen)
}

commands! {
    /// `secret.create`.
    SecretCreate = "secret.create", Operate, SecretParams => Secret,
        "Create a secret sealed to the nodes allowed to use it; workloads use it by name (env_from, files); its values are never shown";
    /// `secret.rotate`.
    SecretRotate = "secret.rotate", Operate, SecretParams => Secret,
        "Give a secret new values, sealed afresh, and roll the deployments that use it";
    /// `secret.describe`.
    SecretDescribe = "secret.describe", Read, SecretRef => Secret,
        "A secret's keys, revision and nodes (never its values)";
    /// `secret.list`.
    SecretList = "secret.list", Read, crate::NoParams => SecretListing,
        "The fleet's secrets: keys, revisions and nodes (never values)";
    /// `secret.delete`.
    SecretDelete = "secret.delete", Operate, SecretRef => Deleted,
        "Delete a secret; workloads already running keep what they were given";
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data() -> BTreeMap<String, String> {
        BTreeMap::from([("password".to_owned(), "s3cr3t-value".to_owned())])
    }

    #[test]
    fn a_sealed_secret_opens_only_on_its_nodes_and_as_itself() {
        let (allowed, other) = (NodeIdentity::generate(), NodeIdentity::generate());
        let spec = SecretSpec::seal("net", "db", 2, &data(), &[allowed.peer_id()]).unwrap();
        spec.check().unwrap();
        let text = serde_json::to_string(&spec).unwrap();
        assert!(!text.contains("s3cr3t"));
        let values = spec.open(&allowed, "net", "db", 2).unwrap();
        assert_eq!(values.get("password"), Some("s3cr3t-value"));
        assert!(!format!("{values:?}").contains("s3cr3t"));
        assert_eq!(
            spec.open(&other, "net", "db", 2).unwrap_err(),
            SealError::NotRecipient
        );
        // Taken as another secret, or another revision, it does not open.
        assert!(spec.open(&allowed, "net", "other", 2).is_err());
        assert!(spec.open(&allowed, "net", "db", 1).is_err());
        // Keys in the clear that differ from the sealed ones.
        let mut renamed = spec.clone();
        renamed.keys = vec!["token".to_owned()];
        assert!(renamed.open(&allowed, "net", "db", 2).is_err());
    }

    #[test]
    fn params_never_print_values_and_nodes_resolve_uniquely() {
        let params = SecretParams {
            name: "db".to_owned(),
            data: data(),
            nodes: None,
        };
        assert!(!format!("{params:?}").contains("s3cr3t"));
        let (a, b) = (
            NodeIdentity::generate().peer_id(),
            NodeIdentity::generate().peer_id(),
        );
        let members = vec![(a, "gpu-1".to_owned()), (b, "gpu-1".to_owned())];
        assert!(resolve_nodes(Some(&["gpu-1".to_owned()]), &members).is_err());
        assert_eq!(
            resolve_nodes(Some(&[a.to_string()]), &members).unwrap(),
            vec![a]
        );
        assert_eq!(resolve_nodes(None, &members).unwrap().len(), 2);
        assert!(resolve_nodes(Some(&[]), &members).is_err());
    }
}
