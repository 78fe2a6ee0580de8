//! Nodes on a small internet this test builds from network namespaces: a public relay, and two
//! providers each behind its own NAT router (masquerade, nothing let in that they did not ask
//! for), with 20 ms of delay and 0.5 % loss on their links (loss only, where the kernel has no
//! netem). Separate `clawnode run` processes.
//!
//! The NAT'd nodes find out they cannot be dialled (AutoNAT), listen through the relay they
//! joined by, and announce the relayed address; the relay is found public. One NAT'd node asks
//! the other for its GPUs through the relay, and hole punching (DCUtR) then gives the two a
//! direct connection across both NATs. A third node sits behind a symmetric NAT, where hole
//! punching cannot work: it stays relayed, and is still reached. A NAT'd provider sells a lease
//! to a NAT'd buyer, on the real Docker Engine, with the chain and the arbiter (the relay) on the
//! public host; it settles on chain and the provider is paid.

use std::process::Command;
use std::time::{Duration, Instant};

use claw_tests::nat_nodes::{configure, listen, member, node_on as node, relay_settings};
use claw_tests::{
    Arbiter, Clawnode, Internet, Link, Localnet, MarketNode, NetHost, RunningNode, SIMULATED_MODEL,
    eventually, namespace_or_skip, required_part, units,
};
use serde_json::json;

const LINK: Link = Link {
    delay_ms: 20,
    loss_percent: 0.5,
};

/// Whether a TCP connection from `from` to `address:port` opens within 3 s.
fn tcp_opens(from: &NetHost, address: &str, port: u16) -> bool {
    Command::new("ip")
        .args([
            "netns",
            "exec",
            &from.namespace,
            "timeout",
            "3",
            "bash",
            "-c",
        ])
        .arg(format!("echo > /dev/tcp/{address}/{port}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

/// An internet with a public relay host and two hosts behind NAT, or `None` (said, and a
/// failure under `CLAW_TEST_STRICT`) where this machine cannot make namespaces.
fn internet() -> Option<(Internet, NetHost, NetHost, NetHost)> {
    let mut internet = namespace_or_skip(Internet::create())?;
    let relay = internet
        .public_host("relay", Link::default())
        .expect("relay host");
    let a = internet.host_behind_nat("a", LINK).expect("host a");
    let b = internet.host_behind_nat("b", LINK).expect("host b");
    Some((internet, relay, a, b))
}

#[test]
fn nodes_behind_nat_are_reached_through_a_relay_and_then_directly() {
    let Some((mut internet, relay_host, a_host, b_host)) = internet() else {
        return;
    };
    let c_host = internet
        .host_behind_symmetric_nat("c", LINK)
        .expect("host c");
    let dir = tempfile::tempdir().expect("temp dir");
    let relay = node(
        dir.path(),
        "relay",
        &relay_host,
        &relay_settings(&relay_host),
    );
    let a = node(dir.path(), "a", &a_host, &[]);
    let b = node(dir.path(), "b", &b_host, &[]);
    let c = node(dir.path(), "c", &c_host, &[]);

    let relay_run = RunningNode::start_listening(&relay, &listen(), &[]);
    let seed = vec![format!(
        "/ip4/{}/tcp/4001/p2p/{}",
        relay_host.address, relay_run.peer_id
    )];
    let a_run = RunningNode::start_listening(&a, &listen(), &seed);
    let b_run = RunningNode::start_listening(&b, &listen(), &seed);
    let c_run = RunningNode::start_listening(&c, &listen(), &seed);

    // The NATs are real: nothing on the internet reaches a NAT'd node's port, while the relay's
    // is open to everyone.
    assert!(tcp_opens(&a_host, &relay_host.address, 4001));
    assert!(!tcp_opens(&relay_host, &a_host.public_address, 4001));
    assert!(!tcp_opens(&relay_host, &a_host.address, 4001));
    assert!(!tcp_opens(&b_host, &a_host.public_address, 4001));

    let started = Instant::now();
    let circuit = format!("/p2p/{}/p2p-circuit", relay_run.peer_id);
    for (viewer, target) in [(&b, &a_run), (&a, &b_run), (&b, &c_run)] {
        let seen = eventually(
            Duration::from_secs(90),
            "the NAT'd node announced as reachable through the relay",
            || member(viewer, &target.peer_id).filter(|m| m["reachability"] == "relayed"),
        );
        let addrs = seen["listen_addrs"].as_array().expect("addresses");
        assert!(
            addrs
                .iter()
                .any(|a| a.as_str().is_some_and(|a| a.contains(&circuit))),
            "a relayed address through the relay is announced: {addrs:?}"
        );
    }
    eprintln!("the NAT'd nodes relayed after {:?}", started.elapsed());
    eventually(
        Duration::from_secs(90),
        "the relay found public by AutoNAT",
        || member(&a, &relay_run.peer_id).filter(|m| m["reachability"] == "public"),
    );

    // b asks a for its GPUs over the mesh: the only way in is through the relay.
    let gpus = b
        .invoke(Some(&a_run.peer_id), "gpu.list", &json!({}))
        .expect("gpu.list on the NAT'd node");
    let listed = gpus.to_string();
    assert!(listed.contains("NVIDIA L4"), "{listed}");
    assert!(listed.contains("simulated"), "{listed}");

    // Hole punching turns b's connection to a into a direct one, across both NATs.
    let punched = Instant::now();
    eventually(
        Duration::from_secs(60),
        "a direct connection from b to a",
        || {
            // Keep the connection in use while waiting.
            let _ = b.invoke(Some(&a_run.peer_id), "node.health", &json!({}));
            member(&b, &a_run.peer_id).filter(|m| m["path"] == "direct")
        },
    );
    eprintln!("hole punched after {:?}", punched.elapsed());
    // Behind the symmetric NAT, punching fails: b reaches c through the relay, and stays
    // relayed.
    for _ in 0..3 {
        let gpus = b
            .invoke(Some(&c_run.peer_id), "gpu.list", &json!({}))
            .expect("gpu.list through the relay");
        assert!(gpus.to_string().contains("NVIDIA L4"), "{gpus}");
        std::thread::sleep(Duration::from_secs(2));
    }
    let through = member(&b, &c_run.peer_id).expect("c in b's view");
    assert_eq!(through["path"], "relayed", "{through}");
    let table = b.ok(&["fleet"]).stdout;
    assert!(table.contains("REACHABILITY"), "{table}");
    assert!(table.contains("relayed"), "{table}");
    assert!(table.contains("direct"), "{table}");

    drop((a_run, b_run, c_run, relay_run));
    drop(internet);
}

#[test]
fn a_provider_behind_nat_sells_a_lease_that_settles_on_chain() {
    let Some(image) = required_part(
        "CLAW_TEST_IMAGE",
        "the Docker Engine and the local busybox test image",
    ) else {
        return;
    };
    let Some((internet, relay_host, a_host, b_host)) = internet() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    // The chain runs on the public host, from the buyer's data directory (it holds the faucet).
    let buyer_cli = MarketNode::init(
        Clawnode::in_namespace(&dir.path().join("buyer"), &b_host.namespace),
        0,
    );
    buyer_cli.configure_market("", "");
    let localnet = Localnet::start_at(
        &Clawnode::in_namespace(&dir.path().join("buyer"), &relay_host.namespace),
        &relay_host.address,
    );
    let chain = localnet.chain_config();

    // The relay is the fleet's arbiter too.
    let arbiter_cli = MarketNode::init(
        Clawnode::in_namespace(&dir.path().join("relay"), &relay_host.namespace),
        0,
    );
    arbiter_cli.configure_market("arbitrate = true\n", &chain);
    configure(&arbiter_cli, &relay_settings(&relay_host));
    let wallet = arbiter_cli
        .ok(&["wallet", "address"])
        .stdout
        .trim()
        .to_owned();
    let arbiter = Arbiter {
        node: MarketNode::start_listening(arbiter_cli, &listen(), &[]),
        wallet,
    };
    let seed = vec![format!(
        "/ip4/{}/tcp/4001/p2p/{}",
        relay_host.address, arbiter.node.peer_id
    )];

    // The provider's host network is behind NAT, and so is its Docker Engine's in life; here
    // the engine runs in this machine's own namespace, so the provider's tenant firewall
    // (iptables, in Docker's DOCKER-USER chain) is applied there.
    let tools = dir.path().join("tools");
    std::fs::create_dir_all(&tools).expect("tools dir");
    for program in ["iptables", "iptables-restore"] {
        let shim = tools.join(program);
        let real = ["/usr/sbin", "/sbin", "/usr/bin"]
            .iter()
            .map(|dir| std::path::Path::new(dir).join(program))
            .find(|path| path.exists())
            .unwrap_or_else(|| panic!("{program} is installed"));
        std::fs::write(
            &shim,
            format!(
                "#!/bin/sh\nexec nsenter --net=/proc/{}/ns/net {} \"$@\"\n",
                std::process::id(),
                real.display()
            ),
        )
        .expect("shim");
        std::fs::set_permissions(&shim, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("shim mode");
    }
    let provider_cli = MarketNode::init(
        Clawnode::in_namespace(&dir.path().join("provider"), &a_host.namespace).with_tools(&tools),
        1,
    );
    provider_cli.configure_market(
        &arbiter.market_config("price_per_gpu_hour = \"2\"\n"),
        &chain,
    );
    configure(&provider_cli, &[]);
    let provider = MarketNode::start_listening(provider_cli, &listen(), &seed);
    buyer_cli.configure_market(&arbiter.market_config(""), "");
    configure(&buyer_cli, &[]);
    buyer_cli.ok(&["wallet", "airdrop", "--sol", "5", "--molt", "100"]);
    let buyer = MarketNode::start_listening(buyer_cli, &listen(), &seed);

    eventually(
        Duration::from_secs(90),
        "the provider announced as reachable through the relay",
        || member(&buyer.cli, &provider.peer_id).filter(|m| m["reachability"] == "relayed"),
    );
    eventually(
        Duration::from_secs(60),
        "the NAT'd provider's offer in the buyer's book",
        || {
            let offers = buyer.ok("market.offers", &json!({}));
            (offers["offers"][0]["provider"] == provider.peer_id).then_some(())
        },
    );
    let molt = |node: &MarketNode| {
        let balance = node.cli.ok(&["--json", "wallet", "balance"]).json();
        units(balance["molt"].as_str().expect("a MOLT balance"))
    };
    let provider_before = molt(&provider);

    let leased = buyer.ok(
        "market.bid",
        &json!({
            "models": [SIMULATED_MODEL], "gpus": 1, "hours": 1, "max_price": "2",
            "accept_simulated": true,
            "workload": {"image": image, "command": ["sh", "-c", "trap 'exit 0' TERM; sleep 300 & wait"]},
        }),
    );
    assert_eq!(leased["lease"]["state"], "running", "{leased}");
    assert_eq!(
        leased["lease"]["counterparty"], provider.peer_id,
        "{leased}"
    );
    let lease = leased["lease"]["lease_id"]
        .as_str()
        .expect("lease id")
        .to_owned();
    std::thread::sleep(Duration::from_secs(2));
    let settled = buyer.ok("market.lease.cancel", &json!({"lease_id": lease}));
    assert_eq!(settled["state"], "settled", "{settled}");
    let paid = units(
        settled["to_provider"]
            .as_str()
            .expect("paid to the provider"),
    );
    assert!(paid > 0, "{settled}");
    eventually(
        Duration::from_secs(30),
        "the provider paid on chain what the settlement says",
        || (molt(&provider) == provider_before + paid).then_some(()),
    );
    drop((buyer, provider, arbiter, localnet));
    drop(internet);
}
