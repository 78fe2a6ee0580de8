//! `clawnode` processes on the hosts of an [`Internet`](crate::Internet): set up to find out
//! their reachability on it, to relay for others, to run workloads on an engine of their host's
//! own, and read back through a viewer's fleet view.
//! Shared by the NAT traversal tests and the reachability benchmark.

use serde_json::Value;

use crate::{Arbiter, Clawnode, HostEngine, Localnet, MarketNode, NetHost, announce_every_second};

/// What a node on the internet listens on: TCP and QUIC on port 4001 of every address.
pub fn listen() -> Vec<String> {
    vec![
        "/ip4/0.0.0.0/tcp/4001".to_owned(),
        "/ip4/0.0.0.0/udp/4001/quic-v1".to_owned(),
    ]
}

/// A node named `name` under `root`, in `host`'s namespace, with one simulated GPU, set up by
/// [`configure`].
pub fn node_on(
    root: &std::path::Path,
    name: &str,
    host: &NetHost,
    mesh: &[(&str, String)],
) -> Clawnode {
    let node = Clawnode::in_namespace(&root.join(name), &host.namespace);
    node.ok(&["init", "--simulated-gpu", "NVIDIA L4:1:23034"]);
    configure(&node, mesh);
    node
}

/// Announcing every second, taking private addresses as reachable in its NAT probes (the
/// internet's public side is 10.77.0.0/24), with the `[mesh]` settings `mesh`.
pub fn configure(node: &Clawnode, mesh: &[(&str, String)]) {
    announce_every_second(node);
    node.edit_config(|text| {
        let mut text = text.replace(
            "nat_probe_private_addresses = false",
            "nat_probe_private_addresses = true",
        );
        for (key, value) in mesh {
            let line = text
                .lines()
                .find(|l| l.starts_with(&format!("{key} = ")))
                .unwrap_or_else(|| panic!("init writes mesh.{key}"))
                .to_owned();
            text = text.replace(&line, &format!("{key} = {value}"));
        }
        text
    });
}

/// A relay's settings: it serves as one, at its public address on `host`.
pub fn relay_settings(host: &NetHost) -> [(&'static str, String); 2] {
    [
        ("relay_server", "true".into()),
        (
            "external_addrs",
            format!("[\"/ip4/{}/tcp/4001\"]", host.address),
        ),
    ]
}

/// `peer` as `viewer`'s `clawnode fleet --json` lists it.
pub fn member(viewer: &Clawnode, peer: &str) -> Option<Value> {
    let finished = viewer.run(&["fleet", "--json"]);
    if !finished.success {
        return None;
    }
    finished.json()["members"]
        .as_array()?
        .iter()
        .find(|m| m["peer_id"] == peer)
        .cloned()
}

/// Points `node` at `engine`, a Docker Engine in its host's namespace, for its workloads.
pub fn use_engine(node: &Clawnode, engine: &HostEngine) {
    node.edit_config(|text| {
        assert!(text.contains("[workloads]\n"), "init writes [workloads]");
        text.replacen(
            "[workloads]\n",
            &format!("[workloads]\ndocker_socket = {:?}\n", engine.socket()),
            1,
        )
    });
}

/// `node`'s peer id.
pub fn peer_id(node: &Clawnode) -> String {
    node.ok(&["--json", "identity"]).json()["peer_id"]
        .as_str()
        .expect("a peer id")
        .to_owned()
}

/// A market on an [`Internet`](crate::Internet): a buyer's node, the chain and the arbiter.
#[derive(Debug)]
pub struct InternetMarket {
    /// The buyer's CLI (its node not started), on its host; its data directory holds the
    /// chain's faucet.
    pub buyer: Clawnode,
    /// The embedded chain, serving at port 8899 of the arbiter's host.
    pub localnet: Localnet,
    /// The `[chain]` lines for nodes that settle on it.
    pub chain: String,
    /// The arbiter, running and listening on its host.
    pub arbiter: Arbiter,
}

impl InternetMarket {
    /// The buyer's node under `root` on `buyer_host`; the chain and the arbiter (whose `[mesh]`
    /// settings are `arbiter_mesh`) on the public `arbiter_host`.
    pub fn start(
        root: &std::path::Path,
        buyer_host: &NetHost,
        arbiter_host: &NetHost,
        arbiter_mesh: &[(&str, String)],
    ) -> Self {
        let buyer = MarketNode::init(
            Clawnode::in_namespace(&root.join("buyer"), &buyer_host.namespace),
            0,
        );
        buyer.configure_market("", "");
        let localnet = Localnet::start_at(
            &Clawnode::in_namespace(&root.join("buyer"), &arbiter_host.namespace),
            &arbiter_host.address,
        );
        let chain = localnet.chain_config();
        let arbiter_cli = MarketNode::init(
            Clawnode::in_namespace(&root.join("arbiter"), &arbiter_host.namespace),
            0,
        );
        arbiter_cli.configure_market("arbitrate = true\n", &chain);
        configure(&arbiter_cli, arbiter_mesh);
        let wallet = arbiter_cli
            .ok(&["wallet", "address"])
            .stdout
            .trim()
            .to_owned();
        let arbiter = Arbiter {
            node: MarketNode::start_listening(arbiter_cli, &listen(), &[]),
            wallet,
        };
        Self {
            buyer,
            localnet,
            chain,
            arbiter,
        }
    }

    /// The arbiter's address on its host, to join through.
    pub fn arbiter_seed(&self, arbiter_host: &NetHost) -> String {
        format!(
            "/ip4/{}/tcp/4001/p2p/{}",
            arbiter_host.address, self.arbiter.node.peer_id
        )
    }
}
