//! Configs: named sets of plain values (settings, small files) that workloads, deployments and
//! jobs use by name, as environment variables (`env_from`) or files (`files`). A config is a
//! fleet object ([`crate::objects`]): signed by an operator, versioned, kept by every member.
//! Nothing in a config is secret: every member and every reader sees it (`secret.*` is for
//! what must not be seen).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::command::commands;
use crate::workload::{SpecError, is_simple_name, is_value_key};
use crate::{Answer, ErrorCode, InvokeFailure};

/// Most values one config or secret holds.
pub const MAX_VALUES: usize = 64;
/// Most bytes of keys and values together in one config.
pub const MAX_CONFIG_BYTES: usize = 24 * 1024;

fn invalid<T>(message: impl Into<String>) -> Result<T, SpecError> {
    Err(SpecError::Invalid(message.into()))
}

/// Checks a config's or secret's name: 1 to 32 of `a-z 0-9 -`.
pub fn check_name(what: &str, name: &str) -> Result<(), SpecError> {
    if is_simple_name(name, 32) {
        Ok(())
    } else {
        invalid(format!(
            "{what} name {name:?} must be 1 to 32 of a-z, 0-9 and '-'"
        ))
    }
}

/// Checks the values of a config or secret: 1 to 64 keys (file names), no NUL in a value, at
/// most `max_bytes` in all.
pub fn check_values(
    what: &str,
    data: &BTreeMap<String, String>,
    max_bytes: usize,
) -> Result<(), SpecError> {
    if data.is_empty() || data.len() > MAX_VALUES {
        return invalid(format!("a {what} holds 1 to {MAX_VALUES} values"));
    }
    if let Some(key) = data.keys().find(|k| !is_value_key(k)) {
        return invalid(format!(
            "{what} key {key:?} must be 1 to 64 of A-Z, a-z, 0-9, '.', '_', '-', not starting \
             with '.'"
        ));
    }
    if data.values().any(|v| v.contains('\0')) {
        return invalid(format!("{what} values may not contain NUL"));
    }
    let bytes: usize = data.iter().map(|(k, v)| k.len() + v.len()).sum();
    if bytes > max_bytes {
        return invalid(format!(
            "a {what}'s keys and values are at most {max_bytes} bytes"
        ));
    }
    Ok(())
}

/// What an operator signs for a config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigSpec {
    /// Its values by key.
    pub data: BTreeMap<String, String>,
}

impl ConfigSpec {
    /// Checks the values.
    pub fn check(&self) -> Result<(), SpecError> {
        check_values("config", &self.data, MAX_CONFIG_BYTES)
    }
}

/// `config.create` and `config.update`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigParams {
    /// The config's name: 1 to 32 of `a-z 0-9 -`.
    pub name: String,
    /// Its values by key (the whole set: an update replaces it).
    pub data: BTreeMap<String, String>,
}

/// Commands that name one config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigRef {
    /// The config's name.
    pub name: String,
}

/// A config at its latest revision.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Its name.
    pub name: String,
    /// Its revision, from 1.
    pub revision: u64,
    /// Its values by key.
    pub data: BTreeMap<String, String>,
    /// The operator that signed this revision.
    pub signed_by: String,
    /// When it was signed, Unix ms.
    pub signed_at_ms: u64,
}

impl Answer for Config {}

/// A config as `config.list` shows it: its keys, not its values.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigSummary {
    /// Its name.
    pub name: String,
    /// Its revision.
    pub revision: u64,
    /// Its keys.
    pub keys: Vec<String>,
    /// When this revision was signed, Unix ms.
    pub signed_at_ms: u64,
}

/// `config.list`'s answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigListing {
    /// The fleet's configs, by name.
    pub configs: Vec<ConfigSummary>,
}

impl Answer for ConfigListing {}

/// A config or secret deleted: the revision that deletes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Deleted {
    /// Its name.
    pub name: String,
    /// The revision that deletes it.
    pub revision: u64,
}

impl Answer for Deleted {}

/// The answer to a config or secret that is not there.
pub fn not_found(what: &str, name: &str) -> InvokeFailure {
    InvokeFailure::new(
        ErrorCode::NotFound,
        format!("no {what} {name:?}; {what}.list lists them"),
    )
}

/// A change to a config or a secret, as every signer (a node, the bridge) checks it against
/// what is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValuesChange {
    /// A new one (or one deleted before, again).
    Create,
    /// New values for a live one (for a secret: a rotation).
    Update,
    /// Deleted.
    Delete,
}

impl ValuesChange {
    /// Whether the change applies to `what` `name`, live or not; refused as the commands answer.
    pub fn check(self, what: &str, name: &str, live: bool) -> Result<(), InvokeFailure> {
        check_name(what, name)
            .map_err(|e| InvokeFailure::new(ErrorCode::InvalidParams, e.to_string()))?;
        match (self, live) {
            (Self::Create, true) => Err(InvokeFailure::new(
                ErrorCode::Conflict,
                format!(
                    "{what} {name:?} exists; {what}.{} changes it",
                    if what == "secret" { "rotate" } else { "update" }
                ),
            )),
            (Self::Update | Self::Delete, false) => Err(not_found(what, name)),
            _ => Ok(()),
        }
    }
}

commands! {
    /// `config.create`.
    ConfigCreate = "config.create", Operate, ConfigParams => Config,
        "Create a config: named plain values workloads use as env (env_from) or files";
    /// `config.update`.
    ConfigUpdate = "config.update", Operate, ConfigParams => Config,
        "Replace a config's values (a new revision)";
    /// `config.get`.
    ConfigGet = "config.get", Read, ConfigRef => Config,
        "A config's values and revision";
    /// `config.list`.
    ConfigList = "config.list", Read, crate::NoParams => ConfigListing,
        "The fleet's configs and their keys";
    /// `config.delete`.
    ConfigDelete = "config.delete", Operate, ConfigRef => Deleted,
        "Delete a config";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_bounded_and_keys_are_file_names() {
        let data = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>()
        };
        assert!(check_values("config", &data(&[("app.toml", "x")]), 100).is_ok());
        assert!(check_values("config", &data(&[]), 100).is_err());
        assert!(check_values("config", &data(&[("../etc", "x")]), 100).is_err());
        assert!(check_values("config", &data(&[(".hidden", "x")]), 100).is_err());
        assert!(check_values("config", &data(&[("a/b", "x")]), 100).is_err());
        assert!(check_values("config", &data(&[("k", "a\0b")]), 100).is_err());
        assert!(check_values("config", &data(&[("k", &"x".repeat(100))]), 100).is_err());
        assert!(check_name("config", "Bad").is_err());
    }
}
