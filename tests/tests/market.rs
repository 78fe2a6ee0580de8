//! The MOLT market across separate processes on loopback: the embedded chain (`clawnode
//! localnet`), three providers with simulated GPUs and two buyers, all `clawnode run`, on the
//! real Docker Engine.
//!
//! Offers gossip into every book; a bid leases the cheapest feasible offer, funds the escrow,
//! and runs the container on the provider's reserved GPU; impossible bids are explained; a
//! buyer over budget is refused before anything is signed; two buyers race for the last GPU;
//! provider and buyer are killed mid-lease and restarted, and the lease settles exactly once with
//! exact balances; a workload that never starts is refunded. Rogue in-process peers joined to
//! the same mesh publish forged, expired, replayed and foreign offers, which no book takes.

use std::time::Duration;

use claw_tests::{
    Arbiter, Clawnode, Localnet, MarketNode as Node, eventually, required_part, units,
};
use serde_json::{Value, json};

use claw_tests::SIMULATED_MODEL as MODEL;
/// A workload that runs until stopped, and stops at once on SIGTERM.
const SERVE: [&str; 3] = ["sh", "-c", "trap 'exit 0' TERM; sleep 300 & wait"];
/// The same, answering `leased` over HTTP on port 8080 meanwhile (as the tenant user, from the
/// tenant's writable /tmp).
const SERVE_HTTP: [&str; 3] = [
    "sh",
    "-c",
    "mkdir -p /tmp/www && echo leased > /tmp/www/index.html && trap 'exit 0' TERM; \
     httpd -f -p 8080 -h /tmp/www & wait",
];

fn bid(max_price: &str, gpus: u32, workload: Option<Value>) -> Value {
    json!({
        "models": [MODEL],
        "gpus": gpus,
        "hours": 1,
        "max_price": max_price,
        "accept_simulated": true,
        "workload": workload,
    })
}

#[test]
fn three_providers_two_buyers_leases_run_and_settle_on_chain() {
    let Some(image) = required_part(
        "CLAW_TEST_IMAGE",
        "the Docker Engine and the local busybox test image",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");

    // The chain lives in the first buyer's data directory, which holds the faucet.
    let buyer_cli = Node::init(Clawnode::new(&dir.path().join("buyer")), 0);
    buyer_cli.configure_market("", "");
    let localnet = Localnet::start(&buyer_cli);
    let chain = localnet.chain_config();
    // The arbiter: a node whose wallet is every escrow's third key.
    let arbiter = Arbiter::start(&dir.path().join("arbiter"), &chain);
    let market = |extra: &str| arbiter.market_config(&format!("dispute_after_secs = 2\n{extra}"));
    let arbiter = &arbiter.node;

    // Providers: A 2.0/h × 2 GPUs, B 1.2/h × 1 GPU (the cheapest, and the last GPU), C 1.5/h × 2.
    let prices = [("a", "2", 2), ("b", "1.2", 1), ("c", "1.5", 2)];
    let mut providers: Vec<Node> = Vec::new();
    for (name, price, gpus) in prices {
        let cli = Node::init(Clawnode::new(&dir.path().join(name)), gpus);
        cli.configure_market(
            &market(&format!("price_per_gpu_hour = {price:?}\n")),
            &chain,
        );
        let bootstrap = arbiter.addrs();
        providers.push(Node::start(cli, &bootstrap));
    }
    let seed = arbiter.addrs();
    buyer_cli.configure_market(&market("max_per_lease = \"5\"\nmax_per_day = \"50\"\n"), "");
    buyer_cli.ok(&["wallet", "airdrop", "--sol", "5", "--molt", "100"]);
    let rival_cli = Node::init(Clawnode::new(&dir.path().join("rival")), 0);
    rival_cli.configure_market(&market(""), &chain);
    rival_cli.ok(&["wallet", "airdrop", "--sol", "5"]);
    let rival_address = rival_cli
        .ok(&["wallet", "address"])
        .stdout
        .trim()
        .to_owned();
    buyer_cli.ok(&["wallet", "transfer", &rival_address, "20"]);
    let mut buyer = Node::start(buyer_cli, &seed);
    let mut rival = Node::start(rival_cli, &seed);

    // Offers gossip into every book: the buyer sees all three, cheapest first.
    let offers = eventually(
        Duration::from_secs(30),
        "three offers in the buyer's book",
        || {
            let answer = buyer.ok("market.offers", &json!({}));
            let offers = answer["offers"].as_array()?.clone();
            (offers.len() == 3).then_some(offers)
        },
    );
    let prices_seen: Vec<&str> = offers
        .iter()
        .map(|o| o["price_per_gpu_hour"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(prices_seen, ["1.2", "1.5", "2"]);
    assert!(
        offers
            .iter()
            .all(|o| o["simulated"] == true && o["attested"] == false)
    );
    assert_eq!(offers[0]["provider"], providers[1].peer_id);
    // The same book as a table through the CLI.
    let table = buyer.cli.ok(&["market", "offers"]).stdout;
    assert!(table.starts_with("NODE"), "{table}");
    for price in ["1.2/h", "1.5/h", "2/h"] {
        assert!(table.contains(price), "{table}");
    }
    assert!(table.contains("(simulated)"), "{table}");
    let miss = buyer.cli.fails(&[
        "market",
        "bid",
        "--model",
        MODEL,
        "--max-price",
        "1",
        "--accept-simulated",
    ]);
    assert!(miss.stdout.contains("no offer matches"), "{}", miss.stdout);
    assert!(
        miss.stdout
            .contains("nearest: 1 × NVIDIA H100 80GB HBM3 at 1.2/h"),
        "{}",
        miss.stdout
    );

    // Impossible bids are explained, per constraint, with the nearest offers.
    let cheap = buyer.ok("market.bid", &bid("1", 1, None));
    assert_eq!(cheap["matched"], false, "{cheap}");
    let explanation = cheap["explanation"].as_str().unwrap_or_default();
    assert!(explanation.contains("price"), "{explanation}");
    assert_eq!(cheap["nearest"][0]["price_per_gpu_hour"], "1.2");
    let mut real_only = bid("3", 1, None);
    real_only["accept_simulated"] = json!(false);
    let refused = buyer.ok("market.bid", &real_only);
    assert_eq!(refused["matched"], false);
    assert!(
        refused["explanation"]
            .as_str()
            .unwrap_or_default()
            .contains("simulated"),
        "{refused}"
    );

    // Over budget (2 GPUs × 1 h × 1.5 fits, 4 GPUs does not exist, so 2 GPUs × 3 h): refused
    // before anything is signed: no lease, no MOLT moved.
    let before = buyer.molt();
    let mut big = bid(
        "2",
        2,
        Some(json!({"image": image, "command": ["sleep", "300"]})),
    );
    big["hours"] = json!(3);
    let over = buyer
        .invoke_on(None, "market.bid", &big)
        .expect_err("over budget");
    assert!(
        over.contains("UNAUTHORIZED") && over.contains("over budget"),
        "{over}"
    );
    assert_eq!(buyer.molt(), before);
    assert_eq!(buyer.ok("market.leases", &json!({}))["leases"], json!([]));

    // Two buyers race for B's only GPU: one lease, one clear refusal.
    let workload = json!({"image": image, "command": SERVE_HTTP});
    let race = std::thread::scope(|scope| {
        let first = scope
            .spawn(|| buyer.invoke_on(None, "market.bid", &bid("1.3", 1, Some(workload.clone()))));
        let second = scope
            .spawn(|| rival.invoke_on(None, "market.bid", &bid("1.3", 1, Some(workload.clone()))));
        [
            first.join().expect("first bid"),
            second.join().expect("second bid"),
        ]
    });
    let leased: Vec<&Value> = race
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .filter(|v| v["leased"] == true)
        .collect();
    assert_eq!(
        leased.len(),
        1,
        "exactly one buyer leases the last GPU: {race:?}"
    );
    let loser = race
        .iter()
        .find(|r| !matches!(r, Ok(v) if v["leased"] == true))
        .expect("a loser");
    match loser {
        Err(text) => assert!(text.contains("CONFLICT"), "{text}"),
        Ok(answer) => assert_eq!(answer["matched"], false, "{answer}"),
    }
    let winner_is_buyer = race[0].as_ref().is_ok_and(|v| v["leased"] == true);
    let winner = if winner_is_buyer { &buyer } else { &rival };
    let lease = leased[0]["lease"].clone();
    let lease_id = lease["lease_id"].as_str().expect("lease id").to_owned();
    assert_eq!(lease["state"], "running", "{lease}");
    assert_eq!(leased[0]["offer"]["provider"], providers[1].peer_id);
    for phase in [
        "match",
        "lease_request",
        "escrow_funding",
        "workload_start",
        "total",
    ] {
        assert!(leased[0]["phases_ms"][phase].is_f64(), "{phase}");
    }

    // The container runs on B, on the GPU the terms reserved, started for the lessee.
    let b = &providers[1];
    let workload_id = lease["workload_id"].as_str().expect("workload").to_owned();
    let on_b = b.ok("workload.inspect", &json!({"workload": workload_id}));
    assert_eq!(on_b["workload"]["state"], "running", "{on_b}");
    assert_eq!(on_b["workload"]["gpus"], lease["gpus"]);
    assert_eq!(on_b["workload"]["owner"], winner.peer_id);
    assert_eq!(
        b.containers(false).len(),
        1,
        "{on_b} {:?}",
        b.containers(true)
    );
    // The lessee manages its own workload, and nothing else.
    winner
        .invoke_on(
            Some(&b.peer_id),
            "workload.logs",
            &json!({"workload": workload_id}),
        )
        .expect("the lessee reads its workload's logs");
    let denied = winner
        .invoke_on(Some(&b.peer_id), "workload.run", &json!({"image": image}))
        .expect_err("the lessee may not start other workloads");
    assert!(denied.contains("UNAUTHORIZED"), "{denied}");
    // The lessee reaches its container's port through the mesh: B publishes nothing, and no
    // one else gets a forward to it.
    let forward = winner.ok("service.forward", &json!({"lease": lease_id, "port": 8080}));
    let listen = forward["listen"].as_str().expect("listen").to_owned();
    let served = eventually(
        Duration::from_secs(30),
        "the leased container's page",
        || {
            use std::io::{Read as _, Write as _};
            let mut stream = std::net::TcpStream::connect(&listen).ok()?;
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .ok()?;
            write!(stream, "GET / HTTP/1.0\r\n\r\n").ok()?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer).ok()?;
            answer.contains("200").then_some(answer)
        },
    );
    assert!(served.ends_with("leased\n"), "{served}");
    assert_eq!(
        on_b["container"]["ports"],
        json!([]),
        "B publishes no port: {on_b}"
    );
    let other = if winner_is_buyer { &rival } else { &buyer };
    let refused = other
        .invoke_on(
            None,
            "service.forward",
            &json!({"lease": lease_id, "port": 8080}),
        )
        .expect_err("only the lease's buyer forwards to it");
    assert!(refused.contains("bought no lease"), "{refused}");
    winner.ok("service.unforward", &json!({"listen": listen}));
    // B's GPU is taken: its offer is withdrawn from every book.
    eventually(Duration::from_secs(20), "B's offer withdrawn", || {
        let offers = buyer.ok("market.offers", &json!({}));
        let ids: Vec<&str> = offers["offers"]
            .as_array()?
            .iter()
            .filter_map(|o| o["provider"].as_str())
            .collect();
        (!ids.contains(&b.peer_id.as_str())).then_some(())
    });

    // Provider and buyer are both killed mid-lease and restarted: the lease survives on both
    // sides and settles once.
    std::thread::sleep(Duration::from_secs(2));
    let winner_before = winner.molt();
    let mut providers = providers;
    providers[1].kill();
    let winner = if winner_is_buyer {
        &mut buyer
    } else {
        &mut rival
    };
    winner.kill();
    providers[1].restart(&seed);
    winner.restart(&seed);
    let winner = if winner_is_buyer { &buyer } else { &rival };
    let b = &providers[1];
    eventually(
        Duration::from_secs(30),
        "the restarted provider answers for the lease",
        || {
            let status = winner
                .invoke_on(
                    Some(&b.peer_id),
                    "market.lease.status",
                    &json!({"lease_id": lease_id}),
                )
                .ok()?;
            (status["state"] == "running").then_some(())
        },
    );
    let settled = winner
        .cli
        .ok(&["--json", "market", "cancel", &lease_id])
        .json();
    assert_eq!(settled["state"], "settled", "{settled}");
    let leases = winner.cli.ok(&["market", "leases"]).stdout;
    assert!(
        leases.contains(&lease_id) && leases.contains("settled"),
        "{leases}"
    );
    let to_provider = units(settled["to_provider"].as_str().expect("to provider"));
    let to_buyer = units(settled["to_buyer"].as_str().expect("to buyer"));
    assert_eq!(
        to_provider + to_buyer,
        1_200_000,
        "the escrow pays out exactly"
    );
    let served = settled["served_secs"].as_u64().expect("served");
    assert!(served >= 2, "served {served} s");
    assert_eq!(
        to_provider,
        1_200_000 * served / 3600,
        "pro rata for the time served"
    );
    assert_eq!(b.molt(), format!("{}", Molt(to_provider)));
    assert_eq!(units(&winner.molt()), units(&winner_before) + to_buyer);
    // Settling again pays nothing more.
    let again = winner.ok("market.lease.cancel", &json!({"lease_id": lease_id}));
    assert_eq!(
        again["settlement_signature"],
        settled["settlement_signature"]
    );
    assert_eq!(b.molt(), format!("{}", Molt(to_provider)));
    eventually(
        Duration::from_secs(20),
        "the provider sees the settlement",
        || {
            let leases = b.ok("market.leases", &json!({}));
            (leases["leases"][0]["state"] == "settled").then_some(())
        },
    );
    // The tenant is gone from B: no container, no firewall rule, no network; only its logs.
    assert!(
        b.containers(true).is_empty(),
        "the lease's container was removed: {:?}",
        b.containers(true)
    );
    assert_eq!(claw_tests::tenant_firewall_rules(&workload_id), 0);
    assert_eq!(claw_tests::tenant_networks(&workload_id), 0);
    let kept = b.ok("workload.logs", &json!({"workload": workload_id}));
    assert_eq!(kept["kept"], true, "{kept}");

    // A workload that never starts: the lease ends at once and the escrow goes back in full.
    // (A buyer restarted above has its book again from the providers within a few ticks.)
    eventually(
        Duration::from_secs(30),
        "C's offer in the buyer's book",
        || {
            let offers = buyer.ok("market.offers", &json!({}));
            offers["offers"]
                .as_array()?
                .iter()
                .any(|o| o["provider"] == providers[2].peer_id.as_str())
                .then_some(())
        },
    );
    let before = buyer.molt();
    let failed = buyer.ok(
        "market.bid",
        &bid(
            "1.6",
            2,
            Some(json!({"image": image, "command": ["/no/such/program"]})),
        ),
    );
    assert_eq!(failed["lease"]["state"], "refunded", "{failed}");
    assert_eq!(failed["offer"]["provider"], providers[2].peer_id);
    assert_eq!(buyer.molt(), before);

    // Reputation, from the provider's receipts checked on chain.
    let reputation = buyer.ok(
        "market.reputation",
        &json!({"provider": providers[1].peer_id}),
    );
    assert_eq!(reputation["served"], 1, "{reputation}");
    assert_eq!(reputation["receipts_proven_on_chain"], 1);
    let reputation = buyer.ok(
        "market.reputation",
        &json!({"provider": providers[2].peer_id}),
    );
    assert_eq!(reputation["never_started"], 1, "{reputation}");

    // Streaming: C (2 GPUs at 1.5/h, so 3 MOLT/h) pulls what it earns every second from the
    // buyer's allowance; when the buyer revokes it, the next pull is refused and C stops the
    // workload. Every base unit the buyer lost, C gained, and C's receipt says how many.
    let c = &providers[2];
    c.cli.ok(&["wallet", "airdrop", "--sol", "2"]);
    let c_before = units(&c.molt());
    let before = units(&buyer.molt());
    let mut streamed = bid("1.6", 2, Some(json!({"image": image, "command": SERVE})));
    streamed["payment"] = json!("stream");
    let streaming = buyer.ok("market.bid", &streamed);
    assert_eq!(streaming["lease"]["state"], "running", "{streaming}");
    assert_eq!(streaming["offer"]["provider"], c.peer_id);
    let stream_id = streaming["lease"]["lease_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let mut second = bid("2", 1, Some(json!({"image": image})));
    second["payment"] = json!("stream");
    let one_stream = buyer
        .invoke_on(None, "market.bid", &second)
        .expect_err("one stream per wallet");
    assert!(one_stream.contains("already streams"), "{one_stream}");
    eventually(Duration::from_secs(20), "C pulling its earnings", || {
        (units(&c.molt()) > c_before).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    buyer.ok("market.lease.revoke", &json!({"lease_id": stream_id}));
    let ended = eventually(Duration::from_secs(30), "the stream to end", || {
        let leases = buyer.ok("market.leases", &json!({"state": "settled"}));
        leases["leases"]
            .as_array()?
            .iter()
            .find(|l| l["lease_id"] == stream_id.as_str())
            .cloned()
    });
    assert!(c.containers(false).is_empty(), "C stopped the workload");
    let gained = units(&c.molt()) - c_before;
    assert!(gained > 0);
    assert_eq!(
        before - units(&buyer.molt()),
        gained,
        "what left the buyer reached C"
    );
    assert_eq!(
        units(ended["to_provider"].as_str().expect("pulled")),
        gained
    );
    let served = ended["served_secs"].as_u64().expect("served");
    assert!(gained <= 3_000_000 * served / 3600, "no more than earned");

    // A buyer that vanishes: its workload ends on its own, the provider's receipt waits for a
    // co-signature that never comes, and the provider settles with the arbiter instead.
    let b = &providers[1];
    b.cli.ok(&["wallet", "airdrop", "--sol", "2"]);
    let b_before = units(&b.molt());
    let before = units(&buyer.molt());
    let short = buyer.ok(
        "market.bid",
        &bid(
            "1.3",
            1,
            Some(json!({"image": image, "command": ["sleep", "3"]})),
        ),
    );
    assert_eq!(short["offer"]["provider"], b.peer_id, "{short}");
    let short_id = short["lease"]["lease_id"].as_str().expect("id").to_owned();
    buyer.kill();
    let ruled = eventually(Duration::from_secs(40), "the arbiter's settlement", || {
        let leases = b.ok("market.leases", &json!({"state": "settled"}));
        leases["leases"]
            .as_array()?
            .iter()
            .find(|l| l["lease_id"] == short_id.as_str())
            .cloned()
    });
    assert!(
        ruled["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("arbiter"),
        "{ruled}"
    );
    let paid = units(ruled["to_provider"].as_str().expect("paid"));
    assert!(paid > 0);
    assert_eq!(units(&b.molt()) - b_before, paid);
    assert_eq!(
        before - units(&buyer.molt()),
        paid,
        "the rest went back to the buyer"
    );
    // Back, the buyer finds its lease settled, and pays nothing more.
    buyer.restart(&seed);
    eventually(
        Duration::from_secs(30),
        "the buyer's record settled",
        || {
            let leases = buyer.ok("market.leases", &json!({"state": "settled"}));
            leases["leases"]
                .as_array()?
                .iter()
                .any(|l| l["lease_id"] == short_id.as_str())
                .then_some(())
        },
    );
    assert_eq!(before - units(&buyer.molt()), paid);
}

/// Formats base units as MOLT text, as the wallet prints it.
struct Molt(u64);

impl std::fmt::Display for Molt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (whole, fraction) = (self.0 / 1_000_000, self.0 % 1_000_000);
        if fraction == 0 {
            write!(f, "{whole}")
        } else {
            write!(
                f,
                "{whole}.{}",
                format!("{fraction:06}").trim_end_matches('0')
            )
        }
    }
}

/// Answers nothing: the rogue peer only publishes.
struct Silent;

impl claw_mesh::InvokeHandler for Silent {
    fn handle(
        &self,
        _caller: claw_mesh::PeerId,
        request: claw_mesh::InvokeRequest,
    ) -> claw_mesh::HandlerFuture {
        Box::pin(async move {
            claw_mesh::InvokeResponse::Error(claw_mesh::InvokeFailure::new(
                claw_mesh::ErrorCode::UnknownCommand,
                format!("no command {}", request.command),
            ))
        })
    }
}

fn rogue_offer(price: u64, network: &str, wallet: &str) -> claw_market::order::Offer {
    let now = claw_attestation::unix_millis(std::time::SystemTime::now());
    claw_market::order::Offer {
        offer_id: 7,
        gpu_model: MODEL.to_owned(),
        gpus: 8,
        vram_mib: 81_559,
        price_per_gpu_hour: claw_market::Molt::from_base_units(price),
        min_hours: 1,
        max_hours: 24,
        available_from_ms: now,
        available_until_ms: now + 48 * 3_600_000,
        network: network.to_owned(),
        region: None,
        wallet: wallet.to_owned(),
        inventory_digest: [0; 32],
        interruptible: false,
        simulated: true,
        withdrawn: false,
        cpu_millis_per_gpu: 4000,
        memory_mib_per_gpu: 32_768,
        pids_limit: 4096,
    }
}

#[test]
fn forged_expired_replayed_and_foreign_offers_never_reach_a_book() {
    use claw_attestation::{Envelope, NodeIdentity, Validity};

    let dir = tempfile::tempdir().expect("temp dir");
    let arbiter = "9xQeWvG816bUx9EPjHmaT23yvVM2ZWbrrpZb9PusVFin";
    let market = format!("arbiter = {arbiter:?}\nprice_per_gpu_hour = \"1.5\"\n");
    let chain = format!("molt_mint = {arbiter:?}\n");
    let provider_cli = Node::init(Clawnode::new(&dir.path().join("provider")), 1);
    provider_cli.configure_market(&market, &chain);
    let provider = Node::start(provider_cli, &[]);
    let buyer_cli = Node::init(Clawnode::new(&dir.path().join("buyer")), 0);
    buyer_cli.configure_market(&format!("arbiter = {arbiter:?}\n"), &chain);
    let buyer = Node::start(buyer_cli, &provider.addrs());
    let honest_key: [u8; 32] = {
        let offers = eventually(Duration::from_secs(30), "the provider's offer", || {
            let answer = buyer.ok("market.offers", &json!({}));
            let offers = answer["offers"].as_array()?.clone();
            (offers.len() == 1).then_some(offers)
        });
        assert_eq!(offers[0]["provider"], provider.peer_id);
        let peer: claw_mesh::PeerId = provider.peer_id.parse().expect("peer id");
        claw_attestation::ed25519_key_of(&peer).expect("ed25519 key")
    };

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let signer = NodeIdentity::generate();
    let seed: claw_mesh::Multiaddr = provider.addrs()[0].parse().expect("multiaddr");
    let buyer_node = std::sync::Arc::new(buyer);
    let buyer = std::sync::Arc::clone(&buyer_node);
    let prices_seen = runtime.block_on(async {
        // Each hostile message comes from its own rogue peer: the first invalid message from a
        // peer already cuts it off, so one rogue could not show the others being refused.
        let mut rogues = Vec::new();
        for _ in 0..5 {
            let config = claw_mesh::MeshConfig {
                network: "localnet".to_owned(),
                listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr")],
                bootstrap: vec![seed.clone()],
                allow_colocated_peers: true,
                ..claw_mesh::MeshConfig::default()
            };
            let identity = NodeIdentity::generate();
            rogues.push(
                claw_mesh::Mesh::spawn(&identity, config, std::sync::Arc::new(Silent))
                    .expect("rogue mesh"),
            );
        }
        // Let gossipsub learn the rogues' subscriptions.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let wallet = "HtWVDCjVrGvDdf8FeLKGA8ze11ydYUQiPK943CwDsysN";
        let fresh = Validity::from_now(Duration::from_secs(120));
        let seal = |seq, validity, price, network: &str| {
            Envelope::seal(&signer, seq, validity, &rogue_offer(price, network, wallet)).to_bytes()
        };
        // Signed by one key, claiming the provider's.
        let mut forged = seal(101, fresh, 200_000, "localnet");
        forged[2..34].copy_from_slice(&honest_key);
        // Long expired.
        let expired = seal(
            102,
            Validity {
                issued_at_ms: 1_000,
                ttl: Duration::from_secs(60),
            },
            300_000,
            "localnet",
        );
        // Valid, but for another network's book.
        let foreign = seal(103, fresh, 400_000, "devnet");
        // An honest offer at 0.9/h, and then its sequence again with a lower price: a replay.
        let honest = seal(100, fresh, 900_000, "localnet");
        let replayed = seal(100, fresh, 100_000, "localnet");
        for (rogue, bytes) in rogues.iter().zip([forged, expired, foreign, honest]) {
            let _ = rogue
                .handle
                .publish(claw_mesh::TopicKind::Offers, bytes)
                .await;
        }
        let reader = std::sync::Arc::clone(&buyer);
        tokio::task::spawn_blocking(move || {
            eventually(Duration::from_secs(20), "the honest offer", || {
                let answer = reader.ok("market.offers", &json!({"max_price": "0.9"}));
                (answer["offers"].as_array()?.len() == 1).then_some(())
            })
        })
        .await
        .expect("offers read");
        let _ = rogues[4]
            .handle
            .publish(claw_mesh::TopicKind::Offers, replayed)
            .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let prices = tokio::task::spawn_blocking(move || {
            let answer = buyer.ok("market.offers", &json!({}));
            answer["offers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|o| o["price_per_gpu_hour"].as_str().map(str::to_owned))
                .collect::<Vec<_>>()
        })
        .await
        .expect("offers read");
        for rogue in &rogues {
            rogue.handle.shutdown().await;
        }
        prices
    });
    assert_eq!(
        prices_seen,
        ["0.9", "1.5"],
        "only the honest offers are in the book"
    );
    // The provider changes its price from the CLI, then stops selling: every book follows.
    let changed = provider.cli.ok(&["market", "sell", "--price", "2"]);
    assert!(
        changed.stdout.starts_with("selling at 2 MOLT/GPU-hour"),
        "{}",
        changed.stdout
    );
    let provider_price = |buyer: &Node| -> Option<String> {
        let answer = buyer.ok("market.offers", &json!({}));
        answer["offers"]
            .as_array()?
            .iter()
            .find(|o| o["provider"] == provider.peer_id.as_str())
            .and_then(|o| o["price_per_gpu_hour"].as_str().map(str::to_owned))
    };
    eventually(Duration::from_secs(30), "the new price in the book", || {
        (provider_price(&buyer_node)? == "2").then_some(())
    });
    // Within a daily window: the offer allows no lease past its close, and leaves the book
    // while it is closed.
    let utc_clock = |from_now_ms: u64| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("time")
            .as_millis();
        let minute_of_day = ((now + u128::from(from_now_ms)) / 60_000) % (24 * 60);
        format!("{:02}:{:02}", minute_of_day / 60, minute_of_day % 60)
    };
    let hour = 3_600_000;
    let window = format!("{}-{}", utc_clock(0), utc_clock(3 * hour));
    let open = provider.cli.ok(&[
        "--json",
        "market",
        "sell",
        "--price",
        "2",
        "--window",
        &window,
        "--time-zone",
        "UTC",
    ]);
    assert_eq!(
        open.json()["window"]["until"],
        utc_clock(3 * hour),
        "{}",
        open.stdout
    );
    let max_hours = |buyer: &Node| -> Option<u64> {
        let answer = buyer.ok("market.offers", &json!({}));
        answer["offers"]
            .as_array()?
            .iter()
            .find(|o| o["provider"] == provider.peer_id.as_str())
            .and_then(|o| o["max_hours"].as_u64())
    };
    eventually(
        Duration::from_secs(30),
        "the offer clipped to the window",
        || (max_hours(&buyer_node)? <= 3).then_some(()),
    );
    let closed = format!("{}-{}", utc_clock(2 * hour), utc_clock(4 * hour));
    provider.cli.ok(&[
        "market",
        "sell",
        "--price",
        "2",
        "--window",
        &closed,
        "--time-zone",
        "UTC",
    ]);
    eventually(
        Duration::from_secs(30),
        "the offer gone while the window is closed",
        || provider_price(&buyer_node).is_none().then_some(()),
    );
    let stopped = provider
        .cli
        .ok(&["--json", "market", "sell", "--stop"])
        .json();
    assert_eq!(stopped["selling"], false, "{stopped}");
    assert!(
        stopped["offers"]
            .as_array()
            .is_some_and(|o| o.iter().all(|o| o["withdrawn"] == true)),
        "{stopped}"
    );
    eventually(
        Duration::from_secs(30),
        "the offer withdrawn from the book",
        || provider_price(&buyer_node).is_none().then_some(()),
    );

    // The provider, the rogues' first hop, counted what it refused to forward.
    let scraped = provider
        .running
        .as_ref()
        .expect("the provider runs")
        .scrape_metrics();
    let refused = claw_tests::metric(
        &scraped,
        r#"clawnode_gossip_messages_total{topic="offers",verdict="rejected"}"#,
    );
    assert!(
        refused.is_some_and(|n| n >= 3.0),
        "forged, expired and replayed offers are counted as rejected: {scraped}"
    );
    drop(provider);
}
