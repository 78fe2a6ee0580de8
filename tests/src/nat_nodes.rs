//! `clawnode` processes on the hosts of an [`Internet`](crate::Internet): set up to find out
//! their reachability on it, to relay for others, to run workloads on an engine of their host's
//! own, and read back through a viewer's fleet view.
//! Shared by the NAT traversal tests and the reachability benchmark.

use serde_json::Value;

use crate::{Clawnode, HostEngine, NetHost, announce_every_second};

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
