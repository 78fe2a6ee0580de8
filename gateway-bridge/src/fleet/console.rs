//! `console.snapshot` and `console.page`: the console of the whole fleet the bridge presents,
//! which the OpenClaw plugin shows as a tab of the gateway's Control UI.
//!
//! Nodes come from the bridge's mesh view (no round trip). GPU readings and workloads are asked
//! of every member (the same bounded fan-outs as `fleet.gpus` and `fleet.workloads`) at most once
//! every [`FAN_OUT_EVERY`], and that answer is shared by every viewer that calls with the same
//! API key, so a tab left open costs each node one call every few seconds whatever the number of
//! viewers. The book and leases come from the market node, the price history from any member;
//! each is asked under the call's API key, and a part the key may not read is named in
//! `withheld` instead.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use claw_api::auth::ApiToken;
use claw_api::console::{
    ConsoleDeployment, ConsoleReading, ConsoleSnapshot, ConsoleWorkload, LISTED, SignedIn,
    running_replicas,
};
use claw_api::deploy::DeployList;
use claw_api::fleet::{GpusParams, WorkloadsParams};
use claw_api::market::{
    HistoryParams, LeasesParams, MarketHistory, MarketLeases, MarketOffers, OffersParams,
};
use claw_api::{Command, NoParams, Role};

use super::{Call, FleetCommands};

/// How long one fan-out's readings and workloads are shown before they are asked again.
const FAN_OUT_EVERY: Duration = Duration::from_secs(5);
/// Price history shown: the last 30 days.
const HISTORY_DAYS: u64 = 30;

/// The newest fan-out, shared by viewers with the same API key.
#[derive(Default)]
pub(super) struct ConsoleCache {
    latest: tokio::sync::Mutex<Option<Arc<FannedOut>>>,
}

struct FannedOut {
    key: Option<ApiToken>,
    at: Instant,
    readings: Vec<ConsoleReading>,
    workloads: Vec<ConsoleWorkload>,
    /// Running replicas by deployment, over every workload (not only those listed).
    running: BTreeMap<String, u32>,
    /// Nodes that did not answer, and why.
    missing: Vec<String>,
}

impl FleetCommands {
    /// `console.snapshot`: the whole fleet, as the console shows it.
    pub(super) async fn console_snapshot(&self, call: Call) -> ConsoleSnapshot {
        let mut withheld = Vec::new();
        let nodes = self
            .members()
            .iter()
            .map(|m| {
                m.announcement
                    .console_node(m.peer_id.to_string(), false, Some(m.issued_at_ms))
            })
            .collect();
        let offers = OffersParams {
            limit: Some(LISTED),
            ..OffersParams::default()
        };
        let history = HistoryParams {
            since_ms: Some(now_ms().saturating_sub(HISTORY_DAYS * 86_400_000)),
            limit: Some(20),
            ..HistoryParams::default()
        };
        let leases = LeasesParams::default();
        let (fanned, offers, leases, history, deployments) = tokio::join!(
            self.fanned_out(),
            self.forward::<MarketOffers>(&offers, call.clone()),
            self.forward::<MarketLeases>(&leases, call.clone()),
            self.ask_member::<MarketHistory>(&history, call.clone()),
            self.ask_member::<DeployList>(&NoParams {}, call),
        );
        withheld.extend(fanned.missing.iter().cloned());
        let mut part = |name: &str, error: claw_api::InvokeFailure| {
            withheld.push(format!("{name}: {}", error.message));
        };
        let offers = offers.map_err(|e| part(MarketOffers::NAME, e)).ok();
        let leases = leases
            .map(|mut l| {
                l.leases.truncate(LISTED);
                l
            })
            .map_err(|e| part(MarketLeases::NAME, e))
            .ok();
        let history = history.map_err(|e| part(MarketHistory::NAME, e)).ok();
        let deployments = deployments
            .map(|listing| {
                listing
                    .deployments
                    .iter()
                    .map(|d| ConsoleDeployment::of(d, &fanned.running))
                    .collect()
            })
            .map_err(|e| part(DeployList::NAME, e))
            .ok();
        ConsoleSnapshot {
            at_ms: now_ms(),
            signed_in: SignedIn {
                with: "OpenClaw gateway".to_owned(),
                name: None,
                // The console only reads; the gateway decides who may open it.
                role: Role::Read,
            },
            scope: "bridge".to_owned(),
            withheld,
            // Two announcements missed, at the fleet's interval (paced to its size).
            silent_after_ms: 2 * duration_ms(self.mesh.announce_interval()) + 1000,
            nodes,
            readings: fanned.readings.clone(),
            workloads: fanned.workloads.clone(),
            deployments,
            offers,
            leases,
            history,
        }
    }

    /// The newest readings and workloads, asked again when older than [`FAN_OUT_EVERY`] or
    /// asked under another API key. Viewers wait for one fan-out in flight rather than start
    /// their own.
    async fn fanned_out(&self) -> Arc<FannedOut> {
        let mut latest = self.console.latest.lock().await;
        if let Some(fanned) = latest
            .as_ref()
            .filter(|f| f.key == self.api_key && f.at.elapsed() < FAN_OUT_EVERY)
        {
            return Arc::clone(fanned);
        }
        let (gpus, workloads) = tokio::join!(
            self.gpus(GpusParams {
                model: None,
                live: true,
            }),
            self.workloads(WorkloadsParams::default()),
        );
        let readings = gpus
            .gpus
            .into_iter()
            .filter_map(|g| g.metrics.map(|r| ConsoleReading::from(&r.metrics)))
            .collect();
        let mut missing = Vec::new();
        let mut workloads = match workloads {
            Ok(listing) => {
                missing.extend(
                    listing
                        .unreachable
                        .into_iter()
                        .map(|f| format!("workloads of {}: {}", f.node, f.error)),
                );
                let mut workloads: Vec<ConsoleWorkload> = listing
                    .workloads
                    .into_iter()
                    .map(|w| ConsoleWorkload::of(w.node, w.workload))
                    .collect();
                workloads.sort_by_key(|w| std::cmp::Reverse(w.created_ms));
                workloads
            }
            Err(error) => {
                missing.push(format!("workloads: {}", error.message));
                Vec::new()
            }
        };
        let running = running_replicas(&workloads);
        workloads.truncate(LISTED);
        let fresh = Arc::new(FannedOut {
            key: self.api_key.clone(),
            at: Instant::now(),
            readings,
            workloads,
            running,
            missing,
        });
        *latest = Some(Arc::clone(&fresh));
        fresh
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn now_ms() -> u64 {
    claw_attestation::unix_millis(std::time::SystemTime::now())
}
