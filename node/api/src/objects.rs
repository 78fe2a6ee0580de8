//! Fleet objects: deployments (and, as they come, jobs, cron jobs, autoscalers, configs and
//! secrets) are records signed by a fleet operator, versioned by revision and replicated to every
//! member, which keeps them in its store. No registry holds them; any member answers for them.
//! This module has what every kind shares: how a member catches up with another.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Answer;
use crate::command::commands;

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
    /// `object.sync`.
    ObjectSync = "object.sync", Read, SyncParams => ObjectPage,
        "A page of the signed fleet objects this member keeps, for another member catching up";
}
