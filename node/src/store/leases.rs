//! Market leases with the GPUs they reserve from the GPU ledger, and the record
//! of reservations that lapsed unfunded (per peer, per wallet and per bid), which the provider
//! counts against whoever asked.

use sled::Transactional as _;
use sled::transaction::ConflictableTransactionError;

use super::ledger::{Holder, Ledger};
use super::workloads::AdmitAbort;
use super::{
    AdmitError, Store, StoreError, decode, encode_in, read_all, read_one, transaction_error,
};
use claw_market::lease::LeaseRecord;

/// Lapse times kept per peer or wallet.
const MAX_LAPSES_PER_KEY: usize = 16;
/// How long a lapse counts against its asker.
const LAPSE_MEMORY_MS: u64 = 3_600_000;

/// The key under which a lapsed lease's bid is remembered until it expires.
fn lapsed_bid_key(lease_id: &str) -> String {
    format!("lease:{lease_id}")
}

impl Store {
    /// Records a new lease and reserves `count` free GPUs from `candidates` for it, in one
    /// transaction: a crash leaves both or neither, and two leases never get the same GPU.
    /// Returns the record with its GPUs.
    pub fn reserve_for_lease(
        &self,
        record: &LeaseRecord,
        count: usize,
        candidates: &[String],
    ) -> Result<LeaseRecord, AdmitError> {
        let holder = Holder::Lease(record.lease_id.to_string());
        let outcome = (&self.allocations, &self.leases).transaction(|(allocations, leases)| {
            if let Some(existing) = leases.get(record.lease_id.as_str().as_bytes())? {
                return decode("lease record", &existing)
                    .map_err(|e| ConflictableTransactionError::Abort(AdmitAbort::Store(e)));
            }
            let ledger = Ledger(allocations);
            let free = ledger.free(candidates, None)?;
            if free.len() < count {
                return Err(ConflictableTransactionError::Abort(AdmitAbort::Gpus(
                    format!("asked for {count} GPUs, {} free", free.len()),
                )));
            }
            let mut record = record.clone();
            record.gpus = free[..count].to_vec();
            ledger.take(&record.gpus, &holder)?;
            leases.insert(
                record.lease_id.as_str().as_bytes(),
                encode_in("lease record", &record)?,
            )?;
            Ok(record)
        });
        let record = self.admission(outcome, candidates)?;
        self.db.flush().map_err(StoreError::from)?;
        Ok(record)
    }

    /// Records a lease's new state. When it no longer holds GPUs, those still reserved for it
    /// (not yet handed to its workload) are released in the same transaction.
    pub fn put_lease(&self, record: &LeaseRecord) -> Result<(), StoreError> {
        let holder = Holder::Lease(record.lease_id.to_string());
        (&self.allocations, &self.leases)
            .transaction(|(allocations, leases)| {
                if !record.state.holds_gpus() {
                    Ledger(allocations).release(&record.gpus, &holder)?;
                }
                leases.insert(
                    record.lease_id.as_str().as_bytes(),
                    encode_in("lease record", record)?,
                )?;
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })
            .map_err(transaction_error)?;
        self.db.flush()?;
        Ok(())
    }

    /// Deletes a lease that lapsed before it was funded, releasing any GPU still reserved for it,
    /// and records the lapse against `keys` (its peer and wallet) and its bid until
    /// `bid_expires_ms`.
    pub fn forget_lapsed_lease(
        &self,
        record: &LeaseRecord,
        keys: &[String],
        now_ms: u64,
        bid_expires_ms: u64,
    ) -> Result<(), StoreError> {
        let holder = Holder::Lease(record.lease_id.to_string());
        (&self.allocations, &self.leases, &self.lapses)
            .transaction(|(allocations, leases, lapsed)| {
                Ledger(allocations).release(&record.gpus, &holder)?;
                leases.remove(record.lease_id.as_str().as_bytes())?;
                // Read and written in the one transaction: lapses of one peer forgotten at once
                // (one task per lease) each count.
                for key in keys {
                    let mut times: Vec<u64> = lapsed
                        .get(key.as_bytes())?
                        .map(|b| decode("lapse times", &b))
                        .transpose()
                        .map_err(ConflictableTransactionError::Abort)?
                        .unwrap_or_default();
                    times.push(now_ms);
                    let excess = times.len().saturating_sub(MAX_LAPSES_PER_KEY);
                    times.drain(..excess);
                    lapsed.insert(key.as_bytes(), encode_in("lapse times", &times)?)?;
                }
                let bid_key = lapsed_bid_key(record.lease_id.as_str());
                lapsed.insert(
                    bid_key.as_bytes(),
                    encode_in("lapsed lease", &bid_expires_ms)?,
                )?;
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })
            .map_err(transaction_error)?;
        self.db.flush()?;
        Ok(())
    }

    /// How many reservations of `key` (`peer:…` or `wallet:…`) lapsed since `since_ms`.
    pub fn lapses_since(&self, key: &str, since_ms: u64) -> Result<u32, StoreError> {
        let times: Vec<u64> = self
            .lapses
            .get(key.as_bytes())?
            .map(|b| decode("lapse times", &b))
            .transpose()?
            .unwrap_or_default();
        Ok(u32::try_from(times.iter().filter(|t| **t >= since_ms).count()).unwrap_or(u32::MAX))
    }

    /// Whether lease `id` lapsed and its bid has not expired yet.
    pub fn lapsed_lease(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.lapses.get(lapsed_bid_key(id).as_bytes())?.is_some())
    }

    /// Forgets lapses older than an hour and lapsed leases whose bid expired.
    pub fn prune_lapses(&self, now_ms: u64) -> Result<(), StoreError> {
        for entry in self.lapses.iter() {
            let (key, value) = entry?;
            let stale = if key.starts_with(b"lease:") {
                decode::<u64>("lapsed lease", &value)? < now_ms
            } else {
                decode::<Vec<u64>>("lapse times", &value)?
                    .iter()
                    .all(|t| t + LAPSE_MEMORY_MS < now_ms)
            };
            if stale {
                self.lapses.remove(key)?;
            }
        }
        Ok(())
    }

    /// One lease by id.
    pub fn lease(&self, id: &str) -> Result<Option<LeaseRecord>, StoreError> {
        read_one(&self.leases, "lease record", id)
    }

    /// Every lease, oldest first.
    pub fn leases(&self) -> Result<Vec<LeaseRecord>, StoreError> {
        let mut records: Vec<LeaseRecord> = read_all(&self.leases, "lease record")?;
        records.sort_by(|a, b| (a.created_ms, &a.lease_id).cmp(&(b.created_ms, &b.lease_id)));
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::reopen;
    use super::super::workloads::tests::pending;
    use super::super::{Admitted, GpuChoice};
    use super::*;

    #[test]
    fn a_lease_reserves_gpus_once_and_releases_them_when_it_lapses() {
        use claw_market::lease::{LeaseId, LeaseState};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let gpus = vec!["GPU-a".to_owned(), "GPU-b".to_owned()];
        let id = |n: u8| LeaseId::derive(&[n; 32], &[0; 32]);
        let lease = |n: u8| LeaseRecord::reserved(id(n), "peer".to_owned(), Vec::new(), 0);
        let first = store.reserve_for_lease(&lease(1), 2, &gpus).unwrap();
        assert_eq!(first.gpus, gpus);
        // Retried: the same lease, the same GPUs, nothing more taken.
        assert_eq!(
            store.reserve_for_lease(&lease(1), 2, &gpus).unwrap().gpus,
            gpus
        );
        let taken = store.reserve_for_lease(&lease(2), 1, &gpus).unwrap_err();
        assert!(
            matches!(taken, AdmitError::GpusUnavailable { .. }),
            "{taken}"
        );
        assert_eq!(store.allocations().unwrap().len(), 2);
        // Reserved GPUs pass to the lease's workload and to no other.
        let record = |id: &str| pending(id, None);
        assert!(matches!(
            store.admit_workload(record("wl-x"), &GpuChoice::Count(1), &gpus),
            Err(AdmitError::GpusUnavailable { .. })
        ));
        assert!(matches!(
            store.admit_workload(
                record("wl-y"),
                &GpuChoice::Reserved(id(9).to_string(), vec!["GPU-a".into()]),
                &gpus
            ),
            Err(AdmitError::GpusUnavailable { .. })
        ));
        let admitted = store
            .admit_workload(
                record("wl-z"),
                &GpuChoice::Reserved(id(1).to_string(), vec!["GPU-a".into()]),
                &gpus,
            )
            .unwrap();
        assert!(matches!(admitted, Admitted::New(ref w) if w.gpus == ["GPU-a"]));
        // The lease ends: what it still reserved is released, its workload's GPU is not.
        let mut ended = first;
        ended.state = LeaseState::Expired;
        store.put_lease(&ended).unwrap();
        let allocations = store.allocations().unwrap();
        assert_eq!(
            allocations.get("GPU-a"),
            Some(&Holder::Workload("wl-z".to_owned()))
        );
        assert!(!allocations.contains_key("GPU-b"));
        drop(store);
        let store = reopen(dir.path());
        assert_eq!(
            store.lease(id(1).as_str()).unwrap().unwrap().state,
            LeaseState::Expired
        );
    }

    #[test]
    fn a_lapsed_reservation_is_deleted_and_counted_against_its_asker() {
        use claw_market::lease::LeaseId;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let gpus = vec!["GPU-a".to_owned()];
        let id = LeaseId::derive(&[1; 32], &[0; 32]);
        let reserved = store
            .reserve_for_lease(
                &LeaseRecord::reserved(id.clone(), "peer".to_owned(), Vec::new(), 0),
                1,
                &gpus,
            )
            .unwrap();
        let keys = ["peer:p".to_owned(), "wallet:w".to_owned()];
        for now in [1_000, 2_000] {
            store
                .forget_lapsed_lease(&reserved, &keys, now, 10_000)
                .unwrap();
        }
        assert!(store.lease(id.as_str()).unwrap().is_none());
        assert!(store.allocations().unwrap().is_empty(), "the GPU is free");
        assert!(store.lapsed_lease(id.as_str()).unwrap());
        assert_eq!(store.lapses_since("peer:p", 0).unwrap(), 2);
        assert_eq!(store.lapses_since("wallet:w", 1_500).unwrap(), 1);
        assert_eq!(store.lapses_since("peer:other", 0).unwrap(), 0);
        // The bid expires and the lapses age out: both are forgotten.
        store.prune_lapses(3_700_000).unwrap();
        assert!(!store.lapsed_lease(id.as_str()).unwrap());
        assert_eq!(store.lapses_since("peer:p", 0).unwrap(), 0);
    }

    #[test]
    fn lapses_of_one_peer_forgotten_at_once_each_count() {
        use claw_market::lease::LeaseId;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let keys = ["peer:p".to_owned()];
        std::thread::scope(|scope| {
            for i in 0..8u8 {
                let (store, keys) = (&store, &keys);
                scope.spawn(move || {
                    let id = LeaseId::derive(&[i; 32], &[0; 32]);
                    let record = LeaseRecord::reserved(id, "peer".to_owned(), Vec::new(), 0);
                    store
                        .forget_lapsed_lease(&record, keys, 1_000 + u64::from(i), 10_000)
                        .unwrap();
                });
            }
        });
        assert_eq!(store.lapses_since("peer:p", 0).unwrap(), 8);
    }
}
