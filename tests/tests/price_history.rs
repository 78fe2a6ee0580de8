//! Price history across separate `clawnode run` processes on the embedded chain and the real
//! Docker Engine: a provider sells at three prices through escrow and at a fourth as a stream, a
//! buyer leases and ends each lease, and every node, the arbiter that took no part, and a node
//! that joins only afterwards, answers `market.history` with exactly those trades, their
//! settlements (a stream's: its newest pull) and their percentiles. A forger with only its own
//! keys gossips trade reports that the chain does not back, or that claim another provider's
//! settlement or another lease's pull, or that are not its own to report; no history keeps
//! them, the first node passes none of them on, the ones the chain does not bear out cost nothing,
//! and one its own evidence refutes costs its sender so much that the node stops hearing it.

// Shared with the console's tests, which also use its frame support.
#[path = "console/browser.rs"]
#[allow(dead_code)]
mod browser;

use std::time::Duration;

use claw_attestation::{Envelope, NodeIdentity, SignedPayload, Validity};
use claw_market::history::TradeReport;
use claw_market::lease::{LeaseAcceptance, LeaseTerms, Signed};
use claw_tests::{
    Arbiter, Clawnode, Localnet, MarketNode as Node, SIMULATED_MODEL as MODEL, eventually,
    eventually_showing, units,
};
use claw_tests::{check_contract, metric, plugin_fields, required_part};
use serde_json::{Value, json};

/// A workload that runs until stopped, and stops at once on SIGTERM.
const SERVE: [&str; 3] = ["sh", "-c", "trap 'exit 0' TERM; sleep 300 & wait"];
const PRICES: [&str; 3] = ["2", "3", "5"];
/// The streaming lease's price.
const STREAM_PRICE: &str = "4";
const REGION: &str = "eu-west";

fn now_ms() -> u64 {
    claw_attestation::unix_millis(std::time::SystemTime::now())
}

/// `payload` signed by `identity`, valid for an hour from now.
fn seal<T: SignedPayload>(identity: &NodeIdentity, seq: u64, payload: &T) -> Vec<u8> {
    Envelope::seal(
        identity,
        seq,
        Validity::from_now(Duration::from_secs(3600)),
        payload,
    )
    .to_bytes()
}

fn signed<T: SignedPayload>(identity: &NodeIdentity, seq: u64, payload: &T) -> Signed<T> {
    let verified = claw_attestation::Verifier::new()
        .verify_ignoring_time(&seal(identity, seq, payload))
        .expect("own envelope");
    Signed::from_verified(&verified).expect("own payload")
}

/// The trades and days of `node`'s history, when it holds `count` trades.
fn history_of(node: &Node, count: usize) -> Option<Value> {
    let history = node.ok("market.history", &json!({"model": MODEL}));
    (history["trades"].as_array()?.len() == count
        && history["trades"]
            .as_array()?
            .iter()
            .all(|t| t["region"] == REGION))
    .then_some(history)
}

/// The forger's answers: its made-up reports to a node catching up, and nothing else.
struct ForgedCatchUp(Vec<String>);

impl claw_mesh::InvokeHandler for ForgedCatchUp {
    fn handle(
        &self,
        _caller: claw_mesh::PeerId,
        request: claw_mesh::InvokeRequest,
    ) -> claw_mesh::HandlerFuture {
        let reports = self.0.clone();
        Box::pin(async move {
            if request.command == "market.trades.signed" {
                claw_mesh::InvokeResponse::Ok(json!({ "reports": reports }))
            } else {
                claw_mesh::InvokeResponse::Error(claw_mesh::InvokeFailure::new(
                    claw_mesh::ErrorCode::UnknownCommand,
                    format!("no command {}", request.command),
                ))
            }
        })
    }
}

#[test]
fn settled_leases_make_a_price_history_every_node_checks_on_chain() {
    let Some(image) = required_part(
        "CLAW_TEST_IMAGE",
        "the Docker Engine and the local busybox test image",
    ) else {
        return;
    };
    let Some(chromium) = required_part("CLAW_CHROMIUM", "headless Chromium (Debian's chromium)")
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let buyer_cli = Node::init(Clawnode::new(&dir.path().join("buyer")), 0);
    buyer_cli.configure_market("", "");
    let localnet = Localnet::start(&buyer_cli);
    let chain = localnet.chain_config();
    let arbiter_node = Arbiter::start(&dir.path().join("arbiter"), &chain);
    let market = |extra: &str| arbiter_node.market_config(extra);
    let arbiter = &arbiter_node.node;
    let provider_cli = Node::init(Clawnode::new(&dir.path().join("provider")), 1);
    provider_cli.configure_market(
        &market(&format!("price_per_gpu_hour = {:?}\n", PRICES[0])),
        &chain,
    );
    provider_cli.edit_config(|text| format!("[node]\nregion = {REGION:?}\n\n{text}"));
    let provider = Node::start(provider_cli, &arbiter.addrs());
    buyer_cli.configure_market(&market(""), "");
    buyer_cli.ok(&["wallet", "airdrop", "--sol", "5", "--molt", "100"]);
    let buyer = Node::start(buyer_cli, &arbiter.addrs());

    // One lease at each price, ended after a few seconds: settled pro rata, the provider paid.
    let mut settlements = Vec::new();
    for price in PRICES {
        provider.ok("market.sell", &json!({"price_per_gpu_hour": price}));
        eventually(
            Duration::from_secs(30),
            &format!("the offer at {price} in the buyer's book"),
            || {
                let offers = buyer.ok("market.offers", &json!({}));
                (offers["offers"][0]["price_per_gpu_hour"] == price).then_some(())
            },
        );
        let bid = json!({
            "models": [MODEL], "gpus": 1, "hours": 1, "max_price": price,
            "accept_simulated": true,
            "workload": {"image": image, "command": SERVE},
        });
        let leased = buyer.ok("market.bid", &bid);
        assert_eq!(leased["lease"]["state"], "running", "{leased}");
        let lease = leased["lease"]["lease_id"].as_str().expect("id").to_owned();
        std::thread::sleep(Duration::from_secs(2));
        let settled = buyer.ok("market.lease.cancel", &json!({"lease_id": lease}));
        assert_eq!(settled["state"], "settled", "{settled}");
        settlements.push((
            lease,
            settled["settlement_signature"]
                .as_str()
                .expect("signature")
                .to_owned(),
            settled["to_provider"].as_str().expect("paid").to_owned(),
        ));
    }

    // A streaming lease: the provider pulls what it earns from the buyer's allowance, and its
    // newest pull is the lease's evidence.
    provider.cli.ok(&["wallet", "airdrop", "--sol", "2"]);
    let provider_before = units(&provider.molt());
    provider.ok("market.sell", &json!({"price_per_gpu_hour": STREAM_PRICE}));
    eventually(
        Duration::from_secs(30),
        "the streaming offer in the buyer's book",
        || {
            let offers = buyer.ok("market.offers", &json!({}));
            (offers["offers"][0]["price_per_gpu_hour"] == STREAM_PRICE).then_some(())
        },
    );
    let streamed = buyer.ok(
        "market.bid",
        &json!({
            "models": [MODEL], "gpus": 1, "hours": 1, "max_price": STREAM_PRICE,
            "accept_simulated": true, "payment": "stream",
            "workload": {"image": image, "command": SERVE},
        }),
    );
    assert_eq!(streamed["lease"]["state"], "running", "{streamed}");
    let stream = streamed["lease"]["lease_id"]
        .as_str()
        .expect("id")
        .to_owned();
    eventually(Duration::from_secs(20), "the provider pulling", || {
        (units(&provider.molt()) > provider_before).then_some(())
    });
    buyer.ok("market.lease.cancel", &json!({"lease_id": stream}));
    eventually(
        Duration::from_secs(30),
        "the stream settled on the provider",
        || {
            let leases = provider.ok("market.leases", &json!({"state": "settled"}));
            leases["leases"]
                .as_array()?
                .iter()
                .any(|l| l["lease_id"] == stream.as_str())
                .then_some(())
        },
    );
    let pulled = units(&provider.molt()) - provider_before;

    // The arbiter took part in none of them, and has them all, each as the chain shows it.
    let history = eventually(
        Duration::from_secs(40),
        "four trades in the arbiter's history",
        || history_of(arbiter, 4),
    );
    // What the plugin reads of it (the bridge relays a member's answer as is).
    check_contract(&plugin_fields(), "market.history", &history);
    let trades = history["trades"].as_array().expect("trades");
    // Newest first: the stream, paid by pulls the chain shows, the newest its evidence.
    let streamed = &trades[0];
    assert_eq!(streamed["lease_id"], stream.as_str(), "{streamed}");
    assert_eq!(streamed["payment"], "stream", "{streamed}");
    assert_eq!(streamed["price_per_gpu_hour"], STREAM_PRICE, "{streamed}");
    let newest_pull = units(streamed["paid_to_provider"].as_str().expect("paid"));
    assert!(
        newest_pull > 0 && newest_pull <= pulled,
        "the newest pull paid {newest_pull} of the {pulled} pulled: {streamed}"
    );
    let pull_signature = streamed["settlement"]
        .as_str()
        .expect("the newest pull")
        .to_owned();
    assert!(
        settlements.iter().all(|(_, s, _)| *s != pull_signature),
        "{streamed}"
    );
    for (trade, (lease, signature, paid)) in trades.iter().rev().zip(&settlements) {
        assert_eq!(trade["payment"], "escrow", "{trade}");
        assert_eq!(trade["lease_id"], lease.as_str(), "{trade}");
        assert_eq!(trade["settlement"], signature.as_str());
        assert_eq!(trade["paid_to_provider"], paid.as_str());
        assert_eq!(trade["provider"], provider.peer_id);
        assert_eq!(trade["buyer"], buyer.peer_id);
        assert_eq!(
            (trade["gpus"].as_u64(), trade["hours"].as_u64()),
            (Some(1), Some(1))
        );
        assert_eq!(trade["simulated"], true);
    }
    let prices: Vec<&str> = trades
        .iter()
        .rev()
        .filter_map(|t| t["price_per_gpu_hour"].as_str())
        .collect();
    assert_eq!(prices, [PRICES[0], PRICES[1], PRICES[2], STREAM_PRICE]);
    let days = history["days"].as_array().expect("days");
    assert_eq!(days.len(), 1, "{history}");
    assert_eq!(
        days[0],
        json!({
            "day": claw_market::history::utc_day(trades[0]["settled_ms"].as_u64().expect("time")),
            "gpu_model": MODEL, "region": REGION, "simulated": true,
            "trades": 4, "gpu_hours": 4, "min": "2", "p50": "3", "p90": "5", "max": "5",
        })
    );
    // The parties answer the same; filters narrow it.
    for party in [&provider, &buyer] {
        assert_eq!(
            history_of(party, 4).map(|h| h["days"].clone()),
            Some(history["days"].clone())
        );
    }
    let elsewhere = arbiter.ok("market.history", &json!({"region": "us-east"}));
    assert_eq!(elsewhere["matching"], 0, "{elsewhere}");
    let later = arbiter.ok("market.history", &json!({"since_ms": now_ms() + 60_000}));
    assert_eq!(later["trades"], json!([]));
    let table = arbiter.cli.ok(&["market", "history"]).stdout;
    assert!(
        table.contains(MODEL) && table.contains("eu-west") && table.contains("P50"),
        "{table}"
    );

    // The buyer's console shows its leases with their escrow and settlement, and the chart.
    let mut page = browser::Browser::launch(&chromium);
    let control =
        std::fs::read_to_string(buyer.cli.data_dir().join("control.addr")).expect("address");
    let token = std::fs::read_to_string(buyer.cli.data_dir().join("control.token")).expect("token");
    page.navigate(&format!("http://{}/console", control.trim()));
    page.wait_until(
        "the login prompt",
        "!document.getElementById('login').hidden",
    );
    page.sign_in(&token);
    page.wait_until("the console", "!document.getElementById('app').hidden");
    page.eval("document.querySelector('[data-tab=market]').click(); true");
    for (lease, signature, _) in &settlements {
        let row = format!("document.querySelector('#leases .row[data-lease=\"{lease}\"]')");
        page.wait_until(
            &format!("lease {lease} in the console"),
            &format!("{row} !== null"),
        );
        let text = page.eval(&format!("{row}.textContent"));
        let text = text.as_str().unwrap_or_default();
        assert!(
            text.contains("settled") && text.contains(signature.as_str()),
            "{text}"
        );
        let vault = buyer.ok("market.leases", &json!({}))["leases"]
            .as_array()
            .and_then(|all| {
                all.iter()
                    .find(|l| l["lease_id"] == lease.as_str())
                    .cloned()
            })
            .map(|l| l["vault"].as_str().unwrap_or_default().to_owned())
            .expect("the lease's vault");
        assert!(!vault.is_empty() && text.contains(&vault), "{text}");
    }
    page.wait_until(
        "the price chart",
        &format!(
            "document.getElementById('history').textContent.includes('median 3, 4 leases on {}')",
            days[0]["day"].as_str().expect("day")
        ),
    );
    page.screenshot(
        &std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("console-screenshots/market.png"),
    );
    drop(page);

    // The forger: its own node key, and a second key posing as its buyer.
    let forger = NodeIdentity::generate();
    let accomplice = NodeIdentity::generate();
    let receipts = provider.ok("market.receipts", &json!({}));
    let verifier = claw_attestation::Verifier::new();
    let open = |text: &Value| {
        verifier
            .verify_ignoring_time(
                &base64::Engine::decode(
                    &base64::engine::general_purpose::STANDARD,
                    text.as_str().expect("evidence"),
                )
                .expect("base-64"),
            )
            .expect("signed evidence")
    };
    // An escrow lease's receipt: its terms, acceptance and settlement.
    let (honest_terms, honest_acceptance, honest_settlement) = receipts["receipts"]
        .as_array()
        .expect("receipts")
        .iter()
        .find_map(|receipt| {
            let terms: Signed<LeaseTerms> =
                Signed::from_verified(&open(&receipt["terms"])).expect("terms");
            let acceptance: Signed<LeaseAcceptance> =
                Signed::from_verified(&open(&receipt["acceptance"])).expect("acceptance");
            let lease = terms.payload().lease_id.to_string();
            let (_, settlement, _) = settlements.iter().find(|(l, _, _)| *l == lease)?;
            Some((terms, acceptance, settlement.clone()))
        })
        .expect("an escrow lease's receipt");
    // Terms the forger signs, accepted by its accomplice, reported with `settlement`.
    let forged_report = |terms: &LeaseTerms, seq: u64, settlement: String| {
        let terms = signed(&forger, seq, terms);
        TradeReport {
            acceptance: signed(
                &accomplice,
                seq + 1,
                &LeaseAcceptance::of(&terms).expect("acceptance"),
            ),
            terms,
            settlement,
            region: Some("nowhere".to_owned()),
        }
    };
    // 1. A lease with itself at 0.01 that never happened: the settlement is made up.
    let mut dealt = honest_terms.payload().clone();
    dealt.price_per_gpu_hour = "0.01".parse().expect("price");
    dealt.amount = dealt.price_per_gpu_hour;
    dealt.buyer_peer = accomplice.peer_id().to_string();
    dealt.lease_id =
        claw_market::lease::LeaseId::derive(&dealt.bid_digest, &forger.public_key().to_bytes());
    let made_up = forged_report(
        &dealt,
        10,
        solana_signature::Signature::from([7u8; 64]).to_string(),
    );
    // 2. The honest lease's real settlement, claimed by terms the forger signed at 0.01: the
    //    escrow (derived from the lease id and the buyer's wallet) is the honest one.
    let mut claimed = honest_terms.payload().clone();
    claimed.price_per_gpu_hour = "0.01".parse().expect("price");
    claimed.amount = claimed.price_per_gpu_hour;
    claimed.buyer_peer = accomplice.peer_id().to_string();
    let stolen = forged_report(&claimed, 12, honest_settlement.clone());
    // 4. The stream's newest pull, claimed for a lease the forger made up between the same two
    //    wallets at 100: the pull's memo names the honest stream, not this lease.
    let mut wash = honest_terms.payload().clone();
    wash.price_per_gpu_hour = "100".parse().expect("price");
    wash.amount = wash.price_per_gpu_hour;
    wash.payment = claw_market::lease::Payment::Stream { pull_secs: 5 };
    wash.buyer_peer = accomplice.peer_id().to_string();
    wash.bid_digest[0] ^= 1;
    wash.lease_id =
        claw_market::lease::LeaseId::derive(&wash.bid_digest, &forger.public_key().to_bytes());
    let washed = forged_report(&wash, 14, pull_signature.clone());
    // 3. The honest evidence, reported by someone who is neither party, with its own region.
    let not_its_own = TradeReport {
        terms: honest_terms,
        acceptance: honest_acceptance,
        settlement: honest_settlement,
        region: Some("nowhere".to_owned()),
    };
    let metrics = || {
        arbiter
            .running
            .as_ref()
            .expect("the arbiter runs")
            .scrape_metrics()
    };
    let verdicts = |text: &str| {
        ["accepted", "ignored", "rejected"].map(|verdict| {
            metric(
                text,
                &format!(r#"clawnode_gossip_messages_total{{topic="trades",verdict="{verdict}"}}"#),
            )
            .unwrap_or(0.0)
        })
    };
    let before = verdicts(&metrics());
    // The two whose transaction the chain does not show for them go first, the two their own
    // evidence refutes after: a refuted report costs its forwarder enough that the arbiter
    // stops taking its gossip at all, and anything sent after it would not be checked.
    let reports = [
        (20, &made_up),
        (21, &washed),
        (22, &stolen),
        (23, &not_its_own),
    ]
    .map(|(seq, report)| seal(&forger, seq, report));
    let forged: Vec<String> = reports
        .iter()
        .map(|bytes| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes))
        .collect();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    // A node of the attacker's own, in this process, joining through the arbiter.
    let spawn_mesh = |identity: &NodeIdentity, catch_up: Vec<String>| {
        let config = claw_mesh::MeshConfig {
            network: "localnet".to_owned(),
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr")],
            bootstrap: arbiter
                .addrs()
                .iter()
                .filter_map(|a| a.parse().ok())
                .collect(),
            allow_colocated_peers: true,
            ..claw_mesh::MeshConfig::default()
        };
        let _entered = runtime.enter();
        claw_mesh::Mesh::spawn(
            identity,
            config,
            std::sync::Arc::new(ForgedCatchUp(catch_up)),
        )
        .expect("the attacker's mesh")
    };
    let mesh = spawn_mesh(&forger, forged);
    let publish = |reports: &[Vec<u8>]| {
        runtime.block_on(async {
            for bytes in reports {
                mesh.handle
                    .publish(claw_mesh::TopicKind::Trades, bytes.clone())
                    .await
                    .expect("published");
            }
        });
    };
    // The arbiter's [accepted, ignored, rejected] trade reports, once `done` holds of them.
    let verdicts_when = |what: &str, done: &dyn Fn([f64; 3]) -> bool| {
        eventually_showing(Duration::from_secs(30), what, || {
            let now = verdicts(&metrics());
            done(now).then_some(now).ok_or_else(|| {
                format!("[accepted, ignored, rejected] went from {before:?} to {now:?}")
            })
        })
    };
    let forger_addrs = runtime.block_on(async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        mesh.handle
            .listen_addrs()
            .await
            .expect("the forger's addresses")
    });
    // The envelopes are the forger's own and fresh, so only the node's own checks can refuse
    // what is inside. The arbiter holds each back until its own check is done, and passes none
    // on. The two whose transaction the chain does not show for them (made up, or another
    // lease's pull) are dropped blaming no one (an RPC node may lag behind a settlement).
    publish(&reports[..2]);
    let [accepted, ignored, rejected] = verdicts_when(
        "the arbiter dropping the reports the chain does not bear out",
        &|now| now[1] >= before[1] + 2.0,
    );
    assert_eq!(accepted, before[0], "a forged report was passed on");
    assert_eq!(rejected, before[2], "an unproven report cost the forger");
    // (A party's own late report of a lease known here is dropped the same way.)
    assert!(ignored >= before[1] + 2.0);
    // A report its own evidence refutes (another lease's settlement claimed by terms the forger
    // signed) costs the forger, so much that the arbiter no longer takes its gossip at all: the
    // next false report it sends is not even looked at.
    publish(&reports[2..3]);
    let [accepted, _, rejected] = verdicts_when(
        "the arbiter rejecting the report its evidence refutes",
        &|now| now[2] >= before[2] + 1.0,
    );
    assert_eq!(accepted, before[0], "a forged report was passed on");
    assert_eq!(rejected, before[2] + 1.0);
    publish(&reports[3..]);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        verdicts(&metrics()),
        [accepted, ignored, rejected],
        "the caught forger is no longer heard"
    );
    // The same report (the honest evidence, from someone who is neither party) from the
    // accomplice's own node is checked, refuted and rejected too.
    let accomplice_mesh = spawn_mesh(&accomplice, Vec::new());
    runtime.block_on(async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        accomplice_mesh
            .handle
            .publish(
                claw_mesh::TopicKind::Trades,
                seal(&accomplice, 30, &not_its_own),
            )
            .await
            .expect("published");
    });
    let [accepted, _, rejected] =
        verdicts_when("the arbiter rejecting a non-party's report", &|now| {
            now[2] >= before[2] + 2.0
        });
    assert_eq!(accepted, before[0], "a forged report was passed on");
    assert_eq!(
        rejected,
        before[2] + 2.0,
        "each refuted report costs its sender"
    );
    runtime.block_on(accomplice_mesh.handle.shutdown());

    // A node that joins afterwards, through the forger, catches up from its peers: the forger
    // first, with its made-up reports ahead of every honest one, then the others. It keeps only
    // what it checked on chain itself.
    let late_cli = Node::init(Clawnode::new(&dir.path().join("late")), 0);
    late_cli.configure_market(&market(""), &chain);
    let through_forger: Vec<String> = forger_addrs
        .iter()
        .map(|a| format!("{a}/p2p/{}", forger.peer_id()))
        .collect();
    let late = Node::start(late_cli, &through_forger);
    let caught_up = eventually(Duration::from_secs(40), "the late node's history", || {
        history_of(&late, 4)
    });
    assert_eq!(caught_up["days"], history["days"]);
    runtime.block_on(mesh.handle.shutdown());
    for node in [arbiter, &late, &provider, &buyer] {
        let now = node.ok("market.history", &json!({}));
        assert_eq!(now["matching"], 4, "{now}");
        assert_eq!(now["days"], history["days"], "no forged price or region");
    }
}
