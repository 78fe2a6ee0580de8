//! The node's price history (`market.history`): this node's own settled leases, reported to the
//! mesh, and the reports peers gossip or hand over when this node catches up, each kept only once
//! the chain shows its settlement (`claw_market::history`).

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use claw_api::Command as _;
use claw_api::market::{
    HistoryParams, MarketTradesSigned, PriceHistory, SignedTrades, TradesParams,
};
use claw_attestation::{PayloadKind, PeerId, VerifiedEnvelope};
use claw_market::history::{ReportError, TradeReport, price_days};
use claw_market::lease::{LeaseRecord, LeaseState};
use claw_market::settlement::SettlementFact;
use claw_mesh::{ErrorCode, InvokeFailure, PendingClaim, TopicKind};
use tokio::sync::mpsc;

use crate::store::{KeptTrade, Store};

use super::{Market, decode_blob, encode_blob, failure, now_ms};

/// How long a trade report's envelope is valid on gossip.
const REPORT_TTL: Duration = Duration::from_secs(3600);
/// Reports waiting for their check; more are dropped (the next catch-up brings them).
const INBOX: usize = 256;
/// What `market.history` covers when asked for no start.
const DEFAULT_WINDOW_MS: u64 = 7 * 24 * 3_600_000;
/// Trades listed by default, and at most.
const DEFAULT_LISTED: usize = 100;
const MAX_LISTED: usize = 1000;
/// Reports one `market.trades.signed` answer holds, newest first.
const MAX_HANDED_OVER: usize = 512;
/// How far back a node catching up asks.
const CATCH_UP_MS: u64 = 30 * 24 * 3_600_000;
/// How often one peer is asked for its reports.
const CATCH_UP_EVERY_MS: u64 = 10 * 60_000;

/// A report on its way to its check, with the mesh's hold on it when it came by gossip: the
/// mesh forwards it only once the check holds, and blames its forwarder when it does not.
type Queued = (Box<VerifiedEnvelope>, Option<PendingClaim>);

/// Trade reports from gossip and catch-ups, on their way to their check.
pub(super) struct TradeInbox {
    sender: mpsc::Sender<Queued>,
    receiver: Mutex<Option<mpsc::Receiver<Queued>>>,
    /// When each peer was last asked for its reports, Unix ms.
    asked: Mutex<std::collections::HashMap<PeerId, u64>>,
}

impl Default for TradeInbox {
    fn default() -> Self {
        let (sender, receiver) = mpsc::channel(INBOX);
        Self {
            sender,
            receiver: Mutex::new(Some(receiver)),
            asked: Mutex::default(),
        }
    }
}

impl Market {
    /// A trade report from gossip (the mesh checked its signature and freshness, and holds it
    /// until `claim` is answered): queued for its checks, dropped when the queue is full (the
    /// mesh then drops it too, blaming no one).
    pub fn trade_reported(&self, envelope: Box<VerifiedEnvelope>, claim: PendingClaim) {
        if self
            .inner
            .trades
            .sender
            .try_send((envelope, Some(claim)))
            .is_err()
        {
            tracing::debug!("trade report inbox full: a later catch-up brings it");
        }
    }

    /// Checks queued reports one at a time, until the node stops; first reports this node's own
    /// settled leases that are not in its history yet (a crash may have come between the
    /// settlement and its report).
    pub(super) async fn run_trade_inbox(self) {
        let receiver = self
            .inner
            .trades
            .receiver
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(mut receiver) = receiver else {
            return;
        };
        if let Ok(records) = self.inner.store.run(Store::leases).await {
            for record in records {
                self.report_settled(&record).await;
            }
        }
        while let Some((envelope, claim)) = receiver.recv().await {
            match self.take_report(&envelope, None).await {
                // Checked and kept: passed on.
                Ok(true) => {
                    if let Some(claim) = claim {
                        claim.accept();
                    }
                }
                // Its lease is in the history already, so it was not checked again: not passed
                // on (the one kept was), no one blamed.
                Ok(false) => tracing::trace!("trade report known already"),
                Err(error) => {
                    let reporter = envelope.signer_peer_id();
                    tracing::debug!(%reporter, error = %error.message, "trade report not kept");
                    // A report its own evidence refutes is false, and costs its forwarder. One
                    // whose settlement the chain does not show, or that the chain could not be
                    // asked about, is dropped, blaming no one: an RPC node may lag.
                    if let Some(claim) = claim
                        && error.code == ErrorCode::InvalidParams
                    {
                        claim.reject();
                    }
                }
            }
        }
    }

    /// Reports `record`, a lease of this node, if the chain showed it settled with the provider
    /// paid and it is not in the history yet: kept here, and gossiped for every node's history.
    pub(super) async fn report_settled(&self, record: &LeaseRecord) {
        if record.state != LeaseState::Settled {
            return;
        }
        let region = self.inner.dir.config().node.region.clone();
        let Some(report) = TradeReport::of_record(record, region.as_deref()) else {
            return;
        };
        let lease = record.lease_id.to_string();
        let provider = record.side == claw_market::lease::Side::Provider;
        let wanted = {
            let lease = lease.clone();
            self.inner
                .store
                .run(move |store| store.trade_wanted(&lease, provider))
                .await
        };
        if !matches!(wanted, Ok(true)) {
            return;
        }
        let outcome = async {
            let signed = self.sign(REPORT_TTL, report).await?;
            let verified = self
                .inner
                .verifier
                .verify_ignoring_time(signed.envelope())
                .map_err(|e| failure(ErrorCode::Internal, format!("own report: {e}")))?;
            // The settlement is the one this node read from the chain itself.
            self.take_report(&verified, record.settlement.as_ref())
                .await?;
            if let Some(mesh) = self.inner.mesh.get()
                && let Err(error) = mesh
                    .publish(TopicKind::Trades, signed.envelope().to_vec())
                    .await
            {
                tracing::debug!(%error, "trade report not gossiped now; peers catch up");
            }
            Ok::<_, InvokeFailure>(())
        };
        if let Err(error) = outcome.await {
            tracing::warn!(%lease, error = %error.message, "settled lease not reported");
        }
    }

    /// Checks one report — its evidence here, its settlement on chain (or `read`, the fact this
    /// node read there itself for its own lease) — and keeps its trade. Answers whether the
    /// history changed.
    async fn take_report(
        &self,
        verified: &VerifiedEnvelope,
        read: Option<&SettlementFact>,
    ) -> Result<bool, InvokeFailure> {
        // What the evidence refutes is the report's fault; a settlement the chain does not
        // show (yet: a lagging RPC node) may not be.
        let refused = |e: ReportError| {
            let code = match e {
                ReportError::NotSettled(_) => ErrorCode::NotFound,
                _ => ErrorCode::InvalidParams,
            };
            failure(code, e.to_string())
        };
        if verified.envelope().kind() != PayloadKind::TradeReport {
            return Err(failure(ErrorCode::InvalidParams, "not a trade report"));
        }
        let report: TradeReport = verified
            .open()
            .map_err(|e| failure(ErrorCode::InvalidParams, e.to_string()))?;
        let terms = report.terms.payload();
        if terms.network != self.inner.dir.config().network.name {
            return Err(failure(
                ErrorCode::InvalidParams,
                format!("a trade on network {:?}", terms.network),
            ));
        }
        let reporter = *verified.envelope().signer_bytes();
        let from_provider = reporter == report.terms.signer();
        // The checks that need no chain come first, so that a report its own evidence refutes
        // is refused (and its forwarder blamed) even when its lease is known here.
        let (evidence, signature) = report
            .check(&reporter, self.policy().clock_slack_ms)
            .map_err(refused)?;
        let lease = terms.lease_id.to_string();
        let wanted = {
            let lease = lease.clone();
            self.inner
                .store
                .run(move |store| store.trade_wanted(&lease, from_provider))
                .await?
        };
        if !wanted {
            return Ok(false);
        }
        let fact = match read {
            Some(fact) => Some(fact.clone()),
            None => {
                let chain = self.chain()?;
                evidence
                    .fact(&chain.client, &chain.mint, &signature)
                    .await
                    .map_err(super::chain_failure)?
            }
        };
        let trade = report
            .trade(&reporter, fact.as_ref(), now_ms())
            .map_err(refused)?;
        let kept = KeptTrade {
            trade,
            report: encode_blob(&verified.envelope().to_bytes()),
            from_provider,
        };
        let changed = self
            .inner
            .store
            .run(move |store| store.keep_trade(&kept))
            .await?;
        if changed {
            tracing::info!(%lease, "trade kept in the price history");
        }
        Ok(changed)
    }

    /// A peer connected: ask it for the reports it keeps (at most every ten minutes per peer),
    /// and check each like gossip.
    pub(super) fn catch_up_trades(&self, peer: PeerId) {
        let now = now_ms();
        {
            let mut asked = self
                .inner
                .trades
                .asked
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if asked
                .get(&peer)
                .is_some_and(|at| now < at + CATCH_UP_EVERY_MS)
            {
                return;
            }
            asked.retain(|_, at| now < *at + CATCH_UP_EVERY_MS);
            asked.insert(peer, now);
        }
        let market = self.clone();
        self.inner.tasks.spawn_service(async move {
            let Ok(mesh) = market.mesh() else {
                return;
            };
            let params = serde_json::json!({ "since_ms": now.saturating_sub(CATCH_UP_MS) });
            let request =
                claw_mesh::InvokeRequest::new(MarketTradesSigned::NAME, Duration::from_secs(5))
                    .with_params(params);
            let Ok(answer) = mesh
                .invoke(peer, request)
                .await
                .and_then(MarketTradesSigned::decode)
            else {
                return;
            };
            for text in answer.reports.iter().take(MAX_HANDED_OVER) {
                let Ok(bytes) = decode_blob("trade report", text) else {
                    continue;
                };
                // Reports outlive their gossip validity: the evidence inside is what counts. This
                // task waits for room in the queue (gossip, which cannot wait, is dropped when
                // it is full), so a catch-up larger than the queue is not cut short.
                match market.inner.verifier.verify_ignoring_time(&bytes) {
                    Ok(verified) => {
                        if market
                            .inner
                            .trades
                            .sender
                            .send((Box::new(verified), None))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    Err(error) => {
                        tracing::debug!(%peer, %error, "a peer handed over an invalid trade report")
                    }
                }
            }
        });
    }

    /// `market.history`: the kept trades that match, listed newest first, and their daily
    /// percentiles.
    pub async fn history(&self, params: HistoryParams) -> Result<PriceHistory, InvokeFailure> {
        let limit = params.limit.unwrap_or(DEFAULT_LISTED);
        if limit > MAX_LISTED {
            return Err(failure(
                ErrorCode::InvalidParams,
                format!("limit is at most {MAX_LISTED}"),
            ));
        }
        let since = params
            .since_ms
            .unwrap_or_else(|| now_ms().saturating_sub(DEFAULT_WINDOW_MS));
        let until = params.until_ms.unwrap_or(u64::MAX);
        let mut trades: Vec<_> = self
            .inner
            .store
            .run(move |store| store.trades_between(since, until))
            .await?
            .into_iter()
            .map(|kept| kept.trade)
            .filter(|t| params.model.as_ref().is_none_or(|m| *m == t.gpu_model))
            .filter(|t| params.region.is_none() || t.region == params.region)
            .collect();
        let days = price_days(&trades);
        let matching = trades.len();
        trades.reverse();
        trades.truncate(limit);
        Ok(PriceHistory {
            days,
            trades,
            matching,
        })
    }

    /// `market.trades.signed`: the reports behind this node's history, newest first.
    pub async fn signed_trades(&self, params: TradesParams) -> Result<SignedTrades, InvokeFailure> {
        let since = params.since_ms.unwrap_or(0);
        let kept = self
            .inner
            .store
            .run(move |store| store.newest_trades(since, MAX_HANDED_OVER))
            .await?;
        Ok(SignedTrades {
            reports: kept.into_iter().map(|k| k.report).collect(),
        })
    }
}
