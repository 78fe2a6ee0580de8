//! The `auth.*` keys over the fleet objects, and the check every call that carries a key
//! passes.

use claw_api::auth::{
    ApiKeyInfo, ApiKeyListing, ApiKeySpec, ApiToken, CreateKeyParams, CreatedKey, name_taken,
};
use claw_api::configs::check_name;
use claw_api::{ErrorCode, InvokeFailure};

use super::{FleetObjects, failure};
use crate::now_ms;
use crate::store::{ObjectKind, ObjectRecord};

/// Checks a key's name and spec (absent when deleted), as every member does before keeping it.
pub(super) fn check(name: &str, spec: Option<&str>) -> Result<(), String> {
    check_name("api key", name).map_err(|e| e.to_string())?;
    if let Some(spec) = spec {
        parse(spec)?.check().map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn parse(spec: &str) -> Result<ApiKeySpec, String> {
    serde_json::from_str(spec).map_err(|e| format!("api key spec: {e}"))
}

/// Whether `next` would bring back the key `kept` revoked: a later revision that is live and
/// not revoked. (Deleting a revoked key is allowed: an unknown key is refused as well.)
pub(super) fn unrevokes(kept: &ObjectRecord, next: &ObjectRecord) -> bool {
    let revoked = |record: &ObjectRecord| {
        record
            .spec
            .as_deref()
            .and_then(|spec| parse(spec).ok())
            .map(|spec| spec.revoked)
    };
    next.revision > kept.revision && revoked(kept) == Some(true) && revoked(next) == Some(false)
}

fn info(record: &ObjectRecord, spec: &ApiKeySpec) -> ApiKeyInfo {
    ApiKeyInfo {
        name: record.name.clone(),
        revision: record.revision,
        role: spec.role,
        namespaces: spec.namespaces.clone(),
        families: spec.families.clone(),
        expires_at_ms: spec.expires_at_ms,
        revoked: spec.revoked,
        signed_by: record.signed_by.clone(),
        signed_at_ms: record.signed_at_ms,
    }
}

fn unauthorized(message: String) -> InvokeFailure {
    failure(ErrorCode::Unauthorized, message)
}

impl FleetObjects {
    /// The spec of live `kind` `name` as JSON, if there is one.
    pub async fn spec_json(&self, kind: ObjectKind, name: &str) -> Option<serde_json::Value> {
        self.live_of::<serde_json::Value>(kind, name)
            .await
            .ok()
            .flatten()
            .map(|(_, spec)| spec)
    }

    /// `auth.create_key`: a fresh 256-bit secret, of which only the digest is signed and kept.
    /// A name is never used twice, revoked or not.
    pub async fn create_key(&self, params: CreateKeyParams) -> Result<CreatedKey, InvokeFailure> {
        let (spec, api_key) = ApiKeySpec::generate(&params, now_ms())
            .map_err(|e| failure(ErrorCode::InvalidParams, e.to_string()))?;
        let text = serde_json::to_string(&spec)
            .map_err(|e| failure(ErrorCode::Internal, e.to_string()))?;
        let name = params.name;
        let record = self
            .write(ObjectKind::ApiKey, &name, |history| {
                if history.is_empty() {
                    Ok(Some(text))
                } else {
                    Err(name_taken(&name))
                }
            })
            .await?;
        Ok(CreatedKey {
            api_key,
            key: info(&record, &spec),
        })
    }

    /// `auth.list_keys`.
    pub async fn keys(&self) -> Result<ApiKeyListing, InvokeFailure> {
        let all = self.all_of::<ApiKeySpec>(ObjectKind::ApiKey).await?;
        Ok(ApiKeyListing {
            keys: all
                .iter()
                .map(|(record, spec)| info(record, spec))
                .collect(),
        })
    }

    /// `auth.revoke_key`: a revision that marks the key revoked, gossiped at once. Revoking a
    /// revoked key answers it as it is.
    pub async fn revoke_key(&self, name: &str) -> Result<ApiKeyInfo, InvokeFailure> {
        let not_found = || {
            failure(
                ErrorCode::NotFound,
                format!("no API key {name:?} in the fleet (auth.list_keys lists them)"),
            )
        };
        let (record, spec) = self
            .live_of::<ApiKeySpec>(ObjectKind::ApiKey, name)
            .await?
            .ok_or_else(not_found)?;
        if spec.revoked {
            return Ok(info(&record, &spec));
        }
        let revoked = ApiKeySpec::revoking(&info(&record, &spec));
        let text = serde_json::to_string(&revoked)
            .map_err(|e| failure(ErrorCode::Internal, e.to_string()))?;
        let record = self
            .write(ObjectKind::ApiKey, name, |history| match history.first() {
                Some(kept) if !kept.deleted() => Ok(Some(text)),
                _ => Err(not_found()),
            })
            .await?;
        Ok(info(&record, &revoked))
    }

    /// The key `token` presents, when it is one this member keeps, its secret matches, and it
    /// is neither revoked nor expired; otherwise UNAUTHORIZED, saying which.
    pub async fn key_of(&self, token: &ApiToken) -> Result<ApiKeyInfo, InvokeFailure> {
        let (name, secret) = token.parts().map_err(|e| unauthorized(e.to_string()))?;
        let unknown = || {
            unauthorized(format!(
                "API key {name:?} is not one this node knows (unknown, or not synced here yet)"
            ))
        };
        let (record, spec) = self
            .live_of::<ApiKeySpec>(ObjectKind::ApiKey, name)
            .await?
            .ok_or_else(unknown)?;
        if spec.revoked {
            return Err(unauthorized(format!("API key {name:?} is revoked")));
        }
        if !spec.matches(secret) {
            return Err(unauthorized(format!(
                "API key {name:?} does not match the key of that name"
            )));
        }
        if now_ms() >= spec.expires_at_ms {
            return Err(unauthorized(format!(
                "API key {name:?} expired at {} (Unix ms)",
                spec.expires_at_ms
            )));
        }
        Ok(info(&record, &spec))
    }
}
