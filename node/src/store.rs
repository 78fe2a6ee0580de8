//! The node's durable state, in sled: the envelope sequence counter and the latest signed
//! inventory. Later parts of the node (workloads, leases, audit log) add their own trees here.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

const META_TREE: &str = "meta";
const AUDIT_TREE: &str = "audit";
const SEQUENCE_KEY: &[u8] = b"envelope-sequence";
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

/// One command invocation, as the audit log keeps it. Params are kept only as a digest, so the
/// log never holds secrets a caller passed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    /// When the command finished, Unix ms.
    pub at_ms: u64,
    /// The caller's peer id (this node's own id for the local control API).
    pub caller: String,
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
        Ok(Self { meta, audit, db })
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let store = Store::open(dir.path()).unwrap();
        assert!(store.next_sequence().unwrap() > first);
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
        let store = Store::open(dir.path()).unwrap();
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
}
