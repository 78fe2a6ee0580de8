//! Solana JSON-RPC over HTTP for the embedded chain: the methods Solana's RPC client uses for
//! wallets, SPL token transfers and confirmation, with the cluster's JSON shapes and error
//! codes.

use std::str::FromStr as _;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};
use solana_hash::Hash;
use solana_pubkey::Pubkey;
use solana_signature::Signature;
use solana_transaction::versioned::VersionedTransaction;

use crate::account::{AccountEncoding, ui_account};
use crate::chain::{Chain, MAX_AIRDROP_LAMPORTS, SubmitError};
use crate::events::SharedChain;
use crate::jsonrpc::{
    INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, PARSE_ERROR, RpcError,
    error_response, result_response,
};

/// Largest request body accepted.
const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Largest wire transaction, as on a cluster.
const MAX_TRANSACTION_BYTES: usize = 1232;
/// The version this endpoint reports: the Agave line its programs and client come from.
pub const SOLANA_CORE_VERSION: &str = "4.2.2";
const LAMPORTS_PER_SIGNATURE: u64 = 5_000;

/// Solana's code for a transaction its preflight refused.
const SEND_TRANSACTION_PREFLIGHT_FAILURE: i64 = -32002;

type Shared = Arc<SharedChain>;

type RpcResult = Result<Value, RpcError>;

pub(crate) fn router(chain: Shared) -> axum::Router {
    axum::Router::new()
        .route("/", post(handle))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(chain)
}

async fn handle(State(chain): State<Shared>, body: Bytes) -> Json<Value> {
    let request: Value = match serde_json::from_slice(&body) {
        Ok(value) => value,
        Err(e) => {
            return Json(error_response(
                Value::Null,
                &RpcError::new(PARSE_ERROR, format!("Parse error: {e}")),
            ));
        }
    };
    match request {
        Value::Array(batch) if !batch.is_empty() && batch.len() <= 100 => {
            let mut answers = Vec::with_capacity(batch.len());
            for item in batch {
                answers.push(call(&chain, item).await);
            }
            Json(Value::Array(answers))
        }
        Value::Array(_) => Json(error_response(
            Value::Null,
            &RpcError::new(INVALID_REQUEST, "a batch holds 1 to 100 requests"),
        )),
        single => Json(call(&chain, single).await),
    }
}

async fn call(chain: &Shared, request: Value) -> Value {
    let id = request.get("id").cloned().unwrap_or(Value::Null);
    let Some(method) = request
        .get("method")
        .and_then(Value::as_str)
        .map(str::to_owned)
    else {
        return error_response(id, &RpcError::new(INVALID_REQUEST, "Invalid request"));
    };
    let params = match request.get("params") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(params)) => params.clone(),
        Some(_) => {
            return error_response(
                id,
                &RpcError::new(INVALID_PARAMS, "params must be an array"),
            );
        }
    };
    let shared = Arc::clone(chain);
    // The VM runs on the blocking pool: executing a transaction takes real CPU time.
    let outcome = tokio::task::spawn_blocking(move || {
        let mut chain = shared.lock();
        let outcome = dispatch(&mut chain, &method, &params);
        let changed = chain.has_events();
        drop(chain);
        if changed {
            shared.publish();
        }
        outcome
    })
    .await
    .unwrap_or_else(|e| {
        Err(RpcError::new(
            INTERNAL_ERROR,
            format!("Internal error: {e}"),
        ))
    });
    match outcome {
        Ok(result) => result_response(id, result),
        Err(error) => error_response(id, &error),
    }
}

fn with_context(chain: &Chain, value: Value) -> Value {
    json!({"context": {"slot": chain.slot(), "apiVersion": SOLANA_CORE_VERSION}, "value": value})
}

fn param<'a>(params: &'a [Value], index: usize, what: &str) -> Result<&'a Value, RpcError> {
    params
        .get(index)
        .ok_or_else(|| RpcError::invalid_params(format!("missing {what}")))
}

fn pubkey(params: &[Value], index: usize) -> Result<Pubkey, RpcError> {
    let text = param(params, index, "address")?
        .as_str()
        .ok_or_else(|| RpcError::invalid_params("address must be a string"))?;
    Pubkey::from_str(text).map_err(|_| {
        RpcError::invalid_params(format!(
            "Invalid param: {text:?} is not a base-58 public key"
        ))
    })
}

fn config(params: &[Value], index: usize) -> Option<&serde_json::Map<String, Value>> {
    params.get(index).and_then(Value::as_object)
}

fn decode_transaction(params: &[Value]) -> Result<VersionedTransaction, RpcError> {
    let encoded = param(params, 0, "transaction")?
        .as_str()
        .ok_or_else(|| RpcError::invalid_params("transaction must be a string"))?;
    let encoding = config(params, 1)
        .and_then(|c| c.get("encoding"))
        .and_then(Value::as_str)
        .unwrap_or("base58");
    let bytes = match encoding {
        "base64" => BASE64
            .decode(encoded)
            .map_err(|e| RpcError::invalid_params(format!("invalid base64 encoding: {e}")))?,
        "base58" => bs58::decode(encoded)
            .into_vec()
            .map_err(|e| RpcError::invalid_params(format!("invalid base58 encoding: {e}")))?,
        other => {
            return Err(RpcError::invalid_params(format!(
                "unsupported encoding: {other}. Supported encodings: base58, base64"
            )));
        }
    };
    if bytes.len() > MAX_TRANSACTION_BYTES {
        return Err(RpcError::invalid_params(format!(
            "base64 encoded solana_transaction::versioned::VersionedTransaction too large: {} bytes (max: encoded/raw {}/{MAX_TRANSACTION_BYTES})",
            bytes.len(),
            MAX_TRANSACTION_BYTES * 4 / 3 + 4
        )));
    }
    let tx: VersionedTransaction = bincode1::deserialize(&bytes).map_err(|e| {
        RpcError::invalid_params(format!(
            "failed to deserialize solana_transaction::versioned::VersionedTransaction: {e}"
        ))
    })?;
    tx.sanitize()
        .map_err(|e| RpcError::invalid_params(format!("invalid transaction: {e}")))?;
    Ok(tx)
}

fn err_json(err: &solana_transaction_error::TransactionError) -> Value {
    serde_json::to_value(err).unwrap_or(Value::Null)
}

/// Routes one JSON-RPC method to its handler; the one-line answers are given inline.
fn dispatch(chain: &mut Chain, method: &str, params: &[Value]) -> RpcResult {
    match method {
        "getHealth" => Ok(json!("ok")),
        "getVersion" => Ok(json!({"solana-core": SOLANA_CORE_VERSION, "feature-set": 0})),
        "getSlot" | "getBlockHeight" => Ok(json!(chain.slot())),
        "getGenesisHash" => Ok(json!(Hash::default().to_string())),
        "getEpochInfo" => Ok(get_epoch_info(chain)),
        "getLatestBlockhash" => Ok(get_latest_blockhash(chain)),
        "isBlockhashValid" => is_blockhash_valid(chain, params),
        "getFeeForMessage" => get_fee_for_message(chain, params),
        "getMinimumBalanceForRentExemption" => {
            get_minimum_balance_for_rent_exemption(chain, params)
        }
        "getBalance" => get_balance(chain, params),
        "getAccountInfo" => get_account_info(chain, params),
        "getMultipleAccounts" => get_multiple_accounts(chain, params),
        "getTokenAccountBalance" => get_token_account_balance(chain, params),
        "requestAirdrop" => request_airdrop(chain, params),
        "sendTransaction" => send_transaction(chain, params),
        "simulateTransaction" => simulate_transaction(chain, params),
        "getSignatureStatuses" => get_signature_statuses(chain, params),
        "getTransaction" => get_transaction(chain, params),
        "getSignaturesForAddress" => get_signatures_for_address(chain, params),
        other => Err(RpcError {
            code: METHOD_NOT_FOUND,
            message: format!("Method not found: {other}"),
            data: None,
        }),
    }
}

/// `getEpochInfo`: the chain runs one endless epoch, so the slot index is the slot.
fn get_epoch_info(chain: &Chain) -> Value {
    json!({
        "absoluteSlot": chain.slot(),
        "blockHeight": chain.slot(),
        "epoch": 0,
        "slotIndex": chain.slot(),
        "slotsInEpoch": 432_000,
        "transactionCount": null,
    })
}

/// `getLatestBlockhash`: the newest blockhash and the last block height it stays valid for.
fn get_latest_blockhash(chain: &Chain) -> Value {
    let (hash, last_valid) = chain.latest_blockhash();
    with_context(
        chain,
        json!({"blockhash": hash.to_string(), "lastValidBlockHeight": last_valid}),
    )
}

/// `isBlockhashValid`: whether a transaction could still use the given blockhash.
fn is_blockhash_valid(chain: &Chain, params: &[Value]) -> RpcResult {
    let text = param(params, 0, "blockhash")?.as_str().unwrap_or_default();
    let hash = Hash::from_str(text).map_err(|_| {
        RpcError::invalid_params(format!("Invalid param: {text:?} is not a blockhash"))
    })?;
    Ok(with_context(chain, json!(chain.is_blockhash_valid(&hash))))
}

/// `getFeeForMessage`: the fee a base64 message would pay.
fn get_fee_for_message(chain: &Chain, params: &[Value]) -> RpcResult {
    // Every message pays the same per signature here; the count is in the header.
    let encoded = param(params, 0, "message")?.as_str().unwrap_or_default();
    let bytes = BASE64
        .decode(encoded)
        .map_err(|e| RpcError::invalid_params(format!("invalid base64 message: {e}")))?;
    let signatures = u64::from(*bytes.first().unwrap_or(&1) & 0x7f);
    Ok(with_context(
        chain,
        json!(signatures * LAMPORTS_PER_SIGNATURE),
    ))
}

/// `getMinimumBalanceForRentExemption`: the lamports an account of a given size must hold.
fn get_minimum_balance_for_rent_exemption(chain: &Chain, params: &[Value]) -> RpcResult {
    let len = param(params, 0, "data length")?
        .as_u64()
        .and_then(|n| usize::try_from(n).ok())
        .filter(|n| *n <= 10 * 1024 * 1024)
        .ok_or_else(|| RpcError::invalid_params("data length must be 0 to 10 MiB"))?;
    Ok(json!(chain.rent_exempt_minimum(len)))
}

/// `getBalance`: an address's lamports.
fn get_balance(chain: &Chain, params: &[Value]) -> RpcResult {
    let address = pubkey(params, 0)?;
    Ok(with_context(chain, json!(chain.balance(&address))))
}

/// `getAccountInfo`: one account, base64-encoded, or null when it does not exist.
fn get_account_info(chain: &Chain, params: &[Value]) -> RpcResult {
    let address = pubkey(params, 0)?;
    Ok(with_context(chain, account_json(chain, &address)))
}

/// `getMultipleAccounts`: up to 100 accounts, in the order asked.
fn get_multiple_accounts(chain: &Chain, params: &[Value]) -> RpcResult {
    let list = param(params, 0, "addresses")?
        .as_array()
        .filter(|a| a.len() <= 100)
        .ok_or_else(|| RpcError::invalid_params("addresses: an array of at most 100"))?;
    let mut values = Vec::with_capacity(list.len());
    for index in 0..list.len() {
        let address = pubkey(list, index)?;
        values.push(account_json(chain, &address));
    }
    Ok(with_context(chain, Value::Array(values)))
}

/// `getTokenAccountBalance`: an SPL token account's amount, raw and in UI units.
fn get_token_account_balance(chain: &Chain, params: &[Value]) -> RpcResult {
    let address = pubkey(params, 0)?;
    let (amount, decimals) = chain
        .token_balance(&address)
        .ok_or_else(|| RpcError::invalid_params("Invalid param: could not find account"))?;
    let ui = amount as f64 / 10f64.powi(i32::from(decimals));
    Ok(with_context(
        chain,
        json!({
            "amount": amount.to_string(),
            "decimals": decimals,
            "uiAmount": ui,
            "uiAmountString": ui_amount_string(amount, decimals),
        }),
    ))
}

/// `requestAirdrop`: mints lamports to an address, up to the airdrop cap.
fn request_airdrop(chain: &mut Chain, params: &[Value]) -> RpcResult {
    let address = pubkey(params, 0)?;
    let lamports = param(params, 1, "lamports")?
        .as_u64()
        .filter(|l| (1..=MAX_AIRDROP_LAMPORTS).contains(l))
        .ok_or_else(|| RpcError::invalid_params("lamports must be 1 to 1,000 SOL"))?;
    let signature = chain.airdrop(&address, lamports).map_err(|e| RpcError {
        code: INTERNAL_ERROR,
        message: format!("airdrop failed: {e}"),
        data: None,
    })?;
    Ok(json!(signature.to_string()))
}

/// `sendTransaction`: executes a transaction, answering its signature or the preflight failure.
fn send_transaction(chain: &mut Chain, params: &[Value]) -> RpcResult {
    let tx = decode_transaction(params)?;
    let skip_preflight = config(params, 1)
        .and_then(|c| c.get("skipPreflight"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let signature = tx.signatures.first().copied().unwrap_or_default();
    match chain.submit(tx) {
        Ok(signature) => Ok(json!(signature.to_string())),
        // Without preflight a cluster accepts the transaction and it fails on chain; the
        // status reports the error. A failure that charged nothing has no status here.
        Err(SubmitError::Failed { .. }) if skip_preflight => Ok(json!(signature.to_string())),
        Err(SubmitError::Journal(e)) => Err(RpcError {
            code: INTERNAL_ERROR,
            message: format!("Internal error: the chain's ledger could not be written: {e}"),
            data: None,
        }),
        Err(SubmitError::BlockhashNotFound) => Err(RpcError {
            code: SEND_TRANSACTION_PREFLIGHT_FAILURE,
            message: "Transaction simulation failed: Blockhash not found".to_owned(),
            data: Some(simulation_json(Some(&json!("BlockhashNotFound")), &[], 0)),
        }),
        Err(SubmitError::Failed {
            err,
            logs,
            compute_units,
        }) => Err(RpcError {
            code: SEND_TRANSACTION_PREFLIGHT_FAILURE,
            message: format!("Transaction simulation failed: {err}"),
            data: Some(simulation_json(Some(&err_json(&err)), &logs, compute_units)),
        }),
    }
}

/// `simulateTransaction`: runs a transaction without committing it and reports the outcome.
fn simulate_transaction(chain: &Chain, params: &[Value]) -> RpcResult {
    let tx = decode_transaction(params)?;
    if !chain.is_blockhash_valid(tx.message.recent_blockhash()) {
        let replace = config(params, 1)
            .and_then(|c| c.get("replaceRecentBlockhash"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if !replace {
            return Ok(with_context(
                chain,
                simulation_json(Some(&json!("BlockhashNotFound")), &[], 0),
            ));
        }
    }
    let simulation = chain.simulate(tx);
    Ok(with_context(
        chain,
        simulation_json(
            simulation.err.as_ref().map(err_json).as_ref(),
            &simulation.logs,
            simulation.compute_units,
        ),
    ))
}

/// `getSignatureStatuses`: up to 256 transactions' statuses, null for unknown ones.
fn get_signature_statuses(chain: &Chain, params: &[Value]) -> RpcResult {
    let list = param(params, 0, "signatures")?
        .as_array()
        .filter(|a| a.len() <= 256)
        .ok_or_else(|| RpcError::invalid_params("signatures: an array of at most 256"))?;
    let mut values = Vec::with_capacity(list.len());
    for item in list {
        let signature = signature(item)?;
        values.push(match chain.status(&signature) {
            None => Value::Null,
            Some(record) => {
                let err = record.err.as_ref().map(err_json);
                json!({
                    "slot": record.slot,
                    "confirmations": null,
                    "err": err,
                    "status": match &err { None => json!({"Ok": null}), Some(e) => json!({"Err": e}) },
                    "confirmationStatus": "finalized",
                })
            }
        });
    }
    Ok(with_context(chain, Value::Array(values)))
}

/// `getTransaction`: a confirmed transaction with its meta, in the encoding asked; null when
/// unknown.
fn get_transaction(chain: &Chain, params: &[Value]) -> RpcResult {
    let signature = signature(param(params, 0, "signature")?)?;
    let options = config(params, 1);
    // The second param is a config object, or (the older form) just the encoding.
    let encoding = params
        .get(1)
        .and_then(Value::as_str)
        .or_else(|| {
            options
                .and_then(|c| c.get("encoding"))
                .and_then(Value::as_str)
        })
        .unwrap_or("json");
    let versioned = options
        .and_then(|c| c.get("maxSupportedTransactionVersion"))
        .is_some_and(|v| !v.is_null());
    let (Some(record), Some(details)) = (chain.status(&signature), chain.details(&signature))
    else {
        return Ok(Value::Null);
    };
    let Some(tx) = &details.transaction else {
        return Ok(Value::Null);
    };
    let encoded = match encoding {
        "base64" => json!([
            BASE64.encode(bincode1::serialize(tx).unwrap_or_default()),
            "base64"
        ]),
        "base58" => json!([
            bs58::encode(bincode1::serialize(tx).unwrap_or_default()).into_string(),
            "base58"
        ]),
        "json" => transaction_json(tx),
        other => {
            return Err(RpcError::invalid_params(format!(
                "unsupported encoding: {other}; use json, base64 or base58"
            )));
        }
    };
    let mut answer = json!({
        "slot": record.slot,
        "blockTime": record.block_time,
        "transaction": encoded,
        "meta": {
            "err": null,
            "status": {"Ok": null},
            "fee": details.fee,
            "preBalances": details.pre_balances,
            "postBalances": details.post_balances,
            "innerInstructions": [],
            "logMessages": details.logs,
            "rewards": [],
            "loadedAddresses": {"writable": [], "readonly": []},
            "computeUnitsConsumed": details.compute_units,
        },
    });
    if versioned {
        answer["version"] = match tx.version() {
            solana_transaction::versioned::TransactionVersion::Legacy(_) => json!("legacy"),
            solana_transaction::versioned::TransactionVersion::Number(n) => json!(n),
        };
    }
    Ok(answer)
}

/// `getSignaturesForAddress`: an address's transactions, newest first, paged by `before`,
/// `until` and `limit`.
fn get_signatures_for_address(chain: &Chain, params: &[Value]) -> RpcResult {
    let address = pubkey(params, 0)?;
    let options = config(params, 1);
    let limit = options
        .and_then(|c| c.get("limit"))
        .and_then(Value::as_u64)
        .unwrap_or(1000)
        .clamp(1, 1000);
    let before = options
        .and_then(|c| c.get("before"))
        .filter(|v| !v.is_null())
        .map(signature)
        .transpose()?;
    let until = options
        .and_then(|c| c.get("until"))
        .filter(|v| !v.is_null())
        .map(signature)
        .transpose()?;
    let mut started = before.is_none();
    let mut out = Vec::new();
    for (sig, record) in chain.signatures_for(&address) {
        if Some(sig) == until {
            break;
        }
        if !started {
            started = Some(sig) == before;
            continue;
        }
        out.push(json!({
            "signature": sig.to_string(),
            "slot": record.slot,
            "err": record.err.as_ref().map(err_json),
            "memo": record.memo,
            "blockTime": record.block_time,
            "confirmationStatus": "finalized",
        }));
        if out.len() as u64 >= limit {
            break;
        }
    }
    Ok(Value::Array(out))
}

fn signature(value: &Value) -> Result<Signature, RpcError> {
    let text = value
        .as_str()
        .ok_or_else(|| RpcError::invalid_params("signatures are strings"))?;
    Signature::from_str(text).map_err(|_| {
        RpcError::invalid_params(format!("Invalid param: {text:?} is not a signature"))
    })
}

/// A transaction in the RPC's `json` encoding.
fn transaction_json(tx: &VersionedTransaction) -> Value {
    let message = &tx.message;
    let header = message.header();
    json!({
        "signatures": tx.signatures.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "message": {
            "header": {
                "numRequiredSignatures": header.num_required_signatures,
                "numReadonlySignedAccounts": header.num_readonly_signed_accounts,
                "numReadonlyUnsignedAccounts": header.num_readonly_unsigned_accounts,
            },
            "accountKeys": message.static_account_keys().iter().map(ToString::to_string).collect::<Vec<_>>(),
            "recentBlockhash": message.recent_blockhash().to_string(),
            "instructions": message.instructions().iter().map(|ix| json!({
                "programIdIndex": ix.program_id_index,
                "accounts": ix.accounts,
                "data": bs58::encode(&ix.data).into_string(),
                "stackHeight": null,
            })).collect::<Vec<_>>(),
        },
    })
}

fn simulation_json(err: Option<&Value>, logs: &[String], compute_units: u64) -> Value {
    json!({
        "err": err,
        "logs": logs,
        "accounts": null,
        "unitsConsumed": compute_units,
        "returnData": null,
        "innerInstructions": null,
        "replacementBlockhash": null,
        "loadedAccountsDataSize": null,
        "fee": null,
        "preBalances": null,
        "postBalances": null,
        "preTokenBalances": null,
        "postTokenBalances": null,
        "loadedAddresses": null,
    })
}

fn account_json(chain: &Chain, address: &Pubkey) -> Value {
    match chain.account(address) {
        None => Value::Null,
        Some(account) if account.lamports == 0 => Value::Null,
        Some(account) => ui_account(&account, AccountEncoding::Base64, None),
    }
}

/// The exact decimal form of `amount` base units, trailing zeros trimmed.
fn ui_amount_string(amount: u64, decimals: u8) -> String {
    let scale = 10u128.pow(u32::from(decimals));
    let whole = u128::from(amount) / scale;
    let frac = u128::from(amount) % scale;
    if frac == 0 {
        return whole.to_string();
    }
    let frac = format!("{frac:0width$}", width = usize::from(decimals));
    format!("{whole}.{}", frac.trim_end_matches('0'))
}
