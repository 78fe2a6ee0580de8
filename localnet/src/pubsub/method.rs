//! The PubSub methods and their params, parsed from JSON-RPC into types before anything runs.
//! Params take Solana's positional form; errors use the cluster's codes and messages.

use std::str::FromStr as _;

use serde_json::{Map, Value};
use solana_pubkey::Pubkey;
use solana_signature::Signature;

use crate::account::{AccountEncoding, DataSlice};
use crate::jsonrpc::{METHOD_NOT_FOUND, RpcError};

/// Commitment levels a client may ask for. Every landed transaction is final at once here, so
/// they all behave alike.
const COMMITMENTS: [&str; 8] = [
    "processed",
    "confirmed",
    "finalized",
    "recent",
    "single",
    "singleGossip",
    "root",
    "max",
];

/// A PubSub request, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Method {
    /// `*Subscribe`.
    Subscribe(Subscribe),
    /// `*Unsubscribe`: the kind must match the subscription's.
    Unsubscribe {
        /// Which `*Unsubscribe` was called.
        kind: Kind,
        /// The subscription id.
        id: u64,
    },
}

/// What a client subscribes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Subscribe {
    /// `signatureSubscribe`: one notification when the signature lands.
    Signature {
        signature: Signature,
        /// `enableReceivedNotification`: say `receivedSignature` first.
        received: bool,
    },
    /// `accountSubscribe`: a notification each time the account changes.
    Account {
        address: Pubkey,
        encoding: AccountEncoding,
        slice: Option<DataSlice>,
    },
    /// `slotSubscribe`: a notification each slot.
    Slot,
    /// `logsSubscribe`: each landed transaction's logs that the filter lets through.
    Logs(LogsFilter),
}

/// The kinds of subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Signature,
    Account,
    Slot,
    Logs,
}

/// Which transactions `logsSubscribe` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogsFilter {
    /// `"all"` and `"allWithVotes"` (there are no vote transactions here).
    All,
    /// `{"mentions": [address]}`: transactions naming the address.
    Mentions(Pubkey),
}

/// Parses `method` with its positional `params`.
pub(crate) fn parse(method: &str, params: &[Value]) -> Result<Method, RpcError> {
    let subscribe = |s| Ok(Method::Subscribe(s));
    match method {
        "signatureSubscribe" => subscribe(signature_subscribe(params)?),
        "accountSubscribe" => subscribe(account_subscribe(params)?),
        "slotSubscribe" => subscribe(Subscribe::Slot),
        "logsSubscribe" => subscribe(logs_subscribe(params)?),
        "signatureUnsubscribe" => unsubscribe(Kind::Signature, params),
        "accountUnsubscribe" => unsubscribe(Kind::Account, params),
        "slotUnsubscribe" => unsubscribe(Kind::Slot, params),
        "logsUnsubscribe" => unsubscribe(Kind::Logs, params),
        _ => Err(RpcError::new(METHOD_NOT_FOUND, "Method not found")),
    }
}

fn signature_subscribe(params: &[Value]) -> Result<Subscribe, RpcError> {
    let text = string_param(params, 0, "signature")?;
    let signature = Signature::from_str(text).map_err(|_| invalid("signature"))?;
    let config = config(params, 1)?;
    let received = match config.and_then(|c| c.get("enableReceivedNotification")) {
        None | Some(Value::Null) => false,
        Some(Value::Bool(flag)) => *flag,
        Some(_) => {
            return Err(RpcError::invalid_params(
                "Invalid params: enableReceivedNotification must be a boolean",
            ));
        }
    };
    Ok(Subscribe::Signature {
        signature,
        received,
    })
}

fn account_subscribe(params: &[Value]) -> Result<Subscribe, RpcError> {
    let text = string_param(params, 0, "pubkey")?;
    let address = Pubkey::from_str(text).map_err(|_| invalid("pubkey"))?;
    let config = config(params, 1)?;
    let encoding = match config.and_then(|c| c.get("encoding")) {
        None | Some(Value::Null) => AccountEncoding::parse(None)?,
        Some(Value::String(name)) => AccountEncoding::parse(Some(name))?,
        Some(_) => {
            return Err(RpcError::invalid_params(
                "Invalid params: encoding must be a string",
            ));
        }
    };
    let slice = DataSlice::parse(config.and_then(|c| c.get("dataSlice")))?;
    Ok(Subscribe::Account {
        address,
        encoding,
        slice,
    })
}

fn logs_subscribe(params: &[Value]) -> Result<Subscribe, RpcError> {
    let filter = match params.first() {
        Some(Value::String(name)) if name == "all" || name == "allWithVotes" => LogsFilter::All,
        Some(Value::Object(filter)) => {
            let Some(Value::Array(keys)) = filter.get("mentions") else {
                return Err(bad_logs_filter());
            };
            let [key] = keys.as_slice() else {
                return Err(RpcError::invalid_params(
                    "Invalid Request: Only 1 address supported",
                ));
            };
            let text = key.as_str().ok_or_else(|| invalid("mentions"))?;
            LogsFilter::Mentions(Pubkey::from_str(text).map_err(|_| invalid("mentions"))?)
        }
        _ => return Err(bad_logs_filter()),
    };
    config(params, 1)?;
    Ok(Subscribe::Logs(filter))
}

fn unsubscribe(kind: Kind, params: &[Value]) -> Result<Method, RpcError> {
    let id = params.first().and_then(Value::as_u64).ok_or_else(|| {
        RpcError::invalid_params("Invalid params: the subscription id must be an integer")
    })?;
    Ok(Method::Unsubscribe { kind, id })
}

fn bad_logs_filter() -> RpcError {
    RpcError::invalid_params(
        "Invalid params: the filter must be \"all\", \"allWithVotes\" or {\"mentions\": [address]}",
    )
}

/// The cluster's message for a param that does not parse.
fn invalid(what: &str) -> RpcError {
    RpcError::invalid_params(format!("Invalid Request: Invalid {what} provided"))
}

fn string_param<'a>(params: &'a [Value], index: usize, what: &str) -> Result<&'a str, RpcError> {
    params
        .get(index)
        .and_then(Value::as_str)
        .ok_or_else(|| RpcError::invalid_params(format!("Invalid params: missing {what}")))
}

/// The optional config object at `index`, its commitment checked.
fn config(params: &[Value], index: usize) -> Result<Option<&Map<String, Value>>, RpcError> {
    let config = match params.get(index) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(config)) => config,
        Some(_) => {
            return Err(RpcError::invalid_params(
                "Invalid params: the config must be an object",
            ));
        }
    };
    match config.get("commitment") {
        None | Some(Value::Null) => {}
        Some(Value::String(level)) if COMMITMENTS.contains(&level.as_str()) => {}
        Some(other) => {
            return Err(RpcError::invalid_params(format!(
                "Invalid params: unknown commitment {other}"
            )));
        }
    }
    Ok(Some(config))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::jsonrpc::INVALID_PARAMS;

    #[test]
    fn subscriptions_parse_with_their_options() {
        let signature = Signature::from([3; 64]);
        assert_eq!(
            parse(
                "signatureSubscribe",
                &[
                    json!(signature.to_string()),
                    json!({"commitment": "confirmed", "enableReceivedNotification": true})
                ]
            ),
            Ok(Method::Subscribe(Subscribe::Signature {
                signature,
                received: true
            }))
        );
        let address = Pubkey::new_from_array([9; 32]);
        assert_eq!(
            parse(
                "accountSubscribe",
                &[json!(address.to_string()), json!({"encoding": "base64"})]
            ),
            Ok(Method::Subscribe(Subscribe::Account {
                address,
                encoding: AccountEncoding::Base64,
                slice: None
            }))
        );
        assert_eq!(
            parse(
                "logsSubscribe",
                &[json!({"mentions": [address.to_string()]})]
            ),
            Ok(Method::Subscribe(Subscribe::Logs(LogsFilter::Mentions(
                address
            ))))
        );
        assert_eq!(
            parse("logsSubscribe", &[json!("allWithVotes")]),
            Ok(Method::Subscribe(Subscribe::Logs(LogsFilter::All)))
        );
        assert_eq!(
            parse("slotUnsubscribe", &[json!(7)]),
            Ok(Method::Unsubscribe {
                kind: Kind::Slot,
                id: 7
            })
        );
    }

    #[test]
    fn bad_params_and_unknown_methods_get_their_codes() {
        let code = |method: &str, params: &[Value]| parse(method, params).err().map(|e| e.code);
        assert_eq!(code("nope", &[]), Some(METHOD_NOT_FOUND));
        assert_eq!(code("signatureSubscribe", &[]), Some(INVALID_PARAMS));
        assert_eq!(
            code("signatureSubscribe", &[json!("not a signature")]),
            Some(INVALID_PARAMS)
        );
        assert_eq!(
            code(
                "accountSubscribe",
                &[
                    json!("11111111111111111111111111111111"),
                    json!({"commitment": "soon"})
                ]
            ),
            Some(INVALID_PARAMS)
        );
        assert_eq!(
            code(
                "logsSubscribe",
                &[
                    json!({"mentions": ["11111111111111111111111111111111", "11111111111111111111111111111111"]})
                ]
            ),
            Some(INVALID_PARAMS)
        );
        assert_eq!(
            code("logsSubscribe", &[json!("some")]),
            Some(INVALID_PARAMS)
        );
        assert_eq!(
            code("accountUnsubscribe", &[json!("1")]),
            Some(INVALID_PARAMS)
        );
    }
}
