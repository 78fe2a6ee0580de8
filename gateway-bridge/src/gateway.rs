//! An OpenClaw gateway client that connects as a node (`role: node`).
//!
//! It waits for the gateway's `connect.challenge`, answers with `connect` signed by the node key
//! (v3 device payload), and reads `hello-ok`. Then it serves `node.invoke.request` events
//! concurrently, each under its own timeout, answering `node.invoke.result` with `payloadJSON`
//! or `{code, message}`, and honours `node.invoke.cancel`. It watches the gateway's ticks and
//! reconnects with backoff (1 s doubling to 30 s) after silence, a close or a gateway restart. A
//! wrong token stops it with a clear error instead of a retry storm; a pending pairing is
//! retried. The token is never logged.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use claw_api::auth::{ApiToken, take_api_key};
use claw_api::{ErrorCode, InvokeFailure};
use claw_attestation::NodeIdentity;
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::tls::{GatewayEndpoint, GatewayTls};
use crate::{DeviceAuthRequest, DeviceProof};

/// Largest frame accepted before `hello-ok` says otherwise.
const PREAUTH_MAX_FRAME: usize = 64 * 1024;
/// How long the gateway has to send its challenge and answer `connect`.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// Default invoke timeout when the gateway gives none.
const DEFAULT_INVOKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest invoke timeout honoured.
const MAX_INVOKE_TIMEOUT: Duration = Duration::from_secs(600);
/// Room kept under the gateway's max payload for the result's envelope.
const RESULT_ENVELOPE_SLACK: usize = 4 * 1024;
const BACKOFF_START: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Why the gateway connection stopped for good.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// The gateway refused the credentials; retrying would not help.
    #[error("the gateway refused the token ({code}): {message}; fix the token and restart")]
    Auth {
        /// The gateway's detail code (e.g. `AUTH_TOKEN_MISMATCH`).
        code: String,
        /// Its message.
        message: String,
    },
    /// The URL or its TLS settings cannot be used; retrying would not help.
    #[error("{0}")]
    Unusable(String),
}

/// The future a [`GatewayHandler`] returns: the answer, or the command's typed failure, which
/// the gateway relays to the caller as `{code, message}`.
pub type CommandFuture = Pin<Box<dyn Future<Output = Result<Value, InvokeFailure>> + Send>>;

/// Answers the commands the gateway forwards.
pub trait GatewayHandler: Send + Sync + 'static {
    /// Runs `command` with `params` (`null` when none were given) under `api_key` when the
    /// call carried one (taken out of the params); the client cuts it off at `timeout`.
    fn handle(&self, command: String, params: Value, call: GatewayCall) -> CommandFuture;
}

/// What a gateway call carries besides its command and params.
#[derive(Debug, Clone)]
pub struct GatewayCall {
    /// How long the gateway waits.
    pub timeout: Duration,
    /// The caller's idempotency key.
    pub idempotency_key: Option<String>,
    /// The API key the call carried in its params' `api_key`.
    pub api_key: Option<ApiToken>,
}

/// How to reach the gateway and what to declare there.
#[derive(Clone)]
pub struct GatewayConfig {
    /// `ws://host:port` (loopback or a private network) or `wss://…`, with no credentials or
    /// query in it.
    pub url: String,
    /// Which certificates a `wss://` gateway may present.
    pub tls: GatewayTls,
    /// The gateway's shared token.
    pub token: String,
    /// Shown in `node.list`.
    pub display_name: String,
    /// Capability claims, e.g. `gpu`.
    pub caps: Vec<String>,
    /// The exact command names this node answers.
    pub commands: Vec<String>,
    /// Software version.
    pub version: String,
}

impl std::fmt::Debug for GatewayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayConfig")
            .field("url", &self.url)
            .field("tls", &self.tls)
            .field("token", &"<redacted>")
            .field("display_name", &self.display_name)
            .field("commands", &self.commands.len())
            .finish_non_exhaustive()
    }
}

/// What the connection learned from `hello-ok`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The negotiated protocol (3 or 4).
    pub protocol: u64,
    /// The gateway's tick interval.
    pub tick_interval: Duration,
    /// Largest frame the gateway accepts.
    pub max_payload: usize,
}

/// What a connection attempt ended with.
enum Ended {
    /// The connection closed or went silent: reconnect.
    Retry(String),
    /// A connection that had been serving was lost: reconnect, backoff starting afresh.
    Lost(String),
    /// The gateway asked to wait this long first.
    RetryAfter(Duration, String),
    /// Stop for good.
    Fatal(GatewayError),
    /// Shutdown was asked for.
    Shutdown,
}

/// Connects to the gateway as a node and serves it until `shutdown` is cancelled, reconnecting
/// with backoff. Returns an error only when retrying cannot help (a refused token, a bad URL).
pub async fn run_node(
    identity: Arc<NodeIdentity>,
    config: GatewayConfig,
    handler: Arc<dyn GatewayHandler>,
    shutdown: CancellationToken,
    sessions: Option<watch::Sender<Option<Session>>>,
) -> Result<(), GatewayError> {
    let endpoint = GatewayEndpoint::new(&config.url, &config.tls)
        .map_err(|e| GatewayError::Unusable(e.to_string()))?;
    let mut backoff = BACKOFF_START;
    loop {
        let ended = tokio::select! {
            ended = connect_and_serve(&endpoint, &identity, &config, &handler, sessions.as_ref()) => ended,
            () = shutdown.cancelled() => Ended::Shutdown,
        };
        if let Some(sessions) = &sessions {
            sessions.send_replace(None);
        }
        let wait = match ended {
            Ended::Shutdown => return Ok(()),
            Ended::Fatal(error) => {
                tracing::error!(url = %config.url, %error, "gateway connection stopped");
                return Err(error);
            }
            Ended::Lost(reason) => {
                tracing::warn!(url = %config.url, %reason, "gateway connection lost; reconnecting");
                backoff = BACKOFF_START;
                let wait = backoff;
                backoff *= 2;
                wait
            }
            Ended::Retry(reason) => {
                tracing::warn!(url = %config.url, %reason, retry_in_ms = backoff.as_millis() as u64, "gateway connection lost");
                let wait = backoff;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                wait
            }
            Ended::RetryAfter(wait, reason) => {
                tracing::info!(url = %config.url, %reason, retry_in_ms = wait.as_millis() as u64, "gateway asked to retry later");
                wait.min(BACKOFF_MAX)
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => return Ok(()),
        }
    }
}

type Socket = crate::tls::GatewaySocket;

fn frame_id() -> String {
    use rand::RngCore as _;
    let mut bytes = [0u8; 12];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

async fn next_json(socket: &mut Socket, max: usize) -> Result<Value, String> {
    loop {
        match socket.next().await {
            None => return Err("the gateway closed the connection".to_owned()),
            Some(Err(error)) => return Err(format!("websocket: {error}")),
            Some(Ok(Message::Text(text))) => {
                if text.len() > max {
                    return Err(format!(
                        "a frame of {} bytes is over the {max}-byte limit",
                        text.len()
                    ));
                }
                return serde_json::from_str(&text)
                    .map_err(|e| format!("a frame is not JSON: {e}"));
            }
            Some(Ok(Message::Close(frame))) => {
                return Err(format!(
                    "the gateway closed the connection{}",
                    frame
                        .map(|f| format!(" ({}: {})", f.code, f.reason))
                        .unwrap_or_default()
                ));
            }
            Some(Ok(_)) => {} // pings are answered by tungstenite; binary frames are not ours
        }
    }
}

/// Reads a `connect` failure: a refused token is fatal, a pending pairing and an unavailable
/// gateway are retried.
fn connect_failure(error: &Value) -> Ended {
    let code = error["code"].as_str().unwrap_or_default();
    let message = error["message"].as_str().unwrap_or_default().to_owned();
    let detail = error["details"]["code"].as_str().unwrap_or_default();
    let next_step = error["details"]["recommendedNextStep"]
        .as_str()
        .unwrap_or_default();
    if detail.starts_with("AUTH_") || next_step.starts_with("update_auth") {
        return Ended::Fatal(GatewayError::Auth {
            code: if detail.is_empty() {
                code.to_owned()
            } else {
                detail.to_owned()
            },
            message,
        });
    }
    if code == "NOT_PAIRED" {
        let request = error["details"]["requestId"].as_str().unwrap_or("?");
        tracing::warn!(
            request,
            "the gateway has not paired this device yet: approve it with `openclaw devices approve {request}`"
        );
        return Ended::Retry(format!("not paired (request {request})"));
    }
    if let Some(after) = error["retryAfterMs"].as_u64() {
        return Ended::RetryAfter(Duration::from_millis(after), format!("{code}: {message}"));
    }
    Ended::Retry(format!("connect refused: {code} {detail}: {message}"))
}

async fn handshake(
    socket: &mut Socket,
    identity: &NodeIdentity,
    config: &GatewayConfig,
) -> Result<Session, Ended> {
    let challenge = next_json(socket, PREAUTH_MAX_FRAME)
        .await
        .map_err(Ended::Retry)?;
    if challenge["type"] != "event" || challenge["event"] != "connect.challenge" {
        return Err(Ended::Retry(format!(
            "expected connect.challenge, got {}",
            challenge["event"]
        )));
    }
    let nonce = challenge["payload"]["nonce"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let ts = challenge["payload"]["ts"].as_u64().unwrap_or(0);
    if nonce.is_empty() {
        return Err(Ended::Retry("the challenge has no nonce".to_owned()));
    }
    let signed_at_ms = if ts > 0 {
        ts
    } else {
        claw_attestation::unix_millis(std::time::SystemTime::now())
    };
    let request = DeviceAuthRequest {
        client_id: "node-host",
        client_mode: "node",
        role: "node",
        scopes: &[],
        signed_at_ms,
        token: &config.token,
        nonce: &nonce,
        platform: "linux",
        device_family: "",
    };
    let device = DeviceProof::sign(identity, &request);
    let id = frame_id();
    let connect = json!({
        "type": "req",
        "id": id,
        "method": "connect",
        "params": {
            "minProtocol": 3,
            "maxProtocol": 4,
            "client": {
                "id": "node-host",
                "displayName": config.display_name,
                "version": config.version,
                "platform": "linux",
                "mode": "node",
                "instanceId": device.id,
            },
            "role": "node",
            "scopes": [],
            "caps": config.caps,
            "commands": config.commands,
            "permissions": {},
            "auth": { "token": config.token },
            "device": device,
        }
    });
    socket
        .send(Message::Text(connect.to_string().into()))
        .await
        .map_err(|e| Ended::Retry(format!("sending connect: {e}")))?;
    loop {
        let frame = next_json(socket, PREAUTH_MAX_FRAME)
            .await
            .map_err(Ended::Retry)?;
        if frame["type"] != "res" || frame["id"] != id.as_str() {
            continue; // events before hello-ok (e.g. presence) are not for us
        }
        if frame["ok"] != true {
            return Err(connect_failure(&frame["error"]));
        }
        let payload = &frame["payload"];
        if payload["type"] != "hello-ok" {
            return Err(Ended::Retry(format!(
                "expected hello-ok, got {}",
                payload["type"]
            )));
        }
        return Ok(Session {
            protocol: payload["protocol"].as_u64().unwrap_or(3),
            tick_interval: Duration::from_millis(
                payload["policy"]["tickIntervalMs"]
                    .as_u64()
                    .unwrap_or(30_000)
                    .clamp(1_000, 300_000),
            ),
            max_payload: usize::try_from(
                payload["policy"]["maxPayload"].as_u64().unwrap_or(25 << 20),
            )
            .unwrap_or(25 << 20)
            .clamp(PREAUTH_MAX_FRAME, 64 << 20),
        });
    }
}

/// The answer to one invoke, as `node.invoke.result` params.
fn invoke_result(
    invoke_id: &str,
    node_id: &str,
    outcome: Result<Value, InvokeFailure>,
    max_payload: usize,
) -> Value {
    let failure = |code: ErrorCode, message: String| json!({"id": invoke_id, "nodeId": node_id, "ok": false, "error": {"code": code, "message": message}});
    match outcome {
        Ok(value) => {
            let text = value.to_string();
            if text.len() + RESULT_ENVELOPE_SLACK > max_payload {
                return failure(
                    ErrorCode::PayloadTooLarge,
                    format!(
                        "the result is {} bytes, over the gateway's {max_payload}-byte limit; ask for less",
                        text.len()
                    ),
                );
            }
            json!({"id": invoke_id, "nodeId": node_id, "ok": true, "payloadJSON": text})
        }
        Err(error) => failure(error.code, error.message),
    }
}

async fn connect_and_serve(
    endpoint: &GatewayEndpoint,
    identity: &Arc<NodeIdentity>,
    config: &GatewayConfig,
    handler: &Arc<dyn GatewayHandler>,
    sessions: Option<&watch::Sender<Option<Session>>>,
) -> Ended {
    let mut socket = match tokio::time::timeout(HANDSHAKE_TIMEOUT, endpoint.connect()).await {
        Err(_) => return Ended::Retry("no connection within 15 s".to_owned()),
        Ok(Err(error)) => return Ended::Retry(format!("connecting: {error}")),
        Ok(Ok(socket)) => socket,
    };
    let session =
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&mut socket, identity, config))
            .await
        {
            Err(_) => return Ended::Retry("no hello-ok within 15 s".to_owned()),
            Ok(Err(ended)) => return ended,
            Ok(Ok(session)) => session,
        };
    let node_id = identity.device().id();
    tracing::info!(url = %config.url, protocol = session.protocol, node_id, commands = config.commands.len(), "connected to the gateway");
    if let Some(sessions) = sessions {
        sessions.send_replace(Some(session.clone()));
    }
    let silence = session.tick_interval * 2;
    let (results_tx, mut results_rx) = mpsc::channel::<(String, Result<Value, InvokeFailure>)>(64);
    let mut running: HashMap<String, tokio::task::AbortHandle> = HashMap::new();
    loop {
        tokio::select! {
            frame = tokio::time::timeout(silence, next_json(&mut socket, session.max_payload)) => {
                let frame = match frame {
                    Err(_) => {
                        let _ = socket.close(None).await;
                        return Ended::Lost(format!("no tick for {} ms", silence.as_millis()));
                    }
                    Ok(Err(reason)) => return Ended::Lost(reason),
                    Ok(Ok(frame)) => frame,
                };
                match (frame["type"].as_str(), frame["event"].as_str()) {
                    (Some("event"), Some("node.invoke.request")) => {
                        let payload = &frame["payload"];
                        let invoke_id = payload["id"].as_str().unwrap_or_default().to_owned();
                        if invoke_id.is_empty() || invoke_id.len() > 128 {
                            continue;
                        }
                        let command = payload["command"].as_str().unwrap_or_default().to_owned();
                        let params = match payload["paramsJSON"].as_str() {
                            None => Ok(Value::Null),
                            Some(text) => serde_json::from_str(text).map_err(|e| format!("paramsJSON is not JSON: {e}")),
                        };
                        let params = params.and_then(|mut params| {
                            let api_key = take_api_key(&mut params).map_err(|e| e.to_string())?;
                            Ok((params, api_key))
                        });
                        let timeout = payload["timeoutMs"]
                            .as_u64()
                            .map_or(DEFAULT_INVOKE_TIMEOUT, Duration::from_millis)
                            .min(MAX_INVOKE_TIMEOUT);
                        let key = payload["idempotencyKey"].as_str().map(str::to_owned);
                        let handler = Arc::clone(handler);
                        let results = results_tx.clone();
                        let id = invoke_id.clone();
                        let task = tokio::spawn(async move {
                            let outcome = match params {
                                Err(error) => Err(InvokeFailure::new(ErrorCode::InvalidParams, error)),
                                Ok((params, api_key)) => match tokio::time::timeout(timeout, handler.handle(command.clone(), params, GatewayCall { timeout, idempotency_key: key, api_key })).await {
                                    Ok(outcome) => outcome,
                                    Err(_) => Err(InvokeFailure::new(ErrorCode::Timeout, format!("{command} did not finish within {} ms", timeout.as_millis()))),
                                },
                            };
                            let _ = results.send((id, outcome)).await;
                        });
                        running.insert(invoke_id, task.abort_handle());
                    }
                    (Some("event"), Some("node.invoke.cancel")) => {
                        let id = frame["payload"]["invokeId"].as_str().unwrap_or_default();
                        if let Some(task) = running.remove(id) {
                            task.abort();
                            tracing::info!(invoke = id, "invoke cancelled by the gateway");
                        }
                    }
                    (Some("res"), _) if frame["ok"] == false => {
                        tracing::warn!(error = %frame["error"], "the gateway refused a result");
                    }
                    _ => {} // ticks (the timeout above is the watchdog), presence, acks
                }
            }
            Some((invoke_id, outcome)) = results_rx.recv() => {
                running.remove(&invoke_id);
                let params = invoke_result(&invoke_id, &node_id, outcome, session.max_payload);
                let frame = json!({"type": "req", "id": frame_id(), "method": "node.invoke.result", "params": params});
                if let Err(error) = socket.send(Message::Text(frame.to_string().into())).await {
                    return Ended::Lost(format!("sending a result: {error}"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_carry_payload_json_or_a_typed_error() {
        let ok = invoke_result("i1", "n1", Ok(json!({"gpus": []})), 1 << 20);
        assert_eq!(ok["ok"], true);
        assert_eq!(ok["payloadJSON"], r#"{"gpus":[]}"#);
        let failed = invoke_result(
            "i2",
            "n1",
            Err(InvokeFailure::new(ErrorCode::NotFound, "no such workload")),
            1 << 20,
        );
        assert_eq!(failed["ok"], false);
        assert_eq!(failed["error"]["code"], "NOT_FOUND");
        let huge = invoke_result("i3", "n1", Ok(json!("x".repeat(70_000))), 65_536);
        assert_eq!(huge["error"]["code"], "PAYLOAD_TOO_LARGE");
    }

    #[test]
    fn a_refused_token_stops_and_a_pending_pairing_retries() {
        let auth = json!({"code": "INVALID_REQUEST", "message": "unauthorized", "details": {"code": "AUTH_TOKEN_MISMATCH", "recommendedNextStep": "update_auth_credentials"}});
        assert!(matches!(
            connect_failure(&auth),
            Ended::Fatal(GatewayError::Auth { .. })
        ));
        let pairing = json!({"code": "NOT_PAIRED", "message": "pairing required", "details": {"code": "PAIRING_REQUIRED", "requestId": "r1"}});
        assert!(matches!(connect_failure(&pairing), Ended::Retry(_)));
        let starting = json!({"code": "UNAVAILABLE", "message": "starting", "retryAfterMs": 500});
        assert!(
            matches!(connect_failure(&starting), Ended::RetryAfter(d, _) if d == Duration::from_millis(500))
        );
    }
}
