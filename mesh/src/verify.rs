//! Gossip's signature checks, off the event loop. A message waits in a bounded queue while the
//! batch before it is checked on the blocking pool; the next batch takes everything that
//! queued meanwhile. So an idle node checks a message at once, a busy one checks many at a time
//! (Ed25519 batch verification, about a third of the cost per signature at 256), and the loop
//! that owns the swarm never waits on a check. What the loop still does per message is cheap and
//! needs its state: the replay and seen sets, the fleet view, and the verdict to gossipsub.

use claw_attestation::{VerifiedEnvelope, Verifier, VerifyError, unix_millis};
use libp2p::PeerId;
use libp2p::gossipsub::MessageId;
use tokio::sync::mpsc;

use crate::TopicKind;

/// Messages waiting for a check at most; beyond this a message is ignored (neither forwarded
/// nor held against its sender), as gossipsub would drop it once its validation queue is full.
pub(crate) const MAX_QUEUED: usize = 4096;
/// Messages one batch checks at most.
const MAX_BATCH: usize = 256;

/// A gossip message waiting for its signature check.
#[derive(Debug)]
pub(crate) struct Unchecked {
    /// The peer that forwarded it.
    pub(crate) source: PeerId,
    /// Gossipsub's id for it, to report the verdict under.
    pub(crate) id: MessageId,
    /// Its topic.
    pub(crate) topic: TopicKind,
    /// The envelope's bytes.
    pub(crate) data: Vec<u8>,
}

/// A message and the outcome of its check.
pub(crate) type Checked = (Unchecked, Result<VerifiedEnvelope, VerifyError>);

/// The queue of messages waiting for a check, and the one batch being checked.
#[derive(Debug)]
pub(crate) struct VerifyQueue {
    verifier: Verifier,
    queued: Vec<Unchecked>,
    checking: bool,
    done_tx: mpsc::Sender<Vec<Checked>>,
}

impl VerifyQueue {
    /// A queue checking with `verifier`; finished batches arrive on the receiver returned.
    pub(crate) fn new(verifier: Verifier) -> (Self, mpsc::Receiver<Vec<Checked>>) {
        // One batch at most is in it: the next starts only once the loop has taken the last
        // one ([`VerifyQueue::finished`]).
        let (done_tx, done_rx) = mpsc::channel(1);
        let queue = Self {
            verifier,
            queued: Vec::new(),
            checking: false,
            done_tx,
        };
        (queue, done_rx)
    }

    /// Whether the queue takes no more messages.
    pub(crate) fn is_full(&self) -> bool {
        self.queued.len() >= MAX_QUEUED
    }

    /// Queues `message` (dropped when the queue is full: ask [`VerifyQueue::is_full`] first)
    /// and starts a check when none runs.
    pub(crate) fn push(&mut self, message: Unchecked) {
        if self.is_full() {
            return;
        }
        self.queued.push(message);
        self.dispatch();
    }

    /// The loop took a finished batch: the next one may start.
    pub(crate) fn finished(&mut self) {
        self.checking = false;
        self.dispatch();
    }

    /// How many messages wait.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.queued.len()
    }

    fn dispatch(&mut self) {
        if self.checking || self.queued.is_empty() {
            return;
        }
        let take = self.queued.len().min(MAX_BATCH);
        let batch: Vec<Unchecked> = self.queued.drain(..take).collect();
        self.checking = true;
        let verifier = self.verifier.clone();
        let done = self.done_tx.clone();
        tokio::task::spawn_blocking(move || {
            let now = unix_millis(std::time::SystemTime::now());
            let items: Vec<&[u8]> = batch.iter().map(|m| m.data.as_slice()).collect();
            let results = verifier.verify_batch_at(&items, now);
            let checked: Vec<Checked> = batch.into_iter().zip(results).collect();
            // The loop has stopped when this fails: nothing is waiting for the verdicts.
            let _ = done.blocking_send(checked);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use claw_attestation::{Envelope, NodeIdentity, Validity};

    #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
    struct Note(String);

    impl claw_attestation::SignedPayload for Note {
        const KIND: claw_attestation::PayloadKind = claw_attestation::PayloadKind::Offer;
    }

    fn message(data: Vec<u8>) -> Unchecked {
        Unchecked {
            source: PeerId::random(),
            id: MessageId::from(data.clone()),
            topic: TopicKind::Offers,
            data,
        }
    }

    #[tokio::test]
    async fn messages_queued_during_a_check_are_checked_together_and_a_forgery_alone_fails() {
        let identity = NodeIdentity::generate();
        let sealed = |seq: u64| {
            Envelope::seal(
                &identity,
                seq,
                Validity::from_now(std::time::Duration::from_secs(60)),
                &Note(format!("offer {seq}")),
            )
            .to_bytes()
        };
        let (mut queue, mut done) = VerifyQueue::new(Verifier::new());
        queue.push(message(sealed(1)));
        // The first check runs: these wait for the next batch, one of them forged.
        let mut forged = sealed(3);
        let last = forged.len() - 1;
        forged[last] ^= 1;
        for data in [sealed(2), forged, sealed(4)] {
            queue.push(message(data));
        }
        assert_eq!(queue.len(), 3);
        let first = done.recv().await.unwrap();
        assert_eq!(first.len(), 1);
        assert!(first[0].1.is_ok());
        queue.finished();
        let second = done.recv().await.unwrap();
        let outcomes: Vec<bool> = second.iter().map(|(_, r)| r.is_ok()).collect();
        assert_eq!(outcomes, [true, false, true]);
        queue.finished();
        assert_eq!(queue.len(), 0);
    }

    #[tokio::test]
    async fn a_full_queue_takes_no_more() {
        let (mut queue, _done) = VerifyQueue::new(Verifier::new());
        // One batch is taken at once; the rest fill the queue.
        for _ in 0..=MAX_QUEUED {
            assert!(!queue.is_full());
            queue.push(message(vec![0; 8]));
        }
        assert!(queue.is_full());
        queue.push(message(vec![1; 8]));
        assert_eq!(queue.len(), MAX_QUEUED);
    }
}
