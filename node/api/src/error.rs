//! The errors every command answers with: a class ([`ErrorCode`]) and a message for people. The
//! same type goes from a command's handler to the wire and to the caller, whichever way the
//! command came (the mesh, the control API, the OpenClaw gateway).

use std::fmt;

use serde::{Deserialize, Serialize};

/// The error classes every command shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The node has no such command.
    UnknownCommand,
    /// Params failed to parse or are out of range.
    InvalidParams,
    /// The caller may not run this command.
    Unauthorized,
    /// The thing named does not exist.
    NotFound,
    /// The request conflicts with the current state (e.g. GPUs already taken).
    Conflict,
    /// The deadline passed before an answer.
    Timeout,
    /// The node or something it depends on cannot serve now.
    Unavailable,
    /// A fault on the node.
    Internal,
    /// The answer is larger than the channel it goes back through allows (the OpenClaw
    /// gateway's frame limit); ask for less.
    PayloadTooLarge,
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        f.write_str(&text)
    }
}

/// A typed error, as a command answers it.
#[derive(
    Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema, thiserror::Error,
)]
#[serde(deny_unknown_fields)]
#[error("{code}: {message}")]
pub struct InvokeFailure {
    /// The class of failure.
    pub code: ErrorCode,
    /// What went wrong, for people.
    pub message: String,
}

impl InvokeFailure {
    /// A failure of class `code`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}
