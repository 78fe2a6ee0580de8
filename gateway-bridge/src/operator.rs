//! A minimal OpenClaw operator client: connects with `role: operator` (as the `cli` client, with
//! its own device proof) and calls gateway methods such as `node.list`, `node.pair.approve` and
//! `node.invoke`. Benchmarks and tests use it to drive the gateway the way an agent's runtime
//! does, without a CLI process per call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use claw_attestation::NodeIdentity;
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

use crate::{DeviceAuthRequest, DeviceProof};

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Result<Value, Value>>>>>;

/// A connected operator.
#[derive(Debug)]
pub struct OperatorClient {
    outgoing: mpsc::Sender<String>,
    pending: Pending,
    next_id: std::sync::atomic::AtomicU64,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// The scopes the operator asks for.
const SCOPES: &[&str] = &[
    "operator.read",
    "operator.write",
    "operator.pairing",
    "operator.admin",
];

async fn next_text(socket: &mut crate::tls::GatewaySocket) -> Result<Value, String> {
    loop {
        match socket.next().await {
            None => return Err("closed".to_owned()),
            Some(Err(e)) => return Err(e.to_string()),
            Some(Ok(Message::Text(text))) => {
                return serde_json::from_str(&text).map_err(|e| e.to_string());
            }
            Some(Ok(Message::Close(frame))) => return Err(format!("closed: {frame:?}")),
            Some(Ok(_)) => {}
        }
    }
}

impl OperatorClient {
    /// Connects to `url` with `token`, proving `identity` as the operator's device.
    pub async fn connect(url: &str, token: &str, identity: &NodeIdentity) -> Result<Self, String> {
        let endpoint = crate::tls::GatewayEndpoint::new(url, &crate::tls::GatewayTls::default())
            .map_err(|e| e.to_string())?;
        let mut socket = tokio::time::timeout(Duration::from_secs(15), endpoint.connect())
            .await
            .map_err(|_| "no connection within 15 s".to_owned())??;
        let challenge = next_text(&mut socket).await?;
        let nonce = challenge["payload"]["nonce"]
            .as_str()
            .ok_or("no challenge nonce")?
            .to_owned();
        let signed_at_ms = challenge["payload"]["ts"]
            .as_u64()
            .unwrap_or_else(|| claw_attestation::unix_millis(std::time::SystemTime::now()));
        let device = DeviceProof::sign(
            identity,
            &DeviceAuthRequest {
                client_id: "cli",
                client_mode: "cli",
                role: "operator",
                scopes: SCOPES,
                signed_at_ms,
                token,
                nonce: &nonce,
                platform: "linux",
                device_family: "",
            },
        );
        let connect = json!({
            "type": "req", "id": "connect", "method": "connect",
            "params": {
                "minProtocol": 4, "maxProtocol": 4,
                "client": {"id": "cli", "version": env!("CARGO_PKG_VERSION"), "platform": "linux", "mode": "cli"},
                "role": "operator",
                "scopes": SCOPES,
                "auth": {"token": token},
                "device": device,
            }
        });
        socket
            .send(Message::Text(connect.to_string().into()))
            .await
            .map_err(|e| e.to_string())?;
        loop {
            let frame = next_text(&mut socket).await?;
            if frame["type"] == "res" && frame["id"] == "connect" {
                if frame["ok"] != true {
                    return Err(format!("connect refused: {}", frame["error"]));
                }
                break;
            }
        }
        let (mut sink, mut stream) = socket.split();
        let (outgoing, mut to_send) = mpsc::channel::<String>(1024);
        let pending: Pending = Arc::default();
        let writer = tokio::spawn(async move {
            while let Some(text) = to_send.recv().await {
                if sink.send(Message::Text(text.into())).await.is_err() {
                    break;
                }
            }
        });
        let answers = Arc::clone(&pending);
        let reader = tokio::spawn(async move {
            while let Some(Ok(message)) = stream.next().await {
                let Message::Text(text) = message else {
                    continue;
                };
                let Ok(frame) = serde_json::from_str::<Value>(&text) else {
                    continue;
                };
                if frame["type"] != "res" {
                    continue;
                }
                let Some(id) = frame["id"].as_str() else {
                    continue;
                };
                let waiter = answers
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(id);
                if let Some(waiter) = waiter {
                    let answer = if frame["ok"] == true {
                        Ok(frame["payload"].clone())
                    } else {
                        Err(frame["error"].clone())
                    };
                    let _ = waiter.send(answer);
                }
            }
        });
        Ok(Self {
            outgoing,
            pending,
            next_id: std::sync::atomic::AtomicU64::new(1),
            tasks: vec![writer, reader],
        })
    }

    /// Calls `method` with `params`; the payload, or the gateway's error object.
    pub async fn call(&self, method: &str, params: Value) -> Result<Value, Value> {
        let id = format!(
            "op-{}",
            self.next_id
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.clone(), tx);
        let frame = json!({"type": "req", "id": id, "method": method, "params": params});
        self.outgoing
            .send(frame.to_string())
            .await
            .map_err(|_| json!({"message": "the connection is closed"}))?;
        match tokio::time::timeout(Duration::from_secs(120), rx).await {
            Ok(Ok(answer)) => answer,
            _ => Err(json!({"message": format!("no answer to {method}")})),
        }
    }
}

impl Drop for OperatorClient {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}
