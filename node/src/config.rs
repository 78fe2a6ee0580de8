//! The node's configuration: one typed struct, read from `config.toml` in the data directory.
//!
//! Every field has a default that works for a local fleet; unknown keys are rejected so that a
//! misspelt setting is an error rather than silently ignored.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use claw_attestation::SimulatedGpuProfile;
use serde::{Deserialize, Serialize};

/// Largest config file accepted.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("invalid config {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's explanation, with line and column.
        message: String,
    },
    /// A value is out of its allowed range.
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// Everything a node can be configured with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// How the node describes itself.
    pub node: NodeSection,
    /// Which network it belongs to.
    pub network: NetworkSection,
    /// GPUs beyond what NVML finds.
    pub gpu: GpuSection,
    /// Signing and verification limits.
    pub attestation: AttestationSection,
    /// Mesh membership: addresses, peers, timing.
    pub mesh: MeshSection,
    /// The local control API used by the CLI.
    pub control: ControlSection,
    /// Who may do what on this node.
    pub access: AccessSection,
    /// Container workloads on the Docker Engine.
    pub workloads: WorkloadsSection,
    /// The admin-only `system.run` command.
    pub system_run: SystemRunSection,
    /// The Solana cluster that settles MOLT payments.
    pub chain: ChainSection,
    /// Selling and buying GPU time.
    pub market: MarketSection,
    /// Connecting this node to an OpenClaw gateway as its own node.
    pub gateway: GatewaySection,
    /// Prometheus metrics.
    pub metrics: MetricsSection,
    /// The HTTP listener for ingress rules.
    pub ingress: IngressSection,
}

/// Prometheus metrics at `/metrics`. Off unless `listen` is set; always on loopback, since the
/// metrics name peers, GPUs and workloads (scrape remote nodes through an agent or tunnel).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// Loopback address to serve on, e.g. `127.0.0.1:9464`; port 0 picks a free one (written to
    /// `metrics.addr` in the data directory).
    pub listen: Option<String>,
}

/// This member's HTTP listener for the ingress rules that name it (`ingress.create`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngressSection {
    /// Address to serve HTTP on, e.g. `0.0.0.0:80`; none when absent. Port 0 picks a free one
    /// (written to `ingress.addr` in the data directory).
    pub listen: Option<String>,
}

/// This node as an OpenClaw node: the gateway's URL, where its token is, and what the gateway may
/// do here. The token comes from `$CLAWNODE_GATEWAY_TOKEN`, else from `token_file`; it is never
/// written to the config or the logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewaySection {
    /// `ws://127.0.0.1:18789`; no connection when absent (or give `run --gateway URL`).
    pub url: Option<String>,
    /// A file (mode 0600) holding the gateway's shared token.
    pub token_file: Option<String>,
    /// For a `wss://` gateway: a PEM file of CA certificates trusted beside the system's roots.
    pub ca_file: Option<String>,
    /// For a `wss://` gateway: trust only the certificates with these SHA-256s (64 hex digits,
    /// colons allowed), e.g. a self-signed one.
    pub pin_sha256: Vec<String>,
    /// The role the gateway's callers get: `read`, `operate` (default) or `admin`.
    pub role: crate::access::Role,
    /// Answer only gateway calls that carry an API key, each within what its key allows.
    pub require_api_key: bool,
}

impl Default for GatewaySection {
    fn default() -> Self {
        Self {
            url: None,
            token_file: None,
            ca_file: None,
            pin_sha256: Vec::new(),
            role: crate::access::Role::Operate,
            require_api_key: false,
        }
    }
}

/// Selling and buying GPU time for MOLT. Amounts are MOLT as decimal text (`"1.5"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MarketSection {
    /// The arbiter's wallet address: the third key of every escrow this node signs up to. No
    /// leases are made without one.
    pub arbiter: Option<String>,
    /// Offer this node's free GPUs at a fixed price per GPU-hour. No offers without it.
    pub price_per_gpu_hour: Option<String>,
    /// Added to the price in proportion to how many of the node's GPUs are taken (all taken:
    /// the whole markup). Default none.
    pub utilisation_markup: Option<String>,
    /// Shortest lease offered, hours.
    pub min_hours: u32,
    /// Longest lease offered, hours.
    pub max_hours: u32,
    /// Whether leases of this node may be interrupted.
    pub interruptible: bool,
    /// How long a published offer stays valid; it is renewed well before.
    pub offer_ttl_secs: u64,
    /// How long a buyer has to fund the escrow before the GPUs are released.
    pub fund_within_secs: u64,
    /// Seconds between a streaming lease's pulls.
    pub stream_pull_secs: u32,
    /// This node is an arbiter: its wallet is the third key of escrows that name it, and it
    /// answers `market.arbitrate`.
    pub arbitrate: bool,
    /// The peer id of the arbiter's node, asked when a lease cannot be settled by its parties.
    pub arbiter_peer: Option<String>,
    /// A provider asks the arbiter when a completed lease is still unsettled this long after.
    pub dispute_after_secs: u64,
    /// A buyer asks the arbiter when its provider has not answered for this long.
    pub unreachable_grace_secs: u64,
    /// A provider signs a usage checkpoint of each running lease this often.
    pub checkpoint_secs: u32,
    /// Unfunded reservations one peer, or one wallet, may hold at once on this provider.
    pub max_open_reservations: u32,
    /// A peer or wallet whose reservations lapsed unfunded this many times within
    /// `lapse_window_secs` is refused new ones until they age out.
    pub lapses_before_refusal: u32,
    /// The window over which lapses are counted.
    pub lapse_window_secs: u64,
    /// The most one lease this node buys may cost. Default no limit.
    pub max_per_lease: Option<String>,
    /// The most the leases this node buys in any 24 hours may cost together. Default no limit.
    pub max_per_day: Option<String>,
}

impl Default for MarketSection {
    fn default() -> Self {
        Self {
            arbiter: None,
            price_per_gpu_hour: None,
            utilisation_markup: None,
            min_hours: 1,
            max_hours: 168,
            interruptible: false,
            offer_ttl_secs: 300,
            fund_within_secs: 120,
            stream_pull_secs: 60,
            arbitrate: false,
            arbiter_peer: None,
            dispute_after_secs: 600,
            unreachable_grace_secs: 120,
            checkpoint_secs: 60,
            max_open_reservations: 2,
            lapses_before_refusal: 3,
            lapse_window_secs: 3600,
            max_per_lease: None,
            max_per_day: None,
        }
    }
}

fn molt_setting(
    name: &str,
    text: &Option<String>,
) -> Result<Option<claw_market::Molt>, ConfigError> {
    text.as_deref()
        .map(|t| {
            t.parse()
                .map_err(|e| ConfigError::Invalid(format!("market.{name}: {e}")))
        })
        .transpose()
}

impl MarketSection {
    /// The fixed price, if the node sells.
    pub fn price(&self) -> Option<claw_market::Molt> {
        molt_setting("price_per_gpu_hour", &self.price_per_gpu_hour)
            .ok()
            .flatten()
    }

    /// The utilisation markup (zero when unset).
    pub fn markup(&self) -> claw_market::Molt {
        molt_setting("utilisation_markup", &self.utilisation_markup)
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    /// The buyer's budget.
    pub fn budget(&self) -> claw_market::lease::Budget {
        claw_market::lease::Budget {
            max_per_lease: molt_setting("max_per_lease", &self.max_per_lease)
                .ok()
                .flatten(),
            max_per_day: molt_setting("max_per_day", &self.max_per_day)
                .ok()
                .flatten(),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: &str| Err(ConfigError::Invalid(format!("market.{m}")));
        molt_setting("price_per_gpu_hour", &self.price_per_gpu_hour)?;
        molt_setting("utilisation_markup", &self.utilisation_markup)?;
        molt_setting("max_per_lease", &self.max_per_lease)?;
        molt_setting("max_per_day", &self.max_per_day)?;
        if let Some(arbiter) = &self.arbiter
            && (arbiter.len() > 64 || bs58::decode(arbiter).into_vec().map(|k| k.len()) != Ok(32))
        {
            return invalid("arbiter must be a wallet address (base-58, 32 bytes)");
        }
        if self.min_hours == 0 || self.min_hours > self.max_hours || self.max_hours > 8760 {
            return invalid("min_hours and max_hours: 1 ≤ min_hours ≤ max_hours ≤ 8760");
        }
        if !(30..=86_400).contains(&self.offer_ttl_secs) {
            return invalid("offer_ttl_secs must be 30 to 86400");
        }
        if self
            .arbiter_peer
            .as_ref()
            .is_some_and(|p| p.parse::<claw_mesh::PeerId>().is_err())
        {
            return invalid("arbiter_peer must be a peer id");
        }
        if !(1..=30 * 86_400).contains(&self.dispute_after_secs) {
            return invalid("dispute_after_secs must be 1 to 2592000");
        }
        if !(1..=3600).contains(&self.stream_pull_secs) {
            return invalid("stream_pull_secs must be 1 to 3600");
        }
        if !(5..=3600).contains(&self.fund_within_secs) {
            return invalid("fund_within_secs must be 5 to 3600");
        }
        if !(1..=86_400).contains(&self.unreachable_grace_secs) {
            return invalid("unreachable_grace_secs must be 1 to 86400");
        }
        if !(1..=3600).contains(&self.checkpoint_secs) {
            return invalid("checkpoint_secs must be 1 to 3600");
        }
        if !(1..=64).contains(&self.max_open_reservations) {
            return invalid("max_open_reservations must be 1 to 64");
        }
        if !(1..=1000).contains(&self.lapses_before_refusal) {
            return invalid("lapses_before_refusal must be 1 to 1000");
        }
        if !(60..=86_400).contains(&self.lapse_window_secs) {
            return invalid("lapse_window_secs must be 60 to 86400");
        }
        Ok(())
    }
}

/// The Solana cluster that settles MOLT payments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChainSection {
    /// The cluster's JSON-RPC URL. Default `http://127.0.0.1:8899`, where `clawnode localnet`
    /// serves the embedded chain.
    pub rpc_url: String,
    /// The MOLT mint's address. When absent, the `localnet.json` that `clawnode localnet` wrote
    /// into this data directory names it.
    pub molt_mint: Option<String>,
}

impl Default for ChainSection {
    fn default() -> Self {
        Self {
            rpc_url: "http://127.0.0.1:8899".to_owned(),
            molt_mint: None,
        }
    }
}

/// Who may do what. Fleet members may read; operators may also run and stop workloads, label,
/// cordon and drain; admins may also use `system.run`. The local control API acts as admin.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessSection {
    /// Peer ids with the operate role. Default none.
    pub operators: Vec<String>,
    /// Peer ids with the admin role. Default none.
    pub admins: Vec<String>,
    /// Count as fleet members only the peers one of `operators` or `admins` admitted (a
    /// membership credential it signed, `clawnode fleet admit`): the controllers place work on
    /// members only, and `fleet` marks the rest as strangers. Default off: every peer on the
    /// network counts (local fleets, and private fleets behind a swarm key).
    pub members_only: bool,
}

/// Container workloads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkloadsSection {
    /// The Docker Engine socket. Default `/var/run/docker.sock`, or `DOCKER_HOST` when it names a
    /// `unix://` socket.
    pub docker_socket: Option<String>,
    /// Host directories under which workloads may mount volumes read-only. Default none (no
    /// host mounts).
    pub volume_roots: Vec<String>,
    /// Host directories under which workloads may also mount volumes read-write: the operator
    /// accepts that workloads write there. Default none.
    pub writable_volume_roots: Vec<String>,
    /// The host address published ports bind to. Default `127.0.0.1` (loopback only).
    pub publish_address: String,
    /// Seconds a workload gets to exit after SIGTERM before it is killed. Default 10.
    pub stop_timeout_secs: u32,
    /// What a tenant workload (every lease's) gets.
    pub tenant: TenantSection,
}

impl Default for WorkloadsSection {
    fn default() -> Self {
        Self {
            docker_socket: None,
            volume_roots: Vec::new(),
            writable_volume_roots: Vec::new(),
            publish_address: "127.0.0.1".to_owned(),
            stop_timeout_secs: 10,
            tenant: TenantSection::default(),
        }
    }
}

/// Limits of tenant workloads; offers advertise them per GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantSection {
    /// CPU per leased GPU, in thousandths of a core. Default 4000 (4 cores).
    pub cpu_millis_per_gpu: u32,
    /// Memory per leased GPU, MiB. Default 32768.
    pub memory_mib_per_gpu: u64,
    /// CPU of a tenant workload without GPUs, thousandths of a core. Default 1000.
    pub cpu_millis_without_gpus: u32,
    /// Memory of a tenant workload without GPUs, MiB. Default 2048.
    pub memory_mib_without_gpus: u64,
    /// Most processes (and threads) in one tenant container. Default 4096.
    pub pids_limit: u32,
    /// Size of the tmpfs `/tmp` of a read-only tenant root, MiB. Default 1024.
    pub tmp_mib: u64,
    /// More address ranges tenants may not reach (the provider's own networks), beyond the
    /// private, CGNAT, link-local and loopback ranges always blocked.
    pub blocked_ranges: Vec<String>,
    /// Days the logs of a removed tenant container are kept for its owner. Default 7.
    pub log_retention_days: u32,
}

impl Default for TenantSection {
    fn default() -> Self {
        Self {
            cpu_millis_per_gpu: 4000,
            memory_mib_per_gpu: 32_768,
            cpu_millis_without_gpus: 1000,
            memory_mib_without_gpus: 2048,
            pids_limit: 4096,
            tmp_mib: 1024,
            blocked_ranges: Vec::new(),
            log_retention_days: 7,
        }
    }
}

/// The admin-only `system.run` command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SystemRunSection {
    /// Absolute paths of the programs it may run. Default none (the command refuses everything).
    pub allowlist: Vec<String>,
    /// Longest a program may run, in seconds. Default 30.
    pub max_timeout_secs: u64,
    /// Bytes kept of each of stdout and stderr. Default 64 KiB.
    pub max_output_bytes: usize,
}

impl Default for SystemRunSection {
    fn default() -> Self {
        Self {
            allowlist: Vec::new(),
            max_timeout_secs: 30,
            max_output_bytes: 64 * 1024,
        }
    }
}

/// How the node joins the mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MeshSection {
    /// Multiaddrs to listen on. Default TCP and QUIC on port 7946.
    pub listen: Vec<String>,
    /// Peers to join through, each ending in `/p2p/<peer id>`. Default none.
    pub bootstrap: Vec<String>,
    /// Seconds between announcements. Default 10.
    pub announce_interval_secs: u64,
    /// Announcements a node may miss before peers drop it. Default 3.
    pub missed_intervals: u32,
    /// Discover peers on the local network with mDNS. Default off.
    pub mdns: bool,
    /// Also use QUIC (ignored in private fleets, where pnet needs TCP). Default on.
    pub quic: bool,
    /// Many nodes on one host (local fleets): no gossip-scoring penalty for peers sharing an
    /// IP, and no cap on inbound connections per address (8) and per /24 (32). Default off.
    pub allow_colocated_peers: bool,
    /// Serve as a circuit relay for nodes behind NAT (needs an address peers can dial: one in
    /// `external_addrs`, or one AutoNAT confirms). Default off.
    pub relay_server: bool,
    /// Relays to listen through, each ending in `/p2p/<peer id>`. Default none: a node that
    /// finds itself behind NAT picks up to two connected relays itself.
    pub relays: Vec<String>,
    /// Addresses peers can dial this node at (a public IP, a port forward), announced without
    /// probing. Default none.
    pub external_addrs: Vec<String>,
    /// Count private IP addresses as reachable in NAT probes, for fleets whose shared network
    /// is private (a campus, a VPC, a lab). Default off.
    pub nat_probe_private_addresses: bool,
}

impl Default for MeshSection {
    fn default() -> Self {
        Self {
            listen: vec![
                "/ip4/0.0.0.0/tcp/7946".to_owned(),
                "/ip4/0.0.0.0/udp/7946/quic-v1".to_owned(),
            ],
            bootstrap: Vec::new(),
            announce_interval_secs: 10,
            missed_intervals: 3,
            mdns: false,
            quic: true,
            allow_colocated_peers: false,
            relay_server: false,
            relays: Vec::new(),
            external_addrs: Vec::new(),
            nat_probe_private_addresses: false,
        }
    }
}

/// The local control API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlSection {
    /// Loopback address to serve on; port 0 picks a free one. Default `127.0.0.1:0`.
    pub listen: String,
}

impl Default for ControlSection {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:0".to_owned(),
        }
    }
}

/// How the node describes itself to the fleet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeSection {
    /// A human-readable name; the host name when absent.
    pub name: Option<String>,
    /// Where the machine is, for buyers that constrain placement (e.g. "eu-west").
    pub region: Option<String>,
    /// Free-form labels (`key = "value"`).
    pub labels: BTreeMap<String, String>,
}

/// Which network the node belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkSection {
    /// `localnet`, `devnet`, `mainnet` or a private fleet id. Default `localnet`.
    pub name: String,
}

impl Default for NetworkSection {
    fn default() -> Self {
        Self {
            name: "localnet".to_owned(),
        }
    }
}

/// GPUs beyond what NVML finds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GpuSection {
    /// Simulated GPUs for local fleets and demos. Each is reported with `simulated: true` in the
    /// signed inventory, and buyers refuse them unless they opt in. Default: none.
    pub simulated: Vec<SimulatedGpuProfile>,
}

/// Signing and verification limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttestationSection {
    /// How long a signed inventory stays valid. Default 300 s.
    pub inventory_ttl_secs: u64,
    /// How far in the future a peer's envelope may be issued. Default 30 s.
    pub max_clock_skew_secs: u64,
}

impl Default for AttestationSection {
    fn default() -> Self {
        Self {
            inventory_ttl_secs: 300,
            max_clock_skew_secs: 30,
        }
    }
}

impl AttestationSection {
    /// The inventory lifetime.
    pub fn inventory_ttl(&self) -> Duration {
        Duration::from_secs(self.inventory_ttl_secs)
    }

    /// The tolerated clock skew.
    pub fn max_clock_skew(&self) -> Duration {
        Duration::from_secs(self.max_clock_skew_secs)
    }
}

impl NodeConfig {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let read_error = |source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        };
        let len = std::fs::metadata(path).map_err(read_error)?.len();
        if len > MAX_CONFIG_BYTES {
            return Err(ConfigError::Invalid(format!(
                "{} is {len} bytes, more than the {MAX_CONFIG_BYTES}-byte limit",
                path.display()
            )));
        }
        let text = std::fs::read_to_string(path).map_err(read_error)?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.display().to_string(),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates config text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: "<text>".to_owned(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// The config as TOML, with every default written out.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("the config always serialises to TOML")
    }

    /// Checks every value's range, naming the first one out of it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        // Always in this order, so that of several values out of range the same one is named.
        self.validate_network()?;
        self.validate_node()?;
        self.validate_gpu()?;
        self.validate_inventory_ttl()?;
        self.validate_mesh_limits()?;
        self.validate_local_listeners()?;
        self.validate_mesh_addresses()?;
        self.validate_access()?;
        self.validate_workloads()?;
        self.validate_tenant()?;
        self.validate_system_run()?;
        self.market.validate()?;
        self.validate_gateway()?;
        self.validate_chain()?;
        self.validate_clock_skew()
    }

    /// `[network]`: the name is a short lowercase slug.
    fn validate_network(&self) -> Result<(), ConfigError> {
        let net = &self.network.name;
        if net.is_empty()
            || net.len() > 32
            || !net
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(ConfigError::Invalid(format!(
                "network.name {net:?} must be 1 to 32 characters of a-z, 0-9 and '-'"
            )));
        }
        Ok(())
    }

    /// `[node]`: the name, region and labels fit in what the node announces.
    fn validate_node(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if let Some(name) = &self.node.name
            && (name.is_empty() || name.len() > 64)
        {
            return invalid("node.name must be 1 to 64 characters".to_owned());
        }
        if let Some(region) = &self.node.region
            && (region.is_empty() || region.len() > 64)
        {
            return invalid("node.region must be 1 to 64 characters".to_owned());
        }
        if self.node.labels.len() > 64 {
            return invalid("at most 64 node.labels".to_owned());
        }
        for (key, value) in &self.node.labels {
            if key.is_empty() || key.len() > 64 || value.len() > 256 {
                return invalid(format!(
                    "label {key:?}: keys must be 1 to 64 characters, values at most 256"
                ));
            }
        }
        Ok(())
    }

    /// `[gpu]`: each simulated profile, and how many there are.
    fn validate_gpu(&self) -> Result<(), ConfigError> {
        for profile in &self.gpu.simulated {
            profile.validate().map_err(ConfigError::Invalid)?;
        }
        if self.gpu.simulated.len() > 16 {
            return Err(ConfigError::Invalid(
                "at most 16 gpu.simulated profiles".to_owned(),
            ));
        }
        Ok(())
    }

    /// `attestation.inventory_ttl_secs` (the clock skew is checked last, in `validate_clock_skew`).
    fn validate_inventory_ttl(&self) -> Result<(), ConfigError> {
        let ttl = self.attestation.inventory_ttl_secs;
        if !(10..=86_400).contains(&ttl) {
            return Err(ConfigError::Invalid(format!(
                "attestation.inventory_ttl_secs must be 10 to 86400, got {ttl}"
            )));
        }
        Ok(())
    }

    /// `[mesh]`'s timing and address counts (the addresses themselves are checked in
    /// `validate_mesh_addresses`).
    fn validate_mesh_limits(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let interval = self.mesh.announce_interval_secs;
        if !(1..=3600).contains(&interval) {
            return invalid(format!(
                "mesh.announce_interval_secs must be 1 to 3600, got {interval}"
            ));
        }
        if !(1..=100).contains(&self.mesh.missed_intervals) {
            return invalid("mesh.missed_intervals must be 1 to 100".to_owned());
        }
        if self.mesh.listen.len() > 16 || self.mesh.bootstrap.len() > 256 {
            return invalid("at most 16 mesh.listen and 256 mesh.bootstrap addresses".to_owned());
        }
        Ok(())
    }

    /// `control.listen` and `metrics.listen`, reachable from this machine only, and
    /// `ingress.listen`, an address with a port.
    fn validate_local_listeners(&self) -> Result<(), ConfigError> {
        match self.control.listen.parse::<std::net::SocketAddr>() {
            Ok(addr) if addr.ip().is_loopback() => {}
            _ => {
                return Err(ConfigError::Invalid(format!(
                    "control.listen {:?} must be a loopback address with a port",
                    self.control.listen
                )));
            }
        }
        if let Some(listen) = &self.metrics.listen {
            match listen.parse::<std::net::SocketAddr>() {
                Ok(addr) if addr.ip().is_loopback() => {}
                _ => {
                    return Err(ConfigError::Invalid(format!(
                        "metrics.listen {listen:?} must be a loopback address with a port"
                    )));
                }
            }
        }
        if let Some(listen) = &self.ingress.listen
            && listen.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(ConfigError::Invalid(format!(
                "ingress.listen {listen:?} must be an address with a port, e.g. 0.0.0.0:80"
            )));
        }
        Ok(())
    }

    /// `mesh.listen`, `mesh.external_addrs`, `mesh.bootstrap` and `mesh.relays`: multiaddrs,
    /// each bootstrap peer and relay naming its peer id.
    fn validate_mesh_addresses(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        for (key, addresses) in [
            ("listen", &self.mesh.listen),
            ("external_addrs", &self.mesh.external_addrs),
        ] {
            for address in addresses {
                if address.parse::<claw_mesh::Multiaddr>().is_err() {
                    return invalid(format!("mesh.{key}: {address:?} is not a multiaddr"));
                }
            }
        }
        for (key, addresses) in [
            ("bootstrap", &self.mesh.bootstrap),
            ("relays", &self.mesh.relays),
        ] {
            for address in addresses {
                if !address.contains("/p2p/") || address.parse::<claw_mesh::Multiaddr>().is_err() {
                    return invalid(format!(
                        "mesh.{key}: {address:?} is not a multiaddr ending in /p2p/<peer id>"
                    ));
                }
            }
        }
        Ok(())
    }

    /// `[access]`: every operator and admin is a peer id, and `members_only` names someone
    /// to admit members (with no one, every peer would count, the opposite of what it asks).
    fn validate_access(&self) -> Result<(), ConfigError> {
        for peer in self.access.operators.iter().chain(&self.access.admins) {
            if peer.parse::<claw_mesh::PeerId>().is_err() {
                return Err(ConfigError::Invalid(format!(
                    "access: {peer:?} is not a peer id"
                )));
            }
        }
        if self.access.members_only
            && self.access.operators.is_empty()
            && self.access.admins.is_empty()
        {
            return Err(ConfigError::Invalid(
                "access.members_only needs the operators (or admins) whose credentials admit \
                 members"
                    .to_owned(),
            ));
        }
        Ok(())
    }

    /// `[workloads]`: volume roots, the stop timeout and the publish address (the tenant limits
    /// are checked in `validate_tenant`).
    fn validate_workloads(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        for root in self
            .workloads
            .volume_roots
            .iter()
            .chain(&self.workloads.writable_volume_roots)
        {
            if !Path::new(root).is_absolute() {
                return invalid(format!("workloads.volume_roots: {root:?} is not absolute"));
            }
        }
        if !(1..=3600).contains(&self.workloads.stop_timeout_secs) {
            return invalid("workloads.stop_timeout_secs must be 1 to 3600".to_owned());
        }
        if self
            .workloads
            .publish_address
            .parse::<std::net::IpAddr>()
            .is_err()
        {
            return invalid(format!(
                "workloads.publish_address {:?} is not an IP address",
                self.workloads.publish_address
            ));
        }
        Ok(())
    }

    /// `[workloads.tenant]`: the CPU, memory, process, scratch and log limits, and the blocked
    /// address ranges.
    fn validate_tenant(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let tenant = &self.workloads.tenant;
        if !(10..=1_024_000).contains(&tenant.cpu_millis_per_gpu)
            || !(10..=1_024_000).contains(&tenant.cpu_millis_without_gpus)
        {
            return invalid(
                "workloads.tenant CPU must be 10 to 1024000 thousandths of a core".to_owned(),
            );
        }
        if !(16..=16 * 1024 * 1024).contains(&tenant.memory_mib_per_gpu)
            || !(16..=16 * 1024 * 1024).contains(&tenant.memory_mib_without_gpus)
        {
            return invalid("workloads.tenant memory must be 16 to 16777216 MiB".to_owned());
        }
        if !(16..=4_194_304).contains(&tenant.pids_limit)
            || !(1..=1_048_576).contains(&tenant.tmp_mib)
        {
            return invalid(
                "workloads.tenant: pids_limit 16 to 4194304, tmp_mib 1 to 1048576".to_owned(),
            );
        }
        if !(1..=365).contains(&tenant.log_retention_days) {
            return invalid("workloads.tenant.log_retention_days must be 1 to 365".to_owned());
        }
        for range in &tenant.blocked_ranges {
            let valid = range.split_once('/').is_some_and(|(ip, bits)| {
                ip.parse::<std::net::Ipv4Addr>().is_ok()
                    && bits.parse::<u8>().is_ok_and(|b| b <= 32)
            });
            if !valid {
                return invalid(format!(
                    "workloads.tenant.blocked_ranges: {range:?} is not an IPv4 CIDR range"
                ));
            }
        }
        Ok(())
    }

    /// `[system_run]`: absolute programs, and bounded timeouts and output.
    fn validate_system_run(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        for program in &self.system_run.allowlist {
            if !Path::new(program).is_absolute() {
                return invalid(format!("system_run.allowlist: {program:?} is not absolute"));
            }
        }
        if !(1..=3600).contains(&self.system_run.max_timeout_secs) {
            return invalid("system_run.max_timeout_secs must be 1 to 3600".to_owned());
        }
        if !(1..=16 * 1024 * 1024).contains(&self.system_run.max_output_bytes) {
            return invalid("system_run.max_output_bytes must be 1 to 16777216".to_owned());
        }
        Ok(())
    }

    /// `[gateway]`: the URL, when set, is a WebSocket URL.
    fn validate_gateway(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.gateway.url
            && !(url.starts_with("ws://") || url.starts_with("wss://"))
        {
            return Err(ConfigError::Invalid(format!(
                "gateway.url {url:?} must start with ws:// or wss://"
            )));
        }
        Ok(())
    }

    /// `[chain]`: an http(s) RPC URL, and the MOLT mint, when set, a base-58 address.
    fn validate_chain(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if !(self.chain.rpc_url.starts_with("http://")
            || self.chain.rpc_url.starts_with("https://"))
            || self.chain.rpc_url.len() > 512
        {
            return invalid(format!(
                "chain.rpc_url {:?} must be an http(s) URL",
                self.chain.rpc_url
            ));
        }
        if let Some(mint) = &self.chain.molt_mint
            && (mint.len() < 32
                || mint.len() > 44
                || bs58::decode(mint)
                    .into_vec()
                    .map_or(true, |b| b.len() != 32))
        {
            return invalid(format!("chain.molt_mint {mint:?} is not a base-58 address"));
        }
        Ok(())
    }

    /// `attestation.max_clock_skew_secs`, checked last as it always has been.
    fn validate_clock_skew(&self) -> Result<(), ConfigError> {
        if self.attestation.max_clock_skew_secs > 600 {
            return Err(ConfigError::Invalid(
                "attestation.max_clock_skew_secs must be at most 600".to_owned(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_through_toml() {
        let config = NodeConfig::default();
        assert_eq!(NodeConfig::parse(&config.to_toml()).unwrap(), config);
        assert_eq!(NodeConfig::parse("").unwrap(), config);
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = NodeConfig::parse("[network]\nnmae = \"devnet\"\n").unwrap_err();
        assert!(err.to_string().contains("nmae"), "{err}");
        assert!(NodeConfig::parse("[gpus]\n").is_err());
    }

    #[test]
    fn simulated_profiles_parse_and_are_bounded() {
        let config = NodeConfig::parse(
            "[[gpu.simulated]]\nmodel = \"NVIDIA H100 80GB HBM3\"\ncount = 2\nmemory_mib = 81559\n",
        )
        .unwrap();
        assert_eq!(config.gpu.simulated[0].count, 2);
        let err = NodeConfig::parse(
            "[[gpu.simulated]]\nmodel = \"H100\"\ncount = 1000\nmemory_mib = 1\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("count"), "{err}");
    }

    #[test]
    fn out_of_range_values_are_named() {
        let err = NodeConfig::parse("[network]\nname = \"Main Net\"\n").unwrap_err();
        assert!(err.to_string().contains("network.name"), "{err}");
        let err = NodeConfig::parse("[attestation]\ninventory_ttl_secs = 1\n").unwrap_err();
        assert!(err.to_string().contains("inventory_ttl_secs"), "{err}");
    }

    #[test]
    fn addresses_are_checked() {
        for (text, named) in [
            ("[mesh]\nlisten = [\"garbage\"]\n", "mesh.listen"),
            (
                "[mesh]\nbootstrap = [\"/ip4/10.0.0.1/tcp/7946\"]\n",
                "mesh.bootstrap",
            ),
            ("[metrics]\nlisten = \"0.0.0.0:9464\"\n", "metrics.listen"),
            ("[ingress]\nlisten = \"nowhere\"\n", "ingress.listen"),
            ("[metrics]\nlisten = \"localhost\"\n", "metrics.listen"),
            (
                "[mesh]\nrelays = [\"/ip4/10.0.0.1/tcp/7946\"]\n",
                "mesh.relays",
            ),
            (
                "[mesh]\nexternal_addrs = [\"203.0.113.1\"]\n",
                "mesh.external_addrs",
            ),
            ("[access]\nmembers_only = true\n", "access.members_only"),
        ] {
            let err = NodeConfig::parse(text).unwrap_err();
            assert!(err.to_string().contains(named), "{text}: {err}");
        }
        let config = NodeConfig::parse(
            "[metrics]\nlisten = \"127.0.0.1:9464\"\n[mesh]\nbootstrap = [\"/ip4/10.0.0.1/tcp/7946/p2p/12D3KooWGc6AtVBvP8gUn2GmHFGUeZMZSmhnUYEriuVZm9PUPQMz\"]\n",
        )
        .unwrap();
        assert_eq!(config.metrics.listen.as_deref(), Some("127.0.0.1:9464"));
    }
}
