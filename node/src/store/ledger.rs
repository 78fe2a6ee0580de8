//! The GPU ledger: who holds each of the node's GPUs, a workload or a lease that reserved it.
//! This is the only code that reads or writes the allocations tree. Workloads and leases take
//! and release GPUs through [`Ledger`] inside their own transactions, so a record and its GPUs
//! are always written together, and a GPU is never held twice.

use std::collections::BTreeMap;

use sled::transaction::{TransactionalTree, UnabortableTransactionError};

use super::{Store, StoreError};

/// How a lease holder is written in the allocations tree, before the lease id.
const LEASE_HOLDER_PREFIX: &str = "lease:";
/// Key prefix of a cordoned GPU in the allocations tree (no GPU UUID starts with a NUL).
const CORDON_KEY_PREFIX: &[u8] = b"\0cordon\0";

fn cordon_key(uuid: &str) -> Vec<u8> {
    [CORDON_KEY_PREFIX, uuid.as_bytes()].concat()
}

/// Who holds a GPU.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Holder {
    /// A workload, by id.
    Workload(String),
    /// A lease, by id, that reserved it and has not handed it to its workload yet.
    Lease(String),
    /// No one: an operator took it out of scheduling (`gpu.cordon`).
    Cordon,
}

impl Holder {
    fn to_bytes(&self) -> Vec<u8> {
        match self {
            Self::Workload(id) => id.as_bytes().to_vec(),
            Self::Lease(id) => format!("{LEASE_HOLDER_PREFIX}{id}").into_bytes(),
            Self::Cordon => CORDON_KEY_PREFIX.to_vec(),
        }
    }

    fn from_bytes(bytes: &[u8]) -> Self {
        let text = String::from_utf8_lossy(bytes);
        match text.strip_prefix(LEASE_HOLDER_PREFIX) {
            Some(lease) => Self::Lease(lease.to_owned()),
            None => Self::Workload(text.into_owned()),
        }
    }
}

/// As the control API shows a holder: a workload's id, or `lease:<id>`.
impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Workload(id) => f.write_str(id),
            Self::Lease(id) => write!(f, "{LEASE_HOLDER_PREFIX}{id}"),
            Self::Cordon => f.write_str("cordoned"),
        }
    }
}

/// The ledger inside a transaction over the allocations tree.
pub(super) struct Ledger<'t>(pub(super) &'t TransactionalTree);

type InTransaction<T> = Result<T, UnabortableTransactionError>;

impl Ledger<'_> {
    /// Those of `candidates` (their order kept) that no one holds and no cordon keeps out of
    /// scheduling, or that `reserved_for` holds (a cordon after the reservation keeps it).
    pub(super) fn free(
        &self,
        candidates: &[String],
        reserved_for: Option<&Holder>,
    ) -> InTransaction<Vec<String>> {
        let reserved = reserved_for.map(Holder::to_bytes);
        let mut free = Vec::new();
        for uuid in candidates {
            match self.0.get(uuid.as_bytes())? {
                None if self.0.get(cordon_key(uuid))?.is_none() => free.push(uuid.clone()),
                Some(holder) if reserved.as_deref() == Some(&holder) => free.push(uuid.clone()),
                _ => {}
            }
        }
        Ok(free)
    }

    /// Gives `gpus` to `holder`. The caller has checked that they are [`Ledger::free`].
    pub(super) fn take(&self, gpus: &[String], holder: &Holder) -> InTransaction<()> {
        let holder = holder.to_bytes();
        for uuid in gpus {
            self.0.insert(uuid.as_bytes(), holder.as_slice())?;
        }
        Ok(())
    }

    /// Releases those of `gpus` that `holder` still holds; one handed on (a lease's GPU to its
    /// workload) stays with its new holder.
    pub(super) fn release(&self, gpus: &[String], holder: &Holder) -> InTransaction<()> {
        let holder = holder.to_bytes();
        for uuid in gpus {
            if self.0.get(uuid.as_bytes())?.as_deref() == Some(holder.as_slice()) {
                self.0.remove(uuid.as_bytes())?;
            }
        }
        Ok(())
    }
}

impl Store {
    /// GPU UUID → who holds it: a workload or a lease, or, for a cordoned GPU no one holds, the
    /// cordon. Every GPU listed here is unavailable to new work.
    pub fn allocations(&self) -> Result<BTreeMap<String, Holder>, StoreError> {
        let mut held = BTreeMap::new();
        for entry in self.allocations.iter() {
            let (key, holder) = entry?;
            if let Some(gpu) = key.strip_prefix(CORDON_KEY_PREFIX) {
                held.entry(String::from_utf8_lossy(gpu).into_owned())
                    .or_insert(Holder::Cordon);
            } else {
                held.insert(
                    String::from_utf8_lossy(&key).into_owned(),
                    Holder::from_bytes(&holder),
                );
            }
        }
        Ok(held)
    }

    /// Takes GPU `uuid` out of scheduling (or puts it back): no new workload or lease gets it;
    /// whoever holds it now keeps it.
    pub fn set_gpu_cordoned(&self, uuid: &str, cordoned: bool) -> Result<(), StoreError> {
        if cordoned {
            self.allocations
                .insert(cordon_key(uuid), CORDON_KEY_PREFIX)?;
        } else {
            self.allocations.remove(cordon_key(uuid))?;
        }
        self.db.flush()?;
        Ok(())
    }

    /// The GPUs taken out of scheduling.
    pub fn cordoned_gpus(&self) -> Result<Vec<String>, StoreError> {
        self.allocations
            .scan_prefix(CORDON_KEY_PREFIX)
            .keys()
            .map(|key| {
                let key = key?;
                Ok(String::from_utf8_lossy(&key[CORDON_KEY_PREFIX.len()..]).into_owned())
            })
            .collect()
    }

    /// Gives each of `gpus` that no one holds to `holder`, outside a transaction: for a
    /// workload found running in Docker without a record, whose container already uses them.
    pub(super) fn adopt_gpus(&self, gpus: &[String], holder: &Holder) -> Result<(), StoreError> {
        let holder = holder.to_bytes();
        for uuid in gpus {
            let _ = self.allocations.compare_and_swap(
                uuid.as_bytes(),
                None as Option<&[u8]>,
                Some(holder.as_slice()),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holders_read_back_as_written() {
        for holder in [
            Holder::Workload("wl-1".to_owned()),
            Holder::Lease("abc".to_owned()),
        ] {
            assert_eq!(Holder::from_bytes(&holder.to_bytes()), holder);
        }
        assert_eq!(Holder::Lease("abc".to_owned()).to_string(), "lease:abc");
        assert_eq!(Holder::Workload("wl-1".to_owned()).to_string(), "wl-1");
        assert_eq!(Holder::Cordon.to_string(), "cordoned");
    }
}
