//! `audit.query`: a node's audit log (every command it answered: who, what, the outcome, how
//! long), filtered.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Answer;
use crate::command::commands;
use crate::workload::SpecError;

/// Most records one query answers.
pub const MAX_RECORDS: u32 = 1000;

/// `audit.query`: every filter given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Only this caller (a peer id, or `openclaw-gateway`).
    #[serde(default)]
    pub actor: Option<String>,
    /// Only calls that carried this API key (its name).
    #[serde(default)]
    pub api_key: Option<String>,
    /// Only this command, or a family ending in `.` (e.g. `secret.`).
    #[serde(default)]
    pub command: Option<String>,
    /// Only this outcome: `ok`, or an error code (e.g. `UNAUTHORIZED`).
    #[serde(default)]
    pub outcome: Option<String>,
    /// Only records from this time on, Unix ms.
    #[serde(default)]
    pub since_ms: Option<u64>,
    /// Only records before this time, Unix ms.
    #[serde(default)]
    pub until_ms: Option<u64>,
    /// The newest this many, 1 to 1000. Default 100.
    #[serde(default)]
    pub limit: Option<u32>,
}

/// One answered command.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditEntry {
    /// When it finished, Unix ms.
    pub at_ms: u64,
    /// The caller.
    pub caller: String,
    /// The role the call ran with here.
    #[serde(default)]
    pub role: Option<String>,
    /// The API key the call carried (its name), when it carried one.
    #[serde(default)]
    pub api_key: Option<String>,
    /// The command.
    pub command: String,
    /// SHA-256 of its params (a secret's values left out), hex.
    pub params_sha256: String,
    /// `ok`, or the error code.
    pub outcome: String,
    /// How long it ran.
    pub duration_ms: u64,
}

/// `audit.query`'s answer, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditLog {
    /// The matching records, newest first.
    pub records: Vec<AuditEntry>,
}

impl Answer for AuditLog {}

impl AuditQuery {
    /// The limit asked for, checked.
    pub fn limit(&self) -> Result<usize, SpecError> {
        match self.limit.unwrap_or(100) {
            n @ 1..=MAX_RECORDS => Ok(n as usize),
            _ => Err(SpecError::Invalid(format!(
                "limit must be 1 to {MAX_RECORDS}"
            ))),
        }
    }

    /// Whether `entry` matches every filter.
    pub fn matches(&self, entry: &AuditEntry) -> bool {
        self.actor.as_ref().is_none_or(|a| *a == entry.caller)
            && self
                .api_key
                .as_ref()
                .is_none_or(|k| entry.api_key.as_ref() == Some(k))
            && self.command.as_ref().is_none_or(|c| {
                if c.ends_with('.') {
                    entry.command.starts_with(c.as_str())
                } else {
                    *c == entry.command
                }
            })
            && self.outcome.as_ref().is_none_or(|o| *o == entry.outcome)
            && self.since_ms.is_none_or(|t| entry.at_ms >= t)
            && self.until_ms.is_none_or(|t| entry.at_ms < t)
    }
}

commands! {
    /// `audit.query`.
    AuditQueryCommand = "audit.query", Operate, AuditQuery => AuditLog,
        "This node's audit log filtered by caller, API key, command (or family), outcome and time, newest first";
}
