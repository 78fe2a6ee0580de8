//! Claims whose last check is the application's: a trade report is true only if the chain shows
//! its settlement, which the mesh cannot read. Such a claim is held back, neither forwarded nor
//! judged, until the application answers: forwarded when it holds, rejected (its forwarder
//! penalised, as for a forgery) when it does not. A forged report then stops at the first node
//! that checks it, and costs the peer that sent it. Gossipsub keeps a held claim for a few
//! heartbeats; an answer later than that is lost, and the claim with it, blaming no one.

use libp2p::PeerId;
use libp2p::gossipsub::{MessageAcceptance, MessageId};
use tokio::sync::mpsc;

use crate::TopicKind;

/// Verdicts waiting for the event loop; beyond this one is dropped, and gossipsub lets its
/// claim lapse.
pub(crate) const MAX_WAITING_VERDICTS: usize = 1024;

/// The topics whose claims wait for the application's verdict.
pub(crate) const JUDGED_BY_APPLICATION: [TopicKind; 1] = [TopicKind::Trades];

/// An answer on a held claim.
#[derive(Debug)]
pub(crate) struct Verdict {
    pub(crate) id: MessageId,
    pub(crate) source: PeerId,
    pub(crate) kind: TopicKind,
    pub(crate) acceptance: MessageAcceptance,
}

/// The application's hold on a claim the mesh passed on as [`crate::MeshEvent::Pending`]:
/// answer it once. Dropped unanswered, it is [`PendingClaim::ignore`]d.
#[derive(Debug)]
pub struct PendingClaim {
    verdict: Option<Verdict>,
    verdicts: mpsc::Sender<Verdict>,
}

impl PendingClaim {
    pub(crate) fn new(
        id: MessageId,
        source: PeerId,
        kind: TopicKind,
        verdicts: mpsc::Sender<Verdict>,
    ) -> Self {
        Self {
            verdict: Some(Verdict {
                id,
                source,
                kind,
                acceptance: MessageAcceptance::Ignore,
            }),
            verdicts,
        }
    }

    /// The claim holds: it is forwarded to the mesh.
    pub fn accept(mut self) {
        self.answer(MessageAcceptance::Accept);
    }

    /// The claim is false: it is dropped, and its forwarder penalised.
    pub fn reject(mut self) {
        self.answer(MessageAcceptance::Reject);
    }

    /// No answer can be given (the chain could not be asked): the claim is dropped, no one
    /// blamed.
    pub fn ignore(mut self) {
        self.answer(MessageAcceptance::Ignore);
    }

    fn answer(&mut self, acceptance: MessageAcceptance) {
        if let Some(mut verdict) = self.verdict.take() {
            verdict.acceptance = acceptance;
            if self.verdicts.try_send(verdict).is_err() {
                tracing::debug!("gossip verdict dropped: the mesh is not keeping up");
            }
        }
    }
}

impl Drop for PendingClaim {
    fn drop(&mut self) {
        self.answer(MessageAcceptance::Ignore);
    }
}
