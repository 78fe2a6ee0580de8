//! Invoking a command on a peer: the wire types and the handler a node plugs in.
//!
//! A request names a command, carries JSON params, a deadline, an optional idempotency key and
//! an optional API key; the answer is a JSON result or a typed error. The caller's identity is
//! the `PeerId` that Noise authenticated for the connection; deciding what that peer may do is
//! the handler's job.

use std::future::Future;
use std::pin::Pin;

use libp2p::PeerId;
use serde::{Deserialize, Serialize};

pub use claw_api::auth::ApiToken;
pub use claw_api::{ErrorCode, InvokeFailure};

/// Longest accepted command name.
pub const MAX_COMMAND_LEN: usize = 64;
/// Largest encoded request accepted from a peer.
pub const MAX_REQUEST_BYTES: u64 = 256 * 1024;
/// Largest encoded response accepted from a peer.
pub const MAX_RESPONSE_BYTES: u64 = 4 * 1024 * 1024;

/// A command invocation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvokeRequest {
    /// Command name, e.g. `gpu.list`.
    pub command: String,
    /// Command parameters; each command parses them strictly.
    #[serde(default)]
    pub params: serde_json::Value,
    /// How long the caller will wait, in milliseconds; the handler is cut off after it.
    pub deadline_ms: u64,
    /// Lets a handler recognise a retried request and answer it without repeating its effect.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// An API key the call runs under: the node checks it and runs the call with no more than
    /// the key allows (see `claw_api::auth`).
    #[serde(default)]
    pub api_key: Option<ApiToken>,
}

impl InvokeRequest {
    /// A request with no params, no idempotency key and the given deadline.
    pub fn new(command: impl Into<String>, deadline: std::time::Duration) -> Self {
        Self {
            command: command.into(),
            params: serde_json::Value::Null,
            deadline_ms: u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX),
            idempotency_key: None,
            api_key: None,
        }
    }

    /// Sets the params.
    pub fn with_params(mut self, params: serde_json::Value) -> Self {
        self.params = params;
        self
    }
}

/// A node's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum InvokeResponse {
    /// The command's result.
    Ok(serde_json::Value),
    /// Why it failed.
    Error(InvokeFailure),
}

impl From<Result<serde_json::Value, InvokeFailure>> for InvokeResponse {
    fn from(result: Result<serde_json::Value, InvokeFailure>) -> Self {
        match result {
            Ok(value) => Self::Ok(value),
            Err(failure) => Self::Error(failure),
        }
    }
}

/// A boxed future returned by handlers.
pub type HandlerFuture = Pin<Box<dyn Future<Output = InvokeResponse> + Send + 'static>>;

/// What a node runs for each inbound invocation. Each call runs in its own task, bounded by the
/// request's deadline, so a slow command never holds up another or the mesh.
pub trait InvokeHandler: Send + Sync + 'static {
    /// Answers `request` from `caller` (authenticated by Noise).
    fn handle(&self, caller: PeerId, request: InvokeRequest) -> HandlerFuture;
}

impl InvokeRequest {
    /// Checks what every command requires: a well-formed name, a bounded idempotency key, a
    /// non-zero deadline.
    pub fn check(&self) -> Result<(), InvokeFailure> {
        precheck(self)
    }
}

/// Checks the parts of a request that do not depend on the command.
pub(crate) fn precheck(request: &InvokeRequest) -> Result<(), InvokeFailure> {
    let name_ok = !request.command.is_empty()
        && request.command.len() <= MAX_COMMAND_LEN
        && request
            .command
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if !name_ok {
        return Err(InvokeFailure::new(
            ErrorCode::InvalidParams,
            format!(
                "command names are 1 to {MAX_COMMAND_LEN} characters of a-z, 0-9, '.', '_', '-'"
            ),
        ));
    }
    if request
        .idempotency_key
        .as_ref()
        .is_some_and(|k| k.len() > 128)
    {
        return Err(InvokeFailure::new(
            ErrorCode::InvalidParams,
            "idempotency keys are at most 128 characters",
        ));
    }
    if request.deadline_ms == 0 {
        return Err(InvokeFailure::new(
            ErrorCode::Timeout,
            "the deadline is zero",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_is_strict() {
        let ok: InvokeRequest =
            serde_json::from_str(r#"{"command":"gpu.list","deadline_ms":100}"#).unwrap();
        assert_eq!(ok.params, serde_json::Value::Null);
        assert!(
            serde_json::from_str::<InvokeRequest>(
                r#"{"command":"gpu.list","deadline_ms":100,"sudo":true}"#
            )
            .is_err()
        );
        let failure = InvokeResponse::Error(InvokeFailure::new(ErrorCode::UnknownCommand, "x"));
        let text = serde_json::to_string(&failure).unwrap();
        assert_eq!(
            text,
            r#"{"error":{"code":"UNKNOWN_COMMAND","message":"x"}}"#
        );
        assert_eq!(ErrorCode::InvalidParams.to_string(), "INVALID_PARAMS");
    }

    #[test]
    fn precheck_refuses_odd_names_and_zero_deadlines() {
        let mut request = InvokeRequest::new("gpu.list", std::time::Duration::from_secs(1));
        assert!(precheck(&request).is_ok());
        request.command = "rm -rf /".into();
        assert_eq!(
            precheck(&request).unwrap_err().code,
            ErrorCode::InvalidParams
        );
        request.command = "gpu.list".into();
        request.deadline_ms = 0;
        assert_eq!(precheck(&request).unwrap_err().code, ErrorCode::Timeout);
    }
}
