//! The fleet console: a web page served on the control API's loopback listener, and the stream
//! of snapshots it shows.
//!
//! | method | path                 | answer |
//! |--------|----------------------|--------|
//! | GET    | `/console`           | the page (a login prompt until a token or key is given) |
//! | GET    | `/console/app.js`, `/console/app.css` | its script and style |
//! | GET    | `/v1/console/events` | server-sent events: a [`Snapshot`] every second (bearer token or API key) |
//! | GET    | `/v1/console/logs?workload=ID` | server-sent events: the workload's last 200 lines every second (bearer token or API key) |
//!
//! The page and its files are compiled into the binary; nothing is fetched from elsewhere. The
//! page holds no data until it is given the node's control token or an API key: with a key it
//! gets only what the key may read (each part as the command answering it would allow), and the
//! key is checked again before every event. A snapshot is read from what the node holds (its
//! fleet view, its own GPUs, workloads, book, leases and price history): no call to any other
//! node, however large the fleet, and no audit record per snapshot. The console only reads.

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use claw_api::auth::ApiKeyInfo;
use claw_api::market::{
    HistoryParams, LeaseListing, LeasesParams, MarketHistory, MarketLeases, MarketOffers,
    OfferListing, OffersParams, PriceHistory,
};
use claw_api::node::{GpuMetrics as GpuMetricsCommand, NodeHealth};
use claw_api::workload::{LogsParams, WorkloadList, WorkloadLogs};
use claw_api::{Command, Role};
use claw_attestation::GpuMetrics;
use claw_mesh::{ApiToken, ErrorCode, FleetMember, InvokeFailure, NodeAnnouncement};
use serde::Serialize;

use crate::control::{ControlState, authorized, bearer, failure_response, unauthorized};

const PAGE: &str = include_str!("../console/index.html");
const SCRIPT: &str = include_str!("../console/app.js");
const STYLE: &str = include_str!("../console/app.css");

/// How often a snapshot (or a workload's log tail) is sent.
const EVERY: Duration = Duration::from_secs(1);
/// Log lines each logs event carries: the newest.
const LOG_LINES: u32 = 200;
/// Trades and leases a snapshot lists at most.
const LISTED: usize = 200;

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

/// One GPU as the console lists it.
#[derive(Debug, Serialize)]
struct ConsoleGpu {
    uuid: String,
    model: String,
    memory_mib: u64,
    simulated: bool,
    allocated: bool,
}

/// One node as the console lists it: what its latest signed announcement says.
#[derive(Debug, Serialize)]
struct ConsoleNode {
    peer_id: String,
    /// The node serving the console.
    local: bool,
    name: String,
    region: Option<String>,
    cordoned: bool,
    running_workloads: u32,
    software_version: String,
    /// When its latest announcement was signed, Unix ms (`None` for this node).
    announced_ms: Option<u64>,
    gpus: Vec<ConsoleGpu>,
}

impl ConsoleNode {
    fn of(peer_id: String, local: bool, a: &NodeAnnouncement, announced_ms: Option<u64>) -> Self {
        Self {
            peer_id,
            local,
            name: a.name.clone(),
            region: a.region.clone(),
            cordoned: a.cordoned,
            running_workloads: a.running_workloads,
            software_version: a.software_version.clone(),
            announced_ms,
            gpus: a
                .inventory
                .gpus
                .iter()
                .map(|g| ConsoleGpu {
                    uuid: g.uuid.clone(),
                    model: g.model.clone(),
                    memory_mib: g.memory_total_bytes / (1024 * 1024),
                    simulated: g.simulated,
                    allocated: a.allocated_gpus.contains(&g.uuid),
                })
                .collect(),
        }
    }
}

impl From<&FleetMember> for ConsoleNode {
    fn from(member: &FleetMember) -> Self {
        Self::of(
            member.peer_id.to_string(),
            false,
            &member.announcement,
            Some(member.issued_at_ms),
        )
    }
}

/// A workload of this node, without its environment (which may hold secrets).
#[derive(Debug, Serialize)]
struct ConsoleWorkload {
    id: String,
    name: Option<String>,
    image: String,
    state: String,
    gpus: Vec<String>,
    simulated_gpus: bool,
    created_ms: u64,
    reason: Option<String>,
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

/// Who the console shows as signed in.
#[derive(Debug, Serialize)]
struct SignedIn {
    /// `control token` or `API key`.
    with: &'static str,
    /// The key's name.
    name: Option<String>,
    role: Role,
}

/// What the console shows, as of `at_ms`.
#[derive(Debug, Serialize)]
struct Snapshot {
    at_ms: u64,
    signed_in: SignedIn,
    /// What the viewer's API key may not read, and why.
    withheld: Vec<String>,
    /// A node whose latest announcement is older than this is shown silent (it leaves the
    /// view once it misses its configured number of intervals).
    silent_after_ms: u64,
    /// The nodes that announce themselves to this one, and this node first.
    nodes: Vec<ConsoleNode>,
    /// This node's real GPUs as NVML reads them now (simulated GPUs have no readings).
    readings: Vec<GpuMetrics>,
    workloads: Vec<ConsoleWorkload>,
    offers: Option<OfferListing>,
    leases: Option<LeaseListing>,
    history: Option<PriceHistory>,
}

async fn snapshot(state: &ControlState, key: Option<&ApiKeyInfo>) -> Snapshot {
    let mut withheld = Vec::new();
    let see_nodes = may::<NodeHealth>(key, &mut withheld);
    let see_readings = may::<GpuMetricsCommand>(key, &mut withheld);
    let see_workloads = may::<WorkloadList>(key, &mut withheld);
    let commands = state.commands();
    let mesh = state.mesh();
    let addrs = crate::listen_addr_texts(mesh).await;
    let (dir, store, probe) = (
        state.dir().clone(),
        commands.store().clone(),
        std::sync::Arc::clone(commands.probe()),
    );
    let local = tokio::task::spawn_blocking(move || {
        let announcement = crate::announcement(&dir, &store, &probe, addrs).ok();
        (announcement, probe.metrics(None))
    })
    .await;
    let (announcement, mut readings) = local.unwrap_or((None, Vec::new()));
    if !see_readings {
        readings.clear();
    }
    let me = mesh.local_peer_id();
    let mut nodes: Vec<ConsoleNode> = Vec::new();
    if see_nodes {
        nodes.extend(announcement.map(|a| ConsoleNode::of(me.to_string(), true, &a, None)));
        nodes.extend(
            mesh.fleet()
                .iter()
                .filter(|m| m.peer_id != me)
                .map(ConsoleNode::from),
        );
    }
    let workloads = if !see_workloads {
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
            .take(LISTED)
            .map(|w| ConsoleWorkload {
                id: w.id,
                name: w.name,
                image: w.image,
                state: w.state.to_string(),
                gpus: w.gpus,
                simulated_gpus: w.simulated_gpus,
                created_ms: w.created_ms,
                reason: w.reason,
            })
            .collect()
    };
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
    let interval_ms = state.dir().config().mesh.announce_interval_secs * 1000;
    let signed_in = match key {
        None => SignedIn {
            with: "control token",
            name: None,
            role: Role::Admin,
        },
        Some(k) => SignedIn {
            with: "API key",
            name: Some(k.name.clone()),
            role: k.role,
        },
    };
    Snapshot {
        at_ms: crate::now_ms(),
        signed_in,
        withheld,
        silent_after_ms: 2 * interval_ms + 1000,
        nodes,
        readings,
        workloads,
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
