//! A fleet of twelve hosts on an internet this test builds from network namespaces, every link
//! with 20 ms of delay and 0.5 % loss each way: 40 ms round trips, about 1 % of them losing a
//! packet (loss only, from iptables, where the kernel has no netem; the test says so). The hosts:
//! a relay, one for the chain and the arbiter, seven more public hosts, a provider and a buyer
//! each behind its own NAT router, and one node behind a symmetric NAT. Separate `clawnode run`
//! processes; the provider runs containers on a Docker Engine of its own host's.
//!
//! The fleet converges. The buyer leases from the provider across both NATs; the container runs;
//! hole punching gives the two a direct connection, and then the relay is killed: the lease goes
//! on over the direct connection and settles on chain, the provider paid. Then the fleet is cut
//! in two halves (every packet between them dropped): each half's view loses the other, and once
//! the cut heals every view holds every node again.

use std::time::{Duration, Instant};

use claw_tests::nat_nodes::{
    InternetMarket, configure, listen, member, relay_settings, use_engine,
};
use claw_tests::{
    Clawnode, HostEngine, Internet, Link, MarketNode, NetHost, SIMULATED_MODEL, eventually,
    made_or_skip, namespace_or_skip, required_part, units,
};
use serde_json::json;

const LINK: Link = Link {
    delay_ms: 20,
    loss_percent: 0.5,
};
/// Public hosts besides the relay and the chain's.
const PLAIN: usize = 7;

/// The peers `viewer` lists in its fleet view.
fn view(viewer: &Clawnode) -> Vec<String> {
    let finished = viewer.run(&["fleet", "--json"]);
    if !finished.success {
        return Vec::new();
    }
    finished.json()["members"]
        .as_array()
        .map(|members| {
            members
                .iter()
                .filter_map(|m| m["peer_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn twelve_hosts_on_a_lossy_wan_lease_across_nats_outlive_the_relay_and_heal_a_partition() {
    let Some(image) = required_part(
        "CLAW_TEST_IMAGE",
        "the Docker Engine and the local busybox test image",
    ) else {
        return;
    };
    let Some(mut internet) = namespace_or_skip(Internet::create()) else {
        return;
    };
    let relay_host = internet.public_host("relay", LINK).expect("relay host");
    let chain_host = internet.public_host("chain", LINK).expect("chain host");
    let plain_hosts: Vec<NetHost> = (0..PLAIN)
        .map(|i| {
            internet
                .public_host(&format!("p{i}"), LINK)
                .expect("public host")
        })
        .collect();
    let provider_host = internet.host_behind_nat("prov", LINK).expect("provider");
    let buyer_host = internet.host_behind_nat("buyer", LINK).expect("buyer");
    let hidden_host = internet
        .host_behind_symmetric_nat("hidden", LINK)
        .expect("symmetric NAT host");
    let Some(engine) = made_or_skip(
        "a Docker Engine in the provider's namespace",
        HostEngine::start(&provider_host, &[&image]),
    ) else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let started = Instant::now();

    // The chain and the arbiter on their public host.
    let InternetMarket {
        buyer: buyer_cli,
        localnet,
        chain,
        arbiter,
    } = InternetMarket::start(dir.path(), &buyer_host, &chain_host, &[]);

    // The relay, and every other node joining through the relay and the chain's host.
    let relay_cli = MarketNode::init(
        Clawnode::in_namespace(&dir.path().join("relay"), &relay_host.namespace),
        0,
    );
    configure(&relay_cli, &relay_settings(&relay_host));
    let mut relay = MarketNode::start_listening(relay_cli, &listen(), &[]);
    let seed = vec![
        format!("/ip4/{}/tcp/4001/p2p/{}", relay_host.address, relay.peer_id),
        format!(
            "/ip4/{}/tcp/4001/p2p/{}",
            chain_host.address, arbiter.node.peer_id
        ),
    ];
    let mut plain = Vec::new();
    for (i, host) in plain_hosts.iter().enumerate() {
        let cli = MarketNode::init(
            Clawnode::in_namespace(&dir.path().join(format!("p{i}")), &host.namespace),
            0,
        );
        configure(&cli, &[]);
        plain.push(MarketNode::start_listening(cli, &listen(), &seed));
    }
    let hidden_cli = MarketNode::init(
        Clawnode::in_namespace(&dir.path().join("hidden"), &hidden_host.namespace),
        0,
    );
    configure(&hidden_cli, &[]);
    let hidden = MarketNode::start_listening(hidden_cli, &listen(), &seed);
    let provider_cli = MarketNode::init(
        Clawnode::in_namespace(&dir.path().join("provider"), &provider_host.namespace),
        1,
    );
    provider_cli.configure_market(
        &arbiter.market_config("price_per_gpu_hour = \"2\"\n"),
        &chain,
    );
    configure(&provider_cli, &[]);
    use_engine(&provider_cli, &engine);
    let provider = MarketNode::start_listening(provider_cli, &listen(), &seed);
    buyer_cli.configure_market(&arbiter.market_config(""), "");
    configure(&buyer_cli, &[]);
    buyer_cli.ok(&["wallet", "airdrop", "--sol", "5", "--molt", "100"]);
    let buyer = MarketNode::start_listening(buyer_cli, &listen(), &seed);

    // Every node sees all twelve.
    // Every node but the relay, which is killed later.
    let remaining: Vec<&MarketNode> = [&arbiter.node, &hidden, &provider, &buyer]
        .into_iter()
        .chain(plain.iter())
        .collect();
    let remaining_ids: Vec<String> = remaining.iter().map(|n| n.peer_id.clone()).collect();
    let ids: Vec<String> = remaining_ids
        .iter()
        .cloned()
        .chain([relay.peer_id.clone()])
        .collect();
    assert_eq!(ids.len(), 12);
    eventually(Duration::from_secs(120), "all twelve in every view", || {
        remaining
            .iter()
            .map(|node| &node.cli)
            .chain([&relay.cli])
            .all(|cli| {
                let seen = view(cli);
                ids.iter().all(|id| seen.contains(id))
            })
            .then_some(())
    });
    eprintln!("twelve hosts converged after {:?}", started.elapsed());

    // The buyer behind one NAT leases from the provider behind another.
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
    let provider_before = units(&provider.molt());
    let leased = buyer.ok(
        "market.bid",
        &json!({
            "models": [SIMULATED_MODEL], "gpus": 1, "hours": 1, "max_price": "2",
            "accept_simulated": true,
            "workload": {"image": image, "command": ["sh", "-c", "trap 'exit 0' TERM; sleep 600 & wait"]},
        }),
    );
    assert_eq!(leased["lease"]["state"], "running", "{leased}");
    let lease = leased["lease"]["lease_id"]
        .as_str()
        .expect("lease id")
        .to_owned();
    let running = engine
        .docker(&["ps", "--quiet", "--filter", "status=running"])
        .expect("docker ps on the provider's engine");
    assert!(
        !running.is_empty(),
        "the lease's container runs on the provider's engine"
    );

    // Hole punching gives the two a direct connection; then the relay dies.
    eventually(
        Duration::from_secs(90),
        "a direct connection from the buyer to the provider",
        || {
            let _ = buyer.invoke_on(Some(&provider.peer_id), "node.health", &json!({}));
            member(&buyer.cli, &provider.peer_id).filter(|m| m["path"] == "direct")
        },
    );
    relay.kill();
    eprintln!("relay killed mid-lease after {:?}", started.elapsed());
    for _ in 0..5 {
        let health = buyer
            .invoke_on(Some(&provider.peer_id), "node.health", &json!({}))
            .expect("the provider answers over the direct connection");
        assert!(health.is_object(), "{health}");
        std::thread::sleep(Duration::from_secs(1));
    }
    let still = member(&buyer.cli, &provider.peer_id).expect("the provider in view");
    assert_eq!(still["path"], "direct", "{still}");
    buyer.cancel_and_see_paid(&lease, &provider, provider_before, Duration::from_secs(60));

    // A partition: the chain's host, three plain hosts and the buyer on one side; the rest on
    // the other. Every packet between the halves is dropped on the first half's hosts.
    let mut first: Vec<(&NetHost, &MarketNode)> =
        vec![(&chain_host, &arbiter.node), (&buyer_host, &buyer)];
    first.extend(plain_hosts.iter().zip(plain.iter()).take(3));
    let mut second: Vec<(&NetHost, &MarketNode)> =
        vec![(&provider_host, &provider), (&hidden_host, &hidden)];
    second.extend(plain_hosts.iter().zip(plain.iter()).skip(3));
    assert_eq!(first.len() + second.len(), remaining.len());
    let far: Vec<String> = second
        .iter()
        .flat_map(|(host, _)| [host.public_address.clone(), host.address.clone()])
        .collect();
    for (host, _) in &first {
        host.cut_off(&far, true).expect("the cut");
    }
    let split = Instant::now();
    eventually(
        Duration::from_secs(90),
        "each half's views lose the other half",
        || {
            let apart = |side: &[(&NetHost, &MarketNode)], other: &[(&NetHost, &MarketNode)]| {
                side.iter().all(|(_, node)| {
                    let seen = view(&node.cli);
                    other.iter().all(|(_, o)| !seen.contains(&o.peer_id))
                })
            };
            (apart(&first, &second) && apart(&second, &first)).then_some(())
        },
    );
    eprintln!("the halves lost each other after {:?}", split.elapsed());
    for (host, _) in &first {
        host.cut_off(&far, false).expect("the cut healed");
    }
    let healed = Instant::now();
    eventually(Duration::from_secs(120), "every view whole again", || {
        remaining
            .iter()
            .all(|node| {
                let seen = view(&node.cli);
                remaining_ids.iter().all(|id| seen.contains(id))
            })
            .then_some(())
    });
    eprintln!(
        "views converged {:?} after the cut healed",
        healed.elapsed()
    );

    drop((
        buyer, provider, hidden, plain, relay, arbiter, localnet, engine,
    ));
    drop(internet);
}
