//! A whole fleet as the agent meets it: `clawnode run` processes on loopback selling their
//! (simulated) GPUs on the embedded chain, `claw-bridge run` joined to their mesh and approved as
//! a node of a real OpenClaw gateway, and the OpenClaw plugin loaded in that gateway. Tests speak
//! to it as the agent does: through the plugin's tools.

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::{
    Clawnode, Localnet, OpenClawGateway, RunningNode, TOKEN, eventually, node_containers,
    remove_node_containers, run_with_deadline, workspace_binary,
};

/// One provider node of an [`AgentFleet`].
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Its name in the fleet (`node.name`).
    pub name: &'static str,
    /// How many simulated H100s it has (none: only the GPUs NVML finds).
    pub gpus: u32,
    /// Its price, MOLT per GPU-hour (it sells its GPUs when given).
    pub price: Option<&'static str>,
    /// A Docker socket other than the default (`workloads.docker_socket`).
    pub docker_socket: Option<PathBuf>,
    /// Whether it serves ingress rules on a loopback port and is an operator of every node
    /// (as an edge must be to reach the other nodes' endpoints).
    pub edge: bool,
}

impl NodeSpec {
    /// A node with `gpus` simulated H100s, selling at 1 MOLT per GPU-hour.
    pub fn new(name: &'static str, gpus: u32) -> Self {
        Self {
            name,
            gpus,
            price: Some("1"),
            docker_socket: None,
            edge: false,
        }
    }

    /// The same node as an edge: an ingress listener, and an operator of every node.
    pub fn edge(self) -> Self {
        Self { edge: true, ..self }
    }
}

/// A running node of the fleet.
#[derive(Debug)]
pub struct FleetNode {
    /// Its name.
    pub name: &'static str,
    /// Its CLI.
    pub cli: Clawnode,
    /// The process.
    pub process: RunningNode,
}

/// The fleet, the bridge and the gateway; everything is stopped, and the nodes' containers
/// removed, when dropped.
#[derive(Debug)]
pub struct AgentFleet {
    bridge: Child,
    bridge_args: Vec<std::ffi::OsString>,
    /// The provider nodes, in the order given.
    pub nodes: Vec<FleetNode>,
    /// The gateway, with the plugin loaded.
    pub gateway: OpenClawGateway,
    /// The bridge's OpenClaw device id.
    pub device_id: String,
    /// The embedded chain, held by the market node.
    pub localnet: Localnet,
    /// Everything on disk.
    pub dir: tempfile::TempDir,
}

/// Configures each node of `specs` (market, chain, name, the bridge as operator) and starts it,
/// every node after the first joining through the first.
fn start_nodes(
    specs: &[NodeSpec],
    clis: Vec<Clawnode>,
    market_node: usize,
    localnet: &Localnet,
    bridge_peer: &str,
) -> Vec<FleetNode> {
    let mut operators = vec![bridge_peer.to_owned()];
    for (spec, cli) in specs.iter().zip(&clis) {
        if spec.edge {
            cli.ok(&["configure", "--ingress", "127.0.0.1:0"]);
            let identity = cli.ok(&["--json", "identity"]).json();
            operators.push(identity["peer_id"].as_str().expect("peer id").to_owned());
        }
    }
    let mut nodes: Vec<FleetNode> = Vec::new();
    for (index, (spec, cli)) in specs.iter().zip(clis).enumerate() {
        let chain = if index == market_node {
            String::new()
        } else {
            localnet.chain_config()
        };
        let mut market = format!("arbiter = {:?}\n", localnet.faucet);
        if let Some(price) = spec.price {
            market.push_str(&format!("price_per_gpu_hour = {price:?}\n"));
        }
        cli.configure_market(&market, &chain);
        cli.edit_config(|text| {
            let mut text = text
                .replace("operators = []", &format!("operators = {operators:?}"))
                .replace(
                    "[node.labels]\n",
                    &format!("[node]\nname = {:?}\n\n[node.labels]\n", spec.name),
                );
            if let Some(socket) = &spec.docker_socket {
                text = text.replace(
                    "[workloads]\n",
                    &format!("[workloads]\ndocker_socket = {:?}\n", socket.display()),
                );
            }
            text
        });
        let bootstrap = nodes
            .first()
            .map(|n| n.process.listen_addrs.clone())
            .unwrap_or_default();
        let process = RunningNode::start(&cli, &bootstrap);
        nodes.push(FleetNode {
            name: spec.name,
            cli,
            process,
        });
    }
    nodes
}

impl AgentFleet {
    /// Starts the gateway with the plugin (`plugin_config`), the nodes of `specs` (the one at
    /// `market_node` also holds the chain, has 100 MOLT, and is the bridge's market node), and
    /// the bridge; approves the bridge and waits until it sees every node.
    pub fn start(
        node24: String,
        openclaw: String,
        specs: &[NodeSpec],
        market_node: usize,
        plugin_config: Value,
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        // No command allowlist: the plugin's node-invoke policy lets the bridge's commands through.
        let mut gateway = OpenClawGateway::new(node24, openclaw, &dir.path().join("gateway"), &[]);
        gateway.install_plugin(&plugin_path(), plugin_config);
        gateway.start();

        // The bridge's identity first: the nodes give it the operate role.
        let bridge_dir = dir.path().join("bridge");
        let identity = run_with_deadline(
            Command::new(workspace_binary("claw-bridge"))
                .args(["identity", "--data-dir"])
                .arg(&bridge_dir),
            Duration::from_secs(30),
        );
        assert!(identity.status.success());
        let identity: Value =
            serde_json::from_slice(&identity.stdout).expect("claw-bridge identity JSON");
        let bridge_peer = identity["peer_id"].as_str().expect("peer").to_owned();
        let device_id = identity["device_id"].as_str().expect("device").to_owned();

        let clis: Vec<Clawnode> = specs
            .iter()
            .enumerate()
            .map(|(index, spec)| {
                // Two nodes may announce one name (an impostor): each has its own directory.
                let path = dir.path().join(spec.name);
                let path = if specs[..index].iter().any(|s| s.name == spec.name) {
                    dir.path().join(format!("{}-{index}", spec.name))
                } else {
                    path
                };
                let cli = Clawnode::new(&path);
                cli.init_with_simulated_gpus(spec.gpus);
                cli
            })
            .collect();
        let localnet = Localnet::start(&clis[market_node]);
        clis[market_node].ok(&["wallet", "airdrop", "--sol", "5", "--molt", "100"]);
        let nodes = start_nodes(specs, clis, market_node, &localnet, &bridge_peer);

        let token_file = dir.path().join("bridge.token");
        write_secret(&token_file, TOKEN);
        let bridge_args: Vec<std::ffi::OsString> = vec![
            "run".into(),
            "--data-dir".into(),
            bridge_dir.into_os_string(),
            "--gateway".into(),
            gateway.url().into(),
            "--token-file".into(),
            token_file.into_os_string(),
            "--listen".into(),
            "/ip4/127.0.0.1/tcp/0".into(),
            "--allow-colocated-peers".into(),
            "--bootstrap".into(),
            nodes[0].process.listen_addrs[0].clone().into(),
            "--market-node".into(),
            nodes[market_node].process.peer_id.clone().into(),
        ];
        let child = spawn_bridge(&bridge_args, &device_id);
        let fleet = Self {
            bridge: child,
            bridge_args,
            nodes,
            gateway,
            device_id,
            localnet,
            dir,
        };

        let request = eventually(
            Duration::from_secs(60),
            "the bridge's pending surface",
            || {
                let pending = fleet.gateway.cli_json(&["nodes", "pending", "--json"])?;
                pending.as_array()?.iter().find_map(|p| {
                    (p["nodeId"] == fleet.device_id.as_str())
                        .then(|| p["requestId"].as_str().map(str::to_owned))
                        .flatten()
                })
            },
        );
        assert!(
            fleet
                .gateway
                .cli(&["nodes", "approve", &request])
                .status
                .success()
        );
        let expected = specs.len();
        eventually(
            Duration::from_secs(60),
            "every node in fleet.status",
            || {
                let status = fleet.call("fleet.status", &json!({})).ok()?;
                (status["node_count"] == expected).then_some(())
            },
        );
        fleet
    }

    /// Kills the bridge (`kill -9`) and starts it again on the same data directory; waits until
    /// it is back in the gateway and sees every node.
    pub fn restart_bridge(&mut self) {
        self.restart_bridge_with(&[], None);
    }

    /// [`AgentFleet::restart_bridge`] with `extra` arguments, waiting with `api_key` in the
    /// params when one is given.
    pub fn restart_bridge_with(&mut self, extra: &[&str], api_key: Option<&str>) {
        let expected = self.nodes.len();
        self.restart_bridge_seeing(extra, api_key, expected);
    }

    /// [`AgentFleet::restart_bridge_with`], waiting until the bridge's fleet has `expected`
    /// nodes (fewer than started, where it presents members only).
    pub fn restart_bridge_seeing(
        &mut self,
        extra: &[&str],
        api_key: Option<&str>,
        expected: usize,
    ) {
        let _ = self.bridge.kill();
        let _ = self.bridge.wait();
        let mut args = self.bridge_args.clone();
        args.extend(extra.iter().map(std::ffi::OsString::from));
        self.bridge = spawn_bridge(&args, &self.device_id);
        let params = api_key.map_or_else(|| json!({}), |key| json!({"api_key": key}));
        eventually(
            Duration::from_secs(60),
            "every node in the restarted bridge's fleet.status",
            || {
                let status = self.call("fleet.status", &params).ok()?;
                (status["node_count"] == expected).then_some(())
            },
        );
    }

    /// A bridge command through `openclaw nodes invoke`: its payload, or the CLI's error text.
    pub fn call(&self, command: &str, params: &Value) -> Result<Value, String> {
        let output = self
            .gateway
            .invoke(&self.device_id, command, &params.to_string());
        if output.status.success() {
            let answer: Value =
                serde_json::from_slice(&output.stdout).map_err(|e| e.to_string())?;
            Ok(answer["payload"].clone())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }

    /// An agent tool through the gateway: the text the agent reads, and the details.
    pub fn tool(&self, tool: &str, args: Value) -> (String, Value) {
        let answer = self.gateway.tool(tool, args);
        assert_eq!(answer["ok"], true, "{tool}: {answer}");
        let text = answer["result"]["content"][0]["text"]
            .as_str()
            .unwrap_or_else(|| panic!("{tool} answered no text: {answer}"))
            .to_owned();
        (text, answer["result"]["details"].clone())
    }

    /// The node named `name`.
    pub fn node(&self, name: &str) -> &FleetNode {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name} in the fleet"))
    }

    /// The containers Docker runs for the node named `name` (running ones only).
    pub fn running_containers(&self, name: &str) -> Vec<String> {
        node_containers(&self.node(name).process.peer_id, false)
    }
}

impl Drop for AgentFleet {
    fn drop(&mut self) {
        let _ = self.bridge.kill();
        let _ = self.bridge.wait();
        for node in &self.nodes {
            remove_node_containers(&node.process.peer_id);
        }
    }
}

/// The OpenClaw plugin's folder.
pub fn plugin_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugin/openclaw-clawbernetes")
}

/// Writes `text` to `path`, readable by its owner only.
pub fn write_secret(path: &Path, text: &str) {
    std::fs::write(path, text).expect("secret file");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("0600");
    }
}

/// Starts `claw-bridge` with `args` and checks its first line names `device_id`.
fn spawn_bridge(args: &[std::ffi::OsString], device_id: &str) -> Child {
    let mut child = Command::new(workspace_binary("claw-bridge"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("claw-bridge run");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the bridge's first line");
    let started: Value = serde_json::from_str(&line).expect("bridge JSON");
    assert_eq!(started["device_id"], device_id);
    child
}
