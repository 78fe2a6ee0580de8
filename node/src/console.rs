//! The fleet console: a web page served on the control API's loopback listener, and the stream
//! of snapshots it shows.
//!
//! | method | path                 | answer |
//! |--------|----------------------|--------|
//! | GET    | `/console`           | the page (a login prompt until a token or key is given) |
//! | GET    | `/console/app.js`, `/console/app.css` | its script and style |
//! | GET    | `/v1/console/events` | server-sent events: a [`ConsoleSnapshot`] every second (bearer token or API key) |
//! | GET    | `/v1/console/logs?workload=ID` | server-sent events: the workload's last 200 lines every second (bearer token or API key) |
//! | POST   | `/v1/console/act`    | one of the console's few actions ([`ConsoleAction`]), run as its command under the viewer's token or key |
//!
//! The page and its files ([`claw_api::console`]) are compiled into the binary; nothing is fetched from elsewhere. The
//! page holds no data until it is given the node's control token or an API key: with a key it
//! gets only what the key may read (each part as the command answering it would allow), and the
//! key is checked again before every event. A snapshot is read from what the node holds (its
//! fleet view, its own GPUs, workloads, book, leases and price history): no call to any other
//! node, however large the fleet, and no audit record per snapshot. Its only writes are the few
//! actions of [`ConsoleAction`], each run as the node command it names, under the viewer's key
//! (so with no more than the key allows) and audited like any other call.

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use claw_api::auth::ApiKeyInfo;
use claw_api::console::{
    ConsoleDeployment, ConsoleNode, ConsoleReading, ConsoleSnapshot, ConsoleWorkload, LISTED, PAGE,
    SCRIPT, STYLE, SignedIn, running_replicas,
};
use claw_api::deploy::DeployList;
use claw_api::market::{
    HistoryParams, LeasesParams, MarketHistory, MarketLeases, MarketOffers, OffersParams,
};
use claw_api::node::{GpuMetrics as GpuMetricsCommand, NodeHealth};
use claw_api::workload::{LogsParams, WorkloadList, WorkloadLogs};
use claw_api::{Command, Role};
use claw_mesh::{ApiToken, ErrorCode, InvokeFailure, InvokeRequest};
use serde::Deserialize;

use crate::control::{
    ControlState, answer_response, authorized, bearer, failure_response, unauthorized,
};

/// How often a snapshot (or a workload's log tail) is sent.
const EVERY: Duration = Duration::from_secs(1);
/// How long an action may take (a graceful stop waits for the container).
const ACTION_DEADLINE: Duration = Duration::from_secs(60);
/// Log lines each logs event carries: the newest.
const LOG_LINES: u32 = 200;

/// The console's routes, for the control API's router.
pub(crate) fn routes() -> Router<ControlState> {
    Router::new()
        .route(
            "/console",
            get(|| async { asset("text/html; charset=utf-8", PAGE) }),
        )
        .route(
            "/console/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/console/app.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .route("/v1/console/events", get(events))
        .route("/v1/console/logs", get(logs))
        .route("/v1/console/act", post(act))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // The page runs only its own files, and talks only to this node.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; frame-ancestors 'self'",
            ),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// Who is looking: the node's control token (its admin), or an API key, checked again before
/// every event so that a revoked or expired key stops seeing anything at once.
#[derive(Clone)]
enum Viewer {
    Admin,
    Key(ApiToken),
}

impl Viewer {
    /// The viewer a request's bearer token makes, or 401.
    async fn of(state: &ControlState, headers: &HeaderMap) -> Result<Self, Response> {
        if authorized(state, headers) {
            return Ok(Self::Admin);
        }
        let presented = bearer(headers);
        if !presented.starts_with("claw_") {
            return Err(unauthorized());
        }
        let viewer = Self::Key(ApiToken::new(presented));
        viewer.key(state).await.map_err(|_| unauthorized())?;
        Ok(viewer)
    }

    /// The API key as it stands now (`None` for the admin), or why it no longer works.
    async fn key(&self, state: &ControlState) -> Result<Option<ApiKeyInfo>, InvokeFailure> {
        match self {
            Self::Admin => Ok(None),
            Self::Key(token) => state.commands().objects().key_of(token).await.map(Some),
        }
    }
}

/// Whether `key` (none: the admin) may read what command `C` answers.
fn may<C: Command>(key: Option<&ApiKeyInfo>, withheld: &mut Vec<String>) -> bool {
    match key.and_then(|k| k.refusal(C::NAME, C::ROLE, &[])) {
        None => true,
        Some(why) => {
            withheld.push(why);
            false
        }
    }
}

async fn snapshot(state: &ControlState, key: Option<&ApiKeyInfo>) -> ConsoleSnapshot {
    let mut withheld = Vec::new();
    let see_nodes = may::<NodeHealth>(key, &mut withheld);
    let see_readings = may::<GpuMetricsCommand>(key, &mut withheld);
    let see_workloads = may::<WorkloadList>(key, &mut withheld);
    let commands = state.commands();
    let mesh = state.mesh();
    let addrs = crate::listen_addr_texts(mesh).await;
    let reachability = mesh.reachability();
    let (dir, store, probe) = (
        state.dir().clone(),
        commands.store().clone(),
        std::sync::Arc::clone(commands.probe()),
    );
    let local = tokio::task::spawn_blocking(move || {
        let announcement = crate::announcement(&dir, &store, &probe, addrs, reachability).ok();
        let readings: Vec<ConsoleReading> = probe
            .metrics(None)
            .iter()
            .map(ConsoleReading::from)
            .collect();
        (announcement, readings)
    })
    .await;
    let (announcement, mut readings) = local.unwrap_or((None, Vec::new()));
    if !see_readings {
        readings.clear();
    }
    let node_name = announcement
        .as_ref()
        .map(|a| a.name.clone())
        .unwrap_or_default();
    let me = mesh.local_peer_id();
    let mut nodes: Vec<ConsoleNode> = Vec::new();
    if see_nodes {
        nodes.extend(
            announcement
                .as_ref()
                .map(|a| a.console_node(me.to_string(), true, None)),
        );
        nodes.extend(mesh.fleet().iter().filter(|m| m.peer_id != me).map(|m| {
            m.announcement
                .console_node(m.peer_id.to_string(), false, Some(m.issued_at_ms))
        }));
    }
    let mut workloads: Vec<ConsoleWorkload> = if !see_workloads {
        Vec::new()
    } else {
        commands
            .workloads()
            .list(claw_api::workload::ListParams {
                state: None,
                labels: Default::default(),
                gpu: None,
                all: true,
            })
            .await
            .unwrap_or_default()
            .into_iter()
            .rev()
            .map(|w| ConsoleWorkload::of(node_name.clone(), w.view(false)))
            .collect()
    };
    let deployments = if may::<DeployList>(key, &mut withheld) {
        let running = running_replicas(&workloads);
        commands.objects().deployments().await.ok().map(|listing| {
            listing
                .deployments
                .iter()
                .map(|d| ConsoleDeployment::of(d, &running))
                .collect()
        })
    } else {
        None
    };
    workloads.truncate(LISTED);
    let market = commands.market();
    let offers = if may::<MarketOffers>(key, &mut withheld) {
        market
            .offers(OffersParams {
                limit: Some(LISTED),
                ..OffersParams::default()
            })
            .ok()
    } else {
        None
    };
    let leases = if may::<MarketLeases>(key, &mut withheld) {
        market
            .leases(LeasesParams::default())
            .await
            .ok()
            .map(|mut l| {
                l.leases.truncate(LISTED);
                l
            })
    } else {
        None
    };
    let history = if may::<MarketHistory>(key, &mut withheld) {
        market
            .history(HistoryParams {
                since_ms: Some(crate::now_ms().saturating_sub(30 * 86_400_000)),
                limit: Some(20),
                ..HistoryParams::default()
            })
            .await
            .ok()
    } else {
        None
    };
    let interval_ms = u64::try_from(mesh.announce_interval().as_millis()).unwrap_or(u64::MAX);
    let signed_in = match key {
        None => SignedIn {
            with: "control token".to_owned(),
            name: None,
            role: Role::Admin,
        },
        Some(k) => SignedIn {
            with: "API key".to_owned(),
            name: Some(k.name.clone()),
            role: k.role,
        },
    };
    ConsoleSnapshot {
        scope: "node".to_owned(),
        at_ms: crate::now_ms(),
        signed_in,
        withheld,
        silent_after_ms: 2 * interval_ms + 1000,
        nodes,
        readings,
        workloads,
        deployments,
        offers,
        leases,
        history,
    }
}

/// Server-sent events, one `event` every [`EVERY`] (the first at once), each made by `next`,
/// until the page goes away, `next` answers `None`, or the node stops (so that an open page never
/// holds up a stop).
fn every_second<F, Fut>(state: ControlState, event: &'static str, next: F) -> Response
where
    F: Fn(ControlState) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Option<String>> + Send,
{
    let stream = futures::stream::unfold((state, true), move |(state, first)| {
        let next = next.clone();
        async move {
            let stopping = state.stopping().clone();
            if !first {
                tokio::select! {
                    () = tokio::time::sleep(EVERY) => {}
                    () = stopping.cancelled() => return None,
                }
            }
            if stopping.is_cancelled() {
                return None;
            }
            let data = next(state.clone()).await?;
            let message = Bytes::from(format!("event: {event}\ndata: {data}\n\n"));
            Some((Ok::<_, Infallible>(message), (state, false)))
        }
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

/// `GET /v1/console/events`: a snapshot now and every second after.
async fn events(State(state): State<ControlState>, headers: HeaderMap) -> Response {
    let viewer = match Viewer::of(&state, &headers).await {
        Ok(viewer) => viewer,
        Err(refused) => return refused,
    };
    every_second(state, "snapshot", move |state| {
        let viewer = viewer.clone();
        async move {
            // A key revoked or expired since: the stream ends, and the page asks again.
            let key = viewer.key(&state).await.ok()?;
            serde_json::to_string(&snapshot(&state, key.as_ref()).await).ok()
        }
    })
}

/// `GET /v1/console/logs?workload=ID`: the workload's newest lines now and every second after
/// (or why there are none).
async fn logs(
    State(state): State<ControlState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let viewer = match Viewer::of(&state, &headers).await {
        Ok(viewer) => viewer,
        Err(refused) => return refused,
    };
    let workload = query
        .as_deref()
        .and_then(|q| q.strip_prefix("workload="))
        .filter(|id| {
            !id.is_empty()
                && id.len() <= 64
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .map(str::to_owned);
    let Some(workload) = workload else {
        return failure_response(InvokeFailure::new(
            ErrorCode::InvalidParams,
            "give ?workload=<workload id>",
        ));
    };
    every_second(state, "logs", move |state| {
        let (workload, viewer) = (workload.clone(), viewer.clone());
        async move {
            let key = viewer.key(&state).await.ok()?;
            let mut withheld = Vec::new();
            if !may::<WorkloadLogs>(key.as_ref(), &mut withheld) {
                return serde_json::to_string(&serde_json::json!({"error": withheld.join("; ")}))
                    .ok();
            }
            let tail = state
                .commands()
                .workloads()
                .logs(LogsParams {
                    workload,
                    tail: Some(LOG_LINES),
                    since: None,
                })
                .await;
            match tail {
                Ok(tail) => serde_json::to_string(&tail),
                Err(error) => {
                    serde_json::to_string(&serde_json::json!({"error": error.to_string()}))
                }
            }
            .ok()
        }
    })
}

/// Most bytes an action's body may have.
const MAX_ACTION_BYTES: usize = 1024;

/// What the console can do besides reading: each is one node command.
#[derive(Debug, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
enum ConsoleAction {
    /// `node.cordon`.
    Cordon,
    /// `node.uncordon`.
    Uncordon,
    /// `workload.stop`.
    StopWorkload { workload: String },
    /// `market.lease.cancel` (a lease this node bought).
    EndLease { lease_id: String },
}

impl ConsoleAction {
    /// The command it runs and its params.
    fn command(self) -> (&'static str, serde_json::Value) {
        use claw_api::market::MarketLeaseCancel;
        use claw_api::node::{NodeCordon, NodeUncordon};
        use claw_api::workload::WorkloadStop;
        match self {
            Self::Cordon => (NodeCordon::NAME, serde_json::json!({})),
            Self::Uncordon => (NodeUncordon::NAME, serde_json::json!({})),
            Self::StopWorkload { workload } => (
                WorkloadStop::NAME,
                serde_json::json!({ "workload": workload }),
            ),
            Self::EndLease { lease_id } => (
                MarketLeaseCancel::NAME,
                serde_json::json!({ "lease_id": lease_id }),
            ),
        }
    }
}

/// `POST /v1/console/act`: one [`ConsoleAction`], answered as its command answers.
async fn act(State(state): State<ControlState>, headers: HeaderMap, body: Bytes) -> Response {
    let viewer = match Viewer::of(&state, &headers).await {
        Ok(viewer) => viewer,
        Err(refused) => return refused,
    };
    if body.len() > MAX_ACTION_BYTES {
        return failure_response(InvokeFailure::new(
            ErrorCode::InvalidParams,
            format!("an action has at most {MAX_ACTION_BYTES} bytes"),
        ));
    }
    let action: ConsoleAction = match serde_json::from_slice(&body) {
        Ok(action) => action,
        Err(e) => {
            return failure_response(InvokeFailure::new(
                ErrorCode::InvalidParams,
                format!("not a console action: {e}"),
            ));
        }
    };
    let (command, params) = action.command();
    let mut request = InvokeRequest::new(command, ACTION_DEADLINE).with_params(params);
    if let Viewer::Key(token) = viewer {
        request.api_key = Some(token);
    }
    answer_response(state.run_here(request).await)
}
