//! Fleet objects: deployments, jobs, cron jobs, autoscalers, configs and secrets are records
//! signed by a fleet operator, versioned by revision and replicated to every member, which keeps
//! them in its store. No registry holds them; any member answers for them.
//! This module has what every kind shares: the signed record ([`FleetObject`]), how one is
//! handed to a member ([`ObjectPut`]) and how a member catches up with another ([`ObjectSync`]).

use claw_attestation::{PayloadKind, SignedPayload};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Answer;
use crate::command::commands;

/// The kinds of fleet object.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ObjectKind {
    /// A deployment (`deploy.*`).
    Deployment,
    /// A job (`job.*`).
    Job,
    /// A cron job (`cron.*`).
    CronJob,
    /// An autoscaler (`autoscale.*`).
    Autoscaler,
    /// A config (`config.*`).
    Config,
    /// A secret, sealed to the nodes that may use it (`secret.*`).
    Secret,
    /// A service reachable through the mesh (`service.*`).
    Service,
    /// A policy every node enforces at admission (`policy.*`).
    Policy,
    /// A namespace with quotas (`namespace.*`).
    Namespace,
    /// An API key's scopes and digest (`auth.*`).
    ApiKey,
    /// An HTTP ingress rule (`ingress.*`).
    Ingress,
}

impl ObjectKind {
    /// The kind's name, as in object keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deployment => "deployment",
            Self::Job => "job",
            Self::CronJob => "cron",
            Self::Autoscaler => "autoscaler",
            Self::Config => "config",
            Self::Secret => "secret",
            Self::Service => "service",
            Self::Policy => "policy",
            Self::Namespace => "namespace",
            Self::ApiKey => "api-key",
            Self::Ingress => "ingress",
        }
    }

    /// The key of object `name` of this kind: `<kind>/<name>`.
    pub fn key(self, name: &str) -> String {
        format!("{}/{name}", self.as_str())
    }

    /// The kind and name a key `<kind>/<name>` names.
    pub fn parse_key(key: &str) -> Option<(Self, &str)> {
        let (kind, name) = key.split_once('/')?;
        let kind = [
            Self::Deployment,
            Self::Job,
            Self::CronJob,
            Self::Autoscaler,
            Self::Config,
            Self::Secret,
            Self::Service,
            Self::Policy,
            Self::Namespace,
            Self::ApiKey,
            Self::Ingress,
        ]
        .into_iter()
        .find(|k| k.as_str() == kind)?;
        Some((kind, name))
    }
}

/// A fleet object at one revision: what an operator signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetObject {
    /// The network (fleet) it belongs to.
    pub network: String,
    /// What it is.
    pub kind: ObjectKind,
    /// Its name, unique per kind in the fleet.
    pub name: String,
    /// Its revision, from 1.
    pub revision: u64,
    /// The spec as JSON text; absent when this revision deletes the object.
    pub spec: Option<String>,
}

impl SignedPayload for FleetObject {
    const KIND: PayloadKind = PayloadKind::FleetObject;
}

/// `object.put`: a signed fleet object handed to a member, which keeps it (when it passes the
/// rules every member applies) and gossips it on.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PutParams {
    /// The signed envelope, base-64.
    pub object: String,
}

/// What a member did with an object handed to it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ObjectPutAnswer {
    /// The object's key, `<kind>/<name>`.
    pub key: String,
    /// The revision the member keeps now.
    pub revision: u64,
    /// Whether the object handed in is that revision (false: the member keeps a newer one).
    pub stored: bool,
}

impl Answer for ObjectPutAnswer {}

/// Objects one `object.sync` page carries at most.
pub const SYNC_PAGE_OBJECTS: usize = 64;

/// `object.sync`: a page of the signed objects a member keeps, in key order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SyncParams {
    /// Start after this key (the previous page's `next`); from the first when absent.
    #[serde(default)]
    pub after: Option<String>,
}

/// A page of signed fleet objects.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ObjectPage {
    /// The objects' latest revisions, each as its signed envelope in base-64; the receiver
    /// verifies each one as it would from gossip.
    pub objects: Vec<String>,
    /// The key to ask from for the next page; absent on the last page.
    #[serde(default)]
    pub next: Option<String>,
}

impl Answer for ObjectPage {}

commands! {
    /// `object.put`.
    ObjectPut = "object.put", Read, PutParams => ObjectPutAnswer,
        "Hand this member a signed fleet object; it is kept and gossiped when an operator signed it and it is newer";
    /// `object.sync`.
    ObjectSync = "object.sync", Read, SyncParams => ObjectPage,
        "A page of the signed fleet objects this member keeps, for another member catching up";
}
