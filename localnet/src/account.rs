//! Accounts as Solana's RPC shows them (its `UiAccount`): one encoder for `getAccountInfo`'s
//! value and `accountNotification`'s.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};
use solana_account::Account;

use crate::jsonrpc::RpcError;

/// Above this many bytes the cluster refuses to base-58 encode account data.
const MAX_BASE58_BYTES: usize = 128;

/// How account data is encoded, as named by the `encoding` option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AccountEncoding {
    /// The legacy default (`binary`): a bare base-58 string.
    Binary,
    /// `["…", "base58"]`; data over 128 bytes falls back to base-64.
    Base58,
    /// `["…", "base64"]`.
    Base64,
    /// `jsonParsed`: no parser runs here, so it falls back to base-64 as the cluster does for
    /// data it cannot parse.
    JsonParsed,
}

impl AccountEncoding {
    /// The encoding an `encoding` option names; `None` is the cluster's default, `binary`.
    pub(crate) fn parse(name: Option<&str>) -> Result<Self, RpcError> {
        match name {
            None | Some("binary") => Ok(Self::Binary),
            Some("base58") => Ok(Self::Base58),
            Some("base64") => Ok(Self::Base64),
            Some("jsonParsed") => Ok(Self::JsonParsed),
            Some(other) => Err(RpcError::invalid_params(format!(
                "Invalid params: unsupported encoding {other:?}; use base64, base58, binary or \
                 jsonParsed"
            ))),
        }
    }
}

/// The `dataSlice` option: a window of the account's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DataSlice {
    pub(crate) offset: usize,
    pub(crate) length: usize,
}

impl DataSlice {
    /// The `dataSlice` option, when `value` is one.
    pub(crate) fn parse(value: Option<&Value>) -> Result<Option<Self>, RpcError> {
        let Some(value) = value.filter(|v| !v.is_null()) else {
            return Ok(None);
        };
        let field = |name: &str| {
            value
                .get(name)
                .and_then(Value::as_u64)
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| {
                    RpcError::invalid_params(format!(
                        "Invalid params: dataSlice.{name} must be a non-negative integer"
                    ))
                })
        };
        Ok(Some(Self {
            offset: field("offset")?,
            length: field("length")?,
        }))
    }

    fn apply(self, data: &[u8]) -> &[u8] {
        let start = self.offset.min(data.len());
        let end = start.saturating_add(self.length).min(data.len());
        &data[start..end]
    }
}

/// `account` in the RPC's JSON shape.
pub(crate) fn ui_account(
    account: &Account,
    encoding: AccountEncoding,
    slice: Option<DataSlice>,
) -> Value {
    let data = slice.map_or(account.data.as_slice(), |s| s.apply(&account.data));
    let encoded = match encoding {
        AccountEncoding::Binary if data.len() <= MAX_BASE58_BYTES => {
            json!(bs58::encode(data).into_string())
        }
        AccountEncoding::Binary => json!("error: data too large for bs58 encoding"),
        AccountEncoding::Base58 if data.len() <= MAX_BASE58_BYTES => {
            json!([bs58::encode(data).into_string(), "base58"])
        }
        AccountEncoding::Base58 | AccountEncoding::Base64 | AccountEncoding::JsonParsed => {
            json!([BASE64.encode(data), "base64"])
        }
    };
    json!({
        "lamports": account.lamports,
        "data": encoded,
        "owner": account.owner.to_string(),
        "executable": account.executable,
        "rentEpoch": u64::MAX,
        "space": account.data.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(data: Vec<u8>) -> Account {
        Account {
            lamports: 42,
            data,
            owner: solana_pubkey::Pubkey::new_from_array([7; 32]),
            executable: false,
            rent_epoch: 0,
        }
    }

    #[test]
    fn encodings_take_the_clusters_shapes() {
        let small = account(vec![1, 2, 3]);
        assert_eq!(
            ui_account(&small, AccountEncoding::Base64, None)["data"],
            json!(["AQID", "base64"])
        );
        assert_eq!(
            ui_account(&small, AccountEncoding::JsonParsed, None)["data"],
            json!(["AQID", "base64"])
        );
        assert_eq!(
            ui_account(&small, AccountEncoding::Base58, None)["data"],
            json!(["Ldp", "base58"])
        );
        assert_eq!(
            ui_account(&small, AccountEncoding::Binary, None)["data"],
            json!("Ldp")
        );
        let value = ui_account(&small, AccountEncoding::Base64, None);
        assert_eq!(value["lamports"], 42);
        assert_eq!(value["space"], 3);
        assert_eq!(value["rentEpoch"], json!(u64::MAX));
    }

    #[test]
    fn large_data_is_not_base58_encoded() {
        let large = account(vec![0; MAX_BASE58_BYTES + 1]);
        assert_eq!(
            ui_account(&large, AccountEncoding::Base58, None)["data"][1],
            "base64"
        );
        assert_eq!(
            ui_account(&large, AccountEncoding::Binary, None)["data"],
            "error: data too large for bs58 encoding"
        );
    }

    #[test]
    fn a_data_slice_cuts_the_data_not_the_space() {
        let slice = DataSlice::parse(Some(&json!({"offset": 1, "length": 5})))
            .expect("parses")
            .expect("given");
        let value = ui_account(
            &account(vec![1, 2, 3]),
            AccountEncoding::Base64,
            Some(slice),
        );
        assert_eq!(value["data"], json!(["AgM=", "base64"]));
        assert_eq!(value["space"], 3);
        assert!(DataSlice::parse(Some(&json!({"offset": -1, "length": 1}))).is_err());
    }

    #[test]
    fn unknown_encodings_are_refused() {
        assert!(AccountEncoding::parse(Some("base64+zstd")).is_err());
        assert_eq!(
            AccountEncoding::parse(None).expect("default"),
            AccountEncoding::Binary
        );
    }
}
