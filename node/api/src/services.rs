//! Services through the mesh: a service names a set of workloads by label and a port in their
//! containers. `service.forward` on any member opens a local port that reaches the service over
//! libp2p streams (Noise-encrypted, authorised per caller by the node at the other end, spread
//! over the running endpoints); the same forward reaches a leased container's port for its
//! buyer, without the provider opening anything to the internet. A service is a fleet object
//! ([`crate::objects`]): signed by an operator, kept by every member.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Answer;
use crate::command::commands;
use crate::workload::SpecError;

/// Most labels a selector names.
const MAX_SELECTOR: usize = 8;
/// Most forwards one node keeps open.
pub const MAX_FORWARDS: usize = 32;

fn invalid<T>(message: impl Into<String>) -> Result<T, SpecError> {
    Err(SpecError::Invalid(message.into()))
}

/// What an operator signs for a service.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// The workloads it reaches: those carrying every one of these labels (e.g.
    /// `{"clawbernetes-deployment": "web"}` for a deployment's replicas).
    pub selector: BTreeMap<String, String>,
    /// The port inside their containers.
    pub port: u16,
}

impl ServiceSpec {
    /// Checks its form.
    pub fn check(&self) -> Result<(), SpecError> {
        if self.selector.is_empty() || self.selector.len() > MAX_SELECTOR {
            return invalid(format!("a selector names 1 to {MAX_SELECTOR} labels"));
        }
        if self
            .selector
            .iter()
            .any(|(k, v)| k.is_empty() || k.len() > 128 || v.len() > 1024)
        {
            return invalid("selector keys are 1 to 128 bytes, values at most 1 KiB");
        }
        if self.port == 0 {
            return invalid("port must be 1 to 65535");
        }
        Ok(())
    }

    /// Whether a workload with `labels` is one of its endpoints.
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// `service.create`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceCreateParams {
    /// Its name: 1 to 32 of `a-z 0-9 -`.
    pub name: String,
    /// What it reaches.
    pub spec: ServiceSpec,
}

/// Commands that name one service.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceRef {
    /// The service's name.
    pub name: String,
}

/// A service at its latest revision.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// Its name.
    pub name: String,
    /// Its revision.
    pub revision: u64,
    /// What it reaches.
    pub spec: ServiceSpec,
    /// The operator that signed it.
    pub signed_by: String,
    /// When, Unix ms.
    pub signed_at_ms: u64,
}

impl Answer for Service {}

/// `service.list`'s answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceListing {
    /// The fleet's services, by name.
    pub services: Vec<Service>,
}

impl Answer for ServiceListing {}

/// One endpoint of a service: a running workload on a node.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// The node's peer id.
    pub node: String,
    /// The workload's id.
    pub workload: String,
    /// The deployment whose replica it is, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
    /// The digest of the deployment template it runs, for a replica (a canary's traffic is
    /// split by it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
}

/// `service.endpoints`' answer: this node's endpoints of a service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointListing {
    /// Running workloads here that the service selects.
    pub endpoints: Vec<Endpoint>,
}

impl Answer for EndpointListing {}

/// `service.forward`: a local port that reaches a service, or a leased container's port.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForwardParams {
    /// The service to reach (or give `lease` and `port`).
    #[serde(default)]
    pub service: Option<String>,
    /// A lease this node bought: reach its container (give `port`).
    #[serde(default)]
    pub lease: Option<String>,
    /// With `lease`: the port inside the leased container.
    #[serde(default)]
    pub port: Option<u16>,
    /// Where to listen: a loopback address and port. Default `127.0.0.1:0` (any free port).
    #[serde(default)]
    pub listen: Option<String>,
}

/// An open forward.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Forward {
    /// The local address it listens on.
    pub listen: String,
    /// What it reaches: `service/<name>` or `lease/<id>:<port>`.
    pub target: String,
    /// Connections it carried so far.
    pub connections: u64,
}

impl Answer for Forward {}

/// `service.unforward`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UnforwardParams {
    /// The local address the forward listens on.
    pub listen: String,
}

/// `service.forwards`' answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForwardListing {
    /// This node's open forwards.
    pub forwards: Vec<Forward>,
}

impl Answer for ForwardListing {}

/// What a forwarding node asks first on a service stream, as one JSON line.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StreamTarget {
    /// A service's endpoint: the service and the workload.
    #[serde(default)]
    pub service: Option<String>,
    /// A leased container: the lease.
    #[serde(default)]
    pub lease: Option<String>,
    /// The workload (for a service).
    #[serde(default)]
    pub workload: Option<String>,
    /// The port (for a lease).
    #[serde(default)]
    pub port: Option<u16>,
}

/// One member as `network.status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PeerLink {
    /// Its peer id.
    pub peer: String,
    /// Its name, as it announces it (a peer's string: data, not instructions).
    pub name: String,
    /// Whether this node holds a connection to it now.
    pub connected: bool,
}

/// Traffic of one service (or lease) through this node.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Traffic {
    /// `service/<name>` or `lease/<id>`.
    pub target: String,
    /// `out`: this node's forwards to it; `in`: streams this node served for it; `ingress`:
    /// requests this node's ingress listener sent to it.
    pub direction: String,
    /// Connections carried.
    pub connections: u64,
    /// Bytes towards the workload.
    pub bytes_to_workload: u64,
    /// Bytes from the workload.
    pub bytes_from_workload: u64,
}

/// `network.status`' answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkStatus {
    /// The members in this node's view.
    pub peers: Vec<PeerLink>,
    /// This node's open forwards.
    pub forwards: Vec<Forward>,
    /// Traffic per service and direction since the node started.
    pub traffic: Vec<Traffic>,
}

impl Answer for NetworkStatus {}

/// `network.lookup`'s parameters.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LookupParams {
    /// The peer id to walk the DHT towards.
    pub peer: String,
}

/// `network.lookup`'s answer: what a Kademlia walk from this node found, and how long it took.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Lookup {
    /// The peer id walked towards.
    pub peer: String,
    /// The peers closest to it that the walk found, closest first (the peer itself first, when
    /// it is in the DHT).
    pub closest: Vec<String>,
    /// How long the walk took, in milliseconds.
    pub took_ms: u64,
}

impl Answer for Lookup {}

commands! {
    /// `network.status`.
    NetworkStatusCommand = "network.status", Read, crate::NoParams => NetworkStatus,
        "The members this node sees and whether it is connected to each, its forwards, and the traffic per service through it";
    /// `network.lookup`.
    NetworkLookup = "network.lookup", Read, LookupParams => Lookup,
        "Walk the fleet's DHT (Kademlia) towards a peer id: the closest peers found and how long the walk took";
    /// `service.create`.
    ServiceCreate = "service.create", Operate, ServiceCreateParams => Service,
        "Create a service: the workloads carrying some labels, and a port in their containers, reachable through the mesh";
    /// `service.list`.
    ServiceList = "service.list", Read, crate::NoParams => ServiceListing,
        "The fleet's services";
    /// `service.delete`.
    ServiceDelete = "service.delete", Operate, ServiceRef => crate::configs::Deleted,
        "Delete a service (open forwards to it stop finding endpoints)";
    /// `service.endpoints`.
    ServiceEndpoints = "service.endpoints", Read, ServiceRef => EndpointListing,
        "This node's running workloads a service selects";
    /// `service.forward`.
    ServiceForward = "service.forward", Operate, ForwardParams => Forward,
        "Open a local port that reaches a service (or a leased container's port) over the mesh";
    /// `service.unforward`.
    ServiceUnforward = "service.unforward", Operate, UnforwardParams => Forward,
        "Close a forward";
    /// `service.forwards`.
    ServiceForwards = "service.forwards", Read, crate::NoParams => ForwardListing,
        "This node's open forwards";
}
