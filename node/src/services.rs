//! Services through the mesh. A forward (`service.forward`) listens on a loopback port of this
//! node; each connection to it becomes a libp2p stream (`/clawbernetes/service/1`, over the
//! mesh's Noise-encrypted connections) to the node running an endpoint, which checks the caller
//! and pipes the stream to the endpoint's container port. So a service is reached from any
//! member, and a buyer reaches its leased container, with nothing published on the provider.
//!
//! Only ready endpoints take connections: a deployment's replica with a health check once its
//! check passes.
//!
//! The node at the far end decides who gets through: for a service, a caller with the operate
//! role there, to a running workload the service selects, on the service's port only; for a
//! lease, only the lease's buyer, to that lease's container.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use claw_api::deploy::{DEPLOYMENT_LABEL, ReplicaHealth};
use claw_api::services::{
    Endpoint, EndpointListing, Forward, ForwardListing, ForwardParams, Lookup, MAX_FORWARDS,
    NetworkStatus, PeerLink, ServiceEndpoints, ServiceRef, StreamTarget, Traffic,
};
use claw_api::{Command as _, ErrorCode, InvokeFailure, Role};
use claw_market::lease::Side;
use claw_mesh::{InvokeRequest, MeshHandle, PeerId, Stream, StreamProtocol};
use futures::StreamExt as _;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio_util::compat::FuturesAsyncReadCompatExt as _;

use crate::access::AccessPolicy;
use crate::controller::{Deployments, Split, TEMPLATE_LABEL, Tag};
use crate::objects::FleetObjects;
use crate::store::Store;
use crate::workloads::Workloads;

/// The protocol of service streams.
pub const SERVICE_PROTOCOL: StreamProtocol = StreamProtocol::new("/clawbernetes/service/1");
/// Longest first line of a stream.
const MAX_HEADER: usize = 1024;
/// How long a stream to the far end may take to open, and the far end to answer the first
/// line and connect to the container.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);
/// Streams served at once; beyond this a stream is refused.
const MAX_INBOUND: usize = 256;
/// How long a service's endpoints are reused before they are asked again.
const ENDPOINTS_FRESH: Duration = Duration::from_secs(5);
/// How long a service's canary split is reused before it is read again from the deployment
/// and its canary record (a step moves on one controller round, a second here, after it
/// passed).
const SPLIT_FRESH: Duration = Duration::from_secs(1);
/// How a refused stream says the container itself did not take the connection.
const UNANSWERED: &str = "the container does not answer";
/// How long a member may take to list its endpoints.
const ENDPOINTS_DEADLINE: Duration = Duration::from_secs(3);
/// How long `network.lookup` waits for its walk (the mesh gives a walk up after 30 s).
const LOOKUP_DEADLINE: Duration = Duration::from_secs(35);

fn failure(code: ErrorCode, message: impl Into<String>) -> InvokeFailure {
    InvokeFailure::new(code, message)
}

struct Open {
    target: String,
    connections: Arc<AtomicU64>,
    task: tokio::task::AbortHandle,
}

/// Traffic counters: (target, direction) → (connections, to the workload, from it).
type Counters = HashMap<(String, &'static str), (u64, u64, u64)>;

#[derive(Default)]
struct Cache {
    /// Service → when its endpoints were read, and the endpoints.
    endpoints: HashMap<String, (Instant, Vec<(PeerId, Endpoint)>)>,
    /// Service → when its canary split was read, and the split.
    splits: HashMap<String, (Instant, Option<Split>)>,
}

struct Inner {
    objects: FleetObjects,
    workloads: Workloads,
    deployments: Deployments,
    store: Store,
    access: AccessPolicy,
    mesh: OnceLock<MeshHandle>,
    forwards: Mutex<HashMap<String, Open>>,
    cache: Mutex<Cache>,
    next: AtomicUsize,
    inbound: Arc<tokio::sync::Semaphore>,
    traffic: Mutex<Counters>,
}

/// This node's forwards, and its end of other nodes' streams. Cheap to clone.
#[derive(Clone)]
pub struct Services {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services").finish_non_exhaustive()
    }
}

/// A byte stream to an endpoint: a mesh stream, or a container's socket on this node.
pub(crate) trait Connection:
    tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send
{
}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Connection for T {}

/// A connection to an endpoint that counts its bytes each way and notes when the first byte
/// went each way (a canary's latency). A connection with a traffic target (an ingress's) adds its
/// bytes to the traffic counters when it closes.
struct Metered {
    inner: Box<dyn Connection>,
    /// The services and target to count the bytes under when it closes.
    counted_as: Option<(Services, String)>,
    to_workload: u64,
    from_workload: u64,
    first_write: Option<Instant>,
    first_read: Option<Instant>,
}

impl Metered {
    fn new(inner: Box<dyn Connection>, counted_as: Option<(Services, String)>) -> Self {
        Self {
            inner,
            counted_as,
            to_workload: 0,
            from_workload: 0,
            first_write: None,
            first_read: None,
        }
    }

    /// What the connection was as a canary's request: answered after the time from the first
    /// byte sent to the first byte back, failed when nothing came back, and no request at all
    /// when nothing went either way.
    fn as_request(&self) -> Option<Result<f64, ()>> {
        match (self.first_write, self.first_read) {
            (Some(sent), Some(answered)) => Some(Ok(answered
                .saturating_duration_since(sent)
                .as_secs_f64()
                * 1000.0)),
            (None, Some(_)) => Some(Ok(0.0)),
            (Some(_), None) => Some(Err(())),
            (None, None) => None,
        }
    }
}

impl tokio::io::AsyncRead for Metered {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut this.inner).poll_read(cx, buf);
        if let std::task::Poll::Ready(Ok(())) = polled {
            let read = (buf.filled().len() - before) as u64;
            if read > 0 && this.first_read.is_none() {
                this.first_read = Some(Instant::now());
            }
            this.from_workload += read;
        }
        polled
    }
}

impl tokio::io::AsyncWrite for Metered {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.inner).poll_write(cx, data);
        if let std::task::Poll::Ready(Ok(written)) = polled {
            if written > 0 && this.first_write.is_none() {
                this.first_write = Some(Instant::now());
            }
            this.to_workload += written as u64;
        }
        polled
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        if let Some((services, target)) = self.counted_as.take() {
            services.count(target, "ingress", (self.to_workload, self.from_workload));
        }
    }
}

/// Where a forward's connections go.
#[derive(Debug, Clone)]
enum Target {
    Service(String),
    Lease {
        lease: String,
        provider: PeerId,
        port: u16,
    },
}

impl Target {
    fn describe(&self) -> String {
        match self {
            Self::Service(name) => format!("service/{name}"),
            Self::Lease { lease, port, .. } => format!("lease/{lease}:{port}"),
        }
    }
}

impl Services {
    /// The services of a node with these parts.
    pub fn new(
        objects: FleetObjects,
        workloads: Workloads,
        deployments: Deployments,
        store: Store,
        access: AccessPolicy,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                objects,
                workloads,
                deployments,
                store,
                access,
                mesh: OnceLock::new(),
                forwards: Mutex::default(),
                cache: Mutex::default(),
                next: AtomicUsize::new(0),
                inbound: Arc::new(tokio::sync::Semaphore::new(MAX_INBOUND)),
                traffic: Mutex::default(),
            }),
        }
    }

    fn mesh(&self) -> Result<&MeshHandle, InvokeFailure> {
        self.inner
            .mesh
            .get()
            .ok_or_else(|| failure(ErrorCode::Unavailable, "the mesh is not up"))
    }

    /// Connects to the running mesh and serves the streams other nodes open here, until the
    /// mesh stops.
    pub async fn run(self, mesh: MeshHandle) {
        let _ = self.inner.mesh.set(mesh.clone());
        let mut incoming = match mesh.accept_streams(SERVICE_PROTOCOL) {
            Ok(incoming) => incoming,
            Err(error) => {
                tracing::error!(%error, "service streams not served");
                return;
            }
        };
        while let Some((peer, stream)) = incoming.next().await {
            let Ok(permit) = Arc::clone(&self.inner.inbound).try_acquire_owned() else {
                tracing::warn!(%peer, "a service stream refused: too many at once");
                continue;
            };
            let services = self.clone();
            tokio::spawn(async move {
                services.serve(peer, stream).await;
                drop(permit);
            });
        }
    }

    /// Counts one connection to `target` in `direction` and its bytes (to, from the workload).
    fn count(&self, target: String, direction: &'static str, bytes: (u64, u64)) {
        let mut traffic = self
            .inner
            .traffic
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Bounded by the services and leases of the fleet; a target that grows past that is
        // folded into one line.
        let key = if traffic.len() >= 1024 && !traffic.contains_key(&(target.clone(), direction)) {
            ("other".to_owned(), direction)
        } else {
            (target, direction)
        };
        let entry = traffic.entry(key).or_default();
        entry.0 += 1;
        entry.1 += bytes.0;
        entry.2 += bytes.1;
    }

    /// `network.status`.
    pub async fn network(&self) -> Result<NetworkStatus, InvokeFailure> {
        let mesh = self.mesh()?;
        let connected = mesh.connected_peers().await.unwrap_or_default();
        let local = self.inner.access.local();
        let peers = mesh
            .fleet()
            .into_iter()
            .filter(|m| m.peer_id != local)
            .map(|m| PeerLink {
                peer: m.peer_id.to_string(),
                name: m.announcement.name.chars().take(64).collect(),
                connected: connected.contains(&m.peer_id),
            })
            .collect();
        let mut traffic: Vec<Traffic> = self
            .inner
            .traffic
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|((target, direction), (connections, to, from))| Traffic {
                target: target.clone(),
                direction: (*direction).to_owned(),
                connections: *connections,
                bytes_to_workload: *to,
                bytes_from_workload: *from,
            })
            .collect();
        traffic.sort_by(|a, b| (&a.target, &a.direction).cmp(&(&b.target, &b.direction)));
        Ok(NetworkStatus {
            peers,
            forwards: self.forwards().forwards,
            traffic,
        })
    }

    /// `network.lookup`: a Kademlia walk towards `peer`, timed.
    pub async fn lookup(&self, peer: &str) -> Result<Lookup, InvokeFailure> {
        let key: PeerId = peer
            .parse()
            .map_err(|_| failure(ErrorCode::InvalidParams, "`peer` is not a peer id"))?;
        let mesh = self.mesh()?;
        let started = Instant::now();
        let closest = tokio::time::timeout(LOOKUP_DEADLINE, mesh.closest_peers(key))
            .await
            .map_err(|_| {
                failure(
                    ErrorCode::Unavailable,
                    "the DHT walk did not finish in time",
                )
            })?
            .map_err(|e| failure(ErrorCode::Unavailable, e.to_string()))?;
        Ok(Lookup {
            peer: key.to_string(),
            closest: closest.iter().map(PeerId::to_string).collect(),
            took_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        })
    }

    /// `service.endpoints`: this node's running workloads that service `name` selects and that
    /// are ready: a deployment's replica with a health check only once the check has passed
    /// (not while it starts, nor once it fails).
    pub async fn endpoints(&self, name: &str) -> Result<EndpointListing, InvokeFailure> {
        let service = self.inner.objects.service(name).await?.ok_or_else(|| {
            failure(
                ErrorCode::NotFound,
                format!("no service {name:?} (service.list lists them)"),
            )
        })?;
        let node = self.inner.access.local().to_string();
        let endpoints = self
            .inner
            .workloads
            .active()
            .await?
            .into_iter()
            .filter(|w| service.spec.selects(&w.labels))
            .filter(|w| {
                !matches!(
                    self.inner.deployments.replica_health(&w.id),
                    Some(ReplicaHealth::Starting | ReplicaHealth::Unhealthy)
                )
            })
            .map(|w| Endpoint {
                node: node.clone(),
                deployment: w.labels.get(DEPLOYMENT_LABEL).cloned(),
                template: w.labels.get(TEMPLATE_LABEL).cloned(),
                workload: w.id,
            })
            .collect();
        Ok(EndpointListing { endpoints })
    }

    /// Every member's endpoints of service `name`, read at most every few seconds.
    async fn fleet_endpoints(&self, name: &str) -> Result<Vec<(PeerId, Endpoint)>, InvokeFailure> {
        {
            let cache = self
                .inner
                .cache
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some((at, endpoints)) = cache.endpoints.get(name)
                && at.elapsed() < ENDPOINTS_FRESH
                && !endpoints.is_empty()
            {
                return Ok(endpoints.clone());
            }
        }
        let mesh = self.mesh()?;
        let local = self.inner.access.local();
        let params = serde_json::to_value(ServiceRef {
            name: name.to_owned(),
        })
        .map_err(|e| failure(ErrorCode::Internal, e.to_string()))?;
        let members = mesh.fleet_members();
        let asks = members.iter().map(|member| {
            let params = params.clone();
            async move {
                if member.peer_id == local {
                    return self.endpoints(name).await.ok();
                }
                let request = InvokeRequest::new(ServiceEndpoints::NAME, ENDPOINTS_DEADLINE)
                    .with_params(params);
                let answer = mesh.invoke(member.peer_id, request).await.ok()?;
                ServiceEndpoints::decode(answer).ok()
            }
        });
        let mut endpoints = Vec::new();
        for (member, listing) in members.iter().zip(futures::future::join_all(asks).await) {
            // A member answers for its own workloads only.
            for endpoint in listing.map(|l| l.endpoints).unwrap_or_default() {
                if endpoint.node == member.peer_id.to_string() {
                    endpoints.push((member.peer_id, endpoint));
                }
            }
        }
        endpoints.sort_by(|a, b| (a.0, &a.1.workload).cmp(&(b.0, &b.1.workload)));
        self.inner
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .endpoints
            .insert(name.to_owned(), (Instant::now(), endpoints.clone()));
        Ok(endpoints)
    }

    /// `service.forward`.
    pub async fn forward(&self, params: ForwardParams) -> Result<Forward, InvokeFailure> {
        let target = match (&params.service, &params.lease, params.port) {
            (Some(service), None, None) => {
                if self.inner.objects.service(service).await?.is_none() {
                    return Err(failure(
                        ErrorCode::NotFound,
                        format!("no service {service:?} (service.list lists them)"),
                    ));
                }
                Target::Service(service.clone())
            }
            (None, Some(lease), Some(port)) if port > 0 => {
                let id = lease.clone();
                let record = self
                    .inner
                    .store
                    .run(move |s| s.lease(&id))
                    .await?
                    .filter(|r| r.side == Side::Buyer)
                    .ok_or_else(|| {
                        failure(
                            ErrorCode::NotFound,
                            format!("this node bought no lease {lease:?}"),
                        )
                    })?;
                let provider = record.counterparty.parse().map_err(|_| {
                    failure(ErrorCode::Internal, "the lease's provider is not a peer id")
                })?;
                Target::Lease {
                    lease: lease.clone(),
                    provider,
                    port,
                }
            }
            _ => {
                return Err(failure(
                    ErrorCode::InvalidParams,
                    "give service, or lease and port",
                ));
            }
        };
        let listen: SocketAddr = params
            .listen
            .as_deref()
            .unwrap_or("127.0.0.1:0")
            .parse()
            .map_err(|e| failure(ErrorCode::InvalidParams, format!("listen: {e}")))?;
        if !listen.ip().is_loopback() {
            return Err(failure(
                ErrorCode::InvalidParams,
                "a forward listens on a loopback address only",
            ));
        }
        if self.open_count() >= MAX_FORWARDS {
            return Err(failure(
                ErrorCode::Conflict,
                format!("this node has {MAX_FORWARDS} forwards open: service.unforward one"),
            ));
        }
        let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
            failure(
                ErrorCode::Conflict,
                format!("cannot listen on {listen}: {e}"),
            )
        })?;
        let bound = listener
            .local_addr()
            .map_err(|e| failure(ErrorCode::Internal, e.to_string()))?
            .to_string();
        let connections = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(self.clone().accept(
            listener,
            target.clone(),
            Arc::clone(&connections),
        ));
        let forward = Forward {
            listen: bound.clone(),
            target: target.describe(),
            connections: 0,
        };
        self.inner
            .forwards
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                bound,
                Open {
                    target: target.describe(),
                    connections,
                    task: task.abort_handle(),
                },
            );
        tracing::info!(
            listen = forward.listen,
            target = forward.target,
            "forward opened"
        );
        Ok(forward)
    }

    fn open_count(&self) -> usize {
        self.inner
            .forwards
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// `service.unforward`.
    pub fn unforward(&self, listen: &str) -> Result<Forward, InvokeFailure> {
        let open = self
            .inner
            .forwards
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(listen)
            .ok_or_else(|| failure(ErrorCode::NotFound, format!("no forward on {listen}")))?;
        open.task.abort();
        Ok(Forward {
            listen: listen.to_owned(),
            target: open.target,
            connections: open.connections.load(Ordering::Relaxed),
        })
    }

    /// `service.forwards`.
    pub fn forwards(&self) -> ForwardListing {
        let forwards = self
            .inner
            .forwards
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(listen, open)| Forward {
                listen: listen.clone(),
                target: open.target.clone(),
                connections: open.connections.load(Ordering::Relaxed),
            })
            .collect();
        ForwardListing { forwards }
    }

    async fn accept(
        self,
        listener: tokio::net::TcpListener,
        target: Target,
        connections: Arc<AtomicU64>,
    ) {
        let open = Arc::new(tokio::sync::Semaphore::new(MAX_INBOUND));
        loop {
            let socket = match listener.accept().await {
                Ok((socket, _)) => socket,
                Err(error) => {
                    // Out of descriptors, say: wait rather than spin.
                    tracing::warn!(%error, "a forward's accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // At most this many connections at once per forward; the next waits.
            let Ok(permit) = Arc::clone(&open).acquire_owned().await else {
                return;
            };
            connections.fetch_add(1, Ordering::Relaxed);
            let (services, target) = (self.clone(), target.clone());
            tokio::spawn(async move {
                if let Err(error) = services.carry(socket, &target).await {
                    tracing::debug!(target = target.describe(), %error, "forwarded connection failed");
                }
                drop(permit);
            });
        }
    }

    /// Carries one local connection to `target`: the next endpoint that takes it. A canary's
    /// connection that sent anything counts as one request, answered when the endpoint sent
    /// anything back.
    async fn carry(&self, socket: tokio::net::TcpStream, target: &Target) -> Result<(), String> {
        let (endpoint, tag) = self.dial(target).await?;
        let mut endpoint = Metered::new(endpoint, None);
        let mut socket = socket;
        let _ = tokio::io::copy_bidirectional(&mut socket, &mut endpoint).await;
        if let (Some(tag), Some(outcome)) = (tag, endpoint.as_request()) {
            self.canary_count(&tag, outcome);
        }
        let bytes = (endpoint.to_workload, endpoint.from_workload);
        self.count(target.describe(), "out", bytes);
        Ok(())
    }

    /// Counts one request of a canary's split.
    pub(crate) fn canary_count(&self, tag: &Tag, outcome: Result<f64, ()>) {
        self.inner.deployments.canary_traffic().count(tag, outcome);
    }

    /// A connection to service `name`'s next endpoint that takes one, over the mesh (or
    /// straight to the container when the endpoint is on this node), for this node's ingress:
    /// its bytes are counted as the service's `ingress` traffic when it closes.
    /// With it, the canary tag of the endpoint reached, for the ingress to count the request's
    /// outcome under.
    pub(crate) async fn dial_service(
        &self,
        name: &str,
    ) -> Result<(Box<dyn Connection>, Option<Tag>), String> {
        let target = Target::Service(name.to_owned());
        let (inner, tag) = self.dial(&target).await?;
        let counted = Metered::new(inner, Some((self.clone(), target.describe())));
        Ok((Box::new(counted), tag))
    }

    /// How service `name`'s traffic is split among `endpoints` now, read at most every
    /// [`SPLIT_FRESH`] (not on every request: it takes the deployment and its canary record
    /// from the store).
    async fn split(&self, name: &str, endpoints: &[(PeerId, Endpoint)]) -> Option<Split> {
        let cached = self
            .inner
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .splits
            .get(name)
            .filter(|(at, _)| at.elapsed() < SPLIT_FRESH)
            .map(|(_, split)| split.clone());
        if let Some(split) = cached {
            return split;
        }
        let deployments = endpoints
            .iter()
            .filter_map(|(_, e)| e.deployment.as_deref());
        let split = self.inner.deployments.split(name, deployments).await;
        self.inner
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .splits
            .insert(name.to_owned(), (Instant::now(), split.clone()));
        split
    }

    /// Service `name`'s endpoints in the order to try them: round robin, and where a canary
    /// splits the service's traffic, its share to the canary's endpoints first and the rest to
    /// the others first. Each comes with its canary tag.
    async fn ordered(
        &self,
        name: &str,
        endpoints: Vec<(PeerId, Endpoint)>,
    ) -> Vec<(PeerId, Endpoint, Option<Tag>)> {
        let start = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let rotated = |list: Vec<(PeerId, Endpoint)>| {
            let len = list.len().max(1);
            let mut list = list;
            list.rotate_left(start % len);
            list
        };
        let Some(split) = self.split(name, &endpoints).await else {
            return rotated(endpoints)
                .into_iter()
                .map(|(node, e)| (node, e, None))
                .collect();
        };
        let (canary, others): (Vec<_>, Vec<_>) = endpoints
            .into_iter()
            .partition(|(_, e)| split.is_canary(e.deployment.as_deref(), e.template.as_deref()));
        let canary_first = self.inner.deployments.canary_traffic().canary_turn(&split);
        let (first, second) = if canary_first {
            (canary, others)
        } else {
            (others, canary)
        };
        rotated(first)
            .into_iter()
            .chain(rotated(second))
            .map(|(node, e)| {
                let tag = split.tag(e.deployment.as_deref(), e.template.as_deref(), node);
                (node, e, tag)
            })
            .collect()
    }

    /// A connection to `target`'s next endpoint that takes one, and its canary tag. An
    /// endpoint of a canary's split that does not take it counts as a failed request there.
    async fn dial(&self, target: &Target) -> Result<(Box<dyn Connection>, Option<Tag>), String> {
        let candidates: Vec<(PeerId, StreamTarget, Option<Tag>)> = match target {
            Target::Service(name) => {
                let endpoints = self.fleet_endpoints(name).await.map_err(|e| e.message)?;
                if endpoints.is_empty() {
                    return Err(format!("service {name} has no running endpoint"));
                }
                self.ordered(name, endpoints)
                    .await
                    .into_iter()
                    .map(|(node, endpoint, tag)| {
                        (
                            node,
                            StreamTarget {
                                service: Some(name.clone()),
                                workload: Some(endpoint.workload),
                                lease: None,
                                port: None,
                            },
                            tag,
                        )
                    })
                    .collect()
            }
            Target::Lease {
                lease,
                provider,
                port,
            } => vec![(
                *provider,
                StreamTarget {
                    service: None,
                    workload: None,
                    lease: Some(lease.clone()),
                    port: Some(*port),
                },
                None,
            )],
        };
        let mesh = self.mesh().map_err(|e| e.message)?;
        let local = self.inner.access.local();
        let mut last = String::new();
        for (node, header, tag) in candidates {
            let connected: Result<Box<dyn Connection>, String> = if node == local {
                // An endpoint here: no stream, the caller's own node admits it.
                self.connect(local, &header)
                    .await
                    .map(|c| Box::new(c) as Box<dyn Connection>)
            } else {
                open(mesh, node, &header)
                    .await
                    .map(|s| Box::new(s) as Box<dyn Connection>)
            };
            match connected {
                Ok(connection) => return Ok((connection, tag)),
                Err(error) => {
                    // Only the container's own silence is the revision's failure; a refusal
                    // (this node may not reach it) or an unreachable node is not.
                    if let Some(tag) = &tag
                        && error.contains(UNANSWERED)
                    {
                        self.canary_count(tag, Err(()));
                    }
                    // Ask afresh next time: the endpoint may be gone.
                    if let Target::Service(name) = target {
                        self.inner
                            .cache
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .endpoints
                            .remove(name);
                    }
                    last = format!("{node}: {error}");
                }
            }
        }
        Err(last)
    }

    /// Serves a stream `peer` opened here: checks what it asks for, then pipes it to the
    /// container.
    async fn serve(&self, peer: PeerId, stream: Stream) {
        let mut stream = BufReader::new(stream.compat());
        let answer =
            match tokio::time::timeout(HANDSHAKE_DEADLINE, self.admit(peer, &mut stream)).await {
                Ok(answer) => answer,
                Err(_) => Err("no request in time".to_owned()),
            };
        match answer {
            Ok((mut container, target)) => {
                if stream.get_mut().write_all(b"ok\n").await.is_err() {
                    return;
                }
                let bytes = tokio::io::copy_bidirectional(&mut stream, &mut container)
                    .await
                    .unwrap_or_default();
                self.count(target, "in", bytes);
            }
            Err(refused) => {
                tracing::info!(%peer, %refused, "service stream refused");
                let line = format!("error: {}\n", refused.chars().take(200).collect::<String>());
                let _ = stream.get_mut().write_all(line.as_bytes()).await;
                let _ = stream.get_mut().shutdown().await;
            }
        }
    }

    /// Reads the first line and, when `peer` may reach what it names, connects to it.
    async fn admit(
        &self,
        peer: PeerId,
        stream: &mut BufReader<tokio_util::compat::Compat<Stream>>,
    ) -> Result<(tokio::net::TcpStream, String), String> {
        let mut line = Vec::new();
        let read = (&mut *stream)
            .take(MAX_HEADER as u64)
            .read_until(b'\n', &mut line)
            .await
            .map_err(|e| e.to_string())?;
        if read == 0 || line.last() != Some(&b'\n') {
            return Err("the request is not one line of at most 1 KiB".to_owned());
        }
        let target: StreamTarget =
            serde_json::from_slice(&line).map_err(|e| format!("malformed request: {e}"))?;
        let described = match (&target.service, &target.lease) {
            (Some(service), _) => format!("service/{service}"),
            (_, Some(lease)) => format!("lease/{lease}:{}", target.port.unwrap_or(0)),
            _ => "unknown".to_owned(),
        };
        Ok((self.connect(peer, &target).await?, described))
    }

    /// Connects to what `target` names, when `peer` may reach it.
    async fn connect(
        &self,
        peer: PeerId,
        target: &StreamTarget,
    ) -> Result<tokio::net::TcpStream, String> {
        let (workload, port) = match (
            &target.service,
            &target.workload,
            &target.lease,
            target.port,
        ) {
            (Some(service), Some(workload), None, None) => {
                if self.inner.access.role_of(&peer) < Role::Operate {
                    return Err(format!("{peer} may not reach services on this node"));
                }
                let spec = self
                    .inner
                    .objects
                    .service(service)
                    .await
                    .map_err(|e| e.message)?
                    .ok_or_else(|| format!("no service {service:?}"))?
                    .spec;
                let record = self
                    .inner
                    .workloads
                    .active()
                    .await
                    .map_err(|e| e.to_string())?
                    .into_iter()
                    .find(|w| w.id == *workload && spec.selects(&w.labels))
                    .ok_or_else(|| format!("{workload} is not a running endpoint of {service}"))?;
                (record.id, spec.port)
            }
            (None, None, Some(lease), Some(port)) if port > 0 => {
                let id = lease.clone();
                let record = self
                    .inner
                    .store
                    .run(move |s| s.lease(&id))
                    .await
                    .map_err(|e| e.to_string())?;
                let buyer = matches!(&record, Some(r)
                    if r.side == Side::Provider && r.counterparty == peer.to_string());
                if !buyer {
                    return Err(format!("{peer} did not buy lease {lease} here"));
                }
                let workload = self
                    .inner
                    .workloads
                    .leased(lease)
                    .await
                    .filter(|w| w.state.is_active())
                    .ok_or_else(|| format!("lease {lease} runs no workload"))?;
                (workload.id, port)
            }
            _ => return Err("name a service and workload, or a lease and port".to_owned()),
        };
        let address = self
            .inner
            .workloads
            .container_address(&workload)
            .await
            .map_err(|e| e.to_string())?;
        tokio::net::TcpStream::connect((address, port))
            .await
            .map_err(|e| format!("{UNANSWERED} on port {port}: {e}"))
    }
}

/// Opens a stream to `node` for `header`, and waits for its `ok`.
async fn open(
    mesh: &MeshHandle,
    node: PeerId,
    header: &StreamTarget,
) -> Result<BufReader<tokio_util::compat::Compat<Stream>>, String> {
    let stream = tokio::time::timeout(HANDSHAKE_DEADLINE, mesh.open_stream(node, SERVICE_PROTOCOL))
        .await
        .map_err(|_| format!("no stream to {node} within {HANDSHAKE_DEADLINE:?}"))?
        .map_err(|e| e.to_string())?;
    let mut stream = BufReader::new(stream.compat());
    let mut line = serde_json::to_vec(header).map_err(|e| e.to_string())?;
    line.push(b'\n');
    let answered = tokio::time::timeout(HANDSHAKE_DEADLINE, async {
        stream.get_mut().write_all(&line).await?;
        stream.get_mut().flush().await?;
        let mut answer = Vec::new();
        (&mut stream)
            .take(MAX_HEADER as u64)
            .read_until(b'\n', &mut answer)
            .await?;
        Ok::<_, std::io::Error>(answer)
    })
    .await
    .map_err(|_| "no answer in time".to_owned())?
    .map_err(|e| e.to_string())?;
    match answered.as_slice() {
        b"ok\n" => Ok(stream),
        other => Err(String::from_utf8_lossy(other).trim().to_owned()),
    }
}
