//! The local control API: HTTP on loopback, guarded by a bearer token kept 0600 in the data
//! directory. The CLI talks to a running node through it; callers here act as the node's admin.
//!
//! | method | path         | answer |
//! |--------|--------------|--------|
//! | GET    | `/v1/node`   | peer id, network, listen addresses, version |
//! | GET    | `/v1/fleet`  | the fleet as this node sees it, and its status |
//! | GET    | `/v1/audit?limit=N` | the latest N audit records (default 50, at most 1,000) |
//! | GET    | `/v1/progress?key=K` | progress of the long operation started with idempotency key K |
//! | POST   | `/v1/invoke` | `{command, params?, node?, deadline_ms?, idempotency_key?, api_key?}` → `{ok}` or `{error}` |
//!
//! `node` names a peer to forward the invoke to over the mesh; without it the node answers.
//! The fleet console (`/console`, `/v1/console/events`) is served here too (`crate::console`).

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use claw_attestation::{KeyFileError, read_secret, write_secret};
use claw_mesh::{
    ApiToken, ErrorCode, FleetMember, InvokeFailure, InvokeHandler, InvokeRequest, InvokeResponse,
    MeshHandle, PeerId,
};
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::DataDir;
use crate::commands::NodeCommands;

const TOKEN_FILE: &str = "control.token";
const ADDR_FILE: &str = "control.addr";
const MAX_BODY_BYTES: usize = 256 * 1024;
const DEFAULT_DEADLINE: Duration = Duration::from_secs(30);
const MAX_DEADLINE: Duration = Duration::from_secs(120);

/// Why the control API could not be reached or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// No node is running on this data directory.
    #[error("no running node found for {0}: start one with `clawnode run`")]
    NotRunning(String),
    /// The token file could not be read or written.
    #[error(transparent)]
    Token(#[from] KeyFileError),
    /// The HTTP exchange failed.
    #[error("control API: {0}")]
    Http(String),
    /// The node answered with a typed error.
    #[error(transparent)]
    Failed(#[from] InvokeFailure),
}

/// What the server needs.
#[derive(Debug, Clone)]
pub struct ControlState {
    token: String,
    mesh: MeshHandle,
    commands: NodeCommands,
    dir: Arc<DataDir>,
    /// Cancelled when the node stops: long-lived streams end then.
    stopping: tokio_util::sync::CancellationToken,
}

impl ControlState {
    /// Runs `request` on this node as its own caller (the control API's), cut off at the
    /// request's deadline.
    pub(crate) async fn run_here(&self, request: InvokeRequest) -> Result<Value, InvokeFailure> {
        let deadline = Duration::from_millis(request.deadline_ms);
        let local = self.mesh.local_peer_id();
        match tokio::time::timeout(deadline, self.commands.handle(local, request)).await {
            Ok(InvokeResponse::Ok(value)) => Ok(value),
            Ok(InvokeResponse::Error(failure)) => Err(failure),
            Err(_) => Err(InvokeFailure::new(
                ErrorCode::Timeout,
                format!("no answer within {} ms", deadline.as_millis()),
            )),
        }
    }

    /// State for a node whose mesh is `mesh` and whose commands are `commands`.
    pub fn new(
        token: String,
        mesh: MeshHandle,
        commands: NodeCommands,
        dir: Arc<DataDir>,
        stopping: tokio_util::sync::CancellationToken,
    ) -> Self {
        Self {
            token,
            stopping,
            dir,
            mesh,
            commands,
        }
    }

    /// The node's commands.
    pub(crate) fn commands(&self) -> &NodeCommands {
        &self.commands
    }

    /// The node's mesh.
    pub(crate) fn mesh(&self) -> &MeshHandle {
        &self.mesh
    }

    /// The node's data directory.
    pub(crate) fn dir(&self) -> &Arc<DataDir> {
        &self.dir
    }

    /// Cancelled when the node stops.
    pub(crate) fn stopping(&self) -> &tokio_util::sync::CancellationToken {
        &self.stopping
    }
}

/// Creates a fresh token for this run, stored 0600 in `data_dir`.
pub fn issue_token(data_dir: &Path) -> Result<String, KeyFileError> {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let token = hex::encode(bytes);
    write_secret(&data_dir.join(TOKEN_FILE), token.as_bytes(), true)?;
    Ok(token)
}

/// Records where the API listens, for the CLI to find.
pub fn write_address(data_dir: &Path, addr: SocketAddr) -> std::io::Result<()> {
    crate::record_address(data_dir, ADDR_FILE, addr)
}

/// Forgets the address when the node stops.
pub fn remove_address(data_dir: &Path) {
    crate::forget_address(data_dir, ADDR_FILE);
}

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ControlState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/v1/node", get(node_info))
        .route("/v1/fleet", get(fleet))
        .route("/v1/invoke", post(invoke))
        .route("/v1/audit", get(audit))
        .route("/v1/progress", get(progress))
        .merge(crate::console::routes())
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

fn failure_status(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::InvalidParams => StatusCode::BAD_REQUEST,
        ErrorCode::Unauthorized => StatusCode::FORBIDDEN,
        ErrorCode::UnknownCommand | ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::Conflict => StatusCode::CONFLICT,
        ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

pub(crate) fn failure_response(failure: InvokeFailure) -> Response {
    let status = failure_status(failure.code);
    (status, Json(InvokeResponse::Error(failure))).into_response()
}

/// The bearer token a request presents ("" when none).
pub(crate) fn bearer(headers: &HeaderMap) -> &str {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
}

/// Constant-time comparison of the bearer token.
pub(crate) fn authorized(state: &ControlState, headers: &HeaderMap) -> bool {
    let presented = bearer(headers);
    let expected = state.token.as_bytes();
    presented.len() == expected.len()
        && presented
            .bytes()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

pub(crate) fn unauthorized() -> Response {
    let failure = InvokeFailure::new(ErrorCode::Unauthorized, "missing or wrong control token");
    (
        StatusCode::UNAUTHORIZED,
        Json(InvokeResponse::Error(failure)),
    )
        .into_response()
}

async fn node_info(State(state): State<ControlState>, headers: HeaderMap) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    let addrs = crate::listen_addr_texts(&state.mesh).await;
    Json(json!({
        "peer_id": state.mesh.local_peer_id().to_string(),
        "network": state.dir.config().network.name,
        "listen_addrs": addrs,
        "version": env!("CARGO_PKG_VERSION"),
    }))
    .into_response()
}

async fn audit(
    State(state): State<ControlState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    let limit = match query.as_deref().and_then(|q| q.strip_prefix("limit=")) {
        None => 50,
        Some(n) => match n.parse::<usize>() {
            Ok(n) if (1..=1_000).contains(&n) => n,
            _ => {
                return failure_response(InvokeFailure::new(
                    ErrorCode::InvalidParams,
                    "limit must be 1 to 1000",
                ));
            }
        },
    };
    match state.commands.recent_audit(limit).await {
        Ok(records) => Json(json!({ "records": records })).into_response(),
        Err(error) => failure_response(error.into()),
    }
}

async fn progress(
    State(state): State<ControlState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    let Some(key) = query.as_deref().and_then(|q| q.strip_prefix("key=")) else {
        return failure_response(InvokeFailure::new(
            ErrorCode::InvalidParams,
            "give ?key=<idempotency key>",
        ));
    };
    match state.commands.progress().get(key) {
        Some(report) => Json(json!({ "progress": report })).into_response(),
        None => failure_response(InvokeFailure::new(
            ErrorCode::NotFound,
            "no operation in progress under that key",
        )),
    }
}

/// One node in the fleet view, as the API shows it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetMemberView {
    /// The node's peer id.
    pub peer_id: String,
    /// Its name.
    pub name: String,
    /// Its region, if any.
    pub region: Option<String>,
    /// GPUs in its inventory.
    pub gpus: usize,
    /// GPUs not allocated.
    pub free_gpus: usize,
    /// GPU models, in inventory order, without repeats.
    pub models: Vec<String>,
    /// How many of its GPUs are simulated.
    pub simulated_gpus: usize,
    /// Whether it takes no new workloads.
    pub cordoned: bool,
    /// Addresses it listens on.
    pub listen_addrs: Vec<String>,
    /// How peers reach it: `public`, `relayed` (behind NAT, through a relay), `private` (behind
    /// NAT, no relay yet) or `unknown`.
    pub reachability: String,
    /// How the answering node is connected to it now: `direct` or `relayed`; none when not
    /// connected (or when it is the answering node).
    pub path: Option<String>,
    /// What it is to the answering node's fleet: `member` (a trusted operator admitted it),
    /// `stranger` (a market counterparty only), or `open` (the node trusts no operator, so
    /// every peer counts).
    pub standing: String,
    /// Its software version.
    pub software_version: String,
    /// Sequence of its latest announcement.
    pub seq: u64,
    /// When that was signed (Unix ms).
    pub issued_at_ms: u64,
}

impl From<&FleetMember> for FleetMemberView {
    fn from(member: &FleetMember) -> Self {
        let a = &member.announcement;
        let mut models: Vec<String> = Vec::new();
        for gpu in &a.inventory.gpus {
            if !models.contains(&gpu.model) {
                models.push(gpu.model.clone());
            }
        }
        Self {
            peer_id: member.peer_id.to_string(),
            name: a.name.clone(),
            region: a.region.clone(),
            gpus: a.inventory.gpus.len(),
            free_gpus: a.free_gpu_count(),
            models,
            simulated_gpus: a.inventory.gpus.iter().filter(|g| g.simulated).count(),
            cordoned: a.cordoned,
            listen_addrs: a.listen_addrs.clone(),
            reachability: a.reachability_text().to_owned(),
            path: None,
            standing: member
                .standing
                .as_str(claw_attestation::unix_millis(std::time::SystemTime::now()))
                .to_owned(),
            software_version: a.software_version.clone(),
            seq: member.seq,
            issued_at_ms: member.issued_at_ms,
        }
    }
}

async fn fleet(State(state): State<ControlState>, headers: HeaderMap) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    let members: Vec<FleetMemberView> = state
        .mesh
        .fleet()
        .iter()
        .map(|member| FleetMemberView {
            path: state
                .mesh
                .connection_path(&member.peer_id)
                .map(|p| p.as_str().to_owned()),
            ..member.into()
        })
        .collect();
    Json(json!({ "members": members, "status": state.mesh.fleet_status() })).into_response()
}

/// Body of `POST /v1/invoke`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvokeBody {
    /// Command name.
    pub command: String,
    /// Its params.
    #[serde(default)]
    pub params: Value,
    /// Peer to run it on; this node when absent.
    #[serde(default)]
    pub node: Option<String>,
    /// Deadline in ms (default 30 s, at most 120 s).
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    /// Idempotency key passed to the command.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// API key the command runs under (the node it runs on checks it).
    #[serde(default)]
    pub api_key: Option<ApiToken>,
}

async fn invoke(State(state): State<ControlState>, headers: HeaderMap, body: Bytes) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    let body: InvokeBody = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(e) => {
            return failure_response(InvokeFailure::new(
                ErrorCode::InvalidParams,
                format!("invalid invoke body: {e}"),
            ));
        }
    };
    let deadline = body
        .deadline_ms
        .map_or(DEFAULT_DEADLINE, Duration::from_millis)
        .min(MAX_DEADLINE);
    let request = InvokeRequest {
        command: body.command,
        params: body.params,
        deadline_ms: u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX),
        idempotency_key: body.idempotency_key,
        api_key: body.api_key,
    };
    if let Err(failure) = request.check() {
        return failure_response(failure);
    }
    let local = state.mesh.local_peer_id();
    let target = match body.node.as_deref().map(str::parse::<PeerId>) {
        None => local,
        Some(Ok(peer)) => peer,
        Some(Err(e)) => {
            return failure_response(InvokeFailure::new(
                ErrorCode::InvalidParams,
                format!("node is not a peer id: {e}"),
            ));
        }
    };
    let result = if target == local {
        state.run_here(request).await
    } else {
        state.mesh.invoke(target, request).await
    };
    answer_response(result)
}

/// The control API's answer for a command's result: `{"ok": …}`, or `{"error": …}` with the
/// status its code maps to.
pub(crate) fn answer_response(result: Result<Value, InvokeFailure>) -> Response {
    match result {
        Ok(value) => Json(InvokeResponse::Ok(value)).into_response(),
        Err(failure) => failure_response(failure),
    }
}

/// A blocking client for the CLI.
#[derive(Debug)]
pub struct ControlClient {
    base: String,
    token: String,
    agent: ureq::Agent,
}

impl ControlClient {
    /// The console's address of the running node of `data_dir` (`http://…/console`); the page
    /// asks for the token in its `control.token`.
    pub fn console_url(data_dir: &Path) -> Result<String, ControlError> {
        Ok(format!("{}/console", Self::connect(data_dir)?.base))
    }

    /// Finds the running node of `data_dir` from the address and token it wrote.
    pub fn connect(data_dir: &Path) -> Result<Self, ControlError> {
        let not_running = || ControlError::NotRunning(data_dir.display().to_string());
        let addr = std::fs::read_to_string(data_dir.join(ADDR_FILE)).map_err(|_| not_running())?;
        let addr: SocketAddr = addr.trim().parse().map_err(|_| not_running())?;
        let token = read_secret(&data_dir.join(TOKEN_FILE))?;
        let token = String::from_utf8(token)
            .map_err(|_| ControlError::Http("control token is not text".to_owned()))?;
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(MAX_DEADLINE + Duration::from_secs(5)))
            .http_status_as_error(false)
            .build()
            .new_agent();
        Ok(Self {
            base: format!("http://{addr}"),
            token,
            agent,
        })
    }

    fn decode(
        &self,
        path: &str,
        mut response: ureq::http::Response<ureq::Body>,
    ) -> Result<Value, ControlError> {
        let status = response.status();
        let value: Value = response
            .body_mut()
            .with_config()
            .limit(64 * 1024 * 1024)
            .read_json()
            .map_err(|e| {
                ControlError::Http(format!("{path}: unreadable answer ({status}): {e}"))
            })?;
        match serde_json::from_value::<InvokeResponse>(value.clone()) {
            Ok(InvokeResponse::Error(failure)) => Err(failure.into()),
            Ok(InvokeResponse::Ok(value)) => Ok(value),
            Err(_) if status.is_success() => Ok(value),
            Err(_) => Err(ControlError::Http(format!("{path}: HTTP {status}"))),
        }
    }

    fn unreachable(&self, error: ureq::Error) -> ControlError {
        match error {
            ureq::Error::Io(_) | ureq::Error::ConnectionFailed => ControlError::Http(format!(
                "the node at {} is not answering (is `clawnode run` still running?): {error}",
                self.base
            )),
            other => ControlError::Http(other.to_string()),
        }
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Result<Value, ControlError> {
        let response = self
            .agent
            .get(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {}", self.token))
            .call()
            .map_err(|e| self.unreachable(e))?;
        self.decode(path, response)
    }

    /// `POST /v1/invoke`.
    pub fn invoke(&self, body: &InvokeBody) -> Result<Value, ControlError> {
        let response = self
            .agent
            .post(format!("{}/v1/invoke", self.base))
            .header("Authorization", format!("Bearer {}", self.token))
            .send_json(body)
            .map_err(|e| self.unreachable(e))?;
        self.decode("/v1/invoke", response)
    }
}
