//! This member's HTTP listener for ingress rules (`[ingress] listen`). A request is matched
//! against the live `ingress.*` rules that name this member (by peer id or name): an exact
//! `Host` beats `*`, then the longest path prefix wins. A match goes to the rule's service through
//! the mesh ([`Services`]), as HTTP/1.1 over the stream, with `X-Forwarded-For` and
//! `X-Forwarded-Host` set; the answer streams back. No match is answered 404, an unreachable
//! service 502, each with a line saying why.
//!
//! What strangers can send is bounded: headers must arrive within a deadline, hyper limits their
//! size, and at most [`MAX_CONNECTIONS`] connections are served at once (the next waits).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use claw_mesh::PeerId;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::header::{HOST, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::objects::FleetObjects;
use crate::services::Services;

/// The file in the data directory that holds the address the listener is bound to.
pub const ADDR_FILE: &str = "ingress.addr";
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 256;
/// How long a client may take to send a request's headers.
const HEADER_DEADLINE: Duration = Duration::from_secs(10);
/// How long reaching the service and its answer's head may take.
const UPSTREAM_DEADLINE: Duration = Duration::from_secs(30);

type Body = BoxBody<Bytes, hyper::Error>;

/// Who this member is, for the rules that name it, and what it reaches services through.
#[derive(Clone)]
pub struct Ingress {
    objects: FleetObjects,
    services: Services,
    peer: PeerId,
    name: String,
}

impl std::fmt::Debug for Ingress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingress")
            .field("peer", &self.peer)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

fn answer(status: StatusCode, text: String) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from(text + "\n"))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The host a request names, lowercase and without a port.
fn host_of(request: &Request<Incoming>) -> String {
    let named = request
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().host())
        .unwrap_or_default();
    let without_port = match named.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => named,
    };
    without_port.to_ascii_lowercase()
}

impl Ingress {
    /// The listener of member `peer`, named `name`.
    pub fn new(objects: FleetObjects, services: Services, peer: PeerId, name: String) -> Self {
        Self {
            objects,
            services,
            peer,
            name,
        }
    }

    /// Serves `listener` until the task is dropped (the node stopping).
    pub async fn serve(self, listener: TcpListener) {
        let open = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        loop {
            let (socket, client) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "the ingress listener's accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = Arc::clone(&open).acquire_owned().await else {
                return;
            };
            let ingress = self.clone();
            tokio::spawn(async move {
                let handler = hyper::service::service_fn(move |request| {
                    let ingress = ingress.clone();
                    async move { Ok::<_, Infallible>(ingress.route(request, client).await) }
                });
                let served = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_DEADLINE)
                    .serve_connection(TokioIo::new(socket), handler)
                    .await;
                if let Err(error) = served {
                    tracing::debug!(%client, %error, "ingress connection ended");
                }
                drop(permit);
            });
        }
    }

    /// The service the best rule for `host` and `path` names.
    async fn service_for(&self, host: &str, path: &str) -> Result<Option<String>, String> {
        let rules = self.objects.ingresses().await.map_err(|e| e.message)?;
        let peer = self.peer.to_string();
        Ok(rules
            .ingresses
            .into_iter()
            .filter(|rule| rule.spec.node == peer || rule.spec.node == self.name)
            .filter_map(|rule| {
                let rank = rule.spec.matches(host, path)?;
                Some((rank, rule.spec.service))
            })
            .max_by(|a, b| a.0.cmp(&b.0))
            .map(|(_, service)| service))
    }

    async fn route(&self, mut request: Request<Incoming>, client: SocketAddr) -> Response<Body> {
        let host = host_of(&request);
        let path = request.uri().path().to_owned();
        let service = match self.service_for(&host, &path).await {
            Ok(Some(service)) => service,
            Ok(None) => {
                return answer(
                    StatusCode::NOT_FOUND,
                    format!("no ingress rule for {host}{path} on this member"),
                );
            }
            Err(error) => return answer(StatusCode::INTERNAL_SERVER_ERROR, error),
        };
        let headers = request.headers_mut();
        if let Ok(value) = HeaderValue::from_str(&client.ip().to_string()) {
            headers.insert("x-forwarded-for", value);
        }
        if let Ok(value) = HeaderValue::from_str(&host) {
            headers.insert("x-forwarded-host", value);
        }
        match tokio::time::timeout(UPSTREAM_DEADLINE, self.forward(&service, request)).await {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => answer(
                StatusCode::BAD_GATEWAY,
                format!("service {service}: {error}"),
            ),
            Err(_) => answer(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "service {service} did not answer within {} s",
                    UPSTREAM_DEADLINE.as_secs()
                ),
            ),
        }
    }

    /// Sends `request` to one of `service`'s endpoints, and its answer back. Where a canary
    /// splits the service, the request counts for the endpoint's revision: failed when it brings
    /// no answer or a 5xx one, else answered in the time its head took.
    async fn forward(
        &self,
        service: &str,
        request: Request<Incoming>,
    ) -> Result<Response<Body>, String> {
        let started = std::time::Instant::now();
        let (connection, tag) = self.services.dial_service(service).await?;
        let answered = async {
            let (mut sender, driver) =
                hyper::client::conn::http1::handshake(TokioIo::new(connection))
                    .await
                    .map_err(|e| e.to_string())?;
            tokio::spawn(async move {
                if let Err(error) = driver.await {
                    tracing::debug!(%error, "ingress upstream connection ended");
                }
            });
            sender
                .send_request(request)
                .await
                .map_err(|e| e.to_string())
        };
        // The deadline is the caller's: a request cut off by it is counted as failed.
        let mut guard = CountOnDrop {
            services: &self.services,
            tag,
            outcome: Err(()),
        };
        let response = answered.await?;
        if !response.status().is_server_error() {
            guard.outcome = Ok(started.elapsed().as_secs_f64() * 1000.0);
        }
        Ok(response.map(|body| body.boxed()))
    }
}

/// Counts a canary request's outcome when the request is done with, however it ended.
struct CountOnDrop<'a> {
    services: &'a Services,
    tag: Option<crate::controller::Tag>,
    outcome: Result<f64, ()>,
}

impl Drop for CountOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(tag) = &self.tag {
            self.services.canary_count(tag, self.outcome);
        }
    }
}
