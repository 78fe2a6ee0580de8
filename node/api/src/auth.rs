//! API keys: bearer credentials with a role, scopes and an expiry, for the callers a node or the
//! bridge cannot tell apart by peer id (above all the OpenClaw gateway's agents and tools).
//!
//! A key is a fleet object ([`crate::objects`]): an admin signs its spec, every member keeps it,
//! and no member keeps the key itself, only the SHA-256 of its secret (a key is 256 random bits,
//! so a plain digest is as strong as the key). A call that carries a key runs with the lower of
//! its caller's role and the key's, only in the key's command families and namespaces, and is
//! refused once the key has expired or been revoked. A revocation is a signed revision that
//! every member gossips on at once and keeps for good, so a revoked key never comes back.
//!
//! A key travels in a mesh request's `api_key`, or in a gateway call's params as the reserved
//! field `api_key`, which the node or bridge takes out before the command reads its params.

use std::fmt;

use base64::Engine as _;
use rand::RngCore as _;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::command::commands;
use crate::workload::{SpecError, is_simple_name};
use crate::{Answer, ErrorCode, InvokeFailure, NoParams, Role};

/// The field of a gateway call's params that carries an API key.
pub const API_KEY_FIELD: &str = "api_key";
/// What every key starts with, so that a leaked one is recognisable.
pub const TOKEN_PREFIX: &str = "claw_";
/// Longest key accepted.
pub const MAX_TOKEN_LEN: usize = 128;
/// Most namespaces or command families one key names.
pub const MAX_SCOPES: usize = 16;
/// Longest a key may live: 366 days.
pub const MAX_LIFETIME_S: u64 = 366 * 24 * 3600;
/// The namespace of a command that names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// An API key as a caller presents it: `claw_<name>.<secret>`. Never printed: its `Debug` is
/// redacted, so a request or call that carries one can be logged whole.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct ApiToken(String);

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiToken(<redacted>)")
    }
}

impl ApiToken {
    /// Wraps a key's text.
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    /// The key's text, to send it on.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The key's name and secret, when it is well formed.
    pub fn parts(&self) -> Result<(&str, &str), SpecError> {
        let malformed = || {
            SpecError::Invalid(format!(
                "an API key is {TOKEN_PREFIX}<name>.<secret>, at most {MAX_TOKEN_LEN} characters"
            ))
        };
        if self.0.len() > MAX_TOKEN_LEN {
            return Err(malformed());
        }
        let (name, secret) = self
            .0
            .strip_prefix(TOKEN_PREFIX)
            .and_then(|rest| rest.split_once('.'))
            .ok_or_else(malformed)?;
        if !is_simple_name(name, 32) || secret.is_empty() {
            return Err(malformed());
        }
        Ok((name, secret))
    }
}

/// What an admin signs for a key. The key itself is not in it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySpec {
    /// The most a call with this key may do.
    pub role: Role,
    /// The namespaces it may act in; empty: every one.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// The command families it may run (`workload`, `deploy`, …); empty: every one.
    #[serde(default)]
    pub families: Vec<String>,
    /// When it stops working, Unix ms.
    pub expires_at_ms: u64,
    /// SHA-256 of its secret, hex.
    pub secret_sha256: String,
    /// Revoked: refused everywhere from this revision on.
    #[serde(default)]
    pub revoked: bool,
}

fn check_scopes(what: &str, names: &[String]) -> Result<(), SpecError> {
    if names.len() > MAX_SCOPES {
        return Err(SpecError::Invalid(format!(
            "a key names at most {MAX_SCOPES} {what}"
        )));
    }
    if let Some(bad) = names.iter().find(|n| !is_simple_name(n, 32)) {
        return Err(SpecError::Invalid(format!(
            "{what} entry {bad:?} must be 1 to 32 of a-z, 0-9 and '-'"
        )));
    }
    Ok(())
}

impl ApiKeySpec {
    /// A new key for `params`, made at `now_ms`: the spec an admin signs, and the key, to be
    /// handed over once (only its digest is in the spec).
    pub fn generate(params: &CreateKeyParams, now_ms: u64) -> Result<(Self, ApiToken), SpecError> {
        if !is_simple_name(&params.name, 32) {
            return Err(SpecError::Invalid(format!(
                "API key name {:?} must be 1 to 32 of a-z, 0-9 and '-'",
                params.name
            )));
        }
        if !(1..=MAX_LIFETIME_S).contains(&params.expires_in_s) {
            return Err(SpecError::Invalid(format!(
                "expires_in_s must be 1 to {MAX_LIFETIME_S}"
            )));
        }
        let mut secret = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
        let spec = Self {
            role: params.role,
            namespaces: params.namespaces.clone(),
            families: params.families.clone(),
            expires_at_ms: now_ms.saturating_add(params.expires_in_s.saturating_mul(1000)),
            secret_sha256: hex::encode(Sha256::digest(secret.as_bytes())),
            revoked: false,
        };
        spec.check()?;
        let token = ApiToken(format!("{TOKEN_PREFIX}{}.{secret}", params.name));
        Ok((spec, token))
    }

    /// The revision that revokes `key`: its scopes as they were, revoked, and its digest gone
    /// (zeros), so that nothing of the secret outlives the key.
    pub fn revoking(key: &ApiKeyInfo) -> Self {
        Self {
            role: key.role,
            namespaces: key.namespaces.clone(),
            families: key.families.clone(),
            expires_at_ms: key.expires_at_ms,
            secret_sha256: "0".repeat(64),
            revoked: true,
        }
    }

    /// Whether `secret` is this key's secret; the digests are compared in time that does not
    /// depend on where they differ.
    pub fn matches(&self, secret: &str) -> bool {
        let presented = hex::encode(Sha256::digest(secret.as_bytes()));
        presented.len() == self.secret_sha256.len()
            && presented
                .bytes()
                .zip(self.secret_sha256.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }

    /// Checks the scopes and the digest.
    pub fn check(&self) -> Result<(), SpecError> {
        check_scopes("namespaces", &self.namespaces)?;
        check_scopes("families", &self.families)?;
        if self.secret_sha256.len() != 64
            || !self
                .secret_sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(SpecError::Invalid(
                "secret_sha256 must be 64 lowercase hex digits".to_owned(),
            ));
        }
        Ok(())
    }
}

impl ApiKeyInfo {
    /// Why a call of `command`, which needs `needs`, acting in `namespaces` (none: it names
    /// none), is outside what this key allows; `None` when it is inside.
    ///
    /// A command that changes something and names no namespace acts in `default`: a key kept
    /// to other namespaces cannot run it. A read that names none (a listing) is not narrowed.
    ///
    /// `auth.whoami` is always inside: a key may always ask what it is.
    pub fn refusal(&self, command: &str, needs: Role, namespaces: &[String]) -> Option<String> {
        if command == <AuthWhoAmI as crate::Command>::NAME {
            return None;
        }
        if needs > self.role {
            return Some(format!(
                "{command} needs the {needs} role; the API key has {}",
                self.role
            ));
        }
        let family = command.split('.').next().unwrap_or(command);
        if !self.families.is_empty() && !self.families.iter().any(|f| f == family) {
            return Some(format!(
                "the API key may run only the command families {}, not {family}",
                self.families.join(", ")
            ));
        }
        if self.namespaces.is_empty() {
            return None;
        }
        let default = [DEFAULT_NAMESPACE.to_owned()];
        let acted_in = if namespaces.is_empty() && needs > Role::Read {
            &default[..]
        } else {
            namespaces
        };
        acted_in
            .iter()
            .find(|n| !self.namespaces.contains(n))
            .map(|outside| {
                format!(
                    "the API key may act only in the namespaces {}, not {outside}",
                    self.namespaces.join(", ")
                )
            })
    }
}

/// The namespaces a command's params name: every string field `namespace`, however deep (a
/// deployment's or job's template carries one).
pub fn namespaces_named(params: &Value) -> Vec<String> {
    fn walk(value: &Value, depth: usize, found: &mut Vec<String>) {
        if depth > 8 {
            return;
        }
        match value {
            Value::Object(fields) => {
                for (key, field) in fields {
                    match (key.as_str(), field) {
                        ("namespace", Value::String(name)) => found.push(name.clone()),
                        _ => walk(field, depth + 1, found),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|i| walk(i, depth + 1, found)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    walk(params, 0, &mut found);
    found.sort();
    found.dedup();
    found
}

/// Why a key cannot be created under `name`: it exists, or did (a revoked key's name stays
/// taken, so that no new key answers to an old one's name).
pub fn name_taken(name: &str) -> InvokeFailure {
    InvokeFailure::new(
        ErrorCode::Conflict,
        format!("API key {name:?} exists or existed; key names are not reused"),
    )
}

/// Takes the API key out of a gateway call's params, leaving the params the command reads.
/// A key that is not text is refused.
pub fn take_api_key(params: &mut Value) -> Result<Option<ApiToken>, SpecError> {
    let Value::Object(fields) = params else {
        return Ok(None);
    };
    match fields.remove(API_KEY_FIELD) {
        None => Ok(None),
        Some(Value::String(text)) => Ok(Some(ApiToken(text))),
        Some(_) => Err(SpecError::Invalid(format!("{API_KEY_FIELD} must be text"))),
    }
}

/// `auth.create_key`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyParams {
    /// The key's name: 1 to 32 of `a-z 0-9 -`, unique in the fleet for good.
    pub name: String,
    /// The most a call with it may do: `read`, `operate` or `admin`.
    pub role: Role,
    /// The namespaces it may act in; empty or absent: every one.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// The command families it may run (`workload`, `deploy`, `gpu`, …); empty or absent:
    /// every one.
    #[serde(default)]
    pub families: Vec<String>,
    /// How long it works, seconds: 1 to 31,622,400 (366 days).
    pub expires_in_s: u64,
}

/// A key as the commands show it: never the key itself, nor its digest.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyInfo {
    /// Its name.
    pub name: String,
    /// Its revision.
    pub revision: u64,
    /// Its highest role.
    pub role: Role,
    /// The namespaces it may act in; empty: every one.
    pub namespaces: Vec<String>,
    /// The command families it may run; empty: every one.
    pub families: Vec<String>,
    /// When it stops working, Unix ms.
    pub expires_at_ms: u64,
    /// Whether it is revoked.
    pub revoked: bool,
    /// The admin that signed this revision.
    pub signed_by: String,
    /// When this revision was signed, Unix ms.
    pub signed_at_ms: u64,
}

impl Answer for ApiKeyInfo {}

/// `auth.create_key`'s answer: the key, shown this once.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatedKey {
    /// The key to give the caller, `claw_<name>.<secret>`. No member keeps it; lost, it can
    /// only be revoked and replaced.
    pub api_key: ApiToken,
    /// What it may do.
    pub key: ApiKeyInfo,
}

impl Answer for CreatedKey {}

/// `auth.list_keys`' answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyListing {
    /// The fleet's keys, revoked ones included, by name.
    pub keys: Vec<ApiKeyInfo>,
}

impl Answer for ApiKeyListing {}

/// Commands that name one key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyRef {
    /// The key's name.
    pub name: String,
}

/// `auth.whoami`'s answer: who the node takes the caller for.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WhoAmI {
    /// The caller: a peer id, or `openclaw-gateway`.
    pub caller: String,
    /// The role the call ran with (the key's, when lower).
    pub role: Role,
    /// The key the call carried, when it carried one.
    pub key: Option<ApiKeyInfo>,
}

impl Answer for WhoAmI {}

commands! {
    /// `auth.create_key`.
    AuthCreateKey = "auth.create_key", Admin, CreateKeyParams => CreatedKey,
        "Create an API key with a role, namespaces, command families and an expiry; the key is shown once and only its digest is kept";
    /// `auth.list_keys`.
    AuthListKeys = "auth.list_keys", Operate, NoParams => ApiKeyListing,
        "The fleet's API keys: role, scopes, expiry and whether revoked (never the keys)";
    /// `auth.revoke_key`.
    AuthRevokeKey = "auth.revoke_key", Admin, KeyRef => ApiKeyInfo,
        "Revoke an API key: every member refuses it from the moment the revocation reaches it";
    /// `auth.whoami`.
    AuthWhoAmI = "auth.whoami", Read, NoParams => WhoAmI,
        "Who this node takes the caller for: its identity, role and the API key it carries";
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn scope(role: Role, namespaces: &[&str], families: &[&str]) -> ApiKeyInfo {
        ApiKeyInfo {
            name: "k".to_owned(),
            revision: 1,
            role,
            namespaces: namespaces.iter().map(|s| (*s).to_owned()).collect(),
            families: families.iter().map(|s| (*s).to_owned()).collect(),
            expires_at_ms: u64::MAX,
            revoked: false,
            signed_by: "admin".to_owned(),
            signed_at_ms: 0,
        }
    }

    #[test]
    fn a_key_narrows_role_family_and_namespace() {
        let key = scope(Role::Operate, &["team-a"], &["workload", "gpu"]);
        assert_eq!(key.refusal("gpu.list", Role::Read, &[]), None);
        assert_eq!(
            key.refusal("workload.run", Role::Operate, &["team-a".to_owned()]),
            None
        );
        let refused = |c, r, n: &[&str]| {
            let n: Vec<String> = n.iter().map(|s| (*s).to_owned()).collect();
            key.refusal(c, r, &n).unwrap_or_default()
        };
        assert!(refused("system.run", Role::Admin, &[]).contains("admin role"));
        assert!(refused("node.label", Role::Operate, &[]).contains("families workload, gpu"));
        assert!(refused("workload.run", Role::Operate, &["team-b"]).contains("not team-b"));
        assert!(refused("workload.stop", Role::Operate, &[]).contains("not default"));
        assert_eq!(
            scope(Role::Admin, &[], &[]).refusal("system.run", Role::Admin, &[]),
            None
        );
    }

    #[test]
    fn namespaces_are_found_at_any_depth_and_the_key_field_is_taken_out() {
        let mut params = json!({"name": "web", "template": {"image": "x", "namespace": "b"},
            "namespace": "a", "api_key": "claw_ci.secret"});
        let token = take_api_key(&mut params).ok().flatten();
        assert_eq!(token.as_ref().map(ApiToken::expose), Some("claw_ci.secret"));
        assert_eq!(format!("{token:?}"), "Some(ApiToken(<redacted>))");
        assert_eq!(namespaces_named(&params), ["a", "b"]);
        assert!(params.get(API_KEY_FIELD).is_none());
        assert!(take_api_key(&mut json!({"api_key": 7})).is_err());
    }

    #[test]
    fn a_generated_key_matches_its_spec_and_a_revocation_forgets_it() {
        let params = CreateKeyParams {
            name: "ci".to_owned(),
            role: Role::Read,
            namespaces: vec![],
            families: vec![],
            expires_in_s: 60,
        };
        let (spec, token) = ApiKeySpec::generate(&params, 1_000).expect("a key");
        assert_eq!(spec.expires_at_ms, 61_000);
        let (name, secret) = token.parts().expect("well formed");
        assert_eq!(name, "ci");
        assert!(spec.matches(secret) && !spec.matches("guess"));
        assert!(!spec.secret_sha256.contains(secret));
        let (other, _) = ApiKeySpec::generate(&params, 1_000).expect("a key");
        assert_ne!(other.secret_sha256, spec.secret_sha256, "fresh secrets");
        let info = ApiKeyInfo {
            name: "ci".to_owned(),
            revision: 1,
            role: spec.role,
            namespaces: vec![],
            families: vec![],
            expires_at_ms: spec.expires_at_ms,
            revoked: false,
            signed_by: "admin".to_owned(),
            signed_at_ms: 1_000,
        };
        let revoked = ApiKeySpec::revoking(&info);
        assert!(revoked.revoked && !revoked.matches(secret));
        assert!(revoked.check().is_ok());
        let too_long = CreateKeyParams {
            expires_in_s: MAX_LIFETIME_S + 1,
            ..params
        };
        assert!(ApiKeySpec::generate(&too_long, 0).is_err());
    }

    #[test]
    fn only_well_formed_keys_have_parts() {
        assert_eq!(
            ApiToken::new("claw_ci-bot.abc").parts().ok(),
            Some(("ci-bot", "abc"))
        );
        for bad in [
            "ci-bot.abc",
            "claw_ci-bot",
            "claw_Bad.x",
            "claw_ci.",
            &"x".repeat(200),
        ] {
            assert!(ApiToken::new(bad).parts().is_err(), "{bad}");
        }
    }
}
