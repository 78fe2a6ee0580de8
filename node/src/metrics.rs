//! Prometheus metrics at `/metrics` on a loopback port (`metrics.listen`, or `clawnode run
//! --metrics ADDR`), in the OpenMetrics text format.
//!
//! Invokes are counted as they are answered. Everything else is read when Prometheus scrapes:
//! mesh peers and gossip verdicts from the mesh's counters, GPU utilisation and temperature from
//! NVML (real GPUs only; simulated ones are counted, never given readings), and workloads, leases
//! and MOLT settled from the store, so a restart loses none of what the store records.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use claw_attestation::{GpuDevice, GpuMetrics, GpuProbe};

use claw_mesh::MeshHandle;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::Store;
use crate::workloads::WorkloadRecord;
use claw_market::lease::{LeaseRecord, Side};

/// Where the running node records the metrics address (see [`crate::record_address`]).
pub const ADDR_FILE: &str = "metrics.addr";

/// The OpenMetrics content type Prometheus asks for.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct InvokeLabels {
    command: String,
    outcome: String,
}

/// Invokes answered, by command and outcome (`ok` or the error code). Cheap to clone; clones
/// count into the same family.
#[derive(Debug, Clone, Default)]
pub struct InvokeMetrics {
    family: Family<InvokeLabels, Counter>,
}

impl InvokeMetrics {
    /// Counts one answered invoke. `command` must be a known command name (or `unknown`), so
    /// that callers cannot grow the label set.
    pub(crate) fn record(&self, command: &str, outcome: &str) {
        self.family
            .get_or_create(&InvokeLabels {
                command: command.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }
}

/// What a scrape reads.
#[derive(Debug, Clone)]
pub struct MetricsSources {
    /// Invokes answered.
    pub invokes: InvokeMetrics,
    /// The mesh (peers, gossip verdicts).
    pub mesh: MeshHandle,
    /// Workloads and leases.
    pub store: Store,
    /// The GPUs.
    pub probe: Arc<GpuProbe>,
}

/// Serves `/metrics` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    sources: MetricsSources,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(sources);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn scrape(State(sources): State<MetricsSources>) -> Response {
    let rendered = tokio::task::spawn_blocking(move || render(&sources)).await;
    match rendered {
        Ok(Ok(text)) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Ok(Err(error)) => {
            tracing::warn!(%error, "metrics scrape failed");
            (StatusCode::INTERNAL_SERVER_ERROR, error).into_response()
        }
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    }
}

/// Reads every source (blocking: the store and NVML) and encodes the scrape.
fn render(sources: &MetricsSources) -> Result<String, String> {
    let workloads = sources.store.workloads().map_err(|e| e.to_string())?;
    let leases = sources.store.leases().map_err(|e| e.to_string())?;
    let devices = sources.probe.devices();
    let readings = sources.probe.metrics(None);
    let registry = registry(sources, &workloads, &leases, &devices, &readings);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).map_err(|e| e.to_string())?;
    Ok(text)
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct GossipLabels {
    topic: String,
    verdict: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TopicLabels {
    topic: String,
}

/// A histogram the mesh keeps itself, encoded as it stood when scraped: sum (seconds), count,
/// and each bucket's messages with its upper bound (seconds).
#[derive(Debug, Default)]
struct SnapshotHistogram(std::sync::Mutex<HistogramReading>);

/// A histogram as read: sum, count, and (upper bound, messages) per bucket.
#[derive(Debug, Default)]
struct HistogramReading {
    sum: f64,
    count: u64,
    buckets: Vec<(f64, u64)>,
}

impl SnapshotHistogram {
    fn set(&self, ages: &claw_mesh::DeliveryAges) {
        let buckets = claw_mesh::DELIVERY_AGE_BOUNDS_MS
            .iter()
            .map(|ms| *ms as f64 / 1000.0)
            .chain([f64::INFINITY])
            .zip(ages.buckets.iter().copied())
            .collect();
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = HistogramReading {
            sum: ages.sum_ms as f64 / 1000.0,
            count: ages.count,
            buckets,
        };
    }
}

impl prometheus_client::metrics::TypedMetric for SnapshotHistogram {
    const TYPE: prometheus_client::metrics::MetricType =
        prometheus_client::metrics::MetricType::Histogram;
}

impl prometheus_client::encoding::EncodeMetric for SnapshotHistogram {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        let reading = self.0.lock().unwrap_or_else(|p| p.into_inner());
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            reading.sum,
            reading.count,
            &reading.buckets,
            None,
        )
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Histogram
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PunchLabels {
    outcome: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct GpuCountLabels {
    model: String,
    simulated: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct GpuLabels {
    gpu: String,
    index: String,
    model: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LeaseLabels {
    side: String,
    state: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SettledLabels {
    side: String,
    to: String,
}

fn side_name(side: Side) -> &'static str {
    match side {
        Side::Provider => "provider",
        Side::Buyer => "buyer",
    }
}

/// MOLT base units moved by this node's leases, by this node's side and by who received them:
/// escrows by their settlement as the chain showed it, streams by what the provider pulled.
fn settled_molt(leases: &[LeaseRecord]) -> BTreeMap<(&'static str, &'static str), u64> {
    let mut settled = BTreeMap::new();
    for lease in leases {
        let side = side_name(lease.side);
        let pulled = lease.stream.as_ref().map(|s| s.pulled.base_units());
        let (to_provider, to_buyer) = match (&lease.settlement, pulled) {
            (Some(fact), _) => (fact.to_provider.base_units(), fact.to_buyer.base_units()),
            (None, Some(pulled)) => (pulled, 0),
            (None, None) => (0, 0),
        };
        *settled.entry((side, "provider")).or_insert(0) += to_provider;
        *settled.entry((side, "buyer")).or_insert(0) += to_buyer;
    }
    settled
}

fn gauge(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn registry(
    sources: &MetricsSources,
    workloads: &[WorkloadRecord],
    leases: &[LeaseRecord],
    devices: &[GpuDevice],
    readings: &[GpuMetrics],
) -> Registry {
    let mut registry = Registry::with_prefix("clawnode");
    let mesh = sources.mesh.counters();

    let peers = Gauge::<i64>::default();
    peers.set(gauge(mesh.connected_peers));
    registry.register(
        "mesh_peers",
        "Peers with at least one open mesh connection",
        peers,
    );
    let routing = Gauge::<i64>::default();
    routing.set(gauge(mesh.routing_table_peers));
    registry.register(
        "mesh_routing_table_peers",
        "Peers in the Kademlia routing table (at most 2 per IP address and 8 per network)",
        routing,
    );

    let gossip = Family::<GossipLabels, Counter>::default();
    for (topic, verdict, count) in &mesh.gossip {
        gossip
            .get_or_create(&GossipLabels {
                topic: topic.as_str().to_owned(),
                verdict: verdict.as_str().to_owned(),
            })
            .inc_by(*count);
    }
    registry.register(
        "gossip_messages",
        "Gossiped messages by topic and verdict: accepted, rejected (failed verification) or ignored (stale)",
        gossip,
    );

    let ages = Family::<TopicLabels, SnapshotHistogram>::default();
    for (topic, delivered) in &mesh.delivery_ages {
        ages.get_or_create(&TopicLabels {
            topic: topic.as_str().to_owned(),
        })
        .set(delivered);
    }
    registry.register(
        "gossip_delivery_age_seconds",
        "How long after it was signed each accepted gossip message arrived, by topic (the signer's clock against this node's)",
        ages,
    );

    let punches = Family::<PunchLabels, Counter>::default();
    for (outcome, count) in &mesh.hole_punches {
        punches
            .get_or_create(&PunchLabels {
                outcome: outcome.as_str().to_owned(),
            })
            .inc_by(*count);
    }
    registry.register(
        "mesh_hole_punches",
        "Hole punches across NATs by outcome: direct (a relayed connection became direct), failed, or retried (over a fresh relayed connection)",
        punches,
    );

    registry.register(
        "invokes",
        "Invokes answered, by command and outcome (ok or the error code)",
        sources.invokes.family.clone(),
    );

    let gpus = Family::<GpuCountLabels, Gauge>::default();
    for device in devices {
        gpus.get_or_create(&GpuCountLabels {
            model: device.model.clone(),
            simulated: device.simulated.to_string(),
        })
        .inc();
    }
    registry.register(
        "gpus",
        "GPUs by model; simulated=\"true\" for GPUs that exist only in the node's configuration",
        gpus,
    );

    let utilisation = Family::<GpuLabels, Gauge>::default();
    let temperature = Family::<GpuLabels, Gauge>::default();
    for reading in readings {
        let labels = GpuLabels {
            gpu: reading.uuid.clone(),
            index: reading.index.to_string(),
            model: reading.model.clone(),
        };
        if let Some(pct) = reading.utilization_gpu_pct {
            utilisation.get_or_create(&labels).set(i64::from(pct));
        }
        if let Some(celsius) = reading.temperature_c {
            temperature.get_or_create(&labels).set(i64::from(celsius));
        }
    }
    registry.register(
        "gpu_utilization_percent",
        "GPU utilisation from NVML (real GPUs only)",
        utilisation,
    );
    registry.register(
        "gpu_temperature_celsius",
        "GPU core temperature from NVML (real GPUs only)",
        temperature,
    );

    let by_state = Family::<StateLabels, Gauge>::default();
    for workload in workloads {
        by_state
            .get_or_create(&StateLabels {
                state: workload.state.to_string(),
            })
            .inc();
    }
    registry.register("workloads", "Workload records by state", by_state);

    let lease_states = Family::<LeaseLabels, Gauge>::default();
    for lease in leases {
        lease_states
            .get_or_create(&LeaseLabels {
                side: side_name(lease.side).to_owned(),
                state: lease.state.to_string(),
            })
            .inc();
    }
    registry.register(
        "leases",
        "Market leases by this node's side and state",
        lease_states,
    );

    let settled = Family::<SettledLabels, Counter>::default();
    for ((side, to), units) in settled_molt(leases) {
        settled
            .get_or_create(&SettledLabels {
                side: side.to_owned(),
                to: to.to_owned(),
            })
            .inc_by(units);
    }
    registry.register(
        "molt_settled_base_units",
        "MOLT base units paid out by this node's leases, by its side and by who received them",
        settled,
    );
    registry
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settled_molt_counts_settlements_of_closed_leases_and_pulls_of_streams() {
        use claw_market::Molt;
        use claw_market::lease::{LeaseId, LeaseState};
        let id = |n: u8| LeaseId::derive(&[n; 32], &[0; 32]);
        let mut closed = LeaseRecord::reserved(id(1), "peer".to_owned(), Vec::new(), 0);
        closed.state = LeaseState::Settled;
        closed.settlement = Some(claw_market::settlement::SettlementFact {
            signature: "sig".to_owned(),
            slot: 1,
            to_provider: Molt::from_base_units(300),
            to_buyer: Molt::from_base_units(700),
            to_others: Molt::default(),
            block_time_ms: None,
        });
        let mut streaming = LeaseRecord::reserved(id(2), "peer".to_owned(), Vec::new(), 0);
        streaming.state = LeaseState::Running;
        streaming.stream = Some(claw_market::lease::machine::StreamProgress {
            pulled: Molt::from_base_units(40),
            ..Default::default()
        });
        let totals = settled_molt(&[closed, streaming]);
        assert_eq!(totals[&("provider", "provider")], 300 + 40);
        assert_eq!(totals[&("provider", "buyer")], 700);
    }
}
