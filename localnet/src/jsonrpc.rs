//! JSON-RPC 2.0 framing shared by the HTTP endpoint and the PubSub WebSocket: one error type from
//! the handler to the wire, with the codes Solana's RPC answers.

use serde_json::{Value, json};

/// The request is not valid JSON.
pub(crate) const PARSE_ERROR: i64 = -32700;
/// The JSON is not a JSON-RPC request.
pub(crate) const INVALID_REQUEST: i64 = -32600;
/// No such method.
pub(crate) const METHOD_NOT_FOUND: i64 = -32601;
/// The method exists, its params do not fit.
pub(crate) const INVALID_PARAMS: i64 = -32602;
/// The server failed.
pub(crate) const INTERNAL_ERROR: i64 = -32603;

/// A JSON-RPC error, as it goes on the wire.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RpcError {
    pub(crate) code: i64,
    pub(crate) message: String,
    pub(crate) data: Option<Value>,
}

impl RpcError {
    pub(crate) fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            data: None,
        }
    }

    pub(crate) fn invalid_params(message: impl Into<String>) -> Self {
        Self::new(INVALID_PARAMS, message)
    }

    /// The error object of a response.
    pub(crate) fn to_json(&self) -> Value {
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(data) = &self.data {
            error["data"] = data.clone();
        }
        error
    }
}

/// A successful response to request `id`.
pub(crate) fn result_response(id: Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "result": result, "id": id})
}

/// A failed response to request `id`.
pub(crate) fn error_response(id: Value, error: &RpcError) -> Value {
    json!({"jsonrpc": "2.0", "error": error.to_json(), "id": id})
}
