//! The node as a driver of the lease protocol's state machine (`claw_market::lease::machine`).
//!
//! For one lease at a time, under that lease's own lock: load the record, hand the machine an
//! input, **save the record it answers, then carry out its effects**, and feed what the effects
//! produce back in, until nothing is left. A crash at any point leaves a saved record whose next
//! tick asks again for whatever may not have happened. Leases never wait on each other: the lock
//! is per lease, and an image pull or a chain call holds only its own lease's.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use claw_market::lease::machine::handle;
use claw_market::lease::{Effect, Input, LeaseError, LeaseId, LeaseRecord, Side};
use claw_mesh::{ErrorCode, InvokeFailure};

use super::{Market, failure, now_ms};

/// Inputs one drive may take in (the first and those its effects produce), so that a
/// misbehaving peer cannot keep a lease busy for ever.
const MAX_INPUTS_PER_DRIVE: usize = 48;

/// One async lock per lease, created when first asked for and dropped when no one holds it.
#[derive(Debug, Default)]
pub(super) struct LeaseLocks {
    locks: Mutex<HashMap<LeaseId, Weak<tokio::sync::Mutex<()>>>>,
}

impl LeaseLocks {
    /// Waits for `lease`'s lock.
    pub(super) async fn lock(&self, lease: &LeaseId) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(PoisonError::into_inner);
            locks.retain(|_, weak| weak.strong_count() > 0);
            match locks.get(lease).and_then(Weak::upgrade) {
                Some(lock) => lock,
                None => {
                    let lock = Arc::new(tokio::sync::Mutex::new(()));
                    locks.insert(lease.clone(), Arc::downgrade(&lock));
                    lock
                }
            }
        };
        lock.lock_owned().await
    }

    /// Whether anyone holds or waits for `lease`'s lock.
    pub(super) fn is_busy(&self, lease: &LeaseId) -> bool {
        self.locks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(lease)
            .is_some_and(|weak| weak.strong_count() > 0)
    }
}

/// The typed refusal of a protocol step, as a command answers it.
pub(super) fn refusal(error: &LeaseError) -> InvokeFailure {
    let code = match error {
        LeaseError::Malformed(_) => ErrorCode::InvalidParams,
        LeaseError::WrongSigner { .. } => ErrorCode::Unauthorized,
        _ => ErrorCode::Conflict,
    };
    failure(code, error.to_string())
}

impl Market {
    /// Drives `lease` with `input`: the lease's lock is held throughout. The first input's
    /// refusal is the answer; inputs produced by effects that the machine refuses are logged.
    /// Answers the lease's record as it ends (`None` once it was forgotten).
    pub(super) async fn drive(
        &self,
        lease: &LeaseId,
        input: Input,
    ) -> Result<Option<LeaseRecord>, InvokeFailure> {
        let _guard = self.inner.locks.lock(lease).await;
        self.drive_locked(lease, input).await
    }

    /// [`Market::drive`] for a caller that already holds the lease's lock.
    pub(super) async fn drive_locked(
        &self,
        lease: &LeaseId,
        input: Input,
    ) -> Result<Option<LeaseRecord>, InvokeFailure> {
        let Some(mut record) = self.load(lease).await? else {
            return Err(failure(
                ErrorCode::NotFound,
                format!("no lease {lease} here"),
            ));
        };
        let policy = self.policy();
        let mut inputs = VecDeque::from([input]);
        let mut first = true;
        let mut taken = 0;
        while let Some(input) = inputs.pop_front() {
            taken += 1;
            if taken > MAX_INPUTS_PER_DRIVE {
                tracing::warn!(lease = %lease, "a lease step did not settle; the next tick goes on");
                break;
            }
            let step = match handle(&record, input, now_ms(), &policy) {
                Ok(step) => step,
                Err(error) if first => return Err(refusal(&error)),
                Err(error) => {
                    tracing::debug!(lease = %lease, %error, "an effect's outcome was not taken");
                    continue;
                }
            };
            first = false;
            if step.record != record {
                self.save(&step.record).await?;
                if step.record.state != record.state {
                    if !step.record.state.is_open() {
                        self.learn_outcome(&step.record);
                        self.report_settled(&step.record).await;
                    }
                    tracing::info!(lease = %lease, side = ?record.side, from = %record.state, to = %step.record.state, reason = step.record.reason.as_deref().unwrap_or(""), "lease moved");
                }
            }
            record = step.record;
            for effect in step.effects {
                if effect == Effect::Forget {
                    self.forget(&record).await?;
                    return Ok(None);
                }
                let produced = match record.side {
                    Side::Provider => self.provider_effect(&record, effect).await,
                    Side::Buyer => self.buyer_effect(&record, effect).await,
                };
                inputs.extend(produced);
            }
        }
        Ok(Some(record))
    }

    /// A stored record for `lease`.
    pub(super) async fn load(&self, lease: &LeaseId) -> Result<Option<LeaseRecord>, InvokeFailure> {
        let id = lease.as_str().to_owned();
        Ok(self.inner.store.run(move |store| store.lease(&id)).await?)
    }

    /// Saves `record` (releasing its GPUs in the same write when it no longer holds them).
    pub(super) async fn save(&self, record: &LeaseRecord) -> Result<(), InvokeFailure> {
        let record = record.clone();
        Ok(self
            .inner
            .store
            .run(move |store| store.put_lease(&record))
            .await?)
    }
}
