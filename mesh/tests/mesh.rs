//! In-process mesh tests on loopback: convergence, expiry, partitions, hostile gossip, private
//! fleets and invokes.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use claw_attestation::{Envelope, NodeIdentity, PayloadKind, SignedPayload, Validity};
use claw_mesh::{ErrorCode, InvokeRequest, MeshEvent, SwarmKey, TopicKind};
use common::{TestNode, TestReport, announcement, sign, test_config, wait_until, with_key};
use serde::{Deserialize, Serialize};

async fn start_nodes(count: usize, network: &str, bootstrap: Option<&TestNode>) -> Vec<TestNode> {
    let mut nodes = Vec::new();
    for i in 0..count {
        let mut config = test_config(network);
        if let Some(seed) = bootstrap.or(nodes.first()) {
            config.bootstrap = vec![seed.addr.clone()];
        }
        nodes.push(TestNode::start(&format!("{network}-{i}"), config).await);
        // Stagger joins a little so 2 cores are not asked to bootstrap everyone at once.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    nodes
}

fn all_see(nodes: &[TestNode], count: usize) -> bool {
    nodes.iter().all(|n| n.sees().len() == count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_nodes_converge_and_a_stopped_node_leaves_every_view() {
    let mut nodes = start_nodes(20, "localnet", None).await;
    let started = Instant::now();
    let counts = || nodes.iter().map(|n| n.sees().len()).collect::<Vec<_>>();
    wait_until(Duration::from_secs(30), "20 nodes to see 20", || {
        all_see(&nodes, 20)
    })
    .await
    .unwrap_or_else(|()| panic!("views did not converge: {:?}", counts()));
    eprintln!("20 nodes converged in {:?}", started.elapsed());

    let status = nodes[5].handle.fleet_status();
    assert_eq!(status.nodes, 20);
    assert_eq!(status.gpus, 20);
    assert_eq!(status.simulated_gpus, 20);

    let gone = nodes.remove(7);
    let gone_id = gone.peer_id();
    gone.stop().await;
    let stopped = Instant::now();
    wait_until(Duration::from_secs(15), "the stopped node to leave", || {
        nodes.iter().all(|n| !n.sees().contains(&gone_id))
    })
    .await
    .expect("condition reached in time");
    eprintln!("stopped node left every view after {:?}", stopped.elapsed());
    assert!(all_see(&nodes, 19));
    for node in nodes {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_halves_converge_apart_and_merge_when_reconnected() {
    let left = start_nodes(5, "localnet", None).await;
    let right = start_nodes(5, "localnet", None).await;
    wait_until(Duration::from_secs(20), "each half to converge", || {
        all_see(&left, 5) && all_see(&right, 5)
    })
    .await
    .expect("condition reached in time");
    let left_ids: Vec<_> = left.iter().map(TestNode::peer_id).collect();
    assert!(
        right
            .iter()
            .all(|n| n.sees().iter().all(|p| !left_ids.contains(p)))
    );

    left[0].handle.dial(right[0].addr.clone()).await.unwrap();
    wait_until(Duration::from_secs(20), "the halves to merge", || {
        all_see(&left, 10) && all_see(&right, 10)
    })
    .await
    .expect("condition reached in time");
    for node in left.into_iter().chain(right) {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_announcements_are_rejected_unforwarded_and_cost_the_sender() {
    let network = "localnet";
    let victim = TestNode::start("victim", test_config(network)).await;
    let mut behind_config = test_config(network);
    behind_config.bootstrap = vec![victim.addr.clone()];
    let behind = TestNode::start("behind", behind_config).await;
    let rogue_identity = Arc::new(NodeIdentity::generate());
    let mut rogue_config = test_config(network);
    rogue_config.bootstrap = vec![victim.addr.clone()];
    let rogue = TestNode::start_with(rogue_identity.clone(), "rogue", rogue_config, false).await;
    wait_until(Duration::from_secs(15), "victim and behind to meet", || {
        victim.sees().len() == 2 && behind.sees().len() == 2
    })
    .await
    .expect("condition reached in time");
    // Let gossipsub graft the rogue into the victim's mesh.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let honest = NodeIdentity::generate();
    let claim = announcement("forged", network);
    let mut forged = sign(&rogue_identity, 100, &claim);
    forged[2..34].copy_from_slice(honest.public_key().as_bytes()); // claims another key
    let mut bad_signature = sign(&rogue_identity, 101, &claim);
    let last = bad_signature.len() - 1;
    bad_signature[last] ^= 1;
    // Expired, and its signature does not hold: a forgery, not a late copy.
    let mut expired = Envelope::seal(
        &rogue_identity,
        102,
        Validity {
            issued_at_ms: 1_000,
            ttl: Duration::from_secs(1),
        },
        &claim,
    )
    .to_bytes();
    let last = expired.len() - 1;
    expired[last] ^= 1;
    let wrong_network = sign(&rogue_identity, 103, &announcement("x", "devnet"));
    let malformed = b"not an envelope at all".to_vec();
    let oversize = vec![1u8; 15 * 1024];

    for bytes in [
        forged,
        bad_signature,
        expired,
        wrong_network,
        malformed,
        oversize,
    ] {
        let _ = rogue.handle.publish(TopicKind::Inventory, bytes).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let score = victim
        .handle
        .peer_score(rogue.peer_id())
        .await
        .unwrap()
        .expect("the victim scores the rogue");
    assert!(score < 0.0, "the rogue's score is {score}");
    for node in [&victim, &behind] {
        let seen = node.sees();
        assert_eq!(seen.len(), 2, "hostile claims entered a view: {seen:?}");
        assert!(!seen.contains(&rogue.peer_id()));
        assert!(!seen.contains(&honest.peer_id()));
    }

    // Replay protection, from a sender still in good standing.
    let fresh_identity = Arc::new(NodeIdentity::generate());
    let mut fresh_config = test_config(network);
    fresh_config.bootstrap = vec![victim.addr.clone()];
    let fresh = TestNode::start_with(fresh_identity.clone(), "fresh", fresh_config, false).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let newer_fresh = sign(&fresh_identity, 500, &announcement("fresh", network));
    fresh.handle.announce(newer_fresh).await.unwrap();
    wait_until(
        Duration::from_secs(10),
        "the fresh node's announcement",
        || behind.sees().contains(&fresh.peer_id()),
    )
    .await
    .expect("condition reached in time");
    // An older sequence signed moments ago is honest reordering: dropped, nobody penalised.
    let reordered = sign(
        &fresh_identity,
        450,
        &announcement("fresh-reordered", network),
    );
    fresh
        .handle
        .publish(TopicKind::Inventory, reordered)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let score_after_reorder = victim.handle.peer_score(fresh.peer_id()).await.unwrap();
    assert!(
        score_after_reorder.is_some_and(|s| s >= 0.0),
        "reordering was penalised: {score_after_reorder:?}"
    );
    // An older sequence signed long ago, still unexpired, and one its node signed and let
    // expire a minute ago: late copies, as a loaded forwarder (or a loaded receiver) passes
    // them on. The view keeps the newest, and no one is penalised (the rogue's expired forgery
    // above is).
    let now = claw_attestation::unix_millis(std::time::SystemTime::now());
    for (seq, signed_ago_ms, valid_secs, name) in [
        (300, 100_000, 35, "fresh-expired"),
        (400, 60_000, 600, "fresh-replayed"),
    ] {
        let late = Envelope::seal(
            &fresh_identity,
            seq,
            Validity {
                issued_at_ms: now - signed_ago_ms,
                ttl: Duration::from_secs(valid_secs),
            },
            &announcement(name, network),
        )
        .to_bytes();
        fresh
            .handle
            .publish(TopicKind::Inventory, late)
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for node in [&victim, &behind] {
        let member = node
            .handle
            .fleet()
            .into_iter()
            .find(|m| m.peer_id == fresh.peer_id())
            .expect("fresh node is known");
        assert_eq!(member.seq, 500);
        assert_eq!(member.announcement.name, "fresh");
    }
    let fresh_score = victim.handle.peer_score(fresh.peer_id()).await.unwrap();
    assert!(
        fresh_score.is_some_and(|s| s >= 0.0),
        "a late copy was penalised: {fresh_score:?}"
    );

    for node in [victim, behind, rogue, fresh] {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_fleet_admits_only_peers_with_its_key() {
    let key: SwarmKey = SwarmKey::from_bytes([42; 32]);
    let other: SwarmKey = SwarmKey::from_bytes([7; 32]);
    let network = "fleet-a";
    let first = TestNode::start("p0", with_key(test_config(network), Some(key))).await;
    let mut members = vec![];
    for i in 1..3 {
        let mut config = with_key(test_config(network), Some(key));
        config.bootstrap = vec![first.addr.clone()];
        members.push(TestNode::start(&format!("p{i}"), config).await);
    }
    members.insert(0, first);
    wait_until(Duration::from_secs(20), "the private fleet to form", || {
        all_see(&members, 3)
    })
    .await
    .expect("condition reached in time");

    for (name, key) in [("wrong-key", Some(other)), ("no-key", None)] {
        let mut config = with_key(test_config(network), key);
        config.bootstrap = members.iter().map(|m| m.addr.clone()).collect();
        let outsider = TestNode::start(name, config).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let connected = outsider.handle.connected_peers().await.unwrap();
        assert!(connected.is_empty(), "{name} connected to {connected:?}");
        assert_eq!(outsider.sees(), vec![outsider.peer_id()]);
        for member in &members {
            assert!(!member.sees().contains(&outsider.peer_id()));
        }
        outsider.stop().await;
    }
    for node in members {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invokes_round_trip_time_out_and_do_not_block_each_other() {
    let server = TestNode::start("server", test_config("localnet")).await;
    let mut config = test_config("localnet");
    config.bootstrap = vec![server.addr.clone()];
    let client = TestNode::start("client", config).await;
    let peer = server.peer_id();

    let echoed = client
        .handle
        .invoke(
            peer,
            InvokeRequest::new("echo", Duration::from_secs(5))
                .with_params(serde_json::json!({"x": 1})),
        )
        .await
        .unwrap();
    assert_eq!(echoed["params"]["x"], 1);
    assert_eq!(echoed["caller"], client.peer_id().to_string());

    let unknown = client
        .handle
        .invoke(
            peer,
            InvokeRequest::new("nope.nothing", Duration::from_secs(5)),
        )
        .await
        .unwrap_err();
    assert_eq!(unknown.code, ErrorCode::UnknownCommand);

    let late = client
        .handle
        .invoke(
            peer,
            InvokeRequest::new("sleep", Duration::from_millis(300))
                .with_params(serde_json::json!(3000)),
        )
        .await
        .unwrap_err();
    assert_eq!(late.code, ErrorCode::Timeout, "{late}");

    // 100 concurrent invokes; 20 of them sleep 3 s. The fast ones must not wait for the slow.
    let started = Instant::now();
    let mut fast = Vec::new();
    let mut slow = Vec::new();
    for i in 0..100 {
        let handle = client.handle.clone();
        let request = if i % 5 == 0 {
            InvokeRequest::new("sleep", Duration::from_secs(10))
                .with_params(serde_json::json!(3000))
        } else {
            InvokeRequest::new("echo", Duration::from_secs(10)).with_params(serde_json::json!(i))
        };
        let task = tokio::spawn(async move {
            let result = handle.invoke(peer, request).await;
            (result, Instant::now())
        });
        if i % 5 == 0 {
            slow.push(task)
        } else {
            fast.push(task)
        }
    }
    let mut last_fast = started;
    for task in fast {
        let (result, done) = task.await.unwrap();
        result.unwrap();
        last_fast = last_fast.max(done);
    }
    let fast_elapsed = last_fast - started;
    assert!(
        fast_elapsed < Duration::from_millis(2500),
        "fast invokes waited for slow ones: {fast_elapsed:?}"
    );
    for task in slow {
        let (result, done) = task.await.unwrap();
        assert_eq!(result.unwrap()["slept_ms"], 3000);
        assert!(done - started >= Duration::from_secs(3));
    }
    eprintln!("80 fast invokes done in {fast_elapsed:?} beside 20 slow ones");
    server.stop().await;
    client.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providers_of_a_gpu_model_are_found_through_kademlia() {
    let nodes = start_nodes(6, "localnet", None).await;
    wait_until(Duration::from_secs(20), "6 nodes to converge", || {
        all_see(&nodes, 6)
    })
    .await
    .expect("condition reached in time");
    // A fresh peer that joins through one node finds every provider without the gossip view.
    let mut config = test_config("localnet");
    config.bootstrap = vec![nodes[3].addr.clone()];
    let buyer =
        TestNode::start_with(Arc::new(NodeIdentity::generate()), "buyer", config, false).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let expected: std::collections::HashSet<_> = nodes.iter().map(TestNode::peer_id).collect();
    let mut found = std::collections::HashSet::new();
    for _ in 0..20 {
        found = buyer
            .handle
            .find_providers("NVIDIA H100 80GB HBM3")
            .await
            .unwrap();
        if found == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(found, expected);
    assert!(
        buyer
            .handle
            .find_providers("NVIDIA A100")
            .await
            .unwrap()
            .is_empty()
    );
    for node in nodes.into_iter().chain([buyer]) {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trade_report_waits_for_the_application_and_a_false_one_costs_its_sender() {
    let nodes = start_nodes(2, "localnet", None).await;
    wait_until(Duration::from_secs(20), "2 nodes", || all_see(&nodes, 2))
        .await
        .expect("converged");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (sender, receiver) = (&nodes[1], &nodes[0]);
    let validity = Validity::from_now(Duration::from_secs(60));
    let delivered = |holds: bool| {
        receiver.events.lock().unwrap().iter().any(|(_, e)| {
            matches!(e, MeshEvent::Gossip { kind: TopicKind::Trades, envelope }
                if envelope.open::<TestReport>().is_ok_and(|r| r.holds == holds))
        })
    };
    let trades = |verdict: claw_mesh::GossipVerdict| {
        receiver
            .handle
            .counters()
            .gossip
            .iter()
            .find(|(kind, v, _)| *kind == TopicKind::Trades && *v == verdict)
            .map_or(0, |(_, _, n)| *n)
    };
    let report = |seq: u64, holds: bool| {
        Envelope::seal(&sender.identity, seq, validity, &TestReport { holds }).to_bytes()
    };

    // One the application finds true: accepted once it says so.
    sender
        .handle
        .publish(TopicKind::Trades, report(1, true))
        .await
        .unwrap();
    wait_until(Duration::from_secs(10), "the true report accepted", || {
        delivered(true) && trades(claw_mesh::GossipVerdict::Accepted) == 1
    })
    .await
    .expect("accepted");
    let before = receiver
        .handle
        .peer_score(sender.identity.peer_id())
        .await
        .unwrap()
        .expect("scored");
    assert!(before >= 0.0, "{before}");

    // One it finds false: never delivered, counted as rejected, and its sender pays for it.
    sender
        .handle
        .publish(TopicKind::Trades, report(2, false))
        .await
        .unwrap();
    wait_until(Duration::from_secs(10), "the false report rejected", || {
        trades(claw_mesh::GossipVerdict::Rejected) == 1
    })
    .await
    .expect("rejected");
    assert!(!delivered(false));
    let after = receiver
        .handle
        .peer_score(sender.identity.peer_id())
        .await
        .unwrap()
        .expect("scored");
    assert!(
        after < 0.0,
        "a false report cost nothing: {before} → {after}"
    );
    for node in nodes {
        node.stop().await;
    }
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct TestOffer {
    price: u64,
}

impl SignedPayload for TestOffer {
    const KIND: PayloadKind = PayloadKind::Offer;
}

#[derive(Debug, Serialize, Deserialize)]
struct TestBid {
    max_price: u64,
}

impl SignedPayload for TestBid {
    const KIND: PayloadKind = PayloadKind::Bid;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offers_are_delivered_verified_and_claims_on_the_wrong_topic_are_rejected() {
    let nodes = start_nodes(3, "localnet", None).await;
    wait_until(Duration::from_secs(20), "3 nodes", || all_see(&nodes, 3))
        .await
        .expect("converged");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let seller = &nodes[1].identity;
    let validity = Validity::from_now(Duration::from_secs(60));
    let offer = Envelope::seal(seller, 10, validity, &TestOffer { price: 1_200_000 }).to_bytes();
    nodes[1]
        .handle
        .publish(TopicKind::Offers, offer)
        .await
        .unwrap();
    wait_until(Duration::from_secs(10), "the offer at both peers", || {
        [&nodes[0], &nodes[2]].iter().all(|n| {
            n.events.lock().unwrap().iter().any(|(_, e)| {
                matches!(e, MeshEvent::Gossip { kind: TopicKind::Offers, envelope }
                    if envelope.open::<TestOffer>().is_ok_and(|o| o.price == 1_200_000)
                        && envelope.signer_peer_id() == seller.peer_id())
            })
        })
    })
    .await
    .expect("offer delivered");

    // Offers are independent objects: an older sequence published later still counts...
    let older = Envelope::seal(seller, 5, validity, &TestOffer { price: 900_000 }).to_bytes();
    nodes[1]
        .handle
        .publish(TopicKind::Offers, older)
        .await
        .unwrap();
    wait_until(Duration::from_secs(10), "the older offer too", || {
        nodes[0].events.lock().unwrap().iter().any(|(_, e)| {
            matches!(e, MeshEvent::Gossip { envelope, .. }
                if envelope.open::<TestOffer>().is_ok_and(|o| o.price == 900_000))
        })
    })
    .await
    .expect("older offer delivered");
    let bid_on_offers = Envelope::seal(seller, 11, validity, &TestBid { max_price: 1 }).to_bytes();
    nodes[1]
        .handle
        .publish(TopicKind::Offers, bid_on_offers)
        .await
        .unwrap();
    wait_until(Duration::from_secs(10), "the misplaced bid to be rejected", || {
        nodes[0].events.lock().unwrap().iter().any(|(_, e)| {
            matches!(e, MeshEvent::GossipRejected { reason, .. } if reason.contains("of kind offer"))
        })
    })
    .await
    .expect("misplaced bid rejected");
    let delivered_bids = nodes[2]
        .events
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, e)| {
            matches!(e, MeshEvent::Gossip { envelope, .. } if envelope.open::<TestBid>().is_ok())
        })
        .count();
    assert_eq!(delivered_bids, 0);
    // A sequence used again, re-signed with other content, is a replay (from another seller:
    // the first one has already lost its standing with node 0).
    let second = &nodes[2].identity;
    let first_offer = Envelope::seal(second, 5, validity, &TestOffer { price: 7 }).to_bytes();
    nodes[2]
        .handle
        .publish(TopicKind::Offers, first_offer)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let again = Envelope::seal(second, 5, validity, &TestOffer { price: 1 }).to_bytes();
    nodes[2]
        .handle
        .publish(TopicKind::Offers, again)
        .await
        .unwrap();
    wait_until(Duration::from_secs(10), "the re-used sequence to be rejected", || {
        nodes[0].events.lock().unwrap().iter().any(|(_, e)| {
            matches!(e, MeshEvent::GossipRejected { reason, .. } if reason.contains("replayed sequence 5"))
        })
    })
    .await
    .expect("replay rejected");

    for node in nodes {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_connect_over_quic_on_public_networks() {
    let mut config = test_config("localnet");
    config.quic = true;
    config.listen = vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()];
    let a = TestNode::start("quic-a", config.clone()).await;
    assert!(a.addr.to_string().contains("quic-v1"), "{}", a.addr);
    config.bootstrap = vec![a.addr.clone()];
    let b = TestNode::start("quic-b", config).await;
    wait_until(Duration::from_secs(15), "two QUIC nodes to meet", || {
        a.sees().len() == 2 && b.sees().len() == 2
    })
    .await
    .expect("QUIC mesh formed");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_rejoins_through_the_peers_it_remembers() {
    let dir = tempfile::tempdir().unwrap();
    let seed = TestNode::start("seed", test_config("localnet")).await;
    let identity = Arc::new(NodeIdentity::generate());
    let mut config = test_config("localnet");
    config.known_peers_file = Some(dir.path().join("known-peers.json"));
    config.bootstrap = vec![seed.addr.clone()];
    let first = TestNode::start_with(identity.clone(), "returning", config.clone(), true).await;
    wait_until(Duration::from_secs(15), "the first meeting", || {
        seed.sees().len() == 2
    })
    .await
    .expect("met");
    first.stop().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let remembered = std::fs::read_to_string(dir.path().join("known-peers.json")).unwrap();
    assert!(
        remembered.contains(&seed.peer_id().to_string()),
        "{remembered}"
    );

    config.bootstrap.clear();
    let again = TestNode::start_with(identity, "returning", config, true).await;
    wait_until(
        Duration::from_secs(15),
        "the restarted node to rejoin",
        || again.sees().len() == 2,
    )
    .await
    .expect("rejoined without a bootstrap list");
    seed.stop().await;
    again.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_and_closest_peers_through_kademlia() {
    let nodes = start_nodes(6, "localnet", None).await;
    wait_until(Duration::from_secs(20), "6 nodes", || all_see(&nodes, 6))
        .await
        .expect("converged");
    nodes[1]
        .handle
        .put_record("price-index/h100", b"1.20".to_vec())
        .await
        .unwrap();
    let found = nodes[4]
        .handle
        .get_record("price-index/h100")
        .await
        .unwrap();
    assert_eq!(found.as_deref(), Some(&b"1.20"[..]));
    assert_eq!(
        nodes[4].handle.get_record("nothing-here").await.unwrap(),
        None
    );
    let closest = nodes[2]
        .handle
        .closest_peers(nodes[5].peer_id())
        .await
        .unwrap();
    assert!(closest.contains(&nodes[5].peer_id()), "{closest:?}");
    for node in nodes {
        node.stop().await;
    }
}

/// A node counts inbound connections by source address: from one address (loopback here, where
/// every peer of this test lives) it takes no more than its cap, however many keys dial it, and a
/// closed connection makes room again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_gets_no_more_inbound_connections_than_its_cap() {
    let guarded = TestNode::start_with(
        Arc::new(NodeIdentity::generate()),
        "guarded",
        claw_mesh::MeshConfig {
            allow_colocated_peers: false,
            max_inbound_per_ip: 2,
            ..test_config("caps")
        },
        false,
    )
    .await;
    let mut sybils = Vec::new();
    for i in 0..4 {
        let sybil = TestNode::start_with(
            Arc::new(NodeIdentity::generate()),
            &format!("sybil-{i}"),
            test_config("caps"),
            false,
        )
        .await;
        let _ = sybil.handle.dial(guarded.addr.clone()).await;
        sybils.push(sybil);
    }
    let guarded_id = guarded.peer_id();
    let mut connected = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        connected.clear();
        for (i, sybil) in sybils.iter().enumerate() {
            if sybil
                .handle
                .connected_peers()
                .await
                .expect("runs")
                .contains(&guarded_id)
            {
                connected.push(i);
            }
        }
        if connected.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Give refused dials time to be refused, then count again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let inbound = guarded.handle.connected_peers().await.expect("runs");
    assert_eq!(inbound.len(), 2, "{inbound:?}");

    // One of them leaves: another key from the same address gets its place (it dials again
    // until the node has seen the departure).
    let leaving = connected[0];
    let left = sybils[leaving].peer_id();
    sybils.remove(leaving).stop().await;
    let waiting: Vec<usize> = (0..sybils.len())
        .filter(|i| !inbound.contains(&sybils[*i].peer_id()))
        .collect();
    let next = &sybils[waiting[0]];
    let mut taken = false;
    for _ in 0..100 {
        let now = guarded.handle.connected_peers().await.expect("runs");
        if now.contains(&next.peer_id()) {
            taken = true;
            break;
        }
        if !now.contains(&left) {
            let _ = next.handle.dial(guarded.addr.clone()).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        taken,
        "the freed slot was taken by the next peer from that address"
    );
    assert_eq!(
        guarded.handle.connected_peers().await.expect("runs").len(),
        2
    );
    for sybil in sybils {
        sybil.stop().await;
    }
    guarded.stop().await;
}

/// A stranger uses a node's AutoNAT server as a reflector: it asks to be "dialled back" at its
/// own address and at a third host's (same port, another IP). The node dials only the IP the
/// stranger connected from: the stranger is found reachable there, and the third host hears
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reachability_probe_never_dials_a_third_host() {
    use futures::StreamExt as _;
    use libp2p::{autonat, swarm::SwarmEvent};

    let node = TestNode::start(
        "prober-target",
        claw_mesh::MeshConfig {
            // Answer probes from loopback peers at all (by default they are refused outright).
            nat_probe_private_addresses: true,
            ..test_config("autonat")
        },
    )
    .await;

    // The stranger: a bare libp2p peer with only its own key.
    let mut stranger = common::stranger(|key| {
        autonat::Behaviour::new(
            key.public().to_peer_id(),
            autonat::Config {
                boot_delay: Duration::from_millis(100),
                use_connected: false,
                only_global_ips: false,
                ..autonat::Config::default()
            },
        )
    });
    stranger
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr"))
        .expect("listen");
    let own = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = stranger.select_next_some().await {
            break address;
        }
    };
    let port = own
        .iter()
        .find_map(|p| match p {
            libp2p::multiaddr::Protocol::Tcp(port) => Some(port),
            _ => None,
        })
        .expect("a TCP port");

    // The third host: a TCP listener at the same port on another loopback address, counting
    // connections.
    let victim = std::net::TcpListener::bind(("127.0.0.2", port)).expect("bind 127.0.0.2");
    victim.set_nonblocking(true).expect("nonblocking");
    let knocks = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = Arc::clone(&knocks);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = Arc::clone(&stop);
    let watcher = std::thread::spawn(move || {
        while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
            if victim.accept().is_ok() {
                counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    });

    stranger
        .behaviour_mut()
        .add_server(node.peer_id(), Some(node.addr.clone()));
    // Connected first, from a port of its own (its listening port is the one to be probed).
    stranger
        .dial(
            libp2p::swarm::dial_opts::DialOpts::peer_id(node.peer_id())
                .addresses(vec![node.addr.clone()])
                .allocate_new_port()
                .build(),
        )
        .expect("dial");
    loop {
        if let SwarmEvent::ConnectionEstablished { .. } = stranger.select_next_some().await {
            break;
        }
    }
    let victim_addr: libp2p::Multiaddr = format!("/ip4/127.0.0.2/tcp/{port}")
        .parse()
        .expect("multiaddr");
    stranger.behaviour_mut().probe_address(victim_addr);

    let answer = tokio::time::timeout(Duration::from_secs(40), async {
        loop {
            if let SwarmEvent::Behaviour(autonat::Event::OutboundProbe(probe)) =
                stranger.select_next_some().await
            {
                match probe {
                    autonat::OutboundProbeEvent::Response { address, .. } => {
                        break Some(address);
                    }
                    autonat::OutboundProbeEvent::Error { error, .. } => {
                        eprintln!("the probe failed: {error:?}");
                        break None;
                    }
                    autonat::OutboundProbeEvent::Request { .. } => {}
                }
            }
        }
    })
    .await
    .expect("the node answered the probe within 40 s");
    // Give any dial the node might have made time to land.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    watcher.join().expect("watcher");
    let found = answer.expect("the stranger's own address was dialled back");
    assert!(
        found
            .to_string()
            .starts_with(&format!("/ip4/127.0.0.1/tcp/{port}")),
        "dialled back at the IP it came from: {found}"
    );
    assert_eq!(
        knocks.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "the node never connected to the third host"
    );
    node.stop().await;
}

/// A node that trusts one fleet operator sees four peers: one the operator admitted, one with
/// no credential, one that signed its own, and one announcing a copy of the member's. All four
/// stay in its view (market counterparties), but only the admitted one is a fleet member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_peers_a_trusted_operator_admitted_are_fleet_members() {
    use claw_mesh::{FleetMembership, Standing};

    let operator = NodeIdentity::generate();
    let observer = TestNode::start_with(
        Arc::new(NodeIdentity::generate()),
        "observer",
        claw_mesh::MeshConfig {
            fleet_operators: vec![operator.peer_id()],
            ..test_config("members")
        },
        true,
    )
    .await;
    let day = Duration::from_secs(86_400);
    let mut peers = Vec::new();
    for name in ["member", "bare", "self-signed", "copycat"] {
        let mut config = test_config("members");
        config.bootstrap = vec![observer.addr.clone()];
        peers.push(
            TestNode::start_with(Arc::new(NodeIdentity::generate()), name, config, false).await,
        );
    }
    let admitted = FleetMembership::issue(&operator, peers[0].peer_id(), "members", day);
    let credentials = [
        Some(admitted.clone()),
        None,
        Some(FleetMembership::issue(
            &peers[2].identity,
            peers[2].peer_id(),
            "members",
            day,
        )),
        Some(admitted),
    ];
    let announcing: Vec<_> = peers
        .iter()
        .zip(credentials)
        .zip(["member", "bare", "self-signed", "copycat"])
        .map(|((peer, credential), name)| {
            let (identity, handle) = (Arc::clone(&peer.identity), peer.handle.clone());
            tokio::spawn(async move {
                for seq in 1.. {
                    let mut claim = announcement(name, "members");
                    claim.membership = credential.clone();
                    let _ = handle.announce(sign(&identity, seq, &claim)).await;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            })
        })
        .collect();
    wait_until(
        Duration::from_secs(30),
        "the observer to see all five",
        || observer.sees().len() == 5,
    )
    .await
    .expect("all in view");
    let members: Vec<_> = observer
        .handle
        .fleet_members()
        .into_iter()
        .map(|m| m.peer_id)
        .collect();
    assert_eq!(members, vec![peers[0].peer_id()], "only the admitted peer");
    for member in observer.handle.fleet() {
        let expected_member = member.peer_id == peers[0].peer_id();
        match member.standing {
            Standing::Member { operator: by, .. } => {
                assert!(expected_member, "{}", member.announcement.name);
                assert_eq!(by, operator.peer_id());
            }
            Standing::Stranger => assert!(!expected_member),
            Standing::Open => panic!("a node that trusts an operator has no open standing"),
        }
    }
    // A node that trusts no operator counts everyone.
    let open = peers[1].handle.fleet_members();
    assert!(open.len() >= 2, "an open node counts every peer it sees");
    for task in announcing {
        task.abort();
    }
    for peer in peers {
        peer.stop().await;
    }
    observer.stop().await;
}

/// One host with many keys (six Sybils on one address) joins a node that counts addresses: the
/// node keeps all of them in its fleet view and can call each, but its Kademlia routing table
/// holds at most two peers from that address, so the host cannot answer every lookup. A node
/// for local fleets (no counting) routes them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_holds_two_routing_slots_however_many_keys_it_has() {
    let guarded = TestNode::start_with(
        Arc::new(NodeIdentity::generate()),
        "guarded",
        claw_mesh::MeshConfig {
            allow_colocated_peers: false,
            max_inbound_per_ip: 32,
            max_inbound_per_network: 64,
            ..test_config("routing")
        },
        true,
    )
    .await;
    let open = TestNode::start("open", test_config("routing")).await;
    let mut sybils = Vec::new();
    for i in 0..6 {
        let mut config = test_config("routing");
        config.bootstrap = vec![guarded.addr.clone(), open.addr.clone()];
        sybils.push(TestNode::start(&format!("sybil-{i}"), config).await);
    }
    wait_until(
        Duration::from_secs(30),
        "the guarded node to see all eight",
        || guarded.sees().len() == 8,
    )
    .await
    .expect("every node in the guarded view");
    wait_until(
        Duration::from_secs(30),
        "the open node to route all seven others",
        || open.handle.counters().routing_table_peers >= 7,
    )
    .await
    .expect("the open node routes everyone");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let routed = guarded.handle.counters().routing_table_peers;
    assert!(
        (1..=2).contains(&routed),
        "one address holds at most two routing slots: {routed}"
    );
    for sybil in &sybils {
        guarded
            .handle
            .invoke(
                sybil.peer_id(),
                InvokeRequest::new("echo", Duration::from_secs(5)),
            )
            .await
            .expect("every node in the view can still be called");
    }
    for sybil in sybils {
        sybil.stop().await;
    }
    open.stop().await;
    guarded.stop().await;
}

/// A node whose inbound slots strangers fill (bare peers that subscribe to nothing and only hold
/// a connection) still admits a fleet node that joins late: taking the last slot makes it drop
/// the least useful inbound peer, one of the strangers, and the late joiner stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_finds_room_at_a_full_node() {
    use futures::StreamExt as _;
    use libp2p::{ping, swarm::SwarmEvent};

    let full = TestNode::start_with(
        Arc::new(NodeIdentity::generate()),
        "full",
        claw_mesh::MeshConfig {
            max_connections: 6,
            reserved_outbound: 2,
            ..test_config("eviction")
        },
        true,
    )
    .await;
    // Four strangers take the node's four inbound slots.
    let (fill_tx, mut fill_rx) = tokio::sync::mpsc::channel(16);
    let mut strangers = Vec::new();
    for _ in 0..4 {
        let target = full.addr.clone();
        let fill_tx = fill_tx.clone();
        strangers.push(tokio::spawn(async move {
            let mut swarm = common::stranger(|_| ping::Behaviour::new(ping::Config::new()));
            swarm.dial(target).expect("dial");
            loop {
                match swarm.select_next_some().await {
                    SwarmEvent::ConnectionEstablished { .. } => {
                        let _ = fill_tx.send(true).await;
                    }
                    SwarmEvent::ConnectionClosed { .. } => {
                        let _ = fill_tx.send(false).await;
                    }
                    _ => {}
                }
            }
        }));
    }
    let mut connected = 0;
    while connected < 4 {
        match tokio::time::timeout(Duration::from_secs(10), fill_rx.recv()).await {
            Ok(Some(true)) => connected += 1,
            Ok(Some(false)) => connected -= 1,
            _ => panic!("the strangers could not all connect"),
        }
    }
    // Past their grace, a fleet node joins late.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let mut config = test_config("eviction");
    config.bootstrap = vec![full.addr.clone()];
    let late = TestNode::start("late", config).await;
    wait_until(
        Duration::from_secs(30),
        "the late joiner and the full node to see each other",
        || late.sees().contains(&full.peer_id()) && full.sees().contains(&late.peer_id()),
    )
    .await
    .expect("the late joiner was admitted");
    let dropped = tokio::time::timeout(Duration::from_secs(5), fill_rx.recv())
        .await
        .expect("a stranger was dropped");
    assert_eq!(dropped, Some(false), "a stranger's connection closed");
    for stranger in strangers {
        stranger.abort();
    }
    late.stop().await;
    full.stop().await;
}

/// A Sybil with 500 keys on one host (127.0.5.5, every key dialling and dialling again while
/// refused, each speaking the fleet's gossip and forwarding nothing) attacks a buyer that
/// counts addresses, as every node on a public network does. From the attacker's side with
/// only its own keys it gets no more than the per-address cap of the buyer's connections; a
/// node that joins late through the buyer is admitted, and an honest provider's offer reaches
/// the buyer and the late joiner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_sybil_keys_on_one_host_neither_isolate_a_late_joiner_nor_hide_an_offer() {
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::StreamExt as _;
    use libp2p::swarm::SwarmEvent;

    const SYBILS: usize = 500;
    let network = "sybil";
    let public = || claw_mesh::MeshConfig {
        allow_colocated_peers: false,
        ..test_config(network)
    };
    let cap = public().max_inbound_per_ip as usize;
    let buyer =
        TestNode::start_with(Arc::new(NodeIdentity::generate()), "buyer", public(), true).await;
    let provider = TestNode::start(
        "provider",
        claw_mesh::MeshConfig {
            bootstrap: vec![buyer.addr.clone()],
            ..public()
        },
    )
    .await;
    wait_until(
        Duration::from_secs(30),
        "the buyer to see the provider",
        || buyer.sees().contains(&provider.peer_id()),
    )
    .await
    .expect("the provider joined");

    // The attack: 500 keys from one host.
    let sybil_host = std::net::Ipv4Addr::new(127, 0, 5, 5);
    let established = Arc::new(AtomicUsize::new(0));
    let mut sybil_ids = HashSet::new();
    let mut attackers = Vec::new();
    for _ in 0..SYBILS {
        let mut swarm = common::sybil(sybil_host, network);
        sybil_ids.insert(*swarm.local_peer_id());
        let target = buyer.addr.clone();
        let established = Arc::clone(&established);
        attackers.push(tokio::spawn(async move {
            let mut connected = false;
            let mut redial = tokio::time::interval(Duration::from_secs(2));
            loop {
                tokio::select! {
                    _ = redial.tick() => {
                        if !connected {
                            let _ = swarm.dial(target.clone());
                        }
                    }
                    event = swarm.select_next_some() => match event {
                        SwarmEvent::ConnectionEstablished { .. } => {
                            connected = true;
                            established.fetch_add(1, Ordering::Relaxed);
                        }
                        SwarmEvent::ConnectionClosed { num_established: 0, .. } => {
                            connected = false;
                        }
                        _ => {}
                    },
                }
            }
        }));
    }
    let sybils_at_buyer = || async {
        buyer
            .handle
            .connected_peers()
            .await
            .expect("the buyer runs")
            .into_iter()
            .filter(|peer| sybil_ids.contains(peer))
            .count()
    };
    // Every key has dialled at least twice by now; the buyer is sampled all along.
    let mut most = 0;
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        most = most.max(sybils_at_buyer().await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "{} Sybil connections established from the attacker's side; at most {most} held at \
         the buyer at once (cap {cap})",
        established.load(Ordering::Relaxed)
    );
    assert!(
        established.load(Ordering::Relaxed) > 0,
        "the Sybil keys reached the buyer at all"
    );
    assert!(
        (1..=cap).contains(&most),
        "one host holds at most {cap} of the buyer's connections, however many keys: {most}"
    );

    // A node joining late through the buyer, while the attack goes on, is admitted.
    let late = TestNode::start(
        "late",
        claw_mesh::MeshConfig {
            bootstrap: vec![buyer.addr.clone()],
            ..public()
        },
    )
    .await;
    wait_until(
        Duration::from_secs(30),
        "the late joiner and the buyer to see each other",
        || late.sees().contains(&buyer.peer_id()) && buyer.sees().contains(&late.peer_id()),
    )
    .await
    .expect("the late joiner was admitted");

    // The honest provider's offer reaches the buyer and the late joiner.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let seller = &provider.identity;
    let validity = Validity::from_now(Duration::from_secs(60));
    let offer = Envelope::seal(seller, 42, validity, &TestOffer { price: 4_200_000 }).to_bytes();
    provider
        .handle
        .publish(TopicKind::Offers, offer)
        .await
        .expect("published");
    wait_until(
        Duration::from_secs(15),
        "the offer at the buyer and the late joiner",
        || {
            [&buyer, &late].iter().all(|n| {
                n.events.lock().unwrap().iter().any(|(_, e)| {
                    matches!(e, MeshEvent::Gossip { kind: TopicKind::Offers, envelope }
                    if envelope.open::<TestOffer>().is_ok_and(|o| o.price == 4_200_000)
                        && envelope.signer_peer_id() == seller.peer_id())
                })
            })
        },
    )
    .await
    .expect("the honest offer got through");
    assert!(sybils_at_buyer().await <= cap, "still no more than the cap");

    for attacker in attackers {
        attacker.abort();
    }
    late.stop().await;
    provider.stop().await;
    buyer.stop().await;
}
