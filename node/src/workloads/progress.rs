//! Progress of long operations (image pulls, drains), kept in memory under the caller's
//! idempotency key so that the CLI can show it while it waits for the answer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// Operations remembered at once; the oldest is forgotten first.
const MAX_OPERATIONS: usize = 256;

/// Where an operation is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProgressReport {
    /// What it is doing now, e.g. `pulling pytorch/pytorch:2.4.0`.
    pub stage: String,
    /// Units done (bytes for pulls, workloads for drains).
    pub done: u64,
    /// Units in all, when known.
    pub total: u64,
    /// Whether the operation has finished.
    pub finished: bool,
}

/// The node's table of operations in progress.
#[derive(Debug, Clone, Default)]
pub struct ProgressBoard {
    entries: Arc<Mutex<HashMap<String, (Instant, ProgressReport)>>>,
}

impl ProgressBoard {
    /// A handle that reports under `key`; a no-op handle without a key.
    pub(crate) fn track(&self, key: Option<&str>) -> Progress {
        let Some(key) = key else {
            return Progress { slot: None };
        };
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= MAX_OPERATIONS
            && let Some(oldest) = entries
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(k, _)| k.clone())
        {
            entries.remove(&oldest);
        }
        entries.insert(key.to_owned(), (Instant::now(), ProgressReport::default()));
        Progress {
            slot: Some((self.clone(), key.to_owned())),
        }
    }

    /// The report for `key`, if one is kept.
    pub fn get(&self, key: &str) -> Option<ProgressReport> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.get(key).map(|(_, report)| report.clone())
    }

    fn update(&self, key: &str, change: impl FnOnce(&mut ProgressReport)) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, report)) = entries.get_mut(key) {
            change(report);
        }
    }
}

/// Reports one operation's progress. Finishes the report when dropped.
#[derive(Debug)]
pub(crate) struct Progress {
    slot: Option<(ProgressBoard, String)>,
}

impl Progress {
    /// Starts a new stage, resetting the counts.
    pub(crate) fn stage(&self, stage: impl Into<String>) {
        if let Some((board, key)) = &self.slot {
            let stage = stage.into();
            board.update(key, |r| {
                r.stage = stage;
                r.done = 0;
                r.total = 0;
            });
        }
    }

    /// Records `done` of `total` units.
    pub(crate) fn advance(&self, done: u64, total: u64) {
        if let Some((board, key)) = &self.slot {
            board.update(key, |r| {
                r.done = done;
                r.total = total;
            });
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some((board, key)) = &self.slot {
            board.update(key, |r| r.finished = true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_follow_the_operation_and_finish_on_drop() {
        let board = ProgressBoard::default();
        let progress = board.track(Some("op-1"));
        progress.stage("pulling x");
        progress.advance(5, 10);
        assert_eq!(
            board.get("op-1"),
            Some(ProgressReport {
                stage: "pulling x".into(),
                done: 5,
                total: 10,
                finished: false
            })
        );
        drop(progress);
        assert!(board.get("op-1").unwrap().finished);
        assert!(board.get("op-2").is_none());
        drop(board.track(None));
    }

    #[test]
    fn the_board_is_bounded() {
        let board = ProgressBoard::default();
        for i in 0..(MAX_OPERATIONS + 10) {
            drop(board.track(Some(&format!("op-{i}"))));
        }
        assert_eq!(board.entries.lock().unwrap().len(), MAX_OPERATIONS);
    }
}
