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
//! to a NAT'd buyer, with the chain and the arbiter (the relay) on the public host: the buyer
//! reaches its leased container's port through the mesh, the lease settles on chain and the
//! provider is paid. A service whose endpoint runs on a provider behind a symmetric NAT is
//! reached by an operator's `service.forward` through the relay, and refused to a plain member.
//!
//! A provider's containers run on a Docker Engine of its own, started in its namespace: behind
//! its NAT, as in life, reached from its node only, with its firewall rules in that namespace.

use std::process::Command;
use std::time::{Duration, Instant};

use claw_tests::nat_nodes::{
    InternetMarket, configure, listen, member, node_on as node, peer_id, relay_settings, use_engine,
};
use claw_tests::{
    Clawnode, HostEngine, Internet, Link, MarketNode, NetHost, RunningNode, SIMULATED_MODEL,
    eventually, made_or_skip, namespace_or_skip, node_containers, required_part, units,
};
use serde_json::json;

const LINK: Link = Link {
    delay_ms: 20,
    loss_percent: 0.5,
};

/// A leased workload: an HTTP server on port 8080 that answers `leased`.
const LEASED_SERVER: &str = "mkdir -p /tmp/www && echo leased > /tmp/www/index.html && \
     trap 'exit 0' TERM; httpd -f -p 8080 -h /tmp/www & wait";

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
    // The relay is the fleet's arbiter too, and the chain runs on its host.
    let InternetMarket {
        buyer: buyer_cli,
        localnet,
        chain,
        arbiter,
    } = InternetMarket::start(
        dir.path(),
        &b_host,
        &relay_host,
        &relay_settings(&relay_host),
    );
    let seed = vec![format!(
        "/ip4/{}/tcp/4001/p2p/{}",
        relay_host.address, arbiter.node.peer_id
    )];

    // The provider's Docker Engine sits behind its NAT too, with the tenant firewall (iptables,
    // in Docker's DOCKER-USER chain) in the provider's namespace.
    let Some(engine) = made_or_skip(
        "a Docker Engine in a namespace",
        HostEngine::start(&a_host, &[&image]),
    ) else {
        return;
    };
    let provider_cli = MarketNode::init(
        Clawnode::in_namespace(&dir.path().join("provider"), &a_host.namespace),
        1,
    );
    use_engine(&provider_cli, &engine);
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
    let provider_before = units(&provider.molt());

    let leased = buyer.ok(
        "market.bid",
        &json!({
            "models": [SIMULATED_MODEL], "gpus": 1, "hours": 1, "max_price": "2",
            "accept_simulated": true,
            "workload": {"image": image, "command": ["sh", "-c", LEASED_SERVER]},
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
    // The buyer reaches its container's port through the mesh; the provider published nothing.
    let forward = buyer.ok("service.forward", &json!({"lease": lease, "port": 8080}));
    let forwarded = forward["listen"].as_str().expect("listen").to_owned();
    let page = eventually(
        Duration::from_secs(60),
        "the leased container's page through the forward",
        || fetch_in(&b_host, &forwarded),
    );
    assert_eq!(page, "leased");
    let firewall = Command::new("ip")
        .args(["netns", "exec", &a_host.namespace, "iptables", "-w", "-S"])
        .output()
        .expect("iptables in the provider's namespace");
    let firewall = String::from_utf8_lossy(&firewall.stdout);
    assert!(
        firewall.contains(&format!("clawbernetes:{}:", provider.peer_id)),
        "the tenant firewall is in the provider's namespace: {firewall}"
    );
    let containers = engine.docker(&["ps", "--quiet"]).expect("docker ps");
    assert_eq!(containers.lines().count(), 1, "{containers}");
    let ports = engine
        .docker(&["port", containers.trim()])
        .expect("docker port");
    assert!(ports.is_empty(), "nothing published: {ports}");
    std::thread::sleep(Duration::from_secs(2));
    buyer.cancel_and_see_paid(&lease, &provider, provider_before, Duration::from_secs(30));
    drop((buyer, provider, arbiter, localnet));
    drop(engine);
    drop(internet);
}

/// The body of a 200 answer to `GET /` from `listen` (a loopback `address:port` in `host`'s
/// namespace), or `None` when none comes within 15 s.
fn fetch_in(host: &NetHost, listen: &str) -> Option<String> {
    let script = format!(
        "exec 3<>/dev/tcp/{} && printf 'GET / HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n' >&3 && cat <&3",
        listen.replace(':', "/")
    );
    let output = Command::new("ip")
        .args([
            "netns",
            "exec",
            &host.namespace,
            "timeout",
            "15",
            "bash",
            "-c",
        ])
        .arg(script)
        .output()
        .ok()?;
    let answer = String::from_utf8_lossy(&output.stdout);
    let (head, body) = answer.split_once("\r\n\r\n")?;
    (head.split(' ').nth(1) == Some("200")).then(|| body.trim().to_owned())
}

/// The `direction` traffic of service `web` in `node`'s `network.status`.
fn web_traffic(node: &Clawnode, direction: &str) -> Option<serde_json::Value> {
    let status = node.invoke(None, "network.status", &json!({})).ok()?;
    status["traffic"]
        .as_array()?
        .iter()
        .find(|t| t["target"] == "service/web" && t["direction"] == direction)
        .cloned()
}

/// A service's endpoint on a provider behind a symmetric NAT, in a container of the provider's
/// own Docker Engine (behind the same NAT, as in life), is reached by an operator behind another
/// NAT through `service.forward`: a loopback port on the operator's host whose connections are
/// libp2p streams to the provider through the relay (hole punching cannot work through the
/// symmetric NAT), with nothing opened on the provider. The relay, a member without the operate
/// role on the provider, forwards with only its own key and is refused there.
#[test]
fn a_service_behind_nat_is_reached_by_an_operator_through_a_relayed_forward() {
    let Some(image) = required_part(
        "CLAW_TEST_IMAGE",
        "the Docker Engine and the local busybox test image",
    ) else {
        return;
    };
    let Some(mut internet) = namespace_or_skip(Internet::create()) else {
        return;
    };
    let relay_host = internet
        .public_host("relay", Link::default())
        .expect("relay host");
    let provider_host = internet
        .host_behind_symmetric_nat("p", LINK)
        .expect("provider host");
    let operator_host = internet.host_behind_nat("o", LINK).expect("operator host");
    let started = Instant::now();
    let Some(engine) = made_or_skip(
        "a Docker Engine in a namespace",
        HostEngine::start(&provider_host, &[&image]),
    ) else {
        return;
    };
    eprintln!(
        "the provider's engine answered after {:?}",
        started.elapsed()
    );
    let started = Instant::now();

    let dir = tempfile::tempdir().expect("temp dir");
    let relay = node(
        dir.path(),
        "relay",
        &relay_host,
        &relay_settings(&relay_host),
    );
    let provider = node(dir.path(), "provider", &provider_host, &[]);
    let operator = node(dir.path(), "operator", &operator_host, &[]);
    use_engine(&provider, &engine);
    let operator_id = peer_id(&operator);
    for member in [&relay, &provider, &operator] {
        member.ok(&["configure", "--operator", &operator_id]);
    }
    let relay_run = RunningNode::start_listening(&relay, &listen(), &[]);
    let seed = vec![format!(
        "/ip4/{}/tcp/4001/p2p/{}",
        relay_host.address, relay_run.peer_id
    )];
    let provider_run = RunningNode::start_listening(&provider, &listen(), &seed);
    let operator_run = RunningNode::start_listening(&operator, &listen(), &seed);
    let provider_id = provider_run.peer_id.clone();
    assert!(!tcp_opens(
        &operator_host,
        &provider_host.public_address,
        4001
    ));
    eventually(
        Duration::from_secs(90),
        "the provider announced as reachable through the relay",
        || member(&operator, &provider_id).filter(|m| m["reachability"] == "relayed"),
    );

    // The operator starts the server on the provider, over the mesh; it lands on the provider's
    // own engine, and nothing is published.
    let script = "mkdir -p /www && echo from-behind-nat > /www/index.html && \
                  exec httpd -f -p 8080 -h /www";
    let run = operator
        .invoke(
            Some(&provider_id),
            "workload.run",
            &json!({"image": image, "command": ["sh", "-c", script], "labels": {"app": "web"}}),
        )
        .expect("workload.run on the provider");
    assert!(run["id"].is_string(), "{run}");
    let containers = engine.docker(&["ps", "--quiet"]).expect("docker ps");
    assert_eq!(containers.lines().count(), 1, "{containers}");
    assert!(
        node_containers(&provider_id, true).is_empty(),
        "nothing on this machine's own engine"
    );
    let ports = engine
        .docker(&["port", containers.trim()])
        .expect("docker port");
    assert!(ports.is_empty(), "nothing published: {ports}");

    operator
        .invoke(
            None,
            "service.create",
            &json!({"name": "web", "spec": {"selector": {"app": "web"}, "port": 8080}}),
        )
        .expect("service.create");
    // Each member keeps the service, and the provider lists its endpoint to both.
    for viewer in [&operator, &relay] {
        eventually(
            Duration::from_secs(60),
            "the service kept, and the provider's endpoint listed",
            || {
                let kept = viewer.invoke(None, "service.list", &json!({})).ok()?;
                let listed = viewer
                    .invoke(
                        Some(&provider_id),
                        "service.endpoints",
                        &json!({"name": "web"}),
                    )
                    .ok()?;
                (kept["services"][0]["name"] == "web"
                    && listed["endpoints"][0]["node"] == provider_id)
                    .then_some(())
            },
        );
    }

    // Through the forward, from the operator's host: the container's page.
    let forward = operator
        .invoke(None, "service.forward", &json!({"service": "web"}))
        .expect("service.forward");
    let listen = forward["listen"].as_str().expect("listen").to_owned();
    assert!(listen.starts_with("127.0.0.1:"), "{listen}");
    let page = eventually(
        Duration::from_secs(60),
        "the page through the forward",
        || fetch_in(&operator_host, &listen),
    );
    assert_eq!(page, "from-behind-nat");
    for _ in 0..3 {
        assert_eq!(
            fetch_in(&operator_host, &listen).as_deref(),
            Some("from-behind-nat")
        );
    }
    // Still through the relay: the symmetric NAT leaves hole punching nothing to work with.
    let seen = member(&operator, &provider_id).expect("the provider in the operator's view");
    assert_eq!(seen["path"], "relayed", "{seen}");
    assert_eq!(seen["reachability"], "relayed", "{seen}");
    let table = operator.ok(&["fleet"]).stdout;
    assert!(table.contains("relayed"), "{table}");
    let out = web_traffic(&operator, "out").expect("outbound traffic");
    assert!(out["connections"].as_u64() >= Some(4), "{out}");
    assert!(out["bytes_from_workload"].as_u64() > Some(0), "{out}");
    let served = eventually(
        Duration::from_secs(10),
        "the provider's inbound traffic",
        || web_traffic(&provider, "in").filter(|t| t["connections"].as_u64() >= Some(4)),
    );

    // The relay, a plain member, with only its own key: the provider refuses its streams.
    let refused = relay
        .invoke(None, "service.forward", &json!({"service": "web"}))
        .expect("a forward on a plain member");
    let refused_listen = refused["listen"].as_str().expect("listen").to_owned();
    for _ in 0..3 {
        assert_eq!(
            fetch_in(&relay_host, &refused_listen),
            None,
            "the provider let a plain member in"
        );
    }
    assert_eq!(
        web_traffic(&provider, "in").map(|t| t["connections"].clone()),
        Some(served["connections"].clone()),
        "a refused stream carries nothing"
    );
    // The operator still gets through.
    assert_eq!(
        fetch_in(&operator_host, &listen).as_deref(),
        Some("from-behind-nat")
    );
    eprintln!(
        "served through the relay, all checked {:?} after the nodes' start",
        started.elapsed()
    );

    drop((operator_run, provider_run, relay_run));
    drop(engine);
    drop(internet);
}
