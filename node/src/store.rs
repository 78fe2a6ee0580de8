//! The node's durable state, in sled: the envelope sequence counter, the latest signed
//! inventory, the audit log, workloads and the GPUs allocated to them, and the node's own
//! operator state (labels, cordon), and market leases with the GPUs they reserve.
//!
//! A workload and its GPU allocation are written in one transaction, so a crash at any point
//! leaves either both or neither; every write is flushed before the caller is answered.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use sled::Transactional as _;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use crate::workloads::{WorkloadRecord, WorkloadState};
use claw_market::lease::LeaseRecord;

const META_TREE: &str = "meta";
const AUDIT_TREE: &str = "audit";
const WORKLOADS_TREE: &str = "workloads";
const ALLOCATIONS_TREE: &str = "gpu-allocations";
const IDEMPOTENCY_TREE: &str = "idempotency";
const NAMES_TREE: &str = "workload-names";
/// Leases of the second lease protocol (the first one's records, under "leases", are not read).
const LEASES_TREE: &str = "leases/2";
/// Lapsed reservations: per peer and per wallet the times they lapsed, and the leases whose bid
/// may not reserve again until it expires.
const LAPSES_TREE: &str = "lease-lapses";
/// Lapse times kept per peer or wallet.
const MAX_LAPSES_PER_KEY: usize = 16;
/// Prefix of the allocation holder for GPUs a lease reserves.
const LEASE_HOLDER_PREFIX: &str = "lease:";
const SEQUENCE_KEY: &[u8] = b"envelope-sequence";
const CORDONED_KEY: &[u8] = b"cordoned";
/// `CORDONED_KEY`'s value when the node is cordoned.
const CORDONED: u8 = 1;
/// `CORDONED_KEY`'s value when the node is cordoned and stopping its workloads.
const DRAINING: u8 = 2;
const LABELS_KEY: &[u8] = b"labels";
/// The selling decision made at run time with `market.sell`.
const SELLING_KEY: &[u8] = b"market-selling";
/// `SELLING_KEY`'s value when the node sells nothing.
const NOT_SELLING: &[u8] = b"stop";
/// Audit records kept; older ones are dropped as new ones arrive.
const AUDIT_RETAINED: u64 = 100_000;
/// How often (in appended records) old audit records are trimmed.
const AUDIT_TRIM_EVERY: u64 = 1024;
const LATEST_INVENTORY_KEY: &[u8] = b"latest-inventory";

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Another process holds the store open.
    #[error("the store at {path} is in use by another clawnode process")]
    Locked {
        /// The store directory.
        path: String,
    },
    /// sled failed.
    #[error("store error: {0}")]
    Sled(#[from] sled::Error),
    /// A stored value is not what this version wrote.
    #[error("store is corrupt: {0}")]
    Corrupt(String),
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

/// Why the admission transaction stopped.
enum AdmitAbort {
    Gpus(String),
    NameTaken(String),
    Store(StoreError),
}

/// Where a workload's idempotency key is indexed: per owner, so that one caller's key never
/// answers with another's workload.
fn idempotency_index(record: &WorkloadRecord) -> Option<Vec<u8>> {
    let key = record.idempotency_key.as_ref()?;
    Some([record.owner.as_bytes(), b"\n", key.as_bytes()].concat())
}

/// A stored JSON record (`what` names it in the error when it does not decode).
fn decode<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

fn encode<T: serde::Serialize>(record: &T) -> Vec<u8> {
    serde_json::to_vec(record).unwrap_or_default()
}

fn decode_record(bytes: &[u8]) -> Result<WorkloadRecord, StoreError> {
    decode("workload record", bytes)
}

fn decode_lease(bytes: &[u8]) -> Result<LeaseRecord, StoreError> {
    decode("lease record", bytes)
}

/// The record under `id` in `tree`.
fn read_one<T: serde::de::DeserializeOwned>(
    tree: &sled::Tree,
    what: &str,
    id: &str,
) -> Result<Option<T>, StoreError> {
    tree.get(id.as_bytes())?
        .map(|bytes| decode(what, &bytes))
        .transpose()
}

/// Every record in `tree`.
fn read_all<T: serde::de::DeserializeOwned>(
    tree: &sled::Tree,
    what: &str,
) -> Result<Vec<T>, StoreError> {
    tree.iter()
        .values()
        .map(|bytes| decode(what, &bytes?))
        .collect()
}

/// The allocation holder of GPUs reserved for a lease.
fn lease_holder(lease_id: &str) -> String {
    format!("{LEASE_HOLDER_PREFIX}{lease_id}")
}

/// One command invocation, as the audit log keeps it. Params are kept only as a digest, so the
/// log never holds secrets a caller passed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    /// When the command finished, Unix ms.
    pub at_ms: u64,
    /// The caller's peer id (this node's own id for the local control API).
    pub caller: String,
    /// The caller's role here (`read`, `operate`, `admin`).
    #[serde(default)]
    pub role: Option<String>,
    /// The command name.
    pub command: String,
    /// Hex SHA-256 of the params' JSON text.
    pub params_sha256: String,
    /// `ok`, or the error code.
    pub outcome: String,
    /// How long it ran.
    pub duration_ms: u64,
}

/// The node's sled database.
#[derive(Debug, Clone)]
pub struct Store {
    meta: sled::Tree,
    audit: sled::Tree,
    workloads: sled::Tree,
    allocations: sled::Tree,
    idempotency: sled::Tree,
    names: sled::Tree,
    leases: sled::Tree,
    lapses: sled::Tree,
    audit_retained: u64,
    db: sled::Db,
}

impl Store {
    /// Opens (or creates) the store in `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = sled::open(path).map_err(|e| match e {
            // sled reports a held lock as a plain I/O error with this wording.
            sled::Error::Io(ref io) if io.to_string().contains("could not acquire lock") => {
                StoreError::Locked {
                    path: path.display().to_string(),
                }
            }
            other => StoreError::Sled(other),
        })?;
        let meta = db.open_tree(META_TREE)?;
        let audit = db.open_tree(AUDIT_TREE)?;
        Ok(Self {
            meta,
            audit,
            workloads: db.open_tree(WORKLOADS_TREE)?,
            allocations: db.open_tree(ALLOCATIONS_TREE)?,
            idempotency: db.open_tree(IDEMPOTENCY_TREE)?,
            names: db.open_tree(NAMES_TREE)?,
            leases: db.open_tree(LEASES_TREE)?,
            lapses: db.open_tree(LAPSES_TREE)?,
            audit_retained: AUDIT_RETAINED,
            db,
        })
    }

    /// Keeps about the last `records` audit records (default 100,000) instead; older ones are
    /// dropped in batches as new ones arrive.
    #[must_use]
    pub fn with_audit_retention(mut self, records: u64) -> Self {
        self.audit_retained = records.max(1);
        self
    }

    /// The next sequence number for a signed envelope, durably recorded before it is returned.
    ///
    /// Sequences strictly increase, and never fall below the current Unix time in microseconds,
    /// so that a node whose store was lost still signs newer sequences than peers remember.
    pub fn next_sequence(&self) -> Result<u64, StoreError> {
        let floor = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        let mut corrupt = false;
        let next = self.meta.update_and_fetch(SEQUENCE_KEY, |old| {
            let last = match old.map(<[u8; 8]>::try_from) {
                None => 0,
                Some(Ok(bytes)) => u64::from_be_bytes(bytes),
                Some(Err(_)) => {
                    corrupt = true;
                    0
                }
            };
            Some(last.saturating_add(1).max(floor).to_be_bytes().to_vec())
        })?;
        if corrupt {
            tracing::warn!("sequence counter was unreadable; restarted from the clock");
        }
        self.db.flush()?;
        let bytes: [u8; 8] = next
            .as_deref()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| StoreError::Corrupt("sequence counter missing after update".into()))?;
        Ok(u64::from_be_bytes(bytes))
    }

    /// Records the latest signed inventory envelope.
    pub fn put_latest_inventory(&self, envelope: &[u8]) -> Result<(), StoreError> {
        self.meta.insert(LATEST_INVENTORY_KEY, envelope)?;
        self.db.flush()?;
        Ok(())
    }

    /// Appends an invocation to the audit log, under an id that keeps increasing across restarts.
    pub fn append_audit(&self, record: &AuditRecord) -> Result<(), StoreError> {
        let id = self.db.generate_id()?;
        let value = serde_json::to_vec(record)
            .map_err(|e| StoreError::Corrupt(format!("audit record: {e}")))?;
        self.audit.insert(id.to_be_bytes(), value)?;
        // Ids only grow, so everything more than AUDIT_RETAINED ids old can go. Trimming in
        // batches keeps the append path cheap.
        if id.is_multiple_of(AUDIT_TRIM_EVERY) {
            let cutoff = id.saturating_sub(self.audit_retained).to_be_bytes();
            for key in self.audit.range(..cutoff).keys() {
                self.audit.remove(key?)?;
            }
        }
        Ok(())
    }

    /// The most recent `limit` audit records, newest first.
    pub fn recent_audit(&self, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        self.audit
            .iter()
            .rev()
            .take(limit)
            .map(|entry| {
                let (_, value) = entry?;
                serde_json::from_slice(&value)
                    .map_err(|e| StoreError::Corrupt(format!("audit record: {e}")))
            })
            .collect()
    }

    /// The latest signed inventory envelope, if one was recorded.
    pub fn latest_inventory(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.meta.get(LATEST_INVENTORY_KEY)?.map(|v| v.to_vec()))
    }

    /// Whether the node is cordoned (takes no new workloads), draining or not.
    pub fn cordoned(&self) -> Result<bool, StoreError> {
        Ok(self
            .meta
            .get(CORDONED_KEY)?
            .is_some_and(|v| v.as_ref() == [CORDONED] || v.as_ref() == [DRAINING]))
    }

    /// Whether the node is draining: cordoned, and stopping its workloads until none runs.
    pub fn draining(&self) -> Result<bool, StoreError> {
        Ok(self
            .meta
            .get(CORDONED_KEY)?
            .is_some_and(|v| v.as_ref() == [DRAINING]))
    }

    /// Cordons or uncordons the node (either ends a drain).
    pub fn set_cordoned(&self, cordoned: bool) -> Result<(), StoreError> {
        self.meta.insert(CORDONED_KEY, &[u8::from(cordoned)])?;
        self.db.flush()?;
        Ok(())
    }

    /// Cordons the node and records that its workloads are to be stopped, so that a drain
    /// interrupted by a Docker outage or a restart is finished later.
    pub fn set_draining(&self) -> Result<(), StoreError> {
        self.meta.insert(CORDONED_KEY, &[DRAINING])?;
        self.db.flush()?;
        Ok(())
    }

    /// The selling decision made at run time (`market.sell`), which overrides the config's
    /// price: `Some(Some(price))` sells at that price per GPU-hour, `Some(None)` sells nothing,
    /// and `None` (never decided) follows the config.
    pub fn selling(&self) -> Result<Option<Option<String>>, StoreError> {
        Ok(self.meta.get(SELLING_KEY)?.map(|value| {
            (value.as_ref() != NOT_SELLING).then(|| String::from_utf8_lossy(&value).into_owned())
        }))
    }

    /// Records the selling decision: a price per GPU-hour, or `None` to sell nothing.
    pub fn set_selling(&self, price: Option<&str>) -> Result<(), StoreError> {
        let value = price.map_or(NOT_SELLING, str::as_bytes);
        self.meta.insert(SELLING_KEY, value)?;
        self.db.flush()?;
        Ok(())
    }

    /// Labels set at run time with `node.label` (the config's labels are separate).
    pub fn labels(&self) -> Result<BTreeMap<String, String>, StoreError> {
        match self.meta.get(LABELS_KEY)? {
            None => Ok(BTreeMap::new()),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| StoreError::Corrupt(format!("labels: {e}"))),
        }
    }

    /// Replaces the run-time labels.
    pub fn set_labels(&self, labels: &BTreeMap<String, String>) -> Result<(), StoreError> {
        let bytes =
            serde_json::to_vec(labels).map_err(|e| StoreError::Corrupt(format!("labels: {e}")))?;
        self.meta.insert(LABELS_KEY, bytes)?;
        self.db.flush()?;
        Ok(())
    }

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
                let existing = decode_record(&existing)
                    .map_err(|e| ConflictableTransactionError::Abort(AdmitAbort::Store(e)))?;
                return Ok(Admitted::Existing(existing));
            }
            if let Some(name) = &record.name
                && let Some(holder) = names.get(name.as_bytes())?
                && let Some(holder) = workloads.get(&holder)?
                && decode_record(&holder)
                    .map_err(|e| ConflictableTransactionError::Abort(AdmitAbort::Store(e)))?
                    .state
                    .is_active()
            {
                return Err(ConflictableTransactionError::Abort(AdmitAbort::NameTaken(
                    name.clone(),
                )));
            }
            let reserved_for = match gpus {
                GpuChoice::Reserved(lease, _) => Some(lease_holder(lease)),
                _ => None,
            };
            let mut free = Vec::new();
            for uuid in inventory {
                match allocations.get(uuid.as_bytes())? {
                    None => free.push(uuid.clone()),
                    Some(holder) if reserved_for.as_deref().map(str::as_bytes) == Some(&holder) => {
                        free.push(uuid.clone())
                    }
                    Some(_) => {}
                }
            }
            let chosen = match gpus {
                GpuChoice::Count(n) if *n > free.len() => {
                    return Err(ConflictableTransactionError::Abort(AdmitAbort::Gpus(
                        format!("asked for {n} GPUs, {} free", free.len()),
                    )));
                }
                GpuChoice::Count(n) => free[..*n].to_vec(),
                GpuChoice::Exactly(uuids) | GpuChoice::Reserved(_, uuids) => {
                    if let Some(missing) = uuids.iter().find(|u| !inventory.contains(u)) {
                        return Err(ConflictableTransactionError::Abort(AdmitAbort::Gpus(
                            format!("{missing} is not a GPU of this node"),
                        )));
                    }
                    if let Some(taken) = uuids.iter().find(|u| !free.contains(u)) {
                        return Err(ConflictableTransactionError::Abort(AdmitAbort::Gpus(
                            format!("{taken} is allocated to another workload"),
                        )));
                    }
                    uuids.clone()
                }
            };
            let mut record = record.clone();
            record.gpus = chosen;
            for uuid in &record.gpus {
                allocations.insert(uuid.as_bytes(), record.id.as_bytes())?;
            }
            if let Some(index) = idempotency_index(&record) {
                idempotency.insert(index, record.id.as_bytes())?;
            }
            if let Some(name) = &record.name {
                names.insert(name.as_bytes(), record.id.as_bytes())?;
            }
            workloads.insert(record.id.as_bytes(), encode(&record))?;
            Ok(Admitted::New(record))
        });
        let admitted = self.admission(outcome, inventory)?;
        self.db.flush().map_err(StoreError::from)?;
        Ok(admitted)
    }

    /// The outcome of an admission transaction as the caller sees it: GPUs that were not free
    /// are reported with the UUIDs of `gpus` free now.
    fn admission<T>(
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

    /// Records a workload's new state. When the state is terminal its GPUs are released in the
    /// same transaction.
    pub fn update_workload(&self, record: &WorkloadRecord) -> Result<(), StoreError> {
        let trees = (&self.workloads, &self.allocations, &self.names);
        trees
            .transaction(|(workloads, allocations, names)| {
                if !record.state.is_active() {
                    if let Some(name) = &record.name
                        && names.get(name.as_bytes())?.as_deref() == Some(record.id.as_bytes())
                    {
                        names.remove(name.as_bytes())?;
                    }
                    for uuid in &record.gpus {
                        if allocations.get(uuid.as_bytes())?.as_deref()
                            == Some(record.id.as_bytes())
                        {
                            allocations.remove(uuid.as_bytes())?;
                        }
                    }
                }
                workloads.insert(record.id.as_bytes(), encode(record))?;
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })
            .map_err(|e| match e {
                TransactionError::Abort(error) => error,
                TransactionError::Storage(error) => StoreError::Sled(error),
            })?;
        self.db.flush()?;
        Ok(())
    }

    /// Records a workload found in Docker without a record (adopted after the store was lost),
    /// allocating the GPUs its container carries where they are free.
    pub fn adopt_workload(&self, record: &WorkloadRecord) -> Result<(), StoreError> {
        for uuid in &record.gpus {
            let _ = self.allocations.compare_and_swap(
                uuid.as_bytes(),
                None as Option<&[u8]>,
                Some(record.id.as_bytes()),
            )?;
        }
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
            .insert(record.id.as_bytes(), encode(record))?;
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

    /// GPU UUID → the workload holding it.
    pub fn allocations(&self) -> Result<BTreeMap<String, String>, StoreError> {
        self.allocations
            .iter()
            .map(|entry| {
                let (gpu, id) = entry?;
                Ok((
                    String::from_utf8_lossy(&gpu).into_owned(),
                    String::from_utf8_lossy(&id).into_owned(),
                ))
            })
            .collect()
    }

    /// Records a new lease and reserves `count` free GPUs from `candidates` for it, in one
    /// transaction: a crash leaves both or neither, and two leases never get the same GPU.
    /// Returns the record with its GPUs.
    pub fn reserve_for_lease(
        &self,
        record: &LeaseRecord,
        count: usize,
        candidates: &[String],
    ) -> Result<LeaseRecord, AdmitError> {
        let holder = lease_holder(record.lease_id.as_str());
        let outcome = (&self.allocations, &self.leases).transaction(|(allocations, leases)| {
            if let Some(existing) = leases.get(record.lease_id.as_str().as_bytes())? {
                return decode_lease(&existing)
                    .map_err(|e| ConflictableTransactionError::Abort(AdmitAbort::Store(e)));
            }
            let mut free = Vec::new();
            for uuid in candidates {
                if allocations.get(uuid.as_bytes())?.is_none() {
                    free.push(uuid.clone());
                }
            }
            if free.len() < count {
                return Err(ConflictableTransactionError::Abort(AdmitAbort::Gpus(
                    format!("asked for {count} GPUs, {} free", free.len()),
                )));
            }
            let mut record = record.clone();
            record.gpus = free[..count].to_vec();
            for uuid in &record.gpus {
                allocations.insert(uuid.as_bytes(), holder.as_bytes())?;
            }
            leases.insert(record.lease_id.as_str().as_bytes(), encode(&record))?;
            Ok(record)
        });
        let record = self.admission(outcome, candidates)?;
        self.db.flush().map_err(StoreError::from)?;
        Ok(record)
    }

    /// Records a lease's new state. When it no longer holds GPUs, those still reserved for it
    /// (not yet handed to its workload) are released in the same transaction.
    pub fn put_lease(&self, record: &LeaseRecord) -> Result<(), StoreError> {
        let holder = lease_holder(record.lease_id.as_str());
        (&self.allocations, &self.leases)
            .transaction(|(allocations, leases)| {
                if !record.state.holds_gpus() {
                    for uuid in &record.gpus {
                        if allocations.get(uuid.as_bytes())?.as_deref() == Some(holder.as_bytes()) {
                            allocations.remove(uuid.as_bytes())?;
                        }
                    }
                }
                leases.insert(record.lease_id.as_str().as_bytes(), encode(record))?;
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })
            .map_err(|e| match e {
                TransactionError::Abort(error) => error,
                TransactionError::Storage(error) => StoreError::Sled(error),
            })?;
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
        let holder = lease_holder(record.lease_id.as_str());
        (&self.allocations, &self.leases, &self.lapses)
            .transaction(|(allocations, leases, lapsed)| {
                for uuid in &record.gpus {
                    if allocations.get(uuid.as_bytes())?.as_deref() == Some(holder.as_bytes()) {
                        allocations.remove(uuid.as_bytes())?;
                    }
                }
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
                    lapsed.insert(key.as_bytes(), encode(&times))?;
                }
                let bid_key = format!("lease:{}", record.lease_id);
                lapsed.insert(bid_key.as_bytes(), encode(&bid_expires_ms))?;
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })
            .map_err(|e| match e {
                TransactionError::Abort(error) => error,
                TransactionError::Storage(error) => StoreError::Sled(error),
            })?;
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
        Ok(self.lapses.get(format!("lease:{id}").as_bytes())?.is_some())
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
                    .all(|t| t + 3_600_000 < now_ms)
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
mod tests {
    use super::*;

    /// Opens the store again after the last handle was dropped; sled's background flusher may
    /// hold the lock for a moment longer.
    fn reopen(path: &Path) -> Store {
        for _ in 0..100 {
            match Store::open(path) {
                Err(StoreError::Locked { .. }) => {
                    std::thread::sleep(std::time::Duration::from_millis(50))
                }
                other => return other.unwrap(),
            }
        }
        panic!("the store stayed locked");
    }

    #[test]
    fn sequences_increase_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let first = {
            let store = Store::open(dir.path()).unwrap();
            let a = store.next_sequence().unwrap();
            let b = store.next_sequence().unwrap();
            assert!(b > a);
            b
        };
        let store = reopen(dir.path());
        assert!(store.next_sequence().unwrap() > first);
    }

    #[test]
    fn a_drain_outlives_a_restart_and_uncordon_ends_it() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            assert!(!store.cordoned().unwrap());
            store.set_draining().unwrap();
        }
        let store = reopen(dir.path());
        assert!(store.cordoned().unwrap());
        assert!(store.draining().unwrap());
        store.set_cordoned(true).unwrap();
        assert!(store.cordoned().unwrap());
        assert!(!store.draining().unwrap());
        store.set_cordoned(false).unwrap();
        assert!(!store.cordoned().unwrap());
    }

    #[test]
    fn the_selling_decision_outlives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            assert_eq!(store.selling().unwrap(), None);
            store.set_selling(Some("0.95")).unwrap();
            assert_eq!(store.selling().unwrap(), Some(Some("0.95".to_owned())));
            store.set_selling(None).unwrap();
        }
        let store = reopen(dir.path());
        assert_eq!(store.selling().unwrap(), Some(None));
    }

    #[test]
    fn a_second_opener_is_told_the_store_is_locked() {
        let dir = tempfile::tempdir().unwrap();
        let _held = Store::open(dir.path()).unwrap();
        let err = Store::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    }

    #[test]
    fn audit_records_come_back_newest_first_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let record = |command: &str| AuditRecord {
            at_ms: 1,
            caller: "peer".into(),
            role: None,
            command: command.into(),
            params_sha256: "00".into(),
            outcome: "ok".into(),
            duration_ms: 0,
        };
        {
            let store = Store::open(dir.path()).unwrap();
            store.append_audit(&record("gpu.list")).unwrap();
            store.append_audit(&record("system.info")).unwrap();
            store.db.flush().unwrap();
        }
        let store = reopen(dir.path());
        store.append_audit(&record("node.capabilities")).unwrap();
        let commands: Vec<String> = store
            .recent_audit(10)
            .unwrap()
            .into_iter()
            .map(|r| r.command)
            .collect();
        assert_eq!(commands, ["node.capabilities", "system.info", "gpu.list"]);
        assert_eq!(store.recent_audit(1).unwrap().len(), 1);
    }

    #[test]
    fn old_audit_records_are_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap().with_audit_retention(100);
        let record = AuditRecord {
            at_ms: 1,
            caller: "peer".into(),
            role: None,
            command: "gpu.list".into(),
            params_sha256: "00".into(),
            outcome: "ok".into(),
            duration_ms: 0,
        };
        for _ in 0..3 * AUDIT_TRIM_EVERY {
            store.append_audit(&record).unwrap();
        }
        let kept = store.audit.len() as u64;
        assert!(
            (100..=100 + AUDIT_TRIM_EVERY).contains(&kept),
            "{kept} kept"
        );
    }

    #[test]
    fn latest_inventory_persists() {
        let dir = tempfile::tempdir().unwrap();
        Store::open(dir.path())
            .unwrap()
            .put_latest_inventory(b"envelope")
            .unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store.latest_inventory().unwrap().as_deref(),
            Some(&b"envelope"[..])
        );
    }

    fn pending(id: &str, key: Option<&str>) -> WorkloadRecord {
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
        }
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
        assert_eq!(allocations.get("GPU-a").map(String::as_str), Some("wl-z"));
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
