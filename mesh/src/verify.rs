//! Gossip's signature checks under load, off the event loop. At the rate a fleet gossips, the
//! loop checks a message itself (one Ed25519 check, about 60 µs: cheaper than handing it to
//! another thread), up to [`INLINE_PER_WINDOW`] checks per [`WINDOW`] (two fifths of the
//! loop's time at most). Beyond that, as under a flood, each message waits in a bounded queue while
//! the batch before it is checked on the blocking pool, and the next batch takes everything
//! that queued meanwhile:
//! a busy node checks many at a time (Ed25519 batch verification, about a third of the cost per
//! signature at 256) and its loop does not wait on them. At most one batch per core is checked
//! at once in the process, however many nodes it runs. What the
//! loop still does per message is cheap and needs its state: the replay and seen sets, the
//! fleet view, and the verdict to gossipsub.

use std::sync::{Arc, OnceLock};

use claw_attestation::{VerifiedEnvelope, Verifier, VerifyError, unix_millis};
use libp2p::PeerId;
use libp2p::gossipsub::MessageId;
use tokio::sync::{Semaphore, mpsc};

use crate::TopicKind;

/// Messages waiting for a check at most; beyond this a message is ignored (neither forwarded
/// nor held against its sender), as gossipsub would drop it once its validation queue is full.
pub(crate) const MAX_QUEUED: usize = 4096;
/// Messages one batch checks at most.
const MAX_BATCH: usize = 256;
/// The loop checks at most [`INLINE_PER_WINDOW`] messages itself in each window this long.
pub(crate) const WINDOW: std::time::Duration = std::time::Duration::from_millis(10);
/// Checks the loop makes itself per [`WINDOW`]: about 4 ms of its time, 6,400 a second, far
/// above what a fleet gossips to one node, so that only a flood goes to the queue.
pub(crate) const INLINE_PER_WINDOW: u32 = 64;

/// A gossip message that expired at most this long ago, its signature holding, is taken for a
/// late copy (a loaded forwarder, or this node behind on its own queue) and dropped without
/// blaming its forwarder; one expired longer ago is rejected.
const LATE_WINDOW_MS: u64 = 5 * 60_000;

/// `checked`, the outcome of checking `data` at its time, made to tell a late copy from a
/// forgery: an envelope that expired at most [`LATE_WINDOW_MS`] before is checked once more,
/// ignoring time, so that `Expired` then means its signature holds, and a bad signature says
/// so. This runs where the first check ran (the blocking pool, under load), never on the loop
/// for a queued message. The check ignoring time decides only blame: nothing expired is taken.
pub(crate) fn settle_late(
    verifier: &Verifier,
    data: &[u8],
    checked: Result<VerifiedEnvelope, VerifyError>,
) -> Result<VerifiedEnvelope, VerifyError> {
    if is_late(&checked) {
        verifier.verify_ignoring_time(data)?;
    }
    checked
}

/// Whether `checked` says the envelope expired at most [`LATE_WINDOW_MS`] before its check.
/// After [`settle_late`], such an outcome is a late copy whose signature holds.
pub(crate) fn is_late(checked: &Result<VerifiedEnvelope, VerifyError>) -> bool {
    matches!(
        checked,
        Err(VerifyError::Expired { expires_at_ms, now_ms })
            if now_ms.saturating_sub(*expires_at_ms) <= LATE_WINDOW_MS
    )
}

/// Batches being checked at once in this process: one per core.
fn checking_slots() -> Arc<Semaphore> {
    static SLOTS: OnceLock<Arc<Semaphore>> = OnceLock::new();
    Arc::clone(SLOTS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Arc::new(Semaphore::new(cores))
    }))
}

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
    /// When the current window began, and the checks the loop made itself in it.
    window: (std::time::Instant, u32),
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
            window: (std::time::Instant::now(), 0),
        };
        (queue, done_rx)
    }

    /// Whether the loop checks the next message itself (at `now`): no message waits, no batch
    /// is being checked, and the window's budget is not spent. Counts the check when it does.
    pub(crate) fn check_here(&mut self, now: std::time::Instant) -> bool {
        if self.checking || !self.queued.is_empty() {
            return false;
        }
        if now.duration_since(self.window.0) >= WINDOW {
            self.window = (now, 0);
        }
        if self.window.1 >= INLINE_PER_WINDOW {
            return false;
        }
        self.window.1 += 1;
        true
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
        tokio::spawn(async move {
            // Closed never: the semaphore lives as long as the process.
            let Ok(_slot) = checking_slots().acquire_owned().await else {
                return;
            };
            let checked = tokio::task::spawn_blocking(move || {
                let now = unix_millis(std::time::SystemTime::now());
                let items: Vec<&[u8]> = batch.iter().map(|m| m.data.as_slice()).collect();
                let results = verifier.verify_batch_at(&items, now);
                batch
                    .into_iter()
                    .zip(results)
                    .map(|(message, checked)| {
                        let checked = settle_late(&verifier, &message.data, checked);
                        (message, checked)
                    })
                    .collect::<Vec<Checked>>()
            })
            .await;
            // The loop has stopped when sending fails: nothing is waiting for the verdicts.
            if let Ok(checked) = checked {
                let _ = done.send(checked).await;
            }
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

    #[test]
    fn an_expired_copy_is_told_from_a_forgery_only_within_the_late_window() {
        let identity = NodeIdentity::generate();
        let sealed = Envelope::seal(
            &identity,
            1,
            Validity::from_now(std::time::Duration::from_secs(60)),
            &Note("late".to_owned()),
        )
        .to_bytes();
        let mut forged = sealed.clone();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        let verifier = Verifier::new();
        let check = |data: &[u8], now_ms: u64| {
            settle_late(&verifier, data, verifier.verify_at(data, None, now_ms))
        };
        let now = unix_millis(std::time::SystemTime::now());
        let late = now + 62_000;
        assert!(matches!(
            check(&sealed, late),
            Err(VerifyError::Expired { .. })
        ));
        assert!(matches!(
            check(&forged, late),
            Err(VerifyError::BadSignature)
        ));
        // Long expired: not checked again, and rejected as expired whatever its signature.
        let long_after = now + 62_000 + LATE_WINDOW_MS;
        assert!(matches!(
            check(&forged, long_after),
            Err(VerifyError::Expired { .. })
        ));
        // What has not expired is left as its check found it.
        assert!(check(&sealed, now).is_ok());
        assert!(matches!(
            check(&forged, now),
            Err(VerifyError::BadSignature)
        ));
    }

    #[tokio::test]
    async fn the_loop_checks_a_windows_budget_itself_then_queues() {
        let (mut queue, mut done) = VerifyQueue::new(Verifier::new());
        let start = std::time::Instant::now();
        for _ in 0..INLINE_PER_WINDOW {
            assert!(queue.check_here(start));
        }
        assert!(!queue.check_here(start), "the window's budget is spent");
        queue.push(message(vec![0; 8]));
        let later = start + WINDOW;
        assert!(!queue.check_here(later), "not while a batch is checked");
        let _ = done.recv().await.unwrap();
        queue.finished();
        assert!(queue.check_here(later), "a new window, nothing queued");
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
