//! The node's durable state, in sled: the envelope sequence counter, the latest signed
//! inventory, the audit log and the node's own operator state (labels, cordon, selling) here;
//! workloads (`store/workloads.rs`), market leases and lapses (`store/leases.rs`), and the GPU
//! ledger (`store/ledger.rs`) that both draw on, in their own modules.
//!
//! A record and the GPUs it takes or frees are written in one transaction, so a crash at any
//! point leaves either both or neither; every write is flushed before the caller is answered.
//! Async code reaches the store through one facade, [`Store::run`], which runs the work off the
//! async threads.

mod backups;
mod leases;
mod ledger;
mod objects;
mod trades;
mod workloads;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

pub use backups::BackupRecord;
pub use ledger::Holder;
pub use objects::{HISTORY_KEPT, MAX_OBJECTS, ObjectKind, ObjectPut, ObjectRecord};
pub use trades::{KeptTrade, MAX_TRADES};
pub use workloads::{AdmitError, Admitted, GpuChoice, WorkloadRecord};

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
/// Fleet objects' latest revisions, by `<kind>/<name>`.
const OBJECTS_TREE: &str = "fleet-objects";
/// Fleet objects' kept revisions, by `<kind>/<name>\0<revision>`.
const OBJECT_HISTORY_TREE: &str = "fleet-object-history";
/// The highest controller claim seen per deployment.
const FENCES_TREE: &str = "deployment-fences";
/// Per deployment, the revisions found failing their health checks.
const FAILED_TREE: &str = "deployment-failed-revisions";
/// Per job and cron job (`<kind>/<name>`), the run ledger its controller keeps here.
const LEDGERS_TREE: &str = "run-ledgers";
/// Per autoscaled deployment, the scale record its controller keeps here.
const SCALES_TREE: &str = "deployment-scales";
/// Per canary deployment that names a service, the canary record its controller keeps here.
const CANARIES_TREE: &str = "deployment-canaries";
/// The bids cron jobs placed here, by `cron/<name>#<run>`.
const CRON_BIDS_TREE: &str = "cron-bids";
/// Backup id → the backup's signed manifest and who may read it.
const BACKUPS_TREE: &str = "backups";
/// The price history: settlement time and lease → the kept trade.
const TRADES_TREE: &str = "trades";
/// Lease → its key in the price history.
const TRADE_LEASES_TREE: &str = "trade-leases";
const SEQUENCE_KEY: &[u8] = b"envelope-sequence";
const CORDONED_KEY: &[u8] = b"cordoned";
/// `CORDONED_KEY`'s value when the node is cordoned.
const CORDONED: u8 = 1;
/// `CORDONED_KEY`'s value when the node is cordoned and stopping its workloads.
const DRAINING: u8 = 2;
const LABELS_KEY: &[u8] = b"labels";
/// The node's taints (JSON), set with `node.taint`.
const TAINTS_KEY: &[u8] = b"taints";
/// When the current drain began (Unix ms, big-endian).
const DRAINING_SINCE_KEY: &[u8] = b"draining-since";
/// The selling decision made at run time with `market.sell`.
const SELLING_KEY: &[u8] = b"market-selling";
/// The daily window the node sells in (JSON), when `market.sell` gave one.
const SELLING_WINDOW_KEY: &[u8] = b"market-selling-window";
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
    /// A record could not be encoded; nothing was written.
    #[error("cannot encode the {what}: {reason}")]
    Encode {
        /// Which record.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The thread running store work failed.
    #[error("store task failed: {0}")]
    Task(String),
}

/// A store failure as a command answers it: an internal error.
impl From<StoreError> for claw_api::InvokeFailure {
    fn from(error: StoreError) -> Self {
        Self::new(claw_api::ErrorCode::Internal, error.to_string())
    }
}

/// A stored JSON record (`what` names it in the error when it does not decode).
fn decode<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

/// A record as stored (`what` names it in the error when it cannot be encoded).
fn encode<T: serde::Serialize>(what: &'static str, record: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(record).map_err(|e| StoreError::Encode {
        what,
        reason: e.to_string(),
    })
}

/// [`encode`] inside a transaction: a record that cannot be encoded aborts it.
fn encode_in<T: serde::Serialize, E: From<StoreError>>(
    what: &'static str,
    record: &T,
) -> Result<Vec<u8>, sled::transaction::ConflictableTransactionError<E>> {
    encode(what, record)
        .map_err(|e| sled::transaction::ConflictableTransactionError::Abort(e.into()))
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

/// The error of a transaction whose aborts are store errors.
fn transaction_error(error: sled::transaction::TransactionError<StoreError>) -> StoreError {
    match error {
        sled::transaction::TransactionError::Abort(error) => error,
        sled::transaction::TransactionError::Storage(error) => StoreError::Sled(error),
    }
}

/// One command invocation, as the audit log keeps it (`audit.query` answers it as stored).
/// Params are kept only as a digest, so the log never holds secrets a caller passed.
pub use claw_api::audit::AuditEntry as AuditRecord;

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
    objects: sled::Tree,
    object_history: sled::Tree,
    fences: sled::Tree,
    failed: sled::Tree,
    ledgers: sled::Tree,
    scales: sled::Tree,
    canaries: sled::Tree,
    cron_bids: sled::Tree,
    backups: sled::Tree,
    trades: sled::Tree,
    trade_leases: sled::Tree,
    audit_retained: u64,
    max_objects: usize,
    max_trades: usize,
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
            objects: db.open_tree(OBJECTS_TREE)?,
            object_history: db.open_tree(OBJECT_HISTORY_TREE)?,
            fences: db.open_tree(FENCES_TREE)?,
            failed: db.open_tree(FAILED_TREE)?,
            ledgers: db.open_tree(LEDGERS_TREE)?,
            scales: db.open_tree(SCALES_TREE)?,
            canaries: db.open_tree(CANARIES_TREE)?,
            cron_bids: db.open_tree(CRON_BIDS_TREE)?,
            backups: db.open_tree(BACKUPS_TREE)?,
            trades: db.open_tree(TRADES_TREE)?,
            trade_leases: db.open_tree(TRADE_LEASES_TREE)?,
            audit_retained: AUDIT_RETAINED,
            max_objects: MAX_OBJECTS,
            max_trades: MAX_TRADES,
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

    /// Keeps at most `objects` fleet objects instead of [`MAX_OBJECTS`].
    #[must_use]
    pub fn with_max_objects(mut self, objects: usize) -> Self {
        self.max_objects = objects;
        self
    }

    /// Keeps at most `trades` trades in the price history instead of [`MAX_TRADES`].
    #[must_use]
    pub fn with_max_trades(mut self, trades: usize) -> Self {
        self.max_trades = trades;
        self
    }

    /// Runs `work` against the store on the blocking pool: sled reads may touch the disk and
    /// every write is flushed. The one way async code reaches the store.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || work(&store))
            .await
            .map_err(|error| StoreError::Task(error.to_string()))?
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
        let value = encode("audit record", record)?;
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
                decode("audit record", &value)
            })
            .collect()
    }

    /// The newest `limit` audit records `keep` accepts, newest first.
    pub fn query_audit(
        &self,
        limit: usize,
        keep: impl Fn(&AuditRecord) -> bool,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let mut found = Vec::new();
        for entry in self.audit.iter().rev() {
            let (_, value) = entry?;
            let record: AuditRecord = decode("audit record", &value)?;
            if keep(&record) {
                found.push(record);
                if found.len() == limit {
                    break;
                }
            }
        }
        Ok(found)
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
        if !self.draining()? {
            self.meta
                .insert(DRAINING_SINCE_KEY, &crate::now_ms().to_be_bytes())?;
        }
        self.meta.insert(CORDONED_KEY, &[DRAINING])?;
        self.db.flush()?;
        Ok(())
    }

    /// When the current drain began, Unix ms (`None` when the node is not draining).
    pub fn draining_since(&self) -> Result<Option<u64>, StoreError> {
        if !self.draining()? {
            return Ok(None);
        }
        Ok(self
            .meta
            .get(DRAINING_SINCE_KEY)?
            .and_then(|bytes| <[u8; 8]>::try_from(bytes.as_ref()).ok())
            .map(u64::from_be_bytes))
    }

    /// The selling decision made at run time (`market.sell`), which overrides the config's
    /// price: `Some(Some(price))` sells at that price per GPU-hour, `Some(None)` sells nothing,
    /// and `None` (never decided) follows the config.
    pub fn selling(&self) -> Result<Option<Option<String>>, StoreError> {
        Ok(self.meta.get(SELLING_KEY)?.map(|value| {
            (value.as_ref() != NOT_SELLING).then(|| String::from_utf8_lossy(&value).into_owned())
        }))
    }

    /// Records the selling decision: a price per GPU-hour and the daily window to sell in
    /// (at any time when `None`), or `None` to sell nothing.
    pub fn set_selling(
        &self,
        price: Option<&str>,
        window: Option<&claw_api::market::SellWindow>,
    ) -> Result<(), StoreError> {
        let value = price.map_or(NOT_SELLING, str::as_bytes);
        let window = window.map(|w| encode("selling window", w)).transpose()?;
        self.meta
            .transaction(|meta| {
                meta.insert(SELLING_KEY, value)?;
                match &window {
                    Some(bytes) => meta.insert(SELLING_WINDOW_KEY, bytes.as_slice())?,
                    None => meta.remove(SELLING_WINDOW_KEY)?,
                };
                Ok::<_, sled::transaction::ConflictableTransactionError<StoreError>>(())
            })
            .map_err(transaction_error)?;
        self.db.flush()?;
        Ok(())
    }

    /// The daily window the node sells in, when `market.sell` gave one.
    pub fn selling_window(&self) -> Result<Option<claw_api::market::SellWindow>, StoreError> {
        self.meta
            .get(SELLING_WINDOW_KEY)?
            .map(|bytes| decode("selling window", &bytes))
            .transpose()
    }

    /// Labels set at run time with `node.label` (the config's labels are separate).
    pub fn labels(&self) -> Result<BTreeMap<String, String>, StoreError> {
        match self.meta.get(LABELS_KEY)? {
            None => Ok(BTreeMap::new()),
            Some(bytes) => decode("labels", &bytes),
        }
    }

    /// Replaces the run-time labels.
    pub fn set_labels(&self, labels: &BTreeMap<String, String>) -> Result<(), StoreError> {
        let bytes = encode("labels", labels)?;
        self.meta.insert(LABELS_KEY, bytes)?;
        self.db.flush()?;
        Ok(())
    }

    /// The node's taints.
    pub fn taints(&self) -> Result<Vec<claw_api::taints::Taint>, StoreError> {
        match self.meta.get(TAINTS_KEY)? {
            None => Ok(Vec::new()),
            Some(bytes) => decode("taints", &bytes),
        }
    }

    /// Replaces the node's taints.
    pub fn set_taints(&self, taints: &[claw_api::taints::Taint]) -> Result<(), StoreError> {
        let bytes = encode("taints", &taints)?;
        self.meta.insert(TAINTS_KEY, bytes)?;
        self.db.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opens the store again after the last handle was dropped; sled's background flusher may
    /// hold the lock for a moment longer.
    pub(in crate::store) fn reopen(path: &Path) -> Store {
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

    /// A record whose encoding fails, as one holding a map with non-text keys would.
    struct Unencodable;

    impl serde::Serialize for Unencodable {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("no JSON form"))
        }
    }

    #[test]
    fn a_record_that_cannot_be_encoded_is_an_error_and_aborts_its_transaction() {
        let error = encode("test record", &Unencodable).unwrap_err();
        assert!(
            matches!(
                error,
                StoreError::Encode {
                    what: "test record",
                    ..
                }
            ),
            "{error}"
        );
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let outcome = store.meta.transaction(|meta| {
            meta.insert(b"before".as_slice(), b"1".as_slice())?;
            let bytes = encode_in::<_, StoreError>("test record", &Unencodable)?;
            meta.insert(b"record".as_slice(), bytes)?;
            Ok(())
        });
        assert!(matches!(
            transaction_error(outcome.unwrap_err()),
            StoreError::Encode { .. }
        ));
        assert!(
            store.meta.get(b"before").unwrap().is_none(),
            "nothing was written"
        );
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
            assert!(store.draining_since().unwrap().is_some());
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
            store.set_selling(Some("0.95"), None).unwrap();
            assert_eq!(store.selling().unwrap(), Some(Some("0.95".to_owned())));
            store.set_selling(None, None).unwrap();
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
            api_key: None,
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
            api_key: None,
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
        let store = reopen(dir.path());
        assert_eq!(
            store.latest_inventory().unwrap().as_deref(),
            Some(&b"envelope"[..])
        );
    }
}
