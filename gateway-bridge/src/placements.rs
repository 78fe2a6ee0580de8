//! Where the bridge placed each deploy, by the caller's idempotency key.
//!
//! A deploy picks its node by score, and the scores change once the first attempt has taken its
//! GPUs: an agent retrying after a bridge restart would land on another node and start a second
//! workload. So the choice is written here (in the bridge's data directory) before the node is
//! called, and a retry with the same key goes back to the same node, which answers with the
//! workload that key started. Entries live a day and there are at most [`MAX_PLACEMENTS`].

use std::path::Path;
use std::time::{Duration, SystemTime};

use claw_api::fleet::PlacementScore;
use serde::{Deserialize, Serialize};

/// Most placements remembered; past it the oldest go first.
pub const MAX_PLACEMENTS: usize = 10_000;
/// How long a placement is remembered.
pub const PLACEMENT_TTL: Duration = Duration::from_secs(24 * 3600);

/// Why the placement record could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    /// The database failed.
    #[error("placement record: {0}")]
    Store(#[from] sled::Error),
    /// A record does not decode (or encode).
    #[error("placement record is unreadable: {0}")]
    Corrupt(#[from] serde_json::Error),
    /// The blocking task failed.
    #[error("placement record task failed: {0}")]
    Task(String),
}

/// One deploy's node, with the reasons the answer gave.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    /// The node's peer id.
    pub peer_id: String,
    /// Its score and readings when chosen.
    pub why: PlacementScore,
    /// Every candidate's, best first.
    pub considered: Vec<PlacementScore>,
    /// When it was chosen, Unix milliseconds.
    pub at_ms: u64,
}

/// The placement record. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Placements {
    tree: sled::Tree,
    max: usize,
}

fn now_ms() -> u64 {
    claw_attestation::unix_millis(SystemTime::now())
}

impl Placements {
    /// Opens (or creates) the record under `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, PlacementError> {
        let db = sled::open(data_dir.join("placements"))?;
        Ok(Self {
            tree: db.open_tree("placements")?,
            max: MAX_PLACEMENTS,
        })
    }

    /// A record that lives in memory only (benches, tests).
    pub fn in_memory() -> Result<Self, PlacementError> {
        let db = sled::Config::new().temporary(true).open()?;
        Ok(Self {
            tree: db.open_tree("placements")?,
            max: MAX_PLACEMENTS,
        })
    }

    /// The live placement of `key`, if there is one.
    pub async fn get(&self, key: &str) -> Result<Option<Placement>, PlacementError> {
        let tree = self.tree.clone();
        let key = key.to_owned();
        blocking(move || {
            let Some(bytes) = tree.get(key.as_bytes())? else {
                return Ok(None);
            };
            let placement: Placement = serde_json::from_slice(&bytes)?;
            let age = Duration::from_millis(now_ms().saturating_sub(placement.at_ms));
            Ok((age < PLACEMENT_TTL).then_some(placement))
        })
        .await
    }

    /// Records `placement` for `key`, durably, before the node is called.
    pub async fn record(&self, key: &str, placement: &Placement) -> Result<(), PlacementError> {
        let tree = self.tree.clone();
        let key = key.to_owned();
        let bytes = serde_json::to_vec(placement)?;
        let max = self.max;
        blocking(move || {
            tree.insert(key.as_bytes(), bytes)?;
            if tree.len() > max {
                prune(&tree, max)?;
            }
            tree.flush()?;
            Ok(())
        })
        .await
    }
}

/// Drops expired placements, then the oldest until at most `max` remain.
fn prune(tree: &sled::Tree, max: usize) -> Result<(), PlacementError> {
    let now = now_ms();
    let mut live = Vec::new();
    for entry in tree.iter() {
        let (key, bytes) = entry?;
        match serde_json::from_slice::<Placement>(&bytes) {
            Ok(p) if Duration::from_millis(now.saturating_sub(p.at_ms)) < PLACEMENT_TTL => {
                live.push((p.at_ms, key));
            }
            _ => {
                tree.remove(key)?;
            }
        }
    }
    live.sort_unstable_by_key(|(at, _)| *at);
    let excess = live.len().saturating_sub(max);
    for (_, key) in live.into_iter().take(excess) {
        tree.remove(key)?;
    }
    Ok(())
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, PlacementError> + Send + 'static,
) -> Result<T, PlacementError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| PlacementError::Task(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opens the record again after the last handle was dropped; sled's background flusher may
    /// hold the database's lock for a moment longer.
    fn reopen(data_dir: &Path) -> Placements {
        for _ in 0..100 {
            match Placements::open(data_dir) {
                Err(PlacementError::Store(sled::Error::Io(error)))
                    if error.to_string().contains("could not acquire lock") =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                other => return other.unwrap(),
            }
        }
        panic!("the placement record stayed locked");
    }

    fn placement(peer: &str, at_ms: u64) -> Placement {
        let why = PlacementScore {
            node: "n1".to_owned(),
            peer_id: peer.to_owned(),
            score: 90.0,
            free_gpus: 2,
            free_share: 1.0,
            idle_share: 1.0,
            cool_share: 0.5,
            health: claw_api::node::HealthStatus::Healthy,
        };
        Placement {
            peer_id: peer.to_owned(),
            why: why.clone(),
            considered: vec![why],
            at_ms,
        }
    }

    /// Records kept before the scores were typed hold the same JSON, so they still read.
    #[tokio::test]
    async fn a_record_written_as_plain_json_reads() {
        let placements = Placements::in_memory().unwrap();
        let why = serde_json::json!({
            "node": "n1", "peer_id": "peer-a", "score": 77.5, "free_gpus": 1, "free_share": 1.0,
            "idle_share": 0.5, "cool_share": 0.5, "health": "degraded",
        });
        let record = serde_json::json!({
            "peer_id": "peer-a", "why": why, "considered": [why], "at_ms": now_ms(),
        });
        placements
            .tree
            .insert("k", serde_json::to_vec(&record).unwrap())
            .unwrap();
        let found = placements.get("k").await.unwrap().unwrap();
        assert_eq!(found.why.score, 77.5);
        assert_eq!(serde_json::to_value(&found).unwrap(), record);
    }

    #[tokio::test]
    async fn a_placement_survives_a_restart_and_expires() {
        let dir = tempfile::tempdir().unwrap();
        let placements = Placements::open(dir.path()).unwrap();
        placements
            .record("k1", &placement("peer-a", now_ms()))
            .await
            .unwrap();
        let old = now_ms() - PLACEMENT_TTL.as_millis() as u64 - 1;
        placements
            .record("k2", &placement("peer-b", old))
            .await
            .unwrap();
        drop(placements);
        let placements = reopen(dir.path());
        let found = placements.get("k1").await.unwrap().unwrap();
        assert_eq!(found.peer_id, "peer-a");
        assert_eq!(placements.get("k2").await.unwrap(), None);
        assert_eq!(placements.get("k3").await.unwrap(), None);
    }

    #[tokio::test]
    async fn the_record_is_bounded_and_keeps_the_newest() {
        let mut placements = Placements::in_memory().unwrap();
        placements.max = 20;
        let start = now_ms() - 1_000_000;
        for i in 0..25 {
            placements
                .record(&format!("k{i}"), &placement("p", start + i))
                .await
                .unwrap();
        }
        assert_eq!(placements.tree.len(), 20);
        for gone in 0..5 {
            assert_eq!(placements.get(&format!("k{gone}")).await.unwrap(), None);
        }
        assert!(placements.get("k24").await.unwrap().is_some());
    }
}
