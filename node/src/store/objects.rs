//! Fleet objects as this member keeps them: the latest revision of each (its signed envelope
//! with the fields read from it) and a bounded history per object. The rules that decide whether
//! a signed object may be kept at all live in `crate::objects`; the store keeps the newest one it
//! is given and refuses to go back.

use claw_api::autoscale::ScaleRecord;
use claw_api::canary::CanaryRecord;
use claw_api::deploy::Fence;
use claw_api::jobs::RunLedger;

use crate::controller::KeptBid;
pub use claw_api::objects::ObjectKind;
use serde::{Deserialize, Serialize};
use sled::Transactional as _;

use super::{Store, StoreError, decode, encode_in, transaction_error};

/// Objects a member keeps at most by default (deleted ones count, so that a deletion is never
/// undone by an older revision arriving late).
pub const MAX_OBJECTS: usize = 4096;
/// Revisions kept per object.
pub const HISTORY_KEPT: usize = 16;
/// Failed revisions kept per deployment.
const FAILED_KEPT: usize = 16;
/// Bids kept per cron job.
const CRON_BIDS_KEPT: usize = 20;

/// One revision of a fleet object, as kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectRecord {
    /// What it is.
    pub kind: ObjectKind,
    /// Its name.
    pub name: String,
    /// Its revision, from 1.
    pub revision: u64,
    /// The spec as JSON text; absent for the revision that deleted the object.
    pub spec: Option<String>,
    /// The operator that signed it (peer id).
    pub signed_by: String,
    /// When it was signed, Unix ms.
    pub signed_at_ms: u64,
    /// Hex SHA-256 of the envelope: orders two different objects of one revision.
    pub digest: String,
    /// The signed envelope, base-64, as gossiped and synced.
    pub envelope: String,
}

impl ObjectRecord {
    /// This object's key.
    pub fn key(&self) -> String {
        self.kind.key(&self.name)
    }

    /// Whether this revision deleted the object.
    pub fn deleted(&self) -> bool {
        self.spec.is_none()
    }

    /// Whether this record supersedes `other`: a higher revision, or (two operators signed the
    /// same revision) the higher digest, so every member picks the same one.
    fn supersedes(&self, other: &ObjectRecord) -> bool {
        (self.revision, &self.digest) > (other.revision, &other.digest)
    }
}

/// What the store did with an object it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectPut {
    /// It is the object's newest revision now.
    Stored,
    /// It is not newer than what is kept (a late copy, or a replay): nothing changed.
    Stale {
        /// The revision kept.
        kept: u64,
    },
    /// A new object, and this member keeps as many as it may.
    Full,
}

fn history_key(key: &str, revision: u64) -> Vec<u8> {
    let mut bytes = history_prefix(key);
    bytes.extend_from_slice(&revision.to_be_bytes());
    bytes
}

fn history_prefix(key: &str) -> Vec<u8> {
    let mut bytes = key.as_bytes().to_vec();
    bytes.push(0);
    bytes
}

impl Store {
    /// Keeps `record` when it supersedes the object's kept revision (or the object is new and
    /// there is room), with its history; older revisions beyond [`HISTORY_KEPT`] are dropped.
    pub fn put_object(&self, record: &ObjectRecord) -> Result<ObjectPut, StoreError> {
        let key = record.key();
        if let Some(kept) = self.object(&key)? {
            if !record.supersedes(&kept) {
                return Ok(ObjectPut::Stale {
                    kept: kept.revision,
                });
            }
        } else if self.objects.len() >= self.max_objects {
            return Ok(ObjectPut::Full);
        }
        let revision_key = history_key(&key, record.revision);
        (&self.objects, &self.object_history)
            .transaction(|(objects, history)| {
                let value = encode_in::<_, StoreError>("fleet object", record)?;
                // Check again inside the transaction: a concurrent put may have won.
                if let Some(bytes) = objects.get(key.as_bytes())? {
                    let kept: ObjectRecord = decode("fleet object", &bytes)
                        .map_err(sled::transaction::ConflictableTransactionError::Abort)?;
                    if !record.supersedes(&kept) {
                        return Ok(ObjectPut::Stale {
                            kept: kept.revision,
                        });
                    }
                }
                objects.insert(key.as_bytes(), value.clone())?;
                history.insert(revision_key.clone(), value)?;
                Ok(ObjectPut::Stored)
            })
            .map_err(transaction_error)
            .and_then(|put| {
                if put == ObjectPut::Stored {
                    self.trim_history(&key)?;
                    self.db.flush()?;
                }
                Ok(put)
            })
    }

    fn trim_history(&self, key: &str) -> Result<(), StoreError> {
        let revisions: Vec<sled::IVec> = self
            .object_history
            .scan_prefix(history_prefix(key))
            .keys()
            .collect::<Result<_, _>>()?;
        for old in revisions.iter().rev().skip(HISTORY_KEPT) {
            self.object_history.remove(old)?;
        }
        Ok(())
    }

    /// The kept revision of the object under `key` (`<kind>/<name>`).
    pub fn object(&self, key: &str) -> Result<Option<ObjectRecord>, StoreError> {
        super::read_one(&self.objects, "fleet object", key)
    }

    /// The kept revisions of every live (not deleted) object of `kind`, by name.
    pub fn objects_of(&self, kind: ObjectKind) -> Result<Vec<ObjectRecord>, StoreError> {
        let prefix = format!("{}/", kind.as_str());
        self.objects
            .scan_prefix(prefix.as_bytes())
            .values()
            .map(|bytes| decode::<ObjectRecord>("fleet object", &bytes?))
            .filter(|record| !matches!(record, Ok(r) if r.deleted()))
            .collect()
    }

    /// The kept revisions of the object under `key`, newest first.
    pub fn object_history(&self, key: &str) -> Result<Vec<ObjectRecord>, StoreError> {
        self.object_history
            .scan_prefix(history_prefix(key))
            .values()
            .rev()
            .map(|bytes| decode("fleet object", &bytes?))
            .collect()
    }

    /// Up to `limit` kept objects (deleted ones included, so that a deletion reaches a member
    /// that was away) whose keys come after `after`, in key order, and whether more follow.
    pub fn objects_after(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<ObjectRecord>, bool), StoreError> {
        let range = match after {
            Some(after) => self.objects.range::<&[u8], _>((
                std::ops::Bound::Excluded(after.as_bytes()),
                std::ops::Bound::Unbounded,
            )),
            None => self.objects.iter(),
        };
        let mut page = Vec::new();
        for entry in range {
            let (_, bytes) = entry?;
            if page.len() == limit {
                return Ok((page, true));
            }
            page.push(decode("fleet object", &bytes)?);
        }
        Ok((page, false))
    }
}

impl Store {
    /// Admits a controller's claim on deployment `name`: kept when it is at least the highest
    /// claim seen (and then it is the highest); otherwise that highest claim is returned and
    /// nothing changes.
    pub fn admit_fence(&self, name: &str, claim: &Fence) -> Result<Result<(), Fence>, StoreError> {
        let mut outcome = Ok(());
        let mut failed = None;
        self.fences.update_and_fetch(name.as_bytes(), |old| {
            let kept: Option<Fence> = match old.map(|bytes| decode("controller fence", bytes)) {
                Some(Ok(kept)) => Some(kept),
                Some(Err(error)) => {
                    failed = Some(error);
                    return old.map(<[u8]>::to_vec);
                }
                None => None,
            };
            match kept {
                Some(kept) if kept > *claim => {
                    outcome = Err(kept);
                    old.map(<[u8]>::to_vec)
                }
                _ => serde_json::to_vec(claim).ok(),
            }
        })?;
        if let Some(error) = failed {
            return Err(error);
        }
        self.db.flush()?;
        Ok(outcome)
    }

    /// Adds `revisions` to those found failing their health checks for deployment `name` (the
    /// newest 16 are kept), and returns them all, oldest first.
    pub fn add_failed_revisions(
        &self,
        name: &str,
        revisions: &[u64],
    ) -> Result<Vec<u64>, StoreError> {
        let mut kept = self.failed_revisions(name)?;
        kept.extend_from_slice(revisions);
        kept.sort_unstable();
        kept.dedup();
        let excess = kept.len().saturating_sub(FAILED_KEPT);
        kept.drain(..excess);
        if !revisions.is_empty() {
            let value = super::encode("failed revisions", &kept)?;
            self.failed.insert(name.as_bytes(), value)?;
            self.db.flush()?;
        }
        Ok(kept)
    }

    /// The revisions of deployment `name` found failing their health checks, oldest first.
    pub fn failed_revisions(&self, name: &str) -> Result<Vec<u64>, StoreError> {
        Ok(super::read_one(&self.failed, "failed revisions", name)?.unwrap_or_default())
    }

    /// The highest controller claim seen for deployment `name`.
    pub fn fence(&self, name: &str) -> Result<Option<Fence>, StoreError> {
        super::read_one(&self.fences, "controller fence", name)
    }

    /// Keeps `ledger` as the run ledger of `owner` (`<kind>/<name>`) when it is newer than the
    /// one kept; returns the ledger kept now.
    pub fn put_ledger(&self, owner: &str, ledger: &RunLedger) -> Result<RunLedger, StoreError> {
        let kept = self.ledger(owner)?;
        if let Some(kept) = kept
            && !ledger.is_newer_than(&kept)
        {
            return Ok(kept);
        }
        self.ledgers
            .insert(owner.as_bytes(), super::encode("run ledger", ledger)?)?;
        self.db.flush()?;
        Ok(ledger.clone())
    }

    /// The run ledger kept for `owner`.
    pub fn ledger(&self, owner: &str) -> Result<Option<RunLedger>, StoreError> {
        super::read_one(&self.ledgers, "run ledger", owner)
    }

    /// Keeps `record` as deployment `name`'s scale record when it is newer than the one kept;
    /// returns the record kept now.
    pub fn put_scale(&self, name: &str, record: &ScaleRecord) -> Result<ScaleRecord, StoreError> {
        if let Some(kept) = self.scale(name)?
            && !record.is_newer_than(&kept)
        {
            return Ok(kept);
        }
        self.scales
            .insert(name.as_bytes(), super::encode("scale record", record)?)?;
        self.db.flush()?;
        Ok(record.clone())
    }

    /// The bid kept under `key` (`cron/<name>#<run>`).
    pub fn cron_bid(&self, key: &str) -> Result<Option<KeptBid>, StoreError> {
        super::read_one(&self.cron_bids, "cron bid", key)
    }

    /// Keeps `bid` under `key`, and only the newest 20 of cron job `owner`'s bids.
    pub fn put_cron_bid(&self, owner: &str, key: &str, bid: &KeptBid) -> Result<(), StoreError> {
        self.cron_bids
            .insert(key.as_bytes(), super::encode("cron bid", bid)?)?;
        let prefix = format!("{owner}#");
        let mut kept: Vec<(u64, sled::IVec)> = Vec::new();
        for entry in self.cron_bids.scan_prefix(prefix.as_bytes()) {
            let (key, value) = entry?;
            let bid: KeptBid = decode("cron bid", &value)?;
            kept.push((bid.at_ms, key));
        }
        kept.sort();
        let excess = kept.len().saturating_sub(CRON_BIDS_KEPT);
        for (_, key) in kept.into_iter().take(excess) {
            self.cron_bids.remove(key)?;
        }
        self.db.flush()?;
        Ok(())
    }

    /// Deployment `name`'s scale record.
    pub fn scale(&self, name: &str) -> Result<Option<ScaleRecord>, StoreError> {
        super::read_one(&self.scales, "scale record", name)
    }

    /// Keeps `record` as deployment `name`'s canary record when it is newer than the one kept;
    /// returns the record kept now.
    pub fn put_canary(
        &self,
        name: &str,
        record: &CanaryRecord,
    ) -> Result<CanaryRecord, StoreError> {
        if let Some(kept) = self.canary(name)?
            && !record.is_newer_than(&kept)
        {
            return Ok(kept);
        }
        self.canaries
            .insert(name.as_bytes(), super::encode("canary record", record)?)?;
        self.db.flush()?;
        Ok(record.clone())
    }

    /// Deployment `name`'s canary record.
    pub fn canary(&self, name: &str) -> Result<Option<CanaryRecord>, StoreError> {
        super::read_one(&self.canaries, "canary record", name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, revision: u64, digest: &str) -> ObjectRecord {
        ObjectRecord {
            kind: ObjectKind::Deployment,
            name: name.to_owned(),
            revision,
            spec: Some(format!("{{\"rev\":{revision}}}")),
            signed_by: "operator".to_owned(),
            signed_at_ms: revision,
            digest: digest.to_owned(),
            envelope: String::new(),
        }
    }

    fn store() -> (tempfile::TempDir, Store) {
        let temp = tempfile::tempdir().unwrap();
        let store = Store::open(&temp.path().join("db")).unwrap();
        (temp, store)
    }

    #[test]
    fn the_newest_revision_wins_and_nothing_goes_back() {
        let (_temp, store) = store();
        assert_eq!(
            store.put_object(&record("web", 2, "aa")).unwrap(),
            ObjectPut::Stored
        );
        assert_eq!(
            store.put_object(&record("web", 1, "ff")).unwrap(),
            ObjectPut::Stale { kept: 2 }
        );
        assert_eq!(
            store.put_object(&record("web", 2, "aa")).unwrap(),
            ObjectPut::Stale { kept: 2 },
            "the same object again changes nothing"
        );
        // Two operators signed revision 2: the higher digest wins, wherever it arrives first.
        assert_eq!(
            store.put_object(&record("web", 2, "bb")).unwrap(),
            ObjectPut::Stored
        );
        assert_eq!(
            store.put_object(&record("web", 2, "ab")).unwrap(),
            ObjectPut::Stale { kept: 2 }
        );
        assert_eq!(
            store.object("deployment/web").unwrap().unwrap().digest,
            "bb"
        );
        let mut deleted = record("web", 3, "00");
        deleted.spec = None;
        store.put_object(&deleted).unwrap();
        assert!(store.objects_of(ObjectKind::Deployment).unwrap().is_empty());
        let (page, more) = store.objects_after(None, 10).unwrap();
        assert_eq!((page.len(), more), (1, false), "deletions are still synced");
    }

    #[test]
    fn a_fence_only_rises() {
        let (_temp, store) = store();
        let claim = |epoch, controller: &str| Fence {
            epoch,
            controller: controller.to_owned(),
        };
        assert_eq!(store.fence("web").unwrap(), None);
        assert_eq!(store.admit_fence("web", &claim(2, "b")).unwrap(), Ok(()));
        assert_eq!(store.admit_fence("web", &claim(2, "b")).unwrap(), Ok(()));
        assert_eq!(
            store.admit_fence("web", &claim(1, "z")).unwrap(),
            Err(claim(2, "b")),
            "a lower epoch is refused"
        );
        assert_eq!(
            store.admit_fence("web", &claim(2, "a")).unwrap(),
            Err(claim(2, "b")),
            "the same epoch by a lower peer is refused"
        );
        assert_eq!(store.admit_fence("web", &claim(3, "a")).unwrap(), Ok(()));
        assert_eq!(store.fence("web").unwrap(), Some(claim(3, "a")));
        assert_eq!(store.fence("api").unwrap(), None);

        assert!(store.failed_revisions("web").unwrap().is_empty());
        assert_eq!(store.add_failed_revisions("web", &[3, 2]).unwrap(), [2, 3]);
        let many: Vec<u64> = (10..40).collect();
        let kept = store.add_failed_revisions("web", &many).unwrap();
        assert_eq!(
            (kept.len(), kept[0], kept[15]),
            (16, 24, 39),
            "the newest are kept"
        );
        assert_eq!(store.failed_revisions("web").unwrap(), kept);
    }

    #[test]
    fn ledgers_scales_and_cron_bids_keep_the_newest_and_stay_bounded() {
        let (_temp, store) = store();
        let fence = |epoch| {
            Some(Fence {
                epoch,
                controller: "c".to_owned(),
            })
        };
        let ledger = |epoch, version| RunLedger {
            fence: fence(epoch),
            version,
            ..RunLedger::default()
        };
        assert_eq!(
            store.put_ledger("job/a", &ledger(2, 5)).unwrap(),
            ledger(2, 5)
        );
        assert_eq!(
            store.put_ledger("job/a", &ledger(1, 9)).unwrap(),
            ledger(2, 5),
            "an older claim changes nothing"
        );
        assert_eq!(
            store.put_ledger("job/a", &ledger(3, 0)).unwrap(),
            ledger(3, 0)
        );
        assert_eq!(store.ledger("job/a").unwrap(), Some(ledger(3, 0)));

        let scale = |version, replicas| ScaleRecord {
            fence: fence(1),
            version,
            replicas,
            ..ScaleRecord::default()
        };
        store.put_scale("web", &scale(2, 3)).unwrap();
        assert_eq!(store.put_scale("web", &scale(1, 9)).unwrap(), scale(2, 3));
        assert_eq!(store.scale("web").unwrap(), Some(scale(2, 3)));

        for at_ms in 0..25 {
            let bid = KeptBid {
                at_ms,
                outcome: None,
                error: Some(format!("bid {at_ms}")),
            };
            store
                .put_cron_bid("cron/n", &format!("cron/n#s{at_ms}"), &bid)
                .unwrap();
        }
        assert!(
            store.cron_bid("cron/n#s4").unwrap().is_none(),
            "the oldest go"
        );
        let kept = store
            .cron_bid("cron/n#s24")
            .unwrap()
            .expect("the newest stay");
        assert_eq!(kept.error.as_deref(), Some("bid 24"));
        assert_eq!(store.cron_bids.scan_prefix(b"cron/n#").count(), 20);
    }

    #[test]
    fn history_is_bounded_and_newest_first() {
        let (_temp, store) = store();
        for revision in 1..=(HISTORY_KEPT as u64 + 5) {
            store.put_object(&record("web", revision, "aa")).unwrap();
        }
        let history = store.object_history("deployment/web").unwrap();
        assert_eq!(history.len(), HISTORY_KEPT);
        assert_eq!(history[0].revision, HISTORY_KEPT as u64 + 5);
        assert_eq!(history.last().unwrap().revision, 6);
        assert!(store.object_history("deployment/we").unwrap().is_empty());
    }

    #[test]
    fn pages_follow_key_order_and_the_store_refuses_new_objects_when_full() {
        let (_temp, store) = store();
        for name in ["c", "a", "b"] {
            store.put_object(&record(name, 1, "aa")).unwrap();
        }
        let (first, more) = store.objects_after(None, 2).unwrap();
        let names: Vec<&str> = first.iter().map(|r| r.name.as_str()).collect();
        assert_eq!((names, more), (vec!["a", "b"], true));
        let (rest, more) = store.objects_after(Some("deployment/b"), 2).unwrap();
        assert_eq!((rest.len(), rest[0].name.as_str(), more), (1, "c", false));

        let store = store.with_max_objects(5);
        for name in ["d", "e"] {
            store.put_object(&record(name, 1, "aa")).unwrap();
        }
        assert_eq!(
            store.put_object(&record("one-more", 1, "aa")).unwrap(),
            ObjectPut::Full
        );
        assert_eq!(
            store.put_object(&record("a", 2, "aa")).unwrap(),
            ObjectPut::Stored,
            "a kept object still takes new revisions"
        );
    }
}
