//! Workload records, the store's own type, with their names, idempotency keys and GPUs: a
//! workload and what it takes from the GPU ledger are written in one transaction.

use std::collections::BTreeMap;

use claw_api::workload::{Isolation, RestartPolicy, Workload, WorkloadState};
use serde::{Deserialize, Serialize};
use sled::Transactional as _;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use super::ledger::{Holder, Ledger};
use super::{Store, StoreError, decode, encode, encode_in, read_all, read_one, transaction_error};

/// A workload as the store keeps it; the commands answer with a [`WorkloadRecord::view`] of it.
/// Environment values are never kept: they may hold secrets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadRecord {
    /// `wl-` and 12 hex digits.
    pub id: String,
    /// The display name, if one was given.
    pub name: Option<String>,
    /// Image reference.
    pub image: String,
    /// Command and arguments, if given.
    pub command: Vec<String>,
    /// Peer id of whoever started it.
    pub owner: String,
    /// UUIDs of its GPUs.
    pub gpus: Vec<String>,
    /// Whether its GPUs are simulated (no device was passed to the container).
    pub simulated_gpus: bool,
    /// Docker's container id, once created.
    pub container_id: Option<String>,
    /// Its state.
    pub state: WorkloadState,
    /// Why it is in that state, for `failed`, `lost` and `exited`.
    pub reason: Option<String>,
    /// Exit code once it has exited.
    pub exit_code: Option<i64>,
    /// Restart policy.
    pub restart: RestartPolicy,
    /// Its labels (without the node's own `io.clawbernetes.*` ones).
    pub labels: BTreeMap<String, String>,
    /// The idempotency key it was started with.
    pub idempotency_key: Option<String>,
    /// When it was recorded, Unix ms.
    pub created_ms: u64,
    /// When its state last changed, Unix ms.
    pub updated_ms: u64,
    /// How it is kept apart from the node and other workloads.
    #[serde(default)]
    pub isolation: Isolation,
    /// The namespace it counts against, and what it counts for there.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Its CPU limit in thousandths of a core, when it has one.
    #[serde(default)]
    pub cpu_millis: Option<u64>,
    /// Its memory limit, MiB, when it has one.
    #[serde(default)]
    pub memory_mib: Option<u64>,
}

impl WorkloadRecord {
    /// The workload as the commands answer it; `redacted` withholds its owner, command, labels
    /// and idempotency key.
    pub fn view(&self, redacted: bool) -> Workload {
        let shown = !redacted;
        Workload {
            id: self.id.clone(),
            name: self.name.clone(),
            image: self.image.clone(),
            command: if shown {
                self.command.clone()
            } else {
                Vec::new()
            },
            owner: shown.then(|| self.owner.clone()),
            gpus: self.gpus.clone(),
            simulated_gpus: self.simulated_gpus,
            container_id: self.container_id.clone(),
            state: self.state,
            reason: self.reason.clone(),
            exit_code: self.exit_code,
            restart: self.restart,
            labels: if shown {
                self.labels.clone()
            } else {
                BTreeMap::new()
            },
            idempotency_key: self.idempotency_key.clone().filter(|_| shown),
            created_ms: self.created_ms,
            updated_ms: self.updated_ms,
            isolation: self.isolation,
            redacted,
        }
    }
}

/// Why a workload could not be admitted.
#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    /// The GPUs asked for are not free (or not on this node).
    #[error("{message}; free GPUs: {free:?}")]
    GpusUnavailable {
        /// What was wrong.
        message: String,
        /// UUIDs free at the time.
        free: Vec<String>,
    },
    /// Another active workload has the name.
    #[error("an active workload is already named {0:?}")]
    NameTaken(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The GPUs a new workload takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuChoice {
    /// Any `n` free GPUs, taken in inventory order.
    Count(usize),
    /// Exactly these.
    Exactly(Vec<String>),
    /// Exactly these, which lease `.0` reserved (they are handed from the lease to the workload).
    Reserved(String, Vec<String>),
}

/// What admitting a workload did.
#[derive(Debug)]
pub enum Admitted {
    /// A new workload, with its GPUs allocated.
    New(WorkloadRecord),
    /// The idempotency key was seen before: the workload it created.
    Existing(WorkloadRecord),
}

/// Why an admission transaction stopped.
pub(super) enum AdmitAbort {
    Gpus(String),
    NameTaken(String),
    Store(StoreError),
}

impl From<StoreError> for AdmitAbort {
    fn from(error: StoreError) -> Self {
        Self::Store(error)
    }
}

fn abort<T>(reason: AdmitAbort) -> Result<T, ConflictableTransactionError<AdmitAbort>> {
    Err(ConflictableTransactionError::Abort(reason))
}

/// Where a workload's idempotency key is indexed: per owner, so that one caller's key never
/// answers with another's workload.
fn idempotency_index(record: &WorkloadRecord) -> Option<Vec<u8>> {
    let key = record.idempotency_key.as_ref()?;
    Some([record.owner.as_bytes(), b"\n", key.as_bytes()].concat())
}

fn decode_record(bytes: &[u8]) -> Result<WorkloadRecord, StoreError> {
    decode("workload record", bytes)
}

/// Of `free` GPUs, those `gpus` asks for, or why it cannot have them.
fn choose(gpus: &GpuChoice, free: &[String], inventory: &[String]) -> Result<Vec<String>, String> {
    match gpus {
        GpuChoice::Count(n) if *n > free.len() => {
            Err(format!("asked for {n} GPUs, {} free", free.len()))
        }
        GpuChoice::Count(n) => Ok(free[..*n].to_vec()),
        GpuChoice::Exactly(uuids) | GpuChoice::Reserved(_, uuids) => {
            if let Some(missing) = uuids.iter().find(|u| !inventory.contains(u)) {
                return Err(format!("{missing} is not a GPU of this node"));
            }
            if let Some(taken) = uuids.iter().find(|u| !free.contains(u)) {
                return Err(format!("{taken} is allocated to another workload"));
            }
            Ok(uuids.clone())
        }
    }
}

impl Store {
    /// Admits a new workload: checks its name and idempotency key, allocates its GPUs from
    /// `inventory` (UUIDs in inventory order), and records both, in one transaction.
    ///
    /// Concurrent callers are serialised by the transaction, so a GPU is never given twice.
    pub fn admit_workload(
        &self,
        record: WorkloadRecord,
        gpus: &GpuChoice,
        inventory: &[String],
    ) -> Result<Admitted, AdmitError> {
        let trees = (
            &self.workloads,
            &self.allocations,
            &self.idempotency,
            &self.names,
        );
        let outcome = trees.transaction(|(workloads, allocations, idempotency, names)| {
            if let Some(index) = idempotency_index(&record)
                && let Some(id) = idempotency.get(&index)?
                && let Some(existing) = workloads.get(&id)?
            {
                let existing = decode_record(&existing).or_else(|e| abort(e.into()))?;
                return Ok(Admitted::Existing(existing));
            }
            if let Some(name) = &record.name
                && let Some(holder) = names.get(name.as_bytes())?
                && let Some(holder) = workloads.get(&holder)?
                && decode_record(&holder)
                    .or_else(|e| abort(e.into()))?
                    .state
                    .is_active()
            {
                return abort(AdmitAbort::NameTaken(name.clone()));
            }
            let ledger = Ledger(allocations);
            let reserved_for = match gpus {
                GpuChoice::Reserved(lease, _) => Some(Holder::Lease(lease.clone())),
                _ => None,
            };
            let free = ledger.free(inventory, reserved_for.as_ref())?;
            let mut record = record.clone();
            record.gpus = choose(gpus, &free, inventory).or_else(|e| abort(AdmitAbort::Gpus(e)))?;
            ledger.take(&record.gpus, &Holder::Workload(record.id.clone()))?;
            if let Some(index) = idempotency_index(&record) {
                idempotency.insert(index, record.id.as_bytes())?;
            }
            if let Some(name) = &record.name {
                names.insert(name.as_bytes(), record.id.as_bytes())?;
            }
            workloads.insert(record.id.as_bytes(), encode_in("workload record", &record)?)?;
            Ok(Admitted::New(record))
        });
        let admitted = self.admission(outcome, inventory)?;
        self.db.flush().map_err(StoreError::from)?;
        Ok(admitted)
    }

    /// The outcome of an admission transaction as the caller sees it: GPUs that were not free
    /// are reported with the UUIDs of `gpus` free now.
    pub(super) fn admission<T>(
        &self,
        outcome: Result<T, TransactionError<AdmitAbort>>,
        gpus: &[String],
    ) -> Result<T, AdmitError> {
        match outcome {
            Ok(value) => Ok(value),
            Err(TransactionError::Abort(AdmitAbort::Gpus(message))) => {
                let allocated = self.allocations()?;
                let free = gpus
                    .iter()
                    .filter(|u| !allocated.contains_key(*u))
                    .cloned()
                    .collect();
                Err(AdmitError::GpusUnavailable { message, free })
            }
            Err(TransactionError::Abort(AdmitAbort::NameTaken(name))) => {
                Err(AdmitError::NameTaken(name))
            }
            Err(TransactionError::Abort(AdmitAbort::Store(error))) => Err(error.into()),
            Err(TransactionError::Storage(error)) => Err(StoreError::Sled(error).into()),
        }
    }

    /// Records a workload's new state. When the state is terminal its GPUs and its name are
    /// released in the same transaction.
    pub fn update_workload(&self, record: &WorkloadRecord) -> Result<(), StoreError> {
        self.update_workload_from(record, None).map(drop)
    }

    /// [`Store::update_workload`], only while the kept record is still in state `seen` (when
    /// given): an observer that read the record before a command changed it (reconcile seeing
    /// the container a stop just ended) does not overwrite the command's outcome. Returns
    /// whether it wrote.
    pub fn update_workload_from(
        &self,
        record: &WorkloadRecord,
        seen: Option<WorkloadState>,
    ) -> Result<bool, StoreError> {
        let trees = (&self.workloads, &self.allocations, &self.names);
        let written = trees
            .transaction(|(workloads, allocations, names)| {
                if let Some(seen) = seen
                    && let Some(bytes) = workloads.get(record.id.as_bytes())?
                    && decode_record(&bytes)
                        .map_err(ConflictableTransactionError::Abort)?
                        .state
                        != seen
                {
                    return Ok(false);
                }
                if !record.state.is_active() {
                    if let Some(name) = &record.name
                        && names.get(name.as_bytes())?.as_deref() == Some(record.id.as_bytes())
                    {
                        names.remove(name.as_bytes())?;
                    }
                    Ledger(allocations)
                        .release(&record.gpus, &Holder::Workload(record.id.clone()))?;
                }
                workloads.insert(record.id.as_bytes(), encode_in("workload record", record)?)?;
                Ok::<_, ConflictableTransactionError<StoreError>>(true)
            })
            .map_err(transaction_error)?;
        self.db.flush()?;
        Ok(written)
    }

    /// Records a workload found in Docker without a record (adopted after the store was lost),
    /// allocating the GPUs its container carries where they are free.
    pub fn adopt_workload(&self, record: &WorkloadRecord) -> Result<(), StoreError> {
        self.adopt_gpus(&record.gpus, &Holder::Workload(record.id.clone()))?;
        if let Some(name) = &record.name
            && record.state.is_active()
        {
            let _ = self.names.compare_and_swap(
                name.as_bytes(),
                None as Option<&[u8]>,
                Some(record.id.as_bytes()),
            )?;
        }
        self.workloads
            .insert(record.id.as_bytes(), encode("workload record", record)?)?;
        self.db.flush()?;
        Ok(())
    }

    /// One workload by id.
    pub fn workload(&self, id: &str) -> Result<Option<WorkloadRecord>, StoreError> {
        read_one(&self.workloads, "workload record", id)
    }

    /// Every workload, oldest first.
    pub fn workloads(&self) -> Result<Vec<WorkloadRecord>, StoreError> {
        let mut records: Vec<WorkloadRecord> = read_all(&self.workloads, "workload record")?;
        records.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        Ok(records)
    }

    /// Workloads in a state.
    pub fn workloads_in(&self, state: WorkloadState) -> Result<Vec<WorkloadRecord>, StoreError> {
        Ok(self
            .workloads()?
            .into_iter()
            .filter(|w| w.state == state)
            .collect())
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::tests::reopen;
    use super::*;

    pub(in crate::store) fn pending(id: &str, key: Option<&str>) -> WorkloadRecord {
        WorkloadRecord {
            id: id.to_owned(),
            name: None,
            image: "busybox".into(),
            command: Vec::new(),
            owner: "peer".into(),
            gpus: Vec::new(),
            simulated_gpus: true,
            container_id: None,
            state: WorkloadState::Creating,
            reason: None,
            exit_code: None,
            restart: crate::workloads::spec::RestartPolicy::No,
            labels: BTreeMap::new(),
            idempotency_key: key.map(str::to_owned),
            created_ms: 1,
            updated_ms: 1,
            isolation: crate::workloads::spec::Isolation::Shared,
            namespace: None,
            cpu_millis: None,
            memory_mib: None,
        }
    }

    #[test]
    fn a_redacted_view_withholds_what_only_operators_and_owners_see() {
        let mut record = pending("wl-1", Some("key-1"));
        record.command = vec!["sleep".into(), "1".into()];
        record.labels.insert("team".into(), "a".into());
        let whole = serde_json::to_value(record.view(false)).unwrap();
        assert_eq!(whole["owner"], "peer");
        assert_eq!(whole["idempotency_key"], "key-1");
        assert!(whole.get("redacted").is_none(), "{whole}");
        let redacted = record.view(true);
        assert_eq!(redacted.owner, None);
        assert!(redacted.command.is_empty() && redacted.labels.is_empty());
        assert_eq!(redacted.idempotency_key, None);
        assert!(redacted.redacted);
        assert_eq!((redacted.id, redacted.image), (record.id, record.image));
    }

    #[test]
    fn an_observer_does_not_overwrite_what_a_command_changed_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut running = pending("wl-1", None);
        running.state = WorkloadState::Running;
        store.update_workload(&running).unwrap();
        // A stop records its outcome...
        let mut stopped = running.clone();
        stopped.state = WorkloadState::Stopped;
        store.update_workload(&stopped).unwrap();
        // ...after reconcile read the record as running and saw the container exit.
        let mut exited = running.clone();
        exited.state = WorkloadState::Exited;
        assert!(
            !store
                .update_workload_from(&exited, Some(WorkloadState::Running))
                .unwrap()
        );
        assert_eq!(
            store.workload("wl-1").unwrap().unwrap().state,
            WorkloadState::Stopped
        );
        assert!(
            store
                .update_workload_from(&exited, Some(WorkloadState::Stopped))
                .unwrap()
        );
    }

    #[test]
    fn concurrent_admissions_never_share_a_gpu() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let gpus: Vec<String> = (0..8).map(|i| format!("GPU-{i}")).collect();
        let threads: Vec<_> = (0..16)
            .map(|i| {
                let (store, gpus) = (store.clone(), gpus.clone());
                std::thread::spawn(move || {
                    store.admit_workload(
                        pending(&format!("wl-{i}"), None),
                        &GpuChoice::Count(1),
                        &gpus,
                    )
                })
            })
            .collect();
        let mut granted = Vec::new();
        let mut refused = 0;
        for thread in threads {
            match thread.join().unwrap() {
                Ok(Admitted::New(record)) => granted.extend(record.gpus),
                Err(AdmitError::GpusUnavailable { free, .. }) => {
                    assert!(free.is_empty());
                    refused += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        granted.sort();
        assert_eq!(granted, gpus, "each GPU granted exactly once");
        assert_eq!(refused, 8);
        assert_eq!(store.allocations().unwrap().len(), 8);
    }

    #[test]
    fn a_cordoned_gpu_goes_to_no_new_workload_and_its_holder_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let gpus: Vec<String> = (0..2).map(|i| format!("GPU-{i}")).collect();
        let admitted = store
            .admit_workload(pending("wl-a", None), &GpuChoice::Count(1), &gpus)
            .unwrap();
        let Admitted::New(first) = admitted else {
            panic!("a new workload")
        };
        assert_eq!(first.gpus, ["GPU-0"]);
        store.set_gpu_cordoned("GPU-0", true).unwrap();
        store.set_gpu_cordoned("GPU-1", true).unwrap();
        assert_eq!(store.cordoned_gpus().unwrap(), gpus);
        let held = store.allocations().unwrap();
        assert_eq!(
            held["GPU-0"],
            Holder::Workload("wl-a".into()),
            "its holder keeps it"
        );
        assert_eq!(held["GPU-1"], Holder::Cordon);
        let refused = store.admit_workload(pending("wl-b", None), &GpuChoice::Count(1), &gpus);
        assert!(
            matches!(refused, Err(AdmitError::GpusUnavailable { ref free, .. }) if free.is_empty()),
            "{refused:?}"
        );
        let pinned = store.admit_workload(
            pending("wl-c", None),
            &GpuChoice::Exactly(vec!["GPU-1".into()]),
            &gpus,
        );
        assert!(pinned.is_err(), "not even by UUID");
        store.set_gpu_cordoned("GPU-1", false).unwrap();
        let Admitted::New(after) = store
            .admit_workload(pending("wl-d", None), &GpuChoice::Count(1), &gpus)
            .unwrap()
        else {
            panic!("a new workload")
        };
        assert_eq!(after.gpus, ["GPU-1"]);
        assert_eq!(store.cordoned_gpus().unwrap(), ["GPU-0"]);
    }

    #[test]
    fn one_active_workload_per_name_even_under_concurrent_admissions() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let store = store.clone();
                std::thread::spawn(move || {
                    let mut record = pending(&format!("wl-{i}"), None);
                    record.name = Some("trainer".into());
                    store.admit_workload(record, &GpuChoice::Count(0), &[])
                })
            })
            .collect();
        let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let admitted: Vec<WorkloadRecord> = results
            .into_iter()
            .filter_map(|r| match r {
                Ok(Admitted::New(record)) => Some(record),
                Err(AdmitError::NameTaken(name)) => {
                    assert_eq!(name, "trainer");
                    None
                }
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(admitted.len(), 1);
        // Once it ends, the name is free again.
        let mut first = admitted[0].clone();
        first.state = WorkloadState::Exited;
        store.update_workload(&first).unwrap();
        let mut next = pending("wl-next", None);
        next.name = Some("trainer".into());
        assert!(matches!(
            store.admit_workload(next, &GpuChoice::Count(0), &[]),
            Ok(Admitted::New(_))
        ));
    }

    #[test]
    fn named_gpus_conflict_names_what_is_free_and_terminal_states_release() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let gpus = vec!["GPU-a".to_owned(), "GPU-b".to_owned()];
        let Admitted::New(mut first) = store
            .admit_workload(
                pending("wl-1", Some("k1")),
                &GpuChoice::Exactly(vec!["GPU-a".into()]),
                &gpus,
            )
            .unwrap()
        else {
            panic!("not admitted")
        };
        let err = store
            .admit_workload(
                pending("wl-2", None),
                &GpuChoice::Exactly(vec!["GPU-a".into()]),
                &gpus,
            )
            .unwrap_err();
        match err {
            AdmitError::GpusUnavailable { message, free } => {
                assert!(message.contains("GPU-a"), "{message}");
                assert_eq!(free, ["GPU-b"]);
            }
            other => panic!("unexpected {other:?}"),
        }
        let err = store
            .admit_workload(
                pending("wl-3", None),
                &GpuChoice::Exactly(vec!["GPU-z".into()]),
                &gpus,
            )
            .unwrap_err();
        assert!(err.to_string().contains("not a GPU of this node"), "{err}");
        // The same idempotency key answers with the first workload and allocates nothing.
        let again = store
            .admit_workload(pending("wl-4", Some("k1")), &GpuChoice::Count(1), &gpus)
            .unwrap();
        assert!(matches!(again, Admitted::Existing(ref w) if w.id == "wl-1"));
        assert_eq!(store.allocations().unwrap().len(), 1);
        // Another owner's same key is its own: a new workload, never the first owner's.
        let mut other = pending("wl-5", Some("k1"));
        other.owner = "another-peer".into();
        let theirs = store
            .admit_workload(other, &GpuChoice::Count(0), &gpus)
            .unwrap();
        assert!(matches!(theirs, Admitted::New(ref w) if w.id == "wl-5"));
        first.state = WorkloadState::Stopped;
        store.update_workload(&first).unwrap();
        assert!(store.allocations().unwrap().is_empty());
        drop(store);
        let store = reopen(dir.path());
        assert_eq!(
            store.workload("wl-1").unwrap().unwrap().state,
            WorkloadState::Stopped
        );
    }
}
