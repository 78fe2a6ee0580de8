//! The backups a node keeps: each one's signed manifest and who may read its archive. The
//! archives themselves are files under the data directory (`backups/<id>.tar`).

use serde::{Deserialize, Serialize};

use super::{Store, StoreError, decode, encode, read_one};

/// A backup this node keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupRecord {
    /// The signed manifest's envelope, base-64.
    pub envelope: String,
    /// Its id (the manifest's).
    pub id: String,
    /// The node that made it.
    pub source: String,
    /// The member it was copied to, which may read it with `backup.read`.
    #[serde(default)]
    pub copied_to: Option<String>,
    /// When it was kept here, Unix ms.
    pub kept_ms: u64,
}

impl Store {
    /// Keeps (or replaces) backup `record`.
    pub fn put_backup(&self, record: &BackupRecord) -> Result<(), StoreError> {
        self.backups
            .insert(record.id.as_bytes(), encode("backup", record)?)?;
        self.db.flush()?;
        Ok(())
    }

    /// Backup `id`.
    pub fn backup(&self, id: &str) -> Result<Option<BackupRecord>, StoreError> {
        read_one(&self.backups, "backup", id)
    }

    /// Every backup kept, oldest first.
    pub fn backups(&self) -> Result<Vec<BackupRecord>, StoreError> {
        let mut all = self
            .backups
            .iter()
            .map(|entry| {
                let (_, value) = entry?;
                decode::<BackupRecord>("backup", &value)
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        all.sort_by_key(|b| b.kept_ms);
        Ok(all)
    }

    /// Forgets backup `id`.
    pub fn remove_backup(&self, id: &str) -> Result<(), StoreError> {
        self.backups.remove(id.as_bytes())?;
        self.db.flush()?;
        Ok(())
    }
}
