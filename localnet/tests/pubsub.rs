//! The embedded chain's PubSub WebSocket (RPC port + 1) through a plain WebSocket client:
//! the cluster's message shapes for signatures, accounts, slots and logs, unsubscribing, errors
//! and limits.

use std::collections::VecDeque;
use std::time::Duration;

use claw_localnet::EmbeddedChain;
use claw_localnet::pubsub::{MAX_MESSAGE_BYTES, MAX_SUBSCRIPTIONS_PER_CONNECTION};
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use solana_commitment_config::CommitmentConfig;
use solana_keypair::Keypair;
use solana_pubkey::Pubkey;
use solana_rpc_client::nonblocking::rpc_client::RpcClient;
use solana_signature::Signature;
use solana_signer::Signer as _;
use solana_transaction::Transaction;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const SOL: u64 = 1_000_000_000;
/// How long a notification may take to come.
const WAIT: Duration = Duration::from_secs(10);
const SYSTEM_PROGRAM: &str = "11111111111111111111111111111111";

async fn start() -> (EmbeddedChain, RpcClient) {
    let chain = EmbeddedChain::start("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("chain starts");
    assert_eq!(chain.pubsub_addr().port(), chain.rpc_addr().port() + 1);
    assert_eq!(
        chain.pubsub_url(),
        format!("ws://127.0.0.1:{}", chain.rpc_addr().port() + 1)
    );
    let rpc = RpcClient::new_with_commitment(chain.rpc_url(), CommitmentConfig::confirmed());
    (chain, rpc)
}

/// A WebSocket JSON-RPC client that keeps notifications that come while it waits for a response.
struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    backlog: VecDeque<Value>,
}

impl Client {
    async fn connect(chain: &EmbeddedChain) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(chain.pubsub_url())
            .await
            .expect("pubsub connects");
        Self {
            ws,
            next_id: 1,
            backlog: VecDeque::new(),
        }
    }

    async fn send_text(&mut self, text: String) {
        self.ws.send(Message::text(text)).await.expect("sends");
    }

    /// The next JSON message.
    async fn recv(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a message within the wait")
                .expect("the connection stays open")
                .expect("a readable message");
            if let Message::Text(text) = message {
                return serde_json::from_str(text.as_str()).expect("JSON");
            }
        }
    }

    /// Calls `method` and returns the whole response.
    async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send_text(
            json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string(),
        )
        .await;
        self.response(json!(id)).await
    }

    /// Waits for the response with `id`, keeping notifications.
    async fn response(&mut self, id: Value) -> Value {
        loop {
            let message = self.recv().await;
            if message.get("id") == Some(&id) {
                assert_eq!(message["jsonrpc"], "2.0");
                return message;
            }
            self.backlog.push_back(message);
        }
    }

    async fn subscribe(&mut self, method: &str, params: Value) -> u64 {
        let response = self.call(method, params).await;
        response["result"]
            .as_u64()
            .unwrap_or_else(|| panic!("{method} answers a subscription id: {response}"))
    }

    /// The next notification of `subscription`: its method and `params.result`.
    async fn notification(&mut self, subscription: u64) -> (String, Value) {
        let matches = |m: &Value| m["params"]["subscription"] == json!(subscription);
        if let Some(index) = self.backlog.iter().position(matches) {
            let message = self.backlog.remove(index).expect("indexed");
            return split(message);
        }
        loop {
            let message = self.recv().await;
            if matches(&message) {
                return split(message);
            }
            self.backlog.push_back(message);
        }
    }

    /// Asserts that `subscription` gets no notification within `window`.
    async fn quiet(&mut self, subscription: u64, window: Duration) {
        let matches = |m: &Value| m["params"]["subscription"] == json!(subscription);
        assert!(
            !self.backlog.iter().any(matches),
            "{subscription} was notified"
        );
        let deadline = tokio::time::Instant::now() + window;
        while let Ok(Some(Ok(message))) = tokio::time::timeout_at(deadline, self.ws.next()).await {
            if let Message::Text(text) = message {
                let value: Value = serde_json::from_str(text.as_str()).expect("JSON");
                assert!(!matches(&value), "{subscription} was notified: {value}");
            }
        }
    }
}

fn split(message: Value) -> (String, Value) {
    assert_eq!(message["jsonrpc"], "2.0");
    let method = message["method"].as_str().expect("a method").to_owned();
    (method, message["params"]["result"].clone())
}

async fn funded(rpc: &RpcClient) -> Keypair {
    let keypair = Keypair::new();
    rpc.request_airdrop(&keypair.pubkey(), 10 * SOL)
        .await
        .expect("airdrop");
    keypair
}

async fn transfer(rpc: &RpcClient, from: &Keypair, to: &Pubkey, lamports: u64) -> Transaction {
    let blockhash = rpc.get_latest_blockhash().await.expect("blockhash");
    Transaction::new_signed_with_payer(
        &[solana_system_interface::instruction::transfer(
            &from.pubkey(),
            to,
            lamports,
        )],
        Some(&from.pubkey()),
        &[from],
        blockhash,
    )
}

async fn landed_slot(rpc: &RpcClient, signature: &Signature) -> u64 {
    rpc.get_signature_statuses(&[*signature])
        .await
        .expect("statuses")
        .value[0]
        .as_ref()
        .expect("landed")
        .slot
}

#[tokio::test]
async fn signature_subscribe_before_the_transaction_lands() {
    let (chain, rpc) = start().await;
    let payer = funded(&rpc).await;
    let tx = transfer(&rpc, &payer, &Pubkey::new_unique(), SOL).await;
    let signature = tx.signatures[0];
    let mut ws = Client::connect(&chain).await;
    let plain = ws
        .subscribe(
            "signatureSubscribe",
            json!([signature.to_string(), {"commitment": "confirmed"}]),
        )
        .await;
    let received = ws
        .subscribe(
            "signatureSubscribe",
            json!([signature.to_string(), {"commitment": "finalized", "enableReceivedNotification": true}]),
        )
        .await;
    assert_ne!(plain, received);
    ws.quiet(plain, Duration::from_millis(500)).await;

    rpc.send_transaction(&tx).await.expect("lands");
    let slot = landed_slot(&rpc, &signature).await;
    let expected = json!({"context": {"slot": slot}, "value": {"err": null}});
    assert_eq!(
        ws.notification(plain).await,
        ("signatureNotification".to_owned(), expected.clone())
    );
    assert_eq!(
        ws.notification(received).await,
        (
            "signatureNotification".to_owned(),
            json!({"context": {"slot": slot}, "value": "receivedSignature"})
        )
    );
    assert_eq!(
        ws.notification(received).await,
        ("signatureNotification".to_owned(), expected)
    );
    // Sent once, then the subscription is gone.
    let again = ws.call("signatureUnsubscribe", json!([plain])).await;
    assert_eq!(
        again["error"],
        json!({"code": -32602, "message": "Invalid subscription id."})
    );
}

#[tokio::test]
async fn signature_subscribe_after_the_airdrop_landed_notifies_at_once() {
    let (chain, rpc) = start().await;
    let signature = rpc
        .request_airdrop(&Pubkey::new_unique(), SOL)
        .await
        .expect("airdrop");
    let slot = landed_slot(&rpc, &signature).await;
    let mut ws = Client::connect(&chain).await;
    let id = ws
        .subscribe("signatureSubscribe", json!([signature.to_string()]))
        .await;
    assert_eq!(
        ws.notification(id).await,
        (
            "signatureNotification".to_owned(),
            json!({"context": {"slot": slot}, "value": {"err": null}})
        )
    );
}

#[tokio::test]
async fn account_subscribe_sees_lamports_change_and_only_changes() {
    let (chain, rpc) = start().await;
    let watched = Pubkey::new_unique();
    let mut ws = Client::connect(&chain).await;
    let base64 = ws
        .subscribe(
            "accountSubscribe",
            json!([watched.to_string(), {"encoding": "base64", "commitment": "confirmed"}]),
        )
        .await;
    let parsed = ws
        .subscribe(
            "accountSubscribe",
            json!([watched.to_string(), {"encoding": "jsonParsed"}]),
        )
        .await;

    let signature = rpc
        .request_airdrop(&watched, 2 * SOL)
        .await
        .expect("airdrop");
    let slot = landed_slot(&rpc, &signature).await;
    let expected = json!({
        "context": {"slot": slot},
        "value": {
            "lamports": 2 * SOL,
            "data": ["", "base64"],
            "owner": SYSTEM_PROGRAM,
            "executable": false,
            "rentEpoch": u64::MAX,
            "space": 0,
        },
    });
    assert_eq!(
        ws.notification(base64).await,
        ("accountNotification".to_owned(), expected.clone())
    );
    // jsonParsed has no parser for a system account: base-64, as on a cluster.
    assert_eq!(ws.notification(parsed).await.1, expected);
    // getAccountInfo's value is the same shape.
    let info: Value = rpc
        .send(
            solana_rpc_client_api::request::RpcRequest::GetAccountInfo,
            json!([watched.to_string(), {"encoding": "base64"}]),
        )
        .await
        .expect("getAccountInfo");
    assert_eq!(info["value"], expected["value"]);

    // A transaction elsewhere says nothing about it.
    rpc.request_airdrop(&Pubkey::new_unique(), SOL)
        .await
        .expect("airdrop");
    ws.quiet(base64, Duration::from_millis(500)).await;

    rpc.request_airdrop(&watched, SOL).await.expect("airdrop");
    let (method, result) = ws.notification(base64).await;
    assert_eq!(method, "accountNotification");
    assert_eq!(result["value"]["lamports"], json!(3 * SOL));
}

#[tokio::test]
async fn slot_subscribe_ticks_every_slot() {
    let (chain, _rpc) = start().await;
    let mut ws = Client::connect(&chain).await;
    let id = ws.subscribe("slotSubscribe", json!([])).await;
    let (method, first) = ws.notification(id).await;
    assert_eq!(method, "slotNotification");
    let (_, second) = ws.notification(id).await;
    let slot = first["slot"].as_u64().expect("slot");
    assert_eq!(
        first,
        json!({"parent": slot - 1, "root": slot, "slot": slot})
    );
    assert_eq!(second["slot"], json!(slot + 1));
    assert!(chain.slot() > slot);
}

#[tokio::test]
async fn logs_subscribe_filters_by_mention() {
    let (chain, rpc) = start().await;
    let payer = funded(&rpc).await;
    let recipient = Pubkey::new_unique();
    let mut ws = Client::connect(&chain).await;
    let mentions = ws
        .subscribe(
            "logsSubscribe",
            json!([{"mentions": [recipient.to_string()]}, {"commitment": "confirmed"}]),
        )
        .await;
    let all = ws.subscribe("logsSubscribe", json!(["all"])).await;

    let elsewhere = rpc
        .request_airdrop(&Pubkey::new_unique(), SOL)
        .await
        .expect("airdrop");
    let (_, seen) = ws.notification(all).await;
    assert_eq!(seen["value"]["signature"], elsewhere.to_string());

    let tx = transfer(&rpc, &payer, &recipient, SOL).await;
    let signature = rpc.send_transaction(&tx).await.expect("lands");
    let slot = landed_slot(&rpc, &signature).await;
    let expected = json!({
        "context": {"slot": slot},
        "value": {
            "signature": signature.to_string(),
            "err": null,
            "logs": [
                format!("Program {SYSTEM_PROGRAM} invoke [1]"),
                format!("Program {SYSTEM_PROGRAM} success"),
            ],
        },
    });
    // The first notification of the mentions filter is the transfer, not the airdrop before it.
    assert_eq!(
        ws.notification(mentions).await,
        ("logsNotification".to_owned(), expected.clone())
    );
    assert_eq!(ws.notification(all).await.1, expected);
}

#[tokio::test]
async fn unsubscribe_stops_notifications() {
    let (chain, _rpc) = start().await;
    let mut ws = Client::connect(&chain).await;
    let id = ws.subscribe("slotSubscribe", json!([])).await;
    ws.notification(id).await;
    // The wrong kind of unsubscribe does not remove it.
    let wrong = ws.call("logsUnsubscribe", json!([id])).await;
    assert_eq!(wrong["error"]["code"], -32602);
    let done = ws.call("slotUnsubscribe", json!([id])).await;
    assert_eq!(done["result"], json!(true));
    ws.backlog.clear();
    ws.quiet(id, Duration::from_millis(1200)).await;
    let again = ws.call("slotUnsubscribe", json!([id])).await;
    assert_eq!(
        again["error"],
        json!({"code": -32602, "message": "Invalid subscription id."})
    );
}

#[tokio::test]
async fn bad_requests_get_json_rpc_errors() {
    let (chain, _rpc) = start().await;
    let mut ws = Client::connect(&chain).await;
    let unknown = ws.call("blockSubscribe", json!(["all"])).await;
    assert_eq!(
        unknown["error"],
        json!({"code": -32601, "message": "Method not found"})
    );
    let bad = ws
        .call("signatureSubscribe", json!(["not-a-signature"]))
        .await;
    assert_eq!(
        bad["error"],
        json!({"code": -32602, "message": "Invalid Request: Invalid signature provided"})
    );
    let bad = ws.call("accountSubscribe", json!([])).await;
    assert_eq!(bad["error"]["code"], -32602);
    let bad = ws
        .call(
            "logsSubscribe",
            json!([{"mentions": [SYSTEM_PROGRAM, SYSTEM_PROGRAM]}]),
        )
        .await;
    assert_eq!(
        bad["error"],
        json!({"code": -32602, "message": "Invalid Request: Only 1 address supported"})
    );

    ws.send_text("{".to_owned()).await;
    assert_eq!(
        ws.recv().await,
        json!({"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": null})
    );
    // A JSON-RPC notification (web3.js's keep-alive) gets no answer: the next message is the
    // response to the call after it.
    ws.send_text(json!({"jsonrpc": "2.0", "method": "ping"}).to_string())
        .await;
    let answered = ws.call("slotUnsubscribe", json!([424_242])).await;
    assert_eq!(answered["error"]["code"], -32602);
    assert!(ws.backlog.is_empty(), "unexpected: {:?}", ws.backlog);
}

#[tokio::test]
async fn batches_are_answered_and_subscriptions_are_capped() {
    let (chain, _rpc) = start().await;
    let mut ws = Client::connect(&chain).await;
    let mut ids = Vec::new();
    for batch in 0..MAX_SUBSCRIPTIONS_PER_CONNECTION.div_ceil(100) {
        let calls: Vec<Value> = (0..100)
            .map(|i| json!({"jsonrpc": "2.0", "id": format!("{batch}-{i}"), "method": "logsSubscribe", "params": ["all"]}))
            .collect();
        ws.send_text(Value::Array(calls).to_string()).await;
        let answers = ws.recv().await;
        let answers = answers.as_array().expect("a batch answer");
        assert_eq!(answers.len(), 100);
        for answer in answers {
            if let Some(id) = answer["result"].as_u64() {
                ids.push(id);
            } else {
                assert_eq!(answer["error"]["code"], -32603, "{answer}");
            }
        }
    }
    assert_eq!(ids.len(), MAX_SUBSCRIPTIONS_PER_CONNECTION);
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), MAX_SUBSCRIPTIONS_PER_CONNECTION);
    let refused = ws.call("slotSubscribe", json!([])).await;
    assert_eq!(refused["error"]["code"], -32603);
    // Room again after an unsubscribe.
    let done = ws.call("logsUnsubscribe", json!([ids[0]])).await;
    assert_eq!(done["result"], true);
    let id = ws.subscribe("slotSubscribe", json!([])).await;
    assert!(!ids.contains(&id));
}

#[tokio::test]
async fn oversize_messages_close_the_connection() {
    let (chain, _rpc) = start().await;
    let mut ws = Client::connect(&chain).await;
    // Just under the limit: an ordinary error.
    let padding = "x".repeat(MAX_MESSAGE_BYTES - 200);
    let near = ws.call("slotSubscribe", json!([padding])).await;
    assert!(near.get("result").is_some(), "{near}");

    ws.send_text(format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"slotSubscribe","params":["{}"]}}"#,
        "x".repeat(MAX_MESSAGE_BYTES)
    ))
    .await;
    let closed = loop {
        match tokio::time::timeout(WAIT, ws.ws.next())
            .await
            .expect("closed within the wait")
        {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(Message::Text(text))) => {
                let value: Value = serde_json::from_str(text.as_str()).expect("JSON");
                assert!(value.get("id").is_none(), "answered: {value}");
            }
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(closed.expect("a close frame").code, CloseCode::Size);
}

#[tokio::test]
async fn pings_get_pongs() {
    let (chain, _rpc) = start().await;
    let mut ws = Client::connect(&chain).await;
    ws.ws
        .send(Message::Ping(b"still there?".to_vec().into()))
        .await
        .expect("ping");
    let pong = loop {
        match tokio::time::timeout(WAIT, ws.ws.next())
            .await
            .expect("a pong within the wait")
        {
            Some(Ok(Message::Pong(data))) => break data,
            Some(Ok(_)) => {}
            other => panic!("expected a pong, got {other:?}"),
        }
    };
    assert_eq!(pong.as_ref(), b"still there?");
}

#[tokio::test]
async fn dropping_the_chain_stops_pubsub() {
    let (chain, _rpc) = start().await;
    let url = chain.pubsub_url();
    let mut ws = Client::connect(&chain).await;
    let id = ws.subscribe("slotSubscribe", json!([])).await;
    ws.notification(id).await;
    drop(chain);
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match ws.ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the connection outlived the chain");
    // Aborting is asynchronous: give the listener a moment to close.
    let mut refused = false;
    for _ in 0..50 {
        if tokio_tungstenite::connect_async(url.as_str())
            .await
            .is_err()
        {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "{url} still accepts connections");
}

#[tokio::test]
async fn a_taken_pubsub_port_fails_the_start() {
    // A port whose predecessor is free; the test holds the port itself.
    let (held, rpc_port) = loop {
        let held = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
        let port = held.local_addr().expect("addr").port();
        if port > 1024 && std::net::TcpListener::bind(("127.0.0.1", port - 1)).is_ok() {
            break (held, port - 1);
        }
    };
    let error = EmbeddedChain::start(([127, 0, 0, 1], rpc_port).into())
        .await
        .expect_err("port + 1 is taken");
    match error {
        claw_localnet::LocalnetError::PubsubBind { addr, .. } => {
            assert_eq!(addr.port(), rpc_port + 1);
        }
        other => panic!("expected PubsubBind, got {other}"),
    }
    drop(held);
}
