//! One connection's JSON-RPC session: requests in, responses and notifications out. No socket
//! here; [`super::connection`] carries the messages.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;

use super::MAX_SUBSCRIPTIONS_PER_CONNECTION;
use super::method::{self, Method, Subscribe};
use super::subscriptions::{Subscription, Subscriptions, signature_notifications};
use crate::events::{ChainEvent, SharedChain};
use crate::jsonrpc::{
    INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST, PARSE_ERROR, RpcError, error_response,
    result_response,
};

/// Requests one batch may hold.
const MAX_BATCH: usize = 100;

/// What one incoming message makes.
#[derive(Debug, Default)]
pub(crate) struct Reply {
    /// The response (an array for a batch); `None` when only notifications came in.
    pub(crate) response: Option<Value>,
    /// Notifications due at once (a signature already landed), sent after the response.
    pub(crate) notifications: Vec<Value>,
}

/// A connection's subscriptions and the chain they watch. Unwatches its accounts when dropped.
#[derive(Debug)]
pub(crate) struct Session {
    shared: Arc<SharedChain>,
    ids: Arc<AtomicU64>,
    subscriptions: Subscriptions,
}

impl Session {
    /// A session drawing subscription ids from `ids` (shared by all connections, as on a
    /// cluster, so an id names one subscription in the logs).
    pub(crate) fn new(shared: Arc<SharedChain>, ids: Arc<AtomicU64>) -> Self {
        Self {
            shared,
            ids,
            subscriptions: Subscriptions::new(MAX_SUBSCRIPTIONS_PER_CONNECTION),
        }
    }

    pub(crate) fn subscription_count(&self) -> usize {
        self.subscriptions.len()
    }

    /// Handles one text message: a request or a batch of them.
    pub(crate) fn handle(&mut self, text: &str) -> Reply {
        let request: Value = match serde_json::from_str(text) {
            Ok(value) => value,
            Err(_) => {
                return Reply {
                    response: Some(error_response(
                        Value::Null,
                        &RpcError::new(PARSE_ERROR, "Parse error"),
                    )),
                    notifications: Vec::new(),
                };
            }
        };
        let mut reply = Reply::default();
        match request {
            Value::Array(batch) if (1..=MAX_BATCH).contains(&batch.len()) => {
                let responses: Vec<Value> = batch
                    .into_iter()
                    .filter_map(|call| self.call(call, &mut reply.notifications))
                    .collect();
                reply.response = (!responses.is_empty()).then_some(Value::Array(responses));
            }
            Value::Array(_) => {
                reply.response = Some(error_response(
                    Value::Null,
                    &RpcError::new(INVALID_REQUEST, "Invalid request"),
                ));
            }
            single => reply.response = self.call(single, &mut reply.notifications),
        }
        reply
    }

    /// The notifications a chain event makes for this connection.
    pub(crate) fn on_event(&mut self, event: &ChainEvent) -> Vec<Value> {
        self.subscriptions.notifications(event)
    }

    /// Runs one call; `None` for a JSON-RPC notification (no `id`), which gets no answer.
    fn call(&mut self, request: Value, notifications: &mut Vec<Value>) -> Option<Value> {
        let Value::Object(request) = request else {
            return Some(error_response(
                Value::Null,
                &RpcError::new(INVALID_REQUEST, "Invalid request"),
            ));
        };
        // Notifications (web3.js sends a `ping` one every 5 s) are not answered, as on a cluster.
        let id = request.get("id")?.clone();
        let Some(name) = request.get("method").and_then(Value::as_str) else {
            return Some(error_response(
                id,
                &RpcError::new(INVALID_REQUEST, "Invalid request"),
            ));
        };
        let params = match request.get("params") {
            None | Some(Value::Null) => &[][..],
            Some(Value::Array(params)) => params.as_slice(),
            Some(_) => {
                return Some(error_response(
                    id,
                    &RpcError::new(INVALID_PARAMS, "Invalid params: params must be an array"),
                ));
            }
        };
        let outcome = method::parse(name, params).and_then(|method| match method {
            Method::Subscribe(request) => self.subscribe(request, notifications),
            Method::Unsubscribe { kind, id } => self.unsubscribe(kind, id),
        });
        Some(match outcome {
            Ok(result) => result_response(id, result),
            Err(error) => error_response(id, &error),
        })
    }

    fn subscribe(
        &mut self,
        request: Subscribe,
        notifications: &mut Vec<Value>,
    ) -> Result<Value, RpcError> {
        self.subscriptions.check_room().map_err(|e| {
            RpcError::new(
                INTERNAL_ERROR,
                format!("Internal Error: Subscription refused: {e}"),
            )
        })?;
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        let account_now = match &request {
            Subscribe::Account { address, .. } => Some(self.shared.lock().watch(address)),
            Subscribe::Signature {
                signature,
                received,
            } => {
                let landed = self
                    .shared
                    .lock()
                    .status(signature)
                    .map(|record| (record.slot, record.err.clone()));
                if let Some((slot, err)) = landed {
                    // Landed before the subscription: say so now; nothing stays subscribed.
                    notifications.extend(signature_notifications(
                        id,
                        slot,
                        err.as_ref(),
                        *received,
                    ));
                    tracing::debug!(subscription = id, %signature, "signature already landed");
                    return Ok(Value::from(id));
                }
                None
            }
            Subscribe::Slot | Subscribe::Logs(_) => None,
        };
        let subscription = Subscription::new(request, account_now);
        tracing::debug!(subscription = id, kind = ?subscription.kind(), "subscribed");
        self.subscriptions.insert(id, subscription);
        Ok(Value::from(id))
    }

    fn unsubscribe(&mut self, kind: method::Kind, id: u64) -> Result<Value, RpcError> {
        let removed = self
            .subscriptions
            .remove(kind, id)
            .ok_or_else(|| RpcError::invalid_params("Invalid subscription id."))?;
        if let Subscription::Account { address, .. } = removed {
            self.shared.lock().unwatch(&address);
        }
        tracing::debug!(subscription = id, ?kind, "unsubscribed");
        Ok(Value::Bool(true))
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let addresses: Vec<_> = self.subscriptions.watched_addresses().copied().collect();
        if addresses.is_empty() {
            return;
        }
        let mut chain = self.shared.lock();
        for address in &addresses {
            chain.unwatch(address);
        }
    }
}
